// Cross-entropy over logits [N, V] and its backward (kernels_nn.h), float32 or bf16 logits
// (bf16 widened exactly into a per-thread row buffer; math in float32 / double).
// Forward, per row: m = max (NaN-propagating), sum = sum_v exp(x - m) with the difference rounded
// to float, exp in float, summed in double (vmath.h exp_shift_sum when the CPU has AVX-512 / AVX2,
// else std::exp in index order), lse = float(m + log(sum)) in double, nll = float(m + log(sum) -
// x[target]) in double (0 for target -1). A row whose max is -inf gets lse = -inf.
// Backward, per row: p = exp(x - lse) (difference rounded to float, exp in float, vector exp when
// available), c = (g_z * 2) * lse, dlogits = g_nll * (p - [v == target]) + c * p in float
// (each product and sum rounded; without g_z the z term is absent, not added as zero). An ignored
// row (target -1) has no one-hot term, exactly as the header writes it: its gradient is
// g_nll * p, so callers pass g_nll = 0 for ignored rows.
// Targets are checked first (ERR_RANGE for the first one outside [-1, V), nothing written).
// Rows are independent; parallel_for over rows, so nothing depends on the thread count.
#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "../core/bf16.h"
#include "../core/error.h"
#include "kernels_nn.h"
#include "thread_pool.h"
#include "vmath.h"

namespace moma::cpu {
namespace {

constexpr int64_t kGrainElems = 32768;

inline size_t sz(int64_t n) { return static_cast<size_t>(n); }

void check_targets(const char* op, const int32_t* targets, int64_t N, int64_t V) {
  for (int64_t n = 0; n < N; ++n) {
    const int64_t t = targets[n];
    if (t < -1 || t >= V) fail("ERR_RANGE", op, ": target ", t, " at row ", n, " is outside [-1, ", V, ")");
  }
}

// The row as float: the row itself for float32, else widened into buf.
template <typename T>
const float* widen(const T* row, int64_t V, const vmath::Kernels* k, std::vector<float>& buf) {
  if constexpr (std::is_same_v<T, float>) {
    return row;
  } else {
    buf.resize(sz(V));
    if (k) {
      k->bf16_to_f32(row, buf.data(), V);
    } else {
      for (int64_t i = 0; i < V; ++i) buf[sz(i)] = bf16_to_f32(row[i]);
    }
    return buf.data();
  }
}

inline float max_nan(float a, float v) { return (a != a || v <= a) ? a : v; }

template <typename T>
void cross_entropy_t(const T* logits, const int32_t* targets, int64_t N, int64_t V, float* nll, float* lse) {
  const vmath::Kernels* k = vmath::vector_kernels();
  parallel_for(N, std::max<int64_t>(1, kGrainElems / V), [&](int64_t n0, int64_t n1) {
    std::vector<float> buf;
    for (int64_t n = n0; n < n1; ++n) {
      const float* x = widen(logits + n * V, V, k, buf);
      float m;
      if (k) {
        m = k->max_f32(x, V);
      } else {
        m = x[0];
        for (int64_t i = 1; i < V; ++i) m = max_nan(m, x[i]);
      }
      double l;
      if (m == -std::numeric_limits<float>::infinity()) {
        l = -std::numeric_limits<double>::infinity();
      } else {
        double s = 0.0;
        if (k) {
          s = k->exp_shift_sum(x, m, nullptr, V);
        } else {
          for (int64_t i = 0; i < V; ++i) s += static_cast<double>(std::exp(x[i] - m));
        }
        l = static_cast<double>(m) + std::log(s);
      }
      lse[n] = static_cast<float>(l);
      const int32_t t = targets[n];
      nll[n] = t < 0 ? 0.0f : static_cast<float>(l - static_cast<double>(x[t]));
    }
  });
}

template <typename T>
void cross_entropy_backward_t(const T* logits, const int32_t* targets, const float* lse, const float* g_nll,
                              const float* g_z, int64_t N, int64_t V, T* dlogits) {
  const vmath::Kernels* k = vmath::vector_kernels();
  constexpr int64_t kBlock = 2048;
  parallel_for(N, std::max<int64_t>(1, kGrainElems / V), [&](int64_t n0, int64_t n1) {
    alignas(64) float p[kBlock];
    alignas(64) float xb[kBlock];
    for (int64_t n = n0; n < n1; ++n) {
      const T* row = logits + n * V;
      T* out = dlogits + n * V;
      const float L = lse[n], a = g_nll[n];
      const int64_t t = targets[n];
      const bool z = g_z != nullptr;
      const float c = z ? (g_z[n] * 2.0f) * L : 0.0f;
      for (int64_t c0 = 0; c0 < V; c0 += kBlock) {
        const int64_t m = std::min(kBlock, V - c0);
        const float* x;
        if constexpr (std::is_same_v<T, float>) {
          x = row + c0;
        } else {
          if (k) {
            k->bf16_to_f32(row + c0, xb, m);
          } else {
            for (int64_t i = 0; i < m; ++i) xb[i] = bf16_to_f32(row[c0 + i]);
          }
          x = xb;
        }
        if (k) {
          k->exp_shift_sum(x, L, p, m);
        } else {
          for (int64_t i = 0; i < m; ++i) p[i] = std::exp(x[i] - L);
        }
        const bool has_t = t >= c0 && t < c0 + m;
        const float et = has_t ? p[t - c0] : 0.0f;
        if (z) {
          for (int64_t i = 0; i < m; ++i) p[i] = a * p[i] + c * p[i];
        } else {
          for (int64_t i = 0; i < m; ++i) p[i] = a * p[i];
        }
        if (has_t) p[t - c0] = z ? a * (et - 1.0f) + c * et : a * (et - 1.0f);
        if constexpr (std::is_same_v<T, float>) {
          std::copy(p, p + m, out + c0);
        } else if (k) {
          k->f32_to_bf16(p, out + c0, m);
        } else {
          for (int64_t i = 0; i < m; ++i) out[c0 + i] = f32_to_bf16(p[i]);
        }
      }
    }
  });
}

}  // namespace

void cross_entropy(const LaunchCtx& ctx, DType dt, const void* logits, const int32_t* targets, int64_t N, int64_t V,
                   float* nll, float* lse) {
  check_targets("cross_entropy", targets, N, V);
  if (N <= 0 || V <= 0) return;
  if (dt == DType::F32)
    cross_entropy_t(static_cast<const float*>(logits), targets, N, V, nll, lse);
  else if (dt == DType::BF16)
    cross_entropy_t(static_cast<const uint16_t*>(logits), targets, N, V, nll, lse);
  else
    fail("ERR_DTYPE", "cross_entropy: unsupported dtype ", dtype_name(dt));
}

void cross_entropy_backward(const LaunchCtx& ctx, DType dt, const void* logits, const int32_t* targets,
                            const float* lse, const float* g_nll, const float* g_z, int64_t N, int64_t V,
                            void* dlogits) {
  check_targets("cross_entropy_backward", targets, N, V);
  if (N <= 0 || V <= 0) return;
  if (dt == DType::F32)
    cross_entropy_backward_t(static_cast<const float*>(logits), targets, lse, g_nll, g_z, N, V,
                             static_cast<float*>(dlogits));
  else if (dt == DType::BF16)
    cross_entropy_backward_t(static_cast<const uint16_t*>(logits), targets, lse, g_nll, g_z, N, V,
                             static_cast<uint16_t*>(dlogits));
  else
    fail("ERR_DTYPE", "cross_entropy_backward: unsupported dtype ", dtype_name(dt));
}

}  // namespace moma::cpu
