// The mixture-of-experts ops (SPEC.md §2) on tensors: validation, allocation and queueing, like
// ops.h. Every output's size is known on the host from the input shapes (T, the layout and the
// slot bound R); data-dependent counts (rows per group, rows per expert) stay in device tensors.
// Kernel semantics: csrc/cpu/kernels_moe.h.
#pragma once
#include <vector>

#include "../core/moe_types.h"
#include "../core/tensor.h"

namespace moma::ops {

// Builds and validates a layout: experts[g] = E_g (1 <= E_g, sum <= kMaxMoeExperts, G <=
// kMaxMoeGroups), group_of[m] for each modality (-1 or a group; M <= kMaxMoeModalities).
MoeLayout make_moe_layout(const std::vector<int64_t>& experts, const std::vector<int64_t>& group_of,
                          const char* op);

struct MoePartition {
  Tensor row_group;  // int32 [T]
  Tensor counts;     // int32 [G]
  Tensor offsets;    // int32 [G + 1]
  Tensor perm;       // int32 [T]
};
MoePartition moe_partition(const Tensor& modality, const MoeLayout& L);

// logits float32 [T, E] -> scores float32 [T, E]. With gumbel, (seed, offset) is the generator
// state; the op uses philox_blocks_uniform(2 T E) blocks.
Tensor moe_router_scores(const Tensor& logits, const Tensor& row_group, const MoeLayout& L, RouterFn fn,
                         bool gumbel, uint64_t seed, uint64_t offset);
Tensor moe_router_scores_backward(const Tensor& scores, const Tensor& dscores, const Tensor& row_group,
                                  const MoeLayout& L, RouterFn fn);

struct MoeRouting {
  Tensor expert_offsets;  // int32 [E + 1]
  Tensor slot_row;        // int32 [R]
  Tensor slot_gate;       // float32 [R]
  Tensor row_slots;       // int32 [T, W]
};
// select: float32 [T, E] on the scores' device in threshold mode (the auxiliary router's
// probabilities, SPEC §4), nullptr in the other modes.
MoeRouting moe_route(const Tensor& scores, const MoePartition& part, const MoeLayout& L, const RoutingParams& p,
                     const Tensor* select);

// x [T, d] -> [R, d]; scale: float32 [R] or an empty Tensor (no scaling).
Tensor moe_gather_rows(const Tensor& x, const Tensor& slot_row, const Tensor* scale);
// src [R, d] -> [T, d] with T = row_slots.shape[0]; weight: float32 [R] or nullptr.
Tensor moe_combine(const Tensor& src, const Tensor& row_slots, const Tensor* weight);
// out [R, d], dy [T, d] -> dscores float32 [T, E].
Tensor moe_gate_grad(const Tensor& out, const Tensor& dy, const Tensor& slot_row, const Tensor& expert_offsets,
                     const MoeLayout& L);

// x [R, K], w [E, K, N] (or [E, N, K] with trans_w), offsets int32 [E + 1] -> [R, N].
// Output dtype: bf16 when x and w are bf16, else float32 (like matmul).
Tensor grouped_matmul(const Tensor& x, const Tensor& w, const Tensor& offsets, bool trans_w);
// x [R, K], dy [R, N] -> dw float32 [E, K, N], E = offsets.numel() - 1.
Tensor grouped_matmul_wgrad(const Tensor& x, const Tensor& dy, const Tensor& offsets);

Tensor swiglu(const Tensor& h1, const Tensor& h3);
// The expert FFN's first half in one pass: h1 = grouped_matmul(x, w1), h3 = grouped_matmul(x, w3),
// a = swiglu(h1, h3) from the float32 products (rounded once to the output dtype). Returns {a, h1, h3};
// h1 and h3 are empty tensors unless keep_preactivations (swiglu_backward reads them).
struct GroupedSwiglu {
  Tensor a, h1, h3;
};
GroupedSwiglu grouped_matmul_swiglu(const Tensor& x, const Tensor& w1, const Tensor& w3, const Tensor& offsets,
                                    bool keep_preactivations);
std::pair<Tensor, Tensor> swiglu_backward(const Tensor& h1, const Tensor& h3, const Tensor& da);

struct MoeRoutingStats {
  Tensor expert_stats;  // float32 [E, 2]
  Tensor group_stats;   // float32 [G, 4]
};
MoeRoutingStats moe_routing_stats(const MoePartition& part, const MoeRouting& routing, const MoeLayout& L);

// Mixture-of-depths selection: scores float32 [T], modality int32 [T] -> the k best rows with
// modality >= 0, int32 [k] in increasing row order (k known on the host: ceil(c_d T_valid)).
Tensor mod_select(const Tensor& scores, const Tensor& modality, int64_t k);
// seg int32 [n] -> starts int32 [n]: the first index of each row's run of equal ids.
Tensor segment_starts(const Tensor& seg);

}  // namespace moma::ops
