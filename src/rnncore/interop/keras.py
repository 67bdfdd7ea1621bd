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
"""
from collections.abc import Mapping

import numpy as np

from ..core import validate
from ..core.layers import _Recurrent
from ..core.spec import ACTIVATIONS, KIND_NAMES, layer_suffix
from ._gates import KERAS_GATES, from_native, reorder_gates, to_native

__all__ = ["load_weights", "to_keras_weights", "reorder_gates", "KERAS_GATES"]

_KERAS_CLASSES = {"rnn": "SimpleRNN", "lstm": "LSTM", "gru": "GRU"}
# the variant features (core/spec.py FEATURES) each Keras layer computes: SimpleRNN's
# activation="relu", GRU's reset_after=True; a feature missing here is refused
_EXPRESSIBLE = {"rnn": {"relu"}, "lstm": set(), "gru": {"reset_after"}}


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


def _gru_bias_variant_error(bias_shape, layer_reset_after, units):
    keras_form = "reset_after=True" if len(bias_shape) == 2 else "reset_after=False"
    return ValueError(
        f"load_weights: got a GRU bias of shape {bias_shape}, the layout of a Keras GRU with "
        f"{keras_form}, but this layer has reset_after={layer_reset_after}, which computes a different "
        f"candidate gate; build rnncore.GRU(..., reset_after={not layer_reset_after}) for these weights "
        f"(a Keras reset_after=True bias is (2, {3 * units}), reset_after=False is ({3 * units},))")


def keras_state_dict(layer, *weights):
    """The rnncore state_dict equivalent to Keras weights (see `load_weights`)."""
    _convertible(layer, "load_weights")
    if len(weights) == 1 and isinstance(weights[0], (list, tuple)):
        weights = tuple(weights[0])
    per_set = 3 if layer.bias else 2
    slots = _slots(layer)
    if len(weights) != per_set * len(slots):
        listing = "kernel, recurrent_kernel" + (", bias" if layer.bias else "")
        raise ValueError(
            f"load_weights: expected {per_set * len(slots)} arrays ({listing} for each of "
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
            raise TypeError("load_weights: " + "; ".join(bad))
        G = spec.num_gates
        bias = arrays[2] if layer.bias else None
        if spec.kind == "gru" and bias is not None and bias.shape in ((2, G * H), (G * H,)) \
                and (bias.ndim == 2) != spec.reset_after:
            raise _gru_bias_variant_error(bias.shape, spec.reset_after, H)
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
        raise ValueError("load_weights: " + "; ".join(wrong))
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


def _check_config(layer, config):
    """Refuse, before anything changes, a Keras configuration (one per layer of the
    stack) describing something `layer` does not compute."""
    entries = list(config) if isinstance(config, (list, tuple)) else [config]
    if len(entries) != layer.num_layers:
        raise ValueError(f"config: expected {layer.num_layers} Keras layer configuration(s), one per layer of the "
                         f"stack, got {len(entries)}")
    problems = []
    for k, (spec, entry) in enumerate(zip(layer.specs, entries)):
        where = f"config[{k}]" if isinstance(config, (list, tuple)) else "config"
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
        raise ValueError("load_weights: " + "; ".join(problems))


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
