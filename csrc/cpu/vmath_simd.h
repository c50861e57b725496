// The SIMD algorithms behind vmath.h, written once over a vector traits class V and included by
// vmath_avx512.cc and vmath_avx2.cc after they define V and the two function-attribute macros
// MOMA_VM_INLINE (the file's target ISA + always_inline, for per-vector helpers) and
// MOMA_VM_ENTRY (the target ISA only, for the array loops whose addresses go into the table).
// Everything here lives in an anonymous namespace, so each including file gets its own copy
// compiled for its own ISA and nothing leaks into code that runs on other CPUs.
//
// V provides, for N float lanes: F (float vector), I (int32 vector), M (lane mask), D (N/2 double
// lanes); load/store of float and bf16 (bf16 store rounds like f32_to_bf16); set/seti; add, sub,
// mul, div, fma(a, b, c) = a * b + c, fnma(a, b, c) = c - a * b (one rounding), min/max with the
// x86 rule "second operand when either is NaN", round (to nearest even); lt, ge, gt, eq, unord
// masks, mask_or, mask_any, select(m, a, b) = m ? a : b; abs, copysign; bit casts and int and/or,
// srli23, cvt_i2f; scale2(p, n) = p * 2^n for integral n in [-151, 128], rounded once (so it
// overflows to inf and underflows through subnormals correctly); double lo/hi widening, dadd,
// dsub, dmul, dset and pack (two double halves -> one float vector, rounding to nearest);
// transpose(x, xs, y, ys): the N x N block of 32-bit elements y[c * ys + r] = x[r * xs + c].
//
// exp(x): x clamped to [-104, 89] (NaN passes through: max/min return the NaN operand), then
//   x = n ln2 + r with n = round(x / ln2), r computed with a two-part ln2 (Cody-Waite; the high
//   part has 15 significant bits so n * hi is exact), |r| <= 0.347, and exp(r) by its degree-7
//   Taylor polynomial (truncation < 6e-9 relative) evaluated as s + (c + r^2 q(r)) where
//   s + c = 1 + r exactly; finally scaled by 2^n in one rounding.
// log(x): subnormals are scaled by 2^23 first; x = 2^e m with m in [sqrt(1/2), sqrt(2)),
//   f = m - 1 (exact), s = f / (2 + f), log(1 + f) = f - (f^2/2 - s (f^2/2 + R)) where
//   R = 2 s^2/3 + 2 s^4/5 + 2 s^6/7 + 2 s^8/9 (the atanh series; truncation < 3e-9 relative), plus
//   e ln2 in two parts. x < 0 and -inf give the x86 default NaN (as 0/0 in the C library),
//   0 gives -inf, +inf gives +inf, a NaN input is returned quieted.
// tanh(x): |x| < 0.625: x + x^3 P(x^2), P of degree 4 fitted (weighted least squares, Lawson
//   iterations) to the relative error of tanh on [0, 0.625], max 4.4e-9; otherwise
//   1 - 2 / (exp(2|x|) + 1); the sign of x is copied onto the result.
// sigmoid / silu mirror the scalar formulas in elementwise.cc (see vmath.h).
//
// Array loops run whole vectors, then the last n % N elements through a small stack buffer.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>

namespace moma::cpu::vmath {
namespace {

template <class V>
struct Simd {
  using F = typename V::F;
  using M = typename V::M;
  using D = typename V::D;
  static constexpr int N = V::N;

  MOMA_VM_INLINE static F exp(F x) {
    x = V::min(V::set(89.0f), V::max(V::set(-104.0f), x));
    const F n = V::round(V::mul(x, V::set(1.44269504088896341f)));
    F r = V::fnma(n, V::set(0.693145751953125f), x);
    r = V::fnma(n, V::set(1.42860682030941723e-6f), r);
    F q = V::fma(V::set(1.0f / 5040.0f), r, V::set(1.0f / 720.0f));
    q = V::fma(q, r, V::set(1.0f / 120.0f));
    q = V::fma(q, r, V::set(1.0f / 24.0f));
    q = V::fma(q, r, V::set(1.0f / 6.0f));
    q = V::fma(q, r, V::set(0.5f));
    // 1 + r as s + c exactly (Fast2Sum, |r| < 1), so only the last addition rounds noticeably.
    const F s = V::add(V::set(1.0f), r);
    const F c = V::add(V::sub(V::set(1.0f), s), r);
    const F p = V::add(s, V::fma(q, V::mul(r, r), c));
    return V::scale2(p, n);
  }

  MOMA_VM_INLINE static F log(F x) {
    const M sub = V::lt(x, V::set(std::numeric_limits<float>::min()));
    const F xs = V::select(sub, V::mul(x, V::set(8388608.0f)), x);  // 2^23
    const F bias = V::select(sub, V::set(150.0f), V::set(127.0f));
    const typename V::I u = V::ibits(xs);
    F e = V::sub(V::cvt_i2f(V::srli23(u)), bias);
    F m = V::bits(V::ior(V::iand(u, V::seti(0x007fffff)), V::seti(0x3f800000)));
    const M big = V::gt(m, V::set(1.41421356237309505f));
    m = V::select(big, V::mul(m, V::set(0.5f)), m);
    e = V::select(big, V::add(e, V::set(1.0f)), e);
    const F f = V::sub(m, V::set(1.0f));
    const F s = V::div(f, V::add(V::set(2.0f), f));
    const F z = V::mul(s, s);
    F R = V::fma(V::set(2.0f / 9.0f), z, V::set(2.0f / 7.0f));
    R = V::fma(R, z, V::set(2.0f / 5.0f));
    R = V::fma(R, z, V::set(2.0f / 3.0f));
    R = V::mul(R, z);
    const F hfsq = V::mul(V::set(0.5f), V::mul(f, f));
    // f - (hfsq - (s (hfsq + R) + e lo)) + e hi
    const F t = V::fma(s, V::add(hfsq, R), V::mul(e, V::set(1.42860682030941723e-6f)));
    F y = V::fma(e, V::set(0.693145751953125f), V::sub(f, V::sub(hfsq, t)));
    const float inf = std::numeric_limits<float>::infinity();
    y = V::select(V::eq(x, V::set(inf)), x, y);
    y = V::select(V::eq(x, V::set(0.0f)), V::set(-inf), y);
    y = V::select(V::lt(x, V::set(0.0f)), V::bits(V::seti(static_cast<int32_t>(0xffc00000u))), y);
    return V::select(V::unord(x, x), V::add(x, x), y);
  }

  // e = exp(-|x|) taken from x itself when x is not >= 0, so a NaN keeps its sign and payload.
  MOMA_VM_INLINE static F sigmoid(F x) {
    const M pos = V::ge(x, V::set(0.0f));
    const F e = exp(V::select(pos, V::sub(V::set(0.0f), x), x));
    return V::div(V::select(pos, V::set(1.0f), e), V::add(V::set(1.0f), e));
  }

  MOMA_VM_INLINE static F tanh(F x) {
    const F a = V::abs(x);
    const F z = V::mul(a, a);
    F p = V::fma(V::set(-0.005704978373274574f), z, V::set(0.020639078740478045f));
    p = V::fma(p, z, V::set(-0.0537397121565262f));
    p = V::fma(p, z, V::set(0.13331442157531945f));
    p = V::fma(p, z, V::set(-0.33333281940181975f));
    const F small = V::fma(V::mul(a, z), p, a);
    const F e = exp(V::add(a, a));
    const F large = V::sub(V::set(1.0f), V::div(V::set(2.0f), V::add(e, V::set(1.0f))));
    return V::copysign(V::select(V::lt(a, V::set(0.625f)), small, large), x);
  }

  template <Fn fn>
  MOMA_VM_INLINE static F apply(F x) {
    if constexpr (fn == Fn::Exp) return exp(x);
    if constexpr (fn == Fn::Log) return log(x);
    if constexpr (fn == Fn::Sigmoid) return sigmoid(x);
    if constexpr (fn == Fn::Silu) return V::mul(x, sigmoid(x));
    if constexpr (fn == Fn::Tanh) return tanh(x);
  }

  MOMA_VM_INLINE static F load(const float* p) { return V::load(p); }
  MOMA_VM_INLINE static F load(const uint16_t* p) { return V::load_bf16(p); }
  MOMA_VM_INLINE static void store(float* p, F v) { V::store(p, v); }
  MOMA_VM_INLINE static void store(uint16_t* p, F v) { V::store_bf16(p, v); }

  // y[i] = op(load(x[i])) stored as Out, for any n (the tail through a padded buffer).
  template <class In, class Out, class Op>
  MOMA_VM_INLINE static void map(const In* x, Out* y, int64_t n, Op op) {
    int64_t i = 0;
    for (; i + N <= n; i += N) store(y + i, op(load(x + i)));
    if (i < n) {
      const size_t rest = static_cast<size_t>(n - i);
      In bx[N] = {};
      Out by[N];
      std::memcpy(bx, x + i, rest * sizeof(In));
      store(by, op(load(bx)));
      std::memcpy(y + i, by, rest * sizeof(Out));
    }
  }

  // Per-vector operations for map (function objects rather than lambdas, so that the call
  // operator carries the target attribute and no vector-typed function pointer is formed).
  template <Fn fn>
  struct Apply {
    MOMA_VM_INLINE F operator()(F v) const { return apply<fn>(v); }
  };
  struct Identity {
    MOMA_VM_INLINE F operator()(F v) const { return v; }
  };
  struct Scale {  // float(double(v) * s)
    double s;
    MOMA_VM_INLINE F operator()(F v) const {
      const D ds = V::dset(s);
      return V::pack(V::dmul(V::widen_lo(v), ds), V::dmul(V::widen_hi(v), ds));
    }
  };
  struct Sub2 {  // float(double(v) - a - b)
    double a, b;
    MOMA_VM_INLINE F operator()(F v) const {
      const D da = V::dset(a), db = V::dset(b);
      return V::pack(V::dsub(V::dsub(V::widen_lo(v), da), db),
                     V::dsub(V::dsub(V::widen_hi(v), da), db));
    }
  };

  template <Fn fn, class T>
  MOMA_VM_ENTRY static void map_fn(const T* x, T* y, int64_t n) {
    map(x, y, n, Apply<fn>{});
  }

  template <class T>
  static void map_any(Fn fn, const T* x, T* y, int64_t n) {
    switch (fn) {
      case Fn::Exp: return map_fn<Fn::Exp>(x, y, n);
      case Fn::Log: return map_fn<Fn::Log>(x, y, n);
      case Fn::Sigmoid: return map_fn<Fn::Sigmoid>(x, y, n);
      case Fn::Silu: return map_fn<Fn::Silu>(x, y, n);
      case Fn::Tanh: return map_fn<Fn::Tanh>(x, y, n);
    }
  }
  static void map_f32(Fn fn, const float* x, float* y, int64_t n) { map_any(fn, x, y, n); }
  static void map_bf16(Fn fn, const uint16_t* x, uint16_t* y, int64_t n) { map_any(fn, x, y, n); }

  MOMA_VM_ENTRY static void f32_to_bf16(const float* x, uint16_t* y, int64_t n) {
    map(x, y, n, Identity{});
  }
  MOMA_VM_ENTRY static void bf16_to_f32(const uint16_t* x, float* y, int64_t n) {
    map(x, y, n, Identity{});
  }

  // Double accumulation: lanes of the low and high halves in two accumulators that start at -0.0
  // (so that a sum of -0.0 values stays -0.0, as in the scalar loop), combined in lane order.
  struct Acc {
    D lo, hi;
  };
  MOMA_VM_INLINE static Acc acc_init() { return {V::dset(-0.0), V::dset(-0.0)}; }
  MOMA_VM_INLINE static void acc_add(Acc& a, F v) {
    a.lo = V::dadd(a.lo, V::widen_lo(v));
    a.hi = V::dadd(a.hi, V::widen_hi(v));
  }
  MOMA_VM_INLINE static double acc_total(const Acc& a) {
    double lanes[N];
    V::dstore(lanes, a.lo);
    V::dstore(lanes + N / 2, a.hi);
    double s = -0.0;
    for (int k = 0; k < N; ++k) s += lanes[k];
    return s;
  }
  // Adds the first `rest` lanes of v (rest < N).
  MOMA_VM_INLINE static void acc_add_part(Acc& a, F v, int64_t rest) {
    float buf[N];
    store(buf, v);
    for (int64_t k = rest; k < N; ++k) buf[k] = -0.0f;
    acc_add(a, load(buf));
  }

  template <class T>
  MOMA_VM_ENTRY static double sum(const T* x, int64_t n) {
    Acc a = acc_init();
    int64_t i = 0;
    for (; i + N <= n; i += N) acc_add(a, load(x + i));
    if (i < n) {
      T buf[N] = {};
      std::memcpy(buf, x + i, static_cast<size_t>(n - i) * sizeof(T));
      acc_add_part(a, load(buf), n - i);
    }
    return acc_total(a);
  }
  static double sum_f32(const float* x, int64_t n) { return sum(x, n); }
  static double sum_bf16(const uint16_t* x, int64_t n) { return sum(x, n); }

  MOMA_VM_ENTRY static float max_f32(const float* x, int64_t n) {
    F best = V::set(x[0]);
    M nan = V::unord(best, best);
    int64_t i = 0;
    for (; i + N <= n; i += N) {
      const F v = load(x + i);
      nan = V::mask_or(nan, V::unord(v, v));
      best = V::max(v, best);  // a NaN v leaves best unchanged
    }
    if (V::mask_any(nan)) return std::numeric_limits<float>::quiet_NaN();
    float lanes[N];
    store(lanes, best);
    float m = lanes[0];
    for (int k = 1; k < N; ++k) m = lanes[k] > m ? lanes[k] : m;
    for (; i < n; ++i) {
      if (x[i] != x[i]) return std::numeric_limits<float>::quiet_NaN();
      m = x[i] > m ? x[i] : m;
    }
    return m;
  }

  MOMA_VM_ENTRY static double exp_shift_sum(const float* x, float shift, float* y, int64_t n) {
    const F sh = V::set(shift);
    Acc a = acc_init();
    int64_t i = 0;
    for (; i + N <= n; i += N) {
      const F e = exp(V::sub(load(x + i), sh));
      if (y) store(y + i, e);
      acc_add(a, e);
    }
    if (i < n) {
      const size_t rest = static_cast<size_t>(n - i);
      float buf[N] = {};
      std::memcpy(buf, x + i, rest * sizeof(float));
      const F e = exp(V::sub(load(buf), sh));
      store(buf, e);
      if (y) std::memcpy(y + i, buf, rest * sizeof(float));
      acc_add_part(a, e, n - i);
    }
    return acc_total(a);
  }

  MOMA_VM_ENTRY static void scale_f32(const float* x, double s, float* y, int64_t n) {
    map(x, y, n, Scale{s});
  }

  MOMA_VM_ENTRY static void sub2_f32(const float* x, double a, double b, float* y, int64_t n) {
    map(x, y, n, Sub2{a, b});
  }

  MOMA_VM_ENTRY static void transpose32(const uint32_t* x, int64_t xs, uint32_t* y, int64_t ys,
                                        int64_t rows, int64_t cols) {
    int64_t r0 = 0;
    for (; r0 + N <= rows; r0 += N) {
      int64_t c0 = 0;
      for (; c0 + N <= cols; c0 += N) V::transpose(x + r0 * xs + c0, xs, y + c0 * ys + r0, ys);
      for (int64_t c = c0; c < cols; ++c)
        for (int64_t r = r0; r < r0 + N; ++r) y[c * ys + r] = x[r * xs + c];
    }
    for (int64_t r = r0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) y[c * ys + r] = x[r * xs + c];
  }

  static Kernels table(const char* isa) {
    return {isa,      &map_f32,       &map_bf16,  &f32_to_bf16, &bf16_to_f32, &sum_f32,
            &sum_bf16, &max_f32,      &exp_shift_sum, &scale_f32, &sub2_f32,
            &transpose32};
  }
};

}  // namespace
}  // namespace moma::cpu::vmath
