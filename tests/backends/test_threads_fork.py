"""Threads and processes.

- Fork: a worker process forked after the parent ran a layer (its thread team started,
  numba's threading layer chosen) runs layers and gets the parent's numbers; so do
  'spawn' and 'forkserver' workers. Every case has a timeout, so that a hang fails.
- BLAS: the kernels hold their BLAS at one thread while they run, from whichever thread
  calls, so the numbers are bitwise the same for any thread count and for concurrent
  calls, at a shape where threaded BLAS rounds differently.
- The thread count is checked before it is kept.
"""
import concurrent.futures
import contextlib
import ctypes
import ctypes.util
import json
import multiprocessing
import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import rnncore as rc
from rnncore.backends import registry as _backend

TESTS = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.dirname(os.path.dirname(rc.__file__))
FAST = [name for name in ("cython", "numba") if name in rc.backends()]


@pytest.fixture
def restore_threads():
    before = rc.get_num_threads()
    yield
    rc.set_num_threads(before)


def _python(code, timeout=600, **env):
    environment = dict(os.environ, PYTHONPATH=SRC, **env)
    environment.pop("RNNCORE_BACKEND", None)
    return subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True, text=True,
                          timeout=timeout)


# -- the thread count is checked -------------------------------------------------------

@pytest.mark.parametrize("value", [2**64, 2**31, "largest + 1", 0])
def test_set_num_threads_refuses_counts_out_of_range(value, restore_threads):
    if value == "largest + 1":
        value = _backend.MAX_THREADS + 1
    rc.set_num_threads(2)
    with pytest.raises(ValueError, match=rf"set_num_threads: expected an int from 1 to {_backend.MAX_THREADS}"):
        rc.set_num_threads(value)
    assert rc.get_num_threads() == 2  # the previous value stays


@pytest.mark.parametrize("value", [str(2**31), "0", "two"])
def test_environment_thread_count_is_checked(value):
    done = _python("import rnncore", RNNCORE_NUM_THREADS=value)
    assert done.returncode != 0
    assert f"RNNCORE_NUM_THREADS: expected an int from 1 to {_backend.MAX_THREADS}, got {value!r}" in done.stderr


# -- BLAS at one thread ----------------------------------------------------------------

SHAPE = dict(input_size=64, hidden_size=128, steps=10, batch=32)  # x @ W_ih.T: (320, 64) x (64, 512)


def _blas_getter_setter():
    functions = [(get, set_) for get, set_, per_thread in _backend.blas_thread_functions() if not per_thread]
    if not functions:
        pytest.skip("no process-wide BLAS thread setting here")
    get, set_ = functions[0]
    return ctypes.CFUNCTYPE(ctypes.c_int)(get), ctypes.CFUNCTYPE(None, ctypes.c_int)(set_)


@pytest.fixture
def blas_threads():
    """The scipy BLAS's getter and setter; puts the setting back afterwards."""
    get, set_ = _blas_getter_setter()
    before = get()
    yield get, set_
    set_(before)


@pytest.fixture(scope="module")
def threaded_blas_rounds_differently():
    """The shape's input projection in scipy's BLAS at one thread and at two differs,
    or the determinism tests below would prove nothing here."""
    from scipy.linalg import blas
    from threadpoolctl import threadpool_limits
    rng = np.random.default_rng(0)
    x = rng.standard_normal((SHAPE["steps"] * SHAPE["batch"], SHAPE["input_size"])).astype(np.float32)
    w = rng.standard_normal((4 * SHAPE["hidden_size"], SHAPE["input_size"])).astype(np.float32)
    products = []
    for threads in (1, 2):
        with threadpool_limits(limits=threads, user_api="blas"):
            products.append(blas.sgemm(1.0, w, x, trans_b=True))
    if np.array_equal(*products):
        pytest.skip("this BLAS rounds the shape alike at one and two threads")


def _layer_numbers(backend, bidirectional, training, threads=None):
    if threads is not None:
        rc.set_num_threads(threads)
    layer = rc.LSTM(SHAPE["input_size"], SHAPE["hidden_size"], bidirectional=bidirectional, seed=3,
                    backend=backend)
    if not training:
        layer.eval()
    rng = np.random.default_rng(4)
    x = rng.standard_normal((SHAPE["steps"], SHAPE["batch"], SHAPE["input_size"])).astype(np.float32)
    return _forward_backward(layer, x, training, rng)


def _forward_backward(layer, x, training, rng):
    """The outputs, final states and (training) every gradient of one call."""
    y, (h, c) = layer(x)
    numbers = [y, h, c]
    if training:
        dx, _ = layer.backward(rng.standard_normal(y.shape).astype(np.float32))
        numbers += [dx] + [layer.grads[name] for name in sorted(layer.grads)]
    return numbers


def _assert_bitwise(got, expected, what):
    for k, (a, b) in enumerate(zip(got, expected)):
        assert np.array_equal(a, b), f"{what}: array {k} differs by {np.max(np.abs(a - b)):.3e}"


@pytest.mark.parametrize("backend", FAST)
def test_results_do_not_depend_on_the_thread_count(backend, threaded_blas_rounds_differently,
                                                   restore_threads):
    more_than_cores = 2 * (os.cpu_count() or 1) + 1
    for bidirectional in (False, True):
        expected = _layer_numbers(backend, bidirectional, True, threads=1)
        for threads in (2, 3, more_than_cores):
            _assert_bitwise(_layer_numbers(backend, bidirectional, True, threads=threads), expected,
                            f"{threads} threads, bidirectional={bidirectional}")


_CONCURRENT_CASES = [(True, False), (True, True), (False, True)]  # (bidirectional, training)


@pytest.mark.parametrize("pool", ["threading.Thread", "ThreadPoolExecutor"])
@pytest.mark.parametrize("backend", FAST)
def test_concurrent_calls_from_worker_threads_match_one_thread(backend, pool, threaded_blas_rounds_differently,
                                                               restore_threads):
    expected = {case: _layer_numbers(backend, *case, threads=1) for case in _CONCURRENT_CASES}
    rc.set_num_threads(2)
    jobs = [case for case in _CONCURRENT_CASES for _ in range(3)]
    if pool == "ThreadPoolExecutor":
        with concurrent.futures.ThreadPoolExecutor(max_workers=4) as executor:
            results = list(executor.map(lambda case: _layer_numbers(backend, *case), jobs))
    else:
        results = [None] * len(jobs)

        def work(k):
            results[k] = _layer_numbers(backend, *jobs[k])

        workers = [threading.Thread(target=work, args=(k,)) for k in range(len(jobs))]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    main_thread = _layer_numbers(backend, True, True)
    for case, got in zip(jobs + [(True, True)], results + [main_thread]):
        _assert_bitwise(got, expected[case], f"bidirectional, training = {case}")


@pytest.mark.parametrize("backend", FAST)
def test_thread_count_set_in_a_worker_thread_counts(backend, threaded_blas_rounds_differently, restore_threads):
    expected = _layer_numbers(backend, False, True, threads=1)
    rc.set_num_threads(2)  # the main thread sets first
    got = []
    worker = threading.Thread(target=lambda: got.append(_layer_numbers(backend, False, True, threads=1)))
    worker.start()
    worker.join()
    _assert_bitwise(got[0], expected, "set to 1 in a worker thread")


def _sections():
    """Every implementation of the section: the extension's, and the Python one the numba
    backend uses where the extension is absent."""
    found = [pytest.param(lambda functions: _backend._OneBlasThread(functions), id="python")]
    if "cython" in rc.backends():
        from rnncore.backends.cython import _recurrent

        def configured(functions):
            _recurrent.configure_blas(functions)
            return _recurrent
        found.append(pytest.param(configured, id="extension"))
    return found


@pytest.fixture
def section_factory(request):
    yield request.param
    if "cython" in rc.backends():  # the extension's section back on the real libraries
        from rnncore.backends.cython import _recurrent
        _recurrent.configure_blas(_backend.blas_thread_functions())


@pytest.mark.parametrize("section_factory", _sections(), indirect=True)
def test_nested_and_concurrent_sections_do_not_restore_each_other(section_factory, blas_threads):
    get, set_ = blas_threads
    section = section_factory(_backend.blas_thread_functions())
    set_(2)
    outer = section.blas_enter()
    assert get() == 1
    entered, release = threading.Event(), threading.Event()
    seen = []

    def other_thread():
        token = section.blas_enter()
        entered.set()
        release.wait(30)
        seen.append(get())
        section.blas_leave(token)

    worker = threading.Thread(target=other_thread)
    worker.start()
    assert entered.wait(30)
    section.blas_leave(outer)  # the first one in leaves first: the other is still inside
    assert get() == 1
    release.set()
    worker.join()
    assert seen == [1] and get() == 2  # the last one out puts the setting back
    inner = section.blas_enter()
    set_(3)  # changed by someone else meanwhile: kept
    section.blas_leave(inner)
    assert get() == 3


@pytest.mark.parametrize("section_factory", _sections(), indirect=True)
def test_per_thread_settings_are_set_and_restored_by_each_thread(section_factory):
    name = ctypes.util.find_library("gomp")
    if name is None:
        pytest.skip("no libgomp to stand in for a per-thread BLAS setting")
    gomp = ctypes.CDLL(name)
    functions = ((ctypes.cast(gomp.omp_get_max_threads, ctypes.c_void_p).value,
                  ctypes.cast(gomp.omp_set_num_threads, ctypes.c_void_p).value, True),)
    section = section_factory(functions)
    seen = {}

    def in_thread(own):
        gomp.omp_set_num_threads(own)
        token = section.blas_enter()
        inside = gomp.omp_get_max_threads()
        section.blas_leave(token)
        seen[own] = (inside, gomp.omp_get_max_threads())

    workers = [threading.Thread(target=in_thread, args=(own,)) for own in (3, 5)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert seen == {3: (1, 3), 5: (1, 5)}


@pytest.mark.skipif("numba" not in rc.backends(), reason="numba is not installed here")
@pytest.mark.parametrize("where", ["main thread", "worker thread"])
def test_numba_runs_at_the_thread_count_in_every_calling_thread(where, monkeypatch, restore_threads):
    import numba
    from rnncore.backends.numba import kernels
    seen = []
    compiled = kernels.gru_forward

    def recording(*args):
        seen.append(numba.get_num_threads())
        return compiled(*args)

    monkeypatch.setattr(kernels, "gru_forward", recording)
    layer = rc.GRU(3, 4, seed=0, backend="numba").eval()
    x = np.zeros((2, 3, 3), np.float32)

    def call():
        layer(x)
    for threads in (1, _backend.MAX_THREADS):  # the largest allowed is capped at numba's pool
        rc.set_num_threads(threads)
        if where == "main thread":
            call()
        else:
            worker = threading.Thread(target=call)
            worker.start()
            worker.join()
    assert seen == [1, numba.config.NUMBA_NUM_THREADS]


@pytest.mark.parametrize("backend", rc.backends())
def test_the_largest_thread_count_runs(backend, restore_threads):
    expected = _layer_numbers(backend, True, True, threads=1)
    _assert_bitwise(_layer_numbers(backend, True, True, threads=_backend.MAX_THREADS), expected, "the largest count")


# -- fork, spawn, forkserver -----------------------------------------------------------

def compute(backend, bidirectional, training, threads):
    """One layer's numbers; module-level, so that a 'spawn' worker can unpickle it."""
    rc.set_num_threads(threads)
    layer = rc.LSTM(8, 16, bidirectional=bidirectional, seed=0, backend=backend)
    if not training:
        layer.eval()
    rng = np.random.default_rng(1)
    x = rng.standard_normal((10, 40, 8)).astype(np.float32)  # 40 rows: two numba chunks
    return _forward_backward(layer, x, training, rng)


# The parent: runs every case itself first (so a fork copies a process that used the
# threads), then the same cases in a pool worker, and prints which came out bitwise equal.
_PARENT = textwrap.dedent("""
    import json, multiprocessing, sys
    sys.path.insert(0, {tests!r})
    import numpy as np
    import test_threads_fork as t
    cases = [({backend!r}, bidirectional, training, {threads})
             for bidirectional in (False, True) for training in (False, True)]
    expected = [t.compute(*case) for case in cases]
    pool = multiprocessing.get_context({method!r}).Pool(1)
    try:
        got = pool.starmap_async(t.compute, cases).get(timeout=60)
    except Exception as exc:
        print(json.dumps(dict(error=f"{{type(exc).__name__}}: {{exc}}")))
    else:
        print(json.dumps(dict(equal=[all(np.array_equal(a, b) for a, b in zip(e, g))
                                     for e, g in zip(expected, got)])))
    finally:
        pool.terminate()
""")

_METHODS = [("fork", 1), ("fork", 2), ("spawn", 2), ("forkserver", 2)]


def _parent(method, backend, threads, **env):
    done = _python(_PARENT.format(tests=TESTS, backend=backend, threads=threads, method=method), **env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("backend", rc.backends())
@pytest.mark.parametrize("method, threads", _METHODS, ids=[f"{m}-{t}threads" for m, t in _METHODS])
def test_pool_worker_runs_layers_after_the_parent_did(method, threads, backend):
    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"no {method!r} start method here")
    result = _parent(method, backend, threads)
    # one direction and two, inference and training, each bitwise the parent's
    assert result == dict(equal=[True] * 4), result


def _exit_code(pid, timeout):
    """The child's exit code, or None (and the child killed) when it is still running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    return None


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
@pytest.mark.parametrize("backend", FAST)
def test_fork_while_another_thread_is_inside_a_kernel_call(backend, blas_threads, restore_threads):
    """A fork copies the state of threads that do not come along: the count of callers
    inside the BLAS section, and under numba's workqueue layer the numba backend's turn.
    The child must neither wait for them nor keep its BLAS at one thread."""
    get, set_ = blas_threads
    expected = compute(backend, True, True, 2)
    set_(2)
    section = _backend.blas_section()
    inside, done = threading.Event(), threading.Event()

    def hold():
        if backend == "numba":
            from rnncore.backends.numba import backend as numba_backend
            turn = numba_backend._turns()
        else:
            turn = contextlib.nullcontext()
        with turn:
            token = section.blas_enter()
            inside.set()
            done.wait(60)
            section.blas_leave(token)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert inside.wait(30) and get() == 1
        pid = os.fork()
        if pid == 0:  # the child: report by exit code only, never return into pytest
            code = 1
            try:
                same = all(np.array_equal(a, b) for a, b in zip(compute(backend, True, True, 2), expected))
                code = 0 if same and get() == 2 else 3
            finally:
                os._exit(code)
        code = _exit_code(pid, 60)
    finally:
        done.set()
        holder.join()
    assert code == 0, "the child hung" if code is None else f"the child exited with {code}"


@pytest.mark.skipif("numba" not in rc.backends() or "fork" not in multiprocessing.get_all_start_methods(),
                    reason="needs numba and fork")
def test_numba_gnu_openmp_after_fork_is_refused_not_killed():
    """A user who chose numba's GNU OpenMP layer gets an error in the forked worker,
    where numba itself would terminate the worker and leave the pool waiting."""
    check = _python("import numba\nfrom numba.np.ufunc import omppool\nprint(omppool.openmp_vendor)")
    if check.returncode != 0 or check.stdout.strip() != "GNU":
        pytest.skip("numba's omp layer is not GNU OpenMP here")
    result = _parent("fork", "numba", 2, NUMBA_THREADING_LAYER="omp")
    assert "RuntimeError" in result.get("error", "") and "spawn" in result["error"], result
