/* Vector exp and tanh for AArch64 Advanced SIMD (NEON), inline.
 *
 * exp(x) = 2^n * e^r with n = round(x / ln2), r = x - n*ln2 in two fused steps (the first is
 * exact), e^r = 1 + r*(1 + r*P(r)) on |r| <= ln2/2 with P a Chebyshev fit derived for this
 * library (degree 4 for float, 10 for double; the same polynomials as exp_avx512.h). 2^n is
 * applied as two normal powers 2^n1 * 2^n2, n1 = clamp(n) to the normal exponents, so the
 * last multiply rounds once into the subnormal range: the operations of exp_avx2.h.
 *
 * Measured max error, in ULP of the result against a more precise exp (tests/c/test_kernels.c
 * under qemu-aarch64, the default sample: every 2039th float in [-104, 89], 2^18 + 2^16
 * doubles in [-746, 710]):
 *   ce_exp_f32x4: 0.87 ULP    ce_exp_f64x2: 0.82 ULP
 * (exp_avx2.h's same operations measure 0.97 / 0.89 ULP exhaustively), over x <= 0 down to
 * past the underflow and positive x up to past the overflow. Special values: exp(-inf) = +0
 * exactly, exp(NaN) = NaN, exp(+inf) = +inf; results below FLT_MIN / DBL_MIN are correctly
 * rounded subnormals (not flushed, with FPCR.FZ clear as Linux leaves it), and exactly 0
 * below half the smallest subnormal.
 */
#ifndef FUSEDCE_EXP_NEON_H
#define FUSEDCE_EXP_NEON_H

#include <arm_neon.h>

/* Clamping keeps r finite for +-inf; the bounds already give 0 and +inf after scaling. */
#define CE_EXPF_LO (-104.0f)
#define CE_EXPF_HI 89.0f
#define CE_EXP_LO (-746.0)
#define CE_EXP_HI 710.0

/* r for float x, and t = n + 1.5*2^23: adding the shifter rounds x/ln2 to an integer
 * inside the FMA, and t's low mantissa bits are n. */
static inline float32x4_t ce_exp_reduce_f32x4(float32x4_t x, float32x4_t *t)
{
    const float32x4_t shifter = vdupq_n_f32(0x1.8p23f);
    /* FMAX/FMIN propagate NaN */
    x = vminq_f32(vmaxq_f32(x, vdupq_n_f32(CE_EXPF_LO)), vdupq_n_f32(CE_EXPF_HI));
    *t = vfmaq_f32(shifter, x, vdupq_n_f32(0x1.715476p+0f));
    const float32x4_t n = vsubq_f32(*t, shifter);
    const float32x4_t r = vfmsq_f32(x, n, vdupq_n_f32(0x1.62e430p-1f));
    return vfmsq_f32(r, n, vdupq_n_f32(-0x1.05c610p-29f));
}

/* h(r) = 1 + r*P(r), so that e^r = 1 + r*h and e^r - 1 = r*h. */
static inline float32x4_t ce_exp_h_f32x4(float32x4_t r)
{
    float32x4_t p = vdupq_n_f32(0x1.6d113cp-10f);
    p = vfmaq_f32(vdupq_n_f32(0x1.120ba2p-7f), p, r);
    p = vfmaq_f32(vdupq_n_f32(0x1.55551ap-5f), p, r);
    p = vfmaq_f32(vdupq_n_f32(0x1.5554dcp-3f), p, r);
    p = vfmaq_f32(vdupq_n_f32(0.5f), p, r);
    return vfmaq_f32(vdupq_n_f32(1.0f), p, r);
}

/* 2^n = s1 * s2 with n1 = clamp(n, -126, 127) and n2 = n - n1 in [-24, 2], both normal. */
static inline void ce_pow2_f32x4(float32x4_t t, float32x4_t *s1, float32x4_t *s2)
{
    const float32x4_t shifter = vdupq_n_f32(0x1.8p23f);
    const float32x4_t t1 = vminq_f32(vmaxq_f32(t, vdupq_n_f32(0x1.8p23f - 126)),
                                     vdupq_n_f32(0x1.8p23f + 127));
    const float32x4_t t2 = vaddq_f32(vsubq_f32(t, t1), shifter);
    const int32x4_t one = vdupq_n_s32(0x3f800000);
    *s1 = vreinterpretq_f32_s32(vaddq_s32(vshlq_n_s32(vreinterpretq_s32_f32(t1), 23), one));
    *s2 = vreinterpretq_f32_s32(vaddq_s32(vshlq_n_s32(vreinterpretq_s32_f32(t2), 23), one));
}

static inline float32x4_t ce_exp_f32x4(float32x4_t x)
{
    float32x4_t t, s1, s2;
    const float32x4_t r = ce_exp_reduce_f32x4(x, &t);
    const float32x4_t er = vfmaq_f32(vdupq_n_f32(1.0f), r, ce_exp_h_f32x4(r));
    ce_pow2_f32x4(t, &s1, &s2);
    return vmulq_f32(vmulq_f32(er, s1), s2);
}

static inline float64x2_t ce_exp_reduce_f64x2(float64x2_t x, float64x2_t *t)
{
    const float64x2_t shifter = vdupq_n_f64(0x1.8p52);
    x = vminq_f64(vmaxq_f64(x, vdupq_n_f64(CE_EXP_LO)), vdupq_n_f64(CE_EXP_HI));
    *t = vfmaq_f64(shifter, x, vdupq_n_f64(0x1.71547652b82fep+0));
    const float64x2_t n = vsubq_f64(*t, shifter);
    const float64x2_t r = vfmsq_f64(x, n, vdupq_n_f64(0x1.62e42fefa39efp-1));
    return vfmsq_f64(r, n, vdupq_n_f64(0x1.abc9e3b39803fp-56));
}

static inline float64x2_t ce_exp_h_f64x2(float64x2_t r)
{
    float64x2_t p = vdupq_n_f64(0x1.1f731ea5352cap-29);
    p = vfmaq_f64(vdupq_n_f64(0x1.af4e196027428p-26), p, r);
    p = vfmaq_f64(vdupq_n_f64(0x1.27e4db57442fbp-22), p, r);
    p = vfmaq_f64(vdupq_n_f64(0x1.71de021a90822p-19), p, r);
    p = vfmaq_f64(vdupq_n_f64(0x1.a01a01a6dcaffp-16), p, r);
    p = vfmaq_f64(vdupq_n_f64(0x1.a01a01abef415p-13), p, r);
    p = vfmaq_f64(vdupq_n_f64(0x1.6c16c16c162ccp-10), p, r);
    p = vfmaq_f64(vdupq_n_f64(0x1.11111111100cep-7), p, r);
    p = vfmaq_f64(vdupq_n_f64(0x1.5555555555556p-5), p, r);
    p = vfmaq_f64(vdupq_n_f64(0x1.5555555555557p-3), p, r);
    p = vfmaq_f64(vdupq_n_f64(0.5), p, r);
    return vfmaq_f64(vdupq_n_f64(1.0), p, r);
}

/* 2^n = s1 * s2 with n1 = clamp(n, -1022, 1023) and n2 = n - n1 in [-54, 1]. */
static inline void ce_pow2_f64x2(float64x2_t t, float64x2_t *s1, float64x2_t *s2)
{
    const float64x2_t shifter = vdupq_n_f64(0x1.8p52);
    const float64x2_t t1 = vminq_f64(vmaxq_f64(t, vdupq_n_f64(0x1.8p52 - 1022)),
                                     vdupq_n_f64(0x1.8p52 + 1023));
    const float64x2_t t2 = vaddq_f64(vsubq_f64(t, t1), shifter);
    const int64x2_t one = vdupq_n_s64(0x3ff0000000000000);
    *s1 = vreinterpretq_f64_s64(vaddq_s64(vshlq_n_s64(vreinterpretq_s64_f64(t1), 52), one));
    *s2 = vreinterpretq_f64_s64(vaddq_s64(vshlq_n_s64(vreinterpretq_s64_f64(t2), 52), one));
}

static inline float64x2_t ce_exp_f64x2(float64x2_t x)
{
    float64x2_t t, s1, s2;
    const float64x2_t r = ce_exp_reduce_f64x2(x, &t);
    const float64x2_t er = vfmaq_f64(vdupq_n_f64(1.0), r, ce_exp_h_f64x2(r));
    ce_pow2_f64x2(t, &s1, &s2);
    return vmulq_f64(vmulq_f64(er, s1), s2);
}

/* tanh(z) = z + z^3*Q(z^2) for |z| < 0.55 (Q a Chebyshev fit derived for this library,
 * degree 4 for float, 10 for double), else 1 - 2/(e^(2|z|) + 1), whose rounding errors shrink
 * as tanh approaches 1; the sign of z restored. Max error 1.6 ULP (float and double, 2^24
 * points, tests/c/test_kernels.c); tanh(+-inf) = +-1 (e^inf = inf), NaN stays NaN. */
static inline float32x4_t ce_tanh_f32x4(float32x4_t z)
{
    const float32x4_t a = vabsq_f32(z);
    const float32x4_t u = vmulq_f32(a, a);
    float32x4_t q = vdupq_n_f32(-0x1.b13538p-8f);
    q = vfmaq_f32(vdupq_n_f32(0x1.5d220ep-6f), q, u);
    q = vfmaq_f32(vdupq_n_f32(-0x1.b9a044p-5f), q, u);
    q = vfmaq_f32(vdupq_n_f32(0x1.110feap-3f), q, u);
    q = vfmaq_f32(vdupq_n_f32(-0x1.555554p-2f), q, u);
    const float32x4_t small = vfmaq_f32(a, vmulq_f32(a, u), q);
    const float32x4_t one = vdupq_n_f32(1.0f), e2 = ce_exp_f32x4(vaddq_f32(a, a));
    const float32x4_t large = vsubq_f32(one, vdivq_f32(vdupq_n_f32(2.0f), vaddq_f32(e2, one)));
    const float32x4_t t = vbslq_f32(vcltq_f32(a, vdupq_n_f32(0.55f)), small, large);
    return vbslq_f32(vdupq_n_u32(0x80000000u), z, t);
}

static inline float64x2_t ce_tanh_f64x2(float64x2_t z)
{
    const float64x2_t a = vabsq_f64(z);
    const float64x2_t u = vmulq_f64(a, a);
    float64x2_t q = vdupq_n_f64(-0x1.59a834187ce22p-16);
    q = vfmaq_f64(vdupq_n_f64(0x1.64fd88e9900a5p-14), q, u);
    q = vfmaq_f64(vdupq_n_f64(-0x1.ec1091436eb2ap-13), q, u);
    q = vfmaq_f64(vdupq_n_f64(0x1.34c5a8a996cd4p-11), q, u);
    q = vfmaq_f64(vdupq_n_f64(-0x1.7d97cfd138c28p-10), q, u);
    q = vfmaq_f64(vdupq_n_f64(0x1.d6d339333f329p-9), q, u);
    q = vfmaq_f64(vdupq_n_f64(-0x1.226e32f00cf0cp-7), q, u);
    q = vfmaq_f64(vdupq_n_f64(0x1.664f487713373p-6), q, u);
    q = vfmaq_f64(vdupq_n_f64(-0x1.ba1ba1b9fec84p-5), q, u);
    q = vfmaq_f64(vdupq_n_f64(0x1.1111111111032p-3), q, u);
    q = vfmaq_f64(vdupq_n_f64(-0x1.5555555555555p-2), q, u);
    const float64x2_t small = vfmaq_f64(a, vmulq_f64(a, u), q);
    const float64x2_t one = vdupq_n_f64(1.0), e2 = ce_exp_f64x2(vaddq_f64(a, a));
    const float64x2_t large = vsubq_f64(one, vdivq_f64(vdupq_n_f64(2.0), vaddq_f64(e2, one)));
    const float64x2_t t = vbslq_f64(vcltq_f64(a, vdupq_n_f64(0.55)), small, large);
    return vbslq_f64(vdupq_n_u64(0x8000000000000000u), z, t);
}

/* log1p(e) for e in [0, 1], the softplus term log1p(exp(-|x|)); the same method and
 * coefficients as ce_log1p01_f32x16 in exp_avx512.h (see there), with selects for the masks.
 * Measured max error under qemu-aarch64: 0.875 ULP over every float in [0, 1] (against double
 * log1p), 0.837 ULP over 2^22 doubles in [0, 1] (against quad log1pl). log1p(0) = 0 exactly,
 * NaN stays NaN. */
static inline float32x4_t ce_log1p01_f32x4(float32x4_t e)
{
    const float32x4_t half = vdupq_n_f32(0.5f), zero = vdupq_n_f32(0);
    const uint32x4_t hi = vcgeq_f32(e, half);
    const float32x4_t f1 = vmulq_f32(vsubq_f32(e, vdupq_n_f32(1.0f)), half); /* exact */
    const float32x4_t f = vbslq_f32(hi, f1, e);
    const float32x4_t s = vdivq_f32(f, vaddq_f32(f, vdupq_n_f32(2.0f)));
    const float32x4_t z = vmulq_f32(s, s);
    float32x4_t p = vdupq_n_f32(0x1.e5daf0p-3f);
    p = vfmaq_f32(vdupq_n_f32(0x1.24308ep-2f), p, z);
    p = vfmaq_f32(vdupq_n_f32(0x1.999a5cp-2f), p, z);
    p = vfmaq_f32(vdupq_n_f32(0x1.555556p-1f), p, z);
    const float32x4_t hfsq = vmulq_f32(vmulq_f32(half, f), f);
    float32x4_t lo = vfmaq_f32(vnegq_f32(hfsq), s, vfmaq_f32(hfsq, p, z));
    lo = vaddq_f32(lo, vbslq_f32(hi, vdupq_n_f32(-0x1.05c610p-29f), zero));
    /* k*ln2_hi + f with its rounding error kept (Fast2Sum: ln2_hi > |f|), one rounding left */
    const float32x4_t c = vbslq_f32(hi, vdupq_n_f32(0x1.62e430p-1f), zero);
    const float32x4_t top = vaddq_f32(c, f);
    lo = vaddq_f32(lo, vaddq_f32(vsubq_f32(c, top), f));
    return vaddq_f32(top, lo);
}

static inline float64x2_t ce_log1p01_f64x2(float64x2_t e)
{
    const float64x2_t half = vdupq_n_f64(0.5), zero = vdupq_n_f64(0);
    const uint64x2_t hi = vcgeq_f64(e, half);
    const float64x2_t f1 = vmulq_f64(vsubq_f64(e, vdupq_n_f64(1.0)), half); /* exact */
    const float64x2_t f = vbslq_f64(hi, f1, e);
    const float64x2_t s = vdivq_f64(f, vaddq_f64(f, vdupq_n_f64(2.0)));
    const float64x2_t z = vmulq_f64(s, s);
    float64x2_t p = vdupq_n_f64(0x1.16927950b0e0ap-3);
    p = vfmaq_f64(vdupq_n_f64(0x1.0e8db0a880191p-3), p, z);
    p = vfmaq_f64(vdupq_n_f64(0x1.3b29bd57e7dcbp-3), p, z);
    p = vfmaq_f64(vdupq_n_f64(0x1.745cacc6a61c6p-3), p, z);
    p = vfmaq_f64(vdupq_n_f64(0x1.c71c72dd88afbp-3), p, z);
    p = vfmaq_f64(vdupq_n_f64(0x1.24924923dff48p-2), p, z);
    p = vfmaq_f64(vdupq_n_f64(0x1.9999999999f08p-2), p, z);
    p = vfmaq_f64(vdupq_n_f64(0x1.5555555555555p-1), p, z);
    const float64x2_t hfsq = vmulq_f64(vmulq_f64(half, f), f);
    float64x2_t lo = vfmaq_f64(vnegq_f64(hfsq), s, vfmaq_f64(hfsq, p, z));
    lo = vaddq_f64(lo, vbslq_f64(hi, vdupq_n_f64(0x1.abc9e3b39803fp-56), zero));
    /* k*ln2_hi + f with its rounding error kept (Fast2Sum: ln2_hi > |f|), one rounding left */
    const float64x2_t c = vbslq_f64(hi, vdupq_n_f64(0x1.62e42fefa39efp-1), zero);
    const float64x2_t top = vaddq_f64(c, f);
    lo = vaddq_f64(lo, vaddq_f64(vsubq_f64(c, top), f));
    return vaddq_f64(top, lo);
}

#endif /* FUSEDCE_EXP_NEON_H */
