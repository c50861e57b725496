// The CPU attention forward (csrc/cpu/attention.cc) against a float64 reference, float32 and bf16,
// on the path this process runs: bf16 on vdpbf16ps when the CPU has AVX-512-BF16 and
// MOMA_CPU_GEMM leaves a bf16 GEMM path, else the widening float32 path.
//
// Reference: per row t and head h, s_j = scale * sum_d q_d k_jd and softmax over the attended keys
// j in [seg_start[t], t], all in double on the same (bf16-rounded) inputs; o = sum_j p_j v_j,
// lse = log sum_j exp(s_j). Tolerances, with mag = sum_j p_j |v_jd| (the size of the summed terms):
//   float32: |o - ref| <= 1e-4 mag; lse within 1e-4 (|lse| + 1).
//   bf16, vdpbf16ps path (P rounded to bf16 for P.V, 2^-9 relative each, as the tensor-core GPU
//   kernel): |o - ref| <= 4e-3 mag + 2^-8 |ref| (the output's own bf16 rounding); lse within
//   1e-4 (|lse| + 1).
//   bf16, widening path: bitwise equal to the float32 kernel on the same values, rounded to bf16
//   (lse bitwise equal), i.e. the float32 results of before the vdpbf16ps path existed.
// Shapes: odd head dims (1, 7, 63, 129), 64 and 128, N off the 32-row units and 64-key blocks
// (1, 37, 65, 300), segments of every row, one segment, ragged and odd-length segments (keys start
// at odd offsets inside a 64-key block, so the key pairs of vdpbf16ps straddle the window edge).
// Poisoned keys: v = inf / NaN on rows no checked query attends (each sits next to a window edge);
// rows that do not attend them must still match the reference (finite).
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "../../csrc/core/bf16.h"
#include "../../csrc/cpu/cpu_features.h"
#include "../../csrc/cpu/kernels_nn.h"
#include "harness.h"

namespace moma::native_test {
namespace {

inline size_t sz(int64_t n) { return static_cast<size_t>(n); }

// Segment starts: 0 one segment, 1 every row its own, 2 ragged (about 1 in 12 rows starts one),
// 3 segments of 3 rows (starts 0, 3, 6, ...: odd and even offsets alike).
std::vector<int32_t> attention_segments(int64_t N, int mode) {
  std::vector<int32_t> s(sz(N));
  const std::vector<float> u = rand_f(sz(N), 0.0f, 1.0f);
  for (int64_t t = 0; t < N; ++t) {
    const bool start = t == 0 || mode == 1 || (mode == 2 && u[sz(t)] < 0.08f) || (mode == 3 && t % 3 == 0);
    s[sz(t)] = start ? static_cast<int32_t>(t) : s[sz(t - 1)];
  }
  return s;
}

std::vector<uint16_t> to_bf16(const std::vector<float>& f) {
  std::vector<uint16_t> b(f.size());
  for (size_t i = 0; i < f.size(); ++i) b[i] = f32_to_bf16(f[i]);
  return b;
}

// One case: `poison` sets v of every row s with s % 5 == 2 to +inf (even s) or NaN (odd s) and
// checks only the rows whose window misses all of them.
void attention_forward_case(int64_t N, int64_t H, int64_t D, int mode, bool poison, bool dp_path) {
  const char* kModes[] = {"one segment", "segments of 1", "ragged", "segments of 3"};
  g_case = "cpu attention forward " + std::to_string(N) + "x" + std::to_string(H) + "x" + std::to_string(D) + " " +
           kModes[mode] + (poison ? " poisoned v" : "");
  const size_t n = sz(N * H * D), nh = sz(N * H);
  const float scale = static_cast<float>(1.0 / std::sqrt(double(D)));
  const std::vector<int32_t> seg = attention_segments(N, mode);
  std::vector<uint16_t> qb = to_bf16(rand_f(n, -2.0f, 2.0f)), kb = to_bf16(rand_f(n, -2.0f, 2.0f));
  std::vector<uint16_t> vb = to_bf16(rand_f(n, -1.0f, 1.0f));
  const auto poisoned = [&](int64_t s) { return poison && s % 5 == 2; };
  for (int64_t s = 0; s < N; ++s)
    if (poisoned(s))
      for (int64_t i = 0; i < H * D; ++i)
        vb[sz(s * H * D + i)] = f32_to_bf16(s % 2 ? std::numeric_limits<float>::quiet_NaN()
                                                  : std::numeric_limits<float>::infinity());
  std::vector<float> qf(n), kf(n), vf(n);
  for (size_t i = 0; i < n; ++i) {
    qf[i] = bf16_to_f32(qb[i]);
    kf[i] = bf16_to_f32(kb[i]);
    vf[i] = bf16_to_f32(vb[i]);
  }
  std::vector<float> o32(n), lse32(nh), lse16(nh);
  std::vector<uint16_t> o16(n);
  cpu::attention(kCpuLaunch, DType::F32, qf.data(), kf.data(), vf.data(), seg.data(), N, H, D, scale, o32.data(),
                 lse32.data());
  cpu::attention(kCpuLaunch, DType::BF16, qb.data(), kb.data(), vb.data(), seg.data(), N, H, D, scale, o16.data(),
                 lse16.data());
  size_t bad32 = 0, bad16 = 0, badl = 0, checked = 0;
  std::string first;
  std::vector<double> s, p;
  for (int64_t t = 0; t < N; ++t) {
    bool skip = false;
    for (int64_t j = seg[sz(t)]; j <= t; ++j) skip |= poisoned(j);
    if (skip) continue;
    for (int64_t h = 0; h < H; ++h) {
      const int64_t lo = seg[sz(t)], L = t - lo + 1;
      s.assign(sz(L), 0.0);
      p.assign(sz(L), 0.0);
      double m = -1e300;
      for (int64_t j = 0; j < L; ++j) {
        double x = 0;
        for (int64_t d = 0; d < D; ++d) x += double(qf[sz((t * H + h) * D + d)]) * kf[sz(((lo + j) * H + h) * D + d)];
        s[sz(j)] = scale * x;
        m = std::max(m, s[sz(j)]);
      }
      double l = 0;
      for (int64_t j = 0; j < L; ++j) l += p[sz(j)] = std::exp(s[sz(j)] - m);
      const double lse = m + std::log(l), lim_l = 1e-4 * (std::fabs(lse) + 1.0);
      const size_t ri = sz(t * H + h);
      if (!(std::fabs(lse32[ri] - lse) <= lim_l)) ++badl;
      if (!(std::fabs(lse16[ri] - lse) <= lim_l)) ++badl;
      if (!dp_path && std::memcmp(&lse16[ri], &lse32[ri], sizeof(float)) != 0) ++badl;
      for (int64_t d = 0; d < D; ++d) {
        double ref = 0, mag = 0;
        for (int64_t j = 0; j < L; ++j) {
          const double vv = vf[sz(((lo + j) * H + h) * D + d)];
          ref += p[sz(j)] * vv;
          mag += p[sz(j)] * std::fabs(vv);
        }
        ref /= l;
        mag /= l;
        const size_t oi = ri * sz(D) + sz(d);
        const double g32 = o32[oi], g16 = bf16_to_f32(o16[oi]);
        ++checked;
        if (!(std::fabs(g32 - ref) <= 1e-4 * mag + 1e-30)) ++bad32;
        const bool ok16 = dp_path ? std::fabs(g16 - ref) <= 4e-3 * mag + std::ldexp(std::fabs(ref), -8) + 1e-30
                                  : o16[oi] == f32_to_bf16(o32[oi]);
        if (!ok16) {
          if (!bad16) {
            char buf[200];
            std::snprintf(buf, sizeof buf, " (first: t %lld h %lld d %lld got %.7g want %.7g mag %.3g)",
                          static_cast<long long>(t), static_cast<long long>(h), static_cast<long long>(d), g16,
                          dp_path ? ref : double(bf16_to_f32(f32_to_bf16(o32[oi]))), mag);
            first = buf;
          }
          ++bad16;
        }
      }
    }
  }
  expect(bad32 == 0 && bad16 == 0 && badl == 0 && checked > 0,
         "of " + std::to_string(checked) + " outputs: float32 " + std::to_string(bad32) + " bad, bf16 (" +
             (dp_path ? "vdpbf16ps" : "widened, bitwise vs float32") + ") " + std::to_string(bad16) + " bad" + first +
             ", lse " + std::to_string(badl) + " bad");
}

}  // namespace

void cpu_attention_sanity() {
  const bool dp_path = cpu::cpu_has_avx512bf16() && std::strcmp(cpu::gemm_bf16_isa(), "none") != 0;
  std::printf("cpu attention bf16 forward path: %s\n", dp_path ? "vdpbf16ps" : "widened to float32");
  for (int64_t D : {1, 7, 63, 64, 128, 129})
    for (int64_t N : {1, 37, 65, 300})
      for (int mode = 0; mode < 4; ++mode) {
        if (N == 1 && mode > 0) continue;
        attention_forward_case(N, N == 65 ? 3 : 1, D, mode, false, dp_path);
      }
  for (int mode = 0; mode < 4; ++mode) attention_forward_case(200, 2, 33, mode, true, dp_path);
  attention_forward_case(300, 2, 64, 2, true, dp_path);
}

}  // namespace moma::native_test
