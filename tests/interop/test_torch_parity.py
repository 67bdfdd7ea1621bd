"""PyTorch parity: the same weights give the same outputs, final states and gradients
as torch.nn (RNN, LSTM, GRU and their cells), on every backend.

Each case loads a torch module's state_dict() into the rnncore layer as it is, runs
both forward, and back-propagates a random upstream gradient (dy, dh_n, dc_n): torch
through autograd, rnncore through `backward`. Compared: y, h_n, c_n, every parameter
gradient, dx, dh0, dc0.

Tolerances are conftest's RTOL, relative to the largest magnitude of torch's array:
float64 1e-10 (torch's CPU path for every cell is the native ATen one, the same
operations in a different order, agreeing to a few hundred ulps), float32 1e-5 (eps
1.2e-7 grown over the steps and GEMM sums; torch's default fp32 LSTM runs on oneDNN with
yet another summation order, so fp32 LSTM is checked against both torch paths).
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import rnncore as rc  # noqa: E402
from conftest import assert_close  # noqa: E402

# torch.backends.mkldnn.flags() warns about Intel-GPU TF32 on every use; irrelevant here
pytestmark = pytest.mark.filterwarnings("ignore:TF32 acceleration:UserWarning")

TORCH_DTYPE = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}

# (kind, torch class, rnncore class, kwargs): the cell types torch has
KINDS = {
    "rnn_tanh": (torch.nn.RNN, rc.RNN, dict(nonlinearity="tanh")),
    "rnn_relu": (torch.nn.RNN, rc.RNN, dict(nonlinearity="relu")),
    "lstm": (torch.nn.LSTM, rc.LSTM, dict()),
    "lstm_proj": (torch.nn.LSTM, rc.LSTM, dict(proj_size=2)),
    "gru": (torch.nn.GRU, rc.GRU, dict()),
}

# A covering set rather than the full product: every kind meets 1, 2 and 3 layers,
# both directions, both layouts, with and without initial states and lengths, across
# the cases below, each case changing several axes at once.
# (kind, num_layers, bidirectional, batch_first, with_states, with_lengths, bias)
CASES = [
    ("rnn_tanh", 1, False, False, True, False, True),
    ("rnn_tanh", 2, True, True, False, True, True),
    ("rnn_relu", 3, False, True, True, True, True),
    ("rnn_relu", 1, True, False, False, False, False),
    ("lstm", 1, False, True, False, False, True),
    ("lstm", 2, True, False, True, True, True),
    ("lstm", 3, True, True, True, False, False),
    ("lstm_proj", 1, True, False, True, True, True),
    ("lstm_proj", 2, False, True, True, False, True),
    ("lstm_proj", 3, True, False, False, True, True),
    ("gru", 1, True, True, True, False, True),
    ("gru", 2, False, False, False, True, True),
    ("gru", 3, True, False, True, True, False),
]
CASE_IDS = ["{}-L{}-{}-{}-{}-{}-{}".format(kind, L, "bi" if bi else "uni", "bf" if bf else "tm",
                                           "h0" if st else "noh0", "len" if ln else "full",
                                           "bias" if b else "nobias")
            for kind, L, bi, bf, st, ln, b in CASES]

T, B, INPUT, HIDDEN = 5, 3, 4, 3


def make_pair(kind, dtype, backend, seed=0, **kwargs):
    torch_cls, rc_cls, variant = KINDS[kind]
    torch.manual_seed(seed)
    module = torch_cls(INPUT, HIDDEN, **variant, **kwargs).to(TORCH_DTYPE[np.dtype(dtype)])
    # a different seed, so the load must really overwrite every parameter
    layer = rc_cls(INPUT, HIDDEN, **variant, **kwargs, dtype=dtype, seed=seed + 1, backend=backend)
    layer.load_state_dict(module.state_dict())
    return module, layer


def as_tensor(array):
    return torch.tensor(array, requires_grad=True)


def torch_run(module, x, states, lengths, dy, dstates, batch_first):
    """Forward and autograd backward in torch; returns numpy y, finals, dx, dstates0, grads."""
    module.zero_grad()
    x_t = as_tensor(x)
    states_t = None if states is None else [as_tensor(s) for s in states]
    hx = None if states_t is None else (states_t[0] if len(states_t) == 1 else tuple(states_t))
    if lengths is None:
        y, finals = module(x_t, hx)
    else:
        packed = torch.nn.utils.rnn.pack_padded_sequence(x_t, torch.as_tensor(lengths), batch_first=batch_first,
                                                         enforce_sorted=False)
        y, finals = module(packed, hx)
        y, _ = torch.nn.utils.rnn.pad_packed_sequence(y, batch_first=batch_first,
                                                        total_length=x.shape[1 if batch_first else 0])
    finals = list(finals) if isinstance(finals, tuple) else [finals]
    torch.autograd.backward([y] + finals, [torch.tensor(dy)] + [torch.tensor(d) for d in dstates])
    grads = {name: p.grad.numpy() for name, p in module.named_parameters()}
    dstates0 = None if states_t is None else [s.grad.numpy() for s in states_t]
    return y.detach().numpy(), [f.detach().numpy() for f in finals], x_t.grad.numpy(), dstates0, grads


def rc_run(layer, x, states, lengths, dy, dstates):
    layer.zero_grad()
    if isinstance(layer, rc.LSTM):
        y, finals = layer(x, None if states is None else tuple(states), lengths=lengths)
        dx, dstates0 = layer.backward(dy, tuple(dstates))
    else:
        y, h_n = layer(x, None if states is None else states[0], lengths=lengths)
        finals = (h_n,)
        dx, dh0 = layer.backward(dy, dstates[0])
        dstates0 = (dh0,)
    return y, list(finals), dx, list(dstates0), layer.grads


def state_widths(module):
    """Widths of the carried states of a torch module: h (proj_size or hidden), c."""
    h_width = module.proj_size or module.hidden_size
    return [h_width] + ([module.hidden_size] if isinstance(module, torch.nn.LSTM) else [])


def compare(module, layer, x, states=None, lengths=None, seed=1, batch_first=False):
    """Run both with the same random upstream gradients and compare everything."""
    dtype = x.dtype
    rng = np.random.default_rng(seed)
    D, L = (2 if module.bidirectional else 1), module.num_layers
    widths = state_widths(module)
    batch = () if x.ndim == 2 else (x.shape[0 if batch_first else 1],)
    dy = rng.standard_normal(x.shape[:-1] + (D * widths[0],)).astype(dtype)
    dstates = [rng.standard_normal((D * L,) + batch + (w,)).astype(dtype) for w in widths]

    expected = torch_run(module, x, states, lengths, dy, dstates, batch_first)
    actual = rc_run(layer, x, states, lengths, dy, dstates)
    (ref_y, ref_finals, ref_dx, ref_dstates0, ref_grads) = expected
    (y, finals, dx, dstates0, grads) = actual
    assert_close(y, ref_y, dtype=dtype, what="y")
    assert len(finals) == len(ref_finals)
    for name, got, want in zip(("h_n", "c_n"), finals, ref_finals):
        assert_close(got, want, dtype=dtype, what=name)
    assert_close(dx, ref_dx, dtype=dtype, what="dx")
    if states is not None:
        for name, got, want in zip(("dh0", "dc0"), dstates0, ref_dstates0):
            assert_close(got, want, dtype=dtype, what=name)
    assert set(grads) == set(ref_grads)
    for name, want in ref_grads.items():
        assert_close(grads[name], want, dtype=dtype, what="grad " + name)


def random_inputs(module, dtype, batch_first, with_states, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, T, INPUT) if batch_first else (T, B, INPUT)).astype(dtype)
    if not with_states:
        return x, None
    rows = (2 if module.bidirectional else 1) * module.num_layers
    return x, [rng.standard_normal((rows, B, w)).astype(dtype) for w in state_widths(module)]


# unsorted, with a full-length and a length-one sequence: enforce_sorted=False matters
LENGTHS = np.array([3, T, 1])


@pytest.mark.parametrize("kind, num_layers, bidirectional, batch_first, with_states, with_lengths, bias", CASES,
                         ids=CASE_IDS)
def test_layer_float64(backend, kind, num_layers, bidirectional, batch_first, with_states, with_lengths, bias):
    module, layer = make_pair(kind, np.float64, backend, num_layers=num_layers, bidirectional=bidirectional,
                              batch_first=batch_first, bias=bias)
    x, states = random_inputs(module, np.float64, batch_first, with_states)
    compare(module, layer, x, states, LENGTHS if with_lengths else None, batch_first=batch_first)


# float32: every kind once, stacked and bidirectional with states; the LSTM with lengths
# too. torch's fp32 LSTM uses oneDNN when enabled, the native formulas otherwise: both.
@pytest.mark.parametrize("kind, mkldnn, with_lengths", [
    ("rnn_tanh", True, True),
    ("rnn_relu", True, False),
    ("lstm", True, False),
    ("lstm", False, False),
    ("lstm", True, True),
    ("lstm", False, True),
    ("lstm_proj", True, True),
    ("gru", True, True),
])
def test_layer_float32(backend, kind, mkldnn, with_lengths):
    module, layer = make_pair(kind, np.float32, backend, num_layers=2, bidirectional=True)
    x, states = random_inputs(module, np.float32, False, True)
    with torch.backends.mkldnn.flags(enabled=mkldnn):
        compare(module, layer, x, states, LENGTHS if with_lengths else None)


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("with_states", [True, False])
def test_unbatched(backend, kind, with_states):
    module, layer = make_pair(kind, np.float64, backend, num_layers=2, bidirectional=True)
    x, states = random_inputs(module, np.float64, False, with_states)
    compare(module, layer, x[:, 0], None if states is None else [s[:, 0] for s in states])


CELLS = {
    "rnn_tanh": (torch.nn.RNNCell, rc.RNNCell, dict(nonlinearity="tanh")),
    "rnn_relu": (torch.nn.RNNCell, rc.RNNCell, dict(nonlinearity="relu")),
    "lstm": (torch.nn.LSTMCell, rc.LSTMCell, dict()),
    "gru": (torch.nn.GRUCell, rc.GRUCell, dict()),
}


@pytest.mark.parametrize("kind", list(CELLS))
@pytest.mark.parametrize("dtype, batched", [(np.float64, True), (np.float64, False), (np.float32, True)])
def test_cell(backend, kind, dtype, batched):
    torch_cls, rc_cls, variant = CELLS[kind]
    torch.manual_seed(0)
    module = torch_cls(INPUT, HIDDEN, **variant).to(TORCH_DTYPE[np.dtype(dtype)])
    cell = rc_cls(INPUT, HIDDEN, **variant, dtype=dtype, seed=1, backend=backend)
    cell.load_state_dict(module.state_dict())
    is_lstm = kind == "lstm"
    rng = np.random.default_rng(0)
    lead = (B,) if batched else ()
    x = rng.standard_normal(lead + (INPUT,)).astype(dtype)
    states = [rng.standard_normal(lead + (HIDDEN,)).astype(dtype) for _ in range(2 if is_lstm else 1)]
    upstream = [rng.standard_normal(lead + (HIDDEN,)).astype(dtype) for _ in states]

    x_t, states_t = as_tensor(x), [as_tensor(s) for s in states]
    out_t = module(x_t, tuple(states_t) if is_lstm else states_t[0])
    out_t = list(out_t) if is_lstm else [out_t]
    torch.autograd.backward(out_t, [torch.tensor(u) for u in upstream])

    if is_lstm:
        out = list(cell(x, tuple(states)))
        dx, dstates0 = cell.backward(tuple(upstream))
    else:
        out = [cell(x, states[0])]
        dx, dh0 = cell.backward(upstream[0])
        dstates0 = [dh0]
    for name, got, want in zip(("h1", "c1"), out, out_t):
        assert_close(got, want.detach().numpy(), dtype=dtype, what=name)
    assert_close(dx, x_t.grad.numpy(), dtype=dtype, what="dx")
    for name, got, want in zip(("dh0", "dc0"), dstates0, states_t):
        assert_close(got, want.grad.numpy(), dtype=dtype, what=name)
    assert set(cell.grads) == {name for name, _ in module.named_parameters()}
    for name, param in module.named_parameters():
        assert_close(cell.grads[name], param.grad.numpy(), dtype=dtype, what="grad " + name)
