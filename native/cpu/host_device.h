// LC_HD: marks small inline functions that both the CPU kernels and the CUDA kernels call
// (__host__ __device__ __forceinline__ under nvcc, plain inline elsewhere, the CUDA emulator
// included), so index math and summation orders shared by a CPU twin and its CUDA kernel live in
// one place.
#pragma once

#ifdef __CUDACC__
#define LC_HD __host__ __device__ __forceinline__
#else
#define LC_HD inline
#endif
