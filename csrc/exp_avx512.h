/* Vector exp and tanh for AVX-512 (F; DQ for the float and/or of tanh's sign), inline.
 *
 * exp(x) = 2^n * e^r with n = round(x / ln2), r = x - n*ln2 in two FMA steps (the first is
 * exact), e^r = 1 + r*(1 + r*P(r)) on |r| <= ln2/2 with P a Chebyshev fit derived for this
 * library (degree 4 for float, 10 for double), and 2^n applied by scalef, which rounds once
 * into the subnormal range.
 *
 * Measured max error, in ULP of the result against a more precise exp
 * (tests/c/test_kernels.c with FUSEDCE_TEST_EXHAUSTIVE=1):
 *   ce_exp_f32x16: 0.97 ULP over every float in [-104, 89]
 *   ce_exp_f64x8:  0.87 ULP over 2^24 uniform and log-spaced doubles in [-746, 710]
 * i.e. x <= 0 down to past the underflow (the max-subtracted softmax) and positive x up to
 * past the overflow. Special values: exp(-inf) = +0 exactly, exp(NaN) = NaN,
 * exp(+inf) = +inf; results below FLT_MIN / DBL_MIN are correctly rounded subnormals (not
 * flushed, unless the caller set MXCSR.FTZ), and exactly 0 below half the smallest
 * subnormal (x < -103.97 float, x < -745.13 double).
 */
#ifndef FUSEDCE_EXP_AVX512_H
#define FUSEDCE_EXP_AVX512_H

#include <immintrin.h>

/* Clamping keeps r finite for +-inf; the bounds already give 0 and +inf after scaling. */
#define CE_EXPF_LO (-104.0f)
#define CE_EXPF_HI 89.0f
#define CE_EXP_LO (-746.0)
#define CE_EXP_HI 710.0

/* r and n for float x: n is rounded by adding 1.5*2^23 (exact product rounding in the FMA). */
static inline __m512 ce_exp_reduce_f32x16(__m512 x, __m512 *n)
{
    const __m512 shifter = _mm512_set1_ps(0x1.8p23f);
    /* max/min return their second operand when either is NaN: keep x second */
    x = _mm512_min_ps(_mm512_set1_ps(CE_EXPF_HI), _mm512_max_ps(_mm512_set1_ps(CE_EXPF_LO), x));
    const __m512 t = _mm512_fmadd_ps(x, _mm512_set1_ps(0x1.715476p+0f), shifter);
    *n = _mm512_sub_ps(t, shifter);
    const __m512 r = _mm512_fnmadd_ps(*n, _mm512_set1_ps(0x1.62e430p-1f), x);
    return _mm512_fnmadd_ps(*n, _mm512_set1_ps(-0x1.05c610p-29f), r);
}

/* h(r) = 1 + r*P(r), so that e^r = 1 + r*h and e^r - 1 = r*h. */
static inline __m512 ce_exp_h_f32x16(__m512 r)
{
    __m512 p = _mm512_set1_ps(0x1.6d113cp-10f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0x1.120ba2p-7f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0x1.55551ap-5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0x1.5554dcp-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    return _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
}

static inline __m512 ce_exp_f32x16(__m512 x)
{
    __m512 n;
    const __m512 r = ce_exp_reduce_f32x16(x, &n);
    const __m512 er = _mm512_fmadd_ps(r, ce_exp_h_f32x16(r), _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(er, n);
}

/* For x <= 88 (tanh only needs x <= 0; beyond, 2^n overflows before the product does). */
static inline __m512d ce_exp_reduce_f64x8(__m512d x, __m512d *n)
{
    const __m512d shifter = _mm512_set1_pd(0x1.8p52);
    x = _mm512_min_pd(_mm512_set1_pd(CE_EXP_HI), _mm512_max_pd(_mm512_set1_pd(CE_EXP_LO), x));
    const __m512d t = _mm512_fmadd_pd(x, _mm512_set1_pd(0x1.71547652b82fep+0), shifter);
    *n = _mm512_sub_pd(t, shifter);
    const __m512d r = _mm512_fnmadd_pd(*n, _mm512_set1_pd(0x1.62e42fefa39efp-1), x);
    return _mm512_fnmadd_pd(*n, _mm512_set1_pd(0x1.abc9e3b39803fp-56), r);
}

static inline __m512d ce_exp_h_f64x8(__m512d r)
{
    __m512d p = _mm512_set1_pd(0x1.1f731ea5352cap-29);
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(0x1.af4e196027428p-26));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(0x1.27e4db57442fbp-22));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(0x1.71de021a90822p-19));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(0x1.a01a01a6dcaffp-16));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(0x1.a01a01abef415p-13));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(0x1.6c16c16c162ccp-10));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(0x1.11111111100cep-7));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(0x1.5555555555556p-5));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(0x1.5555555555557p-3));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(0.5));
    return _mm512_fmadd_pd(p, r, _mm512_set1_pd(1.0));
}

static inline __m512d ce_exp_f64x8(__m512d x)
{
    __m512d n;
    const __m512d r = ce_exp_reduce_f64x8(x, &n);
    const __m512d er = _mm512_fmadd_pd(r, ce_exp_h_f64x8(r), _mm512_set1_pd(1.0));
    return _mm512_scalef_pd(er, n);
}

/* tanh(z) = z + z^3*Q(z^2) for |z| < 0.55 (Q a Chebyshev fit derived for this library,
 * degree 4 for float, 10 for double), else 1 - 2/(e^(2|z|) + 1), whose rounding errors shrink
 * as tanh approaches 1; the sign of z restored. Max error 1.6 ULP (float and double, 2^24
 * points, tests/c/test_kernels.c); tanh(+-inf) = +-1 (e^inf = inf), NaN stays NaN. */
static inline __m512 ce_tanh_f32x16(__m512 z)
{
    const __m512 sign = _mm512_set1_ps(-0.0f);
    const __m512 a = _mm512_andnot_ps(sign, z);
    const __m512 u = _mm512_mul_ps(a, a);
    __m512 q = _mm512_set1_ps(-0x1.b13538p-8f);
    q = _mm512_fmadd_ps(q, u, _mm512_set1_ps(0x1.5d220ep-6f));
    q = _mm512_fmadd_ps(q, u, _mm512_set1_ps(-0x1.b9a044p-5f));
    q = _mm512_fmadd_ps(q, u, _mm512_set1_ps(0x1.110feap-3f));
    q = _mm512_fmadd_ps(q, u, _mm512_set1_ps(-0x1.555554p-2f));
    const __m512 small = _mm512_fmadd_ps(_mm512_mul_ps(a, u), q, a);
    const __m512 one = _mm512_set1_ps(1.0f);
    const __m512 e2 = ce_exp_f32x16(_mm512_add_ps(a, a));
    const __m512 large = _mm512_sub_ps(one, _mm512_div_ps(_mm512_set1_ps(2.0f), _mm512_add_ps(e2, one)));
    const __mmask16 is_small = _mm512_cmp_ps_mask(a, _mm512_set1_ps(0.55f), _CMP_LT_OQ);
    return _mm512_or_ps(_mm512_mask_blend_ps(is_small, large, small), _mm512_and_ps(sign, z));
}

static inline __m512d ce_tanh_f64x8(__m512d z)
{
    const __m512d sign = _mm512_set1_pd(-0.0);
    const __m512d a = _mm512_andnot_pd(sign, z);
    const __m512d u = _mm512_mul_pd(a, a);
    __m512d q = _mm512_set1_pd(-0x1.59a834187ce22p-16);
    q = _mm512_fmadd_pd(q, u, _mm512_set1_pd(0x1.64fd88e9900a5p-14));
    q = _mm512_fmadd_pd(q, u, _mm512_set1_pd(-0x1.ec1091436eb2ap-13));
    q = _mm512_fmadd_pd(q, u, _mm512_set1_pd(0x1.34c5a8a996cd4p-11));
    q = _mm512_fmadd_pd(q, u, _mm512_set1_pd(-0x1.7d97cfd138c28p-10));
    q = _mm512_fmadd_pd(q, u, _mm512_set1_pd(0x1.d6d339333f329p-9));
    q = _mm512_fmadd_pd(q, u, _mm512_set1_pd(-0x1.226e32f00cf0cp-7));
    q = _mm512_fmadd_pd(q, u, _mm512_set1_pd(0x1.664f487713373p-6));
    q = _mm512_fmadd_pd(q, u, _mm512_set1_pd(-0x1.ba1ba1b9fec84p-5));
    q = _mm512_fmadd_pd(q, u, _mm512_set1_pd(0x1.1111111111032p-3));
    q = _mm512_fmadd_pd(q, u, _mm512_set1_pd(-0x1.5555555555555p-2));
    const __m512d small = _mm512_fmadd_pd(_mm512_mul_pd(a, u), q, a);
    const __m512d one = _mm512_set1_pd(1.0);
    const __m512d e2 = ce_exp_f64x8(_mm512_add_pd(a, a));
    const __m512d large = _mm512_sub_pd(one, _mm512_div_pd(_mm512_set1_pd(2.0), _mm512_add_pd(e2, one)));
    const __mmask8 is_small = _mm512_cmp_pd_mask(a, _mm512_set1_pd(0.55), _CMP_LT_OQ);
    return _mm512_or_pd(_mm512_mask_blend_pd(is_small, large, small), _mm512_and_pd(sign, z));
}

/* log1p(e) for e in [0, 1], the softplus term log1p(exp(-|x|)). With f = e (e < 1/2) or
 * f = (e - 1)/2 and k = 1 (e >= 1/2, so 1 + e = 2(1 + f)), f is exact (Sterbenz) and lies in
 * [-1/4, 1/2); log1p(f) = 2 atanh(s), s = f/(2 + f), is written f - f^2/2 + s(f^2/2 + R) with
 * R = z*P(z), z = s^2 <= 1/25, P a relative-minimax fit derived for this library (degree 3
 * for float, 7 for double), so the correction to the exact f is small; k*ln2 goes in two
 * parts, the rounding of k*ln2_hi + f carried. Measured max error against log1pl: 0.875 ULP
 * over every float in [0, 1], 0.861 ULP over 2^24 doubles in [0, 1] (uniform and
 * log-spaced). log1p(0) = 0 exactly, NaN stays NaN; outside [0, 1] it is not meant for use. */
static inline __m512 ce_log1p01_f32x16(__m512 e)
{
    const __m512 half = _mm512_set1_ps(0.5f);
    const __mmask16 hi = _mm512_cmp_ps_mask(e, half, _CMP_GE_OQ);
    const __m512 f = _mm512_mask_mul_ps(e, hi, _mm512_sub_ps(e, _mm512_set1_ps(1.0f)), half);
    const __m512 s = _mm512_div_ps(f, _mm512_add_ps(f, _mm512_set1_ps(2.0f)));
    const __m512 z = _mm512_mul_ps(s, s);
    __m512 p = _mm512_set1_ps(0x1.e5daf0p-3f);
    p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(0x1.24308ep-2f));
    p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(0x1.999a5cp-2f));
    p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(0x1.555556p-1f));
    const __m512 hfsq = _mm512_mul_ps(_mm512_mul_ps(half, f), f);
    __m512 lo = _mm512_fmsub_ps(s, _mm512_fmadd_ps(p, z, hfsq), hfsq);
    lo = _mm512_mask_add_ps(lo, hi, lo, _mm512_set1_ps(-0x1.05c610p-29f));
    /* k*ln2_hi + f with its rounding error kept (Fast2Sum: ln2_hi > |f|), one rounding left */
    const __m512 c = _mm512_maskz_mov_ps(hi, _mm512_set1_ps(0x1.62e430p-1f));
    const __m512 top = _mm512_add_ps(c, f);
    lo = _mm512_add_ps(lo, _mm512_add_ps(_mm512_sub_ps(c, top), f));
    return _mm512_add_ps(top, lo);
}

static inline __m512d ce_log1p01_f64x8(__m512d e)
{
    const __m512d half = _mm512_set1_pd(0.5);
    const __mmask8 hi = _mm512_cmp_pd_mask(e, half, _CMP_GE_OQ);
    const __m512d f = _mm512_mask_mul_pd(e, hi, _mm512_sub_pd(e, _mm512_set1_pd(1.0)), half);
    const __m512d s = _mm512_div_pd(f, _mm512_add_pd(f, _mm512_set1_pd(2.0)));
    const __m512d z = _mm512_mul_pd(s, s);
    __m512d p = _mm512_set1_pd(0x1.16927950b0e0ap-3);
    p = _mm512_fmadd_pd(p, z, _mm512_set1_pd(0x1.0e8db0a880191p-3));
    p = _mm512_fmadd_pd(p, z, _mm512_set1_pd(0x1.3b29bd57e7dcbp-3));
    p = _mm512_fmadd_pd(p, z, _mm512_set1_pd(0x1.745cacc6a61c6p-3));
    p = _mm512_fmadd_pd(p, z, _mm512_set1_pd(0x1.c71c72dd88afbp-3));
    p = _mm512_fmadd_pd(p, z, _mm512_set1_pd(0x1.24924923dff48p-2));
    p = _mm512_fmadd_pd(p, z, _mm512_set1_pd(0x1.9999999999f08p-2));
    p = _mm512_fmadd_pd(p, z, _mm512_set1_pd(0x1.5555555555555p-1));
    const __m512d hfsq = _mm512_mul_pd(_mm512_mul_pd(half, f), f);
    __m512d lo = _mm512_fmsub_pd(s, _mm512_fmadd_pd(p, z, hfsq), hfsq);
    lo = _mm512_mask_add_pd(lo, hi, lo, _mm512_set1_pd(0x1.abc9e3b39803fp-56));
    /* k*ln2_hi + f with its rounding error kept (Fast2Sum: ln2_hi > |f|), one rounding left */
    const __m512d c = _mm512_maskz_mov_pd(hi, _mm512_set1_pd(0x1.62e42fefa39efp-1));
    const __m512d top = _mm512_add_pd(c, f);
    lo = _mm512_add_pd(lo, _mm512_add_pd(_mm512_sub_pd(c, top), f));
    return _mm512_add_pd(top, lo);
}

#endif /* FUSEDCE_EXP_AVX512_H */
