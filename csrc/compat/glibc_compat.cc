// glibc floor of the addon: the built moma.node needs at most GLIBC_2.28 (RHEL/Rocky 8, Debian 10,
// Ubuntu 20.04 and everything newer), whatever glibc the build machine has. Linked into the addon
// only, by cmake/glibc_floor.cmake, on Linux with glibc on x86-64 and aarch64.
//
// A symbol reference takes its version at the final link, from the build machine's libc: on
// Debian 12 (glibc 2.36) that binds pthread_create to GLIBC_2.34, log to GLIBC_2.29, and so on,
// also for the references inside the static libstdc++.a, libgcc_eh.a and libcudart_static.a, whose
// undefined symbols carry no version until then. Two cases:
//   1. The function also exists at an old version (glibc keeps every old version for old
//      binaries). Each is listed in glibc_rebind.def; the linker's --wrap=NAME turns every
//      reference to NAME into __wrap_NAME, defined here as a hidden one-instruction trampoline that
//      jumps to NAME@<old version> (bound with .symver). The jump keeps the arguments, the return
//      value and variadic calls intact, so no signature is needed, and leaves the caller's return
//      address in place for the functions that look at their caller (dlopen, dlsym(RTLD_NEXT)).
//   2. The symbol is newer than 2.28 and has no old version: _dl_find_object (2.35, the unwinder
//      of GCC 12's libgcc_eh looks up the unwind tables of every frame with it), arc4random (2.36,
//      std::random_device of GCC 12's libstdc++) and __libc_single_threaded (2.32, libstdc++'s
//      reference counts). They are defined here, hidden, with glibc's documented behaviour; a
//      definition in the link wins over the shared libc's, and hidden keeps it out of the
//      addon's exports.
// The test test/glibc_floor.test.ts reads the built addon's needed versions with objdump -T and
// names any symbol above the floor, so a new one (a new toolchain, a new call) shows up there.
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <link.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/random.h>
#include <unistd.h>

#if !defined(__linux__) || !defined(__GLIBC__) || !(defined(__x86_64__) || defined(__aarch64__))
#error "glibc_compat.cc is for Linux with glibc on x86-64 or aarch64 (cmake/glibc_floor.cmake)"
#endif

// ---- 1. References bound to an older version: trampolines for --wrap ----------------------------
#if defined(__x86_64__)
#define MOMA_GLIBC_OLD_VERSION(x86_64_version, aarch64_version) x86_64_version
#if defined(__CET__) && (__CET__ & 1)
#define MOMA_GLIBC_LANDING_PAD "\tendbr64\n"
#else
#define MOMA_GLIBC_LANDING_PAD ""
#endif
#define MOMA_GLIBC_TAIL_CALL(target) "\tjmp " target "@PLT\n"
#else
#define MOMA_GLIBC_OLD_VERSION(x86_64_version, aarch64_version) aarch64_version
#if defined(__ARM_FEATURE_BTI_DEFAULT)
#define MOMA_GLIBC_LANDING_PAD "\thint #34\n"  // bti c
#else
#define MOMA_GLIBC_LANDING_PAD ""
#endif
#define MOMA_GLIBC_TAIL_CALL(target) "\tb " target "\n"
#endif

#define MOMA_GLIBC_REBIND(name, x86_64_version, aarch64_version)                          \
  __asm__(".pushsection .text\n"                                                           \
          ".globl __wrap_" #name "\n"                                                      \
          ".hidden __wrap_" #name "\n"                                                     \
          ".type __wrap_" #name ", %function\n"                                            \
          ".p2align 4\n"                                                                   \
          "__wrap_" #name ":\n" MOMA_GLIBC_LANDING_PAD                                     \
          MOMA_GLIBC_TAIL_CALL("moma_glibc_old_" #name)                                    \
          ".size __wrap_" #name ", .-__wrap_" #name "\n"                                   \
          ".symver moma_glibc_old_" #name ", " #name "@"                                   \
          MOMA_GLIBC_OLD_VERSION(x86_64_version, aarch64_version) "\n"                     \
          ".popsection\n");
#include "glibc_rebind.def"
#undef MOMA_GLIBC_REBIND

// ---- 2. Symbols newer than the floor, defined here ----------------------------------------------
namespace {

#if __GLIBC_PREREQ(2, 36)
[[noreturn]] void no_entropy() {
  fputs("moma: cannot get entropy for arc4random (getrandom and /dev/urandom both failed)\n", stderr);
  abort();
}

// Fills `size` bytes from the kernel's random source: getrandom (Linux 3.17+), /dev/urandom where
// the kernel has no getrandom. Like glibc's arc4random, it never returns short: no entropy aborts.
void fill_random(unsigned char* out, size_t size) {
  size_t filled = 0;
  while (filled < size) {
    const ssize_t n = getrandom(out + filled, size - filled, 0);
    if (n > 0) {
      filled += static_cast<size_t>(n);
    } else if (n < 0 && errno == ENOSYS) {
      break;
    } else if (!(n < 0 && errno == EINTR)) {
      no_entropy();
    }
  }
  if (filled == size) return;
  const int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
  if (fd < 0) no_entropy();
  while (filled < size) {
    const ssize_t n = read(fd, out + filled, size - filled);
    if (n > 0) {
      filled += static_cast<size_t>(n);
    } else if (!(n < 0 && errno == EINTR)) {
      close(fd);
      no_entropy();
    }
  }
  close(fd);
}
#endif

#if __GLIBC_PREREQ(2, 35)
struct ObjectSearch {
  uintptr_t address;
  uintptr_t map_start;
  uintptr_t map_end;
  void* eh_frame;
};

// dl_iterate_phdr callback: the object whose loaded segments span the address. Its extent is that of
// its PT_LOAD segments (lowest start to highest end, as glibc's l_map_start / l_map_end), its unwind
// table the PT_GNU_EH_FRAME segment. Returning 1 stops the iteration.
int find_object_containing(dl_phdr_info* info, size_t, void* data) {
  ObjectSearch* search = static_cast<ObjectSearch*>(data);
  uintptr_t low = UINTPTR_MAX;
  uintptr_t high = 0;
  void* eh_frame = nullptr;
  for (ElfW(Half) i = 0; i < info->dlpi_phnum; ++i) {
    const ElfW(Phdr)& segment = info->dlpi_phdr[i];
    const uintptr_t start = info->dlpi_addr + segment.p_vaddr;
    if (segment.p_type == PT_LOAD) {
      if (start < low) low = start;
      if (start + segment.p_memsz > high) high = start + segment.p_memsz;
    } else if (segment.p_type == PT_GNU_EH_FRAME) {
      eh_frame = reinterpret_cast<void*>(start);
    }
  }
  if (search->address < low || search->address >= high) return 0;
  search->map_start = low;
  search->map_end = high;
  search->eh_frame = eh_frame;
  return 1;
}
#endif

}  // namespace

#if __GLIBC_PREREQ(2, 32)
// libstdc++ skips atomic instructions on reference counts while this is nonzero; 0 ("threads may
// exist") is always correct, only slower for a process that never starts a thread.
__asm__(".hidden __libc_single_threaded");
extern "C" char __libc_single_threaded;
char __libc_single_threaded = 0;
#endif

#if __GLIBC_PREREQ(2, 36)
// glibc 2.36's arc4random: a uniformly distributed 32-bit value from the kernel's cryptographic
// random source; it cannot fail (no entropy terminates the process) and leaves errno as it was.
__asm__(".hidden arc4random");
extern "C" uint32_t arc4random(void) noexcept {
  const int saved_errno = errno;
  uint32_t value;
  fill_random(reinterpret_cast<unsigned char*>(&value), sizeof value);
  errno = saved_errno;
  return value;
}
#endif

#if __GLIBC_PREREQ(2, 35)
// glibc 2.35's _dl_find_object (manual, "Dynamic Linker Introspection"): for an address inside a
// loaded object, 0 and *result filled in (dlfo_flags 0; dlfo_map_start / dlfo_map_end the extent
// of the object's mapping, which contains the address; dlfo_link_map its link map; dlfo_eh_frame
// the address of its PT_GNU_EH_FRAME segment, or null); -1 for an address in no object. Built on
// dl_iterate_phdr and dladdr1, the way libgcc found unwind tables before glibc 2.35.
__asm__(".hidden _dl_find_object");
extern "C" int _dl_find_object(void* address, dl_find_object* result) noexcept {
  ObjectSearch search = {reinterpret_cast<uintptr_t>(address), 0, 0, nullptr};
  if (dl_iterate_phdr(find_object_containing, &search) == 0) return -1;
  Dl_info symbol;
  link_map* map = nullptr;
  if (dladdr1(address, &symbol, reinterpret_cast<void**>(&map), RTLD_DL_LINKMAP) == 0) map = nullptr;
  result->dlfo_flags = 0;
  result->dlfo_map_start = reinterpret_cast<void*>(search.map_start);
  result->dlfo_map_end = reinterpret_cast<void*>(search.map_end);
  result->dlfo_link_map = map;
  result->dlfo_eh_frame = search.eh_frame;
  return 0;
}
#endif
