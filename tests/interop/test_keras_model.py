"""Whole Keras Sequential models onto rnncore Sequentials. The oracle is Keras' math in
NumPy (test_keras.keras_stack, Keras' layouts) over stand-in layers that have only the
two methods rnncore reads, get_config() and get_weights(); Keras itself, where it is
installed, is the second oracle."""
import os

import numpy as np
import pytest

import rnncore as rc
from cases import assert_examples_run
from conftest import assert_close
from test_interop_reliability import fake_keras_layer, keras3_bidirectional, keras3_config
from test_keras import I, T, U, keras_stack, random_keras_weights

B = 3


def keras_recurrent(kind, bidirectional=False, return_sequences=True, input_size=I, **changes):
    """A stand-in Keras SimpleRNN/LSTM/GRU (or its Bidirectional) with random weights."""
    rng = np.random.default_rng(len(kind) + 7 * bidirectional + input_size)
    weights = random_keras_weights(kind, 1, bidirectional, True, changes.get("reset_after", True), rng)
    weights[0] = rng.uniform(-0.6, 0.6, (input_size, weights[0].shape[1]))
    if bidirectional:
        weights[3] = rng.uniform(-0.6, 0.6, (input_size, weights[3].shape[1]))
        config = keras3_bidirectional(kind, return_sequences=return_sequences, **changes)
        return fake_keras_layer("Bidirectional", config, weights)
    config = keras3_config(kind, return_sequences=return_sequences, **changes)
    return fake_keras_layer({"rnn": "SimpleRNN", "lstm": "LSTM", "gru": "GRU"}[kind], config, weights)


def keras_dense(input_size, units, activation="linear", use_bias=True, **changes):
    rng = np.random.default_rng(input_size * units)
    config = {"name": "dense", "trainable": True, "units": units, "activation": activation, "use_bias": use_bias,
              "kernel_initializer": {"class_name": "GlorotUniform", "config": {}}, "bias_initializer": "zeros",
              "kernel_regularizer": None, "bias_regularizer": None, "kernel_constraint": None,
              "bias_constraint": None, "quantization_config": None, **changes}
    weights = [rng.uniform(-0.6, 0.6, (input_size, units))] + ([rng.uniform(-0.6, 0.6, units)] if use_bias else [])
    return fake_keras_layer("Dense", config, weights)


def keras_activation(activation):
    return fake_keras_layer("Activation", {"name": "activation", "trainable": True, "activation": activation}, [])


class KerasSequential:
    """What rnncore reads of a Keras Sequential: its `.layers`."""

    def __init__(self, layers):
        self.layers = layers


def state(model):
    return {name: value.copy() for name, value in model.state_dict().items()}


def assert_unchanged(model, before):
    after = model.state_dict()
    assert after.keys() == before.keys()
    for name, value in before.items():
        np.testing.assert_array_equal(after[name], value, err_msg=name)


ACT = {"linear": lambda a: a, "tanh": np.tanh, "relu": lambda a: np.maximum(a, 0),
       "sigmoid": lambda a: 1 / (1 + np.exp(-a))}


def keras_forward(layers, x):
    """Keras' forward through stand-in layers, time-major x (T, B, I)."""
    for layer in layers:
        config, weights = layer.get_config(), layer.get_weights()
        if "layer" in config:
            inner = config["layer"]["config"]
            kind = {"SimpleRNN": "rnn", "LSTM": "lstm", "GRU": "gru"}[config["layer"]["class_name"]]
            x = keras_stack(kind, x, weights, 1, True, True, inner["activation"], inner.get("reset_after", True))[0]
            x = x if inner["return_sequences"] else x[-1]
        elif type(layer).__name__ in ("SimpleRNN", "LSTM", "GRU"):
            kind = {"SimpleRNN": "rnn", "LSTM": "lstm", "GRU": "gru"}[type(layer).__name__]
            x = keras_stack(kind, x, weights, 1, False, True, config["activation"], config.get("reset_after", True))[0]
            x = x if config["return_sequences"] else x[-1]
        elif type(layer).__name__ == "Dense":
            x = ACT[config["activation"]](x @ weights[0] + (weights[1] if config["use_bias"] else 0))
        else:
            x = ACT[config["activation"]](x)
    return x


def model_pair(name):
    """(Keras stand-in layers, the rnncore Sequential computing the same) of each case."""
    f64 = dict(dtype=np.float64, seed=0)
    if name == "lstm-laststep-dense":
        return ([keras_recurrent("lstm", return_sequences=False), keras_dense(U, 3)],
                rc.Sequential(rc.LSTM(I, U, **f64), rc.LastStep(), rc.Linear(U, 3, **f64)))
    if name == "bigru-lstm-dense-tanh":
        return ([keras_recurrent("gru", bidirectional=True), keras_recurrent("lstm", return_sequences=False,
                                                                            input_size=2 * U),
                 keras_dense(U, 2, "tanh")],
                rc.Sequential(rc.GRU(I, U, bidirectional=True, **f64), rc.LSTM(2 * U, U, **f64), rc.LastStep(),
                              rc.Linear(U, 2, **f64), rc.Tanh()))
    if name == "stacked-rnn-activation-layers":
        # two Keras layers in a row make one rnncore stack; Activation layers make modules
        return ([keras_recurrent("rnn", activation="relu"), keras_recurrent("rnn", activation="relu", input_size=U),
                 keras_dense(U, U, use_bias=False), keras_activation("sigmoid"), keras_activation("linear"),
                 keras_dense(U, 1, "relu")],
                rc.Sequential(rc.RNN(I, U, num_layers=2, nonlinearity="relu", **f64),
                              rc.Linear(U, U, bias=False, **f64), rc.Sigmoid(), rc.Linear(U, 1, **f64), rc.ReLU()))
    assert name == "bigru-stack-reset-before"
    return ([keras_recurrent("gru", bidirectional=True, reset_after=False),
             keras_recurrent("gru", bidirectional=True, reset_after=False, return_sequences=False,
                             input_size=2 * U), keras_dense(2 * U, 2, "sigmoid")],
            rc.Sequential(rc.GRU(I, U, num_layers=2, bidirectional=True, reset_after=False, **f64), rc.LastStep(),
                          rc.Linear(2 * U, 2, **f64), rc.Sigmoid()))


CASES = ["lstm-laststep-dense", "bigru-lstm-dense-tanh", "stacked-rnn-activation-layers", "bigru-stack-reset-before"]


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("form", ["Sequential", "list of layers"])
def test_model_computes_as_keras_does(name, form):
    layers, model = model_pair(name)
    keras_model = KerasSequential(layers) if form == "Sequential" else layers
    assert rc.keras.load_model_weights(model, keras_model) is None
    x = np.random.default_rng(5).standard_normal((T, B, I))
    # float64 on both sides, differing only in summation order
    assert_close(model(x)[0], keras_forward(layers, x), what=name)


def test_input_layer_pairs_with_nothing_and_batch_first_laststep_follows_its_layer():
    layers, _ = model_pair("lstm-laststep-dense")
    model = rc.Sequential(rc.LSTM(I, U, batch_first=True, dtype=np.float64), rc.LastStep(batch_first=True),
                          rc.Linear(U, 3, dtype=np.float64))
    rc.keras.load_model_weights(model, [fake_keras_layer("InputLayer", {"batch_shape": (None, T, I)}, [])] + layers)
    x = np.random.default_rng(5).standard_normal((T, B, I))
    assert_close(model(x.transpose(1, 0, 2))[0], keras_forward(layers, x), what="batch_first")


# -- refusals: each names the Keras layer's and the module's index and what differs, and
#    changes nothing (all or nothing: the modules checked before a failing one too) ------

def refuse(model, keras_layers, error, match):
    before = state(model)
    with pytest.raises(error, match=match):
        rc.keras.load_model_weights(model, keras_layers)
    assert_unchanged(model, before)


def f64(cls, *args, **kw):
    return cls(*args, dtype=np.float64, seed=1, **kw)


def test_refuses_what_is_not_a_sequential_or_keras_layers():
    layers, model = model_pair("lstm-laststep-dense")
    with pytest.raises(TypeError, match="model: expected an rnncore Sequential, got LSTM"):
        rc.keras.load_model_weights(model[0], layers)
    refuse(model, [np.zeros(3)], TypeError, r"keras_model: expected a Keras Sequential or a list of Keras layers")
    refuse(model, KerasSequential(None), TypeError, r"keras_model: .*got KerasSequential")


@pytest.mark.parametrize("keras_activation_name, modules, match", [
    ("relu", [rc.Tanh()], r"model\[2\] \(Linear\) <- keras_model.layers\[1\] \(Dense 'dense'\): got "
                          r"activation='relu', so the next module must be an rnncore ReLU, but it is a Tanh"),
    ("tanh", [], r"model\[2\] \(Linear\) <- keras_model.layers\[1\] \(Dense 'dense'\): got activation='tanh', "
                 r"so the next module must be an rnncore Tanh, but the model ends there"),
    ("softmax", [], r"model\[2\] \(Linear\) <- keras_model[^:]*: got activation='softmax'; rnncore has Tanh, "
                    r"ReLU, Sigmoid modules"),
    ("linear", [rc.Sigmoid()], r"model\[3:\] \(Sigmoid\): got no Keras layer for these modules"),
])
def test_refuses_a_dense_activation_that_differs(keras_activation_name, modules, match):
    model = rc.Sequential(f64(rc.LSTM, I, U), rc.LastStep(), f64(rc.Linear, U, 2), *modules)
    layers = [keras_recurrent("lstm", return_sequences=False), keras_dense(U, 2, keras_activation_name)]
    refuse(model, layers, ValueError, match)


def test_refuses_an_activation_layer_that_differs():
    model = rc.Sequential(f64(rc.Linear, I, 2), rc.Tanh())
    refuse(model, [keras_dense(I, 2), keras_activation("relu")], ValueError,
           r"model\[1\] \(Tanh\) <- keras_model.layers\[1\] \(Activation 'activation'\): got activation='relu', "
           r"so the next module must be an rnncore ReLU, but it is a Tanh")
    refuse(model, [keras_dense(I, 2), fake_keras_layer("Activation", {"activation": "tanh", "alpha": 1}, [])],
           ValueError, r"model\[1\] \(Tanh\) <- keras_model.layers\[1\] \(Activation\): got keys \['alpha'\]")


def test_refuses_recurrent_options_that_differ():
    model = rc.Sequential(f64(rc.RNN, I, U), rc.LastStep(), f64(rc.Linear, U, 2))
    refuse(model, [keras_recurrent("rnn", return_sequences=False, activation="relu"), keras_dense(U, 2)], ValueError,
           r"^load_model_weights: model\[0\] \(RNN\) <- keras_model.layers\[0\] \(SimpleRNN 'simple_rnn'\): got "
           r"activation='relu', but this layer has nonlinearity='tanh'")
    model = rc.Sequential(f64(rc.LSTM, I, U), rc.LastStep(), f64(rc.Linear, U, 2))
    refuse(model, [keras_recurrent("lstm", return_sequences=False, recurrent_activation="hard_sigmoid"),
                   keras_dense(U, 2)], ValueError,
           r"model\[0\] \(LSTM\) <- keras_model.*recurrent_activation='hard_sigmoid'")
    refuse(model, [keras_recurrent("lstm", return_sequences=False, units=U + 1), keras_dense(U, 2)], ValueError,
           rf"model\[0\] \(LSTM\) <- keras_model.*units={U + 1}, but this layer has hidden_size={U}")
    gru = rc.Sequential(f64(rc.GRU, I, U, bidirectional=True))
    refuse(gru, [keras_recurrent("gru", bidirectional=True, merge_mode="sum")], ValueError,
           r"model\[0\] \(GRU\) <- keras_model.layers\[0\] \(Bidirectional 'bidirectional_gru'\).*merge_mode='sum'")
    refuse(gru, [keras_recurrent("gru")], ValueError, r"got a Keras GRU, but this layer has bidirectional=True")


def test_refuses_a_return_sequences_mismatch():
    refuse(rc.Sequential(f64(rc.LSTM, I, U), f64(rc.Linear, U, 2)),
           [keras_recurrent("lstm", return_sequences=False), keras_dense(U, 2)], ValueError,
           r"model\[0\] \(LSTM\) <- keras_model.layers\[0\] \(LSTM 'lstm'\): got return_sequences=False, so "
           r"model\[1\] must be a LastStep, but it is a Linear")
    refuse(rc.Sequential(f64(rc.LSTM, I, U)), [keras_recurrent("lstm", return_sequences=False)], ValueError,
           r"return_sequences=False, so model\[1\] must be a LastStep, but the model ends there")
    refuse(rc.Sequential(f64(rc.LSTM, I, U), rc.LastStep(), f64(rc.Linear, U, 2)),
           [keras_recurrent("lstm", return_sequences=True), keras_dense(U, 2)], ValueError,
           r"model\[0\] \(LSTM\) <- keras_model[^:]*: got return_sequences=True, but model\[1\] is a LastStep, "
           r"which keeps the last step only")
    # a config without the key reads as Keras' default, return_sequences=False
    lstm = keras_recurrent("lstm")
    partial = {key: value for key, value in lstm.get_config().items() if key != "return_sequences"}
    refuse(rc.Sequential(f64(rc.LSTM, I, U)), [fake_keras_layer("LSTM", partial, lstm.get_weights())], ValueError,
           r"return_sequences=False, so model\[1\] must be a LastStep")
    # inside a stack the next layer reads every step
    refuse(rc.Sequential(f64(rc.GRU, I, U, num_layers=2)),
           [keras_recurrent("gru", return_sequences=False), keras_recurrent("gru", input_size=U)], ValueError,
           r"model\[0\] \(GRU\) <- keras_model.layers\[0\] \(GRU 'gru'\): got return_sequences=False in layer 0 "
           r"of 2")
    refuse(rc.Sequential(f64(rc.LSTM, I, U, batch_first=True), rc.LastStep()),
           [keras_recurrent("lstm", return_sequences=False)], ValueError,
           r"model\[1\] \(LastStep\): has batch_first=False, but model\[0\] has batch_first=True")


def test_refuses_layers_that_do_not_pair():
    model = rc.Sequential(f64(rc.LSTM, I, U), f64(rc.Linear, U, 2))
    dense = keras_dense(U, 2)
    refuse(model, [keras_recurrent("gru"), dense], ValueError,
           r"model\[0\] \(LSTM\) <- keras_model[^:]*: got a Keras GRU, but this layer's Keras counterpart is a LSTM")
    refuse(model, [dense, dense], ValueError, r"model\[0\] \(LSTM\) <- keras_model.layers\[0\] \(Dense 'dense'\): "
                                              r"got a Keras Dense, but the module there is not an rnncore Linear")
    refuse(model, [keras_recurrent("lstm"), keras_recurrent("lstm", input_size=U)], ValueError,
           r"model\[1\] \(Linear\) <- keras_model.layers\[1\] \(LSTM 'lstm'\): got a Keras LSTM, but the module "
           r"there is not an rnncore RNN, LSTM or GRU")
    refuse(model, [keras_recurrent("lstm"), fake_keras_layer("Dropout", {"rate": 0.5}, [])], ValueError,
           r"model\[1\] \(Linear\) <- keras_model.layers\[1\] \(Dropout\): got a Keras Dropout; rnncore maps SimpleRNN")
    refuse(model, [keras_recurrent("lstm"), dense, keras_dense(2, 2)], ValueError,
           r"layers\[2\] \(Dense 'dense'\): got a Keras Dense, but the model ends at model\[1\]")
    refuse(model, [keras_recurrent("lstm")], ValueError, r"model\[1:\] \(Linear\): got no Keras layer")
    refuse(rc.Sequential(f64(rc.LSTM, I, U, num_layers=2)), [keras_recurrent("lstm"), dense], ValueError,
           r"model\[0\] \(LSTM\) <- keras_model[^:]*: this layer has num_layers=2, so it takes 2 Keras recurrent "
           r"layers in a row, but keras_model.layers\[0:2\] are \['LSTM', 'Dense'\]")
    refuse(rc.Sequential(f64(rc.JordanRNN, I, U, 2)), [keras_recurrent("rnn")], ValueError, "Keras has no Jordan")

    class MyLinear(rc.Linear):
        pass
    refuse(rc.Sequential(MyLinear(I, 2)), [keras_dense(I, 2)], ValueError, "not an rnncore Linear")


def test_refuses_a_dense_that_differs():
    model = rc.Sequential(f64(rc.Linear, I, 2))
    refuse(model, [keras_dense(I, 3)], ValueError,
           r"model\[0\] \(Linear\) <- keras_model.layers\[0\] \(Dense 'dense'\): got units=3, but this Linear has "
           r"out_features=2; kernel of shape \(5, 3\), but this Linear takes \(5, 2\); bias of shape")
    refuse(model, [keras_dense(I + 1, 2)], ValueError, r"kernel of shape \(6, 2\), but this Linear takes \(5, 2\)")
    refuse(model, [keras_dense(I, 2, use_bias=False)], ValueError,
           r"use_bias=False, but this Linear has bias=True; 1 arrays, but this Linear takes 2 \(kernel, bias\)")
    refuse(model, [keras_dense(I, 2, lora_rank=2, lora_alpha=2)], ValueError,
           r"keys \['lora_alpha', 'lora_rank'\], which rnncore cannot be sure it reproduces")
    refuse(model, [keras_dense(I, 2, quantization_config={"mode": "int8"})], ValueError,
           r"quantization_config=\{'mode': 'int8'\}; rnncore's Linear is not quantised")


def test_a_late_refusal_changes_no_module_before_it():
    layers, model = model_pair("bigru-lstm-dense-tanh")
    layers[-1] = keras_dense(U, 2, "relu")  # every module but the last activation pairs
    refuse(model, layers, ValueError, r"model\[3\] \(Linear\) <- keras_model.layers\[2\] \(Dense 'dense'\): "
                                      r"got activation='relu', so the next module must be an rnncore ReLU")
    layers[0] = fake_keras_layer("Bidirectional", layers[0].get_config(), layers[0].get_weights()[:-1])
    refuse(model, layers, ValueError, r"model\[0\] \(GRU\) <- keras_model[^:]*: expected 6 arrays")


def test_docstring_has_sections_and_examples_that_run():
    doc = rc.keras.load_model_weights.__doc__
    for section in ("Parameters", "Returns", "Raises", "Examples"):
        assert f"{section}\n    {'-' * len(section)}" in doc, section
    assert_examples_run(rc.keras.load_model_weights)


# -- Keras 3 itself, where it is installed (`pip install rnncore[keras]`) --------------------

def real_keras():
    # the torch backend: the test extras install torch already, so Keras adds no framework
    pytest.importorskip("torch")
    os.environ.setdefault("KERAS_BACKEND", "torch")
    return pytest.importorskip("keras")


def real_cases(keras):
    layers = keras.layers
    yield ("lstm-dense",
           [layers.LSTM(U, return_sequences=False), layers.Dense(3)],
           lambda: rc.Sequential(rc.LSTM(I, U, batch_first=True), rc.LastStep(batch_first=True), rc.Linear(U, 3)))
    yield ("bigru-lstm-dense",
           [layers.Bidirectional(layers.GRU(U, return_sequences=True)), layers.LSTM(U), layers.Dense(2, "tanh")],
           lambda: rc.Sequential(rc.GRU(I, U, bidirectional=True, batch_first=True),
                                 rc.LSTM(2 * U, U, batch_first=True), rc.LastStep(batch_first=True),
                                 rc.Linear(U, 2), rc.Tanh()))
    yield ("rnn-stack-activation",
           [layers.SimpleRNN(U, activation="relu", return_sequences=True),
            layers.SimpleRNN(U, activation="relu", return_sequences=True),
            layers.Dense(U), layers.Activation("sigmoid"), layers.Dense(1)],
           lambda: rc.Sequential(rc.RNN(I, U, num_layers=2, nonlinearity="relu", batch_first=True),
                                 rc.Linear(U, U), rc.Sigmoid(), rc.Linear(U, 1)))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Keras' own NumPy 2 copy= notices
@pytest.mark.parametrize("index", range(3))
def test_matches_a_real_keras_model(index):
    keras = real_keras()
    name, keras_layers, build = list(real_cases(keras))[index]
    keras_model = keras.Sequential([keras.Input((T, I))] + keras_layers)
    rng = np.random.default_rng(index)
    keras_model.set_weights([rng.uniform(-0.6, 0.6, w.shape).astype(np.float32) for w in keras_model.get_weights()])
    x = rng.standard_normal((B, T, I)).astype(np.float32)
    expected = keras.ops.convert_to_numpy(keras_model(x))

    model = build()
    rc.keras.load_model_weights(model, keras_model)
    # float32 on both sides, in different operation orders
    assert_close(model(x)[0], expected, rtol=2e-5, what=name)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_refuses_a_real_keras_model_that_differs():
    keras = real_keras()
    keras_model = keras.Sequential([keras.Input((T, I)), keras.layers.LSTM(U), keras.layers.Dense(3)])
    model = rc.Sequential(rc.LSTM(I, U, batch_first=True), rc.Linear(U, 3))
    refuse(model, keras_model, ValueError, r"model\[0\] \(LSTM\) <- keras_model.layers\[0\] \(LSTM 'lstm\w*'\): got "
                                           r"return_sequences=False, so model\[1\] must be a LastStep")
