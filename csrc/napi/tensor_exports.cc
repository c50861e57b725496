// Exports: tensor creation, transfers and layout.
#include "bridge.h"
#include "ops/ops.h"

namespace moma::napi {
namespace {

using Info = const Napi::CallbackInfo&;

Napi::Value wrap(Info info, const Tensor& t) { return TensorHandle::wrap(info.Env(), t); }
Tensor arg_tensor(Info info, size_t i, const char* op, const char* name) { return TensorHandle::unwrap(info[i], op, name); }

// fromData(data: TypedArray, srcDtype, shape, dtype, device)
Napi::Value from_data(Info info) {
  const char* op = "tensor";
  if (!info[0].IsTypedArray()) fail("ERR_ARG", op, ": data must be a TypedArray");
  Napi::TypedArray arr = info[0].As<Napi::TypedArray>();
  DType src = to_dtype(info[1], op, "source dtype");
  Napi::ArrayBuffer buf = arr.ArrayBuffer();
  const uint8_t* data = static_cast<const uint8_t*>(buf.Data()) + arr.ByteOffset();
  size_t bytes = arr.ByteLength();
  if (bytes % dtype_size(src) != 0) fail("ERR_ARG", op, ": data length does not match its dtype");
  return wrap(info, ops::from_host(data, bytes, src, to_shape(info[2], op, "shape"), to_dtype(info[3], op, "dtype"),
                                   to_device(info[4], op, "device")));
}

Napi::Value empty(Info info) {
  return wrap(info, ops::empty(to_shape(info[0], "empty", "shape"), to_dtype(info[1], "empty", "dtype"),
                               to_device(info[2], "empty", "device")));
}

Napi::Value full(Info info) {
  return wrap(info, ops::full(to_shape(info[0], "full", "shape"), to_number(info[1], "full", "value"),
                              to_dtype(info[2], "full", "dtype"), to_device(info[3], "full", "device")));
}

Napi::Value arange(Info info) {
  const char* op = "arange";
  return wrap(info, ops::arange(to_number(info[0], op, "start"), to_number(info[1], op, "end"),
                                to_number(info[2], op, "step"), to_dtype(info[3], op, "dtype"),
                                to_device(info[4], op, "device")));
}

// randUniform(shape, low, high, seed, offset, dtype, device)
Napi::Value rand_uniform(Info info) {
  const char* op = "rand";
  return wrap(info, ops::random_uniform(to_shape(info[0], op, "shape"), to_number(info[1], op, "low"),
                                        to_number(info[2], op, "high"), to_u64(info[3], op, "seed"),
                                        to_u64(info[4], op, "offset"), to_dtype(info[5], op, "dtype"),
                                        to_device(info[6], op, "device")));
}

Napi::Value rand_normal(Info info) {
  const char* op = "randn";
  return wrap(info, ops::random_normal(to_shape(info[0], op, "shape"), to_number(info[1], op, "mean"),
                                       to_number(info[2], op, "std"), to_u64(info[3], op, "seed"),
                                       to_u64(info[4], op, "offset"), to_dtype(info[5], op, "dtype"),
                                       to_device(info[6], op, "device")));
}

Napi::Value to(Info info) {
  return wrap(info, ops::to_device(arg_tensor(info, 0, "to", "x"), to_device(info[1], "to", "device")));
}

Napi::Value astype(Info info) {
  return wrap(info, ops::astype(arg_tensor(info, 0, "astype", "x"), to_dtype(info[1], "astype", "dtype")));
}

Napi::Value reshape(Info info) {
  return wrap(info, ops::reshape(arg_tensor(info, 0, "reshape", "x"), to_int_list(info[1], "reshape", "shape")));
}

Napi::Value clone(Info info) { return wrap(info, ops::clone(arg_tensor(info, 0, "clone", "x"))); }

Napi::Value permute(Info info) {
  return wrap(info, ops::permute(arg_tensor(info, 0, "permute", "x"), to_int_list(info[1], "permute", "dims")));
}

Napi::Value transpose(Info info) {
  return wrap(info, ops::transpose(arg_tensor(info, 0, "transpose", "x"), to_int(info[1], "transpose", "dim0"),
                                   to_int(info[2], "transpose", "dim1")));
}

Napi::Value slice(Info info) {
  return wrap(info, ops::slice(arg_tensor(info, 0, "slice", "x"), to_int(info[1], "slice", "axis"),
                               to_int(info[2], "slice", "start"), to_int(info[3], "slice", "end")));
}

Napi::Value concat(Info info) {
  return wrap(info, ops::concat(to_tensor_list(info[0], "concat", "tensors"), to_int(info[1], "concat", "axis")));
}

Napi::Value broadcast_to(Info info) {
  return wrap(info, ops::broadcast_to(arg_tensor(info, 0, "broadcast_to", "x"),
                                      to_shape(info[1], "broadcast_to", "shape")));
}

}  // namespace

void register_tensor_exports(Napi::Env env, Napi::Object exports) {
  exports.Set("fromData", guarded(env, "tensor", from_data));
  exports.Set("empty", guarded(env, "empty", empty));
  exports.Set("full", guarded(env, "full", full));
  exports.Set("arange", guarded(env, "arange", arange));
  exports.Set("randUniform", guarded(env, "rand", rand_uniform));
  exports.Set("randNormal", guarded(env, "randn", rand_normal));
  exports.Set("to", guarded(env, "to", to));
  exports.Set("astype", guarded(env, "astype", astype));
  exports.Set("reshape", guarded(env, "reshape", reshape));
  exports.Set("clone", guarded(env, "clone", clone));
  exports.Set("permute", guarded(env, "permute", permute));
  exports.Set("transpose", guarded(env, "transpose", transpose));
  exports.Set("slice", guarded(env, "slice", slice));
  exports.Set("concat", guarded(env, "concat", concat));
  exports.Set("broadcastTo", guarded(env, "broadcast_to", broadcast_to));
}

}  // namespace moma::napi
