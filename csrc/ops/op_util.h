// Small helpers shared by the op files that launch kernels directly (moe.cc, nn.cc): the
// device's stream and error word, typed data pointers, and an exact-shape check.
#pragma once
#include "../../cuda/runtime.h"
#include "../core/error.h"
#include "../core/tensor.h"

namespace moma::ops {

inline void* stream_of(Device d) { return cuda::stream(d.index); }
inline int32_t* err_of(Device d) { return cuda::error_word(d.index); }

template <typename T>
const T* cdata(const Tensor& t) { return static_cast<const T*>(t.data()); }
template <typename T>
T* mdata(const Tensor& t) { return static_cast<T*>(t.data()); }

inline void check_shape(const char* op, const Tensor& t, const char* arg, const Shape& expected) {
  if (t.shape != expected)
    fail("ERR_SHAPE", op, ": ", arg, " has shape ", shape_str(t.shape), ", expected ", shape_str(expected));
}

}  // namespace moma::ops
