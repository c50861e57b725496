// Scratch: an RAII device buffer from the caching allocator for the temporaries of one op call.
// The constructor takes a block with alloc(device, bytes) (nullptr for 0 bytes); the destructor
// hands it back with release(device, ptr), which never calls CUDA and never throws. Reuse is
// stream-ordered (every kernel runs on the device's single stream), so releasing right after the
// launches that use the buffer is safe, and a launch that throws no longer leaks the block.
#pragma once
#include <cstddef>

#include "runtime.h"

namespace moma::cuda::detail {

class Scratch {
 public:
  Scratch(int device, size_t bytes) : device_(device), ptr_(bytes == 0 ? nullptr : alloc(device, bytes)) {}
  ~Scratch() {
    if (ptr_ != nullptr) release(device_, ptr_);
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;

  void* get() const { return ptr_; }
  template <typename T> T* as() const { return static_cast<T*>(get()); }

 private:
  int device_;
  void* ptr_;
};

}  // namespace moma::cuda::detail
