// RMSNorm and per-head LayerNorm (QK-norm), forward and backward (semantics:
// csrc/cpu/kernels_nn.h). Math in float32, bf16 rounded once on store.
//
// Row kernels (rmsnorm, layernorm, and the dx part of both backwards): a group of LPR lanes per
// row (LPR = 8 when the row is at most 8 16-byte vectors, e.g. QK-norm heads of 64, else a full
// warp), 256-thread blocks, grid-stride over rows. Each lane folds its elements (16-byte vectors
// of 4 f32 / 8 bf16 when D and the pointers allow, else single elements) in a fixed order, then an
// xor-butterfly over the LPR lanes (commutative adds: every lane gets the same bits). The row is
// read again for the output pass (L1/L2 hits for rows of a few KB); LayerNorm makes a separate
// variance pass over (x - mean)^2 (two-pass, no cancellation).
//   FLOPs ~ 4-10 per element; bytes (N D elem) * 2 (forward) or 3 (backward dx) plus the row
//   statistics: memory bound.
// Weight gradients (dw = sum_n dy xh, db = sum_n dy), deterministic without atomics:
//   kernel 1: block (32 columns x 8 row lanes) per (column tile, row block of RB rows); lane ty
//     folds rows n0 + ty, n0 + ty + 8, ... in increasing n, then the 8 partials are added in ty
//     order and written to partial[row block][column] in a scratch buffer (Scratch, scratch.cuh);
//   kernel 2: one thread per column adds the partials in row-block order.
//   RB depends only on N (at least 64, at most 1024 row blocks), so the result is a pure function
//   of the inputs. The scratch traffic is <= 1024 * G * D * 8 bytes; x and dy are read once more
//   than the minimum (the dx pass and the weight pass are separate): ~1.7x compulsory bytes.
#include <cuda_runtime.h>

#include <cstdint>

#include "common.cuh"
#include "kernels_nn.h"
#include "runtime.h"
#include "scratch.cuh"

namespace moma::cuda {
using namespace detail;

namespace {

constexpr int kNormThreads = 256;

// Sum over the LPR lanes of a lane group (xor butterfly; all lanes of the warp must call it).
template <int LPR>
__device__ __forceinline__ float group_sum(float v) {
#pragma unroll
  for (int o = LPR / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xFFFFFFFFu, v, o);
  return v;
}

// Row loop: lane group (lane / LPR) of warp w takes rows w * (32 / LPR) + lane / LPR, grid-stride.
// Every lane of a warp runs the same number of iterations (the shuffles need the full warp);
// `active` says whether the lane's row exists.
struct RowLoop {
  int64_t base, step;  // first row of this warp, rows per grid sweep
  int off, sub;        // this lane's row offset in the warp's rows, lane index within its group
  template <int LPR>
  __device__ static RowLoop make() {
    const int lane = threadIdx.x & 31;
    const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
    const int64_t nwarps = (static_cast<int64_t>(gridDim.x) * blockDim.x) >> 5;
    return RowLoop{warp * (32 / LPR), nwarps * (32 / LPR), lane / LPR, lane % LPR};
  }
};

template <typename T, bool VEC, int LPR>
__global__ void __launch_bounds__(kNormThreads) rmsnorm_kernel(const T* __restrict__ x, const float* __restrict__ w,
                                                               int64_t N, int64_t D, float eps, T* __restrict__ y,
                                                               float* __restrict__ rstd) {
  using IO = RowIO<T, VEC>;
  constexpr int V = IO::N;
  const int64_t nk = D / V;
  const RowLoop L = RowLoop::make<LPR>();
  const int sub = L.sub;
  for (int64_t base = L.base; base < N; base += L.step) {
    const int64_t row = base + L.off;
    const bool active = row < N;
    const T* xr = x + (active ? row : 0) * D;
    float ss = 0.0f;
    if (active)
      for (int64_t k = sub; k < nk; k += LPR) {
        float f[V];
        IO::load(xr, k, f);
#pragma unroll
        for (int e = 0; e < V; ++e) ss += f[e] * f[e];
      }
    ss = group_sum<LPR>(ss);
    if (!active) continue;
    const float r = 1.0f / sqrtf(ss / static_cast<float>(D) + eps);
    if (sub == 0) rstd[row] = r;
    T* yr = y + row * D;
    for (int64_t k = sub; k < nk; k += LPR) {
      float f[V];
      IO::load(xr, k, f);
#pragma unroll
      for (int e = 0; e < V; ++e) f[e] = f[e] * r * w[k * V + e];
      IO::store(yr, k, f);
    }
  }
}

template <typename T, bool VEC, int LPR>
__global__ void __launch_bounds__(kNormThreads) rmsnorm_dx_kernel(const T* __restrict__ x, const float* __restrict__ w,
                                                                  const float* __restrict__ rstd, const T* __restrict__ dy,
                                                                  int64_t N, int64_t D, T* __restrict__ dx) {
  using IO = RowIO<T, VEC>;
  constexpr int V = IO::N;
  const int64_t nk = D / V;
  const RowLoop L = RowLoop::make<LPR>();
  const int sub = L.sub;
  for (int64_t base = L.base; base < N; base += L.step) {
    const int64_t row = base + L.off;
    const bool active = row < N;
    const int64_t off = (active ? row : 0) * D;
    float s = 0.0f;  // sum_d u x, u = dy w
    if (active)
      for (int64_t k = sub; k < nk; k += LPR) {
        float fx[V], fd[V];
        IO::load(x + off, k, fx);
        IO::load(dy + off, k, fd);
#pragma unroll
        for (int e = 0; e < V; ++e) s += fd[e] * w[k * V + e] * fx[e];
      }
    s = group_sum<LPR>(s);
    if (!active) continue;
    const float r = rstd[row];
    const float c = r * r * (s / static_cast<float>(D));
    for (int64_t k = sub; k < nk; k += LPR) {
      float fx[V], fd[V];
      IO::load(x + off, k, fx);
      IO::load(dy + off, k, fd);
#pragma unroll
      for (int e = 0; e < V; ++e) fd[e] = r * (fd[e] * w[k * V + e] - fx[e] * c);
      IO::store(dx + off, k, fd);
    }
  }
}

// Rows of D elements: rows = N * G, row r uses w/b row (r % G) and statistics index r.
template <typename T, bool VEC, int LPR>
__global__ void __launch_bounds__(kNormThreads) layernorm_kernel(const T* __restrict__ x, const float* __restrict__ w,
                                                                 const float* __restrict__ b, int64_t rows, int64_t G,
                                                                 int64_t D, float eps, T* __restrict__ y,
                                                                 float* __restrict__ mean, float* __restrict__ rstd) {
  using IO = RowIO<T, VEC>;
  constexpr int V = IO::N;
  const int64_t nk = D / V;
  const RowLoop L = RowLoop::make<LPR>();
  const int sub = L.sub;
  for (int64_t base = L.base; base < rows; base += L.step) {
    const int64_t row = base + L.off;
    const bool active = row < rows;
    const T* xr = x + (active ? row : 0) * D;
    float s = 0.0f;
    if (active)
      for (int64_t k = sub; k < nk; k += LPR) {
        float f[V];
        IO::load(xr, k, f);
#pragma unroll
        for (int e = 0; e < V; ++e) s += f[e];
      }
    s = group_sum<LPR>(s);
    const float mu = s / static_cast<float>(D);
    float q = 0.0f;
    if (active)
      for (int64_t k = sub; k < nk; k += LPR) {
        float f[V];
        IO::load(xr, k, f);
#pragma unroll
        for (int e = 0; e < V; ++e) {
          const float c = f[e] - mu;
          q += c * c;
        }
      }
    q = group_sum<LPR>(q);
    if (!active) continue;
    const float r = 1.0f / sqrtf(q / static_cast<float>(D) + eps);
    if (sub == 0) {
      mean[row] = mu;
      rstd[row] = r;
    }
    const int64_t wo = (row % G) * D;
    T* yr = y + row * D;
    for (int64_t k = sub; k < nk; k += LPR) {
      float f[V];
      IO::load(xr, k, f);
#pragma unroll
      for (int e = 0; e < V; ++e) f[e] = (f[e] - mu) * r * w[wo + k * V + e] + b[wo + k * V + e];
      IO::store(yr, k, f);
    }
  }
}

template <typename T, bool VEC, int LPR>
__global__ void __launch_bounds__(kNormThreads)
    layernorm_dx_kernel(const T* __restrict__ x, const float* __restrict__ w, const float* __restrict__ mean,
                        const float* __restrict__ rstd, const T* __restrict__ dy, int64_t rows, int64_t G, int64_t D,
                        T* __restrict__ dx) {
  using IO = RowIO<T, VEC>;
  constexpr int V = IO::N;
  const int64_t nk = D / V;
  const RowLoop L = RowLoop::make<LPR>();
  const int sub = L.sub;
  for (int64_t base = L.base; base < rows; base += L.step) {
    const int64_t row = base + L.off;
    const bool active = row < rows;
    const int64_t off = (active ? row : 0) * D;
    const int64_t wo = (active ? row % G : 0) * D;
    const float mu = active ? mean[row] : 0.0f, r = active ? rstd[row] : 0.0f;
    float su = 0.0f, sux = 0.0f;  // sum u, sum u xh
    if (active)
      for (int64_t k = sub; k < nk; k += LPR) {
        float fx[V], fd[V];
        IO::load(x + off, k, fx);
        IO::load(dy + off, k, fd);
#pragma unroll
        for (int e = 0; e < V; ++e) {
          const float u = fd[e] * w[wo + k * V + e];
          su += u;
          sux += u * ((fx[e] - mu) * r);
        }
      }
    su = group_sum<LPR>(su);
    sux = group_sum<LPR>(sux);
    if (!active) continue;
    const float a = su / static_cast<float>(D), c = sux / static_cast<float>(D);
    for (int64_t k = sub; k < nk; k += LPR) {
      float fx[V], fd[V];
      IO::load(x + off, k, fx);
      IO::load(dy + off, k, fd);
#pragma unroll
      for (int e = 0; e < V; ++e) {
        const float u = fd[e] * w[wo + k * V + e];
        const float xh = (fx[e] - mu) * r;
        fd[e] = r * (u - a - xh * c);
      }
      IO::store(dx + off, k, fd);
    }
  }
}

// ---- weight gradients ----------------------------------------------------------------------
constexpr int kWX = 32, kWY = 8;

// Columns c of [N, C = G D]; statistics index n G + c / D (LN) or n (RMS, G = 1).
template <typename T, bool LN>
__global__ void __launch_bounds__(kWX * kWY)
    norm_wgrad_partial_kernel(const T* __restrict__ x, const T* __restrict__ dy, const float* __restrict__ mean,
                              const float* __restrict__ rstd, int64_t N, int64_t G, int64_t D, int64_t rb_rows,
                              float* __restrict__ pw, float* __restrict__ pb) {
  __shared__ float sw[kWY][kWX], sb[kWY][kWX];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t C = G * D;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kWX + tx;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * rb_rows;
  const int64_t n1 = n0 + rb_rows < N ? n0 + rb_rows : N;
  float aw = 0.0f, ab = 0.0f;
  if (c < C) {
    const int64_t g = c / D;
    for (int64_t n = n0 + ty; n < n1; n += kWY) {
      const float xv = to_float(x[n * C + c]), dv = to_float(dy[n * C + c]);
      float xh;
      if constexpr (LN) {
        const int64_t si = n * G + g;
        xh = (xv - mean[si]) * rstd[si];
      } else {
        xh = xv * rstd[n];
      }
      aw += dv * xh;
      ab += dv;
    }
  }
  sw[ty][tx] = aw;
  sb[ty][tx] = ab;
  __syncthreads();
  if (ty == 0 && c < C) {
    float w = 0.0f, b = 0.0f;
#pragma unroll
    for (int k = 0; k < kWY; ++k) {
      w += sw[k][tx];
      b += sb[k][tx];
    }
    pw[blockIdx.y * C + c] = w;
    if (LN) pb[blockIdx.y * C + c] = b;
  }
}

__global__ void norm_wgrad_final_kernel(const float* __restrict__ pw, const float* __restrict__ pb, int64_t nblk,
                                        int64_t C, float* __restrict__ dw, float* __restrict__ db) {
  for (int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < C;
       c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float w = 0.0f, b = 0.0f;
    for (int64_t k = 0; k < nblk; ++k) {
      w += pw[k * C + c];
      if (db) b += pb[k * C + c];
    }
    dw[c] = w;
    if (db) db[c] = b;
  }
}

// Rows per block of the weight-gradient partials: >= 64, and at most 1024 blocks.
int64_t wgrad_rows_per_block(int64_t N) {
  int64_t rb = (N + 1023) / 1024;
  if (rb < 64) rb = 64;
  return rb;
}

template <typename T, bool LN>
void launch_wgrad(cudaStream_t s, const T* x, const T* dy, const float* mean, const float* rstd, int64_t N, int64_t G,
                  int64_t D, float* dw, float* db) {
  const int64_t C = G * D;
  if (C <= 0) return;
  const int64_t rb = wgrad_rows_per_block(N);
  const int64_t nblk = N > 0 ? (N + rb - 1) / rb : 0;
  int dev = 0;
  MOMA_CUDA_CHECK(cudaGetDevice(&dev));
  // Partial sums; back to the cache when this returns or throws. Stream-ordered reuse: later work
  // on the one stream runs after the kernels below.
  Scratch partials(dev, static_cast<size_t>(nblk * C * (LN ? 2 : 1)) * sizeof(float));
  float* scratch = partials.as<float>();
  if (nblk > 0) {
    float* pb = LN ? scratch + nblk * C : nullptr;
    dim3 grid(static_cast<unsigned>((C + kWX - 1) / kWX), static_cast<unsigned>(nblk));
    norm_wgrad_partial_kernel<T, LN><<<grid, dim3(kWX, kWY), 0, s>>>(x, dy, mean, rstd, N, G, D, rb, scratch, pb);
    check_launch("norm weight gradient (partials)");
  }
  norm_wgrad_final_kernel<<<grid_for(C), kThreads, 0, s>>>(scratch, LN ? scratch + nblk * C : nullptr, nblk, C, dw,
                                                           LN ? db : nullptr);
  check_launch("norm weight gradient (sum)");
}

unsigned row_blocks(int64_t rows, int lpr) {
  const int64_t rows_per_block = (kNormThreads / 32) * (32 / lpr);
  int64_t b = (rows + rows_per_block - 1) / rows_per_block;
  if (b > (int64_t(1) << 20)) b = int64_t(1) << 20;
  return static_cast<unsigned>(b < 1 ? 1 : b);
}

// Calls f(tag<T, VEC, LPR>) for the row kernels of dtype dt, with VEC when D is a multiple of the
// vector width and every pointer in `ptrs` is 16-byte aligned.
template <bool VEC_, int LPR_, typename T_>
struct RowCfg {
  using T = T_;
  static constexpr bool VEC = VEC_;
  static constexpr int LPR = LPR_;
};

template <typename T, typename F>
void pick_row_cfg(int64_t D, bool aligned, F&& f) {
  constexpr int N = Vec16<T>::N;
  if (aligned && D % N == 0) {
    if (D / N <= 8) f(RowCfg<true, 8, T>{});
    else f(RowCfg<true, 32, T>{});
  } else {
    if (D <= 8) f(RowCfg<false, 8, T>{});
    else f(RowCfg<false, 32, T>{});
  }
}

template <typename F>
void dispatch_float(DType dt, const char* op, F&& f) {
  switch (dt) {
    case DType::F32: f(float{}); break;
    case DType::BF16: f(bf16_t{}); break;
    default: bad_dtype(op, dt);
  }
}

}  // namespace

void rmsnorm(const LaunchCtx& ctx, DType dt, const void* x, const float* w, int64_t N, int64_t D, float eps, void* y,
             float* rstd) {
  dispatch_float(dt, "rmsnorm", [&](auto tag) {
    using E = decltype(tag);
    if (N <= 0 || D <= 0) return;
    pick_row_cfg<E>(D, aligned16(x) && aligned16(y), [&](auto cfg) {
      using C = decltype(cfg);
      rmsnorm_kernel<E, C::VEC, C::LPR><<<row_blocks(N, C::LPR), kNormThreads, 0, as_stream(ctx.stream)>>>(
          static_cast<const E*>(x), w, N, D, eps, static_cast<E*>(y), rstd);
    });
    check_launch("rmsnorm");
  });
}

void rmsnorm_backward(const LaunchCtx& ctx, DType dt, const void* x, const float* w, const float* rstd, const void* dy,
                      int64_t N, int64_t D, void* dx, float* dw) {
  cudaStream_t s = as_stream(ctx.stream);
  dispatch_float(dt, "rmsnorm_backward", [&](auto tag) {
    using E = decltype(tag);
    if (D <= 0) return;
    if (N > 0) {
      pick_row_cfg<E>(D, aligned16(x) && aligned16(dy) && aligned16(dx), [&](auto cfg) {
        using C = decltype(cfg);
        rmsnorm_dx_kernel<E, C::VEC, C::LPR><<<row_blocks(N, C::LPR), kNormThreads, 0, s>>>(
            static_cast<const E*>(x), w, rstd, static_cast<const E*>(dy), N, D, static_cast<E*>(dx));
      });
      check_launch("rmsnorm_backward");
    }
    launch_wgrad<E, false>(s, static_cast<const E*>(x), static_cast<const E*>(dy), nullptr, rstd, N, 1, D, dw, nullptr);
  });
}

void layernorm(const LaunchCtx& ctx, DType dt, const void* x, const float* w, const float* b, int64_t N, int64_t G,
               int64_t D, float eps, void* y, float* mean, float* rstd) {
  dispatch_float(dt, "layernorm", [&](auto tag) {
    using E = decltype(tag);
    const int64_t rows = N * G;
    if (rows <= 0 || D <= 0) return;
    pick_row_cfg<E>(D, aligned16(x) && aligned16(y), [&](auto cfg) {
      using C = decltype(cfg);
      layernorm_kernel<E, C::VEC, C::LPR><<<row_blocks(rows, C::LPR), kNormThreads, 0, as_stream(ctx.stream)>>>(
          static_cast<const E*>(x), w, b, rows, G, D, eps, static_cast<E*>(y), mean, rstd);
    });
    check_launch("layernorm");
  });
}

void layernorm_backward(const LaunchCtx& ctx, DType dt, const void* x, const float* w, const float* mean,
                        const float* rstd, const void* dy, int64_t N, int64_t G, int64_t D, void* dx, float* dw,
                        float* db) {
  cudaStream_t s = as_stream(ctx.stream);
  dispatch_float(dt, "layernorm_backward", [&](auto tag) {
    using E = decltype(tag);
    if (G <= 0 || D <= 0) return;
    const int64_t rows = N * G;
    if (rows > 0) {
      pick_row_cfg<E>(D, aligned16(x) && aligned16(dy) && aligned16(dx), [&](auto cfg) {
        using C = decltype(cfg);
        layernorm_dx_kernel<E, C::VEC, C::LPR><<<row_blocks(rows, C::LPR), kNormThreads, 0, s>>>(
            static_cast<const E*>(x), w, mean, rstd, static_cast<const E*>(dy), rows, G, D, static_cast<E*>(dx));
      });
      check_launch("layernorm_backward");
    }
    launch_wgrad<E, true>(s, static_cast<const E*>(x), static_cast<const E*>(dy), mean, rstd, N, G, D, dw, db);
  });
}

}  // namespace moma::cuda
