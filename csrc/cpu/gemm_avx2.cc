// AVX2 + FMA float32 GEMM micro-kernel: a 6 x 16 tile of C held in 12 ymm accumulators.
//
// Each k step loads one 16-float row of the packed B panel (2 ymm) and broadcasts 6 values of the
// packed A panel, giving 12 FMAs (192 FLOPs) for 64 + 24 bytes of loads; 12 accumulators, 2 B
// registers and 1 broadcast register fit the 16 ymm registers, and 12 independent FMA chains
// cover the FMA latency (4-5 cycles) on two ports.
// Blocking (for a 32-48 KiB L1d and >= 1 MiB L2 per core):
//   KC = 256: the B micro-panel (KC x 16 floats = 16 KiB) stays in L1; the A micro-panel (6 KiB)
//             streams from L2.
//   MC = 144: the A block (MC x KC = 144 KiB) stays in L2 across the B micro-panels.
//   NC = 4096: the packed B block (KC x NC = 4 MiB) is read from L2/L3 once per A block.
// The store adds beta * C (C untouched when beta == 0) through lane masks for edge tiles.
#include "gemm_kernels.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#define MOMA_AVX2 __attribute__((target("avx2,fma")))

namespace moma::cpu {
namespace {

constexpr int kMR = 6;
constexpr int kNR = 16;

MOMA_AVX2 void micro_6x16(int64_t kc, const float* a, const float* b, float* c, int64_t ldc,
                          int64_t mr, int64_t nr, float beta) {
  __m256 acc[kMR][2];
#pragma GCC unroll 6
  for (int i = 0; i < kMR; ++i) {
    acc[i][0] = _mm256_setzero_ps();
    acc[i][1] = _mm256_setzero_ps();
  }
#pragma GCC unroll 4
  for (int64_t k = 0; k < kc; ++k) {
    const __m256 b0 = _mm256_load_ps(b);
    const __m256 b1 = _mm256_load_ps(b + 8);
#pragma GCC unroll 6
    for (int i = 0; i < kMR; ++i) {
      const __m256 ai = _mm256_broadcast_ss(a + i);
      acc[i][0] = _mm256_fmadd_ps(ai, b0, acc[i][0]);
      acc[i][1] = _mm256_fmadd_ps(ai, b1, acc[i][1]);
    }
    a += kMR;
    b += kNR;
  }

  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i m0 = _mm256_cmpgt_epi32(_mm256_set1_epi32(int(nr)), lane);
  const __m256i m1 = _mm256_cmpgt_epi32(_mm256_set1_epi32(int(nr) - 8), lane);
  const __m256 vbeta = _mm256_set1_ps(beta);
#pragma GCC unroll 6
  for (int i = 0; i < kMR; ++i) {
    if (i < mr) {
      float* row = c + i * ldc;
      __m256 r0 = acc[i][0], r1 = acc[i][1];
      if (beta != 0.0f) {
        r0 = _mm256_fmadd_ps(vbeta, _mm256_maskload_ps(row, m0), r0);
        r1 = _mm256_fmadd_ps(vbeta, _mm256_maskload_ps(row + 8, m1), r1);
      }
      _mm256_maskstore_ps(row, m0, r0);
      _mm256_maskstore_ps(row + 8, m1, r1);
    }
  }
}

const GemmKernel kAvx2 = {"avx2", kMR, kNR, 256, 144, 4096, micro_6x16};

}  // namespace

const GemmKernel* gemm_kernel_avx2() { return &kAvx2; }

}  // namespace moma::cpu

#else

namespace moma::cpu {
const GemmKernel* gemm_kernel_avx2() { return nullptr; }
}  // namespace moma::cpu

#endif
