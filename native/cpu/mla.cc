// MLA attention kernels (see mla.h). Structure:
//   - two micro-kernels, written once per ISA (scalar, AVX2, AVX-512) and per key/value element
//     type (f32, bf16 raw bits):
//       scores: out[i][j] = (qa_i . ka_j + qb_i . kb_j) * scale   for up to 4 query rows i and a
//               tile of key rows j given by pointers (paged cache rows, strided weights...)
//       pv:     acc_i += sum_j p[i][j] * v_j                       for up to 4 accumulator rows
//   - the attention algorithms (flash-style online softmax in fp32, running max) built on them.
// Dispatch happens once per kernel call on lc::cpu::isa().
#include "mla.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

#include "features.h"
#include "linear.h"
#include "numeric.h"
#include "quant.h"
#include "profile.h"
#include "threadpool.h"

#if defined(__x86_64__) || defined(_M_X64)
#include "simd.h"
#define LC_ATTN_X86 1
#endif

namespace lc::cpu {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Requests the line at p into L1 (kLevel 1: prefetcht0) or L2 only (kLevel 2: prefetcht1). An asm
// statement, not __builtin_prefetch: GCC deletes a loop whose body is only __builtin_prefetch calls
// (they have no side effects to it), so the decode's tile prefetch loops were never emitted.
template <int kLevel>
inline void prefetch_line(const char* p) {
  static_assert(kLevel == 1 || kLevel == 2, "prefetch_line: L1 or L2");
#if defined(__x86_64__) || defined(_M_X64)
  if constexpr (kLevel == 1)
    asm volatile("prefetcht0 %0" : : "m"(*p));
  else
    asm volatile("prefetcht1 %0" : : "m"(*p));
#else
  __builtin_prefetch(p, 0, kLevel == 1 ? 3 : 2);
#endif
}
// Prefetches bytes [0, n) at p into L1 (kLevel 1) or L2 (kLevel 2).
template <int kLevel = 1>
inline void prefetch_row(const void* p, int64_t n) {
  const char* c = static_cast<const char*>(p);
  for (int64_t o = 0; o < n; o += 64) prefetch_line<kLevel>(c + o);
  if (n > 0) prefetch_line<kLevel>(c + n - 1);  // (a row that starts inside a line ends in one more)
}

constexpr int kMaxQ = 4;    // query / accumulator rows per micro-kernel call
constexpr int kTile = 16;   // keys per tile (decode: one tile of cache rows stays in L1/L2 for all heads)
constexpr int kPTile = 32;  // keys per tile in prefill

// Micro-kernels keep their nq (1..kMaxQ) query / accumulator rows in registers, so the row count
// is a template argument: with_rows calls f(std::integral_constant<int, nq>).
template <typename F>
inline void with_rows(int nq, F&& f) {
  switch (nq) {
    case 1: f(std::integral_constant<int, 1>{}); break;
    case 2: f(std::integral_constant<int, 2>{}); break;
    case 3: f(std::integral_constant<int, 3>{}); break;
    default: f(std::integral_constant<int, kMaxQ>{}); break;
  }
}

inline float ld(const float* p, int64_t i) { return p[i]; }
inline float ld(const uint16_t* p, int64_t i) { return bf16_to_f32(p[i]); }

// The pieces every online softmax below shares. running_max: max(m, s[0, n)), NaN when a score
// is NaN (a NaN score poisons the row, never vanishes).
inline float running_max(const float* s, int n, float m) {
  float mx = m;
  bool nan = false;
  for (int j = 0; j < n; ++j) {
    mx = s[j] > mx ? s[j] : mx;
    nan |= s[j] != s[j];
  }
  return nan ? std::numeric_limits<float>::quiet_NaN() : mx;
}
// Given the new running max mx: false when every key so far is masked (the scores are zeroed:
// nothing to add); otherwise corr = exp(m - mx), the factor the row's accumulator and sum take.
inline bool softmax_rescale(float* s, int n, float m, float mx, float& corr) {
  if (mx == kNegInf) {
    for (int j = 0; j < n; ++j) s[j] = 0.0f;
    return false;
  }
  corr = m == kNegInf ? 0.0f : std::exp(m - mx);
  return true;
}

float softmax_scalar(float* s, int n, float& m, float& l) {
  const float mx = running_max(s, n, m);
  float corr;
  if (!softmax_rescale(s, n, m, mx, corr)) return 1.0f;
  float sum = 0.0f;
  for (int j = 0; j < n; ++j) {
    const float e = std::exp(s[j] - mx);
    s[j] = e;
    sum += e;
  }
  l = l * corr + sum;
  m = mx;
  return corr;
}

template <typename KT>
using ScoresFn = void (*)(int nq, const float* qa, int64_t qas, const float* qb, int64_t qbs, int nt, const KT* const* ka,
                          const KT* const* kb, int64_t da, int64_t db, float scale, float* out, int64_t os);
// acc rows are first multiplied by corr[i] (when corr is not null): the online-softmax rescale.
template <typename VT>
using PvFn = void (*)(int nq, float* acc, int64_t as, const float* corr, const float* p, int64_t ps, int nt, const VT* const* v,
                      int64_t dv);
// One row of an online softmax: folds the scores s[0:n] (overwritten with exp(s - m_new)) into the
// running max m and sum l; returns the factor the row's accumulator must be multiplied by.
using SoftmaxFn = float (*)(float* s, int n, float& m, float& l);

// ---------------------------------------------------------------------------------------------
// Scalar micro-kernels (the fallback and the reference for the SIMD ones).

template <typename KT>
void scores_scalar(int nq, const float* qa, int64_t qas, const float* qb, int64_t qbs, int nt, const KT* const* ka,
                   const KT* const* kb, int64_t da, int64_t db, float scale, float* out, int64_t os) {
  for (int j = 0; j < nt; ++j)
    for (int i = 0; i < nq; ++i) {
      const float* a = qa + i * qas;
      float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
      int64_t c = 0;
      for (; c + 4 <= da; c += 4) {
        s0 += a[c] * ld(ka[j], c);
        s1 += a[c + 1] * ld(ka[j], c + 1);
        s2 += a[c + 2] * ld(ka[j], c + 2);
        s3 += a[c + 3] * ld(ka[j], c + 3);
      }
      for (; c < da; ++c) s0 += a[c] * ld(ka[j], c);
      if (db > 0) {
        const float* b = qb + i * qbs;
        for (c = 0; c < db; ++c) s1 += b[c] * ld(kb[j], c);
      }
      out[i * os + j] = ((s0 + s1) + (s2 + s3)) * scale;
    }
}

template <typename VT>
void pv_scalar(int nq, float* acc, int64_t as, const float* corr, const float* p, int64_t ps, int nt, const VT* const* v,
               int64_t dv) {
  for (int i = 0; i < nq; ++i) {
    float* a = acc + i * as;
    if (corr && corr[i] != 1.0f)
      for (int64_t c = 0; c < dv; ++c) a[c] *= corr[i];
    for (int j = 0; j < nt; ++j) {
      const float w = p[i * ps + j];
      if (w == 0.0f) continue;
      for (int64_t c = 0; c < dv; ++c) a[c] += w * ld(v[j], c);
    }
  }
}

#ifdef LC_ATTN_X86
using simd::Avx2;
using simd::Avx512;

// ---------------------------------------------------------------------------------------------
// Pieces of the micro-kernels written once for both ISAs (V: simd::Avx2 or simd::Avx512).

// acc[i][t] += q_i[c, c + kLanes) * key_t[c, c + kLanes) lane-wise: one whole vector of NQ x NK dot products.
template <class V, int NQ, int NK, typename KT>
LC_SIMD_INLINE void dot_step(typename V::F (&acc)[NQ][NK], const float* q, int64_t qs, const KT* const* k, int64_t c) {
  typename V::F kv[NK];
  for (int t = 0; t < NK; ++t) kv[t] = V::widen_load(k[t] + c);
  for (int i = 0; i < NQ; ++i) {
    const typename V::F qv = V::load(q + i * qs + c);
    for (int t = 0; t < NK; ++t) acc[i][t] = V::fmadd(qv, kv[t], acc[i][t]);
  }
}

// The online softmax's exponentials over the whole vectors of s[0, n): s[j] = exp(s[j] - mx)
// (Cephes, simd.h), their lane-wise sum in sum; j ends at the first element left.
template <class V>
LC_SIMD_INLINE void exp_vectors(float* s, int n, float mx, int& j, typename V::F& sum) {
  const typename V::F m = V::set1(mx);
  sum = V::zero();
  for (j = 0; j + V::kLanes <= n; j += V::kLanes) {
    const typename V::F e = V::exp(V::sub(V::load(s + j), m));
    V::store(s + j, e);
    sum = V::add(sum, e);
  }
}

// ---------------------------------------------------------------------------------------------
// AVX-512

// 16 keys / values (f32 or bf16 bits) as f32, the lanes in m (the others zero).
LC_TARGET_AVX512 inline __m512 ld16m(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
LC_TARGET_AVX512 inline __m512 ld16m(const uint16_t* p, __mmask16 m) {
  return Avx512::widen_bf16(_mm256_maskz_loadu_epi16(m, p));
}

// acc[i][k] += q_i[0:n] * key_k[0:n] (lane-wise)
template <int NQ, int NK, typename KT>
LC_TARGET_AVX512 inline void dot512(__m512 (&acc)[NQ][NK], const float* q, int64_t qs, const KT* const* k, int64_t n) {
  int64_t c = 0;
  for (; c + 16 <= n; c += 16) dot_step<Avx512>(acc, q, qs, k, c);
  if (c < n) {
    __mmask16 m = static_cast<__mmask16>((1u << (n - c)) - 1);
    __m512 kv[NK];
    for (int t = 0; t < NK; ++t) kv[t] = ld16m(k[t] + c, m);
    for (int i = 0; i < NQ; ++i) {
      __m512 qv = _mm512_maskz_loadu_ps(m, q + i * qs + c);
      for (int t = 0; t < NK; ++t) acc[i][t] = _mm512_fmadd_ps(qv, kv[t], acc[i][t]);
    }
  }
}

template <int NQ, typename KT>
LC_TARGET_AVX512 void scores512_n(const float* qa, int64_t qas, const float* qb, int64_t qbs, int nt, const KT* const* ka,
                                  const KT* const* kb, int64_t da, int64_t db, float scale, float* out, int64_t os) {
  int j = 0;
  const __m128 vs = _mm_set1_ps(scale);
  for (; j + 4 <= nt; j += 4) {  // 4 queries x 4 keys in registers
    __m512 acc[NQ][4];
    for (int i = 0; i < NQ; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = _mm512_setzero_ps();
    dot512<NQ, 4>(acc, qa, qas, ka + j, da);
    if (db > 0) dot512<NQ, 4>(acc, qb, qbs, kb + j, db);
    for (int i = 0; i < NQ; ++i)
      _mm_storeu_ps(out + i * os + j, _mm_mul_ps(Avx512::hsum4(acc[i][0], acc[i][1], acc[i][2], acc[i][3]), vs));
  }
  for (; j < nt; ++j) {
    __m512 acc[NQ][1];
    for (int i = 0; i < NQ; ++i) acc[i][0] = _mm512_setzero_ps();
    dot512<NQ, 1>(acc, qa, qas, ka + j, da);
    if (db > 0) dot512<NQ, 1>(acc, qb, qbs, kb + j, db);
    for (int i = 0; i < NQ; ++i) out[i * os + j] = _mm512_reduce_add_ps(acc[i][0]) * scale;
  }
}

template <typename KT>
LC_TARGET_AVX512 void scores_avx512(int nq, const float* qa, int64_t qas, const float* qb, int64_t qbs, int nt,
                                    const KT* const* ka, const KT* const* kb, int64_t da, int64_t db, float scale, float* out,
                                    int64_t os) {
  with_rows(nq, [&](auto rows) { scores512_n<decltype(rows)::value>(qa, qas, qb, qbs, nt, ka, kb, da, db, scale, out, os); });
}

// NC vectors of 16 columns at a time, every accumulator row kept in registers over the whole tile.
// (The unroll pragmas here and in pv512_wide: without them GCC kept the accumulators on the stack, as in pv_bf.)
template <int NQ, int NC, typename VT>
LC_TARGET_AVX512 inline void pv512_cols(float* acc, int64_t as, const float* corr, const float* p, int64_t ps, int nt,
                                        const VT* const* v, int64_t c, __mmask16 m) {
  __m512 a[NQ][NC];
#pragma GCC unroll 16
  for (int i = 0; i < NQ; ++i)
#pragma GCC unroll 16
    for (int u = 0; u < NC; ++u) {
      a[i][u] = NC == 1 ? _mm512_maskz_loadu_ps(m, acc + i * as + c) : _mm512_loadu_ps(acc + i * as + c + 16 * u);
      if (corr) a[i][u] = _mm512_mul_ps(a[i][u], _mm512_set1_ps(corr[i]));
    }
  for (int j = 0; j < nt; ++j) {
    __m512 vv[NC];
#pragma GCC unroll 16
    for (int u = 0; u < NC; ++u) vv[u] = NC == 1 ? ld16m(v[j] + c, m) : Avx512::widen_load(v[j] + c + 16 * u);
#pragma GCC unroll 16
    for (int i = 0; i < NQ; ++i) {
      __m512 w = _mm512_set1_ps(p[i * ps + j]);
#pragma GCC unroll 16
      for (int u = 0; u < NC; ++u) a[i][u] = _mm512_fmadd_ps(w, vv[u], a[i][u]);
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < NQ; ++i)
#pragma GCC unroll 16
    for (int u = 0; u < NC; ++u) {
      if (NC == 1)
        _mm512_mask_storeu_ps(acc + i * as + c, m, a[i][u]);
      else
        _mm512_storeu_ps(acc + i * as + c + 16 * u, a[i][u]);
    }
}

// One accumulator row, 256 columns (16 vectors) at a time: each value row's slice is read as one
// run of 512 (bf16) or 1,024 bytes (the absorbed query's W_UK rows at decode).
template <typename VT>
LC_TARGET_AVX512 inline void pv512_wide(float* acc, const float* corr, const float* p, int nt, const VT* const* v, int64_t c) {
  constexpr int NC = 16;
  __m512 a[NC];
#pragma GCC unroll 16
  for (int u = 0; u < NC; ++u) {
    a[u] = _mm512_loadu_ps(acc + c + 16 * u);
    if (corr) a[u] = _mm512_mul_ps(a[u], _mm512_set1_ps(corr[0]));
  }
  for (int j = 0; j < nt; ++j) {
    const __m512 w = _mm512_set1_ps(p[j]);
#pragma GCC unroll 16
    for (int u = 0; u < NC; ++u) a[u] = _mm512_fmadd_ps(w, Avx512::widen_load(v[j] + c + 16 * u), a[u]);
  }
#pragma GCC unroll 16
  for (int u = 0; u < NC; ++u) _mm512_storeu_ps(acc + c + 16 * u, a[u]);
}

template <int NQ, typename VT>
LC_TARGET_AVX512 void pv512_n(float* acc, int64_t as, const float* corr, const float* p, int64_t ps, int nt, const VT* const* v,
                              int64_t dv) {
  int64_t c = 0;
  if constexpr (NQ == 1)
    for (; c + 256 <= dv; c += 256) pv512_wide(acc, corr, p, nt, v, c);
  for (; c + 64 <= dv; c += 64) pv512_cols<NQ, 4>(acc, as, corr, p, ps, nt, v, c, 0xffff);
  for (; c < dv; c += 16) {
    int64_t r = std::min<int64_t>(16, dv - c);
    pv512_cols<NQ, 1>(acc, as, corr, p, ps, nt, v, c, static_cast<__mmask16>((1u << r) - 1));
  }
}

template <typename VT>
LC_TARGET_AVX512 void pv_avx512(int nq, float* acc, int64_t as, const float* corr, const float* p, int64_t ps, int nt,
                                const VT* const* v, int64_t dv) {
  with_rows(nq, [&](auto rows) { pv512_n<decltype(rows)::value>(acc, as, corr, p, ps, nt, v, dv); });
}

LC_TARGET_AVX512 float softmax_avx512(float* s, int n, float& m, float& l) {
  const __m512 ninf = _mm512_set1_ps(kNegInf);
  __m512 vmax = ninf;
  for (int j = 0; j < n; j += 16) {
    const __mmask16 mk = static_cast<__mmask16>(n - j >= 16 ? 0xffff : (1u << (n - j)) - 1);
    vmax = _mm512_max_ps(vmax, _mm512_mask_loadu_ps(ninf, mk, s + j));
  }
  __mmask16 nan = 0;
  for (int j = 0; j < n; j += 16) {
    const __mmask16 mk = static_cast<__mmask16>(n - j >= 16 ? 0xffff : (1u << (n - j)) - 1);
    const __m512 v = _mm512_maskz_loadu_ps(mk, s + j);
    nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  }
  const float mx = nan ? std::numeric_limits<float>::quiet_NaN() : std::max(m, _mm512_reduce_max_ps(vmax));
  float corr;
  if (!softmax_rescale(s, n, m, mx, corr)) return 1.0f;
  __m512 vsum;
  int j;
  exp_vectors<Avx512>(s, n, mx, j, vsum);
  if (j < n) {
    const __mmask16 mk = static_cast<__mmask16>((1u << (n - j)) - 1);
    const __m512 e =
        _mm512_maskz_mov_ps(mk, Avx512::exp(_mm512_sub_ps(_mm512_mask_loadu_ps(ninf, mk, s + j), _mm512_set1_ps(mx))));
    _mm512_mask_storeu_ps(s + j, mk, e);
    vsum = _mm512_add_ps(vsum, e);
  }
  l = l * corr + _mm512_reduce_add_ps(vsum);
  m = mx;
  return corr;
}

// ---------------------------------------------------------------------------------------------
// AVX512-BF16 absorbed decode over a bf16 cache (decode_unit_bf16). For one tile of cache rows,
// every head of the sequence reads the same rows (MQA in absorbed form), so the tile is two small GEMMs:
//   S^T[rows, heads] = K[rows, dl + dr] x Q^T[dl + dr, heads]  (vdpbf16ps, heads in the lanes: each
//                      key's value pair is broadcast against the pairs of 8 heads' queries, packed once
//                      per unit; no horizontal sums, and the softmax over keys is lane-wise)
//   acc[heads, dl] = corr * acc + P[heads, rows] x V[rows, dl]  (vdpbf16ps, V packed in row pairs)
// 8 heads a vector: the scores take two lanes a head in 512-bit vectors (even and odd value pairs,
// summed at the end), the softmax one lane a head in 256-bit vectors; 8 heads (the small preset) fill
// them.
// Numerics: q (q_lat ++ q_pe) and p = exp(s - m) are rounded to bf16 (round to nearest even),
// every product is exact and sums are fp32; the running max m, the sum l (of the unrounded fp32 p)
// and the rescale stay fp32, like FlashMLA on GPUs. Relative error per term is about 2^-9 on each
// of the score and p, against 2^-24 in the fp32 path. Each head is one lane of the same instructions,
// so its result does not depend on which heads share its vectors.

constexpr int kBfTile = 32;                             // cache rows per tile
constexpr int kBfPairs = kBfTile / 2;                   // row pairs per tile
constexpr int kBfLanes = 8;                             // heads per 256-bit vector
constexpr int kBfChunk = 16;                            // heads per pass over a split's rows (two vectors)
constexpr int kBfGroupChunk = 32;                       // the same where the heads are several rows' (four vectors)
constexpr int64_t kBfMaxRow = 2048;                     // cache row (dl + dr) limit of the packed query
constexpr int64_t kBfMaxDl = 1024;                      // latent width limit of the packed value tile
constexpr int64_t kBfAhead = 2;                         // tiles between the one computed and the one requested into L2
alignas(64) const uint16_t kBfZeroRow[kBfMaxRow] = {};  // the rows of a tile beyond its last key

// s[j][v * 8 + i] = (k_j . q_(v * 8 + i)) * scale for JB keys and HV vectors of 8 heads (a head per
// lane pair). qz: the queries as bf16 pairs, qz[g][v][2 i + e] = pair 2 g + e of head v * 8 + i (zero
// past the row); each key's 4 values 4 g .. 4 g + 3 are broadcast as one 64-bit pair of pairs, so a
// head's lanes 2 i and 2 i + 1 sum the even and the odd pairs, added at the end. (A 256-bit form
// with one pair per broadcast issues twice the broadcasts and dp instructions: 1.15x slower.)
// k[j]: bf16 rows of `row` values.
template <int HV, int JB>
LC_TARGET_AVX512BF16 void scores_z(const uint32_t* qz, int64_t row, const uint16_t* const* k, float scale, float* s) {
  static_assert((JB * HV) % 2 == 0, "score vectors are stored in pairs");
  __m512 acc[JB][HV];
  for (int j = 0; j < JB; ++j)
    for (int v = 0; v < HV; ++v) acc[j][v] = _mm512_setzero_ps();
  const int64_t ng = row / 4;
  for (int64_t g = 0; g < ng; ++g) {
    __m512bh qv[HV];
    for (int v = 0; v < HV; ++v) qv[v] = (__m512bh)_mm512_load_si512(qz + (g * HV + v) * 16);
    for (int j = 0; j < JB; ++j) {
      int64_t quad;
      std::memcpy(&quad, k[j] + 4 * g, sizeof(quad));
      const __m512bh kv = (__m512bh)_mm512_set1_epi64(quad);
      for (int v = 0; v < HV; ++v) acc[j][v] = _mm512_dpbf16_ps(acc[j][v], kv, qv[v]);
    }
  }
  if (row % 4 != 0) {  // the last 1-3 values alone (the next ones may be another row's, or past the cache)
    const __mmask8 m = static_cast<__mmask8>((1u << (row % 4)) - 1);
    __m512bh qv[HV];
    for (int v = 0; v < HV; ++v) qv[v] = (__m512bh)_mm512_load_si512(qz + (ng * HV + v) * 16);
    for (int j = 0; j < JB; ++j) {
      const __m512bh kv = (__m512bh)_mm512_broadcastq_epi64(_mm_maskz_loadu_epi16(m, k[j] + 4 * ng));
      for (int v = 0; v < HV; ++v) acc[j][v] = _mm512_dpbf16_ps(acc[j][v], kv, qv[v]);
    }
  }
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  const __m512 vs = _mm512_set1_ps(scale);
  const __m512* a = &acc[0][0];
  for (int f = 0; f < JB * HV; f += 2) {
    const __m512 sum = _mm512_add_ps(_mm512_permutex2var_ps(a[f], even, a[f + 1]), _mm512_permutex2var_ps(a[f], odd, a[f + 1]));
    _mm512_store_ps(s + f * 8, _mm512_mul_ps(sum, vs));
  }
}

// The lanes of a head vector that take key j: below their limit lim (kMasked) or j < nt, and not dead.
template <bool kMasked>
LC_TARGET_AVX512BF16 inline __mmask8 keys_in(__m256i lim, int j, int nt, __mmask8 dead) {
  return static_cast<__mmask8>(
      (kMasked ? _mm256_cmpgt_epi32_mask(lim, _mm256_set1_epi32(j)) : static_cast<__mmask8>(j < nt ? 0xff : 0)) &
      static_cast<__mmask8>(~dead));
}

// The online softmax of one tile, 8 heads a vector: s[j][v * 8 + i] (j < kBfTile) is overwritten
// with p = exp(s - m_new) for the keys j < ntl[v * 8 + i] of lane i (zero for the others: keys past
// the tile's end, or past the lane's own sequence row), m / l (per lane) updated, corr = the factor
// the heads' accumulators take. Per lane as softmax_avx512: a NaN score makes m NaN, and while every
// key so far is masked (m_new = -inf) p is zero and m, l, corr stay -inf, 0, 1; a lane with no key in
// the tile keeps m and l, corr 1, so that its accumulator is the one of a pass that skipped the tile.
// kMasked false: every lane has the same nt keys (ntl unread; the masks fold away).
template <int HV, bool kMasked>
LC_TARGET_AVX512BF16 void softmax_t(float* s, int nt, const int32_t* ntl, float* m, float* l, float* corr) {
  const __m256 ninf = _mm256_set1_ps(kNegInf), zero = _mm256_setzero_ps();
  for (int v = 0; v < HV; ++v) {
    const __m256i lim = kMasked ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ntl + v * 8)) : _mm256_set1_epi32(nt);
    const __mmask8 none = kMasked ? _mm256_cmple_epi32_mask(lim, _mm256_setzero_si256()) : 0;
    __m256 vmax = ninf;
    __mmask8 nan = 0;
    for (int j = 0; j < nt; ++j) {
      const __mmask8 in = kMasked ? _mm256_cmpgt_epi32_mask(lim, _mm256_set1_epi32(j)) : static_cast<__mmask8>(0xff);
      const __m256 x = _mm256_mask_mov_ps(ninf, in, _mm256_load_ps(s + (j * HV + v) * 8));
      vmax = _mm256_max_ps(vmax, x);
      nan |= _mm256_mask_cmp_ps_mask(in, x, x, _CMP_UNORD_Q);
    }
    const __m256 mo = _mm256_loadu_ps(m + v * 8), lo = _mm256_loadu_ps(l + v * 8);
    __m256 mx = _mm256_max_ps(vmax, mo);  // a NaN m stays (the second operand)
    mx = _mm256_mask_blend_ps(nan, mx, _mm256_set1_ps(std::numeric_limits<float>::quiet_NaN()));
    const __mmask8 dead = _mm256_cmp_ps_mask(mx, ninf, _CMP_EQ_OQ) | none;
    __m256 cr = Avx2::exp(_mm256_sub_ps(mo, mx));
    cr = _mm256_mask_blend_ps(_mm256_cmp_ps_mask(mo, ninf, _CMP_EQ_OQ), cr, zero);
    cr = _mm256_mask_blend_ps(dead, cr, _mm256_set1_ps(1.0f));
    __m256 sum = zero;
    if constexpr (HV == 1) {
      // One head vector: keys j and j + 1 are adjacent 8-lane rows of s, so their exponentials go
      // as one 16-lane vector (half the exp instructions: the small preset's 8 heads); the sum
      // still takes key j, then key j + 1 (the same bits as key by key).
      const __m512 mx2 = _mm512_broadcast_f32x8(mx);
      for (int j = 0; j < kBfTile; j += 2) {
        float* sj = s + j * 8;
        const __mmask16 in =
            static_cast<__mmask16>(keys_in<kMasked>(lim, j, nt, dead) | keys_in<kMasked>(lim, j + 1, nt, dead) << 8);
        __m512 e = _mm512_setzero_ps();
        if (in != 0) {
          e = _mm512_maskz_mov_ps(in, Avx512::exp(_mm512_sub_ps(_mm512_load_ps(sj), mx2)));
          sum = _mm256_add_ps(_mm256_add_ps(sum, _mm512_castps512_ps256(e)), _mm512_extractf32x8_ps(e, 1));
        }
        _mm512_store_ps(sj, e);
      }
    } else {
      for (int j = 0; j < kBfTile; ++j) {
        float* sj = s + (j * HV + v) * 8;
        const __mmask8 in = keys_in<kMasked>(lim, j, nt, dead);
        __m256 e = zero;
        if (in != 0) {
          e = _mm256_maskz_mov_ps(in, Avx2::exp(_mm256_sub_ps(_mm256_load_ps(sj), mx)));
          sum = _mm256_add_ps(sum, e);
        }
        _mm256_store_ps(sj, e);
      }
    }
    _mm256_storeu_ps(l + v * 8, _mm256_mask_blend_ps(dead, _mm256_fmadd_ps(lo, cr, sum), lo));
    _mm256_storeu_ps(m + v * 8, _mm256_mask_blend_ps(dead, mx, mo));
    _mm256_storeu_ps(corr + v * 8, cr);
  }
}

// p[h][jp] = bf16 pair (s[2jp][h], s[2jp + 1][h]) for the HV * 8 heads of a tile's probabilities
// s[kBfTile][HV * 8]: 8 x 8 transposes of keys x heads.
template <int HV>
LC_TARGET_AVX512BF16 void pack_p(const float* s, uint32_t* p) {
  for (int v = 0; v < HV; ++v) {
    __m256 t[kBfTile / 8][8];  // [key block][head]: 8 keys
    for (int b = 0; b < kBfTile / 8; ++b) {
      __m256 r[8], u[8];
      for (int i = 0; i < 8; ++i) r[i] = _mm256_load_ps(s + ((8 * b + i) * HV + v) * 8);
      for (int i = 0; i < 8; i += 2) {
        u[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        u[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
      }
      for (int i = 0; i < 8; i += 4)
        for (int k = 0; k < 2; ++k) {
          r[i + k] = _mm256_shuffle_ps(u[i + k], u[i + k + 2], _MM_SHUFFLE(1, 0, 1, 0));
          r[i + k + 2] = _mm256_shuffle_ps(u[i + k], u[i + k + 2], _MM_SHUFFLE(3, 2, 3, 2));
        }
      // r[0] = heads 0,4 of keys 0-3 / 4-7 halves ... : lanes 0-3 from keys 0-3, 4-7 from keys 4-7
      for (int i = 0; i < 4; ++i) {
        const int h0 = i == 0 ? 0 : i == 1 ? 2 : i == 2 ? 1 : 3;  // r[0], r[1], r[2], r[3]: heads 0, 2, 1, 3 (+4)
        t[b][h0] = _mm256_permute2f128_ps(r[i], r[i + 4], 0x20);
        t[b][h0 + 4] = _mm256_permute2f128_ps(r[i], r[i + 4], 0x31);
      }
    }
    for (int h = 0; h < 8; ++h) {
      const __m512 lo = _mm512_insertf32x8(_mm512_castps256_ps512(t[0][h]), t[1][h], 1);
      const __m512 hi = _mm512_insertf32x8(_mm512_castps256_ps512(t[2][h]), t[3][h], 1);
      _mm512_store_si512(p + (v * 8 + h) * kBfPairs, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
    }
  }
}

// acc[h][c] = acc[h][c] * corr[h] + sum_jp p[h][jp] . vp[u][jp] for HB heads and CB vectors of 16
// latent columns (the last one masked by mlast); corr null: acc taken as it is. p: bf16 pairs (p_2jp, p_2jp+1) as uint32;
// vp[u][jp]: 16 columns of rows 2jp and 2jp+1 interleaved, vs elements between consecutive u.
template <int HB, int CB>
LC_TARGET_AVX512BF16 void pv_bf(float* acc, int64_t as, const float* corr, const uint32_t* p, int64_t ps, int np,
                                const uint16_t* vp, int64_t vs, __mmask16 mlast) {
  // (The unroll pragmas: unrolled before GCC's scalar replacement, a stays in registers; left to
  // GCC, it kept a on the stack around the loop, 64 spills and reloads a call.)
  __m512 a[HB][CB];
#pragma GCC unroll 16
  for (int h = 0; h < HB; ++h)
#pragma GCC unroll 16
    for (int u = 0; u < CB; ++u) {
      a[h][u] = _mm512_maskz_loadu_ps(u == CB - 1 ? mlast : 0xffff, acc + h * as + 16 * u);
      if (corr) a[h][u] = _mm512_mul_ps(a[h][u], _mm512_set1_ps(corr[h]));
    }
  for (int jp = 0; jp < np; ++jp) {
    __m512bh vv[CB];
#pragma GCC unroll 16
    for (int u = 0; u < CB; ++u) vv[u] = (__m512bh)_mm512_load_si512(vp + u * vs + jp * 32);
#pragma GCC unroll 16
    for (int h = 0; h < HB; ++h) {
      const __m512bh pw = (__m512bh)_mm512_set1_epi32(static_cast<int>(p[h * ps + jp]));
#pragma GCC unroll 16
      for (int u = 0; u < CB; ++u) a[h][u] = _mm512_dpbf16_ps(a[h][u], pw, vv[u]);
    }
  }
#pragma GCC unroll 16
  for (int h = 0; h < HB; ++h)
#pragma GCC unroll 16
    for (int u = 0; u < CB; ++u) _mm512_mask_storeu_ps(acc + h * as + 16 * u, u == CB - 1 ? mlast : 0xffff, a[h][u]);
}

using PvBfFn = void (*)(float*, int64_t, const float*, const uint32_t*, int64_t, int, const uint16_t*, int64_t, __mmask16);
#define LC_BF_ROW(F, H) \
  { F<H, 1>, F<H, 2>, F<H, 3>, F<H, 4> }
const PvBfFn kPvBf[4][4] = {LC_BF_ROW(pv_bf, 1), LC_BF_ROW(pv_bf, 2), LC_BF_ROW(pv_bf, 3), LC_BF_ROW(pv_bf, 4)};
#undef LC_BF_ROW

// f32 [n] -> bf16 (round to nearest even) at dst.
LC_TARGET_AVX512BF16 inline void to_bf16(uint16_t* dst, const float* src, int64_t n) {
  for (int64_t c = 0; c < n; c += 16) {
    const __mmask16 m = static_cast<__mmask16>(n - c >= 16 ? 0xffff : (1u << (n - c)) - 1);
    _mm256_mask_storeu_epi16(dst + c, m, (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, src + c)));
  }
}

// 16 columns of bf16 rows a and b as pairs (a_c, b_c), pv_bf's value layout; the columns outside
// ma (of a) and mb (of b) read as zero (mb = 0: no row b).
LC_TARGET_AVX512BF16 inline __m512i interleave_rows(const uint16_t* a, const uint16_t* b, __mmask16 ma, __mmask16 mb) {
  const __m256i lo = _mm256_maskz_loadu_epi16(ma, a), hi = _mm256_maskz_loadu_epi16(mb, b);
  return _mm512_or_si512(_mm512_cvtepu16_epi32(lo), _mm512_slli_epi32(_mm512_cvtepu16_epi32(hi), 16));
}

// ---------------------------------------------------------------------------------------------
// AVX512-BF16 weight absorption at more than kMaxQ tokens (a verify step's rows, several streams
// decoding together): per head one small GEMM on vdpbf16ps in pv_bf's form, the weight's outputs in
// the lanes and each token's bf16 pairs broadcast:
//   absorb_q: q_lat[t, c] = sum_jp (q[t, 2jp], q[t, 2jp+1]) . (W_UK[2jp][c], W_UK[2jp+1][c])
//   output:   o[t, r]     = sum_jp (o_lat[t, 2jp], o_lat[t, 2jp+1]) . (W_UV[r][2jp], W_UV[r][2jp+1])
// The head's weight is repacked into pv_bf's pair layout (absorb_q: two rows interleaved; output:
// W_UV's pairs transposed, 16 x 16 at a time), kAbLanes lanes x kAbPairs pairs at a time, once per
// kAbTokens tokens; the tokens' pairs are rounded to bf16 once per chunk. The fp32 micro-kernels
// (K.pv / K.scores, 4 tokens per call) reloaded each 4-token block of the outputs from memory and
// ran the dot form's horizontal sums (output) at these sizes.
// Numerics: the activations are rounded to bf16 (nearest even; the weights are bf16 already), each
// product is exact, the sums fp32 in a fixed order (pairs in order within a chunk, chunks in order,
// one chain per output): a token's result does not depend on the other tokens, their count (above
// kMaxQ) or the threads, but differs in the last bits from its fp32 result at 1-4 tokens.
// (A pragma region, not only the attributes: the packing lambdas are functions of their own.)
LC_BEGIN_TARGET(LC_ISA_AVX512BF16)
constexpr int64_t kAbLanes = 64;  // weight outputs per packed block (pv_bf's 4 vectors)
constexpr int64_t kAbPairs = 64;  // reduction pairs per packed block
// Tokens per packed activation block: a head's weight block is packed once per kAbTokens tokens, so
// up to a 64-stream step once per call (at 32, twice: small preset, 64 tokens, 1 thread, warm,
// absorb_q 38.1-38.3 -> 36.5-36.8 us with pv_bf's corr multiply dropped too).
constexpr int64_t kAbTokens = 64;

// y[i][l] = sum_k x[i][k] Wk(l, k) for t tokens (rows xs / ys apart), nl outputs, kd reduction
// elements. pack(l0, nv, k0, kn, vp): outputs [l0, l0 + 16 nv) x elements [k0, k0 + kn) of the weight
// into vp (pv_bf's layout, vectors kAbPairs * 32 apart; a missing odd element zero).
template <class Pack>
LC_TARGET_AVX512BF16 void absorb_bf16(int64_t t, int64_t nl, int64_t kd, const float* x, int64_t xs, float* y, int64_t ys,
                                      Pack&& pack, const char* next, int64_t next_bytes) {
  alignas(64) uint16_t vp[kAbLanes / 16 * kAbPairs * 32];
  alignas(64) uint16_t xb[kAbTokens * 2 * kAbPairs];
  for (int64_t i = 0; i < t; ++i) std::memset(y + i * ys, 0, sizeof(float) * nl);
  const int64_t nlv = (nl + 15) / 16;
  const __mmask16 mlast = static_cast<__mmask16>(nl % 16 == 0 ? 0xffff : (1u << (nl % 16)) - 1);
  // The next head's weight block is requested into L2 over this head's products, a slice before
  // each pv_bf call (the weights are cold in a step). bench/native/mla_decode.cc, small preset, 16
  // tokens, 1 thread, cold: a slice after each packing (bursts of 64-128 lines) left absorb_q /
  // output at 15-17 us against 8-10 warm; slices per call 11-13.
  const int64_t blocks = (t + kAbTokens - 1) / kAbTokens * ((kd + 2 * kAbPairs - 1) / (2 * kAbPairs)) *
                         ((nlv + kAbLanes / 16 - 1) / (kAbLanes / 16)) * ((std::min(t, kAbTokens) + kMaxQ - 1) / kMaxQ);
  int64_t block = 0, requested = 0;
  for (int64_t t0 = 0; t0 < t; t0 += kAbTokens) {
    const int64_t tn = std::min(kAbTokens, t - t0);
    for (int64_t k0 = 0; k0 < kd; k0 += 2 * kAbPairs) {
      const int64_t kn = std::min(2 * kAbPairs, kd - k0), np = (kn + 1) / 2;
      for (int64_t i = 0; i < tn; ++i) {
        uint16_t* xr = xb + i * 2 * kAbPairs;
        to_bf16(xr, x + (t0 + i) * xs + k0, kn);
        if (kn % 2) xr[kn] = 0;
      }
      for (int64_t v0 = 0; v0 < nlv; v0 += kAbLanes / 16) {
        const int nv = static_cast<int>(std::min(kAbLanes / 16, nlv - v0));
        pack(v0 * 16, nv, k0, kn, vp);
        const __mmask16 ml = v0 + nv == nlv ? mlast : static_cast<__mmask16>(0xffff);
        for (int64_t i0 = 0; i0 < tn; i0 += kMaxQ) {
          if (next)
            for (const int64_t upto = std::min(next_bytes, next_bytes * ++block / blocks); requested < upto; requested += 64)
              prefetch_line<2>(next + requested);
          const int hb = static_cast<int>(std::min<int64_t>(kMaxQ, tn - i0));
          kPvBf[hb - 1][nv - 1](y + (t0 + i0) * ys + v0 * 16, ys, nullptr, reinterpret_cast<const uint32_t*>(xb) + i0 * kAbPairs,
                                kAbPairs, static_cast<int>(np), vp, kAbPairs * 32, ml);
        }
      }
    }
  }
}

// absorb_q of heads [h0, h1): W_UK[h] = dn rows of dl at wkvb + h (dn + dv) dl.
LC_TARGET_AVX512BF16 void absorb_q_bf16(const MlaDims& d, int64_t t, int64_t h0, int64_t h1, float* q_lat, const float* q,
                                        const uint16_t* w) {
  const int64_t nh = d.nh, dn = d.dn, dl = d.dl, dk = d.dn + d.dr, dkv = d.dn + d.dv, bytes = dn * dl * 2;
  const auto block = [&](int64_t h) { return reinterpret_cast<const char*>(w + h * dkv * dl); };
  for (int64_t o = 0; h0 < h1 && o < bytes; o += 64) prefetch_line<2>(block(h0) + o);  // the first head's: at once
  for (int64_t h = h0; h < h1; ++h) {
    const uint16_t* wk = w + h * dkv * dl;
    absorb_bf16(
        t, dl, dn, q + h * dk, nh * dk, q_lat + h * dl, nh * dl,
        [&](int64_t c0, int nv, int64_t r0, int64_t kn, uint16_t* vp) {
          for (int u = 0; u < nv; ++u) {
            const int64_t c = c0 + 16 * u;
            const __mmask16 m = static_cast<__mmask16>(dl - c >= 16 ? 0xffff : (1u << (dl - c)) - 1);
            for (int64_t jp = 0; 2 * jp < kn; ++jp) {
              const uint16_t* a = wk + (r0 + 2 * jp) * dl + c;
              _mm512_store_si512(vp + (u * kAbPairs + jp) * 32, interleave_rows(a, a + dl, m, 2 * jp + 1 < kn ? m : 0));
            }
          }
        },
        h + 1 < h1 ? block(h + 1) : nullptr, bytes);
  }
}

// output of heads [h0, h1): W_UV[h] = dv rows of dl at wkvb + (h (dn + dv) + dn) dl.
LC_TARGET_AVX512BF16 void output_bf16(const MlaDims& d, int64_t t, int64_t h0, int64_t h1, float* o, const float* o_lat,
                                      const uint16_t* w) {
  const int64_t nh = d.nh, dv = d.dv, dl = d.dl, dkv = d.dn + d.dv, bytes = dv * dl * 2;
  const auto block = [&](int64_t h) { return reinterpret_cast<const char*>(w + (h * dkv + d.dn) * dl); };
  for (int64_t o = 0; h0 < h1 && o < bytes; o += 64) prefetch_line<2>(block(h0) + o);  // the first head's: at once
  for (int64_t h = h0; h < h1; ++h) {
    const uint16_t* wv = w + (h * dkv + d.dn) * dl;
    absorb_bf16(
        t, dv, dl, o_lat + h * dl, nh * dl, o + h * dv, nh * dv,
        [&](int64_t r0, int nv, int64_t c0, int64_t kn, uint16_t* vp) {
          const int64_t np = (kn + 1) / 2;
          for (int u = 0; u < nv; ++u)
            for (int64_t jb = 0; jb < np; jb += 16) {  // 16 rows x 16 pairs, transposed
              const int64_t c = c0 + 2 * jb, left = c0 + kn - c;
              const __mmask32 m = left >= 32 ? ~__mmask32{0} : (__mmask32{1} << left) - 1;
              __m512i rows[16], cols[16];
              for (int64_t l = 0; l < 16; ++l) {
                const int64_t r = r0 + 16 * u + l;
                rows[l] = r < dv ? _mm512_maskz_loadu_epi16(m, wv + r * dl + c) : _mm512_setzero_si512();
              }
              simd::Avx512::transpose16(rows, cols);
              for (int64_t j = 0; j < 16 && jb + j < np; ++j) _mm512_store_si512(vp + (u * kAbPairs + jb + j) * 32, cols[j]);
            }
        },
        h + 1 < h1 ? block(h + 1) : nullptr, bytes);
  }
}
LC_END_TARGET

bool decode_bf16_fits(const MlaDims& d) { return d.dl <= kBfMaxDl && d.dl + d.dr <= kBfMaxRow; }

// The cache rows a thread reads after the current pass (its next work unit's): the decode's L2
// requests run on into them over the current pass's last tiles, so that a unit does not start on
// cold rows (at 2-16 sequences of 30-300 keys a unit is 1-10 tiles, and its first two tiles were
// requested only when it began). bt null: none.
struct NextKeys {
  const int32_t* bt = nullptr;
  int64_t s0 = 0, s1 = 0;
};

// One split [s0, s1) of one sequence for nh <= HV * 8 heads: folds its cache rows into those heads'
// rows of acc [nh, dl] and ml [nh, 2]. Head i attends the rows [s0, end[i]) (end[i] <= s1: the heads
// of several rows of one sequence, a verify step's, share the pass, each row its own causal end).
// qlb: q_lat of the first head, dl apart; qpb: q_pe of the first head, qps apart. next: the rows
// read after this pass (requested into L2 once this pass's own are); requested: whether the pass
// before it requested this pass's first tiles already.
template <int HV>
LC_TARGET_AVX512BF16 void decode_chunk_bf16(const MlaDims& d, int64_t nh, const float* qlb, const float* qpb, int64_t qps,
                                            const uint16_t* cache, const int32_t* bt, int64_t block_size, int64_t s0, int64_t s1,
                                            const int64_t* end, float scale, float* acc, float* ml, const NextKeys& next,
                                            bool requested) {
  // Keys per scores_z call: 8 accumulators at 8 and 16 heads, 16 at 32. With 16 keys for 8 heads
  // (16 accumulators) the 16 row pointers do not fit the general registers and each broadcast
  // waited on a vmovq from a vector register: bench/native/mla_decode.cc, 1 thread, warm, small
  // preset (8 heads) 64 sequences 237-244 -> 208 us, medium (16 heads, 8 -> 4 keys) 709 -> 680 us
  // (4 keys at 8 heads: 220 us). A key's sums are the same either way (bit for bit).
  constexpr int JB = std::max(4, 8 / HV);
  const int64_t dl = d.dl, dr = d.dr, row = dl + dr, ncb = (dl + 15) / 16;
  alignas(64) uint32_t qz[(kBfMaxRow / 4 + 1) * 2 * kBfLanes * HV];
  alignas(64) uint16_t qrow[kBfMaxRow + 32];
  alignas(64) uint16_t vp[kBfMaxDl / 16 * kBfPairs * 32];
  constexpr int kLanes = kBfLanes * HV;
  alignas(64) float st[kBfTile * kLanes];
  alignas(64) uint32_t pb[kLanes * kBfPairs];
  float m[kLanes], l[kLanes], corr[kLanes];
  int32_t ntl[kLanes];  // per head: its keys in the tile
  const uint16_t* ka[kBfTile];
  // q^T in bf16 pairs, scores_z's layout (head h's pairs 2g, 2g + 1 are the 64-bit quad g of its
  // row); the lanes past the real heads are zero.
  const int64_t ng = (row + 3) / 4;
  if (nh < HV * kBfLanes) std::memset(qz, 0, sizeof(uint32_t) * ng * HV * 16);
  for (int64_t h = 0; h < nh; ++h) {
    to_bf16(qrow, qlb + h * dl, dl);
    to_bf16(qrow + dl, qpb + h * qps, dr);
    qrow[row] = qrow[row + 1] = qrow[row + 2] = 0;
    uint64_t* dst = reinterpret_cast<uint64_t*>(qz) + (h / 8) * 8 + h % 8;
    for (int64_t g = 0; g < ng; ++g) std::memcpy(dst + g * HV * 8, qrow + 4 * g, sizeof(uint64_t));
  }
  for (int i = 0; i < kLanes; ++i) {
    m[i] = kNegInf;
    l[i] = 0.0f;
  }
  const __mmask16 mlast = static_cast<__mmask16>(dl % 16 == 0 ? 0xffff : (1u << (dl % 16)) - 1);
  // rows [t, t + n) of the sequence of table tb (one division, not one a row)
  const auto rows_at = [&](const int32_t* tb, int64_t t, int n, const uint16_t** out) {
    int64_t b = t / block_size, o = t % block_size;
    for (int j = 0; j < n; ++j) {
      out[j] = cache + (static_cast<int64_t>(tb[b]) * block_size + o) * row;
      if (++o == block_size) {
        o = 0;
        ++b;
      }
    }
  };
  // The cache rows are cold at decode (a whole step's weights streamed through the caches since this
  // layer last ran; the hardware prefetchers do not follow the paged rows far enough): the rows
  // kBfAhead tiles ahead of the one computed are requested into L2, a slice before each pv call,
  // each line once (consecutive rows of a block share lines).
  const uint16_t* pf[kBfTile];
  int npf = 0;
  uintptr_t pf_last = 0;  // the last line requested
  const auto prefetch_slice = [&](int j0, int j1) {
    for (int j = j0; j < std::min(j1, npf); ++j) {
      const uintptr_t e = reinterpret_cast<uintptr_t>(pf[j] + row);
      uintptr_t a = reinterpret_cast<uintptr_t>(pf[j]) & ~uintptr_t{63};
      if (a == pf_last) a += 64;
      for (; a < e; a += 64) prefetch_line<2>(reinterpret_cast<const char*>(a));
      pf_last = a - 64;
    }
  };
  // the prefetch slices' rows: tile k of the stream of this pass's tiles, then next's
  const int64_t ntiles = (s1 - s0 + kBfTile - 1) / kBfTile;
  const auto prefetch_tile_rows = [&](int64_t k) {
    const bool own = k < ntiles;
    const int64_t t = own ? s0 + k * kBfTile : next.s0 + (k - ntiles) * kBfTile;
    npf = own || next.bt ? static_cast<int>(std::clamp<int64_t>((own ? s1 : next.s1) - t, 0, kBfTile)) : 0;
    rows_at(own ? bt : next.bt, t, npf, pf);
  };
  for (int64_t k = 0; k < kBfAhead; ++k) {
    if (requested && k < ntiles) continue;
    prefetch_tile_rows(k);
    prefetch_slice(0, kBfTile);
  }
  for (int64_t t0 = s0; t0 < s1; t0 += kBfTile) {
    const int nt = static_cast<int>(std::min<int64_t>(kBfTile, s1 - t0)), npt = (nt + 1) / 2;
    rows_at(bt, t0, nt, ka);
    for (int j = nt; j < kBfTile; ++j) ka[j] = kBfZeroRow;
    prefetch_tile_rows((t0 - s0) / kBfTile + kBfAhead);
    for (int j0 = 0; j0 < kBfTile; j0 += JB) {
      if (j0 < nt) scores_z<HV, JB>(qz, row, ka + j0, scale, st + j0 * HV * 8);
    }
    bool masked = false;  // whether some head's keys end inside the tile
    for (int i = 0; i < kLanes; ++i) {
      ntl[i] = i < nh ? static_cast<int32_t>(std::clamp<int64_t>(end[i] - t0, 0, nt)) : 0;
      masked |= i < nh && ntl[i] != nt;
    }
    if (masked)
      softmax_t<HV, true>(st, nt, ntl, m, l, corr);
    else
      softmax_t<HV, false>(st, nt, ntl, m, l, corr);
    pack_p<HV>(st, pb);
    // Values: 16-column groups of row pairs interleaved (a missing odd row reads as zero).
    for (int64_t cb = 0; cb < ncb; ++cb) {
      const int64_t c = cb * 16;
      const __mmask16 mk = cb == ncb - 1 ? mlast : static_cast<__mmask16>(0xffff);
      uint16_t* dst = vp + cb * kBfPairs * 32;
      for (int jp = 0; jp < npt; ++jp) {
        _mm512_store_si512(dst + jp * 32, interleave_rows(ka[2 * jp] + c, ka[2 * jp + 1] + c, mk, mk));
      }
    }
    const int64_t npv = (nh + 3) / 4 * ((ncb + 3) / 4);
    int64_t ipv = 0;
    for (int64_t h0 = 0; h0 < nh; h0 += 4) {
      const int hb = static_cast<int>(std::min<int64_t>(4, nh - h0));
      for (int64_t cb0 = 0; cb0 < ncb; cb0 += 4) {
        const int cbn = static_cast<int>(std::min<int64_t>(4, ncb - cb0));
        prefetch_slice(static_cast<int>(ipv * kBfTile / npv), static_cast<int>((ipv + 1) * kBfTile / npv));
        ++ipv;
        kPvBf[hb - 1][cbn - 1](acc + h0 * dl + cb0 * 16, dl, corr + h0, pb + h0 * kBfPairs, kBfPairs, npt,
                               vp + cb0 * kBfPairs * 32, kBfPairs * 32,
                               cb0 + cbn == ncb ? mlast : static_cast<__mmask16>(0xffff));
      }
    }
  }
  for (int64_t h = 0; h < nh; ++h) {
    ml[2 * h] = m[h];
    ml[2 * h + 1] = l[h];
  }
}

// One split [s0, s1) of a group of rows of one sequence for its heads [hlo, hhi) (head h of row r is
// head r * nh + h of the group): folds the cache rows into those heads' rows of acc [rows * nh, dl]
// and ml [rows * nh, 2], kBfChunk heads at a time (kBfGroupChunk where [hlo, hhi) spans several rows:
// one pass over the keys for the medium preset's 2 x 16 heads of a verify step); row r attends
// [s0, min(s1, lens[r])). qlb: q_lat [rows * nh, dl]; qpb: q_pe of head 0, heads qps apart.
// next / requested: decode_chunk_bf16's, for the unit (its passes request each other's first tiles).
void decode_unit_bf16(const MlaDims& d, const float* qlb, const float* qpb, int64_t qps, const uint16_t* cache, const int32_t* bt,
                      int64_t block_size, int64_t s0, int64_t s1, const int32_t* lens, int64_t hlo, int64_t hhi, float scale,
                      float* acc, float* ml, const NextKeys& next, bool requested) {
  const int64_t width = hlo / d.nh == (hhi - 1) / d.nh ? kBfChunk : kBfGroupChunk;
  const auto pass_end = [&](int64_t h0, int64_t* end) {  // the keys' end per head of the pass from h0, and the pass's
    int64_t last = s0;
    for (int64_t i = 0; i < std::min<int64_t>(width, hhi - h0); ++i) {
      const int64_t e = std::max(s0, std::min<int64_t>(s1, lens[(h0 + i) / d.nh]));
      if (end) end[i] = e;
      last = std::max(last, e);
    }
    return last;
  };
  for (int64_t h0 = hlo; h0 < hhi; h0 += width) {
    const int64_t n = std::min<int64_t>(width, hhi - h0);
    int64_t end[kBfGroupChunk];
    const int64_t last = pass_end(h0, end);
    const NextKeys after = h0 + width < hhi ? NextKeys{bt, s0, pass_end(h0 + width, nullptr)} : next;
    (n > 2 * kBfLanes ? decode_chunk_bf16<4>
     : n > kBfLanes   ? decode_chunk_bf16<2>
                      : decode_chunk_bf16<1>)(d, n, qlb + h0 * d.dl, qpb + h0 * qps, qps, cache, bt, block_size, s0, last, end,
                                            scale, acc + h0 * d.dl, ml + 2 * h0, after, requested || h0 > hlo);
  }
}

// ---------------------------------------------------------------------------------------------
// AVX2 (+FMA). Tails shorter than a vector are done in scalar code.

template <int NQ, int NK, typename KT>
LC_TARGET_AVX2 inline void dot256(float (&out)[NQ][NK], const float* q, int64_t qs, const KT* const* k, int64_t n) {
  __m256 acc[NQ][NK];
  for (int i = 0; i < NQ; ++i)
    for (int t = 0; t < NK; ++t) acc[i][t] = _mm256_setzero_ps();
  int64_t c = 0;
  for (; c + 8 <= n; c += 8) dot_step<Avx2>(acc, q, qs, k, c);
  for (int i = 0; i < NQ; ++i)
    for (int t = 0; t < NK; ++t) {
      float s = Avx2::reduce_add(acc[i][t]);
      for (int64_t cc = c; cc < n; ++cc) s += q[i * qs + cc] * ld(k[t], cc);
      out[i][t] += s;
    }
}

template <int NQ, typename KT>
LC_TARGET_AVX2 void scores256_n(const float* qa, int64_t qas, const float* qb, int64_t qbs, int nt, const KT* const* ka,
                                const KT* const* kb, int64_t da, int64_t db, float scale, float* out, int64_t os) {
  int j = 0;
  for (; j + 2 <= nt; j += 2) {
    float s[NQ][2] = {};
    dot256<NQ, 2>(s, qa, qas, ka + j, da);
    if (db > 0) dot256<NQ, 2>(s, qb, qbs, kb + j, db);
    for (int i = 0; i < NQ; ++i) {
      out[i * os + j] = s[i][0] * scale;
      out[i * os + j + 1] = s[i][1] * scale;
    }
  }
  if (j < nt) {
    float s[NQ][1] = {};
    dot256<NQ, 1>(s, qa, qas, ka + j, da);
    if (db > 0) dot256<NQ, 1>(s, qb, qbs, kb + j, db);
    for (int i = 0; i < NQ; ++i) out[i * os + j] = s[i][0] * scale;
  }
}

template <typename KT>
LC_TARGET_AVX2 void scores_avx2(int nq, const float* qa, int64_t qas, const float* qb, int64_t qbs, int nt, const KT* const* ka,
                                const KT* const* kb, int64_t da, int64_t db, float scale, float* out, int64_t os) {
  with_rows(nq, [&](auto rows) { scores256_n<decltype(rows)::value>(qa, qas, qb, qbs, nt, ka, kb, da, db, scale, out, os); });
}

template <int NQ, int NC, typename VT>
LC_TARGET_AVX2 inline void pv256_cols(float* acc, int64_t as, const float* corr, const float* p, int64_t ps, int nt,
                                      const VT* const* v, int64_t c) {
  __m256 a[NQ][NC];
  for (int i = 0; i < NQ; ++i)
    for (int u = 0; u < NC; ++u) {
      a[i][u] = _mm256_loadu_ps(acc + i * as + c + 8 * u);
      if (corr) a[i][u] = _mm256_mul_ps(a[i][u], _mm256_set1_ps(corr[i]));
    }
  for (int j = 0; j < nt; ++j) {
    __m256 vv[NC];
    for (int u = 0; u < NC; ++u) vv[u] = Avx2::widen_load(v[j] + c + 8 * u);
    for (int i = 0; i < NQ; ++i) {
      __m256 w = _mm256_set1_ps(p[i * ps + j]);
      for (int u = 0; u < NC; ++u) a[i][u] = _mm256_fmadd_ps(w, vv[u], a[i][u]);
    }
  }
  for (int i = 0; i < NQ; ++i)
    for (int u = 0; u < NC; ++u) _mm256_storeu_ps(acc + i * as + c + 8 * u, a[i][u]);
}

template <int NQ, typename VT>
LC_TARGET_AVX2 void pv256_n(float* acc, int64_t as, const float* corr, const float* p, int64_t ps, int nt, const VT* const* v,
                            int64_t dv) {
  int64_t c = 0;
  for (; c + 24 <= dv; c += 24) pv256_cols<NQ, 3>(acc, as, corr, p, ps, nt, v, c);
  for (; c + 8 <= dv; c += 8) pv256_cols<NQ, 1>(acc, as, corr, p, ps, nt, v, c);
  if (c < dv)
    for (int i = 0; i < NQ; ++i) {
      if (corr)
        for (int64_t cc = c; cc < dv; ++cc) acc[i * as + cc] *= corr[i];
      for (int j = 0; j < nt; ++j) {
        const float w = p[i * ps + j];
        for (int64_t cc = c; cc < dv; ++cc) acc[i * as + cc] += w * ld(v[j], cc);
      }
    }
}

template <typename VT>
LC_TARGET_AVX2 void pv_avx2(int nq, float* acc, int64_t as, const float* corr, const float* p, int64_t ps, int nt,
                            const VT* const* v, int64_t dv) {
  with_rows(nq, [&](auto rows) { pv256_n<decltype(rows)::value>(acc, as, corr, p, ps, nt, v, dv); });
}

LC_TARGET_AVX2 float softmax_avx2(float* s, int n, float& m, float& l) {
  const float mx = running_max(s, n, m);
  float corr;
  if (!softmax_rescale(s, n, m, mx, corr)) return 1.0f;
  __m256 vsum;
  int j;
  exp_vectors<Avx2>(s, n, mx, j, vsum);
  float sum = Avx2::reduce_add(vsum);
  for (; j < n; ++j) sum += (s[j] = std::exp(s[j] - mx));
  l = l * corr + sum;
  m = mx;
  return corr;
}

// f32 [n] -> bf16 bits at dst, 16 at a time: numeric.h's f32_to_bf16 bit for bit (Avx512::to_bf16).
LC_TARGET_AVX512 void bf16_row_avx512(uint16_t* dst, const float* src, int64_t n) {
  for (int64_t c = 0; c < n; c += 16) {
    const __mmask16 m = Avx512::mask16(n - c);
    _mm256_mask_storeu_epi16(dst + c, m, Avx512::to_bf16(_mm512_maskz_loadu_ps(m, src + c)));
  }
}
#endif  // LC_ATTN_X86

// f32 [n] -> bf16 bits (f32_to_bf16) at dst: the cache write's rows (a scalar loop took ~2.5 us of
// the 16-row step's 8 calls, on the region's master alone).
void bf16_row(uint16_t* dst, const float* src, int64_t n) {
#ifdef LC_ATTN_X86
  if (isa() == Isa::Avx512) return bf16_row_avx512(dst, src, n);
#endif
  for (int64_t c = 0; c < n; ++c) dst[c] = f32_to_bf16(src[c]);
}

template <typename T>
struct Kernels {
  ScoresFn<T> scores;
  PvFn<T> pv;
  SoftmaxFn softmax;
};

template <typename T>
Kernels<T> pick() {
#ifdef LC_ATTN_X86
  switch (isa()) {
    case Isa::Avx512: return {scores_avx512<T>, pv_avx512<T>, softmax_avx512};
    case Isa::Avx2: return {scores_avx2<T>, pv_avx2<T>, softmax_avx2};
    default: break;
  }
#endif
  return {scores_scalar<T>, pv_scalar<T>, softmax_scalar};
}

// ---------------------------------------------------------------------------------------------
// Prefill (expanded form).

constexpr int kQBlock = 16;  // queries per work unit

void prefill_impl(const MlaDims& d, int64_t batch, float* o, const float* q, const float* kvb, const float* kpe,
                  const int32_t* q_start, const int32_t* kv_start, float scale) {
  const Kernels<float> K = pick<float>();
  const int64_t nh = d.nh, dn = d.dn, dr = d.dr, dv = d.dv, dk = dn + dr, dkv = dn + dv;
  int64_t blocks = 0;
  for (int64_t b = 0; b < batch; ++b) blocks += (q_start[b + 1] - q_start[b] + kQBlock - 1) / kQBlock;
  const int64_t units = blocks * nh;
  parallel_for(units, 1, [&](int64_t u0, int64_t u1) {
    // Find the sequence of the first unit, then walk forward.
    int64_t b = 0, first_block = 0;  // first_block: global block index of sequence b's block 0
    auto nblk = [&](int64_t bb) { return (q_start[bb + 1] - q_start[bb] + kQBlock - 1) / kQBlock; };
    int64_t g0 = u0 / nh;
    while (b < batch && first_block + nblk(b) <= g0) first_block += nblk(b++);
    float sc[kMaxQ][kPTile];
    float m[kQBlock], l[kQBlock];
    const float* ka[kPTile];
    const float* kb[kPTile];
    const float* vp[kPTile];
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t g = u / nh, h = u % nh;
      while (first_block + nblk(b) <= g) first_block += nblk(b++);
      const int64_t q0 = q_start[b], qlen = q_start[b + 1] - q0;
      const int64_t k0 = kv_start[b], klen = kv_start[b + 1] - k0;
      const int64_t j0 = (g - first_block) * kQBlock, nq = std::min<int64_t>(kQBlock, qlen - j0);
      const int64_t pos0 = klen - qlen + j0;  // position of the block's first query
      for (int64_t i = 0; i < nq; ++i) {
        m[i] = kNegInf;
        l[i] = 0.0f;
        std::memset(o + ((q0 + j0 + i) * nh + h) * dv, 0, sizeof(float) * dv);
      }
      const int64_t kend = pos0 + nq;  // keys [0, kend) are visible to some query of the block
      for (int64_t t0 = 0; t0 < kend; t0 += kPTile) {
        const int nt = static_cast<int>(std::min<int64_t>(kPTile, kend - t0));
        for (int j = 0; j < nt; ++j) {
          const int64_t s = k0 + t0 + j;
          ka[j] = kvb + (s * nh + h) * dkv;
          kb[j] = kpe + s * dr;
          vp[j] = ka[j] + dn;
        }
        for (int64_t i0 = 0; i0 < nq; i0 += kMaxQ) {
          const int gq = static_cast<int>(std::min<int64_t>(kMaxQ, nq - i0));
          const int64_t gmax = pos0 + i0 + gq - 1;  // last position in this group
          if (gmax < t0) continue;                  // later groups sit at later positions
          const int gnt = static_cast<int>(std::min<int64_t>(nt, gmax - t0 + 1));
          const float* qrow = q + ((q0 + j0 + i0) * nh + h) * dk;
          K.scores(gq, qrow, nh * dk, qrow + dn, nh * dk, gnt, ka, kb, dn, dr, scale, &sc[0][0], kPTile);
          float corr[kMaxQ];
          bool rescale = false;
          for (int i = 0; i < gq; ++i) {
            const int64_t pos = pos0 + i0 + i;
            for (int j = 0; j < gnt; ++j)
              if (t0 + j > pos) sc[i][j] = kNegInf;
            corr[i] = K.softmax(sc[i], gnt, m[i0 + i], l[i0 + i]);
            rescale |= corr[i] != 1.0f;
          }
          K.pv(gq, o + ((q0 + j0 + i0) * nh + h) * dv, nh * dv, rescale ? corr : nullptr, &sc[0][0], kPTile, gnt, vp, dv);
        }
      }
      for (int64_t i = 0; i < nq; ++i) {
        float* orow = o + ((q0 + j0 + i) * nh + h) * dv;
        const float inv = l[i] > 0 ? 1.0f / l[i] : 0.0f;
        for (int64_t c = 0; c < dv; ++c) orow[c] *= inv;
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Absorbed decode over the paged latent cache.

constexpr int64_t kMinSplit = 64;     // fewest tokens worth a split of their own
constexpr int64_t kMaxGroupRows = 8;  // most rows of one sequence that share a pass over its keys

// The rows of a decode batch come in groups: consecutive rows whose keys are a prefix of the next
// row's (same blocks, length not shorter; a verify step's rows of one sequence: the same table, one
// key more each) share each pass over the group's cache rows, as the heads of one query with
// rows * nh heads (head r * nh + h: head h of row r). Every row of a group has the group's splits
// (those of its longest row); the partial results of split k of a group are contiguous, so that
// row r's split k sits at slot base[r] + k * rows.
struct DecodeLayout {
  int32_t* group_first;  // [G + 1] first row of each group (the last entry: the batch)
  int32_t* group_units;  // [G + 1] prefix of the groups' split counts
  int32_t* unit_base;    // [B] ml slot of the row's split 0 (split k: + k * rows of its group)
  int32_t* slot_base;    // [B] partial-accumulator slot of the row's split 0 (groups with more than one split)
  int32_t* row_splits;   // [B] the row's (its group's) split count
  int32_t* row_stride;   // [B] rows of the row's group
  float* ml;             // [batch + units, nh, 2] running max and sum per (row, split) and head
  float* acc;            // [2 * units, nh, dl] partial accumulators
};

int64_t decode_layout_ints(int64_t batch) { return (6 * (batch + 1) + 15) / 16 * 16; }

DecodeLayout decode_layout(const MlaDims& d, int64_t batch, int64_t units, float* ws) {
  DecodeLayout L;
  L.group_first = reinterpret_cast<int32_t*>(ws);
  L.group_units = L.group_first + (batch + 1);
  L.unit_base = L.group_units + (batch + 1);
  L.slot_base = L.unit_base + batch;
  L.row_splits = L.slot_base + batch;
  L.row_stride = L.row_splits + batch;
  L.ml = ws + decode_layout_ints(batch);
  L.acc = L.ml + (batch + units) * d.nh * 2;
  return L;
}

// Whether row b + 1 attends every key of row b (same cache rows: block ids equal over row b's length,
// not shorter): then the two share a pass. Row b's entries are in range (checked by the binding).
bool extends_row(const int32_t* block_table, int64_t max_blocks, const int32_t* seq_lens, int64_t block_size, int64_t b) {
  const int64_t len = seq_lens[b];
  if (len <= 0 || seq_lens[b + 1] < len) return false;
  const int32_t* t0 = block_table + b * max_blocks;
  const int32_t* t1 = t0 + max_blocks;
  for (int64_t i = 0; i < (len + block_size - 1) / block_size; ++i)
    if (t0[i] != t1[i]) return false;
  return true;
}

// One cache row of the fp8 layout (mla.h) dequantized to f32: the latent (e4m3 * group scale), then
// the rope key (bf16).
void dequantize_fp8_row(const MlaDims& d, const uint8_t* src, float* dst) {
  const int64_t dl = d.dl, dr = d.dr;
  for (int64_t g = 0; g < dl / kMlaFp8Group; ++g) {
    float s;
    std::memcpy(&s, src + mla_fp8_scale_offset(dl) + 4 * g, sizeof(float));
    dequantize_fp8_group(kMlaFp8Group, src + g * kMlaFp8Group, s, dst + g * kMlaFp8Group);
  }
  const uint8_t* rope = src + mla_fp8_rope_offset(dl);
  for (int64_t c = 0; c < dr; ++c) {
    uint16_t h;
    std::memcpy(&h, rope + 2 * c, sizeof(h));
    dst[dl + c] = bf16_to_f32(h);
  }
}

// CT: the cache element (float, uint16_t bf16 bits, or uint8_t for the fp8 layout, whose rows are
// dequantized a tile at a time into a stack buffer that the f32 kernels then read).
template <typename CT>
void decode_impl(const MlaDims& d, int64_t batch, float* o_lat, const float* q_lat, const float* q, const CT* cache,
                 int64_t block_size, const int32_t* block_table, int64_t max_blocks, const int32_t* seq_lens, float scale,
                 float* ws, int64_t units) {
  constexpr bool kFp8 = std::is_same_v<CT, uint8_t>;
  using KT = std::conditional_t<kFp8, float, CT>;  // what the micro-kernels read
  const Kernels<KT> K = pick<KT>();
  const int64_t nh = d.nh, dl = d.dl, dr = d.dr, dk = d.dn + d.dr, row = dl + dr;
  const int64_t stride = kFp8 ? mla_fp8_row_bytes(dl, dr) : row;  // CT elements per cache row
  // fp8: rows per tile, so that a tile of dequantized rows fits the kMlaFp8DecodeRow-float buffer
  const int tile = kFp8 ? static_cast<int>(std::min<int64_t>(kTile, kMlaFp8DecodeRow / std::max<int64_t>(row, 1))) : kTile;
  // bf16 cache on an AVX512-BF16 CPU: vdpbf16ps with q and p rounded to bf16 (see decode_unit_bf16),
  // unless bf16 activations are turned off (setMatmulPrecision('highest')): then the fp32 path.
#ifdef LC_ATTN_X86
  const bool use_bf16 =
      std::is_same_v<CT, uint16_t> && isa() == Isa::Avx512 && features().avx512_bf16 && bf16_activations() && decode_bf16_fits(d);
#endif
  DecodeLayout L = decode_layout(d, batch, units, ws);
  // Groups (DecodeLayout): consecutive rows of one sequence, at most kMaxGroupRows.
  int64_t ngroups = 0;
  for (int64_t b = 0; b < batch; ++b) {
    if (b == 0 || b - L.group_first[ngroups - 1] >= kMaxGroupRows ||
        !extends_row(block_table, max_blocks, seq_lens, block_size, b - 1))
      L.group_first[ngroups++] = static_cast<int32_t>(b);
  }
  L.group_first[ngroups] = static_cast<int32_t>(batch);
  // Schedule: every group gets ceil(len / chunk) splits of (nearly) equal length (len: its longest
  // row's), about `key_units` in all (a group's rows count once each), and with fewer groups than
  // threads the heads are split into G groups of whole 4-head blocks too (a group reads all of its
  // split's rows for its heads only). A work unit is one (split, head group). Key splits cost a merge
  // and, per split, the query's conversion and a partial last tile: with one thread there are none,
  // and with fewer sequences than threads only as many as the head groups leave threads without
  // work. (Batch 1 at 2 threads split its keys only, 2 splits of 33-64 rows: 17.4 us per call in the
  // medium step against 14.3 at 1 thread.) A head's result depends on the key splits only, not on G
  // nor on the other rows of its group.
  const int64_t nthreads = ThreadPool::current().threads();
  const int64_t G = ngroups < nthreads ? std::min<int64_t>({nthreads, std::max<int64_t>(1, nh / 4), units}) : 1;
  const auto head_lo = [&](int64_t g, int64_t gh) { return g == G ? gh : gh * g / G / 4 * 4; };  // gh: the group's heads
  const int64_t key_units = nthreads == 1 ? 1 : ngroups < nthreads ? std::max<int64_t>(1, units / (2 * G)) : units;
  const auto group_len = [&](int64_t g) { return static_cast<int64_t>(seq_lens[L.group_first[g + 1] - 1]); };
  int64_t total = 0;  // (the workspace bound needs every row counted: batch + key_units ml slots at most)
  for (int64_t g = 0; g < ngroups; ++g) total += group_len(g) * (L.group_first[g + 1] - L.group_first[g]);
  const int64_t chunk = std::max<int64_t>(kMinSplit, (total + key_units - 1) / key_units);
  L.group_units[0] = 0;
  for (int64_t g = 0, ub = 0, sb = 0; g < ngroups; ++g) {
    const int64_t splits = std::max<int64_t>(1, (group_len(g) + chunk - 1) / chunk);
    const int64_t b0 = L.group_first[g], rows = L.group_first[g + 1] - b0;
    for (int64_t r = 0; r < rows; ++r) {
      L.unit_base[b0 + r] = static_cast<int32_t>(ub + r);
      L.slot_base[b0 + r] = static_cast<int32_t>(sb + r);
      L.row_splits[b0 + r] = static_cast<int32_t>(splits);
      L.row_stride[b0 + r] = static_cast<int32_t>(rows);
    }
    ub += splits * rows;
    sb += splits > 1 ? splits * rows : 0;
    L.group_units[g + 1] = static_cast<int32_t>(L.group_units[g] + splits);
  }
  const int64_t nunits = L.group_units[ngroups] * G;

  // Work unit u: split k of group g for the group's heads [hlo, hhi), keys [s0, s1) (s1: the end
  // of the pass, its last row's).
  struct Unit {
    int64_t g, b, rows, hlo, hhi, splits, k, s0, s1;
    const int32_t* bt;  // the longest row's table holds every key
  };
  const auto unit_at = [&](int64_t u) {
    Unit w;
    const int64_t ku = u / G;
    // the group whose splits hold ku: group_units[g] <= ku < group_units[g + 1]
    const int64_t g = std::upper_bound(L.group_units + 1, L.group_units + ngroups + 1, ku) - (L.group_units + 1);
    w.g = g;
    w.b = L.group_first[g];
    w.rows = L.group_first[g + 1] - w.b;
    w.hlo = head_lo(u % G, w.rows * nh);
    w.hhi = head_lo(u % G + 1, w.rows * nh);
    w.splits = L.row_splits[w.b];
    w.k = ku - L.group_units[g];
    const int64_t len = group_len(g), per = (len + w.splits - 1) / w.splits;
    w.s0 = std::min(len, w.k * per);
    w.s1 = std::clamp<int64_t>(seq_lens[w.b + (w.hhi - 1) / nh], w.s0, std::min(len, w.s0 + per));
    w.bt = block_table + (w.b + w.rows - 1) * max_blocks;
    return w;
  };
  // The units go out by steal_for: each thread takes a contiguous share in order (evened out by
  // steals), so that the unit after u is most often its own next one, whose first tiles it requests
  // over u's last (NextKeys; not across the shares' edges). requested: this thread's unit before u
  // was u - 1 of this call (tracked per thread; a call's id tells calls apart).
  static std::atomic<uint64_t> calls{0};
  const uint64_t call = calls.fetch_add(1, std::memory_order_relaxed) + 1;
  const auto share_start = [&](int64_t u) {  // whether u starts a thread's share (steal_for's edges)
    for (int64_t p = 1; p < nthreads; ++p)
      if (u == nunits * p / nthreads) return true;
    return false;
  };
  steal_for(nunits, [&](int64_t u) {
    thread_local uint64_t last_call = 0;
    thread_local int64_t last_unit = -1;
    const bool after_own = last_call == call && last_unit == u - 1;
    last_call = call;
    last_unit = u;
    const KT* ka[kTile];
    const KT* kb[kTile];
    float sc[kMaxQ][kTile];
    std::conditional_t<kFp8, float[kMlaFp8DecodeRow], char> deq;  // fp8: the tile's rows as f32
    {
      const Unit w = unit_at(u);
      const int64_t b = w.b, rows = w.rows, hlo = w.hlo, hhi = w.hhi, splits = w.splits, k = w.k, s0 = w.s0;
      int64_t s1 = w.s1;
      // the group's rows' results for split k: [rows * nh, dl] and [rows * nh, 2]
      float* acc = splits > 1 ? L.acc + (L.slot_base[b] + k * rows) * nh * dl : o_lat + b * nh * dl;
      float* ml = L.ml + (L.unit_base[b] + k * rows) * nh * 2;
      std::memset(acc + hlo * dl, 0, sizeof(float) * (hhi - hlo) * dl);
      for (int64_t h = hlo; h < hhi; ++h) {
        ml[2 * h] = kNegInf;
        ml[2 * h + 1] = 0.0f;
      }
      const int32_t* bt = w.bt;
      const float* qlb = q_lat + b * nh * dl;
      const float* qpb = q + b * nh * dk + d.dn;
      // the key end of each row in this split (rows [hlo / nh, (hhi - 1) / nh]); the pass ends at the last
      const auto row_end = [&](int64_t r) { return std::clamp<int64_t>(seq_lens[b + r], s0, s1); };
#ifdef LC_ATTN_X86
      if constexpr (std::is_same_v<CT, uint16_t>) {
        if (use_bf16) {
          NextKeys next;
          if (u + 1 < nunits && !share_start(u + 1)) {
            const Unit n = unit_at(u + 1);
            next = NextKeys{n.bt, n.s0, n.s1};
          }
          decode_unit_bf16(d, qlb, qpb, dk, cache, bt, block_size, s0, s1, seq_lens + b, hlo, hhi, scale, acc, ml, next,
                           after_own);
          s1 = s0;  // done: skip the generic tile loop
        }
      }
#endif
      const auto row_at = [&](int64_t s) {
        return cache + (static_cast<int64_t>(bt[s / block_size]) * block_size + s % block_size) * stride;
      };
      // head blocks of at most kMaxQ heads of one row each
      const auto block_end = [&](int64_t h0) { return std::min({h0 + kMaxQ, hhi, (h0 / nh + 1) * nh}); };
      int64_t hblocks = 0;
      for (int64_t h0 = hlo; h0 < hhi; h0 = block_end(h0)) ++hblocks;
      const auto prefetch_tile = [&](int64_t t, int64_t j0, int64_t j1) {  // the next tile into L1, in slices
        for (int64_t j = j0; j < j1 && t + j < s1; ++j) prefetch_row(row_at(t + j), stride * static_cast<int64_t>(sizeof(CT)));
      };
      if (s0 < s1) prefetch_tile(s0, 0, tile);
      for (int64_t t0 = s0; t0 < s1; t0 += tile) {
        const int nt = static_cast<int>(std::min<int64_t>(tile, s1 - t0));
        for (int j = 0; j < nt; ++j) {
          const CT* src = row_at(t0 + j);
          if constexpr (kFp8) {
            dequantize_fp8_row(d, src, deq + j * row);
            ka[j] = deq + j * row;
          } else {
            ka[j] = src;
          }
          kb[j] = ka[j] + dl;
        }
        int64_t hb = 0;
        for (int64_t h0 = hlo; h0 < hhi; h0 = block_end(h0), ++hb) {
          const int gq = static_cast<int>(block_end(h0) - h0);
          prefetch_tile(t0 + tile, hb * tile / hblocks, (hb + 1) * tile / hblocks);
          const int nr = static_cast<int>(std::min<int64_t>(nt, row_end(h0 / nh) - t0));  // this row's keys in the tile
          if (nr <= 0) continue;
          K.scores(gq, qlb + h0 * dl, dl, qpb + h0 * dk, dk, nr, ka, kb, dl, dr, scale, &sc[0][0], kTile);
          float corr[kMaxQ];
          bool rescale = false;
          for (int i = 0; i < gq; ++i) {
            float* mh = ml + 2 * (h0 + i);
            corr[i] = K.softmax(sc[i], nr, mh[0], mh[1]);
            rescale |= corr[i] != 1.0f;
          }
          K.pv(gq, acc + h0 * dl, dl, rescale ? corr : nullptr, &sc[0][0], kTile, nr, ka, dl);
        }
      }
      if (splits == 1) {
        for (int64_t h = hlo; h < hhi; ++h) {
          const float lh = ml[2 * h + 1];
          const float inv = lh > 0 ? 1.0f / lh : 0.0f;
          float* a = acc + h * dl;
          for (int64_t c = 0; c < dl; ++c) a[c] *= inv;
        }
      }
    }
  });

  // Merge the splits of long sequences: o = sum_k e^(m_k - M) acc_k / sum_k e^(m_k - M) l_k.
  if (L.group_units[ngroups] == ngroups) return;  // no group has more than one split
  parallel_for(batch * nh, std::max<int64_t>(1, 4096 / std::max<int64_t>(dl, 1)), [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t b = p / nh, h = p % nh;
      const int64_t splits = L.row_splits[b], stride = L.row_stride[b];
      if (splits <= 1) continue;
      const auto ml_at = [&](int64_t k) { return L.ml + ((L.unit_base[b] + k * stride) * nh + h) * 2; };
      float mx = kNegInf;
      for (int64_t k = 0; k < splits; ++k) mx = std::max(mx, ml_at(k)[0]);
      float* out = o_lat + (b * nh + h) * dl;
      std::memset(out, 0, sizeof(float) * dl);
      float lsum = 0.0f;
      for (int64_t k = 0; k < splits; ++k) {
        const float mk = ml_at(k)[0], lk = ml_at(k)[1];
        if (mk == kNegInf) continue;  // empty split
        const float w = std::exp(mk - mx);
        lsum += w * lk;
        const float* a = L.acc + ((L.slot_base[b] + k * stride) * nh + h) * dl;
        for (int64_t c = 0; c < dl; ++c) out[c] += w * a[c];
      }
      const float inv = lsum > 0 ? 1.0f / lsum : 0.0f;
      for (int64_t c = 0; c < dl; ++c) out[c] *= inv;
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Weight absorption: q_lat = W_UK^T q_nope, o = W_UV o_lat.

constexpr int64_t kColBlock = 128;           // latent columns per absorb_q work unit (prefill; decode: whole rows)
constexpr int64_t kRowBlock = 32;            // W_UV rows per output work unit
constexpr int64_t kUvWarmBytes = 512 << 10;  // a thread's W_UV requested by mlaAbsorbQ: half an L2 (1 MiB on Zen 4)
constexpr int64_t kAbsorbRows = 4;           // weight rows per micro-kernel call (both ops; output: one 4-key block)
constexpr int64_t kAbsorbRowsMulti = 32;     // absorb_q with more than kMaxQ tokens: W_UK rows per call
constexpr int64_t kAbsorbAhead = 4096;       // software prefetch distance along a thread's row stream, in bytes (L1)
constexpr int64_t kAbsorbFar = 16384;        // the same, the request into L2

// Both absorb ops are bandwidth bound at decode: every weight byte is read once per call. Their
// units (contiguous in the weight) go out as one equal, contiguous share per thread, which each
// thread reads as one stream of weight rows: unit after unit, kAbsorbRows rows at a time, with a
// software prefetch of the rows kAbsorbAhead bytes further along the stream (into the next units
// at a unit's end) before each call. The hardware prefetchers alone restart at every head's slice
// (the slices are 4 KiB pages or less apart from the other half of the head's rows), and a whole
// tile prefetched in one burst stalls on the miss buffers instead of overlapping the math. On the
// 2-core VM (bench/mla-probe.mjs: the medium preset's shapes, cold weights, one thread) the bursts
// of 16 rows took 2.1-2.3x the time of a one-row linear of the same bytes for absorb_q and 1.3x for
// output; this stream (4 KiB ahead; 2 and 8 KiB, and 8 or 16 rows per call, measured no better)
// 1.4x and 1.15x. The rows are also requested kAbsorbFar bytes ahead into L2 (as the GEMV's row
// streams are, linear_vec.h): in the replayed batch-1 medium step the two ops took ~1.08 ms per step
// with the L1 request alone, ~0.69 ms with both (8 and 32 KiB as 16; the L1 distance beside it,
// 1-8 KiB, no different). Each call's rows are summed as before (one fma chain per element in row
// order, the same 4-key blocks): the results are bit for bit those of the tiles.
//
// Prefetcher: a cursor `ahead` rows along a thread's stream of weight rows, the units [u, u1) in
// order: unit u has rows(u) rows, row r at base(u) + r * stride, bytes(u) of each read. next(n)
// prefetches the next n rows and moves on (no division on the way: this runs per few rows).
template <int kLevel, class Rows, class Base, class Bytes>
struct Prefetcher {
  int64_t u1, stride;
  Rows rows;
  Base base;
  Bytes bytes;
  int64_t u = 0, r = 0, n = 0, b = 0;
  const char* p = nullptr;
  void enter(int64_t uu) {
    u = uu;
    r = 0;
    if (u < u1) n = rows(u), b = bytes(u), p = reinterpret_cast<const char*>(base(u));
  }
  void next(int64_t k) {
    for (; k > 0 && u < u1; --k) {
      prefetch_row<kLevel>(p, b);
      p += stride;
      if (++r == n) enter(u + 1);
    }
  }
};
template <int kLevel = 1, class Rows, class Base, class Bytes>
Prefetcher<kLevel, Rows, Base, Bytes> prefetcher(int64_t u0, int64_t u1, int64_t stride, Rows rows, Base base, Bytes bytes) {
  Prefetcher<kLevel, Rows, Base, Bytes> pf{u1, stride, rows, base, bytes};
  pf.enter(u0);
  return pf;
}
// A thread's two requests along its row stream: each row into L1 kAbsorbAhead bytes ahead, and
// into L2 kAbsorbFar bytes ahead (L2's miss queue is deeper; the L1 requests then hit L2). Made
// with the stream's first rows requested; next(n) as Prefetcher's, both cursors.
template <class Rows, class Base, class Bytes>
struct StreamPrefetch {
  Prefetcher<1, Rows, Base, Bytes> near;
  Prefetcher<2, Rows, Base, Bytes> far;
  void next(int64_t k) {
    far.next(k);
    near.next(k);
  }
};
template <class Rows, class Base, class Bytes>
StreamPrefetch<Rows, Base, Bytes> stream_prefetch(int64_t u0, int64_t u1, int64_t stride, Rows rows, Base base, Bytes bytes) {
  StreamPrefetch<Rows, Base, Bytes> s{prefetcher<1>(u0, u1, stride, rows, base, bytes),
                                      prefetcher<2>(u0, u1, stride, rows, base, bytes)};
  const auto rows_in = [&](int64_t ahead) { return std::max<int64_t>(kAbsorbRows, ahead / std::max<int64_t>(1, s.near.b)); };
  s.far.next(rows_in(kAbsorbFar));
  s.near.next(rows_in(kAbsorbAhead));
  return s;
}
// [0, n) as one chunk per thread
template <typename F>
void per_thread(int64_t n, F&& f) {
  const int64_t nt = ThreadPool::current().threads();
  parallel_for(n, (n + nt - 1) / nt, f);
}

// bf16 weights (the callers' `if constexpr`) at more than kMaxQ tokens on AVX512-BF16, unless bf16
// activations are off ('highest'): absorb_q_bf16 / output_bf16, whole heads per thread.
#ifdef LC_ATTN_X86
bool absorb_bf16_path(int64_t t) { return t > kMaxQ && isa() == Isa::Avx512 && features().avx512_bf16 && bf16_activations(); }
#endif

template <typename WT>
void absorb_q_impl(const MlaDims& d, int64_t t, float* q_lat, const float* q, const WT* w) {
#ifdef LC_ATTN_X86
  if constexpr (std::is_same_v<WT, uint16_t>)
    if (absorb_bf16_path(t)) {
      per_thread(d.nh, [&](int64_t h0, int64_t h1) { absorb_q_bf16(d, t, h0, h1, q_lat, q, w); });
      return;
    }
#endif
  const Kernels<WT> K = pick<WT>();
  const int64_t nh = d.nh, dn = d.dn, dl = d.dl, dk = d.dn + d.dr, dkv = d.dn + d.dv;
  const int64_t cb = t <= kMaxQ ? dl : kColBlock;  // decode: a unit is one head's whole W_UK rows
  const int64_t cblocks = (dl + cb - 1) / cb;
  per_thread(nh * cblocks, [&](int64_t u0, int64_t u1) {
    // W_UK rows of unit u: head u / cblocks, columns from (u % cblocks) * cb
    const auto width = [&](int64_t u) { return std::min(cb, dl - (u % cblocks) * cb); };
    const auto ubase = [&](int64_t u) { return w + (u / cblocks) * dkv * dl + (u % cblocks) * cb; };
    auto pf = stream_prefetch(
        u0, u1, dl * static_cast<int64_t>(sizeof(WT)), [&](int64_t) { return dn; }, ubase,
        [&](int64_t u) { return width(u) * static_cast<int64_t>(sizeof(WT)); });
    // A call sums `group` rows into its tokens' accumulators, kept in registers over the call: at
    // decode 4 rows (the stream's step); with more tokens up to kAbsorbRowsMulti, whose kColBlock
    // columns stay in L1 for every token group (a small GEMM, instead of reloading the
    // accumulators every 4 rows). Each element's sum is one fma chain in row order either way:
    // the same bits.
    const int64_t group = t > kMaxQ ? kAbsorbRowsMulti : kAbsorbRows;
    // Decode at 1-4 tokens (a unit is a head): the head's W_UV, which mlaOutput reads after the
    // decode, is requested into L2 along its W_UK rows (kv_b_proj is cold in a step: small preset,
    // 4 rows, mlaOutput 31-33 -> 25 us per step; at 5-16 tokens on the bf16 path the same requests
    // slowed mlaAbsorbQ more than they sped mlaOutput up).
    // Only while the thread's share of W_UV stays in L2 until mlaOutput (kUvWarmBytes): at LongCat's
    // dimensions (64 heads x 128 x 512 bf16, 4 MiB a thread at 2 threads) the lines would be evicted
    // before mlaOutput reads them, and W_UV would be read from DRAM twice.
    const int64_t uv_head = d.dv * dl * static_cast<int64_t>(sizeof(WT));
    const int64_t uv_bytes = t <= kMaxQ && (u1 - u0) * uv_head <= kUvWarmBytes ? uv_head : 0;
    const WT* rows[kAbsorbRowsMulti];
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t h = u / cblocks, c0 = (u % cblocks) * cb, cw = width(u);
      const WT* wu = ubase(u);
      const char* uv = reinterpret_cast<const char*>(wu + dn * dl);
      int64_t uv_done = 0;
      for (int64_t i = 0; i < t; ++i) std::memset(q_lat + (i * nh + h) * dl + c0, 0, sizeof(float) * cw);
      for (int64_t r0 = 0; r0 < dn; r0 += group) {
        const int nt = static_cast<int>(std::min<int64_t>(group, dn - r0));
        pf.next(nt);
        for (const int64_t upto = uv_bytes * (r0 + nt) / dn; uv_done < upto; uv_done += 64) prefetch_line<2>(uv + uv_done);
        for (int j = 0; j < nt; ++j) rows[j] = wu + (r0 + j) * dl;
        for (int64_t i0 = 0; i0 < t; i0 += kMaxQ) {
          const int gq = static_cast<int>(std::min<int64_t>(kMaxQ, t - i0));
          K.pv(gq, q_lat + (i0 * nh + h) * dl + c0, nh * dl, nullptr, q + (i0 * nh + h) * dk + r0, nh * dk, nt, rows, cw);
        }
      }
    }
  });
}

template <typename WT>
void output_impl(const MlaDims& d, int64_t t, float* o, const float* o_lat, const WT* w) {
#ifdef LC_ATTN_X86
  if constexpr (std::is_same_v<WT, uint16_t>)
    if (absorb_bf16_path(t)) {
      per_thread(d.nh, [&](int64_t h0, int64_t h1) { output_bf16(d, t, h0, h1, o, o_lat, w); });
      return;
    }
#endif
  const Kernels<WT> K = pick<WT>();
  const int64_t nh = d.nh, dn = d.dn, dv = d.dv, dl = d.dl, dkv = d.dn + d.dv;
  const int64_t rblocks = (dv + kRowBlock - 1) / kRowBlock;
  per_thread(nh * rblocks, [&](int64_t u0, int64_t u1) {
    // W_UV rows of unit u: head u / rblocks, rows from (u % rblocks) * kRowBlock
    const auto len = [&](int64_t u) { return std::min(kRowBlock, dv - (u % rblocks) * kRowBlock); };
    const auto ubase = [&](int64_t u) { return w + ((u / rblocks) * dkv + dn + (u % rblocks) * kRowBlock) * dl; };
    auto pf = stream_prefetch(u0, u1, dl * static_cast<int64_t>(sizeof(WT)), len, ubase,
                              [&](int64_t) { return dl * static_cast<int64_t>(sizeof(WT)); });
    const WT* rows[kAbsorbRows];
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t h = u / rblocks, r0 = (u % rblocks) * kRowBlock, n = len(u);
      const WT* wu = ubase(u);
      for (int64_t g = 0; g < n; g += kAbsorbRows) {
        const int nt = static_cast<int>(std::min(kAbsorbRows, n - g));
        pf.next(nt);
        for (int j = 0; j < nt; ++j) rows[j] = wu + (g + j) * dl;
        for (int64_t i0 = 0; i0 < t; i0 += kMaxQ) {
          const int gq = static_cast<int>(std::min<int64_t>(kMaxQ, t - i0));
          K.scores(gq, o_lat + (i0 * nh + h) * dl, nh * dl, nullptr, 0, nt, rows, nullptr, dl, 0, 1.0f,
                   o + (i0 * nh + h) * dv + r0 + g, nh * dv);
        }
      }
    }
  });
}

}  // namespace

// ---------------------------------------------------------------------------------------------

void mla_prefill(const MlaDims& d, int64_t batch, float* o, const float* q, const float* kvb, const float* kpe,
                 const int32_t* q_start, const int32_t* kv_start, float scale) {
  prefill_impl(d, batch, o, q, kvb, kpe, q_start, kv_start, scale);
}

void mla_cache_write(const MlaDims& d, int64_t t, void* cache, MlaCache cf, int64_t block_size, const float* ckv,
                     const float* kpe, const int32_t* slots) {
  const int64_t dl = d.dl, dr = d.dr, row = dl + dr;
  (void)block_size;  // slot s is row s of the flattened [num_blocks * block_size, row] cache
  parallel_for(t, std::max<int64_t>(1, 8192 / std::max<int64_t>(row, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t s = slots[r];
      if (cf == MlaCache::FP8) {
        uint8_t* dst = static_cast<uint8_t*>(cache) + s * mla_fp8_row_bytes(dl, dr);
        for (int64_t g = 0; g < dl / kMlaFp8Group; ++g) {
          const float sc = quantize_fp8_group(kMlaFp8Group, ckv + r * dl + g * kMlaFp8Group, dst + g * kMlaFp8Group);
          std::memcpy(dst + mla_fp8_scale_offset(dl) + 4 * g, &sc, sizeof(float));
        }
        for (int64_t c = 0; c < dr; ++c) {
          const uint16_t h = f32_to_bf16(kpe[r * dr + c]);
          std::memcpy(dst + mla_fp8_rope_offset(dl) + 2 * c, &h, sizeof(h));
        }
      } else if (cf == MlaCache::BF16) {
        uint16_t* dst = static_cast<uint16_t*>(cache) + s * row;
        bf16_row(dst, ckv + r * dl, dl);
        bf16_row(dst + dl, kpe + r * dr, dr);
      } else {
        float* dst = static_cast<float*>(cache) + s * row;
        std::memcpy(dst, ckv + r * dl, sizeof(float) * dl);
        std::memcpy(dst + dl, kpe + r * dr, sizeof(float) * dr);
      }
    }
  });
}

void mla_cache_gather(const MlaDims& d, float* ckv, float* kpe, const void* cache, MlaCache cf, int64_t block_size,
                      const int32_t* block_table, int64_t start, int64_t length) {
  const int64_t dl = d.dl, dr = d.dr, row = dl + dr;
  parallel_for(length, std::max<int64_t>(1, 8192 / std::max<int64_t>(row, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t s = start + r;
      const int64_t src = static_cast<int64_t>(block_table[s / block_size]) * block_size + s % block_size;
      if (cf == MlaCache::FP8) {
        const uint8_t* p = static_cast<const uint8_t*>(cache) + src * mla_fp8_row_bytes(dl, dr);
        for (int64_t g = 0; g < dl / kMlaFp8Group; ++g) {
          float sc;
          std::memcpy(&sc, p + mla_fp8_scale_offset(dl) + 4 * g, sizeof(float));
          dequantize_fp8_group(kMlaFp8Group, p + g * kMlaFp8Group, sc, ckv + r * dl + g * kMlaFp8Group);
        }
        for (int64_t c = 0; c < dr; ++c) {
          uint16_t h;
          std::memcpy(&h, p + mla_fp8_rope_offset(dl) + 2 * c, sizeof(h));
          kpe[r * dr + c] = bf16_to_f32(h);
        }
      } else if (cf == MlaCache::BF16) {
        const uint16_t* p = static_cast<const uint16_t*>(cache) + src * row;
        for (int64_t c = 0; c < dl; ++c) ckv[r * dl + c] = bf16_to_f32(p[c]);
        for (int64_t c = 0; c < dr; ++c) kpe[r * dr + c] = bf16_to_f32(p[dl + c]);
      } else {
        const float* p = static_cast<const float*>(cache) + src * row;
        std::memcpy(ckv + r * dl, p, sizeof(float) * dl);
        std::memcpy(kpe + r * dr, p + dl, sizeof(float) * dr);
      }
    }
  });
}

void mla_absorb_q(const MlaDims& d, int64_t t, float* q_lat, const float* q, const void* wkvb, bool w_bf16) {
  profile::add_weight_bytes(d.nh * d.dn * d.dl * (w_bf16 ? 2 : 4));  // W_UK
  if (w_bf16)
    absorb_q_impl(d, t, q_lat, q, static_cast<const uint16_t*>(wkvb));
  else
    absorb_q_impl(d, t, q_lat, q, static_cast<const float*>(wkvb));
}

void mla_output(const MlaDims& d, int64_t t, float* o, const float* o_lat, const void* wkvb, bool w_bf16) {
  profile::add_weight_bytes(d.nh * d.dv * d.dl * (w_bf16 ? 2 : 4));  // W_UV
  if (w_bf16)
    output_impl(d, t, o, o_lat, static_cast<const uint16_t*>(wkvb));
  else
    output_impl(d, t, o, o_lat, static_cast<const float*>(wkvb));
}

int64_t mla_decode_workspace_floats(const MlaDims& d, int64_t batch, int64_t units) {
  units = std::max<int64_t>(units, 1);
  return decode_layout_ints(batch) + (batch + units) * d.nh * 2 + 2 * units * d.nh * d.dl;
}

void mla_decode_absorbed(const MlaDims& d, int64_t batch, float* o_lat, const float* q_lat, const float* q, const void* cache,
                         MlaCache cf, int64_t block_size, const int32_t* block_table, int64_t max_blocks, const int32_t* seq_lens,
                         float scale, float* workspace, int64_t units) {
  units = std::max<int64_t>(units, 1);
  if (cf == MlaCache::FP8)
    decode_impl(d, batch, o_lat, q_lat, q, static_cast<const uint8_t*>(cache), block_size, block_table, max_blocks, seq_lens,
                scale, workspace, units);
  else if (cf == MlaCache::BF16)
    decode_impl(d, batch, o_lat, q_lat, q, static_cast<const uint16_t*>(cache), block_size, block_table, max_blocks, seq_lens,
                scale, workspace, units);
  else
    decode_impl(d, batch, o_lat, q_lat, q, static_cast<const float*>(cache), block_size, block_table, max_blocks, seq_lens, scale,
                workspace, units);
}

}  // namespace lc::cpu
