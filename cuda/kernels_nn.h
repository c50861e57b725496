// CUDA kernel table of the transformer ops: the functions of csrc/core/kernel_table_nn.inc (shared
// with csrc/cpu/kernels_nn.h: the same parameter lists and contracts), launched asynchronously on
// `ctx.stream`, no host syncs. Data-dependent errors (a negative position, a bad segment start, a
// target out of range) are recorded in `ctx.err` (DeviceErrorCode, kernels.h) and reported at the
// next synchronisation. attention is flash-style (attention.cu, flash_attention.cu): tiles of
// queries stream over the key tiles of their segment with an online softmax; the N x N score
// matrix is never stored.
#pragma once
#include <cstdint>
#include "../csrc/core/dtype.h"
#include "../csrc/core/launch.h"
#include "../csrc/core/nn_types.h"

namespace moma::cuda {

#include "../csrc/core/kernel_table_nn.inc"

}  // namespace moma::cuda
