// Creation ops: empty, full, arange, seeded random tensors and host data.
#include <cmath>
#include <cstring>
#include <limits>

#include "../core/error.h"
#include "../core/philox.h"
#include "../core/queue.h"
#include "backend.h"
#include "ops.h"

namespace moma::ops {
namespace {

void check_value_fits(const char* op, double value, DType dtype) {
  if (dtype_is_float(dtype)) return;
  double lo = dtype == DType::U8 ? 0.0 : -2147483648.0;
  double hi = dtype == DType::U8 ? 255.0 : 2147483647.0;
  if (!std::isfinite(value) || value != std::floor(value) || value < lo || value > hi)
    fail("ERR_RANGE", op, ": value ", value, " is not representable as ", dtype_name(dtype));
}

}  // namespace

Tensor empty(const Shape& shape, DType dtype, Device device) { return empty_tensor(shape, dtype, device, "empty"); }

Tensor full(const Shape& shape, double value, DType dtype, Device device) {
  check_value_fits("full", value, dtype);
  Tensor out = empty_tensor(shape, dtype, device, "full");
  submit("full", device, {}, {out}, [=] { MOMA_LAUNCH(device, fill, dtype, out.data(), out.numel(), value); });
  return out;
}

Tensor arange(double start, double end, double step, DType dtype, Device device) {
  if (!std::isfinite(start) || !std::isfinite(end) || !std::isfinite(step) || step == 0.0)
    fail("ERR_ARG", "arange: start, end and step must be finite and step nonzero (got ", start, ", ", end, ", ",
         step, ")");
  double count = std::ceil((end - start) / step);
  if (count < 0) count = 0;
  if (count > 1e12) fail("ERR_RANGE", "arange: ", count, " elements is too many");
  int64_t n = static_cast<int64_t>(count);
  if (n > 0) {
    check_value_fits("arange", start, dtype);
    check_value_fits("arange", step, dtype);
    check_value_fits("arange", start + step * static_cast<double>(n - 1), dtype);
  }
  Tensor out = empty_tensor({n}, dtype, device, "arange");
  submit("arange", device, {}, {out}, [=] { MOMA_LAUNCH(device, arange, dtype, out.data(), n, start, step); });
  return out;
}

Tensor random_uniform(const Shape& shape, double low, double high, uint64_t seed, uint64_t offset, DType dtype,
                      Device device) {
  if (!dtype_is_float(dtype)) fail("ERR_DTYPE", "rand: dtype must be float32 or bfloat16, got ", dtype_name(dtype));
  if (!std::isfinite(low) || !std::isfinite(high) || low > high)
    fail("ERR_ARG", "rand: need finite low <= high (got ", low, ", ", high, ")");
  Tensor out = empty_tensor(shape, dtype, device, "rand");
  float lo = static_cast<float>(low), hi = static_cast<float>(high);
  submit("rand", device, {}, {out},
         [=] { MOMA_LAUNCH(device, random_uniform, dtype, out.data(), out.numel(), seed, offset, lo, hi); });
  return out;
}

Tensor random_normal(const Shape& shape, double mean, double std, uint64_t seed, uint64_t offset, DType dtype,
                     Device device) {
  if (!dtype_is_float(dtype)) fail("ERR_DTYPE", "randn: dtype must be float32 or bfloat16, got ", dtype_name(dtype));
  if (!std::isfinite(mean) || !std::isfinite(std) || std < 0)
    fail("ERR_ARG", "randn: need finite mean and std >= 0 (got ", mean, ", ", std, ")");
  Tensor out = empty_tensor(shape, dtype, device, "randn");
  float m = static_cast<float>(mean), s = static_cast<float>(std);
  submit("randn", device, {}, {out},
         [=] { MOMA_LAUNCH(device, random_normal, dtype, out.data(), out.numel(), seed, offset, m, s); });
  return out;
}

Tensor from_host(const void* data, size_t bytes, DType src_dtype, const Shape& shape, DType dtype, Device device) {
  Device cpu{DeviceType::CPU, 0};
  Tensor staged = empty_tensor(shape, src_dtype, cpu, "tensor");
  if (bytes != staged.nbytes())
    fail("ERR_SHAPE", "tensor: ", bytes / dtype_size(src_dtype), " values given for shape ", shape_str(shape),
         " (", staged.numel(), " elements)");
  if (bytes) std::memcpy(staged.data(), data, bytes);
  Tensor on_device = device.is_cuda() ? to_device(staged, device) : staged;
  return dtype == src_dtype ? on_device : astype(on_device, dtype);
}

}  // namespace moma::ops
