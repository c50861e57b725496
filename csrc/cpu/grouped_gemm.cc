// Grouped GEMM over expert segments (kernels_moe.h): one call of the blocked CPU GEMM (gemm.cc,
// which spreads its own work over the thread pool and rounds a bf16 output once) per non-empty
// segment. Segments whose x and w (forward, input gradient) or x and dy (weight gradient) are both
// bf16 run on gemm.cc's bf16 path (AMX or AVX-512-BF16, float32 accumulation) when this CPU has
// one; any float32 operand widens the bf16 one while packing (the float32 path).
//   forward: y[seg e] = x[seg e] @ w[e]    (M = segment rows, N, K; w[e] transposed when trans_w)
//   wgrad:   dw[e] = x[seg e]^T @ dy[seg e] (transA, M = K, N = N, inner dimension = segment rows)
// x, w, dy float32 or bf16; y float32 or bf16; dw float32. Rows of y past offsets[E] and the dw of
// empty segments are zero. FLOPs 2 * offsets[E] * K * N for either; bytes about offsets[E] * (K + N)
// elements plus the E weight matrices, each read once per segment (the GEMM's packing).
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

// Sets `bytes` bytes at p to zero (0 is +0.0 in float32 and bf16).
void zero_bytes(void* p, int64_t bytes) {
  char* c = static_cast<char*>(p);
  parallel_for(bytes, 262144, [&](int64_t a, int64_t b) { std::memset(c + a, 0, static_cast<size_t>(b - a)); });
}

// Element `i` of a buffer of dtype dt.
const void* at(DType dt, const void* p, int64_t i) {
  return static_cast<const char*>(p) + i * static_cast<int64_t>(dtype_size(dt));
}
void* at(DType dt, void* p, int64_t i) { return static_cast<char*>(p) + i * static_cast<int64_t>(dtype_size(dt)); }

}  // namespace

void grouped_gemm(const LaunchCtx& ctx, DType dt_x, const void* x, DType dt_w, const void* w, bool trans_w,
                  const int32_t* offsets, int64_t E, int64_t R, int64_t K, int64_t N, DType dt_y, void* y) {
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
    gemm(ctx, dt_x, at(dt_x, x, r0 * K), dt_w, at(dt_w, w, e * K * N), dt_y, at(dt_y, y, r0 * N), g);
  }
  const int64_t used = offsets[E];
  zero_bytes(at(dt_y, y, used * N), (R - used) * N * static_cast<int64_t>(dtype_size(dt_y)));
}

void grouped_gemm_wgrad(const LaunchCtx& ctx, DType dt_x, const void* x, DType dt_dy, const void* dy,
                        const int32_t* offsets, int64_t E, int64_t R, int64_t K, int64_t N, float* dw) {
  check_offsets("grouped_matmul_wgrad", offsets, E, R);
  for (int64_t e = 0; e < E; ++e) {
    const int64_t r0 = offsets[e], rows = offsets[e + 1] - r0;
    float* out = dw + e * K * N;
    if (rows == 0) {
      zero_bytes(out, K * N * 4);
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
    gemm(ctx, dt_x, at(dt_x, x, r0 * K), dt_dy, at(dt_dy, dy, r0 * N), DType::F32, out, g);
  }
}

}  // namespace moma::cpu
