#pragma once
#include <cstdint>

#include "../dtype.h"

namespace lc::cpu {

// A linear layer's weight W[n, k] (nn.Linear layout: y = x @ W^T) in one of the stored formats.
//   f32, bf16: no scale.
//   fp8_e4m3:  scale = weight_scale_inv [ceil(n/128), ceil(k/128)], W = q * scale[r/128][c/128].
//   int8:      scale [n], W = q * scale[r].
struct WeightRef {
  DType dtype = DType::F32;
  const void* data = nullptr;
  const float* scale = nullptr;
  int64_t n = 0, k = 0;
};

// y[t, n] = sum_k x[t, k] * W[n, k], fp32 accumulation. x: f32 or bf16 [t, k]; y: f32 or bf16 [t, n].
void linear(int64_t t, const void* x, DType xt, const WeightRef& w, void* y, DType yt);

}  // namespace lc::cpu
