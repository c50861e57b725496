// Gather (index_select) and deterministic scatter-add along one axis; indices are int32 and are
// range-checked by the kernels (data-dependent: errors surface at the next read).
#include "../core/error.h"
#include "../core/queue.h"
#include "backend.h"
#include "ops.h"

namespace moma::ops {
namespace {

void check_index(const char* op, const Tensor& x, const Tensor& index) {
  check_same_device(op, x, "x", index, "index");
  check_dtype(op, index, "index", {DType::I32});
  if (index.ndim() != 1) fail("ERR_SHAPE", op, ": index must be 1-D, got shape ", shape_str(index.shape));
  if (x.ndim() == 0) fail("ERR_SHAPE", op, ": x is a scalar (0 dims)");
}

}  // namespace

Tensor index_select(const Tensor& x, int64_t axis, const Tensor& index) {
  check_index("index_select", x, index);
  int64_t ax = normalize_axis(axis, x.ndim(), "index_select", "axis");
  int64_t outer = 1, inner = 1, n = x.shape[ax], k = index.numel();
  for (int64_t d = 0; d < ax; ++d) outer *= x.shape[d];
  for (int d = static_cast<int>(ax) + 1; d < x.ndim(); ++d) inner *= x.shape[d];
  Shape out_shape = x.shape;
  out_shape[ax] = k;
  Tensor out = empty_tensor(out_shape, x.dtype, x.device(), "index_select");
  if (k == 0) return out;
  Device device = x.device();
  const int32_t* idx = static_cast<const int32_t*>(index.data());
  submit("index_select", device, {x, index}, {out}, [=] {
    MOMA_LAUNCH(device, index_select, x.dtype, x.data(), idx, out.data(), outer, n, k, inner);
  });
  return out;
}

Tensor scatter_add(const Tensor& x, int64_t axis, const Tensor& index, const Tensor& src) {
  check_index("scatter_add", x, index);
  check_same_device("scatter_add", x, "x", src, "src");
  int64_t ax = normalize_axis(axis, x.ndim(), "scatter_add", "axis");
  check_dtype("scatter_add", x, "x", {DType::F32, DType::BF16, DType::I32});
  if (src.dtype != x.dtype)
    fail("ERR_DTYPE", "scatter_add: src is ", dtype_name(src.dtype), " but x is ", dtype_name(x.dtype));
  int64_t k = index.numel();
  Shape expected = x.shape;
  expected[ax] = k;
  if (src.shape != expected)
    fail("ERR_SHAPE", "scatter_add: src has shape ", shape_str(src.shape), ", expected ", shape_str(expected),
         " (x ", shape_str(x.shape), " with axis ", ax, " of index length ", k, ")");
  int64_t outer = 1, inner = 1, n = x.shape[ax];
  for (int64_t d = 0; d < ax; ++d) outer *= x.shape[d];
  for (int d = static_cast<int>(ax) + 1; d < x.ndim(); ++d) inner *= x.shape[d];
  Tensor out = clone(x);
  if (k == 0) return out;
  Device device = x.device();
  const int32_t* idx = static_cast<const int32_t*>(index.data());
  submit("scatter_add", device, {src, index, out}, {out}, [=] {
    MOMA_LAUNCH(device, scatter_add, x.dtype, src.data(), idx, out.data(), outer, k, n, inner);
  });
  return out;
}

}  // namespace moma::ops
