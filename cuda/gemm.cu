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
// Batches: blockIdx.z (grid-stride up to 65535), strides in elements, 0 = broadcast. M tiles:
// blockIdx.y (grid-stride up to 65535); N tiles: blockIdx.x.
#include <cuda_runtime.h>

#include <cstdint>

#include "common.cuh"
#include "kernels.h"

namespace moma::cuda {
using namespace detail;

namespace {

constexpr int BM = 128, BN = 128, BK = 32;
constexpr int kGemmThreads = 256;
constexpr int LDK = BK + 8;    // KC tile row stride (bf16 elements)
constexpr int LDMN = BM + 8;   // MNC tile row stride
constexpr int kTileElems = (BM * LDK > BK * LDMN) ? BM * LDK : BK * LDMN;  // 5120 bf16 = 10 KiB
static_assert(BM == BN, "one loader shape serves both operands");

struct GemmParams {
  int64_t batch, M, N, K, lda, ldb, ldc, strideA, strideB, strideC;
  float alpha, beta;
  bool c_bf16;
  bool vecA, vecB;
};

// Moves one 128 x 32 (MN x K) operand tile global -> registers -> shared (bf16).
template <typename T, bool KC>
struct TileLoader {
  static constexpr int VEC = 16 / static_cast<int>(sizeof(T));         // elements per 16-byte chunk
  static constexpr int CHUNKS = BM * BK / VEC / kGemmThreads;           // per thread: 2 (bf16) or 4 (f32)
  static constexpr int CPR = KC ? BK / VEC : BM / VEC;                  // chunks per contiguous row
  uint4 r[CHUNKS];  // raw bits: 8 bf16 or 4 f32 per chunk

  // Chunk p of this thread: (mn, k) of its first element within the tile.
  __device__ __forceinline__ static void coords(int tid, int p, int& mn, int& k) {
    int q = tid + kGemmThreads * p;
    if (KC) {
      mn = q / CPR;
      k = (q % CPR) * VEC;
    } else {
      k = q / CPR;
      mn = (q % CPR) * VEC;
    }
  }

  __device__ __forceinline__ void load(const T* __restrict__ ptr, int64_t ld, int64_t MN, int64_t K, int64_t mn0,
                                       int64_t k0, bool vec_ok, int tid) {
#pragma unroll
    for (int p = 0; p < CHUNKS; ++p) {
      int mn, k;
      coords(tid, p, mn, k);
      const int64_t gm = mn0 + mn, gk = k0 + k;
      // element e of the chunk is (gm, gk + e) for KC and (gm + e, gk) for MNC
      const bool full = KC ? (gm < MN && gk + VEC <= K) : (gk < K && gm + VEC <= MN);
      const T* base = ptr + (KC ? gm * ld + gk : gk * ld + gm);
      if (vec_ok && full) {
        r[p] = *reinterpret_cast<const uint4*>(base);
      } else {
        T v[VEC];
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
          const bool in = KC ? (gm < MN && gk + e < K) : (gk < K && gm + e < MN);
          v[e] = in ? base[e] : T(0);
        }
        r[p] = pack(v);
      }
    }
  }

  __device__ __forceinline__ static uint4 pack(const T (&v)[VEC]) {
    uint4 out;
    uint32_t w[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      if constexpr (sizeof(T) == 2) {
        w[i] = static_cast<uint32_t>(v[2 * i]) | (static_cast<uint32_t>(v[2 * i + 1]) << 16);
      } else {
        w[i] = f32_bits(v[i]);
      }
    }
    out.x = w[0]; out.y = w[1]; out.z = w[2]; out.w = w[3];
    return out;
  }

  // Writes the chunks as bf16 into the tile `s` (KC: s[mn][k] stride LDK; MNC: s[k][mn] stride LDMN).
  __device__ __forceinline__ void store(uint16_t* s, int tid) const {
#pragma unroll
    for (int p = 0; p < CHUNKS; ++p) {
      int mn, k;
      coords(tid, p, mn, k);
      uint16_t* dst = s + (KC ? mn * LDK + k : k * LDMN + mn);
      if constexpr (sizeof(T) == 2) {
        *reinterpret_cast<uint4*>(dst) = r[p];  // 16 B, aligned (see header)
      } else {
        uint2 h;
        h.x = static_cast<uint32_t>(f32_to_bf16(bits_f32(r[p].x))) |
              (static_cast<uint32_t>(f32_to_bf16(bits_f32(r[p].y))) << 16);
        h.y = static_cast<uint32_t>(f32_to_bf16(bits_f32(r[p].z))) |
              (static_cast<uint32_t>(f32_to_bf16(bits_f32(r[p].w))) << 16);
        *reinterpret_cast<uint2*>(dst) = h;  // 8 B, aligned
      }
    }
  }
};

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

template <bool TRANS>
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&d)[4], const uint16_t* p) {
  if constexpr (TRANS) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
                 : "r"(smem_addr(p))
                 : "memory");
  } else {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
                 : "r"(smem_addr(p))
                 : "memory");
  }
}

__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <typename TA, typename TB, bool KCA, bool KCB>
__global__ void __launch_bounds__(kGemmThreads, 1)
    gemm_kernel(const TA* __restrict__ A, const TB* __restrict__ B, void* __restrict__ C, GemmParams p) {
  __shared__ __align__(16) uint16_t sA[2][kTileElems];
  __shared__ __align__(16) uint16_t sB[2][kTileElems];

  const int tid = threadIdx.x;
  const int lane = tid & 31, warp = tid >> 5;
  const int wm = (warp & 1) * 64;   // warp's row offset in the block tile
  const int wn = (warp >> 1) * 32;  // warp's column offset
  const int g = lane >> 2, t = lane & 3;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * BN;
  const int64_t mtiles = (p.M + BM - 1) / BM;
  const int nk = static_cast<int>((p.K + BK - 1) / BK);

  for (int64_t b = blockIdx.z; b < p.batch; b += gridDim.z) {
    const TA* Ab = A + b * p.strideA;
    const TB* Bb = B + b * p.strideB;
    for (int64_t mt = blockIdx.y; mt < mtiles; mt += gridDim.y) {
      const int64_t m0 = mt * BM;
      float acc[4][4][4];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

      TileLoader<TA, KCA> la;
      TileLoader<TB, KCB> lb;
      if (nk > 0) {
        la.load(Ab, p.lda, p.M, p.K, m0, 0, p.vecA, tid);
        lb.load(Bb, p.ldb, p.N, p.K, n0, 0, p.vecB, tid);
        la.store(sA[0], tid);
        lb.store(sB[0], tid);
      }
      __syncthreads();

      for (int kt = 0; kt < nk; ++kt) {
        const int st = kt & 1;
        const bool more = kt + 1 < nk;
        if (more) {  // issue the global loads of the next tile; they complete during the mma work
          la.load(Ab, p.lda, p.M, p.K, m0, static_cast<int64_t>(kt + 1) * BK, p.vecA, tid);
          lb.load(Bb, p.ldb, p.N, p.K, n0, static_cast<int64_t>(kt + 1) * BK, p.vecB, tid);
        }
        const uint16_t* a_s = sA[st];
        const uint16_t* b_s = sB[st];
#pragma unroll
        for (int ks = 0; ks < BK; ks += 16) {
          uint32_t bf[4][2];
#pragma unroll
          for (int nj = 0; nj < 2; ++nj) {
            const int nb = wn + nj * 16;
            const int i = lane >> 3;
            uint32_t r[4];
            if constexpr (KCB) {
              ldmatrix_x4<false>(r, b_s + (nb + (lane & 7) + 8 * (i >> 1)) * LDK + ks + 8 * (i & 1));
            } else {
              ldmatrix_x4<true>(r, b_s + (ks + (lane & 7) + 8 * (i & 1)) * LDMN + nb + 8 * (i >> 1));
            }
            bf[2 * nj][0] = r[0];
            bf[2 * nj][1] = r[1];
            bf[2 * nj + 1][0] = r[2];
            bf[2 * nj + 1][1] = r[3];
          }
#pragma unroll
          for (int mi = 0; mi < 4; ++mi) {
            const int mb = wm + mi * 16;
            uint32_t af[4];
            if constexpr (KCA) {
              ldmatrix_x4<false>(af, a_s + (mb + (lane & 15)) * LDK + ks + (lane >> 4) * 8);
            } else {
              const int i = lane >> 3;
              ldmatrix_x4<true>(af, a_s + (ks + (lane & 7) + 8 * (i >> 1)) * LDMN + mb + 8 * (i & 1));
            }
#pragma unroll
            for (int ni = 0; ni < 4; ++ni) mma_bf16(acc[mi][ni], af, bf[ni][0], bf[ni][1]);
          }
        }
        if (more) {
          // Stage st^1 was last read in iteration kt-1, which every thread finished before the
          // __syncthreads that ended it, so overwriting it here is safe.
          la.store(sA[st ^ 1], tid);
          lb.store(sB[st ^ 1], tid);
        }
        // Makes stage st^1 visible for iteration kt+1 and ends all reads of stage st before
        // iteration kt+1 overwrites it (or the next tile overwrites stage 0).
        __syncthreads();
      }

      // Epilogue.
      const int64_t cbase = b * p.strideC;
#pragma unroll
      for (int mi = 0; mi < 4; ++mi) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int64_t row = m0 + wm + mi * 16 + g + 8 * half;
          if (row >= p.M) continue;
#pragma unroll
          for (int ni = 0; ni < 4; ++ni) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              const int64_t col = n0 + wn + ni * 8 + 2 * t + e;
              if (col >= p.N) continue;
              const int64_t off = cbase + row * p.ldc + col;
              float v = p.alpha * acc[mi][ni][2 * half + e];
              if (p.c_bf16) {
                uint16_t* c = static_cast<uint16_t*>(C) + off;
                if (p.beta != 0.0f) v += p.beta * bf16_to_f32(*c);
                *c = f32_to_bf16(v);
              } else {
                float* c = static_cast<float*>(C) + off;
                if (p.beta != 0.0f) v += p.beta * *c;
                *c = v;
              }
            }
          }
        }
      }
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

bool vec_ok(const void* ptr, int64_t ld, int64_t stride, int vec) {
  return reinterpret_cast<uintptr_t>(ptr) % 16 == 0 && ld % vec == 0 && stride % vec == 0;
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
