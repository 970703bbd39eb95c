/* What the x86 vocabularies (simd_avx2.h, simd_avx512.h) spell alike but for the register width
 * W (256, 512) and the lane suffix S (ps, pd): the arithmetic, the comparisons (by CMP, which
 * gives the mask type MT), and the loads and stores of the compute type's dtype DT (f32, f64),
 * for the lane family fam (f, d) of vector type VT and compute type CT. See simd_kernels.h. */
#ifndef FUSEDCE_SIMD_X86_H
#define FUSEDCE_SIMD_X86_H

#include <immintrin.h>

#define CE_INLINE static inline __attribute__((always_inline))

#define CE_X86_LANES(fam, VT, MT, CT, W, S, DT, CMP)                                                  \
    typedef VT v##fam;                                                                                \
    typedef MT m##fam;                                                                                \
    CE_INLINE VT v##fam##_set1(CT c) { return _mm##W##_set1_##S(c); }                                 \
    CE_INLINE VT v##fam##_add(VT a, VT b) { return _mm##W##_add_##S(a, b); }                          \
    CE_INLINE VT v##fam##_sub(VT a, VT b) { return _mm##W##_sub_##S(a, b); }                          \
    CE_INLINE VT v##fam##_mul(VT a, VT b) { return _mm##W##_mul_##S(a, b); }                          \
    CE_INLINE VT v##fam##_div(VT a, VT b) { return _mm##W##_div_##S(a, b); }                          \
    CE_INLINE VT v##fam##_fma(VT a, VT b, VT c) { return _mm##W##_fmadd_##S(a, b, c); }               \
    CE_INLINE VT v##fam##_fms(VT a, VT b, VT c) { return _mm##W##_fmsub_##S(a, b, c); }               \
    CE_INLINE VT v##fam##_fnma(VT a, VT b, VT c) { return _mm##W##_fnmadd_##S(a, b, c); }             \
    /* maxps(a, b) is a > b ? a : b: NaN-skipping for a running max(y, acc) */                       \
    CE_INLINE VT v##fam##_max(VT a, VT b) { return _mm##W##_max_##S(a, b); }                          \
    CE_INLINE VT v##fam##_clamp(VT x, CT lo, CT hi)                                                   \
    {                                                                                                 \
        return _mm##W##_min_##S(v##fam##_set1(hi), _mm##W##_max_##S(v##fam##_set1(lo), x));          \
    }                                                                                                 \
    CE_INLINE VT v##fam##_neg(VT a) { return _mm##W##_sub_##S(_mm##W##_setzero_##S(), a); }           \
    CE_INLINE VT v##fam##_copysign(VT mag, VT sgn)                                                    \
    {                                                                                                 \
        return _mm##W##_or_##S(mag, _mm##W##_and_##S(v##fam##_set1(-0.0), sgn));                     \
    }                                                                                                 \
    CE_INLINE MT v##fam##_lt(VT a, VT b) { return CMP(a, b, _CMP_LT_OQ); }                            \
    CE_INLINE MT v##fam##_gt(VT a, VT b) { return CMP(a, b, _CMP_GT_OQ); }                            \
    CE_INLINE MT v##fam##_ge(VT a, VT b) { return CMP(a, b, _CMP_GE_OQ); }                            \
    CE_INLINE MT v##fam##_neq(VT a, VT b) { return CMP(a, b, _CMP_NEQ_UQ); }                          \
    CE_INLINE MT v##fam##_nlt(VT a, VT b) { return CMP(a, b, _CMP_NLT_UQ); }                          \
    CE_INLINE VT ld_##DT(const CT *p) { return _mm##W##_loadu_##S(p); }                               \
    CE_INLINE void st_##DT(CT *p, VT v) { _mm##W##_storeu_##S(p, v); }                                \
    CE_INLINE void stnt_##DT(CT *p, VT v) { _mm##W##_stream_##S(p, v); }

#endif /* FUSEDCE_SIMD_X86_H */
