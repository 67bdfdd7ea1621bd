"""Backend selection and thread count.

A backend is a module with `layer_forward` and `layer_backward` (the contract is
`contract.Backend`). The default is the fastest one that imports here:
cython when the extension was compiled, else numba, else the NumPy reference.
"""
import ctypes
import functools
import importlib
import itertools
import numbers
import os
import threading
import warnings

import numpy as np


_MODULES = {
    "cython": "rnncore.backends.cython.backend",
    "numba": "rnncore.backends.numba.backend",
    "numpy": "rnncore.backends.reference.backend",
}
_PREFERENCE = ("cython", "numba", "numpy")

_loaded = {}
_import_errors = {}
_selected = None
_num_threads = None       # the user's count: set_num_threads or RNNCORE_NUM_THREADS
_followed_threads = None  # the count taken from a host framework while the user set none
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


def check_name(name):
    if name not in _MODULES:
        raise ValueError(f"backend: expected one of {list(_MODULES)}, got {name!r}")
    if _load(name) is None:
        raise ValueError(f"backend: {name!r} is not available here ({_import_errors[name]})")


def set_backend(name):
    """Select the backend used by layers and functions that were not given one."""
    global _selected
    check_name(name)
    _selected = name


def _default():
    global _selected
    requested = os.environ.get("RNNCORE_BACKEND")
    if requested:
        try:
            check_name(requested)
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
        check_name(name)
    return _loaded[name]


# The thread count's upper bound: far above any useful count, and well inside the C int
# that numba, OpenMP and the BLAS libraries take (2**31 overflowed it)
MAX_THREADS = max(1024, _CPU_COUNT)


def set_num_threads(n):
    """Threads for rnncore's own parallel work: the two directions of a bidirectional
    layer side by side (cython), the batch chunks (numba). The BLAS calls inside the
    kernels run on one thread each, whatever n is: threaded BLAS splits a product
    differently for each thread count, which changes the last bits of the result."""
    global _num_threads
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or not 1 <= n <= MAX_THREADS:
        raise ValueError(f"set_num_threads: expected an int from 1 to {MAX_THREADS}, got {n!r}")
    _num_threads = int(n)


def follow_threads(n):
    """Use `n` threads, the count of the framework rnncore runs inside (rnncore.torch
    passes torch's), unless the user set rnncore's own; the kernels read the count per
    call, so following is only recording it."""
    global _followed_threads
    if _num_threads is None:
        _followed_threads = n


def get_num_threads():
    """Threads for rnncore's own parallel work (default: the CPU count, or the count a
    host framework passed to `follow_threads`)."""
    if _num_threads is not None:
        return _num_threads
    return _followed_threads if _followed_threads is not None else _CPU_COUNT


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


# -- BLAS at one thread inside the kernels ---------------------------------------------
#
# The compiled backends call the BLAS behind scipy.linalg.cython_blas. Its thread count
# is set through the library's own functions: threadpoolctl lets only the first thread
# that set an OpenBLAS limit change it again, so a limit set from any other thread did
# nothing. Per library: the names of its getter and setter, and whether the setting
# belongs to the calling thread (OpenMP's, MKL's local one) or to the process (OpenBLAS's
# own thread pool, BLIS, FlexiBLAS).
_THREAD_FUNCTIONS = {
    "openblas-openmp": ("omp_get_max_threads", "omp_set_num_threads", True),
    "mkl": ("MKL_Get_Max_Threads", "MKL_Set_Num_Threads_Local", True),
    "blis": ("bli_thread_get_num_threads", "bli_thread_set_num_threads", False),
    "flexiblas": ("flexiblas_get_num_threads", "flexiblas_set_num_threads", False),
}
_GET_TYPE = ctypes.CFUNCTYPE(ctypes.c_int)
_SET_TYPE = ctypes.CFUNCTYPE(None, ctypes.c_int)


def _thread_functions(lib):
    """(getter address, setter address, per_thread) for one threadpoolctl controller, or
    None where its thread count cannot be set (a sequential build, an unknown library)."""
    api = lib.internal_api
    if api == "openblas":
        layer = getattr(lib, "threading_layer", "unknown")
        if layer == "openmp":
            api = "openblas-openmp"
        elif layer == "disabled":
            return None
        else:
            # the symbols carry the build's prefix and suffix (scipy's: scipy_...)
            for prefix, suffix in itertools.product(("", "scipy_"), ("", "64_", "_64")):
                if hasattr(lib.dynlib, f"{prefix}openblas_get_num_threads{suffix}"):
                    names = (f"{prefix}openblas_get_num_threads{suffix}",
                             f"{prefix}openblas_set_num_threads{suffix}", False)
                    break
            else:
                return None
    if api != "openblas":
        if api not in _THREAD_FUNCTIONS:
            return None
        names = _THREAD_FUNCTIONS[api]
    getter, setter = (getattr(lib.dynlib, name, None) for name in names[:2])
    if getter is None or setter is None:
        return None
    return (ctypes.cast(getter, ctypes.c_void_p).value, ctypes.cast(setter, ctypes.c_void_p).value, names[2])


@functools.lru_cache(maxsize=None)
def blas_thread_functions():
    """The thread-count functions of the BLAS that scipy.linalg.cython_blas calls: the
    libraries scipy ships inside its own package where it ships one (pip wheels; numpy
    has its own copy, which rnncore's kernels do not call), else every BLAS loaded."""
    import scipy
    import scipy.linalg.cython_blas  # noqa: F401  loads scipy's BLAS, for the scan to see
    from threadpoolctl import ThreadpoolController
    libs = ThreadpoolController().select(user_api="blas").lib_controllers
    scipy_dir = os.path.dirname(os.path.realpath(scipy.__file__))
    inside = (scipy_dir + os.sep, scipy_dir + ".libs" + os.sep)
    own = [lib for lib in libs if os.path.realpath(lib.filepath).startswith(inside)]
    found = (_thread_functions(lib) for lib in (own or libs))
    return tuple(functions for functions in found if functions is not None)


class _OneBlasThread:
    """BLAS at one thread from `blas_enter` to `blas_leave`, for the numba backend where the
    compiled extension is absent (the extension's `_recurrent.blas_enter/leave` is the
    same section in C, and the one used wherever it exists, so that both backends count
    in one place). A process-wide setting is changed by the first caller in and put back
    by the last one out, unless someone else changed it meanwhile; a per-thread setting is
    changed and put back by each caller."""

    def __init__(self, functions):
        self._functions = [(_GET_TYPE(get), _SET_TYPE(set_), per_thread) for get, set_, per_thread in functions]
        self._reset()
        os.register_at_fork(after_in_child=self._after_fork)

    def _reset(self):
        self._lock = threading.Lock()
        self._users = 0
        self._saved = [1] * len(self._functions)

    def _after_fork(self):
        # the threads inside a section did not come along: put their setting back
        if self._users:
            for (_, set_, per_thread), saved in zip(self._functions, self._saved):
                if not per_thread and saved != 1:
                    set_(saved)
        self._reset()

    def blas_enter(self):
        own = []
        with self._lock:
            for k, (get, set_, per_thread) in enumerate(self._functions):
                if per_thread or not self._users:
                    value = get()
                    if value != 1:
                        set_(1)
                    if per_thread:
                        own.append(value)
                    else:
                        self._saved[k] = value
            self._users += 1
        return tuple(own)

    def blas_leave(self, own):
        own = iter(own)
        with self._lock:
            self._users -= 1
            for k, (get, set_, per_thread) in enumerate(self._functions):
                if per_thread:
                    value = next(own)
                    if value != 1:
                        set_(value)
                elif not self._users and self._saved[k] != 1 and get() == 1:
                    set_(self._saved[k])


@functools.lru_cache(maxsize=None)
def blas_section():
    """The object whose `blas_enter()`/`blas_leave(token)` hold the kernels' BLAS at one thread:
    the compiled extension's where it exists, else the Python one."""
    if _load("cython") is not None:
        from .cython import _recurrent
        return _recurrent
    return _OneBlasThread(blas_thread_functions())


_init_threads_from_env()
