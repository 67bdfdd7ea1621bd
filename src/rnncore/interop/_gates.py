"""Gate orders of the interchange formats, and the conversion between them and rnncore's.

rnncore holds the gate blocks in PyTorch's order (`CellSpec.gates`, from core/spec.py);
Keras and ONNX hold the same blocks in orders of their own, written below in the same
letters. A format's table covers the kinds it has a layer or operator for.
"""
import numpy as np

# Keras' LSTM kernel holds i, f, c, o; its GRU z, r, h
KERAS_GATES = {"rnn": "a", "lstm": "ifgo", "gru": "zrn"}
# ONNX's LSTM W holds i, o, f, c (four blocks even with input_forget=1); its GRU z, r, h
ONNX_GATES = {"rnn": "a", "lstm": "iofg", "gru": "zrn"}


def reorder_gates(array, source, target, axis=0):
    """Rearrange the gate blocks of `array` along `axis` from the order `source` to the
    order `target` (strings of gate letters). A gate of `target` that `source` lacks
    becomes a zero block (the unused forget gate of ONNX's coupled LSTM); a gate of
    `source` that `target` lacks is dropped."""
    array = np.asarray(array)
    for name, order in (("source", source), ("target", target)):
        if not isinstance(order, str) or not order:
            raise TypeError(f"{name}: expected a string of gate letters such as 'ifgo', got {order!r}")
    if array.shape[axis] % len(source):
        raise ValueError(f"expected axis {axis} of an array of gates {', '.join(source)} to be a multiple "
                         f"of {len(source)}, got shape {array.shape}")
    blocks = dict(zip(source, np.split(array, len(source), axis=axis)))
    zero = np.zeros_like(blocks[source[0]])
    return np.concatenate([blocks.get(gate, zero) for gate in target], axis=axis)


def to_native(array, spec, orders):
    """`array`'s gate blocks (along axis 0) from a format's order for `spec`'s kind
    (`orders`: KERAS_GATES or ONNX_GATES) into rnncore's."""
    return reorder_gates(array, orders[spec.kind], spec.gates)


def from_native(array, spec, orders):
    """`array`'s gate blocks (along axis 0) from rnncore's order into a format's for
    `spec`'s kind (the inverse of `to_native`)."""
    return reorder_gates(array, spec.gates, orders[spec.kind])
