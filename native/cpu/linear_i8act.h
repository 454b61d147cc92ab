// The int4 GEMV with int8 activations (matmul precision other than 'highest', t <= kGemvMaxRows,
// groups a multiple of 128; linear.h), written once over simd.h's traits and included after
// linear_vec.h by each ISA's file inside a target region whose ISA has V::dot_u4s8: AVX2
// (vpmaddubsw + vpmaddwd) and AVX512-VNNI (vpdpbusd). Internal linkage, like linear_vec.h.
//
// x is quantized per row and 128 columns to int8 (scale max|x| / 127, round half to even):
// relative error at most 1/254 of each 128-column block's max |x|. 64 bytes hold the codes of 128
// columns (4 blocks of the format); their low nibbles meet x's columns 32b + j (b < 4, j < 16) and
// the high nibbles 32b + 16 + j, so x is stored in that order (64 low, then 64 high) and any vector
// width reads both halves at the same offset. Code x int8 products are summed exactly in int32
// (<= 128 * 15 * 127: no overflow); per 128 columns, for zero point z (8 unless stored):
//   y += s * sx * sum q x_q - s * z * sx * sum x_q,
// the sums exact, so every ISA's integer sums agree. Where rows are short (four per pass), the
// sums start from -8 x the codes of x (in the same lanes): the symmetric format's zero point is
// inside the exact sum, and only a stored one leaves a term, (z - 8) for z. Long rows keep the
// term per row (one vector multiply-add per 16 chunks, against a seed load per chunk: ~8% of the
// warm AVX-512 rate at K = 4096).
#pragma once
#include <algorithm>
#include <cmath>

#include "linear_kernels.h"
#include "simd.h"
#include "threadpool.h"

namespace lc::cpu::linear_detail {
namespace {  // internal linkage: compiled for the including file's ISA

// Software prefetch distance on the weight stream (2-core AVX-512 VM, 2 threads, t = 1: 1 KiB
// 37 GB/s, 2 KiB 48, 4 KiB 49).
constexpr int64_t kInt4I8PrefetchBytes = 4096;
// and 4x that ahead into L2 (as the other few-row streams: linear_vec.h's kGemvFarPrefetchBytes)
constexpr int64_t kInt4I8FarPrefetchBytes = 16384;
// Weight rows per pass at t = 1 where rows are at most this long (K <= 2048): the step's small
// linears and experts (K = 256-2048: 2-16 chunks per row), where each row's own work (its scales,
// the final sums) cost as much as its dot products when done one row at a time.
constexpr int64_t kInt4I8ShortRowBytes = 1024;

// xq [T][chunks][128] (permuted as above), sx / xw [T][chunks] (xw: sx * the sum of the chunk's
// codes, for the zero-point term), xz [T][chunks] (-8 x the chunk's codes in dot_u4s8's lanes: the
// short rows' sums' starting values). Whole chunks by vectors (16 codes at a time: x's columns
// 32 (g % 4) + 16 (g >= 4) + [0, 16) go to codes 16 g + [0, 16)), the codes' floats rounded as the
// scalar expressions (division, nearest even, clamp; NaN to -127) and then stored one by one; a
// last chunk past K by the scalar loop.
template <class V>
void int4_quantize_x(const float* x, int64_t T, int64_t K, int64_t chunks, int8_t* xq, typename V::I* xz, float* sx, float* xw) {
  using F = typename V::F;
  using I = typename V::I;
  constexpr int W = V::kLanes, kB = sizeof(I), kP = 64 / kB;
  static_assert(16 % W == 0, "16 codes per group of the permutation");
  alignas(64) float v[128];
  I eights[2 * kP];
  for (I& e : eights) e = V::iset1(0x08080808);  // the code 8 in every byte
  for (int64_t t = 0; t < T; ++t)
    for (int64_t ch = 0; ch < chunks; ++ch) {
      const float* xr = x + t * K;
      const int64_t c0 = ch * 128, c1 = c0 + 128 < K ? c0 + 128 : K;
      float s;
      if (c1 - c0 == 128) {
        F am = V::zero();
        for (int c = 0; c < 128; c += W) {
          const F a = V::load(xr + c0 + c);
          am = V::max(V::max(a, V::sub(V::zero(), a)), am);  // |x|; a NaN keeps am (2nd operand)
        }
        s = V::reduce_max(am) / 127.0f;
        if (s > 0) {
          const F sv = V::set1(s);
          for (int g = 0; g < 8; ++g)
            for (int j = 0; j < 16; j += W) {
              const F q = V::round(V::div(V::load(xr + c0 + 32 * (g % 4) + (g >= 4 ? 16 : 0) + j), sv));
              V::store(v + 16 * g + j, V::min(V::max(q, V::set1(-127.0f)), V::set1(127.0f)));  // NaN: -127
            }
        } else
          std::fill(v, v + 128, 0.0f);
      } else {
        float amax = 0;
        for (int64_t c = c0; c < c1; ++c) amax = std::fmax(amax, std::fabs(xr[c]));
        s = amax / 127.0f;
        for (int p = 0; p < 128; ++p) {
          const int64_t c = c0 + 32 * ((p % 64) / 16) + (p % 16) + (p >= 64 ? 16 : 0);
          const float q = c < K && s > 0 ? std::nearbyint(xr[c] / s) : 0.0f;
          v[p] = std::fmin(127.0f, std::fmax(-127.0f, q));
        }
      }
      int8_t* q = xq + (t * chunks + ch) * 128;
      int32_t sum = 0;
      for (int p = 0; p < 128; ++p) {
        q[p] = static_cast<int8_t>(v[p]);
        sum += q[p];
      }
      I xs[2 * kP];
      for (int p = 0; p < kP; ++p) {
        xs[2 * p] = V::load_bytes(reinterpret_cast<const uint8_t*>(q) + p * kB);
        xs[2 * p + 1] = V::load_bytes(reinterpret_cast<const uint8_t*>(q) + 64 + p * kB);
      }
      xz[t * chunks + ch] = V::isub(V::izero(), V::template dot_u4s8<2 * kP>(eights, xs, V::izero()));
      sx[t * chunks + ch] = s;
      xw[t * chunks + ch] = s * static_cast<float>(sum);
    }
}

// out[i] = the sum of a[i]'s lanes, i < R, in hsum4's order whatever R is (a row's result never
// depends on the rows it was summed with: weight_rows' contract, linear.h).
template <class V, int R>
__attribute__((always_inline)) inline void int4_i8_row_sums(const typename V::F* a, float* out) {
  for (int i = 0; i < R; i += 4) {
    alignas(16) float s[4];
    _mm_store_ps(s, V::hsum4(a[i], a[i + 1 < R ? i + 1 : i], a[i + 2 < R ? i + 2 : i], a[i + 3 < R ? i + 3 : i]));
    for (int j = 0; j < 4 && i + j < R; ++j) out[i + j] = s[j];
  }
}

// part[t * ldp + i] = y[t, r + i] for T x rows and R weight rows (side by side: R * chunks scales
// and R * K / 2 code bytes in a row). fs: per-thread room for T * R * chunks floats; sxr: sx with
// each t's chunks repeated R times ([T][R * chunks]; sx itself when R = 1). Seed: the sums start
// at xz (the zero point 8 folded in). Each row is summed the same way whatever R is (NA depends on
// T only; int4_i8_row_sums). Inlined into the row loop (a call per 2 KiB row, as GCC chose once the
// vectorized int4_quantize_x grew the caller, cost ~15% of the warm 1-thread rate).
template <class V, int T, int R, bool Seed>
__attribute__((always_inline)) inline void int4_i8_rows(const int8_t* xq, const typename V::I* xz, const float* sx,
                                                        const float* sxr, const float* xw, int64_t chunks, const WeightRef& w,
                                                        int64_t r, float* fs, float* part, int64_t ldp) {
  using F = typename V::F;
  using I = typename V::I;
  constexpr int kB = sizeof(I), kP = 64 / kB;  // bytes per vector, vectors per 128 columns
  constexpr int W = V::kLanes;
  const int64_t rb = chunks * 64, rc = R * chunks;
  const uint8_t* w0 = static_cast<const uint8_t*>(w.data) + r * rb;
  // fs[t][i * chunks + ch] = s(r + i, ch) * sx[t][ch]: one broadcast per row and chunk below
  // and corr[t][i] = the zero-point term (sum over ch of s * (z - z0) * xw, z0 = 8 when seeded)
  float corr[T][R] = {};
  constexpr float z0 = Seed ? 8.0f : 0.0f;
  if (w.group == 128 && !w.group_zero) {  // the common layout: the R rows' scales side by side, by vectors
    static_assert(Seed || R == 1, "unseeded sums: one row per pass (the zero-point term by vectors over its chunks)");
    const uint16_t* p = w.group_scale + r * chunks;
    F cv[T];
    float ct[T] = {};
    for (int t = 0; t < T; ++t) cv[t] = V::zero();
    int64_t j = 0;
    for (; j + W <= rc; j += W) {
      const F sv = w.group_scale_f16 ? V::load_f16(p + j) : V::load_bf16(p + j);
      for (int t = 0; t < T; ++t) {
        V::store(fs + t * rc + j, V::mul(sv, V::load(sxr + t * rc + j)));
        if (!Seed) cv[t] = V::fmadd(sv, V::load(xw + t * chunks + j), cv[t]);
      }
    }
    if (j < rc) {
      if constexpr (V::kMaskedTails) {
        const int64_t n = rc - j;
        const F sv = w.group_scale_f16 ? V::load_f16_n(p + j, n) : V::load_bf16_n(p + j, n);
        for (int t = 0; t < T; ++t) {
          V::store_n(fs + t * rc + j, V::mul(sv, V::load_n(sxr + t * rc + j, n)), n);
          if (!Seed) cv[t] = V::fmadd(sv, V::load_n(xw + t * chunks + j, n), cv[t]);
        }
      } else {
        for (; j < rc; ++j) {
          const float sj = w.group_scale_f16 ? _cvtsh_ss(p[j]) : bf16_to_f32(p[j]);
          for (int t = 0; t < T; ++t) {
            fs[t * rc + j] = sj * sxr[t * rc + j];
            if (!Seed) ct[t] += sj * xw[t * chunks + j];
          }
        }
      }
    }
    if (!Seed)
      for (int t = 0; t < T; ++t) corr[t][0] = 8.0f * (V::reduce_add(cv[t]) + ct[t]);
  } else {
    const int64_t per_group = w.group / 128;
    for (int i = 0; i < R; ++i)
      for (int64_t ch = 0; ch < chunks; ++ch) {
        float s, z;
        int4_group_params(w, r + i, ch / per_group, &s, &z);
        for (int t = 0; t < T; ++t) {
          fs[t * rc + i * chunks + ch] = s * sx[t * chunks + ch];
          corr[t][i] += s * (z - z0) * xw[t * chunks + ch];
        }
      }
  }
  // NA accumulator sets, chunks alternating between them, at T <= 2 (the convert + multiply-add
  // per chunk is a latency chain of its own)
  constexpr int NA = T <= 2 ? 2 : 1;
  F acc[NA][T][R];
  for (int a = 0; a < NA; ++a)
    for (int t = 0; t < T; ++t)
      for (int i = 0; i < R; ++i) acc[a][t][i] = V::zero();
  // row i's chunk ch
  auto chunk = [&](int i, int64_t ch, F(&ac)[T][R]) __attribute__((always_inline)) {
    // one prefetch per row and chunk (64 bytes), a fixed distance ahead in address order: the
    // lines of the R rows side by side, one after the other, though the demand order below
    // interleaves the rows (a prefetch per row, each ahead on its own row, streamed the medium
    // step's 1 MiB int4 linears (K = 1024, 2 threads) from DRAM at 13-14 GB/s, against 21-23)
    _mm_prefetch(reinterpret_cast<const char*>(w0 + (ch * R + i) * 64 + kInt4I8PrefetchBytes), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(w0 + (ch * R + i) * 64 + kInt4I8FarPrefetchBytes), _MM_HINT_T1);
    // the chunk's codes: the low and high nibbles of each of its kP vectors, met by x's vectors
    // at the same places (one dot_u4s8 over the 2 kP pairs: exact, see simd.h)
    I u[2 * kP];
    for (int p = 0; p < kP; ++p) {
      const I v = V::load_bytes(w0 + i * rb + ch * 64 + p * kB);
      u[2 * p] = V::nib_lo(v);
      u[2 * p + 1] = V::nib_hi(v);
    }
    for (int t = 0; t < T; ++t) {
      const uint8_t* q = reinterpret_cast<const uint8_t*>(xq + (t * chunks + ch) * 128);
      I xs[2 * kP];
      for (int p = 0; p < kP; ++p) {
        xs[2 * p] = V::load_bytes(q + p * kB);
        xs[2 * p + 1] = V::load_bytes(q + 64 + p * kB);
      }
      ac[t][i] = V::fmadd(V::ifloat(V::template dot_u4s8<2 * kP>(u, xs, Seed ? xz[t * chunks + ch] : V::izero())),
                          V::set1(fs[t * rc + i * chunks + ch]), ac[t][i]);
    }
  };
  // the rows interleaved chunk by chunk: R independent sums in flight (one row after the other
  // read the warm 1-2 MiB shapes at ~0.6 of this rate on AVX-512)
  int64_t ch = 0;
  for (; ch + NA <= chunks; ch += NA)
    for (int a = 0; a < NA; ++a)
      for (int i = 0; i < R; ++i) chunk(i, ch + a, acc[a]);
  for (; ch < chunks; ++ch)
    for (int i = 0; i < R; ++i) chunk(i, ch, acc[0]);
  for (int t = 0; t < T; ++t) {
    F a[R];
    float sums[R];
    for (int i = 0; i < R; ++i) {
      a[i] = acc[0][t][i];
      for (int k = 1; k < NA; ++k) a[i] = V::add(a[i], acc[k][t][i]);
    }
    int4_i8_row_sums<V, R>(a, sums);
    for (int i = 0; i < R; ++i) part[t * ldp + i] = sums[i] - corr[t][i];
  }
}

template <class V, int T, int R>
void gemv_int4_i8_t(const float* x, const WeightRef& w, void* y, DType yt) {
  using I = typename V::I;
  const int64_t K = w.k, N = w.n, chunks = int4_groups(K, w.group) * w.group / 128;
  // xq, then xz (vector-aligned: 128-byte chunks), sx, xw
  char* buf = static_cast<char*>(scratch(kScratchC, T * chunks * (128 + sizeof(I) + 2 * sizeof(float))));
  int8_t* xq = reinterpret_cast<int8_t*>(buf);
  I* xz = reinterpret_cast<I*>(buf + T * chunks * 128);
  float* sx = reinterpret_cast<float*>(xz + T * chunks);
  float* xw = sx + T * chunks;
  int4_quantize_x<V>(x, T, K, chunks, xq, xz, sx, xw);
  const int64_t grain = gemv_grain_rows(w) / R;
  parallel_for(ceil_div(N, R), grain < 1 ? 1 : grain, [&](int64_t g0, int64_t g1) {
    const int64_t n0 = g0 * R, n1 = g1 * R < N ? g1 * R : N;
    // fs [T][R * chunks], then (R > 1) sxr [T][R * chunks]
    float* fs = static_cast<float*>(scratch(kScratchPanel, 2 * T * R * chunks * sizeof(float)));
    float* sxr = sx;
    if (R > 1) {
      sxr = fs + T * R * chunks;
      for (int t = 0; t < T; ++t)
        for (int i = 0; i < R; ++i) std::copy(sx + t * chunks, sx + (t + 1) * chunks, sxr + (t * R + i) * chunks);
    }
    float part[T][R];
    auto store = [&](int64_t r0, int rows) {
      for (int t = 0; t < T; ++t)
        for (int i = 0; i < rows; ++i) store_y(y, yt, t * N + r0 + i, part[t][i]);
    };
    int64_t r = n0;
    for (; r + R <= n1; r += R) {
      int4_i8_rows<V, T, R, (R > 1)>(xq, xz, sx, sxr, xw, chunks, w, r, fs, &part[0][0], R);
      store(r, R);
    }
    for (; r < n1; ++r) {
      int4_i8_rows<V, T, 1, (R > 1)>(xq, xz, sx, sx, xw, chunks, w, r, fs, &part[0][0], R);
      store(r, 1);
    }
  });
}

// The entry: t <= kGemvMaxRows rows of x (f32 or bf16), one weight row at a time (on the 2-core
// AVX-512 VM, K = 4096, one row stream per thread read 46-48 GB/s at t = 1 and 33 at t = 4,
// against 26-45 and 21-24 for two or four rows per pass sharing each x load), except short rows
// at t = 1: four per pass (kInt4I8ShortRowBytes).
template <class V>
void gemv_int4_i8(int64_t t, const void* x, DType xt, const WeightRef& w, void* y, DType yt) {
  const float* xf = static_cast<const float*>(x);
  if (xt == DType::BF16) {
    float* buf = static_cast<float*>(scratch(kScratchX, t * w.k * sizeof(float)));
    bf16_to_f32_rows<V>(static_cast<const uint16_t*>(x), t * w.k, buf);
    xf = buf;
  }
  switch (t) {
    case 1:
      if (int4_row_bytes(w.k, w.group) <= kInt4I8ShortRowBytes)
        gemv_int4_i8_t<V, 1, 4>(xf, w, y, yt);
      else
        gemv_int4_i8_t<V, 1, 1>(xf, w, y, yt);
      break;
    case 2: gemv_int4_i8_t<V, 2, 1>(xf, w, y, yt); break;
    case 3: gemv_int4_i8_t<V, 3, 1>(xf, w, y, yt); break;
    case 4: gemv_int4_i8_t<V, 4, 1>(xf, w, y, yt); break;
    case 5: gemv_int4_i8_t<V, 5, 1>(xf, w, y, yt); break;
    case 6: gemv_int4_i8_t<V, 6, 1>(xf, w, y, yt); break;
    case 7: gemv_int4_i8_t<V, 7, 1>(xf, w, y, yt); break;
    case 8: gemv_int4_i8_t<V, 8, 1>(xf, w, y, yt); break;
  }
}

// ---------------------------------------------------------------------------------------------
// The int8 GEMV with int8 activations (int8 weights with row scales, t <= kGemvMaxRows, matmul
// precision other than 'highest'; AVX2 and AVX512-VNNI): x quantized per row and 128 columns as
// above (scale max|x| / 127, round half to even; here in column order), every chunk's code x code
// sum exact in int32 (V::dot_s8s8), then y = w.scale[r] * sum over chunks of sx * sum. The fp32
// GEMV widened and converted every weight (vpmovsxbd + vcvtdq2ps + FMA: ~29 G weights/s per thread
// on the Zen 5 VM, below one thread's DRAM share); here 64 weights take a vpdpbusd (and an xor).
// A block of x holding a NaN or an infinity gets the scale NaN: the rows' sums come out NaN (the
// fp32 products would give NaN or an infinity), never a finite value.

// Prefetch distances on the weight stream (address order, as the int4 GEMV above).
constexpr int64_t kInt8I8PrefetchBytes = 4096;
constexpr int64_t kInt8I8FarPrefetchBytes = 16384;
// Weight rows per pass at t = 1 where rows are at most this long: R independent sums in flight
// and the rows' ends (the horizontal sums) four at a time.
constexpr int64_t kInt8I8ShortRowBytes = 2048;

// xq [T][chunks][128] (columns in order, zero past K), xz [T][chunks] (V::s8s8_seed of the chunk's
// codes), sx [T][chunks] (NaN for a block with a NaN or an infinity).
template <class V>
void int8_quantize_x(const float* x, int64_t T, int64_t K, int64_t chunks, int8_t* xq, typename V::I* xz, float* sx) {
  using F = typename V::F;
  using I = typename V::I;
  constexpr int W = V::kLanes, kB = sizeof(I), kP = 128 / kB;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t ch = 0; ch < chunks; ++ch) {
      const float* xr = x + t * K + ch * 128;
      const int64_t n = K - ch * 128 < 128 ? K - ch * 128 : 128;
      float amax = 0;
      bool finite = true;
      if (n == 128) {
        F am = V::zero(), fin = V::zero();
        for (int c = 0; c < 128; c += W) {
          const F a = V::load(xr + c);
          am = V::max(V::max(a, V::sub(V::zero(), a)), am);
          fin = V::add(fin, V::sub(a, a));  // 0, or NaN from a NaN or an infinity
        }
        amax = V::reduce_max(am);
        finite = V::reduce_add(fin) == 0.0f;
      } else
        for (int64_t c = 0; c < n; ++c) {
          amax = std::fmax(amax, std::fabs(xr[c]));
          finite = finite && std::isfinite(xr[c]);
        }
      const float s = finite ? amax / 127.0f : NAN;
      int8_t* q = xq + (t * chunks + ch) * 128;
      if (s > 0 && n == 128) {
        const F sv = V::set1(s);
        for (int c = 0; c < 128; c += W)
          V::store_i8(q + c, V::min(V::max(V::round(V::div(V::load(xr + c), sv)), V::set1(-127.0f)), V::set1(127.0f)));
      } else
        for (int c = 0; c < 128; ++c)
          q[c] = static_cast<int8_t>(c < n && s > 0 ? std::fmin(127.0f, std::fmax(-127.0f, std::nearbyint(xr[c] / s))) : 0.0f);
      I xs[kP];
      for (int p = 0; p < kP; ++p) xs[p] = V::load_bytes(reinterpret_cast<const uint8_t*>(q) + p * kB);
      xz[t * chunks + ch] = V::template s8s8_seed<kP>(xs);
      sx[t * chunks + ch] = s;
    }
}

// part[t * ldp + i] = y[t, r + i] for T x rows and R weight rows. Each row is summed the same way
// whatever R is (NA depends on T only; int4_i8_row_sums): weight_rows' contract.
template <class V, int T, int R>
__attribute__((always_inline)) inline void int8_i8_rows(const int8_t* xq, const typename V::I* xz, const float* sx,
                                                        int64_t chunks, const WeightRef& w, int64_t r, float* part, int64_t ldp) {
  using F = typename V::F;
  using I = typename V::I;
  constexpr int kB = sizeof(I), kP = 128 / kB;
  const int64_t K = w.k, whole = K / 128;
  const uint8_t* w0 = static_cast<const uint8_t*>(w.data) + r * K;
  constexpr int NA = T <= 2 ? 2 : 1;  // accumulator sets (the convert + multiply-add chain per chunk)
  F acc[NA][T][R];
  for (int a = 0; a < NA; ++a)
    for (int t = 0; t < T; ++t)
      for (int i = 0; i < R; ++i) acc[a][t][i] = V::zero();
  auto chunk = [&](int i, int64_t ch, F(&ac)[T][R]) __attribute__((always_inline)) {
    // the R rows' lines in address order, a fixed distance ahead (see int4_i8_rows)
    const uint8_t* pf = w0 + (ch * R + i) * 128;
    _mm_prefetch(reinterpret_cast<const char*>(pf + kInt8I8PrefetchBytes), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(pf + kInt8I8PrefetchBytes + 64), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(pf + kInt8I8FarPrefetchBytes), _MM_HINT_T1);
    _mm_prefetch(reinterpret_cast<const char*>(pf + kInt8I8FarPrefetchBytes + 64), _MM_HINT_T1);
    const uint8_t* p = w0 + i * K + ch * 128;
    I wv[kP];
    if (ch < whole)
      for (int j = 0; j < kP; ++j) wv[j] = V::load_bytes(p + j * kB);
    else  // the row's last part chunk: only its own bytes (x's codes past K are zero)
      for (int j = 0; j < kP; ++j) {
        const int64_t m = K - ch * 128 - j * kB;
        wv[j] = m >= kB ? V::load_bytes(p + j * kB) : m > 0 ? V::load_bytes_n(p + j * kB, m) : V::izero();
      }
    for (int t = 0; t < T; ++t) {
      const uint8_t* q = reinterpret_cast<const uint8_t*>(xq + (t * chunks + ch) * 128);
      I xs[kP];
      for (int j = 0; j < kP; ++j) xs[j] = V::load_bytes(q + j * kB);
      ac[t][i] =
          V::fmadd(V::ifloat(V::template dot_s8s8<kP>(wv, xs, xz[t * chunks + ch])), V::set1(sx[t * chunks + ch]), ac[t][i]);
    }
  };
  int64_t ch = 0;
  for (; ch + NA <= chunks; ch += NA)
    for (int a = 0; a < NA; ++a)
      for (int i = 0; i < R; ++i) chunk(i, ch + a, acc[a]);
  for (; ch < chunks; ++ch)
    for (int i = 0; i < R; ++i) chunk(i, ch, acc[0]);
  for (int t = 0; t < T; ++t) {
    F a[R];
    float sums[R];
    for (int i = 0; i < R; ++i) {
      a[i] = acc[0][t][i];
      for (int k = 1; k < NA; ++k) a[i] = V::add(a[i], acc[k][t][i]);
    }
    int4_i8_row_sums<V, R>(a, sums);
    for (int i = 0; i < R; ++i) part[t * ldp + i] = sums[i] * w.scale[r + i];
  }
}

template <class V, int T, int R>
void gemv_int8_i8_t(const float* x, const WeightRef& w, void* y, DType yt) {
  using I = typename V::I;
  const int64_t K = w.k, N = w.n, chunks = ceil_div(K, 128);
  // xq, then xz (vector-aligned: 128-byte chunks), sx
  char* buf = static_cast<char*>(scratch(kScratchC, T * chunks * (128 + sizeof(I) + sizeof(float))));
  int8_t* xq = reinterpret_cast<int8_t*>(buf);
  I* xz = reinterpret_cast<I*>(buf + T * chunks * 128);
  float* sx = reinterpret_cast<float*>(xz + T * chunks);
  int8_quantize_x<V>(x, T, K, chunks, xq, xz, sx);
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
      int8_i8_rows<V, T, R>(xq, xz, sx, chunks, w, r, &part[0][0], R);
      store(r, R);
    }
    for (; r < n1; ++r) {
      int8_i8_rows<V, T, 1>(xq, xz, sx, chunks, w, r, &part[0][0], R);
      store(r, 1);
    }
  });
}

// The entry: t <= kGemvMaxRows rows of x (f32 or bf16); four short rows per pass at t = 1.
template <class V>
void gemv_int8_i8(int64_t t, const void* x, DType xt, const WeightRef& w, void* y, DType yt) {
  const float* xf = static_cast<const float*>(x);
  if (xt == DType::BF16) {
    float* buf = static_cast<float*>(scratch(kScratchX, t * w.k * sizeof(float)));
    bf16_to_f32_rows<V>(static_cast<const uint16_t*>(x), t * w.k, buf);
    xf = buf;
  }
  switch (t) {
    case 1:
      if (w.k <= kInt8I8ShortRowBytes)
        gemv_int8_i8_t<V, 1, 4>(xf, w, y, yt);
      else
        gemv_int8_i8_t<V, 1, 1>(xf, w, y, yt);
      break;
    case 2: gemv_int8_i8_t<V, 2, 1>(xf, w, y, yt); break;
    case 3: gemv_int8_i8_t<V, 3, 1>(xf, w, y, yt); break;
    case 4: gemv_int8_i8_t<V, 4, 1>(xf, w, y, yt); break;
    case 5: gemv_int8_i8_t<V, 5, 1>(xf, w, y, yt); break;
    case 6: gemv_int8_i8_t<V, 6, 1>(xf, w, y, yt); break;
    case 7: gemv_int8_i8_t<V, 7, 1>(xf, w, y, yt); break;
    case 8: gemv_int8_i8_t<V, 8, 1>(xf, w, y, yt); break;
  }
}

}  // namespace
}  // namespace lc::cpu::linear_detail
