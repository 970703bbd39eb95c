/* The cross-entropy semantics on top of the per-ISA row primitives: targets, class weights,
 * label smoothing, z-loss, softcap, ignored rows, and how the rows are spread over threads.
 *
 * Two passes per row (kernels.h): stats (max, sum of exp) and then the gradient with the exp
 * recomputed while the row is still in cache. The target element of the gradient is then
 * rewritten from a double-precision scalar computation, so it never depends on a vector
 * rounding and half-precision gradients get it computed in (at least) float32.
 * Rows go to threads in contiguous blocks; when there are fewer rows than threads, or a row is
 * larger than half the L2, each row is instead cut into one segment per thread and the
 * segments' (max, sum) pairs merged. Each primitive is told which segment its thread reads
 * next, and prefetches it while it computes from cache; gradients larger than the last-level
 * cache go out through streaming stores, fenced once per thread at the end. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

#ifdef _OPENMP
#include <omp.h>
#endif

/* Below this many elements a call runs on one thread: waking threads costs more. */
#define CE_MIN_ELEMS_PER_THREAD (1 << 15)
/* A row is split over threads only if each thread gets at least this many elements. */
#define CE_MIN_SPLIT_SEGMENT 4096
/* Streaming stores only for rows of at least this many bytes: each streamed row has one line
 * written with ordinary stores (the target's, ce_segment_grad), whose read for ownership holds
 * up the stores behind it. Measured on Zen 5, 2 threads, float32 (32 to 512 MB of gradient):
 * streaming is 18-35 % faster from 8 KB rows up, 20 % slower at 4 KB. */
#define CE_MIN_STREAM_ROW_BYTES 8192
/* Segment boundaries of a split row are multiples of this (whole cache lines, whole vectors). */
#define CE_SPLIT_ALIGN 64


static double ce_load(int dtype, const void *p, int64_t i)
{
    switch (dtype) {
    case FUSEDCE_F32: return ((const float *)p)[i];
    case FUSEDCE_F64: return ((const double *)p)[i];
    case FUSEDCE_F16: return ce_f16_to_f32(((const uint16_t *)p)[i]);
    default: return ce_bf16_to_f32(((const uint16_t *)p)[i]);
    }
}

/* Round a double to the dtype (through float32 for the half types). */
static void ce_store(int dtype, void *p, int64_t i, double v)
{
    switch (dtype) {
    case FUSEDCE_F32: ((float *)p)[i] = (float)v; break;
    case FUSEDCE_F64: ((double *)p)[i] = v; break;
    case FUSEDCE_F16: ((uint16_t *)p)[i] = ce_f32_to_f16((float)v); break;
    default: ((uint16_t *)p)[i] = ce_f32_to_bf16((float)v); break;
    }
}

/* A value exactly representable in the compute type (float unless f64). */
static double ce_to_compute(int dtype, double v) { return dtype == FUSEDCE_F64 ? v : (double)(float)v; }

static double ce_weight_at(int dtype, const void *w, int64_t k)
{
    if (!w) return 1.0;
    return dtype == FUSEDCE_F64 ? ((const double *)w)[k] : (double)((const float *)w)[k];
}

static int64_t ce_target_at(const fusedce_ce_args *a, int64_t r)
{
    return a->target_is_i64 ? ((const int64_t *)a->target)[r] : (int64_t)((const int32_t *)a->target)[r];
}

/* Everything a row needs, fixed for the call. */
typedef struct ce_job {
    const fusedce_ce_args *a;
    const ce_kernels *k;
    ce_stats_soft_fn stats_soft; /* the ISA's, or portable's where the ISA has none */
    ce_grad_soft_fn grad_soft;
    int dtype;
    size_t es;
    size_t wes;                  /* bytes per class weight: the compute type's */
    double total_weight;         /* W = sum of class weights (K without weights), over the whole row */
    int stream;                  /* non-temporal gradient stores */
    /* Vocabulary shards (fusedce.h, class_offset/total_classes): the logits are the classes
     * [offset, offset + classes) of a row of K classes. Whole rows: offset 0, K = classes. */
    int shard;
    int64_t offset;
    double K;
} ce_job;

/* The class-target row's index into the logits (target - offset) when the shard holds it, else -1. */
static int64_t ce_local_target(const ce_job *J, int64_t t)
{
    const int64_t local = t - J->offset;
    return local >= 0 && local < J->a->classes ? local : -1;
}

/* The scalars of one row once its lse is known. */
typedef struct ce_row_terms {
    double y_t, lse, shift;
    double a, bq, b0;            /* the grad primitives' factors */
    double target_extra;         /* class targets: subtracted at the target, scale*(1-e)*w_t */
    double deriv_t;              /* class targets: dy_t/dx_t under the softcap (else 1) */
} ce_row_terms;

/* The target's capped logit exactly as the row's kernels compute it (their float tanh, not a
 * double one), so that p_t and the loss agree with the row's max and sum to the last bit:
 * with K = 1, say, the loss is then exactly 0 and the gradient exactly the z-loss term.
 * *deriv_t: dy_t/dx_t in double. */
static double ce_target_y(const ce_job *J, const char *x_row, int64_t t, double *deriv_t)
{
    const double x_t = ce_load(J->dtype, x_row, t);
    *deriv_t = 1.0;
    if (!(J->a->softcap > 0)) return x_t;
    /* dy/dx = 1 - tanh(x/softcap)^2, as 4e/(1 + e)^2 with e = exp(-2|x/softcap|): exact where
     * tanh saturates (1 - (y/softcap)^2 would keep little more than the rounding of y) */
    const double e = exp(-2.0 * fabs(x_t / J->a->softcap));
    *deriv_t = 4.0 * e / ((1.0 + e) * (1.0 + e));
    if (isnan(x_t)) return x_t;
    ce_stats one;
    J->k->stats(x_row + (size_t)t * J->es, 1, NULL, J->a->softcap, NULL, 0, &one);
    return one.max;
}

/* Class weights from class `lo` on, or NULL. */
static const void *ce_weight_from(const ce_job *J, int64_t lo)
{
    return J->a->weight ? (const char *)J->a->weight + (size_t)(J->offset + lo) * J->wes : NULL;
}

/* Which passes a row needs. Soft targets always need pass 1 (their gradient needs sum w*q),
 * so their backward recomputes the lse too rather than reading lse_in. */
static int ce_needs_stats(const ce_job *J, int counted)
{
    const fusedce_ce_args *a = J->a;
    return a->lse_out || (counted && (a->loss || (a->grad && (!a->lse_in || a->target_probs))));
}

/* Byte offset of class lo of row r. */
static size_t ce_offset(const ce_job *J, int64_t r, int64_t lo)
{
    return ((size_t)r * (size_t)J->a->classes + (size_t)lo) * J->es;
}

/* The same segment of the row this thread does next (next_r; -1: none), for the prefetch. */
static const char *ce_next_segment(const ce_job *J, int64_t next_r, int64_t lo)
{
    return next_r < 0 ? NULL : (const char *)J->a->logits + ce_offset(J, next_r, lo);
}

/* Pass 1 over the segment [lo, hi) of row r. */
static void ce_segment_stats(const ce_job *J, int64_t r, int64_t next_r, int64_t lo, int64_t hi, ce_stats *st)
{
    const fusedce_ce_args *a = J->a;
    const size_t off = ce_offset(J, r, lo);
    const char *x = (const char *)a->logits + off;
    const int want_wsum = a->loss && a->label_smoothing > 0;
    if (a->target_probs)
        J->stats_soft(x, (const char *)a->target_probs + off, hi - lo, a->softcap, ce_weight_from(J, lo),
                      want_wsum, st);
    else
        J->k->stats(x, hi - lo, ce_next_segment(J, next_r, lo), a->softcap, ce_weight_from(J, lo), want_wsum,
                    st);
}

/* The gradient primitive over [lo, hi) of row r, streamed or not. */
static void ce_grad_piece(const ce_job *J, int64_t r, int64_t next_r, int64_t lo, int64_t hi, int stream,
                          const ce_row_terms *T)
{
    if (hi <= lo) return;
    const fusedce_ce_args *a = J->a;
    const size_t off = ce_offset(J, r, lo);
    const char *x = (const char *)a->logits + off;
    char *g = (char *)a->grad + off;
    if (a->target_probs)
        J->grad_soft(x, (const char *)a->target_probs + off, hi - lo, a->softcap, ce_weight_from(J, lo),
                     T->shift, T->a, T->bq, T->b0, stream, g);
    else /* the class weights enter only where smoothing spreads them */
        J->k->grad(x, hi - lo, ce_next_segment(J, next_r, lo), a->softcap,
                   T->b0 != 0 ? ce_weight_from(J, lo) : NULL, T->shift, T->a, T->b0, stream, g);
}

/* Pass 2 over the segment [lo, hi) of row r; t: the class whose element ce_write_target_grad
 * rewrites afterwards, or -1. With streaming stores, the 64-byte line holding t is written
 * with ordinary stores: rewriting one element of a line just streamed to memory would read
 * the whole line back (a stall per row that costs more than short rows take). */
static void ce_segment_grad(const ce_job *J, int64_t r, int64_t next_r, int64_t lo, int64_t hi, int64_t t,
                            const ce_row_terms *T)
{
    if (!J->stream || t < lo || t >= hi) {
        ce_grad_piece(J, r, next_r, lo, hi, J->stream, T);
        return;
    }
    const int64_t per_line = 64 / (int64_t)J->es;
    const uintptr_t t_addr = (uintptr_t)((const char *)J->a->grad + ce_offset(J, r, t));
    int64_t line_lo = t - (int64_t)((t_addr & 63) / J->es), line_hi = line_lo + per_line;
    line_lo = line_lo < lo ? lo : line_lo;
    line_hi = line_hi > hi ? hi : line_hi;
    ce_grad_piece(J, r, next_r, lo, line_lo, 1, T);
    ce_grad_piece(J, r, next_r, line_lo, line_hi, 0, T);
    ce_grad_piece(J, r, next_r, line_hi, hi, 1, T);
}

/* The row's loss (into *loss_out when non-NULL) and its gradient factors, from the merged
 * pass-1 statistics. t, y_t and deriv_t: class targets only (read before any gradient store). */
static ce_row_terms ce_terms(const ce_job *J, int64_t r, int64_t t, double y_t, double deriv_t, double lse,
                             double shift, const ce_stats *st, double *loss_out)
{
    const fusedce_ce_args *a = J->a;
    const double e = a->label_smoothing, K = J->K, z = a->z_loss;
    const double scale = a->grad_scale ? a->grad_scale[r] : a->grad_scale_all;
    ce_row_terms T = {y_t, lse, shift, 0, 0, 0, 0, deriv_t};
    /* The pass-1 sums are relative to ref (kernels.h): sum f*(lse - y) = F*(lse - ref) - sum f*(y - ref),
     * a difference of terms no larger than the row's spread, however large the logits. */
    const double d = lse - ce_stats_ref(st->max);
    double loss, c;
    if (a->target_probs) {
        /* smoothed targets q~ = (1-e) q + e/K:  loss = sum w q~ (lse - y) + z lse^2 */
        const double wq = (1.0 - e) * st->qsum + (e / K) * J->total_weight;
        loss = z * lse * lse;
        if (e < 1) loss += (1.0 - e) * (st->qsum * d - st->qysum); /* e = 1: q takes no part */
        if (e > 0) loss += (e / K) * (J->total_weight * d - st->wsum);
        c = wq + 2.0 * z * lse;
        T.bq = scale * (1.0 - e);
    } else if (J->shard) {
        /* A shard's partials (lse = its own lse_s): no z-loss, the smoothing sum over its own
         * classes (st->wtotal, their weights), the target term only where it holds the target.
         * c below is the whole row's (the gradient call gives lse_in, the row's lse). */
        const double w_t = ce_weight_at(J->dtype, a->weight, t);
        loss = ce_local_target(J, t) >= 0 ? (1.0 - e) * w_t * (lse - y_t) : 0.0;
        if (e > 0) loss += (e / K) * (st->wtotal * d - st->wsum);
        c = (1.0 - e) * w_t + (e / K) * J->total_weight + 2.0 * z * w_t * lse;
        T.target_extra = scale * (1.0 - e) * w_t;
    } else {
        const double w_t = ce_weight_at(J->dtype, a->weight, t);
        loss = (1.0 - e) * w_t * (lse - y_t) + z * w_t * lse * lse;
        if (e > 0) loss += (e / K) * (J->total_weight * d - st->wsum);
        c = (1.0 - e) * w_t + (e / K) * J->total_weight + 2.0 * z * w_t * lse;
        T.target_extra = scale * (1.0 - e) * w_t;
    }
    if (loss_out) *loss_out = loss;
    /* p_j = exp(y_j - lse) = exp(y_j - shift) * exp(shift - lse); the second factor in double. */
    T.a = scale * c * exp(shift - lse);
    T.b0 = scale * e / K;
    return T;
}

/* t: the class index as given (the weight's), t_local: its element in the logits' row. */
static void ce_write_target_grad(const ce_job *J, const ce_row_terms *T, int64_t r, int64_t t, int64_t t_local)
{
    const double p_t = exp(T->y_t - T->shift);
    const double w_t = ce_weight_at(J->dtype, J->a->weight, t);
    const double g = (T->a * p_t - T->b0 * w_t - T->target_extra) * T->deriv_t;
    ce_store(J->dtype, (char *)J->a->grad + (size_t)r * (size_t)J->a->classes * J->es, t_local, g);
}

/* lse and the pass-2 shift of a row with no pass 1 (backward given lse_in). */
static void ce_lse_from_input(const ce_job *J, int64_t r, double *lse, double *shift)
{
    *lse = J->a->lse_in[r];
    *shift = isfinite(*lse) ? ce_to_compute(J->dtype, *lse) : *lse;
}

/* Row r on its own; next_r: the row this thread does next, or -1. */
static void ce_one_row(const ce_job *J, int64_t r, int64_t next_r)
{
    const fusedce_ce_args *a = J->a;
    const int64_t K = a->classes;
    const int64_t t = a->target_probs ? 0 : ce_target_at(a, r);
    const int counted = a->target_probs || t != a->ignore_index;
    ce_stats st = {-INFINITY, 0.0, 0.0, 0.0, 0.0, 0.0};
    double lse = 0.0, shift = 0.0;
    if (ce_needs_stats(J, counted)) {
        ce_segment_stats(J, r, next_r, 0, K, &st);
        lse = st.max + log(st.sum);
        shift = st.max;
        if (a->lse_out) a->lse_out[r] = lse;
    } else if (counted) {
        ce_lse_from_input(J, r, &lse, &shift);
    }
    if (!counted) {
        if (a->loss) a->loss[r] = 0.0;
        if (a->grad) memset((char *)a->grad + (size_t)r * (size_t)K * J->es, 0, (size_t)K * J->es);
        return;
    }
    const char *x_row = (const char *)a->logits + (size_t)r * (size_t)K * J->es;
    double deriv_t = 1.0;
    const int64_t tl = a->target_probs ? -1 : ce_local_target(J, t); /* -1: the target is in another shard */
    const double y_t = tl >= 0 ? ce_target_y(J, x_row, tl, &deriv_t) : 0.0;
    const ce_row_terms T = ce_terms(J, r, t, y_t, deriv_t, lse, shift, &st, a->loss ? a->loss + r : NULL);
    if (a->grad) {
        ce_segment_grad(J, r, next_r, 0, K, tl, &T);
        if (tl >= 0) ce_write_target_grad(J, &T, r, t, tl);
    }
}

/* One row cut into nt segments, run by thread `tid` of a team of nt; `parts` holds 2*nt stats
 * (double-buffered by row parity so a fast thread cannot overwrite what a slow one merges). */
static void ce_split_row(const ce_job *J, int64_t r, int tid, int nt, ce_stats *parts)
{
    const fusedce_ce_args *a = J->a;
    const int64_t K = a->classes;
    const int64_t t = a->target_probs ? 0 : ce_target_at(a, r);
    const int counted = a->target_probs || t != a->ignore_index;
    const int64_t lo = (K * tid / nt) / CE_SPLIT_ALIGN * CE_SPLIT_ALIGN;
    const int64_t hi = tid == nt - 1 ? K : (K * (tid + 1) / nt) / CE_SPLIT_ALIGN * CE_SPLIT_ALIGN;
    /* The loss and the class target's gradient element belong to one thread: the owner of the
     * target's segment (thread 0 for soft targets, and for a target in another shard). It
     * reads y_t before any store. */
    const int64_t tl = a->target_probs || !counted ? -1 : ce_local_target(J, t);
    const int owner = tl < 0 ? tid == 0 : (tl >= lo && tl < hi);
    const char *x_row = (const char *)a->logits + (size_t)r * (size_t)K * J->es;
    double deriv_t = 1.0;
    const double y_t = owner && tl >= 0 ? ce_target_y(J, x_row, tl, &deriv_t) : 0.0;
    ce_stats *mine = parts + (r & 1) * nt;
    const int need_stats = ce_needs_stats(J, counted);
    const int64_t next_r = r + 1 < a->rows ? r + 1 : -1;
    if (need_stats) ce_segment_stats(J, r, next_r, lo, hi, &mine[tid]);
    /* One barrier per row, stats or not, keeps the parity double-buffering safe. */
#ifdef _OPENMP
#pragma omp barrier
#endif
    ce_stats st = {-INFINITY, 0.0, 0.0, 0.0, 0.0, 0.0};
    double lse = 0.0, shift = 0.0;
    if (need_stats) {
        for (int i = 0; i < nt; i++) ce_merge(&st.max, &st.sum, mine[i].max, mine[i].sum);
        /* each segment's weighted sums move from its own ref to the row's */
        for (int i = 0; i < nt; i++) {
            const double move = ce_stats_ref(mine[i].max) - ce_stats_ref(st.max);
            st.wtotal += mine[i].wtotal;
            st.wsum += mine[i].wsum + move * mine[i].wtotal;
            st.qsum += mine[i].qsum;
            st.qysum += mine[i].qysum + move * mine[i].qsum;
        }
        lse = st.max + log(st.sum);
        shift = st.max;
        if (a->lse_out && tid == 0) a->lse_out[r] = lse;
    } else if (counted) {
        ce_lse_from_input(J, r, &lse, &shift);
    }
    if (!counted) {
        if (a->loss && tid == 0) a->loss[r] = 0.0;
        if (a->grad) memset((char *)a->grad + ((size_t)r * (size_t)K + (size_t)lo) * J->es, 0, (size_t)(hi - lo) * J->es);
        return;
    }
    const ce_row_terms T =
        ce_terms(J, r, t, y_t, deriv_t, lse, shift, &st, owner && a->loss ? a->loss + r : NULL);
    if (a->grad) {
        ce_segment_grad(J, r, next_r, lo, hi, owner ? tl : -1, &T);
        if (owner && tl >= 0) ce_write_target_grad(J, &T, r, t, tl);
    }
}

/* This thread's contiguous block [r0, r1) of rows, in or out of a parallel region. */
static void ce_thread_rows(int64_t rows, int64_t *r0, int64_t *r1)
{
#ifdef _OPENMP
    const int64_t tid = omp_get_thread_num(), team = omp_get_num_threads();
#else
    const int64_t tid = 0, team = 1;
#endif
    *r0 = rows * tid / team;
    *r1 = rows * (tid + 1) / team;
}

/* Threads for a call over `elems` elements (also used by bce_driver.c). */
int ce_threads_for(int64_t elems)
{
    int nt = fusedce_get_num_threads();
    const int64_t by_work = elems / CE_MIN_ELEMS_PER_THREAD;
    if (by_work < nt) nt = by_work > 1 ? (int)by_work : 1;
    return nt;
}

static int ce_check(const fusedce_ce_args *a)
{
    if (!a || a->rows < 0 || a->classes < 1) return FUSEDCE_EINVAL;
    if (a->rows == 0) return FUSEDCE_OK;
    if (!a->logits || (!a->target && !a->target_probs) || (a->lse_in && a->lse_out)) return FUSEDCE_EINVAL;
    if (!(a->label_smoothing >= 0 && a->label_smoothing <= 1) || !(a->z_loss >= 0) || !(a->softcap >= 0) ||
        !isfinite(a->z_loss) || !isfinite(a->softcap))
        return FUSEDCE_EINVAL;
    const int shard = a->total_classes != 0;
    /* a shard: class targets; a place in the row; either the gradient from the row's lse or
     * the shard's partials (a gradient from the shard's own lse would mean nothing) */
    if (shard && (a->total_classes < 0 || a->class_offset < 0 || a->class_offset > a->total_classes - a->classes ||
                  a->target_probs || (a->grad && (!a->lse_in || a->loss))))
        return FUSEDCE_EINVAL;
    if (a->target_probs) return FUSEDCE_OK;
    const int64_t K = shard ? a->total_classes : a->classes;
    for (int64_t r = 0; r < a->rows; r++) {
        const int64_t t = ce_target_at(a, r);
        if (t != a->ignore_index && (t < 0 || t >= K)) {
            if (a->bad_row) *a->bad_row = r;
            return FUSEDCE_ETARGET;
        }
    }
    return FUSEDCE_OK;
}

static int ce_run(int dtype, const fusedce_ce_args *a)
{
    const int err = ce_check(a);
    if (err != FUSEDCE_OK || a->rows == 0) return err;
    ce_job J;
    J.a = a;
    J.k = &ce_active_table()->k[dtype];
    J.stats_soft = J.k->stats_soft ? J.k->stats_soft : ce_table_portable.k[dtype].stats_soft;
    J.grad_soft = J.k->grad_soft ? J.k->grad_soft : ce_table_portable.k[dtype].grad_soft;
    J.dtype = dtype;
    J.es = ce_elsize(dtype);
    J.wes = ce_compute_size(dtype);
    J.shard = a->total_classes != 0;
    J.offset = J.shard ? a->class_offset : 0;
    const int64_t row_classes = J.shard ? a->total_classes : a->classes;
    J.K = (double)row_classes;
    J.total_weight = (double)row_classes;
    if (a->weight) {
        J.total_weight = 0.0;
        for (int64_t k = 0; k < row_classes; k++) J.total_weight += ce_weight_at(dtype, a->weight, k);
    }
    const int64_t K = a->classes, rows = a->rows;
    const double grad_bytes = (double)rows * (double)K * (double)J.es;
    J.stream = a->grad && a->grad != a->logits && grad_bytes > (double)ce_llc_bytes() &&
               K * (int64_t)J.es >= CE_MIN_STREAM_ROW_BYTES;
    const int nt = ce_threads_for(rows * K);
    const int split = nt > 1 && K / nt >= CE_MIN_SPLIT_SEGMENT &&
                      (rows < nt || (int64_t)(K * J.es) > ce_l2_bytes() / 2);
    if (split) {
        ce_stats *parts = (ce_stats *)calloc((size_t)nt * 2, sizeof(ce_stats));
        if (!parts) return FUSEDCE_EINVAL;
#ifdef _OPENMP
#pragma omp parallel num_threads(nt)
#endif
        {
#ifdef _OPENMP
            const int tid = omp_get_thread_num(), team = omp_get_num_threads();
#else
            const int tid = 0, team = 1;
#endif
            for (int64_t r = 0; r < rows; r++) ce_split_row(&J, r, tid, team, parts);
            if (J.stream) ce_stream_fence();
        }
        free(parts);
    } else {
#ifdef _OPENMP
#pragma omp parallel num_threads(nt) if (nt > 1)
#endif
        {
            int64_t r0, r1;
            ce_thread_rows(rows, &r0, &r1);
            for (int64_t r = r0; r < r1; r++) ce_one_row(&J, r, r + 1 < r1 ? r + 1 : -1);
            if (J.stream) ce_stream_fence();
        }
    }
    return FUSEDCE_OK;
}

int fusedce_ce_f32(const fusedce_ce_args *a) { return ce_run(FUSEDCE_F32, a); }
int fusedce_ce_f64(const fusedce_ce_args *a) { return ce_run(FUSEDCE_F64, a); }
int fusedce_ce_f16(const fusedce_ce_args *a) { return ce_run(FUSEDCE_F16, a); }
int fusedce_ce_bf16(const fusedce_ce_args *a) { return ce_run(FUSEDCE_BF16, a); }

/* next: the row read after this one, or NULL (prefetched). */
static void ce_softmax_row(const ce_kernels *k, int mode, const char *x, const char *next, int64_t K, char *o,
                           double *lse_out)
{
    ce_stats st;
    k->stats(x, K, next, 0.0, NULL, 0, &st);
    const double log_s = log(st.sum);
    if (lse_out) *lse_out = st.max + log_s;
    if (mode == FUSEDCE_SOFTMAX) k->grad(x, K, next, 0.0, NULL, st.max, 1.0 / st.sum, 0.0, 0, o);
    else if (mode == FUSEDCE_LOG_SOFTMAX) k->shift(x, K, st.max, log_s, o);
}

int fusedce_softmax(int dtype, int mode, int64_t rows, int64_t classes, const void *x, void *out, double *lse_out)
{
    if (dtype < FUSEDCE_F32 || dtype > FUSEDCE_BF16 || mode < FUSEDCE_LOGSUMEXP || mode > FUSEDCE_LOG_SOFTMAX ||
        rows < 0 || classes < 1 || (rows > 0 && (!x || (mode != FUSEDCE_LOGSUMEXP && !out))))
        return FUSEDCE_EINVAL;
    const ce_kernels *k = &ce_active_table()->k[dtype];
    const size_t row_bytes = (size_t)classes * ce_elsize(dtype);
    const int nt = ce_threads_for(rows * classes);
#ifdef _OPENMP
#pragma omp parallel num_threads(nt) if (nt > 1)
#endif
    {
        int64_t r0, r1;
        ce_thread_rows(rows, &r0, &r1);
        for (int64_t r = r0; r < r1; r++)
            ce_softmax_row(k, mode, (const char *)x + (size_t)r * row_bytes,
                           r + 1 < r1 ? (const char *)x + (size_t)(r + 1) * row_bytes : NULL, classes,
                           out ? (char *)out + (size_t)r * row_bytes : NULL, lse_out ? lse_out + r : NULL);
    }
    return FUSEDCE_OK;
}
