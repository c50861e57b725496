// CUDA part of moma_kernel_bench (compiled in when the CUDA backend is, i.e. MOMA_WITH_CUDA).
//
// Uses only moma's runtime and kernel tables (cuda/runtime.h, cuda/kernels.h), no CUDA headers.
// Timing: gpu_seconds (cuda_util.h).
// Ceilings: device-to-device copy bandwidth (copy_d2d of 1 GiB, read + write bytes) and the bf16
// tensor-core GEMM rate of moma::cuda::gemm at 4096^3 and 8192x4096x4096 (the better one).
// Nominal bf16 peak: MOMA_GPU_PEAK_TFLOPS, else 989 TFLOP/s (dense) for H100 / H200, else none.
// Kernels: GEMMs (bf16 tensor cores: gemm_bf16; float32 x float32, the f32-accurate SIMT path:
// gemm_f32in, and gemm_f32_router at the router-logit shape [8192, 1024] x [1024, 8]) and the
// memory-bound kernels on the same [32768, 1024] tensors as the CPU part. Each GEMM row names the
// tile the kernel picked (gemm_tile_config) in a note.
#include <algorithm>
#include <iterator>
#include <cstdio>
#include <string>
#include <vector>

#include "bench.h"
#include "cuda_util.h"

#ifdef MOMA_WITH_CUDA
#include "cuda/kernels.h"
#include "cuda/runtime.h"
#endif

namespace moma::bench {

#ifdef MOMA_WITH_CUDA
namespace {

constexpr int kDev = kCudaBenchDevice;

}  // namespace

constexpr const char* kOps[] = {
    "ceiling.copy_d2d", "ceiling.gemm_bf16", "gemm_bf16", "gemm_f32in", "gemm_f32_router", "fill_f32", "cast_f32_bf16",
    "unary_silu_f32", "unary_silu_bf16", "binary_add_bcast_f32", "softmax_rows_f32",
    "reduce_sum_rows_f32", "strided_copy_transpose", "index_select_rows_f32"};

void run_cuda(Runner& runner) {
  if (std::none_of(std::begin(kOps), std::end(kOps),
                   [&](const char* op) { return runner.wanted("cuda", op); }))
    return;
  if (cuda::device_count() <= 0) {
    runner.note("cuda: backend compiled, no GPU visible; skipping the CUDA benchmarks");
    return;
  }
  const cuda::DeviceInfo info = cuda::device_info(kDev);
  void* st = cuda::stream(kDev);
  const LaunchCtx ctx = cuda::launch_ctx(kDev);
  char line[256];
  std::snprintf(line, sizeof line, "cuda: %s, sm_%d%d, %d SMs, %.1f GiB, runtime %d, driver %d",
                info.name.c_str(), info.cc_major, info.cc_minor, info.multiprocessors,
                double(info.total_memory) / double(1ull << 30), cuda::runtime_version(),
                cuda::driver_version());
  runner.note(line);
  const bool hopper = info.name.find("H100") != std::string::npos ||
                      info.name.find("H200") != std::string::npos;
  const double nominal_tflops = env_double("MOMA_GPU_PEAK_TFLOPS", hopper ? 989.0 : -1.0);

  // Copy ceiling.
  double copy_seconds = 0;
  const double copy_bw = copy_ceiling_gbs(st, &copy_seconds);
  runner.report({"cuda", "ceiling.copy_d2d", "1GiB", copy_seconds * 1e3, copy_bw, "GB/s", 100.0, -1});

  // GEMMs: the bf16 rate at the two large shapes is the measured ceiling.
  struct GemmCase {
    const char* op;
    int64_t M, N, K;
    DType in;
    bool ceiling;
  };
  const GemmCase gemms[] = {
      {"ceiling.gemm_bf16", 4096, 4096, 4096, DType::BF16, true},
      {"ceiling.gemm_bf16", 8192, 4096, 4096, DType::BF16, true},
      {"gemm_bf16", 4096, 4096, 4096, DType::BF16, false},
      {"gemm_bf16", 8192, 4096, 1024, DType::BF16, false},
      {"gemm_bf16", 8192, 1024, 4096, DType::BF16, false},
      {"gemm_f32in", 4096, 4096, 4096, DType::F32, false},
      {"gemm_f32in", 8192, 4096, 1024, DType::F32, false},
      {"gemm_f32_router", 8192, 8, 1024, DType::F32, false},
  };
  double gemm_peak = 0;
  for (const auto& c : gemms) {
    if (!c.ceiling && !runner.wanted("cuda", c.op)) continue;
    const size_t es = dtype_size(c.in);
    DeviceBuffer A(size_t(c.M * c.K) * es), B(size_t(c.K * c.N) * es), C(size_t(c.M * c.N) * 4);
    cuda::random_uniform(ctx, c.in, A.get(), c.M * c.K, 1, 0, -1.0f, 1.0f);
    cuda::random_uniform(ctx, c.in, B.get(), c.K * c.N, 2, 0, -1.0f, 1.0f);
    const GemmShape g = gemm_shape(c.M, c.N, c.K);
    const double s =
        gpu_seconds([&] { cuda::gemm(ctx, c.in, A.get(), c.in, B.get(), DType::F32, C.get(), g); });
    const double tflops = 2.0 * double(c.M) * double(c.N) * double(c.K) / s / 1e12;
    if (!c.ceiling) runner.note(std::string(c.op) + " " + shape_str({c.M, c.N, c.K}) + ": " + cuda::gemm_tile_config(c.in, c.in, g));
    if (c.ceiling) gemm_peak = std::max(gemm_peak, tflops);
    runner.report({"cuda", c.op, shape_str({c.M, c.N, c.K}), s * 1e3, tflops, "TFLOP/s",
                   c.ceiling ? -1 : 100.0 * tflops / gemm_peak,
                   nominal_tflops > 0 ? 100.0 * tflops / nominal_tflops : -1});
  }

  // Memory-bound kernels on [32768, 1024].
  const int64_t rows = 32768, cols = 1024, n = rows * cols;
  DeviceBuffer x(size_t(n) * 4), y(size_t(n) * 4), x16(size_t(n) * 2), bias(size_t(cols) * 4),
      idx(size_t(rows) * 4);
  cuda::random_uniform(ctx, DType::F32, x.get(), n, 7, 0, -4.0f, 4.0f);
  cuda::cast(ctx, DType::F32, x.get(), DType::BF16, x16.get(), n);
  cuda::random_uniform(ctx, DType::F32, bias.get(), cols, 8, 0, -1.0f, 1.0f);
  {
    std::vector<int32_t> host_idx(static_cast<size_t>(rows));
    for (int64_t i = 0; i < rows; ++i) host_idx[size_t(i)] = int32_t((i * 7919) % rows);
    cuda::copy_h2d(kDev, idx.get(), host_idx.data(), host_idx.size() * 4);
  }
  const std::string rc = shape_str({rows, cols});
  const StridedView full = view2(rows, cols, cols, 1), row_bcast = view2(rows, cols, 0, 1);
  const StridedView transposed = view2(8192, 4096, 1, 8192);
  struct MemCase {
    const char* op;
    std::string shape;
    double bytes;
    std::function<void()> fn;
  };
  const MemCase cases[] = {
      {"fill_f32", rc, 4.0 * n, [&] { cuda::fill(ctx, DType::F32, y.get(), n, 0.5); }},
      {"cast_f32_bf16", rc, 6.0 * n,
       [&] { cuda::cast(ctx, DType::F32, x.get(), DType::BF16, y.get(), n); }},
      {"unary_silu_f32", rc, 8.0 * n,
       [&] { cuda::unary(ctx, UnaryOp::Silu, DType::F32, x.get(), y.get(), n, 0.0f); }},
      {"unary_silu_bf16", rc, 4.0 * n,
       [&] { cuda::unary(ctx, UnaryOp::Silu, DType::BF16, x16.get(), y.get(), n, 0.0f); }},
      {"binary_add_bcast_f32", rc + " + " + shape_str({cols}), 8.0 * n + 4.0 * cols,
       [&] {
         cuda::binary(ctx, BinaryOp::Add, DType::F32, x.get(), full, bias.get(), row_bcast, y.get(), n);
       }},
      {"softmax_rows_f32", rc, 8.0 * n,
       [&] { cuda::softmax(ctx, false, DType::F32, x.get(), y.get(), rows, cols, 1); }},
      {"reduce_sum_rows_f32", rc, 4.0 * n + 4.0 * rows,
       [&] { cuda::reduce(ctx, ReduceOp::Sum, DType::F32, x.get(), y.get(), rows, cols, 1); }},
      {"strided_copy_transpose", "4096x8192->8192x4096", 8.0 * n,
       [&] { cuda::strided_copy(ctx, DType::F32, x.get(), transposed, y.get(), n); }},
      {"index_select_rows_f32", rc, 8.0 * n + 4.0 * rows,
       [&] {
         cuda::index_select(ctx, DType::F32, x.get(), idx.as<int32_t>(), y.get(), 1, rows, rows, cols);
       }},
  };
  for (const auto& c : cases) {
    if (!runner.wanted("cuda", c.op)) continue;
    const double s = gpu_seconds(c.fn);
    const double gbs = c.bytes / s / 1e9;
    runner.report({"cuda", c.op, c.shape, s * 1e3, gbs, "GB/s", 100.0 * gbs / copy_bw, -1});
  }
}

#else

void run_cuda(Runner& runner) { runner.note("cuda: backend not compiled"); }

#endif

}  // namespace moma::bench
