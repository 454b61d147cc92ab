// Warp-level reductions and the online-softmax step shared by the attention kernels (mla.cu,
// mla_decode_tc.cu, mla_prefill_tc.cu) and the MoE (moe.cu).
#pragma once
#include "common.cuh"

namespace lc::gpu {

// Max that propagates a NaN from either side (the CPU: a NaN score poisons its row).
__device__ __forceinline__ float max_nan(float a, float b) { return (a > b || a != a) ? a : b; }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max_nan(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = max_nan(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// One online-softmax step for one row, done by a whole warp: lane j holds score s (-inf when
// masked / beyond the tile). Mirrors cpu softmax_scalar: returns p = exp(s - m_new) in `s`,
// updates m and l (lane-uniform) and gives the accumulator rescale factor.
__device__ __forceinline__ float online_softmax_warp(float& s, float& m, float& l) {
  const float mx = max_nan(m, warp_max_nan(s));
  if (mx == -INFINITY) {  // every key masked so far: nothing to add
    s = 0.0f;
    return 1.0f;
  }
  const float corr = m == -INFINITY ? 0.0f : expf(m - mx);
  s = expf(s - mx);  // exp(-inf) = 0 for masked lanes
  l = l * corr + warp_sum(s);
  m = mx;
  return corr;
}

// online_softmax_warp for row i of a tile whose running max, sum and rescale factor live in
// shared memory (ms[i], ls[i], cs[i]): returns p = exp(s - m_new) of this lane's score.
__device__ __forceinline__ float online_softmax_row(float s, float* ms, float* ls, float* cs, int i) {
  float m = ms[i], l = ls[i];
  const float corr = online_softmax_warp(s, m, l);
  __syncwarp();  // every lane read ms / ls (shuffles do not order memory) before lane 0 rewrites them
  if ((threadIdx.x & 31) == 0) {
    ms[i] = m;
    ls[i] = l;
    cs[i] = corr;
  }
  return s;
}

}  // namespace lc::gpu
