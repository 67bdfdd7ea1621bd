"""Keras weights in and out, and the gate-order conversion that every interchange format
needs (rnncore.onnx uses it too). Nothing here imports Keras: the arrays are what a Keras
layer's `get_weights()` returns.

Keras layouts (Keras 2 and 3): `kernel` (input, G*units) applied as x @ kernel,
`recurrent_kernel` (units, G*units), gate blocks LSTM i, f, c, o and GRU z, r, h, and
- SimpleRNN, LSTM: one bias (G*units,);
- GRU reset_after=True (the default): bias (2, 3*units) = [input bias; recurrent bias],
  the recurrent one inside r * (...), as PyTorch's b_hn;
- GRU reset_after=False: bias (3*units,), input side only.
A `Bidirectional` wrapper lists the forward layer's arrays, then the backward layer's; a
stack lists its layers in order.
"""
import numpy as np

from . import _validate

__all__ = ["load_weights", "to_keras_weights", "reorder_gates", "KERAS_GATES"]

# Gate blocks are named by one canonical letter whatever a library calls them:
# LSTM i, f, g (the cell candidate: Keras' and ONNX's "c"), o; GRU r, z, n (their "h");
# "a" is the single pre-activation of an Elman RNN.
KERAS_GATES = {"rnn": "a", "lstm": "ifgo", "gru": "zrn"}


def native_gates(spec):
    """rnncore's (PyTorch's) gate order for one cell spec."""
    if spec.kind == "lstm":
        return "igo" if spec.coupled_input_forget else "ifgo"
    return {"rnn": "a", "gru": "rzn", "jordan": "a"}[spec.kind]


def reorder_gates(array, source, target, axis=0):
    """Rearrange the gate blocks of `array` along `axis` from the order `source` to the
    order `target` (strings of gate letters). A gate of `target` that `source` lacks
    becomes a zero block (the unused forget gate of ONNX's coupled LSTM); a gate of
    `source` that `target` lacks is dropped."""
    array = np.asarray(array)
    if array.shape[axis] % len(source):
        raise ValueError(f"expected axis {axis} of an array of gates {', '.join(source)} to be a multiple "
                         f"of {len(source)}, got shape {array.shape}")
    blocks = dict(zip(source, np.split(array, len(source), axis=axis)))
    zero = np.zeros_like(blocks[source[0]])
    return np.concatenate([blocks.get(gate, zero) for gate in target], axis=axis)


def _convertible(layer, verb):
    """The layer's cell spec, if Keras has a layer computing the same thing."""
    from .layers import _Recurrent  # layers imports this module lazily; no cycle at import time
    if not isinstance(layer, _Recurrent):
        raise TypeError(f"{verb}: expected an rnncore RNN, LSTM or GRU layer, got {type(layer).__name__}")
    spec = layer.specs[0]
    if spec.kind == "jordan":
        raise ValueError(f"{verb}: Keras has no Jordan RNN layer, so there are no Keras weights to convert")
    extras = [name for name, on in (("proj_size", spec.proj_size), ("peephole", spec.peephole),
                                    ("coupled_input_forget", spec.coupled_input_forget)) if on]
    if extras:
        raise ValueError(f"{verb}: Keras' LSTM has no {', '.join(extras)}; only a plain LSTM converts")
    return spec


def _slots(layer):
    """(layer index, direction, spec, label) of each weight set, in Keras' listing order."""
    return [(k, d, spec, f"layer {k} {'backward' if d else 'forward'}")
            for k, spec in enumerate(layer.specs) for d in range(layer.num_directions)]


def _suffix(k, d):
    return f"_l{k}" + ("_reverse" if d else "")


def _gru_bias_variant_error(bias_shape, layer_reset_after, units):
    keras_form = "reset_after=True" if len(bias_shape) == 2 else "reset_after=False"
    return ValueError(
        f"load_keras_weights: got a GRU bias of shape {bias_shape}, the layout of a Keras GRU with "
        f"{keras_form}, but this layer has reset_after={layer_reset_after}, which computes a different "
        f"candidate gate; build rnncore.GRU(..., reset_after={not layer_reset_after}) for these weights "
        f"(a Keras reset_after=True bias is (2, {3 * units}), reset_after=False is ({3 * units},))")


def keras_state_dict(layer, *weights):
    """The rnncore state_dict equivalent to Keras weights (see `load_weights`)."""
    spec0 = _convertible(layer, "load_keras_weights")
    if len(weights) == 1 and isinstance(weights[0], (list, tuple)):
        weights = tuple(weights[0])
    per_set = 3 if layer.bias else 2
    slots = _slots(layer)
    if len(weights) != per_set * len(slots):
        listing = "kernel, recurrent_kernel" + (", bias" if layer.bias else "")
        raise ValueError(
            f"load_keras_weights: expected {per_set * len(slots)} arrays ({listing} for each of "
            f"{layer.num_layers} layer(s) x {layer.num_directions} direction(s), forward first), "
            f"got {len(weights)}" + ("" if layer.bias else " (this layer has bias=False)"))
    keras_order, native = KERAS_GATES[spec0.kind], native_gates(spec0)
    H = layer.hidden_size
    state, wrong = {}, []
    for n, (k, d, spec, label) in enumerate(slots):
        arrays = [_validate.to_numpy(w) for w in weights[n * per_set:(n + 1) * per_set]]
        bad = [f"weights[{n * per_set + j}] ({label} {name}): expected a real number array, got dtype {a.dtype}"
               for j, (name, a) in enumerate(zip(("kernel", "recurrent_kernel", "bias"), arrays))
               if a.dtype.kind not in "iuf"]
        if bad:
            raise TypeError("load_keras_weights: " + "; ".join(bad))
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
        suffix = _suffix(k, d)
        state["weight_ih" + suffix] = reorder_gates(arrays[0].T, keras_order, native)
        state["weight_hh" + suffix] = reorder_gates(arrays[1].T, keras_order, native)
        if bias is None:
            continue
        if bias.ndim == 2:
            input_bias, recurrent_bias = bias
        else:
            # one Keras bias: it all goes to the input side, where it adds the same
            input_bias, recurrent_bias = bias, np.zeros_like(bias)
        state["bias_ih" + suffix] = reorder_gates(input_bias, keras_order, native)
        state["bias_hh" + suffix] = reorder_gates(recurrent_bias, keras_order, native)
    if wrong:
        raise ValueError("load_keras_weights: " + "; ".join(wrong))
    return state


def load_weights(layer, *weights):
    """Copy the weights of the equivalent Keras layer (or Bidirectional wrapper, or stack)
    into `layer`: `load_weights(layer, kernel, recurrent_kernel, bias)`, or one list of
    all the arrays as Keras' `get_weights()` lists them. Wrong counts, shapes or a GRU
    reset_after mismatch raise before anything is changed."""
    layer.load_state_dict(keras_state_dict(layer, *weights))


def to_keras_weights(layer):
    """The list of arrays that `set_weights()` of the equivalent Keras layer or stack takes
    (the inverse of `load_weights`; the two biases of an RNN, LSTM or reset_after=False GRU
    add up into Keras' one)."""
    spec0 = _convertible(layer, "to_keras_weights")
    keras_order, native = KERAS_GATES[spec0.kind], native_gates(spec0)
    params = layer.state_dict()
    out = []
    for k, d, spec, _ in _slots(layer):
        suffix = _suffix(k, d)
        out.append(reorder_gates(params["weight_ih" + suffix], native, keras_order).T.copy())
        out.append(reorder_gates(params["weight_hh" + suffix], native, keras_order).T.copy())
        if not layer.bias:
            continue
        b_ih = reorder_gates(params["bias_ih" + suffix], native, keras_order)
        b_hh = reorder_gates(params["bias_hh" + suffix], native, keras_order)
        if spec.kind == "gru" and spec.reset_after:
            out.append(np.stack([b_ih, b_hh]))
        else:
            # b_hh sits outside any gate product in these cells (for reset_after=False
            # GRU too: n = tanh(W_in x + b_in + W_hn (r*h) + b_hn)), so it folds into one bias
            out.append(b_ih + b_hh)
    return out
