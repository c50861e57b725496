// Grouped GEMM over expert segments (kernels_moe.h): one call of the blocked float32 GEMM
// (gemm_f32, which spreads its own work over the thread pool) per non-empty segment.
//   forward: y[seg e] = x[seg e] @ w[e]    (M = segment rows, N, K; w[e] transposed when trans_w)
//   wgrad:   dw[e] = x[seg e]^T @ dy[seg e] (transA, M = K, N = N, inner dimension = segment rows)
// Rows of y past offsets[E] and the dw of empty segments are zero.
#include <algorithm>
#include <cstring>

#include "../core/error.h"
#include "kernels.h"
#include "kernels_moe.h"
#include "thread_pool.h"

namespace moma::cpu {
namespace {

void check_offsets(const char* op, const int32_t* offsets, int64_t E, int64_t R) {
  if (offsets[0] != 0) fail("ERR_RANGE", op, ": offsets[0] = ", offsets[0], ", expected 0");
  for (int64_t e = 0; e < E; ++e) {
    if (offsets[e + 1] < offsets[e] || offsets[e + 1] > R)
      fail("ERR_RANGE", op, ": offsets[", e + 1, "] = ", offsets[e + 1], " is out of range [", offsets[e], ", ", R,
           "]");
  }
}

void zero(float* p, int64_t n) {
  parallel_for(n, 65536, [&](int64_t a, int64_t b) { std::memset(p + a, 0, static_cast<size_t>(b - a) * 4); });
}

}  // namespace

void grouped_gemm(const float* x, const float* w, bool trans_w, const int32_t* offsets, int64_t E, int64_t R,
                  int64_t K, int64_t N, float* y) {
  check_offsets("grouped_matmul", offsets, E, R);
  for (int64_t e = 0; e < E; ++e) {
    const int64_t r0 = offsets[e], rows = offsets[e + 1] - r0;
    if (rows == 0) continue;
    GemmShape g;
    g.M = rows;
    g.N = N;
    g.K = K;
    g.transB = trans_w;
    g.lda = K;
    g.ldb = trans_w ? K : N;
    g.ldc = N;
    gemm_f32(g, x + r0 * K, w + e * K * N, y + r0 * N);
  }
  const int64_t used = offsets[E];
  zero(y + used * N, (R - used) * N);
}

void grouped_gemm_wgrad(const float* x, const float* dy, const int32_t* offsets, int64_t E, int64_t R,
                        int64_t K, int64_t N, float* dw) {
  check_offsets("grouped_matmul_wgrad", offsets, E, R);
  for (int64_t e = 0; e < E; ++e) {
    const int64_t r0 = offsets[e], rows = offsets[e + 1] - r0;
    float* out = dw + e * K * N;
    if (rows == 0) {
      zero(out, K * N);
      continue;
    }
    GemmShape g;
    g.M = K;
    g.N = N;
    g.K = rows;
    g.transA = true;
    g.lda = K;
    g.ldb = N;
    g.ldc = N;
    gemm_f32(g, x + r0 * K, dy + r0 * N, out);
  }
}

}  // namespace moma::cpu
