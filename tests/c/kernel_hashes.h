/* The --hashes mode of test_kernels.c (kernel_hashes.c): a hash of every row primitive's
 * output per (ISA, dtype, case). */
#ifndef FUSEDCE_TEST_KERNEL_HASHES_H
#define FUSEDCE_TEST_KERNEL_HASHES_H

#include <stdint.h>

#include "kernels.h"

typedef void (*hash_sink)(const char *isa, const char *dtype, const char *case_name, uint64_t hash,
                          void *ctx);

/* Runs every case on table t and hands each (dtype, case, hash) to sink. */
void kernel_hashes(const char *isa, const ce_isa_table *t, hash_sink sink, void *ctx);

#endif
