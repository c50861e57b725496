// Cross-entropy over logits [N, V] and its backward (semantics: csrc/cpu/kernels_nn.h; the CPU
// twin is csrc/cpu/cross_entropy.cc, whose rounding steps are followed here).
//
// Forward: one 256-thread block per row (grid-stride over rows), two passes over the row:
//   1. m = max (NaN-propagating, as the CPU's max_nan);
//   2. sum = sum_v expf(x - m) (the difference rounded to float, exp in float, summed in double
//      per thread, then a fixed tree over the block: deterministic);
//   lse = float(m + log(sum)) and nll = float(m + log(sum) - x[target]) in double (0 for target -1,
//   lse = -inf when m = -inf). A target outside [-1, V) records kCrossEntropyTarget and gets nll 0.
//   The second pass reads the row again (L2-resident: rows are at most a few hundred KB).
// Backward: element-wise per row, p = expf(x - lse), c = (g_z * 2) * lse,
//   dlogits = g_nll * p + c * p, at the target g_nll * (p - 1) + c * p (without g_z the z term is
//   absent), each product and sum rounded (__fmul_rn / __fadd_rn / __fsub_rn), bf16 rounded once.
//   Results agree with the CPU up to the few-ulp difference of expf.
// Both use 16-byte vectors (4 f32 / 8 bf16) when V and the pointers allow.
// FLOPs ~ 4 per element plus one expf; bytes: forward 2 x N V elem read (second from L2), backward
// N V elem read + written: memory bound.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "common.cuh"
#include "kernels.h"
#include "kernels_nn.h"

namespace moma::cuda {
using namespace detail;

namespace {

constexpr int kCeThreads = 256;
constexpr int kCeWarps = kCeThreads / 32;

__device__ __forceinline__ float max_nan(float a, float v) { return (a != a || v <= a) ? a : v; }

// Block-wide reductions with a fixed shape (xor butterfly per warp, then warp 0 over the warps
// in order); every thread gets the result. `red` is shared scratch of kCeWarps elements.
template <typename U, typename Op>
__device__ __forceinline__ U block_reduce(U v, U* red, Op op) {
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xFFFFFFFFu, v, o));
  __syncthreads();  // red is free (previous use finished)
  if (lane == 0) red[w] = v;
  __syncthreads();
  U r = red[0];
#pragma unroll
  for (int k = 1; k < kCeWarps; ++k) r = op(r, red[k]);
  return r;
}

template <typename T, bool VEC>
__global__ void __launch_bounds__(kCeThreads)
    cross_entropy_kernel(const T* __restrict__ logits, const int32_t* __restrict__ targets, int64_t N, int64_t V,
                         float* __restrict__ nll, float* __restrict__ lse, int32_t* err) {
  using IO = RowIO<T, VEC>;
  constexpr int VN = IO::N;
  __shared__ float red_f[kCeWarps];
  __shared__ double red_d[kCeWarps];
  const int64_t nk = V / VN;
  for (int64_t n = blockIdx.x; n < N; n += gridDim.x) {
    const T* row = logits + n * V;
    float m = -INFINITY;
    for (int64_t k = threadIdx.x; k < nk; k += blockDim.x) {
      float f[VN];
      IO::load(row, k, f);
#pragma unroll
      for (int e = 0; e < VN; ++e) m = max_nan(m, f[e]);
    }
    m = block_reduce(m, red_f, [](float a, float b) { return max_nan(a, b); });
    double l;
    if (m == -INFINITY) {
      l = -INFINITY;
    } else {
      double s = 0.0;
      for (int64_t k = threadIdx.x; k < nk; k += blockDim.x) {
        float f[VN];
        IO::load(row, k, f);
#pragma unroll
        for (int e = 0; e < VN; ++e) s += static_cast<double>(expf(__fsub_rn(f[e], m)));
      }
      s = block_reduce(s, red_d, [](double a, double b) { return a + b; });
      l = static_cast<double>(m) + log(s);
    }
    if (threadIdx.x == 0) {
      lse[n] = static_cast<float>(l);
      const int32_t t = targets[n];
      if (t < -1 || t >= V) {
        atomicCAS(err, 0, static_cast<int32_t>(kCrossEntropyTarget));
        nll[n] = 0.0f;
      } else {
        nll[n] = t < 0 ? 0.0f : static_cast<float>(l - static_cast<double>(to_float(row[t])));
      }
    }
  }
}

template <typename T, bool VEC, bool Z>
__global__ void __launch_bounds__(kCeThreads)
    cross_entropy_backward_kernel(const T* __restrict__ logits, const int32_t* __restrict__ targets,
                                  const float* __restrict__ lse, const float* __restrict__ g_nll,
                                  const float* __restrict__ g_z, int64_t N, int64_t V, T* __restrict__ dlogits) {
  using IO = RowIO<T, VEC>;
  constexpr int VN = IO::N;
  const int64_t nk = V / VN;
  for (int64_t n = blockIdx.x; n < N; n += gridDim.x) {
    const T* row = logits + n * V;
    T* out = dlogits + n * V;
    const float L = lse[n], a = g_nll[n];
    const int64_t t = targets[n];  // outside [0, V): no one-hot term
    const float c = Z ? __fmul_rn(__fmul_rn(g_z[n], 2.0f), L) : 0.0f;
    for (int64_t k = threadIdx.x; k < nk; k += blockDim.x) {
      float f[VN];
      IO::load(row, k, f);
#pragma unroll
      for (int e = 0; e < VN; ++e) {
        const float p = expf(__fsub_rn(f[e], L));
        const bool hot = k * VN + e == t;
        const float ga = __fmul_rn(a, hot ? __fsub_rn(p, 1.0f) : p);
        f[e] = Z ? __fadd_rn(ga, __fmul_rn(c, p)) : ga;
      }
      IO::store(out, k, f);
    }
  }
}

unsigned ce_blocks(int64_t N) { return static_cast<unsigned>(N < 65535 * 8 ? N : 65535 * 8); }

}  // namespace

void cross_entropy(const LaunchCtx& ctx, DType dt, const void* logits, const int32_t* targets, int64_t N, int64_t V,
                   float* nll, float* lse) {
  if (dt != DType::F32 && dt != DType::BF16) bad_dtype("cross_entropy", dt);
  if (N <= 0 || V <= 0) return;
  cudaStream_t s = as_stream(ctx.stream);
  auto go = [&](auto tag) {
    using E = decltype(tag);
    const E* x = static_cast<const E*>(logits);
    if (V % Vec16<E>::N == 0 && aligned16(logits))
      cross_entropy_kernel<E, true><<<ce_blocks(N), kCeThreads, 0, s>>>(x, targets, N, V, nll, lse, ctx.err);
    else
      cross_entropy_kernel<E, false><<<ce_blocks(N), kCeThreads, 0, s>>>(x, targets, N, V, nll, lse, ctx.err);
  };
  if (dt == DType::F32) go(float{});
  else go(bf16_t{});
  check_launch("cross_entropy");
}

void cross_entropy_backward(const LaunchCtx& ctx, DType dt, const void* logits, const int32_t* targets,
                            const float* lse, const float* g_nll, const float* g_z, int64_t N, int64_t V,
                            void* dlogits) {
  if (dt != DType::F32 && dt != DType::BF16) bad_dtype("cross_entropy_backward", dt);
  if (N <= 0 || V <= 0) return;
  cudaStream_t s = as_stream(ctx.stream);
  auto go = [&](auto tag) {
    using E = decltype(tag);
    const E* x = static_cast<const E*>(logits);
    E* y = static_cast<E*>(dlogits);
    const bool vec = V % Vec16<E>::N == 0 && aligned16(logits) && aligned16(dlogits);
    const unsigned b = ce_blocks(N);
    if (vec) {
      if (g_z) cross_entropy_backward_kernel<E, true, true><<<b, kCeThreads, 0, s>>>(x, targets, lse, g_nll, g_z, N, V, y);
      else cross_entropy_backward_kernel<E, true, false><<<b, kCeThreads, 0, s>>>(x, targets, lse, g_nll, g_z, N, V, y);
    } else {
      if (g_z) cross_entropy_backward_kernel<E, false, true><<<b, kCeThreads, 0, s>>>(x, targets, lse, g_nll, g_z, N, V, y);
      else cross_entropy_backward_kernel<E, false, false><<<b, kCeThreads, 0, s>>>(x, targets, lse, g_nll, g_z, N, V, y);
    }
  };
  if (dt == DType::F32) go(float{});
  else go(bf16_t{});
  check_launch("cross_entropy_backward");
}

}  // namespace moma::cuda
