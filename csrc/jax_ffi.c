/* XLA FFI handlers: fusedce's C kernels as XLA custom calls, for fusedce.jax.
 *
 * XLA calls a handler with a call frame holding the operand and result buffers (XLA owns
 * them: the kernels read the logits where XLA keeps them and write the results in place, no
 * copy) and the static attributes. The handlers run on the XLA:CPU thread that reaches the
 * custom call; the kernels' own OpenMP team does the work.
 *
 * Why the XLA declarations are written here rather than included from jaxlib: pip builds the
 * wheel in an isolated environment that has no jaxlib, and jaxlib (a large, platform-limited
 * wheel) is no fit as a build requirement of a library that does not need JAX. The XLA FFI C
 * API is a stable, versioned binary interface (XLA's c_api.h: every struct carries its size,
 * fields are only ever appended within a major version, and a handler states the API version
 * it was written against through the metadata extension, which XLA checks when the handler is
 * registered and refuses with an error naming both versions when it cannot serve it). So the
 * few structs these handlers touch are declared below from that documented layout, and the
 * handlers declare version 0.1 (the oldest that jaxlib 0.10 accepts; everything used here is
 * in it). At run time each call also checks the sizes XLA reports for the call frame and the
 * API table before reading past what 0.1 guarantees.
 *
 * Errors (a target out of range, a non-finite weight) are returned as XLA FFI errors with the
 * NumPy API's messages; JAX raises them when the result is computed. */
#define _DEFAULT_SOURCE /* madvise's MADV_HUGEPAGE under a strict -std=c11 too */
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fusedce.h"
#include "fusedce_xla.h"

#if defined(__linux__)
#include <sys/mman.h>
#endif

/* ------------------------------------------------------------------ the XLA FFI C ABI subset */

#define XFFI_MAJOR 0
#define XFFI_MINOR 1

enum { XFFI_EXT_METADATA = 1 };
enum { XFFI_STAGE_EXECUTE = 3 };
enum { XFFI_INVALID_ARGUMENT = 3, XFFI_INTERNAL = 13, XFFI_UNIMPLEMENTED = 12 };
enum { XFFI_ATTR_SCALAR = 3, XFFI_ATTR_STRING = 4 };
enum { XFFI_ARG_BUFFER = 1 };
/* element types (XLA's PrimitiveType numbers) */
enum { XFFI_S32 = 4, XFFI_S64 = 5, XFFI_F16 = 10, XFFI_F32 = 11, XFFI_F64 = 12, XFFI_BF16 = 16 };

typedef struct xffi_ext {
    size_t struct_size;
    int type;
    struct xffi_ext *next;
} xffi_ext;

typedef struct {
    size_t struct_size;
    xffi_ext *ext;
    int major, minor;
} xffi_version;

typedef struct {
    size_t struct_size;
    xffi_ext *ext;
    const char *message;
    int code;
} xffi_error_args;

/* The API table: its head, up to the one function these handlers call. */
typedef struct {
    size_t struct_size;
    xffi_ext *ext;
    xffi_version version;
    const void *internal;
    void *(*error_create)(xffi_error_args *args);
} xffi_api;

typedef struct {
    size_t struct_size;
    xffi_ext *ext;
    int dtype;
    void *data;
    int64_t rank;
    int64_t *dims;
} xffi_buffer;

/* Operands and results share one layout: a count, a type per entry, a pointer per entry. */
typedef struct {
    size_t struct_size;
    xffi_ext *ext;
    int64_t size;
    int *types;
    void **items;
} xffi_list;

typedef struct {
    const char *ptr;
    size_t len;
} xffi_bytes;

typedef struct {
    int dtype;
    void *value;
} xffi_scalar;

typedef struct {
    size_t struct_size;
    xffi_ext *ext;
    int64_t size;
    int *types;
    xffi_bytes **names;
    void **values;
} xffi_attrs;

typedef struct {
    size_t struct_size;
    xffi_ext *ext;
    const xffi_api *api;
    void *ctx;
    int stage;
    xffi_list args;
    xffi_list rets;
    xffi_attrs attrs;
} xffi_frame;

typedef struct {
    size_t struct_size;
    xffi_version version;
    uint32_t traits;
} xffi_metadata;

typedef struct {
    xffi_ext base;
    xffi_metadata *metadata;
} xffi_metadata_ext;

#define END_OF(type, field) (offsetof(type, field) + sizeof(((type *)0)->field))

int fusedce_xla_api_version(void) { return XFFI_MAJOR * 1000 + XFFI_MINOR; }

/* ------------------------------------------------------------------ frame access */

typedef struct {
    xffi_frame *f;
    char msg[512];
} call;

static void *fail(call *c, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->msg, sizeof c->msg, fmt, ap);
    va_end(ap);
    xffi_error_args e = {END_OF(xffi_error_args, code), NULL, c->msg, code};
    return c->f->api->error_create(&e);
}

/* The first step of every handler. Returns 1 when the handler should go on to compute; 0 when
 * the call was XLA's metadata query (answered here) or not the execute stage. */
static int begin(xffi_frame *f, void **error, call *c)
{
    *error = NULL;
    c->f = f;
    if (f->ext && f->ext->type == XFFI_EXT_METADATA) {
        xffi_metadata *m = ((xffi_metadata_ext *)f->ext)->metadata;
        m->version.major = XFFI_MAJOR;
        m->version.minor = XFFI_MINOR;
        m->traits = 0;
        return 0;
    }
    /* XLA refused registration if it could not serve 0.1; these guard the reads below. */
    if (f->struct_size < END_OF(xffi_frame, attrs) || !f->api || f->api->struct_size < END_OF(xffi_api, error_create) ||
        f->api->version.major != XFFI_MAJOR)
        return 0;
    if (f->stage != XFFI_STAGE_EXECUTE) return 0;
    return 1;
}

static const xffi_buffer *arg(call *c, int64_t i)
{
    if (i >= c->f->args.size || c->f->args.types[i] != XFFI_ARG_BUFFER) return NULL;
    return (const xffi_buffer *)c->f->args.items[i];
}

static const xffi_buffer *ret(call *c, int64_t i)
{
    if (i >= c->f->rets.size || c->f->rets.types[i] != XFFI_ARG_BUFFER) return NULL;
    return (const xffi_buffer *)c->f->rets.items[i];
}

static const xffi_scalar *attr(call *c, const char *name)
{
    const size_t n = strlen(name);
    for (int64_t i = 0; i < c->f->attrs.size; i++) {
        const xffi_bytes *s = c->f->attrs.names[i];
        if (c->f->attrs.types[i] == XFFI_ATTR_SCALAR && s->len == n && memcmp(s->ptr, name, n) == 0)
            return (const xffi_scalar *)c->f->attrs.values[i];
    }
    return NULL;
}

/* Integer and float attributes (JAX passes Python ints as i64, floats as f64); `ok` is
 * cleared when one is missing or of another type. */
static int64_t attr_i64(call *c, const char *name, int *ok)
{
    const xffi_scalar *s = attr(c, name);
    if (!s || s->dtype != XFFI_S64) {
        *ok = 0;
        return 0;
    }
    return *(const int64_t *)s->value;
}

static double attr_f64(call *c, const char *name, int *ok)
{
    const xffi_scalar *s = attr(c, name);
    if (!s || s->dtype != XFFI_F64) {
        *ok = 0;
        return 0.0;
    }
    return *(const double *)s->value;
}

static int64_t numel(const xffi_buffer *b)
{
    int64_t n = 1;
    for (int64_t i = 0; i < b->rank; i++) n *= b->dims[i];
    return n;
}

/* The rows of (..., K): every dimension but the last (numel / K is undefined for K = 0). */
static int64_t rows_of(const xffi_buffer *b)
{
    int64_t n = 1;
    for (int64_t i = 0; i + 1 < b->rank; i++) n *= b->dims[i];
    return n;
}

static int logits_code(int xdtype)
{
    switch (xdtype) {
    case XFFI_F32: return FUSEDCE_F32;
    case XFFI_F64: return FUSEDCE_F64;
    case XFFI_F16: return FUSEDCE_F16;
    case XFFI_BF16: return FUSEDCE_BF16;
    default: return -1;
    }
}

/* What the kernels compute in: float64 for float64 logits, float32 for the rest. */
static int compute_dtype(int xdtype) { return xdtype == XFFI_F64 ? XFFI_F64 : XFFI_F32; }

static double load(int dtype, const void *p, int64_t i)
{
    return dtype == XFFI_F64 ? ((const double *)p)[i] : (double)((const float *)p)[i];
}

static void store(int dtype, void *p, int64_t i, double v)
{
    if (dtype == XFFI_F64)
        ((double *)p)[i] = v;
    else
        ((float *)p)[i] = (float)v;
}

/* XLA:CPU hands out large result buffers as fresh, untouched memory; with 4 KiB pages the first
 * write of a logits-sized gradient costs more page faults than the kernel takes (measured here:
 * ~250 ms for 512 MB against ~60 ms for the kernel). Asking for transparent huge pages on the
 * buffer's whole 2 MiB pages before the kernel's first write makes that a few hundred faults, as
 * NumPy does for its own large arrays. A hint only: pages already touched are unaffected. */
static void advise_huge_pages(const void *data, const void *input, size_t bytes)
{
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    const uintptr_t huge = (uintptr_t)2 << 20;
    if (data == input || bytes < 2 * huge) return;
    const uintptr_t start = ((uintptr_t)data + huge - 1) & ~(huge - 1);
    const uintptr_t end = ((uintptr_t)data + bytes) & ~(huge - 1);
    if (end > start) (void)madvise((void *)start, end - start, MADV_HUGEPAGE);
#else
    (void)data, (void)input, (void)bytes;
#endif
}

/* "name[i, j]" for flat element `flat` of a buffer of the given dims. */
static void index_text(char *out, size_t size, const char *name, const int64_t *dims, int64_t rank, int64_t flat)
{
    int64_t idx[64];
    for (int64_t d = rank - 1; d >= 0; d--) {
        idx[d] = dims[d] ? flat % dims[d] : 0;
        flat = dims[d] ? flat / dims[d] : 0;
    }
    size_t used = (size_t)snprintf(out, size, "%s", name);
    for (int64_t d = 0; d < rank && used < size; d++)
        used += (size_t)snprintf(out + used, size - used, "%s%lld", d ? ", " : "[", (long long)idx[d]);
    if (rank > 0 && used < size) snprintf(out + used, size - used, "]");
}

/* The NumPy API's refusal of a NaN or infinite weight (or pos_weight), naming the element. */
static void *check_finite(call *c, const xffi_buffer *b, const char *name)
{
    if (!b) return NULL;
    const int64_t n = numel(b);
    for (int64_t i = 0; i < n; i++) {
        const double v = load(b->dtype, b->data, i);
        if (!isfinite(v)) {
            char where[256];
            index_text(where, sizeof where, name, b->dims, b->rank, i);
            return fail(c, XFFI_INVALID_ARGUMENT, "%s must be finite, got %s = %s", name, where,
                        isnan(v) ? "nan" : (v > 0 ? "inf" : "-inf"));
        }
    }
    return NULL;
}

/* Leading dimensions added by jax.vmap: the operands' ranks less the rank of the call as
 * written (attribute batch_rank, which vmap does not change). vmap_method="broadcast_all"
 * gives every operand the same leading dims, so "group" g (one vmapped instance) is a
 * contiguous run of rows in every operand. */
static int64_t groups_of(const xffi_buffer *b, int64_t vmap_rank)
{
    int64_t g = 1;
    for (int64_t i = 0; i < vmap_rank; i++) g *= b->dims[i];
    return g;
}

enum { RED_NONE = 0, RED_MEAN = 1, RED_SUM = 2 };

/* ------------------------------------------------------------------ cross-entropy
 *
 * Operands: logits (..., K); target: class indices (...) int32/int64, or probabilities of the
 * logits' shape and dtype (soft = 1); weight (K,) if has_weight; the upstream gradient if
 * grad = 1 (one per vmapped instance for 'mean'/'sum', one per row for 'none'); the saved lse
 * (...) if lse_given. weight, upstream gradient and lse are of the compute dtype.
 * Results: if fwd: the loss (one per instance for 'mean'/'sum', per row for 'none') and the
 * lse (...), compute dtype; then if grad: the gradient, the logits' shape and dtype.
 * Attributes: reduction, batch_rank, ignore_index, label_smoothing, z_loss, softcap, has_weight,
 * soft, fwd, grad, lse_given. */

typedef int (*ce_entry)(const fusedce_ce_args *);

static ce_entry ce_entry_for(int xdtype)
{
    switch (xdtype) {
    case XFFI_F32: return fusedce_ce_f32;
    case XFFI_F64: return fusedce_ce_f64;
    case XFFI_F16: return fusedce_ce_f16;
    default: return fusedce_ce_bf16;
    }
}

typedef struct {
    int64_t reduction, batch_rank, ignore_index, has_weight, soft, fwd, grad, lse_given;
    double label_smoothing, z_loss, softcap;
} ce_attrs;

static int ce_read_attrs(call *c, ce_attrs *a)
{
    int ok = 1;
    a->reduction = attr_i64(c, "reduction", &ok);
    a->batch_rank = attr_i64(c, "batch_rank", &ok);
    a->ignore_index = attr_i64(c, "ignore_index", &ok);
    a->has_weight = attr_i64(c, "has_weight", &ok);
    a->soft = attr_i64(c, "soft", &ok);
    a->fwd = attr_i64(c, "fwd", &ok);
    a->grad = attr_i64(c, "grad", &ok);
    a->lse_given = attr_i64(c, "lse_given", &ok);
    a->label_smoothing = attr_f64(c, "label_smoothing", &ok);
    a->z_loss = attr_f64(c, "z_loss", &ok);
    a->softcap = attr_f64(c, "softcap", &ok);
    return ok && a->reduction >= RED_NONE && a->reduction <= RED_SUM && (a->fwd || a->grad);
}

static int64_t ce_target_at(const xffi_buffer *t, int64_t r)
{
    return t->dtype == XFFI_S64 ? ((const int64_t *)t->data)[r] : (int64_t)((const int32_t *)t->data)[r];
}

void *fusedce_xla_ce(void *frame)
{
    call c;
    void *err;
    if (!begin((xffi_frame *)frame, &err, &c)) return err;
    ce_attrs A;
    if (!ce_read_attrs(&c, &A)) return fail(&c, XFFI_INTERNAL, "fusedce_ce: missing or malformed attributes");

    int64_t next = 0;
    const xffi_buffer *x = arg(&c, next++), *t = arg(&c, next++);
    const xffi_buffer *w = A.has_weight ? arg(&c, next++) : NULL;
    const xffi_buffer *gup = A.grad ? arg(&c, next++) : NULL;
    const xffi_buffer *lse_in = A.lse_given ? arg(&c, next++) : NULL;
    next = 0;
    const xffi_buffer *loss_out = A.fwd ? ret(&c, next++) : NULL;
    const xffi_buffer *lse_out = A.fwd ? ret(&c, next++) : NULL;
    const xffi_buffer *grad_out = A.grad ? ret(&c, next++) : NULL;

    /* Shapes and dtypes: fusedce.jax builds these calls, so a mismatch is an internal error. */
    if (!x || !t || (A.has_weight && !w) || (A.grad && !gup) || (A.lse_given && !lse_in) ||
        (A.fwd && (!loss_out || !lse_out)) || (A.grad && !grad_out) || logits_code(x->dtype) < 0 || x->rank < 1 ||
        A.batch_rank < 0 || A.batch_rank > x->rank - 1)
        return fail(&c, XFFI_INTERNAL, "fusedce_ce: unexpected operands");
    const int cd = compute_dtype(x->dtype);
    const int64_t vmap_rank = x->rank - 1 - A.batch_rank;
    const int64_t K = x->dims[x->rank - 1];
    const int64_t G = groups_of(x, vmap_rank);
    const int64_t rows = rows_of(x);
    const int64_t n = G ? rows / G : 0; /* rows per group */
    const int64_t per = A.reduction == RED_NONE ? rows : G;
    if ((A.soft ? (t->dtype != x->dtype || numel(t) != rows * K)
                         : ((t->dtype != XFFI_S32 && t->dtype != XFFI_S64) || numel(t) != rows)) ||
        (w && (w->dtype != cd || (numel(w) != K && numel(w) != G * K))) ||
        (gup && (gup->dtype != cd || numel(gup) != per)) || (lse_in && (lse_in->dtype != cd || numel(lse_in) != rows)) ||
        (loss_out && (loss_out->dtype != cd || numel(loss_out) != per)) ||
        (lse_out && (lse_out->dtype != cd || numel(lse_out) != rows)) ||
        (grad_out && (grad_out->dtype != x->dtype || numel(grad_out) != rows * K)))
        return fail(&c, XFFI_INTERNAL, "fusedce_ce: operand shapes or dtypes do not match");
    if ((err = check_finite(&c, w, "weight"))) return err;

    /* Class indices: the NumPy API's range check, and each group's 'mean' denominator (the
     * counted rows' summed target weight; probability targets divide by the rows). */
    const int64_t Gw = w ? numel(w) / K : 1;
    double *denom = (double *)calloc((size_t)(G ? G : 1), sizeof(double));
    if (!denom) return fail(&c, XFFI_INTERNAL, "fusedce_ce: out of memory");
    for (int64_t g = 0; g < G; g++) {
        if (A.soft) {
            denom[g] = (double)n;
            continue;
        }
        for (int64_t r = g * n; r < (g + 1) * n; r++) {
            const int64_t tr = ce_target_at(t, r);
            if (tr == A.ignore_index) continue;
            if (tr < 0 || tr >= K) {
                char where[256];
                index_text(where, sizeof where, "target", t->dims, t->rank, r);
                free(denom);
                return fail(&c, XFFI_INVALID_ARGUMENT,
                            "%s = %lld is out of range: class indices must be in [0, %lld) or equal ignore_index=%lld",
                            where, (long long)tr, (long long)K, (long long)A.ignore_index);
            }
            denom[g] += w ? load(cd, w->data, (Gw > 1 ? g * K : 0) + tr) : 1.0;
        }
    }

    /* Scratch in double: per-row loss and lse, per-row gradient factors, the saved lse. */
    const int direct_lse = cd == XFFI_F64;
    double *scratch = (double *)malloc(sizeof(double) * (size_t)(rows ? rows : 1) * 4);
    if (!scratch) {
        free(denom);
        return fail(&c, XFFI_INTERNAL, "fusedce_ce: out of memory");
    }
    double *loss = scratch, *lse = scratch + rows, *scale = scratch + 2 * rows, *lse64 = scratch + 3 * rows;
    if (lse_out && direct_lse) lse = (double *)lse_out->data;
    if (lse_in) {
        if (direct_lse)
            lse64 = (double *)lse_in->data;
        else
            for (int64_t r = 0; r < rows; r++) lse64[r] = load(cd, lse_in->data, r);
    }
    if (gup)
        for (int64_t r = 0; r < rows; r++) {
            const int64_t g = n ? r / n : 0;
            double s = load(cd, gup->data, A.reduction == RED_NONE ? r : g);
            if (A.reduction == RED_MEAN) s = denom[g] != 0.0 ? s / denom[g] : 0.0;
            scale[r] = s;
        }

    const ce_entry entry = ce_entry_for(x->dtype);
    const size_t xes = x->dtype == XFFI_F64 ? 8 : x->dtype == XFFI_F32 ? 4 : 2;
    if (grad_out) advise_huge_pages(grad_out->data, x->data, (size_t)(rows * K) * xes);
    const size_t tes = A.soft ? xes * (size_t)K : (t->dtype == XFFI_S64 ? 8 : 4);
    const size_t wes = cd == XFFI_F64 ? 8 : 4;
    /* One kernel call per distinct weight vector: all rows at once unless vmap gave each
     * instance its own weight. */
    const int64_t calls = Gw > 1 ? G : 1, span = rows / calls;
    int rc = FUSEDCE_OK;
    int64_t bad = -1;
    if (K == 0 && A.fwd) /* nothing to score (fusedce._checks.as_rows): loss 0, lse log 0 = -inf */
        for (int64_t r = 0; r < rows; r++) loss[r] = 0.0, lse[r] = -INFINITY;
    for (int64_t i = 0; i < calls && rc == FUSEDCE_OK && span > 0 && K > 0; i++) {
        const int64_t r0 = i * span;
        fusedce_ce_args a;
        memset(&a, 0, sizeof a);
        a.rows = span;
        a.classes = K;
        a.logits = (const char *)x->data + (size_t)r0 * (size_t)K * xes;
        if (A.soft)
            a.target_probs = (const char *)t->data + (size_t)r0 * tes;
        else {
            a.target = (const char *)t->data + (size_t)r0 * tes;
            a.target_is_i64 = t->dtype == XFFI_S64;
        }
        a.weight = w ? (const char *)w->data + (size_t)(Gw > 1 ? i : 0) * (size_t)K * wes : NULL;
        a.ignore_index = A.ignore_index;
        a.label_smoothing = A.label_smoothing;
        a.z_loss = A.z_loss;
        a.softcap = A.softcap;
        a.grad_scale = gup ? scale + r0 : NULL;
        a.lse_in = lse_in ? lse64 + r0 : NULL;
        a.loss = A.fwd ? loss + r0 : NULL;
        a.lse_out = A.fwd ? lse + r0 : NULL;
        a.grad = grad_out ? (char *)grad_out->data + (size_t)r0 * (size_t)K * xes : NULL;
        a.bad_row = &bad;
        rc = entry(&a);
    }
    if (rc == FUSEDCE_OK && A.fwd) {
        if (A.reduction == RED_NONE) {
            for (int64_t r = 0; r < rows; r++) store(cd, loss_out->data, r, loss[r]);
        } else {
            for (int64_t g = 0; g < G; g++) {
                double total = 0.0;
                for (int64_t r = g * n; r < (g + 1) * n; r++) total += loss[r];
                if (A.reduction == RED_MEAN) total = denom[g] != 0.0 ? total / denom[g] : 0.0;
                store(cd, loss_out->data, g, total);
            }
        }
        if (!direct_lse)
            for (int64_t r = 0; r < rows; r++) store(cd, lse_out->data, r, lse[r]);
    }
    free(scratch);
    free(denom);
    if (rc != FUSEDCE_OK) return fail(&c, XFFI_INTERNAL, "fusedce_ce: the C kernel failed with code %d", rc);
    return NULL;
}

/* ------------------------------------------------------------------ binary cross-entropy
 *
 * Operands: logits (...) and target of the same shape and dtype; weight if has_weight and
 * pos_weight if has_pos_weight (each one per class, the last axis, if weight_per_class /
 * pos_weight_per_class, else the logits' shape), of the compute dtype; the upstream gradient if grad = 1 (one per
 * vmapped instance for 'mean'/'sum', the logits' shape for 'none'; compute dtype).
 * Results: if fwd: the loss (one per instance, compute dtype, for 'mean'/'sum'; element losses
 * in the logits' shape and dtype for 'none'); then if grad: the gradient.
 * Attributes: reduction, batch_rank (the logits' rank as written), has_weight, weight_per_class,
 * has_pos_weight, pos_weight_per_class, fwd, grad. */

typedef int (*bce_entry)(const fusedce_bce_args *);

static bce_entry bce_entry_for(int xdtype)
{
    switch (xdtype) {
    case XFFI_F32: return fusedce_bce_f32;
    case XFFI_F64: return fusedce_bce_f64;
    case XFFI_F16: return fusedce_bce_f16;
    default: return fusedce_bce_bf16;
    }
}

void *fusedce_xla_bce(void *frame)
{
    call c;
    void *err;
    if (!begin((xffi_frame *)frame, &err, &c)) return err;
    int ok = 1;
    const int64_t reduction = attr_i64(&c, "reduction", &ok), batch_rank = attr_i64(&c, "batch_rank", &ok);
    const int64_t has_weight = attr_i64(&c, "has_weight", &ok), per_class = attr_i64(&c, "weight_per_class", &ok);
    const int64_t has_pos = attr_i64(&c, "has_pos_weight", &ok);
    const int64_t pos_per_class = attr_i64(&c, "pos_weight_per_class", &ok);
    const int64_t fwd = attr_i64(&c, "fwd", &ok), grad = attr_i64(&c, "grad", &ok);
    if (!ok || reduction < RED_NONE || reduction > RED_SUM || !(fwd || grad))
        return fail(&c, XFFI_INTERNAL, "fusedce_bce: missing or malformed attributes");

    int64_t next = 0;
    const xffi_buffer *x = arg(&c, next++), *t = arg(&c, next++);
    const xffi_buffer *w = has_weight ? arg(&c, next++) : NULL;
    const xffi_buffer *pw = has_pos ? arg(&c, next++) : NULL;
    const xffi_buffer *gup = grad ? arg(&c, next++) : NULL;
    next = 0;
    const xffi_buffer *loss_out = fwd ? ret(&c, next++) : NULL;
    const xffi_buffer *grad_out = grad ? ret(&c, next++) : NULL;
    if (!x || !t || (has_weight && !w) || (has_pos && !pw) || (grad && !gup) || (fwd && !loss_out) ||
        (grad && !grad_out) || logits_code(x->dtype) < 0 || batch_rank < 0 || batch_rank > x->rank)
        return fail(&c, XFFI_INTERNAL, "fusedce_bce: unexpected operands");
    const int cd = compute_dtype(x->dtype);
    const int64_t vmap_rank = x->rank - batch_rank;
    const int64_t C = batch_rank > 0 ? x->dims[x->rank - 1] : 1;
    const int64_t G = groups_of(x, vmap_rank);
    const int64_t total = numel(x), per_group = G ? total / G : 0;
    const int64_t per = reduction == RED_NONE ? total : G;
    if (t->dtype != x->dtype || numel(t) != total ||
        (w && (w->dtype != cd || (per_class ? (numel(w) != C && numel(w) != G * C) : numel(w) != total))) ||
        (pw && (pw->dtype != cd || (pos_per_class ? (numel(pw) != C && numel(pw) != G * C) : numel(pw) != total))) ||
        (gup && (gup->dtype != cd || numel(gup) != per)) ||
        (loss_out && (loss_out->dtype != (reduction == RED_NONE ? x->dtype : cd) || numel(loss_out) != per)) ||
        (grad_out && (grad_out->dtype != x->dtype || numel(grad_out) != total)))
        return fail(&c, XFFI_INTERNAL, "fusedce_bce: operand shapes or dtypes do not match");
    if ((err = check_finite(&c, w, "weight"))) return err;
    if ((err = check_finite(&c, pw, "pos_weight"))) return err;
    if (total == 0) {
        if (loss_out && reduction != RED_NONE)
            for (int64_t g = 0; g < G; g++) store(cd, loss_out->data, g, 0.0);
        return NULL;
    }

    const bce_entry entry = bce_entry_for(x->dtype);
    const size_t xes = x->dtype == XFFI_F64 ? 8 : x->dtype == XFFI_F32 ? 4 : 2;
    if (grad_out) advise_huge_pages(grad_out->data, x->data, (size_t)total * xes);
    if (loss_out && reduction == RED_NONE) advise_huge_pages(loss_out->data, x->data, (size_t)total * xes);
    const size_t ces = cd == XFFI_F64 ? 8 : 4;
    const int64_t wgroups = w && per_class ? numel(w) / C : 1, pgroups = pw && pos_per_class ? numel(pw) / C : 1;
    int rc = FUSEDCE_OK;
    /* One kernel call per vmapped instance: each has its own sum, scale and per-class weights. */
    for (int64_t g = 0; g < G && rc == FUSEDCE_OK; g++) {
        const size_t e0 = (size_t)(g * per_group);
        fusedce_bce_args a;
        memset(&a, 0, sizeof a);
        double sum = 0.0;
        a.rows = per_group / C;
        a.classes = C;
        a.logits = (const char *)x->data + e0 * xes;
        a.target = (const char *)t->data + e0 * xes;
        if (w) {
            a.weight_per_class = (int)per_class;
            a.weight = (const char *)w->data + (per_class ? (size_t)(wgroups > 1 ? g : 0) * (size_t)C : e0) * ces;
        }
        if (pw) {
            a.pos_weight_per_element = !pos_per_class;
            a.pos_weight = (const char *)pw->data + (pos_per_class ? (size_t)(pgroups > 1 ? g : 0) * (size_t)C : e0) * ces;
        }
        if (gup) {
            if (reduction == RED_NONE)
                a.grad_scale = (const char *)gup->data + e0 * ces;
            else {
                const double s = load(cd, gup->data, g);
                a.grad_scale_all = reduction == RED_MEAN ? s / (double)per_group : s;
            }
        }
        if (fwd) {
            a.loss_sum = &sum;
            if (reduction == RED_NONE) a.loss = (char *)loss_out->data + e0 * xes;
        }
        if (grad_out) a.grad = (char *)grad_out->data + e0 * xes;
        rc = entry(&a);
        if (fwd && reduction != RED_NONE)
            store(cd, loss_out->data, g, reduction == RED_MEAN ? sum / (double)per_group : sum);
    }
    if (rc != FUSEDCE_OK) return fail(&c, XFFI_INTERNAL, "fusedce_bce: the C kernel failed with code %d", rc);
    return NULL;
}

/* ------------------------------------------------------------------ softmax family
 *
 * Operand: x (..., K). Results: for mode FUSEDCE_LOGSUMEXP the lse (...); for softmax and
 * log_softmax the output (x's shape and dtype) and the lse. lse in the compute dtype.
 * Attribute: mode. */

void *fusedce_xla_softmax(void *frame)
{
    call c;
    void *err;
    if (!begin((xffi_frame *)frame, &err, &c)) return err;
    int ok = 1;
    const int64_t mode = attr_i64(&c, "mode", &ok);
    if (!ok || mode < FUSEDCE_LOGSUMEXP || mode > FUSEDCE_LOG_SOFTMAX)
        return fail(&c, XFFI_INTERNAL, "fusedce_softmax: missing or malformed attributes");
    const xffi_buffer *x = arg(&c, 0);
    const xffi_buffer *out = mode == FUSEDCE_LOGSUMEXP ? NULL : ret(&c, 0);
    const xffi_buffer *lse_out = ret(&c, mode == FUSEDCE_LOGSUMEXP ? 0 : 1);
    if (!x || !lse_out || (mode != FUSEDCE_LOGSUMEXP && !out) || logits_code(x->dtype) < 0 || x->rank < 1)
        return fail(&c, XFFI_INTERNAL, "fusedce_softmax: unexpected operands");
    const int cd = compute_dtype(x->dtype);
    const int64_t K = x->dims[x->rank - 1], rows = rows_of(x);
    if (lse_out->dtype != cd || numel(lse_out) != rows || (out && (out->dtype != x->dtype || numel(out) != rows * K)))
        return fail(&c, XFFI_INTERNAL, "fusedce_softmax: operand shapes or dtypes do not match");
    if (K == 0) /* log of an empty sum; the softmax itself is empty */
        for (int64_t r = 0; r < rows; r++) store(cd, lse_out->data, r, -INFINITY);
    if (rows == 0 || K == 0) return NULL;
    if (out) advise_huge_pages(out->data, x->data, (size_t)(rows * K) * (x->dtype == XFFI_F64 ? 8 : x->dtype == XFFI_F32 ? 4 : 2));
    double *lse = cd == XFFI_F64 ? (double *)lse_out->data : (double *)malloc(sizeof(double) * (size_t)rows);
    if (!lse) return fail(&c, XFFI_INTERNAL, "fusedce_softmax: out of memory");
    const int rc = fusedce_softmax(logits_code(x->dtype), (int)mode, rows, K, x->data, out ? out->data : NULL, lse);
    if (cd != XFFI_F64) {
        for (int64_t r = 0; r < rows; r++) store(cd, lse_out->data, r, lse[r]);
        free(lse);
    }
    if (rc != FUSEDCE_OK) return fail(&c, XFFI_INTERNAL, "fusedce_softmax: the C kernel failed with code %d", rc);
    return NULL;
}

/* ------------------------------------------------------------------ other platforms */

void *fusedce_xla_unsupported(void *frame)
{
    call c;
    void *err;
    if (!begin((xffi_frame *)frame, &err, &c)) return err;
    return fail(&c, XFFI_UNIMPLEMENTED,
                "fusedce.jax has no kernels for this device under jax.jit: its XLA custom calls run on the CPU. "
                "Call fusedce.jax outside jax.jit for arrays on a GPU (they go to the Numba CUDA kernels through "
                "DLPack), or use the CPU backend (see docs/jax.md)");
}
