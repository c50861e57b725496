// CPU twins of the CUDA grouped GEMMs with fused epilogues (kernels_moe.h): the same functions as
// the unfused chain, built from it, so that fused and unfused agree by construction:
//   grouped_gemm_scaled = grouped_gemm into float32, then y[r, :] = row_scale[r] * y[r, :] (one
//                         float32 multiply per element, like the CUDA epilogue) for the rows
//                         r < offsets[E], rounded once to y's dtype;
//   grouped_gemm_swiglu = grouped_gemm into float32 with w1 and with w3, then swiglu on those
//                         float32 products; a, h1, h3 each rounded once to the output dtype.
// A float32 output is the float32 buffer itself; a bf16 output (or an h1 / h3 the caller does
// not want) gets a float32 staging buffer of R x N. FLOPs: those of the GEMMs (2 rows K N per
// weight) plus R N for the epilogue.
#include <memory>

#include "../core/bf16.h"
#include "../core/dtype.h"
#include "../core/error.h"
#include "kernels_moe.h"
#include "thread_pool.h"

namespace moma::cpu {
namespace {

// The float32 values of an output of n elements: the output itself when it is float32, else a
// staging buffer that store() rounds into the output (nothing to store for a null output).
class F32Result {
 public:
  F32Result(const char* op, DType dt, void* out, int64_t n) : dt_(dt), out_(out), n_(n) {
    if (dt != DType::F32 && dt != DType::BF16)
      fail("ERR_DTYPE", op, ": output dtype ", dtype_name(dt), " is not float32 or bfloat16");
    if (dt == DType::F32 && out != nullptr) {
      f32_ = static_cast<float*>(out);
    } else {
      stage_.reset(new float[static_cast<size_t>(n)]);
      f32_ = stage_.get();
    }
  }
  float* f32() const { return f32_; }
  void store() const {
    if (out_ == nullptr || dt_ == DType::F32) return;
    uint16_t* y = static_cast<uint16_t*>(out_);
    const float* s = f32_;
    parallel_for(n_, 65536, [&](int64_t a, int64_t b) {
      for (int64_t i = a; i < b; ++i) y[i] = f32_to_bf16(s[i]);
    });
  }

 private:
  DType dt_;
  void* out_;
  int64_t n_;
  std::unique_ptr<float[]> stage_;
  float* f32_ = nullptr;
};

}  // namespace

void grouped_gemm_scaled(const LaunchCtx& ctx, DType dt_x, const void* x, DType dt_w, const void* w, bool trans_w,
                         const int32_t* offsets, const float* row_scale, int64_t E, int64_t R, int64_t K, int64_t N,
                         DType dt_y, void* y) {
  const F32Result out("grouped_matmul_scaled", dt_y, y, R * N);
  float* y32 = out.f32();
  // Validates the offsets and zeroes rows >= offsets[E].
  grouped_gemm(ctx, dt_x, x, dt_w, w, trans_w, offsets, E, R, K, N, DType::F32, y32);
  const int64_t used = offsets[E];
  parallel_for(used, N > 0 ? (65536 + N - 1) / N : used + 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float s = row_scale[r];
      float* row = y32 + r * N;
      for (int64_t c = 0; c < N; ++c) row[c] = s * row[c];
    }
  });
  out.store();
}

void grouped_gemm_swiglu(const LaunchCtx& ctx, DType dt_x, const void* x, DType dt_w, const void* w1, const void* w3,
                         bool trans_w, const int32_t* offsets, int64_t E, int64_t R, int64_t K, int64_t N, DType dt_y,
                         void* a, void* h1, void* h3) {
  const char* op = "grouped_matmul_swiglu";
  const F32Result a32(op, dt_y, a, R * N), h1_32(op, dt_y, h1, R * N), h3_32(op, dt_y, h3, R * N);
  grouped_gemm(ctx, dt_x, x, dt_w, w1, trans_w, offsets, E, R, K, N, DType::F32, h1_32.f32());
  grouped_gemm(ctx, dt_x, x, dt_w, w3, trans_w, offsets, E, R, K, N, DType::F32, h3_32.f32());
  swiglu(ctx, DType::F32, h1_32.f32(), h3_32.f32(), a32.f32(), R * N);
  a32.store();
  h1_32.store();
  h3_32.store();
}

}  // namespace moma::cpu
