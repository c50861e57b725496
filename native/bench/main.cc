// moma_kernel_bench: times moma's native kernels against this machine's measured ceilings.
//
//   moma_kernel_bench [--json] [filter...]
//
// A filter is a substring of "device.op" (e.g. "gemm", "cpu.softmax", "cuda"); with none, every
// benchmark runs. The CPU ceilings (copy bandwidth on 256 MiB, FMA peak of a register-only loop
// on every pool thread) are always measured first, then the CPU kernels; when the CUDA backend is
// compiled and a GPU is present, the same for the GPU (device-to-device copy, bf16 GEMM rate).
// Output: a table, then one JSON line per result; --json prints only JSON lines on stdout: first
// {"note": "moma kernel bench  date ...", "meta": {date, host, cuda_compiled, device,
// compute_capability, multiprocessors, memory_gib, driver_cuda, runtime_cuda}} (the GPU fields only
// with a GPU; CUDA versions as "13.0"), then the results, and the header lines as {"note": ...}.
// Environment: MOMA_CPU_PEAK_GFLOPS (nominal CPU fp32 peak, default 256 = 2 cores x 2.0 GHz x
// 2 AVX-512 FMA units), MOMA_GPU_PEAK_TFLOPS (nominal GPU bf16 peak), MOMA_NUM_THREADS.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <sstream>
#include <unistd.h>

#include "bench.h"
#include "cuda/runtime.h"

namespace moma::bench {

bool Runner::wanted(const std::string& device, const std::string& op) const {
  if (filters_.empty()) return true;
  const std::string name = device + "." + op;
  for (const auto& f : filters_)
    if (name.find(f) != std::string::npos) return true;
  return false;
}

namespace {

std::string pct(double v) {
  if (v < 0) return "-";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f%%", v);
  return buf;
}

std::string json_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out;
}

std::string json_num(double v) {
  if (v < 0 || !std::isfinite(v)) return "null";
  char buf[48];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}

std::string to_json(const Result& r) {
  std::ostringstream os;
  os << "{\"device\":\"" << json_escape(r.device) << "\",\"op\":\"" << json_escape(r.op)
     << "\",\"shape\":\"" << json_escape(r.shape) << "\",\"ms\":" << json_num(r.ms)
     << ",\"rate\":" << json_num(r.rate) << ",\"unit\":\"" << r.unit
     << "\",\"pct_measured\":" << json_num(r.pct_measured)
     << ",\"pct_nominal\":" << json_num(r.pct_nominal) << "}";
  return os.str();
}

}  // namespace

void Runner::report(const Result& r) {
  results_.push_back(r);
  if (json_only_) {
    std::printf("%s\n", to_json(r).c_str());
  } else {
    if (!header_printed_) {
      std::printf("%-6s %-24s %-22s %10s %10s %-8s %8s %8s\n", "device", "op", "shape", "ms",
                  "rate", "unit", "%meas", "%nominal");
      header_printed_ = true;
    }
    std::printf("%-6s %-24s %-22s %10.3f %10.1f %-8s %8s %8s\n", r.device.c_str(), r.op.c_str(),
                r.shape.c_str(), r.ms, r.rate, r.unit.c_str(), pct(r.pct_measured).c_str(),
                pct(r.pct_nominal).c_str());
  }
  std::fflush(stdout);
}

void Runner::note(const std::string& line) const {
  if (json_only_) {
    std::printf("{\"note\":\"%s\"}\n", json_escape(line).c_str());
  } else {
    std::printf("%s\n", line.c_str());
  }
  std::fflush(stdout);
}

void Runner::meta(const std::vector<MetaField>& fields) const {
  std::string text = "moma kernel bench", json;
  for (const MetaField& f : fields) {
    text += "  " + f.key + " " + f.value;
    if (!json.empty()) json += ",";
    json += "\"" + json_escape(f.key) + "\":" + (f.number ? f.value : "\"" + json_escape(f.value) + "\"");
  }
  if (json_only_)
    std::printf("{\"note\":\"%s\",\"meta\":{%s}}\n", json_escape(text).c_str(), json.c_str());
  else
    std::printf("%s\n", text.c_str());
  std::fflush(stdout);
}

void Runner::finish() const {
  if (json_only_) return;
  std::printf("\n");
  for (const auto& r : results_) std::printf("%s\n", to_json(r).c_str());
}

double median_seconds(const std::function<void()>& fn, double target_s) {
  double t0 = now_s();
  fn();
  const double first = now_s() - t0;
  fn();
  const int floor_reps = first < 0.1 ? 10 : 5;
  const int reps = std::clamp(int(target_s / std::max(first, 1e-7)), floor_reps, 200);
  std::vector<double> times;
  times.reserve(size_t(reps));
  for (int i = 0; i < reps; ++i) {
    t0 = now_s();
    fn();
    times.push_back(now_s() - t0);
  }
  std::sort(times.begin(), times.end());
  const size_t n = times.size();
  return n % 2 ? times[n / 2] : 0.5 * (times[n / 2 - 1] + times[n / 2]);
}

double env_double(const char* name, double fallback) {
  const char* s = std::getenv(name);
  if (!s || !*s) return fallback;
  char* end = nullptr;
  const double v = std::strtod(s, &end);
  return end != s && v > 0 ? v : fallback;
}

std::string shape_str(std::initializer_list<int64_t> dims) {
  std::string s;
  for (int64_t d : dims) {
    if (!s.empty()) s += "x";
    s += std::to_string(d);
  }
  return s;
}

namespace {

// "13.0" from CUDA's integer version 13000 (0: "none").
std::string cuda_version_str(int v) {
  return v > 0 ? std::to_string(v / 1000) + "." + std::to_string(v % 1000 / 10) : "none";
}

// Date (UTC), host, whether CUDA is compiled, the GPU (name, compute capability, SMs, memory)
// when one is visible, and the CUDA versions of its driver and of the runtime compiled in.
std::vector<MetaField> run_meta() {
  char date[64];
  const std::time_t t = std::time(nullptr);
  std::strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  char host[256] = "unknown";
  gethostname(host, sizeof host - 1);
  std::vector<MetaField> m = {{"date", date}, {"host", host}, {"cuda_compiled", cuda::compiled() ? "yes" : "no"}};
  if (cuda::device_count() > 0) {
    const cuda::DeviceInfo info = cuda::device_info(0);
    char mem[32];
    std::snprintf(mem, sizeof mem, "%.1f", double(info.total_memory) / double(1ull << 30));
    m.push_back({"device", info.name});
    m.push_back({"compute_capability", std::to_string(info.cc_major) + "." + std::to_string(info.cc_minor)});
    m.push_back({"multiprocessors", std::to_string(info.multiprocessors), true});
    m.push_back({"memory_gib", mem, true});
  }
  m.push_back({"driver_cuda", cuda_version_str(cuda::driver_version())});
  m.push_back({"runtime_cuda", cuda_version_str(cuda::runtime_version())});
  return m;
}

}  // namespace

}  // namespace moma::bench

int main(int argc, char** argv) {
  using namespace moma::bench;
  bool json = false;
  std::vector<std::string> filters;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--json") == 0) {
      json = true;
    } else if (std::strcmp(argv[i], "--help") == 0 || std::strcmp(argv[i], "-h") == 0) {
      std::printf("usage: moma_kernel_bench [--json] [filter...]\n"
                  "  filter: substring of device.op, e.g. gemm, cpu.softmax, cuda\n");
      return 0;
    } else {
      filters.emplace_back(argv[i]);
    }
  }
  Runner runner(filters, json);
  runner.meta(run_meta());

  try {
    run_cpu(runner);
    run_cpu_moe(runner);
    run_cpu_nn(runner);
    run_cuda(runner);
    run_cuda_moe(runner);
    run_cuda_nn(runner);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moma_kernel_bench: %s\n", e.what());
    return 1;
  }
  runner.finish();
  return 0;
}
