// The NCCL backend of the Communicator (CUDA buffers of one device). NCCL is not linked: libnccl.so.2
// is dlopened on first use from the loader's default path and LD_LIBRARY_PATH, then from the
// nvidia/nccl/lib folder of an installed `nvidia-nccl-cu*` Python wheel (where PyTorch users have
// it). The few types and functions used are declared here (NCCL's ABI, stable since 2.x); no NCCL
// header is needed to build.
//
// The unique id travels from the group's rank 0 to the others through the rendezvous store (key
// "<prefix>nccl/unique_id": the world's, or a sub-group's under its own prefix). Every collective
// is enqueued on the device's stream (cuda::stream), the stream every kernel of the device runs
// on, so it is ordered with the kernels around it and the calling worker does not wait for it.
// Started collectives (start_*) run on a side stream of the communicator instead, behind an event
// of the device's stream, and their wait() makes the device's stream wait for the side stream's
// event: the gradient all-reduce then overlaps the rest of the backward.
// bf16 sums and averages are widened to float32 on the stream (cuda::cast into a scratch block of
// the caching allocator), reduced by NCCL in float32 and rounded once, like the gloo backend. Avg
// is NCCL's ncclAvg. Data movements (all-gather, all-to-all-v, broadcast) go as bytes.
//
// Without MOMA_WITH_CUDA the backend is absent: make_nccl_communicator throws ERR_DEVICE.
#include "../core/error.h"
#include "backends.h"

#if MOMA_WITH_CUDA
#include <dlfcn.h>

#include <cstdlib>
#include <glob.h>
#include <mutex>
#include <sstream>
#include <vector>

#include <cuda_runtime_api.h>

#include "../../cuda/kernels.h"
#include "../../cuda/runtime.h"
#endif

namespace moma::dist {

#if MOMA_WITH_CUDA
namespace {

// ---- NCCL's C interface (nccl.h), the parts used here ------------------------------------------
struct NcclComm;
using ncclComm_t = NcclComm*;
struct ncclUniqueId {
  char internal[128];
};
using ncclResult_t = int;  // ncclSuccess = 0
constexpr ncclResult_t ncclSuccess = 0;
using ncclDataType_t = int;
constexpr ncclDataType_t ncclUint8 = 1, ncclInt32 = 2, ncclFloat32 = 7;
using ncclRedOp_t = int;
constexpr ncclRedOp_t ncclSum = 0, ncclMax = 2, ncclAvg = 4;

struct NcclApi {
  ncclResult_t (*GetUniqueId)(ncclUniqueId*);
  ncclResult_t (*CommInitRank)(ncclComm_t*, int, ncclUniqueId, int);
  ncclResult_t (*CommDestroy)(ncclComm_t);
  ncclResult_t (*CommAbort)(ncclComm_t);
  const char* (*GetErrorString)(ncclResult_t);
  ncclResult_t (*AllReduce)(const void*, void*, size_t, ncclDataType_t, ncclRedOp_t, ncclComm_t, cudaStream_t);
  ncclResult_t (*ReduceScatter)(const void*, void*, size_t, ncclDataType_t, ncclRedOp_t, ncclComm_t, cudaStream_t);
  ncclResult_t (*AllGather)(const void*, void*, size_t, ncclDataType_t, ncclComm_t, cudaStream_t);
  ncclResult_t (*Broadcast)(const void*, void*, size_t, ncclDataType_t, int, ncclComm_t, cudaStream_t);
  ncclResult_t (*Send)(const void*, size_t, ncclDataType_t, int, ncclComm_t, cudaStream_t);
  ncclResult_t (*Recv)(void*, size_t, ncclDataType_t, int, ncclComm_t, cudaStream_t);
  ncclResult_t (*GroupStart)();
  ncclResult_t (*GroupEnd)();
};

// Folders where a pip-installed NCCL may live: <site>/nvidia/nccl/lib for every site-packages /
// dist-packages folder of the system, /usr/local, the user, a virtual environment and PYTHONPATH.
std::vector<std::string> wheel_folders() {
  std::vector<std::string> patterns = {"/usr/lib/python3*/dist-packages", "/usr/lib/python3*/site-packages",
                                       "/usr/local/lib/python3*/dist-packages", "/usr/local/lib/python3*/site-packages"};
  if (const char* home = std::getenv("HOME")) patterns.push_back(std::string(home) + "/.local/lib/python3*/site-packages");
  if (const char* venv = std::getenv("VIRTUAL_ENV")) patterns.push_back(std::string(venv) + "/lib/python3*/site-packages");
  if (const char* conda = std::getenv("CONDA_PREFIX")) patterns.push_back(std::string(conda) + "/lib/python3*/site-packages");
  std::vector<std::string> sites;
  for (const auto& p : patterns) {
    glob_t g{};
    if (glob(p.c_str(), 0, nullptr, &g) == 0)
      for (size_t i = 0; i < g.gl_pathc; ++i) sites.push_back(g.gl_pathv[i]);
    globfree(&g);
  }
  if (const char* pp = std::getenv("PYTHONPATH")) {
    std::stringstream ss(pp);
    std::string item;
    while (std::getline(ss, item, ':'))
      if (!item.empty()) sites.push_back(item);
  }
  std::vector<std::string> folders;
  for (const auto& s : sites) folders.push_back(s + "/nvidia/nccl/lib");
  return folders;
}

template <typename Fn>
void resolve(void* handle, const char* name, Fn& fn) {
  fn = reinterpret_cast<Fn>(dlsym(handle, name));
  if (!fn) fail("ERR_LOAD", "libnccl.so.2 lacks ", name, ": NCCL 2.7 or newer is needed (pip install nvidia-nccl-cu12)");
}

const NcclApi& nccl_api() {
  static std::mutex mutex;
  static NcclApi api;
  static bool loaded = false;
  std::lock_guard<std::mutex> lock(mutex);
  if (loaded) return api;
  void* handle = dlopen("libnccl.so.2", RTLD_NOW | RTLD_LOCAL);
  std::string searched = "the loader's path and LD_LIBRARY_PATH";
  for (const auto& folder : wheel_folders()) {
    if (handle) break;
    handle = dlopen((folder + "/libnccl.so.2").c_str(), RTLD_NOW | RTLD_LOCAL);
    searched += ", " + folder;
  }
  if (!handle)
    fail("ERR_LOAD", "collectives on CUDA tensors (backend 'nccl') need NCCL, and libnccl.so.2 was not found (searched ",
         searched, "). Install it: pip install nvidia-nccl-cu12 (or apt-get install libnccl2), or add its folder to "
         "LD_LIBRARY_PATH");
  resolve(handle, "ncclGetUniqueId", api.GetUniqueId);
  resolve(handle, "ncclCommInitRank", api.CommInitRank);
  resolve(handle, "ncclCommDestroy", api.CommDestroy);
  resolve(handle, "ncclCommAbort", api.CommAbort);
  resolve(handle, "ncclGetErrorString", api.GetErrorString);
  resolve(handle, "ncclAllReduce", api.AllReduce);
  resolve(handle, "ncclReduceScatter", api.ReduceScatter);
  resolve(handle, "ncclAllGather", api.AllGather);
  resolve(handle, "ncclBroadcast", api.Broadcast);
  resolve(handle, "ncclSend", api.Send);
  resolve(handle, "ncclRecv", api.Recv);
  resolve(handle, "ncclGroupStart", api.GroupStart);
  resolve(handle, "ncclGroupEnd", api.GroupEnd);
  loaded = true;  // NCCL stays loaded for the life of the process
  return api;
}

void cuda_check(cudaError_t rc, const char* what) {
  if (rc != cudaSuccess) fail("ERR_DIST", what, ": CUDA error: ", cudaGetErrorString(rc));
}

// A collective started on the side stream: wait() makes the device's stream wait for its event,
// then hands the bf16 scratch block (if any) back to the caching allocator, whose reuse is ordered
// on the device's stream, now after the collective.
class NcclPending : public PendingCollective {
 public:
  NcclPending(int device, cudaEvent_t done, void* scratch) : device_(device), done_(done), scratch_(scratch) {}
  ~NcclPending() override {
    if (done_) {  // never waited: keep the scratch block out of reuse until the collective is over
      cudaEventSynchronize(done_);
      cudaEventDestroy(done_);
      if (scratch_) cuda::release(device_, scratch_);
    }
  }
  void wait() override {
    cudaStream_t compute = static_cast<cudaStream_t>(cuda::stream(device_));
    cudaError_t rc = cudaStreamWaitEvent(compute, done_, 0);
    cudaEventDestroy(done_);
    done_ = nullptr;
    if (scratch_) cuda::release(device_, scratch_);
    scratch_ = nullptr;
    cuda_check(rc, "dist wait");
  }

 private:
  int device_;
  cudaEvent_t done_;
  void* scratch_;
};

class NcclCommunicator : public Communicator {
 public:
  NcclCommunicator(const NcclApi& api, ncclComm_t comm, int rank, int size, Device device)
      : api_(api), comm_(comm), rank_(rank), size_(size), device_(device) {
    barrier_word_ = cuda::alloc(device_.index, sizeof(int32_t));
    cuda::stream(device_.index);  // selects the device
    cuda_check(cudaStreamCreateWithFlags(&side_, cudaStreamNonBlocking), "dist_init: the communication stream");
  }
  ~NcclCommunicator() override {
    cudaStreamSynchronize(side_);
    cudaStreamDestroy(side_);
    cuda::release(device_.index, barrier_word_);
    // A communicator that reported an error may have peers that will never answer: abort it
    // rather than wait in ncclCommDestroy.
    if (failed_) api_.CommAbort(comm_);
    else api_.CommDestroy(comm_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  Backend backend() const override { return Backend::Nccl; }
  Device device() const override { return device_; }

  void all_reduce(const void* in, void* out, size_t count, DType dtype, ReduceOp op) override {
    reduce("all_reduce", in, out, count, count, dtype, op, stream(), nullptr);
  }
  void reduce_scatter(const void* in, void* out, size_t count, DType dtype, ReduceOp op) override {
    reduce("reduce_scatter", in, out, count * static_cast<size_t>(size_), count, dtype, op, stream(), nullptr);
  }
  std::shared_ptr<PendingCollective> start_all_reduce(const void* in, void* out, size_t count, DType dtype,
                                                      ReduceOp op) override {
    return start([&](void** scratch) { reduce("all_reduce", in, out, count, count, dtype, op, side_, scratch); });
  }
  std::shared_ptr<PendingCollective> start_reduce_scatter(const void* in, void* out, size_t count, DType dtype,
                                                          ReduceOp op) override {
    return start([&](void** scratch) {
      reduce("reduce_scatter", in, out, count * static_cast<size_t>(size_), count, dtype, op, side_, scratch);
    });
  }
  void all_gather(const void* in, void* out, size_t count, DType dtype) override {
    if (count == 0) return;
    check("all_gather", api_.AllGather(in, out, count * dtype_size(dtype), ncclUint8, comm_, stream()));
  }
  void all_to_all_v(const void* in, const int64_t* send_counts, const int64_t* send_offsets, void* out,
                    const int64_t* recv_counts, const int64_t* recv_offsets, DType dtype) override {
    const size_t es = dtype_size(dtype);
    cudaStream_t s = stream();
    const auto* src = static_cast<const char*>(in);
    auto* dst = static_cast<char*>(out);
    check("all_to_all_v", api_.GroupStart());
    for (int p = 0; p < size_; ++p) {
      if (send_counts[p])
        check("all_to_all_v", api_.Send(src + send_offsets[p] * es, send_counts[p] * es, ncclUint8, p, comm_, s));
      if (recv_counts[p])
        check("all_to_all_v", api_.Recv(dst + recv_offsets[p] * es, recv_counts[p] * es, ncclUint8, p, comm_, s));
    }
    check("all_to_all_v", api_.GroupEnd());
  }
  void broadcast(const void* in, void* out, size_t count, DType dtype, int root) override {
    if (count == 0) return;
    check("broadcast", api_.Broadcast(in, out, count * dtype_size(dtype), ncclUint8, root, comm_, stream()));
  }
  void barrier() override {
    check("barrier", api_.AllReduce(barrier_word_, barrier_word_, 1, ncclInt32, ncclSum, comm_, stream()));
  }

 private:
  cudaStream_t stream() { return static_cast<cudaStream_t>(cuda::stream(device_.index)); }  // also selects the device

  // The side stream waits for the work queued so far on the device's stream, `launch` queues the
  // collective on it, and an event marks its end.
  template <typename Launch>
  std::shared_ptr<PendingCollective> start(Launch launch) {
    cudaStream_t compute = stream();
    cudaEvent_t ready = nullptr, done = nullptr;
    cuda_check(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming), "dist start");
    cudaError_t rc = cudaEventRecord(ready, compute);
    if (rc == cudaSuccess) rc = cudaStreamWaitEvent(side_, ready, 0);
    cudaEventDestroy(ready);
    cuda_check(rc, "dist start");
    void* scratch = nullptr;
    launch(&scratch);
    rc = cudaEventCreateWithFlags(&done, cudaEventDisableTiming);
    if (rc == cudaSuccess) rc = cudaEventRecord(done, side_);
    if (rc != cudaSuccess) {
      if (done) cudaEventDestroy(done);
      cudaStreamSynchronize(side_);
      if (scratch) cuda::release(device_.index, scratch);
      cuda_check(rc, "dist start");
    }
    return std::make_shared<NcclPending>(device_.index, done, scratch);
  }

  void check(const char* what, ncclResult_t rc) {
    if (rc == ncclSuccess) return;
    failed_ = true;
    fail("ERR_DIST", what, ": NCCL error ", rc, ": ", api_.GetErrorString(rc));
  }

  // all_reduce (n_in == n_out) or reduce_scatter (n_in == size * n_out), queued on `s`. bf16's
  // scratch block goes back to the allocator at once when `s` is the device's stream; on the side
  // stream it is handed to `keep_scratch` (released by the pending collective's wait).
  void reduce(const char* what, const void* in, void* out, size_t n_in, size_t n_out, DType dtype, ReduceOp op,
              cudaStream_t s, void** keep_scratch) {
    if (n_out == 0) return;
    if (dtype == DType::I32 && op == ReduceOp::Avg) fail("ERR_DTYPE", what, ": avg is not defined for int32 (use sum)");
    if (dtype != DType::F32 && dtype != DType::BF16 && dtype != DType::I32)
      fail("ERR_DTYPE", what, ": ", dtype_name(dtype), " is not reduced (float32, bfloat16 or int32)");
    const ncclRedOp_t nop = op == ReduceOp::Max ? ncclMax : op == ReduceOp::Avg ? ncclAvg : ncclSum;
    const bool scatter = n_in != n_out;
    auto run = [&](const void* src, void* dst, ncclDataType_t t) {
      check(what, scatter ? api_.ReduceScatter(src, dst, n_out, t, nop, comm_, s)
                          : api_.AllReduce(src, dst, n_out, t, nop, comm_, s));
    };
    if (dtype != DType::BF16) {
      run(in, out, dtype == DType::I32 ? ncclInt32 : ncclFloat32);
      return;
    }
    // bf16: widen on the stream, reduce in float32, round once. On the device's stream the scratch
    // block goes back to the caching allocator at once (its reuse is ordered after these launches
    // on the same stream).
    const LaunchCtx ctx{s, cuda::error_word(device_.index)};
    float* wide = static_cast<float*>(cuda::alloc(device_.index, (n_in + n_out) * sizeof(float)));
    float* result = wide + n_in;
    try {
      cuda::cast(ctx, DType::BF16, in, DType::F32, wide, static_cast<int64_t>(n_in));
      run(wide, result, ncclFloat32);
      cuda::cast(ctx, DType::F32, result, DType::BF16, out, static_cast<int64_t>(n_out));
    } catch (...) {
      if (keep_scratch) cudaStreamSynchronize(s);
      cuda::release(device_.index, wide);
      throw;
    }
    if (keep_scratch) *keep_scratch = wide;
    else cuda::release(device_.index, wide);
  }

  const NcclApi& api_;
  ncclComm_t comm_;
  int rank_, size_;
  Device device_;
  cudaStream_t side_ = nullptr;  // where started collectives run
  void* barrier_word_ = nullptr;
  bool failed_ = false;
};

}  // namespace

std::unique_ptr<Communicator> make_nccl_communicator(const InitOptions& opts, TcpStoreClient& store,
                                                     const std::string& prefix, std::chrono::milliseconds timeout) {
  const NcclApi& api = nccl_api();
  ncclUniqueId id{};
  if (opts.rank == 0) {
    ncclResult_t rc = api.GetUniqueId(&id);
    if (rc != ncclSuccess) fail("ERR_DIST", "dist_init: ncclGetUniqueId failed: ", api.GetErrorString(rc));
    store.set(prefix + "nccl/unique_id", Bytes(reinterpret_cast<uint8_t*>(&id), reinterpret_cast<uint8_t*>(&id) + sizeof id));
  } else {
    Bytes b = store.get(prefix + "nccl/unique_id", timeout);
    if (b.size() != sizeof id) fail("ERR_DIST", "dist_init: NCCL unique id from rank 0 has ", b.size(), " bytes, expected ", sizeof id);
    std::copy(b.begin(), b.end(), reinterpret_cast<uint8_t*>(&id));
  }
  cuda::stream(opts.device.index);  // selects the device on this thread for ncclCommInitRank
  ncclComm_t comm = nullptr;
  ncclResult_t rc = api.CommInitRank(&comm, opts.world_size, id, opts.rank);
  if (rc != ncclSuccess)
    fail("ERR_DIST", "dist_init: ncclCommInitRank (rank ", opts.rank, " of ", opts.world_size, " on ",
         opts.device.str(), ") failed: ", api.GetErrorString(rc));
  return std::make_unique<NcclCommunicator>(api, comm, opts.rank, opts.world_size, opts.device);
}

#else

std::unique_ptr<Communicator> make_nccl_communicator(const InitOptions&, TcpStoreClient&, const std::string&,
                                                     std::chrono::milliseconds) {
  fail("ERR_DEVICE", "dist_init: backend nccl needs CUDA, and this moma was built without the CUDA backend");
}

#endif

}  // namespace moma::dist
