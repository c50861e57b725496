// Routing kernels of the MoE layer (semantics: csrc/cpu/kernels_moe.h, SPEC.md §2): partition,
// router scores (+ backward), expert-choice / token-choice / threshold routing and routing
// statistics. All are small next to the expert GEMMs (T <= ~64K rows, E <= 1024 experts); the
// designs favour simple, deterministic code over peak bandwidth.
//
// moe_partition: one block of 1024 threads. Pass 1 computes each row's group and the group counts
//   (shared integer atomics), thread 0 turns them into offsets; pass 2 walks the rows in chunks of
//   1024 and places each row at offsets[bucket] + (rows of its bucket in earlier chunks) + (rows of
//   its bucket in earlier warps of this chunk) + (rank in its warp, __match_any_sync), which is a
//   stable partition. Bytes ~ 16 T; latency bound (~T / 1024 chunk steps with 4 barriers each).
// moe_router_scores (+ backward): one warp per row. Sigmoid 1 / (1 + exp(-z)) per element;
//   softmax: z is staged in the output row, the max is a warp max (exact), the sum of
//   exp(z - max) is accumulated in increasing column order by every lane through shuffles (the
//   CPU's order), then each entry is divided by it. exp is pmath::expf and the Gumbel noise
//   philox_gumbel_difference at the global column index (csrc/core/portable_math.h: the same
//   operations as the CPU, no library transcendental), so the scores are bit-identical to the
//   CPU's for the same logits. Bytes 8 T E (+ T): tiny; ~60 double flops per entry with noise.
// moe_route:
//   1. row_slots <- -1 (expert choice) or the mark kernel (one thread per row) that writes -2 in
//      the columns of the row's candidates and -1 elsewhere: for token choice its top-min(k, E_g)
//      local experts (ties to the smaller expert), for threshold those with select[t, e] > 0.5;
//      column 0 of single-expert groups in both.
//   2. one block per expert writes its capacity k_e into expert_offsets[e + 1] (expert choice:
//      expert_choice_capacity; token choice: min(#rows marked -2, token_choice_capacity);
//      threshold: #rows marked -2, no cap).
//   3. one block scans them into offsets (block-wide scan); a running total past R records
//      kMoeRouteOverflow and is clamped to R (so later kernels never write past R).
//   4. slots [expert_offsets[E], R) <- (row -1, gate 0).
//   5. one block (1024 threads) per expert selects among the rows of its group (perm order =
//      increasing row), with the group's keys cached in dynamic shared memory when they fit
//      (T <= ~57K on sm_90, ~41K on sm_80, ~25K on sm_86 / sm_89): radix select of the k-th largest score_key (4 passes of 8 bits over a
//      shared 256-bin histogram, warp-aggregated atomics) gives the threshold key and how many
//      keys equal to it to take; a block-wide scan over chunks then takes keys above the
//      threshold and the first such equal keys in increasing row order, writing slot_row,
//      slot_gate and row_slots (and -1 in row_slots for the candidates not taken). Single-expert
//      groups, threshold mode (k = #candidates) and expert choice with capacity >= rows take
//      every candidate without the select.
//   Bytes: per expert one pass over n_g (row, score) pairs (cached) or six (not cached), mostly L2
//   hits; latency bound for small E (only E blocks are busy).
// moe_routing_stats: one kernel, a block per expert (count, mean gate summed in double over a
//   fixed tree) and a block per group (rows taken by 0 / 1 / 2+ experts, integer shared atomics).
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "../csrc/core/philox.h"
#include "../csrc/core/portable_math.h"
#include "common.cuh"
#include "kernels.h"
#include "kernels_moe.h"

namespace moma::cuda {
using namespace detail;

namespace {

constexpr unsigned kFull = 0xFFFFFFFFu;
constexpr int kBlock = 1024;  // partition / select / prefix blocks

__device__ __forceinline__ uint32_t lanemask_lt() { return (1u << (threadIdx.x & 31)) - 1u; }

__device__ __forceinline__ int group_of_expert(const MoeLayout& L, int e) {
  int g = 0;
  while (g + 1 < L.num_groups && L.begin[g + 1] <= e) ++g;
  return g;
}

// ---- partition ---------------------------------------------------------------------------
// Bucket of a row: its group, or G for padding / unrouted / bad modality ids.
__device__ __forceinline__ int row_bucket(const MoeLayout& L, int32_t m, bool& bad) {
  bad = m < -1 || m >= L.num_modalities;
  if (bad || m < 0) return L.num_groups;
  const int g = L.group_of[m];
  return g < 0 ? L.num_groups : g;
}

__global__ void __launch_bounds__(kBlock) partition_kernel(const int32_t* __restrict__ modality, int64_t T, MoeLayout L,
                                                          int32_t* __restrict__ row_group, int32_t* __restrict__ counts,
                                                          int32_t* __restrict__ offsets, int32_t* __restrict__ perm,
                                                          int32_t* err) {
  constexpr int NB = kMaxMoeGroups + 1;
  __shared__ int32_t cnt[NB];
  __shared__ int32_t base[NB];
  __shared__ int32_t wpos[32][NB];  // per warp and bucket: rows in the chunk, then their first position
  const int tid = threadIdx.x, warp = tid >> 5;
  const int G = L.num_groups, nb = G + 1;
  if (tid < NB) cnt[tid] = 0;
  __syncthreads();
  for (int64_t t = tid; t < T; t += blockDim.x) {
    bool bad;
    const int b = row_bucket(L, modality[t], bad);
    if (bad) atomicCAS(err, 0, static_cast<int32_t>(kMoePartitionRange));
    row_group[t] = b < G ? b : -1;
    atomicAdd(&cnt[b], 1);
  }
  __syncthreads();
  if (tid == 0) {
    int32_t run = 0;
    for (int b = 0; b < nb; ++b) {
      base[b] = run;
      if (b < G) {
        counts[b] = cnt[b];
        offsets[b] = run;
      }
      run += cnt[b];
    }
    offsets[G] = base[G];
  }
  __syncthreads();
  for (int64_t c0 = 0; c0 < T; c0 += blockDim.x) {
    const int64_t t = c0 + tid;
    const bool active = t < T;
    bool bad;
    const int b = active ? row_bucket(L, modality[t], bad) : -1;
    const uint32_t mask = __match_any_sync(kFull, b);
    const int rank = __popc(mask & lanemask_lt());
    for (int i = tid; i < 32 * NB; i += blockDim.x) wpos[i / NB][i % NB] = 0;
    __syncthreads();
    if (active && rank == 0) wpos[warp][b] = __popc(mask);
    __syncthreads();
    if (tid < nb) {  // exclusive scan over the warps of this chunk, per bucket
      int32_t run = base[tid];
      for (int w = 0; w < 32; ++w) {
        const int32_t c = wpos[w][tid];
        wpos[w][tid] = run;
        run += c;
      }
      base[tid] = run;
    }
    __syncthreads();
    if (active) perm[wpos[warp][b] + rank] = static_cast<int32_t>(t);
    __syncthreads();  // wpos is cleared by the next chunk
  }
}

// ---- router scores -----------------------------------------------------------------------
__device__ __forceinline__ float router_z(const float* logits, int64_t t, int64_t E, int64_t j, bool gumbel,
                                          uint64_t seed, uint64_t offset) {
  const float l = logits[t * E + j];
  if (!gumbel) return l;
  return __fadd_rn(l, philox_gumbel_difference(seed, offset, static_cast<uint64_t>(t * E + j)));
}

__global__ void router_scores_kernel(const float* __restrict__ logits, const int32_t* __restrict__ row_group, int64_t T,
                                     MoeLayout L, RouterFn fn, bool gumbel, uint64_t seed, uint64_t offset,
                                     float* __restrict__ scores) {
  const int lane = threadIdx.x & 31;
  const int64_t E = L.num_experts;
  const int64_t wpb = blockDim.x >> 5;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * wpb + (threadIdx.x >> 5); t < T; t += gridDim.x * wpb) {
    const int g = row_group[t];
    const bool in = g >= 0 && g < L.num_groups;
    const int64_t lo = in ? L.begin[g] : 0, hi = in ? L.begin[g + 1] : 0;
    float* srow = scores + t * E;
    for (int64_t j = lane; j < E; j += 32)
      if (j < lo || j >= hi) srow[j] = 0.0f;
    if (hi - lo == 0) continue;
    if (hi - lo == 1) {
      if (lane == 0) srow[lo] = 1.0f;
      continue;
    }
    if (fn == RouterFn::Sigmoid) {
      for (int64_t j = lo + lane; j < hi; j += 32) {
        const float z = router_z(logits, t, E, j, gumbel, seed, offset);
        srow[j] = __fdiv_rn(1.0f, __fadd_rn(1.0f, pmath::expf(-z)));
      }
      continue;
    }
    // softmax over [lo, hi): each lane only touches its own columns j = lo + lane (mod 32)
    float m = -INFINITY;
    for (int64_t j = lo + lane; j < hi; j += 32) {
      const float z = router_z(logits, t, E, j, gumbel, seed, offset);
      srow[j] = z;
      m = fmaxf(m, z);
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(kFull, m, o));
    float sum = 0.0f;
    for (int64_t c = lo; c < hi; c += 32) {
      const int64_t j = c + lane;
      float ev = 0.0f;
      if (j < hi) {
        ev = pmath::expf(__fsub_rn(srow[j], m));
        srow[j] = ev;
      }
      const int n = hi - c < 32 ? static_cast<int>(hi - c) : 32;
      for (int i = 0; i < n; ++i) sum = __fadd_rn(sum, __shfl_sync(kFull, ev, i));
    }
    for (int64_t j = lo + lane; j < hi; j += 32) srow[j] = __fdiv_rn(srow[j], sum);
  }
}

__global__ void router_scores_backward_kernel(const float* __restrict__ scores, const float* __restrict__ dscores,
                                              const int32_t* __restrict__ row_group, int64_t T, MoeLayout L,
                                              RouterFn fn, float* __restrict__ dlogits) {
  const int lane = threadIdx.x & 31;
  const int64_t E = L.num_experts;
  const int64_t wpb = blockDim.x >> 5;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * wpb + (threadIdx.x >> 5); t < T; t += gridDim.x * wpb) {
    const int g = row_group[t];
    const bool in = g >= 0 && g < L.num_groups;
    int64_t lo = in ? L.begin[g] : 0, hi = in ? L.begin[g + 1] : 0;
    if (hi - lo < 2) hi = lo;  // single-expert groups have no router
    const float* s = scores + t * E;
    const float* ds = dscores + t * E;
    float* dl = dlogits + t * E;
    for (int64_t j = lane; j < E; j += 32)
      if (j < lo || j >= hi) dl[j] = 0.0f;
    if (hi == lo) continue;
    if (fn == RouterFn::Sigmoid) {
      for (int64_t j = lo + lane; j < hi; j += 32) dl[j] = __fmul_rn(__fmul_rn(ds[j], s[j]), __fsub_rn(1.0f, s[j]));
      continue;
    }
    float dot = 0.0f;  // sum_k s_k ds_k in increasing k
    for (int64_t c = lo; c < hi; c += 32) {
      const int64_t j = c + lane;
      const float p = j < hi ? __fmul_rn(s[j], ds[j]) : 0.0f;
      const int n = hi - c < 32 ? static_cast<int>(hi - c) : 32;
      for (int i = 0; i < n; ++i) dot = __fadd_rn(dot, __shfl_sync(kFull, p, i));
    }
    for (int64_t j = lo + lane; j < hi; j += 32) dl[j] = __fmul_rn(s[j], __fsub_rn(ds[j], dot));
  }
}

// ---- routing -----------------------------------------------------------------------------
constexpr int32_t kCandidate = -2;  // token choice / threshold: row_slots mark of a (row, local expert) candidate

__global__ void fill_i32_kernel(int32_t* y, int64_t n, int32_t v) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    y[i] = v;
}

// Row t marks local experts of its group with kCandidate (-1 elsewhere); a single-expert group
// marks its expert, padding / unrouted rows mark nothing. Token choice (values = scores): the
// top-min(k, E_g) experts, ties to the smaller expert. Threshold (values = select): the experts
// with select > 0.5 (NaN is not).
__global__ void route_mark_kernel(const float* __restrict__ values, const int32_t* __restrict__ row_group, int64_t T,
                                  MoeLayout L, int32_t top_k, bool threshold, int32_t* __restrict__ row_slots) {
  const int64_t E = L.num_experts, W = L.max_group_experts;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < T;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int32_t* rs = row_slots + t * W;
    for (int64_t j = 0; j < W; ++j) rs[j] = -1;
    const int g = row_group[t];
    if (g < 0 || g >= L.num_groups) continue;
    const int Eg = L.experts[g];
    if (Eg == 1) {
      rs[0] = kCandidate;
      continue;
    }
    const float* vrow = values + t * E + L.begin[g];
    if (threshold) {
      for (int j = 0; j < Eg; ++j)
        if (vrow[j] > 0.5f) rs[j] = kCandidate;
      continue;
    }
    const int kk = top_k < Eg ? top_k : Eg;
    uint32_t prev_key = 0;
    int prev_j = -1;
    for (int r = 0; r < kk; ++r) {
      // best (largest key, then smallest j) among the experts ranked below the previous pick
      int best_j = -1;
      uint32_t best_key = 0;
      for (int j = 0; j < Eg; ++j) {
        const uint32_t key = score_key(vrow[j]);
        const bool below = prev_j < 0 || key < prev_key || (key == prev_key && j > prev_j);
        if (below && (best_j < 0 || key > best_key)) {
          best_j = j;
          best_key = key;
        }
      }
      rs[best_j] = kCandidate;
      prev_j = best_j;
      prev_key = best_key;
    }
  }
}

// Capacity of expert blockIdx.x into expert_offsets[e + 1].
__global__ void route_capacity_kernel(const int32_t* __restrict__ offsets, const int32_t* __restrict__ perm, MoeLayout L,
                                      RoutingParams p, const int32_t* __restrict__ row_slots,
                                      int32_t* __restrict__ expert_offsets) {
  __shared__ int32_t count;
  const int e = blockIdx.x;
  const int g = group_of_expert(L, e);
  const int Eg = L.experts[g];
  const int j = e - L.begin[g];
  const int64_t start = offsets[g], n = offsets[g + 1] - start;
  if (p.mode == RoutingMode::ExpertChoice || Eg == 1) {
    if (threadIdx.x == 0) expert_offsets[e + 1] = static_cast<int32_t>(expert_choice_capacity(n, Eg, p.capacity));
    return;
  }
  if (threadIdx.x == 0) count = 0;
  __syncthreads();
  const int64_t W = L.max_group_experts;
  int32_t mine = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
    mine += row_slots[static_cast<int64_t>(perm[start + i]) * W + j] == kCandidate;
  if (mine) atomicAdd(&count, mine);
  __syncthreads();
  if (threadIdx.x == 0) {
    const int64_t cap = p.mode == RoutingMode::Threshold ? count : token_choice_capacity(n, Eg, p.top_k, p.capacity);
    expert_offsets[e + 1] = static_cast<int32_t>(count < cap ? count : cap);
  }
}

// expert_offsets[1 .. E] hold capacities; turns them into the exclusive prefix (clamped to R).
__global__ void __launch_bounds__(kBlock) route_prefix_kernel(int32_t* expert_offsets, int64_t E, int64_t R, int32_t* err) {
  __shared__ uint32_t warp_sums[32];
  int64_t run = 0;
  for (int64_t c0 = 0; c0 < E; c0 += blockDim.x) {
    const int64_t e = c0 + threadIdx.x;
    const uint32_t k = e < E ? static_cast<uint32_t>(expert_offsets[e + 1]) : 0u;
    uint32_t total;
    const uint32_t excl = block_exclusive_scan(k, warp_sums, total);
    const int64_t incl = run + excl + k;
    if (e < E) {
      if (incl > R) atomicCAS(err, 0, static_cast<int32_t>(kMoeRouteOverflow));
      expert_offsets[e + 1] = static_cast<int32_t>(incl < R ? incl : R);
    }
    run += total;
  }
  if (threadIdx.x == 0) expert_offsets[0] = 0;
}

__global__ void route_tail_kernel(const int32_t* __restrict__ expert_offsets, int64_t E, int64_t R,
                                  int32_t* __restrict__ slot_row, float* __restrict__ slot_gate) {
  const int64_t s0 = expert_offsets[E];
  for (int64_t s = s0 + static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; s < R;
       s += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    slot_row[s] = -1;
    slot_gate[s] = 0.0f;
  }
}

// One block per expert: selects its rows (see the header comment).
// score_key never returns a value in [1, 0x007FFFFE] (those would be NaN bit patterns, and NaN
// maps to 0), so 1 marks "not a candidate" in the key cache.
constexpr uint32_t kNotCandidate = 1u;

__global__ void __launch_bounds__(kBlock, 1)
    route_select_kernel(const float* __restrict__ scores, const int32_t* __restrict__ offsets,
                        const int32_t* __restrict__ perm, MoeLayout L, RoutingMode mode,
                        const int32_t* __restrict__ expert_offsets, int32_t* __restrict__ slot_row,
                        float* __restrict__ slot_gate, int32_t* __restrict__ row_slots, int64_t cache_cap) {
  extern __shared__ uint32_t key_cache[];  // cache_cap entries: the candidates' keys in perm order
  __shared__ uint32_t hist[256];
  __shared__ uint32_t warp_sums[32];
  __shared__ uint32_t sh_prefix, sh_krem;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int e = blockIdx.x;
  const int g = group_of_expert(L, e);
  const int Eg = L.experts[g];
  const int64_t j = e - L.begin[g];
  const int64_t E = L.num_experts, W = L.max_group_experts;
  const int64_t start = offsets[g], n = offsets[g + 1] - start;
  const int64_t s0 = expert_offsets[e];
  const int64_t k = expert_offsets[e + 1] - s0;
  const bool marked = mode != RoutingMode::ExpertChoice;  // candidates are the rows marked kCandidate

  // Key of the i-th row of the group, or kNotCandidate when the row is not marked for e (token
  // choice, threshold). Cached in shared memory when the group fits (every pass but the first
  // then reads shared memory only).
  auto load_key = [&](int64_t i) -> uint32_t {
    const int64_t row = perm[start + i];
    if (marked && row_slots[row * W + j] != kCandidate) return kNotCandidate;
    return score_key(scores[row * E + e]);
  };
  const bool cached = n <= cache_cap;
  if (cached)
    for (int64_t i = tid; i < n; i += blockDim.x) key_cache[i] = load_key(i);
  __syncthreads();
  auto key_at = [&](int64_t i) -> uint32_t { return cached ? key_cache[i] : load_key(i); };

  uint32_t thr, eq_take;
  if (k <= 0) {
    thr = 0xFFFFFFFFu;  // no key exceeds it and no equal key is taken
    eq_take = 0;
  } else if (Eg == 1 || mode == RoutingMode::Threshold || (mode == RoutingMode::ExpertChoice && k >= n)) {
    thr = 0;  // take every candidate: all keys are >= 0 and k >= #candidates
    eq_take = static_cast<uint32_t>(k);
  } else {
    // Radix select of the k-th largest key among the candidates, 8 bits per pass from the top.
    uint32_t prefix = 0, krem = static_cast<uint32_t>(k);
    for (int pass = 0; pass < 4; ++pass) {
      const int shift = 24 - 8 * pass;
      const uint32_t hi_mask = pass == 0 ? 0u : (0xFFFFFFFFu << (32 - 8 * pass));
      for (int i = tid; i < 256; i += blockDim.x) hist[i] = 0;
      __syncthreads();
      for (int64_t c0 = 0; c0 < n; c0 += blockDim.x) {
        const int64_t i = c0 + tid;
        int digit = 256;  // none
        if (i < n) {
          const uint32_t key = key_at(i);
          if (key != kNotCandidate && (key & hi_mask) == prefix) digit = static_cast<int>((key >> shift) & 255u);
        }
        const uint32_t same = __match_any_sync(kFull, digit);
        if (digit < 256 && (same & lanemask_lt()) == 0) atomicAdd(&hist[digit], static_cast<uint32_t>(__popc(same)));
      }
      __syncthreads();
      if (warp == 0) {
        // lane l owns bins 255 - 8l - q, q = 0..7 (descending); find the bin holding the krem-th
        // largest key: (count above it) < krem <= (count above it) + (its count)
        uint32_t lane_sum = 0;
#pragma unroll
        for (int q = 0; q < 8; ++q) lane_sum += hist[255 - 8 * lane - q];
        uint32_t incl = lane_sum;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
          const uint32_t y = __shfl_up_sync(kFull, incl, o);
          if (lane >= o) incl += y;
        }
        const uint32_t excl = incl - lane_sum;
        if (excl < krem && krem <= incl) {
          uint32_t acc = excl;
          for (int q = 0; q < 8; ++q) {
            const int b = 255 - 8 * lane - q;
            const uint32_t c = hist[b];
            if (acc + c >= krem) {
              sh_prefix = prefix | (static_cast<uint32_t>(b) << shift);
              sh_krem = krem - acc;
              break;
            }
            acc += c;
          }
        }
      }
      __syncthreads();
      prefix = sh_prefix;
      krem = sh_krem;
    }
    thr = prefix;   // the k-th largest key
    eq_take = krem; // keys equal to it that are taken (the first ones in row order)
  }

  // Stable compaction in increasing row order: position = (# taken keys > thr before the row) +
  // min(# keys == thr before the row, eq_take). Counts are packed (above | equal << 16) per chunk.
  int64_t gt_run = 0, eq_run = 0;
  for (int64_t c0 = 0; c0 < n; c0 += blockDim.x) {
    const int64_t i = c0 + tid;
    int32_t row = -1;
    bool cand = false, gt = false, eq = false;
    if (i < n) {
      row = perm[start + i];
      const uint32_t key = key_at(i);
      cand = key != kNotCandidate;
      if (cand) {
        gt = key > thr;
        eq = key == thr;
      }
    }
    uint32_t total;
    const uint32_t excl = block_exclusive_scan(static_cast<uint32_t>(gt) | (static_cast<uint32_t>(eq) << 16), warp_sums, total);
    const int64_t gt_before = gt_run + (excl & 0xFFFFu), eq_before = eq_run + (excl >> 16);
    if (cand) {
      int32_t slot = -1;
      if (gt || (eq && eq_before < static_cast<int64_t>(eq_take))) {
        const int64_t pos = gt_before + (eq_before < static_cast<int64_t>(eq_take) ? eq_before : static_cast<int64_t>(eq_take));
        if (pos < k) {
          slot = static_cast<int32_t>(s0 + pos);
          slot_row[slot] = row;
          slot_gate[slot] = Eg == 1 ? 1.0f : scores[static_cast<int64_t>(row) * E + e];
        }
      }
      row_slots[static_cast<int64_t>(row) * W + j] = slot;
    }
    gt_run += total & 0xFFFFu;
    eq_run += total >> 16;
  }
}

// ---- statistics --------------------------------------------------------------------------
constexpr int kStatsThreads = 256;

__global__ void __launch_bounds__(kStatsThreads)
    routing_stats_kernel(const int32_t* __restrict__ row_group, const int32_t* __restrict__ offsets,
                         const int32_t* __restrict__ expert_offsets, const float* __restrict__ slot_gate,
                         const int32_t* __restrict__ row_slots, int64_t T, MoeLayout L, float* __restrict__ expert_stats,
                         float* __restrict__ group_stats) {
  __shared__ double part[kStatsThreads];
  __shared__ int32_t taken[3];
  const int tid = threadIdx.x;
  const int E = L.num_experts;
  if (static_cast<int>(blockIdx.x) < E) {
    const int e = blockIdx.x;
    const int64_t a = expert_offsets[e], b = expert_offsets[e + 1];
    double sum = 0.0;  // in double like the CPU, so the rounded mean agrees
    for (int64_t s = a + tid; s < b; s += kStatsThreads) sum += static_cast<double>(slot_gate[s]);
    part[tid] = sum;
    __syncthreads();
    for (int w = kStatsThreads / 2; w > 0; w >>= 1) {  // fixed tree: deterministic
      if (tid < w) part[tid] += part[tid + w];
      __syncthreads();
    }
    if (tid == 0) {
      const int64_t cnt = b - a;
      expert_stats[2 * e] = static_cast<float>(cnt);
      expert_stats[2 * e + 1] = cnt > 0 ? static_cast<float>(part[0] / static_cast<double>(cnt)) : 0.0f;
    }
    return;
  }
  const int g = blockIdx.x - E;
  const int64_t W = L.max_group_experts;
  if (tid < 3) taken[tid] = 0;
  __syncthreads();
  int32_t c[3] = {0, 0, 0};
  for (int64_t t = tid; t < T; t += kStatsThreads) {
    if (row_group[t] != g) continue;
    int m = 0;
    for (int64_t j = 0; j < W; ++j) m += row_slots[t * W + j] >= 0;
    ++c[m < 2 ? m : 2];
  }
  for (int q = 0; q < 3; ++q)
    if (c[q]) atomicAdd(&taken[q], c[q]);
  __syncthreads();
  if (tid == 0) {
    const int32_t n = offsets[g + 1] - offsets[g];
    group_stats[4 * g] = static_cast<float>(n);
    for (int q = 0; q < 3; ++q)
      group_stats[4 * g + 1 + q] = n > 0 ? static_cast<float>(static_cast<double>(taken[q]) / static_cast<double>(n)) : 0.0f;
  }
}

unsigned warp_rows_grid(int64_t rows) {  // one warp per row, 8 warps per block
  int64_t b = (rows + 7) / 8;
  if (b < 1) b = 1;
  return static_cast<unsigned>(b > 8192 ? 8192 : b);
}

}  // namespace

void moe_partition(const LaunchCtx& ctx, const int32_t* modality, int64_t T, const MoeLayout& L, int32_t* row_group,
                   int32_t* counts, int32_t* offsets, int32_t* perm) {
  if (L.num_groups < 1 || L.num_groups > kMaxMoeGroups) fail("ERR_ARG", "cuda moe_partition: bad layout");
  if (T > INT32_MAX) fail("ERR_ARG", "cuda moe_partition: T = ", T, " exceeds int32");
  partition_kernel<<<1, kBlock, 0, as_stream(ctx.stream)>>>(modality, T, L, row_group, counts, offsets, perm,
                                                            ctx.err);
  check_launch("moe_partition");
}

void moe_router_scores(const LaunchCtx& ctx, const float* logits, const int32_t* row_group, int64_t T,
                       const MoeLayout& L, RouterFn fn, bool gumbel, uint64_t seed, uint64_t offset, float* scores) {
  if (T <= 0 || L.num_experts <= 0) return;
  router_scores_kernel<<<warp_rows_grid(T), 256, 0, as_stream(ctx.stream)>>>(logits, row_group, T, L, fn, gumbel, seed, offset, scores);
  check_launch("moe_router_scores");
}

void moe_router_scores_backward(const LaunchCtx& ctx, const float* scores, const float* dscores,
                                const int32_t* row_group, int64_t T, const MoeLayout& L, RouterFn fn, float* dlogits) {
  if (T <= 0 || L.num_experts <= 0) return;
  router_scores_backward_kernel<<<warp_rows_grid(T), 256, 0, as_stream(ctx.stream)>>>(scores, dscores, row_group, T, L, fn, dlogits);
  check_launch("moe_router_scores_backward");
}

void moe_route(const LaunchCtx& ctx, const float* scores, const int32_t* row_group, const int32_t* offsets,
               const int32_t* perm, int64_t T, const MoeLayout& L, const RoutingParams& p, int64_t R,
               int32_t* expert_offsets, int32_t* slot_row, float* slot_gate, int32_t* row_slots, const float* select) {
  const int64_t E = L.num_experts, W = L.max_group_experts;
  if (E < 1 || E > kMaxMoeExperts) fail("ERR_ARG", "cuda moe_route: bad layout");
  if (R > INT32_MAX || T > INT32_MAX) fail("ERR_ARG", "cuda moe_route: sizes exceed int32");
  if (p.mode == RoutingMode::Threshold && select == nullptr) fail("ERR_ARG", "cuda moe_route: threshold mode needs select");
  cudaStream_t s = as_stream(ctx.stream);
  if (T * W > 0) {
    if (p.mode == RoutingMode::TokenChoice)
      route_mark_kernel<<<grid_for(T), kThreads, 0, s>>>(scores, row_group, T, L, p.top_k, false, row_slots);
    else if (p.mode == RoutingMode::Threshold)
      route_mark_kernel<<<grid_for(T), kThreads, 0, s>>>(select, row_group, T, L, 0, true, row_slots);
    else
      fill_i32_kernel<<<grid_for(T * W), kThreads, 0, s>>>(row_slots, T * W, -1);
    check_launch("moe_route (row_slots)");
  }
  route_capacity_kernel<<<static_cast<unsigned>(E), kThreads, 0, s>>>(offsets, perm, L, p, row_slots, expert_offsets);
  check_launch("moe_route (capacities)");
  route_prefix_kernel<<<1, kBlock, 0, s>>>(expert_offsets, E, R, ctx.err);
  check_launch("moe_route (offsets)");
  if (R > 0) {
    route_tail_kernel<<<grid_for(R), kThreads, 0, s>>>(expert_offsets, E, R, slot_row, slot_gate);
    check_launch("moe_route (tail)");
  }
  // Key cache: up to T keys in dynamic shared memory, as much as the device allows beyond the
  // kernel's static shared memory (a group larger than the cache reads its keys from global
  // memory). The > 48 KiB opt-in counts static + dynamic bytes (allow_dynamic_smem): sizing it
  // from the dynamic bytes alone left T in [11,997, 12,288] unable to launch.
  const void* select_fn = reinterpret_cast<const void*>(&route_select_kernel);
  const int64_t avail = static_cast<int64_t>(max_dynamic_smem(select_fn) / sizeof(uint32_t));
  const int64_t cache_cap = T < avail ? T : avail;
  const size_t smem = static_cast<size_t>(cache_cap) * sizeof(uint32_t);
  allow_dynamic_smem(select_fn, smem, "moe_route (select)");
  route_select_kernel<<<static_cast<unsigned>(E), kBlock, smem, s>>>(scores, offsets, perm, L, p.mode, expert_offsets,
                                                                     slot_row, slot_gate, row_slots, cache_cap);
  check_launch("moe_route (select)");
}

void moe_routing_stats(const LaunchCtx& ctx, const int32_t* row_group, const int32_t* offsets,
                       const int32_t* expert_offsets, const float* slot_gate, const int32_t* row_slots, int64_t T,
                       const MoeLayout& L, float* expert_stats, float* group_stats) {
  const unsigned blocks = static_cast<unsigned>(L.num_experts + L.num_groups);
  if (blocks == 0) return;
  routing_stats_kernel<<<blocks, kStatsThreads, 0, as_stream(ctx.stream)>>>(row_group, offsets, expert_offsets, slot_gate,
                                                                       row_slots, T, L, expert_stats, group_stats);
  check_launch("moe_routing_stats");
}

}  // namespace moma::cuda
