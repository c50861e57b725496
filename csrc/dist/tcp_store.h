// The rendezvous store of a process group: a small key-value store over TCP, like torch's c10d
// TCPStore. Rank 0 runs the server (one background thread, poll() over every connection); every
// rank, rank 0 included, talks to it through a client. Ranks use it once, at init: to check that
// they agree on the world (communicator.cc), to exchange the NCCL unique id, and as gloo's
// rendezvous store (the tcp transport's addresses).
//
// Protocol (little-endian, length-prefixed; one request, one reply, in order per connection):
//   request  = u8 command, then its fields; a string is u32 length + bytes, a list is u32 count +
//              strings, an integer is i64.
//   SET   key value           -> u8 kOk
//   GET   key timeout_ms      -> u8 kOk value | u8 kTimeout      (waits until the key exists)
//   ADD   key delta           -> u8 kOk i64 new value            (the value is kept as decimal text)
//   CHECK keys                -> u8 1 if every key exists, else 0
//   WAIT  keys timeout_ms     -> u8 kOk | u8 kTimeout            (waits until every key exists)
// Waits are held by the server (a reply is sent when the keys arrive or the deadline passes), so
// a client stays usable after a timeout.
//
// Every failure is MomaException("ERR_DIST") naming what was waited for, the store's address and
// the time spent.
#pragma once
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace moma::dist {

using Bytes = std::vector<uint8_t>;

// The server: listens on every interface at `port` (SO_REUSEADDR; port 0 picks a free one) and
// serves until destroyed. Throws ERR_DIST when it cannot listen.
class TcpStoreServer {
 public:
  explicit TcpStoreServer(int port);
  ~TcpStoreServer();
  TcpStoreServer(const TcpStoreServer&) = delete;
  TcpStoreServer& operator=(const TcpStoreServer&) = delete;
  int port() const { return port_; }
  // Keeps serving for at least `grace` and then while any client is connected, up to `limit`: a
  // failing rank 0 calls it so that the other ranks read why (the abort key) before it goes.
  void linger(std::chrono::milliseconds grace, std::chrono::milliseconds limit);

 private:
  void serve();
  std::atomic<int> connections_{0};
  int listen_fd_ = -1;
  int wake_pipe_[2] = {-1, -1};  // a byte written here ends serve()
  int port_ = 0;
  std::thread thread_;
};

class TcpStoreClient {
 public:
  // Connects to host:port, retrying (ranks start in any order) until `timeout` passes.
  // `timeout` is also the default for get and wait.
  TcpStoreClient(const std::string& host, int port, std::chrono::milliseconds timeout);
  ~TcpStoreClient();
  TcpStoreClient(const TcpStoreClient&) = delete;
  TcpStoreClient& operator=(const TcpStoreClient&) = delete;

  void set(const std::string& key, const Bytes& value);
  void set(const std::string& key, const std::string& value);
  Bytes get(const std::string& key);  // waits up to the client's timeout for the key
  Bytes get(const std::string& key, std::chrono::milliseconds timeout);
  std::string get_string(const std::string& key);
  int64_t add(const std::string& key, int64_t delta);
  bool check(const std::vector<std::string>& keys);
  void wait(const std::vector<std::string>& keys);
  void wait(const std::vector<std::string>& keys, std::chrono::milliseconds timeout);

  std::chrono::milliseconds timeout() const { return timeout_; }
  std::string address() const;       // "host:port" of the server
  std::string local_address() const;  // this end's IP address (the interface that reaches the server)

 private:
  void send_all(const Bytes& request, const char* what);
  void recv_all(void* dst, size_t n, const char* what, std::chrono::steady_clock::time_point deadline);
  uint8_t request(const Bytes& req, const char* what, std::chrono::milliseconds wait_budget);

  std::string host_;
  int port_;
  std::chrono::milliseconds timeout_;
  int fd_ = -1;
  std::mutex mutex_;
};

// A free TCP port on this machine (bound to port 0, read back, closed): for tests.
int pick_free_port();

}  // namespace moma::dist
