// Rotary position embedding, rotate-half convention (kernels_nn.h), float32 or bf16 activations
// (math in float32, rounded once on store).
// Angles: inv_freq[i] = theta^(-2i / D) and a = pos * inv_freq[i] in double, c = float(cos a),
// s = float(sin a); then y[i] = x[i] c - x[i + half] s, y[i + half] = x[i + half] c + x[i] s
// (each product rounded, then the sum; inverse uses -s, which is exact). Every (c, s) is a pure
// function of (pos, i), so where it pays (largest position < N, the usual case of positions
// repeating across packed sequences) a table over positions 0..max is filled first, in parallel,
// and rows look their angles up; otherwise each row computes its own. Either way the bits are
// the same. Positions are checked first (ERR_RANGE for the first negative one, nothing written).
// Each row reads both halves before writing, so y may alias x.
#include <algorithm>
#include <cmath>
#include <vector>

#include "../core/bf16.h"
#include "../core/error.h"
#include "kernels_nn.h"
#include "thread_pool.h"

namespace moma::cpu {
namespace {

constexpr int64_t kGrainElems = 32768;

inline size_t sz(int64_t n) { return static_cast<size_t>(n); }

inline float load(const float* p, int64_t i) { return p[i]; }
inline float load(const uint16_t* p, int64_t i) { return bf16_to_f32(p[i]); }
inline void store(float* p, int64_t i, float v) { p[i] = v; }
inline void store(uint16_t* p, int64_t i, float v) { p[i] = f32_to_bf16(v); }

// cs[0..half) = cos, cs[half..D) = sin (sign-flipped for the inverse) at position pos.
inline void angles(int32_t pos, const std::vector<double>& inv_freq, bool inverse, float* cs) {
  const int64_t half = static_cast<int64_t>(inv_freq.size());
  const double p = static_cast<double>(pos);
  for (int64_t i = 0; i < half; ++i) {
    const double a = p * inv_freq[sz(i)];
    cs[i] = static_cast<float>(std::cos(a));
    const float s = static_cast<float>(std::sin(a));
    cs[half + i] = inverse ? -s : s;
  }
}

template <typename T>
void rotate_row(const T* x, const float* cs, int64_t H, int64_t D, T* y) {
  const int64_t half = D / 2;
  const float* c = cs;
  const float* s = cs + half;
  for (int64_t h = 0; h < H; ++h) {
    const T* xr = x + h * D;
    T* yr = y + h * D;
    for (int64_t i = 0; i < half; ++i) {
      const float a = load(xr, i), b = load(xr, half + i);
      store(yr, i, a * c[i] - b * s[i]);
      store(yr, half + i, b * c[i] + a * s[i]);
    }
  }
}

template <typename T>
void rope_t(const T* x, const int32_t* pos, int64_t N, int64_t H, int64_t D, float theta, bool inverse, T* y) {
  int32_t max_pos = 0;
  for (int64_t n = 0; n < N; ++n) {
    if (pos[n] < 0) fail("ERR_RANGE", "rope: position ", pos[n], " at row ", n, " is negative");
    max_pos = std::max(max_pos, pos[n]);
  }
  const int64_t half = D / 2;
  if (half == 0 || H == 0) return;
  std::vector<double> inv_freq(sz(half));
  for (int64_t i = 0; i < half; ++i)
    inv_freq[sz(i)] = std::pow(static_cast<double>(theta), -2.0 * static_cast<double>(i) / static_cast<double>(D));
  const int64_t row = H * D;
  const int64_t grain = std::max<int64_t>(1, kGrainElems / row);
  if (static_cast<int64_t>(max_pos) < N) {
    const int64_t P = static_cast<int64_t>(max_pos) + 1;
    std::vector<float> table(sz(P * D));
    parallel_for(P, std::max<int64_t>(1, 4096 / D), [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) angles(static_cast<int32_t>(p), inv_freq, inverse, table.data() + p * D);
    });
    parallel_for(N, grain, [&](int64_t n0, int64_t n1) {
      for (int64_t n = n0; n < n1; ++n) rotate_row(x + n * row, table.data() + int64_t{pos[n]} * D, H, D, y + n * row);
    });
  } else {
    parallel_for(N, grain, [&](int64_t n0, int64_t n1) {
      std::vector<float> cs(sz(D));
      for (int64_t n = n0; n < n1; ++n) {
        angles(pos[n], inv_freq, inverse, cs.data());
        rotate_row(x + n * row, cs.data(), H, D, y + n * row);
      }
    });
  }
}

}  // namespace

void rope(const LaunchCtx& ctx, DType dt, const void* x, const int32_t* pos, int64_t N, int64_t H, int64_t D,
          float theta, bool inverse, void* y) {
  if (dt == DType::F32)
    rope_t(static_cast<const float*>(x), pos, N, H, D, theta, inverse, static_cast<float*>(y));
  else if (dt == DType::BF16)
    rope_t(static_cast<const uint16_t*>(x), pos, N, H, D, theta, inverse, static_cast<uint16_t*>(y));
  else
    fail("ERR_DTYPE", "rope: unsupported dtype ", dtype_name(dt));
}

}  // namespace moma::cpu
