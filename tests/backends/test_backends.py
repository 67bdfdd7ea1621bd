"""Every fast backend against the NumPy reference.

Each case builds the same layer twice, once on the reference ("numpy") and once on the
backend under test, with the same weights, runs forward and backward on the same data,
and compares the outputs, the final states, the input and initial-state gradients and
every parameter gradient. The tolerances are conftest's RTOL: 1e-10 relative in float64
(the backends sum in a different order, nothing else), 1e-5 in float32 (the project's
stated float32 agreement, with vectorised activations a few ulp from libm).

The cases are a hand-picked list, not a cartesian product: each cell variant appears in
several shapes, and across the list every edge (T=1, B=1, H=1, odd sizes, a larger
shape, lengths unsorted with some equal to T and some 1, no initial states, no bias,
1-3 layers, both directions, Fortran-order, strided and batch-first inputs) is covered.

While no fast backend is importable the file collects nothing to run.
"""
import numpy as np
import pytest

import rnncore as rc
from rnncore.backends import registry as _backend
from rnncore.backends.reference import backend as _reference
from rnncore.core.spec import CellSpec
from cases import THREADS, VARIANTS, back, build, call, random_states
from conftest import assert_close

FAST_BACKENDS = [name for name in rc.backends() if name != "numpy"]
VARIANT = {name: (cls, kwargs) for name, cls, kwargs in VARIANTS}
DTYPES = [np.float64, np.float32]


@pytest.fixture(params=FAST_BACKENDS)
def fast_backend(request):
    return request.param


def case(variant, T, B, I, H, layers=1, bidirectional=False, bias=True, lengths=None, states=True,
         layout="C", dropout=0.0):
    """One layer configuration and its data options. layout: how x (and the states) are
    handed over: "C", "F" (Fortran order), "strided" (a view with steps), "batch_first",
    "unbatched"."""
    return dict(variant=variant, T=T, B=B, I=I, H=H, layers=layers, bidirectional=bidirectional,
                bias=bias, lengths=lengths, states=states, layout=layout, dropout=dropout)


CASES = [
    case("rnn_tanh", 1, 1, 1, 1),
    case("rnn_relu", 5, 3, 13, 7, layers=2, bidirectional=True, lengths=[5, 1, 3], layout="F"),
    case("rnn_tanh", 6, 4, 3, 5, layers=3, bidirectional=True, bias=False, lengths=[6, 2, 6, 1], states=False,
         layout="strided"),
    case("rnn_tanh", 20, 9, 13, 33, bidirectional=True, lengths=[20, 1, 7, 20, 13, 1, 2, 19, 8]),
    case("rnn_relu", 4, 2, 2, 1, layout="batch_first"),
    case("lstm", 1, 1, 2, 1),
    case("lstm", 20, 9, 13, 33, bidirectional=True, lengths=[3, 20, 1, 20, 11, 1, 17, 5, 20], layout="F"),
    case("lstm_proj", 7, 5, 13, 7, layers=2, bidirectional=True, lengths=[7, 1, 4, 7, 2], layout="F"),
    case("lstm_proj", 20, 9, 13, 33, layers=2, lengths=[20, 5, 1, 20, 9, 14, 1, 20, 3]),
    case("lstm_peephole", 6, 3, 4, 7, layers=2, lengths=[2, 6, 1], layout="strided"),
    case("lstm_peephole", 3, 1, 1, 1, bidirectional=True, states=False),
    # no sequence reaches T: every step of the last ones is padding
    case("lstm_peephole", 6, 5, 3, 7, bidirectional=True, lengths=[4, 1, 5, 2, 4]),
    case("lstm_cifg", 5, 2, 3, 7, bidirectional=True, states=False, layout="batch_first"),
    case("lstm_cifg", 20, 9, 13, 33, layers=2, bidirectional=True, lengths=[20, 1, 20, 8, 2, 1, 15, 11, 4]),
    case("lstm_all", 8, 4, 13, 7, layers=3, bidirectional=True, lengths=[8, 3, 1, 8]),
    case("lstm_all", 3, 1, 2, 3, bias=False, layout="unbatched"),
    case("lstm_all", 6, 4, 5, 7, layers=2, dropout=0.4, lengths=[6, 1, 4, 6]),
    case("gru", 20, 9, 13, 33, layers=2, lengths=[9, 20, 1, 20, 4, 12, 1, 6, 20]),
    case("gru", 1, 5, 7, 1, bidirectional=True, bias=False, states=False),
    case("gru_cho", 20, 9, 13, 33, bidirectional=True, lengths=[1, 20, 20, 7, 3, 18, 1, 10, 5], layout="F"),
    case("gru_cho", 4, 1, 1, 7, layers=3, layout="unbatched"),
    case("gru_cho", 5, 3, 6, 4, bias=False, lengths=[5, 1, 3], layout="strided"),
    case("jordan_identity", 1, 1, 1, 1),
    case("jordan_identity", 20, 9, 13, 33, lengths=[20, 1, 5, 20, 12, 1, 7, 19, 3], layout="F"),
    case("jordan_tanh", 6, 4, 13, 7, bias=False, lengths=[6, 1, 3, 6], layout="strided"),
    case("jordan_sigmoid", 5, 3, 2, 7, states=False, layout="batch_first"),
]


def case_id(c):
    parts = [c["variant"], f"T{c['T']}B{c['B']}I{c['I']}H{c['H']}", f"L{c['layers']}"]
    parts += ["bi"] if c["bidirectional"] else []
    parts += [] if c["bias"] else ["nobias"]
    parts += ["lengths"] if c["lengths"] else []
    parts += [] if c["states"] else ["nostate"]
    parts += ["dropout"] if c["dropout"] else []
    parts.append(c["layout"])
    return "-".join(parts)


def make_layer(c, dtype, backend):
    cls, kwargs = VARIANT[c["variant"]]
    return build(cls, kwargs, c["I"], c["H"], dtype=dtype, seed=3, backend=backend, bias=c["bias"],
                 num_layers=c["layers"], bidirectional=c["bidirectional"], dropout=c["dropout"],
                 batch_first=c["layout"] == "batch_first")


def present(array, layout, rng):
    """`array` as the layout asks: same values, different memory. Time-major (T, B, n)
    arrays are transposed for batch_first and lose the batch axis when unbatched; the
    (rows, B, n) states only change memory order."""
    if layout == "F":
        return np.asfortranarray(array)
    if layout == "strided":
        # every other element of a larger buffer along the last axis
        wide = rng.standard_normal(array.shape[:-1] + (2 * array.shape[-1],)).astype(array.dtype)
        wide[..., ::2] = array
        return wide[..., ::2]
    return array


def present_sequence(array, layout, rng):
    if layout == "batch_first":
        return array.transpose(1, 0, 2)  # a (B, T, n) view, itself non-contiguous
    if layout == "unbatched":
        return array[:, 0, :]
    return present(array, layout, rng)


def present_state(array, layout, rng):
    return array[:, 0, :] if layout == "unbatched" else present(array, layout, rng)


def to_time_major(array, layout):
    if layout == "batch_first":
        return array.transpose(1, 0, 2)
    if layout == "unbatched":
        return array[:, None, :]
    return array


def run(layer, c, x, states, dy, dstates, rng):
    """Forward and backward through `layer` with the case's layout; everything returned
    time-major and batched, so that results of any layout compare alike."""
    layout = c["layout"]
    layer.zero_grad()
    x_in = present_sequence(x, layout, rng)
    states_in = None if states is None else [present_state(s, layout, rng) for s in states]
    x_before = x_in.copy()
    y, finals = call(layer, x_in, states_in, lengths=c["lengths"])
    dx, dstates0 = back(layer, present_sequence(dy, layout, rng),
                        None if dstates is None else [present_state(d, layout, rng) for d in dstates])
    # the caller's arrays are inputs, never scratch space
    np.testing.assert_array_equal(x_in, x_before)
    if layout == "unbatched":
        finals = [f[:, None, :] for f in finals]
        dstates0 = [d[:, None, :] for d in dstates0]
    grads = {name: g.copy() for name, g in layer.grads.items()}
    return to_time_major(y, layout), finals, to_time_major(dx, layout), dstates0, grads


def compare(actual, expected, dtype, where):
    y, finals, dx, dstates0, grads = actual
    y_ref, finals_ref, dx_ref, dstates0_ref, grads_ref = expected
    assert_close(y, y_ref, dtype, what=f"{where}: y")
    for i, (s, s_ref) in enumerate(zip(finals, finals_ref)):
        assert_close(s, s_ref, dtype, what=f"{where}: final state {'hc'[i]}_n")
    assert_close(dx, dx_ref, dtype, what=f"{where}: dx")
    for i, (d, d_ref) in enumerate(zip(dstates0, dstates0_ref)):
        assert_close(d, d_ref, dtype, what=f"{where}: d{'hc'[i]}0")
    assert sorted(grads) == sorted(grads_ref)
    for name in grads_ref:
        assert_close(grads[name], grads_ref[name], dtype, what=f"{where}: grad {name}")


def case_data(c, layer, dtype, seed=11):
    rng = np.random.default_rng(seed)
    T, B = c["T"], c["B"]
    x = rng.standard_normal((T, B, c["I"])).astype(dtype)
    states = random_states(layer, B, rng, dtype) if c["states"] else None
    dy = rng.standard_normal((T, B, layer.output_width)).astype(dtype)
    # without initial states the final-state gradient is left out too (None -> zeros)
    dstates = random_states(layer, B, rng, dtype) if c["states"] else None
    return rng, x, states, dy, dstates


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("c", CASES, ids=[case_id(c) for c in CASES])
def test_layer_matches_reference(fast_backend, c, dtype):
    reference = make_layer(c, dtype, "numpy")
    fast = make_layer(c, dtype, fast_backend)
    fast.load_state_dict(reference.state_dict())
    rng, x, states, dy, dstates = case_data(c, reference, dtype)
    expected = run(reference, c, x, states, dy, dstates, rng)
    actual = run(fast, c, x, states, dy, dstates, rng)
    compare(actual, expected, dtype, fast_backend)

    # the inference path (eval: no context kept) gives the training forward's numbers;
    # dropout is off in eval, so that case has no training forward to compare with
    if c["dropout"] == 0:
        fast.eval()
        y, finals = call(fast, present_sequence(x, c["layout"], rng),
                         None if states is None else [present_state(s, c["layout"], rng) for s in states],
                         lengths=c["lengths"])
        if c["layout"] == "unbatched":
            finals = [f[:, None, :] for f in finals]
        assert_close(to_time_major(y, c["layout"]), expected[0], dtype, what="eval y")
        for s, s_ref in zip(finals, expected[1]):
            assert_close(s, s_ref, dtype, what="eval final state")


def test_repeated_backward_accumulates(fast_backend):
    """Two forward/backward passes add into the same grads, as on the reference."""
    c = case("lstm_all", 5, 3, 4, 7, layers=2, bidirectional=True, lengths=[5, 1, 3])
    layers = {}
    for name in ("numpy", fast_backend):
        layer = make_layer(c, np.float64, name)
        rng, x, states, dy, dstates = case_data(c, layer, np.float64)
        for _ in range(2):
            call(layer, x, states, lengths=c["lengths"])
            back(layer, dy, dstates)
        layers[name] = layer
    for name, g in layers["numpy"].grads.items():
        assert_close(layers[fast_backend].grads[name], g, what=name)


# -- the backend contract, called directly -------------------------------------------

CONTRACT_SPECS = [
    CellSpec("rnn", 5, 7, nonlinearity="relu"),
    CellSpec("lstm", 5, 7, proj_size=3, peephole=True),
    CellSpec("lstm", 5, 7, bias=False, coupled_input_forget=True),
    CellSpec("gru", 5, 7, reset_after=True),
    CellSpec("gru", 5, 7, reset_after=False),
    CellSpec("jordan", 5, 7, output_size=3, output_activation="sigmoid"),
]
CONTRACT_IDS = ["rnn_relu", "lstm_proj_peephole", "lstm_cifg_nobias", "gru", "gru_cho", "jordan_sigmoid"]


def random_params(spec, rng, dtype):
    return {name: (0.5 * rng.standard_normal(shape)).astype(dtype) for name, shape in spec.param_shapes().items()}


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("lengths", [None, [6, 1, 3, 6]], ids=["full", "lengths"])
@pytest.mark.parametrize("spec", CONTRACT_SPECS, ids=CONTRACT_IDS)
def test_contract_reverse_only_and_eval(fast_backend, spec, lengths, dtype):
    """A single reverse direction, in eval mode (ctx None) and in training mode with
    backward, straight through layer_forward/layer_backward."""
    module = _backend.resolve(fast_backend)
    rng = np.random.default_rng(5)
    T, B = 6, 4
    params = [random_params(spec, rng, dtype)]
    x = rng.standard_normal((T, B, spec.input_size)).astype(dtype)
    states = [tuple(rng.standard_normal((B, n)).astype(dtype) for n in spec.state_sizes)]
    lengths = None if lengths is None else np.asarray(lengths, dtype=np.int64)

    y_ref, states_ref, ctx_ref = _reference.layer_forward(spec, params, x, states, lengths, True, (True,), THREADS)
    y, states_n, ctx = module.layer_forward(spec, params, x, states, lengths, False, (True,), THREADS)
    assert ctx is None
    assert_close(y, y_ref, dtype, what="eval y")
    for s, s_ref in zip(states_n[0], states_ref[0]):
        assert_close(s, s_ref, dtype, what="eval final state")

    y, states_n, ctx = module.layer_forward(spec, params, x, states, lengths, True, (True,), THREADS)
    assert ctx is not None
    assert_close(y, y_ref, dtype, what="training y")
    dy = rng.standard_normal(y.shape).astype(dtype)
    dstates_n = [tuple(rng.standard_normal((B, n)).astype(dtype) for n in spec.state_sizes)]
    dx_ref, dstates0_ref, grads_ref = _reference.layer_backward(ctx_ref, dy, dstates_n, THREADS)
    dx, dstates0, grads = module.layer_backward(ctx, dy, dstates_n, THREADS)
    assert_close(dx, dx_ref, dtype, what="dx")
    for d, d_ref in zip(dstates0[0], dstates0_ref[0]):
        assert_close(d, d_ref, dtype, what="dstate0")
    assert sorted(grads[0]) == sorted(grads_ref[0])
    for name, g in grads_ref[0].items():
        assert_close(grads[0][name], g, dtype, what=name)


# -- thread count ----------------------------------------------------------------------

@pytest.fixture
def restore_threads():
    before = rc.get_num_threads()
    yield
    rc.set_num_threads(before)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("c", [
    # a wide batch over small H: the batch-split path
    case("lstm_all", 6, 16, 5, 8, layers=2, bidirectional=True, lengths=[6, 1, 3, 6, 2, 5, 6, 1] * 2),
    case("gru", 6, 16, 5, 8, bidirectional=True, lengths=[1, 6, 4, 6, 2, 3, 6, 5] * 2),
    case("rnn_tanh", 6, 16, 5, 8, layers=2),
    case("jordan_tanh", 6, 16, 5, 8, lengths=[6, 2] * 8),
    # a large H over a small batch: the multi-threaded BLAS path
    case("lstm", 5, 3, 40, 96, bidirectional=True, lengths=[5, 1, 3]),
], ids=case_id)
def test_thread_count_independent(fast_backend, c, dtype, restore_threads):
    results = []
    for threads in (1, 2):
        rc.set_num_threads(threads)
        layer = make_layer(c, dtype, fast_backend)
        rng, x, states, dy, dstates = case_data(c, layer, dtype)
        results.append(run(layer, c, x, states, dy, dstates, rng))
    compare(results[1], results[0], dtype, "2 threads vs 1")
