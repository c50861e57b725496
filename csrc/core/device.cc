#include "device.h"

#include <cstdlib>

#include "../../cuda/runtime.h"
#include "error.h"

namespace moma {

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
  if (index >= count)
    fail("ERR_DEVICE", op, ": device '", text, "' is not available (", count, " CUDA device",
         count == 1 ? "" : "s", " visible)");
  return Device{DeviceType::CUDA, index};
}

}  // namespace moma
