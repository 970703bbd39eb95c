/* The per-ISA row primitives and the function table that dispatch.c fills.
 *
 * Every ISA implements the same primitives per dtype over one contiguous segment of a row:
 * ce_portable.c in scalar C, the SIMD ISAs of isa_list.h by simd_kernels.h, written once over a
 * per-ISA vocabulary. The driver (ce_driver.c) owns the semantics: targets, weights, smoothing,
 * z-loss, reductions, threads and row splitting. Names follow <op>_<dtype>_<isa>, e.g.
 * ce_stats_f32_avx512; each ce_<isa>.c lists its own.
 *
 * "Compute type": double for f64, float for f32/f16/bf16. `weight` points at the segment's
 * first class weight in the compute type. y_j = softcap*tanh(x_j/softcap) when softcap > 0,
 * else y_j = x_j.
 */
#ifndef FUSEDCE_KERNELS_H
#define FUSEDCE_KERNELS_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "fusedce.h"
#include "isa_list.h"

/* The weighted sums are taken relative to ref = ce_stats_ref(max), the segment's max where
 * finite: the loss needs W*lse - sum w*y, which cancels catastrophically when the logits are
 * large and the sum is accumulated as is (relative to the max, every term is at most the
 * spread of the row). Terms whose factor w_j (w_j*q_j) is 0 take no part, even where
 * y_j = -inf. */
typedef struct ce_stats {
    double max;    /* max_j y_j; -inf for an empty or all -inf segment; NaNs ignored here */
    double sum;    /* sum_j exp(y_j - max); NaN if any y_j is NaN or +inf */
    double wtotal; /* sum_j w_j (w_j = 1 without weight); only when want_wsum, else 0 */
    double wsum;   /* sum_j w_j*(y_j - ref); only when want_wsum, else 0 */
    double qsum;   /* soft targets q: sum_j w_j*q_j; 0 from ce_stats */
    double qysum;  /* soft targets q: sum_j w_j*q_j*(y_j - ref); 0 from ce_stats */
} ce_stats;

static inline double ce_stats_ref(double max) { return isfinite(max) ? max : 0.0; }

/* `next` (stats and grad): where the caller reads n more elements of x after this segment
 * (the next chunk, or the same segment of its next row), or NULL. SIMD primitives prefetch it
 * while they compute from cache, so that the memory stream does not idle; a prefetch never
 * faults.
 *
 * Pass 1 over x[0..n) (a chunk of a row, ce_driver.c): max; the exponentials relative to it,
 * e_j = exp(y_j - max) (relative to 0 when the max is -inf), kept in e[0..n) (the compute type)
 * for the gradient to reuse (e may be NULL, but not under a softcap: it then holds y); their sum;
 * optionally (want_wsum) wtotal and wsum, which take another pass over the segment (from
 * cache). */
typedef void (*ce_stats_fn)(const void *x, int64_t n, const void *next, double softcap,
                            const void *weight, int want_wsum, void *e, ce_stats *out);

/* Pass 2: g_j = (a * exp(y_j - shift) - b * w_j) * (softcap > 0 ? 1 - (y_j/softcap)^2 : 1)
 * with w_j = weight ? weight[j] : 1. `shift` is exactly representable in the compute type
 * (the driver passes the row max, or the lse rounded, and folds the rest into a), so
 * y_j - shift loses nothing. g may equal x (in place). stream != 0 asks for non-temporal
 * stores (the gradient is larger than the last-level cache); they are weakly ordered, and the
 * caller issues one ce_stream_fence() after its last streamed row (a fence per row stalls
 * short rows on the write-combining buffers). But g_t = tv where 0 <= t < n (the target's
 * element, which the caller computes in double: tv already rounded to the storage type), put
 * into its lane so that no element is rewritten after a streamed store; t < 0: none. */
typedef void (*ce_grad_fn)(const void *x, int64_t n, const void *next, double softcap,
                           const void *weight, double shift, double a, double b, int stream,
                           int64_t t, double tv, void *g);

/* log_softmax: out_j = (x_j - shift) - c; out may equal x. */
typedef void (*ce_shift_fn)(const void *x, int64_t n, double shift, double c, void *out);

/* Soft (probability) targets q, of the logits' storage type, read alongside the logits.
 * Pass 1 as ce_stats_fn, plus qsum and qysum. */
typedef void (*ce_stats_soft_fn)(const void *x, const void *q, int64_t n, double softcap,
                                 const void *weight, int want_wsum, void *e, ce_stats *out);

/* Pass 2 for soft targets: g_j = (a*exp(y_j - shift) - w_j*(bq*q_j + b0)) * capderiv_j. */
typedef void (*ce_grad_soft_fn)(const void *x, const void *q, int64_t n, double softcap,
                                const void *weight, double shift, double a, double bq, double b0,
                                int stream, void *g);

/* Pass 2 from pass 1's exponentials e (uncapped rows), so that each exp is taken once:
 * g_j = a*e_j - w_j*(bq*q_j + b0) with soft targets q, g_j = a*e_j - w_j*b0 without (q NULL);
 * w_j = weight ? weight[j] : 1. `next`, `stream`, t and tv as for ce_grad_fn; g may not
 * overlap e. */
typedef void (*ce_grad_exp_fn)(const void *e, const void *q, int64_t n, const void *next,
                               const void *weight, double a, double bq, double b0, int stream,
                               int64_t t, double tv, void *g);

/* An earlier row's chunk of gradient of the same n classes, written alongside a pass 1
 * (ce_stats_grad_fn) from its kept exponentials pe: g_j = a*pe_j - w_j*b0
 * (w NULL: 1), streamed when `stream`; g_t = tv where 0 <= t < n, as for ce_grad_fn. */
typedef struct ce_grad_along {
    const void *pe, *w;
    double a, b0;
    int stream;
    int64_t t;
    double tv;
    void *g;
} ce_grad_along;

/* Pass 1 over x[0..n) as ce_stats_fn (no softcap; e given), and meanwhile the gradient
 * `along`. The two interleave, so that the gradient's stores drain while the exps compute;
 * the results are those of ce_stats_fn and ce_grad_exp_fn, bit for bit. */
typedef void (*ce_stats_grad_fn)(const void *x, int64_t n, const void *next, const void *weight,
                                 int want_wsum, void *e, ce_stats *out, const ce_grad_along *along);

/* Pass 1 of the forward's rows of one chunk each (no softcap, no weighted sums, nothing kept),
 * one pass over memory per row: x[0..n)'s max is known (`max`, taken by the previous call), and
 * the pass over its exponentials takes the max of ahead[0..n) (the next row's) into *ahead_max
 * meanwhile; `next` (the row after ahead) is prefetched. x NULL: only the max of ahead. The
 * max and sum are those of ce_stats_fn, bit for bit. */
typedef void (*ce_stats_ahead_fn)(const void *x, int64_t n, double max, const void *ahead, const void *next,
                                  ce_stats *out, double *ahead_max);

/* Binary cross-entropy with logits over n elements, targets t of the storage type:
 *   l_j = w_j [(1 - t_j) softplus(x_j) + pw_j t_j softplus(-x_j)]   (softplus(x) = log(1 + e^x))
 *   g_j = s_j w_j [(1 + (pw_j - 1) t_j) sigmoid(x_j) - pw_j t_j]     s_j = go ? go[j] : scale
 * (torch writes the loss as (1 - t) x + (1 + (pw - 1) t) softplus(-x): equal, but this form
 * adds two non-negative terms for t in [0, 1] and so loses nothing to cancellation). 
 * w, pw, go: compute type, NULL = 1 (go NULL = scale). Writes l_j to loss (storage type) and
 * g_j to g (may equal x) where non-NULL; returns sum_j l_j. */
typedef double (*bce_fn)(const void *x, const void *t, int64_t n, const void *w, const void *pw,
                         const void *go, double scale, void *loss, void *g);

/* An ISA may leave the primitives after `shift` NULL: the driver then uses the portable one. */
typedef struct ce_kernels {
    ce_stats_fn stats;
    ce_grad_fn grad;
    ce_shift_fn shift;
    ce_stats_soft_fn stats_soft;
    ce_grad_soft_fn grad_soft;
    bce_fn bce;
    ce_grad_exp_fn grad_exp;
    ce_stats_grad_fn stats_grad; /* NULL: the driver runs the passes one after the other */
    ce_stats_ahead_fn stats_ahead; /* NULL: each row takes its own max */
} ce_kernels;

/* One ISA: kernels indexed by FUSEDCE_F32, F64, F16, BF16. */
typedef struct ce_isa_table {
    int isa;
    ce_kernels k[4];
    /* The ISA's vector exp alone, over n elements, for the accuracy tests. */
    void (*vexp_f32)(const float *x, int64_t n, float *y);
    void (*vexp_f64)(const double *x, int64_t n, double *y);
    /* The softmax's exp alone (arguments <= 0, or a little above; cheaper, a little less
     * exact), likewise; and the form pass 1 takes, for arguments known to be <= 0 (or NaN). */
    void (*vexpn_f32)(const float *x, int64_t n, float *y);
    void (*vexpn_nonpos_f32)(const float *x, int64_t n, float *y);
    /* The memory roofline's patterns (roofline.c) over one thread's bytes: read every byte
     * (returns something of them, so the loads stay), and copy with streaming stores where
     * the ISA has them (dst 64-byte aligned, bytes a multiple of 64; the caller fences). */
    double (*roof_read)(const void *src, int64_t bytes);
    void (*roof_copy)(const void *src, void *dst, int64_t bytes);
} ce_isa_table;

/* The tables: portable's always; a SIMD ISA's where its ce_<isa>.c is compiled in (the build
 * compiles those of the target's architecture), else its address is NULL (a weak reference). */
extern const ce_isa_table ce_table_portable;
#define CE_DECLARE_TABLE(ID, name, arch, flags)                                                   \
    extern const ce_isa_table ce_table_##name __attribute__((weak, visibility("hidden")));
CE_ISA_LIST(CE_DECLARE_TABLE)
#undef CE_DECLARE_TABLE

/* Merge a segment's (max m2, sum s2) into a running (m, s): both become sums relative to the
 * larger max. A -inf max means "nothing but -inf so far" (sum 0, or NaN carried). */
static inline void ce_merge(double *m, double *s, double m2, double s2)
{
    if (m2 > *m) {
        *s = (*m == -INFINITY ? 0.0 * *s : *s * exp(*m - m2)) + s2;
        *m = m2;
    } else if (m2 == -INFINITY) {
        *s += s2;
    } else {
        *s += s2 * exp(m2 - *m);
    }
}

/* Prefetch [p, p + bytes) (bytes a constant) for reading: locality 3 into L1 (the next block
 * of a row), 2 into L2 (the next row). Lines shorter than a vector get a prefetch per vector;
 * a repeated prefetch of a line already in flight costs next to nothing. */
#define CE_PREFETCH(p, bytes, locality)                                                       \
    do {                                                                                      \
        for (int ce_pf_b = 0; ce_pf_b < (int)(bytes); ce_pf_b += 64)                          \
            __builtin_prefetch((const char *)(p) + ce_pf_b, 0, (locality));                   \
    } while (0)

/* Orders this thread's streamed (non-temporal) stores before what follows: a full fence,
 * which on x86 also drains the write-combining buffers. */
static inline void ce_stream_fence(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

/* The active table (dispatch.c); never NULL after the first call. */
const ce_isa_table *ce_active_table(void);

/* Whether this CPU (and its OS) runs an ISA, compiled in or not (dispatch.c). */
int ce_cpu_has_isa(int isa);

/* The best table this CPU runs, whatever the active one (dispatch.c). */
const ce_isa_table *ce_detected_table(void);

/* How many threads a call over `elems` elements uses (ce_driver.c): small calls run on one. */
int ce_threads_for(int64_t elems);

/* This thread's index in its team and the team's size (0 and 1 outside a parallel region or
 * without OpenMP). */
int ce_team(int *size);

/* Cache sizes in bytes (dispatch.c), for the driver's split and streaming decisions. */
int64_t ce_l2_bytes(void);
int64_t ce_llc_bytes(void);

/* Bytes per logit of a dtype, and per class weight (the compute type: double for f64, else
 * float). */
static inline size_t ce_elsize(int dtype)
{
    return dtype == FUSEDCE_F64 ? 8 : dtype == FUSEDCE_F32 ? 4 : 2;
}
static inline size_t ce_compute_size(int dtype)
{
    return dtype == FUSEDCE_F64 ? sizeof(double) : sizeof(float);
}

/* Half-precision conversions shared by the portable kernels and scalar fix-ups. */
float ce_f16_to_f32(uint16_t h);
uint16_t ce_f32_to_f16(float f);
static inline float ce_bf16_to_f32(uint16_t h) {
    union { uint32_t u; float f; } v;
    v.u = (uint32_t)h << 16;
    return v.f;
}
static inline uint16_t ce_f32_to_bf16(float f) {
    union { uint32_t u; float f; } v;
    v.f = f;
    if ((v.u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((v.u >> 16) | 0x40u); /* quiet NaN */
    v.u += 0x7fffu + ((v.u >> 16) & 1u); /* round to nearest even */
    return (uint16_t)(v.u >> 16);
}

#endif /* FUSEDCE_KERNELS_H */
