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


def states(given: Any, names: Any, widths: Any, dtype: Any, lead: Any, check_finite: bool = True,
           source: str = "the layer's dtype") -> list[np.ndarray]:
    """Validated state arrays, each of shape lead + (width,); zeros where None is given."""
    out = []
    for name, width, value in zip(names, widths, given):
        expected = tuple(lead) + (width,)
        if value is None:
            out.append(np.zeros(expected, dtype=dtype))
            continue
        arr = array(name, value, dtype, source)
        shape(name, arr, expected)
        if check_finite:
            finite(name, arr)
        out.append(arr)
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
    # compared by type first: `in` would compare an array elementwise and raise numpy's error
    if not any(type(value) is type(option) and value == option for option in options):
        raise ValueError(f"{name}: expected one of {list(options)}, got {value!r}")
    return value


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
