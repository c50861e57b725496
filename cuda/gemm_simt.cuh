// The float32-accurate GEMM block tile (gemm.cu and grouped_gemm.cu use it when both operands
// are float32): plain f32 FMAs on the CUDA cores, so a result carries the error of an f32 dot
// product (|error| <= K u sum |a_k b_k|, u = 2^-24, the bound of the CPU's f32 GEMM) and expert
// choice on router logits picks the rows the CPU picks. Why not 3xTF32 / split bf16 on tensor
// cores: bf16x3 keeps 16 of the 24 significand bits (error ~3 * 2^-16 = 5e-5 per product, too
// coarse for 1e-5), 3xTF32 reaches ~1e-6 but needs its own fragment code; the f32 GEMMs of a
// training step (router logits [T, d] x [d, E] with E <= 64, their gradients, f32 test models)
// are a few hundred MFLOP, far from the bf16 expert and attention GEMMs that set the step time.
//
// Block tile BM = 128 rows x BN = 128 / NB columns per right-hand operand (NB = 1, or 2 for the
// fused SwiGLU: W1 and W3 share the A tile), BK = 16, 256 threads as a 16 x 16 grid (ty, tx);
// thread (ty, tx) owns rows ty + 16 i (i < 8) and columns tx + 16 j (j < 8 / NB) of every operand:
// 64 accumulators. Per k: 8 A values (2 distinct addresses per warp: broadcast) and 8 B values
// (16 consecutive words: conflict free) from shared memory for 64 FMAs.
// Shared memory: both operands stored k-major, s[k][mn] (row stride MN + 4 floats), two stages
// (double buffering through registers: tile kt + 1 is loaded from global memory during the FMAs
// on tile kt, stored after them; one __syncthreads per k-tile). Global loads are element loads,
// bounds-checked (zero fill), consecutive threads on consecutive addresses of the contiguous index.
// Rate: ~1/4 of the SM's FMA issue goes to shared loads; expect 25-40% of the f32 CUDA-core peak.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace moma::cuda::detail::simt {

constexpr int BM = 128, BK = 16, THREADS = 256, TM = 8;

template <int NB>
struct Shape {
  static constexpr int BN = 128 / NB;  // columns per right-hand operand
  static constexpr int TN = 8 / NB;    // columns per thread per operand
};

// Shared memory of one block: two stages of the A tile and of the NB B tiles (k-major).
template <int NB>
struct Smem {
  float a[2][BK][BM + 4];
  float b[2][NB][BK][Shape<NB>::BN + 4];
};

// An MN x K float32 operand (KC: (mn, k) at ptr[mn * ld + k]; MNC: at ptr[k * ld + mn]); elements
// outside read as 0. Element q = tid + THREADS p of the tile: KC (mn = q / BK, k = q % BK), MNC
// (k = q / MN_T, mn = q % MN_T).
template <int MN_T, bool KC>
struct F32Loader {
  static constexpr int PER = MN_T * BK / THREADS;
  const float* ptr;
  int64_t ld, MN, K, mn0;
  float r[PER];

  __device__ __forceinline__ void fetch(int64_t k0, int tid) {
#pragma unroll
    for (int p = 0; p < PER; ++p) {
      const int q = tid + THREADS * p;
      const int mn = KC ? q / BK : q % MN_T, k = KC ? q % BK : q / MN_T;
      const int64_t gm = mn0 + mn, gk = k0 + k;
      r[p] = (gm < MN && gk < K) ? ptr[KC ? gm * ld + gk : gk * ld + gm] : 0.0f;
    }
  }
  template <int LD>
  __device__ __forceinline__ void store(float (*s)[LD], int tid) const {
#pragma unroll
    for (int p = 0; p < PER; ++p) {
      const int q = tid + THREADS * p;
      const int mn = KC ? q / BK : q % MN_T, k = KC ? q % BK : q / MN_T;
      s[k][mn] = r[p];
    }
  }
};

template <int NB>
using Acc = float[NB][TM][Shape<NB>::TN];

template <int NB>
__device__ __forceinline__ void zero_acc(Acc<NB>& acc) {
#pragma unroll
  for (int b = 0; b < NB; ++b)
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int j = 0; j < Shape<NB>::TN; ++j) acc[b][i][j] = 0.0f;
}

// acc[b] += op(A)[m0 .. m0+BM, 0 .. K) @ op(B_b)[0 .. K, n0 .. n0+BN) (loaders carry mn0 and the
// bounds); products accumulated with fmaf in increasing k. All THREADS threads call it; it ends
// behind a __syncthreads so that `sm` may be reused.
template <int NB, bool KCA, bool KCB>
__device__ __forceinline__ void block_tile(Acc<NB>& acc, Smem<NB>& sm, F32Loader<BM, KCA>& la,
                                           F32Loader<Shape<NB>::BN, KCB> (&lb)[NB], int64_t K) {
  constexpr int TN = Shape<NB>::TN;
  const int tid = threadIdx.x, ty = tid >> 4, tx = tid & 15;
  const int nk = static_cast<int>((K + BK - 1) / BK);
  if (nk > 0) {
    la.fetch(0, tid);
    la.store(sm.a[0], tid);
#pragma unroll
    for (int b = 0; b < NB; ++b) {
      lb[b].fetch(0, tid);
      lb[b].store(sm.b[0][b], tid);
    }
  }
  __syncthreads();
  for (int kt = 0; kt < nk; ++kt) {
    const int st = kt & 1;
    const bool more = kt + 1 < nk;
    if (more) {
      la.fetch(static_cast<int64_t>(kt + 1) * BK, tid);
#pragma unroll
      for (int b = 0; b < NB; ++b) lb[b].fetch(static_cast<int64_t>(kt + 1) * BK, tid);
    }
#pragma unroll
    for (int k = 0; k < BK; ++k) {
      float av[TM];
#pragma unroll
      for (int i = 0; i < TM; ++i) av[i] = sm.a[st][k][ty + 16 * i];
#pragma unroll
      for (int b = 0; b < NB; ++b) {
        float bv[TN];
#pragma unroll
        for (int j = 0; j < TN; ++j) bv[j] = sm.b[st][b][k][tx + 16 * j];
#pragma unroll
        for (int i = 0; i < TM; ++i)
#pragma unroll
          for (int j = 0; j < TN; ++j) acc[b][i][j] = fmaf(av[i], bv[j], acc[b][i][j]);
      }
    }
    if (more) {  // stage st ^ 1 was last read in iteration kt - 1, finished before its barrier
      la.store(sm.a[st ^ 1], tid);
#pragma unroll
      for (int b = 0; b < NB; ++b) lb[b].store(sm.b[st ^ 1][b], tid);
    }
    __syncthreads();
  }
}

// f(row, col, v) for every accumulator position of this thread (row = ty + 16 i, col = tx + 16 j
// inside the block tile); v[b] is operand b's value.
template <int NB, typename F>
__device__ __forceinline__ void for_each_acc(const Acc<NB>& acc, F&& f) {
  const int ty = threadIdx.x >> 4, tx = threadIdx.x & 15;
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < Shape<NB>::TN; ++j) {
      float v[NB];
#pragma unroll
      for (int b = 0; b < NB; ++b) v[b] = acc[b][i][j];
      f(ty + 16 * i, tx + 16 * j, v);
    }
}

}  // namespace moma::cuda::detail::simt
