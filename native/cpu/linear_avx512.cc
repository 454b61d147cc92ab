// AVX-512 linear layers: the drivers of linear_vec.h compiled for 16-lane vectors and 32
// registers, plus the GEMM for bf16 weights on CPUs with AVX512-BF16 (vdpbf16ps). linear.cc calls
// in only after checking isa().
#include "linear_kernels.h"
#include "simd.h"
#include "threadpool.h"

LC_BEGIN_TARGET(LC_ISA_AVX512)
#include "linear_vec.h"

namespace lc::cpu::linear_detail {
namespace {

// GEMV shapes: see linear_vec.h (T <= 2: one row stream, x chunks in L1, S accumulator sets;
// T >= 3: R rows per pass sharing every x load).
struct Avx512Linear {
  using V = simd::Avx512;
  template <int T>
  using GemvShape = GemvShapeOf<T <= 2   ? 1
                                : T <= 4 ? 4
                                         : 2,
                                T <= 2 ? 4 : 1, T <= 2 ? 16384 / (4 * T) : 0>;
  template <int T>
  using Fp8Shape = Fp8ShapeOf<T <= 2   ? 1
                              : T <= 4 ? 4
                                       : 2,
                              T <= 2 ? 4 : 1, T <= 2 ? 16384 / (4 * T) : 0>;
  template <int T>
  static constexpr int kInt4Rows = T <= 2 ? 4 : 2;  // registers: see linear_vec.h's int4 GEMV
  static constexpr bool kFp8ReloadCodes = false;
  static constexpr int64_t kGemmMR = 6;  // 6 x 4 accumulators + 6 x + 1 weight = 31 of 32 registers
};

// ---------------------------------------------------------------------------------------------
// GEMM, AVX512-BF16 path: x rounded to bf16 (nearest even) when packed; the panel is a zero-padded
// copy of a bf16 W, or (precision other than 'highest') an fp8 / int8 / int4 W dequantized to bf16
// once per panel and k block (int8: the codes, exact in bf16, the row scale applied to the result). vdpbf16ps multiplies bf16 pairs exactly and adds them into fp32
// lanes, so one instruction does 32 multiply-adds: twice the fp32 FMA rate, half the bytes.

LC_BEGIN_TARGET(LC_ISA_AVX512BF16)

struct GemmBF16 {
  using V = simd::Avx512;
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
        __mmask16 m = V::mask16(k - c);
        _mm256_mask_storeu_epi16(dst + c, m, (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, src + c)));
      }
    }
  }

  static void pack_panel(const WeightRef& w, int64_t n0, int64_t nlen, int64_t nrows, int64_t k0, int64_t klen, int64_t kcp,
                         uint16_t* p) {
    if (w.dtype != DType::BF16) {  // fp8 / int8 / int4: dequantized (int8: the exact codes) and rounded to bf16
      pack_panel_any<Avx512Linear>(w, n0, nlen, nrows, k0, klen, kcp, p);
      return;
    }
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

  static void micro(const uint16_t* x, int64_t ldx, const uint16_t* p, int64_t ldp, int64_t kc, float* c, int64_t ldc,
                    bool accumulate) {
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
      __m128 s = V::hsum4(acc[m][0], acc[m][1], acc[m][2], acc[m][3]);
      if (accumulate) s = _mm_add_ps(s, _mm_loadu_ps(c + m * ldc));
      _mm_storeu_ps(c + m * ldc, s);
    }
  }
};

LC_END_TARGET  // avx512bf16

// ---------------------------------------------------------------------------------------------
// int4 GEMV with int8 activations (AVX512-VNNI; matmul precision other than 'highest', groups a
// multiple of 128). x is quantized per row and 128 columns to int8 (scale max|x| / 127, round half
// to even): relative error at most 1/254 of each 128-column block's max |x|. A 64-byte load holds
// the codes of 128 columns (4 blocks of the format); its low nibbles meet x's columns
// 32b + j (b < 4, j < 16) and the high nibbles 32b + 16 + j, so x is stored in that order (64 low,
// then 64 high). vpdpbusd sums code x int8 products in int32 (<= 128 * 15 * 127: no overflow);
// per 128 columns: y += s * sx * (sum q x_q - z * sum x_q), the sums exact in int32.

LC_BEGIN_TARGET(LC_ISA_AVX512, "avx512vnni")

    // xq [T][chunks][128] (permuted as above), sx / xsum [T][chunks].
    void int4_quantize_x(const float* x, int64_t T, int64_t K, int64_t chunks, int8_t* xq, float* sx, int32_t* xsum) {
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

template <int T, int R>
void int4_vnni_rows(const int8_t* xq, const float* sx, const int32_t* xsum, int64_t chunks, const WeightRef& w, int64_t r,
                    float* part, int64_t ldp) {
  const int64_t per_group = w.group / 128, rb = chunks * 64;
  const uint8_t* wr[R];
  for (int i = 0; i < R; ++i) wr[i] = static_cast<const uint8_t*>(w.data) + (r + i) * rb;
  __m512 acc[T][R];
  float corr[T][R];
  for (int t = 0; t < T; ++t)
    for (int i = 0; i < R; ++i) acc[t][i] = _mm512_setzero_ps(), corr[t][i] = 0;
  const __m512i m4 = _mm512_set1_epi8(0x0f);
  float s[R], z[R];
  for (int64_t ch = 0; ch < chunks; ++ch) {
    if (ch % per_group == 0)
      for (int i = 0; i < R; ++i) int4_group_params(w, r + i, ch / per_group, &s[i], &z[i]);
    __m512i lo[R], hi[R];
    for (int i = 0; i < R; ++i) {
      _mm_prefetch(reinterpret_cast<const char*>(wr[i] + ch * 64 + 1024), _MM_HINT_T0);
      const __m512i v = _mm512_loadu_si512(wr[i] + ch * 64);
      lo[i] = _mm512_and_si512(v, m4);
      hi[i] = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
    }
    for (int t = 0; t < T; ++t) {
      const int8_t* q = xq + (t * chunks + ch) * 128;
      const __m512i xl = _mm512_loadu_si512(q), xh = _mm512_loadu_si512(q + 64);
      const float sxt = sx[t * chunks + ch];
      const float xs = static_cast<float>(xsum[t * chunks + ch]);
      for (int i = 0; i < R; ++i) {
        const __m512i d = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lo[i], xl), hi[i], xh);
        const float f = s[i] * sxt;
        acc[t][i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), _mm512_set1_ps(f), acc[t][i]);
        corr[t][i] += f * z[i] * xs;
      }
    }
  }
  for (int t = 0; t < T; ++t)
    for (int i = 0; i < R; ++i) part[t * ldp + i] = _mm512_reduce_add_ps(acc[t][i]) - corr[t][i];
}

template <int T>
void gemv_int4_vnni_t(const float* x, const WeightRef& w, void* y, DType yt) {
  constexpr int R = T <= 2 ? 4 : 2;
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
      int4_vnni_rows<T, R>(xq, sx, xsum, chunks, w, r, &part[0][0], R);
      store(r, R);
    }
    for (; r < n1; ++r) {
      int4_vnni_rows<T, 1>(xq, sx, xsum, chunks, w, r, &part[0][0], R);
      store(r, 1);
    }
  });
}

void gemv_int4_vnni(int64_t t, const float* x, const WeightRef& w, void* y, DType yt) {
  switch (t) {
    case 1: gemv_int4_vnni_t<1>(x, w, y, yt); break;
    case 2: gemv_int4_vnni_t<2>(x, w, y, yt); break;
    case 3: gemv_int4_vnni_t<3>(x, w, y, yt); break;
    case 4: gemv_int4_vnni_t<4>(x, w, y, yt); break;
    case 5: gemv_int4_vnni_t<5>(x, w, y, yt); break;
    case 6: gemv_int4_vnni_t<6>(x, w, y, yt); break;
    case 7: gemv_int4_vnni_t<7>(x, w, y, yt); break;
    case 8: gemv_int4_vnni_t<8>(x, w, y, yt); break;
  }
}

LC_END_TARGET  // avx512vnni

}  // namespace

void linear_avx512(int64_t t, const void* x, DType xt, const WeightRef& w, void* y, DType yt, bool bf16_dot, bool bf16_dequant,
                   bool int8_act) {
  const bool quantized = w.dtype == DType::FP8_E4M3 || w.dtype == DType::I8 || w.dtype == DType::I4;
  if (t > kGemvMaxRows && bf16_dot && (w.dtype == DType::BF16 || (bf16_dequant && quantized))) {
    gemm<GemmBF16>(t, x, xt, w, y, yt);
    return;
  }
  if (t <= kGemvMaxRows && int8_act && w.dtype == DType::I4 && w.group % 128 == 0) {
    const float* xf = static_cast<const float*>(x);
    if (xt == DType::BF16) {
      float* buf = static_cast<float*>(scratch(kScratchX, t * w.k * sizeof(float)));
      bf16_to_f32_rows<simd::Avx512>(static_cast<const uint16_t*>(x), t * w.k, buf);
      xf = buf;
    }
    gemv_int4_vnni(t, xf, w, y, yt);
    return;
  }
  linear_vec<Avx512Linear>(t, x, xt, w, y, yt);
}

double read_sum_avx512(const void* p, int64_t bytes) { return read_sum_vec<simd::Avx512>(p, bytes); }

}  // namespace lc::cpu::linear_detail

LC_END_TARGET
