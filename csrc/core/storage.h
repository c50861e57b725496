// Storage: one reference-counted device buffer. CPU buffers are 64-byte aligned; CUDA buffers come
// from the caching allocator (cuda/runtime.h), whose release never calls CUDA, so dropping the
// last reference is safe on any thread, from GC finalizers included.
// A storage can be poisoned: an op that failed on the device queue records its error here, and
// every later op or read that touches the storage reports that error (naming the failed op).
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>

#include "device.h"
#include "error.h"

namespace moma {

class Storage {
 public:
  static std::shared_ptr<Storage> allocate(Device device, size_t bytes);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  Device device() const { return device_; }

  void poison(const std::shared_ptr<const MomaException>& error);
  std::shared_ptr<const MomaException> error() const;

 private:
  Storage(Device device, void* data, size_t bytes) : device_(device), data_(data), bytes_(bytes) {}
  Device device_;
  void* data_;
  size_t bytes_;
  mutable std::mutex mutex_;
  std::shared_ptr<const MomaException> error_;
};

// Host-memory accounting for the CPU device (CUDA keeps its own in the caching allocator).
struct CpuMemoryStats {
  size_t allocated = 0;
  size_t peak_allocated = 0;
  size_t num_allocs = 0;
};
CpuMemoryStats cpu_memory_stats();
void cpu_reset_peak();
// Host bytes allocated minus freed since the last call: the N-API bridge reports it to V8.
int64_t take_external_memory_delta();
// Live storages on any device (leak checks).
int64_t live_storage_count();

}  // namespace moma
