"""rnncore.warmup and the numba backend's compile notices: a compile at first use is
announced with its duration, a load from numba's disk cache is not, and warmup does
the work ahead of time."""
import logging
import os
import subprocess
import sys

import numpy as np
import pytest

import rnncore as rc
from rnncore.backends import registry as _backend

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "src")
ALL_FAMILIES = {(kind, dtype) for kind in ("rnn", "lstm", "gru", "jordan") for dtype in ("float32", "float64")}
needs_numba = pytest.mark.skipif("numba" not in rc.backends(), reason="numba is not installed")


@pytest.fixture
def selected(monkeypatch):
    """Selects a backend for one test; the previous selection comes back after it."""
    monkeypatch.setattr(_backend, "_selected", _backend._selected)
    return rc.set_backend


def _entries():
    from rnncore.backends.numba import backend
    return list(backend.KERNEL_NAMES)


def _loads_and_compiles():
    return sum(sum(k.stats.cache_hits.values()) + sum(k.stats.cache_misses.values()) for k in _entries())


@needs_numba
def test_warmup_returns_every_family_and_a_second_one_has_nothing_left_to_do(selected):
    selected("numba")
    first = rc.warmup()
    assert set(first) == ALL_FAMILIES
    assert all(isinstance(seconds, float) and seconds >= 0 for seconds in first.values())
    before = _loads_and_compiles()
    second = rc.warmup()
    assert set(second) == ALL_FAMILIES
    assert _loads_and_compiles() == before  # neither compiled nor loaded from the cache again


@needs_numba
def test_warmup_takes_the_families_asked_for(selected):
    selected("numba")
    times = rc.warmup(kinds="gru", dtypes=[np.float64, "float64"], training=False)
    assert list(times) == [("gru", "float64")]


def test_warmup_on_a_backend_without_compiling_returns_at_once(selected):
    selected("numpy")
    assert rc.warmup() == {}
    assert rc.warmup(kinds=["lstm"], dtypes="float32", training=False) == {}
    assert rc.warmup(backend=None) == {}


@needs_numba
@pytest.mark.parametrize("other", ["numpy", "cython"])
def test_warmup_of_numba_by_name_whatever_the_selection(selected, other):
    if other not in rc.backends():
        pytest.skip(f"{other} is not available")
    selected(other)
    times = rc.warmup(kinds="rnn", dtypes="float64", training=False, backend="numba")
    assert list(times) == [("rnn", "float64")]
    before = _loads_and_compiles()
    # the kernel is in this process now: a layer pinned to numba finds it without compiling
    rc.RNN(2, 3, dtype="float64", backend="numba").eval()(np.zeros((1, 1, 2)))
    assert _loads_and_compiles() == before
    assert rc.get_backend() == other


@needs_numba
def test_warmup_by_name_of_a_backend_without_compiling_returns_at_once(selected):
    selected("numba")
    before = _loads_and_compiles()
    assert rc.warmup(backend="numpy") == {}
    assert _loads_and_compiles() == before


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(kinds="lstn"), ValueError, "kinds: expected names from"),
    (dict(kinds=["lstm", 3]), ValueError, "kinds: expected names from"),
    (dict(kinds=3), TypeError, "kinds: expected None, a cell kind or a list"),
    (dict(dtypes="int32"), TypeError, "dtypes: expected float32 or float64"),
    (dict(dtypes=[np.float32, np.float16]), TypeError, "dtypes: expected float32 or float64"),
    (dict(dtypes=5), TypeError, "dtypes: expected None, float32, float64"),
    (dict(training="yes"), TypeError, "training: expected True or False"),
    (dict(backend="numbaa"), ValueError, r"backend: expected one of \[.*\], got 'numbaa'"),
    (dict(backend=3), TypeError, "backend: expected None or a backend name, got 3"),
    (dict(backend=["numba"]), TypeError, r"backend: expected None or a backend name, got \['numba'\]"),
])
def test_warmup_refuses_bad_arguments_by_name(selected, kwargs, error, words):
    selected("numba" if "numba" in rc.backends() else "numpy")
    with pytest.raises(error, match=f"warmup: {words}"):
        rc.warmup(**kwargs)


@needs_numba
def test_a_notice_goes_to_the_configured_logging_and_is_silenced_by_its_level(caplog, capsys):
    from rnncore.backends.numba.backend import notice
    with caplog.at_level(logging.INFO, logger="rnncore"):
        notice("compiling something")
    assert [r.getMessage() for r in caplog.records] == ["compiling something"]
    caplog.clear()
    logger = logging.getLogger("rnncore")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        notice("compiling something")
    finally:
        logger.setLevel(level)
    assert caplog.records == [] and capsys.readouterr().err == ""


def _run_child(cache_dir):
    env = dict(os.environ, PYTHONPATH=SRC, NUMBA_CACHE_DIR=str(cache_dir))
    env.pop("RNNCORE_BACKEND", None)
    code = "import rnncore as rc\nrc.RNN(2, 3, dtype='float64', backend='numba')([[[0.0, 1.0]]])\n"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return [line for line in done.stderr.splitlines() if line.startswith("rnncore: numba backend:")]


@needs_numba
def test_a_compile_is_announced_with_its_duration_and_a_cache_load_is_not(tmp_path):
    first = _run_child(tmp_path)  # an empty cache: the forward kernel compiles
    assert len(first) == 2, first
    assert "compiling the rnn/jordan forward kernel for float64" in first[0]
    assert first[1].startswith("rnncore: numba backend: compiled the rnn/jordan forward kernel for float64 in ")
    assert first[1].endswith(" s")
    assert _run_child(tmp_path) == []  # the same cache: loaded, silently
