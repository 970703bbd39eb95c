/* The per-ISA row primitives and the function table that dispatch.c fills.
 *
 * Every ISA file (ce_portable.c, ce_avx2.c, ce_avx512.c, ce_neon.c) implements the same three
 * primitives per dtype over one contiguous segment of a row; the driver (ce_driver.c) owns the
 * semantics: targets, weights, smoothing, z-loss, reductions, threads and row splitting.
 * Names follow <op>_<dtype>_<isa>, e.g. ce_stats_f32_avx512.
 *
 * "Compute type": double for f64, float for f32/f16/bf16. `weight` points at the segment's
 * first class weight in the compute type. y_j = softcap*tanh(x_j/softcap) when softcap > 0,
 * else y_j = x_j.
 */
#ifndef FUSEDCE_KERNELS_H
#define FUSEDCE_KERNELS_H

#include <math.h>
#include <stdint.h>

#include "fusedce.h"

typedef struct ce_stats {
    double max;   /* max_j y_j; -inf for an empty or all -inf segment; NaNs ignored here */
    double sum;   /* sum_j exp(y_j - max); NaN if any y_j is NaN or +inf */
    double wsum;  /* sum_j w_j*y_j (w_j = 1 without weight); only when want_wsum */
} ce_stats;

/* Pass 1 over x[0..n): max, sum of exp, optionally the weighted sum of y. */
typedef void (*ce_stats_fn)(const void *x, int64_t n, double softcap, const void *weight,
                            int want_wsum, ce_stats *out);

/* Pass 2: g_j = (a * exp(y_j - shift) - b * w_j) * (softcap > 0 ? 1 - (y_j/softcap)^2 : 1)
 * with w_j = weight ? weight[j] : 1. `shift` is exactly representable in the compute type
 * (the driver passes the row max, or the lse rounded, and folds the rest into a), so
 * y_j - shift loses nothing. g may equal x (in place). stream != 0 asks for non-temporal
 * stores (the gradient is larger than the last-level cache). */
typedef void (*ce_grad_fn)(const void *x, int64_t n, double softcap, const void *weight,
                           double shift, double a, double b, int stream, void *g);

/* log_softmax: out_j = (x_j - shift) - c; out may equal x. */
typedef void (*ce_shift_fn)(const void *x, int64_t n, double shift, double c, void *out);

typedef struct ce_kernels {
    ce_stats_fn stats;
    ce_grad_fn grad;
    ce_shift_fn shift;
} ce_kernels;

/* One ISA: kernels indexed by FUSEDCE_F32, F64, F16, BF16. */
typedef struct ce_isa_table {
    int isa;
    ce_kernels k[4];
    /* The ISA's vector exp alone, over n elements, for the accuracy tests. */
    void (*vexp_f32)(const float *x, int64_t n, float *y);
    void (*vexp_f64)(const double *x, int64_t n, double *y);
} ce_isa_table;

extern const ce_isa_table ce_table_portable;
#if defined(FUSEDCE_HAVE_AVX2)
extern const ce_isa_table ce_table_avx2;
#endif
#if defined(FUSEDCE_HAVE_AVX512)
extern const ce_isa_table ce_table_avx512;
#endif
#if defined(FUSEDCE_HAVE_NEON)
extern const ce_isa_table ce_table_neon;
#endif

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

/* The active table (dispatch.c); never NULL after the first call. */
const ce_isa_table *ce_active_table(void);

/* Cache sizes in bytes (dispatch.c), for the driver's split and streaming decisions. */
int64_t ce_l2_bytes(void);
int64_t ce_llc_bytes(void);

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
