// The PTX instructions of moma's tensor-core kernels (mma_tiles.cuh's GEMMs, flash_attention.cu),
// wrapped once (sm_80+; private to the CUDA translation units):
//   * cp.async.cg 16 B global -> shared with zero fill, commit_group, wait_group<N>;
//   * ldmatrix.sync.aligned.m8n8.x4 (.trans): lanes 8i..8i+7 give the row addresses of matrix i;
//     register i of lane l receives row l/4, columns 2(l%4), 2(l%4)+1 of matrix i (of its transpose);
//   * mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32: c += a b with the fragment maps of gemm.cu's
//     header comment (g = lane/4, t = lane%4; A a0 (g, 2t..), a1 (g+8, 2t..), a2 (g, 2t+8..),
//     a3 (g+8, 2t+8..); B b0 (k 2t.., n g), b1 (k 2t+8.., n g); C c0,c1 (g, 2t..), c2,c3 (g+8, 2t..)).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace moma::cuda::detail {

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte global -> shared copy, bypassing L1; reads src_bytes (0..16) bytes and zero-fills the rest.
__device__ __forceinline__ void cp_async_16(void* dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(src_bytes)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

template <bool TRANS>
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&d)[4], const uint16_t* p) {
  if constexpr (TRANS) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
                 : "r"(smem_addr(p))
                 : "memory");
  } else {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
                 : "r"(smem_addr(p))
                 : "memory");
  }
}

__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

}  // namespace moma::cuda::detail
