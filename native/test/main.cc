// moma_native_test: runs the CPU sanity checks, registers the CUDA cases of every group and runs
// them (or skips them without a CUDA device), then prints the counts. Exit status 1 on any failure.
// The CUDA cases (native/test/*_cases.cc) are compiled only with the CUDA backend (MOMA_WITH_CUDA;
// CMakeLists.txt leaves them out otherwise), so a build without CUDA runs the CPU checks alone and
// says that the CUDA cases were not built.
//
//   moma_native_test [--require-cuda]
//
// --require-cuda makes CUDA cases that did not run an error (exit status 1): no CUDA backend
// compiled or no device visible. scripts/gpu-check.sh passes it, so a GPU check that ran nothing on the GPU fails.
// The last line is machine-readable, "N passed, N failed, N skipped" (test/native.test.ts and
// scripts/gpu_summary.py read it); a failure prints "FAIL <case>: <message>" before it.
#include <cstdio>
#include <exception>
#include <string>

#include "../../csrc/core/error.h"
#include "../../csrc/cpu/cpu_features.h"
#include "../../csrc/cpu/kernels.h"
#include "../../cuda/runtime.h"
#include "harness.h"

using namespace moma;
using namespace moma::native_test;

int main(int argc, char** argv) {
  bool require_cuda = false;
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]) == "--require-cuda") {
      require_cuda = true;
    } else {
      std::fprintf(stderr, "moma_native_test: unknown argument '%s'; usage: moma_native_test [--require-cuda]\n", argv[i]);
      return 2;
    }
  }
  // gemm_isa() throws for a MOMA_CPU_GEMM this CPU cannot run: report it, as a failure
  std::string isa;
  try {
    isa = std::string(cpu::gemm_isa()) + " (f32), " + cpu::gemm_bf16_isa() + " (bf16)";
  } catch (const std::exception& e) {
    isa = std::string("unusable: ") + e.what();
    failure(std::string("cpu gemm: ") + e.what());
  }
  std::printf("moma_native_test: CUDA compiled=%d devices=%d runtime=%d driver=%d cpu gemm isa=%s\n",
              cuda::compiled() ? 1 : 0, cuda::device_count(), cuda::runtime_version(), cuda::driver_version(),
              isa.c_str());
  try {
    cpu_sanity();
  } catch (const std::exception& e) {
    failure(std::string("exception: ") + e.what());
  }
  try {
    dist_checks();
  } catch (const std::exception& e) {
    failure(std::string("dist_checks exception: ") + e.what());
  }
#if MOMA_WITH_CUDA
  add_runtime_cases();
  add_creation_cases();
  add_cast_cases();
  add_layout_cases();
  add_elementwise_cases();
  add_reduce_cases();
  add_indexing_cases();
  add_gemm_cases();
  add_gemm_kernel_cases();
  add_moe_cases();
  add_nn_cases();
  add_coverage_cases();
#endif
  if (!cuda::compiled()) {
    std::printf("moma_native_test: built without CUDA; the CUDA cases were not built\n");
  } else if (cuda::device_count() == 0) {
    g_skipped = static_cast<int>(g_cuda_cases.size());
    std::printf("moma_native_test: no CUDA device; %d CUDA cases skipped\n", g_skipped);
  } else {
    for (const Case& c : g_cuda_cases) {
      g_case = c.name;
      int before = g_failed;
      try {
        c.fn();
      } catch (const MomaException& e) {
        failure(std::string("exception ") + e.code() + ": " + e.what());
      } catch (const std::exception& e) {
        failure(std::string("exception: ") + e.what());
      }
      if (g_failed > before) {
        // make sure a failed case leaves no pending device error for the next one
        try { cuda::synchronize(0, "cleanup"); } catch (...) {}
      }
    }
  }
  const bool missing_cuda = require_cuda && (!cuda::compiled() || g_skipped > 0);
  if (missing_cuda) {
    if (cuda::compiled())
      std::printf("FAIL --require-cuda: %d CUDA cases skipped (no CUDA device visible, or a case skipped itself: see the lines above)\n", g_skipped);
    else
      std::printf("FAIL --require-cuda: built without CUDA (the CUDA cases were not built)\n");
  }
  std::printf("%d passed, %d failed, %d skipped\n", g_passed, g_failed, g_skipped);
  return g_failed || missing_cuda ? 1 : 0;
}
