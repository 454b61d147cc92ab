// The float half of LongCat-Flash-Lite's N-gram embedding (SPEC-LITE 3.4) on the CPU: the E
// sub-embedding rows of each token (already gathered from the tables) projected to the hidden
// size, summed with the token's own embedding and averaged. Plain C++, never throws.
#pragma once
#include <cstdint>

#include "../dtype.h"

namespace lc::cpu {

// y[t, h] = (base[t, h] + sum_e sum_k rows[e, t, k] * proj[e, h, k]) / (E + 1), fp32 accumulation,
// the tables added in order e = 0..E-1. base, y: f32 [T, H] (y may alias base); rows: f32 or bf16
// [E, T, D]; proj: f32 or bf16 [E, H, D] (post_projs[e].weight stacked).
void ngram_embed(int64_t T, int64_t H, int64_t E, int64_t D, const float* base, const void* rows, DType rt, const void* proj,
                 DType pt, float* y);

}  // namespace lc::cpu
