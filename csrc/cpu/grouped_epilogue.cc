// CPU twins of the CUDA grouped GEMMs with fused epilogues (kernels_moe.h), on the grouped driver
// (grouped_driver.h): the products are summed in float32 and, as each output tile becomes final,
// the epilogue runs on it while it is in cache, on the thread that computed it:
//   grouped_gemm_scaled = y[r, :] = row_scale[r] * (x[r, :] @ op(w[e])) for r < offsets[E] (one
//                         float32 multiply per element, like the CUDA epilogue), rounded once to
//                         y's dtype;
//   grouped_gemm_swiglu = h1 = x @ op(w1[e]) and h3 = x @ op(w3[e]) in one pass (each A panel
//                         packed once feeds both), then a = swiglu(h1, h3) through cpu::swiglu on
//                         the float32 tile rows (so fused and unfused agree by construction); a,
//                         h1, h3 each rounded once to the output dtype.
// A float32 output takes the sums in place; any other (and an h1 / h3 the caller does not want)
// is summed in the driver's per-thread tile buffer, never staged whole. Rows past offsets[E] are 0.
// FLOPs: those of the GEMMs (2 rows K N per weight) plus R N for the epilogue.
#include <algorithm>
#include <vector>

#include "../core/bf16.h"
#include "../core/dtype.h"
#include "../core/error.h"
#include "grouped_driver.h"
#include "kernels_moe.h"
#include "thread_pool.h"

namespace moma::cpu {
namespace {

// Rows [r0, R) of an output of dtype dt (null: none) set to 0.
void zero_tail(DType dt, void* out, int64_t r0, int64_t R, int64_t N) {
  if (out == nullptr) return;
  const int64_t es = static_cast<int64_t>(dtype_size(dt));
  zero_bytes(static_cast<char*>(out) + r0 * N * es, (R - r0) * N * es);
}

// dst[0..n) of dtype dt (bf16 rounded once) from float32 src; nothing for a float32 dst that is src.
void store_row(DType dt, void* dst, const float* src, int64_t n) {
  if (dt == DType::F32) {
    float* d = static_cast<float*>(dst);
    if (d != src) std::copy(src, src + n, d);
    return;
  }
  uint16_t* d = static_cast<uint16_t*>(dst);
  for (int64_t i = 0; i < n; ++i) d[i] = f32_to_bf16(src[i]);
}

void* out_at(DType dt, void* p, int64_t i) { return static_cast<char*>(p) + i * static_cast<int64_t>(dtype_size(dt)); }

}  // namespace

void grouped_gemm_scaled(const LaunchCtx&, DType dt_x, const void* x, DType dt_w, const void* w, bool trans_w,
                         const int32_t* offsets, const float* row_scale, int64_t E, int64_t R, int64_t K, int64_t N,
                         DType dt_y, void* y) {
  const char* op = "grouped_matmul_scaled";
  check_dtype(op, "output", dt_y);
  check_dtype(op, "x", dt_x);
  check_dtype(op, "w", dt_w);
  check_offsets(op, offsets, E, R);
  zero_tail(dt_y, y, K > 0 ? offsets[E] : 0, R, N);
  if (K <= 0) return;
  std::vector<GroupedProduct> products(static_cast<size_t>(E));
  for (int64_t e = 0; e < E; ++e) {
    GroupedProduct& p = products[size_t(e)];
    p.a = element_at(dt_x, x, offsets[e] * K);
    p.b[0] = element_at(dt_w, w, e * K * N);
    p.c[0] = dt_y == DType::F32 ? static_cast<float*>(y) + offsets[e] * N : nullptr;
    p.m = offsets[e + 1] - offsets[e];
    p.k = K;
  }
  const GroupedFinish scale_tile = [&](const GroupedTile& t) {
    for (int64_t i = t.i0; i < t.i1; ++i) {
      const int64_t r = offsets[t.p] + i;
      const float s = row_scale[r];
      float* row = t.sums[0] + (i - t.i0) * t.ld[0];
      for (int64_t j = 0; j < t.j1 - t.j0; ++j) row[j] = s * row[j];
      store_row(dt_y, out_at(dt_y, y, r * N + t.j0), row, t.j1 - t.j0);
    }
  };
  run_grouped(grouped_paths(), forward_shape(dt_x, dt_w, trans_w, K, N), products, &scale_tile);
}

void grouped_gemm_swiglu(const LaunchCtx& ctx, DType dt_x, const void* x, DType dt_w, const void* w1, const void* w3,
                         bool trans_w, const int32_t* offsets, int64_t E, int64_t R, int64_t K, int64_t N, DType dt_y,
                         void* a, void* h1, void* h3) {
  const char* op = "grouped_matmul_swiglu";
  check_dtype(op, "output", dt_y);
  check_dtype(op, "x", dt_x);
  check_dtype(op, "w", dt_w);
  check_offsets(op, offsets, E, R);
  for (void* out : {a, h1, h3}) zero_tail(dt_y, out, K > 0 ? offsets[E] : 0, R, N);
  if (K <= 0) return;
  const bool f32 = dt_y == DType::F32;
  std::vector<GroupedProduct> products(static_cast<size_t>(E));
  for (int64_t e = 0; e < E; ++e) {
    GroupedProduct& p = products[size_t(e)];
    p.a = element_at(dt_x, x, offsets[e] * K);
    p.b[0] = element_at(dt_w, w1, e * K * N);
    p.b[1] = element_at(dt_w, w3, e * K * N);
    p.c[0] = f32 && h1 ? static_cast<float*>(h1) + offsets[e] * N : nullptr;
    p.c[1] = f32 && h3 ? static_cast<float*>(h3) + offsets[e] * N : nullptr;
    p.m = offsets[e + 1] - offsets[e];
    p.k = K;
  }
  GroupedGemm g = forward_shape(dt_x, dt_w, trans_w, K, N);
  g.operands = 2;
  const GroupedFinish swiglu_tile = [&](const GroupedTile& t) {
    const int64_t cols = t.j1 - t.j0;
    std::vector<float> a_row(f32 ? 0 : static_cast<size_t>(cols));
    for (int64_t i = t.i0; i < t.i1; ++i) {
      const int64_t at_row = (offsets[t.p] + i) * N + t.j0;
      const float* s1 = t.sums[0] + (i - t.i0) * t.ld[0];
      const float* s3 = t.sums[1] + (i - t.i0) * t.ld[1];
      float* a32 = f32 ? static_cast<float*>(a) + at_row : a_row.data();
      swiglu(ctx, DType::F32, s1, s3, a32, cols);
      store_row(dt_y, out_at(dt_y, a, at_row), a32, cols);
      if (h1) store_row(dt_y, out_at(dt_y, h1, at_row), s1, cols);
      if (h3) store_row(dt_y, out_at(dt_y, h3, at_row), s3, cols);
    }
  };
  run_grouped(grouped_paths(), g, products, &swiglu_tile);
}

}  // namespace moma::cpu
