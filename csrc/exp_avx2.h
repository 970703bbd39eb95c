/* Vector exp and tanh for AVX2 + FMA, inline.
 *
 * exp(x) = 2^n * e^r with n = round(x / ln2), r = x - n*ln2 in two FMA steps (the first is
 * exact), e^r = 1 + r*(1 + r*P(r)) on |r| <= ln2/2 with P a Chebyshev fit derived for this
 * library (degree 4 for float, 10 for double; the same polynomials as exp_avx512.h). AVX2 has
 * no scalef: 2^n is applied as two normal powers 2^n1 * 2^n2, n1 = clamp(n) to the normal
 * exponents, so the last multiply rounds once into the subnormal range.
 *
 * Measured max error, in ULP of the result against a more precise exp
 * (tests/c/test_kernels.c with FUSEDCE_TEST_EXHAUSTIVE=1):
 *   ce_exp_f32x8: 0.97 ULP over every float in [-104, 89]
 *   ce_exp_f64x4: 0.89 ULP over 2^24 uniform and log-spaced doubles in [-746, 710]
 * i.e. x <= 0 down to past the underflow (the max-subtracted softmax) and positive x up to
 * past the overflow. Special values: exp(-inf) = +0 exactly, exp(NaN) = NaN,
 * exp(+inf) = +inf; results below FLT_MIN / DBL_MIN are correctly rounded subnormals (not
 * flushed, unless the caller set MXCSR.FTZ), and exactly 0 below half the smallest
 * subnormal (x < -103.97 float, x < -745.13 double).
 */
#ifndef FUSEDCE_EXP_AVX2_H
#define FUSEDCE_EXP_AVX2_H

#include <immintrin.h>

/* Clamping keeps r finite for +-inf; the bounds already give 0 and +inf after scaling. */
#define CE_EXPF_LO (-104.0f)
#define CE_EXPF_HI 89.0f
#define CE_EXP_LO (-746.0)
#define CE_EXP_HI 710.0

/* r for float x, and t = n + 1.5*2^23: adding the shifter rounds x/ln2 to an integer
 * inside the FMA, and t's low mantissa bits are n. */
static inline __m256 ce_exp_reduce_f32x8(__m256 x, __m256 *t)
{
    const __m256 shifter = _mm256_set1_ps(0x1.8p23f);
    /* max/min return their second operand when either is NaN: keep x second */
    x = _mm256_min_ps(_mm256_set1_ps(CE_EXPF_HI), _mm256_max_ps(_mm256_set1_ps(CE_EXPF_LO), x));
    *t = _mm256_fmadd_ps(x, _mm256_set1_ps(0x1.715476p+0f), shifter);
    const __m256 n = _mm256_sub_ps(*t, shifter);
    const __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0x1.62e430p-1f), x);
    return _mm256_fnmadd_ps(n, _mm256_set1_ps(-0x1.05c610p-29f), r);
}

/* h(r) = 1 + r*P(r), so that e^r = 1 + r*h and e^r - 1 = r*h. */
static inline __m256 ce_exp_h_f32x8(__m256 r)
{
    __m256 p = _mm256_set1_ps(0x1.6d113cp-10f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0x1.120ba2p-7f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0x1.55551ap-5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0x1.5554dcp-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    return _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
}

/* 2^n = s1 * s2 with n1 = clamp(n, -126, 127) and n2 = n - n1 in [-24, 2], both normal. */
static inline void ce_pow2_f32x8(__m256 t, __m256 *s1, __m256 *s2)
{
    const __m256 shifter = _mm256_set1_ps(0x1.8p23f);
    const __m256 t1 = _mm256_min_ps(_mm256_max_ps(t, _mm256_set1_ps(0x1.8p23f - 126)),
                                    _mm256_set1_ps(0x1.8p23f + 127));
    const __m256 t2 = _mm256_add_ps(_mm256_sub_ps(t, t1), shifter);
    const __m256i one = _mm256_set1_epi32(0x3f800000);
    *s1 = _mm256_castsi256_ps(_mm256_add_epi32(_mm256_slli_epi32(_mm256_castps_si256(t1), 23), one));
    *s2 = _mm256_castsi256_ps(_mm256_add_epi32(_mm256_slli_epi32(_mm256_castps_si256(t2), 23), one));
}

static inline __m256 ce_exp_f32x8(__m256 x)
{
    __m256 t, s1, s2;
    const __m256 r = ce_exp_reduce_f32x8(x, &t);
    const __m256 er = _mm256_fmadd_ps(r, ce_exp_h_f32x8(r), _mm256_set1_ps(1.0f));
    ce_pow2_f32x8(t, &s1, &s2);
    return _mm256_mul_ps(_mm256_mul_ps(er, s1), s2);
}

static inline __m256d ce_exp_reduce_f64x4(__m256d x, __m256d *t)
{
    const __m256d shifter = _mm256_set1_pd(0x1.8p52);
    x = _mm256_min_pd(_mm256_set1_pd(CE_EXP_HI), _mm256_max_pd(_mm256_set1_pd(CE_EXP_LO), x));
    *t = _mm256_fmadd_pd(x, _mm256_set1_pd(0x1.71547652b82fep+0), shifter);
    const __m256d n = _mm256_sub_pd(*t, shifter);
    const __m256d r = _mm256_fnmadd_pd(n, _mm256_set1_pd(0x1.62e42fefa39efp-1), x);
    return _mm256_fnmadd_pd(n, _mm256_set1_pd(0x1.abc9e3b39803fp-56), r);
}

static inline __m256d ce_exp_h_f64x4(__m256d r)
{
    __m256d p = _mm256_set1_pd(0x1.1f731ea5352cap-29);
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(0x1.af4e196027428p-26));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(0x1.27e4db57442fbp-22));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(0x1.71de021a90822p-19));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(0x1.a01a01a6dcaffp-16));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(0x1.a01a01abef415p-13));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(0x1.6c16c16c162ccp-10));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(0x1.11111111100cep-7));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(0x1.5555555555556p-5));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(0x1.5555555555557p-3));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(0.5));
    return _mm256_fmadd_pd(p, r, _mm256_set1_pd(1.0));
}

/* 2^n = s1 * s2 with n1 = clamp(n, -1022, 1023) and n2 = n - n1 in [-54, 1]. */
static inline void ce_pow2_f64x4(__m256d t, __m256d *s1, __m256d *s2)
{
    const __m256d shifter = _mm256_set1_pd(0x1.8p52);
    const __m256d t1 = _mm256_min_pd(_mm256_max_pd(t, _mm256_set1_pd(0x1.8p52 - 1022)),
                                     _mm256_set1_pd(0x1.8p52 + 1023));
    const __m256d t2 = _mm256_add_pd(_mm256_sub_pd(t, t1), shifter);
    const __m256i one = _mm256_set1_epi64x(0x3ff0000000000000);
    *s1 = _mm256_castsi256_pd(_mm256_add_epi64(_mm256_slli_epi64(_mm256_castpd_si256(t1), 52), one));
    *s2 = _mm256_castsi256_pd(_mm256_add_epi64(_mm256_slli_epi64(_mm256_castpd_si256(t2), 52), one));
}

static inline __m256d ce_exp_f64x4(__m256d x)
{
    __m256d t, s1, s2;
    const __m256d r = ce_exp_reduce_f64x4(x, &t);
    const __m256d er = _mm256_fmadd_pd(r, ce_exp_h_f64x4(r), _mm256_set1_pd(1.0));
    ce_pow2_f64x4(t, &s1, &s2);
    return _mm256_mul_pd(_mm256_mul_pd(er, s1), s2);
}

/* tanh(z) = z + z^3*Q(z^2) for |z| < 0.55 (Q a Chebyshev fit derived for this library,
 * degree 4 for float, 10 for double), else 1 - 2/(e^(2|z|) + 1), whose rounding errors shrink
 * as tanh approaches 1; the sign of z restored. Max error 1.6 ULP (float and double, 2^24
 * points, tests/c/test_kernels.c); tanh(+-inf) = +-1 (e^inf = inf), NaN stays NaN. */
static inline __m256 ce_tanh_f32x8(__m256 z)
{
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256 a = _mm256_andnot_ps(sign, z);
    const __m256 u = _mm256_mul_ps(a, a);
    __m256 q = _mm256_set1_ps(-0x1.b13538p-8f);
    q = _mm256_fmadd_ps(q, u, _mm256_set1_ps(0x1.5d220ep-6f));
    q = _mm256_fmadd_ps(q, u, _mm256_set1_ps(-0x1.b9a044p-5f));
    q = _mm256_fmadd_ps(q, u, _mm256_set1_ps(0x1.110feap-3f));
    q = _mm256_fmadd_ps(q, u, _mm256_set1_ps(-0x1.555554p-2f));
    const __m256 small = _mm256_fmadd_ps(_mm256_mul_ps(a, u), q, a);
    const __m256 one = _mm256_set1_ps(1.0f);
    const __m256 e2 = ce_exp_f32x8(_mm256_add_ps(a, a));
    const __m256 large = _mm256_sub_ps(one, _mm256_div_ps(_mm256_set1_ps(2.0f), _mm256_add_ps(e2, one)));
    const __m256 is_small = _mm256_cmp_ps(a, _mm256_set1_ps(0.55f), _CMP_LT_OQ);
    return _mm256_or_ps(_mm256_blendv_ps(large, small, is_small), _mm256_and_ps(sign, z));
}

static inline __m256d ce_tanh_f64x4(__m256d z)
{
    const __m256d sign = _mm256_set1_pd(-0.0);
    const __m256d a = _mm256_andnot_pd(sign, z);
    const __m256d u = _mm256_mul_pd(a, a);
    __m256d q = _mm256_set1_pd(-0x1.59a834187ce22p-16);
    q = _mm256_fmadd_pd(q, u, _mm256_set1_pd(0x1.64fd88e9900a5p-14));
    q = _mm256_fmadd_pd(q, u, _mm256_set1_pd(-0x1.ec1091436eb2ap-13));
    q = _mm256_fmadd_pd(q, u, _mm256_set1_pd(0x1.34c5a8a996cd4p-11));
    q = _mm256_fmadd_pd(q, u, _mm256_set1_pd(-0x1.7d97cfd138c28p-10));
    q = _mm256_fmadd_pd(q, u, _mm256_set1_pd(0x1.d6d339333f329p-9));
    q = _mm256_fmadd_pd(q, u, _mm256_set1_pd(-0x1.226e32f00cf0cp-7));
    q = _mm256_fmadd_pd(q, u, _mm256_set1_pd(0x1.664f487713373p-6));
    q = _mm256_fmadd_pd(q, u, _mm256_set1_pd(-0x1.ba1ba1b9fec84p-5));
    q = _mm256_fmadd_pd(q, u, _mm256_set1_pd(0x1.1111111111032p-3));
    q = _mm256_fmadd_pd(q, u, _mm256_set1_pd(-0x1.5555555555555p-2));
    const __m256d small = _mm256_fmadd_pd(_mm256_mul_pd(a, u), q, a);
    const __m256d one = _mm256_set1_pd(1.0);
    const __m256d e2 = ce_exp_f64x4(_mm256_add_pd(a, a));
    const __m256d large = _mm256_sub_pd(one, _mm256_div_pd(_mm256_set1_pd(2.0), _mm256_add_pd(e2, one)));
    const __m256d is_small = _mm256_cmp_pd(a, _mm256_set1_pd(0.55), _CMP_LT_OQ);
    return _mm256_or_pd(_mm256_blendv_pd(large, small, is_small), _mm256_and_pd(sign, z));
}

/* log1p(e) for e in [0, 1], the softplus term log1p(exp(-|x|)); the same method and
 * coefficients as ce_log1p01_f32x16 in exp_avx512.h (see there), with blends for the masks.
 * Measured max error against log1pl: 0.875 ULP over every float in [0, 1], 0.861 ULP over
 * 2^24 doubles in [0, 1]. log1p(0) = 0 exactly, NaN stays NaN. */
static inline __m256 ce_log1p01_f32x8(__m256 e)
{
    const __m256 half = _mm256_set1_ps(0.5f);
    const __m256 hi = _mm256_cmp_ps(e, half, _CMP_GE_OQ);
    const __m256 f1 = _mm256_mul_ps(_mm256_sub_ps(e, _mm256_set1_ps(1.0f)), half); /* exact */
    const __m256 f = _mm256_blendv_ps(e, f1, hi);
    const __m256 s = _mm256_div_ps(f, _mm256_add_ps(f, _mm256_set1_ps(2.0f)));
    const __m256 z = _mm256_mul_ps(s, s);
    __m256 p = _mm256_set1_ps(0x1.e5daf0p-3f);
    p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(0x1.24308ep-2f));
    p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(0x1.999a5cp-2f));
    p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(0x1.555556p-1f));
    const __m256 hfsq = _mm256_mul_ps(_mm256_mul_ps(half, f), f);
    __m256 lo = _mm256_fmsub_ps(s, _mm256_fmadd_ps(p, z, hfsq), hfsq);
    lo = _mm256_add_ps(lo, _mm256_and_ps(hi, _mm256_set1_ps(-0x1.05c610p-29f)));
    /* k*ln2_hi + f with its rounding error kept (Fast2Sum: ln2_hi > |f|), one rounding left */
    const __m256 c = _mm256_and_ps(hi, _mm256_set1_ps(0x1.62e430p-1f));
    const __m256 top = _mm256_add_ps(c, f);
    lo = _mm256_add_ps(lo, _mm256_add_ps(_mm256_sub_ps(c, top), f));
    return _mm256_add_ps(top, lo);
}

static inline __m256d ce_log1p01_f64x4(__m256d e)
{
    const __m256d half = _mm256_set1_pd(0.5);
    const __m256d hi = _mm256_cmp_pd(e, half, _CMP_GE_OQ);
    const __m256d f1 = _mm256_mul_pd(_mm256_sub_pd(e, _mm256_set1_pd(1.0)), half); /* exact */
    const __m256d f = _mm256_blendv_pd(e, f1, hi);
    const __m256d s = _mm256_div_pd(f, _mm256_add_pd(f, _mm256_set1_pd(2.0)));
    const __m256d z = _mm256_mul_pd(s, s);
    __m256d p = _mm256_set1_pd(0x1.16927950b0e0ap-3);
    p = _mm256_fmadd_pd(p, z, _mm256_set1_pd(0x1.0e8db0a880191p-3));
    p = _mm256_fmadd_pd(p, z, _mm256_set1_pd(0x1.3b29bd57e7dcbp-3));
    p = _mm256_fmadd_pd(p, z, _mm256_set1_pd(0x1.745cacc6a61c6p-3));
    p = _mm256_fmadd_pd(p, z, _mm256_set1_pd(0x1.c71c72dd88afbp-3));
    p = _mm256_fmadd_pd(p, z, _mm256_set1_pd(0x1.24924923dff48p-2));
    p = _mm256_fmadd_pd(p, z, _mm256_set1_pd(0x1.9999999999f08p-2));
    p = _mm256_fmadd_pd(p, z, _mm256_set1_pd(0x1.5555555555555p-1));
    const __m256d hfsq = _mm256_mul_pd(_mm256_mul_pd(half, f), f);
    __m256d lo = _mm256_fmsub_pd(s, _mm256_fmadd_pd(p, z, hfsq), hfsq);
    lo = _mm256_add_pd(lo, _mm256_and_pd(hi, _mm256_set1_pd(0x1.abc9e3b39803fp-56)));
    /* k*ln2_hi + f with its rounding error kept (Fast2Sum: ln2_hi > |f|), one rounding left */
    const __m256d c = _mm256_and_pd(hi, _mm256_set1_pd(0x1.62e42fefa39efp-1));
    const __m256d top = _mm256_add_pd(c, f);
    lo = _mm256_add_pd(lo, _mm256_add_pd(_mm256_sub_pd(c, top), f));
    return _mm256_add_pd(top, lo);
}

#endif /* FUSEDCE_EXP_AVX2_H */
