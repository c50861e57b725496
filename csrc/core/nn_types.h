// Plain descriptors shared by the CPU and CUDA transformer kernels (csrc/cpu/kernels_nn.h,
// cuda/kernels_nn.h) and the op layer (csrc/ops/nn.h).
#pragma once
#include <cstdint>

namespace moma {

// One fused AdamW step (decoupled weight decay, Loshchilov & Hutter), element-wise in float32:
//   g' = g * grad_scale                      (grad_scale: global-norm clipping factor, 1 = none)
//   m' = beta1 m + (1 - beta1) g'
//   v' = beta2 v + (1 - beta2) g'^2
//   p' = p - lr weight_decay p - lr (m' / bias_c1) / (sqrt(v' / bias_c2) + eps)
// with bias_c1 = 1 - beta1^step, bias_c2 = 1 - beta2^step computed by the caller (in double).
// Every product and sum is rounded as written, left to right (no fused multiply-add), so the CPU
// and CUDA give the same bits.
struct AdamWParams {
  float lr = 1e-3f;
  float beta1 = 0.9f;
  float beta2 = 0.95f;
  float eps = 1e-8f;
  float weight_decay = 0.0f;
  float grad_scale = 1.0f;
  float bias_c1 = 1.0f;
  float bias_c2 = 1.0f;
};

}  // namespace moma
