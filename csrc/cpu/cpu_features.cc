// Run-time CPU feature queries for the GEMM paths (cpu_features.h): CPUID and XGETBV for the
// instruction sets, and Linux's arch_prctl permission request for AMX tile data.
#include "cpu_features.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif
#define MOMA_CPU_X86 1
#endif

namespace moma::cpu {
namespace {

#ifdef MOMA_CPU_X86
// XCR0: the state components the OS saves on context switches.
unsigned long long read_xcr0() {
  unsigned int eax, edx;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (static_cast<unsigned long long>(edx) << 32) | eax;
}

const char* amx_unusable_reason() {
  unsigned int eax, ebx, ecx, edx;
  if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return "CPUID leaf 7 is missing";
  const bool amx_bf16 = (edx >> 22) & 1u, amx_tile = (edx >> 24) & 1u;
  if (!amx_tile || !amx_bf16) return "the CPU has no AMX-TILE / AMX-BF16 (CPUID leaf 7)";
  if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx) || !((ecx >> 27) & 1u)) return "the OS has not enabled XSAVE";
  const unsigned long long xtile = (1ull << 17) | (1ull << 18);
  if ((read_xcr0() & xtile) != xtile) return "the OS does not save AMX tile state (XCR0 bits 17-18)";
#if defined(__linux__)
  constexpr long kArchReqXcompPerm = 0x1023;  // ARCH_REQ_XCOMP_PERM (asm/prctl.h)
  constexpr long kXfeatureXtiledata = 18;     // XFEATURE_XTILEDATA
  if (syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) != 0)
    return "Linux refused the AMX tile-data permission (arch_prctl ARCH_REQ_XCOMP_PERM)";
  return nullptr;
#else
  return "AMX tile-data permission is only requested on Linux";
#endif
}
#endif

}  // namespace

bool cpu_has_avx512bf16() {
#ifdef MOMA_CPU_X86
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bf16");
#else
  return false;
#endif
}

bool cpu_amx_bf16_usable(const char** why) {
#ifdef MOMA_CPU_X86
  static const char* const reason = amx_unusable_reason();
#else
  static const char* const reason = "not an x86-64 CPU";
#endif
  if (why) *why = reason;
  return reason == nullptr;
}

}  // namespace moma::cpu
