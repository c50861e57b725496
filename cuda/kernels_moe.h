// CUDA kernel table of the mixture-of-experts ops: the same functions as csrc/cpu/kernels_moe.h
// with the same semantics and parameters (read that header for each one), launched asynchronously on
// `ctx.stream` (core/launch.h); the grouped GEMMs still take (stream, err) and dtypes.
// Nothing here synchronises with the host: counts, offsets and capacities stay on the device and
// kernels read them; buffers are sized by bounds the host knows (T, R). Data-dependent errors do
// not throw: the kernel records a DeviceErrorCode (kernels.h) in `ctx.err`, writes zeros / skips the
// bad element, and the next synchronisation reports it. Launch errors throw ERR_CUDA.
#pragma once
#include <cstdint>
#include "../csrc/core/dtype.h"
#include "../csrc/core/launch.h"
#include "../csrc/core/moe_types.h"

namespace moma::cuda {

void moe_partition(const LaunchCtx& ctx, const int32_t* modality, int64_t T, const MoeLayout& L, int32_t* row_group,
                   int32_t* counts, int32_t* offsets, int32_t* perm);
void moe_router_scores(const LaunchCtx& ctx, const float* logits, const int32_t* row_group, int64_t T,
                       const MoeLayout& L, RouterFn fn, bool gumbel, uint64_t seed, uint64_t offset, float* scores);
void moe_router_scores_backward(const LaunchCtx& ctx, const float* scores, const float* dscores,
                                const int32_t* row_group, int64_t T, const MoeLayout& L, RouterFn fn, float* dlogits);
void moe_route(const LaunchCtx& ctx, const float* scores, const int32_t* row_group, const int32_t* offsets,
               const int32_t* perm, int64_t T, const MoeLayout& L, const RoutingParams& p, int64_t R,
               int32_t* expert_offsets, int32_t* slot_row, float* slot_gate, int32_t* row_slots,
               const float* select = nullptr);
void moe_gather_rows(const LaunchCtx& ctx, DType dt, const void* x, const int32_t* slot_row, const float* scale,
                     int64_t T, int64_t R, int64_t d, void* y);
void moe_combine(const LaunchCtx& ctx, DType dt, const void* src, const int32_t* row_slots, const float* weight,
                 int64_t T, int64_t W, int64_t R, int64_t d, void* y);
void moe_gate_grad(const LaunchCtx& ctx, DType dt, const void* out, const void* dy, const int32_t* slot_row,
                   const int32_t* expert_offsets, int64_t T, int64_t R, int64_t d, const MoeLayout& L, float* dscores);
// Grouped GEMM (design: grouped_gemm.cu). x, w float32 or bf16; y float32 or bf16. x and w both
// float32: float32-accurate (f32 FMAs, like the CPU); otherwise bf16 tensor cores (mma.sync bf16 x
// bf16 -> f32; a float32 operand next to a bf16 one is rounded to bf16 on load).
void grouped_gemm(void* stream, int32_t* err, DType dt_x, const void* x, DType dt_w, const void* w,
                  bool trans_w, const int32_t* offsets, int64_t E, int64_t R, int64_t K, int64_t N,
                  DType dt_y, void* y);
// Fused epilogues of the expert FFN (CPU twins in csrc/cpu/kernels_moe.h; dtypes and paths as
// grouped_gemm, the epilogue math in float32 on the accumulators, one rounding per stored value):
//   grouped_gemm_scaled: y[r, :] = row_scale[r] * (x[r, :] @ op(w[e])) (row_scale float32 [R], the
//     slot gates: the gate scale before combine); rows past offsets[E] are 0.
//   grouped_gemm_swiglu: h1 = x[r, :] @ op(w1[e]), h3 = x[r, :] @ op(w3[e]) in one pass,
//     a[r, :] = silu(h1) h3 (swiglu's formula on the float32 accumulators); h1, h3 [R, N] are also
//     written when non-null (swiglu_backward reads them). w1, w3 share dt_w, trans_w and shape.
//     a, h1, h3 have dtype dt_y; rows past offsets[E] are 0.
void grouped_gemm_scaled(void* stream, int32_t* err, DType dt_x, const void* x, DType dt_w, const void* w,
                         bool trans_w, const int32_t* offsets, const float* row_scale, int64_t E, int64_t R,
                         int64_t K, int64_t N, DType dt_y, void* y);
void grouped_gemm_swiglu(void* stream, int32_t* err, DType dt_x, const void* x, DType dt_w, const void* w1,
                         const void* w3, bool trans_w, const int32_t* offsets, int64_t E, int64_t R, int64_t K,
                         int64_t N, DType dt_y, void* a, void* h1, void* h3);
// x, dy float32 or bf16 (both float32: float32-accurate; else bf16 tensor cores); dw float32.
void grouped_gemm_wgrad(void* stream, int32_t* err, DType dt_x, const void* x, DType dt_dy, const void* dy,
                        const int32_t* offsets, int64_t E, int64_t R, int64_t K, int64_t N, float* dw);
void swiglu(const LaunchCtx& ctx, DType dt, const void* h1, const void* h3, void* a, int64_t n);
void swiglu_backward(const LaunchCtx& ctx, DType dt, const void* h1, const void* h3, const void* da, void* dh1,
                     void* dh3, int64_t n);
void moe_routing_stats(const LaunchCtx& ctx, const int32_t* row_group, const int32_t* offsets,
                       const int32_t* expert_offsets, const float* slot_gate, const int32_t* row_slots, int64_t T,
                       const MoeLayout& L, float* expert_stats, float* group_stats);

// Simple first version: one thread per row counts the rows ranked above it (O(T^2) compares,
// T <= 64K), then a block-wide scan places the selected rows in row order.
void mod_select(const LaunchCtx& ctx, const float* scores, const int32_t* modality, int64_t T, int64_t k,
                int32_t* rows);

void segment_starts(const LaunchCtx& ctx, const int32_t* seg, int64_t n, int32_t* starts);

}  // namespace moma::cuda
