// CUDA kernel table of the mixture-of-experts ops: the functions of
// csrc/core/kernel_table_moe.inc (shared with csrc/cpu/kernels_moe.h: the same parameter lists and
// contracts), launched asynchronously on `ctx.stream` (core/launch.h).
// Nothing here synchronises with the host: counts, offsets and capacities stay on the device and
// kernels read them; buffers are sized by bounds the host knows (T, R). Data-dependent errors do
// not throw: the kernel records a DeviceErrorCode (kernels.h) in `ctx.err`, writes zeros / skips the
// bad element, and the next synchronisation reports it. Launch errors throw ERR_CUDA.
// Designs: moe_routing.cu, moe_rows.cu, grouped_gemm.cu, swiglu.cu, mod_select.cu.
#pragma once
#include <cstdint>
#include "../csrc/core/dtype.h"
#include "../csrc/core/launch.h"
#include "../csrc/core/moe_types.h"

namespace moma::cuda {

#include "../csrc/core/kernel_table_moe.inc"

}  // namespace moma::cuda
