// CPU part of moma_kernel_bench.
//
// Ceilings: copy bandwidth = memcpy of a 256 MiB buffer split over the pool threads, counted as
// bytes read + bytes written; FMA peak = every pool thread running 24 (AVX-512) or 12 (AVX2)
// independent register-only FMA chains, so neither memory nor latency limits it; bf16 dot-product
// peak (ceiling.dpbf16, CPUs with AVX-512-BF16) = the same with 24 vdpbf16ps chains, 64 FLOPs per
// instruction (16 lanes x 2 bf16 products x 2).
// Kernels: GEMM at 1024^3, 2048^3 and MoE-like shapes, float32 (gemm_f32, against the FMA ceiling
// and the nominal peak) and bf16 x bf16 -> float32 (gemm_bf16, on the kernel gemm_bf16_isa names,
// against the bf16 ceiling: ceiling.dpbf16 for AVX-512-BF16, twice the FMA ceiling when bf16 is
// widened to the float32 path; the AMX tile peak is not measured here, so an AMX run reports
// against ceiling.dpbf16 and says so; nominal: twice the float32 nominal peak); the grouped expert
// GEMM at the 435M FFN shape (gemm_grouped_f32 / gemm_grouped_bf16: x [T, d] @ w[e] [d, f] over E
// equal segments, T 8192, d 1024, f 4096, E 8; 2 T d f FLOPs); then the memory-bound kernels of
// csrc/cpu/kernels.h on 32M-element tensors (GB/s of compulsory traffic against the copy ceiling).
#include <algorithm>
#include <cstdio>
#include <iterator>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "bench.h"
#include "cpu/cpu_features.h"
#include "cpu/kernels.h"
#include "cpu/kernels_moe.h"
#include "cpu/thread_pool.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define MOMA_BENCH_X86 1
#endif

namespace moma::bench {
namespace {

std::string cpu_model() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("model name", 0) == 0) {
      const auto colon = line.find(':');
      if (colon != std::string::npos) return line.substr(colon + 2);
    }
  }
  return "unknown CPU";
}

#ifdef MOMA_BENCH_X86
__attribute__((target("avx512f,fma"))) float fma_loop_avx512(int64_t iters) {
  __m512 acc[24];
  for (int i = 0; i < 24; ++i) acc[i] = _mm512_set1_ps(float(i) * 1e-3f);
  const __m512 m = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
  for (int64_t it = 0; it < iters; ++it) {
#pragma GCC unroll 24
    for (int i = 0; i < 24; ++i) acc[i] = _mm512_fmadd_ps(acc[i], m, c);
  }
  __m512 s = acc[0];
  for (int i = 1; i < 24; ++i) s = _mm512_add_ps(s, acc[i]);
  float out[16];
  _mm512_storeu_ps(out, s);
  float total = 0.0f;
  for (float v : out) total += v;
  return total;
}

__attribute__((target("avx2,fma"))) float fma_loop_avx2(int64_t iters) {
  __m256 acc[12];
  for (int i = 0; i < 12; ++i) acc[i] = _mm256_set1_ps(float(i) * 1e-3f);
  const __m256 m = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
  for (int64_t it = 0; it < iters; ++it) {
#pragma GCC unroll 12
    for (int i = 0; i < 12; ++i) acc[i] = _mm256_fmadd_ps(acc[i], m, c);
  }
  __m256 s = acc[0];
  for (int i = 1; i < 12; ++i) s = _mm256_add_ps(s, acc[i]);
  float out[8];
  _mm256_storeu_ps(out, s);
  float total = 0.0f;
  for (float v : out) total += v;
  return total;
}

__attribute__((target("avx512f,avx512bf16"))) float dpbf16_loop(int64_t iters) {
  __m512 acc[24];
  for (int i = 0; i < 24; ++i) acc[i] = _mm512_set1_ps(float(i) * 1e-3f);
  const __m512bh a = (__m512bh)_mm512_set1_epi32(0x3f803f80), b = (__m512bh)_mm512_set1_epi32(0x33803380);
  for (int64_t it = 0; it < iters; ++it) {
#pragma GCC unroll 24
    for (int i = 0; i < 24; ++i) acc[i] = _mm512_dpbf16_ps(acc[i], a, b);
  }
  __m512 s = acc[0];
  for (int i = 1; i < 24; ++i) s = _mm512_add_ps(s, acc[i]);
  float out[16];
  _mm512_storeu_ps(out, s);
  float total = 0.0f;
  for (float v : out) total += v;
  return total;
}
#endif

// GFLOP/s of `loop` (flops_per_iter FLOPs per iteration) on every pool thread, best of 3 runs of
// about 0.3 s; *seconds gets that run's time.
double measure_loop_peak(float (*loop)(int64_t), double flops_per_iter, double* seconds) {
  const int threads = cpu::num_threads();
  std::vector<float> sink(size_t(threads), 0.0f);
  const int64_t probe = 1 << 20;
  double t0 = now_s();
  sink[0] += loop(probe);
  const double per_iter = (now_s() - t0) / double(probe);
  const int64_t iters = std::max<int64_t>(probe, int64_t(0.3 / per_iter));
  double best = 0;
  for (int rep = 0; rep < 3; ++rep) {
    t0 = now_s();
    cpu::parallel_for(threads, 1, [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t) sink[size_t(t)] += loop(iters);
    });
    const double s = now_s() - t0;
    const double rate = flops_per_iter * double(iters) * threads / s / 1e9;
    if (rate > best) {
      best = rate;
      *seconds = s;
    }
  }
  volatile float keep = sink[0];
  (void)keep;
  return best;
}

// GFLOP/s of the vdpbf16ps loop on every pool thread; 0 without AVX-512-BF16.
double measure_dpbf16_peak(double* seconds) {
#ifdef MOMA_BENCH_X86
  if (cpu::cpu_has_avx512bf16()) return measure_loop_peak(dpbf16_loop, 24 * 16 * 4, seconds);
#endif
  (void)seconds;
  return 0;
}

// GFLOP/s of the FMA loop on every pool thread; 0 when no SIMD FMA is available.
double measure_fma_peak(std::string* isa, double* seconds) {
  float (*loop)(int64_t) = nullptr;
  double flops_per_iter = 0;
#ifdef MOMA_BENCH_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma")) {
    loop = fma_loop_avx512;
    flops_per_iter = 24 * 16 * 2;
    *isa = "avx512";
  } else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    loop = fma_loop_avx2;
    flops_per_iter = 12 * 8 * 2;
    *isa = "avx2";
  }
#endif
  if (!loop) return 0;
  return measure_loop_peak(loop, flops_per_iter, seconds);
}

// GB/s (read + write) of a 256 MiB memcpy split over the pool threads.
double measure_copy_bandwidth(double* seconds) {
  const size_t bytes = size_t(256) << 20;
  std::vector<char> src(bytes, 1), dst(bytes, 0);
  const int threads = cpu::num_threads();
  const double s = median_seconds([&] {
    cpu::parallel_for(threads, 1, [&](int64_t b, int64_t e) {
      const size_t lo = bytes * size_t(b) / size_t(threads), hi = bytes * size_t(e) / size_t(threads);
      std::memcpy(dst.data() + lo, src.data() + lo, hi - lo);
    });
  }, 1.0);
  *seconds = s;
  return 2.0 * double(bytes) / s / 1e9;
}

constexpr const char* kOps[] = {
    "ceiling.fma", "ceiling.copy", "ceiling.dpbf16", "gemm_f32", "gemm_bf16", "gemm_grouped_f32",
    "gemm_grouped_bf16", "fill_f32", "cast_f32_bf16", "unary_silu_f32",
    "unary_silu_bf16", "binary_add_bcast_f32", "softmax_rows_f32", "reduce_sum_rows_f32",
    "strided_copy_transpose", "index_select_rows_f32"};

}  // namespace

const CpuCeilings& cpu_ceilings() {
  static const CpuCeilings c = [] {
    CpuCeilings r;
    r.fma_gflops = measure_fma_peak(&r.fma_isa, &r.fma_s);
    r.copy_gbs = measure_copy_bandwidth(&r.copy_s);
    return r;
  }();
  return c;
}

void run_cpu(Runner& runner) {
  if (std::none_of(std::begin(kOps), std::end(kOps),
                   [&](const char* op) { return runner.wanted("cpu", op); }))
    return;
  const double nominal = env_double("MOMA_CPU_PEAK_GFLOPS", 256.0);
  const CpuCeilings& ceilings = cpu_ceilings();
  const std::string& fma_isa = ceilings.fma_isa;
  const double fma_s = ceilings.fma_s, copy_s = ceilings.copy_s;
  const double peak = ceilings.fma_gflops;
  const double copy_bw = ceilings.copy_gbs;
  char line[256];
  std::snprintf(line, sizeof line, "cpu: %s, %d threads, GEMM kernel %s, nominal fp32 peak %.0f GFLOP/s",
                cpu_model().c_str(), cpu::num_threads(), cpu::gemm_isa(), nominal);
  runner.note(line);
  if (peak > 0) {
    runner.report({"cpu", "ceiling.fma_" + fma_isa, "registers", fma_s * 1e3, peak, "GFLOP/s", 100.0,
                   100.0 * peak / nominal});
  }
  runner.report({"cpu", "ceiling.copy", "256MiB", copy_s * 1e3, copy_bw, "GB/s", 100.0, -1});

  std::mt19937 rng(1234);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);

  struct GemmCase {
    int64_t M, N, K;
    bool tA, tB;
  };
  const GemmCase gemms[] = {{1024, 1024, 1024, false, false}, {1024, 1024, 1024, false, true},
                            {2048, 2048, 2048, false, false}, {8192, 4096, 1024, false, false},
                            {8192, 1024, 4096, false, false}};
  // bf16 ceiling: vdpbf16ps when the CPU has it, else the float32 path (bf16 widened) at the FMA rate.
  const bool bf16_wanted = runner.wanted("cpu", "ceiling.dpbf16") || runner.wanted("cpu", "gemm_bf16") ||
                           runner.wanted("cpu", "gemm_grouped_bf16");
  double bf16_peak = 0;
  if (bf16_wanted) {
    double dp_s = 0;
    static const double dp_peak = measure_dpbf16_peak(&dp_s);
    bf16_peak = dp_peak > 0 ? dp_peak : peak;
    if (dp_peak > 0)
      runner.report({"cpu", "ceiling.dpbf16", "registers", dp_s * 1e3, dp_peak, "GFLOP/s", 100.0,
                     100.0 * dp_peak / (2 * nominal)});
    std::snprintf(line, sizeof line, "cpu: bf16 GEMM kernel %s (%% of %s)", cpu::gemm_bf16_isa(),
                  dp_peak > 0 ? "ceiling.dpbf16; an AMX kernel's tile peak is 8x the FMA ceiling and not measured here"
                              : "the FMA ceiling: bf16 widened to the float32 path");
    runner.note(line);
  }

  // One GEMM of dtype dt (A, B) -> float32 C; returns median seconds.
  const auto time_gemm = [&](DType dt, int64_t M, int64_t N, int64_t K, bool tA, bool tB) {
    std::vector<float> A(size_t(M * K)), B(size_t(K * N)), C(size_t(M * N), 0.0f);
    for (auto& x : A) x = dist(rng);
    for (auto& x : B) x = dist(rng);
    std::vector<uint16_t> A16, B16;
    const void* pa = A.data();
    const void* pb = B.data();
    if (dt == DType::BF16) {
      A16.resize(A.size());
      B16.resize(B.size());
      cpu::cast(kCpuLaunch, DType::F32, A.data(), DType::BF16, A16.data(), int64_t(A.size()));
      cpu::cast(kCpuLaunch, DType::F32, B.data(), DType::BF16, B16.data(), int64_t(B.size()));
      pa = A16.data();
      pb = B16.data();
    }
    GemmShape g;
    g.M = M;
    g.N = N;
    g.K = K;
    g.transA = tA;
    g.transB = tB;
    g.lda = tA ? M : K;
    g.ldb = tB ? K : N;
    g.ldc = N;
    return median_seconds([&] { cpu::gemm(kCpuLaunch, dt, pa, dt, pb, DType::F32, C.data(), g); });
  };
  for (const DType dt : {DType::F32, DType::BF16}) {
    const bool bf16 = dt == DType::BF16;
    const char* op = bf16 ? "gemm_bf16" : "gemm_f32";
    if (!runner.wanted("cpu", op)) continue;
    const double ceiling = bf16 ? bf16_peak : peak, nominal_peak = bf16 ? 2 * nominal : nominal;
    for (const auto& c : gemms) {
      const double s = time_gemm(dt, c.M, c.N, c.K, c.tA, c.tB);
      const double rate = 2.0 * double(c.M) * double(c.N) * double(c.K) / s / 1e9;
      std::string shape = shape_str({c.M, c.N, c.K});
      if (c.tA) shape += " tA";
      if (c.tB) shape += " tB";
      if (bf16) shape += " ->f32";
      runner.report({"cpu", op, shape, s * 1e3, rate, "GFLOP/s", ceiling > 0 ? 100.0 * rate / ceiling : -1,
                     100.0 * rate / nominal_peak});
    }
  }

  // Grouped expert GEMM at the 435M FFN shape: E equal segments of x [T, d] times w[e] [d, f].
  for (const DType dt : {DType::F32, DType::BF16}) {
    const bool bf16 = dt == DType::BF16;
    const char* op = bf16 ? "gemm_grouped_bf16" : "gemm_grouped_f32";
    if (!runner.wanted("cpu", op)) continue;
    const int64_t T = 8192, d = 1024, f = 4096, E = 8;
    const size_t es = dtype_size(dt);
    std::vector<uint8_t> x(size_t(T * d) * es), w(size_t(E * d * f) * es);
    std::vector<uint8_t> y(size_t(T * f) * es);
    cpu::random_uniform(kCpuLaunch, dt, x.data(), T * d, 21, 0, -1.0f, 1.0f);
    cpu::random_uniform(kCpuLaunch, dt, w.data(), E * d * f, 22, 0, -0.03f, 0.03f);
    std::vector<int32_t> offsets(size_t(E + 1));
    for (int64_t e = 0; e <= E; ++e) offsets[size_t(e)] = int32_t(e * T / E);
    const double s = median_seconds([&] {
      cpu::grouped_gemm(kCpuLaunch, dt, x.data(), dt, w.data(), false, offsets.data(), E, T, d, f, dt, y.data());
    }, 0.1);
    const double rate = 2.0 * double(T) * double(d) * double(f) / s / 1e9;
    const double ceiling = bf16 ? bf16_peak : peak, nominal_peak = bf16 ? 2 * nominal : nominal;
    runner.report({"cpu", op, "T8192 d1024 f4096 E8", s * 1e3, rate, "GFLOP/s",
                   ceiling > 0 ? 100.0 * rate / ceiling : -1, 100.0 * rate / nominal_peak});
  }

  // Memory-bound kernels on [rows, cols] = [32768, 1024] float32 (128 MiB).
  const int64_t rows = 32768, cols = 1024, n = rows * cols;
  struct MemCase {
    const char* op;
    std::string shape;
    double bytes;
    std::function<void()> fn;
  };
  std::vector<float> x, y, bias;
  std::vector<uint16_t> y16;
  std::vector<int32_t> idx;
  std::vector<MemCase> cases;
  const auto add = [&](const char* op, std::string shape, double bytes, std::function<void()> fn) {
    if (runner.wanted("cpu", op)) cases.push_back({op, std::move(shape), bytes, std::move(fn)});
  };
  const std::string rc = shape_str({rows, cols});
  add("fill_f32", rc, 4.0 * n, [&] { cpu::fill(kCpuLaunch, DType::F32, y.data(), n, 0.5); });
  add("cast_f32_bf16", rc, 6.0 * n,
      [&] { cpu::cast(kCpuLaunch, DType::F32, x.data(), DType::BF16, y16.data(), n); });
  add("unary_silu_f32", rc, 8.0 * n,
      [&] { cpu::unary(kCpuLaunch, UnaryOp::Silu, DType::F32, x.data(), y.data(), n, 0.0f); });
  add("unary_silu_bf16", rc, 4.0 * n,
      [&] { cpu::unary(kCpuLaunch, UnaryOp::Silu, DType::BF16, y16.data(), y.data(), n, 0.0f); });
  const StridedView full = view2(rows, cols, cols, 1), row_bcast = view2(rows, cols, 0, 1);
  add("binary_add_bcast_f32", rc + " + " + shape_str({cols}), 8.0 * n + 4.0 * cols, [&] {
    cpu::binary(kCpuLaunch, BinaryOp::Add, DType::F32, x.data(), full, bias.data(), row_bcast, y.data(), n);
  });
  add("softmax_rows_f32", rc, 8.0 * n,
      [&] { cpu::softmax(kCpuLaunch, false, DType::F32, x.data(), y.data(), rows, cols, 1); });
  add("reduce_sum_rows_f32", rc, 4.0 * n + 4.0 * rows,
      [&] { cpu::reduce(kCpuLaunch, ReduceOp::Sum, DType::F32, x.data(), y.data(), rows, cols, 1); });
  // y [8192, 4096] = transpose of x viewed as [4096, 8192].
  const StridedView transposed = view2(8192, 4096, 1, 8192);
  add("strided_copy_transpose", "4096x8192->8192x4096", 8.0 * n,
      [&] { cpu::strided_copy(kCpuLaunch, DType::F32, x.data(), transposed, y.data(), n); });
  add("index_select_rows_f32", rc, 8.0 * n + 4.0 * rows, [&] {
    cpu::index_select(kCpuLaunch, DType::F32, x.data(), idx.data(), y.data(), 1, rows, rows, cols);
  });
  if (cases.empty()) return;

  x.resize(size_t(n));
  y.resize(size_t(n));
  y16.resize(size_t(n));
  bias.resize(size_t(cols));
  idx.resize(size_t(rows));
  cpu::random_uniform(kCpuLaunch, DType::F32, x.data(), n, 7, 0, -4.0f, 4.0f);
  cpu::fill(kCpuLaunch, DType::F32, y.data(), n, 0.0);
  cpu::cast(kCpuLaunch, DType::F32, x.data(), DType::BF16, y16.data(), n);
  for (auto& v : bias) v = dist(rng);
  std::uniform_int_distribution<int32_t> pick(0, int32_t(rows - 1));
  for (auto& v : idx) v = pick(rng);

  for (const auto& c : cases) {
    const double s = median_seconds(c.fn, 0.5);
    const double gbs = c.bytes / s / 1e9;
    runner.report({"cpu", c.op, c.shape, s * 1e3, gbs, "GB/s", 100.0 * gbs / copy_bw, -1});
  }
}

}  // namespace moma::bench
