// Shared pieces of the tensor-core GEMM kernels (gemm.cu, grouped_gemm.cu): one BM x BN output
// block tile (times NB right-hand operands sharing the left one) computed from bf16 operand tiles
// with mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 through a kStages-deep shared-memory
// ring fed by cp.async. The design (tile shapes, swizzle, fragment maps, pipeline) is described in
// gemm.cu's header comment; this header holds the code:
//   * TileCfg: block tile BM x BN x BK, warp grid, warp tile, mma tiles per warp.
//   * SwizzledTile<MN, KC>: element offset of (mn, k) inside one MN x BK operand tile in shared memory.
//   * AsyncLoader (bf16, 16-byte aligned operands: cp.async.cg 16 B, zero fill past the edges) and
//     StagedLoader (any float32 / bf16 operand: registers, bounds-checked, bf16 rounding on store).
//   * block_tile_mma: acc[b] += op(A)[m0 .. m0+BM, 0 .. K) @ op(B_b)[0 .. K, n0 .. n0+BN).
//   * for_each_acc: the accumulators with their (row, column) inside the block tile.
//   * Host: vec_ok, dynamic shared-memory opt-in (cached per kernel and device), SM count.
// Private to the CUDA translation units (not part of the contract).
#pragma once
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>

#include "common.cuh"
#include "ptx.cuh"

namespace moma::cuda::detail::mma {

constexpr int BK = 32;       // k extent of one pipeline stage (two m16n8k16 steps)
constexpr int kStages = 4;   // shared-memory ring depth: up to kStages - 1 tiles in flight

template <int BM_, int BN_, int WARPS_M_, int WARPS_N_>
struct TileCfg {
  static constexpr int BM = BM_, BN = BN_, WARPS_M = WARPS_M_, WARPS_N = WARPS_N_;
  static constexpr int THREADS = 32 * WARPS_M * WARPS_N;
  static constexpr int WM = BM / WARPS_M, WN = BN / WARPS_N;  // warp tile
  static constexpr int MI = WM / 16, NI = WN / 8;             // m16 / n8 mma tiles per warp
  // Blocks per SM asked of the register allocator (__launch_bounds__) for the cp.async kernels,
  // the most that compile without local-memory spills on sm_80 and sm_90 (ptxas -v): two at 256
  // threads (<= 128 registers) and three at 128 threads (<= 168) for <= 32 accumulators per
  // thread and B operand (the two-operand SwiGLU tiles, 2 x 32, fit 128 registers too); one for
  // 64 accumulators per B operand (at a 128-register cap those kernels spill).
  static constexpr int kMinBlocks = MI * NI * 4 > 32 ? 1 : (THREADS == 256 ? 2 : 3);
  static_assert(WM % 16 == 0 && WN % 16 == 0, "ldmatrix.x4 loads 16 rows of A and 16 columns of B");
  static_assert(BM >= 64 && BN >= 64, "an MN-contiguous tile row must hold >= 8 chunks for the swizzle");
};
// The tile shapes (chosen per problem by the callers):
using Cfg128x128 = TileCfg<128, 128, 2, 4>;  // warp 64 x 32: 4 x 4 mma tiles, 64 accumulators / thread
using Cfg128x64 = TileCfg<128, 64, 4, 2>;    // warp 32 x 32
using Cfg64x128 = TileCfg<64, 128, 2, 4>;    // warp 32 x 32
using Cfg64x64 = TileCfg<64, 64, 2, 2>;      // warp 32 x 32, 128 threads
// Two right-hand operands (SwiGLU: W1 and W3): 2 x (warp 64 x 16) = 64 accumulators / thread.
using CfgDual128x64 = TileCfg<128, 64, 2, 4>;
using CfgDual64x64 = TileCfg<64, 64, 2, 4>;  // warp 32 x 16

// One MN x BK operand tile in shared memory, bf16, 16-byte chunks (8 elements) XOR-swizzled.
//   KC  (K contiguous in global memory): row mn holds k = 0..31 = 4 chunks (64 B); logical chunk c
//       of row mn is stored at chunk c ^ ((mn >> 1) & 3). Rows mn and mn + 1 share one 128-byte
//       line; the 8 rows mn0..mn0+7 (mn0 % 8 == 0) read by one ldmatrix 8x8 matrix at chunk c land
//       on 16-byte bank groups (mn & 1) * 4 + (c ^ ((mn >> 1) & 3)): 8 distinct groups, so every
//       ldmatrix phase is conflict free. cp.async: 8 consecutive threads write rows r, r+1 (r even),
//       chunks 0..3 each -> again 8 distinct groups.
//   MNC (MN contiguous): row k holds mn = 0..MN-1 = MN / 8 chunks; logical chunk c of row k is stored
//       at c ^ (k & 7) (only the low 3 bits change, MN / 8 >= 8). ldmatrix.trans reads rows
//       k0..k0+7 at one chunk c -> chunks c ^ 0..7 = 8 distinct bank groups; 8 consecutive threads
//       of a cp.async write 8 consecutive chunks of one row -> a permutation of 8 aligned chunks.
// The swizzle moves whole chunks, so any 16-byte (or smaller, chunk-internal) access of the
// logical layout maps to one contiguous access of the stored one.
template <int MN, bool KC>
struct SwizzledTile {
  static constexpr int kElems = MN * BK;
  __device__ __forceinline__ static int offset(int mn, int k) {
    if constexpr (KC) {
      return mn * BK + (((k >> 3) ^ ((mn >> 1) & 3)) << 3) + (k & 7);
    } else {
      return k * MN + (((mn >> 3) ^ (k & 7)) << 3) + (mn & 7);
    }
  }
};

// ---- operand loaders -------------------------------------------------------------------------
// An operand is read as an MN x K matrix: KC: element (mn, k) at ptr[mn * ld + k]; MNC: at
// ptr[k * ld + mn]. Elements with mn >= MN or k >= K read as 0. A loader moves the MN_T x BK tile
// (mn0 .. mn0+MN_T, k0 .. k0+BK) in 16-byte chunks along the contiguous index: chunk q (q = tid +
// THREADS * p) covers KC: (mn = q / (BK / VEC), k = (q % (BK / VEC)) * VEC .. + VEC) and MNC:
// (k = q / (MN_T / VEC), mn = (q % (MN_T / VEC)) * VEC .. + VEC), so consecutive threads read
// consecutive global bytes.
template <typename T>
struct Operand {
  const T* ptr;
  int64_t ld, MN, K, mn0;
};

template <int MN_T, bool KC, int VEC, int THREADS>
struct ChunkMap {
  static constexpr int CPR = KC ? BK / VEC : MN_T / VEC;  // chunks per contiguous row
  static constexpr int CHUNKS = MN_T * BK / VEC / THREADS;
  static_assert(CHUNKS >= 1 && MN_T * BK / VEC % THREADS == 0, "tile chunks must spread evenly over the threads");
  __device__ __forceinline__ static void coords(int tid, int p, int& mn, int& k) {
    const int q = tid + THREADS * p;
    if constexpr (KC) {
      mn = q / CPR;
      k = (q % CPR) * VEC;
    } else {
      k = q / CPR;
      mn = (q % CPR) * VEC;
    }
  }
};

// cp.async loader for bf16 operands whose pointer is 16-byte aligned and whose ld is a multiple
// of 8 (so every chunk start is 16-byte aligned). A chunk partly past the matrix edge copies its
// in-range elements and zero-fills the rest through cp.async's src-size operand; a chunk wholly
// outside copies 0 bytes from the (valid) operand base.
template <int MN_T, bool KC, int THREADS>
struct AsyncLoader {
  static constexpr bool kAsync = true;
  using Elem = uint16_t;
  using Map = ChunkMap<MN_T, KC, 8, THREADS>;
  Operand<uint16_t> op;

  __device__ __forceinline__ void init(const uint16_t* ptr, int64_t ld, int64_t MN, int64_t K, int64_t mn0, bool) {
    op = Operand<uint16_t>{ptr, ld, MN, K, mn0};
  }

  __device__ __forceinline__ void issue(uint16_t* tile, int64_t k0, int tid) {
#pragma unroll
    for (int p = 0; p < Map::CHUNKS; ++p) {
      int mn, k;
      Map::coords(tid, p, mn, k);
      const int64_t gm = op.mn0 + mn, gk = k0 + k;
      // elements in range along the contiguous index (the other index must be in range)
      const int64_t avail = KC ? (gm < op.MN ? op.K - gk : 0) : (gk < op.K ? op.MN - gm : 0);
      const int n = avail <= 0 ? 0 : (avail >= 8 ? 8 : static_cast<int>(avail));
      const uint16_t* src = n > 0 ? op.ptr + (KC ? gm * op.ld + gk : gk * op.ld + gm) : op.ptr;
      cp_async_16(tile + SwizzledTile<MN_T, KC>::offset(mn, k), src, 2 * n);
    }
  }
  __device__ __forceinline__ void fetch(int64_t, int) {}
  __device__ __forceinline__ void store(uint16_t*, int) const {}
};

// Register-staged loader for any float32 / bf16 operand: fetch() reads a tile's chunks into
// registers (one 16-byte load per chunk when `vec` and the chunk is wholly inside, else element
// loads with bounds checks and zero fill), store() writes them to shared memory as bf16 (float32
// rounded to nearest even, bf16.h).
template <typename T, int MN_T, bool KC, int THREADS>
struct StagedLoader {
  static constexpr bool kAsync = false;
  static constexpr int VEC = 16 / static_cast<int>(sizeof(T));
  using Elem = T;
  using Map = ChunkMap<MN_T, KC, VEC, THREADS>;
  Operand<T> op;
  bool vec;
  uint4 r[Map::CHUNKS];

  __device__ __forceinline__ void init(const T* ptr, int64_t ld, int64_t MN, int64_t K, int64_t mn0, bool vec_ok) {
    op = Operand<T>{ptr, ld, MN, K, mn0};
    vec = vec_ok;
  }

  __device__ __forceinline__ void issue(uint16_t*, int64_t, int) {}

  __device__ __forceinline__ void fetch(int64_t k0, int tid) {
#pragma unroll
    for (int p = 0; p < Map::CHUNKS; ++p) {
      int mn, k;
      Map::coords(tid, p, mn, k);
      const int64_t gm = op.mn0 + mn, gk = k0 + k;
      // element e of the chunk is (gm, gk + e) for KC and (gm + e, gk) for MNC
      const bool full = KC ? (gm < op.MN && gk + VEC <= op.K) : (gk < op.K && gm + VEC <= op.MN);
      const T* base = op.ptr + (KC ? gm * op.ld + gk : gk * op.ld + gm);
      if (vec && full) {
        r[p] = *reinterpret_cast<const uint4*>(base);
      } else {
        uint32_t w[4] = {0u, 0u, 0u, 0u};
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
          const bool in = KC ? (gm < op.MN && gk + e < op.K) : (gk < op.K && gm + e < op.MN);
          if (!in) continue;
          if constexpr (sizeof(T) == 2) {
            w[e >> 1] |= static_cast<uint32_t>(base[e]) << (16 * (e & 1));
          } else {
            w[e] = f32_bits(base[e]);
          }
        }
        r[p] = make_uint4(w[0], w[1], w[2], w[3]);
      }
    }
  }

  __device__ __forceinline__ void store(uint16_t* tile, int tid) const {
#pragma unroll
    for (int p = 0; p < Map::CHUNKS; ++p) {
      int mn, k;
      Map::coords(tid, p, mn, k);
      uint16_t* dst = tile + SwizzledTile<MN_T, KC>::offset(mn, k);
      if constexpr (sizeof(T) == 2) {
        *reinterpret_cast<uint4*>(dst) = r[p];  // one whole chunk
      } else {
        uint2 h;  // 4 bf16 = half a chunk (k or mn is a multiple of 4)
        h.x = static_cast<uint32_t>(f32_to_bf16(bits_f32(r[p].x))) |
              (static_cast<uint32_t>(f32_to_bf16(bits_f32(r[p].y))) << 16);
        h.y = static_cast<uint32_t>(f32_to_bf16(bits_f32(r[p].z))) |
              (static_cast<uint32_t>(f32_to_bf16(bits_f32(r[p].w))) << 16);
        *reinterpret_cast<uint2*>(dst) = h;
      }
    }
  }
};

// Shared memory of one block: kStages stages of the A tile (BM x BK) then of each B tile (BN x BK).
template <class Cfg, int NB>
struct SmemPlan {
  static constexpr int kA = Cfg::BM * BK, kB = Cfg::BN * BK;  // bf16 elements per stage
  static constexpr int kBytes = kStages * (kA + NB * kB) * 2;
  __device__ __forceinline__ static uint16_t* a(uint16_t* base, int stage) { return base + stage * kA; }
  __device__ __forceinline__ static uint16_t* b(uint16_t* base, int nb, int stage) {
    return base + kStages * kA + (nb * kStages + stage) * kB;
  }
};

template <class Cfg, int NB>
using Acc = float[NB][Cfg::MI][Cfg::NI][4];

template <class Cfg, int NB>
__device__ __forceinline__ void zero_acc(Acc<Cfg, NB>& acc) {
#pragma unroll
  for (int b = 0; b < NB; ++b)
#pragma unroll
    for (int i = 0; i < Cfg::MI; ++i)
#pragma unroll
      for (int j = 0; j < Cfg::NI; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[b][i][j][e] = 0.0f;
}

// The mma work on one stage: the warp's WM x WN sub-tile (per B operand) over BK = 2 x k16.
// Fragment maps and ldmatrix lane addresses: gemm.cu's header comment.
template <class Cfg, int NB, bool KCA, bool KCB>
__device__ __forceinline__ void mma_stage(Acc<Cfg, NB>& acc, const uint16_t* a_s, const uint16_t* const (&b_s)[NB],
                                          int wm, int wn, int lane) {
  const int i = lane >> 3;
#pragma unroll
  for (int ks = 0; ks < BK; ks += 16) {
    uint32_t bf[NB][Cfg::NI][2];
#pragma unroll
    for (int b = 0; b < NB; ++b)
#pragma unroll
      for (int nj = 0; nj < Cfg::NI / 2; ++nj) {
        const int nb = wn + nj * 16;
        uint32_t r[4];
        if constexpr (KCB) {
          ldmatrix_x4<false>(r, b_s[b] + SwizzledTile<Cfg::BN, true>::offset(nb + (lane & 7) + 8 * (i >> 1), ks + 8 * (i & 1)));
        } else {
          ldmatrix_x4<true>(r, b_s[b] + SwizzledTile<Cfg::BN, false>::offset(nb + 8 * (i >> 1), ks + (lane & 7) + 8 * (i & 1)));
        }
        bf[b][2 * nj][0] = r[0];
        bf[b][2 * nj][1] = r[1];
        bf[b][2 * nj + 1][0] = r[2];
        bf[b][2 * nj + 1][1] = r[3];
      }
#pragma unroll
    for (int mi = 0; mi < Cfg::MI; ++mi) {
      const int mb = wm + mi * 16;
      uint32_t af[4];
      if constexpr (KCA) {
        ldmatrix_x4<false>(af, a_s + SwizzledTile<Cfg::BM, true>::offset(mb + (lane & 15), ks + (lane >> 4) * 8));
      } else {
        ldmatrix_x4<true>(af, a_s + SwizzledTile<Cfg::BM, false>::offset(mb + 8 * (i & 1), ks + (lane & 7) + 8 * (i >> 1)));
      }
#pragma unroll
      for (int b = 0; b < NB; ++b)
#pragma unroll
        for (int ni = 0; ni < Cfg::NI; ++ni) mma_bf16(acc[b][mi][ni], af, bf[b][ni][0], bf[b][ni][1]);
    }
  }
}

// acc[b] += op(A)[m0 .. m0+BM, 0 .. K) @ op(B_b)[0 .. K, n0 .. n0+BN) for b < NB; the loaders carry
// the operands (mn0 = m0 for A, n0 for every B) and their bounds. Called by all Cfg::THREADS
// threads; `smem` is the block's dynamic shared memory (SmemPlan<Cfg, NB>::kBytes). Starts with no
// assumption on `smem` and returns with every cp.async complete and every shared read finished
// behind a __syncthreads, so consecutive calls (and an epilogue using smem) may reuse it.
//
// Pipeline (per operand a ring of kStages stages; tile t lives in stage t % kStages):
//   prologue: cp.async tiles 0 .. kStages-2, one commit group per tile (always committed, empty
//             past the last tile, so group g <-> tile g); staged operands: tile 0 to stage 0.
//   iteration kt: wait_group(kStages - 2) -> this thread's copies of tile kt landed; __syncthreads
//             -> everyone's copies / stores of tile kt are visible and every read of tile kt - 1
//             (stage (kt - 1) % kStages) is finished; then cp.async tile kt + kStages - 1 into that
//             stage (commit), staged operands fetch tile kt + 1 into registers, mma on stage kt,
//             staged operands store tile kt + 1 to stage (kt + 1) % kStages (last read in
//             iteration kt + 1 - kStages <= kt - 1, finished before this iteration's barrier).
template <class Cfg, int NB, bool KCA, bool KCB, class LA, class LB>
__device__ __forceinline__ void block_tile_mma(Acc<Cfg, NB>& acc, uint16_t* smem, LA& la, LB (&lb)[NB], int64_t K) {
  using Plan = SmemPlan<Cfg, NB>;
  const int tid = threadIdx.x;
  const int lane = tid & 31, warp = tid >> 5;
  const int wm = (warp % Cfg::WARPS_M) * Cfg::WM;  // warp's row offset in the block tile
  const int wn = (warp / Cfg::WARPS_M) * Cfg::WN;  // warp's column offset
  const int nk = static_cast<int>((K + BK - 1) / BK);

#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < nk) {
      la.issue(Plan::a(smem, s), static_cast<int64_t>(s) * BK, tid);
#pragma unroll
      for (int b = 0; b < NB; ++b) lb[b].issue(Plan::b(smem, b, s), static_cast<int64_t>(s) * BK, tid);
    }
    cp_async_commit();
  }
  if (nk > 0) {
    if constexpr (!LA::kAsync) {
      la.fetch(0, tid);
      la.store(Plan::a(smem, 0), tid);
    }
#pragma unroll
    for (int b = 0; b < NB; ++b)
      if constexpr (!LB::kAsync) {
        lb[b].fetch(0, tid);
        lb[b].store(Plan::b(smem, b, 0), tid);
      }
  }

  for (int kt = 0; kt < nk; ++kt) {
    cp_async_wait<kStages - 2>();
    __syncthreads();
    const int nt = kt + kStages - 1;
    if (nt < nk) {
      la.issue(Plan::a(smem, nt % kStages), static_cast<int64_t>(nt) * BK, tid);
#pragma unroll
      for (int b = 0; b < NB; ++b) lb[b].issue(Plan::b(smem, b, nt % kStages), static_cast<int64_t>(nt) * BK, tid);
    }
    cp_async_commit();
    const bool more = kt + 1 < nk;
    if (more) {  // staged operands: global loads of tile kt + 1 overlap the mma work below
      la.fetch(static_cast<int64_t>(kt + 1) * BK, tid);
#pragma unroll
      for (int b = 0; b < NB; ++b) lb[b].fetch(static_cast<int64_t>(kt + 1) * BK, tid);
    }
    const int st = kt % kStages;
    const uint16_t* b_s[NB];
#pragma unroll
    for (int b = 0; b < NB; ++b) b_s[b] = Plan::b(smem, b, st);
    mma_stage<Cfg, NB, KCA, KCB>(acc, Plan::a(smem, st), b_s, wm, wn, lane);
    if (more) {
      la.store(Plan::a(smem, (kt + 1) % kStages), tid);
#pragma unroll
      for (int b = 0; b < NB; ++b) lb[b].store(Plan::b(smem, b, (kt + 1) % kStages), tid);
    }
  }
  cp_async_wait<0>();
  __syncthreads();
}

// Calls f(row, col, b) for every accumulator position of this thread, (row, col) inside the block
// tile (C/D fragment map in gemm.cu): row = wm + 16 mi + g + 8 half, col = wn + 8 ni + 2 t + e;
// the value of B operand b is acc[b][mi][ni][2 half + e], passed as the index j = 2 half + e
// together with (mi, ni) through `get`: f(row, col, [&](int b) { return value }).
template <class Cfg, int NB, typename F>
__device__ __forceinline__ void for_each_acc(const Acc<Cfg, NB>& acc, F&& f) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int wm = (warp % Cfg::WARPS_M) * Cfg::WM, wn = (warp / Cfg::WARPS_M) * Cfg::WN;
  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int mi = 0; mi < Cfg::MI; ++mi)
#pragma unroll
    for (int half = 0; half < 2; ++half)
#pragma unroll
      for (int ni = 0; ni < Cfg::NI; ++ni)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float v[NB];
#pragma unroll
          for (int b = 0; b < NB; ++b) v[b] = acc[b][mi][ni][2 * half + e];
          f(wm + mi * 16 + g + 8 * half, wn + ni * 8 + 2 * t + e, v);
        }
}

// ---- host helpers ----------------------------------------------------------------------------
// 16-byte loads allowed: pointer aligned and every row start a multiple of the vector width.
inline bool vec_ok(const void* ptr, int64_t ld, int64_t stride, int vec) {
  return reinterpret_cast<uintptr_t>(ptr) % 16 == 0 && ld % vec == 0 && stride % vec == 0;
}

inline int current_device() {
  int dev = 0;
  MOMA_CUDA_CHECK(cudaGetDevice(&dev));
  return dev;
}

// Multiprocessors of the current device (cached per device).
inline int sm_count() {
  static std::atomic<int> cache[64];
  const int dev = current_device();
  if (dev >= 0 && dev < 64) {
    const int c = cache[dev].load(std::memory_order_relaxed);
    if (c > 0) return c;
  }
  int n = 0;
  MOMA_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
  if (dev >= 0 && dev < 64) cache[dev].store(n, std::memory_order_relaxed);
  return n;
}

// Allows `kernel` to launch with `dyn_bytes` of dynamic shared memory on the current device: when
// its static plus dynamic shared memory exceeds the 48 KiB default, sets
// cudaFuncAttributeMaxDynamicSharedMemorySize (once per kernel and device: `done` is a bit mask of
// the devices already set); fails with ERR_CUDA naming `op` when the total exceeds the device's
// sharedMemPerBlockOptin.
template <typename Kernel>
void allow_dynamic_smem(Kernel kernel, int dyn_bytes, std::atomic<uint64_t>& done, const char* op) {
  const int dev = current_device();
  const uint64_t bit = dev >= 0 && dev < 64 ? (uint64_t{1} << dev) : 0;
  if (bit && (done.load(std::memory_order_acquire) & bit)) return;
  cudaFuncAttributes attr{};
  MOMA_CUDA_CHECK(cudaFuncGetAttributes(&attr, kernel));
  const size_t total = attr.sharedSizeBytes + static_cast<size_t>(dyn_bytes);
  if (total > 48 * 1024) {
    int optin = 0;
    MOMA_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    if (total > static_cast<size_t>(optin))
      fail("ERR_CUDA", "cuda ", op, ": the kernel needs ", total, " bytes of shared memory, the device allows ", optin);
    MOMA_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, dyn_bytes));
  }
  if (bit) done.fetch_or(bit, std::memory_order_acq_rel);
}

}  // namespace moma::cuda::detail::mma
