// GEMM: C[b] = alpha * op(A[b]) @ op(B[b]) + beta * C[b] (row-major, GemmShape), two paths:
//   * bf16 tensor cores (A or B bf16): mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 (sm_80+,
//     so every architecture in MOMA_CUDA_ARCHS runs the same code; no wgmma/TMA path: it could not
//     be run here), f32 accumulation. A float32 operand next to a bf16 one is rounded to bf16 on
//     load: the product already carries the bf16 operand's rounding (relative 2^-9 per element),
//     and rounding the other operand adds an error of the same size.
//   * float32-accurate (A and B float32): the SIMT f32 block tile of gemm_simt.cuh (why SIMT and
//     not split bf16 / 3xTF32: its header). Error like the CPU's f32 GEMM, so the router logits
//     (float32 by design) pick the same experts on both backends.
//
// FLOPs 2*M*N*K per batch entry; bytes (ideal) = (M*K + K*N) * in_size + M*N * out_size
// (+ M*N * out_size when beta != 0). A block tile of BM x BN re-reads A N/BN times and B M/BM times
// (mostly from L2). Ceiling: the bf16 dense tensor-core rate (989 TFLOP/s nominal on an H100 SXM;
// mma.sync reaches ~60-70% of it, wgmma the rest), for large M, N, K.
//
// Tile shapes (mma_tiles.cuh TileCfg), chosen per call so that the grid covers the GPU:
//   128x128 (8 warps of 64 x 32) when ceil(M/128) ceil(N/128) batch >= #SMs; else 64x128 (M < N)
//   or 128x64 (M >= N), then the other one, when its tile count reaches #SMs; else 64x64
//   (4 warps of 32 x 32). gemm_tile_config() names the choice (tests cover every one).
// Block tile BM x BN x BK (BK = 32); each warp owns WM x WN = MI (m16) x NI (n8) mma tiles and
// MI * NI * 4 f32 accumulators per thread.
//
// Operand tiles. Both operands are handled as an "MN x K" tile (A: m x k; B: n x k). In global
// memory either K is the contiguous index (KC: A not transposed, B transposed) or MN is (MNC: A
// transposed, B not transposed). Shared memory keeps the global orientation as bf16 in 16-byte
// chunks, XOR-swizzled (SwizzledTile in mma_tiles.cuh):
//   KC : s[mn][k], 64-byte rows, chunk c of row mn stored at c ^ ((mn >> 1) & 3)
//   MNC: s[k][mn], MN * 2-byte rows, chunk c of row k stored at c ^ (k & 7)
// so that the 16-byte writes of cp.async / the staged stores and the 8 row reads of every
// ldmatrix phase hit 8 distinct 16-byte bank groups (no padding, no conflicts).
// Loads, global -> shared, per operand:
//   * cp.async (bf16 operand, pointer 16-byte aligned, ld and batch stride multiples of 8, and the
//     other operand qualifies too): cp.async.cg.shared.global 16 B per chunk along the contiguous
//     index; a chunk crossing the matrix edge copies its in-range elements and zero-fills the rest
//     (src-size operand), a chunk wholly outside copies 0 bytes.
//   * staged (otherwise: float32 operands, unaligned pointers / leading dimensions): 16-byte loads
//     when allowed and the chunk is inside the matrix, else bounds-checked element loads; the
//     registers are rounded to bf16 (nearest even) and stored one k-tile ahead.
// Pipeline: a ring of kStages = 4 stages per operand (A 128 x 32 + B 128 x 32 bf16 = 16 KiB per
// stage for 128x128, 64 KiB dynamic shared memory, opted in above 48 KiB from the kernel's static
// + dynamic size against sharedMemPerBlockOptin, cached per device); cp.async keeps kStages - 1
// tiles in flight, commit group g <-> k-tile g, cp.async.wait_group(kStages - 2) before each
// k-tile's barrier. Exact order of waits, barriers and stage reuse: block_tile_mma in mma_tiles.cuh.
//
// Fragments (PTX ISA, mma.m16n8k16 with .bf16; g = lane / 4, t = lane % 4; each .b32 register holds
// two bf16, the lower column / k index in the low half):
//   A (16 x 16, row): a[0] = (row g,   k 2t..2t+1)   a[1] = (row g+8, k 2t..2t+1)
//                     a[2] = (row g,   k 2t+8..+9)   a[3] = (row g+8, k 2t+8..+9)
//   B (16 x 8, col):  b[0] = (k 2t..2t+1, col g)     b[1] = (k 2t+8..+9, col g)
//   C/D (16 x 8 f32): c[0], c[1] = (row g, col 2t, 2t+1)   c[2], c[3] = (row g+8, col 2t, 2t+1)
// ldmatrix.m8n8.x4: lanes 8i..8i+7 give the row addresses of matrix i (i = 0..3); register i of
// lane l receives row l/4, columns 2(l%4), 2(l%4)+1 of matrix i (.trans: of its transpose).
// Addresses below are logical (mn, k); the swizzle maps each 8-element row start to its chunk.
//   A, KC  (s[m][k]): matrices (m0-7,k0-7) (m8-15,k0-7) (m0-7,k8-15) (m8-15,k8-15) = a[0..3];
//          lane l -> (m = mb + (l & 15), k = ks + (l >> 4) * 8).
//   A, MNC (s[k][m], .trans): same matrices; lane l (i = l >> 3) -> stored row k = ks + (l & 7) +
//          8 * (i >> 1), column m = mb + 8 * (i & 1).
//   B, KC  (s[n][k]): matrices (n0-7,k0-7) (n0-7,k8-15) (n8-15,k0-7) (n8-15,k8-15) =
//          b[nt][0], b[nt][1], b[nt+1][0], b[nt+1][1]; lane l -> (n = nb + (l & 7) + 8 * (i >> 1),
//          k = ks + 8 * (i & 1)).
//   B, MNC (s[k][n], .trans): same matrices; lane l -> stored row k = ks + (l & 7) + 8 * (i & 1),
//          column n = nb + 8 * (i >> 1).
// Epilogue: out = alpha * acc (+ beta * C in C's dtype only when beta != 0: C is never read
// otherwise), bounds-checked scalar stores as f32 or bf16.
// Batches: blockIdx.z (grid-stride up to 65535), strides in elements, 0 = broadcast. M tiles:
// blockIdx.y (grid-stride up to 65535); N tiles: blockIdx.x.
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>

#include "common.cuh"
#include "gemm_simt.cuh"
#include "kernels.h"
#include "mma_tiles.cuh"

namespace moma::cuda {
using namespace detail;

namespace {
using namespace detail::mma;

struct GemmParams {
  const void* A;
  const void* B;
  void* C;
  int64_t batch, M, N, K, lda, ldb, ldc, strideA, strideB, strideC;
  float alpha, beta;
  bool c_bf16;
  bool vecA, vecB;
};

// C element (row, col) of batch entry b from the accumulator value.
__device__ __forceinline__ void store_c(const GemmParams& p, int64_t b, int64_t row, int64_t col, float acc) {
  if (row >= p.M || col >= p.N) return;
  const int64_t off = b * p.strideC + row * p.ldc + col;
  float v = p.alpha * acc;
  if (p.c_bf16) {
    uint16_t* cp = static_cast<uint16_t*>(p.C) + off;
    if (p.beta != 0.0f) v += p.beta * bf16_to_f32(*cp);
    *cp = f32_to_bf16(v);
  } else {
    float* cp = static_cast<float*>(p.C) + off;
    if (p.beta != 0.0f) v += p.beta * *cp;
    *cp = v;
  }
}

template <class Cfg, bool KCA, bool KCB, class LA, class LB>
__global__ void __launch_bounds__(Cfg::THREADS, LA::kAsync && LB::kAsync ? Cfg::kMinBlocks : 1)
    gemm_kernel(GemmParams p) {
  extern __shared__ __align__(16) uint16_t smem[];
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * Cfg::BN;
  const int64_t mtiles = (p.M + Cfg::BM - 1) / Cfg::BM;
  for (int64_t b = blockIdx.z; b < p.batch; b += gridDim.z) {
    const auto* Ab = static_cast<const typename LA::Elem*>(p.A) + b * p.strideA;
    const auto* Bb = static_cast<const typename LB::Elem*>(p.B) + b * p.strideB;
    for (int64_t mt = blockIdx.y; mt < mtiles; mt += gridDim.y) {
      const int64_t m0 = mt * Cfg::BM;
      LA la;
      LB lb[1];
      la.init(Ab, p.lda, p.M, p.K, m0, p.vecA);
      lb[0].init(Bb, p.ldb, p.N, p.K, n0, p.vecB);
      Acc<Cfg, 1> acc;
      zero_acc<Cfg, 1>(acc);
      block_tile_mma<Cfg, 1, KCA, KCB>(acc, smem, la, lb, p.K);
      for_each_acc<Cfg, 1>(acc, [&](int r, int c, const float (&v)[1]) { store_c(p, b, m0 + r, n0 + c, v[0]); });
    }
  }
}

template <bool KCA, bool KCB>
__global__ void __launch_bounds__(simt::THREADS) gemm_simt_kernel(GemmParams p) {
  __shared__ __align__(16) simt::Smem<1> sm;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * simt::Shape<1>::BN;
  const int64_t mtiles = (p.M + simt::BM - 1) / simt::BM;
  for (int64_t b = blockIdx.z; b < p.batch; b += gridDim.z) {
    const float* Ab = static_cast<const float*>(p.A) + b * p.strideA;
    const float* Bb = static_cast<const float*>(p.B) + b * p.strideB;
    for (int64_t mt = blockIdx.y; mt < mtiles; mt += gridDim.y) {
      const int64_t m0 = mt * simt::BM;
      simt::F32Loader<simt::BM, KCA> la{Ab, p.lda, p.M, p.K, m0};
      simt::F32Loader<simt::Shape<1>::BN, KCB> lb[1] = {{Bb, p.ldb, p.N, p.K, n0}};
      simt::Acc<1> acc;
      simt::zero_acc<1>(acc);
      simt::block_tile<1, KCA, KCB>(acc, sm, la, lb, p.K);
      simt::for_each_acc<1>(acc, [&](int r, int c, const float (&v)[1]) { store_c(p, b, m0 + r, n0 + c, v[0]); });
    }
  }
}

dim3 gemm_grid(const GemmParams& p, int bm, int bn) {
  const int64_t ntiles = (p.N + bn - 1) / bn, mtiles = (p.M + bm - 1) / bm;
  if (ntiles > INT32_MAX) fail("ERR_ARG", "cuda gemm: N = ", p.N, " is too large");
  return dim3(static_cast<unsigned>(ntiles), static_cast<unsigned>(mtiles < 65535 ? mtiles : 65535),
              static_cast<unsigned>(p.batch < 65535 ? p.batch : 65535));
}

template <class Cfg, bool KCA, bool KCB, class LA, class LB>
void launch_cfg(cudaStream_t s, const GemmParams& p) {
  constexpr int bytes = SmemPlan<Cfg, 1>::kBytes;
  static std::atomic<uint64_t> smem_set{0};
  auto kernel = gemm_kernel<Cfg, KCA, KCB, LA, LB>;
  allow_dynamic_smem(kernel, bytes, smem_set, "gemm");
  kernel<<<gemm_grid(p, Cfg::BM, Cfg::BN), Cfg::THREADS, bytes, s>>>(p);
}

// Loaders: cp.async for both operands when both are bf16 and 16-byte aligned, else staged.
template <class Cfg, typename TA, typename TB, bool KCA, bool KCB>
void launch_loaders(cudaStream_t s, const GemmParams& p) {
  if constexpr (sizeof(TA) == 2 && sizeof(TB) == 2) {
    if (p.vecA && p.vecB) {
      launch_cfg<Cfg, KCA, KCB, AsyncLoader<Cfg::BM, KCA, Cfg::THREADS>, AsyncLoader<Cfg::BN, KCB, Cfg::THREADS>>(s, p);
      return;
    }
  }
  launch_cfg<Cfg, KCA, KCB, StagedLoader<TA, Cfg::BM, KCA, Cfg::THREADS>, StagedLoader<TB, Cfg::BN, KCB, Cfg::THREADS>>(
      s, p);
}

enum class Tile { k128x128, k128x64, k64x128, k64x64 };

// The tile shape rule of the header comment.
Tile choose_tile(int64_t batch, int64_t M, int64_t N, int sms) {
  const auto tiles = [&](int64_t bm, int64_t bn) {
    const double t = double((M + bm - 1) / bm) * double((N + bn - 1) / bn) * double(batch);
    return t >= double(sms);
  };
  if (tiles(128, 128)) return Tile::k128x128;
  const Tile first = M < N ? Tile::k64x128 : Tile::k128x64, second = M < N ? Tile::k128x64 : Tile::k64x128;
  if (tiles(first == Tile::k64x128 ? 64 : 128, first == Tile::k64x128 ? 128 : 64)) return first;
  if (tiles(second == Tile::k64x128 ? 64 : 128, second == Tile::k64x128 ? 128 : 64)) return second;
  return Tile::k64x64;
}

template <typename TA, typename TB, bool KCA, bool KCB>
void launch_tile(cudaStream_t s, const GemmParams& p, Tile t) {
  switch (t) {
    case Tile::k128x128: launch_loaders<Cfg128x128, TA, TB, KCA, KCB>(s, p); break;
    case Tile::k128x64: launch_loaders<Cfg128x64, TA, TB, KCA, KCB>(s, p); break;
    case Tile::k64x128: launch_loaders<Cfg64x128, TA, TB, KCA, KCB>(s, p); break;
    case Tile::k64x64: launch_loaders<Cfg64x64, TA, TB, KCA, KCB>(s, p); break;
  }
}

template <bool KCA, bool KCB>
void launch_f32(cudaStream_t s, const GemmParams& p) {
  gemm_simt_kernel<KCA, KCB><<<gemm_grid(p, simt::BM, simt::Shape<1>::BN), simt::THREADS, 0, s>>>(p);
}

template <typename TA, typename TB>
void launch_gemm_t(cudaStream_t s, const GemmParams& p, bool transA, bool transB, Tile t) {
  // KC(A) = A not transposed (A[m][k]); KC(B) = B transposed (B stored N x K).
  if constexpr (sizeof(TA) == 4 && sizeof(TB) == 4) {
    if (!transA && transB) launch_f32<true, true>(s, p);
    else if (!transA && !transB) launch_f32<true, false>(s, p);
    else if (transA && transB) launch_f32<false, true>(s, p);
    else launch_f32<false, false>(s, p);
  } else {
    if (!transA && transB) launch_tile<TA, TB, true, true>(s, p, t);
    else if (!transA && !transB) launch_tile<TA, TB, true, false>(s, p, t);
    else if (transA && transB) launch_tile<TA, TB, false, true>(s, p, t);
    else launch_tile<TA, TB, false, false>(s, p, t);
  }
}

const char* tile_name(Tile t) {
  switch (t) {
    case Tile::k128x128: return "mma_bf16 128x128x32";
    case Tile::k128x64: return "mma_bf16 128x64x32";
    case Tile::k64x128: return "mma_bf16 64x128x32";
    case Tile::k64x64: return "mma_bf16 64x64x32";
  }
  return "";
}

void check_dtypes(DType dt_a, DType dt_b, DType dt_c) {
  if (dt_a != DType::F32 && dt_a != DType::BF16) bad_dtype("gemm (A)", dt_a);
  if (dt_b != DType::F32 && dt_b != DType::BF16) bad_dtype("gemm (B)", dt_b);
  if (dt_c != DType::F32 && dt_c != DType::BF16) bad_dtype("gemm (C)", dt_c);
}

}  // namespace

const char* gemm_tile_config(DType dt_a, DType dt_b, const GemmShape& g) {
  check_dtypes(dt_a, dt_b, DType::F32);
  if (dt_a == DType::F32 && dt_b == DType::F32) return "simt_f32 128x128x16";
  return tile_name(choose_tile(g.batch, g.M, g.N, sm_count()));
}

void gemm(const LaunchCtx& ctx, DType dt_a, const void* A, DType dt_b, const void* B, DType dt_c, void* C,
          const GemmShape& g) {
  check_dtypes(dt_a, dt_b, dt_c);
  if (g.batch <= 0 || g.M <= 0 || g.N <= 0) return;
  cudaStream_t s = as_stream(ctx.stream);
  GemmParams p;
  p.A = A;
  p.B = B;
  p.C = C;
  p.batch = g.batch;
  p.M = g.M;
  p.N = g.N;
  p.K = g.K < 0 ? 0 : g.K;
  p.lda = g.lda;
  p.ldb = g.ldb;
  p.ldc = g.ldc;
  p.strideA = g.strideA;
  p.strideB = g.strideB;
  p.strideC = g.strideC;
  p.alpha = g.alpha;
  p.beta = g.beta;
  p.c_bf16 = dt_c == DType::BF16;
  p.vecA = vec_ok(A, g.lda, g.strideA, dt_a == DType::BF16 ? 8 : 4);
  p.vecB = vec_ok(B, g.ldb, g.strideB, dt_b == DType::BF16 ? 8 : 4);
  const Tile t = choose_tile(p.batch, p.M, p.N, sm_count());
  if (dt_a == DType::F32 && dt_b == DType::F32) launch_gemm_t<float, float>(s, p, g.transA, g.transB, t);
  else if (dt_a == DType::F32) launch_gemm_t<float, uint16_t>(s, p, g.transA, g.transB, t);
  else if (dt_b == DType::F32) launch_gemm_t<uint16_t, float>(s, p, g.transA, g.transB, t);
  else launch_gemm_t<uint16_t, uint16_t>(s, p, g.transA, g.transB, t);
  check_launch("gemm");
}

}  // namespace moma::cuda
