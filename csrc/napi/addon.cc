// Module entry: registers the tensor handle class and every export group.
#include "bridge.h"

namespace moma::napi {

// abiVersion, the enum tables and the host-side formulas (constants_exports.cc).
void register_constants_exports(Napi::Env env, Napi::Object exports);

AddonData& addon_data(Napi::Env env) {
  AddonData* data = env.GetInstanceData<AddonData>();
  if (data == nullptr) throw MomaException("ERR_INTERNAL", "moma: the addon's per-environment data is missing");
  return *data;
}

Napi::Object init(Napi::Env env, Napi::Object exports) {
  env.SetInstanceData(new AddonData());
  exports.Set("TensorHandle", TensorHandle::define(env));
  register_tensor_exports(env, exports);
  register_math_exports(env, exports);
  register_io_exports(env, exports);
  register_runtime_exports(env, exports);
  register_moe_exports(env, exports);
  register_nn_exports(env, exports);
  register_dist_exports(env, exports);
  register_constants_exports(env, exports);
  return exports;
}

}  // namespace moma::napi

static Napi::Object InitMoma(Napi::Env env, Napi::Object exports) { return moma::napi::init(env, exports); }

NODE_API_MODULE(moma, InitMoma)
