// Token sampling from logits. The result of a row is a pure function of (logits row, params,
// seed, step, row index): no global RNG state, independent of thread count and ISA.
#pragma once
#include <cstdint>

namespace lc::cpu {

struct SampleParams {
  float temperature = 1.0f;  // <= 0: greedy (argmax, ties -> lowest index)
  int64_t top_k = 0;         // 0 (or >= V): off
  float top_p = 1.0f;        // >= 1: off
  float min_p = 0.0f;        // <= 0: off
  uint64_t seed = 0;
  uint64_t step = 0;
};

// Workspace bytes sample() needs for `rows` rows of V logits.
int64_t sample_workspace_bytes(int64_t rows, int64_t V);

// ids[r] = a token drawn from logits[r, :] (f32 [rows, V]). See sampling.cc for the exact filter order.
void sample(int64_t rows, int64_t V, const float* logits, const SampleParams& p, int32_t* ids, void* workspace);

// The uniform double in [0, 1) the sampler draws for (seed, step, row) (exposed for tests/tools).
double sample_uniform(uint64_t seed, uint64_t step, uint64_t row);

}  // namespace lc::cpu
