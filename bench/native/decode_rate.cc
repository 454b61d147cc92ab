// Decode rate of the batch-1 GEMV's inner loop per weight format, alone and warm (session 15,
// wt15-fmt): 4 row streams x 512 columns over 256 KiB of codes (L2-resident), one thread, x f32,
// one accumulator chain per row (cur: linear_vec.h's fp8 decode before session 15, e4m3 -> f16
// words by a bit move, vcvtph2ps; sx: vpmovsxbd, << 20, mask -> f32 bits = value * 2^-120; dw:
// 64 codes as 16 dwords, byte q shifted to the top, >> 4 arithmetic, mask (the decode kept); dw2:
// dw with 2 chains per row; dp2 / dp1: e4m3 -> bf16 words and vdpbf16ps with x split into bf16
// hi + lo / hi only (not exact: bf16 denormals flushed, the 2^-120 factor in x); i8: int8
// vpmovsxbd + vcvtdq2ps; bf16: vpmovzxwd + << 16, GB/s of its 2-byte weights). Prints GB/s of
// weights per variant, two rounds.
//   g++ -O3 -march=native -std=c++17 bench/native/decode_rate.cc -o /tmp/decode_rate && /tmp/decode_rate
#include <immintrin.h>
#include <chrono>
#include <cstdio>
#include <cstdint>
#include <cstdlib>
#include <cstring>
// 4 row streams of K bytes (fp8 / int8) over a warm buffer; x f32 [K]; per variant GB/s
constexpr int K = 512, N = 512;  // 256 KiB of codes
alignas(64) static uint8_t W[N * K];
alignas(64) static uint16_t WB[N * K];
alignas(64) static float X[K];
static float Y[N];
static inline float hsum(__m512 v) { return _mm512_reduce_add_ps(v); }
__attribute__((noinline)) void cur(void) {  // the f16 bit move, NA = 1
  const __m512i m = _mm512_set1_epi16((short)0xbf80);
  for (int r = 0; r < N; r += 4) {
    __m512 a[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    for (int k = 0; k < K; k += 64) {
      __m512 x0 = _mm512_load_ps(X + k), x1 = _mm512_load_ps(X + k + 16), x2 = _mm512_load_ps(X + k + 32),
             x3 = _mm512_load_ps(X + k + 48);
      for (int i = 0; i < 4; ++i) {
        __m512i v = _mm512_loadu_si512(W + (r + i) * K + k);
        __m512i e = _mm512_and_si512(_mm512_srai_epi16(_mm512_slli_epi16(v, 8), 1), m);
        __m512i o = _mm512_and_si512(_mm512_srai_epi16(v, 1), m);
        a[i] = _mm512_fmadd_ps(x0, _mm512_cvtph_ps(_mm512_castsi512_si256(e)), a[i]);
        a[i] = _mm512_fmadd_ps(x1, _mm512_cvtph_ps(_mm512_extracti64x4_epi64(e, 1)), a[i]);
        a[i] = _mm512_fmadd_ps(x2, _mm512_cvtph_ps(_mm512_castsi512_si256(o)), a[i]);
        a[i] = _mm512_fmadd_ps(x3, _mm512_cvtph_ps(_mm512_extracti64x4_epi64(o, 1)), a[i]);
      }
    }
    for (int i = 0; i < 4; ++i) Y[r + i] = hsum(a[i]);
  }
}
__attribute__((noinline)) void sx(void) {  // vpmovsxbd, << 20, & 0x87f00000
  const __m512i m = _mm512_set1_epi32((int)0x87f00000);
  for (int r = 0; r < N; r += 4) {
    __m512 a[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    for (int k = 0; k < K; k += 64) {
      __m512 xs[4];
      for (int q = 0; q < 4; ++q) xs[q] = _mm512_load_ps(X + k + 16 * q);
      for (int i = 0; i < 4; ++i)
        for (int q = 0; q < 4; ++q) {
          __m512i d = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(W + (r + i) * K + k + 16 * q)));
          a[i] = _mm512_fmadd_ps(xs[q], _mm512_castsi512_ps(_mm512_and_si512(_mm512_slli_epi32(d, 20), m)), a[i]);
        }
    }
    for (int i = 0; i < 4; ++i) Y[r + i] = hsum(a[i]);
  }
}
__attribute__((noinline)) void dw(void) {  // 64 codes as 16 dwords: byte j by sll (24 - 8j), sra 4, and
  const __m512i m = _mm512_set1_epi32((int)0x87f00000);
  for (int r = 0; r < N; r += 4) {
    __m512 a[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    for (int k = 0; k < K; k += 64) {
      __m512 xs[4];
      for (int q = 0; q < 4; ++q) xs[q] = _mm512_load_ps(X + k + 16 * q);
      for (int i = 0; i < 4; ++i) {
        __m512i v = _mm512_loadu_si512(W + (r + i) * K + k);
        __m512i b3 = _mm512_and_si512(_mm512_srai_epi32(v, 4), m);
        __m512i b2 = _mm512_and_si512(_mm512_srai_epi32(_mm512_slli_epi32(v, 8), 4), m);
        __m512i b1 = _mm512_and_si512(_mm512_srai_epi32(_mm512_slli_epi32(v, 16), 4), m);
        __m512i b0 = _mm512_and_si512(_mm512_srai_epi32(_mm512_slli_epi32(v, 24), 4), m);
        a[i] = _mm512_fmadd_ps(xs[0], _mm512_castsi512_ps(b0), a[i]);
        a[i] = _mm512_fmadd_ps(xs[1], _mm512_castsi512_ps(b1), a[i]);
        a[i] = _mm512_fmadd_ps(xs[2], _mm512_castsi512_ps(b2), a[i]);
        a[i] = _mm512_fmadd_ps(xs[3], _mm512_castsi512_ps(b3), a[i]);
      }
    }
    for (int i = 0; i < 4; ++i) Y[r + i] = hsum(a[i]);
  }
}
__attribute__((noinline)) void dw2(void) {  // as dw, 2 chains per row
  const __m512i m = _mm512_set1_epi32((int)0x87f00000);
  for (int r = 0; r < N; r += 4) {
    __m512 a[2][4];
    for (auto& aa : a)
      for (auto& v : aa) v = _mm512_setzero_ps();
    for (int k = 0; k < K; k += 64) {
      __m512 xs[4];
      for (int q = 0; q < 4; ++q) xs[q] = _mm512_load_ps(X + k + 16 * q);
      for (int i = 0; i < 4; ++i) {
        __m512i v = _mm512_loadu_si512(W + (r + i) * K + k);
        __m512i b3 = _mm512_and_si512(_mm512_srai_epi32(v, 4), m);
        __m512i b2 = _mm512_and_si512(_mm512_srai_epi32(_mm512_slli_epi32(v, 8), 4), m);
        __m512i b1 = _mm512_and_si512(_mm512_srai_epi32(_mm512_slli_epi32(v, 16), 4), m);
        __m512i b0 = _mm512_and_si512(_mm512_srai_epi32(_mm512_slli_epi32(v, 24), 4), m);
        a[0][i] = _mm512_fmadd_ps(xs[0], _mm512_castsi512_ps(b0), a[0][i]);
        a[1][i] = _mm512_fmadd_ps(xs[1], _mm512_castsi512_ps(b1), a[1][i]);
        a[0][i] = _mm512_fmadd_ps(xs[2], _mm512_castsi512_ps(b2), a[0][i]);
        a[1][i] = _mm512_fmadd_ps(xs[3], _mm512_castsi512_ps(b3), a[1][i]);
      }
    }
    for (int i = 0; i < 4; ++i) Y[r + i] = hsum(_mm512_add_ps(a[0][i], a[1][i]));
  }
}
__attribute__((noinline)) void i8(void) {  // int8: vpmovsxbd + vcvtdq2ps
  for (int r = 0; r < N; r += 4) {
    __m512 a[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    for (int k = 0; k < K; k += 16) {
      __m512 x = _mm512_load_ps(X + k);
      for (int i = 0; i < 4; ++i)
        a[i] = _mm512_fmadd_ps(
            x, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(W + (r + i) * K + k)))), a[i]);
    }
    for (int i = 0; i < 4; ++i) Y[r + i] = hsum(a[i]);
  }
}
__attribute__((noinline)) void bf(void) {  // bf16 (twice the bytes): vpmovzxwd + vpslld 16
  for (int r = 0; r < N; r += 4) {
    __m512 a[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    for (int k = 0; k < K; k += 16) {
      __m512 x = _mm512_load_ps(X + k);
      for (int i = 0; i < 4; ++i)
        a[i] = _mm512_fmadd_ps(x,
                               _mm512_castsi512_ps(_mm512_slli_epi32(
                                   _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)(WB + (r + i) * K + k))), 16)),
                               a[i]);
    }
    for (int i = 0; i < 4; ++i) Y[r + i] = hsum(a[i]);
  }
}
alignas(64) static uint16_t XB[2][K];
__attribute__((noinline)) void dp2(void) {  // fp8 -> bf16 words (sign | mag << 4), vdpbf16ps with x hi and lo
  const __m512i m = _mm512_set1_epi16((short)0x87f0);
  for (int r = 0; r < N; r += 4) {
    __m512 a[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    for (int k = 0; k < K; k += 64) {
      __m512bh xh0 = (__m512bh)_mm512_load_si512(XB[0] + k), xh1 = (__m512bh)_mm512_load_si512(XB[0] + k + 32);
      __m512bh xl0 = (__m512bh)_mm512_load_si512(XB[1] + k), xl1 = (__m512bh)_mm512_load_si512(XB[1] + k + 32);
      for (int i = 0; i < 4; ++i) {
        __m512i v = _mm512_loadu_si512(W + (r + i) * K + k);
        __m512i e = _mm512_and_si512(_mm512_srai_epi16(_mm512_slli_epi16(v, 8), 4), m);
        __m512i o = _mm512_and_si512(_mm512_srai_epi16(v, 4), m);
        a[i] = _mm512_dpbf16_ps(a[i], xh0, (__m512bh)e);
        a[i] = _mm512_dpbf16_ps(a[i], xh1, (__m512bh)o);
        a[i] = _mm512_dpbf16_ps(a[i], xl0, (__m512bh)e);
        a[i] = _mm512_dpbf16_ps(a[i], xl1, (__m512bh)o);
      }
    }
    for (int i = 0; i < 4; ++i) Y[r + i] = hsum(a[i]);
  }
}
__attribute__((noinline)) void dp1(void) {  // hi only
  const __m512i m = _mm512_set1_epi16((short)0x87f0);
  for (int r = 0; r < N; r += 4) {
    __m512 a[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    for (int k = 0; k < K; k += 64) {
      __m512bh xh0 = (__m512bh)_mm512_load_si512(XB[0] + k), xh1 = (__m512bh)_mm512_load_si512(XB[0] + k + 32);
      for (int i = 0; i < 4; ++i) {
        __m512i v = _mm512_loadu_si512(W + (r + i) * K + k);
        __m512i e = _mm512_and_si512(_mm512_srai_epi16(_mm512_slli_epi16(v, 8), 4), m);
        __m512i o = _mm512_and_si512(_mm512_srai_epi16(v, 4), m);
        a[i] = _mm512_dpbf16_ps(a[i], xh0, (__m512bh)e);
        a[i] = _mm512_dpbf16_ps(a[i], xh1, (__m512bh)o);
      }
    }
    for (int i = 0; i < 4; ++i) Y[r + i] = hsum(a[i]);
  }
}
template <class F>
double run(F f, double bytes) {
  for (int i = 0; i < 20; ++i) f();
  double best = 1e9;
  for (int rep = 0; rep < 7; ++rep) {
    auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < 50; ++i) f();
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / 50;
    if (s < best) best = s;
  }
  return bytes / best / 1e9;
}
int main() {
  for (int i = 0; i < N * K; ++i) {
    W[i] = rand() & 0xff;
    if ((W[i] & 0x7f) == 0x7f) W[i] ^= 1;
    WB[i] = (rand() & 0x807f) | 0x3c00;
  }
  for (int k = 0; k < K; ++k) X[k] = (rand() / (float)RAND_MAX) - 0.5f;
  for (int round = 0; round < 2; ++round) printf("dp2 %.1f dp1 %.1f\n", run(dp2, N * K), run(dp1, N * K));
  printf("cur %.1f  sx %.1f  dw %.1f  dw2 %.1f  i8 %.1f  bf16 %.1f GB/s (bf16: its 2 B per weight)\n", run(cur, N * K),
         run(sx, N * K), run(dw, N * K), run(dw2, N * K), run(i8, N * K), run(bf, 2.0 * N * K));
  printf("%f\n", Y[3]);
}
