// The CPU GEMMs (csrc/cpu/gemm.cc, grouped_gemm.cc, grouped_epilogue.cc) against double
// references, run in every build (no device needed):
// - cpu::gemm on the float32 path (bf16 x bf16 widened: the paths MOMA_CPU_GEMM=avx512 / avx2 /
//   generic pick) for every dtype combination (A, B, C each float32 or bf16), transposes, padded
//   leading dimensions, strided and broadcast batches (also the whole-matrix-per-thread path),
//   K past one KC slice, alpha, beta != 0 (a bf16 C is read widened) and K = 0. Each result is
//   (1) within float32 summation error of the double reference on the widened inputs (plus one
//   bf16 rounding for a bf16 C): |got - want| <= 1e-5 (|alpha| sum_k |a b| + |beta c|) + 1e-6
//   (+ 2^-8 |want|), and (2) bit-identical to the route the op layer took before the GEMMs took
//   dtypes: widen bf16 operands to float32 (exact), float32 GEMM, round a bf16 C once (nearest
//   even). Padding columns of C stay untouched.
// - cpu::gemm's bf16 x bf16 path on every bf16 kernel this CPU runs (AMX, AVX-512-BF16; one it
//   cannot run is reported as skipped): odd K, K = 1, K past several KC slices with an odd last
//   slice, M / N off the tile sizes, empty M / N, K = 0, all transposes, alpha, beta != 0, float32
//   and bf16 C, padded leading dimensions, batches. Bound (bf16_path_limit): each product of two
//   bf16 is exact in float32, so the error is float32 summation error only: at most
//   n = K + ceil(K / KC) + 2 roundings (each product added, each K slice added into C, alpha,
//   beta), |err| <= gamma_n (|alpha| sum_k |a b| + |beta c|) + n 2^-126 (gamma_n = n u / (1 - n u),
//   u = 2^-24; the 2^-126 term covers the denormals vdpbf16ps / tdpbf16ps flush), and for a bf16 C
//   one more rounding: + 2^-8 (|want| + |err|). Results do not depend on the thread count: a batch
//   of copies computed whole-matrix-per-thread (one thread each) equals the same matrix computed
//   on all threads, bit for bit (also for the float32 path). The same checks run on a scalar model
//   of the AMX micro-kernel (same tile addressing, float64 sums) so the AMX panel layouts are
//   checked on CPUs without AMX.
// - MOMA_CPU_GEMM: every value picks its kernels, an unknown value is ERR_ARG and a kernel this CPU
//   lacks ERR_DEVICE, both naming the variable; the variable is read from the environment.
// - grouped_gemm, grouped_gemm_scaled, grouped_gemm_swiglu (with and without h1 / h3) and
//   grouped_gemm_wgrad with float32 / bf16 x, w, dy and outputs, both weight layouts, ragged and
//   empty segments, rows past offsets[E]: bit-identical to the float32-output kernels on the same
//   GEMM path (widened inputs, or bf16 inputs when x and w are both bf16 and a bf16 kernel runs)
//   with each output rounded once; each segment bit-identical to cpu::gemm on it; and within the
//   same bounds of double references.
// - the float32 epilogues against double references; bad offsets throw ERR_RANGE, bad dtypes
//   ERR_DTYPE.
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "../../csrc/core/bf16.h"
#include "../../csrc/core/error.h"
#include "../../csrc/cpu/cpu_features.h"
#include "../../csrc/cpu/gemm_kernels.h"
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

// The paths the float32-route checks run on: the float32 kernel this CPU picks, bf16 widened.
cpu::GemmPaths widened_paths() {
  cpu::GemmPaths p = cpu::gemm_paths_for(nullptr);
  p.bf16 = nullptr;
  return p;
}

// The error bound of the bf16 x bf16 path (see the top of the file) for a dot product of K terms
// of magnitude mag (|alpha| sum |a b| + |beta c|) on a kernel with K slices of kc.
double bf16_path_limit(int64_t K, int64_t kc, double mag) {
  const double n = double(K + (K + kc - 1) / kc + 2), u = std::ldexp(1.0, -24);
  return n * u / (1.0 - n * u) * mag + n * std::ldexp(1.0, -126);
}

// One cpu::gemm call with dtypes on `paths`. g.strideA / g.strideB nonzero = strided batch (the
// real stride is filled in), zero = broadcast; pad adds columns past each matrix's leading extent.
void gemm_dtype_check(const cpu::GemmPaths& paths, DType da, DType db, DType dc, GemmShape g, bool pad) {
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
  const cpu::GemmKernelBf16* bf16 = da == DType::BF16 && db == DType::BF16 ? paths.bf16 : nullptr;
  const std::string tag = std::string("cpu gemm [") + (bf16 ? bf16->isa : paths.f32->isa) + "] " +
                          gemm_tag(da, db, dc, g) + (pad ? " padded" : "");
  std::vector<uint8_t> got = c;
  cpu::gemm_on(paths, da, a.data(), db, b.data(), dc, got.data(), g);

  const std::vector<float> wa = widened(da, a), wb = widened(db, b), wc = widened(dc, c);
  if (!bf16) {
    // The former route: widen, float32 GEMM, round once.
    std::vector<float> c32 = wc;
    cpu::gemm_on(paths, kF32, wa.data(), kF32, wb.data(), kF32, c32.data(), g);
    expect(got == make(dc, c32), tag + ": bit-identical to widen + float32 GEMM + one rounding");
  }

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
  if (bf16) {
    size_t bad = 0, first = 0;
    for (size_t j = 0; j < index.size(); ++j) {
      const double e = bf16_path_limit(g.K, bf16->kc, mag[j]);
      const double lim = dc == DType::BF16 ? e + std::ldexp(std::fabs(want[j]) + e, -8) : e;
      if (!(std::fabs(elem(dc, got, index[j]) - want[j]) <= lim)) {
        if (!bad) first = j;
        ++bad;
      }
    }
    char buf[320];
    std::snprintf(buf, sizeof buf, "%s: %zu of %zu outside the bf16-path bound of the double reference (first: got "
                  "%.9g want %.9g)", tag.c_str(), bad, index.size(), bad ? elem(dc, got, index[first]) : 0.0,
                  bad ? want[first] : 0.0);
    expect(bad == 0, buf);
  } else {
    expect_near_ref(dc, got, want, mag, index, tag);
  }
  expect(pad_ok, tag + ": wrote outside the N columns of C");
}

void gemm_dtype_cases(const cpu::GemmPaths& paths) {
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
          gemm_dtype_check(paths, da, db, dc, g, variant % 3 == 0);
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
    gemm_dtype_check(paths, da, DType::BF16, DType::BF16, g, true);
    g.transA = false;
    g.transB = true;
    gemm_dtype_check(paths, DType::BF16, da, DType::F32, g, false);
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
    gemm_dtype_check(paths, DType::BF16, DType::BF16, DType::BF16, g, false);
    g.strideA = 0;
    g.strideB = 1;
    g.batch = 3;
    g.transB = true;
    gemm_dtype_check(paths, DType::F32, DType::BF16, DType::BF16, g, true);
  }
  // K = 0: C = beta C, read widened and rounded back.
  {
    GemmShape g;
    g.M = 5;
    g.N = 7;
    g.K = 0;
    g.beta = 0.5f;
    gemm_dtype_check(paths, DType::BF16, DType::BF16, DType::BF16, g, true);
  }
}

// The bf16 x bf16 path of one kernel: awkward sizes, every transpose, alpha / beta, both C dtypes.
void bf16_path_cases(const cpu::GemmPaths& paths) {
  const DType bf = DType::BF16;
  struct Size {
    int64_t M, N, K;
  };
  // Odd K, K = 1, K of one k pair, M / N just off the 14 x 32 and 32 x 32 blocks, K past two KC
  // slices of either kernel (512, 1024) with an odd last slice.
  const Size sizes[] = {{37, 29, 41}, {1, 1, 1}, {15, 33, 2}, {29, 61, 1}, {33, 31, 67}, {3, 65, 2049}};
  int variant = 0;
  for (const Size& sz : sizes)
    for (int t = 0; t < 4; ++t, ++variant) {
      GemmShape g;
      g.M = sz.M;
      g.N = sz.N;
      g.K = sz.K;
      g.transA = t & 1;
      g.transB = t >> 1;
      g.alpha = variant % 3 == 1 ? -1.5f : 1.0f;
      g.beta = variant % 2 ? 0.5f : 0.0f;
      gemm_dtype_check(paths, bf, bf, variant % 4 < 2 ? DType::F32 : bf, g, variant % 3 == 0);
    }
  // Threaded, several A blocks and K slices; batches (whole matrices per thread); K = 0; empty M / N.
  GemmShape g;
  g.M = 300;
  g.N = 200;
  g.K = 1101;
  g.beta = 0.25f;
  gemm_dtype_check(paths, bf, bf, DType::F32, g, true);
  g.transA = g.transB = true;
  gemm_dtype_check(paths, bf, bf, bf, g, false);
  g = GemmShape();
  g.batch = 6;
  g.M = 40;
  g.N = 50;
  g.K = 60;
  g.strideA = 1;
  g.beta = 1.0f;
  gemm_dtype_check(paths, bf, bf, bf, g, false);
  g.strideB = 1;
  g.transB = true;
  gemm_dtype_check(paths, bf, bf, DType::F32, g, true);
  for (const Size& sz : {Size{5, 7, 0}, Size{0, 5, 3}, Size{4, 0, 3}}) {
    g = GemmShape();
    g.M = sz.M;
    g.N = sz.N;
    g.K = sz.K;
    g.beta = 0.5f;
    gemm_dtype_check(paths, bf, bf, bf, g, true);
    gemm_dtype_check(paths, bf, bf, DType::F32, g, false);
  }
}

// Results do not depend on the thread count: one matrix on every pool thread against a batch of
// copies of it (broadcast A and B, strided C) that the driver spreads whole-matrix-per-thread,
// each copy on one thread.
void thread_count_check(const cpu::GemmPaths& paths, DType dt) {
  GemmShape g;
  g.M = 150;
  g.N = 97;
  g.K = 1101;
  g.transB = true;
  g.lda = g.K;
  g.ldb = g.K;
  g.ldc = g.N;
  g.beta = 0.5f;
  const std::vector<uint8_t> a = make(dt, rand_f(g.M * g.K, -1, 1)), b = make(dt, rand_f(g.N * g.K, -1, 1));
  const std::vector<float> c0 = rand_f(g.M * g.N, -1, 1);
  std::vector<float> one = c0;
  cpu::gemm_on(paths, dt, a.data(), dt, b.data(), kF32, one.data(), g);
  const int64_t copies = 4;
  std::vector<float> many;
  for (int64_t i = 0; i < copies; ++i) many.insert(many.end(), c0.begin(), c0.end());
  GemmShape gb = g;
  gb.batch = copies;
  gb.strideC = g.M * g.N;
  cpu::gemm_on(paths, dt, a.data(), dt, b.data(), kF32, many.data(), gb);
  bool same = true;
  for (int64_t i = 0; i < copies; ++i)
    same &= std::memcmp(many.data() + i * gb.strideC, one.data(), one.size() * sizeof(float)) == 0;
  const cpu::GemmKernelBf16* bf16 = dt == DType::BF16 ? paths.bf16 : nullptr;
  expect(same, std::string("cpu gemm [") + (bf16 ? bf16->isa : paths.f32->isa) + "] " + dtype_name(dt) +
                   ": one thread per matrix gives the bits of all threads on one matrix");
}

// The code and message of the MomaException `fn` throws ("" when it returns).
template <typename Fn>
std::pair<std::string, std::string> thrown(const Fn& fn) {
  try {
    fn();
  } catch (const MomaException& e) {
    return {e.code(), e.what()};
  }
  return {"", ""};
}

// MOMA_CPU_GEMM picks the kernels; what this CPU lacks fails with ERR_DEVICE, nonsense with ERR_ARG.
void forcing_check() {
  g_case = "cpu gemm MOMA_CPU_GEMM";
  const cpu::GemmPaths chosen = cpu::gemm_paths_from_env(), best = cpu::gemm_paths_for(nullptr);
  expect(std::string(cpu::gemm_bf16_isa()) == (chosen.bf16 ? chosen.bf16->isa : "none") &&
             std::string(cpu::gemm_isa()) == chosen.f32->isa,
         std::string("gemm_isa / gemm_bf16_isa report the chosen kernels: ") + cpu::gemm_isa() + ", " +
             cpu::gemm_bf16_isa());
  const char* why = nullptr;
  const bool amx = cpu::cpu_amx_bf16_usable(&why);
  const bool dpbf16 = cpu::cpu_has_avx512bf16();
  expect(std::string(best.bf16 ? best.bf16->isa : "none") == (amx ? "amx" : dpbf16 ? "avx512bf16" : "none"),
         "default bf16 kernel: amx > avx512bf16 > widened");
  for (const char* f32 : {"avx512", "avx2", "neon", "generic"}) {
    const auto err = thrown([&] {
      const cpu::GemmPaths p = cpu::gemm_paths_for(f32);
      expect(p.bf16 == nullptr && std::string(p.f32->isa) == f32,
             std::string("MOMA_CPU_GEMM=") + f32 + ": float32 kernel " + f32 + ", bf16 widened");
    });
    if (!err.first.empty())
      expect(err.first == "ERR_DEVICE" && err.second.find("MOMA_CPU_GEMM") != std::string::npos,
             std::string("MOMA_CPU_GEMM=") + f32 + " unavailable: " + err.first + " " + err.second);
  }
  for (const auto& [name, usable] : {std::pair<const char*, bool>{"amx", amx}, {"avx512bf16", dpbf16}}) {
    const auto err = thrown([&] {
      const cpu::GemmPaths p = cpu::gemm_paths_for(name);
      expect(p.bf16 && std::string(p.bf16->isa) == name && p.f32 == best.f32,
             std::string("MOMA_CPU_GEMM=") + name + ": bf16 kernel " + name + ", best float32 kernel");
    });
    expect(usable ? err.first.empty()
                  : err.first == "ERR_DEVICE" && err.second.find("MOMA_CPU_GEMM=") != std::string::npos,
           std::string("MOMA_CPU_GEMM=") + name + (usable ? " runs here" : " refused here") + ": '" + err.first +
               "' " + err.second);
  }
  const auto bad = thrown([] { cpu::gemm_paths_for("avx1024"); });
  expect(bad.first == "ERR_ARG" && bad.second.find("MOMA_CPU_GEMM=avx1024") != std::string::npos,
         "MOMA_CPU_GEMM=avx1024: ERR_ARG naming the variable, got '" + bad.first + "' " + bad.second);
  // The variable itself is what gemm_paths_from_env reads.
  const char* saved = std::getenv("MOMA_CPU_GEMM");
  const std::string saved_value = saved ? saved : "";
  setenv("MOMA_CPU_GEMM", "generic", 1);
  const cpu::GemmPaths forced = cpu::gemm_paths_from_env();
  expect(std::string(forced.f32->isa) == "generic" && forced.bf16 == nullptr,
         "MOMA_CPU_GEMM=generic in the environment: generic float32 kernel, bf16 widened");
  setenv("MOMA_CPU_GEMM", "avx1024", 1);
  expect(thrown([] { cpu::gemm_paths_from_env(); }).first == "ERR_ARG",
         "MOMA_CPU_GEMM=avx1024 in the environment: ERR_ARG");
  if (saved) setenv("MOMA_CPU_GEMM", saved_value.c_str(), 1);
  else unsetenv("MOMA_CPU_GEMM");
}

// A scalar model of the AMX micro-kernel (gemm_amx.cc), for CPUs without AMX: the same tile
// loads (A tiles at a + k0 * 32 and + 16 rows, 64-byte rows; B tiles at b + k0 * 32 and + 32
// elements, 128-byte rows) and tdpbf16ps's arithmetic, in float64, so the driver's Rows32 A panels,
// VNNI B panels, 32-deep K padding and begin / end hooks are checked on every machine.
std::atomic<int> g_amx_model_open{0};
std::atomic<bool> g_amx_model_balanced{true};

void amx_model_begin() { g_amx_model_open.fetch_add(1); }
void amx_model_end() { g_amx_model_open.fetch_sub(1); }

void amx_model_micro(int64_t kd, const uint16_t* a, const uint16_t* b, float* c, int64_t ldc, int64_t mr, int64_t nr,
                     float alpha, float beta) {
  if (g_amx_model_open.load() <= 0) g_amx_model_balanced.store(false);
  std::vector<double> acc(32 * 32, 0.0);
  for (int64_t k0 = 0; k0 < kd; k0 += 32) {
    const uint16_t* a_tiles[2] = {a + k0 * 32, a + k0 * 32 + 16 * 32};  // 16 rows x 32 bf16, row stride 32
    const uint16_t* b_tiles[2] = {b + k0 * 32, b + k0 * 32 + 32};        // 16 pair rows x 32 bf16, row stride 64
    for (int m = 0; m < 32; ++m)
      for (int n = 0; n < 32; ++n) {
        const uint16_t* at = a_tiles[m / 16] + (m % 16) * 32;
        const uint16_t* bt = b_tiles[n / 16] + 2 * (n % 16);
        for (int p = 0; p < 16; ++p)
          acc[m * 32 + n] += double(bf16_to_f32(at[2 * p])) * bf16_to_f32(bt[p * 64]) +
                             double(bf16_to_f32(at[2 * p + 1])) * bf16_to_f32(bt[p * 64 + 1]);
      }
  }
  for (int64_t m = 0; m < mr; ++m)
    for (int64_t n = 0; n < nr; ++n) {
      float& out = c[m * ldc + n];
      const float v = alpha * static_cast<float>(acc[m * 32 + n]);
      out = beta != 0.0f ? v + beta * out : v;
    }
}

const cpu::GemmKernelBf16 kAmxModel = {"amx-model", 32, 32, 1024, 256, 512, 32, cpu::BF16ALayout::Rows32,
                                       amx_model_micro, amx_model_begin, amx_model_end};

// Every bf16 kernel this CPU runs, through the bf16 checks; the others reported as skipped.
void bf16_kernel_cases() {
  for (const char* name : {"amx", "avx512bf16"}) {
    g_case = std::string("cpu gemm bf16 path ") + name;
    cpu::GemmPaths paths;
    const auto err = thrown([&] { paths = cpu::gemm_paths_for(name); });
    if (!err.first.empty()) {
      std::printf("cpu gemm bf16 path %s: skipped (%s)\n", name, err.second.c_str());
      continue;
    }
    bf16_path_cases(paths);
    thread_count_check(paths, DType::BF16);
  }
  g_case = "cpu gemm bf16 path amx-model";
  cpu::GemmPaths model = widened_paths();
  model.bf16 = &kAmxModel;
  bf16_path_cases(model);
  thread_count_check(model, DType::BF16);
  expect(g_amx_model_balanced && g_amx_model_open.load() == 0,
         "amx-model: every micro-kernel call inside begin / end, and every begin ended");
  g_case = "cpu gemm float32 thread count";
  thread_count_check(widened_paths(), DType::F32);
  thread_count_check(widened_paths(), DType::BF16);
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

  // The route of float32 outputs: the same GEMM path (bf16 x bf16 on the bf16 kernel when one
  // runs, else float32 kernels on widened inputs), each output rounded once.
  const bool bf16_path = dx == DType::BF16 && dw == DType::BF16 && std::string(cpu::gemm_bf16_isa()) != "none";
  const DType rx = bf16_path ? dx : kF32, rw = bf16_path ? dw : kF32;
  const void* px = bf16_path ? static_cast<const void*>(x.data()) : wx.data();
  const void* pw1 = bf16_path ? static_cast<const void*>(w1.data()) : ww1.data();
  const void* pw3 = bf16_path ? static_cast<const void*>(w3.data()) : ww3.data();
  const void* pdy = bf16_path ? static_cast<const void*>(dyv.data()) : wdy.data();
  std::vector<float> y32(R * N, NAN), ys32(R * N, NAN), a32(R * N, NAN), h1_32(R * N, NAN), h3_32(R * N, NAN),
      dw32(E * K * N, NAN);
  cpu::grouped_gemm(kCpuLaunch, rx, px, rw, pw1, trans_w, off.data(), E, R, K, N, kF32, y32.data());
  cpu::grouped_gemm_scaled(kCpuLaunch, rx, px, rw, pw1, trans_w, off.data(), scale.data(), E, R, K, N, kF32,
                           ys32.data());
  cpu::grouped_gemm_swiglu(kCpuLaunch, rx, px, rw, pw1, pw3, trans_w, off.data(), E, R, K, N, kF32, a32.data(),
                           h1_32.data(), h3_32.data());
  cpu::grouped_gemm_wgrad(kCpuLaunch, rx, px, rw, pdy, off.data(), E, R, K, N, dw32.data());
  // Each segment is one cpu::gemm on that path.
  bool seg_same = true;
  for (int64_t e = 0; e < E; ++e) {
    const int64_t r0 = off[e], rows = off[e + 1] - r0;
    if (rows == 0) continue;
    GemmShape g;
    g.M = rows;
    g.N = N;
    g.K = K;
    g.transB = trans_w;
    g.lda = K;
    g.ldb = trans_w ? K : N;
    g.ldc = N;
    std::vector<float> ye(rows * N, NAN);
    const size_t xs = dtype_size(rx), ws = dtype_size(rw);
    cpu::gemm(kCpuLaunch, rx, static_cast<const char*>(px) + r0 * K * xs, rw,
              static_cast<const char*>(pw1) + e * K * N * ws, kF32, ye.data(), g);
    seg_same &= std::memcmp(ye.data(), y32.data() + r0 * N, ye.size() * sizeof(float)) == 0;
  }
  expect(seg_same, "cpu grouped_gemm" + tag + ": each segment = cpu::gemm on it" +
                       (bf16_path ? std::string(" (") + cpu::gemm_bf16_isa() + ")" : std::string()));
  expect(y == make(dy, y32), "cpu grouped_gemm" + tag + ": bits of the float32-output route");
  expect(ys == make(dy, ys32), "cpu grouped_gemm_scaled" + tag + ": bits of the float32-output route");
  expect(a == make(dy, a32) && h1 == make(dy, h1_32) && h3 == make(dy, h3_32),
         "cpu grouped_gemm_swiglu" + tag + ": a, h1, h3 = bits of the float32-output route");
  expect(a2 == a, "cpu grouped_gemm_swiglu" + tag + ": a without h1 / h3");
  expect_equal(dw_got, dw32, "cpu grouped_gemm_wgrad" + tag + ": bits of the float32-output route");

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
  gemm_dtype_cases(widened_paths());
  bf16_kernel_cases();
  forcing_check();
  g_case = "cpu grouped gemm dtypes";
  const DType fl[] = {DType::F32, DType::BF16};
  for (DType dx : fl)
    for (DType dw : fl)
      for (DType dy : fl) grouped_dtype_check(dx, dw, dy, dx == dw);
  grouped_dtype_check(DType::BF16, DType::BF16, DType::BF16, false);
  cpu_grouped_gemm_sanity();
  g_case = "cpu grouped epilogues";
  epilogue_f32_check();
  dtype_error_check();
}

}  // namespace moma::native_test
