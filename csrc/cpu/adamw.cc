// Fused AdamW step (kernels_nn.h, formula in core/nn_types.h), element-wise in float32. Every
// operation is one IEEE float operation rounded to nearest, in this order (the build uses
// -ffp-contract=off, so no FMA; CUDA matches with __fmul_rn / __fadd_rn / __fsub_rn / __fdiv_rn /
// __fsqrt_rn):
//   c1 = 1 - beta1, c2 = 1 - beta2, lw = lr * weight_decay        (once, in float)
//   g' = g * grad_scale
//   m' = beta1 * m + c1 * g'
//   v' = beta2 * v + c2 * (g' * g')                               (g'^2 is one operand)
//   p' = (p - lw * p) - (lr * (m' / bias_c1)) / (sqrt(v' / bias_c2) + eps)
// p_bf16 (optional) = f32_to_bf16(p').
// Blocks of kBlock elements run three loops: m', v' and v' / bias_c2; the square root (SSE
// sqrtps on x86-64, correctly rounded like sqrtf, which would otherwise keep the loop scalar for
// errno); p'. The block function is compiled for AVX-512, AVX2 and the baseline, picked once at
// run time; all round identically. Element-wise, so the parallel split changes nothing.
#include <algorithm>
#include <cmath>

#include "../core/bf16.h"
#include "kernels_nn.h"
#include "thread_pool.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define MOMA_ADAMW_X86 1
#endif

namespace moma::cpu {
namespace {

constexpr int64_t kBlock = 512;

struct Consts {
  float b1, b2, c1, c2, lr, lw, eps, gs, bc1, bc2;
};

#define MOMA_INL inline __attribute__((always_inline))

MOMA_INL void block_body(const Consts& k, const float* __restrict p, const float* __restrict g,
                         const float* __restrict m, const float* __restrict v, int64_t n, float* __restrict p_out,
                         float* __restrict m_out, float* __restrict v_out, uint16_t* __restrict p_bf16) {
  alignas(64) float t[kBlock];
  for (int64_t i = 0; i < n; ++i) {
    const float gg = g[i] * k.gs;
    const float mn = k.b1 * m[i] + k.c1 * gg;
    const float vn = k.b2 * v[i] + k.c2 * (gg * gg);
    m_out[i] = mn;
    v_out[i] = vn;
    t[i] = vn / k.bc2;
  }
  int64_t i = 0;
#ifdef MOMA_ADAMW_X86
  for (; i + 4 <= n; i += 4) _mm_store_ps(t + i, _mm_sqrt_ps(_mm_load_ps(t + i)));
#endif
  for (; i < n; ++i) t[i] = std::sqrt(t[i]);
  for (int64_t j = 0; j < n; ++j) {
    const float pi = p[j];
    p_out[j] = (pi - k.lw * pi) - (k.lr * (m_out[j] / k.bc1)) / (t[j] + k.eps);
  }
  if (p_bf16)
    for (int64_t j = 0; j < n; ++j) p_bf16[j] = f32_to_bf16(p_out[j]);
}

using BlockFn = void (*)(const Consts&, const float*, const float*, const float*, const float*, int64_t, float*,
                         float*, float*, uint16_t*);
void block_generic(const Consts& k, const float* p, const float* g, const float* m, const float* v, int64_t n,
                   float* p_out, float* m_out, float* v_out, uint16_t* p_bf16) {
  block_body(k, p, g, m, v, n, p_out, m_out, v_out, p_bf16);
}
#ifdef MOMA_ADAMW_X86
__attribute__((target("avx512f,avx512bw"))) void block_avx512(const Consts& k, const float* p, const float* g,
                                                              const float* m, const float* v, int64_t n, float* p_out,
                                                              float* m_out, float* v_out, uint16_t* p_bf16) {
  block_body(k, p, g, m, v, n, p_out, m_out, v_out, p_bf16);
}
__attribute__((target("avx2"))) void block_avx2(const Consts& k, const float* p, const float* g, const float* m,
                                                const float* v, int64_t n, float* p_out, float* m_out, float* v_out,
                                                uint16_t* p_bf16) {
  block_body(k, p, g, m, v, n, p_out, m_out, v_out, p_bf16);
}
#endif

BlockFn pick_block() {
#ifdef MOMA_ADAMW_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")) return block_avx512;
  if (__builtin_cpu_supports("avx2")) return block_avx2;
#endif
  return block_generic;
}

}  // namespace

void adamw(const LaunchCtx& ctx, const float* p, const float* g, const float* m, const float* v, int64_t n,
           const AdamWParams& h, float* p_out, float* m_out, float* v_out, uint16_t* p_bf16) {
  static const BlockFn block = pick_block();
  const Consts k{h.beta1,      h.beta2, 1.0f - h.beta1, 1.0f - h.beta2, h.lr,     h.lr * h.weight_decay,
                 h.eps,        h.grad_scale, h.bias_c1,  h.bias_c2};
  parallel_for(n, 65536, [&](int64_t i0, int64_t i1) {
    for (int64_t c = i0; c < i1; c += kBlock) {
      const int64_t len = std::min(kBlock, i1 - c);
      block(k, p + c, g + c, m + c, v + c, len, p_out + c, m_out + c, v_out + c, p_bf16 ? p_bf16 + c : nullptr);
    }
  });
}

}  // namespace moma::cpu
