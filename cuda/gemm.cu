// Tensor-core GEMM: C[b] = alpha * op(A[b]) @ op(B[b]) + beta * C[b] (row-major, GemmShape),
// bf16 x bf16 -> f32 with mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 (sm_80+, so every
// architecture in MOMA_CUDA_ARCHS runs the same code; Hopper's wgmma path is future work).
//
// FLOPs 2*M*N*K per batch entry; bytes (ideal) = (M*K + K*N) * in_size + M*N * out_size
// (+ M*N * out_size when beta != 0). With 128x128 tiles each A/B element is re-read N/128 resp.
// M/128 times (mostly from L2).
//
// Block tile 128 (M) x 128 (N) x 32 (K), 256 threads = 8 warps in a 2 (M) x 4 (N) grid; each warp
// owns a 64 x 32 sub-tile = 4 (m16) x 4 (n8) mma tiles = 64 f32 accumulators per thread.
//
// Operand tiles. Both operands are handled as an "MN x K" tile (A: m x k; B: n x k). In global
// memory either K is the contiguous index (KC: A not transposed, B transposed) or MN is (MNC: A
// transposed, B not transposed). Shared memory keeps the global orientation, converted to bf16:
//   KC : s[mn][k], row stride 40 bf16 (32 + 8 pad, 80 B: the 8 rows of an ldmatrix are 5 16-byte
//        units apart -> 8 distinct bank groups, conflict free)
//   MNC: s[k][mn], row stride 136 bf16 (128 + 8 pad, 272 B = 17 units -> conflict free)
// Global -> registers -> shared: every thread moves 16-byte chunks along the contiguous index
// (8 bf16 or 4 f32 elements): 2 (bf16) or 4 (f32) chunks per operand per k-tile. A chunk uses one
// 16-byte load when the operand is 16-byte aligned (pointer, ld and batch stride) and the chunk is
// entirely inside the matrix; otherwise element loads with bounds checks (zero fill). float32 is
// rounded to bf16 (round to nearest even, bf16.h) when the registers are written to shared memory.
// Pipelining: two shared stages; tile kt+1 is loaded into registers before the mma work on tile kt
// and stored to the other stage after it; one __syncthreads per k-tile (see the loop).
//
// Fragments (PTX ISA, mma.m16n8k16 with .bf16; g = lane / 4, t = lane % 4; each .b32 register holds
// two bf16, the lower column / k index in the low half):
//   A (16 x 16, row): a[0] = (row g,   k 2t..2t+1)   a[1] = (row g+8, k 2t..2t+1)
//                     a[2] = (row g,   k 2t+8..+9)   a[3] = (row g+8, k 2t+8..+9)
//   B (16 x 8, col):  b[0] = (k 2t..2t+1, col g)     b[1] = (k 2t+8..+9, col g)
//   C/D (16 x 8 f32): c[0], c[1] = (row g, col 2t, 2t+1)   c[2], c[3] = (row g+8, col 2t, 2t+1)
// ldmatrix.m8n8.x4: lanes 8i..8i+7 give the row addresses of matrix i (i = 0..3); register i of
// lane l receives row l/4, columns 2(l%4), 2(l%4)+1 of matrix i (.trans: of its transpose).
//   A, KC  (s[m][k]): matrices (m0-7,k0-7) (m8-15,k0-7) (m0-7,k8-15) (m8-15,k8-15) = a[0..3];
//          lane l -> &s[mb + (l & 15)][ks + (l >> 4) * 8].
//   A, MNC (s[k][m], .trans): same matrices; lane l (i = l >> 3) -> stored row k = ks + (l & 7) +
//          8 * (i >> 1), column m = mb + 8 * (i & 1).
//   B, KC  (s[n][k]): matrices (n0-7,k0-7) (n0-7,k8-15) (n8-15,k0-7) (n8-15,k8-15) =
//          b[nt][0], b[nt][1], b[nt+1][0], b[nt+1][1]; lane l -> &s[nb + (l & 7) + 8 * (i >> 1)][ks + 8 * (i & 1)].
//   B, MNC (s[k][n], .trans): same matrices; lane l -> stored row k = ks + (l & 7) + 8 * (i & 1),
//          column n = nb + 8 * (i >> 1).
// Epilogue: out = alpha * acc (+ beta * C in C's dtype only when beta != 0: C is never read
// otherwise), bounds-checked scalar stores as f32 or bf16.
// Code: the loaders, fragments and the block-tile main loop live in mma_tiles.cuh (shared with
// grouped_gemm.cu).
// Batches: blockIdx.z (grid-stride up to 65535), strides in elements, 0 = broadcast. M tiles:
// blockIdx.y (grid-stride up to 65535); N tiles: blockIdx.x.
#include <cuda_runtime.h>

#include <cstdint>

#include "common.cuh"
#include "kernels.h"
#include "mma_tiles.cuh"

namespace moma::cuda {
using namespace detail;

namespace {
using namespace detail::mma;

struct GemmParams {
  int64_t batch, M, N, K, lda, ldb, ldc, strideA, strideB, strideC;
  float alpha, beta;
  bool c_bf16;
  bool vecA, vecB;
};

template <typename TA, typename TB, bool KCA, bool KCB>
__global__ void __launch_bounds__(kGemmThreads, 1)
    gemm_kernel(const TA* __restrict__ A, const TB* __restrict__ B, void* __restrict__ C, GemmParams p) {
  __shared__ __align__(16) SmemTiles sm;

  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * BN;
  const int64_t mtiles = (p.M + BM - 1) / BM;

  for (int64_t b = blockIdx.z; b < p.batch; b += gridDim.z) {
    const TA* Ab = A + b * p.strideA;
    const TB* Bb = B + b * p.strideB;
    for (int64_t mt = blockIdx.y; mt < mtiles; mt += gridDim.y) {
      const int64_t m0 = mt * BM;
      Acc acc;
      zero_acc(acc);
      block_tile_mma<TA, TB, KCA, KCB>(acc, sm, Ab, p.lda, p.M, m0, p.vecA, Bb, p.ldb, p.N, n0, p.vecB, p.K);

      // Epilogue.
      const int64_t cbase = b * p.strideC;
      for_each_acc(acc, [&](int r, int c, float a) {
        const int64_t row = m0 + r, col = n0 + c;
        if (row >= p.M || col >= p.N) return;
        const int64_t off = cbase + row * p.ldc + col;
        float v = p.alpha * a;
        if (p.c_bf16) {
          uint16_t* cp = static_cast<uint16_t*>(C) + off;
          if (p.beta != 0.0f) v += p.beta * bf16_to_f32(*cp);
          *cp = f32_to_bf16(v);
        } else {
          float* cp = static_cast<float*>(C) + off;
          if (p.beta != 0.0f) v += p.beta * *cp;
          *cp = v;
        }
      });
    }
  }
}

template <typename TA, typename TB, bool KCA, bool KCB>
void launch_gemm(cudaStream_t s, const void* A, const void* B, void* C, const GemmParams& p) {
  int64_t ntiles = (p.N + BN - 1) / BN, mtiles = (p.M + BM - 1) / BM;
  if (ntiles > INT32_MAX) fail("ERR_ARG", "cuda gemm: N = ", p.N, " is too large");
  dim3 grid(static_cast<unsigned>(ntiles), static_cast<unsigned>(mtiles < 65535 ? mtiles : 65535),
            static_cast<unsigned>(p.batch < 65535 ? p.batch : 65535));
  gemm_kernel<TA, TB, KCA, KCB><<<grid, kGemmThreads, 0, s>>>(static_cast<const TA*>(A), static_cast<const TB*>(B), C, p);
}

template <typename TA, typename TB>
void launch_gemm_t(cudaStream_t s, const void* A, const void* B, void* C, const GemmParams& p, bool transA, bool transB) {
  // KC(A) = A not transposed (A[m][k]); KC(B) = B transposed (B stored N x K).
  if (!transA && transB) launch_gemm<TA, TB, true, true>(s, A, B, C, p);
  else if (!transA && !transB) launch_gemm<TA, TB, true, false>(s, A, B, C, p);
  else if (transA && transB) launch_gemm<TA, TB, false, true>(s, A, B, C, p);
  else launch_gemm<TA, TB, false, false>(s, A, B, C, p);
}

}  // namespace

void gemm(void* stream, DType dt_a, const void* A, DType dt_b, const void* B, DType dt_c, void* C, const GemmShape& g) {
  if (dt_a != DType::F32 && dt_a != DType::BF16) bad_dtype("gemm (A)", dt_a);
  if (dt_b != DType::F32 && dt_b != DType::BF16) bad_dtype("gemm (B)", dt_b);
  if (dt_c != DType::F32 && dt_c != DType::BF16) bad_dtype("gemm (C)", dt_c);
  if (g.batch <= 0 || g.M <= 0 || g.N <= 0) return;
  cudaStream_t s = as_stream(stream);
  GemmParams p;
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
  if (dt_a == DType::F32 && dt_b == DType::F32) launch_gemm_t<float, float>(s, A, B, C, p, g.transA, g.transB);
  else if (dt_a == DType::F32) launch_gemm_t<float, uint16_t>(s, A, B, C, p, g.transA, g.transB);
  else if (dt_b == DType::F32) launch_gemm_t<uint16_t, float>(s, A, B, C, p, g.transA, g.transB);
  else launch_gemm_t<uint16_t, uint16_t>(s, A, B, C, p, g.transA, g.transB);
  check_launch("gemm");
}

}  // namespace moma::cuda
