/* Memory safety and cross-ISA agreement of the public C API (csrc/include/fusedce.h).
 *
 * Every entry point (cross-entropy with class and probability targets and every option,
 * binary cross-entropy, the softmax family, the vector exp) on every ISA this CPU has, over
 * classes 1..64 (every vector tail) and some large counts, in place and out of place. Each
 * ISA's results are compared with the portable kernels'; every output buffer has guard bytes
 * that must come back untouched, every input must come back unchanged, and inputs end
 * exactly at the end of their allocation so that AddressSanitizer and valgrind see any read
 * past them. The error paths must return their code and write nothing.
 *
 * Built with all of csrc/ by .ci/sanitize.sh and .ci/valgrind.sh. `--small` (or
 * FUSEDCE_TEST_SMALL=1) runs a reduced matrix for valgrind. Last line: "N passed, M failed";
 * exit status 1 on any failure.
 */
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fusedce.h"

/* ---- bookkeeping ------------------------------------------------------------------------ */

static long n_passed, n_failed;
#define MAX_FAILS_SHOWN 30

static int check(int ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int check(int ok, const char *fmt, ...)
{
    if (ok) {
        n_passed++;
        return 1;
    }
    if (++n_failed <= MAX_FAILS_SHOWN) {
        va_list ap;
        va_start(ap, fmt);
        printf("FAIL: ");
        vprintf(fmt, ap);
        printf("\n");
        va_end(ap);
    }
    return 0;
}

/* What the current case is, for failure messages. */
static char where[256];

/* ---- buffers ---------------------------------------------------------------------------- */

#define GUARD 64
#define CANARY 0xA5

/* An output buffer between two guard zones (and `offset` bytes off the allocation's start,
 * for unaligned pointers); the guards must still hold CANARY when it is freed. */
typedef struct {
    unsigned char *base;
    size_t bytes, lead;
    void *p;
} out_buf;

static void *xmalloc(size_t bytes)
{
    void *p = malloc(bytes ? bytes : 1);
    if (!p) {
        printf("out of memory\n");
        exit(2);
    }
    return p;
}

static out_buf out_new(size_t bytes, size_t offset)
{
    out_buf b;
    b.bytes = bytes;
    b.lead = GUARD + offset;
    b.base = xmalloc(b.lead + bytes + GUARD);
    memset(b.base, CANARY, b.lead + bytes + GUARD);
    b.p = b.base + b.lead;
    return b;
}

static int guards_intact(const out_buf *b)
{
    for (size_t i = 0; i < b->lead; i++)
        if (b->base[i] != CANARY) return 0;
    for (size_t i = 0; i < GUARD; i++)
        if (b->base[b->lead + b->bytes + i] != CANARY) return 0;
    return 1;
}

static void out_free(out_buf *b, const char *what)
{
    check(guards_intact(b), "%s: %s written outside its %zu bytes", where, what, b->bytes);
    free(b->base);
}

/* An input: `bytes` ending exactly at the end of its allocation, `offset` bytes in. */
typedef struct {
    unsigned char *base;
    void *p;
    size_t bytes;
    unsigned char *copy; /* what it held before the calls */
} in_buf;

static in_buf in_new(size_t bytes, size_t offset)
{
    in_buf b;
    b.bytes = bytes;
    b.base = xmalloc(offset + bytes);
    b.p = b.base + offset;
    b.copy = NULL;
    return b;
}

static void in_seal(in_buf *b)
{
    b->copy = xmalloc(b->bytes);
    memcpy(b->copy, b->p, b->bytes);
}

static void in_free(in_buf *b, const char *what)
{
    if (b->copy) check(memcmp(b->copy, b->p, b->bytes) == 0, "%s: input %s was modified", where, what);
    free(b->copy);
    free(b->base);
}

/* ---- dtypes ----------------------------------------------------------------------------- */

static const char *const dtype_name[4] = {"f32", "f64", "f16", "bf16"};
static size_t elem_size(int dt) { return dt == FUSEDCE_F64 ? 8 : dt == FUSEDCE_F32 ? 4 : 2; }
static size_t compute_size(int dt) { return dt == FUSEDCE_F64 ? 8 : 4; }

static double f16_value(uint16_t h)
{
    const int sign = h >> 15, e = (h >> 10) & 31, m = h & 1023;
    double v;
    if (e == 0) v = ldexp(m, -24);
    else if (e == 31) v = m ? NAN : INFINITY;
    else v = ldexp(1024 + m, e - 25);
    return sign ? -v : v;
}

static double bf16_value(uint16_t h)
{
    union { uint32_t u; float f; } v;
    v.u = (uint32_t)h << 16;
    return v.f;
}

static double get(int dt, const void *p, int64_t i)
{
    switch (dt) {
    case FUSEDCE_F32: return ((const float *)p)[i];
    case FUSEDCE_F64: return ((const double *)p)[i];
    case FUSEDCE_F16: return f16_value(((const uint16_t *)p)[i]);
    default: return bf16_value(((const uint16_t *)p)[i]);
    }
}

/* ---- deterministic inputs --------------------------------------------------------------- */

static uint64_t rng_state;
static uint64_t rng_next(void)
{
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static double rng_uniform(double lo, double hi) { return lo + (hi - lo) * (double)(rng_next() >> 11) * 0x1p-53; }
static void rng_seed(uint64_t a, uint64_t b, uint64_t c) { rng_state = a * 1000003u + b * 7919u + c; }

/* Half-precision values are drawn as bit patterns: +-[2^-5, 8) (normal numbers, exact). */
static uint16_t rng_f16(void) { return (uint16_t)((rng_next() & 1) << 15 | (10 + rng_next() % 8) << 10 | rng_next() % 1024); }
static uint16_t rng_bf16(void) { return (uint16_t)((rng_next() & 1) << 15 | (122 + rng_next() % 8) << 7 | rng_next() % 128); }

static void fill_values(int dt, void *p, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        switch (dt) {
        case FUSEDCE_F32: ((float *)p)[i] = (float)rng_uniform(-8, 8); break;
        case FUSEDCE_F64: ((double *)p)[i] = rng_uniform(-8, 8); break;
        case FUSEDCE_F16: ((uint16_t *)p)[i] = rng_f16(); break;
        default: ((uint16_t *)p)[i] = rng_bf16(); break;
        }
    }
}

static void set_minus_inf(int dt, void *p, int64_t i)
{
    switch (dt) {
    case FUSEDCE_F32: ((float *)p)[i] = -INFINITY; break;
    case FUSEDCE_F64: ((double *)p)[i] = -INFINITY; break;
    case FUSEDCE_F16: ((uint16_t *)p)[i] = 0xFC00; break;
    default: ((uint16_t *)p)[i] = 0xFF80; break;
    }
}

/* Probabilities (not normalised: the formulas take any q >= 0), a fifth of them 0. */
static void fill_probabilities(int dt, void *p, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        const int zero = rng_next() % 5 == 0;
        switch (dt) {
        case FUSEDCE_F32: ((float *)p)[i] = zero ? 0.0f : (float)rng_uniform(0, 0.5); break;
        case FUSEDCE_F64: ((double *)p)[i] = zero ? 0.0 : rng_uniform(0, 0.5); break;
        case FUSEDCE_F16: ((uint16_t *)p)[i] = zero ? 0 : (uint16_t)((5 + rng_next() % 9) << 10 | rng_next() % 1024); break;
        default: ((uint16_t *)p)[i] = zero ? 0 : (uint16_t)((117 + rng_next() % 9) << 7 | rng_next() % 128); break;
        }
    }
}

/* Compute-type values (weights, per-element factors) in [lo, hi). */
static void fill_compute(int dt, void *p, int64_t n, double lo, double hi)
{
    for (int64_t i = 0; i < n; i++) {
        if (dt == FUSEDCE_F64) ((double *)p)[i] = rng_uniform(lo, hi);
        else ((float *)p)[i] = (float)rng_uniform(lo, hi);
    }
}

/* ---- comparing -------------------------------------------------------------------------- */

/* Relative tolerance of an ISA against portable: the compute type's for double results,
 * and one rounding of the storage type for results stored as half. */
static double tol_compute(int dt) { return dt == FUSEDCE_F64 ? 1e-12 : 1e-5; }
static double tol_stored(int dt)
{
    static const double t[4] = {1e-5, 1e-12, 1e-3, 8e-3};
    return t[dt];
}

static int same_special(double a, double b)
{
    if (isnan(a) || isnan(b)) return isnan(a) && isnan(b);
    if (isinf(a) || isinf(b)) return a == b;
    return -1; /* both finite */
}

/* got vs want (n values of dtype dt, or doubles when dt < 0): NaN/inf alike, the rest within
 * rtol of max(1, the largest finite |want|). */
static void compare(const char *what, int dt, const void *got, const void *want, int64_t n, double rtol)
{
    double scale = 1.0, worst = 0.0;
    int64_t worst_at = -1;
    for (int64_t i = 0; i < n; i++) {
        const double w = dt < 0 ? ((const double *)want)[i] : get(dt, want, i);
        if (isfinite(w) && fabs(w) > scale) scale = fabs(w);
    }
    for (int64_t i = 0; i < n; i++) {
        const double g = dt < 0 ? ((const double *)got)[i] : get(dt, got, i);
        const double w = dt < 0 ? ((const double *)want)[i] : get(dt, want, i);
        const int special = same_special(g, w);
        const double err = special < 0 ? fabs(g - w) : special ? 0.0 : INFINITY;
        if (err > worst) worst = err, worst_at = i;
    }
    check(worst <= rtol * scale, "%s: %s differs from portable at [%lld]: error %.3g > %.1g * %.3g", where, what,
          (long long)worst_at, worst, rtol, scale);
}

static void compare_exact(const char *what, const void *got, const void *want, size_t bytes)
{
    check(memcmp(got, want, bytes) == 0, "%s: %s is not bit-identical", where, what);
}

/* ---- ISAs ------------------------------------------------------------------------------- */

static int isas[FUSEDCE_ISA_COUNT], n_isas; /* available ones, portable first */

static void use_isa(int isa)
{
    if (fusedce_set_isa(isa) != FUSEDCE_OK) {
        printf("cannot select ISA %s\n", fusedce_isa_name(isa));
        exit(2);
    }
}

/* ---- cross-entropy ---------------------------------------------------------------------- */

typedef struct {
    const char *name;
    int weight, probs, i64, per_row_scale, minus_inf;
    int64_t ignore_index;
    double smoothing, z_loss, softcap, scale_all;
} ce_opts;

/* Defaults first, then each entry's own values (which override them, on purpose). */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Woverride-init"
#define CE(...) {.ignore_index = -100, .scale_all = 1.0, __VA_ARGS__}
static const ce_opts CE_OPTS[] = {
    CE(.name = "plain"),
    CE(.name = "plain, int64 targets, scale -0.5", .i64 = 1, .scale_all = -0.5),
    CE(.name = "weight", .weight = 1),
    CE(.name = "smoothing", .smoothing = 0.1),
    CE(.name = "smoothing+weight", .weight = 1, .i64 = 1, .smoothing = 0.3, .scale_all = 0.7),
    CE(.name = "smoothing 1", .smoothing = 1.0),
    CE(.name = "z_loss, per-row scale", .per_row_scale = 1, .z_loss = 1e-2),
    CE(.name = "softcap", .softcap = 3.0),
    CE(.name = "ignore class 1", .i64 = 1, .ignore_index = 1),
    CE(.name = "-inf logits", .weight = 1, .minus_inf = 1, .smoothing = 0.2),
    CE(.name = "all", .weight = 1, .i64 = 1, .per_row_scale = 1, .ignore_index = 2, .smoothing = 0.2, .z_loss = 1e-3,
       .softcap = 4.0),
    CE(.name = "probabilities", .probs = 1),
    CE(.name = "probabilities, all", .weight = 1, .probs = 1, .per_row_scale = 1, .smoothing = 0.2, .z_loss = 1e-3,
       .softcap = 4.0),
    CE(.name = "probabilities, -inf", .probs = 1, .minus_inf = 1, .smoothing = 0.1),
};
#undef CE
#pragma GCC diagnostic pop
#define N_CE_OPTS ((int)(sizeof(CE_OPTS) / sizeof(CE_OPTS[0])))
static const int SMALL_CE_OPTS[] = {0, 10, 12}; /* plain, all, probabilities with all */

typedef struct {
    int dt;
    int64_t rows, K;
    const ce_opts *o;
    in_buf logits, target, probs, weight, scale;
} ce_case;

static int (*const ce_entry[4])(const fusedce_ce_args *) = {fusedce_ce_f32, fusedce_ce_f64, fusedce_ce_f16, fusedce_ce_bf16};

static void ce_case_new(ce_case *c, int dt, int64_t rows, int64_t K, const ce_opts *o)
{
    const size_t es = elem_size(dt), n = (size_t)(rows * K), offset = K % 3 == 1 ? es : 0;
    c->dt = dt, c->rows = rows, c->K = K, c->o = o;
    c->logits = in_new(n * es, offset);
    fill_values(dt, c->logits.p, (int64_t)n);
    c->target = in_new((size_t)rows * (o->i64 ? 8 : 4), 0);
    for (int64_t r = 0; r < rows; r++) {
        int64_t t = (int64_t)(rng_next() % (uint64_t)K);
        if (r % 4 == 1) t = o->ignore_index; /* every fourth row ignored */
        if (o->i64) ((int64_t *)c->target.p)[r] = t;
        else ((int32_t *)c->target.p)[r] = (int32_t)t;
        if (o->minus_inf && K > 1) { /* a -inf logit away from the target */
            const int64_t t_class = t >= 0 && t < K ? t : 0;
            set_minus_inf(dt, c->logits.p, r * K + (t_class + 1 + r % (K - 1)) % K);
        }
    }
    if (o->minus_inf && rows > 2 && !o->probs) { /* and one row whose target logit is -inf */
        const int64_t t = o->i64 ? ((int64_t *)c->target.p)[2] : ((int32_t *)c->target.p)[2];
        if (t >= 0 && t < K) set_minus_inf(dt, c->logits.p, 2 * K + t);
    }
    c->probs = in_new(o->probs ? n * es : 0, 0);
    if (o->probs) fill_probabilities(dt, c->probs.p, (int64_t)n);
    c->weight = in_new(o->weight ? (size_t)K * compute_size(dt) : 0, 0);
    if (o->weight) fill_compute(dt, c->weight.p, K, 0.25, 2.0);
    c->scale = in_new(o->per_row_scale ? (size_t)rows * 8 : 0, 0);
    if (o->per_row_scale) fill_compute(FUSEDCE_F64, c->scale.p, rows, -2.0, 2.0);
    in_seal(&c->logits), in_seal(&c->target), in_seal(&c->probs), in_seal(&c->weight), in_seal(&c->scale);
}

static void ce_case_free(ce_case *c)
{
    in_free(&c->logits, "logits"), in_free(&c->target, "target"), in_free(&c->probs, "target_probs");
    in_free(&c->weight, "weight"), in_free(&c->scale, "grad_scale");
}

static fusedce_ce_args ce_args(const ce_case *c)
{
    fusedce_ce_args a;
    memset(&a, 0, sizeof a);
    a.rows = c->rows, a.classes = c->K;
    a.logits = c->logits.p;
    if (c->o->probs) a.target_probs = c->probs.p;
    else a.target = c->target.p;
    a.target_is_i64 = c->o->i64;
    a.weight = c->o->weight ? c->weight.p : NULL;
    a.ignore_index = c->o->ignore_index;
    a.label_smoothing = c->o->smoothing, a.z_loss = c->o->z_loss, a.softcap = c->o->softcap;
    a.grad_scale = c->o->per_row_scale ? (const double *)c->scale.p : NULL;
    a.grad_scale_all = c->o->scale_all;
    return a;
}

/* One ISA's results for a case. */
typedef struct {
    out_buf loss, lse, grad, loss_only, grad_backward;
} ce_results;

static int ce_call(const ce_case *c, fusedce_ce_args *a, const char *what)
{
    const int rc = ce_entry[c->dt](a);
    check(rc == FUSEDCE_OK, "%s: %s returned %d", where, what, rc);
    return rc;
}

static void ce_run(const ce_case *c, ce_results *res)
{
    const size_t rows = (size_t)c->rows, grad_bytes = rows * (size_t)c->K * elem_size(c->dt);
    const size_t offset = c->K % 2 ? elem_size(c->dt) : 0;
    res->loss = out_new(rows * 8, 0), res->lse = out_new(rows * 8, 8), res->grad = out_new(grad_bytes, offset);
    res->loss_only = out_new(rows * 8, 0), res->grad_backward = out_new(grad_bytes, 0);

    fusedce_ce_args a = ce_args(c); /* fused: loss, lse and gradient in one call */
    a.loss = res->loss.p, a.lse_out = res->lse.p, a.grad = res->grad.p;
    ce_call(c, &a, "fused call");

    a = ce_args(c); /* the loss alone: the fused call's, bit for bit */
    a.loss = res->loss_only.p;
    if (ce_call(c, &a, "loss-only call") == FUSEDCE_OK) compare_exact("loss alone", res->loss_only.p, res->loss.p, rows * 8);

    a = ce_args(c); /* the backward from the forward's lse */
    a.lse_in = res->lse.p, a.grad = res->grad_backward.p;
    ce_call(c, &a, "backward");
    compare("backward gradient vs fused", c->dt, res->grad_backward.p, res->grad.p, c->rows * c->K, tol_stored(c->dt));

    /* in place, the gradient over a copy of the logits: the fused gradient, bit for bit */
    out_buf inplace = out_new(grad_bytes, offset);
    memcpy(inplace.p, c->logits.p, grad_bytes);
    a = ce_args(c);
    a.logits = inplace.p, a.grad = inplace.p;
    if (ce_call(c, &a, "in-place call") == FUSEDCE_OK) compare_exact("in-place gradient", inplace.p, res->grad.p, grad_bytes);
    out_free(&inplace, "in-place gradient");
}

static void ce_results_free(ce_results *r)
{
    out_free(&r->loss, "loss"), out_free(&r->lse, "lse_out"), out_free(&r->grad, "grad");
    out_free(&r->loss_only, "loss (alone)"), out_free(&r->grad_backward, "grad (backward)");
}

static void ce_compare(const ce_case *c, const ce_results *got, const ce_results *want)
{
    const int64_t n = c->rows * c->K;
    compare("loss", -1, got->loss.p, want->loss.p, c->rows, tol_compute(c->dt));
    compare("lse", -1, got->lse.p, want->lse.p, c->rows, tol_compute(c->dt));
    compare("gradient", c->dt, got->grad.p, want->grad.p, n, tol_stored(c->dt));
    compare("backward gradient", c->dt, got->grad_backward.p, want->grad_backward.p, n, tol_stored(c->dt));
}

static void ce_one(int dt, int64_t rows, int64_t K, int opt)
{
    ce_case c;
    rng_seed((uint64_t)dt, (uint64_t)K, (uint64_t)(rows * 100 + opt));
    ce_case_new(&c, dt, rows, K, &CE_OPTS[opt]);
    ce_results res[FUSEDCE_ISA_COUNT];
    for (int i = 0; i < n_isas; i++) {
        snprintf(where, sizeof where, "ce %s %s rows=%lld K=%lld [%s]", fusedce_isa_name(isas[i]), dtype_name[dt],
                 (long long)rows, (long long)K, CE_OPTS[opt].name);
        use_isa(isas[i]);
        ce_run(&c, &res[i]);
        if (i > 0) ce_compare(&c, &res[i], &res[0]);
    }
    for (int i = 0; i < n_isas; i++) ce_results_free(&res[i]);
    ce_case_free(&c);
}

/* ---- vocabulary shards ------------------------------------------------------------------ */

/* The case's rows cut into three shards of classes (class_offset / total_classes): each
 * shard's partials merged as fusedce.h describes them must give the whole row's lse and loss,
 * and each shard's gradient from the whole row's lse the whole row's gradient on its classes.
 * Each shard is a separate input ending at its allocation's end; every output has guards. */
static void shard_one(int dt, int64_t rows, int64_t K, int opt)
{
    const ce_opts *o = &CE_OPTS[opt];
    ce_case c;
    rng_seed(50 + (uint64_t)dt, (uint64_t)K, (uint64_t)(rows * 100 + opt));
    ce_case_new(&c, dt, rows, K, o);
    const size_t es = elem_size(dt);
    const int64_t cut[4] = {0, K / 3, K / 3 + (K + 1) / 3, K}; /* a shard may be empty for K < 3 */
    for (int i = 0; i < n_isas; i++) {
        snprintf(where, sizeof where, "shards %s %s rows=%lld K=%lld [%s]", fusedce_isa_name(isas[i]), dtype_name[dt],
                 (long long)rows, (long long)K, o->name);
        use_isa(isas[i]);
        ce_results whole;
        ce_run(&c, &whole);
        out_buf grad = out_new((size_t)(rows * K) * es, 0);
        double *lse_s = xmalloc(sizeof(double) * 3 * (size_t)rows), *part = xmalloc(sizeof(double) * 3 * (size_t)rows);
        double W_s[3];
        for (int s = 0; s < 3; s++) {
            const int64_t lo = cut[s], n = cut[s + 1] - lo;
            W_s[s] = 0.0;
            for (int64_t k = lo; k < lo + n; k++)
                W_s[s] += o->weight ? (dt == FUSEDCE_F64 ? ((double *)c.weight.p)[k] : ((float *)c.weight.p)[k]) : 1.0;
            if (n == 0) {
                for (int64_t r = 0; r < rows; r++) lse_s[s * rows + r] = -INFINITY, part[s * rows + r] = 0.0;
                continue;
            }
            in_buf x = in_new((size_t)(rows * n) * es, 0);
            for (int64_t r = 0; r < rows; r++)
                memcpy((char *)x.p + (size_t)(r * n) * es, (char *)c.logits.p + (size_t)(r * K + lo) * es, (size_t)n * es);
            in_seal(&x);
            out_buf l = out_new((size_t)rows * 8, 0), p = out_new((size_t)rows * 8, 0), g = out_new((size_t)(rows * n) * es, 0);
            fusedce_ce_args a = ce_args(&c);
            a.logits = x.p, a.classes = n, a.class_offset = lo, a.total_classes = K;
            a.loss = p.p, a.lse_out = l.p;
            ce_call(&c, &a, "shard partials");
            memcpy(lse_s + s * rows, l.p, (size_t)rows * 8), memcpy(part + s * rows, p.p, (size_t)rows * 8);
            a = ce_args(&c);
            a.logits = x.p, a.classes = n, a.class_offset = lo, a.total_classes = K;
            a.lse_in = whole.lse.p, a.grad = g.p;
            ce_call(&c, &a, "shard gradient");
            for (int64_t r = 0; r < rows; r++)
                memcpy((char *)grad.p + (size_t)(r * K + lo) * es, (char *)g.p + (size_t)(r * n) * es, (size_t)n * es);
            out_free(&l, "shard lse_out"), out_free(&p, "shard loss"), out_free(&g, "shard grad");
            in_free(&x, "shard logits");
        }
        double *lse = xmalloc(sizeof(double) * (size_t)rows), *loss = xmalloc(sizeof(double) * (size_t)rows);
        const double e = o->smoothing;
        for (int64_t r = 0; r < rows; r++) {
            double m = -INFINITY, sum = 0.0;
            for (int s = 0; s < 3; s++) m = lse_s[s * rows + r] > m ? lse_s[s * rows + r] : m;
            for (int s = 0; s < 3; s++) sum += isfinite(m) ? exp(lse_s[s * rows + r] - m) : 0.0;
            lse[r] = isfinite(m) ? m + log(sum) : m;
            const int64_t t = o->i64 ? ((int64_t *)c.target.p)[r] : ((int32_t *)c.target.p)[r];
            loss[r] = 0.0;
            if (t == o->ignore_index) continue;
            const double w_t = o->weight ? (dt == FUSEDCE_F64 ? ((double *)c.weight.p)[t] : ((float *)c.weight.p)[t]) : 1.0;
            for (int s = 0; s < 3; s++) {
                loss[r] += part[s * rows + r];
                if (e > 0 && W_s[s] != 0) loss[r] += e / (double)K * W_s[s] * (lse[r] - lse_s[s * rows + r]);
                if (t >= cut[s] && t < cut[s + 1]) loss[r] += (1 - e) * w_t * (lse[r] - lse_s[s * rows + r]);
            }
            loss[r] += o->z_loss * w_t * lse[r] * lse[r];
        }
        compare("merged lse", -1, lse, whole.lse.p, rows, tol_compute(dt));
        compare("merged loss", -1, loss, whole.loss.p, rows, 4 * tol_compute(dt));
        compare("shard gradients", dt, grad.p, whole.grad_backward.p, rows * K, tol_stored(dt));
        free(lse), free(loss), free(lse_s), free(part);
        out_free(&grad, "shard gradients");
        ce_results_free(&whole);
    }
    ce_case_free(&c);
}

/* Shard-mode arguments the driver refuses (nothing written), and targets it takes. */
static void shard_errors(void)
{
    strcpy(where, "shard errors");
    float x[2 * 3], g[2 * 3];
    double loss[2], lse[2] = {1.0, 1.0};
    int64_t t[2] = {0, 9}; /* 9: in another shard of a 10-class row */
    for (int i = 0; i < 6; i++) x[i] = (float)i / 5.0f;
    fusedce_ce_args a, base;
    memset(&base, 0, sizeof base);
    base.rows = 2, base.classes = 3, base.logits = x, base.target = t, base.target_is_i64 = 1;
    base.ignore_index = -100, base.grad_scale_all = 1.0, base.class_offset = 2, base.total_classes = 10;
    a = base, a.grad = g, a.lse_in = NULL, a.lse_out = lse;
    check(fusedce_ce_f32(&a) == FUSEDCE_EINVAL, "shard errors: a gradient without lse_in accepted");
    a = base, a.grad = g, a.lse_in = lse, a.loss = loss;
    check(fusedce_ce_f32(&a) == FUSEDCE_EINVAL, "shard errors: a gradient with a loss accepted");
    a = base, a.class_offset = 8, a.loss = loss;
    check(fusedce_ce_f32(&a) == FUSEDCE_EINVAL, "shard errors: a shard past the row's end accepted");
    a = base, a.class_offset = -1, a.loss = loss;
    check(fusedce_ce_f32(&a) == FUSEDCE_EINVAL, "shard errors: class_offset -1 accepted");
    a = base, a.total_classes = -3, a.loss = loss;
    check(fusedce_ce_f32(&a) == FUSEDCE_EINVAL, "shard errors: total_classes -3 accepted");
    a = base, a.target = NULL, a.target_probs = x, a.loss = loss;
    check(fusedce_ce_f32(&a) == FUSEDCE_EINVAL, "shard errors: probability targets accepted");
    t[1] = 10;
    int64_t bad = -1;
    a = base, a.loss = loss, a.bad_row = &bad;
    check(fusedce_ce_f32(&a) == FUSEDCE_ETARGET && bad == 1, "shard errors: target = total_classes accepted");
    t[1] = 9;
    a = base, a.loss = loss, a.lse_out = lse;
    check(fusedce_ce_f32(&a) == FUSEDCE_OK && loss[1] == 0.0, "shard errors: a target in another shard: loss %g", loss[1]);
}

/* ---- binary cross-entropy --------------------------------------------------------------- */

typedef struct {
    const char *name;
    int weight, pos_weight; /* 0 none, 1 per class, 2 per element */
    int per_element_scale;
} bce_opts;

static const bce_opts BCE_OPTS[] = {
    {"plain", 0, 0, 0}, {"class weight", 1, 0, 0}, {"element weight, pos_weight", 2, 1, 0},
    {"pos_weight, element scale", 0, 1, 1}, {"all", 1, 1, 1}, {"element pos_weight", 1, 2, 0},
};
#define N_BCE_OPTS ((int)(sizeof(BCE_OPTS) / sizeof(BCE_OPTS[0])))

static int (*const bce_entry[4])(const fusedce_bce_args *) = {fusedce_bce_f32, fusedce_bce_f64, fusedce_bce_f16,
                                                              fusedce_bce_bf16};

static void bce_one(int dt, int64_t rows, int64_t K, int opt)
{
    const bce_opts *o = &BCE_OPTS[opt];
    const size_t es = elem_size(dt), cs = compute_size(dt), n = (size_t)(rows * K);
    rng_seed(10 + (uint64_t)dt, (uint64_t)K, (uint64_t)(rows * 100 + opt));
    in_buf x = in_new(n * es, K % 2 ? es : 0), t = in_new(n * es, 0);
    in_buf w = in_new(o->weight == 2 ? n * cs : o->weight ? (size_t)K * cs : 0, 0);
    in_buf pw = in_new(o->pos_weight == 2 ? n * cs : o->pos_weight ? (size_t)K * cs : 0, 0), go = in_new(o->per_element_scale ? n * cs : 0, 0);
    fill_values(dt, x.p, (int64_t)n);
    fill_probabilities(dt, t.p, (int64_t)n);
    fill_compute(dt, w.p, (int64_t)(w.bytes / cs), 0.0, 2.0);
    fill_compute(dt, pw.p, (int64_t)(pw.bytes / cs), 0.5, 3.0);
    fill_compute(dt, go.p, (int64_t)(go.bytes / cs), -1.0, 1.0);
    in_seal(&x), in_seal(&t), in_seal(&w), in_seal(&pw), in_seal(&go);

    out_buf loss[FUSEDCE_ISA_COUNT], grad[FUSEDCE_ISA_COUNT];
    double sum[FUSEDCE_ISA_COUNT];
    for (int i = 0; i < n_isas; i++) {
        snprintf(where, sizeof where, "bce %s %s rows=%lld K=%lld [%s]", fusedce_isa_name(isas[i]), dtype_name[dt],
                 (long long)rows, (long long)K, o->name);
        use_isa(isas[i]);
        loss[i] = out_new(n * es, 0), grad[i] = out_new(n * es, es);
        fusedce_bce_args a;
        memset(&a, 0, sizeof a);
        a.rows = rows, a.classes = K, a.logits = x.p, a.target = t.p;
        a.weight = o->weight ? w.p : NULL, a.weight_per_class = o->weight == 1;
        a.pos_weight = o->pos_weight ? pw.p : NULL, a.pos_weight_per_element = o->pos_weight == 2;
        a.grad_scale = o->per_element_scale ? go.p : NULL, a.grad_scale_all = 0.75;
        const fusedce_bce_args base = a;
        a.loss = loss[i].p, a.grad = grad[i].p, a.loss_sum = &sum[i];
        check(bce_entry[dt](&a) == FUSEDCE_OK, "%s: call failed", where);

        double sum_only = NAN; /* the sum alone: the same chunks, the same total */
        a = base, a.loss_sum = &sum_only;
        check(bce_entry[dt](&a) == FUSEDCE_OK, "%s: sum-only call failed", where);
        check(memcmp(&sum_only, &sum[i], sizeof sum_only) == 0, "%s: loss_sum alone %.17g != %.17g", where, sum_only,
              sum[i]);

        out_buf inplace = out_new(n * es, 0); /* the gradient over a copy of the logits */
        memcpy(inplace.p, x.p, n * es);
        a = base, a.logits = inplace.p, a.grad = inplace.p;
        check(bce_entry[dt](&a) == FUSEDCE_OK, "%s: in-place call failed", where);
        compare_exact("in-place gradient", inplace.p, grad[i].p, n * es);
        out_free(&inplace, "in-place gradient");
        if (i > 0) {
            compare("element loss", dt, loss[i].p, loss[0].p, (int64_t)n, tol_stored(dt));
            compare("gradient", dt, grad[i].p, grad[0].p, (int64_t)n, tol_stored(dt));
            compare("loss_sum", -1, &sum[i], &sum[0], 1, tol_compute(dt));
        }
    }
    for (int i = 0; i < n_isas; i++) out_free(&loss[i], "loss"), out_free(&grad[i], "grad");
    in_free(&x, "logits"), in_free(&t, "target"), in_free(&w, "weight"), in_free(&pw, "pos_weight");
    in_free(&go, "grad_scale");
}

/* ---- softmax family --------------------------------------------------------------------- */

static void softmax_one(int dt, int64_t rows, int64_t K)
{
    static const char *const mode_name[3] = {"logsumexp", "softmax", "log_softmax"};
    const size_t es = elem_size(dt), n = (size_t)(rows * K);
    rng_seed(20 + (uint64_t)dt, (uint64_t)K, (uint64_t)rows);
    in_buf x = in_new(n * es, K % 2 ? es : 0);
    fill_values(dt, x.p, (int64_t)n);
    if (rows > 0 && K > 2) set_minus_inf(dt, x.p, K / 2); /* probability 0 in row 0 */
    in_seal(&x);
    for (int mode = FUSEDCE_LOGSUMEXP; mode <= FUSEDCE_LOG_SOFTMAX; mode++) {
        out_buf out[FUSEDCE_ISA_COUNT], lse[FUSEDCE_ISA_COUNT];
        for (int i = 0; i < n_isas; i++) {
            snprintf(where, sizeof where, "%s %s %s rows=%lld K=%lld", mode_name[mode], fusedce_isa_name(isas[i]),
                     dtype_name[dt], (long long)rows, (long long)K);
            use_isa(isas[i]);
            out[i] = out_new(mode == FUSEDCE_LOGSUMEXP ? 0 : n * es, 0), lse[i] = out_new((size_t)rows * 8, 0);
            check(fusedce_softmax(dt, mode, rows, K, x.p, mode == FUSEDCE_LOGSUMEXP ? NULL : out[i].p, lse[i].p) ==
                      FUSEDCE_OK, "%s: call failed", where);
            if (mode != FUSEDCE_LOGSUMEXP) {
                out_buf no_lse = out_new(n * es, 0), inplace = out_new(n * es, 0);
                check(fusedce_softmax(dt, mode, rows, K, x.p, no_lse.p, NULL) == FUSEDCE_OK, "%s: lse_out NULL failed",
                      where);
                compare_exact("without lse_out", no_lse.p, out[i].p, n * es);
                memcpy(inplace.p, x.p, n * es);
                check(fusedce_softmax(dt, mode, rows, K, inplace.p, inplace.p, NULL) == FUSEDCE_OK,
                      "%s: in place failed", where);
                compare_exact("in place", inplace.p, out[i].p, n * es);
                out_free(&no_lse, "out (no lse)"), out_free(&inplace, "out (in place)");
            }
            if (i > 0) {
                compare("lse", -1, lse[i].p, lse[0].p, rows, tol_compute(dt));
                if (mode != FUSEDCE_LOGSUMEXP) compare("out", dt, out[i].p, out[0].p, (int64_t)n, tol_stored(dt));
            }
        }
        for (int i = 0; i < n_isas; i++) out_free(&out[i], "out"), out_free(&lse[i], "lse_out");
    }
    in_free(&x, "x");
}

/* ---- vector exp ------------------------------------------------------------------------- */

static void vexp_one(int64_t n)
{
    rng_seed(30, (uint64_t)n, 0);
    in_buf x32 = in_new((size_t)n * 4, n % 2 ? 4 : 0), x64 = in_new((size_t)n * 8, 0);
    for (int64_t i = 0; i < n; i++) {
        ((float *)x32.p)[i] = (float)rng_uniform(-87, 88);
        ((double *)x64.p)[i] = rng_uniform(-700, 700);
    }
    in_seal(&x32), in_seal(&x64);
    out_buf y32[FUSEDCE_ISA_COUNT], y64[FUSEDCE_ISA_COUNT];
    for (int i = 0; i < n_isas; i++) {
        snprintf(where, sizeof where, "vexp %s n=%lld", fusedce_isa_name(isas[i]), (long long)n);
        y32[i] = out_new((size_t)n * 4, 4), y64[i] = out_new((size_t)n * 8, 0);
        check(fusedce_vexp_f32(isas[i], n, x32.p, y32[i].p) == FUSEDCE_OK, "%s: f32 failed", where);
        check(fusedce_vexp_f64(isas[i], n, x64.p, y64[i].p) == FUSEDCE_OK, "%s: f64 failed", where);
        if (i > 0) {
            for (int64_t j = 0; j < n; j++) { /* relative, value by value: exp spans 2^-125..2^127 */
                const double g = ((float *)y32[i].p)[j], w = ((float *)y32[0].p)[j];
                const double g64 = ((double *)y64[i].p)[j], w64 = ((double *)y64[0].p)[j];
                if (!check(fabs(g - w) <= 1e-5 * w + 1e-37 && fabs(g64 - w64) <= 1e-12 * w64 + 1e-300,
                           "%s: exp(%.9g) = %.9g, portable %.9g; exp(%.17g) = %.17g, portable %.17g", where,
                           ((float *)x32.p)[j], g, w, ((double *)x64.p)[j], g64, w64))
                    break;
            }
        }
    }
    for (int i = 0; i < n_isas; i++) out_free(&y32[i], "y (f32)"), out_free(&y64[i], "y (f64)");
    in_free(&x32, "x (f32)"), in_free(&x64, "x (f64)");
}

/* ---- error paths ------------------------------------------------------------------------ */

/* The error paths return their code and write nothing: outputs keep their fill. */
enum { ER = 6, EK = 5 };
static float err_x[ER * EK], err_x_before[ER * EK], err_grad[ER * EK];
static double err_loss[ER], err_lse[ER];
static int64_t err_target[ER] = {0, 1, 2, 4, 3, 0};
static unsigned char err_fill[ER * EK * 4];

static void err_reset(fusedce_ce_args *a)
{
    memset(a, 0, sizeof *a);
    a->rows = ER, a->classes = EK, a->logits = err_x, a->target = err_target, a->target_is_i64 = 1;
    a->ignore_index = -100, a->grad_scale_all = 1.0;
    a->loss = err_loss, a->lse_out = err_lse, a->grad = err_grad;
    memset(err_loss, 0x5A, sizeof err_loss), memset(err_lse, 0x5A, sizeof err_lse);
    memset(err_grad, 0x5A, sizeof err_grad);
}

static int err_nothing_written(void)
{
    return !memcmp(err_loss, err_fill, sizeof err_loss) && !memcmp(err_lse, err_fill, sizeof err_lse) &&
           !memcmp(err_grad, err_fill, sizeof err_grad) && !memcmp(err_x, err_x_before, sizeof err_x);
}

static void err_expect(const fusedce_ce_args *a, int rc, const char *what)
{
    const int got = fusedce_ce_f32(a);
    check(got == rc, "errors: %s returned %d, expected %d", what, got, rc);
    check(err_nothing_written(), "errors: %s wrote something", what);
}

static void errors(void)
{
    strcpy(where, "errors");
    for (int i = 0; i < ER * EK; i++) err_x[i] = (float)i / 7.0f;
    memcpy(err_x_before, err_x, sizeof err_x);
    memset(err_fill, 0x5A, sizeof err_fill);
    fusedce_ce_args a;

    check(fusedce_ce_f32(NULL) == FUSEDCE_EINVAL, "errors: NULL args accepted");
    err_reset(&a), a.rows = -1, err_expect(&a, FUSEDCE_EINVAL, "rows = -1");
    err_reset(&a), a.classes = 0, err_expect(&a, FUSEDCE_EINVAL, "classes = 0");
    err_reset(&a), a.logits = NULL, err_expect(&a, FUSEDCE_EINVAL, "NULL logits");
    err_reset(&a), a.target = NULL, err_expect(&a, FUSEDCE_EINVAL, "no target");
    err_reset(&a), a.lse_in = err_lse, err_expect(&a, FUSEDCE_EINVAL, "lse_in and lse_out");
    err_reset(&a), a.label_smoothing = 1.5, err_expect(&a, FUSEDCE_EINVAL, "label_smoothing 1.5");
    err_reset(&a), a.label_smoothing = NAN, err_expect(&a, FUSEDCE_EINVAL, "label_smoothing NaN");
    err_reset(&a), a.z_loss = -1.0, err_expect(&a, FUSEDCE_EINVAL, "z_loss -1");
    err_reset(&a), a.z_loss = INFINITY, err_expect(&a, FUSEDCE_EINVAL, "z_loss inf");
    err_reset(&a), a.softcap = -1.0, err_expect(&a, FUSEDCE_EINVAL, "softcap -1");
    err_reset(&a), a.softcap = NAN, err_expect(&a, FUSEDCE_EINVAL, "softcap NaN");
    err_reset(&a), a.softcap = INFINITY, err_expect(&a, FUSEDCE_EINVAL, "softcap inf");

    /* a target out of range in row 4: nothing written, not even the rows before it */
    int64_t bad_row = -1;
    err_target[4] = EK;
    err_reset(&a), a.bad_row = &bad_row, err_expect(&a, FUSEDCE_ETARGET, "target = K");
    check(bad_row == 4, "errors: bad_row = %lld, expected 4", (long long)bad_row);
    err_target[4] = -1;
    err_reset(&a), a.grad = err_x, err_expect(&a, FUSEDCE_ETARGET, "target = -1, in place");
    int32_t t32[ER] = {0, 1, 2, 3, 4, 5};
    err_reset(&a), a.target = t32, a.target_is_i64 = 0, a.bad_row = &bad_row;
    err_expect(&a, FUSEDCE_ETARGET, "int32 target = K");
    check(bad_row == 5, "errors: bad_row = %lld, expected 5", (long long)bad_row);
    err_target[4] = -7;
    err_reset(&a), a.ignore_index = -7;
    check(fusedce_ce_f32(&a) == FUSEDCE_OK && err_loss[4] == 0.0, "errors: a target equal to ignore_index rejected");
    err_target[4] = 3;

    /* no rows: nothing read, nothing written */
    err_reset(&a), a.rows = 0, a.logits = NULL, a.target = NULL;
    check(fusedce_ce_f32(&a) == FUSEDCE_OK && err_nothing_written(), "errors: rows = 0 is not a no-op");

    fusedce_bce_args b;
    memset(&b, 0, sizeof b);
    check(fusedce_bce_f32(NULL) == FUSEDCE_EINVAL, "errors: bce NULL args accepted");
    b.rows = 2, b.classes = 0;
    check(fusedce_bce_f32(&b) == FUSEDCE_EINVAL, "errors: bce classes = 0 accepted");
    b.classes = 3;
    check(fusedce_bce_f32(&b) == FUSEDCE_EINVAL, "errors: bce NULL logits accepted");
    double sum = 1.0;
    b.rows = 0, b.loss_sum = &sum;
    check(fusedce_bce_f32(&b) == FUSEDCE_OK && sum == 0.0, "errors: bce rows = 0 gave sum %g", sum);

    err_reset(&a);
    check(fusedce_softmax(7, FUSEDCE_SOFTMAX, ER, EK, err_x, err_grad, NULL) == FUSEDCE_EINVAL, "errors: softmax dtype 7");
    check(fusedce_softmax(FUSEDCE_F32, 3, ER, EK, err_x, err_grad, NULL) == FUSEDCE_EINVAL, "errors: softmax mode 3");
    check(fusedce_softmax(FUSEDCE_F32, FUSEDCE_SOFTMAX, -1, EK, err_x, err_grad, NULL) == FUSEDCE_EINVAL,
          "errors: softmax rows -1");
    check(fusedce_softmax(FUSEDCE_F32, FUSEDCE_SOFTMAX, ER, 0, err_x, err_grad, NULL) == FUSEDCE_EINVAL,
          "errors: softmax K = 0");
    check(fusedce_softmax(FUSEDCE_F32, FUSEDCE_SOFTMAX, ER, EK, err_x, NULL, NULL) == FUSEDCE_EINVAL,
          "errors: softmax NULL out");
    check(fusedce_softmax(FUSEDCE_F32, FUSEDCE_LOGSUMEXP, 0, EK, NULL, NULL, NULL) == FUSEDCE_OK,
          "errors: softmax rows = 0");
    check(err_nothing_written(), "errors: a failed softmax wrote");

    for (int isa = -1; isa <= FUSEDCE_ISA_COUNT; isa++) {
        if (fusedce_isa_available(isa)) {
            check(isa >= 0 && isa < FUSEDCE_ISA_COUNT && fusedce_isa_compiled(isa), "errors: isa_available(%d)", isa);
            continue;
        }
        const int before = fusedce_active_isa();
        check(fusedce_set_isa(isa) == FUSEDCE_EISA && fusedce_active_isa() == before,
              "errors: set_isa(%d) accepted an unavailable ISA", isa);
        check(fusedce_vexp_f32(isa, 1, err_x, err_grad) == FUSEDCE_EISA, "errors: vexp on unavailable ISA %d", isa);
    }
    check(fusedce_vexp_f32(FUSEDCE_ISA_PORTABLE, -1, err_x, err_grad) == FUSEDCE_EISA, "errors: vexp n = -1");
    check(strcmp(fusedce_isa_name(-1), "unknown") == 0 && strcmp(fusedce_isa_name(FUSEDCE_ISA_COUNT), "unknown") == 0,
          "errors: isa_name out of range");
    check(err_nothing_written(), "errors: something was written");
}

/* ---- threads ---------------------------------------------------------------------------- */

/* A row long enough to be split over threads, against the same row on one thread: the same
 * bits (docs/guarantees.md: results do not depend on the thread count). */
static void threads_one(int dt, int64_t rows, int64_t K, int opt)
{
    ce_case c;
    rng_seed(40 + (uint64_t)dt, (uint64_t)K, (uint64_t)opt);
    ce_case_new(&c, dt, rows, K, &CE_OPTS[opt]);
    const int before = fusedce_get_num_threads();
    for (int i = 0; i < n_isas; i++) {
        snprintf(where, sizeof where, "threads %s %s rows=%lld K=%lld [%s]", fusedce_isa_name(isas[i]), dtype_name[dt],
                 (long long)rows, (long long)K, CE_OPTS[opt].name);
        use_isa(isas[i]);
        ce_results one, all;
        fusedce_set_num_threads(1);
        ce_run(&c, &one);
        fusedce_set_num_threads(0);
        ce_run(&c, &all);
        ce_compare(&c, &all, &one);
        const size_t grad_bytes = (size_t)(rows * K) * elem_size(dt);
        check(memcmp(all.loss.p, one.loss.p, (size_t)rows * 8) == 0 && memcmp(all.lse.p, one.lse.p, (size_t)rows * 8) == 0 &&
                  memcmp(all.grad.p, one.grad.p, grad_bytes) == 0 &&
                  memcmp(all.loss_only.p, one.loss_only.p, (size_t)rows * 8) == 0 &&
                  memcmp(all.grad_backward.p, one.grad_backward.p, grad_bytes) == 0,
              "%s: not the same bits on one thread and on all", where);
        ce_results_free(&one), ce_results_free(&all);
    }
    fusedce_set_num_threads(before);
    ce_case_free(&c);
}

/* ---- the memory roofline ---------------------------------------------------------------- */

/* fusedce_roofline reads and copies exactly [src, src + bytes) at any alignment, on one thread
 * or split over several (even tiny ranges); it only times. */
static void roofline_one(int64_t bytes, size_t src_offset, size_t dst_offset, int threads)
{
    snprintf(where, sizeof where, "roofline bytes=%lld offsets %zu/%zu threads=%d", (long long)bytes, src_offset,
             dst_offset, threads);
    const int before = fusedce_get_num_threads();
    fusedce_set_num_threads(threads);
    in_buf src = in_new((size_t)bytes, src_offset);
    for (int64_t i = 0; i < bytes; i++) ((unsigned char *)src.p)[i] = (unsigned char)rng_next();
    in_seal(&src);
    out_buf dst = out_new((size_t)bytes, dst_offset);
    double read_s = -1, copy_s = -1;
    const int64_t elements = threads == 1 ? 1 : (int64_t)1 << 20; /* as many threads as set */
    check(fusedce_roofline(FUSEDCE_ROOFLINE_READ, src.p, NULL, bytes, elements, &read_s) == FUSEDCE_OK && read_s >= 0,
          "%s: read failed", where);
    check(fusedce_roofline(FUSEDCE_ROOFLINE_COPY, src.p, dst.p, bytes, elements, &copy_s) == FUSEDCE_OK && copy_s >= 0,
          "%s: copy failed", where);
    check(memcmp(dst.p, src.p, (size_t)bytes) == 0, "%s: the copy differs", where);
    out_free(&dst, "copy"), in_free(&src, "src");
    fusedce_set_num_threads(before);
}

static void roofline_errors(void)
{
    snprintf(where, sizeof where, "roofline errors");
    char buf[64] = {0};
    double s = 0;
    check(fusedce_roofline(2, buf, buf, 64, 16, &s) == FUSEDCE_EINVAL, "%s: pattern 2", where);
    check(fusedce_roofline(FUSEDCE_ROOFLINE_READ, buf, NULL, 64, 16, NULL) == FUSEDCE_EINVAL, "%s: no seconds", where);
    check(fusedce_roofline(FUSEDCE_ROOFLINE_READ, buf, NULL, -1, 16, &s) == FUSEDCE_EINVAL, "%s: bytes -1", where);
    check(fusedce_roofline(FUSEDCE_ROOFLINE_COPY, buf, NULL, 64, 16, &s) == FUSEDCE_EINVAL, "%s: copy to NULL", where);
    check(fusedce_roofline(FUSEDCE_ROOFLINE_READ, NULL, NULL, 64, 16, &s) == FUSEDCE_EINVAL, "%s: NULL src", where);
    check(fusedce_roofline(FUSEDCE_ROOFLINE_COPY, NULL, NULL, 0, 0, &s) == FUSEDCE_OK, "%s: nothing to copy", where);
}

/* ---- main ------------------------------------------------------------------------------- */

int main(int argc, char **argv)
{
    const char *env = getenv("FUSEDCE_TEST_SMALL");
    const int small = (argc > 1 && strcmp(argv[1], "--small") == 0) || (env && *env && strcmp(env, "0") != 0);
    for (int isa = 0; isa < FUSEDCE_ISA_COUNT; isa++)
        if (fusedce_isa_available(isa)) isas[n_isas++] = isa;
    printf("test_api: ISAs");
    for (int i = 0; i < n_isas; i++) printf(" %s", fusedce_isa_name(isas[i]));
    printf(" (detected %s), %d threads%s\n", fusedce_isa_name(fusedce_detected_isa()), fusedce_get_num_threads(),
           small ? ", small" : "");
    const int initial_isa = fusedce_active_isa();

    errors();
    shard_errors();

    /* classes: every tail length 1..64, then widths around powers of two and a split row */
    static const int64_t large_k[] = {100, 127, 128, 129, 255, 257, 1000, 4113, 65541};
    static const int64_t small_large_k[] = {127, 1000};
    const int64_t *big = small ? small_large_k : large_k;
    const int n_big = small ? 2 : (int)(sizeof large_k / sizeof large_k[0]);
    const int k_step = small ? 3 : 1;
    for (int dt = 0; dt < 4; dt++) {
        for (int pass = 0; pass < 2; pass++) {
            const int n_k = pass == 0 ? 64 : n_big;
            for (int j = 0; j < n_k; j += pass == 0 ? k_step : 1) {
                const int64_t K = pass == 0 ? j + 1 : big[j];
                const int64_t rows = K > 4096 ? 1 + K % 2 : 1 + K % 5; /* 1..5 rows; 0 below */
                if (small) {
                    for (size_t o = 0; o < sizeof SMALL_CE_OPTS / sizeof SMALL_CE_OPTS[0]; o++)
                        ce_one(dt, rows, K, SMALL_CE_OPTS[o]);
                } else {
                    for (int o = 0; o < N_CE_OPTS; o++) ce_one(dt, rows, K, o);
                }
                for (int o = 0; o < N_BCE_OPTS; o += small ? 2 : 1) bce_one(dt, rows, K, o);
                softmax_one(dt, rows, K);
            }
        }
        ce_one(dt, 0, 7, 10), bce_one(dt, 0, 7, 4), softmax_one(dt, 0, 7); /* no rows */
        if (!small) threads_one(dt, 1, 3 * 65536 + 5, 10), threads_one(dt, 3, 40000, 12);
        /* shards: every tail of a small shard, options with class targets, one row split over threads */
        for (int64_t K = 1; K <= (small ? 9 : 40); K += small ? 4 : 1) shard_one(dt, 5, K, (int)(K % 2 ? 10 : 4));
        for (int o = 0; o <= 10; o += small ? 5 : 1) shard_one(dt, 4, 1000, o);
        shard_one(dt, 1, small ? 30000 : 3 * 65536 + 5, 10);
    }
    static const int64_t vexp_n[] = {0, 1, 2, 3, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 1000, 4097};
    for (size_t i = 0; i < sizeof vexp_n / sizeof vexp_n[0]; i++) vexp_one(vexp_n[i]);
    roofline_errors();
    static const int64_t roof_bytes[] = {0, 1, 63, 64, 65, 1000, 4 * 4097 + 3, (1 << 18) + 5};
    for (size_t i = 0; i < sizeof roof_bytes / sizeof roof_bytes[0]; i++)
        for (int threads = 1; threads <= 2; threads++)
            roofline_one(roof_bytes[i], i % 4, (i * 3) % 64, threads);

    use_isa(initial_isa);
    printf("%ld passed, %ld failed\n", n_passed, n_failed);
    return n_failed ? 1 : 0;
}
