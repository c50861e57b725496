// The op layer: every public operation on tensors. Each op validates its arguments (throwing
// MomaException with ERR_SHAPE / ERR_DTYPE / ERR_DEVICE / ERR_RANGE / ERR_ARG and a message that
// names the op, the argument and the shapes), allocates its outputs on the caller's thread and
// queues the computation on the device's worker (core/queue.h). It returns at once.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "../core/kernel_types.h"
#include "../core/tensor.h"

namespace moma::ops {

// ---- creation (creation.cc)
Tensor empty(const Shape& shape, DType dtype, Device device);
Tensor full(const Shape& shape, double value, DType dtype, Device device);
Tensor arange(double start, double end, double step, DType dtype, Device device);
// Philox streams (core/philox.h): the caller owns (seed, offset) and advances offset by
// philox_blocks_uniform / philox_blocks_normal of the element count.
Tensor random_uniform(const Shape& shape, double low, double high, uint64_t seed, uint64_t offset,
                      DType dtype, Device device);
Tensor random_normal(const Shape& shape, double mean, double std, uint64_t seed, uint64_t offset,
                     DType dtype, Device device);
// From host memory holding numel elements of `src_dtype` (float32, int32 or uint8; bf16 as raw
// uint16 bits). The bytes are copied before return; conversion to `dtype` happens on the device.
Tensor from_host(const void* data, size_t bytes, DType src_dtype, const Shape& shape, DType dtype,
                 Device device);

// ---- transfers and reads (transfer.cc)
Tensor to_device(const Tensor& t, Device device);
// Reads `t` after all earlier work on its device. `done` runs on the device worker with the
// elements as float32 (float32 and bf16 tensors), int32 or uint8, or with the error that poisoned
// the tensor or that the device reported.
struct HostData {
  DType dtype;  // F32, I32 or U8
  std::vector<uint8_t> bytes;
};
using ReadCallback = std::function<void(std::shared_ptr<HostData>, std::shared_ptr<const MomaException>)>;
void read_async(const Tensor& t, ReadCallback done);
// `done` runs on the device worker once every op queued before it on `device` has finished, with
// the device's pending asynchronous error (CUDA), if any.
void synchronize_async(Device device, std::function<void(std::shared_ptr<const MomaException>)> done);

// ---- layout (layout.cc)
Tensor reshape(const Tensor& t, const Shape& shape);  // one dim may be -1
Tensor astype(const Tensor& t, DType dtype);
Tensor clone(const Tensor& t);
Tensor permute(const Tensor& t, const std::vector<int64_t>& dims);
Tensor transpose(const Tensor& t, int64_t dim0, int64_t dim1);
Tensor slice(const Tensor& t, int64_t axis, int64_t start, int64_t end);
Tensor concat(const std::vector<Tensor>& tensors, int64_t axis);
Tensor broadcast_to(const Tensor& t, const Shape& shape);

// ---- element-wise (elementwise.cc)
Tensor unary(UnaryOp op, const Tensor& x, double alpha = 0.0);
Tensor binary(BinaryOp op, const Tensor& a, const Tensor& b);
Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b);

// ---- reductions (reduce.cc)
Tensor reduce(ReduceOp op, const Tensor& x, int64_t axis, bool keepdim);
Tensor softmax(const Tensor& x, int64_t axis, bool log);

// ---- indexing (indexing.cc)
Tensor index_select(const Tensor& x, int64_t axis, const Tensor& index);
// out = x with src's slices added at `index` along `axis` (x is not modified).
Tensor scatter_add(const Tensor& x, int64_t axis, const Tensor& index, const Tensor& src);

// ---- matmul (matmul.cc)
// a [..., M, K] (or [..., K, M] with trans_a), b [..., K, N] (or [..., N, K] with trans_b).
// Batch dims: equal, or one side has none (broadcast). Output float32 unless both are bf16.
Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b);

// ---- user-facing op names, for messages (elementwise.cc, reduce.cc)
const char* op_name(UnaryOp op);
const char* op_name(BinaryOp op);
const char* op_name(ReduceOp op);

// ---- shared validation helpers (common.cc)
int64_t normalize_axis(int64_t axis, int ndim, const char* op, const char* arg);
void check_same_device(const char* op, const Tensor& a, const char* an, const Tensor& b, const char* bn);
void check_dtype(const char* op, const Tensor& t, const char* arg, std::initializer_list<DType> allowed);
StridedView contiguous_view(const Shape& shape);
// View of `t` broadcast to `out` (numpy rules; throws ERR_SHAPE naming both shapes).
StridedView broadcast_view(const Tensor& t, const Shape& out, const char* op);
Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op);

}  // namespace moma::ops
