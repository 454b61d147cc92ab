// CPU linear layers: y = x @ W^T with W stored as f32, bf16, fp8_e4m3 (128x128 block scales) or
// int8 (per-row scales). Implementation: linear.cc (dispatch, scalar path), linear_vec.h (the
// vector drivers, once for every ISA) compiled by linear_avx2.cc and linear_avx512.cc;
// linear_kernels.h holds what they all share.
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

// y[t, n] = sum_k x[t, k] * W[n, k], fp32 accumulation. x: f32 or bf16 [t, k]; y: f32 or bf16 [t, n]
// (bf16 output rounds to nearest even).
//
// Paths (picked at run time from isa() and features()):
//   t <= 8  GEMV: every weight byte is read once for all t rows; bandwidth bound.
//   t >  8  GEMM: cache-blocked, register-blocked, multithreaded. With AVX512-BF16 and a bf16
//           weight, x is rounded to bf16 and products are summed by vdpbf16ps in fp32 (relative
//           error about 2^-9 of sum|x w| from rounding x; exact when x is already bf16). Every other
//           path multiplies in fp32 with fp32 accumulation.
// fp8 codes 0x7f / 0xff (NaN) give NaN like the scalar reference.
void linear(int64_t t, const void* x, DType xt, const WeightRef& w, void* y, DType yt);

// How GEMMs (more rows than a decode GEMV) may treat activations, process-wide:
//   BF16 (default): round f32 activations to bf16 where the hardware multiplies bf16 (AVX512-BF16
//        with bf16 weights, CUDA tensor cores); what bf16 engines do, twice the FLOP rate.
//   Highest: every product in fp32, e.g. for tests against a float64 reference.
//   FP8: like BF16, and an fp8 weight times t >= kFp8ActivationMinRows rows quantizes the
//        activations to e4m3 in 1x128 groups first (the DeepSeek-V3 inference recipe; the CUDA
//        e4m3 tensor-core GEMM). The CPU quantizes and dequantizes, then multiplies in fp32.
enum class MatmulPrecision { Highest, BF16, FP8 };
void set_matmul_precision(MatmulPrecision p);
MatmulPrecision matmul_precision();
bool bf16_activations();  // matmul_precision() != Highest
// Decode-sized batches stay weight-only in every precision: they are bandwidth-bound.
constexpr int64_t kFp8ActivationMinRows = 17;

// Symmetric per-row int8 quantization: scale[r] = max|w[r, :]| / 127 (0 for an all-zero row),
// q[r, c] = round_half_even(w[r, c] / scale[r]) clamped to [-127, 127]. w: f32 or bf16 [n, k].
void quantize_int8_rows(int64_t n, int64_t k, const void* w, DType wt, int8_t* q, float* scale);

// Benchmark support (used by ops/bench.cc): sums `bytes` of memory with every pool thread and the
// widest vector loads the ISA has; the result only exists so the reads cannot be optimised away.
double read_sum(const void* p, int64_t bytes);

}  // namespace lc::cpu
