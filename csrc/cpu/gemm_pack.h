// Panel packers of the CPU GEMM micro-kernels (the layouts gemm_kernels.h specifies), shared by
// drivers that pack their own panels (grouped_gemm.cc). Each packer writes one zero-padded panel of
// op(X) for a k range [p0, p0 + kc), whatever X's transpose and leading dimension, so the kernel
// always runs full tiles on unit-stride data:
//   float32 A panel: dst[k * mr + i] = alpha * op(A)(i0 + i, p0 + k)       (bf16 widened exactly)
//   float32 B panel: dst[k * nr + j] = op(B)(p0 + k, j0 + j)
//   bf16 A panel:    pairs   dst[(k / 2) * mr * 2 + i * 2 + k % 2], or
//                    rows32  dst[(k / 32) * mr * 32 + i * 32 + k % 32]  (K zero-padded to kd)
//   bf16 B panel:    VNNI pairs dst[(k / 2) * nr * 2 + j * 2 + k % 2]  (K zero-padded to kd)
// A pack is pure data movement, so two drivers packing the same range get identical panels and the
// same micro-kernel results, bit for bit.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>

#include "../core/bf16.h"
#include "gemm_kernels.h"

namespace moma::cpu::pack {

// A 64-byte aligned buffer (one per thread, thread_local) that grows to the largest request.
class Buffer {
 public:
  Buffer() = default;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer() { std::free(data_); }

  template <typename T>
  T* get(size_t count) {
    const size_t bytes = (count * sizeof(T) + 63) / 64 * 64;
    if (bytes > cap_) {
      std::free(data_);
      data_ = nullptr;
      cap_ = 0;
      data_ = std::aligned_alloc(64, bytes);
      if (!data_) throw std::bad_alloc();
      cap_ = bytes;
    }
    return static_cast<T*>(data_);
  }

 private:
  void* data_ = nullptr;
  size_t cap_ = 0;
};

// An element of an operand as float32: bf16 (stored as uint16_t) is widened exactly.
inline float widen(float v) { return v; }
inline float widen(uint16_t v) { return bf16_to_f32(v); }

// One MR-row float32 panel of alpha * op(A): rows [i0, i0 + rows), k in [p0, p0 + kc).
template <typename TA>
void a_panel_f32(const TA* A, int64_t lda, bool trans, int64_t i0, int64_t rows, int64_t p0, int64_t kc, int64_t mr,
                 float alpha, float* dst) {
  if (trans) {
    for (int64_t k = 0; k < kc; ++k) {
      const TA* src = A + (p0 + k) * lda + i0;
      float* d = dst + k * mr;
      for (int64_t i = 0; i < rows; ++i) d[i] = alpha * widen(src[i]);
      for (int64_t i = rows; i < mr; ++i) d[i] = 0.0f;
    }
  } else {
    for (int64_t i = 0; i < rows; ++i) {
      const TA* src = A + (i0 + i) * lda + p0;
      for (int64_t k = 0; k < kc; ++k) dst[k * mr + i] = alpha * widen(src[k]);
    }
    for (int64_t k = 0; k < kc; ++k)
      for (int64_t i = rows; i < mr; ++i) dst[k * mr + i] = 0.0f;
  }
}

// One NR-column float32 panel of op(B): columns [j0, j0 + cols), k in [p0, p0 + kc).
template <typename TB>
void b_panel_f32(const TB* B, int64_t ldb, bool trans, int64_t j0, int64_t cols, int64_t p0, int64_t kc, int64_t nr,
                 float* dst) {
  if (trans) {
    for (int64_t j = 0; j < cols; ++j) {
      const TB* src = B + (j0 + j) * ldb + p0;
      for (int64_t k = 0; k < kc; ++k) dst[k * nr + j] = widen(src[k]);
    }
    for (int64_t k = 0; k < kc; ++k)
      for (int64_t j = cols; j < nr; ++j) dst[k * nr + j] = 0.0f;
  } else {
    for (int64_t k = 0; k < kc; ++k) {
      const TB* src = B + (p0 + k) * ldb + j0;
      float* d = dst + k * nr;
      for (int64_t j = 0; j < cols; ++j) d[j] = widen(src[j]);
      for (int64_t j = cols; j < nr; ++j) d[j] = 0.0f;
    }
  }
}

// bf16 panels are written a k pair at a time: one 32-bit word, k even in the low half and k odd in
// the high half (as vdpbf16ps / tdpbf16ps read them).
typedef uint32_t __attribute__((may_alias)) PairWord;

// d[j] = (r0[j], r1[j]) for j < n; r1 == nullptr is an odd K tail (high half zero).
inline void interleave_rows(const uint16_t* r0, const uint16_t* r1, int64_t n, PairWord* d) {
  if (r1) {
    for (int64_t j = 0; j < n; ++j) d[j] = uint32_t(r0[j]) | (uint32_t(r1[j]) << 16);
  } else {
    for (int64_t j = 0; j < n; ++j) d[j] = r0[j];
  }
}

// d[p * stride] = (src[2p], src[2p + 1]) for the kc elements of src (an odd last one pairs with 0).
inline void gather_pairs(const uint16_t* src, int64_t kc, int64_t stride, PairWord* d) {
  const int64_t full = kc / 2;
  for (int64_t p = 0; p < full; ++p) {
    uint32_t w;
    std::memcpy(&w, src + 2 * p, sizeof w);
    d[p * stride] = w;
  }
  if (kc & 1) d[full * stride] = src[kc - 1];
}

// Pair words of rows [r0, r0 + rows), k in [p0, p0 + kc) of an operand whose element (r, k) is
// X[r * ld + k] (k_contiguous) or X[k * ld + r]: word (p, r) at d[p * width + r].
inline void pairs(const uint16_t* X, int64_t ld, bool k_contiguous, int64_t r0, int64_t rows, int64_t p0, int64_t kc,
                  int64_t width, PairWord* d) {
  if (k_contiguous) {
    for (int64_t r = 0; r < rows; ++r) gather_pairs(X + (r0 + r) * ld + p0, kc, width, d + r);
  } else {
    for (int64_t k = 0; k + 1 < kc; k += 2)
      interleave_rows(X + (p0 + k) * ld + r0, X + (p0 + k + 1) * ld + r0, rows, d + (k / 2) * width);
    if (kc & 1) interleave_rows(X + (p0 + kc - 1) * ld + r0, nullptr, rows, d + (kc / 2) * width);
  }
}

// One MR-row bf16 panel of op(A), zero-padded to MR rows and kd >= kc steps, in `layout`.
inline void a_panel_bf16(const uint16_t* A, int64_t lda, bool trans, int64_t i0, int64_t rows, int64_t p0, int64_t kc,
                         int64_t kd, int64_t mr, BF16ALayout layout, uint16_t* dst) {
  if (rows < mr || kc < kd) std::memset(dst, 0, static_cast<size_t>(mr * kd) * sizeof(uint16_t));
  if (layout == BF16ALayout::Pairs) {
    pairs(A, lda, !trans, i0, rows, p0, kc, mr, reinterpret_cast<PairWord*>(dst));
  } else if (!trans) {
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t k = 0; k < kc; k += 32)
        std::memcpy(dst + (k / 32) * mr * 32 + i * 32, A + (i0 + i) * lda + p0 + k,
                    static_cast<size_t>(std::min<int64_t>(32, kc - k)) * sizeof(uint16_t));
  } else {
    for (int64_t k = 0; k < kc; ++k) {
      const uint16_t* src = A + (p0 + k) * lda + i0;
      uint16_t* d = dst + (k / 32) * mr * 32 + (k % 32);
      for (int64_t i = 0; i < rows; ++i) d[i * 32] = src[i];
    }
  }
}

// One NR-column bf16 panel of op(B) in VNNI pairs, zero-padded to NR columns and kd >= kc steps.
inline void b_panel_vnni(const uint16_t* B, int64_t ldb, bool trans, int64_t j0, int64_t cols, int64_t p0, int64_t kc,
                         int64_t kd, int64_t nr, uint16_t* dst) {
  if (cols < nr || kc < kd) std::memset(dst, 0, static_cast<size_t>(nr * kd) * sizeof(uint16_t));
  pairs(B, ldb, trans, j0, cols, p0, kc, nr, reinterpret_cast<PairWord*>(dst));
}

}  // namespace moma::cpu::pack
