// Launchers of the CUDA MLA attention kernels (cuda/mla.cu), callable from plain C++ (native/ops).
// Contracts: the CPU twins in native/cpu/mla.h (same dims, layouts, dtypes and semantics).
// Pointers are device pointers; `stream` is a cudaStream_t. Launchers never allocate and never
// synchronize; workspaces are allocated by the binding from the pool with the sizes given here.
//
// Index data (qStart / kvStart, block tables, seqLens) lives on the device and is never read by the
// host, so a bad value cannot raise an error as on CPU. Instead the kernels never read or write out
// of bounds whatever the data (documented per launcher). Launchers throw lc::Error (E_SHAPE) only
// for configurations the kernels do not support (head dims too large for shared memory).
#pragma once
#include <cstdint>

#include "../native/cpu/mla.h"

namespace lc::gpu {

// Same contract as cpu::mla_absorb_q (f32 activations, wkvb f32 or bf16 raw bits).
void mla_absorb_q(const cpu::MlaDims& d, int64_t t, float* q_lat, const float* q, const void* wkvb, bool w_bf16, void* stream);

// Same contract as cpu::mla_output.
void mla_output(const cpu::MlaDims& d, int64_t t, float* o, const float* o_lat, const void* wkvb, bool w_bf16, void* stream);

// Ints of workspace mla_prefill needs for T queries and S keys in `batch` sequences (its tile
// schedule, and on the tensor-core path a bf16 copy of K / V), at the current matmul precision.
int64_t mla_prefill_workspace_ints(const cpu::MlaDims& d, int64_t t, int64_t s, int64_t batch);

// Same contract as cpu::mla_prefill; t / s = rows of q / kvb (the tensors' first dims), used to
// bound every access. q_start / kv_start are validated on the device with the CPU binding's rules
// (starts >= 0, non-decreasing, kv_len >= q_len, ends within t / s); if any fails, nothing is
// written (o untouched; the CPU path raises E_ARGUMENT instead).
void mla_prefill(const cpu::MlaDims& d, int64_t batch, int64_t t, int64_t s, float* o, const float* q, const float* kvb,
                 const float* kpe, const int32_t* q_start, const int32_t* kv_start, float scale, int32_t* workspace,
                 void* stream);

// Number of splits per sequence the decode kernel uses for `batch` sequences of at most
// max_len = max_blocks * block_size tokens on the current device (host-side: depends only on
// shapes, the cache (dtype, alignment) and the matmul precision, so a captured graph stays valid as the
// sequences grow up to max_len).
int64_t mla_decode_splits(const cpu::MlaDims& d, int64_t batch, int64_t max_len, cpu::MlaCache cf, const void* cache);
// Floats of workspace mla_decode_absorbed needs with `splits` (0 when splits == 1).
int64_t mla_decode_workspace_floats(const cpu::MlaDims& d, int64_t batch, int64_t splits);

// Same contract as cpu::mla_decode_absorbed, FlashMLA-style split-KV decode: on tensor cores
// (mla_tc.h) for dl 512 / dr 64 with a bf16 or fp8 cache unless the matmul precision is 'highest',
// else on CUDA cores in fp32 (an fp8 cache dequantized to f32 on load). num_blocks bounds the
// block ids: a sequence length is clamped to [0, max_blocks * block_size] and a cache row whose
// block id is outside [0, num_blocks) reads as zeros (the CPU path raises E_ARGUMENT instead).
// `splits` must be the value of mla_decode_splits(d, batch, max_blocks * block_size, cf, cache) the workspace
// was sized with.
void mla_decode_absorbed(const cpu::MlaDims& d, int64_t batch, float* o_lat, const float* q_lat, const float* q,
                         const void* cache, cpu::MlaCache cf, int64_t num_blocks, int64_t block_size, const int32_t* block_table,
                         int64_t max_blocks, const int32_t* seq_lens, float scale, float* workspace, int64_t splits,
                         void* stream);

}  // namespace lc::gpu
