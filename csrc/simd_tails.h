/* Partial vectors through a small buffer, for the vocabularies without masked loads and stores
 * (simd_avx2.h, simd_neon.h): ldp_<DT>(p, m) loads the first m < VN elements of storage type T
 * (zeros past them), stp_<DT>(p, m, v) stores the first m lanes; nothing else is touched. */
#ifndef FUSEDCE_SIMD_TAILS_H
#define FUSEDCE_SIMD_TAILS_H

#include <string.h>

#define CE_BUFFERED_TAILS(DT, T, VT, VN)                                                             \
    CE_INLINE VT ldp_##DT(const T *p, int m)                                                         \
    {                                                                                                \
        T b[VN] = {0};                                                                               \
        memcpy(b, p, (size_t)m * sizeof(T));                                                         \
        return ld_##DT(b);                                                                           \
    }                                                                                                \
    CE_INLINE void stp_##DT(T *p, int m, VT v)                                                       \
    {                                                                                                \
        T b[VN];                                                                                     \
        st_##DT(b, v);                                                                               \
        memcpy(p, b, (size_t)m * sizeof(T));                                                         \
    }

#endif /* FUSEDCE_SIMD_TAILS_H */
