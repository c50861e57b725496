// CUDA transformer kernels (cuda/kernels_nn.h) at the 435M tier's shapes: d = 1024, 16 heads of
// 64, T = 32768 rows (8 sequences of 4096), vocabulary 65,536. Op names: nn.rmsnorm,
// nn.rmsnorm_backward, nn.layernorm, nn.layernorm_backward, nn.rope, nn.attention,
// nn.attention_backward, nn.cross_entropy, nn.cross_entropy_backward, nn.adamw, and the
// tensor-core attention attention_fwd_bf16_tc, attention_bwd_bf16_tc, attention_fwd_bwd_bf16_tc.
//
// Activations bf16 (the GPU training dtype) and, for the norms, float32 too; statistics, losses
// and optimizer state float32. Timing as cuda_bench.cc (batches of launches between
// synchronisations, median of 7). Ceilings: device-to-device copy bandwidth measured in this run
// (1 GiB, read + write) for the memory-bound kernels, which report GB/s of compulsory traffic
// (each input read once, each output written once). Attention reports TFLOP/s with the causal
// count (forward 4 D sum_t L_t per head, backward 2.5x that, L_t the keys row t sees):
//   nn.attention, nn.attention_backward: float32 inputs (the SIMT kernels) against the nominal
//     float32 SIMT peak MOMA_GPU_F32_TFLOPS, else 67 TFLOP/s for H100 / H200 SXM; no measured
//     ceiling (-).
//   attention_fwd_bf16_tc, attention_bwd_bf16_tc, attention_fwd_bwd_bf16_tc (3.5x the forward's
//     count): bf16 (the tensor-core kernels), N 8192 rows in
//     segments of 4096 and of 1024, H 16, D 64 and 128 (shape "N8192xH16xD64xseg4096"), against
//     the bf16 GEMM rate measured in this run (moma::cuda::gemm at 8192x4096x4096, as
//     cuda_moe_bench.cc) and the nominal bf16 peak MOMA_GPU_PEAK_TFLOPS, else 989 TFLOP/s for
//     H100 / H200.
// Plain C++: only runtime.h and the kernel headers.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "bench.h"
#include "core/nn_types.h"
#include "cuda_util.h"

#ifdef MOMA_WITH_CUDA
#include "cuda/kernels.h"
#include "cuda/kernels_nn.h"
#include "cuda/runtime.h"
#endif

namespace moma::bench {

#ifdef MOMA_WITH_CUDA
namespace {

constexpr int kDev = kCudaBenchDevice;
constexpr const char* kNnOps[] = {"nn.rmsnorm",        "nn.rmsnorm_backward", "nn.layernorm",
                                  "nn.layernorm_backward", "nn.rope",         "nn.attention",
                                  "nn.attention_backward", "nn.cross_entropy", "nn.cross_entropy_backward",
                                  "nn.adamw",          "attention_fwd_bf16_tc", "attention_bwd_bf16_tc",
                                  "attention_fwd_bwd_bf16_tc"};

size_t elem_size(DType dt) { return dt == DType::BF16 ? 2 : 4; }
const char* dt_name(DType dt) { return dt == DType::BF16 ? "bf16" : "f32"; }

// The bf16 tensor-core GEMM rate of this run (TFLOP/s), as cuda_moe_bench.cc measures it.
double gemm_ceiling_tflops(void* st) {
  const LaunchCtx ctx{st, cuda::error_word(kDev)};
  const int64_t M = 8192, N = 4096, K = 4096;
  DeviceBuffer A(sz(M * K) * 2), B(sz(K * N) * 2), C(sz(M * N) * 4);
  cuda::random_uniform(ctx, DType::BF16, A.get(), M * K, 1, 0, -1.0f, 1.0f);
  cuda::random_uniform(ctx, DType::BF16, B.get(), K * N, 2, 0, -1.0f, 1.0f);
  const GemmShape g = gemm_shape(M, N, K);
  const double s =
      gpu_seconds([&] { cuda::gemm(ctx, DType::BF16, A.get(), DType::BF16, B.get(), DType::F32, C.get(), g); });
  return 2.0 * double(M) * double(N) * double(K) / s / 1e12;
}

}  // namespace

void run_cuda_nn(Runner& runner) {
  if (std::none_of(std::begin(kNnOps), std::end(kNnOps), [&](const char* op) { return runner.wanted("cuda", op); }))
    return;
  if (cuda::device_count() <= 0) {
    runner.note("cuda nn: backend compiled, no GPU visible; skipping the CUDA transformer-kernel benchmarks");
    return;
  }
  void* st = cuda::stream(kDev);
  const LaunchCtx ctx = cuda::launch_ctx(kDev);
  const cuda::DeviceInfo info = cuda::device_info(kDev);
  const bool hopper = info.name.find("H100") != std::string::npos || info.name.find("H200") != std::string::npos;
  const double f32_peak = env_double("MOMA_GPU_F32_TFLOPS", hopper ? 67.0 : -1.0);
  const double copy_gbs = copy_ceiling_gbs(st);
  char line[256];
  std::snprintf(line, sizeof line, "cuda nn: ceilings: copy %.1f GB/s, nominal f32 SIMT %.0f TFLOP/s", copy_gbs,
                f32_peak);
  runner.note(line);
  const auto want = [&](const char* op) { return runner.wanted("cuda", op); };
  const auto report_bw = [&](const char* op, const std::string& shape, double bytes, double s) {
    const double gbs = bytes / s / 1e9;
    runner.report({"cuda", op, shape, s * 1e3, gbs, "GB/s", 100.0 * gbs / copy_gbs, -1});
  };
  const auto report_flops = [&](const char* op, const std::string& shape, double flops, double s) {
    const double tf = flops / s / 1e12;
    runner.report({"cuda", op, shape, s * 1e3, tf, "TFLOP/s", -1, f32_peak > 0 ? 100.0 * tf / f32_peak : -1});
  };

  const int64_t T = 32768, d = 1024, H = 16, Dh = 64;

  // RMSNorm [T, d] and LayerNorm over heads [T, H, Dh] (QK-norm), bf16 and f32.
  for (DType dt : {DType::BF16, DType::F32}) {
    const size_t es = elem_size(dt);
    const std::string tag = std::string(" ") + dt_name(dt);
    if (want("nn.rmsnorm") || want("nn.rmsnorm_backward")) {  // forward and backward
      const int64_t n = T * d;
      DeviceBuffer x(sz(n) * es), dy(sz(n) * es), y(sz(n) * es), dx(sz(n) * es), w(sz(d) * 4), dw(sz(d) * 4),
          rstd(sz(T) * 4);
      cuda::random_normal(ctx, dt, x.get(), n, 1, 0, 0.0f, 1.0f);
      cuda::random_normal(ctx, dt, dy.get(), n, 2, 0, 0.0f, 1.0f);
      cuda::random_uniform(ctx, DType::F32, w.get(), d, 3, 0, 0.5f, 1.5f);
      const auto fwd = [&] { cuda::rmsnorm(ctx, dt, x.get(), w.as<float>(), T, d, 1e-5f, y.get(), rstd.as<float>()); };
      fwd();
      if (want("nn.rmsnorm")) report_bw("nn.rmsnorm", shape_str({T, d}) + tag, 2.0 * es * n + 4.0 * T + 4.0 * d, gpu_seconds(fwd));
      if (want("nn.rmsnorm_backward"))
        report_bw("nn.rmsnorm_backward", shape_str({T, d}) + tag, 3.0 * es * n + 4.0 * T + 8.0 * d, gpu_seconds([&] {
                    cuda::rmsnorm_backward(ctx, dt, x.get(), w.as<float>(), rstd.as<float>(), dy.get(), T, d, dx.get(),
                                           dw.as<float>());
                  }));
    }
    if (want("nn.layernorm") || want("nn.layernorm_backward")) {
      const int64_t n = T * H * Dh;
      DeviceBuffer x(sz(n) * es), dy(sz(n) * es), y(sz(n) * es), dx(sz(n) * es), w(sz(H * Dh) * 4),
          b(sz(H * Dh) * 4), dw(sz(H * Dh) * 4), db(sz(H * Dh) * 4), mean(sz(T * H) * 4), rstd(sz(T * H) * 4);
      cuda::random_normal(ctx, dt, x.get(), n, 4, 0, 0.5f, 2.0f);
      cuda::random_normal(ctx, dt, dy.get(), n, 5, 0, 0.0f, 1.0f);
      cuda::random_uniform(ctx, DType::F32, w.get(), H * Dh, 6, 0, 0.5f, 1.5f);
      cuda::random_uniform(ctx, DType::F32, b.get(), H * Dh, 7, 0, -0.5f, 0.5f);
      const auto fwd = [&] {
        cuda::layernorm(ctx, dt, x.get(), w.as<float>(), b.as<float>(), T, H, Dh, 1e-5f, y.get(), mean.as<float>(),
                        rstd.as<float>());
      };
      fwd();
      if (want("nn.layernorm"))
        report_bw("nn.layernorm", shape_str({T, H, Dh}) + tag, 2.0 * es * n + 8.0 * T * H + 8.0 * H * Dh,
                gpu_seconds(fwd));
      if (want("nn.layernorm_backward"))
        report_bw("nn.layernorm_backward", shape_str({T, H, Dh}) + tag, 3.0 * es * n + 8.0 * T * H + 12.0 * H * Dh,
                  gpu_seconds([&] {
                    cuda::layernorm_backward(ctx, dt, x.get(), w.as<float>(), mean.as<float>(), rstd.as<float>(),
                                             dy.get(), T, H, Dh, dx.get(), dw.as<float>(), db.as<float>());
                  }));
    }
  }

  // RoPE on [T, H, Dh] bf16, positions 0..4095 per sequence.
  std::vector<int32_t> pos_h(sz(T));
  for (int64_t t = 0; t < T; ++t) pos_h[sz(t)] = static_cast<int32_t>(t % 4096);
  if (want("nn.rope")) {
    const int64_t n = T * H * Dh;
    DeviceBuffer x(sz(n) * 2), y(sz(n) * 2), pos(sz(T) * 4);
    cuda::random_normal(ctx, DType::BF16, x.get(), n, 8, 0, 0.0f, 1.0f);
    cuda::copy_h2d(kDev, pos.get(), pos_h.data(), sz(T) * 4);
    report_bw("nn.rope", shape_str({T, H, Dh}) + " bf16", 4.0 * n + 4.0 * T, gpu_seconds([&] {
                cuda::rope(ctx, DType::BF16, x.get(), pos.as<int32_t>(), T, H, Dh, 10000.0f, false, y.get());
              }));
  }

  // Attention of N rows in documents of `seg_len`, H heads of D, dtype dt: reports op_fwd, op_bwd
  // and (unless nullptr) op_both, the forward followed by the backward, through `report`.
  const auto bench_attention = [&](DType dt, int64_t N, int64_t Ha, int64_t D, int64_t seg_len, const char* op_fwd,
                                   const char* op_bwd, const char* op_both, const std::string& shape,
                                   const std::function<void(const char*, const std::string&, double, double)>& report) {
    const int64_t n = N * Ha * D;
    const size_t es = elem_size(dt);
    DeviceBuffer q(sz(n) * es), k(sz(n) * es), v(sz(n) * es), o(sz(n) * es), lse(sz(N * Ha) * 4), seg(sz(N) * 4);
    cuda::random_normal(ctx, dt, q.get(), n, 9, 0, 0.0f, 1.0f);
    cuda::random_normal(ctx, dt, k.get(), n, 10, 0, 0.0f, 1.0f);
    cuda::random_normal(ctx, dt, v.get(), n, 11, 0, 0.0f, 1.0f);
    std::vector<int32_t> starts(sz(N));
    double pairs = 0;  // sum_t L_t
    for (int64_t t = 0; t < N; ++t) {
      starts[sz(t)] = static_cast<int32_t>(t - t % seg_len);
      pairs += double(t % seg_len + 1);
    }
    cuda::copy_h2d(kDev, seg.get(), starts.data(), sz(N) * 4);
    const double fwd_flops = 4.0 * double(D) * pairs * double(Ha);
    const float scale = static_cast<float>(1.0 / std::sqrt(double(D)));
    const auto fwd = [&] {
      cuda::attention(ctx, dt, q.get(), k.get(), v.get(), seg.as<int32_t>(), N, Ha, D, scale, o.get(), lse.as<float>());
    };
    fwd();
    if (want(op_fwd)) report(op_fwd, shape, fwd_flops, gpu_seconds(fwd));
    const bool both = op_both != nullptr && want(op_both);
    if (want(op_bwd) || both) {
      DeviceBuffer dout(sz(n) * es), dq(sz(n) * es), dk(sz(n) * es), dv(sz(n) * es);
      cuda::random_normal(ctx, dt, dout.get(), n, 12, 0, 0.0f, 1.0f);
      const auto bwd = [&] {
        cuda::attention_backward(ctx, dt, q.get(), k.get(), v.get(), o.get(), lse.as<float>(), dout.get(),
                                 seg.as<int32_t>(), N, Ha, D, scale, dq.get(), dk.get(), dv.get());
      };
      if (want(op_bwd)) report(op_bwd, shape, 2.5 * fwd_flops, gpu_seconds(bwd));
      if (both) report(op_both, shape, 3.5 * fwd_flops, gpu_seconds([&] {
                         fwd();
                         bwd();
                       }));
    }
  };

  // SIMT attention: 8 documents of 4096 rows, H 16, Dh 64, float32.
  if (want("nn.attention") || want("nn.attention_backward"))
    bench_attention(DType::F32, T, H, Dh, 4096, "nn.attention", "nn.attention_backward", nullptr,
                    shape_str({T, H, Dh}) + " seg4096 f32", report_flops);

  // Tensor-core attention, bf16: N 8192, H 16, D 64 / 128, documents of 4096 / 1024.
  if (want("attention_fwd_bf16_tc") || want("attention_bwd_bf16_tc") || want("attention_fwd_bwd_bf16_tc")) {
    const double gemm_tflops = gemm_ceiling_tflops(st);
    const double bf16_peak = env_double("MOMA_GPU_PEAK_TFLOPS", hopper ? 989.0 : -1.0);
    std::snprintf(line, sizeof line, "cuda nn: ceilings: gemm_bf16 %.1f TFLOP/s (8192x4096x4096), nominal bf16 %.0f TFLOP/s",
                  gemm_tflops, bf16_peak);
    runner.note(line);
    const auto report_tc = [&](const char* op, const std::string& shape, double flops, double s) {
      const double tf = flops / s / 1e12;
      runner.report({"cuda", op, shape, s * 1e3, tf, "TFLOP/s", 100.0 * tf / gemm_tflops,
                     bf16_peak > 0 ? 100.0 * tf / bf16_peak : -1});
    };
    const int64_t N = 8192;
    for (int64_t D : {64, 128})
      for (int64_t seg_len : {4096, 1024}) {
        const std::string shape = "N" + std::to_string(N) + "xH" + std::to_string(H) + "xD" + std::to_string(D) +
                                  "xseg" + std::to_string(seg_len);
        bench_attention(DType::BF16, N, H, D, seg_len, "attention_fwd_bf16_tc", "attention_bwd_bf16_tc",
                        "attention_fwd_bwd_bf16_tc", shape, report_tc);
      }
  }

  // Cross-entropy [8192, 65536] bf16 logits, 5% ignored rows.
  if (want("nn.cross_entropy") || want("nn.cross_entropy_backward")) {
    const int64_t N = 8192, V = 65536, n = N * V;
    DeviceBuffer logits(sz(n) * 2), dlogits(sz(n) * 2), tgt(sz(N) * 4), nll(sz(N) * 4), lse(sz(N) * 4),
        g(sz(N) * 4), gz(sz(N) * 4);
    cuda::random_normal(ctx, DType::BF16, logits.get(), n, 13, 0, 0.0f, 2.0f);
    cuda::fill(ctx, DType::F32, g.get(), N, 1.0 / 8192.0);
    cuda::fill(ctx, DType::F32, gz.get(), N, 1e-5 / 8192.0);
    std::mt19937 rng(7);
    std::vector<int32_t> t_h(sz(N));
    for (auto& t : t_h) t = rng() % 20 == 0 ? -1 : static_cast<int32_t>(rng() % V);
    cuda::copy_h2d(kDev, tgt.get(), t_h.data(), sz(N) * 4);
    const auto fwd = [&] {
      cuda::cross_entropy(ctx, DType::BF16, logits.get(), tgt.as<int32_t>(), N, V, nll.as<float>(), lse.as<float>());
    };
    fwd();
    if (want("nn.cross_entropy")) report_bw("nn.cross_entropy", shape_str({N, V}) + " bf16", 2.0 * n + 12.0 * N, gpu_seconds(fwd));
    if (want("nn.cross_entropy_backward"))
      report_bw("nn.cross_entropy_backward", shape_str({N, V}) + " bf16 z", 4.0 * n + 16.0 * N, gpu_seconds([&] {
                  cuda::cross_entropy_backward(ctx, DType::BF16, logits.get(), tgt.as<int32_t>(), lse.as<float>(),
                                               g.as<float>(), gz.as<float>(), N, V, dlogits.get());
                }));
  }

  // AdamW over 256M float32 parameters, with the bf16 copy.
  if (want("nn.adamw")) {
    const int64_t n = int64_t(256) << 20;
    DeviceBuffer p(sz(n) * 4), g(sz(n) * 4), m(sz(n) * 4), v(sz(n) * 4), po(sz(n) * 4), mo(sz(n) * 4), vo(sz(n) * 4),
        pb(sz(n) * 2);
    cuda::random_normal(ctx, DType::F32, p.get(), n, 14, 0, 0.0f, 0.02f);
    cuda::random_normal(ctx, DType::F32, g.get(), n, 15, 0, 0.0f, 1e-3f);
    cuda::random_normal(ctx, DType::F32, m.get(), n, 16, 0, 0.0f, 1e-4f);
    cuda::random_uniform(ctx, DType::F32, v.get(), n, 17, 0, 0.0f, 1e-6f);
    AdamWParams h;
    h.lr = 1e-4f;
    h.eps = 1e-5f;
    h.weight_decay = 0.1f;
    h.bias_c1 = 0.1f;
    h.bias_c2 = 0.05f;
    report_bw("nn.adamw", shape_str({n}) + " +bf16", 30.0 * double(n), gpu_seconds([&] {
                cuda::adamw(ctx, p.as<float>(), g.as<float>(), m.as<float>(), v.as<float>(), n, h, po.as<float>(),
                            mo.as<float>(), vo.as<float>(), pb.as<uint16_t>());
              }));
  }
  cuda::synchronize(kDev, "nn bench");
}

#else

void run_cuda_nn(Runner& runner) {
  (void)runner;  // run_cuda already notes that the backend is not compiled
}

#endif

}  // namespace moma::bench
