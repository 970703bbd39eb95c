/* The AVX2 (with FMA and F16C) kernels: simd_kernels.h over the vocabulary simd_avx2.h, compiled
 * with the flags isa_list.h gives. They are, in ce_table_avx2:
 *   ce_stats_f32_avx2 ce_grad_f32_avx2 ce_shift_f32_avx2 ce_stats_soft_f32_avx2
 *       ce_grad_soft_f32_avx2 bce_f32_avx2 ce_grad_exp_f32_avx2
 *       ce_stats_grad_f32_avx2 ce_stats_ahead_f32_avx2
 *   ce_stats_f64_avx2 ce_grad_f64_avx2 ce_shift_f64_avx2 ce_stats_soft_f64_avx2
 *       ce_grad_soft_f64_avx2 bce_f64_avx2 ce_grad_exp_f64_avx2
 *       ce_stats_grad_f64_avx2 ce_stats_ahead_f64_avx2
 *   ce_stats_f16_avx2 ce_grad_f16_avx2 ce_shift_f16_avx2 ce_stats_soft_f16_avx2
 *       ce_grad_soft_f16_avx2 bce_f16_avx2 ce_grad_exp_f16_avx2
 *       ce_stats_grad_f16_avx2 ce_stats_ahead_f16_avx2
 *   ce_stats_bf16_avx2 ce_grad_bf16_avx2 ce_shift_bf16_avx2 ce_stats_soft_bf16_avx2
 *       ce_grad_soft_bf16_avx2 bce_bf16_avx2 ce_grad_exp_bf16_avx2
 *       ce_stats_grad_bf16_avx2 ce_stats_ahead_bf16_avx2
 *   vexp_f32_avx2 vexp_f64_avx2 vexpn_f32_avx2 vexpn_nonpos_f32_avx2 roof_read_avx2
 *       roof_copy_avx2
 */
#define CE_ISA avx2
#define CE_ISA_ID FUSEDCE_ISA_AVX2
#include "simd_avx2.h"
#include "simd_kernels.h"
