/* AVX2 vocabulary (with FMA and F16C) of the generic kernels: see simd_kernels.h for what every
 * vocabulary defines. Masks are vectors of all-ones lanes; AVX2 has no masked 16-bit loads and
 * stores, so partial vectors go through a small buffer; 2^n is two normal powers (no scalef). */
#ifndef FUSEDCE_SIMD_AVX2_H
#define FUSEDCE_SIMD_AVX2_H

#include <stdint.h>

#include "simd_tails.h"
#include "simd_x86.h"

#define CE_VBYTES 32
#define CE_HAVE_STREAM 1
#define CE_HAVE_SCALEF 0
#define CE_EXP_TABLE_BITS 3 /* vf_pow2_table: 8 entries, one permute */

/* Masks as vectors (blends and bitwise ands), per lane family. */
#define CE_AVX2_MASKS(fam, VT, S)                                                                    \
    CE_INLINE VT v##fam##_abs(VT a) { return _mm256_andnot_##S(v##fam##_set1(-0.0), a); }            \
    CE_INLINE VT v##fam##_select(VT m, VT a, VT b) { return _mm256_blendv_##S(b, a, m); }            \
    CE_INLINE VT v##fam##_maskz(VT m, VT a) { return _mm256_and_##S(m, a); }                         \
    CE_INLINE VT v##fam##_mask_add(VT a, VT m, VT b) { return _mm256_add_##S(a, _mm256_and_##S(m, b)); } \
    CE_INLINE int v##fam##_any(VT m) { return _mm256_movemask_##S(m) != 0; }

#define VF_LANES 8
CE_X86_LANES(f, __m256, __m256, float, 256, ps, f32, _mm256_cmp_ps)
CE_AVX2_MASKS(f, __m256, ps)
#define VD_LANES 4
CE_X86_LANES(d, __m256d, __m256d, double, 256, pd, f64, _mm256_cmp_pd)
CE_AVX2_MASKS(d, __m256d, pd)

CE_INLINE mf vf_lanes(int n) /* the first n */
{
    return _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
}
CE_INLINE md vd_lanes(int n)
{
    return _mm256_castsi256_pd(_mm256_cmpgt_epi64(_mm256_set1_epi64x(n), _mm256_setr_epi64x(0, 1, 2, 3)));
}
CE_INLINE float vf_hmax(vf v)
{
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    return _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
}
CE_INLINE double vd_hmax(vd v)
{
    const __m128d m = _mm_max_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_max_sd(m, _mm_unpackhi_pd(m, m)));
}
/* Lane sums in double, so float partial sums lose nothing more. */
CE_INLINE double vd_hsum_d(vd v)
{
    const __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
}
CE_INLINE double vf_hsum_d(vf v)
{
    return vd_hsum_d(_mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(v)),
                                   _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1))));
}
/* 2^(t - 1.5*2^23) from t's low bits, for t - 1.5*2^23 an integer in [-126, 127] (float), and
 * 2^(t - 1.5*2^52) for t - 1.5*2^52 in [-1022, 1023] (double) */
CE_INLINE vf vf_pow2i(vf t)
{
    const __m256i bits = _mm256_slli_epi32(_mm256_castps_si256(t), 23);
    return _mm256_castsi256_ps(_mm256_add_epi32(bits, _mm256_set1_epi32(0x3f800000)));
}
/* 2^(n/8) for t = 1.5*2^23 + n: the table's entry for n's low 3 bits (the permute reads only
 * those), n's other bits added to its exponent (simd_math.h, CE_EXP2_TABLE_3). */
CE_INLINE vf vf_pow2_table(vf t, const float *table)
{
    const __m256i ti = _mm256_castps_si256(t);
    const __m256 entry = _mm256_permutevar8x32_ps(_mm256_loadu_ps(table), ti);
    return _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(entry), _mm256_slli_epi32(ti, 20)));
}
CE_INLINE vd vd_pow2i(vd t)
{
    const __m256i bits = _mm256_slli_epi64(_mm256_castpd_si256(t), 52);
    return _mm256_castsi256_pd(_mm256_add_epi64(bits, _mm256_set1_epi64x(0x3ff0000000000000)));
}

/* IEEE half: the conversion rounds to nearest even like ce_f32_to_f16; only NaNs differ (it
 * keeps payload bits), so they become sign | 0x7e00 as in the portable code. */
CE_INLINE __m128i f16_pack(vf v)
{
    const __m128i h = _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m128i qnan = _mm_or_si128(_mm_and_si128(h, _mm_set1_epi16((short)0x8000)), _mm_set1_epi16(0x7e00));
    const __m256i isnan32 = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    const __m128i isnan16 = _mm_packs_epi32(_mm256_castsi256_si128(isnan32), _mm256_extracti128_si256(isnan32, 1));
    return _mm_blendv_epi8(h, qnan, isnan16);
}
CE_INLINE vf ld_f16(const uint16_t *p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)); }
CE_INLINE void st_f16(uint16_t *p, vf v) { _mm_storeu_si128((__m128i *)p, f16_pack(v)); }
CE_INLINE void stnt_f16(uint16_t *p, vf v) { _mm_stream_si128((__m128i *)p, f16_pack(v)); }

/* bfloat16: widened by a shift into the high half; narrowed with ce_f32_to_bf16's rounding to
 * nearest even, NaNs made quiet. */
CE_INLINE __m128i bf16_pack(vf v)
{
    const __m256i u = _mm256_castps_si256(v);
    const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    const __m256i rounded = _mm256_add_epi32(u, _mm256_add_epi32(odd, _mm256_set1_epi32(0x7fff)));
    const __m256i qnan = _mm256_or_si256(u, _mm256_set1_epi32(0x400000));
    const __m256i isnan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    const __m256i r = _mm256_srli_epi32(_mm256_blendv_epi8(rounded, qnan, isnan), 16);
    return _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
}
CE_INLINE vf ld_bf16(const uint16_t *p)
{
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}
CE_INLINE void st_bf16(uint16_t *p, vf v) { _mm_storeu_si128((__m128i *)p, bf16_pack(v)); }
CE_INLINE void stnt_bf16(uint16_t *p, vf v) { _mm_stream_si128((__m128i *)p, bf16_pack(v)); }

CE_BUFFERED_TAILS(f32, float, vf, VF_LANES)
CE_BUFFERED_TAILS(f64, double, vd, VD_LANES)
CE_BUFFERED_TAILS(f16, uint16_t, vf, VF_LANES)
CE_BUFFERED_TAILS(bf16, uint16_t, vf, VF_LANES)

#endif /* FUSEDCE_SIMD_AVX2_H */
