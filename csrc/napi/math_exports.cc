// Exports: element-wise, reductions, indexing and matmul.
#include "bridge.h"
#include "ops/ops.h"

namespace moma::napi {
namespace {

using Info = const Napi::CallbackInfo&;

Napi::Value wrap(Info info, const Tensor& t) { return TensorHandle::wrap(info.Env(), t); }

// unary(op, x, alpha)
Napi::Value unary(Info info) {
  auto op = to_enum<UnaryOp>(info[0], static_cast<int>(UnaryOp::PowScalar), "unary", "op");
  const char* name = ops::op_name(op);
  bool takes_scalar = op == UnaryOp::Scale || op == UnaryOp::AddScalar || op == UnaryOp::PowScalar;
  double alpha = takes_scalar ? to_number(info[2], name, "scalar") : 0.0;
  return wrap(info, ops::unary(op, TensorHandle::unwrap(info[1], name, "x"), alpha));
}

Napi::Value binary(Info info) {
  auto op = to_enum<BinaryOp>(info[0], static_cast<int>(BinaryOp::Minimum), "binary", "op");
  const char* name = ops::op_name(op);
  return wrap(info, ops::binary(op, TensorHandle::unwrap(info[1], name, "a"), TensorHandle::unwrap(info[2], name, "b")));
}

Napi::Value where(Info info) {
  return wrap(info, ops::where(TensorHandle::unwrap(info[0], "where", "cond"), TensorHandle::unwrap(info[1], "where", "a"),
                               TensorHandle::unwrap(info[2], "where", "b")));
}

// reduce(op, x, axis, keepdim)
Napi::Value reduce(Info info) {
  auto op = to_enum<ReduceOp>(info[0], static_cast<int>(ReduceOp::Argmax), "reduce", "op");
  const char* name = ops::op_name(op);
  return wrap(info, ops::reduce(op, TensorHandle::unwrap(info[1], name, "x"), to_int(info[2], name, "axis"),
                                to_bool(info[3], name, "keepdim")));
}

// softmax(x, axis, log)
Napi::Value softmax(Info info) {
  return wrap(info, ops::softmax(TensorHandle::unwrap(info[0], "softmax", "x"), to_int(info[1], "softmax", "axis"),
                                 to_bool(info[2], "softmax", "log")));
}

Napi::Value index_select(Info info) {
  const char* op = "index_select";
  return wrap(info, ops::index_select(TensorHandle::unwrap(info[0], op, "x"), to_int(info[1], op, "axis"),
                                      TensorHandle::unwrap(info[2], op, "index")));
}

Napi::Value scatter_add(Info info) {
  const char* op = "scatter_add";
  return wrap(info, ops::scatter_add(TensorHandle::unwrap(info[0], op, "x"), to_int(info[1], op, "axis"),
                                     TensorHandle::unwrap(info[2], op, "index"), TensorHandle::unwrap(info[3], op, "src")));
}

// matmul(a, b, transA, transB)
Napi::Value matmul(Info info) {
  const char* op = "matmul";
  return wrap(info, ops::matmul(TensorHandle::unwrap(info[0], op, "a"), TensorHandle::unwrap(info[1], op, "b"),
                                to_bool(info[2], op, "transA"), to_bool(info[3], op, "transB")));
}

}  // namespace

void register_math_exports(Napi::Env env, Napi::Object exports) {
  exports.Set("unary", guarded(env, "unary", unary));
  exports.Set("binary", guarded(env, "binary", binary));
  exports.Set("where", guarded(env, "where", where));
  exports.Set("reduce", guarded(env, "reduce", reduce));
  exports.Set("softmax", guarded(env, "softmax", softmax));
  exports.Set("indexSelect", guarded(env, "index_select", index_select));
  exports.Set("scatterAdd", guarded(env, "scatter_add", scatter_add));
  exports.Set("matmul", guarded(env, "matmul", matmul));
}

}  // namespace moma::napi
