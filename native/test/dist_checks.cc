// CPU collectives (csrc/dist, backend gloo) checked in every build: the ranks of a group are
// threads of this process on loopback, each with its own communicator (dist::connect_group), on a
// port picked free. Every collective for 2 and 3 ranks, float32 / bfloat16 / int32, at sizes of 0,
// 1 and a few awkward counts per rank, against a plain reference computed from every rank's
// inputs (inputs are multiples of 1/8 small enough that float sums are exact in any order, so the
// comparisons are bitwise). Sub-groups the same way: {2,0} and {1} in a world of 3, two disjoint
// pairs running at once in a world of 4, and bad rank lists; started (asynchronous) collectives. Then the tensor ops (csrc/ops/dist.h) in a world of one through the
// process-wide group, and the failures: a missing plugin, world sizes that differ, a duplicate
// rank, a rank out of range, a rank that never arrives, a closed port: ERR_DIST (or ERR_LOAD) on
// every rank, in bounded time.
//
// Needs the gloo plugin next to the executable (built when libgloo-dev is installed); without it
// the collective checks report the ERR_LOAD message once and are skipped.
//
// NCCL (backend nccl): one CUDA case, "dist nccl: one rank on cuda:0", registered here and run or
// skipped with the other CUDA cases (counted in the skips without a CUDA device): a one-rank NCCL
// communicator on cuda:0, and a sub-group {0} of it, run every collective on device buffers of a
// few elements (in a world of one every result is the input). Without a loadable libnccl.so.2 it
// prints the ERR_LOAD message (what to install) and counts as skipped. It prints whether NCCL
// loaded ("moma_native_test: NCCL loaded" / "moma_native_test: NCCL not loaded"), which
// scripts/gpu-check.sh reports.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <mutex>
#include <thread>

#include "../../csrc/core/bf16.h"
#include "../../csrc/core/error.h"
#include "../../csrc/core/queue.h"
#include "../../csrc/dist/communicator.h"
#include "../../csrc/dist/tcp_store.h"
#include "../../csrc/ops/dist.h"
#include "../../csrc/ops/ops.h"
#include "harness.h"

namespace moma::native_test {
namespace {

using dist::Communicator;
using dist::ReduceOp;
using Clock = std::chrono::steady_clock;

// Failures found on rank threads, reported on the main thread.
std::mutex g_found_mutex;
std::vector<std::string> g_found;
int g_checks = 0;

void check(bool ok, const std::string& what) {
  std::lock_guard<std::mutex> lock(g_found_mutex);
  ++g_checks;
  if (!ok) g_found.push_back(what);
}

void report_found() {
  std::lock_guard<std::mutex> lock(g_found_mutex);
  for (const auto& f : g_found) failure(f);
  for (int i = 0; i < g_checks - static_cast<int>(g_found.size()); ++i) pass();
  g_found.clear();
  g_checks = 0;
}

dist::InitOptions options(int rank, int world, int port, std::chrono::milliseconds timeout) {
  dist::InitOptions o;
  o.rank = rank;
  o.world_size = world;
  o.master_addr = "127.0.0.1";
  o.master_port = port;
  o.backend = dist::Backend::Gloo;
  o.timeout = timeout;
  return o;
}

// Runs fn(rank) on `world` threads; returns each rank's error ("" when none: "CODE: message").
std::vector<std::string> run_ranks(int world, const std::function<void(int)>& fn) {
  std::vector<std::string> errors(world);
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r)
    threads.emplace_back([&, r] {
      try {
        fn(r);
      } catch (const MomaException& e) {
        errors[r] = e.code() + ": " + e.what();
      } catch (const std::exception& e) {
        errors[r] = std::string("exception: ") + e.what();
      }
    });
  for (auto& t : threads) t.join();
  return errors;
}

// Element i of rank r's input for test `salt`: k / 8 with |k| <= 8, exact in bf16, and sums of
// three exact in float32 whatever the order.
float input_value(int r, size_t i, int salt) {
  return static_cast<float>(static_cast<int>((static_cast<size_t>(r) * 7919 + i * 31 + static_cast<size_t>(salt) * 13) % 17) - 8) / 8.0f;
}

// Typed buffers from float values (bf16 as bits).
std::vector<uint8_t> encode(DType dt, const std::vector<float>& v) {
  std::vector<uint8_t> b(v.size() * dtype_size(dt));
  for (size_t i = 0; i < v.size(); ++i) {
    if (dt == DType::F32) std::memcpy(&b[i * 4], &v[i], 4);
    else if (dt == DType::I32) {
      int32_t x = static_cast<int32_t>(std::lround(v[i] * 8));
      std::memcpy(&b[i * 4], &x, 4);
    } else {
      uint16_t h = f32_to_bf16(v[i]);
      std::memcpy(&b[i * 2], &h, 2);
    }
  }
  return b;
}

std::vector<float> rank_input(int r, size_t n, int salt) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = input_value(r, i, salt);
  return v;
}

// Reference reduction over ranks (int32 holds 8 * value).
std::vector<float> reduce_ref(int world, size_t n, int salt, ReduceOp op) {
  std::vector<float> out(n);
  for (size_t i = 0; i < n; ++i) {
    float acc = op == ReduceOp::Max ? -1e30f : 0.0f;
    for (int r = 0; r < world; ++r) {
      float x = input_value(r, i, salt);
      acc = op == ReduceOp::Max ? std::max(acc, x) : acc + x;
    }
    out[i] = op == ReduceOp::Avg ? acc / static_cast<float>(world) : acc;
  }
  return out;
}

std::string label(const char* what, int world, DType dt, size_t n, const char* extra = "") {
  return std::string(what) + " world=" + std::to_string(world) + " " + dtype_name(dt) + " n=" + std::to_string(n) + extra;
}

void collectives_for(Communicator& c, int salt0) {
  const int W = c.size(), r = c.rank();
  const DType dtypes[] = {DType::F32, DType::BF16, DType::I32};
  const size_t counts[] = {0, 1, 7, 1031, 70001};
  int salt = salt0;
  for (DType dt : dtypes) {
    const size_t es = dtype_size(dt);
    for (size_t n : counts) {
      // all_reduce (sum, avg, max; avg not for int32)
      for (ReduceOp op : {ReduceOp::Sum, ReduceOp::Avg, ReduceOp::Max}) {
        if (dt == DType::I32 && op == ReduceOp::Avg) continue;
        ++salt;
        auto in = encode(dt, rank_input(r, n, salt));
        std::vector<uint8_t> out(n * es, 0xEE);
        c.all_reduce(in.data(), out.data(), n, dt, op);
        auto want = encode(dt, reduce_ref(W, n, salt, op));
        check(out == want, label("all_reduce", W, dt, n, op == ReduceOp::Sum ? " sum" : op == ReduceOp::Avg ? " avg" : " max"));
      }
      // reduce_scatter: n per rank
      for (ReduceOp op : {ReduceOp::Sum, ReduceOp::Max}) {
        ++salt;
        auto in = encode(dt, rank_input(r, n * W, salt));
        std::vector<uint8_t> out(n * es, 0xEE);
        c.reduce_scatter(in.data(), out.data(), n, dt, op);
        auto full = reduce_ref(W, n * W, salt, op);
        auto want = encode(dt, std::vector<float>(full.begin() + static_cast<std::ptrdiff_t>(n * r),
                                                  full.begin() + static_cast<std::ptrdiff_t>(n * (r + 1))));
        check(out == want, label("reduce_scatter", W, dt, n, op == ReduceOp::Sum ? " sum" : " max"));
      }
      // all_gather
      {
        ++salt;
        auto in = encode(dt, rank_input(r, n, salt));
        std::vector<uint8_t> out(n * es * W, 0xEE), want;
        c.all_gather(in.data(), out.data(), n, dt);
        for (int p = 0; p < W; ++p) {
          auto part = encode(dt, rank_input(p, n, salt));
          want.insert(want.end(), part.begin(), part.end());
        }
        check(out == want, label("all_gather", W, dt, n));
      }
      // broadcast from every root
      for (int root = 0; root < W; ++root) {
        ++salt;
        auto in = encode(dt, rank_input(r, n, salt));
        std::vector<uint8_t> out(n * es, 0xEE);
        c.broadcast(in.data(), out.data(), n, dt, root);
        check(out == encode(dt, rank_input(root, n, salt)), label("broadcast", W, dt, n, (" root=" + std::to_string(root)).c_str()));
      }
      // all_to_all_v: rank s sends count(s, d) elements to rank d (zeros included), scaled by n.
      {
        ++salt;
        auto count = [&](int s, int d) { return static_cast<int64_t>(((s * 3 + d * 5 + salt) % 4) * (n / 7 + n % 5)); };
        std::vector<int64_t> sc(W), so(W), rc(W), ro(W);
        int64_t sat = 0, rat = 0;
        for (int p = 0; p < W; ++p) {
          sc[p] = count(r, p);
          so[p] = sat;
          sat += sc[p];
          rc[p] = count(p, r);
          ro[p] = rat;
          rat += rc[p];
        }
        // Segment for peer d holds values input_value(r, 1000 * d + j).
        std::vector<float> send;
        for (int d = 0; d < W; ++d)
          for (int64_t j = 0; j < sc[d]; ++j) send.push_back(input_value(r, static_cast<size_t>(1000 * d + j), salt));
        std::vector<float> expect_vals;
        for (int s = 0; s < W; ++s)
          for (int64_t j = 0; j < rc[s]; ++j) expect_vals.push_back(input_value(s, static_cast<size_t>(1000 * r + j), salt));
        auto in = encode(dt, send);
        std::vector<uint8_t> out(static_cast<size_t>(rat) * es, 0xEE);
        c.all_to_all_v(in.data(), sc.data(), so.data(), out.data(), rc.data(), ro.data(), dt);
        check(out == encode(dt, expect_vals), label("all_to_all_v", W, dt, static_cast<size_t>(rat)));
      }
    }
  }
  // bf16 sums round once: 1 + 2^-8 + 2^-8 rounded per hop would be 1, the float32 sum is 1 + 2^-7.
  if (W == 3) {
    uint16_t in = f32_to_bf16(r == 0 ? 1.0f : std::ldexp(1.0f, -8)), out = 0;
    c.all_reduce(&in, &out, 1, DType::BF16, ReduceOp::Sum);
    check(out == f32_to_bf16(1.0f + std::ldexp(1.0f, -7)), "all_reduce bf16 rounds the float32 sum once");
  }
  // barrier: rank 0 arrives 150 ms late; nobody leaves before it arrives.
  if (r == 0) std::this_thread::sleep_for(std::chrono::milliseconds(150));
  auto t0 = Clock::now();
  c.barrier();
  if (r != 0) check(Clock::now() - t0 >= std::chrono::milliseconds(100), "barrier waits for the last rank");
}

void check_group_collectives(int world) {
  const int port = dist::pick_free_port();
  auto errors = run_ranks(world, [&](int r) {
    auto comm = dist::connect_group(options(r, world, port, std::chrono::seconds(30)));
    check(comm->rank() == r && comm->size() == world, "rank and size of the communicator");
    collectives_for(*comm, 100 * world);
  });
  for (int r = 0; r < world; ++r) check(errors[r].empty(), "world " + std::to_string(world) + " rank " + std::to_string(r) + ": " + errors[r]);
}

bool contains(const std::string& s, const char* part) { return s.find(part) != std::string::npos; }

// Sub-groups (dist::connect_subgroup) of a world of `world` threads: every rank thread is a member
// of exactly one group of `groups` (world ranks in group-rank order), and runs every collective on
// it against the reference of its group, concurrently with the other groups; then an all-reduce on
// the world checks that the world is untouched by its sub-groups.
void check_subgroups(int world, const std::vector<std::vector<int>>& groups) {
  const int port = dist::pick_free_port();
  std::string name = "world " + std::to_string(world) + " groups";
  for (const auto& g : groups) {
    name += " {";
    for (size_t i = 0; i < g.size(); ++i) name += (i ? "," : "") + std::to_string(g[i]);
    name += "}";
  }
  auto errors = run_ranks(world, [&](int r) {
    auto comm = dist::connect_group(options(r, world, port, std::chrono::seconds(30)));
    for (size_t id = 0; id < groups.size(); ++id) {
      const auto& ranks = groups[id];
      auto at = std::find(ranks.begin(), ranks.end(), r);
      if (at == ranks.end()) continue;
      auto sub = dist::connect_subgroup(comm, ranks, static_cast<int>(id) + 1, "test");
      check(sub->rank() == static_cast<int>(at - ranks.begin()) && sub->size() == static_cast<int>(ranks.size()),
            name + ": rank and size of the sub-group");
      collectives_for(*sub, 1000 + 100 * static_cast<int>(id));
    }
    float x = static_cast<float>(r + 1), y = 0.0f;
    comm->all_reduce(&x, &y, 1, DType::F32, ReduceOp::Sum);
    check(y == static_cast<float>(world * (world + 1) / 2), name + ": the world's all_reduce after its sub-groups");
  });
  for (int r = 0; r < world; ++r) check(errors[r].empty(), name + " rank " + std::to_string(r) + ": " + errors[r]);
}

// Started collectives (start_all_reduce / start_reduce_scatter) on `world` threads: several in
// flight at once, a blocking collective between a start and its wait (it runs after the started
// ones), on the world and on a sub-group of ranks {1, 0}; every result against the reference.
void check_started(int world) {
  const int port = dist::pick_free_port();
  auto errors = run_ranks(world, [&](int r) {
    auto comm = dist::connect_group(options(r, world, port, std::chrono::seconds(30)));
    auto sub = r < 2 ? dist::connect_subgroup(comm, {1, 0}, 1, "test") : nullptr;
    for (Communicator* c : {comm.get(), sub.get()}) {
      if (!c) continue;
      const int W = c->size(), me = c->rank();
      const std::string where = " (started, size " + std::to_string(W) + ")";
      const size_t sizes[] = {5, 70001, 1};
      std::vector<std::vector<uint8_t>> ins, outs;
      std::vector<std::shared_ptr<dist::PendingCollective>> pending;
      for (size_t k = 0; k < 3; ++k) {
        ins.push_back(encode(DType::F32, rank_input(me, sizes[k], 500 + static_cast<int>(k))));
        outs.emplace_back(sizes[k] * 4, 0xEE);
      }
      for (size_t k = 0; k < 3; ++k) pending.push_back(c->start_all_reduce(ins[k].data(), outs[k].data(), sizes[k], DType::F32, ReduceOp::Sum));
      auto scatter_in = encode(DType::BF16, rank_input(me, 9 * static_cast<size_t>(W), 510));
      std::vector<uint8_t> scatter_out(9 * 2, 0xEE);
      auto scatter = c->start_reduce_scatter(scatter_in.data(), scatter_out.data(), 9, DType::BF16, ReduceOp::Sum);
      auto gather_in = encode(DType::I32, rank_input(me, 4, 520));
      std::vector<uint8_t> gather_out(4 * 4 * static_cast<size_t>(W), 0xEE), gather_want;
      c->all_gather(gather_in.data(), gather_out.data(), 4, DType::I32);
      for (int p = 0; p < W; ++p) {
        auto part = encode(DType::I32, rank_input(p, 4, 520));
        gather_want.insert(gather_want.end(), part.begin(), part.end());
      }
      check(gather_out == gather_want, "all_gather between starts and waits" + where);
      for (size_t k = 3; k-- > 0;) {
        pending[k]->wait();
        check(outs[k] == encode(DType::F32, reduce_ref(W, sizes[k], 500 + static_cast<int>(k), ReduceOp::Sum)),
              "all_reduce n=" + std::to_string(sizes[k]) + where);
      }
      scatter->wait();
      auto full = reduce_ref(W, 9 * static_cast<size_t>(W), 510, ReduceOp::Sum);
      check(scatter_out == encode(DType::BF16, std::vector<float>(full.begin() + 9 * me, full.begin() + 9 * (me + 1))),
            "reduce_scatter bf16" + where);
    }
  });
  for (int r = 0; r < world; ++r) check(errors[r].empty(), "started collectives rank " + std::to_string(r) + ": " + errors[r]);
}

// Bad sub-groups are ERR_ARG before anything connects.
void check_subgroup_arguments() {
  const int port = dist::pick_free_port();
  auto comm = dist::connect_group(options(0, 1, port, std::chrono::seconds(10)));
  auto got = [&](const std::vector<int>& ranks, int id) {
    try {
      dist::connect_subgroup(comm, ranks, id, "dist_new_group");
    } catch (const MomaException& e) {
      return e.code() + ": " + e.what();
    }
    return std::string("no error");
  };
  check(contains(got({}, 1), "ERR_ARG") && contains(got({}, 1), "empty"), "sub-group of no ranks");
  check(contains(got({0, 0}, 1), "ERR_ARG") && contains(got({0, 0}, 1), "appears twice"), "sub-group with a duplicate rank");
  check(contains(got({0, 1}, 1), "ERR_ARG") && contains(got({0, 1}, 1), "ranks[1] = 1 is not a rank of the world"),
        "sub-group with a rank out of range: " + got({0, 1}, 1));
  check(contains(got({-1}, 1), "ERR_ARG"), "sub-group with a negative rank");
  check(contains(got({0}, 0), "ERR_ARG") && contains(got({0}, 0), "dist_new_group"), "sub-group id 0 is the world's");
}

// Every rank of a bad launch fails with ERR_DIST whose message contains `part`, within `bound`.
void expect_all_fail(const char* what, int launched, const std::function<dist::InitOptions(int)>& opts_of,
                     const char* part, std::chrono::milliseconds bound, const std::function<void(int)>& delay = nullptr) {
  auto t0 = Clock::now();
  auto errors = run_ranks(launched, [&](int r) {
    if (delay) delay(r);
    dist::connect_group(opts_of(r));
  });
  auto took = Clock::now() - t0;
  for (int r = 0; r < launched; ++r)
    check(contains(errors[r], "ERR_DIST") && contains(errors[r], part),
          std::string(what) + ": rank thread " + std::to_string(r) + " got '" + errors[r] + "', expected ERR_DIST with '" + part + "'");
  check(took < bound, std::string(what) + ": took " + std::to_string(std::chrono::duration<double>(took).count()) + " s");
}

void check_failures(bool have_plugin) {
  using std::chrono::milliseconds;
  // World sizes differ: rank 1 believes in 3 ranks. Both fail at once, not after the 20 s timeout.
  {
    int port = dist::pick_free_port();
    expect_all_fail("world size mismatch", 2, [&](int r) { return options(r, r == 0 ? 2 : 3, port, std::chrono::seconds(20)); },
                    "world sizes differ", milliseconds(5000));
  }
  // Rank 1 claimed twice in a world of 3 (rank 2 never comes): everyone fails on the claim.
  {
    int port = dist::pick_free_port();
    expect_all_fail("duplicate rank", 3, [&](int r) { return options(r == 2 ? 1 : r, 3, port, std::chrono::seconds(20)); },
                    "claimed by two processes", milliseconds(5000));
  }
  // Rank 2 in a world of 2, arriving before rank 1: all three fail.
  {
    int port = dist::pick_free_port();
    expect_all_fail("rank out of range", 3, [&](int r) { return options(r, 2, port, std::chrono::seconds(20)); },
                    "out of range", milliseconds(5000),
                    [](int r) { if (r == 1) std::this_thread::sleep_for(std::chrono::milliseconds(400)); });
  }
  // Rank 2 of 3 never arrives: ranks 0 and 1 give up after their 1.5 s timeout, naming it.
  {
    int port = dist::pick_free_port();
    auto t0 = Clock::now();
    expect_all_fail("missing rank", 2, [&](int r) { return options(r, 3, port, milliseconds(1500)); }, "waiting for rank 2",
                    milliseconds(6000));
    check(Clock::now() - t0 >= milliseconds(1400), "missing rank: waited for the timeout");
  }
  // A rank that stops calling collectives: the other's all-reduce ends in ERR_DIST after the
  // collective timeout (1.5 s) instead of hanging (needs the plugin: the rendezvous connects it).
  if (have_plugin) {
    int port = dist::pick_free_port();
    auto t0 = Clock::now();
    auto errors = run_ranks(2, [&](int r) {
      auto comm = dist::connect_group(options(r, 2, port, milliseconds(1500)));
      if (r == 1) {
        std::this_thread::sleep_for(milliseconds(3000));
        return;
      }
      float x = 1.0f, y = 0.0f;
      comm->all_reduce(&x, &y, 1, DType::F32, ReduceOp::Sum);
    });
    auto took = Clock::now() - t0;
    check(contains(errors[0], "ERR_DIST") && contains(errors[0], "allreduce"),
          "collective timeout: rank 0 got '" + errors[0] + "'");
    check(errors[1].empty(), "collective timeout: rank 1 got '" + errors[1] + "'");
    check(took < milliseconds(8000), "collective timeout: bounded");
  }
  // Nobody listens: rank 1 gives up connecting after its 1 s timeout.
  {
    int port = dist::pick_free_port();
    auto t0 = Clock::now();
    expect_all_fail("closed port", 1, [&](int) { return options(1, 2, port, milliseconds(1000)); },
                    "could not connect to the rendezvous store at 127.0.0.1:", milliseconds(5000));
    check(Clock::now() - t0 >= milliseconds(900), "closed port: retried until the timeout");
  }
}

// The tensor ops through the process-wide group, in a world of one.
void check_ops() {
  const char* none = nullptr;
  try {
    ops::dist_all_reduce(ops::full({2}, 1.0, DType::F32, Device{}), ReduceOp::Sum);
  } catch (const MomaException& e) {
    none = e.code() == "ERR_DIST" && contains(e.what(), "dist_all_reduce") ? "ok" : nullptr;
  }
  check(none != nullptr, "ops without a group fail with ERR_DIST");

  dist::init_process_group(options(0, 1, dist::pick_free_port(), std::chrono::seconds(10)));
  check(dist::process_group_initialized(), "group initialised");
  auto read = [](const Tensor& t) {
    drain(t.device());
    if (auto err = t.storage->error()) throw *err;
    std::vector<float> v(static_cast<size_t>(t.numel()));
    for (size_t i = 0; i < v.size(); ++i) {
      if (t.dtype == DType::F32) v[i] = static_cast<const float*>(t.data())[i];
      else if (t.dtype == DType::BF16) v[i] = bf16_to_f32(static_cast<const uint16_t*>(t.data())[i]);
      else v[i] = static_cast<float>(static_cast<const int32_t*>(t.data())[i]);
    }
    return v;
  };
  std::vector<float> src = {1.5f, -2.0f, 3.25f, 0.5f, 7.0f, -1.0f};
  Tensor x = ops::from_host(src.data(), src.size() * 4, DType::F32, {3, 2}, DType::F32, Device{});
  Tensor xb = ops::astype(x, DType::BF16);
  check(read(ops::dist_all_reduce(x, ReduceOp::Avg)) == src, "op all_reduce avg, world 1");
  check(read(ops::dist_all_reduce(xb, ReduceOp::Sum)) == src, "op all_reduce bf16, world 1");
  check(read(ops::dist_reduce_scatter(x, ReduceOp::Sum)) == src, "op reduce_scatter, world 1");
  Tensor g = ops::dist_all_gather(x);
  check(g.shape == Shape({3, 2}) && read(g) == src, "op all_gather, world 1");
  Tensor a = ops::dist_all_to_all_v(x, {3}, {3});
  check(a.shape == Shape({3, 2}) && read(a) == src, "op all_to_all_v, world 1");
  check(read(ops::dist_broadcast(x, 0)) == src, "op broadcast, world 1");
  std::mutex m;
  std::shared_ptr<const MomaException> barrier_error;
  bool barrier_done = false;
  ops::dist_barrier_async([&](std::shared_ptr<const MomaException> e) {
    std::lock_guard<std::mutex> lock(m);
    barrier_error = e;
    barrier_done = true;
  });
  drain(Device{});
  check(barrier_done && !barrier_error, "op barrier, world 1");

  auto expect_error = [](const char* what, const char* code, const std::function<void()>& fn) {
    std::string got = "no error";
    try {
      fn();
    } catch (const MomaException& e) {
      got = e.code() + ": " + e.what();
    }
    check(contains(got, code) && contains(got, "dist_"), std::string(what) + ": got '" + got + "'");
  };
  Tensor xi = ops::astype(x, DType::I32);
  Tensor xu = ops::astype(x, DType::U8);
  expect_error("uint8", "ERR_DTYPE", [&] { ops::dist_all_reduce(xu, ReduceOp::Sum); });
  expect_error("int32 avg", "ERR_DTYPE", [&] { ops::dist_all_reduce(xi, ReduceOp::Avg); });
  expect_error("scalar gather", "ERR_SHAPE", [&] { ops::dist_all_gather(ops::full({}, 1.0, DType::F32, Device{})); });
  expect_error("counts sum", "ERR_SHAPE", [&] { ops::dist_all_to_all_v(x, {2}, {3}); });
  expect_error("counts per rank", "ERR_ARG", [&] { ops::dist_all_to_all_v(x, {1, 2}, {3}); });
  expect_error("root", "ERR_ARG", [&] { ops::dist_broadcast(x, 1); });
  expect_error("second init", "ERR_DIST", [&] {
    try {
      dist::init_process_group(options(0, 1, dist::pick_free_port(), std::chrono::seconds(10)));
    } catch (const MomaException& e) {
      throw MomaException(e.code(), std::string("dist_init ") + e.what());
    }
  });
  // Started collectives through the ops: the result after dist_wait; a second wait is ERR_ARG.
  {
    ops::StartedCollective a = ops::dist_all_reduce_start(x, ReduceOp::Sum);
    ops::StartedCollective b = ops::dist_reduce_scatter_start(xb, ReduceOp::Max);
    check(read(ops::dist_wait(b)) == src && read(ops::dist_wait(a)) == src, "op all_reduce / reduce_scatter started, world 1");
    expect_error("second wait", "ERR_ARG", [&] { ops::dist_wait(a); });
    expect_error("started int32 avg", "ERR_DTYPE", [&] { ops::dist_all_reduce_start(xi, ReduceOp::Avg); });
  }
  // Sub-groups through the registry: ids 1, 2, ... ; ops on them; bad lists; unknown ids.
  check(dist::new_group({0}, "dist_new_group") == 1, "first sub-group has id 1");
  check(read(ops::dist_all_reduce(x, ReduceOp::Sum, 1)) == src, "op all_reduce on sub-group 1, world 1");
  check(read(ops::dist_all_gather(x, 1)) == src && read(ops::dist_broadcast(x, 0, 1)) == src, "ops on sub-group 1, world 1");
  check(dist::new_group({0}, "dist_new_group") == 2, "second sub-group has id 2");
  expect_error("new_group out of range", "ERR_ARG", [&] { dist::new_group({1}, "dist_new_group"); });
  expect_error("new_group duplicate", "ERR_ARG", [&] { dist::new_group({0, 0}, "dist_new_group"); });
  expect_error("unknown group", "ERR_DIST", [&] { ops::dist_all_reduce(x, ReduceOp::Sum, 3); });
  expect_error("root of a sub-group", "ERR_ARG", [&] { ops::dist_broadcast(x, 1, 2); });
  dist::destroy_process_group();
  check(!dist::process_group_initialized(), "group destroyed");
  expect_error("sub-group of a destroyed world", "ERR_DIST", [&] { ops::dist_all_reduce(x, ReduceOp::Sum, 1); });
  expect_error("new_group without a world", "ERR_DIST", [&] { dist::new_group({0}, "dist_new_group"); });
  dist::init_process_group(options(0, 1, dist::pick_free_port(), std::chrono::seconds(10)));
  expect_error("sub-group of an earlier world", "ERR_DIST", [&] { ops::dist_all_reduce(x, ReduceOp::Sum, 1); });
  dist::destroy_process_group();
}

// Before anything loads the plugin: a missing plugin is ERR_LOAD saying what to install.
bool check_missing_plugin() {
  setenv("MOMA_GLOO_PLUGIN", "/nonexistent/libmoma_gloo.so", 1);
  std::string got = "no error";
  try {
    dist::connect_group(options(0, 1, dist::pick_free_port(), std::chrono::seconds(5)));
  } catch (const MomaException& e) {
    got = e.code() + ": " + e.what();
  }
  unsetenv("MOMA_GLOO_PLUGIN");
  check(contains(got, "ERR_LOAD") && contains(got, "apt-get install"), "missing plugin: got '" + got + "'");
  // Is the real plugin there? (A build without gloo has none: the collective checks are skipped.)
  try {
    dist::connect_group(options(0, 1, dist::pick_free_port(), std::chrono::seconds(5)));
    return true;
  } catch (const MomaException& e) {
    if (e.code() != "ERR_LOAD") throw;
    std::printf("moma_native_test: CPU collectives not checked: %s\n", e.what());
    return false;
  }
}

// The NCCL case (see the top of the file). Inputs are bf16 values (k / 8), so the bf16 sums and
// averages, widened to float32, reduced and rounded back, come out as the inputs exactly.
void check_nccl_one_rank() {
  dist::InitOptions o = options(0, 1, dist::pick_free_port(), std::chrono::seconds(60));
  o.backend = dist::Backend::Nccl;
  o.device = Device{DeviceType::CUDA, 0};
  std::shared_ptr<Communicator> world;
  try {
    world = dist::connect_group(o);
  } catch (const MomaException& e) {
    if (e.code() != "ERR_LOAD") throw;
    std::printf("moma_native_test: NCCL not loaded; the one-rank NCCL case is skipped: %s\n", e.what());
    ++g_skipped;
    return;
  }
  std::printf("moma_native_test: NCCL loaded: one-rank communicator on cuda:0\n");
  expect(world->rank() == 0 && world->size() == 1 && world->backend() == dist::Backend::Nccl && world->device() == o.device,
         "rank, size, backend and device of the NCCL communicator");
  auto sub = dist::connect_subgroup(world, {0}, 1, "test");
  const size_t n = 7;
  int salt = 700;
  for (Communicator* c : {world.get(), sub.get()}) {
    const std::string where = c == world.get() ? " (world of one)" : " (sub-group {0})";
    for (DType dt : {DType::F32, DType::BF16}) {
      const std::string what = std::string(" ") + dtype_name(dt) + where;
      const size_t bytes = n * dtype_size(dt);
      const std::vector<uint8_t> host = encode(dt, rank_input(0, n, ++salt));
      Dev in(host);
      for (ReduceOp op : {ReduceOp::Sum, ReduceOp::Avg, ReduceOp::Max}) {
        Dev out(bytes);
        out.poison();
        c->all_reduce(in.p, out.p, n, dt, op);
        expect(out.get() == host, std::string("all_reduce ") + dist::reduce_op_name(op) + what);
      }
      {
        Dev out(bytes);
        out.poison();
        c->reduce_scatter(in.p, out.p, n, dt, ReduceOp::Sum);
        expect(out.get() == host, "reduce_scatter sum" + what);
      }
      {
        Dev out(bytes);
        out.poison();
        c->all_gather(in.p, out.p, n, dt);
        expect(out.get() == host, "all_gather" + what);
      }
      {
        Dev out(bytes);
        out.poison();
        c->broadcast(in.p, out.p, n, dt, 0);
        expect(out.get() == host, "broadcast root 0" + what);
      }
      {
        const int64_t counts[] = {static_cast<int64_t>(n)}, offsets[] = {0};
        Dev out(bytes);
        out.poison();
        c->all_to_all_v(in.p, counts, offsets, out.p, counts, offsets, dt);
        expect(out.get() == host, "all_to_all_v" + what);
      }
      // started: an all-reduce and a reduce-scatter in flight, a blocking all-gather queued
      // between the starts and the waits, the waits in reverse order
      {
        Dev reduced(bytes), scattered(bytes), gathered(bytes);
        reduced.poison();
        scattered.poison();
        gathered.poison();
        auto started_reduce = c->start_all_reduce(in.p, reduced.p, n, dt, ReduceOp::Sum);
        auto started_scatter = c->start_reduce_scatter(in.p, scattered.p, n, dt, ReduceOp::Sum);
        c->all_gather(in.p, gathered.p, n, dt);
        started_scatter->wait();
        started_reduce->wait();
        expect(reduced.get() == host, "started all_reduce + wait" + what);
        expect(scattered.get() == host, "started reduce_scatter + wait" + what);
        expect(gathered.get() == host, "all_gather between starts and waits" + what);
      }
    }
    c->barrier();
    cuda::synchronize(0, "dist nccl barrier");
    pass();
  }
}

}  // namespace

void dist_checks() {
  add("dist nccl: one rank on cuda:0", check_nccl_one_rank);
  if (cuda::compiled() && cuda::device_count() == 0)
    std::printf("moma_native_test: the one-rank NCCL case is skipped: no CUDA device\n");
  g_case = "dist";
  try {
    const bool have_plugin = check_missing_plugin();
    if (have_plugin) {
      check_group_collectives(2);
      check_group_collectives(3);
      check_subgroup_arguments();
      check_subgroups(3, {{2, 0}, {1}});
      check_subgroups(4, {{0, 1}, {3, 2}});
      check_started(2);
      check_started(3);
      check_ops();
    }
    check_failures(have_plugin);
  } catch (const MomaException& e) {
    check(false, std::string("exception ") + e.code() + ": " + e.what());
  }
  report_found();
}

}  // namespace moma::native_test
