// FP8 (e4m3fn) quantization on the GPU, bit-exact twins of native/cpu/quant.cc:
// Also the per-row int8 weight quantization (cpu::quantize_int8_rows).
//   amax = max |x| (NaN ignored, like the CPU's max), s = max(amax, 1e-10f) / 448.0f (IEEE f32
//   division), q = f32_to_fp8(x / s) (IEEE f32 division, then the integer RNE/saturating encoder
//   ported from numeric.h), w = fp8_to_f32(q) * s rounded to bf16 by RNE when asked.
#include "quant.h"
#include "include/small_util.cuh"

namespace lc::gpu {

namespace {

constexpr int64_t kBlock = 128;
constexpr float kTiny = 1e-10f;  // cpu::kFp8Tiny

using util::x86_div;
using util::x86_mul;

template <bool kBf16>
__device__ __forceinline__ float load_w(const void* w, int64_t i) {
  return kBf16 ? bf16_bits_to_f32(static_cast<const uint16_t*>(w)[i]) : static_cast<const float*>(w)[i];
}

// One warp per (token, 128-group); a lane handles elements lane, lane + 32, ... (coalesced).
template <bool kBf16>
__global__ void quant_act_kernel(int64_t groups, int64_t G, int64_t K, const void* __restrict__ x, uint8_t* __restrict__ q,
                                 float* __restrict__ scale) {
  const int64_t gi = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + (threadIdx.x >> 5);
  if (gi >= groups) return;  // whole warps exit together
  const int lane = threadIdx.x & 31;
  const int64_t t = gi / G, g = gi % G, k0 = g * kBlock;
  const int64_t n = K - k0 < kBlock ? K - k0 : kBlock;
  const int64_t x0 = t * K + k0;
  float v[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t c = lane + 32 * i;
    v[i] = c < n ? load_w<kBf16>(x, x0 + c) : 0.0f;
  }
  const float s = util::warp_quantize_fp8_group(v, static_cast<int>(n), lane, q + t * K + k0);
  if (lane == 0) scale[gi] = s;
}

// One block (256 threads) per 128 x 128 tile: thread -> column tid % 128, rows tid / 128 + 2 i.
template <bool kBf16>
__global__ void quant_blocks_kernel(int64_t N, int64_t K, int64_t BK, const void* __restrict__ w, uint8_t* __restrict__ q,
                                    float* __restrict__ scale_inv) {
  __shared__ float sh[32];
  const int64_t blk = blockIdx.x, bn = blk / BK, bk = blk % BK;
  const int64_t r0 = bn * kBlock, c0 = bk * kBlock;
  const int64_t nr = N - r0 < kBlock ? N - r0 : kBlock, nc = K - c0 < kBlock ? K - c0 : kBlock;
  const int64_t col = threadIdx.x % kBlock, rstep = blockDim.x / kBlock;
  float m = 0.0f;
  if (col < nc)
    for (int64_t r = threadIdx.x / kBlock; r < nr; r += rstep) m = fmaxf(m, fabsf(load_w<kBf16>(w, (r0 + r) * K + c0 + col)));
  m = util::block_allreduce(m, util::MaxIgnoreNan(), sh);
  const float s = fmaxf(m, kTiny) / 448.0f;
  if (threadIdx.x == 0) scale_inv[blk] = s;
  if (col < nc)
    for (int64_t r = threadIdx.x / kBlock; r < nr; r += rstep) {
      const int64_t i = (r0 + r) * K + c0 + col;
      q[i] = util::f32_to_fp8_bits(x86_div(load_w<kBf16>(w, i), s));
    }
}

template <bool kBf16>
__global__ void dequant_blocks_kernel(int64_t K, int64_t BK, const uint8_t* __restrict__ q, const float* __restrict__ scale_inv,
                                      void* __restrict__ w) {
  const int64_t r = blockIdx.x;
  const float* srow = scale_inv + (r / kBlock) * BK;
  for (int64_t c = threadIdx.x; c < K; c += blockDim.x) {
    const float v = x86_mul(util::fp8_bits_to_f32(q[r * K + c]), srow[c / kBlock]);
    if (kBf16)
      static_cast<uint16_t*>(w)[r * K + c] = f32_to_bf16_bits(v);
    else
      static_cast<float*>(w)[r * K + c] = v;
  }
}

// cpu::quantize_int8_rows: one block per row; amax ignores NaN (fmax), scale = amax / 127 (IEEE),
// q = rint(w / scale) (half to even) clamped to +-127 (NaN -> -127, as fmin(127, fmax(-127, NaN))).
template <bool kBf16>
__global__ void quant_int8_rows_kernel(int64_t K, const void* __restrict__ w, int8_t* __restrict__ q, float* __restrict__ scale) {
  __shared__ float sh[32];
  const int64_t r = blockIdx.x;
  float m = 0.0f;
  for (int64_t c = threadIdx.x; c < K; c += blockDim.x) m = fmaxf(m, fabsf(load_w<kBf16>(w, r * K + c)));
  m = util::block_allreduce(m, util::MaxIgnoreNan(), sh);
  const float s = m / 127.0f;
  if (threadIdx.x == 0) scale[r] = s;
  for (int64_t c = threadIdx.x; c < K; c += blockDim.x) {
    const float v = s > 0 ? rintf(load_w<kBf16>(w, r * K + c) / s) : 0.0f;
    q[r * K + c] = static_cast<int8_t>(fminf(127.0f, fmaxf(-127.0f, v)));
  }
}

}  // namespace

void quantize_int8_rows(int64_t N, int64_t K, const void* w, DType wt, int8_t* q, float* scale, void* stream) {
  if (N <= 0) return;
  auto s = static_cast<cudaStream_t>(stream);
  if (wt == DType::BF16)
    quant_int8_rows_kernel<true><<<static_cast<unsigned>(N), 256, 0, s>>>(K, w, q, scale);
  else
    quant_int8_rows_kernel<false><<<static_cast<unsigned>(N), 256, 0, s>>>(K, w, q, scale);
}

void quantize_fp8_act(int64_t T, int64_t K, const void* x, DType xt, uint8_t* q, float* scale, void* stream) {
  if (T <= 0 || K <= 0) return;
  const int64_t G = (K + kBlock - 1) / kBlock, groups = T * G;
  constexpr int kThreads = 256, kWarps = kThreads / 32;
  const unsigned blocks = static_cast<unsigned>((groups + kWarps - 1) / kWarps);
  auto s = static_cast<cudaStream_t>(stream);
  if (xt == DType::BF16)
    quant_act_kernel<true><<<blocks, kThreads, 0, s>>>(groups, G, K, x, q, scale);
  else
    quant_act_kernel<false><<<blocks, kThreads, 0, s>>>(groups, G, K, x, q, scale);
}

void quantize_fp8_blocks(int64_t N, int64_t K, const void* w, DType wt, uint8_t* q, float* scale_inv, void* stream) {
  if (N <= 0 || K <= 0) return;
  const int64_t BN = (N + kBlock - 1) / kBlock, BK = (K + kBlock - 1) / kBlock;
  auto s = static_cast<cudaStream_t>(stream);
  if (wt == DType::BF16)
    quant_blocks_kernel<true><<<static_cast<unsigned>(BN * BK), 256, 0, s>>>(N, K, BK, w, q, scale_inv);
  else
    quant_blocks_kernel<false><<<static_cast<unsigned>(BN * BK), 256, 0, s>>>(N, K, BK, w, q, scale_inv);
}

void dequantize_fp8_blocks(int64_t N, int64_t K, const uint8_t* q, const float* scale_inv, void* w, DType wt, void* stream) {
  if (N <= 0 || K <= 0) return;
  const int64_t BK = (K + kBlock - 1) / kBlock;
  const int threads = K >= 1024 ? 256 : 128;
  auto s = static_cast<cudaStream_t>(stream);
  if (wt == DType::BF16)
    dequant_blocks_kernel<true><<<static_cast<unsigned>(N), threads, 0, s>>>(K, BK, q, scale_inv, w);
  else
    dequant_blocks_kernel<false><<<static_cast<unsigned>(N), threads, 0, s>>>(K, BK, q, scale_inv, w);
}

}  // namespace lc::gpu
