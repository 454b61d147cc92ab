// y[t, n] = x[t, :] . W[n, :] for every weight format (contract: lc::cpu::linear).
// Two paths, chosen by the number of rows:
//   * skinny (t <= 8, decode): one warp per output feature streams its weight row once with
//     16-byte loads and keeps all t dot products in registers;
//   * tiled (prefill): 64x64 output tiles, 32-wide K slabs staged in shared memory as f32.
// The tensor-core (wgmma/TMA) GEMM of the CUDA kernels issue replaces the tiled path.
#include "common.cuh"
#include "kernels.h"

namespace lc::gpu {

struct WeightView {
  DType dtype;
  const void* data;
  const float* scale;
  int64_t n, k, kb;  // kb = ceil(k / 128), the fp8 scale row length

  __device__ __forceinline__ float at(int64_t r, int64_t c) const {
    switch (dtype) {
      case DType::F32: return static_cast<const float*>(data)[r * k + c];
      case DType::BF16: return bf16_bits_to_f32(static_cast<const uint16_t*>(data)[r * k + c]);
      case DType::FP8_E4M3:
        return fp8e4m3_to_f32(static_cast<const uint8_t*>(data)[r * k + c]) * scale[(r / 128) * kb + c / 128];
      case DType::I8: return static_cast<const int8_t*>(data)[r * k + c] * scale[r];
      default: return 0.f;
    }
  }
};

__device__ __forceinline__ float load_x(const void* x, bool bf16, int64_t i) {
  return bf16 ? bf16_bits_to_f32(static_cast<const uint16_t*>(x)[i]) : static_cast<const float*>(x)[i];
}

__device__ __forceinline__ void store_y(void* y, bool bf16, int64_t i, float v) {
  if (bf16)
    static_cast<uint16_t*>(y)[i] = f32_to_bf16_bits(v);
  else
    static_cast<float*>(y)[i] = v;
}

template <int kMaxT>
__global__ void linear_skinny(int t, const void* __restrict__ x, bool xb, WeightView w, void* __restrict__ y, bool yb) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x & 31;
  if (row >= w.n) return;
  float acc[kMaxT];
#pragma unroll
  for (int i = 0; i < kMaxT; ++i) acc[i] = 0.f;
  const bool vec = w.dtype == DType::BF16 && (w.k % 8) == 0 &&
                   (reinterpret_cast<uintptr_t>(w.data) % 16) == 0;
  if (vec) {
    // 8 bf16 weights per 16-byte load; a warp covers 256 consecutive weights per step.
    const uint4* wr = reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(w.data) + row * w.k);
    for (int64_t c8 = lane; c8 < w.k / 8; c8 += 32) {
      uint4 p = wr[c8];
      const uint16_t* h = reinterpret_cast<const uint16_t*>(&p);
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        float wv = bf16_bits_to_f32(h[j]);
#pragma unroll
        for (int i = 0; i < kMaxT; ++i)
          if (i < t) acc[i] += wv * load_x(x, xb, i * w.k + c8 * 8 + j);
      }
    }
  } else {
    for (int64_t c = lane; c < w.k; c += 32) {
      float wv = w.at(row, c);
#pragma unroll
      for (int i = 0; i < kMaxT; ++i)
        if (i < t) acc[i] += wv * load_x(x, xb, i * w.k + c);
    }
  }
#pragma unroll
  for (int i = 0; i < kMaxT; ++i) {
    float v = acc[i];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (lane == 0 && i < t) store_y(y, yb, i * w.n + row, v);
  }
}

constexpr int kTile = 64, kSlab = 32;

__global__ void linear_tiled(int64_t t, const void* __restrict__ x, bool xb, WeightView w, void* __restrict__ y,
                             bool yb) {
  __shared__ float xs[kSlab][kTile + 1];
  __shared__ float ws[kSlab][kTile + 1];
  const int64_t t0 = static_cast<int64_t>(blockIdx.y) * kTile, n0 = static_cast<int64_t>(blockIdx.x) * kTile;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;  // 16 x 16 threads, 4 x 4 outputs each
  float acc[4][4] = {};
  for (int64_t k0 = 0; k0 < w.k; k0 += kSlab) {
    for (int i = threadIdx.x; i < kSlab * kTile; i += 256) {
      int kk = i % kSlab, r = i / kSlab;
      int64_t c = k0 + kk;
      xs[kk][r] = (t0 + r < t && c < w.k) ? load_x(x, xb, (t0 + r) * w.k + c) : 0.f;
      ws[kk][r] = (n0 + r < w.n && c < w.k) ? w.at(n0 + r, c) : 0.f;
    }
    __syncthreads();
#pragma unroll 8
    for (int kk = 0; kk < kSlab; ++kk) {
      float a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = xs[kk][ty * 4 + i], b[i] = ws[kk][tx * 4 + i];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * b[j];
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      int64_t r = t0 + ty * 4 + i, c = n0 + tx * 4 + j;
      if (r < t && c < w.n) store_y(y, yb, r * w.n + c, acc[i][j]);
    }
}

void linear(int64_t t, const void* x, DType xt, const cpu::WeightRef& wr, void* y, DType yt, void* stream) {
  if (t == 0 || wr.n == 0) return;
  auto s = static_cast<cudaStream_t>(stream);
  WeightView w{wr.dtype, wr.data, wr.scale, wr.n, wr.k, (wr.k + 127) / 128};
  bool xb = xt == DType::BF16, yb = yt == DType::BF16;
  if (t <= 8) {
    constexpr int kWarps = 8;
    linear_skinny<8><<<ceil_div(wr.n, kWarps), kWarps * 32, 0, s>>>(static_cast<int>(t), x, xb, w, y, yb);
  } else {
    dim3 grid(ceil_div(wr.n, kTile), ceil_div(t, kTile));
    linear_tiled<<<grid, 256, 0, s>>>(t, x, xb, w, y, yb);
  }
}

}  // namespace lc::gpu
