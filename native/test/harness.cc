// The shared test machinery declared in harness.h: outcome counters, inputs, device buffers,
// the case registry and the comparisons.
#include "harness.h"

#include <cmath>

#include "../../csrc/core/bf16.h"
#include "../../csrc/core/error.h"

namespace moma::native_test {

int g_passed = 0, g_failed = 0, g_skipped = 0;
std::string g_case;

void failure(const std::string& msg) {
  ++g_failed;
  std::printf("FAIL %s: %s\n", g_case.c_str(), msg.c_str());
}

std::mt19937_64 g_rng(20240611);

std::vector<float> rand_f(size_t n, float lo, float hi) {
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

void compare(DType dt, const std::vector<uint8_t>& got, const std::vector<uint8_t>& want, size_t n, Tol tol,
             const std::vector<double>* scale) {
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

void Dev::poison() {
  std::vector<uint8_t> ff(bytes, 0xFF);
  cuda::copy_h2d(0, p, ff.data(), bytes);
}
std::vector<uint8_t> Dev::get() {
  cuda::synchronize(0, g_case.c_str());
  std::vector<uint8_t> h(bytes);
  cuda::copy_d2h(0, h.data(), p, bytes);
  return h;
}

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

std::vector<Case> g_cuda_cases;
void add(const std::string& name, std::function<void()> fn) { g_cuda_cases.push_back({name, std::move(fn)}); }

std::unique_ptr<Dev> dev_poisoned(size_t bytes) {
  auto d = std::make_unique<Dev>(std::max<size_t>(4, bytes));
  d->poison();
  return d;
}

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

void expect_device_error(const std::string& op) {
  std::string code, msg;
  try { cuda::synchronize(0, "test"); } catch (const MomaException& e) { code = e.code(); msg = e.what(); }
  expect(code == "ERR_RANGE" && msg.find(op) != std::string::npos, "expected ERR_RANGE from " + op + ", got '" + code + "' " + msg);
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

}  // namespace moma::native_test
