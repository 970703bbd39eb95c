/* The SIMD kernels, written once: each ce_<isa>.c defines CE_ISA and CE_ISA_ID, includes its
 * vocabulary simd_<isa>.h and then this file, which instantiates the vector math
 * (simd_math.h) per lane family and the row primitives (simd_rows.h) per dtype, and defines
 * the ISA's table ce_table_<isa> (kernels.h). Kernel names are <op>_<dtype>_<isa>, e.g.
 * ce_grad_f32_avx512; each ce_<isa>.c lists its own.
 *
 * A vocabulary defines, with always-inline functions (CE_INLINE):
 *   CE_VBYTES                vector size in bytes
 *   CE_HAVE_STREAM           1 with non-temporal stores stnt_<dtype>
 *   CE_HAVE_SCALEF           1 with v?_scalef(v, n) = v * 2^n (n integral), else v?_pow2i(t)
 *                            = 2^(t - 1.5*2^p) from t's bits (p = 23 float, 52 double)
 *   CE_EXP_TABLE_BITS        B > 0 with vf_pow2_table(t, table) = 2^(n/2^B) for t = 1.5*2^23 + n
 *                            (a lookup of n's low B bits in simd_math.h's table, whose bits
 *                            already lack j << (23 - B), plus n << (23 - B)) and vf_nlt(a, b)
 *                            = !(a < b) (true for NaN): the softmax's float exp by table; 0 without
 * and per lane family f (float lanes: f32, f16, bf16) and d (double lanes: f64):
 *   vf, mf, VF_LANES         vector, mask (a k register or a vector of all-ones lanes), lanes
 *   vf_set1(c), vf_add, vf_sub, vf_mul, vf_div
 *   vf_fma(a, b, c) = a*b + c, vf_fms(a, b, c) = a*b - c, vf_fnma(a, b, c) = c - a*b (fused)
 *   vf_max(a, b)             a > b ? a : b: NaN-skipping for a running max(y, acc)
 *   vf_clamp(x, lo, hi)      into [lo, hi], NaN kept
 *   vf_abs, vf_neg, vf_copysign(mag, sgn)  (mag non-negative)
 *   vf_lt, vf_gt, vf_ge (ordered), vf_neq (unordered: true for NaN) -> mf
 *   vf_select(m, a, b) = m ? a : b, vf_maskz(m, a) = m ? a : +0,
 *   vf_mask_add(a, m, b) = a + (m ? b : +0), vf_any(m), vf_lanes(n) (the first n lanes)
 *   vf_hmax(v) (of non-NaN lanes), vf_hsum_d(v) (lane sum, in double)
 * and the storage types' loads and stores: ld_<dtype>(p), st_<dtype>(p, v) (unaligned), and of
 * the first m < lanes elements ldp_<dtype>(p, m) (zeros past m), stp_<dtype>(p, m, v) (masked,
 * or through a buffer: simd_tails.h), converting half types to and from float lanes with
 * round-to-nearest-even and quiet NaNs.
 * simd_x86.h holds what the x86 vocabularies spell alike.
 */
#ifndef CE_ISA
#error "define CE_ISA (the ISA's name) and include its vocabulary first"
#endif

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "kernels.h"

/* Stats blocks: a block's y values stay in an L1 buffer between the max pass and the sum
 * pass; its float sums cover at most CE_BLOCK / VF_LANES terms per lane before going to
 * double. */
#define CE_BLOCK 2048

#define CE_CAT_(a, b) a##b
#define CE_CAT(a, b) CE_CAT_(a, b)
#define CE_CAT3_(a, b, c) a##b##c
#define CE_CAT3(a, b, c) CE_CAT3_(a, b, c)
#define CE_FN(op) CE_CAT(CE_CAT3(op, _, SUF), CE_CAT(_, CE_ISA)) /* op_<dtype>_<isa> */
/* The lane family CE_FAM (f or d) gives the vector and mask types, the compute type, the lanes
 * and the compute type's dtype; the vocabulary's operations are VOP(op): vf_op or vd_op. */
#define VOP(op) CE_CAT3(v, CE_FAM, _##op)
#define V CE_CAT(v, CE_FAM)
#define M CE_CAT(m, CE_FAM)
#define CT CE_CAT(CE_CT_, CE_FAM)
#define VN CE_CAT(CE_LANES_, CE_FAM)
#define CSUF CE_CAT(CE_CSUF_, CE_FAM)
#define CE_CT_f float
#define CE_CT_d double
#define CE_LANES_f VF_LANES
#define CE_LANES_d VD_LANES
#define CE_CSUF_f f32
#define CE_CSUF_d f64

/* ---- the vector math, per lane family -------------------------------------------------- */
#define CE_FAM f
#include "simd_math.h"
#undef CE_FAM
#define CE_FAM d
#include "simd_math.h"
#undef CE_FAM

#define LDP(p, m) CE_CAT(ldp_, SUF)(p, m)
#define STP(p, m, v) CE_CAT(stp_, SUF)(p, m, v)
#define LDCP(p, m) CE_CAT(ldp_, CSUF)(p, m)

/* ---- the row primitives, per dtype ------------------------------------------------------ */
#define LD CE_CAT(ld_, SUF)
#define ST CE_CAT(st_, SUF)
#define STNT CE_CAT(stnt_, SUF)
#define LDC CE_CAT(ld_, CSUF) /* weights and the block buffer are of the compute type */
#define STC CE_CAT(st_, CSUF)
#define VEXP CE_CAT(ce_exp_, CE_FAM)
#define VEXPN CE_CAT(ce_expn_, CE_FAM) /* for arguments <= 0 (and a little above): the softmax's */
#define VEXPN_NONPOS CE_CAT(ce_expn_nonpos_, CE_FAM) /* for arguments <= 0 or NaN */
#define VTANH CE_CAT(ce_tanh_, CE_FAM)
#define VLOG1P CE_CAT(ce_log1p01_, CE_FAM)

#define CE_FAM f
#define T float
#define SUF f32
#define CE_ROWS_VEXP 1  /* and the exp alone (f32 and f64) */
#define CE_ROWS_VEXPN 1 /* and the softmax's (f32) */
#include "simd_rows.h"
#undef CE_ROWS_VEXPN
#undef CE_ROWS_VEXP
#undef SUF
#undef T
#define T uint16_t
#define SUF f16
#include "simd_rows.h"
#undef SUF
#define SUF bf16
#include "simd_rows.h"
#undef SUF
#undef T
#undef CE_FAM
#define CE_FAM d
#define T double
#define SUF f64
#define CE_ROWS_VEXP 1
#include "simd_rows.h"
#undef CE_ROWS_VEXP
#undef SUF
#undef T
#undef CE_FAM

/* ---- the memory roofline's patterns (kernels.h, roofline.c) ------------------------------- */
static double CE_CAT(roof_read_, CE_ISA)(const void *src, int64_t bytes)
{
    const float *x = (const float *)src;
    const int64_t n = bytes / (int64_t)sizeof(float);
    vf a0 = vf_set1(0), a1 = a0, a2 = a0, a3 = a0; /* four chains: the loads are the limit */
    int64_t j = 0;
    for (; j + 4 * VF_LANES <= n; j += 4 * VF_LANES) {
        a0 = vf_max(ld_f32(x + j), a0);
        a1 = vf_max(ld_f32(x + j + VF_LANES), a1);
        a2 = vf_max(ld_f32(x + j + 2 * VF_LANES), a2);
        a3 = vf_max(ld_f32(x + j + 3 * VF_LANES), a3);
    }
    double rest = 0; /* the last few bytes */
    for (int64_t i = j * (int64_t)sizeof(float); i < bytes; i++) rest += ((const unsigned char *)src)[i];
    return vf_hmax(vf_max(vf_max(a0, a1), vf_max(a2, a3))) + rest;
}

static void CE_CAT(roof_copy_, CE_ISA)(const void *src, void *dst, int64_t bytes)
{
    const float *s = (const float *)src;
    float *d = (float *)dst;
    for (int64_t j = 0; j < bytes / (int64_t)sizeof(float); j += VF_LANES)
#if CE_HAVE_STREAM
        stnt_f32(d + j, ld_f32(s + j));
#else
        st_f32(d + j, ld_f32(s + j));
#endif
}

/* ---- the table ----------------------------------------------------------------------------- */
#define CE_KERNELS(dt)                                                                              \
    {                                                                                               \
        CE_CAT3(ce_stats_, dt, CE_CAT(_, CE_ISA)), CE_CAT3(ce_grad_, dt, CE_CAT(_, CE_ISA)),        \
            CE_CAT3(ce_shift_, dt, CE_CAT(_, CE_ISA)), CE_CAT3(ce_stats_soft_, dt, CE_CAT(_, CE_ISA)), \
            CE_CAT3(ce_grad_soft_, dt, CE_CAT(_, CE_ISA)), CE_CAT3(bce_, dt, CE_CAT(_, CE_ISA)),     \
        CE_CAT3(ce_grad_exp_, dt, CE_CAT(_, CE_ISA)), CE_CAT3(ce_stats_grad_, dt, CE_CAT(_, CE_ISA)), \
        CE_CAT3(ce_stats_ahead_, dt, CE_CAT(_, CE_ISA))                                            \
    }
const ce_isa_table CE_CAT(ce_table_, CE_ISA) = {
    CE_ISA_ID,
    {
        [FUSEDCE_F32] = CE_KERNELS(f32),
        [FUSEDCE_F64] = CE_KERNELS(f64),
        [FUSEDCE_F16] = CE_KERNELS(f16),
        [FUSEDCE_BF16] = CE_KERNELS(bf16),
    },
    CE_CAT(vexp_f32_, CE_ISA),
    CE_CAT(vexp_f64_, CE_ISA),
    CE_CAT(vexpn_f32_, CE_ISA),
    CE_CAT(vexpn_nonpos_f32_, CE_ISA),
    CE_CAT(roof_read_, CE_ISA),
    CE_CAT(roof_copy_, CE_ISA),
};
