"""Reliability at the edges to other libraries: gradient clipping with a non-finite value
anywhere (against torch.nn.utils), ONNX graphs that rnncore cannot reproduce exactly
(each refused, naming the node), and Keras layers whose configuration changes the math
(each refused, naming what was given)."""
import math
import os
import re
import sys
import warnings

import numpy as np
import pytest

import rnncore as rc

from conftest import assert_close

# -- clip_grad_norm_ with NaN or Inf in any array, at any element -------------------------

CLIP_SHAPES = [(3, 2), (5,), (2, 2)]


def clip_positions():
    """(array index, flat element index) of the first, a middle and the last element of
    every array."""
    return [(a, e) for a, shape in enumerate(CLIP_SHAPES)
            for e in sorted({0, math.prod(shape) // 2, math.prod(shape) - 1})]


def grads_with(bad, where):
    rng = np.random.default_rng(5)
    grads = {f"g{a}": rng.standard_normal(shape) for a, shape in enumerate(CLIP_SHAPES)}
    array, element = where
    grads[f"g{array}"].reshape(-1)[element] = bad
    return grads


@pytest.mark.parametrize("where", clip_positions(), ids=str)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("norm_type", [math.inf, 2.0, 1.0])
def test_clip_grad_norm_sees_a_nonfinite_value_anywhere(norm_type, bad, where):
    torch = pytest.importorskip("torch")
    grads = grads_with(bad, where)
    before = {k: v.copy() for k, v in grads.items()}
    with pytest.raises(RuntimeError, match=f"total norm of order {norm_type} is (nan|inf)"):
        rc.clip_grad_norm_(grads, 1.0, norm_type, error_if_nonfinite=True)
    for name, value in grads.items():  # refused before any gradient is scaled
        np.testing.assert_array_equal(value, before[name], err_msg=name)

    params = []
    for value in grads.values():
        param = torch.zeros(value.shape, dtype=torch.float64, requires_grad=True)
        param.grad = torch.tensor(value)
        params.append(param)
    with pytest.raises(RuntimeError):  # torch refuses the same gradients
        torch.nn.utils.clip_grad_norm_(params, 1.0, norm_type, error_if_nonfinite=True)
    # without the flag: the same total (NaN wherever a NaN is) and the same scaled arrays
    expected = float(torch.nn.utils.clip_grad_norm_(params, 1.0, norm_type))
    with np.errstate(invalid="ignore"):
        total = rc.clip_grad_norm_(grads, 1.0, norm_type)
    assert math.isnan(total) == math.isnan(bad) == math.isnan(expected)
    assert total == expected or math.isnan(total)
    for value, param in zip(grads.values(), params):
        np.testing.assert_array_equal(value, param.grad.numpy())


# -- rc.onnx.load: only graphs it reproduces exactly -------------------------------------

try:
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
except ImportError:
    onnx = None
needs_onnx = pytest.mark.skipif(onnx is None, reason="needs onnx and onnxruntime")

OT, ON, OI, OH = 4, 3, 2, 3  # steps, batch, input and hidden size of the hand-built graphs
GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
RTOL32 = 1e-5  # float32 on both sides, different operation orders: the project's agreement


class Stack:
    """An ONNX graph of `num_layers` recurrent `op` nodes (named "<op>0", "<op>1", ...) over
    the time-major graph input x, written with onnx.helper the way rnncore's exporter
    writes it; each keyword replaces one piece, so that a test changes exactly one thing."""

    def __init__(self, op="LSTM", num_layers=2, D=2, *, merge=None, y_tail=None, sequence_lens=None,
                 initial_h=None, attributes=None, graph_inputs=(), opset=17):
        self.nodes, self.initializers, self.outputs = [], [], []
        self.inputs = [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), shape)
                       for name, dtype, shape in [("x", np.float32, ["T", "N", OI]), *graph_inputs]]
        self.op, self.D, self.num_layers = op, D, num_layers
        rng = np.random.default_rng(11)
        G, x = GATES[op], "x"
        for k in range(num_layers):
            width = OI if k == 0 else D * OH
            operands = [x, self.constant(f"W{k}", rng.uniform(-1, 1, (D, G * OH, width))),
                        self.constant(f"R{k}", rng.uniform(-1, 1, (D, G * OH, OH))),
                        self.constant(f"B{k}", rng.uniform(-1, 1, (D, 2 * G * OH))),
                        sequence_lens(self, k) if sequence_lens else "",
                        initial_h(self, k) if initial_h else ""]
            while not operands[-1]:
                operands.pop()
            outputs = [f"Y{k}", f"Y_h{k}"] + (["Y_c{k}".format(k=k)] if op == "LSTM" else [])
            node_attributes = dict(hidden_size=OH, direction="bidirectional" if D == 2 else "forward")
            node_attributes.update(attributes or {})
            self.nodes.append(helper.make_node(op, operands, outputs, name=f"{op.lower()}{k}", **node_attributes))
            x = (merge or Stack.transpose_reshape)(self, k, f"Y{k}")
        self.add("Identity", [y_tail(self, x) if y_tail else x], "y", "y_out")
        self.add("Concat", [f"Y_h{k}" for k in range(num_layers)], "h_n", "final_h", axis=0)
        finals = ["y", "h_n"] + (["c_n"] if op == "LSTM" else [])
        if op == "LSTM":
            self.add("Concat", [f"Y_c{k}" for k in range(num_layers)], "c_n", "final_c", axis=0)
        self.outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in finals]
        self.opset = opset

    def constant(self, name, value):
        value = np.asarray(value)
        self.initializers.append(numpy_helper.from_array(value.astype(np.float32) if value.dtype.kind == "f"
                                                         else value, name))
        return name

    def add(self, op, inputs, output, name, **attributes):
        self.nodes.append(helper.make_node(op, inputs, [output], name=name, **attributes))
        return output

    def transpose_reshape(self, k, y):
        """Y (T, D, N, H) -> (T, N, D*H), as both exporters write it."""
        tndh = self.add("Transpose", [y], f"Y{k}_TNDH", f"to_TNDH{k}", perm=[0, 2, 1, 3])
        return self.add("Reshape", [tndh, self.constant(f"shape{k}", np.array([0, 0, -1]))], f"y{k}", f"merge{k}")

    def model(self):
        graph = helper.make_graph(self.nodes, "stack", self.inputs, self.outputs, self.initializers)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])


def reshape_only(stack, k, y):  # the missing Transpose: (T, D, N, H) -> (T, D, N*H)
    return stack.add("Reshape", [y, stack.constant(f"shape{k}", np.array([0, 0, -1]))], f"y{k}", f"merge{k}")


def squeeze_axis_1(stack, k, y):
    return stack.add("Squeeze", [y, stack.constant(f"axes{k}", np.array([1]))], f"y{k}", f"squeeze{k}")


def lengths_input(name="lengths", dtype=np.int32):
    return name, dtype, ["N"]


def state_input(name, rows):
    return name, np.float32, [rows, "N", OH]


def sliced_h0(rows_of):
    """initial_h of node k: rows rows_of(k) of the graph input h0, by a Slice as both exporters write."""
    def initial_h(stack, k):
        start, stop = rows_of(k)
        bounds = [stack.constant(f"h0_{what}{k}", np.array([v])) for what, v in (("start", start), ("stop", stop),
                                                                                  ("axis", 0))]
        return stack.add("Slice", ["h0", *bounds], f"h0_l{k}", f"h0_rows{k}")
    return initial_h


def own_rows(k, D=2):
    return k * D, (k + 1) * D


def onnx_feeds(stack, lengths=False, h0=False):
    rng = np.random.default_rng(12)
    feeds = {"x": rng.standard_normal((OT, ON, OI)).astype(np.float32)}
    if lengths:
        feeds["lengths"] = np.array([OT, 2, 1][:ON], dtype=np.int32)
    if h0:
        feeds["h0"] = rng.standard_normal((stack.D * stack.num_layers, ON, OH)).astype(np.float32)
    return feeds


def assert_loads_like_onnxruntime(model, feeds):
    layer = rc.onnx.load(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    state = feeds.get("h0")
    if isinstance(layer, rc.LSTM):
        state = None if state is None else (state, np.zeros_like(state))
    y, final = layer(feeds["x"], state, lengths=feeds.get("lengths"))
    got = {"y": y, **(dict(zip(("h_n", "c_n"), final)) if isinstance(layer, rc.LSTM) else {"h_n": final})}
    for name, value in expected.items():
        assert_close(got[name], value, rtol=RTOL32, what=name)
    return layer


@needs_onnx
@pytest.mark.parametrize("op", GATES)
def test_hand_built_stacks_load_and_match_onnxruntime(op):
    # the graphs the refusal tests below change one piece of, as they are: they load
    assert_loads_like_onnxruntime(Stack(op).model(), onnx_feeds(Stack(op)))
    one_direction = Stack(op, D=1, merge=squeeze_axis_1)
    assert_loads_like_onnxruntime(one_direction.model(), onnx_feeds(one_direction))
    # lengths fed as an int32 graph input straight into sequence_lens, h0 sliced per layer
    full = Stack(op, sequence_lens=lambda s, k: "lengths", initial_h=sliced_h0(own_rows),
                 graph_inputs=[lengths_input(), state_input("h0", 4)])
    assert_loads_like_onnxruntime(full.model(), onnx_feeds(full, lengths=True, h0=True))


def slice_last_step(stack, y):
    starts, ends, axes = (stack.constant(n, np.array([v])) for n, v in (("last", -1), ("end", 2 ** 62), ("t", 0)))
    return stack.add("Slice", [y, starts, ends, axes], "y_last", "last_step")


def add_shift(stack, y):
    return stack.add("Add", [y, stack.constant("shift_by", np.ones(2 * OH))], "y_shifted", "shift")


def constant_lengths(stack, k):
    if k == 0:
        stack.constant("fixed_lengths", np.array([OT, 2, 1], dtype=np.int32))
    return "fixed_lengths"


def whole_h0(stack, k):
    return "h0"


def zero_then_h0(stack, k):
    return sliced_h0(own_rows)(stack, k) if k else ""


def transposed_output(stack, y):
    return stack.add("Transpose", [y], "y_batch_major", "to_batch_major", perm=[1, 0, 2])


def expand_nonzero(stack, k):
    return stack.add("Expand", [stack.constant(f"half{k}", np.full((1, 1, OH), 0.5)),
                                stack.constant(f"state_shape{k}", np.array([2, ON, OH]))], f"h_start{k}",
                     f"half_state{k}")


REFUSED = {  # the Stack keywords of a graph rnncore cannot reproduce -> what the error says
    "constant sequence_lens": (dict(sequence_lens=constant_lengths),
                               r"sequence_lens of LSTM node 'lstm0' is the constant \[4 2 1\]"),
    "float sequence_lens input": (dict(sequence_lens=lambda s, k: "lengths",
                                       graph_inputs=[lengths_input(dtype=np.float32)]),
                                  r"sequence_lens of LSTM node 'lstm0' comes from the graph input 'lengths', not "
                                  r"of integers"),
    "sequence_lens on one layer only": (dict(sequence_lens=lambda s, k: "lengths" if k else "",
                                             graph_inputs=[lengths_input()]),
                                        r"sequence_lens of LSTM node 'lstm1' comes from 'lengths' but that of "
                                        r"LSTM node 'lstm0' from None"),
    "Slice on Y": (dict(y_tail=slice_last_step),
                   r"graph output 'y' comes from Slice node 'last_step', which is not the output Y of LSTM node "
                   r"'lstm1' merged"),
    "Add on Y": (dict(y_tail=add_shift), r"the graph has Add node 'shift'"),
    "batch-major output of a time-major input": (dict(y_tail=transposed_output),
                                                 r"graph output 'y' is batch-major but the input is time-major"),
    "bidirectional stack without the Transpose": (dict(merge=reshape_only),
                                                  r"Reshape node 'merge0', before input X of LSTM node 'lstm1', "
                                                  r"reshapes LSTM node 'lstm0' with no Transpose between"),
    "bidirectional stack joined by nothing": (dict(merge=lambda s, k, y: y),
                                              r"input X of LSTM node 'lstm1' comes from LSTM node 'lstm0', which "
                                              r"is not the output Y of LSTM node 'lstm0' merged"),
    "bidirectional stack joined by a Squeeze": (dict(merge=squeeze_axis_1),
                                                r"input X of LSTM node 'lstm1' comes from Squeeze node 'squeeze0', "
                                                r"which is not"),
    "h0 rows of another layer": (dict(initial_h=sliced_h0(lambda k: (0, 2)), graph_inputs=[state_input("h0", 4)]),
                                 r"initial_h of LSTM node 'lstm1' takes rows \[0:2\] of the graph input 'h0'; "
                                 r"layer 1 of the stack starts from rows \[2:4\]"),
    "all of h0 in every layer": (dict(initial_h=whole_h0, graph_inputs=[state_input("h0", 2)]),
                                 r"initial_h of LSTM node 'lstm0' is the whole graph input 'h0'; a stack of 2 "
                                 r"layers takes rows \[0:2\]"),
    "h0 in one layer, zeros in another": (dict(initial_h=zero_then_h0, graph_inputs=[state_input("h0", 4)]),
                                          r"initial_h of LSTM node 'lstm1' comes from 'h0' but that of LSTM node "
                                          r"'lstm0' from None"),
    "nonzero initial state": (dict(initial_h=expand_nonzero),
                              r"initial_h of LSTM node 'lstm0' is neither zero nor a graph input"),
    "unused graph input": (dict(graph_inputs=[state_input("h_unused", 4)]),
                           r"the graph inputs \['h_unused'\] feed nothing"),
    "clip": (dict(attributes=dict(clip=10.0)), r"LSTM node 'lstm0' has clip=10.0"),
    "activation_alpha": (dict(attributes=dict(activation_alpha=[0.1] * 6)),
                         r"LSTM node 'lstm0' has activation_alpha=\[0.1"),
    "activation_beta": (dict(attributes=dict(activation_beta=[0.1] * 6)), r"LSTM node 'lstm0' has activation_beta"),
    "reverse direction": (dict(D=1, merge=squeeze_axis_1, attributes=dict(direction="reverse")),
                          r"LSTM node 'lstm0' has direction='reverse'"),
    "layout=1": (dict(attributes=dict(layout=1)), r"LSTM node 'lstm0' has layout=1"),
    "hard_sigmoid gates": (dict(attributes=dict(activations=["HardSigmoid", "Tanh", "Tanh"] * 2)),
                           r"LSTM node 'lstm0' has activations=\['HardSigmoid'"),
    "input_forget on a GRU": (dict(op="GRU", attributes=dict(input_forget=1)),
                              r"GRU node 'gru0' has attributes \['input_forget'\]"),
    "linear_before_reset on an LSTM": (dict(attributes=dict(linear_before_reset=1)),
                                       r"LSTM node 'lstm0' has attributes \['linear_before_reset'\]"),
    "opset 6": (dict(opset=6), r"imports default-domain opset 6"),
}


@needs_onnx
@pytest.mark.parametrize("case", REFUSED)
def test_load_refuses_graphs_it_cannot_reproduce(case):
    keywords, message = REFUSED[case]
    with pytest.raises(ValueError, match=message):
        rc.onnx.load(Stack(**keywords).model())


@needs_onnx
def test_load_refuses_nodes_it_does_not_consume():
    stack = Stack()
    stack.add("Transpose", ["x"], "x_unused", "stray", perm=[1, 0, 2])  # computes nothing the outputs need
    with pytest.raises(ValueError, match=r"the graph has Transpose node 'stray', outside what an rnncore layer"):
        rc.onnx.load(stack.model())

    stack = Stack()
    stack.nodes = [n for n in stack.nodes if n.name != "final_h"]
    stack.add("Concat", ["Y_h1", "Y_h0"], "h_n", "final_h", axis=0)
    with pytest.raises(ValueError, match=r"Concat node 'final_h' joins \['Y_h1', 'Y_h0'\] on axis 0; a layer's h_n "
                                         r"is \['Y_h0', 'Y_h1'\]"):
        rc.onnx.load(stack.model())

    stack = Stack()
    stack.outputs[1] = helper.make_tensor_value_info("Y_h1", TensorProto.FLOAT, None)
    stack.nodes = [n for n in stack.nodes if n.name != "final_h"]
    with pytest.raises(ValueError, match=r"graph output 'Y_h1' is the final state of LSTM node 'lstm1' alone"):
        rc.onnx.load(stack.model())

    stack = Stack()
    merge = next(n for n in stack.nodes if n.name == "merge0")
    merge.attribute.extend([helper.make_attribute("allowzero", 1)])
    with pytest.raises(ValueError, match=r"Reshape node 'merge0', before input X of LSTM node 'lstm1', reshapes to "
                                         r"\[0, 0, -1\] with allowzero=1"):
        rc.onnx.load(stack.model())


@needs_onnx
@pytest.mark.parametrize("location", ["weights.bin", "../outside.bin"])
def test_load_refuses_external_data_without_opening_it(tmp_path, location):
    """Choice: rnncore.onnx.load reads self-contained models only. A tensor kept in another
    file is refused whatever its location (inside the model's folder or not), before any
    file but the model is opened; a caller who trusts the files loads them with onnx.load
    and passes the ModelProto."""
    folder = tmp_path / "model"
    folder.mkdir()
    layer = rc.GRU(OI, OH, seed=0)
    model = rc.onnx.export(layer, folder / "inline.onnx")
    weights = next(t for t in model.graph.initializer if t.name == "W_l0")
    data = weights.raw_data
    (folder / location).write_bytes(data)  # a valid file: loading it would succeed silently
    onnx.external_data_helper.set_external_data(weights, location=location, length=len(data))
    weights.ClearField("raw_data")
    weights.data_location = TensorProto.EXTERNAL
    path = folder / "external.onnx"
    path.write_bytes(model.SerializeToString())
    opened, watching = [], [True]

    def watch(event, args):
        if watching and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            opened.append(os.fsdecode(args[0]))
    sys.addaudithook(watch)  # hooks cannot be removed: this one goes quiet after the test
    match = f"initializer 'W_l0' keeps its data in the external file '{re.escape(location)}'"
    try:
        with pytest.raises(ValueError, match=match):
            rc.onnx.load(path)
        with pytest.raises(ValueError, match=match):
            rc.onnx.load(onnx.load(path, load_external_data=False))
    finally:
        watching.clear()
    assert not [name for name in opened if name.endswith(".bin")]
    if location == "weights.bin":  # a caller who trusts the file has onnx read it inline
        trusted = rc.onnx.load(onnx.load(path))
        for name, value in layer.state_dict().items():
            np.testing.assert_array_equal(trusted.state_dict()[name], value, err_msg=name)


@needs_onnx
@pytest.mark.parametrize("version", ["1.20.1", "1.14.0", "0.9", "unknown"])
def test_onnx_older_than_1_21_is_refused(monkeypatch, tmp_path, version):
    monkeypatch.setattr(onnx, "__version__", version)
    with pytest.raises(ImportError, match=rf"rnncore.onnx needs onnx>=1.21 .*got onnx {re.escape(version)}"):
        rc.onnx.load(tmp_path / "any.onnx")
    with pytest.raises(ImportError, match="needs onnx>=1.21"):
        rc.onnx.export(rc.GRU(OI, OH), tmp_path / "any.onnx")
    monkeypatch.setattr(onnx, "__version__", "1.21.0")
    rc.onnx.export(rc.GRU(OI, OH), tmp_path / "any.onnx")
    assert isinstance(rc.onnx.load(tmp_path / "any.onnx"), rc.GRU)


TORCH_EXPORTS = {  # module, its options, export options
    "rnn-tanh-stacked-batch-first-dynamic": ("RNN", dict(num_layers=2, batch_first=True),
                                             dict(dynamic_axes={"x": {0: "batch", 1: "time"}})),
    "gru-stacked-batch-first-opset-11": ("GRU", dict(num_layers=2, batch_first=True), dict(opset_version=11)),
    "lstm-bidirectional-stacked-opset-14": ("LSTM", dict(num_layers=2, bidirectional=True), dict(opset_version=14)),
    "lstm-stacked-with-state-dynamic": ("LSTM", dict(num_layers=2), dict(dynamic_axes={"x": {1: "batch"}})),
    "gru-bidirectional-with-state": ("GRU", dict(bidirectional=True), dict()),
}


@needs_onnx
@pytest.mark.parametrize("case", TORCH_EXPORTS)
def test_torch_exports_load_and_match_onnxruntime(tmp_path, case):
    torch = pytest.importorskip("torch")
    name, options, export_options = TORCH_EXPORTS[case]
    torch.manual_seed(1)
    net = getattr(torch.nn, name)(OI, OH, **options).eval()
    batch_first = options.get("batch_first", False)
    x = torch.randn((ON, OT, OI) if batch_first else (OT, ON, OI))
    rows = options.get("num_layers", 1) * (2 if options.get("bidirectional") else 1)
    with_state = "with-state" in case
    states = [torch.randn(rows, ON, OH) for _ in range(2 if name == "LSTM" else 1)] if with_state else []
    args = (x, tuple(states) if name == "LSTM" else states[0]) if with_state else (x,)
    names = ["x"] + ["h0", "c0"][:len(states)]
    path = tmp_path / "torch.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, args, path, dynamo=False, input_names=names, **export_options)
    layer = rc.onnx.load(path)
    session = ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    feeds = dict(zip(names, [x.numpy()] + [s.numpy() for s in states]))
    expected = session.run(None, {i.name: feeds[i.name] for i in session.get_inputs()})
    hx = None
    if with_state:
        hx = tuple(feeds[n] for n in names[1:]) if name == "LSTM" else feeds["h0"]
    y, final = layer(feeds["x"], hx)
    got = [y] + (list(final) if name == "LSTM" else [final])
    for label, a, b in zip(("y", "h_n", "c_n"), got, expected):
        assert_close(a, b, rtol=RTOL32, what=f"{case} {label}")


# -- Keras layers whose configuration changes the math ------------------------------------

from test_keras import I as KI, T as KT, U as KU, keras_stack, random_keras_weights  # noqa: E402

KERAS_CLASS = {"rnn": "SimpleRNN", "lstm": "LSTM", "gru": "GRU"}


def keras3_config(kind, name=None, **changes):
    """A recurrent layer's get_config() as Keras 3 writes it (defaults of keras.layers.SimpleRNN,
    LSTM and GRU), with `changes` applied."""
    def serialized(class_name, config, module="keras.initializers"):
        return {"module": module, "class_name": class_name, "config": config, "registered_name": None}
    config = {
        "name": name or {"rnn": "simple_rnn", "lstm": "lstm", "gru": "gru"}[kind], "trainable": True,
        "dtype": serialized("DTypePolicy", {"name": "float32"}, module="keras"),
        "return_sequences": True, "return_state": False, "go_backwards": False, "stateful": False, "unroll": False,
        "zero_output_for_mask": False, "units": KU, "activation": "tanh", "use_bias": True,
        "kernel_initializer": serialized("GlorotUniform", {"seed": None}),
        "recurrent_initializer": serialized("Orthogonal", {"seed": None, "gain": 1.0}),
        "bias_initializer": serialized("Zeros", {}),
        "kernel_regularizer": None, "recurrent_regularizer": None, "bias_regularizer": None,
        "activity_regularizer": None, "kernel_constraint": None, "recurrent_constraint": None,
        "bias_constraint": None, "dropout": 0.0, "recurrent_dropout": 0.0}
    if kind != "rnn":
        config.update(recurrent_activation="sigmoid", seed=None)
    if kind == "lstm":
        config["unit_forget_bias"] = True
    if kind == "gru":
        config["reset_after"] = True
    config.update(changes)
    return config


def keras3_bidirectional(kind, merge_mode="concat", **changes):
    """Bidirectional(layer).get_config() as Keras 3 writes it: both inner layers serialised,
    the backward one reading the sequence backwards."""
    def serialized(config):
        return {"module": "keras.layers", "class_name": KERAS_CLASS[kind], "config": config,
                "registered_name": None, "build_config": {"input_shape": [None, KT, KI]}}
    forward = keras3_config(kind, name=f"forward_{kind}", **changes)
    backward = dict(forward, name=f"backward_{kind}", go_backwards=not forward["go_backwards"])
    return {"name": f"bidirectional_{kind}", "trainable": True, "dtype": forward["dtype"], "merge_mode": merge_mode,
            "layer": serialized(forward), "backward_layer": serialized(backward)}


def fake_keras_layer(class_name, config, weights):
    """An object with the two methods rnncore reads of a Keras layer (Keras is not needed)."""
    return type(class_name, (), {"get_config": lambda self: config, "get_weights": lambda self: weights})()


def keras_case(kind, num_layers=1, bidirectional=False, bias=True, activation="tanh", reset_after=True):
    weights = random_keras_weights(kind, num_layers, bidirectional, bias, reset_after, np.random.default_rng(4))
    options = dict(num_layers=num_layers, bidirectional=bidirectional, bias=bias, dtype=np.float64, seed=0)
    layer = {"rnn": lambda: rc.RNN(KI, KU, nonlinearity=activation, **options),
             "lstm": lambda: rc.LSTM(KI, KU, **options),
             "gru": lambda: rc.GRU(KI, KU, reset_after=reset_after, **options)}[kind]()
    return layer, weights


def assert_computes_like_keras(layer, weights, kind, num_layers, bidirectional, bias, activation, reset_after=True):
    x = np.random.default_rng(6).standard_normal((KT, 3, KI))
    expected, _ = keras_stack(kind, x, weights, num_layers, bidirectional, bias, activation, reset_after)
    assert_close(layer(x)[0], expected, what="y")


@pytest.mark.parametrize("form", ["config dict", "serialised dict", "layer object", "partial dict"])
@pytest.mark.parametrize("kind,activation,reset_after,bias", [
    ("rnn", "relu", True, True), ("rnn", "tanh", True, False), ("lstm", "tanh", True, True),
    ("gru", "tanh", False, True), ("gru", "tanh", True, False)])
def test_keras_config_that_rnncore_computes_loads(kind, activation, reset_after, bias, form):
    layer, weights = keras_case(kind, bias=bias, activation=activation, reset_after=reset_after)
    # unit_forget_bias, dropout, initialisers and return_sequences leave a call's math alone
    changes = dict(activation=activation, use_bias=bias, dropout=0.3, return_sequences=False,
                   **({"reset_after": reset_after} if kind == "gru" else {}),
                   **({"unit_forget_bias": False} if kind == "lstm" else {}))
    config = keras3_config(kind, **changes)
    if form == "config dict":
        rc.keras.load_weights(layer, weights, config=config)
    elif form == "serialised dict":
        rc.keras.load_weights(layer, weights, config={"class_name": KERAS_CLASS[kind], "config": config})
    elif form == "layer object":
        rc.keras.load_weights(layer, fake_keras_layer(KERAS_CLASS[kind], config, weights))
    else:
        rc.keras.load_weights(layer, *weights, config={"activation": activation})
    assert_computes_like_keras(layer, weights, kind, 1, False, bias, activation, reset_after)


def test_keras_stack_of_bidirectional_layers_loads_from_its_configs():
    layer, weights = keras_case("gru", num_layers=2, bidirectional=True)
    configs = [keras3_bidirectional("gru"), keras3_bidirectional("gru", return_sequences=False)]
    rc.keras.load_weights(layer, weights, config=configs)
    assert_computes_like_keras(layer, weights, "gru", 2, True, True, "tanh")
    # the same from layer objects: each Bidirectional lists forward then backward arrays
    again, _ = keras_case("gru", num_layers=2, bidirectional=True)
    objects = [fake_keras_layer("Bidirectional", c, weights[6 * k:6 * (k + 1)]) for k, c in enumerate(configs)]
    rc.keras.load_weights(again, objects)
    for name, value in layer.state_dict().items():
        np.testing.assert_array_equal(again.state_dict()[name], value, err_msg=name)


KERAS_REFUSED = {  # (kind, layer options, config) -> what the error says
    "SimpleRNN relu into a tanh RNN": ("rnn", {}, keras3_config("rnn", activation="relu"),
                                       r"config: got activation='relu', but this layer has nonlinearity='tanh' "
                                       r"\(build rnncore.RNN\(..., nonlinearity='relu'\)\)"),
    "SimpleRNN linear": ("rnn", {}, keras3_config("rnn", activation="linear"),
                         r"activation='linear'; rnncore's RNN computes 'tanh' or 'relu'"),
    "LSTM hard_sigmoid gates": ("lstm", {}, keras3_config("lstm", recurrent_activation="hard_sigmoid"),
                                r"recurrent_activation='hard_sigmoid'; rnncore's LSTM gates are 'sigmoid'"),
    "LSTM relu": ("lstm", {}, keras3_config("lstm", activation="relu"),
                  r"activation='relu'; rnncore's LSTM computes 'tanh' there"),
    "GRU relu": ("gru", {}, keras3_config("gru", activation="relu"),
                 r"activation='relu'; rnncore's GRU computes 'tanh' there"),
    "GRU custom activation": ("gru", {}, keras3_config("gru", activation={
        "module": "builtins", "class_name": "function", "config": "my_tanh", "registered_name": "my_tanh"}),
        r"activation=\{'module': 'builtins'"),
    "GRU reset_after mismatch": ("gru", dict(reset_after=False), keras3_config("gru"),
                                 r"reset_after=True, but this layer has reset_after=False"),
    "use_bias=False into a biased layer": ("lstm", {}, keras3_config("lstm", use_bias=False),
                                           r"use_bias=False, but this layer has bias=True"),
    "units": ("lstm", {}, keras3_config("lstm", units=KU + 1), rf"units={KU + 1}, but this layer has hidden_size"),
    "go_backwards": ("gru", {}, keras3_config("gru", go_backwards=True),
                     r"go_backwards=True; an rnncore layer reads the sequence forward"),
    "stateful": ("rnn", {}, keras3_config("rnn", stateful=True), r"stateful=True; an rnncore layer starts each call"),
    "unknown key": ("lstm", {}, keras3_config("lstm", layer_norm=True),
                    r"keys \['layer_norm'\], which rnncore cannot be sure it reproduces"),
    "an LSTM's config for a GRU": ("gru", {}, keras3_config("lstm"),
                                   r"unit_forget_bias=True, an option of a Keras LSTM, not of a GRU"),
    "a GRU class for an LSTM": ("lstm", {}, {"class_name": "GRU", "config": keras3_config("gru")},
                                r"a Keras GRU, but this layer's Keras counterpart is a LSTM"),
    "a generic keras.layers.RNN": ("lstm", {}, {"class_name": "RNN", "config": {"cell": {}}},
                                   r"a Keras RNN, but this layer's Keras counterpart is a LSTM"),
    "Bidirectional merge_mode sum": ("lstm", dict(bidirectional=True), keras3_bidirectional("lstm", "sum"),
                                     r"merge_mode='sum'; an rnncore bidirectional layer concatenates"),
    "Bidirectional of relu SimpleRNN": ("rnn", dict(bidirectional=True), keras3_bidirectional("rnn", activation="relu"),
                                        r"config\['layer'\]: got activation='relu'.*config\['backward_layer'\]: got "
                                        r"activation='relu'"),
    "Bidirectional into a one-direction layer": ("gru", {}, keras3_bidirectional("gru"),
                                                 r"got a Keras Bidirectional wrapper, but this layer has "
                                                 r"bidirectional=False"),
    "plain layer into a bidirectional layer": ("gru", dict(bidirectional=True), keras3_config("gru"),
                                               r"got a Keras (layer|GRU), but this layer has bidirectional=True"),
    "one config for a stack": ("gru", dict(num_layers=2), keras3_config("gru"),
                               r"config: expected 2 Keras layer configuration\(s\), one per layer of the stack, got 1"),
    "a stack whose first layer returns its last step": (
        "gru", dict(num_layers=2), [keras3_config("gru", return_sequences=False), keras3_config("gru")],
        r"config\[0\]: got return_sequences=False in layer 0 of 2"),
    "not a config": ("gru", {}, "relu", r"config: expected a Keras layer or its get_config\(\) dict, got str"),
}


def as_keras_layers(kind, config, weights):
    """Fake Keras layer objects holding `config` (one, or a list for a stack) and their
    share of `weights`."""
    entries = config if isinstance(config, list) else [config]
    per_layer = len(weights) // len(entries)
    objects = []
    for k, entry in enumerate(entries):
        if "class_name" in entry:
            class_name, entry = entry["class_name"], entry["config"]
        else:
            class_name = "Bidirectional" if "layer" in entry else KERAS_CLASS[kind]
        objects.append(fake_keras_layer(class_name, entry, weights[per_layer * k:per_layer * (k + 1)]))
    return objects


@pytest.mark.parametrize("case", KERAS_REFUSED)
def test_keras_config_that_changes_the_math_is_refused(case):
    kind, options, config, message = KERAS_REFUSED[case]
    layer, weights = keras_case(kind, **options)
    before = layer.state_dict()
    error = TypeError if case == "not a config" else ValueError
    with pytest.raises(error, match=message):
        rc.keras.load_weights(layer, weights, config=config)
    if not isinstance(config, str):  # the same refusal through Keras layer objects
        objects = as_keras_layers(kind, config, weights)
        with pytest.raises(error, match=message.replace("config:", "config(\\[0\\])?:")):
            rc.keras.load_weights(layer, objects if len(objects) > 1 else objects[0])
    for name, value in layer.state_dict().items():  # refused before anything changed
        np.testing.assert_array_equal(value, before[name], err_msg=name)


def test_keras_layer_objects_take_no_second_config():
    layer, weights = keras_case("rnn")
    keras_layer = fake_keras_layer("SimpleRNN", keras3_config("rnn"), weights)
    with pytest.raises(TypeError, match="config: expected None when Keras layers are passed"):
        rc.keras.load_weights(layer, keras_layer, config=keras3_config("rnn"))
