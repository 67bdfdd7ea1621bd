"""ONNX export run in ONNX Runtime against rnncore itself, graphs from torch.onnx.export
loaded into rnncore against torch, export -> load round trips, and every refusal."""
import io
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

import rnncore as rc

from conftest import assert_close

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

I, H = 3, 5
# float32 on both sides, different summation orders and activation code: the project's
# float32 agreement (conftest), relative to the largest magnitude
RTOL32 = 1e-5

VARIANTS = {
    "rnn-tanh": lambda **kw: rc.RNN(I, H, **kw),
    "rnn-relu": lambda **kw: rc.RNN(I, H, nonlinearity="relu", **kw),
    "lstm": lambda **kw: rc.LSTM(I, H, **kw),
    "lstm-peephole": lambda **kw: rc.LSTM(I, H, peephole=True, **kw),
    "lstm-cifg": lambda **kw: rc.LSTM(I, H, coupled_input_forget=True, **kw),
    "lstm-peephole-cifg": lambda **kw: rc.LSTM(I, H, peephole=True, coupled_input_forget=True, **kw),
    "gru-reset-after": lambda **kw: rc.GRU(I, H, **kw),
    "gru-reset-before": lambda **kw: rc.GRU(I, H, reset_after=False, **kw),
}
STRUCTURES = {  # layer options, export options
    "one-layer": (dict(), dict()),
    "stacked-bidirectional-batch-first": (dict(num_layers=2, bidirectional=True, batch_first=True),
                                          dict(lengths=True, initial_state=True)),
    "stacked-no-bias": (dict(num_layers=3, bias=False), dict(lengths=True, initial_state=True)),
}


def make(variant, dtype=np.float32, **options):
    layer = VARIANTS[variant](dtype=dtype, seed=7, **options)
    # scale the weights up so that the gates leave their linear range and a wrong gate
    # order, a missing peephole or a misplaced bias changes the outputs visibly
    rng = np.random.default_rng(8)
    layer.load_state_dict({name: rng.uniform(-1, 1, value.shape) for name, value in layer.state_dict().items()})
    return layer.eval()


def states_of(layer, B, rng):
    rows = layer.num_layers * layer.num_directions
    shapes = [(rows, B, H)] * (2 if isinstance(layer, rc.LSTM) else 1)
    return [rng.standard_normal(s).astype(layer.dtype) for s in shapes]


def run_layer(layer, x, states=None, lengths=None):
    if states is None:
        y, final = layer(x, lengths=lengths)
    else:
        y, final = layer(x, tuple(states) if isinstance(layer, rc.LSTM) else states[0], lengths=lengths)
    return [y] + (list(final) if isinstance(layer, rc.LSTM) else [final])


def session(path):
    return ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_export_runs_in_onnxruntime_like_rnncore(tmp_path, variant, structure):
    options, export_options = STRUCTURES[structure]
    layer = make(variant, **options)
    path = tmp_path / "model.onnx"
    rc.onnx.export(layer, path, **export_options)
    sess = session(path)
    rng = np.random.default_rng(9)
    # two calls with different T and batch through one session: the axes are dynamic
    for T, B in ((6, 4), (3, 2)):
        x = rng.standard_normal((B, T, I) if layer.batch_first else (T, B, I)).astype(np.float32)
        feeds, states, lengths = {"x": x}, None, None
        if export_options.get("lengths"):
            lengths = rng.integers(1, T + 1, B)
            lengths[0] = T
            feeds["lengths"] = lengths.astype(np.int64)
        if export_options.get("initial_state"):
            states = states_of(layer, B, rng)
            feeds.update(zip(("h0", "c0"), states))
        got = sess.run(None, feeds)
        expected = run_layer(layer, x, states, lengths)
        assert [o.name for o in sess.get_outputs()] == ["y", "h_n", "c_n"][:len(expected)]
        for name, a, b in zip(("y", "h_n", "c_n"), got, expected):
            assert_close(a, b, rtol=RTOL32, what=f"{variant} {structure} T={T} B={B} {name}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_export_then_load_gives_identical_weights(tmp_path, variant, structure, dtype):
    options, export_options = STRUCTURES[structure]
    layer = make(variant, dtype=dtype, **options)
    path = tmp_path / "model.onnx"
    rc.onnx.export(layer, path, **export_options)
    loaded = rc.onnx.load(path)
    assert type(loaded) is type(layer)
    assert loaded.get_config() == layer.get_config()
    expected = layer.state_dict()
    assert set(loaded.state_dict()) == set(expected)
    for name, value in loaded.state_dict().items():
        assert value.dtype == expected[name].dtype
        np.testing.assert_array_equal(value, expected[name], err_msg=name)


# -- graphs written by torch.onnx.export ---------------------------------------------------

TORCH_MODULES = {
    "rnn-relu-bidirectional": ("RNN", dict(nonlinearity="relu", bidirectional=True, num_layers=2)),
    "lstm-stacked-bidirectional-batch-first": ("LSTM", dict(num_layers=2, bidirectional=True, batch_first=True)),
    "lstm-no-bias": ("LSTM", dict(bias=False)),
    "gru-stacked": ("GRU", dict(num_layers=2)),
    "gru-bidirectional-batch-first": ("GRU", dict(bidirectional=True, batch_first=True)),
}


@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("module", TORCH_MODULES)
def test_torch_export_loads_and_matches_torch(tmp_path, module, with_state):
    torch = pytest.importorskip("torch")
    name, options = TORCH_MODULES[module]
    torch.manual_seed(0)
    net = getattr(torch.nn, name)(I, H, **options).eval()
    T, B = 5, 3
    x = torch.randn((B, T, I) if options.get("batch_first") else (T, B, I))
    rows = options.get("num_layers", 1) * (2 if options.get("bidirectional") else 1)
    states = [torch.randn(rows, B, H) for _ in range(2 if name == "LSTM" else 1)]
    hx = (tuple(states) if name == "LSTM" else states[0]) if with_state else None
    args = (x, hx) if with_state else (x,)
    input_names = ["x"] + (["h0", "c0"][:len(states)] if with_state else [])
    path = tmp_path / "torch.onnx"
    with warnings.catch_warnings():  # the exporter's batch-size and deprecation notes
        warnings.simplefilter("ignore")
        torch.onnx.export(net, args, path, dynamo=False, opset_version=17, input_names=input_names)
    layer = rc.onnx.load(path)

    expected_config = {"num_layers": 1, "bidirectional": False, "batch_first": False, "bias": True, **options}
    for key, value in expected_config.items():
        assert layer.get_config()[key] == value, key
    # the gate reorders are exact permutations: the weights come back bit for bit
    torch_weights = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    assert set(layer.state_dict()) == set(torch_weights)
    for key, value in layer.state_dict().items():
        np.testing.assert_array_equal(value, torch_weights[key], err_msg=key)

    with torch.no_grad():
        out, final = net(*args)
    expected = [out] + (list(final) if name == "LSTM" else [final])
    got = run_layer(layer, x.numpy(), [s.numpy() for s in states] if with_state else None)
    for label, a, b in zip(("y", "h_n", "c_n"), got, expected):
        # torch's float32 LSTM runs oneDNN: the 1e-5 agreement the project states for it
        assert_close(a, b.numpy(), rtol=RTOL32, what=f"{module} {label}")


# -- refusals ----------------------------------------------------------------------------

def test_unexportable_layers_are_refused(tmp_path):
    path = tmp_path / "never.onnx"
    with pytest.raises(ValueError, match="proj_size=2 cannot be exported: the ONNX LSTM operator has no projection"):
        rc.onnx.export(rc.LSTM(I, H, proj_size=2), path)
    with pytest.raises(ValueError, match="Jordan RNN has no ONNX operator"):
        rc.onnx.export(rc.JordanRNN(I, H, 2), path)
    with pytest.raises(TypeError, match="expected an rnncore RNN, LSTM or GRU layer, got LSTMCell"):
        rc.onnx.export(rc.LSTMCell(I, H), path)
    with pytest.raises(ValueError, match="opset: expected an int >= 14"):
        rc.onnx.export(rc.GRU(I, H), path, opset=13)
    assert not path.exists()


def exported(variant="lstm", **options):
    return rc.onnx.export(make(variant, **options), io.BytesIO())


def recurrent_node(model):
    return next(n for n in model.graph.node if n.op_type in ("RNN", "LSTM", "GRU"))


def set_attribute(model, **attributes):
    node = recurrent_node(model)
    kept = [a for a in node.attribute if a.name not in attributes]
    del node.attribute[:]
    node.attribute.extend(kept + [onnx.helper.make_attribute(k, v) for k, v in attributes.items()])
    return model


@pytest.mark.parametrize("attributes,match", [
    (dict(clip=3.0), r"has clip=3.0; rnncore layers have no clip"),
    (dict(activations=["HardSigmoid", "Tanh", "Tanh"]), r"activations=\['HardSigmoid', 'Tanh', 'Tanh'\]"),
    (dict(activation_alpha=[0.5]), "has activation_alpha"),
    (dict(layout=1), r"layout=1 \(batch-major tensors\)"),
    (dict(direction="reverse"), r"direction='reverse'"),
    (dict(sparsity=1), r"attributes \['sparsity'\]"),
])
def test_load_names_unsupported_attributes(attributes, match):
    with pytest.raises(ValueError, match=match):
        rc.onnx.load(set_attribute(exported(), **attributes))


def test_load_refuses_what_a_layer_cannot_hold():
    helper = onnx.helper
    model = exported("gru-reset-after")
    model.graph.node.append(helper.make_node("MatMul", ["y", "W_l0"], ["head"], name="head"))
    with pytest.raises(ValueError, match=r"MatMul node 'head'; an rnncore layer is a chain of RNN, LSTM or GRU"):
        rc.onnx.load(model)

    model = exported("rnn-tanh")
    node = recurrent_node(model)
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.full((1, 1, H), 0.5, np.float32), "h_start"))
    node.input.extend(["", "h_start"][len(node.input) - 4:])
    with pytest.raises(ValueError, match="initial_h of RNN node .* is neither zero nor a graph input"):
        rc.onnx.load(model)

    model = exported("rnn-relu", bidirectional=True)
    with pytest.raises(ValueError, match=r"activations=\['Relu', 'Tanh'\]; .* the same in both directions"):
        rc.onnx.load(set_attribute(model, activations=["Relu", "Tanh"]))
    with pytest.raises(ValueError, match="W and R of RNN node .* hold 2 direction.*direction is 'forward'"):
        rc.onnx.load(set_attribute(model, activations=["Relu"], direction="forward"))

    model = exported("lstm", num_layers=2)
    second = [n for n in model.graph.node if n.op_type == "LSTM"][1]
    second.op_type = "GRU"
    with pytest.raises(ValueError, match=r"mixes \['GRU', 'LSTM'\] nodes"):
        rc.onnx.load(model)

    model = exported("lstm", num_layers=2)
    first, second = [n for n in model.graph.node if n.op_type == "LSTM"]
    second.input[0] = "x"
    with pytest.raises(ValueError, match="is not the output Y of LSTM node"):
        rc.onnx.load(model)

    empty = onnx.helper.make_model(onnx.helper.make_graph([], "empty", [], []))
    with pytest.raises(ValueError, match="has no RNN, LSTM or GRU node"):
        rc.onnx.load(empty)


def test_importing_rnncore_does_not_import_onnx():
    code = "import sys, rnncore; assert 'onnx' not in sys.modules and 'onnxruntime' not in sys.modules"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
