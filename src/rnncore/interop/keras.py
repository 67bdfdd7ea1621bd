"""Keras weights in and out. Nothing here imports Keras: the arrays are what a Keras
layer's `get_weights()` returns.

Keras layouts (Keras 2 and 3): `kernel` (input, G*units) applied as x @ kernel,
`recurrent_kernel` (units, G*units), gate blocks LSTM i, f, c, o and GRU z, r, h, and
- SimpleRNN, LSTM: one bias (G*units,);
- GRU reset_after=True (the default): bias (2, 3*units) = [input bias; recurrent bias],
  the recurrent one inside r * (...), as PyTorch's b_hn;
- GRU reset_after=False: bias (3*units,), input side only.
A `Bidirectional` wrapper lists the forward layer's arrays, then the backward layer's; a
stack lists its layers in order.

Weights alone do not say what a Keras layer computes: `activation="relu"` or
`recurrent_activation="hard_sigmoid"` changes the math without changing a shape. Given the
layer's configuration (the Keras layer itself, or what its `get_config()` returns),
`load_weights` refuses every option rnncore does not reproduce, naming what was given.
`load_model_weights` does the same for a whole Keras Sequential, pairing its layers with
the modules of an rnncore Sequential.
"""
from collections.abc import Mapping

import numpy as np

from ..core import validate
from ..core.layers import _Recurrent
from ..core.module import registered
from ..core.spec import ACTIVATIONS, KIND_NAMES, layer_suffix
from ._gates import KERAS_GATES, from_native, reorder_gates, to_native

__all__ = ["load_weights", "load_model_weights", "to_keras_weights", "reorder_gates", "KERAS_GATES"]

_KERAS_CLASSES = {"rnn": "SimpleRNN", "lstm": "LSTM", "gru": "GRU"}
# the variant features (core/spec.py FEATURES) each Keras layer computes: SimpleRNN's
# activation="relu", GRU's reset_after=True; the dropout options, which act in training
# only and leave the weights and the inference alike; a feature missing here is refused
_TRAINING_ONLY = {"recurrent_dropout", "weight_dropout"}
_EXPRESSIBLE = {"rnn": {"relu"} | _TRAINING_ONLY, "lstm": set(_TRAINING_ONLY), "gru": {"reset_after"} | _TRAINING_ONLY}


def _convertible(layer, verb):
    """The layer's cell spec, if Keras has a layer computing the same thing."""
    if not isinstance(layer, _Recurrent):
        raise TypeError(f"{verb}: expected an rnncore RNN, LSTM or GRU layer, got {type(layer).__name__}")
    spec = layer.specs[0]
    if spec.kind not in _KERAS_CLASSES:
        raise ValueError(f"{verb}: Keras has no {KIND_NAMES[spec.kind]} layer, so there are no Keras weights to "
                         f"convert")
    extras = spec.unsupported(_EXPRESSIBLE[spec.kind])
    if extras:
        keras_name = _KERAS_CLASSES[spec.kind]
        raise ValueError(f"{verb}: Keras' {keras_name} has no {', '.join(extras)}; only a plain {keras_name} "
                         f"converts")
    return spec


def _slots(layer):
    """(layer index, direction, spec, label) of each weight set, in Keras' listing order."""
    return [(k, d, spec, f"layer {k} {'backward' if d else 'forward'}")
            for k, spec in enumerate(layer.specs) for d in range(layer.num_directions)]


def _gru_bias_variant_error(bias_shape, layer_reset_after, units, verb):
    keras_form = "reset_after=True" if len(bias_shape) == 2 else "reset_after=False"
    return ValueError(
        f"{verb}: got a GRU bias of shape {bias_shape}, the layout of a Keras GRU with "
        f"{keras_form}, but this layer has reset_after={layer_reset_after}, which computes a different "
        f"candidate gate; build rnncore.GRU(..., reset_after={not layer_reset_after}) for these weights "
        f"(a Keras reset_after=True bias is (2, {3 * units}), reset_after=False is ({3 * units},))")


def keras_state_dict(layer, *weights, verb="load_weights"):
    """The rnncore state_dict equivalent to Keras weights (see `load_weights`); `verb`
    begins the messages."""
    _convertible(layer, verb)
    if len(weights) == 1 and isinstance(weights[0], (list, tuple)):
        weights = tuple(weights[0])
    per_set = 3 if layer.bias else 2
    slots = _slots(layer)
    if len(weights) != per_set * len(slots):
        listing = "kernel, recurrent_kernel" + (", bias" if layer.bias else "")
        raise ValueError(
            f"{verb}: expected {per_set * len(slots)} arrays ({listing} for each of "
            f"{layer.num_layers} layer(s) x {layer.num_directions} direction(s), forward first), "
            f"got {len(weights)}" + ("" if layer.bias else " (this layer has bias=False)"))
    H = layer.hidden_size
    state, wrong = {}, []
    for n, (k, d, spec, label) in enumerate(slots):
        arrays = [validate.to_numpy(w, f"weights[{n * per_set + j}]")
                  for j, w in enumerate(weights[n * per_set:(n + 1) * per_set])]
        bad = [f"weights[{n * per_set + j}] ({label} {name}): expected a real number array, got dtype {a.dtype}"
               for j, (name, a) in enumerate(zip(("kernel", "recurrent_kernel", "bias"), arrays))
               if a.dtype.kind not in "iuf"]
        if bad:
            raise TypeError(f"{verb}: " + "; ".join(bad))
        G = spec.num_gates
        bias = arrays[2] if layer.bias else None
        if spec.kind == "gru" and bias is not None and bias.shape in ((2, G * H), (G * H,)) \
                and (bias.ndim == 2) != spec.reset_after:
            raise _gru_bias_variant_error(bias.shape, spec.reset_after, H, verb)
        expected = [(spec.input_size, G * H), (H, G * H)]
        if layer.bias:
            expected.append((2, G * H) if spec.kind == "gru" and spec.reset_after else (G * H,))
        slot_wrong = [f"weights[{n * per_set + j}] ({label} {name}): expected shape {shape}, got {a.shape}"
                      for j, (name, a, shape) in enumerate(zip(("kernel", "recurrent_kernel", "bias"),
                                                               arrays, expected)) if a.shape != shape]
        wrong += slot_wrong
        if slot_wrong:
            continue
        suffix = layer_suffix(k, d)
        state["weight_ih" + suffix] = to_native(arrays[0].T, spec, KERAS_GATES)
        state["weight_hh" + suffix] = to_native(arrays[1].T, spec, KERAS_GATES)
        if bias is None:
            continue
        if bias.ndim == 2:
            input_bias, recurrent_bias = bias
        else:
            # one Keras bias: it all goes to the input side, where it adds the same
            input_bias, recurrent_bias = bias, np.zeros_like(bias)
        state["bias_ih" + suffix] = to_native(input_bias, spec, KERAS_GATES)
        state["bias_hh" + suffix] = to_native(recurrent_bias, spec, KERAS_GATES)
    if wrong:
        raise ValueError(f"{verb}: " + "; ".join(wrong))
    return state


# -- Keras configurations -----------------------------------------------------------------

# keys of a Keras recurrent layer's get_config() (Keras 2 and 3) that leave what a call
# computes alone: names and dtypes, initialisers, training-time regularisation and
# dropout, which outputs are returned, masking and implementation choices
_NO_EFFECT = frozenset({
    "name", "trainable", "dtype", "batch_input_shape", "batch_size", "input_shape", "seed",
    "kernel_initializer", "recurrent_initializer", "bias_initializer", "unit_forget_bias",
    "kernel_regularizer", "recurrent_regularizer", "bias_regularizer", "activity_regularizer",
    "kernel_constraint", "recurrent_constraint", "bias_constraint", "dropout", "recurrent_dropout",
    "return_sequences", "return_state", "unroll", "time_major", "zero_output_for_mask",
    "implementation", "use_cudnn"})
_CHECKED = frozenset({"units", "activation", "recurrent_activation", "use_bias", "reset_after", "go_backwards",
                      "stateful"})
# the options only some Keras layers have, and which
_KIND_KEYS = {"reset_after": ("gru",), "unit_forget_bias": ("lstm",), "recurrent_activation": ("lstm", "gru")}
_WRAPPER_KEYS = frozenset({"layer", "backward_layer", "merge_mode", "name", "trainable", "dtype"})


def _is_keras_layer(value):
    return callable(getattr(value, "get_config", None)) and callable(getattr(value, "get_weights", None))


def _unwrap(value, where):
    """(Keras class name or None, config dict) of a Keras layer object, of what its
    get_config() returns, or of its serialised form {"class_name": ..., "config": ...}."""
    if _is_keras_layer(value):
        return type(value).__name__, dict(value.get_config())
    if not isinstance(value, Mapping):
        raise TypeError(f"{where}: expected a Keras layer or its get_config() dict, got {type(value).__name__}")
    if isinstance(value.get("class_name"), str) and isinstance(value.get("config"), Mapping):
        return value["class_name"], dict(value["config"])
    return None, dict(value)


def _config_problems(layer, spec, class_name, config, backward):
    """What in one Keras recurrent layer's config (the backward one of a Bidirectional
    when `backward`) an rnncore layer of `spec` does not compute."""
    keras_name = _KERAS_CLASSES[spec.kind]
    if class_name is not None and class_name != keras_name:
        return [f"a Keras {class_name}, but this layer's Keras counterpart is a {keras_name}"]
    problems = []
    unknown = sorted(set(config) - _NO_EFFECT - _CHECKED)
    if unknown:
        problems.append(f"keys {unknown}, which rnncore cannot be sure it reproduces")
    problems += [f"{key}={config[key]!r}, an option of a Keras {' or '.join(_KERAS_CLASSES[k] for k in kinds)}, "
                 f"not of a {keras_name}" for key, kinds in _KIND_KEYS.items()
                 if key in config and spec.kind not in kinds]
    if "units" in config and config["units"] != spec.hidden_size:
        problems.append(f"units={config['units']!r}, but this layer has hidden_size={spec.hidden_size}")
    if "use_bias" in config and config["use_bias"] != layer.bias:
        problems.append(f"use_bias={config['use_bias']!r}, but this layer has bias={layer.bias}")
    if "activation" in config:
        activation = config["activation"]
        if spec.kind == "rnn" and activation in ACTIVATIONS:
            if activation != spec.nonlinearity:
                problems.append(f"activation={activation!r}, but this layer has nonlinearity={spec.nonlinearity!r} "
                                f"(build rnncore.RNN(..., nonlinearity={activation!r}))")
        elif spec.kind == "rnn":
            problems.append(f"activation={activation!r}; rnncore's RNN computes {' or '.join(map(repr, ACTIVATIONS))}")
        elif activation != "tanh":
            problems.append(f"activation={activation!r}; rnncore's {keras_name} computes 'tanh' there")
    if spec.kind in ("lstm", "gru") and config.get("recurrent_activation", "sigmoid") != "sigmoid":
        problems.append(f"recurrent_activation={config['recurrent_activation']!r}; rnncore's {keras_name} gates "
                        f"are 'sigmoid'")
    if spec.kind == "gru" and "reset_after" in config and config["reset_after"] != spec.reset_after:
        problems.append(f"reset_after={config['reset_after']!r}, but this layer has reset_after={spec.reset_after} "
                        f"(build rnncore.GRU(..., reset_after={config['reset_after']!r}))")
    if config.get("go_backwards", backward) != backward:
        problems.append(f"go_backwards={config['go_backwards']!r}" + (
            " in the backward layer of a Bidirectional" if backward else
            "; an rnncore layer reads the sequence forward (reverse x along time yourself, and y comes out "
            "reversed as Keras returns it; a Keras Bidirectional is an rnncore bidirectional=True layer)"))
    if config.get("stateful", False) is not False:
        problems.append(f"stateful={config['stateful']!r}; an rnncore layer starts each call from the h0 it is "
                        f"given (pass the last h_n as h0, or use layer.stream())")
    return problems


def _check_config(layer, config, verb="load_weights", labels=None):
    """Refuse, before anything changes, a Keras configuration (one per layer of the
    stack) describing something `layer` does not compute; `labels` name the entries in
    the messages, and `verb` begins them."""
    entries = list(config) if isinstance(config, (list, tuple)) else [config]
    if len(entries) != layer.num_layers:
        raise ValueError(f"config: expected {layer.num_layers} Keras layer configuration(s), one per layer of the "
                         f"stack, got {len(entries)}")
    problems = []
    for k, (spec, entry) in enumerate(zip(layer.specs, entries)):
        where = labels[k] if labels else f"config[{k}]" if isinstance(config, (list, tuple)) else "config"
        class_name, found = _unwrap(entry, where)
        wrapped = class_name == "Bidirectional" or (class_name is None and "layer" in found)
        if wrapped != layer.bidirectional:
            given = "a Keras Bidirectional wrapper" if wrapped else f"a Keras {class_name or 'layer'}"
            problems.append(f"{where}: got {given}, but this layer has bidirectional={layer.bidirectional}")
            continue
        if wrapped:
            unknown = sorted(set(found) - _WRAPPER_KEYS)
            if unknown:
                problems.append(f"{where}: got Bidirectional keys {unknown}, which rnncore cannot be sure it "
                                f"reproduces")
            if found.get("merge_mode", "concat") != "concat":
                problems.append(f"{where}: got merge_mode={found['merge_mode']!r}; an rnncore bidirectional layer "
                                f"concatenates the two directions (merge_mode='concat')")
            if "layer" not in found:
                problems.append(f"{where}: got a Bidirectional config without its 'layer'")
                continue
            # a Keras 2 wrapper without a custom backward layer mirrors the forward one
            parts = [("layer", False)]
            if found.get("backward_layer") is not None:
                parts.append(("backward_layer", True))
            directions = [(f"{where}[{part!r}]", *_unwrap(found[part], f"{where}[{part!r}]"), backward)
                          for part, backward in parts]
        else:
            directions = [(where, class_name, found, False)]
        for label, inner_class, inner_config, backward in directions:
            problems += [f"{label}: got {p}" for p in _config_problems(layer, spec, inner_class, inner_config,
                                                                        backward)]
            if k < layer.num_layers - 1 and inner_config.get("return_sequences", True) is not True:
                problems.append(f"{label}: got return_sequences={inner_config['return_sequences']!r} in layer {k} "
                                f"of {layer.num_layers}; the next layer reads its whole output sequence")
    if problems:
        raise ValueError(f"{verb}: " + "; ".join(problems))


def load_weights(layer, *weights, config=None):
    """Copy the weights of the equivalent Keras layer (or Bidirectional wrapper, or stack)
    into `layer`, in place. Call forms:

        load_weights(layer, kernel, recurrent_kernel, bias)
        load_weights(layer, keras_layer.get_weights())       # one list, as Keras lists it
        load_weights(layer, weights, config=keras_layer.get_config())
        load_weights(layer, keras_layer)                     # a Keras layer object itself
        load_weights(layer, [keras_layer_0, keras_layer_1])  # a stack, one per layer

    Parameters
    ----------
    layer : rc.RNN, rc.LSTM or rc.GRU
        The layer to fill; a SimpleRNN's, LSTM's or GRU's counterpart of the same sizes.
    *weights : arrays, a list of them, or Keras layers
        For each layer of the stack and each direction (forward first): `kernel`
        (input, G*H), `recurrent_kernel` (H, G*H) and, with bias, `bias` (G*H,), or
        (2, 3*H) for a reset_after GRU; gate blocks in Keras' order (KERAS_GATES).
        Keras layer objects give both their weights and their config.
    config : dict, Keras layer, or list of them, optional
        The Keras layer (or its get_config() dict, its serialised {"class_name",
        "config"} form, or a dict of only some keys, e.g. {"activation": "relu"}), or
        for a stack a list of them, one per layer: checked against what `layer`
        computes. Training-time options (dropout, regularisers, constraints,
        initialisers) have no effect on a call and are not carried over.

    Returns
    -------
    None

    Raises
    ------
    ValueError
        An option that changes what the layer computes and that `layer` does not
        reproduce (activations, use_bias, units, reset_after, go_backwards, stateful,
        merge_mode, unknown keys), naming what was given; wrong counts or shapes; a GRU
        bias of the other reset_after form. Nothing is changed on any error.
    TypeError
        `layer` is not an rnncore RNN, LSTM or GRU, or `config` given beside Keras
        layer objects.

    Examples
    --------
    >>> import numpy as np, rnncore as rc
    >>> kernel = np.zeros((3, 12), np.float32)          # what keras.layers.GRU(4) holds
    >>> recurrent_kernel = np.zeros((4, 12), np.float32)
    >>> bias = np.zeros((2, 12), np.float32)
    >>> bias[0, :4] = 1.0                                # Keras' gates z, r, h: z's input bias
    >>> gru = rc.GRU(3, 4)
    >>> rc.keras.load_weights(gru, kernel, recurrent_kernel, bias, config={"reset_after": True})
    >>> gru.state_dict()["bias_ih_l0"].reshape(3, 4)[:, 0]  # rnncore's r, z, n
    array([0., 1., 0.], dtype=float32)
    """
    given = list(weights[0]) if len(weights) == 1 and isinstance(weights[0], (list, tuple)) else list(weights)
    if given and all(_is_keras_layer(w) for w in given):
        if config is not None:
            raise TypeError(f"config: expected None when Keras layers are passed (their own get_config() is "
                            f"read), got {type(config).__name__}")
        config = given if len(given) > 1 else given[0]
        weights = ([w for keras_layer in given for w in keras_layer.get_weights()],)
    if config is not None:
        _convertible(layer, "load_weights")
        _check_config(layer, config)
    layer.load_state_dict(keras_state_dict(layer, *weights))


def to_keras_weights(layer):
    """The arrays that `set_weights()` of the equivalent Keras layer, Bidirectional
    wrapper or stack takes: the inverse of `load_weights`.

    Parameters
    ----------
    layer : rc.RNN, rc.LSTM or rc.GRU
        The layer; a plain Elman RNN (tanh or relu), LSTM or GRU.

    Returns
    -------
    list of np.ndarray
        For each layer of the stack and each direction (forward first): `kernel`
        (input, G*H), `recurrent_kernel` (H, G*H) and, with bias, `bias`: (2, 3*H)
        for a reset_after GRU, else (G*H,), the sum of rnncore's two biases. Gate
        blocks in Keras' order (KERAS_GATES); copies, in the layer's dtype.

    Raises
    ------
    TypeError
        `layer` is not an rnncore RNN, LSTM or GRU.
    ValueError
        A layer Keras has no counterpart for (the Jordan RNN, proj_size, peepholes,
        coupled gates), naming what it lacks.

    Examples
    --------
    >>> import numpy as np, rnncore as rc
    >>> gru = rc.GRU(3, 4, bidirectional=True, seed=0)
    >>> weights = rc.keras.to_keras_weights(gru)
    >>> [w.shape for w in weights[:3]]                 # the forward layer; then the backward
    [(3, 12), (4, 12), (2, 12)]
    >>> copy = rc.GRU(3, 4, bidirectional=True, seed=1)
    >>> rc.keras.load_weights(copy, weights)
    >>> x = np.ones((5, 2, 3), np.float32)
    >>> bool(np.allclose(copy(x)[0], gru(x)[0]))
    True
    """
    _convertible(layer, "to_keras_weights")
    params = layer.state_dict()
    out = []
    for k, d, spec, _ in _slots(layer):
        suffix = layer_suffix(k, d)
        out.append(from_native(params["weight_ih" + suffix], spec, KERAS_GATES).T.copy())
        out.append(from_native(params["weight_hh" + suffix], spec, KERAS_GATES).T.copy())
        if not layer.bias:
            continue
        b_ih = from_native(params["bias_ih" + suffix], spec, KERAS_GATES)
        b_hh = from_native(params["bias_hh" + suffix], spec, KERAS_GATES)
        if spec.kind == "gru" and spec.reset_after:
            out.append(np.stack([b_ih, b_hh]))
        else:
            # b_hh sits outside any gate product in these cells (for reset_after=False
            # GRU too: n = tanh(W_in x + b_in + W_hn (r*h) + b_hn)), so it folds into one bias
            out.append(b_ih + b_hh)
    return out


# -- Keras models --------------------------------------------------------------------------

_RECURRENT_CLASSES = frozenset(_KERAS_CLASSES.values()) | {"Bidirectional"}
# a Keras activation name -> the registered rnncore module that computes it; "linear"
# (Keras' serialised None) is no module at all
_ACTIVATION_MODULES = {"tanh": "Tanh", "relu": "ReLU", "sigmoid": "Sigmoid"}
_DENSE_NO_EFFECT = frozenset({
    "name", "trainable", "dtype", "kernel_initializer", "bias_initializer", "kernel_regularizer",
    "bias_regularizer", "activity_regularizer", "kernel_constraint", "bias_constraint"})
_DENSE_CHECKED = frozenset({"units", "activation", "use_bias", "quantization_config"})
_ACTIVATION_KEYS = frozenset({"name", "trainable", "dtype", "activation"})


def _is(module, registered_name):
    # the toolkit's modules are told apart by their registered checkpoint names
    # (core/module.py), by exact class: interop may not import the toolkit, and a
    # subclass may compute something else
    cls = registered().get(registered_name)
    return cls is not None and type(module) is cls


def _keras_layers(keras_model):
    """The Keras layers of a Keras Sequential (its `.layers`) or of a list of layers."""
    layers = getattr(keras_model, "layers", keras_model)
    if not isinstance(layers, (list, tuple)) or not all(_is_keras_layer(layer) for layer in layers):
        raise TypeError(f"keras_model: expected a Keras Sequential or a list of Keras layers (objects with "
                        f"get_config() and get_weights()), got {type(keras_model).__name__}")
    return list(layers)


def _label(layers, i):
    config = layers[i].get_config()
    name = f" {config['name']!r}" if isinstance(config.get("name"), str) else ""
    return f"keras_model.layers[{i}] ({type(layers[i]).__name__}{name})"


def _activation_problem(activation, module, where):
    """What differs between a Keras activation and `module`, the rnncore module that
    must compute it (None at the model's end), or None when nothing differs."""
    if activation == "linear":
        return None
    expected = _ACTIVATION_MODULES.get(activation) if isinstance(activation, str) else None
    if expected is None:
        return (f"{where}: got activation={activation!r}; rnncore has {', '.join(_ACTIVATION_MODULES.values())} "
                f"modules for {', '.join(map(repr, _ACTIVATION_MODULES))} (or 'linear', no module)")
    if module is None or not _is(module, expected):
        found = "the model ends there" if module is None else f"it is a {type(module).__name__}"
        return f"{where}: got activation={activation!r}, so the next module must be an rnncore {expected}, but {found}"
    return None


def _activation(config):
    # Keras serialises activation=None as "linear"; a partial config may hold either
    activation = config.get("activation", "linear")
    return "linear" if activation is None else activation


def _returns_sequences(layer):
    config = layer.get_config()
    if type(layer).__name__ == "Bidirectional":
        _, config = _unwrap(config.get("layer", {}), "layer")
    # Keras' own default
    return config.get("return_sequences", False) is True


def _dense_state(module, keras_layer, where, verb):
    """The state of the rnncore Linear `module` from a Keras Dense, after checking that it
    computes the same, except for the activation (the caller's)."""
    config = keras_layer.get_config()
    problems = []
    unknown = sorted(set(config) - _DENSE_NO_EFFECT - _DENSE_CHECKED)
    if unknown:
        problems.append(f"keys {unknown}, which rnncore cannot be sure it reproduces")
    if config.get("quantization_config") is not None:
        problems.append(f"quantization_config={config['quantization_config']!r}; rnncore's Linear is not quantised")
    if "units" in config and config["units"] != module.out_features:
        problems.append(f"units={config['units']!r}, but this Linear has out_features={module.out_features}")
    if config.get("use_bias", True) != module.bias:
        problems.append(f"use_bias={config.get('use_bias', True)!r}, but this Linear has bias={module.bias}")
    weights = [validate.to_numpy(w, f"weights[{n}]") for n, w in enumerate(keras_layer.get_weights())]
    names = ("kernel", "bias") if module.bias else ("kernel",)
    expected = {"kernel": (module.in_features, module.out_features), "bias": (module.out_features,)}
    if len(weights) != len(names):
        problems.append(f"{len(weights)} arrays, but this Linear takes {len(names)} ({', '.join(names)})")
    else:
        problems += [f"{name} of shape {w.shape}, but this Linear takes {expected[name]}"
                     for name, w in zip(names, weights) if w.shape != expected[name]]
        problems += [f"{name} of dtype {w.dtype}, expected a real number array"
                     for name, w in zip(names, weights) if w.dtype.kind not in "iuf"]
    if problems:
        raise ValueError(f"{verb}: {where}: got " + "; ".join(problems))
    state = {"weight": weights[0].T}
    if module.bias:
        state["bias"] = weights[1]
    return state


def load_model_weights(model, keras_model):
    """Copy the weights of a Keras Sequential into the rnncore Sequential that computes
    the same, after checking, layer by layer, that it does.

    The Keras layers pair with the rnncore modules in order: a SimpleRNN, LSTM or GRU
    (or a Bidirectional of one) with an RNN, LSTM or GRU (bidirectional=True), a stack of
    num_layers=k taking k Keras layers in a row; a recurrent layer with
    return_sequences=False with the rnncore layer followed by a LastStep; a Dense with a
    Linear, followed by Tanh, ReLU or Sigmoid where the Dense has that activation; an
    Activation layer with that module. Keras' InputLayer computes nothing and pairs with
    nothing. Every option that changes what a layer computes is checked as `load_weights`
    checks it (activations, units, use_bias, reset_after, go_backwards, stateful,
    merge_mode, unknown keys); training-time options (dropout, regularisers, initialisers)
    are not carried over. Keras reads (batch, time, features): give the rnncore model
    batch_first=True layers, or transpose the input.

    rnncore's modules are recognised by their registered checkpoint classes
    (`rnncore.checkpoint.registered()`), exactly: a subclass pairs with nothing.

    Parameters
    ----------
    model : rnncore Sequential
        Its parameters are overwritten in place.
    keras_model : Keras Sequential, or list of Keras layers
        Read through `.layers` and each layer's get_config() and get_weights() only;
        Keras is not imported.

    Returns
    -------
    None

    Raises
    ------
    TypeError
        model is not an rnncore Sequential, or keras_model has no Keras layers.
    ValueError
        A pair of layers differs, naming the Keras layer's index, the module's index and
        what differs (a layer kind, an activation, units, return_sequences, a shape, an
        option). Everything is checked before anything is copied: on any error the model
        is unchanged.

    Examples
    --------
    Any object with Keras' get_config() and get_weights() serves; this stand-in is a
    Dense(2, activation="tanh") reading 3 features:

    >>> import numpy as np, rnncore as rc
    >>> class Dense:
    ...     def get_config(self):
    ...         return {"name": "dense", "units": 2, "activation": "tanh", "use_bias": True}
    ...     def get_weights(self):
    ...         return [np.ones((3, 2), np.float32), np.zeros(2, np.float32)]
    >>> model = rc.Sequential(rc.Linear(3, 2), rc.Tanh())
    >>> rc.keras.load_model_weights(model, [Dense()])
    >>> model[0].state_dict()["weight"]
    array([[1., 1., 1.],
           [1., 1., 1.]], dtype=float32)
    >>> rc.keras.load_model_weights(rc.Sequential(rc.Linear(3, 2)), [Dense()])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: load_model_weights: model[0] (Linear) <- keras_model.layers[0] (Dense 'dense'): ... Tanh, ...
    """
    verb = "load_model_weights"
    if not _is(model, "Sequential"):
        raise TypeError(f"model: expected an rnncore Sequential, got {type(model).__name__}")
    layers, modules = _keras_layers(keras_model), list(model.modules)
    state, i, k = {}, 0, 0
    while i < len(layers):
        class_name = type(layers[i]).__name__
        if class_name == "InputLayer":
            i += 1
            continue
        module = modules[k] if k < len(modules) else None
        where = (f"model[{k}] ({type(module).__name__}) <- " if module else "") + _label(layers, i)
        if class_name == "Activation":
            config = layers[i].get_config()
            unknown = sorted(set(config) - _ACTIVATION_KEYS)
            if unknown:
                raise ValueError(f"{verb}: {where}: got keys {unknown}, which rnncore cannot be sure it reproduces")
            activation = _activation(config)
            problem = _activation_problem(activation, module, where)
            if problem:
                raise ValueError(f"{verb}: {problem}")
            i, k = i + 1, k + (activation != "linear")
            continue
        if module is None:
            raise ValueError(f"{verb}: {where}: got a Keras {class_name}, but the model ends at model[{k - 1}]")
        if class_name in _RECURRENT_CLASSES:
            if not isinstance(module, _Recurrent):
                raise ValueError(f"{verb}: {where}: got a Keras {class_name}, but the module there is not an rnncore "
                                 f"RNN, LSTM or GRU")
            count = getattr(module, "num_layers", 1)
            group = range(i, i + count)
            if group.stop > len(layers) or any(type(layers[j]).__name__ not in _RECURRENT_CLASSES for j in group):
                raise ValueError(f"{verb}: {where}: this layer has num_layers={count}, so it takes {count} Keras "
                                 f"recurrent layers in a row, but keras_model.layers[{i}:{group.stop}] are "
                                 f"{[type(layer).__name__ for layer in layers[i:group.stop]]}")
            pair = f"model[{k}] ({type(module).__name__}) <- "
            where = pair + _label(layers, i) + (f"..[{group.stop - 1}]" if count > 1 else "")
            keras_group = [layers[j] for j in group]
            _convertible(module, f"{verb}: {where}")
            _check_config(module, keras_group, verb, [pair + _label(layers, j) for j in group])
            weights = [w for layer in keras_group for w in layer.get_weights()]
            state.update({f"{k}.{name}": value for name, value
                          in keras_state_dict(module, weights, verb=f"{verb}: {where}").items()})
            i, k = group.stop, k + 1
            follower = modules[k] if k < len(modules) else None
            last_step = follower is not None and _is(follower, "LastStep")
            if _returns_sequences(layers[i - 1]):
                if last_step:
                    raise ValueError(f"{verb}: {where}: got return_sequences=True, but model[{k}] is a LastStep, "
                                     f"which keeps the last step only")
            elif not last_step:
                found = "the model ends there" if follower is None else f"it is a {type(follower).__name__}"
                raise ValueError(f"{verb}: {where}: got return_sequences=False, so model[{k}] must be a LastStep, "
                                 f"but {found}")
            elif follower.batch_first != module.batch_first:
                raise ValueError(f"{verb}: model[{k}] (LastStep): has batch_first={follower.batch_first}, but "
                                 f"model[{k - 1}] has batch_first={module.batch_first}")
            else:
                k += 1
        elif class_name == "Dense":
            if not _is(module, "Linear"):
                raise ValueError(f"{verb}: {where}: got a Keras Dense, but the module there is not an rnncore Linear")
            state.update({f"{k}.{name}": value for name, value in _dense_state(module, layers[i], where, verb).items()})
            activation = _activation(layers[i].get_config())
            follower = modules[k + 1] if k + 1 < len(modules) else None
            problem = _activation_problem(activation, follower, where)
            if problem:
                raise ValueError(f"{verb}: {problem}")
            i, k = i + 1, k + 1 + (activation != "linear")
        else:
            raise ValueError(f"{verb}: {where}: got a Keras {class_name}; rnncore maps SimpleRNN, LSTM, GRU, "
                             f"Bidirectional, Dense, Activation and InputLayer")
    if k < len(modules):
        raise ValueError(f"{verb}: model[{k}:] ({', '.join(type(m).__name__ for m in modules[k:])}): got no Keras "
                         f"layer for these modules")
    model.load_state_dict(state)
