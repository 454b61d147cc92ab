// The tensor-core MLA kernels, used by mla.cu's launchers at matmul precision 'bf16' / 'fp8' for
// the DeepSeek / LongCat dims: the absorbed decode (mla_decode_tc.cu: 512 + 64 latent width, bf16
// or fp8 cache) and the expanded prefill (mla_prefill_tc.cu: q / k 128 + 64, v 128).
#pragma once
#include <cstdint>

#include "../native/cpu/mla.h"

namespace lc::gpu {

constexpr int64_t kMlaTcHeads = 64;  // heads per CTA

// dl == 512, dr == 64, a 16-byte aligned bf16 or fp8 cache (cp.async), and the device's shared
// memory holds the kernel's tiles.
bool mla_decode_tc_supported(const cpu::MlaDims& d, cpu::MlaCache cf, const void* cache);

// What both absorbed decode kernels (mla.cu's decode_kernel, decode_tc_kernel) read and write:
// q_lat [B, nh, dl], q [B, nh, dk] (q_pe at dn), the paged cache (rows of dl + dr), and o_lat
// [B, nh, dl] when splits == 1, else the partials part_acc [B, splits, nh, dl] / part_ml
// [B, splits, nh, 2] that mla.cu's combine kernel merges.
struct MlaDecodeArgs {
  int64_t nh, dn, dk;
  int64_t splits;
  const float* q_lat;
  const float* q;
  const void* cache;
  int64_t num_blocks, block_size, max_blocks;
  const int32_t* block_table;
  const int32_t* seq_lens;
  float scale;
  float* o_lat;
  float* part_acc;
  float* part_ml;
};

// decode_kernel's contract (mla.cu) for the bf16 or fp8 cache `cf`.
void mla_decode_tc(int64_t batch, const MlaDecodeArgs& args, cpu::MlaCache cf, void* stream);

constexpr int64_t kMlaTcPrefillRows = 64;  // queries per prefill tile

// dn 128, dr 64, dv 128, and the device's shared memory holds the kernel's tiles.
bool mla_prefill_tc_supported(const cpu::MlaDims& d);

// Bytes of the bf16 copy of K / V (kvb, kpe: s rows) mla_prefill_tc needs, 16-byte aligned.
size_t mla_prefill_tc_workspace_bytes(const cpu::MlaDims& d, int64_t s);

// prefill_kernel's contract (mla.cu) over `schedule` (prefill_schedule_kernel's output for
// kMlaTcPrefillRows-row tiles, at most tiles_cap of them); kvb / kpe have s rows.
void mla_prefill_tc(const cpu::MlaDims& d, int64_t tiles_cap, int64_t s, float* o, const float* q, const float* kvb,
                    const float* kpe, const int32_t* q_start, const int32_t* kv_start, const int32_t* schedule, float scale,
                    void* kv_bf16, void* stream);

}  // namespace lc::gpu
