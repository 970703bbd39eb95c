/* Hashes of every row primitive's output, per (ISA, dtype, case), for test_kernels.c's
 * --hashes and --check-hashes modes: a change to the kernels that is meant to move no bit
 * (a refactor) must reproduce every hash of tests/c/kernel_hashes.txt.
 *
 * A case is one primitive with one set of options (softcap, weights, streaming, ...), run
 * over every length 0..40 and a set of longer ones, each with every kind of special value;
 * its hash covers every output bit of every run. NaNs hash as one value whatever their
 * payload or sign (the hardware's business, not the kernels'). The inputs depend on the
 * dtype, the length and the special value only, from a generator of their own, so adding a
 * case moves no other hash.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernel_hashes.h"

/* ---- FNV-1a over output bits, NaNs as one value ------------------------------------------ */

static void hash_bytes(uint64_t *h, const void *p, size_t n)
{
    const unsigned char *b = (const unsigned char *)p;
    for (size_t i = 0; i < n; i++) *h = (*h ^ b[i]) * 0x100000001b3ull;
}

static const char *const dtype_name[4] = {"f32", "f64", "f16", "bf16"};
static const size_t dtype_size[4] = {4, 8, 2, 2};

static double decode(int dt, const void *p, int64_t i)
{
    switch (dt) {
    case FUSEDCE_F32: return ((const float *)p)[i];
    case FUSEDCE_F64: return ((const double *)p)[i];
    case FUSEDCE_F16: return ce_f16_to_f32(((const uint16_t *)p)[i]);
    default: return ce_bf16_to_f32(((const uint16_t *)p)[i]);
    }
}

static void encode(int dt, void *p, int64_t i, double v)
{
    switch (dt) {
    case FUSEDCE_F32: ((float *)p)[i] = (float)v; break;
    case FUSEDCE_F64: ((double *)p)[i] = v; break;
    case FUSEDCE_F16: ((uint16_t *)p)[i] = ce_f32_to_f16((float)v); break;
    default: ((uint16_t *)p)[i] = ce_f32_to_bf16((float)v); break;
    }
}

static void hash_array(uint64_t *h, int dt, const void *p, int64_t n)
{
    static const char nan_token[] = "NaN";
    for (int64_t i = 0; i < n; i++) {
        if (isnan(decode(dt, p, i))) hash_bytes(h, nan_token, 3);
        else hash_bytes(h, (const char *)p + (size_t)i * dtype_size[dt], dtype_size[dt]);
    }
}

static void hash_double(uint64_t *h, double v) { hash_array(h, FUSEDCE_F64, &v, 1); }

static void hash_stats(uint64_t *h, const ce_stats *s)
{
    const double f[6] = {s->max, s->sum, s->wtotal, s->wsum, s->qsum, s->qysum};
    hash_array(h, FUSEDCE_F64, f, 6);
}

/* ---- inputs ------------------------------------------------------------------------------ */

typedef struct {
    uint64_t s;
} rng;
static uint64_t rng_next(rng *r)
{
    uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static double rng_uniform(rng *r, double lo, double hi)
{
    return lo + (hi - lo) * (double)(rng_next(r) >> 11) * 0x1p-53;
}

enum { SP_NONE, SP_NAN, SP_PINF, SP_NINF, SP_ALL_NINF, SP_ALL_NINF_NAN, SP_COUNT };

/* Every length to 40 (each tail of every vector width, twice), then longer rows that cross
 * the stats blocks. */
static const int64_t longer[] = {47, 63, 64, 65, 127, 129, 1000, 2047, 2048, 2049, 4099, 6200, 70001};
#define N_LENGTHS (41 + (int)(sizeof longer / sizeof longer[0]))
static int64_t length_at(int i) { return i <= 40 ? i : longer[i - 41]; }

/* One run's inputs, in 64-byte aligned buffers with room for an element offset. */
typedef struct {
    int dt;
    int64_t n;
    void *x, *xo, *q, *t, *out, *out2; /* logits (and room for an unaligned copy),
                                        probabilities, BCE targets, two outputs */
    void *w, *pw, *go;            /* compute-type factors */
    double spread;
} inputs;

#define PAD 64
static void *alloc_bytes(size_t bytes)
{
    void *p = aligned_alloc(64, (bytes + 2 * PAD + 63) / 64 * 64);
    if (!p) {
        printf("out of memory\n");
        exit(2);
    }
    return p;
}

static inputs make_inputs(int dt, int64_t n, int special)
{
    rng r = {0x51ED2701ull * (uint64_t)(dt + 1) + 0x2545F4914F6CDD1Dull * (uint64_t)(n + 1) +
             0x9E3779B97F4A7C15ull * (uint64_t)(special + 1)};
    inputs in;
    const size_t es = dtype_size[dt], cs = dt == FUSEDCE_F64 ? 8 : 4;
    in.dt = dt;
    in.n = n;
    in.x = alloc_bytes((size_t)n * es);
    in.xo = alloc_bytes((size_t)n * es);
    in.q = alloc_bytes((size_t)n * es);
    in.t = alloc_bytes((size_t)n * es);
    in.out = alloc_bytes((size_t)n * es);
    in.out2 = alloc_bytes((size_t)n * 8); /* also the exponentials, of the compute type */
    in.w = alloc_bytes((size_t)n * cs);
    in.pw = alloc_bytes((size_t)n * cs);
    in.go = alloc_bytes((size_t)n * cs);
    in.spread = rng_uniform(&r, 1.0, 40.0);
    for (int64_t i = 0; i < n; i++) {
        double v = rng_uniform(&r, -in.spread, in.spread);
        if (rng_next(&r) % 16 == 0) v = ldexp(rng_uniform(&r, -1, 1), -(int)(rng_next(&r) % 30));
        encode(dt, in.x, i, v);
    }
    if (n > 0) {
        if (special == SP_ALL_NINF || special == SP_ALL_NINF_NAN)
            for (int64_t i = 0; i < n; i++) encode(dt, in.x, i, -INFINITY);
        const int64_t at = (int64_t)(rng_next(&r) % (uint64_t)n);
        if (special == SP_NAN || special == SP_ALL_NINF_NAN) encode(dt, in.x, at, NAN);
        if (special == SP_PINF) encode(dt, in.x, at, INFINITY);
        if (special == SP_NINF) {
            encode(dt, in.x, at, -INFINITY);
            encode(dt, in.x, (at * 7 + 3) % n, -INFINITY);
        }
    }
    for (int64_t i = 0; i < n; i++) {
        const int zero = rng_next(&r) % 4 == 0 || decode(dt, in.x, i) == -INFINITY;
        encode(dt, in.q, i, zero ? 0.0 : rng_uniform(&r, 0.0, 1.0));
        const uint64_t u = rng_next(&r) % 8;
        encode(dt, in.t, i, u == 0 ? 0.0 : u == 1 ? 1.0 : rng_uniform(&r, 0.0, 1.0));
        const double f[3] = {rng_uniform(&r, 0.0, 2.0), rng_uniform(&r, 0.0, 2.0),
                             rng_uniform(&r, -2.0, 2.0)};
        void *dst[3] = {in.w, in.pw, in.go};
        for (int k = 0; k < 3; k++) {
            if (dt == FUSEDCE_F64) ((double *)dst[k])[i] = f[k];
            else ((float *)dst[k])[i] = (float)f[k];
        }
    }
    return in;
}

static void free_inputs(inputs *in)
{
    void *all[] = {in->x, in->xo, in->q, in->t, in->out, in->out2, in->w, in->pw, in->go};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) free(all[i]);
}

/* An unaligned copy of an input (variant bit), kept alive with the run. */
static void *shifted(void *buf, const void *src, size_t bytes, size_t offset_bytes)
{
    char *p = (char *)buf + PAD - offset_bytes;
    memmove(p, src, bytes);
    return p;
}

/* ---- the cases --------------------------------------------------------------------------- */

enum { K_STATS, K_GRAD, K_SHIFT, K_STATS_SOFT, K_GRAD_SOFT, K_BCE, K_GRAD_EXP, K_STATS_GRAD, K_COUNT };
static const char *const kind_name[K_COUNT] = {"stats",     "grad", "shift",    "stats_soft",
                                               "grad_soft", "bce",  "grad_exp", "stats_grad"};
static const int kind_variants[K_COUNT] = {8, 16, 2, 8, 16, 64, 16, 16};

/* Runs one primitive with option bits `v` on the inputs; hashes every output. */
static void run_case(const ce_kernels *k, int kind, int v, inputs *in, uint64_t *h)
{
    const int dt = in->dt;
    const int64_t n = in->n;
    const size_t es = dtype_size[dt];
    const double softcap = v & 1 ? 2.0 + in->spread / 3.0 : 0.0;
    const void *w = v & 2 ? in->w : NULL;
    const int flag = (v >> 2) & 1; /* want_wsum (stats) / stream (grad) */
    ce_stats s;
    memset(&s, 0, sizeof s);
    /* shift, a, b, ...: from the row's portable-independent max, rounded as the driver does */
    double max = -INFINITY;
    for (int64_t i = 0; i < n; i++) {
        const double y = softcap > 0 ? softcap * tanh(decode(dt, in->x, i) / softcap) : decode(dt, in->x, i);
        if (y > max) max = y;
    }
    double shift = isfinite(max) ? max + 0.25 : 0.0;
    if (dt != FUSEDCE_F64) shift = (float)shift;
    const double a = 0.75 + in->spread / 64.0, b = 0.5 - in->spread / 50.0;
    switch (kind) {
    case K_STATS: /* and the exponentials it keeps (in out2, of the compute type) */
        k->stats(in->x, n, NULL, softcap, w, flag, in->out2, &s);
        hash_stats(h, &s);
        hash_array(h, dt == FUSEDCE_F64 ? FUSEDCE_F64 : FUSEDCE_F32, in->out2, n);
        break;
    case K_GRAD: {
        /* bit 3: g at an odd element offset (the streamed head and tail) */
        void *g = v & 8 ? (char *)in->out + PAD - 3 * es : (char *)in->out + PAD;
        k->grad(in->x, n, in->x, softcap, w, shift, a, b, flag, -1, 0.0, g);
        ce_stream_fence();
        hash_array(h, dt, g, n);
        break;
    }
    case K_SHIFT: {
        void *o = v & 1 ? (char *)in->out + PAD - es : in->out;
        k->shift(in->x, n, shift, 0.375 * in->spread, o);
        hash_array(h, dt, o, n);
        break;
    }
    case K_STATS_SOFT:
        if (!k->stats_soft) return;
        k->stats_soft(in->x, in->q, n, softcap, w, flag, in->out2, &s);
        hash_stats(h, &s);
        break;
    case K_GRAD_SOFT: {
        if (!k->grad_soft) return;
        void *g = v & 8 ? (char *)in->out + PAD - 3 * es : (char *)in->out + PAD;
        k->grad_soft(in->x, in->q, n, softcap, w, shift, a, -1.25 + in->spread / 20.0, 0.125, flag, g);
        ce_stream_fence();
        hash_array(h, dt, g, n);
        break;
    }
    case K_GRAD_EXP: {
        /* bit 0: soft targets (no softcap here); exponentials from this ISA's stats */
        if (!k->grad_exp) return;
        void *g = v & 8 ? (char *)in->out + PAD - 3 * es : (char *)in->out + PAD;
        k->stats(in->x, n, NULL, 0.0, NULL, 0, in->out2, &s);
        k->grad_exp(in->out2, v & 1 ? in->q : NULL, n, in->x, w, a, -1.25 + in->spread / 20.0, 0.125, flag, -1, 0.0,
                    g);
        ce_stream_fence();
        hash_array(h, dt, g, n);
        break;
    }
    case K_STATS_GRAD: {
        /* this row's pass 1 with the gradient from q's exponentials (an earlier row) alongside */
        if (!k->stats_grad) return;
        void *g = v & 8 ? (char *)in->out + PAD - 3 * es : (char *)in->out + PAD;
        char pe[8 * 4096];
        if (n > 4096) return;
        k->stats(in->q, n, NULL, 0.0, NULL, 0, pe, &s);
        const ce_grad_along along = {pe, w, a, 0.125, flag, n ? n / 3 : -1, -0.375, g};
        k->stats_grad(in->x, n, NULL, in->w, v & 1, in->out2, &s, &along);
        ce_stream_fence();
        hash_stats(h, &s);
        hash_array(h, dt == FUSEDCE_F64 ? FUSEDCE_F64 : FUSEDCE_F32, in->out2, n);
        hash_array(h, dt, g, n);
        break;
    }
    case K_BCE: {
        if (!k->bce) return;
        /* bits: weight, pos_weight, per-element scale, no loss output, no gradient, unaligned x */
        const void *bw = v & 1 ? in->w : NULL, *pw = v & 2 ? in->pw : NULL, *go = v & 4 ? in->go : NULL;
        void *l = v & 8 ? NULL : in->out, *g = v & 16 ? NULL : in->out2;
        const void *x = v & 32 ? shifted(in->xo, in->x, (size_t)n * es, es) : in->x;
        const double sum = k->bce(x, in->t, n, bw, pw, go, 0.5 + in->spread / 16.0, l, g);
        hash_double(h, sum);
        if (l) hash_array(h, dt, l, n);
        if (g) hash_array(h, dt, g, n);
        break;
    }
    }
}

/* The vector exp alone over a fixed sweep (specials, tails, underflow and overflow). */
static uint64_t vexp_hash(const ce_isa_table *t, int dt)
{
    enum { N = 1 << 16 };
    uint64_t h = 0xcbf29ce484222325ull;
    rng r = {0xE4Fu + (uint64_t)dt};
    if (dt == FUSEDCE_F32) {
        static float x[N + 3], y[N + 3];
        for (int i = 0; i < N; i++) x[i] = (float)(i % 3 ? rng_uniform(&r, -110.0, 95.0) : rng_uniform(&r, -2.0, 2.0));
        const float sp[] = {-INFINITY, INFINITY, NAN, -0.0f, 0.0f, -103.97f, -103.98f, 88.72283f, 88.72284f};
        memcpy(x, sp, sizeof sp);
        for (int64_t n = 0; n <= 40; n++) { /* tails */
            t->vexp_f32(x + 1, n, y + 1);
            hash_array(&h, FUSEDCE_F32, y + 1, n);
        }
        t->vexp_f32(x, N, y);
        hash_array(&h, FUSEDCE_F32, y, N);
    } else {
        static double x[N + 3], y[N + 3];
        for (int i = 0; i < N; i++) x[i] = i % 3 ? rng_uniform(&r, -750.0, 712.0) : rng_uniform(&r, -2.0, 2.0);
        const double sp[] = {-INFINITY, INFINITY, NAN, -0.0, 0.0, -745.13, -745.14, 709.78, 709.79};
        memcpy(x, sp, sizeof sp);
        for (int64_t n = 0; n <= 40; n++) {
            t->vexp_f64(x + 1, n, y + 1);
            hash_array(&h, FUSEDCE_F64, y + 1, n);
        }
        t->vexp_f64(x, N, y);
        hash_array(&h, FUSEDCE_F64, y, N);
    }
    return h;
}

static void variant_name(char *buf, size_t size, int kind, int v)
{
    static const char *const bits[K_COUNT][6] = {
        {"cap", "w", "wsum"},
        {"cap", "w", "stream", "odd"},
        {"odd"},
        {"cap", "w", "wsum"},
        {"cap", "w", "stream", "odd"},
        {"w", "pw", "go", "noloss", "nograd", "odd"},
        {"soft", "w", "stream", "odd"},
        {"wsum", "w", "stream", "odd"},
    };
    int used = snprintf(buf, size, "%s", kind_name[kind]);
    for (int b = 0; b < 6 && bits[kind][b]; b++)
        if (v >> b & 1) used += snprintf(buf + used, size - (size_t)used, "+%s", bits[kind][b]);
}

void kernel_hashes(const char *isa, const ce_isa_table *t, hash_sink sink, void *ctx)
{
    const int detail = getenv("FUSEDCE_HASH_DETAIL") && *getenv("FUSEDCE_HASH_DETAIL") == '1';
    for (int dt = 0; dt < 4; dt++) {
        uint64_t h[K_COUNT][64];
        for (int kind = 0; kind < K_COUNT; kind++)
            for (int v = 0; v < kind_variants[kind]; v++) h[kind][v] = 0xcbf29ce484222325ull;
        for (int li = 0; li < N_LENGTHS; li++) {
            const int64_t n = length_at(li);
            for (int special = 0; special < SP_COUNT; special++) {
                if (n > 10000 && special != SP_NONE) continue;
                inputs in = make_inputs(dt, n, special);
                for (int kind = 0; kind < K_COUNT; kind++)
                    for (int v = 0; v < kind_variants[kind]; v++) {
                        uint64_t one = 0xcbf29ce484222325ull;
                        run_case(&t->k[dt], kind, v, &in, &one);
                        hash_bytes(&h[kind][v], &one, sizeof one);
                        if (detail) {
                            char name[96], full[160];
                            variant_name(name, sizeof name, kind, v);
                            snprintf(full, sizeof full, "%s@n=%lld,sp=%d", name, (long long)n, special);
                            sink(isa, dtype_name[dt], full, one, ctx);
                        }
                    }
                free_inputs(&in);
            }
        }
        for (int kind = 0; kind < K_COUNT; kind++)
            for (int v = 0; v < kind_variants[kind]; v++) {
                char name[96];
                variant_name(name, sizeof name, kind, v);
                sink(isa, dtype_name[dt], name, h[kind][v], ctx);
            }
        if (dt == FUSEDCE_F32 || dt == FUSEDCE_F64) sink(isa, dtype_name[dt], "vexp", vexp_hash(t, dt), ctx);
    }
}
