// AMX GEMM micro-kernel (bf16 x bf16, float32 accumulation): a 32 x 32 block of C in four tile
// registers, fed by tdpbf16ps. Built with -mamx-tile -mamx-bf16 (CMakeLists.txt) and the matching
// target attributes (so builds without per-file flags compile it too); chosen only when
// cpu_amx_bf16_usable() (CPUID AMX-TILE + AMX-BF16, OS support, Linux tile-data permission).
//
// Tile registers (palette 1, each up to 16 rows x 64 bytes):
//   tmm0..tmm3  C blocks (0,0) (0,16) (16,0) (16,16): 16 rows x 16 float32;
//   tmm4, tmm5  A rows 0-15 and 16-31: 16 rows x 32 bf16 (32 consecutive k of one row), loaded
//               from the Rows32 A panel (a[(k / 32) * 32 * 32 + i * 32 + k % 32], row stride 64 B);
//   tmm6, tmm7  B columns 0-15 and 16-31: 16 rows (k pairs) x 16 columns x 2 bf16, loaded from the
//               VNNI B panel (b[(k / 2) * 64 + j * 2 + k % 2], row stride 128 B, second at +64 B).
// tdpbf16ps C, A, B: C[m][n] += sum over the 16 pairs p of A[m][2p] B[p][2n] + A[m][2p+1] B[p][2n+1]
// (products exact in float32, sums rounded, denormals flushed), i.e. a 16 x 16 x 32 product,
// 16,384 FLOPs. One 32-deep k block is 4 tile loads (4 KiB) and 4 tdpbf16ps (65,536 FLOPs): each
// A and B tile is used twice. Peak: 1,024 bf16 multiply-adds per cycle per core (one tdpbf16ps
// per 16 cycles), 2,048 FLOPs per cycle.
// Blocking for a 2 MiB L2 per core (Sapphire Rapids), in k:
//   KC = 1024: one micro-kernel call is 32 x 32 x 1024 (about 1,000 TMUL cycles), so the C tile
//              round trip (4 tile stores, the alpha / beta store through AVX-512) stays small;
//              its A and B micro-panels (64 KiB each) stream from L2.
//   MC = 256: the A block (MC x KC bf16 = 512 KiB) stays in L2 across the B micro-panels.
//   NC = 512: the packed B block (KC x NC bf16 = 1 MiB) sits in L2 next to the A block.
// Tile configuration is per thread: the driver calls begin (ldtilecfg) before a thread's first
// micro-kernel call of a work item and end (tilerelease) after its last one.
// This file has been compiled but not run: the machine it was written on has no AMX.
#include <cstdint>

#include "gemm_kernels.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#define MOMA_AMX __attribute__((target("amx-tile,amx-bf16")))
#define MOMA_AVX512 __attribute__((target("avx512f,fma")))

namespace moma::cpu {
namespace {

constexpr int kMR = 32;
constexpr int kNR = 32;
constexpr int kTileK = 32;  // bf16 of k per A tile row

// The LDTILECFG operand (64 bytes): palette 1, eight tiles of 16 rows x 64 bytes.
struct alignas(64) TileConfig {
  uint8_t palette_id;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};
static_assert(sizeof(TileConfig) == 64, "LDTILECFG reads 64 bytes");

constexpr TileConfig kTileConfig = {
    1, 0, {}, {64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0},
    {16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0}};

MOMA_AMX void configure_tiles() { _tile_loadconfig(&kTileConfig); }
MOMA_AMX void release_tiles() { _tile_release(); }

// C rows [0, mr) x columns [0, nr) = alpha * acc + beta * C (C not read when beta == 0); acc is
// 32 x 32 float32, row stride 32.
MOMA_AVX512 void store_block(const float* acc, float* c, int64_t ldc, int64_t mr, int64_t nr, float alpha,
                             float beta) {
  const __mmask16 m0 = nr >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << nr) - 1);
  const __mmask16 m1 = nr >= 32 ? __mmask16(0xFFFF)
                       : nr > 16 ? __mmask16((1u << (nr - 16)) - 1)
                                 : __mmask16(0);
  const __m512 valpha = _mm512_set1_ps(alpha), vbeta = _mm512_set1_ps(beta);
  for (int64_t i = 0; i < mr; ++i) {
    float* row = c + i * ldc;
    __m512 r0 = _mm512_mul_ps(valpha, _mm512_load_ps(acc + i * kNR));
    __m512 r1 = _mm512_mul_ps(valpha, _mm512_load_ps(acc + i * kNR + 16));
    if (beta != 0.0f) {
      r0 = _mm512_fmadd_ps(vbeta, _mm512_maskz_loadu_ps(m0, row), r0);
      r1 = _mm512_fmadd_ps(vbeta, _mm512_maskz_loadu_ps(m1, row + 16), r1);
    }
    _mm512_mask_storeu_ps(row, m0, r0);
    _mm512_mask_storeu_ps(row + 16, m1, r1);
  }
}

MOMA_AMX void micro_amx_32x32(int64_t kd, const uint16_t* a, const uint16_t* b, float* c, int64_t ldc, int64_t mr,
                              int64_t nr, float alpha, float beta) {
  constexpr long kARowBytes = kTileK * 2;  // 64
  constexpr long kBRowBytes = kNR * 2 * 2;  // 128: one k pair of all 32 columns
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  for (int64_t k0 = 0; k0 < kd; k0 += kTileK) {
    const uint16_t* ablk = a + k0 * kMR;         // rows 0-31 of k block k0 / 32
    const uint16_t* bblk = b + (k0 / 2) * kNR * 2;  // pair rows k0 / 2 .. k0 / 2 + 15
    _tile_loadd(4, ablk, kARowBytes);
    _tile_loadd(5, ablk + 16 * kTileK, kARowBytes);
    _tile_loadd(6, bblk, kBRowBytes);
    _tile_loadd(7, bblk + 32, kBRowBytes);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  alignas(64) float acc[kMR * kNR];
  constexpr long kAccRowBytes = kNR * 4;
  _tile_stored(0, acc, kAccRowBytes);
  _tile_stored(1, acc + 16, kAccRowBytes);
  _tile_stored(2, acc + 16 * kNR, kAccRowBytes);
  _tile_stored(3, acc + 16 * kNR + 16, kAccRowBytes);
  store_block(acc, c, ldc, mr, nr, alpha, beta);
}

const GemmKernelBf16 kAmx = {"amx", kMR, kNR, 1024, 256, 512, kTileK, BF16ALayout::Rows32, micro_amx_32x32,
                             configure_tiles, release_tiles};

}  // namespace

const GemmKernelBf16* gemm_kernel_amx() { return &kAmx; }

}  // namespace moma::cpu

#else

namespace moma::cpu {
const GemmKernelBf16* gemm_kernel_amx() { return nullptr; }
}  // namespace moma::cpu

#endif
