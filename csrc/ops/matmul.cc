// Batched matmul: validate, allocate, one gemm launch. What each backend computes is gemm's
// contract (core/kernel_table.inc): CPU float32 products with bf16 widened and a bf16 output
// rounded once; CUDA float32-accurate for two float32 operands, else bf16 tensor cores with
// float32 accumulation.
#include "../core/error.h"
#include "../core/queue.h"
#include "backend.h"
#include "ops.h"

namespace moma::ops {

Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b) {
  check_same_device("matmul", a, "a", b, "b");
  check_dtype("matmul", a, "a", {DType::F32, DType::BF16});
  check_dtype("matmul", b, "b", {DType::F32, DType::BF16});
  if (a.ndim() < 2 || b.ndim() < 2)
    fail("ERR_SHAPE", "matmul: a ", shape_str(a.shape), " and b ", shape_str(b.shape), " must have at least 2 dims");
  int64_t M = trans_a ? a.shape[a.ndim() - 1] : a.shape[a.ndim() - 2];
  int64_t Ka = trans_a ? a.shape[a.ndim() - 2] : a.shape[a.ndim() - 1];
  int64_t Kb = trans_b ? b.shape[b.ndim() - 1] : b.shape[b.ndim() - 2];
  int64_t N = trans_b ? b.shape[b.ndim() - 2] : b.shape[b.ndim() - 1];
  if (Ka != Kb)
    fail("ERR_SHAPE", "matmul: inner dimensions differ: a ", shape_str(a.shape), (trans_a ? " (transposed)" : ""),
         " has K=", Ka, ", b ", shape_str(b.shape), (trans_b ? " (transposed)" : ""), " has K=", Kb);
  Shape batch_a(a.shape.begin(), a.shape.end() - 2), batch_b(b.shape.begin(), b.shape.end() - 2);
  Shape batch_shape;
  if (batch_a == batch_b || batch_b.empty()) batch_shape = batch_a;
  else if (batch_a.empty()) batch_shape = batch_b;
  else
    fail("ERR_SHAPE", "matmul: batch dims ", shape_str(batch_a), " and ", shape_str(batch_b),
         " must be equal or one side must have none");
  int64_t batch = shape_numel(batch_shape);
  Shape out_shape = batch_shape;
  out_shape.push_back(M);
  out_shape.push_back(N);
  DType out_dtype = (a.dtype == DType::BF16 && b.dtype == DType::BF16) ? DType::BF16 : DType::F32;
  if (shape_numel(out_shape) == 0) return empty_tensor(out_shape, out_dtype, a.device(), "matmul");

  GemmShape g;
  g.batch = batch;
  g.M = M;
  g.N = N;
  g.K = Ka;
  g.transA = trans_a;
  g.transB = trans_b;
  g.lda = a.shape[a.ndim() - 1];
  g.ldb = b.shape[b.ndim() - 1];
  g.ldc = N;
  g.strideA = batch_a.empty() ? 0 : M * Ka;
  g.strideB = batch_b.empty() ? 0 : Ka * N;
  g.strideC = M * N;
  Device device = a.device();
  Tensor out = empty_tensor(out_shape, out_dtype, device, "matmul");
  submit("matmul", device, {a, b}, {out}, [=] {
    MOMA_LAUNCH(device, gemm, a.dtype, a.data(), b.dtype, b.data(), out_dtype, out.data(), g);
  });
  return out;
}

}  // namespace moma::ops
