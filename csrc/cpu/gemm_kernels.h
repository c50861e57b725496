// Private interface between the CPU GEMM driver (gemm.cc) and its micro-kernels
// (gemm_avx512.cc, gemm_avx2.cc, gemm_generic.cc).
//
// A micro-kernel computes one MR x NR tile of C from packed panels:
//   A panel: kc steps of MR floats (row i of the tile at a[k * MR + i]), alpha already applied;
//   B panel: kc steps of NR floats (column j at b[k * NR + j]).
// Both panels are zero-padded to full MR / NR, so the kernel always runs the full tile and only
// the store is clipped to the live mr x nr corner:
//   C[i * ldc + j] = acc[i][j] + beta * C[i * ldc + j]   (beta == 0: C is not read).
// Panels are 64-byte aligned. The blocking sizes belong to the kernel because they follow from
// its register tile and the cache sizes it was tuned for.
#pragma once
#include <cstdint>
#include "../core/kernel_types.h"

namespace moma::cpu {

using GemmMicroKernel = void (*)(int64_t kc, const float* a, const float* b, float* c, int64_t ldc,
                                 int64_t mr, int64_t nr, float beta);

struct GemmKernel {
  const char* isa;         // "avx512", "avx2" or "generic"
  int64_t mr, nr;          // register tile
  int64_t kc, mc, nc;      // cache blocking: K step, rows of A per L2 block, columns of B per pack
  GemmMicroKernel micro;
};

// Kernels of this build; the SIMD ones are nullptr when the compiler cannot target them
// (non-x86 builds). The caller checks the CPU before using one.
const GemmKernel* gemm_kernel_avx512();
const GemmKernel* gemm_kernel_avx2();
const GemmKernel& gemm_kernel_generic();

}  // namespace moma::cpu
