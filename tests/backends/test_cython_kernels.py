"""The compiled backend's own pieces: its tanh/sigmoid, the inference path, packed
lengths, and bitwise independence from the thread count. (Every backend against the
reference, variant by variant, is tests/test_backends.py.)"""
import numpy as np
import pytest
from scipy.special import expit

import rnncore as rc
from rnncore.backends.reference import backend as _reference
from rnncore.core.spec import CellSpec

from cases import THREADS, random_backend_case as _random_case
from conftest import assert_close

# an install without the compiled extension (no compiler at build time) skips this file
_recurrent = pytest.importorskip("rnncore.backends.cython._recurrent", reason="the compiled extension is not built here")
cython_backend = pytest.importorskip("rnncore.backends.cython.backend", reason="the compiled extension is not built here")


def _ulp_error(dtype, name, x):
    """Error of the kernels' activation in ulps of `dtype`, against float64 libm."""
    values = x.astype(dtype)
    exact = np.tanh(values.astype(np.float64)) if name == "tanh" else expit(values.astype(np.float64))
    _recurrent.activation(name, values)
    ulp = np.spacing(np.abs(exact).astype(dtype)).astype(np.float64)
    return np.abs(values.astype(np.float64) - exact) / ulp


def _grid(lo, hi):
    """A dense uniform grid plus both signs of a geometric one, to reach tiny arguments."""
    tiny = np.geomspace(1e-30, 1.0, 20001)
    return np.concatenate([np.linspace(lo, hi, 400001), tiny, -tiny])


# Bounds: the measured maxima (2.6 and 2.3 float32 ulps, 3 and 4 float64 ulps, as
# documented in csrc/rnncore_math.h) rounded up to the next integer. float32 is held
# to "a few ulp" of the true value; float64 to a few ulp of libm, which is itself within
# 1 ulp, far inside the 1e-10 relative agreement over a sequence.
@pytest.mark.parametrize("dtype, name, lo, hi, bound", [
    (np.float32, "tanh", -30.0, 30.0, 3),
    (np.float32, "sigmoid", -87.0, 87.0, 3),   # below -87 sigmoid is subnormal in float32
    (np.float64, "tanh", -30.0, 30.0, 3),
    (np.float64, "sigmoid", -700.0, 700.0, 4),
])
def test_activation_accuracy_in_ulps(dtype, name, lo, hi, bound):
    err = _ulp_error(dtype, name, _grid(lo, hi))
    assert err.max() <= bound, f"{name} {np.dtype(dtype).name}: {err.max():.2f} ulp"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_activation_limits_and_nan(dtype):
    x = np.array([-np.inf, -1e30, 1e30, np.inf, np.nan, 0.0, -0.0], dtype=dtype)
    t = x.copy()
    _recurrent.activation("tanh", t)
    s = x.copy()
    _recurrent.activation("sigmoid", s)
    np.testing.assert_array_equal(t[:4], [-1, -1, 1, 1])
    assert np.isnan(t[4]) and np.isnan(s[4])
    assert t[5] == 0 and t[6] == 0
    # sigmoid at -inf is within one subnormal step of 0 (the argument is clamped where
    # e^-x would overflow), and exactly 1 at +inf
    np.testing.assert_array_equal(s[2:4], [1, 1])
    assert 0 <= s[0] < 1e-37 and 0 <= s[1] < 1e-37
    assert s[5] == 0.5


def test_tanh_is_odd_and_sigmoid_symmetric():
    x = np.linspace(0, 20, 10001)
    for dtype in (np.float32, np.float64):
        pos, neg = x.astype(dtype), -x.astype(dtype)
        _recurrent.activation("tanh", pos)
        _recurrent.activation("tanh", neg)
        np.testing.assert_array_equal(pos, -neg)


_SPECS = [
    CellSpec("rnn", 5, 6, nonlinearity="relu"),
    CellSpec("jordan", 5, 6, output_size=3, output_activation="sigmoid"),
    CellSpec("lstm", 5, 6, proj_size=4, peephole=True),
    CellSpec("lstm", 5, 6, coupled_input_forget=True, bias=False),
    CellSpec("gru", 5, 6, reset_after=True),
    CellSpec("gru", 5, 6, reset_after=False),
]


@pytest.mark.parametrize("spec", _SPECS, ids=lambda s: f"{s.kind}-{s.proj_size}-{s.reset_after}")
def test_inference_path_keeps_nothing_and_matches_training(spec):
    params, x, states, _ = _random_case(spec, 6, 3, 2, np.float64, 1)
    lengths = np.array([6, 2, 4])
    reverse = (False, True)
    y_train, s_train, ctx = cython_backend.layer_forward(spec, params, x, states, lengths, True, reverse, THREADS)
    y_eval, s_eval, none = cython_backend.layer_forward(spec, params, x, states, lengths, False, reverse, THREADS)
    assert none is None and ctx is not None
    # the same kernels run in both modes; only where the state is written differs
    np.testing.assert_array_equal(y_eval, y_train)
    for a, b in zip(s_eval, s_train):
        for u, v in zip(a, b):
            np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("spec", _SPECS, ids=lambda s: f"{s.kind}-{s.proj_size}-{s.reset_after}")
def test_packed_lengths_equal_separate_runs(spec):
    """A batch with lengths gives, for each sequence, what running it alone on its own
    valid steps gives: outputs, final states, and every gradient."""
    T, B, D = 7, 4, 2
    params, x, states, rng = _random_case(spec, T, B, D, np.float64, 2)
    lengths = np.array([3, 7, 1, 5])
    reverse = (False, True)
    y, states_n, ctx = cython_backend.layer_forward(spec, params, x, states, lengths, True, reverse, THREADS)
    dy = rng.standard_normal(y.shape)
    dstates_n = [tuple(rng.standard_normal(s.shape) for s in st) for st in states]
    dx, dstates0, grads = cython_backend.layer_backward(ctx, dy, dstates_n, THREADS)
    grads_sum = [{k: np.zeros_like(v) for k, v in g.items()} for g in grads]
    for b in range(B):
        L = lengths[b]
        one = [tuple(s[b:b + 1] for s in st) for st in states]
        y_b, sn_b, ctx_b = cython_backend.layer_forward(spec, params, np.ascontiguousarray(x[:L, b:b + 1]), one,
                                                        None, True, reverse, THREADS)
        # float64 with different GEMM shapes: rounding only, so the float64 tolerance
        assert_close(y[:L, b:b + 1], y_b, what=f"y of sequence {b}")
        assert not np.any(y[L:, b]), "outputs past a sequence's end are zero"
        for d in range(D):
            for got, want in zip(states_n[d], sn_b[d]):
                assert_close(got[b:b + 1], want, what=f"final state of {b}")
        dn_b = [tuple(s[b:b + 1] for s in st) for st in dstates_n]
        dx_b, ds0_b, g_b = cython_backend.layer_backward(ctx_b, np.ascontiguousarray(dy[:L, b:b + 1]), dn_b, THREADS)
        assert_close(dx[:L, b:b + 1], dx_b, what=f"dx of {b}")
        assert not np.any(dx[L:, b]), "no gradient reaches inputs past a sequence's end"
        for d in range(D):
            for got, want in zip(dstates0[d], ds0_b[d]):
                assert_close(got[b:b + 1], want, what=f"initial-state gradient of {b}")
            for k in grads_sum[d]:
                grads_sum[d][k] += g_b[d][k]
    for d in range(D):
        for k in grads[d]:
            assert_close(grads[d][k], grads_sum[d][k], what=k)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_results_do_not_depend_on_thread_count(dtype):
    """Directions run concurrently at 2 threads, one after the other at 1: each does the
    same operations in the same order, so the results are bitwise equal."""
    spec = CellSpec("lstm", 8, 16, proj_size=5)
    params, x, states, rng = _random_case(spec, 9, 5, 2, dtype, 3)
    lengths = np.array([9, 3, 5, 9, 1])
    runs = []
    old = rc.get_num_threads()
    try:
        for threads in (1, 2):
            rc.set_num_threads(threads)
            y, sn, ctx = cython_backend.layer_forward(spec, params, x, states, lengths, True, (False, True), THREADS)
            dy = np.random.default_rng(4).standard_normal(y.shape).astype(dtype)
            dx, ds0, grads = cython_backend.layer_backward(ctx, dy, [tuple(np.ones_like(s) for s in st)
                                                                     for st in states], THREADS)
            runs.append([y, dx] + [a for st in sn + ds0 for a in st] + [g[k] for g in grads for k in sorted(g)])
    finally:
        rc.set_num_threads(old)
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


def test_backward_twice_from_one_context():
    """A saved context can be back-propagated through again with the same result."""
    spec = CellSpec("gru", 4, 5, reset_after=False)
    params, x, states, rng = _random_case(spec, 5, 3, 1, np.float64, 5)
    y, _, ctx = cython_backend.layer_forward(spec, params, x, states, np.array([5, 2, 4]), True, (True,), THREADS)
    dy = rng.standard_normal(y.shape)
    ds = [tuple(np.zeros_like(s) for s in states[0])]
    first = cython_backend.layer_backward(ctx, dy, ds, THREADS)
    second = cython_backend.layer_backward(ctx, dy, ds, THREADS)
    np.testing.assert_array_equal(first[0], second[0])
    for k in first[2][0]:
        np.testing.assert_array_equal(first[2][0][k], second[2][0][k])


def test_long_float64_sequence_keeps_reference_agreement():
    """The fast float64 tanh/sigmoid keep 1e-10 agreement over a long sequence."""
    spec = CellSpec("lstm", 3, 8, peephole=True)
    params, x, states, rng = _random_case(spec, 300, 2, 1, np.float64, 6)
    y, sn, _ = cython_backend.layer_forward(spec, params, x, states, None, False, (False,), THREADS)
    y_ref, sn_ref, _ = _reference.layer_forward(spec, params, x, states, None, False, (False,), THREADS)
    assert_close(y, y_ref, what="y")
    assert_close(sn[0][1], sn_ref[0][1], what="c_n")


def _assert_both_directions_match_reference(spec, params, x, states, lengths, rng):
    """Forward (y, final states) and backward (dx, initial-state and parameter gradients)
    of both directions with `lengths`, against the reference, at the dtype's tolerance."""
    reverse = (False, True)
    y, sn, ctx = cython_backend.layer_forward(spec, params, x, states, lengths, True, reverse, THREADS)
    y_ref, sn_ref, ctx_ref = _reference.layer_forward(spec, params, x, states, lengths, True, reverse, THREADS)
    assert_close(y, y_ref, what="y")
    for d in range(2):
        for a, b in zip(sn[d], sn_ref[d]):
            assert_close(a, b, what="final state")
    dy = rng.standard_normal(y.shape).astype(x.dtype)
    dsn = [tuple(rng.standard_normal(s.shape).astype(x.dtype) for s in st) for st in states]
    dx, ds0, grads = cython_backend.layer_backward(ctx, dy, dsn, THREADS)
    dx_ref, ds0_ref, grads_ref = _reference.layer_backward(ctx_ref, dy, dsn, THREADS)
    assert_close(dx, dx_ref, what="dx")
    for d in range(2):
        for a, b in zip(ds0[d], ds0_ref[d]):
            assert_close(a, b, what="initial-state gradient")
        for k in grads_ref[d]:
            assert_close(grads[d][k], grads_ref[d][k], what=k)


_TILED_SPECS = [
    CellSpec("rnn", 7, 20),
    CellSpec("lstm", 7, 20, proj_size=18, peephole=True),
    CellSpec("lstm", 7, 24),
    CellSpec("gru", 7, 20, reset_after=True),
    CellSpec("gru", 7, 20, reset_after=False),
    # wider than a panel or two: several panels and a partial one
    CellSpec("lstm", 7, 68),
    CellSpec("gru", 7, 80, reset_after=False),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("spec", _TILED_SPECS, ids=lambda s: f"{s.kind}-{s.proj_size}-{s.reset_after}")
def test_register_tiled_products_match_reference(spec, dtype):
    """Widths of 18..96 columns and 1..9 active rows: the packed product's register
    tiles (whole and partial panels, up to a tile's rows high, a remainder just above
    one tile as two halves), forward and backward."""
    params, x, states, rng = _random_case(spec, 8, 9, 2, dtype, 8)
    # active rows per step: 9, 8, 6, 5, 4, 3, 2, 1
    _assert_both_directions_match_reference(spec, params, x, states, np.array([8, 1, 3, 6, 2, 4, 5, 7, 2]), rng)
