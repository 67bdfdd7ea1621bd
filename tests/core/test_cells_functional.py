"""Cells, the functional kernels and truncated BPTT, against the layers and the reference.

- A cell is one step of the one-layer layer: same numbers, same gradients, batched or
  not, zero default state, gradients accumulating across backwards until zero_grad.
- Each functional `*_forward/_backward` is the one-layer, one-direction layer; eval mode
  keeps no context; reverse=True is the forward direction run on each sequence flipped
  within its own length; lengths mean each sequence is run on its own.
- Truncated BPTT: the second chunk starts from the first chunk's final state but its
  backward stops there, so the gradients are those of two independent runs.

Each comparison is between two routes to the same arithmetic (a cell and a T=1 layer,
a flipped input, separate sequences), on the backend under test and on the reference;
they differ at most in summation order, so conftest's RTOL holds (1e-10 relative in
float64, 1e-5 in float32).
"""
import numpy as np
import pytest

import rnncore as rc
from rnncore import functional as F
from cases import VARIANTS, VARIANT_IDS, back, build, call, is_lstm, random_states
from conftest import assert_close

DTYPES = [np.float64, np.float32]
DTYPE_IDS = ["f64", "f32"]


def assert_grads_close(actual, expected, dtype=None, what=""):
    assert sorted(actual) == sorted(expected), f"{what}: names {sorted(actual)} != {sorted(expected)}"
    for name in expected:
        assert_close(actual[name], expected[name], dtype, what=f"{what} {name}")


# -- cells -------------------------------------------------------------------------------

CELLS = [
    (rc.RNNCell, rc.RNN, dict(nonlinearity="tanh")),
    (rc.RNNCell, rc.RNN, dict(nonlinearity="relu", bias=False)),
    (rc.LSTMCell, rc.LSTM, dict()),
    (rc.LSTMCell, rc.LSTM, dict(peephole=True, coupled_input_forget=True)),
    (rc.GRUCell, rc.GRU, dict(reset_after=True)),
    (rc.GRUCell, rc.GRU, dict(reset_after=False, bias=False)),
]
CELL_IDS = ["rnn_tanh", "rnn_relu_nobias", "lstm", "lstm_peephole_cifg", "gru", "gru_cho_nobias"]
I_CELL, H_CELL, B_CELL = 5, 4, 3


def make_cell(cls, kwargs, dtype, backend):
    return cls(I_CELL, H_CELL, dtype=dtype, seed=7, backend=backend, **kwargs)


def cell_step(cell, x, states):
    """Any cell as a function of a state list, returning a state list."""
    if isinstance(cell, rc.LSTMCell):
        return list(cell(x, None if states is None else tuple(states)))
    return [cell(x, None if states is None else states[0])]


def cell_back(cell, dstates):
    if isinstance(cell, rc.LSTMCell):
        dx, (dh0, dc0) = cell.backward(tuple(dstates))
        return dx, [dh0, dc0]
    dx, dh0 = cell.backward(dstates[0])
    return dx, [dh0]


def cell_data(cell, rng, dtype, batch=B_CELL):
    widths = [H_CELL] * (2 if isinstance(cell, rc.LSTMCell) else 1)
    x = rng.standard_normal((batch, I_CELL)).astype(dtype)
    states = [rng.standard_normal((batch, w)).astype(dtype) for w in widths]
    dstates = [rng.standard_normal((batch, w)).astype(dtype) for w in widths]
    return x, states, dstates


def cell_run(cell, x, states, dstates):
    cell.zero_grad()
    finals = cell_step(cell, x, states)
    dx, dstates0 = cell_back(cell, dstates)
    return finals, dx, dstates0, {name: g.copy() for name, g in cell.grads.items()}


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("cls,layer_cls,kwargs", CELLS, ids=CELL_IDS)
def test_cell_is_one_step_of_the_layer(backend, cls, layer_cls, kwargs, dtype):
    cell = make_cell(cls, kwargs, dtype, backend)
    layer = layer_cls(I_CELL, H_CELL, dtype=dtype, backend="numpy", **kwargs)
    layer.load_state_dict({f"{name}_l0": value for name, value in cell.state_dict().items()})
    x, states, dstates = cell_data(cell, np.random.default_rng(0), dtype)

    finals, dx, dstates0, grads = cell_run(cell, x, states, dstates)
    y, layer_finals = call(layer, x[None], [s[None] for s in states])
    for s, s_layer in zip(finals, layer_finals):
        assert_close(s, s_layer[0], what="new state")
    assert_close(finals[0], y[0], what="h is the output")
    layer_dx, layer_dstates0 = back(layer, np.zeros_like(y), [d[None] for d in dstates])
    assert_close(dx, layer_dx[0], what="dx")
    for d, d_layer in zip(dstates0, layer_dstates0):
        assert_close(d, d_layer[0], what="dstate0")
    assert_grads_close(grads, {name[:-len("_l0")]: g for name, g in layer.grads.items()}, what="grad")


@pytest.mark.parametrize("cls,layer_cls,kwargs", CELLS, ids=CELL_IDS)
def test_cell_unbatched_and_default_state(backend, cls, layer_cls, kwargs):
    cell = make_cell(cls, kwargs, np.float64, backend)
    x, states, dstates = cell_data(cell, np.random.default_rng(1), np.float64)

    # unbatched is row 0 of the batch; its gradients are the batch's with only row 0 seeded
    finals, dx, dstates0, grads = cell_run(cell, x[0], [s[0] for s in states], [d[0] for d in dstates])
    seeded = [np.where(np.arange(B_CELL)[:, None] == 0, d, 0) for d in dstates]
    batch_finals, batch_dx, batch_dstates0, batch_grads = cell_run(cell, x, states, seeded)
    for s, s_batch in zip(finals, batch_finals):
        assert s.shape == (H_CELL,)
        assert_close(s, s_batch[0], what="unbatched state")
    assert_close(dx, batch_dx[0], what="unbatched dx")
    for d, d_batch in zip(dstates0, batch_dstates0):
        assert_close(d, d_batch[0], what="unbatched dstate0")
    assert_grads_close(grads, batch_grads, what="unbatched grad")

    # no state means zeros, forward and backward
    zeros = [np.zeros_like(s) for s in states]
    default = cell_run(cell, x, None, dstates)
    explicit = cell_run(cell, x, zeros, dstates)
    for a, b in zip(default[0] + [default[1]] + default[2], explicit[0] + [explicit[1]] + explicit[2]):
        assert_close(a, b, what="zero default state")
    assert_grads_close(default[3], explicit[3], what="zero default state")


@pytest.mark.parametrize("cls,layer_cls,kwargs", CELLS, ids=CELL_IDS)
def test_cell_grads_accumulate_until_zero_grad(backend, cls, layer_cls, kwargs):
    cell = make_cell(cls, kwargs, np.float64, backend)
    rng = np.random.default_rng(2)
    first, second = cell_data(cell, rng, np.float64), cell_data(cell, rng, np.float64)
    grads_first = cell_run(cell, *first)[3]
    grads_second = cell_run(cell, *second)[3]

    cell.zero_grad()
    for x, states, dstates in (first, second):
        cell_step(cell, x, states)
        cell_back(cell, dstates)
    assert_grads_close(cell.grads, {n: grads_first[n] + grads_second[n] for n in grads_first}, what="sum")
    assert any(np.any(g != 0) for g in cell.grads.values())

    cell.zero_grad()
    assert all(not np.any(g) for g in cell.grads.values())
    cell_step(cell, *first[:2])
    cell_back(cell, first[2])
    assert_grads_close(cell.grads, grads_first, what="after zero_grad")


@pytest.mark.parametrize("cls,layer_cls,kwargs", CELLS[::2], ids=CELL_IDS[::2])
def test_cell_eval_gives_the_same_step_and_keeps_nothing(backend, cls, layer_cls, kwargs):
    cell = make_cell(cls, kwargs, np.float64, backend)
    x, states, dstates = cell_data(cell, np.random.default_rng(3), np.float64)
    training = cell_step(cell, x, states)
    cell.eval()
    for a, b in zip(cell_step(cell, x, states), training):
        assert_close(a, b, what="eval step")
    with pytest.raises(RuntimeError, match="backward"):
        cell_back(cell, dstates)


# -- functional --------------------------------------------------------------------------

def functional_args(layer):
    """The functional form of a one-layer, one-direction layer: the forward and backward
    functions, the weights by their functional names and the variant options."""
    params = {name[:-len("_l0")]: value for name, value in layer.parameters().items() if name.endswith("_l0")}
    spec = layer.specs[0]
    if spec.kind == "lstm":
        return F.lstm_forward, F.lstm_backward, params, dict(coupled_input_forget=spec.coupled_input_forget)
    if spec.kind == "gru":
        return F.gru_forward, F.gru_backward, params, dict(reset_after=spec.reset_after)
    if spec.kind == "jordan":
        return (F.jordan_forward, F.jordan_backward, params,
                dict(nonlinearity=spec.nonlinearity, output_activation=spec.output_activation))
    return F.rnn_forward, F.rnn_backward, params, dict(nonlinearity=spec.nonlinearity)


def functional_run(layer, x, states, dy, dstates, backend, lengths=None, reverse=False):
    """Forward and backward of the layer's functional form; states and their gradients
    as lists of (B, n) arrays."""
    forward, backward, params, options = functional_args(layer)
    *outputs, ctx = forward(x, *states, **params, **options, lengths=lengths, reverse=reverse, training=True,
                            backend=backend)
    dx, *dstates0, grads = backward(ctx, dy, *dstates)
    return outputs[0], outputs[1:], dx, dstates0, grads


def make_layer(variant_index, dtype, backend="numpy", **more):
    _, cls, kwargs = VARIANTS[variant_index]
    return build(cls, kwargs, 4, 5, dtype=dtype, seed=variant_index, backend=backend, **more)


def sequence_data(layer, T, B, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, B, layer.input_size)).astype(dtype)
    states = [s[0] for s in random_states(layer, B, rng, dtype)]
    dy = rng.standard_normal((T, B, layer.output_width)).astype(dtype)
    dstates = [s[0] for s in random_states(layer, B, rng, dtype)]
    return x, states, dy, dstates


VARIANT_INDICES = range(len(VARIANTS))
LENGTHS = [5, 1, 3, 5]  # unsorted, some full, one of 1


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("index", VARIANT_INDICES, ids=VARIANT_IDS)
def test_functional_is_the_one_layer_layer(backend, index, dtype):
    layer = make_layer(index, dtype)
    x, states, dy, dstates = sequence_data(layer, 5, 4, dtype)
    y, finals, dx, dstates0, grads = functional_run(layer, x, states, dy, dstates, backend, lengths=LENGTHS)

    layer_y, layer_finals = call(layer, x, [s[None] for s in states], lengths=LENGTHS)
    layer_dx, layer_dstates0 = back(layer, dy, [d[None] for d in dstates])
    assert_close(y, layer_y, what="y")
    for s, s_layer in zip(finals, layer_finals):
        assert_close(s, s_layer[0], what="final state")
    assert_close(dx, layer_dx, what="dx")
    for d, d_layer in zip(dstates0, layer_dstates0):
        assert_close(d, d_layer[0], what="dstate0")
    assert_grads_close(grads, {name[:-len("_l0")]: g for name, g in layer.grads.items()}, what="grad")

    # eval mode (the default) keeps no context and gives the same numbers
    forward, _, params, options = functional_args(layer)
    *outputs, ctx = forward(x, *states, **params, **options, lengths=LENGTHS, backend=backend)
    assert ctx is None
    for a, b in zip(outputs, [y] + finals):
        assert_close(a, b, what="eval")


def flip_within_lengths(array, lengths):
    """Each sequence's valid steps in reverse order, the padded tail left in place."""
    T, B = array.shape[:2]
    t = np.arange(T)[:, None]
    lengths = np.full(B, T) if lengths is None else np.asarray(lengths)
    order = np.where(t < lengths, lengths - 1 - t, t)
    return array[order, np.arange(B)]


@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["full", "lengths"])
@pytest.mark.parametrize("index", [0, 6, 8, 10], ids=[VARIANT_IDS[i] for i in (0, 6, 8, 10)])
def test_functional_reverse_is_the_flipped_sequence(backend, index, lengths):
    layer = make_layer(index, np.float64)
    x, states, dy, dstates = sequence_data(layer, 5, 4, np.float64, seed=1)
    rev = functional_run(layer, x, states, dy, dstates, backend, lengths=lengths, reverse=True)
    fwd = functional_run(layer, flip_within_lengths(x, lengths), states, flip_within_lengths(dy, lengths),
                         dstates, backend, lengths=lengths)
    assert_close(rev[0], flip_within_lengths(fwd[0], lengths), what="y")
    for a, b in zip(rev[1], fwd[1]):
        assert_close(a, b, what="final state")
    assert_close(rev[2], flip_within_lengths(fwd[2], lengths), what="dx")
    for a, b in zip(rev[3], fwd[3]):
        assert_close(a, b, what="dstate0")
    assert_grads_close(rev[4], fwd[4], what="grad")


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("index", [1, 3, 4, 7, 11], ids=[VARIANT_IDS[i] for i in (1, 3, 4, 7, 11)])
def test_functional_lengths_run_each_sequence_alone(backend, index, reverse):
    layer = make_layer(index, np.float64)
    x, states, dy, dstates = sequence_data(layer, 5, 4, np.float64, seed=2)
    y, finals, dx, dstates0, grads = functional_run(layer, x, states, dy, dstates, backend, lengths=LENGTHS,
                                                     reverse=reverse)
    grads_sum = {name: np.zeros_like(g) for name, g in grads.items()}
    for b, n in enumerate(LENGTHS):
        alone = functional_run(layer, x[:n, b:b + 1], [s[b:b + 1] for s in states], dy[:n, b:b + 1],
                               [d[b:b + 1] for d in dstates], backend, reverse=reverse)
        assert_close(y[:n, b], alone[0][:, 0], what=f"y of sequence {b}")
        assert not np.any(y[n:, b]), "steps past the end output zero"
        for s, s_alone in zip(finals, alone[1]):
            assert_close(s[b], s_alone[0], what=f"final state of sequence {b}")
        assert_close(dx[:n, b], alone[2][:, 0], what=f"dx of sequence {b}")
        assert not np.any(dx[n:, b]), "steps past the end get no gradient"
        for d, d_alone in zip(dstates0, alone[3]):
            assert_close(d[b], d_alone[0], what=f"dstate0 of sequence {b}")
        for name, g in alone[4].items():
            grads_sum[name] += g
    assert_grads_close(grads, grads_sum, what="grads are the sum over sequences")


# -- truncated BPTT ------------------------------------------------------------------------

TBPTT_CASES = [(0, dict(num_layers=2)), (6, dict(num_layers=2)), (8, dict()), (9, dict())]
TBPTT_IDS = [VARIANT_IDS[i] for i, _ in TBPTT_CASES]
T_SPLIT, T_TOTAL = 3, 7


@pytest.mark.parametrize("index,more", TBPTT_CASES, ids=TBPTT_IDS)
def test_truncated_bptt_is_two_independent_runs(backend, index, more):
    def fresh():  # the same seed: the same weights
        return make_layer(index, np.float64, backend, **more)

    layer = fresh()
    rng = np.random.default_rng(4)
    x = rng.standard_normal((T_TOTAL, 2, layer.input_size))
    states = random_states(layer, 2, rng)
    dy = rng.standard_normal((T_TOTAL, 2, layer.output_width))
    dfinals = random_states(layer, 2, rng)
    head, tail = slice(0, T_SPLIT), slice(T_SPLIT, T_TOTAL)

    # chunk 1, its backward, then chunk 2 from chunk 1's final state, its backward
    layer.zero_grad()
    _, finals_head = call(layer, x[head], states)
    back(layer, dy[head])
    grads_head = {name: g.copy() for name, g in layer.grads.items()}
    _, finals = call(layer, x[tail], finals_head)
    assert_grads_close(layer.grads, grads_head, what="a forward leaves grads alone")
    dx_tail, dcarried = back(layer, dy[tail], dfinals)

    # the same two chunks as independent runs on fresh layers
    first = fresh()
    call(first, x[head], states)
    back(first, dy[head])
    second = fresh()
    call(second, x[tail], finals_head)
    second_dx, second_dcarried = back(second, dy[tail], dfinals)

    assert_grads_close(layer.grads, {n: first.grads[n] + second.grads[n] for n in first.grads}, what="sum")
    # chunk 2's backward stops at the carried state: it adds only what chunk 2 alone gives,
    # and returns the gradient of that state
    assert_grads_close({n: layer.grads[n] - grads_head[n] for n in grads_head}, second.grads, what="chunk 2")
    assert dx_tail.shape == x[tail].shape
    assert_close(dx_tail, second_dx, what="chunk 2 dx")
    for d, d_second in zip(dcarried, second_dcarried):
        assert_close(d, d_second, what="gradient of the carried state")

    # the forward saw the whole history, the backward did not: final states are full
    # BPTT's, gradients are not
    full = fresh()
    _, full_finals = call(full, x, states)
    back(full, dy, dfinals)
    for s, s_full in zip(finals, full_finals):
        assert_close(s, s_full, what="final state after both chunks")
    assert any(not np.allclose(layer.grads[n], full.grads[n], rtol=1e-3, atol=0) for n in full.grads)


@pytest.mark.parametrize("chunk", [T_TOTAL, T_TOTAL + 5, T_SPLIT], ids=["whole", "longer", "split"])
@pytest.mark.parametrize("index,more", TBPTT_CASES[1:3], ids=TBPTT_IDS[1:3])
def test_train_truncated_bptt(backend, index, more, chunk):
    """rc.train.truncated_bptt without an optimizer accumulates the chunks' gradients:
    with one chunk covering the sequence they are full BPTT's, otherwise the sum of the
    independent chunk runs."""
    model = rc.Sequential(make_layer(index, np.float64, backend, **more))
    rng = np.random.default_rng(5)
    x = rng.standard_normal((T_TOTAL, 3, model[0].input_size))
    target = rng.standard_normal((T_TOTAL, 3, model[0].output_width))
    initial = random_states(model[0], 3, rng)
    initial = tuple(initial) if is_lstm(model[0]) else initial[0]  # as the layer takes it
    _, finals = rc.train.truncated_bptt(model, rc.MSELoss(), None, x, target, chunk, states=[initial])

    expected = {name: np.zeros_like(g) for name, g in model[0].grads.items()}
    carried = initial
    for start in range(0, T_TOTAL, chunk):
        piece = slice(start, min(start + chunk, T_TOTAL))
        layer = make_layer(index, np.float64, backend, **more)
        y, carried = layer(x[piece], carried)
        back(layer, 2 * (y - target[piece]) / y.size)  # d mean((y - target)^2) / dy
        for name, g in layer.grads.items():
            expected[name] += g
    assert_grads_close(model[0].grads, expected, what="grad")
    for s, s_expected in zip(as_list(finals[0]), as_list(carried)):
        assert_close(s, s_expected, what="final state")


def as_list(state):
    return list(state) if isinstance(state, tuple) else [state]
