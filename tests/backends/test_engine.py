"""The compiled backend's recurrent engine: the packed product of csrc/rnncore_gemm.h
against NumPy, every variant's layer on the packed path against the reference, and the
bits it gives: the same for any thread count, batch composition and instance order."""
import numpy as np
import pytest

from rnncore.backends.reference import backend as _reference
from rnncore.core.spec import CellSpec

from cases import random_backend_case as _random_case
from conftest import assert_close

_recurrent = pytest.importorskip("rnncore.backends.cython._recurrent", reason="the compiled extension is not built here")
cython_backend = pytest.importorskip("rnncore.backends.cython.backend", reason="the compiled extension is not built here")

# the micro-kernel instances this CPU runs: 0 portable, 1 AVX2 and FMA, 2 AVX-512F; and
# 3, the AVX-512 tile (64-byte vectors, 8 rows) built without its instructions, so that
# its logic is tested on a CPU without AVX-512 too
WIDE_PORTABLE = 3
ISAS = list(range(_recurrent.gemm_isa() + 1)) + [WIDE_PORTABLE]
# panel widths: 8..32 floats, 4..16 doubles; rows: tiles of 6 or 8, split remainders
_WIDTHS = [1, 3, 7, 8, 15, 16, 17, 31, 33, 65, 129]
_DEPTHS = [1, 2, 7, 33, 64]


@pytest.fixture(params=ISAS, ids=lambda isa: ["portable", "avx2", "avx512", "wide-portable"][isa])
def isa(request):
    before = _recurrent.gemm_isa(request.param)
    yield request.param
    _recurrent.gemm_isa(before)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_packed_product_matches_numpy(isa, dtype):
    """c (+)= a @ w.T for rows 1..40, odd widths and depths on both sides of every
    panel and tile edge, accumulating or not, against the float64 product."""
    rng = np.random.default_rng(isa)
    for m in range(1, 41):
        n, k = _WIDTHS[m % len(_WIDTHS)], _DEPTHS[m % len(_DEPTHS)]
        for n, k in ((n, k), (_WIDTHS[(m * 7) % len(_WIDTHS)], _DEPTHS[(m * 3) % len(_DEPTHS)])):
            a = rng.standard_normal((m, k)).astype(dtype)
            w = rng.standard_normal((n, k)).astype(dtype)
            c0 = rng.standard_normal((m, n)).astype(dtype)
            for accumulate in (False, True):
                c = c0.copy()
                _recurrent.packed_gemm(a, w, c, accumulate)
                want = a.astype(np.float64) @ w.T.astype(np.float64) + (c0 if accumulate else 0)
                # a sum of k products: the error grows with k, the scale with sqrt(k)
                assert_close(c, want, rtol=(1e-13 if dtype == np.float64 else 3e-6) * k,
                             what=f"{np.dtype(dtype).name} m={m} n={n} k={k} accumulate={accumulate}")


def test_packed_product_rows_do_not_depend_on_the_batch(isa):
    """Each element sums over k in order whatever tile its row falls in: a row's bits
    are the same alone as among 40 rows (so active rows shrinking with lengths, or a
    batch split between threads, change nothing)."""
    rng = np.random.default_rng(5)
    # n = 129: four whole panels and a partial one at the narrowest; 300: nine and more
    # (one or two rows run several panels side by side, see rc_packed_wide)
    for n, dtype in ((129, np.float32), (300, np.float32), (300, np.float64)):
        a = rng.standard_normal((40, 65)).astype(dtype)
        w = rng.standard_normal((n, 65)).astype(dtype)
        c0 = rng.standard_normal((40, n)).astype(dtype)
        for accumulate in (False, True):
            full = c0.copy()
            _recurrent.packed_gemm(a, w, full, accumulate)
            for rows in (1, 2, 3):
                for i in range(0, 40 - rows + 1, 3):
                    alone = c0[i:i + rows].copy()
                    _recurrent.packed_gemm(a[i:i + rows].copy(), w, alone, accumulate)
                    np.testing.assert_array_equal(alone, full[i:i + rows], err_msg=f"n={n} rows={rows} at {i}")


def test_packed_pair_rows_do_not_depend_on_the_batch(isa):
    """The same for the two products of a step summed in one pass (x and h against
    W_ih and W_hh, from a bias row), one and two rows against 40."""
    rng = np.random.default_rng(6)
    for n in (64, 260):
        a, a2 = rng.standard_normal((40, 9)).astype(np.float32), rng.standard_normal((40, 33)).astype(np.float32)
        w, w2 = rng.standard_normal((n, 9)).astype(np.float32), rng.standard_normal((n, 33)).astype(np.float32)
        bias = rng.standard_normal(n).astype(np.float32)
        full = np.zeros((40, n), np.float32)
        _recurrent.packed_gemm_pair(a, w, a2, w2, full, bias)
        for rows in (1, 2):
            for i in range(0, 40 - rows + 1, 5):
                alone = np.zeros((rows, n), np.float32)
                _recurrent.packed_gemm_pair(a[i:i + rows].copy(), w, a2[i:i + rows].copy(), w2, alone, bias)
                np.testing.assert_array_equal(alone, full[i:i + rows], err_msg=f"n={n} rows={rows} at {i}")


# the weight gradients' product (rc_gradient_product): steps k across the blocks of
# RC_GRADIENT_KC = 512; C's rows m and columns n on both sides of every panel and tile
# edge, either way round (narrow n runs as C^T), and past RC_GRADIENT_PACK_A_BYTES (64
# floats, 32 doubles: A's rows copied first)
_GRADIENT_SHAPES = [(1, 1, 1), (7, 3, 5), (64, 128, 8), (64, 8, 128), (33, 129, 17), (300, 33, 65),
                    (513, 40, 100), (1100, 17, 70), (520, 256, 64), (700, 96, 300)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gradient_product_matches_numpy(isa, dtype):
    """c += a.T @ b (a weight gradient over a chunk of steps) against the float64 product."""
    rng = np.random.default_rng(isa + 10)
    for k, m, n in _GRADIENT_SHAPES:
        a = rng.standard_normal((k, m)).astype(dtype)
        b = rng.standard_normal((k, n)).astype(dtype)
        c = rng.standard_normal((m, n)).astype(dtype)
        want = c.astype(np.float64) + a.T.astype(np.float64) @ b.astype(np.float64)
        _recurrent.gradient_gemm(a, b, c)
        # a sum of k products: the error grows with k, the scale with sqrt(k)
        assert_close(c, want, rtol=(1e-13 if dtype == np.float64 else 3e-6) * np.sqrt(k),
                     what=f"{np.dtype(dtype).name} k={k} m={m} n={n}")


def test_gradient_product_bits_follow_only_the_order_of_the_steps(isa):
    """Each element adds the steps in order onto C: a product cut into two at any step
    (a lean backward's segments, the chunks of contract.GRADIENT_CHUNK) gives the bits
    of the whole, and so does the product run the other way round (C^T += b.T @ a)."""
    rng = np.random.default_rng(isa + 20)
    for k, m, n in _GRADIENT_SHAPES[2:]:
        for dtype in (np.float32, np.float64):
            a = rng.standard_normal((k, m)).astype(dtype)
            b = rng.standard_normal((k, n)).astype(dtype)
            c0 = rng.standard_normal((m, n)).astype(dtype)
            whole = c0.copy()
            _recurrent.gradient_gemm(a, b, whole)
            for cut in sorted({1, k // 3, k - 1}):
                parts = c0.copy()
                _recurrent.gradient_gemm(a[:cut].copy(), b[:cut].copy(), parts)
                _recurrent.gradient_gemm(a[cut:].copy(), b[cut:].copy(), parts)
                np.testing.assert_array_equal(parts, whole, err_msg=f"k={k} m={m} n={n} cut at {cut}")
            turned = np.ascontiguousarray(c0.T)
            _recurrent.gradient_gemm(b, a, turned)
            np.testing.assert_array_equal(turned.T, whole, err_msg=f"k={k} m={m} n={n} turned round")


def test_gradient_product_refuses_mismatched_shapes():
    a, b, c = np.zeros((3, 4), np.float32), np.zeros((2, 5), np.float32), np.zeros((4, 5), np.float32)
    with pytest.raises(ValueError, match="gradient_gemm: expected a"):
        _recurrent.gradient_gemm(a, b, c)


def test_packed_product_refuses_mismatched_shapes():
    a, w, c = np.zeros((3, 4), np.float32), np.zeros((5, 3), np.float32), np.zeros((3, 5), np.float32)
    with pytest.raises(ValueError, match="packed_gemm: expected a"):
        _recurrent.packed_gemm(a, w, c, False)


def test_packed_product_refuses_mixed_float_types():
    a, w = np.zeros((3, 4), np.float32), np.zeros((5, 4), np.float64)
    with pytest.raises((TypeError, ValueError)):
        _recurrent.packed_gemm(a, w, np.zeros((3, 5), np.float32), False)


_SPECS = [
    CellSpec("rnn", 4, 7, nonlinearity="tanh"),
    CellSpec("rnn", 4, 33, nonlinearity="relu"),
    CellSpec("jordan", 4, 7, output_size=3, output_activation="sigmoid"),
    CellSpec("jordan", 4, 33, output_size=17, output_activation="identity", nonlinearity="relu"),
    CellSpec("lstm", 4, 1),
    CellSpec("lstm", 4, 33),
    CellSpec("lstm", 4, 7, proj_size=5, peephole=True),
    CellSpec("lstm", 4, 33, peephole=True, coupled_input_forget=True),
    CellSpec("lstm", 4, 7, proj_size=3, peephole=True, coupled_input_forget=True, bias=False),
    CellSpec("gru", 4, 7, reset_after=True),
    CellSpec("gru", 4, 33, reset_after=True),
    CellSpec("gru", 4, 7, reset_after=False),
    CellSpec("gru", 4, 33, reset_after=False, bias=False),
]
_SPEC_IDS = [f"{s.kind}-H{s.hidden_size}-{s.proj_size}-{int(s.peephole)}{int(s.coupled_input_forget)}"
             f"-{int(s.reset_after)}" for s in _SPECS]


@pytest.mark.parametrize("B, lengths", [(1, None), (5, [6, 1, 3, 6, 2]), (17, None)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("spec", _SPECS, ids=_SPEC_IDS)
def test_every_variant_on_the_packed_path_matches_reference(spec, dtype, B, lengths, isa):
    """Both directions, training forward and backward, initial states and lengths: the
    forward's recurrent products read the packed W_hh (the plan holds it) and agree
    with the reference to the dtype's tolerance."""
    params, x, states, rng = _random_case(spec, 6, B, 2, dtype, 11)
    lengths = None if lengths is None else np.array(lengths)
    reverse = (False, True)
    y, sn, ctx = cython_backend.layer_forward(spec, params, x, states, lengths, True, reverse, 1)
    assert all(plan.w_hh_p is not None for plan in ctx["plans"])
    y_ref, sn_ref, ctx_ref = _reference.layer_forward(spec, params, x, states, lengths, True, reverse, 1)
    assert_close(y, y_ref, what="y")
    for d in range(2):
        for a, b in zip(sn[d], sn_ref[d]):
            assert_close(a, b, what="final state")
    dy = rng.standard_normal(y.shape).astype(dtype)
    dsn = [tuple(rng.standard_normal(s.shape).astype(dtype) for s in st) for st in states]
    dx, ds0, grads = cython_backend.layer_backward(ctx, dy, dsn, 1)
    dx_ref, ds0_ref, grads_ref = _reference.layer_backward(ctx_ref, dy, dsn, 1)
    assert_close(dx, dx_ref, what="dx")
    for d in range(2):
        for a, b in zip(ds0[d], ds0_ref[d]):
            assert_close(a, b, what="initial-state gradient")
        for k in grads_ref[d]:
            assert_close(grads[d][k], grads_ref[d][k], what=k)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("spec", _SPECS, ids=_SPEC_IDS)
def test_steps_one_call_at_a_time_equal_one_call_bit_for_bit(spec, dtype, isa):
    """T one-step calls carrying the state give the bits of one T-step call (inference):
    both products sum in one order whatever the number of rows they run over, which is
    what lets a stream step through a sequence and match the layer's output exactly."""
    T, B = 7, 5
    params, x, states, _ = _random_case(spec, T, B, 1, dtype, 21)
    y, states_n, _ = cython_backend.layer_forward(spec, params, x, states, None, False, (False,), 1)
    state = states[0]
    for t in range(T):
        y_t, (state,), _ = cython_backend.layer_forward(spec, params, x[t:t + 1], [state], None, False, (False,), 1)
        np.testing.assert_array_equal(y_t[0], y[t], err_msg=f"step {t}")
    for a, b in zip(state, states_n[0]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("spec", [CellSpec("lstm", 8, 33, proj_size=5), CellSpec("gru", 8, 40, reset_after=False)],
                         ids=["lstm_proj", "gru_before"])
def test_packed_path_bits_do_not_depend_on_threads_or_training(spec, dtype):
    """1, 2, 3 and 4 threads, inference and training: the same bits on the packed path."""
    params, x, states, _ = _random_case(spec, 9, 13, 2, dtype, 3)
    lengths = np.array([9, 3, 5, 9, 1, 2, 9, 4, 8, 7, 6, 9, 1])
    runs = []
    for threads in (1, 2, 3, 4):
        for training in (False, True):
            y, sn, ctx = cython_backend.layer_forward(spec, params, x, states, lengths, training, (False, True),
                                                      threads)
            runs.append([y] + [a for st in sn for a in st])
    for run in runs[1:]:
        for a, b in zip(runs[0], run):
            np.testing.assert_array_equal(a, b)


# the cells inference runs by blocks of hidden units (64 floats, 32 doubles a block),
# with each step's own input product (small W_ih) or from the projection of all steps
# (a wide input over few rows)
_BLOCK_SPECS = [
    CellSpec("lstm", 3, 33),
    CellSpec("lstm", 3, 65, proj_size=7),
    CellSpec("lstm", 3, 31, peephole=True),
    CellSpec("lstm", 3, 64, peephole=True, coupled_input_forget=True, bias=False),
    CellSpec("lstm", 3, 129, coupled_input_forget=True),
    CellSpec("lstm", 300, 65, peephole=True),
    CellSpec("lstm", 300, 33, proj_size=5, bias=False),
    CellSpec("gru", 3, 33, reset_after=True),
    CellSpec("gru", 3, 32, reset_after=True, bias=False),
    CellSpec("gru", 3, 129, reset_after=True),
    CellSpec("gru", 300, 65, reset_after=True),
    CellSpec("gru", 300, 33, reset_after=True, bias=False),
]


@pytest.mark.parametrize("B, lengths", [(1, None), (5, [4, 1, 3, 4, 2]), (70, "mixed")])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("spec", _BLOCK_SPECS, ids=lambda s: f"{s.kind}-I{s.input_size}-H{s.hidden_size}-"
                         f"{s.proj_size}-{int(s.peephole)}{int(s.coupled_input_forget)}-{int(s.bias)}")
def test_inference_by_blocks_of_units_gives_the_bits_of_training(spec, dtype, B, lengths, isa):
    """Inference updates the LSTM and the reset-after GRU block by block of hidden units,
    right after each block's products (W_hh packed gate-interleaved); training writes
    every step's gates whole. Widths on both sides of a block (32 doubles, 64 floats)
    and of a panel, a last block narrower than the rest, 70 rows (more than one chunk of
    the stack scratch), shrinking active rows, the input product in each step or read
    from the projection of all steps, and steps too small to run by blocks: the same
    bits as training's forward, and the reference's numbers."""
    params, x, states, rng = _random_case(spec, 4, B, 2, dtype, 31)
    if lengths == "mixed":
        lengths = rng.integers(1, 5, size=B)
        lengths[0] = 4
    elif lengths is not None:
        lengths = np.array(lengths)
    blocked, in_steps = cython_backend._layout(spec, False, B)
    GH, I = spec.num_gates * spec.hidden_size, spec.input_size
    assert blocked == (B * GH * (I + spec.out_size) >= 32768)
    assert in_steps == (blocked and (I < 3 * B or I * GH <= 65536))
    reverse = (False, True)
    y, sn, _ = cython_backend.layer_forward(spec, params, x, states, lengths, False, reverse, 1)
    y_train, sn_train, _ = cython_backend.layer_forward(spec, params, x, states, lengths, True, reverse, 1)
    np.testing.assert_array_equal(y, y_train)
    for a, b in zip([s for st in sn for s in st], [s for st in sn_train for s in st]):
        np.testing.assert_array_equal(a, b)
    y_ref, sn_ref, _ = _reference.layer_forward(spec, params, x, states, lengths, False, reverse, 1)
    assert_close(y, y_ref, what="y")
    for a, b in zip([s for st in sn for s in st], [s for st in sn_ref for s in st]):
        assert_close(a, b, what="final state")


def test_the_block_layouts_all_occur_in_the_tests():
    """The cases above reach every layout: unblocked, blocked with each step's input
    product, blocked reading the projection of all steps."""
    seen = {cython_backend._layout(spec, False, B) for spec in _BLOCK_SPECS for B in (1, 5, 70)}
    assert seen == {(False, False), (True, True), (True, False)}


@pytest.mark.parametrize("lengths", [None, "mixed"])
@pytest.mark.parametrize("directions", [1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("spec", _SPECS, ids=_SPEC_IDS)
def test_row_slices_give_the_bits_of_one_thread(spec, dtype, directions, lengths, monkeypatch):
    """Any split of the rows into slices (1 to 4 threads, each running the whole time loop
    on its rows; the input projection in row ranges; the weight gradients' products by
    rows of the gradients): the bits of one thread, forward and backward, and the
    reference's numbers. The size thresholds are lowered so that these small shapes split."""
    monkeypatch.setattr(cython_backend, "MIN_SLICE_WORK", 1)
    monkeypatch.setattr(cython_backend, "MIN_GRADIENT_WORK", 1)
    monkeypatch.setattr(cython_backend, "MIN_SLICE_ROWS", 2)
    monkeypatch.setattr(cython_backend, "MIN_PROJECTION_ROWS", 8)
    B = 11
    params, x, states, rng = _random_case(spec, 6, B, directions, dtype, 31)
    lengths = None if lengths is None else np.array([6, 2, 5, 1, 6, 3, 4, 6, 2, 1, 5])
    reverse = (False, True)[:directions]
    dy = rng.standard_normal((6, B, directions * spec.out_size)).astype(dtype)
    dsn = [tuple(rng.standard_normal(s.shape).astype(dtype) for s in st) for st in states]
    results = []
    for threads in (1, 2, 3, 4):
        if threads > 1:
            assert cython_backend._row_slices(spec, cython_backend._slots(6, B, lengths), directions, threads,
                                              False) is not None or threads < 2 * directions
        assert cython_backend._gradient_threads(spec, cython_backend._slots(6, B, lengths), threads) == threads
        y, sn, ctx = cython_backend.layer_forward(spec, params, x, states, lengths, True, reverse, threads)
        dx, ds0, grads = cython_backend.layer_backward(ctx, dy, dsn, threads)
        y_inf, sn_inf, _ = cython_backend.layer_forward(spec, params, x, states, lengths, False, reverse, threads)
        results.append((y, sn, dx, ds0, grads, y_inf, sn_inf))
    flat = [[np.asarray(a) for a in _flatten(r)] for r in results]
    for other in flat[1:]:
        for a, b in zip(flat[0], other):
            np.testing.assert_array_equal(a, b)
    y_ref, _, ctx_ref = _reference.layer_forward(spec, params, x, states, lengths, True, reverse, 1)
    assert_close(results[-1][0], y_ref, what="y")
    dx_ref, _, grads_ref = _reference.layer_backward(ctx_ref, dy, dsn, 1)
    assert_close(results[-1][2], dx_ref, what="dx")
    for d in range(directions):
        for k in grads_ref[d]:
            assert_close(results[-1][4][d][k], grads_ref[d][k], what=k)


_UNIT_SPECS = [
    CellSpec("lstm", 3, 129),
    CellSpec("lstm", 300, 129),
    CellSpec("gru", 300, 129, reset_after=True),
    CellSpec("lstm", 3, 200, peephole=True),
    CellSpec("lstm", 3, 130, coupled_input_forget=True, bias=False),
    CellSpec("gru", 3, 129, reset_after=True),
    CellSpec("gru", 3, 65, reset_after=True, bias=False),
]


@pytest.mark.parametrize("lengths", [None, "mixed"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("spec", _UNIT_SPECS, ids=lambda s: f"{s.kind}-H{s.hidden_size}-{int(s.peephole)}"
                         f"{int(s.coupled_input_forget)}")
def test_unit_slices_give_the_bits_of_one_thread(spec, dtype, lengths, monkeypatch):
    """Inference of a small batch splits every step's hidden units between 2 to 4 threads
    (blocks of 64 floats or 32 doubles; a barrier per step), called from the main thread
    and from a worker thread, with rows dropping out as their sequences end: the bits of
    one thread, and the reference's numbers."""
    import threading
    monkeypatch.setattr(cython_backend, "MIN_UNIT_STEP_WORK", 1)
    B, T = 3, 7
    params, x, states, _ = _random_case(spec, T, B, 1, dtype, 51)
    lengths = None if lengths is None else np.array([7, 2, 5])
    slots = cython_backend._slots(T, B, lengths)
    blocks = _recurrent.unit_blocks_of(spec.hidden_size, dtype == np.float64)
    results = []

    def run(threads):
        results.append(cython_backend.layer_forward(spec, params, x, states, lengths, False, (False,), threads)[:2])

    for threads in (1, 2, 3, 4):
        units = cython_backend._unit_threads(spec, slots, 1, threads, False, dtype == np.float64)
        assert units == min(threads, blocks)
        run(threads)
    worker = threading.Thread(target=run, args=(3,))
    worker.start()
    worker.join()
    flat = [[np.asarray(a) for a in _flatten(r)] for r in results]
    for other in flat[1:]:
        for a, b in zip(flat[0], other):
            np.testing.assert_array_equal(a, b)
    y_ref, _, _ = _reference.layer_forward(spec, params, x, states, lengths, False, (False,), 1)
    assert_close(results[-1][0], y_ref, what="y")


def test_weight_gradients_take_a_team_only_where_each_share_repays_it():
    """A million multiply-adds a thread at least: the (100,1,8,32) LSTM's gradients stay
    on one thread, the (50,64,128,256) LSTM's take every thread offered."""
    small, large = CellSpec("lstm", 8, 32), CellSpec("lstm", 128, 256)
    assert cython_backend._gradient_threads(small, cython_backend._slots(100, 1, None), 4) == 1
    assert cython_backend._gradient_threads(large, cython_backend._slots(50, 64, None), 1) == 1
    assert cython_backend._gradient_threads(large, cython_backend._slots(50, 64, None), 4) == 4
    # with lengths only the steps run count: 113 slot rows of 256 x 96 multiply-adds
    medium, lengths = CellSpec("lstm", 16, 64), np.array([1] * 63 + [50])
    assert cython_backend._gradient_threads(medium, cython_backend._slots(50, 64, None), 16) == 16
    assert cython_backend._gradient_threads(medium, cython_backend._slots(50, 64, lengths), 16) == 2


def test_unit_slices_only_where_they_apply():
    """Training, two directions, an LSTM projection, the reset-before GRU, Elman, a batch
    that row slices serve, or a step too small to repay its barrier: no split by units;
    and a plan that cannot split is refused, not run."""
    slots = cython_backend._slots(5, 2, None)
    lstm = CellSpec("lstm", 3, 256)
    assert cython_backend._unit_threads(lstm, slots, 1, 2, False, False) == 2
    assert cython_backend._unit_threads(lstm, slots, 1, 2, True, False) == 1
    assert cython_backend._unit_threads(lstm, slots, 2, 4, False, False) == 1
    for spec in (CellSpec("lstm", 3, 256, proj_size=8), CellSpec("gru", 3, 256, reset_after=False),
                 CellSpec("rnn", 3, 256)):
        assert cython_backend._unit_threads(spec, slots, 1, 2, False, False) == 1
    assert cython_backend._unit_threads(lstm, cython_backend._slots(5, 64, None), 1, 2, False, False) == 1
    assert cython_backend._unit_threads(CellSpec("lstm", 3, 65), cython_backend._slots(5, 1, None), 1, 2, False,
                                        False) == 1
    spec = CellSpec("lstm", 3, 129, proj_size=4)
    params, x, states, _ = _random_case(spec, 4, 2, 1, np.float32, 1)
    plan = cython_backend._plan(spec, params[0], x, states[0], cython_backend._slots(4, 2, None), False, False,
                                np.float32)
    with pytest.raises(ValueError, match="unit_threads: expected one direction of an LSTM without projection"):
        _recurrent.forward_all([plan], 2, None, None, 2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_packed_weights_and_gradient_scratch_start_on_cache_lines(dtype):
    """The micro-kernel reads its panels a vector at a time; a panel placed off a 64-byte
    line (NumPy puts large arrays 16 or 32 bytes past one) makes every such read span two
    lines. Every packed buffer and row buffer of a plan starts on a line, and one thread's
    share of the gradient scratch is whole lines, so that every share of g_pack starts on
    one too."""
    line = 64 // np.dtype(dtype).itemsize
    for size in (1, 7, line, 1000, 300001, (3, 5), (1000, 33)):
        buffer = cython_backend._on_lines(size, dtype)
        assert buffer.shape == np.empty(size).shape and buffer.dtype == dtype and buffer.ctypes.data % 64 == 0
    spec = CellSpec("lstm", 5, 33, proj_size=7)
    params, x, states, _ = _random_case(spec, 3, 5, 1, dtype, 1)
    plan = cython_backend._plan(spec, params[0], x, states[0], cython_backend._slots(3, 5, None), False, True,
                                dtype)
    for field in ("w_ih_p", "w_hh_p", "w_hr_p", "hs", "xp", "c_buf", "m_buf"):
        assert getattr(plan, field).ctypes.data % 64 == 0, field
    for shape in ((132, 7, 33, 5, 33, 320), (3, 1, 1, 1, 1, 1), (1024, 256, 256, 128, 256, 4096)):
        assert _recurrent.gradient_scratch_size(*shape, dtype == np.float64) % line == 0, shape



def test_on_lines_refuses_other_dtypes_and_bad_shapes():
    """The plan's buffers are float32 or float64; anything else is a caller's error, told
    before any allocation."""
    with pytest.raises(TypeError, match="dtype: expected float32 or float64, got int32"):
        cython_backend._on_lines(4, np.int32)
    with pytest.raises(ValueError, match="shape: expected sizes >= 0"):
        cython_backend._on_lines((3, -1), np.float32)
    with pytest.raises(ValueError, match="shape: expected 1 to 3 sizes"):
        cython_backend._on_lines((1, 2, 3, 4), np.float32)
    # sizes whose product wraps around 64 bits: refused, not a view over a small block
    with pytest.raises(MemoryError, match="more values than an array can index"):
        cython_backend._on_lines((2**32, 2**32), np.float32)
    with pytest.raises(MemoryError, match="more values than an array can index"):
        cython_backend._on_lines((2**62, 3), np.float64)
    view = cython_backend._on_lines((2, 3), np.dtype(np.float64))
    view[...] = 1.5
    assert view.flags.c_contiguous and view.flags.writeable and view.sum() == 9.0


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_non_contiguous_parameters_give_the_contiguous_results(kind):
    """A layer's own parameters are C-contiguous, and a plan takes them as they lie; the
    torch adapter's views of weights a user replaced by a transposed tensor are not, and
    are copied first: bitwise the same results either way, training and eval."""
    spec = CellSpec(kind, 5, 7)
    params, x, states, _ = _random_case(spec, 4, 3, 1, np.float64, 2)
    strided = [{name: np.asfortranarray(value) if value.ndim == 2 else value[::-1].copy()[::-1]
                for name, value in p.items()} for p in params]
    assert not strided[0]["weight_hh"].flags.c_contiguous
    for training in (False, True):
        y, finals, _ = cython_backend.layer_forward(spec, params, x, states, None, training, (False,), 1)
        y2, finals2, _ = cython_backend.layer_forward(spec, strided, x, states, None, training, (False,), 1)
        np.testing.assert_array_equal(y, y2)
        for a, b in zip(_flatten(finals), _flatten(finals2)):
            np.testing.assert_array_equal(a, b)


def _flatten(value):
    if isinstance(value, dict):
        for key in sorted(value):
            yield from _flatten(value[key])
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _flatten(item)
    else:
        yield value


def test_slices_follow_the_rows_steps():
    """With lengths, slices cut where the rows' running total of steps is shared evenly
    (the sorted rows run for fewer and fewer steps), and each holds at least
    MIN_SLICE_ROWS rows."""
    spec = CellSpec("lstm", 16, 64)
    lengths = np.array([100] * 8 + [10] * 56)
    slices = cython_backend._row_slices(spec, cython_backend._slots(100, 64, lengths), 1, 2, False)
    (lo0, hi0, active0, steps0), (lo1, hi1, active1, steps1) = slices
    assert (lo0, hi0, hi1) == (0, lo1, 64)
    # the two shares of the 1360 row-steps differ by at most one row's
    assert abs(int(active0.sum()) - int(active1.sum())) <= 100
    assert active0.sum() + active1.sum() == lengths.sum()
    assert (steps0, steps1) == (100, int(lengths[lo1]))
    assert cython_backend._row_slices(spec, cython_backend._slots(100, 64, lengths), 1, 1, False) is None
    assert cython_backend._row_slices(spec, cython_backend._slots(100, 3, None), 1, 4, False) is None


def _gradual_underflow():
    """Whether this thread's float arithmetic keeps subnormal results (NumPy's default)."""
    return bool(np.float32(1e-30) * np.float32(1e-10) != 0)


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_kernels_flush_subnormals_and_leave_the_callers_setting(kind):
    """Inside the kernels subnormal values count as zero (FTZ/DAZ: a decaying state would
    otherwise take a microcode assist per operation on many CPUs); the calling thread,
    main or worker, gets its own setting back, so NumPy keeps gradual underflow."""
    import threading
    # no bias and zero states, so that nothing normal absorbs the subnormal products
    spec = CellSpec(kind, 4, 6, nonlinearity="relu", bias=False) if kind == "rnn" else CellSpec(kind, 4, 6, bias=False)
    params, _, states, _ = _random_case(spec, 3, 2, 1, np.float32, 41)
    states = [tuple(np.zeros_like(s) for s in states[0])]
    x = np.full((3, 2, 4), 1e-39, np.float32)          # subnormal in float32
    zero = np.zeros_like(x)
    results = {}

    def call():
        assert _gradual_underflow()
        for training in (False, True):
            y, _, _ = cython_backend.layer_forward(spec, params, x, states, None, training, (False,), 2)
            y0, _, _ = cython_backend.layer_forward(spec, params, zero, states, None, training, (False,), 2)
            results[training] = (y, y0)
        results["after"] = _gradual_underflow()

    call()
    for training in (False, True):
        # read as zero: the bits of a zero input
        np.testing.assert_array_equal(*results[training])
    assert results["after"]
    # a stream's steps likewise
    stack = cython_backend.open_stream([spec], [params[0]], 2, np.float32, 1)
    out = np.empty((3, 2, spec.out_size), np.float32)
    stack.run(x, out, True)
    np.testing.assert_array_equal(out, results[False][1])
    assert _gradual_underflow()
    worker = threading.Thread(target=call)
    worker.start()
    worker.join()
    assert results["after"]
    # the reference keeps them (subnormal outputs where the kernels give zeros)
    y_ref, _, _ = _reference.layer_forward(spec, params, x, states, None, False, (False,), 1)
    assert np.count_nonzero(y_ref) and np.max(np.abs(y_ref)) < np.finfo(np.float32).tiny


@pytest.mark.parametrize("groups", [1, 3, 4])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_two_products_in_one_pass(isa, dtype, groups):
    """bias + a @ w.T + a2 @ w2.T summed in one pass (each element: bias, the first
    product's terms, then the second's), over gate-interleaved panels block by block as
    a blocked step runs it: the bits of the first product stored and the second added
    in a second call, and the float64 product's numbers."""
    rng = np.random.default_rng(groups)
    for m, width, k, k2 in ((1, 1, 1, 1), (5, 7, 3, 33), (13, 65, 17, 8), (17, 33, 64, 129), (40, 129, 9, 2)):
        n = groups * width
        a = rng.standard_normal((m, k)).astype(dtype)
        w = rng.standard_normal((n, k)).astype(dtype)
        a2 = rng.standard_normal((m, k2)).astype(dtype)
        w2 = rng.standard_normal((n, k2)).astype(dtype)
        bias = rng.standard_normal(n).astype(dtype)
        c = np.full((m, n), np.nan, dtype)
        _recurrent.packed_gemm_pair(a, w, a2, w2, c, bias, groups)
        two = np.tile(bias, (m, 1))
        _recurrent.packed_gemm(a, w, two, True)
        _recurrent.packed_gemm(a2, w2, two, True)
        np.testing.assert_array_equal(c, two, err_msg=f"m={m} n={n} k={k} k2={k2}")
        want = bias + a.astype(np.float64) @ w.T + a2.astype(np.float64) @ w2.T
        assert_close(c, want, rtol=(1e-13 if dtype == np.float64 else 3e-6) * (k + k2))
        no_bias = np.empty_like(c)
        _recurrent.packed_gemm_pair(a, w, a2, w2, no_bias, None, groups)
        assert_close(no_bias, want - bias, rtol=(1e-13 if dtype == np.float64 else 3e-6) * (k + k2))
