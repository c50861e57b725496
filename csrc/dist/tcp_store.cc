#include "tcp_store.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <map>
#include <sstream>

#include "../core/error.h"

namespace moma::dist {
namespace {

using Clock = std::chrono::steady_clock;

enum Command : uint8_t { kSet = 1, kGet = 2, kAdd = 3, kCheck = 4, kWait = 5 };
enum Status : uint8_t { kOk = 0, kTimeout = 1 };

// Longest string (key or value) a request may carry; a longer length means a confused peer.
constexpr uint32_t kMaxField = 1u << 30;

std::string seconds_since(Clock::time_point start) {
  std::ostringstream os;
  os.precision(1);
  os << std::fixed << std::chrono::duration<double>(Clock::now() - start).count() << " s";
  return os.str();
}

std::string join_keys(const std::vector<std::string>& keys) {
  std::string s;
  for (size_t i = 0; i < keys.size(); ++i) s += (i ? ", '" : "'") + keys[i] + "'";
  return keys.size() == 1 ? "key " + s : "keys " + s;
}

void put_u32(Bytes& b, uint32_t v) {
  for (int i = 0; i < 4; ++i) b.push_back(static_cast<uint8_t>(v >> (8 * i)));
}
void put_i64(Bytes& b, int64_t v) {
  uint64_t u = static_cast<uint64_t>(v);
  for (int i = 0; i < 8; ++i) b.push_back(static_cast<uint8_t>(u >> (8 * i)));
}
void put_str(Bytes& b, const void* data, size_t n) {
  put_u32(b, static_cast<uint32_t>(n));
  const auto* p = static_cast<const uint8_t*>(data);
  b.insert(b.end(), p, p + n);
}
void put_str(Bytes& b, const std::string& s) { put_str(b, s.data(), s.size()); }
void put_keys(Bytes& b, const std::vector<std::string>& keys) {
  put_u32(b, static_cast<uint32_t>(keys.size()));
  for (const auto& k : keys) put_str(b, k);
}
uint32_t get_u32(const uint8_t* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= static_cast<uint32_t>(p[i]) << (8 * i);
  return v;
}
int64_t get_i64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= static_cast<uint64_t>(p[i]) << (8 * i);
  return static_cast<int64_t>(v);
}

// Reads fields from a received buffer; `ok` turns false when the buffer ends early (the request
// is incomplete: wait for more bytes) and `bad` when a length is absurd (drop the connection).
struct Reader {
  const Bytes& buf;
  size_t pos = 0;
  bool ok = true, bad = false;
  bool need(size_t n) {
    if (ok && buf.size() - pos < n) ok = false;
    return ok;
  }
  uint8_t u8() { return need(1) ? buf[pos++] : 0; }
  uint32_t u32() {
    if (!need(4)) return 0;
    uint32_t v = get_u32(&buf[pos]);
    pos += 4;
    return v;
  }
  int64_t i64() {
    if (!need(8)) return 0;
    int64_t v = get_i64(&buf[pos]);
    pos += 8;
    return v;
  }
  std::string str() {
    uint32_t n = u32();
    if (n > kMaxField) bad = true;
    if (bad || !need(n)) return {};
    std::string s(reinterpret_cast<const char*>(&buf[pos]), n);
    pos += n;
    return s;
  }
  std::vector<std::string> keys() {
    uint32_t n = u32();
    if (n > kMaxField / 4) bad = true;
    std::vector<std::string> out;
    for (uint32_t i = 0; i < n && ok && !bad; ++i) out.push_back(str());
    return out;
  }
};

void set_nonblocking(int fd, bool on) {
  int flags = fcntl(fd, F_GETFL, 0);
  fcntl(fd, F_SETFL, on ? (flags | O_NONBLOCK) : (flags & ~O_NONBLOCK));
}

void set_nodelay(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

// ---- server state, owned by the serve() thread ---------------------------------------------
struct Connection {
  int fd = -1;
  Bytes in, out;
  bool waiting = false;  // a GET or WAIT of this connection is held; its later requests wait
};

struct Waiter {
  Connection* conn;
  uint8_t command;  // kGet or kWait
  std::vector<std::string> keys;
  Clock::time_point deadline;
};

class ServerState {
 public:
  // Parses and answers the complete requests in c.in; false when the connection must be dropped.
  bool handle_input(Connection& c) {
    while (!c.waiting && !c.in.empty()) {
      Reader r{c.in};
      uint8_t cmd = r.u8();
      Bytes reply;
      switch (cmd) {
        case kSet: {
          std::string key = r.str();
          std::string value = r.str();
          if (r.bad) return false;
          if (!r.ok) return true;
          kv_[key] = Bytes(value.begin(), value.end());
          reply.push_back(kOk);
          break;
        }
        case kAdd: {
          std::string key = r.str();
          int64_t delta = r.i64();
          if (r.bad) return false;
          if (!r.ok) return true;
          int64_t value = delta;
          auto it = kv_.find(key);
          if (it != kv_.end()) value += std::strtoll(std::string(it->second.begin(), it->second.end()).c_str(), nullptr, 10);
          std::string text = std::to_string(value);
          kv_[key] = Bytes(text.begin(), text.end());
          reply.push_back(kOk);
          put_i64(reply, value);
          break;
        }
        case kCheck: {
          std::vector<std::string> keys = r.keys();
          if (r.bad) return false;
          if (!r.ok) return true;
          reply.push_back(all_present(keys) ? 1 : 0);
          break;
        }
        case kGet:
        case kWait: {
          std::vector<std::string> keys = cmd == kGet ? std::vector<std::string>{r.str()} : r.keys();
          int64_t timeout_ms = r.i64();
          if (r.bad) return false;
          if (!r.ok) return true;
          c.waiting = true;
          waiters_.push_back({&c, cmd, std::move(keys), Clock::now() + std::chrono::milliseconds(std::max<int64_t>(0, timeout_ms))});
          break;
        }
        default:
          return false;
      }
      c.in.erase(c.in.begin(), c.in.begin() + static_cast<std::ptrdiff_t>(r.pos));
      c.out.insert(c.out.end(), reply.begin(), reply.end());
    }
    return true;
  }

  // Answers the held waits whose keys are all present or whose deadline has passed.
  void settle_waiters() {
    auto now = Clock::now();
    for (size_t i = 0; i < waiters_.size();) {
      Waiter& w = waiters_[i];
      bool present = all_present(w.keys);
      if (!present && now < w.deadline) {
        ++i;
        continue;
      }
      Bytes& out = w.conn->out;
      if (!present) {
        out.push_back(kTimeout);
      } else {
        out.push_back(kOk);
        if (w.command == kGet) {
          const Bytes& v = kv_[w.keys[0]];
          put_str(out, v.data(), v.size());
        }
      }
      w.conn->waiting = false;
      waiters_.erase(waiters_.begin() + static_cast<std::ptrdiff_t>(i));
    }
  }

  void drop(Connection* c) {
    waiters_.erase(std::remove_if(waiters_.begin(), waiters_.end(), [c](const Waiter& w) { return w.conn == c; }),
                   waiters_.end());
  }

  // Milliseconds until the nearest held deadline (-1: none).
  int poll_timeout_ms() const {
    if (waiters_.empty()) return -1;
    auto nearest = waiters_[0].deadline;
    for (const auto& w : waiters_) nearest = std::min(nearest, w.deadline);
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(nearest - Clock::now()).count() + 1;
    return static_cast<int>(std::clamp<int64_t>(ms, 0, 60000));
  }

 private:
  bool all_present(const std::vector<std::string>& keys) const {
    for (const auto& k : keys)
      if (!kv_.count(k)) return false;
    return true;
  }
  std::map<std::string, Bytes> kv_;
  std::vector<Waiter> waiters_;
};

// Writes what the socket takes now; false when the connection is broken.
bool flush(Connection& c) {
  while (!c.out.empty()) {
    ssize_t n = ::send(c.fd, c.out.data(), c.out.size(), MSG_NOSIGNAL);
    if (n > 0) {
      c.out.erase(c.out.begin(), c.out.begin() + n);
    } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
      return true;
    } else {
      return false;
    }
  }
  return true;
}

}  // namespace

// ---- server ------------------------------------------------------------------------------------
TcpStoreServer::TcpStoreServer(int port) {
  listen_fd_ = ::socket(AF_INET6, SOCK_STREAM, 0);
  bool v6 = listen_fd_ >= 0;
  if (!v6) listen_fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
  if (listen_fd_ < 0) fail("ERR_DIST", "rendezvous store: cannot create a socket: ", std::strerror(errno));
  int one = 1, zero = 0;
  setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  int rc;
  if (v6) {
    setsockopt(listen_fd_, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);  // IPv4 clients too
    sockaddr_in6 addr{};
    addr.sin6_family = AF_INET6;
    addr.sin6_addr = in6addr_any;
    addr.sin6_port = htons(static_cast<uint16_t>(port));
    rc = ::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  } else {
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_ANY);
    addr.sin_port = htons(static_cast<uint16_t>(port));
    rc = ::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  }
  if (rc != 0 || ::listen(listen_fd_, 1024) != 0) {
    std::string why = std::strerror(errno);
    ::close(listen_fd_);
    fail("ERR_DIST", "rendezvous store: rank 0 cannot listen on port ", port, ": ", why,
         " (is another job using MASTER_PORT ", port, "?)");
  }
  sockaddr_storage bound{};
  socklen_t len = sizeof bound;
  getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&bound), &len);
  port_ = ntohs(bound.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port
                                            : reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  if (::pipe(wake_pipe_) != 0) {
    ::close(listen_fd_);
    fail("ERR_DIST", "rendezvous store: cannot create a pipe: ", std::strerror(errno));
  }
  set_nonblocking(listen_fd_, true);
  thread_ = std::thread([this] { serve(); });
}

TcpStoreServer::~TcpStoreServer() {
  char byte = 0;
  ssize_t ignored = ::write(wake_pipe_[1], &byte, 1);
  (void)ignored;
  if (thread_.joinable()) thread_.join();
  ::close(listen_fd_);
  ::close(wake_pipe_[0]);
  ::close(wake_pipe_[1]);
}

void TcpStoreServer::linger(std::chrono::milliseconds grace, std::chrono::milliseconds limit) {
  auto start = Clock::now();
  for (;;) {
    auto waited = Clock::now() - start;
    if (waited >= limit || (waited >= grace && connections_.load() == 0)) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

void TcpStoreServer::serve() {
  ServerState state;
  std::vector<std::unique_ptr<Connection>> conns;
  std::vector<pollfd> fds;
  for (;;) {
    fds.clear();
    fds.push_back({wake_pipe_[0], POLLIN, 0});
    fds.push_back({listen_fd_, POLLIN, 0});
    for (const auto& c : conns) fds.push_back({c->fd, static_cast<short>(POLLIN | (c->out.empty() ? 0 : POLLOUT)), 0});
    int ready = ::poll(fds.data(), fds.size(), state.poll_timeout_ms());
    if (ready < 0 && errno != EINTR) break;
    if (fds[0].revents) break;
    if (fds[1].revents & POLLIN) {
      for (;;) {
        int fd = ::accept(listen_fd_, nullptr, nullptr);
        if (fd < 0) break;
        set_nonblocking(fd, true);
        set_nodelay(fd);
        conns.push_back(std::make_unique<Connection>());
        conns.back()->fd = fd;
        connections_.fetch_add(1);
      }
    }
    std::vector<Connection*> dead;
    for (size_t i = 2; i < fds.size(); ++i) {
      Connection& c = *conns[i - 2];
      bool alive = true;
      if (fds[i].revents & (POLLIN | POLLHUP | POLLERR)) {
        uint8_t buf[65536];
        ssize_t n = ::recv(c.fd, buf, sizeof buf, 0);
        if (n > 0) c.in.insert(c.in.end(), buf, buf + n);
        else if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) alive = false;
      }
      if (alive) alive = state.handle_input(c);
      if (!alive) dead.push_back(&c);
    }
    state.settle_waiters();
    // A reply may let a connection's next request run (it was held behind a wait).
    for (auto& c : conns)
      if (std::find(dead.begin(), dead.end(), c.get()) == dead.end() && !state.handle_input(*c)) dead.push_back(c.get());
    state.settle_waiters();
    for (auto& c : conns)
      if (std::find(dead.begin(), dead.end(), c.get()) == dead.end() && !flush(*c)) dead.push_back(c.get());
    for (Connection* c : dead) {
      state.drop(c);
      ::close(c->fd);
      conns.erase(std::find_if(conns.begin(), conns.end(), [c](const auto& p) { return p.get() == c; }));
      connections_.fetch_sub(1);
    }
  }
  for (auto& c : conns) ::close(c->fd);
}

// ---- client ------------------------------------------------------------------------------------
TcpStoreClient::TcpStoreClient(const std::string& host, int port, std::chrono::milliseconds timeout)
    : host_(host), port_(port), timeout_(timeout) {
  auto start = Clock::now();
  auto deadline = start + timeout;
  std::string last_error = "no address";
  auto pause = std::chrono::milliseconds(10);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  std::string service = std::to_string(port);
  for (;;) {
    addrinfo* list = nullptr;
    int gai = ::getaddrinfo(host.c_str(), service.c_str(), &hints, &list);
    if (gai != 0) {
      last_error = std::string("cannot resolve the host: ") + gai_strerror(gai);
    }
    for (addrinfo* a = list; a && fd_ < 0; a = a->ai_next) {
      int fd = ::socket(a->ai_family, a->ai_socktype, a->ai_protocol);
      if (fd < 0) continue;
      set_nonblocking(fd, true);
      int rc = ::connect(fd, a->ai_addr, a->ai_addrlen);
      if (rc != 0 && errno == EINPROGRESS) {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
        pollfd p{fd, POLLOUT, 0};
        if (::poll(&p, 1, static_cast<int>(std::clamp<int64_t>(left, 1, 10000))) == 1) {
          int err = 0;
          socklen_t len = sizeof err;
          getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
          rc = err == 0 ? 0 : -1;
          errno = err;
        } else {
          rc = -1;
          errno = ETIMEDOUT;
        }
      }
      if (rc == 0) {
        set_nonblocking(fd, false);
        set_nodelay(fd);
        fd_ = fd;
      } else {
        last_error = std::strerror(errno);
        ::close(fd);
      }
    }
    if (list) ::freeaddrinfo(list);
    if (fd_ >= 0) return;
    auto now = Clock::now();
    if (now >= deadline)
      fail("ERR_DIST", "could not connect to the rendezvous store at ", address(), " within ", seconds_since(start),
           " (last error: ", last_error, "); is rank 0 running, and are MASTER_ADDR and MASTER_PORT right?");
    std::this_thread::sleep_for(std::min<Clock::duration>(pause, deadline - now));
    pause = std::min(pause * 2, std::chrono::milliseconds(500));
  }
}

TcpStoreClient::~TcpStoreClient() {
  if (fd_ >= 0) ::close(fd_);
}

std::string TcpStoreClient::address() const {
  bool v6 = host_.find(':') != std::string::npos;
  return (v6 ? "[" + host_ + "]" : host_) + ":" + std::to_string(port_);
}

std::string TcpStoreClient::local_address() const {
  sockaddr_storage local{};
  socklen_t len = sizeof local;
  if (getsockname(fd_, reinterpret_cast<sockaddr*>(&local), &len) != 0) return "127.0.0.1";
  char text[INET6_ADDRSTRLEN] = {0};
  if (local.ss_family == AF_INET6) {
    auto* a = reinterpret_cast<sockaddr_in6*>(&local);
    if (IN6_IS_ADDR_V4MAPPED(&a->sin6_addr)) {
      in_addr v4;
      std::memcpy(&v4, &a->sin6_addr.s6_addr[12], 4);
      inet_ntop(AF_INET, &v4, text, sizeof text);
    } else {
      inet_ntop(AF_INET6, &a->sin6_addr, text, sizeof text);
    }
  } else {
    inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(&local)->sin_addr, text, sizeof text);
  }
  return text;
}

void TcpStoreClient::send_all(const Bytes& req, const char* what) {
  size_t sent = 0;
  while (sent < req.size()) {
    ssize_t n = ::send(fd_, req.data() + sent, req.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) fail("ERR_DIST", "rendezvous store at ", address(), ": sending ", what, " failed: ", std::strerror(errno));
    sent += static_cast<size_t>(n);
  }
}

void TcpStoreClient::recv_all(void* dst, size_t n, const char* what, Clock::time_point deadline) {
  auto* p = static_cast<uint8_t*>(dst);
  size_t got = 0;
  while (got < n) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    pollfd pfd{fd_, POLLIN, 0};
    int ready = left > 0 ? ::poll(&pfd, 1, static_cast<int>(std::min<int64_t>(left, 60000))) : 0;
    if (ready < 0 && errno == EINTR) continue;
    if (ready == 0 && Clock::now() >= deadline)
      fail("ERR_DIST", "rendezvous store at ", address(), ": no answer to ", what, " (the server is not responding)");
    if (ready == 0) continue;
    ssize_t r = ::recv(fd_, p + got, n - got, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r == 0) fail("ERR_DIST", "rendezvous store at ", address(), ": the server closed the connection during ", what, " (did rank 0 exit?)");
    if (r < 0) fail("ERR_DIST", "rendezvous store at ", address(), ": ", what, " failed: ", std::strerror(errno));
    got += static_cast<size_t>(r);
  }
}

// Sends a request and reads its status byte. The server answers a held wait by `wait_budget`;
// past that (plus the client's timeout for the network) the server is declared unresponsive.
uint8_t TcpStoreClient::request(const Bytes& req, const char* what, std::chrono::milliseconds wait_budget) {
  send_all(req, what);
  uint8_t status = 0;
  recv_all(&status, 1, what, Clock::now() + wait_budget + timeout_);
  return status;
}

void TcpStoreClient::set(const std::string& key, const Bytes& value) {
  std::lock_guard<std::mutex> lock(mutex_);
  Bytes req{kSet};
  put_str(req, key);
  put_str(req, value.data(), value.size());
  request(req, "set", std::chrono::milliseconds(0));
}

void TcpStoreClient::set(const std::string& key, const std::string& value) { set(key, Bytes(value.begin(), value.end())); }

Bytes TcpStoreClient::get(const std::string& key) { return get(key, timeout_); }

Bytes TcpStoreClient::get(const std::string& key, std::chrono::milliseconds timeout) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto start = Clock::now();
  Bytes req{kGet};
  put_str(req, key);
  put_i64(req, timeout.count());
  if (request(req, "get", timeout) == kTimeout)
    fail("ERR_DIST", "rendezvous store at ", address(), ": timed out after ", seconds_since(start), " waiting for key '", key, "'");
  uint8_t len_bytes[4];
  recv_all(len_bytes, 4, "get", Clock::now() + timeout_);
  Bytes value(get_u32(len_bytes));
  if (!value.empty()) recv_all(value.data(), value.size(), "get", Clock::now() + timeout_);
  return value;
}

std::string TcpStoreClient::get_string(const std::string& key) {
  Bytes b = get(key);
  return std::string(b.begin(), b.end());
}

int64_t TcpStoreClient::add(const std::string& key, int64_t delta) {
  std::lock_guard<std::mutex> lock(mutex_);
  Bytes req{kAdd};
  put_str(req, key);
  put_i64(req, delta);
  request(req, "add", std::chrono::milliseconds(0));
  uint8_t value[8];
  recv_all(value, 8, "add", Clock::now() + timeout_);
  return get_i64(value);
}

bool TcpStoreClient::check(const std::vector<std::string>& keys) {
  std::lock_guard<std::mutex> lock(mutex_);
  Bytes req{kCheck};
  put_keys(req, keys);
  return request(req, "check", std::chrono::milliseconds(0)) == 1;
}

void TcpStoreClient::wait(const std::vector<std::string>& keys) { wait(keys, timeout_); }

void TcpStoreClient::wait(const std::vector<std::string>& keys, std::chrono::milliseconds timeout) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto start = Clock::now();
  Bytes req{kWait};
  put_keys(req, keys);
  put_i64(req, timeout.count());
  if (request(req, "wait", timeout) == kTimeout)
    fail("ERR_DIST", "rendezvous store at ", address(), ": timed out after ", seconds_since(start), " waiting for ",
         join_keys(keys));
}

int pick_free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  int port = 0;
  if (fd >= 0 && ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) {
    socklen_t len = sizeof addr;
    getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
    port = ntohs(addr.sin_port);
  }
  if (fd >= 0) ::close(fd);
  if (port == 0) fail("ERR_DIST", "no free TCP port on this machine: ", std::strerror(errno));
  return port;
}

}  // namespace moma::dist
