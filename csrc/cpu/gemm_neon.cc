// AArch64 NEON (Advanced SIMD) float32 GEMM micro-kernel: an 8 x 12 tile of C in 24 q registers.
//
// Each k step loads the 12-float row of the packed B panel (3 q registers) and the 8 floats of the
// packed A panel (2 q registers), then does 24 fmla-by-element (vfmaq_laneq_f32: B row times one
// lane of A), 96 multiply-adds for 80 bytes of L1 loads. 24 accumulators + 3 B + 2 A registers use
// 29 of the 32 vector registers; 24 independent chains cover the 4-cycle fmla latency on the 2-4
// FMA pipes of Neoverse N1 / V1 / V2 (Graviton 2/3/4, Grace) and Cortex-A7x cores.
// Blocking (for 64 KiB L1d and 1 MiB L2 per core, Neoverse class):
//   KC = 256: the B micro-panel (KC x 12 floats = 12 KiB) and A micro-panel (8 KiB) stay in L1.
//   MC = 192: the A block (MC x KC = 192 KiB) stays in L2 across all B micro-panels of a pack.
//   NC = 3072: the packed B block (KC x NC = 3 MiB) is read from L2/L3 once per A block.
// The store adds beta * C with one fused multiply-add (C untouched when beta == 0); edge tiles go
// through a stack copy of the tile with the same fused operation per element (std::fma), so an
// element's value does not depend on whether its tile is full.
// NEON is part of the AArch64 baseline, so no run-time check is needed; on other targets this file
// compiles to gemm_kernel_neon() == nullptr.
#include <cmath>

#include "gemm_kernels.h"

#if defined(__aarch64__) && (defined(__GNUC__) || defined(__clang__))
#include <arm_neon.h>

namespace moma::cpu {
namespace {

constexpr int kMR = 8;
constexpr int kNR = 12;

void micro_8x12(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, int64_t mr, int64_t nr,
                float beta) {
  float32x4_t acc[kMR][3];
#pragma GCC unroll 8
  for (int i = 0; i < kMR; ++i) acc[i][0] = acc[i][1] = acc[i][2] = vdupq_n_f32(0.0f);
  for (int64_t i = 0; i < mr; ++i) __builtin_prefetch(c + i * ldc, 1);

  for (int64_t k = 0; k < kc; ++k) {
    const float32x4_t b0 = vld1q_f32(b), b1 = vld1q_f32(b + 4), b2 = vld1q_f32(b + 8);
    const float32x4_t a_lo = vld1q_f32(a), a_hi = vld1q_f32(a + 4);
    // Row r of the tile += A[r] * B row; the lane index of vfmaq_laneq_f32 must be a constant.
#define MOMA_NEON_ROW(r, av, lane)                          \
  acc[r][0] = vfmaq_laneq_f32(acc[r][0], b0, av, lane);     \
  acc[r][1] = vfmaq_laneq_f32(acc[r][1], b1, av, lane);     \
  acc[r][2] = vfmaq_laneq_f32(acc[r][2], b2, av, lane)
    MOMA_NEON_ROW(0, a_lo, 0);
    MOMA_NEON_ROW(1, a_lo, 1);
    MOMA_NEON_ROW(2, a_lo, 2);
    MOMA_NEON_ROW(3, a_lo, 3);
    MOMA_NEON_ROW(4, a_hi, 0);
    MOMA_NEON_ROW(5, a_hi, 1);
    MOMA_NEON_ROW(6, a_hi, 2);
    MOMA_NEON_ROW(7, a_hi, 3);
#undef MOMA_NEON_ROW
    a += kMR;
    b += kNR;
  }

  if (mr == kMR && nr == kNR) {
    const float32x4_t vbeta = vdupq_n_f32(beta);
#pragma GCC unroll 8
    for (int i = 0; i < kMR; ++i) {
      float* row = c + i * ldc;
#pragma GCC unroll 3
      for (int v = 0; v < 3; ++v) {
        float32x4_t r = acc[i][v];
        if (beta != 0.0f) r = vfmaq_f32(r, vbeta, vld1q_f32(row + 4 * v));
        vst1q_f32(row + 4 * v, r);
      }
    }
    return;
  }
  float tile[kMR][kNR];
#pragma GCC unroll 8
  for (int i = 0; i < kMR; ++i)
#pragma GCC unroll 3
    for (int v = 0; v < 3; ++v) vst1q_f32(&tile[i][4 * v], acc[i][v]);
  for (int64_t i = 0; i < mr; ++i) {
    float* row = c + i * ldc;
    if (beta == 0.0f) {
      for (int64_t j = 0; j < nr; ++j) row[j] = tile[i][j];
    } else {
      for (int64_t j = 0; j < nr; ++j) row[j] = std::fma(beta, row[j], tile[i][j]);
    }
  }
}

const GemmKernel kNeon = {"neon", kMR, kNR, 256, 192, 3072, micro_8x12};

}  // namespace

const GemmKernel* gemm_kernel_neon() { return &kNeon; }

}  // namespace moma::cpu

#else

namespace moma::cpu {
const GemmKernel* gemm_kernel_neon() { return nullptr; }
}  // namespace moma::cpu

#endif
