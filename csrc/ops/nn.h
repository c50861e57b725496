// Transformer ops (SPEC.md §1) on tensors: validation, allocation, queueing, like ops.h. Kernel
// semantics: csrc/cpu/kernels_nn.h. Saved statistics (rstd, mean, lse) are float32 tensors that
// the backward ops take back.
#pragma once
#include <utility>

#include "../core/nn_types.h"
#include "../core/tensor.h"

namespace moma::ops {

// x [..., D], w float32 [D] -> (y like x, rstd float32 [...]).
std::pair<Tensor, Tensor> rmsnorm(const Tensor& x, const Tensor& w, double eps);
// -> (dx like x, dw float32 [D]).
std::pair<Tensor, Tensor> rmsnorm_backward(const Tensor& x, const Tensor& w, const Tensor& rstd, const Tensor& dy);

struct LayerNormOut {
  Tensor y, mean, rstd;  // mean, rstd float32 [..., G]
};
// x [..., G, D], w and b float32 [G, D].
LayerNormOut layernorm(const Tensor& x, const Tensor& w, const Tensor& b, double eps);
struct LayerNormGrads {
  Tensor dx, dw, db;
};
LayerNormGrads layernorm_backward(const Tensor& x, const Tensor& w, const Tensor& mean, const Tensor& rstd,
                                  const Tensor& dy);

// x [N, H, D] (D even), pos int32 [N].
Tensor rope(const Tensor& x, const Tensor& pos, double theta, bool inverse);

// q, k, v [N, H, D] (same dtype), seg_start int32 [N] -> (o [N, H, D], lse float32 [N, H]).
std::pair<Tensor, Tensor> attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& seg_start,
                                    double scale);
struct AttentionGrads {
  Tensor dq, dk, dv;
};
AttentionGrads attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o,
                                  const Tensor& lse, const Tensor& dout, const Tensor& seg_start, double scale);

// logits [N, V], targets int32 [N] -> (nll float32 [N], lse float32 [N]).
std::pair<Tensor, Tensor> cross_entropy(const Tensor& logits, const Tensor& targets);
// g_nll float32 [N]; g_z float32 [N] or nullptr -> dlogits like logits.
Tensor cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse, const Tensor& g_nll,
                              const Tensor* g_z);

struct AdamWOut {
  Tensor p, m, v, p_bf16;  // p_bf16 empty unless asked for
};
// p, g, m, v float32 of one shape.
AdamWOut adamw(const Tensor& p, const Tensor& g, const Tensor& m, const Tensor& v, const AdamWParams& h,
               bool want_bf16);

}  // namespace moma::ops
