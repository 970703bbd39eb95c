/* AArch64 Advanced SIMD (NEON) vocabulary of the generic kernels: see simd_kernels.h for what
 * every vocabulary defines. Masks are vectors of all-ones lanes; partial vectors go through a
 * small buffer; 2^n is two normal powers. NEON has no non-temporal store intrinsic, so the
 * gradient is never streamed. */
#ifndef FUSEDCE_SIMD_NEON_H
#define FUSEDCE_SIMD_NEON_H

#include <arm_neon.h>
#include <stdint.h>

#include "simd_tails.h"

#define CE_INLINE static inline __attribute__((always_inline))
#define CE_VBYTES 16
#define CE_HAVE_STREAM 0
#define CE_HAVE_SCALEF 0
#define CE_EXP_TABLE_BITS 0 /* the softmax's exp without a table (simd_math.h) */

/* One lane family fam (f, d): vector VT of CT lanes (suffix S: f32, f64), mask MT (suffix U). */
#define CE_NEON_LANES(fam, VT, MT, CT, S, U)                                                         \
    typedef VT v##fam;                                                                               \
    typedef MT m##fam;                                                                               \
    CE_INLINE VT v##fam##_set1(CT c) { return vdupq_n_##S(c); }                                      \
    CE_INLINE VT v##fam##_add(VT a, VT b) { return vaddq_##S(a, b); }                                \
    CE_INLINE VT v##fam##_sub(VT a, VT b) { return vsubq_##S(a, b); }                                \
    CE_INLINE VT v##fam##_mul(VT a, VT b) { return vmulq_##S(a, b); }                                \
    CE_INLINE VT v##fam##_div(VT a, VT b) { return vdivq_##S(a, b); }                                \
    CE_INLINE VT v##fam##_fma(VT a, VT b, VT c) { return vfmaq_##S(c, a, b); }                       \
    CE_INLINE VT v##fam##_fms(VT a, VT b, VT c) { return vfmaq_##S(vnegq_##S(c), a, b); }            \
    CE_INLINE VT v##fam##_fnma(VT a, VT b, VT c) { return vfmsq_##S(c, a, b); }                      \
    /* FMAX would keep NaNs: compare and select, a > b ? a : b */                                   \
    CE_INLINE VT v##fam##_max(VT a, VT b) { return vbslq_##S(vcgtq_##S(a, b), a, b); }               \
    CE_INLINE VT v##fam##_clamp(VT x, CT lo, CT hi)                                                  \
    {                                                                                                \
        return vminq_##S(vmaxq_##S(x, vdupq_n_##S(lo)), vdupq_n_##S(hi));                            \
    }                                                                                                \
    CE_INLINE VT v##fam##_abs(VT a) { return vabsq_##S(a); }                                         \
    CE_INLINE VT v##fam##_neg(VT a) { return vnegq_##S(a); }                                         \
    CE_INLINE VT v##fam##_copysign(VT mag, VT sgn)                                                   \
    {                                                                                                \
        return vbslq_##S(vreinterpretq_##U##_##S(vdupq_n_##S(-0.0)), sgn, mag);                      \
    }                                                                                                \
    CE_INLINE MT v##fam##_lt(VT a, VT b) { return vcltq_##S(a, b); }                                 \
    CE_INLINE MT v##fam##_gt(VT a, VT b) { return vcgtq_##S(a, b); }                                 \
    CE_INLINE MT v##fam##_ge(VT a, VT b) { return vcgeq_##S(a, b); }                                 \
    CE_INLINE MT v##fam##_neq(VT a, VT b) { return veorq_##U(vceqq_##S(a, b), vdupq_n_##U(-1)); }     \
    CE_INLINE VT v##fam##_select(MT m, VT a, VT b) { return vbslq_##S(m, a, b); }                    \
    CE_INLINE VT v##fam##_maskz(MT m, VT a) { return vbslq_##S(m, a, vdupq_n_##S(0)); }              \
    CE_INLINE VT v##fam##_mask_add(VT a, MT m, VT b) { return vaddq_##S(a, v##fam##_maskz(m, b)); }  \
    CE_INLINE CT v##fam##_hmax(VT v) { return vmaxvq_##S(v); }                                       \
    CE_INLINE VT ld_##S(const CT *p) { return vld1q_##S(p); }                                        \
    CE_INLINE void st_##S(CT *p, VT v) { vst1q_##S(p, v); }

#define VF_LANES 4
CE_NEON_LANES(f, float32x4_t, uint32x4_t, float, f32, u32)
#define VD_LANES 2
CE_NEON_LANES(d, float64x2_t, uint64x2_t, double, f64, u64)

CE_INLINE int vf_any(mf m) { return vmaxvq_u32(m) != 0; }
CE_INLINE int vd_any(md m) { return vmaxvq_u32(vreinterpretq_u32_u64(m)) != 0; }
CE_INLINE mf vf_lanes(int n) /* the first n */
{
    static const uint32_t iota[4] = {0, 1, 2, 3};
    return vcltq_u32(vld1q_u32(iota), vdupq_n_u32((uint32_t)n));
}
CE_INLINE md vd_lanes(int n)
{
    static const uint64_t iota[2] = {0, 1};
    return vcltq_u64(vld1q_u64(iota), vdupq_n_u64((uint64_t)n));
}
/* Lane sums in double, so float partial sums lose nothing more. */
CE_INLINE double vf_hsum_d(vf v) { return vaddvq_f64(vaddq_f64(vcvt_f64_f32(vget_low_f32(v)), vcvt_high_f64_f32(v))); }
CE_INLINE double vd_hsum_d(vd v) { return vaddvq_f64(v); }
/* 2^(t - 1.5*2^23) from t's low bits, for t - 1.5*2^23 an integer in [-126, 127] (float), and
 * 2^(t - 1.5*2^52) for t - 1.5*2^52 in [-1022, 1023] (double) */
CE_INLINE vf vf_pow2i(vf t)
{
    return vreinterpretq_f32_s32(vaddq_s32(vshlq_n_s32(vreinterpretq_s32_f32(t), 23), vdupq_n_s32(0x3f800000)));
}
CE_INLINE vd vd_pow2i(vd t)
{
    const int64x2_t bits = vshlq_n_s64(vreinterpretq_s64_f64(t), 52);
    return vreinterpretq_f64_s64(vaddq_s64(bits, vdupq_n_s64(0x3ff0000000000000)));
}

/* IEEE half: FCVT rounds to nearest even (FPCR default) like ce_f32_to_f16; only NaNs differ (it
 * keeps payload bits), so they become sign | 0x7e00 as in the portable code. */
CE_INLINE vf ld_f16(const uint16_t *p) { return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p))); }
CE_INLINE void st_f16(uint16_t *p, vf v)
{
    const uint16x4_t h = vreinterpret_u16_f16(vcvt_f16_f32(v));
    const uint16x4_t qnan = vorr_u16(vand_u16(h, vdup_n_u16(0x8000)), vdup_n_u16(0x7e00));
    vst1_u16(p, vbsl_u16(vmovn_u32(vmvnq_u32(vceqq_f32(v, v))), qnan, h));
}

/* bfloat16: widened by a shift into the high half; narrowed with ce_f32_to_bf16's rounding to
 * nearest even, NaNs made quiet. */
CE_INLINE vf ld_bf16(const uint16_t *p) { return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(p), 16)); }
CE_INLINE void st_bf16(uint16_t *p, vf v)
{
    const uint32x4_t u = vreinterpretq_u32_f32(v);
    const uint32x4_t odd = vandq_u32(vshrq_n_u32(u, 16), vdupq_n_u32(1));
    const uint32x4_t rounded = vaddq_u32(u, vaddq_u32(odd, vdupq_n_u32(0x7fff)));
    const uint32x4_t qnan = vorrq_u32(u, vdupq_n_u32(0x400000));
    vst1_u16(p, vshrn_n_u32(vbslq_u32(vmvnq_u32(vceqq_f32(v, v)), qnan, rounded), 16));
}

CE_BUFFERED_TAILS(f32, float, vf, VF_LANES)
CE_BUFFERED_TAILS(f64, double, vd, VD_LANES)
CE_BUFFERED_TAILS(f16, uint16_t, vf, VF_LANES)
CE_BUFFERED_TAILS(bf16, uint16_t, vf, VF_LANES)

#endif /* FUSEDCE_SIMD_NEON_H */
