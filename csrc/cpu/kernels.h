// CPU kernel table. Every function computes exactly what its CUDA twin in cuda/kernels.h does
// (same names, same arguments; the GEMM, float32 here, is gemm_f32). Every kernel but the GEMM takes
// the launch context first (core/launch.h; kCpuLaunch here). Kernels run on the CPU device's worker thread
// and use the thread pool (thread_pool.h) for intra-op parallelism. Inputs are valid (checked in
// csrc/ops) except data-dependent ranges, which throw MomaException(ERR_RANGE) here.
// bf16 arithmetic is done in float32 and rounded once on store (bf16.h).
#pragma once
#include <cstdint>
#include "../core/kernel_types.h"
#include "../core/launch.h"

namespace moma::cpu {

void fill(const LaunchCtx& ctx, DType dt, void* y, int64_t n, double value);
void arange(const LaunchCtx& ctx, DType dt, void* y, int64_t n, double start, double step);
// y[i] = low + (high - low) * philox_uniform(seed, offset, i); y float32 or bf16.
void random_uniform(const LaunchCtx& ctx, DType dt, void* y, int64_t n, uint64_t seed, uint64_t offset, float low,
                    float high);
// y[i] = mean + std * philox_normal(seed, offset, i).
void random_normal(const LaunchCtx& ctx, DType dt, void* y, int64_t n, uint64_t seed, uint64_t offset, float mean,
                   float std);
// Element-wise conversion. Float -> int truncates toward zero (NaN -> 0, saturating);
// to uint8 saturates to [0, 255]; to bf16 rounds to nearest even.
void cast(const LaunchCtx& ctx, DType src_dt, const void* x, DType dst_dt, void* y, int64_t n);
// y (contiguous, n = prod(src.shape) elements) = x read through `src`. Used for permute,
// slicing, concat pieces, broadcast_to, contiguous copies.
void strided_copy(const LaunchCtx& ctx, DType dt, const void* x, const StridedView& src, void* y, int64_t n);
// Copies `rows` rows of `row_bytes` bytes from x (rows `x_pitch` bytes apart) to y (rows `y_pitch`
// bytes apart), like cudaMemcpy2D: concat writes each piece into its columns of the output this way.
void copy_2d(const LaunchCtx& ctx, const void* x, int64_t x_pitch, void* y, int64_t y_pitch, int64_t rows,
             int64_t row_bytes);
// dt float32 or bf16 (int32 allowed for Neg, Abs, Square, Scale/AddScalar with integral alpha).
void unary(const LaunchCtx& ctx, UnaryOp op, DType dt, const void* x, void* y, int64_t n, float alpha);
// y (contiguous, n elements in the output shape) = a op b, both read through views of the output
// shape (broadcast dims have stride 0). dt float32, bf16 or int32 (Div on int32 truncates; x/0 -> 0).
void binary(const LaunchCtx& ctx, BinaryOp op, DType dt, const void* a, const StridedView& av, const void* b,
            const StridedView& bv, void* y, int64_t n);
// y = cond ? a : b (cond uint8, nonzero = true), all three through views of the output shape.
void where(const LaunchCtx& ctx, const uint8_t* cond, const StridedView& cv, DType dt, const void* a,
           const StridedView& av, const void* b, const StridedView& bv, void* y, int64_t n);
// x viewed as [outer, n, inner] -> y [outer, inner]. n >= 1. Float sums accumulate in double on
// the CPU (float on CUDA with a tree); int32 sums wrap. Mean of int32 is not allowed (csrc/ops).
void reduce(const LaunchCtx& ctx, ReduceOp op, DType dt, const void* x, void* y, int64_t outer, int64_t n,
            int64_t inner);
// Softmax (or log-softmax) over the middle axis of [outer, n, inner]; max-subtracted; float32/bf16.
void softmax(const LaunchCtx& ctx, bool log, DType dt, const void* x, void* y, int64_t outer, int64_t n, int64_t inner);
// y[o, j, i] = x[o, idx[j], i] for j < k. idx outside [0, n) throws ERR_RANGE ("index_select").
void index_select(const LaunchCtx& ctx, DType dt, const void* x, const int32_t* idx, void* y, int64_t outer, int64_t n,
                  int64_t k, int64_t inner);
// y[o, idx[j], i] += src[o, j, i] for j < k, in increasing j (deterministic). y is [outer, n, inner]
// and already holds the values to add to. idx outside [0, n) throws ERR_RANGE ("scatter_add").
void scatter_add(const LaunchCtx& ctx, DType dt, const void* src, const int32_t* idx, void* y, int64_t outer, int64_t k,
                 int64_t n, int64_t inner);
// float32 GEMM (see GemmShape). Blocked, packed, AVX-512/AVX2 kernels chosen at run time.
void gemm_f32(const GemmShape& g, const float* A, const float* B, float* C);

// What the CPU GEMM dispatches to on this machine ("avx512", "avx2" or "generic").
const char* gemm_isa();

}  // namespace moma::cpu
