// Validation and view helpers shared by the op files.
#include <algorithm>

#include "../core/error.h"
#include "ops.h"

namespace moma::ops {

int64_t normalize_axis(int64_t axis, int ndim, const char* op, const char* arg) {
  if (axis < -ndim || axis >= ndim)
    fail("ERR_RANGE", op, ": ", arg, " ", axis, " is out of range for a tensor with ", ndim, " dims");
  return axis < 0 ? axis + ndim : axis;
}

void check_same_device(const char* op, const Tensor& a, const char* an, const Tensor& b, const char* bn) {
  if (a.device() != b.device())
    fail("ERR_DEVICE", op, ": ", an, " is on ", a.device().str(), " but ", bn, " is on ", b.device().str());
}

void check_dtype(const char* op, const Tensor& t, const char* arg, std::initializer_list<DType> allowed) {
  for (DType d : allowed)
    if (t.dtype == d) return;
  std::string names;
  for (DType d : allowed) names += std::string(names.empty() ? "" : ", ") + dtype_name(d);
  fail("ERR_DTYPE", op, ": ", arg, " has dtype ", dtype_name(t.dtype), " (expected ", names, ")");
}

StridedView contiguous_view(const Shape& shape) {
  StridedView v;
  v.ndim = static_cast<int32_t>(shape.size());
  int64_t stride = 1;
  for (int i = v.ndim - 1; i >= 0; --i) {
    v.shape[i] = shape[i];
    v.strides[i] = stride;
    stride *= shape[i];
  }
  return v;
}

Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op) {
  size_t n = std::max(a.size(), b.size());
  Shape out(n);
  for (size_t i = 0; i < n; ++i) {
    int64_t da = i < n - a.size() ? 1 : a[i - (n - a.size())];
    int64_t db = i < n - b.size() ? 1 : b[i - (n - b.size())];
    if (da != db && da != 1 && db != 1)
      fail("ERR_SHAPE", op, ": shapes ", shape_str(a), " and ", shape_str(b), " cannot be broadcast");
    out[i] = da == 1 ? db : da;
  }
  return out;
}

StridedView broadcast_view(const Tensor& t, const Shape& out, const char* op) {
  if (t.shape.size() > out.size())
    fail("ERR_SHAPE", op, ": shape ", shape_str(t.shape), " cannot be broadcast to ", shape_str(out));
  StridedView own = contiguous_view(t.shape);
  StridedView v;
  v.ndim = static_cast<int32_t>(out.size());
  size_t lead = out.size() - t.shape.size();
  for (size_t i = 0; i < out.size(); ++i) {
    v.shape[i] = out[i];
    if (i < lead) {
      v.strides[i] = 0;
      continue;
    }
    int64_t d = t.shape[i - lead];
    if (d != out[i] && d != 1)
      fail("ERR_SHAPE", op, ": shape ", shape_str(t.shape), " cannot be broadcast to ", shape_str(out));
    v.strides[i] = d == 1 ? 0 : own.strides[i - lead];
  }
  return v;
}

}  // namespace moma::ops
