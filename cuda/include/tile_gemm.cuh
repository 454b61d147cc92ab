// The tensor-core tile GEMM shared by the dense linear (linear.cu) and the grouped expert GEMMs
// (moe.cu): C[64 x 128] += A[64 x K] * B[128 x K]^T per thread block, both operands K-major (the
// nn.Linear weight layout), fp32 accumulation.
//
//   bf16 mode: A (f32 or bf16 activations) is rounded to bf16 and B (f32/bf16/fp8/int8 weights) is
//              dequantized to bf16 while staged; mma.m16n8k16.
//   fp8 mode:  A is e4m3 with 1x128 group scales per row, B is e4m3 with 128x128 block scales
//              (DeepSeek-V3 / DeepGEMM recipe); mma.m16n8k32 into per-stage partial sums that are
//              scaled by a_scale[row] * b_scale and added to the fp32 accumulator after every
//              64-wide K stage, twice per scale block (the "promotion" that keeps fp8 products from
//              being summed at low precision; DeepGEMM promotes every 128).
//
// Tiling, written out: 128 threads = 4 warps as 2 (M) x 2 (N); a warp owns 32 rows x 64 columns =
// 2 x 8 mma tiles. K advances in 64-byte stages (32 bf16 / 64 e4m3 elements) through a ring of
// kStages shared-memory buffers with rows padded to 80 bytes (ldmatrix reads 8 rows of 16 bytes:
// with an 80-byte pitch they fall in 8 distinct 16-byte bank groups). Chunks already in the MMA's
// format (bf16 in bf16 mode, e4m3 in fp8 mode) go global -> shared by cp.async, kStages - 1 stages
// ahead of the MMAs; chunks that need converting (f32 activations; f32 / fp8 / int8 weights in bf16
// mode, 16 one-byte weights per 16-byte load) take a register hop one stage ahead, their latency
// hidden behind the MMAs of the current stage. Rows past the problem and K past its end are
// zero-filled, so any M, N, K works (16-byte accesses where aligned).
//
// The problem P says where rows come from and where results go (dense, expert-grouped, gate/up
// pairs); kGateUp problems put gate rows n0.. in B rows 0..63 and up rows n0.. in 64..127, so a
// warp holds gate and up of the same 32 columns and the epilogue writes silu(gate) * up.
#pragma once
#include <cstdint>

#include "common.cuh"
#include "small_util.cuh"
#include "fragments.h"
#include "mma.cuh"

namespace lc::gpu::tile {

constexpr int kBM = 64, kBN = 128, kThreads = 128;
constexpr int kStageBytes = 64, kPitch = 80, kStages = 3;

// An operand row as the tile loader sees it. p == nullptr: a zero row (past the problem).
//   A, fp8 mode: scale -> the row's 1x128 group scales.
//   B: fp8 -> the row's block-scale row (weight_scale_inv + (n / 128) * kb); int8 -> &scale[n];
//   int4 (lc::cpu::linear.h) -> the row's group scales (bf16 / f16 bits, as `scale`), int4 the group
//   size | f16 scales << 16 | zero points << 17.
struct Row {
  const void* p = nullptr;
  const float* scale = nullptr;
  DType dt = DType::F32;  // B rows: the weight's stored format (A rows: unused, P::a_dtype)
  int32_t int4 = 0;
};

// The B row of an int4 weight's row n (WView's fields).
__device__ __forceinline__ Row int4_row(const void* data, const uint16_t* gs, int64_t group, bool f16, bool zero, int64_t k,
                                        int64_t n) {
  const int64_t G = (k + group - 1) / group;
  return {static_cast<const uint8_t*>(data) + n * (G * group / 2), reinterpret_cast<const float*>(gs + n * G * (zero ? 2 : 1)),
          DType::I4, static_cast<int32_t>(group) | (f16 ? 1 << 16 : 0) | (zero ? 1 << 17 : 0)};
}

__device__ __forceinline__ bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
  return static_cast<uint32_t>(f32_to_bf16_bits(lo)) | (static_cast<uint32_t>(f32_to_bf16_bits(hi)) << 16);
}

__device__ __forceinline__ uint4 pack_bf16x8(const float* v) {  // v[0 .. 8)
  return make_uint4(pack_bf16x2(v[0], v[1]), pack_bf16x2(v[2], v[3]), pack_bf16x2(v[4], v[5]), pack_bf16x2(v[6], v[7]));
}

// Elements [c, c + 8) of an f32 / bf16 row as bf16, zero at and past K.
__device__ __forceinline__ uint4 load8_bf16(const void* row, DType t, int64_t c, int64_t K) {
  float v[8];
  if (t == DType::BF16) {
    const uint16_t* r = static_cast<const uint16_t*>(row) + c;
    if (c + 8 <= K && aligned16(r)) return *reinterpret_cast<const uint4*>(r);
#pragma unroll
    for (int j = 0; j < 8; ++j) v[j] = c + j < K ? bf16_bits_to_f32(r[j]) : 0.f;
  } else {
    const float* r = static_cast<const float*>(row) + c;
    if (c + 8 <= K && aligned16(r)) {
      const float4 a = *reinterpret_cast<const float4*>(r), b = *reinterpret_cast<const float4*>(r + 4);
      v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
    } else {
#pragma unroll
      for (int j = 0; j < 8; ++j) v[j] = c + j < K ? r[j] : 0.f;
    }
  }
  return pack_bf16x8(v);
}

// Weights [c, c + 8) of a row in any stored format, dequantized and rounded to bf16.
__device__ __forceinline__ uint4 load8_weight_bf16(Row w, DType t, int64_t c, int64_t K) {
  if (t == DType::F32 || t == DType::BF16) return load8_bf16(w.p, t, c, K);
  float v[8];
  if (t == DType::FP8_E4M3) {
    const uint8_t* r = static_cast<const uint8_t*>(w.p) + c;
    const float s = w.scale[c >> 7];  // 8 | 128: the chunk lies in one scale block
#pragma unroll
    for (int j = 0; j < 8; ++j) v[j] = c + j < K ? fp8e4m3_to_f32(r[j]) * s : 0.f;
  } else if (t == DType::I4) {  // 8 | 16 | group: the chunk is one half-block of one group
    if (c >= K) return make_uint4(0, 0, 0, 0);
    const int group = w.int4 & 0xffff;
    const bool f16 = (w.int4 >> 16) & 1, zero = (w.int4 >> 17) & 1;
    float s, mzs;
    util::int4_group_params(reinterpret_cast<const uint16_t*>(w.scale) + (c / group) * (zero ? 2 : 1), f16, zero, s, mzs);
    const uint8_t* r = static_cast<const uint8_t*>(w.p) + (c >> 5) * 16 + (c & 15);
    const int shift = (c & 31) < 16 ? 0 : 4;
    const uint2 b = *reinterpret_cast<const uint2*>(r);  // 8 | rows of 16-byte blocks: aligned
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const uint32_t byte = ((j < 4 ? b.x : b.y) >> (8 * (j & 3))) & 0xffu;
      v[j] = c + j < K ? fmaf(static_cast<float>((byte >> shift) & 15u), s, mzs) : 0.f;
    }
  } else {  // I8
    const int8_t* r = static_cast<const int8_t*>(w.p) + c;
    const float s = *w.scale;
#pragma unroll
    for (int j = 0; j < 8; ++j) v[j] = c + j < K ? static_cast<float>(r[j]) * s : 0.f;
  }
  return pack_bf16x8(v);
}

// Weights [c, c + 16) of a one-byte row (fp8 / int8) dequantized to bf16: lo = [c, c + 8), hi = the
// rest, from one 16-byte load where the chunk is in range and aligned (zero at and past K).
__device__ __forceinline__ void load16_weight_bf16(Row w, int64_t c, int64_t K, uint4& lo, uint4& hi) {
  const uint8_t* r = static_cast<const uint8_t*>(w.p) + c;
  uint32_t u[4] = {0, 0, 0, 0};
  if (c + 16 <= K && aligned16(r)) {
    const uint4 q = *reinterpret_cast<const uint4*>(r);
    u[0] = q.x, u[1] = q.y, u[2] = q.z, u[3] = q.w;
  } else {
#pragma unroll
    for (int j = 0; j < 16; ++j)
      if (c + j < K) u[j >> 2] |= static_cast<uint32_t>(r[j]) << (8 * (j & 3));
  }
  const bool fp8 = w.dt == DType::FP8_E4M3;
  const float s = fp8 ? w.scale[c >> 7] : *w.scale;  // 16 | 128: the chunk lies in one scale block
  float v[16];
#pragma unroll
  for (int j = 0; j < 16; ++j) {
    const uint32_t b = (u[j >> 2] >> (8 * (j & 3))) & 0xffu;
    v[j] = c + j >= K ? 0.f : (fp8 ? fp8e4m3_to_f32(static_cast<uint8_t>(b)) : static_cast<float>(static_cast<int8_t>(b))) * s;
  }
  lo = pack_bf16x8(v);
  hi = pack_bf16x8(v + 8);
}

// Bytes [c, c + 16) of an e4m3 row, zero (= +0.0) at and past K.
__device__ __forceinline__ uint4 load16_bytes(const void* row, int64_t c, int64_t K) {
  const uint8_t* r = static_cast<const uint8_t*>(row) + c;
  if (c + 16 <= K && aligned16(r)) return *reinterpret_cast<const uint4*>(r);
  uint32_t w[4] = {0, 0, 0, 0};
#pragma unroll
  for (int j = 0; j < 16; ++j)
    if (c + j < K) w[j >> 2] |= static_cast<uint32_t>(r[j]) << (8 * (j & 3));
  return make_uint4(w[0], w[1], w[2], w[3]);
}

__device__ __forceinline__ float silu_mul(float g, float u) { return g / (1.0f + expf(-g)) * u; }

// P provides:
//   static constexpr bool kGateUp;
//   struct Tile;  __device__ bool tile(Tile&) const;   from blockIdx; false = nothing to do
//   int64_t k;  DType a_dtype;                          (fp8 mode: FP8_E4M3)
//   __device__ Row a_row(const Tile&, int r) const;     r in [0, 64)
//   __device__ Row b_row(const Tile&, int r) const;     r in [0, 128), with the weight's dtype
//   __device__ const float* b_scales(const Tile&, int which) const;   fp8: block-scale row of
//                                                       the tile's columns (which: 0 dense/gate, 1 up)
//   __device__ void store2(const Tile&, int r, int c, float v0, float v1) const;   columns c, c + 1
//                                                       (c even, < 128; 64 for kGateUp); must
//                                                       ignore r / c past the problem
template <class P, bool kFp8>
__global__ void __launch_bounds__(kThreads) gemm_kernel(const P p) {
  struct alignas(16) Tiles {
    uint8_t a[kStages][kBM][kPitch];
    uint8_t b[kStages][kBN][kPitch];
  };
  __shared__ Tiles smem;
  auto& sa = smem.a;
  auto& sb = smem.b;
  typename P::Tile tl;
  if (!p.tile(tl)) return;               // block-uniform
  constexpr int kElems = kFp8 ? 16 : 8;  // elements per 16-byte chunk of the staged tile
  constexpr int kStage = 4 * kElems;     // elements per stage
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wm = frag::gemm_wm(warp), wn = frag::gemm_wn(warp);
  const int64_t K = p.k;

  // This thread stages 16-byte chunk `part` of A rows r0 + 32 i (i < 2) and B rows r0 + 32 i (i < 4).
  const int part = frag::stage_part(tid), r0 = frag::stage_row(tid);
  Row ar[2], br[4];
#pragma unroll
  for (int i = 0; i < 2; ++i) ar[i] = p.a_row(tl, r0 + 32 * i);
#pragma unroll
  for (int i = 0; i < 4; ++i) br[i] = p.b_row(tl, r0 + 32 * i);
  // bf16 mode with one-byte weights (fp8 / int8) in all four B rows of this thread's group (the 4
  // threads sharing r0): 16 weights per 16-byte load fill two chunks, so the group splits the work
  // as part -> rows 2 (part / 2) + j (j < 2), chunks 2 (part % 2) and 2 (part % 2) + 1.
  bool b_pairs = false;
  if constexpr (!kFp8) {
    b_pairs = true;
#pragma unroll
    for (int i = 0; i < 4; ++i) b_pairs = b_pairs && (!br[i].p || br[i].dt == DType::FP8_E4M3 || br[i].dt == DType::I8);
  }
  // Whether a chunk goes global -> shared by cp.async: its stored bytes are the MMA operand (bf16
  // in bf16 mode, e4m3 in fp8 mode), all of it lies before K, 16-byte aligned. The other chunks
  // (f32 / fp8 / int8 to convert, zero rows, K tails, unaligned rows) take the register hop.
  auto direct = [&](const Row& r, DType dt, int64_t c) {
    if (!r.p || (!kFp8 && dt != DType::BF16)) return false;
    return c + kElems <= K && aligned16(static_cast<const uint8_t*>(r.p) + c * (kFp8 ? 1 : 2));
  };
  auto chunk_col = [&](int st) { return static_cast<int64_t>(st) * kStage + part * kElems; };
  auto issue_async = [&](int st) {
    const int64_t c = chunk_col(st);
    const int buf = st % kStages;
#pragma unroll
    for (int i = 0; i < 2; ++i)
      if (direct(ar[i], p.a_dtype, c))
        mma::cp_async16(&sa[buf][r0 + 32 * i][part * 16], static_cast<const uint8_t*>(ar[i].p) + c * (kFp8 ? 1 : 2));
    if (!b_pairs) {
#pragma unroll
      for (int i = 0; i < 4; ++i)
        if (direct(br[i], br[i].dt, c))
          mma::cp_async16(&sb[buf][r0 + 32 * i][part * 16], static_cast<const uint8_t*>(br[i].p) + c * (kFp8 ? 1 : 2));
    }
  };
  // bf16 mode's register hop: load_regs(st) before the MMAs of the stage before, put_regs(st) after.
  uint4 ra[2], rb[4];
  auto load_regs = [&](int st) {
    const int64_t c = chunk_col(st);
#pragma unroll
    for (int i = 0; i < 2; ++i)
      if (!direct(ar[i], p.a_dtype, c)) ra[i] = ar[i].p ? load8_bf16(ar[i].p, p.a_dtype, c, K) : make_uint4(0, 0, 0, 0);
    if (b_pairs) {
      const int64_t c16 = static_cast<int64_t>(st) * kStage + 16 * (part & 1);
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        const Row w = (part >> 1) ? br[2 + j] : br[j];
        if (w.p)
          load16_weight_bf16(w, c16, K, rb[2 * j], rb[2 * j + 1]);
        else
          rb[2 * j] = rb[2 * j + 1] = make_uint4(0, 0, 0, 0);
      }
    } else {
#pragma unroll
      for (int i = 0; i < 4; ++i)
        if (!direct(br[i], br[i].dt, c)) rb[i] = br[i].p ? load8_weight_bf16(br[i], br[i].dt, c, K) : make_uint4(0, 0, 0, 0);
    }
  };
  auto put_regs = [&](int st) {
    const int64_t c = chunk_col(st);
    const int buf = st % kStages;
#pragma unroll
    for (int i = 0; i < 2; ++i)
      if (!direct(ar[i], p.a_dtype, c)) *reinterpret_cast<uint4*>(&sa[buf][r0 + 32 * i][part * 16]) = ra[i];
    if (b_pairs) {
#pragma unroll
      for (int j = 0; j < 2; ++j)
#pragma unroll
        for (int h = 0; h < 2; ++h)
          *reinterpret_cast<uint4*>(&sb[buf][r0 + 32 * (2 * (part >> 1) + j)][(2 * (part & 1) + h) * 16]) = rb[2 * j + h];
    } else {
#pragma unroll
      for (int i = 0; i < 4; ++i)
        if (!direct(br[i], br[i].dt, c)) *reinterpret_cast<uint4*>(&sb[buf][r0 + 32 * i][part * 16]) = rb[i];
    }
  };

  // fp8 mode's register hop (unaligned rows, K tails): each chunk loaded and stored in turn.
  auto stage_sync = [&](int st) {
    const int64_t c = chunk_col(st);
    const int buf = st % kStages;
#pragma unroll
    for (int i = 0; i < 2; ++i)
      if (!direct(ar[i], p.a_dtype, c))
        *reinterpret_cast<uint4*>(&sa[buf][r0 + 32 * i][part * 16]) =
            ar[i].p ? load16_bytes(ar[i].p, c, K) : make_uint4(0, 0, 0, 0);
#pragma unroll
    for (int i = 0; i < 4; ++i)
      if (!direct(br[i], br[i].dt, c))
        *reinterpret_cast<uint4*>(&sb[buf][r0 + 32 * i][part * 16]) =
            br[i].p ? load16_bytes(br[i].p, c, K) : make_uint4(0, 0, 0, 0);
  };

  // B rows of this warp's n8 tile pairs (2 np, 2 np + 1).
  int brow[4];
#pragma unroll
  for (int np = 0; np < 4; ++np) brow[np] = frag::gemm_brow(np, wn, P::kGateUp);

  float acc[2][8][4];
  zero_regs(acc);
  // fp8: the activation scales of the rows this thread's accumulators hold (g and g + 8 of each m16).
  const float* ascale[2][2] = {};
  if constexpr (kFp8) {
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
      for (int h = 0; h < 2; ++h) ascale[mi][h] = p.a_row(tl, frag::gemm_acc_row(wm, mi, lane, 2 * h)).scale;
  }

  // The pipeline: cp.async chunks of stage s + kStages - 1 are issued (one commit group per stage,
  // empty ones included, so wait_group counts stages) before the MMAs of stage s. Register-hop
  // chunks: in bf16 mode (conversions on the main path) stage s + 1 is loaded before those MMAs and
  // stored after them, hiding its latency; in fp8 mode (a fallback for unaligned rows and K tails
  // only) stage s is loaded and stored just before its barrier, so no staging registers live
  // across the MMAs (holding them there spilled).
  const int stages = static_cast<int>((K + kStage - 1) / kStage);
#pragma unroll
  for (int st = 0; st < kStages - 1; ++st) {
    if (st < stages) issue_async(st);
    mma::cp_async_commit();
  }
  if constexpr (!kFp8) {
    load_regs(0);
    put_regs(0);
  }
  for (int s = 0; s < stages; ++s) {
    const int buf = s % kStages;
    if constexpr (kFp8) stage_sync(s);
    mma::cp_async_wait<kStages - 2>();  // this thread's chunks of stage s have landed
    __syncthreads();                    // everyone's have; stage s - 1's buffer is free
    if (s + kStages - 1 < stages) issue_async(s + kStages - 1);
    mma::cp_async_commit();
    if constexpr (!kFp8) {
      if (s + 1 < stages) load_regs(s + 1);
    }
    // fp8: the scales of this stage's 128-wide K block (promotion below, per n8 tile pair)
    float fa[2][2], fb0 = 0.f, fb1 = 0.f;
    if constexpr (kFp8) {
      const int64_t kb = s >> 1;
      fb0 = p.b_scales(tl, 0)[kb];
      fb1 = P::kGateUp ? p.b_scales(tl, 1)[kb] : fb0;
#pragma unroll
      for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int h = 0; h < 2; ++h) fa[mi][h] = ascale[mi][h] ? ascale[mi][h][kb] : 0.f;
    }
    uint32_t af[2][2][4];  // [k step of 32 bytes][mi]
#pragma unroll
    for (int ks = 0; ks < 2; ++ks)
#pragma unroll
      for (int mi = 0; mi < 2; ++mi)
        mma::ldmatrix_x4(af[ks][mi], &sa[buf][frag::gemm_a_ldm_row(wm, mi, lane)][ks * 32 + frag::a_col16(lane) * 16]);
#pragma unroll
    for (int np = 0; np < 4; ++np) {
      // fp8: this stage's products of n8 tiles 2 np, 2 np + 1, promoted into acc once the stage is
      // summed (every 64 K: twice per scale block; a shorter low-precision chain than DeepGEMM's
      // 128, and 16 registers instead of a whole second accumulator set)
      float blk[2][2][4];
      if constexpr (kFp8) zero_regs(blk);
#pragma unroll
      for (int ks = 0; ks < 2; ++ks) {
        uint32_t bf[4];
        mma::ldmatrix_x4(bf, &sb[buf][brow[np] + frag::b_row(lane)][ks * 32 + frag::b_col16(lane) * 16]);
#pragma unroll
        for (int mi = 0; mi < 2; ++mi) {
          if constexpr (kFp8) {
            mma::e4m3_m16n8k32(blk[mi][0], af[ks][mi], bf[0], bf[1]);
            mma::e4m3_m16n8k32(blk[mi][1], af[ks][mi], bf[2], bf[3]);
          } else {
            mma::bf16_m16n8k16(acc[mi][2 * np], af[ks][mi], bf[0], bf[1]);
            mma::bf16_m16n8k16(acc[mi][2 * np + 1], af[ks][mi], bf[2], bf[3]);
          }
        }
      }
      if constexpr (kFp8) {
        const float fb = P::kGateUp && np >= 2 ? fb1 : fb0;  // gate/up: n8 tiles 4..7 are up rows
#pragma unroll
        for (int mi = 0; mi < 2; ++mi)
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const float f = fa[mi][h] * fb;
#pragma unroll
            for (int t = 0; t < 2; ++t)
#pragma unroll
              for (int j = 0; j < 2; ++j) acc[mi][2 * np + t][2 * h + j] += blk[mi][t][2 * h + j] * f;
          }
      }
    }
    if constexpr (!kFp8) {
      // stage s + 1's buffer is read only after the next iteration's barrier; its previous
      // contents (stage s + 1 - kStages) were consumed before this iteration's barrier
      if (s + 1 < stages) put_regs(s + 1);
    }
  }
  mma::cp_async_wait<0>();  // no copy may land in shared memory after the block exits

  // Epilogue: each thread holds columns 2q, 2q + 1 of its rows: one two-column store per pair.
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = frag::gemm_acc_row(wm, mi, lane, 2 * h);
#pragma unroll
      for (int ni = 0; ni < (P::kGateUp ? 4 : 8); ++ni) {
        const int c = frag::gemm_acc_col(wn, ni, lane, 0, P::kGateUp);
        float v[2];
#pragma unroll
        for (int j = 0; j < 2; ++j)
          v[j] = P::kGateUp ? silu_mul(acc[mi][ni][2 * h + j], acc[mi][ni + 4][2 * h + j]) : acc[mi][ni][2 * h + j];
        p.store2(tl, r, c, v[0], v[1]);
      }
    }
}

}  // namespace lc::gpu::tile
