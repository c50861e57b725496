// CPU transformer kernels (csrc/cpu/kernels_nn.h) at the 435M tier's shapes, float32:
// RMSNorm and its backward on [32768, 1024]; per-head LayerNorm (QK-norm) and its backward and
// RoPE on [32768, 16, 64]; segment-causal attention and its backward on N = 4096 rows in
// segments of 1024 (H 16, D 64); cross-entropy and its backward on [4096, 65536]; AdamW on 64M
// parameters.
// Memory-bound kernels report GB/s of compulsory traffic (each input element read once, each
// output written once) against the measured copy ceiling; attention reports GFLOP/s
// (forward 4 N L D H with L the mean keys per row, backward 2.5x that) against the FMA ceiling
// and the nominal peak. The whole set takes well under a minute on 2 cores.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <iterator>
#include <string>
#include <vector>

#include "bench.h"
#include "core/nn_types.h"
#include "cpu/kernels.h"
#include "cpu/kernels_nn.h"
#include "cpu/thread_pool.h"

namespace moma::bench {
namespace {

constexpr const char* kNnOps[] = {"nn.rmsnorm",   "nn.rmsnorm_backward",      "nn.layernorm",
                                  "nn.layernorm_backward", "nn.rope",         "nn.attention",
                                  "nn.attention_backward", "nn.cross_entropy", "nn.cross_entropy_backward",
                                  "nn.adamw"};

std::vector<float> uniform(int64_t n, uint64_t seed, float lo, float hi) {
  std::vector<float> v(sz(n));
  cpu::random_uniform(kCpuLaunch, DType::F32, v.data(), n, seed, 0, lo, hi);
  return v;
}

}  // namespace

void run_cpu_nn(Runner& runner) {
  if (std::none_of(std::begin(kNnOps), std::end(kNnOps), [&](const char* op) { return runner.wanted("cpu", op); }))
    return;
  const CpuCeilings& ceilings = cpu_ceilings();
  const double nominal = env_double("MOMA_CPU_PEAK_GFLOPS", 256.0);
  const auto want = [&](const char* op) { return runner.wanted("cpu", op); };
  const auto report_bw = [&](const char* op, const std::string& shape, double bytes, double s) {
    const double gbs = bytes / s / 1e9;
    runner.report({"cpu", op, shape, s * 1e3, gbs, "GB/s", 100.0 * gbs / ceilings.copy_gbs, -1});
  };
  const auto report_flops = [&](const char* op, const std::string& shape, double flops, double s) {
    const double rate = flops / s / 1e9;
    runner.report({"cpu", op, shape, s * 1e3, rate, "GFLOP/s",
                   ceilings.fma_gflops > 0 ? 100.0 * rate / ceilings.fma_gflops : -1, 100.0 * rate / nominal});
  };
  constexpr double kTarget = 0.3;
  char line[256];
  std::snprintf(line, sizeof line, "cpu nn: float32, %d threads; ceilings: fma %.1f GFLOP/s, copy %.1f GB/s",
                cpu::num_threads(), ceilings.fma_gflops, ceilings.copy_gbs);
  runner.note(line);

  // RMSNorm [32768, 1024].
  if (want("nn.rmsnorm") || want("nn.rmsnorm_backward")) {
    const int64_t N = 32768, D = 1024;
    const auto x = uniform(N * D, 21, -1.0f, 1.0f), dy = uniform(N * D, 22, -1.0f, 1.0f);
    const auto w = uniform(D, 23, 0.5f, 1.5f);
    std::vector<float> y(sz(N * D)), rstd(sz(N)), dw(sz(D));
    const std::string shape = shape_str({N, D});
    const auto fwd = [&] {
      cpu::rmsnorm(kCpuLaunch, DType::F32, x.data(), w.data(), N, D, 1e-5f, y.data(), rstd.data());
    };
    fwd();
    if (want("nn.rmsnorm"))
      report_bw("nn.rmsnorm", shape, 8.0 * N * D + 4.0 * N + 4.0 * D, median_seconds(fwd, kTarget));
    if (want("nn.rmsnorm_backward")) {
      const double s = median_seconds([&] {
        cpu::rmsnorm_backward(kCpuLaunch, DType::F32, x.data(), w.data(), rstd.data(), dy.data(), N, D, y.data(),
                              dw.data());
      }, kTarget);
      report_bw("nn.rmsnorm_backward", shape, 12.0 * N * D + 4.0 * N + 8.0 * D, s);
    }
  }

  // LayerNorm (QK-norm) and RoPE on [32768, 16, 64].
  if (want("nn.layernorm") || want("nn.layernorm_backward") || want("nn.rope")) {
    const int64_t N = 32768, G = 16, D = 64;
    const auto x = uniform(N * G * D, 31, -1.0f, 1.0f), dy = uniform(N * G * D, 32, -1.0f, 1.0f);
    const auto w = uniform(G * D, 33, 0.5f, 1.5f), b = uniform(G * D, 34, -0.1f, 0.1f);
    std::vector<float> y(sz(N * G * D)), mean(sz(N * G)), rstd(sz(N * G)), dw(sz(G * D)), db(sz(G * D));
    const std::string shape = shape_str({N, G, D});
    if (want("nn.layernorm") || want("nn.layernorm_backward")) {
      const auto fwd = [&] {
        cpu::layernorm(kCpuLaunch, DType::F32, x.data(), w.data(), b.data(), N, G, D, 1e-5f, y.data(), mean.data(),
                       rstd.data());
      };
      fwd();
      if (want("nn.layernorm"))
        report_bw("nn.layernorm", shape, 8.0 * N * G * D + 8.0 * N * G + 8.0 * G * D, median_seconds(fwd, kTarget));
      if (want("nn.layernorm_backward")) {
        const double s = median_seconds([&] {
          cpu::layernorm_backward(kCpuLaunch, DType::F32, x.data(), w.data(), mean.data(), rstd.data(), dy.data(), N, G,
                                  D, y.data(), dw.data(), db.data());
        }, kTarget);
        report_bw("nn.layernorm_backward", shape, 12.0 * N * G * D + 8.0 * N * G + 12.0 * G * D, s);
      }
    }
    if (want("nn.rope")) {
      // Positions: packed sequences of 4096.
      std::vector<int32_t> pos(sz(N));
      for (int64_t n = 0; n < N; ++n) pos[sz(n)] = static_cast<int32_t>(n % 4096);
      const double s = median_seconds([&] {
        cpu::rope(kCpuLaunch, DType::F32, x.data(), pos.data(), N, G, D, 10000.0f, false, y.data());
      }, kTarget);
      report_bw("nn.rope", shape, 8.0 * N * G * D + 4.0 * N, s);
    }
  }

  // Attention: N = 4096 rows in segments of 1024, H 16, D 64.
  if (want("nn.attention") || want("nn.attention_backward")) {
    const int64_t N = 4096, H = 16, D = 64, seg_len = 1024;
    const auto q = uniform(N * H * D, 41, -1.0f, 1.0f), k = uniform(N * H * D, 42, -1.0f, 1.0f);
    const auto v = uniform(N * H * D, 43, -1.0f, 1.0f), dout = uniform(N * H * D, 44, -1.0f, 1.0f);
    std::vector<int32_t> seg(sz(N));
    for (int64_t t = 0; t < N; ++t) seg[sz(t)] = static_cast<int32_t>(t / seg_len * seg_len);
    std::vector<float> o(sz(N * H * D)), lse(sz(N * H)), dq(sz(N * H * D)), dk(sz(N * H * D)), dv(sz(N * H * D));
    double keys = 0;
    for (int64_t t = 0; t < N; ++t) keys += double(t - seg[sz(t)] + 1);
    const double flops = 4.0 * keys * double(D) * double(H);  // 4 N L D H
    const std::string shape = shape_str({N, H, D}) + " seg" + std::to_string(seg_len);
    const float scale = 1.0f / std::sqrt(float(D));
    const auto fwd = [&] {
      cpu::attention(kCpuLaunch, DType::F32, q.data(), k.data(), v.data(), seg.data(), N, H, D, scale, o.data(),
                     lse.data());
    };
    fwd();
    if (want("nn.attention"))
      report_flops("nn.attention", shape, flops, median_seconds(fwd, kTarget));
    if (want("nn.attention_backward")) {
      const double s = median_seconds([&] {
        cpu::attention_backward(kCpuLaunch, DType::F32, q.data(), k.data(), v.data(), o.data(), lse.data(), dout.data(),
                                seg.data(), N, H, D, scale, dq.data(), dk.data(), dv.data());
      }, kTarget);
      report_flops("nn.attention_backward", shape, 2.5 * flops, s);
    }
  }

  // Cross-entropy [4096, 65536].
  if (want("nn.cross_entropy") || want("nn.cross_entropy_backward")) {
    const int64_t N = 4096, V = 65536;
    const auto logits = uniform(N * V, 51, -8.0f, 8.0f);
    std::vector<int32_t> targets(sz(N));
    for (int64_t n = 0; n < N; ++n) targets[sz(n)] = n % 97 == 0 ? -1 : static_cast<int32_t>((n * 7919) % V);
    std::vector<float> nll(sz(N)), lse(sz(N)), g_nll(sz(N), 1.0f / float(N)), g_z(sz(N), 1e-5f / float(N));
    const std::string shape = shape_str({N, V});
    const auto fwd = [&] {
      cpu::cross_entropy(kCpuLaunch, DType::F32, logits.data(), targets.data(), N, V, nll.data(), lse.data());
    };
    fwd();
    if (want("nn.cross_entropy"))
      report_bw("nn.cross_entropy", shape, 4.0 * N * V + 12.0 * N, median_seconds(fwd, kTarget));
    if (want("nn.cross_entropy_backward")) {
      std::vector<float> dlogits(sz(N * V));
      const double s = median_seconds([&] {
        cpu::cross_entropy_backward(kCpuLaunch, DType::F32, logits.data(), targets.data(), lse.data(), g_nll.data(),
                                    g_z.data(), N, V, dlogits.data());
      }, kTarget);
      report_bw("nn.cross_entropy_backward", shape, 8.0 * N * V + 16.0 * N, s);
    }
  }

  // AdamW on 64M parameters: reads p, g, m, v, writes p, m, v.
  if (want("nn.adamw")) {
    const int64_t n = int64_t{1} << 26;
    const auto p = uniform(n, 61, -1.0f, 1.0f), g = uniform(n, 62, -1.0f, 1.0f);
    const auto m = uniform(n, 63, -0.1f, 0.1f), v = uniform(n, 64, 0.0f, 0.01f);
    std::vector<float> po(sz(n)), mo(sz(n)), vo(sz(n));
    AdamWParams h;
    h.weight_decay = 0.1f;
    h.bias_c1 = 0.1f;
    h.bias_c2 = 0.05f;
    const double s = median_seconds([&] {
      cpu::adamw(kCpuLaunch, p.data(), g.data(), m.data(), v.data(), n, h, po.data(), mo.data(), vo.data(), nullptr);
    }, kTarget);
    report_bw("nn.adamw", shape_str({n}), 28.0 * double(n), s);
  }
}

}  // namespace moma::bench
