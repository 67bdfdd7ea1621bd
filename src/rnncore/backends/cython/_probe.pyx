# The single-core FMA peak, measured: the denominator of the benchmarks' "fraction of
# the peak" (benchmarks/bench_peers.py), taken in the same run as the figures it divides.
import math
import time

import numpy as np

cdef extern from "rnncore_probe.h" nogil:
    int rc_gemm_isa()
    long long rc_fma_flops_per_iteration(size_t value_bytes)
    double rc_fma_loop(size_t value_bytes, long long iterations)

# rnncore_gemm.h's instance numbers
_ISA_NAMES = {0: "baseline", 1: "avx2", 2: "avx512f", 3: "baseline"}
# a timed run shorter than this is dominated by the clock and the call
_MIN_RUN_SECONDS = 2e-3


def isa():
    """The instruction set the probe (and the packed product) runs on this CPU.

    Returns
    -------
    str
        ``"avx512f"``, ``"avx2"`` (with FMA) or ``"baseline"`` (x86-64's 16-byte
        vectors without FMA, or another architecture's portable loop).

    Examples
    --------
    >>> from rnncore.backends.cython import _probe
    >>> _probe.isa() in ("avx512f", "avx2", "baseline")
    True
    """
    return _ISA_NAMES.get(rc_gemm_isa(), "baseline")


cdef double _run(size_t value_bytes, long long iterations, double *checksum):
    """Seconds of one run of the loop; adds its result to *checksum."""
    cdef double t0 = time.perf_counter()
    cdef double result
    with nogil:
        result = rc_fma_loop(value_bytes, iterations)
    cdef double elapsed = time.perf_counter() - t0
    checksum[0] += result
    return elapsed


def fma_peak(dtype, seconds=0.2):
    """The single-core multiply-add peak of this CPU, in GFLOP/s, measured now.

    Independent vector multiply-add chains, enough of them to hide the FMA latency, run
    on the calling thread without the GIL for about `seconds`; the figure is the best of
    several timed runs (the peak is what the core can do, not what it did on average
    while another process shared it). One multiply-add counts as two operations.

    Parameters
    ----------
    dtype : numpy dtype or its name
        float32 or float64.
    seconds : float, default 0.2
        About how long to measure, more than 0.

    Returns
    -------
    float
        GFLOP/s, positive and finite.

    Raises
    ------
    ValueError
        For another dtype, or for `seconds` not a finite number above 0.

    Examples
    --------
    >>> import numpy as np
    >>> from rnncore.backends.cython import _probe
    >>> _probe.fma_peak(np.float32, seconds=0.02) > 0
    True
    """
    kind = None
    if dtype is not None:  # np.dtype(None) is float64, and a dtype compares equal to None
        try:
            kind = np.dtype(dtype)
        except TypeError:
            pass
    if kind is None or kind.type not in (np.float32, np.float64):
        raise ValueError(f"fma_peak: expected dtype float32 or float64, got {dtype!r}")
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not (0 < seconds < math.inf):
        raise ValueError(f"fma_peak: expected seconds a finite number above 0, got {seconds!r}")
    cdef size_t value_bytes = kind.itemsize
    cdef double checksum = 0, elapsed, best = 0
    cdef long long iterations = 1000
    cdef double flops = rc_fma_flops_per_iteration(value_bytes)
    # calibrate: double the run until it is long enough to time
    elapsed = _run(value_bytes, iterations, &checksum)
    while elapsed < _MIN_RUN_SECONDS:
        iterations *= 2
        elapsed = _run(value_bytes, iterations, &checksum)
    # then runs of about a tenth of the budget each, the best kept
    iterations = max(iterations, <long long>(iterations * (seconds / 10) / elapsed))
    deadline = time.perf_counter() + seconds
    while True:
        elapsed = _run(value_bytes, iterations, &checksum)
        best = max(best, flops * iterations / elapsed)
        if time.perf_counter() >= deadline:
            break
    if not math.isfinite(checksum):  # the chains converge; a non-finite sum is a broken loop
        raise RuntimeError(f"fma_peak: the probe's accumulators diverged ({checksum})")
    return best / 1e9
