// RMSNorm on the CPU (SPEC 3.2), with the residual add fused: h = x (+ add); y = weight * h / rms(h).
#pragma once
#include <cstdint>

#include "../dtype.h"

namespace lc::cpu {

// RMSNorm over the last dimension, with the residual add fused in front:
//   h = x (+ add);  if h_out: h_out = h;  y = w * h / sqrt(mean(h^2) + eps)
// x, add, h_out: f32 [rows, dim] (h_out may alias x); w: f32 or bf16 [dim]; y: f32 or bf16.
void rmsnorm(int64_t rows, int64_t dim, const float* x, const float* add, float* h_out, const void* w, DType wt, float eps,
             void* y, DType yt);

}  // namespace lc::cpu
