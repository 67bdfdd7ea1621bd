"""Keras weights in and out. The oracle is Keras' own cell math written below in NumPy
with Keras' layouts (kernel (I, G*U) applied as x @ kernel, gates i, f, c, o and z, r, h,
Keras' biases), run over a stack of (optionally Bidirectional) layers the way Keras runs
it; Keras itself is a second oracle where it is installed."""
import os

import numpy as np
import pytest
from scipy.special import expit as sigmoid

import rnncore as rc
from rnncore.keras import keras_state_dict, reorder_gates, to_keras_weights

from conftest import assert_close

T, B, I, U = 6, 3, 5, 4


# -- Keras' cells, one step each, in Keras' layouts ---------------------------------

def keras_simple_rnn(x, state, kernel, recurrent, bias, activation):
    (h,) = state
    a = x @ kernel + h @ recurrent + (0 if bias is None else bias)
    h = np.tanh(a) if activation == "tanh" else np.maximum(a, 0)
    return (h,)


def keras_lstm(x, state, kernel, recurrent, bias, activation):
    h, c = state
    z = x @ kernel + h @ recurrent + (0 if bias is None else bias)
    z_i, z_f, z_c, z_o = np.split(z, 4, axis=-1)
    c = sigmoid(z_f) * c + sigmoid(z_i) * np.tanh(z_c)
    return sigmoid(z_o) * np.tanh(c), c


def keras_gru(x, state, kernel, recurrent, bias, activation, reset_after):
    (h,) = state
    K_z, K_r, K_h = np.split(kernel, 3, axis=-1)
    R_z, R_r, R_h = np.split(recurrent, 3, axis=-1)
    if bias is None:
        b_in = b_rec = np.zeros(3 * U)
    elif reset_after:
        b_in, b_rec = bias
    else:
        b_in, b_rec = bias, np.zeros(3 * U)
    bi_z, bi_r, bi_h = np.split(b_in, 3)
    br_z, br_r, br_h = np.split(b_rec, 3)
    z = sigmoid(x @ K_z + bi_z + h @ R_z + br_z)
    r = sigmoid(x @ K_r + bi_r + h @ R_r + br_r)
    if reset_after:
        hh = np.tanh(x @ K_h + bi_h + r * (h @ R_h + br_h))
    else:
        hh = np.tanh(x @ K_h + bi_h + (r * h) @ R_h)
    return (z * h + (1 - z) * hh,)


def keras_stack(kind, x, weights, num_layers, bidirectional, bias, activation="tanh", reset_after=True):
    """Keras' forward over a stack of layers, time-major x (T, B, I): (y, final states)."""
    step = {"rnn": keras_simple_rnn, "lstm": keras_lstm,
            "gru": lambda *a: keras_gru(*a, reset_after=reset_after)}[kind]
    per_set = 3 if bias else 2
    sets = [weights[n:n + per_set] for n in range(0, len(weights), per_set)]
    D = 2 if bidirectional else 1
    finals = []
    for k in range(num_layers):
        outputs = []
        for d in range(D):
            kernel, recurrent, b = (sets[k * D + d] + [None])[:3]
            state = tuple(np.zeros((x.shape[1], U)) for _ in range(2 if kind == "lstm" else 1))
            ys = []
            # go_backwards: the backward layer reads the sequence reversed, and the
            # Bidirectional wrapper reverses its outputs back before concatenating
            for t in (reversed(range(len(x))) if d else range(len(x))):
                state = step(x[t], state, kernel, recurrent, b, activation)
                ys.append(state[0])
            outputs.append(np.stack(ys[::-1] if d else ys))
            finals.append(state)
        x = np.concatenate(outputs, axis=-1)
    return x, finals


def random_keras_weights(kind, num_layers, bidirectional, bias, reset_after, rng):
    G = {"rnn": 1, "lstm": 4, "gru": 3}[kind]
    D = 2 if bidirectional else 1
    weights = []
    for k in range(num_layers):
        width = I if k == 0 else D * U
        for _ in range(D):
            weights += [rng.uniform(-0.6, 0.6, (width, G * U)), rng.uniform(-0.6, 0.6, (U, G * U))]
            if bias:
                shape = (2, G * U) if kind == "gru" and reset_after else (G * U,)
                weights.append(rng.uniform(-0.6, 0.6, shape))
    return weights


def make_layer(kind, num_layers, bidirectional, bias, activation="tanh", reset_after=True,
               dtype=np.float64, **kw):
    common = dict(num_layers=num_layers, bidirectional=bidirectional, bias=bias, dtype=dtype, seed=0, **kw)
    if kind == "rnn":
        return rc.RNN(I, U, nonlinearity=activation, **common)
    if kind == "lstm":
        return rc.LSTM(I, U, **common)
    return rc.GRU(I, U, reset_after=reset_after, **common)


VARIANTS = [  # kind, activation, reset_after
    ("rnn", "tanh", True), ("rnn", "relu", True), ("lstm", "tanh", True),
    ("gru", "tanh", True), ("gru", "tanh", False)]
STRUCTURES = [  # num_layers, bidirectional, bias
    (1, False, True), (2, True, True), (1, True, False), (2, False, False)]


@pytest.mark.parametrize("num_layers,bidirectional,bias", STRUCTURES)
@pytest.mark.parametrize("kind,activation,reset_after", VARIANTS)
def test_matches_keras_formulas(kind, activation, reset_after, num_layers, bidirectional, bias):
    rng = np.random.default_rng(1)
    weights = random_keras_weights(kind, num_layers, bidirectional, bias, reset_after, rng)
    x = rng.standard_normal((T, B, I))
    expected_y, finals = keras_stack(kind, x, weights, num_layers, bidirectional, bias, activation, reset_after)

    layer = make_layer(kind, num_layers, bidirectional, bias, activation, reset_after)
    if num_layers == 1 and not bidirectional:
        rc.keras.load_weights(layer, *weights)  # the plain (kernel, recurrent_kernel, bias) form
    else:
        rc.keras.load_weights(layer, weights)
    y, h_n = layer(x)
    if kind == "lstm":
        h_n, c_n = h_n
        assert_close(c_n, np.stack([s[1] for s in finals]), what="c_n")
    # float64 throughout: the two sides differ only in summation order (1e-10, conftest)
    assert_close(y, expected_y, what="y")
    assert_close(h_n, np.stack([s[0] for s in finals]), what="h_n")


@pytest.mark.parametrize("kind,activation,reset_after", VARIANTS)
def test_to_keras_weights_is_the_inverse(kind, activation, reset_after):
    layer = make_layer(kind, 2, True, True, activation, reset_after)
    weights = to_keras_weights(layer)
    x = np.random.default_rng(2).standard_normal((T, B, I))
    expected_y, _ = keras_stack(kind, x, weights, 2, True, True, activation, reset_after)
    assert_close(layer(x)[0], expected_y, what="y")
    again = make_layer(kind, 2, True, True, activation, reset_after)
    rc.keras.load_weights(again, weights)
    for name, value in layer.state_dict().items():
        if name.startswith("weight") or (kind == "gru" and reset_after):
            np.testing.assert_array_equal(again.state_dict()[name], value, err_msg=name)
    assert_close(again(x)[0], layer(x)[0], what="y after the round trip")


def test_reorder_gates_moves_blocks_and_fills_missing_gates():
    blocks = np.repeat(np.arange(4.0), 2)[:, None] * np.ones((1, 3))  # blocks 0,1,2,3 as gates i,f,g,o
    out = reorder_gates(blocks, "ifgo", "iofg")
    np.testing.assert_array_equal(out[:, 0], [0, 0, 3, 3, 1, 1, 2, 2])
    out = reorder_gates(blocks[[0, 1, 4, 5, 6, 7]], "igo", "iofg")  # CIFG i, g, o into ONNX's 4 gates
    np.testing.assert_array_equal(out[:, 0], [0, 0, 3, 3, 0, 0, 2, 2])
    assert out.shape == (8, 3)
    np.testing.assert_array_equal(reorder_gates(out, "iofg", "igo")[:, 0], [0, 0, 2, 2, 3, 3])
    with pytest.raises(ValueError, match="multiple of 4"):
        reorder_gates(np.zeros((7, 2)), "ifgo", "iofg")


# -- refusals -------------------------------------------------------------------------

def gru_weights(reset_after):
    return random_keras_weights("gru", 1, False, True, reset_after, np.random.default_rng(0))


@pytest.mark.parametrize("layer_reset_after", [True, False])
def test_gru_variant_mismatch_is_named(layer_reset_after):
    layer = make_layer("gru", 1, False, True, reset_after=layer_reset_after)
    before = layer.state_dict()
    with pytest.raises(ValueError, match=f"reset_after={not layer_reset_after}.*but this layer has "
                                         f"reset_after={layer_reset_after}"):
        rc.keras.load_weights(layer, gru_weights(not layer_reset_after))
    for name, value in layer.state_dict().items():
        np.testing.assert_array_equal(value, before[name])


def test_wrong_count_shape_dtype_and_kind():
    layer = make_layer("lstm", 2, True, True)
    weights = random_keras_weights("lstm", 2, True, True, True, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"expected 12 arrays .*2 layer\(s\) x 2 direction\(s\).*got 11"):
        rc.keras.load_weights(layer, weights[:-1])
    bad = list(weights)
    bad[6] = bad[6][:, :-4]  # layer 1 forward kernel, one gate short
    with pytest.raises(ValueError, match=r"weights\[6\] \(layer 1 forward kernel\): expected shape \(8, 16\), "
                                         r"got \(8, 12\)"):
        rc.keras.load_weights(layer, bad)
    bad = list(weights)
    bad[5] = bad[5].astype(complex)
    with pytest.raises(TypeError, match=r"weights\[5\] \(layer 0 backward bias\).*complex"):
        rc.keras.load_weights(layer, bad)
    with pytest.raises(ValueError, match="no Jordan"):
        rc.keras.load_weights(rc.JordanRNN(I, U, 2), weights[:3])
    with pytest.raises(ValueError, match="no peephole, coupled_input_forget"):
        rc.keras.load_weights(make_layer("lstm", 1, False, True, peephole=True, coupled_input_forget=True), weights[:3])
    with pytest.raises(ValueError, match="no proj_size"):
        to_keras_weights(make_layer("lstm", 1, False, True, proj_size=2))
    with pytest.raises(TypeError, match="expected an rnncore RNN, LSTM or GRU layer"):
        keras_state_dict(rc.LSTMCell(I, U), *weights[:3])


# -- Keras itself, where it installs (a torch backend needs no TensorFlow) ----------------

@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Keras' own NumPy 2 copy= notices
@pytest.mark.parametrize("kind,reset_after", [("rnn", True), ("lstm", True), ("gru", True), ("gru", False)])
def test_matches_keras_itself(kind, reset_after):
    pytest.importorskip("torch")
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    cell = {"rnn": lambda: keras.layers.SimpleRNN(U, return_sequences=True),
            "lstm": lambda: keras.layers.LSTM(U, return_sequences=True),
            "gru": lambda: keras.layers.GRU(U, return_sequences=True, reset_after=reset_after)}[kind]
    model = keras.Sequential([keras.Input((T, I)), keras.layers.Bidirectional(cell()),
                              keras.layers.Bidirectional(cell())])
    rng = np.random.default_rng(3)
    model.set_weights([rng.uniform(-0.6, 0.6, w.shape).astype(np.float32) for w in model.get_weights()])
    x = rng.standard_normal((B, T, I)).astype(np.float32)
    expected = keras.ops.convert_to_numpy(model(x))

    layer = make_layer(kind, 2, True, True, reset_after=reset_after, dtype=np.float32, batch_first=True)
    rc.keras.load_weights(layer, model.get_weights())
    # float32 on both sides with different operation orders: the project's 1e-5
    assert_close(layer(x)[0], expected, what="y")
