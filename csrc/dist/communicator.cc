// The process-group registry (the world and its sub-groups) and the rendezvous every rank goes
// through before its backend connects.
//
// Rendezvous, over the store rank 0 serves (keys under "moma/"):
//   1. rank 0 publishes its world size; every rank claims its rank (add "claim/<r>": a second
//      claim is a duplicate), waits for rank 0's world size and compares it with its own, and a rank
//      >= the world size reports itself;
//   2. every rank registers ("joined/<r>") and waits until ranks 0..W-1 have;
//   3. the backend connects (gloo's mesh, or NCCL's unique id from rank 0) through the same store;
//   4. every rank marks itself done; rank 0 waits for all of them before it returns, so its server
//      outlives every other rank's last request.
// A rank that finds a problem writes it to "moma/abort"; every waiting rank polls that key and
// fails with the same message, so a bad launch fails everywhere instead of hanging until the
// timeout. Ranks that never arrive end in ERR_DIST after the timeout, naming the missing ranks.
#include "communicator.h"

#include <algorithm>
#include <cstdlib>
#include <map>
#include <mutex>
#include <sstream>
#include <thread>

#include "../core/error.h"
#include "backends.h"

namespace moma::dist {

const char* reduce_op_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum: return "sum";
    case ReduceOp::Avg: return "avg";
    case ReduceOp::Max: return "max";
  }
  return "unknown";
}

const char* backend_name(Backend backend) { return backend == Backend::Nccl ? "nccl" : "gloo"; }

ReduceOp parse_reduce_op(const std::string& text, const char* op) {
  if (text == "sum") return ReduceOp::Sum;
  if (text == "avg") return ReduceOp::Avg;
  if (text == "max") return ReduceOp::Max;
  fail("ERR_ARG", op, ": reduce op '", text, "' is not one of sum, avg, max");
}

Backend parse_backend(const std::string& text, const char* op) {
  if (text == "gloo") return Backend::Gloo;
  if (text == "nccl") return Backend::Nccl;
  fail("ERR_ARG", op, ": backend '", text, "' is not one of gloo (CPU tensors), nccl (CUDA tensors)");
}

std::chrono::milliseconds resolve_timeout(std::chrono::milliseconds requested) {
  if (requested.count() > 0) return requested;
  const char* env = std::getenv("MOMA_DIST_TIMEOUT_S");
  if (env && *env) {
    char* end = nullptr;
    double seconds = std::strtod(env, &end);
    if (end == env || *end != 0 || !(seconds > 0) || seconds > 1e7)
      fail("ERR_ARG", "MOMA_DIST_TIMEOUT_S='", env, "' is not a positive number of seconds");
    return std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000.0 + 0.5));
  }
  return kDefaultTimeout;
}

namespace {

using Clock = std::chrono::steady_clock;

// Forwards every collective to `target()` (the world's backend, or a sub-group's once connected).
class ForwardingCommunicator : public Communicator {
 public:
  void all_reduce(const void* in, void* out, size_t count, DType dtype, ReduceOp op) override {
    target().all_reduce(in, out, count, dtype, op);
  }
  void reduce_scatter(const void* in, void* out, size_t count, DType dtype, ReduceOp op) override {
    target().reduce_scatter(in, out, count, dtype, op);
  }
  void all_gather(const void* in, void* out, size_t count, DType dtype) override {
    target().all_gather(in, out, count, dtype);
  }
  void all_to_all_v(const void* in, const int64_t* send_counts, const int64_t* send_offsets, void* out,
                    const int64_t* recv_counts, const int64_t* recv_offsets, DType dtype) override {
    target().all_to_all_v(in, send_counts, send_offsets, out, recv_counts, recv_offsets, dtype);
  }
  void broadcast(const void* in, void* out, size_t count, DType dtype, int root) override {
    target().broadcast(in, out, count, dtype, root);
  }
  void barrier() override { target().barrier(); }
  std::shared_ptr<PendingCollective> start_all_reduce(const void* in, void* out, size_t count, DType dtype,
                                                      ReduceOp op) override {
    return target().start_all_reduce(in, out, count, dtype, op);
  }
  std::shared_ptr<PendingCollective> start_reduce_scatter(const void* in, void* out, size_t count, DType dtype,
                                                          ReduceOp op) override {
    return target().start_reduce_scatter(in, out, count, dtype, op);
  }

 protected:
  virtual Communicator& target() = 0;
};

// A connected world: the backend's communicator and the store it connected through (rank 0 also
// serves the store, for the world's sub-groups too).
class ConnectedWorld : public ForwardingCommunicator {
 public:
  explicit ConnectedWorld(const InitOptions& opts) : opts(opts) {}
  ~ConnectedWorld() override { comm.reset(); }  // the backend goes before the store it connected through

  int rank() const override { return comm->rank(); }
  int size() const override { return comm->size(); }
  Backend backend() const override { return comm->backend(); }
  Device device() const override { return comm->device(); }

  InitOptions opts;  // timeout resolved
  std::unique_ptr<TcpStoreServer> server;  // rank 0 only
  std::unique_ptr<TcpStoreClient> store;
  std::unique_ptr<Communicator> comm;

 protected:
  Communicator& target() override { return *comm; }
};

// A sub-group of a connected world; its backend connects on the first collective (see
// communicator.h), through a store client of its own that it closes once connected. A failed
// connection fails every later collective of the group with the same error.
class SubgroupCommunicator : public ForwardingCommunicator {
 public:
  SubgroupCommunicator(std::shared_ptr<ConnectedWorld> world, std::vector<int> ranks, int id, int rank)
      : world_(std::move(world)), ranks_(std::move(ranks)), id_(id), rank_(rank) {}

  int rank() const override { return rank_; }
  int size() const override { return static_cast<int>(ranks_.size()); }
  Backend backend() const override { return world_->opts.backend; }
  Device device() const override { return world_->opts.device; }

 protected:
  Communicator& target() override {
    std::lock_guard<std::mutex> lock(mutex_);
    if (comm_) return *comm_;
    if (error_) throw *error_;
    try {
      comm_ = connect();
    } catch (const MomaException& e) {
      error_ = std::make_shared<MomaException>(e.code(), e.what());
      throw;
    }
    return *comm_;
  }

 private:
  std::string describe() const {
    std::ostringstream out;
    out << "group " << id_ << " (world ranks";
    for (int r : ranks_) out << ' ' << r;
    out << ')';
    return out.str();
  }

  std::unique_ptr<Communicator> connect() {
    const InitOptions& w = world_->opts;
    InitOptions opts = w;
    opts.rank = rank_;
    opts.world_size = size();
    const std::string prefix = "moma/group/" + std::to_string(id_) + "/";
    try {
      TcpStoreClient store(w.master_addr, w.master_port, w.timeout);
      return w.backend == Backend::Gloo ? make_gloo_communicator(opts, store, prefix, w.timeout)
                                        : make_nccl_communicator(opts, store, prefix, w.timeout);
    } catch (const MomaException& e) {
      fail(e.code() == "ERR_LOAD" ? "ERR_LOAD" : "ERR_DIST", "world rank ", w.rank, ": connecting ", describe(),
           " failed: ", e.what());
    }
  }

  std::shared_ptr<ConnectedWorld> world_;
  std::vector<int> ranks_;
  int id_, rank_;
  std::mutex mutex_;
  std::unique_ptr<Communicator> comm_;
  std::shared_ptr<MomaException> error_;
};

struct Registered {
  InitOptions opts;
  std::shared_ptr<Communicator> comm;
  int next_group = kWorldGroup + 1;
  // Sub-groups by id: this rank's communicator, or null where it is not a member.
  std::map<int, std::shared_ptr<Communicator>> groups;
  std::map<int, std::vector<int>> group_ranks;
};

std::mutex g_mutex;
std::unique_ptr<Registered> g_group;
bool g_initializing = false;

const std::string kAbortKey = "moma/abort";
// How long a failing rank 0 keeps the store up for ranks that are still on their way.
constexpr std::chrono::milliseconds kFailureGrace(1000);

class Rendezvous {
 public:
  Rendezvous(TcpStoreClient& store, const InitOptions& o, std::chrono::milliseconds timeout)
      : store_(store), o_(o), start_(Clock::now()), deadline_(start_ + timeout) {}

  void join() {
    const std::string r = std::to_string(o_.rank);
    if (o_.rank == 0) store_.set("moma/world_size", std::to_string(o_.world_size));
    if (store_.add("moma/claim/" + r, 1) > 1)
      abort("rank " + r + " was claimed by two processes (check RANK / --node-rank of every process)");
    if (o_.rank >= o_.world_size)
      abort("rank " + r + " is out of range for world size " + std::to_string(o_.world_size));
    wait_for({"moma/world_size"}, "rank 0");
    std::string w0 = store_.get_string("moma/world_size");
    if (w0 != std::to_string(o_.world_size))
      abort("world sizes differ: rank " + r + " was started with world size " + std::to_string(o_.world_size) +
            ", rank 0 with " + w0);
    store_.set("moma/joined/" + r, "1");
    std::vector<std::string> joined;
    for (int i = 0; i < o_.world_size; ++i) joined.push_back("moma/joined/" + std::to_string(i));
    wait_for(joined, "");
  }

  void finish() {
    store_.set("moma/done/" + std::to_string(o_.rank), "1");
    if (o_.rank != 0) return;
    std::vector<std::string> done;
    for (int i = 0; i < o_.world_size; ++i) done.push_back("moma/done/" + std::to_string(i));
    wait_for(done, "");
  }

  // Fails this rank and every rank waiting at the rendezvous.
  [[noreturn]] void abort(const std::string& why) {
    store_.set(kAbortKey, why);
    fail("ERR_DIST", "rank ", o_.rank, ": rendezvous at ", store_.address(), " failed: ", why);
  }

 private:
  // Polls until every key exists; fails on an abort or at the deadline, naming what is missing
  // (`who`, or the ranks whose keys are absent).
  void wait_for(const std::vector<std::string>& keys, const std::string& who) {
    for (;;) {
      if (store_.check({kAbortKey}))
        fail("ERR_DIST", "rank ", o_.rank, ": rendezvous at ", store_.address(), " failed: ", store_.get_string(kAbortKey));
      if (store_.check(keys)) return;
      if (Clock::now() >= deadline_) {
        std::ostringstream missing;
        if (!who.empty()) {
          missing << who;
        } else {
          std::vector<size_t> absent;
          for (size_t i = 0; i < keys.size(); ++i)
            if (!store_.check({keys[i]})) absent.push_back(i);
          missing << (absent.size() == 1 ? "rank" : "ranks");
          for (size_t i : absent) missing << ' ' << i;
        }
        double waited = std::chrono::duration<double>(Clock::now() - start_).count();
        std::ostringstream secs;
        secs.precision(1);
        secs << std::fixed << waited;
        fail("ERR_DIST", "rank ", o_.rank, " of ", o_.world_size, ": timed out after ", secs.str(),
             " s at the rendezvous on ", store_.address(), " waiting for ", missing.str(),
             " (never arrived; raise the timeout with timeoutMs or MOMA_DIST_TIMEOUT_S if they start late)");
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }

  TcpStoreClient& store_;
  const InitOptions& o_;
  Clock::time_point start_, deadline_;
};

}  // namespace

namespace {

void check_options(const InitOptions& opts, const char* op) {
  if (opts.world_size < 1) fail("ERR_ARG", op, ": world size ", opts.world_size, " must be at least 1");
  if (opts.rank < 0) fail("ERR_ARG", op, ": rank ", opts.rank, " must be >= 0");
  if (opts.master_port < 0 || opts.master_port > 65535)
    fail("ERR_ARG", op, ": master port ", opts.master_port, " is not a TCP port (0..65535)");
  if (opts.master_addr.empty()) fail("ERR_ARG", op, ": master address is empty");
  if (opts.backend == Backend::Gloo && opts.device.is_cuda())
    fail("ERR_DEVICE", op, ": backend gloo runs collectives on cpu tensors; ", opts.device.str(), " needs backend nccl");
  if (opts.backend == Backend::Nccl && !opts.device.is_cuda())
    fail("ERR_DEVICE", op, ": backend nccl runs collectives on a CUDA device; cpu needs backend gloo");
}

}  // namespace

std::shared_ptr<Communicator> connect_group(const InitOptions& opts) {
  check_options(opts, "dist_init");
  const std::chrono::milliseconds timeout = resolve_timeout(opts.timeout);
  auto world = std::make_shared<ConnectedWorld>(opts);
  world->opts.timeout = timeout;
  if (opts.rank == 0) world->server = std::make_unique<TcpStoreServer>(opts.master_port);
  try {
    world->store = std::make_unique<TcpStoreClient>(opts.master_addr, opts.master_port, timeout);
    Rendezvous rendezvous(*world->store, opts, timeout);
    rendezvous.join();
    try {
      world->comm = opts.backend == Backend::Gloo ? make_gloo_communicator(opts, *world->store, "", timeout)
                                                  : make_nccl_communicator(opts, *world->store, "", timeout);
    } catch (const MomaException& e) {
      // Tell the others (they would otherwise wait in the backend's connect until the timeout).
      try {
        world->store->set(kAbortKey, "rank " + std::to_string(opts.rank) + ": " + e.what());
      } catch (const MomaException&) {
        // the store is gone too: the others time out, this rank reports its own error
      }
      throw;
    }
    rendezvous.finish();
  } catch (const MomaException&) {
    // Rank 0 serves the store: keep it up until the others have read why (or gave up).
    world->store.reset();
    if (world->server) world->server->linger(kFailureGrace, timeout);
    throw;
  }
  return world;
}

void check_group_ranks(const std::vector<int>& ranks, int world_size, const char* op) {
  if (ranks.empty()) fail("ERR_ARG", op, ": ranks is empty; a group needs at least one rank");
  std::vector<bool> seen(static_cast<size_t>(world_size), false);
  for (size_t i = 0; i < ranks.size(); ++i) {
    const int r = ranks[i];
    if (r < 0 || r >= world_size)
      fail("ERR_ARG", op, ": ranks[", i, "] = ", r, " is not a rank of the world (0..", world_size - 1, ")");
    if (seen[static_cast<size_t>(r)]) fail("ERR_ARG", op, ": rank ", r, " appears twice in ranks");
    seen[static_cast<size_t>(r)] = true;
  }
}

std::shared_ptr<Communicator> connect_subgroup(const std::shared_ptr<Communicator>& world, const std::vector<int>& ranks,
                                               int id, const char* op) {
  auto connected = std::dynamic_pointer_cast<ConnectedWorld>(world);
  if (!connected) fail("ERR_ARG", op, ": a sub-group is made from a world (connect_group's communicator)");
  if (id <= kWorldGroup) fail("ERR_ARG", op, ": sub-group id ", id, " must be positive");
  check_group_ranks(ranks, connected->size(), op);
  auto at = std::find(ranks.begin(), ranks.end(), connected->rank());
  if (at == ranks.end()) fail("ERR_ARG", op, ": world rank ", connected->rank(), " is not in the group's ranks");
  return std::make_shared<SubgroupCommunicator>(connected, ranks, id, static_cast<int>(at - ranks.begin()));
}

void init_process_group(const InitOptions& opts) {
  const char* op = "dist_init";
  check_options(opts, op);
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    if (g_group)
      fail("ERR_DIST", op, ": this process is already rank ", g_group->opts.rank, " of a group of ",
           g_group->opts.world_size, "; destroy it first");
    if (g_initializing) fail("ERR_DIST", op, ": a process group is being initialised in this process already");
    g_initializing = true;
  }
  try {
    auto registered = std::make_unique<Registered>();
    registered->opts = opts;
    registered->opts.timeout = resolve_timeout(opts.timeout);
    registered->comm = connect_group(opts);
    std::lock_guard<std::mutex> lock(g_mutex);
    g_group = std::move(registered);
    g_initializing = false;
  } catch (...) {
    std::lock_guard<std::mutex> lock(g_mutex);
    g_initializing = false;
    throw;
  }
}

int new_group(const std::vector<int>& ranks, const char* op) {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (!g_group) fail("ERR_DIST", op, ": no process group in this process (initialise one first: distInit)");
  check_group_ranks(ranks, g_group->opts.world_size, op);
  const int id = g_group->next_group++;
  const bool member = std::find(ranks.begin(), ranks.end(), g_group->opts.rank) != ranks.end();
  g_group->groups[id] = member ? connect_subgroup(g_group->comm, ranks, id, op) : nullptr;
  g_group->group_ranks[id] = ranks;
  return id;
}

std::shared_ptr<Communicator> process_group(const char* op, int group) {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (!g_group) fail("ERR_DIST", op, ": no process group in this process (initialise one first: distInit)");
  if (group == kWorldGroup) return g_group->comm;
  auto found = g_group->groups.find(group);
  if (found == g_group->groups.end())
    fail("ERR_DIST", op, ": group ", group, " does not exist in this process group (never made by newGroup, or made by a "
         "world that was destroyed)");
  if (!found->second) {
    std::ostringstream ranks;
    for (int r : g_group->group_ranks[group]) ranks << ' ' << r;
    fail("ERR_DIST", op, ": rank ", g_group->opts.rank, " is not a member of group ", group, " (world ranks", ranks.str(), ")");
  }
  return found->second;
}

bool process_group_initialized() {
  std::lock_guard<std::mutex> lock(g_mutex);
  return g_group != nullptr;
}

InitOptions process_group_options() {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (!g_group) fail("ERR_DIST", "dist_info: no process group in this process");
  return g_group->opts;
}

void destroy_process_group() {
  std::unique_ptr<Registered> group;
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    group = std::move(g_group);
  }
}

}  // namespace moma::dist
