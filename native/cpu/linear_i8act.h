// The int4 GEMV with int8 activations (matmul precision other than 'highest', t <= kGemvMaxRows,
// groups a multiple of 128; linear.h), written once over simd.h's traits and included after
// linear_vec.h by each ISA's file inside a target region whose ISA has V::dot_u8s8: AVX2
// (vpmaddubsw + vpmaddwd) and AVX512-VNNI (vpdpbusd). Internal linkage, like linear_vec.h.
//
// x is quantized per row and 128 columns to int8 (scale max|x| / 127, round half to even):
// relative error at most 1/254 of each 128-column block's max |x|. 64 bytes hold the codes of 128
// columns (4 blocks of the format); their low nibbles meet x's columns 32b + j (b < 4, j < 16) and
// the high nibbles 32b + 16 + j, so x is stored in that order (64 low, then 64 high) and any vector
// width reads both halves at the same offset. Code x int8 products are summed exactly in int32
// (<= 128 * 15 * 127: no overflow); per 128 columns:
//   y += s * sx * (sum q x_q - z * sum x_q), the sums exact, so every ISA's integer sums agree.
#pragma once
#include <cmath>

#include "linear_kernels.h"
#include "simd.h"
#include "threadpool.h"

namespace lc::cpu::linear_detail {
namespace {  // internal linkage: compiled for the including file's ISA

// xq [T][chunks][128] (permuted as above), sx / xsum [T][chunks].
inline void int4_quantize_x(const float* x, int64_t T, int64_t K, int64_t chunks, int8_t* xq, float* sx, int32_t* xsum) {
  for (int64_t t = 0; t < T; ++t)
    for (int64_t ch = 0; ch < chunks; ++ch) {
      const float* xr = x + t * K;
      const int64_t c0 = ch * 128, c1 = c0 + 128 < K ? c0 + 128 : K;
      float amax = 0;
      for (int64_t c = c0; c < c1; ++c) amax = std::fmax(amax, std::fabs(xr[c]));
      const float s = amax / 127.0f;
      int8_t* q = xq + (t * chunks + ch) * 128;
      int32_t sum = 0;
      for (int p = 0; p < 128; ++p) {
        const int64_t c = c0 + 32 * ((p % 64) / 16) + (p % 16) + (p >= 64 ? 16 : 0);
        const float v = c < K && s > 0 ? std::nearbyint(xr[c] / s) : 0.0f;
        q[p] = static_cast<int8_t>(std::fmin(127.0f, std::fmax(-127.0f, v)));
        sum += q[p];
      }
      sx[t * chunks + ch] = s;
      xsum[t * chunks + ch] = sum;
    }
}

// part[t * ldp + i] = y[t, r + i] for T x rows and R weight rows.
template <class V, int T, int R>
void int4_i8_rows(const int8_t* xq, const float* sx, const int32_t* xsum, int64_t chunks, const WeightRef& w, int64_t r,
                  float* part, int64_t ldp) {
  using F = typename V::F;
  using I = typename V::I;
  constexpr int kB = sizeof(I), kP = 64 / kB;  // bytes per vector, vectors per 128 columns
  const int64_t per_group = w.group / 128, rb = chunks * 64;
  const uint8_t* wr[R];
  for (int i = 0; i < R; ++i) wr[i] = static_cast<const uint8_t*>(w.data) + (r + i) * rb;
  F acc[T][R];
  float corr[T][R];
  for (int t = 0; t < T; ++t)
    for (int i = 0; i < R; ++i) acc[t][i] = V::zero(), corr[t][i] = 0;
  float s[R], z[R];
  for (int64_t ch = 0; ch < chunks; ++ch) {
    if (ch % per_group == 0)
      for (int i = 0; i < R; ++i) int4_group_params(w, r + i, ch / per_group, &s[i], &z[i]);
    I d[T][R];
    for (int t = 0; t < T; ++t)
      for (int i = 0; i < R; ++i) d[t][i] = V::izero();
    for (int p = 0; p < kP; ++p) {
      I lo[R], hi[R];
      for (int i = 0; i < R; ++i) {
        if (p == 0) _mm_prefetch(reinterpret_cast<const char*>(wr[i] + ch * 64 + 1024), _MM_HINT_T0);
        const I v = V::load_bytes(wr[i] + ch * 64 + p * kB);
        lo[i] = V::nib_lo(v);
        hi[i] = V::nib_hi(v);
      }
      for (int t = 0; t < T; ++t) {
        const uint8_t* q = reinterpret_cast<const uint8_t*>(xq + (t * chunks + ch) * 128) + p * kB;
        const I xl = V::load_bytes(q), xh = V::load_bytes(q + 64);
        for (int i = 0; i < R; ++i) d[t][i] = V::dot_u8s8(V::dot_u8s8(d[t][i], lo[i], xl), hi[i], xh);
      }
    }
    for (int t = 0; t < T; ++t) {
      const float sxt = sx[t * chunks + ch];
      const float xs = static_cast<float>(xsum[t * chunks + ch]);
      for (int i = 0; i < R; ++i) {
        const float f = s[i] * sxt;
        acc[t][i] = V::fmadd(V::ifloat(d[t][i]), V::set1(f), acc[t][i]);
        corr[t][i] += f * z[i] * xs;
      }
    }
  }
  for (int t = 0; t < T; ++t)
    for (int i = 0; i < R; ++i) part[t * ldp + i] = V::reduce_add(acc[t][i]) - corr[t][i];
}

template <class V, int T, int R>
void gemv_int4_i8_t(const float* x, const WeightRef& w, void* y, DType yt) {
  const int64_t K = w.k, N = w.n, chunks = int4_groups(K, w.group) * w.group / 128;
  char* buf = static_cast<char*>(scratch(kScratchC, T * chunks * (128 + 2 * sizeof(float))));
  int8_t* xq = reinterpret_cast<int8_t*>(buf);
  float* sx = reinterpret_cast<float*>(buf + T * chunks * 128);
  int32_t* xsum = reinterpret_cast<int32_t*>(sx + T * chunks);
  int4_quantize_x(x, T, K, chunks, xq, sx, xsum);
  const int64_t grain = gemv_grain_rows(w) / R;
  parallel_for(ceil_div(N, R), grain < 1 ? 1 : grain, [&](int64_t g0, int64_t g1) {
    const int64_t n0 = g0 * R, n1 = g1 * R < N ? g1 * R : N;
    float part[T][R];
    auto store = [&](int64_t r0, int rows) {
      for (int t = 0; t < T; ++t)
        for (int i = 0; i < rows; ++i) store_y(y, yt, t * N + r0 + i, part[t][i]);
    };
    int64_t r = n0;
    for (; r + R <= n1; r += R) {
      int4_i8_rows<V, T, R>(xq, sx, xsum, chunks, w, r, &part[0][0], R);
      store(r, R);
    }
    for (; r < n1; ++r) {
      int4_i8_rows<V, T, 1>(xq, sx, xsum, chunks, w, r, &part[0][0], R);
      store(r, 1);
    }
  });
}

// The entry: t <= kGemvMaxRows rows of x (f32 or bf16); R2 weight rows per pass for t <= 2, R8
// beyond (the ISA's register budget).
template <class V, int R2, int R8>
void gemv_int4_i8(int64_t t, const void* x, DType xt, const WeightRef& w, void* y, DType yt) {
  const float* xf = static_cast<const float*>(x);
  if (xt == DType::BF16) {
    float* buf = static_cast<float*>(scratch(kScratchX, t * w.k * sizeof(float)));
    bf16_to_f32_rows<V>(static_cast<const uint16_t*>(x), t * w.k, buf);
    xf = buf;
  }
  switch (t) {
    case 1: gemv_int4_i8_t<V, 1, R2>(xf, w, y, yt); break;
    case 2: gemv_int4_i8_t<V, 2, R2>(xf, w, y, yt); break;
    case 3: gemv_int4_i8_t<V, 3, R8>(xf, w, y, yt); break;
    case 4: gemv_int4_i8_t<V, 4, R8>(xf, w, y, yt); break;
    case 5: gemv_int4_i8_t<V, 5, R8>(xf, w, y, yt); break;
    case 6: gemv_int4_i8_t<V, 6, R8>(xf, w, y, yt); break;
    case 7: gemv_int4_i8_t<V, 7, R8>(xf, w, y, yt); break;
    case 8: gemv_int4_i8_t<V, 8, R8>(xf, w, y, yt); break;
  }
}

}  // namespace
}  // namespace lc::cpu::linear_detail
