// Mixture-of-experts routing kernels (kernels_moe.h, SPEC.md §2): partition by modality, router
// scores and their backward, expert-choice / token-choice / threshold routing and routing
// statistics.
//
// Top-k selection: a candidate (score s, index i) ranks by score_key(s) descending, then index
// ascending. Both keys fit one 64-bit word, rank = (score_key(s) << 32) | ~i, so every candidate
// has a distinct rank and "the k best" is a plain order statistic. An expert finds the rank of
// its k-th best candidate with nth_element on a scratch copy, then walks its candidates in
// increasing row order and keeps those at or above that rank, which writes its slots already
// sorted by row. Experts are independent (disjoint slots, disjoint row_slots columns), so they
// run in parallel after a serial prefix sum of the per-expert counts; nothing depends on the
// thread layout. Every mode runs these two passes over each expert's candidates (expert choice:
// its group's rows; token choice: the rows that picked it; threshold: the rows with
// select > 0.5) with a capacity, except threshold, which keeps every candidate (no nth_element).
//
// Router scores use philox_gumbel_difference and pmath::expf (csrc/core/portable_math.h), not
// libm, so that the CUDA twin computes the same bits for the same logits.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "../core/error.h"
#include "../core/philox.h"
#include "../core/portable_math.h"
#include "kernels_moe.h"
#include "thread_pool.h"

namespace moma::cpu {
namespace {

inline uint64_t rank_of(float s, int64_t index) {
  return (static_cast<uint64_t>(score_key(s)) << 32) | static_cast<uint64_t>(~static_cast<uint32_t>(index));
}

// The group owning global expert e.
inline int group_of_expert(const MoeLayout& L, int64_t e) {
  int g = 0;
  while (g + 1 < L.num_groups && L.begin[g + 1] <= e) ++g;
  return g;
}

// Rows per parallel chunk for row-wise kernels of cost ~E per row.
inline int64_t row_grain(int64_t per_row) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, per_row)); }

// offsets [G + 1] monotone from 0 to at most T and perm entries in [0, T).
void check_partition(const char* op, const int32_t* offsets, const int32_t* perm, int64_t T, const MoeLayout& L) {
  if (offsets[0] != 0) fail("ERR_RANGE", op, ": offsets[0] = ", offsets[0], ", expected 0");
  for (int g = 0; g < L.num_groups; ++g) {
    if (offsets[g + 1] < offsets[g] || offsets[g + 1] > T)
      fail("ERR_RANGE", op, ": offsets[", g + 1, "] = ", offsets[g + 1], " is out of range [", offsets[g], ", ",
           T, "]");
  }
  for (int64_t i = 0; i < offsets[L.num_groups]; ++i) {
    if (perm[i] < 0 || perm[i] >= T)
      fail("ERR_RANGE", op, ": perm[", i, "] = ", perm[i], " is out of range [0, ", T, ")");
  }
}

// row_group entries in [-1, G).
void check_row_group(const char* op, const int32_t* row_group, int64_t T, const MoeLayout& L) {
  for (int64_t t = 0; t < T; ++t) {
    if (row_group[t] < -1 || row_group[t] >= L.num_groups)
      fail("ERR_RANGE", op, ": row_group[", t, "] = ", row_group[t], " is out of range [-1, ", L.num_groups, ")");
  }
}

}  // namespace

void moe_partition(const LaunchCtx& ctx, const int32_t* modality, int64_t T, const MoeLayout& L, int32_t* row_group,
                   int32_t* counts, int32_t* offsets, int32_t* perm) {
  const int G = L.num_groups;
  for (int64_t t = 0; t < T; ++t) {
    const int32_t m = modality[t];
    if (m < -1 || m >= L.num_modalities)
      fail("ERR_RANGE", "moe_partition: modality ", m, " at row ", t, " is out of range [-1, ", L.num_modalities,
           ")");
  }
  std::vector<int64_t> count(static_cast<size_t>(G) + 1, 0);  // last: rows of no group
  for (int64_t t = 0; t < T; ++t) {
    const int32_t m = modality[t];
    const int32_t g = m < 0 ? -1 : L.group_of[m];
    row_group[t] = g;
    ++count[g < 0 ? static_cast<size_t>(G) : static_cast<size_t>(g)];
  }
  std::vector<int64_t> next(static_cast<size_t>(G) + 1, 0);
  int64_t acc = 0;
  for (int g = 0; g <= G; ++g) {
    offsets[g] = static_cast<int32_t>(acc);
    next[static_cast<size_t>(g)] = acc;
    if (g < G) counts[g] = static_cast<int32_t>(count[static_cast<size_t>(g)]);
    acc += count[static_cast<size_t>(g)];
  }
  for (int64_t t = 0; t < T; ++t) {
    const int32_t g = row_group[t];
    perm[next[g < 0 ? static_cast<size_t>(G) : static_cast<size_t>(g)]++] = static_cast<int32_t>(t);
  }
}

void moe_router_scores(const LaunchCtx& ctx, const float* logits, const int32_t* row_group, int64_t T,
                       const MoeLayout& L, RouterFn fn, bool gumbel, uint64_t seed, uint64_t offset, float* scores) {
  check_row_group("moe_router_scores", row_group, T, L);
  const int64_t E = L.num_experts;
  parallel_for(T, row_grain(E * (gumbel ? 8 : 1)), [&](int64_t t0, int64_t t1) {
    std::vector<float> z(static_cast<size_t>(L.max_group_experts));
    for (int64_t t = t0; t < t1; ++t) {
      float* srow = scores + t * E;
      std::fill(srow, srow + E, 0.0f);
      const int32_t g = row_group[t];
      if (g < 0) continue;
      const int64_t b = L.begin[g], n = L.experts[g];
      if (n == 1) {
        srow[b] = 1.0f;
        continue;
      }
      const float* lrow = logits + t * E;
      for (int64_t j = 0; j < n; ++j) {
        float v = lrow[b + j];
        if (gumbel) v = v + philox_gumbel_difference(seed, offset, static_cast<uint64_t>(t * E + b + j));
        z[static_cast<size_t>(j)] = v;
      }
      if (fn == RouterFn::Sigmoid) {
        for (int64_t j = 0; j < n; ++j) srow[b + j] = 1.0f / (1.0f + pmath::expf(-z[static_cast<size_t>(j)]));
      } else {
        float mx = z[0];
        for (int64_t j = 1; j < n; ++j)
          if (z[static_cast<size_t>(j)] > mx) mx = z[static_cast<size_t>(j)];
        float sum = 0.0f;
        for (int64_t j = 0; j < n; ++j) {
          const float e = pmath::expf(z[static_cast<size_t>(j)] - mx);
          z[static_cast<size_t>(j)] = e;
          sum = sum + e;
        }
        for (int64_t j = 0; j < n; ++j) srow[b + j] = z[static_cast<size_t>(j)] / sum;
      }
    }
  });
}

void moe_router_scores_backward(const LaunchCtx& ctx, const float* scores, const float* dscores,
                                const int32_t* row_group, int64_t T, const MoeLayout& L, RouterFn fn, float* dlogits) {
  check_row_group("moe_router_scores_backward", row_group, T, L);
  const int64_t E = L.num_experts;
  parallel_for(T, row_grain(E), [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      float* drow = dlogits + t * E;
      std::fill(drow, drow + E, 0.0f);
      const int32_t g = row_group[t];
      if (g < 0 || L.experts[g] == 1) continue;
      const int64_t b = L.begin[g], n = L.experts[g];
      const float* s = scores + t * E + b;
      const float* ds = dscores + t * E + b;
      if (fn == RouterFn::Sigmoid) {
        for (int64_t j = 0; j < n; ++j) drow[b + j] = ds[j] * s[j] * (1.0f - s[j]);
      } else {
        float dot = 0.0f;
        for (int64_t j = 0; j < n; ++j) dot = dot + s[j] * ds[j];
        for (int64_t j = 0; j < n; ++j) drow[b + j] = s[j] * (ds[j] - dot);
      }
    }
  });
}

void moe_route(const LaunchCtx& ctx, const float* scores, const int32_t* row_group, const int32_t* offsets,
               const int32_t* perm, int64_t T, const MoeLayout& L, const RoutingParams& p, int64_t R,
               int32_t* expert_offsets, int32_t* slot_row, float* slot_gate, int32_t* row_slots, const float* select) {
  (void)row_group;  // groups come from offsets / perm
  check_partition("moe_route", offsets, perm, T, L);
  const int64_t E = L.num_experts, W = L.max_group_experts;
  const bool token_choice = p.mode == RoutingMode::TokenChoice;
  const bool threshold_mode = p.mode == RoutingMode::Threshold;
  if (threshold_mode && select == nullptr) fail("ERR_ARG", "moe_route: threshold mode needs select");

  // Token choice: picked[t * W + j] = 1 when row t picked local expert j of its group.
  std::vector<uint8_t> picked;
  if (token_choice) {
    picked.assign(static_cast<size_t>(T * W), 0);
    for (int g = 0; g < L.num_groups; ++g) {
      const int64_t n_e = L.experts[g], b = L.begin[g];
      if (n_e == 1) continue;
      const int64_t k = std::min<int64_t>(p.top_k, n_e);
      if (k <= 0) continue;
      const int64_t lo = offsets[g], n = offsets[g + 1] - lo;
      parallel_for(n, row_grain(n_e * 4), [&](int64_t i0, int64_t i1) {
        std::vector<uint64_t> r(static_cast<size_t>(n_e));
        for (int64_t i = i0; i < i1; ++i) {
          const int64_t t = perm[lo + i];
          const float* srow = scores + t * E + b;
          for (int64_t j = 0; j < n_e; ++j) r[static_cast<size_t>(j)] = rank_of(srow[j], j);
          std::nth_element(r.begin(), r.begin() + (k - 1), r.end(), std::greater<uint64_t>());
          const uint64_t thr = r[static_cast<size_t>(k - 1)];
          for (int64_t j = 0; j < n_e; ++j)
            if (rank_of(srow[j], j) >= thr) picked[static_cast<size_t>(t * W + j)] = 1;
        }
      });
    }
  }

  // Whether row t is a candidate of global expert e (local index j); expert choice: every row.
  auto candidate = [&](int64_t t, int64_t e, int64_t j) -> bool {
    if (token_choice) return picked[static_cast<size_t>(t * W + j)] != 0;
    if (threshold_mode) return select[t * E + e] > 0.5f;  // false for NaN
    return true;
  };

  // Pass 1: rows taken by each expert and the rank of its worst kept candidate.
  std::vector<int64_t> taken(static_cast<size_t>(E), 0);
  std::vector<uint64_t> threshold(static_cast<size_t>(E), 0);
  parallel_for(E, 1, [&](int64_t e0, int64_t e1) {
    std::vector<uint64_t> r;
    for (int64_t e = e0; e < e1; ++e) {
      const int g = group_of_expert(L, e);
      const int64_t lo = offsets[g], n = offsets[g + 1] - lo, n_e = L.experts[g], j = e - L.begin[g];
      if (n_e == 1) {
        taken[static_cast<size_t>(e)] = n;
        continue;
      }
      r.clear();
      for (int64_t i = 0; i < n; ++i) {
        const int64_t t = perm[lo + i];
        if (candidate(t, e, j)) r.push_back(rank_of(scores[t * E + e], t));
      }
      const int64_t cap = token_choice ? token_choice_capacity(n, L.experts[g], p.top_k, p.capacity)
                          : threshold_mode ? static_cast<int64_t>(r.size())
                                           : expert_choice_capacity(n, L.experts[g], p.capacity);
      const int64_t k = std::min<int64_t>(cap, static_cast<int64_t>(r.size()));
      taken[static_cast<size_t>(e)] = k;
      if (k > 0 && k < static_cast<int64_t>(r.size())) {
        std::nth_element(r.begin(), r.begin() + (k - 1), r.end(), std::greater<uint64_t>());
        threshold[static_cast<size_t>(e)] = r[static_cast<size_t>(k - 1)];
      }
    }
  });

  int64_t total = 0;
  for (int64_t e = 0; e < E; ++e) {
    expert_offsets[e] = static_cast<int32_t>(std::min<int64_t>(total, R));
    total += taken[static_cast<size_t>(e)];
    if (total > R)
      fail("ERR_INTERNAL", "moe_route: slot bound exceeded (", total, " slots needed by expert ", e, ", bound ", R,
           ")");
  }
  expert_offsets[E] = static_cast<int32_t>(total);

  std::fill(row_slots, row_slots + T * W, -1);
  std::fill(slot_row + total, slot_row + R, -1);
  std::fill(slot_gate + total, slot_gate + R, 0.0f);

  // Pass 2: each expert writes its slots in increasing row order.
  parallel_for(E, 1, [&](int64_t e0, int64_t e1) {
    for (int64_t e = e0; e < e1; ++e) {
      const int g = group_of_expert(L, e);
      const int64_t lo = offsets[g], n = offsets[g + 1] - lo, n_e = L.experts[g], j = e - L.begin[g];
      const int64_t k = taken[static_cast<size_t>(e)];
      if (k == 0) continue;
      int64_t s = expert_offsets[e];
      if (n_e == 1) {
        for (int64_t i = 0; i < n; ++i, ++s) {
          const int64_t t = perm[lo + i];
          slot_row[s] = static_cast<int32_t>(t);
          slot_gate[s] = 1.0f;
          row_slots[t * W + j] = static_cast<int32_t>(s);
        }
        continue;
      }
      const uint64_t thr = threshold[static_cast<size_t>(e)];
      const int64_t end = s + k;
      for (int64_t i = 0; i < n && s < end; ++i) {
        const int64_t t = perm[lo + i];
        if (!candidate(t, e, j)) continue;
        const float v = scores[t * E + e];
        if (rank_of(v, t) < thr) continue;
        slot_row[s] = static_cast<int32_t>(t);
        slot_gate[s] = v;
        row_slots[t * W + j] = static_cast<int32_t>(s);
        ++s;
      }
    }
  });
}

void moe_routing_stats(const LaunchCtx& ctx, const int32_t* row_group, const int32_t* offsets,
                       const int32_t* expert_offsets, const float* slot_gate, const int32_t* row_slots, int64_t T,
                       const MoeLayout& L, float* expert_stats, float* group_stats) {
  check_row_group("moe_routing_stats", row_group, T, L);
  const int64_t E = L.num_experts, W = L.max_group_experts;
  const int G = L.num_groups;
  for (int64_t e = 0; e < E; ++e) {
    const int64_t a = expert_offsets[e], b = expert_offsets[e + 1];
    double sum = 0.0;
    for (int64_t s = a; s < b; ++s) sum += static_cast<double>(slot_gate[s]);
    const int64_t n = b - a;
    expert_stats[2 * e] = static_cast<float>(n);
    expert_stats[2 * e + 1] = n > 0 ? static_cast<float>(sum / static_cast<double>(n)) : 0.0f;
  }
  std::vector<int64_t> hist(static_cast<size_t>(G) * 3, 0);
  for (int64_t t = 0; t < T; ++t) {
    const int32_t g = row_group[t];
    if (g < 0) continue;
    int taken = 0;
    for (int64_t j = 0; j < W; ++j) taken += row_slots[t * W + j] >= 0 ? 1 : 0;
    ++hist[static_cast<size_t>(g) * 3 + static_cast<size_t>(std::min(taken, 2))];
  }
  for (int g = 0; g < G; ++g) {
    const int64_t n = offsets[g + 1] - offsets[g];
    float* out = group_stats + 4 * g;
    out[0] = static_cast<float>(n);
    for (int c = 0; c < 3; ++c)
      out[1 + c] = n > 0 ? static_cast<float>(static_cast<double>(hist[static_cast<size_t>(g) * 3 + static_cast<size_t>(c)]) /
                                              static_cast<double>(n))
                         : 0.0f;
  }
}

}  // namespace moma::cpu
