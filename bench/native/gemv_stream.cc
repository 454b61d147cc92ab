// The decode step's GEMV streaming regime, alone: a batch-1 bf16 GEMV (x f32, y f32) over every
// dense matrix of the `medium` preset in turn (8 layers x 2 x [gate, up, down 4 MiB, o 2 MiB,
// q_b 1.2 MiB, q_a 0.75 MiB, kv_a 0.6 MiB], plus lm_head 64 MiB: 333 MB, more than any cache),
// each matrix split into the pool's chunks (min(rows / 64 KiB, 4 per thread), taken dynamically)
// and joined at a spin barrier, as a replayed graph runs them. Weights in 4 KiB pages
// (MADV_NOHUGEPAGE, as the mapped shards) unless --huge. The kernel variants (the row kernel of
// native/cpu/linear_vec.h and changes to its prefetch, rows per pass and accumulators) and the read
// probe (linear.cc's read_sum loop) run over the same buffers (`cur`: main's kernel before
// wt13-gemv, the block's lines 2 KiB ahead into L1 and 8 KiB into L2; `near512_far8k`: main's t = 1
// bf16 kernel since), alternated round by round, so the
// host's bandwidth swings hit every variant alike. Prints GB/s per variant and round and the median.
// rows_gen (session 14): linear_vec.h's GEMV loop as main compiles it (the generic unroll-4 loop per
// 128-column block) for bf16 / int8 / fp8 weights and T = 1-4 x rows, named <fmt>t<T>_n<near>_f<far>
// (the L1 and L2 request distances); the 1-byte formats read the first n k bytes of each matrix and
// are compared with probe1 (the probe over those bytes). --preset small: small's matrices (rows of
// 512 B - 2 KiB in bf16, 36 MB: partly cache-resident, the probe reads 32-74 GB/s). --ref V: the
// variant the last ratio column divides by (default cur).
// Session 15 (short rows, bench/RESULTS.md wt15-short): sh<T>r<R>[_c][_h][_a<NA>]_n<near>_f<far>
// (rows_short: main's bf16 kernel, _c the pass's R rows requested as one contiguous stream, _h one
// transposed reduction per 4 rows, _a NA accumulator chains) and eo<R>a<NA>[_c][_h]_n_f / eoi...
// (rows_eo: the bf16 weights decoded in their own lanes, even by a shift and odd by a mask, x in
// matching order; eoi: each 64 bytes as two 32-byte loads). $GEMV_LAYERS=L: L layers of the preset
// (small x 64 = 290 MB: cold, as the 1 GiB probe); $GEMV_MISALIGN=B: each matrix B bytes past its
// page start (safetensors tensors start where the header ends: bench/out/ckpt-small's second shard
// at 32 bytes past a line).
//
// Build and run (AVX-512 machine; under the heavy lock):
//   g++ -O3 -march=native -std=c++17 -pthread bench/native/gemv_stream.cc -o /tmp/gemv_stream
//   /tmp/gemv_stream [--threads N] [--rounds N] [--huge | --file F] [--set N] [--gap-us U]
//                     [--only a,b,...] [--ref V] [--preset medium|small]
#include <immintrin.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <vector>

namespace {

struct Mat {
  int64_t n, k;
  uint16_t* w;  // bf16 [n][k]
};

// ---- the row kernels -------------------------------------------------------------------------

// How a variant prefetches: per 128-column block, every line of the block for each row stream
// (kBlock, the current kernel), or one line per row stream each time the stream crosses a line
// (kLine), or none.
enum class Pf { kNone, kBlock, kLine, kStagger };

// Far, FarHint: a second request of the same lines Far bytes ahead (linear_vec.h's
// kGemvFarPrefetchBytes, hint T1 = 1 there; Far = 0: none); with P == kNone only the far one.
template <int R, int NA, Pf P, int64_t Dist, int Hint, int64_t Far = 0, int FarHint = 1>
void rows_bf16(const float* x, const Mat& m, int64_t r, float* y) {
  const int64_t K = m.k;
  const uint16_t* wr[R];
  for (int i = 0; i < R; ++i) wr[i] = m.w + (r + i) * K;
  __m512 acc[NA][R];
  for (auto& a : acc)
    for (auto& v : a) v = _mm512_setzero_ps();
  auto pf = [&](const char* p) {
    if constexpr (Hint == 0) _mm_prefetch(p, _MM_HINT_T0);
    if constexpr (Hint == 1) _mm_prefetch(p, _MM_HINT_T1);
    if constexpr (Hint == 2) _mm_prefetch(p, _MM_HINT_T2);
    if constexpr (Hint == 3) _mm_prefetch(p, _MM_HINT_NTA);
  };
  auto pfar = [&](const char* p) {
    if constexpr (FarHint == 0) _mm_prefetch(p, _MM_HINT_T0);
    if constexpr (FarHint == 1) _mm_prefetch(p, _MM_HINT_T1);
    if constexpr (FarHint == 2) _mm_prefetch(p, _MM_HINT_T2);
    if constexpr (FarHint == 3) _mm_prefetch(p, _MM_HINT_NTA);
  };
  auto pa = [&](int i, int64_t b0, int64_t d = Dist) {  // the stream's address d bytes ahead of column b0
    const int64_t p = b0 + d / 2;
    return reinterpret_cast<const char*>(p < K ? wr[i] + p : wr[i] + R * K + (p - K));
  };
  for (int64_t b0 = 0; b0 < K; b0 += 128) {
    if constexpr (P == Pf::kBlock)
      for (int i = 0; i < R; ++i)
        for (int off = 0; off < 256; off += 64) pf(pa(i, b0) + off);
    if constexpr (Far > 0)
      for (int i = 0; i < R; ++i)
        for (int off = 0; off < 256; off += 64) pfar(pa(i, b0, Far) + off);
    const int64_t bend = std::min(K, b0 + 128);
    int u = 0;
#pragma GCC unroll 8
    for (int64_t k = b0; k + 16 <= bend; k += 16, ++u) {
      if constexpr (P == Pf::kLine)
        if (u % 2 == 0)
          for (int i = 0; i < R; ++i) pf(pa(i, k));
      if constexpr (P == Pf::kStagger)
        for (int i = 0; i < R; ++i)
          if (u % 2 == i % 2) pf(pa(i, k - 16 * (i % 2)));
      const __m512 xv = _mm512_loadu_ps(x + k);
      for (int i = 0; i < R; ++i) {
        const __m512 wv = _mm512_castsi512_ps(_mm512_slli_epi32(
            _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wr[i] + k))), 16));
        acc[u % NA][i] = _mm512_fmadd_ps(xv, wv, acc[u % NA][i]);
      }
    }
  }
  for (int i = 0; i < R; ++i) {
    for (int a = 1; a < NA; ++a) acc[0][i] = _mm512_add_ps(acc[0][i], acc[a][i]);
    y[r + i] = _mm512_reduce_add_ps(acc[0][i]);
  }
}

// One row at a time (one stream, as the probe reads), NA accumulator chains with constant indices,
// a prefetch of one line Dist bytes ahead per 64 bytes (rows are contiguous: past the row's end is
// the next row).
template <int NA, int64_t Dist, bool Blk = false>
void row1(const float* x, const Mat& m, int64_t r, float* y) {
  const int64_t K = m.k;
  const uint16_t* w = m.w + r * K;
  __m512 acc[NA];
  for (auto& v : acc) v = _mm512_setzero_ps();
  constexpr int S = 16 * NA;
  int64_t k = 0;
  for (; k + S <= K; k += S) {
    if constexpr (Blk)  // linear_vec.h's prefetch: a 128-column block's 4 lines at its start
      if (k % 128 == 0)
        for (int off = 0; off < 256; off += 64) _mm_prefetch(reinterpret_cast<const char*>(w + k + Dist / 2) + off, _MM_HINT_T0);
    if constexpr (Dist > 0 && !Blk)
      for (int off = 0; off < S; off += 32)
        if ((k + off) % 32 == 0) _mm_prefetch(reinterpret_cast<const char*>(w + k + off + Dist / 2), _MM_HINT_T0);
    for (int a = 0; a < NA; ++a) {
      const __m512 wv = _mm512_castsi512_ps(_mm512_slli_epi32(
          _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + k + 16 * a))), 16));
      acc[a] = _mm512_fmadd_ps(_mm512_loadu_ps(x + k + 16 * a), wv, acc[a]);
    }
  }
  for (int a = 1; a < NA; ++a) acc[0] = _mm512_add_ps(acc[0], acc[a]);
  y[r] = _mm512_reduce_add_ps(acc[0]);
}

template <int NA, int64_t Dist, bool Blk = false>
void row1_chunk(const float* x, const Mat& m, int64_t r0, int64_t r1, float* y) {
  for (int64_t r = r0; r < r1; ++r) row1<NA, Dist, Blk>(x, m, r, y);
}

// linear_vec.h's GEMV kernels for T x rows and each weight format, with its prefetch (per
// 128-column block, every row's block Near bytes ahead into L1 (Near = 0: none) and Far bytes
// ahead into L2, past the row's end on in the same row of the next pass: prefetch_rows_ahead):
//   kBf16  gemv_rows<T, R, DecBF16>: 2 bytes a weight, 4 lines a block
//   kI8    gemv_rows<T, R, DecI8>: 1 byte a weight (int8 -> f32), 2 lines a block
//   kFp8   fp8_rows<T, R, NA = 1>: 64 codes per load, the bit-move decode to f16 and vcvtph2ps, the
//          NaN-code byte maxima (x taken in plain order: the bandwidth does not care)
enum Fmt { kBf16, kI8, kFp8 };
template <Fmt F>
constexpr int64_t kEsize = F == kBf16 ? 2 : 1;

// Fb: a whole 128-column block as a loop of constant trip count (unrolled whole), the generic
// loop only for a row's last, partial block (main's gemv_rows: the generic loop for every block).
// Clamp: no request past the chunk's last row (r1: the rows after it are another chunk's, maybe
// another thread's).
template <Fmt F, int T, int R, int64_t Near, int64_t Far, int Fb = 0, bool Clamp = false>
void rows_gen(const float* x, const Mat& m, int64_t r, float* y, int64_t r1 = 0) {
  constexpr int64_t es = kEsize<F>;
  const int64_t K = m.k, rowb = K * es;
  const char* wr[R];
  for (int i = 0; i < R; ++i) wr[i] = reinterpret_cast<const char*>(m.w) + (r + i) * rowb;
  __m512 acc[T][R];
  for (auto& a : acc)
    for (auto& v : a) v = _mm512_setzero_ps();
  __m512i maxu = _mm512_setzero_si512(), maxs = maxu;
  const char* end = reinterpret_cast<const char*>(m.w) + r1 * rowb;
  auto request = [&](int64_t at, auto loc) __attribute__((always_inline)) {
    const int64_t a = at < rowb ? at : at + (R - 1) * rowb;
    if (Clamp && wr[0] + a >= end) return;  // (row 0's request is the nearest)
    for (int i = 0; i < R; ++i)
      for (int64_t off = 0; off < 128 * es; off += 64) __builtin_prefetch(wr[i] + a + off, 0, decltype(loc)::value);
  };
  for (int64_t b0 = 0; b0 < K; b0 += 128) {
    if constexpr (Near > 0) request(b0 * es + Near, std::integral_constant<int, 3>{});
    if constexpr (Far > 0) request(b0 * es + Far, std::integral_constant<int, 2>{});
    const int64_t bend = std::min(K, b0 + 128);
    if constexpr (F == kFp8) {
      for (int64_t k = b0; k + 64 <= bend; k += 64) {
        __m512i h[2][R];
        for (int i = 0; i < R; ++i) {
          const __m512i v = _mm512_loadu_si512(wr[i] + k);
          maxu = _mm512_max_epu8(maxu, v);
          maxs = _mm512_max_epi8(maxs, v);
          h[0][i] = _mm512_and_si512(_mm512_srai_epi16(_mm512_slli_epi16(v, 8), 1), _mm512_set1_epi16(static_cast<short>(0xbf80)));
          h[1][i] = _mm512_and_si512(_mm512_srai_epi16(v, 1), _mm512_set1_epi16(static_cast<short>(0xbf80)));
        }
        for (int q = 0; q < 4; ++q) {
          __m512 wv[R];
          for (int i = 0; i < R; ++i)
            wv[i] = _mm512_cvtph_ps(q % 2 ? _mm512_extracti64x4_epi64(h[q / 2][i], 1) : _mm512_castsi512_si256(h[q / 2][i]));
          for (int t = 0; t < T; ++t) {
            const __m512 xv = _mm512_loadu_ps(x + t * K + k + 16 * q);
            for (int i = 0; i < R; ++i) acc[t][i] = _mm512_fmadd_ps(xv, wv[i], acc[t][i]);
          }
        }
      }
    } else {
      auto step = [&](int64_t k) __attribute__((always_inline)) {
        __m512 wv[R];
        for (int i = 0; i < R; ++i) {
          if constexpr (F == kBf16)
            wv[i] = _mm512_castsi512_ps(_mm512_slli_epi32(
                _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wr[i] + 2 * k))), 16));
          else
            wv[i] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wr[i] + k))));
        }
        for (int t = 0; t < T; ++t) {
          const __m512 xv = _mm512_loadu_ps(x + t * K + k);
          for (int i = 0; i < R; ++i) acc[t][i] = _mm512_fmadd_ps(xv, wv[i], acc[t][i]);
        }
      };
      if (Fb == 8 && bend - b0 == 128) {
#pragma GCC unroll 8
        for (int u = 0; u < 8; ++u) step(b0 + 16 * u);
      } else if (Fb == 4 && bend - b0 == 128) {
#pragma GCC unroll 4
        for (int u = 0; u < 8; ++u) step(b0 + 16 * u);
      } else if (Fb == 1 && bend - b0 == 128) {
#pragma GCC unroll 1
        for (int u = 0; u < 8; ++u) step(b0 + 16 * u);
      } else {
#pragma GCC unroll 4
        for (int64_t k = b0; k + 16 <= bend; k += 16) step(k);
      }
    }
  }
  const bool nan = _mm512_cmpeq_epi8_mask(maxu, _mm512_set1_epi8(-1)) == 1 && _mm512_cmpeq_epi8_mask(maxs, _mm512_set1_epi8(0x7f)) == 1;
  for (int i = 0; i < R; ++i) {
    float s = nan ? 1.0f : 0.0f;
    for (int t = 0; t < T; ++t) s += _mm512_reduce_add_ps(acc[t][i]);
    y[r + i] = s;
  }
}

// Session 15 (short rows): linear_vec.h's bf16 GEMV (the generic unroll-4 loop per 128-column
// block) with Cont: the pass's R rows (contiguous: R * K * 2 bytes) requested as ONE stream, per
// block the pass's next R * 256 bytes Near / Far ahead of the pass's progress through its bytes
// (instead of each row's block ahead in its own row); Hs: the R rows' sums by one transposed
// reduction per 4 rows (simd.h's hsum4) instead of R reduce_adds.
inline __m128 hsum4_512(__m512 a0, __m512 a1, __m512 a2, __m512 a3) {
  const __m512 t0 = _mm512_add_ps(_mm512_unpacklo_ps(a0, a1), _mm512_unpackhi_ps(a0, a1));
  const __m512 t1 = _mm512_add_ps(_mm512_unpacklo_ps(a2, a3), _mm512_unpackhi_ps(a2, a3));
  const __m512 u = _mm512_add_ps(_mm512_shuffle_ps(t0, t1, _MM_SHUFFLE(1, 0, 1, 0)), _mm512_shuffle_ps(t0, t1, _MM_SHUFFLE(3, 2, 3, 2)));
  const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(u), _mm512_extractf32x8_ps(u, 1));
  return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}
template <int T, int R, int64_t Near, int64_t Far, bool Cont, bool Hs, int NA = 1>
void rows_short(const float* x, const Mat& m, int64_t r, float* y) {
  const int64_t K = m.k, rowb = K * 2;
  const char* wr[R];
  for (int i = 0; i < R; ++i) wr[i] = reinterpret_cast<const char*>(m.w) + (r + i) * rowb;
  __m512 acc[NA][T][R];
  for (auto& b : acc)
    for (auto& a : b)
      for (auto& v : a) v = _mm512_setzero_ps();
  auto request = [&](int64_t b0, int64_t dist, auto loc) __attribute__((always_inline)) {
    if constexpr (Cont) {
      const char* p = wr[0] + b0 * 2 * R + dist;
      for (int64_t off = 0; off < 256 * R; off += 64) __builtin_prefetch(p + off, 0, decltype(loc)::value);
    } else {
      const int64_t at = b0 * 2 + dist, a = at < rowb ? at : at + (R - 1) * rowb;
      for (int i = 0; i < R; ++i)
        for (int64_t off = 0; off < 256; off += 64) __builtin_prefetch(wr[i] + a + off, 0, decltype(loc)::value);
    }
  };
  int u = 0;
  for (int64_t b0 = 0; b0 < K; b0 += 128) {
    if constexpr (Near > 0) request(b0, Near, std::integral_constant<int, 3>{});
    if constexpr (Far > 0) request(b0, Far, std::integral_constant<int, 2>{});
    const int64_t bend = std::min(K, b0 + 128);
    auto step = [&](int64_t k, int a) __attribute__((always_inline)) {
      __m512 wv[R];
      for (int i = 0; i < R; ++i)
        wv[i] = _mm512_castsi512_ps(_mm512_slli_epi32(
            _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wr[i] + 2 * k))), 16));
      for (int t = 0; t < T; ++t) {
        const __m512 xv = _mm512_loadu_ps(x + t * K + k);
        for (int i = 0; i < R; ++i) acc[a][t][i] = _mm512_fmadd_ps(xv, wv[i], acc[a][t][i]);
      }
    };
    if constexpr (NA == 1) {
#pragma GCC unroll 4
      for (int64_t k = b0; k + 16 <= bend; k += 16) step(k, 0);
    } else {
#pragma GCC unroll 4
      for (int64_t k = b0; k + 16 <= bend; k += 16, ++u) step(k, u % NA);
    }
  }
  for (int a = 1; a < NA; ++a)
    for (int t = 0; t < T; ++t)
      for (int i = 0; i < R; ++i) acc[0][t][i] = _mm512_add_ps(acc[0][t][i], acc[a][t][i]);
  if constexpr (Hs && R % 4 == 0) {
    __m128 s[R / 4];
    for (int j = 0; j < R / 4; ++j) s[j] = _mm_setzero_ps();
    for (int t = 0; t < T; ++t)
      for (int j = 0; j < R / 4; ++j)
        s[j] = _mm_add_ps(s[j], hsum4_512(acc[0][t][4 * j], acc[0][t][4 * j + 1], acc[0][t][4 * j + 2], acc[0][t][4 * j + 3]));
    for (int j = 0; j < R / 4; ++j) _mm_storeu_ps(y + r + 4 * j, s[j]);
  } else {
    for (int i = 0; i < R; ++i) {
      float s = 0;
      for (int t = 0; t < T; ++t) s += _mm512_reduce_add_ps(acc[0][t][i]);
      y[r + i] = s;
    }
  }
}

template <int T, int R, int64_t Near, int64_t Far, bool Cont, bool Hs, int NA = 1>
void short_chunk(const float* x, const Mat& m, int64_t r0, int64_t r1, float* y) {
  int64_t r = r0;
  for (; r + R <= r1; r += R) rows_short<T, R, Near, Far, Cont, Hs, NA>(x, m, r, y);
  for (; r < r1; ++r) rows_short<T, 1, Near, Far, false, false, NA>(x, m, r, y);
}

// Session 15: the bf16 weights decoded in their lanes (a 64-byte load of 32 weights: the even ones
// (w << 16) and the odd ones (w & 0xffff0000) as f32, no lane-crossing vpmovzxwd), x taken in
// matching even / odd order (xeo: per 32 columns the 16 even x then the 16 odd, prepared once per
// call in the kernel; here once per run). R rows per pass, NA accumulator chains per row; the
// prefetch as rows_short's (Cont: the pass as one stream).
std::vector<float> g_xeo;
template <int R, int NA, int64_t Near, int64_t Far, bool Cont, bool Hs, bool Ins = false>
void rows_eo(const float*, const Mat& m, int64_t r, float* y) {
  const int64_t K = m.k, rowb = K * 2;
  const float* x = g_xeo.data();
  const char* wr[R];
  for (int i = 0; i < R; ++i) wr[i] = reinterpret_cast<const char*>(m.w) + (r + i) * rowb;
  __m512 acc[NA][R];
  for (auto& a : acc)
    for (auto& v : a) v = _mm512_setzero_ps();
  auto request = [&](int64_t b0, int64_t dist, auto loc) __attribute__((always_inline)) {
    if constexpr (Cont) {
      const char* p = wr[0] + b0 * 2 * R + dist;
      for (int64_t off = 0; off < 256 * R; off += 64) __builtin_prefetch(p + off, 0, decltype(loc)::value);
    } else {
      const int64_t at = b0 * 2 + dist, a = at < rowb ? at : at + (R - 1) * rowb;
      for (int i = 0; i < R; ++i)
        for (int64_t off = 0; off < 256; off += 64) __builtin_prefetch(wr[i] + a + off, 0, decltype(loc)::value);
    }
  };
  const __m512i hi = _mm512_set1_epi32(static_cast<int>(0xffff0000u));
  for (int64_t b0 = 0; b0 < K; b0 += 128) {
    if constexpr (Near > 0) request(b0, Near, std::integral_constant<int, 3>{});
    if constexpr (Far > 0) request(b0, Far, std::integral_constant<int, 2>{});
    const int64_t bend = std::min(K, b0 + 128);
    int u = 0;
#pragma GCC unroll 4
    for (int64_t k = b0; k + 32 <= bend; k += 32, ++u) {
      __m512 we[R], wo[R];
      for (int i = 0; i < R; ++i) {
        const __m512i v = Ins ? _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wr[i] + 2 * k))),
                                                   _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wr[i] + 2 * k + 32)), 1)
                              : _mm512_loadu_si512(wr[i] + 2 * k);
        we[i] = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
        wo[i] = _mm512_castsi512_ps(_mm512_and_si512(v, hi));
      }
      const __m512 xe = _mm512_loadu_ps(x + k), xo = _mm512_loadu_ps(x + k + 16);
      for (int i = 0; i < R; ++i) {
        acc[(2 * u) % NA][i] = _mm512_fmadd_ps(xe, we[i], acc[(2 * u) % NA][i]);
        acc[(2 * u + 1) % NA][i] = _mm512_fmadd_ps(xo, wo[i], acc[(2 * u + 1) % NA][i]);
      }
    }
  }
  for (int a = 1; a < NA; ++a)
    for (int i = 0; i < R; ++i) acc[0][i] = _mm512_add_ps(acc[0][i], acc[a][i]);
  if constexpr (Hs && R % 4 == 0) {
    for (int j = 0; j < R / 4; ++j)
      _mm_storeu_ps(y + r + 4 * j, hsum4_512(acc[0][4 * j], acc[0][4 * j + 1], acc[0][4 * j + 2], acc[0][4 * j + 3]));
  } else {
    for (int i = 0; i < R; ++i) y[r + i] = _mm512_reduce_add_ps(acc[0][i]);
  }
}
template <int R, int NA, int64_t Near, int64_t Far, bool Cont, bool Hs, bool Ins = false>
void eo_chunk(const float* x, const Mat& m, int64_t r0, int64_t r1, float* y) {
  int64_t r = r0;
  for (; r + R <= r1; r += R) rows_eo<R, NA, Near, Far, Cont, Hs, Ins>(x, m, r, y);
  for (; r < r1; ++r) rows_eo<1, NA, Near, Far, false, false, Ins>(x, m, r, y);
}

template <Fmt F, int T, int R, int64_t Near, int64_t Far, int Fb = 0, bool Clamp = false>
void gen_chunk(const float* x, const Mat& m, int64_t r0, int64_t r1, float* y) {
  int64_t r = r0;
  for (; r + R <= r1; r += R) rows_gen<F, T, R, Near, Far, Fb, Clamp>(x, m, r, y, r1);
  for (; r < r1; ++r) rows_gen<F, T, 1, Near, Far, Fb, Clamp>(x, m, r, y, r1);
}

template <int R, int NA, Pf P, int64_t Dist, int Hint, int64_t Far = 0, int FarHint = 1>
void gemv_chunk(const float* x, const Mat& m, int64_t r0, int64_t r1, float* y) {
  int64_t r = r0;
  for (; r + R <= r1; r += R) rows_bf16<R, NA, P, Dist, Hint, Far, FarHint>(x, m, r, y);
  for (; r < r1; ++r) rows_bf16<1, NA, P, Dist, Hint, Far, FarHint>(x, m, r, y);
}

// R = 8 row streams where a row is at most 2 KiB, else 4 (each pass's streams span 4 or more
// 4 KiB pages). Chunks are cut at multiples of 8 rows (a multiple of 4 too).
template <Pf P>
void adaptive_chunk(const float* x, const Mat& m, int64_t r0, int64_t r1, float* y) {
  if (m.k * 2 <= 2048)
    gemv_chunk<8, 1, P, 2048, 0>(x, m, r0, r1, y);
  else
    gemv_chunk<4, 1, P, 2048, 0>(x, m, r0, r1, y);
}

// read_sum's loop (linear.h), with an optional software prefetch Dist bytes ahead, over the
// matrix's bytes at Es bytes a weight.
template <int64_t Dist, int64_t Es = 2>
void probe_chunk(const float*, const Mat& m, int64_t r0, int64_t r1, float* y) {
  const __m512i* p = reinterpret_cast<const __m512i*>(reinterpret_cast<const char*>(m.w) + r0 * m.k * Es);
  const int64_t lines = (r1 - r0) * m.k * Es / 64;
  __m512i s0 = _mm512_setzero_si512(), s1 = s0, s2 = s0, s3 = s0;
  int64_t i = 0;
  for (; i + 4 <= lines; i += 4) {
    if constexpr (Dist > 0) {
      _mm_prefetch(reinterpret_cast<const char*>(p + i) + Dist, _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(p + i) + Dist + 64, _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(p + i) + Dist + 128, _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(p + i) + Dist + 192, _MM_HINT_T0);
    }
    s0 = _mm512_add_epi64(s0, _mm512_loadu_si512(p + i));
    s1 = _mm512_add_epi64(s1, _mm512_loadu_si512(p + i + 1));
    s2 = _mm512_add_epi64(s2, _mm512_loadu_si512(p + i + 2));
    s3 = _mm512_add_epi64(s3, _mm512_loadu_si512(p + i + 3));
  }
  y[r0] = static_cast<float>(_mm512_reduce_add_epi64(_mm512_add_epi64(_mm512_add_epi64(s0, s1), _mm512_add_epi64(s2, s3))));
}

using Chunk = void (*)(const float*, const Mat&, int64_t, int64_t, float*);
struct Variant {
  const char* name;
  Chunk fn;
  int rows;        // rows per pass (chunks are cut at multiples)
  int esize = 2;   // bytes per weight (the matrices' first n k esize bytes are read)
};

// ---- the pool --------------------------------------------------------------------------------

struct Pool {
  int threads;
  std::atomic<int64_t> ticket{0};
  std::atomic<int> done{0};
  std::atomic<int64_t> epoch{0};
  std::atomic<bool> quit{false};
  const Mat* mat = nullptr;
  int64_t chunks = 0, unit = 1;
  Chunk fn = nullptr;
  const float* x = nullptr;
  float* y = nullptr;
  std::vector<std::thread> workers;

  explicit Pool(int t) : threads(t) {
    for (int i = 1; i < t; ++i)
      workers.emplace_back([this] {
        int64_t seen = 0;
        for (;;) {
          int64_t e;
          while ((e = epoch.load(std::memory_order_acquire)) == seen)
            if (quit.load()) return;
          seen = e;
          work();
          done.fetch_add(1, std::memory_order_release);
        }
      });
  }
  ~Pool() {
    quit = true;
    for (auto& w : workers) w.join();
  }
  void work() {
    const int64_t n = (mat->n + unit - 1) / unit;
    for (int64_t c; (c = ticket.fetch_add(1)) < chunks;) {
      const int64_t b = n * c / chunks * unit, e = std::min(mat->n, n * (c + 1) / chunks * unit);
      if (b < e) fn(x, *mat, b, e, y);
    }
  }
  // One GEMV: chunking as parallel_for(ceil(n / unit), grain) with grain = 64 KiB of rows / unit.
  void run(const Mat& m, Chunk f, int rows, int esize, const float* xv, float* yv) {
    mat = &m;
    fn = f;
    unit = rows;
    x = xv;
    y = yv;
    const int64_t n = (m.n + rows - 1) / rows, grain = std::max<int64_t>(1, 65536 / (m.k * esize) / rows);
    chunks = std::min<int64_t>((n + grain - 1) / grain, 4 * threads);
    ticket = 0;
    done = 0;
    epoch.fetch_add(1, std::memory_order_release);
    work();
    while (done.load(std::memory_order_acquire) < threads - 1) _mm_pause();
  }
};

uint16_t* alloc_bf16(int64_t count, bool huge) {
  const size_t bytes = (count * 2 + 4096 + 4095) / 4096 * 4096;
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    perror("mmap");
    exit(1);
  }
  madvise(p, bytes, huge ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
  // $GEMV_MISALIGN=B: the matrix starts B bytes into its pages (a safetensors shard's tensors
  // start wherever its header ends: e.g. 32 bytes past a line)
  uint16_t* w = static_cast<uint16_t*>(p) + (getenv("GEMV_MISALIGN") ? atoi(getenv("GEMV_MISALIGN")) / 2 : 0);
  uint32_t s = 12345u + static_cast<uint32_t>(count);
  for (int64_t i = 0; i < count; ++i) {
    s = s * 1664525u + 1013904223u;
    w[i] = static_cast<uint16_t>(0x3c00 | (s >> 24 & 0xff) | (s >> 16 & 0x8000));  // +-(2^-7 .. 2^-6)
  }
  return w;
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 2, rounds = 7;
  bool huge = false;
  int nset = 0;  // rotate through only the first nset matrices (cache-resident: the compute ceiling)
  const char* file = nullptr;  // the matrices carved from this file's mapped pages (page cache, 4 KiB)
  double gap_us = 0;           // the master alone between two GEMVs (a serial op of the step), workers spinning
  std::string only, ref = "cur", preset = "medium";
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--threads" && i + 1 < argc) threads = atoi(argv[++i]);
    else if (a == "--rounds" && i + 1 < argc) rounds = atoi(argv[++i]);
    else if (a == "--huge") huge = true;
    else if (a == "--set" && i + 1 < argc) nset = atoi(argv[++i]);
    else if (a == "--file" && i + 1 < argc) file = argv[++i];
    else if (a == "--gap-us" && i + 1 < argc) gap_us = atof(argv[++i]);
    else if (a == "--only" && i + 1 < argc) only = "," + std::string(argv[++i]) + ",";
    else if (a == "--ref" && i + 1 < argc) ref = argv[++i];
    else if (a == "--preset" && i + 1 < argc) preset = argv[++i];
    else {
      fprintf(stderr, "usage: %s [--threads N] [--rounds N] [--huge] [--set N] [--file F] [--gap-us U] [--only a,b] [--ref v] [--preset medium|small]\n", argv[0]);
      return 2;
    }
  }

  // medium: hidden 1024, ffn 2048, q_lora 384, kv_lora 256 + rope 32, 16 heads x (64 + 32) q, 16 x 64 v;
  // small: hidden 512, ffn 1024, q_lora 256, kv_lora 128 + rope 16, 8 heads x (32 + 16) q, 8 x 32 v
  // (rows of 512 B - 2 KiB in bf16).
  std::vector<std::pair<int64_t, int64_t>> shapes;
  const bool small = preset == "small";
  const int nlayers = getenv("GEMV_LAYERS") ? atoi(getenv("GEMV_LAYERS")) : small ? 8 : 16;  // (session 15: small x 64 = cold)
  for (int l = 0; l < nlayers; ++l)
    for (auto s : small ? std::vector<std::pair<int64_t, int64_t>>{{256, 512}, {144, 512}, {384, 256}, {512, 256}, {1024, 512}, {1024, 512}, {512, 1024}}
                        : std::vector<std::pair<int64_t, int64_t>>{
                              {384, 1024}, {288, 1024}, {1536, 384}, {1024, 1024}, {2048, 1024}, {2048, 1024}, {1024, 2048}})
      shapes.push_back(s);
  shapes.push_back(small ? std::pair<int64_t, int64_t>{4096, 512} : std::pair<int64_t, int64_t>{32768, 1024});
  if (nset > 0) shapes.resize(nset);
  std::vector<Mat> mats;
  int64_t bytes = 0, kmax = 0;
  const uint16_t* mapped = nullptr;
  size_t mapped_bytes = 0;
  if (file) {
    const int fd = open(file, O_RDONLY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
      perror(file);
      return 1;
    }
    mapped_bytes = st.st_size;
    void* p = mmap(nullptr, mapped_bytes, PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
      perror("mmap");
      return 1;
    }
    mapped = static_cast<const uint16_t*>(p);
  }
  for (auto [n, k] : shapes) {
    if (mapped) {  // 64-byte aligned, one after the other (bits as bf16: bandwidth does not care)
      const int64_t off = (bytes + 63) / 64 * 64;
      if (off + n * k * 2 > static_cast<int64_t>(mapped_bytes)) {
        fprintf(stderr, "--file: too small\n");
        return 1;
      }
      mats.push_back({n, k, const_cast<uint16_t*>(mapped + off / 2)});
      bytes = off;
    } else {
      mats.push_back({n, k, alloc_bf16(n * k, huge)});
    }
    bytes += n * k * 2;
    kmax = std::max(kmax, k);
  }
  std::vector<float> x(8 * kmax), y(32768);  // up to 8 x rows (x row t at t k)
  for (int64_t i = 0; i < 8 * kmax; ++i) x[i] = 0.001f * static_cast<float>(i % 97) - 0.05f;
  g_xeo.resize(kmax + 32);  // (rows_eo: x in even / odd order per 32 columns; values do not matter here)
  for (int64_t i = 0; i < kmax; ++i) g_xeo[i] = x[(i / 32) * 32 + (i % 32 < 16 ? 2 * (i % 16) : 2 * (i % 16) + 1)];
  int64_t weights = 0;  // elements; a variant reads weights x its esize bytes
  for (const Mat& m : mats) weights += m.n * m.k;

#define GEN(F, name, T, R, Near, Far) {name, gen_chunk<F, T, R, Near, Far>, R, static_cast<int>(kEsize<F>)}
#define GENFB4(F, name, T, R, Near, Far) {name, gen_chunk<F, T, R, Near, Far, 4>, R, static_cast<int>(kEsize<F>)}
#define GENFB1(F, name, T, R, Near, Far) {name, gen_chunk<F, T, R, Near, Far, 1>, R, static_cast<int>(kEsize<F>)}
#define GENCL(F, name, T, R, Near, Far) {name, gen_chunk<F, T, R, Near, Far, 0, true>, R, static_cast<int>(kEsize<F>)}
#define GENFB(F, name, T, R, Near, Far) {name, gen_chunk<F, T, R, Near, Far, 8>, R, static_cast<int>(kEsize<F>)}
  const std::vector<Variant> all = {
      // session 15: short rows (rows_short): sh<T>r<R>[_c: one stream][_h: hsum4][_a<NA>]_n<near>_f<far>
      {"sh1r4_n512_f8192", short_chunk<1, 4, 512, 8192, false, false>, 4},
      // eo<R>a<NA>[_c][_h]_n<near>_f<far>: rows_eo
      {"eo4a1_n512_f8192", eo_chunk<4, 1, 512, 8192, false, false>, 4},
      {"eo4a1_h_n512_f8192", eo_chunk<4, 1, 512, 8192, false, true>, 4},
      {"eo4a2_h_n512_f8192", eo_chunk<4, 2, 512, 8192, false, true>, 4},
      {"eo4a1_ch_n512_f8192", eo_chunk<4, 1, 512, 8192, true, true>, 4},
      {"eo4a1_h_n0_f8192", eo_chunk<4, 1, 0, 8192, false, true>, 4},
      {"eo8a1_h_n512_f8192", eo_chunk<8, 1, 512, 8192, false, true>, 8},
      {"eo4a1_n0_f8192", eo_chunk<4, 1, 0, 8192, false, false>, 4},
      {"eoi4a1_h_n512_f8192", eo_chunk<4, 1, 512, 8192, false, true, true>, 4},
      {"eoi4a1_h_n0_f8192", eo_chunk<4, 1, 0, 8192, false, true, true>, 4},
      {"eo4a1_h_n0_f4096", eo_chunk<4, 1, 0, 4096, false, true>, 4},
      {"eo4a1_h_n0_f12288", eo_chunk<4, 1, 0, 12288, false, true>, 4},
      {"eo4a1_h_n0_f16384", eo_chunk<4, 1, 0, 16384, false, true>, 4},
      {"eo4a1_ch_n0_f8192", eo_chunk<4, 1, 0, 8192, true, true>, 4},
      {"eo8a1_h_n0_f8192", eo_chunk<8, 1, 0, 8192, false, true>, 8},
      {"eo4a2_h_n0_f8192", eo_chunk<4, 2, 0, 8192, false, true>, 4},
      {"eo4a1_h_n256_f8192", eo_chunk<4, 1, 256, 8192, false, true>, 4},
      {"eo4a1_h_n0_f0", eo_chunk<4, 1, 0, 0, false, true>, 4},
      {"eo1a4_n0_f0", eo_chunk<1, 4, 0, 0, false, false>, 1},
      {"eo1a4_n512_f8192", eo_chunk<1, 4, 512, 8192, false, false>, 1},
      {"eo1a8_n0_f8192", eo_chunk<1, 8, 0, 8192, false, false>, 1},
      {"eo2a4_n512_f8192", eo_chunk<2, 4, 512, 8192, false, false>, 2},
      {"sh1r4_h_n512_f8192", short_chunk<1, 4, 512, 8192, false, true>, 4},
      {"sh1r4_c_n512_f8192", short_chunk<1, 4, 512, 8192, true, false>, 4},
      {"sh1r4_ch_n512_f8192", short_chunk<1, 4, 512, 8192, true, true>, 4},
      {"sh1r4_c_n2048_f8192", short_chunk<1, 4, 2048, 8192, true, false>, 4},
      {"sh1r4_c_n1024_f16384", short_chunk<1, 4, 1024, 16384, true, false>, 4},
      {"sh1r4_c_n0_f8192", short_chunk<1, 4, 0, 8192, true, false>, 4},
      {"sh1r8_n512_f8192", short_chunk<1, 8, 512, 8192, false, false>, 8},
      {"sh1r8_h_n512_f8192", short_chunk<1, 8, 512, 8192, false, true>, 8},
      {"sh1r8_ch_n512_f8192", short_chunk<1, 8, 512, 8192, true, true>, 8},
      {"sh1r8_ch_n1024_f8192", short_chunk<1, 8, 1024, 8192, true, true>, 8},
      {"sh1r4_a2_n512_f8192", short_chunk<1, 4, 512, 8192, false, false, 2>, 4},
      {"sh1r4_cha2_n512_f8192", short_chunk<1, 4, 512, 8192, true, true, 2>, 4},
      {"sh2r4_n512_f8192", short_chunk<2, 4, 512, 8192, false, false>, 4},
      {"sh2r4_ch_n512_f8192", short_chunk<2, 4, 512, 8192, true, true>, 4},
      {"sh2r8_ch_n512_f8192", short_chunk<2, 8, 512, 8192, true, true>, 8},
      {"probe", probe_chunk<0>, 1},
      {"probe_pf2k", probe_chunk<2048>, 1},
      // main since session 13: the block's lines 2 KiB ahead into L1 and 8 KiB ahead into L2
      {"cur", gemv_chunk<4, 1, Pf::kBlock, 2048, 0, 8192, 1>, 4},
      {"nofar", gemv_chunk<4, 1, Pf::kBlock, 2048, 0>, 4},
      {"far4k", gemv_chunk<4, 1, Pf::kBlock, 2048, 0, 4096, 1>, 4},
      {"far6k", gemv_chunk<4, 1, Pf::kBlock, 2048, 0, 6144, 1>, 4},
      {"far12k", gemv_chunk<4, 1, Pf::kBlock, 2048, 0, 12288, 1>, 4},
      {"far16k", gemv_chunk<4, 1, Pf::kBlock, 2048, 0, 16384, 1>, 4},
      {"far24k", gemv_chunk<4, 1, Pf::kBlock, 2048, 0, 24576, 1>, 4},
      {"far32k", gemv_chunk<4, 1, Pf::kBlock, 2048, 0, 32768, 1>, 4},
      {"far8k_t2", gemv_chunk<4, 1, Pf::kBlock, 2048, 0, 8192, 2>, 4},
      {"far8k_t0", gemv_chunk<4, 1, Pf::kBlock, 2048, 0, 8192, 0>, 4},
      {"faronly8k", gemv_chunk<4, 1, Pf::kNone, 2048, 0, 8192, 1>, 4},
      {"faronly4k", gemv_chunk<4, 1, Pf::kNone, 2048, 0, 4096, 1>, 4},
      {"near1k_far8k", gemv_chunk<4, 1, Pf::kBlock, 1024, 0, 8192, 1>, 4},
      {"near4k_far16k", gemv_chunk<4, 1, Pf::kBlock, 4096, 0, 16384, 1>, 4},
      {"r2_far8k", gemv_chunk<2, 1, Pf::kBlock, 2048, 0, 8192, 1>, 2},
      {"r2_far16k", gemv_chunk<2, 1, Pf::kBlock, 2048, 0, 16384, 1>, 2},
      {"r8_far8k", gemv_chunk<8, 1, Pf::kBlock, 2048, 0, 8192, 1>, 8},
      {"r8_far16k", gemv_chunk<8, 1, Pf::kBlock, 2048, 0, 16384, 1>, 8},
      {"r1a4_far8k", gemv_chunk<1, 4, Pf::kBlock, 2048, 0, 8192, 1>, 1},
      {"faronly2k", gemv_chunk<4, 1, Pf::kNone, 2048, 0, 2048, 1>, 4},
      {"faronly3k", gemv_chunk<4, 1, Pf::kNone, 2048, 0, 3072, 1>, 4},
      {"faronly6k", gemv_chunk<4, 1, Pf::kNone, 2048, 0, 6144, 1>, 4},
      {"faronly16k", gemv_chunk<4, 1, Pf::kNone, 2048, 0, 16384, 1>, 4},
      {"faronly4k_t2", gemv_chunk<4, 1, Pf::kNone, 2048, 0, 4096, 2>, 4},
      {"near512_far8k", gemv_chunk<4, 1, Pf::kBlock, 512, 0, 8192, 1>, 4},
      {"near1k_far4k", gemv_chunk<4, 1, Pf::kBlock, 1024, 0, 4096, 1>, 4},
      {"r1a4_faronly4k", gemv_chunk<1, 4, Pf::kNone, 2048, 0, 4096, 1>, 1},
      {"r1a4_faronly8k", gemv_chunk<1, 4, Pf::kNone, 2048, 0, 8192, 1>, 1},
      {"r1a4_far16k", gemv_chunk<1, 4, Pf::kBlock, 2048, 0, 16384, 1>, 1},
      {"r2_faronly4k", gemv_chunk<2, 1, Pf::kNone, 2048, 0, 4096, 1>, 2},
      {"near256_far8k", gemv_chunk<4, 1, Pf::kBlock, 256, 0, 8192, 1>, 4},
      {"near768_far8k", gemv_chunk<4, 1, Pf::kBlock, 768, 0, 8192, 1>, 4},
      {"near512_far6k", gemv_chunk<4, 1, Pf::kBlock, 512, 0, 6144, 1>, 4},
      {"near512_far12k", gemv_chunk<4, 1, Pf::kBlock, 512, 0, 12288, 1>, 4},
      {"near512_far16k", gemv_chunk<4, 1, Pf::kBlock, 512, 0, 16384, 1>, 4},
      {"near512_far8k_t2", gemv_chunk<4, 1, Pf::kBlock, 512, 0, 8192, 2>, 4},
      {"r2_near512_far8k", gemv_chunk<2, 1, Pf::kBlock, 512, 0, 8192, 1>, 2},
      {"nopf", gemv_chunk<4, 1, Pf::kNone, 2048, 0>, 4},
      {"t1", gemv_chunk<4, 1, Pf::kBlock, 2048, 1>, 4},
      {"t2", gemv_chunk<4, 1, Pf::kBlock, 2048, 2>, 4},
      {"nta", gemv_chunk<4, 1, Pf::kBlock, 2048, 3>, 4},
      {"line", gemv_chunk<4, 1, Pf::kLine, 2048, 0>, 4},
      {"line_t1", gemv_chunk<4, 1, Pf::kLine, 2048, 1>, 4},
      {"line1k", gemv_chunk<4, 1, Pf::kLine, 1024, 0>, 4},
      {"line4k", gemv_chunk<4, 1, Pf::kLine, 4096, 0>, 4},
      {"r1a4", gemv_chunk<1, 4, Pf::kBlock, 2048, 0>, 1},
      {"r1a4_line", gemv_chunk<1, 4, Pf::kLine, 2048, 0>, 1},
      {"r1a4_4k", gemv_chunk<1, 4, Pf::kLine, 4096, 0>, 1},
      {"r1a4_nopf", gemv_chunk<1, 4, Pf::kNone, 2048, 0>, 1},
      {"r2a2", gemv_chunk<2, 2, Pf::kBlock, 2048, 0>, 2},
      {"r2a2_line", gemv_chunk<2, 2, Pf::kLine, 2048, 0>, 2},
      {"r4a2", gemv_chunk<4, 2, Pf::kBlock, 2048, 0>, 4},
      {"line1.5k", gemv_chunk<4, 1, Pf::kLine, 1536, 0>, 4},
      {"line3k", gemv_chunk<4, 1, Pf::kLine, 3072, 0>, 4},
      {"stagger", gemv_chunk<4, 1, Pf::kStagger, 2048, 0>, 4},
      {"r8_line", gemv_chunk<8, 1, Pf::kLine, 2048, 0>, 8},
      {"r8", gemv_chunk<8, 1, Pf::kBlock, 2048, 0>, 8},
      {"r8x", adaptive_chunk<Pf::kBlock>, 8},
      {"r8x_line", adaptive_chunk<Pf::kLine>, 8},
      {"r2_line", gemv_chunk<2, 1, Pf::kLine, 2048, 0>, 2},
      {"r2_line4k", gemv_chunk<2, 1, Pf::kLine, 4096, 0>, 2},
      {"r1_line4k", gemv_chunk<1, 1, Pf::kLine, 4096, 0>, 1},
      {"r1a1_line4k", gemv_chunk<1, 1, Pf::kLine, 4096, 0>, 1},
      {"r1a1_nopf", gemv_chunk<1, 1, Pf::kNone, 2048, 0>, 1},
      {"r1a4_8k", gemv_chunk<1, 4, Pf::kLine, 8192, 0>, 1},
      {"s1", row1_chunk<1, 0>, 1},
      {"s1_2k", row1_chunk<1, 2048>, 1},
      {"s1_4k", row1_chunk<1, 4096>, 1},
      {"s2", row1_chunk<2, 0>, 1},
      {"s2_2k", row1_chunk<2, 2048>, 1},
      {"s2_4k", row1_chunk<2, 4096>, 1},
      {"s2_blk", row1_chunk<2, 2048, true>, 1},
      {"s4", row1_chunk<4, 0>, 1},
      {"s4_2k", row1_chunk<4, 2048>, 1},
      {"s4_4k", row1_chunk<4, 4096>, 1},
      // linear_vec.h's kernels per format and x rows (rows_gen): <fmt>t<T>_n<near>_f<far>; main
      // (306fe8d): bf16 t = 1 n512_f8192, bf16 t >= 2 and int8 n2048_f8192, fp8 n1536_f8192
      {"probe1", probe_chunk<0, 1>, 1, 1},
      GENCL(kBf16, "bf16t1_n512_f8192_cl", 1, 4, 512, 8192),
      GENCL(kBf16, "bf16t1_n512_f16384_cl", 1, 4, 512, 16384),
      GENCL(kI8, "i8t1_n512_f8192_cl", 1, 4, 512, 8192),
      GENFB4(kBf16, "bf16t1_n2048_f8192_fb4", 1, 4, 2048, 8192),
      GENFB1(kBf16, "bf16t1_n2048_f8192_fb1", 1, 4, 2048, 8192),
      GENFB4(kBf16, "bf16t1_n512_f8192_fb4", 1, 4, 512, 8192),
      GENFB1(kBf16, "bf16t1_n512_f8192_fb1", 1, 4, 512, 8192),
      GENFB4(kBf16, "bf16t1_n256_f8192_fb4", 1, 4, 256, 8192),
      GENFB1(kBf16, "bf16t1_n256_f8192_fb1", 1, 4, 256, 8192),
      GENFB4(kBf16, "bf16t1_n0_f8192_fb4", 1, 4, 0, 8192),
      GENFB1(kBf16, "bf16t1_n0_f8192_fb1", 1, 4, 0, 8192),
      GENFB4(kBf16, "bf16t2_n2048_f8192_fb4", 2, 4, 2048, 8192),
      GENFB1(kBf16, "bf16t2_n2048_f8192_fb1", 2, 4, 2048, 8192),
      GENFB4(kBf16, "bf16t2_n512_f8192_fb4", 2, 4, 512, 8192),
      GENFB1(kBf16, "bf16t2_n512_f8192_fb1", 2, 4, 512, 8192),
      GENFB4(kBf16, "bf16t2_n256_f8192_fb4", 2, 4, 256, 8192),
      GENFB1(kBf16, "bf16t2_n256_f8192_fb1", 2, 4, 256, 8192),
      GENFB4(kBf16, "bf16t2_n0_f8192_fb4", 2, 4, 0, 8192),
      GENFB1(kBf16, "bf16t2_n0_f8192_fb1", 2, 4, 0, 8192),
      GENFB4(kBf16, "bf16t3_n2048_f8192_fb4", 3, 4, 2048, 8192),
      GENFB1(kBf16, "bf16t3_n2048_f8192_fb1", 3, 4, 2048, 8192),
      GENFB4(kBf16, "bf16t3_n512_f8192_fb4", 3, 4, 512, 8192),
      GENFB1(kBf16, "bf16t3_n512_f8192_fb1", 3, 4, 512, 8192),
      GENFB4(kBf16, "bf16t3_n256_f8192_fb4", 3, 4, 256, 8192),
      GENFB1(kBf16, "bf16t3_n256_f8192_fb1", 3, 4, 256, 8192),
      GENFB4(kBf16, "bf16t3_n0_f8192_fb4", 3, 4, 0, 8192),
      GENFB1(kBf16, "bf16t3_n0_f8192_fb1", 3, 4, 0, 8192),
      GENFB4(kBf16, "bf16t4_n2048_f8192_fb4", 4, 4, 2048, 8192),
      GENFB1(kBf16, "bf16t4_n2048_f8192_fb1", 4, 4, 2048, 8192),
      GENFB4(kBf16, "bf16t4_n512_f8192_fb4", 4, 4, 512, 8192),
      GENFB1(kBf16, "bf16t4_n512_f8192_fb1", 4, 4, 512, 8192),
      GENFB4(kBf16, "bf16t4_n256_f8192_fb4", 4, 4, 256, 8192),
      GENFB1(kBf16, "bf16t4_n256_f8192_fb1", 4, 4, 256, 8192),
      GENFB4(kBf16, "bf16t4_n0_f8192_fb4", 4, 4, 0, 8192),
      GENFB1(kBf16, "bf16t4_n0_f8192_fb1", 4, 4, 0, 8192),
      GENFB4(kI8, "i8t1_n2048_f8192_fb4", 1, 4, 2048, 8192),
      GENFB1(kI8, "i8t1_n2048_f8192_fb1", 1, 4, 2048, 8192),
      GENFB4(kI8, "i8t1_n512_f8192_fb4", 1, 4, 512, 8192),
      GENFB1(kI8, "i8t1_n512_f8192_fb1", 1, 4, 512, 8192),
      GENFB4(kI8, "i8t1_n256_f8192_fb4", 1, 4, 256, 8192),
      GENFB1(kI8, "i8t1_n256_f8192_fb1", 1, 4, 256, 8192),
      GENFB4(kI8, "i8t1_n0_f8192_fb4", 1, 4, 0, 8192),
      GENFB1(kI8, "i8t1_n0_f8192_fb1", 1, 4, 0, 8192),
      GENFB4(kI8, "i8t2_n2048_f8192_fb4", 2, 4, 2048, 8192),
      GENFB1(kI8, "i8t2_n2048_f8192_fb1", 2, 4, 2048, 8192),
      GENFB4(kI8, "i8t2_n512_f8192_fb4", 2, 4, 512, 8192),
      GENFB1(kI8, "i8t2_n512_f8192_fb1", 2, 4, 512, 8192),
      GENFB4(kI8, "i8t2_n256_f8192_fb4", 2, 4, 256, 8192),
      GENFB1(kI8, "i8t2_n256_f8192_fb1", 2, 4, 256, 8192),
      GENFB4(kI8, "i8t2_n0_f8192_fb4", 2, 4, 0, 8192),
      GENFB1(kI8, "i8t2_n0_f8192_fb1", 2, 4, 0, 8192),
      GENFB4(kI8, "i8t3_n2048_f8192_fb4", 3, 4, 2048, 8192),
      GENFB1(kI8, "i8t3_n2048_f8192_fb1", 3, 4, 2048, 8192),
      GENFB4(kI8, "i8t3_n512_f8192_fb4", 3, 4, 512, 8192),
      GENFB1(kI8, "i8t3_n512_f8192_fb1", 3, 4, 512, 8192),
      GENFB4(kI8, "i8t3_n256_f8192_fb4", 3, 4, 256, 8192),
      GENFB1(kI8, "i8t3_n256_f8192_fb1", 3, 4, 256, 8192),
      GENFB4(kI8, "i8t3_n0_f8192_fb4", 3, 4, 0, 8192),
      GENFB1(kI8, "i8t3_n0_f8192_fb1", 3, 4, 0, 8192),
      GENFB4(kI8, "i8t4_n2048_f8192_fb4", 4, 4, 2048, 8192),
      GENFB1(kI8, "i8t4_n2048_f8192_fb1", 4, 4, 2048, 8192),
      GENFB4(kI8, "i8t4_n512_f8192_fb4", 4, 4, 512, 8192),
      GENFB1(kI8, "i8t4_n512_f8192_fb1", 4, 4, 512, 8192),
      GENFB4(kI8, "i8t4_n256_f8192_fb4", 4, 4, 256, 8192),
      GENFB1(kI8, "i8t4_n256_f8192_fb1", 4, 4, 256, 8192),
      GENFB4(kI8, "i8t4_n0_f8192_fb4", 4, 4, 0, 8192),
      GENFB1(kI8, "i8t4_n0_f8192_fb1", 4, 4, 0, 8192),
      GENFB(kBf16, "bf16t1_n2048_f8192_fb", 1, 4, 2048, 8192),
      GENFB(kBf16, "bf16t1_n1024_f8192_fb", 1, 4, 1024, 8192),
      GENFB(kBf16, "bf16t1_n512_f8192_fb", 1, 4, 512, 8192),
      GENFB(kBf16, "bf16t1_n256_f8192_fb", 1, 4, 256, 8192),
      GENFB(kBf16, "bf16t1_n0_f8192_fb", 1, 4, 0, 8192),
      GENFB(kBf16, "bf16t2_n2048_f8192_fb", 2, 4, 2048, 8192),
      GENFB(kBf16, "bf16t2_n1024_f8192_fb", 2, 4, 1024, 8192),
      GENFB(kBf16, "bf16t2_n512_f8192_fb", 2, 4, 512, 8192),
      GENFB(kBf16, "bf16t2_n256_f8192_fb", 2, 4, 256, 8192),
      GENFB(kBf16, "bf16t2_n0_f8192_fb", 2, 4, 0, 8192),
      GENFB(kBf16, "bf16t3_n2048_f8192_fb", 3, 4, 2048, 8192),
      GENFB(kBf16, "bf16t3_n1024_f8192_fb", 3, 4, 1024, 8192),
      GENFB(kBf16, "bf16t3_n512_f8192_fb", 3, 4, 512, 8192),
      GENFB(kBf16, "bf16t3_n256_f8192_fb", 3, 4, 256, 8192),
      GENFB(kBf16, "bf16t3_n0_f8192_fb", 3, 4, 0, 8192),
      GENFB(kBf16, "bf16t4_n2048_f8192_fb", 4, 4, 2048, 8192),
      GENFB(kBf16, "bf16t4_n1024_f8192_fb", 4, 4, 1024, 8192),
      GENFB(kBf16, "bf16t4_n512_f8192_fb", 4, 4, 512, 8192),
      GENFB(kBf16, "bf16t4_n256_f8192_fb", 4, 4, 256, 8192),
      GENFB(kBf16, "bf16t4_n0_f8192_fb", 4, 4, 0, 8192),
      GENFB(kI8, "i8t1_n2048_f8192_fb", 1, 4, 2048, 8192),
      GENFB(kI8, "i8t1_n1024_f8192_fb", 1, 4, 1024, 8192),
      GENFB(kI8, "i8t1_n512_f8192_fb", 1, 4, 512, 8192),
      GENFB(kI8, "i8t1_n256_f8192_fb", 1, 4, 256, 8192),
      GENFB(kI8, "i8t1_n0_f8192_fb", 1, 4, 0, 8192),
      GENFB(kI8, "i8t2_n2048_f8192_fb", 2, 4, 2048, 8192),
      GENFB(kI8, "i8t2_n1024_f8192_fb", 2, 4, 1024, 8192),
      GENFB(kI8, "i8t2_n512_f8192_fb", 2, 4, 512, 8192),
      GENFB(kI8, "i8t2_n256_f8192_fb", 2, 4, 256, 8192),
      GENFB(kI8, "i8t2_n0_f8192_fb", 2, 4, 0, 8192),
      GENFB(kI8, "i8t3_n2048_f8192_fb", 3, 4, 2048, 8192),
      GENFB(kI8, "i8t3_n1024_f8192_fb", 3, 4, 1024, 8192),
      GENFB(kI8, "i8t3_n512_f8192_fb", 3, 4, 512, 8192),
      GENFB(kI8, "i8t3_n256_f8192_fb", 3, 4, 256, 8192),
      GENFB(kI8, "i8t3_n0_f8192_fb", 3, 4, 0, 8192),
      GENFB(kI8, "i8t4_n2048_f8192_fb", 4, 4, 2048, 8192),
      GENFB(kI8, "i8t4_n1024_f8192_fb", 4, 4, 1024, 8192),
      GENFB(kI8, "i8t4_n512_f8192_fb", 4, 4, 512, 8192),
      GENFB(kI8, "i8t4_n256_f8192_fb", 4, 4, 256, 8192),
      GENFB(kI8, "i8t4_n0_f8192_fb", 4, 4, 0, 8192),
      GEN(kBf16, "bf16t1_n2048_f8192", 1, 4, 2048, 8192),
      GEN(kBf16, "bf16t1_n1024_f8192", 1, 4, 1024, 8192),
      GEN(kBf16, "bf16t1_n512_f8192", 1, 4, 512, 8192),
      GEN(kBf16, "bf16t1_n256_f8192", 1, 4, 256, 8192),
      GEN(kBf16, "bf16t1_n0_f8192", 1, 4, 0, 8192),
      GEN(kBf16, "bf16t1_n512_f4096", 1, 4, 512, 4096),
      GEN(kBf16, "bf16t1_n512_f12288", 1, 4, 512, 12288),
      GEN(kBf16, "bf16t1_n512_f16384", 1, 4, 512, 16384),
      GEN(kBf16, "bf16t1_n2048_f16384", 1, 4, 2048, 16384),
      GEN(kBf16, "bf16t2_n2048_f8192", 2, 4, 2048, 8192),
      GEN(kBf16, "bf16t2_n1024_f8192", 2, 4, 1024, 8192),
      GEN(kBf16, "bf16t2_n512_f8192", 2, 4, 512, 8192),
      GEN(kBf16, "bf16t2_n256_f8192", 2, 4, 256, 8192),
      GEN(kBf16, "bf16t2_n0_f8192", 2, 4, 0, 8192),
      GEN(kBf16, "bf16t2_n512_f4096", 2, 4, 512, 4096),
      GEN(kBf16, "bf16t2_n512_f12288", 2, 4, 512, 12288),
      GEN(kBf16, "bf16t2_n512_f16384", 2, 4, 512, 16384),
      GEN(kBf16, "bf16t2_n2048_f16384", 2, 4, 2048, 16384),
      GEN(kBf16, "bf16t3_n2048_f8192", 3, 4, 2048, 8192),
      GEN(kBf16, "bf16t3_n1024_f8192", 3, 4, 1024, 8192),
      GEN(kBf16, "bf16t3_n512_f8192", 3, 4, 512, 8192),
      GEN(kBf16, "bf16t3_n256_f8192", 3, 4, 256, 8192),
      GEN(kBf16, "bf16t3_n0_f8192", 3, 4, 0, 8192),
      GEN(kBf16, "bf16t3_n512_f4096", 3, 4, 512, 4096),
      GEN(kBf16, "bf16t3_n512_f12288", 3, 4, 512, 12288),
      GEN(kBf16, "bf16t3_n512_f16384", 3, 4, 512, 16384),
      GEN(kBf16, "bf16t3_n2048_f16384", 3, 4, 2048, 16384),
      GEN(kBf16, "bf16t4_n2048_f8192", 4, 4, 2048, 8192),
      GEN(kBf16, "bf16t4_n1024_f8192", 4, 4, 1024, 8192),
      GEN(kBf16, "bf16t4_n512_f8192", 4, 4, 512, 8192),
      GEN(kBf16, "bf16t4_n256_f8192", 4, 4, 256, 8192),
      GEN(kBf16, "bf16t4_n0_f8192", 4, 4, 0, 8192),
      GEN(kBf16, "bf16t4_n512_f4096", 4, 4, 512, 4096),
      GEN(kBf16, "bf16t4_n512_f12288", 4, 4, 512, 12288),
      GEN(kBf16, "bf16t4_n512_f16384", 4, 4, 512, 16384),
      GEN(kBf16, "bf16t4_n2048_f16384", 4, 4, 2048, 16384),
      GEN(kI8, "i8t1_n2048_f8192", 1, 4, 2048, 8192),
      GEN(kI8, "i8t1_n1024_f8192", 1, 4, 1024, 8192),
      GEN(kI8, "i8t1_n512_f8192", 1, 4, 512, 8192),
      GEN(kI8, "i8t1_n256_f8192", 1, 4, 256, 8192),
      GEN(kI8, "i8t1_n0_f8192", 1, 4, 0, 8192),
      GEN(kI8, "i8t1_n512_f4096", 1, 4, 512, 4096),
      GEN(kI8, "i8t1_n512_f12288", 1, 4, 512, 12288),
      GEN(kI8, "i8t1_n512_f16384", 1, 4, 512, 16384),
      GEN(kI8, "i8t1_n2048_f16384", 1, 4, 2048, 16384),
      GEN(kI8, "i8t2_n2048_f8192", 2, 4, 2048, 8192),
      GEN(kI8, "i8t2_n1024_f8192", 2, 4, 1024, 8192),
      GEN(kI8, "i8t2_n512_f8192", 2, 4, 512, 8192),
      GEN(kI8, "i8t2_n256_f8192", 2, 4, 256, 8192),
      GEN(kI8, "i8t2_n0_f8192", 2, 4, 0, 8192),
      GEN(kI8, "i8t2_n512_f4096", 2, 4, 512, 4096),
      GEN(kI8, "i8t2_n512_f12288", 2, 4, 512, 12288),
      GEN(kI8, "i8t2_n512_f16384", 2, 4, 512, 16384),
      GEN(kI8, "i8t2_n2048_f16384", 2, 4, 2048, 16384),
      GEN(kI8, "i8t3_n2048_f8192", 3, 4, 2048, 8192),
      GEN(kI8, "i8t3_n1024_f8192", 3, 4, 1024, 8192),
      GEN(kI8, "i8t3_n512_f8192", 3, 4, 512, 8192),
      GEN(kI8, "i8t3_n256_f8192", 3, 4, 256, 8192),
      GEN(kI8, "i8t3_n0_f8192", 3, 4, 0, 8192),
      GEN(kI8, "i8t3_n512_f4096", 3, 4, 512, 4096),
      GEN(kI8, "i8t3_n512_f12288", 3, 4, 512, 12288),
      GEN(kI8, "i8t3_n512_f16384", 3, 4, 512, 16384),
      GEN(kI8, "i8t3_n2048_f16384", 3, 4, 2048, 16384),
      GEN(kI8, "i8t4_n2048_f8192", 4, 4, 2048, 8192),
      GEN(kI8, "i8t4_n1024_f8192", 4, 4, 1024, 8192),
      GEN(kI8, "i8t4_n512_f8192", 4, 4, 512, 8192),
      GEN(kI8, "i8t4_n256_f8192", 4, 4, 256, 8192),
      GEN(kI8, "i8t4_n0_f8192", 4, 4, 0, 8192),
      GEN(kI8, "i8t4_n512_f4096", 4, 4, 512, 4096),
      GEN(kI8, "i8t4_n512_f12288", 4, 4, 512, 12288),
      GEN(kI8, "i8t4_n512_f16384", 4, 4, 512, 16384),
      GEN(kI8, "i8t4_n2048_f16384", 4, 4, 2048, 16384),
      GEN(kFp8, "fp8t1_n1536_f8192", 1, 4, 1536, 8192),
      GEN(kFp8, "fp8t1_n1024_f8192", 1, 4, 1024, 8192),
      GEN(kFp8, "fp8t1_n512_f8192", 1, 4, 512, 8192),
      GEN(kFp8, "fp8t1_n256_f8192", 1, 4, 256, 8192),
      GEN(kFp8, "fp8t1_n0_f8192", 1, 4, 0, 8192),
      GEN(kFp8, "fp8t1_n512_f4096", 1, 4, 512, 4096),
      GEN(kFp8, "fp8t1_n512_f12288", 1, 4, 512, 12288),
      GEN(kFp8, "fp8t1_n512_f16384", 1, 4, 512, 16384),
      GEN(kFp8, "fp8t1_n1536_f16384", 1, 4, 1536, 16384),
      GEN(kFp8, "fp8t2_n1536_f8192", 2, 4, 1536, 8192),
      GEN(kFp8, "fp8t2_n1024_f8192", 2, 4, 1024, 8192),
      GEN(kFp8, "fp8t2_n512_f8192", 2, 4, 512, 8192),
      GEN(kFp8, "fp8t2_n256_f8192", 2, 4, 256, 8192),
      GEN(kFp8, "fp8t2_n0_f8192", 2, 4, 0, 8192),
      GEN(kFp8, "fp8t2_n512_f4096", 2, 4, 512, 4096),
      GEN(kFp8, "fp8t2_n512_f12288", 2, 4, 512, 12288),
      GEN(kFp8, "fp8t2_n512_f16384", 2, 4, 512, 16384),
      GEN(kFp8, "fp8t2_n1536_f16384", 2, 4, 1536, 16384),
      GEN(kFp8, "fp8t3_n1536_f8192", 3, 4, 1536, 8192),
      GEN(kFp8, "fp8t3_n1024_f8192", 3, 4, 1024, 8192),
      GEN(kFp8, "fp8t3_n512_f8192", 3, 4, 512, 8192),
      GEN(kFp8, "fp8t3_n256_f8192", 3, 4, 256, 8192),
      GEN(kFp8, "fp8t3_n0_f8192", 3, 4, 0, 8192),
      GEN(kFp8, "fp8t3_n512_f4096", 3, 4, 512, 4096),
      GEN(kFp8, "fp8t3_n512_f12288", 3, 4, 512, 12288),
      GEN(kFp8, "fp8t3_n512_f16384", 3, 4, 512, 16384),
      GEN(kFp8, "fp8t3_n1536_f16384", 3, 4, 1536, 16384),
      GEN(kFp8, "fp8t4_n1536_f8192", 4, 4, 1536, 8192),
      GEN(kFp8, "fp8t4_n1024_f8192", 4, 4, 1024, 8192),
      GEN(kFp8, "fp8t4_n512_f8192", 4, 4, 512, 8192),
      GEN(kFp8, "fp8t4_n256_f8192", 4, 4, 256, 8192),
      GEN(kFp8, "fp8t4_n0_f8192", 4, 4, 0, 8192),
      GEN(kFp8, "fp8t4_n512_f4096", 4, 4, 512, 4096),
      GEN(kFp8, "fp8t4_n512_f12288", 4, 4, 512, 12288),
      GEN(kFp8, "fp8t4_n512_f16384", 4, 4, 512, 16384),
      GEN(kFp8, "fp8t4_n1536_f16384", 4, 4, 1536, 16384),
  };
  std::vector<const Variant*> vs;
  for (const Variant& v : all)
    if (only.empty() || only.find("," + std::string(v.name) + ",") != std::string::npos) vs.push_back(&v);

  Pool pool(threads);
  // Per shape (the 7 of a layer, lm_head): seconds summed over the rounds, per variant.
  constexpr int kShapes = 8;
  std::vector<std::vector<double>> shape_s(all.size(), std::vector<double>(kShapes));
  std::vector<double> shape_bytes(kShapes);
  const size_t last = mats.size() - 1;  // lm_head
  for (size_t j = 0; j < mats.size(); ++j) shape_bytes[j == last ? 7 : j % 7] += mats[j].n * mats[j].k;
  auto pass = [&](const Variant& v) {  // seconds in the GEMVs (the gaps not counted)
    double total = 0;
    std::vector<double>& acc = shape_s[&v - all.data()];
    for (size_t j = 0; j < mats.size(); ++j) {
      const auto t0 = std::chrono::steady_clock::now();
      pool.run(mats[j], v.fn, v.rows, v.esize, x.data(), y.data());
      const auto t1 = std::chrono::steady_clock::now();
      const double d = std::chrono::duration<double>(t1 - t0).count();
      acc[j == last ? 7 : j % 7] += d;
      total += d;
      if (gap_us > 0) {
        const auto until = t1 + std::chrono::nanoseconds(static_cast<int64_t>(gap_us * 1e3));
        while (std::chrono::steady_clock::now() < until) _mm_pause();
      }
    }
    return total;
  };

  for (const Variant* v : vs) pass(*v);  // warm-up: page tables, code
  for (auto& a : shape_s) std::fill(a.begin(), a.end(), 0.0);
  printf("threads %d, %zu matrices, %.1f MB, %s\n", threads, mats.size(), bytes / 1e6, file ? file : huge ? "anonymous, huge pages" : "anonymous, 4 KiB pages");
  std::vector<std::vector<double>> gbs(vs.size());
  for (int r = 0; r < rounds; ++r) {
    printf("round %d:", r);
    for (size_t i = 0; i < vs.size(); ++i) {
      const double s = pass(*vs[i]);
      const double b = nset > 0 || file ? bytes * vs[i]->esize / 2.0 : static_cast<double>(weights * vs[i]->esize);
      gbs[i].push_back(b / s / 1e9);
      printf(" %s %.1f", vs[i]->name, b / s / 1e9);
    }
    printf("\n");
    fflush(stdout);
  }
  // Medians of the per-round ratios (a variant against the probe and the current kernel of the
  // same round): the host's swings between rounds cancel.
  auto find = [&](const char* name) {
    for (size_t i = 0; i < vs.size(); ++i)
      if (std::string(vs[i]->name) == name) return static_cast<int>(i);
    return -1;
  };
  const int ip2 = find("probe"), ip1 = find("probe1"), ic = find(ref.c_str());
  auto med_ratio = [&](size_t i, int j) {
    std::vector<double> q;
    for (int r = 0; r < rounds; ++r) q.push_back(gbs[i][r] / gbs[j][r]);
    std::sort(q.begin(), q.end());
    return q[q.size() / 2];
  };
  printf("median GB/s, median per-round ratio to the probe (of the same bytes per weight) and to %s:\n", ref.c_str());
  for (size_t i = 0; i < vs.size(); ++i) {
    std::vector<double> g = gbs[i];
    std::sort(g.begin(), g.end());
    printf("  %-12s %6.1f", vs[i]->name, g[g.size() / 2]);
    const int ip = vs[i]->esize == 1 ? ip1 : ip2;
    if (ip >= 0) printf("  %5.1f%%", 100 * med_ratio(i, ip));
    if (ic >= 0) printf("  %5.3f", med_ratio(i, ic));
    printf("\n");
  }
  printf("GB/s per shape over all rounds (q_a, kv_a, q_b, o, gate, up, down, lm_head):\n");
  for (const Variant* v : vs) {
    printf("  %-12s", v->name);
    for (int c = 0; c < kShapes; ++c) printf(" %6.1f", shape_bytes[c] * v->esize * rounds / shape_s[v - all.data()][c] / 1e9);
    printf("\n");
  }
  return 0;
}
