/* The AArch64 NEON kernels: simd_kernels.h over the vocabulary simd_neon.h, compiled
 * with the flags isa_list.h gives. They are, in ce_table_neon:
 *   ce_stats_f32_neon ce_grad_f32_neon ce_shift_f32_neon ce_stats_soft_f32_neon
 *       ce_grad_soft_f32_neon bce_f32_neon ce_grad_exp_f32_neon
 *       ce_stats_grad_f32_neon ce_stats_ahead_f32_neon
 *   ce_stats_f64_neon ce_grad_f64_neon ce_shift_f64_neon ce_stats_soft_f64_neon
 *       ce_grad_soft_f64_neon bce_f64_neon ce_grad_exp_f64_neon
 *       ce_stats_grad_f64_neon ce_stats_ahead_f64_neon
 *   ce_stats_f16_neon ce_grad_f16_neon ce_shift_f16_neon ce_stats_soft_f16_neon
 *       ce_grad_soft_f16_neon bce_f16_neon ce_grad_exp_f16_neon
 *       ce_stats_grad_f16_neon ce_stats_ahead_f16_neon
 *   ce_stats_bf16_neon ce_grad_bf16_neon ce_shift_bf16_neon ce_stats_soft_bf16_neon
 *       ce_grad_soft_bf16_neon bce_bf16_neon ce_grad_exp_bf16_neon
 *       ce_stats_grad_bf16_neon ce_stats_ahead_bf16_neon
 *   vexp_f32_neon vexp_f64_neon vexpn_f32_neon vexpn_nonpos_f32_neon roof_read_neon
 *       roof_copy_neon
 */
#define CE_ISA neon
#define CE_ISA_ID FUSEDCE_ISA_NEON
#include "simd_neon.h"
#include "simd_kernels.h"
