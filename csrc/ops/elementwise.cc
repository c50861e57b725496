// Element-wise ops with numpy broadcasting. Float ops accept float32 and bf16; the integer-safe
// subset (neg, abs, square, scale/add by an integral scalar, add/sub/mul/div/max/min) also int32.
#include <cmath>

#include "../core/error.h"
#include "../core/queue.h"
#include "backend.h"
#include "ops.h"

namespace moma::ops {

const char* op_name(UnaryOp op) {
  switch (op) {
    case UnaryOp::Neg: return "neg";
    case UnaryOp::Exp: return "exp";
    case UnaryOp::Log: return "log";
    case UnaryOp::Silu: return "silu";
    case UnaryOp::Sigmoid: return "sigmoid";
    case UnaryOp::Tanh: return "tanh";
    case UnaryOp::Sqrt: return "sqrt";
    case UnaryOp::Rsqrt: return "rsqrt";
    case UnaryOp::Abs: return "abs";
    case UnaryOp::Square: return "square";
    case UnaryOp::Scale: return "scale";
    case UnaryOp::AddScalar: return "add_scalar";
    case UnaryOp::PowScalar: return "pow";
  }
  return "unary";
}

const char* op_name(BinaryOp op) {
  switch (op) {
    case BinaryOp::Add: return "add";
    case BinaryOp::Sub: return "sub";
    case BinaryOp::Mul: return "mul";
    case BinaryOp::Div: return "div";
    case BinaryOp::Maximum: return "maximum";
    case BinaryOp::Minimum: return "minimum";
  }
  return "binary";
}

namespace {

bool int_safe(UnaryOp op) {
  return op == UnaryOp::Neg || op == UnaryOp::Abs || op == UnaryOp::Square || op == UnaryOp::Scale ||
         op == UnaryOp::AddScalar;
}

}  // namespace

Tensor unary(UnaryOp op, const Tensor& x, double alpha) {
  const char* name = op_name(op);
  if (static_cast<int>(op) < 0 || static_cast<int>(op) > static_cast<int>(UnaryOp::PowScalar))
    fail("ERR_ARG", "unary: unknown op ", static_cast<int>(op));
  if (x.dtype == DType::I32) {
    if (!int_safe(op)) fail("ERR_DTYPE", name, ": x has dtype int32 (expected float32 or bfloat16)");
    if (op == UnaryOp::Scale || op == UnaryOp::AddScalar) {
      // Exact integer arithmetic: the scalar becomes an int32 tensor (the kernels' scalar is float).
      if (!std::isfinite(alpha) || alpha != std::floor(alpha) || alpha < -2147483648.0 || alpha > 2147483647.0)
        fail("ERR_ARG", name, ": scalar ", alpha, " is not an int32 value for an int32 tensor");
      Tensor scalar = full({}, alpha, DType::I32, x.device());
      return binary(op == UnaryOp::Scale ? BinaryOp::Mul : BinaryOp::Add, x, scalar);
    }
  } else {
    check_dtype(name, x, "x", {DType::F32, DType::BF16});
  }
  Tensor out = empty_tensor(x.shape, x.dtype, x.device(), name);
  Device device = x.device();
  float a = static_cast<float>(alpha);
  submit(name, device, {x}, {out}, [=] { MOMA_LAUNCH(device, unary, op, x.dtype, x.data(), out.data(), x.numel(), a); });
  return out;
}

Tensor binary(BinaryOp op, const Tensor& a, const Tensor& b) {
  if (static_cast<int>(op) < 0 || static_cast<int>(op) > static_cast<int>(BinaryOp::Minimum))
    fail("ERR_ARG", "binary: unknown op ", static_cast<int>(op));
  const char* name = op_name(op);
  check_same_device(name, a, "a", b, "b");
  check_dtype(name, a, "a", {DType::F32, DType::BF16, DType::I32});
  if (a.dtype != b.dtype)
    fail("ERR_DTYPE", name, ": a is ", dtype_name(a.dtype), " but b is ", dtype_name(b.dtype),
         " (convert one with astype)");
  Shape shape = broadcast_shapes(a.shape, b.shape, name);
  StridedView av = broadcast_view(a, shape, name), bv = broadcast_view(b, shape, name);
  Tensor out = empty_tensor(shape, a.dtype, a.device(), name);
  Device device = a.device();
  submit(name, device, {a, b}, {out},
         [=] { MOMA_LAUNCH(device, binary, op, a.dtype, a.data(), av, b.data(), bv, out.data(), out.numel()); });
  return out;
}

Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b) {
  check_same_device("where", cond, "cond", a, "a");
  check_same_device("where", a, "a", b, "b");
  check_dtype("where", cond, "cond", {DType::U8});
  if (a.dtype != b.dtype)
    fail("ERR_DTYPE", "where: a is ", dtype_name(a.dtype), " but b is ", dtype_name(b.dtype));
  Shape shape = broadcast_shapes(broadcast_shapes(cond.shape, a.shape, "where"), b.shape, "where");
  StridedView cv = broadcast_view(cond, shape, "where"), av = broadcast_view(a, shape, "where"),
              bv = broadcast_view(b, shape, "where");
  Tensor out = empty_tensor(shape, a.dtype, a.device(), "where");
  Device device = a.device();
  submit("where", device, {cond, a, b}, {out}, [=] {
    MOMA_LAUNCH(device, where, static_cast<const uint8_t*>(cond.data()), cv, a.dtype, a.data(), av, b.data(), bv,
                  out.data(), out.numel());
  });
  return out;
}

}  // namespace moma::ops
