// Mixture-of-depths row selection (semantics: csrc/cpu/kernels_moe.h mod_select, SPEC §3).
// Simple first version, obviously right: kernel 1 gives each valid row t its rank = the number
// of valid rows ranked above it (larger score_key, or equal key and smaller row): O(T^2)
// compares, each block streaming the score keys through shared memory (T <= 64K rows: about
// 4e9 compares at T = 64K, ~1 ms on an H100-class GPU; a radix select replaces it when MoD
// selection shows up in profiles). Rows with rank < k are selected. Kernel 2 (one block) scans
// the selection flags in row order and writes the selected rows ascending. Bytes: 8 T (+ T^2
// compares from shared memory).
// segment_starts: one block, a running max-scan of run-start indices over chunks of 1024 rows.
#include <cuda_runtime.h>

#include <cstdint>

#include "common.cuh"
#include "kernels.h"
#include "kernels_moe.h"
#include "runtime.h"
#include "scratch.cuh"

namespace moma::cuda {
using namespace detail;

namespace {

constexpr int kSelectThreads = 256;
constexpr int kScanThreads = 1024;  // the one-block compaction and segment_starts scans

__global__ void mod_rank_kernel(const float* __restrict__ scores, const int32_t* __restrict__ modality, int64_t T,
                                int64_t k, uint8_t* __restrict__ selected) {
  __shared__ uint32_t keys[kSelectThreads];
  __shared__ int32_t valid[kSelectThreads];
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kSelectThreads + threadIdx.x;
  const bool mine = t < T && modality[t] >= 0;
  const uint32_t my_key = mine ? score_key(scores[t]) : 0u;
  int64_t above = 0;
  for (int64_t base = 0; base < T; base += kSelectThreads) {
    const int64_t s = base + threadIdx.x;
    keys[threadIdx.x] = s < T ? score_key(scores[s]) : 0u;
    valid[threadIdx.x] = s < T && modality[s] >= 0;
    __syncthreads();
    if (mine) {
      const int64_t n = T - base < kSelectThreads ? T - base : kSelectThreads;
      for (int64_t j = 0; j < n; ++j) {
        const uint32_t key = keys[j];
        above += valid[j] && (key > my_key || (key == my_key && base + j < t));
      }
    }
    __syncthreads();
  }
  if (t < T) selected[t] = mine && above < k;
}

// One block of kScanThreads threads: selected rows in increasing order, and the count check.
__global__ void __launch_bounds__(kScanThreads) mod_compact_kernel(const uint8_t* __restrict__ selected, const int32_t* __restrict__ modality, int64_t T,
                                   int64_t k, int32_t* __restrict__ rows, int32_t* err) {
  __shared__ uint32_t warp_sums[32];
  __shared__ int64_t running;
  __shared__ int64_t valid_total;
  if (threadIdx.x == 0) {
    running = 0;
    valid_total = 0;
  }
  __syncthreads();
  int64_t my_valid = 0;
  for (int64_t t = threadIdx.x; t < T; t += blockDim.x) my_valid += modality[t] >= 0;
  atomicAdd(reinterpret_cast<unsigned long long*>(&valid_total), static_cast<unsigned long long>(my_valid));
  for (int64_t base = 0; base < T; base += blockDim.x) {
    const int64_t t = base + threadIdx.x;
    const uint32_t flag = t < T ? selected[t] : 0u;
    uint32_t chunk_total = 0;
    const int64_t pos = running + block_exclusive_scan(flag, warp_sums, chunk_total);
    if (flag && pos < k) rows[pos] = static_cast<int32_t>(t);
    __syncthreads();  // every thread has read `running`
    if (threadIdx.x == 0) running += chunk_total;
    __syncthreads();
  }
  if (threadIdx.x == 0 && valid_total < k) {
    atomicCAS(err, kNoError, kModSelectCount);
    for (int64_t i = running; i < k; ++i) rows[i] = -1;
  }
}

// One block of kScanThreads threads walks the rows in chunks: a row starts a run when its id
// differs from the previous row's; starts = running maximum of the run-start indices (block
// max-scan).
__global__ void __launch_bounds__(kScanThreads) segment_starts_kernel(const int32_t* __restrict__ seg, int64_t n, int32_t* __restrict__ starts) {
  __shared__ int32_t warp_max[32];
  __shared__ int32_t carry;
  if (threadIdx.x == 0) carry = 0;
  __syncthreads();
  for (int64_t base = 0; base < n; base += blockDim.x) {
    const int64_t j = base + threadIdx.x;
    int32_t v = 0;
    if (j < n) v = (j == 0 || seg[j] != seg[j - 1]) ? static_cast<int32_t>(j) : 0;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int o = 1; o < 32; o <<= 1) {
      const int32_t y = __shfl_up_sync(0xFFFFFFFFu, v, o);
      if (lane >= o) v = max(v, y);
    }
    if (lane == 31) warp_max[warp] = v;
    __syncthreads();
    if (warp == 0) {
      int32_t w = lane < static_cast<int>(blockDim.x >> 5) ? warp_max[lane] : 0;
      for (int o = 1; o < 32; o <<= 1) {
        const int32_t y = __shfl_up_sync(0xFFFFFFFFu, w, o);
        if (lane >= o) w = max(w, y);
      }
      warp_max[lane] = w;
    }
    __syncthreads();
    int32_t m = max(v, carry);
    if (warp > 0) m = max(m, warp_max[warp - 1]);
    if (j < n) starts[j] = m;
    __syncthreads();
    if (threadIdx.x == 0) carry = max(carry, warp_max[(blockDim.x >> 5) - 1]);
    __syncthreads();
  }
}

}  // namespace

void segment_starts(const LaunchCtx& ctx, const int32_t* seg, int64_t n, int32_t* starts) {
  if (n <= 0) return;
  segment_starts_kernel<<<1, kScanThreads, 0, as_stream(ctx.stream)>>>(seg, n, starts);
  check_launch("segment_starts");
}

void mod_select(const LaunchCtx& ctx, const float* scores, const int32_t* modality, int64_t T, int64_t k,
                int32_t* rows) {
  if (k == 0) return;
  cudaStream_t s = as_stream(ctx.stream);
  int dev = 0;
  MOMA_CUDA_CHECK(cudaGetDevice(&dev));
  // flags for T rows (at least one byte), back to the cache (stream-ordered) even if a launch throws
  Scratch flag_buf(dev, static_cast<size_t>(T > 0 ? T : 1));
  uint8_t* flags = flag_buf.as<uint8_t>();
  if (T > 0) {
    const unsigned blocks = static_cast<unsigned>((T + kSelectThreads - 1) / kSelectThreads);
    mod_rank_kernel<<<blocks, kSelectThreads, 0, s>>>(scores, modality, T, k, flags);
    check_launch("mod_select (rank)");
  }
  mod_compact_kernel<<<1, kScanThreads, 0, s>>>(flags, modality, T, k, rows, ctx.err);
  check_launch("mod_select (compact)");
}

}  // namespace moma::cuda
