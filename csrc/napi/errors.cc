#include "core/storage.h"
#include "bridge.h"

namespace moma::napi {

void set_error_class(const Napi::Function& ctor) {
  addon_data(ctor.Env()).error_class.Reset(ctor, 1);
}

Napi::Object make_error(Napi::Env env, const std::string& code, const std::string& message) {
  AddonData* data = env.GetInstanceData<AddonData>();
  if (data != nullptr && !data->error_class.IsEmpty()) {
    return data->error_class.Value().New({Napi::String::New(env, code), Napi::String::New(env, message)});
  }
  Napi::Error err = Napi::Error::New(env, message);
  err.Set("code", Napi::String::New(env, code));
  return err.Value();
}

Napi::Function guarded(Napi::Env env, const char* name, Exported fn) {
  std::string op = name;
  return Napi::Function::New(env, [fn, op](const Napi::CallbackInfo& info) -> Napi::Value {
    Napi::Env env = info.Env();
    std::string code, message;
    try {
      Napi::Value result = fn(info);
      int64_t delta = take_external_memory_delta();
      if (delta) Napi::MemoryManagement::AdjustExternalMemory(env, delta);
      return result;
    } catch (const Napi::Error&) {
      throw;
    } catch (const MomaException& e) {
      code = e.code();
      message = e.what();
    } catch (const std::bad_alloc&) {
      code = "ERR_OOM";
      message = op + ": out of host memory";
    } catch (const std::exception& e) {
      code = "ERR_INTERNAL";
      message = op + ": " + e.what();
    }
    throw Napi::Error(env, make_error(env, code, message));
  }, name);
}

}  // namespace moma::napi
