"""Whole models through ONNX: a Sequential exported runs in ONNX Runtime like rnncore, loads
back bit for bit, and every module or graph it cannot reproduce is refused by name."""
import io
import os

import numpy as np
import pytest

import rnncore as rc

from cases import assert_examples_run
from conftest import assert_close

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

I, H, OUT, VOCAB = 3, 5, 2, 11
# float32 on both sides with different summation orders: the project's float32 agreement
RTOL32 = 1e-5

MODELS = {  # name: build(dtype), the first module's input
    "lstm-laststep-linear": lambda dtype: rc.Sequential(
        rc.LSTM(I, H, dtype=dtype, seed=1), rc.LastStep(), rc.Linear(H, OUT, dtype=dtype, seed=2)),
    "gru-bidirectional-batch-first-linear": lambda dtype: rc.Sequential(
        rc.GRU(I, H, bidirectional=True, batch_first=True, dtype=dtype, seed=1),
        rc.Linear(2 * H, OUT, dtype=dtype, seed=2)),
    "stacked-rnn-tanh-linear": lambda dtype: rc.Sequential(
        rc.RNN(I, H, num_layers=2, nonlinearity="relu", dtype=dtype, seed=1), rc.Tanh(),
        rc.Linear(H, OUT, bias=False, dtype=dtype, seed=2)),
    "embedding-two-grus-laststep-sigmoid": lambda dtype: rc.Sequential(
        rc.Embedding(VOCAB, I, dtype=dtype, seed=1), rc.GRU(I, H, reset_after=False, dtype=dtype, seed=2),
        rc.LSTM(H, H, peephole=True, dtype=dtype, seed=3), rc.ReLU(), rc.LastStep(),
        rc.Linear(H, OUT, dtype=dtype, seed=4), rc.Sigmoid()),
}
OPTIONS = {"plain": dict(), "lengths-and-states": dict(lengths=True, initial_state=True)}


def make(name, dtype=np.float32):
    model = MODELS[name](dtype)
    # weights scaled up so that the gates leave their linear range: a wrong gate order,
    # layout or bias changes the outputs visibly
    rng = np.random.default_rng(8)
    model.load_state_dict({k: rng.uniform(-1, 1, v.shape) for k, v in model.state_dict().items()})
    return model.eval()


def recurrent(model):
    return [m for m in model if isinstance(m, (rc.RNN, rc.LSTM, rc.GRU))]


def call_arguments(model, T, B, options, rng, dtype):
    """x, states (or None) and lengths (or None) of a call, and the ONNX feeds giving them."""
    layout = (B, T) if recurrent(model)[0].batch_first else (T, B)
    if isinstance(model[0], rc.Embedding):
        x = rng.integers(0, VOCAB, layout)
    else:
        x = rng.standard_normal(layout + (I,)).astype(dtype)
    feeds, states, lengths = {"x": x}, None, None
    if options.get("lengths"):
        lengths = rng.integers(1, T + 1, B)
        lengths[0] = T
        feeds["lengths"] = lengths.astype(np.int64)
    if options.get("initial_state"):
        states = []
        for k, layer in enumerate(recurrent(model)):
            shape = (layer.num_layers * layer.num_directions, B, layer.hidden_size)
            pair = [rng.standard_normal(shape).astype(dtype) for _ in range(2 if isinstance(layer, rc.LSTM) else 1)]
            feeds.update(zip((f"h0_{k}", f"c0_{k}"), pair))
            states.append(tuple(pair) if isinstance(layer, rc.LSTM) else pair[0])
    return x, states, lengths, feeds


def flat(y, finals):
    """y and every final state, in the order of the graph's outputs."""
    return [y] + [s for final in finals for s in (final if isinstance(final, tuple) else (final,))]


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("name", MODELS)
def test_export_runs_in_onnxruntime_like_rnncore(tmp_path, name, options):
    # float32 only: ONNX Runtime's CPU RNN, LSTM and GRU kernels run no float64 (1.32:
    # "does not support double yet"); float64 graphs are checked by the round trip below
    dtype = np.float32
    model = make(name, dtype)
    path = tmp_path / "model.onnx"
    rc.onnx.export(model, path, **OPTIONS[options])
    session = ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(9)
    for T, B in ((6, 4), (3, 2)):  # one session, two shapes: time and batch are dynamic
        x, states, lengths, feeds = call_arguments(model, T, B, OPTIONS[options], rng, dtype)
        expected = flat(*model(x, states, lengths))
        got = session.run(None, feeds)
        assert len(got) == len(expected)
        for output, a, b in zip(session.get_outputs(), got, expected):
            assert a.dtype == b.dtype
            assert_close(a, b, rtol=RTOL32, what=f"{name} {options} T={T} B={B} {output.name}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("name", MODELS)
def test_export_then_load_rebuilds_the_model_bit_for_bit(name, options, dtype):
    model = make(name, dtype)
    buffer = io.BytesIO()
    rc.onnx.export(model, buffer, **OPTIONS[options])
    loaded = rc.onnx.load(io.BytesIO(buffer.getvalue())).eval()
    assert type(loaded) is rc.Sequential
    assert loaded.get_config() == model.get_config()
    expected = model.state_dict()
    assert list(loaded.state_dict()) == list(expected)
    for key, value in loaded.state_dict().items():
        assert value.dtype == expected[key].dtype
        np.testing.assert_array_equal(value, expected[key], err_msg=key)
    x, states, lengths, _ = call_arguments(model, 5, 3, OPTIONS[options], np.random.default_rng(3), dtype)
    for a, b in zip(flat(*loaded(x, states, lengths)), flat(*model(x, states, lengths))):
        np.testing.assert_array_equal(a, b)


def test_a_sequential_of_one_layer_stays_a_sequential():
    model = rc.Sequential(rc.GRU(I, H, seed=0))
    loaded = rc.onnx.load(rc.onnx.export(model, io.BytesIO()))
    assert type(loaded) is rc.Sequential and type(loaded[0]) is rc.GRU
    # and a layer's own graph still loads as the layer
    assert type(rc.onnx.load(rc.onnx.export(rc.GRU(I, H, seed=0), io.BytesIO()))) is rc.GRU


def test_documented_examples_run():
    assert_examples_run(rc.onnx.export, recurse=False)
    assert_examples_run(rc.onnx.load, recurse=False)


# -- refusals: export ----------------------------------------------------------------------

class Scale:
    """A module of the user's own: Sequential runs it, ONNX has no form for it."""
    grads = {}

    def __call__(self, x):
        return 2 * x

    def backward(self, dy):
        return 2 * dy

    def parameters(self):
        return {}

    def train(self, mode=True):
        return self


class LoggedLinear(rc.Linear):
    """A subclass may compute something else: only the registered classes export."""


@pytest.mark.parametrize("modules,error,match", [
    (lambda: [rc.LSTM(I, H), Scale(), rc.Linear(H, OUT)], TypeError,
     r"modules\[1\] \(Scale\) has no ONNX form; a Sequential exports RNN, LSTM and GRU layers and Linear"),
    (lambda: [rc.LSTM(I, H), LoggedLinear(H, OUT)], TypeError, r"modules\[1\] \(LoggedLinear\) has no ONNX form"),
    (lambda: [rc.JordanRNN(I, H, OUT), rc.Linear(OUT, OUT)], ValueError,
     r"modules\[0\] \(JordanRNN\): the Jordan RNN has no ONNX operator"),
    (lambda: [rc.LSTM(I, H, proj_size=2)], ValueError, r"modules\[0\] \(LSTM\): a layer with proj_size=2"),
    (lambda: [rc.LSTM(I, H), rc.Linear(H + 1, OUT)], ValueError,
     r"modules\[1\] \(Linear\): expected input features 5 \(what modules\[0\] gives\), got 6"),
    (lambda: [rc.GRU(I, H, batch_first=True), rc.LastStep()], ValueError,
     r"modules\[1\] \(LastStep\) has batch_first=False, the modules before it batch_first=True"),
    (lambda: [rc.GRU(I, H), rc.LastStep(), rc.GRU(H, H)], ValueError,
     r"modules\[2\] \(GRU\): expected a sequence \(3 dimensions\), but the LastStep before it"),
    (lambda: [rc.GRU(I, H), rc.Linear(H, OUT, dtype=np.float64)], TypeError,
     r"modules\[1\] \(Linear\): expected dtype float32 \(as the modules before it\), got float64"),
    (lambda: [rc.GRU(I, H), rc.Embedding(VOCAB, H)], ValueError, r"expected the Embedding first"),
    (lambda: [rc.Tanh(), rc.GRU(I, H)], ValueError, r"modules\[0\] \(Tanh\): expected a first module that fixes"),
    (lambda: [rc.Linear(I, H), rc.Tanh()], ValueError, r"expected a Sequential holding an RNN, LSTM or GRU layer"),
])
def test_export_refuses_what_onnx_would_not_compute_alike(tmp_path, modules, error, match):
    path = tmp_path / "never.onnx"
    with pytest.raises(error, match=match):
        rc.onnx.export(rc.Sequential(*modules()), path)
    assert not path.exists()


# -- refusals: load ------------------------------------------------------------------------

def exported(name="lstm-laststep-linear", **options):
    return rc.onnx.export(make(name), io.BytesIO(), **options)


def node_named(model, op):
    return next(n for n in model.graph.node if n.op_type == op)


def insert_after(model, op, new_op, **attributes):
    """A node `new_op` between the `op` node's output and its users."""
    node = node_named(model, op)
    output = node.output[0]
    node.output[0] = output + "_before"
    model.graph.node.append(onnx.helper.make_node(new_op, [node.output[0]], [output], name="inserted", **attributes))
    return model


def test_load_names_a_node_no_module_computes():
    with pytest.raises(ValueError, match=r"Softmax node 'inserted' feeds the chain but is not the output of a module"):
        rc.onnx.load(insert_after(exported(), "Add", "Softmax"))
    with pytest.raises(ValueError, match=r"Abs node 'inserted' feeds the chain but is not the output of a module"):
        rc.onnx.load(insert_after(exported("stacked-rnn-tanh-linear"), "Tanh", "Abs"))


def test_load_names_an_unknown_attribute():
    model = exported()
    node_named(model, "Gather").attribute.append(onnx.helper.make_attribute("batch_dims", 1))
    with pytest.raises(ValueError, match=r"Gather node 'Gather_\d+' has attributes \['batch_dims'\]"):
        rc.onnx.load(model)
    model = exported()
    node_named(model, "MatMul").attribute.append(onnx.helper.make_attribute("transB", 1))
    with pytest.raises(ValueError, match=r"MatMul node 'MatMul_\d+' has attributes \['transB'\]"):
        rc.onnx.load(model)


def test_load_refuses_what_the_sequential_would_not_reproduce():
    model = exported()
    model.graph.node.append(onnx.helper.make_node("Neg", ["y"], ["unused"], name="dangling"))
    with pytest.raises(ValueError, match=r"Neg node 'dangling', outside the chain of modules from x to y"):
        rc.onnx.load(model)

    model = exported()
    del model.graph.output[1:]  # the LSTM's final states tell its stacked layers apart
    with pytest.raises(ValueError, match=r"final state .* of LSTM node 'LSTM_0' is not in a graph output"):
        rc.onnx.load(model)

    model = exported()
    node_named(model, "Gather").input[1] = "step"
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array(-2, dtype=np.int64), "step"))
    with pytest.raises(ValueError, match=r"gathers indices \[-2\] of shape \(\) on axis 0; a LastStep without lengths"):
        rc.onnx.load(model)

    model = exported(lengths=True)
    sub = node_named(model, "Sub")
    one = next(i for i in model.graph.initializer if i.name == sub.input[1])
    one.CopyFrom(onnx.numpy_helper.from_array(np.array(2, dtype=np.int64), one.name))
    with pytest.raises(ValueError, match=r"lengths - 2\) .*a LastStep's are lengths - 1"):
        rc.onnx.load(model)

    model = exported("embedding-two-grus-laststep-sigmoid", lengths=True)
    first_gru = node_named(model, "GRU")
    del first_gru.input[4:]  # one layer without the lengths the others take
    with pytest.raises(ValueError, match=r"lengths \['lengths'\] feed modules \[2, 4\] but not modules \[1\]"):
        rc.onnx.load(model)

    model = exported()
    model.metadata_props[0].value = "Pipeline"
    with pytest.raises(ValueError, match=r"metadata 'rnncore.model' is 'Pipeline'"):
        rc.onnx.load(model)

    model = exported()
    del model.metadata_props[:]  # without the mark it is read as a layer's graph, and refused as one
    with pytest.raises(ValueError, match=r"an rnncore layer is a chain of RNN, LSTM or GRU"):
        rc.onnx.load(model)
