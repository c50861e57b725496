// The gloo backend of the Communicator (CPU buffers). gloo lives in the plugin libmoma_gloo.so
// (gloo_plugin.cc), loaded here on first use from the folder of the binary that holds this code
// (the addon moma.node, or a native executable), found with dladdr; MOMA_GLOO_PLUGIN overrides the
// path. A build or a machine without gloo still loads moma: only asking for CPU collectives fails,
// with ERR_LOAD saying what to install.
//
// bf16: widened to a float32 scratch buffer, reduced by gloo in float32, rounded once (every rank
// rounds the same float32 result, so all ranks hold the same bits). Avg: float32 sum / size.
//
// Threads: every collective of a communicator runs on its communication thread, in the order it
// was posted (one gloo context must not run two collectives at once, and every rank posts in the
// same order); blocking calls post and wait, start_* post and return, which is what lets the
// gradient all-reduce run while the device worker computes the rest of the backward. Communicators
// of different groups have different threads, so disjoint groups run at the same time.
#include <dlfcn.h>
#include <unistd.h>

#include <climits>
#include <condition_variable>
#include <deque>
#include <functional>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#include "../core/bf16.h"
#include "../core/error.h"
#include "backends.h"
#include "gloo_plugin_abi.h"

namespace moma::dist {
namespace {

constexpr size_t kErrLen = 1024;

struct GlooApi {
  decltype(&moma_gloo_connect) connect = nullptr;
  decltype(&moma_gloo_close) close = nullptr;
  decltype(&moma_gloo_allreduce) allreduce = nullptr;
  decltype(&moma_gloo_reduce_scatter) reduce_scatter = nullptr;
  decltype(&moma_gloo_allgather) allgather = nullptr;
  decltype(&moma_gloo_alltoallv) alltoallv = nullptr;
  decltype(&moma_gloo_broadcast) broadcast = nullptr;
  decltype(&moma_gloo_barrier) barrier = nullptr;
};

// The folder of the binary this function was linked into (the addon, or the executable).
std::string own_folder() {
  Dl_info info{};
  std::string path;
  if (dladdr(reinterpret_cast<void*>(&own_folder), &info) && info.dli_fname && std::strchr(info.dli_fname, '/')) {
    char resolved[PATH_MAX];
    if (realpath(info.dli_fname, resolved)) path = resolved;
  }
  if (path.empty()) {
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) path.assign(exe, static_cast<size_t>(n));
  }
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? "." : path.substr(0, slash);
}

std::string plugin_path() {
  const char* env = std::getenv("MOMA_GLOO_PLUGIN");
  if (env && *env) return env;
  return own_folder() + "/libmoma_gloo.so";
}

template <typename Fn>
void resolve(void* handle, const char* name, Fn& fn, const std::string& path) {
  fn = reinterpret_cast<Fn>(dlsym(handle, name));
  if (!fn) fail("ERR_LOAD", "the gloo plugin ", path, " lacks ", name, ": it belongs to another moma version; rebuild moma");
}

// Loads the plugin once; later calls return the same table (a failed load is retried next time,
// so installing gloo does not need a restart).
const GlooApi& gloo_api() {
  static std::mutex mutex;
  static GlooApi api;
  static bool loaded = false;
  std::lock_guard<std::mutex> lock(mutex);
  if (loaded) return api;
  std::string path = plugin_path();
  if (access(path.c_str(), F_OK) != 0)
    fail("ERR_LOAD", "CPU collectives (backend 'gloo') need moma's gloo plugin ", path,
         ", which is missing: this moma was built without gloo. Install it (apt-get install libgloo-dev) and "
         "rebuild moma from source, or set MOMA_GLOO_PLUGIN to the plugin's path");
  void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!handle) {
    const char* why = dlerror();
    fail("ERR_LOAD", "CPU collectives (backend 'gloo') cannot load ", path, ": ", why ? why : "unknown error",
         ". Install gloo's runtime library (apt-get install libgloo0), or build moma from source with libgloo-dev");
  }
  using VersionFn = int (*)();
  VersionFn version = reinterpret_cast<VersionFn>(dlsym(handle, "moma_gloo_abi_version"));
  if (!version || version() != MOMA_GLOO_ABI_VERSION) {
    dlclose(handle);
    fail("ERR_LOAD", "the gloo plugin ", path, " has interface version ", version ? version() : 0, ", this moma needs ",
         MOMA_GLOO_ABI_VERSION, ": rebuild moma");
  }
  resolve(handle, "moma_gloo_connect", api.connect, path);
  resolve(handle, "moma_gloo_close", api.close, path);
  resolve(handle, "moma_gloo_allreduce", api.allreduce, path);
  resolve(handle, "moma_gloo_reduce_scatter", api.reduce_scatter, path);
  resolve(handle, "moma_gloo_allgather", api.allgather, path);
  resolve(handle, "moma_gloo_alltoallv", api.alltoallv, path);
  resolve(handle, "moma_gloo_broadcast", api.broadcast, path);
  resolve(handle, "moma_gloo_barrier", api.barrier, path);
  loaded = true;  // the plugin stays loaded for the life of the process
  return api;
}

// ---- the store, as the plugin calls it ---------------------------------------------------------
// Keys of a group's gloo rendezvous live under "<prefix>gloo/" in the store.
struct PrefixedStore {
  TcpStoreClient* store;
  std::string prefix;  // "<prefix>gloo/"
};

void copy_error(const std::exception& e, char* err, size_t err_len) {
  if (err_len) {
    std::strncpy(err, e.what(), err_len - 1);
    err[err_len - 1] = 0;
  }
}

int store_set(void* self, const char* key, const void* data, size_t n, char* err, size_t err_len) {
  try {
    const auto* p = static_cast<const uint8_t*>(data);
    auto* s = static_cast<PrefixedStore*>(self);
    s->store->set(s->prefix + key, Bytes(p, p + n));
    return 0;
  } catch (const std::exception& e) {
    copy_error(e, err, err_len);
    return 1;
  }
}

int store_get(void* self, const char* key, void* sink_ctx, void (*sink)(void*, const void*, size_t), char* err,
              size_t err_len) {
  try {
    auto* s = static_cast<PrefixedStore*>(self);
    Bytes value = s->store->get(s->prefix + key);
    sink(sink_ctx, value.data(), value.size());
    return 0;
  } catch (const std::exception& e) {
    copy_error(e, err, err_len);
    return 1;
  }
}

int store_wait(void* self, const char* const* keys, size_t n_keys, int64_t timeout_ms, char* err, size_t err_len) {
  try {
    auto* s = static_cast<PrefixedStore*>(self);
    std::vector<std::string> names;
    for (size_t i = 0; i < n_keys; ++i) names.push_back(s->prefix + keys[i]);
    s->store->wait(names, std::chrono::milliseconds(timeout_ms));
    return 0;
  } catch (const std::exception& e) {
    copy_error(e, err, err_len);
    return 1;
  }
}

// A collective posted to the communication thread: done once it ran, with its error if any.
class GlooPending : public PendingCollective {
 public:
  void wait() override {
    std::unique_lock<std::mutex> lock(mutex_);
    done_cv_.wait(lock, [&] { return done_; });
    if (error_) throw *error_;
  }
  void finish(std::shared_ptr<MomaException> error) {
    std::lock_guard<std::mutex> lock(mutex_);
    error_ = std::move(error);
    done_ = true;
    done_cv_.notify_all();
  }

 private:
  std::mutex mutex_;
  std::condition_variable done_cv_;
  bool done_ = false;
  std::shared_ptr<MomaException> error_;
};

class GlooCommunicator : public Communicator {
 public:
  GlooCommunicator(const GlooApi& api, MomaGlooContext* ctx, int rank, int size)
      : api_(api), ctx_(ctx), rank_(rank), size_(size), thread_([this] { serve(); }) {}
  ~GlooCommunicator() override {
    {
      std::lock_guard<std::mutex> lock(jobs_mutex_);
      stopping_ = true;
      jobs_cv_.notify_all();
    }
    thread_.join();  // runs what was posted first
    api_.close(ctx_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  Backend backend() const override { return Backend::Gloo; }
  Device device() const override { return Device{}; }

  void all_reduce(const void* in, void* out, size_t count, DType dtype, ReduceOp op) override {
    start_all_reduce(in, out, count, dtype, op)->wait();
  }

  void reduce_scatter(const void* in, void* out, size_t count, DType dtype, ReduceOp op) override {
    start_reduce_scatter(in, out, count, dtype, op)->wait();
  }

  std::shared_ptr<PendingCollective> start_all_reduce(const void* in, void* out, size_t count, DType dtype,
                                                      ReduceOp op) override {
    return post([=] { reduce("all_reduce", in, out, count, count, dtype, op); });
  }

  std::shared_ptr<PendingCollective> start_reduce_scatter(const void* in, void* out, size_t count, DType dtype,
                                                          ReduceOp op) override {
    return post([=] { reduce("reduce_scatter", in, out, count * static_cast<size_t>(size_), count, dtype, op); });
  }

  void all_gather(const void* in, void* out, size_t count, DType dtype) override {
    post([=] { check(api_.allgather(ctx_, in, out, count * dtype_size(dtype), err_, kErrLen)); })->wait();
  }

  void all_to_all_v(const void* in, const int64_t* send_counts, const int64_t* send_offsets, void* out,
                    const int64_t* recv_counts, const int64_t* recv_offsets, DType dtype) override {
    const int64_t es = static_cast<int64_t>(dtype_size(dtype));
    std::vector<int64_t> sb(size_), so(size_), rb(size_), ro(size_);
    for (int p = 0; p < size_; ++p) {
      sb[p] = send_counts[p] * es;
      so[p] = send_offsets[p] * es;
      rb[p] = recv_counts[p] * es;
      ro[p] = recv_offsets[p] * es;
    }
    post([&] { check(api_.alltoallv(ctx_, in, sb.data(), so.data(), out, rb.data(), ro.data(), err_, kErrLen)); })->wait();
  }

  void broadcast(const void* in, void* out, size_t count, DType dtype, int root) override {
    post([=] { check(api_.broadcast(ctx_, in, out, count * dtype_size(dtype), root, err_, kErrLen)); })->wait();
  }

  void barrier() override {
    post([=] { check(api_.barrier(ctx_, err_, kErrLen)); })->wait();
  }

 private:
  struct Job {
    std::function<void()> run;
    std::shared_ptr<GlooPending> pending;
  };

  std::shared_ptr<PendingCollective> post(std::function<void()> run) {
    auto pending = std::make_shared<GlooPending>();
    std::lock_guard<std::mutex> lock(jobs_mutex_);
    jobs_.push_back(Job{std::move(run), pending});
    jobs_cv_.notify_all();
    return pending;
  }

  // The communication thread: runs the posted collectives in order until the communicator goes.
  void serve() {
    for (;;) {
      Job job;
      {
        std::unique_lock<std::mutex> lock(jobs_mutex_);
        jobs_cv_.wait(lock, [&] { return stopping_ || !jobs_.empty(); });
        if (jobs_.empty()) return;
        job = std::move(jobs_.front());
        jobs_.pop_front();
      }
      std::shared_ptr<MomaException> error;
      try {
        job.run();
      } catch (const MomaException& e) {
        error = std::make_shared<MomaException>(e.code(), e.what());
      } catch (const std::exception& e) {
        error = std::make_shared<MomaException>("ERR_DIST", e.what());
      }
      job.pending->finish(std::move(error));
    }
  }

  void check(int rc) {
    if (rc) fail("ERR_DIST", "rank ", rank_, " of ", size_, ": ", err_);
  }

  // all_reduce (n_in == n_out) and reduce_scatter (n_in == size * n_out): `n_in` elements in,
  // `n_out` out.
  void reduce(const char* what, const void* in, void* out, size_t n_in, size_t n_out, DType dtype, ReduceOp op) {
    const int gop = op == ReduceOp::Max ? MOMA_GLOO_MAX : MOMA_GLOO_SUM;
    const bool scatter = n_in != n_out;
    if (dtype == DType::I32) {
      if (op == ReduceOp::Avg) fail("ERR_DTYPE", what, ": avg is not defined for int32 (use sum)");
      check(scatter ? api_.reduce_scatter(ctx_, in, out, n_out, MOMA_GLOO_I32, gop, err_, kErrLen)
                    : api_.allreduce(ctx_, in, out, n_out, MOMA_GLOO_I32, gop, err_, kErrLen));
      return;
    }
    if (dtype != DType::F32 && dtype != DType::BF16)
      fail("ERR_DTYPE", what, ": ", dtype_name(dtype), " is not reduced (float32, bfloat16 or int32)");
    float* result;
    if (dtype == DType::F32) {
      result = static_cast<float*>(out);
      check(scatter ? api_.reduce_scatter(ctx_, in, out, n_out, MOMA_GLOO_F32, gop, err_, kErrLen)
                    : api_.allreduce(ctx_, in, out, n_out, MOMA_GLOO_F32, gop, err_, kErrLen));
    } else {
      wide_.resize(n_in + n_out);
      const auto* src = static_cast<const uint16_t*>(in);
      for (size_t i = 0; i < n_in; ++i) wide_[i] = bf16_to_f32(src[i]);
      result = wide_.data() + n_in;
      check(scatter ? api_.reduce_scatter(ctx_, wide_.data(), result, n_out, MOMA_GLOO_F32, gop, err_, kErrLen)
                    : api_.allreduce(ctx_, wide_.data(), result, n_out, MOMA_GLOO_F32, gop, err_, kErrLen));
    }
    if (op == ReduceOp::Avg) {
      const float n = static_cast<float>(size_);
      for (size_t i = 0; i < n_out; ++i) result[i] = result[i] / n;
    }
    if (dtype == DType::BF16) {
      auto* dst = static_cast<uint16_t*>(out);
      for (size_t i = 0; i < n_out; ++i) dst[i] = f32_to_bf16(result[i]);
    }
  }

  const GlooApi& api_;
  MomaGlooContext* ctx_;
  int rank_, size_;
  // Used on the communication thread only:
  char err_[kErrLen] = {0};
  std::vector<float> wide_;  // bf16 widened: n_in inputs, then n_out results
  std::mutex jobs_mutex_;
  std::condition_variable jobs_cv_;
  std::deque<Job> jobs_;
  bool stopping_ = false;
  std::thread thread_;  // last: starts once everything it uses exists
};

}  // namespace

std::unique_ptr<Communicator> make_gloo_communicator(const InitOptions& opts, TcpStoreClient& store,
                                                     const std::string& prefix, std::chrono::milliseconds timeout) {
  const GlooApi& api = gloo_api();
  PrefixedStore prefixed{&store, prefix + "gloo/"};
  MomaGlooStore callbacks{&prefixed, store_set, store_get, store_wait};
  char err[kErrLen] = {0};
  std::string host = store.local_address();
  MomaGlooContext* ctx = api.connect(opts.rank, opts.world_size, host.c_str(), timeout.count(), &callbacks, err, kErrLen);
  if (!ctx)
    fail("ERR_DIST", "rank ", opts.rank, " of ", opts.world_size, ": connecting the gloo mesh on ", host, " failed: ", err);
  return std::make_unique<GlooCommunicator>(api, ctx, opts.rank, opts.world_size);
}

}  // namespace moma::dist
