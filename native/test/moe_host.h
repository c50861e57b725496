// Host-side routing inputs for the native test, built in both builds (with and without CUDA):
// the CUDA mixture-of-experts cases (moe_cases.cc) feed them to both backends, and the CPU
// expert-choice check (cpu_moe_sanity, moe_host.cc) compares them with brute force.
#pragma once
#include <cstdint>
#include <vector>

#include "../../csrc/core/moe_types.h"

namespace moma::native_test {

// Modalities of T rows. mode 0: random with ~10% padding; 1: every row modality 0; 2: no row of
// the last modality routed to group 1 when it exists (an empty group), plus padding.
std::vector<int32_t> moe_modality(int64_t T, const MoeLayout& L, int mode);

// A CPU partition + scores + route for a layout (the inputs of the row kernels' cases). In
// threshold mode, select [T, E] mixes uniform values with 0.5 exactly, its float neighbours and NaN.
struct MoeHostRoute {
  MoeLayout L;
  RoutingParams p;
  int64_t T = 0, R = 0;
  std::vector<int32_t> modality, row_group, counts, offsets, perm, expert_offsets, slot_row, row_slots;
  std::vector<float> scores, select, slot_gate;
};
MoeHostRoute host_route(const MoeLayout& L, int64_t T, const RoutingParams& p, int mod_mode, bool ties);

}  // namespace moma::native_test
