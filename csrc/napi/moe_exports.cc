// Exports: the mixture-of-experts ops (csrc/ops/moe.h). A layout crosses as two int arrays
// (experts per group, group of each modality); multi-tensor results come back as arrays of handles.
#include "bridge.h"
#include "ops/moe.h"

namespace moma::napi {
namespace {

using Info = const Napi::CallbackInfo&;

Tensor arg(Info info, size_t i, const char* op, const char* name) { return TensorHandle::unwrap(info[i], op, name); }

MoeLayout layout_arg(Info info, size_t i, const char* op) {
  return ops::make_moe_layout(to_int_list(info[i], op, "layout.experts"), to_int_list(info[i + 1], op, "layout.groupOfModality"),
                              op);
}

Napi::Value handles(Info info, std::initializer_list<Tensor> tensors) {
  Napi::Array out = Napi::Array::New(info.Env(), tensors.size());
  uint32_t i = 0;
  for (const Tensor& t : tensors) out.Set(i++, TensorHandle::wrap(info.Env(), t));
  return out;
}

RouterFn router_fn_arg(Info info, size_t i, const char* op) {
  return to_enum<RouterFn>(info[i], static_cast<int>(RouterFn::Softmax), op, "fn");
}

// moePartition(modality, experts, groupOfModality) -> [rowGroup, counts, offsets, perm]
Napi::Value moe_partition(Info info) {
  const char* op = "moe_partition";
  ops::MoePartition p = ops::moe_partition(arg(info, 0, op, "modality"), layout_arg(info, 1, op));
  return handles(info, {p.row_group, p.counts, p.offsets, p.perm});
}

// moeRouterScores(logits, rowGroup, experts, groupOfModality, fn, gumbel, seed, offset)
Napi::Value moe_router_scores(Info info) {
  const char* op = "moe_router_scores";
  bool gumbel = to_bool(info[5], op, "gumbel");
  uint64_t seed = gumbel ? to_u64(info[6], op, "seed") : 0, offset = gumbel ? to_u64(info[7], op, "offset") : 0;
  return TensorHandle::wrap(info.Env(), ops::moe_router_scores(arg(info, 0, op, "logits"), arg(info, 1, op, "rowGroup"),
                                                               layout_arg(info, 2, op), router_fn_arg(info, 4, op),
                                                               gumbel, seed, offset));
}

// moeRouterScoresBackward(scores, dscores, rowGroup, experts, groupOfModality, fn)
Napi::Value moe_router_scores_backward(Info info) {
  const char* op = "moe_router_scores_backward";
  return TensorHandle::wrap(info.Env(), ops::moe_router_scores_backward(
                                            arg(info, 0, op, "scores"), arg(info, 1, op, "dscores"),
                                            arg(info, 2, op, "rowGroup"), layout_arg(info, 3, op), router_fn_arg(info, 5, op)));
}

// moeRoute(scores, rowGroup, counts, offsets, perm, experts, groupOfModality, mode, capacity, topK,
//          select | null) -> [expertOffsets, slotRow, slotGate, rowSlots]; select: threshold mode only
Napi::Value moe_route(Info info) {
  const char* op = "moe_route";
  ops::MoePartition part{arg(info, 1, op, "partition.rowGroup"), arg(info, 2, op, "partition.counts"),
                         arg(info, 3, op, "partition.offsets"), arg(info, 4, op, "partition.perm")};
  MoeLayout L = layout_arg(info, 5, op);
  RoutingParams p;
  p.mode = to_enum<RoutingMode>(info[7], static_cast<int>(RoutingMode::Threshold), op, "mode");
  p.capacity = to_number(info[8], op, "capacityFactor");
  int64_t k = to_int(info[9], op, "topK");
  if (k < 1 || k > kMaxMoeExperts) fail("ERR_ARG", op, ": topK must be in [1, ", kMaxMoeExperts, "], got ", k);
  p.top_k = static_cast<int32_t>(k);
  Tensor select;
  const bool has_select = !info[10].IsNull() && !info[10].IsUndefined();
  if (has_select) select = arg(info, 10, op, "select");
  ops::MoeRouting r = ops::moe_route(arg(info, 0, op, "scores"), part, L, p, has_select ? &select : nullptr);
  return handles(info, {r.expert_offsets, r.slot_row, r.slot_gate, r.row_slots});
}

// moeGatherRows(x, slotRow, scale | null)
Napi::Value moe_gather_rows(Info info) {
  const char* op = "moe_gather_rows";
  Tensor scale;
  bool scaled = !info[2].IsNull() && !info[2].IsUndefined();
  if (scaled) scale = arg(info, 2, op, "scale");
  return TensorHandle::wrap(info.Env(), ops::moe_gather_rows(arg(info, 0, op, "x"), arg(info, 1, op, "slotRow"),
                                                             scaled ? &scale : nullptr));
}

// moeCombine(src, rowSlots, weight | null)
Napi::Value moe_combine(Info info) {
  const char* op = "moe_combine";
  Tensor weight;
  bool weighted = !info[2].IsNull() && !info[2].IsUndefined();
  if (weighted) weight = arg(info, 2, op, "weight");
  return TensorHandle::wrap(info.Env(), ops::moe_combine(arg(info, 0, op, "src"), arg(info, 1, op, "rowSlots"),
                                                         weighted ? &weight : nullptr));
}

// moeGateGrad(out, dy, slotRow, expertOffsets, experts, groupOfModality)
Napi::Value moe_gate_grad(Info info) {
  const char* op = "moe_gate_grad";
  return TensorHandle::wrap(info.Env(), ops::moe_gate_grad(arg(info, 0, op, "out"), arg(info, 1, op, "dy"),
                                                           arg(info, 2, op, "slotRow"), arg(info, 3, op, "expertOffsets"),
                                                           layout_arg(info, 4, op)));
}

// groupedMatmul(x, w, offsets, transW)
Napi::Value grouped_matmul(Info info) {
  const char* op = "grouped_matmul";
  return TensorHandle::wrap(info.Env(), ops::grouped_matmul(arg(info, 0, op, "x"), arg(info, 1, op, "w"),
                                                            arg(info, 2, op, "offsets"), to_bool(info[3], op, "transW")));
}

// groupedMatmulWgrad(x, dy, offsets)
Napi::Value grouped_matmul_wgrad(Info info) {
  const char* op = "grouped_matmul_wgrad";
  return TensorHandle::wrap(info.Env(), ops::grouped_matmul_wgrad(arg(info, 0, op, "x"), arg(info, 1, op, "dy"),
                                                                  arg(info, 2, op, "offsets")));
}

// groupedMatmulSwiglu(x, w1, w3, offsets, keepPreactivations) -> [a, h1, h3] or [a]
Napi::Value grouped_matmul_swiglu(Info info) {
  const char* op = "grouped_matmul_swiglu";
  const bool keep = to_bool(info[4], op, "keepPreactivations");
  ops::GroupedSwiglu r = ops::grouped_matmul_swiglu(arg(info, 0, op, "x"), arg(info, 1, op, "w1"), arg(info, 2, op, "w3"),
                                                    arg(info, 3, op, "offsets"), keep);
  return keep ? handles(info, {r.a, r.h1, r.h3}) : handles(info, {r.a});
}

Napi::Value swiglu(Info info) {
  const char* op = "swiglu";
  return TensorHandle::wrap(info.Env(), ops::swiglu(arg(info, 0, op, "h1"), arg(info, 1, op, "h3")));
}

// swigluBackward(h1, h3, da) -> [dh1, dh3]
Napi::Value swiglu_backward(Info info) {
  const char* op = "swiglu_backward";
  auto [dh1, dh3] = ops::swiglu_backward(arg(info, 0, op, "h1"), arg(info, 1, op, "h3"), arg(info, 2, op, "da"));
  return handles(info, {dh1, dh3});
}

// moeRoutingStats(rowGroup, counts, offsets, perm, expertOffsets, slotRow, slotGate, rowSlots, experts,
//                 groupOfModality) -> [expertStats, groupStats]
Napi::Value moe_routing_stats(Info info) {
  const char* op = "moe_routing_stats";
  ops::MoePartition part{arg(info, 0, op, "partition.rowGroup"), arg(info, 1, op, "partition.counts"),
                         arg(info, 2, op, "partition.offsets"), arg(info, 3, op, "partition.perm")};
  ops::MoeRouting r{arg(info, 4, op, "routing.expertOffsets"), arg(info, 5, op, "routing.slotRow"),
                    arg(info, 6, op, "routing.slotGate"), arg(info, 7, op, "routing.rowSlots")};
  ops::MoeRoutingStats s = ops::moe_routing_stats(part, r, layout_arg(info, 8, op));
  return handles(info, {s.expert_stats, s.group_stats});
}

// modSelect(scores, modality, k)
Napi::Value mod_select(Info info) {
  const char* op = "mod_select";
  return TensorHandle::wrap(info.Env(), ops::mod_select(arg(info, 0, op, "scores"), arg(info, 1, op, "modality"),
                                                        to_int(info[2], op, "k")));
}

Napi::Value segment_starts(Info info) {
  return TensorHandle::wrap(info.Env(), ops::segment_starts(arg(info, 0, "segment_starts", "seg")));
}

}  // namespace

void register_moe_exports(Napi::Env env, Napi::Object exports) {
  exports.Set("moePartition", guarded(env, "moe_partition", moe_partition));
  exports.Set("moeRouterScores", guarded(env, "moe_router_scores", moe_router_scores));
  exports.Set("moeRouterScoresBackward", guarded(env, "moe_router_scores_backward", moe_router_scores_backward));
  exports.Set("moeRoute", guarded(env, "moe_route", moe_route));
  exports.Set("moeGatherRows", guarded(env, "moe_gather_rows", moe_gather_rows));
  exports.Set("moeCombine", guarded(env, "moe_combine", moe_combine));
  exports.Set("moeGateGrad", guarded(env, "moe_gate_grad", moe_gate_grad));
  exports.Set("groupedMatmul", guarded(env, "grouped_matmul", grouped_matmul));
  exports.Set("groupedMatmulWgrad", guarded(env, "grouped_matmul_wgrad", grouped_matmul_wgrad));
  exports.Set("groupedMatmulSwiglu", guarded(env, "grouped_matmul_swiglu", grouped_matmul_swiglu));
  exports.Set("swiglu", guarded(env, "swiglu", swiglu));
  exports.Set("swigluBackward", guarded(env, "swiglu_backward", swiglu_backward));
  exports.Set("moeRoutingStats", guarded(env, "moe_routing_stats", moe_routing_stats));
  exports.Set("modSelect", guarded(env, "mod_select", mod_select));
  exports.Set("segmentStarts", guarded(env, "segment_starts", segment_starts));
}

}  // namespace moma::napi
