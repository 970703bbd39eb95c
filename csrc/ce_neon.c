/* AArch64 Advanced SIMD (NEON) row primitives. Same contract as ce_portable.c (kernels.h);
 * see there for the math.
 *
 * The primitives are written once: this file includes itself with CE_NEON_BODY defined, once
 * per dtype (T, SUF) within a compute-type family (VT, CT, VN, ...). Partial vectors (tails)
 * go through a small stack buffer; the math is the same vector code everywhere. NEON has no
 * non-temporal store intrinsic: `stream` is accepted and stores stay ordinary.
 */
#ifndef CE_NEON_BODY

#include <arm_neon.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "exp_neon.h"
#include "kernels.h"

#define CE_ALWAYS_INLINE static inline __attribute__((always_inline))

/* Stats blocks: a block's y values stay in an L1 buffer between the max pass and the sum
 * pass; its float sums cover at most CE_BLOCK/16 terms per lane before going to double. */
#define CE_BLOCK 2048

/* Storage <-> compute vectors, one set per dtype. */
CE_ALWAYS_INLINE float32x4_t ld_f32(const float *p) { return vld1q_f32(p); }
CE_ALWAYS_INLINE void st_f32(float *p, float32x4_t v) { vst1q_f32(p, v); }
CE_ALWAYS_INLINE float64x2_t ld_f64(const double *p) { return vld1q_f64(p); }
CE_ALWAYS_INLINE void st_f64(double *p, float64x2_t v) { vst1q_f64(p, v); }

/* IEEE half: FCVT rounds to nearest even (FPCR default) like ce_f32_to_f16; only NaNs
 * differ (it keeps payload bits), so they become sign | 0x7e00 as in the portable code. */
CE_ALWAYS_INLINE float32x4_t ld_f16(const uint16_t *p)
{
    return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p)));
}
CE_ALWAYS_INLINE void st_f16(uint16_t *p, float32x4_t v)
{
    const uint16x4_t h = vreinterpret_u16_f16(vcvt_f16_f32(v));
    const uint16x4_t qnan = vorr_u16(vand_u16(h, vdup_n_u16(0x8000)), vdup_n_u16(0x7e00));
    const uint16x4_t isnan = vmovn_u32(vmvnq_u32(vceqq_f32(v, v)));
    vst1_u16(p, vbsl_u16(isnan, qnan, h));
}

/* bfloat16: widen by shifting into the high half; narrow with ce_f32_to_bf16's integer
 * rounding to nearest even, NaNs made quiet. */
CE_ALWAYS_INLINE float32x4_t ld_bf16(const uint16_t *p)
{
    return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(p), 16));
}
CE_ALWAYS_INLINE void st_bf16(uint16_t *p, float32x4_t v)
{
    const uint32x4_t u = vreinterpretq_u32_f32(v);
    const uint32x4_t odd = vandq_u32(vshrq_n_u32(u, 16), vdupq_n_u32(1));
    const uint32x4_t rounded = vaddq_u32(u, vaddq_u32(odd, vdupq_n_u32(0x7fff)));
    const uint32x4_t qnan = vorrq_u32(u, vdupq_n_u32(0x400000));
    const uint32x4_t isnan = vmvnq_u32(vceqq_f32(v, v));
    vst1_u16(p, vshrn_n_u32(vbslq_u32(isnan, qnan, rounded), 16));
}

/* Partial vectors of m < VN elements through a buffer (zeros past m on load). */
#define CE_PARTIAL(SUF, T, VT, VN)                                                        \
    CE_ALWAYS_INLINE VT ldp_##SUF(const T *p, int m)                                      \
    {                                                                                     \
        T b[VN] = {0};                                                                    \
        memcpy(b, p, (size_t)m * sizeof(T));                                              \
        return ld_##SUF(b);                                                               \
    }                                                                                     \
    CE_ALWAYS_INLINE void stp_##SUF(T *p, int m, VT v)                                    \
    {                                                                                     \
        T b[VN];                                                                          \
        st_##SUF(b, v);                                                                   \
        memcpy(p, b, (size_t)m * sizeof(T));                                              \
    }
CE_PARTIAL(f32, float, float32x4_t, 4)
CE_PARTIAL(f64, double, float64x2_t, 2)
CE_PARTIAL(f16, uint16_t, float32x4_t, 4)
CE_PARTIAL(bf16, uint16_t, float32x4_t, 4)
#undef CE_PARTIAL

/* All-ones in the first m lanes. */
CE_ALWAYS_INLINE uint32x4_t lanes_f32x4(int m)
{
    static const uint32_t iota[4] = {0, 1, 2, 3};
    return vcltq_u32(vld1q_u32(iota), vdupq_n_u32((uint32_t)m));
}
CE_ALWAYS_INLINE uint64x2_t lanes_f64x2(int m)
{
    static const uint64_t iota[2] = {0, 1};
    return vcltq_u64(vld1q_u64(iota), vdupq_n_u64((uint64_t)m));
}

/* Any lane of a mask; any NaN lane; lane sums in double. */
CE_ALWAYS_INLINE int any_u32x4(uint32x4_t m) { return vmaxvq_u32(m) != 0; }
CE_ALWAYS_INLINE int any_u64x2(uint64x2_t m) { return vmaxvq_u32(vreinterpretq_u32_u64(m)) != 0; }
CE_ALWAYS_INLINE int anynan_f32x4(float32x4_t v) { return vminvq_u32(vceqq_f32(v, v)) == 0; }
CE_ALWAYS_INLINE int anynan_f64x2(float64x2_t v)
{
    return vminvq_u32(vreinterpretq_u32_u64(vceqq_f64(v, v))) == 0;
}
CE_ALWAYS_INLINE double hsum_f32x4(float32x4_t v)
{
    return vaddvq_f64(vaddq_f64(vcvt_f64_f32(vget_low_f32(v)), vcvt_high_f64_f32(v)));
}

#define CE_CAT_(a, b, c) a##_##b##_##c
#define CE_CAT(a, b, c) CE_CAT_(a, b, c)
#define CE_FN(op) CE_CAT(op, SUF, neon)
#define CE_CAT2_(a, b) a##_##b
#define CE_CAT2(a, b) CE_CAT2_(a, b)
#define LD CE_CAT2(ld, SUF)
#define LDP CE_CAT2(ldp, SUF)
#define ST CE_CAT2(st, SUF)
#define STP CE_CAT2(stp, SUF)
#define CE_NEON_BODY

/* float compute: f32, f16, bf16. VOP(vadd) is vaddq_f32; vfmaq(a, b, c) = a + b*c. */
#define CT float
#define VT float32x4_t
#define VN 4
#define VOP(op) op##q_f32
#define VDUP vdupq_n_f32
#define VEXP ce_exp_f32x4
#define VTANH ce_tanh_f32x4
#define VLOG1P ce_log1p01_f32x4
#define VLANES lanes_f32x4
#define VANYNAN anynan_f32x4
#define VANY any_u32x4
#define VEC_MASK uint32x4_t
#define VHMAX vmaxvq_f32
#define VHSUM hsum_f32x4
#define LDC ld_f32   /* weights and the block buffer are in the compute type */
#define LDCP ldp_f32
#define SUF f32
#define T float
#include "ce_neon.c"
#undef SUF
#undef T
#define SUF f16
#define T uint16_t
#include "ce_neon.c"
#undef SUF
#define SUF bf16
#include "ce_neon.c"
#undef SUF
#undef T
#undef CT
#undef VT
#undef VN
#undef VOP
#undef VDUP
#undef VEXP
#undef VTANH
#undef VLOG1P
#undef VLANES
#undef VANYNAN
#undef VANY
#undef VEC_MASK
#undef VHMAX
#undef VHSUM
#undef LDC
#undef LDCP

/* double compute: f64 */
#define CT double
#define VT float64x2_t
#define VN 2
#define VOP(op) op##q_f64
#define VDUP vdupq_n_f64
#define VEXP ce_exp_f64x2
#define VTANH ce_tanh_f64x2
#define VLOG1P ce_log1p01_f64x2
#define VLANES lanes_f64x2
#define VANYNAN anynan_f64x2
#define VANY any_u64x2
#define VEC_MASK uint64x2_t
#define VHMAX vmaxvq_f64
#define VHSUM vaddvq_f64
#define LDC ld_f64
#define LDCP ldp_f64
#define SUF f64
#define T double
#include "ce_neon.c"

static void vexp_f32_neon(const float *x, int64_t n, float *y)
{
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) vst1q_f32(y + i, ce_exp_f32x4(vld1q_f32(x + i)));
    if (i < n) stp_f32(y + i, (int)(n - i), ce_exp_f32x4(ldp_f32(x + i, (int)(n - i))));
}

static void vexp_f64_neon(const double *x, int64_t n, double *y)
{
    int64_t i = 0;
    for (; i + 2 <= n; i += 2) vst1q_f64(y + i, ce_exp_f64x2(vld1q_f64(x + i)));
    if (i < n) stp_f64(y + i, (int)(n - i), ce_exp_f64x2(ldp_f64(x + i, (int)(n - i))));
}

#define CE_KERNELS(suf)                                                                     \
    {ce_stats_##suf##_neon, ce_grad_##suf##_neon, ce_shift_##suf##_neon,                     \
     ce_stats_soft_##suf##_neon, ce_grad_soft_##suf##_neon, bce_##suf##_neon}
const ce_isa_table ce_table_neon = {
    FUSEDCE_ISA_NEON,
    {
        [FUSEDCE_F32] = CE_KERNELS(f32),
        [FUSEDCE_F64] = CE_KERNELS(f64),
        [FUSEDCE_F16] = CE_KERNELS(f16),
        [FUSEDCE_BF16] = CE_KERNELS(bf16),
    },
    vexp_f32_neon,
    vexp_f64_neon,
};
#undef CE_KERNELS

#else /* CE_NEON_BODY: the primitives for one dtype */

/* One full vector of pass A: y = cap(x) kept in ybuf and folded into the max. */
CE_ALWAYS_INLINE void CE_FN(pass_a)(const T *x, CT *ybuf, VT cap, VT inv_cap, VT *vmax,
                                     const int capped)
{
    VT y = LD(x);
    if (capped) y = VOP(vmul)(cap, VTANH(VOP(vmul)(y, inv_cap)));
    VOP(vst1)(ybuf, y);
    *vmax = VOP(vbsl)(VOP(vcgt)(y, *vmax), y, *vmax); /* FMAX would keep NaNs: compare */
}

/* Pass A over one block: y into ybuf (-inf past nb, up to a multiple of 4*VN, so pass B
 * needs no tail), and the block max. Two chains of max hide its latency. */
CE_ALWAYS_INLINE CT CE_FN(block_max)(const T *x, int nb, CT *ybuf, VT cap, VT inv_cap,
                                      const int capped)
{
    const VT neg_inf = VDUP((CT)-INFINITY);
    VT vmax0 = neg_inf, vmax1 = neg_inf;
    int j = 0;
    for (; j + 2 * VN <= nb; j += 2 * VN) {
        CE_FN(pass_a)(x + j, ybuf + j, cap, inv_cap, &vmax0, capped);
        CE_FN(pass_a)(x + j + VN, ybuf + j + VN, cap, inv_cap, &vmax1, capped);
    }
    if (j + VN <= nb) {
        CE_FN(pass_a)(x + j, ybuf + j, cap, inv_cap, &vmax0, capped);
        j += VN;
    }
    if (j < nb) {
        const int m = nb - j;
        VT y = LDP(x + j, m);
        if (capped) y = VOP(vmul)(cap, VTANH(VOP(vmul)(y, inv_cap)));
        y = VOP(vbsl)(VLANES(m), y, neg_inf);
        VOP(vst1)(ybuf + j, y);
        vmax0 = VOP(vbsl)(VOP(vcgt)(y, vmax0), y, vmax0);
        j += VN;
    }
    for (; j % (4 * VN); j += VN) VOP(vst1)(ybuf + j, neg_inf);
    vmax0 = VOP(vbsl)(VOP(vcgt)(vmax0, vmax1), vmax0, vmax1); /* as x86's max: ties give vmax1 */
    return VHMAX(vmax0);
}

/* Pass B: sum of exp(y - ref) over the padded block, four independent accumulators. It
 * reads only L1, so it prefetches what pass A reads next (pf: the next block, or the next
 * row): otherwise the memory stream would idle while pass B computes. */
CE_ALWAYS_INLINE double CE_FN(block_sumexp)(const CT *ybuf, int nb, CT ref, const T *pf)
{
    const VT vref = VDUP(ref);
    VT s0 = VDUP((CT)0), s1 = s0, s2 = s0, s3 = s0;
    for (int j = 0; j < nb; j += 4 * VN) {
        CE_PREFETCH(pf + j, 4 * VN * sizeof(T), 3);
        s0 = VOP(vadd)(s0, VEXP(VOP(vsub)(VOP(vld1)(ybuf + j), vref)));
        s1 = VOP(vadd)(s1, VEXP(VOP(vsub)(VOP(vld1)(ybuf + j + VN), vref)));
        s2 = VOP(vadd)(s2, VEXP(VOP(vsub)(VOP(vld1)(ybuf + j + 2 * VN), vref)));
        s3 = VOP(vadd)(s3, VEXP(VOP(vsub)(VOP(vld1)(ybuf + j + 3 * VN), vref)));
    }
    return VHSUM(VOP(vadd)(VOP(vadd)(s0, s1), VOP(vadd)(s2, s3)));
}

/* A block of nothing but -inf and NaN: its sum is NaN if a NaN is there, else 0. */
CE_ALWAYS_INLINE double CE_FN(block_nan)(const CT *ybuf, int nb)
{
    for (int j = 0; j < nb; j += VN)
        if (VANYNAN(VOP(vld1)(ybuf + j))) return NAN;
    return 0.0;
}

CE_ALWAYS_INLINE void CE_FN(stats_impl)(const T *x, int64_t n, const T *next, double softcap,
                                         ce_stats *out, const int capped)
{
    const VT cap = VDUP((CT)softcap);
    const VT inv_cap = VDUP(capped ? (CT)(1.0 / softcap) : (CT)0);
    CT ybuf[CE_BLOCK] __attribute__((aligned(16)));
    double m = -INFINITY, s = 0.0;
    for (int64_t i0 = 0; i0 < n; i0 += CE_BLOCK) {
        const int nb = (int)(n - i0 < CE_BLOCK ? n - i0 : CE_BLOCK);
        const int padded = (nb + 4 * VN - 1) / (4 * VN) * (4 * VN);
        const double bm = CE_FN(block_max)(x + i0, nb, ybuf, cap, inv_cap, capped);
        /* Sums relative to the running max: ce_merge (and its exp) only when it grows. */
        const double ref = bm > m ? bm : m;
        const T *pf = i0 + nb < n ? x + i0 + nb : next ? next : x + i0;
        const double bs = ref == -INFINITY ? CE_FN(block_nan)(ybuf, padded)
                                           : CE_FN(block_sumexp)(ybuf, padded, (CT)ref, pf);
        if (ref == m)
            s += bs;
        else
            ce_merge(&m, &s, ref, bs);
    }
    out->max = m;
    out->sum = s;
}

static void CE_FN(factor_sums)(const T *x, const T *q, int64_t n, double softcap, const CT *w,
                               double ref, double *sum_f, double *sum_fy);

static void CE_FN(ce_stats)(const void *xv, int64_t n, const void *nextv, double softcap,
                            const void *wv, int want_wsum, ce_stats *out)
{
    const T *x = (const T *)xv, *next = (const T *)nextv;
    const CT *w = (const CT *)wv;
    if (softcap > 0) CE_FN(stats_impl)(x, n, next, softcap, out, 1);
    else CE_FN(stats_impl)(x, n, next, softcap, out, 0);
    out->wtotal = out->wsum = 0.0;
    if (want_wsum)
        CE_FN(factor_sums)(x, NULL, n, softcap, w, ce_stats_ref(out->max), &out->wtotal,
                           &out->wsum);
}

typedef struct {
    VT cap, inv_cap, shift, a, neg_b, neg_bq, neg_b0; /* -b hard targets; -bq, -b0 soft (q) */
} CE_FN(grad_consts);

/* dy/dx = 1 - tanh(u)^2 under the softcap (u = x/softcap, th = tanh(u)). Beyond |u| = 1 it is
 * computed as 4e/(1 + e)^2 with e = exp(-2|u|), in the vectors that have such lanes only:
 * where tanh saturates, 1 - th^2 would keep little more than the rounding of th. */
CE_ALWAYS_INLINE VT CE_FN(cap_deriv)(VT u, VT th)
{
    const VT one = VDUP((CT)1), au = VOP(vabs)(u);
    VT d = VOP(vfms)(one, th, th);
    const VEC_MASK far = VOP(vcgt)(au, one);
    if (VANY(far)) { /* any such lane, NaN lanes or not */
        const VT e = VEXP(VOP(vmul)(VDUP((CT)-2), au)), one_e = VOP(vadd)(one, e);
        const VT far_d = VOP(vdiv)(VOP(vmul)(VDUP((CT)4), e), VOP(vmul)(one_e, one_e));
        d = VOP(vbsl)(far, far_d, d);
    }
    return d;
}

/* (a*exp(y - shift) - b*w) * (1 - tanh(u)^2) for one vector of x (and w), u = x/softcap, or
 * with soft targets (a*exp(y - shift) - w*(bq*q + b0)) * (1 - tanh(u)^2). */
CE_ALWAYS_INLINE VT CE_FN(grad_vec)(VT x, VT w, VT q, const CE_FN(grad_consts) *c,
                                    const int capped, const int weighted, const int soft)
{
    VT y = x, u = x, th = x;
    if (capped) {
        u = VOP(vmul)(x, c->inv_cap);
        th = VTANH(u);
        y = VOP(vmul)(c->cap, th);
    }
    const VT neg_b = soft ? VOP(vfma)(c->neg_b0, c->neg_bq, q) : c->neg_b;
    const VT neg_bw = weighted ? VOP(vmul)(neg_b, w) : neg_b;
    const VT v = VOP(vfma)(neg_bw, c->a, VEXP(VOP(vsub)(y, c->shift)));
    return capped ? VOP(vmul)(v, CE_FN(cap_deriv)(u, th)) : v;
}

/* The first m < VN elements of x (and w, q) to g. */
CE_ALWAYS_INLINE void CE_FN(grad_partial)(const T *x, const CT *w, const T *q, T *g, int m,
                                           const CE_FN(grad_consts) *c, const int capped,
                                           const int weighted, const int soft)
{
    const VT wv = weighted ? LDCP(w, m) : c->neg_b;
    const VT qv = soft ? LDP(q, m) : c->neg_b;
    STP(g, m, CE_FN(grad_vec)(LDP(x, m), wv, qv, c, capped, weighted, soft));
}

/* w + j, q + j only when they exist (no arithmetic on NULL); w_j, q_j, or b's lanes unused */
CE_ALWAYS_INLINE void CE_FN(grad_impl)(const T *x, const T *q, int64_t n, const T *pf,
                                        const CT *w, T *g, const CE_FN(grad_consts) *c,
                                        const int capped, const int weighted, const int soft)
{
    int64_t j = 0;
    for (; j + VN <= n; j += VN) {
        CE_PREFETCH(pf + j, VN * sizeof(T), 2);
        ST(g + j, CE_FN(grad_vec)(LD(x + j), weighted ? LDC(w + j) : c->neg_b,
                                  soft ? LD(q + j) : c->neg_b, c, capped, weighted, soft));
    }
    if (j < n)
        CE_FN(grad_partial)(x + j, weighted ? w + j : w, soft ? q + j : q, g + j, (int)(n - j), c,
                            capped, weighted, soft);
}

/* The hard- and soft-target gradients: specialised on weights when uncapped (the hot path).
 * NEON has no non-temporal store intrinsic: `stream` is ignored. */
CE_ALWAYS_INLINE void CE_FN(grad_any)(const T *x, const T *q, int64_t n, const T *next,
                                       double softcap, const CT *w, double shift, double a,
                                       double b, double bq, double b0, T *g, const int soft)
{
    const CE_FN(grad_consts) c = {
        VDUP((CT)softcap), VDUP(softcap > 0 ? (CT)(1.0 / softcap) : (CT)0),
        VDUP((CT)shift),   VDUP((CT)a),
        VDUP(-(CT)b),      VDUP(-(CT)bq),
        VDUP(-(CT)b0),
    };
    /* the next row's segment, prefetched into L2 while this one computes (x: none) */
    const T *pf = next ? next : x;
    if (softcap > 0) CE_FN(grad_impl)(x, q, n, pf, w, g, &c, 1, w != NULL, soft); /* not hot */
    else if (w) CE_FN(grad_impl)(x, q, n, pf, w, g, &c, 0, 1, soft);
    else CE_FN(grad_impl)(x, q, n, pf, w, g, &c, 0, 0, soft);
}

static void CE_FN(ce_grad)(const void *xv, int64_t n, const void *next, double softcap,
                           const void *wv, double shift, double a, double b, int stream,
                           void *gv)
{
    (void)stream;
    CE_FN(grad_any)((const T *)xv, NULL, n, (const T *)next, softcap, (const CT *)wv, shift, a, b,
                    0.0, 0.0, (T *)gv, 0);
}

static void CE_FN(ce_grad_soft)(const void *xv, const void *qv, int64_t n, double softcap,
                                const void *wv, double shift, double a, double bq, double b0,
                                int stream, void *gv)
{
    (void)stream;
    CE_FN(grad_any)((const T *)xv, (const T *)qv, n, NULL, softcap, (const CT *)wv, shift, a, 0.0,
                    bq, b0, (T *)gv, 1);
}

/* Factor sums over the first m <= VN elements: f = w*q (1 for an absent w or q) into vq,
 * f*(y - ref) into vqy where f != 0 (a zero factor takes no part, even against y = -inf). */
CE_ALWAYS_INLINE void CE_FN(factor_sums_vec)(const T *x, const T *q, const CT *w, int m, VT cap,
                                        VT inv_cap, VT ref, VT *vq, VT *vqy,
                                        const int capped, const int weighted, const int has_q)
{
    /* partial loads give f = 0 past m, so those lanes add nothing */
    VT y = m == VN ? LD(x) : LDP(x, m);
    VT wq = has_q ? (m == VN ? LD(q) : LDP(q, m))
                  : (m == VN ? VDUP((CT)1) : VOP(vbsl)(VLANES(m), VDUP((CT)1), VDUP((CT)0)));
    if (capped) y = VOP(vmul)(cap, VTANH(VOP(vmul)(y, inv_cap)));
    if (weighted) wq = VOP(vmul)(m == VN ? LDC(w) : LDCP(w, m), wq);
    *vq = VOP(vadd)(*vq, wq);
    *vqy = VOP(vbsl)(VOP(vceq)(wq, VDUP((CT)0)), *vqy, VOP(vfma)(*vqy, wq, VOP(vsub)(y, ref)));
}

/* sum f and sum f*(y - ref), f = w*q: a pass of its own like the portable one (the segment is
 * in L1/L2 after the stats pass), blocks of CT sums merged in double. */
CE_ALWAYS_INLINE void CE_FN(factor_sums_impl)(const T *x, const T *q, int64_t n, double softcap,
                                         const CT *w, double ref, double *sum_f, double *sum_fy,
                                         const int capped, const int weighted, const int has_q)
{
    const VT vref = VDUP((CT)ref);
    const VT cap = VDUP((CT)softcap);
    const VT inv_cap = VDUP(capped ? (CT)(1.0 / softcap) : (CT)0);
    double qs = 0.0, qys = 0.0;
    for (int64_t i0 = 0; i0 < n; i0 += CE_BLOCK) {
        const int64_t i1 = n - i0 < CE_BLOCK ? n : i0 + CE_BLOCK;
        VT vq0 = VDUP((CT)0), vq1 = vq0, vqy0 = vq0, vqy1 = vq0;
        int64_t j = i0;
#define CE_WQ(j) (weighted ? w + (j) : w)
#define CE_QQ(j) (has_q ? q + (j) : q)
        for (; j + 2 * VN <= i1; j += 2 * VN) { /* two chains hide the add latency */
            CE_FN(factor_sums_vec)(x + j, CE_QQ(j), CE_WQ(j), VN, cap, inv_cap, vref, &vq0,
                                   &vqy0, capped, weighted, has_q);
            CE_FN(factor_sums_vec)(x + j + VN, CE_QQ(j + VN), CE_WQ(j + VN), VN, cap,
                                   inv_cap, vref, &vq1, &vqy1, capped, weighted, has_q);
        }
        for (; j + VN <= i1; j += VN)
            CE_FN(factor_sums_vec)(x + j, CE_QQ(j), CE_WQ(j), VN, cap, inv_cap, vref, &vq0,
                                   &vqy0, capped, weighted, has_q);
        if (j < i1)
            CE_FN(factor_sums_vec)(x + j, CE_QQ(j), CE_WQ(j), (int)(i1 - j), cap, inv_cap,
                                   vref, &vq0, &vqy0, capped, weighted, has_q);
#undef CE_QQ
#undef CE_WQ
        qs += VHSUM(VOP(vadd)(vq0, vq1));
        qys += VHSUM(VOP(vadd)(vqy0, vqy1));
    }
    *sum_f = qs;
    *sum_fy = qys;
}

/* The specialisations of factor_sums_impl: on weights and q when uncapped (the hot path), runtime
 * flags under the softcap's tanh. */
static void CE_FN(factor_sums)(const T *x, const T *q, int64_t n, double softcap, const CT *w,
                               double ref, double *sum_f, double *sum_fy)
{
    if (softcap > 0)
        CE_FN(factor_sums_impl)(x, q, n, softcap, w, ref, sum_f, sum_fy, 1, w != NULL, q != NULL);
    else if (q && w) CE_FN(factor_sums_impl)(x, q, n, softcap, w, ref, sum_f, sum_fy, 0, 1, 1);
    else if (q) CE_FN(factor_sums_impl)(x, q, n, softcap, w, ref, sum_f, sum_fy, 0, 0, 1);
    else if (w) CE_FN(factor_sums_impl)(x, q, n, softcap, w, ref, sum_f, sum_fy, 0, 1, 0);
    else CE_FN(factor_sums_impl)(x, q, n, softcap, w, ref, sum_f, sum_fy, 0, 0, 0);
}

static void CE_FN(ce_stats_soft)(const void *xv, const void *qv, int64_t n, double softcap,
                                 const void *wv, int want_wsum, ce_stats *out)
{
    CE_FN(ce_stats)(xv, n, NULL, softcap, wv, want_wsum, out);
    CE_FN(factor_sums)((const T *)xv, (const T *)qv, n, softcap, (const CT *)wv,
                       ce_stats_ref(out->max), &out->qsum, &out->qysum);
}

/* BCE over the first m <= VN elements (see kernels.h): adds l to *acc, stores l and g where
 * wanted. softplus(+-x) = max(+-x, 0) + log1p(e) and sigmoid from the one e = exp(-|x|),
 * which never overflows; the max()es are compare-and-select, which give 0 for a NaN x as
 * the portable comparisons do (FMAX would give NaN), and the NaN comes through e. */
CE_ALWAYS_INLINE void CE_FN(bce_vec)(const T *x, const T *t, const CT *w, const CT *pw,
                                      const CT *go, VT scale, T *l, T *g, int m, VT *acc,
                                      const int want_l, const int want_g)
{
    const VT one = VDUP((CT)1), zero = VDUP((CT)0);
    const VT xv = m == VN ? LD(x) : LDP(x, m), tv = m == VN ? LD(t) : LDP(t, m);
    const VT e = VEXP(VOP(vneg)(VOP(vabs)(xv))), lp = VLOG1P(e);
    const VT sp_pos = VOP(vadd)(VOP(vbsl)(VOP(vcgt)(xv, zero), xv, zero), lp);
    const VT sp_neg = VOP(vadd)(VOP(vbsl)(VOP(vclt)(xv, zero), VOP(vneg)(xv), zero), lp);
    const VT pwv = pw ? (m == VN ? LDC(pw) : LDCP(pw, m)) : one;
    const VT pt = pw ? VOP(vmul)(pwv, tv) : tv;
    /* two non-negative terms for t in [0, 1]: no cancellation */
    VT lv = VOP(vfma)(VOP(vmul)(pt, sp_neg), VOP(vsub)(one, tv), sp_pos);
    const VT wv = w ? (m == VN ? LDC(w) : LDCP(w, m)) : one;
    if (w) lv = VOP(vmul)(wv, lv);
    *acc = VOP(vadd)(*acc, m == VN ? lv : VOP(vbsl)(VLANES(m), lv, zero));
    if (want_l) {
        if (m == VN) ST(l, lv);
        else STP(l, m, lv);
    }
    if (want_g) {
        const VT L = pw ? VOP(vfma)(one, VOP(vsub)(pwv, one), tv) : one;
        const VT sig = VOP(vdiv)(VOP(vbsl)(VOP(vcge)(xv, zero), one, e), VOP(vadd)(one, e));
        VT s = go ? (m == VN ? LDC(go) : LDCP(go, m)) : scale;
        if (w) s = VOP(vmul)(s, wv);
        const VT gv = VOP(vmul)(s, VOP(vfma)(VOP(vneg)(pt), L, sig));
        if (m == VN) ST(g, gv);
        else STP(g, m, gv);
    }
}

CE_ALWAYS_INLINE double CE_FN(bce_impl)(const T *x, const T *t, int64_t n, const CT *w,
                                         const CT *pw, const CT *go, double scale, T *l, T *g,
                                         const int want_l, const int want_g)
{
    const VT vscale = VDUP((CT)scale);
    double total = 0.0;
    for (int64_t i0 = 0; i0 < n; i0 += CE_BLOCK) {
        const int64_t i1 = n - i0 < CE_BLOCK ? n : i0 + CE_BLOCK;
        VT acc = VDUP((CT)0);
        int64_t j = i0;
/* m elements at j; no arithmetic on NULL pointers */
#define CE_BCE_AT(j, m)                                                                         \
    CE_FN(bce_vec)(x + (j), t + (j), w ? w + (j) : w, pw ? pw + (j) : pw, go ? go + (j) : go,   \
                   vscale, want_l ? l + (j) : l, want_g ? g + (j) : g, m, &acc, want_l, want_g)
        for (; j + VN <= i1; j += VN) CE_BCE_AT(j, VN);
        if (j < i1) CE_BCE_AT(j, (int)(i1 - j));
#undef CE_BCE_AT
        total += VHSUM(acc);
    }
    return total;
}

static double CE_FN(bce)(const void *xv, const void *tv, int64_t n, const void *wv,
                         const void *pwv, const void *gov, double scale, void *lossv, void *gv)
{
    const T *x = (const T *)xv, *t = (const T *)tv;
    const CT *w = (const CT *)wv, *pw = (const CT *)pwv, *go = (const CT *)gov;
    T *l = (T *)lossv, *g = (T *)gv;
    if (g) {
        if (l) return CE_FN(bce_impl)(x, t, n, w, pw, go, scale, l, g, 1, 1);
        return CE_FN(bce_impl)(x, t, n, w, pw, go, scale, l, g, 0, 1);
    }
    if (l) return CE_FN(bce_impl)(x, t, n, w, pw, go, scale, l, g, 1, 0);
    return CE_FN(bce_impl)(x, t, n, w, pw, go, scale, l, g, 0, 0);
}

static void CE_FN(ce_shift)(const void *xv, int64_t n, double shift, double c, void *ov)
{
    const T *x = (const T *)xv;
    T *o = (T *)ov;
    const VT vs = VDUP((CT)shift), vc = VDUP((CT)c);
    int64_t j = 0;
    for (; j + VN <= n; j += VN) ST(o + j, VOP(vsub)(VOP(vsub)(LD(x + j), vs), vc));
    if (j < n) STP(o + j, (int)(n - j), VOP(vsub)(VOP(vsub)(LDP(x + j, (int)(n - j)), vs), vc));
}

#endif /* CE_NEON_BODY */
