/* The buffer pool's C API (csrc/buffer_pool.c): reuse, the fit rule, the byte bound, the
 * adaptive bound, bad releases, many threads, and fork while other threads use the pool.
 *
 * Built with csrc/buffer_pool.c by .ci/sanitize.sh (AddressSanitizer: a released block is
 * poisoned, so a write after release would be reported) and .ci/valgrind.sh. Last line:
 * "N passed, M failed"; exit status 1 on any failure.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fusedce.h"

static long n_passed, n_failed;

#define CHECK(cond, ...)                                                                          \
    do {                                                                                         \
        if (cond) {                                                                              \
            n_passed++;                                                                          \
        } else {                                                                                 \
            n_failed++;                                                                          \
            printf("FAIL (line %d): ", __LINE__);                                                 \
            printf(__VA_ARGS__);                                                                 \
            printf("\n");                                                                        \
        }                                                                                        \
    } while (0)

#define MIB ((int64_t)1 << 20)

static fusedce_pool_stats stats(void)
{
    fusedce_pool_stats s;
    fusedce_pool_get_stats(&s);
    return s;
}

/* Marks a block with a pattern of its own (a word per 4 KiB page and the last one) and checks
 * it, so that a block handed to two users at once, or unmapped under one, shows. */
#define STRIDE 1024

static void fill(void *p, int64_t bytes, uint32_t seed)
{
    uint32_t *w = p;
    int64_t n = bytes / 4;
    for (int64_t i = 0; i < n; i += STRIDE) w[i] = seed ^ (uint32_t)i;
    w[n - 1] = ~seed;
}

static int intact(const void *p, int64_t bytes, uint32_t seed)
{
    const uint32_t *w = p;
    int64_t n = bytes / 4;
    for (int64_t i = 0; i < n; i += STRIDE)
        if (w[i] != (seed ^ (uint32_t)i)) return 0;
    return w[n - 1] == ~seed;
}

static void empty_pool(void)
{
    int64_t before = fusedce_pool_set_limit(0);
    fusedce_pool_set_limit(before);
}

static void test_reuse_and_alignment(void)
{
    fusedce_pool_set_limit(-1);
    empty_pool();
    fusedce_pool_stats s0 = stats();
    void *a = fusedce_pool_acquire(5 * MIB + 123);
    CHECK(a != NULL, "acquire 5 MiB");
    CHECK(((uintptr_t)a & (2 * MIB - 1)) == 0, "a block of 2 MiB or more is 2 MiB-aligned: %p", a);
    fill(a, 5 * MIB + 120, 1);
    CHECK(intact(a, 5 * MIB + 120, 1), "block holds its values");
    fusedce_pool_stats s1 = stats();
    CHECK(s1.in_use_blocks == s0.in_use_blocks + 1, "one block in use");
    CHECK(s1.in_use_bytes - s0.in_use_bytes >= 5 * MIB + 123, "in-use bytes count the block");
    CHECK(s1.misses == s0.misses + 1, "a fresh block is a miss");
    CHECK(fusedce_pool_release(a) == FUSEDCE_OK, "release");
    fusedce_pool_stats s2 = stats();
    CHECK(s2.held_blocks == 1 && s2.in_use_blocks == s0.in_use_blocks, "the released block is kept");
    void *b = fusedce_pool_acquire(5 * MIB + 100);
    CHECK(b == a, "the same size again gets the kept block back");
    CHECK(stats().hits == s0.hits + 1, "a kept block is a hit");
    fill(b, 5 * MIB, 2);
    fusedce_pool_release(b);

    void *small = fusedce_pool_acquire(3000);
    CHECK(small && ((uintptr_t)small % 4096) == 0, "a small block is page-aligned");
    fill(small, 3000, 3);
    fusedce_pool_release(small);
    empty_pool();
}

static void test_fit_rule(void)
{
    fusedce_pool_set_limit(64 * MIB);
    empty_pool();
    void *big = fusedce_pool_acquire(8 * MIB);
    fusedce_pool_release(big);
    void *half = fusedce_pool_acquire(4 * MIB);
    CHECK(half != big, "a block twice the request is not handed out for it");
    void *near = fusedce_pool_acquire(7 * MIB);
    CHECK(near == big, "a block at most a quarter larger is");
    void *larger = fusedce_pool_acquire(9 * MIB);
    CHECK(larger != big && larger != half, "a larger request gets a fresh block");
    fusedce_pool_release(half);
    fusedce_pool_release(near);
    fusedce_pool_release(larger);
    fusedce_pool_set_limit(-1);
    empty_pool();
}

static void test_bound(void)
{
    fusedce_pool_set_limit(10 * MIB);
    empty_pool();
    void *p[3];
    for (int i = 0; i < 3; i++) p[i] = fusedce_pool_acquire(4 * MIB);
    fusedce_pool_stats s0 = stats();
    for (int i = 0; i < 3; i++) fusedce_pool_release(p[i]);
    fusedce_pool_stats s = stats();
    CHECK(s.held_bytes <= 10 * MIB && s.held_blocks == 2, "10 MiB bound keeps two 4 MiB blocks: %lld bytes in %lld",
          (long long)s.held_bytes, (long long)s.held_blocks);
    CHECK(s.returned_blocks == s0.returned_blocks + 1, "the third goes back to the system");
    void *huge = fusedce_pool_acquire(16 * MIB);
    fusedce_pool_release(huge);
    CHECK(stats().held_bytes <= 10 * MIB, "a block over the bound is not kept");

    CHECK(fusedce_pool_set_limit(0) == 10 * MIB, "set_limit returns the limit before");
    s = stats();
    CHECK(s.held_bytes == 0 && s.held_blocks == 0 && s.limit == 0, "limit 0 gives every kept block back");
    void *q = fusedce_pool_acquire(4 * MIB);
    fusedce_pool_release(q);
    CHECK(stats().held_bytes == 0, "with limit 0 nothing is kept");
    fusedce_pool_set_limit(-1);
    CHECK(fusedce_pool_limit() == -1 && stats().limit == -1, "adaptive again");
}

static void test_adaptive_bound(void)
{
    fusedce_pool_set_limit(-1);
    empty_pool();
    void *a = fusedce_pool_acquire(8 * MIB), *b = fusedce_pool_acquire(8 * MIB);
    fusedce_pool_release(a);
    fusedce_pool_release(b);
    fusedce_pool_stats s = stats();
    CHECK(s.held_bytes == 16 * MIB, "adaptive keeps the recent peak in use: %lld", (long long)s.held_bytes);
    CHECK(s.bound >= 16 * MIB, "bound is the peak: %lld", (long long)s.bound);
    /* two windows of 1 MiB use: the 8 MiB peak is no longer recent */
    for (int i = 0; i < 200; i++) fusedce_pool_release(fusedce_pool_acquire(MIB));
    s = stats();
    CHECK(s.bound == MIB && s.held_bytes <= MIB, "the bound follows the working set down: bound %lld, held %lld",
          (long long)s.bound, (long long)s.held_bytes);
    empty_pool();
}

static void test_bad_release(void)
{
    static char not_ours[64];
    CHECK(fusedce_pool_release(NULL) == FUSEDCE_OK, "release(NULL) is a no-op");
    CHECK(fusedce_pool_release(not_ours) == FUSEDCE_EINVAL, "a pointer the pool did not hand out");
    void *p = fusedce_pool_acquire(MIB);
    CHECK(fusedce_pool_release(p) == FUSEDCE_OK, "first release");
    CHECK(fusedce_pool_release(p) == FUSEDCE_EINVAL, "a second release of the same block is refused");
    CHECK(fusedce_pool_acquire(INT64_MAX) == NULL, "an impossible size gets NULL");
    empty_pool();
}

/* ---- threads ------------------------------------------------------------------------------ */

#define THREADS 8

static volatile int stop_churn;

static void *worker(void *arg)
{
    uintptr_t id = (uintptr_t)arg;
    int bad = 0;
    static const int64_t sizes[] = {MIB, 2 * MIB + 4096, 3 * MIB, 5 * MIB};
    for (int i = 0; i < 300; i++) {
        int64_t n = sizes[(id + (uintptr_t)i) % 4];
        void *p = fusedce_pool_acquire(n), *q = fusedce_pool_acquire(sizes[(id * 7 + (uintptr_t)i) % 4]);
        if (!p || !q) return (void *)1;
        fill(p, n, (uint32_t)(id << 16 | (uintptr_t)i));
        if (!intact(p, n, (uint32_t)(id << 16 | (uintptr_t)i))) bad = 1;
        fusedce_pool_release(q);
        fusedce_pool_release(p);
    }
    return (void *)(uintptr_t)bad;
}

static void test_threads(void)
{
    fusedce_pool_set_limit(-1);
    empty_pool();
    pthread_t th[THREADS];
    for (uintptr_t i = 0; i < THREADS; i++) pthread_create(&th[i], NULL, worker, (void *)i);
    int bad = 0;
    for (int i = 0; i < THREADS; i++) {
        void *r;
        pthread_join(th[i], &r);
        bad |= r != NULL;
    }
    fusedce_pool_stats s = stats();
    CHECK(!bad, "no block was handed to two threads at once");
    CHECK(s.in_use_blocks == 0 && s.in_use_bytes == 0, "every block released: %lld in use", (long long)s.in_use_blocks);
    CHECK(s.held_bytes <= s.bound, "held %lld within the bound %lld", (long long)s.held_bytes, (long long)s.bound);
    empty_pool();
}

static void *churn(void *arg)
{
    (void)arg;
    while (!__atomic_load_n(&stop_churn, __ATOMIC_RELAXED)) {
        void *p = fusedce_pool_acquire(2 * MIB);
        if (p) ((char *)p)[0] = 1;
        fusedce_pool_release(p);
    }
    return NULL;
}

/* fork while other threads hold and release blocks: the child must find the lock usable and
 * its own copies of the blocks, in use and free. */
static void test_fork(void)
{
    fusedce_pool_set_limit(-1);
    void *mine = fusedce_pool_acquire(3 * MIB);
    fill(mine, 3 * MIB, 77);
    pthread_t th[2];
    for (int i = 0; i < 2; i++) pthread_create(&th[i], NULL, churn, NULL);
    int children_ok = 1;
    for (int round = 0; round < 20; round++) {
        pid_t pid = fork();
        if (pid == 0) {
            int ok = intact(mine, 3 * MIB, 77);
            for (int i = 0; i < 50 && ok; i++) {
                void *p = fusedce_pool_acquire(3 * MIB);
                ok = p != NULL && p != mine;
                if (ok) {
                    fill(p, 3 * MIB, 5);
                    ok = intact(mine, 3 * MIB, 77) && intact(p, 3 * MIB, 5);
                }
                fusedce_pool_release(p);
            }
            ok = ok && fusedce_pool_release(mine) == FUSEDCE_OK;
            _exit(ok ? 0 : 1);
        }
        int status = 0;
        waitpid(pid, &status, 0);
        children_ok &= WIFEXITED(status) && WEXITSTATUS(status) == 0;
    }
    __atomic_store_n(&stop_churn, 1, __ATOMIC_RELAXED);
    for (int i = 0; i < 2; i++) pthread_join(th[i], NULL);
    CHECK(children_ok, "every child used the pool after fork and kept its copy of the parent's block");
    CHECK(intact(mine, 3 * MIB, 77), "the parent's block is untouched by the children");
    CHECK(fusedce_pool_release(mine) == FUSEDCE_OK, "the parent releases its own block");
    empty_pool();
}

int main(void)
{
    test_reuse_and_alignment();
    test_fit_rule();
    test_bound();
    test_adaptive_bound();
    test_bad_release();
    test_threads();
    test_fork();
    fusedce_pool_set_limit(0); /* everything back to the system: the leak check sees no mapping (mmaps are not leaks) */
    printf("%ld passed, %ld failed\n", n_passed, n_failed);
    return n_failed ? 1 : 0;
}
