// AVX-512 (F, BW, DQ) vector traits for vmath_simd.h: 16 float lanes in a zmm register, lane
// masks in k registers. Scaling by 2^n uses vscalefps, which rounds once and so overflows to inf
// and underflows through subnormals exactly like the correctly rounded product. bf16 stores
// narrow the rounded 32-bit lanes with vpmovdw. Functions carry the target attribute, so this
// file builds without -march and its code only runs after vector_kernels() checked the CPU.
#include "vmath.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#define MOMA_VM_TARGET_ISA "avx512f,avx512bw,avx512dq,avx2,fma"
#define MOMA_VM_INLINE __attribute__((target(MOMA_VM_TARGET_ISA), always_inline))
#define MOMA_VM_ENTRY __attribute__((target(MOMA_VM_TARGET_ISA)))

namespace moma::cpu::vmath {
namespace {

struct Avx512 {
  using F = __m512;
  using I = __m512i;
  using M = __mmask16;
  using D = __m512d;
  static constexpr int N = 16;

  MOMA_VM_INLINE static F load(const float* p) { return _mm512_loadu_ps(p); }
  MOMA_VM_INLINE static void store(float* p, F v) { _mm512_storeu_ps(p, v); }
  MOMA_VM_INLINE static F load_bf16(const uint16_t* p) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
  MOMA_VM_INLINE static void store_bf16(uint16_t* p, F v) {
    const I u = _mm512_castps_si512(v);
    const I lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    const I bias = _mm512_add_epi32(_mm512_set1_epi32(0x7fff), lsb);
    const I rounded = _mm512_srli_epi32(_mm512_add_epi32(u, bias), 16);
    const M nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
                                          _mm512_set1_epi32(0x7f800000));
    const I quiet = _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
    const I r = _mm512_mask_blend_epi32(nan, rounded, quiet);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(r));
  }

  MOMA_VM_INLINE static F set(float v) { return _mm512_set1_ps(v); }
  MOMA_VM_INLINE static I seti(int32_t v) { return _mm512_set1_epi32(v); }
  MOMA_VM_INLINE static F add(F a, F b) { return _mm512_add_ps(a, b); }
  MOMA_VM_INLINE static F sub(F a, F b) { return _mm512_sub_ps(a, b); }
  MOMA_VM_INLINE static F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  MOMA_VM_INLINE static F div(F a, F b) { return _mm512_div_ps(a, b); }
  MOMA_VM_INLINE static F fma(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  MOMA_VM_INLINE static F fnma(F a, F b, F c) { return _mm512_fnmadd_ps(a, b, c); }
  MOMA_VM_INLINE static F min(F a, F b) { return _mm512_min_ps(a, b); }
  MOMA_VM_INLINE static F max(F a, F b) { return _mm512_max_ps(a, b); }
  MOMA_VM_INLINE static F round(F a) {
    return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  MOMA_VM_INLINE static M lt(F a, F b) { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ); }
  MOMA_VM_INLINE static M gt(F a, F b) { return _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ); }
  MOMA_VM_INLINE static M ge(F a, F b) { return _mm512_cmp_ps_mask(a, b, _CMP_GE_OQ); }
  MOMA_VM_INLINE static M eq(F a, F b) { return _mm512_cmp_ps_mask(a, b, _CMP_EQ_OQ); }
  MOMA_VM_INLINE static M unord(F a, F b) { return _mm512_cmp_ps_mask(a, b, _CMP_UNORD_Q); }
  MOMA_VM_INLINE static M mask_or(M a, M b) { return static_cast<M>(a | b); }
  MOMA_VM_INLINE static bool mask_any(M a) { return a != 0; }
  MOMA_VM_INLINE static F select(M m, F a, F b) { return _mm512_mask_blend_ps(m, b, a); }
  MOMA_VM_INLINE static F abs(F a) { return _mm512_abs_ps(a); }
  MOMA_VM_INLINE static F copysign(F mag, F sgn) {
    // bit-select (imm 0xca: a ? b : c): the magnitude bits from mag, the sign bit from sgn
    return _mm512_castsi512_ps(_mm512_ternarylogic_epi32(
        _mm512_set1_epi32(0x7fffffff), _mm512_castps_si512(mag), _mm512_castps_si512(sgn), 0xca));
  }
  MOMA_VM_INLINE static I ibits(F a) { return _mm512_castps_si512(a); }
  MOMA_VM_INLINE static F bits(I a) { return _mm512_castsi512_ps(a); }
  MOMA_VM_INLINE static I iand(I a, I b) { return _mm512_and_si512(a, b); }
  MOMA_VM_INLINE static I ior(I a, I b) { return _mm512_or_si512(a, b); }
  MOMA_VM_INLINE static I srli23(I a) { return _mm512_srli_epi32(a, 23); }
  MOMA_VM_INLINE static F cvt_i2f(I a) { return _mm512_cvtepi32_ps(a); }
  MOMA_VM_INLINE static F scale2(F p, F n) { return _mm512_scalef_ps(p, n); }

  MOMA_VM_INLINE static D widen_lo(F v) { return _mm512_cvtps_pd(_mm512_castps512_ps256(v)); }
  MOMA_VM_INLINE static D widen_hi(F v) {
    return _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
  }
  MOMA_VM_INLINE static F pack(D lo, D hi) {
    return _mm512_insertf32x8(_mm512_castps256_ps512(_mm512_cvtpd_ps(lo)), _mm512_cvtpd_ps(hi), 1);
  }
  MOMA_VM_INLINE static D dset(double v) { return _mm512_set1_pd(v); }
  MOMA_VM_INLINE static D dadd(D a, D b) { return _mm512_add_pd(a, b); }
  MOMA_VM_INLINE static D dsub(D a, D b) { return _mm512_sub_pd(a, b); }
  MOMA_VM_INLINE static D dmul(D a, D b) { return _mm512_mul_pd(a, b); }
  MOMA_VM_INLINE static void dstore(double* p, D v) { _mm512_storeu_pd(p, v); }

  // 16 x 16 block of 32-bit elements. After the ps / pd unpacks, v[g][k] holds, in its 128-bit
  // lane L, rows 4g .. 4g+3 of column 4L + k; two rounds of 128-bit lane shuffles then gather
  // lane L of v[0..3][k] into output row 4L + k.
  MOMA_VM_INLINE static void transpose(const uint32_t* x, int64_t xs, uint32_t* y, int64_t ys) {
    __m512 r[16], t[16], v[4][4];
    for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(x + i * xs);
    for (int i = 0; i < 8; ++i) {
      t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
      t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int g = 0; g < 4; ++g) {
      const __m512d a = _mm512_castps_pd(t[4 * g]), b = _mm512_castps_pd(t[4 * g + 2]);
      const __m512d c = _mm512_castps_pd(t[4 * g + 1]), d = _mm512_castps_pd(t[4 * g + 3]);
      v[g][0] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
      v[g][1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
      v[g][2] = _mm512_castpd_ps(_mm512_unpacklo_pd(c, d));
      v[g][3] = _mm512_castpd_ps(_mm512_unpackhi_pd(c, d));
    }
    for (int k = 0; k < 4; ++k) {
      const __m512 e01 = _mm512_shuffle_f32x4(v[0][k], v[1][k], 0x88);  // lanes 0, 2
      const __m512 o01 = _mm512_shuffle_f32x4(v[0][k], v[1][k], 0xdd);  // lanes 1, 3
      const __m512 e23 = _mm512_shuffle_f32x4(v[2][k], v[3][k], 0x88);
      const __m512 o23 = _mm512_shuffle_f32x4(v[2][k], v[3][k], 0xdd);
      _mm512_storeu_ps(y + k * ys, _mm512_shuffle_f32x4(e01, e23, 0x88));
      _mm512_storeu_ps(y + (4 + k) * ys, _mm512_shuffle_f32x4(o01, o23, 0x88));
      _mm512_storeu_ps(y + (8 + k) * ys, _mm512_shuffle_f32x4(e01, e23, 0xdd));
      _mm512_storeu_ps(y + (12 + k) * ys, _mm512_shuffle_f32x4(o01, o23, 0xdd));
    }
  }
};

}  // namespace
}  // namespace moma::cpu::vmath

#include "vmath_simd.h"

namespace moma::cpu::vmath {

const Kernels* kernels_avx512() {
  static const Kernels k = Simd<Avx512>::table("avx512");
  return &k;
}

}  // namespace moma::cpu::vmath

#else

namespace moma::cpu::vmath {
const Kernels* kernels_avx512() { return nullptr; }
}  // namespace moma::cpu::vmath

#endif
