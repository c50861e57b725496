// Plain descriptors of a mixture-of-experts layer shared by the CPU and CUDA MoE kernels
// (csrc/cpu/kernels_moe.h, cuda/kernels_moe.h) and the op layer (csrc/ops/moe.h). SPEC.md §2.
//
// Experts are numbered globally: group g owns experts [begin[g], begin[g+1]) of E = begin[G].
// Per-(row, expert) arrays are [T, E] with a column per global expert; a row only ever has
// nonzero entries in the columns of its own group. The inverse map of a routing is [T, W] with
// W = max_g E_g: entry (t, j) is the slot where local expert j of t's group took row t, or -1.
#pragma once
#include <cmath>
#include <cstdint>
#include "hostdevice.h"

namespace moma {

constexpr int kMaxMoeGroups = 16;
constexpr int kMaxMoeModalities = 16;
constexpr int kMaxMoeExperts = 1024;

struct MoeLayout {
  int32_t num_groups = 0;                      // G >= 1
  int32_t experts[kMaxMoeGroups] = {};         // E_g >= 1
  int32_t begin[kMaxMoeGroups + 1] = {};       // prefix sums of experts
  int32_t num_experts = 0;                     // E = begin[G]
  int32_t max_group_experts = 0;               // W = max_g E_g
  int32_t num_modalities = 0;                  // M >= 1
  int32_t group_of[kMaxMoeModalities] = {};    // modality id -> group, or -1 (rows never routed)
};

enum class RouterFn : int32_t { Sigmoid = 0, Softmax = 1 };
// Threshold: the causal mode of SPEC §4 (rows taken where an auxiliary router's probability
// exceeds 0.5; no capacity). It reads a `select` [T, E] array the other modes do not have.
enum class RoutingMode : int32_t { ExpertChoice = 0, TokenChoice = 1, Threshold = 2 };

struct RoutingParams {
  RoutingMode mode = RoutingMode::ExpertChoice;
  double capacity = 1.0;  // c > 0 (ignored by threshold)
  int32_t top_k = 1;      // token choice only, >= 1
};

// Rows expert-choice gives each expert of a group with n rows and E experts (SPEC §2):
// min(n, ceil(c n / E)); a group with one expert takes all of its rows.
MOMA_HD int64_t expert_choice_capacity(int64_t n, int32_t experts, double c) {
  if (experts == 1) return n;
  double k = ceil(c * static_cast<double>(n) / static_cast<double>(experts));
  return k < static_cast<double>(n) ? static_cast<int64_t>(k) : n;
}

// Token choice: each expert keeps at most ceil(c k n / E) of the rows that chose it.
MOMA_HD int64_t token_choice_capacity(int64_t n, int32_t experts, int32_t k, double c) {
  if (experts == 1) return n;
  return static_cast<int64_t>(ceil(c * static_cast<double>(k) * static_cast<double>(n) / static_cast<double>(experts)));
}

// Slots a routing may fill at most (the length R of its per-slot buffers), known on the host from
// T alone. Expert choice: sum_g E_g k_g <= sum_g (c n_g + E_g) for routed groups and n_g for
// single-expert groups, so R = min(T W, ceil(max(c, 1) T) + E). Token choice: each row makes at
// most min(k, W) pairs, R = T min(k, W). Threshold: every expert of a row's group may take it,
// R = T W.
inline int64_t moe_slot_bound(int64_t T, const MoeLayout& L, const RoutingParams& p) {
  int64_t W = L.max_group_experts;
  if (p.mode == RoutingMode::TokenChoice) return T * (p.top_k < W ? p.top_k : W);
  if (p.mode == RoutingMode::Threshold) return T * W;
  double c = p.capacity > 1.0 ? p.capacity : 1.0;
  int64_t bound = static_cast<int64_t>(ceil(c * static_cast<double>(T))) + L.num_experts;
  return bound < T * W ? bound : T * W;
}

// Score order used by every top-k: larger score first, then smaller row (or expert) index.
// NaN ranks below every number. The key is monotone: key(a) > key(b) iff a ranks above b
// (equal keys are ties, broken by index).
MOMA_HD uint32_t score_key(float s) {
  if (s != s) return 0u;
  if (s == 0.0f) s = 0.0f;  // -0 ties with +0
  uint32_t u;
#ifdef __CUDA_ARCH__
  u = __float_as_uint(s);
#else
  __builtin_memcpy(&u, &s, 4);
#endif
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

}  // namespace moma
