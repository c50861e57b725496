// The two Communicator backends (internal to csrc/dist). Each is built over a rendezvous store
// client every rank of the group has connected; it uses the store only while it connects, under
// the keys `prefix`... ("" for the world, "moma/group/<id>/" for a sub-group). opts.rank and
// opts.world_size are the rank and size within the group being connected.
#pragma once
#include <memory>

#include "communicator.h"
#include "tcp_store.h"

namespace moma::dist {

// gloo over tcp (gloo_backend.cc): ERR_LOAD when the plugin or libgloo.so.0 cannot be loaded.
std::unique_ptr<Communicator> make_gloo_communicator(const InitOptions& opts, TcpStoreClient& store,
                                                     const std::string& prefix, std::chrono::milliseconds timeout);

// NCCL on opts.device (nccl_backend.cc): ERR_LOAD when libnccl.so.2 cannot be found, ERR_DEVICE in
// a build without CUDA.
std::unique_ptr<Communicator> make_nccl_communicator(const InitOptions& opts, TcpStoreClient& store,
                                                     const std::string& prefix, std::chrono::milliseconds timeout);

}  // namespace moma::dist
