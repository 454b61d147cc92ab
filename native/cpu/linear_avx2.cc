// AVX2 + FMA + F16C linear layers: GEMV (t <= 8) and GEMM (t > 8), fp32 multiply-add throughout.
// Same GEMM as linear_avx512.cc with 8-lane vectors and 16 registers. The GEMV keeps the simpler
// R-rows-per-pass shape for every t (AVX2 is the fallback path; the AVX-512 GEMV's single-stream
// k-chunked variant for t <= 2 was tuned on the AVX-512 dev machine only).
#include <immintrin.h>

#include <cmath>
#include <cstring>

#include "linear_kernels.h"
#include "threadpool.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")

namespace lc::cpu::linear_detail {
namespace {  // internal linkage: nothing compiled for AVX2 may be shared with other files

// ---------------------------------------------------------------------------------------------
// Weight decoders: 8 stored weights -> 8 f32 lanes (fp8 / int8 without their scales, see
// linear_avx512.cc for the fp8 bit trick). scalar(p, i) decodes one element for k tails.

struct DecF32 {
  static constexpr bool kNanCodes = false;
  using E = float;
  static constexpr float kScaleMul = 0;
  static __m256 load(const float* p) { return _mm256_loadu_ps(p); }
  static float scalar(const float* p) { return *p; }
};

struct DecBF16 {
  static constexpr bool kNanCodes = false;
  using E = uint16_t;
  static constexpr float kScaleMul = 0;
  static __m256 load(const uint16_t* p) {
    __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
  }
  static float scalar(const uint16_t* p) { return bf16_to_f32(*p); }
};

struct DecI8 {
  static constexpr bool kNanCodes = false;
  using E = int8_t;
  static constexpr float kScaleMul = 0;
  static __m256 load(const int8_t* p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  }
  static float scalar(const int8_t* p) { return static_cast<float>(*p); }
};

struct DecFP8 {  // f16 bit move as in linear_avx512.cc: decodes to value / 256; NaN codes checked apart
  using E = uint8_t;
  static constexpr float kScaleMul = 256.0f;
  static constexpr bool kNanCodes = true;
  static __m256 load(const uint8_t* p) {
    __m128i h = _mm_slli_epi16(_mm_cvtepi8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))), 7);
    return _mm256_cvtph_ps(_mm_and_si128(h, _mm_set1_epi16(static_cast<short>(0xbfff))));
  }
  static float scalar(const uint8_t* p) { return fp8e4m3_to_f32(*p) / 256.0f; }
  static bool is_nan(uint8_t b) { return (b & 0x7f) == 0x7f; }
  // Whether the n codes at p hold a NaN code: (b | 0x80) == 0xff.
  static bool has_nan(const uint8_t* p, int64_t n) {
    int64_t i = 0;
    int any = 0;
    for (; i + 32 <= n; i += 32) {
      __m256i v = _mm256_or_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i)), _mm256_set1_epi8(static_cast<char>(0x80)));
      any |= _mm256_movemask_epi8(_mm256_cmpeq_epi8(v, _mm256_set1_epi8(-1)));
    }
    for (; i < n; ++i) any |= is_nan(p[i]);
    return any != 0;
  }
};

// Sums of four vectors: returns [sum(a0), sum(a1), sum(a2), sum(a3)].
inline __m128 hsum4(__m256 a0, __m256 a1, __m256 a2, __m256 a3) {
  __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));  // per 128-bit half
  return _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
}

inline float hsum(__m256 a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// ---------------------------------------------------------------------------------------------
// GEMV: rows [r0, r0 + R) of W against all T rows of x; k in 128-blocks (fp8 scale blocks),
// 8 lanes per step, a scalar loop for the last k % 8 columns.

constexpr int64_t kPrefetchBytes = 1024;

// Software prefetch of the 128-column block kPrefetchBytes ahead on each of the R row streams
// (hardware prefetchers stop at 4 KiB pages). Past the end of its row, a stream continues into the
// row R further on: the same stream in the next group, so groups start warm.
template <int R, class E>
inline void prefetch_ahead(const E* const* wr, int64_t k0, int64_t K) {
  const int64_t p = k0 + kPrefetchBytes / static_cast<int64_t>(sizeof(E));
  const int64_t skip = p >= K ? (R - 1) * K : 0;
  for (int r = 0; r < R; ++r)
    for (int64_t off = 0; off < 128 * static_cast<int64_t>(sizeof(E)); off += 64)
      _mm_prefetch(reinterpret_cast<const char*>(wr[r] + p + skip) + off, _MM_HINT_T0);
}

template <int T, int R, class D>
void gemv_rows(const float* x, const WeightRef& w, int64_t r0, void* y, DType yt) {
  using E = typename D::E;
  const int64_t K = w.k, N = w.n;
  const E* wr[R];
  for (int r = 0; r < R; ++r) wr[r] = static_cast<const E*>(w.data) + (r0 + r) * K;
  __m256 acc[T][R];
  float tail[T][R] = {};
  for (int t = 0; t < T; ++t)
    for (int r = 0; r < R; ++r) acc[t][r] = _mm256_setzero_ps();

  bool nan[R] = {};  // a NaN weight code makes the row's dot products NaN
  for (int64_t k0 = 0; k0 < K; k0 += 128) {
    const int64_t kend = K - k0 < 128 ? K : k0 + 128;
    if constexpr (D::kNanCodes)
      for (int r = 0; r < R; ++r) nan[r] |= D::has_nan(wr[r] + k0, kend - k0);
    __m256 bs[R];
    float bss[R];
    if constexpr (D::kScaleMul != 0)
      for (int r = 0; r < R; ++r) {
        bss[r] = fp8_block_scale(w, r0 + r, k0 / 128) * D::kScaleMul;
        bs[r] = _mm256_set1_ps(bss[r]);
      }
    prefetch_ahead<R>(wr, k0, K);
    int64_t k = k0;
#pragma GCC unroll 4
    for (; k + 8 <= kend; k += 8) {
      __m256 wv[R];
      for (int r = 0; r < R; ++r) {
        wv[r] = D::load(wr[r] + k);
        if constexpr (D::kScaleMul != 0) wv[r] = _mm256_mul_ps(wv[r], bs[r]);
      }
      for (int t = 0; t < T; ++t) {
        __m256 xv = _mm256_loadu_ps(x + t * K + k);
        for (int r = 0; r < R; ++r) acc[t][r] = _mm256_fmadd_ps(xv, wv[r], acc[t][r]);
      }
    }
    for (; k < kend; ++k)
      for (int r = 0; r < R; ++r) {
        float wv = D::scalar(wr[r] + k);
        if constexpr (D::kScaleMul != 0) wv *= bss[r];
        for (int t = 0; t < T; ++t) tail[t][r] += x[t * K + k] * wv;
      }
  }

  for (int t = 0; t < T; ++t)
    for (int r = 0; r < R; ++r) {
      float v = nan[r] ? NAN : hsum(acc[t][r]) + tail[t][r];
      if (w.dtype == DType::I8) v *= w.scale[r0 + r];
      store_y(y, yt, t * N + r0 + r, v);
    }
}

// R output rows per pass so that T*R accumulators + R weights + 1 x fit in 16 registers.
template <int T, class D>
void gemv_t(const float* x, const WeightRef& w, void* y, DType yt) {
  constexpr int R = T <= 2 ? 4 : T <= 4 ? 2 : 1;
  gemv_split<R>(w, [&](int64_t r) { gemv_rows<T, R, D>(x, w, r, y, yt); },
                [&](int64_t r) { gemv_rows<T, 1, D>(x, w, r, y, yt); });
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
// fp8 GEMV: the AVX-512 file's scheme with 32 codes per 32-byte load (see linear_avx512.cc):
// the f16 bits of the odd codes are (word >>arith 1) & 0xbf80, of the even codes
// ((word << 8) >>arith 1) & 0xbf80, and four F16C conversions give the codes [0, 2, .., 14],
// [16, .., 30], [1, .., 15], [17, .., 31] of the 32; x is pre-multiplied by the block scale * 256
// (once per 128 output rows) into that order; NaN codes are caught by running byte maxima.

template <int T>
struct Fp8Shape {
  static constexpr int R = T <= 2 ? 1 : T <= 4 ? 2 : 1;  // rows per pass (16 registers)
  static constexpr int NA = T <= 2 ? 4 : 1;              // accumulator chains per (x row, W row)
  static constexpr int64_t kChunk = T <= 2 ? 16384 / (4 * T) : 0;  // k per x chunk (0: all of k)
};

constexpr int64_t kFp8PrefetchBytes = 1536;  // see linear_avx512.cc

// xs[t * ldx + j] for t < T, j < round_up(k1 - k0, 32): x[t, k0 .. k1) times scale * 256 of its
// column block, in the decode order, zero padded.
template <int T>
void fp8_prep_x(const float* x, int64_t K, const float* srow, int64_t k0, int64_t k1, float* xs, int64_t ldx) {
  for (int t = 0; t < T; ++t)
    for (int64_t k = k0; k < k1; k += 32) {
      const float* src = x + t * K + k;
      const float s = srow[k / 128] * DecFP8::kScaleMul;
      float* dst = xs + t * ldx + (k - k0);
      if (k + 32 <= k1) {
        const __m256 a = _mm256_loadu_ps(src), b = _mm256_loadu_ps(src + 8);
        const __m256 c = _mm256_loadu_ps(src + 16), d = _mm256_loadu_ps(src + 24), vs = _mm256_set1_ps(s);
        auto pick = [&](__m256 lo, __m256 hi, int odd) {  // even or odd lanes of lo:hi, in order
          __m256 v = odd ? _mm256_shuffle_ps(lo, hi, 0xdd) : _mm256_shuffle_ps(lo, hi, 0x88);
          return _mm256_mul_ps(_mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(v), 0xd8)), vs);
        };
        _mm256_storeu_ps(dst, pick(a, b, 0));
        _mm256_storeu_ps(dst + 8, pick(c, d, 0));
        _mm256_storeu_ps(dst + 16, pick(a, b, 1));
        _mm256_storeu_ps(dst + 24, pick(c, d, 1));
      } else {
        for (int j = 0; j < 32; ++j) {
          const int q = j / 8, i = j % 8;
          const int64_t c = (q & 1) * 16 + 2 * i + (q >> 1);
          dst[j] = k + c < k1 ? src[c] * s : 0.0f;
        }
      }
    }
}

// part[t * ldp + i] += sum over k in [k0, k1) of xs[t, k - k0] * code(W[r + i, k]) (NaN for a row
// with a NaN code).
template <int T, int R, int NA>
void fp8_rows(const float* xs, int64_t ldx, const WeightRef& w, int64_t r, int64_t k0, int64_t k1, float* part,
              int64_t ldp) {
  const int64_t K = w.k;
  const uint8_t* wr[R];
  for (int i = 0; i < R; ++i) wr[i] = static_cast<const uint8_t*>(w.data) + (r + i) * K;
  __m256 acc[NA][T][R];
  for (int a = 0; a < NA; ++a)
    for (int t = 0; t < T; ++t)
      for (int i = 0; i < R; ++i) acc[a][t][i] = _mm256_setzero_ps();
  __m256i maxu = _mm256_setzero_si256(), maxs = _mm256_setzero_si256();
  const __m256i fmask = _mm256_set1_epi16(static_cast<short>(0xbf80));

  // 32 codes at k of every row (p[i]: where row i's codes are).
  auto unit = [&](int64_t k, const uint8_t* const* p) __attribute__((always_inline)) {
    const float* xk = xs + (k - k0);
    for (int half = 0; half < 2; ++half) {  // even codes, then odd codes
      __m256i h[R];
      for (int i = 0; i < R; ++i) {
        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p[i]));
        if (half == 0) {
          maxu = _mm256_max_epu8(maxu, v);
          maxs = _mm256_max_epi8(maxs, v);
          h[i] = _mm256_and_si256(_mm256_srai_epi16(_mm256_slli_epi16(v, 8), 1), fmask);
        } else {
          h[i] = _mm256_and_si256(_mm256_srai_epi16(v, 1), fmask);
        }
      }
      for (int q = 0; q < 2; ++q) {
        const int s = 2 * half + q;
        __m256 wv[R];
        for (int i = 0; i < R; ++i)
          wv[i] = _mm256_cvtph_ps(q == 0 ? _mm256_castsi256_si128(h[i]) : _mm256_extracti128_si256(h[i], 1));
        for (int t = 0; t < T; ++t) {
          const __m256 xv = _mm256_loadu_ps(xk + t * ldx + 8 * s);
          for (int i = 0; i < R; ++i) acc[s % NA][t][i] = _mm256_fmadd_ps(xv, wv[i], acc[s % NA][t][i]);
        }
      }
    }
  };

  int64_t k = k0;
  for (; k + 32 <= k1; k += 32) {
    if ((k - k0) % 128 == 0) {
      const int64_t pf = k + kFp8PrefetchBytes;
      for (int i = 0; i < R; ++i) {
        const char* pa = reinterpret_cast<const char*>(pf < k1 ? wr[i] + pf : wr[i] + R * K + k0 + (pf - k1));
        _mm_prefetch(pa, _MM_HINT_T0);
        _mm_prefetch(pa + 64, _MM_HINT_T0);
      }
    }
    const uint8_t* p[R];
    for (int i = 0; i < R; ++i) p[i] = wr[i] + k;
    unit(k, p);
  }
  if (k < k1) {  // the last 1..31 columns, from zero-padded copies
    alignas(32) uint8_t buf[R][32] = {};
    const uint8_t* p[R];
    for (int i = 0; i < R; ++i) {
      std::memcpy(buf[i], wr[i] + k, k1 - k);
      p[i] = buf[i];
    }
    unit(k, p);
  }

  bool nan[R] = {};
  const bool any_nan = (_mm256_movemask_epi8(_mm256_cmpeq_epi8(maxu, _mm256_set1_epi8(-1))) |
                        _mm256_movemask_epi8(_mm256_cmpeq_epi8(maxs, _mm256_set1_epi8(0x7f)))) != 0;
  if (any_nan)
    for (int i = 0; i < R; ++i) nan[i] = DecFP8::has_nan(wr[i] + k0, k1 - k0);
  for (int t = 0; t < T; ++t)
    for (int i = 0; i < R; ++i) {
      for (int a = 1; a < NA; ++a) acc[0][t][i] = _mm256_add_ps(acc[0][t][i], acc[a][t][i]);
      part[t * ldp + i] += nan[i] ? NAN : hsum(acc[0][t][i]);
    }
}

// Rows [n0, n1) of y for all T rows of x, in groups that never cross a 128-row scale block.
template <int T>
void gemv_fp8_range(const float* x, const WeightRef& w, int64_t n0, int64_t n1, void* y, DType yt) {
  using G = Fp8Shape<T>;
  const int64_t K = w.k, N = w.n, kblocks = ceil_div(K, 128);
  const int64_t kc = G::kChunk > 0 && G::kChunk < K ? G::kChunk : K;
  const int64_t ldx = round_up(kc, 32);
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
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, DecBF16::load(src + i));
  for (; i < n; ++i) dst[i] = bf16_to_f32(src[i]);
}

// ---------------------------------------------------------------------------------------------
// GEMM: x packed as f32, the panel dequantized to f32; 3 x rows times 4 weight rows = 12
// accumulators + 3 x vectors + 1 weight vector = all 16 registers.

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
    int64_t c = 0;
    for (; c + 8 <= klen; c += 8) {
      __m256 v = D::load(src + c);
      if constexpr (D::kScaleMul != 0)
        v = _mm256_mul_ps(v, _mm256_set1_ps(fp8_block_scale(w, n0 + j, (k0 + c) / 128) * D::kScaleMul));
      _mm256_storeu_ps(dst + c, v);
    }
    for (; c < klen; ++c) {
      float v = D::scalar(src + c);
      if constexpr (D::kScaleMul != 0) v *= fp8_block_scale(w, n0 + j, (k0 + c) / 128) * D::kScaleMul;
      dst[c] = v;
    }
    for (; c < kcp; ++c) dst[c] = 0;
    if constexpr (D::kNanCodes)
      for (c = 0; c < klen; ++c)
        if (D::is_nan(src[c])) dst[c] = NAN;
  }
}

struct GemmF32 {
  using XE = float;
  using WE = float;
  static constexpr int64_t kMR = 3, kStep = 8, kKC = 512;

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
    __m256 acc[kMR][4];
    for (int m = 0; m < kMR; ++m)
      for (int j = 0; j < 4; ++j) acc[m][j] = _mm256_setzero_ps();
    for (int64_t k = 0; k < kc; k += 8) {
      __m256 xv[kMR];
      for (int m = 0; m < kMR; ++m) xv[m] = _mm256_loadu_ps(x + m * ldx + k);
      for (int j = 0; j < 4; ++j) {
        __m256 wv = _mm256_loadu_ps(p + j * ldp + k);
        for (int m = 0; m < kMR; ++m) acc[m][j] = _mm256_fmadd_ps(xv[m], wv, acc[m][j]);
      }
    }
    for (int m = 0; m < kMR; ++m) {
      __m128 s = hsum4(acc[m][0], acc[m][1], acc[m][2], acc[m][3]);
      if (accumulate) s = _mm_add_ps(s, _mm_loadu_ps(c + m * ldc));
      _mm_storeu_ps(c + m * ldc, s);
    }
  }
};

}  // namespace

void linear_avx2(int64_t t, const void* x, DType xt, const WeightRef& w, void* y, DType yt) {
  if (t > kGemvMaxRows) {
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

double read_sum_avx2(const void* p, int64_t bytes) {
  const int64_t lines = bytes / 64;
  const char* base = static_cast<const char*>(p);
  std::atomic<uint64_t> total{0};
  parallel_for(lines, 1 << 14, [&](int64_t b, int64_t e) {
    __m256i s0 = _mm256_setzero_si256(), s1 = s0, s2 = s0, s3 = s0;
    for (int64_t i = b; i < e; ++i) {
      const __m256i* q = reinterpret_cast<const __m256i*>(base + i * 64);
      if (i & 1) {
        s0 = _mm256_add_epi64(s0, _mm256_loadu_si256(q));
        s1 = _mm256_add_epi64(s1, _mm256_loadu_si256(q + 1));
      } else {
        s2 = _mm256_add_epi64(s2, _mm256_loadu_si256(q));
        s3 = _mm256_add_epi64(s3, _mm256_loadu_si256(q + 1));
      }
    }
    s0 = _mm256_add_epi64(_mm256_add_epi64(s0, s1), _mm256_add_epi64(s2, s3));
    uint64_t lanes[4];
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(lanes), s0);
    total += lanes[0] + lanes[1] + lanes[2] + lanes[3];
  });
  return static_cast<double>(total.load());
}

}  // namespace lc::cpu::linear_detail

#pragma GCC pop_options
