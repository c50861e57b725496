// Small helpers shared by the op files moe.cc and nn.cc: typed data pointers and an exact-shape
// check.
#pragma once
#include "../core/error.h"
#include "../core/tensor.h"

namespace moma::ops {

template <typename T>
const T* cdata(const Tensor& t) { return static_cast<const T*>(t.data()); }
template <typename T>
T* mdata(const Tensor& t) { return static_cast<T*>(t.data()); }

inline void check_shape(const char* op, const Tensor& t, const char* arg, const Shape& expected) {
  if (t.shape != expected)
    fail("ERR_SHAPE", op, ": ", arg, " has shape ", shape_str(t.shape), ", expected ", shape_str(expected));
}

}  // namespace moma::ops
