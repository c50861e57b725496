// Random fills with the shared Philox4x32-10 generator (csrc/core/philox.h), bit-identical to the
// CPU: element i depends only on (seed, offset, i), so the thread layout does not matter.
//
// Mapping: one thread per output element (grid-stride). uniform: y = low + (high - low) * u;
// normal: y = mean + std * z, with z from Box-Muller in double (philox_normal), whose log, cos and
// sqrt are csrc/core/portable_math.h's: the same sequence of correctly rounded double operations
// as the CPU (no FMA, no CUDA math library), hence the same bits. The float multiply and add are
// written with __fmul_rn / __fadd_rn so that nvcc cannot contract them into an FMA: the CPU twin
// rounds the product and the sum separately. A thread recomputes the whole Philox block for its
// element (4x / 2x redundant work, ~10 rounds of 2 mul.wide each): cheap next to the store for
// uniform; normal is compute-bound (~80 double operations per element: ~0.15 ms per 10^8 elements
// on an H100's 67 TFLOP/s of double, ~6 ms on an sm_89 card's 1/64-rate double units; it runs once
// per initialisation).
#include <cuda_runtime.h>

#include "../csrc/core/philox.h"
#include "common.cuh"
#include "kernels.h"

namespace moma::cuda {
using namespace detail;

namespace {

template <typename T>
__global__ void uniform_kernel(T* y, int64_t n, uint64_t seed, uint64_t offset, float low, float high) {
  float range = __fsub_rn(high, low);
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float u = philox_uniform(seed, offset, static_cast<uint64_t>(i));
    y[i] = from_float<T>(__fadd_rn(low, __fmul_rn(range, u)));
  }
}

template <typename T>
__global__ void normal_kernel(T* y, int64_t n, uint64_t seed, uint64_t offset, float mean, float std) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float z = philox_normal(seed, offset, static_cast<uint64_t>(i));
    y[i] = from_float<T>(__fadd_rn(mean, __fmul_rn(std, z)));
  }
}

}  // namespace

void random_uniform(const LaunchCtx& ctx, DType dt, void* y, int64_t n, uint64_t seed, uint64_t offset, float low,
                    float high) {
  if (n <= 0) return;
  cudaStream_t s = as_stream(ctx.stream);
  switch (dt) {
    case DType::F32: uniform_kernel<float><<<grid_for(n), kThreads, 0, s>>>(static_cast<float*>(y), n, seed, offset, low, high); break;
    case DType::BF16: uniform_kernel<bf16_t><<<grid_for(n), kThreads, 0, s>>>(static_cast<bf16_t*>(y), n, seed, offset, low, high); break;
    default: bad_dtype("random_uniform", dt);
  }
  check_launch("random_uniform");
}

void random_normal(const LaunchCtx& ctx, DType dt, void* y, int64_t n, uint64_t seed, uint64_t offset, float mean,
                   float std) {
  if (n <= 0) return;
  cudaStream_t s = as_stream(ctx.stream);
  switch (dt) {
    case DType::F32: normal_kernel<float><<<grid_for(n), kThreads, 0, s>>>(static_cast<float*>(y), n, seed, offset, mean, std); break;
    case DType::BF16: normal_kernel<bf16_t><<<grid_for(n), kThreads, 0, s>>>(static_cast<bf16_t*>(y), n, seed, offset, mean, std); break;
    default: bad_dtype("random_normal", dt);
  }
  check_launch("random_normal");
}

}  // namespace moma::cuda
