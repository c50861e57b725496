// Tensor-core attention (flash_attention.cu) as called by attention.cu's attention() and
// attention_backward(): same arguments and semantics as cuda/kernels_nn.h (row t attends the rows
// s in [seg_start[t], t]; lse[t, h] = log sum_s exp(scale q.k), natural log), for bf16 q / k / v /
// o / dout with head dim 64 or 128. Private to the CUDA translation units.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <initializer_list>

#include "../csrc/core/dtype.h"

namespace moma::cuda::detail {

// True when the tensor-core kernels take this call: dtype bf16, D 64 or 128, every pointer
// 16-byte aligned, N small enough for 32-bit row indices. Otherwise attention.cu uses SIMT.
bool flash_attention_supported(DType dt, int64_t N, int64_t H, int64_t D, std::initializer_list<const void*> ptrs);

// o [N, H, D] and lse [N, H]. seg_start must already be queued for validation (it is only
// clamped into [0, t] here).
void flash_attention_forward(cudaStream_t stream, const void* q, const void* k, const void* v,
                             const int32_t* seg_start, int64_t N, int64_t H, int64_t D, float scale, void* o,
                             float* lse);

// dq, dk, dv [N, H, D] from the forward's o and lse.
void flash_attention_backward(cudaStream_t stream, const void* q, const void* k, const void* v, const void* o,
                              const float* lse, const void* dout, const int32_t* seg_start, int64_t N, int64_t H,
                              int64_t D, float scale, void* dq, void* dk, void* dv);

}  // namespace moma::cuda::detail
