// Portable double-precision log, exp and cos / sin, bit-identical on the CPU and on CUDA, for the
// formulas that must give the same bits on both backends (philox.h: Box-Muller normals and Gumbel
// noise; the router's exp). The library functions cannot be used there: glibc's and CUDA's log /
// cos / exp are each within 1-2 ulp of the exact value but round differently in the last bit.
//
// The algorithms are fdlibm's (Sun Microsystems, freely distributed: e_log.c, e_exp.c, k_cos.c,
// k_sin.c, the medium path of e_rem_pio2.c) with the same coefficients, written with one rounded
// IEEE operation per step and no fused multiply-add:
//   * CUDA: __dmul_rn / __dadd_rn / __dsub_rn / __ddiv_rn / __dsqrt_rn, which nvcc never contracts;
//   * CPU: plain operators in a build with -ffp-contract=off (CMakeLists.txt), x86-64 SSE2 doubles.
// Both evaluate the same sequence of correctly rounded operations, so every result is the same
// bits on both. Accuracy (fdlibm's bounds, checked against glibc by cpu_sanity.cc over millions
// of inputs): log < 1 ulp; exp < 1 ulp for normal results (|x| < 708; a subnormal result is
// rounded twice, within 2 ulp of the subnormal grid); cos / sin < 1 ulp for |x| <= 2^19 pi/2 (the Cody-Waite
// reduction used here; positions of RoPE and Box-Muller angles are far inside). Rounded to float,
// the results equal the correctly rounded float value except when the exact value lies within
// 1 double ulp of a float rounding boundary (about 1 input in 2^29).
//
// Domain: log returns -inf for 0, NaN for x < 0 or NaN, +inf for +inf, and handles subnormals;
// exp returns +inf above 709.78 and 0 below -745.13; cos / sin assume |x| <= 2^19 pi/2 (~823550).
#pragma once
#include <cstdint>
#include <cstring>

#include "hostdevice.h"

namespace moma::pmath {

// ---- rounded IEEE double operations, never fused ----------------------------------------------
MOMA_HD double mul(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}
MOMA_HD double add(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}
MOMA_HD double sub(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dsub_rn(a, b);
#else
  return a - b;
#endif
}
MOMA_HD double div(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __ddiv_rn(a, b);
#else
  return a / b;
#endif
}
MOMA_HD double sqrt(double a) {  // correctly rounded on both (IEEE 754 requires it)
#if defined(__CUDA_ARCH__)
  return __dsqrt_rn(a);
#else
  return __builtin_sqrt(a);
#endif
}

MOMA_HD uint64_t bits_of(double x) {
#if defined(__CUDA_ARCH__)
  return static_cast<uint64_t>(__double_as_longlong(x));
#else
  uint64_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
#endif
}
MOMA_HD double double_of(uint64_t u) {
#if defined(__CUDA_ARCH__)
  return __longlong_as_double(static_cast<long long>(u));
#else
  double x;
  std::memcpy(&x, &u, sizeof x);
  return x;
#endif
}
MOMA_HD uint32_t high_word(double x) { return static_cast<uint32_t>(bits_of(x) >> 32); }
MOMA_HD double with_high_word(double x, uint32_t hi) {
  return double_of((static_cast<uint64_t>(hi) << 32) | (bits_of(x) & 0xFFFFFFFFull));
}
MOMA_HD double inf() { return double_of(0x7FF0000000000000ull); }
MOMA_HD double nan() { return double_of(0x7FF8000000000000ull); }

// ---- log (fdlibm e_log.c) -------------------------------------------------------------------
// x = 2^k (1 + f) with sqrt(2)/2 < 1 + f < sqrt(2); s = f / (2 + f);
// log(1 + f) = f - f^2/2 + s (f^2/2 + R(s^2)), R a degree-7 polynomial in s^2 (|error| < 2^-58.45);
// log(x) = k ln2_hi + (log(1 + f) + k ln2_lo), ln2_hi with 21 trailing zero bits so k ln2_hi is exact.
MOMA_HD double log(double x) {
  constexpr double ln2_hi = 0x1.62e42fee00000p-1, ln2_lo = 0x1.a39ef35793c76p-33;
  constexpr double Lg1 = 0x1.5555555555593p-1, Lg2 = 0x1.999999997fa04p-2, Lg3 = 0x1.2492494229359p-2,
                   Lg4 = 0x1.c71c51d8e78afp-3, Lg5 = 0x1.7466496cb03dep-3, Lg6 = 0x1.39a09d078c69fp-3,
                   Lg7 = 0x1.2f112df3e5244p-3;
  if (!(x > 0.0)) return x == 0.0 ? -inf() : nan();  // also NaN
  if (x == inf()) return x;
  int k = 0;
  if (bits_of(x) < 0x0010000000000000ull) {  // subnormal: scale by 2^54
    x = mul(x, 0x1p54);
    k = -54;
  }
  int32_t hx = static_cast<int32_t>(high_word(x));
  k += (hx >> 20) - 1023;
  hx &= 0x000fffff;
  const int32_t i_norm = (hx + 0x95f64) & 0x100000;  // 1 + f >= sqrt(2): use x / 2
  x = with_high_word(x, static_cast<uint32_t>(hx | (i_norm ^ 0x3ff00000)));
  k += i_norm >> 20;
  const double f = sub(x, 1.0);
  const double dk = static_cast<double>(k);
  if ((0x000fffff & (2 + hx)) < 3) {  // |f| < 2^-20
    if (f == 0.0) return k == 0 ? 0.0 : add(mul(dk, ln2_hi), mul(dk, ln2_lo));
    const double R = mul(mul(f, f), sub(0.5, mul(0.33333333333333333, f)));
    if (k == 0) return sub(f, R);
    return sub(mul(dk, ln2_hi), sub(sub(R, mul(dk, ln2_lo)), f));
  }
  const double s = div(f, add(2.0, f));
  const double z = mul(s, s);
  const double w = mul(z, z);
  const double t1 = mul(w, add(Lg2, mul(w, add(Lg4, mul(w, Lg6)))));
  const double t2 = mul(z, add(Lg1, mul(w, add(Lg3, mul(w, add(Lg5, mul(w, Lg7)))))));
  const double R = add(t2, t1);
  if (((hx - 0x6147a) | (0x6b851 - hx)) > 0) {  // 1 + f not close to 1: f^2/2 path
    const double hfsq = mul(mul(0.5, f), f);
    if (k == 0) return sub(f, sub(hfsq, mul(s, add(hfsq, R))));
    return sub(mul(dk, ln2_hi), sub(sub(hfsq, add(mul(s, add(hfsq, R)), mul(dk, ln2_lo))), f));
  }
  if (k == 0) return sub(f, mul(s, sub(f, R)));
  return sub(mul(dk, ln2_hi), sub(sub(mul(s, sub(f, R)), mul(dk, ln2_lo)), f));
}

// ---- exp (fdlibm e_exp.c) -------------------------------------------------------------------
// x = k ln2 + r, |r| <= ln2 / 2 (r = hi - lo in two parts); exp(r) = 1 + r + r c / (2 - c) with
// c = r - r^2 P(r^2), P degree 5 (|error| < 2^-59); exp(x) = 2^k exp(r) (exponent added directly).
MOMA_HD double exp(double x) {
  constexpr double ln2_hi = 0x1.62e42fee00000p-1, ln2_lo = 0x1.a39ef35793c76p-33;
  constexpr double invln2 = 0x1.71547652b82fep+0;
  constexpr double P1 = 0x1.555555555553ep-3, P2 = -0x1.6c16c16bebd93p-9, P3 = 0x1.1566aaf25de2cp-14,
                   P4 = -0x1.bbd41c5d26bf1p-20, P5 = 0x1.6376972bea4d0p-25;
  if (x != x) return x;
  if (x > 0x1.62e42fefa39efp+9) return inf();  // > 709.78: overflows
  if (x < -0x1.74910d52d3051p+9) return 0.0;  // < -745.13: underflows to 0
  const uint32_t hx = high_word(x) & 0x7fffffffu;
  const bool neg = x < 0.0;
  double hi = 0.0, lo = 0.0;
  int k = 0;
  if (hx > 0x3fd62e42u) {  // |x| > ln2 / 2
    if (hx < 0x3FF0A2B2u) {  // and |x| < 3 ln2 / 2: k = +-1
      hi = neg ? add(x, ln2_hi) : sub(x, ln2_hi);
      lo = neg ? -ln2_lo : ln2_lo;
      k = neg ? -1 : 1;
    } else {
      k = static_cast<int>(add(mul(invln2, x), neg ? -0.5 : 0.5));
      const double t = static_cast<double>(k);
      hi = sub(x, mul(t, ln2_hi));  // exact: t ln2_hi has few bits
      lo = mul(t, ln2_lo);
    }
    x = sub(hi, lo);
  } else if (hx < 0x3e300000u) {  // |x| < 2^-28
    return add(1.0, x);
  }
  const double t = mul(x, x);
  const double c = sub(x, mul(t, add(P1, mul(t, add(P2, mul(t, add(P3, mul(t, add(P4, mul(t, P5))))))))));
  if (k == 0) return sub(1.0, sub(div(mul(x, c), sub(c, 2.0)), x));
  const double y = sub(1.0, sub(sub(lo, div(mul(x, c), sub(2.0, c))), hi));
  if (k >= -1021) return with_high_word(y, high_word(y) + (static_cast<uint32_t>(k) << 20));
  return mul(with_high_word(y, high_word(y) + (static_cast<uint32_t>(k + 1000) << 20)), 0x1p-1000);
}

// ---- cos / sin kernels on [-pi/4, pi/4] (fdlibm k_cos.c / k_sin.c) -------------------------
// The argument is x + y with |y| < ulp(x) / 2 (the reduction's tail).
MOMA_HD double kernel_cos(double x, double y) {
  constexpr double C1 = 0x1.555555555554cp-5, C2 = -0x1.6c16c16c15177p-10, C3 = 0x1.a01a019cb1590p-16,
                   C4 = -0x1.27e4f809c52adp-22, C5 = 0x1.1ee9ebdb4b1c4p-29, C6 = -0x1.8fae9be8838d4p-37;
  const uint32_t ix = high_word(x) & 0x7fffffffu;
  if (ix < 0x3e400000u) return 1.0;  // |x| < 2^-27
  const double z = mul(x, x);
  const double r = mul(z, add(C1, mul(z, add(C2, mul(z, add(C3, mul(z, add(C4, mul(z, add(C5, mul(z, C6)))))))))));
  if (ix < 0x3FD33333u) return sub(1.0, sub(mul(0.5, z), sub(mul(z, r), mul(x, y))));  // |x| < 0.3
  const double qx = ix > 0x3fe90000u ? 0.28125 : double_of(static_cast<uint64_t>(ix - 0x00200000u) << 32);
  const double hz = sub(mul(0.5, z), qx);
  const double a = sub(1.0, qx);
  return sub(a, sub(hz, sub(mul(z, r), mul(x, y))));
}

MOMA_HD double kernel_sin(double x, double y) {
  constexpr double S1 = -0x1.5555555555549p-3, S2 = 0x1.111111110f8a6p-7, S3 = -0x1.a01a019c161d5p-13,
                   S4 = 0x1.71de357b1fe7dp-19, S5 = -0x1.ae5e68a2b9cebp-26, S6 = 0x1.5d93a5acfd57cp-33;
  const uint32_t ix = high_word(x) & 0x7fffffffu;
  if (ix < 0x3e400000u) return x;  // |x| < 2^-27
  const double z = mul(x, x);
  const double v = mul(z, x);
  const double r = add(S2, mul(z, add(S3, mul(z, add(S4, mul(z, add(S5, mul(z, S6))))))));
  return sub(x, sub(sub(mul(z, sub(mul(0.5, y), mul(v, r))), y), mul(v, S1)));
}

// ---- reduction by pi/2 (fdlibm e_rem_pio2.c, medium path: |x| <= 2^19 pi/2) -----------------
// Returns n with x = n pi/2 + (y0 + y1), |y0 + y1| <= pi/4. pi/2 is held in 33 + 33 + 33 + 53 bits
// (pio2_1 + pio2_2 + pio2_3 + pio2_3t) so that n * pio2_i is exact; a second and third step are
// taken when cancellation has eaten the bits of the first (151 bits in all).
MOMA_HD int rem_pio2(double x, double& y0, double& y1) {
  constexpr double invpio2 = 0x1.45f306dc9c883p-1;
  constexpr double pio2_1 = 0x1.921fb54400000p+0, pio2_1t = 0x1.0b4611a626331p-34;
  constexpr double pio2_2 = 0x1.0b4611a600000p-34, pio2_2t = 0x1.3198a2e037073p-69;
  constexpr double pio2_3 = 0x1.3198a2e000000p-69, pio2_3t = 0x1.b839a252049c1p-104;
  const uint32_t ix = high_word(x) & 0x7fffffffu;
  if (ix <= 0x3fe921fbu) {  // |x| <= pi/4: no reduction
    y0 = x;
    y1 = 0.0;
    return 0;
  }
  const bool neg = x < 0.0;
  const double t = neg ? -x : x;
  const int n = static_cast<int>(add(mul(t, invpio2), 0.5));
  const double fn = static_cast<double>(n);
  double r = sub(t, mul(fn, pio2_1));
  double w = mul(fn, pio2_1t);
  const int j = static_cast<int>(ix >> 20);
  y0 = sub(r, w);
  if (j - static_cast<int>((high_word(y0) >> 20) & 0x7ff) > 16) {  // second step: 118 bits
    double u = r;
    w = mul(fn, pio2_2);
    r = sub(u, w);
    w = sub(mul(fn, pio2_2t), sub(sub(u, r), w));
    y0 = sub(r, w);
    if (j - static_cast<int>((high_word(y0) >> 20) & 0x7ff) > 49) {  // third step: 151 bits
      u = r;
      w = mul(fn, pio2_3);
      r = sub(u, w);
      w = sub(mul(fn, pio2_3t), sub(sub(u, r), w));
      y0 = sub(r, w);
    }
  }
  y1 = sub(sub(r, y0), w);
  if (neg) {
    y0 = -y0;
    y1 = -y1;
    return -n;
  }
  return n;
}

MOMA_HD double cos(double x) {
  double y0, y1;
  switch (rem_pio2(x, y0, y1) & 3) {
    case 0: return kernel_cos(y0, y1);
    case 1: return -kernel_sin(y0, y1);
    case 2: return -kernel_cos(y0, y1);
    default: return kernel_sin(y0, y1);
  }
}

MOMA_HD double sin(double x) {
  double y0, y1;
  switch (rem_pio2(x, y0, y1) & 3) {
    case 0: return kernel_sin(y0, y1);
    case 1: return kernel_cos(y0, y1);
    case 2: return -kernel_sin(y0, y1);
    default: return -kernel_cos(y0, y1);
  }
}

// exp of a float argument rounded to float: the router's sigmoid and softmax (|error| < 0.51 ulp).
MOMA_HD float expf(float x) { return static_cast<float>(exp(static_cast<double>(x))); }

}  // namespace moma::pmath
