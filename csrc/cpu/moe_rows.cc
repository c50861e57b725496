// Mixture-of-experts row movement (kernels_moe.h): dispatch / gather of rows into expert slots,
// combine of the expert outputs back to rows, and the gradient of the gates.
// Every kernel first checks its indices sequentially (throwing ERR_RANGE for the first bad one,
// before anything is written), then runs in parallel over output rows, so each output element is
// computed by one thread in a fixed order.
//   gather:   y[s, :] = scale[s] * x[slot_row[s], :], memcpy when unscaled.
//   combine:  per row, a float32 accumulator starting at +0 takes the terms of j = 0..W-1 in
//             order (acc = acc + w * v, separate multiply and add; the build uses
//             -ffp-contract=off): the output row itself for float32 (AVX-512 / AVX2 / generic
//             loops picked at run time, all with the same roundings), a block of columns rounded
//             once on store for bf16.
//   gate grad: dot products in float32 with 16 interleaved partial sums (element i goes to lane
//             i % 16, lanes added in order at the end): fixed order, vectorisable.
#include <algorithm>
#include <cstring>
#include <vector>

#include "../core/bf16.h"
#include "../core/error.h"
#include "kernels_moe.h"
#include "thread_pool.h"

namespace moma::cpu {
namespace {

constexpr int64_t kGrainElems = 32768;  // elements per parallel chunk
constexpr int64_t kBlock = 512;         // columns per accumulator block

inline int64_t rows_grain(int64_t d) { return std::max<int64_t>(1, kGrainElems / std::max<int64_t>(1, d)); }

inline float load(const float* p, int64_t i) { return p[i]; }
inline float load(const uint16_t* p, int64_t i) { return bf16_to_f32(p[i]); }
inline void store(float* p, int64_t i, float v) { p[i] = v; }
inline void store(uint16_t* p, int64_t i, float v) { p[i] = f32_to_bf16(v); }

template <typename T>
void gather_rows(const T* x, const int32_t* slot_row, const float* scale, int64_t R, int64_t d, T* y) {
  parallel_for(R, rows_grain(d), [&](int64_t s0, int64_t s1) {
    for (int64_t s = s0; s < s1; ++s) {
      T* out = y + s * d;
      const int32_t t = slot_row[s];
      if (t < 0) {
        std::memset(out, 0, static_cast<size_t>(d) * sizeof(T));
        continue;
      }
      const T* in = x + static_cast<int64_t>(t) * d;
      if (!scale) {
        std::memcpy(out, in, static_cast<size_t>(d) * sizeof(T));
        continue;
      }
      const float w = scale[s];
      for (int64_t i = 0; i < d; ++i) store(out, i, w * load(in, i));
    }
  });
}

// acc[i] = acc[i] + w * v[i] (w == nullptr: acc[i] + v[i]), one rounding per multiply and per add
// (-ffp-contract=off), so every ISA variant gives the same bits.
#define MOMA_AXPY_BODY                                                     \
  if (w) {                                                                 \
    const float a = *w;                                                    \
    for (int64_t i = 0; i < n; ++i) acc[i] = acc[i] + a * v[i];            \
  } else {                                                                 \
    for (int64_t i = 0; i < n; ++i) acc[i] = acc[i] + v[i];                \
  }
using AxpyFn = void (*)(float*, const float*, const float*, int64_t);
void axpy_generic(float* __restrict acc, const float* w, const float* __restrict v, int64_t n) { MOMA_AXPY_BODY }
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
__attribute__((target("avx512f"))) void axpy_avx512(float* __restrict acc, const float* w, const float* __restrict v,
                                                     int64_t n) {
  MOMA_AXPY_BODY
}
__attribute__((target("avx2"))) void axpy_avx2(float* __restrict acc, const float* w, const float* __restrict v,
                                               int64_t n) {
  MOMA_AXPY_BODY
}
#endif
#undef MOMA_AXPY_BODY

AxpyFn pick_axpy() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return axpy_avx512;
  if (__builtin_cpu_supports("avx2")) return axpy_avx2;
#endif
  return axpy_generic;
}

// float32: accumulates straight in the output row (zeroed first).
void combine_f32(const float* src, const int32_t* row_slots, const float* weight, int64_t T, int64_t W, int64_t d,
                 float* y) {
  static const AxpyFn axpy = pick_axpy();
  parallel_for(T, rows_grain(d), [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int32_t* slots = row_slots + t * W;
      float* out = y + t * d;
      std::memset(out, 0, static_cast<size_t>(d) * sizeof(float));
      for (int64_t j = 0; j < W; ++j) {
        const int32_t s = slots[j];
        if (s >= 0) axpy(out, weight ? weight + s : nullptr, src + static_cast<int64_t>(s) * d, d);
      }
    }
  });
}

// bf16: a float32 accumulator per block of columns, rounded once on store.
void combine_bf16(const uint16_t* src, const int32_t* row_slots, const float* weight, int64_t T, int64_t W,
                  int64_t d, uint16_t* y) {
  parallel_for(T, rows_grain(d), [&](int64_t t0, int64_t t1) {
    alignas(64) float acc[kBlock];
    alignas(64) float v[kBlock];
    for (int64_t t = t0; t < t1; ++t) {
      const int32_t* slots = row_slots + t * W;
      for (int64_t c0 = 0; c0 < d; c0 += kBlock) {
        const int64_t nc = std::min(kBlock, d - c0);
        for (int64_t i = 0; i < nc; ++i) acc[i] = 0.0f;
        for (int64_t j = 0; j < W; ++j) {
          const int32_t s = slots[j];
          if (s < 0) continue;
          const uint16_t* in = src + static_cast<int64_t>(s) * d + c0;
          for (int64_t i = 0; i < nc; ++i) v[i] = bf16_to_f32(in[i]);
          axpy_generic(acc, weight ? weight + s : nullptr, v, nc);
        }
        uint16_t* out = y + t * d + c0;
        for (int64_t i = 0; i < nc; ++i) out[i] = f32_to_bf16(acc[i]);
      }
    }
  });
}

template <typename T>
float dot(const T* a, const T* b, int64_t d) {
  constexpr int kLanes = 16;
  float lane[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= d; i += kLanes)
    for (int l = 0; l < kLanes; ++l) lane[l] = lane[l] + load(a, i + l) * load(b, i + l);
  for (int l = 0; i < d; ++i, ++l) lane[l] = lane[l] + load(a, i) * load(b, i);
  float sum = 0.0f;
  for (int l = 0; l < kLanes; ++l) sum = sum + lane[l];
  return sum;
}

template <typename T>
void gate_grad(const T* out, const T* dy, const int32_t* slot_row, const int32_t* expert_offsets, int64_t d,
               const MoeLayout& L, float* dscores) {
  const int64_t E = L.num_experts;
  const int64_t used = expert_offsets[E];
  // routed[e]: expert e belongs to a group with more than one expert.
  std::vector<uint8_t> routed(static_cast<size_t>(E), 0);
  for (int g = 0; g < L.num_groups; ++g)
    for (int64_t e = L.begin[g]; e < L.begin[g + 1]; ++e) routed[static_cast<size_t>(e)] = L.experts[g] > 1;
  parallel_for(used, rows_grain(2 * d), [&](int64_t s0, int64_t s1) {
    // The expert of slot s0, then advanced as s grows.
    int64_t e = std::upper_bound(expert_offsets, expert_offsets + E + 1, static_cast<int32_t>(s0)) - expert_offsets - 1;
    for (int64_t s = s0; s < s1; ++s) {
      while (expert_offsets[e + 1] <= s) ++e;
      const int32_t t = slot_row[s];
      if (t < 0 || !routed[static_cast<size_t>(e)]) continue;
      dscores[static_cast<int64_t>(t) * E + e] = dot(out + s * d, dy + static_cast<int64_t>(t) * d, d);
    }
  });
}

}  // namespace

void moe_gather_rows(const LaunchCtx& ctx, DType dt, const void* x, const int32_t* slot_row, const float* scale,
                     int64_t T, int64_t R, int64_t d, void* y) {
  for (int64_t s = 0; s < R; ++s) {
    if (slot_row[s] < -1 || slot_row[s] >= T)
      fail("ERR_RANGE", "moe_gather_rows: slot_row[", s, "] = ", slot_row[s], " is out of range [-1, ", T, ")");
  }
  if (dt == DType::F32)
    gather_rows(static_cast<const float*>(x), slot_row, scale, R, d, static_cast<float*>(y));
  else if (dt == DType::BF16)
    gather_rows(static_cast<const uint16_t*>(x), slot_row, scale, R, d, static_cast<uint16_t*>(y));
  else
    fail("ERR_DTYPE", "moe_gather_rows: unsupported dtype ", dtype_name(dt));
}

void moe_combine(const LaunchCtx& ctx, DType dt, const void* src, const int32_t* row_slots, const float* weight,
                 int64_t T, int64_t W, int64_t R, int64_t d, void* y) {
  for (int64_t i = 0; i < T * W; ++i) {
    if (row_slots[i] < -1 || row_slots[i] >= R)
      fail("ERR_RANGE", "moe_combine: row_slots[", i / W, ", ", i % W, "] = ", row_slots[i],
           " is out of range [-1, ", R, ")");
  }
  if (dt == DType::F32)
    combine_f32(static_cast<const float*>(src), row_slots, weight, T, W, d, static_cast<float*>(y));
  else if (dt == DType::BF16)
    combine_bf16(static_cast<const uint16_t*>(src), row_slots, weight, T, W, d, static_cast<uint16_t*>(y));
  else
    fail("ERR_DTYPE", "moe_combine: unsupported dtype ", dtype_name(dt));
}

void moe_gate_grad(const LaunchCtx& ctx, DType dt, const void* out, const void* dy, const int32_t* slot_row,
                   const int32_t* expert_offsets, int64_t T, int64_t R, int64_t d, const MoeLayout& L, float* dscores) {
  const int64_t E = L.num_experts;
  if (expert_offsets[0] != 0)
    fail("ERR_RANGE", "moe_gate_grad: expert_offsets[0] = ", expert_offsets[0], ", expected 0");
  for (int64_t e = 0; e < E; ++e) {
    if (expert_offsets[e + 1] < expert_offsets[e] || expert_offsets[e + 1] > R)
      fail("ERR_RANGE", "moe_gate_grad: expert_offsets[", e + 1, "] = ", expert_offsets[e + 1],
           " is out of range [", expert_offsets[e], ", ", R, "]");
  }
  for (int64_t s = 0; s < expert_offsets[E]; ++s) {
    if (slot_row[s] < -1 || slot_row[s] >= T)
      fail("ERR_RANGE", "moe_gate_grad: slot_row[", s, "] = ", slot_row[s], " is out of range [-1, ", T, ")");
  }
  parallel_for(T * E, kGrainElems, [&](int64_t i0, int64_t i1) { std::fill(dscores + i0, dscores + i1, 0.0f); });
  if (dt == DType::F32)
    gate_grad(static_cast<const float*>(out), static_cast<const float*>(dy), slot_row, expert_offsets, d, L, dscores);
  else if (dt == DType::BF16)
    gate_grad(static_cast<const uint16_t*>(out), static_cast<const uint16_t*>(dy), slot_row, expert_offsets, d, L,
              dscores);
  else
    fail("ERR_DTYPE", "moe_gate_grad: unsupported dtype ", dtype_name(dt));
}

}  // namespace moma::cpu
