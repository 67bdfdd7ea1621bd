/* The recurrent product of every step against weights packed once per layer call.
 *
 * A step computes C (m, n) (+)= A (m, k) W^T, with W the (n, k) recurrent weight and A
 * the m rows of the state still active. BLAS repacks W on every call and re-reads it
 * from wherever it lies; here W is laid out once per call into column panels of `nr`
 * columns, each panel k rows of nr contiguous values (zero-padded past n), and a
 * register tile of C runs down a panel reading it as one stream. The sum of each
 * element of C runs over p = 0 .. k-1 in order, whatever m and whatever the tiling, so
 * a row's result does not depend on how many rows share the step or on the thread.
 *
 * One micro-kernel source (rnncore_gemm_tile.inc) is compiled three times per
 * precision: for AVX-512F (two 64-byte vectors per row of the tile), AVX2 with FMA (two
 * 32-byte vectors) and the baseline x86-64 (two 16-byte vectors), each under GCC's
 * target attribute; the CPU is asked once, when the extension loads, and every product
 * goes to the widest instance it runs. Panels are as wide as two vectors, so the packed
 * layout follows the instance; a buffer of rc_packed_size values fits all of them.
 * Without GCC's vector types (another compiler) a portable loop over the same panels
 * stands in.
 */
#ifndef RNNCORE_GEMM_H
#define RNNCORE_GEMM_H

#include <stddef.h>
#include <string.h>
#include "rnncore_math.h"

#if defined(__GNUC__) || defined(__clang__)
#define RC_GEMM_RESTRICT __restrict__
#else
#define RC_GEMM_RESTRICT
#endif

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define RC_GEMM_X86 1
#else
#define RC_GEMM_X86 0
#endif

/* RC_GEMM_WIDE_PORTABLE is the AVX-512 instance's tile (64-byte vectors, 8 rows) built
 * without target instructions: never chosen, it lets the tests run that tile's logic on
 * any CPU (where it compiles with vector types). */
enum { RC_GEMM_PORTABLE = 0, RC_GEMM_AVX2 = 1, RC_GEMM_AVX512 = 2, RC_GEMM_WIDE_PORTABLE = 3 };

/* the rows of A a product keeps in L2 at a time (see rc_packed_gemm): half of the
 * smallest L2 of the CPUs we run on (512 KB on Zen 3; 1-2 MB on Intel's server parts) */
#define RC_BLOCK_BYTES (256 * 1024)

/* the widest panel of any instance, in bytes: two 64-byte vectors */
#define RC_GEMM_MAX_PANEL_BYTES 128

static int rc_gemm_isa_chosen = -1;

static int rc_gemm_isa_supported(void)
{
#if RC_GEMM_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f"))
        return RC_GEMM_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return RC_GEMM_AVX2;
#endif
    return RC_GEMM_PORTABLE;
}

#if defined(__GNUC__) || defined(__clang__)
__attribute__((constructor))
#endif
static void rc_gemm_choose_isa(void)
{
    rc_gemm_isa_chosen = rc_gemm_isa_supported();
}

static int rc_gemm_isa(void)
{
    if (rc_gemm_isa_chosen < 0)  /* a compiler without constructors */
        rc_gemm_choose_isa();
    return rc_gemm_isa_chosen;
}

/* For the tests, which run every instance this CPU supports: sets the instance (clamped
 * to what the CPU runs) and returns the one in use before. Products packed under one
 * instance must be computed under it. */
static int rc_gemm_set_isa(int isa)
{
    const int before = rc_gemm_isa(), best = rc_gemm_isa_supported();
#if defined(__GNUC__) || defined(__clang__)
    if (isa == RC_GEMM_WIDE_PORTABLE) {
        rc_gemm_isa_chosen = isa;
        return before;
    }
#endif
    rc_gemm_isa_chosen = isa < 0 ? 0 : (isa > best ? best : isa);
    return before;
}

/* values in a packed buffer for an (n, k) weight: enough for the widest panel */
static size_t rc_packed_size(size_t n, size_t k, size_t value_bytes)
{
    const size_t nr = RC_GEMM_MAX_PANEL_BYTES / value_bytes;
    return (n + nr - 1) / nr * nr * k;
}

/* the steps (slot rows) of a weight gradient's product packed and multiplied at a time
 * (rc_gradient_product): a panel of them, RC_GRADIENT_KC two-vector rows, fills 32 KB
 * in float32 AVX-512, within every L1 we run on */
#define RC_GRADIENT_KC 512

/* the hidden units of one block of rc_pack_weight_groups in a cell's time step: 256
 * bytes of each gate, a multiple of every instance's panel (the cell's update then runs
 * over rows of 64 floats, long enough for its vector loop; one panel's 16 were not) */
static int rc_gate_block_units(size_t value_bytes)
{
    return (int)(256 / value_bytes);
}

/* values for rc_pack_weight_groups: each group's n / groups columns padded on its own */
static size_t rc_packed_groups_size(size_t groups, size_t n, size_t k, size_t value_bytes)
{
    return groups * rc_packed_size(n / groups, k, value_bytes);
}

/* rc_packed_gemm_at copies a block of A's rows before its product where C's rows are
 * wider than this many bytes (two of the widest panels: the copy is then read at
 * least twice, or more often on narrower instances) */
#define RC_GRADIENT_PACK_A_BYTES (2 * RC_GEMM_MAX_PANEL_BYTES)

/* the steps ahead of its copy that rc_packed_gemm_at asks for a block of dG: a chunk's
 * dG (megabytes) comes from memory, and the prefetchers do not run ahead of reads that
 * jump a row of 4 H values at each step (16: 1.2x the product at m = 1024, n = 256;
 * 8 and 32 within a few percent of it) */
#define RC_A_AHEAD 16

/* a cache line, the unit of the scratch's alignment and of rc_packed_gemm_at's prefetch */
#define RC_LINE_BYTES 64

/* `values` rounded up to whole cache lines: the scratch's panels then start on a line
 * where the scratch does (a vector read that spans two lines costs two), and so does the
 * share of each thread, whose scratches lie end to end */
static size_t rc_line_values(size_t values, size_t value_bytes)
{
    const size_t line = RC_LINE_BYTES / value_bytes;
    return (values + line - 1) / line * line;
}

/* values of rc_gradient_product's scratch for products of at most m rows of C, n
 * columns and k steps, either way round: C transposed (when the product runs as C^T),
 * the panels of up to RC_GRADIENT_KC steps, then, for rows wider than
 * RC_GRADIENT_PACK_A_BYTES, a block of A's rows. Sized to the call: a scratch larger
 * than it needs is fresh memory whose first touch of each page faults, at every call. */
static size_t rc_gradient_scratch_size(size_t m, size_t n, size_t k, size_t value_bytes)
{
    const size_t steps = k < RC_GRADIENT_KC ? k : RC_GRADIENT_KC, wide = m > n ? m : n;
    size_t block = RC_BLOCK_BYTES / value_bytes + 8 * steps;
    if (block > (wide + 8) * steps)
        block = (wide + 8) * steps;
    return rc_line_values(m * n, value_bytes) + rc_packed_size(wide, steps, value_bytes) +
           rc_line_values(wide * value_bytes > RC_GRADIENT_PACK_A_BYTES ? block : 0, value_bytes);
}

#ifndef RC_CONCAT
#define RC_CONCAT_(a, b) a##b
#define RC_CONCAT(a, b) RC_CONCAT_(a, b)
#endif

/* the vector width of each instance, in bytes; a panel is two vectors wide */
static int rc_gemm_vector_bytes(int isa)
{
    return isa == RC_GEMM_AVX512 || isa == RC_GEMM_WIDE_PORTABLE ? 64 : (isa == RC_GEMM_AVX2 ? 32 : 16);
}

RC_FAST_MATH_BEGIN

#define real float
#define RC_FN(name) RC_CONCAT(name, _f)
#include "rnncore_gemm.inc"
#undef real
#undef RC_FN

#define real double
#define RC_FN(name) RC_CONCAT(name, _d)
#include "rnncore_gemm.inc"
#undef real
#undef RC_FN

RC_FAST_MATH_END

#endif
