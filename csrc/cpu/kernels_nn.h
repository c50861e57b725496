// CPU kernel table of the transformer ops (SPEC.md §1). The declarations and their contracts are
// in core/kernel_table_nn.inc, shared with cuda/kernels_nn.h, so every function here has exactly
// the parameter list of its CUDA twin, the launch context first (core/launch.h).
// Data-dependent values (positions, segment starts, targets) that are out of range throw
// MomaException(ERR_RANGE).
#pragma once
#include <cstdint>
#include "../core/dtype.h"
#include "../core/launch.h"
#include "../core/nn_types.h"

namespace moma::cpu {

#include "../core/kernel_table_nn.inc"

}  // namespace moma::cpu
