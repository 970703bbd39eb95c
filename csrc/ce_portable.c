/* Scalar kernels for any CPU, and the readable statement of the math the SIMD files follow.
 * float32 and the half types compute in float (expf/tanhf), float64 in double. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "kernels.h"

#define CE_BLOCK 256

/* IEEE binary16 <-> binary32, round to nearest even, NaN kept quiet. */
float ce_f16_to_f32(uint16_t h)
{
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    const uint32_t e = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
    union { uint32_t u; float f; } v;
    if (e == 0) { /* zero or subnormal: mant * 2^-24 */
        v.f = (float)mant * 5.9604644775390625e-8f;
        v.u |= sign;
    } else if (e == 31) {
        v.u = sign | 0x7f800000u | (mant << 13);
    } else {
        v.u = sign | ((e + 112u) << 23) | (mant << 13);
    }
    return v.f;
}

uint16_t ce_f32_to_f16(float f)
{
    union { uint32_t u; float f; } v;
    v.f = f;
    const uint16_t sign = (uint16_t)((v.u >> 16) & 0x8000u);
    const uint32_t x = v.u & 0x7fffffffu;
    if (x > 0x7f800000u) return sign | 0x7e00u;          /* NaN */
    if (x >= 0x477ff000u) return sign | 0x7c00u;         /* >= 65520 rounds to inf */
    if (x < 0x38800000u) {                               /* below 2^-14: subnormal half */
        /* |f| * 2^24 is exact; rounding it to an integer is the half's mantissa (1024
           becomes the smallest normal, which is the right bit pattern). */
        return sign | (uint16_t)nearbyintf(fabsf(f) * 16777216.0f);
    }
    const uint32_t rounded = x + 0xfffu + ((x >> 13) & 1u);
    return sign | (uint16_t)((rounded >> 13) - (112u << 10));
}

#define T float
#define C float
#define SUF f32
#define LOAD(p) (*(p))
#define STORE(p, v) (*(p) = (v))
#define EXP expf
#define TANH tanhf
#define LOG1P log1pf
#define FABS fabsf
#include "ce_portable_impl.h"
#undef T
#undef C
#undef SUF
#undef LOAD
#undef STORE
#undef EXP
#undef TANH
#undef LOG1P
#undef FABS

#define T double
#define C double
#define SUF f64
#define LOAD(p) (*(p))
#define STORE(p, v) (*(p) = (v))
#define EXP exp
#define TANH tanh
#define LOG1P log1p
#define FABS fabs
#include "ce_portable_impl.h"
#undef T
#undef C
#undef SUF
#undef LOAD
#undef STORE
#undef EXP
#undef TANH
#undef LOG1P
#undef FABS

#define T uint16_t
#define C float
#define SUF f16
#define LOAD(p) ce_f16_to_f32(*(p))
#define STORE(p, v) (*(p) = ce_f32_to_f16(v))
#define EXP expf
#define TANH tanhf
#define LOG1P log1pf
#define FABS fabsf
#include "ce_portable_impl.h"
#undef SUF
#undef LOAD
#undef STORE

#define SUF bf16
#define LOAD(p) ce_bf16_to_f32(*(p))
#define STORE(p, v) (*(p) = ce_f32_to_bf16(v))
#include "ce_portable_impl.h"
#undef T
#undef C
#undef SUF
#undef LOAD
#undef STORE
#undef EXP
#undef TANH
#undef LOG1P
#undef FABS

static void vexp_f32_portable(const float *x, int64_t n, float *y)
{
    for (int64_t i = 0; i < n; i++) y[i] = expf(x[i]);
}

static void vexp_f64_portable(const double *x, int64_t n, double *y)
{
    for (int64_t i = 0; i < n; i++) y[i] = exp(x[i]);
}

static double roof_read_portable(const void *src, int64_t bytes)
{
    const unsigned char *p = (const unsigned char *)src;
    uint64_t acc = 0;
    for (int64_t i = 0; i < bytes; i++) acc += p[i];
    return (double)acc;
}

static void roof_copy_portable(const void *src, void *dst, int64_t bytes)
{
    memcpy(dst, src, (size_t)bytes);
}

const ce_isa_table ce_table_portable = {
    FUSEDCE_ISA_PORTABLE,
    {
        [FUSEDCE_F32] = {ce_stats_f32_portable, ce_grad_f32_portable, ce_shift_f32_portable,
                          ce_stats_soft_f32_portable, ce_grad_soft_f32_portable, bce_f32_portable,
                          ce_grad_exp_f32_portable},
        [FUSEDCE_F64] = {ce_stats_f64_portable, ce_grad_f64_portable, ce_shift_f64_portable,
                          ce_stats_soft_f64_portable, ce_grad_soft_f64_portable, bce_f64_portable,
                          ce_grad_exp_f64_portable},
        [FUSEDCE_F16] = {ce_stats_f16_portable, ce_grad_f16_portable, ce_shift_f16_portable,
                          ce_stats_soft_f16_portable, ce_grad_soft_f16_portable, bce_f16_portable,
                          ce_grad_exp_f16_portable},
        [FUSEDCE_BF16] = {ce_stats_bf16_portable, ce_grad_bf16_portable, ce_shift_bf16_portable,
                          ce_stats_soft_bf16_portable, ce_grad_soft_bf16_portable, bce_bf16_portable,
                          ce_grad_exp_bf16_portable},
    },
    vexp_f32_portable,
    vexp_f64_portable,
    vexp_f32_portable,
    vexp_f32_portable,
    roof_read_portable,
    roof_copy_portable,
};
