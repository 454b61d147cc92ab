// AVX-512 linear layers: the drivers of linear_vec.h compiled for 16-lane vectors and 32
// registers, plus the GEMM for bf16 weights on CPUs with AVX512-BF16 (vdpbf16ps). linear.cc calls
// in only after checking isa().
#include <atomic>
#include <cmath>
#include <cstring>

#include "features.h"
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
  static constexpr int64_t kGemmMR = 6;             // 6 x 4 accumulators + 6 x + 1 weight = 31 of 32 registers
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

// ---------------------------------------------------------------------------------------------
// 9-1024 rows of x times bf16 weights read in place, "lanes = rows" (a batch-8 verify step's 16 rows;
// past 16 rows in chunks of 16: lanes_gemm).
// The GEMM above puts k in the lanes: every output ends as 16 lane sums, reduced by hsum4 per 4
// outputs and k block (~15-20% of its FP instructions at k = 512). Here the 16 lanes are x's 16 rows:
// x is packed as [k / 2][16 rows][2 bf16] (xq, 16 * k * 2 bytes, once per call), and each output n's
// accumulators take vdpbf16ps(acc, xq[p], broadcast(W[n][2p], W[n][2p + 1])): the same 32
// multiply-adds per instruction, no horizontal sums, W still read where it is stored (4 bytes of a
// row per instruction, an embedded broadcast). A register block is kLanesGroups x 4 outputs with
// kLanesChains accumulators each (pairs p, p + 2, ...: 24 chains cover vdpbf16ps's latency) sharing
// each xq load. bench/native/fewrow_gemm.cc, 16 rows, 1 thread, warm: 189-214 GFLOP/s against the
// hsum4 GEMM's 138-188; 2 threads, weights from DRAM: 1.3-1.5x faster (bench/RESULTS.md wt14-verify).
// With the rows' addresses spelled out (dp_pair, session 16): 220-224 at k = 512 / 1024 (the
// instruction's ceiling: 233), 2 threads 380-422; rows 4 KiB apart skewed (lanes_block_skewed).
// 24 outputs x 1 chain ran k = 1024 at half that rate (24 rows 2 KiB apart share two L1 sets);
// 8 x 2, 16 x 1, 4 x 2 and 8 x 1 ran 5-20% below 12 x 2.
// Each output is summed in one fixed order (its two chains over k -- for skewed rows from its
// group's start line around --, then their sum) whatever the split over threads: the same bits at
// any thread count.
constexpr int64_t kLanesRows = 16;       // x rows per vector: one per fp32 lane
constexpr int kLanesGroups = 3;          // groups of 4 outputs per register block
constexpr int kLanesChains = 2;          // accumulators per output: 3 x 4 x 2 = 24 + xq of 32 registers
constexpr int64_t kLanesItemBlocks = 8;  // register blocks per item of the split, at most
// Each weight row's line kLanesL1Lines lines ahead is requested into L1 (2 or 8: the same, 8 0-10%
// slower in session 16; none: 5-10% slower from DRAM), and the next register block's rows into L2
// over the current block (without: 1.3-1.6x slower from DRAM, as without the GEMM's far requests;
// two blocks ahead: 2-8% slower).
constexpr int64_t kLanesL1Lines = 4;

// xq[p * 16 + m] = x[m][2p] | x[m][2p + 1] << 16 as bf16 (f32 x rounded to nearest even), zero for
// rows m >= t; k a multiple of 32.
inline void lanes_pack_x(const void* x, DType xt, int64_t t, int64_t k, uint32_t* xq) {
  for (int64_t c = 0; c < k; c += 32) {
    __m512i r[16], out[16];
    for (int64_t m = 0; m < kLanesRows; ++m) {
      if (m >= t)
        r[m] = _mm512_setzero_si512();
      else if (xt == DType::BF16)
        r[m] = _mm512_loadu_si512(static_cast<const uint16_t*>(x) + m * k + c);
      else {
        const float* src = static_cast<const float*>(x) + m * k + c;
        r[m] = GemmBF16::bf16x32(_mm512_loadu_ps(src), _mm512_loadu_ps(src + 16));
      }
    }
    simd::Avx512::transpose16(r, out);
    for (int j = 0; j < 16; ++j) _mm512_store_si512(xq + (c / 2 + j) * kLanesRows, out[j]);
  }
}

// acc + x pairs . the bf16 pair at base + D (+ ld or 2 ld: Form 1, 2) broadcast to all 16 lanes, as
// one instruction with an embedded broadcast. The address is spelled out (base, index, scale,
// displacement) so a block's 12 weight rows take 4 base registers and one stride: with the rows'
// addresses left to GCC (12) it kept 6 of them in xmm registers and on the stack and moved them back
// before their products (11 vmovq, ~60 movs per 192 products); the intrinsic emitted a separate
// vpbroadcastd. volatile: the weights are read here, not through an operand GCC knows of, so no
// product may move above the stores of lanes_gemm's tail copy.
template <int Form, int D>
__attribute__((always_inline)) inline __m512 dp_pair(__m512 acc, __m512bh xv, const char* base, int64_t ld) {
  if constexpr (Form == 0)
    asm volatile("vdpbf16ps %c3(%2)%{1to16%}, %1, %0" : "+v"(acc) : "v"(xv), "r"(base), "i"(D));
  else if constexpr (Form == 1)
    asm volatile("vdpbf16ps %c4(%2,%3,1)%{1to16%}, %1, %0" : "+v"(acc) : "v"(xv), "r"(base), "r"(ld), "i"(D));
  else
    asm volatile("vdpbf16ps %c4(%2,%3,2)%{1to16%}, %1, %0" : "+v"(acc) : "v"(xv), "r"(base), "r"(ld), "i"(D));
  return acc;
}
// The line at base + D (+ ld, 2 ld) into L1 (Hint 0) or L2 (1), addressed as dp_pair's.
template <int Form, int D, int Hint>
__attribute__((always_inline)) inline void prefetch_row(const char* base, int64_t ld) {
  if constexpr (Form == 0)
    __builtin_prefetch(base + D, 0, Hint == 0 ? 3 : 2);
  else
    __builtin_prefetch(base + Form * ld + D, 0, Hint == 0 ? 3 : 2);
}

// Weight row r of a block (r < 12) is base[r / 3] + (r % 3) ld: base[i] = w + 3 i ld.
#define LC_LANES_ROW(r, P)                                                                                          \
  if constexpr (r < 4 * G) {                                                                                        \
    if constexpr (P % 2 == 0)                                                                                       \
      a##r##_0 = dp_pair<r % 3, 4 * P>(a##r##_0, xv, r / 3 == 0 ? b0 : r / 3 == 1 ? b1 : r / 3 == 2 ? b2 : b3, ld); \
    else                                                                                                            \
      a##r##_1 = dp_pair<r % 3, 4 * P>(a##r##_1, xv, r / 3 == 0 ? b0 : r / 3 == 1 ? b1 : r / 3 == 2 ? b2 : b3, ld); \
  }
#define LC_LANES_PAIR(P)                                                  \
  {                                                                       \
    const __m512bh xv = (__m512bh)_mm512_load_si512(xb + P * kLanesRows); \
    LC_LANES_PF1(P);                                                      \
    LC_LANES_PF2(P - 4);                                                  \
    LC_LANES_ROW(0, P);                                                   \
    LC_LANES_ROW(1, P);                                                   \
    LC_LANES_ROW(2, P);                                                   \
    LC_LANES_ROW(3, P);                                                   \
    LC_LANES_ROW(4, P);                                                   \
    LC_LANES_ROW(5, P);                                                   \
    LC_LANES_ROW(6, P);                                                   \
    LC_LANES_ROW(7, P);                                                   \
    LC_LANES_ROW(8, P);                                                   \
    LC_LANES_ROW(9, P);                                                   \
    LC_LANES_ROW(10, P);                                                  \
    LC_LANES_ROW(11, P);                                                  \
  }
#define LC_LANES_PF1(r)                  \
  if constexpr ((r) >= 0 && (r) < 4 * G) \
    prefetch_row<(r) % 3, 64 * kLanesL1Lines, 0>((r) / 3 == 0 ? b0 : (r) / 3 == 1 ? b1 : (r) / 3 == 2 ? b2 : b3, ld);
#define LC_LANES_PF2(r) \
  if constexpr ((r) >= 0 && (r) < 4 * G) __builtin_prefetch(pn + 64 * (r), 0, 2);
#define LC_LANES_STORE(r) \
  if constexpr (r < 4 * G) _mm512_store_ps(out + r * kLanesRows, _mm512_add_ps(a##r##_0, a##r##_1));

// out[r][m] = sum_k x[m][k] W[r][k] for the 4G weight rows r at w + r k, k a multiple of 32;
// kLanesChains = 2 chains per output (even and odd pairs, added at the end). The accumulators are
// named variables: as an array, GCC stored every update to the stack.
// Requests: each row's line kLanesL1Lines on into L1 (past a row's end: the next row's first lines,
// already here, or for the last row the next block's), and the 4G lines of `next` (the next block's
// rows, contiguous in W; the current block's own when there is none) on per line of k into L2, so
// the whole next block is requested over this one. One request per pair (row r's at pair r, the L2
// one 4 pairs later), not a burst of 24 per line: 2 threads, from DRAM, 0-4% faster.
template <int G>
__attribute__((always_inline)) inline void lanes_block(const uint32_t* xq, const uint16_t* w, int64_t k, float* out,
                                                       const uint16_t* next) {
  static_assert(G >= 1 && G <= kLanesGroups && kLanesGroups == 3 && kLanesChains == 2, "lanes_block: 1 to 3 groups of 4 outputs");
  const __m512 z = _mm512_setzero_ps();
  __m512 a0_0 = z, a0_1 = z, a1_0 = z, a1_1 = z, a2_0 = z, a2_1 = z, a3_0 = z, a3_1 = z, a4_0 = z, a4_1 = z, a5_0 = z, a5_1 = z;
  __m512 a6_0 = z, a6_1 = z, a7_0 = z, a7_1 = z, a8_0 = z, a8_1 = z, a9_0 = z, a9_1 = z, a10_0 = z, a10_1 = z, a11_0 = z,
         a11_1 = z;
  const int64_t ld = k * 2;
  const char* b0 = reinterpret_cast<const char*>(w);
  const char *b1 = b0 + 3 * ld, *b2 = b0 + 6 * ld, *b3 = b0 + 9 * ld;
  const char* pn = reinterpret_cast<const char*>(next);
  const uint32_t* xb = xq;
  for (const uint32_t* const xe = xq + k / 2 * kLanesRows; xb != xe; xb += 16 * kLanesRows) {
    LC_LANES_PAIR(0);
    LC_LANES_PAIR(1);
    LC_LANES_PAIR(2);
    LC_LANES_PAIR(3);
    LC_LANES_PAIR(4);
    LC_LANES_PAIR(5);
    LC_LANES_PAIR(6);
    LC_LANES_PAIR(7);
    LC_LANES_PAIR(8);
    LC_LANES_PAIR(9);
    LC_LANES_PAIR(10);
    LC_LANES_PAIR(11);
    LC_LANES_PAIR(12);
    LC_LANES_PAIR(13);
    LC_LANES_PAIR(14);
    LC_LANES_PAIR(15);
    b0 += 64, b1 += 64, b2 += 64, b3 += 64, pn += 64 * 4 * G;
  }
  LC_LANES_STORE(0);
  LC_LANES_STORE(1);
  LC_LANES_STORE(2);
  LC_LANES_STORE(3);
  LC_LANES_STORE(4);
  LC_LANES_STORE(5);
  LC_LANES_STORE(6);
  LC_LANES_STORE(7);
  LC_LANES_STORE(8);
  LC_LANES_STORE(9);
  LC_LANES_STORE(10);
  LC_LANES_STORE(11);
}

// Rows 4 KiB apart (k a multiple of 2048: LongCat's k = 6144 too) put lanes_block's 12 lines at one
// k offset into one L1 set of 8 ways: the broadcasts miss L1 (1 thread: 147-181 GFLOP/s against
// 210-231 at k = 2560). Here group g of 4 rows starts at line g * kLanesSkew and wraps around (the
// groups' lines 21 sets apart), each group with its own x load per pair: each output still sums
// its pairs in one fixed order (its chains rotated by its group's start), at any thread count.
constexpr int64_t kLanesSkew = 21;
inline bool lanes_skewed(int64_t k) { return (k * 2) % 4096 == 0; }

// Group g's row i at rg (+ ld, 2 ld, 3 ld: 3 ld as the index ld3)
#define LC_SKEW_DP(g, i, r, P)                                                               \
  if constexpr (g < G) {                                                                     \
    if constexpr (P % 2 == 0)                                                                \
      a##r##_0 = dp_pair<(i == 3 ? 1 : i), 4 * P>(a##r##_0, x##g, gp##g, i == 3 ? ld3 : ld); \
    else                                                                                     \
      a##r##_1 = dp_pair<(i == 3 ? 1 : i), 4 * P>(a##r##_1, x##g, gp##g, i == 3 ? ld3 : ld); \
  }
#define LC_SKEW_PF1(r)                                              \
  if constexpr ((r) < 4 * G) {                                      \
    const char* gp = (r) / 4 == 0 ? gp0 : (r) / 4 == 1 ? gp1 : gp2; \
    if constexpr ((r) % 4 == 3)                                     \
      prefetch_row<1, 64 * kLanesL1Lines, 0>(gp, ld3);              \
    else                                                            \
      prefetch_row<(r) % 4, 64 * kLanesL1Lines, 0>(gp, ld);         \
  }
#define LC_SKEW_PAIR(P)                                                          \
  {                                                                              \
    const __m512bh x0 = (__m512bh)_mm512_load_si512(x0p + P * kLanesRows);       \
    __m512bh x1, x2;                                                             \
    if constexpr (G > 1) x1 = (__m512bh)_mm512_load_si512(x1p + P * kLanesRows); \
    if constexpr (G > 2) x2 = (__m512bh)_mm512_load_si512(x2p + P * kLanesRows); \
    LC_SKEW_PF1(P);                                                              \
    LC_LANES_PF2(P - 4);                                                         \
    LC_SKEW_DP(0, 0, 0, P);                                                      \
    LC_SKEW_DP(0, 1, 1, P);                                                      \
    LC_SKEW_DP(0, 2, 2, P);                                                      \
    LC_SKEW_DP(0, 3, 3, P);                                                      \
    LC_SKEW_DP(1, 0, 4, P);                                                      \
    LC_SKEW_DP(1, 1, 5, P);                                                      \
    LC_SKEW_DP(1, 2, 6, P);                                                      \
    LC_SKEW_DP(1, 3, 7, P);                                                      \
    LC_SKEW_DP(2, 0, 8, P);                                                      \
    LC_SKEW_DP(2, 1, 9, P);                                                      \
    LC_SKEW_DP(2, 2, 10, P);                                                     \
    LC_SKEW_DP(2, 3, 11, P);                                                     \
  }
// Group g's row and x pointers one line on, back to line 0 at the row's end.
#define LC_SKEW_STEP(g)                                       \
  if constexpr (g < G) {                                      \
    gp##g += 64, x##g##p += 16 * kLanesRows;                  \
    if (++l##g == lines) gp##g -= ld, x##g##p = xq, l##g = 0; \
  }

// lanes_block for lanes_skewed(k) (k >= 2048, so 2 kLanesSkew < k / 32 lines).
template <int G>
__attribute__((always_inline)) inline void lanes_block_skewed(const uint32_t* xq, const uint16_t* w, int64_t k, float* out,
                                                              const uint16_t* next) {
  static_assert(G >= 1 && G <= kLanesGroups && kLanesGroups == 3 && kLanesChains == 2, "lanes_block: 1 to 3 groups of 4 outputs");
  const __m512 z = _mm512_setzero_ps();
  __m512 a0_0 = z, a0_1 = z, a1_0 = z, a1_1 = z, a2_0 = z, a2_1 = z, a3_0 = z, a3_1 = z, a4_0 = z, a4_1 = z, a5_0 = z, a5_1 = z;
  __m512 a6_0 = z, a6_1 = z, a7_0 = z, a7_1 = z, a8_0 = z, a8_1 = z, a9_0 = z, a9_1 = z, a10_0 = z, a10_1 = z, a11_0 = z,
         a11_1 = z;
  const int64_t ld = k * 2, ld3 = 3 * ld, lines = k / 32;
  int64_t l0 = 0, l1 = kLanesSkew, l2 = 2 * kLanesSkew;
  const char* gp0 = reinterpret_cast<const char*>(w);
  const char* gp1 = gp0 + 4 * ld + l1 * 64;
  const char* gp2 = gp0 + 8 * ld + l2 * 64;
  const uint32_t *x0p = xq, *x1p = xq + l1 * 16 * kLanesRows, *x2p = xq + l2 * 16 * kLanesRows;
  const char* pn = reinterpret_cast<const char*>(next);
  for (int64_t q = 0; q < lines; ++q) {
    LC_SKEW_PAIR(0);
    LC_SKEW_PAIR(1);
    LC_SKEW_PAIR(2);
    LC_SKEW_PAIR(3);
    LC_SKEW_PAIR(4);
    LC_SKEW_PAIR(5);
    LC_SKEW_PAIR(6);
    LC_SKEW_PAIR(7);
    LC_SKEW_PAIR(8);
    LC_SKEW_PAIR(9);
    LC_SKEW_PAIR(10);
    LC_SKEW_PAIR(11);
    LC_SKEW_PAIR(12);
    LC_SKEW_PAIR(13);
    LC_SKEW_PAIR(14);
    LC_SKEW_PAIR(15);
    LC_SKEW_STEP(0);
    LC_SKEW_STEP(1);
    LC_SKEW_STEP(2);
    pn += 64 * 4 * G;
  }
  LC_LANES_STORE(0);
  LC_LANES_STORE(1);
  LC_LANES_STORE(2);
  LC_LANES_STORE(3);
  LC_LANES_STORE(4);
  LC_LANES_STORE(5);
  LC_LANES_STORE(6);
  LC_LANES_STORE(7);
  LC_LANES_STORE(8);
  LC_LANES_STORE(9);
  LC_LANES_STORE(10);
  LC_LANES_STORE(11);
}
#undef LC_SKEW_DP
#undef LC_SKEW_PF1
#undef LC_SKEW_PAIR
#undef LC_SKEW_STEP
#undef LC_LANES_ROW
#undef LC_LANES_PAIR
#undef LC_LANES_PF1
#undef LC_LANES_PF2
#undef LC_LANES_STORE

// y[t, n] for 9 <= t <= kLanesMaxRows, bf16 W with k a multiple of 32 (lanes_gemm_shape). Past 16
// rows x is packed as ceil(t / 16) chunks of 16 rows (the last zero-padded), and each register block
// of weights runs every chunk before the next block: the block's rows come from DRAM once, for the
// first chunk, and from L1 / L2 for the others (a 12-row block is 12 kB at k = 512, 48 at 2048),
// while each chunk's xq streams from L2. Each output's sum is the one lanes_block makes for its
// chunk: the same bits at any thread count and whatever the other chunks hold.
// bench/native/fewrow_gemm.cc against the hsum GEMM (2 threads, 1-24 MB; bench/RESULTS.md wt17-lanes):
// 32-64 rows 1.17-1.35x faster warm, 1.2-1.5x from DRAM; the zero rows of a last chunk cost as
// much as real ones, so 17-24 rows ran 0.63-0.99x, 25 0.91-1.01x, 28 1.01-1.15x: a split by blocks
// takes 17-27 rows to the GEMM. Prefill-sized x runs in groups of kLanesMaxChunks chunks (each
// item's weights reread from L2 per group): 96-256 rows 1.1-1.4x faster than the GEMM, 512-1024
// rows 1.02-1.25x (less at k = 2048-6144, where a group's xq outgrows L2); past kLanesMaxRows (not
// measured) the GEMM and its k blocks.
constexpr int64_t kLanesMaxChunks = 4;  // chunks whose outputs an item holds at once (24 KiB of stack)
constexpr int64_t kLanesMaxRows = 1024;
constexpr int64_t kLanesBlockSplitMinChunkedRows = 28;

// Small weights (up to kLanesRowSplitBytes) on several threads are split by x's 16-row chunks
// instead (items of all outputs and, when the chunks divide evenly over the threads, a thread's
// share of them, up to kLanesMaxChunks: each register block of weights runs them all while it is in
// L1 (q_a / q_b at 64 rows, 2 chunks per item against 1: 1.00-1.03x warm, 1.04-1.09x from DRAM); else
// one chunk and one of `threads` column ranges): each thread packs the chunks it runs into its own scratch,
// so the packing is spread over the threads and every thread has whole chunks' worth of products
// (a split by blocks leaves a 16-262 kB weight a few uneven items after the calling thread packed
// all of x alone: 2 threads, 131-262 kB at 16-64 rows 1.4-2.8x slower). The weights are read by
// every thread: small ones only. Each output's sum is the same lanes_block makes either way. Such
// weights take 17-27 rows here too, at any thread count (the bits must not depend on it): q_a
// 256 x 512, 2 threads 1.3-1.9x faster than the GEMM, 1 thread 0.71-1.0x.
// A weight whose products are fewer than kLanesRowSplitMinMacs multiply-adds (16 x 512 at 64 rows)
// stays one item of the calling thread: there a pool round trip and each thread's packing cost more
// than the products (2 threads: 16 x 512 at 16 / 32 rows 1.7x / 1.1x slower split by chunks, at
// 64 rows 1.25-1.75x faster).
constexpr int64_t kLanesRowSplitBytes = 512 * 1024, kLanesRowSplitMinMacs = int64_t{1} << 19;
bool lanes_small(int64_t t, const WeightRef& w) {
  return w.n * w.k * 2 <= kLanesRowSplitBytes && w.n * w.k * t >= kLanesRowSplitMinMacs;
}
// Up to kLanesRowSplitMediumBytes the split by chunks also serves a serving step's rows (at most
// kLanesMaxChunks chunks per thread: one item each when the chunks divide evenly), packed by the
// threads in parallel instead of by the calling thread alone before the split by blocks; each
// thread then streams the whole weight (from DRAM: twice the bytes of the split by blocks, at
// 16-64 rows far below the read bandwidth). 2 threads, 1 MB (1024 x 512, 512 x 1024): 16 rows
// 1.02-1.11x, 64 rows 1.03-1.13x faster alone; in small's 64-row step 0.94-0.95x the time, at 16 rows
// unchanged within noise (bench/RESULTS.md wt19-linear). The 4 MB lm_head at 32-64 rows from DRAM ran
// 0.93-0.98x, so larger weights keep the split by blocks.
constexpr int64_t kLanesRowSplitMediumBytes = int64_t{2} << 20;
bool lanes_row_split(int64_t t, const WeightRef& w, int threads) {
  if (threads < 2) return false;
  return lanes_small(t, w) ||
         (w.n * w.k * 2 <= kLanesRowSplitMediumBytes && ceil_div(t, kLanesRows) <= kLanesMaxChunks * threads);
}

bool lanes_gemm_shape(int64_t t, const WeightRef& w) {
  if (t <= kGemvMaxRows || t > kLanesMaxRows || w.dtype != DType::BF16 || w.k % 32 != 0) return false;
  return t <= kLanesRows || t >= kLanesBlockSplitMinChunkedRows || lanes_small(t, w);
}

// The chunks a thread's scratch holds (the first of its item's) for the lanes_gemm call with that number (row split).
std::atomic<uint64_t> g_lanes_calls{0};
thread_local uint64_t tl_lanes_call = 0;
thread_local int64_t tl_lanes_chunk = -1;

void lanes_gemm(int64_t t, const void* x, DType xt, const WeightRef& w, void* y, DType yt) {
  // The split by blocks (steal_for) takes items of whole register blocks of B outputs,
  // ~kFewRowItemBytes of weights (as the GEMM's panels; a small weight not split by chunks is one
  // item, run by the calling thread alone: a region job costs more than its products), at most
  // kLanesItemBlocks blocks; the split by chunks (lanes_small) runs them IB outputs at a time.
  constexpr int64_t B = 4 * kLanesGroups, OutFloats = B * kLanesItemBlocks * kLanesRows;
  const int64_t N = w.n, K = w.k, chunks = ceil_div(t, kLanesRows), chunk_words = K / 2 * kLanesRows;
  const int64_t fit = kFewRowItemBytes / (B * K * 2), IB = B * (fit < 1 ? 1 : fit > kLanesItemBlocks ? kLanesItemBlocks : fit);
  const int64_t x_row_bytes = K * (xt == DType::BF16 ? 2 : 4);
  const auto pack = [&](int64_t c, uint32_t* xc) {
    const int64_t rows = t - c * kLanesRows < kLanesRows ? t - c * kLanesRows : kLanesRows;
    lanes_pack_x(static_cast<const char*>(x) + c * kLanesRows * x_row_bytes, xt, rows, K, xc);
  };
  const uint16_t* W = static_cast<const uint16_t*>(w.data);
  const bool skewed = lanes_skewed(K);
  const auto block = [&](int64_t g, const uint32_t* xc, const uint16_t* wp, float* o, const uint16_t* next) {
    switch (g + (skewed ? 3 : 0)) {
      case 3: lanes_block<3>(xc, wp, K, o, next); break;
      case 2: lanes_block<2>(xc, wp, K, o, next); break;
      case 1: lanes_block<1>(xc, wp, K, o, next); break;
      case 6: lanes_block_skewed<3>(xc, wp, K, o, next); break;
      case 5: lanes_block_skewed<2>(xc, wp, K, o, next); break;
      default: lanes_block_skewed<1>(xc, wp, K, o, next); break;
    }
  };
  // outputs n0 .. n0 + nb - 1 (nb <= IB) of chunks c0 .. c1 - 1, chunk c packed at xb + (c - c0) chunk_words
  const auto rows_of = [&](int64_t n0, int64_t nb, int64_t c0, int64_t c1, const uint32_t* xb) {
    alignas(64) float out[kLanesMaxChunks * OutFloats];
    // the item in pieces of 4G rows (the last item of a weight whose n is not a multiple of B), and
    // a last 1-3 rows (n not a multiple of 4) copied into 4 zero-padded rows (this thread's scratch)
    for (int64_t r0 = 0; r0 < nb;) {
      const int64_t left = nb - r0, g = left >= B ? kLanesGroups : left >= 4 ? left / 4 : 1, piece = left >= 4 ? 4 * g : left;
      const uint16_t* wp = W + (n0 + r0) * K;
      // the next block's rows: W's next `piece` rows (past W's end: the block's own, already here),
      // requested into L2 over the first chunk
      const uint16_t* next = N - (n0 + r0 + piece) >= piece ? wp + piece * K : wp;
      if (piece < 4) {
        uint16_t* tail = static_cast<uint16_t*>(scratch(kScratchPanel, 4 * K * sizeof(uint16_t)));
        std::memcpy(tail, wp, piece * K * sizeof(uint16_t));
        std::memset(tail + piece * K, 0, (4 - piece) * K * sizeof(uint16_t));
        asm volatile("" ::: "memory");  // (lanes_block's products read the copy through asm)
        wp = next = tail;
      }
      for (int64_t c = c0; c < c1; ++c)
        block(piece < 4 ? 1 : g, xb + (c - c0) * chunk_words, wp, out + (c - c0) * OutFloats + r0 * kLanesRows,
              c == c0 ? next : wp);
      r0 += piece;
    }
    for (int64_t c = c0; c < c1; ++c) {
      const float* oc = out + (c - c0) * OutFloats;
      const int64_t m0 = c * kLanesRows, rows = t - m0 < kLanesRows ? t - m0 : kLanesRows;
      if (yt == DType::F32) {  // 16 outputs of every row at a time: out's 16 x 16 blocks transposed
        for (int64_t j0 = 0; j0 < nb; j0 += 16) {
          __m512i blk[16], rows_out[16];
          for (int64_t i = 0; i < 16; ++i)
            blk[i] = j0 + i < nb ? _mm512_load_si512(oc + (j0 + i) * kLanesRows) : _mm512_setzero_si512();
          simd::Avx512::transpose16(blk, rows_out);
          const __mmask16 mask = nb - j0 >= 16 ? __mmask16(0xffff) : static_cast<__mmask16>((1u << (nb - j0)) - 1u);
          for (int64_t m = 0; m < rows; ++m)
            _mm512_mask_storeu_ps(static_cast<float*>(y) + (m0 + m) * N + n0 + j0, mask, _mm512_castsi512_ps(rows_out[m]));
        }
      } else {  // bf16: rounded as store_y rounds (denormals kept, unlike vcvtneps2bf16)
        for (int64_t m = 0; m < rows; ++m)
          for (int64_t r = 0; r < nb; ++r) store_y(y, yt, (m0 + m) * N + n0 + r, oc[r * kLanesRows + m]);
      }
    }
  };
  const int P = ThreadPool::current().threads();
  if (lanes_row_split(t, w, P)) {
    const uint64_t call = g_lanes_calls.fetch_add(1, std::memory_order_relaxed) + 1;
    const int64_t nblocks = ceil_div(N, B), parts = chunks % P == 0 || nblocks < 2 ? 1 : (P < nblocks ? P : nblocks);
    const int64_t group = chunks % P == 0 ? std::min<int64_t>(kLanesMaxChunks, chunks / P) : 1;
    steal_for(ceil_div(chunks, group) * parts, [&](int64_t item) {
      const int64_t c0 = item / parts * group, c1 = std::min(chunks, c0 + group), part = item % parts;
      const int64_t n0 = nblocks * part / parts * B, n1e = nblocks * (part + 1) / parts * B, n1 = n1e < N ? n1e : N;
      uint32_t* xc = static_cast<uint32_t*>(scratch(kScratchX, group * chunk_words * sizeof(uint32_t)));
      if (tl_lanes_call != call || tl_lanes_chunk != c0) {
        for (int64_t c = c0; c < c1; ++c) pack(c, xc + (c - c0) * chunk_words);
        tl_lanes_call = call, tl_lanes_chunk = c0;
      }
      for (int64_t n = n0; n < n1; n += IB) rows_of(n, n1 - n < IB ? n1 - n : IB, c0, c1, xc);
    });
    return;
  }
  uint32_t* xq = static_cast<uint32_t*>(scratch(kScratchX, chunks * chunk_words * sizeof(uint32_t)));
  for (int64_t c = 0; c < chunks; ++c) pack(c, xq + c * chunk_words);
  steal_for(ceil_div(N, IB), [&](int64_t b) {
    for (int64_t c0 = 0; c0 < chunks; c0 += kLanesMaxChunks)
      rows_of(b * IB, N - b * IB < IB ? N - b * IB : IB, c0, chunks - c0 < kLanesMaxChunks ? chunks : c0 + kLanesMaxChunks,
              xq + c0 * chunk_words);
  });
}

// ---------------------------------------------------------------------------------------------
// 2-10 rows of x times bf16 weights read in place (a decode step of 2-10 sequences; the experts' 2-10
// rows each at 4-64 streams). The fp32-FMA GEMV spent 2 widenings + 2t FMAs per 32 weights of a row
// (at 4 rows FMA-bound: 1 thread warm 25 GB/s, this kernel 47), and the in-place GEMM (5-8 rows,
// before) read each weight vector once per strip of <= 6 rows and summed every k block horizontally.
// Here x is rounded to bf16 once per call as the GEMM does (precision 'highest' with f32 x never
// comes here; bf16 x times bf16 weights is exact either way) into [t][ldx] (zero-padded past k),
// and each weight vector (32 columns of a row, one line) is loaded once and taken by t vdpbf16ps, one
// accumulator per (x row, weight row) over the whole k: R weight rows per pass (t R + R + 1
// registers), each row stream requested ahead as gemv_rows does (into L2 kGemvFarPrefetchBytes on,
// at 2 rows also into L1 512 B on; on past a row's end into the rows the stream reads next), the
// passes split over the threads as the GEMV's (gemv_split). The accumulators are summed at the end by
// hsum4 (the same tree for every vector it takes), so an output's bits depend only on its x row and
// weight row: not on t, the pass, or the thread count. (The GEMM with one k block, k <= 1024, sums
// in the same order.) In the replayed steps (bench/RESULTS.md wt17-fewrow) medium's dense linears
// at 8 rows took 0.85-0.87x the GEMM's time (the 4 MB ones, k = 1024 and 2048: 0.84-0.89x), while
// alone (every call from DRAM, copies rotated) the GEMM read k = 1024 / 2048 at 8 rows 1.0-1.5x faster.
// 9-10 rows (session 18, bench/RESULTS.md wt18-moe): bf16 weights here instead of the lanes GEMM,
// which costs a whole 16-row chunk's products at any row count. 2 threads, copies rotated through
// 128 MB, 256 x 512 to 2048 x 1024: 0.80-0.94x the lanes GEMM's time at 9 rows, 0.81-1.02x at 10; at
// 11 0.91-1.10x, at 12-13 0.99-1.22x (slower for the 1-4 MB weights: this kernel's products run at
// well under the instruction's rate), at 14 (2 rows per pass: 31 registers) GCC spills the
// accumulators. The experts of small's 64-row step (a third with 9-16 rows): moe 0.96x alone
// (bench/moe-fewrow.mjs). fp8 weights stop at kGemvMaxRows (FewRowFp8::kMaxRows; 9-10 unmeasured).
constexpr int64_t kFewRowsMin = 2;

// The weight formats of fewrow_rows: kCols columns of a row per unit, decoded into kVecs vectors of
// 32 bf16 (x stored in the same column order), kR<T> weight rows per pass (registers: T R
// accumulators + kVecs R weights + 1 x + the format's constants <= 32), kScaleRows: the output rows
// that share an x copy (x is rounded to bf16 once per call, fp8's x once per 128-row scale block).
struct FewRowBf16 {
  static constexpr int64_t kCols = 32, kVecs = 1, kElemBytes = 2, kScaleRows = int64_t{1} << 62, kMaxRows = 10;
  // 6 x 4 + 4 + 1 = 29, 8 x 3 + 3 + 1 = 28, 10 x 2 + 2 + 1 = 23 of 32 registers
  template <int T>
  static constexpr int kR = T <= 6   ? 4
                            : T <= 8 ? 3
                                     : 2;
  // At 2-4 rows of x and rows of W of at most 1024 columns (small's and medium's experts, small's
  // dense linears: memory-bound there) one weight row per pass, a single stream of W read in order
  // instead of kR<T> rows side by side (the T + 1 loads per T products cost nothing there).
  // bench/RESULTS.md wt19-moe: bench/moe-fewrow.mjs (2 threads, experts from DRAM, alternated call
  // by call) 16 tokens 0.95-0.97x, 64 tokens 0.98-0.99x; at 5-8 rows no further gain at 16 tokens
  // and 1.04x at 64 (nearer their products' time). An 8192 x 4096 weight at 4 rows read 0.62x as
  // fast one row per pass (cpu-linear --gemv), so long rows keep kR<T>.
  static constexpr int kOneRowMaxRows = 4;
  static constexpr int64_t kOneRowMaxCols = 1024;
  const uint16_t* w;
  int64_t k;
  void decode(int64_t r, int64_t c, int64_t n, __m512bh* v) const {
    const uint16_t* p = w + r * k + c;
    v[0] = (__m512bh)(n >= kCols ? _mm512_loadu_si512(p) : _mm512_maskz_loadu_epi16(GemmBF16::mask32(n), p));
  }
};

namespace fewrow_bf16_isa {
#include "linear_fewrow.h"
}  // namespace fewrow_bf16_isa

// x's rows one line more than whole units apart: rows 4 KiB apart (k = 2048) would put all of x's
// lines at one k offset into one L1 set with the weight rows'
int64_t fewrow_ldx(int64_t k, int64_t cols) { return round_up(k, cols) + 32; }

void fewrow_bf16(int64_t t, const void* x, DType xt, const WeightRef& w, void* y, DType yt) {
  const int64_t K = w.k, ldx = fewrow_ldx(K, FewRowBf16::kCols);
  uint16_t* xq = static_cast<uint16_t*>(scratch(kScratchX, t * ldx * sizeof(uint16_t)));
  GemmBF16::pack_x(x, xt, t, 0, t, K, ldx, xq);
  fewrow_bf16_isa::fewrow_dispatch(t, FewRowBf16{static_cast<const uint16_t*>(w.data), K}, w, ldx, y, yt,
                                   [&](int64_t, int64_t*) { return static_cast<const uint16_t*>(xq); });
}

// fp8 e4m3 (the bytes' low 7 bits) -> bf16 bits, exact (3 mantissa bits < 7, exponents 2^-9 .. 2^8),
// subnormals included, 0x7f -> NaN; as two 128-byte tables (low byte, high byte) for vpermi2b.
struct Fp8Bf16Tables {
  alignas(64) uint8_t lo[128], hi[128];
  Fp8Bf16Tables() {
    for (int c = 0; c < 128; ++c) {
      const int e = c >> 3, m = c & 7;
      const float v = e == 0 ? std::ldexp(static_cast<float>(m), -9) : std::ldexp(static_cast<float>(8 + m), e - 10);
      uint32_t bits;
      std::memcpy(&bits, &v, 4);
      const uint16_t b = c == 0x7f ? 0x7fc0 : static_cast<uint16_t>(bits >> 16);
      lo[c] = static_cast<uint8_t>(b & 0xff), hi[c] = static_cast<uint8_t>(b >> 8);
    }
  }
};

LC_BEGIN_TARGET(LC_ISA_AVX512BF16_VBMI)

// fp8 e4m3 with 128 x 128 block scales (AVX512-VBMI): 64 codes per load, decoded by two vpermi2b
// (low and high bytes of the exact bf16 value, the sign or'ed into the high byte), the bytes joined
// by vpunpck{l,h}bw: vector 0 holds the columns 0-7, 16-23, 32-39, 48-55 of the 64, vector 1 the
// others (fewrow_fp8_prep_x stores x in that order). The scale multiplies x (per 128 columns of a
// 128-row block, as the fp8 GEMV's), so an output is sum over k of bf16(x s) * code: x s rounded
// once to bf16 (2^-9 relative), the codes exact, the products exact in fp32 lanes.
struct FewRowFp8 {
  static constexpr int64_t kCols = 64, kVecs = 2, kElemBytes = 1, kScaleRows = 128, kMaxRows = kGemvMaxRows;
  static constexpr int kOneRowMaxRows = 0;  // (FewRowBf16's; not measured for fp8)
  static constexpr int64_t kOneRowMaxCols = 0;
  // registers: 4 x 4 + 8 + 1 + 5, 6 x 3 + 6 + 1 + 5, 8 x 2 + 4 + 1 + 5 (the 5: tables and sign mask)
  template <int T>
  static constexpr int kR = T > 6   ? 2
                            : T > 4 ? 3
                                    : 4;
  const uint8_t* w;
  int64_t k;
  __m512i lo0, lo1, hi0, hi1, sign;
  FewRowFp8(const uint8_t* w_, int64_t k_, const Fp8Bf16Tables& tb) : w(w_), k(k_) {
    lo0 = _mm512_load_si512(tb.lo), lo1 = _mm512_load_si512(tb.lo + 64);
    hi0 = _mm512_load_si512(tb.hi), hi1 = _mm512_load_si512(tb.hi + 64);
    sign = _mm512_set1_epi8(static_cast<char>(0x80));
  }
  void decode(int64_t r, int64_t c, int64_t n, __m512bh* v) const {
    const uint8_t* p = w + r * k + c;
    const __m512i q = n >= kCols ? _mm512_loadu_si512(p) : _mm512_maskz_loadu_epi8((uint64_t{1} << n) - 1, p);  // (n < 64)
    const __m512i lo = _mm512_permutex2var_epi8(lo0, q, lo1);
    const __m512i hi = _mm512_ternarylogic_epi32(_mm512_permutex2var_epi8(hi0, q, hi1), q, sign, 0xf8);  // hi | (q & 0x80)
    v[0] = (__m512bh)_mm512_unpacklo_epi8(lo, hi), v[1] = (__m512bh)_mm512_unpackhi_epi8(lo, hi);
  }
};

namespace fewrow_vbmi_isa {
#include "linear_fewrow.h"
}  // namespace fewrow_vbmi_isa

// xs[r * ldx + ...] for r < t: x[r] times the block scales of srow (per 128 columns), rounded to
// bf16 (nearest even), in FewRowFp8's column order, zero from k to the unit's end.
void fewrow_fp8_prep_x(int64_t t, const void* x, DType xt, int64_t K, const float* srow, uint16_t* xs, int64_t ldx) {
  using V = simd::Avx512;
  const auto load16 = [&](int64_t i, __mmask16 m) __attribute__((always_inline)) {  // x[i ..] as f32, zero off m
    if (xt == DType::BF16)
      return _mm512_castsi512_ps(
          _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, static_cast<const uint16_t*>(x) + i)), 16));
    return _mm512_maskz_loadu_ps(m, static_cast<const float*>(x) + i);
  };
  for (int64_t r = 0; r < t; ++r)
    for (int64_t c = 0; c < K; c += 64) {
      const __m512 s = _mm512_set1_ps(srow[c / 128]);
      __m512 v[4];
      for (int j = 0; j < 4; ++j) {  // (maskz: zero past k whatever the scale)
        const __mmask16 m = V::mask16(std::max<int64_t>(0, K - c - 16 * j));
        v[j] = _mm512_maskz_mul_ps(m, load16(r * K + c + 16 * j, m), s);
      }
      const __m512i n0 = (__m512i)_mm512_cvtne2ps_pbh(v[1], v[0]), n1 = (__m512i)_mm512_cvtne2ps_pbh(v[3], v[2]);
      _mm512_store_si512(xs + r * ldx + c, _mm512_shuffle_i64x2(n0, n1, _MM_SHUFFLE(2, 0, 2, 0)));
      _mm512_store_si512(xs + r * ldx + c + 32, _mm512_shuffle_i64x2(n0, n1, _MM_SHUFFLE(3, 1, 3, 1)));
    }
}

void fewrow_fp8(int64_t t, const void* x, DType xt, const WeightRef& w, void* y, DType yt) {
  static const Fp8Bf16Tables tables;
  const int64_t K = w.k, ldx = fewrow_ldx(K, FewRowFp8::kCols), kblocks = ceil_div(K, 128);
  fewrow_vbmi_isa::fewrow_dispatch(t, FewRowFp8(static_cast<const uint8_t*>(w.data), K, tables), w, ldx, y, yt,
                                   [&](int64_t g0, int64_t* have) {
                                     uint16_t* xs = static_cast<uint16_t*>(scratch(kScratchPanel, t * ldx * sizeof(uint16_t)));
                                     if (*have != g0 / 128) {
                                       fewrow_fp8_prep_x(t, x, xt, K, w.scale + (g0 / 128) * kblocks, xs, ldx);
                                       *have = g0 / 128;
                                     }
                                     return static_cast<const uint16_t*>(xs);
                                   });
}

// clang-format off
LC_END_TARGET  // + vbmi
LC_END_TARGET  // avx512bf16
// clang-format on

}  // namespace

// bf16 weights at 2-10 rows (AVX512-BF16, x bf16 or rounded to it): fewrow_bf16; fp8 weights at 2-8
// rows (AVX512-BF16 + VBMI, precision other than 'highest'): fewrow_fp8; from 11 (fp8: 9) rows the
// lanes GEMM or the GEMM. int8 / int4 weights keep the GEMVs up to 8 rows (a panel decode would cost
// as much as the products at so few rows).
void linear_avx512(int64_t t, const void* x, DType xt, const WeightRef& w, void* y, DType yt, bool bf16_dot, bool bf16_dequant,
                   bool int8_act) {
  const bool quantized = w.dtype == DType::FP8_E4M3 || w.dtype == DType::I8 || w.dtype == DType::I4;
  if (w.dtype == DType::BF16 && bf16_dot && t >= kFewRowsMin && t <= FewRowBf16::kMaxRows) {
    fewrow_bf16(t, x, xt, w, y, yt);
    return;
  }
  if (w.dtype == DType::FP8_E4M3 && bf16_dequant && features().avx512_vbmi && t >= kFewRowsMin && t <= FewRowFp8::kMaxRows) {
    fewrow_fp8(t, x, xt, w, y, yt);
    return;
  }
  if (t > kGemvMaxRows && bf16_dot && (w.dtype == DType::BF16 || (bf16_dequant && quantized))) {
    if (lanes_gemm_shape(t, w)) {
      lanes_gemm(t, x, xt, w, y, yt);
      return;
    }
    gemm<GemmBF16>(t, x, xt, w, y, yt);
    return;
  }
  if (t <= kGemvMaxRows && int8_act && int4_int8_act_shape(w)) {
    gemv_int4_i8<simd::Avx512Vnni>(t, x, xt, w, y, yt);
    return;
  }
  if (t <= kGemvMaxRows && int8_act && w.dtype == DType::I8) {
    gemv_int8_i8<simd::Avx512Vnni>(t, x, xt, w, y, yt);
    return;
  }
  linear_vec<Avx512Linear>(t, x, xt, w, y, yt);
}

uint64_t read_sum_lines_avx512(const ReadSpan* spans, int64_t n) { return read_sum_lines<simd::Avx512>(spans, n); }

}  // namespace lc::cpu::linear_detail

LC_END_TARGET
