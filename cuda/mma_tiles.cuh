// Shared pieces of the tensor-core GEMM kernels (gemm.cu, grouped_gemm.cu): one 128 x 128 output
// block tile computed from bf16 operand tiles with mma.sync.aligned.m16n8k16.row.col.f32.bf16.
// The design (tile shapes, shared-memory layout, fragment maps, two-stage pipeline) is described
// in gemm.cu's header comment; this header only holds the code:
//   * TileLoader<T, KC>: moves one 128 x 32 (MN x K) operand tile global -> registers -> shared.
//   * ldmatrix_x4 / mma_bf16: the PTX wrappers.
//   * block_tile_mma: acc += op(A)[m0 .. m0+128, 0 .. K) @ op(B)[0 .. K, n0 .. n0+128) for one
//     block (256 threads), operands bounds-checked against (M, K) and (N, K) (zero fill).
//   * for_each_acc: visits the accumulators with their (row, column) inside the block tile.
// Private to the CUDA translation units (not part of the contract).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "common.cuh"

namespace moma::cuda::detail::mma {

constexpr int BM = 128, BN = 128, BK = 32;
constexpr int kGemmThreads = 256;
constexpr int LDK = BK + 8;    // KC tile row stride (bf16 elements)
constexpr int LDMN = BM + 8;   // MNC tile row stride
constexpr int kTileElems = (BM * LDK > BK * LDMN) ? BM * LDK : BK * LDMN;  // 5120 bf16 = 10 KiB
static_assert(BM == BN, "one loader shape serves both operands");

// The two shared stages of each operand.
struct SmemTiles {
  uint16_t a[2][kTileElems];
  uint16_t b[2][kTileElems];
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
        *reinterpret_cast<uint4*>(dst) = r[p];  // 16 B, aligned (see gemm.cu)
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

// The warp's 64 x 32 sub-tile of the 128 x 128 block tile: 4 (m16) x 4 (n8) mma tiles.
using Acc = float[4][4][4];

__device__ __forceinline__ void zero_acc(Acc& acc) {
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;
}

// acc += op(A)[m0 .. m0+BM, 0 .. K) @ op(B)[0 .. K, n0 .. n0+BN). A is read as an M x K operand
// (KCA: A[m * lda + k], else A[k * lda + m]), B as an N x K operand (KCB: B[n * ldb + k], else
// B[k * ldb + n]); elements with m >= M, n >= N or k >= K read as 0. vecA / vecB: the operand
// allows 16-byte loads (pointer 16-byte aligned, ld a multiple of the vector width). Called by
// all kGemmThreads threads of the block; starts and ends with every shared read finished behind
// a __syncthreads, so consecutive calls may reuse `sm`.
template <typename TA, typename TB, bool KCA, bool KCB>
__device__ __forceinline__ void block_tile_mma(Acc& acc, SmemTiles& sm, const TA* __restrict__ A, int64_t lda,
                                               int64_t M, int64_t m0, bool vecA, const TB* __restrict__ B,
                                               int64_t ldb, int64_t N, int64_t n0, bool vecB, int64_t K) {
  const int tid = threadIdx.x;
  const int lane = tid & 31, warp = tid >> 5;
  const int wm = (warp & 1) * 64;   // warp's row offset in the block tile
  const int wn = (warp >> 1) * 32;  // warp's column offset
  const int64_t nk64 = (K + BK - 1) / BK;
  const int nk = static_cast<int>(nk64);

  TileLoader<TA, KCA> la;
  TileLoader<TB, KCB> lb;
  if (nk > 0) {
    la.load(A, lda, M, K, m0, 0, vecA, tid);
    lb.load(B, ldb, N, K, n0, 0, vecB, tid);
    la.store(sm.a[0], tid);
    lb.store(sm.b[0], tid);
  }
  __syncthreads();

  for (int kt = 0; kt < nk; ++kt) {
    const int st = kt & 1;
    const bool more = kt + 1 < nk;
    if (more) {  // issue the global loads of the next tile; they complete during the mma work
      la.load(A, lda, M, K, m0, static_cast<int64_t>(kt + 1) * BK, vecA, tid);
      lb.load(B, ldb, N, K, n0, static_cast<int64_t>(kt + 1) * BK, vecB, tid);
    }
    const uint16_t* a_s = sm.a[st];
    const uint16_t* b_s = sm.b[st];
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
      la.store(sm.a[st ^ 1], tid);
      lb.store(sm.b[st ^ 1], tid);
    }
    // Makes stage st^1 visible for iteration kt+1 and ends all reads of stage st before
    // iteration kt+1 overwrites it (or the next call overwrites stage 0).
    __syncthreads();
  }
}

// Calls f(row, col, value) for every accumulator of this thread, (row, col) inside the block
// tile (C/D fragment map in gemm.cu): row = wm + 16 mi + g + 8 half, col = wn + 8 ni + 2 t + e.
template <typename F>
__device__ __forceinline__ void for_each_acc(const Acc& acc, F&& f) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int wm = (warp & 1) * 64, wn = (warp >> 1) * 32;
  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int mi = 0; mi < 4; ++mi)
#pragma unroll
    for (int half = 0; half < 2; ++half)
#pragma unroll
      for (int ni = 0; ni < 4; ++ni)
#pragma unroll
        for (int e = 0; e < 2; ++e)
          f(wm + mi * 16 + g + 8 * half, wn + ni * 8 + 2 * t + e, acc[mi][ni][2 * half + e]);
}

// 16-byte loads allowed: pointer aligned and every row start a multiple of the vector width.
inline bool vec_ok(const void* ptr, int64_t ld, int64_t stride, int vec) {
  return reinterpret_cast<uintptr_t>(ptr) % 16 == 0 && ld % vec == 0 && stride % vec == 0;
}

}  // namespace moma::cuda::detail::mma
