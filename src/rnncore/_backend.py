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
_num_threads = None
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


# The thread count's upper bound: far above any useful count, and well inside the C int
# that numba, OpenMP and the BLAS libraries take (2**31 overflowed it)
MAX_THREADS = max(1024, _CPU_COUNT)


def set_num_threads(n):
    """Threads used by the kernels and by BLAS."""
    global _num_threads
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or not 1 <= n <= MAX_THREADS:
        raise ValueError(f"set_num_threads: expected an int from 1 to {MAX_THREADS}, got {n!r}")
    _num_threads = n = int(n)
    from threadpoolctl import threadpool_limits
    threadpool_limits(limits=n, user_api="blas")
    for module in _loaded.values():
        hook = getattr(module, "set_num_threads", None)
        if hook is not None:
            hook(n)


def get_num_threads():
    """Threads used by the kernels and by BLAS (default: the CPU count)."""
    return _num_threads if _num_threads is not None else _CPU_COUNT


def _init_threads_from_env():
    value = os.environ.get("RNNCORE_NUM_THREADS")
    if value:
        try:
            count = int(value)
        except ValueError:
            count = 0
        if not 1 <= count <= MAX_THREADS:
            raise ValueError(f"RNNCORE_NUM_THREADS: expected an int from 1 to {MAX_THREADS}, got {value!r}")
        set_num_threads(count)
