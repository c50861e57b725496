// Fused AdamW step (semantics: core/nn_types.h and csrc/cpu/kernels_nn.h), element-wise, with
// exactly the CPU's operations (csrc/cpu/adamw.cc), each one IEEE float operation rounded to
// nearest through the _rn intrinsics (no FMA contraction, IEEE division and square root), so the
// results equal the CPU bit for bit:
//   c1 = 1 - beta1, c2 = 1 - beta2, lw = lr * weight_decay      (on the host, in float)
//   g' = g * grad_scale
//   m' = beta1 * m + c1 * g'
//   v' = beta2 * v + c2 * (g' * g')
//   p' = (p - lw * p) - (lr * (m' / bias_c1)) / (sqrt(v' / bias_c2) + eps)
//   p_bf16 = f32_to_bf16(p') (optional)
// Grid-stride loop over float4 vectors when every pointer is 16-byte aligned (8-byte for the bf16
// copy: 4 bf16), then a scalar tail. ~20 FLOPs per element (two divisions, one sqrt); bytes
// 28 (+2 with p_bf16) per element: memory bound.
#include <cuda_runtime.h>

#include <cstdint>

#include "common.cuh"
#include "kernels_nn.h"

namespace moma::cuda {
using namespace detail;

namespace {

struct AdamWConsts {
  float b1, b2, c1, c2, lr, lw, eps, gs, bc1, bc2;
};

__device__ __forceinline__ void adamw_elem(const AdamWConsts& k, float p, float g, float m, float v, float& pn,
                                           float& mn, float& vn) {
  const float gg = __fmul_rn(g, k.gs);
  mn = __fadd_rn(__fmul_rn(k.b1, m), __fmul_rn(k.c1, gg));
  vn = __fadd_rn(__fmul_rn(k.b2, v), __fmul_rn(k.c2, __fmul_rn(gg, gg)));
  const float step = __fdiv_rn(__fmul_rn(k.lr, __fdiv_rn(mn, k.bc1)), __fadd_rn(__fsqrt_rn(__fdiv_rn(vn, k.bc2)), k.eps));
  pn = __fsub_rn(__fsub_rn(p, __fmul_rn(k.lw, p)), step);
}

template <bool VEC>
__global__ void adamw_kernel(const float* __restrict__ p, const float* __restrict__ g, const float* __restrict__ m,
                             const float* __restrict__ v, int64_t n, AdamWConsts k, float* __restrict__ p_out,
                             float* __restrict__ m_out, float* __restrict__ v_out, uint16_t* __restrict__ p_bf16) {
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  int64_t done = 0;
  if constexpr (VEC) {
    const int64_t nv = n / 4;
    for (int64_t i = tid; i < nv; i += stride) {
      const float4 pv = reinterpret_cast<const float4*>(p)[i], gv = reinterpret_cast<const float4*>(g)[i];
      const float4 mv = reinterpret_cast<const float4*>(m)[i], vv = reinterpret_cast<const float4*>(v)[i];
      float4 po, mo, vo;
      adamw_elem(k, pv.x, gv.x, mv.x, vv.x, po.x, mo.x, vo.x);
      adamw_elem(k, pv.y, gv.y, mv.y, vv.y, po.y, mo.y, vo.y);
      adamw_elem(k, pv.z, gv.z, mv.z, vv.z, po.z, mo.z, vo.z);
      adamw_elem(k, pv.w, gv.w, mv.w, vv.w, po.w, mo.w, vo.w);
      reinterpret_cast<float4*>(p_out)[i] = po;
      reinterpret_cast<float4*>(m_out)[i] = mo;
      reinterpret_cast<float4*>(v_out)[i] = vo;
      if (p_bf16) {
        const uint32_t lo = static_cast<uint32_t>(f32_to_bf16(po.x)) | (static_cast<uint32_t>(f32_to_bf16(po.y)) << 16);
        const uint32_t hi = static_cast<uint32_t>(f32_to_bf16(po.z)) | (static_cast<uint32_t>(f32_to_bf16(po.w)) << 16);
        reinterpret_cast<uint2*>(p_bf16)[i] = make_uint2(lo, hi);
      }
    }
    done = nv * 4;
  }
  for (int64_t i = done + tid; i < n; i += stride) {
    float pn, mn, vn;
    adamw_elem(k, p[i], g[i], m[i], v[i], pn, mn, vn);
    p_out[i] = pn;
    m_out[i] = mn;
    v_out[i] = vn;
    if (p_bf16) p_bf16[i] = f32_to_bf16(pn);
  }
}

}  // namespace

void adamw(const LaunchCtx& ctx, const float* p, const float* g, const float* m, const float* v, int64_t n,
           const AdamWParams& h, float* p_out, float* m_out, float* v_out, uint16_t* p_bf16) {
  if (n <= 0) return;
  // The CPU's constants, computed the same way (host float arithmetic, -ffp-contract=off).
  AdamWConsts k;
  k.b1 = h.beta1;
  k.b2 = h.beta2;
  k.c1 = 1.0f - h.beta1;
  k.c2 = 1.0f - h.beta2;
  k.lr = h.lr;
  k.lw = h.lr * h.weight_decay;
  k.eps = h.eps;
  k.gs = h.grad_scale;
  k.bc1 = h.bias_c1;
  k.bc2 = h.bias_c2;
  const bool vec = aligned16(p) && aligned16(g) && aligned16(m) && aligned16(v) && aligned16(p_out) &&
                   aligned16(m_out) && aligned16(v_out) && reinterpret_cast<uintptr_t>(p_bf16) % 8 == 0;
  cudaStream_t s = as_stream(ctx.stream);
  const int64_t units = vec ? (n + 3) / 4 : n;
  if (vec)
    adamw_kernel<true><<<grid_for(units), kThreads, 0, s>>>(p, g, m, v, n, k, p_out, m_out, v_out, p_bf16);
  else
    adamw_kernel<false><<<grid_for(units), kThreads, 0, s>>>(p, g, m, v, n, k, p_out, m_out, v_out, p_bf16);
  check_launch("adamw");
}

}  // namespace moma::cuda
