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
import logging
import os
import sys
import threading
import time

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


class _Regularisers:
    """One direction's arguments of the regularised cells, as the kernels take them
    (kernels.py, "the regularised cells' pieces"), in work order: the layer norm's gains
    and the buffers that keep its normalised values; zoneout's weights, the caller's
    masks or the one row of p's of its expectation; the recurrent dropout's mask and the
    buffer of h_{t-1} * mask. An option that is off gets stand-ins of the same types, so
    every variant is one compiled signature; the layer norm's stand-ins have a row per
    batch row, which the kernels write (and never read) without it."""

    def __init__(self, spec, p, masks, order, T, B, training, dtype):
        masks = masks or {}
        S, H, GH = spec.out_size, spec.hidden_size, spec.num_gates * spec.hidden_size
        lstm = spec.kind == "lstm"
        self.zoneout_h, self.zone_h = self._zone(masks.get("zoneout_h"), spec.zoneout_h, S, order, dtype)
        self.zoneout_c, self.zone_c = self._zone(masks.get("zoneout_c"), spec.zoneout_c if lstm else 0.0, H, order,
                                                 dtype)
        self.c_cand = _per_step(training, T, B, H, dtype) if self.zoneout_c else _dummy(dtype, 3)
        self.dropout = "recurrent" in masks
        self.rec_mask = order.schedule.sort(masks["recurrent"]) if self.dropout else _dummy(dtype, 2)
        self.dropped = _per_step(training, T, B, S, dtype) if self.dropout else _dummy(dtype, 3)
        self.layer_norm = spec.layer_norm
        if self.layer_norm:
            self.g_ih, self.g_hh = p["weight_ih_ln"], p["weight_hh_ln"]
            self.xhat_ih, self.xhat_hh = _per_step(training, T, B, GH, dtype), _per_step(training, T, B, GH, dtype)
            self.rstd = _per_step(training, T, B, 3, dtype)
        else:
            self.g_ih = self.g_hh = _dummy(dtype, 1)
            self.xhat_ih = self.xhat_hh = np.zeros((1, B, 1), dtype)
            self.rstd = np.zeros((1, B, 3), dtype)
        if self.layer_norm and lstm:
            self.g_c, self.b_c = p["weight_c_ln"], p["bias_c_ln"]
            self.chat = _per_step(training, T, B, H, dtype)
        else:
            self.g_c = self.b_c = _dummy(dtype, 1)
            self.chat = np.zeros((1, B, 1), dtype)

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


# -- Elman and Jordan ------------------------------------------------------------------

def _simple_forward(spec, p, x, state0, order, training, threads, reg):
    T, B, _ = x.shape
    H, S, dtype = spec.hidden_size, spec.out_size, x.dtype
    jordan = spec.kind == "jordan"
    bias, _ = _folded_bias(spec, p, dtype)
    x_proj = np.empty((T, B, H), dtype)
    states = np.zeros((T + 1, B, S), dtype)
    states[0] = state0[0]
    if jordan:
        hidden = _per_step(training, T, B, H, dtype)
        w_ho = p["weight_ho"]
        b_ho = p["bias_ho"] if spec.bias else np.zeros(S, dtype)
    else:
        # Elman's hidden state is its output, unless zoneout blends the two
        hidden = _per_step(training, T, B, H, dtype) if reg.zoneout_h else states[1:]
        w_ho, b_ho = _dummy(dtype, 2), _dummy(dtype, 1)
    act, out_act = ACTIVATION_CODES[spec.nonlinearity], ACTIVATION_CODES[spec.output_activation]
    chunk = rows_per_chunk(B)
    with _kernel_call(kernels.simple_forward, dtype, threads):
        kernels.simple_forward(x, p["weight_ih"], bias, p["weight_hh"], w_ho, b_ho, order.active, chunk, act, out_act,
                               jordan, x_proj, states, hidden, reg.zoneout_h, reg.zone_h, *reg.drop())
    saved = dict(x=x, states=states, hidden=hidden, w_ho=w_ho, act=act, out_act=out_act, jordan=jordan, chunk=chunk)
    return states, (order.final(states),), saved


def _simple_backward(spec, p, s, reg, dy, d_states, order, threads):
    x = s["x"]
    T, B, I = x.shape
    H, S, dtype = spec.hidden_size, spec.out_size, x.dtype
    jordan = s["jordan"]
    (d_state,) = d_states
    d_pre = np.zeros((T, B, H), dtype)
    d_out = np.zeros((T, B, S), dtype) if jordan else _dummy(dtype, 3)
    d_hidden = np.empty((B, H), dtype) if jordan else _dummy(dtype, 2)
    dx = np.empty((T, B, I), dtype)
    g = contract.new_gradients(spec, dtype)
    g.setdefault("weight_ho", _dummy(dtype, 2))
    bias_grad = np.empty(H, dtype)
    bias_ho_grad = np.empty(S, dtype)
    with _kernel_call(kernels.simple_backward, dtype, threads):
        kernels.simple_backward(x, p["weight_ih"], p["weight_hh"], s["w_ho"], order.active, s["chunk"], s["act"],
                                s["out_act"], jordan, s["states"], s["hidden"], reg.zoneout_h, reg.zone_h, *reg.drop(),
                                dy, d_state, d_pre, d_out, d_hidden, dx, g["weight_ih"], g["weight_hh"],
                                g["weight_ho"], bias_grad, bias_ho_grad)
    return dx, (d_state,), contract.gradients(spec, dict(g, bias_ih=bias_grad, bias_hh=bias_grad, bias_ho=bias_ho_grad))


# -- LSTM ----------------------------------------------------------------------------

def _lstm_forward(spec, p, x, state0, order, training, threads, reg):
    T, B, _ = x.shape
    H, S, G, dtype = spec.hidden_size, spec.out_size, spec.num_gates, x.dtype
    projected, peephole, coupled = bool(spec.proj_size), spec.peephole, spec.coupled_input_forget
    bias, _ = _folded_bias(spec, p, dtype)
    x_proj = np.empty((T, B, G * H), dtype)
    states = np.zeros((T + 1, B, S), dtype)
    states[0] = state0[0]
    # inference: c_{t-1} and c_t in two alternating slots (see kernels._lstm_forward_rows)
    cells = np.zeros((T + 1, B, H), dtype) if training else np.empty((2, B, H), dtype)
    cells[0] = state0[1]
    m = _per_step(training, T, B, H, dtype) if projected else _dummy(dtype, 3)
    w_hr = p["weight_hr"] if projected else _dummy(dtype, 2)
    w_ci = p["weight_ci"] if peephole else _dummy(dtype, 1)
    w_cf = p["weight_cf"] if peephole and not coupled else _dummy(dtype, 1)
    w_co = p["weight_co"] if peephole else _dummy(dtype, 1)
    hh = np.empty((B, G * H), dtype) if reg.layer_norm else _dummy(dtype, 2)
    chunk = rows_per_chunk(B)
    with _kernel_call(kernels.lstm_forward, dtype, threads):
        kernels.lstm_forward(x, p["weight_ih"], bias, p["weight_hh"], w_hr, w_ci, w_cf, w_co, order.active, chunk,
                             peephole, coupled, projected, x_proj, states, cells, m, *reg.norm()[:3], reg.g_c, reg.b_c,
                             reg.xhat_ih, reg.xhat_hh, reg.chat, reg.rstd, hh, reg.zoneout_h, reg.zone_h,
                             reg.zoneout_c, reg.zone_c, reg.c_cand, *reg.drop())
    saved = dict(x=x, x_proj=x_proj, states=states, cells=cells, m=m, w_hr=w_hr, w_ci=w_ci, w_cf=w_cf, w_co=w_co,
                 chunk=chunk)
    return states, (order.final(states), order.final(cells)), saved


def _lstm_backward(spec, p, s, reg, dy, d_states, order, threads):
    x = s["x"]
    T, B, I = x.shape
    H, S, G, dtype = spec.hidden_size, spec.out_size, spec.num_gates, x.dtype
    projected, peephole, coupled = bool(spec.proj_size), spec.peephole, spec.coupled_input_forget
    d_state, d_cell = d_states
    chunk = s["chunk"]
    chunks = -(-B // chunk)
    d_gates = np.zeros((T, B, G * H), dtype)
    d_hh = np.zeros((T, B, G * H), dtype) if reg.layer_norm else _dummy(dtype, 3)
    d_h = np.zeros((T, B, S), dtype) if projected else _dummy(dtype, 3)
    d_m = np.empty((B, H), dtype) if projected else _dummy(dtype, 2)
    # per chunk, in float64: the peepholes' and LN(c)'s sums (H wide), the bias's and
    # the gains' with layer norm (G*H wide)
    vector_sums = np.zeros((chunks, 5, H), np.float64)
    gate_sums = np.zeros((chunks, 3, G * H if reg.layer_norm else 1), np.float64)
    dx = np.empty((T, B, I), dtype)
    g = contract.new_gradients(spec, dtype)
    g.setdefault("weight_hr", _dummy(dtype, 2))
    bias_grad = np.empty(G * H, dtype)
    vector_grads = np.empty((5, H), dtype)
    gain_grads = np.empty((2, G * H), dtype) if reg.layer_norm else _dummy(dtype, 2)
    with _kernel_call(kernels.lstm_backward, dtype, threads):
        kernels.lstm_backward(x, p["weight_ih"], p["weight_hh"], s["w_hr"], s["w_ci"], s["w_cf"], s["w_co"],
                              order.active, chunk, peephole, coupled, projected, s["x_proj"], s["states"], s["cells"],
                              s["m"], *reg.norm()[:3], reg.g_c, reg.b_c, reg.xhat_ih, reg.xhat_hh, reg.chat, reg.rstd,
                              reg.zoneout_h, reg.zone_h, reg.zoneout_c, reg.zone_c, reg.c_cand, *reg.drop(), dy,
                              d_state, d_cell, d_gates, d_hh, d_h, d_m, vector_sums, gate_sums, dx, g["weight_ih"],
                              g["weight_hh"], g["weight_hr"], bias_grad, vector_grads, gain_grads)
    g.update(bias_ih=bias_grad, bias_hh=bias_grad, weight_ci=vector_grads[0], weight_cf=vector_grads[1],
             weight_co=vector_grads[2], weight_c_ln=vector_grads[3], bias_c_ln=vector_grads[4],
             weight_ih_ln=gain_grads[0], weight_hh_ln=gain_grads[-1])
    return dx, (d_state, d_cell), contract.gradients(spec, g)


# -- GRU -------------------------------------------------------------------------------

def _gru_forward(spec, p, x, state0, order, training, threads, reg):
    T, B, _ = x.shape
    H, dtype = spec.hidden_size, x.dtype
    reset_after = spec.reset_after
    bias, b_hn = _folded_bias(spec, p, dtype)
    x_proj = np.empty((T, B, 3 * H), dtype)
    states = np.zeros((T + 1, B, H), dtype)
    states[0] = state0[0]
    aux = _per_step(training, T, B, H, dtype)
    hh = np.empty((B, 3 * H), dtype) if reset_after else _dummy(dtype, 2)
    chunk = rows_per_chunk(B)
    with _kernel_call(kernels.gru_forward, dtype, threads):
        kernels.gru_forward(x, p["weight_ih"], bias, p["weight_hh"], b_hn, order.active, chunk, reset_after, x_proj,
                            states, aux, hh, *reg.norm(), reg.zoneout_h, reg.zone_h, *reg.drop())
    saved = dict(x=x, x_proj=x_proj, states=states, aux=aux, chunk=chunk)
    return states, (order.final(states),), saved


def _gru_backward(spec, p, s, reg, dy, d_states, order, threads):
    x = s["x"]
    T, B, I = x.shape
    H, dtype = spec.hidden_size, x.dtype
    reset_after = spec.reset_after
    (d_state,) = d_states
    d_direct = np.zeros((B, H), dtype)
    d_x_proj = np.zeros((T, B, 3 * H), dtype)
    d_hh = np.zeros((T, B, 3 * H), dtype) if reset_after else _dummy(dtype, 3)
    d_rh = _dummy(dtype, 2) if reset_after else np.empty((B, H), dtype)
    # per chunk, in float64, with layer norm: the sums of the biases' and the gains' gradients
    gate_sums = np.zeros((-(-B // s["chunk"]), 4, 3 * H if reg.layer_norm else 1), np.float64)
    dx = np.empty((T, B, I), dtype)
    g = contract.new_gradients(spec, dtype)
    bias_ih_grad, bias_hh_grad = np.empty(3 * H, dtype), np.empty(3 * H, dtype)
    gain_grads = np.empty((2, 3 * H), dtype) if reg.layer_norm else _dummy(dtype, 2)
    with _kernel_call(kernels.gru_backward, dtype, threads):
        kernels.gru_backward(x, p["weight_ih"], p["weight_hh"], order.active, s["chunk"], reset_after, s["x_proj"],
                             s["states"], s["aux"], *reg.norm(), reg.zoneout_h, reg.zone_h, *reg.drop(), dy, d_state,
                             d_direct, d_x_proj, d_hh, d_rh, gate_sums, dx, g["weight_ih"], g["weight_hh"],
                             bias_ih_grad, bias_hh_grad, gain_grads)
    g.update(bias_ih=bias_ih_grad, bias_hh=bias_hh_grad, weight_ih_ln=gain_grads[0], weight_hh_ln=gain_grads[-1])
    return dx, (d_state,), contract.gradients(spec, g)


_FAMILIES = {
    "rnn": (_simple_forward, _simple_backward),
    "jordan": (_simple_forward, _simple_backward),
    "lstm": (_lstm_forward, _lstm_backward),
    "gru": (_gru_forward, _gru_backward),
}


# -- the contract ----------------------------------------------------------------------

def layer_forward(spec, params, x, states, lengths, training, reverse, num_threads, masks=None):
    """(y, states_n, ctx): see `rnncore.backends.contract.Backend`."""
    forward, _ = _FAMILIES[spec.kind]
    T, B, _ = x.shape
    schedule = contract.schedule(T, B, lengths)
    direction_masks = iter(masks if masks is not None else [None] * len(params))

    def run(p, state0, rev):
        order = _WorkOrder(schedule, rev)
        p = {name: _writable(value) for name, value in p.items()}
        reg = _Regularisers(spec, p, next(direction_masks), order, T, B, training, x.dtype)
        states_seq, finals, saved = forward(spec, p, order.gather(x), [schedule.sort(s) for s in state0], order,
                                            training, num_threads, reg)
        # training keeps states_seq for the backward: a caller's in-place edit of y must not reach it
        y = order.scatter(states_seq[1:], copy=training)
        return y, finals, dict(spec=spec, params=p, order=order, saved=saved, reg=reg)
    return contract.forward_directions(run, params, states, reverse, training)


def _direction_backward(ctx, dy, d_states_n, num_threads):
    spec, order = ctx["spec"], ctx["order"]
    _, backward = _FAMILIES[spec.kind]
    d_states = [order.schedule.sort(s) for s in d_states_n]
    dx_work, d_states0, g = backward(spec, ctx["params"], ctx["saved"], ctx["reg"], order.gather(dy), d_states, order,
                                     num_threads)
    return order.scatter(dx_work), tuple(order.schedule.unsort(s) for s in d_states0), g


def layer_backward(ctx, dy, dstates_n, num_threads):
    """(dx, dstates0, grads): see `rnncore.backends.contract.Backend`."""
    def run(ctx_d, dy_d, d_states_n):
        return _direction_backward(ctx_d, dy_d, d_states_n, num_threads)
    return contract.backward_directions(run, ctx, dy, dstates_n)


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
    schedule = order.schedule
    if spec.kind == "rnn":
        work = {"h": saved["states"][1:]}
    elif spec.kind == "jordan":
        work = {"h": saved["hidden"]}
    else:
        # the kernels overwrite each running step's input projection with its gates
        work = dict(zip(spec.gates, np.split(saved["x_proj"], spec.num_gates, axis=2)))
        if spec.kind == "lstm":
            if spec.coupled_input_forget:
                work["f"] = 1 - work["i"]
            work = {name: work[name] for name in "ifgo"}
            work["c"] = saved["cells"][1:]
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
