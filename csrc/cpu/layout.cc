// strided_copy: materialises a strided view (permute, slice, concat piece, broadcast_to) into a
// contiguous buffer. The output is written in row-major order; the view is first coalesced (size-1
// dims dropped, dims that are contiguous in memory merged, see strided_iter.h), so a contiguous
// view is one memcpy and a slice of rows is one memcpy per row. Innermost runs with stride 0 are a
// fill and other strides a gather loop. Only bits are moved (element size 1, 2 or 4), so every
// dtype is copied exactly.
// Transposes: when the innermost output dim reads the source with a stride other than 0 / 1 and
// some other output dim k reads it with stride 1, the copy goes by 64 x 64 tiles of (k, innermost)
// instead. A tile is gathered along the contiguous source direction into a local buffer (64
// source segments of 64 elements, each read once in full) and then written out as 64 contiguous
// output segments, so neither side walks memory with a large stride inside the L1 working set;
// without the buffer, 64 lines 2^k bytes apart would fall into the same cache sets and thrash.
// 4-byte elements skip the buffer when the CPU has AVX-512 / AVX2 (vmath.h transpose32: 16 x 16
// or 8 x 8 register transposes, whole cache lines in and out), on 256 x 64 tiles.
// Parallelism: parallel_for over output elements, 32768 per chunk at least (over tiles, as many
// as make 32768 elements, for transposes); each chunk starts its walk at its own linear position.
#include <algorithm>
#include <cstring>

#include "kernels.h"
#include "strided_iter.h"
#include "thread_pool.h"
#include "vmath.h"

namespace moma::cpu {
namespace {

constexpr int64_t kTile = 64;         // buffered tiles: kTile x kTile
constexpr int64_t kStripRows = 256;   // register-transpose tiles: output rows ...
constexpr int64_t kStripCols = 64;    // ... x output columns
constexpr int64_t kMinTransposeDim = 16;  // both tile dims at least this long, else the plain walk

// Copies the coalesced view c by tiles when it is a transpose (see the file comment); returns
// false, having done nothing, when it is not.
template <typename T>
bool copy_transposed(const T* x, const detail::Coalesced<1>& c, T* y) {
  const int last = c.ndim - 1;
  const int64_t s = c.strides[0][last];
  if (s == 0 || s == 1) return false;
  int k = -1;
  for (int d = last - 1; d >= 0 && k < 0; --d)
    if (c.strides[0][d] == 1) k = d;
  if (k < 0 || c.shape[k] < kMinTransposeDim || c.shape[last] < kMinTransposeDim) return false;

  // Output (row-major) strides, and the dims other than k and last, which index whole planes.
  int64_t ostride[kMaxDims];
  ostride[last] = 1;
  for (int d = last - 1; d >= 0; --d) ostride[d] = ostride[d + 1] * c.shape[d + 1];
  int outer_dims[kMaxDims];
  int no = 0;
  int64_t planes = 1;
  for (int d = 0; d < last; ++d) {
    if (d == k) continue;
    outer_dims[no++] = d;
    planes *= c.shape[d];
  }
  const int64_t P = c.shape[k], Q = c.shape[last], W = ostride[k];
  // Register transposes need no buffer; their tiles are taller, so that each of the 64 source
  // rows of a tile is read as one 1 KiB sequential run (measured best of 16 x 256 .. 256 x 64).
  const vmath::Kernels* vk = sizeof(T) == 4 ? vmath::vector_kernels() : nullptr;
  const int64_t bp = vk ? kStripRows : kTile, bq = vk ? kStripCols : kTile;
  const int64_t tp = (P + bp - 1) / bp, tq = (Q + bq - 1) / bq;
  const int64_t grain = std::max<int64_t>(1, 32768 / (bp * bq));

  parallel_for(planes * tp * tq, grain, [&](int64_t begin, int64_t end) {
    T buf[kTile * kTile];  // buf[p * kTile + q] = element (p0 + p, q0 + q) of the plane
    for (int64_t u = begin; u < end; ++u) {
      const int64_t q0 = (u % tq) * bq;
      const int64_t p0 = (u / tq % tp) * bp;
      int64_t rest = u / (tq * tp);
      int64_t src = c.offset[0], dst = 0;
      for (int i = no - 1; i >= 0; --i) {
        const int d = outer_dims[i];
        const int64_t idx = rest % c.shape[d];
        rest /= c.shape[d];
        src += idx * c.strides[0][d];
        dst += idx * ostride[d];
      }
      const int64_t np = std::min(bp, P - p0), nq = std::min(bq, Q - q0);
      const T* xs = x + src + p0 + q0 * s;
      if constexpr (sizeof(T) == 4) {
        if (vk) {
          vk->transpose32(xs, s, y + dst + p0 * W + q0, W, nq, np);
          continue;
        }
      }
      for (int64_t q = 0; q < nq; ++q) {
        const T* seg = xs + q * s;  // np contiguous source elements
        for (int64_t p = 0; p < np; ++p) buf[p * kTile + q] = seg[p];
      }
      T* yd = y + dst + p0 * W + q0;
      for (int64_t p = 0; p < np; ++p)
        std::memcpy(yd + p * W, buf + p * kTile, static_cast<size_t>(nq) * sizeof(T));
    }
  });
  return true;
}

}  // namespace

void strided_copy(const LaunchCtx& ctx, DType dt, const void* x, const StridedView& src, void* y, int64_t n) {
  if (n <= 0) return;
  const StridedView* views[1] = {&src};
  const detail::Coalesced<1> c = detail::coalesce<1>(views);
  const int64_t s = c.inner_stride(0);
  detail::dispatch_bits(dt, "strided_copy", [&](auto tag) {
    using T = decltype(tag);
    const T* xp = static_cast<const T*>(x);
    T* yp = static_cast<T*>(y);
    if (copy_transposed(xp, c, yp)) return;
    parallel_for(n, 32768, [&](int64_t begin, int64_t end) {
      detail::for_each_run(c, begin, end, [&](int64_t pos, const int64_t* off, int64_t len) {
        const T* xr = xp + off[0];
        T* yr = yp + pos;
        if (s == 1) {
          std::memcpy(yr, xr, static_cast<size_t>(len) * sizeof(T));
        } else if (s == 0) {
          std::fill(yr, yr + len, *xr);
        } else {
          for (int64_t t = 0; t < len; ++t) yr[t] = xr[t * s];
        }
      });
    });
  });
}

}  // namespace moma::cpu
