// Grouped (per-expert) GEMMs of the MoE expert FFNs, built from the block tiles of gemm.cu
// (design notes, fragment maps and the cp.async / swizzle pipeline there and in mma_tiles.cuh):
// bf16 tensor cores (mma.sync m16n8k16, f32 accumulate) unless x and w are both float32, which
// take the float32-accurate SIMT tile (gemm_simt.cuh). A float32 operand next to a bf16 one is
// rounded to bf16 on load; bf16 operands that are 16-byte aligned (pointer, K / N multiples of 8)
// load through cp.async, others through the register-staged loader.
//
// grouped_gemm (+ fused epilogues): for rows r of segment e = [offsets[e], offsets[e+1]):
//   plain   y[r, :] = x[r, :] @ op(w[e])
//   scaled  y[r, :] = row_scale[r] * (x[r, :] @ op(w[e]))            (gate before combine)
//   swiglu  a[r, :] = silu(h1) * h3 with h1 = x[r, :] @ op(w1[e]), h3 = x[r, :] @ op(w3[e]),
//           both accumulated by one block (two accumulator sets sharing the x tile), SiLU on the
//           f32 accumulators; h1 / h3 also stored when asked (the SwiGLU backward reads them).
//   Segment sizes live on the device, so the grid is sized by host bounds: grid.x = N tiles,
//   grid.y = floor(R / BM) + E (+1) "virtual" M tiles. Expert e owns the virtual tiles starting
//   at start(e) = floor(offsets[e] / BM) + e; since floor(b/BM) - floor(a/BM) + 1 >=
//   ceil((b - a)/BM), the ranges [start(e), start(e+1)) hold every m-tile of segment e and are
//   disjoint. A block finds its expert by binary search over start(.) (monotone) and exits when its
//   tile is past the segment (at most E + 1 idle blocks per column). Rows of a tile past the
//   segment end are zero-filled on load and not stored. Rows offsets[E] .. R are zeroed and the
//   offsets validated (0 = o[0] <= ... <= o[E] <= R, else kGroupedGemmOffsets) by a small
//   preparation kernel; the GEMM kernels clamp every segment to [0, R] so bad offsets never
//   cause out-of-range accesses.
//   M tile from the average segment: BM = 128 when R >= 256 E (segments of >= 2 tiles on
//   average), else 64 (short, ragged segments waste at most 63 rows per segment); BN = 128
//   (plain, scaled) or 64 per weight (swiglu: 2 x 64 columns, the same 64 accumulators).
//   FLOPs 2 * rows * K * N (x NB weights; rows = offsets[E]); bytes ideally rows * (K * in + N *
//   out) + E * K * N * in (x re-read N / BN times, each weight tile once per m-tile, mostly from
//   L2). Tensor-core bound at the MoE shapes (K, N >= 1024, segments of hundreds of rows or more).
// grouped_gemm_wgrad: dw[e] = x[seg e]^T @ dy[seg e] ([K, N], f32). One block per (N tile, K
//   tile, expert) (grid.z = E), reduction over the segment's rows in 32-row k-tiles: A = x^T read
//   as the transposed (MN-contiguous) operand, B = dy not transposed, 128 x 128 tiles. No atomics,
//   deterministic; an empty segment writes zeros. FLOPs 2 * rows * K * N; bytes rows * (K + N) *
//   in * (re-reads N/128 resp. K/128, L2) + E * K * N * 4. Tensor-core bound for long segments.
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <string>

#include "common.cuh"
#include "gemm_simt.cuh"
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

enum class Epi { kPlain, kScaled, kSwiglu };

struct GroupedParams {
  const void* x;
  const void* w[2];  // w (plain, scaled) or w1, w3 (swiglu)
  const int32_t* offsets;
  const float* row_scale;  // scaled
  void* y;                 // y, or a (swiglu)
  void* h1;                // swiglu, optional
  void* h3;                // swiglu, optional
  int64_t E, R, K, N;
  bool y_bf16;
  bool vecA, vecB;
};

// sig(v) = v >= 0 ? 1 / (1 + e) : e / (1 + e), e = exp(-|v|): the formula of swiglu.cu and the
// CPU's scalar path; silu(h1) * h3 rounded in the same order.
__device__ __forceinline__ float swiglu_value(float h1, float h3) {
  const float e = expf(-fabsf(h1));
  const float den = __fadd_rn(1.0f, e);
  const float sig = h1 >= 0.0f ? __fdiv_rn(1.0f, den) : __fdiv_rn(e, den);
  return __fmul_rn(__fmul_rn(h1, sig), h3);
}

__device__ __forceinline__ void put(void* base, bool bf16, int64_t off, float v) {
  if (bf16) static_cast<uint16_t*>(base)[off] = f32_to_bf16(v);
  else static_cast<float*>(base)[off] = v;
}

// The epilogue of one accumulator position (row < segment end and col < N checked by the caller).
template <Epi EPI, int NB>
__device__ __forceinline__ void grouped_store(const GroupedParams& p, int64_t row, int64_t col, const float (&v)[NB]) {
  const int64_t off = row * p.N + col;
  if constexpr (EPI == Epi::kPlain) {
    put(p.y, p.y_bf16, off, v[0]);
  } else if constexpr (EPI == Epi::kScaled) {
    put(p.y, p.y_bf16, off, p.row_scale[row] * v[0]);
  } else {
    put(p.y, p.y_bf16, off, swiglu_value(v[0], v[1]));
    if (p.h1 != nullptr) put(p.h1, p.y_bf16, off, v[0]);
    if (p.h3 != nullptr) put(p.h3, p.y_bf16, off, v[NB - 1]);
  }
}

// Virtual m-tile vt of a grouped GEMM with BM-row tiles -> (expert e, segment end b, first row
// m0); false when vt is an idle tile (past its expert's segment).
template <int BM>
__device__ __forceinline__ bool virtual_tile(const GroupedParams& p, int64_t vt, int64_t& e, int64_t& b, int64_t& m0) {
  // Largest e in [0, E) with start(e) = floor(clamped offsets[e] / BM) + e <= vt (start(0) = 0).
  int64_t lo = 0, hi = p.E;
  while (hi - lo > 1) {
    const int64_t mid = (lo + hi) >> 1;
    const int64_t start = clamp64(p.offsets[mid], 0, p.R) / BM + mid;
    if (start <= vt) lo = mid; else hi = mid;
  }
  e = lo;
  int64_t a;
  segment(p.offsets, e, p.R, a, b);
  const int64_t mt = vt - (a / BM + e);
  m0 = a + mt * BM;
  return mt >= 0 && m0 < b;
}

template <class Cfg, int NB, Epi EPI, bool KCB, class LA, class LB>
__global__ void __launch_bounds__(Cfg::THREADS, LA::kAsync && LB::kAsync ? Cfg::kMinBlocks : 1)
    grouped_gemm_kernel(GroupedParams p) {
  extern __shared__ __align__(16) uint16_t smem[];
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * Cfg::BN;
  const int64_t vtiles = p.R / Cfg::BM + p.E + 1;
  for (int64_t vt = blockIdx.y; vt < vtiles; vt += gridDim.y) {
    int64_t e, b, m0;
    if (!virtual_tile<Cfg::BM>(p, vt, e, b, m0)) continue;  // block-uniform
    // A = x rows [m0, min(m0 + BM, b)), K contiguous; B = w[e] as an N x K operand.
    LA la;
    la.init(static_cast<const typename LA::Elem*>(p.x), p.K, b, p.K, m0, p.vecA);
    LB lb[NB];
#pragma unroll
    for (int i = 0; i < NB; ++i)
      lb[i].init(static_cast<const typename LB::Elem*>(p.w[i]) + e * p.K * p.N, KCB ? p.K : p.N, p.N, p.K, n0, p.vecB);
    Acc<Cfg, NB> acc;
    zero_acc<Cfg, NB>(acc);
    block_tile_mma<Cfg, NB, true, KCB>(acc, smem, la, lb, p.K);
    for_each_acc<Cfg, NB>(acc, [&](int r, int c, const float (&v)[NB]) {
      const int64_t row = m0 + r, col = n0 + c;
      if (row < b && col < p.N) grouped_store<EPI, NB>(p, row, col, v);
    });
  }
}

template <int NB, Epi EPI, bool KCB>
__global__ void __launch_bounds__(simt::THREADS) grouped_gemm_simt_kernel(GroupedParams p) {
  __shared__ __align__(16) simt::Smem<NB> sm;
  constexpr int BN = simt::Shape<NB>::BN;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * BN;
  const int64_t vtiles = p.R / simt::BM + p.E + 1;
  for (int64_t vt = blockIdx.y; vt < vtiles; vt += gridDim.y) {
    int64_t e, b, m0;
    if (!virtual_tile<simt::BM>(p, vt, e, b, m0)) continue;
    simt::F32Loader<simt::BM, true> la{static_cast<const float*>(p.x), p.K, b, p.K, m0};
    simt::F32Loader<BN, KCB> lb[NB];
#pragma unroll
    for (int i = 0; i < NB; ++i)
      lb[i] = {static_cast<const float*>(p.w[i]) + e * p.K * p.N, KCB ? p.K : p.N, p.N, p.K, n0};
    simt::Acc<NB> acc;
    simt::zero_acc<NB>(acc);
    simt::block_tile<NB, true, KCB>(acc, sm, la, lb, p.K);
    simt::for_each_acc<NB>(acc, [&](int r, int c, const float (&v)[NB]) {
      const int64_t row = m0 + r, col = n0 + c;
      if (row < b && col < p.N) grouped_store<EPI, NB>(p, row, col, v);
    });
  }
}

struct WgradParams {
  const void* x;
  const void* dy;
  const int32_t* offsets;
  float* dw;
  int64_t E, R, K, N;
  bool vecA, vecB;
};

template <class Cfg, class LA, class LB>
__global__ void __launch_bounds__(Cfg::THREADS, LA::kAsync && LB::kAsync ? Cfg::kMinBlocks : 1)
    grouped_wgrad_kernel(WgradParams p) {
  extern __shared__ __align__(16) uint16_t smem[];
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * Cfg::BN;
  const int64_t ktiles = (p.K + Cfg::BM - 1) / Cfg::BM;
  for (int64_t e = blockIdx.z; e < p.E; e += gridDim.z) {
    int64_t a, b;
    segment(p.offsets, e, p.R, a, b);
    for (int64_t kt = blockIdx.y; kt < ktiles; kt += gridDim.y) {
      const int64_t m0 = kt * Cfg::BM;  // output row = column of x
      // A = x^T: element (m = column of x, k = row r - a) at x[(a + k) * K + m] (MN contiguous);
      // B = dy: element (n, k) at dy[(a + k) * N + n] (MN contiguous). Reduction length b - a.
      LA la;
      la.init(static_cast<const typename LA::Elem*>(p.x) + a * p.K, p.K, p.K, b - a, m0, p.vecA);
      LB lb[1];
      lb[0].init(static_cast<const typename LB::Elem*>(p.dy) + a * p.N, p.N, p.N, b - a, n0, p.vecB);
      Acc<Cfg, 1> acc;
      zero_acc<Cfg, 1>(acc);
      block_tile_mma<Cfg, 1, false, false>(acc, smem, la, lb, b - a);
      float* dwe = p.dw + e * p.K * p.N;
      for_each_acc<Cfg, 1>(acc, [&](int r, int c, const float (&v)[1]) {
        const int64_t row = m0 + r, col = n0 + c;
        if (row < p.K && col < p.N) dwe[row * p.N + col] = v[0];
      });
    }
  }
}

__global__ void __launch_bounds__(simt::THREADS) grouped_wgrad_f32_kernel(WgradParams p) {
  __shared__ __align__(16) simt::Smem<1> sm;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * simt::Shape<1>::BN;
  const int64_t ktiles = (p.K + simt::BM - 1) / simt::BM;
  for (int64_t e = blockIdx.z; e < p.E; e += gridDim.z) {
    int64_t a, b;
    segment(p.offsets, e, p.R, a, b);
    for (int64_t kt = blockIdx.y; kt < ktiles; kt += gridDim.y) {
      const int64_t m0 = kt * simt::BM;
      simt::F32Loader<simt::BM, false> la{static_cast<const float*>(p.x) + a * p.K, p.K, p.K, b - a, m0};
      simt::F32Loader<simt::Shape<1>::BN, false> lb[1] = {{static_cast<const float*>(p.dy) + a * p.N, p.N, p.N, b - a, n0}};
      simt::Acc<1> acc;
      simt::zero_acc<1>(acc);
      simt::block_tile<1, false, false>(acc, sm, la, lb, b - a);
      float* dwe = p.dw + e * p.K * p.N;
      simt::for_each_acc<1>(acc, [&](int r, int c, const float (&v)[1]) {
        const int64_t row = m0 + r, col = n0 + c;
        if (row < p.K && col < p.N) dwe[row * p.N + col] = v[0];
      });
    }
  }
}

unsigned cap65535(int64_t v) { return static_cast<unsigned>(v < 1 ? 1 : (v > 65535 ? 65535 : v)); }

unsigned n_tiles(int64_t N, int bn, const char* op) {
  const int64_t t = (N + bn - 1) / bn;
  if (t > INT32_MAX) fail("ERR_ARG", "cuda ", op, ": N = ", N, " is too large");
  return static_cast<unsigned>(t);
}

template <class Cfg, int NB, Epi EPI, bool KCB, class LA, class LB>
void launch_grouped_cfg(cudaStream_t s, const GroupedParams& p, const char* op) {
  constexpr int bytes = SmemPlan<Cfg, NB>::kBytes;
  static std::atomic<uint64_t> smem_set{0};
  auto kernel = grouped_gemm_kernel<Cfg, NB, EPI, KCB, LA, LB>;
  allow_dynamic_smem(kernel, bytes, smem_set, op);
  const dim3 grid(n_tiles(p.N, Cfg::BN, op), cap65535(p.R / Cfg::BM + p.E + 1));
  kernel<<<grid, Cfg::THREADS, bytes, s>>>(p);
}

template <class Cfg, int NB, Epi EPI, typename TA, typename TB, bool KCB>
void launch_grouped_loaders(cudaStream_t s, const GroupedParams& p, const char* op) {
  if constexpr (sizeof(TA) == 2 && sizeof(TB) == 2) {
    if (p.vecA && p.vecB) {
      launch_grouped_cfg<Cfg, NB, EPI, KCB, AsyncLoader<Cfg::BM, true, Cfg::THREADS>,
                         AsyncLoader<Cfg::BN, KCB, Cfg::THREADS>>(s, p, op);
      return;
    }
  }
  launch_grouped_cfg<Cfg, NB, EPI, KCB, StagedLoader<TA, Cfg::BM, true, Cfg::THREADS>,
                     StagedLoader<TB, Cfg::BN, KCB, Cfg::THREADS>>(s, p, op);
}

// The M tile rule of the header comment.
bool long_segments(const GroupedParams& p) { return p.R >= 256 * p.E; }

template <Epi EPI, typename TA, typename TB, bool KCB>
void launch_grouped_k(cudaStream_t s, const GroupedParams& p, const char* op) {
  constexpr int NB = EPI == Epi::kSwiglu ? 2 : 1;
  if constexpr (sizeof(TA) == 4 && sizeof(TB) == 4) {
    const dim3 grid(n_tiles(p.N, simt::Shape<NB>::BN, op), cap65535(p.R / simt::BM + p.E + 1));
    grouped_gemm_simt_kernel<NB, EPI, KCB><<<grid, simt::THREADS, 0, s>>>(p);
  } else if constexpr (NB == 2) {
    if (long_segments(p)) launch_grouped_loaders<CfgDual128x64, NB, EPI, TA, TB, KCB>(s, p, op);
    else launch_grouped_loaders<CfgDual64x64, NB, EPI, TA, TB, KCB>(s, p, op);
  } else {
    if (long_segments(p)) launch_grouped_loaders<Cfg128x128, NB, EPI, TA, TB, KCB>(s, p, op);
    else launch_grouped_loaders<Cfg64x128, NB, EPI, TA, TB, KCB>(s, p, op);
  }
}

template <Epi EPI>
void launch_grouped(cudaStream_t s, DType dt_x, DType dt_w, bool trans_w, const GroupedParams& p, const char* op) {
  const auto go = [&](auto ta, auto tb) {
    using TA = decltype(ta);
    using TB = decltype(tb);
    if (trans_w) launch_grouped_k<EPI, TA, TB, true>(s, p, op);
    else launch_grouped_k<EPI, TA, TB, false>(s, p, op);
  };
  if (dt_x == DType::F32 && dt_w == DType::F32) go(float{}, float{});
  else if (dt_x == DType::F32) go(float{}, uint16_t{});
  else if (dt_w == DType::F32) go(uint16_t{}, float{});
  else go(uint16_t{}, uint16_t{});
}

template <class LA, class LB>
void launch_wgrad_cfg(cudaStream_t s, const WgradParams& p) {
  using Cfg = Cfg128x128;
  constexpr int bytes = SmemPlan<Cfg, 1>::kBytes;
  static std::atomic<uint64_t> smem_set{0};
  auto kernel = grouped_wgrad_kernel<Cfg, LA, LB>;
  allow_dynamic_smem(kernel, bytes, smem_set, "grouped_gemm_wgrad");
  const dim3 grid(n_tiles(p.N, Cfg::BN, "grouped_gemm_wgrad"), cap65535((p.K + Cfg::BM - 1) / Cfg::BM), cap65535(p.E));
  kernel<<<grid, Cfg::THREADS, bytes, s>>>(p);
}

template <typename TA, typename TB>
void launch_wgrad(cudaStream_t s, const WgradParams& p) {
  using Cfg = Cfg128x128;
  if constexpr (sizeof(TA) == 4 && sizeof(TB) == 4) {
    const dim3 grid(n_tiles(p.N, simt::Shape<1>::BN, "grouped_gemm_wgrad"), cap65535((p.K + simt::BM - 1) / simt::BM),
                    cap65535(p.E));
    grouped_wgrad_f32_kernel<<<grid, simt::THREADS, 0, s>>>(p);
    return;
  } else {
    if constexpr (sizeof(TA) == 2 && sizeof(TB) == 2) {
      if (p.vecA && p.vecB) {
        launch_wgrad_cfg<AsyncLoader<Cfg::BM, false, Cfg::THREADS>, AsyncLoader<Cfg::BN, false, Cfg::THREADS>>(s, p);
        return;
      }
    }
    launch_wgrad_cfg<StagedLoader<TA, Cfg::BM, false, Cfg::THREADS>, StagedLoader<TB, Cfg::BN, false, Cfg::THREADS>>(s, p);
  }
}

void check_float(const char* op, DType dt) {
  if (dt != DType::F32 && dt != DType::BF16) bad_dtype(op, dt);
}

// Validates the offsets and zeroes the output rows past offsets[E] of each non-null output.
void grouped_prep(cudaStream_t s, int32_t* err, const int32_t* offsets, int64_t E, int64_t R, int64_t N, DType dt_y,
                  void* const (&outs)[3], const char* op) {
  const int64_t n = R * N > E + 1 ? R * N : E + 1;
  bool launched = false;
  for (void* y : outs) {
    if (y == nullptr) continue;
    if (dt_y == DType::BF16)
      grouped_prep_kernel<uint16_t><<<grid_for(n), kThreads, 0, s>>>(offsets, E, R, N, static_cast<uint16_t*>(y), err);
    else
      grouped_prep_kernel<float><<<grid_for(n), kThreads, 0, s>>>(offsets, E, R, N, static_cast<float*>(y), err);
    launched = true;
  }
  if (!launched) grouped_prep_kernel<float><<<grid_for(E + 1), kThreads, 0, s>>>(offsets, E, R, N, nullptr, err);
  check_launch(op);
}

void check_sizes(const char* op, int64_t E, int64_t R, int64_t K, int64_t N) {
  if (E < 0 || R < 0 || K < 0 || N < 0) fail("ERR_ARG", "cuda ", op, ": bad sizes E=", E, " R=", R, " K=", K, " N=", N);
}

// The common start of the grouped entry points: dtype and size checks, then the offsets check and the
// zeroing of each non-null output's rows past offsets[E]. False when there is nothing to compute.
bool grouped_begin(const char* op, cudaStream_t s, int32_t* err, DType dt_x, DType dt_w, DType dt_y,
                   const int32_t* offsets, int64_t E, int64_t R, int64_t K, int64_t N, void* const (&outs)[3]) {
  const std::string name(op);
  check_float((name + " (x)").c_str(), dt_x);
  check_float((name + " (w)").c_str(), dt_w);
  check_float((name + " (y)").c_str(), dt_y);
  check_sizes(op, E, R, K, N);
  grouped_prep(s, err, offsets, E, R, N, dt_y, outs, (name + " (offsets / tail)").c_str());
  return E > 0 && R > 0 && N > 0;
}

GroupedParams grouped_params(DType dt_x, const void* x, DType dt_w, const void* w0, const void* w1, bool trans_w,
                             const int32_t* offsets, int64_t E, int64_t R, int64_t K, int64_t N, DType dt_y) {
  GroupedParams p{};
  p.x = x;
  p.w[0] = w0;
  p.w[1] = w1;
  p.offsets = offsets;
  p.E = E;
  p.R = R;
  p.K = K;
  p.N = N;
  p.y_bf16 = dt_y == DType::BF16;
  p.vecA = vec_ok(x, K, 0, dt_x == DType::BF16 ? 8 : 4);
  p.vecB = vec_ok(w0, trans_w ? K : N, K * N, dt_w == DType::BF16 ? 8 : 4) &&
           (w1 == nullptr || vec_ok(w1, trans_w ? K : N, K * N, dt_w == DType::BF16 ? 8 : 4));
  return p;
}

}  // namespace

void grouped_gemm(const LaunchCtx& ctx, DType dt_x, const void* x, DType dt_w, const void* w, bool trans_w,
                  const int32_t* offsets, int64_t E, int64_t R, int64_t K, int64_t N, DType dt_y, void* y) {
  cudaStream_t s = as_stream(ctx.stream);
  if (!grouped_begin("grouped_gemm", s, ctx.err, dt_x, dt_w, dt_y, offsets, E, R, K, N, {y, nullptr, nullptr})) return;
  GroupedParams p = grouped_params(dt_x, x, dt_w, w, nullptr, trans_w, offsets, E, R, K, N, dt_y);
  p.y = y;
  launch_grouped<Epi::kPlain>(s, dt_x, dt_w, trans_w, p, "grouped_gemm");
  check_launch("grouped_gemm");
}

void grouped_gemm_scaled(const LaunchCtx& ctx, DType dt_x, const void* x, DType dt_w, const void* w, bool trans_w,
                         const int32_t* offsets, const float* row_scale, int64_t E, int64_t R, int64_t K, int64_t N,
                         DType dt_y, void* y) {
  cudaStream_t s = as_stream(ctx.stream);
  if (!grouped_begin("grouped_gemm_scaled", s, ctx.err, dt_x, dt_w, dt_y, offsets, E, R, K, N, {y, nullptr, nullptr})) return;
  GroupedParams p = grouped_params(dt_x, x, dt_w, w, nullptr, trans_w, offsets, E, R, K, N, dt_y);
  p.y = y;
  p.row_scale = row_scale;
  launch_grouped<Epi::kScaled>(s, dt_x, dt_w, trans_w, p, "grouped_gemm_scaled");
  check_launch("grouped_gemm_scaled");
}

void grouped_gemm_swiglu(const LaunchCtx& ctx, DType dt_x, const void* x, DType dt_w, const void* w1, const void* w3,
                         bool trans_w, const int32_t* offsets, int64_t E, int64_t R, int64_t K, int64_t N, DType dt_y,
                         void* a, void* h1, void* h3) {
  cudaStream_t s = as_stream(ctx.stream);
  if (!grouped_begin("grouped_gemm_swiglu", s, ctx.err, dt_x, dt_w, dt_y, offsets, E, R, K, N, {a, h1, h3})) return;
  GroupedParams p = grouped_params(dt_x, x, dt_w, w1, w3, trans_w, offsets, E, R, K, N, dt_y);
  p.y = a;
  p.h1 = h1;
  p.h3 = h3;
  launch_grouped<Epi::kSwiglu>(s, dt_x, dt_w, trans_w, p, "grouped_gemm_swiglu");
  check_launch("grouped_gemm_swiglu");
}

void grouped_gemm_wgrad(const LaunchCtx& ctx, DType dt_x, const void* x, DType dt_dy, const void* dy,
                        const int32_t* offsets, int64_t E, int64_t R, int64_t K, int64_t N, float* dw) {
  check_float("grouped_gemm_wgrad (x)", dt_x);
  check_float("grouped_gemm_wgrad (dy)", dt_dy);
  check_sizes("grouped_gemm_wgrad", E, R, K, N);
  cudaStream_t s = as_stream(ctx.stream);
  grouped_prep(s, ctx.err, offsets, E, R, N, DType::F32, {nullptr, nullptr, nullptr}, "grouped_gemm_wgrad (offsets)");
  if (E == 0 || K == 0 || N == 0) return;
  WgradParams p;
  p.x = x;
  p.dy = dy;
  p.offsets = offsets;
  p.dw = dw;
  p.E = E;
  p.R = R;
  p.K = K;
  p.N = N;
  p.vecA = vec_ok(x, K, 0, dt_x == DType::BF16 ? 8 : 4);
  p.vecB = vec_ok(dy, N, 0, dt_dy == DType::BF16 ? 8 : 4);
  if (dt_x == DType::F32 && dt_dy == DType::F32) launch_wgrad<float, float>(s, p);
  else if (dt_x == DType::F32) launch_wgrad<float, uint16_t>(s, p);
  else if (dt_dy == DType::F32) launch_wgrad<uint16_t, float>(s, p);
  else launch_wgrad<uint16_t, uint16_t>(s, p);
  check_launch("grouped_gemm_wgrad");
}

}  // namespace moma::cuda
