/* fusedce: fused softmax + cross-entropy kernels, the C API.
 *
 * Plain C types only; no Python objects. Every entry point is re-entrant (the Python binding
 * releases the GIL around each call). Logits are rows x classes, C-contiguous, of the dtype
 * the entry point names; f16 and bf16 are passed as uint16_t bit patterns and computed in
 * float32. Sizes and offsets are 64-bit throughout.
 */
#ifndef FUSEDCE_H
#define FUSEDCE_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Element types of the logits (and of the gradient and softmax outputs). */
enum {
    FUSEDCE_F32 = 0,
    FUSEDCE_F64 = 1,
    FUSEDCE_F16 = 2,
    FUSEDCE_BF16 = 3
};

/* Instruction sets of the CPU kernels. */
enum {
    FUSEDCE_ISA_PORTABLE = 0,
    FUSEDCE_ISA_AVX2 = 1,
    FUSEDCE_ISA_AVX512 = 2,
    FUSEDCE_ISA_NEON = 3,
    FUSEDCE_ISA_COUNT = 4
};

/* Return codes. */
enum {
    FUSEDCE_OK = 0,
    FUSEDCE_EINVAL = 1,     /* sizes or options out of their domain; nothing written */
    FUSEDCE_ETARGET = 2,    /* a target outside [0, classes) that is not ignore_index */
    FUSEDCE_EISA = 3        /* that ISA is not compiled in or the CPU lacks it */
};

/* One cross-entropy call. Which parts run is chosen by which outputs are non-NULL:
 *   loss or lse_out  -> pass 1 (max, sum of exp) per row
 *   grad             -> the gradient, reusing pass 1's lse or lse_in when given
 * Per counted row i with target t (w = weight or 1, W = sum of w, e = label_smoothing):
 *   loss[i] = (1-e) w_t (lse - y_t) + (e/K) sum_k w_k (lse - y_k) + z_loss w_t lse^2
 *   grad[i] = scale_i * d loss[i] / d logits[i]
 * where y = softcap*tanh(x/softcap) when softcap > 0, else y = x. Rows whose target equals
 * ignore_index get loss 0 and a zero gradient; their lse is still computed. */
typedef struct fusedce_ce_args {
    int64_t rows;
    int64_t classes;
    const void *logits;          /* rows x classes elements of the entry point's dtype */
    const void *target;          /* rows class indices (unused with target_probs) */
    int target_is_i64;           /* target is int64_t[rows] (else int32_t[rows]) */
    const void *weight;          /* classes per-class weights or NULL; double for F64,
                                    float for F32/F16/BF16 */
    int64_t ignore_index;
    double label_smoothing;      /* in [0, 1] */
    double z_loss;               /* >= 0 */
    double softcap;              /* > 0 enables capping; 0 = off */
    const double *grad_scale;    /* rows per-row gradient factors, or NULL for grad_scale_all */
    double grad_scale_all;
    const double *lse_in;        /* rows log-sum-exp from an earlier forward, or NULL */
    double *loss;                /* rows per-row weighted loss, or NULL */
    double *lse_out;             /* rows per-row log-sum-exp (of the capped logits), or NULL */
    void *grad;                  /* rows x classes gradient, or NULL; may equal logits */
    int64_t *bad_row;            /* on FUSEDCE_ETARGET the first offending row, or NULL */
    const void *target_probs;    /* rows x classes probability targets q (the logits' dtype), or
                                    NULL for class indices. Then, with q~ = (1-e) q + e/K:
                                    loss[i] = sum_k w_k q~_k (lse - y_k) + z_loss lse^2 */
    /* A vocabulary shard (tensor parallelism); total_classes = 0 (as zeroed): off, as above.
     * The logits hold the classes [class_offset, class_offset + classes) of rows that have
     * total_classes classes. target holds indices into the whole row ([0, total_classes) or
     * ignore_index; a target outside the shard has no element here), weight (if given) holds
     * all total_classes class weights, and K and W above are the whole row's. Class-index
     * targets only. A call either
     *   computes the gradient: lse_in = the whole row's lse, no loss or lse_out; grad is then
     *     exactly the whole row's gradient on this shard's classes; or
     *   computes the shard's partials: no grad; lse_out = lse_s, the shard's own lse, and
     *     loss[i] = (1-e) w_t (lse_s - y_t) [t in the shard] + (e/K) sum_{k in shard} w_k (lse_s - y_k)
     *     (no z-loss term: it needs the whole row's lse), every term >= 0 relative to lse_s,
     *     which a caller merges over the shards without cancellation. */
    int64_t class_offset;
    int64_t total_classes;
} fusedce_ce_args;

int fusedce_ce_f32(const fusedce_ce_args *args);
int fusedce_ce_f64(const fusedce_ce_args *args);
int fusedce_ce_f16(const fusedce_ce_args *args);
int fusedce_ce_bf16(const fusedce_ce_args *args);

/* Binary cross-entropy with logits, elementwise over rows x classes (classes = the last
 * axis, which per-class weight and pos_weight run along):
 *   l = w [(1 - t) log(1 + exp(x)) + pw t log(1 + exp(-x))],  grad = s w [(1 + (pw - 1) t) sigmoid(x) - pw t]
 * computed stably for any finite x. weight, pos_weight and grad_scale are of the compute type
 * (double for F64, float otherwise). */
typedef struct fusedce_bce_args {
    int64_t rows;
    int64_t classes;
    const void *logits;          /* rows x classes */
    const void *target;          /* rows x classes, the logits' dtype */
    const void *weight;          /* NULL, classes values (weight_per_class) or rows x classes */
    int weight_per_class;
    const void *pos_weight;      /* classes values, rows x classes (pos_weight_per_element), or NULL */
    const void *grad_scale;      /* rows x classes per-element factors s, or NULL */
    double grad_scale_all;       /* s when grad_scale is NULL */
    void *loss;                  /* rows x classes element losses (the logits' dtype), or NULL */
    double *loss_sum;            /* the sum of every element loss, or NULL */
    void *grad;                  /* rows x classes gradient, or NULL; may equal logits */
    int pos_weight_per_element;  /* pos_weight holds rows x classes values (else classes) */
} fusedce_bce_args;

int fusedce_bce_f32(const fusedce_bce_args *args);
int fusedce_bce_f64(const fusedce_bce_args *args);
int fusedce_bce_f16(const fusedce_bce_args *args);
int fusedce_bce_bf16(const fusedce_bce_args *args);

/* Row-wise softmax family over rows x classes. lse_out (rows doubles) may be NULL;
 * out (rows x classes, may equal x) is unused for FUSEDCE_LOGSUMEXP. */
enum { FUSEDCE_LOGSUMEXP = 0, FUSEDCE_SOFTMAX = 1, FUSEDCE_LOG_SOFTMAX = 2 };
int fusedce_softmax(int dtype, int mode, int64_t rows, int64_t classes, const void *x,
                    void *out, double *lse_out);

/* The vector exp of one ISA, alone (for accuracy tests): y[i] = exp(x[i]). */
int fusedce_vexp_f32(int isa, int64_t n, const float *x, float *y);
int fusedce_vexp_f64(int isa, int64_t n, const double *x, double *y);

/* The machine's memory roofline for a call over `elements` logits of `bytes` bytes: the seconds
 * one pass of a pattern takes with the threads a kernel call of that many elements uses, by the
 * best ISA this CPU runs. FUSEDCE_ROOFLINE_READ reads src once (a forward's traffic; dst is
 * unused); FUSEDCE_ROOFLINE_COPY copies src to dst with streaming (non-temporal) stores where
 * the CPU has them (forward+backward's traffic: the logits read, the gradient written). */
enum { FUSEDCE_ROOFLINE_READ = 0, FUSEDCE_ROOFLINE_COPY = 1 };
int fusedce_roofline(int pattern, const void *src, void *dst, int64_t bytes, int64_t elements,
                     double *seconds);

/* Kernel selection and threads. */
int fusedce_detected_isa(void);             /* best ISA this CPU runs */
int fusedce_active_isa(void);               /* the one in use */
int fusedce_isa_compiled(int isa);          /* 1 when this build has kernels for isa */
int fusedce_isa_available(int isa);         /* compiled in and supported by this CPU */
int fusedce_cpu_has_isa(int isa);           /* supported by this CPU, compiled in or not */
int fusedce_set_isa(int isa);               /* FUSEDCE_OK or FUSEDCE_EISA */
const char *fusedce_isa_name(int isa);
int fusedce_get_num_threads(void);
void fusedce_set_num_threads(int n);        /* n <= 0: all cores */
int fusedce_max_threads(void);              /* what the runtime offers (cores) */
int fusedce_openmp(void);                   /* _OPENMP (yyyymm) when built with OpenMP, else 0 (one thread) */

/* The per-core L2 and the last-level cache (one instance) in bytes, as the kernels use them:
 * rows larger than half the L2 are split over threads; gradients larger than the LLC are
 * written with streaming stores. */
long long fusedce_l2_bytes(void);
long long fusedce_llc_bytes(void);

/* The buffer pool (csrc/buffer_pool.c): memory for large results, kept after release and
 * handed out again, so that a result's pages are resident instead of faulted in afresh.
 * Blocks are page-aligned (2 MiB-aligned with transparent huge pages requested from 2 MiB
 * up) and uninitialised. Thread-safe and usable in the child after fork. */
void *fusedce_pool_acquire(int64_t bytes);  /* NULL when the system has no memory for it */
int fusedce_pool_release(void *block);      /* FUSEDCE_EINVAL if block is not in use from here */
/* The most bytes of free blocks the pool keeps (beyond those in use): -1 (any negative)
 * adaptive, the largest number of bytes in use at once recently; 0 keeps none. Returns the
 * limit before; free blocks over the new bound go back to the system at once. */
int64_t fusedce_pool_set_limit(int64_t max_bytes);
int64_t fusedce_pool_limit(void);

typedef struct fusedce_pool_stats {
    int64_t limit;            /* as set: -1 adaptive, 0 off, else bytes */
    int64_t bound;            /* the bound in force now (adaptive: the recent in-use peak) */
    int64_t held_bytes;       /* free blocks kept for reuse */
    int64_t held_blocks;
    int64_t in_use_bytes;     /* handed out and not yet released */
    int64_t in_use_blocks;
    int64_t hits;             /* acquisitions served by a kept block */
    int64_t misses;           /* acquisitions that mapped fresh memory */
    int64_t returned_blocks;  /* blocks given back to the system */
    int64_t returned_bytes;
    int huge_pages;           /* the last madvise(MADV_HUGEPAGE): 1 accepted, 0 refused, -1 none yet */
} fusedce_pool_stats;
void fusedce_pool_get_stats(fusedce_pool_stats *out);

#ifdef __cplusplus
}
#endif
#endif /* FUSEDCE_H */
