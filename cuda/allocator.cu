// Caching device allocator (runtime.h alloc / release / alloc_stats / empty_cache / reset_peak).
//
// * Sizes are rounded up: to a multiple of 512 B below 1 MiB, to a multiple of 2 MiB from 1 MiB
//   on. A zero-byte request gets a real 512-byte block, so every pointer alloc() returns is unique
//   and release() treats all of them alike.
// * Per device: free lists keyed by rounded size (std::map<size_t, std::vector<void*>>) and a map
//   of live blocks -> size, all under one mutex. alloc() reuses a cached block of exactly the
//   same rounded size, else cudaMalloc's. Reuse is safe without events because every kernel and
//   copy of a device runs on its single stream, so work queued after alloc() is ordered after
//   the work that used the block before it was released.
// * release() only moves the block back to its free list: no CUDA call, so it may run from a GC
//   finalizer on any thread. Releasing nullptr is a no-op; an unknown pointer is reported on stderr (release never throws:
//   it runs in destructors).
// * On cudaMalloc failure alloc() empties the cache (cudaStreamSynchronize, then cudaFree of every
//   cached block) and retries once; then it throws ERR_OOM
//   "cuda:N: out of memory allocating X bytes (allocated A, reserved R)". Each failed cudaMalloc's
//   non-sticky error is consumed, so no later check_launch reports it.
#include <cstdio>
#include <cuda_runtime.h>

#include <map>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "../csrc/core/error.h"
#include "common.cuh"
#include "runtime.h"

namespace moma::cuda {
using detail::throw_cuda;

namespace {

struct Cache {
  std::mutex mu;
  std::map<size_t, std::vector<void*>> free_blocks;
  std::unordered_map<void*, size_t> live;
  AllocStats stats;
};

std::once_flag g_once;
std::vector<std::unique_ptr<Cache>>* g_caches = nullptr;

Cache& cache(int device) {
  std::call_once(g_once, [] {
    g_caches = new std::vector<std::unique_ptr<Cache>>();  // never destroyed (static order)
    int n = device_count();
    for (int i = 0; i < n; ++i) g_caches->push_back(std::make_unique<Cache>());
  });
  if (device < 0 || device >= static_cast<int>(g_caches->size()))
    fail("ERR_DEVICE", "cuda:", device, ": no such CUDA device (", g_caches->size(), " present)");
  return *(*g_caches)[device];
}

constexpr size_t kSmallQuantum = 512;
constexpr size_t kLargeThreshold = size_t(1) << 20;
constexpr size_t kLargeQuantum = size_t(2) << 20;

size_t round_size(size_t bytes) {
  if (bytes == 0) return kSmallQuantum;
  size_t q = bytes < kLargeThreshold ? kSmallQuantum : kLargeQuantum;
  return (bytes + q - 1) / q * q;
}

// Frees every cached block of `c` (c.mu held). Syncs the device's stream first so that no queued
// kernel still uses a block that was released after the kernel was enqueued.
void free_cached_locked(int device, Cache& c) {
  if (c.free_blocks.empty()) return;
  cudaStream_t st = static_cast<cudaStream_t>(stream(device));
  cudaError_t e = cudaStreamSynchronize(st);
  if (e != cudaSuccess) throw_cuda("empty_cache: cudaStreamSynchronize", e);
  for (auto& kv : c.free_blocks) {
    for (void* p : kv.second) {
      e = cudaFree(p);
      if (e != cudaSuccess) throw_cuda("empty_cache: cudaFree", e);
      c.stats.reserved -= kv.first;
    }
  }
  c.free_blocks.clear();
}

}  // namespace

void* alloc(int device, size_t bytes) {
  Cache& c = cache(device);
  size_t size = round_size(bytes);
  std::lock_guard<std::mutex> lock(c.mu);
  c.stats.num_allocs++;
  void* p = nullptr;
  auto it = c.free_blocks.find(size);
  if (it != c.free_blocks.end() && !it->second.empty()) {
    p = it->second.back();
    it->second.pop_back();
    if (it->second.empty()) c.free_blocks.erase(it);
  } else {
    stream(device);  // selects the device on this thread
    cudaError_t e = cudaMalloc(&p, size);
    if (e == cudaErrorMemoryAllocation) {
      detail::clear_last_error();  // the failed cudaMalloc's error is non-sticky: consume it
      free_cached_locked(device, c);
      e = cudaMalloc(&p, size);
      if (e == cudaErrorMemoryAllocation) {
        detail::clear_last_error();
        fail("ERR_OOM", "cuda:", device, ": out of memory allocating ", bytes, " bytes (allocated ",
             c.stats.allocated, ", reserved ", c.stats.reserved, ")");
      }
    }
    if (e != cudaSuccess) throw_cuda("cudaMalloc", e);
    c.stats.reserved += size;
    c.stats.num_cuda_mallocs++;
  }
  c.live.emplace(p, size);
  c.stats.allocated += size;
  if (c.stats.allocated > c.stats.peak_allocated) c.stats.peak_allocated = c.stats.allocated;
  return p;
}

void release(int device, void* ptr) {
  if (!ptr) return;
  Cache& c = cache(device);
  std::lock_guard<std::mutex> lock(c.mu);
  auto it = c.live.find(ptr);
  if (it == c.live.end()) {
    // Called from destructors: report the internal error and keep running rather than throw.
    std::fprintf(stderr, "moma: internal error: cuda:%d release of a pointer that is not a live block\n", device);
    return;
  }
  size_t size = it->second;
  c.live.erase(it);
  c.stats.allocated -= size;
  c.free_blocks[size].push_back(ptr);
}

AllocStats alloc_stats(int device) {
  Cache& c = cache(device);
  std::lock_guard<std::mutex> lock(c.mu);
  return c.stats;
}

void empty_cache(int device) {
  Cache& c = cache(device);
  std::lock_guard<std::mutex> lock(c.mu);
  free_cached_locked(device, c);
}

void reset_peak(int device) {
  Cache& c = cache(device);
  std::lock_guard<std::mutex> lock(c.mu);
  c.stats.peak_allocated = c.stats.allocated;
}

}  // namespace moma::cuda
