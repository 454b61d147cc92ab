// N-gram embedding projection + mean on the GPU (contract: ngram.h): one warp per output (t, h),
// its lanes striding over the D-wide dot product of each table in turn, fp32 throughout; the
// tables are added in order e = 0..E-1 like the CPU kernel (the dot products' summation order
// differs, so the two agree to fp32 rounding, not bit for bit).
#include <algorithm>

#include "include/common.cuh"
#include "ngram.h"

namespace lc::gpu {

namespace {

constexpr int kWarps = 8;

template <typename A>
__device__ __forceinline__ float load(const A* p, int64_t i) {
  if constexpr (sizeof(A) == 2)
    return bf16_bits_to_f32(p[i]);
  else
    return p[i];
}

template <typename R, typename P>
__global__ void ngram_embed_kernel(int64_t T, int64_t H, int64_t E, int64_t D, const float* __restrict__ base,
                                   const R* __restrict__ rows, const P* __restrict__ proj, float* y, float inv_count) {
  const int lane = threadIdx.x & 31;
  const int64_t h = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (h >= H) return;  // a whole warp leaves together: h is the same for all its lanes
  for (int64_t t = blockIdx.y; t < T; t += gridDim.y) {
    float acc = base[t * H + h];
    for (int64_t e = 0; e < E; ++e) {
      const R* r = rows + (e * T + t) * D;
      const P* w = proj + (e * H + h) * D;
      float dot = 0.0f;
      for (int64_t k = lane; k < D; k += 32) dot += load(r, k) * load(w, k);
      for (int o = 16; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
      acc += dot;
    }
    if (lane == 0) y[t * H + h] = acc * inv_count;
  }
}

template <typename R, typename P>
void launch(int64_t T, int64_t H, int64_t E, int64_t D, const float* base, const void* rows, const void* proj, float* y,
            cudaStream_t s) {
  const dim3 grid(static_cast<unsigned>(ceil_div(H, kWarps)), static_cast<unsigned>(std::min<int64_t>(T, 65535)));
  ngram_embed_kernel<R, P><<<grid, kWarps * 32, 0, s>>>(T, H, E, D, base, static_cast<const R*>(rows),
                                                        static_cast<const P*>(proj), y, 1.0f / static_cast<float>(E + 1));
}

}  // namespace

void ngram_embed(int64_t T, int64_t H, int64_t E, int64_t D, const float* base, const void* rows, DType rt, const void* proj,
                 DType pt, float* y, void* stream) {
  if (T <= 0 || H <= 0) return;
  auto s = static_cast<cudaStream_t>(stream);
  const bool rb = rt == DType::BF16, pb = pt == DType::BF16;
  if (rb && pb)
    launch<uint16_t, uint16_t>(T, H, E, D, base, rows, proj, y, s);
  else if (rb)
    launch<uint16_t, float>(T, H, E, D, base, rows, proj, y, s);
  else if (pb)
    launch<float, uint16_t>(T, H, E, D, base, rows, proj, y, s);
  else
    launch<float, float>(T, H, E, D, base, rows, proj, y, s);
}

}  // namespace lc::gpu
