// Reductions (sum, mean, max, argmax) and softmax / log-softmax over the middle axis of a
// [outer, n, inner] view.
//
// Two mappings, both deterministic (fixed combination order, no atomics):
//  * inner == 1 (reducing the contiguous last axis, the common case): one 256-thread block per
//    row (grid-stride over rows). Thread t folds x[t], x[t+256], ... sequentially, then a shared
//    memory tree (128, 64, ..., 1) combines the 256 partials. Reads are coalesced.
//  * inner > 1: a 32 x 8 block covers 32 consecutive inner positions of one outer index; thread
//    (tx, ty) folds rows j = ty, ty+8, ... of column tx (coalesced across tx), then a tree over
//    ty (4, 2, 1) combines the 8 partials per column.
// Float sums accumulate in float32 (the CPU uses double: expect ~1e-6 relative differences for
// well-conditioned sums), int32 sums wrap (uint32 arithmetic), bf16 is read as float and rounded
// once on store. Max propagates NaN. Argmax keeps the first index of the maximum with NaN counted
// as the maximum: the combine rule below is a total order on (value, -index), so any tree gives
// the same answer as the CPU's left-to-right scan.
// Softmax makes three passes per row/column (max; sum of exp(x - max); write), all in float32.
// Bytes: reduce reads n*outer*inner elements once; softmax reads them three times (L2-resident
// for rows up to a few MB) and writes once.
#include <cuda_runtime.h>

#include <cmath>
#include <type_traits>

#include "common.cuh"
#include "kernels.h"

namespace moma::cuda {
using namespace detail;

namespace {

constexpr int kRowThreads = 256;
constexpr int kColX = 32, kColY = 8;

// The CPU's max_nan: keeps a NaN accumulator, otherwise takes b when it is NaN or larger.
__device__ __forceinline__ float nan_max(float a, float b) { return (a != a || b <= a) ? a : b; }

// ---- accumulator policies -----------------------------------------------------------------
// Each policy: Acc type, init(), fold(acc, x, j), combine(a, b) (associative), store(acc, n).
template <typename T>
struct SumF {
  using Acc = float;
  __device__ static Acc init() { return 0.0f; }
  __device__ static Acc fold(Acc a, T x, int64_t) { return a + to_float(x); }
  __device__ static Acc combine(Acc a, Acc b) { return a + b; }
  using Out = T;
  __device__ static Out store(Acc a, int64_t) { return from_float<T>(a); }
};
template <typename T>
struct MeanF : SumF<T> {
  using Acc = float;
  using Out = T;
  __device__ static Out store(Acc a, int64_t n) { return from_float<T>(a / static_cast<float>(n)); }
};
struct SumI {
  using Acc = uint32_t;
  __device__ static Acc init() { return 0u; }
  __device__ static Acc fold(Acc a, int32_t x, int64_t) { return a + static_cast<uint32_t>(x); }
  __device__ static Acc combine(Acc a, Acc b) { return a + b; }
  using Out = int32_t;
  __device__ static Out store(Acc a, int64_t) { return static_cast<int32_t>(a); }
};
template <typename T>
struct MaxF {
  using Acc = float;
  __device__ static Acc init() { return -INFINITY; }
  __device__ static Acc fold(Acc a, T x, int64_t) { return nan_max(a, to_float(x)); }
  __device__ static Acc combine(Acc a, Acc b) { return nan_max(a, b); }
  using Out = T;
  __device__ static Out store(Acc a, int64_t) { return from_float<T>(a); }
};
struct MaxI {
  using Acc = int32_t;
  __device__ static Acc init() { return INT32_MIN; }
  __device__ static Acc fold(Acc a, int32_t x, int64_t) { return a > x ? a : x; }
  __device__ static Acc combine(Acc a, Acc b) { return a > b ? a : b; }
  using Out = int32_t;
  __device__ static Out store(Acc a, int64_t) { return a; }
};

template <typename V>
struct ArgAcc {
  V v;
  int64_t i;
};
// true when (va, ia) beats (vb, ib): NaN beats numbers (first NaN wins), larger beats smaller,
// equal values -> smaller index.
__device__ __forceinline__ bool arg_better(float va, int64_t ia, float vb, int64_t ib) {
  bool na = va != va, nb = vb != vb;
  if (na || nb) return na && (!nb || ia < ib);
  if (va != vb) return va > vb;
  return ia < ib;
}
__device__ __forceinline__ bool arg_better(int32_t va, int64_t ia, int32_t vb, int64_t ib) {
  if (va != vb) return va > vb;
  return ia < ib;
}
template <typename T, typename V>
struct Argmax {
  using Acc = ArgAcc<V>;
  __device__ static V value(T x) {
    if constexpr (std::is_same<V, float>::value) return to_float(x);
    else return x;
  }
  __device__ static Acc init() {
    if constexpr (std::is_same<V, float>::value) return Acc{-INFINITY, INT64_MAX};
    else return Acc{INT32_MIN, INT64_MAX};
  }
  __device__ static Acc fold(Acc a, T x, int64_t j) {
    V v = value(x);
    return arg_better(v, j, a.v, a.i) ? Acc{v, j} : a;
  }
  __device__ static Acc combine(Acc a, Acc b) { return arg_better(b.v, b.i, a.v, a.i) ? b : a; }
  using Out = int32_t;
  __device__ static Out store(Acc a, int64_t) { return static_cast<int32_t>(a.i); }
};

// ---- reduce kernels -----------------------------------------------------------------------
template <typename P, typename T>
__global__ void __launch_bounds__(kRowThreads) reduce_row_kernel(const T* x, typename P::Out* y, int64_t outer, int64_t n) {
  using Acc = typename P::Acc;
  __shared__ Acc buf[kRowThreads];
  const int t = threadIdx.x;
  for (int64_t o = blockIdx.x; o < outer; o += gridDim.x) {
    const T* row = x + o * n;
    Acc a = P::init();
    for (int64_t j = t; j < n; j += kRowThreads) a = P::fold(a, row[j], j);
    buf[t] = a;
    __syncthreads();
    for (int s = kRowThreads / 2; s > 0; s >>= 1) {
      if (t < s) buf[t] = P::combine(buf[t], buf[t + s]);
      __syncthreads();
    }
    if (t == 0) y[o] = P::store(buf[0], n);
    __syncthreads();  // buf is reused by the next row
  }
}

template <typename P, typename T>
__global__ void __launch_bounds__(kColX * kColY) reduce_col_kernel(const T* x, typename P::Out* y, int64_t outer, int64_t n,
                                                                int64_t inner) {
  using Acc = typename P::Acc;
  __shared__ Acc buf[kColY][kColX];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kColX + tx;
  for (int64_t o = blockIdx.y; o < outer; o += gridDim.y) {
    Acc a = P::init();
    if (i < inner) {
      const T* col = x + o * n * inner + i;
      for (int64_t j = ty; j < n; j += kColY) a = P::fold(a, col[j * inner], j);
    }
    buf[ty][tx] = a;
    __syncthreads();
    for (int s = kColY / 2; s > 0; s >>= 1) {
      if (ty < s) buf[ty][tx] = P::combine(buf[ty][tx], buf[ty + s][tx]);
      __syncthreads();
    }
    if (ty == 0 && i < inner) y[o * inner + i] = P::store(buf[0][tx], n);
    __syncthreads();
  }
}

inline unsigned cap_grid(int64_t v, int64_t cap) { return static_cast<unsigned>(v < 1 ? 1 : (v > cap ? cap : v)); }

template <typename P, typename T>
void launch_reduce(cudaStream_t s, const void* x, void* y, int64_t outer, int64_t n, int64_t inner) {
  using Out = typename P::Out;
  if (inner == 1) {
    reduce_row_kernel<P, T><<<cap_grid(outer, 65535), kRowThreads, 0, s>>>(static_cast<const T*>(x), static_cast<Out*>(y), outer, n);
  } else {
    int64_t gx = (inner + kColX - 1) / kColX;
    if (gx > INT32_MAX) fail("ERR_ARG", "cuda reduce: inner size ", inner, " is too large");
    dim3 grid(static_cast<unsigned>(gx), cap_grid(outer, 65535));
    reduce_col_kernel<P, T><<<grid, dim3(kColX, kColY), 0, s>>>(static_cast<const T*>(x), static_cast<Out*>(y), outer, n, inner);
  }
}

template <typename T>
void reduce_float(cudaStream_t s, ReduceOp op, const void* x, void* y, int64_t outer, int64_t n, int64_t inner) {
  switch (op) {
    case ReduceOp::Sum: launch_reduce<SumF<T>, T>(s, x, y, outer, n, inner); break;
    case ReduceOp::Mean: launch_reduce<MeanF<T>, T>(s, x, y, outer, n, inner); break;
    case ReduceOp::Max: launch_reduce<MaxF<T>, T>(s, x, y, outer, n, inner); break;
    case ReduceOp::Argmax: launch_reduce<Argmax<T, float>, T>(s, x, y, outer, n, inner); break;
    default: fail("ERR_ARG", "cuda reduce: unknown op ", static_cast<int>(op));
  }
}

// ---- softmax ------------------------------------------------------------------------------
template <typename T>
__device__ __forceinline__ float softmax_out(bool log, float v, float m, float sum, float log_sum) {
  return log ? (v - m) - log_sum : expf(v - m) / sum;
}

template <typename T>
__global__ void __launch_bounds__(kRowThreads) softmax_row_kernel(bool log, const T* x, T* y, int64_t outer, int64_t n) {
  __shared__ float buf[kRowThreads];
  const int t = threadIdx.x;
  for (int64_t o = blockIdx.x; o < outer; o += gridDim.x) {
    const T* row = x + o * n;
    T* out = y + o * n;
    // pass 1: max
    float m = -INFINITY;
    for (int64_t j = t; j < n; j += kRowThreads) m = nan_max(m, to_float(row[j]));
    buf[t] = m;
    __syncthreads();
    for (int s = kRowThreads / 2; s > 0; s >>= 1) {
      if (t < s) buf[t] = nan_max(buf[t], buf[t + s]);
      __syncthreads();
    }
    m = buf[0];
    __syncthreads();
    // pass 2: sum of exp(x - max)
    float sum = 0.0f;
    for (int64_t j = t; j < n; j += kRowThreads) sum += expf(to_float(row[j]) - m);
    buf[t] = sum;
    __syncthreads();
    for (int s = kRowThreads / 2; s > 0; s >>= 1) {
      if (t < s) buf[t] = buf[t] + buf[t + s];
      __syncthreads();
    }
    sum = buf[0];
    __syncthreads();
    // pass 3: write
    float log_sum = logf(sum);
    for (int64_t j = t; j < n; j += kRowThreads) out[j] = from_float<T>(softmax_out<T>(log, to_float(row[j]), m, sum, log_sum));
  }
}

template <typename T>
__global__ void __launch_bounds__(kColX * kColY) softmax_col_kernel(bool log, const T* x, T* y, int64_t outer, int64_t n,
                                                                 int64_t inner) {
  __shared__ float buf[kColY][kColX];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kColX + tx;
  const bool live = i < inner;
  for (int64_t o = blockIdx.y; o < outer; o += gridDim.y) {
    const T* col = x + o * n * inner + i;
    T* out = y + o * n * inner + i;
    float m = -INFINITY;
    if (live)
      for (int64_t j = ty; j < n; j += kColY) m = nan_max(m, to_float(col[j * inner]));
    buf[ty][tx] = m;
    __syncthreads();
    for (int s = kColY / 2; s > 0; s >>= 1) {
      if (ty < s) buf[ty][tx] = nan_max(buf[ty][tx], buf[ty + s][tx]);
      __syncthreads();
    }
    m = buf[0][tx];
    __syncthreads();
    float sum = 0.0f;
    if (live)
      for (int64_t j = ty; j < n; j += kColY) sum += expf(to_float(col[j * inner]) - m);
    buf[ty][tx] = sum;
    __syncthreads();
    for (int s = kColY / 2; s > 0; s >>= 1) {
      if (ty < s) buf[ty][tx] = buf[ty][tx] + buf[ty + s][tx];
      __syncthreads();
    }
    sum = buf[0][tx];
    __syncthreads();
    float log_sum = logf(sum);
    if (live)
      for (int64_t j = ty; j < n; j += kColY)
        out[j * inner] = from_float<T>(softmax_out<T>(log, to_float(col[j * inner]), m, sum, log_sum));
  }
}

template <typename T>
void launch_softmax(cudaStream_t s, bool log, const void* x, void* y, int64_t outer, int64_t n, int64_t inner) {
  if (inner == 1) {
    softmax_row_kernel<T><<<cap_grid(outer, 65535), kRowThreads, 0, s>>>(log, static_cast<const T*>(x), static_cast<T*>(y), outer, n);
  } else {
    int64_t gx = (inner + kColX - 1) / kColX;
    if (gx > INT32_MAX) fail("ERR_ARG", "cuda softmax: inner size ", inner, " is too large");
    dim3 grid(static_cast<unsigned>(gx), cap_grid(outer, 65535));
    softmax_col_kernel<T><<<grid, dim3(kColX, kColY), 0, s>>>(log, static_cast<const T*>(x), static_cast<T*>(y), outer, n, inner);
  }
}

}  // namespace

void reduce(const LaunchCtx& ctx, ReduceOp op, DType dt, const void* x, void* y, int64_t outer, int64_t n,
            int64_t inner) {
  if (outer <= 0 || inner <= 0) return;
  if (n <= 0) fail("ERR_ARG", "reduce: the reduced axis is empty");
  cudaStream_t s = as_stream(ctx.stream);
  switch (dt) {
    case DType::F32: reduce_float<float>(s, op, x, y, outer, n, inner); break;
    case DType::BF16: reduce_float<bf16_t>(s, op, x, y, outer, n, inner); break;
    case DType::I32:
      switch (op) {
        case ReduceOp::Sum: launch_reduce<SumI, int32_t>(s, x, y, outer, n, inner); break;
        case ReduceOp::Max: launch_reduce<MaxI, int32_t>(s, x, y, outer, n, inner); break;
        case ReduceOp::Argmax: launch_reduce<Argmax<int32_t, int32_t>, int32_t>(s, x, y, outer, n, inner); break;
        default: bad_dtype("reduce (mean)", dt);
      }
      break;
    default: bad_dtype("reduce", dt);
  }
  check_launch("reduce");
}

void softmax(const LaunchCtx& ctx, bool log, DType dt, const void* x, void* y, int64_t outer, int64_t n,
             int64_t inner) {
  if (outer <= 0 || n <= 0 || inner <= 0) return;
  cudaStream_t s = as_stream(ctx.stream);
  switch (dt) {
    case DType::F32: launch_softmax<float>(s, log, x, y, outer, n, inner); break;
    case DType::BF16: launch_softmax<bf16_t>(s, log, x, y, outer, n, inner); break;
    default: bad_dtype("softmax", dt);
  }
  check_launch(log ? "log_softmax" : "softmax");
}

}  // namespace moma::cuda
