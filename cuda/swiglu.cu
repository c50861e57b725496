// SwiGLU activation of the expert FFNs and its backward (semantics: csrc/cpu/kernels_moe.h):
//   a = silu(h1) * h3,  silu(x) = x / (1 + exp(-x)) = x sig(x);
//   dh1 = da * h3 * sig(h1) * (1 + h1 * (1 - sig(h1))),  dh3 = da * silu(h1).
// Element-wise, computed in float32 in the CPU's order with explicit roundings (__fmul_rn /
// __fadd_rn / IEEE division, expf; the CPU may use a SIMD sigmoid, so results agree to a few
// ulps rather than bitwise), bf16 rounded once on store. Grid-stride loop over
// 16-byte vectors (4 f32 / 8 bf16) when every pointer is 16-byte aligned, then a scalar tail.
// FLOPs ~10 n (forward) / ~16 n (backward) plus one expf per element; bytes 3 n elem (forward) /
// 5 n elem (backward): memory bound by far.
#include <cuda_runtime.h>

#include <cstdint>

#include "common.cuh"
#include "kernels.h"
#include "kernels_moe.h"

namespace moma::cuda {
using namespace detail;

namespace {

// sig(x) = x >= 0 ? 1 / (1 + e) : e / (1 + e) with e = exp(-|x|) (no overflow for large |x|), as the
// CPU's scalar path; silu(x) = x sig(x).
__device__ __forceinline__ float sig_f(float x) {
  const float e = expf(-fabsf(x));
  const float den = __fadd_rn(1.0f, e);
  return x >= 0.0f ? __fdiv_rn(1.0f, den) : __fdiv_rn(e, den);
}

__device__ __forceinline__ float swiglu_f(float h1, float h3) { return __fmul_rn(__fmul_rn(h1, sig_f(h1)), h3); }
__device__ __forceinline__ void swiglu_bwd_f(float h1, float h3, float da, float& dh1, float& dh3) {
  const float s = sig_f(h1);
  const float inner = __fadd_rn(1.0f, __fmul_rn(h1, __fsub_rn(1.0f, s)));
  dh1 = __fmul_rn(__fmul_rn(__fmul_rn(da, h3), s), inner);
  dh3 = __fmul_rn(da, __fmul_rn(h1, s));
}

#define GRID_STRIDE64(i, n) \
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); i += static_cast<int64_t>(gridDim.x) * blockDim.x)

template <typename T, bool VEC>
__global__ void swiglu_kernel(const T* __restrict__ h1, const T* __restrict__ h3, T* __restrict__ a, int64_t n) {
  int64_t done = 0;
  if constexpr (VEC) {
    using V = Vec16<T>;
    const int64_t nv = n / V::N;
    GRID_STRIDE64(i, nv) {
      float x[V::N], y[V::N], r[V::N];
      V::unpack(reinterpret_cast<const typename V::U*>(h1)[i], x);
      V::unpack(reinterpret_cast<const typename V::U*>(h3)[i], y);
#pragma unroll
      for (int k = 0; k < V::N; ++k) r[k] = swiglu_f(x[k], y[k]);
      reinterpret_cast<typename V::U*>(a)[i] = V::pack(r);
    }
    done = nv * V::N;
  }
  GRID_STRIDE64(j, n - done) {
    const int64_t i = done + j;
    a[i] = from_float<T>(swiglu_f(to_float(h1[i]), to_float(h3[i])));
  }
}

template <typename T, bool VEC>
__global__ void swiglu_backward_kernel(const T* __restrict__ h1, const T* __restrict__ h3, const T* __restrict__ da,
                                       T* __restrict__ dh1, T* __restrict__ dh3, int64_t n) {
  int64_t done = 0;
  if constexpr (VEC) {
    using V = Vec16<T>;
    const int64_t nv = n / V::N;
    GRID_STRIDE64(i, nv) {
      float x[V::N], y[V::N], g[V::N], r1[V::N], r3[V::N];
      V::unpack(reinterpret_cast<const typename V::U*>(h1)[i], x);
      V::unpack(reinterpret_cast<const typename V::U*>(h3)[i], y);
      V::unpack(reinterpret_cast<const typename V::U*>(da)[i], g);
#pragma unroll
      for (int k = 0; k < V::N; ++k) swiglu_bwd_f(x[k], y[k], g[k], r1[k], r3[k]);
      reinterpret_cast<typename V::U*>(dh1)[i] = V::pack(r1);
      reinterpret_cast<typename V::U*>(dh3)[i] = V::pack(r3);
    }
    done = nv * V::N;
  }
  GRID_STRIDE64(j, n - done) {
    const int64_t i = done + j;
    float r1, r3;
    swiglu_bwd_f(to_float(h1[i]), to_float(h3[i]), to_float(da[i]), r1, r3);
    dh1[i] = from_float<T>(r1);
    dh3[i] = from_float<T>(r3);
  }
}


}  // namespace

void swiglu(const LaunchCtx& ctx, DType dt, const void* h1, const void* h3, void* a, int64_t n) {
  if (dt != DType::F32 && dt != DType::BF16) bad_dtype("swiglu", dt);
  if (n <= 0) return;
  cudaStream_t s = as_stream(ctx.stream);
  const bool vec = aligned16(h1) && aligned16(h3) && aligned16(a);
  auto go = [&](auto tag) {
    using E = decltype(tag);
    const auto* x = static_cast<const E*>(h1);
    const auto* y = static_cast<const E*>(h3);
    auto* z = static_cast<E*>(a);
    if (vec) swiglu_kernel<E, true><<<grid_for(n / Vec16<E>::N + 1), kThreads, 0, s>>>(x, y, z, n);
    else swiglu_kernel<E, false><<<grid_for(n), kThreads, 0, s>>>(x, y, z, n);
  };
  if (dt == DType::F32) go(float{});
  else go(bf16_t{});
  check_launch("swiglu");
}

void swiglu_backward(const LaunchCtx& ctx, DType dt, const void* h1, const void* h3, const void* da, void* dh1,
                     void* dh3, int64_t n) {
  if (dt != DType::F32 && dt != DType::BF16) bad_dtype("swiglu_backward", dt);
  if (n <= 0) return;
  cudaStream_t s = as_stream(ctx.stream);
  const bool vec = aligned16(h1) && aligned16(h3) && aligned16(da) && aligned16(dh1) && aligned16(dh3);
  auto go = [&](auto tag) {
    using E = decltype(tag);
    const auto* x = static_cast<const E*>(h1);
    const auto* y = static_cast<const E*>(h3);
    const auto* g = static_cast<const E*>(da);
    auto* r1 = static_cast<E*>(dh1);
    auto* r3 = static_cast<E*>(dh3);
    if (vec) swiglu_backward_kernel<E, true><<<grid_for(n / Vec16<E>::N + 1), kThreads, 0, s>>>(x, y, g, r1, r3, n);
    else swiglu_backward_kernel<E, false><<<grid_for(n), kThreads, 0, s>>>(x, y, g, r1, r3, n);
  };
  if (dt == DType::F32) go(float{});
  else go(bf16_t{});
  check_launch("swiglu_backward");
}

}  // namespace moma::cuda
