"""Backend selection and thread count.

A backend is a module with `layer_forward` and `layer_backward` (the contract is written
at the end of `_reference.py`). The default is the fastest one that imports here:
cython when the extension was compiled, else numba, else the NumPy reference.
"""
import importlib
import numbers
import os
import warnings

_MODULES = {
    "cython": "rnncore._cython.backend",
    "numba": "rnncore._numba.backend",
    "numpy": "rnncore._reference",
}
_PREFERENCE = ("cython", "numba", "numpy")

_loaded = {}
_import_errors = {}
_selected = None
_num_threads = None       # the user's count: set_num_threads or RNNCORE_NUM_THREADS
_followed_threads = None  # (count, backends loaded) taken from a host framework while the user set none
_CPU_COUNT = os.cpu_count() or 1  # read once: the call costs a system call, per call in step-by-step decoding


def _load(name):
    if name not in _loaded and name not in _import_errors:
        try:
            _loaded[name] = importlib.import_module(_MODULES[name])
        except ImportError as exc:  # not compiled here, or numba not installed
            _import_errors[name] = exc
    return _loaded.get(name)


def backends():
    """Names of the backends available here, fastest first."""
    return [name for name in _PREFERENCE if _load(name) is not None]


def _check_name(name):
    if name not in _MODULES:
        raise ValueError(f"backend: expected one of {list(_MODULES)}, got {name!r}")
    if _load(name) is None:
        raise ValueError(f"backend: {name!r} is not available here ({_import_errors[name]})")


def set_backend(name):
    """Select the backend used by layers and functions that were not given one."""
    global _selected
    _check_name(name)
    _selected = name


def _default():
    global _selected
    requested = os.environ.get("RNNCORE_BACKEND")
    if requested:
        try:
            _check_name(requested)
        except ValueError as exc:
            raise ValueError(f"RNNCORE_BACKEND: {exc}") from None
        _selected = requested
        return
    available = backends()
    _selected = available[0]
    if _selected != _PREFERENCE[0]:
        skipped = "; ".join(f"{n}: {_import_errors[n]}" for n in _PREFERENCE[:_PREFERENCE.index(_selected)])
        warnings.warn(f"rnncore is using the {_selected!r} backend because faster ones are "
                      f"unavailable ({skipped})", RuntimeWarning, stacklevel=3)


def get_backend():
    """Name of the backend in use."""
    if _selected is None:
        _default()
    return _selected


def resolve(name=None):
    """The backend module for `name`, or for the current selection when None."""
    if name is None:
        name = get_backend()
    else:
        _check_name(name)
    return _loaded[name]


def set_num_threads(n):
    """Threads used by the kernels and by BLAS."""
    global _num_threads
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"set_num_threads: expected a positive int, got {n!r}")
    _num_threads = n = int(n)
    _apply_threads(n)


def _apply_threads(n):
    from threadpoolctl import threadpool_limits
    threadpool_limits(limits=n, user_api="blas")
    for module in _loaded.values():
        hook = getattr(module, "set_num_threads", None)
        if hook is not None:
            hook(n)


def follow_threads(n):
    """Use `n` threads, the count of the framework rnncore runs inside (rnncore.torch
    passes torch's), unless the user set rnncore's own. Applied again only when `n` or
    the loaded backends change: applying scans the loaded libraries. Returns whether it
    applied."""
    global _followed_threads
    if _num_threads is not None or _followed_threads == (n, len(_loaded)):
        return False
    _apply_threads(n)
    _followed_threads = (n, len(_loaded))
    return True


def get_num_threads():
    """Threads used by the kernels and by BLAS (default: the CPU count, or the count a
    host framework passed to `follow_threads`)."""
    if _num_threads is not None:
        return _num_threads
    return _followed_threads[0] if _followed_threads is not None else _CPU_COUNT


def _init_threads_from_env():
    value = os.environ.get("RNNCORE_NUM_THREADS")
    if value:
        try:
            set_num_threads(int(value))
        except ValueError:
            raise ValueError(f"RNNCORE_NUM_THREADS: expected a positive int, got {value!r}") from None
