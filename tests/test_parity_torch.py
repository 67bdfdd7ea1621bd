"""Parity with PyTorch (torch==2.13.0): same weights via load_state_dict, same outputs,
final states, input, initial-state and parameter gradients, on every backend.

Tolerances: float64 to 1e-10 relative (PyTorch's float64 path is its plain per-step
loop, the same math in a different summation order). float32 to 1e-5: torch's fp32 LSTM
runs on oneDNN with its own summation order and activation code, so agreement is at the
level of float32 rounding accumulated over the steps, not bitwise; the other fp32 cells
run torch's native loop.
"""
import numpy as np
import pytest

import rnncore as rc
from conftest import assert_close

torch = pytest.importorskip("torch")

TORCH_DTYPE = {np.float32: torch.float32, np.float64: torch.float64}


def torch_module(kind, I, H, dtype, **kw):
    cls = {"rnn_tanh": torch.nn.RNN, "rnn_relu": torch.nn.RNN, "lstm": torch.nn.LSTM, "lstm_proj": torch.nn.LSTM,
           "gru": torch.nn.GRU}[kind]
    if kind.startswith("rnn"):
        kw["nonlinearity"] = kind[4:]
    if kind == "lstm_proj":
        kw["proj_size"] = max(1, H // 2)
    torch.manual_seed(0)
    return cls(I, H, dtype=TORCH_DTYPE[dtype], **kw)


def ours_for(module, kind, backend, dtype):
    kw = dict(num_layers=module.num_layers, bias=module.bias, batch_first=module.batch_first,
              bidirectional=module.bidirectional, dtype=dtype, backend=backend)
    if kind.startswith("rnn"):
        layer = rc.RNN(module.input_size, module.hidden_size, nonlinearity=kind[4:], **kw)
    elif kind.startswith("lstm"):
        layer = rc.LSTM(module.input_size, module.hidden_size, proj_size=module.proj_size, **kw)
    else:
        layer = rc.GRU(module.input_size, module.hidden_size, **kw)
    layer.load_state_dict(module.state_dict())  # tensors as they are
    return layer


def compare(kind, backend, dtype, T=5, B=3, I=4, H=5, lengths=None, with_states=True, unbatched=False, **kw):
    module = torch_module(kind, I, H, dtype, **kw)
    layer = ours_for(module, kind, backend, dtype)
    lstm = kind.startswith("lstm")
    D = 2 if module.bidirectional else 1
    rows = D * module.num_layers
    H_out = module.proj_size or H if lstm else H
    rng = np.random.default_rng(0)
    x_shape = (T, I) if unbatched else ((B, T, I) if module.batch_first else (T, B, I))
    x = rng.standard_normal(x_shape).astype(dtype)
    batch = () if unbatched else (B,)
    states = [rng.standard_normal((rows, *batch, H_out)).astype(dtype)]
    if lstm:
        states.append(rng.standard_normal((rows, *batch, H)).astype(dtype))

    tx = torch.tensor(x, requires_grad=True)
    tstates = [torch.tensor(s, requires_grad=True) for s in states]
    thx = (tuple(tstates) if lstm else tstates[0]) if with_states else None
    if lengths is not None:
        packed = torch.nn.utils.rnn.pack_padded_sequence(tx, torch.tensor(lengths), batch_first=module.batch_first,
                                                         enforce_sorted=False)
        out, tfinal = module(packed, thx)
        ty, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=module.batch_first, total_length=T)
    else:
        ty, tfinal = module(tx, thx)
    tfinal = list(tfinal) if lstm else [tfinal]

    hx = (tuple(states) if lstm else states[0]) if with_states else None
    y, final = layer(x, hx, lengths=lengths)
    final = list(final) if lstm else [final]
    assert_close(y, ty.detach().numpy(), dtype, what="y")
    for ours, theirs in zip(final, tfinal):
        assert_close(ours, theirs.detach().numpy(), dtype, what="final state")

    dy = rng.standard_normal(y.shape).astype(dtype)
    dfinal = [rng.standard_normal(f.shape).astype(dtype) for f in final]
    loss = (ty * torch.tensor(dy)).sum() + sum((t * torch.tensor(d)).sum() for t, d in zip(tfinal, dfinal))
    loss.backward()
    dx, dhx = layer.backward(dy, tuple(dfinal) if lstm else dfinal[0])
    assert_close(dx, tx.grad.numpy(), dtype, what="dx")
    if with_states:
        for ours, theirs in zip(list(dhx) if lstm else [dhx], tstates):
            assert_close(ours, theirs.grad.numpy(), dtype, what="dstate0")
    for name, param in module.named_parameters():
        assert_close(layer.grads[name], param.grad.numpy(), dtype, what=f"grad {name}")


KINDS = ["rnn_tanh", "rnn_relu", "lstm", "lstm_proj", "gru"]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kind", KINDS)
def test_single_layer(kind, dtype, backend):
    compare(kind, backend, dtype)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("layers,bidirectional,batch_first", [(2, True, False), (3, False, True), (2, True, True)])
def test_stacks_directions_layouts(kind, layers, bidirectional, batch_first, backend):
    compare(kind, backend, np.float64, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_lengths_against_packed_sequences(kind, bidirectional, backend):
    compare(kind, backend, np.float64, T=6, B=4, lengths=[3, 6, 1, 4], num_layers=2, bidirectional=bidirectional)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
def test_lengths_float32_batch_first(kind, backend):
    compare(kind, backend, np.float32, T=6, B=4, lengths=[3, 6, 1, 4], bidirectional=True, batch_first=True)


@pytest.mark.parametrize("kind", KINDS)
def test_without_initial_states_or_bias(kind, backend):
    compare(kind, backend, np.float64, with_states=False, bias=False)


@pytest.mark.parametrize("kind", ["lstm", "lstm_proj", "gru", "rnn_relu"])
def test_unbatched(kind, backend):
    compare(kind, backend, np.float64, unbatched=True, num_layers=2, bidirectional=True)


@pytest.mark.parametrize("kind", KINDS)
def test_edge_shapes(kind, backend):
    compare(kind, backend, np.float64, T=1, B=1, I=1, H=2 if kind == "lstm_proj" else 1)


def test_float32_lstm_against_torch_native_path(backend):
    # torch's native fp32 loop computes the same formulas as ours step by step
    with torch.backends.mkldnn.flags(enabled=False):
        compare("lstm", backend, np.float32, num_layers=2, bidirectional=True)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", ["RNNCell", "LSTMCell", "GRUCell"])
def test_cells(name, dtype, backend):
    torch.manual_seed(0)
    module = getattr(torch.nn, name)(4, 3, dtype=TORCH_DTYPE[dtype])
    cell = getattr(rc, name)(4, 3, dtype=dtype, backend=backend)
    cell.load_state_dict(module.state_dict())
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4)).astype(dtype)
    states = [rng.standard_normal((2, 3)).astype(dtype) for _ in range(2 if name == "LSTMCell" else 1)]
    tx = torch.tensor(x, requires_grad=True)
    tstates = [torch.tensor(s, requires_grad=True) for s in states]
    lstm = name == "LSTMCell"
    tout = module(tx, tuple(tstates) if lstm else tstates[0])
    out = cell(x, tuple(states) if lstm else states[0])
    tout, out = (list(tout), list(out)) if lstm else ([tout], [out])
    for ours, theirs in zip(out, tout):
        assert_close(ours, theirs.detach().numpy(), dtype, what="state")
    ws = [rng.standard_normal(o.shape).astype(dtype) for o in out]
    sum((t * torch.tensor(w)).sum() for t, w in zip(tout, ws)).backward()
    dx, dstates = cell.backward(tuple(ws) if lstm else ws[0])
    assert_close(dx, tx.grad.numpy(), dtype, what="dx")
    for ours, theirs in zip(list(dstates) if lstm else [dstates], tstates):
        assert_close(ours, theirs.grad.numpy(), dtype, what="dstate")
    for pname, param in module.named_parameters():
        assert_close(cell.grads[pname], param.grad.numpy(), dtype, what=pname)
