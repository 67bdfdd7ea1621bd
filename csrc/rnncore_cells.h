/* The fused element-wise cell kernels, for float (suffix _f) and double (suffix _d).
 *
 * The bodies are written once, one file per cell family (rnncore_elman.inc: the plain
 * activations and the shared row helpers; rnncore_lstm.inc; rnncore_gru.inc;
 * rnncore_regular.inc: zoneout, recurrent dropout and layer norm), with
 * `real` for the float type and RC_FN adding the suffix, and instantiated here for each
 * precision; Cython picks the instance through its fused types. Every kernel works on
 * `n` rows of a batch (the rows still active at this step), each row a contiguous run
 * of the given widths, and is a plain loop over the hidden units that GCC vectorises.
 * Derivatives are written in terms of the activated values that forward stored, as in
 * the reference backend. Optional arrays (peepholes, biases) are NULL when absent; the
 * tests on them are loop-invariant, so GCC unswitches them out of the loops.
 * rc_sigmoid_f/_d and rc_tanh_f/_d come from rnncore_math.h under the same suffix. The
 * matrix products between these passes run in rnncore_gemm.h's packed micro-kernel
 * (every step's) and BLAS (the weight gradients over all steps).
 */
#ifndef RNNCORE_CELLS_H
#define RNNCORE_CELLS_H

#include <math.h>

#include "rnncore_math.h"

/* spec.LAYER_NORM_EPS */
#define RC_LAYER_NORM_EPS 1e-5

#if defined(__GNUC__) || defined(__clang__)
#define RC_RESTRICT __restrict__
#elif defined(_MSC_VER)
#define RC_RESTRICT __restrict
#else
#define RC_RESTRICT
#endif

/* Each kernel is compiled three times, for the baseline x86-64 (SSE2), x86-64-v3 (AVX2,
 * FMA) and x86-64-v4 (AVX-512), and the loader picks the widest the CPU runs (GCC
 * function multi-versioning, an ifunc): the default build stays portable while the cell
 * loops, dominated by exp and division, run on 8 or 16 floats at a time where they can
 * (AVX-512: an LSTM inference call at (100,16,32,64) 1.1x faster, at (100,1,8,32) 1.2x,
 * on a Xeon). */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define RC_KERNEL static __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define RC_KERNEL static
#endif

enum { RC_IDENTITY = 0, RC_TANH = 1, RC_RELU = 2, RC_SIGMOID = 3 };

#define RC_CONCAT_(a, b) a##b
#define RC_CONCAT(a, b) RC_CONCAT_(a, b)

RC_FAST_MATH_BEGIN

#define real float
#define RC_FN(name) RC_CONCAT(name, _f)
#include "rnncore_elman.inc"
#include "rnncore_lstm.inc"
#include "rnncore_gru.inc"
#include "rnncore_regular.inc"
#undef real
#undef RC_FN

#define real double
#define RC_FN(name) RC_CONCAT(name, _d)
#include "rnncore_elman.inc"
#include "rnncore_lstm.inc"
#include "rnncore_gru.inc"
#include "rnncore_regular.inc"
#undef real
#undef RC_FN

RC_FAST_MATH_END

#endif
