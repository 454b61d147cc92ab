// The tensor-core tile GEMM shared by the dense linear (linear.cu) and the grouped expert GEMMs
// (moe.cu): C[64 x 128] += A[64 x K] * B[128 x K]^T per thread block, both operands K-major (the
// nn.Linear weight layout), fp32 accumulation.
//
//   bf16 mode: A (f32 or bf16 activations) is rounded to bf16 and B (f32/bf16/fp8/int8 weights) is
//              dequantized to bf16 while staged; mma.m16n8k16.
//   fp8 mode:  A is e4m3 with 1x128 group scales per row, B is e4m3 with 128x128 block scales
//              (DeepSeek-V3 / DeepGEMM recipe); mma.m16n8k32 into a per-K-block accumulator that is
//              scaled by a_scale[row] * b_scale and added to the main one when each 128-wide K block
//              ends (the "promotion" that keeps fp8 products from being summed at low precision).
//
// Tiling, written out: 128 threads = 4 warps as 2 (M) x 2 (N); a warp owns 32 rows x 64 columns =
// 2 x 8 mma tiles. K advances in 64-byte stages (32 bf16 / 64 e4m3 elements), double-buffered in
// shared memory with rows padded to 80 bytes (ldmatrix reads 8 rows of 16 bytes: with an 80-byte
// pitch they fall in 8 distinct 16-byte bank groups). Global loads of stage s + 1 are issued into
// registers before the MMAs of stage s and stored to the other buffer after them, so their latency
// hides behind the math; dtype conversion happens in that register hop. Rows past the problem
// and K past its end are zero-filled, so any M, N, K works (fast 16-byte loads where aligned).
//
// The problem P says where rows come from and where results go (dense, expert-grouped, gate/up
// pairs); kGateUp problems put gate rows n0.. in B rows 0..63 and up rows n0.. in 64..127, so a
// warp holds gate and up of the same 32 columns and the epilogue writes silu(gate) * up.
#pragma once
#include <cstdint>

#include "common.cuh"
#include "fragments.h"
#include "mma.cuh"

namespace lc::gpu::tile {

constexpr int kBM = 64, kBN = 128, kThreads = 128;
constexpr int kStageBytes = 64, kPitch = 80;

// An operand row as the tile loader sees it. p == nullptr: a zero row (past the problem).
//   A, fp8 mode: scale -> the row's 1x128 group scales.
//   B: fp8 -> the row's block-scale row (weight_scale_inv + (n / 128) * kb); int8 -> &scale[n].
struct Row {
  const void* p = nullptr;
  const float* scale = nullptr;
  DType dt = DType::F32;  // B rows: the weight's stored format (A rows: unused, P::a_dtype)
};

__device__ __forceinline__ bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
  return static_cast<uint32_t>(f32_to_bf16_bits(lo)) | (static_cast<uint32_t>(f32_to_bf16_bits(hi)) << 16);
}

__device__ __forceinline__ uint4 pack_bf16x8(const float (&v)[8]) {
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
  } else {  // I8
    const int8_t* r = static_cast<const int8_t*>(w.p) + c;
    const float s = *w.scale;
#pragma unroll
    for (int j = 0; j < 8; ++j) v[j] = c + j < K ? static_cast<float>(r[j]) * s : 0.f;
  }
  return pack_bf16x8(v);
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
//   __device__ void store(const Tile&, int r, int c, float v) const;  c < 128 (64 for kGateUp);
//                                                       must ignore r / c past the problem
template <class P, bool kFp8>
__global__ void __launch_bounds__(kThreads) gemm_kernel(const P p) {
  struct alignas(16) Tiles {
    uint8_t a[2][kBM][kPitch];
    uint8_t b[2][kBN][kPitch];
  };
  __shared__ Tiles smem;
  auto& sa = smem.a;
  auto& sb = smem.b;
  typename P::Tile tl;
  if (!p.tile(tl)) return;  // block-uniform
  constexpr int kElems = kFp8 ? 16 : 8;  // elements per 16-byte chunk
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
  uint4 ra[2], rb[4];
  auto fetch = [&](int64_t k0) {
    const int64_t c = k0 + part * kElems;
#pragma unroll
    for (int i = 0; i < 2; ++i)
      ra[i] = !ar[i].p ? make_uint4(0, 0, 0, 0) : kFp8 ? load16_bytes(ar[i].p, c, K) : load8_bf16(ar[i].p, p.a_dtype, c, K);
#pragma unroll
    for (int i = 0; i < 4; ++i)
      rb[i] = !br[i].p ? make_uint4(0, 0, 0, 0) : kFp8 ? load16_bytes(br[i].p, c, K) : load8_weight_bf16(br[i], br[i].dt, c, K);
  };
  auto put = [&](int buf) {
#pragma unroll
    for (int i = 0; i < 2; ++i) *reinterpret_cast<uint4*>(&sa[buf][r0 + 32 * i][part * 16]) = ra[i];
#pragma unroll
    for (int i = 0; i < 4; ++i) *reinterpret_cast<uint4*>(&sb[buf][r0 + 32 * i][part * 16]) = rb[i];
  };

  // B rows of this warp's n8 tile pairs (2 np, 2 np + 1).
  int brow[4];
#pragma unroll
  for (int np = 0; np < 4; ++np) brow[np] = frag::gemm_brow(np, wn, P::kGateUp);

  float acc[2][8][4];
  float blk[kFp8 ? 2 : 1][8][4];  // fp8: this K block's partial sums
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int ni = 0; ni < 8; ++ni)
#pragma unroll
      for (int r = 0; r < 4; ++r) acc[mi][ni][r] = 0.f;
  if constexpr (kFp8) {
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
      for (int ni = 0; ni < 8; ++ni)
#pragma unroll
        for (int r = 0; r < 4; ++r) blk[mi][ni][r] = 0.f;
  }
  // fp8: the activation scales of the rows this thread's accumulators hold (g and g + 8 of each m16).
  const float* ascale[2][2] = {};
  if constexpr (kFp8) {
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
      for (int h = 0; h < 2; ++h) ascale[mi][h] = p.a_row(tl, frag::gemm_acc_row(wm, mi, lane, 2 * h)).scale;
  }

  const int stages = static_cast<int>((K + kStage - 1) / kStage);
  fetch(0);
  put(0);
  __syncthreads();
  for (int s = 0; s < stages; ++s) {
    const int buf = s & 1;
    if (s + 1 < stages) fetch(static_cast<int64_t>(s + 1) * kStage);
#pragma unroll
    for (int ks = 0; ks < 2; ++ks) {  // two 32-byte MMA k steps per stage
      uint32_t af[2][4];
#pragma unroll
      for (int mi = 0; mi < 2; ++mi) mma::ldmatrix_x4(af[mi], &sa[buf][frag::gemm_a_ldm_row(wm, mi, lane)][ks * 32 + frag::a_col16(lane) * 16]);
#pragma unroll
      for (int np = 0; np < 4; ++np) {
        uint32_t bf[4];
        mma::ldmatrix_x4(bf, &sb[buf][brow[np] + frag::b_row(lane)][ks * 32 + frag::b_col16(lane) * 16]);
#pragma unroll
        for (int mi = 0; mi < 2; ++mi) {
          if constexpr (kFp8) {
            mma::e4m3_m16n8k32(blk[mi][2 * np], af[mi], bf[0], bf[1]);
            mma::e4m3_m16n8k32(blk[mi][2 * np + 1], af[mi], bf[2], bf[3]);
          } else {
            mma::bf16_m16n8k16(acc[mi][2 * np], af[mi], bf[0], bf[1]);
            mma::bf16_m16n8k16(acc[mi][2 * np + 1], af[mi], bf[2], bf[3]);
          }
        }
      }
    }
    if constexpr (kFp8) {
      if ((s & 1) || s + 1 == stages) {  // a 128-wide K block ends (two 64-element stages)
        const int64_t kb = s >> 1;
        const float s0 = p.b_scales(tl, 0)[kb], s1 = P::kGateUp ? p.b_scales(tl, 1)[kb] : s0;
#pragma unroll
        for (int mi = 0; mi < 2; ++mi)
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const float sa_ = ascale[mi][h] ? ascale[mi][h][kb] : 0.f;
#pragma unroll
            for (int ni = 0; ni < 8; ++ni) {
              const float f = sa_ * (P::kGateUp && ni >= 4 ? s1 : s0);
#pragma unroll
              for (int j = 0; j < 2; ++j) {
                acc[mi][ni][2 * h + j] += blk[mi][ni][2 * h + j] * f;
                blk[mi][ni][2 * h + j] = 0.f;
              }
            }
          }
      }
    }
    if (s + 1 < stages) put(buf ^ 1);  // that buffer's last readers passed the barrier below in s - 1
    __syncthreads();
  }

#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = frag::gemm_acc_row(wm, mi, lane, 2 * h);
#pragma unroll
      for (int ni = 0; ni < (P::kGateUp ? 4 : 8); ++ni)
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          const int c = frag::gemm_acc_col(wn, ni, lane, j, P::kGateUp);
          const float v = P::kGateUp ? silu_mul(acc[mi][ni][2 * h + j], acc[mi][ni + 4][2 * h + j]) : acc[mi][ni][2 * h + j];
          p.store(tl, r, c, v);
        }
    }
}

}  // namespace lc::gpu::tile
