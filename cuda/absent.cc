// The CUDA runtime (runtime.h) and kernel table (kernels.h) for a build without the CUDA toolkit:
// compiled() is false, device_count() 0, the versions 0, and everything else throws
// MomaException("ERR_DEVICE", "<function>: moma was built without CUDA"). release() of nullptr
// is a no-op so that generic cleanup paths never throw.
#include "../csrc/core/error.h"
#include "kernels.h"
#include "kernels_moe.h"
#include "kernels_nn.h"
#include "runtime.h"

namespace moma::cuda {

namespace {
[[noreturn]] void absent(const char* fn) {
  throw MomaException("ERR_DEVICE", std::string("cuda ") + fn + ": moma was built without CUDA");
}
}  // namespace

bool compiled() { return false; }
int device_count() { return 0; }
int runtime_version() { return 0; }
int driver_version() { return 0; }
DeviceInfo device_info(int) { absent("device_info"); }
void* stream(int) { absent("stream"); }
void* alloc(int, size_t) { absent("alloc"); }
void release(int, void* ptr) {
  if (ptr) absent("release");
}
AllocStats alloc_stats(int) { absent("alloc_stats"); }
void empty_cache(int) { absent("empty_cache"); }
void reset_peak(int) { absent("reset_peak"); }
void copy_h2d(int, void*, const void*, size_t) { absent("copy_h2d"); }
void copy_d2h(int, void*, const void*, size_t) { absent("copy_d2h"); }
void copy_d2d(int, void*, const void*, size_t) { absent("copy_d2d"); }
int32_t* error_word(int) { absent("error_word"); }
void synchronize(int, const char*) { absent("synchronize"); }

void fill(const LaunchCtx&, DType, void*, int64_t, double) { absent("fill"); }
void arange(const LaunchCtx&, DType, void*, int64_t, double, double) { absent("arange"); }
void random_uniform(const LaunchCtx&, DType, void*, int64_t, uint64_t, uint64_t, float, float) {
  absent("random_uniform");
}
void random_normal(const LaunchCtx&, DType, void*, int64_t, uint64_t, uint64_t, float, float) {
  absent("random_normal");
}
void cast(const LaunchCtx&, DType, const void*, DType, void*, int64_t) { absent("cast"); }
void strided_copy(const LaunchCtx&, DType, const void*, const StridedView&, void*, int64_t) { absent("strided_copy"); }
void copy_2d(const LaunchCtx&, const void*, int64_t, void*, int64_t, int64_t, int64_t) { absent("copy_2d"); }
void unary(const LaunchCtx&, UnaryOp, DType, const void*, void*, int64_t, float) { absent("unary"); }
void binary(const LaunchCtx&, BinaryOp, DType, const void*, const StridedView&, const void*, const StridedView&, void*,
            int64_t) {
  absent("binary");
}
void where(const LaunchCtx&, const uint8_t*, const StridedView&, DType, const void*, const StridedView&, const void*,
           const StridedView&, void*, int64_t) {
  absent("where");
}
void reduce(const LaunchCtx&, ReduceOp, DType, const void*, void*, int64_t, int64_t, int64_t) { absent("reduce"); }
void softmax(const LaunchCtx&, bool, DType, const void*, void*, int64_t, int64_t, int64_t) { absent("softmax"); }
void index_select(const LaunchCtx&, DType, const void*, const int32_t*, void*, int64_t, int64_t, int64_t, int64_t) {
  absent("index_select");
}
void scatter_add(const LaunchCtx&, DType, const void*, const int32_t*, void*, int64_t, int64_t, int64_t, int64_t) {
  absent("scatter_add");
}
void gemm(void*, DType, const void*, DType, const void*, DType, void*, const GemmShape&) { absent("gemm"); }
const char* gemm_tile_config(DType, DType, const GemmShape&) { absent("gemm_tile_config"); }

const char* device_error_op(int32_t) { return nullptr; }
const char* device_error_message(int32_t) { return "moma was built without CUDA"; }

// Mixture-of-experts kernels (kernels_moe.h).
void moe_partition(const LaunchCtx&, const int32_t*, int64_t, const MoeLayout&, int32_t*, int32_t*, int32_t*,
                   int32_t*) {
  absent("moe_partition");
}
void moe_router_scores(const LaunchCtx&, const float*, const int32_t*, int64_t, const MoeLayout&, RouterFn, bool,
                       uint64_t, uint64_t, float*) {
  absent("moe_router_scores");
}
void moe_router_scores_backward(const LaunchCtx&, const float*, const float*, const int32_t*, int64_t, const MoeLayout&,
                                RouterFn, float*) {
  absent("moe_router_scores_backward");
}
void moe_route(const LaunchCtx&, const float*, const int32_t*, const int32_t*, const int32_t*, int64_t,
               const MoeLayout&, const RoutingParams&, int64_t, int32_t*, int32_t*, float*, int32_t*, const float*) {
  absent("moe_route");
}
void moe_gather_rows(const LaunchCtx&, DType, const void*, const int32_t*, const float*, int64_t, int64_t, int64_t,
                     void*) {
  absent("moe_gather_rows");
}
void moe_combine(const LaunchCtx&, DType, const void*, const int32_t*, const float*, int64_t, int64_t, int64_t, int64_t,
                 void*) {
  absent("moe_combine");
}
void moe_gate_grad(const LaunchCtx&, DType, const void*, const void*, const int32_t*, const int32_t*, int64_t, int64_t,
                   int64_t, const MoeLayout&, float*) {
  absent("moe_gate_grad");
}
void grouped_gemm(void*, int32_t*, DType, const void*, DType, const void*, bool, const int32_t*, int64_t, int64_t,
                  int64_t, int64_t, DType, void*) {
  absent("grouped_gemm");
}
void grouped_gemm_scaled(void*, int32_t*, DType, const void*, DType, const void*, bool, const int32_t*, const float*,
                         int64_t, int64_t, int64_t, int64_t, DType, void*) {
  absent("grouped_gemm_scaled");
}
void grouped_gemm_swiglu(void*, int32_t*, DType, const void*, DType, const void*, const void*, bool, const int32_t*,
                         int64_t, int64_t, int64_t, int64_t, DType, void*, void*, void*) {
  absent("grouped_gemm_swiglu");
}
void grouped_gemm_wgrad(void*, int32_t*, DType, const void*, DType, const void*, const int32_t*, int64_t, int64_t,
                        int64_t, int64_t, float*) {
  absent("grouped_gemm_wgrad");
}
void swiglu(const LaunchCtx&, DType, const void*, const void*, void*, int64_t) { absent("swiglu"); }
void swiglu_backward(const LaunchCtx&, DType, const void*, const void*, const void*, void*, void*, int64_t) {
  absent("swiglu_backward");
}
void moe_routing_stats(const LaunchCtx&, const int32_t*, const int32_t*, const int32_t*, const float*, const int32_t*,
                       int64_t, const MoeLayout&, float*, float*) {
  absent("moe_routing_stats");
}
void mod_select(const LaunchCtx&, const float*, const int32_t*, int64_t, int64_t, int32_t*) { absent("mod_select"); }
void segment_starts(const LaunchCtx&, const int32_t*, int64_t, int32_t*) { absent("segment_starts"); }


// Transformer kernels (kernels_nn.h).
void rmsnorm(const LaunchCtx&, DType, const void*, const float*, int64_t, int64_t, float, void*, float*) {
  absent("rmsnorm");
}
void rmsnorm_backward(const LaunchCtx&, DType, const void*, const float*, const float*, const void*, int64_t, int64_t,
                      void*, float*) {
  absent("rmsnorm_backward");
}
void layernorm(const LaunchCtx&, DType, const void*, const float*, const float*, int64_t, int64_t, int64_t, float,
               void*, float*, float*) {
  absent("layernorm");
}
void layernorm_backward(const LaunchCtx&, DType, const void*, const float*, const float*, const float*, const void*,
                        int64_t, int64_t, int64_t, void*, float*, float*) {
  absent("layernorm_backward");
}
void rope(const LaunchCtx&, DType, const void*, const int32_t*, int64_t, int64_t, int64_t, float, bool, void*) {
  absent("rope");
}
void attention(const LaunchCtx&, DType, const void*, const void*, const void*, const int32_t*, int64_t, int64_t,
               int64_t, float, void*, float*) {
  absent("attention");
}
void attention_backward(const LaunchCtx&, DType, const void*, const void*, const void*, const void*, const float*,
                        const void*, const int32_t*, int64_t, int64_t, int64_t, float, void*, void*, void*) {
  absent("attention_backward");
}
void cross_entropy(const LaunchCtx&, DType, const void*, const int32_t*, int64_t, int64_t, float*, float*) {
  absent("cross_entropy");
}
void cross_entropy_backward(const LaunchCtx&, DType, const void*, const int32_t*, const float*, const float*,
                            const float*, int64_t, int64_t, void*) {
  absent("cross_entropy_backward");
}
void adamw(const LaunchCtx&, const float*, const float*, const float*, const float*, int64_t, const AdamWParams&,
           float*, float*, float*, uint16_t*) {
  absent("adamw");
}

}  // namespace moma::cuda
