// The foundation CUDA kernels (cuda/kernels.h: creation, casts, layout, element-wise, reductions,
// indexing, GEMM) against their CPU twins (csrc/cpu/kernels.h), and the CUDA runtime (allocator,
// copies, device info, error word).
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "../../csrc/core/bf16.h"
#include "../../csrc/core/error.h"
#include "../../csrc/cpu/kernels.h"
#include "../../cuda/kernels.h"
#include "harness.h"

namespace moma::native_test {

void add_creation_cases() {
  for (DType dt : kAll)
    for (int64_t n : kSizes)
      for (double v : {3.7, -1e10, 1e10, -0.5, 300.25}) {
        add(std::string("fill ") + dtype_name(dt) + " n=" + std::to_string(n) + " v=" + std::to_string(v), [=] {
          Dev y(n * dtype_size(dt));
          y.poison();
          cuda::fill(cuda::launch_ctx(0), dt, y.p, n, v);
          std::vector<uint8_t> want(y.bytes);
          cpu::fill(kCpuLaunch, dt, want.data(), n, v);
          compare(dt, y.get(), want, n, Tol::Exact);
        });
      }
  for (DType dt : kAll)
    for (int64_t n : kSizes)
      add(std::string("arange ") + dtype_name(dt) + " n=" + std::to_string(n), [=] {
        double start = dt == DType::U8 ? 0.0 : -3.5, step = dt == DType::U8 ? 0.007 : 0.37;
        Dev y(n * dtype_size(dt));
        y.poison();
        cuda::arange(cuda::launch_ctx(0), dt, y.p, n, start, step);
        std::vector<uint8_t> want(y.bytes);
        cpu::arange(kCpuLaunch, dt, want.data(), n, start, step);
        compare(dt, y.get(), want, n, Tol::Exact);
      });
  for (DType dt : kFloat)
    for (int64_t n : kSizes)
      for (uint64_t off : {0ull, 5ull, (1ull << 32) + 3}) {
        add(std::string("random_uniform ") + dtype_name(dt) + " n=" + std::to_string(n) + " off=" + std::to_string(off), [=] {
          Dev y(n * dtype_size(dt));
          y.poison();
          cuda::random_uniform(cuda::launch_ctx(0), dt, y.p, n, 0x1234567890abcdefull, off, -1.5f, 2.25f);
          std::vector<uint8_t> want(y.bytes);
          cpu::random_uniform(kCpuLaunch, dt, want.data(), n, 0x1234567890abcdefull, off, -1.5f, 2.25f);
          compare(dt, y.get(), want, n, Tol::Exact);
        });
        add(std::string("random_normal ") + dtype_name(dt) + " n=" + std::to_string(n) + " off=" + std::to_string(off), [=] {
          Dev y(n * dtype_size(dt));
          y.poison();
          cuda::random_normal(cuda::launch_ctx(0), dt, y.p, n, 42, off, 0.5f, 2.0f);
          std::vector<uint8_t> want(y.bytes);
          cpu::random_normal(kCpuLaunch, dt, want.data(), n, 42, off, 0.5f, 2.0f);
          // bitwise: Box-Muller through portable_math.h, the same operations on both backends
          compare(dt, y.get(), want, n, Tol::Exact);
        });
      }
  // past the grid-stride cap of grid_for (8192 blocks x 256 threads = 2^21 elements)
  for (DType dt : kFloat)
    for (int64_t n : {int64_t(1) << 21, (int64_t(1) << 21) + 1, int64_t(5000001)})
      add(std::string("random_normal ") + dtype_name(dt) + " n=" + std::to_string(n) + " bitwise", [=] {
        Dev y(n * dtype_size(dt));
        y.poison();
        cuda::random_normal(cuda::launch_ctx(0), dt, y.p, n, 0xfeedbeefull, 12345, -0.25f, 0.02f);
        std::vector<uint8_t> want(y.bytes);
        cpu::random_normal(kCpuLaunch, dt, want.data(), n, 0xfeedbeefull, 12345, -0.25f, 0.02f);
        compare(dt, y.get(), want, n, Tol::Exact);
      });
}

void add_cast_cases() {
  for (DType s : kAll)
    for (DType d : kAll)
      add(std::string("cast ") + dtype_name(s) + "->" + dtype_name(d), [=] {
        const int64_t n = 33333;
        std::vector<float> f = rand_f(n, -400.0f, 400.0f);
        const float specials[] = {NAN, INFINITY, -INFINITY, 3e9f, -3e9f, 2147483520.0f, -2147483648.0f, 255.5f,
                                  -0.7f, 0.99f, 1e-40f, 65504.0f, 3.3895314e38f, -0.0f};
        if (dtype_is_float(s))
          for (size_t i = 0; i < sizeof(specials) / sizeof(float); ++i) f[i * 37] = specials[i];
        std::vector<uint8_t> x = make(s, f);
        if (s == DType::I32) {
          std::vector<int32_t> iv = rand_i(n, INT32_MIN, INT32_MAX);
          for (int64_t i = 0; i < n; i += 3) std::memcpy(&x[i * 4], &iv[i], 4);
        }
        Dev dx(x);
        Dev y(n * dtype_size(d));
        y.poison();
        cuda::cast(cuda::launch_ctx(0), s, dx.p, d, y.p, n);
        std::vector<uint8_t> want(y.bytes);
        cpu::cast(kCpuLaunch, s, x.data(), d, want.data(), n);
        compare(d, y.get(), want, n, Tol::Exact);
      });
}

void add_layout_cases() {
  for (DType dt : kAll) {
    add(std::string("strided_copy permute ") + dtype_name(dt), [=] {
      // x [7, 33, 5] read as permute(2, 0, 1) -> [5, 7, 33]
      std::vector<uint8_t> x = make(dt, rand_f(7 * 33 * 5, -100, 100));
      StridedView v;
      v.ndim = 3;
      v.shape[0] = 5; v.strides[0] = 1;
      v.shape[1] = 7; v.strides[1] = 33 * 5;
      v.shape[2] = 33; v.strides[2] = 5;
      const int64_t n = 5 * 7 * 33;
      Dev dx(x), y(n * dtype_size(dt));
      y.poison();
      cuda::strided_copy(cuda::launch_ctx(0), dt, dx.p, v, y.p, n);
      std::vector<uint8_t> want(y.bytes);
      cpu::strided_copy(kCpuLaunch, dt, x.data(), v, want.data(), n);
      compare(dt, y.get(), want, n, Tol::Exact);
    });
    add(std::string("strided_copy slice+broadcast ") + dtype_name(dt), [=] {
      // x [40, 1000]; view = x[3:36, 1:1000:3] broadcast to [2, 33, 1, 333] (stride 0 outer dims)
      std::vector<uint8_t> x = make(dt, rand_f(40 * 1000, -100, 100));
      StridedView v;
      v.ndim = 4;
      v.offset = 3 * 1000 + 1;
      v.shape[0] = 2; v.strides[0] = 0;
      v.shape[1] = 33; v.strides[1] = 1000;
      v.shape[2] = 1; v.strides[2] = 0;
      v.shape[3] = 333; v.strides[3] = 3;
      const int64_t n = 2 * 33 * 333;
      Dev dx(x), y(n * dtype_size(dt));
      y.poison();
      cuda::strided_copy(cuda::launch_ctx(0), dt, dx.p, v, y.p, n);
      std::vector<uint8_t> want(y.bytes);
      cpu::strided_copy(kCpuLaunch, dt, x.data(), v, want.data(), n);
      compare(dt, y.get(), want, n, Tol::Exact);
    });
  }
  add("copy_2d pitched rows (concat piece)", [=] {
    // 37 rows of 129 bytes from a 131-byte pitch into columns [11, 140) of a 257-byte pitch.
    std::vector<uint8_t> x = make(DType::U8, rand_f(37 * 131, 0, 255));
    std::vector<uint8_t> canvas = make(DType::U8, rand_f(37 * 257, 0, 255));
    Dev dx(x), y(canvas);
    cuda::copy_2d(cuda::launch_ctx(0), dx.p, 131, static_cast<char*>(y.p) + 11, 257, 37, 129);
    std::vector<uint8_t> want = canvas;
    cpu::copy_2d(kCpuLaunch, x.data(), 131, want.data() + 11, 257, 37, 129);
    compare(DType::U8, y.get(), want, want.size(), Tol::Exact);
  });
}

void add_elementwise_cases() {
  const UnaryOp fops[] = {UnaryOp::Neg, UnaryOp::Exp, UnaryOp::Log, UnaryOp::Silu, UnaryOp::Sigmoid,
                          UnaryOp::Tanh, UnaryOp::Sqrt, UnaryOp::Rsqrt, UnaryOp::Abs, UnaryOp::Square,
                          UnaryOp::Scale, UnaryOp::AddScalar, UnaryOp::PowScalar};
  for (DType dt : kFloat)
    for (UnaryOp op : fops)
      for (int64_t n : {int64_t(7), int64_t(33333)})
        add(std::string("unary ") + std::to_string(static_cast<int>(op)) + " " + dtype_name(dt) + " n=" + std::to_string(n), [=] {
          bool pos = op == UnaryOp::Log || op == UnaryOp::Sqrt || op == UnaryOp::Rsqrt || op == UnaryOp::PowScalar;
          std::vector<uint8_t> x = make(dt, pos ? rand_f(n, 0.01f, 10.0f) : rand_f(n, -12.0f, 12.0f));
          float alpha = op == UnaryOp::PowScalar ? 1.7f : -0.37f;
          Dev dx(x), y(x.size());
          y.poison();
          cuda::unary(cuda::launch_ctx(0), op, dt, dx.p, y.p, n, alpha);
          std::vector<uint8_t> want(x.size());
          cpu::unary(kCpuLaunch, op, dt, x.data(), want.data(), n, alpha);
          compare(dt, y.get(), want, n, dt == DType::F32 ? Tol::F32Elem : Tol::Bf16Ulp);
        });
  for (UnaryOp op : {UnaryOp::Neg, UnaryOp::Abs, UnaryOp::Square, UnaryOp::Scale, UnaryOp::AddScalar})
    add(std::string("unary int32 ") + std::to_string(static_cast<int>(op)), [=] {
      const int64_t n = 33333;
      std::vector<int32_t> xi = rand_i(n, INT32_MIN, INT32_MAX);
      xi[0] = INT32_MIN;
      float alpha = 5e9f;  // integral, beyond int32: wraps modulo 2^32
      Dev dx(xi.data(), n * 4), y(n * 4);
      y.poison();
      cuda::unary(cuda::launch_ctx(0), op, DType::I32, dx.p, y.p, n, alpha);
      std::vector<uint8_t> want(n * 4);
      cpu::unary(kCpuLaunch, op, DType::I32, xi.data(), want.data(), n, alpha);
      compare(DType::I32, y.get(), want, n, Tol::Exact);
    });
  const BinaryOp bops[] = {BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div, BinaryOp::Maximum, BinaryOp::Minimum};
  for (DType dt : {DType::F32, DType::BF16, DType::I32})
    for (BinaryOp op : bops)
      for (int bc = 0; bc < 2; ++bc)
        add(std::string("binary ") + std::to_string(static_cast<int>(op)) + " " + dtype_name(dt) + (bc ? " broadcast" : " contiguous"), [=] {
          // out [33, 5, 7]; broadcast: a [33, 1, 7], b [5, 7]
          std::vector<int64_t> shape = {33, 5, 7};
          const int64_t n = 33 * 5 * 7;
          int64_t na = bc ? 33 * 7 : n, nb = bc ? 5 * 7 : n;
          std::vector<float> fa = rand_f(na, -50, 50), fb = rand_f(nb, -50, 50);
          if (dt != DType::I32) { fa[1] = NAN; fb[2] = NAN; fb[3] = 0.0f; }
          else { fb[3] = 0.0f; fb[4] = -1.0f; }
          std::vector<uint8_t> a = make(dt, fa), b = make(dt, fb);
          if (dt == DType::I32) { int32_t m = INT32_MIN; std::memcpy(&a[0], &m, 4); }
          StridedView av = contiguous_view(shape), bv = contiguous_view(shape);
          if (bc) {
            av.strides[0] = 7; av.strides[1] = 0; av.strides[2] = 1;
            bv.strides[0] = 0; bv.strides[1] = 7; bv.strides[2] = 1;
          }
          Dev da(a), db(b), y(n * dtype_size(dt));
          y.poison();
          cuda::binary(cuda::launch_ctx(0), op, dt, da.p, av, db.p, bv, y.p, n);
          std::vector<uint8_t> want(y.bytes);
          cpu::binary(kCpuLaunch, op, dt, a.data(), av, b.data(), bv, want.data(), n);
          compare(dt, y.get(), want, n, Tol::Exact);
        });
  for (DType dt : kAll)
    add(std::string("where ") + dtype_name(dt), [=] {
      std::vector<int64_t> shape = {33, 5, 7};
      const int64_t n = 33 * 5 * 7;
      std::vector<uint8_t> c(5 * 7);
      for (auto& v : c) v = static_cast<uint8_t>(g_rng() % 3);  // 0, 1, 2 (nonzero = true)
      std::vector<uint8_t> a = make(dt, rand_f(n, 0, 100)), b = make(dt, rand_f(33, 0, 100));
      StridedView cv = contiguous_view(shape), av = contiguous_view(shape), bv = contiguous_view(shape);
      cv.strides[0] = 0; cv.strides[1] = 7; cv.strides[2] = 1;
      bv.strides[0] = 1; bv.strides[1] = 0; bv.strides[2] = 0;
      Dev dc(c), da(a), db(b), y(n * dtype_size(dt));
      y.poison();
      cuda::where(cuda::launch_ctx(0), static_cast<const uint8_t*>(dc.p), cv, dt, da.p, av, db.p, bv, y.p, n);
      std::vector<uint8_t> want(y.bytes);
      cpu::where(kCpuLaunch, c.data(), cv, dt, a.data(), av, b.data(), bv, want.data(), n);
      compare(dt, y.get(), want, n, Tol::Exact);
    });
}

namespace {
struct Shape3 { int64_t outer, n, inner; };
const Shape3 kReduceShapes[] = {{1, 1, 1}, {3, 1000, 1}, {2, 33333, 1}, {5, 7, 33}, {4, 1000, 7}, {1, 7, 1000}, {7, 1, 5}, {2, 129, 257}};
}  // namespace

void add_reduce_cases() {
  for (DType dt : {DType::F32, DType::BF16, DType::I32})
    for (ReduceOp op : {ReduceOp::Sum, ReduceOp::Mean, ReduceOp::Max, ReduceOp::Argmax})
      for (Shape3 s : kReduceShapes) {
        if (dt == DType::I32 && op == ReduceOp::Mean) continue;
        add(std::string("reduce ") + std::to_string(static_cast<int>(op)) + " " + dtype_name(dt) + " [" +
                std::to_string(s.outer) + "," + std::to_string(s.n) + "," + std::to_string(s.inner) + "]", [=] {
          const int64_t total = s.outer * s.n * s.inner, nout = s.outer * s.inner;
          std::vector<float> f = op == ReduceOp::Argmax || op == ReduceOp::Max
                                     ? rand_f(total, -20, 20)
                                     : rand_f(total, -2, 2);
          if (op == ReduceOp::Argmax || op == ReduceOp::Max)
            for (auto& v : f) v = std::round(v);  // many ties: the first index must win
          if (dt != DType::I32 && op != ReduceOp::Sum && total > 50) f[total / 2] = NAN;
          std::vector<uint8_t> x = make(dt, f);
          DType odt = op == ReduceOp::Argmax ? DType::I32 : dt;
          Dev dx(x), y(nout * dtype_size(odt));
          y.poison();
          cuda::reduce(cuda::launch_ctx(0), op, dt, dx.p, y.p, s.outer, s.n, s.inner);
          std::vector<uint8_t> want(y.bytes);
          cpu::reduce(kCpuLaunch, op, dt, x.data(), want.data(), s.outer, s.n, s.inner);
          std::vector<double> scale(nout, 0.0);
          for (int64_t o = 0; o < s.outer; ++o)
            for (int64_t j = 0; j < s.n; ++j)
              for (int64_t i = 0; i < s.inner; ++i)
                scale[o * s.inner + i] += std::fabs(elem(dt, x, (o * s.n + j) * s.inner + i));
          if (op == ReduceOp::Mean) for (auto& v : scale) v /= static_cast<double>(s.n);
          bool exact = dt == DType::I32 || op == ReduceOp::Max || op == ReduceOp::Argmax;
          compare(odt, y.get(), want, nout, exact ? Tol::Exact : Tol::Reduce, &scale);
        });
      }
  for (DType dt : kFloat)
    for (bool log : {false, true})
      for (Shape3 s : kReduceShapes)
        add(std::string(log ? "log_softmax " : "softmax ") + dtype_name(dt) + " [" + std::to_string(s.outer) + "," +
                std::to_string(s.n) + "," + std::to_string(s.inner) + "]", [=] {
          const int64_t total = s.outer * s.n * s.inner;
          std::vector<uint8_t> x = make(dt, rand_f(total, -8, 8));
          Dev dx(x), y(x.size());
          y.poison();
          cuda::softmax(cuda::launch_ctx(0), log, dt, dx.p, y.p, s.outer, s.n, s.inner);
          std::vector<uint8_t> want(x.size());
          cpu::softmax(kCpuLaunch, log, dt, x.data(), want.data(), s.outer, s.n, s.inner);
          // log-softmax values near 0 carry the absolute error of log(sum): scale by 1 + |x|
          std::vector<double> scale(total, 1.0);
          if (dt == DType::F32) {
            std::vector<double> sc(total);
            for (int64_t i = 0; i < total; ++i) sc[i] = std::fabs(elem(dt, want, i)) + (log ? 1.0 : 0.0);
            compare(dt, y.get(), want, total, Tol::Reduce, &sc);
          } else {
            compare(dt, y.get(), want, total, Tol::Bf16Ulp);
          }
        });
}

void add_indexing_cases() {
  for (DType dt : kAll)
    for (Shape3 s : {Shape3{1, 7, 1}, Shape3{3, 1000, 1}, Shape3{2, 50, 33}, Shape3{1, 1, 1000}})
      for (int64_t k : {int64_t(1), int64_t(7), int64_t(333)})
        add(std::string("index_select ") + dtype_name(dt) + " n=" + std::to_string(s.n) + " k=" + std::to_string(k) +
                " inner=" + std::to_string(s.inner), [=] {
          std::vector<uint8_t> x = make(dt, rand_f(s.outer * s.n * s.inner, 0, 100));
          std::vector<int32_t> idx = rand_i(k, 0, static_cast<int32_t>(s.n - 1));
          const int64_t nout = s.outer * k * s.inner;
          Dev dx(x), di(idx.data(), k * 4), y(nout * dtype_size(dt));
          y.poison();
          cuda::index_select(cuda::launch_ctx(0), dt, dx.p, static_cast<const int32_t*>(di.p), y.p, s.outer, s.n, k,
                             s.inner);
          std::vector<uint8_t> want(y.bytes);
          cpu::index_select(kCpuLaunch, dt, x.data(), idx.data(), want.data(), s.outer, s.n, k, s.inner);
          compare(dt, y.get(), want, nout, Tol::Exact);
        });
  for (DType dt : {DType::F32, DType::BF16, DType::I32})
    for (Shape3 s : {Shape3{1, 7, 1}, Shape3{3, 100, 1}, Shape3{2, 50, 33}, Shape3{1, 1, 1000}})
      for (int64_t k : {int64_t(1), int64_t(7), int64_t(333)})
        add(std::string("scatter_add ") + dtype_name(dt) + " n=" + std::to_string(s.n) + " k=" + std::to_string(k) +
                " inner=" + std::to_string(s.inner), [=] {
          std::vector<uint8_t> src = make(dt, rand_f(s.outer * k * s.inner, -100, 100));
          std::vector<uint8_t> y0 = make(dt, rand_f(s.outer * s.n * s.inner, -100, 100));
          std::vector<int32_t> idx = rand_i(k, 0, static_cast<int32_t>(s.n - 1));
          const int64_t ny = s.outer * s.n * s.inner;
          Dev ds(src), di(idx.data(), k * 4), y(y0);
          cuda::scatter_add(cuda::launch_ctx(0), dt, ds.p, static_cast<const int32_t*>(di.p), y.p, s.outer, k, s.n,
                            s.inner);
          std::vector<uint8_t> want = y0;
          cpu::scatter_add(kCpuLaunch, dt, src.data(), idx.data(), want.data(), s.outer, k, s.n, s.inner);
          // same float additions in the same order, one bf16 rounding: exact
          compare(dt, y.get(), want, ny, Tol::Exact);
        });
  // Many duplicates: buckets far above the warp rank-sort limit (256), k = 5000 all on one row
  // (the block compaction path), and k = 3000 spread over 7 rows (~430 each) or over 300 rows.
  struct DupCase { int64_t outer, n, inner, k, rows; };
  for (DType dt : {DType::F32, DType::BF16, DType::I32})
    for (DupCase c : {DupCase{1, 7, 1, 5000, 1}, DupCase{2, 100, 33, 5000, 1}, DupCase{1, 7, 5, 3000, 7},
                      DupCase{2, 7, 40, 3000, 7}, DupCase{1, 1000, 3, 3000, 300}})
      add(std::string("scatter_add ") + dtype_name(dt) + " duplicates n=" + std::to_string(c.n) + " k=" +
              std::to_string(c.k) + " rows=" + std::to_string(c.rows) + " inner=" + std::to_string(c.inner), [=] {
        std::vector<uint8_t> src = make(dt, rand_f(c.outer * c.k * c.inner, -100, 100));
        std::vector<uint8_t> y0 = make(dt, rand_f(c.outer * c.n * c.inner, -100, 100));
        std::vector<int32_t> idx = rand_i(c.k, 0, static_cast<int32_t>(c.rows - 1));
        const int32_t shift = rand_i(1, 0, static_cast<int32_t>(c.n - c.rows))[0];
        for (auto& v : idx) v += shift;  // the hot rows are not always the first ones
        const int64_t ny = c.outer * c.n * c.inner;
        Dev ds(src), di(idx.data(), c.k * 4), y(y0);
        cuda::scatter_add(cuda::launch_ctx(0), dt, ds.p, static_cast<const int32_t*>(di.p), y.p, c.outer, c.k, c.n,
                          c.inner);
        std::vector<uint8_t> want = y0;
        cpu::scatter_add(kCpuLaunch, dt, src.data(), idx.data(), want.data(), c.outer, c.k, c.n, c.inner);
        compare(dt, y.get(), want, ny, Tol::Exact);
      });
  add("error word: index_select bad index -> ERR_RANGE", [] {
    std::vector<float> x(10 * 3, 1.0f);
    std::vector<int32_t> idx = {1, 10, 2};
    Dev dx(x.data(), x.size() * 4), di(idx.data(), 12), y(3 * 3 * 4);
    cuda::index_select(cuda::launch_ctx(0), DType::F32, dx.p, static_cast<const int32_t*>(di.p), y.p, 1, 10, 3, 3);
    std::string code;
    try {
      cuda::synchronize(0, "test");
    } catch (const MomaException& e) {
      code = e.code();
      expect(std::string(e.what()).find("index_select") != std::string::npos, std::string("message: ") + e.what());
    }
    expect(code == "ERR_RANGE", "expected ERR_RANGE, got '" + code + "'");
    bool clean = true;
    try { cuda::synchronize(0, "test"); } catch (...) { clean = false; }
    expect(clean, "error word was not cleared");
  });
  add("error word: scatter_add bad index -> ERR_RANGE", [] {
    std::vector<float> src(4 * 2, 1.0f), y0(5 * 2, 0.0f);
    std::vector<int32_t> idx = {0, -1, 4, 3};
    Dev ds(src.data(), src.size() * 4), di(idx.data(), 16), y(y0.data(), y0.size() * 4);
    cuda::scatter_add(cuda::launch_ctx(0), DType::F32, ds.p, static_cast<const int32_t*>(di.p), y.p, 1, 4, 5, 2);
    std::string code, msg;
    try { cuda::synchronize(0, "test"); } catch (const MomaException& e) { code = e.code(); msg = e.what(); }
    expect(code == "ERR_RANGE" && msg.find("scatter_add") != std::string::npos, "got '" + code + "' " + msg);
    // the bad index (position 1) is skipped, the others are added: rows 0, 3 and 4 get 1
    std::vector<float> got(y0.size());
    cuda::copy_d2h(0, got.data(), y.p, got.size() * 4);
    expect_equal(got, std::vector<float>{1, 1, 0, 0, 0, 0, 1, 1, 1, 1}, "scatter_add values with a bad index");
    bool clean = true;
    try { cuda::synchronize(0, "test"); } catch (...) { clean = false; }
    expect(clean, "error word was not cleared");
  });
}

namespace {
// GEMM against the CPU float32 GEMM on bf16-rounded inputs.
void gemm_case(DType da, DType db, DType dc, GemmShape g, bool pad) {
  // storage sizes
  int64_t rowsA = g.transA ? g.K : g.M, colsA = g.transA ? g.M : g.K;
  int64_t rowsB = g.transB ? g.N : g.K, colsB = g.transB ? g.K : g.N;
  g.lda = colsA + (pad ? 3 : 0);
  g.ldb = colsB + (pad ? 5 : 0);
  g.ldc = g.N + (pad ? 1 : 0);
  int64_t sizeA = rowsA * g.lda, sizeB = rowsB * g.ldb, sizeC = g.M * g.ldc;
  int64_t nbA = g.strideA ? g.batch : 1, nbB = g.strideB ? g.batch : 1;
  if (g.strideA) g.strideA = sizeA;
  if (g.strideB) g.strideB = sizeB;
  g.strideC = sizeC;
  std::vector<float> fa = rand_f(sizeA * nbA, -1, 1), fb = rand_f(sizeB * nbB, -1, 1), fc = rand_f(sizeC * g.batch, -1, 1);
  std::vector<uint8_t> a = make(da, fa), b = make(db, fb), c = make(dc, fc);
  std::vector<float> ra(fa.size()), rb(fb.size()), rc(fc.size());
  for (size_t i = 0; i < fa.size(); ++i) ra[i] = bf16_to_f32(f32_to_bf16(fa[i]));
  for (size_t i = 0; i < fb.size(); ++i) rb[i] = bf16_to_f32(f32_to_bf16(fb[i]));
  for (size_t i = 0; i < fc.size(); ++i) rc[i] = static_cast<float>(elem(dc, c, i));
  Dev dA(a), dB(b), dC(c);
  if (g.beta == 0.0f) dC.poison();  // beta == 0 must not read C (NaN * 0 would poison)
  cuda::gemm(cuda::launch_ctx(0), da, dA.p, db, dB.p, dc, dC.p, g);
  std::vector<uint8_t> got = dC.get();
  cpu::gemm(kCpuLaunch, DType::F32, ra.data(), DType::F32, rb.data(), DType::F32, rc.data(), g);
  double num = 0, den = 0;
  size_t unwritten = 0;
  for (int64_t bi = 0; bi < g.batch; ++bi)
    for (int64_t m = 0; m < g.M; ++m)
      for (int64_t n = 0; n < g.N; ++n) {
        size_t i = static_cast<size_t>(bi * g.strideC + m * g.ldc + n);
        double gv = elem(dc, got, i), wv = rc[i];
        if (std::isnan(gv)) ++unwritten;
        num += (gv - wv) * (gv - wv);
        den += wv * wv;
      }
  double rel = std::sqrt(num / (den > 0 ? den : 1));
  char buf[160];
  std::snprintf(buf, sizeof buf, "relative Frobenius error %.3g, %zu NaN outputs", rel, unwritten);
  expect(unwritten == 0 && rel < 1e-2, buf);
  // padding columns of C (between N and ldc) must be untouched
  if (pad && g.beta != 0.0f) {
    bool ok = true;
    for (int64_t bi = 0; bi < g.batch; ++bi)
      for (int64_t m = 0; m < g.M; ++m) {
        size_t i = static_cast<size_t>(bi * g.strideC + m * g.ldc + g.N);
        size_t es = dtype_size(dc);
        if (std::memcmp(&got[i * es], &c[i * es], es) != 0) ok = false;
      }
    expect(ok, "gemm wrote outside the N columns of C");
  }
}
}  // namespace

void add_gemm_cases() {
  struct MNK { int64_t M, N, K; };
  const MNK shapes[] = {{1, 1, 1}, {7, 7, 7}, {129, 257, 63}, {128, 128, 32}, {33, 1000, 17}, {300, 5, 1000}, {16, 8, 0}};
  for (MNK s : shapes)
    for (int tr = 0; tr < 4; ++tr)
      for (DType da : kFloat)
        for (DType db : kFloat)
          for (DType dc : kFloat) {
            bool pad = ((tr + static_cast<int>(da) + static_cast<int>(dc)) & 1) != 0;
            GemmShape g;
            g.M = s.M; g.N = s.N; g.K = s.K;
            g.transA = tr & 1; g.transB = (tr >> 1) & 1;
            g.alpha = 1.0f; g.beta = 0.0f;
            if (s.M == 129 && da == db) { g.alpha = 0.75f; g.beta = 0.5f; }
            add(std::string("gemm ") + std::to_string(s.M) + "x" + std::to_string(s.N) + "x" + std::to_string(s.K) +
                    " tA=" + std::to_string(g.transA) + " tB=" + std::to_string(g.transB) + " " + dtype_name(da) + "*" +
                    dtype_name(db) + "->" + dtype_name(dc) + (pad ? " padded" : ""),
                [=] { gemm_case(da, db, dc, g, pad); });
          }
  // batches: 3 entries, A broadcast (stride 0) / B broadcast / both strided
  for (int mode = 0; mode < 3; ++mode)
    for (int tr = 0; tr < 4; ++tr)
      add("gemm batch=3 mode=" + std::to_string(mode) + " tr=" + std::to_string(tr), [=] {
        GemmShape g;
        g.batch = 3; g.M = 65; g.N = 130; g.K = 47;
        g.transA = tr & 1; g.transB = (tr >> 1) & 1;
        g.strideA = mode == 0 ? 0 : 1;  // nonzero: replaced by the real stride in gemm_case
        g.strideB = mode == 1 ? 0 : 1;
        g.alpha = 1.25f; g.beta = mode == 2 ? -1.0f : 0.0f;
        gemm_case(DType::BF16, DType::F32, DType::F32, g, mode == 2);
      });
}

void add_runtime_cases() {
  add("copy h2d/d2d/d2h roundtrip", [] {
    for (size_t bytes : {size_t(1), size_t(1000), size_t(3) << 20, size_t(20) << 20}) {
      std::vector<uint8_t> h(bytes);
      for (auto& v : h) v = static_cast<uint8_t>(g_rng());
      Dev a(bytes), b(bytes);
      {
        std::vector<uint8_t> tmp = h;  // freed right after copy_h2d returns
        cuda::copy_h2d(0, a.p, tmp.data(), bytes);
      }
      cuda::copy_d2d(0, b.p, a.p, bytes);
      expect(b.get() == h, "roundtrip of " + std::to_string(bytes) + " bytes");
    }
  });
  add("allocator reuse and stats", [] {
    cuda::AllocStats s0 = cuda::alloc_stats(0);
    void* p = cuda::alloc(0, 1000);
    cuda::AllocStats s1 = cuda::alloc_stats(0);
    expect(s1.allocated == s0.allocated + 1024, "1000 bytes round to 1024");
    cuda::release(0, p);
    void* q = cuda::alloc(0, 1001);
    expect(q == p, "a released block of the same rounded size is reused");
    void* z1 = cuda::alloc(0, 0);
    void* z2 = cuda::alloc(0, 0);
    expect(z1 && z2 && z1 != z2 && z1 != q, "zero-byte allocations are distinct blocks");
    void* big = cuda::alloc(0, (size_t(3) << 20) + 1);
    cuda::AllocStats s2 = cuda::alloc_stats(0);
    expect(s2.allocated == s0.allocated + 1024 + 512 + 512 + (size_t(4) << 20), "large sizes round to 2 MiB");
    expect(s2.peak_allocated >= s2.allocated && s2.num_allocs == s0.num_allocs + 5, "peak / count");
    cuda::release(0, q);
    cuda::release(0, z1);
    cuda::release(0, z2);
    cuda::release(0, big);
    cuda::empty_cache(0);
    cuda::AllocStats s3 = cuda::alloc_stats(0);
    expect(s3.allocated == s0.allocated && s3.reserved == s3.allocated, "empty_cache returns cached blocks");
    cuda::reset_peak(0);
    expect(cuda::alloc_stats(0).peak_allocated == s3.allocated, "reset_peak");
    std::string code;
    try { cuda::alloc(0, size_t(1) << 50); } catch (const MomaException& e) { code = e.code(); }
    expect(code == "ERR_OOM", "a 1 PiB allocation throws ERR_OOM, got '" + code + "'");
  });
  // copy_h2d polls its staging buffers with cudaEventQuery; a buffer still in flight answers
  // cudaErrorNotReady, which must not stay behind as the thread's last error (the next launch's
  // check would report "device not ready"). Keep the stream busy so that the uploads find their
  // predecessors pending, upload several small buffers back to back, then launch.
  add("copy_h2d back to back on a busy stream, then a launch", [] {
    const int64_t busy_n = int64_t(1) << 26;
    Dev busy(busy_n * 4);
    for (int round = 0; round < 3; ++round) {
      cuda::random_normal(cuda::launch_ctx(0), DType::F32, busy.p, busy_n, 1, 0, 0.0f, 1.0f);  // ~0.2 ms of device work
      std::vector<std::vector<uint8_t>> host(6);
      std::vector<std::unique_ptr<Dev>> dev;
      for (size_t i = 0; i < host.size(); ++i) {
        host[i].resize(1000 + 37 * i);
        for (auto& v : host[i]) v = static_cast<uint8_t>(g_rng());
        dev.push_back(std::make_unique<Dev>(host[i].size()));
        cuda::copy_h2d(0, dev[i]->p, host[i].data(), host[i].size());
      }
      Dev y(4096 * 4);
      cuda::fill(cuda::launch_ctx(0), DType::F32, y.p, 4096, 1.5);  // its check_launch must not see NotReady
      bool same = true;
      for (size_t i = 0; i < host.size(); ++i) same &= dev[i]->get() == host[i];
      expect(same, "uploaded bytes, round " + std::to_string(round));
      std::vector<float> f = fetch<float>(y, 4096);
      expect(f[0] == 1.5f && f[4095] == 1.5f, "fill after the uploads");
    }
  });
  // A failed cudaMalloc (non-sticky cudaErrorMemoryAllocation) is consumed when ERR_OOM is thrown:
  // the next launch must not report it under its own name.
  add("ERR_OOM leaves no error behind", [] {
    std::string code;
    try { cuda::alloc(0, size_t(1) << 50); } catch (const MomaException& e) { code = e.code(); }
    expect(code == "ERR_OOM", "a 1 PiB allocation throws ERR_OOM, got '" + code + "'");
    Dev y(1000 * 4);
    cuda::fill(cuda::launch_ctx(0), DType::I32, y.p, 1000, 7.0);
    std::vector<int32_t> v = fetch<int32_t>(y, 1000);
    expect(v[0] == 7 && v[999] == 7, "a fill after the failed allocation runs and reports nothing");
  });
  add("device info", [] {
    cuda::DeviceInfo d = cuda::device_info(0);
    expect(!d.name.empty() && d.total_memory > 0 && d.cc_major >= 8 && d.multiprocessors > 0,
           "device_info: " + d.name);
    expect(cuda::runtime_version() > 0 && cuda::driver_version() > 0, "versions");
  });
}

}  // namespace moma::native_test
