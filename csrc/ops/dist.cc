#include "dist.h"

#include <thread>

#include "../../cuda/runtime.h"
#include "../core/queue.h"

namespace moma::ops {
namespace {

using dist::Communicator;

// The group, after checking that x can take part in its collectives.
std::shared_ptr<Communicator> group_for(const char* op, const Tensor& x, int group) {
  std::shared_ptr<Communicator> comm = dist::process_group(op, group);
  if (x.device() != comm->device())
    fail("ERR_DEVICE", op, ": x is on ", x.device().str(), ", but the process group (backend ",
         dist::backend_name(comm->backend()), ") runs on ", comm->device().str());
  if (x.dtype != DType::F32 && x.dtype != DType::BF16 && x.dtype != DType::I32)
    fail("ERR_DTYPE", op, ": x is ", dtype_name(x.dtype), "; collectives take float32, bfloat16 or int32");
  return comm;
}

void check_reduce(const char* op, const Tensor& x, dist::ReduceOp rop) {
  if (rop == dist::ReduceOp::Avg && x.dtype == DType::I32)
    fail("ERR_DTYPE", op, ": avg is not defined for int32 tensors (use sum, or cast to float32)");
}

void check_rows(const char* op, const Tensor& x) {
  if (x.ndim() < 1) fail("ERR_SHAPE", op, ": x is a scalar; it needs a first dimension to split or join along");
}

void check_counts(const char* op, const char* arg, const std::vector<int64_t>& rows, int world) {
  if (static_cast<int>(rows.size()) != world)
    fail("ERR_ARG", op, ": ", arg, " has ", rows.size(), " entries; it needs one per rank (", world, ")");
  for (size_t p = 0; p < rows.size(); ++p)
    if (rows[p] < 0) fail("ERR_ARG", op, ": ", arg, "[", p, "] = ", rows[p], " is negative");
}

// The output of a reduce-scatter of x over comm's ranks: x's first dimension split by the group size.
Tensor reduce_scatter_output(const char* op, const Tensor& x, const Communicator& comm) {
  check_rows(op, x);
  const int64_t w = comm.size();
  if (x.shape[0] % w != 0)
    fail("ERR_SHAPE", op, ": x has shape ", shape_str(x.shape), "; its first dimension must be divisible by the group size ", w);
  Shape shape = x.shape;
  shape[0] /= w;
  return empty_tensor(shape, x.dtype, x.device(), op);
}

}  // namespace

Tensor dist_all_reduce(const Tensor& x, dist::ReduceOp rop, int group) {
  const char* op = "dist_all_reduce";
  auto comm = group_for(op, x, group);
  check_reduce(op, x, rop);
  Tensor out = empty_tensor(x.shape, x.dtype, x.device(), op);
  const size_t n = static_cast<size_t>(x.numel());
  submit(op, x.device(), {x}, {out}, [comm, x, out, n, rop] { comm->all_reduce(x.data(), out.data(), n, x.dtype, rop); });
  return out;
}

Tensor dist_reduce_scatter(const Tensor& x, dist::ReduceOp rop, int group) {
  const char* op = "dist_reduce_scatter";
  auto comm = group_for(op, x, group);
  check_reduce(op, x, rop);
  Tensor out = reduce_scatter_output(op, x, *comm);
  const size_t n = static_cast<size_t>(out.numel());
  submit(op, x.device(), {x}, {out}, [comm, x, out, n, rop] { comm->reduce_scatter(x.data(), out.data(), n, x.dtype, rop); });
  return out;
}

// What the start task leaves for the wait task (both run on the device worker, in that order).
struct StartedCollective::Slot {
  Tensor x;  // kept alive (with its storage) until the collective is over
  std::shared_ptr<dist::PendingCollective> pending;
  std::shared_ptr<MomaException> start_error;
  bool waited = false;  // set on the JS thread by dist_wait
};

namespace {

// Queues the start of `launch(comm)` on x's device.
StartedCollective start(const char* op, const std::shared_ptr<Communicator>& comm, const Tensor& x, Tensor out,
                        std::function<std::shared_ptr<dist::PendingCollective>(Communicator&)> launch) {
  StartedCollective started{out, std::make_shared<StartedCollective::Slot>()};
  started.slot->x = x;
  auto slot = started.slot;
  submit(op, x.device(), {x}, {}, [comm, slot, launch] {
    try {
      slot->pending = launch(*comm);
    } catch (const MomaException& e) {
      slot->start_error = std::make_shared<MomaException>(e.code(), e.what());
    }
  });
  return started;
}

}  // namespace

StartedCollective dist_all_reduce_start(const Tensor& x, dist::ReduceOp rop, int group) {
  const char* op = "dist_all_reduce_async";
  auto comm = group_for(op, x, group);
  check_reduce(op, x, rop);
  Tensor out = empty_tensor(x.shape, x.dtype, x.device(), op);
  const size_t n = static_cast<size_t>(x.numel());
  return start(op, comm, x, out, [x, out, n, rop](Communicator& c) { return c.start_all_reduce(x.data(), out.data(), n, x.dtype, rop); });
}

StartedCollective dist_reduce_scatter_start(const Tensor& x, dist::ReduceOp rop, int group) {
  const char* op = "dist_reduce_scatter_async";
  auto comm = group_for(op, x, group);
  check_reduce(op, x, rop);
  Tensor out = reduce_scatter_output(op, x, *comm);
  const size_t n = static_cast<size_t>(out.numel());
  return start(op, comm, x, out, [x, out, n, rop](Communicator& c) { return c.start_reduce_scatter(x.data(), out.data(), n, x.dtype, rop); });
}

Tensor dist_wait(StartedCollective& started) {
  const char* op = "dist_wait";
  if (!started.slot || started.slot->waited) fail("ERR_ARG", op, ": this collective was waited for already");
  started.slot->waited = true;
  auto slot = started.slot;
  // The start task has no output (the output is this task's): a poisoned x skips both tasks and
  // poisons the output here; a start that failed poisons it with its error.
  submit(op, started.out.device(), {slot->x}, {started.out}, [slot] {
    auto pending = std::move(slot->pending);
    slot->x = Tensor();
    if (slot->start_error) throw *slot->start_error;
    pending->wait();
  });
  // the caller's handle owns the result from here: the started collective (kept by a JS object
  // until it is collected) must not keep its storage alive
  return std::move(started.out);
}

Tensor dist_all_gather(const Tensor& x, int group) {
  const char* op = "dist_all_gather";
  auto comm = group_for(op, x, group);
  check_rows(op, x);
  Shape shape = x.shape;
  shape[0] *= comm->size();
  Tensor out = empty_tensor(shape, x.dtype, x.device(), op);
  const size_t n = static_cast<size_t>(x.numel());
  submit(op, x.device(), {x}, {out}, [comm, x, out, n] { comm->all_gather(x.data(), out.data(), n, x.dtype); });
  return out;
}

Tensor dist_all_to_all_v(const Tensor& x, const std::vector<int64_t>& send_rows, const std::vector<int64_t>& recv_rows,
                         int group) {
  const char* op = "dist_all_to_all_v";
  auto comm = group_for(op, x, group);
  check_rows(op, x);
  const int w = comm->size();
  check_counts(op, "send_counts", send_rows, w);
  check_counts(op, "recv_counts", recv_rows, w);
  int64_t sent = 0, received = 0;
  for (int p = 0; p < w; ++p) {
    sent += send_rows[p];
    received += recv_rows[p];
  }
  if (sent != x.shape[0])
    fail("ERR_SHAPE", op, ": send_counts sum to ", sent, " rows, but x has shape ", shape_str(x.shape));
  Shape shape = x.shape;
  shape[0] = received;
  Tensor out = empty_tensor(shape, x.dtype, x.device(), op);
  // Element counts and offsets per peer: blocks of rows, packed in rank order.
  const int64_t row = shape_numel(Shape(x.shape.begin() + 1, x.shape.end()));
  std::vector<int64_t> sc(w), so(w), rc(w), ro(w);
  int64_t send_at = 0, recv_at = 0;
  for (int p = 0; p < w; ++p) {
    sc[p] = send_rows[p] * row;
    so[p] = send_at;
    rc[p] = recv_rows[p] * row;
    ro[p] = recv_at;
    send_at += sc[p];
    recv_at += rc[p];
  }
  submit(op, x.device(), {x}, {out}, [comm, x, out, sc, so, rc, ro] {
    comm->all_to_all_v(x.data(), sc.data(), so.data(), out.data(), rc.data(), ro.data(), x.dtype);
  });
  return out;
}

Tensor dist_broadcast(const Tensor& x, int64_t root, int group) {
  const char* op = "dist_broadcast";
  auto comm = group_for(op, x, group);
  if (root < 0 || root >= comm->size())
    fail("ERR_ARG", op, ": root ", root, " is not a rank of the group (0..", comm->size() - 1, ")");
  Tensor out = empty_tensor(x.shape, x.dtype, x.device(), op);
  const size_t n = static_cast<size_t>(x.numel());
  const int r = static_cast<int>(root);
  submit(op, x.device(), {x}, {out}, [comm, x, out, n, r] { comm->broadcast(x.data(), out.data(), n, x.dtype, r); });
  return out;
}

void dist_barrier_async(std::function<void(std::shared_ptr<const MomaException>)> done, int group) {
  auto comm = dist::process_group("dist_barrier", group);
  const Device device = comm->device();
  count_host_sync(device);
  Task task;
  task.op = "dist_barrier";
  task.run = [comm, device, done] {
    std::shared_ptr<const MomaException> error;
    try {
      comm->barrier();
      if (device.is_cuda()) cuda::synchronize(device.index, "dist_barrier");
    } catch (const MomaException& e) {
      std::string message = e.what();
      if (message.rfind("dist_barrier", 0) != 0) message = "dist_barrier: " + message;
      error = std::make_shared<const MomaException>(e.code(), message);
    }
    done(error);
  };
  submit(device, std::move(task));
}

void dist_init_async(const dist::InitOptions& opts, std::function<void(std::shared_ptr<const MomaException>)> done) {
  std::thread([opts, done] {
    std::shared_ptr<const MomaException> error;
    try {
      dist::init_process_group(opts);
    } catch (const MomaException& e) {
      std::string message = e.what();
      if (message.rfind("dist_init", 0) != 0) message = "dist_init: " + message;
      error = std::make_shared<const MomaException>(e.code(), message);
    } catch (const std::exception& e) {
      error = std::make_shared<const MomaException>("ERR_INTERNAL", std::string("dist_init: ") + e.what());
    }
    done(error);
  }).detach();
}

}  // namespace moma::ops
