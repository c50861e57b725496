// Causal attention inside contiguous segments and its backward (kernels_nn.h), float32 or bf16
// q / k / v / o / dout (widened exactly; math in float32; rounded once on store; the bf16 forward
// on AVX-512-BF16 CPUs instead multiplies bf16 pairs, see below); lse float32.
// Row t attends s in [seg_start[t], t]; the cost is O(N L D) per head, L the keys per row.
//
// Work units are (head, tile of kQ = 32 consecutive rows); units are claimed dynamically from an
// atomic counter, most expensive first, and every unit writes only its own rows, so no result
// depends on which thread ran it or on the thread count. Score tiles are small matrix products:
// kQ rows (A side, read in place) times kB = 64 columns of a B-side tensor transposed once per
// call to [H][D][N + kB] float (one extra tensor in the forward, two in the backward), each entry
// summed over d in increasing order in float (acc = acc + a * b, separate multiply and add:
// -ffp-contract=off), then multiplied by `scale`. So the score of (t, s) has the same bits
// whether t or s sits on the A side, which the backward relies on. Weighted row sums
// (acc[d] = acc[d] + w_j x_j[d], j increasing) stream rows packed contiguously per block. Both
// inner loops are written over 16-float GCC vectors and compiled for AVX-512, AVX2 and the
// baseline (picked once at run time); element-wise IEEE operations, so all give the same bits.
//
// Forward, unit (h, query tile [t0, t1)): scores against keys [seg_start[t0], t1) into a row
// buffer; per row m = max over [seg_start[t], t], p = exp(score - m) in float (vmath.h
// exp_shift_sum when the CPU has AVX-512 / AVX2, else std::exp), l = sum p in double,
// lse = float(m + log l) (double); o = sum_s p_s v_s accumulated in float in increasing s, then
// o = float(acc / l) in double.
// Backward: delta[t, h] = float(sum_d dout * o) (double). p_ts = exp(score - lse[t]) (difference
// rounded to float, exp in float), dp_ts = dout[t] . v[s] (same tile product, scale 1),
// ds_ts = p_ts (dp_ts - delta[t]). Two passes recompute p and ds (identical bits in both):
//   dq pass, unit (h, query tile): dq_acc[t] += ds_ts k[s] in increasing s; dq = scale * dq_acc.
//   dk/dv pass, unit (h, key tile [s0, s1)): queries t from s to the end of s's segment;
//     dv_acc[s] += p_ts dout[t], dk_acc[s] += ds_ts q[t] in increasing t; dk = scale * dk_acc.
// Only the rows a query attends enter its sums (no masked zero terms), so values in rows it
// does not attend (other segments, later rows) cannot reach it.
//
// bf16 forward on AVX-512-BF16 (attention_bf16_dp), taken when the CPU has vdpbf16ps and
// gemm_bf16_isa() is not "none" (MOMA_CPU_GEMM=avx512 / avx2 / generic therefore selects the
// widening path above, whose results are unchanged: bf16 o = bf16(float32 kernel's o on the same
// values), lse equal). Same units, order, softmax (float32 p, double l and lse) and output
// rounding; the two products run on bf16 pairs with float32 accumulation:
//   S = scale * Q K^T: Q rows as pair words (d 2i, 2i+1; zero-padded for odd D), K packed once per
//     call to [H][ceil(D/2)][N + kB] pair words (the bf16 rows themselves, transposed); a 4 x 64
//     tile takes 16 vdpbf16ps per d pair.
//   o_acc += P V: P rounded to bf16 for this product only (vcvtne2ps2bf16, nearest even), as the
//     tensor-core GPU kernel does (flash_attention.cu rounds P to bf16 for P.V and sums l from the
//     float32 p); V packed once per call to [H][ceil(N/2)][D rounded up to 16] words pairing rows
//     2m and 2m + 1, blocks of kB keys start at an even key. Up to 4 query rows with the same
//     keys share each V load. A pair with one unattended key has that half of V zeroed, so
//     unattended values (inf / NaN) still cannot reach a row.
//   Per row and key: D multiply-adds in each product, 4 N L D H FLOPs in all as in float32, at
//   twice the FLOPs per instruction. Bytes: q, k, v read once from memory (2 N H D each), the
//   packed K and V written once (about 2 N H D and 2 N H D16 bytes, D16 = D rounded up to 16) and
//   re-read per query tile from cache (L D bf16 each per unit), o written once. The backward keeps
//   the widening float32 path for bf16. vdpbf16ps reads denormal bf16 as zero and flushes denormal
//   sums. Sums run in a fixed order (d pairs, then key pairs, increasing), so results depend
//   neither on the thread count nor on which rows share loads. Measured (N 4096 in segments of
//   1024, H 16, 2 threads, Zen EPYC): D 64 34 ms vs 68 ms float32 (2.0x), D 128 113 vs 197 ms.
// seg_start is checked first (ERR_RANGE: seg_start[t] must be t or seg_start[t - 1]).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <memory>
#include <numeric>
#include <type_traits>
#include <utility>
#include <vector>

#include "../core/bf16.h"
#include "../core/error.h"
#include "cpu_features.h"
#include "kernels_nn.h"
#include "thread_pool.h"
#include "vmath.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#endif

namespace moma::cpu {
namespace {

constexpr int64_t kQ = 32;  // rows per unit (A side of the score tiles)
constexpr int64_t kB = 64;  // rows per transposed block (B side)
constexpr int kR = 4;       // A rows per micro-kernel call

inline size_t sz(int64_t n) { return static_cast<size_t>(n); }

inline float load(const float* p, int64_t i) { return p[i]; }
inline float load(const uint16_t* p, int64_t i) { return bf16_to_f32(p[i]); }
inline void store(float* p, int64_t i, float v) { p[i] = v; }
inline void store(uint16_t* p, int64_t i, float v) { p[i] = f32_to_bf16(v); }

void check_segments(const char* op, const int32_t* seg, int64_t N) {
  for (int64_t t = 0; t < N; ++t) {
    const int64_t s = seg[t];
    if (s == t || (t > 0 && s == seg[t - 1])) continue;
    if (t == 0) fail("ERR_RANGE", op, ": seg_start[0] = ", s, " (must be 0)");
    fail("ERR_RANGE", op, ": seg_start[", t, "] = ", s, " is neither ", t, " nor seg_start[", t - 1, "] = ",
         seg[t - 1]);
  }
}

// Rows r0..r0+nr-1 of one head (x already offset to the head, row stride rs) as float rows:
// the tensor itself for float32 (*ld = rs) unless `pack`, else copied / widened into buf
// (*ld = D). Rows that an inner loop streams through are packed: rows of one head lie H * D
// floats apart, which at H * D = 1024 would alias in the L1 cache.
template <typename T>
const float* rows_f(const T* x, int64_t rs, int64_t r0, int64_t nr, int64_t D, float* buf, int64_t* ld,
                    bool pack) {
  if constexpr (std::is_same_v<T, float>) {
    if (!pack || rs == D) {
      *ld = rs;
      return x + r0 * rs;
    }
    for (int64_t j = 0; j < nr; ++j) std::memcpy(buf + j * D, x + (r0 + j) * rs, sz(D) * sizeof(float));
  } else {
    for (int64_t j = 0; j < nr; ++j) {
      const T* row = x + (r0 + j) * rs;
      float* out = buf + j * D;
      for (int64_t d = 0; d < D; ++d) out[d] = bf16_to_f32(row[d]);
    }
  }
  *ld = D;
  return buf;
}

// The B side of the score tiles, transposed once per call: out[(h * D + d) * np + t] = x[t, h, d]
// for t < N, 0 for N <= t < np (np = N + kB, so a block of kB columns may start at any t < N).
// Float rows move through vmath.h transpose32 when available (bit-exact), bf16 rows are widened
// first.
template <typename T>
void transpose_heads(const T* x, int64_t N, int64_t H, int64_t D, int64_t np, float* out) {
  const vmath::Kernels* vk = vmath::vector_kernels();
  const int64_t RS = H * D, blocks = (N + kB - 1) / kB;
  parallel_for(H * blocks, std::max<int64_t>(1, 32768 / (kB * std::max<int64_t>(1, D))), [&](int64_t u0, int64_t u1) {
    std::vector<float> buf;
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t h = u / blocks, t0 = (u % blocks) * kB, nt = std::min(kB, N - t0);
      const float* src;
      int64_t ls;
      if constexpr (std::is_same_v<T, float>) {
        src = x + t0 * RS + h * D;
        ls = RS;
      } else {
        buf.resize(sz(kB * D));
        for (int64_t j = 0; j < nt; ++j)
          for (int64_t d = 0; d < D; ++d) buf[sz(j * D + d)] = bf16_to_f32(x[(t0 + j) * RS + h * D + d]);
        src = buf.data();
        ls = D;
      }
      float* dst = out + h * D * np + t0;
      if (vk) {
        vk->transpose32(reinterpret_cast<const uint32_t*>(src), ls, reinterpret_cast<uint32_t*>(dst), np, nt, D);
      } else {
        for (int64_t j = 0; j < nt; ++j)
          for (int64_t d = 0; d < D; ++d) dst[d * np + j] = src[j * ls + d];
      }
    }
  });
  parallel_for(H * D, 256, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) std::fill(out + r * np + N, out + (r + 1) * np, 0.0f);
  });
}

// The two inner loops, written once over 16-float GCC vectors (element-wise IEEE operations, so
// every ISA gives the same bits) and compiled for AVX-512, AVX2 and the baseline; the table is
// picked once at run time.
//   score4: acc[r * kB + j] = sum_d a[r][d] * bt[d * ldb + j] (r < kR, d increasing), float.
//   accum:  acc[d] = acc[d] + w[j] * x[j * ldx + d] for j = 0..n-1 in order, every d < D.
typedef float v16 __attribute__((vector_size(64)));
#define MOMA_INL inline __attribute__((always_inline))

// Unaligned loads / stores of a v16 (macros: vector arguments would change the baseline ABI).
#define MOMA_LD16(v, p) std::memcpy(&(v), (p), sizeof(v16))
#define MOMA_ST16(p, v) std::memcpy((p), &(v), sizeof(v16))

MOMA_INL void score4_body(const float* const* a, const float* bt, int64_t ldb, int64_t D, float* out) {
  static_assert(kB == 64 && kR == 4, "score4 holds 4 rows of kB = 4 x 16 columns");
  v16 c00{}, c01{}, c02{}, c03{}, c10{}, c11{}, c12{}, c13{}, c20{}, c21{}, c22{}, c23{}, c30{}, c31{}, c32{}, c33{};
  const float *a0 = a[0], *a1 = a[1], *a2 = a[2], *a3 = a[3];
  for (int64_t d = 0; d < D; ++d) {
    const float* b = bt + d * ldb;
    v16 b0, b1, b2, b3;
    MOMA_LD16(b0, b);
    MOMA_LD16(b1, b + 16);
    MOMA_LD16(b2, b + 32);
    MOMA_LD16(b3, b + 48);
    const float x0 = a0[d], x1 = a1[d], x2 = a2[d], x3 = a3[d];
    c00 = c00 + x0 * b0; c01 = c01 + x0 * b1; c02 = c02 + x0 * b2; c03 = c03 + x0 * b3;
    c10 = c10 + x1 * b0; c11 = c11 + x1 * b1; c12 = c12 + x1 * b2; c13 = c13 + x1 * b3;
    c20 = c20 + x2 * b0; c21 = c21 + x2 * b1; c22 = c22 + x2 * b2; c23 = c23 + x2 * b3;
    c30 = c30 + x3 * b0; c31 = c31 + x3 * b1; c32 = c32 + x3 * b2; c33 = c33 + x3 * b3;
  }
  MOMA_ST16(out, c00); MOMA_ST16(out + 16, c01); MOMA_ST16(out + 32, c02); MOMA_ST16(out + 48, c03);
  MOMA_ST16(out + 64, c10); MOMA_ST16(out + 80, c11); MOMA_ST16(out + 96, c12); MOMA_ST16(out + 112, c13);
  MOMA_ST16(out + 128, c20); MOMA_ST16(out + 144, c21); MOMA_ST16(out + 160, c22); MOMA_ST16(out + 176, c23);
  MOMA_ST16(out + 192, c30); MOMA_ST16(out + 208, c31); MOMA_ST16(out + 224, c32); MOMA_ST16(out + 240, c33);
}

MOMA_INL void accum_body(float* acc, int64_t D, const float* w, const float* x, int64_t ldx, int64_t n) {
  int64_t d0 = 0;
  for (; d0 + 64 <= D; d0 += 64) {
    v16 r0, r1, r2, r3, x0, x1, x2, x3;
    MOMA_LD16(r0, acc + d0);
    MOMA_LD16(r1, acc + d0 + 16);
    MOMA_LD16(r2, acc + d0 + 32);
    MOMA_LD16(r3, acc + d0 + 48);
    const float* xp = x + d0;
    for (int64_t j = 0; j < n; ++j, xp += ldx) {
      const float wj = w[j];
      MOMA_LD16(x0, xp);
      MOMA_LD16(x1, xp + 16);
      MOMA_LD16(x2, xp + 32);
      MOMA_LD16(x3, xp + 48);
      r0 = r0 + wj * x0;
      r1 = r1 + wj * x1;
      r2 = r2 + wj * x2;
      r3 = r3 + wj * x3;
    }
    MOMA_ST16(acc + d0, r0);
    MOMA_ST16(acc + d0 + 16, r1);
    MOMA_ST16(acc + d0 + 32, r2);
    MOMA_ST16(acc + d0 + 48, r3);
  }
  for (; d0 + 16 <= D; d0 += 16) {
    v16 r, xv;
    MOMA_LD16(r, acc + d0);
    for (int64_t j = 0; j < n; ++j) {
      MOMA_LD16(xv, x + j * ldx + d0);
      r = r + w[j] * xv;
    }
    MOMA_ST16(acc + d0, r);
  }
  if (d0 < D)
    for (int64_t j = 0; j < n; ++j)
      for (int64_t d = d0; d < D; ++d) acc[d] = acc[d] + w[j] * x[j * ldx + d];
}

using Score4Fn = void (*)(const float* const*, const float*, int64_t, int64_t, float*);
using AccumFn = void (*)(float*, int64_t, const float*, const float*, int64_t, int64_t);
void score4_generic(const float* const* a, const float* bt, int64_t ldb, int64_t D, float* out) {
  score4_body(a, bt, ldb, D, out);
}
void accum_generic(float* acc, int64_t D, const float* w, const float* x, int64_t ldx, int64_t n) {
  accum_body(acc, D, w, x, ldx, n);
}
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
__attribute__((target("avx512f"))) void score4_avx512(const float* const* a, const float* bt, int64_t ldb, int64_t D,
                                                      float* out) {
  score4_body(a, bt, ldb, D, out);
}
__attribute__((target("avx512f"))) void accum_avx512(float* acc, int64_t D, const float* w, const float* x,
                                                      int64_t ldx, int64_t n) {
  accum_body(acc, D, w, x, ldx, n);
}
__attribute__((target("avx2"))) void score4_avx2(const float* const* a, const float* bt, int64_t ldb, int64_t D,
                                                 float* out) {
  score4_body(a, bt, ldb, D, out);
}
__attribute__((target("avx2"))) void accum_avx2(float* acc, int64_t D, const float* w, const float* x, int64_t ldx,
                                                int64_t n) {
  accum_body(acc, D, w, x, ldx, n);
}
#endif

struct Inner {
  Score4Fn score4 = score4_generic;
  AccumFn accum = accum_generic;
};

const Inner& inner() {
  static const Inner k = [] {
    Inner r;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) {
      r.score4 = score4_avx512;
      r.accum = accum_avx512;
    } else if (__builtin_cpu_supports("avx2")) {
      r.score4 = score4_avx2;
      r.accum = accum_avx2;
    }
#endif
    return r;
  }();
  return k;
}

// s[i * lds + j] = scale * (a_i . b_j) for i < na, j < nb (nb <= kB); b_j is column j of bt
// (row stride ldb, kB columns readable).
void score_tile(const float* a, int64_t lda, int64_t na, const float* bt, int64_t ldb, int64_t D, int64_t nb,
                float scale, float* s, int64_t lds) {
  const Score4Fn score4 = inner().score4;
  alignas(64) float acc[kR * kB];
  for (int64_t i0 = 0; i0 < na; i0 += kR) {
    const float* rows[kR];
    for (int r = 0; r < kR; ++r) rows[r] = a + std::min<int64_t>(i0 + r, na - 1) * lda;
    score4(rows, bt, ldb, D, acc);
    for (int r = 0; r < kR && i0 + r < na; ++r) {
      float* out = s + (i0 + r) * lds;
      const float* ar = acc + r * kB;
      for (int64_t j = 0; j < nb; ++j) out[j] = scale * ar[j];
    }
  }
}

// y[i] = exp(x[i]) (x already shifted), vector exp when available.
inline void exp_map(const vmath::Kernels* k, const float* x, float* y, int64_t n) {
  if (k) {
    k->map_f32(vmath::Fn::Exp, x, y, n);
  } else {
    for (int64_t i = 0; i < n; ++i) y[i] = std::exp(x[i]);
  }
}

// Runs fn(scratch, unit) for units in the given order, claimed dynamically by the pool threads.
// Query rows t0 .. t0 + nq - 1 of one head: row i of S (columns from key lo, row stride lds) holds
// the scores of keys seg[t] .. t. Each becomes exp(score - max) in place; l[i] = their sum
// (double) and lse[t * lse_stride] = max + log(sum).
void softmax_rows(const vmath::Kernels* vk, float* S, int64_t lds, const int32_t* seg, int64_t lo, int64_t t0,
                  int64_t nq, double* l, float* lse, int64_t lse_stride) {
  for (int64_t i = 0; i < nq; ++i) {
    const int64_t t = t0 + i;
    float* row = S + i * lds + (seg[t] - lo);
    const int64_t len = t - seg[t] + 1;
    float m = row[0];
    double sum = 0.0;
    if (vk) {
      m = vk->max_f32(row, len);
      sum = vk->exp_shift_sum(row, m, row, len);
    } else {
      for (int64_t j = 1; j < len; ++j) m = (m != m || row[j] <= m) ? m : row[j];
      for (int64_t j = 0; j < len; ++j) {
        row[j] = std::exp(row[j] - m);
        sum += static_cast<double>(row[j]);
      }
    }
    l[i] = sum;
    lse[t * lse_stride] = static_cast<float>(static_cast<double>(m) + std::log(sum));
  }
}

template <typename Scratch, typename F>
void run_units(const std::vector<int64_t>& order, F fn) {
  const int64_t n = static_cast<int64_t>(order.size());
  if (n == 0) return;
  std::atomic<int64_t> next{0};
  const int64_t workers = std::min<int64_t>(num_threads(), n);
  parallel_for(workers, 1, [&](int64_t w0, int64_t w1) {
    Scratch s;
    for (int64_t w = w0; w < w1; ++w) {
      for (;;) {
        const int64_t u = next.fetch_add(1, std::memory_order_relaxed);
        if (u >= n) break;
        fn(s, order[sz(u)]);
      }
    }
  });
}

// Unit indices u = tile * H + h sorted by decreasing cost(tile) (ties: increasing u).
template <typename Cost>
std::vector<int64_t> unit_order(int64_t tiles, int64_t H, Cost cost) {
  std::vector<int64_t> order(sz(tiles * H));
  std::iota(order.begin(), order.end(), int64_t{0});
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return cost(a / H) > cost(b / H); });
  return order;
}

// ---- bf16 forward on AVX-512-BF16 (vdpbf16ps) -----------------------------------------------
// vdpbf16ps acc, a, b: per float32 lane, acc += a.lo * b.lo + a.hi * b.hi over the two bf16 halves
// of the lane's 32-bit word (bf16 products are exact in float32; one rounding per instruction,
// denormal inputs and results flushed to zero). "Pair words" below hold two bf16, the lower index
// in the low half; a missing partner (odd D, odd key count) is bf16 zero.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define MOMA_HAS_DPBF16 1
#define MOMA_DPBF16 __attribute__((target("avx512f,avx512bf16")))

inline uint32_t pair_word(uint16_t lo, uint16_t hi) {
  return static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16);
}

// acc[r * kB + j] = sum_p dpbf16(a[r][p], bw[p * ldb + j]) for r < kR, j < kB, p = 0..P-1 in order.
MOMA_DPBF16 void score4_dpbf16(const uint32_t* const* a, const uint32_t* bw, int64_t ldb, int64_t P, float* out) {
  static_assert(kB == 64 && kR == 4, "score4_dpbf16 holds 4 rows of kB = 4 x 16 columns");
  __m512 c[kR][4];
  for (int r = 0; r < kR; ++r)
    for (int q = 0; q < 4; ++q) c[r][q] = _mm512_setzero_ps();
  for (int64_t p = 0; p < P; ++p) {
    const uint32_t* b = bw + p * ldb;
    const __m512bh b0 = (__m512bh)_mm512_loadu_si512(b), b1 = (__m512bh)_mm512_loadu_si512(b + 16);
    const __m512bh b2 = (__m512bh)_mm512_loadu_si512(b + 32), b3 = (__m512bh)_mm512_loadu_si512(b + 48);
#pragma GCC unroll 4
    for (int r = 0; r < kR; ++r) {
      const __m512bh x = (__m512bh)_mm512_set1_epi32(static_cast<int>(a[r][p]));
      c[r][0] = _mm512_dpbf16_ps(c[r][0], x, b0);
      c[r][1] = _mm512_dpbf16_ps(c[r][1], x, b1);
      c[r][2] = _mm512_dpbf16_ps(c[r][2], x, b2);
      c[r][3] = _mm512_dpbf16_ps(c[r][3], x, b3);
    }
  }
  for (int r = 0; r < kR; ++r)
    for (int q = 0; q < 4; ++q) _mm512_storeu_ps(out + r * kB + 16 * q, c[r][q]);
}

// For each of R rows r: acc[r][d] = dpbf16(acc[r][d], w[r][p], x[p * ldx + d]) for p = 0..n-1 in
// order, every d < Dpad (Dpad a multiple of 16). The rows share the loads of x.
template <int R>
MOMA_DPBF16 inline __attribute__((always_inline)) void accum_rows_body(float* const* acc, int64_t Dpad,
                                                                      const uint32_t* const* w, const uint32_t* x,
                                                                      int64_t ldx, int64_t n) {
  int64_t d0 = 0;
  for (; d0 + 64 <= Dpad; d0 += 64) {
    __m512 r[R][4];
    for (int i = 0; i < R; ++i)
      for (int c = 0; c < 4; ++c) r[i][c] = _mm512_loadu_ps(acc[i] + d0 + 16 * c);
    const uint32_t* xp = x + d0;
    for (int64_t p = 0; p < n; ++p, xp += ldx) {
      const __m512bh x0 = (__m512bh)_mm512_loadu_si512(xp), x1 = (__m512bh)_mm512_loadu_si512(xp + 16);
      const __m512bh x2 = (__m512bh)_mm512_loadu_si512(xp + 32), x3 = (__m512bh)_mm512_loadu_si512(xp + 48);
      for (int i = 0; i < R; ++i) {
        const __m512bh wp = (__m512bh)_mm512_set1_epi32(static_cast<int>(w[i][p]));
        r[i][0] = _mm512_dpbf16_ps(r[i][0], wp, x0);
        r[i][1] = _mm512_dpbf16_ps(r[i][1], wp, x1);
        r[i][2] = _mm512_dpbf16_ps(r[i][2], wp, x2);
        r[i][3] = _mm512_dpbf16_ps(r[i][3], wp, x3);
      }
    }
    for (int i = 0; i < R; ++i)
      for (int c = 0; c < 4; ++c) _mm512_storeu_ps(acc[i] + d0 + 16 * c, r[i][c]);
  }
  for (; d0 < Dpad; d0 += 16) {
    __m512 r[R];
    for (int i = 0; i < R; ++i) r[i] = _mm512_loadu_ps(acc[i] + d0);
    for (int64_t p = 0; p < n; ++p) {
      const __m512bh xv = (__m512bh)_mm512_loadu_si512(x + p * ldx + d0);
      for (int i = 0; i < R; ++i)
        r[i] = _mm512_dpbf16_ps(r[i], (__m512bh)_mm512_set1_epi32(static_cast<int>(w[i][p])), xv);
    }
    for (int i = 0; i < R; ++i) _mm512_storeu_ps(acc[i] + d0, r[i]);
  }
}
MOMA_DPBF16 void accum1_dpbf16(float* const* acc, int64_t Dpad, const uint32_t* const* w, const uint32_t* x,
                               int64_t ldx, int64_t n) {
  accum_rows_body<1>(acc, Dpad, w, x, ldx, n);
}
MOMA_DPBF16 void accum4_dpbf16(float* const* acc, int64_t Dpad, const uint32_t* const* w, const uint32_t* x,
                               int64_t ldx, int64_t n) {
  accum_rows_body<4>(acc, Dpad, w, x, ldx, n);
}

// pw[r] = bf16(p[r]) for r in [r0, r1), 0 for the other r < kB (vcvtne2ps2bf16: nearest even,
// denormal inputs read as zero, as vdpbf16ps reads denormal bf16). Read as pair words, pw holds
// (p[2i], p[2i + 1]) in word i. p[r] is only read for r in [r0, r1).
MOMA_DPBF16 void round_p(const float* p, int64_t r0, int64_t r1, uint16_t* pw) {
  static_assert(kB == 64, "round_p converts kB = 2 x 32 values");
  const uint64_t keep = (r1 >= 64 ? ~uint64_t{0} : (uint64_t{1} << r1) - 1) & ~((uint64_t{1} << r0) - 1);
  for (int c = 0; c < 2; ++c) {
    const __m512 lo = _mm512_maskz_loadu_ps(static_cast<__mmask16>(keep >> (32 * c)), p + 32 * c);
    const __m512 hi = _mm512_maskz_loadu_ps(static_cast<__mmask16>(keep >> (32 * c + 16)), p + 32 * c + 16);
    _mm512_storeu_si512(pw + 32 * c, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
  }
}

struct FwdScratchDp {
  std::vector<uint32_t> aw, pw, edge;
  std::vector<float> s, oacc;
};

// The bf16 forward with both products on vdpbf16ps. Same units, order, masking and softmax as
// attention_t; differences: S = scale * (Q K^T) from pair words (d pairs in increasing order),
// and o_acc = sum over key pairs (increasing) of bf16(p) pair . V pair, P rounded to bf16 (nearest
// even) for this product only, as the tensor-core GPU kernel does; l sums the float32 p.
void attention_bf16_dp(const uint16_t* q, const uint16_t* k, const uint16_t* v, const int32_t* seg, int64_t N,
                       int64_t H, int64_t D, float scale, uint16_t* o, float* lse) {
  const vmath::Kernels* vk = vmath::vector_kernels();
  const int64_t RS = H * D, Dh = (D + 1) / 2, Dpad = (D + 15) / 16 * 16;
  const int64_t tiles = (N + kQ - 1) / kQ;
  const auto span = [&](int64_t qt) { return std::min(N, (qt + 1) * kQ) - seg[qt * kQ]; };
  int64_t max_span = 0;
  for (int64_t qt = 0; qt < tiles; ++qt) max_span = std::max(max_span, span(qt));
  const int64_t lds = (max_span + kB - 1) / kB * kB;
  const int64_t np = N + kB;
  // kw[(h * Dh + p) * np + t] = pair word (k[t, h, 2p], k[t, h, 2p + 1]); 0 for N <= t < np.
  // A block of kB rows is copied as pair words (the bf16 row itself, 0 appended for odd D), then
  // transposed through vmath.h transpose32 when available.
  const std::unique_ptr<uint32_t[]> kw(new uint32_t[sz(H * Dh * np)]);
  const int64_t blocks = (N + kB - 1) / kB;
  parallel_for(H * blocks, 1, [&](int64_t u0, int64_t u1) {
    std::vector<uint32_t> buf(sz(kB * Dh));
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t h = u / blocks, t0 = (u % blocks) * kB, nt = std::min(kB, N - t0);
      for (int64_t j = 0; j < nt; ++j) {
        uint32_t* w = buf.data() + j * Dh;
        w[Dh - 1] = 0;
        std::memcpy(w, k + (t0 + j) * RS + h * D, sz(D) * sizeof(uint16_t));
      }
      uint32_t* dst = kw.get() + h * Dh * np + t0;
      if (vk) {
        vk->transpose32(buf.data(), Dh, dst, np, nt, Dh);
      } else {
        for (int64_t j = 0; j < nt; ++j)
          for (int64_t p = 0; p < Dh; ++p) dst[p * np + j] = buf[sz(j * Dh + p)];
      }
    }
  });
  parallel_for(H * Dh, 256, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) std::fill(kw.get() + r * np + N, kw.get() + (r + 1) * np, 0u);
  });
  // vw[(h * NP2 + m) * Dpad + d] = pair word (v[2m, h, d], v[2m + 1, h, d]); 0 for rows >= N and
  // d >= D.
  const int64_t NP2 = (N + 1) / 2;
  const std::unique_ptr<uint32_t[]> vw_buf(new uint32_t[sz(H * NP2 * Dpad)]);
  uint32_t* vw = vw_buf.get();
  parallel_for(H * NP2, std::max<int64_t>(1, 4096 / Dpad), [&](int64_t u0, int64_t u1) {
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t h = u / NP2, m = u % NP2;
      const uint16_t* a = v + 2 * m * RS + h * D;
      const uint16_t* b = 2 * m + 1 < N ? a + RS : nullptr;
      uint32_t* row = vw + u * Dpad;
      if (b) {
        for (int64_t d = 0; d < D; ++d) row[d] = pair_word(a[d], b[d]);
      } else {
        for (int64_t d = 0; d < D; ++d) row[d] = a[d];
      }
      std::fill(row + D, row + Dpad, 0u);
    }
  });
  run_units<FwdScratchDp>(unit_order(tiles, H, span), [&](FwdScratchDp& sc, int64_t u) {
    const int64_t qt = u / H, h = u % H;
    const int64_t t0 = qt * kQ, t1 = std::min(N, t0 + kQ), nq = t1 - t0, lo = seg[t0];
    sc.aw.resize(sz(kQ * Dh));
    sc.s.resize(sz(kQ * lds + 1));  // S starts at element 1: a block may start one key before lo
    sc.pw.resize(sz(4 * (kB / 2)));
    sc.edge.resize(sz(Dpad));
    sc.oacc.assign(sz(kQ * Dpad), 0.0f);
    for (int64_t i = 0; i < nq; ++i) {
      uint32_t* w = sc.aw.data() + i * Dh;
      w[Dh - 1] = 0;
      std::memcpy(w, q + (t0 + i) * RS + h * D, sz(D) * sizeof(uint16_t));
    }
    float* S = sc.s.data() + 1;
    alignas(64) float acc[kR * kB];
    for (int64_t kb = lo; kb < t1; kb += kB) {
      const int64_t nk = std::min(kB, t1 - kb);
      const uint32_t* bw = kw.get() + h * Dh * np + kb;
      for (int64_t i0 = 0; i0 < nq; i0 += kR) {
        const uint32_t* rows[kR];
        for (int r = 0; r < kR; ++r) rows[r] = sc.aw.data() + std::min<int64_t>(i0 + r, nq - 1) * Dh;
        score4_dpbf16(rows, bw, np, Dh, acc);
        for (int r = 0; r < kR && i0 + r < nq; ++r) {
          float* out = S + (i0 + r) * lds + (kb - lo);
          const float* ar = acc + r * kB;
          for (int64_t j = 0; j < nk; ++j) out[j] = scale * ar[j];
        }
      }
    }
    double l[kQ];
    softmax_rows(vk, S, lds, seg, lo, t0, nq, l, lse + h, H);
    // Blocks of kB keys from the even key at or before lo, so that they hold whole pairs of vw.
    for (int64_t kb = lo - lo % 2; kb < t1; kb += kB) {
      const int64_t nk = std::min(kB, t1 - kb);
      const uint32_t* vb = vw + (h * NP2 + kb / 2) * Dpad;
      // Keys [r0, r1) of row i in this block, relative to kb (empty when r0 >= r1).
      const auto range = [&](int64_t i) {
        const int64_t t = t0 + i;
        return std::make_pair(std::max<int64_t>(seg[t], kb) - kb, std::min(t + 1, kb + nk) - kb);
      };
      for (int64_t i = 0; i < nq;) {
        const auto [r0, r1] = range(i);
        // Rows i..i+3 with the same keys share the V loads; each row's sum is the same either way.
        const int R = i + 4 <= nq && range(i + 3) == range(i) && range(i + 1) == range(i) ? 4 : 1;
        if (r0 >= r1) {
          i += R;
          continue;
        }
        float* oa[4];
        const uint32_t* pw[4];
        for (int r = 0; r < R; ++r) {
          round_p(S + (i + r) * lds + (kb - lo), r0, r1, reinterpret_cast<uint16_t*>(sc.pw.data() + r * (kB / 2)));
          oa[r] = sc.oacc.data() + (i + r) * Dpad;
          pw[r] = sc.pw.data() + r * (kB / 2);
        }
        const auto accum = [&](int64_t p, const uint32_t* x, int64_t n) {
          const uint32_t* wp[4];
          for (int r = 0; r < R; ++r) wp[r] = pw[r] + p;
          (R == 4 ? accum4_dpbf16 : accum1_dpbf16)(oa, Dpad, wp, x, Dpad, n);
        };
        // Pairs [r0 / 2, (r1 + 1) / 2). A pair with one key outside [r0, r1) takes its V pair with
        // that half zeroed, so values of keys the row does not attend (possibly inf / NaN) never
        // enter its sum.
        int64_t p0 = r0 / 2, p1 = (r1 + 1) / 2;
        const auto edge_pair = [&](int64_t p, uint32_t keep) {
          for (int64_t d = 0; d < Dpad; ++d) sc.edge[sz(d)] = vb[p * Dpad + d] & keep;
          accum(p, sc.edge.data(), 1);
        };
        if (r0 % 2 == 1) edge_pair(p0++, 0xFFFF0000u);
        const bool last_edge = r1 % 2 == 1 && p1 > p0;
        if (last_edge) --p1;
        if (p1 > p0) accum(p0, vb + p0 * Dpad, p1 - p0);
        if (last_edge) edge_pair(p1, 0x0000FFFFu);
        i += R;
      }
    }
    for (int64_t i = 0; i < nq; ++i) {
      uint16_t* out = o + (t0 + i) * RS + h * D;
      const float* a = sc.oacc.data() + i * Dpad;
      for (int64_t d = 0; d < D; ++d) out[d] = f32_to_bf16(static_cast<float>(static_cast<double>(a[d]) / l[i]));
    }
  });
}

// True when bf16 attention takes attention_bf16_dp: the CPU runs vdpbf16ps and the bf16 GEMM path
// (gemm_bf16_isa(), which follows MOMA_CPU_GEMM) is not "none"; MOMA_CPU_GEMM=avx512 / avx2 /
// generic forces the widening float32 path.
bool use_bf16_dp() { return cpu_has_avx512bf16() && std::strcmp(gemm_bf16_isa(), "none") != 0; }
#endif

struct FwdScratch {
  std::vector<float> abuf, s, vbuf, oacc;
};

template <typename T>
void attention_t(const T* q, const T* k, const T* v, const int32_t* seg, int64_t N, int64_t H, int64_t D, float scale,
                 T* o, float* lse) {
  const vmath::Kernels* vk = vmath::vector_kernels();
  const int64_t RS = H * D;
  const int64_t tiles = (N + kQ - 1) / kQ;
  const auto span = [&](int64_t qt) { return std::min(N, (qt + 1) * kQ) - seg[qt * kQ]; };
  int64_t max_span = 0;
  for (int64_t qt = 0; qt < tiles; ++qt) max_span = std::max(max_span, span(qt));
  const int64_t lds = (max_span + kB - 1) / kB * kB;
  const int64_t np = N + kB;
  std::vector<float> kt_buf(sz(H * D * np));
  transpose_heads(k, N, H, D, np, kt_buf.data());
  const float* kt = kt_buf.data();
  run_units<FwdScratch>(unit_order(tiles, H, span), [&](FwdScratch& sc, int64_t u) {
    const int64_t qt = u / H, h = u % H;
    const int64_t t0 = qt * kQ, t1 = std::min(N, t0 + kQ), nq = t1 - t0, lo = seg[t0];
    sc.abuf.resize(sz(kQ * D));
    sc.s.resize(sz(kQ * lds));
    sc.vbuf.resize(sz(kB * D));
    sc.oacc.assign(sz(kQ * D), 0.0f);
    const int64_t off = h * D;
    const AccumFn accum = inner().accum;
    int64_t lda;
    const float* a = rows_f(q + off, RS, t0, nq, D, sc.abuf.data(), &lda, false);
    float* S = sc.s.data();
    for (int64_t kb = lo; kb < t1; kb += kB) {
      const int64_t nk = std::min(kB, t1 - kb);
      score_tile(a, lda, nq, kt + h * D * np + kb, np, D, nk, scale, S + (kb - lo), lds);
    }
    double l[kQ];
    softmax_rows(vk, S, lds, seg, lo, t0, nq, l, lse + h, H);
    for (int64_t kb = lo; kb < t1; kb += kB) {
      const int64_t nk = std::min(kB, t1 - kb);
      int64_t ldv;
      const float* vr = rows_f(v + off, RS, kb, nk, D, sc.vbuf.data(), &ldv, true);
      for (int64_t i = 0; i < nq; ++i) {
        const int64_t t = t0 + i;
        const int64_t j0 = std::max<int64_t>(seg[t], kb), j1 = std::min(t + 1, kb + nk);
        if (j0 >= j1) continue;
        accum(sc.oacc.data() + i * D, D, S + i * lds + (j0 - lo), vr + (j0 - kb) * ldv, ldv, j1 - j0);
      }
    }
    for (int64_t i = 0; i < nq; ++i) {
      T* out = o + (t0 + i) * RS + off;
      const float* acc = sc.oacc.data() + i * D;
      for (int64_t d = 0; d < D; ++d) store(out, d, static_cast<float>(static_cast<double>(acc[d]) / l[i]));
    }
  });
}

struct BwdScratch {
  std::vector<float> abuf, gbuf, s, dp, rbuf1, rbuf2, acc1, acc2, x;
  void size(int64_t D) {
    abuf.resize(sz(kQ * D));
    gbuf.resize(sz(kQ * D));
    s.resize(sz(kQ * kB));
    dp.resize(sz(kQ * kB));
    rbuf1.resize(sz(kB * D));
    rbuf2.resize(sz(kB * D));
    acc1.assign(sz(kQ * D), 0.0f);
    acc2.assign(sz(kQ * D), 0.0f);
    x.resize(sz(kB));
  }
};

template <typename T>
void attention_backward_t(const T* q, const T* k, const T* v, const T* o, const float* lse, const T* dout,
                          const int32_t* seg, int64_t N, int64_t H, int64_t D, float scale, T* dq, T* dk, T* dv) {
  const vmath::Kernels* vk = vmath::vector_kernels();
  const int64_t RS = H * D;
  const int64_t tiles = (N + kQ - 1) / kQ;
  // seg_end[t]: one past the last row of t's segment.
  std::vector<int64_t> seg_end(sz(N));
  seg_end[sz(N - 1)] = N;
  for (int64_t t = N - 2; t >= 0; --t) seg_end[sz(t)] = seg[t + 1] == t + 1 ? t + 1 : seg_end[sz(t + 1)];
  std::vector<float> delta(sz(N * H));
  parallel_for(N, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, RS)), [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t)
      for (int64_t h = 0; h < H; ++h) {
        const T* g = dout + t * RS + h * D;
        const T* y = o + t * RS + h * D;
        double s = 0.0;
        for (int64_t d = 0; d < D; ++d) s += static_cast<double>(load(g, d)) * static_cast<double>(load(y, d));
        delta[sz(t * H + h)] = static_cast<float>(s);
      }
  });

  // The B sides: k and v (transposed) for the dq pass, then q and dout for the dk / dv pass.
  const int64_t np = N + kB;
  std::vector<float> tb1(sz(H * D * np)), tb2(sz(H * D * np));
  const float* t1p = tb1.data();
  const float* t2p = tb2.data();
  transpose_heads(k, N, H, D, np, tb1.data());
  transpose_heads(v, N, H, D, np, tb2.data());

  // dq pass: unit (h, query tile).
  const auto qspan = [&](int64_t qt) { return std::min(N, (qt + 1) * kQ) - seg[qt * kQ]; };
  run_units<BwdScratch>(unit_order(tiles, H, qspan), [&](BwdScratch& sc, int64_t u) {
    const int64_t qt = u / H, h = u % H;
    const int64_t t0 = qt * kQ, t1 = std::min(N, t0 + kQ), nq = t1 - t0, lo = seg[t0];
    const int64_t off = h * D;
    sc.size(D);
    const AccumFn accum = inner().accum;
    int64_t lda, ldg, ldk;
    const float* a = rows_f(q + off, RS, t0, nq, D, sc.abuf.data(), &lda, false);
    const float* g = rows_f(dout + off, RS, t0, nq, D, sc.gbuf.data(), &ldg, false);
    for (int64_t kb = lo; kb < t1; kb += kB) {
      const int64_t nk = std::min(kB, t1 - kb);
      score_tile(a, lda, nq, t1p + h * D * np + kb, np, D, nk, scale, sc.s.data(), kB);
      score_tile(g, ldg, nq, t2p + h * D * np + kb, np, D, nk, 1.0f, sc.dp.data(), kB);
      const float* kr = rows_f(k + off, RS, kb, nk, D, sc.rbuf1.data(), &ldk, true);
      for (int64_t i = 0; i < nq; ++i) {
        const int64_t t = t0 + i;
        const int64_t j0 = std::max<int64_t>(seg[t], kb) - kb, j1 = std::min(t + 1, kb + nk) - kb;
        if (j0 >= j1) continue;
        const float L = lse[t * H + h], dl = delta[sz(t * H + h)];
        const float* srow = sc.s.data() + i * kB;
        const float* prow = sc.dp.data() + i * kB;
        float* x = sc.x.data();
        for (int64_t j = j0; j < j1; ++j) x[j] = srow[j] - L;
        exp_map(vk, x + j0, x + j0, j1 - j0);
        for (int64_t j = j0; j < j1; ++j) x[j] = x[j] * (prow[j] - dl);
        accum(sc.acc1.data() + i * D, D, x + j0, kr + j0 * ldk, ldk, j1 - j0);
      }
    }
    for (int64_t i = 0; i < nq; ++i) {
      T* out = dq + (t0 + i) * RS + off;
      const float* acc = sc.acc1.data() + i * D;
      for (int64_t d = 0; d < D; ++d) store(out, d, scale * acc[d]);
    }
  });

  // dk / dv pass: unit (h, key tile [s0, s1)), queries [s0, seg_end[s1 - 1]).
  transpose_heads(q, N, H, D, np, tb1.data());
  transpose_heads(dout, N, H, D, np, tb2.data());
  const auto kspan = [&](int64_t st) { return seg_end[sz(std::min(N, (st + 1) * kQ) - 1)] - st * kQ; };
  run_units<BwdScratch>(unit_order(tiles, H, kspan), [&](BwdScratch& sc, int64_t u) {
    const int64_t st = u / H, h = u % H;
    const int64_t s0 = st * kQ, s1 = std::min(N, s0 + kQ), ns = s1 - s0, hi = seg_end[sz(s1 - 1)];
    const int64_t off = h * D;
    sc.size(D);
    const AccumFn accum = inner().accum;
    int64_t lda, ldb, ldq, ldg;
    const float* a = rows_f(k + off, RS, s0, ns, D, sc.abuf.data(), &lda, false);
    const float* b = rows_f(v + off, RS, s0, ns, D, sc.gbuf.data(), &ldb, false);
    for (int64_t qb = s0; qb < hi; qb += kB) {
      const int64_t nb = std::min(kB, hi - qb);
      score_tile(a, lda, ns, t1p + h * D * np + qb, np, D, nb, scale, sc.s.data(), kB);
      score_tile(b, ldb, ns, t2p + h * D * np + qb, np, D, nb, 1.0f, sc.dp.data(), kB);
      const float* qr = rows_f(q + off, RS, qb, nb, D, sc.rbuf1.data(), &ldq, true);
      const float* gr = rows_f(dout + off, RS, qb, nb, D, sc.rbuf2.data(), &ldg, true);
      for (int64_t j = 0; j < ns; ++j) {
        const int64_t s = s0 + j;
        const int64_t i0 = std::max(s, qb) - qb, i1 = std::min(seg_end[sz(s)], qb + nb) - qb;
        if (i0 >= i1) continue;
        const float* srow = sc.s.data() + j * kB;
        const float* prow = sc.dp.data() + j * kB;
        float* x = sc.x.data();
        for (int64_t i = i0; i < i1; ++i) x[i] = srow[i] - lse[(qb + i) * H + h];
        exp_map(vk, x + i0, x + i0, i1 - i0);
        accum(sc.acc2.data() + j * D, D, x + i0, gr + i0 * ldg, ldg, i1 - i0);
        for (int64_t i = i0; i < i1; ++i) x[i] = x[i] * (prow[i] - delta[sz((qb + i) * H + h)]);
        accum(sc.acc1.data() + j * D, D, x + i0, qr + i0 * ldq, ldq, i1 - i0);
      }
    }
    for (int64_t j = 0; j < ns; ++j) {
      T* ok = dk + (s0 + j) * RS + off;
      T* ov = dv + (s0 + j) * RS + off;
      const float* ak = sc.acc1.data() + j * D;
      const float* av = sc.acc2.data() + j * D;
      for (int64_t d = 0; d < D; ++d) {
        store(ok, d, scale * ak[d]);
        store(ov, d, av[d]);
      }
    }
  });
}

}  // namespace

void attention(const LaunchCtx& ctx, DType dt, const void* q, const void* k, const void* v, const int32_t* seg_start,
               int64_t N, int64_t H, int64_t D, float scale, void* o, float* lse) {
  check_segments("attention", seg_start, N);
  if (N <= 0 || H <= 0) return;
  if (dt == DType::F32)
    attention_t(static_cast<const float*>(q), static_cast<const float*>(k), static_cast<const float*>(v), seg_start, N,
                H, D, scale, static_cast<float*>(o), lse);
#ifdef MOMA_HAS_DPBF16
  else if (dt == DType::BF16 && use_bf16_dp())
    attention_bf16_dp(static_cast<const uint16_t*>(q), static_cast<const uint16_t*>(k),
                      static_cast<const uint16_t*>(v), seg_start, N, H, D, scale, static_cast<uint16_t*>(o), lse);
#endif
  else if (dt == DType::BF16)
    attention_t(static_cast<const uint16_t*>(q), static_cast<const uint16_t*>(k), static_cast<const uint16_t*>(v),
                seg_start, N, H, D, scale, static_cast<uint16_t*>(o), lse);
  else
    fail("ERR_DTYPE", "attention: unsupported dtype ", dtype_name(dt));
}

void attention_backward(const LaunchCtx& ctx, DType dt, const void* q, const void* k, const void* v, const void* o,
                        const float* lse, const void* dout, const int32_t* seg_start, int64_t N, int64_t H, int64_t D,
                        float scale, void* dq, void* dk, void* dv) {
  check_segments("attention_backward", seg_start, N);
  if (N <= 0 || H <= 0) return;
  if (dt == DType::F32)
    attention_backward_t(static_cast<const float*>(q), static_cast<const float*>(k), static_cast<const float*>(v),
                         static_cast<const float*>(o), lse, static_cast<const float*>(dout), seg_start, N, H, D, scale,
                         static_cast<float*>(dq), static_cast<float*>(dk), static_cast<float*>(dv));
  else if (dt == DType::BF16)
    attention_backward_t(static_cast<const uint16_t*>(q), static_cast<const uint16_t*>(k),
                         static_cast<const uint16_t*>(v), static_cast<const uint16_t*>(o), lse,
                         static_cast<const uint16_t*>(dout), seg_start, N, H, D, scale, static_cast<uint16_t*>(dq),
                         static_cast<uint16_t*>(dk), static_cast<uint16_t*>(dv));
  else
    fail("ERR_DTYPE", "attention_backward: unsupported dtype ", dtype_name(dt));
}

}  // namespace moma::cpu
