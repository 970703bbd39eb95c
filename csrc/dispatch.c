/* CPU feature detection (once), the active kernel table, the FUSEDCE_ISA override, threads
 * and cache sizes. The only mutable globals of the library live here: the active table and
 * the thread count, both set through atomics so concurrent callers always see a whole value. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kernels.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#include <cpuid.h>
#define CE_X86 1
#endif
#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#endif

/* Every ISA's table (NULL where not compiled in) and name, from isa_list.h. */
#define CE_TABLE_ENTRY(ID, name, arch, flags) [FUSEDCE_ISA_##ID] = &ce_table_##name,
static const ce_isa_table *const ce_tables[FUSEDCE_ISA_COUNT] = {
    [FUSEDCE_ISA_PORTABLE] = &ce_table_portable, CE_ISA_LIST(CE_TABLE_ENTRY)};
#undef CE_TABLE_ENTRY
#define CE_NAME_ENTRY(ID, name, arch, flags) [FUSEDCE_ISA_##ID] = #name,
static const char *const ce_isa_names[FUSEDCE_ISA_COUNT] = {
    [FUSEDCE_ISA_PORTABLE] = "portable", CE_ISA_LIST(CE_NAME_ENTRY)};
#undef CE_NAME_ENTRY

static int ce_cpu_has[FUSEDCE_ISA_COUNT];
static int ce_detected = FUSEDCE_ISA_PORTABLE;
static const ce_isa_table *ce_active;
static int ce_threads; /* 0 = all cores */
static int64_t ce_l2, ce_llc;
static pthread_once_t ce_once = PTHREAD_ONCE_INIT;

#ifdef CE_X86
static uint64_t ce_xgetbv0(void)
{
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

static void ce_detect_x86(void)
{
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return;
    const int osxsave = (c >> 27) & 1, avx = (c >> 28) & 1, fma = (c >> 12) & 1, f16c = (c >> 29) & 1;
    if (!osxsave || !avx) return;
    const uint64_t xcr0 = ce_xgetbv0();
    const int ymm_os = (xcr0 & 0x6) == 0x6, zmm_os = (xcr0 & 0xe6) == 0xe6;
    if (__get_cpuid_max(0, NULL) < 7) return;
    __cpuid_count(7, 0, a, b, c, d);
    const int avx2 = (b >> 5) & 1;
    const int avx512f = (b >> 16) & 1, avx512dq = (b >> 17) & 1, avx512bw = (b >> 30) & 1,
              avx512vl = (b >> 31) & 1;
    ce_cpu_has[FUSEDCE_ISA_AVX2] = ymm_os && avx2 && fma && f16c;
    ce_cpu_has[FUSEDCE_ISA_AVX512] =
        ce_cpu_has[FUSEDCE_ISA_AVX2] && zmm_os && avx512f && avx512dq && avx512bw && avx512vl;
}
#endif

static int64_t ce_sysconf_bytes(int name, int64_t fallback)
{
    long v = sysconf(name);
    return v > 0 ? (int64_t)v : fallback;
}

/* The size of cpu0's cache of the given level as Linux's sysfs reports it (one instance,
 * e.g. "32768K"), or 0. Preferred over sysconf: glibc may report a level-3 size summed over
 * every L3 of the package (384 MB on a 12-CCD EPYC whose cores each see 32 MB), which would
 * keep the gradient out of streaming stores at sizes far beyond the core's cache. */
static int64_t ce_sysfs_cache_bytes(int level)
{
    for (int index = 0; index < 8; index++) {
        char path[96], buf[32];
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/level", index);
        FILE *f = fopen(path, "r");
        if (!f) return 0;
        const int ok = fgets(buf, sizeof buf, f) != NULL;
        fclose(f);
        if (!ok || atoi(buf) != level) continue;
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/size", index);
        if (!(f = fopen(path, "r"))) return 0;
        char *end = NULL;
        long long v = 0;
        if (fgets(buf, sizeof buf, f)) v = strtoll(buf, &end, 10);
        fclose(f);
        if (v > 0 && end && (*end == 'K' || *end == 'k')) v <<= 10;
        else if (v > 0 && end && (*end == 'M' || *end == 'm')) v <<= 20;
        return v > 0 ? (int64_t)v : 0;
    }
    return 0;
}

static void ce_init(void)
{
    ce_cpu_has[FUSEDCE_ISA_PORTABLE] = 1;
#ifdef CE_X86
    ce_detect_x86();
#endif
#if defined(__aarch64__)
    ce_cpu_has[FUSEDCE_ISA_NEON] = 1; /* Advanced SIMD is part of AArch64 */
#endif
    for (int isa = FUSEDCE_ISA_COUNT - 1; isa >= 0; isa--)
        if (ce_cpu_has[isa] && ce_tables[isa]) {
            ce_detected = isa;
            break;
        }
    int chosen = ce_detected;
    const char *env = getenv("FUSEDCE_ISA");
    if (env && *env) {
        for (int isa = 0; isa < FUSEDCE_ISA_COUNT; isa++)
            if (strcmp(env, ce_isa_names[isa]) == 0 && ce_cpu_has[isa] && ce_tables[isa]) chosen = isa;
        /* An unknown or unsupported name keeps the detected ISA; Python reports it. */
    }
    __atomic_store_n(&ce_active, ce_tables[chosen], __ATOMIC_RELEASE);
    const char *nt = getenv("FUSEDCE_NUM_THREADS");
    if (nt && *nt) __atomic_store_n(&ce_threads, atoi(nt) > 0 ? atoi(nt) : 0, __ATOMIC_RELAXED);
    ce_l2 = ce_sysfs_cache_bytes(2);
    ce_llc = ce_sysfs_cache_bytes(3);
#ifdef _SC_LEVEL2_CACHE_SIZE
    if (ce_l2 <= 0) ce_l2 = ce_sysconf_bytes(_SC_LEVEL2_CACHE_SIZE, 1 << 20);
    if (ce_llc <= 0) ce_llc = ce_sysconf_bytes(_SC_LEVEL3_CACHE_SIZE, 0);
#endif
    if (ce_l2 <= 0) ce_l2 = 1 << 20;
    if (ce_llc <= 0) ce_llc = ce_l2 * 4;
}

static void ce_ensure_init(void) { pthread_once(&ce_once, ce_init); }

const ce_isa_table *ce_active_table(void)
{
    ce_ensure_init();
    return __atomic_load_n(&ce_active, __ATOMIC_ACQUIRE);
}

const ce_isa_table *ce_detected_table(void)
{
    ce_ensure_init();
    return ce_tables[ce_detected];
}

int64_t ce_l2_bytes(void) { ce_ensure_init(); return ce_l2; }
int64_t ce_llc_bytes(void) { ce_ensure_init(); return ce_llc; }

long long fusedce_l2_bytes(void) { return (long long)ce_l2_bytes(); }
long long fusedce_llc_bytes(void) { return (long long)ce_llc_bytes(); }

int fusedce_detected_isa(void) { ce_ensure_init(); return ce_detected; }
int fusedce_active_isa(void) { return ce_active_table()->isa; }

int fusedce_isa_compiled(int isa)
{
    return isa >= 0 && isa < FUSEDCE_ISA_COUNT && ce_tables[isa] != NULL;
}

int ce_cpu_has_isa(int isa)
{
    ce_ensure_init();
    return isa >= 0 && isa < FUSEDCE_ISA_COUNT && ce_cpu_has[isa];
}

int fusedce_cpu_has_isa(int isa) { return ce_cpu_has_isa(isa); }

int fusedce_isa_available(int isa)
{
    ce_ensure_init();
    return fusedce_isa_compiled(isa) && ce_cpu_has[isa];
}

int fusedce_set_isa(int isa)
{
    if (!fusedce_isa_available(isa)) return FUSEDCE_EISA;
    __atomic_store_n(&ce_active, ce_tables[isa], __ATOMIC_RELEASE);
    return FUSEDCE_OK;
}

const char *fusedce_isa_name(int isa)
{
    return isa >= 0 && isa < FUSEDCE_ISA_COUNT ? ce_isa_names[isa] : "unknown";
}

int fusedce_max_threads(void)
{
#ifdef _OPENMP
    return omp_get_num_procs();
#else
    return 1;
#endif
}

int fusedce_openmp(void)
{
#ifdef _OPENMP
    return _OPENMP;
#else
    return 0;
#endif
}

int fusedce_get_num_threads(void)
{
    ce_ensure_init();
    const int n = __atomic_load_n(&ce_threads, __ATOMIC_RELAXED);
    return n > 0 ? n : fusedce_max_threads();
}

void fusedce_set_num_threads(int n)
{
    ce_ensure_init();
    __atomic_store_n(&ce_threads, n > 0 ? n : 0, __ATOMIC_RELAXED);
}

int fusedce_vexp_f32(int isa, int64_t n, const float *x, float *y)
{
    if (!fusedce_isa_available(isa) || n < 0) return FUSEDCE_EISA;
    ce_tables[isa]->vexp_f32(x, n, y);
    return FUSEDCE_OK;
}

int fusedce_vexp_f64(int isa, int64_t n, const double *x, double *y)
{
    if (!fusedce_isa_available(isa) || n < 0) return FUSEDCE_EISA;
    ce_tables[isa]->vexp_f64(x, n, y);
    return FUSEDCE_OK;
}
