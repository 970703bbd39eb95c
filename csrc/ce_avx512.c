/* AVX-512 row primitives (F, BW, VL, DQ; FMA and F16C for the scalar fallbacks the compiler
 * may emit). Same contract as ce_portable.c (kernels.h); see there for the math.
 *
 * The primitives are written once per compute type and storage type: this file includes
 * itself with CE_AVX512_BODY defined, once per dtype (T, SUF) within a compute-type family
 * (VT, CT, MT, VN, VOP, ...). Tails and the head of a streamed gradient use masked loads
 * and stores, never scalar loops.
 */
#ifndef CE_AVX512_BODY

#include <immintrin.h>
#include <math.h>
#include <stdint.h>

#include "exp_avx512.h"
#include "kernels.h"

#define CE_ALWAYS_INLINE static inline __attribute__((always_inline))

/* Stats blocks: a block's y values stay in an L1 buffer between the max pass and the sum
 * pass; its float sums cover at most CE_BLOCK/64 terms per lane before going to double. */
#define CE_BLOCK 2048

/* Storage <-> compute vectors, one set per dtype: ld (full), ldm (first lanes of mask k,
 * zeros elsewhere), st, stm (masked), stnt (non-temporal, aligned destination). */
CE_ALWAYS_INLINE __m512 ld_f32(const float *p) { return _mm512_loadu_ps(p); }
CE_ALWAYS_INLINE __m512 ldm_f32(const float *p, __mmask16 k) { return _mm512_maskz_loadu_ps(k, p); }
CE_ALWAYS_INLINE void st_f32(float *p, __m512 v) { _mm512_storeu_ps(p, v); }
CE_ALWAYS_INLINE void stm_f32(float *p, __mmask16 k, __m512 v) { _mm512_mask_storeu_ps(p, k, v); }
CE_ALWAYS_INLINE void stnt_f32(float *p, __m512 v) { _mm512_stream_ps(p, v); }

CE_ALWAYS_INLINE __m512d ld_f64(const double *p) { return _mm512_loadu_pd(p); }
CE_ALWAYS_INLINE __m512d ldm_f64(const double *p, __mmask8 k)
{
    return _mm512_maskz_loadu_pd(k, p);
}
CE_ALWAYS_INLINE void st_f64(double *p, __m512d v) { _mm512_storeu_pd(p, v); }
CE_ALWAYS_INLINE void stm_f64(double *p, __mmask8 k, __m512d v) { _mm512_mask_storeu_pd(p, k, v); }
CE_ALWAYS_INLINE void stnt_f64(double *p, __m512d v) { _mm512_stream_pd(p, v); }

/* 16 half-type elements as one 256-bit integer vector */
#define CE_V16(p) ((__m256i *)(p))
#define CE_CV16(p) ((const __m256i *)(p))

/* IEEE half: the hardware conversion rounds to nearest even like ce_f32_to_f16; only NaNs
 * differ (it keeps payload bits), so they become sign | 0x7e00 as in the portable code. */
CE_ALWAYS_INLINE __m256i f32_to_f16_x16(__m512 v)
{
    const __m256i h = _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m256i qnan = _mm256_or_si256(_mm256_and_si256(h, _mm256_set1_epi16((short)0x8000)),
                                         _mm256_set1_epi16(0x7e00));
    return _mm256_mask_blend_epi16(_mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), h, qnan);
}
CE_ALWAYS_INLINE __m512 ld_f16(const uint16_t *p)
{
    return _mm512_cvtph_ps(_mm256_loadu_si256(CE_CV16(p)));
}
CE_ALWAYS_INLINE __m512 ldm_f16(const uint16_t *p, __mmask16 k)
{
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, p));
}
CE_ALWAYS_INLINE void st_f16(uint16_t *p, __m512 v)
{
    _mm256_storeu_si256(CE_V16(p), f32_to_f16_x16(v));
}
CE_ALWAYS_INLINE void stm_f16(uint16_t *p, __mmask16 k, __m512 v)
{
    _mm256_mask_storeu_epi16(p, k, f32_to_f16_x16(v));
}
CE_ALWAYS_INLINE void stnt_f16(uint16_t *p, __m512 v)
{
    _mm256_stream_si256(CE_V16(p), f32_to_f16_x16(v));
}

/* bfloat16: widen by shifting into the high half; narrow with ce_f32_to_bf16's integer
 * rounding (AVX512-BF16's instruction would flush subnormals, so it is not used). */
CE_ALWAYS_INLINE __m512 bf16_to_f32_x16(__m256i h)
{
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
CE_ALWAYS_INLINE __m512i f32_to_bf16_x16(__m512 v) /* 16-bit results in 32-bit lanes */
{
    const __m512i u = _mm512_castps_si512(v);
    const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    const __m512i rounded = _mm512_add_epi32(u, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff)));
    const __m512i qnan = _mm512_or_si512(u, _mm512_set1_epi32(0x400000));
    const __mmask16 isnan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    return _mm512_srli_epi32(_mm512_mask_blend_epi32(isnan, rounded, qnan), 16);
}
CE_ALWAYS_INLINE __m512 ld_bf16(const uint16_t *p)
{
    return bf16_to_f32_x16(_mm256_loadu_si256(CE_CV16(p)));
}
CE_ALWAYS_INLINE __m512 ldm_bf16(const uint16_t *p, __mmask16 k)
{
    return bf16_to_f32_x16(_mm256_maskz_loadu_epi16(k, p));
}
CE_ALWAYS_INLINE void st_bf16(uint16_t *p, __m512 v)
{
    _mm256_storeu_si256(CE_V16(p), _mm512_cvtepi32_epi16(f32_to_bf16_x16(v)));
}
CE_ALWAYS_INLINE void stm_bf16(uint16_t *p, __mmask16 k, __m512 v)
{
    _mm512_mask_cvtepi32_storeu_epi16(p, k, f32_to_bf16_x16(v));
}
CE_ALWAYS_INLINE void stnt_bf16(uint16_t *p, __m512 v)
{
    _mm256_stream_si256(CE_V16(p), _mm512_cvtepi32_epi16(f32_to_bf16_x16(v)));
}

/* Lane sums in double, so the block's float partial sums lose nothing more. */
CE_ALWAYS_INLINE double sum_to_double_f32x16(__m512 v)
{
    return _mm512_reduce_add_pd(_mm512_add_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(v)),
                                              _mm512_cvtps_pd(_mm512_extractf32x8_ps(v, 1))));
}

#define CE_CAT_(a, b, c) a##_##b##_##c
#define CE_CAT(a, b, c) CE_CAT_(a, b, c)
#define CE_FN(op) CE_CAT(op, SUF, avx512)
#define CE_CAT2_(a, b) a##_##b
#define CE_CAT2(a, b) CE_CAT2_(a, b)
#define LD CE_CAT2(ld, SUF)
#define LDM CE_CAT2(ldm, SUF)
#define ST CE_CAT2(st, SUF)
#define STM CE_CAT2(stm, SUF)
#define STNT CE_CAT2(stnt, SUF)
#define CE_AVX512_BODY

/* float compute: f32, f16, bf16 */
#define CT float
#define VT __m512
#define MT __mmask16
#define VN 16
#define VOP(op) _mm512_##op##_ps
#define VCMP_MASK _mm512_cmp_ps_mask
#define VEXP ce_exp_f32x16
#define VTANH ce_tanh_f32x16
#define VLOG1P ce_log1p01_f32x16
#define LDC ld_f32   /* weights and the block buffer are in the compute type */
#define LDCM ldm_f32
#define SUM_TO_DOUBLE sum_to_double_f32x16
#define SUF f32
#define T float
#include "ce_avx512.c"
#undef SUF
#undef T
#define SUF f16
#define T uint16_t
#include "ce_avx512.c"
#undef SUF
#define SUF bf16
#include "ce_avx512.c"
#undef SUF
#undef T
#undef CT
#undef VT
#undef MT
#undef VN
#undef VOP
#undef VCMP_MASK
#undef VEXP
#undef VTANH
#undef VLOG1P
#undef LDC
#undef LDCM
#undef SUM_TO_DOUBLE

/* double compute: f64 */
#define CT double
#define VT __m512d
#define MT __mmask8
#define VN 8
#define VOP(op) _mm512_##op##_pd
#define VCMP_MASK _mm512_cmp_pd_mask
#define VEXP ce_exp_f64x8
#define VTANH ce_tanh_f64x8
#define VLOG1P ce_log1p01_f64x8
#define LDC ld_f64
#define LDCM ldm_f64
#define SUM_TO_DOUBLE _mm512_reduce_add_pd
#define SUF f64
#define T double
#include "ce_avx512.c"

static void vexp_f32_avx512(const float *x, int64_t n, float *y)
{
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, ce_exp_f32x16(_mm512_loadu_ps(x + i)));
    const __mmask16 k = (__mmask16)((1u << (n - i)) - 1u);
    _mm512_mask_storeu_ps(y + i, k, ce_exp_f32x16(_mm512_maskz_loadu_ps(k, x + i)));
}

static void vexp_f64_avx512(const double *x, int64_t n, double *y)
{
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm512_storeu_pd(y + i, ce_exp_f64x8(_mm512_loadu_pd(x + i)));
    const __mmask8 k = (__mmask8)((1u << (n - i)) - 1u);
    _mm512_mask_storeu_pd(y + i, k, ce_exp_f64x8(_mm512_maskz_loadu_pd(k, x + i)));
}

#define CE_KERNELS(suf)                                                                     \
    {ce_stats_##suf##_avx512, ce_grad_##suf##_avx512, ce_shift_##suf##_avx512,               \
     ce_stats_soft_##suf##_avx512, ce_grad_soft_##suf##_avx512, bce_##suf##_avx512}
const ce_isa_table ce_table_avx512 = {
    FUSEDCE_ISA_AVX512,
    {
        [FUSEDCE_F32] = CE_KERNELS(f32),
        [FUSEDCE_F64] = CE_KERNELS(f64),
        [FUSEDCE_F16] = CE_KERNELS(f16),
        [FUSEDCE_BF16] = CE_KERNELS(bf16),
    },
    vexp_f32_avx512,
    vexp_f64_avx512,
};
#undef CE_KERNELS

#else /* CE_AVX512_BODY: the primitives for one dtype */

/* First m lanes (m <= VN). */
#define CE_LANES(m) ((MT)((1u << (m)) - 1u))

/* One full vector of pass A: y = cap(x) kept in ybuf and folded into the max. */
CE_ALWAYS_INLINE void CE_FN(pass_a)(const T *x, CT *ybuf, VT cap, VT inv_cap, VT *vmax,
                                     const int capped)
{
    VT y = LD(x);
    if (capped) y = VOP(mul)(cap, VTANH(VOP(mul)(y, inv_cap)));
    VOP(store)(ybuf, y);
    *vmax = VOP(max)(y, *vmax); /* second operand wins on NaN: NaNs are skipped */
}

/* Pass A over one block: y into ybuf (-inf past nb, up to a multiple of 4*VN, so pass B
 * needs no tail), and the block max. Two chains of max hide its latency. */
CE_ALWAYS_INLINE CT CE_FN(block_max)(const T *x, int nb, CT *ybuf, VT cap, VT inv_cap,
                                      const int capped)
{
    const VT neg_inf = VOP(set1)((CT)-INFINITY);
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
        const MT k = CE_LANES(nb - j);
        VT y = LDM(x + j, k);
        if (capped) y = VOP(mul)(cap, VTANH(VOP(mul)(y, inv_cap)));
        y = VOP(mask_blend)(k, neg_inf, y);
        VOP(store)(ybuf + j, y);
        vmax0 = VOP(max)(y, vmax0);
        j += VN;
    }
    for (; j % (4 * VN); j += VN) VOP(store)(ybuf + j, neg_inf);
    return VOP(reduce_max)(VOP(max)(vmax0, vmax1));
}

/* Pass B: sum of exp(y - ref) over the padded block, four independent accumulators. It
 * reads only L1, so it prefetches what pass A reads next (pf: the next block, or the next
 * row): otherwise the memory stream would idle while pass B computes. */
CE_ALWAYS_INLINE double CE_FN(block_sumexp)(const CT *ybuf, int nb, CT ref, const T *pf)
{
    const VT vref = VOP(set1)(ref);
    VT s0 = VOP(setzero)(), s1 = s0, s2 = s0, s3 = s0;
    for (int j = 0; j < nb; j += 4 * VN) {
        CE_PREFETCH(pf + j, 4 * VN * sizeof(T), 3);
        s0 = VOP(add)(s0, VEXP(VOP(sub)(VOP(load)(ybuf + j), vref)));
        s1 = VOP(add)(s1, VEXP(VOP(sub)(VOP(load)(ybuf + j + VN), vref)));
        s2 = VOP(add)(s2, VEXP(VOP(sub)(VOP(load)(ybuf + j + 2 * VN), vref)));
        s3 = VOP(add)(s3, VEXP(VOP(sub)(VOP(load)(ybuf + j + 3 * VN), vref)));
    }
    return SUM_TO_DOUBLE(VOP(add)(VOP(add)(s0, s1), VOP(add)(s2, s3)));
}

/* A block of nothing but -inf and NaN: its sum is NaN if a NaN is there, else 0. */
CE_ALWAYS_INLINE double CE_FN(block_nan)(const CT *ybuf, int nb)
{
    for (int j = 0; j < nb; j += VN) {
        const VT y = VOP(load)(ybuf + j);
        if (VCMP_MASK(y, y, _CMP_UNORD_Q)) return NAN;
    }
    return 0.0;
}

CE_ALWAYS_INLINE void CE_FN(stats_impl)(const T *x, int64_t n, const T *next, double softcap,
                                         ce_stats *out, const int capped)
{
    const VT cap = VOP(set1)((CT)softcap);
    const VT inv_cap = VOP(set1)(capped ? (CT)(1.0 / softcap) : (CT)0);
    CT ybuf[CE_BLOCK] __attribute__((aligned(64)));
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
    VT cap, inv_cap, shift, a, b, bq, b0; /* b for hard targets, bq and b0 for soft (q) */
} CE_FN(grad_consts);

/* dy/dx = 1 - tanh(u)^2 under the softcap (u = x/softcap, th = tanh(u)). Beyond |u| = 1 it is
 * computed as 4e/(1 + e)^2 with e = exp(-2|u|), in the vectors that have such lanes only:
 * where tanh saturates, 1 - th^2 would keep little more than the rounding of th. */
CE_ALWAYS_INLINE VT CE_FN(cap_deriv)(VT u, VT th)
{
    const VT one = VOP(set1)((CT)1), au = VOP(abs)(u);
    VT d = VOP(fnmadd)(th, th, one);
    const MT far = VCMP_MASK(au, one, _CMP_GT_OQ);
    if (far) {
        const VT e = VEXP(VOP(mul)(VOP(set1)((CT)-2), au)), one_e = VOP(add)(one, e);
        const VT far_d = VOP(div)(VOP(mul)(VOP(set1)((CT)4), e), VOP(mul)(one_e, one_e));
        d = VOP(mask_blend)(far, d, far_d);
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
        u = VOP(mul)(x, c->inv_cap);
        th = VTANH(u);
        y = VOP(mul)(c->cap, th);
    }
    const VT b = soft ? VOP(fmadd)(c->bq, q, c->b0) : c->b;
    const VT bw = weighted ? VOP(mul)(b, w) : b;
    const VT v = VOP(fmsub)(c->a, VEXP(VOP(sub)(y, c->shift)), bw);
    return capped ? VOP(mul)(v, CE_FN(cap_deriv)(u, th)) : v;
}

/* Masked: lanes k of x[0..VN), w[0..VN), q[0..VN) to g. */
CE_ALWAYS_INLINE void CE_FN(grad_masked)(const T *x, const CT *w, const T *q, T *g, MT k,
                                          const CE_FN(grad_consts) *c, const int capped,
                                          const int weighted, const int soft)
{
    const VT wv = weighted ? LDCM(w, k) : c->b;
    const VT qv = soft ? LDM(q, k) : c->b;
    STM(g, k, CE_FN(grad_vec)(LDM(x, k), wv, qv, c, capped, weighted, soft));
}

/* w + j, q + j only when they exist (no arithmetic on NULL); w_j, q_j, or b's lanes unused */
#define CE_W(j) (weighted ? w + (j) : w)
#define CE_Q(j) (soft ? q + (j) : q)
#define CE_WV(j) (weighted ? LDC(w + (j)) : c->b)
#define CE_QV(j) (soft ? LD(q + (j)) : c->b)
CE_ALWAYS_INLINE void CE_FN(grad_impl)(const T *x, const T *q, int64_t n, const T *pf,
                                        const CT *w, T *g, const CE_FN(grad_consts) *c,
                                        const int capped, const int weighted, const int soft,
                                        const int stream)
{
    int64_t j = 0;
    if (stream) {
        /* Masked head up to a 64-byte boundary of g, then aligned non-temporal stores. */
        int64_t head = (int64_t)((64 - ((uintptr_t)g & 63)) & 63) / (int64_t)sizeof(T);
        if (head > n) head = n;
        while (j < head) {
            const int m = head - j < VN ? (int)(head - j) : VN;
            CE_FN(grad_masked)(x + j, CE_W(j), CE_Q(j), g + j, CE_LANES(m), c, capped, weighted,
                               soft);
            j += m;
        }
        for (; j + VN <= n; j += VN) {
            CE_PREFETCH(pf + j, VN * sizeof(T), 2);
            STNT(g + j, CE_FN(grad_vec)(LD(x + j), CE_WV(j), CE_QV(j), c, capped, weighted, soft));
        }
    } else {
        for (; j + VN <= n; j += VN) {
            CE_PREFETCH(pf + j, VN * sizeof(T), 2);
            ST(g + j, CE_FN(grad_vec)(LD(x + j), CE_WV(j), CE_QV(j), c, capped, weighted, soft));
        }
    }
    if (j < n)
        CE_FN(grad_masked)(x + j, CE_W(j), CE_Q(j), g + j, CE_LANES(n - j), c, capped, weighted,
                           soft);
}
#undef CE_QV
#undef CE_WV
#undef CE_Q
#undef CE_W

/* The hard- and soft-target gradients: specialised on weights and streaming when uncapped
 * (the hot path), runtime flags under the softcap's tanh. */
CE_ALWAYS_INLINE void CE_FN(grad_any)(const T *x, const T *q, int64_t n, const T *next,
                                       double softcap, const CT *w, double shift, double a,
                                       double b, double bq, double b0, int stream, T *g,
                                       const int soft)
{
    const CE_FN(grad_consts) c = {
        VOP(set1)((CT)softcap), VOP(set1)(softcap > 0 ? (CT)(1.0 / softcap) : (CT)0),
        VOP(set1)((CT)shift),   VOP(set1)((CT)a),
        VOP(set1)((CT)b),       VOP(set1)((CT)bq),
        VOP(set1)((CT)b0),
    };
    /* the next row's segment, prefetched into L2 while this one computes (x: none) */
    const T *pf = next ? next : x;
    /* Streaming needs element-aligned g to reach a 64-byte boundary. */
    stream = stream && ((uintptr_t)g % sizeof(T)) == 0;
    const int weighted = w != NULL;
    if (softcap > 0) {
        CE_FN(grad_impl)(x, q, n, pf, w, g, &c, 1, weighted, soft, stream); /* not the hot path */
    } else if (stream) {
        if (weighted) CE_FN(grad_impl)(x, q, n, pf, w, g, &c, 0, 1, soft, 1);
        else CE_FN(grad_impl)(x, q, n, pf, w, g, &c, 0, 0, soft, 1);
    } else {
        if (weighted) CE_FN(grad_impl)(x, q, n, pf, w, g, &c, 0, 1, soft, 0);
        else CE_FN(grad_impl)(x, q, n, pf, w, g, &c, 0, 0, soft, 0);
    }
}

static void CE_FN(ce_grad)(const void *xv, int64_t n, const void *next, double softcap,
                           const void *wv, double shift, double a, double b, int stream,
                           void *gv)
{
    CE_FN(grad_any)((const T *)xv, NULL, n, (const T *)next, softcap, (const CT *)wv, shift, a, b,
                    0.0, 0.0, stream, (T *)gv, 0);
}

static void CE_FN(ce_grad_soft)(const void *xv, const void *qv, int64_t n, double softcap,
                                const void *wv, double shift, double a, double bq, double b0,
                                int stream, void *gv)
{
    CE_FN(grad_any)((const T *)xv, (const T *)qv, n, NULL, softcap, (const CT *)wv, shift, a, 0.0,
                    bq, b0, stream, (T *)gv, 1);
}

/* Factor sums over lanes k of one vector: f = w*q (1 for an absent w or q) into vq,
 * f*(y - ref) into vqy where f != 0 (a zero factor takes no part, even against y = -inf). */
CE_ALWAYS_INLINE void CE_FN(factor_sums_vec)(const T *x, const T *q, const CT *w, MT k, VT cap,
                                        VT inv_cap, VT ref, VT *vq, VT *vqy,
                                        const int capped, const int weighted, const int has_q)
{
    const MT all = (MT)~0u;
    /* masked lanes: f = 0, so they add nothing */
    VT y = k == all ? LD(x) : LDM(x, k);
    VT wq = has_q ? (k == all ? LD(q) : LDM(q, k)) : VOP(maskz_mov)(k, VOP(set1)((CT)1));
    if (capped) y = VOP(mul)(cap, VTANH(VOP(mul)(y, inv_cap)));
    if (weighted) wq = VOP(mul)(k == all ? LDC(w) : LDCM(w, k), wq);
    *vq = VOP(add)(*vq, wq);
    *vqy = VOP(mask3_fmadd)(wq, VOP(sub)(y, ref), *vqy, VCMP_MASK(wq, VOP(setzero)(), _CMP_NEQ_UQ));
}

/* sum f and sum f*(y - ref), f = w*q: a pass of its own like the portable one (the segment is
 * in L1/L2 after the stats pass), blocks of CT sums merged in double. */
CE_ALWAYS_INLINE void CE_FN(factor_sums_impl)(const T *x, const T *q, int64_t n, double softcap,
                                         const CT *w, double ref, double *sum_f, double *sum_fy,
                                         const int capped, const int weighted, const int has_q)
{
    const VT vref = VOP(set1)((CT)ref);
    const VT cap = VOP(set1)((CT)softcap);
    const VT inv_cap = VOP(set1)(capped ? (CT)(1.0 / softcap) : (CT)0);
    const MT all = (MT)~0u;
    double qs = 0.0, qys = 0.0;
    for (int64_t i0 = 0; i0 < n; i0 += CE_BLOCK) {
        const int64_t i1 = n - i0 < CE_BLOCK ? n : i0 + CE_BLOCK;
        VT vq0 = VOP(setzero)(), vq1 = vq0, vqy0 = vq0, vqy1 = vq0;
        int64_t j = i0;
#define CE_WQ(j) (weighted ? w + (j) : w)
#define CE_QQ(j) (has_q ? q + (j) : q)
        for (; j + 2 * VN <= i1; j += 2 * VN) { /* two chains hide the add latency */
            CE_FN(factor_sums_vec)(x + j, CE_QQ(j), CE_WQ(j), all, cap, inv_cap, vref, &vq0,
                                   &vqy0, capped, weighted, has_q);
            CE_FN(factor_sums_vec)(x + j + VN, CE_QQ(j + VN), CE_WQ(j + VN), all, cap,
                                   inv_cap, vref, &vq1, &vqy1, capped, weighted, has_q);
        }
        for (; j + VN <= i1; j += VN)
            CE_FN(factor_sums_vec)(x + j, CE_QQ(j), CE_WQ(j), all, cap, inv_cap, vref, &vq0,
                                   &vqy0, capped, weighted, has_q);
        if (j < i1)
            CE_FN(factor_sums_vec)(x + j, CE_QQ(j), CE_WQ(j), CE_LANES(i1 - j), cap, inv_cap,
                                   vref, &vq0, &vqy0, capped, weighted, has_q);
#undef CE_QQ
#undef CE_WQ
        qs += SUM_TO_DOUBLE(VOP(add)(vq0, vq1));
        qys += SUM_TO_DOUBLE(VOP(add)(vqy0, vqy1));
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

/* BCE over lanes k of one vector (see kernels.h): adds l to *acc, stores l and g where
 * wanted. softplus(+-x) = max(+-x, 0) + log1p(e) and sigmoid from the one e = exp(-|x|),
 * which never overflows; max() returns its second operand (0) for a NaN x, as the
 * portable comparisons do, and the NaN comes through e. */
CE_ALWAYS_INLINE void CE_FN(bce_vec)(const T *x, const T *t, const CT *w, const CT *pw,
                                      const CT *go, VT scale, T *l, T *g, MT k, VT *acc,
                                      const int want_l, const int want_g)
{
    const MT all = (MT)~0u;
    const VT one = VOP(set1)((CT)1), zero = VOP(setzero)();
    const VT xv = k == all ? LD(x) : LDM(x, k), tv = k == all ? LD(t) : LDM(t, k);
    const VT e = VEXP(VOP(sub)(zero, VOP(abs)(xv))), lp = VLOG1P(e);
    const VT sp_pos = VOP(add)(VOP(max)(xv, zero), lp);
    const VT sp_neg = VOP(add)(VOP(max)(VOP(sub)(zero, xv), zero), lp);
    const VT pwv = pw ? (k == all ? LDC(pw) : LDCM(pw, k)) : one;
    const VT pt = pw ? VOP(mul)(pwv, tv) : tv;
    /* two non-negative terms for t in [0, 1]: no cancellation */
    VT lv = VOP(fmadd)(VOP(sub)(one, tv), sp_pos, VOP(mul)(pt, sp_neg));
    const VT wv = w ? (k == all ? LDC(w) : LDCM(w, k)) : one;
    if (w) lv = VOP(mul)(wv, lv);
    *acc = VOP(mask_add)(*acc, k, *acc, lv);
    if (want_l) {
        if (k == all) ST(l, lv);
        else STM(l, k, lv);
    }
    if (want_g) {
        const VT L = pw ? VOP(fmadd)(VOP(sub)(pwv, one), tv, one) : one;
        const MT nonneg = VCMP_MASK(xv, zero, _CMP_GE_OQ);
        const VT sig = VOP(div)(VOP(mask_blend)(nonneg, e, one), VOP(add)(one, e));
        VT s = go ? (k == all ? LDC(go) : LDCM(go, k)) : scale;
        if (w) s = VOP(mul)(s, wv);
        const VT gv = VOP(mul)(s, VOP(fmsub)(L, sig, pt));
        if (k == all) ST(g, gv);
        else STM(g, k, gv);
    }
}

CE_ALWAYS_INLINE double CE_FN(bce_impl)(const T *x, const T *t, int64_t n, const CT *w,
                                         const CT *pw, const CT *go, double scale, T *l, T *g,
                                         const int want_l, const int want_g)
{
    const VT vscale = VOP(set1)((CT)scale);
    const MT all = (MT)~0u;
    double total = 0.0;
    for (int64_t i0 = 0; i0 < n; i0 += CE_BLOCK) {
        const int64_t i1 = n - i0 < CE_BLOCK ? n : i0 + CE_BLOCK;
        VT acc = VOP(setzero)();
        int64_t j = i0;
/* one vector at j over lanes k; no arithmetic on NULL pointers */
#define CE_BCE_AT(j, k)                                                                         \
    CE_FN(bce_vec)(x + (j), t + (j), w ? w + (j) : w, pw ? pw + (j) : pw, go ? go + (j) : go,   \
                   vscale, want_l ? l + (j) : l, want_g ? g + (j) : g, k, &acc, want_l, want_g)
        for (; j + VN <= i1; j += VN) CE_BCE_AT(j, all);
        if (j < i1) CE_BCE_AT(j, CE_LANES(i1 - j));
#undef CE_BCE_AT
        total += SUM_TO_DOUBLE(acc);
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
    const VT vs = VOP(set1)((CT)shift), vc = VOP(set1)((CT)c);
    int64_t j = 0;
    for (; j + VN <= n; j += VN) ST(o + j, VOP(sub)(VOP(sub)(LD(x + j), vs), vc));
    if (j < n) {
        const MT k = CE_LANES(n - j);
        STM(o + j, k, VOP(sub)(VOP(sub)(LDM(x + j, k), vs), vc));
    }
}

#undef CE_LANES
#endif /* CE_AVX512_BODY */
