// The CPU GEMMs (csrc/cpu/gemm.cc, grouped_gemm.cc, grouped_epilogue.cc) against double
// references, run in every build (no device needed):
// - cpu::gemm for every dtype combination (A, B, C each float32 or bf16), transposes, padded
//   leading dimensions, strided and broadcast batches (also the whole-matrix-per-thread path),
//   K past one KC slice, alpha, beta != 0 (a bf16 C is read widened) and K = 0. Each result is
//   (1) within float32 summation error of the double reference on the widened inputs (plus one
//   bf16 rounding for a bf16 C): |got - want| <= 1e-5 (|alpha| sum_k |a b| + |beta c|) + 1e-6
//   (+ 2^-8 |want|), and (2) bit-identical to the route the op layer took before the GEMMs took
//   dtypes: widen bf16 operands to float32 (exact), float32 GEMM, round a bf16 C once (nearest
//   even). Padding columns of C stay untouched.
// - grouped_gemm, grouped_gemm_scaled, grouped_gemm_swiglu (with and without h1 / h3) and
//   grouped_gemm_wgrad with float32 / bf16 x, w, dy and outputs, both weight layouts, ragged and
//   empty segments, rows past offsets[E]: bit-identical to the float32 kernels on the widened
//   inputs with each output rounded once, and within the same bounds of double references.
// - the float32 epilogues against double references; bad offsets throw ERR_RANGE, bad dtypes
//   ERR_DTYPE.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "../../csrc/core/error.h"
#include "../../csrc/cpu/kernels.h"
#include "../../csrc/cpu/kernels_moe.h"
#include "harness.h"

namespace moma::native_test {
namespace {

constexpr DType kF32 = DType::F32;

// The float32 values of a host buffer of dtype dt (bf16 widened exactly).
std::vector<float> widened(DType dt, const std::vector<uint8_t>& b) {
  return as_floats(dt, b, b.size() / dtype_size(dt));
}

// |got - want| <= 1e-5 mag + 1e-6, plus 2^-8 |want| for a bf16 result (its one rounding).
void expect_near_ref(DType dt, const std::vector<uint8_t>& got, const std::vector<double>& want,
                     const std::vector<double>& mag, const std::vector<size_t>& index, const std::string& what) {
  size_t bad = 0, first = 0;
  for (size_t j = 0; j < index.size(); ++j) {
    const double g = elem(dt, got, index[j]), w = want[j];
    const double lim = 1e-5 * mag[j] + 1e-6 + (dt == DType::BF16 ? std::ldexp(std::fabs(w), -8) : 0.0);
    if (!(std::fabs(g - w) <= lim)) {
      if (!bad) first = j;
      ++bad;
    }
  }
  if (bad) {
    char buf[256];
    std::snprintf(buf, sizeof buf, "%s: %zu of %zu off the double reference (first: got %.9g want %.9g)",
                  what.c_str(), bad, index.size(), elem(dt, got, index[first]), want[first]);
    failure(buf);
  } else {
    pass();
  }
}

std::vector<size_t> all_of(size_t n) {
  std::vector<size_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = i;
  return v;
}

std::string gemm_tag(DType da, DType db, DType dc, const GemmShape& g) {
  return std::to_string(g.batch) + "x" + std::to_string(g.M) + "x" + std::to_string(g.N) + "x" +
         std::to_string(g.K) + " tA=" + std::to_string(g.transA) + " tB=" + std::to_string(g.transB) + " " +
         dtype_name(da) + "*" + dtype_name(db) + "->" + dtype_name(dc) + (g.beta != 0.0f ? " beta" : "");
}

// One cpu::gemm call with dtypes. g.strideA / g.strideB nonzero = strided batch (the real
// stride is filled in), zero = broadcast; pad adds columns past each matrix's leading extent.
void gemm_dtype_check(DType da, DType db, DType dc, GemmShape g, bool pad) {
  const int64_t rowsA = g.transA ? g.K : g.M, colsA = g.transA ? g.M : g.K;
  const int64_t rowsB = g.transB ? g.N : g.K, colsB = g.transB ? g.K : g.N;
  g.lda = colsA + (pad ? 3 : 0);
  g.ldb = colsB + (pad ? 5 : 0);
  g.ldc = g.N + (pad ? 2 : 0);
  const int64_t sizeA = rowsA * g.lda, sizeB = rowsB * g.ldb, sizeC = g.M * g.ldc;
  const int64_t nbA = g.strideA ? g.batch : 1, nbB = g.strideB ? g.batch : 1;
  if (g.strideA) g.strideA = sizeA;
  if (g.strideB) g.strideB = sizeB;
  g.strideC = sizeC;
  const std::vector<uint8_t> a = make(da, rand_f(sizeA * nbA, -1, 1)), b = make(db, rand_f(sizeB * nbB, -1, 1)),
                             c = make(dc, rand_f(sizeC * g.batch, -1, 1));
  const std::string tag = "cpu gemm " + gemm_tag(da, db, dc, g) + (pad ? " padded" : "");
  std::vector<uint8_t> got = c;
  cpu::gemm(kCpuLaunch, da, a.data(), db, b.data(), dc, got.data(), g);

  // The former route: widen, float32 GEMM, round once.
  const std::vector<float> wa = widened(da, a), wb = widened(db, b), wc = widened(dc, c);
  std::vector<float> c32 = wc;
  cpu::gemm(kCpuLaunch, kF32, wa.data(), kF32, wb.data(), kF32, c32.data(), g);
  expect(got == make(dc, c32), tag + ": bit-identical to widen + float32 GEMM + one rounding");

  std::vector<double> want, mag;
  std::vector<size_t> index;
  bool pad_ok = true;
  for (int64_t bi = 0; bi < g.batch; ++bi)
    for (int64_t m = 0; m < g.M; ++m) {
      const float* A = wa.data() + bi * g.strideA;
      const float* B = wb.data() + bi * g.strideB;
      for (int64_t n = 0; n < g.N; ++n) {
        const size_t i = static_cast<size_t>(bi * g.strideC + m * g.ldc + n);
        double s = 0, sa = 0;
        for (int64_t k = 0; k < g.K; ++k) {
          const double p = double(A[g.transA ? k * g.lda + m : m * g.lda + k]) *
                           double(B[g.transB ? n * g.ldb + k : k * g.ldb + n]);
          s += p;
          sa += std::fabs(p);
        }
        const double c0 = g.beta != 0.0f ? double(wc[i]) : 0.0;
        want.push_back(double(g.alpha) * s + double(g.beta) * c0);
        mag.push_back(std::fabs(double(g.alpha)) * sa + std::fabs(double(g.beta) * c0));
        index.push_back(i);
      }
      for (int64_t n = g.N; n < g.ldc; ++n) {
        const size_t i = static_cast<size_t>(bi * g.strideC + m * g.ldc + n), es = dtype_size(dc);
        pad_ok &= std::memcmp(&got[i * es], &c[i * es], es) == 0;
      }
    }
  expect_near_ref(dc, got, want, mag, index, tag);
  expect(pad_ok, tag + ": wrote outside the N columns of C");
}

void gemm_dtype_cases() {
  const DType fl[] = {DType::F32, DType::BF16};
  int variant = 0;
  for (DType da : fl)
    for (DType db : fl)
      for (DType dc : fl)
        for (int t = 0; t < 4; ++t, ++variant) {
          GemmShape g;
          g.M = 37;
          g.N = 29;
          g.K = 41;
          g.transA = t & 1;
          g.transB = t >> 1;
          g.beta = variant % 2 ? 0.5f : 0.0f;
          gemm_dtype_check(da, db, dc, g, variant % 3 == 0);
        }
  // Threaded: several K slices and A / B blocks, alpha and beta.
  for (DType da : fl) {
    GemmShape g;
    g.M = 130;
    g.N = 100;
    g.K = 300;
    g.transA = true;
    g.alpha = 1.5f;
    g.beta = 0.75f;
    gemm_dtype_check(da, DType::BF16, DType::BF16, g, true);
    g.transA = false;
    g.transB = true;
    gemm_dtype_check(DType::BF16, da, DType::F32, g, false);
  }
  // Batches: strided A with broadcast B (whole matrices per thread), then broadcast A.
  {
    GemmShape g;
    g.batch = 8;
    g.M = 64;
    g.N = 64;
    g.K = 64;
    g.strideA = 1;
    g.beta = 1.0f;
    gemm_dtype_check(DType::BF16, DType::BF16, DType::BF16, g, false);
    g.strideA = 0;
    g.strideB = 1;
    g.batch = 3;
    g.transB = true;
    gemm_dtype_check(DType::F32, DType::BF16, DType::BF16, g, true);
  }
  // K = 0: C = beta C, read widened and rounded back.
  {
    GemmShape g;
    g.M = 5;
    g.N = 7;
    g.K = 0;
    g.beta = 0.5f;
    gemm_dtype_check(DType::BF16, DType::BF16, DType::BF16, g, true);
  }
}

// The grouped GEMMs with dtypes against the float32 kernels on widened inputs (bits) and double
// references. E = 4 segments over R = 150 rows: 37, 0 (empty), 53, 41, then 19 unused rows.
void grouped_dtype_check(DType dx, DType dw, DType dy, bool trans_w) {
  const int64_t E = 4, R = 150, K = 70, N = 33;
  const std::vector<int32_t> off = {0, 37, 37, 90, 131};
  const std::vector<uint8_t> x = make(dx, rand_f(R * K, -1, 1)), w1 = make(dw, rand_f(E * K * N, -1, 1)),
                             w3 = make(dw, rand_f(E * K * N, -1, 1)), dyv = make(dw, rand_f(R * N, -1, 1));
  const std::vector<float> scale = rand_f(R, 0, 1);
  const std::vector<float> wx = widened(dx, x), ww1 = widened(dw, w1), ww3 = widened(dw, w3), wdy = widened(dw, dyv);
  const std::string tag = std::string(" ") + dtype_name(dx) + "*" + dtype_name(dw) + "->" + dtype_name(dy) +
                          (trans_w ? " transW" : "");
  const size_t ybytes = static_cast<size_t>(R * N) * dtype_size(dy);
  const auto poisoned = [](size_t bytes) { return std::vector<uint8_t>(bytes, 0xFF); };

  std::vector<uint8_t> y = poisoned(ybytes), ys = poisoned(ybytes), a = poisoned(ybytes), h1 = poisoned(ybytes),
                       h3 = poisoned(ybytes), a2 = poisoned(ybytes);
  std::vector<float> dw_got(E * K * N, NAN);
  cpu::grouped_gemm(kCpuLaunch, dx, x.data(), dw, w1.data(), trans_w, off.data(), E, R, K, N, dy, y.data());
  cpu::grouped_gemm_scaled(kCpuLaunch, dx, x.data(), dw, w1.data(), trans_w, off.data(), scale.data(), E, R, K, N, dy,
                           ys.data());
  cpu::grouped_gemm_swiglu(kCpuLaunch, dx, x.data(), dw, w1.data(), w3.data(), trans_w, off.data(), E, R, K, N, dy,
                           a.data(), h1.data(), h3.data());
  cpu::grouped_gemm_swiglu(kCpuLaunch, dx, x.data(), dw, w1.data(), w3.data(), trans_w, off.data(), E, R, K, N, dy,
                           a2.data(), nullptr, nullptr);
  cpu::grouped_gemm_wgrad(kCpuLaunch, dx, x.data(), dw, dyv.data(), off.data(), E, R, K, N, dw_got.data());

  // The former route: float32 kernels on widened inputs, each output rounded once.
  std::vector<float> y32(R * N, NAN), ys32(R * N, NAN), a32(R * N, NAN), h1_32(R * N, NAN), h3_32(R * N, NAN),
      dw32(E * K * N, NAN);
  cpu::grouped_gemm(kCpuLaunch, kF32, wx.data(), kF32, ww1.data(), trans_w, off.data(), E, R, K, N, kF32, y32.data());
  cpu::grouped_gemm_scaled(kCpuLaunch, kF32, wx.data(), kF32, ww1.data(), trans_w, off.data(), scale.data(), E, R, K, N,
                           kF32, ys32.data());
  cpu::grouped_gemm_swiglu(kCpuLaunch, kF32, wx.data(), kF32, ww1.data(), ww3.data(), trans_w, off.data(), E, R, K, N,
                           kF32, a32.data(), h1_32.data(), h3_32.data());
  cpu::grouped_gemm_wgrad(kCpuLaunch, kF32, wx.data(), kF32, wdy.data(), off.data(), E, R, K, N, dw32.data());
  expect(y == make(dy, y32), "cpu grouped_gemm" + tag + ": bits of the widened float32 route");
  expect(ys == make(dy, ys32), "cpu grouped_gemm_scaled" + tag + ": bits of the widened float32 route");
  expect(a == make(dy, a32) && h1 == make(dy, h1_32) && h3 == make(dy, h3_32),
         "cpu grouped_gemm_swiglu" + tag + ": a, h1, h3 = bits of the widened float32 route");
  expect(a2 == a, "cpu grouped_gemm_swiglu" + tag + ": a without h1 / h3");
  expect_equal(dw_got, dw32, "cpu grouped_gemm_wgrad" + tag + ": bits of the widened float32 route");

  // Double references.
  std::vector<double> r1(R * N, 0.0), m1(R * N, 0.0), r3(R * N, 0.0), m3(R * N, 0.0);
  std::vector<double> rdw(E * K * N, 0.0), mdw(E * K * N, 0.0);
  for (int64_t e = 0; e < E; ++e)
    for (int64_t r = off[e]; r < off[e + 1]; ++r)
      for (int64_t n = 0; n < N; ++n)
        for (int64_t k = 0; k < K; ++k) {
          const int64_t wi = e * K * N + (trans_w ? n * K + k : k * N + n);
          const double p1 = double(wx[r * K + k]) * ww1[wi], p3 = double(wx[r * K + k]) * ww3[wi];
          r1[r * N + n] += p1;
          m1[r * N + n] += std::fabs(p1);
          r3[r * N + n] += p3;
          m3[r * N + n] += std::fabs(p3);
          const double pd = double(wx[r * K + k]) * wdy[r * N + n];
          rdw[e * K * N + k * N + n] += pd;
          mdw[e * K * N + k * N + n] += std::fabs(pd);
        }
  std::vector<double> rs(R * N), ms(R * N), ra(R * N), ma(R * N);
  for (int64_t i = 0; i < R * N; ++i) {
    const double s = scale[i / N], silu = r1[i] / (1.0 + std::exp(-r1[i]));
    rs[i] = s * r1[i];
    ms[i] = s * m1[i];
    ra[i] = silu * r3[i];
    // |d(silu(h1) h3)| <= 1.1 |dh1| |h3| + |silu(h1)| |dh3|, plus the float32 epilogue's own error.
    ma[i] = 1.1 * m1[i] * std::fabs(r3[i]) + std::fabs(silu) * m3[i] + std::fabs(ra[i]);
  }
  const std::vector<size_t> rows = all_of(static_cast<size_t>(R * N));
  expect_near_ref(dy, y, r1, m1, rows, "cpu grouped_gemm" + tag);
  expect_near_ref(dy, ys, rs, ms, rows, "cpu grouped_gemm_scaled" + tag);
  expect_near_ref(dy, h1, r1, m1, rows, "cpu grouped_gemm_swiglu h1" + tag);
  expect_near_ref(dy, h3, r3, m3, rows, "cpu grouped_gemm_swiglu h3" + tag);
  expect_near_ref(dy, a, ra, ma, rows, "cpu grouped_gemm_swiglu a" + tag);
  expect_near_ref(kF32, make(kF32, dw_got), rdw, mdw, all_of(static_cast<size_t>(E * K * N)),
                  "cpu grouped_gemm_wgrad" + tag);
}

// The float32 fused epilogues against double references, and bad offsets.
void epilogue_f32_check() {
  const int64_t E = 3, R = 40, K = 9, N = 6;
  std::vector<int32_t> off = {0, 7, 7, 31};
  std::vector<float> x = rand_f(R * K), w1 = rand_f(E * K * N), w3 = rand_f(E * K * N), scale = rand_f(R, 0, 1);
  for (bool trans_w : {false, true}) {
    std::vector<double> h1(R * N, 0.0), h3(R * N, 0.0);
    for (int64_t e = 0; e < E; ++e)
      for (int64_t r = off[e]; r < off[e + 1]; ++r)
        for (int64_t n = 0; n < N; ++n)
          for (int64_t k = 0; k < K; ++k) {
            const int64_t wi = e * K * N + (trans_w ? n * K + k : k * N + n);
            h1[r * N + n] += double(x[r * K + k]) * w1[wi];
            h3[r * N + n] += double(x[r * K + k]) * w3[wi];
          }
    std::vector<float> y(R * N, NAN), a(R * N, NAN), g1(R * N, NAN), g3(R * N, NAN), a2(R * N, NAN);
    cpu::grouped_gemm_scaled(kCpuLaunch, DType::F32, x.data(), DType::F32, w1.data(), trans_w, off.data(),
                             scale.data(), E, R, K, N, DType::F32, y.data());
    cpu::grouped_gemm_swiglu(kCpuLaunch, DType::F32, x.data(), DType::F32, w1.data(), w3.data(), trans_w, off.data(),
                             E, R, K, N, DType::F32, a.data(), g1.data(), g3.data());
    cpu::grouped_gemm_swiglu(kCpuLaunch, DType::F32, x.data(), DType::F32, w1.data(), w3.data(), trans_w, off.data(),
                             E, R, K, N, DType::F32, a2.data(), nullptr, nullptr);
    std::vector<float> want_y(R * N), want_a(R * N), want_h1(R * N), want_h3(R * N);
    for (int64_t i = 0; i < R * N; ++i) {
      const int64_t r = i / N;
      const bool used = r < off[E];
      want_y[i] = used ? static_cast<float>(scale[r] * h1[i]) : 0.0f;
      want_h1[i] = static_cast<float>(h1[i]);
      want_h3[i] = static_cast<float>(h3[i]);
      want_a[i] = static_cast<float>(h1[i] / (1.0 + std::exp(-h1[i])) * h3[i]);
    }
    const std::string tag = trans_w ? " (transW)" : "";
    expect_close(y, want_y, 1e-5, 1e-6, "cpu grouped_gemm_scaled" + tag);
    expect_close(g1, want_h1, 1e-5, 1e-6, "cpu grouped_gemm_swiglu h1" + tag);
    expect_close(g3, want_h3, 1e-5, 1e-6, "cpu grouped_gemm_swiglu h3" + tag);
    expect_close(a, want_a, 1e-5, 1e-6, "cpu grouped_gemm_swiglu a" + tag);
    expect_equal(a2, a, "cpu grouped_gemm_swiglu a without h1 / h3" + tag);
  }
  // bad offsets -> ERR_RANGE
  std::vector<int32_t> bad = {0, 9, 5, 31};
  std::vector<float> y(R * N);
  bool threw = false;
  try {
    cpu::grouped_gemm_scaled(kCpuLaunch, DType::F32, x.data(), DType::F32, w1.data(), false, bad.data(), scale.data(),
                             E, R, K, N, DType::F32, y.data());
  } catch (const MomaException& e) {
    threw = std::string(e.code()) == "ERR_RANGE";
  }
  expect(threw, "cpu grouped_gemm_scaled: decreasing offsets must throw ERR_RANGE");
}


void dtype_error_check() {
  g_case = "cpu gemm bad dtypes";
  std::vector<float> a(4, 1.0f), c(4);
  GemmShape g;
  g.M = 2;
  g.N = 2;
  g.K = 2;
  g.lda = g.ldb = g.ldc = 2;
  std::string code;
  try {
    cpu::gemm(kCpuLaunch, DType::I32, a.data(), kF32, a.data(), kF32, c.data(), g);
  } catch (const MomaException& e) {
    code = e.code();
  }
  expect(code == "ERR_DTYPE", "gemm with an int32 A: ERR_DTYPE, got '" + code + "'");
  const std::vector<int32_t> off = {0, 2};
  code.clear();
  try {
    cpu::grouped_gemm_scaled(kCpuLaunch, kF32, a.data(), kF32, a.data(), false, off.data(), a.data(), 1, 2, 2, 1,
                             DType::I32, c.data());
  } catch (const MomaException& e) {
    code = e.code();
  }
  expect(code == "ERR_DTYPE", "grouped_gemm_scaled with an int32 y: ERR_DTYPE, got '" + code + "'");
}

}  // namespace

void cpu_gemm_sanity() {
  g_case = "cpu gemm dtypes";
  gemm_dtype_cases();
  g_case = "cpu grouped gemm dtypes";
  const DType fl[] = {DType::F32, DType::BF16};
  for (DType dx : fl)
    for (DType dw : fl)
      for (DType dy : fl) grouped_dtype_check(dx, dw, dy, dx == dw);
  grouped_dtype_check(DType::BF16, DType::BF16, DType::BF16, false);
  g_case = "cpu grouped epilogues";
  epilogue_f32_check();
  dtype_error_check();
}

}  // namespace moma::native_test
