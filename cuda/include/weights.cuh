// A weight matrix [n, k] in device memory, in any stored format (lc::cpu::WeightRef's meaning),
// read element-wise by the CUDA-core kernels (linear.cu, moe.cu; gemv.cuh streams 16-byte units).
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
      case DType::FP8_E4M3: return fp8e4m3_to_f32(static_cast<const uint8_t*>(data)[r * k + c]) * scale[(r / 128) * kb + c / 128];
      case DType::I8: return static_cast<const int8_t*>(data)[r * k + c] * scale[r];
      default: return 0.f;
    }
  }
  // Whether gemv.cuh may stream it in 16-byte units: f32, bf16, fp8 or int8, rows a whole number of
  // units (k % (16 / element size) == 0), 16-byte aligned data, and k < 2^26 (32-bit offsets
  // within a warp's rows).
  __host__ __device__ bool units16() const {
    const int64_t per16 = dtype == DType::F32                              ? 4
                          : dtype == DType::BF16                           ? 8
                          : dtype == DType::FP8_E4M3 || dtype == DType::I8 ? 16
                                                                           : 0;
    return per16 > 0 && k % per16 == 0 && k < (int64_t{1} << 26) && (reinterpret_cast<uintptr_t>(data) & 15) == 0;
  }
};

}  // namespace lc::gpu
