// AVX-512 linear layers: GEMV (t <= 8) with fp32 FMA, GEMM (t > 8) with fp32 FMA or, for bf16
// weights on CPUs with AVX512-BF16, vdpbf16ps. Compiled for AVX-512 through the target pragma
// below (the build itself uses baseline x86-64 flags); linear.cc calls in only after checking isa().
#include <immintrin.h>

#include <cmath>
#include <cstring>

#include "linear_kernels.h"
#include "threadpool.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")
// GCC 12 reports its own _mm512_undefined_ps() inside the intrinsic headers as uninitialized.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

namespace lc::cpu::linear_detail {
namespace {  // internal linkage: nothing compiled for AVX-512 may be shared with other files

// ---------------------------------------------------------------------------------------------
// Weight decoders: 16 stored weights -> 16 f32 lanes; tail variants load only the lanes in `m`.
// fp8 and int8 decode to the code's value without its scale (see kScaleMul / the row scale).

struct DecF32 {
  static constexpr bool kNanCodes = false;
  using E = float;
  static constexpr float kScaleMul = 0;  // no block scale
  static __m512 load(const float* p) { return _mm512_loadu_ps(p); }
  static __m512 load_tail(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
};

struct DecBF16 {
  static constexpr bool kNanCodes = false;
  using E = uint16_t;
  static constexpr float kScaleMul = 0;
  static __m512 widen(__m256i h) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)); }
  static __m512 load(const uint16_t* p) { return widen(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
  static __m512 load_tail(const uint16_t* p, __mmask16 m) { return widen(_mm256_maskz_loadu_epi16(m, p)); }
};

struct DecI8 {  // q; the row scale multiplies the finished dot product
  static constexpr bool kNanCodes = false;
  using E = int8_t;
  static constexpr float kScaleMul = 0;
  static __m512 widen(__m128i b) { return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b)); }
  static __m512 load(const int8_t* p) { return widen(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  static __m512 load_tail(const int8_t* p, __mmask16 m) { return widen(_mm_maskz_loadu_epi8(m, p)); }
};

// fp8 e4m3 -> f16 is a bit move: sign-extending the byte to 16 bits and shifting left by 7 puts
// eeee.mmm in the f16 exponent/mantissa fields (exponent bias 15 instead of 7), so the f16 value
// is exactly the fp8 value / 256, subnormals included; vcvtph2ps then widens it exactly. The 256
// is folded into the block scale (kScaleMul). The NaN codes 0x7f / 0xff would decode to
// +-480 / 256; rather than patching every vector, GEMV checks each 128-code block once (has_nan:
// one NaN weight makes the whole dot product NaN) and the GEMM panel patches lanes (nan_lanes).
struct DecFP8 {
  using E = uint8_t;
  static constexpr float kScaleMul = 256.0f;
  static constexpr bool kNanCodes = true;
  static __m512 widen(__m128i b) {
    __m256i h = _mm256_slli_epi16(_mm256_cvtepi8_epi16(b), 7);  // bits 15,14 = sign; 13..7 = eeeemmm
    return _mm512_cvtph_ps(_mm256_and_si256(h, _mm256_set1_epi16(static_cast<short>(0xbfff))));
  }
  static __m512 load(const uint8_t* p) { return widen(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  static __m512 load_tail(const uint8_t* p, __mmask16 m) { return widen(_mm_maskz_loadu_epi8(m, p)); }
  // Lanes holding a NaN code: (b | 0x80) == 0xff.
  static __mmask16 nan_lanes(__m128i b) {
    return _mm_cmpeq_epi8_mask(_mm_or_si128(b, _mm_set1_epi8(static_cast<char>(0x80))), _mm_set1_epi8(-1));
  }
  // Whether the n <= 128 codes at p hold a NaN code (masked-off bytes load as 0: never NaN).
  static bool has_nan(const uint8_t* p, int64_t n) {
    const __m512i sign = _mm512_set1_epi8(static_cast<char>(0x80)), ones = _mm512_set1_epi8(-1);
    const __mmask64 m0 = n >= 64 ? ~0ull : (1ull << n) - 1;
    const __mmask64 m1 = n >= 128 ? ~0ull : n > 64 ? (1ull << (n - 64)) - 1 : 0;
    __m512i a = _mm512_maskz_loadu_epi8(m0, p), b = _mm512_maskz_loadu_epi8(m1, p + 64);
    return (_mm512_cmpeq_epi8_mask(_mm512_or_si512(a, sign), ones) | _mm512_cmpeq_epi8_mask(_mm512_or_si512(b, sign), ones)) != 0;
  }
};

inline __mmask16 tail_mask16(int64_t n) { return static_cast<__mmask16>((1u << n) - 1); }

// Sums of four vectors: returns [sum(a0), sum(a1), sum(a2), sum(a3)].
inline __m128 hsum4(__m512 a0, __m512 a1, __m512 a2, __m512 a3) {
  __m512 t0 = _mm512_add_ps(_mm512_unpacklo_ps(a0, a1), _mm512_unpackhi_ps(a0, a1));  // a0 a1 a0 a1 per lane
  __m512 t1 = _mm512_add_ps(_mm512_unpacklo_ps(a2, a3), _mm512_unpackhi_ps(a2, a3));
  __m512 u = _mm512_add_ps(_mm512_shuffle_ps(t0, t1, _MM_SHUFFLE(1, 0, 1, 0)),
                           _mm512_shuffle_ps(t0, t1, _MM_SHUFFLE(3, 2, 3, 2)));  // a0 a1 a2 a3 per lane
  u = _mm512_add_ps(u, _mm512_shuffle_f32x4(u, u, _MM_SHUFFLE(1, 0, 3, 2)));  // fold the four lanes
  u = _mm512_add_ps(u, _mm512_shuffle_f32x4(u, u, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm512_castps512_ps128(u);
}

// ---------------------------------------------------------------------------------------------
// GEMV (t <= 8) is bandwidth bound, so its shape is about how memory is read and how much work
// each weight vector carries:
//  * T <= 2: one weight row at a time, front to back: a single sequential stream per thread
//    (on the dev machine, Zen 5, four concurrent row streams per thread lost 25-40% of the
//    bandwidth here). k is cut into chunks whose slice of x (T x KC f32, 16 KiB) stays in L1
//    while a group of up to 256 rows streams past it; partial sums wait in a stack array. S
//    accumulator sets along k keep T*S = 4..8 independent FMA chains.
//  * T >= 3: the FMAs dominate, so R rows per pass share every x load (T*R + R registers),
//    reading x from L2 over the full k.
//  * k runs in 128-column blocks: the fp8 scale block, the NaN-code check, and a software
//    prefetch a fixed distance ahead on each row stream (continuing past the end of the chunk
//    into the row the stream reads next, because hardware prefetchers stop at 4 KiB pages).

constexpr int64_t kGemvGroupRows = 256;
constexpr int64_t kPrefetchBytes = 1024;

template <int T>
struct GemvShape {
  static constexpr int R = T <= 2 ? 1 : T <= 4 ? 4 : 2;  // rows per pass
  static constexpr int S = T <= 2 ? 4 : 1;               // accumulator sets along k
  static constexpr int64_t kChunk = T <= 2 ? 16384 / (4 * T) : 0;  // k per x chunk (0: all of k)
};

// part[t * ldp + i] += sum over k in [k0, k1) of x[t, k] * W[r + i, k], for t < T, i < R.
template <int T, int R, int S, class D>
void gemv_rows(const float* x, const WeightRef& w, int64_t r, int64_t k0, int64_t k1, float* part, int64_t ldp) {
  using E = typename D::E;
  const int64_t K = w.k;
  const E* wr[R];
  for (int i = 0; i < R; ++i) wr[i] = static_cast<const E*>(w.data) + (r + i) * K;
  __m512 acc[S][T][R];
  for (int s = 0; s < S; ++s)
    for (int t = 0; t < T; ++t)
      for (int i = 0; i < R; ++i) acc[s][t][i] = _mm512_setzero_ps();

  auto step = [&](int64_t k, const __m512* bs, __m512 (&a)[T][R], bool tail, __mmask16 m) __attribute__((always_inline)) {
    __m512 wv[R];
    for (int i = 0; i < R; ++i) {
      wv[i] = tail ? D::load_tail(wr[i] + k, m) : D::load(wr[i] + k);
      if constexpr (D::kScaleMul != 0) wv[i] = _mm512_mul_ps(wv[i], bs[i]);
    }
    for (int t = 0; t < T; ++t) {
      __m512 xv = tail ? _mm512_maskz_loadu_ps(m, x + t * K + k) : _mm512_loadu_ps(x + t * K + k);
      for (int i = 0; i < R; ++i) a[t][i] = _mm512_fmadd_ps(xv, wv[i], a[t][i]);
    }
  };

  bool nan[R] = {};
  for (int64_t b0 = k0; b0 < k1; b0 += 128) {
    const int64_t bend = k1 - b0 < 128 ? k1 : b0 + 128;
    const int64_t p = b0 + kPrefetchBytes / static_cast<int64_t>(sizeof(E));
    for (int i = 0; i < R; ++i) {
      const char* pa = reinterpret_cast<const char*>(p < k1 ? wr[i] + p : wr[i] + R * K + k0 + (p - k1));
      for (int64_t off = 0; off < 128 * static_cast<int64_t>(sizeof(E)); off += 64) _mm_prefetch(pa + off, _MM_HINT_T0);
    }
    __m512 bs[R];
    for (int i = 0; i < R; ++i) {
      if constexpr (D::kNanCodes) nan[i] |= D::has_nan(wr[i] + b0, bend - b0);
      if constexpr (D::kScaleMul != 0) bs[i] = _mm512_set1_ps(fp8_block_scale(w, r + i, b0 / 128) * D::kScaleMul);
    }
    int64_t k = b0;
    for (; k + 16 * S <= bend; k += 16 * S)
      for (int s = 0; s < S; ++s) step(k + 16 * s, bs, acc[s], false, 0xffff);
    for (; k + 16 <= bend; k += 16) step(k, bs, acc[0], false, 0xffff);
    if (k < bend) step(k, bs, acc[0], true, tail_mask16(bend - k));
  }
  for (int t = 0; t < T; ++t)
    for (int i = 0; i < R; ++i) {
      for (int s = 1; s < S; ++s) acc[0][t][i] = _mm512_add_ps(acc[0][t][i], acc[s][t][i]);
      part[t * ldp + i] += nan[i] ? NAN : _mm512_reduce_add_ps(acc[0][t][i]);
    }
}

// Rows [n0, n1) of y for all T rows of x.
template <int T, class D>
void gemv_range(const float* x, const WeightRef& w, int64_t n0, int64_t n1, void* y, DType yt) {
  using G = GemvShape<T>;
  const int64_t K = w.k, N = w.n;
  const int64_t kc = G::kChunk > 0 ? G::kChunk : K;
  float part[T][kGemvGroupRows];
  for (int64_t g0 = n0; g0 < n1; g0 += kGemvGroupRows) {
    const int64_t g1 = n1 - g0 < kGemvGroupRows ? n1 : g0 + kGemvGroupRows;
    for (int t = 0; t < T; ++t)
      for (int64_t r = g0; r < g1; ++r) part[t][r - g0] = 0;
    for (int64_t k0 = 0; k0 < K; k0 += kc) {
      const int64_t k1 = K - k0 < kc ? K : k0 + kc;
      int64_t r = g0;
      for (; r + G::R <= g1; r += G::R) gemv_rows<T, G::R, G::S, D>(x, w, r, k0, k1, &part[0][r - g0], kGemvGroupRows);
      for (; r < g1; ++r) gemv_rows<T, 1, G::S, D>(x, w, r, k0, k1, &part[0][r - g0], kGemvGroupRows);
    }
    for (int t = 0; t < T; ++t)
      for (int64_t r = g0; r < g1; ++r) {
        float v = part[t][r - g0];
        if (w.dtype == DType::I8) v *= w.scale[r];
        store_y(y, yt, t * N + r, v);
      }
  }
}

template <int T, class D>
void gemv_t(const float* x, const WeightRef& w, void* y, DType yt) {
  parallel_for(w.n, gemv_grain_rows(w), [&](int64_t n0, int64_t n1) { gemv_range<T, D>(x, w, n0, n1, y, yt); });
}

template <class D>
void gemv(int64_t t, const float* x, const WeightRef& w, void* y, DType yt) {
  switch (t) {
    case 1: gemv_t<1, D>(x, w, y, yt); break;
    case 2: gemv_t<2, D>(x, w, y, yt); break;
    case 3: gemv_t<3, D>(x, w, y, yt); break;
    case 4: gemv_t<4, D>(x, w, y, yt); break;
    case 5: gemv_t<5, D>(x, w, y, yt); break;
    case 6: gemv_t<6, D>(x, w, y, yt); break;
    case 7: gemv_t<7, D>(x, w, y, yt); break;
    case 8: gemv_t<8, D>(x, w, y, yt); break;
  }
}

// ---------------------------------------------------------------------------------------------
// fp8 GEMV. Decoding is the cost here (one byte per weight), so the inner loop is cut to the bit
// move and the FMAs:
//  * 64 codes per 64-byte load. Seen as 32 words (code 2j in the low byte of word j, 2j + 1 in
//    the high byte), the f16 bits sign << 15 | (code & 0x7f) << 7 (see DecFP8) of the odd codes
//    are (word >>arith 1) & 0xbf80 and of the even codes ((word << 8) >>arith 1) & 0xbf80: five
//    integer ops for 64 codes, then four vcvtph2ps. The converted vectors hold the codes
//    [0, 2, .., 30], [32, .., 62], [1, 3, .., 31], [33, .., 63] of the 64, so x is stored in that
//    order.
//  * No per-vector scale: every output row of a 128-row block shares the block scales of a column
//    block, so x is pre-multiplied by scale * 256 (per 128 columns) into a per-thread copy, once per
//    128 output rows (and per k chunk). Products are then x * scale * 256 * (code / 256) rather
//    than x * (code * scale): the same value up to fp32 rounding.
//  * NaN codes: running unsigned and signed byte maxima of the codes; a row chunk's maximum is
//    0xff (unsigned) or 0x7f (signed) exactly when it holds 0xff or 0x7f. On a hit the rows of the
//    pass are checked one by one and the hit rows give NaN.
// Shapes as in the generic GEMV: T <= 2 one row at a time with x chunks in L1 and 4 accumulator
// chains per x row (8 measured slower); T >= 3 R rows per pass sharing each x load, one chain per
// (x row, W row). Measured alternatives for T = 4 (one row with x chunks in L1, two rows) reach
// 18-21 G weights/s/core from L2 against 26 for four rows, and half the bandwidth from DRAM.

template <int T>
struct Fp8Shape {
  static constexpr int R = T <= 2 ? 1 : T <= 4 ? 4 : 2;  // rows per pass
  static constexpr int NA = T <= 2 ? 4 : 1;              // accumulator chains per (x row, W row)
  static constexpr int64_t kChunk = T <= 2 ? 16384 / (4 * T) : 0;  // k per x chunk (0: all of k)
};

// Software prefetch distance on each fp8 row stream. Measured on the dev machine (Zen 5, 2 threads
// streaming from DRAM, T = 1): 0 B 23 GB/s, 512 B 29, 1 KiB 34, 1.5-2 KiB 37, 4 KiB 20 (too many
// lines in flight).
constexpr int64_t kFp8PrefetchBytes = 1536;

inline __mmask64 tail_mask64(int64_t n) { return n >= 64 ? ~0ull : (1ull << n) - 1; }

// xs[t * ldx + j] for t < T, j < round_up(k1 - k0, 64): x[t, k0 ..k1) times scale * 256 of its
// column block (srow: the block row of weight_scale_inv), in the fp8 decode order, zero padded.
template <int T>
void fp8_prep_x(const float* x, int64_t K, const float* srow, int64_t k0, int64_t k1, float* xs, int64_t ldx) {
  const __m512i ie = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i io = _mm512_add_epi32(ie, _mm512_set1_epi32(1));
  for (int t = 0; t < T; ++t)
    for (int64_t k = k0; k < k1; k += 64) {
      const float* src = x + t * K + k;
      __m512 v[4];
      for (int q = 0; q < 4; ++q) {
        const int64_t left = k1 - k - 16 * q;
        v[q] = left >= 16 ? _mm512_loadu_ps(src + 16 * q)
                          : _mm512_maskz_loadu_ps(tail_mask16(left > 0 ? left : 0), src + 16 * q);
      }
      const __m512 s = _mm512_set1_ps(srow[k / 128] * DecFP8::kScaleMul);
      float* dst = xs + t * ldx + (k - k0);
      _mm512_storeu_ps(dst, _mm512_mul_ps(_mm512_permutex2var_ps(v[0], ie, v[1]), s));
      _mm512_storeu_ps(dst + 16, _mm512_mul_ps(_mm512_permutex2var_ps(v[2], ie, v[3]), s));
      _mm512_storeu_ps(dst + 32, _mm512_mul_ps(_mm512_permutex2var_ps(v[0], io, v[1]), s));
      _mm512_storeu_ps(dst + 48, _mm512_mul_ps(_mm512_permutex2var_ps(v[2], io, v[3]), s));
    }
}

// part[t * ldp + i] += sum over k in [k0, k1) of xs[t, k - k0] * code(W[r + i, k]) for t < T,
// i < R (NaN for a row with a NaN code).
template <int T, int R, int NA>
void fp8_rows(const float* xs, int64_t ldx, const WeightRef& w, int64_t r, int64_t k0, int64_t k1, float* part,
              int64_t ldp) {
  const int64_t K = w.k;
  const uint8_t* wr[R];
  for (int i = 0; i < R; ++i) wr[i] = static_cast<const uint8_t*>(w.data) + (r + i) * K;
  __m512 acc[NA][T][R];
  for (int a = 0; a < NA; ++a)
    for (int t = 0; t < T; ++t)
      for (int i = 0; i < R; ++i) acc[a][t][i] = _mm512_setzero_ps();
  __m512i maxu = _mm512_setzero_si512(), maxs = _mm512_setzero_si512();
  const __m512i fmask = _mm512_set1_epi16(static_cast<short>(0xbf80));

  // 64 codes at k of every row; u picks the accumulator chains when NA = 8 (two sets of four).
  auto unit = [&](int64_t k, int u, __mmask64 m) __attribute__((always_inline)) {
    const float* xk = xs + (k - k0);
    __m512i he[R], ho[R];
    for (int i = 0; i < R; ++i) {
      __m512i v = m == ~0ull ? _mm512_loadu_si512(wr[i] + k) : _mm512_maskz_loadu_epi8(m, wr[i] + k);
      maxu = _mm512_max_epu8(maxu, v);
      maxs = _mm512_max_epi8(maxs, v);
      he[i] = _mm512_and_si512(_mm512_srai_epi16(_mm512_slli_epi16(v, 8), 1), fmask);
      ho[i] = _mm512_and_si512(_mm512_srai_epi16(v, 1), fmask);
    }
    for (int s = 0; s < 4; ++s) {
      __m512 wv[R];
      for (int i = 0; i < R; ++i) {
        const __m512i h = s < 2 ? he[i] : ho[i];
        wv[i] = _mm512_cvtph_ps(s % 2 == 0 ? _mm512_castsi512_si256(h) : _mm512_extracti64x4_epi64(h, 1));
      }
      const int a = (u * 4 + s) % NA;
      for (int t = 0; t < T; ++t) {
        const __m512 xv = _mm512_loadu_ps(xk + t * ldx + 16 * s);
        for (int i = 0; i < R; ++i) acc[a][t][i] = _mm512_fmadd_ps(xv, wv[i], acc[a][t][i]);
      }
    }
  };

  int64_t k = k0;
  for (; k < k1; k += 128) {
    const int64_t p = k + kFp8PrefetchBytes;
    for (int i = 0; i < R; ++i) {
      const char* pa = reinterpret_cast<const char*>(p < k1 ? wr[i] + p : wr[i] + R * K + k0 + (p - k1));
      _mm_prefetch(pa, _MM_HINT_T0);
      _mm_prefetch(pa + 64, _MM_HINT_T0);
    }
    if (k + 128 > k1) break;
    unit(k, 0, ~0ull);
    unit(k + 64, 1, ~0ull);
  }
  if (k < k1) {  // the last 1..127 columns
    unit(k, 0, tail_mask64(k1 - k));
    if (k + 64 < k1) unit(k + 64, 1, tail_mask64(k1 - k - 64));
  }

  bool nan[R] = {};
  const bool any_nan = (_mm512_cmpeq_epi8_mask(maxu, _mm512_set1_epi8(-1)) |
                        _mm512_cmpeq_epi8_mask(maxs, _mm512_set1_epi8(0x7f))) != 0;
  if (any_nan)
    for (int i = 0; i < R; ++i)
      for (int64_t b = k0; b < k1 && !nan[i]; b += 128) nan[i] = DecFP8::has_nan(wr[i] + b, k1 - b < 128 ? k1 - b : 128);
  for (int t = 0; t < T; ++t)
    for (int i = 0; i < R; ++i) {
      for (int a = 1; a < NA; ++a) acc[0][t][i] = _mm512_add_ps(acc[0][t][i], acc[a][t][i]);
      part[t * ldp + i] += nan[i] ? NAN : _mm512_reduce_add_ps(acc[0][t][i]);
    }
}

// Rows [n0, n1) of y for all T rows of x, in groups that never cross a 128-row scale block.
template <int T>
void gemv_fp8_range(const float* x, const WeightRef& w, int64_t n0, int64_t n1, void* y, DType yt) {
  using G = Fp8Shape<T>;
  const int64_t K = w.k, N = w.n, kblocks = ceil_div(K, 128);
  const int64_t kc = G::kChunk > 0 && G::kChunk < K ? G::kChunk : K;
  const int64_t ldx = round_up(kc, 64);
  float* xs = static_cast<float*>(scratch(kScratchPanel, T * ldx * sizeof(float)));
  float part[T][128];
  for (int64_t g0 = n0, g1; g0 < n1; g0 = g1) {
    g1 = (g0 / 128 + 1) * 128 < n1 ? (g0 / 128 + 1) * 128 : n1;
    const float* srow = w.scale + (g0 / 128) * kblocks;
    for (int t = 0; t < T; ++t)
      for (int64_t r = g0; r < g1; ++r) part[t][r - g0] = 0;
    for (int64_t k0 = 0; k0 < K; k0 += kc) {
      const int64_t k1 = K - k0 < kc ? K : k0 + kc;
      fp8_prep_x<T>(x, K, srow, k0, k1, xs, ldx);
      int64_t r = g0;
      for (; r + G::R <= g1; r += G::R) fp8_rows<T, G::R, G::NA>(xs, ldx, w, r, k0, k1, &part[0][r - g0], 128);
      for (; r < g1; ++r) fp8_rows<T, 1, G::NA>(xs, ldx, w, r, k0, k1, &part[0][r - g0], 128);
    }
    for (int t = 0; t < T; ++t)
      for (int64_t r = g0; r < g1; ++r) store_y(y, yt, t * N + r, part[t][r - g0]);
  }
}

template <int T>
void gemv_fp8_t(const float* x, const WeightRef& w, void* y, DType yt) {
  parallel_for(w.n, gemv_grain_rows(w), [&](int64_t n0, int64_t n1) { gemv_fp8_range<T>(x, w, n0, n1, y, yt); });
}

void gemv_fp8(int64_t t, const float* x, const WeightRef& w, void* y, DType yt) {
  switch (t) {
    case 1: gemv_fp8_t<1>(x, w, y, yt); break;
    case 2: gemv_fp8_t<2>(x, w, y, yt); break;
    case 3: gemv_fp8_t<3>(x, w, y, yt); break;
    case 4: gemv_fp8_t<4>(x, w, y, yt); break;
    case 5: gemv_fp8_t<5>(x, w, y, yt); break;
    case 6: gemv_fp8_t<6>(x, w, y, yt); break;
    case 7: gemv_fp8_t<7>(x, w, y, yt); break;
    case 8: gemv_fp8_t<8>(x, w, y, yt); break;
  }
}

void bf16_to_f32_rows(const uint16_t* src, int64_t n, float* dst) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(dst + i, DecBF16::load(src + i));
  if (i < n) _mm512_mask_storeu_ps(dst + i, tail_mask16(n - i), DecBF16::load_tail(src + i, tail_mask16(n - i)));
}

// ---------------------------------------------------------------------------------------------
// GEMM, fp32 FMA path: x packed as f32, the weight panel dequantized to f32. 6 x rows times 4
// weight rows = 24 accumulators; per 16-k step that is 10 loads for 24 FMAs.

template <class D>
void pack_panel_f32(const WeightRef& w, int64_t n0, int64_t nlen, int64_t nrows, int64_t k0, int64_t klen,
                    int64_t kcp, float* p) {
  using E = typename D::E;
  for (int64_t j = 0; j < nrows; ++j) {
    float* dst = p + j * kcp;
    if (j >= nlen) {
      std::memset(dst, 0, kcp * sizeof(float));
      continue;
    }
    const E* src = static_cast<const E*>(w.data) + (n0 + j) * w.k + k0;
    for (int64_t c = 0; c < kcp; c += 16) {
      const __mmask16 m = c + 16 <= klen ? 0xffff : tail_mask16(c < klen ? klen - c : 0);
      __m512 v = m == 0xffff ? D::load(src + c) : D::load_tail(src + c, m);
      if constexpr (D::kScaleMul != 0)
        v = _mm512_mul_ps(v, _mm512_set1_ps(fp8_block_scale(w, n0 + j, (k0 + c) / 128) * D::kScaleMul));
      if constexpr (D::kNanCodes)
        v = _mm512_mask_mov_ps(v, D::nan_lanes(_mm_maskz_loadu_epi8(m, src + c)), _mm512_set1_ps(NAN));
      _mm512_storeu_ps(dst + c, v);
    }
  }
}

struct GemmF32 {
  using XE = float;
  using WE = float;
  static constexpr int64_t kMR = 6, kStep = 16, kKC = 512;

  static void pack_x(const void* x, DType xt, int64_t t, int64_t r0, int64_t r1, int64_t k, int64_t kp, float* xp) {
    for (int64_t r = r0; r < r1; ++r) {
      float* dst = xp + r * kp;
      std::memset(dst, 0, kp * sizeof(float));
      if (r >= t) continue;
      if (xt == DType::BF16)
        bf16_to_f32_rows(static_cast<const uint16_t*>(x) + r * k, k, dst);
      else
        std::memcpy(dst, static_cast<const float*>(x) + r * k, k * sizeof(float));
    }
  }

  static void pack_panel(const WeightRef& w, int64_t n0, int64_t nlen, int64_t nrows, int64_t k0, int64_t klen,
                         int64_t kcp, float* p) {
    switch (w.dtype) {
      case DType::F32: pack_panel_f32<DecF32>(w, n0, nlen, nrows, k0, klen, kcp, p); break;
      case DType::BF16: pack_panel_f32<DecBF16>(w, n0, nlen, nrows, k0, klen, kcp, p); break;
      case DType::FP8_E4M3: pack_panel_f32<DecFP8>(w, n0, nlen, nrows, k0, klen, kcp, p); break;
      case DType::I8: pack_panel_f32<DecI8>(w, n0, nlen, nrows, k0, klen, kcp, p); break;
      default: break;
    }
  }

  static void micro(const float* x, int64_t ldx, const float* p, int64_t ldp, int64_t kc, float* c, int64_t ldc,
                    bool accumulate) {
    __m512 acc[kMR][4];
    for (int m = 0; m < kMR; ++m)
      for (int j = 0; j < 4; ++j) acc[m][j] = _mm512_setzero_ps();
    for (int64_t k = 0; k < kc; k += 16) {
      __m512 w0 = _mm512_loadu_ps(p + k), w1 = _mm512_loadu_ps(p + ldp + k);
      __m512 w2 = _mm512_loadu_ps(p + 2 * ldp + k), w3 = _mm512_loadu_ps(p + 3 * ldp + k);
      for (int m = 0; m < kMR; ++m) {
        __m512 xv = _mm512_loadu_ps(x + m * ldx + k);
        acc[m][0] = _mm512_fmadd_ps(xv, w0, acc[m][0]);
        acc[m][1] = _mm512_fmadd_ps(xv, w1, acc[m][1]);
        acc[m][2] = _mm512_fmadd_ps(xv, w2, acc[m][2]);
        acc[m][3] = _mm512_fmadd_ps(xv, w3, acc[m][3]);
      }
    }
    for (int m = 0; m < kMR; ++m) {
      __m128 s = hsum4(acc[m][0], acc[m][1], acc[m][2], acc[m][3]);
      if (accumulate) s = _mm_add_ps(s, _mm_loadu_ps(c + m * ldc));
      _mm_storeu_ps(c + m * ldc, s);
    }
  }
};

// ---------------------------------------------------------------------------------------------
// GEMM, AVX512-BF16 path (bf16 weights): x rounded to bf16 (nearest even) when packed, the panel
// is a zero-padded copy of W. vdpbf16ps multiplies bf16 pairs exactly and adds them into fp32
// lanes, so one instruction does 32 multiply-adds: twice the fp32 FMA rate, half the bytes.

#pragma GCC push_options
#pragma GCC target("avx512bf16")

struct GemmBF16 {
  using XE = uint16_t;
  using WE = uint16_t;
  static constexpr int64_t kMR = 6, kStep = 32, kKC = 1024;

  static void pack_x(const void* x, DType xt, int64_t t, int64_t r0, int64_t r1, int64_t k, int64_t kp, uint16_t* xp) {
    for (int64_t r = r0; r < r1; ++r) {
      uint16_t* dst = xp + r * kp;
      std::memset(dst, 0, kp * sizeof(uint16_t));
      if (r >= t) continue;
      if (xt == DType::BF16) {
        std::memcpy(dst, static_cast<const uint16_t*>(x) + r * k, k * sizeof(uint16_t));
        continue;
      }
      const float* src = static_cast<const float*>(x) + r * k;
      int64_t c = 0;
      for (; c + 16 <= k; c += 16)
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + c), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(src + c)));
      if (c < k) {
        __mmask16 m = tail_mask16(k - c);
        _mm256_mask_storeu_epi16(dst + c, m, (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, src + c)));
      }
    }
  }

  static void pack_panel(const WeightRef& w, int64_t n0, int64_t nlen, int64_t nrows, int64_t k0, int64_t klen,
                         int64_t kcp, uint16_t* p) {
    for (int64_t j = 0; j < nrows; ++j) {
      uint16_t* dst = p + j * kcp;
      int64_t copied = 0;
      if (j < nlen) {
        std::memcpy(dst, static_cast<const uint16_t*>(w.data) + (n0 + j) * w.k + k0, klen * sizeof(uint16_t));
        copied = klen;
      }
      std::memset(dst + copied, 0, (kcp - copied) * sizeof(uint16_t));
    }
  }

  static void micro(const uint16_t* x, int64_t ldx, const uint16_t* p, int64_t ldp, int64_t kc, float* c,
                    int64_t ldc, bool accumulate) {
    __m512 acc[kMR][4];
    for (int m = 0; m < kMR; ++m)
      for (int j = 0; j < 4; ++j) acc[m][j] = _mm512_setzero_ps();
    for (int64_t k = 0; k < kc; k += 32) {
      __m512bh w0 = (__m512bh)_mm512_loadu_si512(p + k), w1 = (__m512bh)_mm512_loadu_si512(p + ldp + k);
      __m512bh w2 = (__m512bh)_mm512_loadu_si512(p + 2 * ldp + k), w3 = (__m512bh)_mm512_loadu_si512(p + 3 * ldp + k);
      for (int m = 0; m < kMR; ++m) {
        __m512bh xv = (__m512bh)_mm512_loadu_si512(x + m * ldx + k);
        acc[m][0] = _mm512_dpbf16_ps(acc[m][0], xv, w0);
        acc[m][1] = _mm512_dpbf16_ps(acc[m][1], xv, w1);
        acc[m][2] = _mm512_dpbf16_ps(acc[m][2], xv, w2);
        acc[m][3] = _mm512_dpbf16_ps(acc[m][3], xv, w3);
      }
    }
    for (int m = 0; m < kMR; ++m) {
      __m128 s = hsum4(acc[m][0], acc[m][1], acc[m][2], acc[m][3]);
      if (accumulate) s = _mm_add_ps(s, _mm_loadu_ps(c + m * ldc));
      _mm_storeu_ps(c + m * ldc, s);
    }
  }
};

#pragma GCC pop_options  // avx512bf16

}  // namespace

void linear_avx512(int64_t t, const void* x, DType xt, const WeightRef& w, void* y, DType yt, bool bf16_dot) {
  if (t > kGemvMaxRows) {
    if (bf16_dot && w.dtype == DType::BF16)
      gemm<GemmBF16>(t, x, xt, w, y, yt);
    else
      gemm<GemmF32>(t, x, xt, w, y, yt);
    return;
  }
  const float* xf = static_cast<const float*>(x);
  if (xt == DType::BF16) {
    float* buf = static_cast<float*>(scratch(kScratchX, t * w.k * sizeof(float)));
    bf16_to_f32_rows(static_cast<const uint16_t*>(x), t * w.k, buf);
    xf = buf;
  }
  switch (w.dtype) {
    case DType::F32: gemv<DecF32>(t, xf, w, y, yt); break;
    case DType::BF16: gemv<DecBF16>(t, xf, w, y, yt); break;
    case DType::FP8_E4M3: gemv_fp8(t, xf, w, y, yt); break;
    case DType::I8: gemv<DecI8>(t, xf, w, y, yt); break;
    default: break;
  }
}

double read_sum_avx512(const void* p, int64_t bytes) {
  const int64_t lines = bytes / 64;
  const char* base = static_cast<const char*>(p);
  std::atomic<uint64_t> total{0};
  parallel_for(lines, 1 << 14, [&](int64_t b, int64_t e) {
    __m512i s0 = _mm512_setzero_si512(), s1 = s0, s2 = s0, s3 = s0;
    int64_t i = b;
    for (; i + 4 <= e; i += 4) {
      s0 = _mm512_add_epi64(s0, _mm512_loadu_si512(base + i * 64));
      s1 = _mm512_add_epi64(s1, _mm512_loadu_si512(base + i * 64 + 64));
      s2 = _mm512_add_epi64(s2, _mm512_loadu_si512(base + i * 64 + 128));
      s3 = _mm512_add_epi64(s3, _mm512_loadu_si512(base + i * 64 + 192));
    }
    for (; i < e; ++i) s0 = _mm512_add_epi64(s0, _mm512_loadu_si512(base + i * 64));
    s0 = _mm512_add_epi64(_mm512_add_epi64(s0, s1), _mm512_add_epi64(s2, s3));
    total += static_cast<uint64_t>(_mm512_reduce_add_epi64(s0));
  });
  return static_cast<double>(total.load());
}

}  // namespace lc::cpu::linear_detail

#pragma GCC diagnostic pop
#pragma GCC pop_options
