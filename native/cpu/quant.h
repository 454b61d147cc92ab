// Format conversions and FP8 (e4m3fn) quantization. Every conversion is bit-exact with the scalar
// reference in numeric.h (round to nearest even, fp8 saturating to +-448, NaN -> NaN) on every ISA.
#pragma once
#include <cstdint>

#include "../dtype.h"

namespace lc::cpu {

// The activation-quantization guard: sx = max(amax, kFp8Tiny) / 448 (SGLang's eps).
constexpr float kFp8Tiny = 1e-10f;
constexpr int64_t kFp8Block = 128;

// dst[i] = convert(src[i]) for n elements; st, dt in {f32, bf16, f16, fp8_e4m3}.
// Conversions go through f32 (exact for every narrow source), so there is one rounding.
void convert(int64_t n, const void* src, DType st, void* dst, DType dt);

// SPEC 7.3, per token and 1 x 128 group g (the last group may be shorter):
//   scale[t, g] = max(amax(|x[t, g]|), kFp8Tiny) / 448,  q[t, k] = fp8(x[t, k] / scale[t, g]).
// x: f32 [T, K]; q: fp8 [T, K]; scale: f32 [T, ceil(K/128)].
void quantize_fp8_act(int64_t T, int64_t K, const float* x, uint8_t* q, float* scale);

// One group of quantize_fp8_act (n <= 128 values), on the calling thread: q[i] = fp8(x[i] / s),
// returns s = max(amax(|x|), kFp8Tiny) / 448. The fp8 latent KV cache (mla.h) quantizes with it.
float quantize_fp8_group(int64_t n, const float* x, uint8_t* q);

// out[i] = float32(q[i]) * scale for n values (one f32 rounding), on the calling thread.
void dequantize_fp8_group(int64_t n, const uint8_t* q, float scale, float* out);

// SPEC 7.2 quantization side, 128 x 128 weight blocks (edge blocks may be smaller):
//   scale_inv[bn, bk] = max(amax(|block|), kFp8Tiny) / 448,  q = fp8(w / scale_inv).
// w: f32 or bf16 [N, K]; q: fp8 [N, K]; scale_inv: f32 [ceil(N/128), ceil(K/128)].
void quantize_fp8_blocks(int64_t N, int64_t K, const void* w, DType wt, uint8_t* q, float* scale_inv);

// SPEC 7.2: w[r, c] = float32(q[r, c]) * scale_inv[r / 128, c / 128], stored as f32 or bf16 (RNE).
void dequantize_fp8_blocks(int64_t N, int64_t K, const uint8_t* q, const float* scale_inv, void* w, DType wt);

// GPTQ's packed int4 codes onto the int4 format's codes (linear.h), groups of g columns:
// qweight int32 [K / 8, N] holds code (r, c) in bits 4 (c % 8) .. + 3 of word [c / 8, r]
// (K % 8 == 0); q [N, int4_row_bytes(K, g)] gets the same codes, padding columns 8.
void repack_gptq_int4(int64_t N, int64_t K, int64_t g, const int32_t* qweight, uint8_t* q);

}  // namespace lc::cpu
