/* The cross-entropy semantics on top of the per-ISA row primitives: targets, class weights,
 * label smoothing, z-loss, softcap, ignored rows, and how the rows are spread over threads.
 *
 * Two passes per row (kernels.h): stats (max, sum of exp) and then the gradient with the exp
 * recomputed while the row is still in cache. The target element of the gradient is then
 * rewritten from a double-precision scalar computation, so it never depends on a vector
 * rounding and half-precision gradients get it computed in (at least) float32.
 * Rows go to threads in contiguous blocks; when there are fewer rows than threads, or a row is
 * larger than half the L2, each row is instead cut into one segment per thread and the
 * segments' (max, sum) pairs merged. */
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
/* Segment boundaries of a split row are multiples of this (whole cache lines, whole vectors). */
#define CE_SPLIT_ALIGN 64

static size_t ce_elsize(int dtype) { return dtype == FUSEDCE_F64 ? 8 : dtype == FUSEDCE_F32 ? 4 : 2; }

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
    int dtype;
    size_t es;
    double total_weight;   /* W = sum of class weights (K without weights) */
    int stream;            /* non-temporal gradient stores */
} ce_job;

/* The scalars of one counted row once its lse is known. */
typedef struct ce_row_terms {
    double y_t, w_t, lse, shift;
    double a, b;           /* grad primitive's factors */
    double target_extra;   /* subtracted at the target: scale * (1 - e) * w_t */
} ce_row_terms;

/* The target's capped logit exactly as the row's kernels compute it (their float tanh, not a
 * double one), so that p_t and the loss agree with the row's max and sum to the last bit:
 * with K = 1, say, the loss is then exactly 0 and the gradient exactly the z-loss term. */
static double ce_target_y(const ce_job *J, const char *x_row, int64_t t)
{
    const double x_t = ce_load(J->dtype, x_row, t);
    if (!(J->a->softcap > 0) || isnan(x_t)) return x_t;
    ce_stats one;
    J->k->stats(x_row + (size_t)t * J->es, 1, J->a->softcap, NULL, 0, &one);
    return one.max;
}

static double ce_cap_deriv(double y, double softcap)
{
    return softcap > 0 ? 1.0 - (y / softcap) * (y / softcap) : 1.0;
}

static int ce_wants_wsum(const ce_job *J) { return J->a->loss && J->a->label_smoothing > 0; }

/* The row's loss and the factors of its gradient. y_t is read by the caller before any
 * gradient store (in place, the gradient overwrites it). */
static ce_row_terms ce_terms(const ce_job *J, int64_t r, int64_t t, double y_t, double lse, double shift,
                             double wsum, double *loss_out)
{
    const fusedce_ce_args *a = J->a;
    const double e = a->label_smoothing, K = (double)a->classes;
    ce_row_terms T;
    T.y_t = y_t;
    T.w_t = ce_weight_at(J->dtype, a->weight, t);
    T.lse = lse;
    T.shift = shift;
    if (loss_out) {
        double loss = (1.0 - e) * T.w_t * (lse - T.y_t);
        if (e > 0) loss += (e / K) * (J->total_weight * lse - wsum);
        if (a->z_loss > 0) loss += a->z_loss * T.w_t * lse * lse;
        *loss_out = loss;
    }
    const double scale = a->grad_scale ? a->grad_scale[r] : a->grad_scale_all;
    const double c = (1.0 - e) * T.w_t + (e / K) * J->total_weight + 2.0 * a->z_loss * T.w_t * lse;
    /* p_j = exp(y_j - lse) = exp(y_j - shift) * exp(shift - lse); the second factor in double. */
    T.a = scale * c * exp(shift - lse);
    T.b = scale * e / K;
    T.target_extra = scale * (1.0 - e) * T.w_t;
    return T;
}

static void ce_write_target_grad(const ce_job *J, const ce_row_terms *T, int64_t t, void *g_row)
{
    const double p_t = exp(T->y_t - T->shift);
    const double w_t = ce_weight_at(J->dtype, J->a->weight, t);
    const double g = (T->a * p_t - T->b * w_t - T->target_extra) * ce_cap_deriv(T->y_t, J->a->softcap);
    ce_store(J->dtype, g_row, t, g);
}

/* The class weights the grad primitive needs: only when smoothing spreads them. */
static const void *ce_grad_weight(const ce_job *J, double b) { return b != 0 ? J->a->weight : NULL; }

static void ce_one_row(const ce_job *J, int64_t r)
{
    const fusedce_ce_args *a = J->a;
    const int64_t K = a->classes;
    const char *x = (const char *)a->logits + (size_t)r * (size_t)K * J->es;
    char *g = a->grad ? (char *)a->grad + (size_t)r * (size_t)K * J->es : NULL;
    const int64_t t = ce_target_at(a, r);
    const int counted = t != a->ignore_index;
    const int need_stats = a->lse_out || (counted && (a->loss || (g && !a->lse_in)));
    ce_stats st = {-INFINITY, 0.0, 0.0};
    double lse = 0.0, shift = 0.0;
    if (need_stats) {
        J->k->stats(x, K, a->softcap, a->weight, counted && ce_wants_wsum(J), &st);
        lse = st.max + log(st.sum);
        shift = st.max;
        if (a->lse_out) a->lse_out[r] = lse;
    }
    if (!counted) {
        if (a->loss) a->loss[r] = 0.0;
        if (g) memset(g, 0, (size_t)K * J->es);
        return;
    }
    if (!need_stats) {
        lse = a->lse_in[r];
        shift = isfinite(lse) ? ce_to_compute(J->dtype, lse) : lse;
    }
    const double y_t = ce_target_y(J, x, t);
    const ce_row_terms T = ce_terms(J, r, t, y_t, lse, shift, st.wsum, a->loss ? a->loss + r : NULL);
    if (g) {
        J->k->grad(x, K, a->softcap, ce_grad_weight(J, T.b), T.shift, T.a, T.b, J->stream, g);
        ce_write_target_grad(J, &T, t, g);
    }
}

/* One row cut into nt segments, run by thread `tid` of a team of nt; `parts` holds 2*nt stats
 * (double-buffered by row parity so a fast thread cannot overwrite what a slow one merges). */
static void ce_split_row(const ce_job *J, int64_t r, int tid, int nt, ce_stats *parts)
{
    const fusedce_ce_args *a = J->a;
    const int64_t K = a->classes;
    const char *x = (const char *)a->logits + (size_t)r * (size_t)K * J->es;
    char *g = a->grad ? (char *)a->grad + (size_t)r * (size_t)K * J->es : NULL;
    const int64_t t = ce_target_at(a, r);
    const int counted = t != a->ignore_index;
    int64_t lo = (K * tid / nt) / CE_SPLIT_ALIGN * CE_SPLIT_ALIGN;
    int64_t hi = tid == nt - 1 ? K : (K * (tid + 1) / nt) / CE_SPLIT_ALIGN * CE_SPLIT_ALIGN;
    const int owns_target = counted && t >= lo && t < hi;
    const double y_t = owns_target ? ce_target_y(J, x, t) : 0.0;
    const void *w_seg = a->weight ? (const char *)a->weight + (size_t)lo * (J->dtype == FUSEDCE_F64 ? 8 : 4) : NULL;
    ce_stats *mine = parts + (r & 1) * nt;
    const int need_stats = a->lse_out || (counted && (a->loss || (g && !a->lse_in)));
    double lse = 0.0, shift = 0.0, wsum = 0.0;
    if (need_stats)
        J->k->stats(x + (size_t)lo * J->es, hi - lo, a->softcap, w_seg, counted && ce_wants_wsum(J), &mine[tid]);
    /* One barrier per row, stats or not, keeps the parity double-buffering safe. */
#ifdef _OPENMP
#pragma omp barrier
#endif
    if (need_stats) {
        double m = -INFINITY, s = 0.0;
        for (int i = 0; i < nt; i++) {
            ce_merge(&m, &s, mine[i].max, mine[i].sum);
            wsum += mine[i].wsum;
        }
        lse = m + log(s);
        shift = m;
        if (a->lse_out && tid == 0) a->lse_out[r] = lse;
    } else if (counted) {
        lse = a->lse_in[r];
        shift = isfinite(lse) ? ce_to_compute(J->dtype, lse) : lse;
    }
    if (!counted) {
        if (a->loss && tid == 0) a->loss[r] = 0.0;
        if (g) memset(g + (size_t)lo * J->es, 0, (size_t)(hi - lo) * J->es);
        return;
    }
    /* Every thread needs the row's gradient factors; y_t enters only the loss and the target
     * element, which the owner of the target's segment writes. */
    double *loss_out = owns_target && a->loss ? a->loss + r : NULL;
    const ce_row_terms T = ce_terms(J, r, t, y_t, lse, shift, wsum, loss_out);
    if (g) {
        const void *gw = T.b != 0 && a->weight ? w_seg : NULL;
        J->k->grad(x + (size_t)lo * J->es, hi - lo, a->softcap, gw, T.shift, T.a, T.b, J->stream,
                   g + (size_t)lo * J->es);
        if (owns_target) ce_write_target_grad(J, &T, t, g);
    }
}

static int ce_threads_for(int64_t elems)
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
    if (!a->logits || !a->target) return FUSEDCE_EINVAL;
    if (!(a->label_smoothing >= 0 && a->label_smoothing <= 1) || !(a->z_loss >= 0) || !(a->softcap >= 0) ||
        !isfinite(a->z_loss) || !isfinite(a->softcap))
        return FUSEDCE_EINVAL;
    for (int64_t r = 0; r < a->rows; r++) {
        const int64_t t = ce_target_at(a, r);
        if (t != a->ignore_index && (t < 0 || t >= a->classes)) {
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
    J.dtype = dtype;
    J.es = ce_elsize(dtype);
    J.total_weight = (double)a->classes;
    if (a->weight) {
        J.total_weight = 0.0;
        for (int64_t k = 0; k < a->classes; k++) J.total_weight += ce_weight_at(dtype, a->weight, k);
    }
    const int64_t K = a->classes, rows = a->rows;
    const double grad_bytes = (double)rows * (double)K * (double)J.es;
    J.stream = a->grad && a->grad != a->logits && grad_bytes > (double)ce_llc_bytes();
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
        }
        free(parts);
    } else {
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
#endif
        for (int64_t r = 0; r < rows; r++) ce_one_row(&J, r);
    }
    return FUSEDCE_OK;
}

int fusedce_ce_f32(const fusedce_ce_args *a) { return ce_run(FUSEDCE_F32, a); }
int fusedce_ce_f64(const fusedce_ce_args *a) { return ce_run(FUSEDCE_F64, a); }
int fusedce_ce_f16(const fusedce_ce_args *a) { return ce_run(FUSEDCE_F16, a); }
int fusedce_ce_bf16(const fusedce_ce_args *a) { return ce_run(FUSEDCE_BF16, a); }

static void ce_softmax_row(const ce_kernels *k, int mode, const char *x, int64_t K, char *o, double *lse_out)
{
    ce_stats st;
    k->stats(x, K, 0.0, NULL, 0, &st);
    const double log_s = log(st.sum);
    if (lse_out) *lse_out = st.max + log_s;
    if (mode == FUSEDCE_SOFTMAX) k->grad(x, K, 0.0, NULL, st.max, 1.0 / st.sum, 0.0, 0, o);
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
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
#endif
    for (int64_t r = 0; r < rows; r++)
        ce_softmax_row(k, mode, (const char *)x + (size_t)r * row_bytes, classes,
                       out ? (char *)out + (size_t)r * row_bytes : NULL, lse_out ? lse_out + r : NULL);
    return FUSEDCE_OK;
}
