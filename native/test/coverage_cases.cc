// Coverage of the smaller sequence kernels at their launch boundaries, against their CPU twins:
// mod_select (rank blocks of 256 rows, the one-block compaction over chunks of 1024 rows),
// segment_starts (one block, chunks of 1024 rows, warps of 32), up to 65,536 rows, and the RoPE
// frequency tables that cuda/rope.cu keeps per (device, theta, D): calls that alternate keys must
// each use their own table.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "../../csrc/core/moe_types.h"
#include "../../csrc/cpu/kernels_moe.h"
#include "../../csrc/cpu/kernels_nn.h"
#include "../../cuda/kernels_moe.h"
#include "../../cuda/kernels_nn.h"
#include "harness.h"

namespace moma::native_test {
namespace {

// Scores with exact ties (quarter steps), a few NaN and both zeros; ~10% padding rows (-1).
void mod_inputs(int64_t T, std::vector<float>& scores, std::vector<int32_t>& modality) {
  scores = rand_f(static_cast<size_t>(T), -3.0f, 3.0f);
  modality = rand_i(static_cast<size_t>(T), -1, 8);
  for (int64_t t = 0; t < T; ++t) {
    if (t % 3 == 0) scores[t] = std::round(scores[t] * 4.0f) / 4.0f;
    if (t % 97 == 5) scores[t] = NAN;
    if (t % 89 == 7) scores[t] = (t & 1) ? -0.0f : 0.0f;
  }
}

void add_mod_select_cases() {
  for (int64_t T : {1, 255, 256, 257, 1023, 1024, 1025, 4097, 65535, 65536})
    for (int part = 0; part < 3; ++part) {  // k = 1, half of the valid rows, all of them
      add("mod_select T=" + std::to_string(T) + " k=" + (part == 0 ? "1" : part == 1 ? "half" : "all"), [=] {
        std::vector<float> scores;
        std::vector<int32_t> modality;
        mod_inputs(T, scores, modality);
        if (T == 1) modality[0] = 0;
        const int64_t valid = std::count_if(modality.begin(), modality.end(), [](int32_t m) { return m >= 0; });
        const int64_t k = part == 0 ? 1 : part == 1 ? std::max<int64_t>(1, valid / 2) : valid;
        std::vector<int32_t> want(static_cast<size_t>(k));
        cpu::mod_select(kCpuLaunch, scores.data(), modality.data(), T, k, want.data());
        auto ds = dev_of(scores), dm = dev_of(modality), dr = dev_poisoned(static_cast<size_t>(k) * 4);
        cuda::mod_select(cuda::launch_ctx(0), static_cast<const float*>(ds->p), static_cast<const int32_t*>(dm->p), T,
                         k, static_cast<int32_t*>(dr->p));
        expect_equal(fetch<int32_t>(*dr, static_cast<size_t>(k)), want, "rows");
      });
    }
  add("mod_select fewer valid rows than k", [] {
    const int64_t T = 1500;
    std::vector<float> scores = rand_f(T);
    std::vector<int32_t> modality(T, -1);
    for (int64_t t = 0; t < T; t += 3) modality[t] = 0;  // 500 valid rows
    auto ds = dev_of(scores), dm = dev_of(modality), dr = dev_poisoned(600 * 4);
    cuda::mod_select(cuda::launch_ctx(0), static_cast<const float*>(ds->p), static_cast<const int32_t*>(dm->p), T, 600,
                     static_cast<int32_t*>(dr->p));
    expect_device_error("mod_select");
  });
}

void add_segment_starts_cases() {
  for (int64_t n : {1, 31, 32, 33, 1023, 1024, 1025, 2049, 65535, 65536})
    for (int mode = 0; mode < 3; ++mode) {  // 0 one run, 1 every row its own run, 2 ragged runs
      add("segment_starts n=" + std::to_string(n) + " mode=" + std::to_string(mode), [=] {
        std::vector<int32_t> seg(static_cast<size_t>(n));
        int32_t id = 5;
        int64_t left = 0;
        for (int64_t j = 0; j < n; ++j) {
          if (mode == 1) {
            seg[j] = static_cast<int32_t>(j);
            continue;
          }
          if (mode == 2 && left == 0) {
            id += rand_i(1, 1, 3)[0];                           // next document (ids need not be dense)
            left = rand_i(1, 1, j % 5 == 0 ? 3000 : 300)[0];  // runs across 1024-row chunks too
          }
          --left;
          seg[j] = id;
        }
        std::vector<int32_t> want(static_cast<size_t>(n));
        cpu::segment_starts(kCpuLaunch, seg.data(), n, want.data());
        auto dseg = dev_of(seg), dst = dev_poisoned(static_cast<size_t>(n) * 4);
        cuda::segment_starts(cuda::launch_ctx(0), static_cast<const int32_t*>(dseg->p), n,
                             static_cast<int32_t*>(dst->p));
        expect_equal(fetch<int32_t>(*dst, static_cast<size_t>(n)), want, "starts");
      });
    }
}

// RoPE with alternating (theta, D) keys: each call must use the table of its own key, built once
// and kept on the device, and give the CPU's result (1e-5 of |x_i| + |x_{i+half}|).
void add_rope_table_cases() {
  add("rope tables per (theta, D)", [] {
    struct Key { float theta; int64_t D; };
    const Key keys[] = {{10000.0f, 64}, {500000.0f, 64}, {10000.0f, 128}, {10000.0f, 64}, {500000.0f, 64},
                        {1e6f, 6}, {10000.0f, 128}};
    const int64_t N = 300, H = 3;
    for (const Key& key : keys) {
      const int64_t D = key.D, n = N * H * D, half = D / 2;
      const std::vector<float> x = rand_f(static_cast<size_t>(n));
      const std::vector<int32_t> pos = rand_i(static_cast<size_t>(N), 0, 40000);
      std::vector<float> want(static_cast<size_t>(n));
      cpu::rope(kCpuLaunch, DType::F32, x.data(), pos.data(), N, H, D, key.theta, false, want.data());
      auto dx = dev_of(x), dpos = dev_of(pos), dy = dev_poisoned(static_cast<size_t>(n) * 4);
      cuda::rope(cuda::launch_ctx(0), DType::F32, dx->p, static_cast<const int32_t*>(dpos->p), N, H, D, key.theta,
                 false, dy->p);
      const std::vector<float> got = fetch<float>(*dy, static_cast<size_t>(n));
      int64_t bad = 0;
      for (int64_t r = 0; r < N * H; ++r)
        for (int64_t i = 0; i < half; ++i) {
          const int64_t a = r * D + i, b = a + half;
          const double tol = 1e-5 * (std::fabs(x[a]) + std::fabs(x[b]));
          bad += !(std::fabs(got[a] - want[a]) <= tol) + !(std::fabs(got[b] - want[b]) <= tol);
        }
      expect(bad == 0, "theta " + std::to_string(key.theta) + " D " + std::to_string(D) + ": " + std::to_string(bad) +
                           " elements off");
    }
  });
}

}  // namespace

void add_coverage_cases() {
  add_mod_select_cases();
  add_segment_starts_cases();
  add_rope_table_cases();
}

}  // namespace moma::native_test
