// RMSNorm and per-group LayerNorm (QK-norm) with their backwards (kernels_nn.h), float32 or bf16
// activations (widened exactly, math in float32, rounded once on store); weights, biases and the
// saved statistics are float32.
// Row statistics accumulate in double over 8 interleaved lanes (element i goes to lane i % 8, the
// lanes are added in lane order at the end), so the order is fixed by D alone and the loops
// vectorise. Per row:
//   rmsnorm:    rstd = float(1 / sqrt(sum x^2 / D + eps))             (in double)
//               y = (x * rstd) * w                                     (float)
//   layernorm:  mean = sum x / D, var = sum (x - mean)^2 / D            (in double, two passes)
//               rstd = float(1 / sqrt(var + eps)), xh = (x - float(mean)) * rstd,
//               y = xh * w + b                                         (float)
//   rmsnorm backward:   u = dy * w, c = float(rstd^2 * sum(u x) / D)   (sum and products in double)
//                       dx = rstd * (u - x * c)
//   layernorm backward: xh as above, u = dy * w, c1 = float(sum u / D), c2 = float(sum(u xh) / D)
//                       dx = rstd * ((u - c1) - xh * c2)
// Weight gradients: rows are cut into fixed blocks of kWgradRows rows; each block adds its rows'
// terms (dy * x * rstd, dy * xh, dy: float products) in increasing row order into a double
// partial per column, then every column adds the partials in block order and rounds once to
// float. The blocking depends only on N, so dw / db never depend on the thread count.
// Parallelism: rows (forward) or row blocks (backward) over parallel_for, then columns for the
// final sum of the partials.
#include <algorithm>
#include <cmath>
#include <vector>

#include "../core/bf16.h"
#include "../core/error.h"
#include "kernels_nn.h"
#include "thread_pool.h"

namespace moma::cpu {
namespace {

constexpr int64_t kGrainElems = 32768;  // elements per parallel chunk (at least)
constexpr int64_t kWgradRows = 128;     // rows per weight-gradient partial
constexpr int kLanes = 8;               // double accumulators per row statistic

inline size_t sz(int64_t n) { return static_cast<size_t>(n); }
inline int64_t rows_grain(int64_t d) { return std::max<int64_t>(1, kGrainElems / std::max<int64_t>(1, d)); }

inline float load(const float* p, int64_t i) { return p[i]; }
inline float load(const uint16_t* p, int64_t i) { return bf16_to_f32(p[i]); }
inline void store(float* p, int64_t i, float v) { p[i] = v; }
inline void store(uint16_t* p, int64_t i, float v) { p[i] = f32_to_bf16(v); }

inline double fold(const double* lane) {
  double s = lane[0];
  for (int l = 1; l < kLanes; ++l) s += lane[l];
  return s;
}

// sum_i f(i) in double over kLanes interleaved lanes.
template <typename F>
inline double lane_sum(int64_t n, F f) {
  double lane[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int l = 0; l < kLanes; ++l) lane[l] += f(i + l);
  for (int l = 0; i < n; ++i, ++l) lane[l] += f(i);
  return fold(lane);
}

// Adds the block partials (nb x C doubles, block-major) in block order into out[C] (float).
void sum_partials(const std::vector<double>& part, int64_t nb, int64_t C, float* out) {
  parallel_for(C, std::max<int64_t>(1, kGrainElems / std::max<int64_t>(1, nb)), [&](int64_t c0, int64_t c1) {
    std::vector<double> acc(part.begin() + c0, part.begin() + c1);
    for (int64_t b = 1; b < nb; ++b) {
      const double* p = part.data() + b * C;
      for (int64_t c = c0; c < c1; ++c) acc[sz(c - c0)] += p[c];
    }
    for (int64_t c = c0; c < c1; ++c) out[c] = static_cast<float>(acc[sz(c - c0)]);
  });
}

template <typename T>
void rmsnorm_t(const T* x, const float* w, int64_t N, int64_t D, float eps, T* y, float* rstd) {
  parallel_for(N, rows_grain(D), [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      const T* xr = x + n * D;
      const double ss = lane_sum(D, [&](int64_t i) {
        const double v = load(xr, i);
        return v * v;
      });
      const float r = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(D) + static_cast<double>(eps)));
      rstd[n] = r;
      T* yr = y + n * D;
      for (int64_t i = 0; i < D; ++i) store(yr, i, (load(xr, i) * r) * w[i]);
    }
  });
}

template <typename T>
void rmsnorm_backward_t(const T* x, const float* w, const float* rstd, const T* dy, int64_t N, int64_t D, T* dx,
                        float* dw) {
  const int64_t nb = (N + kWgradRows - 1) / kWgradRows;
  std::vector<double> part(sz(nb * D));
  parallel_for(nb, std::max<int64_t>(1, kGrainElems / (kWgradRows * std::max<int64_t>(1, D))),
               [&](int64_t b0, int64_t b1) {
    std::vector<float> u(sz(D)), xf(sz(D));
    for (int64_t b = b0; b < b1; ++b) {
      double* acc = part.data() + b * D;
      std::fill(acc, acc + D, 0.0);
      for (int64_t n = b * kWgradRows; n < std::min(N, (b + 1) * kWgradRows); ++n) {
        const T* xr = x + n * D;
        const T* gr = dy + n * D;
        const float r = rstd[n];
        for (int64_t i = 0; i < D; ++i) {
          const float g = load(gr, i), xv = load(xr, i);
          xf[sz(i)] = xv;
          u[sz(i)] = g * w[i];
          acc[i] += static_cast<double>((g * xv) * r);
        }
        const double ux = lane_sum(D, [&](int64_t i) {
          return static_cast<double>(u[sz(i)]) * static_cast<double>(xf[sz(i)]);
        });
        const double rd = r;
        const float c = static_cast<float>(rd * rd * (ux / static_cast<double>(D)));
        T* out = dx + n * D;
        for (int64_t i = 0; i < D; ++i) store(out, i, r * (u[sz(i)] - xf[sz(i)] * c));
      }
    }
  });
  sum_partials(part, nb, D, dw);
}

template <typename T>
void layernorm_t(const T* x, const float* w, const float* b, int64_t N, int64_t G, int64_t D, float eps, T* y,
                 float* mean, float* rstd) {
  const int64_t R = N * G;
  parallel_for(R, rows_grain(D), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* xr = x + r * D;
      const double md = lane_sum(D, [&](int64_t i) { return static_cast<double>(load(xr, i)); }) /
                        static_cast<double>(D);
      const double var = lane_sum(D, [&](int64_t i) {
        const double c = static_cast<double>(load(xr, i)) - md;
        return c * c;
      }) / static_cast<double>(D);
      const float mf = static_cast<float>(md);
      const float rs = static_cast<float>(1.0 / std::sqrt(var + static_cast<double>(eps)));
      mean[r] = mf;
      rstd[r] = rs;
      const int64_t g = r % G;
      const float* wg = w + g * D;
      const float* bg = b + g * D;
      T* yr = y + r * D;
      for (int64_t i = 0; i < D; ++i) store(yr, i, ((load(xr, i) - mf) * rs) * wg[i] + bg[i]);
    }
  });
}

template <typename T>
void layernorm_backward_t(const T* x, const float* w, const float* mean, const float* rstd, const T* dy, int64_t N,
                          int64_t G, int64_t D, T* dx, float* dw, float* db) {
  const int64_t C = G * D;
  const int64_t nb = (N + kWgradRows - 1) / kWgradRows;
  std::vector<double> pw(sz(nb * C)), pb(sz(nb * C));
  parallel_for(nb, std::max<int64_t>(1, kGrainElems / (kWgradRows * std::max<int64_t>(1, C))),
               [&](int64_t b0, int64_t b1) {
    std::vector<float> u(sz(D)), xh(sz(D));
    for (int64_t blk = b0; blk < b1; ++blk) {
      double* aw = pw.data() + blk * C;
      double* ab = pb.data() + blk * C;
      std::fill(aw, aw + C, 0.0);
      std::fill(ab, ab + C, 0.0);
      for (int64_t n = blk * kWgradRows; n < std::min(N, (blk + 1) * kWgradRows); ++n) {
        for (int64_t g = 0; g < G; ++g) {
          const int64_t r = n * G + g;
          const T* xr = x + r * D;
          const T* gr = dy + r * D;
          const float* wg = w + g * D;
          const float mf = mean[r], rs = rstd[r];
          double* awg = aw + g * D;
          double* abg = ab + g * D;
          for (int64_t i = 0; i < D; ++i) {
            const float gv = load(gr, i);
            const float h = (load(xr, i) - mf) * rs;
            xh[sz(i)] = h;
            u[sz(i)] = gv * wg[i];
            awg[i] += static_cast<double>(gv * h);
            abg[i] += static_cast<double>(gv);
          }
          const double su = lane_sum(D, [&](int64_t i) { return static_cast<double>(u[sz(i)]); });
          const double suh = lane_sum(D, [&](int64_t i) {
            return static_cast<double>(u[sz(i)]) * static_cast<double>(xh[sz(i)]);
          });
          const float c1 = static_cast<float>(su / static_cast<double>(D));
          const float c2 = static_cast<float>(suh / static_cast<double>(D));
          T* out = dx + r * D;
          for (int64_t i = 0; i < D; ++i) store(out, i, rs * ((u[sz(i)] - c1) - xh[sz(i)] * c2));
        }
      }
    }
  });
  sum_partials(pw, nb, C, dw);
  sum_partials(pb, nb, C, db);
}

template <typename F>
void dispatch(DType dt, const char* op, F f) {
  if (dt == DType::F32)
    f(float{});
  else if (dt == DType::BF16)
    f(uint16_t{});
  else
    fail("ERR_DTYPE", op, ": unsupported dtype ", dtype_name(dt));
}

}  // namespace

void rmsnorm(const LaunchCtx& ctx, DType dt, const void* x, const float* w, int64_t N, int64_t D, float eps, void* y,
             float* rstd) {
  if (N <= 0) return;
  dispatch(dt, "rmsnorm", [&](auto tag) {
    using T = decltype(tag);
    rmsnorm_t(static_cast<const T*>(x), w, N, D, eps, static_cast<T*>(y), rstd);
  });
}

void rmsnorm_backward(const LaunchCtx& ctx, DType dt, const void* x, const float* w, const float* rstd, const void* dy,
                      int64_t N, int64_t D, void* dx, float* dw) {
  dispatch(dt, "rmsnorm_backward", [&](auto tag) {
    using T = decltype(tag);
    if (N <= 0) {
      std::fill(dw, dw + std::max<int64_t>(D, 0), 0.0f);
      return;
    }
    rmsnorm_backward_t(static_cast<const T*>(x), w, rstd, static_cast<const T*>(dy), N, D, static_cast<T*>(dx), dw);
  });
}

void layernorm(const LaunchCtx& ctx, DType dt, const void* x, const float* w, const float* b, int64_t N, int64_t G,
               int64_t D, float eps, void* y, float* mean, float* rstd) {
  if (N <= 0 || G <= 0) return;
  dispatch(dt, "layernorm", [&](auto tag) {
    using T = decltype(tag);
    layernorm_t(static_cast<const T*>(x), w, b, N, G, D, eps, static_cast<T*>(y), mean, rstd);
  });
}

void layernorm_backward(const LaunchCtx& ctx, DType dt, const void* x, const float* w, const float* mean,
                        const float* rstd, const void* dy, int64_t N, int64_t G, int64_t D, void* dx, float* dw,
                        float* db) {
  dispatch(dt, "layernorm_backward", [&](auto tag) {
    using T = decltype(tag);
    if (N <= 0) {
      const int64_t C = std::max<int64_t>(G * D, 0);
      std::fill(dw, dw + C, 0.0f);
      std::fill(db, db + C, 0.0f);
      return;
    }
    layernorm_backward_t(static_cast<const T*>(x), w, mean, rstd, static_cast<const T*>(dy), N, G, D,
                         static_cast<T*>(dx), dw, db);
  });
}

}  // namespace moma::cpu
