// The linear-layer drivers written once for every vector ISA: GEMV (t <= 8) for f32, bf16, int8,
// int4 and fp8 weights, and the fp32 GEMM's packing and microkernel, templated on a per-ISA config L:
//   L::V                      the vector traits (simd::Avx2 or simd::Avx512, simd.h)
//   L::GemvShape<T>::R        rows per pass
//   L::Fp8Shape<T>::R, NA     the fp8 GEMV's rows per pass, accumulator chains
//   L::kInt4Rows<T>           the int4 GEMV's rows per pass
//   L::kGemmMR                x rows per GEMM microkernel call
// Only for inclusion by linear_avx2.cc and linear_avx512.cc, inside LC_BEGIN_TARGET(...) and after
// their other includes: everything here has internal linkage and is compiled for that file's ISA.
#pragma once
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <type_traits>

#include "linear_kernels.h"
#include "simd.h"
#include "threadpool.h"

namespace lc::cpu::linear_detail {
namespace {  // internal linkage: nothing compiled for an ISA may be shared with other files

// ---------------------------------------------------------------------------------------------
// The shapes a config L gives per T: L::GemvShape<T> = GemvShapeOf<R>,
// L::Fp8Shape<T> = Fp8ShapeOf<R, NA>.
template <int R_>
struct GemvShapeOf {
  static constexpr int R = R_;
};
template <int R_, int NA_>
struct Fp8ShapeOf {
  static constexpr int R = R_, NA = NA_;
};

// Every vector of an accumulator array (any rank) set to zero.
template <class V>
void zero_vectors(typename V::F& a) {
  a = V::zero();
}
template <class V, class A, size_t N>
void zero_vectors(A (&a)[N]) {
  for (A& x : a) zero_vectors<V>(x);
}

// Weight decoders: V::kLanes stored weights of type E -> f32 lanes; load_n loads the first n (the
// rest zero). E: float, uint16_t (bf16 bits), int8_t (q: the row scale multiplies the finished dot
// product) or uint8_t (fp8 e4m3: code / 256 by simd.h's bit move, the 256 joining the block scale
// (kScaleMul); NaN codes checked apart).
template <class V, class E_>
struct Dec {
  using E = E_;
  static constexpr bool kNanCodes = std::is_same_v<E, uint8_t>;
  static constexpr float kScaleMul = kNanCodes ? 256.0f : 0;  // 0: no block scale
  static typename V::F load(const E* p) { return get<false>(p, 0); }
  static typename V::F load_n(const E* p, int64_t n) { return get<true>(p, n); }

 private:
  template <bool kPartial>
  static typename V::F get(const E* p, int64_t n) {
    static_assert(std::is_same_v<E, float> || std::is_same_v<E, uint16_t> || std::is_same_v<E, int8_t> ||
                  std::is_same_v<E, uint8_t>);
    if constexpr (std::is_same_v<E, float>)
      return kPartial ? V::load_n(p, n) : V::load(p);
    else if constexpr (std::is_same_v<E, uint16_t>)
      return kPartial ? V::load_bf16_n(p, n) : V::load_bf16(p);
    else if constexpr (std::is_same_v<E, int8_t>)
      return kPartial ? V::load_i8_n(p, n) : V::load_i8(p);
    else
      return kPartial ? V::load_fp8_n(p, n) : V::load_fp8(p);
  }
};
template <class V>
using DecF32 = Dec<V, float>;
template <class V>
using DecBF16 = Dec<V, uint16_t>;
template <class V>
using DecI8 = Dec<V, int8_t>;
template <class V>
using DecFP8 = Dec<V, uint8_t>;

// ---------------------------------------------------------------------------------------------
// GEMV (t <= 8) is bandwidth bound, so its shape is about how memory is read and how much work
// each weight vector carries (L::GemvShape):
//  * R rows per pass share every x load (T*R + R registers), reading x over the full k. On the
//    2-core AVX-512 VM (Zen 5) R = 4 row streams per thread reached 80-95% of the read probe at
//    t = 1 and 2 where one row at a time with k cut into L1-sized x chunks reached 45-75% (the
//    chunks turned each row into several short streams).
//  * k runs in 128-column blocks: the fp8 scale block, the NaN-code check, and a software
//    prefetch a fixed distance ahead on each row stream (continuing past the end of the row
//    into the row the stream reads next, because hardware prefetchers stop at 4 KiB pages). On
//    that VM the hardware prefetchers alone reach a third to a half of the bandwidth (no
//    software prefetch: 17-22 GB/s of 60); 2 KiB ahead measured best for bf16 / int8.
//  * Session 10 (bench/native/gemv_stream.cc: t = 1 bf16 over medium's 113 dense matrices, 343 MB,
//    variants alternated per round) found shapes that stream faster ALONE but not in the replayed
//    step, so none is kept: R = 8 row streams where a row is <= 2 KiB (R = 4 above) read 1.08-1.11x
//    this kernel at 2 threads and 1.19-1.25x at 1 (90-100% of the read probe), yet the medium step's
//    linears ran 36.4-40.5 GB/s with it against 42.0-42.1 without (alternated; with one prefetch
//    per 64 B, 1.10-1.15x alone: 28.8-30.5 vs 29.3-29.4 on a host throttled to 30 GB/s); one row at a time
//    with 2 accumulator chains and no software prefetch (0.99-1.12x alone) ran 36.9-37.5 against
//    38.5-43.2. Neutral alone (within +-3%): prefetch hints T1 / T2 / NTA, one prefetch per 64 B of
//    the stream instead of a 128-column block's lines at once, distances 1-4 KiB. Warm (cache-served
//    rows) this kernel reads 44-50 GB/s per thread, one accumulator chain per row only ~35: compute
//    is not what holds the in-step rate (22 GB/s per thread) down.

constexpr int64_t kGemvGroupRows = 256;
constexpr int64_t kPrefetchBytes = 2048;
// Session 13 (bench/native/fewrow_gemm.cc, 2 threads, 2-8 rows, cold weights): the same lines also
// requested 8 KiB ahead into L2 (hint T1; the L1 requests then hit L2, and L2's miss queue is
// deeper than L1's) read 1.5-2.4x faster (1 MB, 2 rows: 63-72 -> 40-42 us; 4 MB 251-320 -> 135-144);
// 16 KiB was no better (bench/RESULTS.md wt13-fewrow). (Session 10 had tried other hints and distances for the one request.)
constexpr int64_t kGemvFarPrefetchBytes = 8192;
// The L1 request's distance (gemv_near_prefetch_bytes): at t = 1 bf16 (the batch-1 decode step)
// only 512 B ahead, the L2 one 8 KiB ahead doing the covering. bench/native/gemv_stream.cc over
// medium's dense matrices, alternated per round (bench/RESULTS.md wt13-gemv): 2 KiB + 8 KiB read
// 82-89% of the read probe at 2 threads, 76-82% at 1; 256-768 B + 8 KiB 99-102% and 95-101% (the
// 2-4 MB gate / up / o 1.15-1.25x); with no L1 request 97-99% and 89-95%. In the replayed medium
// step (step-bisect, 8 alternated pairs) the dense linears went from 0.69-0.85 to 0.74-0.93 of the
// probe, region 1.04-1.32x faster. Session 14 (bench/RESULTS.md wt14-prefetch; in-step A/Bs, the
// harness's figures are optimistic): int8 at t = 1 the same 512 B (2 KiB before: medium step's
// dense linears 1.02-1.06x of their former fraction of the probe, region 1.03-1.04x); bf16 at t = 2
// the same (dense linears 1.08x, faster in 7 of 8 rounds), at t = 3-4 no L1 request at all (t = 4:
// 1.03x, 7 of 8; 512 B there was neutral; t = 3: step 1.03x, 7 of 8). 256 B at t = 1 bf16 read faster alone but not in the
// step; fp8's distance (kFp8PrefetchBytes) moved nothing in the harness (its decode is the limit).
// (The AVX2 build takes the same distances: no AVX2-only host to measure them on.)
constexpr int64_t kGemvNearPrefetchBytes = 512;

// The L1 request's distance in gemv_rows for T x rows of weights E (0: none, the L2 request only).
template <int T, class E>
constexpr int64_t gemv_near_prefetch_bytes() {
  if constexpr (std::is_same_v<E, uint16_t>)
    return T <= 2 ? kGemvNearPrefetchBytes : T <= 4 ? 0 : kPrefetchBytes;
  else if constexpr (std::is_same_v<E, int8_t>)
    return T == 1 ? kGemvNearPrefetchBytes : kPrefetchBytes;
  else
    return kPrefetchBytes;
}

// The software prefetch of the GEMVs' row streams (gemv_rows, fp8_rows, int4_rows): for each of
// an R-row pass's rows, the `bytes` at byte `at` of the row, or, where `at` is past the row's end
// (row_bytes), that far on past it in the same row of the next pass (R rows on: the rows the
// stream reads next; the hardware prefetchers stop at 4 KiB pages). kLocality: 3 = into L1
// (prefetcht0), 2 = into L2 (prefetcht1).
// always_inline: see prefetch_group (linear_kernels.h); not inlined, GCC may drop the prefetches.
template <int kLocality, int R, class E>
__attribute__((always_inline)) inline void prefetch_rows_ahead(const E* const (&rows)[R], int64_t row_bytes, int64_t at,
                                                               int64_t bytes) {
  const int64_t at_row = at < row_bytes ? at : at + (R - 1) * row_bytes;  // from the start of row i
  for (int i = 0; i < R; ++i)
    for (int64_t off = 0; off < bytes; off += 64)
      __builtin_prefetch(reinterpret_cast<const char*>(rows[i]) + at_row + off, 0, kLocality);
}

// part[t * ldp + i] += sum over k in [k0, k1) of x[t, k] * W[r + i, k], for t < T, i < R.
template <class L, int T, int R, class D>
void gemv_rows(const float* x, const WeightRef& w, int64_t r, float* part, int64_t ldp) {
  using V = typename L::V;
  using F = typename V::F;
  using E = typename D::E;
  constexpr int W = V::kLanes;
  const int64_t K = w.k, k0 = 0, k1 = K;
  const E* wr[R];
  for (int i = 0; i < R; ++i) wr[i] = static_cast<const E*>(w.data) + (r + i) * K;
  F acc[T][R];
  zero_vectors<V>(acc);

  // n columns at k into a (n == W: a whole vector).
  auto step = [&](int64_t k, const F* bs, F(&a)[T][R], int64_t n) __attribute__((always_inline)) {
    F wv[R];
    for (int i = 0; i < R; ++i) {
      wv[i] = n == W ? D::load(wr[i] + k) : D::load_n(wr[i] + k, n);
      if constexpr (D::kScaleMul != 0) wv[i] = V::mul(wv[i], bs[i]);
    }
    for (int t = 0; t < T; ++t) {
      const F xv = n == W ? V::load(x + t * K + k) : V::load_n(x + t * K + k, n);
      for (int i = 0; i < R; ++i) a[t][i] = V::fmadd(xv, wv[i], a[t][i]);
    }
  };

  bool nan[R] = {};  // a NaN weight code makes the row's dot products NaN
  for (int64_t b0 = k0; b0 < k1; b0 += 128) {
    const int64_t bend = k1 - b0 < 128 ? k1 : b0 + 128;
    // each row's block into L1 (gemv_near_prefetch_bytes ahead) and into L2 (kGemvFarPrefetchBytes)
    constexpr int64_t es = sizeof(E), near = gemv_near_prefetch_bytes<T, E>();
    if constexpr (near > 0) prefetch_rows_ahead<3>(wr, K * es, b0 * es + near, 128 * es);
    prefetch_rows_ahead<2>(wr, K * es, b0 * es + kGemvFarPrefetchBytes, 128 * es);
    F bs[R];
    for (int i = 0; i < R; ++i) {
      if constexpr (D::kNanCodes) nan[i] |= V::has_nan_code(wr[i] + b0, bend - b0);
      if constexpr (D::kScaleMul != 0) bs[i] = V::set1(fp8_block_scale(w, r + i, b0 / 128) * D::kScaleMul);
    }
    int64_t k = b0;
    // unrolled (AVX2 t = 4 ran 15% slower, AVX-512 t = 8 20-30%, without)
#pragma GCC unroll 4
    for (; k + W <= bend; k += W) step(k, bs, acc, W);
    if (k < bend) step(k, bs, acc, bend - k);
  }
  for (int t = 0; t < T; ++t)
    for (int i = 0; i < R; ++i) part[t * ldp + i] = nan[i] ? NAN : V::reduce_add(acc[t][i]);
}

// Rows [n0, n1) of y for all T rows of x.
template <class L, int T, class D>
void gemv_range(const float* x, const WeightRef& w, int64_t n0, int64_t n1, void* y, DType yt) {
  using G = typename L::template GemvShape<T>;
  const int64_t N = w.n;
  float part[T][kGemvGroupRows];
  for (int64_t g0 = n0; g0 < n1; g0 += kGemvGroupRows) {
    const int64_t g1 = n1 - g0 < kGemvGroupRows ? n1 : g0 + kGemvGroupRows;
    int64_t r = g0;
    for (; r + G::R <= g1; r += G::R) gemv_rows<L, T, G::R, D>(x, w, r, &part[0][r - g0], kGemvGroupRows);
    for (; r < g1; ++r) gemv_rows<L, T, 1, D>(x, w, r, &part[0][r - g0], kGemvGroupRows);
    for (int t = 0; t < T; ++t)
      for (int64_t r = g0; r < g1; ++r) {
        float v = part[t][r - g0];
        if (w.dtype == DType::I8) v *= w.scale[r];
        store_y(y, yt, t * N + r, v);
      }
  }
}

// Rows are handed out in whole passes of R, so that no chunk ends in single-row passes. In a region
// begun with $LONGCAT_STEAL=1 split by steal_for (threadpool.h): each thread streams one contiguous
// share and steals at the tail (medium step: threads inside chunks 96-97% of the linears' time vs
// 92% with ~4 chunks per thread; opt-in because small's step ran slower, bench/RESULTS.md).
// range(r0, r1) over W's rows in whole passes of R rows (rows of elem_bytes per element).
template <int R, class Range>
void gemv_split(const WeightRef& w, int64_t elem_bytes, Range&& range) {
  const int64_t n = w.n, passes = ceil_div(n, R);
  ThreadPool& pool = ThreadPool::current();
  if (pool.stealing()) {  // (linear_kernels.h: steal_items)
    const int64_t item = steal_items(passes, R * w.k * elem_bytes, pool.threads());
    steal_for(ceil_div(passes, item), [&](int64_t i) { range(i * item * R, std::min(n, (i + 1) * item * R)); });
    return;
  }
  const int64_t grain = gemv_grain_rows(w) / R;
  parallel_for(passes, grain < 1 ? 1 : grain, [&](int64_t g0, int64_t g1) { range(g0 * R, g1 * R < n ? g1 * R : n); });
}

template <class L, int T, class D>
void gemv_t(const float* x, const WeightRef& w, void* y, DType yt) {
  gemv_split<L::template GemvShape<T>::R>(w, sizeof(typename D::E),
                                          [&](int64_t r0, int64_t r1) { gemv_range<L, T, D>(x, w, r0, r1, y, yt); });
}

template <class L, class D>
void gemv(int64_t t, const float* x, const WeightRef& w, void* y, DType yt) {
  switch (t) {
    case 1: gemv_t<L, 1, D>(x, w, y, yt); break;
    case 2: gemv_t<L, 2, D>(x, w, y, yt); break;
    case 3: gemv_t<L, 3, D>(x, w, y, yt); break;
    case 4: gemv_t<L, 4, D>(x, w, y, yt); break;
    case 5: gemv_t<L, 5, D>(x, w, y, yt); break;
    case 6: gemv_t<L, 6, D>(x, w, y, yt); break;
    case 7: gemv_t<L, 7, D>(x, w, y, yt); break;
    case 8: gemv_t<L, 8, D>(x, w, y, yt); break;
  }
}

// ---------------------------------------------------------------------------------------------
// fp8 GEMV. Decoding is the cost here (one byte per weight), so the inner loop is cut to the bit
// move and the FMAs:
//  * U = 4 * V::kLanes codes per vector load. Seen as 32-bit lanes (codes 4j .. 4j + 3 in lane j),
//    byte q of every lane decodes to the f32 bits sign << 31 | (code & 0x7f) << 20 by a shift up
//    to the lane's top byte, an arithmetic shift right by 4 and a mask (V::fp8_lane_byte): the
//    code's value * 2^-120, exact, subnormals included. Vector q holds codes [q, 4 + q, ..,
//    4W - 4 + q] of the U, so x is stored in that order.
//    Session 15 (2-core Zen 5 VM, one thread, 256 KiB of codes warm in L2, 4 rows x 512 columns):
//    this decode streams 23-26 GB/s, the former bit move to f16 words + vcvtph2ps (two converts and
//    an extract per 32 codes) 18-20: the GEMV's compute rate, not the memory, bounded the short
//    rows of the small preset (bench/RESULTS.md wt15-fmt). (int8's widen + convert: 28-29.)
//  * No per-vector scale: every output row of a 128-row block shares the block scales of a column
//    block, so x is pre-multiplied by scale * 2^56 (per 128 columns) into a per-thread copy, once
//    per 128 output rows, and each row's sum is multiplied by 2^64 (2^56 * 2^-120 * 2^64 = 1).
//    Products are then x * scale * value up to fp32 rounding (the powers of two are exact):
//    x * scale * 2^56 stays finite below |x * scale| = 2^72, the products normal above
//    |x * scale * w| = 2^-62.
//  * NaN codes: running unsigned and signed byte maxima of the codes; a row chunk's maximum is
//    0xff (unsigned) or 0x7f (signed) exactly when it holds 0xff or 0x7f. On a hit the rows of the
//    pass are checked one by one and the hit rows give NaN.
// Shapes (L::Fp8Shape): R rows per pass sharing each x load over the whole k, NA accumulator
// chains per (x row, W row). On the 2-core AVX-512 VM, T = 1 and 2 read 50 and 42 GB/s with four
// rows per pass (NA = 1) against 36 and 23 one row at a time (NA = 4, x in k chunks); AVX2 (16
// registers) keeps one row at a time for T <= 2.

// Software prefetch distance on each fp8 row stream. Measured on the dev machine (Zen 5, AVX-512,
// 2 threads streaming from DRAM, T = 1): 0 B 23 GB/s, 512 B 29, 1 KiB 34, 1.5-2 KiB 37, 4 KiB 20
// (too many lines in flight).
constexpr int64_t kFp8PrefetchBytes = 1536;
// The powers of two of the decode (see above): x * scale * kFp8XScale, the sums * kFp8SumScale.
constexpr float kFp8XScale = 0x1p56f, kFp8SumScale = 0x1p64f;  // 2^(120 - 64), 2^64

// xs[t * ldx + j] for t < T, j < round_up(k1 - k0, U): x[t, k0 ..k1) times scale * kFp8XScale
// of its column block (srow: the block row of weight_scale_inv), in the fp8 decode
// order, zero padded. Once per 128 output rows: scalar.
template <class L, int T>
void fp8_prep_x(const float* x, int64_t K, const float* srow, int64_t k0, int64_t k1, float* xs, int64_t ldx) {
  constexpr int W = L::V::kLanes, U = 4 * W;
  for (int t = 0; t < T; ++t)
    for (int64_t k = k0; k < k1; k += U) {
      const float s = srow[k / 128] * kFp8XScale;
      float* dst = xs + t * ldx + (k - k0);
      for (int q = 0; q < 4; ++q)
        for (int j = 0; j < W; ++j) {
          const int64_t c = k + 4 * j + q;
          dst[q * W + j] = c < k1 ? x[t * K + c] * s : 0.0f;
        }
    }
}

// part[t * ldp + i] += sum over k of xs[t, k] * code(W[r + i, k]) for t < T, i < R (NaN for a row
// with a NaN code).
template <class L, int T, int R, int NA>
void fp8_rows(const float* xs, int64_t ldx, const WeightRef& w, int64_t r, float* part, int64_t ldp) {
  using V = typename L::V;
  using F = typename V::F;
  using I = typename V::I;
  constexpr int W = V::kLanes, U = 4 * W;
  static_assert(128 % U == 0, "a 128-column block holds whole decode units");
  const int64_t K = w.k;
  const uint8_t* wr[R];
  for (int i = 0; i < R; ++i) wr[i] = static_cast<const uint8_t*>(w.data) + (r + i) * K;
  F acc[NA][T][R];
  zero_vectors<V>(acc);
  I maxu = V::izero(), maxs = V::izero();

  // The n <= U codes at k of every row (n == U: a whole vector); u (the unit's index in its
  // 128-column block) picks the accumulator chains when NA > 4.
  auto unit = [&](int64_t k, int u, int64_t n) __attribute__((always_inline)) {
    const float* xk = xs + k;
    I v[R];
    for (int i = 0; i < R; ++i) {
      v[i] = n == U ? V::load_bytes(wr[i] + k) : V::load_bytes_n(wr[i] + k, n);
      maxu = V::max_epu8(maxu, v[i]);
      maxs = V::max_epi8(maxs, v[i]);
    }
    for (int q = 0; q < 4; ++q) {
      F wv[R];
      for (int i = 0; i < R; ++i) wv[i] = V::fp8_lane_byte(v[i], q);
      const int a = (u * 4 + q) % NA;
      for (int t = 0; t < T; ++t) {
        const F xv = V::load(xk + t * ldx + W * q);
        for (int i = 0; i < R; ++i) acc[a][t][i] = V::fmadd(xv, wv[i], acc[a][t][i]);
      }
    }
  };

  int64_t k = 0;
  for (; k < K; k += 128) {
    // each row's 128 codes kFp8PrefetchBytes ahead into L1 and kGemvFarPrefetchBytes into L2
    prefetch_rows_ahead<3>(wr, K, k + kFp8PrefetchBytes, 128);
    prefetch_rows_ahead<2>(wr, K, k + kGemvFarPrefetchBytes, 128);
    if (k + 128 > K) break;
    for (int u = 0; u < 128 / U; ++u) unit(k + U * u, u, U);
  }
  for (int u = 0; k + U * u < K; ++u) {  // the last 1..127 columns
    const int64_t left = K - k - U * u;
    unit(k + U * u, u, left < U ? left : U);
  }

  bool nan[R] = {};
  if (V::any_byte_eq(maxu, -1) || V::any_byte_eq(maxs, 0x7f))
    for (int i = 0; i < R; ++i) nan[i] = V::has_nan_code(wr[i], K);
  for (int t = 0; t < T; ++t)
    for (int i = 0; i < R; ++i) {
      for (int a = 1; a < NA; ++a) acc[0][t][i] = V::add(acc[0][t][i], acc[a][t][i]);
      part[t * ldp + i] += nan[i] ? NAN : V::reduce_add(acc[0][t][i]) * kFp8SumScale;
    }
}

// Rows [n0, n1) of y for all T rows of x, in groups that never cross a 128-row scale block.
template <class L, int T>
void gemv_fp8_range(const float* x, const WeightRef& w, int64_t n0, int64_t n1, void* y, DType yt) {
  using G = typename L::template Fp8Shape<T>;
  const int64_t K = w.k, N = w.n, kblocks = ceil_div(K, 128);
  const int64_t ldx = round_up(K, 4 * L::V::kLanes);
  float* xs = static_cast<float*>(scratch(kScratchPanel, T * ldx * sizeof(float)));
  float part[T][128];
  for (int64_t g0 = n0, g1; g0 < n1; g0 = g1) {
    g1 = (g0 / 128 + 1) * 128 < n1 ? (g0 / 128 + 1) * 128 : n1;
    const float* srow = w.scale + (g0 / 128) * kblocks;
    for (int t = 0; t < T; ++t)
      for (int64_t r = g0; r < g1; ++r) part[t][r - g0] = 0;
    fp8_prep_x<L, T>(x, K, srow, 0, K, xs, ldx);
    int64_t r = g0;
    for (; r + G::R <= g1; r += G::R) fp8_rows<L, T, G::R, G::NA>(xs, ldx, w, r, &part[0][r - g0], 128);
    for (; r < g1; ++r) fp8_rows<L, T, 1, G::NA>(xs, ldx, w, r, &part[0][r - g0], 128);
    for (int t = 0; t < T; ++t)
      for (int64_t r = g0; r < g1; ++r) store_y(y, yt, t * N + r, part[t][r - g0]);
  }
}

template <class L, int T>
void gemv_fp8_t(const float* x, const WeightRef& w, void* y, DType yt) {
  parallel_for(w.n, gemv_grain_rows(w), [&](int64_t n0, int64_t n1) { gemv_fp8_range<L, T>(x, w, n0, n1, y, yt); });
}

template <class L>
void gemv_fp8(int64_t t, const float* x, const WeightRef& w, void* y, DType yt) {
  switch (t) {
    case 1: gemv_fp8_t<L, 1>(x, w, y, yt); break;
    case 2: gemv_fp8_t<L, 2>(x, w, y, yt); break;
    case 3: gemv_fp8_t<L, 3>(x, w, y, yt); break;
    case 4: gemv_fp8_t<L, 4>(x, w, y, yt); break;
    case 5: gemv_fp8_t<L, 5>(x, w, y, yt); break;
    case 6: gemv_fp8_t<L, 6>(x, w, y, yt); break;
    case 7: gemv_fp8_t<L, 7>(x, w, y, yt); break;
    case 8: gemv_fp8_t<L, 8>(x, w, y, yt); break;
  }
}

// ---------------------------------------------------------------------------------------------
// int4 GEMV (format: linear.h). x is copied once per call into a zero-padded [T][G * g] f32 buffer
// (no tail handling: padding codes meet zeros). Per 32-column block each row's 16 bytes widen to
// the codes (V::load_u4 / u4_codes) and decode as fma(q, s, -z * s), the exact weight (linear.h),
// then R rows share every x load (L::kInt4Rows<T>: T * R accumulators + R decoded vectors + R
// scale pairs fit the register file). One software prefetch per row and 64-byte line.

constexpr int64_t kInt4PrefetchBytes = 2048;

// part[t * ldp + i] = sum over k of x[t, k] * W[r + i, k] for t < T, i < R.
template <class L, int T, int R>
void int4_rows(const float* xp, int64_t ldx, const WeightRef& w, int64_t r, float* part, int64_t ldp) {
  using V = typename L::V;
  using F = typename V::F;
  constexpr int W = V::kLanes, NV = V::kU4Vectors;
  const int64_t g = w.group, G = int4_groups(w.k, g), rb = G * g / 2;
  const uint8_t* wr[R];
  for (int i = 0; i < R; ++i) wr[i] = static_cast<const uint8_t*>(w.data) + (r + i) * rb;
  F acc[T][R];
  zero_vectors<V>(acc);
  for (int64_t gi = 0; gi < G; ++gi) {
    F sv[R], mv[R];
    for (int i = 0; i < R; ++i) {
      float s, z;
      int4_group_params(w, r + i, gi, &s, &z);
      sv[i] = V::set1(s);
      mv[i] = V::set1(-z * s);
    }
    for (int64_t c = gi * g; c < (gi + 1) * g; c += 32) {
      if (c % 128 == 0) {  // each row's line of 128 codes into L1 and into L2
        prefetch_rows_ahead<3>(wr, rb, c / 2 + kInt4PrefetchBytes, 64);
        prefetch_rows_ahead<2>(wr, rb, c / 2 + kGemvFarPrefetchBytes, 64);
      }
      typename V::U4 u[R];
      for (int i = 0; i < R; ++i) u[i] = V::load_u4(wr[i] + c / 2);
      for (int v = 0; v < NV; ++v) {
        F wv[R];
        for (int i = 0; i < R; ++i) wv[i] = V::fmadd(V::u4_codes(u[i], v), sv[i], mv[i]);
        for (int t = 0; t < T; ++t) {
          const F xv = V::load(xp + t * ldx + c + v * W);
          for (int i = 0; i < R; ++i) acc[t][i] = V::fmadd(xv, wv[i], acc[t][i]);
        }
      }
    }
  }
  for (int t = 0; t < T; ++t)
    for (int i = 0; i < R; ++i) part[t * ldp + i] = V::reduce_add(acc[t][i]);
}

template <class L, int T>
void gemv_int4_t(const float* x, const WeightRef& w, void* y, DType yt) {
  constexpr int R = L::template kInt4Rows<T>;
  const int64_t K = w.k, N = w.n, ldx = int4_groups(K, w.group) * w.group;
  float* xp = static_cast<float*>(scratch(kScratchC, T * ldx * sizeof(float)));
  for (int t = 0; t < T; ++t) {
    std::memcpy(xp + t * ldx, x + t * K, K * sizeof(float));
    std::memset(xp + t * ldx + K, 0, (ldx - K) * sizeof(float));
  }
  const int64_t grain = gemv_grain_rows(w) / R;
  parallel_for(ceil_div(N, R), grain < 1 ? 1 : grain, [&](int64_t g0, int64_t g1) {
    const int64_t n0 = g0 * R, n1 = g1 * R < N ? g1 * R : N;
    float part[T][R];
    int64_t r = n0;
    auto store = [&](int64_t r0, int rows) {
      for (int t = 0; t < T; ++t)
        for (int i = 0; i < rows; ++i) store_y(y, yt, t * N + r0 + i, part[t][i]);
    };
    for (; r + R <= n1; r += R) {
      int4_rows<L, T, R>(xp, ldx, w, r, &part[0][0], R);
      store(r, R);
    }
    for (; r < n1; ++r) {
      int4_rows<L, T, 1>(xp, ldx, w, r, &part[0][0], R);
      store(r, 1);
    }
  });
}

template <class L>
void gemv_int4(int64_t t, const float* x, const WeightRef& w, void* y, DType yt) {
  switch (t) {
    case 1: gemv_int4_t<L, 1>(x, w, y, yt); break;
    case 2: gemv_int4_t<L, 2>(x, w, y, yt); break;
    case 3: gemv_int4_t<L, 3>(x, w, y, yt); break;
    case 4: gemv_int4_t<L, 4>(x, w, y, yt); break;
    case 5: gemv_int4_t<L, 5>(x, w, y, yt); break;
    case 6: gemv_int4_t<L, 6>(x, w, y, yt); break;
    case 7: gemv_int4_t<L, 7>(x, w, y, yt); break;
    case 8: gemv_int4_t<L, 8>(x, w, y, yt); break;
  }
}

// W[n0 + j, k0 .. k0 + klen) of an int4 weight decoded into p[j][kcp] (zero padded; k0 is a
// multiple of 128, so each 32-column block lies in one group). (The AVX512-BF16 GEMM packs its
// bf16 panels itself: linear_avx512.cc.)
template <class L>
void pack_panel_int4(const WeightRef& w, int64_t n0, int64_t nlen, int64_t nrows, int64_t k0, int64_t klen, int64_t kcp,
                     float* p) {
  using V = typename L::V;
  constexpr int W = V::kLanes, NV = V::kU4Vectors;
  const int64_t rb = int4_row_bytes(w.k, w.group);
  for (int64_t j = 0; j < nrows; ++j) {
    float* dst = p + j * kcp;
    std::memset(dst, 0, kcp * sizeof(float));
    if (j >= nlen) continue;
    const uint8_t* src = static_cast<const uint8_t*>(w.data) + (n0 + j) * rb;
    for (int64_t c = 0; c < klen; c += 32) {
      float s, z;
      int4_group_params(w, n0 + j, (k0 + c) / w.group, &s, &z);
      const typename V::F sv = V::set1(s), mv = V::set1(-z * s);
      const typename V::U4 u = V::load_u4(src + (k0 + c) / 2);
      alignas(64) float blk[32];
      for (int v = 0; v < NV; ++v) V::store(blk + v * W, V::fmadd(V::u4_codes(u, v), sv, mv));
      std::memcpy(dst + c, blk, (klen - c < 32 ? klen - c : 32) * sizeof(float));
    }
  }
}

template <class V>
void bf16_to_f32_rows(const uint16_t* src, int64_t n, float* dst) {
  int64_t i = 0;
  for (; i + V::kLanes <= n; i += V::kLanes) V::store(dst + i, V::load_bf16(src + i));
  if (i < n) V::store_n(dst + i, V::load_bf16_n(src + i, n - i), n - i);
}

// ---------------------------------------------------------------------------------------------
// GEMM, fp32 FMA path (gemm<Tr> in linear_kernels.h): x packed as f32, the weight panel dequantized
// to f32. kMR x rows times 4 weight rows of accumulators, kMR x vectors and one weight vector in
// registers: 3 x 4 + 3 + 1 = 16 (AVX2), 6 x 4 + 6 + 1 = 31 of 32 (AVX-512).

// W[n0 + j, k0 .. k0 + klen) of an f32 / bf16 / fp8 / int8 weight dequantized into p[j][kcp] (zero
// padded; int8: the codes, the row scale joins the finished dot product).
template <class L, class D>
void pack_panel_dec(const WeightRef& w, int64_t n0, int64_t nlen, int64_t nrows, int64_t k0, int64_t klen, int64_t kcp,
                    float* p) {
  using V = typename L::V;
  using E = typename D::E;
  constexpr int W = V::kLanes;
  for (int64_t j = 0; j < nrows; ++j) {
    float* dst = p + j * kcp;
    if (j >= nlen) {
      std::memset(dst, 0, kcp * sizeof(float));
      continue;
    }
    const E* src = static_cast<const E*>(w.data) + (n0 + j) * w.k + k0;
    int64_t c = 0;
    for (; c < klen; c += W) {  // kcp is a multiple of W: whole vectors fit
      auto v = c + W <= klen ? D::load(src + c) : D::load_n(src + c, klen - c);
      if constexpr (D::kScaleMul != 0) v = V::mul(v, V::set1(fp8_block_scale(w, n0 + j, (k0 + c) / 128) * D::kScaleMul));
      V::store(dst + c, v);
    }
    if (c < kcp) std::memset(dst + c, 0, (kcp - c) * sizeof(float));
    if constexpr (D::kNanCodes)
      if (V::has_nan_code(src, klen))
        for (c = 0; c < klen; ++c)
          if ((src[c] & 0x7f) == 0x7f) dst[c] = NAN;
  }
}

// A GEMM weight panel in any stored format, as f32.
template <class L>
void pack_panel_any(const WeightRef& w, int64_t n0, int64_t nlen, int64_t nrows, int64_t k0, int64_t klen, int64_t kcp,
                    float* p) {
  using V = typename L::V;
  switch (w.dtype) {
    case DType::F32: pack_panel_dec<L, DecF32<V>>(w, n0, nlen, nrows, k0, klen, kcp, p); break;
    case DType::BF16: pack_panel_dec<L, DecBF16<V>>(w, n0, nlen, nrows, k0, klen, kcp, p); break;
    case DType::FP8_E4M3: pack_panel_dec<L, DecFP8<V>>(w, n0, nlen, nrows, k0, klen, kcp, p); break;
    case DType::I8: pack_panel_dec<L, DecI8<V>>(w, n0, nlen, nrows, k0, klen, kcp, p); break;
    case DType::I4: pack_panel_int4<L>(w, n0, nlen, nrows, k0, klen, kcp, p); break;
    default: break;
  }
}

template <class L>
struct GemmF32 {
  using V = typename L::V;
  using XE = float;
  using WE = float;
  static constexpr int64_t kMR = L::kGemmMR, kStep = V::kLanes, kKC = 512;

  static void pack_x(const void* x, DType xt, int64_t t, int64_t r0, int64_t r1, int64_t k, int64_t kp, float* xp) {
    for (int64_t r = r0; r < r1; ++r) {
      float* dst = xp + r * kp;
      std::memset(dst, 0, kp * sizeof(float));
      if (r >= t) continue;
      if (xt == DType::BF16)
        bf16_to_f32_rows<V>(static_cast<const uint16_t*>(x) + r * k, k, dst);
      else
        std::memcpy(dst, static_cast<const float*>(x) + r * k, k * sizeof(float));
    }
  }

  static void pack_panel(const WeightRef& w, int64_t n0, int64_t nlen, int64_t nrows, int64_t k0, int64_t klen, int64_t kcp,
                         float* p) {
    pack_panel_any<L>(w, n0, nlen, nrows, k0, klen, kcp, p);
  }
  static bool in_place(const WeightRef& w, int64_t nlen, int64_t klen) {
    return w.dtype == DType::F32 && nlen % 4 == 0 && klen % kStep == 0;
  }

  template <int M>
  static void micro(const float* x, int64_t ldx, const float* p, int64_t ldp, int64_t kc, float* c, int64_t ldc, bool accumulate,
                    const float* pf, const float* pf2) {
    typename V::F acc[M][4];
    zero_vectors<V>(acc);
    for (int64_t k = 0; k < kc; k += V::kLanes) {
      prefetch_group(pf, ldp, k);
      prefetch_group_l2(pf2, ldp, k);
      typename V::F xv[M];
      for (int m = 0; m < M; ++m) xv[m] = V::load(x + m * ldx + k);
      for (int j = 0; j < 4; ++j) {
        const typename V::F wv = V::load(p + j * ldp + k);
        for (int m = 0; m < M; ++m) acc[m][j] = V::fmadd(xv[m], wv, acc[m][j]);
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
// Entry points.

// An f32 weight at kGemvMaxRows + 1 .. kF32PassMaxRows rows (a batched decode step's MoE router,
// 48 x 512 in small): the GEMV in passes of kGemvMaxRows x rows within one split of W's rows, so
// each thread reads its rows from DRAM in the first pass and from its L2 in the others, and each
// row's result is its result at <= kGemvMaxRows rows (the router's top-k does not depend on the
// batch's size). The fp32 GEMM took a 16-row call ~2x the 8-row GEMV's time in the step
// (bench/RESULTS.md, wt16-spec; then two GEMV calls), and 64 rows 0.20 of the floor (wt18-qkv).
constexpr int64_t kF32PassMaxRows = 64;

template <class L>
void gemv_f32_passes(int64_t t, const float* x, const WeightRef& w, void* y, DType yt) {
  using D = DecF32<typename L::V>;
  const int64_t K = w.k, y_pass = kGemvMaxRows * w.n * static_cast<int64_t>(dtype_size(yt));
  // W's rows in units of 4 (whole GEMV passes for every T; a row's sum is its own at any split), a
  // chunk's weight bytes ~gemv_grain_rows' over twice the x passes (each unit costs a GEMV per
  // pass; small's router at 16 rows: 6 chunks, not 3 that left one of 2 threads half idle)
  const int64_t units = ceil_div(w.n, 4), passes = ceil_div(t, kGemvMaxRows);
  parallel_for(units, std::max<int64_t>(1, gemv_grain_rows(w) / 4 / (2 * passes)), [&](int64_t u0, int64_t u1) {
    const int64_t r0 = u0 * 4, r1 = std::min(w.n, u1 * 4);
    for (int64_t m0 = 0, p = 0; m0 < t; m0 += kGemvMaxRows, ++p) {
      const float* xm = x + m0 * K;
      void* ym = static_cast<char*>(y) + p * y_pass;
      switch (t - m0 < kGemvMaxRows ? t - m0 : kGemvMaxRows) {
        case 1: gemv_range<L, 1, D>(xm, w, r0, r1, ym, yt); break;
        case 2: gemv_range<L, 2, D>(xm, w, r0, r1, ym, yt); break;
        case 3: gemv_range<L, 3, D>(xm, w, r0, r1, ym, yt); break;
        case 4: gemv_range<L, 4, D>(xm, w, r0, r1, ym, yt); break;
        case 5: gemv_range<L, 5, D>(xm, w, r0, r1, ym, yt); break;
        case 6: gemv_range<L, 6, D>(xm, w, r0, r1, ym, yt); break;
        case 7: gemv_range<L, 7, D>(xm, w, r0, r1, ym, yt); break;
        default: gemv_range<L, 8, D>(xm, w, r0, r1, ym, yt); break;
      }
    }
  });
}

// GEMV for t <= kGemvMaxRows (an f32 weight: up to kF32PassMaxRows, gemv_f32_passes), else the fp32 GEMM.
template <class L>
void linear_vec(int64_t t, const void* x, DType xt, const WeightRef& w, void* y, DType yt) {
  using V = typename L::V;
  if (t > kGemvMaxRows && t <= kF32PassMaxRows && w.dtype == DType::F32) {
    const float* xf = static_cast<const float*>(x);
    if (xt == DType::BF16) {
      float* buf = static_cast<float*>(scratch(kScratchX, t * w.k * sizeof(float)));
      bf16_to_f32_rows<V>(static_cast<const uint16_t*>(x), t * w.k, buf);
      xf = buf;
    }
    gemv_f32_passes<L>(t, xf, w, y, yt);
    return;
  }
  if (t > kGemvMaxRows) {
    gemm<GemmF32<L>>(t, x, xt, w, y, yt);
    return;
  }
  const float* xf = static_cast<const float*>(x);
  if (xt == DType::BF16) {
    float* buf = static_cast<float*>(scratch(kScratchX, t * w.k * sizeof(float)));
    bf16_to_f32_rows<V>(static_cast<const uint16_t*>(x), t * w.k, buf);
    xf = buf;
  }
  switch (w.dtype) {
    case DType::F32: gemv<L, DecF32<V>>(t, xf, w, y, yt); break;
    case DType::BF16: gemv<L, DecBF16<V>>(t, xf, w, y, yt); break;
    case DType::FP8_E4M3: gemv_fp8<L>(t, xf, w, y, yt); break;
    case DType::I8: gemv<L, DecI8<V>>(t, xf, w, y, yt); break;
    case DType::I4: gemv_int4<L>(t, xf, w, y, yt); break;
    default: break;
  }
}

// read_sum (linear.h): one piece of a span's lines, four vector accumulators, the loads in address
// order (the form of the 1 GiB probe before it read spans: a load order 0, 2, 1, 3 within the 4
// vectors, which the pointer form compiled to, read ~15% slower on one thread of the Zen 5 VM).
template <class V>
uint64_t read_sum_lines(const ReadSpan* spans, int64_t n) {
  using I = typename V::I;
  constexpr int64_t kPerLine = 64 / static_cast<int64_t>(sizeof(I));
  return read_sum_split(spans, n, [](const uint8_t* p, int64_t lines) {
    const I* base = reinterpret_cast<const I*>(p);
    auto ld = [&](int64_t j) { return V::load_bytes(reinterpret_cast<const uint8_t*>(base + j)); };
    I s0 = V::izero(), s1 = s0, s2 = s0, s3 = s0;
    const int64_t end = lines * kPerLine;
    int64_t i = 0;
    for (; i + 4 <= end; i += 4) {
      s0 = V::iadd64(s0, ld(i));
      s1 = V::iadd64(s1, ld(i + 1));
      s2 = V::iadd64(s2, ld(i + 2));
      s3 = V::iadd64(s3, ld(i + 3));
    }
    for (; i < end; ++i) s0 = V::iadd64(s0, ld(i));
    return V::ireduce_add64(V::iadd64(V::iadd64(s0, s1), V::iadd64(s2, s3)));
  });
}

}  // namespace
}  // namespace lc::cpu::linear_detail
