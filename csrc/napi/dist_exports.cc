// Exports: the process group and the collectives on tensors (csrc/ops/dist.h). distInit and
// distBarrier return Promises settled from another thread through a thread-safe function (the
// rendezvous and the barrier wait for other processes); the collectives return their new output
// handle at once, the work queued on the tensor's device.
//
//   distInit({rank, worldSize, masterAddr, masterPort, backend: 'gloo' | 'nccl', device?, timeoutMs?})
//       -> Promise<void>   device defaults to 'cpu' (gloo) / 'cuda:0' (nccl); timeoutMs to
//                          MOMA_DIST_TIMEOUT_S or 300 s
//   distDestroy() -> undefined
//   distInfo() -> {initialized: false} | {initialized: true, rank, worldSize, backend, device,
//                  masterAddr, masterPort, timeoutMs}
//   distNewGroup(ranks: number[]) -> number   the id of the world's next sub-group (every rank
//                          calls it alike, members or not; csrc/dist/communicator.h new_group)
//   distAllReduce(x, op: 'sum' | 'avg' | 'max', group) -> TensorHandle
//   distReduceScatter(x, op, group) -> TensorHandle
//   distAllGather(x, group) -> TensorHandle
//   distAllToAllV(x, sendCounts: number[], recvCounts: number[], group) -> TensorHandle   (rows per rank)
//   distBroadcast(x, root: number, group) -> TensorHandle   (root: a rank of the group)
//   distBarrier(group) -> Promise<void>
//   distAllReduceStart(x, op, group) -> Work     a started all-reduce (ops::dist_all_reduce_start)
//   distReduceScatterStart(x, op, group) -> Work
//   distWait(work) -> TensorHandle              queues the wait; the result tensor
// `group` is a group id (0: the world; undefined means 0).
#include "bridge.h"
#include "dist/communicator.h"
#include "ops/dist.h"

namespace moma::napi {
namespace {

using Info = const Napi::CallbackInfo&;
using ErrorPtr = std::shared_ptr<const MomaException>;

// Resolves (undefined) or rejects `deferred` on the JS thread once another thread calls the result.
std::function<void(ErrorPtr)> settle_from_thread(Napi::Env env, const char* name, Napi::Promise::Deferred deferred) {
  auto state = std::make_shared<Napi::Promise::Deferred>(deferred);
  auto tsfn = Napi::ThreadSafeFunction::New(env, Napi::Function::New(env, [](const Napi::CallbackInfo&) {}), name, 0, 1);
  return [tsfn, state](ErrorPtr error) mutable {
    tsfn.BlockingCall([state, error](Napi::Env env, Napi::Function) {
      Napi::HandleScope scope(env);
      if (error) state->Reject(make_error(env, error->code(), error->what()));
      else state->Resolve(env.Undefined());
    });
    tsfn.Release();
  };
}

std::string to_text(const Napi::Value& v, const char* op, const char* arg) {
  if (!v.IsString()) fail("ERR_ARG", op, ": ", arg, " must be a string");
  return v.As<Napi::String>().Utf8Value();
}

int to_int32(const Napi::Value& v, const char* op, const char* arg) {
  int64_t i = to_int(v, op, arg);
  if (i < INT32_MIN || i > INT32_MAX) fail("ERR_ARG", op, ": ", arg, " ", i, " is out of range");
  return static_cast<int>(i);
}

Tensor tensor_arg(Info info, const char* op) { return TensorHandle::unwrap(info[0], op, "x"); }

int group_arg(const Napi::Value& v, const char* op) {
  if (v.IsUndefined()) return dist::kWorldGroup;
  const int id = to_int32(v, op, "group");
  if (id < 0) fail("ERR_ARG", op, ": group id ", id, " is negative");
  return id;
}

Napi::Value dist_init(Info info) {
  const char* op = "dist_init";
  if (!info[0].IsObject()) fail("ERR_ARG", op, ": options must be an object {rank, worldSize, masterAddr, masterPort, backend}");
  Napi::Object o = info[0].As<Napi::Object>();
  dist::InitOptions opts;
  opts.rank = to_int32(o.Get("rank"), op, "rank");
  opts.world_size = to_int32(o.Get("worldSize"), op, "worldSize");
  opts.master_addr = to_text(o.Get("masterAddr"), op, "masterAddr");
  opts.master_port = to_int32(o.Get("masterPort"), op, "masterPort");
  opts.backend = dist::parse_backend(to_text(o.Get("backend"), op, "backend"), op);
  Napi::Value device = o.Get("device");
  opts.device = device.IsUndefined() ? parse_device(opts.backend == dist::Backend::Nccl ? "cuda:0" : "cpu", op)
                                     : to_device(device, op, "device");
  Napi::Value timeout = o.Get("timeoutMs");
  if (!timeout.IsUndefined()) {
    int64_t ms = to_int(timeout, op, "timeoutMs");
    if (ms <= 0) fail("ERR_ARG", op, ": timeoutMs ", ms, " must be positive");
    opts.timeout = std::chrono::milliseconds(ms);
  }
  dist::resolve_timeout(opts.timeout);  // a bad MOMA_DIST_TIMEOUT_S throws here, on the JS thread
  Napi::Env env = info.Env();
  auto deferred = Napi::Promise::Deferred::New(env);
  ops::dist_init_async(opts, settle_from_thread(env, "moma.distInit", deferred));
  return deferred.Promise();
}

Napi::Value dist_destroy(Info info) {
  dist::destroy_process_group();
  return info.Env().Undefined();
}

Napi::Value dist_info(Info info) {
  Napi::Env env = info.Env();
  Napi::Object out = Napi::Object::New(env);
  bool initialized = dist::process_group_initialized();
  out.Set("initialized", Napi::Boolean::New(env, initialized));
  if (!initialized) return out;
  dist::InitOptions o = dist::process_group_options();
  out.Set("rank", Napi::Number::New(env, o.rank));
  out.Set("worldSize", Napi::Number::New(env, o.world_size));
  out.Set("backend", Napi::String::New(env, dist::backend_name(o.backend)));
  out.Set("device", Napi::String::New(env, o.device.str()));
  out.Set("masterAddr", Napi::String::New(env, o.master_addr));
  out.Set("masterPort", Napi::Number::New(env, o.master_port));
  out.Set("timeoutMs", Napi::Number::New(env, static_cast<double>(o.timeout.count())));
  return out;
}

Napi::Value dist_new_group(Info info) {
  const char* op = "dist_new_group";
  std::vector<int64_t> listed = to_int_list(info[0], op, "ranks");
  std::vector<int> ranks;
  for (int64_t r : listed) {
    if (r < INT32_MIN || r > INT32_MAX) fail("ERR_ARG", op, ": rank ", r, " is out of range");
    ranks.push_back(static_cast<int>(r));
  }
  return Napi::Number::New(info.Env(), dist::new_group(ranks, op));
}

Napi::Value dist_all_reduce(Info info) {
  const char* op = "dist_all_reduce";
  Tensor x = tensor_arg(info, op);
  return TensorHandle::wrap(info.Env(), ops::dist_all_reduce(x, dist::parse_reduce_op(to_text(info[1], op, "op"), op),
                                                             group_arg(info[2], op)));
}

Napi::Value dist_reduce_scatter(Info info) {
  const char* op = "dist_reduce_scatter";
  Tensor x = tensor_arg(info, op);
  return TensorHandle::wrap(info.Env(), ops::dist_reduce_scatter(x, dist::parse_reduce_op(to_text(info[1], op, "op"), op),
                                                                 group_arg(info[2], op)));
}

Napi::Value dist_all_gather(Info info) {
  const char* op = "dist_all_gather";
  return TensorHandle::wrap(info.Env(), ops::dist_all_gather(tensor_arg(info, op), group_arg(info[1], op)));
}

Napi::Value dist_all_to_all_v(Info info) {
  const char* op = "dist_all_to_all_v";
  Tensor x = tensor_arg(info, op);
  std::vector<int64_t> send = to_int_list(info[1], op, "sendCounts");
  std::vector<int64_t> recv = to_int_list(info[2], op, "recvCounts");
  return TensorHandle::wrap(info.Env(), ops::dist_all_to_all_v(x, send, recv, group_arg(info[3], op)));
}

Napi::Value dist_broadcast(Info info) {
  const char* op = "dist_broadcast";
  Tensor x = tensor_arg(info, op);
  return TensorHandle::wrap(info.Env(), ops::dist_broadcast(x, to_int(info[1], op, "root"), group_arg(info[2], op)));
}

using Work = Napi::External<ops::StartedCollective>;

Napi::Value wrap_work(Napi::Env env, ops::StartedCollective started) {
  return Work::New(env, new ops::StartedCollective(std::move(started)), [](Napi::Env, ops::StartedCollective* w) { delete w; });
}

Napi::Value dist_all_reduce_start(Info info) {
  const char* op = "dist_all_reduce_async";
  Tensor x = tensor_arg(info, op);
  return wrap_work(info.Env(), ops::dist_all_reduce_start(x, dist::parse_reduce_op(to_text(info[1], op, "op"), op),
                                                          group_arg(info[2], op)));
}

Napi::Value dist_reduce_scatter_start(Info info) {
  const char* op = "dist_reduce_scatter_async";
  Tensor x = tensor_arg(info, op);
  return wrap_work(info.Env(), ops::dist_reduce_scatter_start(x, dist::parse_reduce_op(to_text(info[1], op, "op"), op),
                                                              group_arg(info[2], op)));
}

Napi::Value dist_wait(Info info) {
  if (!info[0].IsExternal()) fail("ERR_ARG", "dist_wait: work must be what distAllReduceStart / distReduceScatterStart returned");
  return TensorHandle::wrap(info.Env(), ops::dist_wait(*info[0].As<Work>().Data()));
}

Napi::Value dist_barrier(Info info) {
  Napi::Env env = info.Env();
  auto deferred = Napi::Promise::Deferred::New(env);
  const int group = group_arg(info[0], "dist_barrier");
  dist::process_group("dist_barrier", group);  // no such group: throw here, not in the promise
  ops::dist_barrier_async(settle_from_thread(env, "moma.distBarrier", deferred), group);
  return deferred.Promise();
}

}  // namespace

void register_dist_exports(Napi::Env env, Napi::Object exports) {
  exports.Set("distInit", guarded(env, "dist_init", dist_init));
  exports.Set("distDestroy", guarded(env, "dist_destroy", dist_destroy));
  exports.Set("distInfo", guarded(env, "dist_info", dist_info));
  exports.Set("distNewGroup", guarded(env, "dist_new_group", dist_new_group));
  exports.Set("distAllReduce", guarded(env, "dist_all_reduce", dist_all_reduce));
  exports.Set("distReduceScatter", guarded(env, "dist_reduce_scatter", dist_reduce_scatter));
  exports.Set("distAllGather", guarded(env, "dist_all_gather", dist_all_gather));
  exports.Set("distAllToAllV", guarded(env, "dist_all_to_all_v", dist_all_to_all_v));
  exports.Set("distBroadcast", guarded(env, "dist_broadcast", dist_broadcast));
  exports.Set("distBarrier", guarded(env, "dist_barrier", dist_barrier));
  exports.Set("distAllReduceStart", guarded(env, "dist_all_reduce_async", dist_all_reduce_start));
  exports.Set("distReduceScatterStart", guarded(env, "dist_reduce_scatter_async", dist_reduce_scatter_start));
  exports.Set("distWait", guarded(env, "dist_wait", dist_wait));
}

}  // namespace moma::napi
