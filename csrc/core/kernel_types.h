// Plain structs shared by the CPU and CUDA kernel tables (csrc/cpu/kernels.h, cuda/kernels.h).
// Kernels see raw pointers, element counts and these descriptors only; tensors, validation and
// queues live above them (csrc/ops).
#pragma once
#include <cstdint>
#include "dtype.h"

namespace moma {

constexpr int kMaxDims = 8;

// Reading a tensor of `ndim` dims in row-major order of `shape`: element (i0..in-1) is at
// base + offset + sum(ik * strides[k]) (strides in elements; 0 means broadcast along k).
struct StridedView {
  int32_t ndim = 0;
  int64_t shape[kMaxDims] = {};
  int64_t strides[kMaxDims] = {};
  int64_t offset = 0;
};

enum class UnaryOp : int32_t {
  Neg = 0, Exp, Log, Silu, Sigmoid, Tanh, Sqrt, Rsqrt, Abs, Square,
  Scale,      // y = alpha * x
  AddScalar,  // y = x + alpha
  PowScalar,  // y = x ^ alpha
};

enum class BinaryOp : int32_t { Add = 0, Sub, Mul, Div, Maximum, Minimum };

// Reductions over the middle axis of a [outer, n, inner] view. Sum/Mean/Max keep the input dtype;
// Argmax writes int32 (first index of the maximum; NaN counts as the maximum).
enum class ReduceOp : int32_t { Sum = 0, Mean, Max, Argmax };

// C[b] = alpha * op(A[b]) @ op(B[b]) + beta * C[b], row-major. op(A) is M x K, op(B) is K x N.
// transA: A is stored K x M (lda >= M); else M x K (lda >= K). Same for B. ldc >= N.
// Batch strides are in elements; 0 broadcasts one matrix to every batch entry.
struct GemmShape {
  int64_t batch = 1, M = 0, N = 0, K = 0;
  bool transA = false, transB = false;
  int64_t lda = 0, ldb = 0, ldc = 0;
  int64_t strideA = 0, strideB = 0, strideC = 0;
  float alpha = 1.0f, beta = 0.0f;
};

}  // namespace moma
