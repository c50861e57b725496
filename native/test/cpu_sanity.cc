// A few CPU kernels (csrc/cpu/kernels.h) against double references and brute force; these run
// with or without a CUDA device.
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "../../csrc/core/error.h"
#include "../../csrc/core/philox.h"
#include "../../csrc/cpu/kernels.h"
#include "harness.h"

namespace moma::native_test {

void cpu_sanity() {
  g_case = "cpu unary exp";
  {
    std::vector<float> x = rand_f(1000, -10, 10), y(1000);
    cpu::unary(UnaryOp::Exp, DType::F32, x.data(), y.data(), 1000, 0.0f);
    bool ok = true;
    for (int i = 0; i < 1000; ++i) ok &= std::fabs(y[i] - std::exp(double(x[i]))) <= 1e-6 * std::exp(double(x[i]));
    expect(ok, "exp vs double");
  }
  g_case = "cpu binary broadcast add";
  {
    std::vector<float> a = rand_f(33 * 7), b = rand_f(5 * 7), y(33 * 5 * 7);
    StridedView av = contiguous_view({33, 5, 7}), bv = contiguous_view({33, 5, 7});
    av.strides[0] = 7; av.strides[1] = 0;
    bv.strides[0] = 0;
    cpu::binary(BinaryOp::Add, DType::F32, a.data(), av, b.data(), bv, y.data(), 33 * 5 * 7);
    bool ok = true;
    for (int i = 0; i < 33; ++i)
      for (int j = 0; j < 5; ++j)
        for (int k = 0; k < 7; ++k) ok &= y[(i * 5 + j) * 7 + k] == a[i * 7 + k] + b[j * 7 + k];
    expect(ok, "broadcast add");
  }
  g_case = "cpu reduce sum";
  {
    std::vector<float> x = rand_f(4 * 1000 * 7), y(4 * 7);
    cpu::reduce(ReduceOp::Sum, DType::F32, x.data(), y.data(), 4, 1000, 7);
    bool ok = true;
    for (int o = 0; o < 4; ++o)
      for (int i = 0; i < 7; ++i) {
        double s = 0;
        for (int j = 0; j < 1000; ++j) s += x[(o * 1000 + j) * 7 + i];
        ok &= std::fabs(y[o * 7 + i] - s) <= 1e-5 * (1 + std::fabs(s));
      }
    expect(ok, "sum vs double");
  }
  g_case = "cpu softmax";
  {
    std::vector<float> x = rand_f(3 * 333, -5, 5), y(3 * 333);
    cpu::softmax(false, DType::F32, x.data(), y.data(), 3, 333, 1);
    bool ok = true;
    for (int o = 0; o < 3; ++o) {
      double m = -1e300, s = 0;
      for (int j = 0; j < 333; ++j) m = std::fmax(m, x[o * 333 + j]);
      for (int j = 0; j < 333; ++j) s += std::exp(x[o * 333 + j] - m);
      for (int j = 0; j < 333; ++j) ok &= std::fabs(y[o * 333 + j] - std::exp(x[o * 333 + j] - m) / s) <= 1e-6;
    }
    expect(ok, "softmax vs double");
  }
  g_case = "cpu gemm_f32";
  {
    GemmShape g;
    g.M = 37; g.N = 29; g.K = 41; g.transB = true;
    g.lda = 41; g.ldb = 41; g.ldc = 29;
    std::vector<float> A = rand_f(37 * 41), B = rand_f(29 * 41), C(37 * 29);
    cpu::gemm_f32(g, A.data(), B.data(), C.data());
    bool ok = true;
    for (int m = 0; m < 37; ++m)
      for (int n = 0; n < 29; ++n) {
        double s = 0;
        for (int k = 0; k < 41; ++k) s += double(A[m * 41 + k]) * B[n * 41 + k];
        ok &= std::fabs(C[m * 29 + n] - s) <= 1e-4;
      }
    expect(ok, "gemm vs double");
  }
  g_case = "cpu random_uniform";
  {
    std::vector<float> y(1001);
    cpu::random_uniform(DType::F32, y.data(), 1001, 7, 3, 0.0f, 1.0f);
    bool ok = true;
    for (int i = 0; i < 1001; ++i) ok &= y[i] == philox_uniform(7, 3, i) && y[i] > 0.0f && y[i] <= 1.0f;
    expect(ok, "uniform = philox_uniform");
  }
  cpu_moe_sanity();
  g_case = "cpu index_select bad index";
  {
    std::vector<float> x(10, 1.0f), y(2);
    std::vector<int32_t> idx = {1, 10};
    std::string code;
    try { cpu::index_select(DType::F32, x.data(), idx.data(), y.data(), 1, 10, 2, 1); } catch (const MomaException& e) { code = e.code(); }
    expect(code == "ERR_RANGE", "ERR_RANGE, got '" + code + "'");
  }
}

}  // namespace moma::native_test
