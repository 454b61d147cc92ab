// AVX-512 linear layers: the drivers of linear_vec.h compiled for 16-lane vectors and 32
// registers, plus the GEMM for bf16 weights on CPUs with AVX512-BF16 (vdpbf16ps). linear.cc calls
// in only after checking isa().
#include "linear_kernels.h"
#include "simd.h"
#include "threadpool.h"

LC_BEGIN_TARGET(LC_ISA_AVX512)
#include "linear_vec.h"
LC_BEGIN_TARGET(LC_ISA_AVX512VNNI)
#include "linear_i8act.h"
LC_END_TARGET

namespace lc::cpu::linear_detail {
namespace {

// GEMV shapes: see linear_vec.h (R rows per pass sharing every x load, over the whole k).
struct Avx512Linear {
  using V = simd::Avx512;
  template <int T>
  using GemvShape = GemvShapeOf<T <= 4 ? 4 : 2>;
  template <int T>
  using Fp8Shape = Fp8ShapeOf<T <= 4 ? 4 : 2, 1>;
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
// The quantized panels are decoded 32 columns at a time and rounded by vcvtne2ps2bf16 (nearest even,
// NaN kept quiet; denormals flushed, which vdpbf16ps does to its inputs anyway): at 16-64 x rows a
// panel's decode costs as much as its products, so it takes the fewest instructions per column.

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

  // 32 columns as bf16: lo = columns 0..15, hi = 16..31.
  static __m512i bf16x32(__m512 lo, __m512 hi) { return (__m512i)_mm512_cvtne2ps_pbh(hi, lo); }

  // The quantized panels: W[n0 + j, k0 + c] for c < klen as bf16 (zero from klen to kcp, a multiple
  // of 32, and in rows nlen..nrows). k0 is a multiple of 128 (fp8 blocks and int4 groups whole).
  // dec(row, c, cols) gives the row's columns c .. c + 31 (those >= cols are zeroed here).
  template <class Dec>
  static void pack_rows(int64_t nlen, int64_t nrows, int64_t klen, int64_t kcp, uint16_t* p, Dec dec) {
    for (int64_t j = 0; j < nrows; ++j) {
      uint16_t* dst = p + j * kcp;
      if (j >= nlen) {
        std::memset(dst, 0, kcp * sizeof(uint16_t));
        continue;
      }
      for (int64_t c = 0; c < kcp; c += 32) {
        const __m512i v = c < klen ? dec(j, c) : _mm512_setzero_si512();
        _mm512_storeu_si512(dst + c, klen - c >= 32 ? v : _mm512_maskz_mov_epi16(mask32(klen - c), v));
      }
    }
  }
  static __mmask32 mask32(int64_t n) { return n >= 32 ? ~__mmask32{0} : n <= 0 ? 0 : (__mmask32{1} << n) - 1; }
  // 32 bytes at p, those from n on zero (a masked load only for a row's last block)
  static __m256i load32(const void* p, int64_t n) {
    return n >= 32 ? _mm256_loadu_si256(static_cast<const __m256i*>(p)) : _mm256_maskz_loadu_epi8(mask32(n), p);
  }

  static void pack_quantized(const WeightRef& w, int64_t n0, int64_t nlen, int64_t nrows, int64_t k0, int64_t klen, int64_t kcp,
                             uint16_t* p) {
    if (w.dtype == DType::I4) {
      // codes q (0..15) of 32 columns in one 16-byte load; (q - z) * s as fma(q, s, -z s) in f32
      const int64_t rb = int4_row_bytes(w.k, w.group);
      int64_t grow = -1, gcol = -1;
      __m512 sv = _mm512_setzero_ps(), mv = sv;
      pack_rows(nlen, nrows, klen, kcp, p, [&](int64_t j, int64_t c) {
        const int64_t gi = (k0 + c) / w.group;
        if (j != grow || gi != gcol) {
          float s, z;
          int4_group_params(w, n0 + j, gi, &s, &z);
          sv = _mm512_set1_ps(s), mv = _mm512_set1_ps(-z * s), grow = j, gcol = gi;
        }
        const __m512i e = _mm512_cvtepu8_epi32(_mm_loadu_si128(
            reinterpret_cast<const __m128i*>(static_cast<const uint8_t*>(w.data) + (n0 + j) * rb + (k0 + c) / 2)));
        return bf16x32(_mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_and_si512(e, _mm512_set1_epi32(15))), sv, mv),
                       _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(e, 4)), sv, mv));
      });
    } else if (w.dtype == DType::I8) {  // the exact codes; the row scale joins the finished sums
      pack_rows(nlen, nrows, klen, kcp, p, [&](int64_t j, int64_t c) {
        const int8_t* src = static_cast<const int8_t*>(w.data) + (n0 + j) * w.k + k0 + c;
        const __m256i b = load32(src, klen - c);
        return bf16x32(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(b))),
                       _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256(b, 1))));
      });
    } else {  // fp8 e4m3: bits << 7 (sign kept) are the f16 of value * 2^-8; codes 0x7f / 0xff -> NaN
      int64_t brow = -1, bcol = -1;
      __m512 sv = _mm512_setzero_ps();
      pack_rows(nlen, nrows, klen, kcp, p, [&](int64_t j, int64_t c) {
        const int64_t kb = (k0 + c) / 128;
        if (j != brow || kb != bcol) sv = _mm512_set1_ps(fp8_block_scale(w, n0 + j, kb) * 256.0f), brow = j, bcol = kb;
        const uint8_t* src = static_cast<const uint8_t*>(w.data) + (n0 + j) * w.k + k0 + c;
        const __m256i b = load32(src, klen - c);
        const __m512i h =
            _mm512_and_si512(_mm512_slli_epi16(_mm512_cvtepi8_epi16(b), 7), _mm512_set1_epi16(static_cast<short>(0xbfff)));
        const __m512i v = bf16x32(_mm512_mul_ps(_mm512_cvtph_ps(_mm512_castsi512_si256(h)), sv),
                                  _mm512_mul_ps(_mm512_cvtph_ps(_mm512_extracti64x4_epi64(h, 1)), sv));
        const __mmask32 nan =
            _mm256_cmpeq_epi8_mask(_mm256_or_si256(b, _mm256_set1_epi8(static_cast<char>(0x80))), _mm256_set1_epi8(-1));
        return _mm512_mask_mov_epi16(v, nan, _mm512_set1_epi16(0x7fc0));
      });
    }
  }

  static void pack_panel(const WeightRef& w, int64_t n0, int64_t nlen, int64_t nrows, int64_t k0, int64_t klen, int64_t kcp,
                         uint16_t* p) {
    if (w.dtype != DType::BF16) {  // fp8 / int8 / int4: dequantized (int8: the exact codes) and rounded to bf16
      pack_quantized(w, n0, nlen, nrows, k0, klen, kcp, p);
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

  static bool in_place(const WeightRef& w, int64_t nlen, int64_t klen) {
    return w.dtype == DType::BF16 && nlen % 4 == 0 && klen % kStep == 0;
  }

  template <int M>
  static void micro(const uint16_t* x, int64_t ldx, const uint16_t* p, int64_t ldp, int64_t kc, float* c, int64_t ldc,
                    bool accumulate, const uint16_t* pf, const uint16_t* pf2) {
    __m512 acc[M][4];
    for (int m = 0; m < M; ++m)
      for (int j = 0; j < 4; ++j) acc[m][j] = _mm512_setzero_ps();
    for (int64_t k = 0; k < kc; k += 32) {
      prefetch_group(pf, ldp, k);
      prefetch_group_l2(pf2, ldp, k);
      __m512bh w0 = (__m512bh)_mm512_loadu_si512(p + k), w1 = (__m512bh)_mm512_loadu_si512(p + ldp + k);
      __m512bh w2 = (__m512bh)_mm512_loadu_si512(p + 2 * ldp + k), w3 = (__m512bh)_mm512_loadu_si512(p + 3 * ldp + k);
      for (int m = 0; m < M; ++m) {
        __m512bh xv = (__m512bh)_mm512_loadu_si512(x + m * ldx + k);
        acc[m][0] = _mm512_dpbf16_ps(acc[m][0], xv, w0);
        acc[m][1] = _mm512_dpbf16_ps(acc[m][1], xv, w1);
        acc[m][2] = _mm512_dpbf16_ps(acc[m][2], xv, w2);
        acc[m][3] = _mm512_dpbf16_ps(acc[m][3], xv, w3);
      }
    }
    for (int m = 0; m < M; ++m) {
      __m128 s = V::hsum4(acc[m][0], acc[m][1], acc[m][2], acc[m][3]);
      if (accumulate) s = _mm_add_ps(s, _mm_loadu_ps(c + m * ldc));
      _mm_storeu_ps(c + m * ldc, s);
    }
  }
};

LC_END_TARGET  // avx512bf16

}  // namespace

// bf16 weights at t = kBf16FewRowsMin .. kGemvMaxRows rows (batch 5-8 decode steps, the MTP head's
// lm_head at batch 5-8, a verify of 3-4 sequences) also run the AVX512-BF16 GEMM (in place, no
// panel copy): vdpbf16ps does 32 multiply-adds per instruction where the fp32-FMA GEMV does 16,
// and at 5+ rows the GEMV is FMA-bound, not byte-bound. Quantized weights keep the GEMV there
// (their panel decode would cost as much as the products at so few rows).
constexpr int64_t kBf16FewRowsMin = 5;

void linear_avx512(int64_t t, const void* x, DType xt, const WeightRef& w, void* y, DType yt, bool bf16_dot, bool bf16_dequant,
                   bool int8_act) {
  const bool quantized = w.dtype == DType::FP8_E4M3 || w.dtype == DType::I8 || w.dtype == DType::I4;
  const int64_t gemm_min = w.dtype == DType::BF16 ? kBf16FewRowsMin : kGemvMaxRows + 1;
  if (t >= gemm_min && bf16_dot && (w.dtype == DType::BF16 || (bf16_dequant && quantized))) {
    gemm<GemmBF16>(t, x, xt, w, y, yt);
    return;
  }
  if (t <= kGemvMaxRows && int8_act && int4_int8_act_shape(w)) {
    gemv_int4_i8<simd::Avx512Vnni>(t, x, xt, w, y, yt);
    return;
  }
  linear_vec<Avx512Linear>(t, x, xt, w, y, yt);
}

uint64_t read_sum_lines_avx512(const ReadSpan* spans, int64_t n) { return read_sum_lines<simd::Avx512>(spans, n); }

}  // namespace lc::cpu::linear_detail

LC_END_TARGET
