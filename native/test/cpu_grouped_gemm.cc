// The grouped expert GEMM driver (csrc/cpu/grouped_gemm.cc) on every kernel this CPU runs (the
// float32 ones: avx512, avx2, generic, with bf16 widened; the bf16 ones: amx, avx512bf16; a kernel
// the CPU lacks is reported as skipped, not counted), through grouped_gemm_on / grouped_gemm_wgrad_on:
// - segments of awkward sizes: empty experts (also first and last), 1-row experts, an expert of
//   one MR tile, one past KC rows (the weight gradient's inner dimension spans several K slices),
//   unused rows past offsets[E]; K past 3 KC slices for the forward (the driver keeps such tiles in
//   L2 across slices), N off the NR panel width; both weight layouts; float32 and bf16 operands;
//   float32 and bf16 y; and 40 experts of 0 to 3 rows;
// - each expert's result bit-identical to cpu::gemm_on (the blocked driver) on that expert alone
//   with the same paths (same panels, slices and kernel: so also independent of the thread
//   count), a bf16 y the float32 result rounded once, rows past offsets[E] and the weight
//   gradient of an empty expert exactly 0;
// - within float32 summation error of a float64 reference on the (bf16-widened) inputs:
//   |got - want| <= gamma_n sum_k |x w| + n 2^-126, n = K + ceil(K / 256) + 2 roundings
//   (gamma_n = n u / (1 - n u), u = 2^-24; the 2^-126 term covers the denormals the bf16
//   instructions flush), plus 2^-8 |want| for a bf16 y.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "../../csrc/core/bf16.h"
#include "../../csrc/core/error.h"
#include "../../csrc/cpu/gemm_kernels.h"
#include "../../csrc/cpu/grouped_driver.h"
#include "harness.h"

namespace moma::native_test {
namespace {

constexpr DType kF32 = DType::F32;

struct NamedPaths {
  std::string name;
  cpu::GemmPaths paths;
};

// The kernels this CPU runs, each as the paths MOMA_CPU_GEMM=<name> picks.
std::vector<NamedPaths> runnable_paths() {
  std::vector<NamedPaths> out;
  for (const char* name : {"avx512", "avx2", "neon", "generic", "avx512bf16", "amx"}) {
    try {
      out.push_back({name, cpu::gemm_paths_for(name)});
    } catch (const MomaException& e) {
      std::printf("cpu grouped gemm: kernel %s skipped (%s)\n", name, e.what());
    }
  }
  return out;
}

// Float64 sums and magnitudes of y[r] = x[r] @ op(w[e]) (forward) or dw[e] = x[seg]^T dy[seg].
struct Reference {
  std::vector<double> sum, mag;
};

Reference forward_reference(const std::vector<float>& x, const std::vector<float>& w, bool trans_w,
                            const std::vector<int32_t>& off, int64_t R, int64_t K, int64_t N) {
  Reference ref{std::vector<double>(R * N, 0.0), std::vector<double>(R * N, 0.0)};
  const int64_t E = int64_t(off.size()) - 1;
  for (int64_t e = 0; e < E; ++e)
    for (int64_t r = off[e]; r < off[e + 1]; ++r)
      for (int64_t k = 0; k < K; ++k) {
        const double xv = x[r * K + k];
        for (int64_t n = 0; n < N; ++n) {
          const double p = xv * w[e * K * N + (trans_w ? n * K + k : k * N + n)];
          ref.sum[r * N + n] += p;
          ref.mag[r * N + n] += std::fabs(p);
        }
      }
  return ref;
}

Reference wgrad_reference(const std::vector<float>& x, const std::vector<float>& dy, const std::vector<int32_t>& off,
                          int64_t K, int64_t N) {
  const int64_t E = int64_t(off.size()) - 1;
  Reference ref{std::vector<double>(E * K * N, 0.0), std::vector<double>(E * K * N, 0.0)};
  for (int64_t e = 0; e < E; ++e)
    for (int64_t r = off[e]; r < off[e + 1]; ++r)
      for (int64_t k = 0; k < K; ++k) {
        const double xv = x[r * K + k];
        for (int64_t n = 0; n < N; ++n) {
          const double p = xv * dy[r * N + n];
          ref.sum[e * K * N + k * N + n] += p;
          ref.mag[e * K * N + k * N + n] += std::fabs(p);
        }
      }
  return ref;
}

// Elements of got (float32) outside the bound for an inner dimension of `depth`; bf16_out adds
// the rounding of a bf16 output.
size_t off_reference(const std::vector<float>& got, const Reference& ref, int64_t depth, bool bf16_out,
                     std::string* first) {
  const double u = std::ldexp(1.0, -24), n = double(depth + (depth + 255) / 256 + 2);
  const double gamma = n * u / (1.0 - n * u), flush = n * std::ldexp(1.0, -126);
  size_t bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double want = ref.sum[i], err = std::fabs(double(got[i]) - want);
    double bound = gamma * ref.mag[i] + flush;
    if (bf16_out) bound += std::ldexp(1.0, -8) * (std::fabs(want) + bound);
    if (!(err <= bound)) {
      if (bad++ == 0)
        *first = "element " + std::to_string(i) + ": got " + std::to_string(got[i]) + " want " + std::to_string(want);
    }
  }
  return bad;
}

const char* at(DType dt, const std::vector<uint8_t>& b, int64_t i) {
  return reinterpret_cast<const char*>(b.data()) + i * int64_t(dtype_size(dt));
}

// One segment layout on every kernel, both weight layouts, dtype dt for x / w / dy.
void grouped_check(const std::vector<NamedPaths>& all, const std::vector<int32_t>& off, int64_t R, int64_t K,
                   int64_t N, DType dt, const std::string& label) {
  const int64_t E = int64_t(off.size()) - 1;
  const std::vector<uint8_t> x = make(dt, rand_f(R * K, -1, 1)), w = make(dt, rand_f(E * K * N, -1, 1)),
                             dy = make(dt, rand_f(R * N, -1, 1));
  const std::vector<float> wx = as_floats(dt, x, R * K), ww = as_floats(dt, w, E * K * N),
                           wdy = as_floats(dt, dy, R * N);
  const Reference wref = wgrad_reference(wx, wdy, off, K, N);
  for (bool trans_w : {false, true}) {
    const Reference fref = forward_reference(wx, ww, trans_w, off, R, K, N);
    for (const NamedPaths& np : all) {
      const std::string tag = label + " " + dtype_name(dt) + (trans_w ? " transW" : "") + " on " + np.name;
      std::vector<float> y(R * N, NAN), each(R * N, 0.0f);
      std::vector<uint16_t> y16(R * N, 0xFFFF);
      cpu::grouped_gemm_on(np.paths, dt, x.data(), dt, w.data(), trans_w, off.data(), E, R, K, N, kF32, y.data());
      cpu::grouped_gemm_on(np.paths, dt, x.data(), dt, w.data(), trans_w, off.data(), E, R, K, N, DType::BF16,
                           y16.data());
      for (int64_t e = 0; e < E; ++e) {
        GemmShape g;
        g.M = off[e + 1] - off[e];
        g.N = N;
        g.K = K;
        g.transB = trans_w;
        g.lda = K;
        g.ldb = trans_w ? K : N;
        g.ldc = N;
        cpu::gemm_on(np.paths, dt, at(dt, x, off[e] * K), dt, at(dt, w, e * K * N), kF32, each.data() + off[e] * N, g);
      }
      expect(std::memcmp(y.data(), each.data(), y.size() * sizeof(float)) == 0,
             "cpu grouped_gemm " + tag + ": each expert bit-identical to cpu::gemm_on on it, rows past offsets[E] 0");
      bool rounded = true;
      for (int64_t i = 0; i < R * N; ++i) rounded &= y16[i] == f32_to_bf16(y[i]);
      expect(rounded, "cpu grouped_gemm " + tag + ": bf16 y = the float32 y rounded once");
      std::string first;
      const size_t bad = off_reference(y, fref, K, false, &first);
      expect(bad == 0, "cpu grouped_gemm " + tag + ": " + std::to_string(bad) + " of " + std::to_string(R * N) +
                           " off the float64 reference (" + first + ")");

      if (trans_w) continue;
      std::vector<float> dw(E * K * N, NAN), dw_each(E * K * N, 0.0f);
      cpu::grouped_gemm_wgrad_on(np.paths, dt, x.data(), dt, dy.data(), off.data(), E, R, K, N, dw.data());
      for (int64_t e = 0; e < E; ++e) {
        GemmShape g;
        g.M = K;
        g.N = N;
        g.K = off[e + 1] - off[e];
        g.transA = true;
        g.lda = K;
        g.ldb = N;
        g.ldc = N;
        cpu::gemm_on(np.paths, dt, at(dt, x, off[e] * K), dt, at(dt, dy, off[e] * N), kF32, dw_each.data() + e * K * N,
                     g);
      }
      expect(std::memcmp(dw.data(), dw_each.data(), dw.size() * sizeof(float)) == 0,
             "cpu grouped_gemm_wgrad " + tag + ": each expert bit-identical to cpu::gemm_on on it, empty experts 0");
      int64_t deepest = 0;
      for (int64_t e = 0; e < E; ++e) deepest = std::max<int64_t>(deepest, off[e + 1] - off[e]);
      const size_t wbad = off_reference(dw, wref, deepest, false, &first);
      expect(wbad == 0, "cpu grouped_gemm_wgrad " + tag + ": " + std::to_string(wbad) + " of " +
                            std::to_string(E * K * N) + " off the float64 reference (" + first + ")");
    }
  }
}

}  // namespace

void cpu_grouped_gemm_sanity() {
  g_case = "cpu grouped gemm driver";
  const std::vector<NamedPaths> all = runnable_paths();
  // Empty first / middle / last experts, 1 row, one f32 MR tile (14), past KC and 2 KC (530), 45;
  // 7 unused rows. K = 777: four float32 K slices (two bf16 ones); N = 70: three NR panels.
  const std::vector<int32_t> ragged = {0, 0, 1, 1, 531, 545, 545, 590, 590};
  for (DType dt : {kF32, DType::BF16}) grouped_check(all, ragged, 597, 777, 70, dt, "ragged");
  // 40 experts of 0..3 rows.
  std::vector<int32_t> tiny = {0};
  for (int e = 0; e < 40; ++e) tiny.push_back(tiny.back() + e % 4);
  for (DType dt : {kF32, DType::BF16}) grouped_check(all, tiny, tiny.back() + 3, 33, 17, dt, "tiny experts");
}

}  // namespace moma::native_test
