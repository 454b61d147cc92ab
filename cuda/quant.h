// CUDA launchers of the FP8 quantization ops (contracts: native/cpu/quant.h, bit-exact with the
// CPU: the same amax, the same IEEE f32 division x / scale, the same integer fp8 encoder).
#pragma once
#include <cstdint>

#include "../native/dtype.h"

namespace lc::gpu {

// cpu::quantize_fp8_act: x f32 [T, K] -> q fp8 [T, K], scale f32 [T, ceil(K/128)]. One warp per group.
// x may also be bf16 (read as its exact f32 value).
void quantize_fp8_act(int64_t T, int64_t K, const void* x, DType xt, uint8_t* q, float* scale, void* stream);
// cpu::quantize_fp8_blocks: one block per 128 x 128 tile.
void quantize_fp8_blocks(int64_t N, int64_t K, const void* w, DType wt, uint8_t* q, float* scale_inv, void* stream);
// cpu::dequantize_fp8_blocks: one block per row.
void dequantize_fp8_blocks(int64_t N, int64_t K, const uint8_t* q, const float* scale_inv, void* w, DType wt, void* stream);

// cpu::quantize_int8_rows: w f32 / bf16 [N, K] -> q int8 [N, K], scale f32 [N]. One block per row.
void quantize_int8_rows(int64_t N, int64_t K, const void* w, DType wt, int8_t* q, float* scale, void* stream);

}  // namespace lc::gpu
