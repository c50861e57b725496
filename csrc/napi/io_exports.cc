// Exports: reads and synchronisation. Both return Promises resolved from the device worker through
// a thread-safe function, so the event loop never waits on device work.
#include <cstring>

#include "bridge.h"
#include "ops/ops.h"

namespace moma::napi {
namespace {

using Info = const Napi::CallbackInfo&;
using ErrorPtr = std::shared_ptr<const MomaException>;

Napi::Value typed_array(Napi::Env env, const ops::HostData& data) {
  size_t n = data.bytes.size();
  Napi::ArrayBuffer buf = Napi::ArrayBuffer::New(env, n);
  if (n) std::memcpy(buf.Data(), data.bytes.data(), n);
  switch (data.dtype) {
    case DType::F32: return Napi::Float32Array::New(env, n / 4, buf, 0);
    case DType::I32: return Napi::Int32Array::New(env, n / 4, buf, 0);
    default: return Napi::Uint8Array::New(env, n, buf, 0);
  }
}

// Runs `settle` on the JS thread once the worker calls the returned completion.
template <typename Payload>
std::function<void(Payload, ErrorPtr)> completion(Napi::Env env, const char* name,
                                                 std::function<void(Napi::Env, Napi::Promise::Deferred&, Payload)> settle,
                                                 Napi::Promise::Deferred deferred) {
  auto state = std::make_shared<Napi::Promise::Deferred>(deferred);
  auto tsfn = Napi::ThreadSafeFunction::New(env, Napi::Function::New(env, [](const Napi::CallbackInfo&) {}), name, 0, 1);
  return [tsfn, state, settle](Payload payload, ErrorPtr error) mutable {
    tsfn.BlockingCall([state, settle, payload, error](Napi::Env env, Napi::Function) {
      Napi::HandleScope scope(env);
      if (error) state->Reject(make_error(env, error->code(), error->what()));
      else settle(env, *state, payload);
    });
    tsfn.Release();
  };
}

Napi::Value read(Info info) {
  Tensor t = TensorHandle::unwrap(info[0], "read", "x");
  Napi::Env env = info.Env();
  auto deferred = Napi::Promise::Deferred::New(env);
  using Payload = std::shared_ptr<ops::HostData>;
  auto done = completion<Payload>(
      env, "moma.read",
      [](Napi::Env env, Napi::Promise::Deferred& d, Payload data) { d.Resolve(typed_array(env, *data)); }, deferred);
  ops::read_async(t, [done](Payload data, ErrorPtr error) mutable { done(data, error); });
  return deferred.Promise();
}

Napi::Value synchronize(Info info) {
  Device device = to_device(info[0], "synchronize", "device");
  Napi::Env env = info.Env();
  auto deferred = Napi::Promise::Deferred::New(env);
  auto done = completion<bool>(
      env, "moma.synchronize", [](Napi::Env env, Napi::Promise::Deferred& d, bool) { d.Resolve(env.Undefined()); },
      deferred);
  ops::synchronize_async(device, [done](ErrorPtr error) mutable { done(true, error); });
  return deferred.Promise();
}

}  // namespace

void register_io_exports(Napi::Env env, Napi::Object exports) {
  exports.Set("read", guarded(env, "read", read));
  exports.Set("synchronize", guarded(env, "synchronize", synchronize));
}

}  // namespace moma::napi
