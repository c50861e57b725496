// The skinny CPU GEMMs (csrc/cpu/gemm_skinny.cc) against float64 references: its three forms
// (rows: N <= 16; reduce: N <= 16 with A transposed; wide: K <= 16) at awkward sizes, with every
// transpose, padded leading dimensions, alpha, beta (beta == 0 with NaN in C: C not read),
// float32 and bf16 operands and outputs. Also: the same bits for 1, 2 and 3 threads; a bf16
// operand gives the bits of its widened float32 copy; cpu::gemm sends exactly these shapes here
// (the same bits as gemm_skinny) and a non-qualifying shape is refused.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "../../csrc/core/bf16.h"
#include "../../csrc/core/error.h"
#include "../../csrc/cpu/gemm_kernels.h"
#include "../../csrc/cpu/kernels.h"
#include "harness.h"

namespace moma::native_test {
namespace {

constexpr DType kF32 = DType::F32;
constexpr DType kBF16 = DType::BF16;

struct SkinnyCase {
  int64_t M, N, K;
  bool transA, transB;
};

std::vector<float> as_f32(DType dt, const std::vector<uint8_t>& b) {
  std::vector<float> out(b.size() / dtype_size(dt));
  for (size_t i = 0; i < out.size(); ++i) out[i] = static_cast<float>(elem(dt, b, i));
  return out;
}

std::string tag_of(const SkinnyCase& c, DType da, DType db, DType dc, float alpha, float beta, int threads) {
  char buf[200];
  std::snprintf(buf, sizeof buf, "cpu gemm skinny %lldx%lldx%lld tA=%d tB=%d %s*%s->%s alpha=%g beta=%g threads=%d",
                static_cast<long long>(c.M), static_cast<long long>(c.N), static_cast<long long>(c.K), c.transA,
                c.transB, dtype_name(da), dtype_name(db), dtype_name(dc), alpha, beta, threads);
  return buf;
}

// One call checked against the float64 reference; returns C as computed (for bit comparisons).
std::vector<uint8_t> check_case(const SkinnyCase& c, DType da, DType db, DType dc, float alpha, float beta,
                                int threads) {
  GemmShape g;
  g.M = c.M;
  g.N = c.N;
  g.K = c.K;
  g.transA = c.transA;
  g.transB = c.transB;
  g.alpha = alpha;
  g.beta = beta;
  const int64_t rowsA = c.transA ? c.K : c.M, colsA = c.transA ? c.M : c.K;
  const int64_t rowsB = c.transB ? c.N : c.K, colsB = c.transB ? c.K : c.N;
  g.lda = colsA + 3;
  g.ldb = colsB + 1;
  g.ldc = c.N + 2;
  const std::vector<uint8_t> a = make(da, rand_f(size_t(rowsA * g.lda), -1, 1));
  const std::vector<uint8_t> b = make(db, rand_f(size_t(rowsB * g.ldb), -1, 1));
  std::vector<uint8_t> got;
  if (beta == 0.0f) {
    // NaN everywhere: beta == 0 must not read C
    got = make(dc, std::vector<float>(size_t(c.M * g.ldc), std::numeric_limits<float>::quiet_NaN()));
  } else {
    got = make(dc, rand_f(size_t(c.M * g.ldc), -1, 1));
  }
  const std::vector<float> c0 = as_f32(dc, got), wa = as_f32(da, a), wb = as_f32(db, b);
  cpu::gemm_skinny(da, a.data(), db, b.data(), dc, got.data(), g, threads);

  const std::string tag = tag_of(c, da, db, dc, alpha, beta, threads);
  // float32 sums of K products plus the lane / block reduction and the epilogue: K + 8 roundings
  const double u = std::ldexp(1.0, -24), n = double(c.K + 8), gamma = n * u / (1.0 - n * u);
  size_t bad = 0;
  std::string first;
  for (int64_t i = 0; i < c.M; ++i) {
    for (int64_t j = 0; j < c.N; ++j) {
      double want = 0.0, mag = 0.0;
      for (int64_t k = 0; k < c.K; ++k) {
        const double x = wa[size_t(c.transA ? k * g.lda + i : i * g.lda + k)];
        const double y = wb[size_t(c.transB ? j * g.ldb + k : k * g.ldb + j)];
        want += x * y;
        mag += std::fabs(x * y);
      }
      want *= alpha;
      mag *= std::fabs(alpha);
      const size_t ci = size_t(i * g.ldc + j);
      if (beta != 0.0f) {
        want += double(beta) * c0[ci];
        mag += std::fabs(double(beta) * c0[ci]);
      }
      const double lim = gamma * mag + 1e-30 + (dc == kBF16 ? std::ldexp(std::fabs(want), -8) : 0.0);
      const double v = elem(dc, got, ci);
      if (!(std::fabs(v - want) <= lim)) {
        if (!bad) {
          char buf[160];
          std::snprintf(buf, sizeof buf, " (first at [%lld, %lld]: got %.9g want %.9g)", static_cast<long long>(i),
                        static_cast<long long>(j), v, want);
          first = buf;
        }
        ++bad;
      }
    }
  }
  // the padding columns of C are untouched
  size_t touched = 0;
  for (int64_t i = 0; i < c.M; ++i)
    for (int64_t j = c.N; j < g.ldc; ++j) {
      const size_t ci = size_t(i * g.ldc + j);
      const double before = c0[ci], after = elem(dc, got, ci);
      if (!(before == after || (std::isnan(before) && std::isnan(after)))) ++touched;
    }
  expect(bad == 0, tag + ": " + std::to_string(bad) + " elements off the float64 reference" + first);
  expect(touched == 0, tag + ": wrote past N in the padded leading dimension");
  return got;
}

void shape_cases() {
  const SkinnyCase rows[] = {{37, 8, 1029, false, false}, {1, 1, 1, false, true}, {5, 16, 17, false, true},
                             {64, 13, 300, false, false}, {2049, 8, 512, false, false}, {3, 9, 16, false, true}};
  const SkinnyCase reduce[] = {{515, 8, 2053, true, false}, {17, 3, 5, true, true}, {33, 16, 600, true, false},
                               {130, 8, 8192, true, false}, {47, 11, 16400, true, true}, {16, 8, 1, true, false}};
  const SkinnyCase wide[] = {{301, 1029, 8, false, true}, {3, 17, 1, true, false}, {50, 100, 16, true, true},
                             {257, 40, 7, false, false}, {2048, 512, 8, false, true}};
  const DType dts[][3] = {{kF32, kF32, kF32}, {kBF16, kBF16, kF32}, {kF32, kBF16, kBF16},
                          {kBF16, kF32, kF32}, {kBF16, kBF16, kBF16}};
  const float ab[][2] = {{1.0f, 0.0f}, {0.75f, 0.5f}, {1.0f, 1.0f}};
  for (const auto* set : {&rows, &reduce}) {
    for (const SkinnyCase& c : *set) {
      g_case = "cpu gemm skinny shapes";
      for (const auto& dt : dts)
        for (const auto& s : ab) check_case(c, dt[0], dt[1], dt[2], s[0], s[1], 2);
    }
  }
  for (const SkinnyCase& c : wide)
    for (const auto& dt : dts)
      for (const auto& s : ab) check_case(c, dt[0], dt[1], dt[2], s[0], s[1], 2);
}

// Bits independent of the thread count, and of whether a bf16 operand came widened.
void determinism_cases() {
  g_case = "cpu gemm skinny determinism";
  const SkinnyCase cases[] = {{2049, 8, 1024, false, false}, {1024, 8, 8192, true, false},
                              {4099, 1024, 8, false, true}, {777, 13, 20000, true, true}};
  for (const SkinnyCase& c : cases) {
    for (DType dt : {kF32, kBF16}) {
      GemmShape g;
      g.M = c.M;
      g.N = c.N;
      g.K = c.K;
      g.transA = c.transA;
      g.transB = c.transB;
      g.lda = c.transA ? c.M : c.K;
      g.ldb = c.transB ? c.K : c.N;
      g.ldc = c.N;
      g.beta = 0.5f;
      const std::vector<uint8_t> a = make(dt, rand_f(size_t(c.M * c.K), -1, 1));
      const std::vector<uint8_t> b = make(dt, rand_f(size_t(c.K * c.N), -1, 1));
      const std::vector<float> c0 = rand_f(size_t(c.M * c.N), -1, 1);
      std::vector<std::vector<float>> outs;
      for (int threads : {1, 2, 3}) {
        std::vector<float> out = c0;
        cpu::gemm_skinny(dt, a.data(), dt, b.data(), kF32, out.data(), g, threads);
        outs.push_back(out);
      }
      const std::string tag = tag_of(c, dt, dt, kF32, 1.0f, 0.5f, 0);
      expect(outs[0] == outs[1] && outs[0] == outs[2], tag + ": 1, 2 and 3 threads give the same bits");
      if (dt == kBF16) {
        const std::vector<float> wa = as_f32(dt, a), wb = as_f32(dt, b);
        std::vector<float> widened = c0;
        cpu::gemm_skinny(kF32, wa.data(), kF32, wb.data(), kF32, widened.data(), g, 2);
        expect(widened == outs[0], tag + ": bf16 operands give the bits of their widened float32 copies");
      }
      std::vector<float> via_gemm = c0;
      cpu::gemm(kCpuLaunch, dt, a.data(), dt, b.data(), kF32, via_gemm.data(), g);
      expect(via_gemm == outs[0], tag + ": cpu::gemm sends the shape to gemm_skinny");
    }
  }
}

void dispatch_cases() {
  g_case = "cpu gemm skinny dispatch";
  GemmShape g;
  g.M = 100;
  g.N = 17;
  g.K = 17;
  expect(!cpu::gemm_skinny_applies(g), "N = K = 17: the blocked driver");
  g.N = 16;
  expect(cpu::gemm_skinny_applies(g), "N = 16: skinny");
  g.N = 17;
  g.K = 16;
  expect(cpu::gemm_skinny_applies(g), "K = 16: skinny");
  g.batch = 2;
  expect(!cpu::gemm_skinny_applies(g), "batch 2: the blocked driver");
  g.batch = 1;
  g.K = 0;
  expect(!cpu::gemm_skinny_applies(g), "K = 0: the blocked driver (beta scaling only)");
  g.K = 17;
  std::vector<float> a(100 * 17), b(17 * 17), c(100 * 17);
  g.lda = g.ldb = g.ldc = 17;
  std::string code;
  try {
    cpu::gemm_skinny(kF32, a.data(), kF32, b.data(), kF32, c.data(), g, 1);
  } catch (const MomaException& e) {
    code = e.code();
  }
  expect(code == "ERR_INTERNAL", "gemm_skinny refuses a shape with N and K > 16 (got '" + code + "')");
}

}  // namespace

void cpu_gemm_skinny_sanity() {
  shape_cases();
  determinism_cases();
  dispatch_cases();
}

}  // namespace moma::native_test
