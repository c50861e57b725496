// Shared machinery of moma_native_test (built from native/test/*.cc): every CUDA kernel
// (cuda/kernels.h, cuda/kernels_moe.h) checked against its CPU twin (csrc/cpu/) on random inputs of
// awkward sizes, plus the CUDA runtime, plus a few CPU kernels against double references. Plain
// C++: only moma's runtime and kernel headers, no CUDA headers.
//
// What the harness offers:
// - Outcomes: pass() / failure(msg) / expect(ok, msg) count into g_passed / g_failed; a failure
//   prints "FAIL <g_case>: <msg>". g_skipped counts CUDA cases not run (no device).
// - Cases: add(name, fn) registers a CUDA case in g_cuda_cases. main() calls the case groups
//   declared below, then runs the cases in registration order with g_case set to the name, or
//   skips them all without a CUDA device. cpu_sanity() runs directly, device or not.
// - Inputs: one seeded generator g_rng (rand_f, rand_i) drawn from as the cases run, so the order
//   of cases fixes every input; make() builds a host buffer of any dtype from floats.
// - Device buffers: Dev, whose poison() sets every byte to 0xFF (NaN for floats, -1 / 255 for
//   ints) before a kernel writes it, so that unwritten elements fail; dev_of / dev_poisoned /
//   fetch for typed vectors.
// - Comparisons. compare() with a Tol: exact for integer ops, layout ops, casts and random bits;
//   rel 1e-5 for float32 element-wise math; 1e-4 (relative to sum |x|) for float32 reductions; one
//   bf16 ulp for bf16 results that are rounded from float math. GEMMs: relative Frobenius error
//   < 1e-2 against the CPU float32 GEMM run on bf16-rounded inputs. expect_equal (bitwise, any NaN
//   equals any NaN) and expect_close (rel |want| + abs per element) for typed vectors;
//   expect_device_error for the device error word.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "../../csrc/core/dtype.h"
#include "../../csrc/core/kernel_types.h"
#include "../../cuda/runtime.h"

namespace moma::native_test {

// ---- outcomes ----------------------------------------------------------------------------
extern int g_passed, g_failed, g_skipped;
extern std::string g_case;  // name of the running case, printed with each failure

inline void pass() { ++g_passed; }
void failure(const std::string& msg);
inline void expect(bool ok, const std::string& msg) { ok ? pass() : failure(msg); }

// ---- inputs ------------------------------------------------------------------------------
extern std::mt19937_64 g_rng;

std::vector<float> rand_f(size_t n, float lo = -2.0f, float hi = 2.0f);
std::vector<int32_t> rand_i(size_t n, int32_t lo, int32_t hi);

// Host buffer holding n elements of dtype dt, filled from floats (rounded per dtype).
std::vector<uint8_t> make(DType dt, const std::vector<float>& f);
// Element i of a host buffer of dtype dt.
double elem(DType dt, const std::vector<uint8_t>& b, size_t i);

enum class Tol { Exact, F32Elem, Bf16Ulp, Reduce };

// Compares n elements of dtype dt. `scale` (per element, optional) is the magnitude used for the
// reduction tolerance (sum |x|).
void compare(DType dt, const std::vector<uint8_t>& got, const std::vector<uint8_t>& want, size_t n, Tol tol,
             const std::vector<double>* scale = nullptr);

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
  void poison();
  std::vector<uint8_t> get();  // synchronizes (errors name g_case), then copies the buffer back
};

inline constexpr DType kAll[] = {DType::F32, DType::BF16, DType::I32, DType::U8};
inline constexpr DType kFloat[] = {DType::F32, DType::BF16};
inline constexpr int64_t kSizes[] = {1, 7, 1000, 33333};

StridedView contiguous_view(const std::vector<int64_t>& shape);

// ---- CUDA cases --------------------------------------------------------------------------
struct Case {
  std::string name;
  std::function<void()> fn;
};
extern std::vector<Case> g_cuda_cases;
void add(const std::string& name, std::function<void()> fn);

// ---- typed vectors on the device ---------------------------------------------------------
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
std::unique_ptr<Dev> dev_poisoned(size_t bytes);
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
                  const std::string& what);

std::vector<float> as_floats(DType dt, const std::vector<uint8_t>& b, size_t n);

// Expects the next synchronisation to report ERR_RANGE naming `op`.
void expect_device_error(const std::string& op);

// sqrt(sum (got - want)^2 / sum want^2); nan_count: NaN elements of got.
double rel_frobenius(const std::vector<float>& got, const std::vector<float>& want, size_t& nan_count);

// ---- case groups -------------------------------------------------------------------------
// Each registers its CUDA cases with add(); main() calls them in this order.
// core_cases.cc
void add_runtime_cases();
void add_creation_cases();
void add_cast_cases();
void add_layout_cases();
void add_elementwise_cases();
void add_reduce_cases();
void add_indexing_cases();
void add_gemm_cases();
// gemm_cases.cc (pipelined tensor-core, f32 and fused grouped GEMMs)
void add_gemm_kernel_cases();
// moe_cases.cc
void add_moe_cases();
// nn_cases.cc (transformer kernels, cuda/kernels_nn.h)
void add_nn_cases();
// coverage_cases.cc (mod_select, segment_starts, RoPE tables at their launch boundaries)
void add_coverage_cases();

// CPU kernels against double references, run directly in every build (cpu_sanity.cc); its
// mixture-of-experts routing check is cpu_moe_sanity (moe_host.cc), its GEMM checks (float32 and
// bf16 operands / outputs, the grouped GEMMs and their epilogues) cpu_gemm_sanity
// (cpu_gemm_sanity.cc).
void cpu_sanity();
void cpu_moe_sanity();
void cpu_gemm_sanity();
void cpu_gemm_skinny_sanity();
// The grouped expert GEMM driver on every kernel this CPU runs (cpu_grouped_gemm.cc).
void cpu_grouped_gemm_sanity();
void cpu_attention_sanity();
// CPU collectives over gloo, 2 and 3 ranks as threads on loopback, and their failures (dist_checks.cc).
void dist_checks();

}  // namespace moma::native_test
