/* Binary cross-entropy with logits: elementwise, so the work is cut into fixed chunks of a
 * row (the same cut whatever the thread count, which keeps the summed loss deterministic)
 * and the chunks spread over threads. Per-class weight and pos_weight run along the row;
 * per-element ones along the chunk. */
#include <stdlib.h>

#include "kernels.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#define BCE_CHUNK 16384 /* elements per work item: a multiple of every vector width */



static int bce_run(int dtype, const fusedce_bce_args *a)
{
    if (!a || a->rows < 0 || a->classes < 1) return FUSEDCE_EINVAL;
    if (a->rows == 0) {
        if (a->loss_sum) *a->loss_sum = 0.0;
        return FUSEDCE_OK;
    }
    if (!a->logits || !a->target) return FUSEDCE_EINVAL;
    const ce_kernels *k = &ce_active_table()->k[dtype];
    const bce_fn bce = k->bce ? k->bce : ce_table_portable.k[dtype].bce;
    const size_t es = ce_elsize(dtype), wes = ce_compute_size(dtype);
    const int64_t K = a->classes, chunks_per_row = (K + BCE_CHUNK - 1) / BCE_CHUNK;
    const int64_t items = a->rows * chunks_per_row;
    double *partial = (double *)malloc((size_t)items * sizeof(double));
    if (!partial) return FUSEDCE_EINVAL;
    const int nt = ce_threads_for(a->rows * K);
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
#endif
    for (int64_t i = 0; i < items; i++) {
        const int64_t r = i / chunks_per_row, lo = (i % chunks_per_row) * BCE_CHUNK;
        const int64_t n = K - lo < BCE_CHUNK ? K - lo : BCE_CHUNK;
        const size_t elem = (size_t)r * (size_t)K + (size_t)lo; /* flat index of the chunk */
        const void *w = NULL;
        if (a->weight) w = (const char *)a->weight + (a->weight_per_class ? (size_t)lo : elem) * wes;
        const void *pw = NULL;
        if (a->pos_weight)
            pw = (const char *)a->pos_weight + (a->pos_weight_per_element ? elem : (size_t)lo) * wes;
        const void *go = a->grad_scale ? (const char *)a->grad_scale + elem * wes : NULL;
        partial[i] = bce((const char *)a->logits + elem * es, (const char *)a->target + elem * es, n, w, pw, go,
                         a->grad_scale_all, a->loss ? (char *)a->loss + elem * es : NULL,
                         a->grad ? (char *)a->grad + elem * es : NULL);
    }
    if (a->loss_sum) {
        double total = 0.0;
        for (int64_t i = 0; i < items; i++) total += partial[i];
        *a->loss_sum = total;
    }
    free(partial);
    return FUSEDCE_OK;
}

int fusedce_bce_f32(const fusedce_bce_args *a) { return bce_run(FUSEDCE_F32, a); }
int fusedce_bce_f64(const fusedce_bce_args *a) { return bce_run(FUSEDCE_F64, a); }
int fusedce_bce_f16(const fusedce_bce_args *a) { return bce_run(FUSEDCE_F16, a); }
int fusedce_bce_bf16(const fusedce_bce_args *a) { return bce_run(FUSEDCE_BF16, a); }
