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
    order `target`.

    Parameters
    ----------
    array : array_like, (..., len(source) * H, ...)
        The gate blocks, each H long along `axis`.
    source, target : str
        Gate letters in order: rnncore's (PyTorch's) LSTM "ifgo" and GRU "rzn";
        ONNX's LSTM "iofg"; Keras' and ONNX's GRU "zrn" (KERAS_GATES, ONNX_GATES). A
        gate of `target` that `source` lacks becomes a zero block (the unused forget
        gate of ONNX's coupled LSTM); a gate of `source` that `target` lacks is
        dropped.
    axis : int, default 0
        The axis holding the blocks.

    Returns
    -------
    np.ndarray, (..., len(target) * H, ...)
        A new array, of `array`'s dtype.

    Raises
    ------
    TypeError
        `source` or `target` not a non-empty string.
    ValueError
        `array`'s length along `axis` is not a multiple of len(source).

    Examples
    --------
    >>> import numpy as np, rnncore as rc
    >>> rc.keras.reorder_gates(np.arange(4), "ifgo", "iofg")
    array([0, 3, 1, 2])
    >>> rc.keras.reorder_gates(np.arange(6).reshape(3, 2), "igo", "ifgo")
    array([[0, 1],
           [0, 0],
           [2, 3],
           [4, 5]])
    """
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
