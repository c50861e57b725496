# Cross-compiling moma for linux-arm64 (aarch64) on an x86-64 Debian/Ubuntu host with the
# distribution's cross toolchain (apt-get install g++-aarch64-linux-gnu):
#   cmake -S . -B build-arm64 -DCMAKE_TOOLCHAIN_FILE=cmake/toolchain-aarch64.cmake -DMOMA_CUDA=OFF ...
# scripts/build-arm64.sh drives it. The compilers default to aarch64-linux-gnu-gcc / -g++ on PATH;
# MOMA_AARCH64_PREFIX overrides the prefix (e.g. aarch64-linux-gnu-  ->  aarch64-none-linux-gnu-).
# Libraries and packages are looked up in the target sysroot only (Debian installs the aarch64
# libc and libstdc++ under /usr/aarch64-linux-gnu), never in the host's x86-64 folders; programs
# (cmake helpers, node for the header paths) come from the host.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

if(DEFINED ENV{MOMA_AARCH64_PREFIX} AND NOT "$ENV{MOMA_AARCH64_PREFIX}" STREQUAL "")
  set(MOMA_AARCH64_PREFIX "$ENV{MOMA_AARCH64_PREFIX}")
else()
  set(MOMA_AARCH64_PREFIX "aarch64-linux-gnu-")
endif()
set(CMAKE_C_COMPILER ${MOMA_AARCH64_PREFIX}gcc)
set(CMAKE_CXX_COMPILER ${MOMA_AARCH64_PREFIX}g++)

set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

# The binaries run under qemu-user on the build host (scripts/build-arm64.sh, test/arm64.test.ts).
find_program(MOMA_QEMU_AARCH64 qemu-aarch64)
if(MOMA_QEMU_AARCH64)
  set(CMAKE_CROSSCOMPILING_EMULATOR ${MOMA_QEMU_AARCH64} -L /usr/aarch64-linux-gnu)
endif()
