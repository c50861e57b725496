// The pipelined GEMMs (cuda/gemm.cu, cuda/grouped_gemm.cu) against the CPU float32 GEMM, and the
// fused grouped epilogues against their CPU twins (csrc/cpu/grouped_epilogue.cc):
// - cuda::gemm over every path: float32-accurate (both operands f32), bf16 with cp.async (bf16,
//   16-byte aligned), bf16 staged (unaligned pointer, leading dimension not a multiple of 8, an
//   f32 operand next to a bf16 one); transposes, batches with broadcast, alpha / beta, C f32 / bf16,
//   tiny and ragged sizes, sizes at and around the tile edges, K of 0 and 1..5 k-tiles (pipeline
//   prologue / steady state / drain), and every tile shape (gemm_tile_config names the choice).
//   Reference: cpu::gemm (float32) on the inputs as the kernel sees them (bf16 path: rounded to bf16),
//   so only the summation order differs: C f32 -> relative Frobenius <= 1e-5 and per element
//   |got - want| <= 1e-5 (sum_k |a b| alpha + |beta c|) + 1e-6; C bf16 -> one bf16 rounding.
// - grouped GEMM (plain, scaled, SwiGLU with and without h1 / h3, wgrad) for both M tiles, both
//   weight layouts, every dtype path, ragged and empty segments, rows past offsets[E].
// - Routing: router logits on CUDA (f32 path) -> scores -> expert-choice route on the device pick
//   exactly the rows the CPU picks.
// The CPU GEMMs against double references: cpu_gemm_sanity.cc.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "../../csrc/core/bf16.h"
#include "../../csrc/core/error.h"
#include "../../csrc/core/moe_types.h"
#include "../../csrc/cpu/kernels.h"
#include "../../csrc/cpu/kernels_moe.h"
#include "../../csrc/ops/moe.h"
#include "../../cuda/kernels.h"
#include "../../cuda/kernels_moe.h"
#include "harness.h"

namespace moma::native_test {
namespace {

float round_bf16(float v) { return bf16_to_f32(f32_to_bf16(v)); }

// Relative Frobenius and per-element check of got against want with per-element scale `mag`
// (sum |a b| of the dot product): |got - want| <= rel_elem * mag + abs_elem.
void check_result(const std::vector<double>& got, const std::vector<double>& want, const std::vector<double>& mag,
                  double rel_frob, double rel_elem, double abs_elem, const std::string& what) {
  double num = 0, den = 0;
  size_t nan_count = 0, bad = 0, first = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    if (std::isnan(got[i])) ++nan_count;
    const double d = got[i] - want[i];
    num += d * d;
    den += want[i] * want[i];
    if (!(std::fabs(d) <= rel_elem * mag[i] + abs_elem)) {
      if (!bad) first = i;
      ++bad;
    }
  }
  const double rel = std::sqrt(num / (den > 0 ? den : 1));
  char buf[320];
  std::snprintf(buf, sizeof buf, "%s: relative Frobenius %.3g (limit %.1g), %zu NaN, %zu elements off (first %zu: got %.9g want %.9g)",
                what.c_str(), rel, rel_frob, nan_count, bad, first, bad ? got[first] : 0.0, bad ? want[first] : 0.0);
  expect(nan_count == 0 && rel <= rel_frob && bad == 0, buf);
}

enum class Align { Aligned, PadLd, OffsetPtr };
const char* align_name(Align a) { return a == Align::Aligned ? "aligned" : (a == Align::PadLd ? "ld+3" : "ptr+1"); }

// One cuda::gemm call against the float32 cpu::gemm. g.strideA / g.strideB nonzero = strided batch (the
// real stride is filled in), zero = broadcast.
void gemm_check(DType da, DType db, DType dc, GemmShape g, Align align) {
  const int64_t rowsA = g.transA ? g.K : g.M, colsA = g.transA ? g.M : g.K;
  const int64_t rowsB = g.transB ? g.N : g.K, colsB = g.transB ? g.K : g.N;
  const int64_t pad = align == Align::PadLd ? 3 : 0, shift = align == Align::OffsetPtr ? 1 : 0;
  g.lda = colsA + pad;
  g.ldb = colsB + pad;
  g.ldc = g.N + (align == Align::PadLd ? 1 : 0);
  const int64_t sizeA = rowsA * g.lda, sizeB = rowsB * g.ldb, sizeC = g.M * g.ldc;
  const int64_t nbA = g.strideA ? g.batch : 1, nbB = g.strideB ? g.batch : 1;
  if (g.strideA) g.strideA = sizeA;
  if (g.strideB) g.strideB = sizeB;
  g.strideC = sizeC;
  std::vector<float> fa = rand_f(sizeA * nbA + shift, -1, 1), fb = rand_f(sizeB * nbB + shift, -1, 1),
                     fc = rand_f(sizeC * g.batch, -1, 1);
  const std::vector<uint8_t> a = make(da, fa), b = make(db, fb), c = make(dc, fc);
  const bool f32_path = da == DType::F32 && db == DType::F32;
  // The operands as the kernel multiplies them.
  std::vector<float> ra(fa.size()), rb(fb.size()), rc(fc.size());
  for (size_t i = 0; i < fa.size(); ++i) ra[i] = f32_path ? fa[i] : round_bf16(static_cast<float>(elem(da, a, i)));
  for (size_t i = 0; i < fb.size(); ++i) rb[i] = f32_path ? fb[i] : round_bf16(static_cast<float>(elem(db, b, i)));
  for (size_t i = 0; i < fc.size(); ++i) rc[i] = static_cast<float>(elem(dc, c, i));
  Dev dA(a), dB(b), dC(c);
  if (g.beta == 0.0f) dC.poison();  // beta == 0 must not read C
  const size_t esA = dtype_size(da), esB = dtype_size(db);
  cuda::gemm(cuda::launch_ctx(0), da, static_cast<uint8_t*>(dA.p) + shift * esA, db,
             static_cast<uint8_t*>(dB.p) + shift * esB, dc, dC.p, g);
  const std::vector<uint8_t> got = dC.get();
  std::vector<float> want = rc;
  cpu::gemm(kCpuLaunch, DType::F32, ra.data() + shift, DType::F32, rb.data() + shift, DType::F32, want.data(), g);
  std::vector<double> gv, wv, mag;
  bool pad_ok = true;
  for (int64_t bi = 0; bi < g.batch; ++bi)
    for (int64_t m = 0; m < g.M; ++m) {
      for (int64_t n = 0; n < g.N; ++n) {
        const size_t i = static_cast<size_t>(bi * g.strideC + m * g.ldc + n);
        gv.push_back(elem(dc, got, i));
        wv.push_back(want[i]);
        const float* A = ra.data() + shift + (g.strideA ? bi * g.strideA : 0);
        const float* B = rb.data() + shift + (g.strideB ? bi * g.strideB : 0);
        double s = 0;
        for (int64_t k = 0; k < g.K; ++k)
          s += std::fabs(double(A[g.transA ? k * g.lda + m : m * g.lda + k]) * double(B[g.transB ? n * g.ldb + k : k * g.ldb + n]));
        mag.push_back(std::fabs(g.alpha) * s + std::fabs(g.beta * rc[i]));
      }
      if (g.ldc > g.N) {  // the padding column of C is never written
        const size_t i = static_cast<size_t>(bi * g.strideC + m * g.ldc + g.N), es = dtype_size(dc);
        if (g.beta != 0.0f && std::memcmp(&got[i * es], &c[i * es], es) != 0) pad_ok = false;
      }
    }
  if (dc == DType::F32) check_result(gv, wv, mag, 1e-5, 1e-5, 1e-6, "C f32");
  else check_result(gv, wv, mag, 8e-3, 1.0 / 128, 1e-6, "C bf16");  // one bf16 rounding of the result
  expect(pad_ok, "gemm wrote outside the N columns of C");
}

std::string gemm_name(DType da, DType db, DType dc, const GemmShape& g, Align al) {
  return "gemm2 " + std::to_string(g.batch) + "x" + std::to_string(g.M) + "x" + std::to_string(g.N) + "x" +
         std::to_string(g.K) + " tA=" + std::to_string(g.transA) + " tB=" + std::to_string(g.transB) + " " +
         dtype_name(da) + "*" + dtype_name(db) + "->" + dtype_name(dc) + " " + align_name(al) +
         (g.beta != 0.0f ? " beta" : "");
}

void add_gemm_variant_cases() {
  struct MNK { int64_t M, N, K; };
  // tiny / ragged, at and around the 64 / 128 tile edges, K = 0 and 1..5 k-tiles of 32
  const MNK shapes[] = {{1, 1, 1},     {7, 9, 5},     {16, 8, 0},    {63, 65, 31},  {64, 64, 32},   {65, 63, 33},
                        {127, 129, 95}, {128, 128, 32}, {129, 127, 161}, {128, 128, 64}, {128, 128, 96}, {128, 128, 128},
                        {128, 128, 160}, {192, 320, 17}};
  const DType pairs[][2] = {{DType::F32, DType::F32}, {DType::BF16, DType::BF16}, {DType::F32, DType::BF16},
                            {DType::BF16, DType::F32}};
  int rot = 0;
  for (MNK s : shapes)
    for (int tr = 0; tr < 4; ++tr)
      for (const auto& pr : pairs) {
        ++rot;
        const DType dc = (rot & 1) ? DType::BF16 : DType::F32;
        const Align al = static_cast<Align>(rot % 3);
        GemmShape g;
        g.M = s.M;
        g.N = s.N;
        g.K = s.K;
        g.transA = tr & 1;
        g.transB = (tr >> 1) & 1;
        if (rot % 4 == 1) {
          g.alpha = 0.75f;
          g.beta = -0.5f;
        }
        const DType da = pr[0], db = pr[1];
        add(gemm_name(da, db, dc, g, al), [=] { gemm_check(da, db, dc, g, al); });
        if (da == DType::BF16 && db == DType::BF16 && al != Align::Aligned)  // the cp.async path too
          add(gemm_name(da, db, dc, g, Align::Aligned), [=] { gemm_check(da, db, dc, g, Align::Aligned); });
      }
  // batches: A broadcast / B broadcast / both strided, every path
  for (int mode = 0; mode < 3; ++mode)
    for (int tr = 0; tr < 4; ++tr)
      for (const auto& pr : pairs) {
        GemmShape g;
        g.batch = 3;
        g.M = 65;
        g.N = 130;
        g.K = 47 + 17 * mode;
        g.transA = tr & 1;
        g.transB = (tr >> 1) & 1;
        g.strideA = mode == 0 ? 0 : 1;
        g.strideB = mode == 1 ? 0 : 1;
        g.alpha = 1.25f;
        g.beta = mode == 2 ? -1.0f : 0.0f;
        const DType da = pr[0], db = pr[1];
        const Align al = mode == 2 ? Align::PadLd : Align::Aligned;
        add(gemm_name(da, db, DType::F32, g, al) + " mode=" + std::to_string(mode),
            [=] { gemm_check(da, db, DType::F32, g, al); });
      }
}

// Every tile shape: shapes built from the SM count so that the rule of gemm.cu picks each one.
void add_gemm_tile_cases() {
  add("gemm tile choice", [] {
    const int64_t sms = cuda::device_info(0).multiprocessors, half = (sms + 1) / 2;
    struct Want { int64_t M, N; const char* cfg; };
    const Want wants[] = {{128 * sms, 128, "mma_bf16 128x128x32"},
                          {100, 128 * half, "mma_bf16 64x128x32"},
                          {128 * half, 100, "mma_bf16 128x64x32"},
                          {100, 100, "mma_bf16 64x64x32"}};
    for (const Want& w : wants)
      for (int tr = 0; tr < 4; ++tr)
        for (Align al : {Align::Aligned, Align::PadLd}) {
          GemmShape g;
          g.M = w.M;
          g.N = w.N;
          g.K = 72;
          g.transA = tr & 1;
          g.transB = (tr >> 1) & 1;
          const std::string cfg = cuda::gemm_tile_config(DType::BF16, DType::BF16, g);
          expect(cfg == w.cfg, "tile for " + std::to_string(w.M) + "x" + std::to_string(w.N) + ": got " + cfg +
                                   ", want " + w.cfg);
          const std::string before = g_case;
          g_case = before + " " + gemm_name(DType::BF16, DType::BF16, DType::F32, g, al);
          gemm_check(DType::BF16, DType::BF16, DType::F32, g, al);
          g_case = before;
        }
    GemmShape g;
    g.M = 100;
    g.N = 100;
    g.K = 10;
    expect(std::string(cuda::gemm_tile_config(DType::F32, DType::F32, g)) == "simt_f32 128x128x16",
           "f32 x f32 must take the f32-accurate path");
  });
}

// ---- grouped ------------------------------------------------------------------------------
// Ragged offsets for E segments in R rows: some empty, offsets[E] <= R (tail rows unused).
std::vector<int32_t> ragged_offsets(int64_t E, int64_t R) {
  std::vector<int32_t> cuts = rand_i(static_cast<size_t>(E - 1), 0, static_cast<int32_t>(R * 7 / 8));
  std::sort(cuts.begin(), cuts.end());
  std::vector<int32_t> off{0};
  for (int32_t c : cuts) off.push_back(c);
  off.push_back(static_cast<int32_t>(R * 7 / 8));
  if (E >= 3) off[2] = off[1];  // an empty segment
  return off;
}

enum class GEpi { Plain, Scaled, Swiglu, SwigluAOnly };
const char* epi_name(GEpi e) {
  return e == GEpi::Plain ? "plain" : e == GEpi::Scaled ? "scaled" : e == GEpi::Swiglu ? "swiglu" : "swiglu(a only)";
}

std::vector<float> as_kernel_input(DType dt, const std::vector<uint8_t>& b, size_t n, bool f32_path) {
  std::vector<float> f = as_floats(dt, b, n);
  if (!f32_path)
    for (auto& v : f) v = round_bf16(v);
  return f;
}

void grouped_check(DType dx, DType dw, DType dy, bool trans_w, GEpi epi, int64_t E, int64_t R, int64_t K, int64_t N) {
  const std::vector<int32_t> off = ragged_offsets(E, R);
  const std::vector<uint8_t> x = make(dx, rand_f(R * K, -1, 1)), w1 = make(dw, rand_f(E * K * N, -1, 1)),
                             w3 = make(dw, rand_f(E * K * N, -1, 1));
  const std::vector<float> scale = rand_f(R, 0, 1);
  const bool f32_path = dx == DType::F32 && dw == DType::F32;
  const std::vector<float> rx = as_kernel_input(dx, x, R * K, f32_path), rw1 = as_kernel_input(dw, w1, E * K * N, f32_path),
                           rw3 = as_kernel_input(dw, w3, E * K * N, f32_path);
  std::vector<float> want(R * N), want_h1(R * N), want_h3(R * N);
  if (epi == GEpi::Plain)
    cpu::grouped_gemm(kCpuLaunch, DType::F32, rx.data(), DType::F32, rw1.data(), trans_w, off.data(), E, R, K, N,
                      DType::F32, want.data());
  else if (epi == GEpi::Scaled)
    cpu::grouped_gemm_scaled(kCpuLaunch, DType::F32, rx.data(), DType::F32, rw1.data(), trans_w, off.data(),
                             scale.data(), E, R, K, N, DType::F32, want.data());
  else
    cpu::grouped_gemm_swiglu(kCpuLaunch, DType::F32, rx.data(), DType::F32, rw1.data(), rw3.data(), trans_w,
                             off.data(), E, R, K, N, DType::F32, want.data(), want_h1.data(), want_h3.data());
  Dev dX(x), dW1(w1), dW3(w3);
  auto dOff = dev_of(off);
  auto dScale = dev_of(scale);
  const size_t ybytes = static_cast<size_t>(R * N) * dtype_size(dy);
  auto dY = dev_poisoned(ybytes), dH1 = dev_poisoned(ybytes), dH3 = dev_poisoned(ybytes);
  const int32_t* o = static_cast<const int32_t*>(dOff->p);
  if (epi == GEpi::Plain)
    cuda::grouped_gemm(cuda::launch_ctx(0), dx, dX.p, dw, dW1.p, trans_w, o, E, R, K, N, dy, dY->p);
  else if (epi == GEpi::Scaled)
    cuda::grouped_gemm_scaled(cuda::launch_ctx(0), dx, dX.p, dw, dW1.p, trans_w, o,
                              static_cast<const float*>(dScale->p), E, R, K, N, dy, dY->p);
  else
    cuda::grouped_gemm_swiglu(cuda::launch_ctx(0), dx, dX.p, dw, dW1.p, dW3.p, trans_w, o, E, R, K, N, dy, dY->p,
                              epi == GEpi::Swiglu ? dH1->p : nullptr, epi == GEpi::Swiglu ? dH3->p : nullptr);
  // Magnitudes: sum_k |x w| per element (h1; the SwiGLU output scales with |h1 h3|).
  const auto mags = [&](const std::vector<float>& rw, const std::vector<float>* s) {
    std::vector<double> m(R * N, 0.0);
    for (int64_t e = 0; e < E; ++e)
      for (int64_t r = off[e]; r < off[e + 1]; ++r)
        for (int64_t n = 0; n < N; ++n) {
          double acc = 0;
          for (int64_t k = 0; k < K; ++k)
            acc += std::fabs(double(rx[r * K + k]) * double(rw[e * K * N + (trans_w ? n * K + k : k * N + n)]));
          m[r * N + n] = acc * (s ? std::fabs((*s)[r]) : 1.0);
        }
    return m;
  };
  const auto doubles = [](const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); };
  const double rf = dy == DType::F32 ? 1e-5 : 8e-3, re = dy == DType::F32 ? 1e-5 : 1.0 / 128;
  const std::vector<double> m1 = mags(rw1, epi == GEpi::Scaled ? &scale : nullptr);
  const std::vector<double> got = doubles(as_floats(dy, dY->get(), R * N));
  if (epi == GEpi::Plain || epi == GEpi::Scaled) {
    check_result(got, doubles(want), m1, rf, re, 1e-6, "y");
    return;
  }
  const std::vector<double> m3 = mags(rw3, nullptr);
  // a = silu(h1) h3: |da| <= |silu'(h1)| |dh1| |h3| + |silu(h1)| |dh3| with |silu'| <= 1.1.
  std::vector<double> ma(R * N);
  for (size_t i = 0; i < ma.size(); ++i)
    ma[i] = 1.1 * m1[i] * std::fabs(want_h3[i]) + std::fabs(want_h1[i]) * m3[i] + std::fabs(want[i]);
  check_result(got, doubles(want), ma, rf, re, 1e-6, "a");
  if (epi == GEpi::Swiglu) {
    check_result(doubles(as_floats(dy, dH1->get(), R * N)), doubles(want_h1), m1, rf, re, 1e-6, "h1");
    check_result(doubles(as_floats(dy, dH3->get(), R * N)), doubles(want_h3), m3, rf, re, 1e-6, "h3");
  }
}

void wgrad_check(DType dx, DType ddy, int64_t E, int64_t R, int64_t K, int64_t N) {
  const std::vector<int32_t> off = ragged_offsets(E, R);
  const std::vector<uint8_t> x = make(dx, rand_f(R * K, -1, 1)), dy = make(ddy, rand_f(R * N, -1, 1));
  const bool f32_path = dx == DType::F32 && ddy == DType::F32;
  const std::vector<float> rx = as_kernel_input(dx, x, R * K, f32_path), rdy = as_kernel_input(ddy, dy, R * N, f32_path);
  std::vector<float> want(E * K * N);
  cpu::grouped_gemm_wgrad(kCpuLaunch, DType::F32, rx.data(), DType::F32, rdy.data(), off.data(), E, R, K, N,
                          want.data());
  Dev dX(x), dDy(dy);
  auto dOff = dev_of(off);
  auto dW = dev_poisoned(static_cast<size_t>(E * K * N) * 4);
  cuda::grouped_gemm_wgrad(cuda::launch_ctx(0), dx, dX.p, ddy, dDy.p, static_cast<const int32_t*>(dOff->p), E, R, K,
                           N, static_cast<float*>(dW->p));
  std::vector<double> mag(E * K * N, 0.0);
  for (int64_t e = 0; e < E; ++e)
    for (int64_t r = off[e]; r < off[e + 1]; ++r)
      for (int64_t k = 0; k < K; ++k)
        for (int64_t n = 0; n < N; ++n) mag[(e * K + k) * N + n] += std::fabs(double(rx[r * K + k]) * double(rdy[r * N + n]));
  const std::vector<float> got = fetch<float>(*dW, E * K * N);
  check_result(std::vector<double>(got.begin(), got.end()), std::vector<double>(want.begin(), want.end()), mag, 1e-5,
               1e-5, 1e-6, "dw");
}

void add_grouped_cases() {
  const DType pairs[][2] = {{DType::F32, DType::F32}, {DType::BF16, DType::BF16}, {DType::F32, DType::BF16},
                            {DType::BF16, DType::F32}};
  struct Sz { int64_t E, R, K, N; };
  // R >= 256 E: 128-row tiles; else 64. K 64 (aligned, cp.async for bf16) or 37 (staged).
  const Sz sizes[] = {{4, 1100, 64, 136}, {6, 700, 37, 72}, {1, 300, 96, 130}, {3, 5, 40, 8}};
  int rot = 0;
  for (const Sz& s : sizes)
    for (const auto& pr : pairs)
      for (int tw = 0; tw < 2; ++tw)
        for (GEpi epi : {GEpi::Plain, GEpi::Scaled, GEpi::Swiglu, GEpi::SwigluAOnly}) {
          const DType dx = pr[0], dw = pr[1], dy = (++rot & 1) ? DType::F32 : DType::BF16;
          const bool trans_w = tw != 0;
          add(std::string("grouped_gemm ") + epi_name(epi) + " E=" + std::to_string(s.E) + " R=" + std::to_string(s.R) +
                  " K=" + std::to_string(s.K) + " N=" + std::to_string(s.N) + " " + dtype_name(dx) + "*" +
                  dtype_name(dw) + "->" + dtype_name(dy) + (trans_w ? " transW" : ""),
              [=] { grouped_check(dx, dw, dy, trans_w, epi, s.E, s.R, s.K, s.N); });
        }
  for (const Sz& s : sizes)
    for (const auto& pr : pairs)
      add(std::string("grouped_gemm_wgrad E=") + std::to_string(s.E) + " R=" + std::to_string(s.R) + " K=" +
              std::to_string(s.K) + " N=" + std::to_string(s.N) + " " + dtype_name(pr[0]) + "*" + dtype_name(pr[1]),
          [=] { wgrad_check(pr[0], pr[1], s.E, s.R, s.K, s.N); });
}

// Router logits x @ router on CUDA (f32 path), scores and expert-choice routing on the device:
// the same rows as the CPU pipeline.
void add_routing_decision_cases() {
  for (int64_t T : {int64_t(1000), int64_t(4099)})
    add("f32 router logits -> same expert-choice rows T=" + std::to_string(T), [=] {
      const MoeLayout L = ops::make_moe_layout({4, 4}, {0, 1}, "native test");
      const int64_t d = 512, E = L.num_experts, G = L.num_groups, W = L.max_group_experts;
      std::vector<int32_t> modality = rand_i(T, -1, 1);
      const std::vector<float> x = rand_f(T * d, -1, 1), router = rand_f(d * E, -0.1f, 0.1f);
      GemmShape g;
      g.M = T;
      g.N = E;
      g.K = d;
      g.lda = d;
      g.ldb = E;
      g.ldc = E;
      RoutingParams rp;
      const int64_t R = moe_slot_bound(T, L, rp);
      // CPU
      std::vector<float> logits(T * E), scores(T * E), gate(R);
      std::vector<int32_t> rg(T), cnt(G), off(G + 1), perm(T), eo(E + 1), slot_row(R), row_slots(T * W);
      cpu::gemm(kCpuLaunch, DType::F32, x.data(), DType::F32, router.data(), DType::F32, logits.data(), g);
      cpu::moe_partition(kCpuLaunch, modality.data(), T, L, rg.data(), cnt.data(), off.data(), perm.data());
      cpu::moe_router_scores(kCpuLaunch, logits.data(), rg.data(), T, L, RouterFn::Sigmoid, false, 0, 0, scores.data());
      cpu::moe_route(kCpuLaunch, scores.data(), rg.data(), off.data(), perm.data(), T, L, rp, R, eo.data(),
                     slot_row.data(), gate.data(), row_slots.data());
      // CUDA
      auto dx = dev_of(x), drouter = dev_of(router), dmod = dev_of(modality);
      auto dlogits = dev_poisoned(T * E * 4), dscores = dev_poisoned(T * E * 4);
      auto drg = dev_poisoned(T * 4), dcnt = dev_poisoned(G * 4), doff = dev_poisoned((G + 1) * 4),
           dperm = dev_poisoned(T * 4), deo = dev_poisoned((E + 1) * 4), dslot = dev_poisoned(R * 4),
           dgate = dev_poisoned(R * 4), drs = dev_poisoned(T * W * 4);
      int32_t* err = cuda::error_word(0);
      cuda::gemm(cuda::launch_ctx(0), DType::F32, dx->p, DType::F32, drouter->p, DType::F32, dlogits->p, g);
      cuda::moe_partition(cuda::launch_ctx(0), static_cast<const int32_t*>(dmod->p), T, L,
                          static_cast<int32_t*>(drg->p), static_cast<int32_t*>(dcnt->p), static_cast<int32_t*>(doff->p),
                          static_cast<int32_t*>(dperm->p));
      cuda::moe_router_scores(cuda::launch_ctx(0), static_cast<const float*>(dlogits->p),
                              static_cast<const int32_t*>(drg->p), T, L, RouterFn::Sigmoid, false, 0, 0,
                              static_cast<float*>(dscores->p));
      cuda::moe_route(cuda::launch_ctx(0), static_cast<const float*>(dscores->p), static_cast<const int32_t*>(drg->p),
                      static_cast<const int32_t*>(doff->p), static_cast<const int32_t*>(dperm->p), T, L, rp, R,
                      static_cast<int32_t*>(deo->p), static_cast<int32_t*>(dslot->p), static_cast<float*>(dgate->p),
                      static_cast<int32_t*>(drs->p));
      const std::vector<float> got_logits = fetch<float>(*dlogits, T * E);
      double num = 0, den = 0;
      for (int64_t i = 0; i < T * E; ++i) {
        num += double(got_logits[i] - logits[i]) * double(got_logits[i] - logits[i]);
        den += double(logits[i]) * double(logits[i]);
      }
      expect(std::sqrt(num / den) <= 1e-6, "router logits relative Frobenius error " + std::to_string(std::sqrt(num / den)));
      expect_equal(fetch<int32_t>(*deo, E + 1), eo, "expert_offsets");
      expect_equal(fetch<int32_t>(*dslot, R), slot_row, "slot_row (the chosen rows)");
      expect_equal(fetch<int32_t>(*drs, T * W), row_slots, "row_slots");
    });
}

}  // namespace

void add_gemm_kernel_cases() {
  add_gemm_variant_cases();
  add_gemm_tile_cases();
  add_grouped_cases();
  add_routing_decision_cases();
}

}  // namespace moma::native_test
