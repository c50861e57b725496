// Grouped (per-expert) GEMMs of the MoE expert FFNs on bf16 tensor cores (mma.sync m16n8k16,
// f32 accumulate), built from the block-tile code of gemm.cu (mma_tiles.cuh: 128 x 128 x 32
// tiles, 256 threads, two shared stages; design notes in gemm.cu).
//
// grouped_gemm: y[r, :] = x[r, :] @ op(w[e]) for r in segment e = [offsets[e], offsets[e+1]).
//   Segment sizes live on the device, so the grid is sized by host bounds: grid.x = N tiles,
//   grid.y = floor(R / 128) + E (+1) "virtual" M tiles. Expert e owns the virtual tiles starting
//   at start(e) = floor(offsets[e] / 128) + e; since floor(b/128) - floor(a/128) + 1 >=
//   ceil((b - a)/128), the ranges [start(e), start(e+1)) hold every m-tile of segment e and are
//   disjoint. A block finds its expert by binary search over start(.) (monotone) and exits when its
//   tile is past the segment (at most E + 1 idle blocks per column). Rows of a tile past the
//   segment end are zero-filled on load and not stored. Rows offsets[E] .. R are zeroed and the
//   offsets validated (0 = o[0] <= ... <= o[E] <= R, else kGroupedGemmOffsets) by a small
//   preparation kernel; the GEMM kernels clamp every segment to [0, R] so bad offsets never
//   cause out-of-range accesses.
//   FLOPs 2 * rows * K * N (rows = offsets[E]); bytes ideally rows * (K * in + N * out) + E * K * N
//   * in (each x row is re-read N / 128 times and each weight tile once per m-tile, mostly from
//   L2). Tensor-core bound at the MoE shapes (K, N >= 1024, segments of thousands of rows); the
//   last partial m-tile of each segment wastes up to 127 rows of work.
// grouped_gemm_wgrad: dw[e] = x[seg e]^T @ dy[seg e] ([K, N], f32). One block per (N tile, K
//   tile, expert) (grid.z = E), reduction over the segment's rows in 32-row k-tiles: A = x^T read
//   as the transposed (MN-contiguous) operand, B = dy not transposed. No atomics, deterministic;
//   an empty segment writes zeros. FLOPs 2 * rows * K * N; bytes rows * (K + N) * in * (re-reads
//   N/128 resp. K/128, L2) + E * K * N * 4. Tensor-core bound for long segments.
// Inputs may be float32 (rounded to bf16 while staging to shared memory) or bf16.
#include <cuda_runtime.h>

#include <cstdint>

#include "common.cuh"
#include "kernels.h"
#include "kernels_moe.h"
#include "mma_tiles.cuh"

namespace moma::cuda {
using namespace detail;

namespace {
using namespace detail::mma;

__device__ __forceinline__ int64_t clamp64(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : (v > hi ? hi : v); }

// Segment e clamped to [0, R] and to start at or after the previous (clamped) start.
__device__ __forceinline__ void segment(const int32_t* offsets, int64_t e, int64_t R, int64_t& a, int64_t& b) {
  a = clamp64(offsets[e], 0, R);
  b = clamp64(offsets[e + 1], a, R);
}

// Validates the offsets and zeroes the rows [offsets[E], R) of y ([R, N], elements of `es` bytes
// written as 0 bits: +0 in f32 and bf16).
template <typename TY>
__global__ void grouped_prep_kernel(const int32_t* offsets, int64_t E, int64_t R, int64_t N, TY* y, int32_t* err) {
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = tid; i <= E; i += stride) {
    const int32_t o = offsets[i];
    bool bad = i == 0 ? o != 0 : o < offsets[i - 1];
    if (i == E && o > R) bad = true;
    if (bad) atomicCAS(err, 0, static_cast<int32_t>(kGroupedGemmOffsets));
  }
  if (y == nullptr) return;
  const int64_t r0 = clamp64(offsets[E], 0, R);
  const int64_t total = (R - r0) * N;
  TY* base = y + r0 * N;
  for (int64_t i = tid; i < total; i += stride) base[i] = TY{};
}

struct GroupedParams {
  int64_t E, R, K, N;
  bool y_bf16;
  bool vecA, vecB;
};

template <typename TA, typename TB, bool KCB>
__global__ void __launch_bounds__(kGemmThreads, 1)
    grouped_gemm_kernel(const TA* __restrict__ x, const TB* __restrict__ w, const int32_t* __restrict__ offsets,
                        void* __restrict__ y, GroupedParams p) {
  __shared__ __align__(16) SmemTiles sm;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * BN;
  const int64_t vtiles = p.R / BM + p.E + 1;
  for (int64_t vt = blockIdx.y; vt < vtiles; vt += gridDim.y) {
    // Largest e in [0, E) with start(e) = floor(clamped offsets[e] / BM) + e <= vt (start(0) = 0).
    int64_t lo = 0, hi = p.E;
    while (hi - lo > 1) {
      const int64_t mid = (lo + hi) >> 1;
      const int64_t start = clamp64(offsets[mid], 0, p.R) / BM + mid;
      if (start <= vt) lo = mid; else hi = mid;
    }
    const int64_t e = lo;
    int64_t a, b;
    segment(offsets, e, p.R, a, b);
    const int64_t mt = vt - (a / BM + e);
    const int64_t m0 = a + mt * BM;
    if (mt < 0 || m0 >= b) continue;  // block-uniform: every thread takes the same branch

    const TB* we = w + e * p.K * p.N;
    Acc acc;
    zero_acc(acc);
    // A = x rows [m0, min(m0 + BM, b)), K contiguous; B = w[e] as an N x K operand.
    block_tile_mma<TA, TB, true, KCB>(acc, sm, x, p.K, b, m0, p.vecA, we, KCB ? p.K : p.N, p.N, n0, p.vecB, p.K);
    for_each_acc(acc, [&](int r, int c, float v) {
      const int64_t row = m0 + r, col = n0 + c;
      if (row >= b || col >= p.N) return;
      const int64_t off = row * p.N + col;
      if (p.y_bf16) static_cast<uint16_t*>(y)[off] = f32_to_bf16(v);
      else static_cast<float*>(y)[off] = v;
    });
  }
}

struct WgradParams {
  int64_t E, R, K, N;
  bool vecA, vecB;
};

template <typename TA, typename TB>
__global__ void __launch_bounds__(kGemmThreads, 1)
    grouped_wgrad_kernel(const TA* __restrict__ x, const TB* __restrict__ dy, const int32_t* __restrict__ offsets,
                         float* __restrict__ dw, WgradParams p) {
  __shared__ __align__(16) SmemTiles sm;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * BN;
  const int64_t ktiles = (p.K + BM - 1) / BM;
  for (int64_t e = blockIdx.z; e < p.E; e += gridDim.z) {
    int64_t a, b;
    segment(offsets, e, p.R, a, b);
    for (int64_t kt = blockIdx.y; kt < ktiles; kt += gridDim.y) {
      const int64_t m0 = kt * BM;  // output row = column of x
      Acc acc;
      zero_acc(acc);
      // A = x^T: element (m = column of x, k = row r - a) at x[(a + k) * K + m] (MN contiguous);
      // B = dy: element (n, k) at dy[(a + k) * N + n] (MN contiguous). Reduction length b - a.
      block_tile_mma<TA, TB, false, false>(acc, sm, x + a * p.K, p.K, p.K, m0, p.vecA, dy + a * p.N, p.N, p.N, n0,
                                           p.vecB, b - a);
      float* dwe = dw + e * p.K * p.N;
      for_each_acc(acc, [&](int r, int c, float v) {
        const int64_t row = m0 + r, col = n0 + c;
        if (row < p.K && col < p.N) dwe[row * p.N + col] = v;
      });
    }
  }
}

unsigned cap65535(int64_t v) { return static_cast<unsigned>(v < 1 ? 1 : (v > 65535 ? 65535 : v)); }

template <typename TA, typename TB>
void launch_grouped(cudaStream_t s, const void* x, const void* w, bool trans_w, const int32_t* offsets, void* y,
                    const GroupedParams& p) {
  const int64_t ntiles = (p.N + BN - 1) / BN;
  if (ntiles > INT32_MAX) fail("ERR_ARG", "cuda grouped_gemm: N = ", p.N, " is too large");
  dim3 grid(static_cast<unsigned>(ntiles), cap65535(p.R / BM + p.E + 1));
  if (trans_w)
    grouped_gemm_kernel<TA, TB, true><<<grid, kGemmThreads, 0, s>>>(static_cast<const TA*>(x), static_cast<const TB*>(w), offsets, y, p);
  else
    grouped_gemm_kernel<TA, TB, false><<<grid, kGemmThreads, 0, s>>>(static_cast<const TA*>(x), static_cast<const TB*>(w), offsets, y, p);
}

template <typename TA, typename TB>
void launch_wgrad(cudaStream_t s, const void* x, const void* dy, const int32_t* offsets, float* dw, const WgradParams& p) {
  const int64_t ntiles = (p.N + BN - 1) / BN;
  if (ntiles > INT32_MAX) fail("ERR_ARG", "cuda grouped_gemm_wgrad: N = ", p.N, " is too large");
  dim3 grid(static_cast<unsigned>(ntiles), cap65535((p.K + BM - 1) / BM), cap65535(p.E));
  grouped_wgrad_kernel<TA, TB><<<grid, kGemmThreads, 0, s>>>(static_cast<const TA*>(x), static_cast<const TB*>(dy), offsets, dw, p);
}

void check_float(const char* op, DType dt) {
  if (dt != DType::F32 && dt != DType::BF16) bad_dtype(op, dt);
}

}  // namespace

void grouped_gemm(void* stream, int32_t* err, DType dt_x, const void* x, DType dt_w, const void* w, bool trans_w,
                  const int32_t* offsets, int64_t E, int64_t R, int64_t K, int64_t N, DType dt_y, void* y) {
  check_float("grouped_gemm (x)", dt_x);
  check_float("grouped_gemm (w)", dt_w);
  check_float("grouped_gemm (y)", dt_y);
  if (E < 0 || R < 0 || K < 0 || N < 0) fail("ERR_ARG", "cuda grouped_gemm: bad sizes E=", E, " R=", R, " K=", K, " N=", N);
  cudaStream_t s = as_stream(stream);
  if (dt_y == DType::BF16)
    grouped_prep_kernel<uint16_t><<<grid_for((R * N > E + 1 ? R * N : E + 1)), kThreads, 0, s>>>(offsets, E, R, N, static_cast<uint16_t*>(y), err);
  else
    grouped_prep_kernel<float><<<grid_for((R * N > E + 1 ? R * N : E + 1)), kThreads, 0, s>>>(offsets, E, R, N, static_cast<float*>(y), err);
  check_launch("grouped_gemm (offsets / tail)");
  if (E == 0 || R == 0 || N == 0) return;
  GroupedParams p;
  p.E = E;
  p.R = R;
  p.K = K;
  p.N = N;
  p.y_bf16 = dt_y == DType::BF16;
  p.vecA = vec_ok(x, K, 0, dt_x == DType::BF16 ? 8 : 4);
  p.vecB = vec_ok(w, trans_w ? K : N, K * N, dt_w == DType::BF16 ? 8 : 4);
  if (dt_x == DType::F32 && dt_w == DType::F32) launch_grouped<float, float>(s, x, w, trans_w, offsets, y, p);
  else if (dt_x == DType::F32) launch_grouped<float, uint16_t>(s, x, w, trans_w, offsets, y, p);
  else if (dt_w == DType::F32) launch_grouped<uint16_t, float>(s, x, w, trans_w, offsets, y, p);
  else launch_grouped<uint16_t, uint16_t>(s, x, w, trans_w, offsets, y, p);
  check_launch("grouped_gemm");
}

void grouped_gemm_wgrad(void* stream, int32_t* err, DType dt_x, const void* x, DType dt_dy, const void* dy,
                        const int32_t* offsets, int64_t E, int64_t R, int64_t K, int64_t N, float* dw) {
  check_float("grouped_gemm_wgrad (x)", dt_x);
  check_float("grouped_gemm_wgrad (dy)", dt_dy);
  if (E < 0 || R < 0 || K < 0 || N < 0)
    fail("ERR_ARG", "cuda grouped_gemm_wgrad: bad sizes E=", E, " R=", R, " K=", K, " N=", N);
  cudaStream_t s = as_stream(stream);
  grouped_prep_kernel<float><<<grid_for(E + 1), kThreads, 0, s>>>(offsets, E, R, N, nullptr, err);
  check_launch("grouped_gemm_wgrad (offsets)");
  if (E == 0 || K == 0 || N == 0) return;
  WgradParams p;
  p.E = E;
  p.R = R;
  p.K = K;
  p.N = N;
  p.vecA = vec_ok(x, K, 0, dt_x == DType::BF16 ? 8 : 4);
  p.vecB = vec_ok(dy, N, 0, dt_dy == DType::BF16 ? 8 : 4);
  if (dt_x == DType::F32 && dt_dy == DType::F32) launch_wgrad<float, float>(s, x, dy, offsets, dw, p);
  else if (dt_x == DType::F32) launch_wgrad<float, uint16_t>(s, x, dy, offsets, dw, p);
  else if (dt_dy == DType::F32) launch_wgrad<uint16_t, float>(s, x, dy, offsets, dw, p);
  else launch_wgrad<uint16_t, uint16_t>(s, x, dy, offsets, dw, p);
  check_launch("grouped_gemm_wgrad");
}

}  // namespace moma::cuda
