#include "tensor.h"

#include <sstream>

#include "error.h"
#include "kernel_types.h"

namespace moma {

int64_t shape_numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string shape_str(const Shape& shape) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  os << "]";
  return os.str();
}

std::string Tensor::describe() const {
  return std::string(dtype_name(dtype)) + shape_str(shape) + " on " + device().str();
}

Tensor empty_tensor(const Shape& shape, DType dtype, Device device, const char* op) {
  if (shape.size() > static_cast<size_t>(kMaxDims))
    fail("ERR_SHAPE", op, ": shape ", shape_str(shape), " has more than ", kMaxDims, " dimensions");
  const int64_t limit = int64_t(1) << 40;  // elements
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) fail("ERR_SHAPE", op, ": shape ", shape_str(shape), " has a negative dimension");
    if (d > 0 && n > limit / d) fail("ERR_RANGE", op, ": shape ", shape_str(shape), " is too large");
    n *= d;
  }
  Tensor t;
  try {
    t.storage = Storage::allocate(device, static_cast<size_t>(n) * dtype_size(dtype));
  } catch (const MomaException& e) {
    throw MomaException(e.code(), std::string(op) + ": " + e.what() + " for shape " + shape_str(shape));
  }
  t.shape = shape;
  t.dtype = dtype;
  return t;
}

}  // namespace moma
