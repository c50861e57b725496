// CPU kernel table. The declarations and their contracts are in core/kernel_table.inc, shared
// with cuda/kernels.h, so every function here has exactly the parameter list of its CUDA twin,
// the launch context first (core/launch.h; kCpuLaunch here). Kernels run on the CPU device's
// worker thread and use the thread pool (thread_pool.h) for intra-op parallelism. Inputs are
// valid (checked in csrc/ops) except data-dependent ranges, which throw MomaException(ERR_RANGE)
// here. bf16 arithmetic is done in float32 and rounded once on store (bf16.h).
#pragma once
#include <cstdint>
#include "../core/kernel_types.h"
#include "../core/launch.h"

namespace moma::cpu {

#include "../core/kernel_table.inc"

// What the CPU GEMM dispatches to on this machine ("avx512", "avx2" or "generic").
const char* gemm_isa();

}  // namespace moma::cpu
