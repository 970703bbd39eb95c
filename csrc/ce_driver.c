/* The cross-entropy semantics on top of the per-ISA row primitives: targets, class weights,
 * label smoothing, z-loss, softcap, ignored rows, and how the rows are spread over threads.
 *
 * A row is cut into fixed chunks of CE_CHUNK classes. Pass 1 (kernels.h) gives each chunk's
 * max, its exponentials relative to that max (kept in the thread's scratch, or over the logits
 * when the gradient overwrites them) and their sum; the chunks' statistics are merged in chunk
 * order. Pass 2 writes the gradient from the kept exponentials (each exp taken once; under a
 * softcap it is taken again, identically), scaled per chunk. The target element of the gradient
 * comes from a double-precision scalar computation instead, put into its lane of the vector
 * stored, so it never depends on a vector rounding and half-precision gradients get it computed
 * in (at least) float32.
 *
 * Deterministic: a row's results depend on its chunks only, which are the same whether the row
 * is alone or in a batch of any size and whatever the thread count, so results are bitwise
 * identical in all those cases (docs/guarantees.md). Rows go to threads in contiguous blocks;
 * when there are fewer rows than threads (or rows too large for L2 would split unevenly), each
 * row is instead cut into one run of whole chunks per thread, the chunks' statistics shared and
 * merged by every thread in the same order. Each primitive is told which segment its thread
 * reads next, and prefetches it while it computes from cache; gradients larger than the
 * last-level cache go out through streaming stores, fenced once per thread at the end. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

#ifdef _OPENMP
#include <omp.h>
#endif

/* Below this many elements a call runs on one thread: waking threads costs more. */
#define CE_MIN_ELEMS_PER_THREAD (1 << 15)
/* Rows without a gradient whose passes 1 run back to back (ce_rows_forward). */
#define CE_ROW_BLOCK 8
/* The unit of a row's statistics: fixed runs of classes, in cache between their two passes. */
#define CE_CHUNK 8192
/* A thread keeps its segment's exponentials for pass 2 up to this many bytes (they then stay in
 * its L2 with the logits); beyond, pass 2 takes each exp again, identically. */
#define CE_KEEP_EXP_BYTES (1 << 20)
/* The gradient goes out through streaming stores (ce_stream_gradient) when the call's logits
 * and gradient together exceed the last-level cache, taken as at most CE_STREAM_CACHE_CAP: a VM
 * may report its host's whole L3, shared with other tenants (480 MB on a 2-core Xeon VM, where
 * ordinary stores were slower than streaming from an 8 MB gradient up: out=, float32,
 * 2 threads, 16x131072 1.19 vs 1.05 ms, 1024x16384 8.3 vs 5.1 ms, 512x131072 33 vs 21 ms).
 * And only for rows of at least 4 KB where more than one thread writes, 8 KB where one does:
 * each streamed row has a line written with ordinary stores (a partial last one; before the
 * target's element was put in its lane, the target's line too). Measured, out= float32: the
 * Xeon VM, fused 65536x1024 (4 KB rows) 43 -> 27 ms streamed, 2 KB rows no gain; Zen 5, 8 KB
 * rows and up 18-35 % faster; 4 KB rows (65536x1024), alternated calls, fused 0.74-1.01x the
 * time on 2 threads (median 0.90x of eight runs) but 0.91-1.11x on one, backward given the
 * lse 0.87-0.96x on 2 threads but 1.07-1.36x on one. With the target streamed in the pipeline,
 * lower limits were still slower (one thread: 4 KB rows fused best call 1.07x the time;
 * 2 KB rows, 131072x512, fused 1.08-1.29x and backward 1.14-1.59x, medians of 9 rounds). */
#define CE_STREAM_CACHE_CAP ((int64_t)32 << 20)
#define CE_MIN_STREAM_ROW_BYTES 4096
#define CE_MIN_STREAM_ROW_BYTES_ONE_THREAD 8192


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

/* v as ce_store stores it, read back (exactly representable in the compute type). */
static double ce_to_storage(int dtype, double v)
{
    char stored[8];
    ce_store(dtype, stored, 0, v);
    return ce_load(dtype, stored, 0);
}

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
    int64_t chunks;              /* CE_CHUNK runs per row */
    char *scratch;               /* per thread: a segment's exponentials (compute type) and,
                                    for whole rows, the chunks' statistics */
    size_t scratch_bytes;        /* per thread */
    size_t exp_bytes;            /* of that, the exponentials' */
    int grad_from_exp;           /* pass 2 reads pass 1's exponentials (no softcap) */
    int keep_exp;                /* pass 1 keeps them: there is a pass 2 that reads them */
    int exp_in_place;            /* kept in the row itself, which the gradient overwrites */
    int row_ahead;               /* pass 1 prefetches the next row (it fits in L2 beside this) */
    int pipeline;                /* whole rows: pass 2 of a row during pass 1 of the next */
    int ahead;                   /* rows of one chunk: each row's max taken during the previous
                                    row's pass 1 (ce_row_stats_ahead) */
    /* Vocabulary shards (fusedce.h, class_offset/total_classes): the logits are the classes
     * [offset, offset + classes) of a row of K classes. Whole rows: offset 0, K = classes. */
    int shard;
    int64_t offset;
    double K;
} ce_job;

/* The class target's element in the logits' row (target - offset) when the shard holds it,
 * else -1 (always the target itself for whole rows). */
static int64_t ce_local_target(const ce_job *J, int64_t t)
{
    const int64_t local = t - J->offset;
    return local >= 0 && local < J->a->classes ? local : -1;
}

/* The scalars of one row once its lse is known: grad_j = ca*p_j - w_j*(bq*q_j + b0) (times
 * dy_j/dx_j under the softcap), p_j = exp(y_j - lse). */
typedef struct ce_row_terms {
    double y_t, lse;
    double ca, bq, b0;
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
    double scratch[2];
    J->k->stats(x_row + (size_t)t * J->es, 1, NULL, J->a->softcap, NULL, 0, scratch, &one);
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

/* Classes [lo, hi) of chunk c. */
static int64_t ce_chunk_lo(int64_t c) { return c * CE_CHUNK; }
static int64_t ce_chunk_hi(const ce_job *J, int64_t c)
{
    return c + 1 < J->chunks ? (c + 1) * CE_CHUNK : J->a->classes;
}

/* Pass 1 over chunks [c0, c1) of row r: their statistics into st[c0..c1), their exponentials
 * into e (from chunk c0's first class on). While a chunk computes, what this thread reads
 * next is prefetched. */
static void ce_chunks_stats(const ce_job *J, int64_t r, int64_t next_r, int64_t c0, int64_t c1, char *e,
                            ce_stats *st)
{
    const fusedce_ce_args *a = J->a;
    const int want_wsum = a->loss && a->label_smoothing > 0;
    for (int64_t c = c0; c < c1; c++) {
        const int64_t lo = ce_chunk_lo(c), hi = ce_chunk_hi(J, c);
        const size_t off = ce_offset(J, r, lo);
        const char *x = (const char *)a->logits + off;
        /* the same chunk of the next row where that fits in L2 beside this one (the memory
         * stream then runs while this row computes and pass 2 only writes), else the next
         * chunk of this row */
        const char *next = J->row_ahead && next_r >= 0 ? (const char *)a->logits + ce_offset(J, next_r, lo)
                           : c + 1 < c1                ? x + (size_t)(hi - lo) * J->es
                           : next_r >= 0               ? (const char *)a->logits + ce_offset(J, next_r, ce_chunk_lo(c0))
                                                       : NULL;
        /* the exponentials: kept for pass 2, or (softcap) scratch for the capped logits */
        char *ec = J->keep_exp ? e + (size_t)(lo - ce_chunk_lo(c0)) * J->wes : a->softcap > 0 ? e : NULL;
        if (a->target_probs)
            J->stats_soft(x, (const char *)a->target_probs + off, hi - lo, a->softcap, ce_weight_from(J, lo),
                          want_wsum, ec, &st[c]);
        else
            J->k->stats(x, hi - lo, next, a->softcap, ce_weight_from(J, lo), want_wsum, ec, &st[c]);
    }
}

/* A row's statistics from its chunks', merged in chunk order: the same arithmetic whatever the
 * split. Each chunk's weighted sums move from its own reference to the row's. */
static void ce_merge_chunks(const ce_stats *st, int64_t chunks, ce_stats *row)
{
    *row = (ce_stats){-INFINITY, 0.0, 0.0, 0.0, 0.0, 0.0};
    for (int64_t c = 0; c < chunks; c++) ce_merge(&row->max, &row->sum, st[c].max, st[c].sum);
    for (int64_t c = 0; c < chunks; c++) {
        const double move = ce_stats_ref(st[c].max) - ce_stats_ref(row->max);
        row->wtotal += st[c].wtotal;
        row->wsum += st[c].wsum + move * st[c].wtotal;
        row->qsum += st[c].qsum;
        row->qysum += st[c].qysum + move * st[c].qsum;
    }
}

/* The gradient of the target's element tl in the logits' row (its class is J->offset + tl),
 * computed in double and rounded to the storage type, as the kernels put it in its lane. */
static double ce_target_grad(const ce_job *J, const ce_row_terms *T, int64_t tl)
{
    const double p_t = exp(T->y_t - T->lse);
    const double w_t = ce_weight_at(J->dtype, J->a->weight, J->offset + tl);
    return ce_to_storage(J->dtype, (T->ca * p_t - T->b0 * w_t - T->target_extra) * T->deriv_t);
}

/* The target's element t of the row within [lo, hi), relative to lo, with its value in *tv
 * (what the kernels take as t and tv); -1 where the segment does not hold it. */
static int64_t ce_target_in(const ce_job *J, const ce_row_terms *T, int64_t t, int64_t lo, int64_t hi, double *tv)
{
    const int here = t >= lo && t < hi;
    *tv = here ? ce_target_grad(J, T, t) : 0.0;
    return here ? t - lo : -1;
}

/* The gradient over [lo, hi) of row r, streamed or not: from the exponentials e (relative to
 * shift) where given, else from the logits; a multiplies exp(y - shift). t: the row's class
 * whose element gets its own value (ce_target_grad) in its lane, or -1: the row streams in one
 * call, where ordinary stores over the target's line between two streamed pieces and a
 * rewrite of its element after them cost a call's worth or two a row (backward given the lse,
 * out= float32, Zen 5, alternated calls, 2 threads: AVX-512 1.05-1.19x the speed from
 * 4096x32000 to 32768x2048, AVX2 1.03-1.12x; one thread 1.12-1.22x; docs/performance.md). */
static void ce_segment_grad(const ce_job *J, int64_t r, const char *next, int64_t lo, int64_t hi, int64_t t,
                            double shift, double a, const char *e, const ce_row_terms *T)
{
    if (hi <= lo) return;
    const fusedce_ce_args *a_ = J->a;
    const size_t off = ce_offset(J, r, lo);
    const char *x = (const char *)a_->logits + off;
    const char *q = a_->target_probs ? (const char *)a_->target_probs + off : NULL;
    char *g = (char *)a_->grad + off;
    /* the class weights enter hard targets' gradients only where smoothing spreads them */
    const void *w = q || T->b0 != 0 ? ce_weight_from(J, lo) : NULL;
    double tv;
    const int64_t tl = ce_target_in(J, T, t, lo, hi, &tv);
    if (e)
        J->k->grad_exp(e, q, hi - lo, next, w, a, T->bq, T->b0, J->stream, tl, tv, g);
    else if (q)
        J->grad_soft(x, q, hi - lo, a_->softcap, w, shift, a, T->bq, T->b0, J->stream, g);
    else
        J->k->grad(x, hi - lo, next, a_->softcap, w, shift, a, T->b0, J->stream, tl, tv, g);
}

/* Pass 2 over chunks [c0, c1) of row r, each scaled by its own max: p_j = e_j * exp(m_c - lse).
 * The chunk's gradient comes from its kept exponentials e, or (softcap) from the logits with the
 * same exp taken again. Where pass 1 has not brought the next row in already, its same classes
 * are prefetched while this one writes. */
static void ce_chunks_grad(const ce_job *J, int64_t r, int64_t next_r, int64_t c0, int64_t c1, const char *e,
                           const ce_stats *st, int64_t t, const ce_row_terms *T)
{
    for (int64_t c = c0; c < c1; c++) {
        const int64_t lo = ce_chunk_lo(c), hi = ce_chunk_hi(J, c);
        const double ref = st[c].max == -INFINITY ? 0.0 : st[c].max; /* what e is relative to */
        const char *ec = J->grad_from_exp ? e + (size_t)(lo - ce_chunk_lo(c0)) * J->wes : NULL;
        /* in place, pass 2 writes from L2 and pass 1 brings the next row in chunk by chunk:
         * prefetching it here as well overfills L2 (512x131072 in place, 2 threads: 7 % slower) */
        const char *next = !J->row_ahead && !J->exp_in_place && next_r >= 0
                               ? (const char *)J->a->logits + ce_offset(J, next_r, lo)
                               : NULL;
        ce_segment_grad(J, r, next, lo, hi, t, ref, T->ca * exp(ref - T->lse), ec, T);
    }
}

/* The row's loss (into *loss_out when non-NULL) and its gradient factors, from the merged
 * pass-1 statistics. t, y_t and deriv_t: class targets only (read before any gradient store). */
static ce_row_terms ce_terms(const ce_job *J, int64_t r, int64_t t, double y_t, double deriv_t, double lse,
                             const ce_stats *st, double *loss_out)
{
    const fusedce_ce_args *a = J->a;
    const double e = a->label_smoothing, K = J->K, z = a->z_loss;
    const double scale = a->grad_scale ? a->grad_scale[r] : a->grad_scale_all;
    ce_row_terms T = {y_t, lse, 0, 0, 0, 0, deriv_t};
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
    T.ca = scale * c;
    T.b0 = scale * e / K;
    return T;
}

/* The gradient of a row with no pass 1 (backward given lse_in) over [lo, hi): from the logits,
 * relative to the lse rounded to the compute type (exactly representable). */
static void ce_grad_from_lse(const ce_job *J, int64_t r, int64_t next_r, int64_t lo, int64_t hi, int64_t t,
                             const ce_row_terms *T)
{
    const double shift = isfinite(T->lse) ? ce_to_compute(J->dtype, T->lse) : T->lse;
    const char *next = next_r >= 0 ? (const char *)J->a->logits + ce_offset(J, next_r, lo) : NULL;
    ce_segment_grad(J, r, next, lo, hi, t, shift, T->ca * exp(shift - T->lse), NULL, T);
}

/* A whole row whose gradient is still to be written: pass 2 of row r runs during pass 1 of the
 * thread's next row (ce_stats_grad), so that its stores drain while that row's exps compute. */
typedef struct ce_pending {
    int64_t r, t; /* t: the target's element in the row, or -1 */
    ce_row_terms T;
    const char *e;
    const ce_stats *st;
    int pending;
} ce_pending;

/* Row p->r's gradient on its own (the thread's last row, or before a row without pass 1). */
static void ce_pending_flush(const ce_job *J, ce_pending *p)
{
    if (!p->pending) return;
    ce_chunks_grad(J, p->r, -1, 0, J->chunks, p->e, p->st, p->t, &p->T);
    p->pending = 0;
}

/* Chunk c of the pending row's gradient, to be written alongside a pass 1 (kernels.h), its
 * target element among the rest: a whole row streamed, where rewriting that element after
 * the streamed stores would read its line back from memory. Fused out= float32, Zen 5,
 * alternated calls, against ordinary stores over that line (prefetched for writing a row
 * ahead) and the rewrite: 2 threads AVX-512 1.46x the speed at 65536x1024, 1.34x at
 * 32768x2048, 1.22x at 16384x4096, 1.08x at 4096x32000 (AVX2 1.41/1.32/1.18/1.08x); one
 * thread 1.35x at 32768x2048, 1.19x at 16384x4096 (medians of 7-11 rounds). */
static ce_grad_along ce_pending_along(const ce_job *J, const ce_pending *p, int64_t c)
{
    const fusedce_ce_args *a = J->a;
    const int64_t lo = ce_chunk_lo(c), hi = ce_chunk_hi(J, c);
    const double ref = p->st[c].max == -INFINITY ? 0.0 : p->st[c].max;
    double tv;
    const int64_t tl = ce_target_in(J, &p->T, p->t, lo, hi, &tv);
    const ce_grad_along along = {p->e + (size_t)lo * J->wes, p->T.b0 != 0 ? ce_weight_from(J, lo) : NULL,
                                 p->T.ca * exp(ref - p->T.lse), p->T.b0, J->stream, tl, tv,
                                 (char *)a->grad + ce_offset(J, p->r, lo)};
    return along;
}

/* Pass 1 over all chunks of row r with the pending row's pass 2 alongside, chunk by chunk. */
static void ce_chunks_stats_grad(const ce_job *J, int64_t r, int64_t next_r, char *e, ce_stats *st, ce_pending *p)
{
    const fusedce_ce_args *a = J->a;
    const int want_wsum = a->loss && a->label_smoothing > 0;
    for (int64_t c = 0; c < J->chunks; c++) {
        const int64_t lo = ce_chunk_lo(c), hi = ce_chunk_hi(J, c);
        const char *x = (const char *)a->logits + ce_offset(J, r, lo);
        const char *next = J->row_ahead && next_r >= 0 ? (const char *)a->logits + ce_offset(J, next_r, lo)
                           : c + 1 < J->chunks        ? x + (size_t)(hi - lo) * J->es
                                                      : NULL;
        const ce_grad_along along = ce_pending_along(J, p, c);
        J->k->stats_grad(x, hi - lo, next, ce_weight_from(J, lo), want_wsum, e + (size_t)lo * J->wes, &st[c], &along);
    }
    p->pending = 0;
}

/* A thread's run of rows [.., end) with J->ahead: the max of the row after the one in pass 1
 * is taken during that pass, so that each row is read from memory once (its max is pass A
 * of ce_stats_fn, a pass of its own otherwise). Forward 65536x1024 float32, 2 threads, Zen 5,
 * alternated calls: 14-17 % faster; rows of 16 KB and more: no change (docs/performance.md). */
typedef struct ce_ahead {
    int64_t row; /* the row whose max is known, or -1 */
    double max;
    int64_t end;
} ce_ahead;

/* Pass 1 of row r, of one chunk of K classes at x (rows row_bytes apart), without its
 * exponentials: its max from the previous row's pass (else taken alone), the next row's max
 * taken alongside. Row r + 2 is prefetched. */
static void ce_row_stats_ahead(const ce_kernels *k, const char *x, int64_t K, size_t row_bytes, int64_t r,
                               ce_stats *st, ce_ahead *ah)
{
    if (ah->row != r) k->stats_ahead(NULL, K, 0.0, x, NULL, NULL, &ah->max);
    /* the thread's last row takes its own max again (from cache), and nothing is kept of it */
    const char *ahead = r + 1 < ah->end ? x + row_bytes : x;
    const char *next = r + 2 < ah->end ? x + 2 * row_bytes : NULL;
    double ahead_max;
    k->stats_ahead(x, K, ah->max, ahead, next, st, &ahead_max);
    ah->row = r + 1 < ah->end ? r + 1 : -1;
    ah->max = ahead_max;
}

/* What a row's steps share (ce_row_begin, ce_row_pass1, ce_row_end): its target, and the
 * target's logit (ce_row_target_y). */
typedef struct ce_row_head {
    int64_t t;       /* the row's class target (0 for probability targets) */
    int64_t tl;      /* its element in the logits' row, or -1 (see ce_row_begin) */
    int counted;     /* not an ignored row */
    int owner;       /* this thread writes the row's loss and the target's gradient element */
    int need_stats;  /* the row has a pass 1 */
    double y_t, deriv_t;
} ce_row_head;

/* The target of row r (chunks [c0, c1) on this thread), its logit y_t not yet read (see
 * ce_row_target_y). The loss and the class target's gradient element belong to the thread
 * whose chunks hold the target (thread 0 for soft targets). */
static ce_row_head ce_row_begin(const ce_job *J, int64_t r, int64_t c0, int64_t c1, int first)
{
    const fusedce_ce_args *a = J->a;
    const int64_t K = a->classes, lo = ce_chunk_lo(c0), hi = c1 < J->chunks ? ce_chunk_lo(c1) : K;
    ce_row_head h = {0, -1, 0, 0, 0, 0.0, 1.0};
    h.t = a->target_probs ? 0 : ce_target_at(a, r);
    h.counted = a->target_probs || h.t != a->ignore_index;
    /* -1: probability targets, an ignored row, or a target in another shard; then the first
     * thread owns the row's loss */
    h.tl = a->target_probs || !h.counted ? -1 : ce_local_target(J, h.t);
    h.owner = h.tl < 0 ? first : (h.tl >= lo && h.tl < hi);
    h.need_stats = ce_needs_stats(J, h.counted);
    return h;
}

/* y_t into the head where this thread owns the target: before any gradient store to the row
 * (in place, its pass 1 overwrites the logits). */
static void ce_row_target_y(const ce_job *J, ce_row_head *h, int64_t r)
{
    const char *x_row = (const char *)J->a->logits + (size_t)r * (size_t)J->a->classes * J->es;
    if (h->owner && h->tl >= 0) h->y_t = ce_target_y(J, x_row, h->tl, &h->deriv_t);
}

/* Pass 1 of row r over chunks [c0, c1), with the pending row's pass 2 alongside where there
 * is one (else that row's gradient is written first); ah: the thread's rows with J->ahead,
 * else NULL. In place, the exponentials go over the logits they are taken from. */
static char *ce_row_pass1(const ce_job *J, const ce_row_head *h, int64_t r, int64_t next_r, int64_t c0, int64_t c1,
                          char *e, ce_stats *st, ce_pending *pend, ce_ahead *ah)
{
    if (J->exp_in_place) e = (char *)J->a->grad + ce_offset(J, r, ce_chunk_lo(c0));
    if (ah && h->need_stats)
        ce_row_stats_ahead(J->k, (const char *)J->a->logits + ce_offset(J, r, 0), J->a->classes, ce_offset(J, 1, 0),
                           r, st, ah);
    else if (pend && pend->pending && h->need_stats) ce_chunks_stats_grad(J, r, next_r, e, st, pend);
    else {
        if (pend) ce_pending_flush(J, pend);
        if (h->need_stats) ce_chunks_stats(J, r, next_r, c0, c1, e, st);
    }
    return e;
}

/* Streamed, the line of whole row r's end where that is not on a line boundary takes ordinary
 * stores (the kernels' tails), whose read for ownership would hold up the streamed stores
 * behind it: the pipeline asks for it (a prefetch for writing) a row before it writes it.
 * Fused out= float32 (NumPy's arrays start 16 bytes past a line), Zen 5, alternated calls:
 * 6 % faster at 32768x2048. (The target's line, once written likewise, is now streamed with
 * the rest: ce_pending_along, ce_segment_grad.) Rows without the pipeline (backward given the
 * lse) measured no gain from such prefetches (65536x1024, 0.87-0.96x streamed with them or
 * without). */
static void ce_prefetch_row_end(const ce_job *J, int64_t r)
{
    const char *g_end = (const char *)J->a->grad + ce_offset(J, r + 1, 0);
    if ((uintptr_t)g_end & 63) __builtin_prefetch(g_end - 1, 1, 3);
}

/* The rest of row r once its chunk statistics st are in: the lse, the loss and the gradient
 * (or, with the pipeline, the gradient left pending for the next row's pass 1). */
static void ce_row_end(const ce_job *J, const ce_row_head *h, int64_t r, int64_t next_r, int64_t c0, int64_t c1,
                       int first, char *e, ce_stats *st, ce_pending *pend)
{
    const fusedce_ce_args *a = J->a;
    const int64_t lo = ce_chunk_lo(c0), hi = c1 < J->chunks ? ce_chunk_lo(c1) : a->classes;
    ce_stats row = {-INFINITY, 0.0, 0.0, 0.0, 0.0, 0.0};
    double lse = 0.0;
    if (h->need_stats) {
        ce_merge_chunks(st, J->chunks, &row);
        lse = row.max + log(row.sum);
        if (a->lse_out && first) a->lse_out[r] = lse;
    } else if (h->counted) {
        lse = a->lse_in[r];
    }
    if (!h->counted) {
        if (a->loss && first) a->loss[r] = 0.0;
        if (a->grad) memset((char *)a->grad + ce_offset(J, r, lo), 0, (size_t)(hi - lo) * J->es);
        return;
    }
    const ce_row_terms T =
        ce_terms(J, r, h->t, h->y_t, h->deriv_t, lse, &row, h->owner && a->loss ? a->loss + r : NULL);
    if (a->grad) {
        const int64_t t_here = h->owner ? h->tl : -1;
        if (pend && h->need_stats) { /* written during the next row's pass 1 */
            if (J->stream) ce_prefetch_row_end(J, r);
            *pend = (ce_pending){r, t_here, T, e, st, 1};
            return;
        }
        if (h->need_stats) ce_chunks_grad(J, r, next_r, c0, c1, e, st, t_here, &T);
        else ce_grad_from_lse(J, r, next_r, lo, hi, t_here, &T);
    }
}

/* Row r's chunks [c0, c1) on this thread, a whole row (split = 0: its chunk statistics in
 * `st`) or its share of a split one (the chunks' statistics shared in st, merged after a
 * barrier by every thread alike). e: this thread's scratch. */
static void ce_row_chunks(const ce_job *J, int64_t r, int64_t next_r, int64_t c0, int64_t c1, int first,
                          int split, char *e, ce_stats *st, ce_pending *pend)
{
    ce_row_head h = ce_row_begin(J, r, c0, c1, first);
    ce_row_target_y(J, &h, r);
    e = ce_row_pass1(J, &h, r, next_r, c0, c1, e, st, pend, NULL);
#ifdef _OPENMP
    /* One barrier per split row, stats or not, keeps the parity double-buffering safe. */
    if (split) {
#pragma omp barrier
    }
#else
    (void)split;
#endif
    ce_row_end(J, &h, r, next_r, c0, c1, first, e, st, pend);
}

/* Rows [r0, r1) without a gradient, CE_ROW_BLOCK at a time: each block's passes 1 back to
 * back, then their lse and loss. A row's pass 1 ends in a chain of dependent steps (the
 * reduction of its sums, the log, the loss): done row by row, each chain holds up the next
 * row's start; a block's chains overlap with the next rows' passes 1. Nothing is stored to the
 * logits, so y_t is read after pass 1, from cache. Same arithmetic per row, so the same bits.
 * st: CE_ROW_BLOCK rows' chunk statistics. */
static void ce_rows_forward(const ce_job *J, int64_t r0, int64_t r1, char *e, ce_stats *st)
{
    ce_row_head h[CE_ROW_BLOCK];
    ce_ahead ah = {-1, 0.0, r1};
    for (int64_t rb = r0; rb < r1; rb += CE_ROW_BLOCK) {
        const int64_t n = r1 - rb < CE_ROW_BLOCK ? r1 - rb : CE_ROW_BLOCK;
        for (int64_t i = 0; i < n; i++) {
            const int64_t r = rb + i;
            h[i] = ce_row_begin(J, r, 0, J->chunks, 1);
            ce_row_pass1(J, &h[i], r, r + 1 < r1 ? r + 1 : -1, 0, J->chunks, e, st + i * J->chunks, NULL,
                         J->ahead ? &ah : NULL);
        }
        for (int64_t i = 0; i < n; i++) {
            ce_row_target_y(J, &h[i], rb + i);
            ce_row_end(J, &h[i], rb + i, -1, 0, J->chunks, 1, e, st + i * J->chunks, NULL);
        }
    }
}

int ce_team(int *size)
{
#ifdef _OPENMP
    *size = omp_get_num_threads();
    return omp_get_thread_num();
#else
    *size = 1;
    return 0;
#endif
}

/* This thread's contiguous block [r0, r1) of rows, in or out of a parallel region. */
static void ce_thread_rows(int64_t rows, int64_t *r0, int64_t *r1)
{
    int team;
    const int tid = ce_team(&team);
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

/* Whether a gradient goes out through streaming stores (see CE_STREAM_CACHE_CAP), from the
 * call's bytes of logits and gradient together, the bytes of one row and the call's threads. */
static int ce_stream_gradient(double call_bytes, int64_t row_bytes, int threads)
{
    const int64_t llc = ce_llc_bytes(), cache = llc < CE_STREAM_CACHE_CAP ? llc : CE_STREAM_CACHE_CAP;
    const int64_t min_row = threads > 1 ? CE_MIN_STREAM_ROW_BYTES : CE_MIN_STREAM_ROW_BYTES_ONE_THREAD;
    return call_bytes > (double)cache && row_bytes >= min_row;
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
    const int nt = ce_threads_for(rows * K);
    J.stream = a->grad && a->grad != a->logits && ce_stream_gradient(2.0 * grad_bytes, K * (int64_t)J.es, nt);
    J.chunks = (K + CE_CHUNK - 1) / CE_CHUNK;
    /* Split rows over threads (whole chunks each) when there are fewer rows than threads, or
     * when rows too large for a core's L2 would leave whole-row blocks more than 1/8 uneven.
     * Not merely because a row is large: a split row costs a barrier, and each barrier waits
     * for a thread the OS has put aside, e.g. beside XLA's threads under JAX (donated
     * value_and_grad at 512x131072, 2 threads on Zen 4: 31 -> 21 ms whole rows; NumPy fused
     * out= 20-27 -> 15-18 ms, 128x262144 12-13 -> 8-9 ms). */
    const int64_t uneven = (rows + nt - 1) / nt * nt - rows; /* rows the last blocks lack */
    const int split = nt > 1 && J.chunks >= nt &&
                      (rows < nt || ((int64_t)(K * (J.es + J.wes)) > ce_l2_bytes() / 2 && 8 * uneven > rows));
    const int64_t seg_chunks = split ? (J.chunks + nt - 1) / nt : J.chunks; /* at most, per thread */
    /* A gradient written over its logits (inplace=, JAX's donated logits) keeps the exponentials
     * there, where the compute type is the logits' own and nothing reads a logit after its exp:
     * not soft targets (their sums read q with y) nor the smoothed loss (its sum reads y after).
     * The row's working set is then its logits alone, for rows of any size: 512x131072 float32
     * keeps a 512 KB row in L2 instead of 1 MB of logits and exponentials. Same bits: the same
     * exponentials, read back from another place. */
    J.exp_in_place = a->grad == a->logits && J.es == J.wes && !(a->softcap > 0) && !a->target_probs &&
                     !(a->loss && a->label_smoothing > 0);
    J.grad_from_exp = !(a->softcap > 0) &&
                      (J.exp_in_place || (size_t)(seg_chunks * CE_CHUNK) * J.wes <= CE_KEEP_EXP_BYTES);
    J.keep_exp = J.grad_from_exp && a->grad;
    const int64_t seg = seg_chunks * CE_CHUNK < K ? seg_chunks * CE_CHUNK : K;
    const size_t exp_es = J.exp_in_place ? 0 : J.wes; /* scratch bytes per class for exponentials */
    J.row_ahead = seg * (int64_t)(2 * J.es + exp_es) <= ce_l2_bytes() / 2;
    J.exp_bytes = J.exp_in_place ? 0
                                 : ((size_t)((J.grad_from_exp ? seg_chunks : 1) * CE_CHUNK) * J.wes + 63) / 64 * 64;
    /* The pipeline holds two rows' exponentials. Kept in scratch, at any size keep_exp allows
     * (CE_KEEP_EXP_BYTES a row): beyond L2 the memory stream then still runs during the exps
     * instead of idling through a row's pass 1 (fused out= float32, Zen 5, alternated calls:
     * 512x131072 0.84-0.99x the time on 2 threads and 0.81-0.89x on one, 128x262144
     * 0.94-0.99x and 0.83x, 2048x65536 0.91-1.02x on 2 threads). Kept over the logits (in
     * place), where the two rows fit in L2 (512x131072 float32 in place, 2 threads, Zen 5:
     * 5 % faster than a row at a time, median of 8 alternated runs; 1 MB rows 7 % slower). */
    J.pipeline = !split && J.keep_exp && !a->target_probs && J.k->stats_grad && !a->lse_in &&
                 (!J.exp_in_place || 2 * K * (int64_t)J.es <= ce_l2_bytes());
    /* The forward reads each row once where rows are one chunk and their pass 1 is the plain
     * one (no softcap, probability targets or smoothed loss). Not with a gradient: its stores
     * then compete with the loads of the row ahead (see stats_along in simd_rows.h). */
    J.ahead = J.k->stats_ahead && !a->grad && !split && J.chunks == 1 && J.row_ahead && !(a->softcap > 0) &&
              !a->target_probs && !(a->loss && a->label_smoothing > 0);
    /* per thread: exponentials and chunk statistics, twice with the pipeline; without a
     * gradient, CE_ROW_BLOCK rows' chunk statistics (ce_rows_forward) */
    const size_t stats_rows = split ? 0 : a->grad ? 1 : CE_ROW_BLOCK; /* rows of chunk statistics kept */
    J.scratch_bytes = (J.exp_bytes + stats_rows * (size_t)J.chunks * sizeof(ce_stats) + 63) / 64 * 64;
    if (J.scratch_bytes == 0) J.scratch_bytes = 64; /* split in place: none needed, but not a NULL */
    /* split rows' chunk statistics: shared, double-buffered by row parity */
    ce_stats *shared = split ? (ce_stats *)calloc((size_t)J.chunks * 2, sizeof(ce_stats)) : NULL;
    const size_t per_thread = J.scratch_bytes * (J.pipeline ? 2 : 1);
    J.scratch = (char *)aligned_alloc(64, per_thread * (size_t)nt);
    if (!J.scratch || (split && !shared)) {
        free(J.scratch), free(shared);
        return FUSEDCE_EINVAL;
    }
#ifdef _OPENMP
#pragma omp parallel num_threads(nt) if (nt > 1)
#endif
    {
        int team;
        const int tid = ce_team(&team);
        char *e = J.scratch + (size_t)tid * per_thread;
        if (split) {
            const int64_t c0 = J.chunks * tid / team, c1 = J.chunks * (tid + 1) / team;
            for (int64_t r = 0; r < rows; r++)
                ce_row_chunks(&J, r, r + 1 < rows ? r + 1 : -1, c0, c1, tid == 0, 1, e,
                              shared + (r & 1) * J.chunks, NULL);
        } else {
            int64_t r0, r1;
            ce_thread_rows(rows, &r0, &r1);
            if (!a->grad) {
                ce_rows_forward(&J, r0, r1, e, (ce_stats *)(e + J.exp_bytes));
            } else {
                ce_pending pend = {0, 0, {0}, NULL, NULL, 0};
                for (int64_t r = r0; r < r1; r++) {
                    /* with the pipeline, rows alternate between the two halves of the scratch */
                    char *er = e + (J.pipeline ? (size_t)(r & 1) * J.scratch_bytes : 0);
                    ce_row_chunks(&J, r, r + 1 < r1 ? r + 1 : -1, 0, J.chunks, 1, 0, er,
                                  (ce_stats *)(er + J.exp_bytes), J.pipeline ? &pend : NULL);
                }
                ce_pending_flush(&J, &pend);
            }
        }
        if (J.stream) ce_stream_fence();
    }
    free(J.scratch);
    free(shared);
    return FUSEDCE_OK;
}

int fusedce_ce_f32(const fusedce_ce_args *a) { return ce_run(FUSEDCE_F32, a); }
int fusedce_ce_f64(const fusedce_ce_args *a) { return ce_run(FUSEDCE_F64, a); }
int fusedce_ce_f16(const fusedce_ce_args *a) { return ce_run(FUSEDCE_F16, a); }
int fusedce_ce_bf16(const fusedce_ce_args *a) { return ce_run(FUSEDCE_BF16, a); }

/* Row r (at x) of the softmax family from its chunks, as the cross-entropy's (e, st: scratch
 * for the row's exponentials, which only the softmax keeps, and its chunk statistics); next:
 * the row read after this one, or NULL; ah: the thread's rows where they are one chunk and
 * the mode keeps no exponentials (ce_row_stats_ahead), else NULL. */
static void ce_softmax_row(const ce_kernels *k, int dtype, int mode, int64_t r, const char *x, const char *next,
                           int64_t K, char *o, double *lse_out, char *e, ce_stats *st, ce_ahead *ah)
{
    const size_t es = ce_elsize(dtype), wes = ce_compute_size(dtype);
    const int64_t chunks = (K + CE_CHUNK - 1) / CE_CHUNK;
    if (ah) ce_row_stats_ahead(k, x, K, (size_t)K * es, r, st, ah);
    else
        for (int64_t c = 0; c < chunks; c++) {
            const int64_t lo = c * CE_CHUNK, n = c + 1 < chunks ? CE_CHUNK : K - lo;
            const char *pf = c + 1 < chunks ? x + (size_t)(lo + n) * es : next;
            k->stats(x + (size_t)lo * es, n, pf, 0.0, NULL, 0, mode == FUSEDCE_SOFTMAX ? e + (size_t)lo * wes : NULL,
                     &st[c]);
        }
    ce_stats row;
    ce_merge_chunks(st, chunks, &row);
    const double log_s = log(row.sum), lse = row.max + log_s;
    if (lse_out) *lse_out = lse;
    if (mode == FUSEDCE_SOFTMAX) {
        for (int64_t c = 0; c < chunks; c++) {
            const int64_t lo = c * CE_CHUNK, n = c + 1 < chunks ? CE_CHUNK : K - lo;
            const double ref = st[c].max == -INFINITY ? 0.0 : st[c].max;
            k->grad_exp(e + (size_t)lo * wes, NULL, n, NULL, NULL, exp(ref - lse), 0.0, 0.0, 0, -1, 0.0,
                        o + (size_t)lo * es);
        }
    } else if (mode == FUSEDCE_LOG_SOFTMAX) {
        k->shift(x, K, row.max, log_s, o);
    }
}

int fusedce_softmax(int dtype, int mode, int64_t rows, int64_t classes, const void *x, void *out, double *lse_out)
{
    if (dtype < FUSEDCE_F32 || dtype > FUSEDCE_BF16 || mode < FUSEDCE_LOGSUMEXP || mode > FUSEDCE_LOG_SOFTMAX ||
        rows < 0 || classes < 1 || (rows > 0 && (!x || (mode != FUSEDCE_LOGSUMEXP && !out))))
        return FUSEDCE_EINVAL;
    const ce_kernels *k = &ce_active_table()->k[dtype];
    const size_t row_bytes = (size_t)classes * ce_elsize(dtype);
    const int nt = ce_threads_for(rows * classes);
    const int64_t chunks = (classes + CE_CHUNK - 1) / CE_CHUNK;
    const size_t exp_bytes = ((size_t)(chunks * CE_CHUNK) * ce_compute_size(dtype) + 63) / 64 * 64;
    const size_t scratch_bytes = (exp_bytes + (size_t)chunks * sizeof(ce_stats) + 63) / 64 * 64;
    char *scratch = rows > 0 ? (char *)aligned_alloc(64, scratch_bytes * (size_t)nt) : NULL;
    if (rows > 0 && !scratch) return FUSEDCE_EINVAL;
#ifdef _OPENMP
#pragma omp parallel num_threads(nt) if (nt > 1)
#endif
    {
        int team;
        char *e = scratch + (size_t)ce_team(&team) * scratch_bytes;
        int64_t r0, r1;
        ce_thread_rows(rows, &r0, &r1);
        ce_ahead ah = {-1, 0.0, r1};
        const int ahead = k->stats_ahead && chunks == 1 && mode != FUSEDCE_SOFTMAX;
        for (int64_t r = r0; r < r1; r++)
            ce_softmax_row(k, dtype, mode, r, (const char *)x + (size_t)r * row_bytes,
                           r + 1 < r1 ? (const char *)x + (size_t)(r + 1) * row_bytes : NULL, classes,
                           out ? (char *)out + (size_t)r * row_bytes : NULL, lse_out ? lse_out + r : NULL, e,
                           (ce_stats *)(e + exp_bytes), ahead ? &ah : NULL);
    }
    free(scratch);
    return FUSEDCE_OK;
}
