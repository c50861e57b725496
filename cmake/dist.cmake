# Collectives (csrc/dist, included by CMakeLists.txt after the core, test and addon targets).
#   In the core: the rendezvous store, the process-group registry, the gloo loader and the NCCL
#   backend (compiled only with MOMA_WITH_CUDA; NCCL itself is dlopened at run time).
#   The gloo plugin libmoma_gloo.so: built when gloo is installed (Debian: libgloo-dev), next to the
#   addon (build/Release, cmake-js's library folder) or next to the native executables. The core
#   dlopens it from its own folder when CPU collectives are first asked for, so the addon loads
#   and trains on one device without gloo; without the plugin, CPU collectives report ERR_LOAD.
target_sources(moma_core PRIVATE
  ${CMAKE_SOURCE_DIR}/csrc/dist/tcp_store.cc
  ${CMAKE_SOURCE_DIR}/csrc/dist/communicator.cc
  ${CMAKE_SOURCE_DIR}/csrc/dist/gloo_backend.cc
  ${CMAKE_SOURCE_DIR}/csrc/dist/nccl_backend.cc)
target_link_libraries(moma_core PUBLIC ${CMAKE_DL_LIBS})

find_package(Gloo CONFIG QUIET)
if(TARGET gloo)
  add_library(moma_gloo SHARED ${CMAKE_SOURCE_DIR}/csrc/dist/gloo_plugin.cc)
  target_link_libraries(moma_gloo PRIVATE gloo)
  target_include_directories(moma_gloo PRIVATE ${GLOO_INCLUDE_DIRS})
  if(NOT CMAKE_LIBRARY_OUTPUT_DIRECTORY)
    set_target_properties(moma_gloo PROPERTIES LIBRARY_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR})
  endif()
  foreach(consumer moma moma_native_test moma_kernel_bench)
    if(TARGET ${consumer})
      add_dependencies(${consumer} moma_gloo)
    endif()
  endforeach()
  # The executables look for the plugin in their own folder; under cmake-js the plugin lands in
  # the addon's folder (build/Release) and the executables in build/: copy it next to them too.
  if(TARGET moma_native_test)
    add_custom_command(TARGET moma_gloo POST_BUILD
      COMMAND ${CMAKE_COMMAND} -E copy_if_different $<TARGET_FILE:moma_gloo> $<TARGET_FILE_DIR:moma_native_test>)
  endif()
  message(STATUS "moma: gloo ${GLOO_VERSION} found: CPU collectives plugin libmoma_gloo.so")
else()
  message(STATUS "moma: gloo not found (apt-get install libgloo-dev): CPU collectives will report ERR_LOAD")
endif()
