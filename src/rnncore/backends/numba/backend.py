"""The numba backend: `rnncore.backends.contract.Backend` over the compiled loops of
`kernels`.

This module does the layout work the kernels trust. Per direction it puts the batch in
*work order* (the rows of the call's `contract.Schedule`, sorted by length, longest
first; each row's steps in the order its direction visits them), so that at every step
the running rows are a contiguous prefix; it allocates every buffer once per call, hands
the kernel C-contiguous writable arrays of one dtype (a read-only or strided array would
be a new numba signature, that is a new compilation), and puts the results back in the
caller's order.

Importing it without numba installed raises ImportError, which marks the backend
unavailable.
"""
import contextlib
import copy
import logging
import os
import sys
import threading
import time
from typing import Callable, NamedTuple

import numba
import numpy as np
from numba.core import event as numba_event

from . import kernels
from .. import contract, registry

ACTIVATION_CODES = {"tanh": kernels.TANH, "relu": kernels.RELU, "sigmoid": kernels.SIGMOID,
                    "identity": kernels.IDENTITY}


def rows_per_chunk(batch):
    """Rows each parallel task runs. A function of the batch size alone, so that the
    numbers do not depend on the thread count; at least 32 rows, because every GEMM
    call packs the whole recurrent weight matrix and thinner chunks measured slower
    (LSTM, T=50, B=64, H=256, one thread: 8 rows 205 ms, 32 rows 138 ms, 64 rows
    132 ms); up to 16 chunks leave work for 16 threads on large batches."""
    return max(32, -(-batch // 16))


# -- threads ---------------------------------------------------------------------------
#
# numba's threading layer is chosen once per process, at the first parallel call. By
# default it is tbb where installed, else OpenMP, which on Linux is GNU's: that one kills
# a process forked after a parallel call at the child's first parallel call (libgomp
# cannot run a team after fork, and numba terminates the child rather than hang it). So
# unless the user chose a layer (NUMBA_THREADING_LAYER, numba.config.THREADING_LAYER),
# rnncore asks for numba's fork-safe choice: tbb where installed, else OpenMP where it is
# not GNU's, else numba's own workqueue. The workqueue runs one parallel call at a time
# in a process, so rnncore's kernel calls take turns there.
_FORK_SAFE_LAYER = "forksafe"
_layer_lock = threading.Lock()
_one_call_at_a_time = None   # set at the first kernel call
_gnu_openmp_before_fork = False


def _is_gnu_openmp(layer):
    if layer != "omp":
        return False
    try:
        from numba.np.ufunc import omppool
    except ImportError:
        return False
    return omppool.openmp_vendor == "GNU"


def _after_fork_in_child():
    global _gnu_openmp_before_fork, _layer_lock, _one_call_at_a_time
    try:
        _gnu_openmp_before_fork = _is_gnu_openmp(numba.threading_layer())
    except ValueError:  # no parallel call before the fork
        pass
    # a thread of the parent's may have held these; it did not come along
    _layer_lock = threading.Lock()
    if _one_call_at_a_time is not None and not isinstance(_one_call_at_a_time, contextlib.nullcontext):
        _one_call_at_a_time = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _turns():
    """The lock kernel calls take, or a null context where numba's layer can take them
    concurrently; chooses the layer at the first call."""
    global _one_call_at_a_time
    if _one_call_at_a_time is None:
        with _layer_lock:
            if _one_call_at_a_time is None:
                try:
                    layer = numba.threading_layer()
                except ValueError:  # not started: rnncore's call starts it
                    if numba.config.THREADING_LAYER == "default":
                        numba.config.THREADING_LAYER = _FORK_SAFE_LAYER
                    numba.get_num_threads()
                    layer = numba.threading_layer()
                _one_call_at_a_time = threading.Lock() if layer == "workqueue" else contextlib.nullcontext()
    return _one_call_at_a_time


# -- compile notices -------------------------------------------------------------------
#
# numba compiles each kernel per dtype at its first call in a process, unless its disk
# cache holds it; a compile takes 15-20 s, so it is announced. numba fires a compile
# event only for a real compile, not for a cache load, so a load stays silent.
logger = logging.getLogger("rnncore")
KERNEL_NAMES = {kernels.simple_forward: "rnn/jordan forward", kernels.simple_backward: "rnn/jordan backward",
                kernels.lstm_forward: "lstm forward", kernels.lstm_backward: "lstm backward",
                kernels.gru_forward: "gru forward", kernels.gru_backward: "gru backward"}
_called = set()      # (kernel, dtype) pairs already called in this process: nothing left to announce
_announced = set()   # (kernel, argument types) compiles announced, once whichever thread listens
_announce_lock = threading.Lock()


def notice(message):
    """One compile notice: an INFO record of the "rnncore" logger where the application
    configured logging (its handlers and levels decide), else a line on stderr. Setting
    that logger above INFO silences both."""
    if logger.level > logging.INFO:
        return
    if logger.hasHandlers():
        logger.info(message)
    else:
        print(f"rnncore: {message}", file=sys.stderr, flush=True)


class _CompileNotice(numba_event.Listener):
    """Announces numba's compile of one kernel (the nested functions it compiles along
    fire their own events: ignored) and, at its end, how long it took."""

    def __init__(self, kernel, dtype):
        self.kernel, self.what = kernel, f"{KERNEL_NAMES[kernel]} kernel for {dtype}"
        self.started = None

    def on_start(self, event):
        if event.data["dispatcher"] is not self.kernel:
            return
        key = (self.kernel, tuple(event.data["args"]))
        with _announce_lock:
            if key in _announced:
                return
            _announced.add(key)
        self.started = time.perf_counter()
        notice(f"numba backend: compiling the {self.what} (first use here; numba's disk cache keeps it "
               f"for later runs; rnncore.warmup() compiles ahead of time) ...")

    def on_end(self, event):
        if event.data["dispatcher"] is not self.kernel or self.started is None:
            return
        seconds, self.started = time.perf_counter() - self.started, None
        # a compile that raised added no overload (numba's Event.is_failed reads inverted)
        if tuple(event.data["args"]) in self.kernel.overloads:
            notice(f"numba backend: compiled the {self.what} in {seconds:.1f} s")


@contextlib.contextmanager
def _compile_notices(kernel, dtype):
    key = (kernel, dtype)
    if key in _called or kernel not in KERNEL_NAMES:  # not one of ours (a wrapped kernel): nothing to announce
        yield
        return
    with numba_event.install_listener("numba:compile", _CompileNotice(kernel, dtype)):
        yield
    _called.add(key)


@contextlib.contextmanager
def _kernel_call(kernel, dtype, threads):
    """Around one call of `kernel` on arrays of `dtype`: numba at rnncore's thread count
    in the calling thread (numba's setting is per thread, so rc.set_num_threads could
    not reach the others), and BLAS at one thread: chunks running side by side are the
    threads, and one BLAS thread per product keeps the numbers the same for any thread
    count. A compile at the first call is announced."""
    if _gnu_openmp_before_fork:
        raise RuntimeError("numba backend: numba's 'omp' threading layer (GNU OpenMP) was started before this "
                           "process forked and cannot run here; start worker processes with 'spawn' or "
                           "'forkserver', or set NUMBA_THREADING_LAYER to 'workqueue' or 'tbb'")
    with _turns():
        threads = min(threads, numba.config.NUMBA_NUM_THREADS)
        previous = numba.get_num_threads()
        if threads != previous:
            numba.set_num_threads(threads)
        section = registry.blas_section()
        token = section.blas_enter()
        try:
            with _compile_notices(kernel, dtype):
                yield
        finally:
            section.blas_leave(token)
            if threads != previous:
                numba.set_num_threads(previous)


def _writable(a):
    """`a` itself when C-contiguous and writable, else a copy that is."""
    if a.flags.c_contiguous and a.flags.writeable:
        return a
    return np.array(a, order="C")


class _WorkOrder:
    """One direction's work order over the layer call's `contract.Schedule`: step t of
    work row j is (time(reverse)[t, j], order[j]) of the caller's (T, B, n) arrays
    (`Schedule.padded`), so that at every step the running rows are a prefix. Without
    lengths (or with every length T) the rows keep their order and the time axis is the
    identity, or flipped for the reverse direction: views instead of gathers."""

    def __init__(self, schedule, reverse):
        self.schedule = schedule
        self.active = schedule.active
        self.flip = bool(reverse)
        self.index = None if schedule.order is None else schedule.padded(reverse)

    def gather(self, a):
        """(T, B, n) caller's order -> work order, C-contiguous and writable."""
        if self.index is None:
            return _writable(a[::-1] if self.flip else a)
        return a[self.index]

    def scatter(self, work, copy=False):
        """(T, B, n) work order -> the caller's order: `work` itself where the two agree
        (unless `copy`), else a new array."""
        if self.index is None:
            if self.flip:
                return np.ascontiguousarray(work[::-1])
            return work.copy() if copy else work
        out = np.empty_like(work)
        out[self.index] = work  # every (time, row) pair once: each column of time is a permutation
        return out

    def final(self, buffer):
        """Each row's value after its own last step, in the caller's order, from a
        buffer kept per step ((T+1, B, n), step t at t+1) or in two alternating slots
        ((2, B, n), step t at (t+1) % 2): lengths < T+1, so the modulus changes nothing
        for a buffer kept per step."""
        schedule = self.schedule
        return schedule.unsort(buffer[schedule.lengths % buffer.shape[0], np.arange(schedule.B)])


def _dummy(dtype, ndim):
    """Stands in for an array a variant does not use: the kernels never read it, and one
    shape for every variant keeps one compiled signature."""
    return np.zeros((1,) * ndim, dtype=dtype)


def _per_step(training, T, B, width, dtype):
    """A buffer kept for every step in training (zeros: rows that have ended enter the
    weight-gradient GEMMs), only the running value in inference."""
    return np.zeros((T, B, width), dtype) if training else np.empty((1, B, width), dtype)


def _folded_bias(spec, p, dtype):
    """`contract.fold_bias`, zeros standing in for what the variant lacks: the kernels
    take both arrays in every variant (one compiled signature)."""
    bias_x, b_hn = contract.fold_bias(spec, p)
    if bias_x is None:
        bias_x = np.zeros(spec.num_gates * spec.hidden_size, dtype)
    if b_hn is None:
        b_hn = np.zeros(spec.hidden_size, dtype)
    return bias_x, b_hn


def _steps(buffers, steps):
    """The first `steps` steps of buffers kept per step ({name: array}): views, a state
    buffer (`_STATE_BUFFERS`, step t at t+1) one longer; per-row scratch, stand-ins and
    None as they are (a stand-in's one slot serves any number of steps)."""
    views = {}
    for name, a in buffers.items():
        if a is not None and a.ndim == 3:
            a = a[:steps + 1] if name in _STATE_BUFFERS else a[:steps]
        views[name] = a
    return views


# buffers with the initial value at 0 and step t's at t+1
_STATE_BUFFERS = ("states", "cells")


class _Regularisers:
    """One direction's arguments of the regularised cells, as the kernels take them
    (kernels.py, "the regularised cells' pieces"), in work order: the layer norm's gains
    and the buffers that keep its normalised values; zoneout's weights, the caller's
    masks or the one row of p's of its expectation; the recurrent dropout's mask and the
    buffer of h_{t-1} * mask. An option that is off gets stand-ins of the same types, so
    every variant is one compiled signature; the layer norm's stand-ins have a row per
    batch row, which the kernels write (and never read) without it.

    Built without buffers; `with_buffers` gives a copy that has them, `segment` the
    view of a stretch of loop steps."""

    BUFFERS = ("c_cand", "dropped", "xhat_ih", "xhat_hh", "rstd", "chat")

    def __init__(self, spec, p, masks, order, B, dtype):
        masks = masks or {}
        self.spec, self.B, self.dtype = spec, B, dtype
        S, H = spec.out_size, spec.hidden_size
        lstm = spec.kind == "lstm"
        # the zoneout weights that are masks, one per step, which a segment slices
        self.step_masks = tuple(name for name, key in (("zone_h", "zoneout_h"), ("zone_c", "zoneout_c"))
                                if key in masks)
        self.zoneout_h, self.zone_h = self._zone(masks.get("zoneout_h"), spec.zoneout_h, S, order, dtype)
        self.zoneout_c, self.zone_c = self._zone(masks.get("zoneout_c"), spec.zoneout_c if lstm else 0.0, H, order,
                                                 dtype)
        self.dropout = "recurrent" in masks
        self.rec_mask = order.schedule.sort(masks["recurrent"]) if self.dropout else _dummy(dtype, 2)
        self.layer_norm = spec.layer_norm
        if self.layer_norm:
            self.g_ih, self.g_hh = p["weight_ih_ln"], p["weight_hh_ln"]
        else:
            self.g_ih = self.g_hh = _dummy(dtype, 1)
        if self.layer_norm and lstm:
            self.g_c, self.b_c = p["weight_c_ln"], p["bias_c_ln"]
        else:
            self.g_c = self.b_c = _dummy(dtype, 1)

    def with_buffers(self, steps, training):
        """A copy with buffers of its own for `steps` loop steps (in training; in
        inference the running values only)."""
        spec, B, dtype = self.spec, self.B, self.dtype
        S, H, GH = spec.out_size, spec.hidden_size, spec.num_gates * spec.hidden_size
        reg = copy.copy(self)
        reg.c_cand = _per_step(training, steps, B, H, dtype) if self.zoneout_c else _dummy(dtype, 3)
        reg.dropped = _per_step(training, steps, B, S, dtype) if self.dropout else _dummy(dtype, 3)
        if self.layer_norm:
            reg.xhat_ih, reg.xhat_hh = _per_step(training, steps, B, GH, dtype), _per_step(training, steps, B, GH,
                                                                                           dtype)
            reg.rstd = _per_step(training, steps, B, 3, dtype)
        else:
            reg.xhat_ih = reg.xhat_hh = np.zeros((1, B, 1), dtype)
            reg.rstd = np.zeros((1, B, 3), dtype)
        reg.chat = _per_step(training, steps, B, H, dtype) if self.layer_norm and spec.kind == "lstm" else \
            np.zeros((1, B, 1), dtype)
        return reg

    def segment(self, first, last):
        """The loop steps [first, last): the masks' steps, the first last - first slots
        of the buffers."""
        reg = copy.copy(self)
        for name in self.step_masks:
            setattr(reg, name, getattr(self, name)[first:last])
        for name, view in _steps({name: getattr(self, name) for name in self.BUFFERS}, last - first).items():
            setattr(reg, name, view)
        return reg

    def buffers(self):
        return [getattr(self, name) for name in self.BUFFERS]

    @staticmethod
    def _zone(mask, p, width, order, dtype):
        """(on, weights): the masks in work order, else the row of p's (off where p = 0)."""
        if mask is not None:
            return True, order.gather(mask)
        return p > 0, np.full((1, 1, width), p, dtype)

    def norm(self):
        """The layer norm's arguments of the GRU kernels (the LSTM's add g_c, b_c, chat)."""
        return self.layer_norm, self.g_ih, self.g_hh, self.xhat_ih, self.xhat_hh, self.rstd

    def drop(self):
        return self.dropout, self.rec_mask, self.dropped


# -- the families ----------------------------------------------------------------------
#
# Each family runs its kernels over a stretch of loop steps through four functions:
#
#     buffers(spec, reg, steps, B, dtype, training) -> {name: array}
#         what its forward keeps per step besides `states`, for `steps` steps;
#     forward(spec, p, x, states, buf, active, reg, threads)
#         the steps of x (L, B, I) from states[0] (and buf["cells"][0]), written into
#         states (L+1, B, S) and the buffers;
#     backward_buffers(spec, reg, steps, B, dtype) -> {name: array}
#         what its backward writes per step, for `steps` steps, and its per-row scratch;
#     carries(spec, reg, B, dtype) -> {name: array}
#         what the backward adds into across the stretches: the gradients, their float64
#         per-chunk sums, a state gradient besides `d_states`;
#     backward(spec, p, x, states, buf, bwd, carry, active, reg, dy, d_states, dx, last, threads)
#         back through the steps, last first: d_states (the gradients of the state after
#         the last step) leave as those of states[0]; dx (L, B, I) written, the
#         gradients added into carry; `last`: the stretch that starts at step 0, which
#         rounds the float64 sums into the gradients;
#
# and `gradients(spec, carry)`, the grads of the contract. The full path runs one
# stretch of every step; the lean path one per segment.

# -- Elman and Jordan ------------------------------------------------------------------

def _simple_buffers(spec, reg, steps, B, dtype, training):
    H = spec.hidden_size
    # Elman's hidden state is its output (hidden None: states[1:]), unless zoneout blends the two
    separate = spec.kind == "jordan" or reg.zoneout_h
    return dict(x_proj=np.empty((steps, B, H), dtype),
                hidden=_per_step(training, steps, B, H, dtype) if separate else None)


def _simple_weights(spec, p, dtype):
    if spec.kind == "jordan":
        return p["weight_ho"], p["bias_ho"] if spec.bias else np.zeros(spec.out_size, dtype)
    return _dummy(dtype, 2), _dummy(dtype, 1)


def _simple_forward(spec, p, x, states, buf, active, reg, threads):
    dtype = x.dtype
    bias, _ = _folded_bias(spec, p, dtype)
    w_ho, b_ho = _simple_weights(spec, p, dtype)
    hidden = states[1:] if buf["hidden"] is None else buf["hidden"]
    act, out_act = ACTIVATION_CODES[spec.nonlinearity], ACTIVATION_CODES[spec.output_activation]
    with _kernel_call(kernels.simple_forward, dtype, threads):
        kernels.simple_forward(x, p["weight_ih"], bias, p["weight_hh"], w_ho, b_ho, active, rows_per_chunk(x.shape[1]),
                               act, out_act, spec.kind == "jordan", buf["x_proj"], states, hidden, reg.zoneout_h,
                               reg.zone_h, *reg.drop())


def _simple_backward_buffers(spec, reg, steps, B, dtype):
    H, S = spec.hidden_size, spec.out_size
    jordan = spec.kind == "jordan"
    return dict(d_pre=np.zeros((steps, B, H), dtype),
                d_out=np.zeros((steps, B, S), dtype) if jordan else _dummy(dtype, 3),
                d_hidden=np.empty((B, H), dtype) if jordan else _dummy(dtype, 2))


def _simple_carries(spec, reg, B, dtype):
    g = contract.new_gradients(spec, dtype)
    g.setdefault("weight_ho", _dummy(dtype, 2))
    return dict(g=g, bias_sums=np.zeros(spec.hidden_size), bias_ho_sums=np.zeros(spec.out_size),
                bias=np.zeros(spec.hidden_size, dtype), bias_ho=np.zeros(spec.out_size, dtype))


def _simple_backward(spec, p, x, states, buf, bwd, carry, active, reg, dy, d_states, dx, last, threads):
    dtype = x.dtype
    g = carry["g"]
    w_ho, _ = _simple_weights(spec, p, dtype)
    hidden = states[1:] if buf["hidden"] is None else buf["hidden"]
    act, out_act = ACTIVATION_CODES[spec.nonlinearity], ACTIVATION_CODES[spec.output_activation]
    with _kernel_call(kernels.simple_backward, dtype, threads):
        kernels.simple_backward(x, p["weight_ih"], p["weight_hh"], w_ho, active, rows_per_chunk(x.shape[1]), act,
                                out_act, spec.kind == "jordan", states, hidden, reg.zoneout_h, reg.zone_h, *reg.drop(),
                                dy, d_states[0], bwd["d_pre"], bwd["d_out"], bwd["d_hidden"], carry["bias_sums"],
                                carry["bias_ho_sums"], last, dx, g["weight_ih"], g["weight_hh"], g["weight_ho"],
                                carry["bias"], carry["bias_ho"])


def _simple_gradients(spec, carry):
    bias, bias_ho = carry["bias"], carry["bias_ho"]
    return contract.gradients(spec, dict(carry["g"], bias_ih=bias, bias_hh=bias, bias_ho=bias_ho))


# -- LSTM ----------------------------------------------------------------------------

def _lstm_buffers(spec, reg, steps, B, dtype, training):
    H, G = spec.hidden_size, spec.num_gates
    # inference: c_{t-1} and c_t in two alternating slots (see kernels._lstm_forward_rows)
    return dict(x_proj=np.empty((steps, B, G * H), dtype),
                cells=np.zeros((steps + 1, B, H), dtype) if training else np.empty((2, B, H), dtype),
                m=_per_step(training, steps, B, H, dtype) if spec.proj_size else _dummy(dtype, 3),
                hh=np.empty((B, G * H), dtype) if reg.layer_norm else _dummy(dtype, 2))


def _lstm_weights(spec, p, dtype):
    """(w_hr, w_ci, w_cf, w_co), stand-ins where the variant has none."""
    peephole = spec.peephole
    return (p["weight_hr"] if spec.proj_size else _dummy(dtype, 2),
            p["weight_ci"] if peephole else _dummy(dtype, 1),
            p["weight_cf"] if peephole and not spec.coupled_input_forget else _dummy(dtype, 1),
            p["weight_co"] if peephole else _dummy(dtype, 1))


def _lstm_forward(spec, p, x, states, buf, active, reg, threads):
    dtype = x.dtype
    bias, _ = _folded_bias(spec, p, dtype)
    with _kernel_call(kernels.lstm_forward, dtype, threads):
        kernels.lstm_forward(x, p["weight_ih"], bias, p["weight_hh"], *_lstm_weights(spec, p, dtype), active,
                             rows_per_chunk(x.shape[1]), spec.peephole, spec.coupled_input_forget,
                             bool(spec.proj_size), buf["x_proj"], states, buf["cells"], buf["m"], *reg.norm()[:3],
                             reg.g_c, reg.b_c, reg.xhat_ih, reg.xhat_hh, reg.chat, reg.rstd, buf["hh"], reg.zoneout_h,
                             reg.zone_h, reg.zoneout_c, reg.zone_c, reg.c_cand, *reg.drop())


def _lstm_backward_buffers(spec, reg, steps, B, dtype):
    H, S, G = spec.hidden_size, spec.out_size, spec.num_gates
    projected = bool(spec.proj_size)
    return dict(d_gates=np.zeros((steps, B, G * H), dtype),
                d_hh=np.zeros((steps, B, G * H), dtype) if reg.layer_norm else _dummy(dtype, 3),
                d_h=np.zeros((steps, B, S), dtype) if projected else _dummy(dtype, 3),
                d_m=np.empty((B, H), dtype) if projected else _dummy(dtype, 2))


def _lstm_carries(spec, reg, B, dtype):
    H, GH = spec.hidden_size, spec.num_gates * spec.hidden_size
    chunks = -(-B // rows_per_chunk(B))
    g = contract.new_gradients(spec, dtype)
    g.setdefault("weight_hr", _dummy(dtype, 2))
    # per chunk, in float64: the peepholes' and LN(c)'s sums (H wide), the bias's and
    # the gains' with layer norm (G*H wide); the bias's column sums without
    return dict(g=g, vector_sums=np.zeros((chunks, 5, H)),
                gate_sums=np.zeros((chunks, 3, GH if reg.layer_norm else 1)), bias_sums=np.zeros(GH),
                bias=np.zeros(GH, dtype), vectors=np.zeros((5, H), dtype),
                gains=np.zeros((2, GH), dtype) if reg.layer_norm else _dummy(dtype, 2))


def _lstm_backward(spec, p, x, states, buf, bwd, carry, active, reg, dy, d_states, dx, last, threads):
    dtype = x.dtype
    g = carry["g"]
    d_state, d_cell = d_states
    with _kernel_call(kernels.lstm_backward, dtype, threads):
        kernels.lstm_backward(x, p["weight_ih"], p["weight_hh"], *_lstm_weights(spec, p, dtype), active,
                              rows_per_chunk(x.shape[1]), spec.peephole, spec.coupled_input_forget,
                              bool(spec.proj_size), buf["x_proj"], states, buf["cells"], buf["m"], *reg.norm()[:3],
                              reg.g_c, reg.b_c, reg.xhat_ih, reg.xhat_hh, reg.chat, reg.rstd, reg.zoneout_h,
                              reg.zone_h, reg.zoneout_c, reg.zone_c, reg.c_cand, *reg.drop(), dy, d_state, d_cell,
                              bwd["d_gates"], bwd["d_hh"], bwd["d_h"], bwd["d_m"], carry["vector_sums"],
                              carry["gate_sums"], carry["bias_sums"], last, dx, g["weight_ih"], g["weight_hh"],
                              g["weight_hr"], carry["bias"], carry["vectors"], carry["gains"])


def _lstm_gradients(spec, carry):
    vectors, gains, bias = carry["vectors"], carry["gains"], carry["bias"]
    return contract.gradients(spec, dict(carry["g"], bias_ih=bias, bias_hh=bias, weight_ci=vectors[0],
                                         weight_cf=vectors[1], weight_co=vectors[2], weight_c_ln=vectors[3],
                                         bias_c_ln=vectors[4], weight_ih_ln=gains[0], weight_hh_ln=gains[-1]))


# -- GRU -------------------------------------------------------------------------------

def _gru_buffers(spec, reg, steps, B, dtype, training):
    H = spec.hidden_size
    return dict(x_proj=np.empty((steps, B, 3 * H), dtype), aux=_per_step(training, steps, B, H, dtype),
                hh=np.empty((B, 3 * H), dtype) if spec.reset_after else _dummy(dtype, 2))


def _gru_forward(spec, p, x, states, buf, active, reg, threads):
    dtype = x.dtype
    bias, b_hn = _folded_bias(spec, p, dtype)
    with _kernel_call(kernels.gru_forward, dtype, threads):
        kernels.gru_forward(x, p["weight_ih"], bias, p["weight_hh"], b_hn, active, rows_per_chunk(x.shape[1]),
                            spec.reset_after, buf["x_proj"], states, buf["aux"], buf["hh"], *reg.norm(),
                            reg.zoneout_h, reg.zone_h, *reg.drop())


def _gru_backward_buffers(spec, reg, steps, B, dtype):
    H = spec.hidden_size
    reset_after = spec.reset_after
    return dict(d_x_proj=np.zeros((steps, B, 3 * H), dtype),
                d_hh=np.zeros((steps, B, 3 * H), dtype) if reset_after else _dummy(dtype, 3),
                d_rh=_dummy(dtype, 2) if reset_after else np.empty((B, H), dtype))


def _gru_carries(spec, reg, B, dtype):
    H = spec.hidden_size
    # the direct path's share of the state gradient (z * h_{t-1}) waits here for the step before
    return dict(g=contract.new_gradients(spec, dtype), d_direct=np.zeros((B, H), dtype),
                # per chunk, in float64, with layer norm: the sums of the biases' and the gains' gradients
                gate_sums=np.zeros((-(-B // rows_per_chunk(B)), 4, 3 * H if reg.layer_norm else 1)),
                bias_sums=np.zeros((2, 3 * H)), bias_ih=np.zeros(3 * H, dtype), bias_hh=np.zeros(3 * H, dtype),
                gains=np.zeros((2, 3 * H), dtype) if reg.layer_norm else _dummy(dtype, 2))


def _gru_backward(spec, p, x, states, buf, bwd, carry, active, reg, dy, d_states, dx, last, threads):
    dtype = x.dtype
    g = carry["g"]
    with _kernel_call(kernels.gru_backward, dtype, threads):
        kernels.gru_backward(x, p["weight_ih"], p["weight_hh"], active, rows_per_chunk(x.shape[1]), spec.reset_after,
                             buf["x_proj"], states, buf["aux"], *reg.norm(), reg.zoneout_h, reg.zone_h, *reg.drop(),
                             dy, d_states[0], carry["d_direct"], bwd["d_x_proj"], bwd["d_hh"], bwd["d_rh"],
                             carry["gate_sums"], carry["bias_sums"], last, dx, g["weight_ih"], g["weight_hh"],
                             carry["bias_ih"], carry["bias_hh"], carry["gains"])


def _gru_gradients(spec, carry):
    gains = carry["gains"]
    return contract.gradients(spec, dict(carry["g"], bias_ih=carry["bias_ih"], bias_hh=carry["bias_hh"],
                                         weight_ih_ln=gains[0], weight_hh_ln=gains[-1]))


class _Family(NamedTuple):
    """A family's functions (see "the families" above) and the names of its buffers
    that carry a state besides `states` (each sequence's final value is returned)."""
    buffers: Callable
    forward: Callable
    backward_buffers: Callable
    carries: Callable
    backward: Callable
    gradients: Callable
    carried: tuple


_FAMILIES = {
    "rnn": _Family(_simple_buffers, _simple_forward, _simple_backward_buffers, _simple_carries, _simple_backward,
                   _simple_gradients, ()),
    "lstm": _Family(_lstm_buffers, _lstm_forward, _lstm_backward_buffers, _lstm_carries, _lstm_backward,
                    _lstm_gradients, ("cells",)),
    "gru": _Family(_gru_buffers, _gru_forward, _gru_backward_buffers, _gru_carries, _gru_backward, _gru_gradients,
                   ()),
}
_FAMILIES["jordan"] = _FAMILIES["rnn"]


# -- one direction, full or lean -------------------------------------------------------

def _direction_forward(spec, p, x, state0, order, reg, training, memory, threads):
    """(states, finals, saved) of one direction in work order: states (T+1, B, S), whose
    states[1:] is y; saved, what the backward needs. Lean: the segments' forwards one
    after the other in buffers of one segment, saving the state at each segment's
    start."""
    family = _FAMILIES[spec.kind]
    T, B, _ = x.shape
    schedule = order.schedule
    states = np.zeros((T + 1, B, spec.out_size), x.dtype)
    states[0] = state0[0]
    lean = training and memory == "lean"
    segments = contract.lean_segments(T) if lean else [(0, T)]
    steps = segments[0][1] - segments[0][0]
    reg_steps = reg.with_buffers(steps, training)
    buf = family.buffers(spec, reg, steps, B, x.dtype, training)
    carried = [buf[name] for name in family.carried]
    for held, value in zip(carried, state0[1:]):
        held[0] = value
    if not lean:
        family.forward(spec, p, x, states, buf, order.active, reg_steps, threads)
        finals = [order.final(states)] + [order.final(held) for held in carried]
        return states, finals, dict(x=x, states=states, buf=buf, reg=reg_steps)
    finals = [np.empty((B, held.shape[2]), x.dtype) for held in carried]
    checkpoints, length = [], 0
    for first, last in segments:
        for held in carried:
            held[0] = held[length]
        checkpoints.append((states[first].copy(),) + tuple(held[0].copy() for held in carried))
        length = last - first
        seg_buf, seg_reg = _steps(buf, length), reg_steps.segment(first, last)
        if last == T and order.active[last - 1] < B:
            # the last segment's buffers are its backward's: zeros past each row's end, as
            # the full path's (the other segments' the backward recomputes)
            _clear([*seg_buf.values(), *seg_reg.buffers()], family.carried, seg_buf)
        family.forward(spec, p, x[first:last], states[first:last + 1], seg_buf, order.active[first:last], seg_reg,
                       threads)
        for final, held in zip(finals, carried):
            # the rows whose last step is in this segment
            rows = np.flatnonzero((schedule.lengths > first) & (schedule.lengths <= last))
            final[rows] = held[schedule.lengths[rows] - first, rows]
    finals = [order.final(states)] + [schedule.unsort(final) for final in finals]
    # the last segment's forward, which its backward (the first) reads as it is; its
    # states a copy (states[1:] is the caller's y)
    kept = dict(buf=seg_buf, reg=seg_reg, states=states[segments[-1][0]:].copy())
    return states, finals, dict(x=x, segments=segments, checkpoints=checkpoints, reg=reg, last=kept)


def _clear(buffers, carried, seg_buf):
    """Zero the per-step buffers, the carried ones' slot 0 (the segment's start) kept."""
    starts = [seg_buf[name][0].copy() for name in carried]
    for a in buffers:
        if a is not None:
            a.fill(0)
    for name, start in zip(carried, starts):
        seg_buf[name][0] = start


def _direction_backward_work(spec, p, saved, order, dy, d_states, threads):
    """(dx, d_states0, grads) of one direction in work order. Lean: each segment's
    forward recomputed from its saved state into buffers of one segment, last segment
    first, and back-propagated at once, the state gradients and the gradient sums
    carried from one segment into the one before."""
    family = _FAMILIES[spec.kind]
    x = saved["x"]
    T, B, _ = x.shape
    dtype = x.dtype
    dx = np.empty_like(x)
    if "segments" not in saved:
        reg = saved["reg"]
        carry = family.carries(spec, reg, B, dtype)
        family.backward(spec, p, x, saved["states"], saved["buf"], family.backward_buffers(spec, reg, T, B, dtype),
                        carry, order.active, reg, dy, d_states, dx, True, threads)
        return dx, d_states, family.gradients(spec, carry)
    segments, checkpoints = saved["segments"], saved["checkpoints"]
    steps = segments[0][1] - segments[0][0]
    reg = saved["reg"].with_buffers(steps, True)
    buf = family.buffers(spec, reg, steps, B, dtype, True)
    bwd = family.backward_buffers(spec, reg, steps, B, dtype)
    states = np.zeros((steps + 1, B, spec.out_size), dtype)
    carry = family.carries(spec, reg, B, dtype)
    for (first, last), checkpoint in reversed(list(zip(segments, checkpoints))):
        length = last - first
        seg_bwd = _steps(bwd, length)
        if last == T:
            kept = saved["last"]
            seg_reg, seg_buf, seg_states = kept["reg"], kept["buf"], kept["states"]
        else:
            seg_reg, seg_buf, seg_states = reg.segment(first, last), _steps(buf, length), states[:length + 1]
        if order.active[last - 1] < B:
            # rows that end here: the full path's buffers hold zeros at their steps past the end
            # (they enter the weight-gradient products); these hold an earlier segment's values
            scratch = [*seg_bwd.values()] if last == T else [seg_states, *seg_buf.values(), *seg_bwd.values(),
                                                              *seg_reg.buffers()]
            for a in scratch:
                if a is not None:
                    a.fill(0)
        if last != T:
            seg_states[0] = checkpoint[0]
            for name, value in zip(family.carried, checkpoint[1:]):
                seg_buf[name][0] = value
            family.forward(spec, p, x[first:last], seg_states, seg_buf, order.active[first:last], seg_reg, threads)
        family.backward(spec, p, x[first:last], seg_states, seg_buf, seg_bwd, carry, order.active[first:last],
                        seg_reg, dy[first:last], d_states, dx[first:last], first == 0, threads)
    return dx, d_states, family.gradients(spec, carry)


# -- the contract ----------------------------------------------------------------------

def layer_forward(spec, params, x, states, lengths, training, reverse, num_threads, masks=None, memory="full"):
    """(y, states_n, ctx): see `rnncore.backends.contract.Backend`."""
    T, B, _ = x.shape
    schedule = contract.schedule(T, B, lengths)
    direction_masks = iter(masks if masks is not None else [None] * len(params))
    lean = training and memory == "lean"

    def run(p, state0, rev):
        order = _WorkOrder(schedule, rev)
        p = {name: _writable(value) for name, value in p.items()}
        reg = _Regularisers(spec, p, next(direction_masks), order, B, x.dtype)
        states_seq, finals, saved = _direction_forward(spec, p, order.gather(x), [schedule.sort(s) for s in state0],
                                                       order, reg, training, memory, num_threads)
        # a full ctx keeps states_seq for the backward: a caller's in-place edit of y must not reach it
        y = order.scatter(states_seq[1:], copy=training and not lean)
        return y, tuple(finals), dict(spec=spec, params=p, order=order, saved=saved)
    return contract.forward_directions(run, params, states, reverse, training)


def _direction_backward(ctx, dy, d_states_n, num_threads):
    spec, order = ctx["spec"], ctx["order"]
    d_states = [order.schedule.sort(s) for s in d_states_n]
    dx_work, d_states0, g = _direction_backward_work(spec, ctx["params"], ctx["saved"], order, order.gather(dy),
                                                     d_states, num_threads)
    return order.scatter(dx_work), tuple(order.schedule.unsort(s) for s in d_states0), g


def layer_backward(ctx, dy, dstates_n, num_threads, input_grad=True):
    """(dx, dstates0, grads): see `rnncore.backends.contract.Backend`. The kernels make
    dx in the same loop as the state gradients, so without `input_grad` it is made and
    dropped."""
    def run(ctx_d, dy_d, d_states_n):
        return _direction_backward(ctx_d, dy_d, d_states_n, num_threads)
    return contract.backward_directions(run, ctx, dy, dstates_n, input_grad)


def layer_trace(spec, params, x, states, lengths, reverse, num_threads):
    """Per direction, {name: (T, B, H)} of what the cells computed at every step, in time
    order and the caller's batch order, zero past a sequence's end: LSTM "i", "f", "g",
    "o" (the gate activations; coupled, f = 1 - i) and "c" (the carried cell state);
    GRU "r", "z", "n"; Elman "h" (the state); Jordan "h" (the hidden layer). Read from the
    buffers of a deterministic (mask-free) training forward, where the kernels leave
    the activated gates."""
    _, _, ctx = layer_forward(spec, params, x, states, lengths, True, reverse, num_threads)
    return [_direction_trace(spec, ctx_d) for ctx_d in ctx]


def _direction_trace(spec, ctx):
    order, saved = ctx["order"], ctx["saved"]
    buf = saved["buf"]
    schedule = order.schedule
    if spec.kind == "rnn":
        work = {"h": saved["states"][1:]}
    elif spec.kind == "jordan":
        work = {"h": buf["hidden"]}
    else:
        # the kernels overwrite each running step's input projection with its gates
        work = dict(zip(spec.gates, np.split(buf["x_proj"], spec.num_gates, axis=2)))
        if spec.kind == "lstm":
            if spec.coupled_input_forget:
                work["f"] = 1 - work["i"]
            work = {name: work[name] for name in "ifgo"}
            work["c"] = buf["cells"][1:]
    # a row's buffers past its end hold what the kernels never overwrote
    running = (np.arange(schedule.T)[:, None] < schedule.lengths[None, :])[:, :, None]
    return {name: order.scatter(np.where(running, values, 0)) for name, values in work.items()}


def warmup(spec, dtype, training):
    """Compile, or load from numba's disk cache, the kernels that layers of `spec`'s cell
    kind call on `dtype` arrays: the forward, and the backward when `training`. Every
    variant of a family (bias, peepholes, projection, lengths, direction) passes the same
    argument types, so one tiny layer call (a spec of size 1) covers them all."""
    params = [{name: np.zeros(shape, dtype) for name, shape in spec.param_shapes().items()}]
    x = np.zeros((1, 1, 1), dtype)
    states = [tuple(np.zeros((1, width), dtype) for width in spec.state_sizes)]
    y, states_n, ctx = layer_forward(spec, params, x, states, None, training, (False,), 1)
    if training:
        layer_backward(ctx, np.zeros_like(y), [tuple(np.zeros_like(s) for s in states_n[0])], 1)
