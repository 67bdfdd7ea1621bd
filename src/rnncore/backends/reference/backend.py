"""The NumPy reference: every cell's math written plainly. This is the oracle.

Each cell type is a pair of functions, one step forward and one step back, with one line
per equation. A single sequence loop runs any of them over time, for either direction
and with per-sequence lengths; a layer runs one or two directions. Every fast backend is
tested against this module, and this module is tested against finite differences and
PyTorch.

Conventions (PyTorch's): weights are (out, in) and applied as x @ W.T; gate blocks are
stacked along the rows of W in the order i, f, g, o (LSTM; i, g, o when the input and
forget gates are coupled) and r, z, n (GRU). `x_proj` is the input projection of a step,
x_t @ W_ih.T + b_ih, computed for all steps at once.

Lengths follow packed-sequence semantics: sequence b is valid for t < lengths[b]; a step
past the end leaves the state alone and outputs zero; the reverse direction starts at
each sequence's own last valid step. The loop achieves that by visiting, for each
sequence, the time indices in `_time_index` order and masking the invalid tail.
"""
import numpy as np
from scipy.special import expit as sigmoid


# -- activations, and their derivatives written in terms of the activation's output ----

def activate(name, a):
    if name == "tanh":
        return np.tanh(a)
    if name == "relu":
        return np.maximum(a, 0)
    if name == "sigmoid":
        return sigmoid(a)
    return a  # identity


def activation_back(name, out, grad):
    """grad * d act(a) / da, given out = act(a)."""
    if name == "tanh":
        return grad * (1 - out * out)
    if name == "relu":
        # torch's threshold_backward: zero where out <= 0, so a NaN output passes grad on
        return np.where(out <= 0, 0, grad)
    if name == "sigmoid":
        return grad * (out * (1 - out))
    return grad


def _affine(inp, weight, bias):
    """inp @ weight.T + bias    (B, out) = (B, in) x (in, out)"""
    out = inp @ weight.T
    return out if bias is None else out + bias


def _affine_back(dout, inp, weight, gweight, gbias):
    """Accumulate the weight and bias gradients of `_affine`; return d inp."""
    gweight += dout.T @ inp
    if gbias is not None:
        gbias += dout.sum(axis=0)
    return dout @ weight


# -- one step of each cell ---------------------------------------------------------
# step(spec, p, x_proj, state) -> (new_state, cache)
# step_back(spec, p, cache, dstate, grads) -> (dstate_prev, dx_proj)
# `grads` has the keys of `p`; step_back adds its share of the recurrent gradients.

def _rnn_step(spec, p, x_proj, state):
    (h_prev,) = state
    h = activate(spec.nonlinearity, x_proj + _affine(h_prev, p["weight_hh"], p.get("bias_hh")))
    return (h,), (h_prev, h)


def _rnn_step_back(spec, p, cache, dstate, grads):
    h_prev, h = cache
    (dh,) = dstate
    da = activation_back(spec.nonlinearity, h, dh)
    dh_prev = _affine_back(da, h_prev, p["weight_hh"], grads["weight_hh"], grads.get("bias_hh"))
    return (dh_prev,), da


def _jordan_step(spec, p, x_proj, state):
    # h_t = act(W_ih x_t + b_ih + W_hh y_{t-1} + b_hh);  y_t = act_o(W_ho h_t + b_ho)
    (y_prev,) = state
    h = activate(spec.nonlinearity, x_proj + _affine(y_prev, p["weight_hh"], p.get("bias_hh")))
    y = activate(spec.output_activation, _affine(h, p["weight_ho"], p.get("bias_ho")))
    return (y,), (y_prev, h, y)


def _jordan_step_back(spec, p, cache, dstate, grads):
    y_prev, h, y = cache
    (dy,) = dstate
    dy_pre = activation_back(spec.output_activation, y, dy)
    dh = _affine_back(dy_pre, h, p["weight_ho"], grads["weight_ho"], grads.get("bias_ho"))
    da = activation_back(spec.nonlinearity, h, dh)
    dy_prev = _affine_back(da, y_prev, p["weight_hh"], grads["weight_hh"], grads.get("bias_hh"))
    return (dy_prev,), da


def _lstm_step(spec, p, x_proj, state):
    h_prev, c_prev = state
    a = x_proj + _affine(h_prev, p["weight_hh"], p.get("bias_hh"))
    if spec.coupled_input_forget:
        a_i, a_g, a_o = np.split(a, 3, axis=1)
    else:
        a_i, a_f, a_g, a_o = np.split(a, 4, axis=1)
    if spec.peephole:  # i and f look at c_{t-1}; o looks at the new c_t (below)
        a_i = a_i + p["weight_ci"] * c_prev
        if not spec.coupled_input_forget:
            a_f = a_f + p["weight_cf"] * c_prev
    i = sigmoid(a_i)
    f = 1 - i if spec.coupled_input_forget else sigmoid(a_f)
    g = np.tanh(a_g)
    c = f * c_prev + i * g
    if spec.peephole:
        a_o = a_o + p["weight_co"] * c
    o = sigmoid(a_o)
    tanh_c = np.tanh(c)
    m = o * tanh_c
    h = m @ p["weight_hr"].T if spec.proj_size else m
    return (h, c), (h_prev, c_prev, i, f, g, o, c, tanh_c, m)


def _lstm_step_back(spec, p, cache, dstate, grads):
    h_prev, c_prev, i, f, g, o, c, tanh_c, m = cache
    dh, dc = dstate
    if spec.proj_size:
        grads["weight_hr"] += dh.T @ m
        dm = dh @ p["weight_hr"]
    else:
        dm = dh
    do = dm * tanh_c
    dc = dc + dm * o * (1 - tanh_c * tanh_c)
    da_o = do * o * (1 - o)
    if spec.peephole:
        dc = dc + da_o * p["weight_co"]
        grads["weight_co"] += (da_o * c).sum(axis=0)
    di = dc * g
    dg = dc * i
    df = dc * c_prev
    dc_prev = dc * f
    if spec.coupled_input_forget:
        di = di - df  # f = 1 - i
    da_i = di * i * (1 - i)
    da_g = dg * (1 - g * g)
    blocks = [da_i]
    if not spec.coupled_input_forget:
        da_f = df * f * (1 - f)
        blocks.append(da_f)
    blocks += [da_g, da_o]
    if spec.peephole:
        dc_prev = dc_prev + da_i * p["weight_ci"]
        grads["weight_ci"] += (da_i * c_prev).sum(axis=0)
        if not spec.coupled_input_forget:
            dc_prev = dc_prev + da_f * p["weight_cf"]
            grads["weight_cf"] += (da_f * c_prev).sum(axis=0)
    da = np.concatenate(blocks, axis=1)
    dh_prev = _affine_back(da, h_prev, p["weight_hh"], grads["weight_hh"], grads.get("bias_hh"))
    return (dh_prev, dc_prev), da


def _gru_split_hh(p, grads, H):
    """W_hh, b_hh and their gradients split into the (r, z) rows and the n rows."""
    w, gw = p["weight_hh"], grads["weight_hh"]
    b, gb = p.get("bias_hh"), grads.get("bias_hh")
    rz = (w[:2 * H], gw[:2 * H], None if b is None else b[:2 * H], None if gb is None else gb[:2 * H])
    n = (w[2 * H:], gw[2 * H:], None if b is None else b[2 * H:], None if gb is None else gb[2 * H:])
    return rz, n


def _gru_step(spec, p, x_proj, state):
    (h_prev,) = state
    H = spec.hidden_size
    x_r, x_z, x_n = np.split(x_proj, 3, axis=1)
    if spec.reset_after:
        # n = tanh(W_in x + b_in + r * (W_hn h + b_hn))   (PyTorch, cuDNN)
        h_r, h_z, h_n = np.split(_affine(h_prev, p["weight_hh"], p.get("bias_hh")), 3, axis=1)
        r = sigmoid(x_r + h_r)
        z = sigmoid(x_z + h_z)
        n = np.tanh(x_n + r * h_n)
        kept = h_n
    else:
        # n = tanh(W_in x + b_in + W_hn (r * h) + b_hn)   (Cho et al.)
        b = p.get("bias_hh")
        h_r, h_z = np.split(_affine(h_prev, p["weight_hh"][:2 * H], None if b is None else b[:2 * H]), 2, axis=1)
        r = sigmoid(x_r + h_r)
        z = sigmoid(x_z + h_z)
        kept = r * h_prev
        n = np.tanh(x_n + _affine(kept, p["weight_hh"][2 * H:], None if b is None else b[2 * H:]))
    h = (1 - z) * n + z * h_prev
    return (h,), (h_prev, r, z, n, kept)


def _gru_step_back(spec, p, cache, dstate, grads):
    h_prev, r, z, n, kept = cache
    (dh,) = dstate
    dn = dh * (1 - z)
    dz = dh * (h_prev - n)
    dh_prev = dh * z
    da_n = dn * (1 - n * n)
    da_z = dz * z * (1 - z)
    if spec.reset_after:
        h_n = kept
        da_r = da_n * h_n * r * (1 - r)
        da_hh = np.concatenate([da_r, da_z, da_n * r], axis=1)
        dh_prev = dh_prev + _affine_back(da_hh, h_prev, p["weight_hh"], grads["weight_hh"], grads.get("bias_hh"))
    else:
        (w_rz, gw_rz, _, gb_rz), (w_n, gw_n, _, gb_n) = _gru_split_hh(p, grads, spec.hidden_size)
        d_rh = _affine_back(da_n, kept, w_n, gw_n, gb_n)
        da_r = d_rh * h_prev * r * (1 - r)
        dh_prev = dh_prev + d_rh * r
        da_rz = np.concatenate([da_r, da_z], axis=1)
        dh_prev = dh_prev + _affine_back(da_rz, h_prev, w_rz, gw_rz, gb_rz)
    return (dh_prev,), np.concatenate([da_r, da_z, da_n], axis=1)


STEPS = {
    "rnn": (_rnn_step, _rnn_step_back),
    "jordan": (_jordan_step, _jordan_step_back),
    "lstm": (_lstm_step, _lstm_step_back),
    "gru": (_gru_step, _gru_step_back),
}


# -- one direction over the whole sequence -----------------------------------------

def _time_index(T, lengths, reverse):
    """(T, B) time index visited at loop step t by each sequence.

    Forward: t. Reverse: lengths[b] - 1 - t while valid, then t itself for the padded
    tail, so each column is a permutation of range(T)."""
    t = np.arange(T)[:, None]
    if not reverse:
        return np.broadcast_to(t, (T, len(lengths)))
    return np.where(t < lengths[None, :], lengths[None, :] - 1 - t, t)


def direction_forward(spec, p, x, state0, lengths=None, reverse=False, training=True):
    """Run one direction. x (T, B, I); state0 tuple of (B, n). Returns y (T, B, out),
    the final state tuple and, when training, the context for `direction_backward`."""
    T, B, _ = x.shape
    lengths = np.full(B, T) if lengths is None else np.asarray(lengths)
    order = _time_index(T, lengths, reverse)
    batch = np.arange(B)
    valid = np.arange(T)[:, None] < lengths[None, :]
    step, _ = STEPS[spec.kind]

    # x_proj = x @ W_ih.T + b_ih for every step at once    (T, B, G*H)
    x_proj = _affine(x.reshape(T * B, -1), p["weight_ih"], p.get("bias_ih")).reshape(T, B, -1)
    x_proj = x_proj[order, batch]
    y = np.zeros((T, B, spec.out_size), dtype=x.dtype)
    state = tuple(s.copy() for s in state0)
    caches = []
    for t in range(T):
        new_state, cache = step(spec, p, x_proj[t], state)
        keep = valid[t][:, None]
        state = tuple(np.where(keep, new, old) for new, old in zip(new_state, state))
        y[order[t], batch] = np.where(keep, new_state[0], 0)
        caches.append(cache)
    ctx = dict(spec=spec, p=p, x=x, order=order, valid=valid, caches=caches) if training else None
    return y, state, ctx


def direction_backward(ctx, dy, dstate_n):
    """BPTT through one direction. Returns dx, the gradient of the initial state and
    the parameter gradients (a new dict, the keys of the parameters)."""
    spec, p, x, order, valid = ctx["spec"], ctx["p"], ctx["x"], ctx["order"], ctx["valid"]
    T, B, I = x.shape
    batch = np.arange(B)
    _, step_back = STEPS[spec.kind]
    grads = {name: np.zeros_like(value) for name, value in p.items()}
    dy = dy[order, batch]
    dstate = tuple(d.copy() for d in dstate_n)
    dx_proj = np.empty((T, B, p["weight_ih"].shape[0]), dtype=x.dtype)
    for t in reversed(range(T)):
        keep = valid[t][:, None]
        d_new = [np.where(keep, d, 0) for d in dstate]
        d_new[0] = d_new[0] + np.where(keep, dy[t], 0)
        d_prev, dx_proj[t] = step_back(spec, p, ctx["caches"][t], d_new, grads)
        # past a sequence's end the state was carried unchanged: so is its gradient
        dstate = tuple(np.where(keep, dp, d) for dp, d in zip(d_prev, dstate))
    in_time_order = np.empty_like(dx_proj)
    in_time_order[order, batch] = dx_proj
    dx_proj = in_time_order.reshape(T * B, -1)
    dx = _affine_back(dx_proj, x.reshape(T * B, I), p["weight_ih"], grads["weight_ih"], grads.get("bias_ih"))
    return dx.reshape(T, B, I), dstate, grads


# -- one layer: one or two directions ----------------------------------------------
# The backend contract. Every backend module provides these two functions.
#   layer_forward(spec, params, x, states, lengths, training, reverse, num_threads) -> (y, states_n, ctx)
#     params: list over directions of {name: array}; x: C-contiguous (T, B, I);
#     reverse: tuple of bools, one per direction (a layer passes (False, True));
#     states: list over directions of state tuples, each (B, n) C-contiguous;
#     lengths: None or int64 (B,), already validated; y: (T, B, D * out).
#   layer_backward(ctx, dy, dstates_n, num_threads) -> (dx, dstates0, grads)
#     num_threads: the threads the call may use (the reference runs on one)
#     dy: C-contiguous (T, B, D * out); dstates_n like states; grads: list of dicts.

def layer_forward(spec, params, x, states, lengths, training, reverse, num_threads=1):
    results = [direction_forward(spec, p, x, s, lengths, reverse=rev, training=training)
               for p, s, rev in zip(params, states, reverse)]
    y = np.concatenate([r[0] for r in results], axis=2)
    ctx = [r[2] for r in results] if training else None
    return y, [r[1] for r in results], ctx


def layer_backward(ctx, dy, dstates_n, num_threads=1):
    width = dy.shape[2] // len(ctx)
    dx, dstates0, grads = 0, [], []
    for d, (c, ds) in enumerate(zip(ctx, dstates_n)):
        dx_d, ds0, g = direction_backward(c, dy[:, :, d * width:(d + 1) * width], ds)
        dx = dx + dx_d
        dstates0.append(ds0)
        grads.append(g)
    return dx, dstates0, grads
