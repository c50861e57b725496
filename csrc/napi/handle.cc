// TensorHandle: the JS object that owns one reference to a native tensor. dispose() drops it at
// once; otherwise the GC finalizer drops it (dropping a reference never calls CUDA).
#include "bridge.h"

namespace moma::napi {

Napi::Function TensorHandle::define(Napi::Env env) {
  Napi::Function ctor = DefineClass(env, "TensorHandle",
                                    {InstanceAccessor<&TensorHandle::shape>("shape"),
                                     InstanceAccessor<&TensorHandle::dtype>("dtype"),
                                     InstanceAccessor<&TensorHandle::device>("device"),
                                     InstanceAccessor<&TensorHandle::disposed>("disposed"),
                                     InstanceMethod<&TensorHandle::dispose>("dispose")});
  addon_data(env).tensor_handle_class.Reset(ctor, 1);
  return ctor;
}

TensorHandle::TensorHandle(const Napi::CallbackInfo& info) : Napi::ObjectWrap<TensorHandle>(info) {}

Napi::Object TensorHandle::wrap(Napi::Env env, const Tensor& tensor) {
  Napi::Object obj = addon_data(env).tensor_handle_class.New({});
  TensorHandle* h = Unwrap(obj);
  h->tensor_ = tensor;
  h->alive_ = true;
  return obj;
}

Tensor TensorHandle::unwrap(const Napi::Value& value, const char* op, const char* arg) {
  if (!value.IsObject() || !value.As<Napi::Object>().InstanceOf(addon_data(value.Env()).tensor_handle_class.Value()))
    fail("ERR_ARG", op, ": ", arg, " is not a tensor");
  void* raw = nullptr;
  if (napi_unwrap(value.Env(), value, &raw) != napi_ok || raw == nullptr)
    fail("ERR_ARG", op, ": ", arg, " is not a tensor (an object without a native tensor)");
  TensorHandle* h = static_cast<TensorHandle*>(raw);
  if (!h->alive_) fail("ERR_DISPOSED", op, ": ", arg, " was disposed");
  return h->tensor_;
}

Napi::Value TensorHandle::shape(const Napi::CallbackInfo& info) {
  Napi::Array arr = Napi::Array::New(info.Env(), tensor_.shape.size());
  for (size_t i = 0; i < tensor_.shape.size(); ++i)
    arr.Set(static_cast<uint32_t>(i), Napi::Number::New(info.Env(), static_cast<double>(tensor_.shape[i])));
  return arr;
}

Napi::Value TensorHandle::dtype(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<int>(tensor_.dtype));
}

Napi::Value TensorHandle::device(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), alive_ ? tensor_.device().str() : "disposed");
}

Napi::Value TensorHandle::disposed(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), !alive_); }

Napi::Value TensorHandle::dispose(const Napi::CallbackInfo& info) {
  if (alive_) {
    alive_ = false;
    tensor_.storage.reset();
  }
  return info.Env().Undefined();
}

}  // namespace moma::napi
