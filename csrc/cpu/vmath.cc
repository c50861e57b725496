// Run-time choice of the vmath.h SIMD table: AVX-512 (F, BW, DQ) when the CPU has it, else AVX2
// with FMA, else none (callers keep their scalar loops). Decided once, on first use.
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
  return nullptr;
}

}  // namespace

const Kernels* vector_kernels() {
  static const Kernels* const kernels = select_kernels();
  return kernels;
}

}  // namespace moma::cpu::vmath
