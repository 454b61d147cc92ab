// MoE router on the GPU, twin of lc::cpu::router_topk (native/cpu/moe.cc). One block per token.
// Selection: every expert gets a unique 64-bit key (order-preserving bits of its score << 32 |
// ~expert), so "higher score, then lower expert" is plain integer order; round r picks the largest
// key below the key picked in round r - 1 (scores are recomputed, bit-identically, each round, so
// nothing of size e is stored and any e works). Differences from the CPU: expf (<= 2 ulp) and the
// order of the f64 sum of the softmax denominator, so near-tied scores may select differently.
#include "moe_router.h"
#include "include/small_util.cuh"

namespace lc::gpu {

namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ unsigned long long score_key(float s, int64_t j) {
  if (isnan(s)) s = -INFINITY;
  if (s == 0.0f) s = 0.0f;  // -0 == +0 as scores: the lower expert wins, as on the CPU
  const uint32_t u = __float_as_uint(s);
  const uint32_t k = (u & 0x80000000u) ? ~u : (u | 0x80000000u);  // > 0 for every non-NaN float
  return (static_cast<unsigned long long>(k) << 32) | (0xffffffffu - static_cast<uint32_t>(j));
}
struct MaxU64 {
  __device__ __forceinline__ unsigned long long operator()(unsigned long long a, unsigned long long b) const {
    return a > b ? a : b;
  }
};

__global__ void __launch_bounds__(kThreads)
    router_kernel(int64_t e, int64_t k, const float* __restrict__ logits, const float* __restrict__ bias, int64_t n_routed,
                  float scale, int32_t* __restrict__ idx, float* __restrict__ w, int32_t* __restrict__ nffn) {
  __shared__ float shf[32];
  __shared__ double shd[32];
  __shared__ unsigned long long shk[32];
  const int64_t t = blockIdx.x;
  const float* l = logits + t * e;
  float m = -INFINITY;
  for (int64_t j = threadIdx.x; j < e; j += blockDim.x) m = fmaxf(m, l[j]);  // NaN ignored, like `l[j] > m`
  m = util::block_allreduce(m, util::MaxIgnoreNan(), shf);
  double sum = 0;
  for (int64_t j = threadIdx.x; j < e; j += blockDim.x) sum += static_cast<double>(expf(l[j] - m));
  sum = util::block_allreduce(sum, util::Sum(), shd);
  const float denom = static_cast<float>(sum);
  unsigned long long prev = ~0ull;  // keys are unique, so "below prev" excludes exactly the picks so far
  int32_t f = 0;
  for (int64_t r = 0; r < k; ++r) {
    unsigned long long best = 0;
    for (int64_t j = threadIdx.x; j < e; j += blockDim.x) {
      const float s = __fadd_rn(expf(l[j] - m) / denom, bias[j]);
      const unsigned long long key = score_key(s, j);
      if (key < prev && key > best) best = key;
    }
    best = util::block_allreduce(best, MaxU64(), shk);
    prev = best;
    const int32_t x = static_cast<int32_t>(0xffffffffu - static_cast<uint32_t>(best & 0xffffffffu));
    f += x < n_routed;
    if (threadIdx.x == 0) {
      idx[t * k + r] = x;
      w[t * k + r] = __fmul_rn(expf(l[x] - m) / denom, scale);
    }
  }
  if (nffn && threadIdx.x == 0) nffn[t] = f;
}

__global__ void zero_kernel(int64_t n, int32_t* p) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    p[i] = 0;
}

}  // namespace

void router_topk(int64_t t, int64_t e, int64_t k, const float* logits, const float* bias, int64_t n_routed, float scale,
                 int32_t* idx, float* w, int32_t* nffn, void* stream) {
  if (t <= 0) return;
  auto s = static_cast<cudaStream_t>(stream);
  if (k <= 0 || e <= 0) {
    if (nffn) zero_kernel<<<util::grid_for(t, 256), 256, 0, s>>>(t, nffn);
    return;
  }
  const int threads = e >= 256 ? kThreads : e >= 128 ? 128 : e >= 64 ? 64 : 32;
  router_kernel<<<static_cast<unsigned>(t), threads, 0, s>>>(e, k, logits, bias, n_routed, scale, idx, w, nffn);
}

}  // namespace lc::gpu
