"""ONNX out and in: rnncore layers as the standard `RNN`, `LSTM` and `GRU` operators.

`export(layer, path)` writes one operator node per layer of the stack (default opset 17),
joined by the reshapes PyTorch's layout needs; `load(path)` rebuilds the layer from such a
graph, including the graphs `torch.onnx.export(..., dynamo=False)` writes for
`nn.RNN/LSTM/GRU`, and refuses by name anything it would not reproduce exactly. The
`onnx` package (1.21 or newer) is imported only when one of them is called
(`pip install 'rnncore[onnx]'`).

Graph interface of an exported layer (T and batch are dynamic):
- inputs: `x` (T, batch, I), or (batch, T, I) for a batch_first layer; with
  `lengths=True`, `lengths` int64 (batch,); with `initial_state=True`, `h0` (and `c0`
  for an LSTM) of shape (D*num_layers, batch, H), zeros when not exported;
- outputs: `y` (T, batch, D*H) or (batch, T, D*H), `h_n` (and `c_n`) (D*num_layers,
  batch, H): the layouts and numbers of calling the layer itself.

Not exportable, because the ONNX operators cannot compute them: LSTM with projection
(proj_size > 0) and the Jordan RNN. Dropout is a training-time operation and is not
exported. A bias=False layer is exported without the optional bias input.
"""
import re

import numpy as np

from .._version import __version__
from ..core import validate
from ..core.layers import GRU, LSTM, RNN, _Recurrent
from ..core.spec import FEATURES, KIND_NAMES, layer_suffix
from ._gates import ONNX_GATES, from_native, to_native

__all__ = ["export", "load", "OPSET"]

OPSET = 17
_OPERATORS = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}
# the variant features (core/spec.py FEATURES) each operator computes: RNN's Relu
# activation, LSTM's peephole input P and input_forget=1, GRU's linear_before_reset=1; a
# feature missing here is refused
_EXPRESSIBLE = {"rnn": {"relu"}, "lstm": {"peephole", "coupled_input_forget"}, "gru": {"reset_after"}}
_KINDS = {op: kind for kind, op in _OPERATORS.items()}
_ACTIVATIONS = {"tanh": "Tanh", "relu": "Relu"}
# the non-recurrent operators that a graph of one stacked layer may hold: layout changes
# and the shape arithmetic around them, as rnncore's and PyTorch's exporters write them
_GLUE = ("Transpose", "Reshape", "Squeeze", "Unsqueeze", "Identity", "Concat", "Slice", "Gather",
         "Shape", "Constant", "ConstantOfShape", "Expand", "Cast")
# onnx releases before this one have known external-data vulnerabilities (a symlink lets
# a location escape the model's folder; external-data keys overwrite the loader's
# attributes): they are refused whatever rnncore.onnx is asked to do
MIN_ONNX = (1, 21)


def _onnx():
    try:
        import onnx  # the package, not this module: imports are absolute
    except ImportError as exc:
        raise ImportError("rnncore.onnx needs the onnx package: pip install 'rnncore[onnx]'") from exc
    version = getattr(onnx, "__version__", "")
    found = re.match(r"(\d+)\.(\d+)", version)
    if found is None or tuple(map(int, found.groups())) < MIN_ONNX:
        minimum = ".".join(map(str, MIN_ONNX))
        raise ImportError(f"rnncore.onnx needs onnx>={minimum} (earlier versions have known external-data "
                          f"vulnerabilities), got onnx {version or 'of unknown version'}: "
                          f"pip install 'onnx>={minimum}'")
    return onnx


# -- export -----------------------------------------------------------------------------

def _exportable(layer):
    if not isinstance(layer, _Recurrent):
        raise TypeError(f"rnncore.onnx.export: expected an rnncore RNN, LSTM or GRU layer, got {type(layer).__name__}")
    spec = layer.specs[0]
    if spec.kind not in _OPERATORS:
        raise ValueError(f"rnncore.onnx.export: the {KIND_NAMES[spec.kind]} has no ONNX operator (ONNX's "
                         f"{', '.join(_OPERATORS.values())} operators feed back the hidden state, not an output); "
                         f"it cannot be exported")
    extras = spec.unsupported(_EXPRESSIBLE[spec.kind])
    if extras:
        raise ValueError(f"rnncore.onnx.export: a layer with {', '.join(spec.option(name) for name in extras)} "
                         f"cannot be exported: the ONNX {_OPERATORS[spec.kind]} operator has no "
                         f"{' and no '.join(FEATURES[name] for name in extras)}")
    return spec


def _onnx_weights(layer, k):
    """W, R, B (or None), P (or None) of layer k as the ONNX operator takes them."""
    spec = layer.specs[k]
    W, R, B, P = [], [], [], []
    for d, params in enumerate(layer._direction_params(k)):
        W.append(from_native(params["weight_ih"], spec, ONNX_GATES))
        R.append(from_native(params["weight_hh"], spec, ONNX_GATES))
        if spec.bias:
            B.append(np.concatenate([from_native(params[name], spec, ONNX_GATES) for name in ("bias_ih", "bias_hh")]))
        if spec.peephole:
            # P holds i, o, f; a coupled LSTM has no forget peephole and ORT ignores that block
            forget = params.get("weight_cf", np.zeros_like(params["weight_ci"]))
            P.append(np.concatenate([params["weight_ci"], params["weight_co"], forget]))
    return np.stack(W), np.stack(R), np.stack(B) if B else None, np.stack(P) if P else None


def _operator_attributes(spec, num_directions):
    attributes = dict(hidden_size=spec.hidden_size,
                      direction="bidirectional" if num_directions == 2 else "forward")
    if spec.kind == "rnn":
        attributes["activations"] = [_ACTIVATIONS[spec.nonlinearity]] * num_directions
    elif spec.kind == "lstm":
        attributes["input_forget"] = int(spec.coupled_input_forget)
    else:
        attributes["linear_before_reset"] = int(spec.reset_after)
    return attributes


def export(layer, path, *, initial_state=False, lengths=False, opset=OPSET):
    """Write `layer` as an ONNX model: one RNN, LSTM or GRU node per layer of the stack,
    with the graph interface of the module's docstring.

    Parameters
    ----------
    layer : rc.RNN, rc.LSTM or rc.GRU
        The layer, float32 or float64; its weights are written as they are now.
    path : str, os.PathLike or writable binary file
        Where the model goes.
    initial_state : bool, default False
        Add the graph inputs h0 (and c0 for an LSTM), (D*num_layers, batch, H);
        without them the states start at zero.
    lengths : bool, default False
        Add the graph input `lengths`, int64 (batch,), with rnncore's semantics: zeros
        past each sequence's end, h_n from its last valid step.
    opset : int, default OPSET (17)
        The default-domain opset, 14 or newer (the operators' current form).

    Returns
    -------
    onnx.ModelProto
        The model written.

    Raises
    ------
    TypeError
        `layer` is not an rnncore RNN, LSTM or GRU.
    ValueError
        A layer the ONNX operators cannot compute (proj_size > 0, the Jordan RNN, a
        variant they lack), naming it; an opset below 14.
    ImportError
        The onnx package (1.21 or newer) is missing.

    Examples
    --------
    >>> import os, tempfile, numpy as np, onnxruntime, rnncore as rc
    >>> path = os.path.join(tempfile.mkdtemp(), "gru.onnx")
    >>> gru = rc.GRU(3, 4, num_layers=2, seed=0)
    >>> _ = rc.onnx.export(gru, path)
    >>> session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    >>> x = np.ones((5, 2, 3), dtype=np.float32)
    >>> y, h_n = session.run(["y", "h_n"], {"x": x})
    >>> y.shape, h_n.shape, bool(np.allclose(y, gru(x)[0], atol=1e-5))
    ((5, 2, 4), (2, 2, 4), True)
    """
    spec0 = _exportable(layer)
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < 14:
        raise ValueError(f"opset: expected an int >= 14 (the RNN operators' current version), got {opset!r}")
    onnx = _onnx()
    from onnx import TensorProto, helper, numpy_helper

    D, H = layer.num_directions, layer.hidden_size
    element = helper.np_dtype_to_tensor_dtype(layer.dtype)
    lstm = spec0.kind == "lstm"
    state_names = ("h0", "c0") if lstm else ("h0",)
    nodes, initializers = [], []

    def constant(name, value):
        initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(op, inputs, outputs, **attributes):
        nodes.append(helper.make_node(op, inputs, outputs, name=f"{op}_{len(nodes)}", **attributes))
        return outputs[0]

    batch_time = ["batch", "time"] if layer.batch_first else ["time", "batch"]
    inputs = [helper.make_tensor_value_info("x", element, batch_time + [layer.input_size])]
    x = "x"
    if layer.batch_first:
        # ORT refuses the operators' layout=1, so the graph transposes around them
        x = node("Transpose", ["x"], ["x_time_major"], perm=[1, 0, 2])
    sequence_lens = ""
    if lengths:
        inputs.append(helper.make_tensor_value_info("lengths", TensorProto.INT64, ["batch"]))
        sequence_lens = node("Cast", ["lengths"], ["sequence_lens"], to=TensorProto.INT32)
    if initial_state:
        inputs += [helper.make_tensor_value_info(name, element, [D * layer.num_layers, "batch", H])
                   for name in state_names]
    merge_directions = constant("shape_T_N_DH", np.array([0, 0, -1], dtype=np.int64))
    # only graphs that slice h0/c0 need the axis, and ORT warns about unused initializers
    axis0 = constant("axis_0", np.array([0], dtype=np.int64)) if initial_state else None

    finals = {name: [] for name in state_names}
    for k, spec in enumerate(layer.specs):
        W, R, B, P = _onnx_weights(layer, k)
        operands = [x, constant(f"W_l{k}", W), constant(f"R_l{k}", R),
                    constant(f"B_l{k}", B) if B is not None else "", sequence_lens]
        for name in state_names:
            if initial_state:  # this layer's rows of h0/c0, layer-major as in PyTorch
                rows = [constant(f"{name}_rows_l{k}_{e}", np.array([e], dtype=np.int64)) for e in (k * D, (k + 1) * D)]
                operands.append(node("Slice", [name, *rows, axis0], [f"{name}_l{k}"]))
            else:
                operands.append("")
        if P is not None:
            operands.append(constant(f"P_l{k}", P))
        while not operands[-1]:
            operands.pop()
        outputs = [f"Y_l{k}", f"Y_h_l{k}"] + ([f"Y_c_l{k}"] if lstm else [])
        node(_OPERATORS[spec.kind], operands, outputs, **_operator_attributes(spec, D))
        for name, output in zip(state_names, outputs[1:]):
            finals[name].append(output)
        # Y is [T, D, N, H]; PyTorch's layout, and the next layer's input, is [T, N, D*H]
        y_tndh = node("Transpose", [f"Y_l{k}"], [f"Y_l{k}_TNDH"], perm=[0, 2, 1, 3])
        x = node("Reshape", [y_tndh, merge_directions], [f"y_l{k}"])
    if layer.batch_first:
        node("Transpose", [x], ["y"], perm=[1, 0, 2])
    else:
        node("Identity", [x], ["y"])
    outputs = [helper.make_tensor_value_info("y", element, batch_time + [layer.output_width])]
    for name, parts in finals.items():
        final = name[0] + "_n"
        node("Concat", parts, [final], axis=0)
        outputs.append(helper.make_tensor_value_info(final, element, [D * layer.num_layers, "batch", H]))

    graph = helper.make_graph(nodes, f"rnncore_{type(layer).__name__}", inputs, outputs, initializers)
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="rnncore", producer_version=__version__)
    # the oldest IR version that carries this opset, so that older runtimes read the file
    model.ir_version = helper.find_min_ir_version_for(opsets)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return model


# -- load -------------------------------------------------------------------------------
#
# `load` recognises exactly the graphs the two exporters write and refuses the rest. Every
# node it reads is recorded as accounted for while the graph is matched against that shape;
# a node or graph input left over at the end would compute something the layer does not,
# so it is refused by name rather than dropped.

# the operators that may compute the shape of a zero initial state: they decide how many
# zeros there are, never their values
_SHAPE_ARITHMETIC = ("Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Cast", "Slice", "Reshape", "Identity",
                     "Constant")
_MAX_INPUTS = {"RNN": 6, "GRU": 6, "LSTM": 8}
_MAX_OUTPUTS = {"RNN": 2, "GRU": 2, "LSTM": 3}


class _Graph:
    """The facts about a graph that `load` needs (producers, constants, graph inputs),
    and which nodes the recognised layer has accounted for."""

    def __init__(self, graph, onnx):
        self.numpy_helper, self.helper = onnx.numpy_helper, onnx.helper
        self.initializers = {init.name: init for init in graph.initializer}
        self.producers = {output: node for node in graph.node for output in node.output if output}
        self.inputs = [value.name for value in graph.input if value.name not in self.initializers]
        self.input_types = {value.name: value.type.tensor_type.elem_type for value in graph.input}
        self.integer_types = {getattr(onnx.TensorProto, name) for name in
                              ("INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64")}
        self.taken = set()

    def take(self, node):
        self.taken.add(id(node))

    def producer(self, name):
        return self.producers.get(name)

    def through_identity(self, name):
        while (node := self.producers.get(name)) is not None and node.op_type == "Identity":
            self.take(node)
            name = node.input[0]
        return name

    def constant(self, name):
        """The value of `name` when an initializer or a Constant node holds it, else None."""
        name = self.through_identity(name)
        if name in self.initializers:
            return self.numpy_helper.to_array(self.initializers[name])
        node = self.producers.get(name)
        if node is not None and node.op_type == "Constant" and [a.name for a in node.attribute] == ["value"]:
            self.take(node)
            return self.numpy_helper.to_array(node.attribute[0].t)
        return None

    def ints(self, node, position, attribute):
        """An integer-list operand, a constant input in newer opsets or an attribute in
        older ones (Squeeze axes, Slice starts...); None when absent."""
        if len(node.input) > position and node.input[position]:
            value = self.constant(node.input[position])
            if value is None:
                raise ValueError(f"rnncore.onnx.load: input {position} of {_describe(node)} is computed in the "
                                 f"graph; only a constant is understood there")
        else:
            value = self.attributes(node).get(attribute)
        return None if value is None else [int(v) for v in np.ravel(value)]

    def attributes(self, node):
        values = {a.name: self.helper.get_attribute_value(a) for a in node.attribute}
        return {name: (value.decode() if isinstance(value, bytes) else
                       [v.decode() if isinstance(v, bytes) else v for v in value] if isinstance(value, list) else value)
                for name, value in values.items()}

    def describe_value(self, name):
        node = self.producers.get(name)
        if node is not None:
            return _describe(node)
        if name in self.initializers:
            return f"the initializer {name!r}"
        return f"the graph input {name!r}" if name in self.inputs else f"the undefined value {name!r}"


def _describe(node):
    return f"{node.op_type} node {node.name!r}" if node.name else f"{node.op_type} node producing {node.output[0]!r}"


def _refuse_external_data(model, onnx):
    """rnncore reads self-contained models only: a tensor stored in another file is
    refused before anything opens it, wherever its location points."""
    tensors = [(f"initializer {t.name!r}", t) for t in model.graph.initializer]
    tensors += [(f"sparse initializer {s.values.name!r}", s.values) for s in model.graph.sparse_initializer]
    for node in model.graph.node:
        for attribute in node.attribute:
            held = list(attribute.tensors) + ([attribute.t] if attribute.HasField("t") else []) \
                + ([attribute.sparse_tensor.values] if attribute.HasField("sparse_tensor") else [])
            tensors += [(f"attribute {attribute.name!r} of {_describe(node)}", t) for t in held]
    for label, tensor in tensors:
        if tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.external_data):
            location = {entry.key: entry.value for entry in tensor.external_data}.get("location")
            raise ValueError(f"rnncore.onnx.load: {label} keeps its data in the external file {location!r}; "
                             f"rnncore.onnx.load reads only self-contained models and opens no other file (if "
                             f"you trust that file, load the model with onnx.load and pass the ModelProto)")


def _variant(node, attributes, num_directions):
    """The rnncore options that reproduce one recurrent node's attributes, or a
    ValueError naming the attribute that no rnncore layer computes."""
    where = f"rnncore.onnx.load: {_describe(node)}"
    allowed = {"hidden_size", "direction", "activations", "layout", "clip", "activation_alpha", "activation_beta",
               {"LSTM": "input_forget", "GRU": "linear_before_reset"}.get(node.op_type, "")}
    unknown = sorted(set(attributes) - allowed)
    if unknown:
        raise ValueError(f"{where} has attributes {unknown}, which the {node.op_type} operator rnncore reads "
                         f"does not have")
    for name in ("clip", "activation_alpha", "activation_beta"):
        if name in attributes:
            raise ValueError(f"{where} has {name}={attributes[name]!r}; rnncore layers have no {name} "
                             f"(only graphs without it load)")
    if attributes.get("layout", 0) != 0:
        raise ValueError(f"{where} has layout={attributes['layout']} (batch-major tensors); only layout=0 loads "
                         f"(as ONNX Runtime, which refuses layout=1; transpose around the node instead)")
    direction = attributes.get("direction", "forward")
    if direction not in ("forward", "bidirectional"):
        raise ValueError(f"{where} has direction={direction!r}; rnncore layers run 'forward' or 'bidirectional'")
    defaults = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"]}
    given = attributes.get("activations")
    variant = {}
    if node.op_type == "RNN":
        given = given or ["Tanh"] * num_directions
        names = {v: k for k, v in _ACTIVATIONS.items()}
        if len(given) != num_directions or len(set(given)) != 1 or given[0] not in names:
            raise ValueError(f"{where} has activations={given}; rnncore's RNN runs Tanh or Relu, the same in "
                             f"both directions, one name per direction")
        variant["nonlinearity"] = names[given[0]]
    elif given is not None and given != defaults[node.op_type] * num_directions:
        raise ValueError(f"{where} has activations={given}; rnncore's {node.op_type} runs only the defaults "
                         f"{defaults[node.op_type]} per direction")
    if node.op_type == "LSTM":
        variant["coupled_input_forget"] = bool(attributes.get("input_forget", 0))
    if node.op_type == "GRU":
        variant["reset_after"] = bool(attributes.get("linear_before_reset", 0))
    return variant


def _operand(graph, node, index, role):
    """A constant input of a recurrent node, or None when absent."""
    if len(node.input) <= index or not node.input[index]:
        return None
    value = graph.constant(node.input[index])
    if value is None:
        raise ValueError(f"rnncore.onnx.load: input {role} ({node.input[index]!r}) of {_describe(node)} is computed "
                         f"in the graph or fed at run time; rnncore reads weights only from initializers and "
                         f"Constant nodes")
    return value


def _expect_perm(graph, node, perm, what):
    given = graph.attributes(node).get("perm")
    if given is None or list(given) != perm:
        raise ValueError(f"rnncore.onnx.load: {_describe(node)} permutes {what} by {given}; only {perm} is "
                         f"understood there")


def _stack_input(graph, node):
    """The graph input feeding X of the first recurrent node, and whether it arrives
    batch-major through a Transpose (a batch_first layer)."""
    name = graph.through_identity(node.input[0])
    transposed = False
    producer = graph.producer(name)
    if producer is not None and producer.op_type == "Transpose":
        _expect_perm(graph, producer, [1, 0, 2], "the input")
        graph.take(producer)
        name, transposed = graph.through_identity(producer.input[0]), True
    if name not in graph.inputs:
        raise ValueError(f"rnncore.onnx.load: input X of {_describe(node)} comes from {graph.describe_value(name)}, "
                         f"not from a graph input (through at most a Transpose with perm [1, 0, 2])")
    return name, transposed


def _merged_output(graph, name, previous, D, H, role):
    """Check that `name` is Y (T, D, N, H) of the node `previous` merged into PyTorch's
    (T, N, D*H): a Transpose with perm [0, 2, 1, 3] then a Reshape to [0, 0, -1] (both
    exporters), or a Squeeze of axis 1 for one direction (PyTorch's)."""
    expected = (f"the output Y of {_describe(previous)} merged into (T, N, D*H) by a Transpose with perm "
                f"[0, 2, 1, 3] and a Reshape to [0, 0, -1]" + (", or by a Squeeze of axis 1" if D == 1 else ""))
    name = graph.through_identity(name)
    node = graph.producer(name)
    if node is not None and node.op_type == "Squeeze" and D == 1:
        axes = graph.ints(node, 1, "axes")
        if axes not in ([1], [-3]):
            raise ValueError(f"rnncore.onnx.load: {_describe(node)}, before {role}, squeezes axes {axes}; expected "
                             f"{expected}")
        graph.take(node)
        source = graph.through_identity(node.input[0])
    elif node is not None and node.op_type == "Reshape":
        shape = graph.ints(node, 1, "shape")
        if shape is None or len(shape) != 3 or shape[:2] != [0, 0] or shape[2] not in (-1, D * H) \
                or graph.attributes(node).get("allowzero", 0):
            raise ValueError(f"rnncore.onnx.load: {_describe(node)}, before {role}, reshapes to {shape}"
                             f"{' with allowzero=1' if graph.attributes(node).get('allowzero', 0) else ''}; "
                             f"expected {expected}")
        inner = graph.through_identity(node.input[0])
        transpose = graph.producer(inner)
        if transpose is None or transpose.op_type != "Transpose":
            raise ValueError(f"rnncore.onnx.load: {_describe(node)}, before {role}, reshapes "
                             f"{graph.describe_value(inner)} with no Transpose between; expected {expected}")
        _expect_perm(graph, transpose, [0, 2, 1, 3], "Y")
        graph.take(node)
        graph.take(transpose)
        source = graph.through_identity(transpose.input[0])
    else:
        raise ValueError(f"rnncore.onnx.load: {role} comes from {graph.describe_value(name)}, which is not "
                         f"{expected}")
    if not source or source != previous.output[0]:
        raise ValueError(f"rnncore.onnx.load: {role} comes from {graph.describe_value(source)}, which is not "
                         f"{expected}")


def _shape_arithmetic(graph, name, user):
    """Account for the nodes computing the shape input `name` of the zero state `user`."""
    if name in graph.initializers:
        return
    node = graph.producer(name)
    if node is None:
        raise ValueError(f"rnncore.onnx.load: the shape of the zero initial state {_describe(user)} comes from "
                         f"{graph.describe_value(name)}; only shape arithmetic on the graph's own tensors is "
                         f"understood there")
    if node.op_type not in _SHAPE_ARITHMETIC:
        raise ValueError(f"rnncore.onnx.load: {_describe(node)} computes the shape of the zero initial state "
                         f"{_describe(user)}; only {', '.join(_SHAPE_ARITHMETIC)} are understood there")
    graph.take(node)
    if node.op_type != "Shape":  # a Shape reads its input's shape, never its values
        for operand in node.input:
            if operand:
                _shape_arithmetic(graph, operand, user)


def _state_source(graph, name, where):
    """("zero", None) for a tensor of zeros, ("input", graph input name, rows) for a graph
    input or rows (start, stop) of its first axis; else a ValueError."""
    name = graph.through_identity(name)
    node = graph.producer(name)
    value = graph.constant(name)
    if value is not None:
        if np.any(value):
            raise ValueError(f"{where} is neither zero nor a graph input; an rnncore layer takes its initial "
                             f"state when called and stores none (it is the constant "
                             f"{np.array2string(np.ravel(value), threshold=6)})")
        return "zero", None, None
    if name in graph.inputs:
        return "input", name, None
    if node is not None and node.op_type == "ConstantOfShape":
        fill = graph.attributes(node).get("value")
        if fill is None or not np.any(graph.numpy_helper.to_array(fill)):
            graph.take(node)
            _shape_arithmetic(graph, node.input[0], node)
            return "zero", None, None
    if node is not None and node.op_type == "Expand":
        kind, _, _ = _state_source(graph, node.input[0], where)
        if kind == "zero":
            graph.take(node)
            _shape_arithmetic(graph, node.input[1], node)
            return "zero", None, None
    if node is not None and node.op_type == "Slice":
        starts, ends = graph.ints(node, 1, "starts"), graph.ints(node, 2, "ends")
        axes, steps = graph.ints(node, 3, "axes") or [0], graph.ints(node, 4, "steps") or [1]
        if len(starts) != 1 or len(ends) != 1 or axes not in ([0], [-3]) or steps != [1]:
            raise ValueError(f"{where} comes from {_describe(node)}, which slices starts {starts}, ends {ends}, "
                             f"axes {axes}, steps {steps}; only one range of rows (axis 0, step 1) is understood")
        kind, source, rows = _state_source(graph, node.input[0], where)
        if rows is not None:
            raise ValueError(f"{where} comes from {_describe(node)}, a slice of a slice; only one slice of a "
                             f"graph input is understood")
        graph.take(node)
        return kind, source, None if kind == "zero" else (starts[0], ends[0])
    raise ValueError(f"{where} comes from {graph.describe_value(name)}, which is neither zero nor a graph input; "
                     f"an rnncore layer takes its initial state when called and stores none")


def _initial_state(graph, node, index, role, k, D, num_layers):
    """None for a zero initial state, else the graph input whose rows k*D to (k+1)*D (a
    layer's h0 or c0, layer-major) the k-th node starts from."""
    if len(node.input) <= index or not node.input[index]:
        return None
    where = f"rnncore.onnx.load: {role} of {_describe(node)}"
    kind, source, rows = _state_source(graph, node.input[index], where)
    if kind == "zero":
        return None
    if rows is None and num_layers > 1:
        raise ValueError(f"{where} is the whole graph input {source!r}; a stack of {num_layers} layers takes "
                         f"rows [{k * D}:{(k + 1) * D}] of it for this layer")
    if rows is not None and tuple(rows) != (k * D, (k + 1) * D):
        raise ValueError(f"{where} takes rows [{rows[0]}:{rows[1]}] of the graph input {source!r}; layer {k} of "
                         f"the stack starts from rows [{k * D}:{(k + 1) * D}]")
    return source


def _sequence_lens(graph, node):
    """The graph input (of integers) that sequence_lens of `node` comes from, directly or
    through a Cast; None when absent. A constant or computed one is refused."""
    if len(node.input) <= 4 or not node.input[4]:
        return None
    name = graph.through_identity(node.input[4])
    producer = graph.producer(name)
    cast = producer is not None and producer.op_type == "Cast"
    if cast:
        name = graph.through_identity(producer.input[0])
    value = graph.constant(name)
    if value is not None:
        raise ValueError(f"rnncore.onnx.load: sequence_lens of {_describe(node)} is the constant "
                         f"{np.array2string(np.ravel(value), threshold=6)}; an rnncore layer takes its lengths "
                         f"when called and stores none (make them a graph input)")
    integer = graph.input_types.get(name) in graph.integer_types
    if name not in graph.inputs or not integer:
        what = graph.describe_value(name) + ("" if integer or name not in graph.inputs else ", not of integers")
        raise ValueError(f"rnncore.onnx.load: sequence_lens of {_describe(node)} comes from {what}; only a graph "
                         f"input of integers (the layer's lengths), directly or through a Cast, is understood")
    if cast:
        graph.take(producer)
    return name


def _output_role(graph, name, recurrent, D, H, batch_first):
    """Which of the layer's outputs the graph output `name` is: "y", "h_n" or "c_n"."""
    origin = graph.through_identity(name)
    node = graph.producer(origin)
    finals = {role: [n.output[position] if len(n.output) > position else "" for n in recurrent]
              for role, position in (("h_n", 1), ("c_n", 2))}
    for role, parts in finals.items():
        if origin and origin in parts:
            if len(recurrent) == 1:
                return role
            raise ValueError(f"rnncore.onnx.load: graph output {name!r} is the final state of "
                             f"{_describe(recurrent[parts.index(origin)])} alone; a layer's {role} holds the "
                             f"final states of all its layers, joined by a Concat on axis 0")
        if node is not None and node.op_type == "Concat" and set(node.input) & set(parts) - {""}:
            if list(node.input) != parts or graph.attributes(node).get("axis") != 0:
                raise ValueError(f"rnncore.onnx.load: {_describe(node)} joins {list(node.input)} on axis "
                                 f"{graph.attributes(node).get('axis')}; a layer's {role} is {parts} on axis 0")
            graph.take(node)
            return role
    transposed = node is not None and node.op_type == "Transpose" \
        and list(graph.attributes(node).get("perm") or []) == [1, 0, 2]
    if transposed:
        graph.take(node)
        origin = graph.through_identity(node.input[0])
    _merged_output(graph, origin, recurrent[-1], D, H, f"graph output {name!r}")
    if transposed != batch_first:
        layouts = ("time-major", "batch-major")
        raise ValueError(f"rnncore.onnx.load: graph output {name!r} is {layouts[transposed]} but the input is "
                         f"{layouts[batch_first]}; an rnncore layer returns y in its input's layout")
    return "y"


def load(source, *, backend=None):
    """The rnncore layer equivalent to an ONNX graph of chained RNN, LSTM or GRU nodes,
    one per stacked layer, as rnncore's `export` and PyTorch's
    `torch.onnx.export(..., dynamo=False)` write them.

    The graph inputs are the layer's call arguments (x; optionally lengths as
    sequence_lens, h0 and c0) and its outputs any of y, h_n and c_n.

    Parameters
    ----------
    source : str, os.PathLike, readable binary file or onnx.ModelProto
        The model.
    backend : str, optional
        The new layer's backend, "cython", "numba" or "numpy"; None follows
        `rnncore.set_backend`.

    Returns
    -------
    rc.RNN, rc.LSTM or rc.GRU
        A layer of the graph's structure (layers, directions, sizes, variant,
        batch_first, dtype) holding its weights, in training mode.

    Raises
    ------
    ValueError
        Anything the layer would not reproduce exactly, naming the node, input or
        attribute: other operators or extra nodes (a Slice or Add on an output),
        constant sequence_lens or a nonzero constant initial state, layout operators
        other than the exporters' (a missing Transpose between bidirectional layers),
        clip, non-default activations, layout=1, direction='reverse', an opset below 7;
        an unknown backend. Models keeping tensors in external files are refused before
        any file but the model is opened.
    TypeError
        Weights of a dtype other than float32 or float64, or of two dtypes.
    ImportError
        The onnx package (1.21 or newer) is missing.

    Examples
    --------
    >>> import os, tempfile, numpy as np, rnncore as rc
    >>> path = os.path.join(tempfile.mkdtemp(), "lstm.onnx")
    >>> lstm = rc.LSTM(3, 4, bidirectional=True, seed=0)
    >>> _ = rc.onnx.export(lstm, path)
    >>> again = rc.onnx.load(path)
    >>> again
    LSTM(3, 4, bidirectional=True)
    >>> x = np.ones((5, 2, 3), dtype=np.float32)
    >>> bool(np.array_equal(again(x)[0], lstm(x)[0]))
    True
    """
    onnx = _onnx()
    if isinstance(source, onnx.ModelProto):
        model = source
    else:
        # never let onnx follow a tensor's external-data location: the model is all we read
        model = onnx.load(source, load_external_data=False)
    _refuse_external_data(model, onnx)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or opset < 7:
        raise ValueError(f"rnncore.onnx.load: the model imports default-domain opset {opset}; the RNN, LSTM "
                         f"and GRU operators rnncore reads are those of opset 7 and newer")
    graph = _Graph(model.graph, onnx)
    nodes = list(model.graph.node)

    foreign = [n for n in nodes if n.domain not in ("", "ai.onnx")
               or n.op_type not in _GLUE and n.op_type not in _KINDS]
    if foreign:
        raise ValueError(f"rnncore.onnx.load: the graph has {', '.join(_describe(n) for n in foreign[:5])}"
                         f"{' and more' if len(foreign) > 5 else ''}; an rnncore layer is a chain of RNN, LSTM or GRU "
                         f"nodes joined only by layout operators ({', '.join(_GLUE)})")
    recurrent = [n for n in nodes if n.op_type in _KINDS]
    if not recurrent:
        raise ValueError("rnncore.onnx.load: the graph has no RNN, LSTM or GRU node")
    operators = sorted({n.op_type for n in recurrent})
    if len(operators) > 1:
        raise ValueError(f"rnncore.onnx.load: the graph mixes {operators} nodes; an rnncore layer stacks one cell type")
    for node in recurrent:
        graph.take(node)

    x, batch_first = _stack_input(graph, recurrent[0])
    layers, states, lengths = [], {"initial_h": [], "initial_c": []}, []
    for k, node in enumerate(recurrent):
        if len(node.input) > _MAX_INPUTS[node.op_type] or len(node.output) > _MAX_OUTPUTS[node.op_type]:
            raise ValueError(f"rnncore.onnx.load: {_describe(node)} has {len(node.input)} inputs and "
                             f"{len(node.output)} outputs; the {node.op_type} operator takes at most "
                             f"{_MAX_INPUTS[node.op_type]} and {_MAX_OUTPUTS[node.op_type]}")
        W = _operand(graph, node, 1, "W")
        R = _operand(graph, node, 2, "R")
        if W is None or R is None or W.ndim != 3 or R.ndim != 3:
            raise ValueError(f"rnncore.onnx.load: {_describe(node)} needs 3-d constant W and R, got "
                             f"{None if W is None else W.shape} and {None if R is None else R.shape}")
        D, H = R.shape[0], R.shape[2]
        attributes = graph.attributes(node)
        direction = attributes.get("direction", "forward")
        if direction in ("forward", "bidirectional") and D != (2 if direction == "bidirectional" else 1):
            raise ValueError(f"rnncore.onnx.load: W and R of {_describe(node)} hold {D} direction(s), "
                             f"but its direction is {direction!r}")
        variant = _variant(node, attributes, D)
        if attributes.get("hidden_size", H) != H:
            raise ValueError(f"rnncore.onnx.load: {_describe(node)} has hidden_size={attributes['hidden_size']} "
                             f"but R of shape {R.shape}")
        if k:
            previous = layers[-1]
            _merged_output(graph, node.input[0], previous["node"], previous["D"], previous["H"],
                           f"input X of {_describe(node)}")
        for index, role in ((5, "initial_h"), (6, "initial_c")):
            states[role].append(_initial_state(graph, node, index, role, k, D, len(recurrent)))
        lengths.append(_sequence_lens(graph, node))
        layers.append(dict(node=node, W=W, R=R, B=_operand(graph, node, 3, "B"),
                           P=_operand(graph, node, 7, "P") if node.op_type == "LSTM" else None,
                           variant=variant, D=D, H=H))

    # one h0 (c0, lengths) for the whole stack, as the layer takes them
    arguments = {"x": x}
    for role, sources in (*states.items(), ("sequence_lens", lengths)):
        if len(set(sources)) > 1:
            differ = next(k for k, s in enumerate(sources) if s != sources[0])
            raise ValueError(f"rnncore.onnx.load: {role} of {_describe(recurrent[differ])} comes from "
                             f"{sources[differ]!r} but that of {_describe(recurrent[0])} from {sources[0]!r}; an "
                             f"rnncore layer takes one for all its layers (None: zero or absent)")
        if sources[0] is not None:
            arguments[role] = sources[0]
    shared = [name for name in set(arguments.values()) if list(arguments.values()).count(name) > 1]
    if shared:
        raise ValueError(f"rnncore.onnx.load: the graph input {shared[0]!r} feeds "
                         f"{[r for r, n in arguments.items() if n == shared[0]]}; a layer takes them separately")
    for output in model.graph.output:
        _output_role(graph, output.name, recurrent, layers[-1]["D"], layers[-1]["H"], batch_first)
    left = [n for n in nodes if id(n) not in graph.taken]
    if left:
        raise ValueError(f"rnncore.onnx.load: the graph has {', '.join(_describe(n) for n in left[:5])}"
                         f"{' and more' if len(left) > 5 else ''}, outside what an rnncore layer computes (the "
                         f"stack's layout operators, its zero initial states and its outputs y, h_n, c_n)")
    unused = [name for name in graph.inputs if name not in arguments.values()]
    if unused:
        raise ValueError(f"rnncore.onnx.load: the graph inputs {unused} feed nothing an rnncore layer takes "
                         f"(x, lengths, h0, c0)")
    return _build(layers, batch_first, backend)


def _signature(found):
    return {"directions": found["D"], "hidden size": found["H"], "options": found["variant"],
            "bias input B": found["B"] is not None, "peephole input P": found["P"] is not None}


def _build(layers, batch_first, backend):
    """The layer holding the weights of the recurrent nodes `layers`, checked against
    one another."""
    first = layers[0]
    kind = _KINDS[first["node"].op_type]
    D, H = first["D"], first["H"]
    dtype = validate.float_dtype(first["W"].dtype, name=f"W of {_describe(first['node'])}")
    G = len(ONNX_GATES[kind])  # ONNX's coupled LSTM keeps the forget block
    for k, found in enumerate(layers):
        where = f"rnncore.onnx.load: {_describe(found['node'])}"
        width = first["W"].shape[2] if k == 0 else D * H
        expected = dict(W=(D, G * H, width), R=(D, G * H, H), B=(D, 2 * G * H), P=(D, 3 * H))
        for role, shape in expected.items():
            value = found[role]
            if value is None:
                continue
            if value.shape != shape:
                raise ValueError(f"{where}: expected {role} of shape {shape}, got {value.shape}")
            if value.dtype != dtype:
                raise TypeError(f"{where}: expected {role} of dtype {dtype} (as W of the first node), "
                                f"got {value.dtype}")
        differ = [f"{what} {mine!r} (first node: {theirs!r})"
                  for (what, mine), theirs in zip(_signature(found).items(), _signature(first).values())
                  if mine != theirs]
        if differ:
            raise ValueError(f"{where} differs from the first recurrent node in {', '.join(differ)}; "
                             f"an rnncore layer stacks identical layers")

    variant = dict(first["variant"])
    if kind == "lstm":
        variant["peephole"] = first["P"] is not None
    cls = {"rnn": RNN, "lstm": LSTM, "gru": GRU}[kind]
    layer = cls(int(first["W"].shape[2]), int(H), num_layers=len(layers), bias=first["B"] is not None,
                batch_first=batch_first, bidirectional=D == 2, dtype=dtype, backend=backend, **variant)
    spec = layer.specs[0]
    state = {}
    for k, found in enumerate(layers):
        for d in range(D):
            suffix = layer_suffix(k, d)
            state["weight_ih" + suffix] = to_native(found["W"][d], spec, ONNX_GATES)
            state["weight_hh" + suffix] = to_native(found["R"][d], spec, ONNX_GATES)
            if found["B"] is not None:
                input_bias, recurrent_bias = np.split(found["B"][d], 2)
                state["bias_ih" + suffix] = to_native(input_bias, spec, ONNX_GATES)
                state["bias_hh" + suffix] = to_native(recurrent_bias, spec, ONNX_GATES)
            if found["P"] is not None:
                peep_i, peep_o, peep_f = np.split(found["P"][d], 3)
                state["weight_ci" + suffix], state["weight_co" + suffix] = peep_i, peep_o
                if not variant["coupled_input_forget"]:
                    state["weight_cf" + suffix] = peep_f
    layer.load_state_dict(state)
    return layer
