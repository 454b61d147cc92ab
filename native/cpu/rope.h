// Rotary position embedding, interleaved ("GPT-J" / traditional) pairing: SPEC 3.6.
#pragma once
#include <cstdint>

namespace lc::cpu {

// x: f32 [t, heads, head_dim], rotated in place. For every token r and pair i < rope_dim/2 the
// channels (offset + 2i, offset + 2i + 1) of every head are rotated by
// a = float(positions[r]) * inv_freq[i] (an f32 product, as transformers computes it):
//   y0 = x0*c - x1*s,  y1 = x1*c + x0*s,  c = cos(a) * attention_factor, s = sin(a) * attention_factor.
// Channels outside [offset, offset + rope_dim) are untouched.
void rope(int64_t t, int64_t heads, int64_t head_dim, float* x, const int32_t* positions, int64_t offset, int64_t rope_dim,
          const float* inv_freq, float attention_factor);

}  // namespace lc::cpu
