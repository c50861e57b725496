// libmoma_gloo.so: moma's CPU collectives over gloo (the library PyTorch uses for CPU tensors),
// behind the C interface of gloo_plugin_abi.h. Built only where gloo is installed (cmake/dist.cmake)
// and dlopened by the core on first use (gloo_backend.cc), so the addon loads without libgloo0.
//
// Connection: gloo's full mesh over its tcp transport, addresses exchanged through moma's rendezvous
// store (StoreAdapter below). Algorithms: gloo::allreduce (ring), gloo::allgather, gloo::broadcast,
// gloo::barrier. Reduce-scatter is gloo::allreduce into a scratch buffer and a copy of this rank's
// chunk: twice the traffic of a dedicated reduce-scatter, and its bits are exactly those of
// all-reduce, so ZeRO's reduce-scatter + all-gather equals an all-reduce. All-to-all-v is gloo's
// alltoallv exchange (every pair sends and receives its slice through unbound buffers at the
// given byte offsets, which gloo::alltoallv only takes packed).
// Every collective carries a fresh tag (same sequence on every rank: ranks call in one order) and
// the context's timeout; gloo's exceptions become error text.
#include <gloo/allgather.h>
#include <gloo/allreduce.h>
#include <gloo/barrier.h>
#include <gloo/broadcast.h>
#include <gloo/math.h>
#include <gloo/rendezvous/context.h>
#include <gloo/rendezvous/store.h>
#include <gloo/transport/tcp/device.h>
#include <gloo/types.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <exception>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "gloo_plugin_abi.h"

namespace {

constexpr size_t kErrLen = 1024;

class StoreAdapter : public gloo::rendezvous::Store {
 public:
  StoreAdapter(const MomaGlooStore& store, std::chrono::milliseconds timeout) : store_(store), timeout_(timeout) {}

  void set(const std::string& key, const std::vector<char>& data) override {
    char err[kErrLen] = {0};
    if (store_.set(store_.self, key.c_str(), data.data(), data.size(), err, sizeof err)) throw std::runtime_error(err);
  }

  std::vector<char> get(const std::string& key) override {
    char err[kErrLen] = {0};
    std::vector<char> value;
    auto sink = [](void* ctx, const void* data, size_t n) {
      auto* v = static_cast<std::vector<char>*>(ctx);
      v->assign(static_cast<const char*>(data), static_cast<const char*>(data) + n);
    };
    if (store_.get(store_.self, key.c_str(), &value, sink, err, sizeof err)) throw std::runtime_error(err);
    return value;
  }

  void wait(const std::vector<std::string>& keys) override { wait(keys, timeout_); }

  void wait(const std::vector<std::string>& keys, const std::chrono::milliseconds& timeout) override {
    char err[kErrLen] = {0};
    std::vector<const char*> names;
    for (const auto& k : keys) names.push_back(k.c_str());
    auto ms = timeout.count() > 0 ? timeout.count() : timeout_.count();
    if (store_.wait(store_.self, names.data(), names.size(), ms, err, sizeof err)) throw std::runtime_error(err);
  }

 private:
  MomaGlooStore store_;
  std::chrono::milliseconds timeout_;
};

int report(const char* what, const std::exception& e, char* err, size_t err_len) {
  if (err && err_len) std::snprintf(err, err_len, "gloo %s: %s", what, e.what());
  return 1;
}

template <typename T>
gloo::AllreduceOptions::Func reduce_fn(int op) {
  using Fn = void (*)(void*, const void*, const void*, size_t);
  return op == MOMA_GLOO_MAX ? static_cast<Fn>(&gloo::max<T>) : static_cast<Fn>(&gloo::sum<T>);
}

}  // namespace

struct MomaGlooContext {
  std::shared_ptr<gloo::rendezvous::Context> context;
  uint32_t tag = 0;
  std::chrono::milliseconds timeout;
  std::vector<char> scratch;  // reduce-scatter's all-reduce buffer
  uint32_t next_tag() { return tag++; }
};

namespace {

template <typename T>
void allreduce_typed(MomaGlooContext* c, const void* in, void* out, size_t count, int op) {
  gloo::AllreduceOptions opts(c->context);
  if (in != out) opts.setInput(const_cast<T*>(static_cast<const T*>(in)), count);
  opts.setOutput(static_cast<T*>(out), count);
  opts.setReduceFunction(reduce_fn<T>(op));
  opts.setAlgorithm(gloo::AllreduceOptions::Algorithm::RING);
  opts.setTag(c->next_tag());
  opts.setTimeout(c->timeout);
  gloo::allreduce(opts);
}

void allreduce_any(MomaGlooContext* c, const void* in, void* out, size_t count, int dtype, int op) {
  if (dtype == MOMA_GLOO_I32) allreduce_typed<int32_t>(c, in, out, count, op);
  else allreduce_typed<float>(c, in, out, count, op);
}

}  // namespace

extern "C" {

int moma_gloo_abi_version(void) { return MOMA_GLOO_ABI_VERSION; }

MomaGlooContext* moma_gloo_connect(int rank, int size, const char* hostname, int64_t timeout_ms,
                                   const MomaGlooStore* store, char* err, size_t err_len) {
  try {
    auto ctx = std::make_unique<MomaGlooContext>();
    ctx->timeout = std::chrono::milliseconds(timeout_ms);
    gloo::transport::tcp::attr attr;
    attr.hostname = hostname;
    auto device = gloo::transport::tcp::CreateDevice(attr);
    ctx->context = std::make_shared<gloo::rendezvous::Context>(rank, size);
    ctx->context->setTimeout(ctx->timeout);
    StoreAdapter adapter(*store, ctx->timeout);
    ctx->context->connectFullMesh(adapter, device);
    return ctx.release();
  } catch (const std::exception& e) {
    report("connect", e, err, err_len);
    return nullptr;
  }
}

void moma_gloo_close(MomaGlooContext* ctx) { delete ctx; }

int moma_gloo_allreduce(MomaGlooContext* c, const void* in, void* out, size_t count, int dtype, int op, char* err,
                        size_t err_len) {
  if (count == 0) return 0;
  try {
    allreduce_any(c, in, out, count, dtype, op);
    return 0;
  } catch (const std::exception& e) {
    return report("allreduce", e, err, err_len);
  }
}

int moma_gloo_reduce_scatter(MomaGlooContext* c, const void* in, void* out, size_t count, int dtype, int op,
                             char* err, size_t err_len) {
  if (count == 0) return 0;
  try {
    const size_t chunk_bytes = count * 4;  // both element types are 4 bytes
    const size_t size = static_cast<size_t>(c->context->size);
    c->scratch.resize(chunk_bytes * size);
    allreduce_any(c, in, c->scratch.data(), count * size, dtype, op);
    std::memcpy(out, c->scratch.data() + chunk_bytes * static_cast<size_t>(c->context->rank), chunk_bytes);
    return 0;
  } catch (const std::exception& e) {
    return report("reduce_scatter", e, err, err_len);
  }
}

int moma_gloo_allgather(MomaGlooContext* c, const void* in, void* out, size_t bytes, char* err, size_t err_len) {
  if (bytes == 0) return 0;
  try {
    gloo::AllgatherOptions opts(c->context);
    opts.setInput(const_cast<uint8_t*>(static_cast<const uint8_t*>(in)), bytes);
    opts.setOutput(static_cast<uint8_t*>(out), bytes * static_cast<size_t>(c->context->size));
    opts.setTag(c->next_tag());
    opts.setTimeout(c->timeout);
    gloo::allgather(opts);
    return 0;
  } catch (const std::exception& e) {
    return report("allgather", e, err, err_len);
  }
}

int moma_gloo_alltoallv(MomaGlooContext* c, const void* in, const int64_t* send_bytes, const int64_t* send_offsets,
                        void* out, const int64_t* recv_bytes, const int64_t* recv_offsets, char* err,
                        size_t err_len) {
  try {
    const int rank = c->context->rank, size = c->context->size;
    size_t in_extent = 0, out_extent = 0;
    for (int p = 0; p < size; ++p) {
      in_extent = std::max(in_extent, static_cast<size_t>(send_offsets[p] + send_bytes[p]));
      out_extent = std::max(out_extent, static_cast<size_t>(recv_offsets[p] + recv_bytes[p]));
    }
    const uint32_t tag = c->next_tag();
    std::unique_ptr<gloo::transport::UnboundBuffer> send_buf, recv_buf;
    if (in_extent) send_buf = c->context->createUnboundBuffer(const_cast<void*>(in), in_extent);
    if (out_extent) recv_buf = c->context->createUnboundBuffer(out, out_extent);
    const uint64_t slot = gloo::Slot::build(gloo::kAlltoallSlotPrefix, tag);
    int sends = 0, recvs = 0;
    // Peers in gloo::alltoallv's order: step i sends to rank + i and receives from rank - i.
    for (int i = 1; i < size; ++i) {
      const int to = (rank + i) % size, from = (rank + size - i) % size;
      if (send_bytes[to]) {
        send_buf->send(to, slot, static_cast<size_t>(send_offsets[to]), static_cast<size_t>(send_bytes[to]));
        ++sends;
      }
      if (recv_bytes[from]) {
        recv_buf->recv(from, slot, static_cast<size_t>(recv_offsets[from]), static_cast<size_t>(recv_bytes[from]));
        ++recvs;
      }
    }
    if (recv_bytes[rank])
      std::memcpy(static_cast<char*>(out) + recv_offsets[rank], static_cast<const char*>(in) + send_offsets[rank],
                  static_cast<size_t>(recv_bytes[rank]));
    for (int i = 0; i < sends; ++i)
      if (!send_buf->waitSend(c->timeout)) throw std::runtime_error("timed out sending to a peer");
    for (int i = 0; i < recvs; ++i)
      if (!recv_buf->waitRecv(c->timeout)) throw std::runtime_error("timed out receiving from a peer");
    return 0;
  } catch (const std::exception& e) {
    return report("alltoallv", e, err, err_len);
  }
}

int moma_gloo_broadcast(MomaGlooContext* c, const void* in, void* out, size_t bytes, int root, char* err,
                        size_t err_len) {
  if (bytes == 0) return 0;
  try {
    gloo::BroadcastOptions opts(c->context);
    if (c->context->rank == root) opts.setInput(const_cast<uint8_t*>(static_cast<const uint8_t*>(in)), bytes);
    opts.setOutput(static_cast<uint8_t*>(out), bytes);
    opts.setRoot(root);
    opts.setTag(c->next_tag());
    opts.setTimeout(c->timeout);
    gloo::broadcast(opts);
    return 0;
  } catch (const std::exception& e) {
    return report("broadcast", e, err, err_len);
  }
}

int moma_gloo_barrier(MomaGlooContext* c, char* err, size_t err_len) {
  try {
    gloo::BarrierOptions opts(c->context);
    opts.setTag(c->next_tag());
    opts.setTimeout(c->timeout);
    gloo::barrier(opts);
    return 0;
  } catch (const std::exception& e) {
    return report("barrier", e, err, err_len);
  }
}

}  // extern "C"
