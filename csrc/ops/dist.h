// Collectives on tensors (csrc/dist/communicator.h is the engine). Like every op: validated on the
// caller's thread (ERR_DTYPE / ERR_SHAPE / ERR_DEVICE / ERR_ARG naming the op; ERR_DIST when no
// process group exists), a NEW output allocated there, and the collective queued on the tensor's
// device queue, so it runs in order with the compute around it and the JS thread never waits.
// Every rank must call the same collectives in the same order on tensors of matching shapes.
//
// Tensors: float32, bfloat16 or int32, on the group's device (cpu for gloo, cuda:N for nccl).
// Rows are the first dimension; collectives that split or join tensors do so along it.
// `group`: the world (dist::kWorldGroup) or a sub-group of it (dist::new_group); W below is the
// group's size, ranks and roots are ranks within the group. ERR_DIST naming the op when the group
// does not exist or this rank is not a member.
#pragma once
#include <functional>
#include <memory>
#include <vector>

#include "../core/error.h"
#include "../core/tensor.h"
#include "../dist/communicator.h"

namespace moma::ops {

// Same shape as x: op over ranks, element-wise (bf16 sums in float32, rounded once).
Tensor dist_all_reduce(const Tensor& x, dist::ReduceOp op, int group = dist::kWorldGroup);
// x [W * n, ...] -> [n, ...]: this rank's block of the element-wise reduction.
Tensor dist_reduce_scatter(const Tensor& x, dist::ReduceOp op, int group = dist::kWorldGroup);
// x [n, ...] -> [W * n, ...]: block r from rank r.
Tensor dist_all_gather(const Tensor& x, int group = dist::kWorldGroup);
// x [sum(send_rows), ...] -> [sum(recv_rows), ...]: rows send_rows[0..p) ... go to rank p in rank
// order; the output holds recv_rows[p] rows from each rank p, in rank order. send_rows[p] of rank r
// must equal recv_rows[r] of rank p (one entry per rank, >= 0).
Tensor dist_all_to_all_v(const Tensor& x, const std::vector<int64_t>& send_rows, const std::vector<int64_t>& recv_rows,
                         int group = dist::kWorldGroup);
// Same shape as x: root's x on every rank.
Tensor dist_broadcast(const Tensor& x, int64_t root, int group = dist::kWorldGroup);
// Started collectives (the gradient all-reduce overlapped with the backward): validated and the
// output allocated like the blocking ones; a task queued on x's device (after the compute that
// produced x) hands the collective to the communicator (gloo: its communication thread; nccl: a
// side stream) and returns; `dist_wait` queues the task that waits for it (gloo: the device worker
// blocks until it completed; nccl: the device's stream waits for the side stream) and returns
// the output, poisoned (ERR_DIST) when the collective failed. The JS thread never waits.
struct StartedCollective {
  Tensor out;  // not to be read before dist_wait
  struct Slot;
  std::shared_ptr<Slot> slot;
};
StartedCollective dist_all_reduce_start(const Tensor& x, dist::ReduceOp op, int group = dist::kWorldGroup);
StartedCollective dist_reduce_scatter_start(const Tensor& x, dist::ReduceOp op, int group = dist::kWorldGroup);
// ERR_ARG naming dist_wait when `started` was waited for already.
Tensor dist_wait(StartedCollective& started);

// `done` runs on the group's device worker once every rank has reached the barrier (and, on CUDA,
// the device has finished the work queued before it), with the error if one occurred.
void dist_barrier_async(std::function<void(std::shared_ptr<const MomaException>)> done, int group = dist::kWorldGroup);

// Joins the process group on a new thread (the rendezvous blocks); `done` runs on that thread.
void dist_init_async(const dist::InitOptions& opts, std::function<void(std::shared_ptr<const MomaException>)> done);

}  // namespace moma::ops
