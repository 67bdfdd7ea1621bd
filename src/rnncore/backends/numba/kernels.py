"""The sequence loops, one forward and one backward per cell family, compiled by numba.

Every array is in *work order*, prepared by `backend.py`: step t of work row j is the
t-th step that sequence visits (for the reverse direction, counted from its own last
valid step), and the rows are sorted by length, longest first. So at step t the rows
still running are exactly the prefix `[:active[t]]`, and each step works on
contiguous row ranges with no masks. The batch is cut into fixed chunks of `chunk`
rows (fixed by the batch size, never by the thread count); each chunk runs its own
recurrence in a `prange`, so threads synchronise once per call, not once per step,
and any thread count gives bitwise the same numbers.

Shapes (one direction): T steps, B rows, I inputs, H hidden, G gates, S = width of
the fed-back state (H; P for a projected LSTM; O for Jordan).

- `x` (T, B, I); `x_proj` (T, B, G*H): x @ W_ih.T plus the biases that can be folded
  there, computed for all steps by one GEMM, then each step's recurrent product is
  added into its slice (beta = 1) and the fused pass overwrites it with the activated
  gates, which the backward reads.
- `states` (T+1, B, S): states[0] the initial state, states[t+1] the state after step
  t, zero where a row has ended; states[1:] is the output y.
- Buffers with a leading axis of T (or T+1) in training and 1 in inference
  (`cells`, `m`, `hidden`, `aux`): training keeps every step for the backward,
  inference keeps only the running value, updated in place.

Variants are runtime flags, so a cell family costs one compilation per dtype and
direction of pass, whatever the variant.
"""
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic, overload

from ._blas import column_sums, gemm

# activation codes (backend.ACTIVATION_CODES maps names to these), numbered as the
# compiled backend and core/spec.py number them (tests/test_spec_vocabulary.py checks)
IDENTITY, TANH, RELU, SIGMOID = 0, 1, 2, 3

# error_model="numpy": a float division is then a plain division, not a test for a zero
# divisor with a Python exception behind it, a branch that stops loops from vectorising
_ENTRY = dict(parallel=True, cache=True, fastmath=False, nogil=True, error_model="numpy")
_ROWS = dict(fastmath=False, nogil=True, error_model="numpy")


# -- activations -----------------------------------------------------------------------
# tanh and sigmoid from plain arithmetic, not libm: a libm call is a scalar call LLVM
# cannot vectorise, and the element-wise passes are mostly these two functions. Every
# path is straight-line (both halves computed, one selected), so the loops calling them
# vectorise. Each dtype has its own constants and polynomials (the Cephes tanhf/expf and
# tanh/exp ones), so float32 math stays float32. Accuracy, tested over a dense grid in
# tests/test_numba_backend.py: a few ulp of the float64 libm result in either dtype.
# These live in this file, beside the cached entries, because numba's on-disk cache
# checks only the entry's own source file for changes.

@intrinsic
def _pow2_f32(typingctx, n):
    """2.0**n as float32 for an int32 n in [-126, 127], built from its exponent bits."""
    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        bits = builder.shl(builder.add(args[0], ir.Constant(i32, 127)), ir.Constant(i32, 23))
        return builder.bitcast(bits, ir.FloatType())
    return types.float32(types.int32), codegen


@intrinsic
def _pow2_f64(typingctx, n):
    """2.0**n as float64 for an int64 n in [-1022, 1023], built from its exponent bits."""
    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        bits = builder.shl(builder.add(args[0], ir.Constant(i64, 1023)), ir.Constant(i64, 52))
        return builder.bitcast(bits, ir.DoubleType())
    return types.float64(types.int64), codegen


@njit(inline="always")
def _exp_neg_f32(x):
    """exp(x) for x <= 0 (NaN stays NaN; below -150 the result is 0, as in float32)."""
    x = np.float32(-150.0) if x < np.float32(-150.0) else x
    n = np.floor(x * np.float32(1.44269504088896341) + np.float32(0.5))
    # r = x - n ln 2 in two parts (the first exact in float32 for |n| < 2**15)
    r = x - n * np.float32(0.693359375) - n * np.float32(-2.12194440e-4)
    z = r * r
    p = ((((((np.float32(1.9875691500e-4) * r + np.float32(1.3981999507e-3)) * r + np.float32(8.3334519073e-3)) * r
             + np.float32(4.1665795894e-2)) * r + np.float32(1.6666665459e-1)) * r + np.float32(5.0000001201e-1)) * z
         + r + np.float32(1.0))
    # 2**n in two factors so that results below the normal range underflow gracefully
    k = np.int32(n)
    half = k >> 1
    return p * _pow2_f32(half) * _pow2_f32(k - half)


@njit(inline="always")
def _exp_neg_f64(x):
    """exp(x) for x <= 0 (NaN stays NaN; below -1000 the result is 0, as in float64)."""
    x = -1000.0 if x < -1000.0 else x
    n = np.floor(x * 1.4426950408889634073599 + 0.5)
    r = x - n * 6.93145751953125e-1 - n * 1.42860682030941723212e-6
    z = r * r
    # the Cephes rational form: exp(r) = 1 + 2 r P(r^2) / (Q(r^2) - r P(r^2))
    p = r * ((1.26177193074810590878e-4 * z + 3.02994407707441961300e-2) * z + 9.99999999999999999910e-1)
    q = ((3.00198505138664455042e-6 * z + 2.52448340349684104192e-3) * z + 2.27265548208155028766e-1) * z + 2.0
    e = 1.0 + 2.0 * (p / (q - p))
    # through int32: AVX2 converts doubles to int32 lanes, not to int64 ones
    k = np.int32(n)
    half = k >> 1
    return e * _pow2_f64(np.int64(half)) * _pow2_f64(np.int64(k - half))


@njit(inline="always")
def _tanh_f32(x):
    a = -x if x < np.float32(0.0) else x
    # near 0 an odd polynomial keeps the relative accuracy 1 - 2/(e^2a + 1) would lose
    z = x * x
    small = ((((np.float32(-5.70498872745e-3) * z + np.float32(2.06390887954e-2)) * z
               + np.float32(-5.37397155531e-2)) * z + np.float32(1.33314422036e-1)) * z
             + np.float32(-3.33332819422e-1)) * z * x + x
    e = _exp_neg_f32(np.float32(-2.0) * a)
    large = (np.float32(1.0) - e) / (np.float32(1.0) + e)
    large = -large if x < np.float32(0.0) else large
    return small if a < np.float32(0.625) else large


@njit(inline="always")
def _tanh_f64(x):
    a = -x if x < 0.0 else x
    z = x * x
    small = x + x * z * (((-9.64399179425052238628e-1 * z - 9.92877231001918586564e1) * z
                          - 1.61468768441708447952e3)
                         / (((z + 1.12811678491632931402e2) * z + 2.23548839060100448583e3) * z
                            + 4.84406305325125486048e3))
    e = _exp_neg_f64(-2.0 * a)
    large = (1.0 - e) / (1.0 + e)
    large = -large if x < 0.0 else large
    return small if a < 0.625 else large


@njit(inline="always")
def _sigmoid_f32(x):
    # exp of -|x| only: it never overflows, and for x < 0 e / (1 + e) keeps the tiny
    # results relative-accurate where 1 - 1 / (1 + e) would cancel
    e = _exp_neg_f32(x if x < np.float32(0.0) else -x)
    s = np.float32(1.0) / (np.float32(1.0) + e)
    return e * s if x < np.float32(0.0) else s


@njit(inline="always")
def _sigmoid_f64(x):
    e = _exp_neg_f64(x if x < 0.0 else -x)
    s = 1.0 / (1.0 + e)
    return e * s if x < 0.0 else s


def tanh(x):
    """tanh in the dtype of x (float32 or float64), vectorisable; callable from jitted code."""
    return np.tanh(x)


def sigmoid(x):
    """1 / (1 + exp(-x)) in the dtype of x, vectorisable; callable from jitted code."""
    return 1 / (1 + np.exp(-x))


@overload(tanh, inline="always")
def _tanh_typed(x):
    if x == types.float32:
        return lambda x: _tanh_f32(x)
    if x == types.float64:
        return lambda x: _tanh_f64(x)


@overload(sigmoid, inline="always")
def _sigmoid_typed(x):
    if x == types.float32:
        return lambda x: _sigmoid_f32(x)
    if x == types.float64:
        return lambda x: _sigmoid_f64(x)


@njit(inline="always")
def _activate_rows(code, values, shift, out):
    """out = act(values + shift), shift along the last axis. The code is tested once,
    outside the loops, so each inner loop is one straight-line, vectorisable body."""
    n, width = out.shape
    if code == TANH:
        for j in range(n):
            for k in range(width):
                out[j, k] = tanh(values[j, k] + shift[k])
    elif code == RELU:
        zero = out.dtype.type(0)
        for j in range(n):
            for k in range(width):
                v = values[j, k] + shift[k]
                # NaN stays NaN, as np.maximum and torch.relu keep it
                out[j, k] = zero if v < zero else v
    elif code == SIGMOID:
        for j in range(n):
            for k in range(width):
                out[j, k] = sigmoid(values[j, k] + shift[k])
    else:
        for j in range(n):
            for k in range(width):
                out[j, k] = values[j, k] + shift[k]


@njit(inline="always")
def _times_activation_grad(code, out, grad):
    """grad *= d act(a) / da, written in terms of out = act(a); the code tested once."""
    n, width = grad.shape
    one = grad.dtype.type(1)
    zero = grad.dtype.type(0)
    if code == TANH:
        for j in range(n):
            for k in range(width):
                grad[j, k] *= one - out[j, k] * out[j, k]
    elif code == RELU:
        # torch's threshold_backward: zero where out <= 0; a NaN output passes grad on
        for j in range(n):
            for k in range(width):
                if out[j, k] <= zero:
                    grad[j, k] = zero
    elif code == SIGMOID:
        for j in range(n):
            for k in range(width):
                grad[j, k] *= out[j, k] * (one - out[j, k])


@njit
def _slot(buffer, t):
    """Where step t lives in a buffer kept per step in training, once in inference."""
    return t if buffer.shape[0] > 1 else 0


@njit
def _running(active, t, lo, hi):
    """Rows of chunk [lo, hi) still running at step t, counted from lo."""
    return min(hi, active[t]) - lo


@njit
def _scalars_like(x):
    scalars = np.zeros(2, x.dtype)
    scalars[1] = 1
    return scalars


@njit(inline="always")
def _copy(src, dst):
    """dst[:] = src for 1-D views; the explicit loop measured 4x faster than numba's
    slice assignment on rows of a few hundred elements."""
    for k in range(src.shape[0]):
        dst[k] = src[k]


@njit
def _chunk_bounds(chunk, index, batch):
    lo = index * chunk
    return lo, min(batch, lo + chunk)


# -- the per-step product for a few rows ---------------------------------------------
# Every BLAS call packs the whole weight matrix and pays a fixed entry cost, a few
# microseconds on tiny shapes and tens at H = 64 to 256; a step of a few rows does far
# less arithmetic than that. For those, plain loops over the weight in the layout
# c[row, :] += a[row, k] * b[k, :], four rows and four k at a time: each weight element
# loaded serves four rows, and each load and store of c pairs with four multiply-adds;
# the j loop vectorises. Measured per step, one thread, warm cache, (n, K) x (K, W), us:
#   float32  n=8 128x512: BLAS 54, one row at a time 24, these 16
#            n=16 64x256: BLAS 19, one row 12, these 8;  n=16 64x64: 4.1, 3.4, 2.7
#   float64  n=8 128x512: BLAS 55, these 37;  n=16 64x256: BLAS 18, these 17

@njit
def _small_product_fits(rows, weight):
    """Whether the loops beat BLAS for `rows` rows against this weight (either layout)."""
    return rows <= 16


@njit(**_ROWS)
def _small_product(a, b, c, accumulate):
    """c = a @ b, plus the old c when `accumulate`; b (K, W) with unit stride along rows.
    Every row's sums run in the same order (four k at a time, then the rest), whether
    it sits in a block of four or is left over, so a row's result does not depend on
    how many rows are active."""
    n, K = a.shape
    W = c.shape[1]
    K4 = K - K % 4
    if not accumulate:
        zero = c.dtype.type(0)
        for row in range(n):
            out = c[row]
            for j in range(W):
                out[j] = zero
    blocks = n // 4
    for block in range(blocks):
        r = 4 * block
        o0, o1, o2, o3 = c[r], c[r + 1], c[r + 2], c[r + 3]
        p, q, s, u = a[r], a[r + 1], a[r + 2], a[r + 3]
        for k in range(0, K4, 4):
            p0, p1, p2, p3 = p[k], p[k + 1], p[k + 2], p[k + 3]
            q0, q1, q2, q3 = q[k], q[k + 1], q[k + 2], q[k + 3]
            s0, s1, s2, s3 = s[k], s[k + 1], s[k + 2], s[k + 3]
            u0, u1, u2, u3 = u[k], u[k + 1], u[k + 2], u[k + 3]
            b0, b1, b2, b3 = b[k], b[k + 1], b[k + 2], b[k + 3]
            for j in range(W):
                w0, w1, w2, w3 = b0[j], b1[j], b2[j], b3[j]
                o0[j] += p0 * w0 + p1 * w1 + p2 * w2 + p3 * w3
                o1[j] += q0 * w0 + q1 * w1 + q2 * w2 + q3 * w3
                o2[j] += s0 * w0 + s1 * w1 + s2 * w2 + s3 * w3
                o3[j] += u0 * w0 + u1 * w1 + u2 * w2 + u3 * w3
        for k in range(K4, K):
            p0, q0, s0, u0, b0 = p[k], q[k], s[k], u[k], b[k]
            for j in range(W):
                w0 = b0[j]
                o0[j] += p0 * w0
                o1[j] += q0 * w0
                o2[j] += s0 * w0
                o3[j] += u0 * w0
    for row in range(4 * blocks, n):
        out, p = c[row], a[row]
        for k in range(0, K4, 4):
            p0, p1, p2, p3 = p[k], p[k + 1], p[k + 2], p[k + 3]
            b0, b1, b2, b3 = b[k], b[k + 1], b[k + 2], b[k + 3]
            for j in range(W):
                out[j] += p0 * b0[j] + p1 * b1[j] + p2 * b2[j] + p3 * b3[j]
        for k in range(K4, K):
            p0, b0 = p[k], b[k]
            for j in range(W):
                out[j] += p0 * b0[j]


@njit
def _transposed_for_small(w, rows):
    """w.T row-major when a step of `rows` rows or fewer can take the small loops, else an
    empty stand-in: a step of more rows goes to BLAS, which reads w as it is."""
    if _small_product_fits(rows, w):
        return np.ascontiguousarray(w.T)
    return np.empty((0, w.shape[0]), w.dtype)


@njit(**_ROWS)
def _step_product(a, b, c, accumulate, scalars):
    """c = a @ b, plus the old c when `accumulate`: the small loops or BLAS."""
    if _small_product_fits(a.shape[0], b):
        _small_product(a, b, c, accumulate)
    else:
        gemm(a, False, b, False, c, accumulate, scalars)


@njit(**_ROWS)
def _step_product_t(a, b, b_t, c, accumulate, scalars):
    """c = a @ b.T, plus the old c when `accumulate`; b_t from _transposed_for_small(b)."""
    if b_t.shape[0] > 0 and _small_product_fits(a.shape[0], b):
        _small_product(a, b_t, c, accumulate)
    else:
        gemm(a, False, b, True, c, accumulate, scalars)


# -- input projection, shared by every forward entry -------------------------------

@njit(**_ROWS)
def _project_input(x, w_ih, bias, x_proj, scalars):
    T, B, I = x.shape
    for t in range(T):
        for b in range(B):
            _copy(bias, x_proj[t, b])
        # x_proj_t += x_t @ W_ih.T    (B, G*H) += (B, I) x (I, G*H): one time index at a
        # time, as a stream computes it, so that stepping gives the call's bits
        gemm(x[t], False, w_ih, True, x_proj[t], True, scalars)


@njit(**_ROWS)
def _input_gradients(d_x_proj, x, w_ih, dx, grad_w_ih, grad_b_ih, scalars):
    T, B, I = x.shape
    d_rows = d_x_proj.reshape(T * B, d_x_proj.shape[2])
    # dW_ih = d_x_proj.T @ x    (G*H, I) = (G*H, T*B) x (T*B, I)
    gemm(d_rows, True, x.reshape(T * B, I), False, grad_w_ih, False, scalars)
    # dx = d_x_proj @ W_ih    (T*B, I) = (T*B, G*H) x (G*H, I)
    gemm(d_rows, False, w_ih, False, dx.reshape(T * B, I), False, scalars)
    column_sums(d_rows, grad_b_ih)


# -- Elman and Jordan ----------------------------------------------------------------
# Elman: h_t = act(x_proj_t + h_{t-1} @ W_hh.T), the state is h.
# Jordan: h_t = act(x_proj_t + y_{t-1} @ W_hh.T), y_t = act_o(h_t @ W_ho.T + b_ho), the
# state is y. For Elman `hidden` is states[1:] itself, so h lands in the state directly.

@njit(**_ROWS)
def _simple_forward_rows(lo, hi, active, x_proj, states, hidden, w_hh, w_hh_t, w_ho, b_ho, act, out_act, jordan,
                         scalars):
    H = hidden.shape[2]
    no_shift = np.zeros(H, hidden.dtype)
    for t in range(x_proj.shape[0]):
        n = _running(active, t, lo, hi)
        if n <= 0:
            break  # rows are sorted by length: this chunk has no later steps
        pre = x_proj[t, lo:lo + n]
        # pre += s_{t-1} @ W_hh.T    (n, H) += (n, S) x (S, H)
        _step_product_t(states[t, lo:lo + n], w_hh, w_hh_t, pre, True, scalars)
        h = hidden[_slot(hidden, t), lo:lo + n]
        _activate_rows(act, pre, no_shift, h)
        if jordan:
            y = states[t + 1, lo:lo + n]
            # y = h @ W_ho.T    (n, O) = (n, H) x (H, O)
            gemm(h, False, w_ho, True, y, False, scalars)
            _activate_rows(out_act, y, b_ho, y)


@njit(**_ENTRY)
def simple_forward(x, w_ih, bias, w_hh, w_ho, b_ho, active, chunk, act, out_act, jordan, x_proj, states, hidden):
    _project_input(x, w_ih, bias, x_proj, _scalars_like(x))
    B = x.shape[1]
    w_hh_t = _transposed_for_small(w_hh, min(chunk, B))
    if (B + chunk - 1) // chunk == 1:
        # one chunk: run it on the calling thread, not on a woken worker
        _simple_forward_rows(0, B, active, x_proj, states, hidden, w_hh, w_hh_t, w_ho, b_ho, act, out_act,
                             jordan, _scalars_like(x))
    else:
        for c in prange((B + chunk - 1) // chunk):
            lo, hi = _chunk_bounds(chunk, c, B)
            _simple_forward_rows(lo, hi, active, x_proj, states, hidden, w_hh, w_hh_t, w_ho, b_ho, act, out_act,
                                 jordan, _scalars_like(x))


@njit(**_ROWS)
def _simple_backward_rows(lo, hi, active, dy, states, hidden, w_hh, w_ho, act, out_act, jordan, d_pre, d_out,
                          d_hidden, d_state, scalars):
    H = hidden.shape[2]
    O = states.shape[2]
    for t in range(dy.shape[0] - 1, -1, -1):
        n = _running(active, t, lo, hi)
        if n <= 0:
            continue
        h = hidden[t, lo:lo + n]
        dp = d_pre[t, lo:lo + n]
        if jordan:
            y = states[t + 1, lo:lo + n]
            do = d_out[t, lo:lo + n]
            for j in range(n):
                for k in range(O):
                    do[j, k] = dy[t, lo + j, k] + d_state[lo + j, k]
            _times_activation_grad(out_act, y, do)
            dh = d_hidden[lo:lo + n]
            # dh = d_out @ W_ho    (n, H) = (n, O) x (O, H)
            gemm(do, False, w_ho, False, dh, False, scalars)
            for j in range(n):
                _copy(dh[j], dp[j])
        else:
            for j in range(n):
                for k in range(H):
                    dp[j, k] = dy[t, lo + j, k] + d_state[lo + j, k]
        _times_activation_grad(act, h, dp)
        # d s_{t-1} = d_pre @ W_hh    (n, S) = (n, H) x (H, S)
        _step_product(dp, w_hh, d_state[lo:lo + n], False, scalars)


@njit(**_ENTRY)
def simple_backward(x, w_ih, w_hh, w_ho, active, chunk, act, out_act, jordan, states, hidden, dy, d_state,
                    d_pre, d_out, d_hidden, dx, grad_w_ih, grad_w_hh, grad_w_ho, grad_b, grad_b_ho):
    T, B, _ = x.shape
    if (B + chunk - 1) // chunk == 1:
        # one chunk: run it on the calling thread, not on a woken worker
        _simple_backward_rows(0, B, active, dy, states, hidden, w_hh, w_ho, act, out_act, jordan, d_pre, d_out,
                              d_hidden, d_state, _scalars_like(x))
    else:
        for c in prange((B + chunk - 1) // chunk):
            lo, hi = _chunk_bounds(chunk, c, B)
            _simple_backward_rows(lo, hi, active, dy, states, hidden, w_hh, w_ho, act, out_act, jordan, d_pre, d_out,
                                  d_hidden, d_state, _scalars_like(x))
    scalars = _scalars_like(x)
    _input_gradients(d_pre, x, w_ih, dx, grad_w_ih, grad_b, scalars)
    S, H = states.shape[2], d_pre.shape[2]
    # dW_hh = d_pre.T @ s_{t-1}    (H, S) = (H, T*B) x (T*B, S)
    gemm(d_pre.reshape(T * B, H), True, states[:T].reshape(T * B, S), False, grad_w_hh, False, scalars)
    if jordan:
        d_out_rows = d_out.reshape(T * B, S)
        # dW_ho = d_out.T @ h    (O, H) = (O, T*B) x (T*B, H)
        gemm(d_out_rows, True, hidden.reshape(T * B, H), False, grad_w_ho, False, scalars)
        column_sums(d_out_rows, grad_b_ho)


# -- LSTM ------------------------------------------------------------------------------
# Gate columns i, f, g, o (i, g, o when coupled, f = 1 - i). Peepholes: i and f see
# c_{t-1}, o sees c_t. With a projection, h_t = m_t @ W_hr.T where m_t = o * tanh(c_t);
# without, h_t = m_t is written straight into the state.

# The element-wise passes below are runs of short loops over one row's contiguous gate
# blocks, each loop writing one array. LLVM vectorises a loop only after proving, or
# checking at run time, that its stores cannot overlap its other operands; it stops
# checking past a handful of array pairs, and a check between c_{t-1} and c_t held in
# one buffer always fails. One store target per loop keeps the checks few, and
# inference alternates two cell slots, so that c_{t-1} and c_t are never one array.

@njit(**_ROWS)
def _lstm_cell_forward(row, c_prev, c_new, out, p_i, p_f, p_o, coupled):
    """One row of one step: the gate pre-activations in `row` become the activated
    gates; c_new = f * c_prev + i * g; out = o * tanh(c_new)."""
    one = c_prev.dtype.type(1)
    H = c_prev.shape[0]
    g_col = H if coupled else 2 * H
    gate_i = row[:H]
    gate_g = row[g_col:g_col + H]
    gate_o = row[g_col + H:g_col + 2 * H]
    for k in range(H):
        gate_i[k] = sigmoid(gate_i[k] + p_i[k] * c_prev[k])
    for k in range(H):
        gate_g[k] = tanh(gate_g[k])
    if coupled:  # f = 1 - i, not stored
        for k in range(H):
            c_new[k] = (one - gate_i[k]) * c_prev[k] + gate_i[k] * gate_g[k]
    else:
        gate_f = row[H:2 * H]
        for k in range(H):
            gate_f[k] = sigmoid(gate_f[k] + p_f[k] * c_prev[k])
        for k in range(H):
            c_new[k] = gate_f[k] * c_prev[k] + gate_i[k] * gate_g[k]
    for k in range(H):
        gate_o[k] = sigmoid(gate_o[k] + p_o[k] * c_new[k])
    for k in range(H):
        out[k] = gate_o[k] * tanh(c_new[k])


@njit(**_ROWS)
def _lstm_forward_rows(lo, hi, active, x_proj, states, cells, m, w_hh, w_hh_t, w_hr, w_ci, w_cf, w_co, peephole,
                       coupled, projected, scalars):
    H = cells.shape[2]
    # without peepholes, zero weights: adding 0 * c (c is finite) leaves the sums as they
    # are, and the inner loops have no branch on the variant
    p_i, p_f, p_o = _peephole_weights(w_ci, w_cf, w_co, peephole, coupled, H)
    # c_t sits at t in training (T+1 slots) and at t % 2 in inference (2 slots)
    slots = cells.shape[0]
    for t in range(x_proj.shape[0]):
        n = _running(active, t, lo, hi)
        if n <= 0:
            break
        gates = x_proj[t, lo:lo + n]
        # gates += h_{t-1} @ W_hh.T    (n, G*H) += (n, S) x (S, G*H)
        _step_product_t(states[t, lo:lo + n], w_hh, w_hh_t, gates, True, scalars)
        c_prev = cells[t % slots, lo:lo + n]
        c_new = cells[(t + 1) % slots, lo:lo + n]
        out = m[_slot(m, t), lo:lo + n] if projected else states[t + 1, lo:lo + n]
        for j in range(n):
            _lstm_cell_forward(gates[j], c_prev[j], c_new[j], out[j], p_i, p_f, p_o, coupled)
        if projected:
            # h = m @ W_hr.T    (n, P) = (n, H) x (H, P)
            gemm(out, False, w_hr, True, states[t + 1, lo:lo + n], False, scalars)


@njit(inline="always")
def _peephole_weights(w_ci, w_cf, w_co, peephole, coupled, H):
    """The peephole weights of i, f, o, zeros where the variant has none."""
    none = np.zeros(H, w_ci.dtype)
    if not peephole:
        return none, none, none
    return w_ci, none if coupled else w_cf, w_co


@njit(**_ENTRY)
def lstm_forward(x, w_ih, bias, w_hh, w_hr, w_ci, w_cf, w_co, active, chunk, peephole, coupled, projected,
                 x_proj, states, cells, m):
    _project_input(x, w_ih, bias, x_proj, _scalars_like(x))
    B = x.shape[1]
    w_hh_t = _transposed_for_small(w_hh, min(chunk, B))
    if (B + chunk - 1) // chunk == 1:
        # one chunk: run it on the calling thread, not on a woken worker
        _lstm_forward_rows(0, B, active, x_proj, states, cells, m, w_hh, w_hh_t, w_hr, w_ci, w_cf, w_co, peephole,
                           coupled, projected, _scalars_like(x))
    else:
        for c in prange((B + chunk - 1) // chunk):
            lo, hi = _chunk_bounds(chunk, c, B)
            _lstm_forward_rows(lo, hi, active, x_proj, states, cells, m, w_hh, w_hh_t, w_hr, w_ci, w_cf, w_co, peephole,
                               coupled, projected, _scalars_like(x))


@njit(**_ROWS)
def _lstm_cell_backward(gates, c_prev, c_now, dm, d_cell, d_row, p_i, p_f, p_o, coupled):
    """One row of one step back: dm is the gradient of m_t, d_cell holds that of c_t
    from step t+1 and leaves with that of c_{t-1}; d_row receives the gradients of the
    gate pre-activations."""
    one = c_prev.dtype.type(1)
    H = c_prev.shape[0]
    g_col = H if coupled else 2 * H
    i = gates[:H]
    g = gates[g_col:g_col + H]
    o = gates[g_col + H:g_col + 2 * H]
    da_i = d_row[:H]
    da_g = d_row[g_col:g_col + H]
    da_o = d_row[g_col + H:g_col + 2 * H]
    # tanh(c_t) waits in da_o's place: a scratch row without an allocation
    for k in range(H):
        da_o[k] = tanh(c_now[k])
    for k in range(H):
        d_cell[k] = (d_cell[k] + dm[k] * o[k] * (one - da_o[k] * da_o[k])
                     + dm[k] * da_o[k] * o[k] * (one - o[k]) * p_o[k])
    for k in range(H):
        da_o[k] = dm[k] * da_o[k] * o[k] * (one - o[k])
    if coupled:  # f = 1 - i: i's gradient takes -dc * c_{t-1} from f's
        for k in range(H):
            da_i[k] = (d_cell[k] * g[k] - d_cell[k] * c_prev[k]) * i[k] * (one - i[k])
    else:
        for k in range(H):
            da_i[k] = d_cell[k] * g[k] * i[k] * (one - i[k])
    for k in range(H):
        da_g[k] = d_cell[k] * i[k] * (one - g[k] * g[k])
    if coupled:
        for k in range(H):
            d_cell[k] = d_cell[k] * (one - i[k]) + da_i[k] * p_i[k]
    else:
        f = gates[H:2 * H]
        da_f = d_row[H:2 * H]
        for k in range(H):
            da_f[k] = d_cell[k] * c_prev[k] * f[k] * (one - f[k])
        for k in range(H):
            d_cell[k] = d_cell[k] * f[k] + da_f[k] * p_f[k] + da_i[k] * p_i[k]


@njit(**_ROWS)
def _lstm_backward_rows(lo, hi, active, dy, gates_seq, cells, w_hh, w_hr, w_ci, w_cf, w_co, peephole, coupled,
                        projected, d_gates, d_h, d_m, d_state, d_cell, peephole_sums):
    H = cells.shape[2]
    P = dy.shape[2]
    g_col = H if coupled else 2 * H
    o_col = g_col + H
    scalars = _scalars_like(dy)
    p_i, p_f, p_o = _peephole_weights(w_ci, w_cf, w_co, peephole, coupled, H)
    d_m_direct = np.empty((hi - lo if not projected else 0, H), cells.dtype)
    for t in range(dy.shape[0] - 1, -1, -1):
        n = _running(active, t, lo, hi)
        if n <= 0:
            continue
        if projected:
            dh = d_h[t, lo:lo + n]
            for j in range(n):
                for k in range(P):
                    dh[j, k] = dy[t, lo + j, k] + d_state[lo + j, k]
            # dm = dh @ W_hr    (n, H) = (n, P) x (P, H)
            gemm(dh, False, w_hr, False, d_m[lo:lo + n], False, scalars)
        gates = gates_seq[t, lo:lo + n]
        c_prev = cells[t, lo:lo + n]
        c_now = cells[t + 1, lo:lo + n]
        da = d_gates[t, lo:lo + n]
        if not projected:
            # dm: the state gradient, in rows of its own so that the element-wise pass reads one array
            dm_rows = d_m_direct[:n]
            for j in range(n):
                for k in range(H):
                    dm_rows[j, k] = dy[t, lo + j, k] + d_state[lo + j, k]
        else:
            dm_rows = d_m[lo:lo + n]
        for j in range(n):
            _lstm_cell_backward(gates[j], c_prev[j], c_now[j], dm_rows[j], d_cell[lo + j], da[j], p_i, p_f, p_o,
                                coupled)
        if peephole:
            # kept out of the fused loop: float64 sums the variants without peepholes skip
            for j in range(n):
                for k in range(H):
                    peephole_sums[2, k] += da[j, o_col + k] * c_now[j, k]
                    if not coupled:
                        peephole_sums[1, k] += da[j, H + k] * c_prev[j, k]
                    peephole_sums[0, k] += da[j, k] * c_prev[j, k]
        # dh_{t-1} = d_gates @ W_hh    (n, S) = (n, G*H) x (G*H, S)
        _step_product(da, w_hh, d_state[lo:lo + n], False, scalars)


@njit(**_ENTRY)
def lstm_backward(x, w_ih, w_hh, w_hr, w_ci, w_cf, w_co, active, chunk, peephole, coupled, projected, x_proj,
                  states, cells, m, dy, d_state, d_cell, d_gates, d_h, d_m, peephole_sums, dx, grad_w_ih, grad_w_hh,
                  grad_w_hr, grad_b, grad_peephole):
    T, B, _ = x.shape
    if (B + chunk - 1) // chunk == 1:
        # one chunk: run it on the calling thread, not on a woken worker
        _lstm_backward_rows(0, B, active, dy, x_proj, cells, w_hh, w_hr, w_ci, w_cf, w_co, peephole, coupled,
                            projected, d_gates, d_h, d_m, d_state, d_cell, peephole_sums[0])
    else:
        for c in prange((B + chunk - 1) // chunk):
            lo, hi = _chunk_bounds(chunk, c, B)
            _lstm_backward_rows(lo, hi, active, dy, x_proj, cells, w_hh, w_hr, w_ci, w_cf, w_co, peephole, coupled,
                                projected, d_gates, d_h, d_m, d_state, d_cell, peephole_sums[c])
    scalars = _scalars_like(x)
    _input_gradients(d_gates, x, w_ih, dx, grad_w_ih, grad_b, scalars)
    S, GH, H = states.shape[2], d_gates.shape[2], cells.shape[2]
    # dW_hh = d_gates.T @ h_{t-1}    (G*H, S) = (G*H, T*B) x (T*B, S)
    gemm(d_gates.reshape(T * B, GH), True, states[:T].reshape(T * B, S), False, grad_w_hh, False, scalars)
    if projected:
        # dW_hr = dh.T @ m    (P, H) = (P, T*B) x (T*B, H)
        gemm(d_h.reshape(T * B, S), True, m.reshape(T * B, H), False, grad_w_hr, False, scalars)
    # per-chunk peephole sums, added in chunk order
    for row in range(3):
        for k in range(H):
            total = 0.0
            for c in range(peephole_sums.shape[0]):
                total += peephole_sums[c, row, k]
            grad_peephole[row, k] = total


# -- GRU -------------------------------------------------------------------------------
# Gate columns r, z, n. reset_after: n = tanh(x_n + r * (h_{t-1} @ W_hn.T + b_hn)); the
# recurrent product goes to `hh` whole (its n block must stay apart from x_n) and `aux`
# keeps h_{t-1} @ W_hn.T + b_hn. Cho et al.: n = tanh(x_n + (r * h_{t-1}) @ W_hn.T),
# b_hn folded into x_proj; the r, z and n products are added into x_proj in two GEMMs
# and `aux` keeps r * h_{t-1}, the operand of the second.

@njit(**_ROWS)
def _gru_cell_reset_after(row, rec, b_hn, h_prev, kept, h):
    """One row of one step, reset after the product: `row` (x_r, x_z, x_n) becomes
    (r, z, n); kept = h_{t-1} @ W_hn.T + b_hn; h = (1 - z) * n + z * h_{t-1}."""
    one = h.dtype.type(1)
    H = h.shape[0]
    r, z, new = row[:H], row[H:2 * H], row[2 * H:]
    for k in range(H):
        r[k] = sigmoid(r[k] + rec[k])
    for k in range(H):
        z[k] = sigmoid(z[k] + rec[H + k])
    for k in range(H):
        kept[k] = rec[2 * H + k] + b_hn[k]
    for k in range(H):
        new[k] = tanh(new[k] + r[k] * kept[k])
    for k in range(H):
        h[k] = (one - z[k]) * new[k] + z[k] * h_prev[k]


@njit(**_ROWS)
def _gru_forward_rows(lo, hi, active, x_proj, states, aux, hh, w_hh, w_hh_t, b_hn, reset_after, scalars):
    one = scalars[1]  # in the arrays' dtype: float32 math stays float32
    H = states.shape[2]
    # one store target per loop, as in the LSTM passes (see _lstm_cell_forward)
    for t in range(x_proj.shape[0]):
        n = _running(active, t, lo, hi)
        if n <= 0:
            break
        gates = x_proj[t, lo:lo + n]
        h_prev = states[t, lo:lo + n]
        h = states[t + 1, lo:lo + n]
        kept = aux[_slot(aux, t), lo:lo + n]
        if reset_after:
            rec = hh[lo:lo + n]
            # hh = h_{t-1} @ W_hh.T    (n, 3H) = (n, H) x (H, 3H)
            _step_product_t(h_prev, w_hh, w_hh_t, rec, False, scalars)
            for j in range(n):
                _gru_cell_reset_after(gates[j], rec[j], b_hn, h_prev[j], kept[j], h[j])
        else:
            # gates[:, :2H] += h_{t-1} @ W_hh[:2H].T    (n, 2H) += (n, H) x (H, 2H)
            _step_product_t(h_prev, w_hh[:2 * H], w_hh_t[:, :2 * H], gates[:, :2 * H], True, scalars)
            for j in range(n):
                r_z = gates[j, :2 * H]
                for k in range(2 * H):
                    r_z[k] = sigmoid(r_z[k])
                r, kept_row, h_prev_row = gates[j, :H], kept[j], h_prev[j]
                for k in range(H):
                    kept_row[k] = r[k] * h_prev_row[k]
            # gates[:, 2H:] += (r * h_{t-1}) @ W_hh[2H:].T    (n, H) += (n, H) x (H, H)
            _step_product_t(kept, w_hh[2 * H:], w_hh_t[:, 2 * H:], gates[:, 2 * H:], True, scalars)
            for j in range(n):
                z, new, h_row, h_prev_row = gates[j, H:2 * H], gates[j, 2 * H:], h[j], h_prev[j]
                for k in range(H):
                    new[k] = tanh(new[k])
                for k in range(H):
                    h_row[k] = (one - z[k]) * new[k] + z[k] * h_prev_row[k]


@njit(**_ENTRY)
def gru_forward(x, w_ih, bias, w_hh, b_hn, active, chunk, reset_after, x_proj, states, aux, hh):
    _project_input(x, w_ih, bias, x_proj, _scalars_like(x))
    B = x.shape[1]
    w_hh_t = _transposed_for_small(w_hh, min(chunk, B))
    if (B + chunk - 1) // chunk == 1:
        # one chunk: run it on the calling thread, not on a woken worker
        _gru_forward_rows(0, B, active, x_proj, states, aux, hh, w_hh, w_hh_t, b_hn, reset_after, _scalars_like(x))
    else:
        for c in prange((B + chunk - 1) // chunk):
            lo, hi = _chunk_bounds(chunk, c, B)
            _gru_forward_rows(lo, hi, active, x_proj, states, aux, hh, w_hh, w_hh_t, b_hn, reset_after,
                              _scalars_like(x))


@njit(**_ROWS)
def _gru_backward_rows(lo, hi, active, dy, gates_seq, states, aux, w_hh, reset_after, d_x_proj, d_hh, d_rh,
                       d_state, d_direct, scalars):
    one = scalars[1]  # in the arrays' dtype: float32 math stays float32
    H = states.shape[2]
    for t in range(dy.shape[0] - 1, -1, -1):
        n = _running(active, t, lo, hi)
        if n <= 0:
            continue
        gates = gates_seq[t, lo:lo + n]
        h_prev = states[t, lo:lo + n]
        kept = aux[t, lo:lo + n]
        dxp = d_x_proj[t, lo:lo + n]
        for j in range(n):
            r, z, new = gates[j, :H], gates[j, H:2 * H], gates[j, 2 * H:]
            da_r, da_z, da_n = dxp[j, :H], dxp[j, H:2 * H], dxp[j, 2 * H:]
            dy_row, d_state_row, dh, h_prev_row = dy[t, lo + j], d_state[lo + j], d_direct[lo + j], h_prev[j]
            # the state gradient arrives by three paths: the output, the recurrent
            # product of step t+1 and the direct z * h_{t-1} term of step t+1 (the
            # last kept in d_direct, which holds the sum until it takes this step's)
            for k in range(H):
                dh[k] = dy_row[k] + d_state_row[k] + dh[k]
            for k in range(H):
                da_n[k] = dh[k] * (one - z[k]) * (one - new[k] * new[k])
            for k in range(H):
                da_z[k] = dh[k] * (h_prev_row[k] - new[k]) * z[k] * (one - z[k])
            for k in range(H):
                dh[k] = dh[k] * z[k]
            if reset_after:
                kept_row = kept[j]
                for k in range(H):
                    da_r[k] = da_n[k] * kept_row[k] * r[k] * (one - r[k])
                d_rec = d_hh[t, lo + j]
                _copy(dxp[j, :2 * H], d_rec[:2 * H])
                d_rec_n = d_rec[2 * H:]
                for k in range(H):
                    d_rec_n[k] = da_n[k] * r[k]
        if reset_after:
            # dh_{t-1} = d_hh @ W_hh    (n, H) = (n, 3H) x (3H, H)
            _step_product(d_hh[t, lo:lo + n], w_hh, d_state[lo:lo + n], False, scalars)
        else:
            d_kept = d_rh[lo:lo + n]
            # d(r * h_{t-1}) = da_n @ W_hn    (n, H) = (n, H) x (H, H)
            _step_product(dxp[:, 2 * H:], w_hh[2 * H:], d_kept, False, scalars)
            for j in range(n):
                r, da_r, d_kept_row, h_prev_row = gates[j, :H], dxp[j, :H], d_kept[j], h_prev[j]
                d_direct_row = d_direct[lo + j]
                for k in range(H):
                    da_r[k] = d_kept_row[k] * h_prev_row[k] * r[k] * (one - r[k])
                for k in range(H):
                    d_direct_row[k] += d_kept_row[k] * r[k]
            # dh_{t-1} += [da_r, da_z] @ W_hh[:2H]    (n, H) = (n, 2H) x (2H, H)
            _step_product(dxp[:, :2 * H], w_hh[:2 * H], d_state[lo:lo + n], False, scalars)


@njit(**_ENTRY)
def gru_backward(x, w_ih, w_hh, active, chunk, reset_after, x_proj, states, aux, dy, d_state, d_direct, d_x_proj,
                 d_hh, d_rh, dx, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh):
    T, B, _ = x.shape
    if (B + chunk - 1) // chunk == 1:
        # one chunk: run it on the calling thread, not on a woken worker
        _gru_backward_rows(0, B, active, dy, x_proj, states, aux, w_hh, reset_after, d_x_proj, d_hh, d_rh,
                           d_state, d_direct, _scalars_like(x))
    else:
        for c in prange((B + chunk - 1) // chunk):
            lo, hi = _chunk_bounds(chunk, c, B)
            _gru_backward_rows(lo, hi, active, dy, x_proj, states, aux, w_hh, reset_after, d_x_proj, d_hh, d_rh,
                               d_state, d_direct, _scalars_like(x))
    # the initial state's gradient: the recurrent and the direct path of step 0
    for b in range(B):
        for k in range(d_state.shape[1]):
            d_state[b, k] += d_direct[b, k]
    scalars = _scalars_like(x)
    _input_gradients(d_x_proj, x, w_ih, dx, grad_w_ih, grad_b_ih, scalars)
    H = states.shape[2]
    h_prev = states[:T].reshape(T * B, H)
    if reset_after:
        d_rec = d_hh.reshape(T * B, 3 * H)
        # dW_hh = d_hh.T @ h_{t-1}    (3H, H) = (3H, T*B) x (T*B, H)
        gemm(d_rec, True, h_prev, False, grad_w_hh, False, scalars)
        column_sums(d_rec, grad_b_hh)
    else:
        d_rows = d_x_proj.reshape(T * B, 3 * H)
        # dW_hh[:2H] = [da_r, da_z].T @ h_{t-1}    (2H, H) = (2H, T*B) x (T*B, H)
        gemm(d_rows[:, :2 * H], True, h_prev, False, grad_w_hh[:2 * H], False, scalars)
        # dW_hh[2H:] = da_n.T @ (r * h_{t-1})    (H, H) = (H, T*B) x (T*B, H)
        gemm(d_rows[:, 2 * H:], True, aux.reshape(T * B, H), False, grad_w_hh[2 * H:], False, scalars)
        grad_b_hh[:] = grad_b_ih  # b_hn sits beside x_n: every bias sees the same gradient
