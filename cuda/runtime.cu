// CUDA runtime of moma (runtime.h): device queries, one non-blocking stream per device, the
// device error word, host<->device copies and synchronisation.
//
// * device_count() never throws: cudart is linked statically, so on a machine without a driver
//   cudaGetDeviceCount fails (cudaErrorNoDevice / InsufficientDriver) and we report 0.
// * Per-device state (stream, error word, pinned staging pool) is created lazily under a mutex.
// * Error word: one int32 per device in device memory, zeroed (cudaMemsetAsync on the stream)
//   when created. Kernels record the first bad-data code with atomicCAS(word, 0, code);
//   synchronize() reads it back after the stream has drained, clears it and throws ERR_RANGE.
// * copy_h2d staging: copies of up to 8 MiB go through a pool of pinned host buffers: the source
//   is memcpy'd into an idle pinned buffer, cudaMemcpyAsync'd on the stream and an event is
//   recorded; the buffer is reused once its event has completed (cudaEventQuery through
//   detail::event_done, which clears the cudaErrorNotReady of a pending buffer), so the caller
//   may free src at once and the host does not wait for queued kernels. Larger copies (or when
//   the pool already holds 256 MiB of buffers still in flight) use cudaMemcpyAsync from the
//   pageable source followed by cudaStreamSynchronize. Pinned buffers live until process exit.
// * copy_d2h: cudaMemcpyAsync + cudaStreamSynchronize (waits for all earlier work on the stream).
// * Errors: every failing call goes through detail::throw_cuda, which consumes the thread's
//   (non-sticky) last error, and failed queries clear it, so an error is reported once only.
#include <cuda_runtime.h>

#include <cstring>
#include <memory>
#include <mutex>
#include <vector>

#include "../csrc/core/error.h"
#include "common.cuh"
#include "kernels.h"
#include "runtime.h"

namespace moma::cuda {
using detail::throw_cuda;

namespace {

struct StagingBuf {
  void* host = nullptr;
  size_t cap = 0;
  cudaEvent_t done = nullptr;
};

struct DeviceState {
  std::mutex mu;  // guards stream / err creation
  cudaStream_t stream = nullptr;
  int32_t* err = nullptr;
  std::mutex staging_mu;
  std::vector<StagingBuf> staging;
  size_t staging_bytes = 0;
};

constexpr size_t kMaxStagedCopy = size_t(8) << 20;
constexpr size_t kMaxStagingPool = size_t(256) << 20;
constexpr size_t kMinStagingBuf = size_t(64) << 10;

std::once_flag g_once;
int g_count = 0;
std::vector<std::unique_ptr<DeviceState>>* g_devices = nullptr;

void init_devices() {
  std::call_once(g_once, [] {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
      detail::clear_last_error();  // the failed query left its (non-sticky) error behind
      n = 0;
    }
    g_count = n;
    g_devices = new std::vector<std::unique_ptr<DeviceState>>();  // never destroyed (static order)
    for (int i = 0; i < n; ++i) g_devices->push_back(std::make_unique<DeviceState>());
  });
}

DeviceState& state(int device) {
  init_devices();
  if (device < 0 || device >= g_count)
    fail("ERR_DEVICE", "cuda:", device, ": no such CUDA device (", g_count, " present)");
  return *(*g_devices)[device];
}

void set_device(int device) {
  cudaError_t e = cudaSetDevice(device);
  if (e != cudaSuccess) throw_cuda("cudaSetDevice", e);
}

// Requires s.mu held and the device selected.
void ensure_stream(DeviceState& s) {
  if (!s.stream) MOMA_CUDA_CHECK(cudaStreamCreateWithFlags(&s.stream, cudaStreamNonBlocking));
}

}  // namespace

bool compiled() { return true; }

int device_count() {
  try {
    init_devices();
  } catch (...) {
    return 0;
  }
  return g_count;
}

int runtime_version() {
  int v = 0;
  if (cudaRuntimeGetVersion(&v) != cudaSuccess) {
    detail::clear_last_error();
    return 0;
  }
  return v;
}

int driver_version() {
  int v = 0;
  if (cudaDriverGetVersion(&v) != cudaSuccess) {
    detail::clear_last_error();
    return 0;
  }
  return v;
}

DeviceInfo device_info(int device) {
  state(device);
  cudaDeviceProp p;
  MOMA_CUDA_CHECK(cudaGetDeviceProperties(&p, device));
  DeviceInfo info;
  info.name = p.name;
  info.total_memory = p.totalGlobalMem;
  info.cc_major = p.major;
  info.cc_minor = p.minor;
  info.multiprocessors = p.multiProcessorCount;
  return info;
}

void* stream(int device) {
  DeviceState& s = state(device);
  set_device(device);
  std::lock_guard<std::mutex> lock(s.mu);
  ensure_stream(s);
  return s.stream;
}

int32_t* error_word(int device) {
  DeviceState& s = state(device);
  set_device(device);
  std::lock_guard<std::mutex> lock(s.mu);
  if (!s.err) {
    ensure_stream(s);
    int32_t* p = nullptr;
    MOMA_CUDA_CHECK(cudaMalloc(&p, sizeof(int32_t)));
    cudaError_t e = cudaMemsetAsync(p, 0, sizeof(int32_t), s.stream);
    if (e != cudaSuccess) {
      cudaFree(p);  // throw_cuda then clears the last error of both calls
      throw_cuda("cudaMemsetAsync(error word)", e);
    }
    s.err = p;
  }
  return s.err;
}

void copy_h2d(int device, void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  DeviceState& s = state(device);
  cudaStream_t st = static_cast<cudaStream_t>(stream(device));
  if (bytes <= kMaxStagedCopy) {
    std::lock_guard<std::mutex> lock(s.staging_mu);
    StagingBuf* buf = nullptr;
    for (StagingBuf& b : s.staging) {
      if (b.cap < bytes) continue;
      // A buffer still in flight answers cudaErrorNotReady, which event_done consumes: left as
      // the thread's last error, the next check_launch would throw it as "device not ready".
      if (detail::event_done(b.done, "copy_h2d: cudaEventQuery") && (!buf || b.cap < buf->cap))
        buf = &b;  // smallest idle buffer that fits
    }
    if (!buf && s.staging_bytes < kMaxStagingPool) {
      size_t cap = kMinStagingBuf;
      while (cap < bytes) cap <<= 1;
      StagingBuf nb;
      nb.cap = cap;
      MOMA_CUDA_CHECK(cudaMallocHost(&nb.host, cap));
      cudaError_t e = cudaEventCreateWithFlags(&nb.done, cudaEventDisableTiming);
      if (e != cudaSuccess) {
        cudaFreeHost(nb.host);  // throw_cuda then clears the last error of both calls
        throw_cuda("copy_h2d: cudaEventCreateWithFlags", e);
      }
      s.staging.push_back(nb);
      s.staging_bytes += cap;
      buf = &s.staging.back();
    }
    if (buf) {
      std::memcpy(buf->host, src, bytes);
      MOMA_CUDA_CHECK(cudaMemcpyAsync(dst, buf->host, bytes, cudaMemcpyHostToDevice, st));
      MOMA_CUDA_CHECK(cudaEventRecord(buf->done, st));
      return;
    }
  }
  // Large copy (or staging pool exhausted): copy from the pageable source and wait.
  MOMA_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, st));
  MOMA_CUDA_CHECK(cudaStreamSynchronize(st));
}

void copy_d2h(int device, void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  cudaStream_t st = static_cast<cudaStream_t>(stream(device));
  MOMA_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, st));
  MOMA_CUDA_CHECK(cudaStreamSynchronize(st));
}

void copy_d2d(int device, void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  cudaStream_t st = static_cast<cudaStream_t>(stream(device));
  MOMA_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, st));
}

void synchronize(int device, const char* what) {
  if (!what) what = "synchronize";
  cudaStream_t st = static_cast<cudaStream_t>(stream(device));
  cudaError_t e = cudaStreamSynchronize(st);
  if (e != cudaSuccess) throw_cuda(what, e);
  DeviceState& s = state(device);
  int32_t* err;
  {
    std::lock_guard<std::mutex> lock(s.mu);
    err = s.err;
  }
  if (!err) return;  // no kernel has asked for the error word yet
  int32_t code = 0;
  e = cudaMemcpyAsync(&code, err, sizeof(code), cudaMemcpyDeviceToHost, st);
  if (e == cudaSuccess) e = cudaStreamSynchronize(st);
  if (e != cudaSuccess) throw_cuda(what, e);
  if (code == kNoError) return;
  e = cudaMemsetAsync(err, 0, sizeof(int32_t), st);
  if (e == cudaSuccess) e = cudaStreamSynchronize(st);
  if (e != cudaSuccess) throw_cuda(what, e);
  const char* kernel = device_error_op(code);
  if (kernel) fail("ERR_RANGE", kernel, ": ", device_error_message(code), " (reported at ", what, ")");
  fail("ERR_RANGE", what, ": a kernel reported device error code ", code);
}

const char* device_error_op(int32_t code) {
  switch (code) {
    case kIndexSelectRange: return "index_select";
    case kScatterAddRange: return "scatter_add";
    case kMoePartitionRange: return "moe_partition";
    case kMoeRouteOverflow: return "moe_route";
    case kMoeGatherRange: return "moe_gather_rows";
    case kMoeCombineRange: return "moe_combine";
    case kGroupedGemmOffsets: return "grouped_matmul";
    case kRopePosition: return "rope";
    case kAttentionSegment: return "attention";
    case kCrossEntropyTarget: return "cross_entropy";
    case kModSelectCount: return "mod_select";
    default: return nullptr;
  }
}

const char* device_error_message(int32_t code) {
  switch (code) {
    case kMoePartitionRange: return "a modality id was outside [-1, num_modalities)";
    case kMoeRouteOverflow: return "the routing needed more slots than its bound (internal error)";
    case kMoeGatherRange: return "a slot row was outside [-1, rows)";
    case kMoeCombineRange: return "a slot was outside [-1, slots)";
    case kGroupedGemmOffsets: return "segment offsets were not increasing from 0 or exceeded the rows";
    case kRopePosition: return "a position was negative";
    case kAttentionSegment: return "a segment start was neither the row itself nor the previous row's start";
    case kCrossEntropyTarget: return "a target was outside [-1, vocabulary)";
    case kModSelectCount: return "fewer non-padding rows than rows to select";
    default: return "an index was out of range";
  }
}

}  // namespace moma::cuda
