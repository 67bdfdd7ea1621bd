"""rnncore.torch: the adapter modules against torch's own on the same parameters.

Each parity case builds a torch module and the adapter of the same configuration with
the same state_dict, runs both forward on the same inputs (a tensor, a PackedSequence
with unsorted lengths, or an unbatched sequence, with or without initial states), back-
propagates the same random upstream gradients through every output, and compares y,
the final states and the gradients of x, of the initial states and of every parameter,
to conftest's tolerances (float64 1e-10, float32 1e-5, relative to torch's largest
magnitude). Every case also checks that the adapter's numbers came from rnncore's
kernels, not from a silent fallback to torch.
"""
import copy
import gc
import io
import pickle
import weakref

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import rnncore as rc  # noqa: E402
import rnncore.torch as rct  # noqa: E402
from rnncore.backends import registry as _backend  # noqa: E402
from conftest import assert_close  # noqa: E402
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence  # noqa: E402

# torch.backends.mkldnn.flags() warns about Intel-GPU TF32 on every use; torch's LSTM
# warns that oneDNN has no projections: both irrelevant here
pytestmark = [pytest.mark.filterwarnings("ignore:TF32 acceleration:UserWarning"),
              pytest.mark.filterwarnings("ignore:LSTM with projections:UserWarning")]

T, B, INPUT, HIDDEN = 5, 3, 4, 5


@pytest.fixture(autouse=True)
def one_thread():
    """torch, and so the adapter, at one thread: the numbers do not depend on it, and on
    a shared machine threads only slow problems this small."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

LENGTHS = [3, T, 1]  # unsorted, with a full-length and a length-one sequence

KINDS = {
    "rnn_tanh": (torch.nn.RNN, rct.RNN, dict(nonlinearity="tanh")),
    "rnn_relu": (torch.nn.RNN, rct.RNN, dict(nonlinearity="relu")),
    "lstm": (torch.nn.LSTM, rct.LSTM, dict()),
    "lstm_proj": (torch.nn.LSTM, rct.LSTM, dict(proj_size=2)),
    "gru": (torch.nn.GRU, rct.GRU, dict()),
}

# A covering set: every kind meets 1, 2 and 3 layers, both directions, both layouts,
# each input form and both state choices, each case changing several axes at once.
# (kind, num_layers, bidirectional, batch_first, form, with_states, bias)
CASES = [
    ("rnn_tanh", 1, False, False, "tensor", True, True),
    ("rnn_tanh", 2, True, True, "packed", False, True),
    ("rnn_tanh", 3, False, False, "unbatched", True, False),
    ("rnn_relu", 1, True, True, "tensor", False, True),
    ("rnn_relu", 3, True, False, "packed", True, True),
    ("lstm", 1, False, True, "tensor", True, True),
    ("lstm", 2, True, False, "tensor", False, False),
    ("lstm", 3, True, True, "packed", True, True),
    ("lstm", 2, False, True, "unbatched", False, True),
    ("lstm_proj", 1, True, False, "tensor", True, True),
    ("lstm_proj", 2, False, True, "packed", True, False),
    ("lstm_proj", 3, True, False, "unbatched", True, True),
    ("gru", 1, False, False, "packed", False, True),
    ("gru", 2, True, True, "tensor", True, True),
    ("gru", 3, True, False, "unbatched", False, True),
    ("gru", 3, False, True, "tensor", True, False),
]
CASE_IDS = ["{}-L{}-{}-{}-{}-{}-{}".format(kind, L, "bi" if bi else "uni", "bf" if bf else "tm", form,
                                           "h0" if st else "noh0", "bias" if b else "nobias")
            for kind, L, bi, bf, form, st, b in CASES]


def make_pair(kind, dtype=torch.float64, seed=0, **kwargs):
    """torch's module and the adapter, the adapter's parameters loaded from torch's."""
    torch_cls, ours_cls, variant = KINDS[kind]
    torch.manual_seed(seed)
    module = torch_cls(INPUT, HIDDEN, **variant, **kwargs).to(dtype)
    ours = ours_cls(INPUT, HIDDEN, **variant, **kwargs).to(dtype)
    ours.load_state_dict(module.state_dict())
    return module, ours


def state_widths(module):
    return [module.proj_size or module.hidden_size] + ([module.hidden_size] if module.mode == "LSTM" else [])


def make_inputs(module, dtype, form, with_states, seed=1):
    """x (padded, batch-first when the module is), lengths for the packed form, states."""
    gen = torch.Generator().manual_seed(seed)
    rows = (2 if module.bidirectional else 1) * module.num_layers
    if form == "unbatched":
        x = torch.randn(T, INPUT, generator=gen, dtype=dtype)
        states = [torch.randn(rows, w, generator=gen, dtype=dtype) for w in state_widths(module)]
    else:
        x = torch.randn((B, T, INPUT) if module.batch_first else (T, B, INPUT), generator=gen, dtype=dtype)
        states = [torch.randn(rows, B, w, generator=gen, dtype=dtype) for w in state_widths(module)]
    return x, (LENGTHS if form == "packed" else None), (states if with_states else None)


def run(module, x, lengths, states, seed=2, enforce_sorted=False, x_grad=True):
    """Forward and backward with fixed random upstream gradients through y and every
    final state; returns y (packed data for packed input), the finals, the gradients of
    x (None unless `x_grad`) and of the states, the parameter gradients by name, and y's
    grad_fn."""
    module.zero_grad()
    x = x.clone().requires_grad_(x_grad)
    states = None if states is None else [s.clone().requires_grad_(True) for s in states]
    inp = x if lengths is None else pack_padded_sequence(x, torch.tensor(lengths), batch_first=module.batch_first,
                                                         enforce_sorted=enforce_sorted)
    hx = None if states is None else (tuple(states) if module.mode == "LSTM" else states[0])
    y, finals = module(inp, hx)
    stride = None if lengths is not None else y.stride()
    if lengths is not None:
        assert isinstance(y, PackedSequence)
        assert y.batch_sizes is inp.batch_sizes and y.sorted_indices is inp.sorted_indices
        y = y.data
    finals = list(finals) if isinstance(finals, tuple) else [finals]
    gen = torch.Generator().manual_seed(seed)
    upstream = [torch.randn(t.shape, generator=gen, dtype=t.dtype) for t in [y] + finals]
    read_in_place = upstream + [x] + (states or [])
    kept = [t.detach().clone() for t in read_in_place]
    torch.autograd.backward([y] + finals, upstream)
    # the kernels read x, the states and the upstream gradients where they lie, and write none
    assert all(torch.equal(t.detach(), k) for t, k in zip(read_in_place, kept))
    return dict(y=y.detach(), stride=stride, finals=[f.detach() for f in finals], dx=x.grad,
                dstates=None if states is None else [s.grad for s in states],
                grads={n: p.grad for n, p in module.named_parameters()}, grad_fn=y.grad_fn)


def assert_same(got, want, dtype):
    dtype = np.float64 if dtype == torch.float64 else np.float32
    assert_close(got["y"].numpy(), want["y"].numpy(), dtype=dtype, what="y")
    assert got["stride"] == want["stride"]  # batch-first y: torch's transposed view, both
    for name, a, b in zip(("h_n", "c_n"), got["finals"], want["finals"]):
        assert_close(a.numpy(), b.numpy(), dtype=dtype, what=name)
    assert_close(got["dx"].numpy(), want["dx"].numpy(), dtype=dtype, what="dx")
    if want["dstates"] is not None:
        for name, a, b in zip(("dh0", "dc0"), got["dstates"], want["dstates"]):
            assert_close(a.numpy(), b.numpy(), dtype=dtype, what=name)
    assert set(got["grads"]) == set(want["grads"])
    for name, b in want["grads"].items():
        assert_close(got["grads"][name].numpy(), b.numpy(), dtype=dtype, what="grad " + name)


def through_kernels(result):
    return type(result["grad_fn"]).__name__ == "_KernelsBackward"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("kind, num_layers, bidirectional, batch_first, form, with_states, bias", CASES,
                         ids=CASE_IDS)
def test_matches_torch(kind, num_layers, bidirectional, batch_first, form, with_states, bias, dtype):
    module, ours = make_pair(kind, dtype, num_layers=num_layers, bidirectional=bidirectional,
                             batch_first=batch_first, bias=bias)
    x, lengths, states = make_inputs(module, dtype, form, with_states)
    want = run(module, x, lengths, states)
    got = run(ours, x, lengths, states)
    assert through_kernels(got)
    assert_same(got, want, dtype)


@pytest.mark.parametrize("mkldnn", [True, False], ids=["onednn", "native"])
def test_lstm_float32_both_torch_paths(mkldnn):
    """torch's fp32 LSTM runs on oneDNN when enabled, its native formulas otherwise."""
    module, ours = make_pair("lstm", torch.float32, num_layers=2, bidirectional=True)
    x, lengths, states = make_inputs(module, torch.float32, "tensor", True)
    with torch.backends.mkldnn.flags(enabled=mkldnn):
        want = run(module, x, lengths, states)
    assert_same(run(ours, x, lengths, states), want, torch.float32)


def test_every_backend(backend, monkeypatch):
    """The adapter runs whichever backend rnncore has selected."""
    monkeypatch.setattr(_backend, "_selected", backend)
    module, ours = make_pair("lstm", num_layers=2, bidirectional=True)
    x, lengths, states = make_inputs(module, torch.float64, "packed", True)
    assert_same(run(ours, x, lengths, states), run(module, x, lengths, states), torch.float64)


@pytest.mark.parametrize("kind, num_layers, bidirectional, batch_first, form, with_states, bias",
                         [CASES[k] for k in (1, 7, 11, 13)], ids=[CASE_IDS[k] for k in (1, 7, 11, 13)])
def test_an_input_without_requires_grad_gets_the_same_gradients(kind, num_layers, bidirectional, batch_first, form,
                                                                with_states, bias):
    """x needs no gradient (a model's first layer): the kernels leave out the first
    layer's dx product, and every other gradient is the bits of the call that makes dx."""
    _, ours = make_pair(kind, num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first,
                        bias=bias)
    x, lengths, states = make_inputs(ours, torch.float64, form, with_states)
    alone, full = run(ours, x, lengths, states, x_grad=False), run(ours, x, lengths, states)
    assert through_kernels(alone) and alone["dx"] is None and full["dx"] is not None
    for a, b in zip(alone["dstates"] or [], full["dstates"] or []):
        assert torch.equal(a, b)
    for name, grad in full["grads"].items():
        assert torch.equal(alone["grads"][name], grad), name


def test_packed_sorted():
    """A PackedSequence packed with enforce_sorted=True carries no permutation."""
    module, ours = make_pair("gru", num_layers=2, bidirectional=True)
    x, _, states = make_inputs(module, torch.float64, "packed", True)
    lengths = sorted(LENGTHS, reverse=True)
    got = run(ours, x, lengths, states, enforce_sorted=True)
    assert through_kernels(got)
    assert_same(got, run(module, x, lengths, states, enforce_sorted=True), torch.float64)


def test_frozen_weights():
    """Weights that need no gradient get none; the others, x and h0 get torch's."""
    module, ours = make_pair("gru", num_layers=2)
    for m in (module, ours):
        m.weight_ih_l0.requires_grad_(False)
        m.bias_hh_l1.requires_grad_(False)
    x, _, states = make_inputs(module, torch.float64, "tensor", True)
    got, want = run(ours, x, None, states), run(module, x, None, states)
    assert through_kernels(got)
    assert got["grads"]["weight_ih_l0"] is None and got["grads"]["bias_hh_l1"] is None
    for result in (got, want):
        del result["grads"]["weight_ih_l0"], result["grads"]["bias_hh_l1"]
    assert_same(got, want, torch.float64)


@pytest.mark.parametrize("form", ["tensor", "packed"])
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_relu"])
def test_dropout_masks_are_torchs(kind, form):
    """Dropout between layers draws from torch's generator as torch's modules do: under
    the same seed the same masks, so the same numbers, packed or not."""
    module, ours = make_pair(kind, num_layers=3, dropout=0.4, bidirectional=True)
    x, lengths, states = make_inputs(module, torch.float64, form, True)
    torch.manual_seed(7)
    want = run(module, x, lengths, states)
    torch.manual_seed(7)
    got = run(ours, x, lengths, states)
    assert through_kernels(got)
    assert_same(got, want, torch.float64)
    torch.manual_seed(8)
    assert not torch.allclose(run(ours, x, lengths, states)["y"], got["y"])


def test_eval_and_no_grad_run_the_kernels_without_a_graph():
    module, ours = make_pair("gru", num_layers=2, dropout=0.5)
    x, _, _ = make_inputs(module, torch.float64, "tensor", False)
    module.eval(), ours.eval()
    y, h = ours(x)  # eval: dropout off; parameters require grad, so a graph
    assert type(y.grad_fn).__name__ == "_KernelsBackward"
    with torch.no_grad():
        y_ng, h_ng = ours(x)
        y_ref, h_ref = module(x)
    assert y_ng.grad_fn is None
    assert_close(y_ng.numpy(), y_ref.numpy(), what="y")
    assert_close(h_ng.numpy(), h_ref.numpy(), what="h_n")
    assert torch.equal(y_ng, y.detach())


@pytest.mark.parametrize("kind, packed", [("lstm", False), ("gru", True), ("rnn_tanh", False)])
def test_gradcheck(kind, packed):
    module, ours = make_pair(kind, num_layers=2, bidirectional=True)
    x, lengths, states = make_inputs(module, torch.float64, "packed" if packed else "tensor", True)
    names = [n for n, _ in ours.named_parameters()]

    def f(x, *rest):
        states, weights = rest[:len(state_widths(ours))], rest[len(state_widths(ours)):]
        inp = x if not packed else pack_padded_sequence(x, torch.tensor(lengths), enforce_sorted=False)
        hx = tuple(states) if ours.mode == "LSTM" else states[0]
        y, finals = torch.func.functional_call(ours, dict(zip(names, weights)), (inp, hx))
        y = y.data if packed else y
        assert type(y.grad_fn).__name__ == "_KernelsBackward"
        return (y, *(finals if isinstance(finals, tuple) else (finals,)))

    inputs = [t.clone().requires_grad_(True) for t in (x, *states, *ours.parameters())]
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7, rtol=1e-6)


def test_forwards_before_one_backward():
    """Each forward keeps its own context, as in torch: two forwards, then the backward
    of either or both, in any order."""
    module, ours = make_pair("lstm", num_layers=2, bidirectional=True)
    results = []
    for m in (module, ours):
        m.zero_grad()
        x1 = torch.randn(T, B, INPUT, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        x2 = torch.randn(T + 2, B, INPUT, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
        x1.requires_grad_(True), x2.requires_grad_(True)
        y1, _ = m(x1)
        y2, _ = m(x2)
        (y2 ** 2).sum().backward()
        grads_after_second = {n: p.grad.clone() for n, p in m.named_parameters()}
        (y1 * 3).sum().backward()
        results.append((y1.detach(), y2.detach(), x1.grad, x2.grad, grads_after_second,
                        {n: p.grad.clone() for n, p in m.named_parameters()}))
    for what, got, want in zip(("y1", "y2", "dx1", "dx2"), results[1][:4], results[0][:4]):
        assert_close(got.numpy(), want.numpy(), what=what)
    for got, want in zip(results[1][4:], results[0][4:]):
        for name in want:
            assert_close(got[name].numpy(), want[name].numpy(), what=name)


def test_retain_graph_then_second_backward():
    """retain_graph=True keeps the context for another backward; without it, torch's
    own error for a second backward."""
    _, ours = make_pair("gru")
    x, _, _ = make_inputs(ours, torch.float64, "tensor", False)
    y, _ = ours(x)
    loss = y.sum()
    loss.backward(retain_graph=True)
    first = ours.weight_hh_l0.grad.clone()
    loss.backward()
    assert torch.allclose(ours.weight_hh_l0.grad, 2 * first, rtol=1e-12, atol=0)
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        loss.backward()


def test_context_freed_by_backward(monkeypatch):
    """A call's context goes with torch's saved tensors, at the backward, not with the
    graph's nodes, which live as long as the output does."""
    calls = []
    forward = rct._Call.forward

    def spy(self, keep_context):
        calls.append(weakref.ref(self))
        return forward(self, keep_context)

    monkeypatch.setattr(rct._Call, "forward", spy)
    _, ours = make_pair("lstm", num_layers=2)
    x, _, _ = make_inputs(ours, torch.float64, "tensor", False)
    y, _ = ours(x)
    gc.collect()
    assert calls[0]() is not None
    y.sum().backward()
    gc.collect()
    assert y.grad_fn is not None and calls[0]() is None


def test_strided_inputs_and_states():
    """Non-contiguous x and states are read through copies, with torch's numbers."""
    module, ours = make_pair("lstm", num_layers=2)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(B, T, INPUT, generator=gen, dtype=torch.float64).transpose(0, 1)
    states = [torch.randn(B, 2, HIDDEN, generator=gen, dtype=torch.float64).transpose(0, 1),
              torch.randn(2, B, HIDDEN, generator=gen, dtype=torch.float64)]
    assert not x.clone().is_contiguous() and not states[0].clone().is_contiguous()  # as `run` passes them
    got = run(ours, x, None, states)
    assert through_kernels(got)
    assert_same(got, run(module, x, None, states), torch.float64)


def test_input_changed_in_place_before_backward_is_refused():
    """The kernels' context reads x where it lies; torch's version check guards it."""
    _, ours = make_pair("rnn_tanh")
    x, _, _ = make_inputs(ours, torch.float64, "tensor", False)
    y, _ = ours(x)
    with torch.no_grad():
        x.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def test_create_graph_raises():
    _, ours = make_pair("lstm")
    x, _, _ = make_inputs(ours, torch.float64, "tensor", False)
    x.requires_grad_(True)
    y, _ = ours(x)
    with pytest.raises(RuntimeError, match="create_graph=True.*second derivative"):
        torch.autograd.grad(y.sum(), x, create_graph=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_other_dtypes_fall_back_to_torch(dtype):
    module, ours = make_pair("gru", dtype, num_layers=2)
    x, _, states = make_inputs(module, dtype, "tensor", True)
    want, got = run(module, x, None, states), run(ours, x, None, states)
    assert not through_kernels(got)
    for key in ("y", "dx"):
        assert torch.equal(got[key], want[key])
    for name, g in want["grads"].items():
        assert torch.equal(got["grads"][name], g)


@pytest.fixture
def flushed_denormals():
    if not torch.set_flush_denormal(True):
        pytest.skip("torch cannot flush subnormal numbers on this CPU")
    yield
    torch.set_flush_denormal(False)


def large_lstm_pair():
    """torch's LSTM of ONEDNN_LSTM_MIN_HIDDEN units, the adapter's with its weights, and x."""
    torch.manual_seed(0)
    module = torch.nn.LSTM(INPUT, rct.ONEDNN_LSTM_MIN_HIDDEN)
    ours = rct.LSTM(INPUT, rct.ONEDNN_LSTM_MIN_HIDDEN)
    ours.load_state_dict(module.state_dict())
    x, _, _ = make_inputs(module, torch.float32, "tensor", False)
    return module, ours, x


def test_large_float32_lstm_keeps_torchs_onednn_path(flushed_denormals):
    """From ONEDNN_LSTM_MIN_HIDDEN on, with subnormals flushed, torch's oneDNN LSTM is the
    faster: torch's numbers. float64, projections and packed input still take rnncore's
    kernels."""
    module, ours, x = large_lstm_pair()
    got, want = run(ours, x, None, None), run(module, x, None, None)
    assert not through_kernels(got) and torch.equal(got["y"], want["y"])
    with torch.backends.mkldnn.flags(enabled=False):
        assert through_kernels(run(ours, x, None, None))
    assert through_kernels(run(ours, x, LENGTHS, None))
    assert through_kernels(run(ours.double(), x.double(), None, None))
    assert through_kernels(run(rct.LSTM(INPUT, rct.ONEDNN_LSTM_MIN_HIDDEN, proj_size=2), x, None, None))


def test_large_float32_lstm_takes_the_kernels_where_subnormals_are_kept():
    """Without flushing (torch's default), oneDNN's backward runs 10-17x slower on the
    subnormal values training makes: the kernels (which flush them inside) serve it."""
    torch.set_flush_denormal(False)
    module, ours, x = large_lstm_pair()
    got = run(ours, x, None, None)
    assert through_kernels(got)
    want = run(module, x, None, None)
    assert_close(got["y"].numpy(), want["y"].numpy(), dtype=np.float32, what="y")
    for name, g in want["grads"].items():
        assert_close(got["grads"][name].numpy(), g.numpy(), dtype=np.float32, what=name)


def test_mixed_dtypes_fall_back_to_torchs_error():
    _, ours = make_pair("lstm", torch.float64)
    with pytest.raises(ValueError, match="input dtype"):
        ours(torch.zeros(T, B, INPUT, dtype=torch.float32))
    with pytest.raises(RuntimeError, match="input.size\\(-1\\) must be equal to input_size"):
        ours(torch.zeros(T, B, INPUT + 1, dtype=torch.float64))


# torch's forward-mode AD loads its own decompositions through torch.jit.script, which warns
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_second_order_transform_falls_back_to_torch():
    """torch.func's Hessian (reverse over reverse) and forward-mode AD run torch's own
    forward, with torch's numbers."""
    module, ours = make_pair("lstm")
    x, _, _ = make_inputs(module, torch.float64, "tensor", False)

    def energy(m):
        return lambda x: (m(x)[0] ** 2).sum()

    want = torch.func.hessian(energy(module))(x[:2])
    assert torch.equal(torch.func.hessian(energy(ours))(x[:2]), want)
    tangent = torch.ones_like(x)
    want = torch.func.jvp(energy(module), (x,), (tangent,))
    got = torch.func.jvp(energy(ours), (x,), (tangent,))
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_threads_follow_torch_unless_set(monkeypatch):
    monkeypatch.setattr(_backend, "_num_threads", None)
    monkeypatch.setattr(_backend, "_followed_threads", None)
    before = torch.get_num_threads()
    _, ours = make_pair("rnn_tanh")
    x, _, _ = make_inputs(ours, torch.float64, "tensor", False)
    try:
        torch.set_num_threads(1)
        ours(x)
        assert rc.get_num_threads() == 1
        monkeypatch.setattr(_backend, "_num_threads", 3)  # as rc.set_num_threads(3) leaves it
        torch.set_num_threads(2)
        ours(x)
        assert rc.get_num_threads() == 3 and _backend._followed_threads == 1
    finally:
        torch.set_num_threads(before)


# -- whole models: accelerate, restore, training, saving --------------------------------

class Tagger(torch.nn.Module):
    """A model with recurrent layers nested in every container torch has."""

    def __init__(self):
        super().__init__()
        self.encoder = torch.nn.Sequential(torch.nn.Linear(INPUT, INPUT), torch.nn.Tanh())
        self.stack = torch.nn.ModuleList([torch.nn.LSTM(INPUT, HIDDEN, batch_first=True, bidirectional=True),
                                          torch.nn.GRU(2 * HIDDEN, HIDDEN, batch_first=True)])
        self.heads = torch.nn.ModuleDict({"rnn": torch.nn.Sequential(torch.nn.RNN(HIDDEN, HIDDEN, batch_first=True)),
                                          "out": torch.nn.Linear(HIDDEN, 2)})

    def forward(self, x):
        h = self.encoder(x)
        for layer in self.stack:
            h, _ = layer(h)
        h, _ = self.heads["rnn"](h)
        return self.heads["out"](h[:, -1])


def recurrent_modules(model):
    return [m for m in model.modules() if isinstance(m, torch.nn.RNNBase)]


def test_accelerate_and_restore_in_place():
    torch.manual_seed(0)
    model = Tagger().double()
    params = list(model.parameters())
    originals = recurrent_modules(model)
    x = torch.randn(B, T, INPUT, dtype=torch.float64)
    want = model(x)
    assert rct.accelerate(model) is model
    assert [type(m) for m in recurrent_modules(model)] == [rct.LSTM, rct.GRU, rct.RNN]
    assert all(a is b for a, b in zip(recurrent_modules(model), originals))
    assert all(a is b for a, b in zip(model.parameters(), params))
    got = model(x)
    assert type(got.grad_fn).__name__ == "AddmmBackward0"
    assert_close(got.detach().numpy(), want.detach().numpy(), what="output")
    assert rct.restore(model) is model
    assert [type(m) for m in recurrent_modules(model)] == [torch.nn.LSTM, torch.nn.GRU, torch.nn.RNN]
    assert all(a is b for a, b in zip(model.parameters(), params))
    assert torch.equal(model(x), want)
    single = torch.nn.GRU(INPUT, HIDDEN)
    assert type(rct.accelerate(single)) is rct.GRU
    for function in (rct.accelerate, rct.restore):
        with pytest.raises(TypeError, match="model: expected a torch.nn.Module, got list"):
            function([single])


def train_losses(model, steps=50):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(16, 12, INPUT, generator=gen)
    target = (x.sum(dim=(1, 2)) > 0).long()  # the sign of a sequence's sum
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return np.array(losses)


def test_adam_training_matches_torch():
    """50 Adam steps on the same float32 model: the same loss curve as torch's."""
    torch.manual_seed(0)
    plain = Tagger()
    fast = rct.accelerate(copy.deepcopy(plain))
    want = train_losses(plain)
    got = train_losses(fast)
    assert want[-1] < 0.5 * want[0]  # it learns
    # float32 over a trajectory: each step's gradients round differently from torch's
    # (other sum orders, ~1e-6 relative) and feed the next step's parameters, and Adam
    # divides by sqrt(v), so the curves drift apart by up to a few 1e-5 of their scale
    # over 50 steps; a wrong gradient moves them by orders of magnitude more
    assert_close(got, want, rtol=3e-5, what="loss curve")


def roundtrip_pickle(model):
    return pickle.loads(pickle.dumps(model))


def roundtrip_torch_save(model):
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


@pytest.mark.parametrize("roundtrip", [roundtrip_pickle, roundtrip_torch_save, copy.deepcopy],
                         ids=["pickle", "torch.save", "deepcopy"])
def test_accelerated_model_saves_and_loads(roundtrip):
    torch.manual_seed(0)
    model = rct.accelerate(Tagger().double())
    x = torch.randn(B, T, INPUT, dtype=torch.float64)
    want = model(x)  # builds the kernels' views, which must not travel
    loaded = roundtrip(model)
    assert [type(m) for m in recurrent_modules(loaded)] == [rct.LSTM, rct.GRU, rct.RNN]
    got = loaded(x)
    assert torch.equal(got, want)
    got.sum().backward()
    assert all(p.grad is not None for p in loaded.parameters())


def test_state_dict_roundtrip_through_torch_save():
    torch.manual_seed(0)
    model = rct.accelerate(Tagger().double())
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(1)
    other = Tagger().double()
    other.load_state_dict(torch.load(buffer))  # weights_only: plain tensors
    rct.accelerate(other)
    x = torch.randn(B, T, INPUT, dtype=torch.float64)
    assert torch.equal(other(x), model(x))


def test_weights_replaced_or_converted_are_followed():
    """The kernels view the module's weights: updated in place they see the update;
    replaced (`.data =`, `.double()`) they view the new storage."""
    module, ours = make_pair("gru", torch.float32)
    x, _, _ = make_inputs(module, torch.float32, "tensor", False)
    ours(x)
    with torch.no_grad():
        for m in (module, ours):
            m.weight_hh_l0.mul_(0.5)
            m.bias_ih_l0.data = m.bias_ih_l0.data + 1
    assert_close(ours(x)[0].detach().numpy(), module(x)[0].detach().numpy(), what="y")
    module.double(), ours.double()
    got = run(ours, x.double(), None, None)
    assert through_kernels(got)
    assert_same(got, run(module, x.double(), None, None), torch.float64)
