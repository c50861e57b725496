// moma_native_test: runs the CPU sanity checks, registers the CUDA cases of every group and runs
// them (or skips them without a CUDA device), then prints the counts. Exit status 1 on any failure.
#include <cstdio>
#include <exception>
#include <string>

#include "../../csrc/core/error.h"
#include "../../csrc/cpu/kernels.h"
#include "../../cuda/runtime.h"
#include "harness.h"

using namespace moma;
using namespace moma::native_test;

int main() {
  std::printf("moma_native_test: CUDA compiled=%d devices=%d runtime=%d driver=%d cpu gemm isa=%s\n",
              cuda::compiled() ? 1 : 0, cuda::device_count(), cuda::runtime_version(), cuda::driver_version(),
              cpu::gemm_isa());
  try {
    cpu_sanity();
  } catch (const std::exception& e) {
    failure(std::string("exception: ") + e.what());
  }
  add_runtime_cases();
  add_creation_cases();
  add_cast_cases();
  add_layout_cases();
  add_elementwise_cases();
  add_reduce_cases();
  add_indexing_cases();
  add_gemm_cases();
  add_moe_cases();
  add_nn_cases();
  if (cuda::device_count() == 0) {
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
  std::printf("%d passed, %d failed, %d skipped\n", g_passed, g_failed, g_skipped);
  return g_failed ? 1 : 0;
}
