// CUDA kernel table: the same functions as csrc/cpu/kernels.h with the same semantics (read that
// header for each one and the same parameters), launched asynchronously on `ctx.stream` (a
// cudaStream_t passed as void* so that this header needs no CUDA headers; core/launch.h). The GEMM
// still takes the stream alone and dtypes (the CPU's is float32 gemm_f32). Data-dependent range errors (bad indices) do not throw:
// the kernel records `code` in the device's error word (runtime.h) and writes 0 for that element;
// the next synchronisation reports it. Launch errors throw MomaException(ERR_CUDA).
#pragma once
#include <cstdint>
#include "../csrc/core/kernel_types.h"
#include "../csrc/core/launch.h"

namespace moma::cuda {

// Codes stored in the device error word by kernels that find bad data.
enum DeviceErrorCode : int32_t {
  kNoError = 0,
  kIndexSelectRange = 1,
  kScatterAddRange = 2,
  kMoePartitionRange = 3,  // a modality id outside [-1, M)
  kMoeRouteOverflow = 4,   // a routing needed more slots than its bound
  kMoeGatherRange = 5,     // a slot row outside [-1, T)
  kMoeCombineRange = 6,    // a slot outside [-1, R)
  kGroupedGemmOffsets = 7, // segment offsets not increasing or past R
  kRopePosition = 8,       // a negative position
  kAttentionSegment = 9,   // seg_start[t] neither t nor seg_start[t - 1]
  kCrossEntropyTarget = 10, // a target outside [-1, V)
  kModSelectCount = 11,    // fewer valid rows than the rows to select
};
// The op name and the message for a nonzero error word (runtime.cu reports them).
const char* device_error_op(int32_t code);
const char* device_error_message(int32_t code);

void fill(const LaunchCtx& ctx, DType dt, void* y, int64_t n, double value);
void arange(const LaunchCtx& ctx, DType dt, void* y, int64_t n, double start, double step);
void random_uniform(const LaunchCtx& ctx, DType dt, void* y, int64_t n, uint64_t seed, uint64_t offset, float low,
                    float high);
void random_normal(const LaunchCtx& ctx, DType dt, void* y, int64_t n, uint64_t seed, uint64_t offset, float mean,
                   float std);
void cast(const LaunchCtx& ctx, DType src_dt, const void* x, DType dst_dt, void* y, int64_t n);
void strided_copy(const LaunchCtx& ctx, DType dt, const void* x, const StridedView& src, void* y, int64_t n);
void copy_2d(const LaunchCtx& ctx, const void* x, int64_t x_pitch, void* y, int64_t y_pitch, int64_t rows,
             int64_t row_bytes);
void unary(const LaunchCtx& ctx, UnaryOp op, DType dt, const void* x, void* y, int64_t n, float alpha);
void binary(const LaunchCtx& ctx, BinaryOp op, DType dt, const void* a, const StridedView& av, const void* b,
            const StridedView& bv, void* y, int64_t n);
void where(const LaunchCtx& ctx, const uint8_t* cond, const StridedView& cv, DType dt, const void* a,
           const StridedView& av, const void* b, const StridedView& bv, void* y, int64_t n);
void reduce(const LaunchCtx& ctx, ReduceOp op, DType dt, const void* x, void* y, int64_t outer, int64_t n,
            int64_t inner);
void softmax(const LaunchCtx& ctx, bool log, DType dt, const void* x, void* y, int64_t outer, int64_t n, int64_t inner);
void index_select(const LaunchCtx& ctx, DType dt, const void* x, const int32_t* idx, void* y, int64_t outer, int64_t n,
                  int64_t k, int64_t inner);
// Deterministic: no float atomics; each output element sums its contributions in increasing j.
void scatter_add(const LaunchCtx& ctx, DType dt, const void* src, const int32_t* idx, void* y, int64_t outer, int64_t k,
                 int64_t n, int64_t inner);
// GEMM (design: gemm.cu). A, B float32 or bf16; C float32 or bf16 (beta reads C in its own dtype).
// A and B both float32: float32-accurate (f32 FMAs, error like the CPU's f32 GEMM). Otherwise
// bf16 tensor cores (mma.sync bf16 x bf16 -> f32 accumulate; a float32 operand next to a bf16 one
// is rounded to bf16 on load).
void gemm(void* stream, DType dt_a, const void* A, DType dt_b, const void* B, DType dt_c, void* C,
          const GemmShape& g);
// The kernel and block tile gemm() picks for these dtypes and shape on the current device, e.g.
// "mma_bf16 128x128x32", "mma_bf16 64x64x32" or "simt_f32 128x128x16" (tests and benchmarks).
const char* gemm_tile_config(DType dt_a, DType dt_b, const GemmShape& g);

}  // namespace moma::cuda
