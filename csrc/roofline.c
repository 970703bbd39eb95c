/* The machine's memory roofline (fusedce.h): one multi-threaded read of the logits' bytes, or
 * one multi-threaded streaming copy of them, timed here, with the thread count and the split a
 * kernel call over the same bytes uses (each thread a contiguous range) and the vectors of the
 * best ISA this CPU runs. The bench reports each kernel against these. */
#define _POSIX_C_SOURCE 199309L
#include <string.h>
#include <time.h>

#include "kernels.h"

static double ce_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Somewhere the read's result goes, so that its loads are not optimised away. */
static volatile double ce_roof_sink;

/* Thread tid's range of a team's, in whole cache lines but the last. */
static void ce_roof_range(int64_t bytes, int tid, int team, int64_t *lo, int64_t *hi)
{
    *lo = bytes * tid / team / 64 * 64;
    *hi = tid == team - 1 ? bytes : bytes * (tid + 1) / team / 64 * 64;
}

static void ce_roof_copy_range(const ce_isa_table *t, const char *src, char *dst, int64_t n)
{
    /* ordinary copies up to dst's next cache line and after its last whole one */
    int64_t head = (int64_t)((64 - ((uintptr_t)dst & 63)) & 63);
    if (head > n) head = n;
    if (n == 0) return;
    memcpy(dst, src, (size_t)head);
    const int64_t body = (n - head) / 64 * 64;
    t->roof_copy(src + head, dst + head, body);
    memcpy(dst + head + body, src + head + body, (size_t)(n - head - body));
    ce_stream_fence();
}

int fusedce_roofline(int pattern, const void *src, void *dst, int64_t bytes, int64_t elements,
                     double *seconds)
{
    if (!seconds || bytes < 0 || elements < 0 || (bytes > 0 && !src) ||
        (pattern != FUSEDCE_ROOFLINE_READ && pattern != FUSEDCE_ROOFLINE_COPY) ||
        (pattern == FUSEDCE_ROOFLINE_COPY && bytes > 0 && !dst))
        return FUSEDCE_EINVAL;
    if (bytes == 0) {
        *seconds = 0.0;
        return FUSEDCE_OK;
    }
    const ce_isa_table *t = ce_detected_table();
    const int nt = ce_threads_for(elements);
    double sink = 0.0;
    const double t0 = ce_now();
#ifdef _OPENMP
#pragma omp parallel num_threads(nt) if (nt > 1) reduction(+ : sink)
#endif
    {
        int team;
        const int tid = ce_team(&team);
        int64_t lo, hi;
        ce_roof_range(bytes, tid, team, &lo, &hi);
        if (pattern == FUSEDCE_ROOFLINE_READ) sink += t->roof_read((const char *)src + lo, hi - lo);
        else ce_roof_copy_range(t, (const char *)src + lo, (char *)dst + lo, hi - lo);
    }
    *seconds = ce_now() - t0;
    ce_roof_sink = sink;
    return FUSEDCE_OK;
}
