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

// Rows up to which linear takes the skinny (decode) path: bandwidth-bound, weights read once.
constexpr int64_t kSkinnyMaxRows = 16;

// Same contract as cpu::linear (the WeightRef points at device memory). Beyond kSkinnyMaxRows rows
// it uses tensor cores (activations rounded to bf16) unless the matmul precision is 'highest'.
void linear(int64_t t, const void* x, DType xt, const cpu::WeightRef& w, void* y, DType yt, void* stream);

// The sm_90a wgmma + TMA GEMM (wgmma_gemm.cu) for bf16 x times a bf16 weight with K % 8 == 0 on an
// sm_90 device; returns false (nothing launched) when the arguments or the device do not qualify.
// linear() tries it first when wgmma_enabled() (initially LONGCAT_WGMMA=1): opt-in until it has run
// on a card.
bool linear_wgmma(int64_t t, const void* x, DType xt, const cpu::WeightRef& w, void* y, DType yt, void* stream);
bool wgmma_enabled();
void set_wgmma_enabled(bool on);

// Compute capability (10 * major + minor) of the current device. The e4m3 tensor-core path
// (linear_fp8, the fp8 MoE) needs 89 or more.
int compute_capability();

// linear for an fp8 weight with fp8 activations: x is quantized to e4m3 in 1x128 groups (cpu::
// quantize_fp8_act) into `workspace` (linear_fp8_workspace_bytes, 256-byte aligned), then the
// block-scaled e4m3 tensor-core GEMM with fp32 promotion per 128-wide K block. Needs sm_89+.
size_t linear_fp8_workspace_bytes(int64_t t, int64_t k);
void linear_fp8(int64_t t, const void* x, DType xt, const cpu::WeightRef& w, void* y, DType yt, void* workspace, void* stream);

}  // namespace lc::gpu
