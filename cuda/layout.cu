// strided_copy: y (contiguous, n elements) = x read through a StridedView (permute, slice,
// broadcast_to, contiguous copies); copy_2d: pitched row copies (concat) by cudaMemcpy2DAsync.
//
// Mapping: one thread per output element (grid-stride); the view is collapsed on the host
// (size-1 dims dropped, mergeable dims merged, common.cuh) so a contiguous or
// inner-contiguous source costs few div/mods. Writes are coalesced; reads are coalesced when the
// innermost collapsed stride is 1. Data is moved by element size (no conversion), so all four
// dtypes share three instantiations. Bytes: n * 2 * element size.
#include <cuda_runtime.h>

#include "common.cuh"
#include "kernels.h"

namespace moma::cuda {
using namespace detail;

namespace {

template <typename W, typename Idx>
__global__ void strided_copy_kernel(const W* x, StridedView v, W* y, Idx n) {
  for (Idx i = static_cast<Idx>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<Idx>(gridDim.x) * blockDim.x)
    y[i] = x[view_offset(v, i)];
}

template <typename W>
void launch(cudaStream_t s, const void* x, const StridedView& v, void* y, int64_t n) {
  if (n < INT32_MAX)
    strided_copy_kernel<W, uint32_t><<<grid_for(n), kThreads, 0, s>>>(static_cast<const W*>(x), v, static_cast<W*>(y),
                                                                    static_cast<uint32_t>(n));
  else
    strided_copy_kernel<W, int64_t><<<grid_for(n), kThreads, 0, s>>>(static_cast<const W*>(x), v, static_cast<W*>(y), n);
}

}  // namespace

void strided_copy(const LaunchCtx& ctx, DType dt, const void* x, const StridedView& src, void* y, int64_t n) {
  if (n <= 0) return;
  cudaStream_t s = as_stream(ctx.stream);
  StridedView v = collapse(src);
  switch (dtype_size(dt)) {
    case 4: launch<uint32_t>(s, x, v, y, n); break;
    case 2: launch<uint16_t>(s, x, v, y, n); break;
    case 1: launch<uint8_t>(s, x, v, y, n); break;
    default: bad_dtype("strided_copy", dt);
  }
  check_launch("strided_copy");
}

void copy_2d(const LaunchCtx& ctx, const void* x, int64_t x_pitch, void* y, int64_t y_pitch, int64_t rows,
             int64_t row_bytes) {
  if (rows <= 0 || row_bytes <= 0) return;
  MOMA_CUDA_CHECK(cudaMemcpy2DAsync(y, static_cast<size_t>(y_pitch), x, static_cast<size_t>(x_pitch),
                                    static_cast<size_t>(row_bytes), static_cast<size_t>(rows),
                                    cudaMemcpyDeviceToDevice, as_stream(ctx.stream)));
}

}  // namespace moma::cuda
