/* The single-core FMA peak: how many floating-point operations one core retires per
 * second when nothing but independent multiply-adds stands in its way.
 *
 * A benchmark's "fraction of the peak" is only as honest as the peak it divides by, and
 * a data sheet's figure is not this machine's (turbo, a shared core, a virtual CPU's
 * masked features): the benchmarks measure it in the same run. The loop keeps NACC
 * vector accumulators, each updated acc = acc * scale + step once per iteration: the
 * chains are independent, so with at least latency x FMA-ports of them (4 x 2 on recent
 * x86 cores) the FMA units never wait. 12 accumulators of 32 bytes (AVX2, 16 vector
 * registers: 12 + scale + step) and 24 of 64 bytes (AVX-512F, 32 registers) cover every
 * current core; the baseline x86-64 instance (16-byte vectors, no FMA) issues a multiply
 * and an add, and counts the same two operations.
 *
 * The instance is the one the packed product uses (rnncore_gemm.h asks the CPU once), so
 * the peak is that of the instructions the recurrent loops run. scale < 1 keeps every
 * accumulator at a fixed point far from overflow and from denormals; the sum of the
 * accumulators is returned, so the work cannot be optimised away.
 */
#ifndef RNNCORE_PROBE_H
#define RNNCORE_PROBE_H

/* only the choice of instance is used here; the products it declares go unused */
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#endif
#include "rnncore_gemm.h"
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

/* one instance: rc_fma_loop<SUFFIX>(iterations) runs `iterations` rounds over NACC
 * vectors of VBYTES bytes of `real` and returns the sum of their lanes */
#define RC_PROBE_INSTANCE(real, SUFFIX, TARGET, VBYTES, NACC)                                     \
    typedef real rc_probe_v##SUFFIX __attribute__((vector_size(VBYTES)));                       \
    TARGET static double rc_fma_loop##SUFFIX(long long iterations)                              \
    {                                                                                            \
        rc_probe_v##SUFFIX acc[NACC], scale, step;                                               \
        for (int l = 0; l < (int)(VBYTES / sizeof(real)); l++) {                                \
            scale[l] = (real)0.999;                                                              \
            step[l] = (real)1e-3;                                                                \
        }                                                                                        \
        for (int j = 0; j < NACC; j++)                                                           \
            acc[j] = step * (real)(j + 1);                                                       \
        for (long long it = 0; it < iterations; it++) {                                         \
            /* unrolled whole, so that every chain lives in a register */                       \
            _Pragma("GCC unroll 32")                                                             \
            for (int j = 0; j < NACC; j++)                                                       \
                acc[j] = acc[j] * scale + step;                                                  \
        }                                                                                        \
        double sum = 0;                                                                          \
        for (int j = 0; j < NACC; j++)                                                           \
            for (int l = 0; l < (int)(VBYTES / sizeof(real)); l++)                              \
                sum += acc[j][l];                                                                \
        return sum;                                                                              \
    }

/* the vector registers of each instance that hold accumulators */
#define RC_PROBE_ACC_AVX512 24
#define RC_PROBE_ACC_AVX2 12
#define RC_PROBE_ACC_PORTABLE 12

#if defined(__GNUC__) || defined(__clang__)
#if RC_GEMM_X86
RC_PROBE_INSTANCE(float, _f_avx512, __attribute__((target("avx512f,avx2,fma"))), 64, RC_PROBE_ACC_AVX512)
RC_PROBE_INSTANCE(double, _d_avx512, __attribute__((target("avx512f,avx2,fma"))), 64, RC_PROBE_ACC_AVX512)
RC_PROBE_INSTANCE(float, _f_avx2, __attribute__((target("avx2,fma"))), 32, RC_PROBE_ACC_AVX2)
RC_PROBE_INSTANCE(double, _d_avx2, __attribute__((target("avx2,fma"))), 32, RC_PROBE_ACC_AVX2)
#endif
RC_PROBE_INSTANCE(float, _f_portable, , 16, RC_PROBE_ACC_PORTABLE)
RC_PROBE_INSTANCE(double, _d_portable, , 16, RC_PROBE_ACC_PORTABLE)
#define RC_PROBE_PORTABLE_BYTES 16
#else
/* no vector types: scalar chains, which a compiler may vectorise or not; the figure is
 * then the peak of whatever it emits */
#define RC_PROBE_SCALAR(real, SUFFIX)                                                            \
    static double rc_fma_loop##SUFFIX(long long iterations)                                     \
    {                                                                                            \
        real acc[RC_PROBE_ACC_PORTABLE];                                                         \
        for (int j = 0; j < RC_PROBE_ACC_PORTABLE; j++)                                          \
            acc[j] = (real)1e-3 * (j + 1);                                                       \
        for (long long it = 0; it < iterations; it++)                                           \
            for (int j = 0; j < RC_PROBE_ACC_PORTABLE; j++)                                      \
                acc[j] = acc[j] * (real)0.999 + (real)1e-3;                                      \
        double sum = 0;                                                                          \
        for (int j = 0; j < RC_PROBE_ACC_PORTABLE; j++)                                          \
            sum += acc[j];                                                                       \
        return sum;                                                                              \
    }
RC_PROBE_SCALAR(float, _f_portable)
RC_PROBE_SCALAR(double, _d_portable)
#define RC_PROBE_PORTABLE_BYTES 0  /* one value a chain */
#endif

/* floating-point operations of one iteration of the instance chosen for values of
 * `value_bytes` bytes (4 or 8): two (a multiply and an add) per lane per accumulator */
static long long rc_fma_flops_per_iteration(size_t value_bytes)
{
    switch (rc_gemm_isa()) {
#if RC_GEMM_X86
    case RC_GEMM_AVX512: return 2LL * RC_PROBE_ACC_AVX512 * (64 / (long long)value_bytes);
    case RC_GEMM_AVX2: return 2LL * RC_PROBE_ACC_AVX2 * (32 / (long long)value_bytes);
#endif
    default:
        return 2LL * RC_PROBE_ACC_PORTABLE *
               (RC_PROBE_PORTABLE_BYTES ? RC_PROBE_PORTABLE_BYTES / (long long)value_bytes : 1);
    }
}

/* runs the chosen instance for values of `value_bytes` bytes; returns the checksum */
static double rc_fma_loop(size_t value_bytes, long long iterations)
{
    const int single = value_bytes == sizeof(float);
    switch (rc_gemm_isa()) {
#if RC_GEMM_X86
    case RC_GEMM_AVX512: return single ? rc_fma_loop_f_avx512(iterations) : rc_fma_loop_d_avx512(iterations);
    case RC_GEMM_AVX2: return single ? rc_fma_loop_f_avx2(iterations) : rc_fma_loop_d_avx2(iterations);
#endif
    default: return single ? rc_fma_loop_f_portable(iterations) : rc_fma_loop_d_portable(iterations);
    }
}

#endif
