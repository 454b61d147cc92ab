// Small ops on the GPU: embedding gather, SwiGLU, add, scale, convert, argmax, (log-)softmax and
// the sampler (with its penalties / logit bias and log-probabilities). Contracts: native/cpu/elementwise.h, quant.h (convert), sampling.h.
//
// Element-wise kernels are grid-stride loops with 16-byte vector accesses when every pointer is
// 16-byte aligned (scalar tail); row kernels (argmax, softmax, sample) use one block per row.
// Bit-exactness with the CPU: embedding, add, scale, convert, argmax are bit-exact; silu_mul and
// softmax differ by the expf implementation (CUDA expf <= 2 ulp vs glibc / the CPU's polynomial)
// and softmax also by the summation order of its (double) row sum.
#include <algorithm>
#include <cmath>

#include "elementwise.h"
#include "include/small_util.cuh"

namespace lc::gpu {

using util::ArgBest;

namespace {

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// ---- embedding --------------------------------------------------------------------------------
// One block per token. Rows of out-of-range ids are zero-filled (a kernel cannot raise E_ARGUMENT).
template <bool kBf16>
__global__ void embedding_kernel(int64_t H, const void* __restrict__ table, int64_t V, const int32_t* __restrict__ ids,
                                 float* __restrict__ y, bool vec) {
  const int64_t t = blockIdx.x;
  const int64_t id = ids[t];
  float* dst = y + t * H;
  if (id < 0 || id >= V) {
    for (int64_t i = threadIdx.x; i < H; i += blockDim.x) dst[i] = 0.0f;
    return;
  }
  if (kBf16) {
    const uint16_t* src = static_cast<const uint16_t*>(table) + id * H;
    if (vec) {  // H % 8 == 0, 16-byte aligned rows: 8 bf16 in, 2 x float4 out
      for (int64_t i = threadIdx.x; i < H / 8; i += blockDim.x) {
        const uint4 p = reinterpret_cast<const uint4*>(src)[i];
        float4 a, b;
        a.x = __uint_as_float(p.x << 16), a.y = __uint_as_float(p.x & 0xffff0000u);
        a.z = __uint_as_float(p.y << 16), a.w = __uint_as_float(p.y & 0xffff0000u);
        b.x = __uint_as_float(p.z << 16), b.y = __uint_as_float(p.z & 0xffff0000u);
        b.z = __uint_as_float(p.w << 16), b.w = __uint_as_float(p.w & 0xffff0000u);
        reinterpret_cast<float4*>(dst)[2 * i] = a;
        reinterpret_cast<float4*>(dst)[2 * i + 1] = b;
      }
    } else {
      for (int64_t i = threadIdx.x; i < H; i += blockDim.x) dst[i] = bf16_bits_to_f32(src[i]);
    }
  } else {
    const float* src = static_cast<const float*>(table) + id * H;
    if (vec) {
      for (int64_t i = threadIdx.x; i < H / 4; i += blockDim.x)
        reinterpret_cast<float4*>(dst)[i] = reinterpret_cast<const float4*>(src)[i];
    } else {
      for (int64_t i = threadIdx.x; i < H; i += blockDim.x) dst[i] = src[i];
    }
  }
}

// ---- element-wise -------------------------------------------------------------------------------
// F(const float* in[kIn], i) -> value for element i; vector path over float4 groups, then the tail.
struct SiluMulOp {
  __device__ __forceinline__ float operator()(float g, float u, float) const { return g / (1.0f + expf(-g)) * u; }
};
struct AddOp {
  __device__ __forceinline__ float operator()(float a, float b, float alpha) const { return fmaf(alpha, b, a); }
};
struct ScaleOp {
  __device__ __forceinline__ float operator()(float x, float, float alpha) const { return __fmul_rn(alpha, x); }
};

template <typename Op>
__global__ void binary_kernel(int64_t n, const float* __restrict__ a, const float* __restrict__ b, float alpha, float* y,
                              bool vec, Op op) {
  // `y` may alias `a` or `b` (same index read then written by one thread): no __restrict__ on y.
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t i0 = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  int64_t done = 0;
  if (vec) {
    const int64_t n4 = n / 4;
    for (int64_t i = i0; i < n4; i += stride) {
      const float4 x = reinterpret_cast<const float4*>(a)[i];
      const float4 z = b ? reinterpret_cast<const float4*>(b)[i] : make_float4(0, 0, 0, 0);
      float4 r;
      r.x = op(x.x, z.x, alpha), r.y = op(x.y, z.y, alpha), r.z = op(x.z, z.z, alpha), r.w = op(x.w, z.w, alpha);
      reinterpret_cast<float4*>(y)[i] = r;
    }
    done = n4 * 4;
  }
  for (int64_t i = done + i0; i < n; i += stride) y[i] = op(a[i], b ? b[i] : 0.0f, alpha);
}

template <typename Op>
void launch_binary(int64_t n, const float* a, const float* b, float alpha, float* y, void* stream, Op op) {
  if (n <= 0) return;
  constexpr int kThreads = 256;
  const bool vec = aligned16(a) && (!b || aligned16(b)) && aligned16(y);
  binary_kernel<Op><<<util::grid_for(vec ? (n + 3) / 4 : n, kThreads), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      n, a, b, alpha, y, vec, op);
}

// ---- convert ------------------------------------------------------------------------------------
enum : int { kF32 = 0, kBf16 = 1, kF16 = 2, kFp8 = 3 };
inline int code_of(DType t) {
  switch (t) {
    case DType::BF16: return kBf16;
    case DType::F16: return kF16;
    case DType::FP8_E4M3: return kFp8;
    default: return kF32;
  }
}
template <int S>
__device__ __forceinline__ float load_as_f32(const void* p, int64_t i) {
  if (S == kF32) return static_cast<const float*>(p)[i];
  if (S == kBf16) return bf16_bits_to_f32(static_cast<const uint16_t*>(p)[i]);
  if (S == kF16) return util::f16_bits_to_f32(static_cast<const uint16_t*>(p)[i]);
  return util::fp8_bits_to_f32(static_cast<const uint8_t*>(p)[i]);
}
template <int D>
__device__ __forceinline__ void store_from_f32(void* p, int64_t i, float v) {
  if (D == kF32)
    static_cast<float*>(p)[i] = v;
  else if (D == kBf16)
    static_cast<uint16_t*>(p)[i] = f32_to_bf16_bits(v);
  else if (D == kF16)
    static_cast<uint16_t*>(p)[i] = util::f32_to_f16_bits(v);
  else
    static_cast<uint8_t*>(p)[i] = util::f32_to_fp8_bits(v);
}
template <int S, int D>
__global__ void convert_kernel(int64_t n, const void* __restrict__ src, void* __restrict__ dst) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    store_from_f32<D>(dst, i, load_as_f32<S>(src, i));
}
template <int S>
void launch_convert_from(int d, int64_t n, const void* src, void* dst, cudaStream_t s) {
  constexpr int kThreads = 256;
  const unsigned g = util::grid_for(n, kThreads * 4);
  switch (d) {
    case kF32: convert_kernel<S, kF32><<<g, kThreads, 0, s>>>(n, src, dst); break;
    case kBf16: convert_kernel<S, kBf16><<<g, kThreads, 0, s>>>(n, src, dst); break;
    case kF16: convert_kernel<S, kF16><<<g, kThreads, 0, s>>>(n, src, dst); break;
    default: convert_kernel<S, kFp8><<<g, kThreads, 0, s>>>(n, src, dst); break;
  }
}

// ---- argmax -------------------------------------------------------------------------------------
// One block per row. Each thread keeps the first strict maximum of its (ascending) indices; the
// block reduction prefers the lower index among equal values, so the result is the first
// occurrence of the maximum. NaN never compares greater; a row of only -inf / NaN gives 0.
__device__ __forceinline__ int32_t row_argmax(const float* __restrict__ x, int64_t V, ArgBest* sh) {
  ArgBest b{-INFINITY, INT32_MAX};
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
    const float v = x[j];
    if (v > b.v) b = {v, static_cast<int32_t>(j)};
  }
  b = util::block_argbest(b, sh);
  return b.v > -INFINITY ? b.i : 0;
}
__global__ void argmax_kernel(int64_t V, const float* __restrict__ x, int32_t* __restrict__ idx) {
  __shared__ ArgBest sh[32];
  const int32_t r = row_argmax(x + static_cast<int64_t>(blockIdx.x) * V, V, sh);
  if (threadIdx.x == 0) idx[blockIdx.x] = r;
}

// ---- softmax ------------------------------------------------------------------------------------
// One block per row: max (NaN ignored), e = expf(x - m) written to y (softmax) and summed in f64,
// then y *= float(1 / s) or y = (x - m) - float(log s). y may alias x: every element is read and
// written by the same thread, and the passes are separated by the reductions' barriers.
template <bool kLog>
__global__ void softmax_kernel(int64_t V, const float* x, float* y) {
  __shared__ float shf[32];
  __shared__ double shd[32];
  const float* xr = x + static_cast<int64_t>(blockIdx.x) * V;
  float* yr = y + static_cast<int64_t>(blockIdx.x) * V;
  float m = -INFINITY;
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) m = fmaxf(m, xr[j]);
  m = util::block_allreduce(m, util::MaxIgnoreNan(), shf);
  double s = 0;
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
    const float e = expf(xr[j] - m);
    if (!kLog) yr[j] = e;
    s += e;
  }
  s = util::block_allreduce(s, util::Sum(), shd);
  if (kLog) {
    const float ls = static_cast<float>(log(s));
    for (int64_t j = threadIdx.x; j < V; j += blockDim.x) yr[j] = (xr[j] - m) - ls;
  } else {
    const float inv = static_cast<float>(1.0 / s);
    for (int64_t j = threadIdx.x; j < V; j += blockDim.x) yr[j] = __fmul_rn(yr[j], inv);
  }
}

// ---- sample -------------------------------------------------------------------------------------
// One block per row (rows beyond the workspace's slots are taken in turn by the same blocks).
// The filters of cpu::sample are expressed as thresholds instead of candidate lists:
//   A. z = float(logit / T) (NaN -> -inf, -0 -> +0) into the workspace, block argmax of z (zmax,
//      imax). zmax = -inf or +inf: the answer is imax (as on the CPU).
//   B. top-k: the k-th largest z by an 8-bit radix descent over order-preserving keys with counts
//      (kept: key > tau, or key == tau with id <= the cutoff id that keeps exactly k, lower ids
//      first among equal z).
//   C. w = expf(z - zmax) for kept tokens, min-p drops w < minP; the workspace now holds w for
//      survivors and -1 for the others.
//   D. top-p: masses are integers W = rint(w * 2^S) with V * 2^S < 2^63 (exact, order-free sums
//      and histogram atomics, hence deterministic); the nucleus boundary (the smallest prefix of
//      the (w desc, id asc) order with mass >= ceil(topP * total)) is found by a radix descent on
//      the bits of w with mass histograms, then a cutoff id among the boundary weight's ties.
//   E. draw: target = floor(u * total) with the CPU's u(seed, step, row); the token is the first
//      survivor in ascending id order whose cumulative mass exceeds the target.
// Differences from the CPU (documented contract): expf may differ by <= 2 ulp, so w (and tokens
// right at a min-p / top-p boundary) can differ; masses are quantised to 2^-S of the top token's
// weight instead of summed in f64; and the draw walks survivors in ascending id order where the
// CPU walks them in its (heap / partition) order. Greedy (T = 0) and anything that leaves a single
// survivor (topK = 1) are exact; given the seed, GPU results are reproducible run to run.
// The sampling kernels run one block per row or sequence (grids of <= 64 blocks), so their launch
// bounds ask for one resident block per SM: ptxas may then use registers freely (no spills) rather
// than fit several blocks.
constexpr int kSampleThreads = 512;

__device__ __forceinline__ uint32_t order_key(float z) {
  const uint32_t u = __float_as_uint(z);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

constexpr int kSampleWarps = kSampleThreads / 32;

struct SampleShared {
  // Radix histograms, one per warp: most keys fall into a few hot bins, so one block-wide
  // histogram would serialize every thread of the block on them; per warp, only its 32 lanes meet.
  unsigned long long whist[kSampleWarps][256];
  unsigned long long hist[256];  // their sum
  unsigned long long scan[33];
  unsigned long long sv[2];
  ArgBest ab[32];
  long long found;
};

// The largest key t such that the mass of {j : get(j) and key(j) >= t} is >= need (0 < need <=
// total mass); *above = the mass with key > t. get(j, key&, mass&) -> whether j takes part.
template <typename Get>
__device__ uint32_t radix_boundary(int64_t V, unsigned long long need, Get get, SampleShared& sh, unsigned long long* above_out) {
  uint32_t prefix = 0, mask = 0;
  unsigned long long above = 0;
  unsigned long long* mine = sh.whist[threadIdx.x >> 5];  // blockDim.x == kSampleThreads
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int b = threadIdx.x; b < kSampleWarps * 256; b += blockDim.x) sh.whist[b / 256][b % 256] = 0;
    __syncthreads();
    for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
      uint32_t key;
      unsigned long long m;
      if (get(j, key, m) && m && (key & mask) == prefix) atomicAdd(&mine[(key >> shift) & 255u], m);
    }
    __syncthreads();
    for (int b = threadIdx.x; b < 256; b += blockDim.x) {  // integer sums: exact in any order
      unsigned long long s = 0;
#pragma unroll
      for (int w = 0; w < kSampleWarps; ++w) s += sh.whist[w][b];
      sh.hist[b] = s;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      int d = 0;
      for (int b = 255; b >= 0; --b) {
        if (above + sh.hist[b] >= need) {
          d = b;
          break;
        }
        above += sh.hist[b];
      }
      sh.sv[0] = static_cast<unsigned long long>(d);
      sh.sv[1] = above;
    }
    __syncthreads();
    prefix |= static_cast<uint32_t>(sh.sv[0]) << shift;
    mask |= 255u << shift;
    above = sh.sv[1];
    __syncthreads();
  }
  *above_out = above;
  return prefix;
}

// The lowest j such that sum_{i <= j} weight(i) > target, or `fallback` when the total does not
// exceed target. Threads own contiguous index ranges; an exact integer scan finds the owner.
template <typename Weight>
__device__ int64_t find_cum_exceeding(int64_t V, unsigned long long target, Weight weight, int64_t fallback, SampleShared& sh) {
  if (threadIdx.x == 0) sh.found = fallback;
  const int64_t seg = (V + blockDim.x - 1) / blockDim.x;
  const int64_t b0 = seg * static_cast<int64_t>(threadIdx.x), b = b0 < V ? b0 : V, e = b + seg < V ? b + seg : V;
  unsigned long long s = 0;
  for (int64_t j = b; j < e; ++j) s += weight(j);
  unsigned long long total;
  const unsigned long long excl = util::block_exclusive_scan(s, sh.scan, &total);  // barriers order `found`
  if (s > 0 && excl <= target && target - excl < s) {
    unsigned long long cum = excl;
    for (int64_t j = b; j < e; ++j) {
      cum += weight(j);
      if (cum > target) {
        sh.found = j;
        break;
      }
    }
  }
  __syncthreads();
  const int64_t r = sh.found;
  __syncthreads();
  return r;
}

__device__ __forceinline__ unsigned long long sample_mass(float w, double wscale) {
  return w >= 0.0f ? __double2ull_rn(static_cast<double>(w) * wscale) : 0ull;
}

// Stages A-D for one row: zw[j] = the weight of token j if it survives the filters, -1 if not.
// Returns the argmax of z; when its value is -inf or +inf the row's only survivor is
// degenerate_token(best) and zw is left partly written.
__device__ __forceinline__ ArgBest filter_row(const float* __restrict__ l, int64_t V, double temp, int64_t top_k, float top_p,
                                              float min_p, double wscale, float* __restrict__ zw, SampleShared& sh) {
  auto mass = [&](float w) { return sample_mass(w, wscale); };
  // A. z and its argmax.
  ArgBest best{-INFINITY, INT32_MAX};
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
    const float v = l[j];
    float z = isnan(v) ? -INFINITY : static_cast<float>(static_cast<double>(v) / temp);
    if (z == 0.0f) z = 0.0f;  // -0 and +0 are one value for the ordering
    zw[j] = z;
    if (z > best.v) best = {z, static_cast<int32_t>(j)};
  }
  best = util::block_argbest(best, sh.ab);  // its barriers also publish zw
  const float zmax = best.v;
  if (!(zmax > -INFINITY) || isinf(zmax)) return best;
  // B. top-k threshold.
  uint32_t tau = 0;
  int64_t idcut = V;
  if (top_k > 0 && top_k < V) {
    unsigned long long above;
    tau = radix_boundary(
        V, static_cast<unsigned long long>(top_k),
        [&](int64_t j, uint32_t& key, unsigned long long& m) {
          key = order_key(zw[j]);
          m = 1;
          return true;
        },
        sh, &above);
    const unsigned long long need_eq = static_cast<unsigned long long>(top_k) - above;  // >= 1
    idcut = find_cum_exceeding(
        V, need_eq - 1, [&](int64_t j) -> unsigned long long { return order_key(zw[j]) == tau; }, V, sh);
  }
  // C. weights, min-p. Each thread rewrites only its own indices (read before write).
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
    const float z = zw[j];
    const uint32_t key = order_key(z);
    float w = -1.0f;
    if (key > tau || (key == tau && j <= idcut)) {
      w = expf(z - zmax);
      if (min_p > 0.0f && w < min_p) w = -1.0f;
    }
    zw[j] = w;
  }
  __syncthreads();
  // D. top-p nucleus.
  if (top_p < 1.0f) {
    unsigned long long s = 0;
    for (int64_t j = threadIdx.x; j < V; j += blockDim.x) s += mass(zw[j]);
    const unsigned long long total = util::block_allreduce(s, util::Sum(), sh.scan);
    unsigned long long need = static_cast<unsigned long long>(ceil(static_cast<double>(top_p) * static_cast<double>(total)));
    if (need > total) need = total;
    if (need < 1) need = 1;
    unsigned long long above;
    const uint32_t wb = radix_boundary(
        V, need,
        [&](int64_t j, uint32_t& key, unsigned long long& m) {
          const float w = zw[j];
          key = __float_as_uint(w);
          m = mass(w);
          return w >= 0.0f;
        },
        sh, &above);
    const unsigned long long wbm = mass(__uint_as_float(wb));
    const unsigned long long c = wbm > 0 ? (need - above + wbm - 1) / wbm : 1ull;  // wbm > 0 by construction
    const int64_t pcut = find_cum_exceeding(
        V, c - 1,
        [&](int64_t j) -> unsigned long long {
          const float w = zw[j];
          return w >= 0.0f && __float_as_uint(w) == wb;
        },
        V, sh);
    for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
      const float w = zw[j];
      if (w >= 0.0f) {
        const uint32_t u = __float_as_uint(w);
        if (!(u > wb || (u == wb && j <= pcut))) zw[j] = -1.0f;
      }
    }
    __syncthreads();
  }
  return best;
}
__device__ __forceinline__ bool is_degenerate(ArgBest best) { return !(best.v > -INFINITY) || isinf(best.v); }
__device__ __forceinline__ int32_t degenerate_token(ArgBest best) { return best.v > -INFINITY ? best.i : 0; }

// The total survivor mass of a filtered row, token `skip` (-1: none) counted as 0.
__device__ __forceinline__ unsigned long long survivor_mass(int64_t V, const float* zw, int64_t skip, double wscale,
                                                            SampleShared& sh) {
  unsigned long long s = 0;
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x)
    if (j != skip) s += sample_mass(zw[j], wscale);
  return util::block_allreduce(s, util::Sum(), sh.scan);
}

// Stage E: target = floor(u * total); the first survivor in ascending id order whose cumulative
// mass exceeds it, token `skip` weighing 0. total > 0 (the sum survivor_mass gave).
__device__ __forceinline__ int64_t draw(int64_t V, const float* zw, int64_t skip, unsigned long long total, double u,
                                        double wscale, int64_t fallback, SampleShared& sh) {
  unsigned long long target = static_cast<unsigned long long>(u * static_cast<double>(total));
  if (target >= total) target = total - 1;
  return find_cum_exceeding(
      V, target, [&](int64_t j) { return j == skip ? 0ull : sample_mass(zw[j], wscale); }, fallback, sh);
}

__global__ void __launch_bounds__(kSampleThreads, 1)
    sample_kernel(int64_t rows, int64_t V, const float* __restrict__ logits, double temp, int64_t top_k, float top_p, float min_p,
                  uint64_t seed, uint64_t step, int mass_shift, int32_t* __restrict__ ids, float* __restrict__ ws) {
  __shared__ SampleShared sh;
  float* zw = ws + static_cast<int64_t>(blockIdx.x) * V;
  const double wscale = ldexp(1.0, mass_shift);
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const ArgBest best = filter_row(logits + r * V, V, temp, top_k, top_p, min_p, wscale, zw, sh);
    if (is_degenerate(best)) {
      if (threadIdx.x == 0) ids[r] = degenerate_token(best);
      __syncthreads();
      continue;
    }
    const unsigned long long total = survivor_mass(V, zw, -1, wscale, sh);  // >= mass(1) > 0
    const int64_t tok = draw(V, zw, -1, total, cpu::sample_uniform(seed, step, static_cast<uint64_t>(r)), wscale, best.i, sh);
    if (threadIdx.x == 0) ids[r] = static_cast<int32_t>(tok);
    __syncthreads();  // the next row rewrites zw
  }
}

// ---- sampleSpeculative ----------------------------------------------------------------------------
// One block per sequence (sequences beyond the workspace's slots are taken in turn), its rows in
// order until the first rejected draft: greedy rows by row_argmax (bit-exact with the CPU), sampled
// rows by filter_row and integer masses: accept d iff floor(u_A * total) < mass(d) (the draw's
// convention with d's mass placed first: probability mass(d) / total), the correction by draw()
// with d's mass 0, the bonus token by draw() as sample_kernel draws a one-row call. Every branch
// is decided from block-wide reductions, so the whole block takes it together.
// Parameters are not validated on the GPU (a kernel cannot raise E_ARGUMENT); they are clamped so
// that any bit pattern gives a defined result (see elementwise.h).
__device__ __forceinline__ cpu::SampleParams clamp_speculative_params(cpu::SampleParams p) {
  if (!(p.temperature > 0.0f) || isinf(p.temperature)) p.temperature = 0.0f;  // NaN, <= 0, +inf: greedy
  if (p.top_k < 0) p.top_k = 0;
  if (!(p.top_p < 1.0f)) p.top_p = 1.0f;  // NaN too: off
  if (p.top_p < 0.0f) p.top_p = 0.0f;     // 0 keeps the top token (need >= 1)
  if (!(p.min_p > 0.0f)) p.min_p = 0.0f;  // NaN too: off
  if (p.min_p > 1.0f) p.min_p = 1.0f;     // the top token (weight 1) always survives
  return p;
}

__global__ void __launch_bounds__(kSampleThreads, 1)
    sample_speculative_kernel(int64_t B, int64_t k, int64_t V, const float* __restrict__ logits,
                              const int32_t* __restrict__ drafts, const int32_t* __restrict__ positions,
                              const int32_t* __restrict__ params, int mass_shift, int32_t* __restrict__ tokens,
                              int32_t* __restrict__ accepted, float* __restrict__ ws) {
  __shared__ SampleShared sh;
  float* zw = ws + static_cast<int64_t>(blockIdx.x) * V;
  const double wscale = ldexp(1.0, mass_shift);
  const int64_t R = k + 1;
  for (int64_t b = blockIdx.x; b < B; b += gridDim.x) {
    const cpu::SampleParams p = clamp_speculative_params(cpu::decode_speculative_params(params + b * cpu::kSpeculativeParams));
    const bool greedy = !(p.temperature > 0.0f);
    int32_t a = 0, next = 0;
    for (int64_t j = 0; j <= k; ++j) {
      const float* l = logits + (b * R + j) * V;
      const uint64_t step = static_cast<uint64_t>(static_cast<int64_t>(positions[b * R + j])) + 1;
      const int64_t d = j < k ? drafts[b * k + j] : -1;  // may be out of range: then never accepted
      int32_t top = -1;                                  // the row's only survivor, if it has one
      ArgBest best{};
      if (greedy) {
        top = row_argmax(l, V, sh.ab);
      } else {
        best = filter_row(l, V, static_cast<double>(p.temperature), p.top_k, p.top_p, p.min_p, wscale, zw, sh);
        if (is_degenerate(best)) top = degenerate_token(best);
      }
      if (top >= 0) {
        next = top;
        if (j < k && d == top) {
          ++a;
          continue;
        }
        break;
      }
      // mass(d) is read before survivor_mass's barriers: after them a thread may go on to the next
      // row, which rewrites zw
      const unsigned long long md = d >= 0 && d < V ? sample_mass(zw[d], wscale) : 0ull;
      const unsigned long long total = survivor_mass(V, zw, -1, wscale, sh);
      if (j == k) {
        next = static_cast<int32_t>(
            draw(V, zw, -1, total, cpu::sample_uniform(p.seed, step, cpu::kUniformDraw), wscale, best.i, sh));
        break;
      }
      unsigned long long target =
          static_cast<unsigned long long>(cpu::sample_uniform(p.seed, step, cpu::kUniformAccept) * static_cast<double>(total));
      if (target >= total) target = total - 1;
      if (target < md) {
        ++a;
        continue;
      }
      // rejected: target >= md, so total - md > target - md >= 0 is the mass of the others
      next = static_cast<int32_t>(
          draw(V, zw, d, total - md, cpu::sample_uniform(p.seed, step, cpu::kUniformResidual), wscale, best.i, sh));
      break;
    }
    for (int64_t j = threadIdx.x; j < R; j += blockDim.x) tokens[b * R + j] = j < a ? drafts[b * k + j] : next;
    if (threadIdx.x == 0) accepted[b] = a;
    __syncthreads();  // the next sequence rewrites zw
  }
}

__global__ void select_accepted_kernel(int64_t B, int64_t k, const int32_t* __restrict__ candidates,
                                       const int32_t* __restrict__ accepted, int32_t* __restrict__ out) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b < B) out[b] = candidates[b * (k + 1) + cpu::clamp_accepted(accepted[b], k)];
}

// ---- penalize -----------------------------------------------------------------------------------
// One block per row (rows beyond the workspace's slots are taken in turn by the same blocks), over
// a per-slot u64 count row: zeroed, each history entry adds kPromptSeen (prompt) or 1 (generated),
// then every token with a non-zero count gets cpu::penalized_logit, then the bias entries are
// added in order by one thread (the CPU's order: bit-exact). Ids outside [0, V) count for nothing
// (a kernel cannot raise the CPU's E_ARGUMENT).
constexpr unsigned long long kPromptSeen = 1ull << 40;  // above any generated count (H < 2^40)

__global__ void penalize_kernel(int64_t R, int64_t V, int64_t H, int64_t nb, float* __restrict__ logits,
                                const int32_t* __restrict__ history, const int32_t* __restrict__ prompt_lengths,
                                const float* __restrict__ params, const int32_t* __restrict__ bias_ids,
                                const float* __restrict__ bias_values, unsigned long long* __restrict__ counts_ws) {
  unsigned long long* counts = counts_ws + static_cast<int64_t>(blockIdx.x) * V;
  for (int64_t r = blockIdx.x; r < R; r += gridDim.x) {
    float* x = logits + r * V;
    const float* q = params + r * cpu::kPenaltyParams;
    for (int64_t j = threadIdx.x; j < V; j += blockDim.x) counts[j] = 0;
    __syncthreads();
    const int64_t np = prompt_lengths[r];
    for (int64_t j = threadIdx.x; j < H; j += blockDim.x) {
      const int32_t t = history[r * H + j];
      if (t >= 0 && t < V) atomicAdd(&counts[t], j < np ? kPromptSeen : 1ull);
    }
    __syncthreads();
    for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
      const unsigned long long c = counts[j];
      if (c) x[j] = cpu::penalized_logit(x[j], q[0], q[1], q[2], c % kPromptSeen);
    }
    __syncthreads();  // the penalties are written before the bias adds to them, and before counts is reused
    if (threadIdx.x == 0)
      for (int64_t j = 0; j < nb; ++j) {
        const int32_t t = bias_ids[r * nb + j];
        if (t >= 0 && t < V) x[t] = __fadd_rn(x[t], bias_values[r * nb + j]);
      }
    __syncthreads();
  }
}

// ---- logprobs -----------------------------------------------------------------------------------
// One block per row: the max (NaN read as -inf), the f64 sum of exp(x - m), the chosen token's
// log-probability, then k rounds of a block arg-best over the tokens that come after the previous
// round's pick in the (logit desc, id asc) order: the same ids as the CPU's heap. The values
// differ from the CPU's only by the order of the f64 sum and the f64 exp / log implementations.
__device__ __forceinline__ float logit_or_neg_inf(float v) { return isnan(v) ? -INFINITY : v; }

__global__ void logprobs_kernel(int64_t V, int64_t k, const float* __restrict__ logits, const int32_t* __restrict__ chosen,
                                float* __restrict__ out, int32_t* __restrict__ out_ids) {
  __shared__ float shf[32];
  __shared__ double shd[32];
  __shared__ ArgBest sha[32];
  const int64_t r = blockIdx.x;
  const float* l = logits + r * V;
  float m = -INFINITY;
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) m = fmaxf(m, logit_or_neg_inf(l[j]));
  m = util::block_allreduce(m, util::MaxIgnoreNan(), shf);
  const bool finite = m > -INFINITY && m < INFINITY;
  double s = 0;
  if (finite)
    for (int64_t j = threadIdx.x; j < V; j += blockDim.x) s += exp(static_cast<double>(logit_or_neg_inf(l[j])) - m);
  s = util::block_allreduce(s, util::Sum(), shd);
  const double lse = finite ? m + log(s) : static_cast<double>(NAN);
  float* o = out + r * (1 + k);
  if (threadIdx.x == 0) {
    const int32_t c = chosen[r];
    o[0] = c >= 0 && c < V ? static_cast<float>(static_cast<double>(logit_or_neg_inf(l[c])) - lse) : NAN;
  }
  ArgBest prev{INFINITY, -1};  // nothing comes before it
  for (int64_t i = 0; i < k; ++i) {
    ArgBest b{-INFINITY, INT32_MAX};
    for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
      const float v = logit_or_neg_inf(l[j]);
      const int32_t id = static_cast<int32_t>(j);
      if (cpu::logit_before(prev.v, prev.i, v, id) && cpu::logit_before(v, id, b.v, b.i)) b = {v, id};
    }
    b = util::block_argbest(b, sha);
    if (threadIdx.x == 0) {
      out_ids[r * k + i] = b.i;
      o[1 + i] = static_cast<float>(static_cast<double>(b.v) - lse);
    }
    prev = b;
  }
}

constexpr int64_t kPenalizeMaxSlots = 32;

constexpr int64_t kSampleMaxSlots = 64;

// The scale 2^shift of the integer masses: V * 2^shift < 2^63, so sums of V masses <= 1 fit.
int mass_shift_for(int64_t V) {
  int bits = 0;
  while (bits < 63 && (int64_t{1} << bits) <= V) ++bits;  // V < 2^bits
  return 63 - bits;
}

}  // namespace

void embedding(int64_t T, int64_t H, const void* table, DType tt, int64_t V, const int32_t* ids, float* y, void* stream) {
  if (T <= 0 || H <= 0) return;
  auto s = static_cast<cudaStream_t>(stream);
  const bool bf = tt == DType::BF16;
  const bool vec = aligned16(table) && aligned16(y) && H % (bf ? 8 : 4) == 0;
  const int threads =
      static_cast<int>(std::min<int64_t>(256, std::max<int64_t>(32, ((vec ? H / (bf ? 8 : 4) : H) + 31) / 32 * 32)));
  if (bf)
    embedding_kernel<true><<<static_cast<unsigned>(T), threads, 0, s>>>(H, table, V, ids, y, vec);
  else
    embedding_kernel<false><<<static_cast<unsigned>(T), threads, 0, s>>>(H, table, V, ids, y, vec);
}

void silu_mul(int64_t n, const float* gate, const float* up, float* y, void* stream) {
  launch_binary(n, gate, up, 0.0f, y, stream, SiluMulOp());
}
void add(int64_t n, const float* a, const float* b, float alpha, float* y, void* stream) {
  launch_binary(n, a, b, alpha, y, stream, AddOp());
}
void scale(int64_t n, const float* x, float alpha, float* y, void* stream) {
  launch_binary(n, x, nullptr, alpha, y, stream, ScaleOp());
}

namespace {
__global__ void scale_groups_kernel(int64_t n, int64_t cols, const float* x, const float* __restrict__ scales, int64_t r,
                                    int64_t group, int64_t g, float* y) {  // y may alias x
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const int64_t row = i / cols, c = i % cols;
    y[i] = __fmul_rn(x[i], scales[(row % r) * g + c / group]);
  }
}
}  // namespace

void scale_groups(int64_t rows, int64_t cols, const float* x, const float* scales, int64_t r, int64_t group, float* y,
                  void* stream) {
  const int64_t n = rows * cols;
  if (n <= 0) return;
  constexpr int kThreads = 256;
  scale_groups_kernel<<<util::grid_for(n, kThreads), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      n, cols, x, scales, r, group, (cols + group - 1) / group, y);
}

void convert(int64_t n, const void* src, DType st, void* dst, DType dt, void* stream) {
  if (n <= 0) return;
  auto s = static_cast<cudaStream_t>(stream);
  if (st == dt) {
    check(cudaMemcpyAsync(dst, src, static_cast<size_t>(n * dtype_size(st)), cudaMemcpyDeviceToDevice, s), "convert");
    return;
  }
  const int d = code_of(dt);
  switch (code_of(st)) {
    case kF32: launch_convert_from<kF32>(d, n, src, dst, s); break;
    case kBf16: launch_convert_from<kBf16>(d, n, src, dst, s); break;
    case kF16: launch_convert_from<kF16>(d, n, src, dst, s); break;
    default: launch_convert_from<kFp8>(d, n, src, dst, s); break;
  }
}

void argmax(int64_t rows, int64_t V, const float* x, int32_t* idx, void* stream) {
  if (rows <= 0) return;
  argmax_kernel<<<static_cast<unsigned>(rows), 512, 0, static_cast<cudaStream_t>(stream)>>>(V, x, idx);
}

void softmax(int64_t rows, int64_t V, const float* x, float* y, bool log, void* stream) {
  if (rows <= 0) return;
  auto s = static_cast<cudaStream_t>(stream);
  const int threads = V >= 8192 ? 1024 : V >= 1024 ? 256 : 128;
  if (log)
    softmax_kernel<true><<<static_cast<unsigned>(rows), threads, 0, s>>>(V, x, y);
  else
    softmax_kernel<false><<<static_cast<unsigned>(rows), threads, 0, s>>>(V, x, y);
}

int64_t sample_workspace_bytes(int64_t rows, int64_t V) { return std::min(rows, kSampleMaxSlots) * V * 4; }

void sample(int64_t rows, int64_t V, const float* logits, const cpu::SampleParams& p, int32_t* ids, void* workspace,
            int64_t workspace_bytes, void* stream) {
  if (rows <= 0) return;
  auto s = static_cast<cudaStream_t>(stream);
  if (!(p.temperature > 0.0f)) {
    argmax_kernel<<<static_cast<unsigned>(rows), 512, 0, s>>>(V, logits, ids);
    return;
  }
  const int64_t slots = std::min(rows, workspace_bytes / (4 * V));
  if (slots < 1)
    fail(Code::E_ARGUMENT, "sample: the CUDA workspace (%lld bytes) cannot hold one row of %lld logits",
         static_cast<long long>(workspace_bytes), static_cast<long long>(V));
  sample_kernel<<<static_cast<unsigned>(slots), kSampleThreads, 0, s>>>(rows, V, logits, static_cast<double>(p.temperature),
                                                                        p.top_k, p.top_p, p.min_p, p.seed, p.step,
                                                                        mass_shift_for(V), ids, static_cast<float*>(workspace));
}

int64_t sample_speculative_workspace_bytes(int64_t B, int64_t V) { return std::min(B, kSampleMaxSlots) * V * 4; }

void sample_speculative(int64_t B, int64_t k, int64_t V, const float* logits, const int32_t* drafts, const int32_t* positions,
                        const int32_t* params, int32_t* tokens, int32_t* accepted, void* workspace, int64_t workspace_bytes,
                        void* stream) {
  if (B <= 0) return;
  const int64_t slots = std::min(B, workspace_bytes / (4 * V));
  if (slots < 1)
    fail(Code::E_ARGUMENT, "sampleSpeculative: the CUDA workspace (%lld bytes) cannot hold one row of %lld logits",
         static_cast<long long>(workspace_bytes), static_cast<long long>(V));
  sample_speculative_kernel<<<static_cast<unsigned>(slots), kSampleThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      B, k, V, logits, drafts, positions, params, mass_shift_for(V), tokens, accepted, static_cast<float*>(workspace));
}

int64_t penalize_workspace_bytes(int64_t R, int64_t V) { return std::min(R, kPenalizeMaxSlots) * V * 8; }

void penalize(int64_t R, int64_t V, int64_t H, int64_t nb, float* logits, const int32_t* history, const int32_t* prompt_lengths,
              const float* params, const int32_t* bias_ids, const float* bias_values, void* workspace, int64_t workspace_bytes,
              void* stream) {
  if (R <= 0 || V <= 0) return;
  const int64_t slots = std::min(R, workspace_bytes / (8 * V));
  if (slots < 1)
    fail(Code::E_ARGUMENT, "penalize: the CUDA workspace (%lld bytes) cannot hold one row of %lld counts",
         static_cast<long long>(workspace_bytes), static_cast<long long>(V));
  penalize_kernel<<<static_cast<unsigned>(slots), 512, 0, static_cast<cudaStream_t>(stream)>>>(
      R, V, H, nb, logits, history, prompt_lengths, params, bias_ids, bias_values, static_cast<unsigned long long*>(workspace));
}

void logprobs(int64_t R, int64_t V, int64_t k, const float* logits, const int32_t* chosen, float* out, int32_t* out_ids,
              void* stream) {
  if (R <= 0) return;
  const int threads = V >= 8192 ? 1024 : V >= 1024 ? 256 : 128;
  logprobs_kernel<<<static_cast<unsigned>(R), threads, 0, static_cast<cudaStream_t>(stream)>>>(V, k, logits, chosen, out,
                                                                                               out_ids);
}

void select_accepted(int64_t B, int64_t k, const int32_t* candidates, const int32_t* accepted, int32_t* out, void* stream) {
  if (B <= 0) return;
  constexpr int kThreads = 128;
  select_accepted_kernel<<<static_cast<unsigned>((B + kThreads - 1) / kThreads), kThreads, 0,
                           static_cast<cudaStream_t>(stream)>>>(B, k, candidates, accepted, out);
}

}  // namespace lc::gpu
