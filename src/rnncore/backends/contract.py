"""The backend contract, as code, and the pieces every backend shares.

A backend is a module with the two functions of `Backend`; `rnncore.core.functional` and
the layers call them, the registry finds them. What every backend needs besides its
loops is written here once:

- the length schedule (`Schedule`, `schedule`, `time_index`, `running`): which rows run
  at each step, and which time index each row visits, in either direction;
- the direction wrapper (`forward_directions`, `backward_directions`): one or two
  directions of a layer, their outputs assembled and their input gradients summed;
- the gradient naming (`new_gradients`, `gradients`): the grads dict of the contract;
- the bias folding (`fold_bias`): b_ih + b_hh as one bias of the input projection.

This module imports numpy only: a `CellSpec` arrives as an argument and is read through
its attributes (kind, hidden_size, bias, reset_after, param_shapes()).
"""
import functools
import math
import threading
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Backend(Protocol):
    """One layer of a recurrent network, one or two directions, over a whole sequence.

    Sizes: T steps, B sequences, I input features, D directions (1 or 2), `out` =
    `spec.out_size` (the output y_t, which is also the fed-back state), G * H =
    `spec.num_gates * spec.hidden_size` (the stacked gate rows).

    Who validates: the caller (`rnncore.core`) checks every argument before the call:
    shapes, dtypes, C-contiguity, lengths in range, finite values where asked. A backend
    trusts its arguments and checks nothing; a wrong argument is a bug of the caller.

    Arrays: one dtype per call, float32 or float64 (x's), for x, every parameter, every
    state and every result; every array argument is C-contiguous. The backend reads its
    arguments and writes none of them.

    Lengths (packed-sequence semantics): sequence b is valid for t < lengths[b]; a step
    past its end outputs y = 0 and carries the state unchanged, and its dy is ignored;
    the reverse direction starts at each sequence's own last valid step. `Schedule`
    writes this down.

    Threads: `num_threads` (>= 1) is how many threads the call may use for its own
    parallel work (the reference uses one; the compiled backend runs two directions
    side by side; the numba backend splits the batch in chunks). BLAS calls made inside
    a backend run on one thread each. Determinism: the results are bitwise the same for
    any `num_threads`, and for any number of concurrent callers.
    """

    def layer_forward(self, spec, params, x, states, lengths, training, reverse, num_threads, masks=None,
                      memory="full"):
        """Run the layer: returns (y, states_n, ctx).

        spec : CellSpec, the cell kind and variant (frozen, hashable: a backend may key
            caches on it); read through its attributes only.
        params : list over directions of {name: array}, exactly the names and shapes of
            `spec.param_shapes()`; weights are (out, in) and applied as x @ W.T, gate
            blocks stacked along the rows (i, f, g, o; i, g, o coupled; r, z, n).
        x : (T, B, I). In training it is the caller's own copy, which the backend may
            keep in ctx without copying.
        states : list over directions of the initial state tuple, each entry (B, n) for
            n in `spec.state_sizes`: (h,), or (h, c) for LSTM.
        lengths : None (every sequence T long) or int64 (B,), 1 <= lengths[b] <= T.
        training : bool; False returns ctx None and may keep less per step.
        reverse : tuple of bools, one per direction (a bidirectional layer passes
            (False, True)); D = len(params) = len(states) = len(reverse).
        num_threads : int >= 1, see the class.
        masks : None, or a list over directions of {name: array} (see `MASKS`): the
            random masks of the regularised cells, drawn by the caller. A missing entry
            means the deterministic (evaluation) form: zoneout's expectation
            h_t = p h_{t-1} + (1 - p) h~_t with p = spec.zoneout_h (c: spec.zoneout_c),
            no recurrent dropout. Weight dropout never reaches a backend: the caller
            passes W_hh * M / (1 - p) as weight_hh.
        memory : "full" or "lean" (see `MEMORY`); read in training only.

        y : (T, B, D * out), direction d in columns d * out : (d + 1) * out, zero past a
            sequence's end. The caller's: ctx holds no reference to it.
        states_n : list over directions of the final state tuples (each sequence's
            state after its own last valid step), new (B, n) arrays.
        ctx : None unless training; otherwise whatever the backward needs (references
            to params and x, per-step caches, buffers, the schedule), opaque to the
            caller. The backward only reads it: one ctx may be back-propagated through
            more than once, and from two threads at once, each call giving the result
            of a single one.
        """

    def layer_backward(self, ctx, dy, dstates_n, num_threads, input_grad=True):
        """Back-propagate through a training-mode forward: returns (dx, dstates0, grads).

        ctx : the forward's ctx, unchanged by this call.
        dy : (T, B, D * out), the gradient of the loss w.r.t. y, in the forward's dtype.
        dstates_n : list over directions of tuples like `states`: the gradients w.r.t.
            the final states.
        num_threads : int >= 1, see the class.
        input_grad : bool; False: no dx is wanted (the input of a model's first layer),
            and a backend may leave out its product.

        dx : (T, B, I), summed over the directions, a new array; None where not
            `input_grad`.
        dstates0 : list over directions of tuples, the gradients w.r.t. the initial
            states, new (B, n) arrays.
        grads : list over directions of {name: array}: new arrays, none shared with
            another entry or with ctx, keyed by the names of `spec.param_shapes()` in
            its order, each of its parameter's shape (see `gradients`).
        """


    # A backend may also define
    #
    #     open_stream(specs, params, batch, dtype, num_threads) -> a step stack
    #
    # for a stack of one-direction layers (specs and params per layer, params the
    # stream's own copies) that steps `batch` rows through time: see `StepStack` below
    # for what it returns. One that does not gets `StepStack` over its layer_forward.
    #
    #     layer_trace(spec, params, x, states, lengths, reverse, num_threads) -> traces
    #
    # the gates of its own deterministic forward (no masks), arguments as layer_forward's:
    # a list over directions of {name: (T, B, H)} in time order and the caller's batch
    # order, zero past a sequence's end: LSTM "i", "f", "g", "o" (f = 1 - i when coupled)
    # and the carried cell state "c"; GRU "r", "z", "n"; Elman RNN "h". One that does not
    # is traced by the NumPy reference's.


# The masks of the regularised cells (`Backend.layer_forward`'s `masks`), by name: the
# shape (in the sizes of `Backend`, time-major and in the caller's batch order, indexed
# by time index whatever the direction: the step that visits x[t] uses mask[t]) and what
# the cell does with it. All of the call's dtype, C-contiguous.
MASKS = {
    # (T, B, out), 0 or 1: h_t = d * h_{t-1} + (1 - d) * h~_t; y_t is that h_t
    "zoneout_h": "zoneout of h",
    # (T, B, H), 0 or 1: c_t = d * c_{t-1} + (1 - d) * c~_t (LSTM)
    "zoneout_c": "zoneout of c",
    # (B, out), 0 or 1 / (1 - p): the recurrent product reads h_{t-1} * m at every step
    # (h_{t-1} itself everywhere else: GRU's z * h_{t-1}, the carried state)
    "recurrent": "dropout of the state entering the recurrent product",
}


# How much of a training forward its ctx keeps (`Backend.layer_forward`'s `memory`):
# "full", every loop step's caches; "lean", only the state at the start of each of
# `lean_segments`' segments, the last segment's caches and what does not grow with T,
# the backward recomputing each other segment's training forward from its state as it
# reaches it (last segment first) and back-propagating through it at once. The two give the same y, final states and
# backward results, bit for bit.
MEMORY = ("full", "lean")

# A backend that sums a gradient over the steps by products over many steps at a time
# (a weight's dG.T @ x, a bias's column sums) takes the loop steps GRADIENT_CHUNK at a
# time from the last chunk to the first, adding each chunk's product into the gradient:
# a lean backward, whose segments are whole chunks, then adds the same terms in the same
# order as the full one.
GRADIENT_CHUNK = 64


def lean_segments(steps):
    """The segments (s0, s1) of loop steps a lean call keeps one state for, in loop
    order: about sqrt(steps) steps each (a multiple of GRADIENT_CHUNK), the last taking
    what remains."""
    stride = GRADIENT_CHUNK * max(1, round(math.sqrt(steps) / GRADIENT_CHUNK))
    return [(s0, min(s0 + stride, steps)) for s0 in range(0, steps, stride)]


def gradient_chunks(first, last):
    """The chunks (c0, c1) of the loop steps [first, last) in the order their gradient
    products are added, last first: whole GRADIENT_CHUNKs counted from step 0."""
    bounds = list(range(first, last, GRADIENT_CHUNK)) + [last]
    return list(zip(bounds[:-1], bounds[1:]))[::-1]


# -- the length schedule ---------------------------------------------------------------

def time_index(T, lengths, reverse):
    """(T, n): the time index row b visits at loop step t.

    Forward: t. Reverse: lengths[b] - 1 - t while t < lengths[b], then t itself for the
    padded tail, so each column is a permutation of range(T) and the reverse direction
    starts at each row's own last valid step."""
    t = np.arange(T)[:, None]
    if not reverse:
        return np.broadcast_to(t, (T, len(lengths)))
    return np.where(t < lengths[None, :], lengths[None, :] - 1 - t, t)


def running(T, lengths):
    """(T, n) bool: row b is inside its sequence at loop step t, t < lengths[b]."""
    return np.arange(T)[:, None] < lengths[None, :]


class Schedule:
    """Which rows run at each loop step of a layer call, shared by its directions.

    The rows are sorted by length, longest first, ties in batch order (`order`), so that
    the rows running at step t are always the first `active[t]` ones: a backend runs a
    prefix of its rows per step and finished sequences cost nothing. Without lengths, or
    with every length T, `order` is None and the rows keep their order.

    order : None, or the permutation of range(B) that sorts the batch (row j of the
        schedule is sequence order[j] of the caller's arrays).
    lengths : int64 (B,), each row's length, non-increasing.
    steps : the loop steps that have a row running, the longest length.
    active : int64 (T,), active[t] = the number of rows with t < lengths[j].
    offsets : int64 (T,), active[:t].sum(): where step t's rows start when the steps'
        running rows are packed one after the other (PyTorch's PackedSequence order).
    total : active.sum(), the number of packed rows.
    Row j's last valid step is lengths[j] - 1, in either direction.
    """

    def __init__(self, T, B, lengths):
        self.T, self.B = T, B
        self._derived = {}
        if lengths is None or int(lengths.min()) == T:
            self.order = None
            self.lengths = np.full(B, T, dtype=np.int64)
            self.active = np.full(T, B, dtype=np.int64)
        else:
            self.order = np.argsort(-lengths, kind="stable")
            self.lengths = np.ascontiguousarray(lengths[self.order], dtype=np.int64)
            self.active = running(T, self.lengths).sum(axis=1, dtype=np.int64)
        self.steps = int(self.lengths[0])
        self.offsets = np.zeros(T, dtype=np.int64)
        np.cumsum(self.active[:-1], out=self.offsets[1:])
        self.total = int(self.active.sum())

    def time(self, reverse):
        """(T, B): the time index row j visits at loop step t (`time_index` of the sorted
        rows)."""
        return self.derived(("time", bool(reverse)), lambda s: time_index(s.T, s.lengths, reverse))

    def padded(self, reverse):
        """Index (time, batch) that takes a caller's (T, B, ...) array to (step, row)
        order: row j at step t is time(reverse)[t, j] of sequence order[j]."""
        order = np.arange(self.B) if self.order is None else self.order
        return self.time(reverse), order[None, :]

    def packed(self, reverse):
        """Index (time, batch) of the `total` packed rows: packed row offsets[t] + j is
        row j at step t, for j < active[t]."""
        def build(s):
            step = np.repeat(np.arange(s.steps), s.active[:s.steps])
            row = np.arange(s.total) - s.offsets[step]
            order = np.arange(s.B) if s.order is None else s.order
            return s.time(reverse)[step, row], order[row]
        return self.derived(("packed", bool(reverse)), build)

    def sort(self, a, copy=True):
        """(B, ...) rows in the schedule's order, C-contiguous; a new array unless `copy`
        is False (then only for reading)."""
        if self.order is None:
            return np.array(a, order="C") if copy else np.ascontiguousarray(a)
        return np.ascontiguousarray(a[self.order])

    def unsort(self, a):
        """(B, ...) rows in the schedule's order -> the caller's order (`a` itself when the
        orders agree)."""
        if self.order is None:
            return a
        out = np.empty_like(a)
        out[self.order] = a
        return out

    def derived(self, key, build):
        """`build(self)`, once per schedule and key: the layouts a backend derives from
        the schedule live as long as it does, and a schedule without lengths is reused
        across calls (`schedule`). Two threads racing here build equal values."""
        value = self._derived.get(key)
        if value is None:
            value = self._derived[key] = build(self)
        return value


_uniform = {}


def schedule(T, B, lengths):
    """The `Schedule` of a call. One without lengths depends on (T, B) alone: the last
    few are kept, so that step-by-step decoding does not rebuild its arrays (or a
    backend's derived layouts) every call."""
    if lengths is not None and int(lengths.min()) < T:
        return Schedule(T, B, lengths)
    found = _uniform.get((T, B))
    if found is None:
        if len(_uniform) >= 16:
            _uniform.clear()
        found = _uniform[(T, B)] = Schedule(T, B, None)
    return found


# -- the direction wrapper ---------------------------------------------------------------

def forward_directions(run, params, states, reverse, training):
    """A layer's directions one after the other, assembled as `Backend.layer_forward`
    returns them. `run(p, state0, reverse)` runs one direction and returns (y_d, state_n,
    ctx_d), y_d (T, B, out) in the caller's order; one direction's y_d is the layer's y."""
    results = [run(p, state0, rev) for p, state0, rev in zip(params, states, reverse)]
    y = results[0][0] if len(results) == 1 else np.concatenate([r[0] for r in results], axis=2)
    ctx = [r[2] for r in results] if training else None
    return y, [r[1] for r in results], ctx


def backward_directions(run, ctx, dy, dstates_n, input_grad=True):
    """A layer's backward, direction by direction, assembled as `Backend.layer_backward`
    returns it. `run(ctx_d, dy_d, dstate_n)` back-propagates one direction and returns
    (dx_d, dstate0, grads_d), dx_d a new (T, B, I) array or None; dx is their sum, in
    direction order, or None where not `input_grad`."""
    width = dy.shape[2] // len(ctx)
    dx, dstates0, grads = None, [], []
    for d, (ctx_d, dstate_n) in enumerate(zip(ctx, dstates_n)):
        dx_d, dstate0, grads_d = run(ctx_d, dy[:, :, d * width:(d + 1) * width], dstate_n)
        if input_grad and dx is None:
            dx = dx_d
        elif input_grad:
            dx += dx_d
        dstates0.append(dstate0)
        grads.append(grads_d)
    return dx, dstates0, grads


# -- streams ------------------------------------------------------------------------------

class StepStack:
    """A stack of one-direction layers stepped through time by one-step calls of a
    backend's `layer_forward` (inference), for the backends without a stepping loop of
    their own. Every backend computes a step of a T-step call as it computes a one-step
    call, so the bits are the call's.

    `claim()`/`release()` hold it for one caller (`run` does), so that a second caller
    gets a RuntimeError rather than a torn state. `run(x, out, check_finite)` steps x (T, B, I) through the stack and writes the last
    layer's output of every step into out (T, B, P) (one step may come as x (B, I), out
    (B, P), or with one row x (I,), out (P,)); with `check_finite` a non-finite x is
    refused (ValueError) before any step; so is an `out` of another shape or dtype, or
    not writeable and C-contiguous. The caller checks x. `states()` gives per layer the arrays that
    hold its state now ((h,) or (h, c)), which runs update in place. `batch`,
    `input_size`, `output_size`: the shapes it serves."""

    def __init__(self, layer_forward, specs, params, batch, dtype, num_threads):
        self._forward, self._specs, self._params = layer_forward, list(specs), list(params)
        self._states = [tuple(np.zeros((batch, width), dtype) for width in spec.state_sizes) for spec in specs]
        self._num_threads = num_threads
        self.batch, self.input_size, self.output_size = batch, specs[0].input_size, specs[-1].out_size
        self._busy = threading.Lock()

    def claim(self):
        """Take the stack for one caller; RuntimeError while another holds it."""
        if not self._busy.acquire(blocking=False):
            raise RuntimeError("stream: in use by another thread; a stream serves one caller at a time "
                               "(make one stream per thread)")

    def release(self):
        self._busy.release()

    def states(self):
        return self._states

    def run(self, x, out, check_finite=True):
        T = x.shape[0] if x.ndim == 3 else 1
        expected = x.shape[:-1] + (self.output_size,)
        if not (isinstance(out, np.ndarray) and out.dtype == x.dtype and out.shape == expected
                and out.flags.c_contiguous and out.flags.writeable):
            got = f"{out.dtype} {out.shape}" if isinstance(out, np.ndarray) else type(out).__name__
            raise ValueError(f"out: expected a writeable C-contiguous {x.dtype} array of shape {expected}, "
                             f"got {got}")
        # one step may come as (B, I) or (I,): views of the same memory, as (1, B, I)
        x, out = x.reshape(T, self.batch, self.input_size), out.reshape(T, self.batch, self.output_size)
        if check_finite and not np.isfinite(x).all():
            raise ValueError("x: expected finite values (pass check_finite=False to skip the check), "
                             "got NaN or infinity")
        self.claim()
        try:
            self._steps(x, out)
        finally:
            self.release()

    def _steps(self, x, out):
        for t in range(x.shape[0]):
            inputs = x[t:t + 1]
            for spec, p, state in zip(self._specs, self._params, self._states):
                inputs, (new,), _ = self._forward(spec, [p], inputs, [state], None, False, (False,),
                                                  self._num_threads)
                for held, value in zip(state, new):
                    held[...] = value
            out[t] = inputs[0]


# -- gradient naming and bias folding ------------------------------------------------------

@functools.lru_cache(maxsize=256)
def _parameter_shapes(spec):
    """spec.param_shapes() as a tuple of (name, shape), built once per spec: a short
    call's backward would otherwise spend microseconds on the dict."""
    return tuple(spec.param_shapes().items())


def new_gradients(spec, dtype):
    """Zeroed gradient arrays of one direction, keyed by the spec's parameter names."""
    return {name: np.zeros(shape, dtype) for name, shape in _parameter_shapes(spec)}


def gradients(spec, computed):
    """The grads of one direction as the contract returns them, from `computed`, which
    maps parameter names to the kernels' gradient arrays: the spec's names in their
    order (other entries, a kernel's stand-ins for parameters the variant lacks, are
    dropped). One array given under two names (the kernels compute the gradient of the
    folded b_ih + b_hh once: it is both biases' gradient) is copied for the second, so
    that no two entries share memory."""
    grads, seen = {}, set()
    for name in spec.param_shapes():
        value = computed[name]
        if id(value) in seen:
            value = value.copy()
        seen.add(id(value))
        grads[name] = value
    return grads


def fold_bias(spec, params):
    """(bias_x, b_hn): the bias of the input projection x_t @ W_ih.T + bias_x, which
    folds in b_hh because the two are summed before any nonlinearity, and the GRU's
    b_hn where it cannot fold (reset_after: n = tanh(W_in x + b_in + r * (W_hn h +
    b_hn)), so b_hn is scaled by r), else None. (None, None) without biases. bias_x
    is a new array; b_hn is a view of params["bias_hh"]."""
    if not spec.bias:
        return None, None
    b_ih, b_hh = params["bias_ih"], params["bias_hh"]
    if spec.kind == "gru" and spec.reset_after:
        H = spec.hidden_size
        bias_x = b_ih.copy()
        bias_x[:2 * H] += b_hh[:2 * H]
        return bias_x, b_hh[2 * H:]
    return b_ih + b_hh, None
