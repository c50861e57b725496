// The CUDA runtime (runtime.h) for a build without the CUDA toolkit: compiled() is false,
// device_count() 0, the versions 0, and every other runtime function throws
// MomaException("ERR_DEVICE", "cuda <function>: moma was built without CUDA"). release() of
// nullptr is a no-op so that generic cleanup paths never throw. No kernel has a stand-in: such a
// build never references a CUDA kernel (MOMA_LAUNCH compiles the CPU call alone, the native
// test's CUDA cases and the CUDA benchmarks are compiled only with MOMA_WITH_CUDA), so a new
// kernel needs nothing here.
#include "../csrc/core/error.h"
#include "kernels.h"
#include "runtime.h"

namespace moma::cuda {

namespace {
[[noreturn]] void absent(const char* fn) {
  throw MomaException("ERR_DEVICE", std::string("cuda ") + fn + ": moma was built without CUDA");
}
}  // namespace

bool compiled() { return false; }
int device_count() { return 0; }
int runtime_version() { return 0; }
int driver_version() { return 0; }
DeviceInfo device_info(int) { absent("device_info"); }
void* stream(int) { absent("stream"); }
void* alloc(int, size_t) { absent("alloc"); }
void release(int, void* ptr) {
  if (ptr) absent("release");
}
AllocStats alloc_stats(int) { absent("alloc_stats"); }
void empty_cache(int) { absent("empty_cache"); }
void reset_peak(int) { absent("reset_peak"); }
void copy_h2d(int, void*, const void*, size_t) { absent("copy_h2d"); }
void copy_d2h(int, void*, const void*, size_t) { absent("copy_d2h"); }
void copy_d2d(int, void*, const void*, size_t) { absent("copy_d2d"); }
int32_t* error_word(int) { absent("error_word"); }
void synchronize(int, const char*) { absent("synchronize"); }

const char* device_error_op(int32_t) { return nullptr; }
const char* device_error_message(int32_t) { return "moma was built without CUDA"; }

}  // namespace moma::cuda
