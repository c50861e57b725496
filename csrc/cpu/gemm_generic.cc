// Portable float32 GEMM micro-kernel (any CPU; the x86-64 baseline compiles it to SSE2).
//
// A 4 x 8 tile of C in a local accumulator array: each k step reads 8 floats of the packed B
// panel and 4 of the packed A panel and does 32 multiply-adds (64 FLOPs for 48 bytes). Written as
// plain loops over fixed trip counts so the compiler keeps the tile in 8 xmm registers (2 per row)
// and vectorises the inner loop on whatever vector unit the baseline target has.
// Blocking (conservative, for a 32 KiB L1d and 256 KiB L2):
//   KC = 256: the B micro-panel (KC x 8 floats = 8 KiB) and A micro-panel (4 KiB) fit in L1.
//   MC = 128: the A block (MC x KC = 128 KiB) fits in L2.
//   NC = 2048: the packed B block (KC x NC = 2 MiB) is read from L3 once per A block.
#include "gemm_kernels.h"

namespace moma::cpu {
namespace {

constexpr int kMR = 4;
constexpr int kNR = 8;

void micro_4x8(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, int64_t mr,
               int64_t nr, float beta) {
  float acc[kMR][kNR] = {};
  for (int64_t k = 0; k < kc; ++k) {
    for (int i = 0; i < kMR; ++i) {
      const float ai = a[i];
      for (int j = 0; j < kNR; ++j) acc[i][j] += ai * b[j];
    }
    a += kMR;
    b += kNR;
  }
  for (int64_t i = 0; i < mr; ++i) {
    float* row = c + i * ldc;
    if (beta == 0.0f) {
      for (int64_t j = 0; j < nr; ++j) row[j] = acc[i][j];
    } else {
      for (int64_t j = 0; j < nr; ++j) row[j] = acc[i][j] + beta * row[j];
    }
  }
}

const GemmKernel kGeneric = {"generic", kMR, kNR, 256, 128, 2048, micro_4x8};

}  // namespace

const GemmKernel& gemm_kernel_generic() { return kGeneric; }

}  // namespace moma::cpu
