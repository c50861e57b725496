// Moving tensors between devices and reading them back to the host.
// Cross-device copies keep both queues in order without a host sync on the JS thread: the
// producing queue signals a promise when the source is ready, and the consuming queue's task
// waits for it. Each pair is submitted together, so waits never form a cycle.
// Host waits (core/queue.h count_host_sync) are counted here where they are requested: a read, a
// synchronize, and a CUDA -> CPU copy (which drains the source device's stream).
#include <cstring>
#include <future>

#include "../core/bf16.h"
#include "../core/error.h"
#include "../core/queue.h"
#include "backend.h"
#include "ops.h"

namespace moma::ops {
namespace {

using Signal = std::shared_ptr<std::promise<void>>;

struct SignalGuard {  // sets the promise however the task ends
  Signal signal;
  ~SignalGuard() { signal->set_value(); }
};

Tensor cpu_to_cuda(const Tensor& t, Device device) {
  Tensor out = empty_tensor(t.shape, t.dtype, device, "to");
  auto ready = std::make_shared<std::promise<void>>();
  std::shared_future<void> ready_future = ready->get_future().share();
  // No inputs on the signalling task: it must run (and signal) even when t is poisoned; the CUDA
  // task checks t's poison once the signal says t is final.
  submit("to", t.device(), {}, {}, [ready] { SignalGuard guard{ready}; });
  submit("to", device, {}, {out}, [=] {
    ready_future.wait();
    if (auto err = t.storage->error()) throw *err;
    cuda::copy_h2d(device.index, out.data(), t.data(), t.nbytes());
  });
  return out;
}

Tensor cuda_to_cpu(const Tensor& t) {
  Device cpu{DeviceType::CPU, 0};
  count_host_sync(t.device());  // the copy waits for the CUDA stream (cudaStreamSynchronize)
  Tensor out = empty_tensor(t.shape, t.dtype, cpu, "to");
  auto done = std::make_shared<std::promise<void>>();
  std::shared_future<void> done_future = done->get_future().share();
  submit("to", t.device(), {}, {out}, [=] {
    SignalGuard guard{done};
    if (auto err = t.storage->error()) throw *err;
    cuda::copy_d2h(t.device().index, out.data(), t.data(), t.nbytes());
  });
  submit("to", cpu, {}, {}, [done_future] { done_future.wait(); });
  return out;
}

}  // namespace

Tensor to_device(const Tensor& t, Device device) {
  if (t.device() == device) return t;
  if (!t.device().is_cuda()) return cpu_to_cuda(t, device);
  Tensor host = cuda_to_cpu(t);
  return device.is_cuda() ? cpu_to_cuda(host, device) : host;
}

void read_async(const Tensor& t, ReadCallback done) {
  count_host_sync(t.device());
  Task task;
  task.op = "read";
  task.run = [t, done] {
    std::shared_ptr<const MomaException> error = t.storage->error();
    auto host = std::make_shared<HostData>();
    if (!error) {
      try {
        int64_t n = t.numel();
        host->dtype = t.dtype == DType::BF16 ? DType::F32 : t.dtype;
        host->bytes.resize(static_cast<size_t>(n) * dtype_size(host->dtype));
        const void* src = t.data();
        std::vector<uint8_t> staging;
        if (t.device().is_cuda()) {
          staging.resize(t.nbytes());
          cuda::synchronize(t.device().index, "read");
          cuda::copy_d2h(t.device().index, staging.data(), t.data(), t.nbytes());
          src = staging.data();
        }
        if (t.dtype == DType::BF16) {
          const uint16_t* h = static_cast<const uint16_t*>(src);
          float* f = reinterpret_cast<float*>(host->bytes.data());
          for (int64_t i = 0; i < n; ++i) f[i] = bf16_to_f32(h[i]);
        } else if (!host->bytes.empty()) {
          std::memcpy(host->bytes.data(), src, host->bytes.size());
        }
      } catch (const MomaException& e) {
        error = std::make_shared<const MomaException>(e);
      }
    }
    done(error ? nullptr : host, error);
  };
  submit(t.device(), std::move(task));
}

void synchronize_async(Device device, std::function<void(std::shared_ptr<const MomaException>)> done) {
  count_host_sync(device);
  Task task;
  task.op = "synchronize";
  task.run = [device, done] {
    std::shared_ptr<const MomaException> error;
    if (device.is_cuda()) {
      try {
        cuda::synchronize(device.index, "synchronize");
      } catch (const MomaException& e) {
        error = std::make_shared<const MomaException>(e);
      }
    }
    done(error);
  };
  submit(device, std::move(task));
}

}  // namespace moma::ops
