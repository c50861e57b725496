// Calls the same kernel on the right backend: cpu::fn(args...) on the CPU, or
// cuda::fn(stream, args...) on the device's stream. Used only inside queued tasks.
#pragma once
#include "../../cuda/kernels.h"
#include "../../cuda/runtime.h"
#include "../cpu/kernels.h"

#define MOMA_DISPATCH(device, fn, ...)                                              \
  ((device).is_cuda() ? ::moma::cuda::fn(::moma::cuda::stream((device).index), __VA_ARGS__) \
                      : ::moma::cpu::fn(__VA_ARGS__))
