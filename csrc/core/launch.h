// The launch context every kernel takes first, on both backends (the kernel tables
// core/kernel_table*.inc, declared once for csrc/cpu/kernels*.h and cuda/kernels*.h), so that a
// CPU kernel and its CUDA twin have one parameter list and an op calls either with one line
// (MOMA_LAUNCH, csrc/ops/backend.h).
//   CUDA: `stream` is the device's cudaStream_t (as void*, so no CUDA header is needed here) and
//         `err` its error word (cuda/runtime.h): a kernel that finds bad data records a
//         DeviceErrorCode there instead of throwing; the next synchronisation reports it.
//   CPU:  both are null. CPU kernels run on the CPU device's queue thread, spread their work over
//         the process-wide thread pool (csrc/cpu/thread_pool.h: one pool, used by one queue
//         thread, so it needs no handle), and throw MomaException for bad data.
#pragma once
#include <cstdint>

namespace moma {

struct LaunchCtx {
  void* stream = nullptr;
  int32_t* err = nullptr;
};

// The context of every CPU kernel call.
inline constexpr LaunchCtx kCpuLaunch{};

}  // namespace moma
