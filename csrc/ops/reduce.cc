// Reductions and softmax along one axis: the tensor is seen as [outer, n, inner].
#include "../core/error.h"
#include "../core/queue.h"
#include "backend.h"
#include "ops.h"

namespace moma::ops {
namespace {

struct AxisSplit {
  int64_t outer = 1, n = 1, inner = 1;
};

AxisSplit split_at(const Shape& shape, int64_t axis) {
  AxisSplit s;
  for (int64_t d = 0; d < axis; ++d) s.outer *= shape[d];
  s.n = shape[axis];
  for (size_t d = axis + 1; d < shape.size(); ++d) s.inner *= shape[d];
  return s;
}

}  // namespace

const char* op_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum: return "sum";
    case ReduceOp::Mean: return "mean";
    case ReduceOp::Max: return "max";
    case ReduceOp::Argmax: return "argmax";
  }
  return "reduce";
}

Tensor reduce(ReduceOp op, const Tensor& x, int64_t axis, bool keepdim) {
  if (static_cast<int>(op) < 0 || static_cast<int>(op) > static_cast<int>(ReduceOp::Argmax))
    fail("ERR_ARG", "reduce: unknown op ", static_cast<int>(op));
  const char* name = op_name(op);
  if (x.ndim() == 0) fail("ERR_SHAPE", name, ": x is a scalar (0 dims); reshape it to [1] first");
  int64_t ax = normalize_axis(axis, x.ndim(), name, "axis");
  if (op == ReduceOp::Mean) check_dtype(name, x, "x", {DType::F32, DType::BF16});
  else check_dtype(name, x, "x", {DType::F32, DType::BF16, DType::I32});
  AxisSplit s = split_at(x.shape, ax);
  if (s.n == 0 && (op == ReduceOp::Max || op == ReduceOp::Argmax || op == ReduceOp::Mean))
    fail("ERR_SHAPE", name, ": axis ", ax, " of shape ", shape_str(x.shape), " is empty");
  Shape out_shape = x.shape;
  if (keepdim) out_shape[ax] = 1;
  else out_shape.erase(out_shape.begin() + ax);
  DType out_dtype = op == ReduceOp::Argmax ? DType::I32 : x.dtype;
  Tensor out = empty_tensor(out_shape, out_dtype, x.device(), name);
  Device device = x.device();
  if (s.n == 0) {  // sum over an empty axis
    submit(name, device, {x}, {out}, [=] { MOMA_LAUNCH(device, fill, out_dtype, out.data(), out.numel(), 0.0); });
    return out;
  }
  submit(name, device, {x}, {out},
         [=] { MOMA_LAUNCH(device, reduce, op, x.dtype, x.data(), out.data(), s.outer, s.n, s.inner); });
  return out;
}

Tensor softmax(const Tensor& x, int64_t axis, bool log) {
  const char* name = log ? "log_softmax" : "softmax";
  if (x.ndim() == 0) fail("ERR_SHAPE", name, ": x is a scalar (0 dims)");
  int64_t ax = normalize_axis(axis, x.ndim(), name, "axis");
  check_dtype(name, x, "x", {DType::F32, DType::BF16});
  AxisSplit s = split_at(x.shape, ax);
  Tensor out = empty_tensor(x.shape, x.dtype, x.device(), name);
  Device device = x.device();
  if (out.numel() == 0) return out;
  submit(name, device, {x}, {out},
         [=] { MOMA_LAUNCH(device, softmax, log, x.dtype, x.data(), out.data(), s.outer, s.n, s.inner); });
  return out;
}

}  // namespace moma::ops
