// Private interface between the element-wise / reduction kernels (elementwise.cc, reduce.cc) and
// their SIMD loops (vmath_avx512.cc, vmath_avx2.cc, vmath_neon.cc; shared algorithms in
// vmath_simd.h).
//
// vector_kernels() returns the table for this CPU, chosen once (x86-64: AVX-512F/BW/DQ, else
// AVX2 + FMA; AArch64: NEON, always present), or nullptr when none is available; callers then
// keep their scalar loops. Every function
// takes contiguous arrays of any length (tails included) and never reads or writes past n.
//
// Numerics (float32; maxima measured against double references on every 29th bit pattern and
// dense sweeps of the edges):
//   exp      0.82 ulp; overflows to +inf above 88.7228, underflows through subnormals to 0 below
//            -103.97, exp(-inf) = 0, exp(+inf) = +inf, NaN -> the same NaN quieted.
//   log      0.81 ulp; log(0) = -inf, log(x < 0) = NaN, log(+inf) = +inf, subnormals handled.
//   sigmoid  the scalar formula: x >= 0 ? 1 / (1 + e) : e / (1 + e), e = exp(-|x|) (2.4 ulp,
//            as with the C library's exp; the formula's own roundings dominate).
//   silu     x * sigmoid(x) (so silu(-inf) = NaN, as in the scalar code).
//   tanh     1.35 ulp; odd polynomial for |x| < 0.625, else 1 - 2 / (exp(2|x|) + 1), sign copied.
// NaN inputs come out as the same NaN (sign and payload kept, quieted), as from the C library.
// bf16 variants widen exactly, compute in float and round to nearest even exactly like
// f32_to_bf16 (NaN -> quiet NaN keeping the sign and top payload bits). Sums accumulate in double
// lanes in a fixed order that depends only on n, so results never depend on the thread layout.
// transpose32 moves N x N blocks through registers (unpack / shuffle, no arithmetic), the ragged
// edges element by element.
#pragma once
#include <cstdint>

namespace moma::cpu::vmath {

enum class Fn : int { Exp, Log, Sigmoid, Silu, Tanh };

struct Kernels {
  const char* isa;  // "avx512", "avx2" or "neon"
  // y[i] = fn(x[i]); y may alias x.
  void (*map_f32)(Fn fn, const float* x, float* y, int64_t n);
  void (*map_bf16)(Fn fn, const uint16_t* x, uint16_t* y, int64_t n);
  // Bit-exact conversions (f32 -> bf16 as f32_to_bf16).
  void (*f32_to_bf16)(const float* x, uint16_t* y, int64_t n);
  void (*bf16_to_f32)(const uint16_t* x, float* y, int64_t n);
  // Sum of x[0..n) in double.
  double (*sum_f32)(const float* x, int64_t n);
  double (*sum_bf16)(const uint16_t* x, int64_t n);
  // Largest element of x[0..n) (n >= 1), NaN if any element is NaN.
  float (*max_f32)(const float* x, int64_t n);
  // y[i] = exp(x[i] - shift) with the difference rounded to float first; returns the double sum
  // of the y values. y may alias x, or be nullptr to only return the sum.
  double (*exp_shift_sum)(const float* x, float shift, float* y, int64_t n);
  // y[i] = float(double(x[i]) * s); y may alias x.
  void (*scale_f32)(const float* x, double s, float* y, int64_t n);
  // y[i] = float(double(x[i]) - a - b) (subtractions in that order, in double); y may alias x.
  void (*sub2_f32)(const float* x, double a, double b, float* y, int64_t n);
  // Moves 32-bit elements: y[c * ys + r] = x[r * xs + c] for r < rows, c < cols (bit-exact).
  void (*transpose32)(const uint32_t* x, int64_t xs, uint32_t* y, int64_t ys, int64_t rows,
                      int64_t cols);
};

const Kernels* vector_kernels();

// The tables of this build (nullptr when the compiler cannot target the ISA); the caller checks
// the CPU before using one.
const Kernels* kernels_avx512();
const Kernels* kernels_avx2();
const Kernels* kernels_neon();

}  // namespace moma::cpu::vmath
