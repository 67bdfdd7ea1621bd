"""The FMA-peak probe of the benchmarks: a figure a fraction of the peak can divide by."""
import math

import numpy as np
import pytest

_probe = pytest.importorskip("rnncore.backends.cython._probe", reason="the compiled extension is not built here")

# no core retires more than 64 float32 operations a cycle (two AVX-512 FMA ports) and
# none runs at 10 GHz: a figure above this is a miscounted or optimised-away loop
BOUND_GFLOPS = {np.float32: 64 * 10.0, np.float64: 32 * 10.0}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_peak_is_a_positive_finite_figure_below_any_cores(dtype):
    peak = _probe.fma_peak(dtype, seconds=0.05)
    assert isinstance(peak, float)
    assert math.isfinite(peak) and 0 < peak < BOUND_GFLOPS[dtype], peak


def test_dtype_by_name_and_isa_named():
    assert _probe.fma_peak("float32", seconds=0.01) > 0
    assert _probe.fma_peak("float", seconds=0.01) > 0  # numpy's name for float64
    assert _probe.isa() in ("avx512f", "avx2", "baseline")


@pytest.mark.parametrize("dtype", [np.int32, np.float16, np.complex64, np.longdouble, None, "no such dtype"])
def test_other_dtypes_refused(dtype):
    with pytest.raises(ValueError, match="fma_peak: expected dtype float32 or float64, got"):
        _probe.fma_peak(dtype)


@pytest.mark.parametrize("seconds", [0, -1.0, math.inf, math.nan, "0.1", True])
def test_bad_seconds_refused(seconds):
    with pytest.raises(ValueError, match="fma_peak: expected seconds a finite number above 0, got"):
        _probe.fma_peak(np.float32, seconds=seconds)
