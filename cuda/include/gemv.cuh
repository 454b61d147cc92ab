// The decode GEMV core (at most 16 activation rows) shared by linear.cu's skinny path and moe.cu's
// decode experts: y[i, n] = x[i, :] . W[n, :] with fp32 products and sums for every weight format.
//
// A block of kWarps warps walks K in chunks of kU * 32 * kElems columns (kElems weights per 16-byte
// unit: 4 f32, 8 bf16, 16 fp8 / int8, 32 int4):
//   * the chunk of the (at most kT) activation rows is staged in shared memory once per block, as
//     f32, so x comes from L2 once per block of 8 * kR weight rows, not once per warp;
//   * every warp streams kR weight rows with 16-byte loads, kU per row and lane; the next chunk's
//     loads are issued before this chunk is multiplied (and before the staging barriers), so up to
//     2 * kR * kU loads per lane are in flight (kPrefetch);
//   * every x value read from shared memory feeds kR weight rows (register blocking: 1 / kR of a
//     shared-memory float per FMA, which is what lets 8-16 activation rows run near the FMA rate).
// Shared memory holds each 32-lane span of a chunk permuted so that the 4-column group j of lane l
// sits at float4 slot j * 32 + l: a warp's 128-bit shared loads are contiguous (no bank conflicts).
// The caller guarantees 16-byte aligned weight rows and activation rows, and k % kElems == 0, or for
// int4 (whose rows are whole 32-column units, lc::cpu::linear.h) k % 4 == 0: the columns of the
// last unit past k meet zeros in x (their codes decode to finite weights, whatever they are).
#pragma once
#include "common.cuh"
#include "small_util.cuh"
#include "warp.cuh"

namespace lc::gpu::gemv {

constexpr int kWarps = 8, kThreads = 32 * kWarps;

// Weights per 16-byte unit, and the unit's 4-weight group j as floats (s: the unit's scale; int4:
// its group's scale s and b = -z * s).
template <DType D>
struct Fmt;

__device__ __forceinline__ uint32_t word(const uint4& q, int j) { return j == 0 ? q.x : j == 1 ? q.y : j == 2 ? q.z : q.w; }

template <>
struct Fmt<DType::F32> {
  static constexpr int kElems = 4;
  __device__ static __forceinline__ void group(const uint4& q, int, float, float, float (&w)[4]) {
    w[0] = __uint_as_float(q.x), w[1] = __uint_as_float(q.y), w[2] = __uint_as_float(q.z), w[3] = __uint_as_float(q.w);
  }
};
template <>
struct Fmt<DType::BF16> {
  static constexpr int kElems = 8;
  __device__ static __forceinline__ void group(const uint4& q, int j, float, float, float (&w)[4]) {
    const uint32_t a = word(q, 2 * j), b = word(q, 2 * j + 1);
    w[0] = __uint_as_float(a << 16), w[1] = __uint_as_float(a & 0xffff0000u);
    w[2] = __uint_as_float(b << 16), w[3] = __uint_as_float(b & 0xffff0000u);
  }
};
template <>
struct Fmt<DType::FP8_E4M3> {
  static constexpr int kElems = 16;
  __device__ static __forceinline__ void group(const uint4& q, int j, float s, float, float (&w)[4]) {
    const uint32_t u = word(q, j);
#ifdef LC_CUDA_EMU
#pragma unroll
    for (int e = 0; e < 4; ++e) w[e] = fp8e4m3_to_f32(static_cast<uint8_t>(u >> (8 * e))) * s;
#else  // two e4m3 -> f16x2 conversions (exact: e4m3 is a subset of f16), then f16 -> f32
    const __half2_raw lo = __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(u & 0xffffu), __NV_E4M3);
    const __half2_raw hi = __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(u >> 16), __NV_E4M3);
    const float2 a = __half22float2(__half2(lo)), b = __half22float2(__half2(hi));
    w[0] = a.x * s, w[1] = a.y * s, w[2] = b.x * s, w[3] = b.y * s;
#endif
  }
};
template <>
struct Fmt<DType::I8> {
  static constexpr int kElems = 16;
  // b + 2^23 + 128 as float bits (byte b ^ 0x80 under the exponent of 2^23), minus 2^23 + 128:
  // exact, and an integer op plus an FADD instead of the quarter-rate I2F.
  __device__ static __forceinline__ void group(const uint4& q, int j, float s, float, float (&w)[4]) {
    const uint32_t u = word(q, j) ^ 0x80808080u;
#pragma unroll
    for (int e = 0; e < 4; ++e) w[e] = (__uint_as_float(0x4b000000u | ((u >> (8 * e)) & 0xffu)) - 8388736.0f) * s;
  }
};

template <>
struct Fmt<DType::I4> {
  static constexpr int kElems = 32;
  // Columns 4j .. 4j + 3 of the unit: the low nibbles of word j (j < 4) or the high nibbles of word
  // j - 4. Each code as float by the exponent trick (q + 2^23 as bits, minus 2^23: exact), then
  // fma(q, s, -z s), the CPU's exact weight.
  __device__ static __forceinline__ void group(const uint4& q, int j, float s, float b, float (&w)[4]) {
    const uint32_t u = word(q, j & 3) >> (j < 4 ? 0 : 4);
#pragma unroll
    for (int e = 0; e < 4; ++e) w[e] = fmaf(__uint_as_float(0x4b000000u | ((u >> (8 * e)) & 15u)) - 8388608.0f, s, b);
  }
};

__device__ __forceinline__ uint4 load16(const uint8_t* p) {
#ifdef LC_CUDA_EMU
  return *reinterpret_cast<const uint4*>(p);
#else
  return __ldg(reinterpret_cast<const uint4*>(p));
#endif
}

// The weight rows one warp streams: kM matrices (gate and up share the x of a MoE tile) of
// kR / kM consecutive rows each, starting at row n0 (rows >= n are skipped and left 0).
template <int kM>
struct WarpRows {
  const uint8_t* data[kM];  // row n0 of each matrix
  const float* scale[kM];   // fp8: the scale row of n0 / 128 (every row of the warp shares it); int8: &scale[n0]
  int row_bytes;            // k * element size, int4: int4_row_bytes (k < 2^26: see WView::units16)
  int valid;                // rows n0 .. n0 + valid - 1 exist
  // int4: the group scales of row n0 of each matrix (row r's at + r * gstride), the group size,
  // f16 scales, zero points (the matrices of one WarpRows share the last three).
  const uint16_t* gscale[kM];
  int gstride, group;
  bool f16, zero;
};

// Activation rows: `load4(i, c)` -> x[i, c .. c + 4) as floats (c % 4 == 0, c + 4 <= k).
struct DenseX {  // x [t, k] f32 or bf16, 16-byte aligned rows
  const void* x;
  int64_t k;
  bool bf16;
  __device__ __forceinline__ float4 load4(int i, int64_t c) const {
    if (bf16) {
      const uint2 p = *reinterpret_cast<const uint2*>(static_cast<const uint16_t*>(x) + i * k + c);
      return make_float4(__uint_as_float(p.x << 16), __uint_as_float(p.x & 0xffff0000u), __uint_as_float(p.y << 16),
                         __uint_as_float(p.y & 0xffff0000u));
    }
    return *reinterpret_cast<const float4*>(static_cast<const float*>(x) + i * k + c);
  }
};

// Shared-memory floats a block needs for kT rows and kU units per lane of kE weights.
template <int kT, int kU, int kE = 16>
constexpr int smem_floats() {
  return kT * kU * 32 * kE;
}

// acc[r][i] = this lane's part of x[i, :] . W[row r, :] for i < t (the caller reduces over the
// warp). Every thread of the block must call it (block barriers); xs holds smem_floats<kT, kU>().
template <int kT, int kR, int kU, int kM, bool kPrefetch, DType D, class X>
__device__ __forceinline__ void dot_rows(int t, int k, const WarpRows<kM>& w, const X& x, float* xs, float (&acc)[kR][kT]) {
  constexpr int kE = Fmt<D>::kElems, kSpan = 32 * kE, kChunk = kU * kSpan, kRM = kR / kM;
  constexpr bool kI4 = D == DType::I4;
  constexpr int kSR = kI4 ? kR : kM;  // scale sets per unit: int4 per row, fp8 per matrix
  static_assert(kR % kM == 0 && 128 % kRM == 0, "a warp's rows of one matrix share one fp8 scale row");
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int r = 0; r < kR; ++r)
#pragma unroll
    for (int i = 0; i < kT; ++i) acc[r][i] = 0.f;
  // int8: one scale per row, read once
  float row_scale[kR];
#pragma unroll
  for (int r = 0; r < kR; ++r) row_scale[r] = D == DType::I8 && r % kRM < w.valid ? w.scale[r / kRM][r % kRM] : 1.f;

  uint4 cur[kR][kU], nxt[kR][kU];
  float csc[kSR][kU], nsc[kSR][kU], cb[kSR][kU], nb[kSR][kU];  // scales; int4: and -z * s
  // The 16-byte units of the chunk at c0 (zeros past k or past the last row) and their scales.
  auto fetch = [&](int c0, uint4(&q)[kR][kU], float(&sc)[kSR][kU], float(&b)[kSR][kU]) {
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      const int c = c0 + u * kSpan + lane * kE;
      const int goff = kI4 && c < k ? c / w.group * (w.zero ? 2 : 1) : 0;
#pragma unroll
      for (int mm = 0; mm < kM; ++mm) {
        if constexpr (!kI4) sc[mm][u] = D == DType::FP8_E4M3 && c < k && w.valid > 0 ? w.scale[mm][c / 128] : 1.f;
#pragma unroll
        for (int rr = 0; rr < kRM; ++rr) {
          const bool in = c < k && rr < w.valid;
          q[mm * kRM + rr][u] = in ? load16(w.data[mm] + rr * w.row_bytes + c / kE * 16) : make_uint4(0, 0, 0, 0);
          if constexpr (kI4) {
            const int r = mm * kRM + rr;
            sc[r][u] = 0.f, b[r][u] = 0.f;
            if (in) util::int4_group_params(w.gscale[mm] + rr * w.gstride + goff, w.f16, w.zero, sc[r][u], b[r][u]);
          }
        }
      }
    }
  };
  fetch(0, cur, csc, cb);
#pragma unroll 1
  for (int c0 = 0; c0 < k; c0 += kChunk) {
    __syncthreads();  // every warp is done with the previous chunk's xs
    if (kPrefetch) fetch(c0 + kChunk, nxt, nsc, nb);
    // stage x[0 .. t, c0 .. c0 + kChunk) (zeros past k), permuted (see the file comment)
    constexpr int kGroups = kChunk / 4;
    for (int g = threadIdx.x; g < t * kGroups; g += kThreads) {
      const int i = g / kGroups, o = 4 * (g % kGroups);
      const int c = c0 + o;
      const float4 v = c < k ? x.load4(i, c) : make_float4(0.f, 0.f, 0.f, 0.f);
      const int slot = (o / kSpan) * (kSpan / 4) + ((o % kE) / 4) * 32 + (o % kSpan) / kE;
      reinterpret_cast<float4*>(xs + i * kChunk)[slot] = v;
    }
    __syncthreads();
#pragma unroll
    for (int u = 0; u < kU; ++u) {
#pragma unroll
      for (int j = 0; j < kE / 4; ++j) {
        float wv[kR][4];
#pragma unroll
        for (int r = 0; r < kR; ++r)
          Fmt<D>::group(cur[r][u], j, D == DType::I8 ? row_scale[r] : csc[kI4 ? r : r / kRM][u], kI4 ? cb[r][u] : 0.f, wv[r]);
#pragma unroll
        for (int i = 0; i < kT; ++i) {
          if (i < t) {
            const float4 xv = reinterpret_cast<const float4*>(xs + i * kChunk)[u * (kSpan / 4) + j * 32 + lane];
#pragma unroll
            for (int r = 0; r < kR; ++r) {
              acc[r][i] += wv[r][0] * xv.x;
              acc[r][i] += wv[r][1] * xv.y;
              acc[r][i] += wv[r][2] * xv.z;
              acc[r][i] += wv[r][3] * xv.w;
            }
          }
        }
      }
    }
    if (!kPrefetch) fetch(c0 + kChunk, nxt, nsc, nb);
#pragma unroll
    for (int u = 0; u < kU; ++u) {
#pragma unroll
      for (int r = 0; r < kR; ++r) cur[r][u] = nxt[r][u];
#pragma unroll
      for (int sr = 0; sr < kSR; ++sr) {
        csc[sr][u] = nsc[sr][u];
        if constexpr (kI4) cb[sr][u] = nb[sr][u];
      }
    }
  }
}

}  // namespace lc::gpu::gemv
