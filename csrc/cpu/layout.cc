// strided_copy: materialises a strided view (permute, slice, concat piece, broadcast_to) into a
// contiguous buffer. The output is written in row-major order; the view is first coalesced (size-1
// dims dropped, dims that are contiguous in memory merged, see strided_iter.h), so a contiguous
// view is one memcpy and a slice of rows is one memcpy per row. Innermost runs with stride 0 are a
// fill and other strides a gather loop. Only bits are moved (element size 1, 2 or 4), so every
// dtype is copied exactly.
// Parallelism: parallel_for over output elements, 32768 per chunk at least; each chunk starts its
// walk at its own linear position.
#include <algorithm>
#include <cstring>

#include "kernels.h"
#include "strided_iter.h"
#include "thread_pool.h"

namespace moma::cpu {

void strided_copy(DType dt, const void* x, const StridedView& src, void* y, int64_t n) {
  if (n <= 0) return;
  const StridedView* views[1] = {&src};
  const detail::Coalesced<1> c = detail::coalesce<1>(views);
  const int64_t s = c.inner_stride(0);
  detail::dispatch_bits(dt, "strided_copy", [&](auto tag) {
    using T = decltype(tag);
    const T* xp = static_cast<const T*>(x);
    T* yp = static_cast<T*>(y);
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
