"""The reference's BPTT gradients against central finite differences, in float64.

Loss: L = sum(wy * y) + sum(w_s * state_n) over the final states, with random weights,
so every output and final state is exercised. With step eps = 1e-6 the central
difference has truncation error O(eps^2 * f''') ~ 1e-12 and rounding error
~ 1e-16 * |L| / eps ~ 1e-10 relative; 1e-6 relative to the gradient's scale is ample
margin above both and far below any real error (a wrong term shows up at 1e-2 or more).
"""
import numpy as np
import pytest

import rnncore as rc
from cases import VARIANTS, VARIANT_IDS, back, build, call, random_states

EPS = 1e-6
RTOL = 1e-6


def numerical_gradient(f, array):
    grad = np.zeros_like(array)
    flat, gflat = array.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        saved = flat[i]
        flat[i] = saved + EPS
        up = f()
        flat[i] = saved - EPS
        down = f()
        flat[i] = saved
        gflat[i] = (up - down) / (2 * EPS)
    return grad


def assert_grad(analytic, numeric, what):
    scale = max(np.max(np.abs(numeric)), 1e-3)
    err = np.max(np.abs(analytic - numeric))
    assert err <= RTOL * scale, f"{what}: |analytic - numeric| = {err:.2e}, scale {scale:.2e}"


def check_layer(layer, T, B, lengths=None, with_states=True, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, B, layer.input_size))
    states = random_states(layer, B, rng) if with_states else None
    y, finals = call(layer, x, states, lengths=lengths)
    wy = rng.standard_normal(y.shape)
    ws = [rng.standard_normal(s.shape) for s in finals]

    def loss():
        y, finals = call(layer, x, states, lengths=lengths)
        return float(np.sum(wy * y) + sum(np.sum(w * s) for w, s in zip(ws, finals)))

    layer.zero_grad()
    call(layer, x, states, lengths=lengths)
    dx, dstates = back(layer, wy, ws)
    assert_grad(dx, numerical_gradient(loss, x), "dx")
    if with_states:
        for i, (d, s) in enumerate(zip(dstates, states)):
            assert_grad(d, numerical_gradient(loss, s), f"dstate{i}")
    for name, param in layer.parameters().items():
        assert_grad(layer.grads[name], numerical_gradient(loss, param), name)


@pytest.mark.parametrize("name,cls,kwargs", VARIANTS, ids=VARIANT_IDS)
def test_every_variant(name, cls, kwargs):
    check_layer(build(cls, kwargs, input_size=3, hidden_size=3), T=4, B=2)


@pytest.mark.parametrize("name,cls,kwargs", VARIANTS, ids=VARIANT_IDS)
def test_every_variant_with_lengths(name, cls, kwargs):
    # unsorted lengths, one full, one of 1: the padded tail must carry the state and its gradient
    check_layer(build(cls, kwargs, input_size=2, hidden_size=3), T=4, B=3, lengths=[2, 4, 1])


@pytest.mark.parametrize("name,cls,kwargs", [v for v in VARIANTS if v[1] is not rc.JordanRNN],
                         ids=[v[0] for v in VARIANTS if v[1] is not rc.JordanRNN])
def test_stacked_bidirectional_with_lengths(name, cls, kwargs):
    layer = build(cls, kwargs, input_size=2, hidden_size=3, num_layers=2, bidirectional=True)
    check_layer(layer, T=3, B=2, lengths=[3, 2])


@pytest.mark.parametrize("T,B,H", [(1, 1, 1), (1, 2, 2), (3, 1, 1)])
@pytest.mark.parametrize("name,cls,kwargs", [VARIANTS[0], VARIANTS[2], VARIANTS[4], VARIANTS[7], VARIANTS[8],
                                             VARIANTS[9]], ids=lambda v: v if isinstance(v, str) else "")
def test_edge_shapes(name, cls, kwargs, T, B, H):
    check_layer(build(cls, kwargs, input_size=1, hidden_size=H), T=T, B=B)


def test_without_bias_and_without_initial_states():
    for cls, kwargs in [(rc.LSTM, dict(peephole=True)), (rc.GRU, dict(reset_after=False)),
                        (rc.JordanRNN, dict(output_size=2))]:
        check_layer(build(cls, kwargs, input_size=2, hidden_size=2, bias=False), T=3, B=2, with_states=False)


def test_three_layers_batch_first():
    layer = rc.LSTM(2, 3, num_layers=3, proj_size=2, batch_first=True, dtype=np.float64, seed=1)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 2))  # (B, T, I)
    y, (h, c) = layer(x)
    wy = rng.standard_normal(y.shape)
    layer.zero_grad()
    layer(x)
    dx, _ = layer.backward(wy)
    assert_grad(dx, numerical_gradient(lambda: float(np.sum(wy * layer(x)[0])), x), "dx")
    for name, param in layer.parameters().items():
        assert_grad(layer.grads[name], numerical_gradient(lambda: float(np.sum(wy * layer(x)[0])), param), name)


@pytest.mark.parametrize("cell_cls,kwargs", [(rc.RNNCell, dict(nonlinearity="relu")), (rc.GRUCell, {}),
                                             (rc.GRUCell, dict(reset_after=False)),
                                             (rc.LSTMCell, dict(peephole=True))])
def test_cells(cell_cls, kwargs):
    cell = cell_cls(3, 2, dtype=np.float64, seed=0, **kwargs)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3))
    lstm = cell_cls is rc.LSTMCell
    states = [rng.standard_normal((2, 2)) for _ in range(2 if lstm else 1)]
    ws = [rng.standard_normal((2, 2)) for _ in states]

    def run():
        out = cell(x, tuple(states) if lstm else states[0])
        return list(out) if lstm else [out]

    def loss():
        return float(sum(np.sum(w * s) for w, s in zip(ws, run())))

    run()
    dx, dstates = cell.backward(tuple(ws) if lstm else ws[0])
    dstates = list(dstates) if lstm else [dstates]
    assert_grad(dx, numerical_gradient(loss, x), "dx")
    for d, s in zip(dstates, states):
        assert_grad(d, numerical_gradient(loss, s), "dstate")
    for name, param in cell.parameters().items():
        assert_grad(cell.grads[name], numerical_gradient(loss, param), name)


def test_functional_reverse_with_lengths():
    rng = np.random.default_rng(2)
    T, B, I, H = 4, 3, 2, 3
    params = dict(weight_ih=rng.standard_normal((4 * H, I)) * 0.5, weight_hh=rng.standard_normal((4 * H, H)) * 0.5,
                  bias_ih=rng.standard_normal(4 * H), bias_hh=rng.standard_normal(4 * H),
                  weight_ci=rng.standard_normal(H), weight_cf=rng.standard_normal(H),
                  weight_co=rng.standard_normal(H))
    x = rng.standard_normal((T, B, I))
    h0, c0 = rng.standard_normal((B, H)), rng.standard_normal((B, H))
    lengths = [4, 1, 3]
    wy, wh, wc = rng.standard_normal((T, B, H)), rng.standard_normal((B, H)), rng.standard_normal((B, H))

    def loss():
        y, h, c, _ = rc.functional.lstm_forward(x, h0, c0, **params, lengths=lengths, reverse=True)
        return float(np.sum(wy * y) + np.sum(wh * h) + np.sum(wc * c))

    *_, ctx = rc.functional.lstm_forward(x, h0, c0, **params, lengths=lengths, reverse=True, training=True)
    dx, dh0, dc0, grads = rc.functional.lstm_backward(ctx, wy, wh, wc)
    assert_grad(dx, numerical_gradient(loss, x), "dx")
    assert_grad(dh0, numerical_gradient(loss, h0), "dh0")
    assert_grad(dc0, numerical_gradient(loss, c0), "dc0")
    for name, value in params.items():
        assert_grad(grads[name], numerical_gradient(loss, value), name)
