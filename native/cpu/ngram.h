// The float half of LongCat-Flash-Lite's N-gram embedding (SPEC-LITE 3.4) on the CPU: the E
// sub-embedding rows of each token (already gathered from the tables) projected to the hidden
// size, summed with the token's own embedding and averaged. Plain C++, never throws.
#pragma once
#include <cstdint>

#include "../dtype.h"

namespace lc::cpu {

// y[t, h] = (base[t, h] + sum_e sum_k rows[e, t, k] * proj[e, h, k]) * fp32(1 / (E + 1)), fp32
// accumulation, the tables added in order e = 0..E-1; each table's product is cpu::linear's (so it
// follows the matmul precision: with f32 rows and the default BF16 precision a GEMM rounds them to
// bf16). base, y: f32 [T, H] (y may be base itself); rows: f32 or bf16 [E, T, D]; proj: f32 or bf16
// [E, H, D] (post_projs[e].weight stacked); ws: ngram_workspace_floats(T, H) floats.
void ngram_embed(int64_t T, int64_t H, int64_t E, int64_t D, const float* base, const void* rows, DType rt, const void* proj,
                 DType pt, float* y, float* ws);
int64_t ngram_workspace_floats(int64_t T, int64_t H);

}  // namespace lc::cpu
