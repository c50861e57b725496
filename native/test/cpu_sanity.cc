// A few CPU kernels (csrc/cpu/kernels.h) against double references and brute force; these run
// with or without a CUDA device; and the portable math of the random generators (portable_math.h)
// against long double libm.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "../../csrc/core/error.h"
#include "../../csrc/core/philox.h"
#include "../../csrc/core/portable_math.h"
#include "../../csrc/cpu/kernels.h"
#include "harness.h"

namespace moma::native_test {

namespace {

// Error of got in units of the last place of the exact value (long double libm as the reference:
// 64-bit significand, so its own error is ~2^-11 double ulp).
double ulps(double got, long double exact) {
  const double w = static_cast<double>(exact);
  const double ulp = std::nextafter(std::fabs(w), INFINITY) - std::fabs(w);
  return static_cast<double>(std::fabs(static_cast<long double>(got) - exact)) / ulp;
}

// csrc/core/portable_math.h against long double libm, and the random formulas built on it
// (philox.h) against the libm formulas they replaced.
void portable_math_sanity() {
  g_case = "cpu portable log / exp / cos / sin vs libm";
  {
    std::uniform_real_distribution<double> u(0.0, 1.0);
    double e_log = 0, e_exp = 0, e_cos = 0, e_sin = 0;
    constexpr int n = 400000;
    for (int i = 0; i < n; ++i) {
      // log: all binades, near 1 (the |f| < 2^-20 path and both polynomial forms), the open uniforms
      double x = std::exp2(u(g_rng) * 2000.0 - 1000.0) * (1.0 + u(g_rng));
      if (i % 4 == 1) x = 1.0 + (u(g_rng) - 0.5) * std::exp2(-10.0 - 40.0 * u(g_rng));
      if (i % 4 == 2) x = (static_cast<double>(g_rng() >> 40) + 0.5) * (1.0 / 16777216.0);
      if (i % 64 == 3) x = 4.9406564584124654e-324 * static_cast<double>(1 + (g_rng() >> 20));  // subnormal
      e_log = std::max(e_log, ulps(pmath::log(x), logl(static_cast<long double>(x))));
      // normal results (glibc's expl itself is off by ~0.5 double ulp near exp(-708))
      double a = (u(g_rng) * 2.0 - 1.0) * 700.0;
      if (i % 3 == 1) a = (u(g_rng) * 2.0 - 1.0) * 2.0;
      if (i % 3 == 2) a = (u(g_rng) * 2.0 - 1.0) * 104.0;
      e_exp = std::max(e_exp, ulps(pmath::exp(a), expl(static_cast<long double>(a))));
      // cos / sin: Box-Muller angles [0, 2 pi), small, and up to 2^19 pi/2 (RoPE-sized)
      double t = 6.283185307179586 * u(g_rng);
      if (i % 4 == 1) t = (u(g_rng) * 2.0 - 1.0) * 823000.0;
      if (i % 4 == 2) t = u(g_rng) * 1e-6;
      if (i % 4 == 3) t = (u(g_rng) * 2.0 - 1.0) * 100.0;
      e_cos = std::max(e_cos, ulps(pmath::cos(t), cosl(static_cast<long double>(t))));
      e_sin = std::max(e_sin, ulps(pmath::sin(t), sinl(static_cast<long double>(t))));
    }
    char buf[200];
    std::snprintf(buf, sizeof buf, "max error over %d inputs each: log %.3f, exp %.3f, cos %.3f, sin %.3f ulp (bound 1)",
                  n, e_log, e_exp, e_cos, e_sin);
    std::printf("  %s\n", buf);
    expect(e_log < 1.0 && e_exp < 1.0 && e_cos < 1.0 && e_sin < 1.0, buf);
    const double inf = INFINITY;
    expect(pmath::log(0.0) == -inf && pmath::log(inf) == inf && std::isnan(pmath::log(-1.0)) &&
               pmath::log(1.0) == 0.0 && pmath::exp(0.0) == 1.0 && pmath::exp(710.0) == inf &&
               pmath::exp(-746.0) == 0.0 && std::isnan(pmath::exp(NAN)) && pmath::cos(0.0) == 1.0 &&
               pmath::sin(0.0) == 0.0,
           "special values");
  }
  g_case = "cpu portable expf: correctly rounded float exp";
  {
    int not_cr = 0;
    for (int i = 0; i < 200000; ++i) {
      const float x = (rand_f(1, -103.0f, 88.0f))[0];
      const float got = pmath::expf(x), cr = static_cast<float>(expl(static_cast<long double>(x)));
      not_cr += std::memcmp(&got, &cr, sizeof got) != 0;
    }
    expect(not_cr <= 1, "pmath::expf differs from the correctly rounded value for " + std::to_string(not_cr) +
                            " of 200000 inputs");
  }
  g_case = "cpu philox normal / gumbel = the libm formulas";
  {
    // The portable functions replaced double libm log / cos; rounded to float the results agree
    // except when the exact value is within a double ulp of a float rounding boundary.
    int normal_diff = 0, gumbel_diff = 0;
    double sum = 0, sum2 = 0;
    constexpr int n = 1000000;
    for (int i = 0; i < n; ++i) {
      const Philox4 r = philox4x32_10(11 + static_cast<uint64_t>(i) / 2, 99);
      const uint32_t w1 = i % 2 ? r.v[2] : r.v[0], w2 = i % 2 ? r.v[3] : r.v[1];
      const double u1 = (static_cast<double>(w1) + 1.0) * (1.0 / 4294967296.0);
      const double u2 = static_cast<double>(w2) * (1.0 / 4294967296.0);
      const float libm_normal = static_cast<float>(std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
      const float z = philox_normal(99, 11, static_cast<uint64_t>(i));
      normal_diff += std::memcmp(&z, &libm_normal, sizeof z) != 0;
      sum += z;
      sum2 += double(z) * z;
      const double g1 = philox_uniform_open(99, 11, 2 * static_cast<uint64_t>(i));
      const double g2 = philox_uniform_open(99, 11, 2 * static_cast<uint64_t>(i) + 1);
      const float libm_gumbel = static_cast<float>(-std::log(-std::log(g1)) + std::log(-std::log(g2)));
      const float g = philox_gumbel_difference(99, 11, static_cast<uint64_t>(i));
      gumbel_diff += std::memcmp(&g, &libm_gumbel, sizeof g) != 0;
    }
    const double mean = sum / n, var = sum2 / n - mean * mean;
    expect(normal_diff <= 2 && gumbel_diff <= 2,
           "float results differing from the libm formulas: normal " + std::to_string(normal_diff) + ", gumbel " +
               std::to_string(gumbel_diff) + " of " + std::to_string(n));
    expect(std::fabs(mean) < 5e-3 && std::fabs(var - 1.0) < 5e-3,
           "normal moments: mean " + std::to_string(mean) + ", variance " + std::to_string(var));
  }
}

}  // namespace

void cpu_sanity() {
  g_case = "cpu unary exp";
  {
    std::vector<float> x = rand_f(1000, -10, 10), y(1000);
    cpu::unary(kCpuLaunch, UnaryOp::Exp, DType::F32, x.data(), y.data(), 1000, 0.0f);
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
    cpu::binary(kCpuLaunch, BinaryOp::Add, DType::F32, a.data(), av, b.data(), bv, y.data(), 33 * 5 * 7);
    bool ok = true;
    for (int i = 0; i < 33; ++i)
      for (int j = 0; j < 5; ++j)
        for (int k = 0; k < 7; ++k) ok &= y[(i * 5 + j) * 7 + k] == a[i * 7 + k] + b[j * 7 + k];
    expect(ok, "broadcast add");
  }
  g_case = "cpu reduce sum";
  {
    std::vector<float> x = rand_f(4 * 1000 * 7), y(4 * 7);
    cpu::reduce(kCpuLaunch, ReduceOp::Sum, DType::F32, x.data(), y.data(), 4, 1000, 7);
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
    cpu::softmax(kCpuLaunch, false, DType::F32, x.data(), y.data(), 3, 333, 1);
    bool ok = true;
    for (int o = 0; o < 3; ++o) {
      double m = -1e300, s = 0;
      for (int j = 0; j < 333; ++j) m = std::fmax(m, x[o * 333 + j]);
      for (int j = 0; j < 333; ++j) s += std::exp(x[o * 333 + j] - m);
      for (int j = 0; j < 333; ++j) ok &= std::fabs(y[o * 333 + j] - std::exp(x[o * 333 + j] - m) / s) <= 1e-6;
    }
    expect(ok, "softmax vs double");
  }
  g_case = "cpu gemm float32";
  {
    GemmShape g;
    g.M = 37; g.N = 29; g.K = 41; g.transB = true;
    g.lda = 41; g.ldb = 41; g.ldc = 29;
    std::vector<float> A = rand_f(37 * 41), B = rand_f(29 * 41), C(37 * 29);
    cpu::gemm(kCpuLaunch, DType::F32, A.data(), DType::F32, B.data(), DType::F32, C.data(), g);
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
    cpu::random_uniform(kCpuLaunch, DType::F32, y.data(), 1001, 7, 3, 0.0f, 1.0f);
    bool ok = true;
    for (int i = 0; i < 1001; ++i) ok &= y[i] == philox_uniform(7, 3, i) && y[i] > 0.0f && y[i] <= 1.0f;
    expect(ok, "uniform = philox_uniform");
  }
  portable_math_sanity();
  cpu_moe_sanity();
  cpu_gemm_sanity();
  cpu_gemm_skinny_sanity();
  cpu_attention_sanity();
  g_case = "cpu index_select bad index";
  {
    std::vector<float> x(10, 1.0f), y(2);
    std::vector<int32_t> idx = {1, 10};
    std::string code;
    try { cpu::index_select(kCpuLaunch, DType::F32, x.data(), idx.data(), y.data(), 1, 10, 2, 1); } catch (const MomaException& e) { code = e.code(); }
    expect(code == "ERR_RANGE", "ERR_RANGE, got '" + code + "'");
  }
}

}  // namespace moma::native_test
