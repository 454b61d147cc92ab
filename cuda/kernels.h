// Launchers of the CUDA kernels, callable from plain C++ (native/ops). Pointers are device
// pointers; `stream` is a cudaStream_t. Launchers never allocate and never synchronize.
#pragma once
#include <cstdint>

#include "../native/cpu/linear.h"
#include "../native/dtype.h"

namespace lc::gpu {

// Same contract as cpu::rmsnorm.
void rmsnorm(int64_t rows, int64_t dim, const float* x, const float* add, float* h_out, const void* w, DType wt, float eps,
             void* y, DType yt, void* stream);

// Rows up to which linear takes the skinny (decode) path: bandwidth-bound, weights read once.
constexpr int64_t kSkinnyMaxRows = 16;

// Same contract as cpu::linear (the WeightRef points at device memory). Beyond kSkinnyMaxRows rows
// it uses tensor cores (activations rounded to bf16) unless the matmul precision is 'highest'.
void linear(int64_t t, const void* x, DType xt, const cpu::WeightRef& w, void* y, DType yt, void* stream);

// The kernel image this build runs on cuda:dev (arch.cu), probed once per device: arch 90 with
// `specific` for sm_90a. Arch-specific kernels are selected by it, not by the compute capability
// (an sm_90 build on an H100 has no wgmma, an sm_80 build on an sm_89 card no e4m3 mma). E_DEVICE
// naming the compute capability and the built archs when the build has no image for the device.
struct KernelImage {
  int arch = 0;
  bool specific = false;
  bool wgmma() const { return arch == 90 && specific; }
  bool fp8_mma() const { return arch >= 89; }
};
const KernelImage& kernel_image(int dev);

// The sm_90a wgmma + TMA GEMM (linear_wgmma.cu) for bf16 x times a bf16 weight with K % 8 == 0 where
// the device runs the sm_90a image; returns false (nothing launched) when the arguments or the
// device do not qualify.
// linear() tries it first when wgmma_enabled() (initially LONGCAT_WGMMA=1): opt-in until it has run
// on a card.
bool linear_wgmma(int64_t t, const void* x, DType xt, const cpu::WeightRef& w, void* y, DType yt, void* stream);
bool wgmma_enabled();
void set_wgmma_enabled(bool on);

// linear for an fp8 weight with fp8 activations: x is quantized to e4m3 in 1x128 groups (cpu::
// quantize_fp8_act) into `workspace` (linear_fp8_workspace_bytes, 256-byte aligned), then the
// block-scaled e4m3 tensor-core GEMM with fp32 promotion per 128-wide K block. Needs
// kernel_image(dev).fp8_mma().
size_t linear_fp8_workspace_bytes(int64_t t, int64_t k);
void linear_fp8(int64_t t, const void* x, DType xt, const cpu::WeightRef& w, void* y, DType yt, void* workspace, void* stream);

}  // namespace lc::gpu
