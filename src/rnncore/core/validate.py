"""Checks made once, at the edge, before any compute. Each error names the argument,
what was expected and what came."""
from __future__ import annotations

import numbers
from typing import Any, Optional

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
# the largest size the kernels' BLAS calls can index (32-bit ints)
MAX_SIZE = 2 ** 31 - 1


def float_dtype(dtype: Any, name: str = "dtype") -> np.dtype:
    """The numpy dtype for a user's `dtype` argument; only float32 and float64 (None
    too is refused: numpy would read it as float64 without a word)."""
    try:
        dt = None if dtype is None else np.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None:
        raise TypeError(f"{name}: expected float32 or float64, got {dtype!r}")
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected float32 or float64, got {dt}")
    return dt


def to_numpy(value: Any, name: Optional[str] = None) -> np.ndarray:
    """An array from an array-like, converting a torch tensor without importing torch.
    A ragged nested list is a ValueError naming `name`, not numpy's wording."""
    if hasattr(value, "detach") and hasattr(value, "numpy"):
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except (ValueError, TypeError, OverflowError):
        where = f"{name}: " if name else ""
        raise ValueError(f"{where}expected an array (nested lists of equal lengths), got a ragged or mixed "
                         f"{type(value).__name__}") from None


def array(name: str, value: Any, dtype: Any, source: str = "the layer's dtype") -> np.ndarray:
    """`value` as an array of exactly `dtype` (taken from `source`), else a TypeError."""
    arr = to_numpy(value, name)
    if arr.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected dtype {dtype}, got {arr.dtype}")
    if arr.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype} ({source}), got {arr.dtype}")
    return arr


def kernel_input(arr: np.ndarray, training: bool) -> np.ndarray:
    """C-contiguous, as the kernels want it. In training the backward pass keeps it, so it
    must be our own copy: a caller refilling their buffer before backward would otherwise
    change the gradients silently."""
    return np.array(arr, order="C", copy=True) if training else np.ascontiguousarray(arr)


def shape(name, arr, expected):
    if arr.shape != tuple(expected):
        raise ValueError(f"{name}: expected shape {tuple(expected)}, got {arr.shape}")


def finite(name, arr, skippable=True):
    if not np.isfinite(arr).all():
        hint = " (pass check_finite=False to skip this check)" if skippable else ""
        raise ValueError(f"{name}: expected finite values, got NaN or Inf{hint}")


# -- the one check of a sequence call, shared by the layers, the cells and rc.functional -----

TIME_MAJOR, BATCH_FIRST, STEP = "time-major", "batch-first", "step"


class SequenceForm:
    """How one door's calls lie, fixed when the door is made (a layer or a cell when it is
    built, rc.functional per call): the cell (`spec`), where x's axes are (`layout`: x
    (T, B, I) time-major, (B, T, I) batch-first, or one step (B, I)), whether x may come
    without its batch axis, the states' leading rows (None: none, a cell's or a
    function's; D*L: a layer's), their dtype (None: x's own) and the names the messages
    use. A call through it formats nothing: the words are put together for an error only."""

    __slots__ = ("spec", "layout", "unbatched", "rows", "state_names", "grad_names", "dtype", "source", "_ndim",
                 "_rows")

    def __init__(self, spec, layout, state_names, grad_names, *, unbatched=False, rows=None, dtype=None,
                 source="x's dtype"):
        self.spec, self.layout, self.unbatched, self.rows = spec, layout, unbatched, rows
        self.state_names, self.grad_names, self.dtype, self.source = state_names, grad_names, dtype, source
        self._ndim = 2 if layout == STEP else 3  # of a batched x
        self._rows = () if rows is None else (rows,)

    def x_shape(self):
        """The shapes x may have, in words."""
        size = self.spec.input_size
        if self.layout == STEP:
            return f"(B, {size}), or ({size},) unbatched, with B >= 1"
        axes = "B, T" if self.layout == BATCH_FIRST else "T, B"
        unbatched = f", or (T, {size}) unbatched," if self.unbatched else ""
        return f"({axes}, {size}){unbatched} with T, B >= 1"

    def to_kernels(self, arr, batched):
        """x (or dy) as the (T, B, n) view the kernels read."""
        if self.layout == STEP:
            return arr[None] if batched else arr[None, None]
        if not batched:
            return arr[:, None]
        return arr.transpose(1, 0, 2) if self.layout == BATCH_FIRST else arr

    def states(self, given, names, dtype, batch, batched, check_finite, skippable):
        """The states (or their gradients) as a tuple of C-contiguous (D*L, B, n) arrays
        for a layer, (B, n) otherwise, zeros where None is given; each given one of the
        caller's shape, without B when x came unbatched."""
        out = []
        for name, width, value in zip(names, self.spec.state_sizes, given):
            if value is None:
                out.append(np.zeros(self._rows + (batch, width), dtype))
                continue
            arr = array(name, value, dtype, self.source)
            shape(name, arr, self._rows + ((batch, width) if batched else (width,)))
            if check_finite:
                finite(name, arr, skippable)
            if not batched:
                arr = arr[None] if self.rows is None else arr[:, None]
            out.append(np.ascontiguousarray(arr))
        return tuple(out)


def sequence_call(form: SequenceForm, x: Any, given_states: Any, given_lengths: Any, check_finite: Any,
                  training: bool, weights: Optional[dict] = None):
    """Check one forward call against `form`, before any compute, and return what the
    kernels take: x as C-contiguous time-major (T, B, I) (a copy of its own in training,
    see `kernel_input`), the states as a tuple of C-contiguous (..., B, n) arrays (zeros for
    None), the lengths as int64 (B,) or None, whether x had a batch axis, and the weights
    as C-contiguous arrays by name (given only by rc.functional: a layer's and a cell's
    weights are their own). The arguments are checked in that order, each for its dtype,
    shape and (unless check_finite is False) finite values."""
    check_finite = flag("check_finite", check_finite)
    if form.dtype is None:
        x = to_numpy(x, "x")
        dtype = float_dtype(x.dtype, "x")
    else:
        x, dtype = array("x", x, form.dtype, form.source), form.dtype
    batched = x.ndim == form._ndim
    if not (batched or (form.unbatched and x.ndim == form._ndim - 1)) or x.shape[-1] != form.spec.input_size \
            or 0 in x.shape:
        raise ValueError(f"x: expected shape {form.x_shape()}, got shape {x.shape}")
    if check_finite:
        finite("x", x)
    x = form.to_kernels(x, batched)
    T, B, _ = x.shape
    if weights is not None:
        weights = _weights(form.spec, weights, dtype, check_finite)
    if given_lengths is not None:
        if not batched:
            raise ValueError("lengths: expected None for unbatched input (slice x instead), got an array")
        given_lengths = lengths(given_lengths, B, T)
    states = form.states(given_states, form.state_names, dtype, B, batched, check_finite, skippable=True)
    return kernel_input(x, training), states, given_lengths, batched, weights


def sequence_grads(form: SequenceForm, dy: Any, given: Any, y_shape: tuple, batched: bool, check_finite: bool):
    """Check one backward call against `form` and the forward's time-major y shape
    (T, B, W): dy in the caller's layout (none for a cell, whose output is its state: dy
    is zeros there) and the final states' gradients (None: zeros). Returns dy as
    C-contiguous (T, B, W) and the gradients as a tuple of C-contiguous (..., B, n)
    arrays. A backward has no check_finite to name, so a non-finite gradient is refused
    without that hint."""
    T, B, W = y_shape
    if form.layout == STEP:
        dy = np.zeros(y_shape, form.dtype)
    else:
        dy = array("dy", dy, form.dtype, form.source)
        shape("dy", dy, (T, W) if not batched else (B, T, W) if form.layout == BATCH_FIRST else y_shape)
        if check_finite:
            finite("dy", dy, skippable=False)
        dy = np.ascontiguousarray(form.to_kernels(dy, batched))
    return dy, form.states(given, form.grad_names, form.dtype, B, batched, check_finite, skippable=False)


def pair(name: str, value: Any) -> tuple:
    """An LSTM's state pair (h, c), or their gradients; None is (None, None)."""
    if value is None:
        return (None, None)
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"{name}: expected a pair (h, c) or None, got {type(value).__name__}")
    return tuple(value)


def matrix_shape(name: str, value: Any) -> tuple:
    """The shape of a 2-d weight given to rc.functional, from which the cell's sizes are
    read before the weight itself is checked against them."""
    shape_ = np.shape(to_numpy(value, name))
    if len(shape_) != 2:
        raise ValueError(f"{name}: expected a 2-d array, got {type(value).__name__} of shape {shape_}")
    return shape_


def bias_pair(bias_ih: Any, bias_hh: Any) -> bool:
    """Whether rc.functional was given biases: both or neither."""
    if (bias_ih is None) != (bias_hh is None):
        raise ValueError("bias_ih, bias_hh: expected both or neither, got one")
    return bias_ih is not None


def _weights(spec, given, dtype, check_finite):
    """The weights given to rc.functional, as C-contiguous arrays of `dtype` by name."""
    # every size is read from a weight's shape: a size 0 shows as an empty axis there
    arrays = {name: to_numpy(value, name) for name, value in given.items() if value is not None}
    empty = [name for name, arr in arrays.items() if 0 in arr.shape]
    if empty:
        raise ValueError(f"{empty[0]}: expected every size (hidden_size, proj_size, output_size) >= 1, got shape "
                         f"{arrays[empty[0]].shape}")
    expected = spec.param_shapes()
    if spec.hidden_size < 1:
        raise ValueError(f"weight_ih: expected {spec.num_gates} * hidden_size rows, hidden_size >= 1, got shape "
                         f"{arrays['weight_ih'].shape}")
    unused = [name for name in arrays if name not in expected]
    if unused:
        raise ValueError(f"{', '.join(unused)}: expected None for this variant, got an array")
    out = {}
    for name, want in expected.items():
        if name not in arrays:
            raise ValueError(f"{name}: expected an array of shape {want}, got None")
        arr = array(name, arrays[name], dtype, source="x's dtype")
        shape(name, arr, want)
        if check_finite:
            finite(name, arr)
        out[name] = np.ascontiguousarray(arr)
    return out


def positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}")
    if value > MAX_SIZE:
        raise ValueError(f"{name}: expected an int <= {MAX_SIZE} (the largest size the kernels index), "
                         f"got {value!r}")
    return int(value)


def seed(value, name="seed"):
    """A seed numpy's default_rng takes: None, an int >= 0, a sequence of them, or a
    SeedSequence, BitGenerator or Generator, checked here so that the error is ours."""
    if value is None or isinstance(value, (np.random.SeedSequence, np.random.BitGenerator, np.random.Generator)):
        return value
    if isinstance(value, np.ndarray) and value.dtype.kind in "iu":
        value = value.tolist()
    entries = list(value) if isinstance(value, (list, tuple)) else [value]
    if entries and not any(isinstance(v, bool) or not isinstance(v, numbers.Integral) for v in entries):
        if min(entries) >= 0:
            return value
        raise ValueError(f"{name}: expected None or an int >= 0, got {value!r}")
    raise TypeError(f"{name}: expected None or an int >= 0, got {value!r}")


def flag(name: str, value: Any) -> bool:
    """A yes/no argument: a bool (or 0/1); anything else is a mistake worth naming, e.g.
    a string passed positionally where PyTorch's argument order differs."""
    if isinstance(value, (bool, np.bool_)) or (isinstance(value, numbers.Integral) and value in (0, 1)):
        return bool(value)
    raise TypeError(f"{name}: expected True or False, got {value!r}")


def choice(name, value, options):
    # compared by type first: `in` would compare an array elementwise and raise numpy's
    # error (a plain loop: a generator costs a short call a microsecond)
    for option in options:
        if type(value) is type(option) and value == option:
            return value
    raise ValueError(f"{name}: expected one of {list(options)}, got {value!r}")


def real(name: str, value: Any, minimum: Optional[float] = None, finite: bool = True) -> float:
    """A real number (not a bool), finite unless `finite=False`, and >= `minimum`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a real number, got {value!r}")
    value = float(value)
    bound = "" if minimum is None else f" >= {minimum}"
    if value != value or (finite and not np.isfinite(value)) or (minimum is not None and value < minimum):
        raise ValueError(f"{name}: expected a {'finite ' if finite else ''}number{bound}, got {value!r}")
    return value


def lengths(value: Any, batch: int, steps: int) -> np.ndarray:
    """Sequence lengths as int64 (batch,), each in [1, steps]."""
    arr = to_numpy(value, "lengths")
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and arr.size and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            pass  # integral floats are taken as ints
        else:
            raise TypeError(f"lengths: expected integers, got dtype {arr.dtype}")
    if arr.shape != (batch,):
        raise ValueError(f"lengths: expected shape ({batch},), got {arr.shape}")
    if arr.size and (arr.min() < 1 or arr.max() > steps):
        raise ValueError(f"lengths: expected values in [1, {steps}] (the sequence length), "
                         f"got min {arr.min()}, max {arr.max()}")
    return np.ascontiguousarray(arr, dtype=np.int64)
