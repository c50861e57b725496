// Layout ops. All outputs are contiguous; reshape shares storage, the rest copy through one
// strided_copy (a view of the input described by shape, strides and offset).
#include <algorithm>

#include "../core/error.h"
#include "../core/queue.h"
#include "backend.h"
#include "ops.h"

namespace moma::ops {
namespace {

// Queues out = x read through `view` (whose shape is out's shape).
void copy_view(const char* op, const Tensor& x, const StridedView& view, const Tensor& out,
               int64_t out_offset_elems = 0) {
  Device device = x.device();
  submit(op, device, {x}, {out}, [=] {
    char* dst = static_cast<char*>(out.data()) + out_offset_elems * static_cast<int64_t>(dtype_size(x.dtype));
    int64_t n = 1;
    for (int i = 0; i < view.ndim; ++i) n *= view.shape[i];
    MOMA_LAUNCH(device, strided_copy, x.dtype, x.data(), view, dst, n);
  });
}

}  // namespace

Tensor reshape(const Tensor& t, const Shape& shape) {
  Shape resolved = shape;
  int64_t known = 1;
  int infer = -1;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == -1) {
      if (infer >= 0) fail("ERR_SHAPE", "reshape: more than one -1 in ", shape_str(shape));
      infer = static_cast<int>(i);
    } else if (shape[i] < 0) {
      fail("ERR_SHAPE", "reshape: invalid dimension ", shape[i], " in ", shape_str(shape));
    } else {
      known *= shape[i];
    }
  }
  if (infer >= 0) {
    if (known == 0 || t.numel() % known != 0)
      fail("ERR_SHAPE", "reshape: cannot reshape ", shape_str(t.shape), " to ", shape_str(shape));
    resolved[infer] = t.numel() / known;
  }
  if (shape_numel(resolved) != t.numel())
    fail("ERR_SHAPE", "reshape: cannot reshape ", shape_str(t.shape), " (", t.numel(), " elements) to ",
         shape_str(shape));
  if (resolved.size() > static_cast<size_t>(kMaxDims))
    fail("ERR_SHAPE", "reshape: ", shape_str(shape), " has more than ", kMaxDims, " dimensions");
  Tensor out = t;
  out.shape = resolved;
  return out;
}

Tensor astype(const Tensor& t, DType dtype) {
  if (t.dtype == dtype) return t;
  Tensor out = empty_tensor(t.shape, dtype, t.device(), "astype");
  Device device = t.device();
  submit("astype", device, {t}, {out},
         [=] { MOMA_LAUNCH(device, cast, t.dtype, t.data(), dtype, out.data(), t.numel()); });
  return out;
}

Tensor clone(const Tensor& t) {
  Tensor out = empty_tensor(t.shape, t.dtype, t.device(), "clone");
  copy_view("clone", t, contiguous_view(t.shape), out);
  return out;
}

Tensor permute(const Tensor& t, const std::vector<int64_t>& dims) {
  int nd = t.ndim();
  if (static_cast<int>(dims.size()) != nd)
    fail("ERR_SHAPE", "permute: ", dims.size(), " dims given for a tensor of shape ", shape_str(t.shape));
  std::vector<bool> seen(nd, false);
  StridedView own = contiguous_view(t.shape), view;
  view.ndim = nd;
  Shape out_shape(nd);
  for (int i = 0; i < nd; ++i) {
    int64_t d = normalize_axis(dims[i], nd, "permute", "dim");
    if (seen[d]) fail("ERR_ARG", "permute: dim ", d, " appears twice");
    seen[d] = true;
    out_shape[i] = t.shape[d];
    view.shape[i] = t.shape[d];
    view.strides[i] = own.strides[d];
  }
  Tensor out = empty_tensor(out_shape, t.dtype, t.device(), "permute");
  copy_view("permute", t, view, out);
  return out;
}

Tensor transpose(const Tensor& t, int64_t dim0, int64_t dim1) {
  int nd = t.ndim();
  int64_t a = normalize_axis(dim0, nd, "transpose", "dim0"), b = normalize_axis(dim1, nd, "transpose", "dim1");
  std::vector<int64_t> dims(nd);
  for (int i = 0; i < nd; ++i) dims[i] = i;
  std::swap(dims[a], dims[b]);
  return permute(t, dims);
}

Tensor slice(const Tensor& t, int64_t axis, int64_t start, int64_t end) {
  int64_t ax = normalize_axis(axis, t.ndim(), "slice", "axis");
  int64_t size = t.shape[ax];
  if (start < 0) start += size;
  if (end < 0) end += size;
  if (start < 0 || end > size || start > end)
    fail("ERR_RANGE", "slice: range [", start, ", ", end, ") is outside axis ", ax, " of size ", size, " (shape ",
         shape_str(t.shape), ")");
  Shape out_shape = t.shape;
  out_shape[ax] = end - start;
  StridedView view = contiguous_view(t.shape);
  view.shape[ax] = end - start;
  view.offset = start * view.strides[ax];
  Tensor out = empty_tensor(out_shape, t.dtype, t.device(), "slice");
  copy_view("slice", t, view, out);
  return out;
}

Tensor concat(const std::vector<Tensor>& tensors, int64_t axis) {
  if (tensors.empty()) fail("ERR_ARG", "concat: needs at least one tensor");
  const Tensor& first = tensors[0];
  int64_t ax = normalize_axis(axis, first.ndim(), "concat", "axis");
  Shape out_shape = first.shape;
  out_shape[ax] = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const Tensor& t = tensors[i];
    if (t.device() != first.device())
      fail("ERR_DEVICE", "concat: tensor ", i, " is on ", t.device().str(), ", tensor 0 on ", first.device().str());
    if (t.dtype != first.dtype)
      fail("ERR_DTYPE", "concat: tensor ", i, " is ", dtype_name(t.dtype), ", tensor 0 is ", dtype_name(first.dtype));
    bool same = t.ndim() == first.ndim();
    for (int d = 0; same && d < first.ndim(); ++d) same = d == ax || t.shape[d] == first.shape[d];
    if (!same)
      fail("ERR_SHAPE", "concat: tensor ", i, " has shape ", shape_str(t.shape), ", incompatible with ",
           shape_str(first.shape), " along axis ", ax);
    out_shape[ax] += t.shape[ax];
  }
  Tensor out = empty_tensor(out_shape, first.dtype, first.device(), "concat");
  // Out is [outer, total * inner] rows; piece i fills columns [at * inner, (at + len) * inner) of
  // every row: one pitched 2-D copy per piece.
  int64_t outer = 1, inner = 1;
  for (int d = 0; d < ax; ++d) outer *= out_shape[d];
  for (int d = static_cast<int>(ax) + 1; d < first.ndim(); ++d) inner *= out_shape[d];
  const int64_t esize = static_cast<int64_t>(dtype_size(first.dtype));
  const int64_t out_pitch = out_shape[ax] * inner * esize;
  int64_t at = 0;
  for (const Tensor& t : tensors) {
    const int64_t len = t.shape[ax];
    if (len > 0 && outer > 0 && inner > 0) {
      Device device = t.device();
      const int64_t piece_pitch = len * inner * esize, col_bytes = at * inner * esize;
      submit("concat", device, {t}, {out}, [=] {
        char* dst = static_cast<char*>(out.data()) + col_bytes;
        MOMA_LAUNCH(device, copy_2d, t.data(), piece_pitch, dst, out_pitch, outer, piece_pitch);
      });
    }
    at += len;
  }
  return out;
}

Tensor broadcast_to(const Tensor& t, const Shape& shape) {
  StridedView view = broadcast_view(t, shape, "broadcast_to");
  Tensor out = empty_tensor(shape, t.dtype, t.device(), "broadcast_to");
  copy_view("broadcast_to", t, view, out);
  return out;
}

}  // namespace moma::ops
