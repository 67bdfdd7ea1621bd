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
`cells.Masks` (zoneout's expectation p where a mask is missing).
"""
import numpy as np

from .. import contract
from .cells import STEPS, Masks, linear


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


def direction_forward(spec, p, x, state0, lengths=None, reverse=False, training=True, masks=None):
    """Run one direction. x (T, B, I); state0 tuple of (B, n); masks None or {name:
    array} (`contract.MASKS`). Returns y (T, B, out), the final state tuple and, when
    training, the context for `direction_backward`."""
    T, B, _ = x.shape
    lengths = np.full(B, T) if lengths is None else np.asarray(lengths)
    time = contract.time_index(T, lengths, reverse)   # (T, B): the time index of loop step t
    valid = contract.running(T, lengths)               # (T, B): loop step t is inside the sequence
    batch = np.arange(B)
    step, _ = STEPS[spec.kind]
    step_regularisers = step_masks(spec, masks or {}, time, batch)

    # x_proj_t = W_ih x_t + b_ih, one time index at a time as the equation reads (and as
    # a stream computes it, so that stepping gives the call's bits), in loop-step order;
    # with layer norm W_ih x_t alone, normalised in the step before b_ih is added
    bias_x = None if spec.layer_norm else p.get("bias_ih")
    x_proj = np.stack([linear(x_t, p["weight_ih"], bias_x) for x_t in x])[time, batch]
    y = np.zeros((T, B, spec.out_size), dtype=x.dtype)
    state = tuple(s.copy() for s in state0)
    caches = []
    for t in range(T):
        new_state, cache = step(spec, p, x_proj[t], state, step_regularisers[t])
        keep = valid[t][:, None]
        state = tuple(np.where(keep, new, old) for new, old in zip(new_state, state))
        y[time[t], batch] = np.where(keep, new_state[0], 0)
        caches.append(cache)
    ctx = None
    if training:
        ctx = dict(spec=spec, p=p, x=x, time=time, valid=valid, caches=caches, masks=step_regularisers)
    return y, state, ctx


def direction_backward(ctx, dy, dstate_n):
    """BPTT through one direction. Returns dx, the gradient of the initial state and
    the parameter gradients (a new dict, the keys of the parameters)."""
    spec, p, x, time, valid = ctx["spec"], ctx["p"], ctx["x"], ctx["time"], ctx["valid"]
    T, B, I = x.shape
    batch = np.arange(B)
    _, step_back = STEPS[spec.kind]
    grads = contract.new_gradients(spec, x.dtype)
    dy = dy[time, batch]
    dstate = tuple(d.copy() for d in dstate_n)
    dx_proj = np.empty((T, B, p["weight_ih"].shape[0]), dtype=x.dtype)
    for t in reversed(range(T)):
        keep = valid[t][:, None]
        d_new = [np.where(keep, d, 0) for d in dstate]
        d_new[0] = d_new[0] + np.where(keep, dy[t], 0)
        d_prev, dx_proj[t] = step_back(spec, p, ctx["caches"][t], d_new, grads, ctx["masks"][t])
        # past a sequence's end the state was carried unchanged: so is its gradient
        dstate = tuple(np.where(keep, dp, d) for dp, d in zip(d_prev, dstate))
    in_time_order = np.empty_like(dx_proj)
    in_time_order[time, batch] = dx_proj
    dx_proj = in_time_order.reshape(T * B, -1)
    x_rows = x.reshape(T * B, I)
    grads["weight_ih"] += dx_proj.T @ x_rows
    if spec.bias and not spec.layer_norm:
        # with layer norm, dx_proj is the gradient of W_ih x_t, before the normalisation
        # and b_ih, whose gradient the steps have added
        grads["bias_ih"] += dx_proj.sum(axis=0)
    dx = dx_proj @ p["weight_ih"]
    return dx.reshape(T, B, I), dstate, grads


# -- the contract: one or two directions ------------------------------------------------

def layer_forward(spec, params, x, states, lengths, training, reverse, num_threads=1, masks=None):
    """(y, states_n, ctx): see `rnncore.backends.contract.Backend`; runs on one thread."""
    def run(p_and_masks, state0, rev):
        p, masks_d = p_and_masks
        return direction_forward(spec, p, x, state0, lengths, reverse=rev, training=training, masks=masks_d)
    masks = [None] * len(params) if masks is None else masks
    return contract.forward_directions(run, list(zip(params, masks)), states, reverse, training)


def layer_backward(ctx, dy, dstates_n, num_threads=1):
    """(dx, dstates0, grads): see `rnncore.backends.contract.Backend`; runs on one thread."""
    return contract.backward_directions(direction_backward, ctx, dy, dstates_n)
