/* AVX-512 vocabulary (F, BW, VL, DQ; FMA and F16C for what the compiler may emit) of the generic
 * kernels: see simd_kernels.h for what every vocabulary defines. Masks are k registers; tails
 * and the head of a streamed gradient are masked loads and stores; 2^n is scalef, which rounds
 * once into the subnormal range. */
#ifndef FUSEDCE_SIMD_AVX512_H
#define FUSEDCE_SIMD_AVX512_H

#include <stdint.h>

#include "simd_x86.h"

#define CE_VBYTES 64
#define CE_HAVE_STREAM 1
#define CE_HAVE_SCALEF 1
#define CE_EXP_TABLE_BITS 5 /* vf_pow2_table: 32 entries, one two-register permute */

/* The k-register operations, per lane family; the compute type's partial loads and stores. */
#define CE_AVX512_MASKS(fam, VT, MT, CT, S, DT)                                                      \
    CE_INLINE VT v##fam##_abs(VT a) { return _mm512_abs_##S(a); }                                    \
    CE_INLINE VT v##fam##_select(MT m, VT a, VT b) { return _mm512_mask_blend_##S(m, b, a); }        \
    CE_INLINE VT v##fam##_maskz(MT m, VT a) { return _mm512_maskz_mov_##S(m, a); }                   \
    CE_INLINE VT v##fam##_mask_add(VT a, MT m, VT b) { return _mm512_mask_add_##S(a, m, a, b); }     \
    CE_INLINE int v##fam##_any(MT m) { return m != 0; }                                              \
    CE_INLINE MT v##fam##_lanes(int n) { return (MT)((1u << n) - 1u); }                              \
    CE_INLINE CT v##fam##_hmax(VT v) { return _mm512_reduce_max_##S(v); }                            \
    CE_INLINE VT v##fam##_scalef(VT v, VT n) { return _mm512_scalef_##S(v, n); }                     \
    CE_INLINE VT ldp_##DT(const CT *p, int m) { return _mm512_maskz_loadu_##S(v##fam##_lanes(m), p); } \
    CE_INLINE void stp_##DT(CT *p, int m, VT v) { _mm512_mask_storeu_##S(p, v##fam##_lanes(m), v); }

#define VF_LANES 16
CE_X86_LANES(f, __m512, __mmask16, float, 512, ps, f32, _mm512_cmp_ps_mask)
CE_AVX512_MASKS(f, __m512, __mmask16, float, ps, f32)
#define VD_LANES 8
CE_X86_LANES(d, __m512d, __mmask8, double, 512, pd, f64, _mm512_cmp_pd_mask)
CE_AVX512_MASKS(d, __m512d, __mmask8, double, pd, f64)

/* 2^(n/32) for t = 1.5*2^23 + n: the table's entry for n's low 5 bits (a permute of two
 * registers reads only those), n's other bits added to its exponent (simd_math.h,
 * CE_EXP2_TABLE_5). */
CE_INLINE vf vf_pow2_table(vf t, const float *table)
{
    const __m512i ti = _mm512_castps_si512(t);
    const __m512 entry = _mm512_permutex2var_ps(_mm512_loadu_ps(table), ti, _mm512_loadu_ps(table + 16));
    return _mm512_castsi512_ps(_mm512_add_epi32(_mm512_castps_si512(entry), _mm512_slli_epi32(ti, 18)));
}

/* Lane sums in double, so float partial sums lose nothing more. */
CE_INLINE double vd_hsum_d(vd v) { return _mm512_reduce_add_pd(v); }
CE_INLINE double vf_hsum_d(vf v)
{
    return vd_hsum_d(_mm512_add_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(v)),
                                   _mm512_cvtps_pd(_mm512_extractf32x8_ps(v, 1))));
}

/* IEEE half: the conversion rounds to nearest even like ce_f32_to_f16; only NaNs differ (it
 * keeps payload bits), so they become sign | 0x7e00 as in the portable code. */
CE_INLINE __m256i f16_pack(vf v)
{
    const __m256i h = _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m256i qnan =
        _mm256_or_si256(_mm256_and_si256(h, _mm256_set1_epi16((short)0x8000)), _mm256_set1_epi16(0x7e00));
    return _mm256_mask_blend_epi16(_mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), h, qnan);
}
CE_INLINE vf ld_f16(const uint16_t *p) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p)); }
CE_INLINE vf ldp_f16(const uint16_t *p, int m) { return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(vf_lanes(m), p)); }
CE_INLINE void st_f16(uint16_t *p, vf v) { _mm256_storeu_si256((__m256i *)p, f16_pack(v)); }
CE_INLINE void stp_f16(uint16_t *p, int m, vf v) { _mm256_mask_storeu_epi16(p, vf_lanes(m), f16_pack(v)); }
CE_INLINE void stnt_f16(uint16_t *p, vf v) { _mm256_stream_si256((__m256i *)p, f16_pack(v)); }

/* bfloat16: widened by a shift into the high half; narrowed with ce_f32_to_bf16's rounding to
 * nearest even, NaNs made quiet (AVX512-BF16's instruction would flush subnormals). */
CE_INLINE vf bf16_widen(__m256i h) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)); }
CE_INLINE __m256i bf16_pack(vf v)
{
    const __m512i u = _mm512_castps_si512(v);
    const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff)));
    r = _mm512_mask_or_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), u, _mm512_set1_epi32(0x400000));
    /* the high halves of the 32-bit lanes, in one permute (a shift and a narrowing take 3) */
    const __m512i high = _mm512_set_epi16(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1, 31, 29, 27, 25, 23,
                                          21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
    return _mm512_castsi512_si256(_mm512_permutexvar_epi16(high, r));
}
CE_INLINE vf ld_bf16(const uint16_t *p) { return bf16_widen(_mm256_loadu_si256((const __m256i *)p)); }
CE_INLINE vf ldp_bf16(const uint16_t *p, int m) { return bf16_widen(_mm256_maskz_loadu_epi16(vf_lanes(m), p)); }
CE_INLINE void st_bf16(uint16_t *p, vf v) { _mm256_storeu_si256((__m256i *)p, bf16_pack(v)); }
CE_INLINE void stp_bf16(uint16_t *p, int m, vf v) { _mm256_mask_storeu_epi16(p, vf_lanes(m), bf16_pack(v)); }
CE_INLINE void stnt_bf16(uint16_t *p, vf v) { _mm256_stream_si256((__m256i *)p, bf16_pack(v)); }

#endif /* FUSEDCE_SIMD_AVX512_H */
