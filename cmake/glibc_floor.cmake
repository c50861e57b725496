# glibc floor (included by CMakeLists.txt after the addon target): moma_glibc_floor(<target>) makes
# a shared library built on a newer glibc load on glibc 2.28 and newer, on Linux x86-64 and aarch64
# with glibc (elsewhere, and with MOMA_GLIBC_FLOOR=OFF, it does nothing). It adds
# csrc/compat/glibc_compat.cc (which explains the mechanism) and links with
#   --wrap=NAME for each function of csrc/compat/glibc_rebind.def: every reference, including those
#     inside the static libstdc++, libgcc_eh and CUDA runtime, goes to a trampoline that calls the
#     function's pre-2.29/2.34 version;
#   libdl.so.2, libpthread.so.0 and librt.so.1 as needed libraries: on glibc < 2.34 those old
#     versions live there, not in libc.so.6 (on 2.34+ those files still exist, empty, for old binaries).
# test/glibc_floor.test.ts checks the result with objdump -T.
option(MOMA_GLIBC_FLOOR "Make the Node addon load on glibc 2.28 and newer (Linux x86-64/aarch64 with glibc)" ON)

include(CheckSymbolExists)
check_symbol_exists(__GLIBC__ "features.h" MOMA_HAVE_GLIBC)

function(moma_glibc_floor target)
  if(NOT MOMA_GLIBC_FLOOR OR NOT TARGET ${target} OR NOT CMAKE_SYSTEM_NAME STREQUAL "Linux" OR NOT MOMA_HAVE_GLIBC)
    return()
  endif()
  if(NOT CMAKE_SYSTEM_PROCESSOR MATCHES "^(x86_64|AMD64|amd64|aarch64|arm64|ARM64)$")
    message(STATUS "moma: no glibc floor for ${CMAKE_SYSTEM_PROCESSOR}: ${target} needs the build machine's glibc")
    return()
  endif()
  set(compat_dir ${CMAKE_SOURCE_DIR}/csrc/compat)
  file(STRINGS ${compat_dir}/glibc_rebind.def rebind_lines REGEX "^MOMA_GLIBC_REBIND\\(")
  set(wrap_options "")
  foreach(line IN LISTS rebind_lines)
    string(REGEX REPLACE "^MOMA_GLIBC_REBIND\\(([A-Za-z0-9_]+),.*$" "\\1" symbol "${line}")
    list(APPEND wrap_options "LINKER:--wrap=${symbol}")
  endforeach()
  set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS ${compat_dir}/glibc_rebind.def)
  target_sources(${target} PRIVATE ${compat_dir}/glibc_compat.cc)
  target_link_options(${target} PRIVATE ${wrap_options})
  target_link_libraries(${target} PRIVATE
    "-Wl,--push-state,--no-as-needed" "-l:libdl.so.2" "-l:libpthread.so.0" "-l:librt.so.1" "-Wl,--pop-state")
  list(LENGTH wrap_options wrap_count)
  message(STATUS "moma: ${target} needs at most GLIBC_2.28 (${wrap_count} functions bound to older versions)")
endfunction()

moma_glibc_floor(moma)
