#include "device.h"

#include <cstdlib>
#include <sstream>

#include "../../cuda/runtime.h"
#include "error.h"

#if defined(MOMA_WITH_CUDA)
#include <cuda_runtime_api.h>
#endif

namespace moma {

namespace {

// "13.0" for 13000.
std::string cuda_version_text(int version) {
  return std::to_string(version / 1000) + "." + std::to_string((version % 1000) / 10);
}

// The oldest driver branch that supports CUDA `major` (NVIDIA's CUDA toolkit release notes).
std::string driver_branch_for(int major) {
  if (major >= 13) return "R580";
  if (major == 12) return "R525";
  if (major == 11) return "R450";
  return "R418";
}

// Why no CUDA device can be used although CUDA is compiled in (lib/cuda_probe.ts says the same,
// adding the kernel driver's version from /proc).
std::string no_device_reason(const CudaProbe& p) {
  std::ostringstream os;
  const int needed_major = p.runtime_version / 1000;
  if (p.driver_version == 0) {
    os << "no NVIDIA driver (the CUDA driver library libcuda.so.1 could not be loaded)";
  } else if (p.driver_version / 1000 < needed_major) {
    os << "the NVIDIA driver supports CUDA " << cuda_version_text(p.driver_version) << ", but moma's CUDA "
       << cuda_version_text(p.runtime_version) << " runtime needs a driver for CUDA " << needed_major
       << ".0 or newer (" << driver_branch_for(needed_major) << "+): update the NVIDIA driver to "
       << driver_branch_for(needed_major).substr(1) << " or newer";
  } else if (!p.device_count_error_name.empty()) {
    os << "cudaGetDeviceCount failed: " << p.device_count_error_name << " (" << p.device_count_error_message << ")";
  } else {
    os << "no CUDA device visible";
  }
  return os.str();
}

// Compute capability majors of the devices, read once (parse_device runs for every op).
const std::vector<int>& capability_majors() {
  static const std::vector<int> majors = [] {
    std::vector<int> out;
    for (const CudaProbeDevice& d : probe_cuda().devices) out.push_back(d.cc_major);
    return out;
  }();
  return majors;
}

}  // namespace

CudaProbe probe_cuda() {
  CudaProbe p;
  p.compiled = cuda::compiled();
  p.runtime_version = cuda::runtime_version();
  p.driver_version = cuda::driver_version();
#if defined(MOMA_WITH_CUDA)
#if defined(MOMA_CUDA_ARCHITECTURES)
  p.architectures = MOMA_CUDA_ARCHITECTURES;
#endif
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();  // the failed query leaves its (non-sticky) error behind
    p.device_count_error_name = cudaGetErrorName(err);
    p.device_count_error_message = cudaGetErrorString(err);
  }
#endif
  int count_listed = cuda::device_count();
  for (int i = 0; i < count_listed; ++i) {
    cuda::DeviceInfo info = cuda::device_info(i);
    p.devices.push_back(CudaProbeDevice{info.name, info.total_memory, info.cc_major, info.cc_minor, info.multiprocessors});
  }
  return p;
}

Device parse_device(const std::string& text, const char* op) {
  if (text == "cpu") return Device{DeviceType::CPU, 0};
  int index = -1;
  if (text == "cuda") {
    index = 0;
  } else if (text.rfind("cuda:", 0) == 0 && text.size() > 5 && text.size() < 9) {
    char* end = nullptr;
    long v = std::strtol(text.c_str() + 5, &end, 10);
    if (*end == '\0' && v >= 0) index = static_cast<int>(v);
  }
  if (index < 0) fail("ERR_DEVICE", op, ": unknown device '", text, "' (expected 'cpu', 'cuda' or 'cuda:N')");
  if (!cuda::compiled()) fail("ERR_DEVICE", op, ": device '", text, "' requested but moma was built without CUDA");
  int count = cuda::device_count();
  if (count == 0) fail("ERR_DEVICE", op, ": device '", text, "' is not available: ", no_device_reason(probe_cuda()));
  if (index >= count)
    fail("ERR_DEVICE", op, ": device '", text, "' is not available (", count, " CUDA device",
         count == 1 ? "" : "s", " visible)");
  if (capability_majors()[index] < kMinComputeCapabilityMajor) {
    CudaProbeDevice d = probe_cuda().devices[index];
    fail("ERR_DEVICE", op, ": device '", text, "' cannot be used: ", d.name, " has compute capability ", d.cc_major, ".",
         d.cc_minor, " (sm_", d.cc_major, d.cc_minor, "); moma's CUDA kernels need compute capability ",
         kMinComputeCapabilityMajor, ".0 or newer (sm_80+: Ampere, Ada Lovelace, Hopper and later)");
  }
  return Device{DeviceType::CUDA, index};
}

}  // namespace moma
