// index_select and scatter_add along the middle axis of [outer, n, inner] views.
//
// Bad indices never throw here: a small check kernel (one thread per index) records the op's code
// in the device error word with atomicCAS(err, 0, code) (first error wins), and the main kernel
// writes 0 (index_select) or skips the contribution (scatter_add). synchronize() turns the word
// into ERR_RANGE. The check runs even when the output is empty, like the CPU's validation.
//
// index_select: one thread per output element y[o, j, i] = x[o, idx[j], i] (grid-stride);
// coalesced along i. Bytes: 2 * outer * k * inner elements + idx reads (cached).
//
// scatter_add: deterministic without float atomics. One thread per element y[o, t, i] of the
// [outer, n, inner] destination scans j = 0..k-1 in order and adds src[o, j, i] where idx[j] == t,
// in float32 for f32/bf16 (rounded once on store) and wrapping uint32 for int32, starting from
// the value already in y. Threads of a warp share (o, t) whenever inner >= 32, so idx[j] is a
// broadcast load. Work is O(outer * n * inner * k) index comparisons: simple and acceptable for
// now (fine for MoE combine / small vocabularies), but slow for an embedding-gradient sized
// scatter (n = vocab, k = tokens); a sort/CSR-based variant is the planned replacement.
#include <cuda_runtime.h>

#include "common.cuh"
#include "kernels.h"

namespace moma::cuda {
using namespace detail;

namespace {

__global__ void check_indices_kernel(const int32_t* idx, int64_t k, int64_t n, int32_t* err, int32_t code) {
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < k;
       j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int32_t t = idx[j];
    if (t < 0 || t >= n) atomicCAS(err, 0, code);
  }
}

template <typename W>
__global__ void index_select_kernel(const W* x, const int32_t* idx, W* y, int64_t outer, int64_t n, int64_t k,
                                    int64_t inner) {
  const int64_t total = outer * k * inner;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t i = e % inner;
    int64_t r = e / inner;
    int64_t j = r % k;
    int64_t o = r / k;
    int32_t t = idx[j];
    y[e] = (t >= 0 && t < n) ? x[(o * n + t) * inner + i] : W(0);
  }
}

template <typename T> struct ScatterAcc {
  using Acc = float;
  __device__ static Acc load(T v) { return to_float(v); }
  __device__ static Acc add(Acc a, T v) { return a + to_float(v); }
  __device__ static T store(Acc a) { return from_float<T>(a); }
};
template <> struct ScatterAcc<int32_t> {
  using Acc = uint32_t;
  __device__ static Acc load(int32_t v) { return static_cast<uint32_t>(v); }
  __device__ static Acc add(Acc a, int32_t v) { return a + static_cast<uint32_t>(v); }
  __device__ static int32_t store(Acc a) { return static_cast<int32_t>(a); }
};

template <typename T>
__global__ void scatter_add_kernel(const T* src, const int32_t* idx, T* y, int64_t outer, int64_t k, int64_t n,
                                   int64_t inner) {
  using P = ScatterAcc<T>;
  const int64_t total = outer * n * inner;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t i = e % inner;
    int64_t r = e / inner;
    int64_t t = r % n;
    int64_t o = r / n;
    const T* s = src + o * k * inner + i;
    bool hit = false;
    typename P::Acc acc = P::load(y[e]);
    for (int64_t j = 0; j < k; ++j) {
      if (idx[j] == t) {
        acc = P::add(acc, s[j * inner]);
        hit = true;
      }
    }
    if (hit) y[e] = P::store(acc);  // untouched rows keep their exact bits
  }
}

void check_indices(cudaStream_t s, const int32_t* idx, int64_t k, int64_t n, int32_t* err, int32_t code) {
  if (k <= 0) return;
  check_indices_kernel<<<grid_for(k), kThreads, 0, s>>>(idx, k, n, err, code);
}

}  // namespace

void index_select(void* stream, int32_t* err, DType dt, const void* x, const int32_t* idx, void* y, int64_t outer,
                  int64_t n, int64_t k, int64_t inner) {
  cudaStream_t s = as_stream(stream);
  check_indices(s, idx, k, n, err, kIndexSelectRange);
  check_launch("index_select (index check)");
  int64_t total = outer * k * inner;
  if (total <= 0) return;
  switch (dtype_size(dt)) {
    case 4: index_select_kernel<uint32_t><<<grid_for(total), kThreads, 0, s>>>(static_cast<const uint32_t*>(x), idx, static_cast<uint32_t*>(y), outer, n, k, inner); break;
    case 2: index_select_kernel<uint16_t><<<grid_for(total), kThreads, 0, s>>>(static_cast<const uint16_t*>(x), idx, static_cast<uint16_t*>(y), outer, n, k, inner); break;
    case 1: index_select_kernel<uint8_t><<<grid_for(total), kThreads, 0, s>>>(static_cast<const uint8_t*>(x), idx, static_cast<uint8_t*>(y), outer, n, k, inner); break;
    default: bad_dtype("index_select", dt);
  }
  check_launch("index_select");
}

void scatter_add(void* stream, int32_t* err, DType dt, const void* src, const int32_t* idx, void* y, int64_t outer,
                 int64_t k, int64_t n, int64_t inner) {
  if (dt != DType::F32 && dt != DType::BF16 && dt != DType::I32) bad_dtype("scatter_add", dt);
  cudaStream_t s = as_stream(stream);
  check_indices(s, idx, k, n, err, kScatterAddRange);
  check_launch("scatter_add (index check)");
  int64_t total = outer * n * inner;
  if (total <= 0 || k <= 0) return;
  auto go = [&](auto tag) {
    using T = decltype(tag);
    scatter_add_kernel<T><<<grid_for(total), kThreads, 0, s>>>(static_cast<const T*>(src), idx, static_cast<T*>(y), outer, k, n, inner);
  };
  switch (dt) {  // float32, bf16, int32 (as the CPU)
    case DType::F32: go(float{}); break;
    case DType::BF16: go(bf16_t{}); break;
    case DType::I32: go(int32_t{}); break;
    default: bad_dtype("scatter_add", dt);
  }
  check_launch("scatter_add");
}

}  // namespace moma::cuda
