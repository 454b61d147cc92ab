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
    case DType::FP8_E4M3: gemv<DecFP8>(t, xf, w, y, yt); break;
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
