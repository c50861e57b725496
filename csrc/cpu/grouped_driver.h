// The CPU grouped GEMM driver (grouped_gemm.cc) behind the grouped kernels of kernels_moe.h
// (grouped_gemm.cc, grouped_epilogue.cc): a list of independent products of one shape family,
// one expert each, computed on one parallel schedule across all of them.
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "../core/dtype.h"
#include "gemm_kernels.h"

namespace moma::cpu {

// One expert's product: C_b = op(A) @ op(B_b) for b < GroupedGemm::operands (2: the SwiGLU
// forward's w1 and w3, which share A). op(A) is m x k, op(B_b) k x n. C_b is float32 m x n with
// leading dimension ldc, overwritten (not read); a null C_b is summed in a tile buffer of the
// computing thread instead, which only the finish hook sees (for outputs that are not float32).
struct GroupedProduct {
  const void* a = nullptr;
  const void* b[2] = {nullptr, nullptr};
  float* c[2] = {nullptr, nullptr};
  int64_t m = 0, k = 0;
};

// What the products share: dtypes, the column count, the transposes and leading dimensions.
struct GroupedGemm {
  DType dt_a = DType::F32, dt_b = DType::F32;  // float32 or bf16 each
  int64_t n = 0;
  bool trans_a = false, trans_b = false;
  int64_t lda = 0, ldb = 0, ldc = 0;
  int operands = 1;  // 1 or 2
};

// Called once per output tile when rows [i0, i1) x columns [j0, j1) of every C of product p hold
// their final float32 sums, on the thread that computed them (so an epilogue reads them from
// cache): sums[b][(i - i0) * ld + (j - j0)] is element (i, j) of C_b (in C_b itself, or in the tile
// buffer when C_b is null; ld is then the tile's width).
struct GroupedTile {
  int64_t p, i0, i1, j0, j1;
  float* sums[2];
  int64_t ld[2];
};
using GroupedFinish = std::function<void(const GroupedTile&)>;

// Computes every product with m > 0 and k > 0 (the others are left alone) on `paths` (the bf16
// kernel when A and B are both bf16 and paths.bf16 is set, else the float32 kernel, widening bf16
// while packing). Each C tile is bit-identical to cpu::gemm_on(paths) of its product alone, and
// nothing depends on the thread count.
// Argument checks shared by the grouped ops: a float32 or bfloat16 operand; expert offsets that start
// at 0, never decrease and end within the R rows (MomaException ERR_DTYPE / ERR_RANGE naming `op`).
void check_dtype(const char* op, const char* what, DType dt);
void check_offsets(const char* op, const int32_t* offsets, int64_t E, int64_t R);

// Sets `bytes` bytes at p to zero, in parallel (0 is +0.0 in float32 and bf16).
void zero_bytes(void* p, int64_t bytes);
// The address of element i of an array of dtype dt.
const void* element_at(DType dt, const void* p, int64_t i);

// The shape of the forward products y[seg] = x[seg] @ op(w[e]) with x [R, K] and y [R, N].
GroupedGemm forward_shape(DType dt_x, DType dt_w, bool trans_w, int64_t K, int64_t N);

void run_grouped(const GemmPaths& paths, const GroupedGemm& g, const std::vector<GroupedProduct>& products,
                 const GroupedFinish* finish);

// The process-wide kernel choice (cpu::gemm's: MOMA_CPU_GEMM read once).
const GemmPaths& grouped_paths();

// cpu::grouped_gemm / grouped_gemm_wgrad (kernels_moe.h) on the given paths instead of the
// process-wide choice (tests run every kernel this CPU has through them).
void grouped_gemm_on(const GemmPaths& paths, DType dt_x, const void* x, DType dt_w, const void* w, bool trans_w,
                     const int32_t* offsets, int64_t E, int64_t R, int64_t K, int64_t N, DType dt_y, void* y);
void grouped_gemm_wgrad_on(const GemmPaths& paths, DType dt_x, const void* x, DType dt_dy, const void* dy,
                           const int32_t* offsets, int64_t E, int64_t R, int64_t K, int64_t N, float* dw);

}  // namespace moma::cpu
