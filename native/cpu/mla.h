// Multi-head latent attention (MLA) kernels, SPEC 3.5 (expanded form) and 5.2 (absorbed form over
// a paged latent cache). Plain C++: raw pointers and sizes, no allocation, never throws; the
// binding layer (ops/mla.cc) validates shapes and index tensors first.
//
// Dimensions (generic): nh heads, dn = qk_nope_head_dim, dr = qk_rope_head_dim, dv = v_head_dim,
// dl = kv_lora_rank. Activations are f32; the kv_b_proj weight may be f32 or bf16 (`w_bf16`: raw
// bits, converted on the fly); the latent cache f32, bf16 or fp8 (MlaCache, below).
#pragma once
#include <cstdint>

#include "host_device.h"

namespace lc::cpu {

struct MlaDims {
  int64_t nh = 0, dn = 0, dr = 0, dv = 0, dl = 0;
};

// The element format of the paged latent cache [num_blocks, block_size, row]:
//   F32, BF16: row = dl + dr values, the latent then the rope key (bf16 rounded to nearest even).
//   FP8:       FlashMLA's quantized layout, row = mla_fp8_row_bytes(dl, dr) bytes (a fp8_e4m3 tensor
//              of that last dim; 656 bytes for dl 512 / dr 64 against 1152 in bf16):
//                [0, dl)                    the latent in e4m3, 128-value groups g = 0 .. dl/128 - 1
//                [dl, dl + 4 dl/128)        one f32 scale per group: max(amax(|group|), 1e-10) / 448
//                                           (quant.h's activation scale), value = e4m3 * scale
//                [.., + 2 dr)               the rope key in bf16 (never quantized)
//              dl must be a multiple of 128 and dr even (so that every row, and with it every scale,
//              stays 4-byte aligned); the binding raises E_SHAPE otherwise.
// This comment is the one definition of the layout; the offsets below are what every kernel uses.
enum class MlaCache : int { F32 = 0, BF16 = 1, FP8 = 2 };
constexpr int64_t kMlaFp8Group = 128;
LC_HD constexpr int64_t mla_fp8_scale_offset(int64_t dl) { return dl; }
LC_HD constexpr int64_t mla_fp8_rope_offset(int64_t dl) { return dl + 4 * (dl / kMlaFp8Group); }
LC_HD constexpr int64_t mla_fp8_row_bytes(int64_t dl, int64_t dr) { return mla_fp8_rope_offset(dl) + 2 * dr; }

// Expanded causal attention over a variable-length batch.
//   o   [T, nh, dv]        output
//   q   [T, nh, dn + dr]   (rope part already rotated)
//   kvb [S, nh, dn + dv]   kv_b_proj output: per head k_nope | v
//   kpe [S, dr]            rotated shared rope key
//   q_start, kv_start [B + 1]: sequence b owns queries q_start[b]..q_start[b+1] and keys
//   kv_start[b]..kv_start[b+1]; query j sits at position kv_len - q_len + j and attends keys at
//   positions <= its own. Requires kv_len >= q_len for every b (checked by the caller).
void mla_prefill(const MlaDims& d, int64_t batch, float* o, const float* q, const float* kvb, const float* kpe,
                 const int32_t* q_start, const int32_t* kv_start, float scale);

// Paged latent cache [num_blocks, block_size, row] (format `cf`, above): token slot s lives in block
// s / block_size, row s % block_size. Slots must be in range (checked by the caller). FP8 quantizes
// each 128-value group of the latent with quant.h's quantize_fp8_group.
void mla_cache_write(const MlaDims& d, int64_t t, void* cache, MlaCache cf, int64_t block_size, const float* ckv,
                     const float* kpe, const int32_t* slots);

// Copies rows [start, start + length) of one sequence (block_table [max_blocks]) into
// ckv [length, dl] and kpe [length, dr] (FP8: dequantized, e4m3 * scale in f32). Block ids must be in
// range (checked by the caller).
void mla_cache_gather(const MlaDims& d, float* ckv, float* kpe, const void* cache, MlaCache cf, int64_t block_size,
                      const int32_t* block_table, int64_t start, int64_t length);

// q_lat[t, h, :] = W_UK[h]^T q_nope[t, h], W_UK[h] = rows h*(dn+dv) .. h*(dn+dv)+dn of
// wkvb [nh*(dn+dv), dl].
// Both absorb ops: fp32 products and sums, except for a bf16 wkvb at more than 4 tokens on a CPU
// with AVX512-BF16 and matmul precision other than 'highest' (linear.h): there q_nope / o_lat are
// rounded to bf16 (nearest even) and the exact products summed by vdpbf16ps in fp32 (relative
// error about 2^-9 of sum |x w|), as the bf16 GEMMs of linear.h do. A token's result there does not
// depend on the other tokens or the thread count, but is not bit for bit the one it gets at 1-4 tokens.
void mla_absorb_q(const MlaDims& d, int64_t t, float* q_lat, const float* q, const void* wkvb, bool w_bf16);

// o[t, h, :] = W_UV[h] o_lat[t, h], W_UV[h] = rows h*(dn+dv)+dn .. +dv of wkvb.
void mla_output(const MlaDims& d, int64_t t, float* o, const float* o_lat, const void* wkvb, bool w_bf16);

// Workspace (in floats) mla_decode_absorbed needs for `batch` sequences and a split target of
// `units` work items (typically 2-4 x the thread count).
int64_t mla_decode_workspace_floats(const MlaDims& d, int64_t batch, int64_t units);

// Absorbed decode (MQA over the latent cache), FlashMLA style:
//   score[h, s] = (q_lat[b,h] . ckv[s] + q_pe[b,h] . kpe[s]) * scale, s < seq_lens[b]
//   o_lat[b, h] = softmax_s(score) @ ckv
// q_lat [B, nh, dl], q [B, nh, dn + dr] (only its rope part is read), block_table [B, max_blocks],
// seq_lens [B]. Long sequences are split over threads (split-K) and merged in a second pass using
// `workspace` (mla_decode_workspace_floats(d, B, units) floats); with fewer sequences than threads,
// the heads are split over the threads first (no merge). A sequence of length 0 gives zeros.
// Rows of one sequence (a verify step's: consecutive rows whose block-table entries agree over the
// earlier row's length, each at least as long as the one before) share each pass over the keys: a
// row's heads are then heads of one wider query, and the keys past a row's own length are masked for
// it. Its result is bitwise the one it gets alone when its key splits are the same (always at one
// thread, and where no row is split); the rows of a group take their longest row's splits. Masked
// keys (written cache rows of the longer row) enter the shorter row as p = 0 exactly, which a
// non-finite latent in them would turn into NaN (0 x inf) on the bf16 path.
// An FP8 cache is dequantized on load, a tile of rows at a time, to f32 (as mla_cache_gather), which
// the fp32 path then reads; dl + dr must be at most kMlaFp8DecodeRow (checked by the binding).
constexpr int64_t kMlaFp8DecodeRow = 16384;
void mla_decode_absorbed(const MlaDims& d, int64_t batch, float* o_lat, const float* q_lat, const float* q, const void* cache,
                         MlaCache cf, int64_t block_size, const int32_t* block_table, int64_t max_blocks, const int32_t* seq_lens,
                         float scale, float* workspace, int64_t units);

}  // namespace lc::cpu
