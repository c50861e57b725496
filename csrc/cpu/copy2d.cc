// copy_2d: pitched row copies (memcpy per row), rows split over the thread pool. Bytes moved:
// 2 * rows * row_bytes.
#include <cstring>

#include "kernels.h"
#include "thread_pool.h"

namespace moma::cpu {

void copy_2d(const LaunchCtx& ctx, const void* x, int64_t x_pitch, void* y, int64_t y_pitch, int64_t rows,
             int64_t row_bytes) {
  if (rows <= 0 || row_bytes <= 0) return;
  const char* src = static_cast<const char*>(x);
  char* dst = static_cast<char*>(y);
  int64_t grain = row_bytes >= (1 << 16) ? 1 : (1 << 16) / row_bytes + 1;
  parallel_for(rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) std::memcpy(dst + r * y_pitch, src + r * x_pitch, static_cast<size_t>(row_bytes));
  });
}

}  // namespace moma::cpu
