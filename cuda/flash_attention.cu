// FlashAttention-2-style causal segment attention on tensor cores, bf16 q / k / v / o / dout,
// head dim D = 64 or 128 (attention.cu dispatches here; other D and float32 keep its SIMT
// kernels). Semantics as csrc/cpu/kernels_nn.h: row t attends the rows s in [seg_start[t], t];
// seg_start is non-decreasing (validated by attention.cu's check kernel; here it is only clamped
// into [0, t] so that bad data never reads out of bounds). lse[t, h] = log sum_s exp(scale q.k)
// (natural log, float32), the contract attention_backward reads.
//
// Every kernel: 128 threads = 4 warps; a block owns 64 rows (16 per warp) of one head: query rows
// (forward, dq) or key rows (dk / dv). All products are mma.sync.aligned.m16n8k16.row.col.f32.bf16
// .bf16.f32 (bf16 operands, f32 accumulators), operands from shared memory by ldmatrix.x4
// (.trans for the operands whose reduction index is the row index of the stored tile: V in P.V,
// dO in P^T.dO, Q in dS^T.Q, K in dS.K). P and dS are rounded to bf16 for their products (as
// FlashAttention-2); softmax statistics, delta and all accumulators are f32.
//
// Fragments (PTX ISA m16n8k16, g = lane / 4, tq = lane % 4; a .b32 register holds two bf16, the
// lower index in the low half):
//   A 16x16: a0 = (row g, k 2tq..+1) a1 = (row g+8, k 2tq..+1) a2 = (row g, k 2tq+8..+9) a3 = (row g+8, ..)
//   B 16x8:  b0 = (k 2tq..+1, col g) b1 = (k 2tq+8..+9, col g)
//   C 16x8:  c0, c1 = (row g, cols 2tq, 2tq+1)  c2, c3 = (row g+8, cols 2tq, 2tq+1)
// So a thread owns 2 rows of its warp's 16 (g and g+8; "hr" 0 / 1 below) and the 4 lanes of a
// quad share a row: row max / sum = the thread's values, then shuffles over lanes ^1, ^2.
// The C fragments of two adjacent n8 tiles (2kk, 2kk+1) are exactly the A fragment of k-step kk
// (a0 = c[2kk][0..1], a1 = c[2kk][2..3], a2 = c[2kk+1][0..1], a3 = c[2kk+1][2..3]): P and dS
// go from the score accumulators to the next product without shared memory (a_from_c).
// ldmatrix.x4 address maps (lanes 8i..8i+7 address the 8 rows of matrix i; row stride LDS):
//   load_a   (tile s[m][k]):          lane -> s[m0 + (lane & 15)][k0 + 8 (lane >> 4)] -> a0..a3
//   load_b_nk (tile s[n][k], no trans): lane -> s[n0 + (lane & 7) + 8 (i >> 1)][k0 + 8 (i & 1)]
//   load_b_kn (tile s[k][n], .trans):   lane -> s[k0 + (lane & 7) + 8 (i & 1)][n0 + 8 (i >> 1)]
//   both B loaders return b0, b1 of n-tile n0 and b0, b1 of n-tile n0 + 8.
//
// Shared memory: bf16 tiles [rows][LDS], LDS = D + 8 (row stride 144 / 272 B = 9 / 17 16-byte
// units, odd, so the 8 rows of every ldmatrix matrix and every 16-byte cp.async row chunk fall
// in distinct bank groups: conflict free without a swizzle). Tiles are filled with cp.async.cg
// (16 B, rows outside [0, N) zero-filled by a source size of 0), two stages: the next tile is
// issued before the current one is used (commit, wait_group 1, __syncthreads; one more
// __syncthreads after use before its stage is refilled).
//   forward: K[2][64], V[2][64]; the query tile waits in K's stage 1 until its fragments are in
//     registers (before the first refill). D 128: 68 KiB, D 64: 36 KiB (all three kernels fit the
//     99 KiB per block of sm_86 / sm_89). Registers (ptxas, sm_90): D 128 244-255 per thread,
//     so 2 blocks (8 warps) per SM; D 64 156-167, 3 blocks. No spills, no local memory.
//   dq: as forward; Q and dO wait in the stage-1 K and V slots.
//   dk / dv: K[64], V[64], Q[2][32], dO[2][32] and per query row lse * log2(e), delta and the
//     clamped segment start [2][32]: 69 KiB (D 128) / 37 KiB (D 64).
//
// Forward (block = 64 queries [q0, qend) x head): keys [seg_start[q0], qend) in tiles of 64,
// S = Q K^T (Q fragments kept in registers), x = S scale log2(e), masked x = -inf, online softmax
// in the log2 domain per row (running max m and partial sum l per thread in the C layout;
// alpha = exp2(m_old - m_new) rescales l and O; a row whose max is still -inf uses 0 as its
// reference so that no inf - inf appears), O += P V. End: the quad sums l, o = O / l,
// lse = (m + log2 l) ln 2. Tiles that lie inside every row's window (keys <= q0, >= the last
// row's start, all rows < N) skip the mask test. Keys before seg_start[q0] are never loaded
// (seg_start non-decreasing: no row of the tile sees them), so no tile is fully masked.
// Backward: delta[t, h] = dout . o (f32, a group of D / 8 lanes per row) first. Then
//   dq: block = 64 queries x head, streams the same key tiles in two halves of 32 keys:
//     S = Q K^T, dP = dO V^T, P = exp2(S scale log2e - lse log2e) (0 if masked),
//     dS = P (dP - delta), dQ += dS K; dq = scale dQ.
//   dk / dv: block = 64 keys [k0, k0 + 64) x head, streams the queries from k0 to the last row
//     whose segment starts at or before the last key (found by binary search when scheduling) in
//     tiles of 32: S^T = K Q^T, dP^T = V dO^T, P^T, dS^T as above, dV += P^T dO, dK += dS^T Q;
//     dk = scale dK. K and V fragments are re-read from shared memory (registers hold dK, dV).
//   Every output row is written by one thread with a fixed summation order: deterministic, no
//   atomics.
// Scheduling: blocks run longest first. A pre-pass computes each tile's work (keys streamed,
// resp. queries streamed) and ranks the tiles by decreasing work (ties: lower tile; O(T^2 / 256)
// per block, T = N / 64 tiles: 0.3 M compares at N = 32768); block b takes the tile of rank
// b / H, head b % H, so every head's longest tile starts first.
//
// Cost: forward 4 D sum_t L_t FLOPs per head (L_t keys of row t), backward 2.5x that (S, dP,
// dV, dK, dQ; S recomputed twice: 3x the forward's products in fact, 2.5x by convention).
// Bytes: q, k, v, o once each per head plus K / V re-reads per query tile (from L2): compute
// bound. Ceiling: the mma.sync bf16 rate (about 2/3 of the H100's 989 TFLOP/s dense wgmma
// peak); the online softmax (exp2 on the SFU, 2 rows per thread) and the 16-row warp tiles
// (B fragments used once) cap it lower: FlashAttention-2 itself reaches ~350 TFLOP/s forward on
// an H100.
#include <cuda_runtime.h>

#include <climits>
#include <cmath>
#include <cstdint>

#include "common.cuh"
#include "flash_attention.cuh"
#include "ptx.cuh"
#include "runtime.h"
#include "scratch.cuh"

namespace moma::cuda::detail {
namespace {

constexpr int kFlashThreads = 128;  // 4 warps
constexpr int kBlockRows = 64;      // rows a block owns (queries: forward, dq; keys: dk / dv), 16 per warp
constexpr int kKeyTile = 64;        // keys per pipeline stage (forward, dq)
constexpr int kQueryTile = 32;      // queries per pipeline stage (dk / dv)
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
constexpr unsigned kFull = 0xFFFFFFFFu;

// ---- PTX wrappers: ptx.cuh (cp.async, ldmatrix, mma.sync shared with the GEMMs) ---------------
// Two floats rounded to bf16 (nearest even), lo in the low half.
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
  uint32_t r;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
}

// ---- fragments (maps in the header comment) -----------------------------------------------
template <int LDS>
__device__ __forceinline__ void load_a(uint32_t (&a)[4], const uint16_t* s, int m0, int k0, int lane) {
  ldmatrix_x4<false>(a, s + (m0 + (lane & 15)) * LDS + k0 + 8 * (lane >> 4));
}
template <int LDS>
__device__ __forceinline__ void load_b_nk(uint32_t (&b)[4], const uint16_t* s, int n0, int k0, int lane) {
  const int i = lane >> 3;
  ldmatrix_x4<false>(b, s + (n0 + (lane & 7) + 8 * (i >> 1)) * LDS + k0 + 8 * (i & 1));
}
template <int LDS>
__device__ __forceinline__ void load_b_kn(uint32_t (&b)[4], const uint16_t* s, int k0, int n0, int lane) {
  const int i = lane >> 3;
  ldmatrix_x4<true>(b, s + (k0 + (lane & 7) + 8 * (i & 1)) * LDS + n0 + 8 * (i >> 1));
}
// A fragment of k-step kk from the C fragments of n8 tiles 2kk and 2kk + 1, rounded to bf16.
template <int NT>
__device__ __forceinline__ void a_from_c(uint32_t (&a)[4], const float (&c)[NT][4], int kk) {
  a[0] = pack_bf16x2(c[2 * kk][0], c[2 * kk][1]);
  a[1] = pack_bf16x2(c[2 * kk][2], c[2 * kk][3]);
  a[2] = pack_bf16x2(c[2 * kk + 1][0], c[2 * kk + 1][1]);
  a[3] = pack_bf16x2(c[2 * kk + 1][2], c[2 * kk + 1][3]);
}

// ---- loads and stores ----------------------------------------------------------------------
// Clamped segment start of row t (valid data: unchanged).
__device__ __forceinline__ int64_t seg_of(const int32_t* __restrict__ seg_start, int64_t t) {
  const int64_t s = seg_start[t];
  return s < 0 ? 0 : (s > t ? t : s);
}

// s[r][0 .. D) = x[row0 + r, h, 0 .. D) for r < ROWS via cp.async (zeros for rows >= N).
template <int D, int ROWS>
__device__ __forceinline__ void load_rows_async(uint16_t* s, const uint16_t* __restrict__ x, int64_t row0,
                                                int64_t N, int64_t H, int64_t h) {
  constexpr int LDS = D + 8, CPR = D / 8;  // 16-byte chunks per row
  static_assert(ROWS * CPR % kFlashThreads == 0, "whole chunks per thread");
#pragma unroll
  for (int p = 0; p < ROWS * CPR / kFlashThreads; ++p) {
    const int c = threadIdx.x + p * kFlashThreads;
    const int r = c / CPR, ch = c % CPR;
    const int64_t t = row0 + r;
    const bool in = t < N;
    cp_async_16(s + r * LDS + ch * 8, in ? x + (t * H + h) * D + ch * 8 : x, in ? 16 : 0);
  }
}

// Writes this warp's 16 x D accumulator (rows row[0], row[1] of this thread) times mul[hr] as bf16
// to x[row, h, :] for rows < N.
template <int D>
__device__ __forceinline__ void store_rows(uint16_t* __restrict__ x, const float (&acc)[D / 8][4],
                                           const int64_t (&row)[2], const float (&mul)[2], int64_t N, int64_t H,
                                           int64_t h, int tq) {
#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    if (row[hr] >= N) continue;
    uint16_t* dst = x + (row[hr] * H + h) * D + 2 * tq;
#pragma unroll
    for (int dn = 0; dn < D / 8; ++dn)
      *reinterpret_cast<uint32_t*>(dst + 8 * dn) =
          pack_bf16x2(acc[dn][2 * hr] * mul[hr], acc[dn][2 * hr + 1] * mul[hr]);
  }
}

template <int D>
constexpr size_t fwd_smem() {  // also dq
  return size_t(4) * kKeyTile * (D + 8) * sizeof(uint16_t);
}
template <int D>
constexpr size_t dkdv_smem() {
  return (size_t(2) * kBlockRows + 4 * kQueryTile) * (D + 8) * sizeof(uint16_t) + 3 * 2 * kQueryTile * sizeof(float);
}

// ---- schedule --------------------------------------------------------------------------------
// work[i] of tile i (rows [i * rows, min((i + 1) rows, N))): query side, the keys its rows stream
// (last row + 1 - seg_start[first row]); key side, the queries that stream it (from its first
// row to the last row t with seg_start[t] <= its last row; seg_start non-decreasing: binary search).
__global__ void tile_work_kernel(const int32_t* __restrict__ seg_start, int64_t N, int rows, bool key_side, int T,
                                 int* __restrict__ work) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < T; i += gridDim.x * blockDim.x) {
    const int64_t r0 = static_cast<int64_t>(i) * rows;
    const int64_t rlast = (r0 + rows < N ? r0 + rows : N) - 1;
    int64_t w;
    if (!key_side) {
      w = rlast + 1 - seg_of(seg_start, r0);
    } else {
      int64_t lo = rlast, hi = N - 1;  // seg_of(rlast) <= rlast: lo always qualifies
      while (lo < hi) {
        const int64_t mid = lo + (hi - lo + 1) / 2;
        if (seg_of(seg_start, mid) <= rlast) lo = mid;
        else hi = mid - 1;
      }
      w = lo + 1 - r0;
    }
    work[i] = static_cast<int>(w);
  }
}

// order[rank] = {tile, work}: tiles by decreasing work, ties by increasing tile (a permutation).
constexpr int kOrderThreads = 256;
__global__ void __launch_bounds__(kOrderThreads)
    tile_order_kernel(const int* __restrict__ work, int T, int2* __restrict__ order) {
  __shared__ int sw[kOrderThreads];
  const int i = blockIdx.x * kOrderThreads + threadIdx.x;
  const int wi = i < T ? work[i] : 0;
  int rank = 0;
  for (int base = 0; base < T; base += kOrderThreads) {
    __syncthreads();
    if (base + static_cast<int>(threadIdx.x) < T) sw[threadIdx.x] = work[base + threadIdx.x];
    __syncthreads();
    const int n = T - base < kOrderThreads ? T - base : kOrderThreads;
    for (int j = 0; j < n; ++j) {
      const int wj = sw[j];
      rank += (wj > wi || (wj == wi && base + j < i)) ? 1 : 0;
    }
  }
  if (i < T) order[rank] = make_int2(i, wi);
}

// ---- forward -----------------------------------------------------------------------------------
template <int D>
__global__ void __launch_bounds__(kFlashThreads)
    flash_fwd_kernel(const uint16_t* __restrict__ q, const uint16_t* __restrict__ k, const uint16_t* __restrict__ v,
                     const int32_t* __restrict__ seg_start, const int2* __restrict__ order, int64_t N, int64_t H,
                     float scale_log2, uint16_t* __restrict__ o, float* __restrict__ lse) {
  constexpr int LDS = D + 8, KD = D / 16, ND = D / 8, NS = kKeyTile / 8, STAGE = kKeyTile * LDS;
  extern __shared__ uint4 smem_raw[];
  uint16_t* sK = reinterpret_cast<uint16_t*>(smem_raw);  // [2][kKeyTile][LDS]
  uint16_t* sV = sK + 2 * STAGE;                          // [2][kKeyTile][LDS]
  uint16_t* sQ = sK + STAGE;                              // [kBlockRows][LDS], until the first refill

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, tq = lane & 3;
  const int64_t h = blockIdx.x % H;
  const int2 job = order[blockIdx.x / H];  // {query tile, keys streamed}
  const int64_t q0 = static_cast<int64_t>(job.x) * kBlockRows;
  const int64_t qend = q0 + kBlockRows < N ? q0 + kBlockRows : N;
  const int64_t kbeg = qend - job.y;  // = seg_start[q0]
  const int ntiles = (job.y + kKeyTile - 1) / kKeyTile;
  const int64_t seg_last = seg_of(seg_start, qend - 1);
  int64_t row[2], sg[2];
#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    row[hr] = q0 + 16 * warp + g + 8 * hr;
    sg[hr] = row[hr] < N ? seg_of(seg_start, row[hr]) : INT64_MAX;  // rows >= N: every key masked
  }

  load_rows_async<D, kBlockRows>(sQ, q, q0, N, H, h);
  load_rows_async<D, kKeyTile>(sK, k, kbeg, N, H, h);
  load_rows_async<D, kKeyTile>(sV, v, kbeg, N, H, h);
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();
  uint32_t qf[KD][4];
#pragma unroll
  for (int kk = 0; kk < KD; ++kk) load_a<LDS>(qf[kk], sQ, 16 * warp, 16 * kk, lane);
  __syncthreads();  // sQ is K's stage 1, refilled below

  float acc[ND][4];
#pragma unroll
  for (int dn = 0; dn < ND; ++dn)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[dn][e] = 0.0f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};

  for (int it = 0; it < ntiles; ++it) {
    const int st = it & 1;
    const int64_t k0 = kbeg + static_cast<int64_t>(it) * kKeyTile;
    if (it + 1 < ntiles) {
      load_rows_async<D, kKeyTile>(sK + (st ^ 1) * STAGE, k, k0 + kKeyTile, N, H, h);
      load_rows_async<D, kKeyTile>(sV + (st ^ 1) * STAGE, v, k0 + kKeyTile, N, H, h);
    }
    cp_async_commit();
    cp_async_wait<1>();  // everything but the group just committed: tile `it` has landed
    __syncthreads();
    const uint16_t* cK = sK + st * STAGE;
    const uint16_t* cV = sV + st * STAGE;

    // S = Q K^T: s[nt] is keys k0 + 8 nt .. + 7.
    float s[NS][4];
#pragma unroll
    for (int nt = 0; nt < NS; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[nt][e] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < KD; ++kk)
#pragma unroll
      for (int np = 0; np < NS / 2; ++np) {
        uint32_t b[4];
        load_b_nk<LDS>(b, cK, 16 * np, 16 * kk, lane);
        mma_bf16(s[2 * np], qf[kk], b[0], b[1]);
        mma_bf16(s[2 * np + 1], qf[kk], b[2], b[3]);
      }

    // Scale into the log2 domain, mask: element (nt, e) is row row[e >> 1], key k0 + 8 nt + 2 tq + (e & 1).
    const bool inside = k0 + kKeyTile - 1 <= q0 && k0 >= seg_last && qend == q0 + kBlockRows;
#pragma unroll
    for (int nt = 0; nt < NS; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float x = s[nt][e] * scale_log2;
        if (!inside) {
          const int64_t j = k0 + 8 * nt + 2 * tq + (e & 1);
          if (j < sg[e >> 1] || j > row[e >> 1]) x = -INFINITY;
        }
        s[nt][e] = x;
      }

    // Online softmax per row hr; s becomes P (f32).
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      float mx = -INFINITY;
#pragma unroll
      for (int nt = 0; nt < NS; ++nt) mx = fmaxf(mx, fmaxf(s[nt][2 * hr], s[nt][2 * hr + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(kFull, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(kFull, mx, 2));
      const float m_new = fmaxf(m[hr], mx);
      const float m_ref = m_new == -INFINITY ? 0.0f : m_new;
      const float alpha = exp2f(m[hr] - m_ref);  // 0 while the row had no key
      m[hr] = m_new;
      float sum = 0.0f;
#pragma unroll
      for (int nt = 0; nt < NS; ++nt)
#pragma unroll
        for (int e = 2 * hr; e < 2 * hr + 2; ++e) {
          const float p = exp2f(s[nt][e] - m_ref);
          s[nt][e] = p;
          sum += p;
        }
      l[hr] = l[hr] * alpha + sum;  // this thread's columns; the quad sums at the end
#pragma unroll
      for (int dn = 0; dn < ND; ++dn) {
        acc[dn][2 * hr] *= alpha;
        acc[dn][2 * hr + 1] *= alpha;
      }
    }

    // O += P V: k-step kk is keys 16 kk .. + 15, n-tile pair dp is columns 16 dp .. + 15.
#pragma unroll
    for (int kk = 0; kk < kKeyTile / 16; ++kk) {
      uint32_t a[4];
      a_from_c(a, s, kk);
#pragma unroll
      for (int dp = 0; dp < D / 16; ++dp) {
        uint32_t b[4];
        load_b_kn<LDS>(b, cV, 16 * kk, 16 * dp, lane);
        mma_bf16(acc[2 * dp], a, b[0], b[1]);
        mma_bf16(acc[2 * dp + 1], a, b[2], b[3]);
      }
    }
    __syncthreads();  // stage st is refilled by the next iteration's prefetch
  }

  float inv[2];
#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    float lt = l[hr];
    lt += __shfl_xor_sync(kFull, lt, 1);
    lt += __shfl_xor_sync(kFull, lt, 2);
    inv[hr] = 1.0f / lt;  // rows < N attend at least themselves: lt >= 1
    if (tq == 0 && row[hr] < N) lse[row[hr] * H + h] = (m[hr] + log2f(lt)) * kLn2;
  }
  store_rows<D>(o, acc, row, inv, N, H, h, tq);
}

// ---- backward ----------------------------------------------------------------------------------
// delta[r] = dout[r, :] . o[r, :] over rows r = t H + h: a group of D / 8 lanes per row, one
// 16-byte chunk each, summed in a fixed order.
template <int D>
__global__ void flash_delta_kernel(const uint16_t* __restrict__ o, const uint16_t* __restrict__ dout, int64_t rows,
                                   float* __restrict__ delta) {
  constexpr int G = D / 8;
  const int64_t gid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x / G;
  const int c = static_cast<int>(gid % G);
  for (int64_t r0 = 0; r0 < rows; r0 += stride) {  // uniform trip count: every lane reaches the shuffles
    const int64_t r = r0 + gid / G;
    float s = 0.0f;
    if (r < rows) {
      const uint4 a = reinterpret_cast<const uint4*>(o + r * D)[c];
      const uint4 b = reinterpret_cast<const uint4*>(dout + r * D)[c];
      const uint32_t wa[4] = {a.x, a.y, a.z, a.w}, wb[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        s += bf16_to_f32(static_cast<uint16_t>(wa[i] & 0xFFFFu)) * bf16_to_f32(static_cast<uint16_t>(wb[i] & 0xFFFFu));
        s += bf16_to_f32(static_cast<uint16_t>(wa[i] >> 16)) * bf16_to_f32(static_cast<uint16_t>(wb[i] >> 16));
      }
    }
#pragma unroll
    for (int off = G / 2; off > 0; off >>= 1) s += __shfl_xor_sync(kFull, s, off);
    if (c == 0 && r < rows) delta[r] = s;
  }
}

template <int D>
__global__ void __launch_bounds__(kFlashThreads)
    flash_dq_kernel(const uint16_t* __restrict__ q, const uint16_t* __restrict__ k, const uint16_t* __restrict__ v,
                    const uint16_t* __restrict__ dout, const float* __restrict__ lse, const float* __restrict__ delta,
                    const int32_t* __restrict__ seg_start, const int2* __restrict__ order, int64_t N, int64_t H,
                    float scale, float scale_log2, uint16_t* __restrict__ dq) {
  constexpr int LDS = D + 8, KD = D / 16, ND = D / 8, STAGE = kKeyTile * LDS, HALF = kKeyTile / 2;
  extern __shared__ uint4 smem_raw[];
  uint16_t* sK = reinterpret_cast<uint16_t*>(smem_raw);  // [2][kKeyTile][LDS]
  uint16_t* sV = sK + 2 * STAGE;                          // [2][kKeyTile][LDS]
  uint16_t* sQ = sK + STAGE;                              // until the first refill
  uint16_t* sDO = sV + STAGE;

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, tq = lane & 3;
  const int64_t h = blockIdx.x % H;
  const int2 job = order[blockIdx.x / H];
  const int64_t q0 = static_cast<int64_t>(job.x) * kBlockRows;
  const int64_t qend = q0 + kBlockRows < N ? q0 + kBlockRows : N;
  const int64_t kbeg = qend - job.y;
  const int ntiles = (job.y + kKeyTile - 1) / kKeyTile;
  const int64_t seg_last = seg_of(seg_start, qend - 1);
  int64_t row[2], sg[2];
  float lse2[2], dl[2];
#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    row[hr] = q0 + 16 * warp + g + 8 * hr;
    const bool in = row[hr] < N;
    sg[hr] = in ? seg_of(seg_start, row[hr]) : INT64_MAX;
    lse2[hr] = in ? lse[row[hr] * H + h] * kLog2e : 0.0f;
    dl[hr] = in ? delta[row[hr] * H + h] : 0.0f;
  }

  load_rows_async<D, kBlockRows>(sQ, q, q0, N, H, h);
  load_rows_async<D, kBlockRows>(sDO, dout, q0, N, H, h);
  load_rows_async<D, kKeyTile>(sK, k, kbeg, N, H, h);
  load_rows_async<D, kKeyTile>(sV, v, kbeg, N, H, h);
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();
  uint32_t qf[KD][4], df[KD][4];
#pragma unroll
  for (int kk = 0; kk < KD; ++kk) {
    load_a<LDS>(qf[kk], sQ, 16 * warp, 16 * kk, lane);
    load_a<LDS>(df[kk], sDO, 16 * warp, 16 * kk, lane);
  }
  __syncthreads();

  float acc[ND][4];
#pragma unroll
  for (int dn = 0; dn < ND; ++dn)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[dn][e] = 0.0f;

  for (int it = 0; it < ntiles; ++it) {
    const int st = it & 1;
    const int64_t k0 = kbeg + static_cast<int64_t>(it) * kKeyTile;
    if (it + 1 < ntiles) {
      load_rows_async<D, kKeyTile>(sK + (st ^ 1) * STAGE, k, k0 + kKeyTile, N, H, h);
      load_rows_async<D, kKeyTile>(sV + (st ^ 1) * STAGE, v, k0 + kKeyTile, N, H, h);
    }
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const uint16_t* cK = sK + st * STAGE;
    const uint16_t* cV = sV + st * STAGE;
    const bool inside = k0 + kKeyTile - 1 <= q0 && k0 >= seg_last && qend == q0 + kBlockRows;

#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int kb = half * HALF;  // keys k0 + kb .. + 31
      float s[HALF / 8][4], dp[HALF / 8][4];
#pragma unroll
      for (int nt = 0; nt < HALF / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[nt][e] = dp[nt][e] = 0.0f;
#pragma unroll
      for (int kk = 0; kk < KD; ++kk)
#pragma unroll
        for (int np = 0; np < HALF / 16; ++np) {
          uint32_t b[4];
          load_b_nk<LDS>(b, cK, kb + 16 * np, 16 * kk, lane);
          mma_bf16(s[2 * np], qf[kk], b[0], b[1]);
          mma_bf16(s[2 * np + 1], qf[kk], b[2], b[3]);
          load_b_nk<LDS>(b, cV, kb + 16 * np, 16 * kk, lane);
          mma_bf16(dp[2 * np], df[kk], b[0], b[1]);
          mma_bf16(dp[2 * np + 1], df[kk], b[2], b[3]);
        }
      // s becomes dS = P (dP - delta); element (nt, e): row row[e >> 1], key k0 + kb + 8 nt + 2 tq + (e & 1).
#pragma unroll
      for (int nt = 0; nt < HALF / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int hr = e >> 1;
          float p = exp2f(s[nt][e] * scale_log2 - lse2[hr]);
          if (!inside) {
            const int64_t j = k0 + kb + 8 * nt + 2 * tq + (e & 1);
            if (j < sg[hr] || j > row[hr]) p = 0.0f;
          }
          s[nt][e] = p * (dp[nt][e] - dl[hr]);
        }
      // dQ += dS K: k-step kk2 is keys kb + 16 kk2 .. + 15 (rows of the stored K tile: .trans).
#pragma unroll
      for (int kk2 = 0; kk2 < HALF / 16; ++kk2) {
        uint32_t a[4];
        a_from_c(a, s, kk2);
#pragma unroll
        for (int dp2 = 0; dp2 < D / 16; ++dp2) {
          uint32_t b[4];
          load_b_kn<LDS>(b, cK, kb + 16 * kk2, 16 * dp2, lane);
          mma_bf16(acc[2 * dp2], a, b[0], b[1]);
          mma_bf16(acc[2 * dp2 + 1], a, b[2], b[3]);
        }
      }
    }
    __syncthreads();
  }
  const float mul[2] = {scale, scale};
  store_rows<D>(dq, acc, row, mul, N, H, h, tq);
}

template <int D>
__global__ void __launch_bounds__(kFlashThreads)
    flash_dkdv_kernel(const uint16_t* __restrict__ q, const uint16_t* __restrict__ k, const uint16_t* __restrict__ v,
                      const uint16_t* __restrict__ dout, const float* __restrict__ lse,
                      const float* __restrict__ delta, const int32_t* __restrict__ seg_start,
                      const int2* __restrict__ order, int64_t N, int64_t H, float scale, float scale_log2,
                      uint16_t* __restrict__ dk, uint16_t* __restrict__ dv) {
  constexpr int LDS = D + 8, KD = D / 16, ND = D / 8, QT = kQueryTile, QSTAGE = QT * LDS;
  extern __shared__ uint4 smem_raw[];
  uint16_t* sK = reinterpret_cast<uint16_t*>(smem_raw);  // [kBlockRows][LDS]
  uint16_t* sV = sK + kBlockRows * LDS;                   // [kBlockRows][LDS]
  uint16_t* sQ = sV + kBlockRows * LDS;                   // [2][QT][LDS]
  uint16_t* sDO = sQ + 2 * QSTAGE;                        // [2][QT][LDS]
  float* sL = reinterpret_cast<float*>(sDO + 2 * QSTAGE);  // [2][QT] lse log2(e)
  float* sDl = sL + 2 * QT;                                // [2][QT] delta
  int* sSeg = reinterpret_cast<int*>(sDl + 2 * QT);        // [2][QT] clamped segment start (INT_MAX: row >= N)

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, tq = lane & 3;
  const int64_t h = blockIdx.x % H;
  const int2 job = order[blockIdx.x / H];  // {key tile, queries streamed}
  const int64_t k0 = static_cast<int64_t>(job.x) * kBlockRows;
  const bool full_keys = k0 + kBlockRows <= N;
  const int ntiles = (job.y + QT - 1) / QT;
  int64_t key[2];
#pragma unroll
  for (int hr = 0; hr < 2; ++hr) key[hr] = k0 + 16 * warp + g + 8 * hr;

  // Query rows q0 .. q0 + QT - 1 into stage st (lse, delta, start by plain stores).
  const auto stage_queries = [&](int st, int64_t q0) {
    load_rows_async<D, QT>(sQ + st * QSTAGE, q, q0, N, H, h);
    load_rows_async<D, QT>(sDO + st * QSTAGE, dout, q0, N, H, h);
    if (threadIdx.x < QT) {
      const int64_t t = q0 + threadIdx.x;
      const bool in = t < N;
      sL[st * QT + threadIdx.x] = in ? lse[t * H + h] * kLog2e : 0.0f;
      sDl[st * QT + threadIdx.x] = in ? delta[t * H + h] : 0.0f;
      sSeg[st * QT + threadIdx.x] = in ? static_cast<int>(seg_of(seg_start, t)) : INT_MAX;
    }
  };

  load_rows_async<D, kBlockRows>(sK, k, k0, N, H, h);
  load_rows_async<D, kBlockRows>(sV, v, k0, N, H, h);
  stage_queries(0, k0);
  cp_async_commit();

  float adk[ND][4], adv[ND][4];
#pragma unroll
  for (int dn = 0; dn < ND; ++dn)
#pragma unroll
    for (int e = 0; e < 4; ++e) adk[dn][e] = adv[dn][e] = 0.0f;

  for (int it = 0; it < ntiles; ++it) {
    const int st = it & 1;
    const int64_t q0 = k0 + static_cast<int64_t>(it) * QT;
    if (it + 1 < ntiles) stage_queries(st ^ 1, q0 + QT);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const uint16_t* cQ = sQ + st * QSTAGE;
    const uint16_t* cDO = sDO + st * QSTAGE;
    const float* cL = sL + st * QT;
    const float* cDl = sDl + st * QT;
    const int* cSeg = sSeg + st * QT;

    // S^T = K Q^T, dP^T = V dO^T: rows = this warp's 16 keys, s[nt] = queries q0 + 8 nt .. + 7.
    float s[QT / 8][4], dp[QT / 8][4];
#pragma unroll
    for (int nt = 0; nt < QT / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[nt][e] = dp[nt][e] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < KD; ++kk) {
      uint32_t a[4], b[4];
      load_a<LDS>(a, sK, 16 * warp, 16 * kk, lane);
#pragma unroll
      for (int np = 0; np < QT / 16; ++np) {
        load_b_nk<LDS>(b, cQ, 16 * np, 16 * kk, lane);
        mma_bf16(s[2 * np], a, b[0], b[1]);
        mma_bf16(s[2 * np + 1], a, b[2], b[3]);
      }
      load_a<LDS>(a, sV, 16 * warp, 16 * kk, lane);
#pragma unroll
      for (int np = 0; np < QT / 16; ++np) {
        load_b_nk<LDS>(b, cDO, 16 * np, 16 * kk, lane);
        mma_bf16(dp[2 * np], a, b[0], b[1]);
        mma_bf16(dp[2 * np + 1], a, b[2], b[3]);
      }
    }
    // s becomes P^T, dp becomes dS^T; element (nt, e): key key[e >> 1], query q0 + i, i = 8 nt + 2 tq + (e & 1).
    const bool inside = full_keys && k0 + kBlockRows - 1 <= q0 && q0 + QT <= N && cSeg[QT - 1] <= k0;
#pragma unroll
    for (int nt = 0; nt < QT / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int i = 8 * nt + 2 * tq + (e & 1);
        float p = exp2f(s[nt][e] * scale_log2 - cL[i]);
        if (!inside) {
          const int64_t kr = key[e >> 1];
          if (kr < cSeg[i] || kr > q0 + i) p = 0.0f;
        }
        s[nt][e] = p;
        dp[nt][e] = p * (dp[nt][e] - cDl[i]);
      }
    // dV += P^T dO, dK += dS^T Q: k-step kk2 is queries 16 kk2 .. + 15 (rows of the stored tiles: .trans).
#pragma unroll
    for (int kk2 = 0; kk2 < QT / 16; ++kk2) {
      uint32_t ap[4], ads[4];
      a_from_c(ap, s, kk2);
      a_from_c(ads, dp, kk2);
#pragma unroll
      for (int dp2 = 0; dp2 < D / 16; ++dp2) {
        uint32_t b[4];
        load_b_kn<LDS>(b, cDO, 16 * kk2, 16 * dp2, lane);
        mma_bf16(adv[2 * dp2], ap, b[0], b[1]);
        mma_bf16(adv[2 * dp2 + 1], ap, b[2], b[3]);
        load_b_kn<LDS>(b, cQ, 16 * kk2, 16 * dp2, lane);
        mma_bf16(adk[2 * dp2], ads, b[0], b[1]);
        mma_bf16(adk[2 * dp2 + 1], ads, b[2], b[3]);
      }
    }
    __syncthreads();
  }
  const float one[2] = {1.0f, 1.0f}, sc[2] = {scale, scale};
  store_rows<D>(dv, adv, key, one, N, H, h, tq);
  store_rows<D>(dk, adk, key, sc, N, H, h, tq);
}

// ---- host ------------------------------------------------------------------------------------
template <typename K>
void allow_smem(K kernel, size_t bytes) {
  if (bytes > 48 * 1024)
    MOMA_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

int tile_count(int64_t N) { return static_cast<int>((N + kBlockRows - 1) / kBlockRows); }

// The tiles of kBlockRows rows ranked longest first into order[T] (work: scratch [T]).
void schedule(cudaStream_t s, const int32_t* seg_start, int64_t N, bool key_side, int* work, int2* order) {
  const int T = tile_count(N);
  tile_work_kernel<<<grid_for(T), kThreads, 0, s>>>(seg_start, N, kBlockRows, key_side, T, work);
  check_launch("attention (tensor cores, tile work)");
  tile_order_kernel<<<static_cast<unsigned>((T + kOrderThreads - 1) / kOrderThreads), kOrderThreads, 0, s>>>(work, T,
                                                                                                            order);
  check_launch("attention (tensor cores, tile order)");
}

template <int D>
void forward_d(cudaStream_t s, const uint16_t* q, const uint16_t* k, const uint16_t* v, const int32_t* seg_start,
               const int2* order, int64_t N, int64_t H, float scale, uint16_t* o, float* lse) {
  constexpr size_t smem = fwd_smem<D>();
  allow_smem(flash_fwd_kernel<D>, smem);  // per device and cheap: every call
  const unsigned blocks = static_cast<unsigned>(tile_count(N) * H);
  flash_fwd_kernel<D><<<blocks, kFlashThreads, smem, s>>>(q, k, v, seg_start, order, N, H, scale * kLog2e, o, lse);
  check_launch("attention (tensor cores)");
}

template <int D>
void backward_d(cudaStream_t s, const uint16_t* q, const uint16_t* k, const uint16_t* v, const uint16_t* o,
                const float* lse, const uint16_t* dout, const int32_t* seg_start, const int2* q_order,
                const int2* k_order, float* delta, int64_t N, int64_t H, float scale, uint16_t* dq, uint16_t* dk,
                uint16_t* dv) {
  flash_delta_kernel<D><<<grid_for(N * H * (D / 8)), kThreads, 0, s>>>(o, dout, N * H, delta);
  check_launch("attention_backward (tensor cores, delta)");
  const unsigned blocks = static_cast<unsigned>(tile_count(N) * H);
  constexpr size_t smem_q = fwd_smem<D>(), smem_k = dkdv_smem<D>();
  allow_smem(flash_dq_kernel<D>, smem_q);
  allow_smem(flash_dkdv_kernel<D>, smem_k);
  flash_dq_kernel<D><<<blocks, kFlashThreads, smem_q, s>>>(q, k, v, dout, lse, delta, seg_start, q_order, N, H, scale,
                                                           scale * kLog2e, dq);
  check_launch("attention_backward (tensor cores, dq)");
  flash_dkdv_kernel<D><<<blocks, kFlashThreads, smem_k, s>>>(q, k, v, dout, lse, delta, seg_start, k_order, N, H,
                                                             scale, scale * kLog2e, dk, dv);
  check_launch("attention_backward (tensor cores, dk dv)");
}

const uint16_t* bits(const void* p) { return static_cast<const uint16_t*>(p); }
uint16_t* bits(void* p) { return static_cast<uint16_t*>(p); }

int current_device() {
  int dev = 0;
  MOMA_CUDA_CHECK(cudaGetDevice(&dev));
  return dev;
}

}  // namespace

bool flash_attention_supported(DType dt, int64_t N, int64_t H, int64_t D, std::initializer_list<const void*> ptrs) {
  if (dt != DType::BF16 || (D != 64 && D != 128)) return false;
  if (N <= 0 || H <= 0 || N > INT32_MAX - kBlockRows || (N + kBlockRows - 1) / kBlockRows * H > INT32_MAX) return false;
  for (const void* p : ptrs)
    if (!aligned16(p)) return false;
  return true;
}

void flash_attention_forward(cudaStream_t s, const void* q, const void* k, const void* v, const int32_t* seg_start,
                             int64_t N, int64_t H, int64_t D, float scale, void* o, float* lse) {
  const int dev = current_device();
  const size_t T = static_cast<size_t>(tile_count(N));
  Scratch work(dev, T * sizeof(int)), order(dev, T * sizeof(int2));
  schedule(s, seg_start, N, false, work.as<int>(), order.as<int2>());
  if (D == 64) forward_d<64>(s, bits(q), bits(k), bits(v), seg_start, order.as<int2>(), N, H, scale, bits(o), lse);
  else forward_d<128>(s, bits(q), bits(k), bits(v), seg_start, order.as<int2>(), N, H, scale, bits(o), lse);
}

void flash_attention_backward(cudaStream_t s, const void* q, const void* k, const void* v, const void* o,
                              const float* lse, const void* dout, const int32_t* seg_start, int64_t N, int64_t H,
                              int64_t D, float scale, void* dq, void* dk, void* dv) {
  const int dev = current_device();
  const size_t T = static_cast<size_t>(tile_count(N));
  Scratch work(dev, T * sizeof(int)), q_order(dev, T * sizeof(int2)), k_order(dev, T * sizeof(int2));
  Scratch delta(dev, static_cast<size_t>(N * H) * sizeof(float));
  schedule(s, seg_start, N, false, work.as<int>(), q_order.as<int2>());
  schedule(s, seg_start, N, true, work.as<int>(), k_order.as<int2>());
  if (D == 64)
    backward_d<64>(s, bits(q), bits(k), bits(v), bits(o), lse, bits(dout), seg_start, q_order.as<int2>(),
                   k_order.as<int2>(), delta.as<float>(), N, H, scale, bits(dq), bits(dk), bits(dv));
  else
    backward_d<128>(s, bits(q), bits(k), bits(v), bits(o), lse, bits(dout), seg_start, q_order.as<int2>(),
                    k_order.as<int2>(), delta.as<float>(), N, H, scale, bits(dq), bits(dk), bits(dv));
}

}  // namespace moma::cuda::detail
