// Skinny GEMMs: C = alpha * op(A) @ op(B) + beta * C when N <= 16 or K <= 16 (one matrix, no
// batch), the shapes of a mixture-of-experts router (E = 8 experts): logits = x @ W_router
// (N = E), its input gradient dlogits @ W_router^T (K = E) and its weight gradient
// x^T @ dlogits (N = E, K = rows). cpu::gemm sends these here instead of the blocked driver
// (gemm.cc), whose 14 x 32 register tile would run 3/4 empty at N = 8 and whose packing of the
// big operand costs a full extra pass over it.
//
// At such shapes the work is 2 * M * N * K FLOPs against about 4 * (M * K + M * N) bytes
// (float32), at most 2 * 16 / 4 = 8 FLOPs per byte, so the ceiling is memory bandwidth: the time
// floor is the bytes of the big operands (A, and C when N is the wide side) over the copy
// bandwidth (`ceiling.copy` of the kernel bench). Each form streams the big operand once and keeps
// the small one (at most 16 x max(M, N, K) elements, widened to float32 and packed once per call)
// in L1 / L2 and registers:
//   rows   N <= 16, op(A) = A (rows of A contiguous along K): threads split the rows of A; a block
//          of 2 rows keeps 2 x 8 accumulators of 16 float32 lanes (lane l sums k = l mod 16),
//          against B^T packed as 8 (or 16) rows of K; each output is reduced across its lanes at
//          the end in a fixed tree.
//   wide   K <= 16 (N > 16): threads split the rows of C; every 16-column chunk of a row is
//          a[0] * B[0] + a[1] * B[1] + ... in order of k, with op(B) packed as K rows of N.
//   reduce N <= 16, op(A) = A^T (A stored K x M: the weight gradient x^T @ dy): K is cut into
//          fixed blocks (their size depends on K alone, never on the thread count); a thread takes
//          whole blocks and accumulates each block's partial sums (M x 8 columns, L1-resident) row
//          by row of A, 4 rows per pass, reading A in storage order; the partials are then summed
//          in block order.
// Determinism: every output is computed by one thread in one fixed order of operations (the
// reduce form's blocks are fixed and summed in order), so results do not depend on the number of
// threads. Products and sums are separate roundings (no FMA; the build uses -ffp-contract=off),
// and the 16-lane vectors are GCC vector types compiled three ways (AVX-512F, AVX2, baseline;
// target_clones picks one at load time) with the same operations in the same order, so every
// ISA gives the same bits. bf16 operands are widened exactly as they are read (a bf16 x bf16 call
// is therefore float32 arithmetic on the widened inputs, within the bf16 path's bound: K products
// exact in float32, float32 sums); a bf16 C is computed in float32 and rounded once on store
// (nearest even), as the blocked driver does. beta == 0 never reads C.
#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>

#include "../core/bf16.h"
#include "../core/error.h"
#include "gemm_kernels.h"
#include "thread_pool.h"

namespace moma::cpu {
namespace {

constexpr int64_t kLanes = 16;     // float32 lanes of one vector
constexpr int64_t kCols = 8;       // output columns per accumulator group (rows / reduce)
constexpr int64_t kRowBlock = 2;   // rows per accumulator block (rows form)
constexpr int64_t kReduceRows = 4;  // rows of A per pass over the partials (reduce form)
constexpr int64_t kMinKBlock = 256;
constexpr int64_t kMaxKBlocks = 64;
// Problems below this many FLOPs run on the calling thread.
constexpr double kSerialFlops = 1 << 21;

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(__APPLE__)
#define MOMA_SKINNY_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define MOMA_SKINNY_CLONES
#endif
#define MOMA_SKINNY_INLINE inline __attribute__((always_inline))

// The vector helpers below are always inlined into the clones, so the ABI note GCC gives for
// passing 64-byte vectors in code built without AVX-512 concerns no real call.
#pragma GCC diagnostic ignored "-Wpsabi"
typedef float VecF __attribute__((vector_size(64)));
typedef uint16_t VecH __attribute__((vector_size(32)));
typedef uint32_t VecU __attribute__((vector_size(64)));

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

MOMA_SKINNY_INLINE VecF zero_vec() { return VecF{}; }

MOMA_SKINNY_INLINE VecF load_vec(const float* p) {
  VecF v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// 16 bf16 values widened exactly (the bf16 bits are the high half of the float32).
MOMA_SKINNY_INLINE VecF load_vec(const uint16_t* p) {
  VecH h;
  std::memcpy(&h, p, sizeof h);
  const VecU u = __builtin_convertvector(h, VecU) << 16;
  VecF v;
  std::memcpy(&v, &u, sizeof v);
  return v;
}

// The first n < 16 values, the other lanes zero.
template <typename T>
MOMA_SKINNY_INLINE VecF load_part(const T* p, int64_t n) {
  alignas(64) T tmp[kLanes] = {};
  std::memcpy(tmp, p, static_cast<size_t>(n) * sizeof(T));
  return load_vec(tmp);
}

MOMA_SKINNY_INLINE float widen(float v) { return v; }
MOMA_SKINNY_INLINE float widen(uint16_t v) { return bf16_to_f32(v); }

// The sum of the 16 lanes in a fixed tree: lanes l and l + 8, then + 4, + 2, + 1.
MOMA_SKINNY_INLINE float lane_sum(const VecF& v) {
  float t[kLanes];
  std::memcpy(t, &v, sizeof t);
  for (int i = 0; i < 8; ++i) t[i] = t[i] + t[i + 8];
  for (int i = 0; i < 4; ++i) t[i] = t[i] + t[i + 4];
  for (int i = 0; i < 2; ++i) t[i] = t[i] + t[i + 2];
  return t[0] + t[1];
}

// C element store: alpha * acc + beta * C (beta == 0: C is not read), rounded once for bf16.
MOMA_SKINNY_INLINE float epilogue(float acc, float alpha, float beta, float c) {
  return beta == 0.0f ? alpha * acc : alpha * acc + beta * c;
}
MOMA_SKINNY_INLINE void store_c(float* c, float acc, float alpha, float beta) { *c = epilogue(acc, alpha, beta, *c); }
MOMA_SKINNY_INLINE void store_c(uint16_t* c, float acc, float alpha, float beta) {
  *c = f32_to_bf16(epilogue(acc, alpha, beta, beta == 0.0f ? 0.0f : bf16_to_f32(*c)));
}

// A 16-column chunk of a float32 C row (n live columns) from the vector acc.
MOMA_SKINNY_INLINE void store_chunk(float* c, const VecF& acc, int64_t n, float alpha, float beta) {
  if (n == kLanes) {
    VecF out = acc * alpha;
    if (beta != 0.0f) out = out + load_vec(c) * beta;
    std::memcpy(c, &out, sizeof out);
    return;
  }
  float t[kLanes];
  std::memcpy(t, &acc, sizeof t);
  for (int64_t j = 0; j < n; ++j) store_c(c + j, t[j], alpha, beta);
}
MOMA_SKINNY_INLINE void store_chunk(uint16_t* c, const VecF& acc, int64_t n, float alpha, float beta) {
  float t[kLanes];
  std::memcpy(t, &acc, sizeof t);
  for (int64_t j = 0; j < n; ++j) store_c(c + j, t[j], alpha, beta);
}

// The operands of one call, with the small one packed (float32).
struct Skinny {
  const GemmShape* g;
  DType dt_a, dt_c;
  const void* A;
  void* C;
  const float* packed;  // rows: B^T [np][kp]; wide: op(B) [K][np]; reduce: op(B) [K][np]
  int64_t np, kp;       // packed widths: N rounded up to kCols (rows, reduce) or kLanes (wide); K rounded up to kLanes
  float* partials;      // reduce: [blocks][np][mp]
  int64_t mp, k_block, k_blocks;
};

// ---- rows: N <= 16, A rows contiguous along K -----------------------------------------------

template <typename TA, typename TC>
MOMA_SKINNY_INLINE void rows_body(const Skinny& s, int64_t i0, int64_t i1) {
  const GemmShape& g = *s.g;
  const TA* A = static_cast<const TA*>(s.A);
  TC* C = static_cast<TC*>(s.C);
  const int64_t K = g.K, full = K / kLanes * kLanes, tail = K - full;
  for (int64_t i = i0; i < i1; i += kRowBlock) {
    const int64_t rows = std::min(kRowBlock, i1 - i);
    for (int64_t n0 = 0; n0 < g.N; n0 += kCols) {
      VecF acc[kRowBlock][kCols];
      for (auto& r : acc)
        for (auto& v : r) v = zero_vec();
      const float* bt = s.packed + n0 * s.kp;
      const TA* a0 = A + i * g.lda;
      const TA* a1 = A + (i + rows - 1) * g.lda;  // == a0 for a single last row
      for (int64_t k = 0; k < full; k += kLanes) {
        const VecF x0 = load_vec(a0 + k), x1 = load_vec(a1 + k);
        for (int64_t j = 0; j < kCols; ++j) {
          const VecF w = load_vec(bt + j * s.kp + k);
          acc[0][j] = acc[0][j] + x0 * w;
          acc[1][j] = acc[1][j] + x1 * w;
        }
      }
      if (tail) {
        const VecF x0 = load_part(a0 + full, tail), x1 = load_part(a1 + full, tail);
        for (int64_t j = 0; j < kCols; ++j) {
          const VecF w = load_vec(bt + j * s.kp + full);
          acc[0][j] = acc[0][j] + x0 * w;
          acc[1][j] = acc[1][j] + x1 * w;
        }
      }
      const int64_t cols = std::min(kCols, g.N - n0);
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t j = 0; j < cols; ++j) store_c(C + (i + r) * g.ldc + n0 + j, lane_sum(acc[r][j]), g.alpha, g.beta);
    }
  }
}

MOMA_SKINNY_CLONES void rows_range(const Skinny& s, int64_t i0, int64_t i1) {
  const bool a16 = s.dt_a == DType::BF16, c16 = s.dt_c == DType::BF16;
  if (a16 && c16) rows_body<uint16_t, uint16_t>(s, i0, i1);
  else if (a16) rows_body<uint16_t, float>(s, i0, i1);
  else if (c16) rows_body<float, uint16_t>(s, i0, i1);
  else rows_body<float, float>(s, i0, i1);
}

// ---- wide: K <= 16 -----------------------------------------------------------------------------

template <typename TA, typename TC>
MOMA_SKINNY_INLINE void wide_body(const Skinny& s, int64_t i0, int64_t i1) {
  const GemmShape& g = *s.g;
  const TA* A = static_cast<const TA*>(s.A);
  TC* C = static_cast<TC*>(s.C);
  const int64_t K = g.K, N = g.N;
  for (int64_t i = i0; i < i1; ++i) {
    float a[kLanes];
    for (int64_t k = 0; k < K; ++k) a[k] = widen(g.transA ? A[k * g.lda + i] : A[i * g.lda + k]);
    TC* crow = C + i * g.ldc;
    for (int64_t n0 = 0; n0 < N; n0 += kLanes) {
      const float* b = s.packed + n0;
      VecF acc = load_vec(b) * a[0];
      for (int64_t k = 1; k < K; ++k) acc = acc + load_vec(b + k * s.np) * a[k];
      store_chunk(crow + n0, acc, std::min(kLanes, N - n0), g.alpha, g.beta);
    }
  }
}

MOMA_SKINNY_CLONES void wide_range(const Skinny& s, int64_t i0, int64_t i1) {
  const bool a16 = s.dt_a == DType::BF16, c16 = s.dt_c == DType::BF16;
  if (a16 && c16) wide_body<uint16_t, uint16_t>(s, i0, i1);
  else if (a16) wide_body<uint16_t, float>(s, i0, i1);
  else if (c16) wide_body<float, uint16_t>(s, i0, i1);
  else wide_body<float, float>(s, i0, i1);
}

// ---- reduce: N <= 16, op(A) = A^T ---------------------------------------------------------------

// The partial sums of K block b: partials[b][n][m] = sum over k in the block of A[k][m] * B[k][n],
// k in increasing order. The block's rows of A are read in order, kReduceRows at a time, each
// row's vectors of 16 values of M updating the 8 columns' partials (L1-resident) in place.
template <typename TA>
MOMA_SKINNY_INLINE void reduce_block(const Skinny& s, int64_t b) {
  const GemmShape& g = *s.g;
  const TA* A = static_cast<const TA*>(s.A);
  const int64_t k0 = b * s.k_block, k1 = std::min(g.K, k0 + s.k_block), M = g.M;
  const int64_t full = M / kLanes * kLanes;
  float* part = s.partials + b * s.np * s.mp;
  std::memset(part, 0, static_cast<size_t>(s.np * s.mp) * sizeof(float));
  for (int64_t n0 = 0; n0 < s.np; n0 += kCols) {
    float* p = part + n0 * s.mp;
    for (int64_t k = k0; k < k1; k += kReduceRows) {
      const int64_t rows = std::min(kReduceRows, k1 - k);
      const float* w = s.packed + k * s.np + n0;  // w[r * np + j] = op(B)[k + r][n0 + j]
      for (int64_t m = 0; m < s.mp; m += kLanes) {
        VecF acc[kCols];
        for (int64_t j = 0; j < kCols; ++j) acc[j] = load_vec(p + j * s.mp + m);
        for (int64_t r = 0; r < rows; ++r) {
          const TA* x = A + (k + r) * g.lda + m;
          const VecF xv = m < full ? load_vec(x) : load_part(x, M - full);
          for (int64_t j = 0; j < kCols; ++j) acc[j] = acc[j] + xv * w[r * s.np + j];
        }
        for (int64_t j = 0; j < kCols; ++j) std::memcpy(p + j * s.mp + m, &acc[j], sizeof(VecF));
      }
    }
  }
}

MOMA_SKINNY_CLONES void reduce_blocks(const Skinny& s, int64_t b0, int64_t b1) {
  for (int64_t b = b0; b < b1; ++b) {
    if (s.dt_a == DType::BF16) reduce_block<uint16_t>(s, b);
    else reduce_block<float>(s, b);
  }
}

// C rows [m0, m1): the blocks' partials summed in block order.
template <typename TC>
MOMA_SKINNY_INLINE void reduce_store(const Skinny& s, int64_t m0, int64_t m1) {
  const GemmShape& g = *s.g;
  TC* C = static_cast<TC*>(s.C);
  for (int64_t m = m0; m < m1; ++m)
    for (int64_t n = 0; n < g.N; ++n) {
      const float* p = s.partials + n * s.mp + m;
      float sum = p[0];
      for (int64_t b = 1; b < s.k_blocks; ++b) sum = sum + p[b * s.np * s.mp];
      store_c(C + m * g.ldc + n, sum, g.alpha, g.beta);
    }
}

MOMA_SKINNY_CLONES void reduce_rows(const Skinny& s, int64_t m0, int64_t m1) {
  if (s.dt_c == DType::BF16) reduce_store<uint16_t>(s, m0, m1);
  else reduce_store<float>(s, m0, m1);
}

// ---- packing and threads -----------------------------------------------------------------------

// op(B)[k][n] as float32.
float op_b(DType dt_b, const void* B, const GemmShape& g, int64_t k, int64_t n) {
  const int64_t i = g.transB ? n * g.ldb + k : k * g.ldb + n;
  return dt_b == DType::BF16 ? bf16_to_f32(static_cast<const uint16_t*>(B)[i]) : static_cast<const float*>(B)[i];
}

// fn(begin, end) over [0, n) on `threads` threads (chunks of at least `grain`), or inline.
template <typename Fn>
void split(int threads, int64_t n, int64_t grain, const Fn& fn) {
  if (threads <= 1 || n <= grain) {
    fn(0, n);
    return;
  }
  parallel_for(n, grain, fn);
}

}  // namespace

bool gemm_skinny_applies(const GemmShape& g) {
  return g.batch == 1 && g.M > 0 && g.N > 0 && g.K > 0 && (g.N <= kSkinnyMax || g.K <= kSkinnyMax);
}

void gemm_skinny(DType dt_a, const void* A, DType dt_b, const void* B, DType dt_c, void* C, const GemmShape& g,
                 int threads) {
  if (!gemm_skinny_applies(g))
    fail("ERR_INTERNAL", "gemm_skinny: shape ", g.M, " x ", g.N, " x ", g.K, " (batch ", g.batch,
         ") has neither N nor K <= ", kSkinnyMax);
  for (DType dt : {dt_a, dt_b, dt_c})
    if (dt != DType::F32 && dt != DType::BF16)
      fail("ERR_DTYPE", "gemm_skinny: operand is ", dtype_name(dt), ", expected float32 or bfloat16");
  if (2.0 * double(g.M) * double(g.N) * double(g.K) < kSerialFlops) threads = 1;
  Skinny s{&g, dt_a, dt_c, A, C, nullptr, 0, 0, nullptr, 0, 0, 0};
  std::vector<float> packed;
  const int64_t M = g.M, N = g.N, K = g.K;
  if (N <= kSkinnyMax && !g.transA) {
    // rows: B^T [np][kp], zero past N and K
    s.np = ceil_div(N, kCols) * kCols;
    s.kp = ceil_div(K, kLanes) * kLanes;
    packed.assign(static_cast<size_t>(s.np * s.kp), 0.0f);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k) packed[static_cast<size_t>(n * s.kp + k)] = op_b(dt_b, B, g, k, n);
    s.packed = packed.data();
    split(threads, ceil_div(M, kRowBlock), 16, [&](int64_t b0, int64_t b1) {
      rows_range(s, b0 * kRowBlock, std::min(M, b1 * kRowBlock));
    });
  } else if (N <= kSkinnyMax) {
    // reduce: op(B) [K][np], zero past N; partials [blocks][np][mp]
    s.np = ceil_div(N, kCols) * kCols;
    s.mp = ceil_div(M, kLanes) * kLanes;
    s.k_block = std::max(kMinKBlock, ceil_div(ceil_div(K, kMaxKBlocks), kLanes) * kLanes);
    s.k_blocks = ceil_div(K, s.k_block);
    packed.assign(static_cast<size_t>(K * s.np), 0.0f);
    for (int64_t k = 0; k < K; ++k)
      for (int64_t n = 0; n < N; ++n) packed[static_cast<size_t>(k * s.np + n)] = op_b(dt_b, B, g, k, n);
    s.packed = packed.data();
    std::unique_ptr<float[]> partials(new float[static_cast<size_t>(s.k_blocks * s.np * s.mp)]);
    s.partials = partials.get();
    split(threads, s.k_blocks, 1, [&](int64_t b0, int64_t b1) { reduce_blocks(s, b0, b1); });
    split(threads, M, 64, [&](int64_t m0, int64_t m1) { reduce_rows(s, m0, m1); });
  } else {
    // wide: op(B) [K][np], zero past N
    s.np = ceil_div(N, kLanes) * kLanes;
    packed.assign(static_cast<size_t>(K * s.np), 0.0f);
    for (int64_t k = 0; k < K; ++k)
      for (int64_t n = 0; n < N; ++n) packed[static_cast<size_t>(k * s.np + n)] = op_b(dt_b, B, g, k, n);
    s.packed = packed.data();
    split(threads, M, std::max<int64_t>(1, 4096 / N), [&](int64_t i0, int64_t i1) { wide_range(s, i0, i1); });
  }
}

}  // namespace moma::cpu
