// JS value -> native argument conversion. Every mismatch is an ERR_ARG (or ERR_DTYPE /
// ERR_DEVICE / ERR_SHAPE) naming the op and the argument.
#include <cmath>

#include "bridge.h"
#include "core/kernel_types.h"

namespace moma::napi {

double to_number(const Napi::Value& v, const char* op, const char* arg) {
  if (!v.IsNumber()) fail("ERR_ARG", op, ": ", arg, " must be a number");
  return v.As<Napi::Number>().DoubleValue();
}

int64_t to_int(const Napi::Value& v, const char* op, const char* arg) {
  double d = to_number(v, op, arg);
  if (!std::isfinite(d) || d != std::floor(d) || std::fabs(d) > 9007199254740991.0)
    fail("ERR_ARG", op, ": ", arg, " must be an integer (got ", d, ")");
  return static_cast<int64_t>(d);
}

bool to_bool(const Napi::Value& v, const char* op, const char* arg) {
  if (!v.IsBoolean()) fail("ERR_ARG", op, ": ", arg, " must be a boolean");
  return v.As<Napi::Boolean>().Value();
}

uint64_t to_u64(const Napi::Value& v, const char* op, const char* arg) {
  if (v.IsBigInt()) {
    bool lossless = false;
    uint64_t u = v.As<Napi::BigInt>().Uint64Value(&lossless);
    if (!lossless) fail("ERR_ARG", op, ": ", arg, " must fit in 64 unsigned bits");
    return u;
  }
  int64_t i = to_int(v, op, arg);
  if (i < 0) fail("ERR_ARG", op, ": ", arg, " must be >= 0");
  return static_cast<uint64_t>(i);
}

std::vector<int64_t> to_int_list(const Napi::Value& v, const char* op, const char* arg) {
  if (!v.IsArray()) fail("ERR_ARG", op, ": ", arg, " must be an array of integers");
  Napi::Array arr = v.As<Napi::Array>();
  if (arr.Length() > 64) fail("ERR_ARG", op, ": ", arg, " is too long (", arr.Length(), " entries)");
  std::vector<int64_t> out(arr.Length());
  for (uint32_t i = 0; i < arr.Length(); ++i) out[i] = to_int(arr.Get(i), op, arg);
  return out;
}

Shape to_shape(const Napi::Value& v, const char* op, const char* arg) {
  Shape s = to_int_list(v, op, arg);
  if (s.size() > static_cast<size_t>(kMaxDims))
    fail("ERR_SHAPE", op, ": ", arg, " ", shape_str(s), " has more than ", kMaxDims, " dimensions");
  for (int64_t d : s)
    if (d < 0) fail("ERR_SHAPE", op, ": ", arg, " ", shape_str(s), " has a negative dimension");
  return s;
}

DType to_dtype(const Napi::Value& v, const char* op, const char* arg) {
  if (!v.IsNumber()) fail("ERR_DTYPE", op, ": ", arg, " must be a dtype");
  int64_t i = to_int(v, op, arg);
  if (i < 0 || i > static_cast<int>(DType::U8)) fail("ERR_DTYPE", op, ": ", arg, " ", i, " is not a dtype");
  return static_cast<DType>(i);
}

Device to_device(const Napi::Value& v, const char* op, const char* arg) {
  if (!v.IsString()) fail("ERR_DEVICE", op, ": ", arg, " must be a device string ('cpu', 'cuda:0')");
  return parse_device(v.As<Napi::String>().Utf8Value(), op);
}

std::vector<Tensor> to_tensor_list(const Napi::Value& v, const char* op, const char* arg) {
  if (!v.IsArray()) fail("ERR_ARG", op, ": ", arg, " must be an array of tensors");
  Napi::Array arr = v.As<Napi::Array>();
  std::vector<Tensor> out;
  for (uint32_t i = 0; i < arr.Length(); ++i) out.push_back(TensorHandle::unwrap(arr.Get(i), op, arg));
  return out;
}

}  // namespace moma::napi
