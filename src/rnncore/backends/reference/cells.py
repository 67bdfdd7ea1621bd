"""One step of each cell, forward and back, one line per equation.

Conventions (PyTorch's): weights are (out, in) and applied as x @ W.T; the gate blocks
are stacked along the rows of W in the order i, f, g, o (LSTM; i, g, o when the input
and forget gates are coupled) and r, z, n (GRU). `x_proj` is a step's input projection,
W_ih x_t + b_ih for the whole batch, computed for all steps at once by the sequence loop.
In the equations `*` is the element-wise product and W v is v @ W.T on a batch of rows.

    step(spec, p, x_proj, state) -> (new_state, cache)
    step_back(spec, p, cache, dstate, grads) -> (dstate_prev, dx_proj)

`p` holds one direction's parameters by name; `grads` has the same keys, and step_back
adds its step's share of the recurrent parameters' gradients into it.
"""
from typing import NamedTuple, Optional

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


def linear(inp, weight, bias):
    """W inp + b on a batch of rows: inp @ weight.T + bias    (B, out) = (B, in) x (in, out)"""
    out = inp @ weight.T
    return out if bias is None else out + bias


def _split_rows(bias, k):
    """bias[:k], bias[k:], or (None, None) without a bias."""
    return (None, None) if bias is None else (bias[:k], bias[k:])


# -- Elman ------------------------------------------------------------------------------

class RNNCache(NamedTuple):
    h_prev: np.ndarray
    h: np.ndarray


def rnn_step(spec, p, x_proj, state):
    """Elman:

        h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)        act: tanh or relu
    """
    (h_prev,) = state
    a = x_proj + linear(h_prev, p["weight_hh"], p.get("bias_hh"))
    h = activate(spec.nonlinearity, a)
    return (h,), RNNCache(h_prev, h)


def rnn_step_back(spec, p, cache, dstate, grads):
    """Back through `rnn_step` (sum_b: the sum over the batch rows):

        da = dh_t * act'(a)
        dW_hh += da^T h_{t-1};  db_hh += sum_b da;  dh_{t-1} = da W_hh
    """
    (dh,) = dstate
    da = activation_back(spec.nonlinearity, cache.h, dh)
    grads["weight_hh"] += da.T @ cache.h_prev
    if spec.bias:
        grads["bias_hh"] += da.sum(axis=0)
    dh_prev = da @ p["weight_hh"]
    return (dh_prev,), da


# -- Jordan -----------------------------------------------------------------------------

class JordanCache(NamedTuple):
    y_prev: np.ndarray
    h: np.ndarray
    y: np.ndarray


def jordan_step(spec, p, x_proj, state):
    """Jordan: the output, not the hidden state, is fed back.

        h_t = act(W_ih x_t + b_ih + W_hh y_{t-1} + b_hh)        act: tanh or relu
        y_t = act_o(W_ho h_t + b_ho)                            act_o: identity, tanh or sigmoid
    """
    (y_prev,) = state
    h = activate(spec.nonlinearity, x_proj + linear(y_prev, p["weight_hh"], p.get("bias_hh")))
    y = activate(spec.output_activation, linear(h, p["weight_ho"], p.get("bias_ho")))
    return (y,), JordanCache(y_prev, h, y)


def jordan_step_back(spec, p, cache, dstate, grads):
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
    h_prev: np.ndarray
    c_prev: np.ndarray
    i: np.ndarray
    f: np.ndarray
    g: np.ndarray
    o: np.ndarray
    c: np.ndarray
    tanh_c: np.ndarray
    m: np.ndarray


def lstm_step(spec, p, x_proj, state):
    """LSTM, with its variants in brackets:

        i_t = sigmoid(W_ii x_t + b_ii + W_hi h_{t-1} + b_hi [+ w_ci * c_{t-1}])
        f_t = sigmoid(W_if x_t + b_if + W_hf h_{t-1} + b_hf [+ w_cf * c_{t-1}])
                                                  [coupled input-forget: f_t = 1 - i_t]
        g_t = tanh(W_ig x_t + b_ig + W_hg h_{t-1} + b_hg)
        c_t = f_t * c_{t-1} + i_t * g_t
        o_t = sigmoid(W_io x_t + b_io + W_ho h_{t-1} + b_ho [+ w_co * c_t])
        m_t = o_t * tanh(c_t)
        h_t = m_t                                 [projection: h_t = W_hr m_t]

    The peephole weights w_c* are vectors (element-wise); o_t looks at the new c_t.
    """
    h_prev, c_prev = state
    a = x_proj + linear(h_prev, p["weight_hh"], p.get("bias_hh"))
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
    c = f * c_prev + i * g
    if spec.peephole:
        a_o = a_o + p["weight_co"] * c
    o = sigmoid(a_o)
    tanh_c = np.tanh(c)
    m = o * tanh_c
    h = m @ p["weight_hr"].T if spec.proj_size else m
    return (h, c), LSTMCache(h_prev, c_prev, i, f, g, o, c, tanh_c, m)


def lstm_step_back(spec, p, cache, dstate, grads):
    """Back through `lstm_step`; dc_t arrives as the carried gradient and gathers the rest:

        dm = dh_t                                 [projection: dm = dh_t W_hr; dW_hr += dh_t^T m_t]
        do = dm * tanh(c_t);  dc_t += dm * o_t * (1 - tanh(c_t)^2)
        da_o = do * o_t (1 - o_t)                 [dc_t += da_o * w_co; dw_co += sum_b da_o * c_t]
        di = dc_t * g_t;  dg = dc_t * i_t;  df = dc_t * c_{t-1};  dc_{t-1} = dc_t * f_t
                                                  [coupled: di -= df]
        da_i = di * i_t (1 - i_t);  da_f = df * f_t (1 - f_t);  da_g = dg * (1 - g_t^2)
                                                  [dc_{t-1} += da_i * w_ci + da_f * w_cf]
        da = [da_i, da_f, da_g, da_o]
        dW_hh += da^T h_{t-1};  db_hh += sum_b da;  dh_{t-1} = da W_hh
    """
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
    grads["weight_hh"] += da.T @ h_prev
    if spec.bias:
        grads["bias_hh"] += da.sum(axis=0)
    dh_prev = da @ p["weight_hh"]
    return (dh_prev, dc_prev), da


# -- GRU --------------------------------------------------------------------------------

class GRUCache(NamedTuple):
    h_prev: np.ndarray
    r: np.ndarray
    z: np.ndarray
    n: np.ndarray
    h_n: Optional[np.ndarray]  # reset_after: W_hn h_{t-1} + b_hn
    rh: Optional[np.ndarray]   # reset before: r_t * h_{t-1}


def gru_step(spec, p, x_proj, state):
    """GRU:

        r_t = sigmoid(W_ir x_t + b_ir + W_hr h_{t-1} + b_hr)
        z_t = sigmoid(W_iz x_t + b_iz + W_hz h_{t-1} + b_hz)
        n_t = tanh(W_in x_t + b_in + r_t * (W_hn h_{t-1} + b_hn))     reset_after (PyTorch, cuDNN)
        n_t = tanh(W_in x_t + b_in + W_hn (r_t * h_{t-1}) + b_hn)     reset before (Cho et al.)
        h_t = (1 - z_t) * n_t + z_t * h_{t-1}
    """
    (h_prev,) = state
    H = spec.hidden_size
    x_r, x_z, x_n = np.split(x_proj, 3, axis=1)
    if spec.reset_after:
        h_r, h_z, h_n = np.split(linear(h_prev, p["weight_hh"], p.get("bias_hh")), 3, axis=1)
        r = sigmoid(x_r + h_r)
        z = sigmoid(x_z + h_z)
        n = np.tanh(x_n + r * h_n)
        rh = None
    else:
        b_hrz, b_hn = _split_rows(p.get("bias_hh"), 2 * H)
        h_r, h_z = np.split(linear(h_prev, p["weight_hh"][:2 * H], b_hrz), 2, axis=1)
        r = sigmoid(x_r + h_r)
        z = sigmoid(x_z + h_z)
        rh = r * h_prev
        n = np.tanh(x_n + linear(rh, p["weight_hh"][2 * H:], b_hn))
        h_n = None
    h = (1 - z) * n + z * h_prev
    return (h,), GRUCache(h_prev, r, z, n, h_n, rh)


def gru_step_back(spec, p, cache, dstate, grads):
    """Back through `gru_step`:

        dn = dh_t * (1 - z_t);  dz = dh_t * (h_{t-1} - n_t);  dh_{t-1} = dh_t * z_t
        da_n = dn * (1 - n_t^2);  da_z = dz * z_t (1 - z_t)
    reset_after:
        da_r = da_n * (W_hn h_{t-1} + b_hn) * r_t (1 - r_t)
        da_hh = [da_r, da_z, da_n * r_t]
        dW_hh += da_hh^T h_{t-1};  db_hh += sum_b da_hh;  dh_{t-1} += da_hh W_hh
    reset before:
        dW_hn += da_n^T (r_t * h_{t-1});  db_hn += sum_b da_n;  d_rh = da_n W_hn
        da_r = d_rh * h_{t-1} * r_t (1 - r_t);  dh_{t-1} += d_rh * r_t
        dW_h[rz] += [da_r, da_z]^T h_{t-1};  db_h[rz] += sum_b [da_r, da_z]
        dh_{t-1} += [da_r, da_z] W_h[rz]
    """
    h_prev, r, z, n = cache.h_prev, cache.r, cache.z, cache.n
    (dh,) = dstate
    H = spec.hidden_size
    dn = dh * (1 - z)
    dz = dh * (h_prev - n)
    dh_prev = dh * z
    da_n = dn * (1 - n * n)
    da_z = dz * z * (1 - z)
    if spec.reset_after:
        da_r = da_n * cache.h_n * r * (1 - r)
        da_hh = np.concatenate([da_r, da_z, da_n * r], axis=1)
        grads["weight_hh"] += da_hh.T @ h_prev
        if spec.bias:
            grads["bias_hh"] += da_hh.sum(axis=0)
        dh_prev = dh_prev + da_hh @ p["weight_hh"]
    else:
        grads["weight_hh"][2 * H:] += da_n.T @ cache.rh
        if spec.bias:
            grads["bias_hh"][2 * H:] += da_n.sum(axis=0)
        d_rh = da_n @ p["weight_hh"][2 * H:]
        da_r = d_rh * h_prev * r * (1 - r)
        dh_prev = dh_prev + d_rh * r
        da_rz = np.concatenate([da_r, da_z], axis=1)
        grads["weight_hh"][:2 * H] += da_rz.T @ h_prev
        if spec.bias:
            grads["bias_hh"][:2 * H] += da_rz.sum(axis=0)
        dh_prev = dh_prev + da_rz @ p["weight_hh"][:2 * H]
    return (dh_prev,), np.concatenate([da_r, da_z, da_n], axis=1)


STEPS = {
    "rnn": (rnn_step, rnn_step_back),
    "jordan": (jordan_step, jordan_step_back),
    "lstm": (lstm_step, lstm_step_back),
    "gru": (gru_step, gru_step_back),
}
