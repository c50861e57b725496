// CUDA kernel table of the transformer ops: the same functions as csrc/cpu/kernels_nn.h with the
// same semantics and parameters (read that header), launched asynchronously on `ctx.stream`, no host syncs.
// Data-dependent errors (a negative position, a bad segment start, a target out of range) are
// recorded in `ctx.err` (DeviceErrorCode, kernels.h) and reported at the next synchronisation.
#pragma once
#include <cstdint>
#include "../csrc/core/dtype.h"
#include "../csrc/core/launch.h"
#include "../csrc/core/nn_types.h"

namespace moma::cuda {

void rmsnorm(const LaunchCtx& ctx, DType dt, const void* x, const float* w, int64_t N, int64_t D, float eps, void* y,
             float* rstd);
void rmsnorm_backward(const LaunchCtx& ctx, DType dt, const void* x, const float* w, const float* rstd, const void* dy,
                      int64_t N, int64_t D, void* dx, float* dw);
void layernorm(const LaunchCtx& ctx, DType dt, const void* x, const float* w, const float* b, int64_t N, int64_t G,
               int64_t D, float eps, void* y, float* mean, float* rstd);
void layernorm_backward(const LaunchCtx& ctx, DType dt, const void* x, const float* w, const float* mean,
                        const float* rstd, const void* dy, int64_t N, int64_t G, int64_t D, void* dx, float* dw,
                        float* db);
void rope(const LaunchCtx& ctx, DType dt, const void* x, const int32_t* pos, int64_t N, int64_t H, int64_t D,
          float theta, bool inverse, void* y);
// Flash-style: tiles of queries stream over the key tiles of their segment with an online
// softmax; the N x N score matrix is never stored.
void attention(const LaunchCtx& ctx, DType dt, const void* q, const void* k, const void* v, const int32_t* seg_start,
               int64_t N, int64_t H, int64_t D, float scale, void* o, float* lse);
void attention_backward(const LaunchCtx& ctx, DType dt, const void* q, const void* k, const void* v, const void* o,
                        const float* lse, const void* dout, const int32_t* seg_start, int64_t N, int64_t H, int64_t D,
                        float scale, void* dq, void* dk, void* dv);
void cross_entropy(const LaunchCtx& ctx, DType dt, const void* logits, const int32_t* targets, int64_t N, int64_t V,
                   float* nll, float* lse);
void cross_entropy_backward(const LaunchCtx& ctx, DType dt, const void* logits, const int32_t* targets,
                            const float* lse, const float* g_nll, const float* g_z, int64_t N, int64_t V,
                            void* dlogits);
void adamw(const LaunchCtx& ctx, const float* p, const float* g, const float* m, const float* v, int64_t n,
           const AdamWParams& h, float* p_out, float* m_out, float* v_out, uint16_t* p_bf16);

}  // namespace moma::cuda
