"""Backend selection, the thread count and the BLAS section.

A backend is a module with `layer_forward` and `layer_backward` (the contract is
`contract.Backend`). The default is the fastest one that imports here:
cython when the extension was compiled, else numba, else the NumPy reference. The
thread count is resolved here and passed to the backends as an argument; the BLAS
section (`blas_section`) is the one place that holds the kernels' BLAS at one thread.
"""
import ctypes
import functools
import importlib
import itertools
import math
import numbers
import os
import threading
import warnings


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


# -- the thread count -----------------------------------------------------------------
#
# The default is the CPUs this process may use: those its affinity mask allows (taskset,
# a cpuset, a batch scheduler's binding), fewer where a cgroup CPU quota allows fewer (a
# container run with --cpus=1.5 gets 1.5 CPUs' time per period: 2 threads, as
# scikit-learn and loky count it). More threads than that only take turns on the same
# CPUs, each direction or chunk waiting for a time slice.

def affinity_cpus():
    """CPUs this process may run on: os.process_cpu_count() where Python has it (it also
    honours `-X cpu_count`), else the size of the affinity mask, else the CPU count."""
    if hasattr(os, "process_cpu_count"):
        return os.process_cpu_count() or 1
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def _fields(path):
    try:
        with open(path) as file:
            return file.read().split()
    except (OSError, UnicodeDecodeError):
        return []


def _ancestors(root, path):
    """`root`/`path` and each directory above it up to `root`: a quota set on a parent
    cgroup (a systemd slice, a pod) binds its children too. A path above the namespace's
    root ("/../x") is not under `root`: the root alone."""
    parts = [part for part in path.split("/") if part]
    if ".." in parts:
        parts = []
    return [os.path.join(root, *parts[:depth]) for depth in range(len(parts), -1, -1)]


def cgroup_cpu_quota(root="/sys/fs/cgroup", self_cgroup="/proc/self/cgroup"):
    """ceil(quota / period) of the tightest CPU quota on this process's cgroup path, or
    None where none is set or none can be read. cgroup v2: `cpu.max` ("max 100000", or
    "150000 100000" for 1.5 CPUs); v1: `cpu.cfs_quota_us` (-1: none) over
    `cpu.cfs_period_us` under the cpu controller's folder. `self_cgroup` gives the
    process's path below `root` (inside a container's namespace, "/": the root itself)."""
    v2_path, v1_path, v1_folders = "/", "/", ["cpu"]
    try:
        with open(self_cgroup) as file:
            for line in file:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                if not controllers:
                    v2_path = path
                elif "cpu" in controllers.split(","):
                    v1_path, v1_folders = path, ["cpu", controllers]
    except (OSError, UnicodeDecodeError, ValueError):
        pass  # unreadable or not Linux's format: the roots alone
    limits = []
    for folder in _ancestors(root, v2_path):
        limits.append(_fields(os.path.join(folder, "cpu.max")))
    for name in dict.fromkeys(v1_folders):
        for folder in _ancestors(os.path.join(root, name), v1_path):
            limits.append(_fields(os.path.join(folder, "cpu.cfs_quota_us"))
                          + _fields(os.path.join(folder, "cpu.cfs_period_us")))
    counts = []
    for limit in limits:
        try:
            quota, period = (int(value) for value in limit)
        except ValueError:  # "max", a missing file, an unexpected format: no quota there
            continue
        if quota > 0 and period > 0:
            counts.append(math.ceil(quota / period))
    return min(counts, default=None)


def available_cpus(cgroup_root="/sys/fs/cgroup", self_cgroup="/proc/self/cgroup", cpus=None):
    """The default thread count: `cpus` (default: `affinity_cpus()`), fewer where the
    cgroup CPU quota allows fewer."""
    cpus = affinity_cpus() if cpus is None else cpus
    quota = cgroup_cpu_quota(cgroup_root, self_cgroup)
    return cpus if quota is None else max(1, min(cpus, quota))


# read once: the files and system calls cost more than a one-step decode's arithmetic
_CPU_COUNT = available_cpus()

# The thread count's upper bound: far above any useful count, and well inside the C int
# that numba, OpenMP and the BLAS libraries take (2**31 overflowed it)
MAX_THREADS = max(1024, os.cpu_count() or 1)


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
    passes torch's), unless the user set rnncore's own; the count is resolved per call
    (`get_num_threads`) and passed to the backend, so following is only recording it."""
    global _followed_threads
    if _num_threads is None:
        _followed_threads = n


def get_num_threads():
    """Threads for rnncore's own parallel work: the count set (`set_num_threads`,
    RNNCORE_NUM_THREADS), else a host framework's (`follow_threads`), else the CPUs this
    process may use (`available_cpus`, read at import)."""
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
# The numba backend calls the BLAS behind scipy.linalg.cython_blas (the cython kernels
# call none, but hold the section too, so the protocol is one for both). Its thread count
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
    """The BLAS section of `blas_section` in Python, for the numba backend where the
    compiled extension is absent (where it exists, the extension's section in C is the
    process's one: its kernels hold it without the GIL)."""

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


_EXTENSION = "rnncore.backends.cython._recurrent"
_section = None
_section_lock = threading.Lock()


def _new_section_lock():
    global _section_lock
    _section_lock = threading.Lock()  # a thread of the parent's may have held it


os.register_at_fork(after_in_child=_new_section_lock)


def blas_section():
    """The process's one BLAS section, the only way into it from Python.

    Protocol: `token = section.blas_enter()` before a kernel's BLAS calls and
    `section.blas_leave(token)` after them (in a `finally`), in the same thread. Inside,
    the BLAS that scipy.linalg.cython_blas calls (`blas_thread_functions`) runs at one
    thread. Sections nest and overlap across threads and backends: a process-wide setting
    is set to 1 by the first caller in and put back by the last one out (unless someone
    else changed it meanwhile), a per-thread setting by each caller in its own thread; so
    no caller puts back a limit while another is inside.

    The compiled extension's section (`blas_enter`/`blas_leave`, the one the cython
    kernels hold) where the extension exists, configured here; else `_OneBlasThread`,
    the same protocol in Python. Made once, under a lock: every caller counts in the
    same one."""
    global _section
    if _section is None:
        with _section_lock:
            if _section is None:
                try:
                    extension = importlib.import_module(_EXTENSION)
                except ImportError:  # not compiled here
                    _section = _OneBlasThread(blas_thread_functions())
                else:
                    extension.configure_blas(blas_thread_functions())
                    _section = extension
    return _section


# -- freed memory kept for the next call -------------------------------------------------
#
# A training call allocates its per-step buffers afresh, megabytes each, and frees them
# when its context goes. glibc's malloc gives such blocks back to the kernel (as mmaps,
# and by trimming the heap once more than a few megabytes lie free at its top), so every
# call faulted its pages in again: at small sizes, a third of a training step. At import
# the thresholds are raised, so that blocks up to MMAP_THRESHOLD come from the heap and it
# is trimmed only past TRIM_THRESHOLD free: the next call reuses the pages. The trim
# threshold covers a large training step's buffers (a float64 LSTM at (25, 32, 512, 512),
# a two-layer bidirectional one at (50, 64, 128, 256): 100-200 MB freed at once), which a
# 64 MB one had given back every step, 9-13% of the step's time; the heap then stays at
# the largest call's peak, which the process reached anyway. Nothing changes where the
# user tunes malloc (MALLOC_* variables, glibc.malloc tunables), or with
# RNNCORE_KEEP_FREED_MEMORY=0.
MMAP_THRESHOLD = 32 * 2**20   # glibc's own ceiling for its adaptive threshold
TRIM_THRESHOLD = 256 * 2**20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3   # malloc.h's mallopt parameters


def keep_freed_memory(environ=os.environ):
    """Raise glibc malloc's mmap and trim thresholds, as above; True when done (glibc,
    and neither the user's malloc settings nor RNNCORE_KEEP_FREED_MEMORY=0)."""
    if environ.get("RNNCORE_KEEP_FREED_MEMORY", "1") == "0":
        return False
    if any(name.startswith("MALLOC_") for name in environ) or "glibc.malloc" in environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc"):
            return False
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError, ValueError, TypeError):  # not Linux, not glibc
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


_init_threads_from_env()
keep_freed_memory()
