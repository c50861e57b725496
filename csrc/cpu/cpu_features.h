// What this CPU offers the GEMMs, asked once at run time, and which GEMM paths run.
//
// AMX needs three things: the CPU has the tiles (CPUID.(EAX=7,ECX=0):EDX bit 24 AMX-TILE and bit 22
// AMX-BF16), the OS saves them (XCR0 bits 17 XTILECFG and 18 XTILEDATA), and Linux has granted this
// process the dynamically enabled tile-data state (arch_prctl(ARCH_REQ_XCOMP_PERM,
// XFEATURE_XTILEDATA = 18), process-wide; without it the first tile instruction faults).
// AVX-512-BF16 needs CPUID.(EAX=7,ECX=1):EAX bit 5 on top of AVX-512F with the OS saving zmm state
// (the compiler's __builtin_cpu_supports covers both).
#pragma once

namespace moma::cpu {

// True when the AVX-512-BF16 instructions (vdpbf16ps) can run here.
bool cpu_has_avx512bf16();

// True when AMX-TILE and AMX-BF16 are present, enabled by the OS and permitted to this process.
// The first call requests the permission; `why` (optional) receives the reason when false.
bool cpu_amx_bf16_usable(const char** why = nullptr);

// The GEMM path for bf16 x bf16 products ("amx", "avx512bf16", or "none" when such products are
// widened to the float32 path); the float32 path is gemm_isa() (kernels.h). Both follow
// MOMA_CPU_GEMM (gemm.cc) and throw its error when that names an unavailable path.
const char* gemm_bf16_isa();

}  // namespace moma::cpu
