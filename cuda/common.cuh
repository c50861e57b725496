// Private helpers shared by the CUDA translation units of moma (not part of the contract):
//   * CUDA_CHECK(call): throws MomaException("ERR_CUDA", "<call text>: <cudaGetErrorString>").
//   * check_launch(name): cudaGetLastError after a <<<>>> launch, ERR_CUDA naming the kernel;
//     throw_cuda and event_done consume non-sticky errors so none is ever reported twice.
//   * allow_dynamic_smem / max_dynamic_smem: the > 48 KiB dynamic shared memory opt-in, counting
//     the kernel's static shared memory.
//   * grid sizing for grid-stride loops (256 threads, capped block count, 64-bit indices).
//   * dtype traits: storage type per DType and load/store through float ("compute type" of f32 and
//     bf16 is float; bf16 is rounded once on store with the shared bit-exact f32_to_bf16).
//   * StridedView collapsing (host) and offset evaluation (device).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "../csrc/core/bf16.h"
#include "../csrc/core/dtype.h"
#include "../csrc/core/error.h"
#include "../csrc/core/kernel_types.h"

namespace moma::cuda::detail {

// CUDA keeps one "last error" per host thread; every failing runtime call also records its error
// there, and cudaGetLastError() returns it and resets it to cudaSuccess. Non-sticky errors (a bad
// launch configuration, cudaErrorNotReady from a query, cudaErrorMemoryAllocation, an invalid
// argument) are cleared that way; left behind, the next check_launch would report them under the
// next kernel's name. Sticky errors (a kernel fault: illegal address, trap, ...) corrupt the
// context: cudaGetLastError() returns them and they stay, every later call fails with them again,
// and nothing short of a process restart recovers.
inline void clear_last_error() { (void)cudaGetLastError(); }

// Throws MomaException(ERR_CUDA) naming `what`, after consuming the (non-sticky) last error so that
// it is reported once, here, and never again by a later check.
[[noreturn]] inline void throw_cuda(const char* what, cudaError_t err) {
  clear_last_error();
  throw MomaException("ERR_CUDA", std::string(what) + ": " + cudaGetErrorString(err) + " (" +
                                      cudaGetErrorName(err) + ")");
}

#define MOMA_CUDA_CHECK(call)                                          \
  do {                                                                 \
    cudaError_t moma_err_ = (call);                                    \
    if (moma_err_ != cudaSuccess) ::moma::cuda::detail::throw_cuda(#call, moma_err_); \
  } while (0)

// After a kernel launch: reports configuration / launch errors (asynchronous faults surface at
// the next synchronisation). cudaGetLastError() consumes a non-sticky error as it reads it.
inline void check_launch(const char* kernel) {
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw_cuda(kernel, err);
}

// Polls an event: true when its work is done, false while it is pending (the cudaErrorNotReady
// that cudaEventQuery also records as the last error is consumed here); throws on any other error.
inline bool event_done(cudaEvent_t ev, const char* what) {
  const cudaError_t q = cudaEventQuery(ev);
  if (q == cudaSuccess) return true;
  if (q == cudaErrorNotReady) {
    clear_last_error();
    return false;
  }
  throw_cuda(what, q);
}

// Lets `kernel` launch with `dynamic_bytes` of dynamic shared memory. A kernel may use at most
// 48 KiB of static + dynamic shared memory by default (its attribute maxDynamicSharedSizeBytes
// starts at 48 KiB minus its static bytes); more needs the opt-in attribute, and static + dynamic
// may not exceed the device's sharedMemPerBlockOptin. Raises the attribute when the request is
// above the kernel's current limit (on the current device); ERR_ARG naming `what` when static +
// dynamic exceeds the device's opt-in limit.
inline void allow_dynamic_smem(const void* kernel, size_t dynamic_bytes, const char* what) {
  cudaFuncAttributes attr;
  MOMA_CUDA_CHECK(cudaFuncGetAttributes(&attr, kernel));
  if (dynamic_bytes <= static_cast<size_t>(attr.maxDynamicSharedSizeBytes)) return;
  int dev = 0, optin = 0;
  MOMA_CUDA_CHECK(cudaGetDevice(&dev));
  MOMA_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  if (attr.sharedSizeBytes + dynamic_bytes > static_cast<size_t>(optin))
    fail("ERR_ARG", what, ": needs ", attr.sharedSizeBytes, " B static + ", dynamic_bytes,
         " B dynamic shared memory per block, the device allows ", optin, " B");
  MOMA_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(dynamic_bytes)));
}

// Largest dynamic shared memory (bytes) `kernel` may opt into on the current device: the device's
// per-block opt-in limit minus the kernel's static shared memory.
inline size_t max_dynamic_smem(const void* kernel) {
  cudaFuncAttributes attr;
  MOMA_CUDA_CHECK(cudaFuncGetAttributes(&attr, kernel));
  int dev = 0, optin = 0;
  MOMA_CUDA_CHECK(cudaGetDevice(&dev));
  MOMA_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  return static_cast<size_t>(optin) > attr.sharedSizeBytes ? static_cast<size_t>(optin) - attr.sharedSizeBytes : 0;
}

inline cudaStream_t as_stream(void* s) { return static_cast<cudaStream_t>(s); }

constexpr int kThreads = 256;
// Grid for a grid-stride loop over n items: enough blocks to fill any current GPU several times
// over, capped so that the grid dimension limit is never an issue.
inline unsigned grid_for(int64_t n, int threads = kThreads) {
  int64_t blocks = (n + threads - 1) / threads;
  if (blocks > 8192) blocks = 8192;
  if (blocks < 1) blocks = 1;
  return static_cast<unsigned>(blocks);
}

[[noreturn]] inline void bad_dtype(const char* op, DType dt) {
  fail("ERR_DTYPE", "cuda ", op, ": dtype ", dtype_name(dt), " is not supported");
}

// ---- dtype traits -------------------------------------------------------------------------
struct bf16_t {  // storage-only wrapper so that templates can tell bf16 from uint16 data
  uint16_t bits;
};

template <DType D> struct Storage;
template <> struct Storage<DType::F32> { using T = float; };
template <> struct Storage<DType::BF16> { using T = bf16_t; };
template <> struct Storage<DType::I32> { using T = int32_t; };
template <> struct Storage<DType::U8> { using T = uint8_t; };

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(bf16_t v) { return bf16_to_f32(v.bits); }
__device__ __forceinline__ float to_float(int32_t v) { return static_cast<float>(v); }
__device__ __forceinline__ float to_float(uint8_t v) { return static_cast<float>(v); }

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ bf16_t from_float<bf16_t>(float v) {
  return bf16_t{f32_to_bf16(v)};
}

// ---- 16-byte vectors ----------------------------------------------------------------------
// VEC consecutive elements of storage type T moved as one unit: 16 bytes for f32 (4) and bf16 (8).
template <typename T> struct Vec16;
template <> struct Vec16<float> {
  static constexpr int N = 4;
  using U = float4;
  __device__ static void unpack(const U& u, float (&f)[N]) { f[0] = u.x; f[1] = u.y; f[2] = u.z; f[3] = u.w; }
  __device__ static U pack(const float (&f)[N]) { return make_float4(f[0], f[1], f[2], f[3]); }
};
template <> struct Vec16<bf16_t> {
  static constexpr int N = 8;
  using U = uint4;
  __device__ static void unpack(const U& u, float (&f)[N]) {
    const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      f[2 * i] = bf16_to_f32(static_cast<uint16_t>(w[i] & 0xFFFFu));
      f[2 * i + 1] = bf16_to_f32(static_cast<uint16_t>(w[i] >> 16));
    }
  }
  __device__ static U pack(const float (&f)[N]) {
    uint32_t w[4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
      w[i] = static_cast<uint32_t>(f32_to_bf16(f[2 * i])) | (static_cast<uint32_t>(f32_to_bf16(f[2 * i + 1])) << 16);
    return make_uint4(w[0], w[1], w[2], w[3]);
  }
};

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Element k of a row as floats: vector k (Vec16<T>::N elements) when VEC, else element k.
template <typename T, bool VEC>
struct RowIO {
  static constexpr int N = VEC ? Vec16<T>::N : 1;
  __device__ __forceinline__ static void load(const T* row, int64_t k, float (&f)[N]) {
    if constexpr (VEC) {
      Vec16<T>::unpack(reinterpret_cast<const typename Vec16<T>::U*>(row)[k], f);
    } else {
      f[0] = to_float(row[k]);
    }
  }
  __device__ __forceinline__ static void store(T* row, int64_t k, const float (&f)[N]) {
    if constexpr (VEC) {
      reinterpret_cast<typename Vec16<T>::U*>(row)[k] = Vec16<T>::pack(f);
    } else {
      row[k] = from_float<T>(f[0]);
    }
  }
};

// ---- block scan ------------------------------------------------------------------------------
// Block-wide exclusive prefix sum of v (blockDim.x a multiple of 32). `warp_sums` is shared
// [32]; `total` receives the block's sum. Contains barriers: call from every thread.
__device__ __forceinline__ uint32_t block_exclusive_scan(uint32_t v, uint32_t* warp_sums, uint32_t& total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  uint32_t x = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const uint32_t y = __shfl_up_sync(0xFFFFFFFFu, x, o);
    if (lane >= o) x += y;
  }
  if (lane == 31) warp_sums[warp] = x;
  __syncthreads();
  if (warp == 0) {
    uint32_t w = lane < nwarps ? warp_sums[lane] : 0u;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const uint32_t y = __shfl_up_sync(0xFFFFFFFFu, w, o);
      if (lane >= o) w += y;
    }
    warp_sums[lane] = w;  // inclusive over warps
  }
  __syncthreads();
  const uint32_t base = warp == 0 ? 0u : warp_sums[warp - 1];
  total = warp_sums[nwarps - 1];
  __syncthreads();  // warp_sums may be reused by the next call
  return base + x - v;
}

// ---- strided views ------------------------------------------------------------------------
// Host: drops size-1 dims and merges dims k, k+1 when stride[k] == stride[k+1] * shape[k+1].
// The row-major linear index -> offset map is unchanged, so each view of an op can be collapsed
// independently. A contiguous view becomes ndim 1, stride 1 (one multiply per element).
inline StridedView collapse(const StridedView& v) {
  StridedView out;
  out.offset = v.offset;
  int nd = 0;
  for (int k = 0; k < v.ndim; ++k) {
    if (v.shape[k] == 1) continue;
    if (nd > 0 && out.strides[nd - 1] == v.strides[k] * v.shape[k]) {
      out.shape[nd - 1] *= v.shape[k];
      out.strides[nd - 1] = v.strides[k];
    } else {
      out.shape[nd] = v.shape[k];
      out.strides[nd] = v.strides[k];
      ++nd;
    }
  }
  out.ndim = nd;
  return out;
}

// Device: element offset of row-major linear index i (0 <= i < prod(shape)). The outermost dim
// needs no modulo. Idx is uint32_t when every index fits (cheaper division) or int64_t.
template <typename Idx>
__device__ __forceinline__ int64_t view_offset(const StridedView& v, Idx i) {
  int64_t off = v.offset;
  for (int k = v.ndim - 1; k > 0; --k) {
    Idx s = static_cast<Idx>(v.shape[k]);
    Idx c = i % s;
    i /= s;
    off += static_cast<int64_t>(c) * v.strides[k];
  }
  if (v.ndim > 0) off += static_cast<int64_t>(i) * v.strides[0];
  return off;
}

}  // namespace moma::cuda::detail

namespace moma::cuda::detail {

// ---- conversions shared by fill / arange / cast (same rules as the CPU kernels) -------------
// Float -> int32 truncates toward zero, NaN -> 0, saturating; -> uint8 saturates to [0, 255].
MOMA_HD int32_t sat_i32(double v) {
  if (!(v == v)) return 0;
  if (v >= 2147483647.0) return 2147483647;
  if (v <= -2147483648.0) return static_cast<int32_t>(-2147483647 - 1);
  return static_cast<int32_t>(v);
}
MOMA_HD uint8_t sat_u8(double v) {
  if (!(v == v)) return 0;
  if (v >= 255.0) return 255;
  if (v <= 0.0) return 0;
  return static_cast<uint8_t>(static_cast<int32_t>(v));
}
MOMA_HD int32_t sat_i32f(float v) {
  if (!(v == v)) return 0;
  if (v >= 2147483648.0f) return 2147483647;
  if (v <= -2147483648.0f) return static_cast<int32_t>(-2147483647 - 1);
  return static_cast<int32_t>(v);
}
MOMA_HD uint8_t sat_u8f(float v) {
  if (!(v == v)) return 0;
  if (v >= 255.0f) return 255;
  if (v <= 0.0f) return 0;
  return static_cast<uint8_t>(static_cast<int32_t>(v));
}

}  // namespace moma::cuda::detail

// Instantiates `__VA_ARGS__` with `T` the storage type of the runtime dtype `dt`.
#define MOMA_DISPATCH_ALL(dt, opname, ...)                                                 \
  switch (dt) {                                                                            \
    case ::moma::DType::F32: { using T = float; __VA_ARGS__; break; }                      \
    case ::moma::DType::BF16: { using T = ::moma::cuda::detail::bf16_t; __VA_ARGS__; break; } \
    case ::moma::DType::I32: { using T = int32_t; __VA_ARGS__; break; }                    \
    case ::moma::DType::U8: { using T = uint8_t; __VA_ARGS__; break; }                     \
    default: ::moma::cuda::detail::bad_dtype(opname, dt);                                  \
  }
