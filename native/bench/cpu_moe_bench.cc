// CPU mixture-of-experts kernels (csrc/cpu/kernels_moe.h) at the paper's 435M FFN shapes:
// d = 1024, f = 4096, T = MOMA_BENCH_T rows (default 8192), capacity factor c = 1, float32, for
// two layouts: "4t4i" (groups [4, 4], modality random with 50% text) and "8x" (one group of 8).
// The data follows one forward / backward pass of an expert-choice layer: partition, router
// scores (sigmoid; also with Gumbel noise), routing (expert choice; token choice top-2 for
// comparison), dispatch (gather_rows), W1 grouped GEMM and its weight gradient, SwiGLU and its
// backward, combine and the gate gradient.
// Memory-bound kernels report GB/s of compulsory traffic (each input element read once, each
// output written once; gathered rows counted once per slot) against the measured copy ceiling;
// the GEMMs report GFLOP/s (2 * rows routed * d * f) against the FMA ceiling and the nominal peak.
#include <algorithm>
#include <cstdio>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "bench.h"
#include "ops/moe.h"
#include "core/moe_types.h"
#include "cpu/kernels.h"
#include "cpu/kernels_moe.h"
#include "cpu/thread_pool.h"

namespace moma::bench {
namespace {

constexpr const char* kMoeOps[] = {
    "moe.partition",  "moe.router_scores", "moe.router_gumbel", "moe.route_ec",
    "moe.route_tc",   "moe.gather_rows",   "moe.grouped_gemm",  "moe.grouped_gemm_wgrad",
    "moe.swiglu",     "moe.swiglu_backward", "moe.combine",     "moe.gate_grad"};

void run_layout(Runner& runner, const std::string& name, const MoeLayout& L, const std::vector<int32_t>& modality,
                int64_t d, int64_t f) {
  const CpuCeilings& ceilings = cpu_ceilings();
  const double nominal = env_double("MOMA_CPU_PEAK_GFLOPS", 256.0);
  const int64_t T = static_cast<int64_t>(modality.size());
  const int64_t E = L.num_experts, W = L.max_group_experts, G = L.num_groups;
  const auto want = [&](const char* op) { return runner.wanted("cpu", op); };
  const auto report_bw = [&](const char* op, const std::string& shape, double bytes, double s) {
    const double gbs = bytes / s / 1e9;
    runner.report({"cpu", op, name + " " + shape, s * 1e3, gbs, "GB/s", 100.0 * gbs / ceilings.copy_gbs, -1});
  };
  const auto report_flops = [&](const char* op, const std::string& shape, double flops, double s) {
    const double rate = flops / s / 1e9;
    runner.report({"cpu", op, name + " " + shape, s * 1e3, rate, "GFLOP/s",
                   ceilings.fma_gflops > 0 ? 100.0 * rate / ceilings.fma_gflops : -1, 100.0 * rate / nominal});
  };
  constexpr double kMemTarget = 0.3, kGemmTarget = 0.1;

  // Partition.
  std::vector<int32_t> row_group(sz(T)), counts(sz(G)), offsets(sz(G + 1)), perm(sz(T));
  const auto partition = [&] {
    cpu::moe_partition(kCpuLaunch, modality.data(), T, L, row_group.data(), counts.data(), offsets.data(), perm.data());
  };
  partition();
  if (want("moe.partition")) report_bw("moe.partition", "T" + std::to_string(T), 12.0 * T, median_seconds(partition, kMemTarget));

  // Router scores (sigmoid), from logits of a plausible spread.
  std::vector<float> logits(sz(T * E)), scores(sz(T * E));
  cpu::random_uniform(kCpuLaunch, DType::F32, logits.data(), T * E, 11, 0, -2.0f, 2.0f);
  const auto router = [&](bool gumbel) {
    cpu::moe_router_scores(kCpuLaunch, logits.data(), row_group.data(), T, L, RouterFn::Sigmoid, gumbel, 5, 0,
                           scores.data());
  };
  const double score_bytes = 8.0 * T * E + 4.0 * T;
  if (want("moe.router_gumbel"))
    report_bw("moe.router_gumbel", shape_str({T, E}), score_bytes, median_seconds([&] { router(true); }, kMemTarget));
  router(false);
  if (want("moe.router_scores"))
    report_bw("moe.router_scores", shape_str({T, E}), score_bytes, median_seconds([&] { router(false); }, kMemTarget));

  // Routing.
  RoutingParams ec;
  const int64_t R = moe_slot_bound(T, L, ec);
  std::vector<int32_t> expert_offsets(sz(E + 1)), slot_row(sz(R)), row_slots(sz(T * W));
  std::vector<float> slot_gate(sz(R));
  const auto route = [&] {
    cpu::moe_route(kCpuLaunch, scores.data(), row_group.data(), offsets.data(), perm.data(), T, L, ec, R,
                   expert_offsets.data(), slot_row.data(), slot_gate.data(), row_slots.data());
  };
  route();
  const int64_t used = expert_offsets[sz(E)];
  const double route_bytes = 4.0 * T * E + 4.0 * T + 8.0 * R + 4.0 * T * W;
  if (want("moe.route_ec")) report_bw("moe.route_ec", shape_str({T, E}) + " c1", route_bytes, median_seconds(route, kMemTarget));
  if (want("moe.route_tc")) {
    RoutingParams tc;
    tc.mode = RoutingMode::TokenChoice;
    tc.top_k = 2;
    const int64_t Rt = moe_slot_bound(T, L, tc);
    std::vector<int32_t> eo(sz(E + 1)), sr(sz(Rt)), rs(sz(T * W));
    std::vector<float> sg(sz(Rt));
    const double s = median_seconds([&] {
      cpu::moe_route(kCpuLaunch, scores.data(), row_group.data(), offsets.data(), perm.data(), T, L, tc, Rt, eo.data(),
                     sr.data(), sg.data(), rs.data());
    }, kMemTarget);
    report_bw("moe.route_tc", shape_str({T, E}) + " k2", 4.0 * T * E + 4.0 * T + 8.0 * Rt + 4.0 * T * W, s);
  }

  const bool gemm_ops = want("moe.grouped_gemm") || want("moe.grouped_gemm_wgrad");
  const bool swiglu_ops = want("moe.swiglu") || want("moe.swiglu_backward");
  if (!gemm_ops && !swiglu_ops && !want("moe.gather_rows") && !want("moe.combine") && !want("moe.gate_grad")) return;

  // Dispatch: xs [R, d] = x[slot_row].
  std::vector<float> x(sz(T * d)), xs(sz(R * d));
  cpu::random_uniform(kCpuLaunch, DType::F32, x.data(), T * d, 12, 0, -1.0f, 1.0f);
  const auto gather = [&] {
    cpu::moe_gather_rows(kCpuLaunch, DType::F32, x.data(), slot_row.data(), nullptr, T, R, d, xs.data());
  };
  gather();
  if (want("moe.gather_rows"))
    report_bw("moe.gather_rows", shape_str({used, d}), 4.0 * d * (used + R) + 4.0 * R, median_seconds(gather, kMemTarget));

  // Expert FFN pieces on [R, f]: W1 grouped GEMM (and its weight gradient), SwiGLU.
  if (gemm_ops || swiglu_ops) {
    std::vector<float> h1(sz(R * f)), h3(sz(R * f));
    const double flops = 2.0 * double(used) * double(d) * double(f);
    const std::string gshape = shape_str({used, d, f});
    if (gemm_ops) {
      std::vector<float> w1(sz(E * d * f));
      cpu::random_uniform(kCpuLaunch, DType::F32, w1.data(), E * d * f, 13, 0, -0.03f, 0.03f);
      const auto fwd = [&] {
        cpu::grouped_gemm(kCpuLaunch, DType::F32, xs.data(), DType::F32, w1.data(), false, expert_offsets.data(), E,
                          R, d, f, DType::F32, h1.data());
      };
      if (want("moe.grouped_gemm")) report_flops("moe.grouped_gemm", gshape, flops, median_seconds(fwd, kGemmTarget));
      if (want("moe.grouped_gemm_wgrad")) {
        // dW1[e] = xs[seg e]^T @ dh1[seg e], with w1's storage reused for dW1.
        cpu::random_uniform(kCpuLaunch, DType::F32, h3.data(), R * f, 14, 0, -1.0f, 1.0f);
        const auto wgrad = [&] {
          cpu::grouped_gemm_wgrad(kCpuLaunch, DType::F32, xs.data(), DType::F32, h3.data(), expert_offsets.data(), E,
                                  R, d, f, w1.data());
        };
        report_flops("moe.grouped_gemm_wgrad", gshape, flops, median_seconds(wgrad, kGemmTarget));
      }
    }
    if (swiglu_ops) {
      const int64_t n = R * f;
      std::vector<float> a(sz(n));
      cpu::random_uniform(kCpuLaunch, DType::F32, h1.data(), n, 15, 0, -4.0f, 4.0f);
      cpu::random_uniform(kCpuLaunch, DType::F32, h3.data(), n, 16, 0, -4.0f, 4.0f);
      const std::string sshape = shape_str({R, f});
      if (want("moe.swiglu")) {
        const double s = median_seconds([&] { cpu::swiglu(kCpuLaunch, DType::F32, h1.data(), h3.data(), a.data(), n); }, kMemTarget);
        report_bw("moe.swiglu", sshape, 12.0 * n, s);
      }
      if (want("moe.swiglu_backward")) {
        std::vector<float> dh1(sz(n)), dh3(sz(n));
        const double s = median_seconds([&] {
          cpu::swiglu_backward(kCpuLaunch, DType::F32, h1.data(), h3.data(), a.data(), dh1.data(), dh3.data(), n);
        }, kMemTarget);
        report_bw("moe.swiglu_backward", sshape, 20.0 * n, s);
      }
    }
  }

  // Combine: y [T, d] = sum of gate * expert output (xs stands in for the outputs).
  if (want("moe.combine")) {
    std::vector<float> y(sz(T * d));
    const double s = median_seconds([&] {
      cpu::moe_combine(kCpuLaunch, DType::F32, xs.data(), row_slots.data(), slot_gate.data(), T, W, R, d, y.data());
    }, kMemTarget);
    report_bw("moe.combine", shape_str({T, d}), 4.0 * d * (used + T) + 4.0 * T * W + 4.0 * used, s);
  }
  // Gate gradient: dscores [T, E] from the expert outputs and dy = x.
  if (want("moe.gate_grad")) {
    std::vector<float> dscores(sz(T * E));
    const double s = median_seconds([&] {
      cpu::moe_gate_grad(kCpuLaunch, DType::F32, xs.data(), x.data(), slot_row.data(), expert_offsets.data(), T, R, d,
                         L, dscores.data());
    }, kMemTarget);
    report_bw("moe.gate_grad", shape_str({used, d}), 8.0 * d * used + 4.0 * used + 4.0 * T * E, s);
  }
}

}  // namespace

void run_cpu_moe(Runner& runner) {
  bool any = false;
  for (const char* op : kMoeOps) any = any || runner.wanted("cpu", op);
  if (!any) return;
  const int64_t T = static_cast<int64_t>(env_double("MOMA_BENCH_T", 8192));
  const int64_t d = 1024, f = 4096;
  const CpuCeilings& ceilings = cpu_ceilings();
  char line[256];
  std::snprintf(line, sizeof line,
                "cpu moe: T=%lld d=%lld f=%lld c=1 float32, %d threads; ceilings: fma %.1f GFLOP/s, copy %.1f GB/s",
                static_cast<long long>(T), static_cast<long long>(d), static_cast<long long>(f), cpu::num_threads(),
                ceilings.fma_gflops, ceilings.copy_gbs);
  runner.note(line);

  // Modality: 0 = text, 1 = image, each row text with probability 1/2.
  std::mt19937 rng(2024);
  std::vector<int32_t> modality(sz(T));
  for (auto& m : modality) m = static_cast<int32_t>(rng() & 1u);
  run_layout(runner, "4t4i", ops::make_moe_layout({4, 4}, {0, 1}, "bench"), modality, d, f);
  run_layout(runner, "8x", ops::make_moe_layout({8}, {0, 0}, "bench"), modality, d, f);
}

}  // namespace moma::bench
