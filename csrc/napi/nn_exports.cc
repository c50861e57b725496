// Exports: the transformer ops (csrc/ops/nn.h). Multi-tensor results come back as arrays of handles.
#include "bridge.h"
#include "ops/nn.h"

namespace moma::napi {
namespace {

using Info = const Napi::CallbackInfo&;

Tensor arg(Info info, size_t i, const char* op, const char* name) { return TensorHandle::unwrap(info[i], op, name); }

Napi::Value handles(Info info, std::initializer_list<Tensor> tensors) {
  Napi::Array out = Napi::Array::New(info.Env(), tensors.size());
  uint32_t i = 0;
  for (const Tensor& t : tensors) out.Set(i++, TensorHandle::wrap(info.Env(), t));
  return out;
}

bool present(Info info, size_t i) { return i < info.Length() && !info[i].IsNull() && !info[i].IsUndefined(); }

// rmsNorm(x, w, eps) -> [y, rstd]
Napi::Value rms_norm(Info info) {
  const char* op = "rms_norm";
  auto [y, rstd] = ops::rmsnorm(arg(info, 0, op, "x"), arg(info, 1, op, "weight"), to_number(info[2], op, "eps"));
  return handles(info, {y, rstd});
}

// rmsNormBackward(x, w, rstd, dy) -> [dx, dw]
Napi::Value rms_norm_backward(Info info) {
  const char* op = "rms_norm_backward";
  auto [dx, dw] = ops::rmsnorm_backward(arg(info, 0, op, "x"), arg(info, 1, op, "weight"), arg(info, 2, op, "rstd"),
                                        arg(info, 3, op, "dy"));
  return handles(info, {dx, dw});
}

// layerNorm(x, w, b, eps) -> [y, mean, rstd]
Napi::Value layer_norm(Info info) {
  const char* op = "layer_norm";
  ops::LayerNormOut r = ops::layernorm(arg(info, 0, op, "x"), arg(info, 1, op, "weight"), arg(info, 2, op, "bias"),
                                       to_number(info[3], op, "eps"));
  return handles(info, {r.y, r.mean, r.rstd});
}

// layerNormBackward(x, w, mean, rstd, dy) -> [dx, dw, db]
Napi::Value layer_norm_backward(Info info) {
  const char* op = "layer_norm_backward";
  ops::LayerNormGrads g = ops::layernorm_backward(arg(info, 0, op, "x"), arg(info, 1, op, "weight"),
                                                  arg(info, 2, op, "mean"), arg(info, 3, op, "rstd"), arg(info, 4, op, "dy"));
  return handles(info, {g.dx, g.dw, g.db});
}

// rope(x, positions, theta, inverse)
Napi::Value rope(Info info) {
  const char* op = "rope";
  return TensorHandle::wrap(info.Env(), ops::rope(arg(info, 0, op, "x"), arg(info, 1, op, "positions"),
                                                  to_number(info[2], op, "theta"), to_bool(info[3], op, "inverse")));
}

// attention(q, k, v, segStart, scale) -> [o, lse]
Napi::Value attention(Info info) {
  const char* op = "attention";
  auto [o, lse] = ops::attention(arg(info, 0, op, "q"), arg(info, 1, op, "k"), arg(info, 2, op, "v"),
                                 arg(info, 3, op, "segStart"), to_number(info[4], op, "scale"));
  return handles(info, {o, lse});
}

// attentionBackward(q, k, v, o, lse, dout, segStart, scale) -> [dq, dk, dv]
Napi::Value attention_backward(Info info) {
  const char* op = "attention_backward";
  ops::AttentionGrads g = ops::attention_backward(arg(info, 0, op, "q"), arg(info, 1, op, "k"), arg(info, 2, op, "v"),
                                                  arg(info, 3, op, "o"), arg(info, 4, op, "lse"), arg(info, 5, op, "dout"),
                                                  arg(info, 6, op, "segStart"), to_number(info[7], op, "scale"));
  return handles(info, {g.dq, g.dk, g.dv});
}

// crossEntropy(logits, targets) -> [nll, lse]
Napi::Value cross_entropy(Info info) {
  const char* op = "cross_entropy";
  auto [nll, lse] = ops::cross_entropy(arg(info, 0, op, "logits"), arg(info, 1, op, "targets"));
  return handles(info, {nll, lse});
}

// crossEntropyBackward(logits, targets, lse, gradNll, gradZ | null)
Napi::Value cross_entropy_backward(Info info) {
  const char* op = "cross_entropy_backward";
  Tensor gz;
  bool has_z = present(info, 4);
  if (has_z) gz = arg(info, 4, op, "gradZ");
  return TensorHandle::wrap(info.Env(), ops::cross_entropy_backward(arg(info, 0, op, "logits"), arg(info, 1, op, "targets"),
                                                                    arg(info, 2, op, "lse"), arg(info, 3, op, "gradNll"),
                                                                    has_z ? &gz : nullptr));
}

// adamw(p, g, m, v, {lr, beta1, beta2, eps, weightDecay, gradScale, biasC1, biasC2}, wantBf16)
//   -> [p, m, v] or [p, m, v, pBf16]
Napi::Value adamw(Info info) {
  const char* op = "adamw";
  if (!info[4].IsObject()) fail("ERR_ARG", op, ": hyper-parameters must be an object");
  Napi::Object o = info[4].As<Napi::Object>();
  AdamWParams h;
  h.lr = static_cast<float>(to_number(o.Get("lr"), op, "lr"));
  h.beta1 = static_cast<float>(to_number(o.Get("beta1"), op, "beta1"));
  h.beta2 = static_cast<float>(to_number(o.Get("beta2"), op, "beta2"));
  h.eps = static_cast<float>(to_number(o.Get("eps"), op, "eps"));
  h.weight_decay = static_cast<float>(to_number(o.Get("weightDecay"), op, "weightDecay"));
  h.grad_scale = static_cast<float>(to_number(o.Get("gradScale"), op, "gradScale"));
  h.bias_c1 = static_cast<float>(to_number(o.Get("biasC1"), op, "biasC1"));
  h.bias_c2 = static_cast<float>(to_number(o.Get("biasC2"), op, "biasC2"));
  bool bf16 = to_bool(info[5], op, "wantBf16");
  ops::AdamWOut r = ops::adamw(arg(info, 0, op, "param"), arg(info, 1, op, "grad"), arg(info, 2, op, "expAvg"),
                               arg(info, 3, op, "expAvgSq"), h, bf16);
  if (bf16) return handles(info, {r.p, r.m, r.v, r.p_bf16});
  return handles(info, {r.p, r.m, r.v});
}

}  // namespace

void register_nn_exports(Napi::Env env, Napi::Object exports) {
  exports.Set("rmsNorm", guarded(env, "rms_norm", rms_norm));
  exports.Set("rmsNormBackward", guarded(env, "rms_norm_backward", rms_norm_backward));
  exports.Set("layerNorm", guarded(env, "layer_norm", layer_norm));
  exports.Set("layerNormBackward", guarded(env, "layer_norm_backward", layer_norm_backward));
  exports.Set("rope", guarded(env, "rope", rope));
  exports.Set("attention", guarded(env, "attention", attention));
  exports.Set("attentionBackward", guarded(env, "attention_backward", attention_backward));
  exports.Set("crossEntropy", guarded(env, "cross_entropy", cross_entropy));
  exports.Set("crossEntropyBackward", guarded(env, "cross_entropy_backward", cross_entropy_backward));
  exports.Set("adamw", guarded(env, "adamw", adamw));
}

}  // namespace moma::napi
