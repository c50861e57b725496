// CPU twins of the CUDA grouped GEMMs with fused epilogues (kernels_moe.h): the same functions as
// the unfused chain, built from it, so that fused and unfused agree by construction:
//   grouped_gemm_scaled = grouped_gemm, then y[r, :] *= row_scale[r] (one float32 multiply per
//                         element, like the CUDA epilogue) for the rows r < offsets[E];
//   grouped_gemm_swiglu = grouped_gemm with w1 and with w3, then swiglu (float32).
// FLOPs: those of the GEMMs (2 rows K N per weight) plus R N for the epilogue.
#include <vector>

#include "../core/dtype.h"
#include "kernels_moe.h"
#include "thread_pool.h"

namespace moma::cpu {

void grouped_gemm_scaled(const float* x, const float* w, bool trans_w, const int32_t* offsets,
                         const float* row_scale, int64_t E, int64_t R, int64_t K, int64_t N, float* y) {
  grouped_gemm(x, w, trans_w, offsets, E, R, K, N, y);  // validates the offsets, zeroes rows >= offsets[E]
  const int64_t used = offsets[E];
  parallel_for(used, N > 0 ? (65536 + N - 1) / N : used + 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float s = row_scale[r];
      float* row = y + r * N;
      for (int64_t c = 0; c < N; ++c) row[c] = s * row[c];
    }
  });
}

void grouped_gemm_swiglu(const float* x, const float* w1, const float* w3, bool trans_w, const int32_t* offsets,
                         int64_t E, int64_t R, int64_t K, int64_t N, float* a, float* h1, float* h3) {
  std::vector<float> h1_buf, h3_buf;
  if (h1 == nullptr) {
    h1_buf.resize(static_cast<size_t>(R * N));
    h1 = h1_buf.data();
  }
  if (h3 == nullptr) {
    h3_buf.resize(static_cast<size_t>(R * N));
    h3 = h3_buf.data();
  }
  grouped_gemm(x, w1, trans_w, offsets, E, R, K, N, h1);
  grouped_gemm(x, w3, trans_w, offsets, E, R, K, N, h3);
  swiglu(kCpuLaunch, DType::F32, h1, h3, a, R * N);
}

}  // namespace moma::cpu
