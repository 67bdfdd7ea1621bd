"""Threads and processes.

- Fork: a worker process forked after the parent ran a layer (its thread team started,
  numba's threading layer chosen) runs layers and gets the parent's numbers; so do
  'spawn' and 'forkserver' workers. Every case has a timeout, so that a hang fails.
- BLAS: the kernels hold their BLAS at one thread while they run, from whichever thread
  calls, so the numbers are bitwise the same for any thread count and for concurrent
  calls, at a shape where threaded BLAS rounds differently.
- The thread count is checked before it is kept.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import rnncore as rc
from rnncore import _backend

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
