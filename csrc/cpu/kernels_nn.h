// CPU kernel table of the transformer ops (SPEC.md §1): RMSNorm, per-head LayerNorm (QK-norm),
// RoPE, causal segment attention, cross-entropy and the fused AdamW step. cuda/kernels_nn.h
// declares the same functions with the same semantics and parameters, led by the launch context.
// Activations may be float32 or bf16 (`dt`: math in float32, bf16 rounded once on store);
// norm weights, statistics, losses, optimizer state are float32. Arguments are validated by
// csrc/ops/nn.cc except data-dependent values (positions, segment starts, targets), which throw
// MomaException(ERR_RANGE) here. Results are deterministic: every reduction has a fixed order
// (weight gradients sum their rows in a fixed blocked order, never with atomics).
#pragma once
#include <cstdint>
#include "../core/dtype.h"
#include "../core/launch.h"
#include "../core/nn_types.h"

namespace moma::cpu {

// RMSNorm over the last dim of x [N, D]: rstd[n] = 1 / sqrt(mean_d(x^2) + eps),
// y = x * rstd[n] * w[d]. rstd is saved for the backward.
void rmsnorm(const LaunchCtx& ctx, DType dt, const void* x, const float* w, int64_t N, int64_t D, float eps, void* y,
             float* rstd);
// With u = dy * w: dx = rstd * (u - x * rstd^2 * mean_d(u * x)); dw[d] = sum_n dy * x * rstd.
void rmsnorm_backward(const LaunchCtx& ctx, DType dt, const void* x, const float* w, const float* rstd, const void* dy,
                      int64_t N, int64_t D, void* dx, float* dw);

// LayerNorm over the last dim of x [N, G, D] with an affine per g (QK-norm: G = heads):
// mean[n, g], rstd[n, g] = 1 / sqrt(var + eps) (biased variance), y = (x - mean) * rstd * w[g, d] + b[g, d].
void layernorm(const LaunchCtx& ctx, DType dt, const void* x, const float* w, const float* b, int64_t N, int64_t G,
               int64_t D, float eps, void* y, float* mean, float* rstd);
// With xh = (x - mean) rstd and u = dy * w: dx = rstd (u - mean_d(u) - xh mean_d(u xh));
// dw[g, d] = sum_n dy xh, db[g, d] = sum_n dy.
void layernorm_backward(const LaunchCtx& ctx, DType dt, const void* x, const float* w, const float* mean,
                        const float* rstd, const void* dy, int64_t N, int64_t G, int64_t D, void* dx, float* dw,
                        float* db);

// Rotary embedding, rotate-half convention, on x [N, H, D] (D even, half = D / 2) at positions
// pos[N] (>= 0): for i < half, a = pos * theta^(-2i / D) (in double), c = cos a, s = sin a
// (rounded to float); y[i] = x[i] c - x[i + half] s, y[i + half] = x[i + half] c + x[i] s.
// inverse: rotate by -a (the backward). A negative position throws ERR_RANGE ("rope").
void rope(const LaunchCtx& ctx, DType dt, const void* x, const int32_t* pos, int64_t N, int64_t H, int64_t D,
          float theta, bool inverse, void* y);

// Causal attention inside contiguous segments (packed documents, MoD row subsets): row t attends
// to the rows s in [seg_start[t], t]. seg_start[t] is t (row t starts a segment) or
// seg_start[t - 1]; anything else throws ERR_RANGE ("attention"). q, k, v, o [N, H, D];
// for each (t, h): p_s = softmax_s(scale * q[t,h] . k[s,h]), o[t,h] = sum_s p_s v[s,h];
// lse[t, h] = log sum_s exp(scale * q . k) (float32, saved for the backward).
void attention(const LaunchCtx& ctx, DType dt, const void* q, const void* k, const void* v, const int32_t* seg_start,
               int64_t N, int64_t H, int64_t D, float scale, void* o, float* lse);
// Gradients of attention: with p recomputed from lse and delta[t,h] = dout[t,h] . o[t,h]:
// dv[s] = sum_t p_ts dout[t], ds_ts = p_ts (dout[t] . v[s] - delta[t]), dq[t] = scale sum_s ds_ts k[s],
// dk[s] = scale sum_t ds_ts q[t] (each output row sums in increasing t / s).
void attention_backward(const LaunchCtx& ctx, DType dt, const void* q, const void* k, const void* v, const void* o,
                        const float* lse, const void* dout, const int32_t* seg_start, int64_t N, int64_t H, int64_t D,
                        float scale, void* dq, void* dk, void* dv);

// Cross-entropy over logits [N, V] with targets[N] in [-1, V) (-1: ignored row):
// lse[n] = log sum_v exp(logits[n, v]) (max-subtracted), nll[n] = lse[n] - logits[n, target]
// (0 for ignored rows). A target outside [-1, V) throws ERR_RANGE ("cross_entropy").
void cross_entropy(const LaunchCtx& ctx, DType dt, const void* logits, const int32_t* targets, int64_t N, int64_t V,
                   float* nll, float* lse);
// dlogits[n, v] = g_nll[n] (p - [v == target]) + g_z[n] 2 lse[n] p, p = exp(logits - lse)
// (an ignored row contributes no one-hot term). g_z may be nullptr (no z-loss).
void cross_entropy_backward(const LaunchCtx& ctx, DType dt, const void* logits, const int32_t* targets,
                            const float* lse, const float* g_nll, const float* g_z, int64_t N, int64_t V,
                            void* dlogits);

// One AdamW step over n float32 elements (core/nn_types.h). Outputs may not alias inputs.
// p_bf16 (optional, may be nullptr): the new parameters rounded to bf16 (the GPU compute copy).
void adamw(const LaunchCtx& ctx, const float* p, const float* g, const float* m, const float* v, int64_t n,
           const AdamWParams& h, float* p_out, float* m_out, float* v_out, uint16_t* p_bf16);

}  // namespace moma::cpu
