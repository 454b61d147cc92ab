// A weight matrix [n, k] in device memory, in any stored format (lc::cpu::WeightRef's meaning),
// read element-wise or 8 at a time by the CUDA-core kernels (linear.cu skinny/tiled, moe.cu).
#pragma once
#include "common.cuh"

namespace lc::gpu {

struct WView {
  const void* data;
  const float* scale;
  DType dtype;
  int64_t k, kb;  // row length; kb = ceil(k / 128), the fp8 scale row length

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
  // Whether at8() may be used (at every c % 8 == 0).
  __host__ __device__ bool vec8() const { return k % 8 == 0 && (reinterpret_cast<uintptr_t>(data) & 15) == 0; }
  // Weights [r, c .. c + 8); requires vec8() and c % 8 == 0.
  __device__ __forceinline__ void at8(int64_t r, int64_t c, float (&v)[8]) const {
    const int64_t i = r * k + c;
    switch (dtype) {
      case DType::F32: {
        const float4 a = *reinterpret_cast<const float4*>(static_cast<const float*>(data) + i);
        const float4 b = *reinterpret_cast<const float4*>(static_cast<const float*>(data) + i + 4);
        v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
        break;
      }
      case DType::BF16: {
        const uint4 p = *reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(data) + i);
        const uint32_t u[4] = {p.x, p.y, p.z, p.w};
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          v[2 * j] = __uint_as_float(u[j] << 16);
          v[2 * j + 1] = __uint_as_float(u[j] & 0xffff0000u);
        }
        break;
      }
      case DType::FP8_E4M3: {
        const uint2 p = *reinterpret_cast<const uint2*>(static_cast<const uint8_t*>(data) + i);
        const float s = scale[(r / 128) * kb + c / 128];  // 8 | 128: one scale block
#pragma unroll
        for (int j = 0; j < 8; ++j) v[j] = fp8e4m3_to_f32(static_cast<uint8_t>(((j < 4 ? p.x : p.y) >> (8 * (j & 3))) & 0xffu)) * s;
        break;
      }
      case DType::I8: {
        const uint2 p = *reinterpret_cast<const uint2*>(static_cast<const int8_t*>(data) + i);
        const float s = scale[r];
#pragma unroll
        for (int j = 0; j < 8; ++j)
          v[j] = static_cast<float>(static_cast<int8_t>(((j < 4 ? p.x : p.y) >> (8 * (j & 3))) & 0xffu)) * s;
        break;
      }
      default:
#pragma unroll
        for (int j = 0; j < 8; ++j) v[j] = 0.f;
    }
  }
  // Whether at16() may be used: a one-byte format (fp8, int8), k % 16 == 0, 16-byte aligned data.
  __host__ __device__ bool vec16() const {
    return (dtype == DType::FP8_E4M3 || dtype == DType::I8) && k % 16 == 0 && (reinterpret_cast<uintptr_t>(data) & 15) == 0;
  }
  // Weights [r, c .. c + 16) of a one-byte format with one 16-byte load; requires vec16(), c % 16 == 0.
  __device__ __forceinline__ void at16(int64_t r, int64_t c, float (&v)[16]) const {
    const uint4 p = *reinterpret_cast<const uint4*>(static_cast<const uint8_t*>(data) + r * k + c);
    const uint32_t u[4] = {p.x, p.y, p.z, p.w};
    const bool fp8 = dtype == DType::FP8_E4M3;
    const float s = fp8 ? scale[(r / 128) * kb + c / 128] : scale[r];  // 16 | 128: one scale block
#pragma unroll
    for (int j = 0; j < 16; ++j) {
      const uint32_t b = (u[j >> 2] >> (8 * (j & 3))) & 0xffu;
      v[j] = (fp8 ? fp8e4m3_to_f32(static_cast<uint8_t>(b)) : static_cast<float>(static_cast<int8_t>(b))) * s;
    }
  }
};

}  // namespace lc::gpu
