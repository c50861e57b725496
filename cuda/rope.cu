// Rotary position embedding, rotate-half convention (semantics: csrc/cpu/kernels_nn.h; the CPU
// twin is csrc/cpu/rope.cc).
//
// inv_freq[i] = theta^(-2i / D) is computed on the host in double with std::pow, exactly as the
// CPU does (same bits), once per (device, theta, D): the table is uploaded to a cudaMalloc'd
// buffer on the device's stream the first time that key is seen and kept for the life of the
// process (a few KiB per key; outside the caching allocator so it never counts as a live block),
// so a call does no allocation and no host-to-device copy. Per row n (one block per
// row, grid-stride) the angles of the row are computed once in chunks of kChunk frequencies:
// a = pos * inv_freq[i] in double, c = float(cos a), s = float(sin a) (CUDA's double cos / sin
// are within 2 ulp of the correctly rounded value, so after rounding to float they agree with the
// CPU's except in rare last-bit cases), stored in shared memory and shared by the H heads; then
// y[i] = x[i] c - x[i + half] s, y[i + half] = x[i + half] c + x[i] s with one rounding per
// product and per sum (__fmul_rn / __fadd_rn, as the CPU's no-contraction build), bf16 rounded
// once on store; the inverse uses -s.
// A negative position records kRopePosition and its row is written as zeros.
// FLOPs 6 per pair plus D/2 double sincos per row; bytes 2 N H D elem: memory bound (the sincos
// are amortised over H heads).
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
#include <mutex>
#include <tuple>
#include <vector>

#include "common.cuh"
#include "kernels.h"
#include "kernels_nn.h"
#include "runtime.h"

namespace moma::cuda {
using namespace detail;

namespace {

constexpr int kRopeThreads = 256;
constexpr int kChunk = 256;  // frequencies per shared-memory chunk

template <typename T>
__global__ void __launch_bounds__(kRopeThreads)
    rope_kernel(const T* x, const int32_t* __restrict__ pos, const double* __restrict__ inv_freq, int64_t N,
                int64_t H, int64_t D, bool inverse, T* y, int32_t* err) {  // y may alias x
  __shared__ float sc[kChunk], ss[kChunk];
  const int64_t half = D / 2;
  for (int64_t n = blockIdx.x; n < N; n += gridDim.x) {
    const int32_t p = pos[n];
    const bool bad = p < 0;
    if (bad && threadIdx.x == 0) atomicCAS(err, 0, static_cast<int32_t>(kRopePosition));
    const T* xr = x + n * H * D;
    T* yr = y + n * H * D;
    for (int64_t i0 = 0; i0 < half; i0 += kChunk) {
      const int64_t len = half - i0 < kChunk ? half - i0 : kChunk;
      __syncthreads();  // the previous chunk's readers are done
      for (int64_t i = threadIdx.x; i < len; i += blockDim.x) {
        const double a = static_cast<double>(p) * inv_freq[i0 + i];
        const float c = static_cast<float>(cos(a)), s = static_cast<float>(sin(a));
        sc[i] = c;
        ss[i] = inverse ? -s : s;
      }
      __syncthreads();
      const int64_t work = H * len;
      for (int64_t j = threadIdx.x; j < work; j += blockDim.x) {
        const int64_t h = j / len, i = j - h * len;
        const int64_t o = h * D + i0 + i;
        float r0 = 0.0f, r1 = 0.0f;
        if (!bad) {
          const float a = to_float(xr[o]), b = to_float(xr[o + half]);
          const float c = sc[i], s = ss[i];
          r0 = __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s));
          r1 = __fadd_rn(__fmul_rn(b, c), __fmul_rn(a, s));
        }
        yr[o] = from_float<T>(r0);
        yr[o + half] = from_float<T>(r1);
      }
    }
  }
}

// Device table of inv_freq for (theta, D) on the current device; built and uploaded on first use
// under a mutex (the upload is queued on the device's single stream, so every later kernel that
// reads the table runs after it), never freed.
const double* rope_inv_freq(float theta, int64_t D) {
  int dev = 0;
  MOMA_CUDA_CHECK(cudaGetDevice(&dev));
  uint32_t theta_bits;
  std::memcpy(&theta_bits, &theta, sizeof theta_bits);
  const auto key = std::make_tuple(dev, theta_bits, D);
  static std::mutex mu;
  static auto* tables = new std::map<std::tuple<int, uint32_t, int64_t>, double*>();  // never destroyed
  std::lock_guard<std::mutex> lock(mu);
  auto it = tables->find(key);
  if (it != tables->end()) return it->second;
  const int64_t half = D / 2;
  // The CPU's frequencies, bit for bit (same expression, host libm).
  std::vector<double> inv_freq(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i)
    inv_freq[static_cast<size_t>(i)] =
        std::pow(static_cast<double>(theta), -2.0 * static_cast<double>(i) / static_cast<double>(D));
  const size_t bytes = static_cast<size_t>(half) * sizeof(double);
  double* table = nullptr;
  MOMA_CUDA_CHECK(cudaMalloc(&table, bytes));
  try {
    copy_h2d(dev, table, inv_freq.data(), bytes);
  } catch (...) {
    cudaFree(table);
    clear_last_error();
    throw;
  }
  tables->emplace(key, table);
  return table;
}

}  // namespace

void rope(const LaunchCtx& ctx, DType dt, const void* x, const int32_t* pos, int64_t N, int64_t H, int64_t D,
          float theta, bool inverse, void* y) {
  if (dt != DType::F32 && dt != DType::BF16) bad_dtype("rope", dt);
  const int64_t half = D / 2;
  if (N <= 0 || H <= 0 || half <= 0) return;
  cudaStream_t s = as_stream(ctx.stream);
  const double* f = rope_inv_freq(theta, D);
  const unsigned blocks = static_cast<unsigned>(N < 65535 * 8 ? N : 65535 * 8);
  if (dt == DType::F32)
    rope_kernel<float><<<blocks, kRopeThreads, 0, s>>>(static_cast<const float*>(x), pos, f, N, H, D, inverse,
                                                        static_cast<float*>(y), ctx.err);
  else
    rope_kernel<bf16_t><<<blocks, kRopeThreads, 0, s>>>(static_cast<const bf16_t*>(x), pos, f, N, H, D, inverse,
                                                         static_cast<bf16_t*>(y), ctx.err);
  check_launch("rope");
}

}  // namespace moma::cuda
