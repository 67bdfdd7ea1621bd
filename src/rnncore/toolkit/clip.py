"""Gradient clipping with PyTorch's semantics, over dicts of gradient arrays, layers,
or lists of either. Both work in place and leave the arrays' identities alone."""
from __future__ import annotations

from typing import Any
import math
import numbers

import numpy as np

from ..core import validate
from ..core.docs import filled

__all__ = ["clip_grad_norm_", "clip_grad_value_"]

# The entries the functions' docstrings share, filled in by `filled(_DOCS)`
_DOCS = {
    'grads': 'grads : dict of arrays, module, float array, or an iterable of these\n'
             '        The gradients, clipped in place (a module\'s are its `grads`).',
    'grads_raises': 'TypeError\n        grads is none of those, or holds an array that is not a float array.',
}


def _gradient_arrays(grads):
    if isinstance(grads, np.ndarray):
        return [_float_array("grads", grads)]
    if isinstance(grads, dict):
        return [_float_array(f"grads[{name!r}]", g) for name, g in grads.items()]
    if hasattr(grads, "grads") and isinstance(grads.grads, dict):
        return list(grads.grads.values())
    if isinstance(grads, (list, tuple)) or (hasattr(grads, "__iter__") and not isinstance(grads, (str, bytes))):
        # a list or any iterable (a generator, as torch users pass) of the above
        return [g for item in grads for g in _gradient_arrays(item)]
    raise TypeError(f"grads: expected a dict of arrays, a layer, an array, or an iterable of these, "
                    f"got {type(grads).__name__}")


def _float_array(name, value):
    # clipped in place: only a float array can be scaled where it lies
    if not isinstance(value, np.ndarray) or value.dtype.kind != "f":
        raise TypeError(f"{name}: expected a float array, got "
                        f"{value.dtype if isinstance(value, np.ndarray) else type(value).__name__}")
    return value


def _number(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value):
        raise ValueError(f"{name}: expected a real number, got {value!r}")
    return float(value)


@filled(_DOCS)
def clip_grad_norm_(grads: Any, max_norm: float, norm_type: float = 2.0, error_if_nonfinite: bool = False) -> float:
    """Scale all gradients so that their joint `norm_type` norm is at most `max_norm`.

    The total norm is the norm of the per-array norms (inf: the largest |g|); every
    array is multiplied by min(1, max_norm / (total + 1e-6)). Returns the total norm
    before clipping, as a float.

    Parameters
    ----------
    %(grads)s
    max_norm : float >= 0
        The largest total norm left.
    norm_type : float > 0 or inf (or "inf"), default 2.0
        The order of the norm.
    error_if_nonfinite : bool, default False
        Whether a NaN or infinite total norm raises instead of clipping.

    Returns
    -------
    total_norm : float
        The total norm before clipping.

    Raises
    ------
    %(grads_raises)s
    ValueError
        max_norm or norm_type out of range.
    RuntimeError
        A non-finite total norm with error_if_nonfinite=True; nothing changes.

    Examples
    --------
    >>> import numpy as np, rnncore as rc
    >>> grads = {"a": np.array([3.0]), "b": np.array([4.0])}
    >>> rc.clip_grad_norm_(grads, max_norm=1.0)
    5.0
    >>> np.round(grads["a"], 4), np.round(grads["b"], 4)
    (array([0.6]), array([0.8]))
    """
    arrays = _gradient_arrays(grads)
    max_norm = _number("max_norm", max_norm)
    if max_norm < 0:
        raise ValueError(f"max_norm: expected a number >= 0, got {max_norm}")
    error_if_nonfinite = validate.flag("error_if_nonfinite", error_if_nonfinite)
    if isinstance(norm_type, str) and norm_type.lower() in ("inf", "infinity"):
        norm_type = math.inf  # torch accepts the string too
    norm_type = _number("norm_type", norm_type)
    if norm_type <= 0:
        raise ValueError(f"norm_type: expected a positive number or inf, got {norm_type}")
    if not arrays:
        return 0.0
    if math.isinf(norm_type):
        # np.max, not Python's max: a NaN must win wherever it sits, and Python's max
        # keeps its first operand whenever a comparison with NaN is False
        total = float(np.max([np.max(np.abs(g)) if g.size else 0.0 for g in arrays]))
    else:
        norms = [np.linalg.norm(g.ravel().astype(np.float64), norm_type) for g in arrays]
        total = float(np.linalg.norm(np.asarray(norms), norm_type))
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(f"clip_grad_norm_: the total norm of order {norm_type} is {total}; "
                           "pass error_if_nonfinite=False to clip anyway")
    coef = min(max_norm / (total + 1e-6), 1.0)
    with np.errstate(invalid="ignore"):  # a NaN/Inf total scales to NaN, as torch, without a warning
        for g in arrays:
            g *= g.dtype.type(coef)
    return total


@filled(_DOCS)
def clip_grad_value_(grads: Any, clip_value: float) -> None:
    """Clamp every gradient element into [-clip_value, clip_value], in place.

    Parameters
    ----------
    %(grads)s
    clip_value : float >= 0
        The largest |element| left.

    Returns
    -------
    None

    Raises
    ------
    %(grads_raises)s
    ValueError
        clip_value out of range.

    Examples
    --------
    >>> import numpy as np, rnncore as rc
    >>> grads = {"w": np.array([-3.0, 0.5, 2.0])}
    >>> rc.clip_grad_value_(grads, 1.0)
    >>> grads["w"]
    array([-1. ,  0.5,  1. ])
    """
    arrays = _gradient_arrays(grads)
    clip_value = _number("clip_value", clip_value)
    if clip_value < 0:
        raise ValueError(f"clip_value: expected a number >= 0, got {clip_value}")
    for g in arrays:
        np.clip(g, -clip_value, clip_value, out=g)
