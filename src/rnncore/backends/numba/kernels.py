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
direction of pass, whatever the variant. The regularised cells are variants too: layer
norm, zoneout and recurrent dropout are flags of the same loops, with stand-in arrays
where an option is off (see "the regularised cells' pieces" below).
"""
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic, overload

from ._blas import gemm

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


# -- the gradient products, shared by every backward entry ------------------------------
# A weight's gradient d.T @ operand and a bias's column sums run over the steps
# GRADIENT_CHUNK at a time, the last chunk first, each chunk's product added into the
# gradient (the bias's sums in float64, rounded once at the end): a memory-lean backward
# runs them segment by segment, its segments whole chunks, and so adds the same terms in
# the same order as one call over every step.

GRADIENT_CHUNK = 64  # contract.GRADIENT_CHUNK (tests/backends/test_lean_numba.py checks)


@njit
def _chunk_rows(c, steps, rows):
    """The rows [lo, hi) of gradient chunk c of `steps` steps of `rows` rows each."""
    return c * GRADIENT_CHUNK * rows, min(steps, (c + 1) * GRADIENT_CHUNK) * rows


@njit(**_ROWS)
def _weight_gradient(d, operand, rows, grad, scalars):
    """grad += d.T @ operand, d (steps * rows, n) and operand (steps * rows, m) the steps'
    rows one step after the other, a product per chunk, the last chunk first."""
    steps = d.shape[0] // rows
    for c in range((steps - 1) // GRADIENT_CHUNK, -1, -1):
        lo, hi = _chunk_rows(c, steps, rows)
        # grad += d_c.T @ operand_c    (n, m) += (n, GRADIENT_CHUNK * rows) x (GRADIENT_CHUNK * rows, m)
        gemm(d[lo:hi], True, operand[lo:hi], False, grad, True, scalars)


@njit(**_ROWS)
def _bias_sums(d, rows, sums):
    """sums += the column sums of d (steps * rows, n), in float64, chunk by chunk as
    `_weight_gradient` takes them, each chunk's rows in order (the same order for any
    thread count; float32 sums of T*B terms would lose digits)."""
    steps = d.shape[0] // rows
    for c in range((steps - 1) // GRADIENT_CHUNK, -1, -1):
        lo, hi = _chunk_rows(c, steps, rows)
        for row in range(lo, hi):
            values = d[row]
            for k in range(sums.shape[0]):
                sums[k] += values[k]


@njit(**_ROWS)
def _round_into(sums, out):
    """out = the float64 sums in out's dtype."""
    for k in range(out.shape[0]):
        out[k] = sums[k]


@njit(**_ROWS)
def _input_gradients(d_x_proj, x, w_ih, dx, grad_w_ih, scalars):
    T, B, I = x.shape
    d_rows = d_x_proj.reshape(T * B, d_x_proj.shape[2])
    x_rows, dx_rows = x.reshape(T * B, I), dx.reshape(T * B, I)
    # dW_ih += d_x_proj.T @ x    (G*H, I) += (G*H, T*B) x (T*B, I)
    _weight_gradient(d_rows, x_rows, B, grad_w_ih, scalars)
    # a row's product does not depend on its neighbours, but the chunks keep the shapes
    # of a segment's calls, whatever BLAS does with the edges of a block
    for c in range((T - 1) // GRADIENT_CHUNK, -1, -1):
        lo, hi = _chunk_rows(c, T, B)
        # dx = d_x_proj @ W_ih    (rows, I) = (rows, G*H) x (G*H, I)
        gemm(d_rows[lo:hi], False, w_ih, False, dx_rows[lo:hi], False, scalars)


@njit(**_ROWS)
def _chunk_totals(sums, row, out):
    """out[k] = sums[0, row, k] + sums[1, row, k] + ...: per-chunk float64 sums added in
    chunk order, an order fixed by the batch size alone."""
    for k in range(out.shape[0]):
        total = 0.0
        for c in range(sums.shape[0]):
            total += sums[c, row, k]
        out[k] = total


# -- the regularised cells' pieces, shared by the families -----------------------------
# Layer norm: LN(v; g, b) = g * (v - mean(v)) / sqrt(var(v) + eps) + b over a whole row
# (the G*H gate pre-activations, or the H cell values), its statistics in float64.
# Zoneout: h_t = w * h_{t-1} + (1 - w) * h~_t, w a step's 0/1 mask in training and the
# probability p otherwise; `zone` holds either the masks in work order, (T, B, S), or
# the one row of p's, (1, 1, S) (`_blend_row` reads both). Recurrent dropout: the
# recurrent product reads h_{t-1} * mask (one (B, S) mask in work order), written into
# `dropped` (kept per step in training: it is the operand of dW_hh).

LAYER_NORM_EPS = 1e-5  # spec.LAYER_NORM_EPS (tests/core/test_spec_vocabulary.py)


@njit(**_ROWS)
def _layer_norm_row(v, gain, shift, xhat, out):
    """out = gain * xhat + shift, xhat = (v - mean(v)) / sqrt(var(v) + eps) written into
    `xhat`; returns 1 / sqrt(var(v) + eps). `out` may be `v`. Four partial sums, added in
    a fixed order, shorten the chain of dependent additions."""
    N = v.shape[0]
    N4 = N - N % 4
    s0 = s1 = s2 = s3 = 0.0
    for k in range(0, N4, 4):
        s0 += v[k]
        s1 += v[k + 1]
        s2 += v[k + 2]
        s3 += v[k + 3]
    for k in range(N4, N):
        s0 += v[k]
    mean = ((s0 + s1) + (s2 + s3)) / N
    s0 = s1 = s2 = s3 = 0.0
    for k in range(0, N4, 4):
        d0, d1, d2, d3 = v[k] - mean, v[k + 1] - mean, v[k + 2] - mean, v[k + 3] - mean
        s0 += d0 * d0
        s1 += d1 * d1
        s2 += d2 * d2
        s3 += d3 * d3
    for k in range(N4, N):
        d0 = v[k] - mean
        s0 += d0 * d0
    rstd = 1.0 / np.sqrt(((s0 + s1) + (s2 + s3)) / N + LAYER_NORM_EPS)
    mean_t, rstd_t = v.dtype.type(mean), v.dtype.type(rstd)
    for k in range(N):
        xhat[k] = (v[k] - mean_t) * rstd_t
    for k in range(N):
        out[k] = gain[k] * xhat[k] + shift[k]
    return rstd_t


@njit(**_ROWS)
def _layer_norm_back_row(d_out, gain, xhat, rstd, d_in):
    """d_in = the gradient of v from d_out, that of gain * xhat + shift:
    rstd * (e - mean(e) - xhat * mean(e * xhat)) with e = d_out * gain. `d_in` may be
    `d_out`."""
    N = d_out.shape[0]
    s0 = s1 = 0.0
    for k in range(N):
        e = d_out[k] * gain[k]
        s0 += e
        s1 += e * xhat[k]
    mean_e, mean_ex = d_out.dtype.type(s0 / N), d_out.dtype.type(s1 / N)
    for k in range(N):
        d_in[k] = rstd * (d_out[k] * gain[k] - mean_e - xhat[k] * mean_ex)


@njit(**_ROWS)
def _add_gain_sums(d, xhat, gain_sums, shift_sums):
    """gain_sums += d * xhat, shift_sums += d: a layer norm's parameter gradients, in float64."""
    for k in range(d.shape[0]):
        gain_sums[k] += d[k] * xhat[k]
    for k in range(d.shape[0]):
        shift_sums[k] += d[k]


@njit(inline="always")
def _blend_row(zone, t, row):
    """Row `row`'s zoneout weights at step t: its mask, or the row of p's (leading axes of
    length 1 broadcast)."""
    return zone[t if zone.shape[0] > 1 else 0, row if zone.shape[1] > 1 else 0]


@njit(**_ROWS)
def _zoneout_rows(prev, new, zone, t, lo, out):
    """out = w * prev + (1 - w) * new for the rows of a step; `out` may be `new`."""
    one = new.dtype.type(1)
    for j in range(new.shape[0]):
        w, p, q, o = _blend_row(zone, t, lo + j), prev[j], new[j], out[j]
        for k in range(q.shape[0]):
            o[k] = w[k] * p[k] + (one - w[k]) * q[k]


@njit(**_ROWS)
def _zoneout_back_rows(d, zone, t, lo, carry):
    """Back through `_zoneout_rows`: d, the gradient of out, leaves as that of new,
    (1 - w) * d; carry receives that of prev, w * d."""
    one = d.dtype.type(1)
    for j in range(d.shape[0]):
        w, dj, cj = _blend_row(zone, t, lo + j), d[j], carry[j]
        for k in range(dj.shape[0]):
            cj[k] = w[k] * dj[k]
        for k in range(dj.shape[0]):
            dj[k] = (one - w[k]) * dj[k]


@njit(**_ROWS)
def _add_rows(src, dst):
    for j in range(dst.shape[0]):
        s, o = src[j], dst[j]
        for k in range(o.shape[0]):
            o[k] += s[k]


@njit(**_ROWS)
def _scale_rows(rows, mask, lo):
    """rows[j] *= mask[lo + j]: the recurrent dropout's gradient through h_{t-1} * mask."""
    for j in range(rows.shape[0]):
        r, m_row = rows[j], mask[lo + j]
        for k in range(r.shape[0]):
            r[k] *= m_row[k]


@njit(**_ROWS)
def _recurrent_input(states, t, lo, n, dropout, rec_mask, dropped):
    """What step t's recurrent product reads for rows lo:lo+n: h_{t-1}, or h_{t-1} * mask
    written into `dropped`."""
    h_prev = states[t, lo:lo + n]
    if not dropout:
        return h_prev
    h_in = dropped[_slot(dropped, t), lo:lo + n]
    for j in range(n):
        src, m_row, dst = h_prev[j], rec_mask[lo + j], h_in[j]
        for k in range(dst.shape[0]):
            dst[k] = src[k] * m_row[k]
    return h_in


@njit
def _recurrent_operand(states, dropped, dropout):
    """(T*B, S): every step's operand of the recurrent product, for the dW_hh GEMM."""
    T, B, S = dropped.shape[0], states.shape[1], states.shape[2]
    if dropout:
        return dropped.reshape(T * B, S)
    T = states.shape[0] - 1
    return states[:T].reshape(T * B, S)


# -- Elman and Jordan ----------------------------------------------------------------
# Elman: h_t = act(x_proj_t + h_{t-1} @ W_hh.T), the state is h.
# Jordan: h_t = act(x_proj_t + y_{t-1} @ W_hh.T), y_t = act_o(h_t @ W_ho.T + b_ho), the
# state is y. For the plain Elman cell `hidden` is states[1:] itself, so h lands in the
# state directly; with zoneout `hidden` keeps h~_t (its activation's gradient reads it)
# and the state takes the blend.

@njit(**_ROWS)
def _simple_forward_rows(lo, hi, active, x_proj, states, hidden, w_hh, w_hh_t, w_ho, b_ho, act, out_act, jordan,
                         zoneout, zone, dropout, rec_mask, dropped, scalars):
    H = hidden.shape[2]
    no_shift = np.zeros(H, hidden.dtype)
    for t in range(x_proj.shape[0]):
        n = _running(active, t, lo, hi)
        if n <= 0:
            break  # rows are sorted by length: this chunk has no later steps
        pre = x_proj[t, lo:lo + n]
        h_in = _recurrent_input(states, t, lo, n, dropout, rec_mask, dropped)
        # pre += s_{t-1} @ W_hh.T    (n, H) += (n, S) x (S, H)
        _step_product_t(h_in, w_hh, w_hh_t, pre, True, scalars)
        h = hidden[_slot(hidden, t), lo:lo + n]
        _activate_rows(act, pre, no_shift, h)
        if jordan:
            y = states[t + 1, lo:lo + n]
            # y = h @ W_ho.T    (n, O) = (n, H) x (H, O)
            gemm(h, False, w_ho, True, y, False, scalars)
            _activate_rows(out_act, y, b_ho, y)
        elif zoneout:
            _zoneout_rows(states[t, lo:lo + n], h, zone, t, lo, states[t + 1, lo:lo + n])


@njit(**_ENTRY)
def simple_forward(x, w_ih, bias, w_hh, w_ho, b_ho, active, chunk, act, out_act, jordan, x_proj, states, hidden,
                   zoneout, zone, dropout, rec_mask, dropped):
    _project_input(x, w_ih, bias, x_proj, _scalars_like(x))
    B = x.shape[1]
    w_hh_t = _transposed_for_small(w_hh, min(chunk, B))
    if (B + chunk - 1) // chunk == 1:
        # one chunk: run it on the calling thread, not on a woken worker
        _simple_forward_rows(0, B, active, x_proj, states, hidden, w_hh, w_hh_t, w_ho, b_ho, act, out_act,
                             jordan, zoneout, zone, dropout, rec_mask, dropped, _scalars_like(x))
    else:
        for c in prange((B + chunk - 1) // chunk):
            lo, hi = _chunk_bounds(chunk, c, B)
            _simple_forward_rows(lo, hi, active, x_proj, states, hidden, w_hh, w_hh_t, w_ho, b_ho, act, out_act,
                                 jordan, zoneout, zone, dropout, rec_mask, dropped, _scalars_like(x))


@njit(**_ROWS)
def _simple_backward_rows(lo, hi, active, dy, states, hidden, w_hh, w_ho, act, out_act, jordan, zoneout, zone,
                          dropout, rec_mask, d_pre, d_out, d_hidden, d_state, scalars):
    H = hidden.shape[2]
    O = states.shape[2]
    carry = np.empty((hi - lo if zoneout else 0, O), d_state.dtype)
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
            if zoneout:
                _zoneout_back_rows(dp, zone, t, lo, carry[:n])
        _times_activation_grad(act, h, dp)
        # d s_{t-1} = d_pre @ W_hh    (n, S) = (n, H) x (H, S)
        _step_product(dp, w_hh, d_state[lo:lo + n], False, scalars)
        if dropout:
            _scale_rows(d_state[lo:lo + n], rec_mask, lo)
        if zoneout:
            _add_rows(carry[:n], d_state[lo:lo + n])


@njit(**_ENTRY)
def simple_backward(x, w_ih, w_hh, w_ho, active, chunk, act, out_act, jordan, states, hidden, zoneout, zone,
                    dropout, rec_mask, dropped, dy, d_state, d_pre, d_out, d_hidden, bias_sums, bias_ho_sums, last,
                    dx, grad_w_ih, grad_w_hh, grad_w_ho, grad_b, grad_b_ho):
    T, B, _ = x.shape
    if (B + chunk - 1) // chunk == 1:
        # one chunk: run it on the calling thread, not on a woken worker
        _simple_backward_rows(0, B, active, dy, states, hidden, w_hh, w_ho, act, out_act, jordan, zoneout, zone,
                              dropout, rec_mask, d_pre, d_out, d_hidden, d_state, _scalars_like(x))
    else:
        for c in prange((B + chunk - 1) // chunk):
            lo, hi = _chunk_bounds(chunk, c, B)
            _simple_backward_rows(lo, hi, active, dy, states, hidden, w_hh, w_ho, act, out_act, jordan, zoneout,
                                  zone, dropout, rec_mask, d_pre, d_out, d_hidden, d_state, _scalars_like(x))
    scalars = _scalars_like(x)
    _input_gradients(d_pre, x, w_ih, dx, grad_w_ih, scalars)
    H = d_pre.shape[2]
    d_rows = d_pre.reshape(T * B, H)
    _bias_sums(d_rows, B, bias_sums)
    # dW_hh += d_pre.T @ s_{t-1}    (H, S) += (H, T*B) x (T*B, S)    (s_{t-1} * mask with dropout)
    _weight_gradient(d_rows, _recurrent_operand(states, dropped, dropout), B, grad_w_hh, scalars)
    if jordan:
        S = states.shape[2]
        d_out_rows = d_out.reshape(T * B, S)
        # dW_ho += d_out.T @ h    (O, H) += (O, T*B) x (T*B, H)
        _weight_gradient(d_out_rows, hidden.reshape(T * B, H), B, grad_w_ho, scalars)
        _bias_sums(d_out_rows, B, bias_ho_sums)
    if last:
        _round_into(bias_sums, grad_b)
        _round_into(bias_ho_sums, grad_b_ho)


# -- LSTM ------------------------------------------------------------------------------
# Gate columns i, f, g, o (i, g, o when coupled, f = 1 - i). Peepholes: i and f see
# c_{t-1}, o sees c_t. With a projection, h_t = m_t @ W_hr.T where m_t = o * tanh(c_t);
# without, h_t = m_t is written straight into the state.
# Layer norm: the gates read LN(x_t @ W_ih.T) + LN(h_{t-1} @ W_hh.T) + b_ih + b_hh (the
# input projection then holds no bias) and m_t = o * tanh(LN(c_t)); `xhat_ih`,
# `xhat_hh` and `chat` keep the normalised values, `rstd` the three 1 / sqrt(var + eps).
# Zoneout of c: the cell writes c~_t into `c_cand` (kept per step in training, where the
# backward reads it as the cell's own c_t) and the carried c_t is the blend; of h: the
# state is blended in place, h~_t not being needed later.

# The element-wise passes below are runs of short loops over one row's contiguous gate
# blocks, each loop writing one array. LLVM vectorises a loop only after proving, or
# checking at run time, that its stores cannot overlap its other operands; it stops
# checking past a handful of array pairs, and a check between c_{t-1} and c_t held in
# one buffer always fails. One store target per loop keeps the checks few, and
# inference alternates two cell slots, so that c_{t-1} and c_t are never one array.

@njit(**_ROWS)
def _lstm_cell_forward(row, c_prev, c_new, out, p_i, p_f, p_o, coupled, layer_norm, g_c, b_c, chat):
    """One row of one step: the gate pre-activations in `row` become the activated
    gates; c_new = f * c_prev + i * g; out = o * tanh(c_new), or o * tanh(LN(c_new))
    with `chat` receiving the normalised c_new. Returns LN's 1 / sqrt(var + eps) (1
    without)."""
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
    if not layer_norm:
        for k in range(H):
            out[k] = gate_o[k] * tanh(c_new[k])
        return one
    # LN(c_t) waits in out's place
    rstd = _layer_norm_row(c_new, g_c, b_c, chat, out)
    for k in range(H):
        out[k] = gate_o[k] * tanh(out[k])
    return rstd


@njit(**_ROWS)
def _lstm_forward_rows(lo, hi, active, x_proj, states, cells, m, w_hh, w_hh_t, w_hr, w_ci, w_cf, w_co, peephole,
                       coupled, projected, bias, layer_norm, g_ih, g_hh, g_c, b_c, xhat_ih, xhat_hh, chat, rstd, hh,
                       zoneout_h, zone_h, zoneout_c, zone_c, c_cand, dropout, rec_mask, dropped, scalars):
    H = cells.shape[2]
    # without peepholes, zero weights: adding 0 * c (c is finite) leaves the sums as they
    # are, and the inner loops have no branch on the variant
    p_i, p_f, p_o = _peephole_weights(w_ci, w_cf, w_co, peephole, coupled, H)
    no_shift = np.zeros(hh.shape[1], hh.dtype)
    # c_t sits at t in training (T+1 slots) and at t % 2 in inference (2 slots)
    slots = cells.shape[0]
    for t in range(x_proj.shape[0]):
        n = _running(active, t, lo, hi)
        if n <= 0:
            break
        gates = x_proj[t, lo:lo + n]
        h_in = _recurrent_input(states, t, lo, n, dropout, rec_mask, dropped)
        s = _slot(rstd, t)
        if layer_norm:
            rec = hh[lo:lo + n]
            # rec = h_{t-1} @ W_hh.T    (n, G*H) = (n, S) x (S, G*H)
            _step_product_t(h_in, w_hh, w_hh_t, rec, False, scalars)
            for j in range(n):
                rstd[s, lo + j, 0] = _layer_norm_row(gates[j], g_ih, bias, xhat_ih[s, lo + j], gates[j])
                rstd[s, lo + j, 1] = _layer_norm_row(rec[j], g_hh, no_shift, xhat_hh[s, lo + j], rec[j])
            _add_rows(rec, gates)
        else:
            # gates += h_{t-1} @ W_hh.T    (n, G*H) += (n, S) x (S, G*H)
            _step_product_t(h_in, w_hh, w_hh_t, gates, True, scalars)
        c_prev = cells[t % slots, lo:lo + n]
        c_new = cells[(t + 1) % slots, lo:lo + n]
        c_own = c_cand[_slot(c_cand, t), lo:lo + n] if zoneout_c else c_new
        out = m[_slot(m, t), lo:lo + n] if projected else states[t + 1, lo:lo + n]
        for j in range(n):
            rstd[s, lo + j, 2] = _lstm_cell_forward(gates[j], c_prev[j], c_own[j], out[j], p_i, p_f, p_o, coupled,
                                                    layer_norm, g_c, b_c, chat[_slot(chat, t), lo + j])
        if projected:
            # h = m @ W_hr.T    (n, P) = (n, H) x (H, P)
            gemm(out, False, w_hr, True, states[t + 1, lo:lo + n], False, scalars)
        if zoneout_c:
            _zoneout_rows(c_prev, c_own, zone_c, t, lo, c_new)
        if zoneout_h:
            _zoneout_rows(states[t, lo:lo + n], states[t + 1, lo:lo + n], zone_h, t, lo, states[t + 1, lo:lo + n])


@njit(inline="always")
def _peephole_weights(w_ci, w_cf, w_co, peephole, coupled, H):
    """The peephole weights of i, f, o, zeros where the variant has none."""
    none = np.zeros(H, w_ci.dtype)
    if not peephole:
        return none, none, none
    return w_ci, none if coupled else w_cf, w_co


@njit(**_ENTRY)
def lstm_forward(x, w_ih, bias, w_hh, w_hr, w_ci, w_cf, w_co, active, chunk, peephole, coupled, projected,
                 x_proj, states, cells, m, layer_norm, g_ih, g_hh, g_c, b_c, xhat_ih, xhat_hh, chat, rstd, hh,
                 zoneout_h, zone_h, zoneout_c, zone_c, c_cand, dropout, rec_mask, dropped):
    # with layer norm the biases come after the normalisation, not in the projection
    _project_input(x, w_ih, np.zeros_like(bias) if layer_norm else bias, x_proj, _scalars_like(x))
    B = x.shape[1]
    w_hh_t = _transposed_for_small(w_hh, min(chunk, B))
    if (B + chunk - 1) // chunk == 1:
        # one chunk: run it on the calling thread, not on a woken worker
        _lstm_forward_rows(0, B, active, x_proj, states, cells, m, w_hh, w_hh_t, w_hr, w_ci, w_cf, w_co, peephole,
                           coupled, projected, bias, layer_norm, g_ih, g_hh, g_c, b_c, xhat_ih, xhat_hh, chat, rstd,
                           hh, zoneout_h, zone_h, zoneout_c, zone_c, c_cand, dropout, rec_mask, dropped,
                           _scalars_like(x))
    else:
        for c in prange((B + chunk - 1) // chunk):
            lo, hi = _chunk_bounds(chunk, c, B)
            _lstm_forward_rows(lo, hi, active, x_proj, states, cells, m, w_hh, w_hh_t, w_hr, w_ci, w_cf, w_co,
                               peephole, coupled, projected, bias, layer_norm, g_ih, g_hh, g_c, b_c, xhat_ih, xhat_hh,
                               chat, rstd, hh, zoneout_h, zone_h, zoneout_c, zone_c, c_cand, dropout, rec_mask,
                               dropped, _scalars_like(x))


@njit(**_ROWS)
def _lstm_cell_backward(gates, c_prev, c_now, dm, d_cell, d_row, p_i, p_f, p_o, coupled, layer_norm, g_c, b_c,
                        chat, rstd_c, c_sums):
    """One row of one step back: dm is the gradient of m_t, d_cell holds that of c_t
    from step t+1 and leaves with that of c_{t-1}; d_row receives the gradients of the
    gate pre-activations. With layer norm, c_sums[0] and [1] gather the gradients of
    LN(c)'s gain and shift."""
    one = c_prev.dtype.type(1)
    H = c_prev.shape[0]
    g_col = H if coupled else 2 * H
    i = gates[:H]
    g = gates[g_col:g_col + H]
    o = gates[g_col + H:g_col + 2 * H]
    da_i = d_row[:H]
    da_g = d_row[g_col:g_col + H]
    da_o = d_row[g_col + H:g_col + 2 * H]
    if layer_norm:
        # tanh(LN(c_t)) waits in da_o's place, the gradient of LN(c_t) in da_g's
        for k in range(H):
            da_o[k] = tanh(g_c[k] * chat[k] + b_c[k])
        for k in range(H):
            da_g[k] = dm[k] * o[k] * (one - da_o[k] * da_o[k])
        _add_gain_sums(da_g, chat, c_sums[0], c_sums[1])
        _layer_norm_back_row(da_g, g_c, chat, rstd_c, da_g)
        for k in range(H):
            d_cell[k] = d_cell[k] + da_g[k] + dm[k] * da_o[k] * o[k] * (one - o[k]) * p_o[k]
    else:
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
                        projected, layer_norm, g_ih, g_hh, g_c, b_c, xhat_ih, xhat_hh, chat, rstd, zoneout_h, zone_h,
                        zoneout_c, zone_c, c_cand, dropout, rec_mask, d_gates, d_hh, d_h, d_m, d_state, d_cell,
                        vector_sums, gate_sums):
    H = cells.shape[2]
    P = dy.shape[2]
    g_col = H if coupled else 2 * H
    o_col = g_col + H
    scalars = _scalars_like(dy)
    p_i, p_f, p_o = _peephole_weights(w_ci, w_cf, w_co, peephole, coupled, H)
    d_m_direct = np.empty((hi - lo if not projected else 0, H), cells.dtype)
    carry_h = np.empty((hi - lo if zoneout_h else 0, P), cells.dtype)
    carry_c = np.empty((hi - lo if zoneout_c else 0, H), cells.dtype)
    for t in range(dy.shape[0] - 1, -1, -1):
        n = _running(active, t, lo, hi)
        if n <= 0:
            continue
        if projected:
            dh = d_h[t, lo:lo + n]
            for j in range(n):
                for k in range(P):
                    dh[j, k] = dy[t, lo + j, k] + d_state[lo + j, k]
            if zoneout_h:
                _zoneout_back_rows(dh, zone_h, t, lo, carry_h[:n])
            # dm = dh @ W_hr    (n, H) = (n, P) x (P, H)
            gemm(dh, False, w_hr, False, d_m[lo:lo + n], False, scalars)
        gates = gates_seq[t, lo:lo + n]
        c_prev = cells[t, lo:lo + n]
        c_now = c_cand[t, lo:lo + n] if zoneout_c else cells[t + 1, lo:lo + n]
        s = _slot(rstd, t)  # the layer norm's buffers: per step with layer norm, one stand-in slot without
        da = d_gates[t, lo:lo + n]
        if not projected:
            # dm: the state gradient, in rows of its own so that the element-wise pass reads one array
            dm_rows = d_m_direct[:n]
            for j in range(n):
                for k in range(H):
                    dm_rows[j, k] = dy[t, lo + j, k] + d_state[lo + j, k]
            if zoneout_h:
                _zoneout_back_rows(dm_rows, zone_h, t, lo, carry_h[:n])
        else:
            dm_rows = d_m[lo:lo + n]
        if zoneout_c:
            _zoneout_back_rows(d_cell[lo:lo + n], zone_c, t, lo, carry_c[:n])
        for j in range(n):
            _lstm_cell_backward(gates[j], c_prev[j], c_now[j], dm_rows[j], d_cell[lo + j], da[j], p_i, p_f, p_o,
                                coupled, layer_norm, g_c, b_c, chat[s, lo + j], rstd[s, lo + j, 2], vector_sums[3:])
        if peephole:
            # kept out of the fused loop: float64 sums the variants without peepholes skip
            for j in range(n):
                for k in range(H):
                    vector_sums[2, k] += da[j, o_col + k] * c_now[j, k]
                    if not coupled:
                        vector_sums[1, k] += da[j, H + k] * c_prev[j, k]
                    vector_sums[0, k] += da[j, k] * c_prev[j, k]
        rec = da
        if layer_norm:
            # the biases' and gains' gradients, then da through each LN: d_hh for the
            # recurrent product, da itself becomes the input projection's
            rec = d_hh[t, lo:lo + n]
            for j in range(n):
                _add_gain_sums(da[j], xhat_ih[t, lo + j], gate_sums[1], gate_sums[0])
                xhat = xhat_hh[t, lo + j]
                for k in range(da.shape[1]):
                    gate_sums[2, k] += da[j, k] * xhat[k]
                _layer_norm_back_row(da[j], g_hh, xhat, rstd[t, lo + j, 1], rec[j])
                _layer_norm_back_row(da[j], g_ih, xhat_ih[t, lo + j], rstd[t, lo + j, 0], da[j])
        # dh_{t-1} = d_gates @ W_hh    (n, S) = (n, G*H) x (G*H, S)
        _step_product(rec, w_hh, d_state[lo:lo + n], False, scalars)
        if dropout:
            _scale_rows(d_state[lo:lo + n], rec_mask, lo)
        if zoneout_h:
            _add_rows(carry_h[:n], d_state[lo:lo + n])
        if zoneout_c:
            _add_rows(carry_c[:n], d_cell[lo:lo + n])


@njit(**_ENTRY)
def lstm_backward(x, w_ih, w_hh, w_hr, w_ci, w_cf, w_co, active, chunk, peephole, coupled, projected, x_proj,
                  states, cells, m, layer_norm, g_ih, g_hh, g_c, b_c, xhat_ih, xhat_hh, chat, rstd, zoneout_h, zone_h,
                  zoneout_c, zone_c, c_cand, dropout, rec_mask, dropped, dy, d_state, d_cell, d_gates, d_hh, d_h, d_m,
                  vector_sums, gate_sums, bias_sums, last, dx, grad_w_ih, grad_w_hh, grad_w_hr, grad_b, grad_vectors,
                  grad_gains):
    T, B, _ = x.shape
    if (B + chunk - 1) // chunk == 1:
        # one chunk: run it on the calling thread, not on a woken worker
        _lstm_backward_rows(0, B, active, dy, x_proj, cells, w_hh, w_hr, w_ci, w_cf, w_co, peephole, coupled,
                            projected, layer_norm, g_ih, g_hh, g_c, b_c, xhat_ih, xhat_hh, chat, rstd, zoneout_h,
                            zone_h, zoneout_c, zone_c, c_cand, dropout, rec_mask, d_gates, d_hh, d_h, d_m, d_state,
                            d_cell, vector_sums[0], gate_sums[0])
    else:
        for c in prange((B + chunk - 1) // chunk):
            lo, hi = _chunk_bounds(chunk, c, B)
            _lstm_backward_rows(lo, hi, active, dy, x_proj, cells, w_hh, w_hr, w_ci, w_cf, w_co, peephole, coupled,
                                projected, layer_norm, g_ih, g_hh, g_c, b_c, xhat_ih, xhat_hh, chat, rstd, zoneout_h,
                                zone_h, zoneout_c, zone_c, c_cand, dropout, rec_mask, d_gates, d_hh, d_h, d_m,
                                d_state, d_cell, vector_sums[c], gate_sums[c])
    scalars = _scalars_like(x)
    S, GH, H = states.shape[2], d_gates.shape[2], cells.shape[2]
    if not layer_norm:
        # with layer norm the bias gradient came per chunk, before d_gates became the projection's
        _bias_sums(d_gates.reshape(T * B, GH), B, bias_sums)
    _input_gradients(d_gates, x, w_ih, dx, grad_w_ih, scalars)
    rec = d_hh if layer_norm else d_gates
    # dW_hh += d_gates.T @ h_{t-1}    (G*H, S) += (G*H, T*B) x (T*B, S)    (h_{t-1} * mask with dropout)
    _weight_gradient(rec.reshape(T * B, GH), _recurrent_operand(states, dropped, dropout), B, grad_w_hh, scalars)
    if projected:
        # dW_hr += dh.T @ m    (P, H) += (P, T*B) x (T*B, H)
        _weight_gradient(d_h.reshape(T * B, S), m.reshape(T * B, H), B, grad_w_hr, scalars)
    if not last:
        return
    if layer_norm:
        _chunk_totals(gate_sums, 0, grad_b)
        _chunk_totals(gate_sums, 1, grad_gains[0])
        _chunk_totals(gate_sums, 2, grad_gains[1])
    else:
        _round_into(bias_sums, grad_b)
    # per-chunk peephole and LN(c) sums, added in chunk order
    for row in range(grad_vectors.shape[0]):
        _chunk_totals(vector_sums, row, grad_vectors[row])


# -- GRU -------------------------------------------------------------------------------
# Gate columns r, z, n. reset_after: n = tanh(x_n + r * (h_{t-1} @ W_hn.T + b_hn)); the
# recurrent product goes to `hh` whole (its n block must stay apart from x_n) and `aux`
# keeps h_{t-1} @ W_hn.T + b_hn. Cho et al.: n = tanh(x_n + (r * h_{t-1}) @ W_hn.T),
# b_hn folded into x_proj; the r, z and n products are added into x_proj in two GEMMs
# and `aux` keeps r * h_{t-1}, the operand of the second.
# Layer norm (reset_after only): x_proj holds LN(x_t @ W_ih.T) plus the folded biases
# and hh LN(h_{t-1} @ W_hh.T), before the cell reads them as it reads the products.
# Zoneout blends the state in place; recurrent dropout feeds h_{t-1} * mask to the
# products (Cho et al.: r * (h_{t-1} * mask) to the second), h_{t-1} to z * h_{t-1}.

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
def _gru_forward_rows(lo, hi, active, x_proj, states, aux, hh, w_hh, w_hh_t, bias, b_hn, reset_after, layer_norm,
                      g_ih, g_hh, xhat_ih, xhat_hh, rstd, zoneout, zone, dropout, rec_mask, dropped, scalars):
    one = scalars[1]  # in the arrays' dtype: float32 math stays float32
    H = states.shape[2]
    no_shift = np.zeros(hh.shape[1], hh.dtype)
    # one store target per loop, as in the LSTM passes (see _lstm_cell_forward)
    for t in range(x_proj.shape[0]):
        n = _running(active, t, lo, hi)
        if n <= 0:
            break
        gates = x_proj[t, lo:lo + n]
        h_prev = states[t, lo:lo + n]
        h_in = _recurrent_input(states, t, lo, n, dropout, rec_mask, dropped)
        h = states[t + 1, lo:lo + n]
        kept = aux[_slot(aux, t), lo:lo + n]
        if reset_after:
            rec = hh[lo:lo + n]
            # hh = h_{t-1} @ W_hh.T    (n, 3H) = (n, H) x (H, 3H)
            _step_product_t(h_in, w_hh, w_hh_t, rec, False, scalars)
            if layer_norm:
                s = _slot(rstd, t)
                for j in range(n):
                    rstd[s, lo + j, 0] = _layer_norm_row(gates[j], g_ih, bias, xhat_ih[s, lo + j], gates[j])
                    rstd[s, lo + j, 1] = _layer_norm_row(rec[j], g_hh, no_shift, xhat_hh[s, lo + j], rec[j])
            for j in range(n):
                _gru_cell_reset_after(gates[j], rec[j], b_hn, h_prev[j], kept[j], h[j])
        else:
            # gates[:, :2H] += h_{t-1} @ W_hh[:2H].T    (n, 2H) += (n, H) x (H, 2H)
            _step_product_t(h_in, w_hh[:2 * H], w_hh_t[:, :2 * H], gates[:, :2 * H], True, scalars)
            for j in range(n):
                r_z = gates[j, :2 * H]
                for k in range(2 * H):
                    r_z[k] = sigmoid(r_z[k])
                r, kept_row, h_in_row = gates[j, :H], kept[j], h_in[j]
                for k in range(H):
                    kept_row[k] = r[k] * h_in_row[k]
            # gates[:, 2H:] += (r * h_{t-1}) @ W_hh[2H:].T    (n, H) += (n, H) x (H, H)
            _step_product_t(kept, w_hh[2 * H:], w_hh_t[:, 2 * H:], gates[:, 2 * H:], True, scalars)
            for j in range(n):
                z, new, h_row, h_prev_row = gates[j, H:2 * H], gates[j, 2 * H:], h[j], h_prev[j]
                for k in range(H):
                    new[k] = tanh(new[k])
                for k in range(H):
                    h_row[k] = (one - z[k]) * new[k] + z[k] * h_prev_row[k]
        if zoneout:
            _zoneout_rows(h_prev, h, zone, t, lo, h)


@njit(**_ENTRY)
def gru_forward(x, w_ih, bias, w_hh, b_hn, active, chunk, reset_after, x_proj, states, aux, hh, layer_norm, g_ih,
                g_hh, xhat_ih, xhat_hh, rstd, zoneout, zone, dropout, rec_mask, dropped):
    # with layer norm the biases come after the normalisation, not in the projection
    _project_input(x, w_ih, np.zeros_like(bias) if layer_norm else bias, x_proj, _scalars_like(x))
    B = x.shape[1]
    w_hh_t = _transposed_for_small(w_hh, min(chunk, B))
    if (B + chunk - 1) // chunk == 1:
        # one chunk: run it on the calling thread, not on a woken worker
        _gru_forward_rows(0, B, active, x_proj, states, aux, hh, w_hh, w_hh_t, bias, b_hn, reset_after, layer_norm,
                          g_ih, g_hh, xhat_ih, xhat_hh, rstd, zoneout, zone, dropout, rec_mask, dropped,
                          _scalars_like(x))
    else:
        for c in prange((B + chunk - 1) // chunk):
            lo, hi = _chunk_bounds(chunk, c, B)
            _gru_forward_rows(lo, hi, active, x_proj, states, aux, hh, w_hh, w_hh_t, bias, b_hn, reset_after,
                              layer_norm, g_ih, g_hh, xhat_ih, xhat_hh, rstd, zoneout, zone, dropout, rec_mask,
                              dropped, _scalars_like(x))


@njit(**_ROWS)
def _gru_backward_rows(lo, hi, active, dy, gates_seq, states, aux, w_hh, reset_after, layer_norm, g_ih, g_hh,
                       xhat_ih, xhat_hh, rstd, zoneout, zone, dropout, rec_mask, dropped, d_x_proj, d_hh, d_rh,
                       d_state, d_direct, gate_sums, scalars):
    one = scalars[1]  # in the arrays' dtype: float32 math stays float32
    H = states.shape[2]
    carry = np.empty((hi - lo if zoneout else 0, H), states.dtype)
    for t in range(dy.shape[0] - 1, -1, -1):
        n = _running(active, t, lo, hi)
        if n <= 0:
            continue
        gates = gates_seq[t, lo:lo + n]
        h_prev = states[t, lo:lo + n]
        h_in = dropped[t, lo:lo + n] if dropout else h_prev
        kept = aux[t, lo:lo + n]
        dxp = d_x_proj[t, lo:lo + n]
        # the state gradient arrives by three paths: the output, the recurrent product
        # of step t+1 and the direct z * h_{t-1} term of step t+1 (the last kept in
        # d_direct, which holds the sum until it takes this step's); zoneout takes its
        # share w * dh_t off to `carry`, the direct path of the blend
        for j in range(n):
            dy_row, d_state_row, dh = dy[t, lo + j], d_state[lo + j], d_direct[lo + j]
            for k in range(H):
                dh[k] = dy_row[k] + d_state_row[k] + dh[k]
        if zoneout:
            _zoneout_back_rows(d_direct[lo:lo + n], zone, t, lo, carry[:n])
        for j in range(n):
            r, z, new = gates[j, :H], gates[j, H:2 * H], gates[j, 2 * H:]
            da_r, da_z, da_n = dxp[j, :H], dxp[j, H:2 * H], dxp[j, 2 * H:]
            dh, h_prev_row = d_direct[lo + j], h_prev[j]
            for k in range(H):
                da_n[k] = dh[k] * (one - z[k]) * (one - new[k] * new[k])
            for k in range(H):
                da_z[k] = dh[k] * (h_prev_row[k] - new[k]) * z[k] * (one - z[k])
            for k in range(H):
                dh[k] = dh[k] * z[k]
            if zoneout:
                carry_row = carry[j]
                for k in range(H):
                    dh[k] += carry_row[k]
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
            if layer_norm:
                # the biases' and gains' gradients, then each side back through its LN
                s = _slot(rstd, t)
                for j in range(n):
                    d_rec = d_hh[t, lo + j]
                    _add_gain_sums(dxp[j], xhat_ih[s, lo + j], gate_sums[2], gate_sums[0])
                    _add_gain_sums(d_rec, xhat_hh[s, lo + j], gate_sums[3], gate_sums[1])
                    _layer_norm_back_row(dxp[j], g_ih, xhat_ih[s, lo + j], rstd[s, lo + j, 0], dxp[j])
                    _layer_norm_back_row(d_rec, g_hh, xhat_hh[s, lo + j], rstd[s, lo + j, 1], d_rec)
            # dh_{t-1} = d_hh @ W_hh    (n, H) = (n, 3H) x (3H, H)
            _step_product(d_hh[t, lo:lo + n], w_hh, d_state[lo:lo + n], False, scalars)
        else:
            d_kept = d_rh[lo:lo + n]
            # d(r * h_{t-1}) = da_n @ W_hn    (n, H) = (n, H) x (H, H)
            _step_product(dxp[:, 2 * H:], w_hh[2 * H:], d_kept, False, scalars)
            for j in range(n):
                r, da_r, d_kept_row, h_in_row = gates[j, :H], dxp[j, :H], d_kept[j], h_in[j]
                d_direct_row = d_direct[lo + j]
                for k in range(H):
                    da_r[k] = d_kept_row[k] * h_in_row[k] * r[k] * (one - r[k])
                if dropout:  # r * (h_{t-1} * mask): this path's share of dh_{t-1} is scaled too
                    m_row = rec_mask[lo + j]
                    for k in range(H):
                        d_direct_row[k] += d_kept_row[k] * r[k] * m_row[k]
                else:
                    for k in range(H):
                        d_direct_row[k] += d_kept_row[k] * r[k]
            # dh_{t-1} += [da_r, da_z] @ W_hh[:2H]    (n, H) = (n, 2H) x (2H, H)
            _step_product(dxp[:, :2 * H], w_hh[:2 * H], d_state[lo:lo + n], False, scalars)
        if dropout:
            _scale_rows(d_state[lo:lo + n], rec_mask, lo)


@njit(**_ENTRY)
def gru_backward(x, w_ih, w_hh, active, chunk, reset_after, x_proj, states, aux, layer_norm, g_ih, g_hh, xhat_ih,
                 xhat_hh, rstd, zoneout, zone, dropout, rec_mask, dropped, dy, d_state, d_direct, d_x_proj, d_hh,
                 d_rh, gate_sums, bias_sums, last, dx, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh, grad_gains):
    T, B, _ = x.shape
    if (B + chunk - 1) // chunk == 1:
        # one chunk: run it on the calling thread, not on a woken worker
        _gru_backward_rows(0, B, active, dy, x_proj, states, aux, w_hh, reset_after, layer_norm, g_ih, g_hh,
                           xhat_ih, xhat_hh, rstd, zoneout, zone, dropout, rec_mask, dropped, d_x_proj, d_hh, d_rh,
                           d_state, d_direct, gate_sums[0], _scalars_like(x))
    else:
        for c in prange((B + chunk - 1) // chunk):
            lo, hi = _chunk_bounds(chunk, c, B)
            _gru_backward_rows(lo, hi, active, dy, x_proj, states, aux, w_hh, reset_after, layer_norm, g_ih, g_hh,
                               xhat_ih, xhat_hh, rstd, zoneout, zone, dropout, rec_mask, dropped, d_x_proj, d_hh,
                               d_rh, d_state, d_direct, gate_sums[c], _scalars_like(x))
    scalars = _scalars_like(x)
    H = states.shape[2]
    d_rows = d_x_proj.reshape(T * B, 3 * H)
    if not layer_norm:
        # with layer norm the biases' gradients came per chunk, before the LN backs rewrote d_x_proj and d_hh
        _bias_sums(d_rows, B, bias_sums[0])
    _input_gradients(d_x_proj, x, w_ih, dx, grad_w_ih, scalars)
    h_in = _recurrent_operand(states, dropped, dropout)
    if reset_after:
        d_rec = d_hh.reshape(T * B, 3 * H)
        # dW_hh += d_hh.T @ h_{t-1}    (3H, H) += (3H, T*B) x (T*B, H)    (h_{t-1} * mask with dropout)
        _weight_gradient(d_rec, h_in, B, grad_w_hh, scalars)
        if not layer_norm:
            _bias_sums(d_rec, B, bias_sums[1])
    else:
        # dW_hh[:2H] += [da_r, da_z].T @ h_{t-1}    (2H, H) += (2H, T*B) x (T*B, H)
        _weight_gradient(d_rows[:, :2 * H], h_in, B, grad_w_hh[:2 * H], scalars)
        # dW_hh[2H:] += da_n.T @ (r * h_{t-1})    (H, H) += (H, T*B) x (T*B, H)
        _weight_gradient(d_rows[:, 2 * H:], aux.reshape(T * B, H), B, grad_w_hh[2 * H:], scalars)
    if not last:
        return
    # the initial state's gradient: the recurrent and the direct path of step 0
    for b in range(B):
        for k in range(d_state.shape[1]):
            d_state[b, k] += d_direct[b, k]
    if layer_norm:
        _chunk_totals(gate_sums, 0, grad_b_ih)
        _chunk_totals(gate_sums, 1, grad_b_hh)
        _chunk_totals(gate_sums, 2, grad_gains[0])
        _chunk_totals(gate_sums, 3, grad_gains[1])
    else:
        _round_into(bias_sums[0], grad_b_ih)
        if reset_after:
            _round_into(bias_sums[1], grad_b_hh)
        else:
            grad_b_hh[:] = grad_b_ih  # b_hn sits beside x_n: every bias sees the same gradient
