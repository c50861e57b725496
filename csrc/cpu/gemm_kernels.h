// Private interface between the CPU GEMM driver (gemm.cc) and its micro-kernels
// (gemm_avx512.cc, gemm_avx2.cc, gemm_neon.cc, gemm_generic.cc for float32; gemm_avx512_bf16.cc,
// gemm_amx.cc for bf16 x bf16; AArch64 has no bf16 x bf16 kernel, its bf16 GEMMs widen to float32).
//
// A float32 micro-kernel computes one MR x NR tile of C from packed panels:
//   A panel: kc steps of MR floats (row i of the tile at a[k * MR + i]), alpha already applied;
//   B panel: kc steps of NR floats (column j at b[k * NR + j]).
// Both panels are zero-padded to full MR / NR, so the kernel always runs the full tile and only
// the store is clipped to the live mr x nr corner:
//   C[i * ldc + j] = acc[i][j] + beta * C[i * ldc + j]   (beta == 0: C is not read).
//
// A bf16 micro-kernel multiplies bf16 panels with float32 accumulation. K is padded with zeros to
// kd, a multiple of the kernel's k_align, and the panels are:
//   B panel (VNNI pairs): element (k, j) at b[(k / 2) * NR * 2 + j * 2 + k % 2], so one 32-bit
//     word holds the k pair (2p, 2p + 1) of column j and a row of NR words feeds NR float32 lanes;
//   A panel, BF16ALayout::Pairs: element (i, k) at a[(k / 2) * MR * 2 + i * 2 + k % 2] (one 32-bit
//     broadcast per row and k pair);
//   A panel, BF16ALayout::Rows32: element (i, k) at a[(k / 32) * MR * 32 + i * 32 + k % 32] (an
//     AMX A tile: 16 rows of 32 consecutive k, 64 bytes per row).
// Alpha is applied at the store (a bf16 panel cannot hold alpha * a exactly):
//   C[i * ldc + j] = alpha * acc[i][j] + beta * C[i * ldc + j]   (beta == 0: C is not read).
// Panels are 64-byte aligned. The blocking sizes belong to the kernel because they follow from
// its register (or tile) footprint and the cache sizes it was tuned for.
#pragma once
#include <cstdint>
#include "../core/kernel_types.h"

namespace moma::cpu {

using GemmMicroKernel = void (*)(int64_t kc, const float* a, const float* b, float* c, int64_t ldc,
                                 int64_t mr, int64_t nr, float beta);

struct GemmKernel {
  const char* isa;         // "avx512", "avx2", "neon" or "generic"
  int64_t mr, nr;          // register tile
  int64_t kc, mc, nc;      // cache blocking: K step, rows of A per L2 block, columns of B per pack
  GemmMicroKernel micro;
};

// kd: the padded panel depth (a multiple of k_align).
using GemmMicroKernelBf16 = void (*)(int64_t kd, const uint16_t* a, const uint16_t* b, float* c, int64_t ldc,
                                     int64_t mr, int64_t nr, float alpha, float beta);

enum class BF16ALayout { Pairs, Rows32 };

struct GemmKernelBf16 {
  const char* isa;         // "avx512bf16" or "amx"
  int64_t mr, nr;          // register / tile block of C
  int64_t kc, mc, nc;      // cache blocking (kc a multiple of k_align)
  int64_t k_align;         // panel depth granule: 2 (a k pair) or 32 (an AMX tile's depth)
  BF16ALayout a_layout;
  GemmMicroKernelBf16 micro;
  void (*begin)();         // on a thread before its first micro-kernel call of a work item, or nullptr
  void (*end)();           // on that thread after the last call of the work item, or nullptr
};

// Kernels of this build; the SIMD ones are nullptr when the compiler cannot target them (the x86
// ones outside x86-64, NEON outside AArch64). The caller checks the CPU before using one.
const GemmKernel* gemm_kernel_avx512();
const GemmKernel* gemm_kernel_avx2();
const GemmKernel* gemm_kernel_neon();
const GemmKernel& gemm_kernel_generic();
const GemmKernelBf16* gemm_kernel_avx512_bf16();
const GemmKernelBf16* gemm_kernel_amx();

// The kernels a GEMM call uses: float32 (any operand float32, or bf16 widened when bf16 is null)
// and bf16 x bf16.
struct GemmPaths {
  const GemmKernel* f32 = nullptr;
  const GemmKernelBf16* bf16 = nullptr;
};

// The paths for a MOMA_CPU_GEMM value: null or "" = the best this CPU runs (bf16: amx, else
// avx512bf16, else widened; float32: avx512, else avx2, else neon, else generic); "amx" /
// "avx512bf16" = that bf16 kernel with the best float32 one; "avx512" / "avx2" / "neon" /
// "generic" = that float32 kernel with bf16 widened. An unknown value throws ERR_ARG, a path this CPU cannot run ERR_DEVICE, both
// naming MOMA_CPU_GEMM.
GemmPaths gemm_paths_for(const char* choice);
// gemm_paths_for(getenv("MOMA_CPU_GEMM")), read now (cpu::gemm reads it once, at its first call).
GemmPaths gemm_paths_from_env();
// Skinny GEMMs (gemm_skinny.cc): one matrix (batch 1) with N or K at most kSkinnyMax, float32 or
// bf16 operands and C, streaming the big operand once with the small one packed in float32; any
// transposes, alpha and beta. cpu::gemm sends every shape gemm_skinny_applies to here (whatever
// MOMA_CPU_GEMM picks for the blocked driver); gemm_on does not. Results do not depend on
// `threads` (1 runs on the calling thread, more on the pool).
constexpr int64_t kSkinnyMax = 16;
bool gemm_skinny_applies(const GemmShape& g);
void gemm_skinny(DType dt_a, const void* A, DType dt_b, const void* B, DType dt_c, void* C, const GemmShape& g,
                 int threads);
// cpu::gemm on the given paths instead of the process-wide choice (tests compare the paths).
void gemm_on(const GemmPaths& paths, DType dt_a, const void* A, DType dt_b, const void* B, DType dt_c, void* C,
             const GemmShape& g);

}  // namespace moma::cpu
