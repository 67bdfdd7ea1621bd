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

A Sequential of such layers and the toolkit's Linear (MatMul, Add), Embedding (Gather,
first), Tanh, ReLU, Sigmoid and LastStep (Gather of step -1, or with lengths a
GatherElements of step lengths - 1) is exported as one graph, one dtype and one
batch_first throughout: inputs x, lengths, then h0_k (and c0_k) of the k-th recurrent
layer; outputs y, then h_n_k (and c_n_k). The metadata entry "rnncore.model" =
"Sequential" tells `load` to rebuild a Sequential, matched module by module.

Not exportable, because the ONNX operators cannot compute them: LSTM with projection
(proj_size > 0) and the Jordan RNN. Dropout is a training-time operation and is not
exported. A bias=False layer is exported without the optional bias input.
"""
import copy
import re
from collections import namedtuple

import numpy as np

from .._version import __version__
from ..core import validate
from ..core.layers import GRU, LSTM, RNN, _Recurrent
from ..core.module import registered
from ..core.spec import FEATURES, KIND_NAMES, layer_suffix
from ._gates import ONNX_GATES, from_native, to_native

__all__ = ["export", "load", "OPSET"]

OPSET = 17
_OPERATORS = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}
# the variant features (core/spec.py FEATURES) each operator computes: RNN's Relu
# activation, LSTM's peephole input P and input_forget=1, GRU's linear_before_reset=1; a
# feature missing here is refused
# The dropout options act in training only: the exported (inference) graph is the plain
# cell's. Layer norm and zoneout's evaluation blend have no place in the operators.
_TRAINING_ONLY = {"recurrent_dropout", "weight_dropout"}
_EXPRESSIBLE = {"rnn": {"relu"} | _TRAINING_ONLY, "lstm": {"peephole", "coupled_input_forget"} | _TRAINING_ONLY,
                "gru": {"reset_after"} | _TRAINING_ONLY}
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

# the feed-forward pieces a Sequential may hold, by the names their classes are registered
# under (interop imports core only: the classes themselves live in the toolkit)
_PIECES = ("Linear", "Embedding", "Tanh", "ReLU", "Sigmoid", "LastStep")
_ELEMENTWISE = {"Tanh": "Tanh", "ReLU": "Relu", "Sigmoid": "Sigmoid"}
# the metadata that tells a Sequential's graph from a layer's: a Sequential of one layer
# computes what the layer does, but is rebuilt as a Sequential
_MODEL_KEY = "rnncore.model"


def _exportable(layer, where="rnncore.onnx.export"):
    if not isinstance(layer, _Recurrent):
        raise TypeError(f"rnncore.onnx.export: expected an rnncore RNN, LSTM or GRU layer, got {type(layer).__name__} "
                        f"(or a Sequential of such layers and {', '.join(_PIECES)})")
    spec = layer.specs[0]
    if spec.kind not in _OPERATORS:
        raise ValueError(f"{where}: the {KIND_NAMES[spec.kind]} has no ONNX operator (ONNX's "
                         f"{', '.join(_OPERATORS.values())} operators feed back the hidden state, not an output); "
                         f"it cannot be exported")
    extras = spec.unsupported(_EXPRESSIBLE[spec.kind])
    if extras:
        raise ValueError(f"{where}: a layer with {', '.join(spec.option(name) for name in extras)} "
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


class _Writer:
    """The nodes and initializers of a graph being written, and whether it has the graph
    input `lengths`."""

    def __init__(self, onnx, lengths):
        self.onnx = onnx
        self.nodes, self.initializers, self.names = [], [], set()
        self.lengths = lengths

    def constant(self, name, value):
        # a name is written once: the constants shared by several modules (axes, shapes)
        # hold the same value wherever they are asked for
        if name not in self.names:
            self.names.add(name)
            self.initializers.append(self.onnx.numpy_helper.from_array(np.asarray(value, order="C"), name))
        return name

    def node(self, op, inputs, outputs, **attributes):
        self.nodes.append(self.onnx.helper.make_node(op, inputs, outputs, name=f"{op}_{len(self.nodes)}", **attributes))
        return outputs[0]


def _write_layer(w, layer, x, prefix, states, y, finals):
    """Write a recurrent layer reading `x` (in the layer's layout): one operator node per
    stacked layer, the layout changes between them, and the Concat of each final state.
    states: the graph inputs h0 (and c0), or None for zero initial states; y: the name
    of the output, None to keep a time-major layer's last Reshape; finals: the names of
    h_n (and c_n). Returns the output's name."""
    D = layer.num_directions
    lstm = layer.specs[0].kind == "lstm"
    if layer.batch_first:
        # ORT refuses the operators' layout=1, so the graph transposes around them
        x = w.node("Transpose", [x], [prefix + "x_time_major"], perm=[1, 0, 2])
    # each layer casts the lengths itself, so that its nodes are its own
    sequence_lens = (w.node("Cast", ["lengths"], [prefix + "sequence_lens"], to=w.onnx.TensorProto.INT32)
                     if w.lengths else "")
    merge_directions = w.constant("shape_T_N_DH", np.array([0, 0, -1], dtype=np.int64))
    # only graphs that slice h0/c0 need the axis, and ORT warns about unused initializers
    axis0 = w.constant("axis_0", np.array([0], dtype=np.int64)) if states else None

    parts = [[] for _ in finals]
    for k, spec in enumerate(layer.specs):
        W, R, B, P = _onnx_weights(layer, k)
        operands = [x, w.constant(f"{prefix}W_l{k}", W), w.constant(f"{prefix}R_l{k}", R),
                    w.constant(f"{prefix}B_l{k}", B) if B is not None else "", sequence_lens]
        for name in states or [""] * len(finals):
            if name:  # this layer's rows of h0/c0, layer-major as in PyTorch
                rows = [w.constant(f"{name}_rows_l{k}_{e}", np.array([e], dtype=np.int64)) for e in (k * D, (k + 1) * D)]
                operands.append(w.node("Slice", [name, *rows, axis0], [f"{name}_l{k}"]))
            else:
                operands.append("")
        if P is not None:
            operands.append(w.constant(f"{prefix}P_l{k}", P))
        while not operands[-1]:
            operands.pop()
        outputs = [f"{prefix}Y_l{k}", f"{prefix}Y_h_l{k}"] + ([f"{prefix}Y_c_l{k}"] if lstm else [])
        w.node(_OPERATORS[spec.kind], operands, outputs, **_operator_attributes(spec, D))
        for found, output in zip(parts, outputs[1:]):
            found.append(output)
        # Y is [T, D, N, H]; PyTorch's layout, and the next layer's input, is [T, N, D*H]
        y_tndh = w.node("Transpose", [f"{prefix}Y_l{k}"], [f"{prefix}Y_l{k}_TNDH"], perm=[0, 2, 1, 3])
        x = w.node("Reshape", [y_tndh, merge_directions], [f"{prefix}y_l{k}"])
    if layer.batch_first:
        x = w.node("Transpose", [x], [y or prefix + "y"], perm=[1, 0, 2])
    elif y:
        x = w.node("Identity", [x], [y])
    for final, found in zip(finals, parts):
        w.node("Concat", found, [final], axis=0)
    return x


_Plan = namedtuple("_Plan", "modules names input_width dtype batch_first rows width")


def _plan(model):
    """The modules of the Sequential `model` and their registered names ("recurrent" for
    a layer), checked to export and to chain; the input's features (None for indices),
    the dtype and layout of the whole, and whether and how wide its output is per
    sequence (rows) or per step."""
    names = {}
    for name, cls in registered().items():
        names.setdefault(cls, name)  # the first name of a class registered twice
    modules = [model[i] for i in range(len(model))]
    kinds, width, rows, dtype, batch_first = [], None, False, None, None
    for i, module in enumerate(modules):
        where = f"rnncore.onnx.export: modules[{i}] ({type(module).__name__})"
        # the exact registered class: a subclass may compute something else
        kind = "recurrent" if isinstance(module, _Recurrent) else names.get(type(module))
        if kind != "recurrent" and kind not in _PIECES:
            raise TypeError(f"{where} has no ONNX form; a Sequential exports RNN, LSTM and GRU layers and "
                            f"{', '.join(_PIECES)}")
        if kind == "recurrent":
            _exportable(module, where)
        if kind == "Embedding" and i:
            raise ValueError(f"{where}: expected the Embedding first (it takes the integer input), got it at "
                             f"position {i}")
        if kind in ("recurrent", "LastStep"):
            if rows:
                raise ValueError(f"{where}: expected a sequence (3 dimensions), but the LastStep before it gives "
                                 f"one row per sequence")
            batch_first = module.batch_first if batch_first is None else batch_first
            if module.batch_first != batch_first:
                raise ValueError(f"{where} has batch_first={module.batch_first}, the modules before it "
                                 f"batch_first={batch_first}; a Sequential exports with one layout throughout")
            rows = kind == "LastStep"
        if kind in ("recurrent", "Linear", "Embedding"):
            dtype = np.dtype(module.dtype) if dtype is None else dtype
            if np.dtype(module.dtype) != dtype:
                raise TypeError(f"{where}: expected dtype {dtype} (as the modules before it), got "
                                f"{np.dtype(module.dtype)}")
        if kind in ("recurrent", "Linear"):
            takes, gives = ((module.input_size, module.output_width) if kind == "recurrent"
                            else (module.in_features, module.out_features))
            if width is not None and takes != width:
                raise ValueError(f"{where}: expected input features {width} (what modules[{i - 1}] gives), got "
                                 f"{takes}")
            width = gives
        elif kind == "Embedding":
            width = module.embedding_dim
        elif i == 0:
            raise ValueError(f"{where}: expected a first module that fixes the input's features (a recurrent "
                             f"layer, Linear or Embedding), got {kind}")
        kinds.append(kind)
    if "recurrent" not in kinds:
        raise ValueError(f"rnncore.onnx.export: expected a Sequential holding an RNN, LSTM or GRU layer, got "
                         f"{[type(m).__name__ for m in modules]}")
    first = modules[0]
    input_width = {"recurrent": getattr(first, "input_size", None), "Linear": getattr(first, "in_features", None)}
    return _Plan(modules, kinds, input_width.get(kinds[0]), dtype, batch_first, rows, width)


def _write_sequential(w, plan, element, initial_state):
    """Inputs and outputs of a Sequential's graph, whose nodes go to `w`."""
    TensorProto, helper = w.onnx.TensorProto, w.onnx.helper
    batch_time = ["batch", "time"] if plan.batch_first else ["time", "batch"]
    x_type = ((TensorProto.INT64, batch_time) if plan.names[0] == "Embedding"
              else (element, batch_time + [plan.input_width]))
    inputs = [helper.make_tensor_value_info("x", *x_type)]
    if w.lengths:
        inputs.append(helper.make_tensor_value_info("lengths", TensorProto.INT64, ["batch"]))
    outputs, finals = [], []
    x, k, feature = "x", 0, plan.input_width
    for i, (name, module) in enumerate(zip(plan.names, plan.modules)):
        prefix = f"{i}."
        if name == "recurrent":
            state_names = [f"h0_{k}", f"c0_{k}"] if module.specs[0].kind == "lstm" else [f"h0_{k}"]
            rows_shape = [module.num_directions * module.num_layers, "batch", module.hidden_size]
            if initial_state:
                inputs += [helper.make_tensor_value_info(s, element, rows_shape) for s in state_names]
            final_names = [s[0] + f"_n_{k}" for s in state_names]
            finals += [helper.make_tensor_value_info(f, element, rows_shape) for f in final_names]
            x = _write_layer(w, module, x, prefix, state_names if initial_state else None, None, final_names)
            k, feature = k + 1, module.output_width
        elif name == "Linear":
            state = module.state_dict()
            # y = x W^T + b over the last axis: MatMul broadcasts over the leading ones
            x = w.node("MatMul", [x, w.constant(prefix + "weight_T", state["weight"].T)], [prefix + "matmul"])
            if module.bias:
                x = w.node("Add", [x, w.constant(prefix + "bias", state["bias"])], [prefix + "linear"])
            feature = module.out_features
        elif name == "Embedding":
            table = w.constant(prefix + "weight", module.state_dict()["weight"])
            x = w.node("Gather", [table, x], [prefix + "embedding"], axis=0)
            feature = module.embedding_dim
        elif name in _ELEMENTWISE:
            x = w.node(_ELEMENTWISE[name], [x], [prefix + name.lower()])
        else:  # LastStep: the step at time T - 1, or lengths[b] - 1 of each sequence b
            axis = 1 if module.batch_first else 0
            if not w.lengths:
                x = w.node("Gather", [x, w.constant("last_step", np.array(-1, dtype=np.int64))],
                           [prefix + "last_step"], axis=axis)
            else:
                last = w.node("Sub", ["lengths", w.constant("one", np.array(1, dtype=np.int64))], [prefix + "last"])
                # one index per (sequence, feature), on the time axis
                shape = [-1, 1, 1] if axis else [1, -1, 1]
                index = w.node("Reshape", [last, w.constant("shape_" + "_".join(map(str, shape)).replace("-1", "B"),
                                                            np.array(shape, dtype=np.int64))], [prefix + "last_index"])
                index = w.node("Expand", [index, w.constant(prefix + "features", np.array([1, 1, feature], np.int64))],
                               [prefix + "last_indices"])
                x = w.node("GatherElements", [x, index], [prefix + "last_steps"], axis=axis)
                x = w.node("Squeeze", [x, w.constant(f"axis_{axis}", np.array([axis], dtype=np.int64))],
                           [prefix + "last_step"])
    w.node("Identity", [x], ["y"])
    outputs.append(helper.make_tensor_value_info("y", element, (["batch"] if plan.rows else batch_time) + [plan.width]))
    return inputs, outputs + finals


def export(model, path, *, initial_state=False, lengths=False, opset=OPSET):
    """Write an rnncore layer, or a Sequential of layers and feed-forward pieces, as an
    ONNX model.

    Parameters
    ----------
    model : RNN, LSTM, GRU or Sequential
        A layer (not a projection LSTM or the Jordan RNN), or a Sequential of such layers
        and Linear, Embedding (first), Tanh, ReLU, Sigmoid and LastStep, with one dtype
        and one batch_first throughout.
    path : str, path-like or writable binary file
        Where the model goes.
    initial_state : bool, default False
        Add graph inputs for the initial states: h0 (and c0) of shape (D*num_layers,
        batch, H) for a layer, h0_k (and c0_k) for the k-th recurrent layer of a
        Sequential; else the states start at zero.
    lengths : bool, default False
        Add the graph input `lengths` (int64, per sequence) with rnncore's semantics:
        zeros past each end, h_n from each sequence's last valid step, and LastStep
        taking step lengths[b] - 1.
    opset : int, default 17
        The default-domain opset, 14 or newer (the operators' current form).

    Returns
    -------
    onnx.ModelProto
        The model written. Its inputs are x, then lengths, then the states; its outputs
        y, then h_n (and c_n) of each recurrent layer (h_n_k, c_n_k in a Sequential).

    Raises
    ------
    TypeError
        model is neither an exportable layer nor a Sequential, or a Sequential holds a
        module with no ONNX form or mixes dtypes, naming the module.
    ValueError
        A layer the ONNX operators cannot compute, a chain whose widths or layouts do not
        fit, or an opset below 14.
    ImportError
        onnx (1.21 or newer) is not installed.

    Examples
    --------
    >>> import io, numpy as np, rnncore as rc
    >>> model = rc.Sequential(rc.LSTM(3, 8, seed=0), rc.LastStep(), rc.Linear(8, 1, seed=1))
    >>> proto = rc.onnx.export(model, io.BytesIO())
    >>> [o.name for o in proto.graph.output]
    ['y', 'h_n_0', 'c_n_0']
    """
    sequential = type(model) is registered().get("Sequential", ())
    # everything is checked before the onnx package is asked for
    plan = _plan(model) if sequential else None
    spec0 = None if sequential else _exportable(model)
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < 14:
        raise ValueError(f"opset: expected an int >= 14 (the RNN operators' current version), got {opset!r}")
    onnx = _onnx()
    helper = onnx.helper
    w = _Writer(onnx, bool(lengths))
    element = helper.np_dtype_to_tensor_dtype(plan.dtype if sequential else model.dtype)
    if sequential:
        inputs, outputs = _write_sequential(w, plan, element, initial_state)
    else:
        inputs, outputs = _layer_interface(w, model, spec0, element, initial_state)

    graph = helper.make_graph(w.nodes, f"rnncore_{type(model).__name__}", inputs, outputs, w.initializers)
    opsets = [helper.make_opsetid("", opset)]
    proto = helper.make_model(graph, opset_imports=opsets, producer_name="rnncore", producer_version=__version__)
    if sequential:
        helper.set_model_props(proto, {_MODEL_KEY: "Sequential"})
    # the oldest IR version that carries this opset, so that older runtimes read the file
    proto.ir_version = helper.find_min_ir_version_for(opsets)
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, path)
    return proto


def _layer_interface(w, layer, spec0, element, initial_state):
    """Inputs, outputs and nodes of a layer's graph."""
    TensorProto, helper = w.onnx.TensorProto, w.onnx.helper
    D, H = layer.num_directions, layer.hidden_size
    state_names = ("h0", "c0") if spec0.kind == "lstm" else ("h0",)
    batch_time = ["batch", "time"] if layer.batch_first else ["time", "batch"]
    inputs = [helper.make_tensor_value_info("x", element, batch_time + [layer.input_size])]
    if w.lengths:
        inputs.append(helper.make_tensor_value_info("lengths", TensorProto.INT64, ["batch"]))
    if initial_state:
        inputs += [helper.make_tensor_value_info(name, element, [D * layer.num_layers, "batch", H])
                   for name in state_names]
    finals = [name[0] + "_n" for name in state_names]
    _write_layer(w, layer, "x", "", state_names if initial_state else None, "y", finals)
    outputs = [helper.make_tensor_value_info("y", element, batch_time + [layer.output_width])]
    outputs += [helper.make_tensor_value_info(name, element, [D * layer.num_layers, "batch", H]) for name in finals]
    return inputs, outputs


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

    def region(self, nodes, inputs):
        """The part of this graph that `nodes` make, read as a graph whose inputs are
        `inputs`: what one module of a model computes, from its own input."""
        part = copy.copy(self)
        part.producers = {output: node for node in nodes for output in node.output if output}
        part.inputs, part.taken = list(inputs), set()
        return part

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
    """The rnncore layer, or Sequential, that an ONNX graph computes.

    A layer loads from a graph of chained RNN, LSTM or GRU nodes, one per stacked layer,
    as rnncore's `export` and PyTorch's `torch.onnx.export(..., dynamo=False)` write
    them; its graph inputs are the layer's call arguments (x; optionally lengths as
    sequence_lens, h0 and c0) and its outputs any of y, h_n and c_n. A Sequential loads
    from the graph `export` writes for one (marked so in its metadata), matched module
    by module from y back to x: recurrent layers as above, MatMul (+ Add) as Linear,
    Gather of a constant table as Embedding, Tanh, Relu and Sigmoid, and LastStep as a
    Gather of step -1 or, with lengths, a GatherElements of step lengths - 1; its
    outputs are y, then each recurrent layer's h_n (and c_n), which tell its stacked
    layers apart.

    Parameters
    ----------
    source : str, path-like, readable binary file or onnx.ModelProto
        The model. Tensors kept in external files are refused before any file but the
        model is opened.
    backend : str, optional
        The backend of the recurrent layers built.

    Returns
    -------
    RNN, LSTM, GRU or Sequential
        Holding the graph's weights bit for bit.

    Raises
    ------
    ValueError
        Anything the model would not reproduce exactly, naming the node, input or
        attribute: other operators or extra nodes (a Slice or Add on an output, a node
        left over between modules), constant sequence_lens or a nonzero constant initial
        state, layout operators other than the exporters' (a missing Transpose between
        bidirectional layers), clip, non-default activations, layout=1,
        direction='reverse', lengths feeding some modules and not others.
    TypeError
        Weights of a dtype rnncore has no layer for, or of mixed dtypes.
    ImportError
        onnx (1.21 or newer) is not installed.

    Examples
    --------
    >>> import io, numpy as np, rnncore as rc
    >>> model = rc.Sequential(rc.GRU(3, 4, bidirectional=True, seed=0), rc.Linear(8, 2, seed=1))
    >>> buffer = io.BytesIO()
    >>> _ = rc.onnx.export(model, buffer)
    >>> loaded = rc.onnx.load(io.BytesIO(buffer.getvalue()))
    >>> [type(m).__name__ for m in loaded]
    ['GRU', 'Linear']
    >>> all(np.array_equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())
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
    nodes, outputs = list(model.graph.node), [output.name for output in model.graph.output]
    kind = {prop.key: prop.value for prop in model.metadata_props}.get(_MODEL_KEY)
    if kind is None:
        layers, batch_first, _, _ = _match_layer(graph, nodes, outputs)
        return _build(layers, batch_first, backend)
    if kind != "Sequential":
        raise ValueError(f"rnncore.onnx.load: the model's metadata {_MODEL_KEY!r} is {kind!r}; rnncore writes "
                         f"'Sequential' there, and nothing for a layer")
    return _sequential(graph, nodes, outputs, backend)


def _match_layer(graph, nodes, outputs):
    """The recurrent nodes of a layer's graph (`nodes`, giving `outputs`) with their
    weights and options; whether the layer is batch_first; the graph inputs it takes
    ({"x": name, "sequence_lens", "initial_h", "initial_c": name when present}); and the
    role ("y", "h_n", "c_n") of each output."""
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
    roles = [_output_role(graph, name, recurrent, layers[-1]["D"], layers[-1]["H"], batch_first) for name in outputs]
    left = [n for n in nodes if id(n) not in graph.taken]
    if left:
        raise ValueError(f"rnncore.onnx.load: the graph has {', '.join(_describe(n) for n in left[:5])}"
                         f"{' and more' if len(left) > 5 else ''}, outside what an rnncore layer computes (the "
                         f"stack's layout operators, its zero initial states and its outputs y, h_n, c_n)")
    unused = [name for name in graph.inputs if name not in arguments.values()]
    if unused:
        raise ValueError(f"rnncore.onnx.load: the graph inputs {unused} feed nothing an rnncore layer takes "
                         f"(x, lengths, h0, c0)")
    return layers, batch_first, arguments, roles


# -- load: a Sequential ------------------------------------------------------------------
#
# The graph is read from its output y back to its input x, one module at a time: each
# feed-forward piece is the few nodes export writes for it, and a recurrent layer is the
# part of the graph between its input and its outputs (y, h_n, c_n), read by the layer's
# own matcher above as if it were a graph of its own. Every node must belong to exactly
# one module.

def _plain(graph, node, attributes=()):
    """Refuse a node of another domain or with attributes outside `attributes`."""
    if node.domain not in ("", "ai.onnx"):
        raise ValueError(f"rnncore.onnx.load: {_describe(node)} is of the domain {node.domain!r}; a Sequential "
                         f"holds default-domain operators only")
    unknown = sorted(set(graph.attributes(node)) - set(attributes))
    if unknown:
        raise ValueError(f"rnncore.onnx.load: {_describe(node)} has attributes {unknown}, which the module it "
                         f"would be does not compute")


def _constant_of(graph, node, index, what, ndim):
    value = graph.constant(node.input[index]) if len(node.input) > index and node.input[index] else None
    if value is None or value.ndim != ndim:
        raise ValueError(f"rnncore.onnx.load: {what} of {_describe(node)} is "
                         f"{'not a constant' if value is None else f'of shape {value.shape}'}; expected a "
                         f"{ndim}-d constant")
    return value


def _integer_input(graph, name, node, what):
    if name not in graph.inputs or graph.input_types.get(name) not in graph.integer_types:
        raise ValueError(f"rnncore.onnx.load: {what} of {_describe(node)} comes from {graph.describe_value(name)}; "
                         f"expected a graph input of integers")
    return name


def _last_step_lengths(graph, squeeze):
    """LastStep with lengths: Squeeze(GatherElements(y, Expand(Reshape(lengths - 1))))
    on the time axis; (entry, y, nodes)."""
    axis = graph.ints(squeeze, 1, "axes")
    gather = graph.producer(squeeze.input[0])
    if axis not in ([0], [1]) or gather is None or gather.op_type != "GatherElements":
        raise ValueError(f"rnncore.onnx.load: {_describe(squeeze)} squeezes axes {axis} of "
                         f"{graph.describe_value(squeeze.input[0])}; a LastStep with lengths squeezes the time axis "
                         f"(0, or 1 batch_first) of a GatherElements")
    axis = axis[0]
    _plain(graph, squeeze)
    _plain(graph, gather, ("axis",))
    if graph.attributes(gather).get("axis", 0) != axis:
        raise ValueError(f"rnncore.onnx.load: {_describe(gather)} gathers on axis "
                         f"{graph.attributes(gather).get('axis', 0)} but {_describe(squeeze)} squeezes axis {axis}")
    chain, name = [], gather.input[1]
    for op in ("Expand", "Reshape", "Sub"):
        node = graph.producer(name)
        if node is None or node.op_type != op:
            raise ValueError(f"rnncore.onnx.load: the indices of {_describe(gather)} come from "
                             f"{graph.describe_value(name)}; a LastStep's are Expand(Reshape(lengths - 1))")
        _plain(graph, node, ("allowzero",) if op == "Reshape" else ())
        chain.append(node)
        name = node.input[0]
    expand, reshape, sub = chain
    features = _constant_of(graph, expand, 1, "the shape", 1)
    shape = _constant_of(graph, reshape, 1, "the shape", 1)
    one = _constant_of(graph, sub, 1, "the subtrahend", 0)
    expected_shape = [-1, 1, 1] if axis else [1, -1, 1]
    if list(shape) != expected_shape or graph.attributes(reshape).get("allowzero", 0) or int(one) != 1 \
            or len(features) != 3 or list(features[:2]) != [1, 1]:
        raise ValueError(f"rnncore.onnx.load: the indices of {_describe(gather)} are Expand(Reshape(lengths - "
                         f"{one}) to {list(shape)}) to {list(features)}; a LastStep's are lengths - 1 reshaped to "
                         f"{expected_shape} and expanded to [1, 1, features]")
    lengths = _integer_input(graph, sub.input[0], sub, "the lengths")
    entry = dict(kind="LastStep", batch_first=bool(axis), lengths=lengths, width=int(features[2]), node=gather)
    return entry, gather.input[0], [squeeze, gather, *chain]


def _piece(graph, name):
    """The feed-forward module whose output is `name`: (entry, its input, its nodes), or
    None when `name` is not the output of one."""
    node = graph.producer(name)
    op = node.op_type if node is not None else None
    if op == "Add" or op == "MatMul":
        add = node if op == "Add" else None
        matmul = graph.producer(node.input[0]) if add else node
        if matmul is None or matmul.op_type != "MatMul":
            raise ValueError(f"rnncore.onnx.load: {_describe(node)} adds to {graph.describe_value(node.input[0])}; "
                             f"a Linear adds its bias to a MatMul by its weight")
        _plain(graph, matmul)
        weight_t = _constant_of(graph, matmul, 1, "the weight", 2)
        bias = None
        if add:
            _plain(graph, add)
            bias = _constant_of(graph, add, 1, "the bias", 1)
            if bias.shape != weight_t.shape[1:] or bias.dtype != weight_t.dtype:
                raise ValueError(f"rnncore.onnx.load: {_describe(add)} adds a bias of shape {bias.shape} and dtype "
                                 f"{bias.dtype} to {_describe(matmul)} by a weight of shape {weight_t.shape} and "
                                 f"dtype {weight_t.dtype}; a Linear's bias has the weight's dtype and output features")
        entry = dict(kind="Linear", weight=weight_t.T, bias=bias, node=matmul)
        return entry, matmul.input[0], [matmul] + ([add] if add else [])
    if op in ("Tanh", "Relu", "Sigmoid"):
        _plain(graph, node)
        return dict(kind={v: k for k, v in _ELEMENTWISE.items()}[op], node=node), node.input[0], [node]
    if op == "Gather":
        _plain(graph, node, ("axis",))
        axis = graph.attributes(node).get("axis", 0)
        table = graph.constant(node.input[0])
        if table is not None:
            if table.ndim != 2 or axis != 0:
                raise ValueError(f"rnncore.onnx.load: {_describe(node)} gathers on axis {axis} of a constant of "
                                 f"shape {table.shape}; an Embedding gathers rows (axis 0) of a 2-d table")
            indices = _integer_input(graph, node.input[1], node, "the indices")
            return dict(kind="Embedding", weight=table, node=node), indices, [node]
        step = graph.constant(node.input[1])
        if step is None or step.shape != () or int(step) != -1 or axis not in (0, 1):
            what = "computed indices" if step is None else f"indices {np.ravel(step).tolist()} of shape {step.shape}"
            raise ValueError(f"rnncore.onnx.load: {_describe(node)} gathers {what} on axis {axis}; a LastStep "
                             f"without lengths gathers the scalar step -1 on the time axis (0, or 1 batch_first)")
        return dict(kind="LastStep", batch_first=bool(axis), lengths=None, node=node), node.input[0], [node]
    if op == "Squeeze":
        producer = graph.producer(node.input[0])
        if producer is not None and producer.op_type == "GatherElements":
            return _last_step_lengths(graph, node)
    return None


def _recurrent_piece(whole, name, outputs, nodes):
    """The recurrent layer whose output y is `name`: its part of the graph, read by the
    layer matcher; (entry, its input, its nodes)."""
    probe, last = name, None
    for _ in range(4):  # up through the layout operators after its last operator node
        node = whole.producer(probe)
        if node is None or node.op_type in _KINDS or node.op_type not in ("Transpose", "Reshape", "Squeeze"):
            last = node if node is not None and node.op_type in _KINDS else None
            break
        probe = node.input[0]
    if last is None:
        raise ValueError(f"rnncore.onnx.load: {whole.describe_value(name)} feeds the chain but is not the output "
                         f"of a module a Sequential exports (Linear, Embedding, Tanh, ReLU, Sigmoid, LastStep, or "
                         f"an RNN, LSTM or GRU layer)")
    # the final states tell which operator nodes are one layer's stack
    state_outputs = []
    for position, role in ((1, "h_n"), (2, "c_n"))[:_MAX_OUTPUTS[last.op_type] - 1]:
        part = last.output[position] if len(last.output) > position else ""
        concat = next((whole.producer(o) for o in outputs if part and whole.producer(o) is not None
                       and whole.producer(o).op_type == "Concat" and part in whole.producer(o).input), None)
        if concat is None:
            raise ValueError(f"rnncore.onnx.load: the final state {part or role!r} of {_describe(last)} is not in a "
                             f"graph output; a Sequential's graph gives each recurrent layer's {role} (the Concat "
                             f"of its stack's), which tells its layers apart")
        state_outputs.append(next(o for o in outputs if whole.producer(o) is concat))
    concat = whole.producer(state_outputs[0])
    stack = [whole.producer(part) for part in concat.input]
    if any(n is None or n.op_type not in _KINDS for n in stack):
        bad = next(part for part, n in zip(concat.input, stack) if n is None or n.op_type not in _KINDS)
        raise ValueError(f"rnncore.onnx.load: {_describe(concat)} joins {whole.describe_value(bad)}; a recurrent "
                         f"layer's h_n joins the final states of its operator nodes")
    x = stack[0].input[0]
    transpose = whole.producer(x)
    batch_first = whole.producer(name) is not None and whole.producer(name).op_type == "Transpose"
    if batch_first and transpose is not None and transpose.op_type == "Transpose":
        x = transpose.input[0]
    # the layer's part of the graph: what its outputs depend on, back to its input
    stop, found, todo = {x, *whole.inputs}, set(), [name, *state_outputs]
    while todo:
        value = todo.pop()
        node = None if value in stop else whole.producer(value)
        if node is not None and id(node) not in found:
            found.add(id(node))
            todo.extend(node.input)
    part = [n for n in nodes if id(n) in found]
    taken = [n for n in part if id(n) in whole.taken]
    if taken:
        raise ValueError(f"rnncore.onnx.load: {_describe(taken[0])} belongs to both the layer of {_describe(last)} "
                         f"and another module; every node of a Sequential's graph belongs to one module")
    region = whole.region(part, [x] + [i for i in whole.inputs if i != x and any(i in n.input for n in part)])
    layers, batch_first, arguments, roles = _match_layer(region, part, [name, *state_outputs])
    expected = ["y", "h_n", "c_n"][:len(roles)]
    if roles != expected:
        raise ValueError(f"rnncore.onnx.load: the outputs {[name, *state_outputs]} of the layer of {_describe(last)} "
                         f"are its {roles}; expected {expected}")
    entry = dict(kind="recurrent", layers=layers, batch_first=batch_first, arguments=arguments,
                 states=state_outputs, node=stack[0])
    return entry, x, part


def _sequential(whole, nodes, outputs, backend):
    """The Sequential of the graph export writes for one."""
    if not outputs:
        raise ValueError("rnncore.onnx.load: the graph has no outputs; a Sequential's first one is y")
    name = whole.through_identity(outputs[0])
    entries = []
    while name not in whole.inputs:
        found = _piece(whole, name) or _recurrent_piece(whole, name, outputs, nodes)
        entry, name, part = found
        taken = [n for n in part if id(n) in whole.taken]
        if taken:
            raise ValueError(f"rnncore.onnx.load: {_describe(taken[0])} is part of two modules; every node of a "
                             f"Sequential's graph belongs to one module")
        for node in part:
            whole.take(node)
        entries.insert(0, entry)
    x = name

    expected = [outputs[0]] + [o for e in entries if e["kind"] == "recurrent" for o in e["states"]]
    if outputs != expected:
        raise ValueError(f"rnncore.onnx.load: the graph outputs are {outputs}; a Sequential's are y, then each "
                         f"recurrent layer's h_n (and c_n) in order: {expected}")
    # lengths go to every recurrent layer and LastStep of a Sequential, or to none
    takes_lengths = {i: (e["arguments"].get("sequence_lens") if e["kind"] == "recurrent" else e["lengths"])
                     for i, e in enumerate(entries) if e["kind"] in ("recurrent", "LastStep")}
    if len(set(takes_lengths.values())) > 1:
        fed = {i: source for i, source in takes_lengths.items() if source is not None}
        raise ValueError(f"rnncore.onnx.load: lengths {sorted(set(fed.values()))} feed modules {sorted(fed)} but not "
                         f"modules {sorted(set(takes_lengths) - set(fed))}; a Sequential passes one lengths to all "
                         f"its recurrent layers and LastStep")
    uses = {x: ["x"]}
    for i, entry in enumerate(entries):
        taken = entry["arguments"] if entry["kind"] == "recurrent" else {"lengths": entry.get("lengths")}
        for role, source in taken.items():
            if source is not None and role != "x":  # a layer's x is the module before it
                uses.setdefault(source, []).append(f"modules[{i}] {role}")
    lengths = next(iter(takes_lengths.values()), None)
    shared = [source for source, users in uses.items() if len(users) > 1 and source != lengths]
    if shared:
        raise ValueError(f"rnncore.onnx.load: the graph input {shared[0]!r} feeds {uses[shared[0]]}; a Sequential "
                         f"takes x, lengths and each recurrent layer's initial states separately")
    unused = [i for i in whole.inputs if i not in uses]
    if unused:
        raise ValueError(f"rnncore.onnx.load: the graph inputs {unused} feed nothing a Sequential takes (x, lengths, "
                         f"each recurrent layer's h0 and c0)")
    left = [n for n in nodes if id(n) not in whole.taken]
    if left:
        raise ValueError(f"rnncore.onnx.load: the graph has {', '.join(_describe(n) for n in left[:5])}"
                         f"{' and more' if len(left) > 5 else ''}, outside the chain of modules from x to y")
    return _build_sequential(entries, backend)


def _build_sequential(entries, backend):
    """The Sequential of `entries`, checked to chain in features and dtype."""
    classes = registered()
    modules, width, dtype = [], None, None
    for i, entry in enumerate(entries):
        kind, where = entry["kind"], f"rnncore.onnx.load: {_describe(entry['node'])}"
        if kind == "Embedding" and i:
            raise ValueError(f"{where} is an Embedding after modules[{i - 1}]; an Embedding takes the integer input")
        weight = entry["layers"][0]["W"] if kind == "recurrent" else entry.get("weight")
        if weight is not None:
            dtype = validate.float_dtype(weight.dtype, name=f"the weights of {_describe(entry['node'])}") \
                if dtype is None else dtype
            if weight.dtype != dtype:
                raise TypeError(f"{where}: expected weights of dtype {dtype} (as the modules before it), got "
                                f"{weight.dtype}")
        takes = {"recurrent": lambda: weight.shape[2], "Linear": lambda: weight.shape[1],
                 "LastStep": lambda: entry.get("width")}.get(kind, lambda: None)()
        if takes is not None and width is not None and takes != width:
            raise ValueError(f"{where} takes {takes} features, but modules[{i - 1}] gives {width}")
        if kind == "recurrent":
            module = _build(entry["layers"], entry["batch_first"], backend)
            width = module.output_width
        elif kind == "Linear":
            module = classes["Linear"](weight.shape[1], weight.shape[0], bias=entry["bias"] is not None, dtype=dtype)
            module.load_state_dict({"weight": weight, **({"bias": entry["bias"]} if entry["bias"] is not None else {})})
            width = weight.shape[0]
        elif kind == "Embedding":
            module = classes["Embedding"](weight.shape[0], weight.shape[1], dtype=dtype)
            module.load_state_dict({"weight": weight})
            width = weight.shape[1]
        elif kind == "LastStep":
            module = classes["LastStep"](batch_first=entry["batch_first"])
        else:
            module = classes[kind]()
        modules.append(module)
    return classes["Sequential"](*modules)


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
