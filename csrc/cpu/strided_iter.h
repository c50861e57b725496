// Private helpers for the CPU kernels (not part of the kernel contract):
//   * Coalesced<N> / for_each_run: walk N strided views of one logical shape in row-major order,
//     handing out runs along the innermost dimension. Size-1 dims are dropped and dims that are
//     contiguous in every view are merged, so a fully contiguous view is one run. A walk can start
//     at any linear position, which is how parallel_for chunks map onto views.
//   * storage types: float32 -> float, bf16 -> uint16_t, int32 -> int32_t, uint8 -> uint8_t, with
//     float loads/stores for the two float types and a dispatcher from DType to storage type.
#pragma once
#include <cstdint>

#include "../core/bf16.h"
#include "../core/error.h"
#include "../core/kernel_types.h"

namespace moma::cpu::detail {

template <int N>
struct Coalesced {
  int ndim = 0;  // >= 1 after coalesce()
  int64_t shape[kMaxDims] = {};
  int64_t strides[N][kMaxDims] = {};
  int64_t offset[N] = {};

  int64_t inner_stride(int v) const { return strides[v][ndim - 1]; }
};

// All views must have the shape of views[0] (the output shape); only their strides differ.
template <int N>
Coalesced<N> coalesce(const StridedView* const (&views)[N]) {
  Coalesced<N> c;
  const StridedView& s = *views[0];
  for (int v = 0; v < N; ++v) c.offset[v] = views[v]->offset;
  for (int k = 0; k < s.ndim; ++k) {
    if (s.shape[k] == 1) continue;
    bool merge = c.ndim > 0;
    for (int v = 0; v < N && merge; ++v)
      merge = c.strides[v][c.ndim - 1] == views[v]->strides[k] * s.shape[k];
    if (merge) {
      c.shape[c.ndim - 1] *= s.shape[k];
      for (int v = 0; v < N; ++v) c.strides[v][c.ndim - 1] = views[v]->strides[k];
    } else {
      c.shape[c.ndim] = s.shape[k];
      for (int v = 0; v < N; ++v) c.strides[v][c.ndim] = views[v]->strides[k];
      ++c.ndim;
    }
  }
  if (c.ndim == 0) {  // scalar or all-ones shape: one element
    c.shape[0] = 1;
    c.ndim = 1;
  }
  return c;
}

// Calls f(pos, off, len) for consecutive runs covering linear positions [begin, end): positions
// pos .. pos+len-1 lie along the innermost dim, and off[v] is the element offset of position pos
// in view v (later elements of the run are at off[v] + t * c.inner_stride(v)).
template <int N, typename F>
void for_each_run(const Coalesced<N>& c, int64_t begin, int64_t end, F&& f) {
  if (begin >= end) return;
  const int last = c.ndim - 1;
  int64_t idx[kMaxDims];
  int64_t rem = begin;
  for (int k = last; k >= 0; --k) {
    idx[k] = rem % c.shape[k];
    rem /= c.shape[k];
  }
  int64_t pos = begin;
  while (pos < end) {
    int64_t off[N];
    for (int v = 0; v < N; ++v) {
      int64_t o = c.offset[v];
      for (int k = 0; k <= last; ++k) o += idx[k] * c.strides[v][k];
      off[v] = o;
    }
    int64_t len = c.shape[last] - idx[last];
    if (len > end - pos) len = end - pos;
    f(pos, static_cast<const int64_t*>(off), len);
    pos += len;
    idx[last] += len;
    for (int k = last; k > 0 && idx[k] == c.shape[k]; --k) {
      idx[k] = 0;
      ++idx[k - 1];
    }
  }
}

// ---- storage types -----------------------------------------------------------------------------

inline float load_f(float v) { return v; }
inline float load_f(uint16_t v) { return bf16_to_f32(v); }

template <typename T> T store_f(float v);
template <> inline float store_f<float>(float v) { return v; }
template <> inline uint16_t store_f<uint16_t>(float v) { return f32_to_bf16(v); }

// Calls f(T{}) with T the storage type of dt.
template <typename F>
void dispatch_storage(DType dt, const char* op, F&& f) {
  switch (dt) {
    case DType::F32: f(float{}); return;
    case DType::BF16: f(uint16_t{}); return;
    case DType::I32: f(int32_t{}); return;
    case DType::U8: f(uint8_t{}); return;
  }
  fail("ERR_DTYPE", op, ": unknown dtype ", static_cast<int>(dt));
}

// Calls f(T{}) with T the storage type of a float dtype; other dtypes throw ERR_DTYPE.
template <typename F>
void dispatch_float(DType dt, const char* op, F&& f) {
  switch (dt) {
    case DType::F32: f(float{}); return;
    case DType::BF16: f(uint16_t{}); return;
    default: fail("ERR_DTYPE", op, ": dtype ", dtype_name(dt), " is not supported");
  }
}

// Unsigned type of the given element size, for kernels that only move bits.
template <int Bytes> struct Bits;
template <> struct Bits<1> { using T = uint8_t; };
template <> struct Bits<2> { using T = uint16_t; };
template <> struct Bits<4> { using T = uint32_t; };

// Calls f(T{}) with T the unsigned type of dt's element size.
template <typename F>
void dispatch_bits(DType dt, const char* op, F&& f) {
  switch (dtype_size(dt)) {
    case 1: f(Bits<1>::T{}); return;
    case 2: f(Bits<2>::T{}); return;
    case 4: f(Bits<4>::T{}); return;
    default: fail("ERR_DTYPE", op, ": unknown dtype ", static_cast<int>(dt));
  }
}

}  // namespace moma::cpu::detail
