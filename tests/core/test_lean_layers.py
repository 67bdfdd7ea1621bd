"""`layer(x, ..., memory="lean")`: the layers' memory-lean BPTT. Through stacking, both
directions, lengths, initial states, inter-layer dropout and the regularised options
(masks drawn by the seed), a lean call and backward give the full path's outputs and
gradients bit for bit; the lean context and backward hold far less memory; a wrong
`memory` is refused before anything runs."""
import tracemalloc

import numpy as np
import pytest

import rnncore as rc

from cases import back, call


def _layer(cls, backend, **kw):
    return cls(3, 6, num_layers=2, bidirectional=True, dropout=0.2, seed=7, backend=backend, dtype=np.float64,
               **kw)


LAYERS = [
    (rc.LSTM, dict(zoneout=(0.2, 0.1), recurrent_dropout=0.2, weight_dropout=0.3)),
    (rc.LSTM, dict(proj_size=4, peephole=True)),
    (rc.GRU, dict(layer_norm=True, zoneout=0.2)),
    (rc.RNN, dict(nonlinearity="relu", recurrent_dropout=0.1)),
]


@pytest.mark.parametrize("cls, kw", LAYERS, ids=["lstm_regularised", "lstm_proj_peephole", "gru_ln", "rnn"])
def test_a_lean_call_is_the_full_call_bit_for_bit(backend, cls, kw):
    rng = np.random.default_rng(0)
    T, B = 140, 4
    x = rng.standard_normal((T, B, 3))
    lengths = np.array([140, 70, 129, 1])
    full, lean = _layer(cls, backend, **kw), _layer(cls, backend, **kw)
    states = [rng.standard_normal(s.shape) for s in ([np.empty((4, B, full.specs[0].out_size))]
                                                      + ([np.empty((4, B, 6))] if cls is rc.LSTM else []))]
    y_full, finals_full = call(full, x, states, lengths=lengths)
    y_lean, finals_lean = call(lean, x, states, lengths=lengths, memory="lean")
    assert np.array_equal(y_full, y_lean)
    for a, b in zip(finals_full, finals_lean):
        assert np.array_equal(a, b)
    dy = rng.standard_normal(y_full.shape)
    dx_full, d0_full = back(full, dy)
    dx_lean, d0_lean = back(lean, dy)
    assert np.array_equal(dx_full, dx_lean)
    for a, b in zip(d0_full, d0_lean):
        assert np.array_equal(a, b)
    assert full.grads.keys() == lean.grads.keys()
    for name in full.grads:
        assert np.array_equal(full.grads[name], lean.grads[name]), name


def test_lean_in_eval_mode_is_the_eval_call(backend):
    layer = rc.LSTM(3, 5, seed=1, backend=backend).eval()
    x = np.random.default_rng(1).standard_normal((70, 2, 3)).astype(np.float32)
    y, (h, c) = layer(x)
    y_lean, (h_lean, c_lean) = layer(x, memory="lean")
    assert np.array_equal(y, y_lean) and np.array_equal(h, h_lean) and np.array_equal(c, c_lean)


@pytest.mark.parametrize("memory", ["half", "LEAN", None, 1])
def test_a_wrong_memory_is_refused_before_anything_runs(memory):
    layer = rc.GRU(3, 4, seed=2, zoneout=0.3)
    twin = rc.GRU(3, 4, seed=2, zoneout=0.3)
    x = np.ones((5, 2, 3), np.float32)
    with pytest.raises(ValueError, match=r"memory: expected one of \['full', 'lean'\], got"):
        layer(x, memory=memory)
    # nothing drawn, nothing kept: the next call is the twin's first
    with pytest.raises(RuntimeError):
        layer.backward(np.ones((5, 2, 4), np.float32))
    assert np.array_equal(layer(x)[0], twin(x)[0])


def _peak(layer, x, memory):
    """Peak bytes numpy allocates in a training call and its backward, beyond x, y, dy."""
    y, _ = layer(x, memory=memory)
    dy = np.ones_like(y)
    del y
    layer.zero_grad()
    tracemalloc.start()
    try:
        y, _ = layer(x, memory=memory)
        del y
        layer.backward(dy)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_lean_holds_a_fraction_of_the_full_path_memory(backend):
    # T = 4096: 64 segments of 64 steps. Every step's activations (gates, states and
    # their gradients: over 10 H-wide rows a step) dwarf what both paths hold alike (y,
    # dx, x's copies: under 4), so the lean peak is a small part of the full one
    layer = rc.LSTM(8, 32, seed=3, backend=backend)
    x = np.random.default_rng(3).standard_normal((4096, 4, 8)).astype(np.float32)
    full, lean = _peak(layer, x, "full"), _peak(layer, x, "lean")
    assert lean < 0.25 * full, (full, lean)
