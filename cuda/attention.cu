// Causal attention inside contiguous segments (packed documents, MoD row subsets) and its
// backward (semantics: csrc/cpu/kernels_nn.h; CPU twin csrc/cpu/attention.cc). Row t attends the
// rows s in [seg_start[t], t]; q, k, v, o, dout [N, H, D] float32 or bf16.
// Dispatch: bf16 with D 64 or 128 and 16-byte aligned tensors run the tensor-core kernels of
// flash_attention.cu (FlashAttention-2 style, mma.sync bf16); everything else runs the SIMT
// kernels below (widened to float32 in shared memory; all math float32, no tensor cores; bf16
// rounded once on store). Both write the same lse (natural log), so either backward can follow
// either forward.
//
// Tiled kernels (D <= 128; the head dim is padded to DC = 32, 64 or 128 with zeros in shared
// memory; tiles are row-major [rows][DC + 4] floats, so a warp's 16-byte reads of 8 consecutive
// rows or 8 consecutive float4 columns hit distinct banks):
//  * forward: a block (128 threads) per (tile of BQ = 64 query rows, head), blocks of the last
//    tiles first (they have the most keys). The keys of the tile are [min seg_start, last row];
//    they stream through shared memory in tiles of BK = 32 with an online softmax in float32:
//    thread (rg, cg) = (tid / 8, tid % 8) owns query rows rg + 16 r (r < 4) and keys cg + 8 c
//    (c < 4) of the score tile and output columns 4 (cg + 8 m) .. + 3 (m < DC / 32); a row's 8
//    threads are 8 consecutive lanes (max / sum by xor shuffles). Masked scores are -inf.
//    o = acc / l, lse = m + log l. The N x N score matrix is never stored.
//  * backward: delta[t, h] = dout . o (one warp per row, scratch buffer), then two kernels with
//    64-thread blocks and 32 x 32 tiles, each recomputing p = exp(scale q.k - lse) (0 outside the
//    segment window) and ds = p (dout . v - delta):
//      dq: a block per (query tile, head) streams the key tiles: dq += ds k, dq *= scale;
//      dk, dv: a block per (key tile, head) streams the query tiles from the key tile on, while
//        the first query of the tile has seg_start <= the last key (seg_start is non-decreasing):
//        dv += p dout, dk += ds q, dk *= scale.
//    Every output row is written by one thread group with a fixed summation order: no atomics,
//    deterministic (the order differs from the CPU's, so results agree to float rounding).
// Generic kernels (D > 128, any D): one warp per (row, head), lanes over d; scores by warp
// reduction; the forward makes an online (max, sum) pass then accumulates o in chunks of 256
// columns (8 per lane), recomputing the scores per chunk; the backward likewise per row of dq
// and per key row of dk / dv. Slow but simple.
// seg_start is validated by a separate kernel (kAttentionSegment: seg_start[t] neither t nor
// seg_start[t - 1]); the attention kernels clamp each start into [0, t] so that bad data never
// reads out of bounds (results are then unspecified, the error is reported).
// Cost: forward 4 D sum_t L_t FLOPs (L_t keys of row t), backward 2.5x that (S, dP, dQ, dK, dV);
// bytes ~ 4 N H D elem: compute bound (float32 FMA rate; the tensor-core path is ~10x faster
// for bf16 inputs). Segments of 4096, H 16, D 64, N 32768: 275 GFLOP forward.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "common.cuh"
#include "flash_attention.cuh"
#include "kernels.h"
#include "kernels_nn.h"
#include "runtime.h"
#include "scratch.cuh"

namespace moma::cuda {
using namespace detail;

namespace {

constexpr int kBK = 32;       // keys per tile (8 column groups x 4)
constexpr int kFwdBQ = 64;    // forward query rows per block (16 row groups x 4)
constexpr int kBwdB = 32;     // backward tile (8 row groups x 4)
constexpr int kPP = kBK + 1;  // row stride of the p / ds tiles

// Clamped segment start of row t (valid data: unchanged).
__device__ __forceinline__ int64_t seg_of(const int32_t* seg_start, int64_t t) {
  const int64_t s = seg_start[t];
  return s < 0 ? 0 : (s > t ? t : s);
}

__global__ void check_segments_kernel(const int32_t* __restrict__ seg, int64_t N, int32_t* err) {
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < N;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int32_t s = seg[t];
    const bool ok = s == t || (t > 0 && s == seg[t - 1]);
    if (!ok) atomicCAS(err, 0, static_cast<int32_t>(kAttentionSegment));
  }
}

// dst[r][d] = src[(row0 + r) H + h][d] for r < rows, d < D (zero for rows outside [0, N) and
// columns D..DC-1). Row stride of dst: DC + 4.
template <typename T, int DC>
__device__ __forceinline__ void load_tile(float* dst, const T* __restrict__ src, int64_t row0, int rows, int64_t N,
                                          int64_t H, int64_t h, int64_t D) {
  constexpr int LD = DC + 4;
  for (int e = threadIdx.x; e < rows * DC; e += blockDim.x) {
    const int r = e / DC, d = e % DC;
    const int64_t t = row0 + r;
    float v = 0.0f;
    if (d < D && t >= 0 && t < N) v = to_float(src[(t * H + h) * D + d]);
    dst[r * LD + d] = v;
  }
}

// s[r][c] += A[a_r] . B[b_c] over the first nd4 float4 columns, a_r = a0 + as * r, b_c = b0 + bs * c.
template <int DC>
__device__ __forceinline__ void dot_4x4(const float* A, int a0, int as, const float* B, int b0, int bs, int nd4,
                                        float (&s)[4][4]) {
  constexpr int LD = DC + 4;
  for (int d4 = 0; d4 < nd4; ++d4) {
    float4 a[4], b[4];
#pragma unroll
    for (int r = 0; r < 4; ++r) a[r] = reinterpret_cast<const float4*>(A + (a0 + as * r) * LD)[d4];
#pragma unroll
    for (int c = 0; c < 4; ++c) b[c] = reinterpret_cast<const float4*>(B + (b0 + bs * c) * LD)[d4];
#pragma unroll
    for (int r = 0; r < 4; ++r)
#pragma unroll
      for (int c = 0; c < 4; ++c) s[r][c] += a[r].x * b[c].x + a[r].y * b[c].y + a[r].z * b[c].z + a[r].w * b[c].w;
  }
}

__device__ __forceinline__ void fma4(float4& acc, float w, const float4& v) {
  acc.x += w * v.x;
  acc.y += w * v.y;
  acc.z += w * v.z;
  acc.w += w * v.w;
}

// Writes the 4 x (DC/32) float4 accumulators (times mul) of rows row_of(r) to out[(t H + h) D + col].
template <typename T, int DC, typename RowOf>
__device__ __forceinline__ void store_rows(T* __restrict__ out, const float4 (&acc)[4][DC / 32], const float (&mul)[4],
                                           RowOf row_of, int cg, int64_t N, int64_t H, int64_t h, int64_t D) {
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    const int64_t t = row_of(r);
    if (t >= N) continue;
    T* o = out + (t * H + h) * D;
#pragma unroll
    for (int m = 0; m < DC / 32; ++m) {
      const int col = 4 * (cg + 8 * m);
      const float v[4] = {acc[r][m].x, acc[r][m].y, acc[r][m].z, acc[r][m].w};
#pragma unroll
      for (int e = 0; e < 4; ++e)
        if (col + e < D) o[col + e] = from_float<T>(v[e] * mul[r]);
    }
  }
}

template <int DC>
constexpr size_t fwd_smem() {
  return sizeof(float) * ((kFwdBQ + 2 * kBK) * (DC + 4) + kFwdBQ * kPP) + sizeof(int) * kFwdBQ;
}
template <int DC>
constexpr size_t dq_smem() {
  return sizeof(float) * (4 * kBwdB * (DC + 4) + kBwdB * kPP) + sizeof(int) * kBwdB;
}
template <int DC>
constexpr size_t dkdv_smem() {
  return sizeof(float) * (4 * kBwdB * (DC + 4) + 2 * kBwdB * kPP + 2 * kBwdB) + sizeof(int) * kBwdB;
}

// ---- forward ---------------------------------------------------------------------------------
template <typename T, int DC>
__global__ void __launch_bounds__(128)
    attn_fwd_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                    const int32_t* __restrict__ seg_start, int64_t N, int64_t H, int64_t D, float scale,
                    T* __restrict__ o, float* __restrict__ lse) {
  constexpr int LD = DC + 4, MC = DC / 32;
  extern __shared__ float4 smem4[];
  float* sQ = reinterpret_cast<float*>(smem4);
  float* sK = sQ + kFwdBQ * LD;
  float* sV = sK + kBK * LD;
  float* sP = sV + kBK * LD;
  int* sSeg = reinterpret_cast<int*>(sP + kFwdBQ * kPP);

  const int tid = threadIdx.x, rg = tid >> 3, cg = tid & 7;
  const int64_t h = blockIdx.y;
  const int64_t q0 = static_cast<int64_t>(gridDim.x - 1 - blockIdx.x) * kFwdBQ;
  const int64_t qend = q0 + kFwdBQ < N ? q0 + kFwdBQ : N;
  const int nd4 = static_cast<int>((D + 3) / 4);

  load_tile<T, DC>(sQ, q, q0, kFwdBQ, N, H, h, D);
  if (tid < kFwdBQ) sSeg[tid] = q0 + tid < N ? static_cast<int>(seg_of(seg_start, q0 + tid)) : INT32_MAX;
  __syncthreads();
  int kmin = INT32_MAX;
  for (int i = 0; i < kFwdBQ; ++i) kmin = min(kmin, sSeg[i]);

  int64_t trow[4];
  int sg[4];
  float mrow[4], lrow[4];
  float4 acc[4][MC];
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    trow[r] = q0 + rg + 16 * r;
    sg[r] = sSeg[rg + 16 * r];
    mrow[r] = -INFINITY;
    lrow[r] = 0.0f;
#pragma unroll
    for (int m = 0; m < MC; ++m) acc[r][m] = make_float4(0.f, 0.f, 0.f, 0.f);
  }

  for (int64_t k0 = kmin; k0 < qend; k0 += kBK) {
    __syncthreads();  // previous tile's sK / sV / sP readers are done
    load_tile<T, DC>(sK, k, k0, kBK, N, H, h, D);
    load_tile<T, DC>(sV, v, k0, kBK, N, H, h, D);
    __syncthreads();
    float s[4][4] = {};
    dot_4x4<DC>(sQ, rg, 16, sK, cg, 8, nd4, s);
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      float mx = -INFINITY;
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int64_t j = k0 + cg + 8 * c;
        const bool ok = trow[r] < N && j >= sg[r] && j <= trow[r];
        s[r][c] = ok ? scale * s[r][c] : -INFINITY;
        mx = fmaxf(mx, s[r][c]);
      }
#pragma unroll
      for (int off = 1; off < 8; off <<= 1) mx = fmaxf(mx, __shfl_xor_sync(0xFFFFFFFFu, mx, off));
      const float mnew = fmaxf(mrow[r], mx);
      float alpha = 1.0f, sum = 0.0f;
      if (mnew != -INFINITY) {
        alpha = mrow[r] == -INFINITY ? 0.0f : expf(mrow[r] - mnew);
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          s[r][c] = s[r][c] == -INFINITY ? 0.0f : expf(s[r][c] - mnew);
          sum += s[r][c];
        }
      } else {
#pragma unroll
        for (int c = 0; c < 4; ++c) s[r][c] = 0.0f;
      }
#pragma unroll
      for (int off = 1; off < 8; off <<= 1) sum += __shfl_xor_sync(0xFFFFFFFFu, sum, off);
      mrow[r] = mnew;
      lrow[r] = lrow[r] * alpha + sum;
#pragma unroll
      for (int m = 0; m < MC; ++m) {
        acc[r][m].x *= alpha;
        acc[r][m].y *= alpha;
        acc[r][m].z *= alpha;
        acc[r][m].w *= alpha;
      }
#pragma unroll
      for (int c = 0; c < 4; ++c) sP[(rg + 16 * r) * kPP + cg + 8 * c] = s[r][c];
    }
    __syncthreads();
    for (int j = 0; j < kBK; ++j) {
      float p[4];
#pragma unroll
      for (int r = 0; r < 4; ++r) p[r] = sP[(rg + 16 * r) * kPP + j];
#pragma unroll
      for (int m = 0; m < MC; ++m) {
        const float4 vv = reinterpret_cast<const float4*>(sV + j * LD)[cg + 8 * m];
#pragma unroll
        for (int r = 0; r < 4; ++r) fma4(acc[r][m], p[r], vv);
      }
    }
  }

  float inv[4];
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    inv[r] = 1.0f / lrow[r];
    if (cg == 0 && trow[r] < N)
      lse[trow[r] * H + h] = static_cast<float>(static_cast<double>(mrow[r]) + log(static_cast<double>(lrow[r])));
  }
  store_rows<T, DC>(o, acc, inv, [&](int r) { return trow[r]; }, cg, N, H, h, D);
}

// ---- backward ----------------------------------------------------------------------------------
// delta[t, h] = dout[t, h] . o[t, h]: one warp per (t, h).
template <typename T>
__global__ void attn_delta_kernel(const T* __restrict__ o, const T* __restrict__ dout, int64_t rows, int64_t D,
                                  float* __restrict__ delta) {
  const int lane = threadIdx.x & 31;
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int64_t nwarps = (static_cast<int64_t>(gridDim.x) * blockDim.x) >> 5;
  for (int64_t r = warp; r < rows; r += nwarps) {
    float s = 0.0f;
    for (int64_t d = lane; d < D; d += 32) s += to_float(dout[r * D + d]) * to_float(o[r * D + d]);
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xFFFFFFFFu, s, off);
    if (lane == 0) delta[r] = s;
  }
}

template <typename T, int DC>
__global__ void __launch_bounds__(64)
    attn_dq_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                   const float* __restrict__ lse, const float* __restrict__ delta, const T* __restrict__ dout,
                   const int32_t* __restrict__ seg_start, int64_t N, int64_t H, int64_t D, float scale,
                   T* __restrict__ dq) {
  constexpr int LD = DC + 4, MC = DC / 32, B = kBwdB;
  extern __shared__ float4 smem4[];
  float* sQ = reinterpret_cast<float*>(smem4);
  float* sDO = sQ + B * LD;
  float* sK = sDO + B * LD;
  float* sV = sK + B * LD;
  float* sDS = sV + B * LD;
  int* sSeg = reinterpret_cast<int*>(sDS + B * kPP);

  const int tid = threadIdx.x, rg = tid >> 3, cg = tid & 7;
  const int64_t h = blockIdx.y;
  const int64_t q0 = static_cast<int64_t>(gridDim.x - 1 - blockIdx.x) * B;
  const int64_t qend = q0 + B < N ? q0 + B : N;
  const int nd4 = static_cast<int>((D + 3) / 4);

  load_tile<T, DC>(sQ, q, q0, B, N, H, h, D);
  load_tile<T, DC>(sDO, dout, q0, B, N, H, h, D);
  if (tid < B) sSeg[tid] = q0 + tid < N ? static_cast<int>(seg_of(seg_start, q0 + tid)) : INT32_MAX;
  __syncthreads();
  int kmin = INT32_MAX;
  for (int i = 0; i < B; ++i) kmin = min(kmin, sSeg[i]);

  int64_t trow[4];
  int sg[4];
  float lrow[4], drow[4];
  float4 acc[4][MC];
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    trow[r] = q0 + rg + 8 * r;
    sg[r] = sSeg[rg + 8 * r];
    const bool in = trow[r] < N;
    lrow[r] = in ? lse[trow[r] * H + h] : 0.0f;
    drow[r] = in ? delta[trow[r] * H + h] : 0.0f;
#pragma unroll
    for (int m = 0; m < MC; ++m) acc[r][m] = make_float4(0.f, 0.f, 0.f, 0.f);
  }

  for (int64_t k0 = kmin; k0 < qend; k0 += kBK) {
    __syncthreads();
    load_tile<T, DC>(sK, k, k0, kBK, N, H, h, D);
    load_tile<T, DC>(sV, v, k0, kBK, N, H, h, D);
    __syncthreads();
    float s[4][4] = {}, dp[4][4] = {};
    dot_4x4<DC>(sQ, rg, 8, sK, cg, 8, nd4, s);
    dot_4x4<DC>(sDO, rg, 8, sV, cg, 8, nd4, dp);
#pragma unroll
    for (int r = 0; r < 4; ++r)
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int64_t j = k0 + cg + 8 * c;
        const bool ok = trow[r] < N && j >= sg[r] && j <= trow[r];
        const float p = ok ? expf(scale * s[r][c] - lrow[r]) : 0.0f;
        sDS[(rg + 8 * r) * kPP + cg + 8 * c] = p * (dp[r][c] - drow[r]);
      }
    __syncthreads();
    for (int j = 0; j < kBK; ++j) {
      float w[4];
#pragma unroll
      for (int r = 0; r < 4; ++r) w[r] = sDS[(rg + 8 * r) * kPP + j];
#pragma unroll
      for (int m = 0; m < MC; ++m) {
        const float4 kk = reinterpret_cast<const float4*>(sK + j * LD)[cg + 8 * m];
#pragma unroll
        for (int r = 0; r < 4; ++r) fma4(acc[r][m], w[r], kk);
      }
    }
  }
  const float mul[4] = {scale, scale, scale, scale};
  store_rows<T, DC>(dq, acc, mul, [&](int r) { return trow[r]; }, cg, N, H, h, D);
}

template <typename T, int DC>
__global__ void __launch_bounds__(64)
    attn_dkdv_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                     const float* __restrict__ lse, const float* __restrict__ delta, const T* __restrict__ dout,
                     const int32_t* __restrict__ seg_start, int64_t N, int64_t H, int64_t D, float scale,
                     T* __restrict__ dk, T* __restrict__ dv) {
  constexpr int LD = DC + 4, MC = DC / 32, B = kBwdB;
  extern __shared__ float4 smem4[];
  float* sK = reinterpret_cast<float*>(smem4);
  float* sV = sK + B * LD;
  float* sQ = sV + B * LD;
  float* sDO = sQ + B * LD;
  float* sP = sDO + B * LD;  // [key][query]
  float* sDS = sP + B * kPP;
  float* sL = sDS + B * kPP;
  float* sD = sL + B;
  int* sSeg = reinterpret_cast<int*>(sD + B);

  const int tid = threadIdx.x, rg = tid >> 3, cg = tid & 7;
  const int64_t h = blockIdx.y;
  const int64_t k0 = static_cast<int64_t>(blockIdx.x) * B;
  const int64_t klast = (k0 + B < N ? k0 + B : N) - 1;
  const int nd4 = static_cast<int>((D + 3) / 4);

  load_tile<T, DC>(sK, k, k0, B, N, H, h, D);
  load_tile<T, DC>(sV, v, k0, B, N, H, h, D);

  int64_t srow[4];
  float4 adk[4][MC], adv[4][MC];
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    srow[r] = k0 + rg + 8 * r;
#pragma unroll
    for (int m = 0; m < MC; ++m) {
      adk[r][m] = make_float4(0.f, 0.f, 0.f, 0.f);
      adv[r][m] = make_float4(0.f, 0.f, 0.f, 0.f);
    }
  }

  for (int64_t q0 = k0; q0 < N; q0 += B) {
    __syncthreads();  // previous tile's readers are done
    load_tile<T, DC>(sQ, q, q0, B, N, H, h, D);
    load_tile<T, DC>(sDO, dout, q0, B, N, H, h, D);
    if (tid < B) {
      const int64_t t = q0 + tid;
      const bool in = t < N;
      sSeg[tid] = in ? static_cast<int>(seg_of(seg_start, t)) : INT32_MAX;
      sL[tid] = in ? lse[t * H + h] : 0.0f;
      sD[tid] = in ? delta[t * H + h] : 0.0f;
    }
    __syncthreads();
    if (sSeg[0] > klast) break;  // seg_start is non-decreasing: no later query sees these keys
    float s[4][4] = {}, dp[4][4] = {};
    dot_4x4<DC>(sK, rg, 8, sQ, cg, 8, nd4, s);
    dot_4x4<DC>(sV, rg, 8, sDO, cg, 8, nd4, dp);
#pragma unroll
    for (int r = 0; r < 4; ++r)
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int i = cg + 8 * c;
        const int64_t t = q0 + i;
        const bool ok = t < N && srow[r] <= klast && srow[r] >= sSeg[i] && srow[r] <= t;
        const float p = ok ? expf(scale * s[r][c] - sL[i]) : 0.0f;
        sP[(rg + 8 * r) * kPP + i] = p;
        sDS[(rg + 8 * r) * kPP + i] = p * (dp[r][c] - sD[i]);
      }
    __syncthreads();
    for (int i = 0; i < B; ++i) {
      float p[4], w[4];
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        p[r] = sP[(rg + 8 * r) * kPP + i];
        w[r] = sDS[(rg + 8 * r) * kPP + i];
      }
#pragma unroll
      for (int m = 0; m < MC; ++m) {
        const float4 g = reinterpret_cast<const float4*>(sDO + i * LD)[cg + 8 * m];
        const float4 qq = reinterpret_cast<const float4*>(sQ + i * LD)[cg + 8 * m];
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          fma4(adv[r][m], p[r], g);
          fma4(adk[r][m], w[r], qq);
        }
      }
    }
  }
  const float one[4] = {1.0f, 1.0f, 1.0f, 1.0f}, sc[4] = {scale, scale, scale, scale};
  store_rows<T, DC>(dv, adv, one, [&](int r) { return srow[r]; }, cg, N, H, h, D);
  store_rows<T, DC>(dk, adk, sc, [&](int r) { return srow[r]; }, cg, N, H, h, D);
}

// ---- generic kernels (any D) ----------------------------------------------------------------
constexpr int kGenPer = 8;  // columns per lane per chunk (chunk = 256 columns)

template <typename T>
__device__ __forceinline__ float warp_dot(const T* __restrict__ a, const T* __restrict__ b, int64_t D, int lane) {
  float s = 0.0f;
  for (int64_t d = lane; d < D; d += 32) s += to_float(a[d]) * to_float(b[d]);
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xFFFFFFFFu, s, off);
  return s;
}

template <typename T>
__global__ void attn_fwd_generic_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                        const int32_t* __restrict__ seg_start, int64_t N, int64_t H, int64_t D,
                                        float scale, T* __restrict__ o, float* __restrict__ lse) {
  const int lane = threadIdx.x & 31;
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int64_t nwarps = (static_cast<int64_t>(gridDim.x) * blockDim.x) >> 5;
  for (int64_t row = warp; row < N * H; row += nwarps) {
    const int64_t t = row / H, h = row % H;
    const int64_t s0 = seg_of(seg_start, t);
    const T* qr = q + row * D;
    float m = -INFINITY, l = 0.0f;
    for (int64_t s = s0; s <= t; ++s) {
      const float x = scale * warp_dot(qr, k + (s * H + h) * D, D, lane);
      const float mn = fmaxf(m, x);
      l = (m == -INFINITY ? 0.0f : l * expf(m - mn)) + (x == -INFINITY ? 0.0f : expf(x - mn));
      m = mn;
    }
    const float L = static_cast<float>(static_cast<double>(m) + log(static_cast<double>(l)));
    if (lane == 0) lse[row] = L;
    for (int64_t c0 = 0; c0 < D; c0 += 32 * kGenPer) {
      float acc[kGenPer] = {};
      for (int64_t s = s0; s <= t; ++s) {
        const float p = expf(scale * warp_dot(qr, k + (s * H + h) * D, D, lane) - L);
        const T* vr = v + (s * H + h) * D;
#pragma unroll
        for (int e = 0; e < kGenPer; ++e) {
          const int64_t d = c0 + lane + 32 * e;
          if (d < D) acc[e] += p * to_float(vr[d]);
        }
      }
#pragma unroll
      for (int e = 0; e < kGenPer; ++e) {
        const int64_t d = c0 + lane + 32 * e;
        if (d < D) o[row * D + d] = from_float<T>(acc[e]);
      }
    }
  }
}

template <typename T>
__global__ void attn_dq_generic_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                       const float* __restrict__ lse, const float* __restrict__ delta,
                                       const T* __restrict__ dout, const int32_t* __restrict__ seg_start, int64_t N,
                                       int64_t H, int64_t D, float scale, T* __restrict__ dq) {
  const int lane = threadIdx.x & 31;
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int64_t nwarps = (static_cast<int64_t>(gridDim.x) * blockDim.x) >> 5;
  for (int64_t row = warp; row < N * H; row += nwarps) {
    const int64_t t = row / H, h = row % H;
    const int64_t s0 = seg_of(seg_start, t);
    const float L = lse[row], dl = delta[row];
    for (int64_t c0 = 0; c0 < D; c0 += 32 * kGenPer) {
      float acc[kGenPer] = {};
      for (int64_t s = s0; s <= t; ++s) {
        const int64_t kr = (s * H + h) * D;
        const float p = expf(scale * warp_dot(q + row * D, k + kr, D, lane) - L);
        const float ds = p * (warp_dot(dout + row * D, v + kr, D, lane) - dl);
#pragma unroll
        for (int e = 0; e < kGenPer; ++e) {
          const int64_t d = c0 + lane + 32 * e;
          if (d < D) acc[e] += ds * to_float(k[kr + d]);
        }
      }
#pragma unroll
      for (int e = 0; e < kGenPer; ++e) {
        const int64_t d = c0 + lane + 32 * e;
        if (d < D) dq[row * D + d] = from_float<T>(scale * acc[e]);
      }
    }
  }
}

template <typename T>
__global__ void attn_dkdv_generic_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                         const float* __restrict__ lse, const float* __restrict__ delta,
                                         const T* __restrict__ dout, const int32_t* __restrict__ seg_start, int64_t N,
                                         int64_t H, int64_t D, float scale, T* __restrict__ dk, T* __restrict__ dv) {
  const int lane = threadIdx.x & 31;
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int64_t nwarps = (static_cast<int64_t>(gridDim.x) * blockDim.x) >> 5;
  for (int64_t row = warp; row < N * H; row += nwarps) {
    const int64_t s = row / H, h = row % H;
    for (int64_t c0 = 0; c0 < D; c0 += 32 * kGenPer) {
      float ak[kGenPer] = {}, av[kGenPer] = {};
      for (int64_t t = s; t < N; ++t) {
        const int64_t st = seg_of(seg_start, t);
        if (st > s) break;  // non-decreasing starts: no later row sees key s
        const int64_t qr = (t * H + h) * D;
        const float p = expf(scale * warp_dot(q + qr, k + row * D, D, lane) - lse[t * H + h]);
        const float ds = p * (warp_dot(dout + qr, v + row * D, D, lane) - delta[t * H + h]);
#pragma unroll
        for (int e = 0; e < kGenPer; ++e) {
          const int64_t d = c0 + lane + 32 * e;
          if (d < D) {
            av[e] += p * to_float(dout[qr + d]);
            ak[e] += ds * to_float(q[qr + d]);
          }
        }
      }
#pragma unroll
      for (int e = 0; e < kGenPer; ++e) {
        const int64_t d = c0 + lane + 32 * e;
        if (d < D) {
          dv[row * D + d] = from_float<T>(av[e]);
          dk[row * D + d] = from_float<T>(scale * ak[e]);
        }
      }
    }
  }
}

// ---- launch helpers ----------------------------------------------------------------------------
template <typename K>
void allow_smem(K kernel, size_t bytes) {
  if (bytes > 48 * 1024)
    MOMA_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

// Calls f(integral_constant DC) for the padded head dim of D (D <= 128).
template <typename F>
void with_dc(int64_t D, F&& f) {
  if (D <= 32) f(std::integral_constant<int, 32>{});
  else if (D <= 64) f(std::integral_constant<int, 64>{});
  else f(std::integral_constant<int, 128>{});
}

template <typename F>
void with_type(DType dt, const char* op, F&& f) {
  switch (dt) {
    case DType::F32: f(float{}); break;
    case DType::BF16: f(bf16_t{}); break;
    default: bad_dtype(op, dt);
  }
}

void check_segments(cudaStream_t s, const int32_t* seg_start, int64_t N, int32_t* err) {
  check_segments_kernel<<<grid_for(N), kThreads, 0, s>>>(seg_start, N, err);
  check_launch("attention (segment check)");
}

unsigned warp_rows_grid(int64_t rows) {
  int64_t b = (rows + 7) / 8;  // 8 warps per 256-thread block
  if (b > 65535 * 8) b = 65535 * 8;
  return static_cast<unsigned>(b < 1 ? 1 : b);
}

unsigned tiles(int64_t N, int b) { return static_cast<unsigned>((N + b - 1) / b); }

}  // namespace

void attention(const LaunchCtx& ctx, DType dt, const void* q, const void* k, const void* v, const int32_t* seg_start,
               int64_t N, int64_t H, int64_t D, float scale, void* o, float* lse) {
  with_type(dt, "attention", [&](auto tag) {
    using E = decltype(tag);
    if (N <= 0 || H <= 0) return;
    if (H > 65535) fail("ERR_ARG", "cuda attention: at most 65535 heads, got ", H);
    cudaStream_t s = as_stream(ctx.stream);
    check_segments(s, seg_start, N, ctx.err);
    if (D <= 0) return;  // empty tensors: the op layer never calls with them
    if (flash_attention_supported(dt, N, H, D, {q, k, v, o})) {
      flash_attention_forward(s, q, k, v, seg_start, N, H, D, scale, o, lse);
      return;
    }
    const E* qq = static_cast<const E*>(q);
    const E* kk = static_cast<const E*>(k);
    const E* vv = static_cast<const E*>(v);
    E* oo = static_cast<E*>(o);
    if (D > 128) {
      attn_fwd_generic_kernel<E><<<warp_rows_grid(N * H), 256, 0, s>>>(qq, kk, vv, seg_start, N, H, D, scale, oo, lse);
      check_launch("attention (generic)");
      return;
    }
    with_dc(D, [&](auto dc) {
      constexpr int DC = decltype(dc)::value;
      constexpr size_t smem = fwd_smem<DC>();
      allow_smem(attn_fwd_kernel<E, DC>, smem);  // per device and cheap: every call
      attn_fwd_kernel<E, DC><<<dim3(tiles(N, kFwdBQ), static_cast<unsigned>(H)), 128, smem, s>>>(
          qq, kk, vv, seg_start, N, H, D, scale, oo, lse);
    });
    check_launch("attention");
  });
}

void attention_backward(const LaunchCtx& ctx, DType dt, const void* q, const void* k, const void* v, const void* o,
                        const float* lse, const void* dout, const int32_t* seg_start, int64_t N, int64_t H, int64_t D,
                        float scale, void* dq, void* dk, void* dv) {
  with_type(dt, "attention_backward", [&](auto tag) {
    using E = decltype(tag);
    if (N <= 0 || H <= 0 || D <= 0) return;
    if (H > 65535) fail("ERR_ARG", "cuda attention_backward: at most 65535 heads, got ", H);
    cudaStream_t s = as_stream(ctx.stream);
    check_segments(s, seg_start, N, ctx.err);
    if (flash_attention_supported(dt, N, H, D, {q, k, v, o, dout, dq, dk, dv})) {
      flash_attention_backward(s, q, k, v, o, lse, dout, seg_start, N, H, D, scale, dq, dk, dv);
      return;
    }
    const E* qq = static_cast<const E*>(q);
    const E* kk = static_cast<const E*>(k);
    const E* vv = static_cast<const E*>(v);
    const E* gg = static_cast<const E*>(dout);
    int dev = 0;
    MOMA_CUDA_CHECK(cudaGetDevice(&dev));
    Scratch delta_buf(dev, static_cast<size_t>(N * H) * sizeof(float));  // released on return or throw
    float* delta = delta_buf.as<float>();
    attn_delta_kernel<E><<<warp_rows_grid(N * H), 256, 0, s>>>(static_cast<const E*>(o), gg, N * H, D, delta);
    check_launch("attention_backward (delta)");
    if (D > 128) {
      attn_dq_generic_kernel<E><<<warp_rows_grid(N * H), 256, 0, s>>>(qq, kk, vv, lse, delta, gg, seg_start, N, H, D,
                                                                     scale, static_cast<E*>(dq));
      check_launch("attention_backward (dq, generic)");
      attn_dkdv_generic_kernel<E><<<warp_rows_grid(N * H), 256, 0, s>>>(
          qq, kk, vv, lse, delta, gg, seg_start, N, H, D, scale, static_cast<E*>(dk), static_cast<E*>(dv));
      check_launch("attention_backward (dk dv, generic)");
    } else {
      with_dc(D, [&](auto dc) {
        constexpr int DC = decltype(dc)::value;
        constexpr size_t smem_q = dq_smem<DC>(), smem_k = dkdv_smem<DC>();
        allow_smem(attn_dq_kernel<E, DC>, smem_q);
        allow_smem(attn_dkdv_kernel<E, DC>, smem_k);
        const dim3 grid(tiles(N, kBwdB), static_cast<unsigned>(H));
        attn_dq_kernel<E, DC><<<grid, 64, smem_q, s>>>(qq, kk, vv, lse, delta, gg, seg_start, N, H, D, scale,
                                                       static_cast<E*>(dq));
        check_launch("attention_backward (dq)");
        attn_dkdv_kernel<E, DC><<<grid, 64, smem_k, s>>>(qq, kk, vv, lse, delta, gg, seg_start, N, H, D, scale,
                                                         static_cast<E*>(dk), static_cast<E*>(dv));
        check_launch("attention_backward (dk dv)");
      });
    }
  });
}

}  // namespace moma::cuda
