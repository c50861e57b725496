// Element-wise CPU kernels: fill, arange, random_uniform / random_normal, cast, unary, binary and
// where.
// Parallelism: parallel_for over the flat output index, 32768 elements per chunk at least (4096
// for the random ops, where the Philox rounds dominate). Strided operands are walked with
// for_each_run (strided_iter.h); each innermost run gets its own loop for the stride-1 and
// stride-0 (broadcast) cases, so contiguous and broadcast operands compile to plain loops the
// compiler can vectorise. Exp / Log / Sigmoid / Silu / Tanh and the float32 <-> bf16 casts run
// through the AVX-512 / AVX2 loops of vmath.h when the CPU has them (chosen once at run time),
// else through the scalar loops here.
// Numerics: float32 and bf16 compute in float (bf16 is widened exactly and rounded once on store,
// ties to even); the SIMD exp / log / tanh are within 1.4 ulp of the correctly rounded result and
// may differ from the C library's in the last bit (vmath.h). int32 arithmetic wraps modulo 2^32
// (done in uint32); Div truncates toward zero, x / 0 = 0 and INT32_MIN / -1 wraps. Maximum /
// Minimum propagate NaN. Conversions (cast, fill,
// arange) go through double, which holds every source value exactly: to float32 rounds to nearest,
// to bf16 through float32, to int32 truncates toward zero with NaN -> 0 and saturation, to uint8
// truncates and saturates to [0, 255] with NaN -> 0. Random op element i is a function of
// (seed, offset, i) only (philox.h), whatever the thread layout, and the same bits as CUDA's:
// random_normal's Box-Muller log / cos are portable_math.h's, not libm's.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

#include "../core/philox.h"
#include "kernels.h"
#include "strided_iter.h"
#include "thread_pool.h"
#include "vmath.h"

namespace moma::cpu {
namespace {

using detail::Coalesced;
using detail::for_each_run;
using detail::load_f;
using detail::store_f;

constexpr int64_t kGrain = 32768;
constexpr int64_t kRandomGrain = 4096;

// ---- conversions through double ------------------------------------------------------------

inline double widen(float v) { return v; }
inline double widen(uint16_t v) { return bf16_to_f32(v); }
inline double widen(int32_t v) { return v; }
inline double widen(uint8_t v) { return v; }

template <typename T> T narrow(double v);
template <> float narrow<float>(double v) { return static_cast<float>(v); }
template <> uint16_t narrow<uint16_t>(double v) { return f32_to_bf16(static_cast<float>(v)); }
template <> int32_t narrow<int32_t>(double v) {
  if (std::isnan(v)) return 0;
  if (v >= 2147483647.0) return std::numeric_limits<int32_t>::max();
  if (v <= -2147483648.0) return std::numeric_limits<int32_t>::min();
  return static_cast<int32_t>(v);
}
template <> uint8_t narrow<uint8_t>(double v) {
  if (!(v > 0.0)) return 0;  // also NaN
  if (v >= 255.0) return 255;
  return static_cast<uint8_t>(static_cast<int32_t>(v));
}

// ---- loops ---------------------------------------------------------------------------------

// y[i] = f(x[i]) on contiguous storage.
template <typename T, typename U, typename F>
void map_contiguous(const T* x, U* y, int64_t n, F f) {
  parallel_for(n, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) y[i] = f(x[i]);
  });
}

// Float dtypes: y[i] = f(x[i]) computed in float.
template <typename T, typename F>
void map_float(const void* x, void* y, int64_t n, F f) {
  map_contiguous(static_cast<const T*>(x), static_cast<T*>(y), n,
                 [f](T v) { return store_f<T>(f(load_f(v))); });
}

// y[pos] = f(a[...], b[...]) over the output shape, op f on storage values.
template <typename T, typename F>
void binary_walk(const T* a, const StridedView& av, const T* b, const StridedView& bv, T* y,
                 int64_t n, F f) {
  const StridedView* views[2] = {&av, &bv};
  const Coalesced<2> c = detail::coalesce<2>(views);
  const int64_t sa = c.inner_stride(0), sb = c.inner_stride(1);
  parallel_for(n, kGrain, [&](int64_t begin, int64_t end) {
    for_each_run(c, begin, end, [&](int64_t pos, const int64_t* off, int64_t len) {
      const T* ap = a + off[0];
      const T* bp = b + off[1];
      T* yp = y + pos;
      if (sa == 1 && sb == 1) {
        for (int64_t t = 0; t < len; ++t) yp[t] = f(ap[t], bp[t]);
      } else if (sa == 1 && sb == 0) {
        const T bs = *bp;
        for (int64_t t = 0; t < len; ++t) yp[t] = f(ap[t], bs);
      } else if (sa == 0 && sb == 1) {
        const T as = *ap;
        for (int64_t t = 0; t < len; ++t) yp[t] = f(as, bp[t]);
      } else {
        for (int64_t t = 0; t < len; ++t) yp[t] = f(ap[t * sa], bp[t * sb]);
      }
    });
  });
}

template <typename T, typename F>
void binary_float(const void* a, const StridedView& av, const void* b, const StridedView& bv,
                  void* y, int64_t n, F f) {
  binary_walk(static_cast<const T*>(a), av, static_cast<const T*>(b), bv, static_cast<T*>(y), n,
              [f](T p, T q) { return store_f<T>(f(load_f(p), load_f(q))); });
}

template <typename F>
void binary_int(const void* a, const StridedView& av, const void* b, const StridedView& bv,
                void* y, int64_t n, F f) {
  binary_walk(static_cast<const int32_t*>(a), av, static_cast<const int32_t*>(b), bv,
              static_cast<int32_t*>(y), n, f);
}

inline int32_t wrap(uint32_t v) { return static_cast<int32_t>(v); }
inline uint32_t bits(int32_t v) { return static_cast<uint32_t>(v); }

inline float sigmoid(float v) {
  if (v >= 0.0f) return 1.0f / (1.0f + std::exp(-v));
  const float e = std::exp(v);
  return e / (1.0f + e);
}

// Exp, Log, Sigmoid, Silu and Tanh through the SIMD table when this CPU has one (vmath.h);
// false (nothing done) for other ops or without one.
template <typename T>
bool unary_vector(UnaryOp op, const void* x, void* y, int64_t n) {
  const vmath::Kernels* k = vmath::vector_kernels();
  if (!k) return false;
  vmath::Fn fn;
  switch (op) {
    case UnaryOp::Exp: fn = vmath::Fn::Exp; break;
    case UnaryOp::Log: fn = vmath::Fn::Log; break;
    case UnaryOp::Sigmoid: fn = vmath::Fn::Sigmoid; break;
    case UnaryOp::Silu: fn = vmath::Fn::Silu; break;
    case UnaryOp::Tanh: fn = vmath::Fn::Tanh; break;
    default: return false;
  }
  const T* xp = static_cast<const T*>(x);
  T* yp = static_cast<T*>(y);
  parallel_for(n, kGrain, [&](int64_t begin, int64_t end) {
    if constexpr (std::is_same_v<T, float>)
      k->map_f32(fn, xp + begin, yp + begin, end - begin);
    else
      k->map_bf16(fn, xp + begin, yp + begin, end - begin);
  });
  return true;
}

template <typename T>
void unary_float(UnaryOp op, const void* x, void* y, int64_t n, float alpha) {
  if (unary_vector<T>(op, x, y, n)) return;
  switch (op) {
    case UnaryOp::Neg: return map_float<T>(x, y, n, [](float v) { return -v; });
    case UnaryOp::Exp: return map_float<T>(x, y, n, [](float v) { return std::exp(v); });
    case UnaryOp::Log: return map_float<T>(x, y, n, [](float v) { return std::log(v); });
    case UnaryOp::Silu: return map_float<T>(x, y, n, [](float v) { return v * sigmoid(v); });
    case UnaryOp::Sigmoid: return map_float<T>(x, y, n, [](float v) { return sigmoid(v); });
    case UnaryOp::Tanh: return map_float<T>(x, y, n, [](float v) { return std::tanh(v); });
    case UnaryOp::Sqrt: return map_float<T>(x, y, n, [](float v) { return std::sqrt(v); });
    case UnaryOp::Rsqrt:
      return map_float<T>(x, y, n, [](float v) { return 1.0f / std::sqrt(v); });
    case UnaryOp::Abs: return map_float<T>(x, y, n, [](float v) { return std::fabs(v); });
    case UnaryOp::Square: return map_float<T>(x, y, n, [](float v) { return v * v; });
    case UnaryOp::Scale: return map_float<T>(x, y, n, [alpha](float v) { return alpha * v; });
    case UnaryOp::AddScalar: return map_float<T>(x, y, n, [alpha](float v) { return v + alpha; });
    case UnaryOp::PowScalar:
      return map_float<T>(x, y, n, [alpha](float v) { return std::pow(v, alpha); });
  }
  fail("ERR_ARG", "unary: unknown op ", static_cast<int>(op));
}

// alpha (integral) modulo 2^32, so that x * alpha and x + alpha wrap like int64 math cast to int32.
uint32_t int_alpha(float alpha) {
  if (!std::isfinite(alpha)) fail("ERR_ARG", "unary: int32 scalar must be finite, got ", alpha);
  const double r = std::fmod(std::trunc(static_cast<double>(alpha)), 4294967296.0);  // exact
  return static_cast<uint32_t>(static_cast<int64_t>(r));
}

void unary_int(UnaryOp op, const void* x, void* y, int64_t n, float alpha) {
  const int32_t* xp = static_cast<const int32_t*>(x);
  int32_t* yp = static_cast<int32_t*>(y);
  switch (op) {
    case UnaryOp::Neg:
      return map_contiguous(xp, yp, n, [](int32_t v) { return wrap(0u - bits(v)); });
    case UnaryOp::Abs:
      return map_contiguous(xp, yp, n, [](int32_t v) { return v < 0 ? wrap(0u - bits(v)) : v; });
    case UnaryOp::Square:
      return map_contiguous(xp, yp, n, [](int32_t v) { return wrap(bits(v) * bits(v)); });
    case UnaryOp::Scale: {
      const uint32_t a = int_alpha(alpha);
      return map_contiguous(xp, yp, n, [a](int32_t v) { return wrap(bits(v) * a); });
    }
    case UnaryOp::AddScalar: {
      const uint32_t a = int_alpha(alpha);
      return map_contiguous(xp, yp, n, [a](int32_t v) { return wrap(bits(v) + a); });
    }
    default:
      fail("ERR_DTYPE", "unary: op ", static_cast<int>(op), " is not supported for int32");
  }
}

template <typename T, typename G>
void random_fill(void* y, int64_t n, G gen) {
  T* yp = static_cast<T*>(y);
  parallel_for(n, kRandomGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) yp[i] = store_f<T>(gen(static_cast<uint64_t>(i)));
  });
}

}  // namespace

void fill(const LaunchCtx& ctx, DType dt, void* y, int64_t n, double value) {
  detail::dispatch_storage(dt, "fill", [&](auto tag) {
    using T = decltype(tag);
    const T v = narrow<T>(value);
    T* yp = static_cast<T*>(y);
    parallel_for(n, kGrain,
                 [&](int64_t begin, int64_t end) { std::fill(yp + begin, yp + end, v); });
  });
}

void arange(const LaunchCtx& ctx, DType dt, void* y, int64_t n, double start, double step) {
  detail::dispatch_storage(dt, "arange", [&](auto tag) {
    using T = decltype(tag);
    T* yp = static_cast<T*>(y);
    parallel_for(n, kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i)
        yp[i] = narrow<T>(start + static_cast<double>(i) * step);
    });
  });
}

void random_uniform(const LaunchCtx& ctx, DType dt, void* y, int64_t n, uint64_t seed, uint64_t offset, float low,
                    float high) {
  detail::dispatch_float(dt, "random_uniform", [&](auto tag) {
    using T = decltype(tag);
    const float range = high - low;
    random_fill<T>(y, n, [=](uint64_t i) { return low + range * philox_uniform(seed, offset, i); });
  });
}

void random_normal(const LaunchCtx& ctx, DType dt, void* y, int64_t n, uint64_t seed, uint64_t offset, float mean,
                   float std) {
  detail::dispatch_float(dt, "random_normal", [&](auto tag) {
    using T = decltype(tag);
    random_fill<T>(y, n, [=](uint64_t i) { return mean + std * philox_normal(seed, offset, i); });
  });
}

void cast(const LaunchCtx& ctx, DType src_dt, const void* x, DType dst_dt, void* y, int64_t n) {
  if (src_dt == dst_dt) {
    const size_t es = dtype_size(src_dt);
    const char* xp = static_cast<const char*>(x);
    char* yp = static_cast<char*>(y);
    parallel_for(n, kGrain, [&](int64_t begin, int64_t end) {
      std::memcpy(yp + begin * es, xp + begin * es, static_cast<size_t>(end - begin) * es);
    });
    return;
  }
  if (const vmath::Kernels* k = vmath::vector_kernels()) {
    if (src_dt == DType::F32 && dst_dt == DType::BF16) {
      const float* xp = static_cast<const float*>(x);
      uint16_t* yp = static_cast<uint16_t*>(y);
      parallel_for(n, kGrain, [&](int64_t begin, int64_t end) {
        k->f32_to_bf16(xp + begin, yp + begin, end - begin);
      });
      return;
    }
    if (src_dt == DType::BF16 && dst_dt == DType::F32) {
      const uint16_t* xp = static_cast<const uint16_t*>(x);
      float* yp = static_cast<float*>(y);
      parallel_for(n, kGrain, [&](int64_t begin, int64_t end) {
        k->bf16_to_f32(xp + begin, yp + begin, end - begin);
      });
      return;
    }
  }
  detail::dispatch_storage(src_dt, "cast", [&](auto src_tag) {
    detail::dispatch_storage(dst_dt, "cast", [&](auto dst_tag) {
      using S = decltype(src_tag);
      using D = decltype(dst_tag);
      map_contiguous(static_cast<const S*>(x), static_cast<D*>(y), n,
                     [](S v) { return narrow<D>(widen(v)); });
    });
  });
}

void unary(const LaunchCtx& ctx, UnaryOp op, DType dt, const void* x, void* y, int64_t n, float alpha) {
  switch (dt) {
    case DType::F32: return unary_float<float>(op, x, y, n, alpha);
    case DType::BF16: return unary_float<uint16_t>(op, x, y, n, alpha);
    case DType::I32: return unary_int(op, x, y, n, alpha);
    default: fail("ERR_DTYPE", "unary: dtype ", dtype_name(dt), " is not supported");
  }
}

void binary(const LaunchCtx& ctx, BinaryOp op, DType dt, const void* a, const StridedView& av, const void* b,
            const StridedView& bv, void* y, int64_t n) {
  if (n <= 0) return;
  if (dt == DType::I32) {
    switch (op) {
      case BinaryOp::Add:
        return binary_int(a, av, b, bv, y, n,
                          [](int32_t p, int32_t q) { return wrap(bits(p) + bits(q)); });
      case BinaryOp::Sub:
        return binary_int(a, av, b, bv, y, n,
                          [](int32_t p, int32_t q) { return wrap(bits(p) - bits(q)); });
      case BinaryOp::Mul:
        return binary_int(a, av, b, bv, y, n,
                          [](int32_t p, int32_t q) { return wrap(bits(p) * bits(q)); });
      case BinaryOp::Div:
        return binary_int(a, av, b, bv, y, n, [](int32_t p, int32_t q) -> int32_t {
          if (q == 0) return 0;
          if (q == -1) return wrap(0u - bits(p));
          return p / q;
        });
      case BinaryOp::Maximum:
        return binary_int(a, av, b, bv, y, n, [](int32_t p, int32_t q) { return std::max(p, q); });
      case BinaryOp::Minimum:
        return binary_int(a, av, b, bv, y, n, [](int32_t p, int32_t q) { return std::min(p, q); });
    }
    fail("ERR_ARG", "binary: unknown op ", static_cast<int>(op));
  }
  detail::dispatch_float(dt, "binary", [&](auto tag) {
    using T = decltype(tag);
    switch (op) {
      case BinaryOp::Add:
        return binary_float<T>(a, av, b, bv, y, n, [](float p, float q) { return p + q; });
      case BinaryOp::Sub:
        return binary_float<T>(a, av, b, bv, y, n, [](float p, float q) { return p - q; });
      case BinaryOp::Mul:
        return binary_float<T>(a, av, b, bv, y, n, [](float p, float q) { return p * q; });
      case BinaryOp::Div:
        return binary_float<T>(a, av, b, bv, y, n, [](float p, float q) { return p / q; });
      case BinaryOp::Maximum:
        return binary_float<T>(a, av, b, bv, y, n,
                               [](float p, float q) { return (p != p || p > q) ? p : q; });
      case BinaryOp::Minimum:
        return binary_float<T>(a, av, b, bv, y, n,
                               [](float p, float q) { return (p != p || p < q) ? p : q; });
    }
    fail("ERR_ARG", "binary: unknown op ", static_cast<int>(op));
  });
}

void where(const LaunchCtx& ctx, const uint8_t* cond, const StridedView& cv, DType dt, const void* a,
           const StridedView& av, const void* b, const StridedView& bv, void* y, int64_t n) {
  if (n <= 0) return;
  const StridedView* views[3] = {&cv, &av, &bv};
  const Coalesced<3> c = detail::coalesce<3>(views);
  const int64_t sc = c.inner_stride(0), sa = c.inner_stride(1), sb = c.inner_stride(2);
  detail::dispatch_bits(dt, "where", [&](auto tag) {
    using T = decltype(tag);
    const T* ap = static_cast<const T*>(a);
    const T* bp = static_cast<const T*>(b);
    T* yp = static_cast<T*>(y);
    parallel_for(n, kGrain, [&](int64_t begin, int64_t end) {
      for_each_run(c, begin, end, [&](int64_t pos, const int64_t* off, int64_t len) {
        const uint8_t* cr = cond + off[0];
        const T* ar = ap + off[1];
        const T* br = bp + off[2];
        T* yr = yp + pos;
        if (sc == 1 && sa == 1 && sb == 1) {
          for (int64_t t = 0; t < len; ++t) yr[t] = cr[t] ? ar[t] : br[t];
        } else {
          for (int64_t t = 0; t < len; ++t) yr[t] = cr[t * sc] ? ar[t * sa] : br[t * sb];
        }
      });
    });
  });
}

}  // namespace moma::cpu
