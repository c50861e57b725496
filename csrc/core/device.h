// Devices: "cpu" and "cuda:N". Parsing and printing live here; what a device can do lives in
// its backend (csrc/cpu, cuda/).
#pragma once
#include <string>

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

// "cpu", "cuda", "cuda:N". Throws ERR_DEVICE for anything else, or for a CUDA device that is not
// present (naming how many there are and whether CUDA was compiled).
Device parse_device(const std::string& text, const char* op);

}  // namespace moma
