// Device helpers shared by elementwise.cu, quant.cu, moe_router.cu, mla_cache.cu: bit-exact ports of the scalar
// conversions of native/cpu/numeric.h (integer arithmetic, no conversion intrinsics whose NaN /
// saturation behaviour would need checking), and deterministic block reductions / scans.
#pragma once
#include <cstdint>

#include "common.cuh"

namespace lc::gpu::util {

// ---- conversions (twins of lc::cpu:: in numeric.h) -------------------------------------------

__device__ __forceinline__ float f16_bits_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
  if (exp == 0) {
    const float v = static_cast<float>(man) * 5.9604644775390625e-8f;  // man * 2^-24, exact
    return (h & 0x8000u) ? -v : v;
  }
  if (exp == 31) return __uint_as_float(sign | 0x7f800000u | (man << 13));
  return __uint_as_float(sign | ((exp + 112u) << 23) | (man << 13));
}

// An int4 group's scale s and -z * s (lc::cpu::linear.h's format) from its stored bf16 / f16 bits
// p[0] (and the zero point p[1] when `zero`, else 8): the weight is fma(q, s, mzs), exact.
__device__ __forceinline__ void int4_group_params(const uint16_t* p, bool f16, bool zero, float& s, float& mzs) {
  s = f16 ? f16_bits_to_f32(p[0]) : bf16_bits_to_f32(p[0]);
  const float z = zero ? (f16 ? f16_bits_to_f32(p[1]) : bf16_bits_to_f32(p[1])) : 8.f;
  mzs = -z * s;
}

// Round to nearest even, overflow to infinity, NaN -> sign | 0x7e00 (lc::cpu::f32_to_f16).
__device__ __forceinline__ uint16_t f32_to_f16_bits(float f) {
  const uint32_t u = __float_as_uint(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return sign | 0x7e00u;
  if (a >= 0x477ff000u) return sign | 0x7c00u;
  if (a < 0x38800000u) {
    const float v = __fmul_rn(__uint_as_float(a), 16777216.0f);  // exact: power-of-two scale
    return sign | static_cast<uint16_t>(static_cast<uint32_t>(rintf(v)));
  }
  const uint32_t r = a + 0xfffu + ((a >> 13) & 1u);
  return sign | static_cast<uint16_t>((r - 0x38000000u) >> 13);
}

// lc::cpu::fp8e4m3_to_f32: 0x7f / 0xff decode to the default quiet NaN 0x7fc00000 (what NAN is
// on the host), whatever the sign.
__device__ __forceinline__ float fp8_bits_to_f32(uint8_t b) {
  const uint32_t exp = (b >> 3) & 0xfu, man = b & 0x7u;
  if (exp == 0xf && man == 0x7) return __uint_as_float(0x7fc00000u);
  float v;
  if (exp == 0)
    v = static_cast<float>(man) * 0.001953125f;  // man * 2^-9, exact
  else
    v = __uint_as_float(((exp + 120u) << 23) | (man << 20));  // (1 + man/8) * 2^(exp-7), exact
  return (b & 0x80u) ? -v : v;
}

// lc::cpu::f32_to_fp8e4m3: RNE, saturating to +-448, NaN -> sign | 0x7f.
__device__ __forceinline__ uint8_t f32_to_fp8_bits(float f) {
  const uint32_t u = __float_as_uint(f);
  const uint8_t sign = static_cast<uint8_t>((u >> 24) & 0x80u);
  const float a = fabsf(f);
  if (isnan(f)) return sign | 0x7fu;
  if (a >= 448.0f) return sign | 0x7eu;
  if (a < 0.015625f) {
    const uint32_t m = static_cast<uint32_t>(rintf(__fmul_rn(a, 512.0f)));  // exact scale, RNE
    return sign | static_cast<uint8_t>(m);
  }
  const uint32_t ua = __float_as_uint(a);
  const uint32_t r = ua + 0x7ffffu + ((ua >> 20) & 1u);
  const int exp = static_cast<int>((r >> 23) & 0xffu) - 127 + 7;
  const uint32_t man = (r >> 20) & 0x7u;
  if (exp > 15 || (exp == 15 && man == 7)) return sign | 0x7eu;
  return sign | static_cast<uint8_t>((exp << 3) | static_cast<int>(man));
}

// x86 NaN semantics for the two f32 operations the CPU's quantizers do, so that NaN signs (and thus
// the fp8 / bf16 NaN encodings) match: a NaN operand propagates itself (first operand first), an
// invalid operation (inf / inf, 0 * inf) gives the x86 default NaN 0xffc00000; CUDA would give 0x7fffffff.
__device__ __forceinline__ float x86_div(float a, float b) {
  if (isnan(a)) return __uint_as_float(__float_as_uint(a) | 0x00400000u);
  if (isnan(b)) return __uint_as_float(__float_as_uint(b) | 0x00400000u);
  const float r = a / b;
  return isnan(r) ? __uint_as_float(0xffc00000u) : r;
}
__device__ __forceinline__ float x86_mul(float a, float b) {
  if (isnan(a)) return __uint_as_float(__float_as_uint(a) | 0x00400000u);
  if (isnan(b)) return __uint_as_float(__float_as_uint(b) | 0x00400000u);
  const float r = __fmul_rn(a, b);
  return isnan(r) ? __uint_as_float(0xffc00000u) : r;
}

// One 128-value group of cpu::quantize_fp8_group on a warp, bit-exact: lane l holds v[i] = element
// l + 32 i (0 past the group's n values); amax ignores NaN, s = max(amax, 1e-10f) / 448 (IEEE),
// q[c] = fp8(x86_div(x[c], s)) written for c < n. Returns s on every lane. All 32 lanes must call it.
__device__ __forceinline__ float warp_quantize_fp8_group(const float (&v)[4], int n, int lane, uint8_t* q) {
  float m = 0.0f;
#pragma unroll
  for (int i = 0; i < 4; ++i) m = fmaxf(m, fabsf(v[i]));
  for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
  const float s = fmaxf(m, 1e-10f) / 448.0f;  // cpu::kFp8Tiny
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int c = lane + 32 * i;
    if (c < n) q[c] = f32_to_fp8_bits(x86_div(v[i], s));
  }
  return s;
}

// ---- reductions ------------------------------------------------------------------------------
// All-reduce over the block (every thread gets the result). The warp part is a butterfly (every
// lane computes the same bits for commutative ops); warps are combined in a fixed order, so the
// result is deterministic run to run. `sh` holds >= 32 values; the trailing barrier lets the
// caller reuse it immediately. Must be reached by every thread of the block. T: a type shfl_xor
// exchanges (a scalar, or ArgBest below).
template <typename T>
__device__ __forceinline__ T shfl_xor(T v, int o) {
  return __shfl_xor_sync(0xffffffffu, v, o);
}
template <typename T, typename Op>
__device__ __forceinline__ T block_allreduce(T v, Op op, T* sh) {
  for (int o = 16; o > 0; o >>= 1) v = op(v, shfl_xor(v, o));
  const int warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
  if ((threadIdx.x & 31) == 0) sh[warp] = v;
  __syncthreads();
  T r = sh[0];
  for (int w = 1; w < nwarps; ++w) r = op(r, sh[w]);
  __syncthreads();
  return r;
}

struct Sum {
  template <typename T>
  __device__ __forceinline__ T operator()(T a, T b) const {
    return a + b;
  }
};
struct MaxIgnoreNan {  // fmaxf keeps the non-NaN operand, like the CPU's `x > m ? x : m`
  __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

// (value, index) arg-max: larger value wins, equal values -> lower index. NaN values must not be
// fed in (callers skip them), so comparisons are total.
struct ArgBest {
  float v;
  int32_t i;
};
__device__ __forceinline__ ArgBest arg_better(ArgBest a, ArgBest b) { return (b.v > a.v || (b.v == a.v && b.i < a.i)) ? b : a; }
__device__ __forceinline__ ArgBest shfl_xor(ArgBest v, int o) {
  ArgBest x;
  x.v = __shfl_xor_sync(0xffffffffu, v.v, o);
  x.i = __shfl_xor_sync(0xffffffffu, v.i, o);
  return x;
}
__device__ __forceinline__ ArgBest block_argbest(ArgBest v, ArgBest* sh) {
  return block_allreduce(
      v, [](ArgBest a, ArgBest b) { return arg_better(a, b); }, sh);
}

// Exclusive prefix sum over the block in thread order (integers: exact and deterministic).
// `sh` holds >= 33 values. Returns the exclusive prefix; *total receives the block total.
template <typename T>
__device__ __forceinline__ T block_exclusive_scan(T v, T* sh, T* total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
  T incl = v;
  for (int o = 1; o < 32; o <<= 1) {
    T y = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += y;
  }
  if (lane == 31) sh[warp] = incl;
  __syncthreads();
  if (threadIdx.x == 0) {
    T acc = 0;
    for (int w = 0; w < nwarps; ++w) {
      T t = sh[w];
      sh[w] = acc;
      acc += t;
    }
    sh[32] = acc;
  }
  __syncthreads();
  const T excl = sh[warp] + incl - v;
  *total = sh[32];
  __syncthreads();
  return excl;
}

// Grid size for grid-stride element-wise loops: enough blocks to fill any GPU, never > 2^31 - 1.
inline unsigned grid_for(int64_t work_items, int threads) {
  int64_t b = (work_items + threads - 1) / threads;
  if (b < 1) b = 1;
  if (b > 65536) b = 65536;
  return static_cast<unsigned>(b);
}

}  // namespace lc::gpu::util
