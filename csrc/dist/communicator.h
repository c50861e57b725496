// Collectives of moma: the Communicator of a process group, its sub-groups (torch's new_group) and
// the process-wide registry (one world per process, like torch's default group, and the sub-groups
// made from it).
//
// A Communicator moves raw buffers between the `size()` ranks of the group. Two backends:
//   gloo  (CPU buffers): the collectives of Facebook's gloo over its tcp transport, loaded on demand
//         from the plugin library moma_gloo (gloo_backend.cc, gloo_plugin.cc). They run on the
//         communicator's communication thread; blocking calls wait there for completion.
//   nccl  (CUDA buffers of one device): NCCL loaded at run time (nccl_backend.cc). Calls enqueue
//         the collective on the device's stream (cuda/runtime.h) and return, so it is ordered with
//         the kernels before and after it, like any kernel launch.
// Every rank must call the same collectives in the same order with matching sizes.
//
// Semantics shared by both backends (`count` and the per-peer counts are in elements):
//   all_reduce      out[i] = op over ranks of in[i], i < count. Sum/Avg of bf16 are reduced in
//                   float32 (widened, reduced, rounded once), so every rank gets the same bits, equal
//                   to the float32 sum rounded to bf16. Avg: gloo divides the float32 sum by
//                   size(), NCCL uses ncclAvg; not defined for int32. Max is exact for every dtype.
//   reduce_scatter  in holds size() chunks of `count`; out (count) = op over ranks of chunk rank().
//   all_gather      in holds `count`; out holds size() chunks, chunk r from rank r.
//   all_to_all_v    rank r sends send_counts[p] elements from in + send_offsets[p] to rank p, and
//                   receives recv_counts[p] elements from rank p at out + recv_offsets[p]. A rank's
//                   send_counts[p] must equal rank p's recv_counts[r].
//   broadcast       out (count) = root's in, on every rank (in is read on the root only).
//   barrier         returns (gloo) / completes on the stream (nccl) once every rank has entered it.
// `in` and `out` never overlap (ops give every collective a new output).
// Failures (a peer that left, a timeout, a transport error) throw MomaException("ERR_DIST").
#pragma once
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "../core/device.h"
#include "../core/dtype.h"

namespace moma::dist {

enum class ReduceOp : int { Sum = 0, Avg = 1, Max = 2 };
enum class Backend : int { Gloo = 0, Nccl = 1 };

const char* reduce_op_name(ReduceOp op);
const char* backend_name(Backend backend);
// "sum" | "avg" | "max"; ERR_ARG naming `op` otherwise.
ReduceOp parse_reduce_op(const std::string& text, const char* op);
// "gloo" | "nccl"; ERR_ARG naming `op` otherwise.
Backend parse_backend(const std::string& text, const char* op);

// A collective started by Communicator::start_*: wait() returns once it has completed (gloo) or
// once the device's stream waits for it (nccl), and throws its ERR_DIST when it failed. Call it
// once, from the thread that runs the device's work.
class PendingCollective {
 public:
  virtual ~PendingCollective() = default;
  virtual void wait() = 0;
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual Backend backend() const = 0;
  virtual Device device() const = 0;  // cpu (gloo) or cuda:N (nccl)

  virtual void all_reduce(const void* in, void* out, size_t count, DType dtype, ReduceOp op) = 0;
  virtual void reduce_scatter(const void* in, void* out, size_t count, DType dtype, ReduceOp op) = 0;
  virtual void all_gather(const void* in, void* out, size_t count, DType dtype) = 0;
  virtual void all_to_all_v(const void* in, const int64_t* send_counts, const int64_t* send_offsets, void* out,
                            const int64_t* recv_counts, const int64_t* recv_offsets, DType dtype) = 0;
  virtual void broadcast(const void* in, void* out, size_t count, DType dtype, int root) = 0;
  virtual void barrier() = 0;

  // Asynchronous all_reduce / reduce_scatter (the gradient all-reduce overlapped with the
  // backward): they return at once and the collective proceeds beside the device's compute.
  //   gloo: every collective of a communicator runs on its own communication thread, in the order
  //         it was asked for (the blocking calls above post to it and wait), so a started
  //         collective runs while the device worker computes; `in` and `out` must stay valid until
  //         wait() returns.
  //   nccl: an event recorded on the device's stream makes a side stream wait for the work queued
  //         so far; the collective runs on the side stream, and wait() makes the device's stream
  //         wait for the side stream's event (no host wait).
  virtual std::shared_ptr<PendingCollective> start_all_reduce(const void* in, void* out, size_t count, DType dtype,
                                                              ReduceOp op) = 0;
  virtual std::shared_ptr<PendingCollective> start_reduce_scatter(const void* in, void* out, size_t count, DType dtype,
                                                                  ReduceOp op) = 0;
};

// How a process joins its group (torchrun's RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT).
struct InitOptions {
  int rank = 0;
  int world_size = 1;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  Backend backend = Backend::Gloo;
  Device device;  // cpu for gloo, cuda:N for nccl
  // Bound on the rendezvous and on every collective; 0 takes MOMA_DIST_TIMEOUT_S (seconds) from
  // the environment, else kDefaultTimeout.
  std::chrono::milliseconds timeout{0};
};
constexpr std::chrono::milliseconds kDefaultTimeout = std::chrono::seconds(300);

// The timeout `opts` asks for, resolved as InitOptions::timeout says.
std::chrono::milliseconds resolve_timeout(std::chrono::milliseconds requested);

// Joins the group: rank 0 starts the rendezvous store on master_port, every rank connects,
// registers and checks the others (a duplicate rank, a rank >= world size or world sizes that
// differ fail on every rank that has joined, naming the culprit), then the backend connects.
// Blocks the calling thread for the rendezvous (call it off the JS thread). ERR_DIST on failure
// (ERR_LOAD when the backend's library is missing; ERR_ARG / ERR_DEVICE for bad options). The
// registry is empty again after a failure.
void init_process_group(const InitOptions& opts);

// What init_process_group does, without registering the result: the rendezvous and the backend's
// connection. The communicator owns the store (and, on rank 0, its server). For ranks that are
// threads of one process (tests, benchmarks); init_process_group is this plus the registry.
std::shared_ptr<Communicator> connect_group(const InitOptions& opts);

// ---- sub-groups ----------------------------------------------------------------------------------
// A sub-group holds the world ranks `ranks` (distinct, each in [0, world size), any order); its
// rank i is world rank ranks[i]. It gets a communicator of its own, of the world's backend on the
// world's device: a new gloo mesh, or a new NCCL communicator whose unique id group rank 0 publishes,
// both through the world's rendezvous store under the key prefix "moma/group/<id>/" (a client of
// its own, so groups connect independently). It connects on its first collective (on the thread
// that runs it: the device worker for ops), so making a group never blocks; every member's first
// collective on it waits for the others' (ERR_DIST naming the group after the timeout).
constexpr int kWorldGroup = 0;

// ERR_ARG naming `op` unless `ranks` is a non-empty list of distinct ranks in [0, world_size).
void check_group_ranks(const std::vector<int>& ranks, int world_size, const char* op);

// The sub-group `id` (> 0, the same on every member) of `world`, a communicator from connect_group
// (this rank must be in `ranks`; ERR_ARG otherwise). For ranks that are threads of one process.
std::shared_ptr<Communicator> connect_subgroup(const std::shared_ptr<Communicator>& world, const std::vector<int>& ranks,
                                               int id, const char* op);

// Registers the next sub-group of this process's world, like torch.distributed.new_group: every
// rank calls it with the same lists in the same order (members or not), so ids (1, 2, ... per
// world) agree everywhere. Returns the id; ERR_DIST without a world, ERR_ARG for bad ranks.
int new_group(const std::vector<int>& ranks, const char* op);

// The communicator of group `group` (kWorldGroup: the world) for this rank. ERR_DIST naming `op`
// when no world is initialised, when `group` does not exist in it (never made, or made by a world
// that was destroyed) or when this rank is not a member.
std::shared_ptr<Communicator> process_group(const char* op, int group = kWorldGroup);
// True once init_process_group has succeeded and until destroy_process_group.
bool process_group_initialized();
// Leaves the world and drops its sub-groups. Collectives already queued keep their communicator
// until they have run.
void destroy_process_group();

// Options of the current group (valid while process_group_initialized()).
InitOptions process_group_options();

}  // namespace moma::dist
