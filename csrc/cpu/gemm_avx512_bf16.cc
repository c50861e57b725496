// AVX-512-BF16 GEMM micro-kernel (bf16 x bf16, float32 accumulation): a 14 x 32 tile of C held in
// 28 zmm accumulators, fed by vdpbf16ps.
//
// vdpbf16ps acc, a, b: for each of the 16 float32 lanes, acc += a.lo * b.lo + a.hi * b.hi where
// lo / hi are the two bf16 halves of the lane's 32-bit word. Each step takes one k pair: it loads
// one 32-word row of the VNNI-packed B panel (2 zmm: columns 0-15 and 16-31, each word the pair
// (b[2p][j], b[2p + 1][j])) and broadcasts the pair word (a[i][2p], a[i][2p + 1]) of each of the 14
// rows of the pair-packed A panel, so one step is 28 vdpbf16ps = 28 * 16 * 2 multiply-adds =
// 1,792 FLOPs for 2 vector loads + 14 dword broadcasts (184 bytes, L1 hits). 28 accumulators, 2 B
// registers and 1 broadcast register use 31 of the 32 zmm, the register budget of the float32
// kernel (gemm_avx512.cc); the FLOPs per instruction double (2 products per lane), so the ceiling
// is twice the float32 FMA ceiling at the same issue rate (on 2 Zen 5 cores measured by
// moma_kernel_bench's ceiling.dpbf16).
// Rounding: the products of two bf16 are exact in float32; each vdpbf16ps rounds its sums to
// float32 (nearest even) with denormal inputs and results flushed to zero (the instruction's
// DAZ / FTZ behaviour), so a K-long dot product has at most K roundings, like the float32 FMA chain.
// Blocking (48 KiB L1d, 1-2 MiB L2 per core), in k:
//   KC = 512: the B micro-panel (KC x 32 bf16 = 32 KiB) stays in L1 while the driver walks the
//             MR panels of an A block past it; the A micro-panel (14 KiB) streams from L2.
//   MC = 168: the A block (MC x KC bf16 = 168 KiB) stays in L2 across the B micro-panels of a pack.
//   NC = 4096: the packed B block (KC x NC bf16 = 4 MiB) lives in L2/L3, read once per A block.
// The store writes alpha * acc + beta * C (C untouched when beta == 0) through column masks, so
// edge tiles run the same code as full ones.
#include <cstring>

#include "gemm_kernels.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#define MOMA_AVX512BF16 __attribute__((target("avx512f,avx512bf16,fma")))

namespace moma::cpu {
namespace {

constexpr int kMR = 14;
constexpr int kNR = 32;

MOMA_AVX512BF16 void micro_bf16_14x32(int64_t kd, const uint16_t* a, const uint16_t* b, float* c, int64_t ldc,
                                      int64_t mr, int64_t nr, float alpha, float beta) {
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
  for (int64_t p = 0; p < kd / 2; ++p) {
    const __m512bh b0 = (__m512bh)_mm512_load_si512(b);
    const __m512bh b1 = (__m512bh)_mm512_load_si512(b + 32);
#pragma GCC unroll 14
    for (int i = 0; i < kMR; ++i) {
      int32_t pair;
      std::memcpy(&pair, a + 2 * i, sizeof pair);
      const __m512bh ai = (__m512bh)_mm512_set1_epi32(pair);
      acc[i][0] = _mm512_dpbf16_ps(acc[i][0], ai, b0);
      acc[i][1] = _mm512_dpbf16_ps(acc[i][1], ai, b1);
    }
    a += 2 * kMR;
    b += 2 * kNR;
  }

  const __mmask16 m0 = nr >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << nr) - 1);
  const __mmask16 m1 = nr >= 32 ? __mmask16(0xFFFF)
                       : nr > 16 ? __mmask16((1u << (nr - 16)) - 1)
                                 : __mmask16(0);
  const __m512 valpha = _mm512_set1_ps(alpha), vbeta = _mm512_set1_ps(beta);
#pragma GCC unroll 14
  for (int i = 0; i < kMR; ++i) {
    if (i < mr) {
      float* row = c + i * ldc;
      __m512 r0 = _mm512_mul_ps(valpha, acc[i][0]), r1 = _mm512_mul_ps(valpha, acc[i][1]);
      if (beta != 0.0f) {
        r0 = _mm512_fmadd_ps(vbeta, _mm512_maskz_loadu_ps(m0, row), r0);
        r1 = _mm512_fmadd_ps(vbeta, _mm512_maskz_loadu_ps(m1, row + 16), r1);
      }
      _mm512_mask_storeu_ps(row, m0, r0);
      _mm512_mask_storeu_ps(row + 16, m1, r1);
    }
  }
}

const GemmKernelBf16 kAvx512Bf16 = {"avx512bf16", kMR, kNR, 512, 168, 4096, 2, BF16ALayout::Pairs,
                                    micro_bf16_14x32, nullptr, nullptr};

}  // namespace

const GemmKernelBf16* gemm_kernel_avx512_bf16() { return &kAvx512Bf16; }

}  // namespace moma::cpu

#else

namespace moma::cpu {
const GemmKernelBf16* gemm_kernel_avx512_bf16() { return nullptr; }
}  // namespace moma::cpu

#endif
