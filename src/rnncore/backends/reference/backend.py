"""The NumPy reference (backend "numpy"): every cell's math written plainly. The oracle.

`cells` holds one step of each cell, forward and back, under its equations. Here one
sequence loop runs any of them over time, for either direction and with per-sequence
lengths, and `layer_forward`/`layer_backward` (the contract of
`rnncore.backends.contract.Backend`) run one or two directions. Every fast backend is
tested against this module, and this module is tested against finite differences and
PyTorch.

Lengths follow packed-sequence semantics: sequence b is valid for t < lengths[b]; a step
past the end leaves the state alone and outputs zero; the reverse direction starts at
each sequence's own last valid step. The loop achieves that by visiting, for each
sequence, the time indices `contract.time_index` gives, and masking the invalid tail.
The batch keeps its order: nothing is sorted here.

The regularised cells' masks (`contract.MASKS`) are indexed by time index, so the loop
gathers them in its own step order as it does x; a step receives its share as a
`cells.Masks` (zoneout's expectation p where a mask is missing). `layer_trace` reports
the gates a deterministic forward kept in its caches.
"""
import numpy as np

from .. import contract
from .cells import STEPS, TRACED, Masks, linear


def step_masks(spec, masks, time, batch):
    """The `Masks` of each loop step from one direction's masks ({name: array}, see
    `contract.MASKS`): a zoneout mask taken in loop-step order (row b at step t reads
    mask[time[t, b], b]), or without one the expectation's p (None when p is 0); the
    recurrent mask, the same at every step, or None."""
    T = time.shape[0]

    def weights(name, p):
        mask = masks.get(name)
        if mask is not None:
            return list(mask[time, batch])
        return [p if p > 0 else None] * T

    zone_h, zone_c = weights("zoneout_h", spec.zoneout_h), weights("zoneout_c", spec.zoneout_c)
    return [Masks(masks.get("recurrent"), w_h, w_c) for w_h, w_c in zip(zone_h, zone_c)]


def direction_forward(spec, p, x, state0, lengths=None, reverse=False, training=True, masks=None, memory="full"):
    """Run one direction. x (T, B, I); state0 tuple of (B, n); masks None or {name:
    array} (`contract.MASKS`). Returns y (T, B, out), the final state tuple and, when
    training, the context for `direction_backward`: every step's cache, or with memory
    "lean" the state at the start of each of `contract.lean_segments` and the last
    segment's caches."""
    T, B, _ = x.shape
    lengths = np.full(B, T) if lengths is None else np.asarray(lengths)
    time = contract.time_index(T, lengths, reverse)   # (T, B): the time index of loop step t
    valid = contract.running(T, lengths)               # (T, B): loop step t is inside the sequence
    ctx = dict(spec=spec, p=p, x=x, time=time, valid=valid, masks=step_masks(spec, masks or {}, time, np.arange(B)))
    y = np.zeros((T, B, spec.out_size), dtype=x.dtype)
    state = tuple(s.copy() for s in state0)
    lean = training and memory == "lean"
    segments = contract.lean_segments(T) if lean else [(0, T)]
    checkpoints = []
    for first, last in segments:
        checkpoints.append(state)
        state, caches = _run_steps(ctx, first, last, state, y)
    if lean:
        # the last segment's caches, which its backward (the first) reads as they are
        ctx.update(segments=segments, checkpoints=checkpoints, last_caches=caches)
    else:
        ctx["caches"] = caches
    return y, state, (ctx if training else None)


def _input_projection(ctx, first, last):
    """x_proj_t = W_ih x_t + b_ih of the loop steps [first, last), (last - first, B, GH):
    one time index at a time as the equation reads (and as a stream computes it, so that
    stepping gives the call's bits), then taken in loop-step order. With layer norm
    W_ih x_t alone, normalised in the step before b_ih is added."""
    spec, p, x = ctx["spec"], ctx["p"], ctx["x"]
    time, batch = ctx["time"][first:last], np.arange(x.shape[1])
    bias_x = None if spec.layer_norm else p.get("bias_ih")
    visited = np.unique(time)
    by_time = np.stack([linear(x[t], p["weight_ih"], bias_x) for t in visited])
    return by_time[np.searchsorted(visited, time), batch]


def _run_steps(ctx, first, last, state, y=None):
    """The loop steps [first, last) from `state`: the state after them and each step's
    cache; with y, the steps' outputs written into it."""
    spec, p = ctx["spec"], ctx["p"]
    time, valid, regularisers = ctx["time"], ctx["valid"], ctx["masks"]
    batch = np.arange(time.shape[1])
    step, _ = STEPS[spec.kind]
    x_proj = _input_projection(ctx, first, last)
    caches = []
    for t in range(first, last):
        new_state, cache = step(spec, p, x_proj[t - first], state, regularisers[t])
        keep = valid[t][:, None]
        state = tuple(np.where(keep, new, old) for new, old in zip(new_state, state))
        if y is not None:
            y[time[t], batch] = np.where(keep, new_state[0], 0)
        caches.append(cache)
    return state, caches


def direction_backward(ctx, dy, dstate_n, input_grad=True):
    """BPTT through one direction. Returns dx (None unless `input_grad`), the gradient
    of the initial state and the parameter gradients (a new dict, the keys of the
    parameters). Every gradient is
    added into step by step, last step first, so that a lean context (each segment's
    caches recomputed from its state as the backward reaches it) adds the same terms in
    the same order as a full one."""
    spec, p, x, time, valid = ctx["spec"], ctx["p"], ctx["x"], ctx["time"], ctx["valid"]
    T, B, I = x.shape
    batch = np.arange(B)
    _, step_back = STEPS[spec.kind]
    grads = contract.new_gradients(spec, x.dtype)
    dy = dy[time, batch]
    dx = np.empty_like(x) if input_grad else None
    dstate = tuple(d.copy() for d in dstate_n)
    if "caches" in ctx:
        segments = [(0, T, ctx["caches"])]
    else:
        segments = [(first, last, None) for first, last in ctx["segments"][:-1]]
        segments.append(ctx["segments"][-1] + (ctx["last_caches"],))
    for index in reversed(range(len(segments))):
        first, last, caches = segments[index]
        if caches is None:
            _, caches = _run_steps(ctx, first, last, ctx["checkpoints"][index])
        for t in reversed(range(first, last)):
            keep = valid[t][:, None]
            d_new = [np.where(keep, d, 0) for d in dstate]
            d_new[0] = d_new[0] + np.where(keep, dy[t], 0)
            d_prev, dx_proj = step_back(spec, p, caches[t - first], d_new, grads, ctx["masks"][t])
            # past a sequence's end the state was carried unchanged: so is its gradient
            dstate = tuple(np.where(keep, dp, d) for dp, d in zip(d_prev, dstate))
            x_t = x[time[t], batch]
            grads["weight_ih"] += dx_proj.T @ x_t
            if spec.bias and not spec.layer_norm:
                # with layer norm, dx_proj is the gradient of W_ih x_t, before the
                # normalisation and b_ih, whose gradient the step has added
                grads["bias_ih"] += dx_proj.sum(axis=0)
            if input_grad:
                dx[time[t], batch] = dx_proj @ p["weight_ih"]
    return dx, dstate, grads


# -- the contract: one or two directions ------------------------------------------------

def layer_forward(spec, params, x, states, lengths, training, reverse, num_threads=1, masks=None, memory="full"):
    """(y, states_n, ctx): see `rnncore.backends.contract.Backend`; runs on one thread."""
    def run(p_and_masks, state0, rev):
        p, masks_d = p_and_masks
        return direction_forward(spec, p, x, state0, lengths, reverse=rev, training=training, masks=masks_d,
                                 memory=memory)
    masks = [None] * len(params) if masks is None else masks
    return contract.forward_directions(run, list(zip(params, masks)), states, reverse, training)


def layer_backward(ctx, dy, dstates_n, num_threads=1, input_grad=True):
    """(dx, dstates0, grads): see `rnncore.backends.contract.Backend`; runs on one thread."""
    def run(ctx_d, dy_d, dstate_n):
        return direction_backward(ctx_d, dy_d, dstate_n, input_grad)
    return contract.backward_directions(run, ctx, dy, dstates_n, input_grad)


def direction_trace(spec, p, x, state0, lengths=None, reverse=False):
    """The gates of one direction's deterministic forward, {name: (T, B, H)} (`TRACED`),
    read from the caches its training forward keeps; in time order, zero past a
    sequence's end."""
    _, _, ctx = direction_forward(spec, p, x, state0, lengths, reverse=reverse, training=True)
    time, valid, batch = ctx["time"], ctx["valid"][:, :, None], np.arange(x.shape[1])
    trace = {}
    for name in TRACED[spec.kind]:
        by_step = np.stack([getattr(cache, name) for cache in ctx["caches"]])
        trace[name] = np.zeros_like(by_step)
        trace[name][time, batch] = np.where(valid, by_step, 0)
    return trace


def layer_trace(spec, params, x, states, lengths, reverse, num_threads=1):
    """The gate trace of a layer, a backend's optional companion of `layer_forward` (the
    same arguments less training and masks): a list over directions of
    `direction_trace`, from the deterministic forward (zoneout's expectation, no
    recurrent dropout), in the caller's batch order; runs on one thread."""
    return [direction_trace(spec, p, x, state0, lengths, rev) for p, state0, rev in zip(params, states, reverse)]
