// Devices: "cpu" and "cuda:N". Parsing and printing live here; what a device can do lives in
// its backend (csrc/cpu, cuda/). The CUDA probe (what the runtime, the driver and each GPU say)
// lives here too, because parse_device refuses a CUDA device moma cannot run on and says why.
#pragma once
#include <cstddef>
#include <string>
#include <vector>

namespace moma {

enum class DeviceType : int { CPU = 0, CUDA = 1 };

struct Device {
  DeviceType type = DeviceType::CPU;
  int index = 0;
  bool is_cuda() const { return type == DeviceType::CUDA; }
  bool operator==(const Device& o) const { return type == o.type && index == o.index; }
  bool operator!=(const Device& o) const { return !(*this == o); }
  std::string str() const { return is_cuda() ? "cuda:" + std::to_string(index) : "cpu"; }
};

// The oldest GPUs moma's CUDA kernels run on: compute capability 8.0 (sm_80, Ampere). The
// kernels use bf16 tensor-core MMA, cp.async and ldmatrix, which sm_75 and older lack.
constexpr int kMinComputeCapabilityMajor = 8;

struct CudaProbeDevice {
  std::string name;
  size_t total_memory = 0;
  int cc_major = 0, cc_minor = 0;
  int multiprocessors = 0;
};

// What this machine's CUDA stack says, gathered without throwing: the runtime compiled in
// (cudaRuntimeGetVersion, e.g. 13000; 0 without CUDA), the CUDA version the driver supports
// (cudaDriverGetVersion; 0 = no driver), cudaGetDeviceCount's error when it failed (name and
// text, empty otherwise), every device the runtime lists, usable or not, and the architectures the
// kernels were compiled for (CMake's CUDA_ARCHITECTURES with ',' between entries, e.g.
// "80-real,86-real,89-real,90", when the build defines MOMA_CUDA_ARCHITECTURES; empty: unknown).
struct CudaProbe {
  bool compiled = false;
  int runtime_version = 0;
  int driver_version = 0;
  std::string architectures;
  std::string device_count_error_name;
  std::string device_count_error_message;
  std::vector<CudaProbeDevice> devices;
};
CudaProbe probe_cuda();

// "cpu", "cuda", "cuda:N". Throws ERR_DEVICE for anything else, for a build without CUDA, for a
// CUDA device that is not present (saying why none is: no driver, a driver older than the
// runtime, cudaGetDeviceCount's error) and for a GPU older than sm_80 (naming its capability).
Device parse_device(const std::string& text, const char* op);

}  // namespace moma
