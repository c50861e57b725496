// moma_native_test: checks every CUDA kernel (cuda/kernels.h) against its CPU twin
// (csrc/cpu/kernels.h) on random inputs of awkward sizes, plus the CUDA runtime (allocator, copies,
// error word). Outputs are poisoned (all bytes 0xFF: NaN for floats, -1 / 255 for ints) before each
// kernel so that unwritten elements fail. Tolerances: exact for integer ops, layout ops, casts and
// random bits; rel 1e-5 for float32 element-wise math; 1e-4 (relative to sum |x|) for float32
// reductions; one bf16 ulp for bf16 results that are rounded from float math; GEMM: relative
// Frobenius error < 1e-2 against the CPU float32 GEMM run on bf16-rounded inputs.
// Without a CUDA device it runs a few CPU kernels against double references and skips the CUDA
// cases. Plain C++: only runtime.h / kernels.h, no CUDA headers. Exit status 1 on any failure.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <algorithm>
#include <functional>
#include <memory>
#include <random>
#include <type_traits>
#include <string>
#include <vector>

#include "../../csrc/core/bf16.h"
#include "../../csrc/core/error.h"
#include "../../csrc/core/philox.h"
#include "../../csrc/core/moe_types.h"
#include "../../csrc/cpu/kernels.h"
#include "../../csrc/cpu/kernels_moe.h"
#include "../../cuda/kernels.h"
#include "../../cuda/kernels_moe.h"
#include "../../cuda/runtime.h"
#include "../../csrc/ops/moe.h"

using namespace moma;

namespace {

int g_passed = 0, g_failed = 0, g_skipped = 0;
std::string g_case;

void pass() { ++g_passed; }
void failure(const std::string& msg) {
  ++g_failed;
  std::printf("FAIL %s: %s\n", g_case.c_str(), msg.c_str());
}
void expect(bool ok, const std::string& msg) { ok ? pass() : failure(msg); }

std::mt19937_64 g_rng(20240611);

std::vector<float> rand_f(size_t n, float lo = -2.0f, float hi = 2.0f) {
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = d(g_rng);
  return v;
}
std::vector<int32_t> rand_i(size_t n, int32_t lo, int32_t hi) {
  std::uniform_int_distribution<int32_t> d(lo, hi);
  std::vector<int32_t> v(n);
  for (auto& x : v) x = d(g_rng);
  return v;
}

// Host buffer holding n elements of dtype dt, filled from floats (rounded per dtype).
std::vector<uint8_t> make(DType dt, const std::vector<float>& f) {
  std::vector<uint8_t> b(f.size() * dtype_size(dt));
  for (size_t i = 0; i < f.size(); ++i) {
    switch (dt) {
      case DType::F32: std::memcpy(&b[i * 4], &f[i], 4); break;
      case DType::BF16: { uint16_t h = f32_to_bf16(f[i]); std::memcpy(&b[i * 2], &h, 2); break; }
      case DType::I32: { int32_t v = static_cast<int32_t>(std::lround(f[i])); std::memcpy(&b[i * 4], &v, 4); break; }
      case DType::U8: { float c = std::fmin(std::fmax(f[i], 0.0f), 255.0f); b[i] = static_cast<uint8_t>(c); break; }
    }
  }
  return b;
}
double elem(DType dt, const std::vector<uint8_t>& b, size_t i) {
  switch (dt) {
    case DType::F32: { float v; std::memcpy(&v, &b[i * 4], 4); return v; }
    case DType::BF16: { uint16_t h; std::memcpy(&h, &b[i * 2], 2); return bf16_to_f32(h); }
    case DType::I32: { int32_t v; std::memcpy(&v, &b[i * 4], 4); return v; }
    case DType::U8: return b[i];
  }
  return 0;
}

enum class Tol { Exact, F32Elem, Bf16Ulp, Reduce };

// Compares n elements of dtype dt. `scale` (per element, optional) is the magnitude used for the
// reduction tolerance (sum |x|).
void compare(DType dt, const std::vector<uint8_t>& got, const std::vector<uint8_t>& want, size_t n, Tol tol,
             const std::vector<double>* scale = nullptr) {
  size_t bad = 0, first = 0;
  double gv0 = 0, wv0 = 0;
  for (size_t i = 0; i < n; ++i) {
    bool ok;
    if (tol == Tol::Exact || !dtype_is_float(dt)) {
      size_t es = dtype_size(dt);
      ok = std::memcmp(&got[i * es], &want[i * es], es) == 0;
      if (!ok && dtype_is_float(dt)) {  // any NaN equals any NaN
        double g = elem(dt, got, i), w = elem(dt, want, i);
        ok = std::isnan(g) && std::isnan(w);
      }
    } else {
      double g = elem(dt, got, i), w = elem(dt, want, i);
      if (std::isnan(w) || std::isnan(g)) ok = std::isnan(w) && std::isnan(g);
      else if (std::isinf(w) || std::isinf(g)) ok = g == w;
      else {
        double d = std::fabs(g - w);
        double lim;
        if (dt == DType::BF16) lim = std::ldexp(std::fabs(w), -7) + 1e-30;  // ~1 bf16 ulp
        else if (tol == Tol::Reduce) lim = 1e-4 * (scale ? (*scale)[i] : std::fabs(w)) + 1e-6;
        else lim = 1e-5 * std::fabs(w) + 1e-6;
        if (dt == DType::BF16 && tol == Tol::Reduce && scale) lim = std::fmax(lim, 1e-4 * (*scale)[i]);
        ok = d <= lim;
      }
    }
    if (!ok) {
      if (bad == 0) { first = i; gv0 = elem(dt, got, i); wv0 = elem(dt, want, i); }
      ++bad;
    }
  }
  if (bad) {
    char buf[256];
    std::snprintf(buf, sizeof buf, "%zu of %zu elements differ (first at %zu: got %.9g want %.9g)", bad, n, first,
                  gv0, wv0);
    failure(buf);
  } else {
    pass();
  }
}

// ---- device helpers ----------------------------------------------------------------------
struct Dev {
  void* p = nullptr;
  size_t bytes = 0;
  explicit Dev(size_t b) : p(cuda::alloc(0, b)), bytes(b) {}
  Dev(const void* host, size_t b) : Dev(b) { cuda::copy_h2d(0, p, host, b); }
  explicit Dev(const std::vector<uint8_t>& h) : Dev(h.data(), h.size()) {}
  ~Dev() { cuda::release(0, p); }
  Dev(const Dev&) = delete;
  Dev& operator=(const Dev&) = delete;
  void poison() {
    std::vector<uint8_t> ff(bytes, 0xFF);
    cuda::copy_h2d(0, p, ff.data(), bytes);
  }
  std::vector<uint8_t> get() {
    cuda::synchronize(0, g_case.c_str());
    std::vector<uint8_t> h(bytes);
    cuda::copy_d2h(0, h.data(), p, bytes);
    return h;
  }
};
void* S() { return cuda::stream(0); }

const DType kAll[] = {DType::F32, DType::BF16, DType::I32, DType::U8};
const DType kFloat[] = {DType::F32, DType::BF16};
const int64_t kSizes[] = {1, 7, 1000, 33333};

StridedView contiguous_view(const std::vector<int64_t>& shape) {
  StridedView v;
  v.ndim = static_cast<int32_t>(shape.size());
  int64_t st = 1;
  for (int k = v.ndim - 1; k >= 0; --k) {
    v.shape[k] = shape[k];
    v.strides[k] = st;
    st *= shape[k];
  }
  return v;
}

// ---- CUDA cases --------------------------------------------------------------------------
struct Case {
  std::string name;
  std::function<void()> fn;
};
std::vector<Case> g_cuda_cases;
void add(const std::string& name, std::function<void()> fn) { g_cuda_cases.push_back({name, std::move(fn)}); }

void add_creation_cases() {
  for (DType dt : kAll)
    for (int64_t n : kSizes)
      for (double v : {3.7, -1e10, 1e10, -0.5, 300.25}) {
        add(std::string("fill ") + dtype_name(dt) + " n=" + std::to_string(n) + " v=" + std::to_string(v), [=] {
          Dev y(n * dtype_size(dt));
          y.poison();
          cuda::fill(S(), dt, y.p, n, v);
          std::vector<uint8_t> want(y.bytes);
          cpu::fill(dt, want.data(), n, v);
          compare(dt, y.get(), want, n, Tol::Exact);
        });
      }
  for (DType dt : kAll)
    for (int64_t n : kSizes)
      add(std::string("arange ") + dtype_name(dt) + " n=" + std::to_string(n), [=] {
        double start = dt == DType::U8 ? 0.0 : -3.5, step = dt == DType::U8 ? 0.007 : 0.37;
        Dev y(n * dtype_size(dt));
        y.poison();
        cuda::arange(S(), dt, y.p, n, start, step);
        std::vector<uint8_t> want(y.bytes);
        cpu::arange(dt, want.data(), n, start, step);
        compare(dt, y.get(), want, n, Tol::Exact);
      });
  for (DType dt : kFloat)
    for (int64_t n : kSizes)
      for (uint64_t off : {0ull, 5ull, (1ull << 32) + 3}) {
        add(std::string("random_uniform ") + dtype_name(dt) + " n=" + std::to_string(n) + " off=" + std::to_string(off), [=] {
          Dev y(n * dtype_size(dt));
          y.poison();
          cuda::random_uniform(S(), dt, y.p, n, 0x1234567890abcdefull, off, -1.5f, 2.25f);
          std::vector<uint8_t> want(y.bytes);
          cpu::random_uniform(dt, want.data(), n, 0x1234567890abcdefull, off, -1.5f, 2.25f);
          compare(dt, y.get(), want, n, Tol::Exact);
        });
        add(std::string("random_normal ") + dtype_name(dt) + " n=" + std::to_string(n) + " off=" + std::to_string(off), [=] {
          Dev y(n * dtype_size(dt));
          y.poison();
          cuda::random_normal(S(), dt, y.p, n, 42, off, 0.5f, 2.0f);
          std::vector<uint8_t> want(y.bytes);
          cpu::random_normal(dt, want.data(), n, 42, off, 0.5f, 2.0f);
          // Box-Muller in double: device log/cos may differ from libm in the last double bits,
          // which can flip a float / bf16 rounding very rarely: allow that, nothing more.
          compare(dt, y.get(), want, n, dt == DType::F32 ? Tol::F32Elem : Tol::Bf16Ulp);
        });
      }
}

void add_cast_cases() {
  for (DType s : kAll)
    for (DType d : kAll)
      add(std::string("cast ") + dtype_name(s) + "->" + dtype_name(d), [=] {
        const int64_t n = 33333;
        std::vector<float> f = rand_f(n, -400.0f, 400.0f);
        const float specials[] = {NAN, INFINITY, -INFINITY, 3e9f, -3e9f, 2147483520.0f, -2147483648.0f, 255.5f,
                                  -0.7f, 0.99f, 1e-40f, 65504.0f, 3.3895314e38f, -0.0f};
        if (dtype_is_float(s))
          for (size_t i = 0; i < sizeof(specials) / sizeof(float); ++i) f[i * 37] = specials[i];
        std::vector<uint8_t> x = make(s, f);
        if (s == DType::I32) {
          std::vector<int32_t> iv = rand_i(n, INT32_MIN, INT32_MAX);
          for (int64_t i = 0; i < n; i += 3) std::memcpy(&x[i * 4], &iv[i], 4);
        }
        Dev dx(x);
        Dev y(n * dtype_size(d));
        y.poison();
        cuda::cast(S(), s, dx.p, d, y.p, n);
        std::vector<uint8_t> want(y.bytes);
        cpu::cast(s, x.data(), d, want.data(), n);
        compare(d, y.get(), want, n, Tol::Exact);
      });
}

void add_layout_cases() {
  for (DType dt : kAll) {
    add(std::string("strided_copy permute ") + dtype_name(dt), [=] {
      // x [7, 33, 5] read as permute(2, 0, 1) -> [5, 7, 33]
      std::vector<uint8_t> x = make(dt, rand_f(7 * 33 * 5, -100, 100));
      StridedView v;
      v.ndim = 3;
      v.shape[0] = 5; v.strides[0] = 1;
      v.shape[1] = 7; v.strides[1] = 33 * 5;
      v.shape[2] = 33; v.strides[2] = 5;
      const int64_t n = 5 * 7 * 33;
      Dev dx(x), y(n * dtype_size(dt));
      y.poison();
      cuda::strided_copy(S(), dt, dx.p, v, y.p, n);
      std::vector<uint8_t> want(y.bytes);
      cpu::strided_copy(dt, x.data(), v, want.data(), n);
      compare(dt, y.get(), want, n, Tol::Exact);
    });
    add(std::string("strided_copy slice+broadcast ") + dtype_name(dt), [=] {
      // x [40, 1000]; view = x[3:36, 1:1000:3] broadcast to [2, 33, 1, 333] (stride 0 outer dims)
      std::vector<uint8_t> x = make(dt, rand_f(40 * 1000, -100, 100));
      StridedView v;
      v.ndim = 4;
      v.offset = 3 * 1000 + 1;
      v.shape[0] = 2; v.strides[0] = 0;
      v.shape[1] = 33; v.strides[1] = 1000;
      v.shape[2] = 1; v.strides[2] = 0;
      v.shape[3] = 333; v.strides[3] = 3;
      const int64_t n = 2 * 33 * 333;
      Dev dx(x), y(n * dtype_size(dt));
      y.poison();
      cuda::strided_copy(S(), dt, dx.p, v, y.p, n);
      std::vector<uint8_t> want(y.bytes);
      cpu::strided_copy(dt, x.data(), v, want.data(), n);
      compare(dt, y.get(), want, n, Tol::Exact);
    });
  }
  add("copy_2d pitched rows (concat piece)", [=] {
    // 37 rows of 129 bytes from a 131-byte pitch into columns [11, 140) of a 257-byte pitch.
    std::vector<uint8_t> x = make(DType::U8, rand_f(37 * 131, 0, 255));
    std::vector<uint8_t> canvas = make(DType::U8, rand_f(37 * 257, 0, 255));
    Dev dx(x), y(canvas);
    cuda::copy_2d(S(), dx.p, 131, static_cast<char*>(y.p) + 11, 257, 37, 129);
    std::vector<uint8_t> want = canvas;
    cpu::copy_2d(x.data(), 131, want.data() + 11, 257, 37, 129);
    compare(DType::U8, y.get(), want, want.size(), Tol::Exact);
  });
}

void add_elementwise_cases() {
  const UnaryOp fops[] = {UnaryOp::Neg, UnaryOp::Exp, UnaryOp::Log, UnaryOp::Silu, UnaryOp::Sigmoid,
                          UnaryOp::Tanh, UnaryOp::Sqrt, UnaryOp::Rsqrt, UnaryOp::Abs, UnaryOp::Square,
                          UnaryOp::Scale, UnaryOp::AddScalar, UnaryOp::PowScalar};
  for (DType dt : kFloat)
    for (UnaryOp op : fops)
      for (int64_t n : {int64_t(7), int64_t(33333)})
        add(std::string("unary ") + std::to_string(static_cast<int>(op)) + " " + dtype_name(dt) + " n=" + std::to_string(n), [=] {
          bool pos = op == UnaryOp::Log || op == UnaryOp::Sqrt || op == UnaryOp::Rsqrt || op == UnaryOp::PowScalar;
          std::vector<uint8_t> x = make(dt, pos ? rand_f(n, 0.01f, 10.0f) : rand_f(n, -12.0f, 12.0f));
          float alpha = op == UnaryOp::PowScalar ? 1.7f : -0.37f;
          Dev dx(x), y(x.size());
          y.poison();
          cuda::unary(S(), op, dt, dx.p, y.p, n, alpha);
          std::vector<uint8_t> want(x.size());
          cpu::unary(op, dt, x.data(), want.data(), n, alpha);
          compare(dt, y.get(), want, n, dt == DType::F32 ? Tol::F32Elem : Tol::Bf16Ulp);
        });
  for (UnaryOp op : {UnaryOp::Neg, UnaryOp::Abs, UnaryOp::Square, UnaryOp::Scale, UnaryOp::AddScalar})
    add(std::string("unary int32 ") + std::to_string(static_cast<int>(op)), [=] {
      const int64_t n = 33333;
      std::vector<int32_t> xi = rand_i(n, INT32_MIN, INT32_MAX);
      xi[0] = INT32_MIN;
      float alpha = 5e9f;  // integral, beyond int32: wraps modulo 2^32
      Dev dx(xi.data(), n * 4), y(n * 4);
      y.poison();
      cuda::unary(S(), op, DType::I32, dx.p, y.p, n, alpha);
      std::vector<uint8_t> want(n * 4);
      cpu::unary(op, DType::I32, xi.data(), want.data(), n, alpha);
      compare(DType::I32, y.get(), want, n, Tol::Exact);
    });
  const BinaryOp bops[] = {BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div, BinaryOp::Maximum, BinaryOp::Minimum};
  for (DType dt : {DType::F32, DType::BF16, DType::I32})
    for (BinaryOp op : bops)
      for (int bc = 0; bc < 2; ++bc)
        add(std::string("binary ") + std::to_string(static_cast<int>(op)) + " " + dtype_name(dt) + (bc ? " broadcast" : " contiguous"), [=] {
          // out [33, 5, 7]; broadcast: a [33, 1, 7], b [5, 7]
          std::vector<int64_t> shape = {33, 5, 7};
          const int64_t n = 33 * 5 * 7;
          int64_t na = bc ? 33 * 7 : n, nb = bc ? 5 * 7 : n;
          std::vector<float> fa = rand_f(na, -50, 50), fb = rand_f(nb, -50, 50);
          if (dt != DType::I32) { fa[1] = NAN; fb[2] = NAN; fb[3] = 0.0f; }
          else { fb[3] = 0.0f; fb[4] = -1.0f; }
          std::vector<uint8_t> a = make(dt, fa), b = make(dt, fb);
          if (dt == DType::I32) { int32_t m = INT32_MIN; std::memcpy(&a[0], &m, 4); }
          StridedView av = contiguous_view(shape), bv = contiguous_view(shape);
          if (bc) {
            av.strides[0] = 7; av.strides[1] = 0; av.strides[2] = 1;
            bv.strides[0] = 0; bv.strides[1] = 7; bv.strides[2] = 1;
          }
          Dev da(a), db(b), y(n * dtype_size(dt));
          y.poison();
          cuda::binary(S(), op, dt, da.p, av, db.p, bv, y.p, n);
          std::vector<uint8_t> want(y.bytes);
          cpu::binary(op, dt, a.data(), av, b.data(), bv, want.data(), n);
          compare(dt, y.get(), want, n, Tol::Exact);
        });
  for (DType dt : kAll)
    add(std::string("where ") + dtype_name(dt), [=] {
      std::vector<int64_t> shape = {33, 5, 7};
      const int64_t n = 33 * 5 * 7;
      std::vector<uint8_t> c(5 * 7);
      for (auto& v : c) v = static_cast<uint8_t>(g_rng() % 3);  // 0, 1, 2 (nonzero = true)
      std::vector<uint8_t> a = make(dt, rand_f(n, 0, 100)), b = make(dt, rand_f(33, 0, 100));
      StridedView cv = contiguous_view(shape), av = contiguous_view(shape), bv = contiguous_view(shape);
      cv.strides[0] = 0; cv.strides[1] = 7; cv.strides[2] = 1;
      bv.strides[0] = 1; bv.strides[1] = 0; bv.strides[2] = 0;
      Dev dc(c), da(a), db(b), y(n * dtype_size(dt));
      y.poison();
      cuda::where(S(), static_cast<const uint8_t*>(dc.p), cv, dt, da.p, av, db.p, bv, y.p, n);
      std::vector<uint8_t> want(y.bytes);
      cpu::where(c.data(), cv, dt, a.data(), av, b.data(), bv, want.data(), n);
      compare(dt, y.get(), want, n, Tol::Exact);
    });
}

struct Shape3 { int64_t outer, n, inner; };
const Shape3 kReduceShapes[] = {{1, 1, 1}, {3, 1000, 1}, {2, 33333, 1}, {5, 7, 33}, {4, 1000, 7}, {1, 7, 1000}, {7, 1, 5}, {2, 129, 257}};

void add_reduce_cases() {
  for (DType dt : {DType::F32, DType::BF16, DType::I32})
    for (ReduceOp op : {ReduceOp::Sum, ReduceOp::Mean, ReduceOp::Max, ReduceOp::Argmax})
      for (Shape3 s : kReduceShapes) {
        if (dt == DType::I32 && op == ReduceOp::Mean) continue;
        add(std::string("reduce ") + std::to_string(static_cast<int>(op)) + " " + dtype_name(dt) + " [" +
                std::to_string(s.outer) + "," + std::to_string(s.n) + "," + std::to_string(s.inner) + "]", [=] {
          const int64_t total = s.outer * s.n * s.inner, nout = s.outer * s.inner;
          std::vector<float> f = op == ReduceOp::Argmax || op == ReduceOp::Max
                                     ? rand_f(total, -20, 20)
                                     : rand_f(total, -2, 2);
          if (op == ReduceOp::Argmax || op == ReduceOp::Max)
            for (auto& v : f) v = std::round(v);  // many ties: the first index must win
          if (dt != DType::I32 && op != ReduceOp::Sum && total > 50) f[total / 2] = NAN;
          std::vector<uint8_t> x = make(dt, f);
          DType odt = op == ReduceOp::Argmax ? DType::I32 : dt;
          Dev dx(x), y(nout * dtype_size(odt));
          y.poison();
          cuda::reduce(S(), op, dt, dx.p, y.p, s.outer, s.n, s.inner);
          std::vector<uint8_t> want(y.bytes);
          cpu::reduce(op, dt, x.data(), want.data(), s.outer, s.n, s.inner);
          std::vector<double> scale(nout, 0.0);
          for (int64_t o = 0; o < s.outer; ++o)
            for (int64_t j = 0; j < s.n; ++j)
              for (int64_t i = 0; i < s.inner; ++i)
                scale[o * s.inner + i] += std::fabs(elem(dt, x, (o * s.n + j) * s.inner + i));
          if (op == ReduceOp::Mean) for (auto& v : scale) v /= static_cast<double>(s.n);
          bool exact = dt == DType::I32 || op == ReduceOp::Max || op == ReduceOp::Argmax;
          compare(odt, y.get(), want, nout, exact ? Tol::Exact : Tol::Reduce, &scale);
        });
      }
  for (DType dt : kFloat)
    for (bool log : {false, true})
      for (Shape3 s : kReduceShapes)
        add(std::string(log ? "log_softmax " : "softmax ") + dtype_name(dt) + " [" + std::to_string(s.outer) + "," +
                std::to_string(s.n) + "," + std::to_string(s.inner) + "]", [=] {
          const int64_t total = s.outer * s.n * s.inner;
          std::vector<uint8_t> x = make(dt, rand_f(total, -8, 8));
          Dev dx(x), y(x.size());
          y.poison();
          cuda::softmax(S(), log, dt, dx.p, y.p, s.outer, s.n, s.inner);
          std::vector<uint8_t> want(x.size());
          cpu::softmax(log, dt, x.data(), want.data(), s.outer, s.n, s.inner);
          // log-softmax values near 0 carry the absolute error of log(sum): scale by 1 + |x|
          std::vector<double> scale(total, 1.0);
          if (dt == DType::F32) {
            std::vector<double> sc(total);
            for (int64_t i = 0; i < total; ++i) sc[i] = std::fabs(elem(dt, want, i)) + (log ? 1.0 : 0.0);
            compare(dt, y.get(), want, total, Tol::Reduce, &sc);
          } else {
            compare(dt, y.get(), want, total, Tol::Bf16Ulp);
          }
        });
}

void add_indexing_cases() {
  for (DType dt : kAll)
    for (Shape3 s : {Shape3{1, 7, 1}, Shape3{3, 1000, 1}, Shape3{2, 50, 33}, Shape3{1, 1, 1000}})
      for (int64_t k : {int64_t(1), int64_t(7), int64_t(333)})
        add(std::string("index_select ") + dtype_name(dt) + " n=" + std::to_string(s.n) + " k=" + std::to_string(k) +
                " inner=" + std::to_string(s.inner), [=] {
          std::vector<uint8_t> x = make(dt, rand_f(s.outer * s.n * s.inner, 0, 100));
          std::vector<int32_t> idx = rand_i(k, 0, static_cast<int32_t>(s.n - 1));
          const int64_t nout = s.outer * k * s.inner;
          Dev dx(x), di(idx.data(), k * 4), y(nout * dtype_size(dt));
          y.poison();
          cuda::index_select(S(), cuda::error_word(0), dt, dx.p, static_cast<const int32_t*>(di.p), y.p, s.outer, s.n, k, s.inner);
          std::vector<uint8_t> want(y.bytes);
          cpu::index_select(dt, x.data(), idx.data(), want.data(), s.outer, s.n, k, s.inner);
          compare(dt, y.get(), want, nout, Tol::Exact);
        });
  for (DType dt : {DType::F32, DType::BF16, DType::I32})
    for (Shape3 s : {Shape3{1, 7, 1}, Shape3{3, 100, 1}, Shape3{2, 50, 33}, Shape3{1, 1, 1000}})
      for (int64_t k : {int64_t(1), int64_t(7), int64_t(333)})
        add(std::string("scatter_add ") + dtype_name(dt) + " n=" + std::to_string(s.n) + " k=" + std::to_string(k) +
                " inner=" + std::to_string(s.inner), [=] {
          std::vector<uint8_t> src = make(dt, rand_f(s.outer * k * s.inner, -100, 100));
          std::vector<uint8_t> y0 = make(dt, rand_f(s.outer * s.n * s.inner, -100, 100));
          std::vector<int32_t> idx = rand_i(k, 0, static_cast<int32_t>(s.n - 1));
          const int64_t ny = s.outer * s.n * s.inner;
          Dev ds(src), di(idx.data(), k * 4), y(y0);
          cuda::scatter_add(S(), cuda::error_word(0), dt, ds.p, static_cast<const int32_t*>(di.p), y.p, s.outer, k, s.n, s.inner);
          std::vector<uint8_t> want = y0;
          cpu::scatter_add(dt, src.data(), idx.data(), want.data(), s.outer, k, s.n, s.inner);
          // same float additions in the same order, one bf16 rounding: exact
          compare(dt, y.get(), want, ny, Tol::Exact);
        });
  add("error word: index_select bad index -> ERR_RANGE", [] {
    std::vector<float> x(10 * 3, 1.0f);
    std::vector<int32_t> idx = {1, 10, 2};
    Dev dx(x.data(), x.size() * 4), di(idx.data(), 12), y(3 * 3 * 4);
    cuda::index_select(S(), cuda::error_word(0), DType::F32, dx.p, static_cast<const int32_t*>(di.p), y.p, 1, 10, 3, 3);
    std::string code;
    try {
      cuda::synchronize(0, "test");
    } catch (const MomaException& e) {
      code = e.code();
      expect(std::string(e.what()).find("index_select") != std::string::npos, std::string("message: ") + e.what());
    }
    expect(code == "ERR_RANGE", "expected ERR_RANGE, got '" + code + "'");
    bool clean = true;
    try { cuda::synchronize(0, "test"); } catch (...) { clean = false; }
    expect(clean, "error word was not cleared");
  });
  add("error word: scatter_add bad index -> ERR_RANGE", [] {
    std::vector<float> src(4 * 2, 1.0f), y0(5 * 2, 0.0f);
    std::vector<int32_t> idx = {0, -1, 4, 3};
    Dev ds(src.data(), src.size() * 4), di(idx.data(), 16), y(y0.data(), y0.size() * 4);
    cuda::scatter_add(S(), cuda::error_word(0), DType::F32, ds.p, static_cast<const int32_t*>(di.p), y.p, 1, 4, 5, 2);
    std::string code, msg;
    try { cuda::synchronize(0, "test"); } catch (const MomaException& e) { code = e.code(); msg = e.what(); }
    expect(code == "ERR_RANGE" && msg.find("scatter_add") != std::string::npos, "got '" + code + "' " + msg);
    bool clean = true;
    try { cuda::synchronize(0, "test"); } catch (...) { clean = false; }
    expect(clean, "error word was not cleared");
  });
}

// GEMM against the CPU float32 GEMM on bf16-rounded inputs.
void gemm_case(DType da, DType db, DType dc, GemmShape g, bool pad) {
  // storage sizes
  int64_t rowsA = g.transA ? g.K : g.M, colsA = g.transA ? g.M : g.K;
  int64_t rowsB = g.transB ? g.N : g.K, colsB = g.transB ? g.K : g.N;
  g.lda = colsA + (pad ? 3 : 0);
  g.ldb = colsB + (pad ? 5 : 0);
  g.ldc = g.N + (pad ? 1 : 0);
  int64_t sizeA = rowsA * g.lda, sizeB = rowsB * g.ldb, sizeC = g.M * g.ldc;
  int64_t nbA = g.strideA ? g.batch : 1, nbB = g.strideB ? g.batch : 1;
  if (g.strideA) g.strideA = sizeA;
  if (g.strideB) g.strideB = sizeB;
  g.strideC = sizeC;
  std::vector<float> fa = rand_f(sizeA * nbA, -1, 1), fb = rand_f(sizeB * nbB, -1, 1), fc = rand_f(sizeC * g.batch, -1, 1);
  std::vector<uint8_t> a = make(da, fa), b = make(db, fb), c = make(dc, fc);
  std::vector<float> ra(fa.size()), rb(fb.size()), rc(fc.size());
  for (size_t i = 0; i < fa.size(); ++i) ra[i] = bf16_to_f32(f32_to_bf16(fa[i]));
  for (size_t i = 0; i < fb.size(); ++i) rb[i] = bf16_to_f32(f32_to_bf16(fb[i]));
  for (size_t i = 0; i < fc.size(); ++i) rc[i] = static_cast<float>(elem(dc, c, i));
  Dev dA(a), dB(b), dC(c);
  if (g.beta == 0.0f) dC.poison();  // beta == 0 must not read C (NaN * 0 would poison)
  cuda::gemm(S(), da, dA.p, db, dB.p, dc, dC.p, g);
  std::vector<uint8_t> got = dC.get();
  cpu::gemm_f32(g, ra.data(), rb.data(), rc.data());
  double num = 0, den = 0;
  size_t unwritten = 0;
  for (int64_t bi = 0; bi < g.batch; ++bi)
    for (int64_t m = 0; m < g.M; ++m)
      for (int64_t n = 0; n < g.N; ++n) {
        size_t i = static_cast<size_t>(bi * g.strideC + m * g.ldc + n);
        double gv = elem(dc, got, i), wv = rc[i];
        if (std::isnan(gv)) ++unwritten;
        num += (gv - wv) * (gv - wv);
        den += wv * wv;
      }
  double rel = std::sqrt(num / (den > 0 ? den : 1));
  char buf[160];
  std::snprintf(buf, sizeof buf, "relative Frobenius error %.3g, %zu NaN outputs", rel, unwritten);
  expect(unwritten == 0 && rel < 1e-2, buf);
  // padding columns of C (between N and ldc) must be untouched
  if (pad && g.beta != 0.0f) {
    bool ok = true;
    for (int64_t bi = 0; bi < g.batch; ++bi)
      for (int64_t m = 0; m < g.M; ++m) {
        size_t i = static_cast<size_t>(bi * g.strideC + m * g.ldc + g.N);
        size_t es = dtype_size(dc);
        if (std::memcmp(&got[i * es], &c[i * es], es) != 0) ok = false;
      }
    expect(ok, "gemm wrote outside the N columns of C");
  }
}

void add_gemm_cases() {
  struct MNK { int64_t M, N, K; };
  const MNK shapes[] = {{1, 1, 1}, {7, 7, 7}, {129, 257, 63}, {128, 128, 32}, {33, 1000, 17}, {300, 5, 1000}, {16, 8, 0}};
  for (MNK s : shapes)
    for (int tr = 0; tr < 4; ++tr)
      for (DType da : kFloat)
        for (DType db : kFloat)
          for (DType dc : kFloat) {
            bool pad = ((tr + static_cast<int>(da) + static_cast<int>(dc)) & 1) != 0;
            GemmShape g;
            g.M = s.M; g.N = s.N; g.K = s.K;
            g.transA = tr & 1; g.transB = (tr >> 1) & 1;
            g.alpha = 1.0f; g.beta = 0.0f;
            if (s.M == 129 && da == db) { g.alpha = 0.75f; g.beta = 0.5f; }
            add(std::string("gemm ") + std::to_string(s.M) + "x" + std::to_string(s.N) + "x" + std::to_string(s.K) +
                    " tA=" + std::to_string(g.transA) + " tB=" + std::to_string(g.transB) + " " + dtype_name(da) + "*" +
                    dtype_name(db) + "->" + dtype_name(dc) + (pad ? " padded" : ""),
                [=] { gemm_case(da, db, dc, g, pad); });
          }
  // batches: 3 entries, A broadcast (stride 0) / B broadcast / both strided
  for (int mode = 0; mode < 3; ++mode)
    for (int tr = 0; tr < 4; ++tr)
      add("gemm batch=3 mode=" + std::to_string(mode) + " tr=" + std::to_string(tr), [=] {
        GemmShape g;
        g.batch = 3; g.M = 65; g.N = 130; g.K = 47;
        g.transA = tr & 1; g.transB = (tr >> 1) & 1;
        g.strideA = mode == 0 ? 0 : 1;  // nonzero: replaced by the real stride in gemm_case
        g.strideB = mode == 1 ? 0 : 1;
        g.alpha = 1.25f; g.beta = mode == 2 ? -1.0f : 0.0f;
        gemm_case(DType::BF16, DType::F32, DType::F32, g, mode == 2);
      });
}

void add_runtime_cases() {
  add("copy h2d/d2d/d2h roundtrip", [] {
    for (size_t bytes : {size_t(1), size_t(1000), size_t(3) << 20, size_t(20) << 20}) {
      std::vector<uint8_t> h(bytes);
      for (auto& v : h) v = static_cast<uint8_t>(g_rng());
      Dev a(bytes), b(bytes);
      {
        std::vector<uint8_t> tmp = h;  // freed right after copy_h2d returns
        cuda::copy_h2d(0, a.p, tmp.data(), bytes);
      }
      cuda::copy_d2d(0, b.p, a.p, bytes);
      expect(b.get() == h, "roundtrip of " + std::to_string(bytes) + " bytes");
    }
  });
  add("allocator reuse and stats", [] {
    cuda::AllocStats s0 = cuda::alloc_stats(0);
    void* p = cuda::alloc(0, 1000);
    cuda::AllocStats s1 = cuda::alloc_stats(0);
    expect(s1.allocated == s0.allocated + 1024, "1000 bytes round to 1024");
    cuda::release(0, p);
    void* q = cuda::alloc(0, 1001);
    expect(q == p, "a released block of the same rounded size is reused");
    void* z1 = cuda::alloc(0, 0);
    void* z2 = cuda::alloc(0, 0);
    expect(z1 && z2 && z1 != z2 && z1 != q, "zero-byte allocations are distinct blocks");
    void* big = cuda::alloc(0, (size_t(3) << 20) + 1);
    cuda::AllocStats s2 = cuda::alloc_stats(0);
    expect(s2.allocated == s0.allocated + 1024 + 512 + 512 + (size_t(4) << 20), "large sizes round to 2 MiB");
    expect(s2.peak_allocated >= s2.allocated && s2.num_allocs == s0.num_allocs + 5, "peak / count");
    cuda::release(0, q);
    cuda::release(0, z1);
    cuda::release(0, z2);
    cuda::release(0, big);
    cuda::empty_cache(0);
    cuda::AllocStats s3 = cuda::alloc_stats(0);
    expect(s3.allocated == s0.allocated && s3.reserved == s3.allocated, "empty_cache returns cached blocks");
    cuda::reset_peak(0);
    expect(cuda::alloc_stats(0).peak_allocated == s3.allocated, "reset_peak");
    std::string code;
    try { cuda::alloc(0, size_t(1) << 50); } catch (const MomaException& e) { code = e.code(); }
    expect(code == "ERR_OOM", "a 1 PiB allocation throws ERR_OOM, got '" + code + "'");
  });
  add("device info", [] {
    cuda::DeviceInfo d = cuda::device_info(0);
    expect(!d.name.empty() && d.total_memory > 0 && d.cc_major >= 8 && d.multiprocessors > 0,
           "device_info: " + d.name);
    expect(cuda::runtime_version() > 0 && cuda::driver_version() > 0, "versions");
  });
}

// ---- mixture-of-experts kernels (kernels_moe.h) --------------------------------------------
// Every MoE CUDA kernel against its CPU twin. Routing cases feed both sides the same scores
// (computed by the CPU router) so that the routes must agree exactly.
struct MoeLayoutCase {
  std::string name;
  MoeLayout L;
};
std::vector<MoeLayoutCase> moe_layouts() {
  return {{"[4,4]", ops::make_moe_layout({4, 4}, {0, 1}, "native test")},
          {"[8]", ops::make_moe_layout({8}, {0, 0}, "native test")},
          {"[1,1]", ops::make_moe_layout({1, 1}, {0, 1}, "native test")},
          {"[3,1,2]+unrouted", ops::make_moe_layout({3, 1, 2}, {0, 1, 2, -1}, "native test")},
          {"[1]", ops::make_moe_layout({1}, {0}, "native test")}};
}

// Modalities of T rows. mode 0: random with ~10% padding; 1: every row modality 0; 2: no row of
// the last modality routed to group 1 when it exists (an empty group), plus padding.
std::vector<int32_t> moe_modality(int64_t T, const MoeLayout& L, int mode) {
  std::vector<int32_t> m(static_cast<size_t>(T));
  std::uniform_int_distribution<int32_t> d(0, L.num_modalities - 1);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  for (auto& v : m) {
    if (mode == 1) { v = 0; continue; }
    v = u(g_rng) < 0.1f ? -1 : d(g_rng);
    if (mode == 2)
      while (v >= 0 && L.group_of[v] == (L.num_groups > 1 ? 1 : -2)) v = d(g_rng) == 0 ? 0 : -1;
  }
  return m;
}

template <typename T> std::vector<uint8_t> bytes_of(const std::vector<T>& v) {
  std::vector<uint8_t> b(v.size() * sizeof(T));
  if (!b.empty()) std::memcpy(b.data(), v.data(), b.size());
  return b;
}
template <typename T> std::vector<T> vec_of(const std::vector<uint8_t>& b) {
  std::vector<T> v(b.size() / sizeof(T));
  if (!b.empty()) std::memcpy(v.data(), b.data(), b.size());
  return v;
}
// Device buffer of n elements of type T, at least 4 bytes so that empty arrays stay valid.
template <typename T> std::unique_ptr<Dev> dev_of(const std::vector<T>& v) {
  auto d = std::make_unique<Dev>(std::max<size_t>(4, v.size() * sizeof(T)));
  if (!v.empty()) cuda::copy_h2d(0, d->p, v.data(), v.size() * sizeof(T));
  return d;
}
std::unique_ptr<Dev> dev_poisoned(size_t bytes) {
  auto d = std::make_unique<Dev>(std::max<size_t>(4, bytes));
  d->poison();
  return d;
}
template <typename T> std::vector<T> fetch(Dev& d, size_t n) {
  std::vector<uint8_t> b = d.get();
  b.resize(n * sizeof(T));
  return vec_of<T>(b);
}

template <typename T> void expect_equal(const std::vector<T>& got, const std::vector<T>& want, const std::string& what) {
  size_t bad = 0, first = 0;
  for (size_t i = 0; i < want.size(); ++i)
    if (std::memcmp(&got[i], &want[i], sizeof(T)) != 0 && !(std::is_floating_point<T>::value && got[i] != got[i] && want[i] != want[i])) {
      if (!bad) first = i;
      ++bad;
    }
  if (got.size() != want.size()) bad = std::max<size_t>(bad, 1);
  if (bad) {
    char buf[256];
    std::snprintf(buf, sizeof buf, "%s: %zu of %zu differ (first at %zu: got %.9g want %.9g)", what.c_str(), bad,
                  want.size(), first, first < got.size() ? double(got[first]) : 0.0, double(want[first]));
    failure(buf);
  } else {
    pass();
  }
}

// |got - want| <= rel |want| + abs per element (NaN only where the reference is NaN).
void expect_close(const std::vector<float>& got, const std::vector<float>& want, double rel, double abs,
                  const std::string& what) {
  size_t bad = 0, first = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const double g = got[i], w = want[i];
    const bool ok = std::isnan(w) ? std::isnan(g) : (!std::isnan(g) && std::fabs(g - w) <= rel * std::fabs(w) + abs);
    if (!ok) {
      if (!bad) first = i;
      ++bad;
    }
  }
  if (bad) {
    char buf[256];
    std::snprintf(buf, sizeof buf, "%s: %zu of %zu differ (first at %zu: got %.9g want %.9g)", what.c_str(), bad,
                  want.size(), first, double(got[first]), double(want[first]));
    failure(buf);
  } else {
    pass();
  }
}

std::vector<float> as_floats(DType dt, const std::vector<uint8_t>& b, size_t n) {
  std::vector<float> f(n);
  for (size_t i = 0; i < n; ++i) f[i] = static_cast<float>(elem(dt, b, i));
  return f;
}

// Expects the next synchronisation to report ERR_RANGE naming `op`.
void expect_device_error(const std::string& op) {
  std::string code, msg;
  try { cuda::synchronize(0, "test"); } catch (const MomaException& e) { code = e.code(); msg = e.what(); }
  expect(code == "ERR_RANGE" && msg.find(op) != std::string::npos, "expected ERR_RANGE from " + op + ", got '" + code + "' " + msg);
}

// A CPU partition + scores + route for a layout (the inputs of the row kernels' cases).
struct MoeHostRoute {
  MoeLayout L;
  RoutingParams p;
  int64_t T = 0, R = 0;
  std::vector<int32_t> modality, row_group, counts, offsets, perm, expert_offsets, slot_row, row_slots;
  std::vector<float> scores, slot_gate;
};
MoeHostRoute host_route(const MoeLayout& L, int64_t T, const RoutingParams& p, int mod_mode, bool ties) {
  MoeHostRoute h;
  h.L = L;
  h.p = p;
  h.T = T;
  const int64_t E = L.num_experts, G = L.num_groups, W = L.max_group_experts;
  h.modality = moe_modality(T, L, mod_mode);
  h.row_group.resize(T);
  h.counts.resize(G);
  h.offsets.resize(G + 1);
  h.perm.resize(T);
  cpu::moe_partition(h.modality.data(), T, L, h.row_group.data(), h.counts.data(), h.offsets.data(), h.perm.data());
  std::vector<float> logits = rand_f(static_cast<size_t>(T * E), -3.0f, 3.0f);
  h.scores.resize(T * E);
  cpu::moe_router_scores(logits.data(), h.row_group.data(), T, L, RouterFn::Sigmoid, false, 0, 0, h.scores.data());
  if (ties)  // few distinct values: many exact ties between rows and between experts
    for (auto& s : h.scores)
      if (s != 0.0f && s != 1.0f) s = std::round(s * 4.0f) / 4.0f;
  h.R = moe_slot_bound(T, L, p);
  h.expert_offsets.resize(E + 1);
  h.slot_row.resize(h.R);
  h.slot_gate.resize(h.R);
  h.row_slots.resize(T * W);
  cpu::moe_route(h.scores.data(), h.row_group.data(), h.offsets.data(), h.perm.data(), T, L, p, h.R,
                 h.expert_offsets.data(), h.slot_row.data(), h.slot_gate.data(), h.row_slots.data());
  return h;
}

void add_moe_routing_cases() {
  const int64_t Ts[] = {1, 37, 1000, 4099};
  int rot = 0;
  for (const MoeLayoutCase& lc : moe_layouts())
    for (int64_t T : Ts)
      for (int mod_mode = 0; mod_mode < 3; ++mod_mode) {
        const MoeLayout L = lc.L;
        const std::string tag = lc.name + " T=" + std::to_string(T) + " mod=" + std::to_string(mod_mode);
        add("moe_partition " + tag, [=] {
          const int64_t G = L.num_groups;
          std::vector<int32_t> mod = moe_modality(T, L, mod_mode);
          std::vector<int32_t> rg(T), cnt(G), off(G + 1), perm(T);
          cpu::moe_partition(mod.data(), T, L, rg.data(), cnt.data(), off.data(), perm.data());
          auto dm = dev_of(mod);
          auto drg = dev_poisoned(T * 4), dcnt = dev_poisoned(G * 4), doff = dev_poisoned((G + 1) * 4),
               dperm = dev_poisoned(T * 4);
          cuda::moe_partition(S(), cuda::error_word(0), static_cast<const int32_t*>(dm->p), T, L,
                              static_cast<int32_t*>(drg->p), static_cast<int32_t*>(dcnt->p),
                              static_cast<int32_t*>(doff->p), static_cast<int32_t*>(dperm->p));
          expect_equal(fetch<int32_t>(*drg, T), rg, "row_group");
          expect_equal(fetch<int32_t>(*dcnt, G), cnt, "counts");
          expect_equal(fetch<int32_t>(*doff, G + 1), off, "offsets");
          expect_equal(fetch<int32_t>(*dperm, T), perm, "perm");
        });
        // router scores (+ backward): sigmoid / softmax, gumbel on and off
        for (int v = 0; v < 4; ++v) {
          const RouterFn fn = v & 1 ? RouterFn::Softmax : RouterFn::Sigmoid;
          const bool gumbel = v & 2;
          add("moe_router_scores " + tag + (v & 1 ? " softmax" : " sigmoid") + (gumbel ? " gumbel" : ""), [=] {
            const int64_t E = L.num_experts, G = L.num_groups;
            std::vector<int32_t> mod = moe_modality(T, L, mod_mode);
            std::vector<int32_t> rg(T), cnt(G), off(G + 1), perm(T);
            cpu::moe_partition(mod.data(), T, L, rg.data(), cnt.data(), off.data(), perm.data());
            std::vector<float> logits = rand_f(T * E, -4.0f, 4.0f), want(T * E), ds = rand_f(T * E), dwant(T * E);
            const uint64_t seed = 0x5eed0000ull + T, offset = (1ull << 33) + 7;
            cpu::moe_router_scores(logits.data(), rg.data(), T, L, fn, gumbel, seed, offset, want.data());
            cpu::moe_router_scores_backward(want.data(), ds.data(), rg.data(), T, L, fn, dwant.data());
            auto dl = dev_of(logits), drg = dev_of(rg), dds = dev_of(ds), dsw = dev_of(want);
            auto dsc = dev_poisoned(T * E * 4), ddl = dev_poisoned(T * E * 4);
            cuda::moe_router_scores(S(), static_cast<const float*>(dl->p), static_cast<const int32_t*>(drg->p), T, L,
                                    fn, gumbel, seed, offset, static_cast<float*>(dsc->p));
            expect_close(fetch<float>(*dsc, T * E), want, 1e-6, 1e-30, "scores");
            // the backward from the CPU's scores: same inputs on both sides
            cuda::moe_router_scores_backward(S(), static_cast<const float*>(dsw->p), static_cast<const float*>(dds->p),
                                             static_cast<const int32_t*>(drg->p), T, L, fn, static_cast<float*>(ddl->p));
            expect_close(fetch<float>(*ddl, T * E), dwant, 1e-5, 1e-6, "dlogits");
          });
        }
        // routing: expert choice at four capacities, token choice top 1 / 2
        struct RP { RoutingMode mode; double c; int k; };
        const RP rps[] = {{RoutingMode::ExpertChoice, 1.0, 1},  {RoutingMode::ExpertChoice, 0.5, 1},
                          {RoutingMode::ExpertChoice, 1.37, 1}, {RoutingMode::ExpertChoice, 2.0, 1},
                          {RoutingMode::TokenChoice, 1.0, 1},   {RoutingMode::TokenChoice, 1.37, 2},
                          {RoutingMode::TokenChoice, 0.5, 2}};
        for (const RP& rp : rps) {
          const bool ties = (rot++ % 2) == 1;
          RoutingParams p;
          p.mode = rp.mode;
          p.capacity = rp.c;
          p.top_k = rp.k;
          char name[160];
          std::snprintf(name, sizeof name, "moe_route %s %s c=%g k=%d%s", tag.c_str(),
                        rp.mode == RoutingMode::TokenChoice ? "token" : "expert", rp.c, rp.k, ties ? " ties" : "");
          add(name, [=] {
            MoeHostRoute h = host_route(L, T, p, mod_mode, ties);
            const int64_t E = L.num_experts, W = L.max_group_experts, R = h.R, G = L.num_groups;
            auto dsc = dev_of(h.scores), drg = dev_of(h.row_group), doff = dev_of(h.offsets), dperm = dev_of(h.perm);
            auto deo = dev_poisoned((E + 1) * 4), dsr = dev_poisoned(R * 4), dsg = dev_poisoned(R * 4),
                 drs = dev_poisoned(T * W * 4);
            cuda::moe_route(S(), cuda::error_word(0), static_cast<const float*>(dsc->p),
                            static_cast<const int32_t*>(drg->p), static_cast<const int32_t*>(doff->p),
                            static_cast<const int32_t*>(dperm->p), T, L, p, R, static_cast<int32_t*>(deo->p),
                            static_cast<int32_t*>(dsr->p), static_cast<float*>(dsg->p), static_cast<int32_t*>(drs->p));
            expect_equal(fetch<int32_t>(*deo, E + 1), h.expert_offsets, "expert_offsets");
            expect_equal(fetch<int32_t>(*dsr, R), h.slot_row, "slot_row");
            expect_equal(fetch<float>(*dsg, R), h.slot_gate, "slot_gate");
            expect_equal(fetch<int32_t>(*drs, T * W), h.row_slots, "row_slots");
            // statistics from the (CPU) routing
            std::vector<float> es(2 * E), gs(4 * G);
            cpu::moe_routing_stats(h.row_group.data(), h.offsets.data(), h.expert_offsets.data(), h.slot_gate.data(),
                                   h.row_slots.data(), T, L, es.data(), gs.data());
            auto deo2 = dev_of(h.expert_offsets), dsg2 = dev_of(h.slot_gate), drs2 = dev_of(h.row_slots);
            auto des = dev_poisoned(2 * E * 4), dgs = dev_poisoned(4 * G * 4);
            cuda::moe_routing_stats(S(), static_cast<const int32_t*>(drg->p), static_cast<const int32_t*>(doff->p),
                                    static_cast<const int32_t*>(deo2->p), static_cast<const float*>(dsg2->p),
                                    static_cast<const int32_t*>(drs2->p), T, L, static_cast<float*>(des->p),
                                    static_cast<float*>(dgs->p));
            expect_close(fetch<float>(*des, 2 * E), es, 1e-6, 0.0, "expert_stats");
            expect_close(fetch<float>(*dgs, 4 * G), gs, 1e-6, 0.0, "group_stats");
          });
        }
      }
  add("moe_partition bad modality", [] {
    const MoeLayout L = ops::make_moe_layout({4, 4}, {0, 1}, "native test");
    std::vector<int32_t> mod = {0, 1, 2, -1};
    auto dm = dev_of(mod);
    auto a = dev_poisoned(16), b = dev_poisoned(8), c = dev_poisoned(12), d = dev_poisoned(16);
    cuda::moe_partition(S(), cuda::error_word(0), static_cast<const int32_t*>(dm->p), 4, L, static_cast<int32_t*>(a->p),
                        static_cast<int32_t*>(b->p), static_cast<int32_t*>(c->p), static_cast<int32_t*>(d->p));
    expect_device_error("moe_partition");
  });
}

void add_moe_row_cases() {
  const int64_t Ts[] = {1, 37, 1000};
  const int64_t ds[] = {1, 33, 256};
  for (int64_t T : Ts)
    for (int64_t d : ds)
      for (DType dt : kFloat)
        for (int li = 0; li < 2; ++li) {
          const std::string tag = std::string(li ? "[3,1,2]" : "[4,4]") + " T=" + std::to_string(T) + " d=" +
                                  std::to_string(d) + " " + dtype_name(dt);
          const MoeLayout L = li ? ops::make_moe_layout({3, 1, 2}, {0, 1, 2, -1}, "native test") : ops::make_moe_layout({4, 4}, {0, 1}, "native test");
          RoutingParams p;
          p.capacity = li ? 2.0 : 1.37;
          for (int scaled = 0; scaled < 2; ++scaled)
            add("moe_gather_rows " + tag + (scaled ? " scaled" : ""), [=] {
              MoeHostRoute h = host_route(L, T, p, 0, false);
              const int64_t R = h.R;
              const size_t es = dtype_size(dt);
              std::vector<uint8_t> x = make(dt, rand_f(T * d)), want(R * d * es);
              std::vector<float> scale = rand_f(R, -2.0f, 2.0f);
              cpu::moe_gather_rows(dt, x.data(), h.slot_row.data(), scaled ? scale.data() : nullptr, T, R, d, want.data());
              auto dx = dev_of(x), dsr = dev_of(h.slot_row), dsc = dev_of(scale), dy = dev_poisoned(R * d * es);
              cuda::moe_gather_rows(S(), cuda::error_word(0), dt, dx->p, static_cast<const int32_t*>(dsr->p),
                                    scaled ? static_cast<const float*>(dsc->p) : nullptr, T, R, d, dy->p);
              compare(dt, dy->get(), want, R * d, Tol::Exact);
            });
          for (int weighted = 0; weighted < 2; ++weighted)
            add("moe_combine " + tag + (weighted ? " weighted" : ""), [=] {
              MoeHostRoute h = host_route(L, T, p, 0, false);
              const int64_t R = h.R, W = L.max_group_experts;
              const size_t es = dtype_size(dt);
              std::vector<uint8_t> src = make(dt, rand_f(R * d)), want(T * d * es);
              cpu::moe_combine(dt, src.data(), h.row_slots.data(), weighted ? h.slot_gate.data() : nullptr, T, W, R, d,
                               want.data());
              auto ds_ = dev_of(src), drs = dev_of(h.row_slots), dw = dev_of(h.slot_gate), dy = dev_poisoned(T * d * es);
              cuda::moe_combine(S(), cuda::error_word(0), dt, ds_->p, static_cast<const int32_t*>(drs->p),
                                weighted ? static_cast<const float*>(dw->p) : nullptr, T, W, R, d, dy->p);
              compare(dt, dy->get(), want, T * d, Tol::Exact);  // bitwise: same order, no FMA
            });
          add("moe_gate_grad " + tag, [=] {
            MoeHostRoute h = host_route(L, T, p, 0, false);
            const int64_t R = h.R, E = L.num_experts;
            const size_t es = dtype_size(dt);
            std::vector<uint8_t> out = make(dt, rand_f(R * d)), dyv = make(dt, rand_f(T * d));
            std::vector<float> want(T * E);
            cpu::moe_gate_grad(dt, out.data(), dyv.data(), h.slot_row.data(), h.expert_offsets.data(), T, R, d, L,
                               want.data());
            auto dout = dev_of(out), ddy = dev_of(dyv), dsr = dev_of(h.slot_row), deo = dev_of(h.expert_offsets);
            auto dsc = dev_poisoned(T * E * 4);
            cuda::moe_gate_grad(S(), dt, dout->p, ddy->p, static_cast<const int32_t*>(dsr->p),
                                static_cast<const int32_t*>(deo->p), T, R, d, L, static_cast<float*>(dsc->p));
            // float32 sums in a fixed order; allow rounding-level differences (relative to sum |.|)
            expect_close(fetch<float>(*dsc, T * E), want, 1e-5, 1e-5 * static_cast<double>(d), "dscores");
            (void)es;
          });
        }
  add("moe_gather_rows bad row", [] {
    std::vector<int32_t> sr = {0, 5};
    std::vector<float> x(5 * 3, 1.0f);
    auto dx = dev_of(x), dsr = dev_of(sr), dy = dev_poisoned(2 * 3 * 4);
    cuda::moe_gather_rows(S(), cuda::error_word(0), DType::F32, dx->p, static_cast<const int32_t*>(dsr->p), nullptr, 5,
                          2, 3, dy->p);
    expect_device_error("moe_gather_rows");
  });
  add("moe_combine bad slot", [] {
    std::vector<int32_t> rs = {0, -1, 3, -1};
    std::vector<float> src(3 * 2, 1.0f);
    auto ds_ = dev_of(src), drs = dev_of(rs), dy = dev_poisoned(2 * 2 * 4);
    cuda::moe_combine(S(), cuda::error_word(0), DType::F32, ds_->p, static_cast<const int32_t*>(drs->p), nullptr, 2, 2,
                      3, 2, dy->p);
    expect_device_error("moe_combine");
  });
}

void add_moe_swiglu_cases() {
  for (DType dt : kFloat)
    for (int64_t n : kSizes)
      for (int shift = 0; shift < 2; ++shift)  // shift 1: pointers one element off 16-byte alignment
        add(std::string("swiglu ") + dtype_name(dt) + " n=" + std::to_string(n) + (shift ? " unaligned" : ""), [=] {
          const size_t es = dtype_size(dt), off = shift * es;
          std::vector<uint8_t> h1 = make(dt, rand_f(n, -8.0f, 8.0f)), h3 = make(dt, rand_f(n)), da = make(dt, rand_f(n));
          std::vector<uint8_t> a(n * es), d1(n * es), d3(n * es);
          cpu::swiglu(dt, h1.data(), h3.data(), a.data(), n);
          cpu::swiglu_backward(dt, h1.data(), h3.data(), da.data(), d1.data(), d3.data(), n);
          auto pad = [&](const std::vector<uint8_t>& v) {
            std::vector<uint8_t> p(off, 0);
            p.insert(p.end(), v.begin(), v.end());
            return p;
          };
          auto dh1 = dev_of(pad(h1)), dh3 = dev_of(pad(h3)), dda = dev_of(pad(da));
          auto ya = dev_poisoned(n * es + off), y1 = dev_poisoned(n * es + off), y3 = dev_poisoned(n * es + off);
          auto at = [&](Dev& d) { return static_cast<char*>(d.p) + off; };
          cuda::swiglu(S(), dt, at(*dh1), at(*dh3), at(*ya), n);
          cuda::swiglu_backward(S(), dt, at(*dh1), at(*dh3), at(*dda), at(*y1), at(*y3), n);
          auto got = [&](Dev& d) {
            std::vector<uint8_t> b = d.get();
            return std::vector<uint8_t>(b.begin() + off, b.begin() + off + n * es);
          };
          // the CPU may use a SIMD sigmoid: a few float ulps (one bf16 ulp after rounding), and the
          // (1 + h1 (1 - sig)) factor of dh1 can cancel, hence the absolute term
          const double rel = dt == DType::F32 ? 1e-5 : 1.0 / 128;
          expect_close(as_floats(dt, got(*ya), n), as_floats(dt, a, n), rel, 1e-5, "a");
          expect_close(as_floats(dt, got(*y1), n), as_floats(dt, d1, n), rel, 1e-4, "dh1");
          expect_close(as_floats(dt, got(*y3), n), as_floats(dt, d3, n), rel, 1e-5, "dh3");
        });
}

// Offsets of E segments over R rows: random sizes with empty segments, ending before R.
std::vector<int32_t> random_offsets(int64_t E, int64_t R) {
  std::vector<int32_t> off(E + 1, 0);
  const int64_t used = R > 1 ? R - std::uniform_int_distribution<int64_t>(0, std::min<int64_t>(R - 1, 40))(g_rng) : R;
  std::vector<int64_t> cuts;
  for (int64_t e = 0; e + 1 < E; ++e) cuts.push_back(std::uniform_int_distribution<int64_t>(0, used)(g_rng));
  if (E >= 3) cuts[1] = cuts[0];  // an empty segment
  std::sort(cuts.begin(), cuts.end());
  for (int64_t e = 1; e < E; ++e) off[e] = static_cast<int32_t>(cuts[e - 1]);
  off[E] = static_cast<int32_t>(used);
  return off;
}

double rel_frobenius(const std::vector<float>& got, const std::vector<float>& want, size_t& nan_count) {
  double num = 0, den = 0;
  nan_count = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    if (std::isnan(got[i])) ++nan_count;
    num += (double(got[i]) - want[i]) * (double(got[i]) - want[i]);
    den += double(want[i]) * want[i];
  }
  return std::sqrt(num / (den > 0 ? den : 1));
}

void add_moe_gemm_cases() {
  struct Shape { int64_t E, R, K, N; };
  const Shape shapes[] = {{1, 1, 1, 1}, {3, 37, 33, 33}, {8, 300, 64, 130}, {3, 300, 256, 33}, {1, 260, 40, 256},
                          {8, 1000, 256, 256}};
  int rot = 0;
  for (const Shape& sh : shapes)
    for (int tw = 0; tw < 2; ++tw)
      for (int v = 0; v < 3; ++v) {
        // v: 0 bf16 x bf16 -> bf16, 1 f32 x bf16 -> f32, 2 f32 x f32 -> f32 (dtypes rotate a little)
        const DType dx = v == 0 ? DType::BF16 : DType::F32;
        const DType dw = v == 2 ? DType::F32 : DType::BF16;
        const DType dy = v == 0 ? DType::BF16 : DType::F32;
        const bool swap = (rot++ % 2) == 1;
        char name[160];
        std::snprintf(name, sizeof name, "grouped_gemm E=%lld R=%lld K=%lld N=%lld tw=%d %s,%s->%s", (long long)sh.E,
                      (long long)sh.R, (long long)sh.K, (long long)sh.N, tw, dtype_name(swap ? dw : dx),
                      dtype_name(swap ? dx : dw), dtype_name(dy));
        add(name, [=] {
          const DType tx = swap ? dw : dx, tw_ = swap ? dx : dw;
          const int64_t E = sh.E, R = sh.R, K = sh.K, N = sh.N;
          std::vector<int32_t> off = random_offsets(E, R);
          std::vector<float> fx = rand_f(R * K, -1, 1), fw = rand_f(E * K * N, -1, 1);
          std::vector<uint8_t> bx = make(tx, fx), bw = make(tw_, fw);
          std::vector<float> rx(fx.size()), rw(fw.size()), want(R * N);
          for (size_t i = 0; i < fx.size(); ++i) rx[i] = bf16_to_f32(f32_to_bf16(fx[i]));
          for (size_t i = 0; i < fw.size(); ++i) rw[i] = bf16_to_f32(f32_to_bf16(fw[i]));
          cpu::grouped_gemm(rx.data(), rw.data(), tw == 1, off.data(), E, R, K, N, want.data());
          auto ddx = dev_of(bx), ddw = dev_of(bw), doff = dev_of(off), ddy = dev_poisoned(R * N * dtype_size(dy));
          cuda::grouped_gemm(S(), cuda::error_word(0), tx, ddx->p, tw_, ddw->p, tw == 1,
                             static_cast<const int32_t*>(doff->p), E, R, K, N, dy, ddy->p);
          std::vector<float> got = as_floats(dy, ddy->get(), R * N);
          size_t nans;
          const double rel = rel_frobenius(got, want, nans);
          bool tail_zero = true;
          for (int64_t i = off[E] * N; i < R * N; ++i) tail_zero &= got[i] == 0.0f;
          char buf[160];
          std::snprintf(buf, sizeof buf, "relative Frobenius error %.3g, %zu NaN outputs, tail zero %d", rel, nans,
                        tail_zero ? 1 : 0);
          expect(nans == 0 && rel < 1e-2 && tail_zero, buf);
        });
        if (tw == 0)
          add(std::string("grouped_gemm_wgrad ") + (name + 13), [=] {
            const DType tx = swap ? dw : dx, td = swap ? dx : dw;
            const int64_t E = sh.E, R = sh.R, K = sh.K, N = sh.N;
            std::vector<int32_t> off = random_offsets(E, R);
            std::vector<float> fx = rand_f(R * K, -1, 1), fd = rand_f(R * N, -1, 1);
            std::vector<uint8_t> bx = make(tx, fx), bd = make(td, fd);
            std::vector<float> rx(fx.size()), rd(fd.size()), want(E * K * N);
            for (size_t i = 0; i < fx.size(); ++i) rx[i] = bf16_to_f32(f32_to_bf16(fx[i]));
            for (size_t i = 0; i < fd.size(); ++i) rd[i] = bf16_to_f32(f32_to_bf16(fd[i]));
            cpu::grouped_gemm_wgrad(rx.data(), rd.data(), off.data(), E, R, K, N, want.data());
            auto ddx = dev_of(bx), ddd = dev_of(bd), doff = dev_of(off), ddw = dev_poisoned(E * K * N * 4);
            cuda::grouped_gemm_wgrad(S(), cuda::error_word(0), tx, ddx->p, td, ddd->p,
                                     static_cast<const int32_t*>(doff->p), E, R, K, N, static_cast<float*>(ddw->p));
            std::vector<float> got = fetch<float>(*ddw, E * K * N);
            size_t nans;
            const double rel = rel_frobenius(got, want, nans);
            bool empty_zero = true;
            for (int64_t e = 0; e < E; ++e)
              if (off[e] == off[e + 1])
                for (int64_t i = e * K * N; i < (e + 1) * K * N; ++i) empty_zero &= got[i] == 0.0f;
            char buf[160];
            std::snprintf(buf, sizeof buf, "relative Frobenius error %.3g, %zu NaN outputs, empty segments zero %d",
                          rel, nans, empty_zero ? 1 : 0);
            expect(nans == 0 && rel < 1e-2 && empty_zero, buf);
          });
      }
  add("grouped_gemm bad offsets", [] {
    std::vector<int32_t> off = {0, 5, 3, 9};  // decreasing, and past R = 8
    std::vector<float> x(8 * 4, 1.0f), w(3 * 4 * 2, 1.0f);
    auto dx = dev_of(x), dw = dev_of(w), doff = dev_of(off), dy = dev_poisoned(8 * 2 * 4);
    cuda::grouped_gemm(S(), cuda::error_word(0), DType::F32, dx->p, DType::F32, dw->p, false,
                       static_cast<const int32_t*>(doff->p), 3, 8, 4, 2, DType::F32, dy->p);
    expect_device_error("grouped");
  });
}

void add_moe_cases() {
  add_moe_routing_cases();
  add_moe_row_cases();
  add_moe_swiglu_cases();
  add_moe_gemm_cases();
}

// ---- CPU-only sanity checks against double references ------------------------------------
void cpu_sanity() {
  g_case = "cpu unary exp";
  {
    std::vector<float> x = rand_f(1000, -10, 10), y(1000);
    cpu::unary(UnaryOp::Exp, DType::F32, x.data(), y.data(), 1000, 0.0f);
    bool ok = true;
    for (int i = 0; i < 1000; ++i) ok &= std::fabs(y[i] - std::exp(double(x[i]))) <= 1e-6 * std::exp(double(x[i]));
    expect(ok, "exp vs double");
  }
  g_case = "cpu binary broadcast add";
  {
    std::vector<float> a = rand_f(33 * 7), b = rand_f(5 * 7), y(33 * 5 * 7);
    StridedView av = contiguous_view({33, 5, 7}), bv = contiguous_view({33, 5, 7});
    av.strides[0] = 7; av.strides[1] = 0;
    bv.strides[0] = 0;
    cpu::binary(BinaryOp::Add, DType::F32, a.data(), av, b.data(), bv, y.data(), 33 * 5 * 7);
    bool ok = true;
    for (int i = 0; i < 33; ++i)
      for (int j = 0; j < 5; ++j)
        for (int k = 0; k < 7; ++k) ok &= y[(i * 5 + j) * 7 + k] == a[i * 7 + k] + b[j * 7 + k];
    expect(ok, "broadcast add");
  }
  g_case = "cpu reduce sum";
  {
    std::vector<float> x = rand_f(4 * 1000 * 7), y(4 * 7);
    cpu::reduce(ReduceOp::Sum, DType::F32, x.data(), y.data(), 4, 1000, 7);
    bool ok = true;
    for (int o = 0; o < 4; ++o)
      for (int i = 0; i < 7; ++i) {
        double s = 0;
        for (int j = 0; j < 1000; ++j) s += x[(o * 1000 + j) * 7 + i];
        ok &= std::fabs(y[o * 7 + i] - s) <= 1e-5 * (1 + std::fabs(s));
      }
    expect(ok, "sum vs double");
  }
  g_case = "cpu softmax";
  {
    std::vector<float> x = rand_f(3 * 333, -5, 5), y(3 * 333);
    cpu::softmax(false, DType::F32, x.data(), y.data(), 3, 333, 1);
    bool ok = true;
    for (int o = 0; o < 3; ++o) {
      double m = -1e300, s = 0;
      for (int j = 0; j < 333; ++j) m = std::fmax(m, x[o * 333 + j]);
      for (int j = 0; j < 333; ++j) s += std::exp(x[o * 333 + j] - m);
      for (int j = 0; j < 333; ++j) ok &= std::fabs(y[o * 333 + j] - std::exp(x[o * 333 + j] - m) / s) <= 1e-6;
    }
    expect(ok, "softmax vs double");
  }
  g_case = "cpu gemm_f32";
  {
    GemmShape g;
    g.M = 37; g.N = 29; g.K = 41; g.transB = true;
    g.lda = 41; g.ldb = 41; g.ldc = 29;
    std::vector<float> A = rand_f(37 * 41), B = rand_f(29 * 41), C(37 * 29);
    cpu::gemm_f32(g, A.data(), B.data(), C.data());
    bool ok = true;
    for (int m = 0; m < 37; ++m)
      for (int n = 0; n < 29; ++n) {
        double s = 0;
        for (int k = 0; k < 41; ++k) s += double(A[m * 41 + k]) * B[n * 41 + k];
        ok &= std::fabs(C[m * 29 + n] - s) <= 1e-4;
      }
    expect(ok, "gemm vs double");
  }
  g_case = "cpu random_uniform";
  {
    std::vector<float> y(1001);
    cpu::random_uniform(DType::F32, y.data(), 1001, 7, 3, 0.0f, 1.0f);
    bool ok = true;
    for (int i = 0; i < 1001; ++i) ok &= y[i] == philox_uniform(7, 3, i) && y[i] > 0.0f && y[i] <= 1.0f;
    expect(ok, "uniform = philox_uniform");
  }
  g_case = "cpu moe_route expert choice vs brute force";
  {
    const MoeLayout L = ops::make_moe_layout({4, 4}, {0, 1}, "native test");
    RoutingParams p;
    p.capacity = 1.37;
    MoeHostRoute h = host_route(L, 200, p, 0, true);
    bool ok = h.expert_offsets[0] == 0;
    for (int e = 0; e < L.num_experts; ++e) {
      const int g = e < 4 ? 0 : 1;
      std::vector<int32_t> rows(h.perm.begin() + h.offsets[g], h.perm.begin() + h.offsets[g + 1]);
      const int64_t k = expert_choice_capacity(static_cast<int64_t>(rows.size()), 4, p.capacity);
      std::stable_sort(rows.begin(), rows.end(), [&](int32_t a, int32_t b) {
        return score_key(h.scores[a * 8 + e]) > score_key(h.scores[b * 8 + e]);
      });
      rows.resize(static_cast<size_t>(k));
      std::sort(rows.begin(), rows.end());
      ok &= h.expert_offsets[e + 1] - h.expert_offsets[e] == k;
      for (int64_t i = 0; ok && i < k; ++i) {
        const int32_t s = h.expert_offsets[e] + static_cast<int32_t>(i);
        ok &= h.slot_row[s] == rows[i] && h.slot_gate[s] == h.scores[rows[i] * 8 + e] &&
              h.row_slots[rows[i] * 4 + (e % 4)] == s;
      }
    }
    expect(ok, "expert-choice slots = the k best rows of each expert in row order");
  }
  g_case = "cpu index_select bad index";
  {
    std::vector<float> x(10, 1.0f), y(2);
    std::vector<int32_t> idx = {1, 10};
    std::string code;
    try { cpu::index_select(DType::F32, x.data(), idx.data(), y.data(), 1, 10, 2, 1); } catch (const MomaException& e) { code = e.code(); }
    expect(code == "ERR_RANGE", "ERR_RANGE, got '" + code + "'");
  }
}

}  // namespace

int main() {
  std::printf("moma_native_test: CUDA compiled=%d devices=%d runtime=%d driver=%d cpu gemm isa=%s\n",
              cuda::compiled() ? 1 : 0, cuda::device_count(), cuda::runtime_version(), cuda::driver_version(),
              cpu::gemm_isa());
  try {
    cpu_sanity();
  } catch (const std::exception& e) {
    failure(std::string("exception: ") + e.what());
  }
  add_runtime_cases();
  add_creation_cases();
  add_cast_cases();
  add_layout_cases();
  add_elementwise_cases();
  add_reduce_cases();
  add_indexing_cases();
  add_gemm_cases();
  add_moe_cases();
  if (cuda::device_count() == 0) {
    g_skipped = static_cast<int>(g_cuda_cases.size());
    std::printf("moma_native_test: no CUDA device; %d CUDA cases skipped\n", g_skipped);
  } else {
    for (const Case& c : g_cuda_cases) {
      g_case = c.name;
      int before = g_failed;
      try {
        c.fn();
      } catch (const MomaException& e) {
        failure(std::string("exception ") + e.code() + ": " + e.what());
      } catch (const std::exception& e) {
        failure(std::string("exception: ") + e.what());
      }
      if (g_failed > before) {
        // make sure a failed case leaves no pending device error for the next one
        try { cuda::synchronize(0, "cleanup"); } catch (...) {}
      }
    }
  }
  std::printf("%d passed, %d failed, %d skipped\n", g_passed, g_failed, g_skipped);
  return g_failed ? 1 : 0;
}
