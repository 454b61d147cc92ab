// Which kernel image of this binary runs on a device. The driver picks one image per device among
// the compiled -gencode targets: the highest SASS arch of the device's major version not above its
// compute capability, an arch-specific sm_XXa only on exactly its compute capability; without one,
// the newest embedded PTX (compute_XX) not above it, compiled by the driver. Devices older than
// sm_80 are refused by name: the kernels use sm_80 instructions (cp.async, ldmatrix, bf16 mma.sync).
// Arch-specific instructions exist only in some images (wgmma in sm_90a; e4m3 mma from sm_89), so
// the launchers select kernels by the image, not by the compute capability: an sm_90 build runs its
// sm_90 image on an H100 (no wgmma there), an sm_80 build its sm_80 image on an sm_89 card (no e4m3
// mma), PTX for compute_120 compiled for a newer GPU has e4m3 mma and no wgmma.
#include <string>

#include "../native/cuda_api.h"
#include "include/common.cuh"
#include "include/per_device.cuh"
#include "kernels.h"

namespace lc::gpu {

#ifndef LC_CUDA_EMU
namespace {
// Compiled once per target: the copy in the image the driver loaded for a device says which one it
// is, 10 * __CUDA_ARCH__ / 10 (e.g. 900), + 1 for the arch-specific feature set (sm_90a: 901).
#if defined(__CUDA_ARCH__) && (defined(__CUDA_ARCH_FEAT_SM90_ALL) || defined(__CUDA_ARCH_SPECIFIC__))
__device__ int g_image_id = __CUDA_ARCH__ + 1;
#elif defined(__CUDA_ARCH__)
__device__ int g_image_id = __CUDA_ARCH__;
#else
__device__ int g_image_id = 0;
#endif
}  // namespace
#endif

const KernelImage& kernel_image(int dev) {
  static PerDevice<KernelImage> images;
  return images.get(dev, [](int d) {
    KernelImage im;
    int major = 0, minor = 0;
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, d);
    cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, d);
    if (major < 8)
      fail(Code::E_DEVICE,
           "cuda:%d has compute capability %d.%d; longcat-flash's CUDA kernels need 8.0 (Ampere) or newer. Use the "
           "CPU backend (backend: 'cpu')",
           d, major, minor);
#ifdef LC_CUDA_EMU
    const lc_emu::Image e = lc_emu::machine().image;
    im.arch = e.arch, im.specific = e.specific;
    const cudaError_t r = e.arch == 0 ? cudaErrorNoKernelImageForDevice : cudaSuccess;
    const std::string built = lc_emu::machine().archs_text;
#else
    int prev = 0;
    check(cudaGetDevice(&prev), "cudaGetDevice");
    check(cudaSetDevice(d), "cudaSetDevice");
    int id = 0;
    // A synchronous copy on the legacy stream: it does not wait for (or join a capture of) the
    // non-blocking streams of cuda/runtime.cu.
    const cudaError_t r = cudaMemcpyFromSymbol(&id, g_image_id, sizeof id);
    cudaGetLastError();
    cudaSetDevice(prev);
    im.arch = id / 10, im.specific = id % 10 == 1;
    const std::string built = cuda::archs();
#endif
    if (r != cudaSuccess || im.arch == 0) {
      fail(Code::E_DEVICE,
           "cuda:%d (compute capability %d.%d) cannot run this build's kernels, built for %s (%s); rebuild "
           "with LONGCAT_CUDA_ARCHS including %d%d",
           d, major, minor, built.c_str(), cudaGetErrorName(r), major, minor);
    }
    return im;
  });
}

}  // namespace lc::gpu
