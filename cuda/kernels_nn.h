// CUDA kernel table of the transformer ops: the same functions as csrc/cpu/kernels_nn.h with the
// same semantics (read that header), launched asynchronously on `stream`, no host syncs.
// Data-dependent errors (a negative position, a bad segment start, a target out of range) are
// recorded in `err` (DeviceErrorCode, kernels.h) and reported at the next synchronisation.
#pragma once
#include <cstdint>
#include "../csrc/core/dtype.h"
#include "../csrc/core/nn_types.h"

namespace moma::cuda {

void rmsnorm(void* stream, DType dt, const void* x, const float* w, int64_t N, int64_t D, float eps, void* y,
             float* rstd);
void rmsnorm_backward(void* stream, DType dt, const void* x, const float* w, const float* rstd, const void* dy,
                      int64_t N, int64_t D, void* dx, float* dw);
void layernorm(void* stream, DType dt, const void* x, const float* w, const float* b, int64_t N, int64_t G,
               int64_t D, float eps, void* y, float* mean, float* rstd);
void layernorm_backward(void* stream, DType dt, const void* x, const float* w, const float* mean, const float* rstd,
                        const void* dy, int64_t N, int64_t G, int64_t D, void* dx, float* dw, float* db);
void rope(void* stream, int32_t* err, DType dt, const void* x, const int32_t* pos, int64_t N, int64_t H, int64_t D,
          float theta, bool inverse, void* y);
// Flash-style: tiles of queries stream over the key tiles of their segment with an online
// softmax; the N x N score matrix is never stored.
void attention(void* stream, int32_t* err, DType dt, const void* q, const void* k, const void* v,
               const int32_t* seg_start, int64_t N, int64_t H, int64_t D, float scale, void* o, float* lse);
void attention_backward(void* stream, int32_t* err, DType dt, const void* q, const void* k, const void* v,
                        const void* o, const float* lse, const void* dout, const int32_t* seg_start, int64_t N,
                        int64_t H, int64_t D, float scale, void* dq, void* dk, void* dv);
void cross_entropy(void* stream, int32_t* err, DType dt, const void* logits, const int32_t* targets, int64_t N,
                   int64_t V, float* nll, float* lse);
void cross_entropy_backward(void* stream, DType dt, const void* logits, const int32_t* targets, const float* lse,
                            const float* g_nll, const float* g_z, int64_t N, int64_t V, void* dlogits);
void adamw(void* stream, const float* p, const float* g, const float* m, const float* v, int64_t n,
           const AdamWParams& h, float* p_out, float* m_out, float* v_out, uint16_t* p_bf16);

}  // namespace moma::cuda
