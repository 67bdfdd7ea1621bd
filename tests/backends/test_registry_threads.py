"""The registry's thread count and BLAS section.

- The default thread count: the CPUs the process may run on, fewer under a cgroup CPU
  quota (v2 `cpu.max`, v1 `cpu.cfs_quota_us`/`cpu.cfs_period_us`, read from a fake
  /sys/fs/cgroup tree here), read once at import, overridden by RNNCORE_NUM_THREADS.
- One BLAS section: every backend and every thread counts in the same one, so two
  threads running bidirectional layers on both fast backends at once, each setting its
  own thread count, get the numbers of one thread alone and leave BLAS's thread count
  as they found it.
"""
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from threadpoolctl import threadpool_info

import rnncore as rc
from rnncore.backends import registry
from test_threads_fork import (FAST, SRC, _assert_bitwise, _layer_numbers, blas_threads,  # noqa: F401  fixtures
                               restore_threads, threaded_blas_rounds_differently)


# -- the cgroup CPU quota --------------------------------------------------------------

def _tree(root, files):
    """Writes {relative path: text} under `root`; returns root as a string."""
    for path, text in files.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    return str(root)


V2 = "0::/\n"
V1 = "4:cpu,cpuacct:/\n1:name=systemd:/\n"

_QUOTAS = [
    # (the id, /proc/self/cgroup, the files under /sys/fs/cgroup, the quota in CPUs)
    ("v2 no quota", V2, {"cpu.max": "max 100000\n"}, None),
    ("v2 1.5 CPUs", V2, {"cpu.max": "150000 100000\n"}, 2),
    ("v2 half a CPU", V2, {"cpu.max": "50000 100000\n"}, 1),
    ("v2 four CPUs", V2, {"cpu.max": "400000 100000\n"}, 4),
    ("v2 a parent's quota binds", "0::/pod/app\n",
     {"pod/cpu.max": "200000 100000\n", "pod/app/cpu.max": "max 100000\n"}, 2),
    ("v2 the tightest on the path", "0::/pod/app\n",
     {"cpu.max": "800000 100000\n", "pod/cpu.max": "300000 100000\n", "pod/app/cpu.max": "600000 100000\n"}, 3),
    ("v1 three CPUs", V1, {"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3),
    ("v1 no quota", V1, {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
    ("v1 the joint folder", V1,
     {"cpu,cpuacct/cpu.cfs_quota_us": "250000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, 3),
    # a container without a cgroup namespace: its path is the host's, its root its own
    ("v1 a host path not mounted", "4:cpu,cpuacct:/docker/0123abcd\n",
     {"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),
    ("v2 a path above the namespace root", "0::/../other\n",
     {"cpu.max": "300000 100000\n", "../other/cpu.max": "100000 100000\n"}, 3),
    ("v1 a quota without its period", V1, {"cpu/cpu.cfs_quota_us": "300000\n"}, None),
    ("no files", V2, {}, None),
    ("unexpected text", V2, {"cpu.max": "150000\n"}, None),
    ("a zero period", V2, {"cpu.max": "150000 0\n"}, None),
]


@pytest.mark.parametrize("self_cgroup, files, expected", [case[1:] for case in _QUOTAS],
                         ids=[case[0] for case in _QUOTAS])
def test_cgroup_cpu_quota(tmp_path, self_cgroup, files, expected):
    (tmp_path / "self_cgroup").write_text(self_cgroup)
    root = _tree(tmp_path / "cgroup", files)
    assert registry.cgroup_cpu_quota(root, str(tmp_path / "self_cgroup")) == expected


def test_cgroup_cpu_quota_without_the_process_cgroup_file_reads_the_roots(tmp_path):
    root = _tree(tmp_path / "cgroup", {"cpu.max": "150000 100000\n"})
    assert registry.cgroup_cpu_quota(root, str(tmp_path / "missing")) == 2


@pytest.mark.parametrize("quota, cpus, expected", [("150000 100000", 8, 2), ("max 100000", 8, 8),
                                                   ("800000 100000", 3, 3)])
def test_available_cpus_is_the_smaller_of_affinity_and_quota(tmp_path, quota, cpus, expected):
    (tmp_path / "self_cgroup").write_text(V2)
    root = _tree(tmp_path / "cgroup", {"cpu.max": quota})
    assert registry.available_cpus(root, str(tmp_path / "self_cgroup"), cpus=cpus) == expected


# -- the CPUs the process may run on ---------------------------------------------------

def test_affinity_smaller_than_the_cpu_count_counts(monkeypatch):
    monkeypatch.delattr(os, "process_cpu_count", raising=False)  # Python < 3.13
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {2, 5}, raising=False)
    assert registry.affinity_cpus() == 2


def test_process_cpu_count_is_preferred_where_python_has_it(monkeypatch):
    monkeypatch.setattr(os, "process_cpu_count", lambda: 3, raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4}, raising=False)
    assert registry.affinity_cpus() == 3


def _thread_count_in_a_process(cpus, **env):
    """rc.get_num_threads() in a new process pinned to the first `cpus` CPUs of this one's."""
    allowed = sorted(os.sched_getaffinity(0))[:cpus]
    environment = {name: value for name, value in os.environ.items() if name != "RNNCORE_NUM_THREADS"}
    environment.update(PYTHONPATH=SRC, **env)
    done = subprocess.run([sys.executable, "-c", "import rnncore; print(rnncore.get_num_threads())"],
                          env=environment, capture_output=True, text=True, timeout=120,
                          preexec_fn=lambda: os.sched_setaffinity(0, allowed))
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(getattr(os, "sched_getaffinity", set)(0)) < 2,
                    reason="needs an affinity mask of two CPUs or more")
def test_a_pinned_process_defaults_to_its_cpus_and_the_environment_overrides():
    quota = registry.cgroup_cpu_quota()
    assert _thread_count_in_a_process(1) == 1
    assert _thread_count_in_a_process(2) == min(2, quota or 2)
    assert _thread_count_in_a_process(1, RNNCORE_NUM_THREADS="3") == 3


def test_the_default_is_read_once_not_per_call(monkeypatch):
    """A one-step call must not pay the affinity and cgroup reads: the count resolved
    per call is the one read at import."""
    def refuse(*args):
        raise AssertionError("the CPUs were read again during a call")
    monkeypatch.setattr(registry, "_num_threads", None)
    monkeypatch.setattr(registry, "_followed_threads", None)
    for name in ("affinity_cpus", "cgroup_cpu_quota", "available_cpus"):
        monkeypatch.setattr(registry, name, refuse)
    monkeypatch.setattr(os, "sched_getaffinity", refuse, raising=False)
    monkeypatch.setattr(os, "cpu_count", refuse)
    layer = rc.LSTM(3, 4, seed=0).eval()
    layer(np.zeros((1, 1, 3), np.float32))
    assert rc.get_num_threads() == registry._CPU_COUNT


def test_a_host_framework_count_is_followed_unless_rnncore_own_is_set(monkeypatch):
    monkeypatch.setattr(registry, "_num_threads", None)
    monkeypatch.setattr(registry, "_followed_threads", None)
    assert rc.get_num_threads() == registry._CPU_COUNT
    registry.follow_threads(5)
    assert rc.get_num_threads() == 5
    rc.set_num_threads(2)
    registry.follow_threads(7)
    assert rc.get_num_threads() == 2


# -- one BLAS section ------------------------------------------------------------------

def test_the_section_is_the_extension_where_it_is_compiled():
    section = registry.blas_section()
    if "cython" in rc.backends():
        from rnncore.backends.cython import _recurrent
        assert section is _recurrent
    else:
        assert isinstance(section, registry._OneBlasThread)


def test_first_callers_at_once_get_one_section(monkeypatch):
    """Two sections would each think they were alone: one caller would put the BLAS
    limit back while another was inside."""
    monkeypatch.setattr(registry, "_section", None)
    monkeypatch.setattr(registry, "_EXTENSION", "rnncore.backends.cython._not_compiled")
    functions = registry.blas_thread_functions()

    def slow_scan():
        time.sleep(0.05)  # the library scan takes a while: the callers overlap in it
        return functions
    monkeypatch.setattr(registry, "blas_thread_functions", slow_scan)
    got = []
    callers = [threading.Thread(target=lambda: got.append(registry.blas_section())) for _ in range(4)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    assert len(got) == 4 and len({id(section) for section in got}) == 1
    assert isinstance(got[0], registry._OneBlasThread)


def _blas_thread_counts():
    return [(lib["filepath"], lib["num_threads"]) for lib in threadpool_info() if lib["user_api"] == "blas"]


@pytest.mark.skipif(not FAST, reason="no compiled backend here")
def test_bidirectional_layers_in_two_threads_on_both_backends(threaded_blas_rounds_differently, blas_threads,
                                                              restore_threads):
    """Each thread sets its own thread count before each call (rc's count is the
    process's: the calls see each other's settings, and must not care), one on each fast
    backend, their kernel calls overlapping; the numbers are those of one thread alone,
    and the BLAS limit (2 here, so that a wrong put-back shows) is 2 again afterwards."""
    get, set_ = blas_threads
    backends = (FAST[0], FAST[-1])
    expected = {backend: _layer_numbers(backend, True, True, threads=1) for backend in backends}
    set_(2)
    before = _blas_thread_counts()
    rounds, start = 8, threading.Barrier(2)
    results = {backend: [] for backend in backends}
    failures = []

    def work(backend, counts):
        try:
            start.wait(30)
            for k in range(rounds):
                results[backend].append(_layer_numbers(backend, True, True, threads=counts[k % len(counts)]))
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    workers = [threading.Thread(target=work, args=(backends[0], (1, 2, 3))),
               threading.Thread(target=work, args=(backends[1], (2, 1)))]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert not failures, failures
    for backend in backends:
        assert len(results[backend]) == rounds
        for k, got in enumerate(results[backend]):
            _assert_bitwise(got, expected[backend], f"{backend}, round {k}")
    assert get() == 2 and _blas_thread_counts() == before
