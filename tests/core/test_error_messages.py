"""Errors in the project's words (API.md, "Bad input"): a ValueError or TypeError naming the
argument, what was expected and what came; never numpy's or Python's internal wording,
never an AttributeError, IndexError or OverflowError from deep inside. First the cases
issue 10 lists, then a small fuzz of wrong values over the public API."""
import math

import numpy as np
import pytest

import rnncore as rc
from rnncore import functional as F

RAGGED = [[[1, 2]], [[1]]]

NAMED = [  # call, exception, message
    (lambda: rc.LSTM(2, 3)(RAGGED), ValueError, r"^x: expected an array \(nested lists of equal lengths\), got a "
                                                r"ragged or mixed list$"),
    (lambda: rc.GRU(2, 3)(np.zeros((4, 1, 2), np.float32), lengths=[[1, 2], [3]]), ValueError,
     r"^lengths: expected an array"),
    (lambda: rc.LSTM(2, 3, seed="x"), TypeError, r"^seed: expected None or an int >= 0, got 'x'$"),
    (lambda: rc.LSTM(2, 3, seed=-1), ValueError, r"^seed: expected None or an int >= 0, got -1$"),
    (lambda: rc.LSTM(2, 3, seed=1.5), TypeError, r"^seed: expected None or an int >= 0, got 1.5$"),
    (lambda: rc.Linear(2, 3, seed=[1, -2]), ValueError, r"^seed: expected None or an int >= 0, got \[1, -2\]$"),
    (lambda: rc.train.generate(None, [1], 2, seed="x"), TypeError, r"^seed: expected None or an int >= 0"),
    (lambda: rc.LSTM(2, 3).load_state_dict([1, 2]), TypeError,
     r"^load_state_dict: expected a mapping of parameter names to arrays, got list$"),
    (lambda: rc.GRUCell(2, 3).load_state_dict(None), TypeError, r"^load_state_dict: expected a mapping .* NoneType$"),
    (lambda: rc.Sequential(rc.Linear(2, 2)).load_state_dict(None), TypeError, r"^load_state_dict: expected a mapping"),
    (lambda: rc.Tanh().load_state_dict(None), TypeError, r"^load_state_dict: expected a mapping"),
    (lambda: rc.LSTM(2, 3).load_state_dict(rc.LSTM(2, 3).state_dict(), strict="no"), TypeError,
     r"^strict: expected True or False, got 'no'$"),
    (lambda: F.rnn_forward(np.zeros((2, 1, 2)), None, 0.5, np.zeros((3, 3))), ValueError,
     r"^weight_ih: expected a 2-d array, got float of shape \(\)$"),
    (lambda: F.rnn_forward(np.zeros((2, 1, 2)), None, np.zeros((3, 2)), 2.0), ValueError,
     r"^weight_hh: expected a 2-d array, got float of shape \(\)$"),
    (lambda: F.gru_forward(np.zeros((2, 1, 2)), None, None, np.zeros((9, 3))), ValueError,
     r"^weight_ih: expected a 2-d array, got NoneType"),
    (lambda: F.lstm_forward(np.zeros((2, 1, 2)), None, None, np.zeros((12, 2)), np.zeros((12, 3)), weight_hr=1.0),
     ValueError, r"^weight_hr: expected a 2-d array, got float"),
    (lambda: F.jordan_forward(np.zeros((2, 1, 2)), None, np.zeros((3, 2)), np.zeros((3, 2)), 7), ValueError,
     r"^weight_ho: expected a 2-d array, got int"),
    (lambda: F.rnn_forward(np.zeros((2, 1, 2)), None, np.zeros((3, 2)), np.zeros((3, 3)), reverse="yes"), TypeError,
     r"^reverse: expected True or False, got 'yes'$"),
    (lambda: rc.LSTM(2, 3, dtype=None), TypeError, r"^dtype: expected float32 or float64, got None$"),
    (lambda: rc.LSTMCell(2, 3, dtype=None), TypeError, r"^dtype: expected float32 or float64, got None$"),
    (lambda: rc.Embedding(4, 3, dtype=None), TypeError, r"^dtype: expected float32 or float64, got None$"),
    (lambda: rc.Linear(2, 3, bias="yes"), TypeError, r"^bias: expected True or False, got 'yes'$"),
    (lambda: rc.LastStep(batch_first="yes"), TypeError, r"^batch_first: expected True or False, got 'yes'$"),
    (lambda: rc.LSTM(2, 3, num_layers=2 ** 70), ValueError,
     r"^num_layers: expected an int <= 2147483647 \(the largest size the kernels index\)"),
    (lambda: rc.Linear(2 ** 40, 3), ValueError, r"^in_features: expected an int <= 2147483647"),
    (lambda: rc.RNN(2, 3, nonlinearity=np.array(["tanh", "relu"])), ValueError,
     r"^nonlinearity: expected one of \['tanh', 'relu'\]"),
    (lambda: rc.MSELoss(reduction=["mean"]), ValueError, r"^reduction: expected one of \['mean', 'sum'\]"),
    (lambda: rc.CrossEntropyLoss(ignore_index="x"), TypeError, r"^ignore_index: expected an int, got 'x'$"),
    (lambda: rc.CrossEntropyLoss(ignore_index=1.5), TypeError, r"^ignore_index: expected an int, got 1.5$"),
    (lambda: rc.CrossEntropyLoss()(np.zeros((2, 3)), RAGGED), ValueError, r"^target: expected an array"),
    (lambda: rc.MSELoss()(np.zeros(2), RAGGED), ValueError, r"^target: expected an array"),
    (lambda: rc.Embedding(4, 3)(RAGGED), ValueError, r"^indices: expected an array"),
    (lambda: rc.Tanh()(RAGGED), ValueError, r"^x: expected an array"),
    (lambda: rc.optim.Adam(rc.Linear(2, 2), amsgrad="yes"), TypeError, r"^amsgrad: expected True or False"),
    (lambda: rc.optim.SGD(rc.Linear(2, 2), lr=0.1, nesterov="yes"), TypeError, r"^nesterov: expected True or False"),
    (lambda: rc.clip_grad_norm_({"w": 1}, 1.0), TypeError, r"^grads\['w'\]: expected a float array, got int$"),
    (lambda: rc.clip_grad_value_({"w": np.arange(3)}, 1.0), TypeError,
     r"^grads\['w'\]: expected a float array, got int64$"),
    (lambda: rc.clip_grad_norm_({"w": np.ones(2)}, -1.0), ValueError, r"^max_norm: expected a number >= 0, got -1.0$"),
    (lambda: rc.clip_grad_norm_({"w": np.ones(2)}, 1.0, error_if_nonfinite="yes"), TypeError,
     r"^error_if_nonfinite: expected True or False"),
    (lambda: rc.GRU(2, 3).train("no"), TypeError, r"^mode: expected True or False, got 'no'$"),
    (lambda: rc.RNNCell(2, 3)(np.zeros((1, 2), np.float32), check_finite="no"), TypeError,
     r"^check_finite: expected True or False"),
    (lambda: rc.LSTM(2, 3)(np.zeros((4, 1, 2), np.float32), check_finite=None), TypeError,
     r"^check_finite: expected True or False, got None$"),
    (lambda: rc.train.EarlyStopping(min_delta=math.nan), ValueError, r"^min_delta: expected a finite number >= 0"),
    (lambda: rc.train.EarlyStopping().step("x", rc.Linear(1, 1)), TypeError, r"^metric: expected a number, got 'x'$"),
    (lambda: rc.train.minibatches(10, 3, 0), TypeError, r"^rng: expected a numpy.random.Generator"),
    (lambda: rc.keras.reorder_gates(np.zeros(4), None, "ifgo"), TypeError,
     r"^source: expected a string of gate letters"),
]


@pytest.mark.parametrize("call,error,message", NAMED, ids=[m for _, _, m in NAMED])
def test_errors_name_the_argument(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_valid_seeds_and_numpy_scalars_still_work():
    # what numpy's generators take stays accepted; numpy scalars count as numbers
    for seed in (None, 0, 2 ** 70, [1, 2], np.int64(3), np.array([4, 5]), np.random.SeedSequence(6),
                 np.random.default_rng(7)):
        rc.GRU(2, 3, seed=seed)
    np.testing.assert_array_equal(rc.LSTM(2, 3, seed=np.int64(9)).state_dict()["weight_ih_l0"],
                                  rc.LSTM(2, 3, seed=9).state_dict()["weight_ih_l0"])
    assert rc.LSTM(2, 3, num_layers=2, dropout=np.float32(0.5)).dropout == 0.5
    rc.train.EarlyStopping().step(math.nan, rc.Linear(1, 1))  # a diverged run is no improvement, not an error
    assert rc.train.EarlyStopping(min_delta=np.float32(0.5)).min_delta == 0.5


# -- a small fuzz: wrong values into every public argument ---------------------------------

WRONG = {"str": "x", "None": None, "negative": -1, "fraction": 1.5, "ragged": RAGGED, "dict": {"a": 1},
         "nan": math.nan, "huge": 2 ** 70, "object": object(), "matrix": np.zeros((2, 2)), "complex": 1j,
         "bytes": b"x"}
# what an argument of the wrong kind may never answer with: numpy's and Python's internals
INTERNAL = ("inhomogeneous", "truth value of an array", "SeedSequence", "unhashable", "has no attribute",
            "out of range", "Maximum allowed dimension", "object of type", "int() argument", "invalid literal",
            "cannot convert")

X = np.zeros((4, 2, 2), np.float32)
W_IH, W_HH = np.zeros((3, 2), np.float32), np.zeros((3, 3), np.float32)


def trained_gru():
    gru = rc.GRU(2, 3)
    gru(X)
    return gru


def token_model():
    return rc.Sequential(rc.Embedding(5, 3, seed=0), rc.LSTM(3, 4, seed=0), rc.Linear(4, 5, seed=0))


ENTRIES = []  # (label, argument the message names, call of one value)
for cls in (rc.RNN, rc.LSTM, rc.GRU):
    for name in ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout", "bidirectional",
                 "dtype", "seed"):
        ENTRIES.append((f"{cls.__name__}({name})", name,
                        lambda v, cls=cls, name=name: cls(**{"input_size": 2, "hidden_size": 3, name: v})))
for cls in (rc.RNNCell, rc.LSTMCell, rc.GRUCell):
    for name in ("input_size", "hidden_size", "bias", "dtype", "seed"):
        ENTRIES.append((f"{cls.__name__}({name})", name,
                        lambda v, cls=cls, name=name: cls(**{"input_size": 2, "hidden_size": 3, name: v})))
    ENTRIES += [(f"{cls.__name__}()(x)", "x", lambda v, cls=cls: cls(2, 3)(v)),
                (f"{cls.__name__}()(x, state)", ("h0", "hx"), lambda v, cls=cls: cls(2, 3)(np.zeros((2, 2), np.float32),
                                                                                       v))]
for name in ("in_features", "out_features", "bias", "dtype", "seed"):
    ENTRIES.append((f"Linear({name})", name, lambda v, name=name: rc.Linear(**{"in_features": 2, "out_features": 3,
                                                                                name: v})))
for name in ("num_embeddings", "embedding_dim", "dtype", "seed"):
    ENTRIES.append((f"Embedding({name})", name, lambda v, name=name: rc.Embedding(**{"num_embeddings": 4,
                                                                                      "embedding_dim": 3, name: v})))
for name in ("lr", "momentum", "dampening", "weight_decay", "nesterov"):
    ENTRIES.append((f"SGD({name})", name, lambda v, name=name: rc.optim.SGD(rc.Linear(2, 2), **{"lr": 0.1, name: v})))
for name in ("lr", "betas", "eps", "weight_decay", "amsgrad"):
    ENTRIES.append((f"Adam({name})", name, lambda v, name=name: rc.optim.Adam(rc.Linear(2, 2), **{name: v})))
ENTRIES += [
    ("RNN(nonlinearity)", "nonlinearity", lambda v: rc.RNN(2, 3, nonlinearity=v)),
    ("GRU(reset_after)", "reset_after", lambda v: rc.GRU(2, 3, reset_after=v)),
    ("LSTM(proj_size)", "proj_size", lambda v: rc.LSTM(2, 3, proj_size=v)),
    ("LSTM(peephole)", "peephole", lambda v: rc.LSTM(2, 3, peephole=v)),
    ("JordanRNN(output_size)", "output_size", lambda v: rc.JordanRNN(2, 3, v)),
    ("JordanRNN(output_activation)", "output_activation", lambda v: rc.JordanRNN(2, 3, 2, output_activation=v)),
    ("lstm(x)", "x", lambda v: rc.LSTM(2, 3)(v)),
    ("lstm(x, hx)", ("hx", "h0"), lambda v: rc.LSTM(2, 3)(X, v)),
    ("gru(x, h0)", "h0", lambda v: rc.GRU(2, 3)(X, v)),
    ("gru(lengths)", "lengths", lambda v: rc.GRU(2, 3)(X, lengths=v)),
    ("gru(check_finite)", "check_finite", lambda v: rc.GRU(2, 3)(X, check_finite=v)),
    ("gru.backward(dy)", "dy", lambda v: trained_gru().backward(v)),
    ("gru.load_state_dict(mapping)", "load_state_dict", lambda v: rc.GRU(2, 3).load_state_dict(v)),
    ("gru.load_state_dict(strict)", "strict", lambda v: rc.GRU(2, 3).load_state_dict({}, strict=v)),
    ("gru.train(mode)", "mode", lambda v: rc.GRU(2, 3).train(v)),
    ("linear(x)", "x", lambda v: rc.Linear(2, 3)(v)),
    ("embedding(indices)", "indices", lambda v: rc.Embedding(4, 3)(v)),
    ("LastStep(batch_first)", "batch_first", lambda v: rc.LastStep(v)),
    ("MSELoss(reduction)", "reduction", lambda v: rc.MSELoss(v)),
    ("mse(input)", ("input", "target"), lambda v: rc.MSELoss()(v, np.zeros(2))),
    ("mse(target)", "target", lambda v: rc.MSELoss()(np.zeros(2), v)),
    ("mse(mask)", "mask", lambda v: rc.MSELoss()(np.zeros(2), np.zeros(2), v)),
    ("CrossEntropyLoss(reduction)", "reduction", lambda v: rc.CrossEntropyLoss(reduction=v)),
    ("CrossEntropyLoss(ignore_index)", "ignore_index", lambda v: rc.CrossEntropyLoss(ignore_index=v)),
    ("ce(logits)", ("logits", "target"), lambda v: rc.CrossEntropyLoss()(v, np.zeros(2, int))),
    ("ce(target)", "target", lambda v: rc.CrossEntropyLoss()(np.zeros((2, 3)), v)),
    ("clip_grad_norm_(grads)", "grads", lambda v: rc.clip_grad_norm_(v, 1.0)),
    ("clip_grad_norm_(max_norm)", "max_norm", lambda v: rc.clip_grad_norm_({"a": np.ones(2)}, v)),
    ("clip_grad_norm_(norm_type)", "norm_type", lambda v: rc.clip_grad_norm_({"a": np.ones(2)}, 1.0, v)),
    ("clip_grad_norm_(error_if_nonfinite)", "error_if_nonfinite",
     lambda v: rc.clip_grad_norm_({"a": np.ones(2)}, 1.0, 2.0, v)),
    ("clip_grad_value_(grads)", "grads", lambda v: rc.clip_grad_value_(v, 1.0)),
    ("clip_grad_value_(clip_value)", "clip_value", lambda v: rc.clip_grad_value_({"a": np.ones(2)}, v)),
    ("rnn_forward(x)", "x", lambda v: F.rnn_forward(v, None, W_IH, W_HH)),
    ("rnn_forward(h0)", "h0", lambda v: F.rnn_forward(X, v, W_IH, W_HH)),
    ("rnn_forward(weight_ih)", "weight_ih", lambda v: F.rnn_forward(X, None, v, W_HH)),
    ("rnn_forward(weight_hh)", ("weight_hh", "weight_ih"), lambda v: F.rnn_forward(X, None, W_IH, v)),
    ("rnn_forward(nonlinearity)", "nonlinearity", lambda v: F.rnn_forward(X, None, W_IH, W_HH, nonlinearity=v)),
    ("rnn_forward(reverse)", "reverse", lambda v: F.rnn_forward(X, None, W_IH, W_HH, reverse=v)),
    ("rnn_forward(training)", "training", lambda v: F.rnn_forward(X, None, W_IH, W_HH, training=v)),
    ("rnn_forward(lengths)", "lengths", lambda v: F.rnn_forward(X, None, W_IH, W_HH, lengths=v)),
    ("gru_forward(weight_ih)", "weight_ih", lambda v: F.gru_forward(X, None, v, np.zeros((9, 3), np.float32))),
    ("gru_forward(reset_after)", "reset_after",
     lambda v: F.gru_forward(X, None, np.zeros((9, 2), np.float32), np.zeros((9, 3), np.float32), reset_after=v)),
    ("lstm_forward(coupled_input_forget)", "coupled_input_forget",
     lambda v: F.lstm_forward(X, None, None, np.zeros((12, 2), np.float32), np.zeros((12, 3), np.float32),
                              coupled_input_forget=v)),
    ("rnn_backward(ctx)", "ctx", lambda v: F.rnn_backward(v, np.zeros((4, 2, 3), np.float32))),
    ("EarlyStopping(patience)", "patience", lambda v: rc.train.EarlyStopping(patience=v)),
    ("EarlyStopping(min_delta)", "min_delta", lambda v: rc.train.EarlyStopping(min_delta=v)),
    ("minibatches(count)", "count", lambda v: rc.train.minibatches(v, 2, np.random.default_rng(0))),
    ("minibatches(rng)", "rng", lambda v: rc.train.minibatches(4, 2, v)),
    ("generate(seed)", "seed", lambda v: rc.train.generate(token_model(), [1], 1, seed=v)),
    ("generate(temperature)", "temperature", lambda v: rc.train.generate(token_model(), [1], 1, temperature=v)),
    ("keras.load_weights(config)", "config",
     lambda v: rc.keras.load_weights(rc.GRU(2, 3), rc.keras.to_keras_weights(rc.GRU(2, 3)), config=v)),
]


@pytest.mark.parametrize("wrong", WRONG)
@pytest.mark.parametrize("label,argument,call", ENTRIES, ids=[label for label, _, _ in ENTRIES])
def test_wrong_values_are_refused_in_our_words(label, argument, call, wrong):
    """A wrong value is either a legitimate one (accepted) or refused with a ValueError or
    TypeError (KeyError for a mapping's names) whose message names the argument. A string
    and a bare object are never legitimate, so each entry refuses at least those."""
    value = WRONG[wrong]
    names = argument if isinstance(argument, tuple) else (argument,)
    try:
        call(value)
    except (ValueError, TypeError, KeyError) as error:
        message = str(error)
        assert any(f"{name}: " in message or f"{name}[" in message for name in names), \
            f"{label} with {wrong}: {message}"
        assert not any(words in message for words in INTERNAL), f"{label} with {wrong}: {message}"
    else:
        assert wrong not in ("str", "object"), f"{label} accepted {value!r}"
