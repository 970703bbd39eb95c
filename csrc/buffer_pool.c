/* The buffer pool: large result blocks (gradients, softmax outputs, per-row results) kept
 * after their last user lets go, and handed out again instead of fresh memory.
 *
 * Why: a fresh logits-sized block costs a page fault and a zeroed page per 4 KiB on its first
 * touch, which for a 512 MB gradient takes as long as the kernel that writes it. A block that
 * was used before is resident: reusing it makes the default call as fast as one given out=.
 *
 * Why here, in C, and not in Python over mmap: the block must outlive every NumPy view and
 * torch tensor of it, and only then come back. The Python binding wraps each block in a cffi
 * pointer with a destructor (ffi.gc) that NumPy's base chain keeps alive, so the release runs
 * exactly when the last view dies, from whatever thread drops it and without the GIL's help;
 * that needs a release that is plain C, thread-safe on its own and safe across fork
 * (pthread_atfork), and a mapping we control: 2 MiB-aligned with transparent huge pages
 * requested (madvise), unmapped when the pool lets it go. Python's mmap objects free their
 * memory when they die, so they cannot be handed back to a pool from their own destructor.
 *
 * Blocks are anonymous private mappings: after fork the child has its own copy of every
 * block, in use or free, exactly as it has its own copy of the arrays that use them, so no
 * block is ever owned twice; only the lock has to be left usable (the atfork handlers hold it
 * across the fork). mmap and munmap run outside the lock.
 *
 * The bound applies to the free blocks the pool keeps (what it holds beyond what is in use).
 * Adaptive (the default, limit -1): the largest number of bytes in use at once over the last
 * one or two windows of POOL_WINDOW acquisitions, so a steady loop keeps exactly the blocks
 * it needs again, and the pool shrinks to a smaller working set once the larger one has not
 * been seen for a window.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "fusedce.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define POOL_POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define POOL_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define POOL_POISON(p, n) ((void)(p), (void)(n))
#define POOL_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

#if !defined(MAP_ANONYMOUS) && defined(MAP_ANON)
#define MAP_ANONYMOUS MAP_ANON
#endif

#define POOL_HUGE ((size_t)2 << 20) /* a transparent huge page on x86-64 (and AArch64 4K) */
#define POOL_WINDOW 64              /* acquisitions per window of the adaptive bound */
#define POOL_FIT_SLACK 4            /* a free block serves a request at most 1/4 smaller */

typedef struct pool_block {
    char *data;
    size_t bytes; /* the mapping's size: the request rounded up to whole pages */
    struct pool_block *prev, *next;
} pool_block;

/* A doubly linked list; free blocks most recently released first (evicted from the tail). */
typedef struct {
    pool_block *head, *tail;
    int64_t count, bytes;
} pool_list;

static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t pool_once = PTHREAD_ONCE_INIT;
static size_t pool_page = 4096;
static pool_list pool_free, pool_used;
static int64_t pool_limit = -1;                /* -1 adaptive, 0 off, else bytes */
static int64_t pool_peak_now, pool_peak_prev;  /* in-use peaks of this and the last window */
static int64_t pool_window_left = POOL_WINDOW;
static int64_t pool_hits, pool_misses, pool_returned_blocks, pool_returned_bytes;
static int pool_huge_status = -1;              /* last madvise(MADV_HUGEPAGE): 1 ok, 0 refused */

static void pool_lock_for_fork(void) { pthread_mutex_lock(&pool_lock); }
static void pool_unlock_after_fork(void) { pthread_mutex_unlock(&pool_lock); }

static void pool_init(void)
{
    long page = sysconf(_SC_PAGESIZE);
    if (page > 0) pool_page = (size_t)page;
    /* The lock is held across fork, so the child never inherits it held by a thread that
     * does not exist there; the lists are consistent in both processes. */
    pthread_atfork(pool_lock_for_fork, pool_unlock_after_fork, pool_unlock_after_fork);
}

static void list_push_head(pool_list *l, pool_block *b)
{
    b->prev = NULL;
    b->next = l->head;
    if (l->head) l->head->prev = b; else l->tail = b;
    l->head = b;
    l->count++;
    l->bytes += (int64_t)b->bytes;
}

static void list_unlink(pool_list *l, pool_block *b)
{
    if (b->prev) b->prev->next = b->next; else l->head = b->next;
    if (b->next) b->next->prev = b->prev; else l->tail = b->prev;
    b->prev = b->next = NULL;
    l->count--;
    l->bytes -= (int64_t)b->bytes;
}

/* What the pool may keep now (lock held). */
static int64_t pool_bound(void)
{
    if (pool_limit >= 0) return pool_limit;
    return pool_peak_now > pool_peak_prev ? pool_peak_now : pool_peak_prev;
}

/* Moves least recently released free blocks onto *out until the free ones fit in `room`
 * bytes (lock held); the caller unmaps them after unlocking. */
static void pool_evict_to(int64_t room, pool_block **out)
{
    while (pool_free.tail && pool_free.bytes > room) {
        pool_block *b = pool_free.tail;
        list_unlink(&pool_free, b);
        pool_returned_blocks++;
        pool_returned_bytes += (int64_t)b->bytes;
        b->next = *out;
        *out = b;
    }
}

static void pool_unmap_all(pool_block *b)
{
    while (b) {
        pool_block *next = b->next;
        POOL_UNPOISON(b->data, b->bytes);
        munmap(b->data, b->bytes);
        free(b);
        b = next;
    }
}

/* A fresh mapping of `bytes` (whole pages); 2 MiB-aligned with huge pages requested when it
 * spans at least one huge page. NULL when the system refuses. */
static char *pool_map(size_t bytes)
{
    if (bytes < POOL_HUGE) {
        void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        return p == MAP_FAILED ? NULL : (char *)p;
    }
    size_t span = bytes + POOL_HUGE; /* room to slide the start to a 2 MiB boundary */
    if (span < bytes) return NULL;
    void *raw = mmap(NULL, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) return NULL;
    char *start = (char *)raw;
    char *aligned = (char *)(((uintptr_t)start + POOL_HUGE - 1) & ~(uintptr_t)(POOL_HUGE - 1));
    size_t head = (size_t)(aligned - start), tail = span - head - bytes;
    if (head) munmap(start, head);
    if (tail) munmap(aligned + bytes, tail);
#ifdef MADV_HUGEPAGE
    /* A request: refused (EINVAL) where the kernel has no transparent huge pages; the block
     * then simply uses small pages. */
    int ok = madvise(aligned, bytes, MADV_HUGEPAGE) == 0;
    __atomic_store_n(&pool_huge_status, ok, __ATOMIC_RELAXED);
#endif
    return aligned;
}

/* The best-fitting free block for `bytes` (lock held), or NULL. */
static pool_block *pool_find_free(size_t bytes)
{
    pool_block *best = NULL;
    for (pool_block *b = pool_free.head; b; b = b->next)
        if (b->bytes >= bytes && b->bytes - bytes <= bytes / POOL_FIT_SLACK && (!best || b->bytes < best->bytes))
            best = b;
    return best;
}

/* Counts one acquisition of `bytes` now in use (lock held): the in-use peak, and at the end
 * of a window the adaptive bound moves on and the free blocks are trimmed to it. */
static void pool_account(pool_block *b, pool_block **evicted)
{
    list_push_head(&pool_used, b);
    if (pool_used.bytes > pool_peak_now) pool_peak_now = pool_used.bytes;
    if (--pool_window_left == 0) {
        pool_window_left = POOL_WINDOW;
        pool_peak_prev = pool_peak_now;
        pool_peak_now = pool_used.bytes;
        pool_evict_to(pool_bound(), evicted);
    }
}

void *fusedce_pool_acquire(int64_t bytes)
{
    pthread_once(&pool_once, pool_init);
    if (bytes < 1) bytes = 1;
    if ((uint64_t)bytes > SIZE_MAX - 2 * POOL_HUGE) return NULL;
    size_t size = ((size_t)bytes + pool_page - 1) / pool_page * pool_page;
    pool_block *evicted = NULL;

    pthread_mutex_lock(&pool_lock);
    pool_block *b = pool_find_free(size);
    if (b) {
        list_unlink(&pool_free, b);
        pool_hits++;
        pool_account(b, &evicted);
    } else {
        pool_misses++;
    }
    pthread_mutex_unlock(&pool_lock);
    pool_unmap_all(evicted);
    if (b) {
        POOL_UNPOISON(b->data, b->bytes);
        return b->data;
    }

    b = malloc(sizeof *b);
    if (!b) return NULL;
    b->data = pool_map(size);
    if (!b->data) { /* the system is short: give back what the pool keeps, then try once more */
        pool_block *all = NULL;
        pthread_mutex_lock(&pool_lock);
        pool_evict_to(0, &all);
        pthread_mutex_unlock(&pool_lock);
        pool_unmap_all(all);
        b->data = pool_map(size);
        if (!b->data) {
            free(b);
            return NULL;
        }
    }
    b->bytes = size;
    evicted = NULL;
    pthread_mutex_lock(&pool_lock);
    pool_account(b, &evicted);
    pthread_mutex_unlock(&pool_lock);
    pool_unmap_all(evicted);
    return b->data;
}

int fusedce_pool_release(void *block)
{
    if (!block) return FUSEDCE_OK;
    pthread_once(&pool_once, pool_init);
    pool_block *evicted = NULL;
    pthread_mutex_lock(&pool_lock);
    /* In-use blocks are few (each at least the binding's 1 MiB threshold): a linear search. */
    pool_block *b = pool_used.head;
    while (b && b->data != (char *)block) b = b->next;
    if (!b) {
        pthread_mutex_unlock(&pool_lock);
        return FUSEDCE_EINVAL;
    }
    list_unlink(&pool_used, b);
    int64_t bound = pool_bound();
    if ((int64_t)b->bytes > bound) {
        pool_returned_blocks++;
        pool_returned_bytes += (int64_t)b->bytes;
        b->next = evicted;
        evicted = b;
    } else {
        pool_evict_to(bound - (int64_t)b->bytes, &evicted);
        POOL_POISON(b->data, b->bytes); /* under ASan a use after release is reported */
        list_push_head(&pool_free, b);
    }
    pthread_mutex_unlock(&pool_lock);
    pool_unmap_all(evicted);
    return FUSEDCE_OK;
}

int64_t fusedce_pool_set_limit(int64_t max_bytes)
{
    pthread_once(&pool_once, pool_init);
    pool_block *evicted = NULL;
    pthread_mutex_lock(&pool_lock);
    int64_t before = pool_limit;
    pool_limit = max_bytes < 0 ? -1 : max_bytes;
    pool_evict_to(pool_bound(), &evicted);
    pthread_mutex_unlock(&pool_lock);
    pool_unmap_all(evicted);
    return before;
}

int64_t fusedce_pool_limit(void)
{
    pthread_once(&pool_once, pool_init);
    pthread_mutex_lock(&pool_lock);
    int64_t limit = pool_limit;
    pthread_mutex_unlock(&pool_lock);
    return limit;
}

void fusedce_pool_get_stats(fusedce_pool_stats *out)
{
    pthread_once(&pool_once, pool_init);
    pthread_mutex_lock(&pool_lock);
    out->limit = pool_limit;
    out->bound = pool_bound();
    out->held_bytes = pool_free.bytes;
    out->held_blocks = pool_free.count;
    out->in_use_bytes = pool_used.bytes;
    out->in_use_blocks = pool_used.count;
    out->hits = pool_hits;
    out->misses = pool_misses;
    out->returned_blocks = pool_returned_blocks;
    out->returned_bytes = pool_returned_bytes;
    out->huge_pages = __atomic_load_n(&pool_huge_status, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&pool_lock);
}
