// Paged latent cache copies on the GPU (twins of mla_cache_write / mla_cache_gather in
// native/cpu/mla.cc): one block per token row, threads over the dl + dr values. Bit-exact
// (plain copies, bf16 by the same RNE integer rounding; the fp8 layout quantized one 128-value group
// per warp by the quantizer quant.cu uses, dequantized as e4m3 * scale in one f32 rounding).
#include "mla_cache.h"
#include "include/common.cuh"
#include "include/small_util.cuh"

namespace lc::gpu {

namespace {

template <bool kBf16>
__global__ void cache_write_kernel(int64_t dl, int64_t dr, void* __restrict__ cache, int64_t num_slots,
                                   const float* __restrict__ ckv, const float* __restrict__ kpe,
                                   const int32_t* __restrict__ slots) {
  const int64_t r = blockIdx.x, row = dl + dr;
  const int64_t s = slots[r];
  if (s < 0 || s >= num_slots) return;  // whole block: no barrier below
  for (int64_t c = threadIdx.x; c < row; c += blockDim.x) {
    const float v = c < dl ? ckv[r * dl + c] : kpe[r * dr + (c - dl)];
    if (kBf16)
      static_cast<uint16_t*>(cache)[s * row + c] = f32_to_bf16_bits(v);
    else
      static_cast<float*>(cache)[s * row + c] = v;
  }
}

template <bool kBf16>
__global__ void cache_gather_kernel(int64_t dl, int64_t dr, float* __restrict__ ckv, float* __restrict__ kpe,
                                    const void* __restrict__ cache, int64_t bs, int64_t num_blocks,
                                    const int32_t* __restrict__ block_table, int64_t start) {
  const int64_t r = blockIdx.x, row = dl + dr, s = start + r;
  const int64_t blk = block_table[s / bs];
  const bool ok = blk >= 0 && blk < num_blocks;
  const int64_t src = (ok ? blk : 0) * bs + s % bs;
  for (int64_t c = threadIdx.x; c < row; c += blockDim.x) {
    float v = 0.0f;
    if (ok)
      v = kBf16 ? bf16_bits_to_f32(static_cast<const uint16_t*>(cache)[src * row + c])
                : static_cast<const float*>(cache)[src * row + c];
    if (c < dl)
      ckv[r * dl + c] = v;
    else
      kpe[r * dr + (c - dl)] = v;
  }
}

// The fp8 layout (cpu/mla.h): warp w quantizes latent groups w, w + warps, ...; then the block writes
// the rope key in bf16.
__global__ void cache_write_fp8_kernel(int64_t dl, int64_t dr, uint8_t* __restrict__ cache, int64_t num_slots,
                                       const float* __restrict__ ckv, const float* __restrict__ kpe,
                                       const int32_t* __restrict__ slots) {
  const int64_t r = blockIdx.x;
  const int64_t s = slots[r];
  if (s < 0 || s >= num_slots) return;  // whole block
  uint8_t* dst = cache + s * cpu::mla_fp8_row_bytes(dl, dr);
  float* scales = reinterpret_cast<float*>(dst + cpu::mla_fp8_scale_offset(dl));
  const int lane = threadIdx.x & 31, warps = blockDim.x >> 5;
  for (int64_t g = threadIdx.x >> 5; g < dl / cpu::kMlaFp8Group; g += warps) {
    const float* x = ckv + r * dl + g * cpu::kMlaFp8Group;
    float v[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) v[i] = x[lane + 32 * i];
    const float sc = util::warp_quantize_fp8_group(v, static_cast<int>(cpu::kMlaFp8Group), lane, dst + g * cpu::kMlaFp8Group);
    if (lane == 0) scales[g] = sc;
  }
  uint16_t* rope = reinterpret_cast<uint16_t*>(dst + cpu::mla_fp8_rope_offset(dl));
  for (int64_t c = threadIdx.x; c < dr; c += blockDim.x) rope[c] = f32_to_bf16_bits(kpe[r * dr + c]);
}

__global__ void cache_gather_fp8_kernel(int64_t dl, int64_t dr, float* __restrict__ ckv, float* __restrict__ kpe,
                                        const uint8_t* __restrict__ cache, int64_t bs, int64_t num_blocks,
                                        const int32_t* __restrict__ block_table, int64_t start) {
  const int64_t r = blockIdx.x, s = start + r;
  const int64_t blk = block_table[s / bs];
  const bool ok = blk >= 0 && blk < num_blocks;
  const uint8_t* src = cache + ((ok ? blk : 0) * bs + s % bs) * cpu::mla_fp8_row_bytes(dl, dr);
  const float* scales = reinterpret_cast<const float*>(src + cpu::mla_fp8_scale_offset(dl));
  const uint16_t* rope = reinterpret_cast<const uint16_t*>(src + cpu::mla_fp8_rope_offset(dl));
  for (int64_t c = threadIdx.x; c < dl + dr; c += blockDim.x) {
    if (c < dl)
      ckv[r * dl + c] = ok ? util::x86_mul(util::fp8_bits_to_f32(src[c]), scales[c / cpu::kMlaFp8Group]) : 0.0f;
    else
      kpe[r * dr + (c - dl)] = ok ? bf16_bits_to_f32(rope[c - dl]) : 0.0f;
  }
}

int threads_for(int64_t row) { return row >= 512 ? 256 : row >= 128 ? 128 : 32; }

}  // namespace

void mla_cache_write(int64_t t, int64_t dl, int64_t dr, void* cache, cpu::MlaCache cf, int64_t num_slots, const float* ckv,
                     const float* kpe, const int32_t* slots, void* stream) {
  if (t <= 0 || dl + dr <= 0) return;
  auto s = static_cast<cudaStream_t>(stream);
  const int th = threads_for(dl + dr);
  if (cf == cpu::MlaCache::FP8)
    cache_write_fp8_kernel<<<static_cast<unsigned>(t), th, 0, s>>>(dl, dr, static_cast<uint8_t*>(cache), num_slots, ckv, kpe,
                                                                   slots);
  else if (cf == cpu::MlaCache::BF16)
    cache_write_kernel<true><<<static_cast<unsigned>(t), th, 0, s>>>(dl, dr, cache, num_slots, ckv, kpe, slots);
  else
    cache_write_kernel<false><<<static_cast<unsigned>(t), th, 0, s>>>(dl, dr, cache, num_slots, ckv, kpe, slots);
}

void mla_cache_gather(int64_t dl, int64_t dr, float* ckv, float* kpe, const void* cache, cpu::MlaCache cf, int64_t block_size,
                      int64_t num_blocks, const int32_t* block_table, int64_t start, int64_t length, void* stream) {
  if (length <= 0 || dl + dr <= 0) return;
  auto s = static_cast<cudaStream_t>(stream);
  const int th = threads_for(dl + dr);
  if (cf == cpu::MlaCache::FP8)
    cache_gather_fp8_kernel<<<static_cast<unsigned>(length), th, 0, s>>>(dl, dr, ckv, kpe, static_cast<const uint8_t*>(cache),
                                                                         block_size, num_blocks, block_table, start);
  else if (cf == cpu::MlaCache::BF16)
    cache_gather_kernel<true>
        <<<static_cast<unsigned>(length), th, 0, s>>>(dl, dr, ckv, kpe, cache, block_size, num_blocks, block_table, start);
  else
    cache_gather_kernel<false>
        <<<static_cast<unsigned>(length), th, 0, s>>>(dl, dr, ckv, kpe, cache, block_size, num_blocks, block_table, start);
}

}  // namespace lc::gpu
