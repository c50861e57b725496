// Exports: what was compiled and what the machine has (for `moma inspect` and the CUDA usability
// check of lib/cuda_probe.ts: versions, cudaGetDeviceCount's error, every listed GPU), memory statistics,
// queue statistics (host waits per device), and the MomaError class registration.
#include "../../cuda/runtime.h"
#include "bridge.h"
#include "core/device.h"
#include "core/queue.h"
#include "core/storage.h"
#include "cpu/cpu_features.h"
#include "cpu/kernels.h"
#include "cpu/thread_pool.h"

namespace moma::napi {
namespace {

using Info = const Napi::CallbackInfo&;

std::string simd_level() {
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) {
    std::string s = "avx512";
    if (__builtin_cpu_supports("avx512bf16")) s += "+bf16";
    return s;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "avx2";
  return "sse2";
#elif defined(__aarch64__)
  return "neon";
#else
  return "generic";
#endif
}

Napi::Value info(Info info) {
  Napi::Env env = info.Env();
  Napi::Object out = Napi::Object::New(env);
  Napi::Object cuda_info = Napi::Object::New(env);
  CudaProbe probe = probe_cuda();
  cuda_info.Set("compiled", probe.compiled);
  cuda_info.Set("runtimeVersion", probe.runtime_version);
  cuda_info.Set("driverVersion", probe.driver_version);
  cuda_info.Set("architectures", probe.architectures);
  if (probe.device_count_error_name.empty()) {
    cuda_info.Set("deviceCountError", env.Null());
  } else {
    Napi::Object error = Napi::Object::New(env);
    error.Set("name", probe.device_count_error_name);
    error.Set("message", probe.device_count_error_message);
    cuda_info.Set("deviceCountError", error);
  }
  Napi::Array devices = Napi::Array::New(env, probe.devices.size());
  for (size_t i = 0; i < probe.devices.size(); ++i) {
    const CudaProbeDevice& d = probe.devices[i];
    Napi::Object o = Napi::Object::New(env);
    o.Set("index", static_cast<double>(i));
    o.Set("name", d.name);
    o.Set("totalMemory", static_cast<double>(d.total_memory));
    o.Set("computeCapability", std::to_string(d.cc_major) + "." + std::to_string(d.cc_minor));
    o.Set("multiprocessors", d.multiprocessors);
    devices.Set(static_cast<uint32_t>(i), o);
  }
  cuda_info.Set("devices", devices);
  out.Set("cuda", cuda_info);
  Napi::Object cpu_info = Napi::Object::New(env);
  cpu_info.Set("threads", cpu::num_threads());
  cpu_info.Set("simd", simd_level());
  cpu_info.Set("gemm", cpu::gemm_isa());
  cpu_info.Set("gemmBf16", cpu::gemm_bf16_isa());
  out.Set("cpu", cpu_info);
  return out;
}

Napi::Value memory_stats(Info info) {
  Device device = to_device(info[0], "memoryStats", "device");
  Napi::Env env = info.Env();
  Napi::Object out = Napi::Object::New(env);
  if (device.is_cuda()) {
    cuda::AllocStats s = cuda::alloc_stats(device.index);
    out.Set("allocated", static_cast<double>(s.allocated));
    out.Set("reserved", static_cast<double>(s.reserved));
    out.Set("peakAllocated", static_cast<double>(s.peak_allocated));
    out.Set("numAllocs", static_cast<double>(s.num_allocs));
    out.Set("numDeviceMallocs", static_cast<double>(s.num_cuda_mallocs));
  } else {
    CpuMemoryStats s = cpu_memory_stats();
    out.Set("allocated", static_cast<double>(s.allocated));
    out.Set("reserved", static_cast<double>(s.allocated));
    out.Set("peakAllocated", static_cast<double>(s.peak_allocated));
    out.Set("numAllocs", static_cast<double>(s.num_allocs));
    out.Set("numDeviceMallocs", static_cast<double>(s.num_allocs));
  }
  out.Set("liveStorages", static_cast<double>(live_storage_count()));
  out.Set("pendingTasks", static_cast<double>(pending_tasks()));
  return out;
}

Napi::Value runtime_stats(Info info) {
  Device device = to_device(info[0], "runtimeStats", "device");
  QueueStats s = queue_stats(device);
  Napi::Object out = Napi::Object::New(info.Env());
  out.Set("hostSyncs", static_cast<double>(s.host_syncs));
  out.Set("tasksSubmitted", static_cast<double>(s.submitted));
  out.Set("pendingTasks", static_cast<double>(s.pending));
  return out;
}

Napi::Value reset_peak(Info info) {
  Device device = to_device(info[0], "resetPeakMemory", "device");
  if (device.is_cuda()) cuda::reset_peak(device.index);
  else cpu_reset_peak();
  return info.Env().Undefined();
}

Napi::Value empty_cache(Info info) {
  Device device = to_device(info[0], "emptyCache", "device");
  if (device.is_cuda()) {
    drain(device);
    cuda::empty_cache(device.index);
  }
  return info.Env().Undefined();
}

Napi::Value set_error_class_export(Info info) {
  if (!info[0].IsFunction()) fail("ERR_ARG", "setErrorClass: expected a constructor");
  set_error_class(info[0].As<Napi::Function>());
  return info.Env().Undefined();
}

}  // namespace

void register_runtime_exports(Napi::Env env, Napi::Object exports) {
  exports.Set("info", guarded(env, "info", info));
  exports.Set("memoryStats", guarded(env, "memoryStats", memory_stats));
  exports.Set("runtimeStats", guarded(env, "runtimeStats", runtime_stats));
  exports.Set("resetPeakMemory", guarded(env, "resetPeakMemory", reset_peak));
  exports.Set("emptyCache", guarded(env, "emptyCache", empty_cache));
  exports.Set("setErrorClass", guarded(env, "setErrorClass", set_error_class_export));
}

}  // namespace moma::napi
