// CUDA mixture-of-experts kernels (cuda/kernels_moe.h) at the paper's 435M FFN shapes: d = 1024,
// f = 4096, T = 8192 and 32768 rows, capacity factor c = 1, expert choice, for two layouts:
// "4t4i" (groups [4, 4], modality random with 50% text) and "8x" (one group of 8). Activations
// and weights are bf16 (the GPU training dtype); scores and gates float32. Op names match the CPU
// part (cpu_moe_bench.cc): moe.partition, moe.router_scores, moe.router_gumbel, moe.route_ec,
// moe.route_tc, moe.gather_rows, moe.grouped_gemm, moe.grouped_gemm_wgrad, moe.swiglu,
// moe.swiglu_backward, moe.combine, moe.gate_grad, and the fused expert-FFN GEMMs
// moe.grouped_gemm_swiglu (x @ W1 and x @ W3 + SwiGLU in one kernel, writing a, h1 and h3; FLOPs
// 2 * 2 * rows * d * f) and moe.grouped_gemm_scaled (a @ W2 times the slot gate; 2 * rows * f * d).
//
// Timing as cuda_bench.cc (batches of launches between synchronisations, median of 7). Ceilings
// measured in this run like cuda_bench.cc: device-to-device copy bandwidth (1 GiB, read + write)
// and the bf16 tensor-core rate of moma::cuda::gemm at 8192x4096x4096; nominal bf16 peak
// MOMA_GPU_PEAK_TFLOPS, else 989 TFLOP/s for H100 / H200. Memory-bound kernels report GB/s of
// compulsory traffic (each input read once, each output written once; gathered rows counted once
// per slot) against the copy ceiling; the GEMMs TFLOP/s (2 * rows routed * d * f) against the
// GEMM ceiling and the nominal peak. Plain C++: only runtime.h / kernels.h / kernels_moe.h.
#include <algorithm>
#include <cstdio>
#include <functional>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "bench.h"
#include "ops/moe.h"
#include "cuda_util.h"
#include "core/moe_types.h"

#ifdef MOMA_WITH_CUDA
#include "cuda/kernels.h"
#include "cuda/kernels_moe.h"
#include "cuda/runtime.h"
#endif

namespace moma::bench {

#ifdef MOMA_WITH_CUDA
namespace {

constexpr int kDev = kCudaBenchDevice;

constexpr const char* kMoeOps[] = {
    "moe.partition",  "moe.router_scores", "moe.router_gumbel", "moe.route_ec",
    "moe.route_tc",   "moe.gather_rows",   "moe.grouped_gemm",  "moe.grouped_gemm_wgrad",
    "moe.swiglu",     "moe.swiglu_backward", "moe.combine",     "moe.gate_grad",
    "moe.grouped_gemm_swiglu", "moe.grouped_gemm_scaled"};

struct Ceilings {
  double copy_gbs = 0, gemm_tflops = 0, nominal_tflops = -1;
};

Ceilings measure_ceilings(void* st) {
  const LaunchCtx ctx{st, cuda::error_word(kDev)};
  Ceilings c;
  const cuda::DeviceInfo info = cuda::device_info(kDev);
  const bool hopper = info.name.find("H100") != std::string::npos || info.name.find("H200") != std::string::npos;
  c.nominal_tflops = env_double("MOMA_GPU_PEAK_TFLOPS", hopper ? 989.0 : -1.0);
  c.copy_gbs = copy_ceiling_gbs(st);
  {
    const int64_t M = 8192, N = 4096, K = 4096;
    DeviceBuffer A(sz(M * K) * 2), B(sz(K * N) * 2), C(sz(M * N) * 4);
    cuda::random_uniform(ctx, DType::BF16, A.get(), M * K, 1, 0, -1.0f, 1.0f);
    cuda::random_uniform(ctx, DType::BF16, B.get(), K * N, 2, 0, -1.0f, 1.0f);
    const GemmShape g = gemm_shape(M, N, K);
    const double s = gpu_seconds([&] { cuda::gemm(ctx, DType::BF16, A.get(), DType::BF16, B.get(), DType::F32,
                                                  C.get(), g); });
    c.gemm_tflops = 2.0 * double(M) * double(N) * double(K) / s / 1e12;
  }
  return c;
}

void run_layout(Runner& runner, const Ceilings& ceil, void* st, const std::string& name, const MoeLayout& L,
                const std::vector<int32_t>& modality_host, int64_t d, int64_t f) {
  const LaunchCtx ctx{st, cuda::error_word(kDev)};
  const int64_t T = static_cast<int64_t>(modality_host.size());
  const int64_t E = L.num_experts, W = L.max_group_experts, G = L.num_groups;
  const auto want = [&](const char* op) { return runner.wanted("cuda", op); };
  const std::string tag = name + " T" + std::to_string(T) + " ";
  const auto report_bw = [&](const char* op, const std::string& shape, double bytes, double s) {
    const double gbs = bytes / s / 1e9;
    runner.report({"cuda", op, tag + shape, s * 1e3, gbs, "GB/s", 100.0 * gbs / ceil.copy_gbs, -1});
  };
  const auto report_flops = [&](const char* op, const std::string& shape, double flops, double s) {
    const double tf = flops / s / 1e12;
    runner.report({"cuda", op, tag + shape, s * 1e3, tf, "TFLOP/s", 100.0 * tf / ceil.gemm_tflops,
                   ceil.nominal_tflops > 0 ? 100.0 * tf / ceil.nominal_tflops : -1});
  };

  // Partition.
  DeviceBuffer modality(sz(T) * 4), row_group(sz(T) * 4), counts(sz(G) * 4), offsets(sz(G + 1) * 4), perm(sz(T) * 4);
  cuda::copy_h2d(kDev, modality.get(), modality_host.data(), sz(T) * 4);
  const auto partition = [&] {
    cuda::moe_partition(ctx, modality.as<int32_t>(), T, L, row_group.as<int32_t>(), counts.as<int32_t>(),
                        offsets.as<int32_t>(), perm.as<int32_t>());
  };
  partition();
  if (want("moe.partition")) report_bw("moe.partition", "T" + std::to_string(T), 12.0 * T, gpu_seconds(partition));

  // Router scores (sigmoid), with and without Gumbel noise.
  DeviceBuffer logits(sz(T * E) * 4), scores(sz(T * E) * 4);
  cuda::random_uniform(ctx, DType::F32, logits.get(), T * E, 11, 0, -2.0f, 2.0f);
  const auto router = [&](bool gumbel) {
    cuda::moe_router_scores(ctx, logits.as<float>(), row_group.as<int32_t>(), T, L, RouterFn::Sigmoid, gumbel, 5, 0,
                            scores.as<float>());
  };
  const double score_bytes = 8.0 * T * E + 4.0 * T;
  if (want("moe.router_gumbel")) report_bw("moe.router_gumbel", shape_str({T, E}), score_bytes, gpu_seconds([&] { router(true); }));
  router(false);
  if (want("moe.router_scores")) report_bw("moe.router_scores", shape_str({T, E}), score_bytes, gpu_seconds([&] { router(false); }));

  // Routing (expert choice, c = 1; token choice top-2 for comparison).
  RoutingParams ec;
  const int64_t R = moe_slot_bound(T, L, ec);
  DeviceBuffer expert_offsets(sz(E + 1) * 4), slot_row(sz(R) * 4), slot_gate(sz(R) * 4), row_slots(sz(T * W) * 4);
  const auto route = [&] {
    cuda::moe_route(ctx, scores.as<float>(), row_group.as<int32_t>(), offsets.as<int32_t>(), perm.as<int32_t>(), T, L,
                    ec, R, expert_offsets.as<int32_t>(), slot_row.as<int32_t>(), slot_gate.as<float>(),
                    row_slots.as<int32_t>());
  };
  route();
  std::vector<int32_t> eo_host(sz(E + 1));
  cuda::synchronize(kDev, "moe bench route");
  cuda::copy_d2h(kDev, eo_host.data(), expert_offsets.get(), sz(E + 1) * 4);
  const int64_t used = eo_host[sz(E)];
  if (want("moe.route_ec"))
    report_bw("moe.route_ec", shape_str({T, E}) + " c1", 4.0 * T * E + 4.0 * T + 8.0 * R + 4.0 * T * W, gpu_seconds(route));
  if (want("moe.route_tc")) {
    RoutingParams tc;
    tc.mode = RoutingMode::TokenChoice;
    tc.top_k = 2;
    const int64_t Rt = moe_slot_bound(T, L, tc);
    DeviceBuffer eo(sz(E + 1) * 4), sr(sz(Rt) * 4), sg(sz(Rt) * 4), rs(sz(T * W) * 4);
    const double s = gpu_seconds([&] {
      cuda::moe_route(ctx, scores.as<float>(), row_group.as<int32_t>(), offsets.as<int32_t>(), perm.as<int32_t>(), T, L,
                      tc, Rt, eo.as<int32_t>(), sr.as<int32_t>(), sg.as<float>(), rs.as<int32_t>());
    });
    report_bw("moe.route_tc", shape_str({T, E}) + " k2", 4.0 * T * E + 4.0 * T + 8.0 * Rt + 4.0 * T * W, s);
  }

  // Dispatch: xs [R, d] = x[slot_row] (bf16).
  DeviceBuffer x(sz(T * d) * 2), xs(sz(R * d) * 2);
  cuda::random_uniform(ctx, DType::BF16, x.get(), T * d, 12, 0, -1.0f, 1.0f);
  const auto gather = [&] {
    cuda::moe_gather_rows(ctx, DType::BF16, x.get(), slot_row.as<int32_t>(), nullptr, T, R, d, xs.get());
  };
  gather();
  if (want("moe.gather_rows"))
    report_bw("moe.gather_rows", shape_str({used, d}) + " bf16", 2.0 * d * (used + R) + 4.0 * R, gpu_seconds(gather));

  // Expert FFN pieces on [R, f]: W1 grouped GEMM and its weight gradient, SwiGLU.
  const bool gemm_ops = want("moe.grouped_gemm") || want("moe.grouped_gemm_wgrad");
  const bool swiglu_ops = want("moe.swiglu") || want("moe.swiglu_backward");
  if (gemm_ops || swiglu_ops) {
    DeviceBuffer h1(sz(R * f) * 2), h3(sz(R * f) * 2);
    const double flops = 2.0 * double(used) * double(d) * double(f);
    const std::string gshape = shape_str({used, d, f}) + " bf16";
    if (gemm_ops) {
      DeviceBuffer w1(sz(E * d * f) * 2), dw(sz(E * d * f) * 4);
      cuda::random_uniform(ctx, DType::BF16, w1.get(), E * d * f, 13, 0, -0.03f, 0.03f);
      if (want("moe.grouped_gemm"))
        report_flops("moe.grouped_gemm", gshape, flops, gpu_seconds([&] {
                       cuda::grouped_gemm(ctx, DType::BF16, xs.get(), DType::BF16, w1.get(), false,
                                          expert_offsets.as<int32_t>(), E, R, d, f, DType::BF16, h1.get());
                     }));
      if (want("moe.grouped_gemm_wgrad")) {
        cuda::random_uniform(ctx, DType::BF16, h3.get(), R * f, 14, 0, -1.0f, 1.0f);
        report_flops("moe.grouped_gemm_wgrad", gshape + " ->f32", flops, gpu_seconds([&] {
                       cuda::grouped_gemm_wgrad(ctx, DType::BF16, xs.get(), DType::BF16, h3.get(),
                                                expert_offsets.as<int32_t>(), E, R, d, f, dw.as<float>());
                     }));
      }
    }
    if (swiglu_ops) {
      const int64_t n = R * f;
      DeviceBuffer a(sz(n) * 2);
      cuda::random_uniform(ctx, DType::BF16, h1.get(), n, 15, 0, -4.0f, 4.0f);
      cuda::random_uniform(ctx, DType::BF16, h3.get(), n, 16, 0, -4.0f, 4.0f);
      const std::string sshape = shape_str({R, f}) + " bf16";
      if (want("moe.swiglu"))
        report_bw("moe.swiglu", sshape, 6.0 * n, gpu_seconds([&] { cuda::swiglu(ctx, DType::BF16, h1.get(), h3.get(), a.get(), n); }));
      if (want("moe.swiglu_backward")) {
        DeviceBuffer dh1(sz(n) * 2), dh3(sz(n) * 2);
        report_bw("moe.swiglu_backward", sshape, 10.0 * n, gpu_seconds([&] {
                    cuda::swiglu_backward(ctx, DType::BF16, h1.get(), h3.get(), a.get(), dh1.get(), dh3.get(), n);
                  }));
      }
    }
  }

  // Fused expert FFN GEMMs: [R, d] x W1, W3 [E, d, f] -> a, h1, h3 [R, f]; a [R, f] x W2 [E, f, d]
  // scaled by the slot gates -> [R, d].
  if (want("moe.grouped_gemm_swiglu") || want("moe.grouped_gemm_scaled")) {
    DeviceBuffer w1(sz(E * d * f) * 2), w3(sz(E * d * f) * 2), a(sz(R * f) * 2), h1(sz(R * f) * 2), h3(sz(R * f) * 2);
    cuda::random_uniform(ctx, DType::BF16, w1.get(), E * d * f, 17, 0, -0.03f, 0.03f);
    cuda::random_uniform(ctx, DType::BF16, w3.get(), E * d * f, 18, 0, -0.03f, 0.03f);
    const double flops = 2.0 * double(used) * double(d) * double(f);
    if (want("moe.grouped_gemm_swiglu"))
      report_flops("moe.grouped_gemm_swiglu", shape_str({used, d, f}) + " x2 bf16", 2.0 * flops, gpu_seconds([&] {
                     cuda::grouped_gemm_swiglu(ctx, DType::BF16, xs.get(), DType::BF16, w1.get(), w3.get(), false,
                                               expert_offsets.as<int32_t>(), E, R, d, f, DType::BF16, a.get(),
                                               h1.get(), h3.get());
                   }));
    if (want("moe.grouped_gemm_scaled")) {
      DeviceBuffer out(sz(R * d) * 2);
      cuda::random_uniform(ctx, DType::BF16, a.get(), R * f, 19, 0, -1.0f, 1.0f);
      report_flops("moe.grouped_gemm_scaled", shape_str({used, f, d}) + " bf16", flops, gpu_seconds([&] {
                     cuda::grouped_gemm_scaled(ctx, DType::BF16, a.get(), DType::BF16, w1.get(), false,
                                               expert_offsets.as<int32_t>(), slot_gate.as<float>(), E, R, f, d,
                                               DType::BF16, out.get());
                   }));
    }
  }

  // Combine: y [T, d] = sum of gate * expert output (xs stands in for the outputs).
  if (want("moe.combine")) {
    DeviceBuffer y(sz(T * d) * 2);
    report_bw("moe.combine", shape_str({T, d}) + " bf16", 2.0 * d * (used + T) + 4.0 * T * W + 4.0 * used, gpu_seconds([&] {
                cuda::moe_combine(ctx, DType::BF16, xs.get(), row_slots.as<int32_t>(), slot_gate.as<float>(), T, W, R,
                                  d, y.get());
              }));
  }
  // Gate gradient: dscores [T, E] from the expert outputs and dy = x.
  if (want("moe.gate_grad")) {
    DeviceBuffer dscores(sz(T * E) * 4);
    report_bw("moe.gate_grad", shape_str({used, d}) + " bf16", 4.0 * d * used + 4.0 * used + 4.0 * T * E, gpu_seconds([&] {
                cuda::moe_gate_grad(ctx, DType::BF16, xs.get(), x.get(), slot_row.as<int32_t>(),
                                    expert_offsets.as<int32_t>(), T, R, d, L, dscores.as<float>());
              }));
  }
  cuda::synchronize(kDev, "moe bench layout");
}

}  // namespace

void run_cuda_moe(Runner& runner) {
  if (std::none_of(std::begin(kMoeOps), std::end(kMoeOps), [&](const char* op) { return runner.wanted("cuda", op); }))
    return;
  if (cuda::device_count() <= 0) {
    runner.note("cuda moe: backend compiled, no GPU visible; skipping the CUDA MoE benchmarks");
    return;
  }
  void* st = cuda::stream(kDev);
  const LaunchCtx ctx = cuda::launch_ctx(kDev);
  const Ceilings ceil = measure_ceilings(st);
  char line[256];
  std::snprintf(line, sizeof line,
                "cuda moe: d=1024 f=4096 c=1 bf16; ceilings: copy %.1f GB/s, gemm_bf16 %.1f TFLOP/s (nominal %.0f)",
                ceil.copy_gbs, ceil.gemm_tflops, ceil.nominal_tflops);
  runner.note(line);
  const int64_t d = 1024, f = 4096;
  for (int64_t T : {int64_t(8192), int64_t(32768)}) {
    std::mt19937 rng(2024);
    std::vector<int32_t> modality(sz(T));
    for (auto& m : modality) m = static_cast<int32_t>(rng() & 1u);  // 0 = text, 1 = image, 50% each
    run_layout(runner, ceil, st, "4t4i", ops::make_moe_layout({4, 4}, {0, 1}, "bench"), modality, d, f);
    run_layout(runner, ceil, st, "8x", ops::make_moe_layout({8}, {0, 0}, "bench"), modality, d, f);
  }
}

#else

void run_cuda_moe(Runner& runner) {
  (void)runner;  // run_cuda already notes that the backend is not compiled
}

#endif

}  // namespace moma::bench
