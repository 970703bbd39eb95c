/* Vector exp, tanh and log1p, written once over a vocabulary (simd_kernels.h) for one lane
 * family: included with CE_FAM f (float lanes) or d (double lanes), it defines ce_exp_<fam>,
 * ce_tanh_<fam> and ce_log1p01_<fam>. The coefficients are here, once per precision.
 *
 * exp(x) = 2^n * e^r with n = round(x / ln2), r = x - n*ln2 in two FMA steps (the first is
 * exact), e^r = 1 + r*(1 + r*P(r)) on |r| <= ln2/2 with P a Chebyshev fit derived for this
 * library (degree 4 for float, 10 for double). 2^n is scalef where the ISA has it, else two
 * normal powers 2^n1 * 2^n2 with n1 = n clamped to the normal exponents; either way the last
 * step rounds once into the subnormal range.
 *
 * Measured max error, in ULP of the result against a more precise exp (tests/c/test_kernels.c
 * with FUSEDCE_TEST_EXHAUSTIVE=1; NEON under qemu-aarch64 on its default sample):
 *   float:  0.97 ULP over every float in [-104, 89] (AVX-512 and AVX2; NEON 0.87 sampled)
 *   double: 0.87 ULP (AVX-512), 0.89 (AVX2), 0.82 (NEON) over 2^24 doubles in [-746, 710]
 * i.e. x <= 0 down to past the underflow (the max-subtracted softmax) and positive x up to
 * past the overflow. Special values: exp(-inf) = +0 exactly, exp(NaN) = NaN, exp(+inf) = +inf;
 * results below FLT_MIN / DBL_MIN are correctly rounded subnormals (not flushed, unless the
 * caller set MXCSR.FTZ / FPCR.FZ), and exactly 0 below half the smallest subnormal
 * (x < -103.97 float, x < -745.13 double).
 */

/* Constants per family: NAME_f (float) and NAME_d (double). */
#ifndef FUSEDCE_SIMD_MATH_CONSTANTS
#define FUSEDCE_SIMD_MATH_CONSTANTS
/* Clamping keeps r finite for +-inf; the bounds already give 0 and +inf after scaling. */
#define CE_EXP_LO_f (-104.0f)
#define CE_EXP_HI_f 89.0f
#define CE_EXP_LO_d (-746.0)
#define CE_EXP_HI_d 710.0
/* n is rounded by adding 1.5*2^(mantissa bits) inside the FMA; t's low bits are then n */
#define CE_SHIFTER_f 0x1.8p23f
#define CE_SHIFTER_d 0x1.8p52
#define CE_LOG2E_f 0x1.715476p+0f
#define CE_LOG2E_d 0x1.71547652b82fep+0
#define CE_LN2_HI_f 0x1.62e430p-1f /* ln2 = hi + lo; n*hi is exact */
#define CE_LN2_LO_f (-0x1.05c610p-29f)
#define CE_LN2_HI_d 0x1.62e42fefa39efp-1
#define CE_LN2_LO_d 0x1.abc9e3b39803fp-56
/* 2^n = 2^n1 * 2^n2, n1 = clamp(n) to the normal exponents, n2 = n - n1 (also normal) */
#define CE_EMIN_f (-126)
#define CE_EMAX_f 127
#define CE_EMIN_d (-1022)
#define CE_EMAX_d 1023
/* h(r) = 1 + r*P(r): e^r = 1 + r*h, highest degree first (Horner) */
#define CE_EXP_H_f 0x1.6d113cp-10f, 0x1.120ba2p-7f, 0x1.55551ap-5f, 0x1.5554dcp-3f, 0.5f, 1.0f
#define CE_EXP_H_d                                                                               \
    0x1.1f731ea5352cap-29, 0x1.af4e196027428p-26, 0x1.27e4db57442fbp-22, 0x1.71de021a90822p-19, \
        0x1.a01a01a6dcaffp-16, 0x1.a01a01abef415p-13, 0x1.6c16c16c162ccp-10,                    \
        0x1.11111111100cep-7, 0x1.5555555555556p-5, 0x1.5555555555557p-3, 0.5, 1.0
/* tanh(z) = z + z^3*Q(z^2) on |z| < 0.55 */
#define CE_TANH_Q_f -0x1.b13538p-8f, 0x1.5d220ep-6f, -0x1.b9a044p-5f, 0x1.110feap-3f, -0x1.555554p-2f
#define CE_TANH_Q_d                                                                              \
    -0x1.59a834187ce22p-16, 0x1.64fd88e9900a5p-14, -0x1.ec1091436eb2ap-13,                       \
        0x1.34c5a8a996cd4p-11, -0x1.7d97cfd138c28p-10, 0x1.d6d339333f329p-9,                     \
        -0x1.226e32f00cf0cp-7, 0x1.664f487713373p-6, -0x1.ba1ba1b9fec84p-5,                      \
        0x1.1111111111032p-3, -0x1.5555555555555p-2
/* The softmax's exp (ce_expn): e^r = 1 + r + r^2*Q(r), Q a relative-minimax fit derived for
 * this library (degree 3); float only (double keeps ce_exp) */
#define CE_EXPN_CHEAP_f 1
#define CE_EXPN_CHEAP_d 0
#define CE_EXPN_Q_f 0x1.1062500p-7f, 0x1.572a640p-5f, 0x1.5557b00p-3f, 0x1.fffdfc0p-2f
/* The table form of the softmax's exp (CE_EXP_TABLE_BITS = B > 0): 2^(j/2^B) for j < 2^B, as
 * float bits less j << (23 - B) (so that adding n << (23 - B) gives 2^(n/2^B) for any n whose
 * low B bits are j), and e^r = 1 + r*P(r) on |r| <= ln2/2^(B+1), P = 1 + r*(c2 + c3*r) for
 * B = 3, c1 + c2*r for B = 5: relative-minimax fits derived for this library (max relative
 * error 2.5e-8 for B = 3, 5.3e-8 for B = 5), highest degree first */
#define CE_EXP2_TABLE_5                                                                          \
    0x3f800000u, 0x3f7ecd87u, 0x3f7daac3u, 0x3f7c980fu, 0x3f7b95c2u, 0x3f7aa43au, 0x3f79c3d3u,   \
        0x3f78f4f0u, 0x3f7837f0u, 0x3f778d3au, 0x3f76f532u, 0x3f767043u, 0x3f75fed7u, 0x3f75a15bu, \
        0x3f75583fu, 0x3f7523f6u, 0x3f7504f3u, 0x3f74fbafu, 0x3f7508a4u, 0x3f752c4du, 0x3f75672au, \
        0x3f75b9beu, 0x3f76248cu, 0x3f76a81eu, 0x3f7744fdu, 0x3f77fbb8u, 0x3f78ccdfu, 0x3f79b907u, \
        0x3f7ac0c7u, 0x3f7be4bau, 0x3f7d257du, 0x3f7e83b3u
#define CE_EXP2_TABLE_3                                                                          \
    0x3f800000u, 0x3f7b95c2u, 0x3f7837f0u, 0x3f75fed7u, 0x3f7504f3u, 0x3f75672au, 0x3f7744fdu,   \
        0x3f7ac0c7u
#define CE_EXPN_TABLE_P_5 0.5f, 0x1.0000f6p+0f
#define CE_EXPN_TABLE_P_3 0x1.5548e8p-3f, 0x1.00087cp-1f, 1.0f
/* log1p: R = z*P(z), z = s^2 */
#define CE_LOG1P_P_f 0x1.e5daf0p-3f, 0x1.24308ep-2f, 0x1.999a5cp-2f, 0x1.555556p-1f
#define CE_LOG1P_P_d                                                                             \
    0x1.16927950b0e0ap-3, 0x1.0e8db0a880191p-3, 0x1.3b29bd57e7dcbp-3, 0x1.745cacc6a61c6p-3,     \
        0x1.c71c72dd88afbp-3, 0x1.24924923dff48p-2, 0x1.9999999999f08p-2, 0x1.5555555555555p-1
#endif

#define CE_K(name) CE_CAT(name##_, CE_FAM) /* the family's constant */
#define CE_M(name) CE_CAT(name##_, CE_FAM) /* the family's function */

/* Horner: c[0] x^(n-1) + ... + c[n-1], with fma(p, x, c) steps */
CE_INLINE V CE_M(ce_horner)(V x, const CT *c, int n)
{
    V p = VOP(set1)(c[0]);
    for (int i = 1; i < n; i++) p = VOP(fma)(p, x, VOP(set1)(c[i]));
    return p;
}
#define CE_POLY(x, coefficients)                                                                 \
    CE_M(ce_horner)((x), (const CT[]){coefficients},                                             \
                    (int)(sizeof((const CT[]){coefficients}) / sizeof(CT)))

CE_INLINE V CE_M(ce_exp)(V x)
{
    const V shifter = VOP(set1)(CE_K(CE_SHIFTER));
    x = VOP(clamp)(x, CE_K(CE_EXP_LO), CE_K(CE_EXP_HI)); /* NaN stays NaN */
    const V t = VOP(fma)(x, VOP(set1)(CE_K(CE_LOG2E)), shifter);
    const V n = VOP(sub)(t, shifter);
    V r = VOP(fnma)(n, VOP(set1)(CE_K(CE_LN2_HI)), x);
    r = VOP(fnma)(n, VOP(set1)(CE_K(CE_LN2_LO)), r);
    const V er = VOP(fma)(r, CE_POLY(r, CE_K(CE_EXP_H)), VOP(set1)(1));
#if CE_HAVE_SCALEF
    return VOP(scalef)(er, n);
#else
    const V t1 = VOP(clamp)(t, CE_K(CE_SHIFTER) + CE_K(CE_EMIN), CE_K(CE_SHIFTER) + CE_K(CE_EMAX));
    const V t2 = VOP(add)(VOP(sub)(t, t1), shifter);
    return VOP(mul)(VOP(mul)(er, VOP(pow2i)(t1)), VOP(pow2i)(t2));
#endif
}

/* exp for the softmax's arguments, y - max <= 0 (a little above in a backward from a given
 * lse), where every exponential is taken: the float one is cheaper than ce_exp. One reduction
 * step, r = x - n*ln2_hi/2^B (off by n*(ln2 - ln2_hi)/2^B, 1.9e-9*|x|/ln2, relative to the
 * result, which matters only where the result is tiny against the row's largest term, 1).
 *
 * Where the vocabulary has a table lookup (CE_EXP_TABLE_BITS = B: 5 on AVX-512, 3 on AVX2),
 * exp(x) = 2^(n/2^B) * e^r, 2^(n/2^B) from a table of 2^B entries and n's high bits added to
 * its exponent, e^r = 1 + r*P(r) on |r| <= ln2/2^(B+1), P of degree 2 (B = 3) or 1 (B = 5),
 * and the result 2^(n/2^B) + (2^(n/2^B)*r)*P(r): its product and sum are independent of each
 * other (a shorter chain than multiplying 1 + r*P by the power). 6 (AVX2) or 5 (AVX-512) of
 * the FMA unit's operations a vector against 9 for the polynomial with scalef; one core's
 * pass 1 in cache, Zen 5, K = 32000: AVX-512 7.1-8.1 -> 9.8-9.9 G el/s with the first table
 * form (B = 4, degree 2, 6 operations), then 1.04x that (median of 8 runs, 1.00-1.22x) with
 * B = 5; AVX2 4.1-4.4 -> 5.0-5.2. Results below 2^-126 (x < -87.34) are 0 (a mask, which also
 * gives exp(-inf) = 0 and keeps NaN); ce_expn overflows to inf from 88.69 (AVX2) or 88.71
 * (AVX-512) on. Both forms give the same bits for x <= 0 (tested). Measured max error, every
 * float in [-87, 0] (tests/c/test_kernels.c with FUSEDCE_TEST_EXHAUSTIVE=1): AVX-512 5.91
 * ULP, AVX2 5.21, at the deep end where the reduction's error grows with |n|; where results
 * are 2^-24 and more (x >= -16.6, all a sum or a probability can tell from 0 against the
 * row's largest term, 1), 2.42 and 1.73 ULP.
 *
 * Else (NEON) a degree-5 polynomial on |r| <= ln2/2 (3 coefficients fitted, relative error
 * 1.05e-7): 4.93 ULP at worst, 2.51 where results are 2^-24 and more; 2^n from the bits of t,
 * which flush results below 2^-126 to 0 (x < -87.34) and overflow to inf from 88.38 on.
 * exp(-inf) = 0, NaN stays NaN. The loss and gradient bounds hold either way
 * (tests/tolerances.py).
 * ce_expn_nonpos: for callers that know x <= 0 (or NaN), as pass 1 relative to its chunk's max;
 * it leaves out the upper clamp and changes no result. */
CE_INLINE V CE_M(ce_expn_impl)(V x, const int nonpos)
{
#if CE_K(CE_EXPN_CHEAP) && CE_EXP_TABLE_BITS
#define CE_TB CE_EXP_TABLE_BITS
    static const uint32_t table[] = {CE_CAT(CE_EXP2_TABLE_, CE_TB)};
    const V shifter = VOP(set1)(CE_K(CE_SHIFTER)), one = VOP(set1)(1);
    /* 2^(n/2^B) is normal for n/2^B >= -126; below, 0 (and NaN kept: unordered compares true) */
    const M keep = VOP(nlt)(x, VOP(set1)((CT)-0x1.5d58a0p+6)); /* -126*ln2 (n rounds to -126*2^B) */
    if (!nonpos) x = VOP(clamp)(x, (CT)-88.0, (CT)88.73);       /* n/2^B <= 128: 2^128 is inf */
    const V t = VOP(fma)(x, VOP(set1)(CE_K(CE_LOG2E) * (CT)(1 << CE_TB)), shifter);
    const V n = VOP(sub)(t, shifter);
    const V r = VOP(fnma)(n, VOP(set1)(CE_K(CE_LN2_HI) / (CT)(1 << CE_TB)), x);
    const V power = VOP(pow2_table)(t, (const CT *)(const void *)table);
    const V p = CE_POLY(r, CE_CAT(CE_EXPN_TABLE_P_, CE_TB));
    V e = VOP(fma)(VOP(mul)(power, r), p, power);
    if (!nonpos) {
        /* near overflow the power may be inf, and inf + inf*r*P NaN where r <= 0: there (x > 88,
         * rare) (1 + r*P) * power. Elsewhere the arithmetic is the x <= 0 form's, so that a
         * gradient recomputing exp(y - max) gets the bits pass 1 stored. */
        const M big = VOP(gt)(x, VOP(set1)((CT)88.0));
        if (VOP(any)(big)) e = VOP(select)(big, VOP(mul)(VOP(fma)(p, r, one), power), e);
    }
    return VOP(maskz)(keep, e);
#undef CE_TB
#elif CE_K(CE_EXPN_CHEAP)
    const V shifter = VOP(set1)(CE_K(CE_SHIFTER));
    /* n in [-127, 128]: 2^-127 has the bits of 0, 2^128 those of inf */
    const CT lo = (CT)-88.0, hi = (CT)88.7;
    x = nonpos ? VOP(max)(VOP(set1)(lo), x) : VOP(clamp)(x, lo, hi); /* NaN stays NaN */
    const V t = VOP(fma)(x, VOP(set1)(CE_K(CE_LOG2E)), shifter);
    const V n = VOP(sub)(t, shifter);
    const V r = VOP(fnma)(n, VOP(set1)(CE_K(CE_LN2_HI)), x);
    const V one = VOP(set1)(1);
    const V er = VOP(fma)(VOP(fma)(CE_POLY(r, CE_K(CE_EXPN_Q)), r, one), r, one);
    return VOP(mul)(er, VOP(pow2i)(t));
#else
    (void)nonpos;
    return CE_M(ce_exp)(x);
#endif
}
CE_INLINE V CE_M(ce_expn)(V x) { return CE_M(ce_expn_impl)(x, 0); }
CE_INLINE V CE_M(ce_expn_nonpos)(V x) { return CE_M(ce_expn_impl)(x, 1); }

/* tanh(z) = z + z^3*Q(z^2) for |z| < 0.55 (Q a Chebyshev fit derived for this library, degree
 * 4 for float, 10 for double), else 1 - 2/(e^(2|z|) + 1), whose rounding errors shrink as tanh
 * approaches 1; the sign of z restored. Max error 1.6 ULP (float and double, 2^24 points,
 * tests/c/test_kernels.c); tanh(+-inf) = +-1 (e^inf = inf), NaN stays NaN. */
CE_INLINE V CE_M(ce_tanh)(V z)
{
    const V a = VOP(abs)(z), u = VOP(mul)(a, a), one = VOP(set1)(1);
    const V small = VOP(fma)(VOP(mul)(a, u), CE_POLY(u, CE_K(CE_TANH_Q)), a);
    const V e2 = CE_M(ce_exp)(VOP(add)(a, a));
    const V large = VOP(sub)(one, VOP(div)(VOP(set1)(2), VOP(add)(e2, one)));
    return VOP(copysign)(VOP(select)(VOP(lt)(a, VOP(set1)((CT)0.55)), small, large), z);
}

/* log1p(e) for e in [0, 1], the softplus term log1p(exp(-|x|)). With f = e (e < 1/2) or
 * f = (e - 1)/2 and k = 1 (e >= 1/2, so 1 + e = 2(1 + f)), f is exact (Sterbenz) and lies in
 * [-1/4, 1/2); log1p(f) = 2 atanh(s), s = f/(2 + f), is written f - f^2/2 + s(f^2/2 + R) with
 * R = z*P(z), z = s^2 <= 1/25, P a relative-minimax fit derived for this library (degree 3 for
 * float, 7 for double), so the correction to the exact f is small; k*ln2 goes in two parts, the
 * rounding of k*ln2_hi + f carried. Measured max error against log1pl: 0.875 ULP over every
 * float in [0, 1], 0.861 ULP over 2^24 doubles in [0, 1] (uniform and log-spaced).
 * log1p(0) = 0 exactly, NaN stays NaN; outside [0, 1] it is not meant for use. */
CE_INLINE V CE_M(ce_log1p01)(V e)
{
    const V half = VOP(set1)((CT)0.5);
    const M hi = VOP(ge)(e, half);
    const V f = VOP(select)(hi, VOP(mul)(VOP(sub)(e, VOP(set1)(1)), half), e); /* exact */
    const V s = VOP(div)(f, VOP(add)(f, VOP(set1)(2)));
    const V z = VOP(mul)(s, s);
    const V hfsq = VOP(mul)(VOP(mul)(half, f), f);
    V lo = VOP(fms)(s, VOP(fma)(CE_POLY(z, CE_K(CE_LOG1P_P)), z, hfsq), hfsq);
    lo = VOP(mask_add)(lo, hi, VOP(set1)(CE_K(CE_LN2_LO)));
    /* k*ln2_hi + f with its rounding error kept (Fast2Sum: ln2_hi > |f|), one rounding left */
    const V c = VOP(maskz)(hi, VOP(set1)(CE_K(CE_LN2_HI)));
    const V top = VOP(add)(c, f);
    lo = VOP(add)(lo, VOP(add)(VOP(sub)(c, top), f));
    return VOP(add)(top, lo);
}

#undef CE_POLY
#undef CE_M
#undef CE_K
