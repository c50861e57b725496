// The mixture-of-experts CUDA kernels (cuda/kernels_moe.h) against their CPU twins
// (csrc/cpu/kernels_moe.h); routing cases feed both sides the same scores (computed by the CPU
// router, moe_host.h), and in threshold mode the same select values, so that the routes must agree
// exactly.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "../../csrc/core/bf16.h"
#include "../../csrc/core/moe_types.h"
#include "../../csrc/cpu/kernels_moe.h"
#include "../../csrc/ops/moe.h"
#include "../../cuda/kernels_moe.h"
#include "harness.h"
#include "moe_host.h"

namespace moma::native_test {
namespace {

struct MoeLayoutCase {
  std::string name;
  MoeLayout L;
};
std::vector<MoeLayoutCase> moe_layouts() {
  return {{"[4,4]", ops::make_moe_layout({4, 4}, {0, 1}, "native test")},
          {"[8]", ops::make_moe_layout({8}, {0, 0}, "native test")},
          {"[1,1]", ops::make_moe_layout({1, 1}, {0, 1}, "native test")},
          {"[3,1,2]+unrouted", ops::make_moe_layout({3, 1, 2}, {0, 1, 2, -1}, "native test")},
          {"[1]", ops::make_moe_layout({1}, {0}, "native test")}};
}

// moe_router_scores (+ backward) against the CPU: scores bitwise (the same Gumbel noise and exp,
// portable_math.h, and the same summation order), dlogits to rounding.
void router_case(const MoeLayout& L, int64_t T, RouterFn fn, bool gumbel, int mod_mode) {
  const int64_t E = L.num_experts, G = L.num_groups;
  std::vector<int32_t> mod = moe_modality(T, L, mod_mode);
  std::vector<int32_t> rg(T), cnt(G), off(G + 1), perm(T);
  cpu::moe_partition(kCpuLaunch, mod.data(), T, L, rg.data(), cnt.data(), off.data(), perm.data());
  std::vector<float> logits = rand_f(T * E, -4.0f, 4.0f), want(T * E), ds = rand_f(T * E), dwant(T * E);
  const uint64_t seed = 0x5eed0000ull + T, offset = (1ull << 33) + 7;
  cpu::moe_router_scores(kCpuLaunch, logits.data(), rg.data(), T, L, fn, gumbel, seed, offset, want.data());
  cpu::moe_router_scores_backward(kCpuLaunch, want.data(), ds.data(), rg.data(), T, L, fn, dwant.data());
  auto dl = dev_of(logits), drg = dev_of(rg), dds = dev_of(ds), dsw = dev_of(want);
  auto dsc = dev_poisoned(T * E * 4), ddl = dev_poisoned(T * E * 4);
  cuda::moe_router_scores(cuda::launch_ctx(0), static_cast<const float*>(dl->p), static_cast<const int32_t*>(drg->p), T,
                          L, fn, gumbel, seed, offset, static_cast<float*>(dsc->p));
  expect_equal(fetch<float>(*dsc, T * E), want, "scores");
  // the backward from the CPU's scores: same inputs on both sides
  cuda::moe_router_scores_backward(cuda::launch_ctx(0), static_cast<const float*>(dsw->p),
                                   static_cast<const float*>(dds->p), static_cast<const int32_t*>(drg->p), T, L, fn,
                                   static_cast<float*>(ddl->p));
  expect_close(fetch<float>(*ddl, T * E), dwant, 1e-5, 1e-6, "dlogits");
}

// moe_route and moe_routing_stats on the CPU's scores (and select values) against the CPU's
// routing, bitwise.
void route_case(const MoeLayout& L, int64_t T, const RoutingParams& p, int mod_mode, bool ties) {
  MoeHostRoute h = host_route(L, T, p, mod_mode, ties);
  const int64_t E = L.num_experts, W = L.max_group_experts, R = h.R, G = L.num_groups;
  auto dsc = dev_of(h.scores), drg = dev_of(h.row_group), doff = dev_of(h.offsets), dperm = dev_of(h.perm);
  auto dsel = h.select.empty() ? nullptr : dev_of(h.select);
  auto deo = dev_poisoned((E + 1) * 4), dsr = dev_poisoned(R * 4), dsg = dev_poisoned(R * 4),
       drs = dev_poisoned(T * W * 4);
  cuda::moe_route(cuda::launch_ctx(0), static_cast<const float*>(dsc->p), static_cast<const int32_t*>(drg->p),
                  static_cast<const int32_t*>(doff->p), static_cast<const int32_t*>(dperm->p), T, L, p, R,
                  static_cast<int32_t*>(deo->p), static_cast<int32_t*>(dsr->p), static_cast<float*>(dsg->p),
                  static_cast<int32_t*>(drs->p), dsel ? static_cast<const float*>(dsel->p) : nullptr);
  expect_equal(fetch<int32_t>(*deo, E + 1), h.expert_offsets, "expert_offsets");
  expect_equal(fetch<int32_t>(*dsr, R), h.slot_row, "slot_row");
  expect_equal(fetch<float>(*dsg, R), h.slot_gate, "slot_gate");
  expect_equal(fetch<int32_t>(*drs, T * W), h.row_slots, "row_slots");
  // statistics from the (CPU) routing
  std::vector<float> es(2 * E), gs(4 * G);
  cpu::moe_routing_stats(kCpuLaunch, h.row_group.data(), h.offsets.data(), h.expert_offsets.data(), h.slot_gate.data(),
                         h.row_slots.data(), T, L, es.data(), gs.data());
  auto deo2 = dev_of(h.expert_offsets), dsg2 = dev_of(h.slot_gate), drs2 = dev_of(h.row_slots);
  auto des = dev_poisoned(2 * E * 4), dgs = dev_poisoned(4 * G * 4);
  cuda::moe_routing_stats(cuda::launch_ctx(0), static_cast<const int32_t*>(drg->p),
                          static_cast<const int32_t*>(doff->p), static_cast<const int32_t*>(deo2->p),
                          static_cast<const float*>(dsg2->p), static_cast<const int32_t*>(drs2->p), T, L,
                          static_cast<float*>(des->p), static_cast<float*>(dgs->p));
  expect_close(fetch<float>(*des, 2 * E), es, 1e-6, 0.0, "expert_stats");
  expect_close(fetch<float>(*dgs, 4 * G), gs, 1e-6, 0.0, "group_stats");
}

void add_moe_routing_cases() {
  const int64_t Ts[] = {1, 37, 1000, 4099};
  int rot = 0;
  for (const MoeLayoutCase& lc : moe_layouts())
    for (int64_t T : Ts)
      for (int mod_mode = 0; mod_mode < 3; ++mod_mode) {
        const MoeLayout L = lc.L;
        const std::string tag = lc.name + " T=" + std::to_string(T) + " mod=" + std::to_string(mod_mode);
        add("moe_partition " + tag, [=] {
          const int64_t G = L.num_groups;
          std::vector<int32_t> mod = moe_modality(T, L, mod_mode);
          std::vector<int32_t> rg(T), cnt(G), off(G + 1), perm(T);
          cpu::moe_partition(kCpuLaunch, mod.data(), T, L, rg.data(), cnt.data(), off.data(), perm.data());
          auto dm = dev_of(mod);
          auto drg = dev_poisoned(T * 4), dcnt = dev_poisoned(G * 4), doff = dev_poisoned((G + 1) * 4),
               dperm = dev_poisoned(T * 4);
          cuda::moe_partition(cuda::launch_ctx(0), static_cast<const int32_t*>(dm->p), T, L,
                              static_cast<int32_t*>(drg->p), static_cast<int32_t*>(dcnt->p),
                              static_cast<int32_t*>(doff->p), static_cast<int32_t*>(dperm->p));
          expect_equal(fetch<int32_t>(*drg, T), rg, "row_group");
          expect_equal(fetch<int32_t>(*dcnt, G), cnt, "counts");
          expect_equal(fetch<int32_t>(*doff, G + 1), off, "offsets");
          expect_equal(fetch<int32_t>(*dperm, T), perm, "perm");
        });
        // router scores (+ backward): sigmoid / softmax, gumbel on and off
        for (int v = 0; v < 4; ++v) {
          const RouterFn fn = v & 1 ? RouterFn::Softmax : RouterFn::Sigmoid;
          const bool gumbel = v & 2;
          add("moe_router_scores " + tag + (v & 1 ? " softmax" : " sigmoid") + (gumbel ? " gumbel" : ""),
              [=] { router_case(L, T, fn, gumbel, mod_mode); });
        }
        // routing: expert choice at four capacities, token choice top 1 / 2, threshold
        struct RP { RoutingMode mode; double c; int k; };
        const RP rps[] = {{RoutingMode::ExpertChoice, 1.0, 1},  {RoutingMode::ExpertChoice, 0.5, 1},
                          {RoutingMode::ExpertChoice, 1.37, 1}, {RoutingMode::ExpertChoice, 2.0, 1},
                          {RoutingMode::TokenChoice, 1.0, 1},   {RoutingMode::TokenChoice, 1.37, 2},
                          {RoutingMode::TokenChoice, 0.5, 2},   {RoutingMode::Threshold, 1.0, 1}};
        for (const RP& rp : rps) {
          const bool ties = (rot++ % 2) == 1;
          RoutingParams p;
          p.mode = rp.mode;
          p.capacity = rp.c;
          p.top_k = rp.k;
          char name[160];
          std::snprintf(name, sizeof name, "moe_route %s %s c=%g k=%d%s", tag.c_str(),
                        rp.mode == RoutingMode::TokenChoice ? "token" : rp.mode == RoutingMode::Threshold ? "threshold" : "expert",
                        rp.c, rp.k, ties ? " ties" : "");
          add(name, [=] { route_case(L, T, p, mod_mode, ties); });
        }
      }
  add("moe_partition bad modality", [] {
    const MoeLayout L = ops::make_moe_layout({4, 4}, {0, 1}, "native test");
    std::vector<int32_t> mod = {0, 1, 2, -1};
    auto dm = dev_of(mod);
    auto a = dev_poisoned(16), b = dev_poisoned(8), c = dev_poisoned(12), d = dev_poisoned(16);
    cuda::moe_partition(cuda::launch_ctx(0), static_cast<const int32_t*>(dm->p), 4, L, static_cast<int32_t*>(a->p),
                        static_cast<int32_t*>(b->p), static_cast<int32_t*>(c->p), static_cast<int32_t*>(d->p));
    expect_device_error("moe_partition");
  });
}

void add_moe_row_cases() {
  const int64_t Ts[] = {1, 37, 1000};
  const int64_t ds[] = {1, 33, 256};
  for (int64_t T : Ts)
    for (int64_t d : ds)
      for (DType dt : kFloat)
        for (int li = 0; li < 2; ++li) {
          const std::string tag = std::string(li ? "[3,1,2]" : "[4,4]") + " T=" + std::to_string(T) + " d=" +
                                  std::to_string(d) + " " + dtype_name(dt);
          const MoeLayout L = li ? ops::make_moe_layout({3, 1, 2}, {0, 1, 2, -1}, "native test") : ops::make_moe_layout({4, 4}, {0, 1}, "native test");
          RoutingParams p;
          p.capacity = li ? 2.0 : 1.37;
          for (int scaled = 0; scaled < 2; ++scaled)
            add("moe_gather_rows " + tag + (scaled ? " scaled" : ""), [=] {
              MoeHostRoute h = host_route(L, T, p, 0, false);
              const int64_t R = h.R;
              const size_t es = dtype_size(dt);
              std::vector<uint8_t> x = make(dt, rand_f(T * d)), want(R * d * es);
              std::vector<float> scale = rand_f(R, -2.0f, 2.0f);
              cpu::moe_gather_rows(kCpuLaunch, dt, x.data(), h.slot_row.data(), scaled ? scale.data() : nullptr, T, R,
                                   d, want.data());
              auto dx = dev_of(x), dsr = dev_of(h.slot_row), dsc = dev_of(scale), dy = dev_poisoned(R * d * es);
              cuda::moe_gather_rows(cuda::launch_ctx(0), dt, dx->p, static_cast<const int32_t*>(dsr->p),
                                    scaled ? static_cast<const float*>(dsc->p) : nullptr, T, R, d, dy->p);
              compare(dt, dy->get(), want, R * d, Tol::Exact);
            });
          for (int weighted = 0; weighted < 2; ++weighted)
            add("moe_combine " + tag + (weighted ? " weighted" : ""), [=] {
              MoeHostRoute h = host_route(L, T, p, 0, false);
              const int64_t R = h.R, W = L.max_group_experts;
              const size_t es = dtype_size(dt);
              std::vector<uint8_t> src = make(dt, rand_f(R * d)), want(T * d * es);
              cpu::moe_combine(kCpuLaunch, dt, src.data(), h.row_slots.data(), weighted ? h.slot_gate.data() : nullptr,
                               T, W, R, d, want.data());
              auto ds_ = dev_of(src), drs = dev_of(h.row_slots), dw = dev_of(h.slot_gate), dy = dev_poisoned(T * d * es);
              cuda::moe_combine(cuda::launch_ctx(0), dt, ds_->p, static_cast<const int32_t*>(drs->p),
                                weighted ? static_cast<const float*>(dw->p) : nullptr, T, W, R, d, dy->p);
              compare(dt, dy->get(), want, T * d, Tol::Exact);  // bitwise: same order, no FMA
            });
          add("moe_gate_grad " + tag, [=] {
            MoeHostRoute h = host_route(L, T, p, 0, false);
            const int64_t R = h.R, E = L.num_experts;
            const size_t es = dtype_size(dt);
            std::vector<uint8_t> out = make(dt, rand_f(R * d)), dyv = make(dt, rand_f(T * d));
            std::vector<float> want(T * E);
            cpu::moe_gate_grad(kCpuLaunch, dt, out.data(), dyv.data(), h.slot_row.data(), h.expert_offsets.data(), T, R,
                               d, L, want.data());
            auto dout = dev_of(out), ddy = dev_of(dyv), dsr = dev_of(h.slot_row), deo = dev_of(h.expert_offsets);
            auto dsc = dev_poisoned(T * E * 4);
            cuda::moe_gate_grad(cuda::launch_ctx(0), dt, dout->p, ddy->p, static_cast<const int32_t*>(dsr->p),
                                static_cast<const int32_t*>(deo->p), T, R, d, L, static_cast<float*>(dsc->p));
            // float32 sums in a fixed order; allow rounding-level differences (relative to sum |.|)
            expect_close(fetch<float>(*dsc, T * E), want, 1e-5, 1e-5 * static_cast<double>(d), "dscores");
            (void)es;
          });
        }
  add("moe_gather_rows bad row", [] {
    std::vector<int32_t> sr = {0, 5};
    std::vector<float> x(5 * 3, 1.0f);
    auto dx = dev_of(x), dsr = dev_of(sr), dy = dev_poisoned(2 * 3 * 4);
    cuda::moe_gather_rows(cuda::launch_ctx(0), DType::F32, dx->p, static_cast<const int32_t*>(dsr->p), nullptr, 5, 2, 3,
                          dy->p);
    expect_device_error("moe_gather_rows");
  });
  add("moe_combine bad slot", [] {
    std::vector<int32_t> rs = {0, -1, 3, -1};
    std::vector<float> src(3 * 2, 1.0f);
    auto ds_ = dev_of(src), drs = dev_of(rs), dy = dev_poisoned(2 * 2 * 4);
    cuda::moe_combine(cuda::launch_ctx(0), DType::F32, ds_->p, static_cast<const int32_t*>(drs->p), nullptr, 2, 2, 3, 2,
                      dy->p);
    expect_device_error("moe_combine");
  });
}

void add_moe_swiglu_cases() {
  for (DType dt : kFloat)
    for (int64_t n : kSizes)
      for (int shift = 0; shift < 2; ++shift)  // shift 1: pointers one element off 16-byte alignment
        add(std::string("swiglu ") + dtype_name(dt) + " n=" + std::to_string(n) + (shift ? " unaligned" : ""), [=] {
          const size_t es = dtype_size(dt), off = shift * es;
          std::vector<uint8_t> h1 = make(dt, rand_f(n, -8.0f, 8.0f)), h3 = make(dt, rand_f(n)), da = make(dt, rand_f(n));
          std::vector<uint8_t> a(n * es), d1(n * es), d3(n * es);
          cpu::swiglu(kCpuLaunch, dt, h1.data(), h3.data(), a.data(), n);
          cpu::swiglu_backward(kCpuLaunch, dt, h1.data(), h3.data(), da.data(), d1.data(), d3.data(), n);
          auto pad = [&](const std::vector<uint8_t>& v) {
            std::vector<uint8_t> p(off, 0);
            p.insert(p.end(), v.begin(), v.end());
            return p;
          };
          auto dh1 = dev_of(pad(h1)), dh3 = dev_of(pad(h3)), dda = dev_of(pad(da));
          auto ya = dev_poisoned(n * es + off), y1 = dev_poisoned(n * es + off), y3 = dev_poisoned(n * es + off);
          auto at = [&](Dev& d) { return static_cast<char*>(d.p) + off; };
          cuda::swiglu(cuda::launch_ctx(0), dt, at(*dh1), at(*dh3), at(*ya), n);
          cuda::swiglu_backward(cuda::launch_ctx(0), dt, at(*dh1), at(*dh3), at(*dda), at(*y1), at(*y3), n);
          auto got = [&](Dev& d) {
            std::vector<uint8_t> b = d.get();
            return std::vector<uint8_t>(b.begin() + off, b.begin() + off + n * es);
          };
          // the CPU may use a SIMD sigmoid: a few float ulps (one bf16 ulp after rounding), and the
          // (1 + h1 (1 - sig)) factor of dh1 can cancel, hence the absolute term
          const double rel = dt == DType::F32 ? 1e-5 : 1.0 / 128;
          expect_close(as_floats(dt, got(*ya), n), as_floats(dt, a, n), rel, 1e-5, "a");
          expect_close(as_floats(dt, got(*y1), n), as_floats(dt, d1, n), rel, 1e-4, "dh1");
          expect_close(as_floats(dt, got(*y3), n), as_floats(dt, d3, n), rel, 1e-5, "dh3");
        });
}

// Offsets of E segments over R rows: random sizes with empty segments, ending before R.
std::vector<int32_t> random_offsets(int64_t E, int64_t R) {
  std::vector<int32_t> off(E + 1, 0);
  const int64_t used = R > 1 ? R - std::uniform_int_distribution<int64_t>(0, std::min<int64_t>(R - 1, 40))(g_rng) : R;
  std::vector<int64_t> cuts;
  for (int64_t e = 0; e + 1 < E; ++e) cuts.push_back(std::uniform_int_distribution<int64_t>(0, used)(g_rng));
  if (E >= 3) cuts[1] = cuts[0];  // an empty segment
  std::sort(cuts.begin(), cuts.end());
  for (int64_t e = 1; e < E; ++e) off[e] = static_cast<int32_t>(cuts[e - 1]);
  off[E] = static_cast<int32_t>(used);
  return off;
}

void add_moe_gemm_cases() {
  struct Shape { int64_t E, R, K, N; };
  const Shape shapes[] = {{1, 1, 1, 1}, {3, 37, 33, 33}, {8, 300, 64, 130}, {3, 300, 256, 33}, {1, 260, 40, 256},
                          {8, 1000, 256, 256}};
  int rot = 0;
  for (const Shape& sh : shapes)
    for (int tw = 0; tw < 2; ++tw)
      for (int v = 0; v < 3; ++v) {
        // v: 0 bf16 x bf16 -> bf16, 1 f32 x bf16 -> f32, 2 f32 x f32 -> f32 (dtypes rotate a little)
        const DType dx = v == 0 ? DType::BF16 : DType::F32;
        const DType dw = v == 2 ? DType::F32 : DType::BF16;
        const DType dy = v == 0 ? DType::BF16 : DType::F32;
        const bool swap = (rot++ % 2) == 1;
        char name[160];
        std::snprintf(name, sizeof name, "grouped_gemm E=%lld R=%lld K=%lld N=%lld tw=%d %s,%s->%s", (long long)sh.E,
                      (long long)sh.R, (long long)sh.K, (long long)sh.N, tw, dtype_name(swap ? dw : dx),
                      dtype_name(swap ? dx : dw), dtype_name(dy));
        add(name, [=] {
          const DType tx = swap ? dw : dx, tw_ = swap ? dx : dw;
          const int64_t E = sh.E, R = sh.R, K = sh.K, N = sh.N;
          std::vector<int32_t> off = random_offsets(E, R);
          std::vector<float> fx = rand_f(R * K, -1, 1), fw = rand_f(E * K * N, -1, 1);
          std::vector<uint8_t> bx = make(tx, fx), bw = make(tw_, fw);
          std::vector<float> rx(fx.size()), rw(fw.size()), want(R * N);
          for (size_t i = 0; i < fx.size(); ++i) rx[i] = bf16_to_f32(f32_to_bf16(fx[i]));
          for (size_t i = 0; i < fw.size(); ++i) rw[i] = bf16_to_f32(f32_to_bf16(fw[i]));
          cpu::grouped_gemm(kCpuLaunch, DType::F32, rx.data(), DType::F32, rw.data(), tw == 1, off.data(), E, R, K, N,
                            DType::F32, want.data());
          auto ddx = dev_of(bx), ddw = dev_of(bw), doff = dev_of(off), ddy = dev_poisoned(R * N * dtype_size(dy));
          cuda::grouped_gemm(cuda::launch_ctx(0), tx, ddx->p, tw_, ddw->p, tw == 1,
                             static_cast<const int32_t*>(doff->p), E, R, K, N, dy, ddy->p);
          std::vector<float> got = as_floats(dy, ddy->get(), R * N);
          size_t nans;
          const double rel = rel_frobenius(got, want, nans);
          bool tail_zero = true;
          for (int64_t i = off[E] * N; i < R * N; ++i) tail_zero &= got[i] == 0.0f;
          char buf[160];
          std::snprintf(buf, sizeof buf, "relative Frobenius error %.3g, %zu NaN outputs, tail zero %d", rel, nans,
                        tail_zero ? 1 : 0);
          expect(nans == 0 && rel < 1e-2 && tail_zero, buf);
        });
        if (tw == 0)
          add(std::string("grouped_gemm_wgrad ") + (name + 13), [=] {
            const DType tx = swap ? dw : dx, td = swap ? dx : dw;
            const int64_t E = sh.E, R = sh.R, K = sh.K, N = sh.N;
            std::vector<int32_t> off = random_offsets(E, R);
            std::vector<float> fx = rand_f(R * K, -1, 1), fd = rand_f(R * N, -1, 1);
            std::vector<uint8_t> bx = make(tx, fx), bd = make(td, fd);
            std::vector<float> rx(fx.size()), rd(fd.size()), want(E * K * N);
            for (size_t i = 0; i < fx.size(); ++i) rx[i] = bf16_to_f32(f32_to_bf16(fx[i]));
            for (size_t i = 0; i < fd.size(); ++i) rd[i] = bf16_to_f32(f32_to_bf16(fd[i]));
            cpu::grouped_gemm_wgrad(kCpuLaunch, DType::F32, rx.data(), DType::F32, rd.data(), off.data(), E, R, K, N,
                                    want.data());
            auto ddx = dev_of(bx), ddd = dev_of(bd), doff = dev_of(off), ddw = dev_poisoned(E * K * N * 4);
            cuda::grouped_gemm_wgrad(cuda::launch_ctx(0), tx, ddx->p, td, ddd->p,
                                     static_cast<const int32_t*>(doff->p), E, R, K, N, static_cast<float*>(ddw->p));
            std::vector<float> got = fetch<float>(*ddw, E * K * N);
            size_t nans;
            const double rel = rel_frobenius(got, want, nans);
            bool empty_zero = true;
            for (int64_t e = 0; e < E; ++e)
              if (off[e] == off[e + 1])
                for (int64_t i = e * K * N; i < (e + 1) * K * N; ++i) empty_zero &= got[i] == 0.0f;
            char buf[160];
            std::snprintf(buf, sizeof buf, "relative Frobenius error %.3g, %zu NaN outputs, empty segments zero %d",
                          rel, nans, empty_zero ? 1 : 0);
            expect(nans == 0 && rel < 1e-2 && empty_zero, buf);
          });
      }
  add("grouped_gemm bad offsets", [] {
    std::vector<int32_t> off = {0, 5, 3, 9};  // decreasing, and past R = 8
    std::vector<float> x(8 * 4, 1.0f), w(3 * 4 * 2, 1.0f);
    auto dx = dev_of(x), dw = dev_of(w), doff = dev_of(off), dy = dev_poisoned(8 * 2 * 4);
    cuda::grouped_gemm(cuda::launch_ctx(0), DType::F32, dx->p, DType::F32, dw->p, false,
                       static_cast<const int32_t*>(doff->p), 3, 8, 4, 2, DType::F32, dy->p);
    expect_device_error("grouped");
  });
}

// Sizes at the kernels' launch boundaries (cuda/moe_routing.cu, cuda/moe_rows.cu), larger expert
// groups, and the route_select key cache: T in [11,997, 12,288] needed the > 48 KiB opt-in that
// once ignored the kernel's 1,168 B of static shared memory; groups larger than the cache (57,820
// keys on sm_90, 41,436 on sm_80, 25,052 on sm_86 / sm_89) take the uncached path.
void add_moe_boundary_cases() {
  const MoeLayout one8 = ops::make_moe_layout({8}, {0}, "native test");
  RoutingParams ec, tc, th;
  ec.capacity = 1.0;
  tc.mode = RoutingMode::TokenChoice;
  tc.capacity = 1.37;
  tc.top_k = 2;
  th.mode = RoutingMode::Threshold;
  for (int64_t T : {11996, 11997, 12288, 12289, 16384, 25052, 25053, 41436, 41437, 57820, 57821, 65536}) {
    add("moe_route smem window [8] T=" + std::to_string(T) + " expert", [=] { route_case(one8, T, ec, 1, false); });
    add("moe_route smem window [8] T=" + std::to_string(T) + " token", [=] { route_case(one8, T, tc, 1, true); });
  }
  // Groups of 16 and 64 experts. Boundaries: partition / select / prefix blocks of 1024 rows,
  // fill_i32 / route_mark grids of 8192 x 256 (T W = 2^21 at T = 32768 for W = 64), the router's
  // 8192 blocks x 8 rows (T = 65536).
  struct Big { const char* name; MoeLayout L; };
  const Big bigs[] = {{"[16]", ops::make_moe_layout({16}, {0}, "native test")},
                      {"[64]", ops::make_moe_layout({64}, {0}, "native test")},
                      {"[16,64]+unrouted", ops::make_moe_layout({16, 64}, {0, 1, -1}, "native test")}};
  for (const Big& b : bigs) {
    const MoeLayout L = b.L;
    for (int64_t T : {1023, 1024, 1025, 2049, 32767, 32768, 32769}) {
      const std::string tag = std::string(b.name) + " T=" + std::to_string(T);
      add("moe_route " + tag + " expert", [=] { route_case(L, T, ec, 0, false); });
      add("moe_route " + tag + " token", [=] { route_case(L, T, tc, 0, T % 2 == 1); });
      add("moe_route " + tag + " threshold", [=] { route_case(L, T, th, 0, false); });
    }
    for (int64_t T : {7, 8, 9, 65535, 65536, 65537})
      for (int v = 0; v < 2; ++v) {
        const RouterFn fn = v ? RouterFn::Softmax : RouterFn::Sigmoid;
        add("moe_router_scores " + std::string(b.name) + " T=" + std::to_string(T) + (v ? " softmax" : " sigmoid") +
                " gumbel",
            [=] { router_case(L, T, fn, true, 0); });
      }
  }
  add("moe_route [16,64]+unrouted T=65536 expert c=2", [] {
    RoutingParams p;
    p.capacity = 2.0;
    route_case(ops::make_moe_layout({16, 64}, {0, 1, -1}, "native test"), 65536, p, 0, false);
  });
}

// The row kernels at their grid limits: one block per row up to 65535 blocks (gather over R slots,
// combine over T rows), gate_grad's 8192 x 256 threads = 131072 half-warp slots.
void add_moe_row_boundary_cases() {
  const MoeLayout L = ops::make_moe_layout({4, 4}, {0, 1}, "native test");
  for (int64_t T : {32767, 32768, 65535, 65536, 65537}) {
    RoutingParams p;
    p.capacity = 2.0;  // R ~ 2 T: past 65535 gather rows and around 131072 gate_grad slots
    const int64_t d = 40;
    const std::string tag = "[4,4] T=" + std::to_string(T) + " d=40 c=2";
    add("moe_gather_rows " + tag, [=] {
      MoeHostRoute h = host_route(L, T, p, 0, false);
      const int64_t R = h.R;
      std::vector<uint8_t> x = make(DType::BF16, rand_f(T * d)), want(R * d * 2);
      cpu::moe_gather_rows(kCpuLaunch, DType::BF16, x.data(), h.slot_row.data(), h.slot_gate.data(), T, R, d,
                           want.data());
      auto dx = dev_of(x), dsr = dev_of(h.slot_row), dsc = dev_of(h.slot_gate), dy = dev_poisoned(R * d * 2);
      cuda::moe_gather_rows(cuda::launch_ctx(0), DType::BF16, dx->p, static_cast<const int32_t*>(dsr->p),
                            static_cast<const float*>(dsc->p), T, R, d, dy->p);
      compare(DType::BF16, dy->get(), want, R * d, Tol::Exact);
    });
    add("moe_combine " + tag, [=] {
      MoeHostRoute h = host_route(L, T, p, 0, false);
      const int64_t R = h.R, W = L.max_group_experts;
      std::vector<uint8_t> src = make(DType::F32, rand_f(R * d)), want(T * d * 4);
      cpu::moe_combine(kCpuLaunch, DType::F32, src.data(), h.row_slots.data(), h.slot_gate.data(), T, W, R, d,
                       want.data());
      auto ds_ = dev_of(src), drs = dev_of(h.row_slots), dw = dev_of(h.slot_gate), dy = dev_poisoned(T * d * 4);
      cuda::moe_combine(cuda::launch_ctx(0), DType::F32, ds_->p, static_cast<const int32_t*>(drs->p),
                        static_cast<const float*>(dw->p), T, W, R, d, dy->p);
      compare(DType::F32, dy->get(), want, T * d, Tol::Exact);
    });
    add("moe_gate_grad " + tag, [=] {
      MoeHostRoute h = host_route(L, T, p, 0, false);
      const int64_t R = h.R, E = L.num_experts;
      std::vector<uint8_t> out = make(DType::F32, rand_f(R * d)), dyv = make(DType::F32, rand_f(T * d));
      std::vector<float> want(T * E);
      cpu::moe_gate_grad(kCpuLaunch, DType::F32, out.data(), dyv.data(), h.slot_row.data(), h.expert_offsets.data(), T,
                         R, d, L, want.data());
      auto dout = dev_of(out), ddy = dev_of(dyv), dsr = dev_of(h.slot_row), deo = dev_of(h.expert_offsets);
      auto dsc = dev_poisoned(T * E * 4);
      cuda::moe_gate_grad(cuda::launch_ctx(0), DType::F32, dout->p, ddy->p, static_cast<const int32_t*>(dsr->p),
                          static_cast<const int32_t*>(deo->p), T, R, d, L, static_cast<float*>(dsc->p));
      expect_close(fetch<float>(*dsc, T * E), want, 1e-5, 1e-5 * static_cast<double>(d), "dscores");
    });
  }
}

}  // namespace

void add_moe_cases() {
  add_moe_routing_cases();
  add_moe_boundary_cases();
  add_moe_row_cases();
  add_moe_row_boundary_cases();
  add_moe_swiglu_cases();
  add_moe_gemm_cases();
}

}  // namespace moma::native_test
