// Helpers shared by the CUDA parts of moma_kernel_bench (cuda_bench.cc, cuda_moe_bench.cc,
// cuda_nn_bench.cc): device buffers, the timing loop, the copy-bandwidth ceiling and a plain
// row-major GEMM shape. Only compiled with CUDA.
//
// Timing: warm-up launches, then a probe sizes a batch of repeats to about 20 ms; the median of 7
// batches (synchronise, launch the batch on the device stream, synchronise, divide) is reported.
#pragma once
#ifdef MOMA_WITH_CUDA
#include <algorithm>
#include <functional>
#include <vector>

#include "bench.h"
#include "cuda/kernels.h"
#include "cuda/runtime.h"

namespace moma::bench {

constexpr int kCudaBenchDevice = 0;

// Device buffer (at least 4 bytes) released on scope exit.
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t bytes) : ptr_(cuda::alloc(kCudaBenchDevice, bytes < 4 ? 4 : bytes)) {}
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() { cuda::release(kCudaBenchDevice, ptr_); }
  void* get() const { return ptr_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }

 private:
  void* ptr_;
};

inline double gpu_seconds(const std::function<void()>& launch) {
  const int dev = kCudaBenchDevice;
  for (int i = 0; i < 3; ++i) launch();
  cuda::synchronize(dev, "bench warm-up");
  double t0 = now_s();
  launch();
  cuda::synchronize(dev, "bench probe");
  const double one = now_s() - t0;
  const int reps = std::clamp(int(0.02 / std::max(one, 1e-6)), 1, 1000);
  std::vector<double> samples;
  for (int s = 0; s < 7; ++s) {
    cuda::synchronize(dev, "bench");
    t0 = now_s();
    for (int r = 0; r < reps; ++r) launch();
    cuda::synchronize(dev, "bench");
    samples.push_back((now_s() - t0) / reps);
  }
  std::sort(samples.begin(), samples.end());
  return samples[samples.size() / 2];
}

// Device-to-device copy bandwidth (GB/s, read + write bytes) of 1 GiB; `seconds` receives one copy's time.
inline double copy_ceiling_gbs(void* stream, double* seconds = nullptr) {
  const size_t bytes = size_t(1) << 30;
  DeviceBuffer src(bytes), dst(bytes);
  cuda::fill(LaunchCtx{stream, cuda::error_word(kCudaBenchDevice)}, DType::U8, src.get(), int64_t(bytes), 1.0);
  const double s = gpu_seconds([&] { cuda::copy_d2d(kCudaBenchDevice, dst.get(), src.get(), bytes); });
  if (seconds) *seconds = s;
  return 2.0 * double(bytes) / s / 1e9;
}

// C = A @ B, all row-major and contiguous.
inline GemmShape gemm_shape(int64_t M, int64_t N, int64_t K) {
  GemmShape g;
  g.M = M;
  g.N = N;
  g.K = K;
  g.lda = K;
  g.ldb = N;
  g.ldc = N;
  return g;
}

}  // namespace moma::bench
#endif
