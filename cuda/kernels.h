// CUDA kernel table: the functions of csrc/core/kernel_table.inc (shared with csrc/cpu/kernels.h,
// so each has exactly the parameter list and the contract of its CPU twin), launched
// asynchronously on `ctx.stream` (a cudaStream_t passed as void* so that this header needs no
// CUDA headers; core/launch.h). Data-dependent range errors (bad indices) do not throw: the kernel
// records `code` in ctx.err, the device's error word (runtime.h), and writes 0 for that element;
// the next synchronisation reports it. Launch errors throw MomaException(ERR_CUDA). Only the CUDA
// extras are declared here: the error codes and gemm_tile_config.
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

#include "../csrc/core/kernel_table.inc"

// The kernel and block tile gemm() picks for these dtypes and shape on the current device, e.g.
// "mma_bf16 128x128x32", "mma_bf16 64x64x32" or "simt_f32 128x128x16" (tests and benchmarks).
const char* gemm_tile_config(DType dt_a, DType dt_b, const GemmShape& g);

}  // namespace moma::cuda
