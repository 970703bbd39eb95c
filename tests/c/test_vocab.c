/* One vocabulary header (csrc/simd_<isa>.h) on its own, against scalar C. tests/c/build.sh
 * compiles this file once per ISA with that ISA's flags, -include simd_<isa>.h,
 * -DVOCAB_ISA=<isa> and -D_DEFAULT_SOURCE (mmap); test_kernels.c runs vocab_test_<isa> where the CPU has the ISA.
 *
 *   - partial loads and stores of 0..lanes elements of every dtype, ending at a page the
 *     process may not touch and with guard bytes before: loads give the elements and zeros
 *     past them, stores write those elements and nothing else
 *   - the NaN-skipping max (a > b ? a : b, bit for bit: a NaN or a tie keeps b) and hmax
 *   - half-precision round trips: every f16 and bf16 bit pattern widens as ce_f16_to_f32 /
 *     ce_bf16_to_f32 and narrows back as ce_f32_to_f16 / ce_f32_to_bf16 (quiet NaNs), and
 *     floats over the whole range narrow as those do
 *   - masks (lanes, select, maskz, mask_add, any, neq on NaN), clamp keeping NaN, copysign,
 *     lane sums in double, and the power of two (scalef or pow2i)
 *   - the table lookup of the softmax's exp (vf_pow2_table, vf_nlt) where the ISA has one
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "kernels.h"

#ifndef VOCAB_ISA
#error "build with -DVOCAB_ISA=<isa> -include simd_<isa>.h (tests/c/build.sh)"
#endif
#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)
#define STR_(a) #a
#define STR(a) STR_(a)
#define ISA STR(VOCAB_ISA)

typedef void (*check_fn)(int ok, const char *fmt, ...);

/* Two pages, the second one inaccessible: a buffer placed to end at the boundary faults on
 * any access past its end. */
static unsigned char *fence_page(void)
{
    const long page = sysconf(_SC_PAGESIZE);
    unsigned char *p = mmap(NULL, (size_t)page * 2, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED || mprotect(p + page, (size_t)page, PROT_NONE) != 0) {
        printf("mmap failed\n");
        exit(2);
    }
    return p + page; /* the boundary */
}

static int same_bits(const void *a, const void *b, size_t n) { return memcmp(a, b, n) == 0; }

/* ---- partial loads and stores ------------------------------------------------------------ */

/* For one dtype DT of storage type T in vectors VT of VN lanes: every m in 0..VN-1 through
 * ldp/stp, and m = VN through ld/st, with the data ending at the fence and guard bytes before.
 * The values are normal numbers of the dtype (their round trip is exact). */
#define TAIL_TEST(DT, T, VT, VN, MAKE)                                                               \
    static void tails_##DT(check_fn check, unsigned char *fence)                                     \
    {                                                                                                \
        T want[VN], got[VN];                                                                         \
        for (int i = 0; i < VN; i++) want[i] = MAKE(i + 1.5);                                        \
        for (int m = 0; m <= VN; m++) {                                                              \
            /* load: the m elements just before the fence */                                        \
            T *src = (T *)(fence - (size_t)m * sizeof(T));                                           \
            memcpy(src, want, (size_t)m * sizeof(T));                                                \
            const VT v = m == VN ? ld_##DT(src) : ldp_##DT(src, m);                                  \
            st_##DT(got, v);                                                                         \
            int ok = same_bits(got, want, (size_t)m * sizeof(T));                                    \
            for (int i = m; i < VN; i++) ok = ok && got[i] == 0;                                     \
            check(ok, "%s ldp_%s m=%d: wrong elements or not zero past m", ISA, #DT, m);             \
            /* store: m elements ending at the fence, guard bytes before them */                    \
            unsigned char *dst = fence - (size_t)m * sizeof(T);                                      \
            memset(dst - 64, 0xA5, 64 + (size_t)m * sizeof(T));                                      \
            const VT w = ld_##DT(want);                                                              \
            if (m == VN) st_##DT((T *)dst, w);                                                       \
            else stp_##DT((T *)dst, m, w);                                                           \
            ok = same_bits(dst, want, (size_t)m * sizeof(T));                                        \
            for (int i = 1; i <= 64; i++) ok = ok && dst[-i] == 0xA5;                                \
            check(ok, "%s stp_%s m=%d: wrong elements or wrote before them", ISA, #DT, m);           \
        }                                                                                            \
    }
#define MAKE_F32(v) ((float)(v))
#define MAKE_F64(v) ((double)(v))
#define MAKE_F16(v) ce_f32_to_f16((float)(v))
#define MAKE_BF16(v) ce_f32_to_bf16((float)(v))
TAIL_TEST(f32, float, vf, VF_LANES, MAKE_F32)
TAIL_TEST(f64, double, vd, VD_LANES, MAKE_F64)
TAIL_TEST(f16, uint16_t, vf, VF_LANES, MAKE_F16)
TAIL_TEST(bf16, uint16_t, vf, VF_LANES, MAKE_BF16)

/* ---- lane operations, per family ---------------------------------------------------------- */

static uint64_t rng = 0x2545F4914F6CDD1Dull;
static double uniform(double lo, double hi)
{
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return lo + (hi - lo) * (double)(rng >> 11) * 0x1p-53;
}

#define FAMILY_TEST(fam, CT, VN, DT, EMIN, EMAX, SHIFTER)                                            \
    static void family_##fam(check_fn check)                                                         \
    {                                                                                                \
        const CT specials[] = {(CT)NAN, (CT)-NAN, (CT)INFINITY, (CT)-INFINITY, (CT)0.0, (CT)-0.0,   \
                               (CT)1.0, (CT)-2.5, (CT)3.0};                                          \
        const int ns = (int)(sizeof specials / sizeof specials[0]);                                  \
        CT a[VN], b[VN], r[VN];                                                                      \
        int max_ok = 1, hmax_ok = 1;                                                                 \
        for (int round = 0; round < 400; round++) {                                                  \
            for (int i = 0; i < VN; i++) {                                                           \
                a[i] = round % 2 ? specials[(round + i) % ns] : (CT)uniform(-4, 4);                  \
                b[i] = round % 3 ? specials[(round * 7 + i) % ns] : (CT)uniform(-4, 4);              \
            }                                                                                        \
            st_##DT(r, v##fam##_max(ld_##DT(a), ld_##DT(b)));                                        \
            for (int i = 0; i < VN; i++) {                                                           \
                const CT want = a[i] > b[i] ? a[i] : b[i];                                           \
                max_ok = max_ok && same_bits(&r[i], &want, sizeof(CT));                              \
            }                                                                                        \
            /* a running max from -inf: NaNs skipped; hmax of what is left */                       \
            v##fam acc = v##fam##_set1((CT)-INFINITY);                                               \
            acc = v##fam##_max(ld_##DT(a), acc);                                                     \
            CT want = (CT)-INFINITY;                                                                 \
            for (int i = 0; i < VN; i++)                                                             \
                if (a[i] > want) want = a[i];                                                        \
            hmax_ok = hmax_ok && v##fam##_hmax(acc) == want;                                         \
        }                                                                                            \
        check(max_ok, "%s v%s_max: not a > b ? a : b bit for bit (NaN or tie must keep b)", ISA, #fam); \
        check(hmax_ok, "%s v%s_hmax of a NaN-skipping running max", ISA, #fam);                      \
        /* masks: lanes(n), any, select, maskz, mask_add; neq is true for NaN */                   \
        int mask_ok = 1;                                                                             \
        for (int i = 0; i < VN; i++) a[i] = (CT)(i + 1), b[i] = (CT)(-10 * (i + 1));                 \
        for (int n = 0; n <= VN; n++) {                                                              \
            const v##fam va = ld_##DT(a), vb = ld_##DT(b);                                           \
            CT sel[VN], mz[VN], ma[VN];                                                              \
            st_##DT(sel, v##fam##_select(v##fam##_lanes(n), va, vb));                                \
            st_##DT(mz, v##fam##_maskz(v##fam##_lanes(n), va));                                      \
            st_##DT(ma, v##fam##_mask_add(va, v##fam##_lanes(n), vb));                               \
            mask_ok = mask_ok && v##fam##_any(v##fam##_lanes(n)) == (n > 0);                         \
            for (int i = 0; i < VN; i++)                                                             \
                mask_ok = mask_ok && sel[i] == (i < n ? a[i] : b[i]) && mz[i] == (i < n ? a[i] : 0) &&  \
                          !signbit(mz[i]) && ma[i] == (i < n ? a[i] + b[i] : a[i]);                  \
        }                                                                                            \
        a[VN - 1] = (CT)NAN;                                                                         \
        mask_ok = mask_ok && v##fam##_any(v##fam##_neq(ld_##DT(a), ld_##DT(a))) &&                   \
                  !v##fam##_any(v##fam##_neq(ld_##DT(b), ld_##DT(b))) &&                             \
                  v##fam##_any(v##fam##_lt(ld_##DT(b), ld_##DT(a))) &&                               \
                  !v##fam##_any(v##fam##_gt(ld_##DT(b), ld_##DT(a)));                                \
        check(mask_ok, "%s v%s masks: lanes, select, maskz, mask_add, any, neq", ISA, #fam);          \
        /* clamp keeps NaN and bounds infinities; copysign; abs; neg */                            \
        for (int i = 0; i < VN; i++) a[i] = specials[i % ns], b[i] = (CT)(i % 2 ? -1.0 : 1.0);       \
        st_##DT(r, v##fam##_clamp(ld_##DT(a), (CT)-2, (CT)2));                                       \
        int misc_ok = 1;                                                                             \
        for (int i = 0; i < VN; i++)                                                                 \
            misc_ok = misc_ok && (isnan(a[i]) ? isnan(r[i]) : r[i] == fmax(-2, fmin(2, a[i])));     \
        st_##DT(r, v##fam##_copysign(v##fam##_abs(ld_##DT(a)), ld_##DT(b)));                         \
        for (int i = 0; i < VN; i++)                                                                 \
            misc_ok = misc_ok && (isnan(a[i]) || (fabs(r[i]) == fabs(a[i]) && !signbit(r[i]) == (b[i] > 0))); \
        st_##DT(r, v##fam##_neg(ld_##DT(b)));                                                        \
        for (int i = 0; i < VN; i++) misc_ok = misc_ok && r[i] == -b[i];                             \
        check(misc_ok, "%s v%s clamp, copysign, abs, neg", ISA, #fam);                               \
        /* lane sums in double: exact for these values */                                          \
        double sum = 0;                                                                              \
        for (int i = 0; i < VN; i++) a[i] = (CT)ldexp(1.0 + i, -3 * i), sum += (double)a[i];        \
        check(v##fam##_hsum_d(ld_##DT(a)) == sum, "%s v%s_hsum_d", ISA, #fam);                       \
        /* 2^n over the normal exponents */                                                         \
        int pow_ok = 1;                                                                              \
        for (int n = EMIN; n <= EMAX; n++) {                                                         \
            st_##DT(r, CE_POW2(fam, CT, n, SHIFTER));                                                \
            for (int i = 0; i < VN; i++) pow_ok = pow_ok && r[i] == (CT)ldexp(1.0, n);               \
        }                                                                                            \
        check(pow_ok, "%s v%s 2^n for n in [%d, %d]", ISA, #fam, EMIN, EMAX);                        \
    }
#if CE_HAVE_SCALEF
#define CE_POW2(fam, CT, n, SHIFTER) v##fam##_scalef(v##fam##_set1(1), v##fam##_set1((CT)(n)))
#else
#define CE_POW2(fam, CT, n, SHIFTER) v##fam##_pow2i(v##fam##_set1((CT)(SHIFTER) + (CT)(n)))
#endif
FAMILY_TEST(f, float, VF_LANES, f32, -126, 127, 0x1.8p23f)
FAMILY_TEST(d, double, VD_LANES, f64, -1022, 1023, 0x1.8p52)

/* ---- half precision ----------------------------------------------------------------------- */

/* Every bit pattern widens as the portable conversion does and narrows back as it does. */
#define HALF_TEST(DT, WIDEN, NARROW)                                                                 \
    static void halves_##DT(check_fn check)                                                          \
    {                                                                                                \
        static uint16_t in[65536], out[65536];                                                       \
        for (int i = 0; i < 65536; i++) in[i] = (uint16_t)i;                                         \
        long bad_widen = 0, bad_trip = 0;                                                            \
        for (int i = 0; i < 65536; i += VF_LANES) {                                                  \
            const vf v = ld_##DT(in + i);                                                            \
            float f[VF_LANES];                                                                       \
            st_f32(f, v);                                                                            \
            for (int j = 0; j < VF_LANES; j++) {                                                     \
                const float want = WIDEN(in[i + j]);                                                 \
                if (isnan(want) ? !isnan(f[j]) : !same_bits(&f[j], &want, 4)) bad_widen++;          \
            }                                                                                        \
            st_##DT(out + i, v);                                                                     \
        }                                                                                            \
        for (int i = 0; i < 65536; i++)                                                              \
            if (out[i] != NARROW(WIDEN(in[i]))) bad_trip++;                                          \
        check(bad_widen == 0, "%s ld_%s: %ld of 65536 patterns widen differently", ISA, #DT, bad_widen); \
        check(bad_trip == 0, "%s st_%s(ld_%s): %ld of 65536 patterns do not come back", ISA, #DT, #DT, \
              bad_trip);                                                                             \
        /* narrowing over the whole float range, every 977th pattern and the ties around it */     \
        long bad_narrow = 0;                                                                         \
        for (uint64_t u = 0; u < (1ull << 32); u += 977 * VF_LANES) {                                \
            float f[VF_LANES];                                                                       \
            uint16_t h[VF_LANES];                                                                    \
            for (int j = 0; j < VF_LANES; j++) {                                                     \
                uint32_t bits = (uint32_t)(u + 977u * (uint64_t)j);                                  \
                if (j % 4 == 1) bits = (bits & ~0x1fffu) | 0x1000u; /* an f16 tie */                 \
                if (j % 4 == 2) bits = (bits & ~0xffffu) | 0x8000u; /* a bf16 tie */                 \
                memcpy(&f[j], &bits, 4);                                                             \
            }                                                                                        \
            st_##DT(h, ld_f32(f));                                                                   \
            for (int j = 0; j < VF_LANES; j++)                                                       \
                if (h[j] != NARROW(f[j])) bad_narrow++;                                              \
        }                                                                                            \
        check(bad_narrow == 0, "%s st_%s: %ld floats narrow differently", ISA, #DT, bad_narrow);     \
    }
HALF_TEST(f16, ce_f16_to_f32, ce_f32_to_f16)
HALF_TEST(bf16, ce_bf16_to_f32, ce_f32_to_bf16)

#if CE_EXP_TABLE_BITS
/* The softmax exp's table lookup: with a table built here from exp2 (2^(j/2^B) to float, its
 * bits less j << (23 - B)), vf_pow2_table gives the float nearest 2^(n/2^B) for every n whose
 * result is normal; vf_nlt is true for NaN. */
static void pow2_table(check_fn check)
{
    enum { B = CE_EXP_TABLE_BITS };
    float table[1 << B], r[VF_LANES];
    for (int j = 0; j < 1 << B; j++) {
        float v = (float)exp2((double)j / (1 << B));
        uint32_t u;
        memcpy(&u, &v, 4);
        u -= (uint32_t)j << (23 - B);
        memcpy(&table[j], &u, 4);
    }
    long bad = 0;
    for (int n = -126 * (1 << B); n < 128 * (1 << B); n++) {
        st_f32(r, vf_pow2_table(vf_set1(0x1.8p23f + (float)n), table));
        for (int i = 0; i < VF_LANES; i++) bad += r[i] != (float)exp2((double)n / (1 << B));
    }
    check(bad == 0, "%s vf_pow2_table: %ld of %d powers differ", ISA, bad, (254 << B) * VF_LANES);
    const float nan = NAN;
    check(vf_any(vf_nlt(vf_set1(nan), vf_set1(0))) && vf_any(vf_nlt(vf_set1(1), vf_set1(0))) &&
              !vf_any(vf_nlt(vf_set1(-1), vf_set1(0))),
          "%s vf_nlt: not (a < b), true for NaN", ISA);
}
#endif

void CAT(vocab_test_, VOCAB_ISA)(check_fn check)
{
    unsigned char *fence = fence_page();
    tails_f32(check, fence);
    tails_f64(check, fence);
    tails_f16(check, fence);
    tails_bf16(check, fence);
    family_f(check);
    family_d(check);
    halves_f16(check);
    halves_bf16(check);
#if CE_EXP_TABLE_BITS
    pow2_table(check);
#endif
    munmap(fence - sysconf(_SC_PAGESIZE), (size_t)sysconf(_SC_PAGESIZE) * 2);
}
