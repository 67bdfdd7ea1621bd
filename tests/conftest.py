"""Shared fixtures. Every backend-parametrised test runs once per backend available here,
so a new backend is tested by the whole suite as soon as it imports."""
import numpy as np
import pytest

import rnncore as rc

BACKENDS = rc.backends()

# Tolerances, relative to the largest magnitude of the expected array. float64: the
# backends and the reference do the same operations in a different order, so they agree
# to a few hundred ulps of 2.2e-16 after T steps of rounding; 1e-10 leaves room for long
# sequences and still catches any real error. float32: eps 1.2e-7, times error growth
# over the steps and the GEMM sums; 1e-5 is the project's stated float32 agreement.
RTOL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-5}


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


def assert_close(actual, expected, dtype=None, rtol=None, what=""):
    """|actual - expected| <= rtol * max(|expected|, tiny), elementwise max."""
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    if rtol is None:
        rtol = RTOL[np.dtype(dtype or expected.dtype)]
    if not expected.size:
        return
    # an all-zero expectation (e.g. the gradient of an unused state) is held to the tiny floor
    scale = max(float(np.max(np.abs(expected))), 1e-12)
    err = float(np.max(np.abs(actual.astype(np.float64) - expected.astype(np.float64))))
    assert err <= rtol * scale, (
        f"{what}: max abs error {err:.3e} exceeds {rtol:.1e} x scale {scale:.3e}")
