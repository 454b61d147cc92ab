// Internals shared by linear.cc and its per-ISA files (linear_avx2.cc, linear_avx512.cc, which
// compile the drivers of linear_vec.h): scratch memory, scale lookup, output stores, the GEMM driver.
#pragma once
#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "linear.h"
#include "numeric.h"
#include "threadpool.h"

namespace lc::cpu::linear_detail {

// T <= kGemvMaxRows uses the GEMV path (weights streamed once for all rows).
constexpr int64_t kGemvMaxRows = 8;

// Per-thread scratch memory, 64-byte aligned. A slot grows to the largest size asked for and is
// then reused, so steady-state calls allocate nothing. A slot's memory is valid until the same
// thread asks for that slot again.
enum ScratchSlot { kScratchX = 0, kScratchPanel = 1, kScratchC = 2, kScratchSlots = 3 };
void* scratch(ScratchSlot slot, size_t bytes);

// The fp8 block scale for weight row r at 128-column block kb (see WeightRef).
inline float fp8_block_scale(const WeightRef& w, int64_t r, int64_t kb) { return w.scale[(r / 128) * ((w.k + 127) / 128) + kb]; }

// The int4 scale s and zero point z of weight row r, group gi (see linear.h).
inline void int4_group_params(const WeightRef& w, int64_t r, int64_t gi, float* s, float* z) {
  const int64_t per = w.group_zero ? 2 : 1;
  const uint16_t* p = w.group_scale + (r * int4_groups(w.k, w.group) + gi) * per;
  auto f = [&](uint16_t b) { return w.group_scale_f16 ? f16_to_f32(b) : bf16_to_f32(b); };
  *s = f(p[0]);
  *z = w.group_zero ? f(p[1]) : 8.0f;
}

inline void store_y(void* y, DType yt, int64_t i, float v) {
  if (yt == DType::BF16)
    static_cast<uint16_t*>(y)[i] = f32_to_bf16(v);
  else
    static_cast<float*>(y)[i] = v;
}

// Rows per GEMV chunk: enough weight bytes (~64 KiB) per task that scheduling costs nothing.
inline int64_t gemv_grain_rows(const WeightRef& w) {
  int64_t row_bytes = w.dtype == DType::I4 ? int4_row_bytes(w.k, w.group) : w.k * dtype_size(w.dtype);
  int64_t g = (64 * 1024) / (row_bytes > 0 ? row_bytes : 1);
  return g < 1 ? 1 : g;
}

// The weights linear_i8act.h's GEMV takes: int4 with groups a multiple of its 128-column chunks.
inline bool int4_int8_act_shape(const WeightRef& w) { return w.dtype == DType::I4 && w.group % 128 == 0; }

// The item of a GEMV split by steal_for (threadpool.h), in units of unit_bytes of weights (a pass
// of rows): ~32 KiB, less for a small weight (at least 16 items per thread), at least one unit.
inline int64_t steal_items(int64_t units, int64_t unit_bytes, int threads) {
  const int64_t ub = unit_bytes > 0 ? unit_bytes : 1;
  int64_t bytes = units * ub / (16 * static_cast<int64_t>(threads > 0 ? threads : 1));
  if (bytes > 32 * 1024) bytes = 32 * 1024;
  return bytes / ub > 0 ? bytes / ub : 1;
}

inline int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }
inline int64_t ceil_div(int64_t v, int64_t m) { return (v + m - 1) / m; }

// ---------------------------------------------------------------------------------------------
// GEMM driver (t > 8), shared by the ISA variants; Tr supplies the ISA-specific pieces:
//   XE, WE       element types of the packed x and the packed weight panel (float or bf16 bits)
//   kMR          x rows per microkernel call (the microkernel always computes 4 output columns)
//   kStep        k elements per vector step: packed rows are zero-padded to a multiple of it
//   kKC          k block (multiple of 128 so fp8 scale blocks never straddle a panel)
//   pack_x(x, xt, t, r0, r1, k, kp, xp)                rows [r0, r1) of x into xp[.][kp], zero padded
//   pack_panel(w, n0, nlen, nrows, k0, klen, kcp, p)  W[n0 .. n0+nlen, k0 .. k0+klen) into p[nrows][kcp]
//                                                     (dequantized), rows >= nlen and cols >= klen zero
//   micro<M>(x, ldx, p, ldp, kc, c, ldc, accumulate, pf)   c[m][j] (+)= sum_k x[m][k] p[j][k], m < M <= kMR, j < 4
//   in_place(w, t, nlen, klen)                         true when the panel W[n0 .. n0+nlen, k0 .. k0+klen) can be read
//                                                     where it is stored (stride w.k) instead of packed: a copy that
//                                                     would be exactly the stored rows (nlen a multiple of 4, klen of
//                                                     kStep), for few rows of x (t <= kInPlaceMaxRows), where the
//                                                     copy costs about as much as the few strips that read it
//
// Blocking, outermost first:
//   job = (one panel of NC output rows) x (one chunk of MC x rows), spread over the pool; MC is all
//   of x unless that leaves fewer than two jobs per thread, so each weight panel is decoded once per
//   call (not once per x chunk: a quantized weight's decode is then a small share of the call);
//   k blocks of KC: the W panel NC x KC (~128 KiB) is packed once and stays in L2 while
//   every MR-row strip of x (MR x KC, ~12 KiB) sweeps across it from L1;
//   the microkernel keeps MR x 4 accumulators in registers over the whole k block and reduces
//   them horizontally once per block into the job's f32 C tile (MC x NC, per-thread scratch); a
//   last strip of fewer than MR rows runs a microkernel of just its rows (t = 16 with MR = 6: 6 + 6 + 4,
//   not 18 rows; in place, strips of even height: t = 8 as 4 + 4).
// Few rows (t <= kInPlaceMaxRows, a verify step's 2 rows per sequence) with an in-place panel: no
// copy, and the loops swap: each 4-row group of W (4 x KB) is read once, from L1, by every strip of
// x (all of x, Tp x KB, stays in L1 too).
constexpr int64_t kInPlaceMaxRows = 32;
// The weight bytes of one steal_for item of the in-place few-row GEMM on several threads (panels of
// 16..64 rows): ~1-2 us of products at 16 rows, so the claims cost nothing and the threads end within
// an item of each other.
constexpr int64_t kFewRowItemBytes = 32 * 1024;
// In place, the weights mostly come from DRAM (a step's weights are not cached), and the strips of
// a 4-row group would wait for them if nothing asked ahead. The first strip's micro kernel requests
// the group kPrefetchBytes ahead (at least the next one), 4 lines per k step, one per weight row,
// interleaved with its products, so the stream and the products overlap and the requests never
// come in a burst that fills the core's outstanding misses. (bench/native/fewrow_gemm.cc, 1 thread,
// 1 MB bf16 from DRAM: t = 16 73 us, t = 8 61 us; with the group 2 ahead requested in slices
// between the strips, as before: 90-97 and 71-74 us, and on warm weights 61-67 / 44 us against
// 49 / 26: each slice's line addresses took two divisions.)
// (8 KB ahead was tried with the split below: no better, bench/RESULTS.md wt12-fewrow.)
// Those requests (into L1) alone left the stream and the products barely overlapped: a cold
// 16-row call took about its warm time plus the stream's (bench/native/fewrow_gemm.cc, 2 threads:
// 1 MB 95-108 us cold against 53-70 warm and ~30 of stream). The core's L1 misses in flight are
// too few to cover DRAM's latency at the bandwidth wanted, so the last strip also requests the
// group kFarPrefetchBytes ahead into L2 (hint T1), whose miss queue is deeper; the L1 requests then
// hit L2. Cold, 16 rows: 1 MB 70-71 us, 4 MB 226-243 against 364-387 (8 rows: 126-130 against
// 285-289; bench/RESULTS.md wt13-fewrow).
constexpr int64_t kPrefetchBytes = 4096;
constexpr int64_t kFarPrefetchBytes = 16384;
// Groups of 4 weight rows of row_bytes each that span `bytes` (at least one).
inline int64_t prefetch_groups(int64_t row_bytes, int64_t bytes) {
  const int64_t g = (bytes + 4 * row_bytes - 1) / (4 * row_bytes);
  return g < 1 ? 1 : g;
}
// The 4 rows (stride ldp elements) of the weight group at pf, elements k.. of each, into L1 (pf; into
// L2: pf2, prefetch_group_l2): one prefetch a row per vector step (a line for 64-byte vectors; AVX2's
// 32-byte steps request each line twice, the second a hit). Nothing when the pointer is null (panel
// copies, the middle strips, the last groups).
// always_inline: the callers are compiled for another ISA (LC_BEGIN_TARGET); without it GCC (12) did
// not inline it and left no prefetch in the micro kernels at all (the call, having no side effects
// but prefetches, was dropped).
template <class WE>
__attribute__((always_inline)) inline void prefetch_group(const WE* pf, int64_t ldp, int64_t k) {
  if (!pf) return;
  for (int j = 0; j < 4; ++j) __builtin_prefetch(pf + j * ldp + k, 0, 3);
}
template <class WE>
__attribute__((always_inline)) inline void prefetch_group_l2(const WE* pf2, int64_t ldp, int64_t k) {
  if (!pf2) return;
  for (int j = 0; j < 4; ++j) __builtin_prefetch(pf2 + j * ldp + k, 0, 2);
}

// One MR-or-fewer-row strip: micro<M> for its m rows (pf, pf2: the groups it requests into L1 / L2).
template <class Tr, class XE, class WE>
inline void micro_rows(int64_t m, const XE* x, int64_t ldx, const WE* p, int64_t ldp, int64_t kc, float* c, int64_t ldc,
                       bool accumulate, const WE* pf, const WE* pf2) {
  static_assert(Tr::kMR <= 8, "micro_rows: strips of at most 8 rows");
  switch (m) {
    case 1: Tr::template micro<1>(x, ldx, p, ldp, kc, c, ldc, accumulate, pf, pf2); return;
    case 2: Tr::template micro<(Tr::kMR >= 2 ? 2 : 1)>(x, ldx, p, ldp, kc, c, ldc, accumulate, pf, pf2); return;
    case 3: Tr::template micro<(Tr::kMR >= 3 ? 3 : 1)>(x, ldx, p, ldp, kc, c, ldc, accumulate, pf, pf2); return;
    case 4: Tr::template micro<(Tr::kMR >= 4 ? 4 : 1)>(x, ldx, p, ldp, kc, c, ldc, accumulate, pf, pf2); return;
    case 5: Tr::template micro<(Tr::kMR >= 5 ? 5 : 1)>(x, ldx, p, ldp, kc, c, ldc, accumulate, pf, pf2); return;
    case 6: Tr::template micro<(Tr::kMR >= 6 ? 6 : 1)>(x, ldx, p, ldp, kc, c, ldc, accumulate, pf, pf2); return;
    case 7: Tr::template micro<(Tr::kMR >= 7 ? 7 : 1)>(x, ldx, p, ldp, kc, c, ldc, accumulate, pf, pf2); return;
    default: Tr::template micro<(Tr::kMR >= 8 ? 8 : 1)>(x, ldx, p, ldp, kc, c, ldc, accumulate, pf, pf2); return;
  }
}

template <class Tr>
void gemm(int64_t t, const void* x, DType xt, const WeightRef& w, void* y, DType yt) {
  using XE = typename Tr::XE;
  using WE = typename Tr::WE;
  constexpr int64_t MR = Tr::kMR, NR = 4;
  const int64_t N = w.n, K = w.k;
  const int64_t Kp = round_up(K, Tr::kStep), Tp = round_up(t, MR);
  const int nthreads = ThreadPool::current().threads();

  // x is converted and padded once per call (by the calling thread's scratch, read by all); a few
  // rows (up to ~32K elements) by the calling thread alone, not as a job of the pool of its own.
  XE* xp = static_cast<XE*>(scratch(kScratchX, Tp * Kp * sizeof(XE)));
  parallel_for(Tp, 1 + 32768 / Kp, [&](int64_t r0, int64_t r1) { Tr::pack_x(x, xt, t, r0, r1, K, Kp, xp); });

  // Even k blocks, each a multiple of 128 and at most about kKC.
  const int64_t kblocks = ceil_div(K, Tr::kKC);
  const int64_t KB = round_up(ceil_div(K, kblocks), 128);

  // Jobs: NC output rows x MC x rows.
  int64_t NC = 64, MC = round_up(t, MR);
  // Few rows read in place on several threads: all of x per job, panels of ~kFewRowItemBytes of
  // weights, split by steal_for (each thread streams one contiguous share of W's rows, and the
  // first strip's prefetch runs on across its panels; ~4 dynamic chunks per thread restarted the
  // stream at every chunk: 3-15% slower on cold weights at 2 threads in one round of
  // bench/native/fewrow_gemm.cc, within noise in the other; bench/RESULTS.md wt12-fewrow).
  // A split never changes a result: each output is summed over the same k blocks, strip by strip.
  const bool stream = t <= kInPlaceMaxRows && nthreads > 1 && Tr::in_place(w, NR, K);
  if (stream) {
    NC = kFewRowItemBytes / (K * static_cast<int64_t>(sizeof(WE))) / NR * NR;
    NC = NC < 16 ? 16 : NC > 64 ? 64 : NC;
  } else {
    // Shrink the tiles until every thread has a couple of jobs: first the panels (down to 16
    // rows), then the x chunks.
    while (NC > 16 && ceil_div(N, NC) * ceil_div(t, MC) < 2 * nthreads) NC /= 2;
    while (MC > MR && ceil_div(N, NC) * ceil_div(t, MC) < 2 * nthreads) MC = round_up(MC / 2, MR);
  }
  const int64_t npanels = ceil_div(N, NC), mchunks = ceil_div(t, MC);

  const auto run_job = [&](int64_t job) {
    const int64_t n0 = (job / mchunks) * NC, nlen = N - n0 < NC ? N - n0 : NC, ncp = round_up(nlen, NR);
    const int64_t m0 = (job % mchunks) * MC, mlen = t - m0 < MC ? t - m0 : MC, mlenp = round_up(mlen, MR);
    float* c = static_cast<float*>(scratch(kScratchC, mlenp * NC * sizeof(float)));
    WE* panel = static_cast<WE*>(scratch(kScratchPanel, NC * KB * sizeof(WE)));
    for (int64_t k0 = 0; k0 < K; k0 += KB) {
      const int64_t klen = K - k0 < KB ? K - k0 : KB, kcp = round_up(klen, Tr::kStep);
      if (t <= kInPlaceMaxRows && Tr::in_place(w, nlen, klen)) {
        // strips of even height (t = 8: 4 + 4, not 6 + 2: fewer loads per product in the last strip)
        const WE* wp = static_cast<const WE*>(w.data) + n0 * K + k0;
        const int64_t SR = ceil_div(mlen, ceil_div(mlen, MR));
        // the group `ahead` groups on (past the panel's end: the next panel's, in W's next rows) is
        // requested into L1 by the first strip (kPrefetchBytes), the group `far` on into L2 by the
        // last (kFarPrefetchBytes; the same strip when there is one)
        const int64_t row_bytes = K * static_cast<int64_t>(sizeof(WE));
        const int64_t ahead = prefetch_groups(row_bytes, kPrefetchBytes) * NR,
                      far = prefetch_groups(row_bytes, kFarPrefetchBytes) * NR;
        const int64_t last = (ceil_div(mlen, SR) - 1) * SR;
        for (int64_t j = 0; j < ncp; j += NR) {
          const WE* next = n0 + j + ahead + NR <= N ? wp + (j + ahead) * K : nullptr;
          const WE* far_next = n0 + j + far + NR <= N ? wp + (j + far) * K : nullptr;
          for (int64_t m = 0; m < mlen; m += SR)
            micro_rows<Tr>(mlen - m < SR ? mlen - m : SR, xp + (m0 + m) * Kp + k0, Kp, wp + j * K, K, kcp, c + m * NC + j, NC,
                           k0 > 0, m == 0 ? next : nullptr, m == last ? far_next : nullptr);
        }
        continue;
      }
      Tr::pack_panel(w, n0, nlen, ncp, k0, klen, kcp, panel);
      for (int64_t m = 0; m < mlen; m += MR)
        for (int64_t j = 0; j < ncp; j += NR)
          micro_rows<Tr>(mlen - m < MR ? mlen - m : MR, xp + (m0 + m) * Kp + k0, Kp, panel + j * kcp, kcp, kcp, c + m * NC + j,
                         NC, k0 > 0, static_cast<const WE*>(nullptr), static_cast<const WE*>(nullptr));
    }
    for (int64_t m = 0; m < mlen; ++m)
      for (int64_t j = 0; j < nlen; ++j) {
        float v = c[m * NC + j];
        if (w.dtype == DType::I8) v *= w.scale[n0 + j];
        store_y(y, yt, (m0 + m) * N + n0 + j, v);
      }
  };
  if (stream)
    steal_for(npanels, run_job);
  else
    parallel_for(npanels * mchunks, 1, [&](int64_t j0, int64_t j1) {
      for (int64_t j = j0; j < j1; ++j) run_job(j);
    });
}

// Per-ISA entry points; each handles both the GEMV and the GEMM path.
// int8_act: int4 GEMVs may quantize x to int8 (linear_i8act.h: AVX2, AVX512-VNNI; see linear.h's
// MatmulPrecision) where int4_int8_act_shape holds.
// bf16_dot: the AVX512-BF16 GEMM for bf16 weights (x rounded to bf16); bf16_dequant: also for fp8,
// int8 and int4 weights, their panels dequantized to bf16 (see linear.h's MatmulPrecision).
void linear_avx2(int64_t t, const void* x, DType xt, const WeightRef& w, void* y, DType yt, bool int8_act);
void linear_avx512(int64_t t, const void* x, DType xt, const WeightRef& w, void* y, DType yt, bool bf16_dot, bool bf16_dequant,
                   bool int8_act);
uint64_t read_sum_lines_avx2(const ReadSpan* spans, int64_t n);
uint64_t read_sum_lines_avx512(const ReadSpan* spans, int64_t n);

// read_sum's split (linear.h): the spans' whole 64-byte lines, numbered span after span, split over
// the pool threads as one sequence; sum(p, lines) returns the sum of the 64-bit words of `lines`
// lines from p (one piece of one span). Returns the sum of all pieces, modulo 2^64.
template <class Sum>
uint64_t read_sum_split(const ReadSpan* spans, int64_t n, Sum&& sum) {
  std::vector<int64_t> first(n + 1, 0);  // first[i]: the lines before span i
  for (int64_t i = 0; i < n; ++i) first[i + 1] = first[i] + spans[i].bytes / 64;
  std::atomic<uint64_t> total{0};
  parallel_for(first[n], 1 << 10, [&](int64_t b, int64_t e) {
    uint64_t s = 0;
    for (int64_t si = std::upper_bound(first.begin(), first.end(), b) - first.begin() - 1; b < e; ++si) {
      const int64_t end = std::min(e, first[si + 1]);
      s += sum(static_cast<const uint8_t*>(spans[si].p) + (b - first[si]) * 64, end - b);
      b = end;
    }
    total += s;
  });
  return total.load();
}

}  // namespace lc::cpu::linear_detail
