// Row movement and gate gradient of the MoE layer: moe_gather_rows (dispatch), moe_combine and
// moe_gate_grad (semantics: csrc/cpu/kernels_moe.h).
//
// gather_rows: y[s, :] = scale[s] * x[slot_row[s], :]. One block per slot row (grid-stride over
//   the R rows), threads over the columns; 16-byte vectors (4 f32 / 8 bf16) when d and the
//   pointers allow, else elements. Bytes R * d * 2 * elem (+ 8 R): memory bound. A slot row outside
//   [-1, T) records kMoeGatherRange and writes zeros.
// combine: y[t, :] = sum_j weight[s_j] * src[s_j, :] over s_j = row_slots[t, j] >= 0 in increasing
//   j, in float32 with __fmul_rn / __fadd_rn (one rounding per multiply and per add, no FMA
//   contraction: bitwise equal to the CPU's acc = acc + w * v starting from 0.0f). One block per
//   output row, threads over columns (vectorised like gather). Bytes (rows taken + T) * d * elem:
//   memory bound. A slot outside [-1, R) records kMoeCombineRange and is skipped.
// gate_grad: zero dscores [T, E], then half a warp per slot s < expert_offsets[E]: the expert is
//   found by binary search in expert_offsets, and for routed experts (E_g > 1) the half-warp
//   writes dscores[slot_row[s], e] = sum_i out[s, i] dy[t, i] with 16 interleaved float partial
//   sums added in lane order (the CPU's order: deterministic and bitwise equal to it).
//   Bytes 2 * rows * d * elem + 4 T E: memory bound.
#include <cuda_runtime.h>

#include <cstdint>

#include "common.cuh"
#include "kernels.h"
#include "kernels_moe.h"

namespace moma::cuda {
using namespace detail;

namespace {


// ---- gather ------------------------------------------------------------------------------
template <typename T, bool VEC>
__global__ void gather_rows_kernel(const T* __restrict__ x, const int32_t* __restrict__ slot_row,
                                   const float* __restrict__ scale, int64_t T_rows, int64_t R, int64_t d,
                                   T* __restrict__ y, int32_t* err) {
  using V = Vec16<T>;
  for (int64_t s = blockIdx.x; s < R; s += gridDim.x) {
    const int32_t t = slot_row[s];
    const bool bad = t < -1 || t >= T_rows;
    if (bad && threadIdx.x == 0) atomicCAS(err, 0, static_cast<int32_t>(kMoeGatherRange));
    const bool zero = t < 0 || bad;
    const float sc = scale ? scale[s] : 1.0f;
    T* yr = y + s * d;
    const T* xr = x + (zero ? 0 : static_cast<int64_t>(t)) * d;
    if constexpr (VEC) {
      const int64_t nv = d / V::N;
      for (int64_t i = threadIdx.x; i < nv; i += blockDim.x) {
        float f[V::N];
        if (zero) {
#pragma unroll
          for (int k = 0; k < V::N; ++k) f[k] = 0.0f;
        } else {
          V::unpack(reinterpret_cast<const typename V::U*>(xr)[i], f);
          if (scale) {
#pragma unroll
            for (int k = 0; k < V::N; ++k) f[k] = __fmul_rn(sc, f[k]);
          }
        }
        reinterpret_cast<typename V::U*>(yr)[i] = V::pack(f);
      }
    } else {
      for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
        float v = zero ? 0.0f : to_float(xr[i]);
        if (scale && !zero) v = __fmul_rn(sc, v);
        yr[i] = from_float<T>(v);
      }
    }
  }
}

// ---- combine -----------------------------------------------------------------------------
template <typename T, bool VEC>
__global__ void combine_kernel(const T* __restrict__ src, const int32_t* __restrict__ row_slots,
                               const float* __restrict__ weight, int64_t T_rows, int64_t W, int64_t R, int64_t d,
                               T* __restrict__ y, int32_t* err) {
  using V = Vec16<T>;
  for (int64_t t = blockIdx.x; t < T_rows; t += gridDim.x) {
    const int32_t* rs = row_slots + t * W;
    T* yr = y + t * d;
    if constexpr (VEC) {
      const int64_t nv = d / V::N;
      for (int64_t i = threadIdx.x; i < nv; i += blockDim.x) {
        float acc[V::N];
#pragma unroll
        for (int k = 0; k < V::N; ++k) acc[k] = 0.0f;
        for (int64_t j = 0; j < W; ++j) {
          const int32_t s = rs[j];
          if (s < 0 || s >= R) continue;  // -1: no slot; out of range: recorded below
          const float w = weight ? weight[s] : 1.0f;
          float f[V::N];
          V::unpack(reinterpret_cast<const typename V::U*>(src + s * d)[i], f);
#pragma unroll
          for (int k = 0; k < V::N; ++k) acc[k] = __fadd_rn(acc[k], __fmul_rn(w, f[k]));
        }
        reinterpret_cast<typename V::U*>(yr)[i] = V::pack(acc);
      }
    } else {
      for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
        float acc = 0.0f;
        for (int64_t j = 0; j < W; ++j) {
          const int32_t s = rs[j];
          if (s < 0 || s >= R) continue;
          const float w = weight ? weight[s] : 1.0f;
          acc = __fadd_rn(acc, __fmul_rn(w, to_float(src[s * d + i])));
        }
        yr[i] = from_float<T>(acc);
      }
    }
  }
}

__global__ void check_slots_kernel(const int32_t* row_slots, int64_t n, int64_t R, int32_t* err) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int32_t s = row_slots[i];
    if (s < -1 || s >= R) atomicCAS(err, 0, static_cast<int32_t>(kMoeCombineRange));
  }
}

// ---- gate gradient -----------------------------------------------------------------------
__global__ void zero_f32_kernel(float* y, int64_t n) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    y[i] = 0.0f;
}

// Half a warp per slot (lanes 16h .. 16h+15 take slot 2 w + h of warp w): lane l of the half sums
// out[s, i] dy[t, i] over i = l (mod 16) in increasing i, then lane 0 adds the 16 partial sums in
// lane order. This is the CPU's fixed order (16 interleaved partial sums), so the results match
// bitwise; every lane runs the same number of iterations so the shuffles see the full warp.
template <typename T>
__global__ void gate_grad_kernel(const T* __restrict__ out, const T* __restrict__ dy, const int32_t* __restrict__ slot_row,
                                 const int32_t* __restrict__ expert_offsets, int64_t T_rows, int64_t R, int64_t d,
                                 MoeLayout L, float* __restrict__ dscores) {
  const int lane = threadIdx.x & 31, half = lane >> 4, l = lane & 15;
  const int64_t warps_per_block = blockDim.x >> 5;
  const int64_t E = L.num_experts;
  const int64_t total = expert_offsets[E] < R ? expert_offsets[E] : R;
  const int64_t pairs = (total + 1) / 2;
  for (int64_t pr = static_cast<int64_t>(blockIdx.x) * warps_per_block + (threadIdx.x >> 5); pr < pairs;
       pr += static_cast<int64_t>(gridDim.x) * warps_per_block) {
    const int64_t s = 2 * pr + half;
    int32_t t = -1;
    int64_t e = 0;
    bool valid = false;
    if (s < total) {
      t = slot_row[s];
      if (t >= 0 && t < T_rows) {
        // expert of slot s: the largest e with expert_offsets[e] <= s (offsets are monotone)
        int64_t lo = 0, hi = E;
        while (hi - lo > 1) {
          const int64_t mid = (lo + hi) >> 1;
          if (expert_offsets[mid] <= s) lo = mid; else hi = mid;
        }
        e = lo;
        int g = 0;
        while (g + 1 < L.num_groups && L.begin[g + 1] <= e) ++g;
        valid = L.experts[g] > 1;  // single-expert groups have no router: no gate gradient
      }
    }
    float acc = 0.0f;
    if (valid) {
      const T* o = out + s * d;
      const T* dv = dy + static_cast<int64_t>(t) * d;
      for (int64_t i = l; i < d; i += 16) acc = __fadd_rn(acc, __fmul_rn(to_float(o[i]), to_float(dv[i])));
    }
    float sum = 0.0f;
#pragma unroll
    for (int q = 0; q < 16; ++q) sum = __fadd_rn(sum, __shfl_sync(0xFFFFFFFFu, acc, q, 16));
    if (valid && l == 0) dscores[static_cast<int64_t>(t) * E + e] = sum;
  }
}

unsigned rows_grid(int64_t rows) {
  int64_t b = rows < 1 ? 1 : rows;
  return static_cast<unsigned>(b > 65535 ? 65535 : b);
}
int row_threads(int64_t units) { return units >= 256 ? 256 : (units > 128 ? 256 : (units > 64 ? 128 : 64)); }

}  // namespace

void moe_gather_rows(const LaunchCtx& ctx, DType dt, const void* x, const int32_t* slot_row, const float* scale,
                     int64_t T, int64_t R, int64_t d, void* y) {
  if (R <= 0) return;
  cudaStream_t s = as_stream(ctx.stream);
  auto go = [&](auto tag) {
    using E = decltype(tag);
    constexpr int N = Vec16<E>::N;
    const bool vec = d % N == 0 && aligned16(x) && aligned16(y);
    if (vec)
      gather_rows_kernel<E, true><<<rows_grid(R), row_threads(d / N), 0, s>>>(static_cast<const E*>(x), slot_row, scale, T, R, d, static_cast<E*>(y), ctx.err);
    else
      gather_rows_kernel<E, false><<<rows_grid(R), row_threads(d), 0, s>>>(static_cast<const E*>(x), slot_row, scale, T, R, d, static_cast<E*>(y), ctx.err);
  };
  switch (dt) {
    case DType::F32: go(float{}); break;
    case DType::BF16: go(bf16_t{}); break;
    default: bad_dtype("moe_gather_rows", dt);
  }
  check_launch("moe_gather_rows");
}

void moe_combine(const LaunchCtx& ctx, DType dt, const void* src, const int32_t* row_slots, const float* weight,
                 int64_t T, int64_t W, int64_t R, int64_t d, void* y) {
  if (dt != DType::F32 && dt != DType::BF16) bad_dtype("moe_combine", dt);
  cudaStream_t s = as_stream(ctx.stream);
  if (T * W > 0) {
    check_slots_kernel<<<grid_for(T * W), kThreads, 0, s>>>(row_slots, T * W, R, ctx.err);
    check_launch("moe_combine (slot check)");
  }
  if (T <= 0 || d <= 0) return;
  auto go = [&](auto tag) {
    using E = decltype(tag);
    constexpr int N = Vec16<E>::N;
    const bool vec = d % N == 0 && aligned16(src) && aligned16(y);
    if (vec)
      combine_kernel<E, true><<<rows_grid(T), row_threads(d / N), 0, s>>>(static_cast<const E*>(src), row_slots, weight, T, W, R, d, static_cast<E*>(y), ctx.err);
    else
      combine_kernel<E, false><<<rows_grid(T), row_threads(d), 0, s>>>(static_cast<const E*>(src), row_slots, weight, T, W, R, d, static_cast<E*>(y), ctx.err);
  };
  if (dt == DType::F32) go(float{});
  else go(bf16_t{});
  check_launch("moe_combine");
}

void moe_gate_grad(const LaunchCtx& ctx, DType dt, const void* out, const void* dy, const int32_t* slot_row,
                   const int32_t* expert_offsets, int64_t T, int64_t R, int64_t d, const MoeLayout& L, float* dscores) {
  if (dt != DType::F32 && dt != DType::BF16) bad_dtype("moe_gate_grad", dt);
  cudaStream_t s = as_stream(ctx.stream);
  const int64_t n = T * L.num_experts;
  if (n > 0) {
    zero_f32_kernel<<<grid_for(n), kThreads, 0, s>>>(dscores, n);
    check_launch("moe_gate_grad (zero)");
  }
  if (R <= 0 || T <= 0) return;
  const unsigned blocks = grid_for(R * 16);  // half a warp per slot, grid-stride
  if (dt == DType::F32)
    gate_grad_kernel<float><<<blocks, kThreads, 0, s>>>(static_cast<const float*>(out), static_cast<const float*>(dy), slot_row, expert_offsets, T, R, d, L, dscores);
  else
    gate_grad_kernel<bf16_t><<<blocks, kThreads, 0, s>>>(static_cast<const bf16_t*>(out), static_cast<const bf16_t*>(dy), slot_row, expert_offsets, T, R, d, L, dscores);
  check_launch("moe_gate_grad");
}

}  // namespace moma::cuda
