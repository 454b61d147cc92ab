// RMSNorm with the residual add fused in front (contract: lc::cpu::rmsnorm). One block per row.
#include "include/common.cuh"
#include "kernels.h"

namespace lc::gpu {

template <int kThreads>
__device__ float block_sum(float v) {
  __shared__ float warp_sums[kThreads / 32];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x >> 5] = v;
  __syncthreads();
  float r = 0;
  for (int i = 0; i < kThreads / 32; ++i) r += warp_sums[i];
  return r;
}

template <int kThreads, bool kBf16W, bool kBf16Y>
__global__ void rmsnorm_kernel(int64_t dim, const float* x, const float* add, float* h_out, const void* __restrict__ w, float eps,
                               void* y) {  // x, add, h_out and y may alias (no __restrict__)
  const int64_t row = blockIdx.x;
  const float* xr = x + row * dim;
  const float* ar = add ? add + row * dim : nullptr;
  float* hr = h_out ? h_out + row * dim : nullptr;
  float ss = 0;
  for (int64_t i = threadIdx.x; i < dim; i += kThreads) {
    float h = ar ? xr[i] + ar[i] : xr[i];
    ss += h * h;
  }
  const float inv = rsqrtf(block_sum<kThreads>(ss) / static_cast<float>(dim) + eps);
  // x and h_out may alias: read every x before this row's first write (block_sum synchronized).
  for (int64_t i = threadIdx.x; i < dim; i += kThreads) {
    float h = ar ? xr[i] + ar[i] : xr[i];
    if (hr) hr[i] = h;
    float wi = kBf16W ? bf16_bits_to_f32(static_cast<const uint16_t*>(w)[i]) : static_cast<const float*>(w)[i];
    float v = h * inv * wi;
    if (kBf16Y)
      static_cast<uint16_t*>(y)[row * dim + i] = f32_to_bf16_bits(v);
    else
      static_cast<float*>(y)[row * dim + i] = v;
  }
}

void rmsnorm(int64_t rows, int64_t dim, const float* x, const float* add, float* h_out, const void* w, DType wt, float eps,
             void* y, DType yt, void* stream) {
  if (rows == 0) return;
  constexpr int kThreads = 256;
  auto s = static_cast<cudaStream_t>(stream);
  bool wb = wt == DType::BF16, yb = yt == DType::BF16;
  dim3 grid(static_cast<unsigned>(rows));
  if (wb && yb)
    rmsnorm_kernel<kThreads, true, true><<<grid, kThreads, 0, s>>>(dim, x, add, h_out, w, eps, y);
  else if (wb)
    rmsnorm_kernel<kThreads, true, false><<<grid, kThreads, 0, s>>>(dim, x, add, h_out, w, eps, y);
  else if (yb)
    rmsnorm_kernel<kThreads, false, true><<<grid, kThreads, 0, s>>>(dim, x, add, h_out, w, eps, y);
  else
    rmsnorm_kernel<kThreads, false, false><<<grid, kThreads, 0, s>>>(dim, x, add, h_out, w, eps, y);
}

}  // namespace lc::gpu
