// CPU GEMM driver: Goto/BLIS blocking around register-tiled micro-kernels, float32 and bf16.
//
// For each batch entry, C = alpha * op(A) @ op(B) + beta * C is computed as
//   for each block of at most MB rows of A (MB = 12 * MC):
//     for each KC-deep slice of K:
//       pack op(A)[rows, slice] into MR-row panels                (zero-padded, 64B aligned)
//       for each NC-wide block of columns:
//         pack op(B)[slice, cols] into NR-column panels           (zero-padded)
//         threads take work items (an MC-row group of A panels x a run of B panels) from a
//         shared counter; within an item a B micro-panel (KC x NR) stays in L1 across the MC
//         rows and the A group stays in L2
// The first K slice applies beta (C is not read when beta == 0); later slices accumulate.
// Packing costs O(MK + KN) memory traffic per pass against 2 * MK * NC FLOPs, and turns any
// transpose / leading dimension into the unit-stride panels the kernels need.
// Two paths share this driver (gemm_kernels.h describes the panels):
// - float32: taken when A or B is float32, or when no bf16 kernel runs here. The packers are
//   templated on the source element type and widen bf16 to float32 as they copy (exact), with
//   alpha folded into A, so a bf16 operand costs nothing beyond the pack and the results are
//   bit-identical to widening the bf16 inputs first and running the float32 GEMM.
// - bf16 x bf16: A and B both bf16 and a bf16 kernel available (AMX tiles, else AVX-512-BF16).
//   The panels stay bf16 (B in the VNNI pair layout, A in pairs or 32-k rows, K zero-padded to
//   the kernel's granule), products are exact in float32 and accumulate in float32 (rounded after
//   each instruction's pair or tile step, denormals flushed), alpha is applied at the store. Half
//   the pack bytes and twice (AVX-512-BF16) or eight times (AMX) the multiply-adds per cycle of the
//   float32 path; not bit-identical to it (the sums round in a different order), within float32
//   summation error of the exact product of the bf16 inputs.
// A bf16 C is computed in a float32 staging matrix per batch entry (C widened into it when
// beta != 0) and rounded once to bf16 (nearest even, bf16.h) on store; a float32 C is written in
// place.
// Determinism: threads split M and N, never K. Each C tile is computed by one thread per K slice
// with the same panels and the same kernel whatever the thread count, and the K slices run in
// order, so results do not depend on the number of threads.
// Threads: the two packs run as one parallel_for over panels, the tiles as a second one; both
// hand out items dynamically (about 8 compute items per thread, split along N when M is small)
// so small-M, small-N and unevenly loaded cores all keep every thread busy. Batches of many
// independent matrices are spread over threads whole instead (each packs into its own buffers).
// Skinny shapes (one matrix with N or K <= 16: a mixture-of-experts router's GEMMs) go to
// gemm_skinny.cc instead, which streams the big operand once (cpu::gemm only; gemm_on always runs
// this driver).
// Kernel choice happens once, at the first call (gemm_paths_for; MOMA_CPU_GEMM overrides it):
// float32 AVX-512 (14 x 32 tile), else AVX2 + FMA (6 x 16), else NEON on AArch64 (8 x 12), else
// generic; bf16 AMX (32 x 32), else AVX-512-BF16 (14 x 32), else the float32 path (always on
// AArch64: bf16 operands are widened while packing and run on the NEON float32 kernel).
// Pack buffers are per thread (thread_local), grow to the largest request and are freed when the
// thread exits.
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include "../core/bf16.h"
#include "../core/error.h"
#include "cpu_features.h"
#include "kernels.h"
#include "gemm_kernels.h"
#include "gemm_pack.h"
#include "thread_pool.h"

namespace moma::cpu {
namespace {

// Problems below this many FLOPs run on the calling thread: waking the pool costs more.
constexpr double kSerialFlops = 1 << 21;

thread_local pack::Buffer tl_pack_a;
thread_local pack::Buffer tl_pack_b;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

// C = beta * C for the K == 0 case (beta == 0 writes zeros without reading C).
void scale_c(float* C, int64_t M, int64_t N, int64_t ldc, float beta) {
  if (beta == 1.0f) return;
  for (int64_t i = 0; i < M; ++i) {
    float* row = C + i * ldc;
    if (beta == 0.0f) {
      std::fill(row, row + N, 0.0f);
    } else {
      for (int64_t j = 0; j < N; ++j) row[j] *= beta;
    }
  }
}

// Calls fn(i) for every i in [0, n) on `threads` threads. Items are handed out one at a time
// from a shared counter rather than in fixed chunks, so a core that is slowed down (a busy
// hypervisor neighbour, a late wake-up) takes fewer items instead of stalling the others.
template <typename Fn>
void run_dynamic(int threads, int64_t n, const Fn& fn) {
  if (threads <= 1 || n <= 1) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  std::atomic<int64_t> next{0};
  parallel_for(std::min<int64_t>(threads, n), 1, [&](int64_t, int64_t) {
    for (int64_t i = next.fetch_add(1, std::memory_order_relaxed); i < n;
         i = next.fetch_add(1, std::memory_order_relaxed))
      fn(i);
  });
}

// The float32 path for one matrix: operands of type TA / TB widened while packing, alpha folded
// into the A panels.
template <typename TA, typename TB>
struct F32Path {
  using Elem = float;
  const GemmKernel& kr;
  const GemmShape& g;
  const TA* A;
  const TB* B;

  int64_t mr() const { return kr.mr; }
  int64_t nr() const { return kr.nr; }
  int64_t kc() const { return kr.kc; }
  int64_t mc() const { return kr.mc; }
  int64_t nc() const { return kr.nc; }
  int64_t depth(int64_t kc) const { return kc; }
  void pack_a(int64_t i0, int64_t rows, int64_t p0, int64_t kc, float* dst) const {
    pack::a_panel_f32(A, g.lda, g.transA, i0, rows, p0, kc, kr.mr, g.alpha, dst);
  }
  void pack_b(int64_t j0, int64_t cols, int64_t p0, int64_t kc, float* dst) const {
    pack::b_panel_f32(B, g.ldb, g.transB, j0, cols, p0, kc, kr.nr, dst);
  }
  void begin() const {}
  void end() const {}
  void micro(int64_t kd, const float* a, const float* b, float* c, int64_t ldc, int64_t rows, int64_t cols,
             float beta) const {
    kr.micro(kd, a, b, c, ldc, rows, cols, beta);
  }
};

// The bf16 x bf16 path for one matrix: bf16 panels, alpha applied by the micro-kernel's store.
struct Bf16Path {
  using Elem = uint16_t;
  const GemmKernelBf16& kr;
  const GemmShape& g;
  const uint16_t* A;
  const uint16_t* B;

  int64_t mr() const { return kr.mr; }
  int64_t nr() const { return kr.nr; }
  int64_t kc() const { return kr.kc; }
  int64_t mc() const { return kr.mc; }
  int64_t nc() const { return kr.nc; }
  int64_t depth(int64_t kc) const { return round_up(kc, kr.k_align); }
  void pack_a(int64_t i0, int64_t rows, int64_t p0, int64_t kc, uint16_t* dst) const {
    pack::a_panel_bf16(A, g.lda, g.transA, i0, rows, p0, kc, depth(kc), kr.mr, kr.a_layout, dst);
  }
  void pack_b(int64_t j0, int64_t cols, int64_t p0, int64_t kc, uint16_t* dst) const {
    pack::b_panel_vnni(B, g.ldb, g.transB, j0, cols, p0, kc, depth(kc), kr.nr, dst);
  }
  void begin() const {
    if (kr.begin) kr.begin();
  }
  void end() const {
    if (kr.end) kr.end();
  }
  void micro(int64_t kd, const uint16_t* a, const uint16_t* b, float* c, int64_t ldc, int64_t rows, int64_t cols,
             float beta) const {
    kr.micro(kd, a, b, c, ldc, rows, cols, g.alpha, beta);
  }
};

// One matrix of the batch on `threads` threads, into a float32 C with leading dimension ldc.
template <typename Path>
void gemm_single(const Path& path, float* C, int64_t ldc, int threads) {
  using Elem = typename Path::Elem;
  const GemmShape& g = path.g;
  const int64_t M = g.M, N = g.N, K = g.K;
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    scale_c(C, M, N, ldc, g.beta);
    return;
  }
  const int64_t MR = path.mr(), NR = path.nr(), KC = path.kc(), MC = path.mc(), NC = path.nc();
  const int64_t MB = 12 * MC;
  const int64_t mc_panels = std::max<int64_t>(1, MC / MR);
  const int64_t mb_max = std::min(M, MB), kd_max = path.depth(std::min(K, KC)), nc_max = std::min(N, NC);
  Elem* pa = tl_pack_a.get<Elem>(size_t(ceil_div(mb_max, MR) * MR * kd_max));
  Elem* pb = tl_pack_b.get<Elem>(size_t(ceil_div(nc_max, NR) * NR * kd_max));

  for (int64_t m0 = 0; m0 < M; m0 += MB) {
    const int64_t mb = std::min(MB, M - m0);
    const int64_t a_panels = ceil_div(mb, MR);
    const int64_t ic_groups = ceil_div(a_panels, mc_panels);
    for (int64_t p0 = 0; p0 < K; p0 += KC) {
      const int64_t kc = std::min(KC, K - p0), kd = path.depth(kc);
      const float beta = p0 == 0 ? g.beta : 1.0f;
      for (int64_t n0 = 0; n0 < N; n0 += NC) {
        const int64_t nc = std::min(NC, N - n0);
        const int64_t b_panels = ceil_div(nc, NR);
        // A is packed together with the first B block of this K slice.
        const int64_t a_jobs = n0 == 0 ? a_panels : 0;
        run_dynamic(threads, a_jobs + b_panels, [&](int64_t t) {
          if (t < a_jobs) {
            path.pack_a(m0 + t * MR, std::min(MR, mb - t * MR), p0, kc, pa + t * MR * kd);
          } else {
            const int64_t j = t - a_jobs;
            path.pack_b(n0 + j * NR, std::min(NR, nc - j * NR), p0, kc, pb + j * NR * kd);
          }
        });

        // Work items: one MC-row group of A panels times a run of B panels, about 8 per thread.
        const int64_t jr_groups =
            std::clamp<int64_t>(ceil_div(8 * int64_t(threads), ic_groups), 1, b_panels);
        run_dynamic(threads, ic_groups * jr_groups, [&](int64_t item) {
          const int64_t ig = item / jr_groups, jg = item % jr_groups;
          const int64_t ia = ig * mc_panels, ie = std::min(a_panels, ia + mc_panels);
          const int64_t jb = b_panels * jg / jr_groups, je = b_panels * (jg + 1) / jr_groups;
          path.begin();
          for (int64_t jr = jb; jr < je; ++jr) {
            const Elem* bp = pb + jr * NR * kd;
            const int64_t cols = std::min(NR, nc - jr * NR);
            float* cbase = C + m0 * ldc + n0 + jr * NR;
            for (int64_t ir = ia; ir < ie; ++ir) {
              path.micro(kd, pa + ir * MR * kd, bp, cbase + ir * MR * ldc, ldc, std::min(MR, mb - ir * MR), cols,
                         beta);
            }
          }
          path.end();
        });
      }
    }
  }
}

const GemmKernel& best_f32_kernel() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  const bool fma = __builtin_cpu_supports("fma");
  if (gemm_kernel_avx512() && fma && __builtin_cpu_supports("avx512f") &&
      __builtin_cpu_supports("avx512dq"))
    return *gemm_kernel_avx512();
  if (gemm_kernel_avx2() && fma && __builtin_cpu_supports("avx2")) return *gemm_kernel_avx2();
#endif
  // NEON is in every AArch64 CPU: the kernel exists exactly when this is an AArch64 build.
  if (gemm_kernel_neon()) return *gemm_kernel_neon();
  return gemm_kernel_generic();
}

// The f32 kernel named `isa` when this CPU runs it, else nullptr.
const GemmKernel* runnable_f32_kernel(const std::string& isa) {
  if (isa == "generic") return &gemm_kernel_generic();
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  const bool fma = __builtin_cpu_supports("fma");
  if (isa == "avx512" && fma && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq"))
    return gemm_kernel_avx512();
  if (isa == "avx2" && fma && __builtin_cpu_supports("avx2")) return gemm_kernel_avx2();
#endif
  if (isa == "neon") return gemm_kernel_neon();
  return nullptr;
}

const GemmKernelBf16* runnable_amx_kernel(const char** why) {
  if (!gemm_kernel_amx()) {
    *why = "this build has no AMX kernel (not x86-64)";
    return nullptr;
  }
  return cpu_amx_bf16_usable(why) ? gemm_kernel_amx() : nullptr;
}

const GemmKernelBf16* runnable_avx512_bf16_kernel(const char** why) {
  if (!gemm_kernel_avx512_bf16()) {
    *why = "this build has no AVX-512-BF16 kernel (not x86-64)";
    return nullptr;
  }
  if (!cpu_has_avx512bf16()) {
    *why = "the CPU has no AVX-512-BF16 (CPUID leaf 7 subleaf 1)";
    return nullptr;
  }
  return gemm_kernel_avx512_bf16();
}

const GemmPaths& chosen_paths() {
  static const GemmPaths paths = gemm_paths_from_env();
  return paths;
}

void check_gemm_dtype(const char* operand, DType dt) {
  if (dt != DType::F32 && dt != DType::BF16)
    fail("ERR_DTYPE", "gemm: ", operand, " is ", dtype_name(dt), ", expected float32 or bfloat16");
}

// One matrix of the batch with C of dtype dt_c (batch strides already applied), computed by
// run(C32, ldc, threads) into a float32 C. A float32 C is computed in place; a bf16 C through a
// float32 staging matrix (rows N apart) that holds the widened C when beta != 0 and is rounded
// once into C at the end.
template <typename Run>
void gemm_entry(const GemmShape& g, DType dt_c, void* C, int threads, const Run& run) {
  if (dt_c == DType::F32) {
    run(static_cast<float*>(C), g.ldc, threads);
    return;
  }
  const int64_t M = g.M, N = g.N;
  uint16_t* c16 = static_cast<uint16_t*>(C);
  std::unique_ptr<float[]> stage(new float[static_cast<size_t>(M * N)]);
  float* s = stage.get();
  const int64_t grain = std::max<int64_t>(1, 65536 / N);
  auto rows = [&](const auto& fn) {
    if (threads > 1) parallel_for(M, grain, fn);
    else fn(0, M);
  };
  if (g.beta != 0.0f)
    rows([&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i)
        for (int64_t j = 0; j < N; ++j) s[i * N + j] = bf16_to_f32(c16[i * g.ldc + j]);
    });
  run(s, N, threads);
  rows([&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i)
      for (int64_t j = 0; j < N; ++j) c16[i * g.ldc + j] = f32_to_bf16(s[i * N + j]);
  });
}

// Every batch entry: entry(b, threads) computes matrix b on `threads` threads.
template <typename Entry>
void gemm_batched(const GemmShape& g, const Entry& entry) {
  if (g.batch <= 0 || g.M <= 0 || g.N <= 0) return;
  const double flops = 2.0 * double(g.M) * double(g.N) * double(g.K);
  int threads = flops * double(g.batch) < kSerialFlops ? 1 : std::max(1, num_threads());

  // Whole matrices per thread when there are enough of them and they write disjoint outputs.
  const bool by_batch = threads > 1 && g.strideC != 0 && g.batch >= threads &&
                        (g.batch % threads == 0 || g.batch >= 4 * threads);
  if (by_batch) {
    run_dynamic(threads, g.batch, [&](int64_t b) { entry(b, 1); });
    return;
  }
  if (flops < kSerialFlops) threads = 1;
  for (int64_t b = 0; b < g.batch; ++b) entry(b, threads);
}

char* entry_c(DType dt_c, void* C, const GemmShape& g, int64_t b) {
  return static_cast<char*>(C) + b * g.strideC * int64_t(dtype_size(dt_c));
}

template <typename TA, typename TB>
void gemm_f32_path(const GemmKernel& kernel, const TA* A, const TB* B, DType dt_c, void* C, const GemmShape& g) {
  gemm_batched(g, [&](int64_t b, int threads) {
    const F32Path<TA, TB> path{kernel, g, A + b * g.strideA, B + b * g.strideB};
    gemm_entry(g, dt_c, entry_c(dt_c, C, g, b), threads,
               [&](float* c32, int64_t ldc, int t) { gemm_single(path, c32, ldc, t); });
  });
}

void gemm_bf16_path(const GemmKernelBf16& kernel, const uint16_t* A, const uint16_t* B, DType dt_c, void* C,
                    const GemmShape& g) {
  gemm_batched(g, [&](int64_t b, int threads) {
    const Bf16Path path{kernel, g, A + b * g.strideA, B + b * g.strideB};
    gemm_entry(g, dt_c, entry_c(dt_c, C, g, b), threads,
               [&](float* c32, int64_t ldc, int t) { gemm_single(path, c32, ldc, t); });
  });
}

}  // namespace

GemmPaths gemm_paths_for(const char* choice) {
  const std::string want = choice ? choice : "";
  GemmPaths paths;
  const char* why = nullptr;
  if (want.empty()) {
    paths.f32 = &best_f32_kernel();
    paths.bf16 = runnable_amx_kernel(&why);
    if (!paths.bf16) paths.bf16 = runnable_avx512_bf16_kernel(&why);
    return paths;
  }
  if (want == "amx" || want == "avx512bf16") {
    paths.f32 = &best_f32_kernel();
    paths.bf16 = want == "amx" ? runnable_amx_kernel(&why) : runnable_avx512_bf16_kernel(&why);
    if (!paths.bf16) fail("ERR_DEVICE", "gemm: MOMA_CPU_GEMM=", want, " cannot run here: ", why);
    return paths;
  }
  if (want == "avx512" || want == "avx2" || want == "neon" || want == "generic") {
    paths.f32 = runnable_f32_kernel(want);
    if (!paths.f32)
      fail("ERR_DEVICE", "gemm: MOMA_CPU_GEMM=", want, " cannot run here: ",
           want == "avx512" ? "the CPU lacks AVX-512F / AVX-512DQ / FMA"
           : want == "avx2" ? "the CPU lacks AVX2 / FMA"
                            : "NEON kernels are only built for AArch64");
    return paths;
  }
  fail("ERR_ARG", "gemm: MOMA_CPU_GEMM=", want, " is not one of amx, avx512bf16, avx512, avx2, neon, generic");
}

GemmPaths gemm_paths_from_env() { return gemm_paths_for(std::getenv("MOMA_CPU_GEMM")); }

void gemm_on(const GemmPaths& paths, DType dt_a, const void* A, DType dt_b, const void* B, DType dt_c, void* C,
             const GemmShape& g) {
  check_gemm_dtype("A", dt_a);
  check_gemm_dtype("B", dt_b);
  check_gemm_dtype("C", dt_c);
  const GemmKernel& kernel = *paths.f32;
  if (dt_a == DType::BF16 && dt_b == DType::BF16 && paths.bf16)
    gemm_bf16_path(*paths.bf16, static_cast<const uint16_t*>(A), static_cast<const uint16_t*>(B), dt_c, C, g);
  else if (dt_a == DType::F32 && dt_b == DType::F32)
    gemm_f32_path(kernel, static_cast<const float*>(A), static_cast<const float*>(B), dt_c, C, g);
  else if (dt_a == DType::F32)
    gemm_f32_path(kernel, static_cast<const float*>(A), static_cast<const uint16_t*>(B), dt_c, C, g);
  else if (dt_b == DType::F32)
    gemm_f32_path(kernel, static_cast<const uint16_t*>(A), static_cast<const float*>(B), dt_c, C, g);
  else
    gemm_f32_path(kernel, static_cast<const uint16_t*>(A), static_cast<const uint16_t*>(B), dt_c, C, g);
}

void gemm(const LaunchCtx&, DType dt_a, const void* A, DType dt_b, const void* B, DType dt_c, void* C,
          const GemmShape& g) {
  if (gemm_skinny_applies(g)) {
    check_gemm_dtype("A", dt_a);
    check_gemm_dtype("B", dt_b);
    check_gemm_dtype("C", dt_c);
    gemm_skinny(dt_a, A, dt_b, B, dt_c, C, g, num_threads());
    return;
  }
  gemm_on(chosen_paths(), dt_a, A, dt_b, B, dt_c, C, g);
}

const char* gemm_isa() { return chosen_paths().f32->isa; }

const char* gemm_bf16_isa() {
  const GemmKernelBf16* k = chosen_paths().bf16;
  return k ? k->isa : "none";
}

}  // namespace moma::cpu
