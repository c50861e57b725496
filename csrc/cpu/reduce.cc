// Reductions and softmax over the middle axis of a contiguous [outer, n, inner] tensor.
// Work is cut into units of (outer row, block of inner columns); a unit walks j = 0..n-1 keeping
// one accumulator per column, so for inner > 1 the column loop is contiguous and vectorisable, and
// for inner == 1 a unit is one contiguous row. Units are spread with parallel_for (grain ~32768
// elements). reduce: blocks of up to 256 columns; when there are few units (< 64) and n is long,
// j is also split into fixed ranges whose partial accumulators are combined in increasing j
// afterwards. The split depends only on the shape, so results never depend on the thread count.
// softmax: one row per unit for inner == 1, else blocks of columns sized so that the float exp
// scratch of a unit (n x columns) stays around 16K elements.
// SIMD: when the CPU has AVX-512 or AVX2 (vmath.h, chosen once), float Sum / Mean of contiguous
// rows (inner == 1) add in double vector lanes, softmax rows run max / exp / sum / scale as vector
// loops, and the column-blocked softmax takes its exp per row of columns from the vector exp.
// The lane order depends only on n, so results stay independent of the thread count.
// Numerics: float Sum / Mean accumulate in double (Mean = sum / n) and round once to the output
// dtype (bf16 through float32); int32 Sum wraps modulo 2^32. Max propagates NaN. Argmax returns
// the first index of the maximum, NaN counting as the maximum (the first NaN wins). Softmax
// subtracts the max (NaN-propagating), takes exp in float, sums in double and divides in double
// (the SIMD row path multiplies by 1 / sum in double instead, within half an ulp more of float);
// log-softmax is x - max - log(sum) in double. bf16 is widened exactly and rounded once on store.
// The SIMD exp is within 1 ulp of the correctly rounded float (vmath.h).
#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "kernels.h"
#include "strided_iter.h"
#include "thread_pool.h"
#include "vmath.h"

namespace moma::cpu {
namespace {

using detail::load_f;
using detail::store_f;

constexpr int64_t kBlock = 256;        // inner columns per unit
constexpr int64_t kGrain = 32768;      // elements per parallel_for grain
constexpr int64_t kFewUnits = 64;      // below this many units, long rows are split along j
constexpr int64_t kChunkWork = 65536;  // elements per unit when rows are split
constexpr int64_t kSoftmaxTile = 16384;  // n * columns per softmax unit (its exp scratch)

// Reduction policies. first(v, j) starts an accumulator at element j, step(acc, v, j) folds in a
// later element j, merge(acc, later) folds in the accumulator of a later j-range, finish(acc) is
// the output value.

template <typename T>
struct SumF {
  using In = T;
  using Out = T;
  using Acc = double;
  double divisor;  // 1 for Sum, n for Mean
  Acc first(T v, int64_t) const { return load_f(v); }
  void step(Acc& a, T v, int64_t) const { a += load_f(v); }
  void merge(Acc& a, Acc b) const { a += b; }
  Out finish(Acc a) const { return store_f<T>(static_cast<float>(a / divisor)); }
};

struct SumI {
  using In = int32_t;
  using Out = int32_t;
  using Acc = uint32_t;
  Acc first(int32_t v, int64_t) const { return static_cast<uint32_t>(v); }
  void step(Acc& a, int32_t v, int64_t) const { a += static_cast<uint32_t>(v); }
  void merge(Acc& a, Acc b) const { a += b; }
  Out finish(Acc a) const { return static_cast<int32_t>(a); }
};

inline float max_nan(float a, float v) { return (a != a || v <= a) ? a : v; }

template <typename T>
struct MaxF {
  using In = T;
  using Out = T;
  using Acc = float;
  Acc first(T v, int64_t) const { return load_f(v); }
  void step(Acc& a, T v, int64_t) const { a = max_nan(a, load_f(v)); }
  void merge(Acc& a, Acc b) const { a = max_nan(a, b); }
  Out finish(Acc a) const { return store_f<T>(a); }
};

struct MaxI {
  using In = int32_t;
  using Out = int32_t;
  using Acc = int32_t;
  Acc first(int32_t v, int64_t) const { return v; }
  void step(Acc& a, int32_t v, int64_t) const { a = std::max(a, v); }
  void merge(Acc& a, Acc b) const { a = std::max(a, b); }
  Out finish(Acc a) const { return a; }
};

template <typename V>
struct ArgAcc {
  V v;
  int32_t i;
};

// Replace the current best only by something strictly better, so the first maximum wins; a NaN
// beats any number and is never replaced.
template <typename V>
inline bool beats(V cand, V best) {
  return best == best && (cand != cand || cand > best);
}

template <typename T>
struct ArgmaxF {
  using In = T;
  using Out = int32_t;
  using Acc = ArgAcc<float>;
  Acc first(T v, int64_t j) const { return {load_f(v), static_cast<int32_t>(j)}; }
  void step(Acc& a, T v, int64_t j) const {
    const float f = load_f(v);
    if (beats(f, a.v)) a = {f, static_cast<int32_t>(j)};
  }
  void merge(Acc& a, Acc b) const {
    if (beats(b.v, a.v)) a = b;
  }
  Out finish(Acc a) const { return a.i; }
};

struct ArgmaxI {
  using In = int32_t;
  using Out = int32_t;
  using Acc = ArgAcc<int32_t>;
  Acc first(int32_t v, int64_t j) const { return {v, static_cast<int32_t>(j)}; }
  void step(Acc& a, int32_t v, int64_t j) const {
    if (v > a.v) a = {v, static_cast<int32_t>(j)};
  }
  void merge(Acc& a, Acc b) const {
    if (b.v > a.v) a = b;
  }
  Out finish(Acc a) const { return a.i; }
};

// Accumulates rows j0 <= j < j1 (j1 > j0) of columns i0 .. i0+len-1 of outer row o into acc[].
template <typename P>
void scan(const P& p, const typename P::In* x, int64_t n, int64_t inner, int64_t o, int64_t i0,
          int64_t len, int64_t j0, int64_t j1, typename P::Acc* acc) {
  const typename P::In* base = x + o * n * inner + i0;
  if constexpr (std::is_same_v<P, SumF<float>> || std::is_same_v<P, SumF<uint16_t>>) {
    if (inner == 1) {
      if (const vmath::Kernels* k = vmath::vector_kernels()) {
        if constexpr (std::is_same_v<P, SumF<float>>)
          acc[0] = k->sum_f32(base + j0, j1 - j0);
        else
          acc[0] = k->sum_bf16(base + j0, j1 - j0);
        return;
      }
    }
  }
  if (len == 1) {
    typename P::Acc a = p.first(base[j0 * inner], j0);
    for (int64_t j = j0 + 1; j < j1; ++j) p.step(a, base[j * inner], j);
    acc[0] = a;
    return;
  }
  for (int64_t t = 0; t < len; ++t) acc[t] = p.first(base[j0 * inner + t], j0);
  for (int64_t j = j0 + 1; j < j1; ++j) {
    const typename P::In* row = base + j * inner;
    for (int64_t t = 0; t < len; ++t) p.step(acc[t], row[t], j);
  }
}

template <typename P>
void reduce_run(const P& p, const void* xv, void* yv, int64_t outer, int64_t n, int64_t inner) {
  using Acc = typename P::Acc;
  const typename P::In* x = static_cast<const typename P::In*>(xv);
  typename P::Out* y = static_cast<typename P::Out*>(yv);
  const int64_t ib = std::min(inner, kBlock);
  const int64_t nib = (inner + ib - 1) / ib;
  const int64_t units = outer * nib;
  int64_t nj = 1;
  if (units < kFewUnits) nj = std::clamp<int64_t>(n * ib / kChunkWork, 1, n);
  const int64_t jc = (n + nj - 1) / nj;
  nj = (n + jc - 1) / jc;
  const int64_t grain = std::max<int64_t>(1, kGrain / (jc * ib));

  if (nj == 1) {
    parallel_for(units, grain, [&](int64_t begin, int64_t end) {
      Acc acc[kBlock];
      for (int64_t u = begin; u < end; ++u) {
        const int64_t o = u / nib, i0 = (u % nib) * ib, len = std::min(ib, inner - i0);
        scan(p, x, n, inner, o, i0, len, 0, n, acc);
        for (int64_t t = 0; t < len; ++t) y[o * inner + i0 + t] = p.finish(acc[t]);
      }
    });
    return;
  }

  // part[o][c][i]: accumulator of j-range c for output (o, i).
  std::vector<Acc> part(static_cast<size_t>(outer * nj * inner));
  parallel_for(units * nj, grain, [&](int64_t begin, int64_t end) {
    for (int64_t u = begin; u < end; ++u) {
      const int64_t c = u % nj, rest = u / nj;
      const int64_t o = rest / nib, i0 = (rest % nib) * ib, len = std::min(ib, inner - i0);
      const int64_t j0 = c * jc, j1 = std::min(n, j0 + jc);
      Acc* out = &part[static_cast<size_t>((o * nj + c) * inner + i0)];
      scan(p, x, n, inner, o, i0, len, j0, j1, out);
    }
  });
  parallel_for(outer * inner, std::max<int64_t>(1, kGrain / nj), [&](int64_t begin, int64_t end) {
    for (int64_t q = begin; q < end; ++q) {
      const int64_t o = q / inner, i = q % inner;
      const Acc* pc = &part[static_cast<size_t>(o * nj * inner + i)];
      Acc a = pc[0];
      for (int64_t c = 1; c < nj; ++c) p.merge(a, pc[c * inner]);
      y[q] = p.finish(a);
    }
  });
}

template <typename T>
void reduce_float(ReduceOp op, const void* x, void* y, int64_t outer, int64_t n, int64_t inner) {
  switch (op) {
    case ReduceOp::Sum: return reduce_run(SumF<T>{1.0}, x, y, outer, n, inner);
    case ReduceOp::Mean:
      return reduce_run(SumF<T>{static_cast<double>(n)}, x, y, outer, n, inner);
    case ReduceOp::Max: return reduce_run(MaxF<T>{}, x, y, outer, n, inner);
    case ReduceOp::Argmax: return reduce_run(ArgmaxF<T>{}, x, y, outer, n, inner);
  }
  fail("ERR_ARG", "reduce: unknown op ", static_cast<int>(op));
}

void reduce_int(ReduceOp op, const void* x, void* y, int64_t outer, int64_t n, int64_t inner) {
  switch (op) {
    case ReduceOp::Sum: return reduce_run(SumI{}, x, y, outer, n, inner);
    case ReduceOp::Max: return reduce_run(MaxI{}, x, y, outer, n, inner);
    case ReduceOp::Argmax: return reduce_run(ArgmaxI{}, x, y, outer, n, inner);
    case ReduceOp::Mean: fail("ERR_DTYPE", "reduce: mean of int32 is not supported");
  }
  fail("ERR_ARG", "reduce: unknown op ", static_cast<int>(op));
}

// One contiguous row (inner == 1); ex is scratch for n floats.
template <typename T>
void softmax_row(bool log, const T* x, T* y, int64_t n, float* ex) {
  float mx = load_f(x[0]);
  bool nan = false;
  for (int64_t j = 1; j < n; ++j) {  // max and NaN flag kept apart so that this vectorises
    const float v = load_f(x[j]);
    mx = v > mx ? v : mx;
    nan |= v != v;
  }
  if (nan) mx = std::numeric_limits<float>::quiet_NaN();
  double sum = 0.0;
  for (int64_t j = 0; j < n; ++j) {
    ex[j] = std::exp(load_f(x[j]) - mx);
    sum += ex[j];
  }
  if (log) {
    const double lse = std::log(sum);
    for (int64_t j = 0; j < n; ++j)
      y[j] = store_f<T>(static_cast<float>(static_cast<double>(load_f(x[j])) - mx - lse));
  } else {
    for (int64_t j = 0; j < n; ++j) y[j] = store_f<T>(static_cast<float>(ex[j] / sum));
  }
}

// softmax_row through the SIMD table: the same steps, with the sum in double lanes and the
// division done as a multiplication by 1 / sum in double. bf16 rows are widened into ex first.
template <typename T>
void softmax_row_vector(const vmath::Kernels& k, bool log, const T* x, T* y, int64_t n,
                        float* ex) {
  const float* xf;
  float* out;
  if constexpr (std::is_same_v<T, float>) {
    xf = x;
    out = y;
  } else {
    k.bf16_to_f32(x, ex, n);
    xf = ex;
    out = ex;
  }
  const float mx = k.max_f32(xf, n);
  if (log) {
    const double sum = k.exp_shift_sum(xf, mx, nullptr, n);
    k.sub2_f32(xf, mx, std::log(sum), out, n);
  } else {
    const double sum = k.exp_shift_sum(xf, mx, ex, n);
    k.scale_f32(ex, 1.0 / sum, out, n);
  }
  if constexpr (!std::is_same_v<T, float>) k.f32_to_bf16(ex, y, n);
}

template <typename T>
void softmax_run(bool log, const T* x, T* y, int64_t outer, int64_t n, int64_t inner) {
  const vmath::Kernels* k = vmath::vector_kernels();
  if (inner == 1) {
    parallel_for(outer, std::max<int64_t>(1, kGrain / n), [&](int64_t begin, int64_t end) {
      std::vector<float> ex(static_cast<size_t>(n));
      for (int64_t o = begin; o < end; ++o) {
        if (k)
          softmax_row_vector(*k, log, x + o * n, y + o * n, n, ex.data());
        else
          softmax_row(log, x + o * n, y + o * n, n, ex.data());
      }
    });
    return;
  }
  const int64_t ib = std::clamp<int64_t>(kSoftmaxTile / n, 1, std::min(inner, kBlock));
  const int64_t nib = (inner + ib - 1) / ib;
  const int64_t grain = std::max<int64_t>(1, kGrain / (n * ib));
  parallel_for(outer * nib, grain, [&](int64_t begin, int64_t end) {
    // exp(x - max), [n][len]; for log-softmax one row of it, used by the SIMD exp only
    std::vector<float> ex(static_cast<size_t>(log ? ib : n * ib));
    float mx[kBlock];
    double sum[kBlock];
    for (int64_t u = begin; u < end; ++u) {
      const int64_t o = u / nib, i0 = (u % nib) * ib, len = std::min(ib, inner - i0);
      const T* xb = x + o * n * inner + i0;
      T* yb = y + o * n * inner + i0;
      for (int64_t t = 0; t < len; ++t) mx[t] = load_f(xb[t]);
      for (int64_t j = 1; j < n; ++j) {
        const T* row = xb + j * inner;
        for (int64_t t = 0; t < len; ++t) mx[t] = max_nan(mx[t], load_f(row[t]));
      }
      for (int64_t t = 0; t < len; ++t) sum[t] = 0.0;
      for (int64_t j = 0; j < n; ++j) {
        const T* row = xb + j * inner;
        if (k) {
          float* er = ex.data() + (log ? 0 : j * len);
          for (int64_t t = 0; t < len; ++t) er[t] = load_f(row[t]) - mx[t];
          k->map_f32(vmath::Fn::Exp, er, er, len);
          for (int64_t t = 0; t < len; ++t) sum[t] += er[t];
          continue;
        }
        for (int64_t t = 0; t < len; ++t) {
          const float e = std::exp(load_f(row[t]) - mx[t]);
          sum[t] += e;
          if (!log) ex[static_cast<size_t>(j * len + t)] = e;
        }
      }
      if (log) {
        double lse[kBlock];
        for (int64_t t = 0; t < len; ++t) lse[t] = std::log(sum[t]);
        for (int64_t j = 0; j < n; ++j) {
          const T* row = xb + j * inner;
          T* out = yb + j * inner;
          for (int64_t t = 0; t < len; ++t) {
            const double v = static_cast<double>(load_f(row[t])) - mx[t] - lse[t];
            out[t] = store_f<T>(static_cast<float>(v));
          }
        }
      } else {
        for (int64_t j = 0; j < n; ++j) {
          T* out = yb + j * inner;
          for (int64_t t = 0; t < len; ++t) {
            const double v = ex[static_cast<size_t>(j * len + t)] / sum[t];
            out[t] = store_f<T>(static_cast<float>(v));
          }
        }
      }
    }
  });
}

}  // namespace

void reduce(const LaunchCtx& ctx, ReduceOp op, DType dt, const void* x, void* y, int64_t outer, int64_t n,
            int64_t inner) {
  if (outer <= 0 || inner <= 0) return;
  if (n <= 0) fail("ERR_ARG", "reduce: the reduced axis is empty");
  switch (dt) {
    case DType::F32: return reduce_float<float>(op, x, y, outer, n, inner);
    case DType::BF16: return reduce_float<uint16_t>(op, x, y, outer, n, inner);
    case DType::I32: return reduce_int(op, x, y, outer, n, inner);
    default: fail("ERR_DTYPE", "reduce: dtype ", dtype_name(dt), " is not supported");
  }
}

void softmax(const LaunchCtx& ctx, bool log, DType dt, const void* x, void* y, int64_t outer, int64_t n,
             int64_t inner) {
  if (outer <= 0 || n <= 0 || inner <= 0) return;
  detail::dispatch_float(dt, "softmax", [&](auto tag) {
    using T = decltype(tag);
    softmax_run(log, static_cast<const T*>(x), static_cast<T*>(y), outer, n, inner);
  });
}

}  // namespace moma::cpu
