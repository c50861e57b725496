// SwiGLU activation and its backward (kernels_moe.h), float32 or bf16 (math in float32, one
// rounding on store). sig = the scalar sigmoid x >= 0 ? 1 / (1 + e) : e / (1 + e), e = exp(-|x|),
// computed for a block of h1 at a time into a stack buffer, through the SIMD table of vmath.h when
// this CPU has one (else the scalar formula), then
//   a   = (h1 sig) h3
//   dh1 = ((da h3) sig) (1 + h1 (1 - sig)),  dh3 = da (h1 sig).
// Element-wise, so the parallel split does not change any result.
#include <algorithm>
#include <cmath>
#include <type_traits>

#include "../core/bf16.h"
#include "../core/error.h"
#include "kernels_moe.h"
#include "thread_pool.h"
#include "vmath.h"

namespace moma::cpu {
namespace {

constexpr int64_t kGrain = 32768;
constexpr int64_t kBlock = 1024;

inline float scalar_sigmoid(float v) {
  const float e = std::exp(-std::fabs(v));
  return v >= 0.0f ? 1.0f / (1.0f + e) : e / (1.0f + e);
}

inline float load(const float* p, int64_t i) { return p[i]; }
inline float load(const uint16_t* p, int64_t i) { return bf16_to_f32(p[i]); }
inline void store(float* p, int64_t i, float v) { p[i] = v; }
inline void store(uint16_t* p, int64_t i, float v) { p[i] = f32_to_bf16(v); }

// sig[0..n) = sigmoid(h1); returns h1 as float (h1 itself for float32, else widened into buf).
template <typename T>
const float* widen_sigmoid(const T* h1, int64_t n, float* buf, float* sig) {
  const float* x1;
  if constexpr (std::is_same_v<T, float>) {
    x1 = h1;
  } else {
    for (int64_t i = 0; i < n; ++i) buf[i] = load(h1, i);
    x1 = buf;
  }
  if (const vmath::Kernels* k = vmath::vector_kernels()) {
    k->map_f32(vmath::Fn::Sigmoid, x1, sig, n);
  } else {
    for (int64_t i = 0; i < n; ++i) sig[i] = scalar_sigmoid(x1[i]);
  }
  return x1;
}

template <typename T>
void swiglu_t(const T* h1, const T* h3, T* a, int64_t n) {
  parallel_for(n, kGrain, [&](int64_t b0, int64_t b1) {
    alignas(64) float buf[kBlock];
    alignas(64) float sig[kBlock];
    for (int64_t c = b0; c < b1; c += kBlock) {
      const int64_t m = std::min(kBlock, b1 - c);
      const float* x1 = widen_sigmoid(h1 + c, m, buf, sig);
      const T* p3 = h3 + c;
      T* out = a + c;
      for (int64_t i = 0; i < m; ++i) store(out, i, (x1[i] * sig[i]) * load(p3, i));
    }
  });
}

template <typename T>
void swiglu_backward_t(const T* h1, const T* h3, const T* da, T* dh1, T* dh3, int64_t n) {
  parallel_for(n, kGrain, [&](int64_t b0, int64_t b1) {
    alignas(64) float buf[kBlock];
    alignas(64) float sig[kBlock];
    for (int64_t c = b0; c < b1; c += kBlock) {
      const int64_t m = std::min(kBlock, b1 - c);
      const float* x1 = widen_sigmoid(h1 + c, m, buf, sig);
      const T* p3 = h3 + c;
      const T* pd = da + c;
      T* o1 = dh1 + c;
      T* o3 = dh3 + c;
      for (int64_t i = 0; i < m; ++i) {
        const float x = x1[i], s = sig[i], g = load(pd, i);
        store(o1, i, ((g * load(p3, i)) * s) * (1.0f + x * (1.0f - s)));
        store(o3, i, g * (x * s));
      }
    }
  });
}

}  // namespace

void swiglu(const LaunchCtx& ctx, DType dt, const void* h1, const void* h3, void* a, int64_t n) {
  if (dt == DType::F32)
    swiglu_t(static_cast<const float*>(h1), static_cast<const float*>(h3), static_cast<float*>(a), n);
  else if (dt == DType::BF16)
    swiglu_t(static_cast<const uint16_t*>(h1), static_cast<const uint16_t*>(h3), static_cast<uint16_t*>(a), n);
  else
    fail("ERR_DTYPE", "swiglu: unsupported dtype ", dtype_name(dt));
}

void swiglu_backward(const LaunchCtx& ctx, DType dt, const void* h1, const void* h3, const void* da, void* dh1,
                     void* dh3, int64_t n) {
  if (dt == DType::F32)
    swiglu_backward_t(static_cast<const float*>(h1), static_cast<const float*>(h3), static_cast<const float*>(da),
                      static_cast<float*>(dh1), static_cast<float*>(dh3), n);
  else if (dt == DType::BF16)
    swiglu_backward_t(static_cast<const uint16_t*>(h1), static_cast<const uint16_t*>(h3),
                      static_cast<const uint16_t*>(da), static_cast<uint16_t*>(dh1), static_cast<uint16_t*>(dh3), n);
  else
    fail("ERR_DTYPE", "swiglu_backward: unsupported dtype ", dtype_name(dt));
}

}  // namespace moma::cpu
