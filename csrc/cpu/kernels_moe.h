// CPU kernel table of the mixture-of-experts ops (SPEC.md §2). The declarations and their
// contracts are in core/kernel_table_moe.inc, shared with cuda/kernels_moe.h, so every function
// here has exactly the parameter list of its CUDA twin, the launch context first (core/launch.h).
// Data-dependent values (ids, offsets) that are out of range throw MomaException(ERR_RANGE).
#pragma once
#include <cstdint>
#include "../core/dtype.h"
#include "../core/launch.h"
#include "../core/moe_types.h"

namespace moma::cpu {

#include "../core/kernel_table_moe.inc"

}  // namespace moma::cpu
