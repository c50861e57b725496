// moma_kernel_bench: shared pieces of the native kernel benchmark (main.cc drives it, cpu_bench.cc
// and cuda_bench.cc measure). Every figure is reported twice: against a ceiling measured on this
// machine in the same run (memory copy bandwidth, FMA / GEMM rate) and against a nominal peak.
#pragma once
#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/kernel_types.h"

namespace moma::bench {

struct Result {
  std::string device;  // "cpu" or "cuda"
  std::string op;      // e.g. "gemm_f32", "softmax_f32", "ceiling.copy"
  std::string shape;   // e.g. "1024x1024x1024"
  double ms = 0;       // median time of one call
  double rate = 0;     // in `unit`
  std::string unit;    // "GFLOP/s", "TFLOP/s" or "GB/s"
  double pct_measured = -1;  // of the ceiling measured in this run; < 0: not applicable
  double pct_nominal = -1;   // of the nominal peak; < 0: not applicable
};

// One fact of the run's meta line (main.cc): a JSON number when `number`, else a string.
struct MetaField {
  std::string key, value;
  bool number = false;
};

class Runner {
 public:
  Runner(std::vector<std::string> filters, bool json_only)
      : filters_(std::move(filters)), json_only_(json_only) {}

  // True when `device.op` contains one of the filters (or no filter was given).
  bool wanted(const std::string& device, const std::string& op) const;
  // Prints one table row (unless --json) or one JSON line (with --json) and keeps the result.
  void report(const Result& r);
  // A free-form line (date, device names); with --json it becomes {"note": "..."}.
  void note(const std::string& line) const;
  // The run's facts as the first line: {"note": "...", "meta": {...}} with --json (a note to
  // readers that only know notes), else one text line.
  void meta(const std::vector<MetaField>& fields) const;
  // After the run: the JSON lines of every result (the table mode ends with them).
  void finish() const;
  bool json_only() const { return json_only_; }

 private:
  std::vector<std::string> filters_;
  bool json_only_;
  bool header_printed_ = false;
  std::vector<Result> results_;
};

inline size_t sz(int64_t n) { return static_cast<size_t>(n); }

inline double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Median seconds per call of fn: two warm-up calls, then enough repeats to fill about
// `target_s` seconds (at least 10 for calls under 0.1 s, at least 5 otherwise, at most 200).
double median_seconds(const std::function<void()>& fn, double target_s = 1.0);

double env_double(const char* name, double fallback);
std::string shape_str(std::initializer_list<int64_t> dims);

// CPU ceilings (cpu_bench.cc), measured on the first call and cached for the run: GFLOP/s of the
// register-only FMA loop on every pool thread (0 without SIMD FMA) and GB/s of a 256 MiB memcpy.
struct CpuCeilings {
  double fma_gflops = 0, fma_s = 0;
  double copy_gbs = 0, copy_s = 0;
  std::string fma_isa = "none";
};
const CpuCeilings& cpu_ceilings();

void run_cpu(Runner& runner);
void run_cuda(Runner& runner);
// Mixture-of-experts kernels at the paper's 435M shapes (cpu_moe_bench.cc, cuda_moe_bench.cc).
void run_cpu_moe(Runner& runner);
void run_cuda_moe(Runner& runner);
void run_cuda_nn(Runner& runner);  // transformer kernels (cuda_nn_bench.cc)
void run_cpu_nn(Runner& runner);  // transformer kernels of csrc/cpu/kernels_nn.h (cpu_nn_bench.cc)

// A 2-D view (rows x cols) with the given element strides.
inline StridedView view2(int64_t rows, int64_t cols, int64_t row_stride, int64_t col_stride) {
  StridedView v;
  v.ndim = 2;
  v.shape[0] = rows;
  v.shape[1] = cols;
  v.strides[0] = row_stride;
  v.strides[1] = col_stride;
  return v;
}

}  // namespace moma::bench
