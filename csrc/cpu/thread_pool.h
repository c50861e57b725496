// Intra-op parallelism for CPU kernels: a fixed pool of worker threads (MOMA_NUM_THREADS or the
// hardware concurrency) that splits an index range into contiguous chunks. Called only from the
// CPU device's queue thread, so one parallel_for runs at a time; the caller takes chunk 0.
#pragma once
#include <cstdint>
#include <functional>

namespace moma::cpu {

int num_threads();
// Calls fn(begin, end) over [0, n) in chunks of at least `grain` elements; returns when all are done.
// Exceptions thrown by fn are rethrown here (the first one).
void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

}  // namespace moma::cpu
