"""ONNX out and in: rnncore layers as the standard `RNN`, `LSTM` and `GRU` operators.

`export(layer, path)` writes one operator node per layer of the stack (default opset 17),
joined by the reshapes PyTorch's layout needs; `load(path)` rebuilds the layer from such a
graph, including the graphs `torch.onnx.export(..., dynamo=False)` writes for
`nn.RNN/LSTM/GRU`. The `onnx` package is imported only when one of them is called
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
import numpy as np

from . import _validate
from .keras import native_gates, reorder_gates

__all__ = ["export", "load", "OPSET"]

OPSET = 17
ONNX_GATES = {"rnn": "a", "lstm": "iofg", "gru": "zrn"}
_OPERATORS = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}
_KINDS = {op: kind for kind, op in _OPERATORS.items()}
_ACTIVATIONS = {"tanh": "Tanh", "relu": "Relu"}
# the non-recurrent operators that a graph of one stacked layer may hold: layout changes
# and the shape arithmetic around them, as rnncore's and PyTorch's exporters write them
_GLUE = ("Transpose", "Reshape", "Squeeze", "Unsqueeze", "Identity", "Concat", "Slice", "Gather",
         "Shape", "Constant", "ConstantOfShape", "Expand", "Cast")
# operators that pass a tensor's values on unchanged (only its layout changes), followed
# from a recurrent node's input back to where the values come from
_DATA_PATH = ("Transpose", "Reshape", "Squeeze", "Unsqueeze", "Identity")
_STATE_PATH = _DATA_PATH + ("Slice", "Expand", "Cast")


def _onnx():
    try:
        import onnx  # the package, not this module: imports are absolute
    except ImportError as exc:
        raise ImportError("rnncore.onnx needs the onnx package: pip install 'rnncore[onnx]'") from exc
    return onnx


# -- export -----------------------------------------------------------------------------

def _exportable(layer):
    from .layers import _Recurrent
    if not isinstance(layer, _Recurrent):
        raise TypeError(f"rnncore.onnx.export: expected an rnncore RNN, LSTM or GRU layer, got {type(layer).__name__}")
    spec = layer.specs[0]
    if spec.kind == "jordan":
        raise ValueError("rnncore.onnx.export: the Jordan RNN has no ONNX operator (ONNX's RNN feeds back "
                         "the hidden state, not the output); it cannot be exported")
    if spec.proj_size:
        raise ValueError(f"rnncore.onnx.export: an LSTM with proj_size={spec.proj_size} cannot be exported: the "
                         f"ONNX LSTM operator has no projection of the hidden state")
    return spec


def _onnx_weights(layer, k):
    """W, R, B (or None), P (or None) of layer k as the ONNX operator takes them."""
    spec = layer.specs[k]
    source, target = native_gates(spec), ONNX_GATES[spec.kind]
    W, R, B, P = [], [], [], []
    for d, params in enumerate(layer._direction_params(k)):
        W.append(reorder_gates(params["weight_ih"], source, target))
        R.append(reorder_gates(params["weight_hh"], source, target))
        if spec.bias:
            B.append(np.concatenate([reorder_gates(params[name], source, target)
                                     for name in ("bias_ih", "bias_hh")]))
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
    """Write `layer` as an ONNX model to `path` (a file name or a writable binary file)
    and return the ModelProto.

    initial_state: add graph inputs h0 (and c0), else the states start at zero.
    lengths: add the graph input `lengths` (int64, per sequence), with rnncore's
    semantics (zeros past each end, h_n from each sequence's last valid step).
    opset: the default-domain opset (14 or newer: the operators' current form).
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

    from . import __version__
    graph = helper.make_graph(nodes, f"rnncore_{type(layer).__name__}", inputs, outputs, initializers)
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="rnncore", producer_version=__version__)
    # the oldest IR version that carries this opset, so that older runtimes read the file
    model.ir_version = helper.find_min_ir_version_for(opsets)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return model


# -- load -------------------------------------------------------------------------------

class _Graph:
    """The facts about a graph that `load` needs: constants, producers, graph inputs."""

    def __init__(self, graph, numpy_helper, helper):
        self.constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
        self.producers = {}
        for node in graph.node:
            for output in node.output:
                self.producers[output] = node
            if node.op_type == "Constant":
                for attribute in node.attribute:
                    if attribute.name == "value":
                        self.constants[node.output[0]] = numpy_helper.to_array(attribute.t)
        self.inputs = {value.name for value in graph.input} - set(self.constants)
        self.helper, self.numpy_helper = helper, numpy_helper

    def trace(self, name, through):
        """Where the values of `name` come from, following the operators in `through`
        back along their first input; and the nodes passed."""
        passed = []
        while name in self.producers and self.producers[name].op_type in through:
            passed.append(self.producers[name])
            name = passed[-1].input[0]
        return name, passed

    def attributes(self, node):
        values = {a.name: self.helper.get_attribute_value(a) for a in node.attribute}
        return {name: (value.decode() if isinstance(value, bytes) else
                       [v.decode() if isinstance(v, bytes) else v for v in value] if isinstance(value, list) else value)
                for name, value in values.items()}


def _describe(node):
    return f"{node.op_type} node {node.name!r}" if node.name else f"{node.op_type} node producing {node.output[0]!r}"


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
        if len(set(given)) != 1 or given[0] not in names:
            raise ValueError(f"{where} has activations={given}; rnncore's RNN runs Tanh or Relu, the same in "
                             f"both directions")
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
    name = node.input[index]
    if name not in graph.constants:
        raise ValueError(f"rnncore.onnx.load: input {role} ({name!r}) of {_describe(node)} is computed in the graph "
                         f"or fed at run time; rnncore reads weights only from initializers and Constant nodes")
    return graph.constants[name]


def _check_initial_state(graph, node, index, role):
    """An initial state must be a graph input (the layer's h0/c0 at call time) or zeros:
    a layer has no stored initial state to hold anything else."""
    if len(node.input) <= index or not node.input[index]:
        return
    origin, _ = graph.trace(node.input[index], _STATE_PATH)
    producer = graph.producers.get(origin)
    if origin in graph.constants:
        zero = not np.any(graph.constants[origin])
    elif producer is not None and producer.op_type == "ConstantOfShape":
        fill = [a for a in producer.attribute if a.name == "value"]
        zero = not fill or not np.any(graph.numpy_helper.to_array(fill[0].t))
    else:
        zero = origin in graph.inputs
    if not zero:
        raise ValueError(f"rnncore.onnx.load: {role} of {_describe(node)} is neither zero nor a graph input; "
                         f"an rnncore layer takes its initial state when called and stores none")


def load(source, *, backend=None):
    """The rnncore layer equivalent to an ONNX graph (a path, a readable binary file or a
    ModelProto) of chained RNN, LSTM or GRU nodes, one per stacked layer. Anything an
    rnncore layer cannot compute (other operators, clip, non-default activations,
    layout=1, direction='reverse', a constant nonzero initial state) is a ValueError
    naming it."""
    onnx = _onnx()
    from onnx import helper, numpy_helper
    model = source if isinstance(source, onnx.ModelProto) else onnx.load(source)
    graph = _Graph(model.graph, numpy_helper, helper)
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

    batch_first, layers = False, []
    for k, node in enumerate(recurrent):
        origin, passed = graph.trace(node.input[0], _DATA_PATH)
        if k == 0:
            if origin not in graph.inputs:
                raise ValueError(f"rnncore.onnx.load: input X of {_describe(node)} does not come from a graph input "
                                 f"through layout operators only")
            transposes = [n for n in passed if n.op_type == "Transpose"]
            odd = [n for n in transposes if list(graph.attributes(n).get("perm", [])) != [1, 0, 2]]
            if odd:
                raise ValueError(f"rnncore.onnx.load: {_describe(odd[0])} permutes the input by "
                                 f"{graph.attributes(odd[0]).get('perm')}; only (1, 0, 2) (batch_first) is understood")
            batch_first = len(transposes) % 2 == 1
        elif origin != recurrent[k - 1].output[0]:
            raise ValueError(f"rnncore.onnx.load: input X of {_describe(node)} is not the output Y of "
                             f"{_describe(recurrent[k - 1])}; the nodes do not form one stack")
        W = _operand(graph, node, 1, "W")
        R = _operand(graph, node, 2, "R")
        if W is None or R is None or W.ndim != 3 or R.ndim != 3:
            raise ValueError(f"rnncore.onnx.load: {_describe(node)} needs 3-d constant W and R, got "
                             f"{None if W is None else W.shape} and {None if R is None else R.shape}")
        D, H = R.shape[0], R.shape[2]
        attributes = graph.attributes(node)
        variant = _variant(node, attributes, D)
        if D != (2 if attributes.get("direction") == "bidirectional" else 1):
            raise ValueError(f"rnncore.onnx.load: W and R of {_describe(node)} hold {D} direction(s), "
                             f"but its direction is {attributes.get('direction', 'forward')!r}")
        if attributes.get("hidden_size", H) != H:
            raise ValueError(f"rnncore.onnx.load: {_describe(node)} has hidden_size={attributes['hidden_size']} "
                             f"but R of shape {R.shape}")
        for index, role in ((5, "initial_h"), (6, "initial_c")):
            _check_initial_state(graph, node, index, role)
        layers.append(dict(node=node, W=W, R=R, B=_operand(graph, node, 3, "B"),
                           P=_operand(graph, node, 7, "P") if node.op_type == "LSTM" else None,
                           variant=variant, D=D, H=H))
    return _build(layers, batch_first, backend)


def _signature(found):
    return {"directions": found["D"], "hidden size": found["H"], "options": found["variant"],
            "bias input B": found["B"] is not None, "peephole input P": found["P"] is not None}


def _build(layers, batch_first, backend):
    """The layer holding the weights of the recurrent nodes `layers`, checked against
    one another."""
    from .layers import GRU, LSTM, RNN
    first = layers[0]
    kind = _KINDS[first["node"].op_type]
    D, H = first["D"], first["H"]
    dtype = _validate.float_dtype(first["W"].dtype, name=f"W of {_describe(first['node'])}")
    G = 4 if kind == "lstm" else 3 if kind == "gru" else 1
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
    source, target = ONNX_GATES[kind], native_gates(layer.specs[0])
    state = {}
    for k, found in enumerate(layers):
        for d in range(D):
            suffix = f"_l{k}" + ("_reverse" if d else "")
            state["weight_ih" + suffix] = reorder_gates(found["W"][d], source, target)
            state["weight_hh" + suffix] = reorder_gates(found["R"][d], source, target)
            if found["B"] is not None:
                input_bias, recurrent_bias = np.split(found["B"][d], 2)
                state["bias_ih" + suffix] = reorder_gates(input_bias, source, target)
                state["bias_hh" + suffix] = reorder_gates(recurrent_bias, source, target)
            if found["P"] is not None:
                peep_i, peep_o, peep_f = np.split(found["P"][d], 3)
                state["weight_ci" + suffix], state["weight_co" + suffix] = peep_i, peep_o
                if not variant["coupled_input_forget"]:
                    state["weight_cf" + suffix] = peep_f
    layer.load_state_dict(state)
    return layer
