// Mixture-of-experts ops (SPEC.md §2): validate, allocate outputs sized by host-known bounds,
// queue the CPU or CUDA kernel (csrc/cpu/kernels_moe.h, cuda/kernels_moe.h). Nothing here reads
// device data: counts and offsets travel as int32 tensors.
#include "moe.h"

#include <cmath>
#include <string>

#include "../core/error.h"
#include "../core/queue.h"
#include "backend.h"
#include "op_util.h"
#include "ops.h"

namespace moma::ops {
namespace {

void check_rank(const char* op, const Tensor& t, const char* arg, int ndim) {
  if (t.ndim() != ndim)
    fail("ERR_SHAPE", op, ": ", arg, " must have ", ndim, " dims, got shape ", shape_str(t.shape));
}

void check_int_vector(const char* op, const Tensor& t, const char* arg, int64_t n) {
  check_dtype(op, t, arg, {DType::I32});
  check_shape(op, t, arg, Shape{n});
}

void check_scores(const char* op, const Tensor& t, const char* arg, const MoeLayout& L) {
  check_dtype(op, t, arg, {DType::F32});
  check_rank(op, t, arg, 2);
  if (t.shape[1] != L.num_experts)
    fail("ERR_SHAPE", op, ": ", arg, " has shape ", shape_str(t.shape), " but the layout has ", L.num_experts,
         " experts (columns)");
}

void check_partition(const char* op, const MoePartition& p, const MoeLayout& L, Device device, int64_t T) {
  for (const auto& [t, name] : {std::pair<const Tensor*, const char*>{&p.row_group, "partition.rowGroup"},
                                {&p.counts, "partition.counts"},
                                {&p.offsets, "partition.offsets"},
                                {&p.perm, "partition.perm"}}) {
    if (t->device() != device)
      fail("ERR_DEVICE", op, ": ", name, " is on ", t->device().str(), " but the scores are on ", device.str());
  }
  check_int_vector(op, p.row_group, "partition.rowGroup", T);
  check_int_vector(op, p.counts, "partition.counts", L.num_groups);
  check_int_vector(op, p.offsets, "partition.offsets", L.num_groups + 1);
  check_int_vector(op, p.perm, "partition.perm", T);
}

// `other` must have h1's dtype (ERR_DTYPE) and shape (ERR_SHAPE).
void check_same_operand(const char* op, const Tensor& h1, const Tensor& other, const char* arg) {
  if (other.dtype != h1.dtype)
    fail("ERR_DTYPE", op, ": ", arg, " is ", dtype_name(other.dtype), " but h1 is ", dtype_name(h1.dtype));
  if (other.shape != h1.shape)
    fail("ERR_SHAPE", op, ": ", arg, " has shape ", shape_str(other.shape), " but h1 has ", shape_str(h1.shape));
}

void check_rows(const char* op, const Tensor& x, const char* arg) {
  check_dtype(op, x, arg, {DType::F32, DType::BF16});
  check_rank(op, x, arg, 2);
}

}  // namespace

MoeLayout make_moe_layout(const std::vector<int64_t>& experts, const std::vector<int64_t>& group_of, const char* op) {
  MoeLayout L;
  if (experts.empty() || experts.size() > static_cast<size_t>(kMaxMoeGroups))
    fail("ERR_ARG", op, ": the layout must have 1..", kMaxMoeGroups, " groups, got ", experts.size());
  if (group_of.empty() || group_of.size() > static_cast<size_t>(kMaxMoeModalities))
    fail("ERR_ARG", op, ": groupOfModality must have 1..", kMaxMoeModalities, " entries, got ", group_of.size());
  L.num_groups = static_cast<int32_t>(experts.size());
  int64_t total = 0;
  for (size_t g = 0; g < experts.size(); ++g) {
    if (experts[g] < 1 || experts[g] > kMaxMoeExperts)
      fail("ERR_ARG", op, ": group ", g, " has ", experts[g], " experts (expected 1..", kMaxMoeExperts, ")");
    L.experts[g] = static_cast<int32_t>(experts[g]);
    L.begin[g] = static_cast<int32_t>(total);
    total += experts[g];
    if (experts[g] > L.max_group_experts) L.max_group_experts = static_cast<int32_t>(experts[g]);
  }
  if (total > kMaxMoeExperts) fail("ERR_ARG", op, ": ", total, " experts in all (at most ", kMaxMoeExperts, ")");
  L.begin[L.num_groups] = static_cast<int32_t>(total);
  L.num_experts = static_cast<int32_t>(total);
  L.num_modalities = static_cast<int32_t>(group_of.size());
  for (size_t m = 0; m < group_of.size(); ++m) {
    if (group_of[m] < -1 || group_of[m] >= L.num_groups)
      fail("ERR_ARG", op, ": groupOfModality[", m, "] = ", group_of[m], " is not -1 or a group in [0, ", L.num_groups, ")");
    L.group_of[m] = static_cast<int32_t>(group_of[m]);
  }
  return L;
}

MoePartition moe_partition(const Tensor& modality, const MoeLayout& L) {
  const char* op = "moe_partition";
  check_dtype(op, modality, "modality", {DType::I32});
  check_rank(op, modality, "modality", 1);
  int64_t T = modality.numel();
  if (T > INT32_MAX) fail("ERR_SHAPE", op, ": ", T, " rows (at most 2^31 - 1)");
  Device dev = modality.device();
  MoePartition p{empty_tensor({T}, DType::I32, dev, op), empty_tensor({L.num_groups}, DType::I32, dev, op),
                 empty_tensor({L.num_groups + 1}, DType::I32, dev, op), empty_tensor({T}, DType::I32, dev, op)};
  submit(op, dev, {modality}, {p.row_group, p.counts, p.offsets, p.perm}, [=] {
    MOMA_LAUNCH(dev, moe_partition, cdata<int32_t>(modality), T, L, mdata<int32_t>(p.row_group),
                mdata<int32_t>(p.counts), mdata<int32_t>(p.offsets), mdata<int32_t>(p.perm));
  });
  return p;
}

Tensor moe_router_scores(const Tensor& logits, const Tensor& row_group, const MoeLayout& L, RouterFn fn, bool gumbel,
                         uint64_t seed, uint64_t offset) {
  const char* op = "moe_router_scores";
  check_scores(op, logits, "logits", L);
  check_same_device(op, logits, "logits", row_group, "rowGroup");
  int64_t T = logits.shape[0];
  check_int_vector(op, row_group, "rowGroup", T);
  Device dev = logits.device();
  Tensor scores = empty_tensor(logits.shape, DType::F32, dev, op);
  submit(op, dev, {logits, row_group}, {scores}, [=] {
    MOMA_LAUNCH(dev, moe_router_scores, cdata<float>(logits), cdata<int32_t>(row_group), T, L, fn, gumbel, seed, offset,
                mdata<float>(scores));
  });
  return scores;
}

Tensor moe_router_scores_backward(const Tensor& scores, const Tensor& dscores, const Tensor& row_group,
                                  const MoeLayout& L, RouterFn fn) {
  const char* op = "moe_router_scores_backward";
  check_scores(op, scores, "scores", L);
  check_same_device(op, scores, "scores", dscores, "dscores");
  check_same_device(op, scores, "scores", row_group, "rowGroup");
  check_dtype(op, dscores, "dscores", {DType::F32});
  check_shape(op, dscores, "dscores", scores.shape);
  int64_t T = scores.shape[0];
  check_int_vector(op, row_group, "rowGroup", T);
  Device dev = scores.device();
  Tensor dlogits = empty_tensor(scores.shape, DType::F32, dev, op);
  submit(op, dev, {scores, dscores, row_group}, {dlogits}, [=] {
    MOMA_LAUNCH(dev, moe_router_scores_backward, cdata<float>(scores), cdata<float>(dscores), cdata<int32_t>(row_group),
                T, L, fn, mdata<float>(dlogits));
  });
  return dlogits;
}

MoeRouting moe_route(const Tensor& scores, const MoePartition& part, const MoeLayout& L, const RoutingParams& p,
                     const Tensor* select) {
  const char* op = "moe_route";
  check_scores(op, scores, "scores", L);
  int64_t T = scores.shape[0];
  Device dev = scores.device();
  check_partition(op, part, L, dev, T);
  if (!(p.capacity > 0) || !std::isfinite(p.capacity))
    fail("ERR_ARG", op, ": capacityFactor must be a finite number > 0, got ", p.capacity);
  if (p.mode == RoutingMode::TokenChoice && p.top_k < 1)
    fail("ERR_ARG", op, ": topK must be >= 1, got ", p.top_k);
  const bool threshold = p.mode == RoutingMode::Threshold;
  if (threshold && !select) fail("ERR_ARG", op, ": select is required in threshold mode");
  if (!threshold && select) fail("ERR_ARG", op, ": select is only used in threshold mode");
  std::vector<Tensor> inputs{scores, part.row_group, part.offsets, part.perm};
  if (select) {
    check_same_device(op, scores, "scores", *select, "select");
    check_dtype(op, *select, "select", {DType::F32});
    check_shape(op, *select, "select", Shape{T, L.num_experts});
    inputs.push_back(*select);
  }
  const float* sel = select ? cdata<float>(*select) : nullptr;
  int64_t R = moe_slot_bound(T, L, p);
  if (R > INT32_MAX) fail("ERR_SHAPE", op, ": ", R, " slots (at most 2^31 - 1); use fewer rows per call");
  int64_t W = L.max_group_experts;
  MoeRouting r{empty_tensor({L.num_experts + 1}, DType::I32, dev, op), empty_tensor({R}, DType::I32, dev, op),
               empty_tensor({R}, DType::F32, dev, op), empty_tensor({T, W}, DType::I32, dev, op)};
  submit(op, dev, inputs, {r.expert_offsets, r.slot_row, r.slot_gate, r.row_slots}, [=] {
    MOMA_LAUNCH(dev, moe_route, cdata<float>(scores), cdata<int32_t>(part.row_group), cdata<int32_t>(part.offsets),
                cdata<int32_t>(part.perm), T, L, p, R, mdata<int32_t>(r.expert_offsets), mdata<int32_t>(r.slot_row),
                mdata<float>(r.slot_gate), mdata<int32_t>(r.row_slots), sel);
  });
  return r;
}

Tensor moe_gather_rows(const Tensor& x, const Tensor& slot_row, const Tensor* scale) {
  const char* op = "moe_gather_rows";
  check_rows(op, x, "x");
  check_same_device(op, x, "x", slot_row, "slotRow");
  check_dtype(op, slot_row, "slotRow", {DType::I32});
  check_rank(op, slot_row, "slotRow", 1);
  int64_t T = x.shape[0], d = x.shape[1], R = slot_row.numel();
  std::vector<Tensor> inputs{x, slot_row};
  if (scale) {
    check_same_device(op, x, "x", *scale, "scale");
    check_dtype(op, *scale, "scale", {DType::F32});
    check_shape(op, *scale, "scale", Shape{R});
    inputs.push_back(*scale);
  }
  Device dev = x.device();
  Tensor y = empty_tensor({R, d}, x.dtype, dev, op);
  if (R * d == 0) return y;
  const float* sc = scale ? cdata<float>(*scale) : nullptr;
  submit(op, dev, inputs, {y}, [=] {
    MOMA_LAUNCH(dev, moe_gather_rows, x.dtype, x.data(), cdata<int32_t>(slot_row), sc, T, R, d, y.data());
  });
  return y;
}

Tensor moe_combine(const Tensor& src, const Tensor& row_slots, const Tensor* weight) {
  const char* op = "moe_combine";
  check_rows(op, src, "src");
  check_same_device(op, src, "src", row_slots, "rowSlots");
  check_dtype(op, row_slots, "rowSlots", {DType::I32});
  check_rank(op, row_slots, "rowSlots", 2);
  int64_t R = src.shape[0], d = src.shape[1], T = row_slots.shape[0], W = row_slots.shape[1];
  std::vector<Tensor> inputs{src, row_slots};
  if (weight) {
    check_same_device(op, src, "src", *weight, "weight");
    check_dtype(op, *weight, "weight", {DType::F32});
    check_shape(op, *weight, "weight", Shape{R});
    inputs.push_back(*weight);
  }
  Device dev = src.device();
  Tensor y = empty_tensor({T, d}, src.dtype, dev, op);
  if (T * d == 0) return y;
  const float* w = weight ? cdata<float>(*weight) : nullptr;
  submit(op, dev, inputs, {y}, [=] {
    MOMA_LAUNCH(dev, moe_combine, src.dtype, src.data(), cdata<int32_t>(row_slots), w, T, W, R, d, y.data());
  });
  return y;
}

Tensor moe_gate_grad(const Tensor& out, const Tensor& dy, const Tensor& slot_row, const Tensor& expert_offsets,
                     const MoeLayout& L) {
  const char* op = "moe_gate_grad";
  check_rows(op, out, "out");
  check_rows(op, dy, "dy");
  check_same_device(op, out, "out", dy, "dy");
  check_same_device(op, out, "out", slot_row, "slotRow");
  check_same_device(op, out, "out", expert_offsets, "expertOffsets");
  if (dy.dtype != out.dtype)
    fail("ERR_DTYPE", op, ": dy is ", dtype_name(dy.dtype), " but out is ", dtype_name(out.dtype));
  int64_t R = out.shape[0], d = out.shape[1], T = dy.shape[0];
  if (dy.shape[1] != d)
    fail("ERR_SHAPE", op, ": dy ", shape_str(dy.shape), " and out ", shape_str(out.shape), " differ in width");
  check_int_vector(op, slot_row, "slotRow", R);
  check_int_vector(op, expert_offsets, "expertOffsets", L.num_experts + 1);
  Device dev = out.device();
  Tensor dscores = empty_tensor({T, L.num_experts}, DType::F32, dev, op);
  submit(op, dev, {out, dy, slot_row, expert_offsets}, {dscores}, [=] {
    MOMA_LAUNCH(dev, moe_gate_grad, out.dtype, out.data(), dy.data(), cdata<int32_t>(slot_row),
                cdata<int32_t>(expert_offsets), T, R, d, L, mdata<float>(dscores));
  });
  return dscores;
}

Tensor grouped_matmul(const Tensor& x, const Tensor& w, const Tensor& offsets, bool trans_w) {
  const char* op = "grouped_matmul";
  check_rows(op, x, "x");
  check_dtype(op, w, "w", {DType::F32, DType::BF16});
  check_rank(op, w, "w", 3);
  check_same_device(op, x, "x", w, "w");
  check_same_device(op, x, "x", offsets, "offsets");
  int64_t E = w.shape[0], R = x.shape[0], K = x.shape[1];
  int64_t wK = trans_w ? w.shape[2] : w.shape[1], N = trans_w ? w.shape[1] : w.shape[2];
  if (wK != K)
    fail("ERR_SHAPE", op, ": x ", shape_str(x.shape), " has K=", K, " but w ", shape_str(w.shape),
         (trans_w ? " (transposed)" : ""), " has K=", wK);
  check_int_vector(op, offsets, "offsets", E + 1);
  DType out_dtype = (x.dtype == DType::BF16 && w.dtype == DType::BF16) ? DType::BF16 : DType::F32;
  Device dev = x.device();
  Tensor y = empty_tensor({R, N}, out_dtype, dev, op);
  if (R * N == 0) return y;
  submit(op, dev, {x, w, offsets}, {y}, [=] {
    MOMA_LAUNCH(dev, grouped_gemm, x.dtype, x.data(), w.dtype, w.data(), trans_w, cdata<int32_t>(offsets), E, R, K,
                N, out_dtype, y.data());
  });
  return y;
}

GroupedSwiglu grouped_matmul_swiglu(const Tensor& x, const Tensor& w1, const Tensor& w3, const Tensor& offsets,
                                    bool keep_preactivations) {
  const char* op = "grouped_matmul_swiglu";
  check_rows(op, x, "x");
  check_dtype(op, w1, "w1", {DType::F32, DType::BF16});
  check_rank(op, w1, "w1", 3);
  check_same_device(op, x, "x", w1, "w1");
  check_same_device(op, x, "x", w3, "w3");
  check_same_device(op, x, "x", offsets, "offsets");
  if (w3.dtype != w1.dtype || w3.shape != w1.shape)
    fail("ERR_SHAPE", op, ": w1 ", shape_str(w1.shape), " ", dtype_name(w1.dtype), " and w3 ", shape_str(w3.shape), " ",
         dtype_name(w3.dtype), " must have the same shape and dtype");
  const int64_t E = w1.shape[0], R = x.shape[0], K = x.shape[1], N = w1.shape[2];
  if (w1.shape[1] != K)
    fail("ERR_SHAPE", op, ": x ", shape_str(x.shape), " has K=", K, " but w1 ", shape_str(w1.shape), " has K=", w1.shape[1]);
  check_int_vector(op, offsets, "offsets", E + 1);
  const DType out_dtype = (x.dtype == DType::BF16 && w1.dtype == DType::BF16) ? DType::BF16 : DType::F32;
  const Device dev = x.device();
  const bool keep = keep_preactivations;
  GroupedSwiglu r{empty_tensor({R, N}, out_dtype, dev, op), Tensor(), Tensor()};
  if (keep) {
    r.h1 = empty_tensor({R, N}, out_dtype, dev, op);
    r.h3 = empty_tensor({R, N}, out_dtype, dev, op);
  }
  if (R * N == 0) return r;
  std::vector<Tensor> outs{r.a};
  if (keep) outs.insert(outs.end(), {r.h1, r.h3});
  submit(op, dev, {x, w1, w3, offsets}, outs, [=] {
    MOMA_LAUNCH(dev, grouped_gemm_swiglu, x.dtype, x.data(), w1.dtype, w1.data(), w3.data(), false,
                cdata<int32_t>(offsets), E, R, K, N, out_dtype, r.a.data(), keep ? r.h1.data() : nullptr,
                keep ? r.h3.data() : nullptr);
  });
  return r;
}

Tensor grouped_matmul_wgrad(const Tensor& x, const Tensor& dy, const Tensor& offsets) {
  const char* op = "grouped_matmul_wgrad";
  check_rows(op, x, "x");
  check_rows(op, dy, "dy");
  check_same_device(op, x, "x", dy, "dy");
  check_same_device(op, x, "x", offsets, "offsets");
  check_dtype(op, offsets, "offsets", {DType::I32});
  check_rank(op, offsets, "offsets", 1);
  if (offsets.numel() < 2) fail("ERR_SHAPE", op, ": offsets must have E + 1 >= 2 entries, got ", offsets.numel());
  int64_t R = x.shape[0], K = x.shape[1], N = dy.shape[1], E = offsets.numel() - 1;
  if (dy.shape[0] != R)
    fail("ERR_SHAPE", op, ": x ", shape_str(x.shape), " and dy ", shape_str(dy.shape), " differ in rows");
  Device dev = x.device();
  Tensor dw = empty_tensor({E, K, N}, DType::F32, dev, op);
  if (E * K * N == 0) return dw;
  submit(op, dev, {x, dy, offsets}, {dw}, [=] {
    MOMA_LAUNCH(dev, grouped_gemm_wgrad, x.dtype, x.data(), dy.dtype, dy.data(), cdata<int32_t>(offsets), E, R, K,
                N, mdata<float>(dw));
  });
  return dw;
}

Tensor swiglu(const Tensor& h1, const Tensor& h3) {
  const char* op = "swiglu";
  check_dtype(op, h1, "h1", {DType::F32, DType::BF16});
  check_same_device(op, h1, "h1", h3, "h3");
  check_same_operand(op, h1, h3, "h3");
  Device dev = h1.device();
  Tensor a = empty_tensor(h1.shape, h1.dtype, dev, op);
  int64_t n = h1.numel();
  if (n == 0) return a;
  submit(op, dev, {h1, h3}, {a}, [=] {
    MOMA_LAUNCH(dev, swiglu, h1.dtype, h1.data(), h3.data(), a.data(), n);
  });
  return a;
}

std::pair<Tensor, Tensor> swiglu_backward(const Tensor& h1, const Tensor& h3, const Tensor& da) {
  const char* op = "swiglu_backward";
  check_dtype(op, h1, "h1", {DType::F32, DType::BF16});
  check_same_device(op, h1, "h1", h3, "h3");
  check_same_device(op, h1, "h1", da, "da");
  check_same_operand(op, h1, h3, "h3");
  check_same_operand(op, h1, da, "da");
  Device dev = h1.device();
  Tensor dh1 = empty_tensor(h1.shape, h1.dtype, dev, op), dh3 = empty_tensor(h1.shape, h1.dtype, dev, op);
  int64_t n = h1.numel();
  if (n == 0) return {dh1, dh3};
  submit(op, dev, {h1, h3, da}, {dh1, dh3}, [=] {
    MOMA_LAUNCH(dev, swiglu_backward, h1.dtype, h1.data(), h3.data(), da.data(), dh1.data(), dh3.data(), n);
  });
  return {dh1, dh3};
}

MoeRoutingStats moe_routing_stats(const MoePartition& part, const MoeRouting& routing, const MoeLayout& L) {
  const char* op = "moe_routing_stats";
  Device dev = routing.slot_gate.device();
  check_dtype(op, routing.row_slots, "routing.rowSlots", {DType::I32});
  check_rank(op, routing.row_slots, "routing.rowSlots", 2);
  int64_t T = routing.row_slots.shape[0];
  check_partition(op, part, L, dev, T);
  if (routing.row_slots.shape[1] != L.max_group_experts)
    fail("ERR_SHAPE", op, ": routing.rowSlots has shape ", shape_str(routing.row_slots.shape), ", expected [", T, ", ",
         L.max_group_experts, "] for this layout");
  check_int_vector(op, routing.expert_offsets, "routing.expertOffsets", L.num_experts + 1);
  check_dtype(op, routing.slot_gate, "routing.slotGate", {DType::F32});
  check_rank(op, routing.slot_gate, "routing.slotGate", 1);
  for (const Tensor* t : {&routing.expert_offsets, &routing.row_slots})
    if (t->device() != dev) fail("ERR_DEVICE", op, ": the routing tensors are on different devices");
  MoeRoutingStats s{empty_tensor({L.num_experts, 2}, DType::F32, dev, op),
                    empty_tensor({L.num_groups, 4}, DType::F32, dev, op)};
  submit(op, dev, {part.row_group, part.offsets, routing.expert_offsets, routing.slot_gate, routing.row_slots},
         {s.expert_stats, s.group_stats}, [=] {
           MOMA_LAUNCH(dev, moe_routing_stats, cdata<int32_t>(part.row_group), cdata<int32_t>(part.offsets),
                       cdata<int32_t>(routing.expert_offsets), cdata<float>(routing.slot_gate),
                       cdata<int32_t>(routing.row_slots), T, L, mdata<float>(s.expert_stats),
                       mdata<float>(s.group_stats));
         });
  return s;
}

Tensor mod_select(const Tensor& scores, const Tensor& modality, int64_t k) {
  const char* op = "mod_select";
  check_dtype(op, scores, "scores", {DType::F32});
  check_rank(op, scores, "scores", 1);
  check_same_device(op, scores, "scores", modality, "modality");
  int64_t T = scores.numel();
  check_int_vector(op, modality, "modality", T);
  if (k < 0 || k > T) fail("ERR_ARG", op, ": k must be in [0, ", T, "], got ", k);
  Device dev = scores.device();
  Tensor rows = empty_tensor({k}, DType::I32, dev, op);
  if (k == 0) return rows;
  submit(op, dev, {scores, modality}, {rows}, [=] {
    MOMA_LAUNCH(dev, mod_select, cdata<float>(scores), cdata<int32_t>(modality), T, k, mdata<int32_t>(rows));
  });
  return rows;
}

Tensor segment_starts(const Tensor& seg) {
  const char* op = "segment_starts";
  check_dtype(op, seg, "seg", {DType::I32});
  check_rank(op, seg, "seg", 1);
  int64_t n = seg.numel();
  Device dev = seg.device();
  Tensor starts = empty_tensor({n}, DType::I32, dev, op);
  if (n == 0) return starts;
  submit(op, dev, {seg}, {starts}, [=] {
    MOMA_LAUNCH(dev, segment_starts, cdata<int32_t>(seg), n, mdata<int32_t>(starts));
  });
  return starts;
}

}  // namespace moma::ops
