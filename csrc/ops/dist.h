// Collectives on tensors (csrc/dist/communicator.h is the engine). Like every op: validated on the
// caller's thread (ERR_DTYPE / ERR_SHAPE / ERR_DEVICE / ERR_ARG naming the op; ERR_DIST when no
// process group exists), a NEW output allocated there, and the collective queued on the tensor's
// device queue, so it runs in order with the compute around it and the JS thread never waits.
// Every rank must call the same collectives in the same order on tensors of matching shapes.
//
// Tensors: float32, bfloat16 or int32, on the group's device (cpu for gloo, cuda:N for nccl).
// Rows are the first dimension; collectives that split or join tensors do so along it.
#pragma once
#include <functional>
#include <memory>
#include <vector>

#include "../core/error.h"
#include "../core/tensor.h"
#include "../dist/communicator.h"

namespace moma::ops {

// Same shape as x: op over ranks, element-wise (bf16 sums in float32, rounded once).
Tensor dist_all_reduce(const Tensor& x, dist::ReduceOp op);
// x [W * n, ...] -> [n, ...]: this rank's block of the element-wise reduction.
Tensor dist_reduce_scatter(const Tensor& x, dist::ReduceOp op);
// x [n, ...] -> [W * n, ...]: block r from rank r.
Tensor dist_all_gather(const Tensor& x);
// x [sum(send_rows), ...] -> [sum(recv_rows), ...]: rows send_rows[0..p) ... go to rank p in rank
// order; the output holds recv_rows[p] rows from each rank p, in rank order. send_rows[p] of rank r
// must equal recv_rows[r] of rank p (one entry per rank, >= 0).
Tensor dist_all_to_all_v(const Tensor& x, const std::vector<int64_t>& send_rows, const std::vector<int64_t>& recv_rows);
// Same shape as x: root's x on every rank.
Tensor dist_broadcast(const Tensor& x, int64_t root);
// `done` runs on the group's device worker once every rank has reached the barrier (and, on CUDA,
// the device has finished the work queued before it), with the error if one occurred.
void dist_barrier_async(std::function<void(std::shared_ptr<const MomaException>)> done);

// Joins the process group on a new thread (the rendezvous blocks); `done` runs on that thread.
void dist_init_async(const dist::InitOptions& opts, std::function<void(std::shared_ptr<const MomaException>)> done);

}  // namespace moma::ops
