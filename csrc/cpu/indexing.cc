// Indexing kernels on contiguous [outer, n, inner] tensors with an int32 index list of length k.
// Both first check every index (sequentially, before writing anything) and throw ERR_RANGE naming
// the first bad one, so a failed call leaves y untouched.
// index_select: y[o, j, :] = x[o, idx[j], :]. Only bits move (any dtype). Parallel over the
// outer * k output rows (grain ~32768 elements); rows are memcpy'd, and inner == 1 is a plain
// element gather.
// scatter_add: y[o, idx[j], i] += src[o, j, i] with each output element taking its contributions
// in increasing j, so the result is deterministic. Work is split into units (outer row, block of
// inner columns) whose output elements are disjoint; each unit walks j sequentially, and units
// run in parallel. float32 adds in float and int32 wraps modulo 2^32, directly in y. bf16 sums in
// float and rounds once on store: a unit widens the distinct target rows of its column block into
// a float scratch (block width chosen so that rows x columns is about 256K floats, one column at
// least), accumulates there, and rounds each touched element back once.
#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels.h"
#include "strided_iter.h"
#include "thread_pool.h"

namespace moma::cpu {
namespace {

constexpr int64_t kGrain = 32768;
constexpr int64_t kScatterBlock = 4096;   // inner columns per float32 / int32 unit
constexpr int64_t kScratchFloats = 262144;  // bf16 unit scratch: distinct rows * columns

void check_indices(const char* op, const int32_t* idx, int64_t k, int64_t n) {
  for (int64_t j = 0; j < k; ++j) {
    if (idx[j] < 0 || idx[j] >= n)
      fail("ERR_RANGE", op, ": index ", idx[j], " at position ", j, " is out of range [0, ", n,
           ")");
  }
}

// float32 / int32: y updated in place, add(y, v) per contribution.
template <typename T, typename Add>
void scatter_direct(const T* src, const int32_t* idx, T* y, int64_t outer, int64_t k, int64_t n,
                    int64_t inner, Add add) {
  const int64_t ib = std::min(inner, kScatterBlock);
  const int64_t nib = (inner + ib - 1) / ib;
  const int64_t grain = std::max<int64_t>(1, kGrain / (k * ib));
  parallel_for(outer * nib, grain, [&](int64_t begin, int64_t end) {
    for (int64_t u = begin; u < end; ++u) {
      const int64_t o = u / nib, i0 = (u % nib) * ib, len = std::min(ib, inner - i0);
      const T* s = src + o * k * inner + i0;
      T* yo = y + o * n * inner + i0;
      for (int64_t j = 0; j < k; ++j) {
        const T* sr = s + j * inner;
        T* yr = yo + idx[j] * inner;
        for (int64_t t = 0; t < len; ++t) yr[t] = add(yr[t], sr[t]);
      }
    }
  });
}

// bf16: float accumulation per output element, one rounding on store.
void scatter_bf16(const uint16_t* src, const int32_t* idx, uint16_t* y, int64_t outer, int64_t k,
                  int64_t n, int64_t inner) {
  // Distinct target rows in order of first use, and each one's scratch slot.
  std::vector<int32_t> slot(static_cast<size_t>(n), -1);
  std::vector<int64_t> rows;
  for (int64_t j = 0; j < k; ++j) {
    if (slot[idx[j]] < 0) {
      slot[idx[j]] = static_cast<int32_t>(rows.size());
      rows.push_back(idx[j]);
    }
  }
  const int64_t m = static_cast<int64_t>(rows.size());
  const int64_t ib = std::clamp<int64_t>(kScratchFloats / m, 1, inner);
  const int64_t nib = (inner + ib - 1) / ib;
  const int64_t grain = std::max<int64_t>(1, kGrain / (k * ib));
  parallel_for(outer * nib, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> acc(static_cast<size_t>(m * ib));  // [slot][column]
    for (int64_t u = begin; u < end; ++u) {
      const int64_t o = u / nib, i0 = (u % nib) * ib, len = std::min(ib, inner - i0);
      const uint16_t* s = src + o * k * inner + i0;
      uint16_t* yo = y + o * n * inner + i0;
      for (int64_t q = 0; q < m; ++q) {
        const uint16_t* yr = yo + rows[q] * inner;
        for (int64_t t = 0; t < len; ++t) acc[q * len + t] = bf16_to_f32(yr[t]);
      }
      for (int64_t j = 0; j < k; ++j) {
        const uint16_t* sr = s + j * inner;
        float* ar = &acc[static_cast<size_t>(slot[idx[j]] * len)];
        for (int64_t t = 0; t < len; ++t) ar[t] += bf16_to_f32(sr[t]);
      }
      for (int64_t q = 0; q < m; ++q) {
        uint16_t* yr = yo + rows[q] * inner;
        for (int64_t t = 0; t < len; ++t) yr[t] = f32_to_bf16(acc[q * len + t]);
      }
    }
  });
}

}  // namespace

void index_select(const LaunchCtx& ctx, DType dt, const void* x, const int32_t* idx, void* y, int64_t outer, int64_t n,
                  int64_t k, int64_t inner) {
  check_indices("index_select", idx, k, n);
  if (outer <= 0 || k <= 0 || inner <= 0) return;
  detail::dispatch_bits(dt, "index_select", [&](auto tag) {
    using T = decltype(tag);
    const T* xp = static_cast<const T*>(x);
    T* yp = static_cast<T*>(y);
    if (inner == 1) {
      parallel_for(outer * k, kGrain, [&](int64_t begin, int64_t end) {
        for (int64_t q = begin; q < end; ++q) yp[q] = xp[(q / k) * n + idx[q % k]];
      });
      return;
    }
    const size_t row_bytes = static_cast<size_t>(inner) * sizeof(T);
    parallel_for(outer * k, std::max<int64_t>(1, kGrain / inner), [&](int64_t begin, int64_t end) {
      for (int64_t q = begin; q < end; ++q) {
        const int64_t o = q / k, j = q % k;
        std::memcpy(yp + q * inner, xp + (o * n + idx[j]) * inner, row_bytes);
      }
    });
  });
}

void scatter_add(const LaunchCtx& ctx, DType dt, const void* src, const int32_t* idx, void* y, int64_t outer, int64_t k,
                 int64_t n, int64_t inner) {
  check_indices("scatter_add", idx, k, n);
  if (outer <= 0 || k <= 0 || inner <= 0) return;
  switch (dt) {
    case DType::F32:
      return scatter_direct(static_cast<const float*>(src), idx, static_cast<float*>(y), outer, k,
                            n, inner, [](float a, float b) { return a + b; });
    case DType::BF16:
      return scatter_bf16(static_cast<const uint16_t*>(src), idx, static_cast<uint16_t*>(y), outer,
                          k, n, inner);
    case DType::I32:
      return scatter_direct(static_cast<const int32_t*>(src), idx, static_cast<int32_t*>(y), outer,
                            k, n, inner, [](int32_t a, int32_t b) {
                              return static_cast<int32_t>(static_cast<uint32_t>(a) +
                                                          static_cast<uint32_t>(b));
                            });
    default: fail("ERR_DTYPE", "scatter_add: dtype ", dtype_name(dt), " is not supported");
  }
}

}  // namespace moma::cpu
