"""The regularised cells at the layer level: their options, their masks (drawn from the
layer's seeded generator, one per call), what each option does in training and in
evaluation, weight dropout's gradient, the gate traces, and the formats that refuse them.
The cells' equations are tested per backend in tests/backends (against the NumPy
reference, and the reference against finite differences); here the layer's share."""
import copy
import io

import numpy as np
import pytest

import rnncore as rc
from rnncore.core import regularise

from cases import back, call, finite_difference

BACKENDS = [b for b in ("numpy", "cython", "numba") if b in rc.backends()]
T, B, I, H = 6, 3, 4, 5

# (class, constructor kwargs): every option on every kind that takes it, and together
OPTIONS = [
    (rc.RNN, dict(zoneout=0.3)),
    (rc.RNN, dict(recurrent_dropout=0.4, weight_dropout=0.3, nonlinearity="relu")),
    (rc.LSTM, dict(layer_norm=True)),
    (rc.LSTM, dict(zoneout=(0.2, 0.4), proj_size=3)),
    (rc.LSTM, dict(recurrent_dropout=0.3, peephole=True)),
    (rc.LSTM, dict(layer_norm=True, zoneout=0.2, recurrent_dropout=0.2, weight_dropout=0.2,
                   coupled_input_forget=True, peephole=True)),
    (rc.GRU, dict(layer_norm=True)),
    (rc.GRU, dict(zoneout=0.3, recurrent_dropout=0.2, reset_after=False)),
    (rc.GRU, dict(layer_norm=True, zoneout=0.25, recurrent_dropout=0.3, weight_dropout=0.4)),
]
OPTION_IDS = [f"{cls.__name__}-" + "-".join(f"{k}={v}" for k, v in kw.items()) for cls, kw in OPTIONS]


def layer_of(cls, kwargs, backend="numpy", dtype=np.float64, seed=0, **more):
    return cls(I, H, dtype=dtype, seed=seed, backend=backend, **dict(kwargs, **more))


def data(layer, seed=1, dtype=np.float64):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    rows = layer.num_layers * layer.num_directions
    widths = layer.specs[0].state_sizes
    return x, [rng.standard_normal((rows, B, w)).astype(dtype) for w in widths]


# -- the options ------------------------------------------------------------------------

@pytest.mark.parametrize("make, message", [
    (lambda: rc.LSTM(I, H, zoneout=1.5), "zoneout: expected a number in [0, 1]"),
    (lambda: rc.LSTM(I, H, zoneout=(0.1,)), "zoneout: expected p or a pair"),
    (lambda: rc.LSTM(I, H, zoneout=(0.1, -0.1)), "zoneout[1]: expected a number in [0, 1]"),
    (lambda: rc.GRU(I, H, zoneout=(0.1, 0.2)), "a pair is for an LSTM"),
    (lambda: rc.RNN(I, H, recurrent_dropout=1.0), "recurrent_dropout: expected a number in [0, 1)"),
    (lambda: rc.GRU(I, H, weight_dropout=-0.5), "weight_dropout: expected a number in [0, 1)"),
    (lambda: rc.LSTM(I, H, weight_dropout=True), "weight_dropout: expected a number"),
    (lambda: rc.GRU(I, H, layer_norm=True, reset_after=False), "layer_norm: expected reset_after=True"),
    (lambda: rc.LSTMCell(I, H, zoneout="0.1"), "zoneout: expected a number"),
])
def test_bad_options_are_refused_naming_them(make, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        make()


def test_layer_norm_must_be_a_bool():
    with pytest.raises(TypeError, match="layer_norm: expected a bool, got 1"):
        rc.LSTM(I, H, layer_norm=1)


def test_the_rnn_takes_no_layer_norm_and_jordan_no_options():
    with pytest.raises(TypeError):
        rc.RNN(I, H, layer_norm=True)
    with pytest.raises(TypeError):
        rc.JordanRNN(I, H, 2, zoneout=0.1)
    with pytest.raises(ValueError, match="layer_norm: expected a cell kind among"):
        regularise.options("rnn", layer_norm=True)


@pytest.mark.parametrize("cls, kwargs", OPTIONS, ids=OPTION_IDS)
def test_the_options_rebuild_from_the_config_and_the_repr(cls, kwargs):
    layer = layer_of(cls, kwargs, num_layers=2)
    again = cls(**layer.get_config())
    assert again.specs == layer.specs
    assert repr(again) == repr(layer)
    for name, value in kwargs.items():
        assert f"{name}={value!r}" in repr(layer)


def test_layer_norm_parameters_are_named_start_at_one_and_zero_and_leave_the_other_draws_alone():
    plain = rc.LSTM(I, H, num_layers=2, bidirectional=True, seed=7)
    normed = rc.LSTM(I, H, num_layers=2, bidirectional=True, seed=7, layer_norm=True)
    extra = [n for n in normed.parameters() if n not in plain.parameters()]
    assert extra == [f"{base}_l{k}{rev}" for k in range(2) for rev in ("", "_reverse")
                     for base in ("weight_ih_ln", "weight_hh_ln", "weight_c_ln", "bias_c_ln")]
    for name in extra:
        shape = (4 * H,) if "_ih_" in name or "_hh_" in name else (H,)
        assert normed.parameters()[name].shape == shape
        np.testing.assert_array_equal(normed.parameters()[name], 0.0 if name.startswith("bias") else 1.0)
    for name, value in plain.parameters().items():
        np.testing.assert_array_equal(normed.parameters()[name], value)
    gru = rc.GRUCell(I, H, layer_norm=True)
    assert [n for n in gru.parameters() if "_ln" in n] == ["weight_ih_ln", "weight_hh_ln"]
    assert gru.parameters()["weight_hh_ln"].shape == (3 * H,)


@pytest.mark.parametrize("cls, kwargs", OPTIONS, ids=OPTION_IDS)
def test_checkpoints_round_trip_the_options_and_their_parameters(cls, kwargs, tmp_path):
    layer = layer_of(cls, kwargs, num_layers=2, bidirectional=True)
    for value in layer.parameters().values():
        value += 0.25   # the layer norm's gains and shifts away from their start
    rc.save(tmp_path / "layer.rnc", layer)
    loaded = rc.load(tmp_path / "layer.rnc")
    assert loaded.specs == layer.specs
    for name, value in layer.parameters().items():
        np.testing.assert_array_equal(loaded.parameters()[name], value)
    loaded.eval()
    layer.eval()
    x, states = data(layer)
    np.testing.assert_array_equal(call(loaded, x, states)[0], call(layer, x, states)[0])


# -- the masks ----------------------------------------------------------------------------

def training_pass(layer, x, states, seed=5):
    y, finals = call(layer, x, states)
    dy = np.random.default_rng(seed).standard_normal(y.shape)
    dx, dstates = back(layer, dy)
    return y, finals, dx, dstates, {n: g.copy() for n, g in layer.grads.items()}


def assert_same_pass(a, b):
    for u, v in zip(a[:2] + a[3:4], b[:2] + b[3:4]):
        for p, q in zip(u if isinstance(u, list) else [u], v if isinstance(v, list) else [v]):
            np.testing.assert_array_equal(p, q)
    np.testing.assert_array_equal(a[2], b[2])
    for name in a[4]:
        np.testing.assert_array_equal(a[4][name], b[4][name])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls, kwargs", OPTIONS, ids=OPTION_IDS)
def test_two_layers_with_the_same_seed_draw_the_same_masks_and_each_call_draws_anew(cls, kwargs, backend):
    a = layer_of(cls, kwargs, backend, num_layers=2, bidirectional=True, seed=3)
    b = layer_of(cls, kwargs, backend, num_layers=2, bidirectional=True, seed=3)
    x, states = data(a)
    first = training_pass(a, x, states)
    assert_same_pass(first, training_pass(b, x, states))
    if regularise.random(a.specs[0]):
        again = training_pass(a, x, states)
        assert not np.array_equal(again[0], first[0]), "a second call must draw new masks"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls, kwargs", OPTIONS, ids=OPTION_IDS)
def test_a_training_call_is_the_backend_call_with_the_masks_drawn_from_the_layer_generator(cls, kwargs, backend):
    """The layer draws its masks in a fixed order (per layer, per direction: W_hh's,
    the recurrent one, zoneout's h, zoneout's c), runs the backend with them and W_hh * M,
    and scales W_hh's gradient by M: all of which this test does by hand, from a copy of
    the generator."""
    layer = layer_of(cls, kwargs, backend, bidirectional=True)
    spec = layer.specs[0]
    x, states = data(layer)
    rng = copy.deepcopy(layer._rng)
    got = training_pass(layer, x, states)

    masks, weight_masks = regularise.draw(rng, spec, T, B, np.float64, 2) if regularise.random(spec) else (None, [None] * 2)
    params = [{base: layer.parameters()[base + ("_l0_reverse" if d else "_l0")].copy()
               for base in spec.param_shapes()} for d in range(2)]
    seen = regularise.dropped_weights(params, weight_masks)
    state_args = [tuple(s[d] for s in states) for d in range(2)]
    y, finals, ctx = rc.functional.run_layer(spec, seen, x, state_args, None, True, (False, True), backend, masks)
    np.testing.assert_array_equal(got[0], y)
    dy = np.random.default_rng(5).standard_normal(y.shape)
    dx, _, grads = rc.functional.run_layer_backward(ctx, dy, [tuple(np.zeros_like(s) for s in st) for st in state_args])
    np.testing.assert_array_equal(got[2], dx)
    for d, g in enumerate(grads):
        m = weight_masks[d]
        for base, value in g.items():
            expected = value * m if base == "weight_hh" and m is not None else value
            np.testing.assert_array_equal(got[4][base + ("_l0_reverse" if d else "_l0")], expected)
    if spec.weight_dropout:
        dropped = weight_masks[0] == 0
        assert dropped.any() and np.all(got[4]["weight_hh_l0"][dropped] == 0), "dropped weights get no gradient"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls, kwargs", OPTIONS, ids=OPTION_IDS)
def test_the_dropout_options_do_nothing_in_evaluation(cls, kwargs, backend):
    kept = {k: v for k, v in kwargs.items() if k not in ("recurrent_dropout", "weight_dropout")}
    with_dropout = layer_of(cls, kwargs, backend, num_layers=2).eval()
    without = layer_of(cls, kept, backend, num_layers=2).eval()
    x, states = data(with_dropout)
    for a, b in zip(call(with_dropout, x, states), call(without, x, states)):
        for u, v in zip(a if isinstance(a, list) else [a], b if isinstance(b, list) else [b]):
            np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls", [rc.RNN, rc.LSTM, rc.GRU])
def test_zoneout_one_keeps_the_initial_state_in_training(cls, backend):
    layer = cls(I, H, zoneout=1.0, seed=0, backend=backend, dtype=np.float64)
    x, states = data(layer)
    y, finals = call(layer, x, states)
    for final, initial in zip(finals, states):
        np.testing.assert_array_equal(final, initial)
    np.testing.assert_array_equal(y, np.broadcast_to(states[0][0], y.shape))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls, kwargs", [(rc.LSTM, dict(zoneout=(0.3, 0.6))), (rc.GRU, dict(zoneout=0.4)),
                                         (rc.RNN, dict(zoneout=0.5))])
def test_zoneout_in_evaluation_is_its_expectation(cls, kwargs, backend):
    """Eval: h_t = p h_{t-1} + (1 - p) h~_t, h~_t the plain cell's step from the zoned
    h_{t-1}: checked one step at a time against the plain layer."""
    zoned = cls(I, H, seed=0, backend=backend, dtype=np.float64, **kwargs).eval()
    plain = cls(I, H, seed=0, backend=backend, dtype=np.float64).eval()
    p = zoned.specs[0].zoneout_h, zoned.specs[0].zoneout_c
    x, states = data(zoned)
    y, finals = call(zoned, x, states)
    carried = states
    for t in range(T):
        _, new = call(plain, x[t:t + 1], carried)
        carried = [q * old + (1 - q) * n for q, old, n in zip(p, carried, new)]
        np.testing.assert_allclose(y[t], carried[0][0], rtol=1e-12, atol=1e-14)
    for final, expected in zip(finals, carried):
        np.testing.assert_allclose(final, expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls, kwargs", OPTIONS, ids=OPTION_IDS)
def test_a_stream_steps_the_evaluation_form(cls, kwargs, backend):
    layer = layer_of(cls, kwargs, backend, num_layers=2, dtype=np.float32).eval()
    x = np.random.default_rng(2).standard_normal((T, B, I)).astype(np.float32)
    stream = layer.stream(batch_size=B)
    stepped = np.stack([stream.step(x_t) for x_t in x])
    np.testing.assert_array_equal(stepped, call(layer, x)[0])


@pytest.mark.parametrize("cls, kwargs", [(rc.LSTM, dict(zoneout=(0.2, 0.5), recurrent_dropout=0.3,
                                                        weight_dropout=0.2, layer_norm=True)),
                                         (rc.GRU, dict(zoneout=0.3, recurrent_dropout=0.2, weight_dropout=0.3,
                                                       layer_norm=True))])
def test_layer_gradients_with_masks_fixed_by_the_seed_match_finite_differences(cls, kwargs):
    """float64, two layers, bidirectional, lengths: the layer's loss as a function of each
    parameter, with the generator reset before every call so that the masks stay fixed."""
    layer = layer_of(cls, kwargs, num_layers=2, bidirectional=True)
    for value in layer.parameters().values():
        value += np.random.default_rng(3).uniform(-0.2, 0.2, value.shape)
    x, states = data(layer)
    lengths = np.array([T, 2, 5])
    w = np.random.default_rng(4).standard_normal((T, B, layer.output_width))
    start = copy.deepcopy(layer._rng)

    def loss():
        layer._rng = copy.deepcopy(start)
        y, finals = call(layer, x, states, lengths=lengths)
        return float((w * y).sum() + sum((f * f).sum() for f in finals))

    loss()
    y, finals = call(layer, x, states, lengths=lengths)
    layer.zero_grad()
    layer._rng = copy.deepcopy(start)
    y, finals = call(layer, x, states, lengths=lengths)
    dx, dstates = back(layer, w, [2 * f for f in finals])
    for name, value in layer.parameters().items():
        np.testing.assert_allclose(layer.grads[name], finite_difference(loss, value), rtol=1e-6, atol=1e-8,
                                   err_msg=name)
    np.testing.assert_allclose(dx, finite_difference(loss, x), rtol=1e-6, atol=1e-8)
    for d, s in zip(dstates, states):
        np.testing.assert_allclose(d, finite_difference(loss, s), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("cls, kwargs", [(rc.LSTMCell, dict(zoneout=(0.3, 0.5), recurrent_dropout=0.3,
                                                            weight_dropout=0.3, layer_norm=True)),
                                         (rc.GRUCell, dict(zoneout=0.3, layer_norm=True, weight_dropout=0.3)),
                                         (rc.RNNCell, dict(zoneout=0.5, recurrent_dropout=0.5))])
def test_cells_take_the_options_as_one_step_layers(cls, kwargs):
    """A cell is a one-step layer: the same masks (from the same seed), outputs and
    gradients as rc.LSTM/GRU/RNN on a sequence of one step."""
    layer_cls = {rc.LSTMCell: rc.LSTM, rc.GRUCell: rc.GRU, rc.RNNCell: rc.RNN}[cls]
    cell = cls(I, H, seed=4, dtype=np.float64, backend="numpy", **kwargs)
    layer = layer_cls(I, H, seed=4, dtype=np.float64, backend="numpy", **kwargs)
    x = np.random.default_rng(0).standard_normal((B, I))
    lstm = cls is rc.LSTMCell
    out = cell(x)
    y, finals = call(layer, x[None])
    np.testing.assert_array_equal(out[0] if lstm else out, finals[0][0])
    dh = np.ones((B, layer.specs[0].out_size))
    dx_cell = cell.backward((dh, np.zeros((B, H))) if lstm else dh)[0]
    dx_layer, _ = back(layer, dh[None])
    np.testing.assert_array_equal(dx_cell, dx_layer[0])
    for name, g in cell.grads.items():
        np.testing.assert_array_equal(g, layer.grads[name + "_l0"])


# -- traces -------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_an_lstm_trace_holds_the_steps_gates_and_cells(backend):
    lstm = rc.LSTM(I, H, num_layers=2, bidirectional=True, seed=0, backend=backend, dtype=np.float64).eval()
    x, (h0, c0) = data(lstm)
    lengths = np.array([T, 3, 1])
    trace = lstm.trace(x, (h0, c0), lengths=lengths)
    assert sorted(trace) == ["l0", "l0_reverse", "l1", "l1_reverse"]
    y, (h_n, c_n) = lstm(x, (h0, c0), lengths=lengths)
    for key, row in zip(["l1", "l1_reverse"], [2, 3]):
        gates = trace[key]
        assert sorted(gates) == ["c", "f", "g", "i", "o"]
        for a in gates.values():
            assert a.shape == (T, B, H)
            assert np.all(a[3:, 1] == 0) and np.all(a[1:, 2] == 0), "zero past a sequence's end"
        assert np.all((gates["i"] > 0) & (gates["i"] < 1)) or np.all(gates["i"][lengths[None] > np.arange(T)[:, None]] > 0)
        # h_t = o_t tanh(c_t): the layer's output, direction by direction
        width = slice(0, H) if key == "l1" else slice(H, 2 * H)
        np.testing.assert_allclose(gates["o"] * np.tanh(gates["c"]), y[:, :, width], rtol=1e-12, atol=1e-15)
        last = lengths - 1
        if key == "l1":
            np.testing.assert_allclose(gates["c"][last, np.arange(B)], c_n[row], rtol=1e-12)
        else:
            np.testing.assert_allclose(gates["c"][0], c_n[row], rtol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_gru_trace_rebuilds_its_output(backend):
    gru = rc.GRU(I, H, seed=0, backend=backend, dtype=np.float64, zoneout=0.3, layer_norm=True)
    x, (h0,) = data(gru)
    trace = gru.trace(x, h0)["l0"]
    assert sorted(trace) == ["n", "r", "z"]
    gru.eval()
    y, _ = gru(x, h0)
    h, p = h0[0], 0.3
    for t in range(T):
        h = p * h + (1 - p) * ((1 - trace["z"][t]) * trace["n"][t] + trace["z"][t] * h)
        np.testing.assert_allclose(y[t], h, rtol=1e-12, atol=1e-15)


def test_a_trace_of_an_unbatched_sequence_drops_the_batch_axis_and_checks_its_input():
    rnn = rc.RNN(I, H, seed=0)
    trace = rnn.trace(np.ones((T, I), np.float32))
    assert list(trace) == ["l0"] and trace["l0"]["h"].shape == (T, H)
    with pytest.raises(ValueError, match="x"):
        rnn.trace(np.ones((T, B, I + 1), np.float32))


# -- formats ------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, refused", [(dict(layer_norm=True), "layer_norm"), (dict(zoneout=0.1), "zoneout")])
def test_onnx_and_keras_refuse_layer_norm_and_zoneout_by_name(kwargs, refused):
    pytest.importorskip("onnx")
    layer = rc.LSTM(I, H, seed=0, **kwargs)
    with pytest.raises(ValueError, match=refused):
        rc.onnx.export(layer, io.BytesIO())
    with pytest.raises(ValueError, match=refused):
        rc.keras.to_keras_weights(layer)


def test_the_dropout_options_export_as_the_plain_inference_graph():
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    layer = rc.GRU(I, H, seed=0, recurrent_dropout=0.3, weight_dropout=0.5).eval()
    buffer = io.BytesIO()
    rc.onnx.export(layer, buffer)
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((T, B, I)).astype(np.float32)
    got_y, got_h = session.run(None, {"x": x})
    y, h_n = layer(x)
    # float32 against ONNX Runtime's own kernels: a few ulps per step
    np.testing.assert_allclose(got_y, y, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_h, h_n, rtol=1e-5, atol=1e-6)


# -- every backend against the reference, through the layer --------------------------------

@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "numpy"])
@pytest.mark.parametrize("cls, kwargs", OPTIONS, ids=OPTION_IDS)
def test_every_backend_gives_the_reference_through_the_layer(cls, kwargs, backend, dtype):
    """Two layers, bidirectional, lengths, initial states; the same seed draws the same
    masks on every backend, so a training pass (outputs, states, every gradient) and an
    evaluation call must agree with the NumPy reference's: float64 to 1e-10 relative
    (the backends sum in other orders), float32 to 1e-5 of each array's largest value (a
    few ulps per step, which layer norm's backward divides by a row's deviation)."""
    rtol = 1e-10 if dtype == np.float64 else 1e-5
    lengths = np.array([T, 2, 4])
    results = []
    for name in ("numpy", backend):
        layer = layer_of(cls, kwargs, name, dtype=dtype, num_layers=2, bidirectional=True, seed=9)
        x, states = data(layer, dtype=dtype)
        y, finals = call(layer, x, states, lengths=lengths)
        dx, dstates = back(layer, np.cos(y), [np.sin(f) for f in finals])
        layer.eval()
        results.append([y, *finals, dx, *dstates, *layer.grads.values(), call(layer, x, states, lengths=lengths)[0]])
    for got, expected in zip(results[1], results[0]):
        scale = np.abs(expected).max()
        np.testing.assert_allclose(got, expected, rtol=rtol, atol=rtol * scale if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "numpy"])
@pytest.mark.parametrize("cls, kwargs", OPTIONS + [(rc.LSTM, dict(coupled_input_forget=True, proj_size=2)),
                                                   (rc.GRU, dict(reset_after=False)), (rc.RNN, {})],
                         ids=OPTION_IDS + ["LSTM-cifg-proj", "GRU-cho", "RNN"])
def test_every_backend_traces_its_own_forward_as_the_reference_does(cls, kwargs, backend):
    """Each backend reads its trace from its own forward; the values are the
    reference's to 1e-10 in float64, with lengths and both directions."""
    lengths = np.array([T, 2, 4])
    traces = []
    for name in ("numpy", backend):
        layer = layer_of(cls, kwargs, name, num_layers=2, bidirectional=True, seed=9)
        x, states = data(layer)
        traces.append(layer.trace(x, tuple(states) if cls is rc.LSTM else states[0], lengths=lengths))
    assert list(traces[1]) == list(traces[0])
    for key in traces[0]:
        assert sorted(traces[1][key]) == sorted(traces[0][key])
        for name, expected in traces[0][key].items():
            np.testing.assert_allclose(traces[1][key][name], expected, rtol=1e-10, atol=1e-13, err_msg=f"{key} {name}")


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "numpy"])
@pytest.mark.parametrize("cls, kwargs", [(rc.LSTM, dict(layer_norm=True, zoneout=(0.2, 0.1), recurrent_dropout=0.2)),
                                         (rc.GRU, dict(layer_norm=True, zoneout=0.2, weight_dropout=0.3))])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_the_options_give_the_same_bits_for_any_thread_count_and_calling_thread(cls, kwargs, backend, bidirectional):
    """A batch of 64 rows splits into row slices (per direction: 2 and 3 slices at 2 and 3
    threads in one direction, 2 at 4 threads in two); a training pass and an evaluation
    call give the bits of one thread, from the main thread and from a worker."""
    import threading
    x = np.random.default_rng(0).standard_normal((T, 64, I))
    saved = rc.get_num_threads()

    def run(threads):
        rc.set_num_threads(threads)
        layer = cls(I, 32, seed=2, backend=backend, dtype=np.float64, bidirectional=bidirectional, **kwargs)
        y, finals = call(layer, x)
        dx, dstates = back(layer, np.cos(y))
        layer.eval()
        return [y, *finals, dx, *dstates, *layer.grads.values(), call(layer, x)[0]]

    try:
        expected = run(1)
        for threads in ((4,) if bidirectional else (2, 3)):
            got = run(threads)
            box = []
            worker = threading.Thread(target=lambda: box.append(run(threads)))
            worker.start()
            worker.join()
            for result in (got, box[0]):
                for a, b in zip(result, expected):
                    np.testing.assert_array_equal(a, b)
    finally:
        rc.set_num_threads(saved)


@pytest.mark.parametrize("p", [0.0, 1e-3, 0.1, 0.5, 0.9, 1.0])
def test_masks_keep_their_probability_and_their_edges(p):
    # 32 bits a value against p's threshold: over 10**6 values the rate is p within
    # five standard deviations of a binomial; p = 0 and p = 1 are exact; an odd count
    # uses half of the last 64-bit draw
    n = 10 ** 6 + 1
    values = regularise._below(np.random.default_rng(7), (n,), p)
    assert values.dtype == bool and values.shape == (n,)
    sd = (p * (1 - p) / n) ** 0.5
    assert abs(values.mean() - p) <= 5 * sd + 1e-12
    kept = regularise._kept(np.random.default_rng(7), (n,), p if p < 1 else 0.5, np.float32)
    assert kept.dtype == np.float32
    assert set(np.unique(kept)) <= {0.0, np.float32(1 / (1 - (p if p < 1 else 0.5)))}


def test_masks_are_two_values_from_each_draw_of_the_generator():
    # the stream a seed gives: the low then the high half of each 64-bit draw
    raw = np.random.default_rng(3).bit_generator.random_raw(3)
    halves = np.array([[int(r) & 0xFFFFFFFF, int(r) >> 32] for r in raw], np.uint64).ravel()[:5]
    threshold = round(0.3 * 2 ** 32)
    np.testing.assert_array_equal(regularise._below(np.random.default_rng(3), (5,), 0.3), halves < threshold)
