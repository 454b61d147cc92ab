// CPU linear layers: y = x @ W^T with W stored as f32, bf16, fp8_e4m3 (128x128 block scales),
// int8 (per-row scales) or int4 (per-group scales and zero points). Implementation: linear.cc (dispatch, scalar path), linear_vec.h (the
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
//   int4:      the int4 format below; scale unused (group_scale, group_zero, group instead).
//
// The int4 format (the one description; the binding, the CUDA kernels, the quantizer and the GPTQ
// loader all follow it). Weight-only, one row per output feature, groups of g columns along k
// (g a multiple of 32, 32 <= g <= 4096), G = ceil(k / g) groups per row:
//   codes:  an int8 tensor [n, G, g / 2]: per row G * g / 2 bytes of 4-bit codes q in 0..15. Each
//           32-column block c0 .. c0 + 31 of a row is 16 bytes; byte j holds column c0 + j in its low
//           nibble and column c0 + 16 + j in its high nibble (so a 16-byte load widens to the codes
//           of 32 consecutive columns with one mask and one shift). Columns >= k are padding (any code).
//   scales: bf16 or f16 bits, [n, G] (symmetric: zero point 8) or [n, G, 2] (per group: scale s, then
//           the zero point z as a number, e.g. 0..15, or 1..16 from GPTQ's qzeros + 1 convention).
//   W[r, c] = (q[r, c] - z) * s of group c / g, computed as fma(q, s, -z * s) in fp32: exact for bf16
//           scales and integer z (12 and 16 significant bits), so every path sees the same weights.
struct WeightRef {
  DType dtype = DType::F32;
  const void* data = nullptr;
  const float* scale = nullptr;
  int64_t n = 0, k = 0;
  // int4 only.
  const uint16_t* group_scale = nullptr;  // [n, G] or [n, G, 2] bf16 / f16 bits
  bool group_scale_f16 = false;           // f16 bits (GPTQ's fp16 scales), else bf16
  bool group_zero = false;                // [n, G, 2]: zero points stored after each scale
  int64_t group = 0;                      // g
};

// The int4 format's sizes: groups per row and bytes per row.
inline int64_t int4_groups(int64_t k, int64_t g) { return (k + g - 1) / g; }
inline int64_t int4_row_bytes(int64_t k, int64_t g) { return int4_groups(k, g) * g / 2; }
constexpr int64_t kInt4MaxGroup = 4096;

// y[t, n] = sum_k x[t, k] * W[n, k], fp32 accumulation. x: f32 or bf16 [t, k]; y: f32 or bf16 [t, n]
// (bf16 output rounds to nearest even).
//
// Paths (picked at run time from isa() and features()):
//   t <= 8  GEMV: every weight byte is read once for all t rows; bandwidth bound. (f32 weights
//           at 9-64 rows on AVX2 / AVX-512: the GEMV in passes of 8 rows, each thread's weight
//           rows reread from its L2, so a row's result is its result at <= 8 rows, or alone.) With
//           AVX512-BF16, a bf16 weight at 2-10 rows and
//           x bf16 or precision other than 'highest': x rounded to bf16 as in the GEMM below, the
//           products summed by vdpbf16ps (each output's bits its x row's and weight row's alone,
//           whatever t or the thread count; 9-10 rows too, although the GEMM takes other formats
//           there). The same for an fp8 weight at 2-8 rows (AVX512-BF16 + VBMI, precision other
//           than 'highest'): its e4m3 codes exact in bf16, x times the block scale (per 128 columns
//           of a 128-row block) rounded to bf16 instead of x.
//   t >  8  GEMM: cache-blocked, register-blocked, multithreaded; each weight panel is decoded
//           once per call. With AVX512-BF16 and a bf16 weight, x is rounded to bf16 and products
//           are summed by vdpbf16ps in fp32 (relative error about 2^-9 of sum|x w| from rounding x;
//           exact when x is already bf16). At precision other than 'highest' an fp8 / int8 / int4
//           weight takes the same path, its panels dequantized to bf16 (fp8, int4: value rounded to
//           nearest even, a rounding like x's, as the CUDA tensor-core tiles do; int8: the exact
//           codes, the row scale applied to the sums). Every other path multiplies in fp32 with
//           fp32 accumulation. (bf16 weights at 11-16 rows with k a multiple of 32: the same
//           products with x's rows in the vector lanes, summed in another fixed order; a row's
//           result there is not bit for bit the one it gets at other row counts.)
// fp8 codes 0x7f / 0xff (NaN) give NaN like the scalar reference.
void linear(int64_t t, const void* x, DType xt, const WeightRef& w, void* y, DType yt);

// Rows [r0, r1) of W as a weight of their own: linear(1, x, xt, weight_rows(w, r0, r1), y + r0, yt)
// gives y's entries [r0, r1) of the whole call, bit for bit (each GEMV row is summed on its own).
// r0 a multiple of weight_rows_align(w): 128 for fp8 (its block scales), else 1.
WeightRef weight_rows(const WeightRef& w, int64_t r0, int64_t r1);
inline int64_t weight_rows_align(const WeightRef& w) { return w.dtype == DType::FP8_E4M3 ? 128 : 1; }
// The bytes of W (codes and scales) a call streams.
int64_t weight_bytes(const WeightRef& w);

// How GEMMs (more rows than a decode GEMV) may treat activations, process-wide:
//   BF16 (default): round f32 activations, and dequantized fp8 / int4 weights, to bf16 where the
//        hardware multiplies bf16 (AVX512-BF16 GEMMs, CUDA tensor cores); what bf16 engines do,
//        twice the FLOP rate.
//   Highest: every product in fp32, e.g. for tests against a float64 reference.
//   (BF16 and FP8 also let an int4 GEMV (t <= 8, groups a multiple of 128) and an int8 GEMV (t <= 8)
//   on AVX2 or AVX512-VNNI (linear_i8act.h; AVX-512 without VNNI keeps fp32) quantize x to int8 per
//   row and 128 columns (scale max|x| / 127) and sum code x int8 products exactly in int32: error
//   at most 1/254 of each 128-column block's max |x| times the weights' magnitudes (int8 weights:
//   decode KLD against bf16 small 2.4e-3 -> 3.7e-3, medium 4.6e-3 -> 7.1e-3, bench/RESULTS.md
//   wt16-int8). An int8 GEMV's x block holding a NaN or an infinity gives NaN. The CUDA decode
//   GEMVs keep fp32 activations at every precision: there CPU and CUDA agree within this bound.)
//   FP8: like BF16, and an fp8 weight times t >= kFp8ActivationMinRows rows quantizes the
//        activations to e4m3 in 1x128 groups first (the DeepSeek-V3 inference recipe; the CUDA
//        e4m3 tensor-core GEMM). The CPU quantizes and dequantizes, then multiplies in fp32
//        (the fp32 GEMM: those products stay exact).
enum class MatmulPrecision { Highest, BF16, FP8 };
void set_matmul_precision(MatmulPrecision p);
MatmulPrecision matmul_precision();
bool bf16_activations();  // matmul_precision() != Highest
// Decode-sized batches stay weight-only in every precision: they are bandwidth-bound.
constexpr int64_t kFp8ActivationMinRows = 17;

// Symmetric per-row int8 quantization: scale[r] = max|w[r, :]| / 127 (0 for an all-zero row),
// q[r, c] = round_half_even(w[r, c] / scale[r]) clamped to [-127, 127]. w: f32 or bf16 [n, k].
void quantize_int8_rows(int64_t n, int64_t k, const void* w, DType wt, int8_t* q, float* scale);

// Symmetric int4 quantization into the int4 format above, groups of g columns: per row and group,
// s = max|w| / 7 (0 for an all-zero group) stored as f16 (GPTQ's scale dtype; rounded to nearest
// even), q = 8 + round_half_even(w / s) clamped to [1, 15] with the stored s (so a weight on the
// grid (q - 8) * s comes back exactly; the code 0 is unused). w: f32 or bf16 [n, k];
// q: [n, int4_row_bytes(k, g)] (padding codes 8); scale: f16 [n, G].
void quantize_int4_groups(int64_t n, int64_t k, int64_t g, const void* w, DType wt, uint8_t* q, uint16_t* scale);

// Benchmark support (ops/bench.cc: the read probes): reads every byte of the spans with every pool
// thread and the widest vector loads the ISA has, the spans' 64-byte lines split evenly over the
// threads as one sequence (span after span). Returns the sum of each span's bytes read as
// little-endian 64-bit words from its start (its last word zero-padded), modulo 2^64: the result
// exists so the reads cannot be optimised away, and lets a test check that every byte was read once.
struct ReadSpan {
  const void* p;
  int64_t bytes;
};
uint64_t read_sum(const ReadSpan* spans, int64_t n);

// Benchmark support (ops/bench.cc: benchDotPeak, dot_peak.cc): the multiply-add instruction the GEMM
// of bf16 weights runs on at the current ISA and precision (vdpbf16ps with AVX512-BF16 outside
// 'highest', else the ISA's fp32 FMA), as a register-only loop: run(iters) executes iters rounds
// of flops_per_round / (FLOPs per instruction) independent instructions on the calling thread.
struct DotPeak {
  const char* instruction;
  int64_t flops_per_round;
  float (*run)(int64_t iters);
};
DotPeak dot_peak();

}  // namespace lc::cpu
