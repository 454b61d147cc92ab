// Rotary position embedding on the CPU (SPEC 3.6): rotates the rope part of q and k by position, from
// int32 positions and f32 inverse frequencies.
#include "rope.h"

#include <algorithm>
#include <cmath>

#include "threadpool.h"

namespace lc::cpu {

void rope(int64_t t, int64_t heads, int64_t head_dim, float* x, const int32_t* positions, int64_t offset, int64_t rope_dim,
          const float* inv_freq, float attention_factor) {
  const int64_t pairs = rope_dim / 2;
  if (t <= 0 || heads <= 0 || pairs <= 0) return;
  // cos/sin are computed once per (token, pair) and applied to every head. Pairs are processed in
  // chunks so the table lives on the stack whatever rope_dim is.
  constexpr int64_t kChunk = 128;
  const int64_t work = heads * rope_dim + pairs * 40;  // ~cost of one token (sincos dominates small heads)
  parallel_for(t, std::max<int64_t>(1, 32768 / std::max<int64_t>(work, 1)), [&](int64_t r0, int64_t r1) {
    float cs[kChunk], sn[kChunk];
    for (int64_t r = r0; r < r1; ++r) {
      const float pos = static_cast<float>(positions[r]);
      float* row = x + r * heads * head_dim + offset;
      for (int64_t p0 = 0; p0 < pairs; p0 += kChunk) {
        const int64_t n = std::min(kChunk, pairs - p0);
        for (int64_t i = 0; i < n; ++i) {
          const float a = pos * inv_freq[p0 + i];  // f32 angle, as the reference computes it
          const double ad = static_cast<double>(a);
          cs[i] = static_cast<float>(std::cos(ad)) * attention_factor;
          sn[i] = static_cast<float>(std::sin(ad)) * attention_factor;
        }
        for (int64_t h = 0; h < heads; ++h) {
          float* v = row + h * head_dim + 2 * p0;
          for (int64_t i = 0; i < n; ++i) {
            const float x0 = v[2 * i], x1 = v[2 * i + 1];
            v[2 * i] = x0 * cs[i] - x1 * sn[i];
            v[2 * i + 1] = x1 * cs[i] + x0 * sn[i];
          }
        }
      }
    }
  });
}

}  // namespace lc::cpu
