/* Vectorisable exp, sigmoid and tanh for float and double.
 *
 * libm's expf/tanh are scalar calls that stop GCC from vectorising the element-wise
 * cell loops; these are branch-free straight-line code (a multiply-add polynomial and
 * integer exponent arithmetic) that the auto-vectoriser turns into SIMD.
 *
 * Method: x = n ln2 + r with n = round(x / ln2) and |r| <= ln2 / 2 (Cody-Waite: ln2 is
 * split into a short `hi`, so n * hi is exact, and a `lo` correction); e^r - 1 is its
 * Taylor polynomial r + r^2/2! + ... (degree 8 for float, 13 for double, truncation
 * below 0.2 ulp on |r| <= ln2/2); 2^n is built directly in the exponent bits.
 * n is rounded by adding 1.5 * 2^(mantissa bits): the sum's low mantissa bits then hold
 * n, with no call to rint() (which is a libm call without SSE4.1).
 *
 * tanh(x) = sign(x) e / (e + 2) with e = expm1(2|x|): no cancellation near 0, since
 * expm1 is computed as 2^n (e^r - 1) + (2^n - 1) and is exact-relative for n = 0.
 * sigmoid(x) = 1 / (1 + e^-x).
 *
 * Measured maximum error against the float64 libm result (tests/test_cython_kernels.py
 * asserts these bounds on a dense grid over the whole range), in ulps of the type:
 *   float32: tanh 2.6, sigmoid 2.3 (for x >= -87; below, sigmoid is subnormal and the
 *            error is absolute, under 1e-38).
 *   float64: tanh 3, sigmoid 4 (libm itself is within 1 ulp), for |x| up to 700.
 * That is far inside the 1e-10 relative agreement the float64 backend must keep with
 * the NumPy reference over a whole sequence, so double uses these too.
 * Arguments are clamped where the result is already +-1 (tanh) or where e^x would
 * overflow (sigmoid), so infinities give the limits and NaN stays NaN.
 */
#ifndef RNNCORE_MATH_H
#define RNNCORE_MATH_H

#include <stdint.h>
#include <string.h>

/* GCC will not if-convert the clamps and sign selections below while it assumes that
 * floating-point operations may trap (its default), and then refuses to vectorise any
 * loop that calls these functions; nothing here relies on floating-point exceptions. */
#if defined(__GNUC__) && !defined(__clang__)
#define RC_FAST_MATH_BEGIN _Pragma("GCC push_options") _Pragma("GCC optimize (\"no-trapping-math\")")
#define RC_FAST_MATH_END _Pragma("GCC pop_options")
#else
#define RC_FAST_MATH_BEGIN
#define RC_FAST_MATH_END
#endif

#if defined(__GNUC__) || defined(__clang__)
#define RC_INLINE static inline __attribute__((always_inline))
#else
#define RC_INLINE static inline
#endif

/* Denormals off inside the kernels: a product or an update that meets subnormal values
 * (a decaying state, a saturated gate) otherwise takes a microcode assist per operation,
 * tens to hundreds of times slower. FTZ writes subnormal results as zero, DAZ reads
 * subnormal inputs as zero. The control register is per thread: each kernel section
 * sets it on the thread that runs it and puts back what it found, so the caller's
 * NumPy keeps its gradual underflow. Elsewhere than x86-64 the settings are left as
 * they are. */
#if defined(__x86_64__) || defined(_M_X64)
#include <xmmintrin.h>
#define RC_MXCSR_FTZ_DAZ 0x8040u
static inline unsigned int rc_denormals_off(void)
{
    const unsigned int before = _mm_getcsr();
    if ((before & RC_MXCSR_FTZ_DAZ) != RC_MXCSR_FTZ_DAZ)
        _mm_setcsr(before | RC_MXCSR_FTZ_DAZ);
    return before;
}
static inline void rc_denormals_restore(unsigned int before)
{
    if ((before & RC_MXCSR_FTZ_DAZ) != RC_MXCSR_FTZ_DAZ)
        _mm_setcsr(before);
}
#else
static inline unsigned int rc_denormals_off(void) { return 0; }
static inline void rc_denormals_restore(unsigned int before) { (void)before; }
#endif

RC_FAST_MATH_BEGIN

/* -- float ------------------------------------------------------------------------ */

RC_INLINE float rc_exp_parts_f(float x, float *scale)
{
    /* returns e^r - 1 and sets *scale = 2^n, where x = n ln2 + r */
    const float shifter = 12582912.0f;               /* 1.5 * 2^23 */
    float shifted = x * 1.44269504088896341f + shifter;
    float n = shifted - shifter;
    float r = (x - n * 0.693115234375f) - n * 3.1946184945309415e-05f;
    float p = 1.0f / 40320.0f;
    p = p * r + 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    int32_t shifted_bits, shifter_bits, scale_bits;
    memcpy(&shifted_bits, &shifted, sizeof shifted_bits);
    memcpy(&shifter_bits, &shifter, sizeof shifter_bits);
    scale_bits = (shifted_bits - shifter_bits + 127) << 23;
    memcpy(scale, &scale_bits, sizeof *scale);
    return p * r;
}

RC_INLINE float rc_sigmoid_f(float x)
{
    float z = -x;
    z = z < -87.0f ? -87.0f : z;   /* e^-87 is still a normal float */
    z = z > 88.0f ? 88.0f : z;     /* e^88 still finite; sigmoid(-88) ~ 6e-39 */
    float scale;
    float em1 = rc_exp_parts_f(z, &scale);
    return 1.0f / (1.0f + (scale * em1 + scale));
}

RC_INLINE float rc_tanh_f(float x)
{
    float ax = x < 0.0f ? -x : x;
    ax = ax > 10.0f ? 10.0f : ax;  /* tanh(10) rounds to 1 in float */
    float scale;
    float em1 = rc_exp_parts_f(2.0f * ax, &scale);
    float e = scale * em1 + (scale - 1.0f);
    float t = e / (e + 2.0f);
    return x < 0.0f ? -t : t;
}

/* -- double ----------------------------------------------------------------------- */

RC_INLINE double rc_exp_parts_d(double x, double *scale)
{
    const double shifter = 6755399441055744.0;       /* 1.5 * 2^52 */
    double shifted = x * 1.4426950408889634074 + shifter;
    double n = shifted - shifter;
    double r = (x - n * 0.6931471806019545) - n * -4.2009150726810846e-11;
    double p = 1.0 / 6227020800.0;                   /* 1/13! */
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    int64_t shifted_bits, shifter_bits, scale_bits;
    memcpy(&shifted_bits, &shifted, sizeof shifted_bits);
    memcpy(&shifter_bits, &shifter, sizeof shifter_bits);
    scale_bits = (shifted_bits - shifter_bits + 1023) << 52;
    memcpy(scale, &scale_bits, sizeof *scale);
    return p * r;
}

RC_INLINE double rc_sigmoid_d(double x)
{
    double z = -x;
    z = z < -708.0 ? -708.0 : z;
    z = z > 709.0 ? 709.0 : z;
    double scale;
    double em1 = rc_exp_parts_d(z, &scale);
    return 1.0 / (1.0 + (scale * em1 + scale));
}

RC_INLINE double rc_tanh_d(double x)
{
    double ax = x < 0.0 ? -x : x;
    ax = ax > 20.0 ? 20.0 : ax;    /* tanh(20) rounds to 1 in double */
    double scale;
    double em1 = rc_exp_parts_d(2.0 * ax, &scale);
    double e = scale * em1 + (scale - 1.0);
    double t = e / (e + 2.0);
    return x < 0.0 ? -t : t;
}

RC_FAST_MATH_END

#endif
