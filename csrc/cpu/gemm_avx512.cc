// AVX-512 float32 GEMM micro-kernel: a 14 x 32 tile of C held in 28 zmm accumulators.
//
// Each k step loads one 32-float row of the packed B panel (2 zmm) and broadcasts 14 values of
// the packed A panel (vbroadcastss from L1), so one step is 28 FMAs (896 FLOPs) for 2 vector
// loads + 14 scalar loads (184 bytes, L1 hits). 28 accumulators, 2 B registers and 1 broadcast
// register use 31 of the 32 zmm; 28 independent chains cover the 4-cycle FMA latency on 2 ports.
// Blocking (for Sapphire Rapids-class cores: 48 KiB L1d, 2 MiB L2):
//   KC = 256: the B micro-panel (KC x 32 floats = 32 KiB) stays in L1 while the driver walks the
//             MR panels of an A block past it; the A micro-panel (14 KiB) streams from L2.
//   MC = 168: the A block (MC x KC = 168 KiB) stays in L2 across all B micro-panels of a pack.
//   NC = 4096: the packed B block (KC x NC = 4 MiB) lives in L2/L3 and is read once per A block.
// The store adds beta * C (C untouched when beta == 0) through row/column masks, so edge tiles
// use the same code as full ones.
#include "gemm_kernels.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#define MOMA_AVX512 __attribute__((target("avx512f,avx512dq,fma")))

namespace moma::cpu {
namespace {

constexpr int kMR = 14;
constexpr int kNR = 32;

MOMA_AVX512 void micro_14x32(int64_t kc, const float* a, const float* b, float* c, int64_t ldc,
                             int64_t mr, int64_t nr, float beta) {
  __m512 acc[kMR][2];
#pragma GCC unroll 14
  for (int i = 0; i < kMR; ++i) {
    acc[i][0] = _mm512_setzero_ps();
    acc[i][1] = _mm512_setzero_ps();
  }
  for (int64_t i = 0; i < mr; ++i) {
    _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc + 16), _MM_HINT_T0);
  }
#pragma GCC unroll 2
  for (int64_t k = 0; k < kc; ++k) {
    const __m512 b0 = _mm512_load_ps(b);
    const __m512 b1 = _mm512_load_ps(b + 16);
#pragma GCC unroll 14
    for (int i = 0; i < kMR; ++i) {
      const __m512 ai = _mm512_set1_ps(a[i]);
      acc[i][0] = _mm512_fmadd_ps(ai, b0, acc[i][0]);
      acc[i][1] = _mm512_fmadd_ps(ai, b1, acc[i][1]);
    }
    a += kMR;
    b += kNR;
  }

  const __mmask16 m0 = nr >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << nr) - 1);
  const __mmask16 m1 = nr >= 32 ? __mmask16(0xFFFF)
                       : nr > 16 ? __mmask16((1u << (nr - 16)) - 1)
                                 : __mmask16(0);
  const __m512 vbeta = _mm512_set1_ps(beta);
#pragma GCC unroll 14
  for (int i = 0; i < kMR; ++i) {
    if (i < mr) {
      float* row = c + i * ldc;
      __m512 r0 = acc[i][0], r1 = acc[i][1];
      if (beta != 0.0f) {
        r0 = _mm512_fmadd_ps(vbeta, _mm512_maskz_loadu_ps(m0, row), r0);
        r1 = _mm512_fmadd_ps(vbeta, _mm512_maskz_loadu_ps(m1, row + 16), r1);
      }
      _mm512_mask_storeu_ps(row, m0, r0);
      _mm512_mask_storeu_ps(row + 16, m1, r1);
    }
  }
}

const GemmKernel kAvx512 = {"avx512", kMR, kNR, 256, 168, 4096, micro_14x32};

}  // namespace

const GemmKernel* gemm_kernel_avx512() { return &kAvx512; }

}  // namespace moma::cpu

#else

namespace moma::cpu {
const GemmKernel* gemm_kernel_avx512() { return nullptr; }
}  // namespace moma::cpu

#endif
