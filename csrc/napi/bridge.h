// The N-API bridge: argument conversion, tensor handles and error translation. Every exported
// function runs inside `guarded`, which turns MomaException (and any std::exception) into a JS
// MomaError with the same code, so no user input can crash the process, and reports host memory
// changes to V8.
#pragma once
#include <napi.h>

#include <functional>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/tensor.h"

namespace moma::napi {

// ---- per-environment state (addon.cc). The addon is context-aware: the main thread and every
// worker_threads Worker that loads it get their own instance (napi_set_instance_data), freed when
// that environment is torn down, so no JS reference outlives or crosses its environment.
struct AddonData {
  Napi::FunctionReference tensor_handle_class;  // TensorHandle's constructor (handle.cc)
  Napi::FunctionReference error_class;          // MomaError, once setErrorClass ran (errors.cc)
};
AddonData& addon_data(Napi::Env env);

// ---- errors (errors.cc)
void set_error_class(const Napi::Function& ctor);
Napi::Object make_error(Napi::Env env, const std::string& code, const std::string& message);
using Exported = std::function<Napi::Value(const Napi::CallbackInfo&)>;
Napi::Function guarded(Napi::Env env, const char* name, Exported fn);

// ---- tensor handles (handle.cc)
class TensorHandle : public Napi::ObjectWrap<TensorHandle> {
 public:
  static Napi::Function define(Napi::Env env);
  explicit TensorHandle(const Napi::CallbackInfo& info);
  static Napi::Object wrap(Napi::Env env, const Tensor& tensor);
  // The tensor behind argument `arg` of `op`; ERR_ARG if it is not a handle, ERR_DISPOSED if freed.
  static Tensor unwrap(const Napi::Value& value, const char* op, const char* arg);

 private:
  Napi::Value shape(const Napi::CallbackInfo& info);
  Napi::Value dtype(const Napi::CallbackInfo& info);
  Napi::Value device(const Napi::CallbackInfo& info);
  Napi::Value disposed(const Napi::CallbackInfo& info);
  Napi::Value dispose(const Napi::CallbackInfo& info);
  bool alive_ = false;
  Tensor tensor_;
};

// ---- argument conversion (convert.cc)
Shape to_shape(const Napi::Value& v, const char* op, const char* arg);
std::vector<int64_t> to_int_list(const Napi::Value& v, const char* op, const char* arg);
int64_t to_int(const Napi::Value& v, const char* op, const char* arg);
double to_number(const Napi::Value& v, const char* op, const char* arg);
bool to_bool(const Napi::Value& v, const char* op, const char* arg);
DType to_dtype(const Napi::Value& v, const char* op, const char* arg);
Device to_device(const Napi::Value& v, const char* op, const char* arg);
uint64_t to_u64(const Napi::Value& v, const char* op, const char* arg);  // a BigInt or safe integer >= 0
std::vector<Tensor> to_tensor_list(const Napi::Value& v, const char* op, const char* arg);
template <typename E>
E to_enum(const Napi::Value& v, int max_value, const char* op, const char* arg) {
  int64_t i = to_int(v, op, arg);
  if (i < 0 || i > max_value) fail("ERR_ARG", op, ": ", arg, " ", i, " is not a known value");
  return static_cast<E>(i);
}

// ---- export groups (one file each)
void register_tensor_exports(Napi::Env env, Napi::Object exports);
void register_math_exports(Napi::Env env, Napi::Object exports);
void register_io_exports(Napi::Env env, Napi::Object exports);
void register_runtime_exports(Napi::Env env, Napi::Object exports);
void register_moe_exports(Napi::Env env, Napi::Object exports);
void register_nn_exports(Napi::Env env, Napi::Object exports);
void register_dist_exports(Napi::Env env, Napi::Object exports);

}  // namespace moma::napi
