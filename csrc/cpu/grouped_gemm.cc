// Grouped GEMM over expert segments (kernels_moe.h) on one parallel schedule across all experts.
//   forward: y[seg e] = x[seg e] @ w[e]     (m = segment rows, k = K; w[e] transposed when trans_w)
//   wgrad:   dw[e] = x[seg e]^T @ dy[seg e] (transA: m = K, k = segment rows)
// An expert's segment is small (a few hundred rows), so one blocked GEMM per expert (cpu::gemm)
// dispatches the thread pool twice per K slice and expert, leaves threads idle at each expert's
// tail, and cycles every expert's C through L3 between slices. run_grouped treats the E products
// as one problem, with the micro-kernels and blocking of gemm.cc (gemm_kernels.h):
//   one parallel pass per NC-wide block of columns (one in practice) over work items
//   (product, row group, run of B panels), handed out from a shared counter; at least
//   kItemsPerThread items per thread in all, so experts of any size share the threads;
//   an item runs its K slices (KC deep) in order; per slice it packs the A panels of its row
//   group (up to kRowGroupBytes: a small expert is one group, so its B is packed once) into a
//   buffer of its thread that stays in L2, then for each B micro-panel of its run packs it into
//   an L1-sized buffer (gemm_pack.h layouts), prefetches the next panel's source while the
//   micro-kernel runs it past every A panel of the group;
//   runs are short enough (kCTileBytes) that a tile summed over 3 or more slices stays in L2.
// One dispatch per call for all experts. A product's first slice writes C (beta = 0), later ones
// add to it (beta = 1), so every C tile sees the same panels, kernel, slice order and beta as
// cpu::gemm on that expert alone: bit-identical to it, and independent of the thread count
// (threads split M and N, never K; no atomics on data). When a tile is final the caller's finish
// hook runs on it, on the same thread, while it is in cache (the bf16 rounding of y here, the
// epilogues of grouped_epilogue.cc). The SwiGLU forward passes two B operands (w1, w3) per
// product: each A pack feeds both.
// Dtypes: x, w, dy float32 or bf16; bf16 x bf16 runs the bf16 kernel (AMX, AVX-512-BF16) when
// this CPU has one, any float32 operand the float32 kernel on bf16 widened while packing. A
// float32 y takes the sums in place; a bf16 y's tile is summed in a float32 buffer of its thread
// and rounded once per element by the finish hook (no staging copy of the whole output).
// FLOPs 2 * offsets[E] * K * N; memory: per thread one row group of A panels, one B panel and
// (bf16 outputs) one tile of float32 sums, plus the operands.
#include "grouped_driver.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <new>
#include <numeric>

#include "../core/bf16.h"
#include "../core/error.h"
#include "gemm_pack.h"
#include "kernels.h"
#include "kernels_moe.h"
#include "thread_pool.h"

namespace moma::cpu {
namespace {

// Problems below this many FLOPs run on the calling thread (as cpu::gemm's).
constexpr double kSerialFlops = 1 << 21;
// Bytes of packed A panels a work item keeps in L2 (half of a 1 MiB L2) across its B panels.
constexpr int64_t kRowGroupBytes = 512 << 10;
// Bytes of C tiles a work item summing several K slices keeps in L2 between them.
constexpr int64_t kCTileBytes = 384 << 10;
// Work items per thread a pass aims for, so that a slowed-down thread takes fewer of them.
constexpr int64_t kItemsPerThread = 4;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

thread_local pack::Buffer tl_grouped_a;
thread_local pack::Buffer tl_grouped_b;
thread_local pack::Buffer tl_grouped_c;

// fn(i) for i in [0, n), handed out one at a time from a shared counter over `threads` threads.
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

// The memory a B panel is packed from (columns [j0, j0 + cols), k in [p0, p0 + kc) of op(B)):
// `count` rows of `bytes` contiguous bytes, `stride` bytes apart.
struct SourceRows {
  const char* first;
  int64_t count, stride, bytes;
};

SourceRows source_rows(const void* B, size_t elem, const GroupedGemm& g, int64_t j0, int64_t cols, int64_t p0,
                       int64_t kc) {
  const int64_t es = static_cast<int64_t>(elem);
  const char* b = static_cast<const char*>(B);
  if (g.trans_b) return {b + (j0 * g.ldb + p0) * es, cols, g.ldb * es, kc * es};
  return {b + (p0 * g.ldb + j0) * es, kc, g.ldb * es, cols * es};
}

// Prefetches (into L2) the rows [count * s / steps, count * (s + 1) / steps) of `src`: spread over
// the steps of the micro-kernel loop of one B panel, the next panel's source arrives from memory
// while this one computes, instead of stalling its pack.
void prefetch_rows(const SourceRows& src, int64_t s, int64_t steps) {
  for (int64_t r = src.count * s / steps, re = src.count * (s + 1) / steps; r < re; ++r) {
    const char* row = src.first + r * src.stride;
    for (int64_t off = 0; off < src.bytes; off += 64) __builtin_prefetch(row + off, 0, 2);
    __builtin_prefetch(row + src.bytes - 1, 0, 2);
  }
}

// The float32 kernel with operands of element types TA / TB (bf16 widened while packing).
template <typename TA, typename TB>
struct F32Kernel {
  using Elem = float;
  const GemmKernel& kr;
  const GroupedGemm& g;
  int64_t mr() const { return kr.mr; }
  int64_t nr() const { return kr.nr; }
  int64_t kc() const { return kr.kc; }
  int64_t mc() const { return kr.mc; }
  int64_t nc() const { return kr.nc; }
  int64_t depth(int64_t kc) const { return kc; }
  void pack_a(const void* A, int64_t i0, int64_t rows, int64_t p0, int64_t kc, float* dst) const {
    pack::a_panel_f32(static_cast<const TA*>(A), g.lda, g.trans_a, i0, rows, p0, kc, kr.mr, 1.0f, dst);
  }
  void pack_b(const void* B, int64_t j0, int64_t cols, int64_t p0, int64_t kc, float* dst) const {
    pack::b_panel_f32(static_cast<const TB*>(B), g.ldb, g.trans_b, j0, cols, p0, kc, kr.nr, dst);
  }
  SourceRows b_source(const void* B, int64_t j0, int64_t cols, int64_t p0, int64_t kc) const {
    return source_rows(B, sizeof(TB), g, j0, cols, p0, kc);
  }
  void begin() const {}
  void end() const {}
  void micro(int64_t kd, const float* a, const float* b, float* c, int64_t ldc, int64_t rows, int64_t cols,
             float beta) const {
    kr.micro(kd, a, b, c, ldc, rows, cols, beta);
  }
};

// The bf16 x bf16 kernel (float32 accumulation).
struct Bf16Kernel {
  using Elem = uint16_t;
  const GemmKernelBf16& kr;
  const GroupedGemm& g;
  int64_t mr() const { return kr.mr; }
  int64_t nr() const { return kr.nr; }
  int64_t kc() const { return kr.kc; }
  int64_t mc() const { return kr.mc; }
  int64_t nc() const { return kr.nc; }
  int64_t depth(int64_t kc) const { return ceil_div(kc, kr.k_align) * kr.k_align; }
  void pack_a(const void* A, int64_t i0, int64_t rows, int64_t p0, int64_t kc, uint16_t* dst) const {
    pack::a_panel_bf16(static_cast<const uint16_t*>(A), g.lda, g.trans_a, i0, rows, p0, kc, depth(kc), kr.mr,
                       kr.a_layout, dst);
  }
  void pack_b(const void* B, int64_t j0, int64_t cols, int64_t p0, int64_t kc, uint16_t* dst) const {
    pack::b_panel_vnni(static_cast<const uint16_t*>(B), g.ldb, g.trans_b, j0, cols, p0, kc, depth(kc), kr.nr, dst);
  }
  SourceRows b_source(const void* B, int64_t j0, int64_t cols, int64_t p0, int64_t kc) const {
    return source_rows(B, sizeof(uint16_t), g, j0, cols, p0, kc);
  }
  void begin() const {
    if (kr.begin) kr.begin();
  }
  void end() const {
    if (kr.end) kr.end();
  }
  void micro(int64_t kd, const uint16_t* a, const uint16_t* b, float* c, int64_t ldc, int64_t rows, int64_t cols,
             float beta) const {
    kr.micro(kd, a, b, c, ldc, rows, cols, 1.0f, beta);
  }
};

// Position of item i among consecutive ranges whose starts are `starts` (ascending, starts[0] = 0).
size_t range_of(const std::vector<int64_t>& starts, int64_t i) {
  return static_cast<size_t>(std::upper_bound(starts.begin(), starts.end(), i) - starts.begin() - 1);
}

template <typename Kernel>
void run_products(const Kernel& kern, const GroupedGemm& g, const std::vector<GroupedProduct>& all,
                  const GroupedFinish* finish) {
  using Elem = typename Kernel::Elem;
  std::vector<const GroupedProduct*> ps;
  const auto q_index = [&](size_t q) { return int64_t(ps[q] - all.data()); };
  double flops = 0;
  int64_t k_max = 0;
  for (const GroupedProduct& p : all) {
    if (p.m <= 0 || p.k <= 0) continue;
    ps.push_back(&p);
    flops += 2.0 * double(p.m) * double(p.k) * double(g.n) * g.operands;
    k_max = std::max(k_max, p.k);
  }
  if (ps.empty() || g.n <= 0) return;
  const int threads = flops < kSerialFlops ? 1 : std::max(1, num_threads());
  const int64_t N = g.n, nb = g.operands;
  const int64_t MR = kern.mr(), NR = kern.nr(), KC = kern.kc(), NC = kern.nc();
  const int64_t kd_max = kern.depth(std::min(k_max, KC));
  // A row group's panels stay in L2 while the item walks its B panels: at least the kernel's MC
  // rows, more (up to kRowGroupBytes of panels of one slice) so that a small expert is one group
  // and its B panels are packed once per slice.
  const int64_t panel_bytes = MR * kd_max * int64_t(sizeof(Elem));
  const int64_t group_panels = std::max({int64_t(1), kern.mc() / MR, kRowGroupBytes / panel_bytes});
  std::vector<int64_t> a_panels, row_groups, col_runs, starts;
  for (const GroupedProduct* p : ps) {
    a_panels.push_back(ceil_div(p->m, MR));
    row_groups.push_back(ceil_div(a_panels.back(), group_panels));
  }
  const int64_t groups = std::accumulate(row_groups.begin(), row_groups.end(), int64_t(0));

  for (int64_t n0 = 0; n0 < N; n0 += NC) {
    const int64_t nc = std::min(NC, N - n0), b_panels = ceil_div(nc, NR);
    // Work items (product, row group, run of B panels): at least kItemsPerThread per thread in
    // all, and runs short enough that a tile summed over several K slices (nb C tiles of the
    // group's rows) stays in L2 between them.
    const int64_t balance_runs = ceil_div(kItemsPerThread * int64_t(threads), groups);
    starts.assign(1, 0);
    col_runs.clear();
    for (size_t q = 0; q < ps.size(); ++q) {
      const int64_t rows = std::min(ps[q]->m, group_panels * MR);
      const int64_t c_bytes = ps[q]->k > 2 * KC ? rows * nc * nb * int64_t(sizeof(float)) : 0;
      col_runs.push_back(std::clamp<int64_t>(std::max(balance_runs, ceil_div(c_bytes, kCTileBytes)), 1, b_panels));
      starts.push_back(starts.back() + row_groups[q] * col_runs.back());
    }
    run_dynamic(threads, starts.back(), [&](int64_t item) {
      const size_t q = range_of(starts, item);
      const GroupedProduct& p = *ps[q];
      const int64_t runs = col_runs[q], t = item - starts[q], ig = t / runs, jg = t % runs;
      const int64_t ia = ig * group_panels, ie = std::min(a_panels[q], ia + group_panels);
      const int64_t jb = b_panels * jg / runs, je = b_panels * (jg + 1) / runs;
      Elem* ap = tl_grouped_a.get<Elem>(size_t(group_panels * MR * kd_max));
      Elem* bp = tl_grouped_b.get<Elem>(size_t(NR * kd_max));
      // Where each operand's sums go: C itself, or this thread's tile buffer (rows i0.. x cols j0..).
      const int64_t i0 = ia * MR, i1 = std::min(ie * MR, p.m), j0 = n0 + jb * NR, j1 = n0 + std::min(je * NR, nc);
      GroupedTile tile{q_index(q), i0, i1, j0, j1, {nullptr, nullptr}, {0, 0}};
      const bool any_staged = !p.c[0] || (nb == 2 && !p.c[1]);
      float* staged = any_staged ? tl_grouped_c.get<float>(size_t(nb * (i1 - i0) * (j1 - j0))) : nullptr;
      for (int64_t b = 0; b < nb; ++b) {
        tile.sums[b] = p.c[b] ? p.c[b] + i0 * g.ldc + j0 : staged + b * (i1 - i0) * (j1 - j0);
        tile.ld[b] = p.c[b] ? g.ldc : j1 - j0;
      }
      // The K slices in order, the first writing C (beta 0), the others adding to it.
      for (int64_t p0 = 0; p0 < p.k; p0 += KC) {
        const int64_t kc = std::min(KC, p.k - p0), kd = kern.depth(kc);
        const float beta = p0 == 0 ? 0.0f : 1.0f;
        for (int64_t ir = ia; ir < ie; ++ir)
          kern.pack_a(p.a, ir * MR, std::min(MR, p.m - ir * MR), p0, kc, ap + (ir - ia) * MR * kd);
        kern.begin();
        for (int64_t jr = jb; jr < je; ++jr) {
          const int64_t cols = std::min(NR, nc - jr * NR);
          for (int64_t b = 0; b < nb; ++b) {
            kern.pack_b(p.b[b], n0 + jr * NR, cols, p0, kc, bp);
            // The panel after this one: the next operand, else the next run of columns.
            const int64_t jn = b + 1 < nb ? jr : jr + 1, bn = b + 1 < nb ? b + 1 : 0;
            const bool next = jn < je;
            const SourceRows src = next ? kern.b_source(p.b[bn], n0 + jn * NR, std::min(NR, nc - jn * NR), p0, kc)
                                        : SourceRows{nullptr, 0, 0, 0};
            const int64_t ld = tile.ld[b];
            float* cbase = tile.sums[b] + (jr - jb) * NR;
            for (int64_t ir = ia; ir < ie; ++ir) {
              if (next) prefetch_rows(src, ir - ia, ie - ia);
              kern.micro(kd, ap + (ir - ia) * MR * kd, bp, cbase + (ir - ia) * MR * ld, ld, std::min(MR, p.m - ir * MR),
                         cols, beta);
            }
          }
        }
        kern.end();
      }
      if (finish) (*finish)(tile);
    });
  }
}

}  // namespace

// Sets `bytes` bytes at p to zero (0 is +0.0 in float32 and bf16).
void zero_bytes(void* p, int64_t bytes) {
  char* c = static_cast<char*>(p);
  parallel_for(bytes, 262144, [&](int64_t a, int64_t b) { std::memset(c + a, 0, static_cast<size_t>(b - a)); });
}

const void* element_at(DType dt, const void* p, int64_t i) {
  return static_cast<const char*>(p) + i * static_cast<int64_t>(dtype_size(dt));
}

void check_dtype(const char* op, const char* what, DType dt) {
  if (dt != DType::F32 && dt != DType::BF16)
    fail("ERR_DTYPE", op, ": ", what, " is ", dtype_name(dt), ", expected float32 or bfloat16");
}

void check_offsets(const char* op, const int32_t* offsets, int64_t E, int64_t R) {
  if (offsets[0] != 0) fail("ERR_RANGE", op, ": offsets[0] = ", offsets[0], ", expected 0");
  for (int64_t e = 0; e < E; ++e) {
    if (offsets[e + 1] < offsets[e] || offsets[e + 1] > R)
      fail("ERR_RANGE", op, ": offsets[", e + 1, "] = ", offsets[e + 1], " is out of range [", offsets[e], ", ", R,
           "]");
  }
}

GroupedGemm forward_shape(DType dt_x, DType dt_w, bool trans_w, int64_t K, int64_t N) {
  GroupedGemm g;
  g.dt_a = dt_x;
  g.dt_b = dt_w;
  g.n = N;
  g.trans_b = trans_w;
  g.lda = K;
  g.ldb = trans_w ? K : N;
  g.ldc = N;
  return g;
}

void run_grouped(const GemmPaths& paths, const GroupedGemm& g, const std::vector<GroupedProduct>& products,
                 const GroupedFinish* finish) {
  const GemmKernel& f32 = *paths.f32;
  if (g.dt_a == DType::BF16 && g.dt_b == DType::BF16 && paths.bf16)
    run_products(Bf16Kernel{*paths.bf16, g}, g, products, finish);
  else if (g.dt_a == DType::F32 && g.dt_b == DType::F32)
    run_products(F32Kernel<float, float>{f32, g}, g, products, finish);
  else if (g.dt_a == DType::F32)
    run_products(F32Kernel<float, uint16_t>{f32, g}, g, products, finish);
  else if (g.dt_b == DType::F32)
    run_products(F32Kernel<uint16_t, float>{f32, g}, g, products, finish);
  else
    run_products(F32Kernel<uint16_t, uint16_t>{f32, g}, g, products, finish);
}

const GemmPaths& grouped_paths() {
  static const GemmPaths paths = gemm_paths_from_env();
  return paths;
}

void grouped_gemm_on(const GemmPaths& paths, DType dt_x, const void* x, DType dt_w, const void* w, bool trans_w,
                     const int32_t* offsets, int64_t E, int64_t R, int64_t K, int64_t N, DType dt_y, void* y) {
  const char* op = "grouped_matmul";
  check_dtype(op, "x", dt_x);
  check_dtype(op, "w", dt_w);
  check_dtype(op, "y", dt_y);
  check_offsets(op, offsets, E, R);
  const int64_t used = offsets[E];
  const size_t ys = dtype_size(dt_y);
  zero_bytes(static_cast<char*>(y) + used * N * int64_t(ys), (R - used) * N * int64_t(ys));
  if (K <= 0) {
    zero_bytes(y, used * N * int64_t(ys));
    return;
  }
  GroupedGemm g = forward_shape(dt_x, dt_w, trans_w, K, N);
  // A float32 y takes the sums in place; a bf16 one gets each tile rounded once when it is final.
  const bool in_place = dt_y == DType::F32;
  std::vector<GroupedProduct> products(static_cast<size_t>(E));
  for (int64_t e = 0; e < E; ++e) {
    GroupedProduct& p = products[size_t(e)];
    p.a = element_at(dt_x, x, offsets[e] * K);
    p.b[0] = element_at(dt_w, w, e * K * N);
    p.c[0] = in_place ? static_cast<float*>(y) + offsets[e] * N : nullptr;
    p.m = offsets[e + 1] - offsets[e];
    p.k = K;
  }
  uint16_t* y16 = static_cast<uint16_t*>(y);
  const GroupedFinish round_tile = [&](const GroupedTile& t) {
    for (int64_t i = t.i0; i < t.i1; ++i) {
      const float* src = t.sums[0] + (i - t.i0) * t.ld[0];
      uint16_t* dst = y16 + (offsets[t.p] + i) * N + t.j0;
      for (int64_t j = 0; j < t.j1 - t.j0; ++j) dst[j] = f32_to_bf16(src[j]);
    }
  };
  run_grouped(paths, g, products, in_place ? nullptr : &round_tile);
}

void grouped_gemm_wgrad_on(const GemmPaths& paths, DType dt_x, const void* x, DType dt_dy, const void* dy,
                           const int32_t* offsets, int64_t E, int64_t R, int64_t K, int64_t N, float* dw) {
  const char* op = "grouped_matmul_wgrad";
  check_dtype(op, "x", dt_x);
  check_dtype(op, "dy", dt_dy);
  check_offsets(op, offsets, E, R);
  GroupedGemm g;
  g.dt_a = dt_x;
  g.dt_b = dt_dy;
  g.n = N;
  g.trans_a = true;
  g.lda = K;
  g.ldb = N;
  g.ldc = N;
  std::vector<GroupedProduct> products(static_cast<size_t>(E));
  for (int64_t e = 0; e < E; ++e) {
    const int64_t rows = offsets[e + 1] - offsets[e];
    // An empty segment's gradient is zero; so is every one when N or K is 0.
    if (rows == 0) zero_bytes(dw + e * K * N, K * N * 4);
    GroupedProduct& p = products[size_t(e)];
    p.a = element_at(dt_x, x, offsets[e] * K);
    p.b[0] = element_at(dt_dy, dy, offsets[e] * N);
    p.c[0] = dw + e * K * N;
    p.m = K;
    p.k = rows;
  }
  run_grouped(paths, g, products, nullptr);
}

void grouped_gemm(const LaunchCtx&, DType dt_x, const void* x, DType dt_w, const void* w, bool trans_w,
                  const int32_t* offsets, int64_t E, int64_t R, int64_t K, int64_t N, DType dt_y, void* y) {
  grouped_gemm_on(grouped_paths(), dt_x, x, dt_w, w, trans_w, offsets, E, R, K, N, dt_y, y);
}

void grouped_gemm_wgrad(const LaunchCtx&, DType dt_x, const void* x, DType dt_dy, const void* dy,
                        const int32_t* offsets, int64_t E, int64_t R, int64_t K, int64_t N, float* dw) {
  grouped_gemm_wgrad_on(grouped_paths(), dt_x, x, dt_dy, dy, offsets, E, R, K, N, dw);
}

}  // namespace moma::cpu
