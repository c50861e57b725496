// One dispatch line per op: MOMA_LAUNCH(device, kernel, args...) calls
//   cuda::kernel(cuda::launch_ctx(device.index), args...)  on a CUDA device (its stream and error word),
//   cpu::kernel(kCpuLaunch, args...)                        on the CPU,
// the two kernels having one parameter list (declared once in core/kernel_table*.inc). Used only inside queued tasks. A
// build without CUDA (no MOMA_WITH_CUDA) compiles the CPU call alone: no tensor can live on a CUDA
// device there (parse_device and the allocator refuse), so the CUDA kernels need no stand-ins.
#pragma once
#include "../../cuda/kernels.h"
#include "../../cuda/kernels_moe.h"
#include "../../cuda/kernels_nn.h"
#include "../../cuda/runtime.h"
#include "../cpu/kernels.h"
#include "../cpu/kernels_moe.h"
#include "../cpu/kernels_nn.h"

#if MOMA_WITH_CUDA
#define MOMA_LAUNCH(device, kernel, ...)                                                               \
  ((device).is_cuda() ? ::moma::cuda::kernel(::moma::cuda::launch_ctx((device).index), __VA_ARGS__) \
                      : ::moma::cpu::kernel(::moma::kCpuLaunch, __VA_ARGS__))
#else
#define MOMA_LAUNCH(device, kernel, ...) ((void)(device), ::moma::cpu::kernel(::moma::kCpuLaunch, __VA_ARGS__))
#endif
