// CUDA runtime of moma: devices, one stream per device, the caching allocator, host<->device
// copies and error reporting. Compiled from cuda/*.cu when the toolkit is present; otherwise
// cuda/absent.cc provides the same functions for a build without CUDA (device_count() == 0,
// everything else throws ERR_DEVICE). cudart is linked statically: on a machine without a driver
// or GPU, device_count() returns 0 and nothing throws.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "../csrc/core/launch.h"

namespace moma::cuda {

bool compiled();             // true when built with the CUDA toolkit
int device_count();          // 0 when no driver / no GPU / not compiled; never throws
int runtime_version();       // e.g. 13000; 0 when not compiled
int driver_version();        // 0 when no driver

struct DeviceInfo {
  std::string name;
  size_t total_memory = 0;
  int cc_major = 0, cc_minor = 0;
  int multiprocessors = 0;
};
DeviceInfo device_info(int device);

// Selects `device` on the calling thread and returns its stream (created on first use).
void* stream(int device);

// Caching allocator. alloc() reuses a cached block of the same rounded size or calls cudaMalloc
// (on failure it frees the cache and retries once, then throws ERR_OOM). release() only returns
// the block to the cache: it never calls CUDA, so it is safe from GC finalizers and any thread.
// Reuse is stream-ordered: every kernel runs on the device's single stream.
void* alloc(int device, size_t bytes);
void release(int device, void* ptr);
struct AllocStats {
  size_t allocated = 0;       // bytes in live blocks (rounded sizes)
  size_t reserved = 0;        // bytes obtained from cudaMalloc and not yet returned
  size_t peak_allocated = 0;  // high-water mark of `allocated`
  size_t num_allocs = 0;      // alloc() calls
  size_t num_cuda_mallocs = 0;
};
AllocStats alloc_stats(int device);
void empty_cache(int device);  // cudaFree of every cached block (after synchronising the stream)
void reset_peak(int device);

// Copies, ordered on the device's stream. h2d copies from `src` before returning (staging as
// needed), so the caller may free src at once. d2h waits for all earlier work on the stream.
void copy_h2d(int device, void* dst, const void* src, size_t bytes);
void copy_d2h(int device, void* dst, const void* src, size_t bytes);
void copy_d2d(int device, void* dst, const void* src, size_t bytes);

// Device error word for data-dependent kernel errors (kernels.h DeviceErrorCode).
int32_t* error_word(int device);

// The launch context of a kernel on `device` (core/launch.h): its stream and error word.
inline LaunchCtx launch_ctx(int device) { return LaunchCtx{stream(device), error_word(device)}; }

// Waits for the stream; throws MomaException(ERR_CUDA) for an asynchronous CUDA error and
// ERR_RANGE for a nonzero error word (then clears it), naming `what`.
void synchronize(int device, const char* what);

}  // namespace moma::cuda
