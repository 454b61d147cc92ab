// RoPE, interleaved pairs (SPEC 3.6), twin of native/cpu/rope.cc. One block per token: the
// block computes cos/sin of a chunk of pairs into shared memory once, then rotates that chunk
// in every head.
#include "include/common.cuh"
#include "rope.h"

namespace lc::gpu {

namespace {

constexpr int kChunk = 256;

__global__ void rope_kernel(int64_t heads, int64_t head_dim, float* __restrict__ x, const int32_t* __restrict__ positions,
                            int64_t offset, int64_t pairs, const float* __restrict__ inv_freq, float af) {
  __shared__ float cs[kChunk], sn[kChunk];
  const int64_t r = blockIdx.x;
  const float pos = static_cast<float>(positions[r]);
  float* row = x + r * heads * head_dim + offset;
  for (int64_t p0 = 0; p0 < pairs; p0 += kChunk) {
    const int64_t n = pairs - p0 < kChunk ? pairs - p0 : kChunk;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
      const float a = __fmul_rn(pos, inv_freq[p0 + i]);  // the f32 angle, as the CPU computes it
      double sd, cd;
      sincos(static_cast<double>(a), &sd, &cd);
      cs[i] = __fmul_rn(static_cast<float>(cd), af);
      sn[i] = __fmul_rn(static_cast<float>(sd), af);
    }
    __syncthreads();
    for (int64_t k = threadIdx.x; k < heads * n; k += blockDim.x) {
      const int64_t h = k / n, i = k % n;
      float* v = row + h * head_dim + 2 * (p0 + i);
      const float x0 = v[0], x1 = v[1];
      v[0] = __fsub_rn(__fmul_rn(x0, cs[i]), __fmul_rn(x1, sn[i]));
      v[1] = __fadd_rn(__fmul_rn(x1, cs[i]), __fmul_rn(x0, sn[i]));
    }
    __syncthreads();  // before the next chunk overwrites cs / sn
  }
}

}  // namespace

void rope(int64_t t, int64_t heads, int64_t head_dim, float* x, const int32_t* positions, int64_t offset, int64_t rope_dim,
          const float* inv_freq, float attention_factor, void* stream) {
  const int64_t pairs = rope_dim / 2;
  if (t <= 0 || heads <= 0 || pairs <= 0) return;
  const int64_t work = heads * (pairs < kChunk ? pairs : kChunk);
  const int threads = work >= 256 ? 256 : work >= 128 ? 128 : 64;
  rope_kernel<<<static_cast<unsigned>(t), threads, 0, static_cast<cudaStream_t>(stream)>>>(heads, head_dim, x, positions, offset,
                                                                                           pairs, inv_freq, attention_factor);
}

}  // namespace lc::gpu
