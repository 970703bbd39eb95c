/* Microbenchmark of the row primitives of every compiled ISA (one thread), built with the ISA
 * files of this machine's architecture (tests/c/isas.sh reads them from csrc/isa_list.h):
 *
 *   f="-O3 -fno-math-errno -ffp-contract=off -falign-loops=64 -Icsrc -Icsrc/include" objs=""
 *   while read -r isa flags; do cc $f $flags -c csrc/ce_$isa.c -o /tmp/$isa.o; objs="$objs /tmp/$isa.o"
 *   done <<< "$(sh tests/c/isas.sh)"
 *   cc $f bench/c_kernels.c csrc/ce_portable.c csrc/dispatch.c $objs -lm -lpthread -o /tmp/c_kernels
 *   /tmp/c_kernels [K] [rows]
 *
 * 1. In cache: one row of K classes (default 32000), repeated: stats (and with weights and
 *    wsum), grad, shift, stats with softcap, in elements per second.
 * 2. Fused forward + backward over rows x K float32 logits (default 4096 x 32000, 512 MB):
 *    stats (keeping the exponentials) then the gradient from them per row (one chunk of K;
 *    the library cuts rows into chunks) into a separate gradient, plain or streamed stores.
 * Medians of several runs, in this thread's CPU time (the machine is small and shared).
 */
#define _POSIX_C_SOURCE 199309L
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels.h"

/* This thread's CPU time: the small shared machine's other work does not count. */
static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

#define RUNS 7
typedef void (*bench_fn)(const ce_kernels *k, void *x, void *g, void *w, int64_t n, int reps);

/* g doubles as the exponentials' buffer (8 bytes an element) */
static void run_stats(const ce_kernels *k, void *x, void *g, void *w, int64_t n, int reps)
{
    ce_stats s;
    for (int r = 0; r < reps; r++) k->stats(x, n, NULL, 0.0, w, w != NULL, g, &s);
}
static void run_grad(const ce_kernels *k, void *x, void *g, void *w, int64_t n, int reps)
{
    for (int r = 0; r < reps; r++) k->grad(x, n, NULL, 0.0, w, 0.5, 0.7, 0.2, 0, -1, 0.0, g);
}
static void run_shift(const ce_kernels *k, void *x, void *g, void *w, int64_t n, int reps)
{
    (void)w;
    for (int r = 0; r < reps; r++) k->shift(x, n, 0.5, 0.25, g);
}
static void run_stats_cap(const ce_kernels *k, void *x, void *g, void *w, int64_t n, int reps)
{
    ce_stats s;
    for (int r = 0; r < reps; r++) k->stats(x, n, NULL, 30.0, w, 0, g, &s);
}

/* Median elements per second of fn over reps calls on n elements. */
static double rate(bench_fn fn, const ce_kernels *k, void *x, void *g, void *w, int64_t n, int reps)
{
    double t[RUNS];
    fn(k, x, g, w, n, 1); /* warm up */
    for (int i = 0; i < RUNS; i++) {
        const double t0 = now();
        fn(k, x, g, w, n, reps);
        t[i] = now() - t0;
    }
    qsort(t, RUNS, sizeof t[0], cmp_double);
    return (double)n * reps / t[RUNS / 2];
}

/* Every ISA of isa_list.h; a NULL table where the build left it out. */
#define TABLE_ENTRY(ID, name, arch, flags) &ce_table_##name,
static const ce_isa_table *const tables[] = {&ce_table_portable, CE_ISA_LIST(TABLE_ENTRY)};
#undef TABLE_ENTRY
#define N_TABLES (sizeof tables / sizeof tables[0])
static const char *const dtype_names[] = {"f32", "f64", "f16", "bf16"};

static int isa_runs(const ce_isa_table *t) { return t && ce_cpu_has_isa(t->isa); }

int main(int argc, char **argv)
{
    const int64_t K = argc > 1 ? atoll(argv[1]) : 32000;
    const int64_t rows = argc > 2 ? atoll(argv[2]) : 4096;
    const int reps = (int)(2e8 / (double)K) + 1;

    /* one row per dtype, values like logits */
    double *xd = aligned_alloc(64, (size_t)K * 8), *gd = aligned_alloc(64, (size_t)K * 8);
    float *xf = aligned_alloc(64, (size_t)K * 4), *wf = aligned_alloc(64, (size_t)K * 8);
    uint16_t *xh = aligned_alloc(64, (size_t)K * 2), *xb = aligned_alloc(64, (size_t)K * 2);
    srand(1);
    for (int64_t i = 0; i < K; i++) {
        xd[i] = 8.0 * rand() / RAND_MAX - 4.0;
        xf[i] = (float)xd[i];
        xh[i] = ce_f32_to_f16(xf[i]);
        xb[i] = ce_f32_to_bf16(xf[i]);
        wf[i] = 1.0f;
    }
    void *const x_of[4] = {xf, xd, xh, xb};

    printf("in cache: one row of K=%lld, G elements/s (median of %d)\n", (long long)K, RUNS);
    printf("%-9s %-5s %8s %8s %8s %8s %8s\n", "isa", "dtype", "stats", "stats+w", "grad", "shift", "stats_cap");
    for (size_t t = 0; t < N_TABLES; t++) {
        const ce_isa_table *tab = tables[t];
        if (!isa_runs(tab)) continue;
        for (int dt = 0; dt < 4; dt++) {
            const ce_kernels *k = &tab->k[dt];
            void *x = x_of[dt];
            void *w = dt == FUSEDCE_F64 ? (void *)xd : (void *)wf;
            printf("%-9s %-5s %8.2f %8.2f %8.2f %8.2f %8.2f\n", fusedce_isa_name(tab->isa), dtype_names[dt],
                   1e-9 * rate(run_stats, k, x, gd, NULL, K, reps),
                   1e-9 * rate(run_stats, k, x, gd, w, K, reps),
                   1e-9 * rate(run_grad, k, x, gd, NULL, K, reps),
                   1e-9 * rate(run_shift, k, x, gd, NULL, K, reps),
                   1e-9 * rate(run_stats_cap, k, x, gd, NULL, K, reps / 8 + 1));
        }
    }

    /* Fused forward + backward, float32, one thread. */
    const size_t bytes = (size_t)rows * (size_t)K * 4;
    float *X = aligned_alloc(64, bytes), *G = aligned_alloc(64, bytes), *E = aligned_alloc(64, (size_t)K * 4);
    if (!X || !G || !E) return 1;
    for (int64_t i = 0; i < rows * K; i++) X[i] = xf[i % K] + (float)(i / K % 7);
    memset(G, 0, bytes);
    printf("\nfused forward+backward, float32, %lld x %lld, one thread, G elements/s\n",
           (long long)rows, (long long)K);
    for (size_t t = 0; t < N_TABLES; t++) {
        const ce_isa_table *tab = tables[t];
        if (!isa_runs(tab)) continue;
        const ce_kernels *k = &tab->k[FUSEDCE_F32];
        double tt[3];
        for (int stream = 0; stream < 2; stream++) {
            for (int run = 0; run < 3; run++) {
                const double t0 = now();
                for (int64_t r = 0; r < rows; r++) {
                    ce_stats s;
                    k->stats(X + r * K, K, r + 1 < rows ? X + (r + 1) * K : NULL, 0.0, NULL, 0, E, &s);
                    k->grad_exp(E, NULL, K, r + 1 < rows ? X + (r + 1) * K : NULL, NULL, 1.0 / s.sum, 0.0, 0.0,
                                stream, -1, 0.0, G + r * K);
                }
                if (stream) ce_stream_fence();
                tt[run] = now() - t0;
            }
            qsort(tt, 3, sizeof tt[0], cmp_double);
            printf("%-9s stream=%d %8.2f\n", fusedce_isa_name(tab->isa), stream, 1e-9 * (double)(rows * K) / tt[1]);
        }
    }
    /* reference: a plain copy of the logits */
    double tt[3];
    for (int run = 0; run < 3; run++) {
        const double t0 = now();
        memcpy(G, X, bytes);
        tt[run] = now() - t0;
    }
    qsort(tt, 3, sizeof tt[0], cmp_double);
    printf("%-9s          %8.2f\n", "memcpy", 1e-9 * (double)(rows * K) / tt[1]);
    return 0;
}
