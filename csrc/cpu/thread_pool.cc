// Intra-op thread pool (thread_pool.h).
// num_threads() - 1 workers are started on the first parallel_for that needs them; the calling
// thread is the remaining participant. parallel_for(n, grain) splits [0, n) into
// k = min(num_threads(), n / grain) contiguous, balanced chunks; k <= 1 runs fn inline with no
// synchronisation at all. Otherwise the job is published under one mutex with a generation
// counter and up to k - 1 sleeping workers are woken; everyone (caller included, after it has run
// chunk 0) claims chunk indices from an atomic counter, so a worker that wakes late simply finds
// nothing left. The caller returns only once every worker that joined the job has left it, so no
// worker can touch the job's function afterwards. The first exception thrown by a chunk is kept,
// unclaimed chunks are skipped, and it is rethrown to the caller. A parallel_for issued from inside
// a chunk runs inline; calls from different threads are serialised.
// The pool is intentionally leaked: its workers sleep on a condition variable for the life of the
// process and end with it, so no static destructor has to join them (or can hang doing so).
#include "thread_pool.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace moma::cpu {
namespace {

using Fn = std::function<void(int64_t, int64_t)>;

// True on pool workers and on a caller while it takes part in a job: nested calls run inline.
thread_local bool t_in_parallel = false;

int threads_from_env() {
  if (const char* s = std::getenv("MOMA_NUM_THREADS")) {
    char* end = nullptr;
    long v = std::strtol(s, &end, 10);
    if (end != s && *end == '\0' && v > 0) return static_cast<int>(std::min<long>(v, 1024));
  }
  unsigned hc = std::thread::hardware_concurrency();
  return hc > 0 ? static_cast<int>(hc) : 1;
}

class Pool {
 public:
  explicit Pool(int workers) {
    threads_.reserve(static_cast<size_t>(workers));
    for (int i = 0; i < workers; ++i) threads_.emplace_back([this] { worker_loop(); });
  }

  void run(int64_t n, int chunks, const Fn& fn) {
    std::lock_guard<std::mutex> serial(call_mu_);
    {
      std::lock_guard<std::mutex> lk(mu_);
      fn_ = &fn;
      n_ = n;
      chunks_ = chunks;
      next_.store(1, std::memory_order_relaxed);  // the caller takes chunk 0
      failed_.store(false, std::memory_order_relaxed);
      error_ = nullptr;
      open_ = true;
      ++generation_;
    }
    const int wake = std::min(chunks - 1, static_cast<int>(threads_.size()));
    if (wake == static_cast<int>(threads_.size())) {
      start_cv_.notify_all();
    } else {
      for (int i = 0; i < wake; ++i) start_cv_.notify_one();
    }

    t_in_parallel = true;
    run_chunk(0);
    claim_and_run();
    t_in_parallel = false;

    std::exception_ptr err;
    {
      std::unique_lock<std::mutex> lk(mu_);
      done_cv_.wait(lk, [this] { return active_ == 0; });
      open_ = false;
      err = error_;
      error_ = nullptr;
    }
    if (err) std::rethrow_exception(err);
  }

 private:
  void worker_loop() {
    t_in_parallel = true;
    uint64_t seen = 0;
    std::unique_lock<std::mutex> lk(mu_);
    for (;;) {
      start_cv_.wait(lk, [&] { return open_ && generation_ != seen; });
      seen = generation_;
      ++active_;
      lk.unlock();
      claim_and_run();
      lk.lock();
      if (--active_ == 0) done_cv_.notify_one();
    }
  }

  void claim_and_run() {
    while (!failed_.load(std::memory_order_relaxed)) {
      int c = next_.fetch_add(1, std::memory_order_relaxed);
      if (c >= chunks_) return;
      run_chunk(c);
    }
  }

  void run_chunk(int c) {
    const int64_t base = n_ / chunks_, extra = n_ % chunks_;
    const int64_t begin = c * base + std::min<int64_t>(c, extra);
    const int64_t end = begin + base + (c < extra ? 1 : 0);
    try {
      (*fn_)(begin, end);
    } catch (...) {
      std::lock_guard<std::mutex> lk(mu_);
      if (!error_) error_ = std::current_exception();
      failed_.store(true, std::memory_order_relaxed);
    }
  }

  std::mutex call_mu_;  // serialises run() across calling threads
  std::mutex mu_;
  std::condition_variable start_cv_, done_cv_;
  // Guarded by mu_. The job fields are written only while no worker is inside a job (active_ == 0
  // and open_ == false), and read by workers after they joined under mu_.
  uint64_t generation_ = 0;
  bool open_ = false;
  int active_ = 0;
  const Fn* fn_ = nullptr;
  int64_t n_ = 0;
  int chunks_ = 0;
  std::exception_ptr error_;
  std::atomic<int> next_{0};
  std::atomic<bool> failed_{false};
  std::vector<std::thread> threads_;
};

Pool& pool() {
  static Pool* p = new Pool(num_threads() - 1);  // leaked on purpose, see the top of the file
  return *p;
}

}  // namespace

int num_threads() {
  static const int count = threads_from_env();
  return count;
}

void parallel_for(int64_t n, int64_t grain, const Fn& fn) {
  if (n <= 0) return;
  if (grain < 1) grain = 1;
  const int64_t chunks = std::min<int64_t>(num_threads(), n / grain);
  if (chunks <= 1 || t_in_parallel) {
    fn(0, n);
    return;
  }
  pool().run(n, static_cast<int>(chunks), fn);
}

}  // namespace moma::cpu
