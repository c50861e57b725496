// Transformer ops (csrc/ops/nn.h): validate, allocate, queue the CPU or CUDA kernel
// (csrc/cpu/kernels_nn.h, cuda/kernels_nn.h).
#include "nn.h"

#include <cmath>

#include "../core/error.h"
#include "../core/queue.h"
#include "backend.h"
#include "op_util.h"
#include "ops.h"

namespace moma::ops {
namespace {

void check_float_act(const char* op, const Tensor& x, const char* arg, int min_dims) {
  check_dtype(op, x, arg, {DType::F32, DType::BF16});
  if (x.ndim() < min_dims)
    fail("ERR_SHAPE", op, ": ", arg, " must have at least ", min_dims, " dims, got shape ", shape_str(x.shape));
}

void check_like(const char* op, const Tensor& ref, const char* ref_name, const Tensor& t, const char* arg) {
  check_same_device(op, ref, ref_name, t, arg);
  if (t.dtype != ref.dtype)
    fail("ERR_DTYPE", op, ": ", arg, " is ", dtype_name(t.dtype), " but ", ref_name, " is ", dtype_name(ref.dtype));
  check_shape(op, t, arg, ref.shape);
}

void check_f32(const char* op, const Tensor& ref, const Tensor& t, const char* arg, const Shape& shape) {
  check_same_device(op, ref, "x", t, arg);
  check_dtype(op, t, arg, {DType::F32});
  check_shape(op, t, arg, shape);
}

Shape leading(const Tensor& x, int keep_last) { return Shape(x.shape.begin(), x.shape.end() - keep_last); }

void check_eps(const char* op, double eps) {
  if (!(eps > 0) || !std::isfinite(eps)) fail("ERR_ARG", op, ": eps must be a finite number > 0, got ", eps);
}

}  // namespace

std::pair<Tensor, Tensor> rmsnorm(const Tensor& x, const Tensor& w, double eps) {
  const char* op = "rms_norm";
  check_float_act(op, x, "x", 1);
  check_eps(op, eps);
  int64_t D = x.shape.back(), N = x.numel() / std::max<int64_t>(D, 1);
  check_f32(op, x, w, "weight", Shape{D});
  Device dev = x.device();
  Tensor y = empty_tensor(x.shape, x.dtype, dev, op), rstd = empty_tensor(leading(x, 1), DType::F32, dev, op);
  if (x.numel() == 0) return {y, rstd};
  float e = static_cast<float>(eps);
  submit(op, dev, {x, w}, {y, rstd}, [=] {
    MOMA_LAUNCH(dev, rmsnorm, x.dtype, x.data(), cdata<float>(w), N, D, e, y.data(), mdata<float>(rstd));
  });
  return {y, rstd};
}

std::pair<Tensor, Tensor> rmsnorm_backward(const Tensor& x, const Tensor& w, const Tensor& rstd, const Tensor& dy) {
  const char* op = "rms_norm_backward";
  check_float_act(op, x, "x", 1);
  int64_t D = x.shape.back(), N = x.numel() / std::max<int64_t>(D, 1);
  check_f32(op, x, w, "weight", Shape{D});
  check_f32(op, x, rstd, "rstd", leading(x, 1));
  check_like(op, x, "x", dy, "dy");
  Device dev = x.device();
  Tensor dx = empty_tensor(x.shape, x.dtype, dev, op), dw = empty_tensor({D}, DType::F32, dev, op);
  submit(op, dev, {x, w, rstd, dy}, {dx, dw}, [=] {
    MOMA_LAUNCH(dev, rmsnorm_backward, x.dtype, x.data(), cdata<float>(w), cdata<float>(rstd), dy.data(), N, D,
                dx.data(), mdata<float>(dw));
  });
  return {dx, dw};
}

LayerNormOut layernorm(const Tensor& x, const Tensor& w, const Tensor& b, double eps) {
  const char* op = "layer_norm";
  check_float_act(op, x, "x", 2);
  check_eps(op, eps);
  int64_t D = x.shape.back(), G = x.shape[x.ndim() - 2];
  int64_t N = (G * D) == 0 ? 0 : x.numel() / (G * D);
  check_f32(op, x, w, "weight", Shape{G, D});
  check_f32(op, x, b, "bias", Shape{G, D});
  Device dev = x.device();
  LayerNormOut out{empty_tensor(x.shape, x.dtype, dev, op), empty_tensor(leading(x, 1), DType::F32, dev, op),
                   empty_tensor(leading(x, 1), DType::F32, dev, op)};
  if (x.numel() == 0) return out;
  float e = static_cast<float>(eps);
  submit(op, dev, {x, w, b}, {out.y, out.mean, out.rstd}, [=] {
    MOMA_LAUNCH(dev, layernorm, x.dtype, x.data(), cdata<float>(w), cdata<float>(b), N, G, D, e, out.y.data(),
                mdata<float>(out.mean), mdata<float>(out.rstd));
  });
  return out;
}

LayerNormGrads layernorm_backward(const Tensor& x, const Tensor& w, const Tensor& mean, const Tensor& rstd,
                                  const Tensor& dy) {
  const char* op = "layer_norm_backward";
  check_float_act(op, x, "x", 2);
  int64_t D = x.shape.back(), G = x.shape[x.ndim() - 2];
  int64_t N = (G * D) == 0 ? 0 : x.numel() / (G * D);
  check_f32(op, x, w, "weight", Shape{G, D});
  check_f32(op, x, mean, "mean", leading(x, 1));
  check_f32(op, x, rstd, "rstd", leading(x, 1));
  check_like(op, x, "x", dy, "dy");
  Device dev = x.device();
  LayerNormGrads g{empty_tensor(x.shape, x.dtype, dev, op), empty_tensor({G, D}, DType::F32, dev, op),
                   empty_tensor({G, D}, DType::F32, dev, op)};
  submit(op, dev, {x, w, mean, rstd, dy}, {g.dx, g.dw, g.db}, [=] {
    MOMA_LAUNCH(dev, layernorm_backward, x.dtype, x.data(), cdata<float>(w), cdata<float>(mean), cdata<float>(rstd),
                dy.data(), N, G, D, g.dx.data(), mdata<float>(g.dw), mdata<float>(g.db));
  });
  return g;
}

Tensor rope(const Tensor& x, const Tensor& pos, double theta, bool inverse) {
  const char* op = "rope";
  check_float_act(op, x, "x", 3);
  if (x.ndim() != 3) fail("ERR_SHAPE", op, ": x must be [rows, heads, head_dim], got shape ", shape_str(x.shape));
  int64_t N = x.shape[0], H = x.shape[1], D = x.shape[2];
  if (D % 2 != 0) fail("ERR_SHAPE", op, ": head_dim must be even, got ", D);
  check_same_device(op, x, "x", pos, "positions");
  check_dtype(op, pos, "positions", {DType::I32});
  check_shape(op, pos, "positions", Shape{N});
  if (!(theta > 0) || !std::isfinite(theta)) fail("ERR_ARG", op, ": theta must be a finite number > 0, got ", theta);
  Device dev = x.device();
  Tensor y = empty_tensor(x.shape, x.dtype, dev, op);
  if (x.numel() == 0) return y;
  float th = static_cast<float>(theta);
  submit(op, dev, {x, pos}, {y}, [=] {
    MOMA_LAUNCH(dev, rope, x.dtype, x.data(), cdata<int32_t>(pos), N, H, D, th, inverse, y.data());
  });
  return y;
}

std::pair<Tensor, Tensor> attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& seg_start,
                                    double scale) {
  const char* op = "attention";
  check_float_act(op, q, "q", 3);
  if (q.ndim() != 3) fail("ERR_SHAPE", op, ": q must be [rows, heads, head_dim], got shape ", shape_str(q.shape));
  check_like(op, q, "q", k, "k");
  check_like(op, q, "q", v, "v");
  int64_t N = q.shape[0], H = q.shape[1], D = q.shape[2];
  check_same_device(op, q, "q", seg_start, "segStart");
  check_dtype(op, seg_start, "segStart", {DType::I32});
  check_shape(op, seg_start, "segStart", Shape{N});
  if (!std::isfinite(scale)) fail("ERR_ARG", op, ": scale must be finite, got ", scale);
  Device dev = q.device();
  Tensor o = empty_tensor(q.shape, q.dtype, dev, op), lse = empty_tensor({N, H}, DType::F32, dev, op);
  if (q.numel() == 0) return {o, lse};
  float sc = static_cast<float>(scale);
  submit(op, dev, {q, k, v, seg_start}, {o, lse}, [=] {
    MOMA_LAUNCH(dev, attention, q.dtype, q.data(), k.data(), v.data(), cdata<int32_t>(seg_start), N, H, D, sc, o.data(),
                mdata<float>(lse));
  });
  return {o, lse};
}

AttentionGrads attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o,
                                  const Tensor& lse, const Tensor& dout, const Tensor& seg_start, double scale) {
  const char* op = "attention_backward";
  check_float_act(op, q, "q", 3);
  if (q.ndim() != 3) fail("ERR_SHAPE", op, ": q must be [rows, heads, head_dim], got shape ", shape_str(q.shape));
  check_like(op, q, "q", k, "k");
  check_like(op, q, "q", v, "v");
  check_like(op, q, "q", o, "o");
  check_like(op, q, "q", dout, "dout");
  int64_t N = q.shape[0], H = q.shape[1], D = q.shape[2];
  check_f32(op, q, lse, "lse", Shape{N, H});
  check_same_device(op, q, "q", seg_start, "segStart");
  check_dtype(op, seg_start, "segStart", {DType::I32});
  check_shape(op, seg_start, "segStart", Shape{N});
  Device dev = q.device();
  AttentionGrads g{empty_tensor(q.shape, q.dtype, dev, op), empty_tensor(q.shape, q.dtype, dev, op),
                   empty_tensor(q.shape, q.dtype, dev, op)};
  if (q.numel() == 0) return g;
  float sc = static_cast<float>(scale);
  submit(op, dev, {q, k, v, o, lse, dout, seg_start}, {g.dq, g.dk, g.dv}, [=] {
    MOMA_LAUNCH(dev, attention_backward, q.dtype, q.data(), k.data(), v.data(), o.data(), cdata<float>(lse),
                dout.data(), cdata<int32_t>(seg_start), N, H, D, sc, g.dq.data(), g.dk.data(), g.dv.data());
  });
  return g;
}

std::pair<Tensor, Tensor> cross_entropy(const Tensor& logits, const Tensor& targets) {
  const char* op = "cross_entropy";
  check_float_act(op, logits, "logits", 2);
  if (logits.ndim() != 2) fail("ERR_SHAPE", op, ": logits must be [rows, vocab], got shape ", shape_str(logits.shape));
  int64_t N = logits.shape[0], V = logits.shape[1];
  if (V < 1) fail("ERR_SHAPE", op, ": the vocabulary is empty");
  check_same_device(op, logits, "logits", targets, "targets");
  check_dtype(op, targets, "targets", {DType::I32});
  check_shape(op, targets, "targets", Shape{N});
  Device dev = logits.device();
  Tensor nll = empty_tensor({N}, DType::F32, dev, op), lse = empty_tensor({N}, DType::F32, dev, op);
  if (N == 0) return {nll, lse};
  submit(op, dev, {logits, targets}, {nll, lse}, [=] {
    MOMA_LAUNCH(dev, cross_entropy, logits.dtype, logits.data(), cdata<int32_t>(targets), N, V, mdata<float>(nll),
                mdata<float>(lse));
  });
  return {nll, lse};
}

Tensor cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse, const Tensor& g_nll,
                              const Tensor* g_z) {
  const char* op = "cross_entropy_backward";
  check_float_act(op, logits, "logits", 2);
  if (logits.ndim() != 2) fail("ERR_SHAPE", op, ": logits must be [rows, vocab], got shape ", shape_str(logits.shape));
  int64_t N = logits.shape[0], V = logits.shape[1];
  check_same_device(op, logits, "logits", targets, "targets");
  check_dtype(op, targets, "targets", {DType::I32});
  check_shape(op, targets, "targets", Shape{N});
  check_f32(op, logits, lse, "lse", Shape{N});
  check_f32(op, logits, g_nll, "gradNll", Shape{N});
  std::vector<Tensor> inputs{logits, targets, lse, g_nll};
  if (g_z) {
    check_f32(op, logits, *g_z, "gradZ", Shape{N});
    inputs.push_back(*g_z);
  }
  Device dev = logits.device();
  Tensor dl = empty_tensor(logits.shape, logits.dtype, dev, op);
  if (N == 0) return dl;
  const float* gz = g_z ? cdata<float>(*g_z) : nullptr;
  submit(op, dev, inputs, {dl}, [=] {
    MOMA_LAUNCH(dev, cross_entropy_backward, logits.dtype, logits.data(), cdata<int32_t>(targets), cdata<float>(lse),
                cdata<float>(g_nll), gz, N, V, dl.data());
  });
  return dl;
}

AdamWOut adamw(const Tensor& p, const Tensor& g, const Tensor& m, const Tensor& v, const AdamWParams& h,
               bool want_bf16) {
  const char* op = "adamw";
  check_dtype(op, p, "param", {DType::F32});
  check_f32(op, p, g, "grad", p.shape);
  check_f32(op, p, m, "exp_avg", p.shape);
  check_f32(op, p, v, "exp_avg_sq", p.shape);
  for (float value : {h.lr, h.beta1, h.beta2, h.eps, h.weight_decay, h.grad_scale, h.bias_c1, h.bias_c2})
    if (!std::isfinite(value)) fail("ERR_ARG", op, ": hyper-parameters must be finite");
  if (h.lr < 0 || h.eps <= 0 || h.weight_decay < 0 || h.beta1 < 0 || h.beta1 >= 1 || h.beta2 < 0 || h.beta2 >= 1 ||
      h.bias_c1 <= 0 || h.bias_c2 <= 0 || h.grad_scale < 0)
    fail("ERR_ARG", op, ": need lr >= 0, eps > 0, weight_decay >= 0, betas in [0, 1), grad_scale >= 0 (got lr ", h.lr,
         ", eps ", h.eps, ", weight_decay ", h.weight_decay, ", betas ", h.beta1, "/", h.beta2, ")");
  Device dev = p.device();
  AdamWOut out{empty_tensor(p.shape, DType::F32, dev, op), empty_tensor(p.shape, DType::F32, dev, op),
               empty_tensor(p.shape, DType::F32, dev, op), Tensor{}};
  std::vector<Tensor> outputs{out.p, out.m, out.v};
  if (want_bf16) {
    out.p_bf16 = empty_tensor(p.shape, DType::BF16, dev, op);
    outputs.push_back(out.p_bf16);
  }
  int64_t n = p.numel();
  if (n == 0) return out;
  uint16_t* half = want_bf16 ? mdata<uint16_t>(out.p_bf16) : nullptr;
  submit(op, dev, {p, g, m, v}, outputs, [=] {
    MOMA_LAUNCH(dev, adamw, cdata<float>(p), cdata<float>(g), cdata<float>(m), cdata<float>(v), n, h,
                mdata<float>(out.p), mdata<float>(out.m), mdata<float>(out.v), half);
  });
  return out;
}

}  // namespace moma::ops
