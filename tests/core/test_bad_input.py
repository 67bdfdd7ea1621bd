"""Bad input (API.md, "Bad input"): every wrong shape, dtype, length, size or state is a
ValueError or TypeError raised before any compute, whose message names the argument,
and the object's parameters, gradients and saved context are left exactly as they were
(compared bit for bit and by identity, since nothing may have been written). Also: the
errors of constructors, load_state_dict, backends, threads, clipping and the functional
API, and that non-contiguous and Fortran-order inputs are accepted with the same
results (bit for bit: the layer copies them to C order before any kernel sees them).
"""
import re
import types

import numpy as np
import pytest

import rnncore as rc

T, B, I, H = 4, 2, 3, 4
# An argument of the wrong Python type may fairly be either error; a bad value is a ValueError.
WRONG_TYPE = (ValueError, TypeError)
LAYERS = {
    "rnn": lambda **kw: rc.RNN(I, H, num_layers=2, bidirectional=True, **kw),
    "lstm": lambda **kw: rc.LSTM(I, H, num_layers=2, bidirectional=True, **kw),
    "gru": lambda **kw: rc.GRU(I, H, num_layers=2, bidirectional=True, **kw),
    "jordan": lambda **kw: rc.JordanRNN(I, H, output_size=2, **kw),
}
CELLS = {
    "rnn_cell": lambda **kw: rc.RNNCell(I, H, **kw),
    "lstm_cell": lambda **kw: rc.LSTMCell(I, H, **kw),
    "gru_cell": lambda **kw: rc.GRUCell(I, H, **kw),
}


def is_lstm(obj):
    return isinstance(obj, (rc.LSTM, rc.LSTMCell))


def good_inputs(layer, dtype, seed=0):
    """Valid x, states (h0[, c0]) and upstream gradients for `layer`."""
    rng = np.random.default_rng(seed)
    rows = getattr(layer, "num_directions", 1) * layer.num_layers
    widths = layer.specs[0].state_sizes
    g = types.SimpleNamespace()
    g.x = rng.standard_normal((T, B, I)).astype(dtype)
    g.states = [rng.standard_normal((rows, B, w)).astype(dtype) for w in widths]
    g.dy = rng.standard_normal((T, B, layer.output_width)).astype(dtype)
    g.dstates = [rng.standard_normal(s.shape).astype(dtype) for s in g.states]
    return g


def forward(layer, x, states=None, **kw):
    """Call any layer with a list of states (an LSTM gets them as its pair hx)."""
    if states is None:
        return layer(x, **kw)
    return layer(x, tuple(states) if is_lstm(layer) else states[0], **kw)


def backward(layer, dy, dstates=None):
    if dstates is None:
        return layer.backward(dy)
    return layer.backward(dy, tuple(dstates) if is_lstm(layer) else dstates[0])


def trained(kind, dtype, backend):
    """A layer after a valid training forward and backward: nonzero grads, a saved context."""
    layer = LAYERS[kind](dtype=dtype, seed=0, backend=backend)
    g = good_inputs(layer, dtype)
    forward(layer, g.x, g.states)
    backward(layer, g.dy, g.dstates)
    forward(layer, g.x, g.states)
    return layer, g


def snapshot(obj):
    saved = obj._saved
    return dict(params=obj.state_dict(), grads={k: v.copy() for k, v in obj.grads.items()},
                saved=saved, saved_items=None if saved is None else dict(saved))


def assert_unchanged(obj, before):
    after = obj.state_dict()
    assert after.keys() == before["params"].keys()
    for name, value in before["params"].items():
        np.testing.assert_array_equal(after[name], value, err_msg=name)
    for name, value in before["grads"].items():
        np.testing.assert_array_equal(obj.grads[name], value, err_msg="grad " + name)
    assert obj._saved is before["saved"]
    if before["saved"] is not None:
        assert obj._saved.keys() == before["saved_items"].keys()
        for key, value in before["saved_items"].items():
            assert obj._saved[key] is value, key


def assert_rejected(obj, call, error, name):
    """`call()` raises `error` naming `name` and leaves `obj` untouched."""
    before = snapshot(obj)
    with pytest.raises(error, match=rf"(?<![\w]){re.escape(name)}(?![\w])"):
        call()
    assert_unchanged(obj, before)


def with_state(g, index, value):
    states = list(g.states)
    states[index] = value
    return states


def poisoned(array, value):
    """A copy of `array` with one element set to `value` (NaN or Inf)."""
    out = array.copy()
    out.reshape(-1)[out.size // 2] = value
    return out


def other_float(dtype):
    return np.float32 if dtype == np.float64 else np.float64


def state_name(layer):
    return "y0" if isinstance(layer, rc.JordanRNN) else "h0"


# (id, kinds it applies to, call(layer, g) with one bad argument, error, argument named)
FORWARD_CASES = [
    ("x_1d", None, lambda l, g: forward(l, g.x[0, 0]), ValueError, "x"),
    ("x_4d", None, lambda l, g: forward(l, g.x[None]), ValueError, "x"),
    ("x_input_size", None, lambda l, g: forward(l, np.concatenate([g.x, g.x], axis=2)), ValueError, "x"),
    ("x_no_steps", None, lambda l, g: forward(l, g.x[:0]), ValueError, "x"),
    ("x_no_batch", None, lambda l, g: forward(l, g.x[:, :0]), ValueError, "x"),
    ("x_int", None, lambda l, g: forward(l, g.x.astype(np.int32)), TypeError, "x"),
    ("x_float16", None, lambda l, g: forward(l, g.x.astype(np.float16)), TypeError, "x"),
    ("x_complex", None, lambda l, g: forward(l, g.x.astype(np.complex128)), TypeError, "x"),
    ("x_object", None, lambda l, g: forward(l, g.x.astype(object)), TypeError, "x"),
    ("x_other_float", None, lambda l, g: forward(l, g.x.astype(other_float(l.dtype))), TypeError, "x"),
    ("h0_rows", None, lambda l, g: forward(l, g.x, with_state(g, 0, g.states[0][:-1])), ValueError, state_name),
    ("h0_batch", None, lambda l, g: forward(l, g.x, with_state(g, 0, g.states[0][:, :1])), ValueError, state_name),
    ("h0_width", None, lambda l, g: forward(l, g.x, with_state(g, 0, g.states[0][..., :1])), ValueError, state_name),
    ("h0_2d", None, lambda l, g: forward(l, g.x, with_state(g, 0, g.states[0][0])), ValueError, state_name),
    ("h0_3d_unbatched_x", None, lambda l, g: forward(l, g.x[:, 0], g.states), ValueError, state_name),
    ("h0_int", None, lambda l, g: forward(l, g.x, with_state(g, 0, g.states[0].astype(np.int64))), TypeError,
     state_name),
    ("h0_other_float", None,
     lambda l, g: forward(l, g.x, with_state(g, 0, g.states[0].astype(other_float(l.dtype)))), TypeError, state_name),
    ("c0_width", ("lstm",), lambda l, g: forward(l, g.x, with_state(g, 1, g.states[1][..., :2])), ValueError, "c0"),
    ("c0_complex", ("lstm",), lambda l, g: forward(l, g.x, with_state(g, 1, g.states[1].astype(np.complex64))),
     TypeError, "c0"),
    ("hx_array", ("lstm",), lambda l, g: l(g.x, g.states[0]), ValueError, "hx"),
    ("hx_single", ("lstm",), lambda l, g: l(g.x, (g.states[0],)), ValueError, "hx"),
    ("hx_triple", ("lstm",), lambda l, g: l(g.x, (g.states[0], g.states[1], g.states[1])), ValueError, "hx"),
    ("lengths_long", None, lambda l, g: forward(l, g.x, lengths=[T, 2, 1]), ValueError, "lengths"),
    ("lengths_2d", None, lambda l, g: forward(l, g.x, lengths=[[T], [2]]), ValueError, "lengths"),
    ("lengths_float", None, lambda l, g: forward(l, g.x, lengths=[1.5, 2.0]), TypeError, "lengths"),
    ("lengths_str", None, lambda l, g: forward(l, g.x, lengths=["4", "2"]), TypeError, "lengths"),
    ("lengths_zero", None, lambda l, g: forward(l, g.x, lengths=[0, 2]), ValueError, "lengths"),
    ("lengths_past_end", None, lambda l, g: forward(l, g.x, lengths=[T + 1, 2]), ValueError, "lengths"),
    ("lengths_negative", None, lambda l, g: forward(l, g.x, lengths=[-1, 2]), ValueError, "lengths"),
    ("lengths_unbatched", None, lambda l, g: forward(l, g.x[:, 0], lengths=[T]), ValueError, "lengths"),
    ("x_nan", None, lambda l, g: forward(l, poisoned(g.x, np.nan)), ValueError, "x"),
    ("x_inf", None, lambda l, g: forward(l, poisoned(g.x, -np.inf)), ValueError, "x"),
    ("h0_nan", None, lambda l, g: forward(l, g.x, with_state(g, 0, poisoned(g.states[0], np.nan))), ValueError,
     state_name),
    ("c0_inf", ("lstm",), lambda l, g: forward(l, g.x, with_state(g, 1, poisoned(g.states[1], np.inf))), ValueError,
     "c0"),
]


FORWARD_PARAMS = [pytest.param(kind, case, id=f"{kind}-{case[0]}")
                  for case in FORWARD_CASES for kind in LAYERS if case[1] is None or kind in case[1]]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind, case", FORWARD_PARAMS)
def test_forward_rejects(backend, kind, dtype, case):
    _, _, call, error, name = case
    layer, g = trained(kind, dtype, backend)
    name = name(layer) if callable(name) else name
    assert_rejected(layer, lambda: call(layer, g), error, name)


@pytest.mark.filterwarnings("ignore:invalid value")
@pytest.mark.parametrize("kind", ["rnn", "lstm"])
def test_check_finite_false_accepts_nonfinite(backend, kind):
    layer = LAYERS[kind](dtype=np.float64, seed=0, backend=backend)
    g = good_inputs(layer, np.float64)
    x = poisoned(g.x, np.nan)
    states = [poisoned(s, np.inf) for s in g.states]
    y, _ = forward(layer, x, states, check_finite=False)
    assert not np.isfinite(y).all()  # the values went through, unchecked
    y_clean, _ = forward(layer, g.x, g.states, check_finite=False)
    y_checked, _ = forward(layer, g.x, g.states)
    np.testing.assert_array_equal(y_clean, y_checked)


# (id, kinds, call(layer, g) of backward with one bad argument, error, argument named)
BACKWARD_CASES = [
    ("dy_shape", None, lambda l, g: backward(l, g.dy[:, :1]), ValueError, "dy"),
    ("dy_width", None, lambda l, g: backward(l, g.dy[..., :1]), ValueError, "dy"),
    ("dy_int", None, lambda l, g: backward(l, g.dy.astype(np.int32)), TypeError, "dy"),
    ("dy_other_float", None, lambda l, g: backward(l, g.dy.astype(other_float(l.dtype))), TypeError, "dy"),
    ("dy_nan", None, lambda l, g: backward(l, poisoned(g.dy, np.nan)), ValueError, "dy"),
    ("dh_n_shape", None, lambda l, g: backward(l, g.dy, with_state(g, 0, g.dstates[0][:-1])), ValueError,
     lambda l: "d" + state_name(l).replace("0", "_n")),
    ("dh_n_dtype", None, lambda l, g: backward(l, g.dy, with_state(g, 0, g.dstates[0].astype(np.float16))),
     TypeError, lambda l: "d" + state_name(l).replace("0", "_n")),
    ("dc_n_shape", ("lstm",), lambda l, g: backward(l, g.dy, with_state(g, 1, g.dstates[1][:, :, :1])), ValueError,
     "dc_n"),
    ("dh_n_not_pair", ("lstm",), lambda l, g: l.backward(g.dy, g.dstates[0]), ValueError, "dh_n"),
]
BACKWARD_PARAMS = [pytest.param(kind, case, id=f"{kind}-{case[0]}")
                   for case in BACKWARD_CASES for kind in LAYERS if case[1] is None or kind in case[1]]


@pytest.mark.parametrize("kind, case", BACKWARD_PARAMS)
def test_backward_rejects(backend, kind, case):
    _, _, call, error, name = case
    layer, g = trained(kind, np.float32, backend)
    name = name(layer) if callable(name) else name
    assert_rejected(layer, lambda: call(layer, g), error, name)
    # the saved context is intact: a good backward still gives a fresh layer's gradients
    fresh, _ = trained(kind, np.float32, backend)
    layer.zero_grad()
    fresh.zero_grad()
    np.testing.assert_array_equal(backward(layer, g.dy)[0], backward(fresh, g.dy)[0])
    for name_, grad in fresh.grads.items():
        np.testing.assert_array_equal(layer.grads[name_], grad)


@pytest.mark.parametrize("kind", list(LAYERS))
def test_backward_without_training_forward(backend, kind):
    layer = LAYERS[kind](dtype=np.float32, seed=0, backend=backend)
    g = good_inputs(layer, np.float32)
    assert_rejected(layer, lambda: backward(layer, g.dy), RuntimeError, "forward")
    forward(layer, g.x)
    layer.eval()
    forward(layer, g.x)  # eval mode keeps nothing, so there is nothing to go back through
    assert_rejected(layer, lambda: backward(layer, g.dy), RuntimeError, "forward")


def cell_inputs(cell, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, I)).astype(dtype)
    states = [rng.standard_normal((B, w)).astype(dtype) for w in cell.spec.state_sizes]
    return x, states


def cell_call(cell, x, states):
    return cell(x, tuple(states) if is_lstm(cell) else states[0])


CELL_CASES = [
    ("x_3d", lambda c, x, s: cell_call(c, x[None], s), ValueError, "x"),
    ("x_input_size", lambda c, x, s: cell_call(c, x[:, :1], s), ValueError, "x"),
    ("x_int", lambda c, x, s: cell_call(c, x.astype(np.int16), s), TypeError, "x"),
    ("x_nan", lambda c, x, s: cell_call(c, poisoned(x, np.nan), s), ValueError, "x"),
    ("h0_batch", lambda c, x, s: cell_call(c, x, [s[0][:1]] + s[1:]), ValueError, "h0"),
    ("h0_dtype", lambda c, x, s: cell_call(c, x, [s[0].astype(np.float32)] + s[1:]), TypeError, "h0"),
]


@pytest.mark.parametrize("kind", list(CELLS))
@pytest.mark.parametrize("case", CELL_CASES, ids=[c[0] for c in CELL_CASES])
def test_cell_rejects(backend, kind, case):
    _, call, error, name = case
    cell = CELLS[kind](dtype=np.float64, seed=0, backend=backend)
    x, states = cell_inputs(cell, np.float64)
    cell_call(cell, x, states)
    assert_rejected(cell, lambda: call(cell, x, states), error, name)


def test_cell_state_errors(backend):
    cell = rc.LSTMCell(I, H, dtype=np.float64, seed=0, backend=backend)
    x, (h0, c0) = cell_inputs(cell, np.float64)
    assert_rejected(cell, lambda: cell.backward((h0, c0)), RuntimeError, "call")
    assert_rejected(cell, lambda: cell(x, h0), ValueError, "hx")
    assert_rejected(cell, lambda: cell(x, (h0, c0[:, :1])), ValueError, "c0")
    cell(x, (h0, c0))
    assert_rejected(cell, lambda: cell.backward(h0), ValueError, "dhx1")
    assert_rejected(cell, lambda: cell.backward((h0, c0[:1])), ValueError, "dc1")


# (class, kwargs with one bad argument, error, argument named); the other arguments valid
CONSTRUCTOR_CASES = [
    (rc.RNN, dict(input_size=3, hidden_size=0), ValueError, "hidden_size"),
    (rc.RNN, dict(input_size=-3, hidden_size=4), ValueError, "input_size"),
    (rc.GRU, dict(input_size=3, hidden_size=True), WRONG_TYPE, "hidden_size"),
    (rc.LSTM, dict(input_size=3, hidden_size=4, num_layers=0), ValueError, "num_layers"),
    (rc.LSTM, dict(input_size=3, hidden_size=4, num_layers=False), WRONG_TYPE, "num_layers"),
    (rc.GRU, dict(input_size=3, hidden_size=4.0), WRONG_TYPE, "hidden_size"),
    (rc.LSTM, dict(input_size=3, hidden_size=4, proj_size=4), ValueError, "proj_size"),
    (rc.LSTM, dict(input_size=3, hidden_size=4, proj_size=5), ValueError, "proj_size"),
    (rc.LSTM, dict(input_size=3, hidden_size=4, proj_size=-1), ValueError, "proj_size"),
    (rc.RNN, dict(input_size=3, hidden_size=4, nonlinearity="sigmoid"), ValueError, "nonlinearity"),
    (rc.RNN, dict(input_size=3, hidden_size=4, num_layers=2, dropout=-0.1), ValueError, "dropout"),
    (rc.GRU, dict(input_size=3, hidden_size=4, num_layers=2, dropout=1.5), ValueError, "dropout"),
    (rc.LSTM, dict(input_size=3, hidden_size=4, num_layers=2, dropout="0.5"), WRONG_TYPE, "dropout"),
    (rc.LSTM, dict(input_size=3, hidden_size=4, num_layers=2, dropout=float("nan")), ValueError, "dropout"),
    (rc.RNN, dict(input_size=3, hidden_size=4, dtype=int), TypeError, "dtype"),
    (rc.LSTM, dict(input_size=3, hidden_size=4, dtype=np.float16), TypeError, "dtype"),
    (rc.GRU, dict(input_size=3, hidden_size=4, dtype="complex64"), TypeError, "dtype"),
    (rc.GRU, dict(input_size=3, hidden_size=4, backend="nope"), ValueError, "backend"),
    (rc.JordanRNN, dict(input_size=3, hidden_size=4, output_size=0), ValueError, "output_size"),
    (rc.JordanRNN, dict(input_size=3, hidden_size=4, output_size=2, output_activation="relu"), ValueError,
     "output_activation"),
    (rc.RNNCell, dict(input_size=3, hidden_size=-1), ValueError, "hidden_size"),
    (rc.RNNCell, dict(input_size=3, hidden_size=4, nonlinearity="gelu"), ValueError, "nonlinearity"),
    (rc.LSTMCell, dict(input_size=3, hidden_size=4, dtype=np.int32), TypeError, "dtype"),
    (rc.GRUCell, dict(input_size=3, hidden_size=4, backend="nope"), ValueError, "backend"),
]


@pytest.mark.parametrize("cls, kwargs, error, name", CONSTRUCTOR_CASES,
                         ids=[f"{c[0].__name__}-{c[3]}-{i}" for i, c in enumerate(CONSTRUCTOR_CASES)])
def test_constructor_rejects(cls, kwargs, error, name):
    with pytest.raises(error, match=rf"\b{name}\b"):
        cls(**kwargs)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_load_state_dict_rejects(backend, kind):
    layer, _ = trained(kind, np.float64, backend)
    # a mapping that would change every parameter if it were loaded
    good = {name: value + 1.0 for name, value in layer.state_dict().items()}
    first, second = list(good)[:2]

    missing = {k: v for k, v in good.items() if k not in (first, second)}
    for name in (first, second):  # each one listed
        assert_rejected(layer, lambda: layer.load_state_dict(missing), KeyError, name)
    unexpected = dict(good, weight_xx_l0=good[first], bias_l9=good[second])
    assert_rejected(layer, lambda: layer.load_state_dict(unexpected), KeyError, "weight_xx_l0")
    assert_rejected(layer, lambda: layer.load_state_dict(unexpected), KeyError, "bias_l9")
    both = dict(missing, extra=good[first])
    for name in (first, second, "extra"):
        assert_rejected(layer, lambda: layer.load_state_dict(both), KeyError, name)

    wrong = dict(good, **{first: good[first][:-1], second: good[second].T[..., None]})
    for name in (first, second):
        assert_rejected(layer, lambda: layer.load_state_dict(wrong), ValueError, name)
    # strict=False skips names but never shapes
    assert_rejected(layer, lambda: layer.load_state_dict(wrong, strict=False), ValueError, first)
    complex_values = dict(good, **{first: good[first].astype(np.complex128)})
    assert_rejected(layer, lambda: layer.load_state_dict(complex_values), TypeError, first)


def test_set_backend_rejects_unknown():
    current = rc.get_backend()
    with pytest.raises(ValueError, match=r"\bbackend\b.*nope"):
        rc.set_backend("nope")
    assert rc.get_backend() == current


@pytest.mark.parametrize("value", [0, -2, True, 1.5, "2", None])
def test_set_num_threads_rejects(value):
    current = rc.get_num_threads()
    with pytest.raises(WRONG_TYPE if not isinstance(value, int) else ValueError, match="num_threads"):
        rc.set_num_threads(value)
    assert rc.get_num_threads() == current


# (call(grads) with one bad argument, error, argument named)
CLIP_CASES = [
    (lambda g: rc.clip_grad_norm_(3.0, 1.0), TypeError, "grads"),
    (lambda g: rc.clip_grad_norm_("grads", 1.0), TypeError, "grads"),
    (lambda g: rc.clip_grad_norm_(g, float("nan")), ValueError, "max_norm"),
    (lambda g: rc.clip_grad_norm_(g, "1.0"), WRONG_TYPE, "max_norm"),
    (lambda g: rc.clip_grad_norm_(g, None), WRONG_TYPE, "max_norm"),
    (lambda g: rc.clip_grad_norm_(g, 1.0, norm_type=0), ValueError, "norm_type"),
    (lambda g: rc.clip_grad_norm_(g, 1.0, norm_type=-2.0), ValueError, "norm_type"),
    (lambda g: rc.clip_grad_norm_(g, 1.0, norm_type="fro"), WRONG_TYPE, "norm_type"),
    (lambda g: rc.clip_grad_value_(g, -0.5), ValueError, "clip_value"),
    (lambda g: rc.clip_grad_value_(g, float("nan")), ValueError, "clip_value"),
    (lambda g: rc.clip_grad_value_(g, None), WRONG_TYPE, "clip_value"),
    (lambda g: rc.clip_grad_value_(object(), 1.0), TypeError, "grads"),
]


@pytest.mark.parametrize("call, error, name", CLIP_CASES, ids=[f"{c[2]}-{i}" for i, c in enumerate(CLIP_CASES)])
def test_clip_rejects(call, error, name):
    layer, _ = trained("gru", np.float64, "numpy")
    assert_rejected(layer, lambda: call(layer), error, name)


def functional_args(kind, dtype=np.float64, seed=0):
    """Valid keyword arguments of rc.functional.<kind>_forward."""
    rng = np.random.default_rng(seed)
    gates = {"rnn": 1, "gru": 3, "lstm": 4}[kind]
    args = dict(x=rng.standard_normal((T, B, I)), h0=rng.standard_normal((B, H)),
                weight_ih=rng.standard_normal((gates * H, I)), weight_hh=rng.standard_normal((gates * H, H)),
                bias_ih=rng.standard_normal(gates * H), bias_hh=rng.standard_normal(gates * H))
    if kind == "lstm":
        args["c0"] = rng.standard_normal((B, H))
    return {k: v.astype(dtype) for k, v in args.items()}


# (kind, changes to the valid arguments, error, argument named)
FUNCTIONAL_CASES = [
    ("rnn", lambda a: dict(weight_ih=a["weight_ih"][:, :-1]), ValueError, "x"),
    ("rnn", lambda a: dict(weight_hh=a["weight_hh"][:, :-1]), ValueError, "weight_hh"),
    ("rnn", lambda a: dict(bias_ih=a["bias_ih"][:-1]), ValueError, "bias_ih"),
    ("rnn", lambda a: dict(bias_hh=None), ValueError, "bias_hh"),
    ("rnn", lambda a: dict(weight_hh=a["weight_hh"].astype(np.float32)), TypeError, "weight_hh"),
    ("rnn", lambda a: dict(h0=a["h0"][:, :-1]), ValueError, "h0"),
    ("gru", lambda a: dict(weight_ih=a["weight_ih"][:-1]), ValueError, "weight_ih"),
    ("gru", lambda a: dict(bias_hh=a["bias_hh"][:H]), ValueError, "bias_hh"),
    ("gru", lambda a: dict(x=a["x"].astype(np.int64)), TypeError, "x"),
    ("lstm", lambda a: dict(weight_hh=a["weight_hh"][: 3 * H]), ValueError, "weight_hh"),
    ("lstm", lambda a: dict(c0=a["c0"][:1]), ValueError, "c0"),
    ("lstm", lambda a: dict(weight_hr=np.zeros((2, H + 1)), weight_hh=a["weight_hh"][:, :2], h0=a["h0"][:, :2]),
     ValueError, "weight_hr"),
    ("lstm", lambda a: dict(weight_ci=np.zeros(H), weight_co=np.zeros(H)), ValueError, "weight_cf"),
    ("lstm", lambda a: dict(lengths=[T, T + 1]), ValueError, "lengths"),
]


@pytest.mark.parametrize("kind, change, error, name", FUNCTIONAL_CASES,
                         ids=[f"{c[0]}-{c[3]}-{i}" for i, c in enumerate(FUNCTIONAL_CASES)])
def test_functional_rejects(backend, kind, change, error, name):
    forward_fn = getattr(rc.functional, f"{kind}_forward")
    args = functional_args(kind)
    with pytest.raises(error, match=rf"\b{name}\b"):
        forward_fn(**dict(args, **change(args)), training=True, backend=backend)


def test_functional_backward_rejects(backend):
    args = functional_args("lstm")
    y, _, _, ctx = rc.functional.lstm_forward(**args, training=True, backend=backend)
    with pytest.raises(ValueError, match=r"\bdy\b"):
        rc.functional.lstm_backward(ctx, y[:-1])
    with pytest.raises(TypeError, match=r"\bdy\b"):
        rc.functional.lstm_backward(ctx, y.astype(np.float32))
    with pytest.raises(ValueError, match=r"\bdc_n\b"):
        rc.functional.lstm_backward(ctx, y, dc_n=np.zeros((B, H + 1)))
    with pytest.raises(TypeError, match=r"\bctx\b"):
        rc.functional.lstm_backward(None, y)
    # the context survived the bad calls: backward now equals one from a fresh forward
    _, _, _, fresh = rc.functional.lstm_forward(**args, training=True, backend=backend)
    for got, want in zip(rc.functional.lstm_backward(ctx, y)[:3], rc.functional.lstm_backward(fresh, y)[:3]):
        np.testing.assert_array_equal(got, want)


def strided(array, how):
    """The same values as `array` in another memory layout."""
    if how == "fortran":
        out = np.asfortranarray(array)
        assert not out.flags.c_contiguous or array.ndim < 2
        return out
    if how == "every_other":  # a view into a larger buffer
        wide = np.zeros(array.shape[:-1] + (2 * array.shape[-1],), array.dtype)
        wide[..., ::2] = array
        return wide[..., ::2]
    return np.ascontiguousarray(array[::-1])[::-1]  # negative strides


@pytest.mark.parametrize("layout", ["fortran", "every_other", "reversed"])
@pytest.mark.parametrize("kind, batch_first", [("lstm", False), ("gru", True), ("jordan", False)])
def test_non_contiguous_inputs_give_the_same_results(backend, kind, batch_first, layout):
    kwargs = {} if kind == "jordan" else dict(batch_first=batch_first)
    layers = [LAYERS[kind](dtype=np.float64, seed=0, backend=backend, **kwargs) for _ in range(2)]
    g = good_inputs(layers[0], np.float64)
    x, dy = (g.x.transpose(1, 0, 2).copy(), g.dy.transpose(1, 0, 2).copy()) if batch_first else (g.x, g.dy)
    lengths = np.array([T, 2, 3, 1])[::2]  # a strided view of (T, 3)
    results = []
    for layer, convert in zip(layers, (lambda a: a, lambda a: strided(a, layout))):
        y, finals = forward(layer, convert(x), [convert(s) for s in g.states], lengths=lengths)
        dx, dstates = backward(layer, convert(dy), [convert(d) for d in g.dstates])
        finals = list(finals) if isinstance(finals, tuple) else [finals]
        dstates = list(dstates) if isinstance(dstates, tuple) else [dstates]
        results.append([y, dx] + finals + dstates + list(layer.grads.values()))
    for got, want in zip(*results):
        np.testing.assert_array_equal(got, want)
