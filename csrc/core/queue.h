// The per-device work queue. Ops are validated and their outputs allocated on the caller's thread
// (the JS thread); the computation is queued here and runs in order on one worker thread per
// device: on the CPU it calls the kernels (which use the thread pool), on CUDA it launches them on
// the device's stream. A task that throws poisons the storages of its outputs; a task whose inputs
// are poisoned does not run and passes the poison on. Reads are tasks too, so they see all earlier
// work; their callbacks run on the worker and hand the result back (the bridge uses a
// thread-safe function).
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "tensor.h"

namespace moma {

struct Task {
  std::string op;
  std::vector<std::shared_ptr<Storage>> inputs;
  std::vector<std::shared_ptr<Storage>> outputs;
  std::function<void()> run;
};

// Queues `run` on the device of the first output (or `device` when given). Blocks only when more
// than kMaxPending tasks wait (back-pressure, as a CUDA launch queue does).
void submit(Device device, Task task);

// Convenience: op on `device`, reading `inputs`, writing `outputs`.
void submit(const char* op, Device device, const std::vector<Tensor>& inputs,
            const std::vector<Tensor>& outputs, std::function<void()> run);

// Blocks the calling thread until every task queued so far on `device` has finished.
void drain(Device device);

// Number of worker threads' pending tasks (all devices): for tests and diagnostics.
size_t pending_tasks();

// Host waits. Every request that makes the host wait until `device`'s queue reaches a point -- a
// read back to the host, a synchronize, a drain, a device-to-host copy -- is counted here once,
// when it is made, so the count is exact as soon as the requesting call returns. A training step
// that queues its work without reading anything adds none (runtimeStats(device).hostSyncs).
void count_host_sync(Device device);

struct QueueStats {
  uint64_t host_syncs = 0;  // host waits requested on this device's queue since the process began
  uint64_t submitted = 0;   // tasks queued on this device since the process began
  size_t pending = 0;       // tasks of this device waiting or running now
};

// Statistics of one device's queue (all zero for a device that has queued nothing yet).
QueueStats queue_stats(Device device);

constexpr size_t kMaxPending = 4096;

}  // namespace moma
