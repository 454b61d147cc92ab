// CUDA launcher of RoPE (contract: native/cpu/rope.h). x is rotated in place.
#pragma once
#include <cstdint>

namespace lc::gpu {

// cpu::rope: angle a = float(pos) * inv_freq[i] in f32, cos/sin evaluated in f64 and rounded to
// f32, times attention_factor; y0 = x0*c - x1*s, y1 = x1*c + x0*s without FMA contraction, so the
// result is bit-exact with the CPU whenever CUDA's f64 cos/sin round to the same f32 as glibc's.
void rope(int64_t t, int64_t heads, int64_t head_dim, float* x, const int32_t* positions, int64_t offset, int64_t rope_dim,
          const float* inv_freq, float attention_factor, void* stream);

}  // namespace lc::gpu
