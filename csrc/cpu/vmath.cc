// Run-time choice of the vmath.h SIMD table: on x86-64 AVX-512 (F, BW, DQ) when the CPU has it,
// else AVX2 with FMA; on AArch64 NEON (part of the baseline); else none (callers keep their scalar
// loops). Decided once, on first use.
#include "vmath.h"

namespace moma::cpu::vmath {
namespace {

const Kernels* select_kernels() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  const bool fma = __builtin_cpu_supports("fma");
  if (kernels_avx512() && fma && __builtin_cpu_supports("avx512f") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq"))
    return kernels_avx512();
  if (kernels_avx2() && fma && __builtin_cpu_supports("avx2")) return kernels_avx2();
#endif
  return kernels_neon();  // nullptr outside AArch64
}

}  // namespace

const Kernels* vector_kernels() {
  static const Kernels* const kernels = select_kernels();
  return kernels;
}

}  // namespace moma::cpu::vmath
