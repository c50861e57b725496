// Mixture-of-depths row selection (kernels_moe.h mod_select, SPEC §3): the k best valid rows by
// router score, and the segment starts of the selected rows (segment_starts). One 64-bit rank per candidate (score_key high, inverted row low: distinct ranks,
// ties to the smaller row), nth_element for the k-th rank, then one pass in row order.
#include <algorithm>
#include <functional>
#include <vector>

#include "../core/error.h"
#include "kernels_moe.h"

namespace moma::cpu {

void mod_select(const LaunchCtx& ctx, const float* scores, const int32_t* modality, int64_t T, int64_t k,
                int32_t* rows) {
  auto rank = [&](int64_t t) {
    return (static_cast<uint64_t>(score_key(scores[t])) << 32) | static_cast<uint64_t>(~static_cast<uint32_t>(t));
  };
  std::vector<uint64_t> ranks;
  ranks.reserve(static_cast<size_t>(T));
  for (int64_t t = 0; t < T; ++t)
    if (modality[t] >= 0) ranks.push_back(rank(t));
  const int64_t n = static_cast<int64_t>(ranks.size());
  if (k > n) fail("ERR_RANGE", "mod_select: ", k, " rows to select but only ", n, " non-padding rows");
  if (k == 0) return;
  std::nth_element(ranks.begin(), ranks.begin() + (k - 1), ranks.end(), std::greater<uint64_t>());
  const uint64_t threshold = ranks[static_cast<size_t>(k - 1)];
  int64_t out = 0;
  for (int64_t t = 0; t < T && out < k; ++t)
    if (modality[t] >= 0 && rank(t) >= threshold) rows[out++] = static_cast<int32_t>(t);
}

void segment_starts(const LaunchCtx& ctx, const int32_t* seg, int64_t n, int32_t* starts) {
  for (int64_t j = 0; j < n; ++j) starts[j] = (j > 0 && seg[j] == seg[j - 1]) ? starts[j - 1] : static_cast<int32_t>(j);
}

}  // namespace moma::cpu
