#include "queue.h"

#include <atomic>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <thread>

namespace moma {
namespace {

class Worker {
 public:
  Worker() : thread_([this] { loop(); }) {}
  // Workers live for the whole process (the bridge keeps storages alive until exit); the thread
  // is detached at exit by leaking the Worker, so static destruction never waits on device work.
  void push(Task task) {
    submitted_.fetch_add(1, std::memory_order_relaxed);
    std::unique_lock<std::mutex> lock(mutex_);
    space_.wait(lock, [this] { return tasks_.size() < kMaxPending; });
    tasks_.push_back(std::move(task));
    ready_.notify_one();
  }
  void drain() {
    std::unique_lock<std::mutex> lock(mutex_);
    idle_.wait(lock, [this] { return tasks_.empty() && !busy_; });
  }
  size_t pending() {
    std::lock_guard<std::mutex> lock(mutex_);
    return tasks_.size() + (busy_ ? 1 : 0);
  }
  void count_host_sync() { host_syncs_.fetch_add(1, std::memory_order_relaxed); }
  QueueStats stats() {
    QueueStats s;
    s.host_syncs = host_syncs_.load(std::memory_order_relaxed);
    s.submitted = submitted_.load(std::memory_order_relaxed);
    s.pending = pending();
    return s;
  }

 private:
  static void execute(Task& task) {
    for (const auto& in : task.inputs) {
      if (auto err = in->error()) {
        for (const auto& out : task.outputs) out->poison(err);
        return;
      }
    }
    try {
      task.run();
    } catch (const MomaException& e) {
      std::string message = e.what();
      if (message.rfind(task.op, 0) != 0) message = task.op + ": " + message;
      auto err = std::make_shared<const MomaException>(e.code(), message);
      for (const auto& out : task.outputs) out->poison(err);
    } catch (const std::exception& e) {
      auto err = std::make_shared<const MomaException>("ERR_INTERNAL", task.op + ": " + e.what());
      for (const auto& out : task.outputs) out->poison(err);
    }
  }

  void loop() {
    for (;;) {
      Task task;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        ready_.wait(lock, [this] { return !tasks_.empty(); });
        task = std::move(tasks_.front());
        tasks_.pop_front();
        busy_ = true;
        space_.notify_all();
      }
      execute(task);
      task = Task();  // drop storage references on the worker, before reporting idle
      {
        std::lock_guard<std::mutex> lock(mutex_);
        busy_ = false;
        if (tasks_.empty()) idle_.notify_all();
      }
    }
  }

  std::mutex mutex_;
  std::condition_variable ready_, space_, idle_;
  std::deque<Task> tasks_;
  bool busy_ = false;
  std::atomic<uint64_t> submitted_{0}, host_syncs_{0};
  std::thread thread_;
};

std::mutex g_workers_mutex;
std::map<std::pair<int, int>, Worker*>& workers() {
  static auto* map = new std::map<std::pair<int, int>, Worker*>();
  return *map;
}

Worker& worker_for(Device device) {
  std::lock_guard<std::mutex> lock(g_workers_mutex);
  auto key = std::make_pair(static_cast<int>(device.type), device.index);
  auto& slot = workers()[key];
  if (!slot) slot = new Worker();
  return *slot;
}

}  // namespace

void submit(Device device, Task task) { worker_for(device).push(std::move(task)); }

void submit(const char* op, Device device, const std::vector<Tensor>& inputs,
            const std::vector<Tensor>& outputs, std::function<void()> run) {
  Task task;
  task.op = op;
  for (const auto& t : inputs) task.inputs.push_back(t.storage);
  for (const auto& t : outputs) task.outputs.push_back(t.storage);
  task.run = std::move(run);
  submit(device, std::move(task));
}

void drain(Device device) {
  Worker& worker = worker_for(device);
  worker.count_host_sync();
  worker.drain();
}

void count_host_sync(Device device) { worker_for(device).count_host_sync(); }

QueueStats queue_stats(Device device) {
  Worker* worker = nullptr;
  {
    std::lock_guard<std::mutex> lock(g_workers_mutex);
    auto it = workers().find(std::make_pair(static_cast<int>(device.type), device.index));
    if (it != workers().end()) worker = it->second;
  }
  return worker ? worker->stats() : QueueStats{};
}

size_t pending_tasks() {
  std::lock_guard<std::mutex> lock(g_workers_mutex);
  size_t n = 0;
  for (auto& kv : workers()) n += kv.second->pending();
  return n;
}

}  // namespace moma
