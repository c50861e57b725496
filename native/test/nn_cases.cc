// The transformer CUDA kernels (cuda/kernels_nn.h) against their CPU twins (csrc/cpu/kernels_nn.h)
// on random inputs of awkward sizes, float32 and bf16, with poisoned outputs, plus the device
// error cases (negative position, bad segment start, target out of range).
//
// Tolerances. Element-wise results (rope, cross-entropy backward): 1e-5 relative to the size of
// the terms that make them (|x_i| + |x_{i+half}| for rope, which can cancel), bitwise-close in
// practice. Results that depend on a reduction (norm outputs and statistics, attention, lse /
// nll): 1e-4 relative to the magnitude of the summed terms, computed here in double from the
// inputs (e.g. sum_s p_ts |v_s| for the attention output). bf16 results add one bf16 ulp of the
// reference (both sides round their own float32 result once). AdamW: bitwise equal.
// Tensor-core attention (bf16, head dim 64 / 128) rounds P and dS to bf16 for its products:
// relative Frobenius error <= 1e-2 for o and 2e-2 for dq / dk / dv (+ 1e-5 RMS absolute), lse
// within 1e-4 (|lse| + 1) of the CPU and of the float32 SIMT kernel, backward bitwise repeatable.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "../../csrc/core/bf16.h"
#include "../../csrc/core/nn_types.h"
#include "../../csrc/cpu/cpu_features.h"
#include "../../csrc/cpu/kernels_nn.h"
#include "../../cuda/kernels_nn.h"
#include "harness.h"

namespace moma::native_test {
namespace {

inline size_t sz(int64_t n) { return static_cast<size_t>(n); }
const char* dname(DType dt) { return dt == DType::BF16 ? "bf16" : "f32"; }

// |got - want| <= rel * scale[i] (+ one bf16 ulp of want for bf16); NaN only where want is NaN.
void check_scaled(DType dt, const std::vector<uint8_t>& got_b, const std::vector<uint8_t>& want_b, size_t n,
                  const std::vector<double>& scale, double rel, const std::string& what) {
  size_t bad = 0, first = 0;
  for (size_t i = 0; i < n; ++i) {
    const double g = elem(dt, got_b, i), w = elem(dt, want_b, i);
    bool ok;
    if (std::isnan(w) || std::isnan(g)) {
      ok = std::isnan(w) && std::isnan(g);
    } else if (std::isinf(w) || std::isinf(g)) {
      ok = g == w;
    } else {
      double lim = rel * scale[i] + 1e-30;
      if (dt == DType::BF16) lim += std::ldexp(std::fabs(w), -7);
      ok = std::fabs(g - w) <= lim;
    }
    if (!ok) {
      if (!bad) first = i;
      ++bad;
    }
  }
  if (bad) {
    char buf[320];
    std::snprintf(buf, sizeof buf, "%s: %zu of %zu differ (first at %zu: got %.9g want %.9g scale %.3g)", what.c_str(),
                  bad, n, first, elem(dt, got_b, first), elem(dt, want_b, first), scale[first]);
    failure(buf);
  } else {
    pass();
  }
}

// The floats a host buffer of dtype dt holds (inputs after bf16 rounding).
std::vector<float> rounded(DType dt, const std::vector<float>& f) { return as_floats(dt, make(dt, f), f.size()); }

template <typename T> T* P(std::unique_ptr<Dev>& d) { return static_cast<T*>(d->p); }

// ---- norms ---------------------------------------------------------------------------------
void rmsnorm_case(DType dt, int64_t N, int64_t D) {
  const std::string tag = std::string(dname(dt)) + " " + std::to_string(N) + "x" + std::to_string(D);
  add("rmsnorm " + tag, [=] {
    const float eps = 1e-5f;
    const size_t n = sz(N * D), es = dtype_size(dt);
    const std::vector<float> xf = rounded(dt, rand_f(n, -2.0f, 2.0f)), dyf = rounded(dt, rand_f(n, -1.0f, 1.0f));
    const std::vector<float> w = rand_f(sz(D), 0.5f, 1.5f);
    const auto xb = make(dt, xf), dyb = make(dt, dyf);
    // CPU twin
    std::vector<uint8_t> y_w(n * es), dx_w(n * es);
    std::vector<float> rstd_w(sz(N)), dw_w(sz(D));
    cpu::rmsnorm(kCpuLaunch, dt, xb.data(), w.data(), N, D, eps, y_w.data(), rstd_w.data());
    cpu::rmsnorm_backward(kCpuLaunch, dt, xb.data(), w.data(), rstd_w.data(), dyb.data(), N, D, dx_w.data(),
                          dw_w.data());
    // CUDA
    auto dx_in = std::make_unique<Dev>(xb), ddy = std::make_unique<Dev>(dyb);
    auto dw_in = dev_of(w), drs_in = dev_of(rstd_w);
    auto y = dev_poisoned(n * es), rstd = dev_poisoned(sz(N) * 4), dx = dev_poisoned(n * es), dw = dev_poisoned(sz(D) * 4);
    cuda::rmsnorm(cuda::launch_ctx(0), dt, dx_in->p, P<float>(dw_in), N, D, eps, y->p, P<float>(rstd));
    // the backward gets the CPU's rstd so that both sides see the same statistics
    cuda::rmsnorm_backward(cuda::launch_ctx(0), dt, dx_in->p, P<float>(dw_in), P<float>(drs_in), ddy->p, N, D, dx->p,
                           P<float>(dw));
    // magnitudes
    std::vector<double> sy(n), sdx(n), sdw(sz(D), 0.0), srs(sz(N));
    for (int64_t r = 0; r < N; ++r) {
      const double rs = rstd_w[sz(r)];
      double c = 0;
      for (int64_t d = 0; d < D; ++d) c += std::fabs(double(dyf[sz(r * D + d)]) * w[sz(d)] * xf[sz(r * D + d)]);
      c = c / double(D) * rs * rs;
      srs[sz(r)] = rs;
      for (int64_t d = 0; d < D; ++d) {
        const size_t i = sz(r * D + d);
        sy[i] = std::fabs(xf[i] * rs * w[sz(d)]);
        sdx[i] = rs * (std::fabs(dyf[i] * w[sz(d)]) + std::fabs(xf[i]) * c);
        sdw[sz(d)] += std::fabs(dyf[i] * xf[i] * rs);
      }
    }
    check_scaled(dt, y->get(), y_w, n, sy, 1e-4, "y");
    check_scaled(DType::F32, rstd->get(), make(DType::F32, rstd_w), sz(N), srs, 1e-4, "rstd");
    check_scaled(dt, dx->get(), dx_w, n, sdx, 1e-4, "dx");
    check_scaled(DType::F32, dw->get(), make(DType::F32, dw_w), sz(D), sdw, 1e-4, "dw");
  });
}

void layernorm_case(DType dt, int64_t N, int64_t G, int64_t D) {
  const std::string tag =
      std::string(dname(dt)) + " " + std::to_string(N) + "x" + std::to_string(G) + "x" + std::to_string(D);
  add("layernorm " + tag, [=] {
    const float eps = 1e-5f;
    const int64_t R = N * G;
    const size_t n = sz(R * D), es = dtype_size(dt);
    const std::vector<float> xf = rounded(dt, rand_f(n, -1.0f, 3.0f)), dyf = rounded(dt, rand_f(n, -1.0f, 1.0f));
    const std::vector<float> w = rand_f(sz(G * D), 0.5f, 1.5f), b = rand_f(sz(G * D), -0.5f, 0.5f);
    const auto xb = make(dt, xf), dyb = make(dt, dyf);
    std::vector<uint8_t> y_w(n * es), dx_w(n * es);
    std::vector<float> mean_w(sz(R)), rstd_w(sz(R)), dw_w(sz(G * D)), db_w(sz(G * D));
    cpu::layernorm(kCpuLaunch, dt, xb.data(), w.data(), b.data(), N, G, D, eps, y_w.data(), mean_w.data(),
                   rstd_w.data());
    cpu::layernorm_backward(kCpuLaunch, dt, xb.data(), w.data(), mean_w.data(), rstd_w.data(), dyb.data(), N, G, D,
                            dx_w.data(), dw_w.data(), db_w.data());
    auto dxi = std::make_unique<Dev>(xb), ddy = std::make_unique<Dev>(dyb);
    auto dwi = dev_of(w), dbi = dev_of(b), dmi = dev_of(mean_w), dri = dev_of(rstd_w);
    auto y = dev_poisoned(n * es), mean = dev_poisoned(sz(R) * 4), rstd = dev_poisoned(sz(R) * 4);
    auto dx = dev_poisoned(n * es), dw = dev_poisoned(sz(G * D) * 4), db = dev_poisoned(sz(G * D) * 4);
    cuda::layernorm(cuda::launch_ctx(0), dt, dxi->p, P<float>(dwi), P<float>(dbi), N, G, D, eps, y->p, P<float>(mean),
                    P<float>(rstd));
    cuda::layernorm_backward(cuda::launch_ctx(0), dt, dxi->p, P<float>(dwi), P<float>(dmi), P<float>(dri), ddy->p, N, G,
                             D, dx->p, P<float>(dw), P<float>(db));
    std::vector<double> sy(n), sdx(n), sm(sz(R)), sr(sz(R)), sdw(sz(G * D), 0.0), sdb(sz(G * D), 0.0);
    for (int64_t r = 0; r < R; ++r) {
      const int64_t g = r % G;
      const double mu = mean_w[sz(r)], rs = rstd_w[sz(r)];
      double ma = 0, mu_abs = 0, mux = 0;
      for (int64_t d = 0; d < D; ++d) {
        const size_t i = sz(r * D + d);
        const double u = std::fabs(double(dyf[i]) * w[sz(g * D + d)]);
        ma += std::fabs(xf[i]);
        mu_abs += u;
        mux += u * std::fabs((xf[i] - mu) * rs);
      }
      ma /= double(D);
      mu_abs /= double(D);
      mux /= double(D);
      sm[sz(r)] = ma;
      sr[sz(r)] = rs;
      for (int64_t d = 0; d < D; ++d) {
        const size_t i = sz(r * D + d), wi = sz(g * D + d);
        const double xh = std::fabs((xf[i] - mu) * rs);
        // the centred value can cancel: its error scales with |x| + |mean| (times rstd)
        sy[i] = (std::fabs(xf[i]) + std::fabs(mu)) * rs * std::fabs(w[wi]) + std::fabs(b[wi]);
        sdx[i] = rs * (std::fabs(dyf[i] * w[wi]) + mu_abs + (xh + (std::fabs(xf[i]) + std::fabs(mu)) * rs) * mux);
        sdw[wi] += std::fabs(dyf[i]) * (std::fabs(xf[i]) + std::fabs(mu)) * rs;
        sdb[wi] += std::fabs(dyf[i]);
      }
    }
    check_scaled(dt, y->get(), y_w, n, sy, 1e-4, "y");
    check_scaled(DType::F32, mean->get(), make(DType::F32, mean_w), sz(R), sm, 1e-4, "mean");
    check_scaled(DType::F32, rstd->get(), make(DType::F32, rstd_w), sz(R), sr, 1e-4, "rstd");
    check_scaled(dt, dx->get(), dx_w, n, sdx, 1e-4, "dx");
    check_scaled(DType::F32, dw->get(), make(DType::F32, dw_w), sz(G * D), sdw, 1e-4, "dw");
    check_scaled(DType::F32, db->get(), make(DType::F32, db_w), sz(G * D), sdb, 1e-4, "db");
  });
}

// ---- rope ----------------------------------------------------------------------------------
void rope_case(DType dt, int64_t N, int64_t H, int64_t D, bool inverse, int32_t max_pos) {
  const std::string tag = std::string(dname(dt)) + " " + std::to_string(N) + "x" + std::to_string(H) + "x" +
                          std::to_string(D) + (inverse ? " inverse" : "") + " pos<=" + std::to_string(max_pos);
  add("rope " + tag, [=] {
    const size_t n = sz(N * H * D), es = dtype_size(dt);
    const std::vector<float> xf = rounded(dt, rand_f(n, -2.0f, 2.0f));
    const std::vector<int32_t> pos = rand_i(sz(N), 0, max_pos);
    const auto xb = make(dt, xf);
    std::vector<uint8_t> y_w(n * es);
    cpu::rope(kCpuLaunch, dt, xb.data(), pos.data(), N, H, D, 10000.0f, inverse, y_w.data());
    auto dxi = std::make_unique<Dev>(xb), dpos = dev_of(pos), y = dev_poisoned(n * es);
    cuda::rope(cuda::launch_ctx(0), dt, dxi->p, P<int32_t>(dpos), N, H, D, 10000.0f, inverse, y->p);
    std::vector<double> sc(n);
    const int64_t half = D / 2;
    for (size_t r = 0; r < sz(N * H); ++r)
      for (int64_t i = 0; i < half; ++i) {
        const size_t a = r * sz(D) + sz(i), b = a + sz(half);
        sc[a] = sc[b] = std::fabs(xf[a]) + std::fabs(xf[b]);
      }
    check_scaled(dt, y->get(), y_w, n, sc, 1e-5, "y");
  });
}

// ---- attention ----------------------------------------------------------------------------
// Segment starts: mode 0 one segment, 1 every row its own segment, 2 ragged (random lengths).
std::vector<int32_t> segments(int64_t N, int mode) {
  std::vector<int32_t> s(sz(N));
  const std::vector<float> u = rand_f(sz(N), 0.0f, 1.0f);
  for (int64_t t = 0; t < N; ++t) {
    const bool start = t == 0 || mode == 1 || (mode == 2 && u[sz(t)] < 0.08f);
    s[sz(t)] = start ? static_cast<int32_t>(t) : s[sz(t - 1)];
  }
  return s;
}

// Segment patterns of the tensor-core cases (boundaries fall anywhere inside the 64-row tiles).
enum SegPattern { kOneSegment, kLen1, kLen2, kLen17, kRandomLen, kPadded, kLongThenShort, kNumPatterns };
const char* const kPatternNames[] = {"one segment", "segments of 1", "segments of 2", "segments of 17",
                                     "random lengths 1..200", "documents + singleton padding",
                                     "one long then short 1..40"};

std::vector<int32_t> segments_tc(int64_t N, int pattern) {
  std::vector<int32_t> s(sz(N));
  std::vector<int64_t> lengths;  // consecutive segment lengths covering N rows
  int64_t covered = 0;
  const auto push = [&](int64_t len) {
    len = std::min(len, N - covered);
    lengths.push_back(len);
    covered += len;
  };
  while (covered < N) {
    switch (pattern) {
      case kOneSegment: push(N); break;
      case kLen1: push(1); break;
      case kLen2: push(2); break;
      case kLen17: push(17); break;
      case kRandomLen: push(rand_i(1, 1, 200)[0]); break;
      case kPadded:  // a document, then 1..4 padding rows, each its own segment (never attended by others)
        push(rand_i(1, 1, 300)[0]);
        for (int32_t p = rand_i(1, 1, 4)[0]; p > 0 && covered < N; --p) push(1);
        break;
      default:  // kLongThenShort
        if (covered == 0) push(std::max<int64_t>(1, N * 3 / 4));
        else push(rand_i(1, 1, 40)[0]);
        break;
    }
  }
  int64_t t = 0;
  for (int64_t len : lengths)
    for (int64_t i = 0; i < len; ++i, ++t) s[sz(t)] = static_cast<int32_t>(t - i);
  return s;
}

// RMS(got - want) <= rel RMS(want) + abs_rms and no NaN (unwritten poisoned bf16 reads as NaN).
void check_frobenius(const std::vector<float>& got, const std::vector<float>& want, double rel, double abs_rms,
                     const std::string& what) {
  size_t nans = 0;
  double num = 0, den = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    if (std::isnan(got[i])) ++nans;
    num += (double(got[i]) - want[i]) * (double(got[i]) - want[i]);
    den += double(want[i]) * want[i];
  }
  const double n = double(std::max<size_t>(1, want.size()));
  const double err = std::sqrt(num / n), ref = std::sqrt(den / n);
  if (nans > 0 || !(err <= rel * ref + abs_rms)) {
    char buf[256];
    std::snprintf(buf, sizeof buf, "%s: rms error %.3g vs rms %.3g (rel %.3g, allowed %.3g + %.3g), %zu NaN",
                  what.c_str(), err, ref, ref > 0 ? err / ref : err, rel, abs_rms, nans);
    failure(buf);
  } else {
    pass();
  }
}

// One attention forward + backward case against the CPU kernels on the same (rounded) inputs.
// bf16 with D 64 / 128 runs the tensor-core kernels (P and dS rounded to bf16 for their products,
// FlashAttention-2 style): o within 1e-2 and dq / dk / dv within 2e-2 relative Frobenius
// (+ 1e-5 RMS absolute, for results that cancel to ~0, e.g. dq with one key per row); lse within
// 1e-4 (|lse| + 1) of the CPU and of the float32 SIMT kernel on the same inputs; `twice` runs the
// backward again and expects the same bits. Every other case runs the SIMT kernels and uses the
// element-wise tolerances of the header, except o in bf16 when the CPU forward rounds P to bf16
// (csrc/cpu/attention.cc on AVX-512-BF16): 4e-3 of the summed magnitude.
void attention_check(DType dt, int64_t N, int64_t H, int64_t D, const std::vector<int32_t>& seg, bool twice) {
  const bool tc = dt == DType::BF16 && (D == 64 || D == 128);
  const size_t n = sz(N * H * D), es = dtype_size(dt), nh = sz(N * H);
  const float scale = static_cast<float>(1.0 / std::sqrt(double(D)));
  const std::vector<float> qf = rounded(dt, rand_f(n, -1.5f, 1.5f)), kf = rounded(dt, rand_f(n, -1.5f, 1.5f));
  const std::vector<float> vf = rounded(dt, rand_f(n, -1.0f, 1.0f)), gf = rounded(dt, rand_f(n, -1.0f, 1.0f));
  const auto qb = make(dt, qf), kb = make(dt, kf), vb = make(dt, vf), gb = make(dt, gf);
  std::vector<uint8_t> o_w(n * es), dq_w(n * es), dk_w(n * es), dv_w(n * es);
  std::vector<float> lse_w(nh);
  cpu::attention(kCpuLaunch, dt, qb.data(), kb.data(), vb.data(), seg.data(), N, H, D, scale, o_w.data(), lse_w.data());
  cpu::attention_backward(kCpuLaunch, dt, qb.data(), kb.data(), vb.data(), o_w.data(), lse_w.data(), gb.data(),
                          seg.data(), N, H, D, scale, dq_w.data(), dk_w.data(), dv_w.data());
  auto dqi = std::make_unique<Dev>(qb), dki = std::make_unique<Dev>(kb), dvi = std::make_unique<Dev>(vb);
  auto dgi = std::make_unique<Dev>(gb), doi = std::make_unique<Dev>(o_w);
  auto dseg = dev_of(seg), dlse_in = dev_of(lse_w);
  auto o = dev_poisoned(n * es), lse = dev_poisoned(nh * 4);
  auto dq = dev_poisoned(n * es), dk = dev_poisoned(n * es), dv = dev_poisoned(n * es);
  int32_t* err = cuda::error_word(0);
  cuda::attention(cuda::launch_ctx(0), dt, dqi->p, dki->p, dvi->p, P<int32_t>(dseg), N, H, D, scale, o->p,
                  P<float>(lse));
  // the backward gets the CPU's o and lse, so both sides start from the same values
  cuda::attention_backward(cuda::launch_ctx(0), dt, dqi->p, dki->p, dvi->p, doi->p, P<float>(dlse_in), dgi->p,
                           P<int32_t>(dseg), N, H, D, scale, dq->p, dk->p, dv->p);
  std::vector<double> sl(nh);
  for (size_t i = 0; i < nh; ++i) sl[i] = std::fabs(lse_w[i]) + 1.0;
  if (tc) {
    // the float32 SIMT kernel on the same values: its lse is the tensor-core kernel's contract too
    auto q32 = dev_of(qf), k32 = dev_of(kf), v32 = dev_of(vf);
    auto o32 = dev_poisoned(n * 4), lse32 = dev_poisoned(nh * 4);
    cuda::attention(cuda::launch_ctx(0), DType::F32, q32->p, k32->p, v32->p, P<int32_t>(dseg), N, H, D, scale, o32->p,
                    P<float>(lse32));
    const std::vector<uint8_t> lse_tc = lse->get();
    check_scaled(DType::F32, lse_tc, make(DType::F32, lse_w), nh, sl, 1e-4, "lse");
    check_scaled(DType::F32, lse_tc, lse32->get(), nh, sl, 1e-4, "lse vs SIMT");
    check_frobenius(as_floats(dt, o->get(), n), as_floats(dt, o_w, n), 1e-2, 1e-5, "o");
    const std::vector<float> dq_g = as_floats(dt, dq->get(), n), dk_g = as_floats(dt, dk->get(), n),
                             dv_g = as_floats(dt, dv->get(), n);
    check_frobenius(dq_g, as_floats(dt, dq_w, n), 2e-2, 1e-5, "dq");
    check_frobenius(dk_g, as_floats(dt, dk_w, n), 2e-2, 1e-5, "dk");
    check_frobenius(dv_g, as_floats(dt, dv_w, n), 2e-2, 1e-5, "dv");
    if (twice) {
      auto dq2 = dev_poisoned(n * es), dk2 = dev_poisoned(n * es), dv2 = dev_poisoned(n * es);
      cuda::attention_backward(cuda::launch_ctx(0), dt, dqi->p, dki->p, dvi->p, doi->p, P<float>(dlse_in), dgi->p,
                               P<int32_t>(dseg), N, H, D, scale, dq2->p, dk2->p, dv2->p);
      expect_equal(vec_of<uint16_t>(dq2->get()), vec_of<uint16_t>(dq->get()), "dq repeat");
      expect_equal(vec_of<uint16_t>(dk2->get()), vec_of<uint16_t>(dk->get()), "dk repeat");
      expect_equal(vec_of<uint16_t>(dv2->get()), vec_of<uint16_t>(dv->get()), "dv repeat");
    }
    return;
  }
  // magnitudes (double): p_ts, |dp| + |delta|
  const std::vector<float> of = as_floats(dt, o_w, n);
  std::vector<double> so(n, 0.0), sdq(n, 0.0), sdk(n, 0.0), sdv(n, 0.0);
  for (int64_t t = 0; t < N; ++t)
    for (int64_t h = 0; h < H; ++h) {
      const size_t rt = sz((t * H + h) * D);
      double delta = 0;
      for (int64_t d = 0; d < D; ++d) delta += std::fabs(double(gf[rt + sz(d)]) * of[rt + sz(d)]);
      for (int64_t s = seg[sz(t)]; s <= t; ++s) {
        const size_t rs = sz((s * H + h) * D);
        double x = 0, dp = 0;
        for (int64_t d = 0; d < D; ++d) {
          x += double(qf[rt + sz(d)]) * kf[rs + sz(d)];
          dp += std::fabs(double(gf[rt + sz(d)]) * vf[rs + sz(d)]);
        }
        const double p = std::exp(scale * x - lse_w[sz(t * H + h)]);
        const double m = p * (dp + delta);
        for (int64_t d = 0; d < D; ++d) {
          so[rt + sz(d)] += p * std::fabs(vf[rs + sz(d)]);
          sdv[rs + sz(d)] += p * std::fabs(gf[rt + sz(d)]);
          sdq[rt + sz(d)] += scale * m * std::fabs(kf[rs + sz(d)]);
          sdk[rs + sz(d)] += scale * m * std::fabs(qf[rt + sz(d)]);
        }
      }
    }
  // The CPU's bf16 forward on vdpbf16ps rounds P to bf16 for P.V (2^-9 relative per term), the
  // SIMT kernel keeps it in float32: o within 4e-3 of the summed magnitude there.
  const bool cpu_p_bf16 =
      dt == DType::BF16 && cpu::cpu_has_avx512bf16() && std::strcmp(cpu::gemm_bf16_isa(), "none") != 0;
  check_scaled(dt, o->get(), o_w, n, so, cpu_p_bf16 ? 4e-3 : 1e-4, "o");
  check_scaled(DType::F32, lse->get(), make(DType::F32, lse_w), nh, sl, 1e-4, "lse");
  check_scaled(dt, dq->get(), dq_w, n, sdq, 1e-4, "dq");
  check_scaled(dt, dk->get(), dk_w, n, sdk, 1e-4, "dk");
  check_scaled(dt, dv->get(), dv_w, n, sdv, 1e-4, "dv");
}

void attention_case(DType dt, int64_t N, int64_t H, int64_t D, int mode) {
  static const char* kModes[] = {"one segment", "segments of 1", "ragged"};
  const std::string tag = std::string(dname(dt)) + " " + std::to_string(N) + "x" + std::to_string(H) + "x" +
                          std::to_string(D) + " " + kModes[mode];
  add("attention " + tag, [=] { attention_check(dt, N, H, D, segments(N, mode), false); });
}

void attention_tc_case(int64_t N, int64_t H, int64_t D, int pattern, bool twice = false) {
  const std::string tag = std::to_string(N) + "x" + std::to_string(H) + "x" + std::to_string(D) + " " +
                          kPatternNames[pattern] + (twice ? " (deterministic)" : "");
  add("attention bf16 tensor cores " + tag,
      [=] { attention_check(DType::BF16, N, H, D, segments_tc(N, pattern), twice); });
}

// ---- cross-entropy -------------------------------------------------------------------------
void cross_entropy_case(DType dt, int64_t N, int64_t V, bool z) {
  const std::string tag =
      std::string(dname(dt)) + " " + std::to_string(N) + "x" + std::to_string(V) + (z ? " z-loss" : "");
  add("cross_entropy " + tag, [=] {
    const size_t n = sz(N * V), es = dtype_size(dt);
    const std::vector<float> xf = rounded(dt, rand_f(n, -6.0f, 6.0f));
    std::vector<int32_t> tg = rand_i(sz(N), -1, static_cast<int32_t>(V - 1));
    if (N > 2) tg[1] = -1;
    const std::vector<float> gn = rand_f(sz(N), -1.0f, 1.0f), gz = rand_f(sz(N), -0.1f, 0.1f);
    const auto xb = make(dt, xf);
    std::vector<float> nll_w(sz(N)), lse_w(sz(N));
    std::vector<uint8_t> dl_w(n * es);
    cpu::cross_entropy(kCpuLaunch, dt, xb.data(), tg.data(), N, V, nll_w.data(), lse_w.data());
    cpu::cross_entropy_backward(kCpuLaunch, dt, xb.data(), tg.data(), lse_w.data(), gn.data(), z ? gz.data() : nullptr,
                                N, V, dl_w.data());
    auto dxi = std::make_unique<Dev>(xb), dtg = dev_of(tg), dlse_in = dev_of(lse_w), dgn = dev_of(gn), dgz = dev_of(gz);
    auto nll = dev_poisoned(sz(N) * 4), lse = dev_poisoned(sz(N) * 4), dl = dev_poisoned(n * es);
    int32_t* err = cuda::error_word(0);
    cuda::cross_entropy(cuda::launch_ctx(0), dt, dxi->p, P<int32_t>(dtg), N, V, P<float>(nll), P<float>(lse));
    cuda::cross_entropy_backward(cuda::launch_ctx(0), dt, dxi->p, P<int32_t>(dtg), P<float>(dlse_in), P<float>(dgn),
                                 z ? P<float>(dgz) : nullptr, N, V, dl->p);
    std::vector<double> sn(sz(N)), sl(sz(N)), sd(n);
    for (int64_t r = 0; r < N; ++r) {
      const double L = lse_w[sz(r)];
      sl[sz(r)] = std::fabs(L) + 1.0;
      sn[sz(r)] = std::fabs(L) + 1.0 + (tg[sz(r)] >= 0 ? std::fabs(xf[sz(r * V + tg[sz(r)])]) : 0.0);
      const double c = z ? std::fabs(2.0 * gz[sz(r)] * L) : 0.0;
      for (int64_t v = 0; v < V; ++v) {
        const double p = std::exp(double(xf[sz(r * V + v)]) - L);
        sd[sz(r * V + v)] = std::fabs(gn[sz(r)]) * (p + (v == tg[sz(r)] ? 1.0 : 0.0)) + c * p;
      }
    }
    check_scaled(DType::F32, nll->get(), make(DType::F32, nll_w), sz(N), sn, 1e-5, "nll");
    check_scaled(DType::F32, lse->get(), make(DType::F32, lse_w), sz(N), sl, 1e-5, "lse");
    check_scaled(dt, dl->get(), dl_w, n, sd, 1e-5, "dlogits");
  });
}

// ---- adamw ---------------------------------------------------------------------------------
void adamw_case(int64_t n, int64_t offset, bool bf16, const AdamWParams& h, const std::string& what) {
  const std::string tag = std::to_string(n) + (offset ? " unaligned" : "") + (bf16 ? " +bf16" : "") + " " + what;
  add("adamw " + tag, [=] {
    const size_t m_ = sz(n + offset);
    std::vector<float> p = rand_f(m_, -1.0f, 1.0f), g = rand_f(m_, -0.1f, 0.1f), m = rand_f(m_, -0.01f, 0.01f),
                       v = rand_f(m_, 0.0f, 1e-3f);
    if (n > 3) g[sz(offset + 2)] = 0.0f, v[sz(offset + 2)] = 0.0f;  // v' = 0: sqrt(0) + eps
    std::vector<float> p_w(sz(n)), m_w(sz(n)), v_w(sz(n));
    std::vector<uint16_t> b_w(sz(n));
    const size_t o = sz(offset);
    cpu::adamw(kCpuLaunch, p.data() + o, g.data() + o, m.data() + o, v.data() + o, n, h, p_w.data(), m_w.data(),
               v_w.data(), bf16 ? b_w.data() : nullptr);
    auto dp = dev_of(p), dg = dev_of(g), dm = dev_of(m), dv = dev_of(v);
    auto po = dev_poisoned((m_) * 4), mo = dev_poisoned(m_ * 4), vo = dev_poisoned(m_ * 4), pb = dev_poisoned(m_ * 2);
    cuda::adamw(cuda::launch_ctx(0), P<float>(dp) + o, P<float>(dg) + o, P<float>(dm) + o, P<float>(dv) + o, n, h,
                P<float>(po) + o, P<float>(mo) + o, P<float>(vo) + o, bf16 ? P<uint16_t>(pb) + o : nullptr);
    const auto tail = [&](std::unique_ptr<Dev>& d, size_t es) {
      std::vector<uint8_t> b = d->get();
      return std::vector<uint8_t>(b.begin() + static_cast<std::ptrdiff_t>(o * es),
                                  b.begin() + static_cast<std::ptrdiff_t>((o + sz(n)) * es));
    };
    expect_equal(vec_of<float>(tail(po, 4)), p_w, "p");
    expect_equal(vec_of<float>(tail(mo, 4)), m_w, "m");
    expect_equal(vec_of<float>(tail(vo, 4)), v_w, "v");
    if (bf16) expect_equal(vec_of<uint16_t>(tail(pb, 2)), b_w, "p_bf16");
  });
}

}  // namespace

void add_nn_cases() {
  for (DType dt : kFloat) {
    for (int64_t N : {1, 37, 1000})
      for (int64_t D : {2, 6, 64, 130}) rmsnorm_case(dt, N, D);
    rmsnorm_case(dt, 37, 1024);
    for (int64_t N : {1, 37, 1000})
      for (int64_t G : {1, 3})
        for (int64_t D : {2, 6, 64, 130}) layernorm_case(dt, N, G, D);
  }
  rmsnorm_case(DType::F32, 70000, 6);  // more than 1024 weight-gradient row blocks' worth of rows
  layernorm_case(DType::BF16, 5000, 16, 64);

  for (DType dt : kFloat)
    for (int64_t N : {1, 37, 1000})
      for (int64_t H : {1, 3})
        for (int64_t D : {2, 6, 64, 130}) rope_case(dt, N, H, D, (N + D) % 2 == 1, N == 37 ? 100000 : 4095);
  rope_case(DType::F32, 37, 2, 64, true, 500);

  for (DType dt : kFloat)
    for (int64_t N : {1, 37, 1000})
      for (int64_t H : {1, 3})
        for (int64_t D : {2, 6, 64, 130}) {
          if (N == 1000 && D == 130 && H == 3) continue;  // the generic path is slow; covered by H 1
          for (int mode = 0; mode < 3; ++mode) {
            if (N == 1 && mode > 0) continue;
            attention_case(dt, N, H, D, mode);
          }
        }
  attention_case(DType::F32, 300, 2, 96, 2);
  attention_case(DType::BF16, 300, 2, 128, 0);
  // Tensor-core path (bf16, D 64 / 128): N around the 64-row tiles and 32 / 64-row stages, every
  // segment pattern, H 1..16.
  {
    const int64_t kHeads[] = {1, 2, 16, 3};
    int c = 0;
    for (int64_t D : {64, 128}) {
      for (int64_t N : {1, 7, 63, 64, 65, 127, 129}) {
        attention_tc_case(N, kHeads[c % 4], D, kOneSegment);
        if (N > 1) attention_tc_case(N, kHeads[(c + 1) % 4], D, 1 + c % (kNumPatterns - 1));
        ++c;
      }
      for (int pattern = 0; pattern < kNumPatterns; ++pattern) attention_tc_case(1000, 4, D, pattern);
      attention_tc_case(1000, 16, D, kLen17);
      attention_tc_case(1000, 3, D, kRandomLen, true);
      attention_tc_case(4099, 2, D, kOneSegment);
      attention_tc_case(4099, 2, D, kPadded);
    }
  }

  for (DType dt : kFloat)
    for (int64_t N : {1, 37, 1000})
      for (int64_t V : {1, 7, 1000, 33333}) {
        if (N == 1000 && V == 33333) continue;
        cross_entropy_case(dt, N, V, (N + V) % 2 == 0);
      }
  cross_entropy_case(DType::BF16, 40, 65536, true);

  AdamWParams h1;
  h1.lr = 3e-4f;
  h1.beta1 = 0.9f;
  h1.beta2 = 0.95f;
  h1.eps = 1e-8f;
  h1.weight_decay = 0.1f;
  h1.grad_scale = 0.7f;
  h1.bias_c1 = static_cast<float>(1.0 - std::pow(0.9, 3.0));
  h1.bias_c2 = static_cast<float>(1.0 - std::pow(0.95, 3.0));
  AdamWParams h2;  // defaults: no decay, no bias correction
  for (int64_t n : {1, 37, 1000, 33333})
    for (int64_t off : {0, 1})
      for (bool bf : {false, true}) adamw_case(n, off, bf, (n + off) % 2 ? h1 : h2, (n + off) % 2 ? "decay" : "plain");

  // Device errors.
  add("rope negative position", [] {
    std::vector<float> x(3 * 2 * 4, 0.5f);
    std::vector<int32_t> pos = {0, -3, 2};
    auto dx = dev_of(x), dp = dev_of(pos), dy = dev_poisoned(x.size() * 4);
    cuda::rope(cuda::launch_ctx(0), DType::F32, dx->p, P<int32_t>(dp), 3, 2, 4, 10000.0f, false, dy->p);
    expect_device_error("rope");
  });
  for (const std::vector<int32_t>& bad : {std::vector<int32_t>{0, 0, 2, 1}, std::vector<int32_t>{1, 1, 2},
                                          std::vector<int32_t>{0, 0, 5, 5}, std::vector<int32_t>{0, -1}}) {
    const std::string tag = std::to_string(bad.size()) + " rows, start " + std::to_string(bad[bad.size() / 2]);
    add("attention bad segment " + tag, [bad] {
      const int64_t N = static_cast<int64_t>(bad.size()), H = 2, D = 8;
      std::vector<float> x(sz(N * H * D), 0.25f);
      auto dq = dev_of(x), ds = dev_of(bad), o = dev_poisoned(x.size() * 4), lse = dev_poisoned(sz(N * H) * 4);
      cuda::attention(cuda::launch_ctx(0), DType::F32, dq->p, dq->p, dq->p, P<int32_t>(ds), N, H, D, 0.3f, o->p,
                      P<float>(lse));
      expect_device_error("attention");
      std::vector<float> l(sz(N * H), 0.0f);
      auto dl = dev_of(l), g1 = dev_poisoned(x.size() * 4), g2 = dev_poisoned(x.size() * 4), g3 = dev_poisoned(x.size() * 4);
      cuda::attention_backward(cuda::launch_ctx(0), DType::F32, dq->p, dq->p, dq->p, dq->p, P<float>(dl), dq->p,
                               P<int32_t>(ds), N, H, D, 0.3f, g1->p, g2->p, g3->p);
      expect_device_error("attention");
    });
  }
  add("attention bad segment bf16 tensor cores", [] {  // out-of-range starts are clamped, never read out of bounds
    const int64_t N = 70, H = 2, D = 64;
    std::vector<int32_t> bad(sz(N));
    for (int64_t t = 0; t < N; ++t) bad[sz(t)] = t < 40 ? 0 : (t % 2 ? 1000 : -5);
    const auto xb = make(DType::BF16, std::vector<float>(sz(N * H * D), 0.25f));
    auto dx = std::make_unique<Dev>(xb), ds = dev_of(bad);
    auto o = dev_poisoned(xb.size()), lse = dev_poisoned(sz(N * H) * 4);
    cuda::attention(cuda::launch_ctx(0), DType::BF16, dx->p, dx->p, dx->p, P<int32_t>(ds), N, H, D, 0.125f, o->p,
                    P<float>(lse));
    expect_device_error("attention");
    auto g1 = dev_poisoned(xb.size()), g2 = dev_poisoned(xb.size()), g3 = dev_poisoned(xb.size());
    cuda::attention_backward(cuda::launch_ctx(0), DType::BF16, dx->p, dx->p, dx->p, dx->p, P<float>(lse), dx->p,
                             P<int32_t>(ds), N, H, D, 0.125f, g1->p, g2->p, g3->p);
    expect_device_error("attention");
  });
  add("cross_entropy target out of range", [] {
    std::vector<float> x(3 * 5, 0.5f);
    for (const std::vector<int32_t>& tg : {std::vector<int32_t>{0, 5, -1}, std::vector<int32_t>{-2, 1, 1}}) {
      auto dx = dev_of(x), dt = dev_of(tg), nll = dev_poisoned(12), lse = dev_poisoned(12);
      cuda::cross_entropy(cuda::launch_ctx(0), DType::F32, dx->p, P<int32_t>(dt), 3, 5, P<float>(nll), P<float>(lse));
      expect_device_error("cross_entropy");
    }
  });
}

}  // namespace moma::native_test
