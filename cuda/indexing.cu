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
// scatter_add (see the design note above its kernels): bucket the positions j by target row
// (counting sort, each bucket sorted ascending), then one thread per (o, row, i) of a touched row
// adds its contributions in increasing j: deterministic, equal to the CPU, O(outer * k * inner).
#include <cuda_runtime.h>

#include <cstdint>

#include "common.cuh"
#include "kernels.h"
#include "runtime.h"
#include "scratch.cuh"

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

// ---- scatter_add ---------------------------------------------------------------------------
// y[o, idx[j], i] += src[o, j, i], each output element taking its contributions in increasing j
// (the CPU's order) so that the result is deterministic and equal to the CPU's. No float atomics:
// the positions j are bucketed by target row once per call (idx is shared by every o), then each
// output element of a touched row is summed by one thread. With m = #valid indices <= k:
//   1. count: counts[t] = #{j : idx[j] == t} (integer atomicAdd, order-free); an index outside
//      [0, n) records kScatterAddRange in the error word and is left out of every bucket.
//   2. scan: one block of 1024 threads, exclusive prefix sum of counts into offsets[0..n]
//      (chunks of 16K rows, 16 per thread); offsets[n] = m. Bucket of row t = [offsets[t],
//      offsets[t+1]) in the slot arrays.
//   3. fill: slots[offsets[t] + atomicSub(&counts[t], 1) - 1] = j: every bucket holds its j in
//      arbitrary order (counts ends at 0).
//   4. sort each bucket ascending into `sorted`:
//      - at most kSmallBucket (256) entries: one warp per bucket, rank sort (rank of a j = number
//        of smaller j in the bucket, the j being distinct; O(size^2 / 32) compares per lane).
//        The warp of a bucket is the one whose slot position p is the bucket's first slot.
//      - larger buckets (at most k / 257 of them; all k indices equal is the extreme) are listed
//        by the warps of 4a and sorted by one block of 1024 threads each, as a stable compaction
//        of {j : idx[j] == t} (chunks of 1024 positions, warp ballots + per-warp counts): O(k)
//        per large bucket, O(k^2 / 257) at worst in total, instead of O(size^2).
//   5. accumulate: one thread per (o, p, i), p < m a slot position (grid-stride over
//      outer * k * inner); the thread whose p is the first slot of its row's bucket starts from
//      y[o, t, i] and adds src[o, sorted[q], i] for q over the bucket in order, in float32 with
//      __fadd_rn for f32 / bf16 (bf16 rounded once on store) and wrapping uint32 for int32, then
//      stores. Untouched rows are never written (they keep their exact bits, as on the CPU).
//      Threads of a warp share (o, p) whenever inner >= 32: coalesced along i.
// FLOPs: outer * m * inner adds. Bytes: src read once (outer * k * inner elements), touched rows
// of y read and written once (<= outer * min(k, n) * inner each way), plus O(n + k) index work
// (8 n bytes for counts / offsets, ~16 k for the slots; + 4 k per large bucket). Scratch:
// (2 n + 2 k + k / 257 + 3) int32 from the caching allocator, released stream-ordered. Launches:
// a memset and 6 kernels (4b always launches; its blocks exit at once when no bucket is large).
// A bucket is summed serially (the determinism contract), so a row taking most of the k indices
// (e.g. a padding token) leaves outer * inner threads doing ~k dependent adds each.
constexpr unsigned kFull = 0xFFFFFFFFu;
constexpr int kScanThreads = 1024, kScanItems = 16;
constexpr int kSmallBucket = 256;    // larger buckets are sorted by a block
constexpr int kLargeThreads = 1024;  // block of the large-bucket sort (32 warps)
constexpr int kAccUnroll = 8;        // src loads in flight per accumulate thread

template <typename T> struct ScatterAcc {
  using Acc = float;
  __device__ static Acc load(T v) { return to_float(v); }
  __device__ static Acc add(Acc a, T v) { return __fadd_rn(a, to_float(v)); }  // never contracted
  __device__ static T store(Acc a) { return from_float<T>(a); }
};
template <> struct ScatterAcc<int32_t> {
  using Acc = uint32_t;
  __device__ static Acc load(int32_t v) { return static_cast<uint32_t>(v); }
  __device__ static Acc add(Acc a, int32_t v) { return a + static_cast<uint32_t>(v); }
  __device__ static int32_t store(Acc a) { return static_cast<int32_t>(a); }
};

// 1. bucket sizes (+ range check).
__global__ void scatter_count_kernel(const int32_t* __restrict__ idx, int64_t k, int64_t n, int32_t* counts,
                                     int32_t* err) {
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < k;
       j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int32_t t = idx[j];
    if (t < 0 || t >= n) atomicCAS(err, 0, static_cast<int32_t>(kScatterAddRange));
    else atomicAdd(&counts[t], 1);
  }
}

// 2. offsets[t] = sum of counts[0..t), offsets[n] = total. One block of kScanThreads; each chunk of
// kScanThreads * kScanItems rows gives thread x the rows [base + x * kScanItems, +kScanItems).
__global__ void __launch_bounds__(kScanThreads) scatter_scan_kernel(const int32_t* __restrict__ counts, int64_t n,
                                                                    int32_t* __restrict__ offsets) {
  __shared__ int32_t warp_sums[kScanThreads / 32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  constexpr int64_t kChunk = static_cast<int64_t>(kScanThreads) * kScanItems;
  int32_t carry = 0;  // identical in every thread
  for (int64_t base = 0; base < n; base += kChunk) {
    const int64_t r0 = base + static_cast<int64_t>(threadIdx.x) * kScanItems;
    int32_t v[kScanItems];
    int32_t sum = 0;
#pragma unroll
    for (int q = 0; q < kScanItems; ++q) {
      v[q] = r0 + q < n ? counts[r0 + q] : 0;
      sum += v[q];
    }
    int32_t incl = sum;  // inclusive scan over the warp
#pragma unroll
    for (int d = 1; d < 32; d <<= 1) {
      const int32_t u = __shfl_up_sync(kFull, incl, d);
      if (lane >= d) incl += u;
    }
    if (lane == 31) warp_sums[warp] = incl;
    __syncthreads();
    if (warp == 0) {
      int32_t w = warp_sums[lane];
#pragma unroll
      for (int d = 1; d < 32; d <<= 1) {
        const int32_t u = __shfl_up_sync(kFull, w, d);
        if (lane >= d) w += u;
      }
      warp_sums[lane] = w;  // inclusive over warps
    }
    __syncthreads();
    int32_t run = carry + (warp > 0 ? warp_sums[warp - 1] : 0) + (incl - sum);
#pragma unroll
    for (int q = 0; q < kScanItems; ++q) {
      if (r0 + q < n) offsets[r0 + q] = run;
      run += v[q];
    }
    carry += warp_sums[kScanThreads / 32 - 1];
    __syncthreads();  // warp_sums is rewritten by the next chunk
  }
  if (threadIdx.x == 0) offsets[n] = carry;
}

// 3. unordered fill of the buckets; counts[t] counts down to 0.
__global__ void scatter_fill_kernel(const int32_t* __restrict__ idx, int64_t k, int64_t n,
                                    const int32_t* __restrict__ offsets, int32_t* counts, int32_t* __restrict__ slots) {
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < k;
       j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int32_t t = idx[j];
    if (t < 0 || t >= n) continue;
    slots[offsets[t] + atomicSub(&counts[t], 1) - 1] = static_cast<int32_t>(j);
  }
}

// 4a. one warp per slot position p < m; the warp of a bucket's first slot sorts a small bucket
// (rank sort, j distinct) or appends the row to the large list.
__global__ void scatter_sort_small_kernel(const int32_t* __restrict__ idx, int64_t k, int64_t n,
                                          const int32_t* __restrict__ offsets, const int32_t* __restrict__ slots,
                                          int32_t* __restrict__ sorted, int32_t* __restrict__ large_rows,
                                          int32_t* __restrict__ n_large) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x >> 5);
  const int64_t m = offsets[n];
  for (int64_t p = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5; p < m && p < k; p += warps) {
    const int32_t t = idx[slots[p]];
    const int64_t b = offsets[t], e = offsets[t + 1];
    if (b != p) continue;  // warp-uniform: not the bucket's first slot
    if (e - b > kSmallBucket) {
      if (lane == 0) large_rows[atomicAdd(n_large, 1)] = t;
      continue;
    }
    for (int64_t q0 = b; q0 < e; q0 += 32) {
      const bool have = q0 + lane < e;
      const int32_t v = have ? slots[q0 + lane] : INT32_MAX;
      int32_t rank = 0;
      for (int64_t r0 = b; r0 < e; r0 += 32) {
        const int32_t w = r0 + lane < e ? slots[r0 + lane] : INT32_MAX;  // padding is never < v
#pragma unroll
        for (int l = 0; l < 32; ++l) rank += __shfl_sync(kFull, w, l) < v ? 1 : 0;
      }
      if (have) sorted[b + rank] = v;
    }
  }
}

// 4b. one block per large bucket: sorted[b..e) = {j : idx[j] == t} in increasing j (stable
// compaction over chunks of kLargeThreads positions).
__global__ void __launch_bounds__(kLargeThreads) scatter_sort_large_kernel(
    const int32_t* __restrict__ idx, int64_t k, const int32_t* __restrict__ offsets,
    const int32_t* __restrict__ large_rows, const int32_t* __restrict__ n_large, int32_t* __restrict__ sorted) {
  __shared__ int32_t warp_counts[kLargeThreads / 32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const uint32_t lt = (1u << lane) - 1u;
  const int32_t nl = *n_large;
  for (int32_t g = blockIdx.x; g < nl; g += gridDim.x) {
    const int32_t t = large_rows[g];
    const int64_t b = offsets[t], size = offsets[t + 1] - b;
    int64_t done = 0;  // identical in every thread
    for (int64_t j0 = 0; j0 < k && done < size; j0 += kLargeThreads) {
      const int64_t j = j0 + threadIdx.x;
      const bool hit = j < k && idx[j] == t;
      const uint32_t mask = __ballot_sync(kFull, hit);
      if (lane == 0) warp_counts[warp] = __popc(mask);
      __syncthreads();
      int32_t before = 0, total = 0;
      for (int w = 0; w < kLargeThreads / 32; ++w) {
        const int32_t c = warp_counts[w];
        before += w < warp ? c : 0;
        total += c;
      }
      if (hit) sorted[b + done + before + __popc(mask & lt)] = static_cast<int32_t>(j);
      done += total;
      __syncthreads();  // warp_counts is rewritten by the next chunk
    }
  }
}

// 5. one thread per (o, p, i); the first slot of a bucket sums the bucket in order.
template <typename T>
__global__ void scatter_accumulate_kernel(const T* src, const int32_t* __restrict__ idx,
                                          const int32_t* __restrict__ offsets, const int32_t* __restrict__ sorted,
                                          T* y, int64_t outer, int64_t k, int64_t n, int64_t inner) {
  using P = ScatterAcc<T>;
  const int64_t m = offsets[n];
  const int64_t total = outer * k * inner;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = e % inner;
    const int64_t r = e / inner;
    const int64_t p = r % k;
    const int64_t o = r / k;
    if (p >= m) continue;
    const int32_t t = idx[sorted[p]];
    if (offsets[t] != p) continue;
    const int64_t end = offsets[t + 1];
    const T* s = src + o * k * inner + i;
    T* yp = y + (o * n + t) * inner + i;
    typename P::Acc acc = P::load(*yp);
    int64_t q = p;
    for (; q + kAccUnroll <= end; q += kAccUnroll) {  // loads first, adds in order
      T v[kAccUnroll];
#pragma unroll
      for (int u = 0; u < kAccUnroll; ++u) v[u] = s[static_cast<int64_t>(sorted[q + u]) * inner];
#pragma unroll
      for (int u = 0; u < kAccUnroll; ++u) acc = P::add(acc, v[u]);
    }
    for (; q < end; ++q) acc = P::add(acc, s[static_cast<int64_t>(sorted[q]) * inner]);
    *yp = P::store(acc);
  }
}

void check_indices(cudaStream_t s, const int32_t* idx, int64_t k, int64_t n, int32_t* err, int32_t code) {
  if (k <= 0) return;
  check_indices_kernel<<<grid_for(k), kThreads, 0, s>>>(idx, k, n, err, code);
}

}  // namespace

void index_select(const LaunchCtx& ctx, DType dt, const void* x, const int32_t* idx, void* y, int64_t outer, int64_t n,
                  int64_t k, int64_t inner) {
  cudaStream_t s = as_stream(ctx.stream);
  check_indices(s, idx, k, n, ctx.err, kIndexSelectRange);
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

void scatter_add(const LaunchCtx& ctx, DType dt, const void* src, const int32_t* idx, void* y, int64_t outer, int64_t k,
                 int64_t n, int64_t inner) {
  if (dt != DType::F32 && dt != DType::BF16 && dt != DType::I32) bad_dtype("scatter_add", dt);
  cudaStream_t s = as_stream(ctx.stream);
  const int64_t total = outer * n * inner;
  if (total <= 0 || k <= 0) {  // nothing to add to: only the index check, as the CPU
    check_indices(s, idx, k, n, ctx.err, kScatterAddRange);
    check_launch("scatter_add (index check)");
    return;
  }
  // slot positions and bucket offsets are int32 (as the indices)
  if (k > INT32_MAX) fail("ERR_SHAPE", "cuda scatter_add: ", k, " indices exceed the int32 limit");
  int dev = 0;
  MOMA_CUDA_CHECK(cudaGetDevice(&dev));
  // scratch (int32): counts[n], n_large[1] | offsets[n + 1] | slots[k] | sorted[k] | large_rows[k / 257 + 1]
  const int64_t max_large = k / (kSmallBucket + 1) + 1;
  const int64_t words = (n + 1) + (n + 1) + 2 * k + max_large;
  // back to the cache (stream-ordered reuse) on return or when a launch throws
  Scratch scratch(dev, static_cast<size_t>(words) * sizeof(int32_t));
  int32_t* counts = scratch.as<int32_t>();
  int32_t* n_large = counts + n;
  int32_t* offsets = n_large + 1;
  int32_t* slots = offsets + n + 1;
  int32_t* sorted = slots + k;
  int32_t* large_rows = sorted + k;
  MOMA_CUDA_CHECK(cudaMemsetAsync(counts, 0, static_cast<size_t>(n + 1) * sizeof(int32_t), s));
  scatter_count_kernel<<<grid_for(k), kThreads, 0, s>>>(idx, k, n, counts, ctx.err);
  check_launch("scatter_add (count)");
  scatter_scan_kernel<<<1, kScanThreads, 0, s>>>(counts, n, offsets);
  check_launch("scatter_add (scan)");
  scatter_fill_kernel<<<grid_for(k), kThreads, 0, s>>>(idx, k, n, offsets, counts, slots);
  check_launch("scatter_add (fill)");
  scatter_sort_small_kernel<<<grid_for(k * 32), kThreads, 0, s>>>(idx, k, n, offsets, slots, sorted, large_rows,
                                                                  n_large);
  check_launch("scatter_add (sort)");
  const unsigned large_blocks = static_cast<unsigned>(max_large < 1024 ? max_large : 1024);
  scatter_sort_large_kernel<<<large_blocks, kLargeThreads, 0, s>>>(idx, k, offsets, large_rows, n_large, sorted);
  check_launch("scatter_add (sort large)");
  const int64_t work = outer * k * inner;
  auto go = [&](auto tag) {
    using T = decltype(tag);
    scatter_accumulate_kernel<T><<<grid_for(work), kThreads, 0, s>>>(static_cast<const T*>(src), idx, offsets, sorted,
                                                                     static_cast<T*>(y), outer, k, n, inner);
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
