// The tensor-core absorbed MLA decode (mla_decode_tc.cu), used by mla_decode_absorbed (mla.cu)
// for the 512 + 64 latent width with a bf16 cache at matmul precision 'bf16' / 'fp8'.
#pragma once
#include <cstdint>

#include "../native/cpu/attention.h"

namespace lc::gpu {

constexpr int64_t kMlaTcHeads = 64;  // heads per CTA

// dl == 512, dr == 64, a bf16 cache, and the device's shared memory holds the kernel's tiles.
bool mla_decode_tc_supported(const cpu::MlaDims& d, bool cache_bf16);

// decode_kernel's contract (mla.cu): writes o_lat when splits == 1, else the partials part_acc
// [B, splits, nh, 512] / part_ml [B, splits, nh, 2] that mla.cu's combine kernel merges.
void mla_decode_tc(const cpu::MlaDims& d, int64_t batch, float* o_lat, float* part_acc, float* part_ml, const float* q_lat,
                   const float* q, const void* cache, int64_t num_blocks, int64_t block_size, const int32_t* block_table,
                   int64_t max_blocks, const int32_t* seq_lens, float scale, int64_t splits, void* stream);

}  // namespace lc::gpu
