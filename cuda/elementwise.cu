// Element-wise CUDA kernels: fill, arange, cast, unary, binary, where.
//
// Mapping: one thread per output element in a grid-stride loop (256 threads per block, at most
// 8192 blocks). Indices are uint32_t when n < 2^31 (cheap index arithmetic) and int64_t otherwise.
// Float32 and bf16 are computed in float32; bf16 is rounded once on store (bf16.h, identical to
// the CPU). Memory-bound: bytes = n * (reads + write) * element size; no reuse, no shared memory.
// Views (binary / where) are collapsed on the host (common.cuh) so contiguous operands cost one
// multiply per element; general strided operands cost one div/mod per remaining dim.
// Semantics follow csrc/cpu/kernels.h: casts truncate toward zero and saturate (NaN -> 0), int32
// arithmetic wraps, int32 division truncates with x / 0 -> 0, float maximum / minimum propagate NaN
// (the NaN operand itself is returned, as on the CPU). arange computes start + i * step in double.
#include <cuda_runtime.h>

#include <cmath>

#include "common.cuh"
#include "kernels.h"

namespace moma::cuda {
using namespace detail;

namespace {

#define GRID_STRIDE(Idx, i, n) \
  for (Idx i = static_cast<Idx>(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); i += static_cast<Idx>(gridDim.x) * blockDim.x)

// ---- fill: the host converts `value` to the element's bit pattern; the kernel stores it. ----
template <typename W, typename Idx>
__global__ void fill_kernel(W* y, Idx n, W v) {
  GRID_STRIDE(Idx, i, n) y[i] = v;
}

template <typename W>
void launch_fill(cudaStream_t s, void* y, int64_t n, W v) {
  if (n < INT32_MAX)
    fill_kernel<W, uint32_t><<<grid_for(n), kThreads, 0, s>>>(static_cast<W*>(y), static_cast<uint32_t>(n), v);
  else
    fill_kernel<W, int64_t><<<grid_for(n), kThreads, 0, s>>>(static_cast<W*>(y), n, v);
  check_launch("fill");
}

// ---- arange: y[i] = start + i * step computed in double, then converted like fill. ---------
template <typename T> __device__ __forceinline__ T from_double(double d);
template <> __device__ __forceinline__ float from_double<float>(double d) { return static_cast<float>(d); }
template <> __device__ __forceinline__ bf16_t from_double<bf16_t>(double d) {
  return bf16_t{f32_to_bf16(static_cast<float>(d))};
}
template <> __device__ __forceinline__ int32_t from_double<int32_t>(double d) { return sat_i32(d); }
template <> __device__ __forceinline__ uint8_t from_double<uint8_t>(double d) { return sat_u8(d); }

template <typename T, typename Idx>
__global__ void arange_kernel(T* y, Idx n, double start, double step) {
  // __dadd_rn / __dmul_rn: no FMA contraction, so the rounding matches the CPU's mul-then-add.
  GRID_STRIDE(Idx, i, n) y[i] = from_double<T>(__dadd_rn(start, __dmul_rn(static_cast<double>(i), step)));
}

// ---- cast --------------------------------------------------------------------------------
// Source values are widened to float (f32, bf16, u8: exact) or kept as int32; each destination
// applies the CPU rules.
template <typename D> __device__ __forceinline__ D cast_from_float(float v);
template <> __device__ __forceinline__ float cast_from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ bf16_t cast_from_float<bf16_t>(float v) { return bf16_t{f32_to_bf16(v)}; }
template <> __device__ __forceinline__ int32_t cast_from_float<int32_t>(float v) { return sat_i32f(v); }
template <> __device__ __forceinline__ uint8_t cast_from_float<uint8_t>(float v) { return sat_u8f(v); }

template <typename D> __device__ __forceinline__ D cast_from_i32(int32_t v);
template <> __device__ __forceinline__ float cast_from_i32<float>(int32_t v) { return static_cast<float>(v); }
template <> __device__ __forceinline__ bf16_t cast_from_i32<bf16_t>(int32_t v) {
  return bf16_t{f32_to_bf16(static_cast<float>(v))};
}
template <> __device__ __forceinline__ uint8_t cast_from_i32<uint8_t>(int32_t v) {
  return static_cast<uint8_t>(v < 0 ? 0 : (v > 255 ? 255 : v));
}

template <typename D, typename S> __device__ __forceinline__ D cast_one(S v) {
  return cast_from_float<D>(to_float(v));
}
template <> __device__ __forceinline__ float cast_one<float, int32_t>(int32_t v) { return cast_from_i32<float>(v); }
template <> __device__ __forceinline__ bf16_t cast_one<bf16_t, int32_t>(int32_t v) { return cast_from_i32<bf16_t>(v); }
template <> __device__ __forceinline__ int32_t cast_one<int32_t, int32_t>(int32_t v) { return v; }
template <> __device__ __forceinline__ uint8_t cast_one<uint8_t, int32_t>(int32_t v) { return cast_from_i32<uint8_t>(v); }
template <> __device__ __forceinline__ int32_t cast_one<int32_t, uint8_t>(uint8_t v) { return v; }
template <> __device__ __forceinline__ uint8_t cast_one<uint8_t, uint8_t>(uint8_t v) { return v; }

template <typename S, typename D, typename Idx>
__global__ void cast_kernel(const S* x, D* y, Idx n) {
  GRID_STRIDE(Idx, i, n) y[i] = cast_one<D, S>(x[i]);
}

// ---- unary -------------------------------------------------------------------------------
// Same formula as the CPU (no overflow of exp for large |x|).
__device__ __forceinline__ float sigmoid_f(float v) {
  if (v >= 0.0f) return 1.0f / (1.0f + expf(-v));
  const float e = expf(v);
  return e / (1.0f + e);
}

__device__ __forceinline__ float unary_f(UnaryOp op, float x, float alpha) {
  switch (op) {
    case UnaryOp::Neg: return -x;
    case UnaryOp::Exp: return expf(x);
    case UnaryOp::Log: return logf(x);
    case UnaryOp::Silu: return x * sigmoid_f(x);
    case UnaryOp::Sigmoid: return sigmoid_f(x);
    case UnaryOp::Tanh: return tanhf(x);
    case UnaryOp::Sqrt: return sqrtf(x);
    case UnaryOp::Rsqrt: return 1.0f / sqrtf(x);
    case UnaryOp::Abs: return fabsf(x);
    case UnaryOp::Square: return x * x;
    case UnaryOp::Scale: return alpha * x;
    case UnaryOp::AddScalar: return x + alpha;
    case UnaryOp::PowScalar: return powf(x, alpha);
  }
  return x;
}

// int32 ops wrap (two's complement, via uint32 arithmetic); alpha is integral (checked in ops) and
// taken modulo 2^32 on the host like the CPU.
__device__ __forceinline__ int32_t unary_i(UnaryOp op, int32_t x, uint32_t a) {
  uint32_t u = static_cast<uint32_t>(x);
  switch (op) {
    case UnaryOp::Neg: return static_cast<int32_t>(0u - u);
    case UnaryOp::Abs: return x < 0 ? static_cast<int32_t>(0u - u) : x;
    case UnaryOp::Square: return static_cast<int32_t>(u * u);
    case UnaryOp::Scale: return static_cast<int32_t>(a * u);
    case UnaryOp::AddScalar: return static_cast<int32_t>(a + u);
    default: return 0;  // rejected on the host
  }
}

template <typename T, typename Idx>
__global__ void unary_kernel(UnaryOp op, const T* x, T* y, Idx n, float alpha) {
  GRID_STRIDE(Idx, i, n) y[i] = from_float<T>(unary_f(op, to_float(x[i]), alpha));
}

template <typename Idx>
__global__ void unary_i32_kernel(UnaryOp op, const int32_t* x, int32_t* y, Idx n, uint32_t alpha) {
  GRID_STRIDE(Idx, i, n) y[i] = unary_i(op, x[i], alpha);
}

// ---- binary ------------------------------------------------------------------------------
__device__ __forceinline__ float binary_f(BinaryOp op, float a, float b) {
  switch (op) {
    case BinaryOp::Add: return a + b;
    case BinaryOp::Sub: return a - b;
    case BinaryOp::Mul: return a * b;
    case BinaryOp::Div: return a / b;
    case BinaryOp::Maximum: return (a != a || a > b) ? a : b;  // NaN propagates (either side)
    case BinaryOp::Minimum: return (a != a || a < b) ? a : b;
  }
  return 0.0f;
}

__device__ __forceinline__ int32_t binary_i(BinaryOp op, int32_t a, int32_t b) {
  uint32_t ua = static_cast<uint32_t>(a), ub = static_cast<uint32_t>(b);
  switch (op) {
    case BinaryOp::Add: return static_cast<int32_t>(ua + ub);
    case BinaryOp::Sub: return static_cast<int32_t>(ua - ub);
    case BinaryOp::Mul: return static_cast<int32_t>(ua * ub);
    case BinaryOp::Div:
      if (b == 0) return 0;
      if (b == -1) return static_cast<int32_t>(0u - ua);  // INT32_MIN / -1 wraps
      return a / b;
    case BinaryOp::Maximum: return a > b ? a : b;
    case BinaryOp::Minimum: return a < b ? a : b;
  }
  return 0;
}

template <typename T> struct BinaryFn {
  __device__ __forceinline__ T operator()(BinaryOp op, T a, T b) const {
    return from_float<T>(binary_f(op, to_float(a), to_float(b)));
  }
};
template <> struct BinaryFn<int32_t> {
  __device__ __forceinline__ int32_t operator()(BinaryOp op, int32_t a, int32_t b) const { return binary_i(op, a, b); }
};

template <typename T, typename Idx>
__global__ void binary_kernel(BinaryOp op, const T* a, StridedView av, const T* b, StridedView bv, T* y, Idx n) {
  BinaryFn<T> fn;
  GRID_STRIDE(Idx, i, n) y[i] = fn(op, a[view_offset(av, i)], b[view_offset(bv, i)]);
}

// ---- where -------------------------------------------------------------------------------
template <typename T, typename Idx>
__global__ void where_kernel(const uint8_t* c, StridedView cv, const T* a, StridedView av, const T* b,
                             StridedView bv, T* y, Idx n) {
  GRID_STRIDE(Idx, i, n) y[i] = c[view_offset(cv, i)] ? a[view_offset(av, i)] : b[view_offset(bv, i)];
}

}  // namespace

void fill(const LaunchCtx& ctx, DType dt, void* y, int64_t n, double value) {
  if (n <= 0) return;
  cudaStream_t s = as_stream(ctx.stream);
  switch (dt) {
    case DType::F32: {
      float v = static_cast<float>(value);
      launch_fill<uint32_t>(s, y, n, f32_bits(v));
      break;
    }
    case DType::BF16: launch_fill<uint16_t>(s, y, n, f32_to_bf16(static_cast<float>(value))); break;
    case DType::I32: launch_fill<uint32_t>(s, y, n, static_cast<uint32_t>(sat_i32(value))); break;
    case DType::U8: launch_fill<uint8_t>(s, y, n, sat_u8(value)); break;
    default: bad_dtype("fill", dt);
  }
}

void arange(const LaunchCtx& ctx, DType dt, void* y, int64_t n, double start, double step) {
  if (n <= 0) return;
  cudaStream_t s = as_stream(ctx.stream);
  MOMA_DISPATCH_ALL(dt, "arange", {
    if (n < INT32_MAX)
      arange_kernel<T, uint32_t><<<grid_for(n), kThreads, 0, s>>>(static_cast<T*>(y), static_cast<uint32_t>(n), start, step);
    else
      arange_kernel<T, int64_t><<<grid_for(n), kThreads, 0, s>>>(static_cast<T*>(y), n, start, step);
  });
  check_launch("arange");
}

namespace {
template <typename S, typename D>
void launch_cast(cudaStream_t s, const void* x, void* y, int64_t n) {
  if (n < INT32_MAX)
    cast_kernel<S, D, uint32_t><<<grid_for(n), kThreads, 0, s>>>(static_cast<const S*>(x), static_cast<D*>(y),
                                                                static_cast<uint32_t>(n));
  else
    cast_kernel<S, D, int64_t><<<grid_for(n), kThreads, 0, s>>>(static_cast<const S*>(x), static_cast<D*>(y), n);
}
}  // namespace

void cast(const LaunchCtx& ctx, DType src_dt, const void* x, DType dst_dt, void* y, int64_t n) {
  if (n <= 0) return;
  cudaStream_t s = as_stream(ctx.stream);
  MOMA_DISPATCH_ALL(src_dt, "cast", {
    using S = T;
    MOMA_DISPATCH_ALL(dst_dt, "cast", { launch_cast<S, T>(s, x, y, n); });
  });
  check_launch("cast");
}

void unary(const LaunchCtx& ctx, UnaryOp op, DType dt, const void* x, void* y, int64_t n, float alpha) {
  if (n <= 0) return;
  cudaStream_t s = as_stream(ctx.stream);
  bool small = n < INT32_MAX;
  switch (dt) {
    case DType::F32:
      if (small) unary_kernel<float, uint32_t><<<grid_for(n), kThreads, 0, s>>>(op, static_cast<const float*>(x), static_cast<float*>(y), static_cast<uint32_t>(n), alpha);
      else unary_kernel<float, int64_t><<<grid_for(n), kThreads, 0, s>>>(op, static_cast<const float*>(x), static_cast<float*>(y), n, alpha);
      break;
    case DType::BF16:
      if (small) unary_kernel<bf16_t, uint32_t><<<grid_for(n), kThreads, 0, s>>>(op, static_cast<const bf16_t*>(x), static_cast<bf16_t*>(y), static_cast<uint32_t>(n), alpha);
      else unary_kernel<bf16_t, int64_t><<<grid_for(n), kThreads, 0, s>>>(op, static_cast<const bf16_t*>(x), static_cast<bf16_t*>(y), n, alpha);
      break;
    case DType::I32: {
      if (op != UnaryOp::Neg && op != UnaryOp::Abs && op != UnaryOp::Square && op != UnaryOp::Scale &&
          op != UnaryOp::AddScalar)
        bad_dtype("unary", dt);
      if (!std::isfinite(alpha)) fail("ERR_ARG", "unary: int32 scalar must be finite, got ", alpha);
      const uint32_t a = static_cast<uint32_t>(
          static_cast<int64_t>(std::fmod(std::trunc(static_cast<double>(alpha)), 4294967296.0)));
      if (small) unary_i32_kernel<uint32_t><<<grid_for(n), kThreads, 0, s>>>(op, static_cast<const int32_t*>(x), static_cast<int32_t*>(y), static_cast<uint32_t>(n), a);
      else unary_i32_kernel<int64_t><<<grid_for(n), kThreads, 0, s>>>(op, static_cast<const int32_t*>(x), static_cast<int32_t*>(y), n, a);
      break;
    }
    default: bad_dtype("unary", dt);
  }
  check_launch("unary");
}

namespace {
template <typename T>
void launch_binary(cudaStream_t s, BinaryOp op, const void* a, const StridedView& av, const void* b,
                   const StridedView& bv, void* y, int64_t n) {
  StridedView ca = collapse(av), cb = collapse(bv);
  if (n < INT32_MAX)
    binary_kernel<T, uint32_t><<<grid_for(n), kThreads, 0, s>>>(op, static_cast<const T*>(a), ca, static_cast<const T*>(b), cb,
                                                              static_cast<T*>(y), static_cast<uint32_t>(n));
  else
    binary_kernel<T, int64_t><<<grid_for(n), kThreads, 0, s>>>(op, static_cast<const T*>(a), ca, static_cast<const T*>(b), cb,
                                                             static_cast<T*>(y), n);
}
}  // namespace

void binary(const LaunchCtx& ctx, BinaryOp op, DType dt, const void* a, const StridedView& av, const void* b,
            const StridedView& bv, void* y, int64_t n) {
  if (n <= 0) return;
  cudaStream_t s = as_stream(ctx.stream);
  switch (dt) {
    case DType::F32: launch_binary<float>(s, op, a, av, b, bv, y, n); break;
    case DType::BF16: launch_binary<bf16_t>(s, op, a, av, b, bv, y, n); break;
    case DType::I32: launch_binary<int32_t>(s, op, a, av, b, bv, y, n); break;
    default: bad_dtype("binary", dt);
  }
  check_launch("binary");
}

void where(const LaunchCtx& ctx, const uint8_t* cond, const StridedView& cv, DType dt, const void* a,
           const StridedView& av, const void* b, const StridedView& bv, void* y, int64_t n) {
  if (n <= 0) return;
  cudaStream_t s = as_stream(ctx.stream);
  StridedView cc = collapse(cv), ca = collapse(av), cb = collapse(bv);
  // Storage only: select by element size (bf16 and float bits are moved unchanged).
  auto go = [&](auto tag) {
    using W = decltype(tag);
    if (n < INT32_MAX)
      where_kernel<W, uint32_t><<<grid_for(n), kThreads, 0, s>>>(cond, cc, static_cast<const W*>(a), ca, static_cast<const W*>(b),
                                                               cb, static_cast<W*>(y), static_cast<uint32_t>(n));
    else
      where_kernel<W, int64_t><<<grid_for(n), kThreads, 0, s>>>(cond, cc, static_cast<const W*>(a), ca, static_cast<const W*>(b),
                                                              cb, static_cast<W*>(y), n);
  };
  switch (dtype_size(dt)) {
    case 4: go(uint32_t{}); break;
    case 2: go(uint16_t{}); break;
    case 1: go(uint8_t{}); break;
    default: bad_dtype("where", dt);
  }
  check_launch("where");
}

}  // namespace moma::cuda
