// MOMA_HD marks functions compiled for both host and device (shared by csrc/cpu and cuda/).
#pragma once
#if defined(__CUDACC__)
#define MOMA_HD __host__ __device__ __forceinline__
#else
#define MOMA_HD inline
#endif
