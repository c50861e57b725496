// CPU GEMM driver: Goto/BLIS blocking around a register-tiled float32 micro-kernel.
//
// For each batch entry, C = alpha * op(A) @ op(B) + beta * C is computed as
//   for each block of at most MB rows of A (MB = 12 * MC):
//     for each KC-deep slice of K:
//       pack op(A)[rows, slice] * alpha into MR-row panels   (k-major, zero-padded, 64B aligned)
//       for each NC-wide block of columns:
//         pack op(B)[slice, cols] into NR-column panels        (k-major, zero-padded)
//         threads take work items (an MC-row group of A panels x a run of B panels) from a
//         shared counter; within an item a B micro-panel (KC x NR) stays in L1 across the MC
//         rows and the A group stays in L2
// The first K slice applies beta (C is not read when beta == 0); later slices accumulate.
// Packing costs O(MK + KN) memory traffic per pass against 2 * MK * NC FLOPs, and turns any
// transpose / leading dimension into the unit-stride panels the kernels need.
// Dtypes: A and B may each be float32 or bf16. The packers are templated on the source element
// type and widen bf16 to float32 as they copy (exact), so a bf16 operand costs nothing beyond
// the pack it already had and the micro-kernels only ever see float32. A bf16 C is computed in
// a float32 staging matrix per batch entry (C widened into it when beta != 0) and rounded once
// to bf16 (nearest even, bf16.h) on store; a float32 C is written in place. The results are
// therefore bit-identical to widening the bf16 inputs first and running the float32 GEMM.
// Threads: the two packs run as one parallel_for over panels, the tiles as a second one; both
// hand out items dynamically (about 8 compute items per thread, split along N when M is small)
// so small-M, small-N and unevenly loaded cores all keep every thread busy. Batches of many
// independent matrices are spread over threads whole instead (each packs into its own buffers).
// Kernel choice happens once: AVX-512 (14 x 32 tile), else AVX2 + FMA (6 x 16), else generic.
// Pack buffers are per thread (thread_local), grow to the largest request and are freed when the
// thread exits.
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <memory>
#include <new>
#include "../core/bf16.h"
#include "../core/error.h"
#include "kernels.h"
#include "gemm_kernels.h"
#include "thread_pool.h"

namespace moma::cpu {
namespace {

// Problems below this many FLOPs run on the calling thread: waking the pool costs more.
constexpr double kSerialFlops = 1 << 21;

class PackBuffer {
 public:
  PackBuffer() = default;
  PackBuffer(const PackBuffer&) = delete;
  PackBuffer& operator=(const PackBuffer&) = delete;
  ~PackBuffer() { std::free(data_); }

  float* get(size_t floats) {
    if (floats > cap_) {
      std::free(data_);
      data_ = nullptr;
      cap_ = 0;
      const size_t bytes = (floats * sizeof(float) + 63) / 64 * 64;
      data_ = static_cast<float*>(std::aligned_alloc(64, bytes));
      if (!data_) throw std::bad_alloc();
      cap_ = floats;
    }
    return data_;
  }

 private:
  float* data_ = nullptr;
  size_t cap_ = 0;
};

thread_local PackBuffer tl_pack_a;
thread_local PackBuffer tl_pack_b;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// An element of an operand as float32: bf16 (stored as uint16_t) is widened exactly.
inline float widen(float v) { return v; }
inline float widen(uint16_t v) { return bf16_to_f32(v); }

// One MR-row panel of alpha * op(A): rows [i0, i0 + rows) and k in [p0, p0 + kc).
template <typename TA>
void pack_a_panel(const TA* A, int64_t lda, bool trans, int64_t i0, int64_t rows, int64_t p0,
                  int64_t kc, int64_t mr, float alpha, float* dst) {
  if (trans) {
    for (int64_t k = 0; k < kc; ++k) {
      const TA* src = A + (p0 + k) * lda + i0;
      float* d = dst + k * mr;
      for (int64_t i = 0; i < rows; ++i) d[i] = alpha * widen(src[i]);
      for (int64_t i = rows; i < mr; ++i) d[i] = 0.0f;
    }
  } else {
    for (int64_t i = 0; i < rows; ++i) {
      const TA* src = A + (i0 + i) * lda + p0;
      for (int64_t k = 0; k < kc; ++k) dst[k * mr + i] = alpha * widen(src[k]);
    }
    for (int64_t k = 0; k < kc; ++k)
      for (int64_t i = rows; i < mr; ++i) dst[k * mr + i] = 0.0f;
  }
}

// One NR-column panel of op(B): columns [j0, j0 + cols) and k in [p0, p0 + kc).
template <typename TB>
void pack_b_panel(const TB* B, int64_t ldb, bool trans, int64_t j0, int64_t cols, int64_t p0,
                  int64_t kc, int64_t nr, float* dst) {
  if (trans) {
    for (int64_t j = 0; j < cols; ++j) {
      const TB* src = B + (j0 + j) * ldb + p0;
      for (int64_t k = 0; k < kc; ++k) dst[k * nr + j] = widen(src[k]);
    }
    for (int64_t k = 0; k < kc; ++k)
      for (int64_t j = cols; j < nr; ++j) dst[k * nr + j] = 0.0f;
  } else {
    for (int64_t k = 0; k < kc; ++k) {
      const TB* src = B + (p0 + k) * ldb + j0;
      float* d = dst + k * nr;
      for (int64_t j = 0; j < cols; ++j) d[j] = widen(src[j]);
      for (int64_t j = cols; j < nr; ++j) d[j] = 0.0f;
    }
  }
}

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

// One matrix of the batch on `threads` threads, into a float32 C with leading dimension ldc.
template <typename TA, typename TB>
void gemm_single(const GemmKernel& kr, const GemmShape& g, const TA* A, const TB* B, float* C,
                 int64_t ldc, int threads) {
  const int64_t M = g.M, N = g.N, K = g.K;
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    scale_c(C, M, N, ldc, g.beta);
    return;
  }
  const int64_t MR = kr.mr, NR = kr.nr, KC = kr.kc, MC = kr.mc, NC = kr.nc;
  const int64_t MB = 12 * MC;
  const int64_t mc_panels = std::max<int64_t>(1, MC / MR);
  const int64_t mb_max = std::min(M, MB), kc_max = std::min(K, KC), nc_max = std::min(N, NC);
  float* pa = tl_pack_a.get(size_t(ceil_div(mb_max, MR) * MR * kc_max));
  float* pb = tl_pack_b.get(size_t(ceil_div(nc_max, NR) * NR * kc_max));

  for (int64_t m0 = 0; m0 < M; m0 += MB) {
    const int64_t mb = std::min(MB, M - m0);
    const int64_t a_panels = ceil_div(mb, MR);
    const int64_t ic_groups = ceil_div(a_panels, mc_panels);
    for (int64_t p0 = 0; p0 < K; p0 += KC) {
      const int64_t kc = std::min(KC, K - p0);
      const float beta = p0 == 0 ? g.beta : 1.0f;
      for (int64_t n0 = 0; n0 < N; n0 += NC) {
        const int64_t nc = std::min(NC, N - n0);
        const int64_t b_panels = ceil_div(nc, NR);
        // A is packed together with the first B block of this K slice.
        const int64_t a_jobs = n0 == 0 ? a_panels : 0;
        run_dynamic(threads, a_jobs + b_panels, [&](int64_t t) {
          if (t < a_jobs) {
            pack_a_panel(A, g.lda, g.transA, m0 + t * MR, std::min(MR, mb - t * MR), p0, kc, MR,
                         g.alpha, pa + t * MR * kc);
          } else {
            const int64_t j = t - a_jobs;
            pack_b_panel(B, g.ldb, g.transB, n0 + j * NR, std::min(NR, nc - j * NR), p0, kc, NR,
                         pb + j * NR * kc);
          }
        });

        // Work items: one MC-row group of A panels times a run of B panels, about 8 per thread.
        const int64_t jr_groups =
            std::clamp<int64_t>(ceil_div(8 * int64_t(threads), ic_groups), 1, b_panels);
        run_dynamic(threads, ic_groups * jr_groups, [&](int64_t item) {
          const int64_t ig = item / jr_groups, jg = item % jr_groups;
          const int64_t ia = ig * mc_panels, ie = std::min(a_panels, ia + mc_panels);
          const int64_t jb = b_panels * jg / jr_groups, je = b_panels * (jg + 1) / jr_groups;
          for (int64_t jr = jb; jr < je; ++jr) {
            const float* bp = pb + jr * NR * kc;
            const int64_t cols = std::min(NR, nc - jr * NR);
            float* cbase = C + m0 * ldc + n0 + jr * NR;
            for (int64_t ir = ia; ir < ie; ++ir) {
              kr.micro(kc, pa + ir * MR * kc, bp, cbase + ir * MR * ldc, ldc,
                       std::min(MR, mb - ir * MR), cols, beta);
            }
          }
        });
      }
    }
  }
}

const GemmKernel& select_kernel() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  const bool fma = __builtin_cpu_supports("fma");
  if (gemm_kernel_avx512() && fma && __builtin_cpu_supports("avx512f") &&
      __builtin_cpu_supports("avx512dq"))
    return *gemm_kernel_avx512();
  if (gemm_kernel_avx2() && fma && __builtin_cpu_supports("avx2")) return *gemm_kernel_avx2();
#endif
  return gemm_kernel_generic();
}

const GemmKernel& chosen_kernel() {
  static const GemmKernel& kernel = select_kernel();
  return kernel;
}

void check_gemm_dtype(const char* operand, DType dt) {
  if (dt != DType::F32 && dt != DType::BF16)
    fail("ERR_DTYPE", "gemm: ", operand, " is ", dtype_name(dt), ", expected float32 or bfloat16");
}

// One matrix of the batch with C of dtype dt_c (batch strides already applied). A float32 C is
// computed in place; a bf16 C through a float32 staging matrix (rows N apart) that holds the
// widened C when beta != 0 and is rounded once into C at the end.
template <typename TA, typename TB>
void gemm_entry(const GemmKernel& kr, const GemmShape& g, const TA* A, const TB* B, DType dt_c, void* C,
                int threads) {
  if (dt_c == DType::F32) {
    gemm_single(kr, g, A, B, static_cast<float*>(C), g.ldc, threads);
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
  gemm_single(kr, g, A, B, s, N, threads);
  rows([&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i)
      for (int64_t j = 0; j < N; ++j) c16[i * g.ldc + j] = f32_to_bf16(s[i * N + j]);
  });
}

template <typename TA, typename TB>
void gemm_typed(const GemmKernel& kernel, const TA* A, const TB* B, DType dt_c, void* C, const GemmShape& g) {
  if (g.batch <= 0 || g.M <= 0 || g.N <= 0) return;
  const int64_t c_size = dtype_size(dt_c);
  auto entry_c = [&](int64_t b) { return static_cast<char*>(C) + b * g.strideC * c_size; };
  const double flops = 2.0 * double(g.M) * double(g.N) * double(g.K);
  int threads = flops * double(g.batch) < kSerialFlops ? 1 : std::max(1, num_threads());

  // Whole matrices per thread when there are enough of them and they write disjoint outputs.
  const bool by_batch = threads > 1 && g.strideC != 0 && g.batch >= threads &&
                        (g.batch % threads == 0 || g.batch >= 4 * threads);
  if (by_batch) {
    run_dynamic(threads, g.batch, [&](int64_t b) {
      gemm_entry(kernel, g, A + b * g.strideA, B + b * g.strideB, dt_c, entry_c(b), 1);
    });
    return;
  }
  if (flops < kSerialFlops) threads = 1;
  for (int64_t b = 0; b < g.batch; ++b)
    gemm_entry(kernel, g, A + b * g.strideA, B + b * g.strideB, dt_c, entry_c(b), threads);
}

}  // namespace

void gemm(const LaunchCtx&, DType dt_a, const void* A, DType dt_b, const void* B, DType dt_c, void* C,
          const GemmShape& g) {
  const GemmKernel& kernel = chosen_kernel();
  check_gemm_dtype("A", dt_a);
  check_gemm_dtype("B", dt_b);
  check_gemm_dtype("C", dt_c);
  if (dt_a == DType::F32 && dt_b == DType::F32)
    gemm_typed(kernel, static_cast<const float*>(A), static_cast<const float*>(B), dt_c, C, g);
  else if (dt_a == DType::F32)
    gemm_typed(kernel, static_cast<const float*>(A), static_cast<const uint16_t*>(B), dt_c, C, g);
  else if (dt_b == DType::F32)
    gemm_typed(kernel, static_cast<const uint16_t*>(A), static_cast<const float*>(B), dt_c, C, g);
  else
    gemm_typed(kernel, static_cast<const uint16_t*>(A), static_cast<const uint16_t*>(B), dt_c, C, g);
}

const char* gemm_isa() { return chosen_kernel().isa; }

}  // namespace moma::cpu
