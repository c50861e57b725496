// AArch64 NEON (Advanced SIMD) vector traits for vmath_simd.h: 4 float lanes in a q register, lane
// masks as all-ones / all-zeros uint32 lanes (bsl selects bitwise), 2 double lanes per register.
// NEON is part of the AArch64 baseline, so the functions need no target attribute and the table
// is used without a run-time check. Where NEON and x86 differ, the traits follow the x86 rules
// that vmath_simd.h is written against:
//   min / max: fmin / fmax return the NaN when either operand is one; the x86 rule ("the second
//     operand when either is NaN", which lets exp's clamp pass a NaN x through) is a compare and
//     a select.
//   scale2(p, n) = p * 2^n: as in the AVX2 traits, (p * 2^(n - n/2)) * 2^(n/2) with both factors
//     normal floats built from the integer exponent; the first product is exact, so only the
//     second rounds (correct overflow to inf and gradual underflow; Linux runs AArch64 with
//     denormals enabled, FPCR.FZ = 0).
//   NaN propagation: with FPCR.DN = 0 (Linux's default) arithmetic returns the NaN operand
//     quieted, sign and payload kept, as x86 does.
// bf16 stores round to nearest even in the 32-bit lanes and narrow with xtn.
#include "vmath.h"

#if defined(__aarch64__) && (defined(__GNUC__) || defined(__clang__))
#include <arm_neon.h>

#define MOMA_VM_INLINE __attribute__((always_inline))
#define MOMA_VM_ENTRY

namespace moma::cpu::vmath {
namespace {

struct Neon {
  using F = float32x4_t;
  using I = int32x4_t;
  using M = uint32x4_t;
  using D = float64x2_t;
  static constexpr int N = 4;

  MOMA_VM_INLINE static F load(const float* p) { return vld1q_f32(p); }
  MOMA_VM_INLINE static void store(float* p, F v) { vst1q_f32(p, v); }
  MOMA_VM_INLINE static F load_bf16(const uint16_t* p) {
    return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(p), 16));
  }
  MOMA_VM_INLINE static void store_bf16(uint16_t* p, F v) {
    const uint32x4_t u = vreinterpretq_u32_f32(v);
    const uint32x4_t lsb = vandq_u32(vshrq_n_u32(u, 16), vdupq_n_u32(1));
    const uint32x4_t rounded = vshrq_n_u32(vaddq_u32(u, vaddq_u32(vdupq_n_u32(0x7fff), lsb)), 16);
    const uint32x4_t nan = vcgtq_u32(vandq_u32(u, vdupq_n_u32(0x7fffffff)), vdupq_n_u32(0x7f800000));
    const uint32x4_t quiet = vorrq_u32(vshrq_n_u32(u, 16), vdupq_n_u32(0x40));
    vst1_u16(p, vmovn_u32(vbslq_u32(nan, quiet, rounded)));
  }

  MOMA_VM_INLINE static F set(float v) { return vdupq_n_f32(v); }
  MOMA_VM_INLINE static I seti(int32_t v) { return vdupq_n_s32(v); }
  MOMA_VM_INLINE static F add(F a, F b) { return vaddq_f32(a, b); }
  MOMA_VM_INLINE static F sub(F a, F b) { return vsubq_f32(a, b); }
  MOMA_VM_INLINE static F mul(F a, F b) { return vmulq_f32(a, b); }
  MOMA_VM_INLINE static F div(F a, F b) { return vdivq_f32(a, b); }
  MOMA_VM_INLINE static F fma(F a, F b, F c) { return vfmaq_f32(c, a, b); }
  MOMA_VM_INLINE static F fnma(F a, F b, F c) { return vfmsq_f32(c, a, b); }
  MOMA_VM_INLINE static F min(F a, F b) { return vbslq_f32(vcltq_f32(a, b), a, b); }
  MOMA_VM_INLINE static F max(F a, F b) { return vbslq_f32(vcgtq_f32(a, b), a, b); }
  MOMA_VM_INLINE static F round(F a) { return vrndnq_f32(a); }
  MOMA_VM_INLINE static M lt(F a, F b) { return vcltq_f32(a, b); }
  MOMA_VM_INLINE static M gt(F a, F b) { return vcgtq_f32(a, b); }
  MOMA_VM_INLINE static M ge(F a, F b) { return vcgeq_f32(a, b); }
  MOMA_VM_INLINE static M eq(F a, F b) { return vceqq_f32(a, b); }
  // Unordered: neither a == a nor b == b holds for a NaN lane.
  MOMA_VM_INLINE static M unord(F a, F b) { return vmvnq_u32(vandq_u32(vceqq_f32(a, a), vceqq_f32(b, b))); }
  MOMA_VM_INLINE static M mask_or(M a, M b) { return vorrq_u32(a, b); }
  MOMA_VM_INLINE static bool mask_any(M a) { return vmaxvq_u32(a) != 0; }
  MOMA_VM_INLINE static F select(M m, F a, F b) { return vbslq_f32(m, a, b); }
  MOMA_VM_INLINE static F abs(F a) { return vabsq_f32(a); }
  MOMA_VM_INLINE static F copysign(F mag, F sgn) { return vbslq_f32(vdupq_n_u32(0x80000000u), sgn, mag); }
  MOMA_VM_INLINE static I ibits(F a) { return vreinterpretq_s32_f32(a); }
  MOMA_VM_INLINE static F bits(I a) { return vreinterpretq_f32_s32(a); }
  MOMA_VM_INLINE static I iand(I a, I b) { return vandq_s32(a, b); }
  MOMA_VM_INLINE static I ior(I a, I b) { return vorrq_s32(a, b); }
  MOMA_VM_INLINE static I srli23(I a) {
    return vreinterpretq_s32_u32(vshrq_n_u32(vreinterpretq_u32_s32(a), 23));
  }
  MOMA_VM_INLINE static F cvt_i2f(I a) { return vcvtq_f32_s32(a); }
  MOMA_VM_INLINE static F scale2(F p, F n) {
    const I ni = vcvtnq_s32_f32(n);
    const I half = vshrq_n_s32(ni, 1);
    const I rest = vsubq_s32(ni, half);
    const I bias = vdupq_n_s32(127);
    const F s1 = vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(rest, bias), 23));
    const F s2 = vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(half, bias), 23));
    return vmulq_f32(vmulq_f32(p, s1), s2);
  }

  MOMA_VM_INLINE static D widen_lo(F v) { return vcvt_f64_f32(vget_low_f32(v)); }
  MOMA_VM_INLINE static D widen_hi(F v) { return vcvt_high_f64_f32(v); }
  MOMA_VM_INLINE static F pack(D lo, D hi) { return vcvt_high_f32_f64(vcvt_f32_f64(lo), hi); }
  MOMA_VM_INLINE static D dset(double v) { return vdupq_n_f64(v); }
  MOMA_VM_INLINE static D dadd(D a, D b) { return vaddq_f64(a, b); }
  MOMA_VM_INLINE static D dsub(D a, D b) { return vsubq_f64(a, b); }
  MOMA_VM_INLINE static D dmul(D a, D b) { return vmulq_f64(a, b); }
  MOMA_VM_INLINE static void dstore(double* p, D v) { vst1q_f64(p, v); }

  // 4 x 4 block of 32-bit elements: trn1 / trn2 on 32-bit lanes pair up rows (0, 1) and (2, 3),
  // then trn1 / trn2 on 64-bit lanes join the halves into the output rows.
  MOMA_VM_INLINE static void transpose(const uint32_t* x, int64_t xs, uint32_t* y, int64_t ys) {
    const uint32x4_t r0 = vld1q_u32(x), r1 = vld1q_u32(x + xs), r2 = vld1q_u32(x + 2 * xs),
                     r3 = vld1q_u32(x + 3 * xs);
    const uint64x2_t t0 = vreinterpretq_u64_u32(vtrn1q_u32(r0, r1));
    const uint64x2_t t1 = vreinterpretq_u64_u32(vtrn2q_u32(r0, r1));
    const uint64x2_t t2 = vreinterpretq_u64_u32(vtrn1q_u32(r2, r3));
    const uint64x2_t t3 = vreinterpretq_u64_u32(vtrn2q_u32(r2, r3));
    vst1q_u32(y, vreinterpretq_u32_u64(vtrn1q_u64(t0, t2)));
    vst1q_u32(y + ys, vreinterpretq_u32_u64(vtrn1q_u64(t1, t3)));
    vst1q_u32(y + 2 * ys, vreinterpretq_u32_u64(vtrn2q_u64(t0, t2)));
    vst1q_u32(y + 3 * ys, vreinterpretq_u32_u64(vtrn2q_u64(t1, t3)));
  }
};

}  // namespace
}  // namespace moma::cpu::vmath

#include "vmath_simd.h"

namespace moma::cpu::vmath {

const Kernels* kernels_neon() {
  static const Kernels k = Simd<Neon>::table("neon");
  return &k;
}

}  // namespace moma::cpu::vmath

#else

namespace moma::cpu::vmath {
const Kernels* kernels_neon() { return nullptr; }
}  // namespace moma::cpu::vmath

#endif
