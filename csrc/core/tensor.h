// Tensor: a contiguous, row-major view of a Storage with a shape and dtype. Tensors are values
// (copying one shares the storage); ops never write into their inputs, so sharing is safe
// (reshape is a zero-copy view; slicing, permuting and concatenating produce new storage).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "dtype.h"
#include "storage.h"

namespace moma {

using Shape = std::vector<int64_t>;

int64_t shape_numel(const Shape& shape);
std::string shape_str(const Shape& shape);

struct Tensor {
  std::shared_ptr<Storage> storage;
  Shape shape;
  DType dtype = DType::F32;

  int64_t numel() const { return shape_numel(shape); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype); }
  int ndim() const { return static_cast<int>(shape.size()); }
  Device device() const { return storage->device(); }
  void* data() const { return storage->data(); }
  std::string describe() const;  // e.g. "float32[3, 4] on cpu"
};

// A new, uninitialised tensor. Validates the shape (dims >= 0, at most kMaxDims, no overflow).
Tensor empty_tensor(const Shape& shape, DType dtype, Device device, const char* op);

}  // namespace moma
