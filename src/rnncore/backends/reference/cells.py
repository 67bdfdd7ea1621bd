"""One step of each cell, forward and back, one line per equation.

Conventions (PyTorch's): weights are (out, in) and applied as x @ W.T; the gate blocks
are stacked along the rows of W in the order i, f, g, o (LSTM; i, g, o when the input
and forget gates are coupled) and r, z, n (GRU). `x_proj` is a step's input projection,
W_ih x_t + b_ih for the whole batch, computed for all steps at once by the sequence loop
(with layer norm W_ih x_t alone: b_ih comes after the normalisation, in the step).
In the equations `*` is the element-wise product and W v is v @ W.T on a batch of rows.

    step(spec, p, x_proj, state, masks) -> (new_state, cache)
    step_back(spec, p, cache, dstate, grads, masks) -> (dstate_prev, dx_proj)

`p` holds one direction's parameters by name; `grads` has the same keys, and step_back
adds its step's share of the recurrent parameters' gradients (and, with layer norm, of
b_ih and the normalisation's gains) into it. `masks` (a `Masks`) holds the step's
regularisers; a step without them computes the plain cell, operation for operation.

The regularised cells, in the order a step applies them (each step's docstring marks
where): recurrent dropout on the product's input, h_{t-1} * m (m: 0 or 1/(1 - p), one
mask per sequence); the cell, with layer norm inside it, giving the candidates h~_t, c~_t;
then zoneout, h_t = w * h_{t-1} + (1 - w) * h~_t (w: a 0/1 mask in training, the
probability p for the expectation), c_t likewise. Everything else that reads h_{t-1}
(GRU's z * h_{t-1}, zoneout, the carried state) reads it unmasked.
"""
from typing import NamedTuple, Optional, Union

import numpy as np
from scipy.special import expit as sigmoid

# LN(v; g, b) = g * (v - mean(v)) / sqrt(var(v) + eps) + b: core.spec.LAYER_NORM_EPS, which
# a backend may not import (tests hold the two equal)
LAYER_NORM_EPS = 1e-5


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


def linear(inp, weight, bias):
    """W inp + b on a batch of rows: inp @ weight.T + bias    (B, out) = (B, in) x (in, out)"""
    out = inp @ weight.T
    return out if bias is None else out + bias


def _split_rows(bias, k):
    """bias[:k], bias[k:], or (None, None) without a bias."""
    return (None, None) if bias is None else (bias[:k], bias[k:])


def _plus(a, bias):
    """a + bias, or a without a bias."""
    return a if bias is None else a + bias


# -- the regularisers ---------------------------------------------------------------------

class Masks(NamedTuple):
    """One step's regularisers, each None when the option is off.

    recurrent : (B, out), 0 or 1/(1 - p): the recurrent product reads h_{t-1} * m.
    zoneout_h, zoneout_c : the weight w of the previous state in h_t = w * h_{t-1} +
        (1 - w) * h~_t: a 0/1 array (B, out) or (B, H) in training, the float p for the
        expectation.
    """
    recurrent: Optional[np.ndarray] = None
    zoneout_h: Union[None, float, np.ndarray] = None
    zoneout_c: Union[None, float, np.ndarray] = None


PLAIN = Masks()


def dropped(h, mask):
    """h * m, the state as the recurrent product reads it (h itself without the mask);
    also the backward's d h_{t-1} = d(h * m) * m."""
    return h if mask is None else h * mask


def zoneout(w, prev, new):
    """h_t = w * h_{t-1} + (1 - w) * h~_t (h~_t itself without zoneout)."""
    return new if w is None else w * prev + (1 - w) * new


def zoneout_back(w, d):
    """d h~_t = (1 - w) * dh_t, the candidate's share of `zoneout`'s gradient (the previous
    state's, w * dh_t, is added by the step that has it)."""
    return d if w is None else (1 - w) * d


class NormStats(NamedTuple):
    v_hat: np.ndarray    # (v - mean(v)) / sqrt(var(v) + eps), each row
    inv_std: np.ndarray  # (B, 1): 1 / sqrt(var(v) + eps)


def layer_norm(v, gain, shift=None):
    """LN(v; g, b) = g * (v - mean(v)) / sqrt(var(v) + eps) + b over each row of v (the
    mean and the biased variance of the row's values); returns it and its `NormStats`."""
    centred = v - v.mean(axis=1, keepdims=True)
    inv_std = 1 / np.sqrt((centred * centred).mean(axis=1, keepdims=True) + LAYER_NORM_EPS)
    v_hat = centred * inv_std
    return _plus(gain * v_hat, shift), NormStats(v_hat, inv_std)


def layer_norm_back(d_out, stats, gain, grads, gain_name, shift_name=None):
    """Back through `layer_norm`: returns dv, adds the gain's (and shift's) gradient.

        dg += sum_b d_out * v_hat;  db += sum_b d_out;  dv_hat = d_out * g
        dv = (dv_hat - mean(dv_hat) - v_hat * mean(dv_hat * v_hat)) / sqrt(var(v) + eps)
    """
    v_hat, inv_std = stats
    grads[gain_name] += (d_out * v_hat).sum(axis=0)
    if shift_name is not None:
        grads[shift_name] += d_out.sum(axis=0)
    dv_hat = d_out * gain
    return inv_std * (dv_hat - dv_hat.mean(axis=1, keepdims=True)
                      - v_hat * (dv_hat * v_hat).mean(axis=1, keepdims=True))


# -- Elman ------------------------------------------------------------------------------

class RNNCache(NamedTuple):
    h_in: np.ndarray   # h_{t-1} as the recurrent product read it
    h: np.ndarray      # h~_t


def rnn_step(spec, p, x_proj, state, masks=PLAIN):
    """Elman:

        h~_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)       act: tanh or relu
        h_t = h~_t
                            [recurrent dropout: W_hh (h_{t-1} * m)]
                            [zoneout: h_t = w * h_{t-1} + (1 - w) * h~_t]
    """
    (h_prev,) = state
    h_in = dropped(h_prev, masks.recurrent)
    h_new = activate(spec.nonlinearity, x_proj + linear(h_in, p["weight_hh"], p.get("bias_hh")))
    h = zoneout(masks.zoneout_h, h_prev, h_new)
    return (h,), RNNCache(h_in, h_new)


def rnn_step_back(spec, p, cache, dstate, grads, masks=PLAIN):
    """Back through `rnn_step` (sum_b: the sum over the batch rows):

        dh~ = dh_t                            [zoneout: dh~ = (1 - w) * dh_t]
        da = dh~ * act'(a)
        dW_hh += da^T h_{t-1};  db_hh += sum_b da;  dh_{t-1} = da W_hh
                            [recurrent dropout: dW_hh += da^T (h_{t-1} * m); dh_{t-1} = (da W_hh) * m]
                            [zoneout: dh_{t-1} += w * dh_t]
    """
    (dh,) = dstate
    da = activation_back(spec.nonlinearity, cache.h, zoneout_back(masks.zoneout_h, dh))
    grads["weight_hh"] += da.T @ cache.h_in
    if spec.bias:
        grads["bias_hh"] += da.sum(axis=0)
    dh_prev = dropped(da @ p["weight_hh"], masks.recurrent)
    if masks.zoneout_h is not None:
        dh_prev = dh_prev + masks.zoneout_h * dh
    return (dh_prev,), da


# -- Jordan -----------------------------------------------------------------------------

class JordanCache(NamedTuple):
    y_prev: np.ndarray
    h: np.ndarray
    y: np.ndarray


def jordan_step(spec, p, x_proj, state, masks=PLAIN):
    """Jordan: the output, not the hidden state, is fed back (no regularised form).

        h_t = act(W_ih x_t + b_ih + W_hh y_{t-1} + b_hh)        act: tanh or relu
        y_t = act_o(W_ho h_t + b_ho)                            act_o: identity, tanh or sigmoid
    """
    (y_prev,) = state
    h = activate(spec.nonlinearity, x_proj + linear(y_prev, p["weight_hh"], p.get("bias_hh")))
    y = activate(spec.output_activation, linear(h, p["weight_ho"], p.get("bias_ho")))
    return (y,), JordanCache(y_prev, h, y)


def jordan_step_back(spec, p, cache, dstate, grads, masks=PLAIN):
    """Back through `jordan_step`:

        dy_pre = dy_t * act_o'(.);  dW_ho += dy_pre^T h_t;  db_ho += sum_b dy_pre
        dh_t = dy_pre W_ho;  da = dh_t * act'(.)
        dW_hh += da^T y_{t-1};  db_hh += sum_b da;  dy_{t-1} = da W_hh
    """
    (dy,) = dstate
    dy_pre = activation_back(spec.output_activation, cache.y, dy)
    grads["weight_ho"] += dy_pre.T @ cache.h
    if spec.bias:
        grads["bias_ho"] += dy_pre.sum(axis=0)
    dh = dy_pre @ p["weight_ho"]
    da = activation_back(spec.nonlinearity, cache.h, dh)
    grads["weight_hh"] += da.T @ cache.y_prev
    if spec.bias:
        grads["bias_hh"] += da.sum(axis=0)
    dy_prev = da @ p["weight_hh"]
    return (dy_prev,), da


# -- LSTM -------------------------------------------------------------------------------

class LSTMCache(NamedTuple):
    h_in: np.ndarray       # h_{t-1} as the recurrent product read it
    c_prev: np.ndarray
    i: np.ndarray
    f: np.ndarray
    g: np.ndarray
    o: np.ndarray
    c_new: np.ndarray      # c~_t
    tanh_c: np.ndarray     # tanh(c~_t), or tanh(LN(c~_t))
    m: np.ndarray
    c: np.ndarray          # c_t, the carried cell state (c~_t without zoneout)
    x_stats: Optional[NormStats]   # layer norm: of W_ih x_t, W_hh h_{t-1}, c~_t
    h_stats: Optional[NormStats]
    c_stats: Optional[NormStats]


def lstm_step(spec, p, x_proj, state, masks=PLAIN):
    """LSTM, with its variants in brackets:

        i_t = sigmoid(W_ii x_t + b_ii + W_hi h_{t-1} + b_hi [+ w_ci * c_{t-1}])
        f_t = sigmoid(W_if x_t + b_if + W_hf h_{t-1} + b_hf [+ w_cf * c_{t-1}])
                                                  [coupled input-forget: f_t = 1 - i_t]
        g_t = tanh(W_ig x_t + b_ig + W_hg h_{t-1} + b_hg)
        c~_t = f_t * c_{t-1} + i_t * g_t
        o_t = sigmoid(W_io x_t + b_io + W_ho h_{t-1} + b_ho [+ w_co * c~_t])
        m_t = o_t * tanh(c~_t)                    [layer norm: o_t * tanh(LN(c~_t; g_c, b_c))]
        h~_t = m_t                                [projection: h~_t = W_hr m_t]
        h_t = h~_t;  c_t = c~_t                   [zoneout: h_t = w_h * h_{t-1} + (1 - w_h) * h~_t,
                                                             c_t = w_c * c_{t-1} + (1 - w_c) * c~_t]

    [recurrent dropout: every W_h* reads h_{t-1} * m]
    [layer norm: the pre-activations a = [a_i, a_f, a_g, a_o] are
        a = LN(W_ih x_t; g_ih, 0) + LN(W_hh h_{t-1}; g_hh, 0) + b_ih + b_hh, the peepholes added after]
    The peephole weights w_c* are vectors (element-wise); o_t looks at the new c~_t, and
    h~_t at c~_t, not at the zoned-out c_t (Krueger et al.).
    """
    h_prev, c_prev = state
    h_in = dropped(h_prev, masks.recurrent)
    x_stats = h_stats = c_stats = None
    if spec.layer_norm:
        x_norm, x_stats = layer_norm(x_proj, p["weight_ih_ln"])
        h_norm, h_stats = layer_norm(h_in @ p["weight_hh"].T, p["weight_hh_ln"])
        a = _plus(_plus(x_norm + h_norm, p.get("bias_ih")), p.get("bias_hh"))
    else:
        a = x_proj + linear(h_in, p["weight_hh"], p.get("bias_hh"))
    if spec.coupled_input_forget:
        a_i, a_g, a_o = np.split(a, 3, axis=1)
    else:
        a_i, a_f, a_g, a_o = np.split(a, 4, axis=1)
    if spec.peephole:
        a_i = a_i + p["weight_ci"] * c_prev
        if not spec.coupled_input_forget:
            a_f = a_f + p["weight_cf"] * c_prev
    i = sigmoid(a_i)
    f = 1 - i if spec.coupled_input_forget else sigmoid(a_f)
    g = np.tanh(a_g)
    c_new = f * c_prev + i * g
    if spec.peephole:
        a_o = a_o + p["weight_co"] * c_new
    o = sigmoid(a_o)
    if spec.layer_norm:
        c_norm, c_stats = layer_norm(c_new, p["weight_c_ln"], p["bias_c_ln"])
        tanh_c = np.tanh(c_norm)
    else:
        tanh_c = np.tanh(c_new)
    m = o * tanh_c
    h_new = m @ p["weight_hr"].T if spec.proj_size else m
    h = zoneout(masks.zoneout_h, h_prev, h_new)
    c = zoneout(masks.zoneout_c, c_prev, c_new)
    return (h, c), LSTMCache(h_in, c_prev, i, f, g, o, c_new, tanh_c, m, c, x_stats, h_stats, c_stats)


def lstm_step_back(spec, p, cache, dstate, grads, masks=PLAIN):
    """Back through `lstm_step`; dc_t arrives as the carried gradient and gathers the rest:

        dh~ = dh_t;  dc~ = dc_t                   [zoneout: dh~ = (1 - w_h) * dh_t, dc~ = (1 - w_c) * dc_t]
        dm = dh~                                  [projection: dm = dh~ W_hr; dW_hr += dh~^T m_t]
        do = dm * tanh(c~_t);  dc~ += dm * o_t * (1 - tanh(c~_t)^2)
                                                  [layer norm: dc~ += LN'(dm * o_t * (1 - tanh(LN(c~_t))^2))]
        da_o = do * o_t (1 - o_t)                 [dc~ += da_o * w_co; dw_co += sum_b da_o * c~_t]
        di = dc~ * g_t;  dg = dc~ * i_t;  df = dc~ * c_{t-1};  dc_{t-1} = dc~ * f_t
                                                  [coupled: di -= df]
        da_i = di * i_t (1 - i_t);  da_f = df * f_t (1 - f_t);  da_g = dg * (1 - g_t^2)
                                                  [dc_{t-1} += da_i * w_ci + da_f * w_cf]
        da = [da_i, da_f, da_g, da_o];  db_hh += sum_b da
                                                  [layer norm: db_ih += sum_b da; da_hh = LN'(da) of
                                                   W_hh h_{t-1}, dx_proj = LN'(da) of W_ih x_t]
        dW_hh += da_hh^T h_{t-1};  dh_{t-1} = da_hh W_hh          (da_hh = da without layer norm)
                                                  [recurrent dropout: h_{t-1} * m in dW_hh;
                                                   dh_{t-1} = (da_hh W_hh) * m]
                                                  [zoneout: dh_{t-1} += w_h * dh_t, dc_{t-1} += w_c * dc_t]
    LN' is `layer_norm_back`, which also adds the gains' (and b_c's) gradients.
    """
    i, f, g, o, c_new, tanh_c, m = cache.i, cache.f, cache.g, cache.o, cache.c_new, cache.tanh_c, cache.m
    c_prev = cache.c_prev
    dh, dc_t = dstate
    dh_new = zoneout_back(masks.zoneout_h, dh)
    dc = zoneout_back(masks.zoneout_c, dc_t)
    if spec.proj_size:
        grads["weight_hr"] += dh_new.T @ m
        dm = dh_new @ p["weight_hr"]
    else:
        dm = dh_new
    do = dm * tanh_c
    d_tanh_in = dm * o * (1 - tanh_c * tanh_c)
    if spec.layer_norm:
        d_tanh_in = layer_norm_back(d_tanh_in, cache.c_stats, p["weight_c_ln"], grads, "weight_c_ln", "bias_c_ln")
    dc = dc + d_tanh_in
    da_o = do * o * (1 - o)
    if spec.peephole:
        dc = dc + da_o * p["weight_co"]
        grads["weight_co"] += (da_o * c_new).sum(axis=0)
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
    if spec.bias:
        grads["bias_hh"] += da.sum(axis=0)
    if spec.layer_norm:
        if spec.bias:
            grads["bias_ih"] += da.sum(axis=0)
        da_hh = layer_norm_back(da, cache.h_stats, p["weight_hh_ln"], grads, "weight_hh_ln")
        dx_proj = layer_norm_back(da, cache.x_stats, p["weight_ih_ln"], grads, "weight_ih_ln")
    else:
        da_hh = dx_proj = da
    grads["weight_hh"] += da_hh.T @ cache.h_in
    dh_prev = dropped(da_hh @ p["weight_hh"], masks.recurrent)
    if masks.zoneout_h is not None:
        dh_prev = dh_prev + masks.zoneout_h * dh
    if masks.zoneout_c is not None:
        dc_prev = dc_prev + masks.zoneout_c * dc_t
    return (dh_prev, dc_prev), dx_proj


# -- GRU --------------------------------------------------------------------------------

class GRUCache(NamedTuple):
    h_prev: np.ndarray
    h_in: np.ndarray           # h_{t-1} as the recurrent products read it
    r: np.ndarray
    z: np.ndarray
    n: np.ndarray
    h_n: Optional[np.ndarray]  # reset_after: W_hn h_{t-1} + b_hn (layer norm: its LN block + b_hn)
    rh: Optional[np.ndarray]   # reset before: r_t * h_{t-1}
    x_stats: Optional[NormStats]   # layer norm: of W_ih x_t and W_hh h_{t-1}
    h_stats: Optional[NormStats]


def gru_step(spec, p, x_proj, state, masks=PLAIN):
    """GRU:

        r_t = sigmoid(W_ir x_t + b_ir + W_hr h_{t-1} + b_hr)
        z_t = sigmoid(W_iz x_t + b_iz + W_hz h_{t-1} + b_hz)
        n_t = tanh(W_in x_t + b_in + r_t * (W_hn h_{t-1} + b_hn))     reset_after (PyTorch, cuDNN)
        n_t = tanh(W_in x_t + b_in + W_hn (r_t * h_{t-1}) + b_hn)     reset before (Cho et al.)
        h~_t = (1 - z_t) * n_t + z_t * h_{t-1}
        h_t = h~_t

    [recurrent dropout: W_h* read h_{t-1} * m (reset before: W_hn (r_t * (h_{t-1} * m)));
     z_t * h_{t-1} reads h_{t-1} itself]
    [layer norm (reset_after): W_ih x_t + b_ih is LN(W_ih x_t; g_ih, 0) + b_ih and
     W_hh h_{t-1} + b_hh is LN(W_hh h_{t-1}; g_hh, 0) + b_hh, each over all three blocks]
    [zoneout: h_t = w * h_{t-1} + (1 - w) * h~_t]
    """
    (h_prev,) = state
    H = spec.hidden_size
    h_in = dropped(h_prev, masks.recurrent)
    x_stats = h_stats = None
    if spec.layer_norm:
        x_norm, x_stats = layer_norm(x_proj, p["weight_ih_ln"])
        x_proj = _plus(x_norm, p.get("bias_ih"))
    x_r, x_z, x_n = np.split(x_proj, 3, axis=1)
    if spec.reset_after:
        if spec.layer_norm:
            h_norm, h_stats = layer_norm(h_in @ p["weight_hh"].T, p["weight_hh_ln"])
            h_proj = _plus(h_norm, p.get("bias_hh"))
        else:
            h_proj = linear(h_in, p["weight_hh"], p.get("bias_hh"))
        h_r, h_z, h_n = np.split(h_proj, 3, axis=1)
        r = sigmoid(x_r + h_r)
        z = sigmoid(x_z + h_z)
        n = np.tanh(x_n + r * h_n)
        rh = None
    else:
        b_hrz, b_hn = _split_rows(p.get("bias_hh"), 2 * H)
        h_r, h_z = np.split(linear(h_in, p["weight_hh"][:2 * H], b_hrz), 2, axis=1)
        r = sigmoid(x_r + h_r)
        z = sigmoid(x_z + h_z)
        rh = r * h_in
        n = np.tanh(x_n + linear(rh, p["weight_hh"][2 * H:], b_hn))
        h_n = None
    h_new = (1 - z) * n + z * h_prev
    h = zoneout(masks.zoneout_h, h_prev, h_new)
    return (h,), GRUCache(h_prev, h_in, r, z, n, h_n, rh, x_stats, h_stats)


def gru_step_back(spec, p, cache, dstate, grads, masks=PLAIN):
    """Back through `gru_step`:

        dh~ = dh_t                                [zoneout: dh~ = (1 - w) * dh_t]
        dn = dh~ * (1 - z_t);  dz = dh~ * (h_{t-1} - n_t);  dh_{t-1} = dh~ * z_t
        da_n = dn * (1 - n_t^2);  da_z = dz * z_t (1 - z_t)
    reset_after:
        da_r = da_n * (W_hn h_{t-1} + b_hn) * r_t (1 - r_t)
        da_hh = [da_r, da_z, da_n * r_t];  db_hh += sum_b da_hh
                                                  [layer norm: da_hh = LN'(da_hh) of W_hh h_{t-1}]
        dW_hh += da_hh^T h_{t-1};  dh_{t-1} += da_hh W_hh
    reset before:
        dW_hn += da_n^T (r_t * h_{t-1});  db_hn += sum_b da_n;  d_rh = da_n W_hn
        da_r = d_rh * h_{t-1} * r_t (1 - r_t);  dh_{t-1} += d_rh * r_t
        dW_h[rz] += [da_r, da_z]^T h_{t-1};  db_h[rz] += sum_b [da_r, da_z]
        dh_{t-1} += [da_r, da_z] W_h[rz]
    dx_proj = [da_r, da_z, da_n]                  [layer norm: db_ih += sum_b dx_proj; dx_proj = LN'(dx_proj)
                                                   of W_ih x_t]
    [recurrent dropout: h_{t-1} * m in every dW_h* and in d_rh's da_r; each product's
     share of dh_{t-1} (not dh~ * z_t) is multiplied by m]
    [zoneout: dh_{t-1} += w * dh_t]
    LN' is `layer_norm_back`, which also adds the gain's gradient.
    """
    h_prev, h_in, r, z, n = cache.h_prev, cache.h_in, cache.r, cache.z, cache.n
    (dh,) = dstate
    H = spec.hidden_size
    dh_new = zoneout_back(masks.zoneout_h, dh)
    dn = dh_new * (1 - z)
    dz = dh_new * (h_prev - n)
    dh_prev = dh_new * z
    da_n = dn * (1 - n * n)
    da_z = dz * z * (1 - z)
    if spec.reset_after:
        da_r = da_n * cache.h_n * r * (1 - r)
        da_hh = np.concatenate([da_r, da_z, da_n * r], axis=1)
        if spec.bias:
            grads["bias_hh"] += da_hh.sum(axis=0)
        if spec.layer_norm:
            da_hh = layer_norm_back(da_hh, cache.h_stats, p["weight_hh_ln"], grads, "weight_hh_ln")
        grads["weight_hh"] += da_hh.T @ h_in
        dh_prev = dh_prev + dropped(da_hh @ p["weight_hh"], masks.recurrent)
    else:
        grads["weight_hh"][2 * H:] += da_n.T @ cache.rh
        if spec.bias:
            grads["bias_hh"][2 * H:] += da_n.sum(axis=0)
        d_rh = da_n @ p["weight_hh"][2 * H:]
        da_r = d_rh * h_in * r * (1 - r)
        dh_prev = dh_prev + dropped(d_rh * r, masks.recurrent)
        da_rz = np.concatenate([da_r, da_z], axis=1)
        grads["weight_hh"][:2 * H] += da_rz.T @ h_in
        if spec.bias:
            grads["bias_hh"][:2 * H] += da_rz.sum(axis=0)
        dh_prev = dh_prev + dropped(da_rz @ p["weight_hh"][:2 * H], masks.recurrent)
    if masks.zoneout_h is not None:
        dh_prev = dh_prev + masks.zoneout_h * dh
    dx_proj = np.concatenate([da_r, da_z, da_n], axis=1)
    if spec.layer_norm:
        if spec.bias:
            grads["bias_ih"] += dx_proj.sum(axis=0)
        dx_proj = layer_norm_back(dx_proj, cache.x_stats, p["weight_ih_ln"], grads, "weight_ih_ln")
    return (dh_prev,), dx_proj


STEPS = {
    "rnn": (rnn_step, rnn_step_back),
    "jordan": (jordan_step, jordan_step_back),
    "lstm": (lstm_step, lstm_step_back),
    "gru": (gru_step, gru_step_back),
}
