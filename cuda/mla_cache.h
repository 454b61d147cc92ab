// CUDA launchers of the paged latent-cache copies (contracts: native/cpu/mla.h
// mla_cache_write / mla_cache_gather; the cache formats and the fp8 layout: cpu::MlaCache there).
#pragma once
#include <cstdint>

#include "../native/cpu/mla.h"

namespace lc::gpu {

// cache [num_blocks * block_size, row] (f32, bf16 RNE, or the fp8 layout), row slots[r] <- ckv[r] |
// kpe[r]. A slot outside [0, num_slots) cannot raise an error from a kernel: that token is skipped
// (nothing written). The CPU path raises E_ARGUMENT instead.
void mla_cache_write(int64_t t, int64_t dl, int64_t dr, void* cache, cpu::MlaCache cf, int64_t num_slots, const float* ckv,
                     const float* kpe, const int32_t* slots, void* stream);

// ckv[r] | kpe[r] <- cache row block_table[(start + r) / bs] * bs + (start + r) % bs, r < length
// (fp8: dequantized). A block id outside [0, num_blocks) gives zero rows (the CPU path raises E_ARGUMENT).
void mla_cache_gather(int64_t dl, int64_t dr, float* ckv, float* kpe, const void* cache, cpu::MlaCache cf, int64_t block_size,
                      int64_t num_blocks, const int32_t* block_table, int64_t start, int64_t length, void* stream);

}  // namespace lc::gpu
