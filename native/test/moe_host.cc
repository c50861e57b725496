// Host-side routing inputs of the native test (moe_host.h) and the CPU expert-choice routing
// checked by brute force (cpu_moe_sanity). Built with and without CUDA.
#include "moe_host.h"

#include <algorithm>
#include <cmath>
#include <iterator>
#include <random>

#include "../../csrc/cpu/kernels_moe.h"
#include "../../csrc/ops/moe.h"
#include "harness.h"

namespace moma::native_test {

std::vector<int32_t> moe_modality(int64_t T, const MoeLayout& L, int mode) {
  std::vector<int32_t> m(static_cast<size_t>(T));
  std::uniform_int_distribution<int32_t> d(0, L.num_modalities - 1);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  for (auto& v : m) {
    if (mode == 1) { v = 0; continue; }
    v = u(g_rng) < 0.1f ? -1 : d(g_rng);
    if (mode == 2)
      while (v >= 0 && L.group_of[v] == (L.num_groups > 1 ? 1 : -2)) v = d(g_rng) == 0 ? 0 : -1;
  }
  return m;
}

MoeHostRoute host_route(const MoeLayout& L, int64_t T, const RoutingParams& p, int mod_mode, bool ties) {
  MoeHostRoute h;
  h.L = L;
  h.p = p;
  h.T = T;
  const int64_t E = L.num_experts, G = L.num_groups, W = L.max_group_experts;
  h.modality = moe_modality(T, L, mod_mode);
  h.row_group.resize(T);
  h.counts.resize(G);
  h.offsets.resize(G + 1);
  h.perm.resize(T);
  cpu::moe_partition(kCpuLaunch, h.modality.data(), T, L, h.row_group.data(), h.counts.data(), h.offsets.data(),
                     h.perm.data());
  std::vector<float> logits = rand_f(static_cast<size_t>(T * E), -3.0f, 3.0f);
  h.scores.resize(T * E);
  cpu::moe_router_scores(kCpuLaunch, logits.data(), h.row_group.data(), T, L, RouterFn::Sigmoid, false, 0, 0,
                         h.scores.data());
  if (ties)  // few distinct values: many exact ties between rows and between experts
    for (auto& s : h.scores)
      if (s != 0.0f && s != 1.0f) s = std::round(s * 4.0f) / 4.0f;
  if (p.mode == RoutingMode::Threshold) {
    h.select = rand_f(static_cast<size_t>(T * E), 0.0f, 1.0f);
    const float special[] = {0.5f, std::nextafter(0.5f, 1.0f), std::nextafter(0.5f, 0.0f), NAN, 1.0f, 0.0f};
    std::uniform_int_distribution<int> pick(0, 3 * static_cast<int>(std::size(special)) - 1);
    for (auto& a : h.select) {
      const int i = pick(g_rng);
      if (i < static_cast<int>(std::size(special))) a = special[i];
    }
  }
  h.R = moe_slot_bound(T, L, p);
  h.expert_offsets.resize(E + 1);
  h.slot_row.resize(h.R);
  h.slot_gate.resize(h.R);
  h.row_slots.resize(T * W);
  cpu::moe_route(kCpuLaunch, h.scores.data(), h.row_group.data(), h.offsets.data(), h.perm.data(), T, L, p, h.R,
                 h.expert_offsets.data(), h.slot_row.data(), h.slot_gate.data(), h.row_slots.data(),
                 h.select.empty() ? nullptr : h.select.data());
  return h;
}

// Expert choice on the CPU: the slots of each expert are the k best rows of its group, in row order.
void cpu_moe_sanity() {
  g_case = "cpu moe_route expert choice vs brute force";
  const MoeLayout L = ops::make_moe_layout({4, 4}, {0, 1}, "native test");
  RoutingParams p;
  p.capacity = 1.37;
  MoeHostRoute h = host_route(L, 200, p, 0, true);
  bool ok = h.expert_offsets[0] == 0;
  for (int e = 0; e < L.num_experts; ++e) {
    const int g = e < 4 ? 0 : 1;
    std::vector<int32_t> rows(h.perm.begin() + h.offsets[g], h.perm.begin() + h.offsets[g + 1]);
    const int64_t k = expert_choice_capacity(static_cast<int64_t>(rows.size()), 4, p.capacity);
    std::stable_sort(rows.begin(), rows.end(), [&](int32_t a, int32_t b) {
      return score_key(h.scores[a * 8 + e]) > score_key(h.scores[b * 8 + e]);
    });
    rows.resize(static_cast<size_t>(k));
    std::sort(rows.begin(), rows.end());
    ok &= h.expert_offsets[e + 1] - h.expert_offsets[e] == k;
    for (int64_t i = 0; ok && i < k; ++i) {
      const int32_t s = h.expert_offsets[e] + static_cast<int32_t>(i);
      ok &= h.slot_row[s] == rows[i] && h.slot_gate[s] == h.scores[rows[i] * 8 + e] &&
            h.row_slots[rows[i] * 4 + (e % 4)] == s;
    }
  }
  expect(ok, "expert-choice slots = the k best rows of each expert in row order");
}

}  // namespace moma::native_test
