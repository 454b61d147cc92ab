// Launchers of the CUDA kernels, callable from plain C++ (native/ops). Pointers are device
// pointers; `stream` is a cudaStream_t. Launchers never allocate and never synchronize.
#pragma once
#include <cstdint>

#include "../native/cpu/linear.h"
#include "../native/dtype.h"

namespace lc::gpu {

// Same contract as cpu::rmsnorm.
void rmsnorm(int64_t rows, int64_t dim, const float* x, const float* add, float* h_out, const void* w, DType wt,
             float eps, void* y, DType yt, void* stream);

// Same contract as cpu::linear (the WeightRef points at device memory).
void linear(int64_t t, const void* x, DType xt, const cpu::WeightRef& w, void* y, DType yt, void* stream);

}  // namespace lc::gpu
