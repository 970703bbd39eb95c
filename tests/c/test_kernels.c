/* Standalone check of every compiled ISA's row primitives (kernels.h) against the portable
 * kernels and a double-precision oracle, over every dtype; plus the vector exp's accuracy.
 *
 * Links ce_portable.c, the ISA files and dispatch.c (which says what the CPU has), not the
 * driver. ISAs the CPU lacks are skipped; one it has that the build left out fails. FUSEDCE_TEST_EXHAUSTIVE=1 sweeps every float in the exp range instead of a
 * sample. Last line: "N passed, M failed"; exit status 1 on any failure.
 *
 *   test_kernels --hashes              only print "isa dtype case hash" for every primitive
 *                                      (kernel_hashes.c), e.g. > tests/c/kernel_hashes.txt
 *   test_kernels --check-hashes FILE   the tests, then every hash of the ISAs run here
 *                                      compared with FILE's: a refactor moves no bit
 */
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernel_hashes.h"
#include "kernels.h"

/* ---- bookkeeping ------------------------------------------------------------------------ */

static long n_passed, n_failed, fails_to_show;

static void check(int ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void check(int ok, const char *fmt, ...)
{
    if (ok) {
        n_passed++;
        return;
    }
    if (++n_failed <= fails_to_show) {
        va_list ap;
        va_start(ap, fmt);
        printf("FAIL: ");
        vprintf(fmt, ap);
        printf("\n");
        va_end(ap);
    }
}

/* Every ISA of isa_list.h: its table is NULL where this build leaves it out (another
 * architecture's). */
typedef void (*check_fn)(int ok, const char *fmt, ...);
typedef struct {
    const char *name;
    const ce_isa_table *table;
    int id;
    void (*vocab_test)(check_fn); /* test_vocab.c's test of its vocabulary header */
} isa_entry;

#define VOCAB_TEST(ID, name, arch, flags) void vocab_test_##name(check_fn) __attribute__((weak));
CE_ISA_LIST(VOCAB_TEST)
#undef VOCAB_TEST
#define ISA_ENTRY(ID, name, arch, flags) {#name, &ce_table_##name, FUSEDCE_ISA_##ID, vocab_test_##name},
static const isa_entry isas[] = {{"portable", &ce_table_portable, FUSEDCE_ISA_PORTABLE, NULL},
                                 CE_ISA_LIST(ISA_ENTRY)};
#undef ISA_ENTRY
#define N_ISAS ((int)(sizeof(isas) / sizeof(isas[0])))

/* Whether an ISA's kernels run here; an ISA this CPU has but the build left out is a failure. */
static int isa_runs(const isa_entry *isa, int quiet)
{
    const int cpu = ce_cpu_has_isa(isa->id);
    if (!isa->table) {
        check(!cpu, "%s: this CPU has it, but it is not compiled in", isa->name);
        return 0;
    }
    if (!cpu && !quiet) printf("%-8s skipped: this CPU lacks it\n", isa->name);
    return cpu;
}

/* ---- dtypes ----------------------------------------------------------------------------- */

static const char *const dtype_name[4] = {"f32", "f64", "f16", "bf16"};
static const size_t dtype_size[4] = {4, 8, 2, 2};

static double get_elem(int dt, const void *p, int64_t i)
{
    switch (dt) {
    case FUSEDCE_F32: return ((const float *)p)[i];
    case FUSEDCE_F64: return ((const double *)p)[i];
    case FUSEDCE_F16: return ce_f16_to_f32(((const uint16_t *)p)[i]);
    default: return ce_bf16_to_f32(((const uint16_t *)p)[i]);
    }
}

static void set_elem(int dt, void *p, int64_t i, double v)
{
    switch (dt) {
    case FUSEDCE_F32: ((float *)p)[i] = (float)v; break;
    case FUSEDCE_F64: ((double *)p)[i] = v; break;
    case FUSEDCE_F16: ((uint16_t *)p)[i] = ce_f32_to_f16((float)v); break;
    default: ((uint16_t *)p)[i] = ce_f32_to_bf16((float)v); break;
    }
}

/* Weights are in the compute type. */
static size_t weight_size(int dt) { return dt == FUSEDCE_F64 ? 8 : 4; }

/* The compute type's epsilon (half an ULP at 1). */
static double compute_eps(int dt) { return dt == FUSEDCE_F64 ? 0x1p-53 : 0x1p-24; }

/* One ULP of the storage type at |v|, for the half types' single rounding on store. */
static double storage_ulp(int dt, double v)
{
    int e;
    frexp(fabs(v), &e);
    if (dt == FUSEDCE_F16) return fmax(ldexp(1.0, e - 11), 0x1p-24);
    if (dt == FUSEDCE_BF16) return fmax(ldexp(1.0, e - 8), 0x1p-133);
    return 0.0;
}

/* The largest finite value of the storage type (beyond it a result may round to inf). */
static double storage_max(int dt)
{
    static const double max[4] = {0x1.fffffep127, 0x1.fffffffffffffp1023, 65504.0, 0x1.fep127};
    return max[dt];
}

/* ---- buffers with guard bytes, at an element offset from a 64-byte boundary ------------ */

#define GUARD 64
typedef struct {
    unsigned char *base;
    size_t bytes; /* payload */
    size_t lead;  /* guard + offset */
    void *p;
} buffer;

static buffer buf_new(size_t bytes, size_t offset_bytes)
{
    buffer b;
    b.bytes = bytes;
    b.lead = GUARD + offset_bytes;
    b.base = aligned_alloc(64, (b.lead + bytes + GUARD + 63) / 64 * 64);
    if (!b.base) {
        printf("out of memory\n");
        exit(2);
    }
    memset(b.base, 0xA5, b.lead + bytes + GUARD);
    b.p = b.base + b.lead;
    return b;
}

static int buf_guards_ok(const buffer *b)
{
    for (size_t i = 0; i < b->lead; i++)
        if (b->base[i] != 0xA5) return 0;
    for (size_t i = 0; i < GUARD; i++)
        if (b->base[b->lead + b->bytes + i] != 0xA5) return 0;
    return 1;
}

static void buf_free(buffer *b) { free(b->base); }

/* ---- deterministic inputs --------------------------------------------------------------- */

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint64_t rng_next(void)
{
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static double rng_uniform(double lo, double hi)
{
    return lo + (hi - lo) * (double)(rng_next() >> 11) * 0x1p-53;
}
/* +-[1, 2) * 2^e with e uniform in [lo_exp, hi_exp): dense near 0 */
static double rng_logspaced(int lo_exp, int hi_exp)
{
    const int e = lo_exp + (int)(rng_next() % (uint64_t)(hi_exp - lo_exp));
    return (rng_next() & 1 ? -1 : 1) * ldexp(rng_uniform(1, 2), e);
}

enum { SP_NONE, SP_NAN, SP_PINF, SP_NINF, SP_ALL_NINF, SP_ALL_NINF_NAN, SP_COUNT };
static const char *const special_name[SP_COUNT] = {"none",     "nan",      "+inf",
                                                   "-inf",     "all -inf", "all -inf + nan"};

/* Logits over a wide range (so exp sees deep negatives), with the special values placed at
 * random positions. */
static void fill_logits(int dt, void *x, int64_t n, int special)
{
    const double spread = rng_uniform(1.0, 40.0);
    for (int64_t i = 0; i < n; i++) set_elem(dt, x, i, rng_uniform(-spread, spread));
    if (n == 0) return;
    if (special == SP_ALL_NINF || special == SP_ALL_NINF_NAN)
        for (int64_t i = 0; i < n; i++) set_elem(dt, x, i, -INFINITY);
    const int64_t at = (int64_t)(rng_next() % (uint64_t)n);
    if (special == SP_NAN || special == SP_ALL_NINF_NAN) set_elem(dt, x, at, NAN);
    if (special == SP_PINF) set_elem(dt, x, at, INFINITY);
    if (special == SP_NINF) {
        set_elem(dt, x, at, -INFINITY);
        set_elem(dt, x, (at * 7 + 3) % n, -INFINITY);
    }
}

/* Weights in the compute type. */
static void fill_weights(int dt, void *w, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        const double v = rng_uniform(0.0, 2.0);
        if (dt == FUSEDCE_F64) ((double *)w)[i] = v;
        else ((float *)w)[i] = (float)v;
    }
}
static double get_weight(int dt, const void *w, int64_t i)
{
    if (!w) return 1.0;
    return dt == FUSEDCE_F64 ? ((const double *)w)[i] : ((const float *)w)[i];
}

/* y as the kernels define it, in double. */
static double capped(double x, double softcap)
{
    return softcap > 0 ? softcap * tanh(x / softcap) : x;
}

/* ---- stats ------------------------------------------------------------------------------ */

typedef struct {
    double max, sum, wtotal, wsum, wabs; /* wabs = sum |w*(y - ref)|, the scale of wsum's rounding */
    double ymax_abs;
} oracle_stats;

/* Compensated (Neumaier) sum in double: the oracle's own rounding stays negligible, also
 * under valgrind, which computes long double as double. */
typedef struct {
    double sum, err;
} exact_sum;
static void exact_add(exact_sum *s, double v)
{
    const double t = s->sum + v;
    if (isfinite(t)) s->err += fabs(s->sum) >= fabs(v) ? (s->sum - t) + v : (v - t) + s->sum;
    s->sum = t;
}

static oracle_stats stats_oracle(int dt, const void *x, int64_t n, double softcap, const void *w)
{
    oracle_stats o = {-INFINITY, 0.0, 0.0, 0.0, 0.0, 0.0};
    exact_sum sum = {0, 0}, wtotal = {0, 0}, wsum = {0, 0}, wabs = {0, 0};
    int bad = 0;
    for (int64_t i = 0; i < n; i++) {
        const double y = capped(get_elem(dt, x, i), softcap);
        if (y > o.max) o.max = y;
        if (y != y || y == INFINITY) bad = 1;
        if (isfinite(y) && fabs(y) > o.ymax_abs) o.ymax_abs = fabs(y);
    }
    /* the weighted sums relative to the max (kernels.h), zero weights taking no part */
    const double ref = ce_stats_ref(o.max);
    for (int64_t i = 0; i < n; i++) {
        const double y = capped(get_elem(dt, x, i), softcap), wi = get_weight(dt, w, i);
        exact_add(&wtotal, wi);
        if (wi == 0) continue;
        exact_add(&wsum, wi * (y - ref));
        exact_add(&wabs, fabs(wi * (y - ref)));
    }
    o.wtotal = wtotal.sum + wtotal.err;
    if (o.max != -INFINITY && !bad)
        for (int64_t i = 0; i < n; i++)
            exact_add(&sum, exp(capped(get_elem(dt, x, i), softcap) - o.max));
    o.sum = bad ? NAN : sum.sum + sum.err;
    o.wsum = wsum.sum + wsum.err;
    o.wabs = wabs.sum + wabs.err;
    return o;
}

static int same_special(double a, double b)
{
    if (isnan(a) || isnan(b)) return isnan(a) && isnan(b);
    if (isinf(a) || isinf(b)) return a == b;
    return 1;
}

static void test_stats_case(const isa_entry *isa, int dt, int64_t n, double softcap, int weighted,
                            int want_wsum, size_t offset, int special)
{
    const size_t es = dtype_size[dt];
    buffer xb = buf_new((size_t)n * es, offset * es);
    buffer wb = buf_new((size_t)n * weight_size(dt), offset * weight_size(dt));
    fill_logits(dt, xb.p, n, special);
    fill_weights(dt, wb.p, n);
    const void *w = weighted ? wb.p : NULL;

    buffer eb = buf_new((size_t)n * weight_size(dt), offset * weight_size(dt)); /* exponentials */
    buffer pe = buf_new((size_t)n * weight_size(dt), 0);

    ce_stats got, port;
    /* stale bytes, as in a reused scratch: ce_stats writes every field (kernels.h) */
    memset(&got, 0xa5, sizeof got);
    memset(&port, 0xa5, sizeof port);
    isa->table->k[dt].stats(xb.p, n, xb.p, softcap, w, want_wsum, eb.p, &got);
    ce_table_portable.k[dt].stats(xb.p, n, NULL, softcap, w, want_wsum, pe.p, &port);
    const oracle_stats o = stats_oracle(dt, xb.p, n, softcap, w);
    const double eps = compute_eps(dt);

    char what[200];
    snprintf(what, sizeof what, "%s stats %s n=%lld cap=%g w=%d wsum=%d off=%zu special=%s",
             isa->name, dtype_name[dt], (long long)n, softcap, weighted, want_wsum, offset,
             special_name[special]);
    check(got.qsum == 0 && got.qysum == 0 && port.qsum == 0 && port.qysum == 0 &&
              (want_wsum || (got.wtotal == 0 && got.wsum == 0 && port.wtotal == 0 && port.wsum == 0)),
          "%s: the sums it does not take are not 0 (q %g %g, w %g %g; portable q %g %g)", what, got.qsum,
          got.qysum, got.wtotal, got.wsum, port.qsum, port.qysum);

    /* The exponentials e_j = exp(y_j - max) (relative to 0 when the max is -inf): the exp's
     * few ULP and its argument's rounding (of y - max, and of y under the softcap's tanh). */
    const double ref = got.max == -INFINITY ? 0.0 : got.max;
    int64_t bad_e = -1;
    for (int64_t j = 0; j < n && bad_e < 0; j++) {
        const double y = capped(get_elem(dt, xb.p, j), softcap), want = exp(y - ref);
        const double e_got = get_weight(dt, eb.p, j);
        if (isnan(want) || want == 0 || isinf(want)) {
            if (isnan(want) ? !isnan(e_got) : e_got != want) bad_e = j;
            continue;
        }
        const double tol = want * eps * (8 + 2 * fabs(y - ref) + (softcap > 0 ? 12 * (fabs(y) + fabs(ref)) : 0)) +
                           (dt == FUSEDCE_F64 ? 0x1p-1074 : 0x1p-149);
        if (!(fabs(e_got - want) <= tol)) bad_e = j;
    }
    check(bad_e < 0, "%s: e[%lld] = %.17g, want exp(%.17g - %.17g)", what, (long long)bad_e,
          bad_e >= 0 ? get_weight(dt, eb.p, bad_e) : 0.0, bad_e >= 0 ? capped(get_elem(dt, xb.p, bad_e), softcap) : 0.0,
          ref);
    check(buf_guards_ok(&eb), "%s: wrote outside e", what);
    if (!(softcap > 0)) { /* without keeping the exponentials: the same statistics, bit for bit */
        ce_stats alone;
        memset(&alone, 0, sizeof alone);
        isa->table->k[dt].stats(xb.p, n, NULL, softcap, w, want_wsum, NULL, &alone);
        check(memcmp(&alone, &got, sizeof got) == 0, "%s: statistics differ without e", what);
    }

    /* Max: exactly portable's when y = x; special values exactly as portable. */
    if (softcap > 0)
        check(same_special(got.max, port.max) &&
                  (!isfinite(port.max) ||
                   fabs(got.max - port.max) <= 8 * eps * (1 + fabs(port.max))),
              "%s: max %.17g, portable %.17g", what, got.max, port.max);
    else
        check(got.max == port.max, "%s: max %.17g, portable %.17g", what, got.max, port.max);
    check(same_special(got.sum, port.sum) && same_special(got.sum, o.sum),
          "%s: sum %.17g, portable %.17g, oracle %.17g", what, got.sum, port.sum, o.sum);

    /* lse against the oracle: y is rounded to the compute type (relative eps), the sum
     * accumulates a few roundings per block. */
    if (isfinite(o.sum) && o.max > -INFINITY && isfinite(o.max)) {
        const double lse = got.max + log(got.sum), lse_o = o.max + log(o.sum);
        const double tol = 16 * eps * (1 + 2 * o.ymax_abs);
        check(fabs(lse - lse_o) <= tol, "%s: lse %.17g, oracle %.17g (diff %.3g, tol %.3g)", what,
              lse, lse_o, lse - lse_o, tol);
    } else if (o.max == -INFINITY) {
        check(got.max == -INFINITY && (isnan(o.sum) ? isnan(got.sum) : got.sum == 0.0),
              "%s: all -inf gives max %g sum %g", what, got.max, got.sum);
    }
    if (want_wsum) {
        if (!isfinite(o.wsum))
            check(same_special(got.wsum, o.wsum), "%s: wsum %g, oracle %g", what, got.wsum, o.wsum);
        else
            /* float partial sums of up to 256 terms (portable's blocks), then double; y - ref
             * rounded once, and ref itself a capped value when softcap > 0 */
            check(fabs(got.wsum - o.wsum) <=
                      eps * (o.wabs + (softcap > 0 ? 8 * fabs(o.wtotal) * (1 + fabs(ce_stats_ref(o.max))) : 0)) *
                          (16 + (n < 256 ? n : 256) + (softcap > 0 ? 8 : 0)),
                  "%s: wsum %.17g, oracle %.17g", what, got.wsum, o.wsum);
        check(fabs(got.wtotal - o.wtotal) <= eps * fabs(o.wtotal) * (16 + (n < 256 ? n : 256)),
              "%s: wtotal %.17g, oracle %.17g", what, got.wtotal, o.wtotal);
    }
    check(buf_guards_ok(&xb) && buf_guards_ok(&wb), "%s: input buffers changed", what);
    buf_free(&xb);
    buf_free(&wb);
    buf_free(&eb);
    buf_free(&pe);
}

/* ---- grad from stored exponentials ------------------------------------------------------ */

static void test_grad_exp_case(const isa_entry *isa, int dt, int64_t n, int weighted, int soft, int stream,
                               size_t offset)
{
    const size_t es = dtype_size[dt], cs = weight_size(dt);
    buffer eb = buf_new((size_t)n * cs, offset * cs), qb = buf_new((size_t)n * es, ((offset + 5) % 8) * es);
    buffer wb = buf_new((size_t)n * cs, offset * cs), gb = buf_new((size_t)n * es, ((offset * 5 + 1) % 8) * es);
    for (int64_t j = 0; j < n; j++) {
        const uint64_t r = rng_next() % 16;
        const double e = r == 0 ? 0.0 : r == 1 ? 1.0 : r == 2 ? NAN : exp(rng_uniform(-30, 0));
        if (dt == FUSEDCE_F64) ((double *)eb.p)[j] = e;
        else ((float *)eb.p)[j] = (float)e;
        set_elem(dt, qb.p, j, rng_next() % 4 ? rng_uniform(0, 1) : 0.0);
    }
    fill_weights(dt, wb.p, n);
    const void *w = weighted ? wb.p : NULL, *q = soft ? qb.p : NULL;
    double a = rng_uniform(0.1, 2.0), bq = rng_uniform(-1.5, 1.5), b0 = rng_uniform(-0.5, 0.5);
    if (dt != FUSEDCE_F64) a = (float)a, bq = (float)bq, b0 = (float)b0;
    isa->table->k[dt].grad_exp(eb.p, q, n, NULL, w, a, bq, b0, stream, -1, 0.0, gb.p);
    /* and with an element given its value (the target's) somewhere, or none: the same bits but
     * there; -0.375 is exact in every storage type */
    const int64_t t = n && rng_next() % 2 ? (int64_t)(rng_next() % (uint64_t)n) : -1;
    buffer tb = buf_new((size_t)n * es, ((offset * 5 + 1) % 8) * es);
    isa->table->k[dt].grad_exp(eb.p, q, n, NULL, w, a, bq, b0, stream, t, -0.375, tb.p);
    ce_stream_fence();

    char what[200];
    snprintf(what, sizeof what, "%s grad_exp %s n=%lld w=%d soft=%d stream=%d off=%zu", isa->name, dtype_name[dt],
             (long long)n, weighted, soft, stream, offset);
    const double eps = compute_eps(dt);
    int64_t bad = -1;
    for (int64_t j = 0; j < n && bad < 0; j++) {
        const double e = get_weight(dt, eb.p, j), wj = get_weight(dt, w, j);
        const double b = soft ? bq * get_elem(dt, qb.p, j) + b0 : b0, want = a * e - wj * b;
        /* both sides round a few times (the double oracle too, for f64) */
        const double tol = 8 * eps * (fabs(a * e) + fabs(wj) * (fabs(b0) + (soft ? fabs(b - b0) : 0))) +
                           storage_ulp(dt, want);
        const double got = get_elem(dt, gb.p, j);
        if (isnan(want) ? !isnan(got) : !(fabs(got - want) <= tol)) bad = j;
    }
    check(bad < 0, "%s: g[%lld] = %.17g, e %.17g q %.17g w %.17g a %.17g bq %.17g b0 %.17g", what, (long long)bad,
          bad >= 0 ? get_elem(dt, gb.p, bad) : 0.0, bad >= 0 ? get_weight(dt, eb.p, bad) : 0.0,
          bad >= 0 ? get_elem(dt, qb.p, bad) : 0.0, bad >= 0 ? get_weight(dt, w, bad) : 0.0, a, bq, b0);
    check(buf_guards_ok(&gb) && buf_guards_ok(&eb) && buf_guards_ok(&qb) && buf_guards_ok(&tb), "%s: wrote outside g",
          what);
    if (t >= 0) set_elem(dt, gb.p, t, -0.375);
    check(memcmp(tb.p, gb.p, (size_t)n * es) == 0, "%s: with the target's value at %lld, other elements differ", what,
          (long long)t);
    buf_free(&eb), buf_free(&qb), buf_free(&wb), buf_free(&gb), buf_free(&tb);
}

/* ---- the forward's pass 1 with the next row's max alongside: the same bits as stats ------- */

/* stats_ahead's uses (kernels.h) against stats on each row apart: row x with its max known
 * and row p's max taken alongside, p with x's max alongside, and x's max alone. */
static void test_stats_ahead_case(const isa_entry *isa, int dt, int64_t n, size_t offset, int special)
{
    const ce_stats_ahead_fn ahead = isa->table->k[dt].stats_ahead;
    if (!ahead) return; /* each row takes its own max */
    const size_t es = dtype_size[dt];
    buffer xb = buf_new((size_t)n * es, offset * es), pb = buf_new((size_t)n * es, 0);
    fill_logits(dt, xb.p, n, special);
    fill_logits(dt, pb.p, n, (special + 1) % SP_COUNT);
    ce_stats want_x, want_p, got_x, got_p;
    isa->table->k[dt].stats(xb.p, n, NULL, 0.0, NULL, 0, NULL, &want_x);
    isa->table->k[dt].stats(pb.p, n, NULL, 0.0, NULL, 0, NULL, &want_p);
    double max_p = NAN, max_x = NAN, max_alone = NAN;
    memset(&got_x, 0xa5, sizeof got_x), memset(&got_p, 0xa5, sizeof got_p); /* every field written */
    ahead(xb.p, n, want_x.max, pb.p, NULL, &got_x, &max_p);
    ahead(pb.p, n, want_p.max, xb.p, xb.p, &got_p, &max_x);
    ahead(NULL, n, 0.0, xb.p, NULL, NULL, &max_alone);
    char what[200];
    snprintf(what, sizeof what, "%s stats_ahead %s n=%lld off=%zu special=%s", isa->name, dtype_name[dt],
             (long long)n, offset, special_name[special]);
    check(memcmp(&got_x, &want_x, sizeof got_x) == 0 && memcmp(&got_p, &want_p, sizeof got_p) == 0,
          "%s: statistics differ from stats'", what);
    check(memcmp(&max_p, &want_p.max, sizeof(double)) == 0 && memcmp(&max_x, &want_x.max, sizeof(double)) == 0 &&
              memcmp(&max_alone, &want_x.max, sizeof(double)) == 0,
          "%s: the max ahead differs from stats' (%.9g %.9g %.9g against %.9g %.9g)", what, max_p, max_x, max_alone,
          want_p.max, want_x.max);
    buf_free(&xb), buf_free(&pb);
}

/* ---- pass 1 with an earlier row's pass 2 alongside: the same bits as the two apart -------- */

static void test_stats_grad_case(const isa_entry *isa, int dt, int64_t n, int weighted, int want_wsum, int stream,
                                 size_t offset, int special)
{
    if (!isa->table->k[dt].stats_grad) return; /* the driver runs the passes apart */
    const size_t es = dtype_size[dt], cs = weight_size(dt);
    buffer xb = buf_new((size_t)n * es, offset * es), wb = buf_new((size_t)n * cs, offset * cs);
    buffer pb = buf_new((size_t)n * es, 0), pe = buf_new((size_t)n * cs, 0);
    buffer e1 = buf_new((size_t)n * cs, 0), e2 = buf_new((size_t)n * cs, 0);
    buffer g1 = buf_new((size_t)n * es, ((offset * 5 + 1) % 8) * es), g2 = buf_new((size_t)n * es, ((offset * 5 + 1) % 8) * es);
    fill_logits(dt, xb.p, n, special);
    fill_logits(dt, pb.p, n, SP_NONE); /* the earlier row */
    fill_weights(dt, wb.p, n);
    ce_stats prev, got, want;
    memset(&got, 0xa5, sizeof got), memset(&want, 0x5a, sizeof want); /* every field written */
    isa->table->k[dt].stats(pb.p, n, NULL, 0.0, NULL, 0, pe.p, &prev);
    const void *w = weighted ? wb.p : NULL;
    const double a = rng_uniform(0.1, 2.0), b0 = weighted ? rng_uniform(-0.2, 0.2) : 0.0;
    /* an element given its value (the target's) somewhere, or none; -0.375 is exact in every
     * storage type */
    const int64_t t = n && rng_next() % 2 ? (int64_t)(rng_next() % (uint64_t)n) : -1;
    const ce_grad_along along = {pe.p, w, a, b0, stream, t, -0.375, g1.p};
    isa->table->k[dt].stats_grad(xb.p, n, NULL, wb.p, want_wsum, e1.p, &got, &along);
    ce_stream_fence();
    isa->table->k[dt].stats(xb.p, n, NULL, 0.0, wb.p, want_wsum, e2.p, &want);
    isa->table->k[dt].grad_exp(pe.p, NULL, n, NULL, w, a, 0.0, b0, stream, -1, 0.0, g2.p);
    ce_stream_fence();
    if (t >= 0) set_elem(dt, g2.p, t, -0.375);
    char what[200];
    snprintf(what, sizeof what, "%s stats_grad %s n=%lld w=%d wsum=%d stream=%d off=%zu special=%s", isa->name,
             dtype_name[dt], (long long)n, weighted, want_wsum, stream, offset, special_name[special]);
    check(memcmp(&got, &want, sizeof got) == 0 && memcmp(e1.p, e2.p, (size_t)n * cs) == 0,
          "%s: statistics or exponentials differ from stats'", what);
    check(memcmp(g1.p, g2.p, (size_t)n * es) == 0, "%s: gradient differs from grad_exp's", what);
    check(buf_guards_ok(&g1) && buf_guards_ok(&e1) && buf_guards_ok(&xb) && buf_guards_ok(&pe), "%s: wrote outside",
          what);
    buffer *all[] = {&xb, &wb, &pb, &pe, &e1, &e2, &g1, &g2};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) buf_free(all[i]);
}

/* ---- grad ------------------------------------------------------------------------------- */

static void test_grad_case(const isa_entry *isa, int dt, int64_t n, double softcap, int weighted,
                           int stream, size_t offset, int special)
{
    const size_t es = dtype_size[dt];
    buffer xb = buf_new((size_t)n * es, offset * es);
    buffer gb = buf_new((size_t)n * es, ((offset * 5 + 1) % 8) * es); /* differs from x's */
    buffer ib = buf_new((size_t)n * es, offset * es);                 /* in place */
    buffer wb = buf_new((size_t)n * weight_size(dt), offset * weight_size(dt));
    fill_logits(dt, xb.p, n, special);
    fill_weights(dt, wb.p, n);
    const void *w = weighted ? wb.p : NULL;

    /* shift: the row max rounded to the compute type, as the driver passes it */
    ce_stats st;
    buffer sb = buf_new((size_t)n * weight_size(dt), 0);
    ce_table_portable.k[dt].stats(xb.p, n, NULL, softcap, NULL, 0, sb.p, &st);
    buf_free(&sb);
    double shift = isfinite(st.max) ? st.max + rng_uniform(-0.5, 0.5) : 0.0;
    shift = dt == FUSEDCE_F64 ? shift : (double)(float)shift;
    const double a = rng_uniform(0.1, 2.0), b = rng_uniform(-1.0, 1.0);

    isa->table->k[dt].grad(xb.p, n, xb.p, softcap, w, shift, a, b, stream, -1, 0.0, gb.p);
    /* with an element given its value (the target's) somewhere, or none, apart and in place:
     * the same bits but there; -0.375 is exact in every storage type */
    const int64_t t = n && rng_next() % 2 ? (int64_t)(rng_next() % (uint64_t)n) : -1;
    buffer tb = buf_new((size_t)n * es, ((offset * 5 + 1) % 8) * es);
    isa->table->k[dt].grad(xb.p, n, NULL, softcap, w, shift, a, b, stream, t, -0.375, tb.p);
    memcpy(ib.p, xb.p, (size_t)n * es);
    isa->table->k[dt].grad(ib.p, n, NULL, softcap, w, shift, a, b, stream, t, -0.375, ib.p);
    ce_stream_fence(); /* the caller's fence after streamed rows (kernels.h) */

    char what[200];
    snprintf(what, sizeof what, "%s grad %s n=%lld cap=%g w=%d stream=%d off=%zu special=%s",
             isa->name, dtype_name[dt], (long long)n, softcap, weighted, stream, offset,
             special_name[special]);

    const double eps = compute_eps(dt);
    int64_t bad = -1;
    double bad_got = 0, bad_want = 0, bad_tol = 0;
    for (int64_t j = 0; j < n && bad < 0; j++) {
        const double x = get_elem(dt, xb.p, j), wj = get_weight(dt, w, j);
        const double y = capped(x, softcap), th = softcap > 0 ? tanh(x / softcap) : 0.0;
        const double d = softcap > 0 ? 1 - th * th : 1.0;
        const double e = exp(y - shift), want = (a * e - b * wj) * d;
        const double got = get_elem(dt, gb.p, j);
        /* exp (2 ULP) and its argument's rounding: of y - shift, and of y when capped
         * (tanh's few ULP); the fused multiply-subtract; 1 - tanh^2; one storage rounding */
        const double scale = fabs(a * e) + fabs(b * wj);
        const double rel = eps * (8 + 2 * fabs(y - shift) + (softcap > 0 ? 12 * fabs(y) : 0));
        const double tol =
            scale * (rel * fabs(d) + (softcap > 0 ? 16 * eps : 0)) + storage_ulp(dt, want);
        int ok;
        if (isnan(want)) ok = isnan(got);
        else if (isinf(want)) ok = got == want;
        else ok = fabs(got - want) <= tol ||
                  (isinf(got) && fabs(want) >= storage_max(dt) && got * want > 0); /* overflow */
        if (!ok) {
            bad = j;
            bad_got = got;
            bad_want = want;
            bad_tol = tol;
        }
    }
    check(bad < 0, "%s: g[%lld] = %.17g, oracle %.17g (tol %.3g)", what, (long long)bad, bad_got,
          bad_want, bad_tol);
    check(buf_guards_ok(&gb) && buf_guards_ok(&ib) && buf_guards_ok(&xb) && buf_guards_ok(&tb),
          "%s: wrote outside the gradient", what);
    if (t >= 0) set_elem(dt, gb.p, t, -0.375);
    check(memcmp(tb.p, gb.p, (size_t)n * es) == 0, "%s: with the target's value at %lld, other elements differ",
          what, (long long)t);
    check(memcmp(ib.p, gb.p, (size_t)n * es) == 0, "%s: in-place result differs", what);
    buf_free(&xb);
    buf_free(&gb);
    buf_free(&tb);
    buf_free(&ib);
    buf_free(&wb);
}

/* ---- shift: same float operations as portable, so bit-exact (incl. half rounding) ------- */

static void test_shift_case(const isa_entry *isa, int dt, int64_t n, size_t offset, int special)
{
    const size_t es = dtype_size[dt];
    buffer xb = buf_new((size_t)n * es, offset * es);
    buffer ob = buf_new((size_t)n * es, ((offset + 3) % 8) * es);
    buffer pb = buf_new((size_t)n * es, 0);
    buffer ib = buf_new((size_t)n * es, offset * es);
    fill_logits(dt, xb.p, n, special);
    /* magnitudes that exercise rounding, overflow and subnormals of the half types */
    const double mag = ldexp(1.0, (int)(rng_next() % 40) - 24);
    double shift = rng_uniform(-mag, mag), c = rng_uniform(-mag, mag) * 1.37;
    if (dt != FUSEDCE_F64) {
        shift = (float)shift;
        c = (float)c;
    }

    isa->table->k[dt].shift(xb.p, n, shift, c, ob.p);
    ce_table_portable.k[dt].shift(xb.p, n, shift, c, pb.p);
    memcpy(ib.p, xb.p, (size_t)n * es);
    isa->table->k[dt].shift(ib.p, n, shift, c, ib.p);

    int64_t bad = -1;
    for (int64_t j = 0; j < n && bad < 0; j++) {
        const double got = get_elem(dt, ob.p, j), want = get_elem(dt, pb.p, j);
        const int same_bits = memcmp((char *)ob.p + j * es, (char *)pb.p + j * es, es) == 0;
        /* f32/f64 NaN payloads are the hardware's business; the half types' are ours */
        if (!(same_bits || (es > 2 && isnan(got) && isnan(want)))) bad = j;
    }
    check(bad < 0,
          "%s shift %s n=%lld off=%zu special=%s shift=%g c=%g: out[%lld] = %.9g, portable %.9g",
          isa->name, dtype_name[dt], (long long)n, offset, special_name[special], shift, c,
          (long long)bad, bad >= 0 ? get_elem(dt, ob.p, bad) : 0.0,
          bad >= 0 ? get_elem(dt, pb.p, bad) : 0.0);
    check(memcmp(ib.p, ob.p, (size_t)n * es) == 0 && buf_guards_ok(&ob) && buf_guards_ok(&ib),
          "%s shift %s n=%lld: in-place differs or wrote outside", isa->name, dtype_name[dt],
          (long long)n);
    buf_free(&xb);
    buf_free(&ob);
    buf_free(&pb);
    buf_free(&ib);
}

static double ulp_f32(double v);
static long double ulp_f64(long double v);
static double f64_reference_slack(void);

/* ---- soft targets: stats_soft and grad_soft against portable ---------------------------- */

/* Probabilities in [0, 1) with a quarter exact zeros, and zero wherever x is -inf (a zero
 * w*q must take no part in qysum, even against y = -inf). */
static void fill_probs(int dt, void *q, const void *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        const int zero = rng_next() % 4 == 0 || get_elem(dt, x, i) == -INFINITY;
        set_elem(dt, q, i, zero ? 0.0 : rng_uniform(0.0, 1.0));
    }
}

/* |got - want| within tol, or the same NaN / inf. */
static int close_or_same(double got, double want, double tol)
{
    if (isnan(want) || isnan(got)) return isnan(want) && isnan(got);
    if (isinf(want) || isinf(got)) return got == want;
    return fabs(got - want) <= tol;
}

static void test_stats_soft_case(const isa_entry *isa, int dt, int64_t n, double softcap,
                                 int weighted, int want_wsum, size_t offset, int special)
{
    if (!isa->table->k[dt].stats_soft) return; /* left to portable by the driver */
    const size_t es = dtype_size[dt];
    buffer xb = buf_new((size_t)n * es, offset * es);
    buffer qb = buf_new((size_t)n * es, ((offset + 5) % 8) * es);
    buffer wb = buf_new((size_t)n * weight_size(dt), offset * weight_size(dt));
    fill_logits(dt, xb.p, n, special);
    fill_probs(dt, qb.p, xb.p, n);
    fill_weights(dt, wb.p, n);
    const void *w = weighted ? wb.p : NULL;
    /* a NaN q is not a zero one: it reaches both q sums */
    if (special == SP_NAN && n > 0) set_elem(dt, qb.p, (int64_t)(rng_next() % (uint64_t)n), NAN);

    ce_stats got, port;
    memset(&got, 0, sizeof got);
    memset(&port, 0, sizeof port);
    buffer eb = buf_new((size_t)n * weight_size(dt), 0);
    isa->table->k[dt].stats_soft(xb.p, qb.p, n, softcap, w, want_wsum, eb.p, &got);
    ce_table_portable.k[dt].stats_soft(xb.p, qb.p, n, softcap, w, want_wsum, eb.p, &port);
    check(buf_guards_ok(&eb), "stats_soft: wrote outside e");
    buf_free(&eb);

    char what[200];
    snprintf(what, sizeof what, "%s stats_soft %s n=%lld cap=%g w=%d wsum=%d off=%zu special=%s",
             isa->name, dtype_name[dt], (long long)n, softcap, weighted, want_wsum, offset,
             special_name[special]);
    const double eps = compute_eps(dt);
    /* the stats part is ce_stats' own (tested above); the q sums: float blocks, then double */
    double wq_abs = 0, wqy_abs = 0, ymax = 0;
    for (int64_t i = 0; i < n; i++) {
        const double wq = get_weight(dt, w, i) * get_elem(dt, qb.p, i);
        const double y = capped(get_elem(dt, xb.p, i), softcap);
        wq_abs += fabs(wq);
        /* relative to the max (kernels.h); under a softcap that max is itself a rounded tanh */
        if (wq != 0)
            wqy_abs += fabs(wq * (y - ce_stats_ref(port.max))) +
                       (softcap > 0 ? 8 * fabs(wq) * (1 + fabs(ce_stats_ref(port.max))) : 0);
        if (isfinite(y) && fabs(y) > ymax) ymax = fabs(y);
    }
    const double terms = 16 + (n < 256 ? n : 256);
    check(got.max == port.max ||
              (softcap > 0 && fabs(got.max - port.max) <= 8 * eps * (1 + fabs(port.max))),
          "%s: max %.17g, portable %.17g", what, got.max, port.max);
    check(close_or_same(got.sum, port.sum, 64 * eps * fabs(port.sum) * (1 + ymax)),
          "%s: sum %.17g, portable %.17g", what, got.sum, port.sum);
    if (want_wsum)
        check(close_or_same(got.wsum, port.wsum,
                            2 * eps * terms * (1 + fabs(port.wsum)) * (1 + ymax)),
              "%s: wsum %.17g, portable %.17g", what, got.wsum, port.wsum);
    check(close_or_same(got.qsum, port.qsum, 2 * eps * terms * wq_abs),
          "%s: qsum %.17g, portable %.17g", what, got.qsum, port.qsum);
    check(close_or_same(got.qysum, port.qysum, 2 * eps * (terms + (softcap > 0 ? 8 : 0)) * wqy_abs),
          "%s: qysum %.17g, portable %.17g", what, got.qysum, port.qysum);
    check(buf_guards_ok(&xb) && buf_guards_ok(&qb) && buf_guards_ok(&wb), "%s: inputs changed",
          what);
    buf_free(&xb);
    buf_free(&qb);
    buf_free(&wb);
}

static void test_grad_soft_case(const isa_entry *isa, int dt, int64_t n, double softcap,
                                int weighted, int stream, size_t offset, int special)
{
    if (!isa->table->k[dt].grad_soft) return; /* left to portable by the driver */
    const size_t es = dtype_size[dt];
    buffer xb = buf_new((size_t)n * es, offset * es);
    buffer qb = buf_new((size_t)n * es, ((offset + 5) % 8) * es);
    buffer gb = buf_new((size_t)n * es, ((offset * 5 + 1) % 8) * es);
    buffer pb = buf_new((size_t)n * es, 0);
    buffer ib = buf_new((size_t)n * es, offset * es); /* in place */
    buffer wb = buf_new((size_t)n * weight_size(dt), offset * weight_size(dt));
    fill_logits(dt, xb.p, n, special);
    fill_probs(dt, qb.p, xb.p, n);
    fill_weights(dt, wb.p, n);
    const void *w = weighted ? wb.p : NULL;

    ce_stats st;
    buffer sb = buf_new((size_t)n * weight_size(dt), 0);
    ce_table_portable.k[dt].stats(xb.p, n, NULL, softcap, NULL, 0, sb.p, &st);
    buf_free(&sb);
    double shift = isfinite(st.max) ? st.max + rng_uniform(-0.5, 0.5) : 0.0;
    shift = dt == FUSEDCE_F64 ? shift : (double)(float)shift;
    const double a = rng_uniform(0.1, 2.0), bq = rng_uniform(-1.5, 1.5);
    const double b0 = rng_uniform(-0.2, 0.2);

    isa->table->k[dt].grad_soft(xb.p, qb.p, n, softcap, w, shift, a, bq, b0, stream, gb.p);
    ce_table_portable.k[dt].grad_soft(xb.p, qb.p, n, softcap, w, shift, a, bq, b0, stream, pb.p);
    memcpy(ib.p, xb.p, (size_t)n * es);
    isa->table->k[dt].grad_soft(ib.p, qb.p, n, softcap, w, shift, a, bq, b0, stream, ib.p);
    ce_stream_fence();

    char what[200];
    snprintf(what, sizeof what, "%s grad_soft %s n=%lld cap=%g w=%d stream=%d off=%zu special=%s",
             isa->name, dtype_name[dt], (long long)n, softcap, weighted, stream, offset,
             special_name[special]);
    const double eps = compute_eps(dt);
    int64_t bad = -1;
    for (int64_t j = 0; j < n && bad < 0; j++) {
        const double x = get_elem(dt, xb.p, j), y = capped(x, softcap);
        const double bw =
            fabs(get_weight(dt, w, j)) * (fabs(bq * get_elem(dt, qb.p, j)) + fabs(b0));
        /* both sides' errors, as in the grad test; bq*q + b0 may cancel too */
        const double scale = fabs(a * exp(y - shift)) + bw;
        const double rel = eps * (16 + 4 * fabs(y - shift) + (softcap > 0 ? 24 * fabs(y) + 32 : 0));
        const double want = get_elem(dt, pb.p, j), got = get_elem(dt, gb.p, j);
        const double tol = scale * rel + 2 * storage_ulp(dt, want);
        if (!close_or_same(got, want, tol) &&
            !(isinf(got) != isinf(want) && fmax(fabs(got), fabs(want)) >= storage_max(dt)))
            bad = j;
    }
    check(bad < 0, "%s: g[%lld] = %.17g, portable %.17g", what, (long long)bad,
          bad >= 0 ? get_elem(dt, gb.p, bad) : 0.0, bad >= 0 ? get_elem(dt, pb.p, bad) : 0.0);
    check(memcmp(ib.p, gb.p, (size_t)n * es) == 0, "%s: in-place result differs", what);
    check(buf_guards_ok(&gb) && buf_guards_ok(&ib) && buf_guards_ok(&xb) && buf_guards_ok(&qb),
          "%s: wrote outside the gradient", what);
    buf_free(&xb);
    buf_free(&qb);
    buf_free(&gb);
    buf_free(&pb);
    buf_free(&ib);
    buf_free(&wb);
}

/* ---- binary cross-entropy against portable ---------------------------------------------- */

/* variant bits: weight, pos_weight, go, loss output off, grad output off, unaligned */
static void test_bce_case(const isa_entry *isa, int dt, int64_t n, int variant, int special)
{
    if (!isa->table->k[dt].bce) return; /* left to portable by the driver */
    const int weighted = variant & 1, has_pw = (variant >> 1) & 1, has_go = (variant >> 2) & 1;
    const int want_l = !((variant >> 3) & 1), want_g = !((variant >> 4) & 1);
    const size_t offset = (variant >> 5) & 1 ? (size_t)(1 + rng_next() % 7) : 0;
    const size_t es = dtype_size[dt], ws = weight_size(dt);
    buffer xb = buf_new((size_t)n * es, offset * es);
    buffer tb = buf_new((size_t)n * es, ((offset + 3) % 8) * es);
    buffer lb = buf_new((size_t)n * es, ((offset + 1) % 8) * es), plb = buf_new((size_t)n * es, 0);
    buffer gb = buf_new((size_t)n * es, ((offset * 5 + 1) % 8) * es);
    buffer pgb = buf_new((size_t)n * es, 0);
    buffer ib = buf_new((size_t)n * es, offset * es), ilb = buf_new((size_t)n * es, 0);
    buffer wb = buf_new((size_t)n * ws, offset * ws), pwb = buf_new((size_t)n * ws, 0);
    buffer gob = buf_new((size_t)n * ws, 0);
    fill_logits(dt, xb.p, n, special);
    for (int64_t i = 0; i < n; i++) {
        const uint64_t r = rng_next() % 16;
        if (r == 0) set_elem(dt, xb.p, i, (rng_next() & 1 ? 1e4 : -1e4)); /* e^-|x| = 0 */
        if (r == 1 && isfinite(get_elem(dt, xb.p, i))) set_elem(dt, xb.p, i, rng_logspaced(-30, 0));
        const uint64_t u = rng_next() % 8;
        set_elem(dt, tb.p, i, u == 0 ? 0.0 : u == 1 ? 1.0 : rng_uniform(0.0, 1.0));
    }
    fill_weights(dt, wb.p, n);
    fill_weights(dt, pwb.p, n);
    for (int64_t i = 0; i < n; i++) {
        const double v = rng_uniform(-2.0, 2.0);
        if (dt == FUSEDCE_F64) ((double *)gob.p)[i] = v;
        else ((float *)gob.p)[i] = (float)v;
    }
    const void *w = weighted ? wb.p : NULL, *pw = has_pw ? pwb.p : NULL;
    const void *go = has_go ? gob.p : NULL;
    const double scale = rng_uniform(-2.0, 2.0);
    void *l = want_l ? lb.p : NULL, *g = want_g ? gb.p : NULL;

    const double sum = isa->table->k[dt].bce(xb.p, tb.p, n, w, pw, go, scale, l, g);
    const double psum = ce_table_portable.k[dt].bce(xb.p, tb.p, n, w, pw, go, scale, plb.p, pgb.p);
    memcpy(ib.p, xb.p, (size_t)n * es);
    const double isum = isa->table->k[dt].bce(ib.p, tb.p, n, w, pw, go, scale,
                                              want_l ? ilb.p : NULL, want_g ? ib.p : NULL);

    char what[200];
    snprintf(what, sizeof what, "%s bce %s n=%lld w=%d pw=%d go=%d l=%d g=%d off=%zu special=%s",
             isa->name, dtype_name[dt], (long long)n, weighted, has_pw, has_go, want_l, want_g,
             offset, special_name[special]);
    const double eps = compute_eps(dt);
    int64_t bad_l = -1, bad_g = -1;
    double labs_sum = 0;
    for (int64_t j = 0; j < n; j++) {
        const double x = get_elem(dt, xb.p, j), t = get_elem(dt, tb.p, j);
        const double wj = get_weight(dt, w, j), pwj = get_weight(dt, pw, j);
        const double pl = get_elem(dt, plb.p, j);
        if (isfinite(pl)) labs_sum += fabs(pl);
        /* loss: a sum of two non-negative terms, each a few ULP (exp, log1p, products) */
        if (want_l && bad_l < 0) {
            const double got = get_elem(dt, lb.p, j);
            if (!close_or_same(got, pl, 24 * eps * fabs(pl) + 2 * storage_ulp(dt, pl)) &&
                !(isinf(got) != isinf(pl) && fmax(fabs(got), fabs(pl)) >= storage_max(dt)))
                bad_l = j;
        }
        /* gradient: L = 1 + (pw - 1)t and L*sig - pw*t cancel; the error is relative to the
         * terms' size */
        if (want_g && bad_g < 0) {
            const double sj = (go ? get_weight(dt, go, j) : scale) * wj;
            const double sig = 1 / (1 + exp(-x));
            const double terms = fabs(sj) * ((1 + fabs((pwj - 1) * t)) * sig + fabs(pwj * t));
            const double pgv = get_elem(dt, pgb.p, j), got = get_elem(dt, gb.p, j);
            if (!close_or_same(got, pgv, 16 * eps * terms + 2 * storage_ulp(dt, pgv))) bad_g = j;
        }
    }
    check(bad_l < 0, "%s: l[%lld] = %.17g, portable %.17g", what, (long long)bad_l,
          bad_l >= 0 ? get_elem(dt, lb.p, bad_l) : 0.0,
          bad_l >= 0 ? get_elem(dt, plb.p, bad_l) : 0.0);
    check(bad_g < 0, "%s: g[%lld] = %.17g, portable %.17g", what, (long long)bad_g,
          bad_g >= 0 ? get_elem(dt, gb.p, bad_g) : 0.0,
          bad_g >= 0 ? get_elem(dt, pgb.p, bad_g) : 0.0);
    /* float block sums (portable: 256 terms) of values each a few ULP apart, then double;
     * the sum is of the unrounded losses, which a half type may store as 0 */
    check(close_or_same(sum, psum, eps * (48 + (n < 256 ? n : 256)) * fmax(labs_sum, fabs(psum))),
          "%s: sum %.17g, portable %.17g", what, sum, psum);
    check(isum == sum || (isnan(isum) && isnan(sum)), "%s: in-place sum differs", what);
    check((!want_g || memcmp(ib.p, gb.p, (size_t)n * es) == 0) &&
              (!want_l || memcmp(ilb.p, lb.p, (size_t)n * es) == 0),
          "%s: in-place result differs", what);
    check(buf_guards_ok(&xb) && buf_guards_ok(&tb) && buf_guards_ok(&lb) && buf_guards_ok(&gb) &&
              buf_guards_ok(&ib) && buf_guards_ok(&ilb) && buf_guards_ok(&wb),
          "%s: wrote outside the outputs", what);
    /* outputs off: nothing written */
    unsigned char fill[64];
    memset(fill, 0xA5, sizeof fill);
    const size_t head = (size_t)n * es < 64 ? (size_t)n * es : 64;
    check((want_l || memcmp(lb.p, fill, head) == 0) && (want_g || memcmp(gb.p, fill, head) == 0),
          "%s: wrote an output that is off", what);
    buffer *all[] = {&xb, &tb, &lb, &plb, &gb, &pgb, &ib, &ilb, &wb, &pwb, &gob};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) buf_free(all[i]);
}

/* softplus(x) through bce (t = 0, no weights): the vector exp and log1p end to end, in ULP
 * of the compute type against long double. */
static void test_softplus(const isa_entry *isa)
{
    if (!isa->table->k[FUSEDCE_F32].bce || !isa->table->k[FUSEDCE_F64].bce) return;
    double worst32 = 0, worst64 = 0, wx32 = 0, wx64 = 0;
    for (int i = 0; i < 1 << 17; i++) {
        const double x = i % 2 ? rng_uniform(-40, 40) : rng_logspaced(-30, 6);
        const float xf = (float)x, tf = 0;
        float lf;
        isa->table->k[FUSEDCE_F32].bce(&xf, &tf, 1, NULL, NULL, NULL, 1.0, &lf, NULL);
        const long double r32 = log1pl(expl((long double)xf));
        const double e32 =
            (double)(fabsl((long double)lf - r32) / (long double)ulp_f32((double)r32));
        if (e32 > worst32) worst32 = e32, wx32 = xf;
        const double td = 0;
        double ld;
        isa->table->k[FUSEDCE_F64].bce(&x, &td, 1, NULL, NULL, NULL, 1.0, &ld, NULL);
        const long double r64 = log1pl(expl((long double)x));
        const double e64 = (double)(fabsl((long double)ld - r64) / ulp_f64(r64));
        if (e64 > worst64) worst64 = e64, wx64 = x;
    }
    printf("%-8s softplus (bce): max %.3f ULP f32 (at %.9g), %.3f ULP f64 (at %.17g)\n",
           isa->name, worst32, wx32, worst64, wx64);
    check(worst32 <= 4.0 && worst64 <= 4.0 + 2 * f64_reference_slack(),
          "%s softplus max ULP %.3f / %.3f > 4", isa->name, worst32, worst64);
}

/* ---- accuracy of the vector exp (and of tanh through the softcap path) ------------------ */

static double ulp_f32(double v)
{
    int e;
    v = fabs(v);
    if (v < 0x1p-126) return 0x1p-149;
    frexp(v, &e);
    return ldexp(1.0, e - 24);
}

/* long double references are wider than double (x86 80-bit, AArch64 quad) except under
 * valgrind, which computes them as double: then the references add errors of their own
 * (1 ULP here; glibc's exp is within that, its tanh within twice that). */
static double f64_reference_slack(void)
{
    volatile long double one = 1.0L, tiny = 0x1p-60L;
    return one + tiny != one ? 0.0 : 1.0;
}

static long double ulp_f64(long double v)
{
    int e;
    v = fabsl(v);
    if (v < 0x1p-1022L) return 0x1p-1074L;
    frexpl(v, &e);
    return ldexpl(1.0L, e - 53);
}

static float f32_from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

/* exp over floats in [lo, 0) or [0, hi) by bit pattern: log-uniform, every float with
 * stride 1. Returns the max ULP error; writes the worst x. */
#define CHUNK 4096
static double sweep_exp_f32(const ce_isa_table *t, uint32_t from, uint32_t to, uint32_t stride,
                            float *worst_x)
{
    static float xs[CHUNK], ys[CHUNK];
    double worst = 0.0;
    uint64_t u = from;
    while (u < to) {
        int m = 0;
        for (; m < CHUNK && u < to; m++, u += stride) xs[m] = f32_from_bits((uint32_t)u);
        t->vexp_f32(xs, m, ys);
        for (int i = 0; i < m; i++) {
            const double ref = exp((double)xs[i]);
            double err;
            if (ref > 0x1.fffffep127) err = ys[i] == INFINITY ? 0.0 : INFINITY;
            else err = fabs((double)ys[i] - ref) / ulp_f32(ref);
            if (!(err <= worst)) {
                worst = err;
                *worst_x = xs[i];
            }
        }
    }
    return worst;
}

static double sweep_exp_f64(const ce_isa_table *t, int64_t points, double lo, double hi,
                            double *worst_x)
{
    static double xs[CHUNK], ys[CHUNK];
    double worst = 0.0;
    for (int64_t done = 0; done < points;) {
        int m = 0;
        for (; m < CHUNK && done < points; m++, done++) {
            /* half uniform, half log-uniform near 0 in both signs */
            if (done & 1) xs[m] = rng_uniform(lo, hi);
            else xs[m] = rng_logspaced(-50, 10);
        }
        t->vexp_f64(xs, m, ys);
        for (int i = 0; i < m; i++) {
            const long double ref = expl((long double)xs[i]);
            double err;
            if (ref > 0x1.fffffffffffffp1023L) err = ys[i] == INFINITY ? 0.0 : INFINITY;
            else err = (double)(fabsl((long double)ys[i] - ref) / ulp_f64(ref));
            if (!(err <= worst)) {
                worst = err;
                *worst_x = xs[i];
            }
        }
    }
    return worst;
}

static void test_exp(const isa_entry *isa, int exhaustive)
{
    const ce_isa_table *t = isa->table;
    float wx_neg = 0, wx_pos = 0;
    const uint32_t stride = exhaustive ? 1 : 2039;
    /* x <= 0 down to below the underflow, and 0 <= x up to beyond the overflow */
    const double neg = sweep_exp_f32(t, 0x80000000u, 0xC2D00001u, stride, &wx_neg); /* to -104 */
    const double pos = sweep_exp_f32(t, 0x00000000u, 0x42B20001u, stride, &wx_pos); /* to 89 */
    printf("%-8s exp f32: max %.3f ULP for x <= 0 (at %.9g), %.3f ULP for x >= 0 (at %.9g)%s\n",
           isa->name, neg, (double)wx_neg, pos, (double)wx_pos, exhaustive ? ", every float" : "");
    check(neg <= 2.0 && pos <= 2.0, "%s exp f32 max ULP %.3f / %.3f > 2", isa->name, neg, pos);

    double wx64 = 0, wxn = 0;
    const int64_t pts = exhaustive ? (1 << 24) : (1 << 18);
    const double e64 = sweep_exp_f64(t, pts, -746.0, 0.0, &wx64);
    const double e64p = sweep_exp_f64(t, pts / 4, 0.0, 710.0, &wxn);
    printf("%-8s exp f64: max %.3f ULP for x <= 0 (at %.17g), %.3f ULP for x >= 0 (at %.17g)\n",
           isa->name, e64, wx64, e64p, wxn);
    const double limit64 = 2.0 + f64_reference_slack();
    check(e64 <= limit64 && e64p <= limit64, "%s exp f64 max ULP %.3f / %.3f > %g", isa->name, e64,
          e64p, limit64);

    /* special values, and every tail length */
    const float sf[] = {-INFINITY, INFINITY, NAN, -NAN, -1000.0f, 1000.0f, -0.0f, 0.0f,
                        -103.97f, -103.98f, 88.72283f, 88.72284f};
    float yf[12];
    t->vexp_f32(sf, 12, yf);
    check(yf[0] == 0.0f && !signbit(yf[0]) && yf[1] == INFINITY && isnan(yf[2]) && isnan(yf[3]) &&
              yf[4] == 0.0f && yf[5] == INFINITY && yf[6] == 1.0f && yf[7] == 1.0f &&
              yf[9] == 0.0f && yf[11] == INFINITY && yf[10] < INFINITY,
          "%s exp f32 special values: %g %g %g %g %g %g %g %g %g %g %g %g", isa->name, yf[0], yf[1],
          yf[2], yf[3], yf[4], yf[5], yf[6], yf[7], yf[8], yf[9], yf[10], yf[11]);
    const double sd[] = {-INFINITY, INFINITY, NAN, -10000.0, 10000.0, -0.0, -745.2, 709.79};
    double yd[8];
    t->vexp_f64(sd, 8, yd);
    check(yd[0] == 0.0 && !signbit(yd[0]) && yd[1] == INFINITY && isnan(yd[2]) && yd[3] == 0.0 &&
              yd[4] == INFINITY && yd[5] == 1.0 && yd[6] == 0.0 && yd[7] == INFINITY,
          "%s exp f64 special values", isa->name);
    float xf[67], yf_all[67], yf_tail[67];
    double xd[67], yd_all[67], yd_tail[67];
    for (int i = 0; i < 67; i++) xd[i] = xf[i] = (float)rng_uniform(-30, 3);
    t->vexp_f32(xf, 67, yf_all);
    t->vexp_f64(xd, 67, yd_all);
    int tails_ok = 1;
    for (int n = 0; n <= 33; n++) {
        memset(yf_tail, 0, sizeof yf_tail);
        memset(yd_tail, 0, sizeof yd_tail);
        t->vexp_f32(xf + 1, n, yf_tail + 1);
        t->vexp_f64(xd + 1, n, yd_tail + 1);
        for (int i = 0; i < 67; i++) {
            const int in = i >= 1 && i <= n;
            const int same = in ? yf_tail[i] == yf_all[i] && yd_tail[i] == yd_all[i]
                                : yf_tail[i] == 0 && yd_tail[i] == 0; /* untouched */
            if (!same) tails_ok = 0;
        }
    }
    check(tails_ok, "%s vexp tails", isa->name);
}

/* The softmax's exp, both forms (vexpn_f32, and vexpn_nonpos_f32 which pass 1 takes): every
 * float (exhaustive) or a sample in [-87, 0], in ULP of the result; where results are at least
 * 2^-24 (x >= -16.6, what a sum or a probability can tell from 0 against the row's largest
 * term, 1) on its own. */
static void test_expn_form(const isa_entry *isa, int exhaustive, int nonpos)
{
    static float xs[CHUNK], ys[CHUNK];
    void (*expn)(const float *, int64_t, float *) = nonpos ? isa->table->vexpn_nonpos_f32 : isa->table->vexpn_f32;
    const char *form = nonpos ? " (x <= 0 form)" : "";
    const uint32_t stride = exhaustive ? 1 : 2039;
    double worst = 0, worst_big = 0;
    float wx = 0, wx_big = 0;
    uint64_t u = 0x80000000u;
    while (u < 0xC2AE0001u) { /* -0 to -87 */
        int m = 0;
        for (; m < CHUNK && u < 0xC2AE0001u; m++, u += stride) xs[m] = f32_from_bits((uint32_t)u);
        expn(xs, m, ys);
        for (int i = 0; i < m; i++) {
            const double ref = exp((double)xs[i]), err = fabs((double)ys[i] - ref) / ulp_f32(ref);
            if (!(err <= worst)) worst = err, wx = xs[i];
            if (ref >= 0x1p-24 && !(err <= worst_big)) worst_big = err, wx_big = xs[i];
        }
    }
    printf("%-8s softmax exp f32%s: max %.3f ULP over [-87, 0] (at %.9g), %.3f ULP where >= 2^-24 (at %.9g)%s\n",
           isa->name, form, worst, (double)wx, worst_big, (double)wx_big, exhaustive ? ", every float" : "");
    check(worst <= 6.0 && worst_big <= 3.0, "%s softmax exp%s max ULP %.3f / %.3f", isa->name, form, worst,
          worst_big);
    /* special values; the general form also a little above 0 (a backward from a given lse) and
     * where the power of two overflows */
    const float sp[] = {-INFINITY, NAN, -0.0f, 0.0f, -1000.0f, -88.0f, 1e-7f, 88.3f, 89.0f, INFINITY}; /* NEON overflows from 88.38 */
    float ysp[10];
    const int n_sp = nonpos ? 6 : 10;
    expn(sp, n_sp, ysp);
    check(ysp[0] == 0.0f && !signbit(ysp[0]) && isnan(ysp[1]) && ysp[2] == 1.0f && ysp[3] == 1.0f &&
              ysp[4] == 0.0f && ysp[5] >= 0.0f && ysp[5] < 0x1p-126f, /* flushed or subnormal */
          "%s softmax exp%s special values: %g %g %g %g %g %g", isa->name, form, ysp[0], ysp[1], ysp[2], ysp[3],
          ysp[4], ysp[5]);
    if (!nonpos)
        check(fabsf(ysp[6] - 1.0000001f) <= 0x1p-23f && fabs(ysp[7] / exp((double)88.3f) - 1) <= 6 * 0x1p-24 &&
                  ysp[8] == INFINITY && ysp[9] == INFINITY,
              "%s softmax exp above 0: %.9g %.9g %g %g", isa->name, ysp[6], ysp[7], ysp[8], ysp[9]);
}

/* For x <= 0 both forms give the same bits: a gradient that takes exp(y - max) again (in place)
 * must equal one made from pass 1's stored exponentials (out=). */
static void test_expn_forms_agree(const isa_entry *isa, int exhaustive)
{
    static float xs[CHUNK], general[CHUNK], nonpos[CHUNK];
    const uint32_t stride = exhaustive ? 1 : 1021;
    int64_t differ = 0;
    float first = 0;
    for (uint64_t u = 0x80000000u; u < 0xFF800001u;) { /* -0 to -inf */
        int m = 0;
        for (; m < CHUNK && u < 0xFF800001u; m++, u += stride) xs[m] = f32_from_bits((uint32_t)u);
        isa->table->vexpn_f32(xs, m, general);
        isa->table->vexpn_nonpos_f32(xs, m, nonpos);
        for (int i = 0; i < m; i++)
            if (f32_bits(general[i]) != f32_bits(nonpos[i]) && differ++ == 0) first = xs[i];
    }
    check(differ == 0, "%s softmax exp: the two forms differ at %lld arguments <= 0 (first %.9g)", isa->name,
          (long long)differ, (double)first);
}

static void test_expn(const isa_entry *isa, int exhaustive)
{
    test_expn_form(isa, exhaustive, 0);
    test_expn_form(isa, exhaustive, 1);
    test_expn_forms_agree(isa, exhaustive);
}

/* tanh through stats: with softcap 1 and one element, max is tanh(x) in the compute type. */
static void test_tanh(const isa_entry *isa, int exhaustive)
{
    double worst32 = 0, worst64 = 0, wx32 = 0, wx64 = 0;
    for (int i = 0; i < (exhaustive ? 1 << 24 : 1 << 17); i++) {
        /* uniform, around the switch from polynomial to exp at 0.55, and log-spaced */
        const double x = i % 4 == 1 ? rng_uniform(-12, 12)
                         : i % 4 == 3 ? rng_uniform(-0.7, 0.7)
                                      : rng_logspaced(-36, 4);
        const float xf = (float)x;
        ce_stats s;
        double e[2];
        isa->table->k[FUSEDCE_F32].stats(&xf, 1, NULL, 1.0, NULL, 1, e, &s);
        const double ref32 = tanh((double)xf), err32 = fabs(s.max - ref32) / ulp_f32(ref32);
        if (err32 > worst32) worst32 = err32, wx32 = xf;
        isa->table->k[FUSEDCE_F64].stats(&x, 1, NULL, 1.0, NULL, 1, e, &s);
        const long double ref64 = tanhl((long double)x);
        const double err64 = (double)(fabsl((long double)s.max - ref64) / ulp_f64(ref64));
        if (err64 > worst64) worst64 = err64, wx64 = x;
    }
    printf("%-8s tanh (softcap): max %.3f ULP f32 (at %.9g), %.3f ULP f64 (at %.17g)\n", isa->name,
           worst32, wx32, worst64, wx64);
    if (isa->table != &ce_table_portable)
        /* a double-only tanhl (valgrind) is itself up to 2 ULP off */
        check(worst32 <= 2.0 && worst64 <= 2.0 + 2 * f64_reference_slack(),
              "%s tanh max ULP %.3f / %.3f > 2", isa->name, worst32, worst64);
    float inf_in[2] = {INFINITY, -INFINITY};
    ce_stats s;
    double e[2];
    isa->table->k[FUSEDCE_F32].stats(inf_in, 2, NULL, 3.0, NULL, 1, e, &s);
    check(s.max == 3.0 && s.wsum == -6.0 && s.wtotal == 2.0, "%s softcap of +-inf: max %g wsum %g",
          isa->name, s.max, s.wsum);
}

/* ---- main ------------------------------------------------------------------------------- */

/* Every tail length up to 64, then lengths spanning several vectors and stats blocks. */
static int64_t length_at(int i)
{
    static const int64_t longer[] = {100, 1000, 2048, 2049, 4099, 6200};
    return i <= 64 ? i : longer[i - 65];
}
#define N_LENGTHS (65 + 6)

/* ---- hashes ------------------------------------------------------------------------------ */

/* Lines are per architecture: portable's hashes follow the C library's expf and tanhf. */
#if defined(__x86_64__)
#define HASH_ARCH "x86_64"
#elif defined(__aarch64__)
#define HASH_ARCH "aarch64"
#else
#define HASH_ARCH "other"
#endif

static void print_hash(const char *isa, const char *dtype, const char *name, uint64_t hash, void *ctx)
{
    (void)ctx;
    printf("%s %s %s %s %016llx\n", HASH_ARCH, isa, dtype, name, (unsigned long long)hash);
}

typedef struct {
    char arch[16], isa[16], dtype[8], name[96];
    unsigned long long hash;
    int seen;
} recorded_hash;
typedef struct {
    recorded_hash *rec;
    int n;
    long mismatched, missing;
} hash_file;

static void compare_hash(const char *isa, const char *dtype, const char *name, uint64_t hash, void *ctx)
{
    hash_file *f = (hash_file *)ctx;
    for (int i = 0; i < f->n; i++) {
        recorded_hash *r = &f->rec[i];
        if (strcmp(r->isa, isa) || strcmp(r->dtype, dtype) || strcmp(r->name, name)) continue;
        r->seen = 1;
        if (r->hash != (unsigned long long)hash) {
            f->mismatched++;
            check(0, "hash of %s %s %s: %016llx, recorded %016llx", isa, dtype, name,
                  (unsigned long long)hash, r->hash);
        }
        return;
    }
    f->missing++;
    check(0, "hash of %s %s %s (%016llx) is not recorded", isa, dtype, name, (unsigned long long)hash);
}

/* Every hash of the ISAs this CPU runs against the file's (lines of other ISAs and
 * architectures are left). */
static void check_hashes(const char *path)
{
    FILE *fp = fopen(path, "r");
    if (!fp) {
        check(0, "cannot read %s", path);
        return;
    }
    hash_file f = {NULL, 0, 0, 0};
    int cap = 0;
    char line[256];
    while (fgets(line, sizeof line, fp)) {
        if (f.n == cap) {
            cap = cap ? 2 * cap : 1024;
            f.rec = realloc(f.rec, (size_t)cap * sizeof *f.rec);
            if (!f.rec) exit(2);
        }
        recorded_hash *r = &f.rec[f.n];
        r->seen = 0;
        if (sscanf(line, "%15s %15s %7s %95s %llx", r->arch, r->isa, r->dtype, r->name, &r->hash) == 5 &&
            strcmp(r->arch, HASH_ARCH) == 0)
            f.n++;
    }
    fclose(fp);
    fails_to_show = n_failed + 20;
    for (int ii = 0; ii < N_ISAS; ii++) {
        if (!isa_runs(&isas[ii], 1)) continue;
        const long mismatched = f.mismatched, missing = f.missing;
        kernel_hashes(isas[ii].name, isas[ii].table, compare_hash, &f);
        for (int i = 0; i < f.n; i++)
            check(f.rec[i].seen || strcmp(f.rec[i].isa, isas[ii].name) != 0,
                  "recorded hash %s %s %s was not produced", f.rec[i].isa, f.rec[i].dtype, f.rec[i].name);
        printf("%-8s hashes: %s (%ld differ, %ld not recorded)\n", isas[ii].name,
               f.mismatched == mismatched && f.missing == missing ? "as recorded" : "CHANGED",
               f.mismatched - mismatched, f.missing - missing);
    }
    free(f.rec);
}

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "--hashes") == 0) {
        for (int ii = 0; ii < N_ISAS; ii++)
            if (isa_runs(&isas[ii], 1)) kernel_hashes(isas[ii].name, isas[ii].table, print_hash, NULL);
        return 0;
    }
    const char *hash_path = argc == 3 && strcmp(argv[1], "--check-hashes") == 0 ? argv[2] : NULL;
    if (argc > 1 && !hash_path) {
        fprintf(stderr, "usage: %s [--hashes | --check-hashes FILE]\n", argv[0]);
        return 2;
    }
    const char *ex = getenv("FUSEDCE_TEST_EXHAUSTIVE");
    const int exhaustive = ex && *ex && *ex != '0';
    /* FUSEDCE_TEST_SMALL=1 (valgrind): every length and special value still, but a subset
     * of the option variants in which each option bit is both on and off, and no long rows */
    const char *sm = getenv("FUSEDCE_TEST_SMALL");
    const int small = sm && *sm && *sm != '0';
    const int variant_step = small ? 5 : 1;      /* 0, 5, 10, 15: each of 4 bits on and off */
    const int bce_variant_step = small ? 9 : 1;  /* 0, 9, ..., 63: each of 6 bits on and off */
    for (int ii = 0; ii < N_ISAS; ii++) {
        const isa_entry *isa = &isas[ii];
        if (!isa_runs(isa, 0)) continue;
        const long failed_before = n_failed;
        fails_to_show = n_failed + 20; /* the first few of each ISA */
        if (isa->table != &ce_table_portable) {
            check(isa->vocab_test != NULL, "%s: its vocabulary test is not built in", isa->name);
            if (isa->vocab_test) isa->vocab_test(check);
        }
        test_exp(isa, exhaustive);
        test_expn(isa, exhaustive);
        test_tanh(isa, exhaustive);
        test_softplus(isa);
        for (int dt = 0; dt < 4; dt++) {
            for (int li = 0; li < N_LENGTHS; li++) {
                const int64_t n = length_at(li);
                for (int special = 0; special < SP_COUNT; special++)
                    /* softcap, weight, want_wsum (stats) / stream (grad), unaligned: on or off */
                    for (int variant = 0; variant < 16; variant += variant_step) {
                        const double softcap = variant & 1 ? rng_uniform(2.0, 30.0) : 0.0;
                        const int weighted = (variant >> 1) & 1, flag = (variant >> 2) & 1;
                        const size_t offset = (variant >> 3) ? (size_t)(1 + rng_next() % 7) : 0;
                        test_stats_case(isa, dt, n, softcap, weighted, flag, offset, special);
                        test_grad_case(isa, dt, n, softcap, weighted, flag, offset, special);
                        test_stats_soft_case(isa, dt, n, softcap, weighted, flag, offset,
                                             special);
                        test_grad_soft_case(isa, dt, n, softcap, weighted, flag, offset, special);
                    }
                for (int special = 0; special < SP_COUNT; special++)
                    for (int variant = 0; variant < 64; variant += bce_variant_step)
                        test_bce_case(isa, dt, n, variant, special);
                for (int variant = 0; variant < 16; variant += variant_step)
                    test_grad_exp_case(isa, dt, n, variant & 1, (variant >> 1) & 1, (variant >> 2) & 1,
                                       (variant >> 3) ? (size_t)(1 + rng_next() % 7) : 0);
                for (int special = 0; special < SP_COUNT; special++)
                    for (int variant = 0; variant < 16; variant += variant_step)
                        test_stats_grad_case(isa, dt, n, variant & 1, (variant >> 1) & 1, (variant >> 2) & 1,
                                             (variant >> 3) ? (size_t)(1 + rng_next() % 7) : 0, special);
                for (int special = 0; special < SP_COUNT; special++)
                    for (size_t offset = 0; offset < 3; offset++)
                        test_shift_case(isa, dt, n, offset * 3, special);
                for (int special = 0; special < SP_COUNT; special++)
                    for (size_t offset = 0; offset < 2; offset++) test_stats_ahead_case(isa, dt, n, offset * 5, special);
            }
            if (small) continue;
            /* a long row: block merging keeps the float sums accurate */
            test_stats_case(isa, dt, 262147, 0.0, 1, 1, 1, SP_NONE);
            test_grad_case(isa, dt, 262147, 0.0, 1, 1, 1, SP_NONE);
            test_stats_soft_case(isa, dt, 262147, 0.0, 1, 1, 1, SP_NONE);
            test_grad_soft_case(isa, dt, 262147, 0.0, 1, 1, 1, SP_NONE);
            test_bce_case(isa, dt, 262147, 7 | 32, SP_NONE);
            test_grad_exp_case(isa, dt, 262147, 1, 1, 1, 1);
            test_stats_grad_case(isa, dt, 262147, 1, 1, 1, 1, SP_NONE);
            test_stats_ahead_case(isa, dt, 262147, 1, SP_NONE);
        }
        printf("%-8s %s\n", isa->name, n_failed == failed_before ? "ok" : "FAILED");
    }
    if (hash_path) check_hashes(hash_path);
    printf("%ld passed, %ld failed\n", n_passed, n_failed);
    return n_failed ? 1 : 0;
}
