/* The SIMD instruction sets of the CPU kernels: the one list.
 *
 *   X(ID, name, arch, "compiler flags")
 *
 * ID: FUSEDCE_ISA_<ID> in fusedce.h (the public enum, whose values never change); name: the
 * kernels' suffix, the FUSEDCE_ISA value, the Python name, and the files csrc/ce_<name>.c (the
 * instantiation) and csrc/simd_<name>.h (the vocabulary); arch: the machine that has it (x86_64
 * or aarch64); the flags compile ce_<name>.c and nothing else. Portable (scalar, every CPU) is
 * not listed: it is always there.
 *
 * Read by kernels.h (the tables), dispatch.c (names, selection), tests/c (the drivers),
 * bench/c_kernels.c, and as text by CMakeLists.txt and tests/c/isas.sh (the build and CI
 * scripts), so keep each entry on one line of this form. A new instruction set is a line
 * here, its vocabulary header, a three-line ce_<name>.c, its enum value and its CPU check in
 * dispatch.c.
 */
#ifndef FUSEDCE_ISA_LIST_H
#define FUSEDCE_ISA_LIST_H

#define CE_ISA_LIST(X)                                                                         \
    X(AVX2, avx2, x86_64, "-mavx2 -mfma -mf16c")                                               \
    X(AVX512, avx512, x86_64, "-mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma -mf16c")      \
    X(NEON, neon, aarch64, "")

#endif /* FUSEDCE_ISA_LIST_H */
