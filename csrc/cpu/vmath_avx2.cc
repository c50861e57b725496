// AVX2 + FMA vector traits for vmath_simd.h: 8 float lanes in a ymm register, lane masks as
// all-ones / all-zeros float vectors (blendv selects on the sign bit). AVX2 has no vscalefps, so
// p * 2^n is done as (p * 2^(n - n/2)) * 2^(n/2) with both factors built as normal floats from
// the integer exponent (n in [-151, 128]); the first product is exact, so only the second rounds,
// which gives the correct overflow to inf and gradual underflow. bf16 stores pack the rounded
// 32-bit lanes with packusdw (values fit in 16 bits) and fix the lane order with vpermq.
#include "vmath.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#define MOMA_VM_TARGET_ISA "avx2,fma"
#define MOMA_VM_INLINE __attribute__((target(MOMA_VM_TARGET_ISA), always_inline))
#define MOMA_VM_ENTRY __attribute__((target(MOMA_VM_TARGET_ISA)))

namespace moma::cpu::vmath {
namespace {

struct Avx2 {
  using F = __m256;
  using I = __m256i;
  using M = __m256;
  using D = __m256d;
  static constexpr int N = 8;

  MOMA_VM_INLINE static F load(const float* p) { return _mm256_loadu_ps(p); }
  MOMA_VM_INLINE static void store(float* p, F v) { _mm256_storeu_ps(p, v); }
  MOMA_VM_INLINE static F load_bf16(const uint16_t* p) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
  MOMA_VM_INLINE static void store_bf16(uint16_t* p, F v) {
    const I u = _mm256_castps_si256(v);
    const I lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    const I bias = _mm256_add_epi32(_mm256_set1_epi32(0x7fff), lsb);
    const I rounded = _mm256_srli_epi32(_mm256_add_epi32(u, bias), 16);
    // |u| > inf bits, compared as signed ints (both sides are non-negative)
    const I nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff)),
                                     _mm256_set1_epi32(0x7f800000));
    const I quiet = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40));
    const I r = _mm256_blendv_epi8(rounded, quiet, nan);
    const I packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(packed));
  }

  MOMA_VM_INLINE static F set(float v) { return _mm256_set1_ps(v); }
  MOMA_VM_INLINE static I seti(int32_t v) { return _mm256_set1_epi32(v); }
  MOMA_VM_INLINE static F add(F a, F b) { return _mm256_add_ps(a, b); }
  MOMA_VM_INLINE static F sub(F a, F b) { return _mm256_sub_ps(a, b); }
  MOMA_VM_INLINE static F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  MOMA_VM_INLINE static F div(F a, F b) { return _mm256_div_ps(a, b); }
  MOMA_VM_INLINE static F fma(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  MOMA_VM_INLINE static F fnma(F a, F b, F c) { return _mm256_fnmadd_ps(a, b, c); }
  MOMA_VM_INLINE static F min(F a, F b) { return _mm256_min_ps(a, b); }
  MOMA_VM_INLINE static F max(F a, F b) { return _mm256_max_ps(a, b); }
  MOMA_VM_INLINE static F round(F a) {
    return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  MOMA_VM_INLINE static M lt(F a, F b) { return _mm256_cmp_ps(a, b, _CMP_LT_OQ); }
  MOMA_VM_INLINE static M gt(F a, F b) { return _mm256_cmp_ps(a, b, _CMP_GT_OQ); }
  MOMA_VM_INLINE static M ge(F a, F b) { return _mm256_cmp_ps(a, b, _CMP_GE_OQ); }
  MOMA_VM_INLINE static M eq(F a, F b) { return _mm256_cmp_ps(a, b, _CMP_EQ_OQ); }
  MOMA_VM_INLINE static M unord(F a, F b) { return _mm256_cmp_ps(a, b, _CMP_UNORD_Q); }
  MOMA_VM_INLINE static M mask_or(M a, M b) { return _mm256_or_ps(a, b); }
  MOMA_VM_INLINE static bool mask_any(M a) { return _mm256_movemask_ps(a) != 0; }
  MOMA_VM_INLINE static F select(M m, F a, F b) { return _mm256_blendv_ps(b, a, m); }
  MOMA_VM_INLINE static F abs(F a) {
    return _mm256_and_ps(a, _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff)));
  }
  MOMA_VM_INLINE static F copysign(F mag, F sgn) {
    const F sign = _mm256_castsi256_ps(_mm256_set1_epi32(static_cast<int32_t>(0x80000000u)));
    return _mm256_or_ps(_mm256_andnot_ps(sign, mag), _mm256_and_ps(sign, sgn));
  }
  MOMA_VM_INLINE static I ibits(F a) { return _mm256_castps_si256(a); }
  MOMA_VM_INLINE static F bits(I a) { return _mm256_castsi256_ps(a); }
  MOMA_VM_INLINE static I iand(I a, I b) { return _mm256_and_si256(a, b); }
  MOMA_VM_INLINE static I ior(I a, I b) { return _mm256_or_si256(a, b); }
  MOMA_VM_INLINE static I srli23(I a) { return _mm256_srli_epi32(a, 23); }
  MOMA_VM_INLINE static F cvt_i2f(I a) { return _mm256_cvtepi32_ps(a); }
  MOMA_VM_INLINE static F scale2(F p, F n) {
    const I ni = _mm256_cvtps_epi32(n);
    const I half = _mm256_srai_epi32(ni, 1);
    const I rest = _mm256_sub_epi32(ni, half);
    const I bias = _mm256_set1_epi32(127);
    const F s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(rest, bias), 23));
    const F s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(half, bias), 23));
    return _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
  }

  MOMA_VM_INLINE static D widen_lo(F v) { return _mm256_cvtps_pd(_mm256_castps256_ps128(v)); }
  MOMA_VM_INLINE static D widen_hi(F v) { return _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)); }
  MOMA_VM_INLINE static F pack(D lo, D hi) {
    return _mm256_insertf128_ps(_mm256_castps128_ps256(_mm256_cvtpd_ps(lo)), _mm256_cvtpd_ps(hi),
                                1);
  }
  MOMA_VM_INLINE static D dset(double v) { return _mm256_set1_pd(v); }
  MOMA_VM_INLINE static D dadd(D a, D b) { return _mm256_add_pd(a, b); }
  MOMA_VM_INLINE static D dsub(D a, D b) { return _mm256_sub_pd(a, b); }
  MOMA_VM_INLINE static D dmul(D a, D b) { return _mm256_mul_pd(a, b); }
  MOMA_VM_INLINE static void dstore(double* p, D v) { _mm256_storeu_pd(p, v); }

  // 8 x 8 block of 32-bit elements: ps unpacks and shuffles leave u[k] (k < 4) holding rows 0..3
  // of column k in its low 128-bit lane and of column 4 + k in its high lane, u[4 + k] the same
  // for rows 4..7; vperm2f128 pairs the lanes up into output rows k and 4 + k.
  MOMA_VM_INLINE static void transpose(const uint32_t* x, int64_t xs, uint32_t* y, int64_t ys) {
    __m256 r[8], t[8], u[8];
    for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(reinterpret_cast<const float*>(x + i * xs));
    for (int i = 0; i < 4; ++i) {
      t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
      t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int h = 0; h < 2; ++h) {
      const __m256* th = t + 4 * h;
      u[4 * h + 0] = _mm256_shuffle_ps(th[0], th[2], 0x44);
      u[4 * h + 1] = _mm256_shuffle_ps(th[0], th[2], 0xee);
      u[4 * h + 2] = _mm256_shuffle_ps(th[1], th[3], 0x44);
      u[4 * h + 3] = _mm256_shuffle_ps(th[1], th[3], 0xee);
    }
    for (int k = 0; k < 4; ++k) {
      _mm256_storeu_ps(reinterpret_cast<float*>(y + k * ys),
                       _mm256_permute2f128_ps(u[k], u[4 + k], 0x20));
      _mm256_storeu_ps(reinterpret_cast<float*>(y + (4 + k) * ys),
                       _mm256_permute2f128_ps(u[k], u[4 + k], 0x31));
    }
  }
};

}  // namespace
}  // namespace moma::cpu::vmath

#include "vmath_simd.h"

namespace moma::cpu::vmath {

const Kernels* kernels_avx2() {
  static const Kernels k = Simd<Avx2>::table("avx2");
  return &k;
}

}  // namespace moma::cpu::vmath

#else

namespace moma::cpu::vmath {
const Kernels* kernels_avx2() { return nullptr; }
}  // namespace moma::cpu::vmath

#endif
