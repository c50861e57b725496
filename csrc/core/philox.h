// Philox4x32-10 counter-based generator (Salmon et al., SC'11), shared bit-for-bit by the CPU and
// CUDA backends: element i of a random op depends only on (seed, offset, i), so the same seed
// gives the same numbers on every device and any thread layout.
//
// Layout: a random op over n elements with generator (seed, offset) uses counter blocks
// offset, offset+1, ... Each block gives four 32-bit words.
//   uniform: element i uses word i%4 of block offset + i/4          -> ceil(n/4) blocks consumed
//   normal:  element i uses words 2*(i%2), 2*(i%2)+1 of block offset + i/2 (Box-Muller in
//            double, rounded to float)                               -> ceil(n/2) blocks consumed
//   gumbel difference: element i uses the open uniforms 2i and 2i+1 (uniform layout)
// The transcendental functions are portable_math.h's, evaluated operation by operation without
// fused multiply-adds, so normals and Gumbel noise are the same bits on the CPU and on CUDA (the
// library log / cos of glibc and CUDA differ in the last double bit now and then).
#pragma once
#include <cstdint>
#include "hostdevice.h"
#include "portable_math.h"

namespace moma {

struct Philox4 {
  uint32_t v[4];
};

MOMA_HD void philox_mulhilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  uint64_t p = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  hi = static_cast<uint32_t>(p >> 32);
  lo = static_cast<uint32_t>(p);
}

// counter = block index (64 bit, low words), key = seed (64 bit).
MOMA_HD Philox4 philox4x32_10(uint64_t counter, uint64_t seed) {
  uint32_t c0 = static_cast<uint32_t>(counter), c1 = static_cast<uint32_t>(counter >> 32);
  uint32_t c2 = 0, c3 = 0;
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    philox_mulhilo(0xD2511F53u, c0, hi0, lo0);
    philox_mulhilo(0xCD9E8D57u, c2, hi1, lo1);
    uint32_t n0 = hi1 ^ c1 ^ k0, n1 = lo1, n2 = hi0 ^ c3 ^ k1, n3 = lo0;
    c0 = n0; c1 = n1; c2 = n2; c3 = n3;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return Philox4{{c0, c1, c2, c3}};
}

// Uniform in (0, 1]: 24 random bits, never 0 (safe for log).
MOMA_HD float philox_word_to_unit(uint32_t w) {
  return static_cast<float>((w >> 8) + 1u) * (1.0f / 16777216.0f);
}

MOMA_HD float philox_uniform(uint64_t seed, uint64_t offset, uint64_t i) {
  Philox4 r = philox4x32_10(offset + i / 4, seed);
  return philox_word_to_unit(r.v[i % 4]);
}

// Uniform in (0, 1) in double: 24 random bits plus one half, never 0 or 1 (Gumbel noise takes
// log(-log(u))). Element i uses word i%4 of block offset + i/4, like philox_uniform.
MOMA_HD double philox_uniform_open(uint64_t seed, uint64_t offset, uint64_t i) {
  Philox4 r = philox4x32_10(offset + i / 4, seed);
  return (static_cast<double>(r.v[i % 4] >> 8) + 0.5) * (1.0 / 16777216.0);
}

// Standard normal via Box-Muller computed in double from two 32-bit words:
// u1 = (w0 + 1) / 2^32 in (0, 1], u2 = w1 / 2^32 in [0, 1), z = sqrt(-2 log u1) cos(2 pi u2).
MOMA_HD float philox_normal(uint64_t seed, uint64_t offset, uint64_t i) {
  Philox4 r = philox4x32_10(offset + i / 2, seed);
  const int lane = static_cast<int>(i % 2);
  const uint32_t w1 = lane == 0 ? r.v[0] : r.v[2], w2 = lane == 0 ? r.v[1] : r.v[3];
  const double u1 = (static_cast<double>(w1) + 1.0) * (1.0 / 4294967296.0);  // exact
  const double u2 = static_cast<double>(w2) * (1.0 / 4294967296.0);          // exact
  const double two_pi = 6.283185307179586;
  const double radius = pmath::sqrt(pmath::mul(-2.0, pmath::log(u1)));
  return static_cast<float>(pmath::mul(radius, pmath::cos(pmath::mul(two_pi, u2))));
}

// Difference of two independent standard Gumbel samples G' - G'' (the router's noise, SPEC §2),
// in double from the open uniforms 2i and 2i + 1: -log(-log u1) + log(-log u2), rounded to float.
MOMA_HD float philox_gumbel_difference(uint64_t seed, uint64_t offset, uint64_t i) {
  const double u1 = philox_uniform_open(seed, offset, 2 * i);
  const double u2 = philox_uniform_open(seed, offset, 2 * i + 1);
  const double g1 = pmath::log(-pmath::log(u1)), g2 = pmath::log(-pmath::log(u2));
  return static_cast<float>(pmath::add(-g1, g2));
}

inline uint64_t philox_blocks_uniform(uint64_t n) { return (n + 3) / 4; }
inline uint64_t philox_blocks_normal(uint64_t n) { return (n + 1) / 2; }

}  // namespace moma
