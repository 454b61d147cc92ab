// A weight matrix [n, k] in device memory, in any stored format (lc::cpu::WeightRef's meaning),
// read element-wise by the CUDA-core kernels (linear.cu, moe.cu; gemv.cuh streams 16-byte units).
#pragma once
#include "common.cuh"
#include "small_util.cuh"

namespace lc::gpu {

struct WView {
  const void* data;
  const float* scale;
  DType dtype;
  int64_t k, kb;  // row length; kb = ceil(k / 128), the fp8 scale row length
  // int4 (lc::cpu::WeightRef's fields): group scales, f16 or bf16, zero points after each scale.
  const uint16_t* group_scale = nullptr;
  int64_t group = 0;
  bool group_scale_f16 = false, group_zero = false;

  __device__ __forceinline__ int64_t int4_groups() const { return (k + group - 1) / group; }
  // The scale s and -z * s of row r's group gi.
  __device__ __forceinline__ void int4_params(int64_t r, int64_t gi, float& s, float& mzs) const {
    util::int4_group_params(group_scale + (r * int4_groups() + gi) * (group_zero ? 2 : 1), group_scale_f16, group_zero, s, mzs);
  }

  __device__ __forceinline__ float at(int64_t r, int64_t c) const {
    switch (dtype) {
      case DType::F32: return static_cast<const float*>(data)[r * k + c];
      case DType::BF16: return bf16_bits_to_f32(static_cast<const uint16_t*>(data)[r * k + c]);
      case DType::FP8_E4M3: return fp8e4m3_to_f32(static_cast<const uint8_t*>(data)[r * k + c]) * scale[(r / 128) * kb + c / 128];
      case DType::I8: return static_cast<const int8_t*>(data)[r * k + c] * scale[r];
      case DType::I4: {
        const uint8_t b = static_cast<const uint8_t*>(data)[r * (int4_groups() * group / 2) + (c >> 5) * 16 + (c & 15)];
        float s, mzs;
        int4_params(r, c / group, s, mzs);
        return fmaf(static_cast<float>((c & 31) < 16 ? b & 15 : b >> 4), s, mzs);
      }
      default: return 0.f;
    }
  }
  // Whether gemv.cuh may stream it in 16-byte units: f32, bf16, fp8 or int8 rows a whole number
  // of units (k % (16 / element size) == 0), int4 (rows always whole units) with k % 4 == 0 (the
  // activation rows gemv.cuh reads 4 columns at a time); 16-byte aligned data, and k < 2^26
  // (32-bit offsets within a warp's rows). (linear.cu's dense int4 GEMV is its own kernel.)
  __host__ __device__ bool units16() const {
    const int64_t per16 = dtype == DType::F32                              ? 4
                          : dtype == DType::BF16                           ? 8
                          : dtype == DType::FP8_E4M3 || dtype == DType::I8 ? 16
                          : dtype == DType::I4                             ? 4
                                                                           : 0;
    return per16 > 0 && k % per16 == 0 && k < (int64_t{1} << 26) && (reinterpret_cast<uintptr_t>(data) & 15) == 0;
  }
};

}  // namespace lc::gpu
