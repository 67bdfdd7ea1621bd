"""Losses with forward and backward: `loss = loss_fn(input, target)` returns a float and
keeps what `loss_fn.backward()` needs to return d loss / d input."""
from __future__ import annotations

from typing import Any, Optional
import inspect
import numbers

import numpy as np
from numpy.typing import ArrayLike

from ..core import validate
from ..core.docs import filled
from ..core.module import ConfigRepr

__all__ = ["MSELoss", "CrossEntropyLoss"]

_REDUCTIONS = ("mean", "sum")

# The entries the losses' docstrings share, filled in by `filled(_DOCS)`
_DOCS = {
    'reduction': 'reduction : {"mean", "sum"}, default "mean"\n        Whether the loss is the mean or the sum over the elements counted.',
    'loss': 'loss : float\n            The loss, accumulated in float64.',
    'backward_returns': 'Returns\n        -------\n        dinput : np.ndarray, the shape and dtype of that call\'s input\n'
                        '            The gradient of the loss with respect to the input.',
    'backward_raises': 'Raises\n        ------\n        RuntimeError\n            The loss was not called yet.',
}


def _float_array(name: str, value: Any) -> np.ndarray:
    arr = validate.to_numpy(value, name)
    validate.float_dtype(arr.dtype, name)
    validate.finite(name, arr)
    return arr


class _Loss(ConfigRepr):
    def __init__(self, reduction: str = "mean") -> None:
        self.reduction = validate.choice("reduction", reduction, _REDUCTIONS)
        self._saved = None

    def get_config(self) -> dict[str, Any]:
        """The constructor arguments by name."""
        return {name: getattr(self, name) for name in inspect.signature(type(self).__init__).parameters
                if name != "self"}

    def _saved_or_raise(self):
        if self._saved is None:
            raise RuntimeError(f"{type(self).__name__}.backward: call the loss on an input first")
        return self._saved


@filled(_DOCS)
class MSELoss(_Loss):
    """Mean (or sum) of (input - target)**2 over all elements, as torch.nn.MSELoss.

    `mask` (optional, broadcastable to input, 0/1 or weights) restricts the loss to the
    marked elements; "mean" then divides by the mask's sum, so masked-out elements such as
    padding or missing values neither count nor dilute the mean.

    Parameters
    ----------
    %(reduction)s

    Raises
    ------
    ValueError
        An unknown reduction.

    Examples
    --------
    >>> import numpy as np, rnncore as rc
    >>> loss_fn = rc.MSELoss()
    >>> loss_fn(np.array([1.0, 2.0, 5.0]), np.array([1.0, 2.0, 2.0]), mask=[1.0, 1.0, 0.0])
    0.0
    >>> loss_fn.backward()
    array([0., 0., 0.])
    """

    @filled(_DOCS)
    def __call__(self, input: ArrayLike, target: ArrayLike, mask: Optional[ArrayLike] = None) -> float:
        """``loss = loss_fn(input, target, mask=None)``; keeps what `backward` needs.

        Parameters
        ----------
        input : array_like of float, any shape
        target : array_like of float, the shape of input
        mask : array_like of float, broadcastable to input, optional
            Weights (0/1 or any) of the elements counted; None: all, weight 1.

        Returns
        -------
        %(loss)s

        Raises
        ------
        ValueError, TypeError
            A wrong shape or dtype, a non-finite value, or a mask marking nothing.
        """
        input = _float_array("input", input)
        target = _float_array("target", target)
        validate.shape("target", target, input.shape)
        diff = input - target.astype(input.dtype)
        if mask is None:
            weights, count = input.dtype.type(1), diff.size
        else:
            weights = _float_array("mask", mask).astype(input.dtype)
            try:
                weights = np.broadcast_to(weights, input.shape)
            except ValueError:
                raise ValueError(f"mask: expected a shape broadcastable to {input.shape}, got {weights.shape}") from None
            count = float(weights.sum())
            if count <= 0:
                raise ValueError("mask: expected at least one marked element, got none")
        scale = input.dtype.type(1.0 / count if self.reduction == "mean" else 1.0)
        weighted = weights * diff
        self._saved = weighted * scale
        return float(np.sum(weighted * diff, dtype=np.float64) * scale)

    forward = __call__

    @filled(_DOCS)
    def backward(self) -> np.ndarray:
        """d loss / d input of the last call.

        %(backward_returns)s

        %(backward_raises)s
        """
        return 2 * self._saved_or_raise()


@filled(_DOCS)
class CrossEntropyLoss(_Loss):
    """Softmax cross-entropy of logits (..., C), classes on the LAST axis, against integer
    targets (...): (B, C) with (B,) for one label per sequence (the last step), (T, B, C)
    with (T, B) for one per step. Targets equal to `ignore_index` count for nothing, and
    "mean" averages over the rest, as torch.nn.CrossEntropyLoss (whose classes are on
    axis 1 instead).

    Parameters
    ----------
    %(reduction)s
    ignore_index : int, default -100
        The target value that counts for nothing (padding).

    Raises
    ------
    ValueError, TypeError
        An unknown reduction, or ignore_index not an int.

    Examples
    --------
    >>> import numpy as np, rnncore as rc
    >>> loss_fn = rc.CrossEntropyLoss()
    >>> round(loss_fn(np.zeros((2, 4)), np.array([3, -100])), 6)  # log(4)
    1.386294
    >>> loss_fn.backward()[0]  # the ignored row's gradient is zero
    array([ 0.25,  0.25,  0.25, -0.75])
    """

    def __init__(self, reduction: str = "mean", ignore_index: int = -100) -> None:
        super().__init__(reduction)
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
            raise TypeError(f"ignore_index: expected an int, got {ignore_index!r}")
        self.ignore_index = int(ignore_index)

    @filled(_DOCS)
    def __call__(self, logits: ArrayLike, target: ArrayLike) -> float:
        """``loss = loss_fn(logits, target)``; keeps what `backward` needs.

        Parameters
        ----------
        logits : array_like of float, (..., C)
            Unnormalised scores, the classes on the last axis.
        target : array_like of int, (...)
            Class indices in [0, C - 1], or ignore_index.

        Returns
        -------
        %(loss)s

        Raises
        ------
        ValueError, TypeError
            A wrong shape or dtype, a non-finite logit, a class out of range, or every
            target ignored.
        """
        logits = _float_array("logits", logits)
        target = validate.to_numpy(target, "target")
        if target.dtype.kind not in "iu":
            raise TypeError(f"target: expected integer class indices, got dtype {target.dtype}")
        if logits.ndim < 1 or target.shape != logits.shape[:-1]:
            raise ValueError(f"target: expected shape {logits.shape[:-1]} (logits' shape without the class "
                             f"axis), got {target.shape}")
        classes = logits.shape[-1]
        keep = target != self.ignore_index
        if np.any((target[keep] < 0) | (target[keep] >= classes)):
            raise ValueError(f"target: expected class indices in [0, {classes - 1}] or ignore_index "
                             f"{self.ignore_index}, got min {target[keep].min()}, max {target[keep].max()}")
        count = int(keep.sum())
        if count == 0:
            raise ValueError("target: expected at least one target not equal to ignore_index, got none")
        # log-softmax after subtracting the row maximum: exp never overflows
        shifted = logits - logits.max(axis=-1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
        safe_target = np.where(keep, target, 0)
        picked = np.take_along_axis(log_probs, safe_target[..., None], axis=-1)[..., 0]
        scale = 1.0 / count if self.reduction == "mean" else 1.0
        self._saved = (log_probs, safe_target, keep, logits.dtype.type(scale))
        return float(-np.sum(picked[keep], dtype=np.float64) * scale)

    forward = __call__

    @filled(_DOCS)
    def backward(self) -> np.ndarray:
        """d loss / d input of the last call.

        %(backward_returns)s

        %(backward_raises)s
        """
        log_probs, target, keep, scale = self._saved_or_raise()
        # d/dz -log softmax(z)[t] = softmax(z) - onehot(t)
        grad = np.exp(log_probs)
        np.put_along_axis(grad, target[..., None], np.take_along_axis(grad, target[..., None], axis=-1) - 1,
                          axis=-1)
        grad *= (keep * scale).astype(grad.dtype)[..., None]
        return grad
