# The sequence loops of one recurrent layer: BLAS for every product, the fused C cell
# kernels of csrc/ for everything element-wise, the whole time loop in one nogil call.
#
# Layout. All per-step arrays are "slot" arrays: the rows of step s are the `active[s]`
# rows starting at `step_row[s]`. Without lengths a step's slot block is the time index
# it visits times B (so x and dx are used in place, in either direction); with lengths
# the batch is sorted by length, descending, and the blocks are packed one after the
# other (PyTorch's PackedSequence order), so the rows active at step s are always the
# first active[s] rows of the batch and the state of step s-1 feeds step s as it lies.
# The backend module (backend.py) builds the schedule, sorts and gathers, allocates
# every buffer once per call, and hands over one plan per direction: a `Plan`, whose one
# description is _PLAN below, each field checked as it is set; this module only
# computes.
cimport numpy as cnp
import numpy as np
from cython cimport floating
from cython.parallel cimport parallel, prange
from cpython.number cimport PyNumber_Index
from cpython.pyport cimport PY_SSIZE_T_MAX
from cpython.object cimport PyObject, PyObject_GenericGetAttr
from libc.math cimport isfinite
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy, memset


cnp.import_array()

cdef extern from "Python.h":
    # a plan's field lookups, without the reference counting of a Python call nor
    # PyDict_GetItem's saving and restoring of the error state; NULL when absent
    PyObject *PyDict_GetItemWithError(PyObject *mapping, PyObject *key) except? NULL

# A thread team's own size and barrier, for the time loop split by hidden units: the
# region is a plain parallel block (not a worksharing loop, where a barrier may not be),
# and each thread takes its share by the size of the team it actually got.
cdef extern from *:
    """
    #if defined(_OPENMP)
    #include <omp.h>
    static int rc_team_size(void) { return omp_get_num_threads(); }
    static int rc_team_member(void) { return omp_get_thread_num(); }
    static void rc_team_barrier(void) {
        #pragma omp barrier
    }
    #else
    static int rc_team_size(void) { return 1; }
    static int rc_team_member(void) { return 0; }
    static void rc_team_barrier(void) {}
    #endif
    """
    int rc_team_size() noexcept nogil
    int rc_team_member() noexcept nogil
    void rc_team_barrier() noexcept nogil

cdef extern from "rnncore_gemm.h" nogil:
    size_t rc_packed_size(size_t n, size_t k, size_t value_bytes)
    int rc_gemm_isa()
    int rc_gemm_set_isa(int isa)
    void rc_pack_weight_f(int n, int k, const float *W, size_t stride_n, size_t stride_k, float *packed)
    void rc_pack_weight_d(int n, int k, const double *W, size_t stride_n, size_t stride_k, double *packed)
    void rc_packed_gemm_f(int m, int n, int k, const float *A, size_t lda, const float *packed,
                          int accumulate, float *C, size_t ldc)
    void rc_packed_gemm_d(int m, int n, int k, const double *A, size_t lda, const double *packed,
                          int accumulate, double *C, size_t ldc)
    size_t rc_packed_groups_size(size_t groups, size_t n, size_t k, size_t value_bytes)
    size_t rc_gradient_scratch_size(size_t m, size_t n, size_t k, size_t value_bytes)
    void rc_gradient_product_f(int m, int n, int k, const float *A, size_t lda, const float *B, size_t ldb,
                               float *C, size_t ldc, float *scratch)
    void rc_gradient_product_d(int m, int n, int k, const double *A, size_t lda, const double *B, size_t ldb,
                               double *C, size_t ldc, double *scratch)
    int rc_gemm_vector_bytes(int isa)
    int rc_gate_block_units(size_t value_bytes)
    void rc_pack_weight_groups_f(int groups, int units, int n, int k, const float *W, size_t stride_n,
                                 size_t stride_k, float *packed)
    void rc_pack_weight_groups_d(int groups, int units, int n, int k, const double *W, size_t stride_n,
                                 size_t stride_k, double *packed)
    void rc_packed_gemm_from_f(int m, int n, int k, const float *A, size_t lda, const float *packed,
                               const float *source, size_t ld_source, float *C, size_t ldc)
    void rc_packed_gemm_from_d(int m, int n, int k, const double *A, size_t lda, const double *packed,
                               const double *source, size_t ld_source, double *C, size_t ldc)
    void rc_packed_gemm2_f(int m, int n, int k, const float *A, size_t lda, const float *packed, int k2,
                           const float *A2, size_t lda2, const float *packed2, const float *source,
                           size_t ld_source, float *C, size_t ldc)
    void rc_packed_gemm2_d(int m, int n, int k, const double *A, size_t lda, const double *packed, int k2,
                           const double *A2, size_t lda2, const double *packed2, const double *source,
                           size_t ld_source, double *C, size_t ldc)

cdef extern from "rnncore_cells.h" nogil:
    void rc_activate_rows_f(int n, int width, int act, const float *bias, float *io)
    void rc_activate_rows_d(int n, int width, int act, const double *bias, double *io)
    void rc_activation_grad_rows_f(size_t count, int act, const float *out, float *grad)
    void rc_activation_grad_rows_d(size_t count, int act, const double *out, double *grad)
    void rc_add_rows_f(int n, int width, const float *src, size_t ld_src, float *dst)
    void rc_add_rows_d(int n, int width, const double *src, size_t ld_src, double *dst)
    void rc_column_sums_f(size_t rows, int width, size_t ld, const float *m, float *sums, float *twin)
    void rc_column_sums_d(size_t rows, int width, size_t ld, const double *m, double *sums, double *twin)
    void rc_lstm_forward_f(int n, int H, int coupled, const float *w_ci, const float *w_cf,
                           const float *w_co, float *gates, size_t ld_gates, size_t gate_stride,
                           const float *c_prev, float *c, float *m, size_t ld_state)
    void rc_lstm_forward_d(int n, int H, int coupled, const double *w_ci, const double *w_cf,
                           const double *w_co, double *gates, size_t ld_gates, size_t gate_stride,
                           const double *c_prev, double *c, double *m, size_t ld_state)
    void rc_lstm_backward_f(int n, int H, int coupled, const float *w_ci, const float *w_cf,
                            const float *w_co, const float *gates, const float *c_prev, const float *c,
                            const float *dm, float *dc, float *dgates, float *g_ci, float *g_cf, float *g_co)
    void rc_lstm_backward_d(int n, int H, int coupled, const double *w_ci, const double *w_cf,
                            const double *w_co, const double *gates, const double *c_prev, const double *c,
                            const double *dm, double *dc, double *dgates, double *g_ci, double *g_cf,
                            double *g_co)
    void rc_gru_forward_after_f(int n, int H, const float *b_hn, float *gates, size_t ld_gates,
                                size_t gate_stride, const float *hh, size_t ld_hh, size_t hh_stride,
                                const float *h_prev, float *h, float *kept, size_t ld_state)
    void rc_gru_forward_after_d(int n, int H, const double *b_hn, double *gates, size_t ld_gates,
                                size_t gate_stride, const double *hh, size_t ld_hh, size_t hh_stride,
                                const double *h_prev, double *h, double *kept, size_t ld_state)
    void rc_gru_backward_after_f(int n, int H, const float *gates, const float *kept, const float *h_prev,
                                 float *dh, float *dgates_x, float *dgates_h)
    void rc_gru_backward_after_d(int n, int H, const double *gates, const double *kept, const double *h_prev,
                                 double *dh, double *dgates_x, double *dgates_h)
    void rc_gru_forward_before_rz_f(int n, int H, float *gates, const float *h_prev, float *kept)
    void rc_gru_forward_before_rz_d(int n, int H, double *gates, const double *h_prev, double *kept)
    void rc_gru_forward_before_n_f(int n, int H, float *gates, const float *h_prev, float *h)
    void rc_gru_forward_before_n_d(int n, int H, double *gates, const double *h_prev, double *h)
    void rc_gru_backward_before_zn_f(int n, int H, const float *gates, const float *h_prev, float *dh,
                                     float *dgates)
    void rc_gru_backward_before_zn_d(int n, int H, const double *gates, const double *h_prev, double *dh,
                                     double *dgates)
    void rc_gru_backward_before_r_f(int n, int H, const float *gates, const float *h_prev,
                                    const float *d_kept, float *dh, float *dgates)
    void rc_gru_backward_before_r_d(int n, int H, const double *gates, const double *h_prev,
                                    const double *d_kept, double *dh, double *dgates)
    void rc_layer_norm_rows_f(int n, int width, const float *src, size_t ld_src, const float *gain,
                              const float *bias, int accumulate, float *dst, size_t ld_dst, float *xhat,
                              float *stats)
    void rc_layer_norm_rows_d(int n, int width, const double *src, size_t ld_src, const double *gain,
                              const double *bias, int accumulate, double *dst, size_t ld_dst, double *xhat,
                              double *stats)
    void rc_layer_norm_pair_rows_f(int n, int width, const float *x, size_t ld_x, const float *gain_x,
                                   const float *bias, const float *h, size_t ld_h, const float *gain_h, float *dst,
                                   size_t ld_dst, float *xhat_x, float *stats_x, float *xhat_h, float *stats_h)
    void rc_layer_norm_pair_rows_d(int n, int width, const double *x, size_t ld_x, const double *gain_x,
                                   const double *bias, const double *h, size_t ld_h, const double *gain_h,
                                   double *dst, size_t ld_dst, double *xhat_x, double *stats_x, double *xhat_h,
                                   double *stats_h)
    void rc_layer_norm_backward_rows_f(int n, int width, const float *dout, size_t ld_dout, const float *gain,
                                       const float *xhat, const float *stats, float *dsrc, size_t ld_dsrc)
    void rc_layer_norm_backward_rows_d(int n, int width, const double *dout, size_t ld_dout, const double *gain,
                                       const double *xhat, const double *stats, double *dsrc, size_t ld_dsrc)
    void rc_layer_norm_sums_f(size_t rows, int width, const float *dx, const float *xhat_x, const float *dh,
                              const float *xhat_h, size_t ld, float *bias_x, float *gain_x, float *bias_h,
                              float *gain_h)
    void rc_layer_norm_sums_d(size_t rows, int width, const double *dx, const double *xhat_x, const double *dh,
                              const double *xhat_h, size_t ld, double *bias_x, double *gain_x, double *bias_h,
                              double *gain_h)
    void rc_zoneout_rows_f(int n, int width, const float *mask, size_t ld_mask, float p, const float *prev,
                           size_t ld_prev, const float *src, size_t ld_src, float *dst, size_t ld_dst)
    void rc_zoneout_rows_d(int n, int width, const double *mask, size_t ld_mask, double p, const double *prev,
                           size_t ld_prev, const double *src, size_t ld_src, double *dst, size_t ld_dst)
    void rc_zoneout_backward_rows_f(int n, int width, const float *mask, float p, float *d, float *direct)
    void rc_zoneout_backward_rows_d(int n, int width, const double *mask, double p, double *d, double *direct)
    void rc_mask_rows_f(int n, int width, const float *mask, const float *src, int accumulate, float *dst)
    void rc_mask_rows_d(int n, int width, const double *mask, const double *src, int accumulate, double *dst)
    void rc_lstm_forward_ln_f(int n, int H, int coupled, const float *w_ci, const float *w_cf, const float *w_co,
                              float *gates, size_t ld_gates, size_t gate_stride, const float *c_prev, float *c,
                              float *m, size_t ld_state, const float *g_c, const float *b_c, float *stats)
    void rc_lstm_forward_ln_d(int n, int H, int coupled, const double *w_ci, const double *w_cf,
                              const double *w_co, double *gates, size_t ld_gates, size_t gate_stride,
                              const double *c_prev, double *c, double *m, size_t ld_state, const double *g_c,
                              const double *b_c, double *stats)
    void rc_lstm_backward_ln_f(int n, int H, int coupled, const float *w_ci, const float *w_cf, const float *w_co,
                               const float *gates, const float *c_prev, const float *c, const float *g_c,
                               const float *b_c, const float *stats, const float *dm, float *dc, float *dgates,
                               float *dcl, float *g_ci, float *g_cf, float *g_co)
    void rc_lstm_backward_ln_d(int n, int H, int coupled, const double *w_ci, const double *w_cf,
                               const double *w_co, const double *gates, const double *c_prev, const double *c,
                               const double *g_c, const double *b_c, const double *stats, const double *dm,
                               double *dc, double *dgates, double *dcl, double *g_ci, double *g_cf, double *g_co)
    void rc_layer_norm_cell_grads_f(size_t rows, int H, const float *dcl, const float *c, size_t ld_c,
                                    const float *stats, float *g_gain, float *g_shift)
    void rc_layer_norm_cell_grads_d(size_t rows, int H, const double *dcl, const double *c, size_t ld_c,
                                    const double *stats, double *g_gain, double *g_shift)
    float rc_tanh_f(float x)
    double rc_tanh_d(double x)
    float rc_sigmoid_f(float x)
    double rc_sigmoid_d(double x)
    unsigned int rc_denormals_off()
    void rc_denormals_restore(unsigned int before)

DEF RNN = 0
DEF JORDAN = 1
DEF LSTM = 2
DEF GRU = 3


cdef struct Direction:
    # what to compute
    int kind, act, out_act, coupled, reset_after, training
    int B, S, H, GH, P, O          # P: width of the fed-back state; O: Jordan output
    int input_size                 # I (a bare `I` is a macro of complex.h)
    Py_ssize_t N                   # slot rows in all
    Py_ssize_t ring_rows           # rows of one slot of the inference c ring: B, or the whole
                                   # batch's for a slice of its rows (see _slice_rows)
    const Py_ssize_t *step_row     # (S,) first slot row of each step
    const int *active              # (S,) rows active at each step, non-increasing
    # parameters; NULL when the variant has none
    void *w_ih
    void *w_hh
    void *bias_x                   # folded into the input projection
    void *b_hn                     # GRU reset_after: stays inside r * (.)
    void *w_hr
    void *w_ci
    void *w_cf
    void *w_co
    void *w_ho
    void *b_ho
    void *w_ih_p                   # W_ih packed into the micro-kernel's panels (see pack_weights)
    void *w_hh_p                   # W_hh packed likewise (see pack_recurrent)
    void *w_hr_p                   # W_hr, W_ho likewise (NULL where the variant has none)
    void *w_ho_p
    void *w_hh_bp                  # backward: W_hh packed for dh = dgates @ W_hh (see pack_backward)
    void *w_hr_bp                  # W_hr for dm = dh @ W_hr, W_ho for dh = dypre @ W_ho
    void *w_ho_bp
    void *w_ih_bp                  # W_ih for dx = dgates_x @ W_ih
    void *g_pack                   # scratch of the weight gradients' products (gradient_product)
    # forward
    void *x                        # slot rows of the input, ldx apart
    Py_ssize_t ldx
    void *xp                       # (N, GH) input projection, then the activated gates
    void *hs                       # (N, P) the state after each step (Elman: same as xp)
    void *h0                       # (B, P), sorted
    void *c0                       # (B, H), sorted
    void *c_buf                    # LSTM c: (N, H) slots in training, a (2, B, H) ring otherwise
    void *m_buf                    # LSTM-proj o * tanh(c): (N, H) in training, else (B, H)
    void *kept                     # GRU: W_hn h + b_hn or r * h; (N, H) in training, else (B, H)
    void *hh                       # GRU reset_after: (B, 3H) recurrent product of a step
    # backward
    void *dy                       # slot rows of dL/dy, ldy apart
    Py_ssize_t dy_offset           # this direction's first column of dy (applied by _load)
    Py_ssize_t ldy
    void *dgx                      # (N, GH) gradient of the input-side pre-activations
    void *dgh                      # (N, GH) gradient of the recurrent product (== dgx but GRU-after)
    void *dh                       # (B, P) carried dL/dh, sorted; out: dL/dh0
    void *dc                       # (B, H) carried dL/dc, sorted; out: dL/dc0
    void *dm                       # (B, H) scratch: dL/dm (proj) or dL/d(r * h) (GRU-before)
    void *dhtot                    # (N, P) LSTM-proj: dL/dh of every step, for dW_hr
    void *dypre                    # (N, O) Jordan: gradient of the output pre-activation
    void *hprev                    # (N, P) the state each step started from
    void *g_w_ih
    void *g_w_hh
    void *g_b_ih
    void *g_b_hh
    void *g_w_hr
    void *g_ci
    void *g_cf
    void *g_co
    void *g_w_ho
    void *g_b_ho
    void *dx                       # slot rows of dL/dx, ldx_out apart; NULL: no dx
    Py_ssize_t ldx_out
    Py_ssize_t grad_chunk          # the steps of one chunk of the weight gradients' products
    int dx_accumulate
    # the regularised cells (a field is NULL or 0 where the spec has not its option)
    void *zoneout                  # (2,) the probabilities (p_h, p_c) of the expectation
    void *zmask_h                  # (N, P) slot rows of zoneout's 0/1 masks of h; NULL: p_h
    void *zmask_c                  # (N, H) likewise of c
    void *rmask                    # (B, P) sorted: the recurrent dropout's mask, 0 or 1/(1-p)
    void *hm                       # (B, P) scratch: h_prev * rmask, the recurrent product's input
    void *c_tilde                  # LSTM in training with zoned c: (N, H) the cell's own new c
    void *w_ih_ln                  # the gains of LN(W_ih x), LN(W_hh h) (G*H,), of LN(c) and its shift (H,)
    void *w_hh_ln
    void *w_c_ln
    void *b_c_ln
    void *ln_xh_ih                 # training: (N, GH) the normalised W_ih x, W_hh h of each slot row
    void *ln_xh_hh
    void *ln_st_ih                 # training: (N, 2) their (mean, rstd); of c (LSTM)
    void *ln_st_hh
    void *ln_st_c
    void *dz                       # backward (B, P), (B, H): zoneout's direct share of dh, dc
    void *dzc
    void *dr                       # backward (B, P): the gradient of the recurrent product's input
    void *dgr                      # backward (N, GH): of the raw recurrent product (dgh, but LN's)
    void *dcl                      # backward (N, H): of LN(c) (LSTM)
    void *g_ih_ln
    void *g_hh_ln
    void *g_c_ln
    void *g_bc_ln
    int layer_norm                 # LN of both gate products (and of c, LSTM)
    int zoned_h, zoned_c           # zoneout of h, of c (LSTM): by masks, or their expectation


# -- fused-type doors to the C kernels --------------------------------------------------

cdef inline void activate_rows(int n, int width, int act, const floating *bias, floating *io) noexcept nogil:
    if floating is float:
        rc_activate_rows_f(n, width, act, bias, io)
    else:
        rc_activate_rows_d(n, width, act, bias, io)


cdef inline void activation_grad_rows(size_t count, int act, const floating *out, floating *grad) noexcept nogil:
    if floating is float:
        rc_activation_grad_rows_f(count, act, out, grad)
    else:
        rc_activation_grad_rows_d(count, act, out, grad)


cdef inline void add_rows(int n, int width, const floating *src, size_t ld_src, floating *dst) noexcept nogil:
    if floating is float:
        rc_add_rows_f(n, width, src, ld_src, dst)
    else:
        rc_add_rows_d(n, width, src, ld_src, dst)


cdef inline void column_sums(size_t rows, int width, size_t ld, const floating *m, floating *sums,
                             floating *twin) noexcept nogil:
    if floating is float:
        rc_column_sums_f(rows, width, ld, m, sums, twin)
    else:
        rc_column_sums_d(rows, width, ld, m, sums, twin)


cdef inline void lstm_forward(int n, int H, int coupled, const floating *w_ci, const floating *w_cf,
                              const floating *w_co, floating *gates, size_t ld_gates, size_t gate_stride,
                              const floating *c_prev, floating *c, floating *m, size_t ld_state) noexcept nogil:
    if floating is float:
        rc_lstm_forward_f(n, H, coupled, w_ci, w_cf, w_co, gates, ld_gates, gate_stride, c_prev, c, m, ld_state)
    else:
        rc_lstm_forward_d(n, H, coupled, w_ci, w_cf, w_co, gates, ld_gates, gate_stride, c_prev, c, m, ld_state)


cdef inline void lstm_backward(int n, int H, int coupled, const floating *w_ci, const floating *w_cf,
                               const floating *w_co, const floating *gates, const floating *c_prev,
                               const floating *c, const floating *dm, floating *dc, floating *dgates,
                               floating *g_ci, floating *g_cf, floating *g_co) noexcept nogil:
    if floating is float:
        rc_lstm_backward_f(n, H, coupled, w_ci, w_cf, w_co, gates, c_prev, c, dm, dc, dgates, g_ci, g_cf, g_co)
    else:
        rc_lstm_backward_d(n, H, coupled, w_ci, w_cf, w_co, gates, c_prev, c, dm, dc, dgates, g_ci, g_cf, g_co)


cdef inline void gru_forward_after(int n, int H, const floating *b_hn, floating *gates, size_t ld_gates,
                                   size_t gate_stride, const floating *hh, size_t ld_hh, size_t hh_stride,
                                   const floating *h_prev, floating *h, floating *kept,
                                   size_t ld_state) noexcept nogil:
    if floating is float:
        rc_gru_forward_after_f(n, H, b_hn, gates, ld_gates, gate_stride, hh, ld_hh, hh_stride, h_prev, h, kept,
                               ld_state)
    else:
        rc_gru_forward_after_d(n, H, b_hn, gates, ld_gates, gate_stride, hh, ld_hh, hh_stride, h_prev, h, kept,
                               ld_state)


cdef inline void gru_backward_after(int n, int H, const floating *gates, const floating *kept,
                                    const floating *h_prev, floating *dh, floating *dgates_x,
                                    floating *dgates_h) noexcept nogil:
    if floating is float:
        rc_gru_backward_after_f(n, H, gates, kept, h_prev, dh, dgates_x, dgates_h)
    else:
        rc_gru_backward_after_d(n, H, gates, kept, h_prev, dh, dgates_x, dgates_h)


cdef inline void gru_forward_before_rz(int n, int H, floating *gates, const floating *h_prev,
                                       floating *kept) noexcept nogil:
    if floating is float:
        rc_gru_forward_before_rz_f(n, H, gates, h_prev, kept)
    else:
        rc_gru_forward_before_rz_d(n, H, gates, h_prev, kept)


cdef inline void gru_forward_before_n(int n, int H, floating *gates, const floating *h_prev,
                                      floating *h) noexcept nogil:
    if floating is float:
        rc_gru_forward_before_n_f(n, H, gates, h_prev, h)
    else:
        rc_gru_forward_before_n_d(n, H, gates, h_prev, h)


cdef inline void gru_backward_before_zn(int n, int H, const floating *gates, const floating *h_prev,
                                        floating *dh, floating *dgates) noexcept nogil:
    if floating is float:
        rc_gru_backward_before_zn_f(n, H, gates, h_prev, dh, dgates)
    else:
        rc_gru_backward_before_zn_d(n, H, gates, h_prev, dh, dgates)


cdef inline void gru_backward_before_r(int n, int H, const floating *gates, const floating *h_prev,
                                       const floating *d_kept, floating *dh, floating *dgates) noexcept nogil:
    if floating is float:
        rc_gru_backward_before_r_f(n, H, gates, h_prev, d_kept, dh, dgates)
    else:
        rc_gru_backward_before_r_d(n, H, gates, h_prev, d_kept, dh, dgates)


cdef inline void layer_norm_rows(int n, int width, const floating *src, size_t ld_src, const floating *gain,
                                 const floating *bias, bint accumulate, floating *dst, size_t ld_dst,
                                 floating *xhat, floating *stats) noexcept nogil:
    """dst = (accumulate ? dst : 0) + gain LN(src) + bias, row by row (see rc_layer_norm_rows)."""
    if floating is float:
        rc_layer_norm_rows_f(n, width, src, ld_src, gain, bias, accumulate, dst, ld_dst, xhat, stats)
    else:
        rc_layer_norm_rows_d(n, width, src, ld_src, gain, bias, accumulate, dst, ld_dst, xhat, stats)


cdef inline void layer_norm_pair_rows(int n, int width, const floating *x, size_t ld_x, const floating *gain_x,
                                      const floating *bias, const floating *h, size_t ld_h, const floating *gain_h,
                                      floating *dst, size_t ld_dst, floating *xhat_x, floating *stats_x,
                                      floating *xhat_h, floating *stats_h) noexcept nogil:
    """dst = gain_x LN(x) + bias + gain_h LN(h), row by row (see rc_layer_norm_pair_rows)."""
    if floating is float:
        rc_layer_norm_pair_rows_f(n, width, x, ld_x, gain_x, bias, h, ld_h, gain_h, dst, ld_dst, xhat_x, stats_x,
                                  xhat_h, stats_h)
    else:
        rc_layer_norm_pair_rows_d(n, width, x, ld_x, gain_x, bias, h, ld_h, gain_h, dst, ld_dst, xhat_x, stats_x,
                                  xhat_h, stats_h)


cdef inline void layer_norm_backward_rows(int n, int width, const floating *dout, size_t ld_dout,
                                          const floating *gain, const floating *xhat, const floating *stats,
                                          floating *dsrc, size_t ld_dsrc) noexcept nogil:
    if floating is float:
        rc_layer_norm_backward_rows_f(n, width, dout, ld_dout, gain, xhat, stats, dsrc, ld_dsrc)
    else:
        rc_layer_norm_backward_rows_d(n, width, dout, ld_dout, gain, xhat, stats, dsrc, ld_dsrc)


cdef inline void layer_norm_sums(size_t rows, int width, const floating *dx, const floating *xhat_x,
                                 const floating *dh, const floating *xhat_h, size_t ld, floating *bias_x,
                                 floating *gain_x, floating *bias_h, floating *gain_h) noexcept nogil:
    """bias_x += dx, gain_x += dx xhat_x, bias_h += dh, gain_h += dh xhat_h over the rows, in
    one read of each (see rc_layer_norm_sums)."""
    if floating is float:
        rc_layer_norm_sums_f(rows, width, dx, xhat_x, dh, xhat_h, ld, bias_x, gain_x, bias_h, gain_h)
    else:
        rc_layer_norm_sums_d(rows, width, dx, xhat_x, dh, xhat_h, ld, bias_x, gain_x, bias_h, gain_h)


cdef inline void zoneout_rows(int n, int width, const floating *mask, size_t ld_mask, floating p,
                              const floating *prev, size_t ld_prev, const floating *src, size_t ld_src,
                              floating *dst, size_t ld_dst) noexcept nogil:
    """dst = w prev + (1 - w) src, w the mask's (NULL: p)."""
    if floating is float:
        rc_zoneout_rows_f(n, width, mask, ld_mask, p, prev, ld_prev, src, ld_src, dst, ld_dst)
    else:
        rc_zoneout_rows_d(n, width, mask, ld_mask, p, prev, ld_prev, src, ld_src, dst, ld_dst)


cdef inline void zoneout_backward_rows(int n, int width, const floating *mask, floating p, floating *d,
                                       floating *direct) noexcept nogil:
    if floating is float:
        rc_zoneout_backward_rows_f(n, width, mask, p, d, direct)
    else:
        rc_zoneout_backward_rows_d(n, width, mask, p, d, direct)


cdef inline void mask_rows(int n, int width, const floating *mask, const floating *src, bint accumulate,
                           floating *dst) noexcept nogil:
    if floating is float:
        rc_mask_rows_f(n, width, mask, src, accumulate, dst)
    else:
        rc_mask_rows_d(n, width, mask, src, accumulate, dst)


cdef inline void lstm_forward_ln(int n, int H, int coupled, const floating *w_ci, const floating *w_cf,
                                 const floating *w_co, floating *gates, size_t ld_gates, size_t gate_stride,
                                 const floating *c_prev, floating *c, floating *m, size_t ld_state,
                                 const floating *g_c, const floating *b_c, floating *stats) noexcept nogil:
    if floating is float:
        rc_lstm_forward_ln_f(n, H, coupled, w_ci, w_cf, w_co, gates, ld_gates, gate_stride, c_prev, c, m,
                             ld_state, g_c, b_c, stats)
    else:
        rc_lstm_forward_ln_d(n, H, coupled, w_ci, w_cf, w_co, gates, ld_gates, gate_stride, c_prev, c, m,
                             ld_state, g_c, b_c, stats)


cdef inline void lstm_backward_ln(int n, int H, int coupled, const floating *w_ci, const floating *w_cf,
                                  const floating *w_co, const floating *gates, const floating *c_prev,
                                  const floating *c, const floating *g_c, const floating *b_c,
                                  const floating *stats, const floating *dm, floating *dc, floating *dgates,
                                  floating *dcl, floating *g_ci, floating *g_cf, floating *g_co) noexcept nogil:
    if floating is float:
        rc_lstm_backward_ln_f(n, H, coupled, w_ci, w_cf, w_co, gates, c_prev, c, g_c, b_c, stats, dm, dc, dgates,
                              dcl, g_ci, g_cf, g_co)
    else:
        rc_lstm_backward_ln_d(n, H, coupled, w_ci, w_cf, w_co, gates, c_prev, c, g_c, b_c, stats, dm, dc, dgates,
                              dcl, g_ci, g_cf, g_co)


cdef inline void layer_norm_cell_grads(size_t rows, int H, const floating *dcl, const floating *c, size_t ld_c,
                                       const floating *stats, floating *g_gain, floating *g_shift) noexcept nogil:
    if floating is float:
        rc_layer_norm_cell_grads_f(rows, H, dcl, c, ld_c, stats, g_gain, g_shift)
    else:
        rc_layer_norm_cell_grads_d(rows, H, dcl, c, ld_c, stats, g_gain, g_shift)


cdef inline void pack_weight(int n, int k, const floating *w, floating *packed) noexcept nogil:
    """packed <- w (n, k), row-major, laid out for c (+)= a @ w.T by packed_product."""
    if floating is float:
        rc_pack_weight_f(n, k, w, k, 1, packed)
    else:
        rc_pack_weight_d(n, k, w, k, 1, packed)


cdef inline void pack_weight_nn(int n, int k, const floating *w, Py_ssize_t ldw, floating *packed) noexcept nogil:
    """packed <- w (k, n), rows ldw apart, laid out for c (+)= a @ w by packed_product."""
    if floating is float:
        rc_pack_weight_f(n, k, w, 1, ldw, packed)
    else:
        rc_pack_weight_d(n, k, w, 1, ldw, packed)


cdef inline void pack_weight_groups(int groups, int n, int k, const floating *w, floating *packed) noexcept nogil:
    """packed <- w (n, k), row-major, its `groups` blocks of rows (a cell's gates)
    interleaved by blocks of hidden units (rc_pack_weight_groups)."""
    cdef int units = rc_gate_block_units(sizeof(floating))
    if floating is float:
        rc_pack_weight_groups_f(groups, units, n, k, w, k, 1, packed)
    else:
        rc_pack_weight_groups_d(groups, units, n, k, w, k, 1, packed)


cdef inline void gradient_product(int m, int n, int k, const floating *a, int lda, const floating *b, int ldb,
                                  floating *c, int ldc, floating *scratch) noexcept nogil:
    """c (m, n) += a.T @ b, a (k, m) and b (k, n) running along the steps (a weight
    gradient over a chunk of slot rows), on the micro-kernel (rc_gradient_product): each
    element adds the k terms in order, the same bits for any thread count."""
    if floating is float:
        rc_gradient_product_f(m, n, k, a, lda, b, ldb, c, ldc, scratch)
    else:
        rc_gradient_product_d(m, n, k, a, lda, b, ldb, c, ldc, scratch)


cdef inline Py_ssize_t packed_values(int n, int k, floating *tag) noexcept nogil:
    return rc_packed_size(n, k, sizeof(floating))


cdef inline int panel_width(floating *tag) noexcept nogil:
    """Columns of one panel of the micro-kernel instance in use."""
    return 2 * rc_gemm_vector_bytes(rc_gemm_isa()) // <int>sizeof(floating)


cdef inline void packed_product(int m, int n, int k, const floating *a, int lda, const floating *packed,
                                bint accumulate, floating *c, int ldc) noexcept nogil:
    """c (m, n) (+)= a (m, k) @ w.T, w packed by pack_weight."""
    if floating is float:
        rc_packed_gemm_f(m, n, k, a, lda, packed, accumulate, c, ldc)
    else:
        rc_packed_gemm_d(m, n, k, a, lda, packed, accumulate, c, ldc)


cdef inline void packed_products(int m, int n, int k, const floating *a, int lda, const floating *packed, int k2,
                                 const floating *a2, int lda2, const floating *packed2, const floating *source,
                                 size_t ld_source, floating *c, int ldc) noexcept nogil:
    """c (m, n) = source + a (m, k) @ w.T + a2 (m, k2) @ w2.T in one pass: each element
    sums the first product's terms, then the second's, as two calls would."""
    if floating is float:
        rc_packed_gemm2_f(m, n, k, a, lda, packed, k2, a2, lda2, packed2, source, ld_source, c, ldc)
    else:
        rc_packed_gemm2_d(m, n, k, a, lda, packed, k2, a2, lda2, packed2, source, ld_source, c, ldc)


cdef inline void packed_product_from(int m, int n, int k, const floating *a, int lda, const floating *packed,
                                     const floating *source, size_t ld_source, floating *c,
                                     int ldc) noexcept nogil:
    """c (m, n) = source + a (m, k) @ w.T: source's rows ld_source apart (0: one row, a
    bias, for every row of c)."""
    if floating is float:
        rc_packed_gemm_from_f(m, n, k, a, lda, packed, source, ld_source, c, ldc)
    else:
        rc_packed_gemm_from_d(m, n, k, a, lda, packed, source, ld_source, c, ldc)


# below this many multiply-adds a step, the blocks' extra calls cost more than they save
DEF MIN_BLOCKED_STEP_WORK = 32768
# W_ih of at most this many values is read at every step from cache (256 KB of floats)
DEF STEP_INPUT_VALUES = 65536


cdef inline bint blocked_layout(int kind, int reset_after, int training, Py_ssize_t rows, int GH, int I,
                                int P, bint whole) noexcept nogil:
    """Whether the time loop runs the cell block by block of hidden units, each block's
    update right after its gates' products (see forward_steps): the LSTM and the
    reset-after GRU in inference, unless a step is tiny. Training keeps every step's
    gates for the backward pass, so it writes them whole; the reset-before GRU's second
    product needs every unit's reset gate first; Elman's update is one activation in
    place. `rows`: the whole batch's (a slice of rows follows its batch). `whole`: the step
    needs whole rows (layer norm's statistics over every gate; masks, which only
    training passes)."""
    return (not training and not whole and (kind == LSTM or (kind == GRU and reset_after != 0))
            and rows * GH * <Py_ssize_t>(I + P) >= MIN_BLOCKED_STEP_WORK)


cdef inline bint input_layout(int kind, int reset_after, int training, Py_ssize_t rows, int GH, int I,
                              int P, bint whole) noexcept nogil:
    """Whether a blocked step makes its own input product (from x, W_ih packed by blocks
    too) rather than read it from one projection of all steps (xp): when W_ih is small
    enough to stay in cache between steps, or the projection's array (written, read
    back: about 3 T B GH values of memory traffic) outweighs re-reading W_ih at every
    step (T I GH)."""
    return (blocked_layout(kind, reset_after, training, rows, GH, I, P, whole)
            and (I < 3 * rows or <Py_ssize_t>I * GH <= STEP_INPUT_VALUES))


cdef inline bint whole_rows(const Direction *d) noexcept nogil:
    return d.layer_norm != 0 or d.zmask_h != NULL or d.zmask_c != NULL or d.rmask != NULL


cdef inline bint gate_blocks(const Direction *d) noexcept nogil:
    return blocked_layout(d.kind, d.reset_after, d.training, d.ring_rows, d.GH, d.input_size, d.P, whole_rows(d))


cdef inline bint input_in_steps(const Direction *d) noexcept nogil:
    return input_layout(d.kind, d.reset_after, d.training, d.ring_rows, d.GH, d.input_size, d.P, whole_rows(d))


def step_layout(str kind, bint reset_after, bint training, Py_ssize_t rows, int GH, int I, int P,
                bint whole=False):
    """(blocked, input in steps) for a direction of these sizes: see blocked_layout and
    input_layout (backend.py allocates by them); `whole`: layer norm, or masks."""
    cdef int code = {"rnn": RNN, "jordan": JORDAN, "lstm": LSTM, "gru": GRU}[kind]
    return (bool(blocked_layout(code, reset_after, training, rows, GH, I, P, whole)),
            bool(input_layout(code, reset_after, training, rows, GH, I, P, whole)))


cdef void pack_recurrent(Direction *d, floating *tag) noexcept nogil:
    """W_hh into d.w_hh_p, once per call, as the steps take it: one (GH, P) block, its
    gates interleaved by blocks of hidden units where the cell runs by blocks
    (gate_blocks), or GRU-before's r, z block (2H, H) then its n block (H, H) after it."""
    cdef int H = d.H
    cdef floating *w_hh = <floating *>d.w_hh
    cdef floating *packed = <floating *>d.w_hh_p
    if gate_blocks(d):
        pack_weight_groups(d.GH // H, d.GH, d.P, w_hh, packed)
    elif d.kind == GRU and not d.reset_after:
        pack_weight(2 * H, H, w_hh, packed)
        pack_weight(H, H, w_hh + 2 * H * H, packed + packed_values(2 * H, H, tag))
    elif d.kind == JORDAN:
        pack_weight(H, d.O, w_hh, packed)
    else:
        pack_weight(d.GH, d.P if d.kind == LSTM else H, w_hh, packed)


cdef void pack_weights(Direction *d, floating *tag) noexcept nogil:
    """The forward's weights into their panels, once per call (or per stream)."""
    if input_in_steps(d):
        pack_weight_groups(d.GH // d.H, d.GH, d.input_size, <floating *>d.w_ih, <floating *>d.w_ih_p)
    else:
        pack_weight(d.GH, d.input_size, <floating *>d.w_ih, <floating *>d.w_ih_p)
    pack_recurrent(d, tag)
    if d.w_hr_p != NULL:
        pack_weight(d.P, d.H, <floating *>d.w_hr, <floating *>d.w_hr_p)
    if d.w_ho_p != NULL:
        pack_weight(d.O, d.H, <floating *>d.w_ho, <floating *>d.w_ho_p)


cdef void pack_backward(Direction *d, floating *tag) noexcept nogil:
    """The backward's weights, once per call, untransposed: the steps multiply by W
    (dh = dgates @ W_hh), where the forward multiplied by W.T. GRU-before's blocks as its
    steps take them: the r, z rows (2H, H), then the n rows (H, H) after them."""
    cdef int H = d.H
    cdef floating *w_hh = <floating *>d.w_hh
    cdef floating *packed = <floating *>d.w_hh_bp
    if d.kind == GRU and not d.reset_after:
        pack_weight_nn(H, 2 * H, w_hh, H, packed)
        pack_weight_nn(H, H, w_hh + 2 * H * H, H, packed + packed_values(H, 2 * H, tag))
    elif d.kind == JORDAN:
        pack_weight_nn(d.O, H, w_hh, d.O, packed)
    elif d.kind == LSTM:
        pack_weight_nn(d.P, d.GH, w_hh, d.P, packed)
    else:
        pack_weight_nn(H, d.GH, w_hh, H, packed)
    if d.w_hr_bp != NULL:
        pack_weight_nn(H, d.P, <floating *>d.w_hr, H, <floating *>d.w_hr_bp)
    if d.w_ho_bp != NULL:
        pack_weight_nn(H, d.O, <floating *>d.w_ho, H, <floating *>d.w_ho_bp)
    if d.dx != NULL:
        pack_weight_nn(d.input_size, d.GH, <floating *>d.w_ih, d.input_size, <floating *>d.w_ih_bp)


cdef extern from "rnncore_gemm.h":
    enum: RC_LINE_BYTES


def on_lines(object shape, object dtype):
    """An uninitialised C-contiguous float32 or float64 array of `shape` (a size, or a
    tuple of up to three sizes) whose first value starts a cache line (RC_LINE_BYTES).
    The kernels read and write whole vectors: a panel or a row placed off a line (NumPy
    puts a large array 16 or 32 bytes past one) makes every such access span two lines.
    The view over a slightly larger array is made here, at a fraction of what slicing
    and reshaping in Python cost: a plan makes a dozen, and a short call (one step of
    decoding) is all overhead."""
    cdef cnp.npy_intp dims[3]
    cdef cnp.npy_intp size = 1
    cdef cnp.npy_intp extra
    cdef int nd, k, typenum
    cdef size_t itemsize, skip
    cdef char *data
    cdef cnp.ndarray raw, view
    if dtype is np.float32 or dtype is np.float64:
        typenum = cnp.NPY_FLOAT64 if dtype is np.float64 else cnp.NPY_FLOAT32
    else:
        dtype = np.dtype(dtype)
        if dtype != np.float32 and dtype != np.float64:
            raise TypeError(f"dtype: expected float32 or float64, got {dtype}")
        typenum = cnp.NPY_FLOAT64 if dtype == np.float64 else cnp.NPY_FLOAT32
    itemsize = sizeof(double) if typenum == cnp.NPY_FLOAT64 else sizeof(float)
    if isinstance(shape, tuple):
        nd = len(<tuple>shape)
        if not 1 <= nd <= 3:
            raise ValueError(f"shape: expected 1 to 3 sizes, got {shape!r}")
        for k in range(nd):
            dims[k] = PyNumber_Index((<tuple>shape)[k])
    else:
        nd, dims[0] = 1, PyNumber_Index(shape)
    extra = RC_LINE_BYTES // itemsize
    for k in range(nd):
        if dims[k] < 0:
            raise ValueError(f"shape: expected sizes >= 0, got {shape!r}")
        # a product that wrapped around would describe more memory than is allocated
        if dims[k] and size > (PY_SSIZE_T_MAX - extra) // dims[k]:
            raise MemoryError(f"shape: {shape!r} holds more values than an array can index")
        size *= dims[k]
    raw = cnp.PyArray_EMPTY(1, [size + extra], typenum, 0)
    data = <char *>cnp.PyArray_DATA(raw)
    skip = (RC_LINE_BYTES - <size_t>data % RC_LINE_BYTES) % RC_LINE_BYTES
    view = cnp.PyArray_SimpleNewFromData(nd, dims, typenum, data + skip)
    cnp.set_array_base(view, raw)
    return view


def contiguous_values(dict arrays):
    """`arrays` ({name: array}) itself when every value is a C-contiguous ndarray, as a
    layer's own parameters are; else a new dict with C-contiguous copies of the others
    (a torch adapter's views of weights a user transposed). A short call is all
    overhead, and asking NumPy for each array costs it a microsecond."""
    for value in arrays.values():
        if not (cnp.PyArray_Check(value) and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>value)):
            return {name: np.ascontiguousarray(value) for name, value in arrays.items()}
    return arrays


def packed_size(int n, int k, bint is_double):
    """Values of a packed (n, k) weight: n output columns, k summed over."""
    return rc_packed_size(n, k, sizeof(double) if is_double else sizeof(float))


cdef inline Py_ssize_t layer_gradient_scratch(Py_ssize_t GH, Py_ssize_t P, Py_ssize_t O, Py_ssize_t I,
                                              Py_ssize_t H, Py_ssize_t chunk_rows, size_t value) noexcept nogil:
    """Values of one thread's weight-gradient scratch for a layer's products: C at most
    max(GH, P, O) rows and max(I, P, H) columns, over chunks of at most chunk_rows slot
    rows. The one sizing of a plan's "g_pack", which holds a share per thread."""
    return rc_gradient_scratch_size(max(GH, max(P, O)), max(I, max(P, H)), chunk_rows, value)


def gradient_scratch_size(Py_ssize_t GH, Py_ssize_t P, Py_ssize_t O, Py_ssize_t I, Py_ssize_t H,
                          Py_ssize_t chunk_rows, bint is_double):
    """Values of one thread's share of the plan's "g_pack" (layer_gradient_scratch)."""
    return layer_gradient_scratch(GH, P, O, I, H, chunk_rows, sizeof(double) if is_double else sizeof(float))


def packed_input_size(str kind, int GH, int H, int I, bint is_double):
    """Values of the buffer pack_weights fills with W_ih (the plan's "w_ih_p")."""
    cdef size_t value = sizeof(double) if is_double else sizeof(float)
    if kind == "lstm" or kind == "gru":
        # room for the gate-interleaved layout of inference (each gate padded on its own)
        return rc_packed_groups_size(GH // H, GH, I, value)
    return rc_packed_size(GH, I, value)


def packed_backward_size(str kind, int H, int GH, int P, int O, bint reset_after, bint is_double):
    """Values of the buffer pack_backward fills with W_hh (the plan's "w_hh_bp")."""
    cdef size_t value = sizeof(double) if is_double else sizeof(float)
    if kind == "gru" and not reset_after:
        return rc_packed_size(H, 2 * H, value) + rc_packed_size(H, H, value)
    if kind == "jordan":
        return rc_packed_size(O, H, value)
    if kind == "lstm":
        return rc_packed_size(P, GH, value)
    return rc_packed_size(H, GH, value)


def packed_recurrent_size(str kind, int H, int GH, int P, int O, bint reset_after, bint is_double):
    """Values of the buffer pack_recurrent fills (the plan's "w_hh_p") for a layer."""
    cdef size_t value = sizeof(double) if is_double else sizeof(float)
    if kind == "gru" and not reset_after:
        return rc_packed_size(2 * H, H, value) + rc_packed_size(H, H, value)
    if kind == "jordan":
        return rc_packed_size(H, O, value)
    if kind == "lstm" or kind == "gru":
        # room for the gate-interleaved layout of inference (each gate padded on its own)
        return rc_packed_groups_size(GH // H, GH, P if kind == "lstm" else H, value)
    return rc_packed_size(GH, H, value)


def packed_gemm(floating[:, ::1] a, floating[:, ::1] w, floating[:, ::1] c, bint accumulate):
    """c (+)= a @ w.T through pack_weight and packed_product (for the tests): a (m, k),
    w (n, k), c (m, n), C-contiguous arrays of one float type."""
    cdef int m = a.shape[0], k = a.shape[1], n = w.shape[0]
    if w.shape[1] != k or c.shape[0] != m or c.shape[1] != n:
        raise ValueError(f"packed_gemm: expected a (m, k), w (n, k), c (m, n), got "
                         f"({a.shape[0]}, {a.shape[1]}), ({w.shape[0]}, {w.shape[1]}), ({c.shape[0]}, {c.shape[1]})")
    cdef floating[::1] packed = np.zeros(max(1, rc_packed_size(n, k, sizeof(floating))),
                                         np.float64 if floating is double else np.float32)
    cdef const floating *a_data = &a[0, 0] if m and k else NULL
    with nogil:
        if n and k:
            pack_weight(n, k, &w[0, 0], &packed[0])
        if m and n:
            packed_product(m, n, k, a_data, k, &packed[0], accumulate, &c[0, 0], n)


def gradient_gemm(floating[:, ::1] a, floating[:, ::1] b, floating[:, ::1] c):
    """c += a.T @ b through gradient_product (for the tests): a (k, m), b (k, n), c (m, n),
    C-contiguous arrays of one float type."""
    cdef int k = a.shape[0], m = a.shape[1], n = b.shape[1]
    if b.shape[0] != k or c.shape[0] != m or c.shape[1] != n:
        raise ValueError(f"gradient_gemm: expected a (k, m), b (k, n), c (m, n), got "
                         f"({a.shape[0]}, {a.shape[1]}), ({b.shape[0]}, {b.shape[1]}), ({c.shape[0]}, {c.shape[1]})")
    cdef floating[::1] scratch = np.zeros(max(1, rc_gradient_scratch_size(m, n, k, sizeof(floating))),
                                          np.float64 if floating is double else np.float32)
    with nogil:
        if m and n and k:
            gradient_product(m, n, k, &a[0, 0], m, &b[0, 0], n, &c[0, 0], n, &scratch[0])


def packed_gemm_pair(floating[:, ::1] a, floating[:, ::1] w, floating[:, ::1] a2, floating[:, ::1] w2,
                     floating[:, ::1] c, floating[::1] bias=None, int groups=1):
    """c = bias + a @ w.T + a2 @ w2.T in one pass of packed_products (for the tests): a
    (m, k), w (n, k), a2 (m, k2), w2 (n, k2), c (m, n), bias (n,) or None; with groups
    > 1 the weights are packed gate-interleaved (pack_weight_groups) and the product
    runs group by group over each block of units, as a blocked step does."""
    cdef int m = a.shape[0], k = a.shape[1], n = w.shape[0], k2 = a2.shape[1]
    cdef int g, u, u0, cols, units = rc_gate_block_units(sizeof(floating)), width
    if (w.shape[1] != k or a2.shape[0] != m or w2.shape[0] != n or w2.shape[1] != k2 or c.shape[0] != m
            or c.shape[1] != n or (bias is not None and bias.shape[0] != n) or groups < 1 or n % groups
            or not (m and n and k and k2)):
        raise ValueError(f"packed_gemm_pair: expected a (m, k), w (n, k), a2 (m, k2), w2 (n, k2), c (m, n), "
                         f"bias (n,), n a multiple of groups, no size 0, got ({m}, {k}), ({n}, {w.shape[1]}), "
                         f"({a2.shape[0]}, {k2}), ({w2.shape[0]}, {w2.shape[1]}), ({c.shape[0]}, {c.shape[1]}), "
                         f"groups {groups}")
    dtype = np.float64 if floating is double else np.float32
    cdef floating[::1] packed = np.zeros(rc_packed_groups_size(groups, n, k, sizeof(floating)), dtype)
    cdef floating[::1] packed2 = np.zeros(rc_packed_groups_size(groups, n, k2, sizeof(floating)), dtype)
    cdef const floating *b = &bias[0] if bias is not None else NULL
    width = n // groups
    with nogil:
        pack_weight_groups(groups, n, k, &w[0, 0], &packed[0])
        pack_weight_groups(groups, n, k2, &w2[0, 0], &packed2[0])
        for u in range((width + units - 1) // units):
            u0 = u * units
            cols = min(units, width - u0)
            for g in range(groups):
                packed_products(m, cols, k, &a[0, 0], k, &packed[0] + gate_panels_at(u0, cols, g, groups, k, <floating *>NULL),
                                k2, &a2[0, 0], k2, &packed2[0] + gate_panels_at(u0, cols, g, groups, k2, <floating *>NULL),
                                b + g * width + u0 if b != NULL else NULL, 0, &c[0, g * width + u0], n)


def gemm_isa(int isa=-1):
    """The micro-kernel instance in use: 0 portable, 1 AVX2 and FMA, 2 AVX-512F, 3 the
    AVX-512 tile without its instructions (never chosen; it runs that tile's logic on any
    CPU). Given isa >= 0, sets it (clamped to what the CPU runs, 3 allowed everywhere;
    for the tests) and returns the one in use before."""
    if isa < 0:
        return rc_gemm_isa()
    return rc_gemm_set_isa(isa)


# -- where a step's state lives -----------------------------------------------------------

cdef inline floating *state_before(Direction *d, floating *hs, Py_ssize_t s) noexcept nogil:
    """The state step s starts from: h0, or the rows of step s-1 (already in sorted order)."""
    if s == 0:
        return <floating *>d.h0
    return hs + d.step_row[s - 1] * d.P


cdef inline floating *cell_at(Direction *d, floating *tag, Py_ssize_t s) noexcept nogil:
    """LSTM c after step s (c0 for s = -1): training keeps every step, inference two."""
    if s < 0:
        return <floating *>d.c0
    if d.training:
        return <floating *>d.c_buf + d.step_row[s] * d.H
    return <floating *>d.c_buf + (s & 1) * d.ring_rows * d.H


cdef inline floating *per_step(Direction *d, void *buf, floating *tag, Py_ssize_t s) noexcept nogil:
    """A (B, H) scratch in inference, the slot rows of step s of an (N, H) store in training."""
    if d.training:
        return <floating *>buf + d.step_row[s] * d.H
    return <floating *>buf


# -- forward ----------------------------------------------------------------------------

cdef void input_projection(Direction *d, floating *tag) noexcept nogil:
    """xp = x @ w_ih.T + bias over the packed W_ih. The packed product sums each element
    in one order whatever the number of rows, so projecting all steps at once gives what
    projecting one step at a time does: a stream's steps equal the layer's call bit for
    bit. (Against OpenBLAS's sgemm it runs at 0.9-1.1x its rate, one thread, AVX2: the
    input projections of the benchmark cases, measured in tests/backends/test_engine.py's
    companion benchmarks/bench_engine.py.)"""
    if input_in_steps(d):
        return          # each step's blocks make their own input product (lstm_step_blocks)
    if d.layer_norm:
        # xp = x @ w_ih.T alone: its layer norm (and then the bias) is applied step by
        # step, while the step's rows are in cache (forward_steps)
        packed_product_from(<int>d.N, d.GH, d.input_size, <floating *>d.x, <int>d.ldx, <floating *>d.w_ih_p,
                            <const floating *>NULL, 0, <floating *>d.xp, d.GH)
        return
    # xp = bias + x @ w_ih.T    (N, GH) = (N, I) x (I, GH), the bias row the accumulators' start
    packed_product_from(<int>d.N, d.GH, d.input_size, <floating *>d.x, <int>d.ldx, <floating *>d.w_ih_p,
                        <const floating *>d.bias_x, 0, <floating *>d.xp, d.GH)


# Inference's time step by blocks of hidden units (gate_blocks). W_hh's panels go block
# after block of `units` hidden units, every gate of a block side by side
# (pack_weight_groups), so a block's gates are G products over consecutive panels into
# a scratch of `chunk` rows on the stack, and the cell updates the block's units from
# there while it is in cache: the (B, G*H) gate array is never written and read back.
# Each product starts from the input projection's values (xp), or, where input_in_steps,
# makes the block's input product itself from x over W_ih packed the same way, in the
# same pass (packed_products): then there is no (N, G*H) projection either. Each
# element's sum is the one the whole-row products make (bias, x terms, then h terms, in
# order), so the bits are training's and a stream's.
DEF SCRATCH_VALUES = 8192          # 64 KB of doubles: L2-resident, one thread's stack

cdef inline Py_ssize_t gate_panels_at(int u0, int cols, int g, int G, int k, floating *tag) noexcept nogil:
    """Offset of gate g's panels of the block of units u0 .. u0 + cols - 1."""
    cdef int nr = panel_width(tag)
    return (<Py_ssize_t>u0 * G + <Py_ssize_t>g * ((cols + nr - 1) // nr) * nr) * k


cdef inline int unit_blocks(const Direction *d, floating *tag) noexcept nogil:
    """The blocks of hidden units of a gate_blocks direction's step."""
    cdef int units = rc_gate_block_units(sizeof(floating))
    return (d.H + units - 1) // units


cdef inline bint unit_split(const Direction *d) noexcept nogil:
    """Whether a direction's time loop can split by blocks of hidden units: the blocked
    cells, without an LSTM projection (whose product reads every unit of a step)."""
    return gate_blocks(d) and d.w_hr == NULL


cdef inline floating *step_input(Direction *d, Py_ssize_t s, floating *tag) noexcept nogil:
    """Step s's rows of x where its blocks make their own input product, else NULL."""
    return <floating *>d.x + d.step_row[s] * d.ldx if input_in_steps(d) else NULL


cdef inline floating zoneout_p(const Direction *d, int which, floating *tag) noexcept nogil:
    """The probability of zoneout's expectation: of h (which = 0), of c (1)."""
    return (<const floating *>d.zoneout)[which] if d.zoneout != NULL else 0


cdef inline floating *slot_rows(void *buf, Py_ssize_t row, Py_ssize_t width, floating *tag) noexcept nogil:
    """The slot rows from `row` of an (N, width) store, or NULL where there is none."""
    return NULL if buf == NULL else <floating *>buf + row * width


cdef inline floating *cell_new(Direction *d, floating *tag, Py_ssize_t s) noexcept nogil:
    """Where step s's cell writes its own new c: training with zoned c keeps it apart from
    the carried (blended) one, for the backward pass; otherwise it is blended in place."""
    if d.c_tilde != NULL:
        return <floating *>d.c_tilde + d.step_row[s] * d.H
    return cell_at(d, tag, s)


cdef void lstm_step_blocks(Direction *d, int n, const floating *x, const floating *xp, const floating *h_prev,
                           const floating *c_prev, floating *c, floating *m, floating *scratch,
                           int first, int last, floating *tag) noexcept nogil:
    """Blocks first .. last-1 of one step's units (all rows n), from the step's input
    rows x (input_in_steps) or else from its rows of the input projection xp."""
    cdef int H = d.H, GH = d.GH, P = d.P, I = d.input_size, G = d.GH // d.H
    cdef int units = rc_gate_block_units(sizeof(floating))
    cdef int chunk = SCRATCH_VALUES * <int>sizeof(double) // (G * units * <int>sizeof(floating))
    cdef int r, r0, rows, u, u0, cols, g
    cdef Py_ssize_t ldx = d.ldx
    cdef const floating *w_ih_p = <const floating *>d.w_ih_p
    cdef const floating *w_hh_p = <const floating *>d.w_hh_p
    cdef const floating *bias = <const floating *>d.bias_x
    cdef const floating *w_ci
    cdef const floating *w_cf
    cdef const floating *w_co
    cdef floating *gate
    cdef bint peephole = d.w_ci != NULL
    for r in range((n + chunk - 1) // chunk):
        r0 = r * chunk
        rows = min(chunk, n - r0)
        for u in range(first, last):
            u0 = u * units
            cols = min(units, H - u0)
            for g in range(G):
                gate = scratch + g * units
                if x != NULL:
                    # the block's gate g    (rows, cols) = bias + (rows, I) x (I, cols) + (rows, P) x (P, cols)
                    packed_products(rows, cols, I, x + r0 * ldx, <int>ldx, w_ih_p + gate_panels_at(u0, cols, g, G, I, tag),
                                    P, h_prev + r0 * P, P, w_hh_p + gate_panels_at(u0, cols, g, G, P, tag),
                                    bias + g * H + u0 if bias != NULL else NULL, 0, gate, G * units)
                else:
                    # the block's gate g    (rows, cols) = xp + (rows, P) x (P, cols)
                    packed_product_from(rows, cols, P, h_prev + r0 * P, P,
                                        w_hh_p + gate_panels_at(u0, cols, g, G, P, tag),
                                        xp + r0 * GH + g * H + u0, GH, gate, G * units)
            w_ci = <const floating *>d.w_ci + u0 if peephole else NULL
            w_cf = <const floating *>d.w_cf + u0 if peephole and not d.coupled else NULL
            w_co = <const floating *>d.w_co + u0 if peephole else NULL
            lstm_forward(rows, cols, d.coupled, w_ci, w_cf, w_co, scratch, G * units, units,
                         c_prev + r0 * H + u0, c + r0 * H + u0, m + r0 * H + u0, H)
            # zoneout's expectation, block by block while the block is in cache (masks
            # and layer norm run whole rows); with a projection h is blended after it
            if d.zoned_c:
                zoneout_rows(rows, cols, <floating *>NULL, 0, zoneout_p(d, 1, tag), c_prev + r0 * H + u0, H,
                             c + r0 * H + u0, H, c + r0 * H + u0, H)
            if d.zoned_h and d.w_hr == NULL:
                zoneout_rows(rows, cols, <floating *>NULL, 0, zoneout_p(d, 0, tag), h_prev + r0 * P + u0, P,
                             m + r0 * H + u0, H, m + r0 * H + u0, H)


cdef void gru_step_blocks(Direction *d, int n, const floating *x, floating *xp, const floating *h_prev,
                          floating *h, floating *kept, floating *scratch, int first, int last,
                          floating *tag) noexcept nogil:
    """Blocks first .. last-1 of one step's units (all rows n), from the step's input
    rows x (input_in_steps: the scratch holds the block's x-side gates, then its
    W_h h_prev) or else from its rows of the input projection xp."""
    cdef int H = d.H, GH = d.GH, I = d.input_size, units = rc_gate_block_units(sizeof(floating))
    cdef int width = 6 * units if x != NULL else 3 * units
    cdef int chunk = SCRATCH_VALUES * <int>sizeof(double) // (width * <int>sizeof(floating))
    cdef int r, r0, rows, u, u0, cols, g
    cdef Py_ssize_t ldx = d.ldx
    cdef const floating *w_ih_p = <const floating *>d.w_ih_p
    cdef const floating *w_hh_p = <const floating *>d.w_hh_p
    cdef const floating *bias = <const floating *>d.bias_x
    cdef const floating *b_hn
    cdef floating *hh = scratch + 3 * units if x != NULL else scratch
    cdef floating *gates
    for r in range((n + chunk - 1) // chunk):
        r0 = r * chunk
        rows = min(chunk, n - r0)
        for u in range(first, last):
            u0 = u * units
            cols = min(units, H - u0)
            for g in range(3):
                if x != NULL:
                    # the block's x-side gate g    (rows, cols) = bias + (rows, I) x (I, cols)
                    packed_product_from(rows, cols, I, x + r0 * ldx, <int>ldx,
                                        w_ih_p + gate_panels_at(u0, cols, g, 3, I, tag),
                                        bias + g * H + u0 if bias != NULL else NULL, 0, scratch + g * units, width)
                # its W_h h_prev    (rows, cols) = (rows, H) x (H, cols)
                packed_product_from(rows, cols, H, h_prev + r0 * H, H, w_hh_p + gate_panels_at(u0, cols, g, 3, H, tag),
                                    <const floating *>NULL, 0, hh + g * units, width)
            b_hn = <const floating *>d.b_hn + u0 if d.b_hn != NULL else NULL
            if x != NULL:
                gru_forward_after(rows, cols, b_hn, scratch, width, units, hh, width, units,
                                  h_prev + r0 * H + u0, h + r0 * H + u0, kept + r0 * H + u0, H)
            else:
                gru_forward_after(rows, cols, b_hn, xp + r0 * GH + u0, GH, H, hh, width, units,
                                  h_prev + r0 * H + u0, h + r0 * H + u0, kept + r0 * H + u0, H)
            if d.zoned_h:
                zoneout_rows(rows, cols, <floating *>NULL, 0, zoneout_p(d, 0, tag), h_prev + r0 * H + u0, H,
                             h + r0 * H + u0, H, h + r0 * H + u0, H)


cdef void forward_steps(Direction *d, floating *tag) noexcept nogil:
    cdef int H = d.H, GH = d.GH, P = d.P, O = d.O, n
    cdef Py_ssize_t s, row
    cdef floating *xp = <floating *>d.xp
    cdef floating *hs = <floating *>d.hs
    cdef floating *hh = <floating *>d.hh
    cdef floating *rmask = <floating *>d.rmask
    cdef floating *gates
    cdef floating *h
    cdef floating *h_prev
    cdef floating *h_in
    cdef floating *m
    cdef floating *kept
    cdef floating *c_new
    cdef floating *w_hh_p = <floating *>d.w_hh_p
    cdef floating *w_hn_p = w_hh_p + packed_values(2 * H, H, tag)   # GRU-before's n block
    cdef double scratch_values[SCRATCH_VALUES]
    cdef floating *scratch = <floating *>scratch_values
    cdef bint blocks = gate_blocks(d)
    for s in range(d.S):
        n = d.active[s]
        row = d.step_row[s]
        gates = NULL if xp == NULL else xp + row * GH    # NULL: the blocks read x
        h = hs + row * P
        h_prev = state_before(d, hs, s)
        h_in = h_prev
        if rmask != NULL:
            # the recurrent product reads h[s-1] * mask; every other use, h[s-1] itself
            mask_rows(n, P, rmask, h_prev, False, <floating *>d.hm)
            h_in = <floating *>d.hm
        if d.kind == RNN:
            # h[s] = act(xp[s] + h[s-1] @ w_hh.T); xp and hs are one buffer but with zoneout
            # (then xp keeps the cell's own h for the backward pass)    (n, H) += (n, H) x (H, H)
            packed_product(n, H, H, h_in, H, w_hh_p, True, gates, H)
            activate_rows(n, H, d.act, <floating *>NULL, gates)
        elif d.kind == JORDAN:
            # gates[s] += y[s-1] @ w_hh.T    (n, H) += (n, O) x (O, H)
            packed_product(n, H, O, h_prev, O, w_hh_p, True, gates, H)
            activate_rows(n, H, d.act, <floating *>NULL, gates)
            # y[s] = act_o(h[s] @ w_ho.T + b_ho)    (n, O) = (n, H) x (H, O)
            packed_product(n, O, H, gates, H, <floating *>d.w_ho_p, False, h, O)
            activate_rows(n, O, d.out_act, <floating *>d.b_ho, h)
        elif d.kind == LSTM:
            m = per_step(d, d.m_buf, tag, s) if d.w_hr != NULL else h
            if blocks:
                lstm_step_blocks(d, n, step_input(d, s, tag), gates, h_prev, cell_at(d, tag, s - 1),
                                 cell_at(d, tag, s), m, scratch, 0,
                                 unit_blocks(d, tag), tag)
            else:
                c_new = cell_new(d, tag, s)
                if d.layer_norm:
                    # gates[s] = LN(xp[s]) g_ih + bias + LN(h[s-1] @ w_hh.T) g_hh, each product
                    # normalised on its own    (n, GH) = (n, P) x (P, GH)
                    packed_product(n, GH, P, h_in, P, w_hh_p, False, hh, GH)
                    layer_norm_pair_rows(n, GH, gates, GH, <floating *>d.w_ih_ln, <floating *>d.bias_x, hh, GH,
                                         <floating *>d.w_hh_ln, gates, GH, slot_rows(d.ln_xh_ih, row, GH, tag),
                                         slot_rows(d.ln_st_ih, row, 2, tag), slot_rows(d.ln_xh_hh, row, GH, tag),
                                         slot_rows(d.ln_st_hh, row, 2, tag))
                    lstm_forward_ln(n, H, d.coupled, <floating *>d.w_ci, <floating *>d.w_cf, <floating *>d.w_co,
                                    gates, GH, H, cell_at(d, tag, s - 1), c_new, m, H, <floating *>d.w_c_ln,
                                    <floating *>d.b_c_ln, slot_rows(d.ln_st_c, row, 2, tag))
                else:
                    # gates[s] += h[s-1] @ w_hh.T    (n, GH) += (n, P) x (P, GH)
                    packed_product(n, GH, P, h_in, P, w_hh_p, True, gates, GH)
                    lstm_forward(n, H, d.coupled, <floating *>d.w_ci, <floating *>d.w_cf, <floating *>d.w_co,
                                 gates, GH, H, cell_at(d, tag, s - 1), c_new, m, H)
                if d.zoned_c:
                    # c[s] = w c[s-1] + (1 - w) c~[s]; m came from c~ (Krueger et al.)
                    zoneout_rows(n, H, slot_rows(d.zmask_c, row, H, tag), H, zoneout_p(d, 1, tag),
                                 cell_at(d, tag, s - 1), H, c_new, H, cell_at(d, tag, s), H)
            if d.w_hr != NULL:
                # h[s] = m[s] @ w_hr.T    (n, P) = (n, H) x (H, P)
                packed_product(n, P, H, m, H, <floating *>d.w_hr_p, False, h, P)
        else:
            kept = per_step(d, d.kept, tag, s)
            if blocks:
                gru_step_blocks(d, n, step_input(d, s, tag), gates, h_prev, h, kept, scratch, 0,
                                unit_blocks(d, tag), tag)
            elif d.reset_after:
                # hh = h[s-1] @ w_hh.T    (n, 3H) = (n, H) x (H, 3H)
                packed_product(n, GH, H, h_in, H, w_hh_p, False, hh, GH)
                if d.layer_norm:
                    # xp[s] = LN(xp[s]) g_ih + bias, hh = LN(hh) g_hh, in place; b_hn is added
                    # inside r * (.) as without them
                    layer_norm_rows(n, GH, gates, GH, <floating *>d.w_ih_ln, <floating *>d.bias_x, False, gates, GH,
                                    slot_rows(d.ln_xh_ih, row, GH, tag), slot_rows(d.ln_st_ih, row, 2, tag))
                    layer_norm_rows(n, GH, hh, GH, <floating *>d.w_hh_ln, <floating *>NULL, False, hh, GH,
                                    slot_rows(d.ln_xh_hh, row, GH, tag), slot_rows(d.ln_st_hh, row, 2, tag))
                gru_forward_after(n, H, <floating *>d.b_hn, gates, GH, H, hh, GH, H, h_prev, h, kept, H)
            else:
                # gates[s][:, :2H] += h[s-1] @ w_hh[:2H].T    (n, 2H) += (n, H) x (H, 2H)
                packed_product(n, 2 * H, H, h_in, H, w_hh_p, True, gates, GH)
                gru_forward_before_rz(n, H, gates, h_in, kept)
                # gates[s][:, 2H:] += (r * h[s-1]) @ w_hh[2H:].T    (n, H) += (n, H) x (H, H)
                packed_product(n, H, H, kept, H, w_hn_p, True, gates + 2 * H, GH)
                gru_forward_before_n(n, H, gates, h_prev, h)
        if d.zoned_h and (not blocks or d.w_hr != NULL):
            # h[s] = w h[s-1] + (1 - w) h~[s] (Elman's h~ in xp); the blocks blend their own
            zoneout_rows(n, P, slot_rows(d.zmask_h, row, P, tag), P, zoneout_p(d, 0, tag), h_prev, P,
                         gates if d.kind == RNN else h, P, h, P)


cdef void forward_unit_slice(Direction *d, int me, int team, floating *tag) noexcept nogil:
    """Thread `me` of `team`'s share of inference's time loop split by hidden units (one
    direction, gate_blocks, no projection): its own blocks of units of every step, for
    every row, then a barrier, since the next step's product reads every unit of h.
    Each thread's panels of W_hh (its blocks' gates) stay in its own cache for all the
    steps; the c ring and the GRU's kept values are read back only by the thread that
    wrote them. Every element is computed as in forward_steps: the same bits."""
    cdef int blocks = unit_blocks(d, tag), n
    cdef int first = me * blocks // team, last = (me + 1) * blocks // team
    cdef Py_ssize_t s
    cdef double scratch_values[SCRATCH_VALUES]
    cdef floating *scratch = <floating *>scratch_values
    cdef floating *x
    cdef floating *xp
    cdef floating *h
    cdef floating *h_prev
    for s in range(d.S):
        n = d.active[s]
        x = step_input(d, s, tag)
        xp = NULL if x != NULL else <floating *>d.xp + d.step_row[s] * d.GH
        h = <floating *>d.hs + d.step_row[s] * d.P
        h_prev = state_before(d, <floating *>d.hs, s)
        if first < last:
            if d.kind == LSTM:
                lstm_step_blocks(d, n, x, xp, h_prev, cell_at(d, tag, s - 1), cell_at(d, tag, s), h, scratch,
                                 first, last, tag)
            else:
                gru_step_blocks(d, n, x, xp, h_prev, h, per_step(d, d.kept, tag, s), scratch, first, last, tag)
        rc_team_barrier()


# -- backward ---------------------------------------------------------------------------

cdef void backward_steps(Direction *d, floating *tag) noexcept nogil:
    cdef int H = d.H, GH = d.GH, P = d.P, O = d.O, n
    cdef Py_ssize_t s, row
    cdef floating *xp = <floating *>d.xp
    cdef floating *hs = <floating *>d.hs
    cdef floating *w_hh_bp = <floating *>d.w_hh_bp
    cdef floating *dh = <floating *>d.dh
    cdef floating *dm = <floating *>d.dm
    cdef floating *dr = <floating *>d.dr
    cdef floating *rmask = <floating *>d.rmask
    cdef floating *gates
    cdef floating *dgates
    cdef floating *dgates_h
    cdef floating *dgr
    cdef floating *h_prev
    cdef floating *dmj
    cdef floating *dypre
    for s in range(d.S - 1, -1, -1):
        n = d.active[s]
        row = d.step_row[s]
        gates = xp + row * GH
        dgates = <floating *>d.dgx + row * GH
        dgr = <floating *>d.dgr + row * GH
        h_prev = state_before(d, hs, s)
        # rows past their sequence's end carry dh unchanged; the active ones add dy[s]
        add_rows(n, P, <floating *>d.dy + row * d.ldy, d.ldy, dh)
        # zoneout: w dh goes straight to h[s-1] (added back below), (1 - w) dh to the cell's
        if d.zoned_h:
            zoneout_backward_rows(n, P, slot_rows(d.zmask_h, row, P, tag), zoneout_p(d, 0, tag), dh,
                                  <floating *>d.dz)
        if d.kind == LSTM and d.zoned_c:
            zoneout_backward_rows(n, H, slot_rows(d.zmask_c, row, H, tag), zoneout_p(d, 1, tag),
                                  <floating *>d.dc, <floating *>d.dzc)
        if d.kind == RNN:
            memcpy(dgates, dh, n * H * sizeof(floating))
            # the cell's own h (xp; hs too, but with zoneout)
            activation_grad_rows(n * H, d.act, gates, dgates)
            # dh[s-1] = da @ w_hh    (n, H) = (n, H) x (H, H)
            packed_product(n, H, H, dgates, H, w_hh_bp, False, dh, H)
            if rmask != NULL:
                mask_rows(n, H, rmask, dh, False, dh)
        elif d.kind == JORDAN:
            dypre = <floating *>d.dypre + row * O
            memcpy(dypre, dh, n * O * sizeof(floating))
            activation_grad_rows(n * O, d.out_act, hs + row * P, dypre)
            # dL/dh[s] = dypre @ w_ho    (n, H) = (n, O) x (O, H)
            packed_product(n, H, O, dypre, O, <floating *>d.w_ho_bp, False, dgates, H)
            activation_grad_rows(n * H, d.act, gates, dgates)
            # dy[s-1] = da @ w_hh    (n, O) = (n, H) x (H, O)
            packed_product(n, O, H, dgates, H, w_hh_bp, False, dh, O)
        elif d.kind == LSTM:
            dmj = dh
            if d.w_hr != NULL:
                memcpy(<floating *>d.dhtot + row * P, dh, n * P * sizeof(floating))
                # dm = dh @ w_hr    (n, H) = (n, P) x (P, H)
                packed_product(n, H, P, dh, P, <floating *>d.w_hr_bp, False, dm, H)
                dmj = dm
            if d.layer_norm:
                lstm_backward_ln(n, H, d.coupled, <floating *>d.w_ci, <floating *>d.w_cf, <floating *>d.w_co,
                                 gates, cell_at(d, tag, s - 1), cell_new(d, tag, s), <floating *>d.w_c_ln,
                                 <floating *>d.b_c_ln, <floating *>d.ln_st_c + row * 2, dmj, <floating *>d.dc,
                                 dgates, <floating *>d.dcl + row * H, <floating *>d.g_ci, <floating *>d.g_cf,
                                 <floating *>d.g_co)
                # through LN(h[s-1] @ w_hh.T) g_hh to the raw product
                layer_norm_backward_rows(n, GH, dgates, GH, <floating *>d.w_hh_ln, <floating *>d.ln_xh_hh + row * GH,
                                         <floating *>d.ln_st_hh + row * 2, dgr, GH)
            else:
                lstm_backward(n, H, d.coupled, <floating *>d.w_ci, <floating *>d.w_cf, <floating *>d.w_co,
                              gates, cell_at(d, tag, s - 1), cell_new(d, tag, s), dmj, <floating *>d.dc, dgates,
                              <floating *>d.g_ci, <floating *>d.g_cf, <floating *>d.g_co)
                dgr = dgates
            # dh[s-1] = dgates @ w_hh    (n, P) = (n, GH) x (GH, P)
            packed_product(n, P, GH, dgr, GH, w_hh_bp, False, dh, P)
            if rmask != NULL:
                mask_rows(n, P, rmask, dh, False, dh)
        elif d.reset_after:
            dgates_h = <floating *>d.dgh + row * GH
            gru_backward_after(n, H, gates, per_step(d, d.kept, tag, s), h_prev, dh, dgates, dgates_h)
            if d.layer_norm:
                layer_norm_backward_rows(n, GH, dgates_h, GH, <floating *>d.w_hh_ln,
                                         <floating *>d.ln_xh_hh + row * GH, <floating *>d.ln_st_hh + row * 2,
                                         dgr, GH)
            else:
                dgr = dgates_h
            if rmask != NULL:
                # d(h[s-1] * mask) = dgr @ w_hh, then times the mask    (n, H) = (n, 3H) x (3H, H)
                packed_product(n, H, GH, dgr, GH, w_hh_bp, False, dr, H)
                mask_rows(n, H, rmask, dr, True, dh)
            else:
                # dh[s-1] += dgr @ w_hh    (n, H) += (n, 3H) x (3H, H)
                packed_product(n, H, GH, dgr, GH, w_hh_bp, True, dh, H)
        else:
            gru_backward_before_zn(n, H, gates, h_prev, dh, dgates)
            # d(r * h[s-1]) = da_n @ w_hh[2H:]    (n, H) = (n, H) x (H, H)
            packed_product(n, H, H, dgates + 2 * H, GH, w_hh_bp + packed_values(H, 2 * H, tag), False, dm, H)
            if rmask != NULL:
                # both products read h[s-1] * mask: their gradients gather in dr, then the mask
                mask_rows(n, H, rmask, h_prev, False, <floating *>d.hm)
                memset(dr, 0, n * H * sizeof(floating))
                gru_backward_before_r(n, H, gates, <floating *>d.hm, dm, dr, dgates)
                packed_product(n, H, 2 * H, dgates, GH, w_hh_bp, True, dr, H)
                mask_rows(n, H, rmask, dr, True, dh)
            else:
                gru_backward_before_r(n, H, gates, h_prev, dm, dh, dgates)
                # dh[s-1] += da_rz @ w_hh[:2H]    (n, H) += (n, 2H) x (2H, H)
                packed_product(n, H, 2 * H, dgates, GH, w_hh_bp, True, dh, H)
        if d.zoned_h:
            add_rows(n, P, <floating *>d.dz, P, dh)
        if d.kind == LSTM and d.zoned_c:
            add_rows(n, H, <floating *>d.dzc, H, <floating *>d.dc)


cdef inline void team_share(Py_ssize_t total, int align, int member, int team, Py_ssize_t *lo,
                            Py_ssize_t *hi) noexcept nogil:
    """[lo, hi): team member `member`'s share of `total` items, cut at multiples of `align`
    (whole register tiles), the last share taking the rest."""
    cdef Py_ssize_t blocks = (total + align - 1) // align
    lo[0] = min(total, blocks * member // team * align)
    hi[0] = min(total, blocks * (member + 1) // team * align)


cdef void weight_gradients(Direction *d, floating *tag, int member, int team) noexcept nogil:
    """The products over the steps, after the time loop: chunk by chunk of grad_chunk
    steps (counted from the plan's first step), last chunk first, each added into the
    gradients, so that a lean backward, whose segments start at whole chunks, adds the
    same terms in the same order (`contract.GRADIENT_CHUNK`). Run by a team of `team`
    threads (this one is `member`; one: the whole), each adds its own rows of every
    product and its own columns of every column sum, chunk after chunk: each element
    sums in the same order whatever the team."""
    cdef Py_ssize_t s, c0, c1, lo, hi, a, b
    cdef Py_ssize_t chunks = (d.S + d.grad_chunk - 1) // d.grad_chunk
    cdef Py_ssize_t k
    s = member
    while s < d.S:      # the team's steps round-robin (a range's step must be a constant)
        memcpy(<floating *>d.hprev + d.step_row[s] * d.P, state_before(d, <floating *>d.hs, s),
               d.active[s] * d.P * sizeof(floating))
        if d.rmask != NULL:
            # the recurrent product's input: h[s-1] * mask
            mask_rows(d.active[s], d.P, <floating *>d.rmask, <floating *>d.hprev + d.step_row[s] * d.P, False,
                      <floating *>d.hprev + d.step_row[s] * d.P)
        s += team
    if team > 1:
        rc_team_barrier()       # every member reads every step's h_prev
    for k in range(chunks - 1, -1, -1):
        c0 = k * d.grad_chunk
        c1 = min(c0 + d.grad_chunk, <Py_ssize_t>d.S)
        # a chunk's steps are one block of slot rows, in either direction
        a, b = d.step_row[c0], d.step_row[c1 - 1]
        lo = min(a, b)
        hi = max(a + d.active[c0], b + d.active[c1 - 1])
        chunk_gradients(d, lo, hi, tag, member, team)


cdef inline void share_product(int m, int n, int k, const floating *a, int lda, const floating *b, int ldb,
                               floating *c, int ldc, floating *scratch, int member, int team) noexcept nogil:
    """This member's rows of gradient_product (c (m, n) += a.T @ b)."""
    cdef Py_ssize_t r0, r1
    team_share(m, 8, member, team, &r0, &r1)
    if r1 > r0:
        gradient_product(<int>(r1 - r0), n, k, a + r0, lda, b, ldb, c + r0 * ldc, ldc, scratch)


cdef inline void share_column_sums(Py_ssize_t rows, int width, Py_ssize_t ld, const floating *m, floating *sums,
                                   floating *twin, int member, int team) noexcept nogil:
    """This member's columns of column_sums (twin: NULL, or a second sums array)."""
    cdef Py_ssize_t j0, j1
    team_share(width, 16, member, team, &j0, &j1)
    if j1 > j0:
        column_sums(rows, <int>(j1 - j0), ld, m + j0, sums + j0, NULL if twin == NULL else twin + j0)


cdef void chunk_gradients(Direction *d, Py_ssize_t lo, Py_ssize_t hi, floating *tag, int member,
                          int team) noexcept nogil:
    """The weight gradients' products over the slot rows [lo, hi), added in: this team
    member's share (see weight_gradients)."""
    cdef int H = d.H, GH = d.GH, P = d.P, O = d.O, I = d.input_size, N = <int>(hi - lo)
    cdef floating *hprev = <floating *>d.hprev + lo * P
    cdef floating *dgx = <floating *>d.dgx + lo * GH
    cdef floating *dgh = <floating *>d.dgh + lo * GH
    cdef floating *dgr = <floating *>d.dgr + lo * GH
    cdef floating *x = <floating *>d.x + lo * d.ldx
    cdef floating *c_new
    cdef floating *pack = <floating *>d.g_pack + member * layer_gradient_scratch(
        GH, P, O, I, H, d.grad_chunk * d.B, sizeof(floating))
    cdef Py_ssize_t j0, j1, r0, r1
    if d.layer_norm:
        # the biases' and the gains' gradients (dgh: of LN(W_hh h) g_hh, the LSTM's dgx) in
        # one read of dG and the kept xhat, then dgx in place through LN(W_ih x) g_ih to the
        # raw input product
        team_share(GH, 16, member, team, &j0, &j1)
        if j1 > j0:
            layer_norm_sums(N, <int>(j1 - j0), dgx + j0, <floating *>d.ln_xh_ih + lo * GH + j0, dgh + j0,
                            <floating *>d.ln_xh_hh + lo * GH + j0, GH,
                            NULL if d.g_b_ih == NULL else <floating *>d.g_b_ih + j0, <floating *>d.g_ih_ln + j0,
                            NULL if d.g_b_ih == NULL else <floating *>d.g_b_hh + j0, <floating *>d.g_hh_ln + j0)
        if d.kind == LSTM and member == 0:
            c_new = <floating *>(d.c_tilde if d.c_tilde != NULL else d.c_buf)
            layer_norm_cell_grads(N, H, <floating *>d.dcl + lo * H, c_new + lo * H, H,
                                  <floating *>d.ln_st_c + lo * 2, <floating *>d.g_c_ln, <floating *>d.g_bc_ln)
        if team > 1:
            rc_team_barrier()   # the sums above read dgx as it was
        team_share(N, 8, member, team, &r0, &r1)
        if r1 > r0:
            layer_norm_backward_rows(<int>(r1 - r0), GH, dgx + r0 * GH, GH, <floating *>d.w_ih_ln,
                                     <floating *>d.ln_xh_ih + (lo + r0) * GH, <floating *>d.ln_st_ih + (lo + r0) * 2,
                                     dgx + r0 * GH, GH)
        if team > 1:
            rc_team_barrier()   # the products below read every row of the new dgx
    elif d.g_b_ih != NULL:
        if dgh == dgx:
            # one gradient for both biases (they add to the same gates): dG read once
            share_column_sums(N, GH, GH, dgx, <floating *>d.g_b_ih, <floating *>d.g_b_hh, member, team)
        else:
            # the reset-after GRU, the one layer with a dgh of its own: its r and z blocks are
            # dgx's (rc_gru_backward_after), read once for both biases; the n blocks differ
            # by the factor r
            share_column_sums(N, 2 * H, GH, dgx, <floating *>d.g_b_ih, <floating *>d.g_b_hh, member, team)
            share_column_sums(N, H, GH, dgx + 2 * H, <floating *>d.g_b_ih + 2 * H, NULL, member, team)
            share_column_sums(N, H, GH, dgh + 2 * H, <floating *>d.g_b_hh + 2 * H, NULL, member, team)
    # dW_ih += dgates_x.T @ x    (GH, I) = (GH, N) x (N, I)
    share_product(GH, I, N, dgx, GH, x, <int>d.ldx, <floating *>d.g_w_ih, I, pack, member, team)
    if d.kind == GRU and not d.reset_after:
        # dW_hh[:2H] += da_rz.T @ h_prev    (2H, H) = (2H, N) x (N, H)
        share_product(2 * H, H, N, dgx, GH, hprev, H, <floating *>d.g_w_hh, H, pack, member, team)
        # dW_hh[2H:] += da_n.T @ (r * h_prev)    (H, H) = (H, N) x (N, H)
        share_product(H, H, N, dgx + 2 * H, GH, <floating *>d.kept + lo * H, H, <floating *>d.g_w_hh + 2 * H * H,
                      H, pack, member, team)
    else:
        # dW_hh += dgr.T @ h_prev    (GH, P) = (GH, N) x (N, P): dgr the raw product's gradient
        share_product(GH, P, N, dgr, GH, hprev, P, <floating *>d.g_w_hh, P, pack, member, team)
    if d.kind == LSTM and d.w_hr != NULL:
        # dW_hr += dh.T @ m    (P, H) = (P, N) x (N, H)
        share_product(P, H, N, <floating *>d.dhtot + lo * P, P, <floating *>d.m_buf + lo * H, H,
                      <floating *>d.g_w_hr, H, pack, member, team)
    if d.kind == JORDAN:
        # dW_ho += dypre.T @ h    (O, H) = (O, N) x (N, H)
        share_product(O, H, N, <floating *>d.dypre + lo * O, O, <floating *>d.xp + lo * H, H,
                      <floating *>d.g_w_ho, H, pack, member, team)
        if d.g_b_ho != NULL:
            share_column_sums(N, O, O, <floating *>d.dypre + lo * O, <floating *>d.g_b_ho, NULL, member, team)
    # dx (+)= dgates_x @ w_ih    (N, I) = (N, GH) x (GH, I), this member's rows; no dx
    # asked for (the first layer of a model whose input needs none), no product
    if d.dx == NULL:
        return
    team_share(N, 8, member, team, &r0, &r1)
    if r1 > r0:
        packed_product(<int>(r1 - r0), I, GH, dgx + r0 * GH, GH, <floating *>d.w_ih_bp, d.dx_accumulate,
                       <floating *>d.dx + (lo + r0) * d.ldx_out, <int>d.ldx_out)


# -- the plan: the one description of what backend.py hands over ---------------------------
#
# backend.py hands over one `Plan` per direction: a `Direction` struct and the arrays its
# pointers point into. _PLAN below is the only description of its fields: each name, the
# kind of its value, when it is required, and the Direction field it fills. A field is
# checked once, when it is assigned (an attribute, or a keyword of the constructor), and
# refused, naming it, if its value is of the wrong kind; before a stage runs, a plan
# lacking a field its kind, variant or stage requires is refused. So a misspelling on
# either side is an error and not a read of uninitialised memory, and a call copies
# structs and looks nothing up.
#
# Kinds: "flag" (a C int, 0 or 1), "code" (a C int, 0 to 3: a kind or an activation),
# "int" and "size" (a C int, a Py_ssize_t, not negative); "real" (a C-contiguous array of
# the plan's float type); "intp" and "intc" (C-contiguous integer arrays). None clears a
# field (NULL or 0). Required when: "always"; "optional" (NULL or 0 when absent); or any of
# the conditions of _CONDITIONS joined by "|", after "backward" for what only the backward
# stages read. What backend.py keeps in a plan for itself (`last_rows`, `params`) are
# ordinary attributes, not read here.

cdef Direction _probe              # only the addresses of its fields are used


cdef Py_ssize_t _at(void *field):
    return <char *>field - <char *>&_probe


_PLAN = (
    # name           kind     required when                 Direction field
    ("kind",         "code",  "always",                     _at(&_probe.kind)),
    ("act",          "code",  "always",                     _at(&_probe.act)),
    ("out_act",      "code",  "always",                     _at(&_probe.out_act)),
    ("coupled",      "flag",  "always",                     _at(&_probe.coupled)),
    ("reset_after",  "flag",  "always",                     _at(&_probe.reset_after)),
    ("training",     "flag",  "always",                     _at(&_probe.training)),
    ("B",            "int",   "always",                     _at(&_probe.B)),
    ("S",            "int",   "always",                     _at(&_probe.S)),
    ("H",            "int",   "always",                     _at(&_probe.H)),
    ("GH",           "int",   "always",                     _at(&_probe.GH)),
    ("P",            "int",   "always",                     _at(&_probe.P)),
    ("O",            "int",   "always",                     _at(&_probe.O)),
    ("ring_rows",    "size",  "always",                     _at(&_probe.ring_rows)),
    ("I",            "int",   "always",                     _at(&_probe.input_size)),
    ("N",            "size",  "always",                     _at(&_probe.N)),
    ("step_row",     "intp",  "always",                     _at(&_probe.step_row)),
    ("active",       "intc",  "always",                     _at(&_probe.active)),
    ("w_ih",         "real",  "always",                     _at(&_probe.w_ih)),
    ("w_hh",         "real",  "always",                     _at(&_probe.w_hh)),
    ("bias_x",       "real",  "optional",                   _at(&_probe.bias_x)),
    ("b_hn",         "real",  "optional",                   _at(&_probe.b_hn)),
    ("w_hr",         "real",  "optional",                   _at(&_probe.w_hr)),
    ("w_ci",         "real",  "optional",                   _at(&_probe.w_ci)),
    ("w_cf",         "real",  "peephole_f",                 _at(&_probe.w_cf)),
    ("w_co",         "real",  "peephole",                   _at(&_probe.w_co)),
    ("w_ho",         "real",  "jordan",                     _at(&_probe.w_ho)),
    ("b_ho",         "real",  "optional",                   _at(&_probe.b_ho)),
    ("w_ih_p",       "real",  "always",                     _at(&_probe.w_ih_p)),
    ("w_hh_p",       "real",  "always",                     _at(&_probe.w_hh_p)),
    ("w_hr_p",       "real",  "proj",                       _at(&_probe.w_hr_p)),
    ("w_ho_p",       "real",  "jordan",                     _at(&_probe.w_ho_p)),
    ("x",            "real",  "always",                     _at(&_probe.x)),
    ("ldx",          "size",  "always",                     _at(&_probe.ldx)),
    ("xp",           "real",  "projected",                  _at(&_probe.xp)),
    ("hs",           "real",  "always",                     _at(&_probe.hs)),
    ("h0",           "real",  "always",                     _at(&_probe.h0)),
    ("c0",           "real",  "lstm",                       _at(&_probe.c0)),
    ("c_buf",        "real",  "lstm",                       _at(&_probe.c_buf)),
    ("m_buf",        "real",  "proj",                       _at(&_probe.m_buf)),
    ("kept",         "real",  "gru",                        _at(&_probe.kept)),
    ("hh",           "real",  "gru_after|ln_lstm",          _at(&_probe.hh)),
    ("dy",           "real",  "backward",                   _at(&_probe.dy)),
    ("dy_offset",    "size",  "backward",                   _at(&_probe.dy_offset)),
    ("ldy",          "size",  "backward",                   _at(&_probe.ldy)),
    ("dgx",          "real",  "backward",                   _at(&_probe.dgx)),
    ("dgh",          "real",  "backward",                   _at(&_probe.dgh)),
    ("dh",           "real",  "backward",                   _at(&_probe.dh)),
    ("dc",           "real",  "backward lstm",              _at(&_probe.dc)),
    ("dm",           "real",  "backward proj|gru_before",   _at(&_probe.dm)),
    ("dhtot",        "real",  "backward proj",              _at(&_probe.dhtot)),
    ("dypre",        "real",  "backward jordan",            _at(&_probe.dypre)),
    ("hprev",        "real",  "backward",                   _at(&_probe.hprev)),
    ("w_hh_bp",      "real",  "backward",                   _at(&_probe.w_hh_bp)),
    ("w_ih_bp",      "real",  "backward input_grad",        _at(&_probe.w_ih_bp)),
    ("g_pack",       "real",  "backward",                   _at(&_probe.g_pack)),
    ("w_hr_bp",      "real",  "backward proj",              _at(&_probe.w_hr_bp)),
    ("w_ho_bp",      "real",  "backward jordan",            _at(&_probe.w_ho_bp)),
    ("g_w_ih",       "real",  "backward",                   _at(&_probe.g_w_ih)),
    ("g_w_hh",       "real",  "backward",                   _at(&_probe.g_w_hh)),
    ("g_b_ih",       "real",  "backward bias",              _at(&_probe.g_b_ih)),
    ("g_b_hh",       "real",  "backward bias",              _at(&_probe.g_b_hh)),
    ("g_w_hr",       "real",  "backward proj",              _at(&_probe.g_w_hr)),
    ("g_ci",         "real",  "backward peephole",          _at(&_probe.g_ci)),
    ("g_cf",         "real",  "backward peephole_f",        _at(&_probe.g_cf)),
    ("g_co",         "real",  "backward peephole",          _at(&_probe.g_co)),
    ("g_w_ho",       "real",  "backward jordan",            _at(&_probe.g_w_ho)),
    ("g_b_ho",       "real",  "backward out_bias",          _at(&_probe.g_b_ho)),
    ("dx",           "real",  "optional",                   _at(&_probe.dx)),
    ("ldx_out",      "size",  "backward",                   _at(&_probe.ldx_out)),
    ("grad_chunk",   "size",  "backward",                   _at(&_probe.grad_chunk)),
    ("dx_accumulate", "flag", "backward",                   _at(&_probe.dx_accumulate)),
    ("layer_norm",   "flag",  "always",                     _at(&_probe.layer_norm)),
    ("zoned_h",      "flag",  "always",                     _at(&_probe.zoned_h)),
    ("zoned_c",      "flag",  "always",                     _at(&_probe.zoned_c)),
    ("zoneout",      "real",  "zoned",                      _at(&_probe.zoneout)),
    ("zmask_h",      "real",  "optional",                   _at(&_probe.zmask_h)),
    ("zmask_c",      "real",  "optional",                   _at(&_probe.zmask_c)),
    ("rmask",        "real",  "optional",                   _at(&_probe.rmask)),
    ("hm",           "real",  "dropout",                    _at(&_probe.hm)),
    ("c_tilde",      "real",  "kept_c",                     _at(&_probe.c_tilde)),
    ("w_ih_ln",      "real",  "layer_norm",                 _at(&_probe.w_ih_ln)),
    ("w_hh_ln",      "real",  "layer_norm",                 _at(&_probe.w_hh_ln)),
    ("w_c_ln",       "real",  "ln_lstm",                    _at(&_probe.w_c_ln)),
    ("b_c_ln",       "real",  "ln_lstm",                    _at(&_probe.b_c_ln)),
    ("ln_xh_ih",     "real",  "ln_training",                _at(&_probe.ln_xh_ih)),
    ("ln_xh_hh",     "real",  "ln_training",                _at(&_probe.ln_xh_hh)),
    ("ln_st_ih",     "real",  "ln_training",                _at(&_probe.ln_st_ih)),
    ("ln_st_hh",     "real",  "ln_training",                _at(&_probe.ln_st_hh)),
    ("ln_st_c",      "real",  "ln_lstm_training",           _at(&_probe.ln_st_c)),
    ("dz",           "real",  "backward zoned",             _at(&_probe.dz)),
    ("dzc",          "real",  "backward kept_c",            _at(&_probe.dzc)),
    ("dr",           "real",  "backward dropout",           _at(&_probe.dr)),
    ("dgr",          "real",  "backward",                   _at(&_probe.dgr)),
    ("dcl",          "real",  "backward ln_lstm",           _at(&_probe.dcl)),
    ("g_ih_ln",      "real",  "backward layer_norm",        _at(&_probe.g_ih_ln)),
    ("g_hh_ln",      "real",  "backward layer_norm",        _at(&_probe.g_hh_ln)),
    ("g_c_ln",       "real",  "backward ln_lstm",           _at(&_probe.g_c_ln)),
    ("g_bc_ln",      "real",  "backward ln_lstm",           _at(&_probe.g_bc_ln)),
)
PLAN_SCHEMA = tuple(entry[:3] for entry in _PLAN)

# the conditions a field may be required on, bit k of `_conditions` for _CONDITIONS[k]
_CONDITIONS = ("always", "rnn", "jordan", "lstm", "gru", "gru_after", "gru_before", "proj", "peephole",
               "peephole_f", "bias", "out_bias", "projected", "layer_norm", "ln_lstm", "ln_training",
               "ln_lstm_training", "zoned", "kept_c", "dropout", "input_grad")


cdef unsigned int _conditions(const Direction *d) noexcept:
    cdef bint gru = d.kind == GRU, peephole = d.w_ci != NULL, ln = d.layer_norm != 0
    return (1                                                 # always
            | (d.kind == RNN) << 1
            | (d.kind == JORDAN) << 2
            | (d.kind == LSTM) << 3
            | gru << 4
            | (gru and d.reset_after != 0) << 5              # gru_after
            | (gru and d.reset_after == 0) << 6              # gru_before
            | (d.w_hr != NULL) << 7                          # proj: LSTM with a projection
            | peephole << 8
            | (peephole and d.coupled == 0) << 9             # peephole_f: with a forget gate
            | (d.bias_x != NULL) << 10                       # bias
            | (d.b_ho != NULL) << 11                         # out_bias: Jordan's output bias
            | (not input_in_steps(d)) << 12                  # projected: the steps read xp
            | (ln != 0) << 13                                # layer_norm
            | (ln and d.kind == LSTM) << 14                  # ln_lstm
            | (ln and d.training != 0) << 15                 # ln_training: keeps what backward reads
            | (ln and d.kind == LSTM and d.training != 0) << 16   # ln_lstm_training
            | (d.zoned_h != 0 or d.zoned_c != 0) << 17       # zoned
            | (d.kind == LSTM and d.zoned_c != 0 and d.training != 0) << 18   # kept_c: c~ apart
            | (d.rmask != NULL) << 19                        # dropout: the recurrent product's mask
            | (d.dx != NULL) << 20)                          # input_grad: the backward makes dx


cdef enum FieldKind:
    FLAG, CODE, INT, SIZE, REAL, INTP, INTC

_KINDS = {"flag": FLAG, "code": CODE, "int": INT, "size": SIZE, "real": REAL, "intp": INTP, "intc": INTC}
# the values an integer field takes: up to its C type's largest, or the flags' and codes'
_INT_RANGES = {FLAG: 1, CODE: 3, INT: 2**31 - 1, SIZE: 2**63 - 1}

cdef struct Field:
    PyObject *name                 # borrowed from _PLAN, which lives as long as the module
    FieldKind kind
    Py_ssize_t offset
    long long most                 # an integer field's largest value (its least is 0)
    unsigned int any_of            # required when one of these conditions holds; 0: optional
    bint backward                  # ... and only for the backward stages

DEF MAX_FIELDS = 128
cdef Field _fields[MAX_FIELDS]
cdef Py_ssize_t _field_count = 0
cdef dict _FIELD_INDEX = {}        # name: its index in _fields


cdef _compile_plan_schema():
    """_PLAN into the C table that Plan's assignments and checks read."""
    global _field_count
    if len(_PLAN) > MAX_FIELDS:
        raise ValueError(f"_PLAN: expected at most {MAX_FIELDS} fields, got {len(_PLAN)}")
    for k, (name, kind, when, offset) in enumerate(_PLAN):
        words = when.split()
        backward = words[:1] == ["backward"]
        if backward:
            words = words[1:] or ["always"]
        names = [] if words == ["optional"] else words[0].split("|")
        unknown = [condition for condition in names if condition not in _CONDITIONS]
        if len(words) != 1 or unknown:
            raise ValueError(f"_PLAN[{name!r}]: expected a required-when of {_CONDITIONS}, got {when!r}")
        _fields[k].name = <PyObject *>name
        _fields[k].kind = _KINDS[kind]
        _fields[k].offset = offset
        _fields[k].most = _INT_RANGES.get(_KINDS[kind], 0)
        _fields[k].any_of = 0
        for condition in names:
            _fields[k].any_of |= 1u << _CONDITIONS.index(condition)
        _fields[k].backward = backward
        _FIELD_INDEX[name] = k
    _field_count = len(_PLAN)


_compile_plan_schema()


cdef str _expected(const Field *f, bint is_double):
    if f.kind == FLAG:
        return "0 or 1"
    if f.kind <= SIZE:
        return f"an integer from 0 to {f.most}"
    names = {REAL: "float64" if is_double else "float32", INTP: "intp", INTC: "intc"}
    return f"a C-contiguous {names[f.kind]} array"


cdef object _store(char *at, object value, const Field *f, bint is_double):
    """Write value into the field at `at` and return it (an integer as a Python int), or
    raise naming the field, writing nothing."""
    cdef long long number
    cdef int small
    cdef Py_ssize_t size
    cdef void *data
    cdef int want
    cdef bint fits
    if f.kind <= SIZE:
        try:
            # an integer or what stands for one (a NumPy integer, not a one-element array)
            value = PyNumber_Index(value)
        except TypeError:
            raise TypeError(f"plan.{<object>f.name}: expected {_expected(f, is_double)}, "
                            f"got {type(value).__name__}") from None
        try:
            number = value
            fits = 0 <= number <= f.most
        except OverflowError:
            fits = False
        if not fits:
            raise ValueError(f"plan.{<object>f.name}: expected {_expected(f, is_double)}, got {value!r}")
        # memcpy: a field is written through its address, as bytes (no aliasing question)
        if f.kind == SIZE:
            size = <Py_ssize_t>number
            memcpy(at, &size, sizeof(Py_ssize_t))
        else:
            small = <int>number
            memcpy(at, &small, sizeof(int))
        return value
    want = (cnp.NPY_FLOAT64 if is_double else cnp.NPY_FLOAT32) if f.kind == REAL else \
        (cnp.NPY_INTP if f.kind == INTP else cnp.NPY_INT)
    # the type numbers compared first: PyArray_EquivTypenums (long and long long, say) is slow
    if not (cnp.PyArray_Check(value) and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>value)
            and (cnp.PyArray_TYPE(<cnp.ndarray>value) == want
                 or cnp.PyArray_EquivTypenums(cnp.PyArray_TYPE(<cnp.ndarray>value), want))):
        got = (f"{'' if value.flags.c_contiguous else 'non-contiguous '}{value.dtype} array"
               if isinstance(value, cnp.ndarray) else type(value).__name__)
        raise TypeError(f"plan.{<object>f.name}: expected {_expected(f, is_double)}, got {got}")
    data = cnp.PyArray_DATA(<cnp.ndarray>value)
    memcpy(at, &data, sizeof(void *))
    return value


cdef class Plan:
    """What the compiled stages compute for one direction: a `Direction` and the arrays
    it points into, which the plan keeps alive. Fields are set by keyword or by
    attribute, each checked as it is set (see _PLAN); a field read back is the value
    given, or None. `is_double` sets the float type of every "real" array.

    Plan(is_double, **fields); `check(backward)` refuses a plan that lacks a required
    field, as the stages do before any work; `copy()` is a plan of its own with the same
    fields (the arrays shared), to which more may be added without touching this one."""
    cdef Direction d
    cdef readonly bint is_double
    cdef list held                 # each field's value as set, or None (absent): keeps the
                                   # arrays alive, and is what a field reads back
    cdef public object last_rows   # kept by backend.py for itself, not read here
    cdef public object params

    def __cinit__(self):
        self.held = [None] * _field_count

    def __init__(self, bint is_double, **fields):
        self.is_double = is_double
        for name, value in fields.items():
            self._set(name, value)

    cdef int _set(self, object name, object value) except -1:
        cdef PyObject *index = PyDict_GetItemWithError(<PyObject *>_FIELD_INDEX, <PyObject *>name)
        cdef Py_ssize_t k
        cdef const Field *f
        if index == NULL:
            if name == "last_rows":
                self.last_rows = value
            elif name == "params":
                self.params = value
            else:
                raise AttributeError(f"plan: expected a field of PLAN_SCHEMA, last_rows or params, got {name!r}")
            return 0
        k = <object>index
        f = &_fields[k]
        if value is None:
            memset(<char *>&self.d + f.offset, 0,
                   sizeof(int) if f.kind < SIZE else sizeof(Py_ssize_t) if f.kind == SIZE else sizeof(void *))
        else:
            value = _store(<char *>&self.d + f.offset, value, f, self.is_double)
        self.held[k] = value
        return 0

    def __setattr__(self, name, value):
        self._set(name, value)

    def __getattribute__(self, name):
        # the fields first: a __getattr__ would be reached only after the class's own
        # lookup had raised and cleared an AttributeError, ten times the cost of a read
        cdef PyObject *index = PyDict_GetItemWithError(<PyObject *>_FIELD_INDEX, <PyObject *>name)
        if index != NULL:
            return self.held[<Py_ssize_t><object>index]
        try:
            return PyObject_GenericGetAttr(self, name)
        except AttributeError:
            raise AttributeError(f"plan: expected a field of PLAN_SCHEMA, last_rows or params, "
                                 f"got {name!r}") from None

    cdef int _check(self, bint backward) except -1:
        cdef unsigned int holds = _conditions(&self.d)
        cdef Py_ssize_t k
        cdef const Field *f
        for k in range(_field_count):
            f = &_fields[k]
            if f.any_of & holds and (backward or not f.backward) and self.held[k] is None:
                raise ValueError(f"plan.{<object>f.name}: expected {_expected(f, self.is_double)} "
                                 f"(required: {PLAN_SCHEMA[k][2]}), got None")
        return 0

    def check(self, bint backward):
        """Refuse the plan, as the stages (backward: the backward ones) would before any
        work: ValueError naming the first required field it lacks; else None."""
        self._check(backward)

    def copy(self):
        cdef Plan other = Plan.__new__(Plan)
        other.d, other.is_double, other.held = self.d, self.is_double, self.held[:]
        other.last_rows, other.params = self.last_rows, self.params
        return other


cdef int _load(object item, Direction *d, bint backward, Py_ssize_t index, bint is_double) except -1:
    """d <- the Direction of plans[index] (a Plan of the float type `is_double`), once
    its required fields are checked."""
    cdef Plan plan
    if not isinstance(item, Plan):
        raise TypeError(f"plans[{index}]: expected a Plan, got {type(item).__name__}")
    plan = <Plan>item
    if plan.is_double != is_double:
        raise TypeError(f"plans[{index}]: expected a {'float64' if is_double else 'float32'} plan like plans[0], "
                        f"got a {'float64' if plan.is_double else 'float32'} one")
    plan._check(backward)
    d[0] = plan.d
    if d.dy != NULL:
        # dy's rows hold both directions side by side: start at this direction's columns
        d.dy = <char *>d.dy + d.dy_offset * (sizeof(double) if is_double else sizeof(float))
    return 0


def _layout_problems(entries=_PLAN):
    """Where `entries` (_PLAN) and the Direction struct disagree: bytes no field of the
    table fills beyond the alignment padding, or two on one field. Empty when every
    struct field has its entry (they are laid out in order, each at its natural
    alignment)."""
    sizes = {"size": sizeof(Py_ssize_t), "int": sizeof(int), "flag": sizeof(int), "code": sizeof(int)}
    fields = sorted((offset, sizes.get(kind, sizeof(void *)), name) for name, kind, _, offset in entries)
    problems, end = [], 0
    for offset, size, name in fields:
        aligned = -(-end // size) * size
        if offset != aligned:
            problems.append(f"{name!r} at byte {offset}, expected {aligned}")
        end = offset + size
    widest = max(sizeof(void *), sizeof(Py_ssize_t))
    if -(-end // widest) * widest != sizeof(Direction):
        problems.append(f"the last field ends at byte {end}, the struct at {sizeof(Direction)}")
    return problems


# -- Python entry points: load the plans, release the GIL, run ------------------------------

DEF INPUT_PROJECTION = 0
DEF FORWARD_STEPS = 1
DEF BACKWARD_STEPS = 2
DEF WEIGHT_GRADIENTS = 3
DEF PACK_WEIGHTS = 4
DEF PACK_BACKWARD = 5


cdef void _run_one(Direction *d, int stage, bint is_double) noexcept nogil:
    # on the thread that runs the stage, whichever it is (see rc_denormals_off)
    cdef unsigned int control = rc_denormals_off()
    if is_double:
        _run_typed(d, stage, <double *>NULL)
    else:
        _run_typed(d, stage, <float *>NULL)
    rc_denormals_restore(control)


cdef void _run_typed(Direction *d, int stage, floating *tag) noexcept nogil:
    if stage == PACK_WEIGHTS:
        pack_weights(d, tag)
    elif stage == PACK_BACKWARD:
        pack_backward(d, tag)
    elif stage == INPUT_PROJECTION:
        input_projection(d, tag)
    elif stage == FORWARD_STEPS:
        forward_steps(d, tag)
    elif stage == BACKWARD_STEPS:
        backward_steps(d, tag)
    else:
        weight_gradients(d, tag, 0, 1)


# -- threads -----------------------------------------------------------------------------
#
# Fork. A forked child has only the thread that called fork, but libgomp's record of the
# parent's thread team comes along, so the child's first parallel region waits forever
# for threads that do not exist. Before every fork the forking thread ends its team
# (OpenMP 5.0's omp_pause_resource_all), so that a child starts a new one; where that is
# unavailable, a child runs the directions one after the other.
cdef extern from *:
    """
    #if defined(_OPENMP) && (_OPENMP >= 201811 || (defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 9))
    #include <omp.h>
    static int rc_end_thread_team(void) { return omp_pause_resource_all(omp_pause_hard) == 0; }
    #elif defined(_OPENMP)
    static int rc_end_thread_team(void) { return 0; }
    #else
    static int rc_end_thread_team(void) { return 1; }  /* no OpenMP: prange runs in the caller */
    #endif
    #if defined(_WIN32)
    static int rc_at_fork(void (*prepare)(void), void (*child)(void)) { return 0; }  /* no fork */
    #else
    #include <pthread.h>
    static int rc_at_fork(void (*prepare)(void), void (*child)(void)) { return pthread_atfork(prepare, NULL, child); }
    #endif
    """
    int rc_end_thread_team() noexcept nogil
    int rc_at_fork(void (*prepare)() noexcept nogil, void (*child)() noexcept nogil) noexcept nogil

cdef extern from "pythread.h" nogil:
    # declared here with nogil: the kernels' section and the fork handler run without the GIL
    ctypedef void *PyThread_type_lock
    PyThread_type_lock PyThread_allocate_lock()
    int PyThread_acquire_lock(PyThread_type_lock lock, int mode)
    void PyThread_release_lock(PyThread_type_lock lock)
    int WAIT_LOCK

cdef bint _team_ended = True, _team_lost = False

# BLAS at one thread while the kernels run. Threaded BLAS splits a product differently
# for each thread count, and so rounds it differently, so the kernels' BLAS runs on one
# thread whatever the thread setting and whichever thread calls; the directions running
# side by side are the threads. `configure_blas` gives the getter and setter of each
# library's thread count (rnncore.backends.registry.blas_thread_functions). A process-wide setting
# is changed by the first caller in and put back by the last one out (unless someone else
# changed it meanwhile), so that concurrent and nested callers never put back each
# other's; a per-thread setting is changed and put back by each caller. The numba backend
# calls `blas_enter`/`blas_leave`, so both backends count here.
DEF MAX_BLAS_LIBS = 4

ctypedef int (*thread_getter)() noexcept nogil
ctypedef void (*thread_setter)(int) noexcept nogil

cdef struct BlasThreads:
    thread_getter get
    thread_setter set
    bint per_thread
    int saved                      # a process-wide setting, while callers are inside

cdef BlasThreads _blas[MAX_BLAS_LIBS]
cdef int _blas_count = 0, _blas_callers = 0
cdef PyThread_type_lock _blas_lock = PyThread_allocate_lock()


cdef void _blas_enter(int *own) noexcept nogil:
    """own[k]: library k's setting before, for a per-thread setting (else 1)."""
    global _blas_callers
    cdef int k
    PyThread_acquire_lock(_blas_lock, WAIT_LOCK)
    for k in range(_blas_count):
        own[k] = 1
        if _blas[k].per_thread:
            own[k] = _blas[k].get()
            if own[k] != 1:
                _blas[k].set(1)
        elif _blas_callers == 0:
            _blas[k].saved = _blas[k].get()
            if _blas[k].saved != 1:
                _blas[k].set(1)
    _blas_callers += 1
    PyThread_release_lock(_blas_lock)


cdef void _blas_leave(const int *own) noexcept nogil:
    global _blas_callers
    cdef int k
    PyThread_acquire_lock(_blas_lock, WAIT_LOCK)
    _blas_callers -= 1
    for k in range(_blas_count):
        if _blas[k].per_thread:
            if own[k] != 1:
                _blas[k].set(own[k])
        elif _blas_callers == 0 and _blas[k].saved != 1 and _blas[k].get() == 1:
            _blas[k].set(_blas[k].saved)
    PyThread_release_lock(_blas_lock)


cdef void _before_fork() noexcept nogil:
    global _team_ended
    _team_ended = rc_end_thread_team()


cdef void _in_forked_child() noexcept nogil:
    global _team_lost, _blas_lock, _blas_callers
    cdef int k
    if not _team_ended:
        _team_lost = True
    # the threads inside a BLAS section did not come along (one may have held the lock)
    _blas_lock = PyThread_allocate_lock()
    if _blas_callers:
        for k in range(_blas_count):
            if not _blas[k].per_thread and _blas[k].saved != 1:
                _blas[k].set(_blas[k].saved)
        _blas_callers = 0


rc_at_fork(_before_fork, _in_forked_child)


def configure_blas(functions):
    """functions: (getter address, setter address, per_thread) per BLAS library."""
    global _blas_count
    if len(functions) > MAX_BLAS_LIBS:
        raise ValueError(f"functions: expected at most {MAX_BLAS_LIBS} libraries, got {len(functions)}")
    if _blas_callers:
        raise RuntimeError("configure_blas: kernels are running")
    _blas_count = 0
    for k, (get, set_, per_thread) in enumerate(functions):
        _blas[k].get = <thread_getter><size_t>get
        _blas[k].set = <thread_setter><size_t>set_
        _blas[k].per_thread = per_thread
    _blas_count = len(functions)


def blas_enter():
    """Enter the section from Python (the numba backend); returns the token for blas_leave."""
    cdef int own[MAX_BLAS_LIBS]
    _blas_enter(own)
    return tuple(own[k] for k in range(_blas_count))


def blas_leave(tuple token):
    cdef int own[MAX_BLAS_LIBS]
    cdef int k
    for k in range(len(token)):
        own[k] = token[k]
    _blas_leave(own)


# -- slices of rows ------------------------------------------------------------------------
#
# Every product sums each element in one order whatever the rows beside it, and the cell
# updates are element-wise, so a direction's rows can be split into slices that run the
# whole time loop on their own threads, with no barrier per step (ONNX Runtime's batch
# parallelism), and give the bits of one thread. A slice is a copy of the direction's
# Direction with every per-row pointer moved to its first row: the slot rows of step s
# stay at step_row[s] (the slice's rows follow the first `lo` of each step), its own
# `active` counts, and the c ring keeps the whole batch's slot size. The input
# projection splits the N slot rows into contiguous ranges instead.

cdef inline void *_rows_at(void *base, Py_ssize_t rows, Py_ssize_t width, size_t value) noexcept nogil:
    return NULL if base == NULL else <void *>(<char *>base + rows * width * <Py_ssize_t>value)


cdef void _slice_rows(const Direction *src, Direction *dst, int lo, int hi, const int *active, int steps,
                      size_t value) noexcept nogil:
    """dst <- rows lo..hi-1 (in schedule order) of src's time loop, forward and back."""
    dst[0] = src[0]
    dst.B, dst.S, dst.active = hi - lo, steps, active
    dst.x = _rows_at(src.x, lo, src.ldx, value)
    dst.xp = _rows_at(src.xp, lo, src.GH if src.kind != RNN else src.P, value)
    dst.hs = _rows_at(src.hs, lo, src.P, value)
    dst.h0 = _rows_at(src.h0, lo, src.P, value)
    dst.c0 = _rows_at(src.c0, lo, src.H, value)
    dst.c_buf = _rows_at(src.c_buf, lo, src.H, value)
    dst.m_buf = _rows_at(src.m_buf, lo, src.H, value)
    dst.kept = _rows_at(src.kept, lo, src.H, value)
    dst.hh = _rows_at(src.hh, lo, src.GH, value)
    dst.dy = _rows_at(src.dy, lo, src.ldy, value)
    dst.dgx = _rows_at(src.dgx, lo, src.GH, value)
    dst.dgh = _rows_at(src.dgh, lo, src.GH, value)
    dst.dh = _rows_at(src.dh, lo, src.P, value)
    dst.dc = _rows_at(src.dc, lo, src.H, value)
    dst.dm = _rows_at(src.dm, lo, src.H, value)
    dst.dhtot = _rows_at(src.dhtot, lo, src.P, value)
    dst.dypre = _rows_at(src.dypre, lo, src.O, value)
    dst.hprev = _rows_at(src.hprev, lo, src.P, value)
    dst.dx = _rows_at(src.dx, lo, src.ldx_out, value)
    dst.zmask_h = _rows_at(src.zmask_h, lo, src.P, value)
    dst.zmask_c = _rows_at(src.zmask_c, lo, src.H, value)
    dst.rmask = _rows_at(src.rmask, lo, src.P, value)
    dst.hm = _rows_at(src.hm, lo, src.P, value)
    dst.c_tilde = _rows_at(src.c_tilde, lo, src.H, value)
    dst.ln_xh_ih = _rows_at(src.ln_xh_ih, lo, src.GH, value)
    dst.ln_xh_hh = _rows_at(src.ln_xh_hh, lo, src.GH, value)
    dst.ln_st_ih = _rows_at(src.ln_st_ih, lo, 2, value)
    dst.ln_st_hh = _rows_at(src.ln_st_hh, lo, 2, value)
    dst.ln_st_c = _rows_at(src.ln_st_c, lo, 2, value)
    dst.dz = _rows_at(src.dz, lo, src.P, value)
    dst.dzc = _rows_at(src.dzc, lo, src.H, value)
    dst.dr = _rows_at(src.dr, lo, src.P, value)
    dst.dgr = _rows_at(src.dgr, lo, src.GH, value)
    dst.dcl = _rows_at(src.dcl, lo, src.H, value)


cdef void _slice_projection(const Direction *src, Direction *dst, Py_ssize_t first, Py_ssize_t last,
                            size_t value) noexcept nogil:
    """dst <- the input projection of slot rows first..last-1 of src."""
    dst[0] = src[0]
    dst.N = last - first
    dst.x = _rows_at(src.x, first, src.ldx, value)
    dst.xp = _rows_at(src.xp, first, src.GH, value)


cdef void _run_gradient_share(Direction *d, bint is_double) noexcept nogil:
    """The calling team member's share of the weight gradients."""
    cdef unsigned int control = rc_denormals_off()
    if is_double:
        weight_gradients(d, <double *>NULL, rc_team_member(), rc_team_size())
    else:
        weight_gradients(d, <float *>NULL, rc_team_member(), rc_team_size())
    rc_denormals_restore(control)


cdef void _run_unit_slice(Direction *d, bint is_double) noexcept nogil:
    """The calling team member's share of forward_unit_slice."""
    cdef unsigned int control = rc_denormals_off()
    if is_double:
        forward_unit_slice(d, rc_team_member(), rc_team_size(), <double *>NULL)
    else:
        forward_unit_slice(d, rc_team_member(), rc_team_size(), <float *>NULL)
    rc_denormals_restore(control)


def _run(list plans, int first, int last, int num_threads, tuple slices=None, tuple projection=None,
         int unit_threads=1):
    """Run stages first..last for each direction's plan (one or two Plans of one float
    type), each checked and copied once. `slices`: (lo, hi, active, steps) row slices of the time
    loop, shared by the directions (None: one, all rows); `projection`: the slot-row
    bounds the input projection splits at (None: one range). The slices and directions
    run side by side on up to num_threads threads; the weight gradients run one
    direction after the other (the second direction may accumulate into the first one's
    dx), each on a team of num_threads splitting its products' rows."""
    cdef Direction directions[2]
    cdef int count = len(plans), i, j, stage, n_slices, n_ranges, items
    cdef int own[MAX_BLAS_LIBS]
    cdef bint is_double
    cdef size_t value
    cdef Direction *work = NULL
    cdef int threads, units, gradient_threads
    cdef cnp.ndarray active
    if not 1 <= count <= 2:
        raise ValueError(f"plans: expected one plan per direction, 1 or 2, got {count}")
    is_double = isinstance(plans[0], Plan) and (<Plan>plans[0]).is_double
    value = sizeof(double) if is_double else sizeof(float)
    for i in range(count):
        _load(plans[i], &directions[i], first >= BACKWARD_STEPS, i, is_double)
    slices = slices or ((0, directions[0].B, None, directions[0].S),)
    projection = projection or (0, directions[0].N)
    n_slices, n_ranges = len(slices), len(projection) - 1
    work = <Direction *>calloc(count * max(n_slices, n_ranges), sizeof(Direction))
    if work == NULL:
        raise MemoryError()
    try:
        for stage in range(first, last + 1):
            if stage == INPUT_PROJECTION:
                if not all(0 <= projection[j] < projection[j + 1] <= directions[0].N for j in range(n_ranges)):
                    raise ValueError(f"projection: expected increasing slot rows from 0 to {directions[0].N}, "
                                     f"got {projection}")
                for i in range(count):
                    for j in range(n_ranges):
                        _slice_projection(&directions[i], &work[i * n_ranges + j], projection[j], projection[j + 1],
                                          value)
                items = count * n_ranges
            elif stage == FORWARD_STEPS or stage == BACKWARD_STEPS:
                for j in range(n_slices):
                    lo, hi, active_array, steps = slices[j]
                    for i in range(count):
                        if active_array is None:
                            work[i * n_slices + j] = directions[i]
                        else:
                            active = active_array
                            if (cnp.PyArray_TYPE(active) != cnp.NPY_INT or not cnp.PyArray_IS_C_CONTIGUOUS(active)
                                    or active.shape[0] < steps or not 0 <= lo < hi <= directions[i].B
                                    or not 0 <= steps <= directions[i].S):
                                raise ValueError(f"slices[{j}]: expected rows within {directions[i].B} and "
                                                 f"{directions[i].S} intc active counts, got {lo}..{hi}, "
                                                 f"{steps} steps")
                            _slice_rows(&directions[i], &work[i * n_slices + j], lo, hi,
                                        <const int *>cnp.PyArray_DATA(active), steps, value)
                items = count * n_slices
            else:
                for i in range(count):
                    work[i] = directions[i]
                items = count
            threads = min(num_threads, items) if stage != WEIGHT_GRADIENTS and not _team_lost else 1
            gradient_threads = num_threads if stage == WEIGHT_GRADIENTS and not _team_lost else 1
            units = 1
            if stage == FORWARD_STEPS and unit_threads > 1 and not _team_lost:
                if count != 1 or n_slices != 1 or slices[0][2] is not None or not unit_split(&directions[0]):
                    raise ValueError("unit_threads: expected one direction of an LSTM without projection or "
                                     "a reset-after GRU, in inference and in one slice of rows, got another plan")
                units = min(unit_threads, num_threads)
            with nogil:
                _blas_enter(own)
                if stage == INPUT_PROJECTION or stage == BACKWARD_STEPS:
                    for i in range(count):
                        _run_one(&directions[i], PACK_WEIGHTS if stage == INPUT_PROJECTION else PACK_BACKWARD,
                                 is_double)
                if units > 1:
                    with parallel(num_threads=units):
                        _run_unit_slice(&work[0], is_double)
                elif stage == WEIGHT_GRADIENTS and gradient_threads > 1:
                    # one direction after the other (the second may add into the first's dx),
                    # each by a team
                    for i in range(count):
                        with parallel(num_threads=gradient_threads):
                            _run_gradient_share(&work[i], is_double)
                elif threads > 1:
                    for i in prange(items, num_threads=threads, schedule="static", chunksize=1):
                        _run_one(&work[i], stage, is_double)
                else:
                    for i in range(items):
                        _run_one(&work[i], stage, is_double)
                _blas_leave(own)
    finally:
        free(work)


def forward_all(list plans, int num_threads, tuple slices=None, tuple projection=None, int unit_threads=1):
    """The forward stages. `unit_threads` > 1 splits the time loop of one inference
    direction by blocks of hidden units over that many threads (forward_unit_slice; see
    unit_split for the plans it takes), in place of row slices."""
    _run(plans, INPUT_PROJECTION, FORWARD_STEPS, num_threads, slices, projection, unit_threads)


def unit_blocks_of(int H, bint is_double):
    """How many blocks of hidden units a step of H units runs in: the most threads a
    split by units can use."""
    cdef int units = rc_gate_block_units(sizeof(double) if is_double else sizeof(float))
    return (H + units - 1) // units


def backward_all(list plans, int num_threads, tuple slices=None):
    _run(plans, BACKWARD_STEPS, BACKWARD_STEPS, num_threads, slices)


def weight_gradients_all(list plans, int num_threads=1):
    """The weight gradients of each direction's plan, on a team of num_threads (each plan's
    g_pack holds num_threads members' scratch: gradient_scratch_size times that)."""
    _run(plans, WEIGHT_GRADIENTS, WEIGHT_GRADIENTS, num_threads)


def activation(str name, floating[::1] values):
    """Apply the kernels' own tanh or sigmoid to `values` in place (for the tests)."""
    cdef Py_ssize_t k
    cdef bint use_tanh = name == "tanh"
    with nogil:
        for k in range(values.shape[0]):
            if floating is float:
                values[k] = rc_tanh_f(values[k]) if use_tanh else rc_sigmoid_f(values[k])
            else:
                values[k] = rc_tanh_d(values[k]) if use_tanh else rc_sigmoid_d(values[k])


# -- streams -----------------------------------------------------------------------------
#
# A stream steps a stack of one-direction layers through time a step (or a chunk of
# steps) per call, over plans filled once: each layer's plan is a one-step inference plan
# (backend.py's `_plan` with T = 1) whose weights are packed once, when the stack is
# made. Each step runs every layer's input projection and time step exactly as a layer
# call does, so a stream's bits are the call's. Each layer's state lives in a pair of
# buffers (h, and c for an LSTM) that trade places after every step: a step reads one
# and writes the other, and nothing is allocated or copied but the output.

cdef void stream_steps(Direction *layers, int count, Py_ssize_t T, const floating *x, floating *out,
                       floating *tag) noexcept nogil:
    cdef Py_ssize_t t, B = layers[0].B, I = layers[0].input_size, P = layers[count - 1].P
    cdef int k
    cdef Direction *d
    for t in range(T):
        for k in range(count):
            d = &layers[k]
            if k == 0:
                d.x, d.ldx = <void *>(x + t * B * I), I
            else:
                d.x, d.ldx = layers[k - 1].h0, layers[k - 1].P
            input_projection(d, tag)
            forward_steps(d, tag)
            d.h0, d.hs = d.hs, d.h0
            if d.kind == RNN and d.xp == d.h0:
                d.xp = d.hs             # Elman's projection and state share a buffer (but with zoneout)
            elif d.kind == LSTM:
                d.c0, d.c_buf = d.c_buf, d.c0
        memcpy(out + t * B * P, layers[count - 1].h0, B * P * sizeof(floating))


cdef bint all_finite(const floating *values, Py_ssize_t count) noexcept nogil:
    cdef Py_ssize_t k
    cdef bint finite = True
    for k in range(count):
        finite &= isfinite(values[k])
    return finite


cdef class StepStack:
    """The compiled half of a stream: a stack of one-step inference plans (one Plan per
    layer, as backend.py's `_plan` makes them with T = 1 and the stream's own state
    buffers, of one float type), loaded and packed once. `run(x, out)` steps x (T, B, I) through the stack
    and writes the last layer's output of every step into out (T, B, P). `parity` says
    which buffer of each pair holds the state: 0 the plans' h0 (and c0), 1 their hs
    (and c_buf's first slot). One caller at a time: a second, from another
    thread while a run is under way, gets a RuntimeError."""
    cdef Direction *layers
    cdef int count
    cdef bint is_double, busy
    cdef readonly list plans
    cdef readonly Py_ssize_t batch, input_size, output_size
    cdef readonly int parity

    def __cinit__(self):
        self.layers = NULL

    def __init__(self, list plans):
        cdef int k, count = len(plans)
        cdef Direction *d
        cdef bint is_double
        if count < 1:
            raise ValueError("plans: expected one plan per layer, got none")
        is_double = isinstance(plans[0], Plan) and (<Plan>plans[0]).is_double
        self.layers = <Direction *>calloc(count, sizeof(Direction))
        if self.layers == NULL:
            raise MemoryError()
        for k in range(count):
            d = &self.layers[k]
            _load(plans[k], d, False, k, is_double)
            if d.S != 1 or d.N != d.B or d.training or d.B != self.layers[0].B:
                raise ValueError(f"plans[{k}]: expected a one-step inference plan of {self.layers[0].B} rows, "
                                 f"got S={d.S}, N={d.N}, B={d.B}, training={d.training}")
            if k and d.input_size != self.layers[k - 1].P:
                raise ValueError(f"plans[{k}]: expected input size {self.layers[k - 1].P} (the layer below's "
                                 f"output), got {d.input_size}")
        self.count, self.is_double, self.plans = count, is_double, plans
        self.batch, self.input_size, self.output_size = self.layers[0].B, self.layers[0].input_size, d.P
        with nogil:
            for k in range(count):
                if is_double:
                    pack_weights(&self.layers[k], <double *>NULL)
                else:
                    pack_weights(&self.layers[k], <float *>NULL)

    def __dealloc__(self):
        free(self.layers)

    def claim(self):
        """Take the stack for one caller (a run, or a reset of its state between runs);
        RuntimeError while another holds it. With the GIL held, check and take are one."""
        if self.busy:
            raise RuntimeError("stream: in use by another thread; a stream serves one caller at a time "
                               "(make one stream per thread)")
        self.busy = True

    def release(self):
        self.busy = False

    def states(self):
        """Per layer, the arrays that hold its state now: (h,), or (h, c) for an LSTM;
        live buffers, which the next run reads and then leaves for the other pair."""
        out = []
        for k in range(self.count):
            plan = self.plans[k]
            h = plan.hs if self.parity else plan.h0
            if self.layers[k].kind != LSTM:
                out.append((h,))
            else:
                out.append((h, plan.c_buf[0] if self.parity else plan.c0))
        return out

    def run(self, cnp.ndarray x, cnp.ndarray out, bint check_finite=True):
        """Step x (T, B, I) through the stack into out (T, B, P), both C-contiguous of the
        plans' float type; one step may come as x (B, I) and out (B, P), or, with one
        row, x (I,) and out (P,). With `check_finite`, a non-finite x is refused before
        any step (the state is left as it was)."""
        cdef int want = cnp.NPY_DOUBLE if self.is_double else cnp.NPY_FLOAT
        cdef int ndim = cnp.PyArray_NDIM(x)
        cdef Py_ssize_t T = x.shape[0] if ndim == 3 else 1
        cdef int own[MAX_BLAS_LIBS]
        cdef bint finite = True
        cdef unsigned int control
        cdef void *x_data
        cdef void *out_data
        cdef str kind = "float64" if self.is_double else "float32"
        if (cnp.PyArray_TYPE(x) != want or not cnp.PyArray_IS_C_CONTIGUOUS(x) or not 1 <= ndim <= 3
                or x.shape[ndim - 1] != self.input_size or (ndim >= 2 and x.shape[ndim - 2] != self.batch)
                or (ndim == 1 and self.batch != 1)):
            raise ValueError(f"x: expected a C-contiguous {kind} array (T, {self.batch}, {self.input_size}), "
                             f"({self.batch}, {self.input_size})" + (f" or ({self.input_size},)" if self.batch == 1 else "")
                             + f", got {(<object>x).dtype} {(<object>x).shape}")
        if (cnp.PyArray_TYPE(out) != want or not cnp.PyArray_IS_C_CONTIGUOUS(out)
                or not cnp.PyArray_ISWRITEABLE(out) or cnp.PyArray_NDIM(out) != ndim
                or out.shape[ndim - 1] != self.output_size or (ndim >= 2 and out.shape[ndim - 2] != self.batch)
                or (ndim == 3 and out.shape[0] != T)):
            expected = ((T,) if ndim == 3 else ()) + ((self.batch,) if ndim >= 2 else ()) + (self.output_size,)
            raise ValueError(f"out: expected a writeable C-contiguous {kind} array of shape {expected}, "
                             f"got {(<object>out).dtype} {(<object>out).shape}"
                             + ("" if cnp.PyArray_IS_C_CONTIGUOUS(out) else ", not C-contiguous")
                             + ("" if cnp.PyArray_ISWRITEABLE(out) else ", read-only"))
        self.claim()
        x_data, out_data = cnp.PyArray_DATA(x), cnp.PyArray_DATA(out)
        try:
            with nogil:
                if check_finite:
                    if self.is_double:
                        finite = all_finite(<double *>x_data, T * self.batch * self.input_size)
                    else:
                        finite = all_finite(<float *>x_data, T * self.batch * self.input_size)
                if finite:
                    _blas_enter(own)
                    control = rc_denormals_off()
                    if self.is_double:
                        stream_steps(self.layers, self.count, T, <double *>x_data, <double *>out_data,
                                     <double *>NULL)
                    else:
                        stream_steps(self.layers, self.count, T, <float *>x_data, <float *>out_data,
                                     <float *>NULL)
                    rc_denormals_restore(control)
                    _blas_leave(own)
        finally:
            self.busy = False
        if not finite:
            raise ValueError("x: expected finite values (pass check_finite=False to skip the check), "
                             "got NaN or infinity")
        self.parity ^= T & 1
