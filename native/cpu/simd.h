// The x86 SIMD primitives of the CPU kernels, each written once per ISA: the target strings and
// attributes, and two vector-traits types (simd::Avx2: 8 f32 lanes, simd::Avx512: 16 lanes) with
// loads and stores (whole and partial vectors), arithmetic, horizontal sums, exp, and the bf16 /
// int8 / fp8 conversions. Kernels templated on a traits type V are written once and compiled per
// ISA (linear_vec.h); hand-written per-ISA kernels call the same primitives.
//
// Runtime dispatch, never -march=native: the build uses baseline x86-64 flags and every function
// here carries its ISA's target attribute, so a copy the linker keeps from any translation unit is
// the same code. Code compiled for an ISA either carries LC_TARGET_* or sits between
// LC_BEGIN_TARGET(LC_ISA_*) and LC_END_TARGET; it runs only after features.h's isa() said so.
#pragma once
#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <limits>

// The feature sets of Isa::Avx2 and Isa::Avx512 (features.cc checks exactly these).
#define LC_ISA_AVX2 "avx2,fma,f16c"
#define LC_ISA_AVX512 "avx512f,avx512bw,avx512vl,avx512dq,fma,f16c"
// AVX-512 plus vdpbf16ps / vcvtneps2bf16 (features().avx512_bf16).
#define LC_ISA_AVX512BF16 LC_ISA_AVX512, "avx512bf16"
#define LC_TARGET_AVX2 __attribute__((target(LC_ISA_AVX2)))
#define LC_TARGET_AVX512 __attribute__((target(LC_ISA_AVX512)))
#define LC_TARGET_AVX512BF16 __attribute__((target(LC_ISA_AVX512BF16)))
// AVX512-BF16 plus vpermi2b (features().avx512_vbmi).
#define LC_ISA_AVX512BF16_VBMI LC_ISA_AVX512BF16, "avx512vbmi"
// AVX-512 plus vpdpbusd (features().avx512_vnni).
#define LC_ISA_AVX512VNNI LC_ISA_AVX512, "avx512vnni"
#define LC_TARGET_AVX512VNNI __attribute__((target(LC_ISA_AVX512VNNI)))

// A region of code compiled for an ISA (templates included): LC_BEGIN_TARGET(LC_ISA_AVX2) ... LC_END_TARGET.
#define LC_PRAGMA_STR_(x) _Pragma(#x)
#define LC_PRAGMA_STR(x) LC_PRAGMA_STR_(x)
#define LC_BEGIN_TARGET(...) _Pragma("GCC push_options") LC_PRAGMA_STR(GCC target(__VA_ARGS__))
#define LC_END_TARGET _Pragma("GCC pop_options")

// A helper templated on a traits type V, written once for both ISAs: it has no target of its own
// and is always inlined into the LC_TARGET_* function that calls it, where V's primitives inline.
#define LC_SIMD_INLINE __attribute__((always_inline)) inline

// GCC 12 reports its own pass-through operands (_mm512_undefined_*) inside the AVX-512 intrinsic
// headers as uninitialized wherever they are inlined; these two warnings are off in kernel files.
// -Wpsabi flags vectors passed to or returned from LC_SIMD_INLINE helpers, which have no target
// of their own; they are always inlined, so no call with that ABI is ever made.
#define LC_SIMD_QUIET_WARNINGS                                                                                      \
  _Pragma("GCC diagnostic ignored \"-Wuninitialized\"") _Pragma("GCC diagnostic ignored \"-Wmaybe-uninitialized\"") \
      _Pragma("GCC diagnostic ignored \"-Wpsabi\"")
LC_SIMD_QUIET_WARNINGS

namespace lc::cpu::simd {

// Cephes expf: n = round(x log2 e), r = x - n ln 2 (ln 2 in two parts), exp(r) = 1 + r + r^2 p(r)
// with a degree-5 p, times 2^n. Inputs are clamped to [-104, 89] first (NaN passes through), so
// exp(-inf) = 0 and exp(+inf) = +inf by underflow / overflow of the final scaling, which rounds
// once: results below 2^-126 are the correctly rounded subnormals. Both ISAs give the same bits;
// test/native/simd_harness.cc checks the error bound (<= 2 ulp against float64 over the range).
// Written once (cephes_exp: x = exp(x)) over the traits' primitives; each ISA supplies scale_pow2.
template <class V>
LC_SIMD_INLINE void cephes_exp(typename V::F& x) {
  constexpr float kLo = -104.0f, kHi = 89.0f;
  constexpr float kLog2e = 1.44269504088896341f, kC1 = 0.693359375f, kC2 = -2.12194440e-4f;
  constexpr float kP0 = 1.9875691500E-4f, kP1 = 1.3981999507E-3f, kP2 = 8.3334519073E-3f, kP3 = 4.1665795894E-2f,
                  kP4 = 1.6666665459E-1f, kP5 = 5.0000001201E-1f;
  using F = typename V::F;
  x = V::max(V::set1(kLo), V::min(V::set1(kHi), x));  // NaN kept: 2nd operand
  const F n = V::round(V::mul(x, V::set1(kLog2e)));
  F r = V::fnmadd(n, V::set1(kC1), x);
  r = V::fnmadd(n, V::set1(kC2), r);
  F p = V::set1(kP0);
  p = V::fmadd(p, r, V::set1(kP1));
  p = V::fmadd(p, r, V::set1(kP2));
  p = V::fmadd(p, r, V::set1(kP3));
  p = V::fmadd(p, r, V::set1(kP4));
  p = V::fmadd(p, r, V::set1(kP5));
  const F y = V::add(V::fmadd(p, V::mul(r, r), r), V::set1(1.0f));
  x = V::scale_pow2(y, n);
}

// ---------------------------------------------------------------------------------------------
// AVX2 + FMA + F16C: 8 f32 lanes.
struct Avx2 {
  using F = __m256;
  using I = __m256i;
  static constexpr int kLanes = 8;
  static constexpr bool kMaskedTails = false;  // the _n loads / stores go through memory or maskmov: slower than scalar

  LC_TARGET_AVX2 static F zero() { return _mm256_setzero_ps(); }
  LC_TARGET_AVX2 static F set1(float v) { return _mm256_set1_ps(v); }
  LC_TARGET_AVX2 static F load(const float* p) { return _mm256_loadu_ps(p); }
  LC_TARGET_AVX2 static void store(float* p, F v) { _mm256_storeu_ps(p, v); }
  // Lanes [0, n) for 0 <= n <= 8; the other lanes are zero and their memory is not touched.
  LC_TARGET_AVX2 static I lanes_below(int64_t n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  LC_TARGET_AVX2 static F load_n(const float* p, int64_t n) { return _mm256_maskload_ps(p, lanes_below(n)); }
  LC_TARGET_AVX2 static void store_n(float* p, F v, int64_t n) { _mm256_maskstore_ps(p, lanes_below(n), v); }
  LC_TARGET_AVX2 static F add(F a, F b) { return _mm256_add_ps(a, b); }
  LC_TARGET_AVX2 static F sub(F a, F b) { return _mm256_sub_ps(a, b); }
  LC_TARGET_AVX2 static F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  LC_TARGET_AVX2 static F fmadd(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }    // a * b + c
  LC_TARGET_AVX2 static F fnmadd(F a, F b, F c) { return _mm256_fnmadd_ps(a, b, c); }  // c - a * b
  LC_TARGET_AVX2 static F min(F a, F b) { return _mm256_min_ps(a, b); }                // b when either is NaN
  LC_TARGET_AVX2 static F max(F a, F b) { return _mm256_max_ps(a, b); }
  LC_TARGET_AVX2 static F round(F a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }

  // ((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7))
  LC_TARGET_AVX2 static float reduce_add(F a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  LC_TARGET_AVX2 static float reduce_max(F a) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  // [sum(a0), sum(a1), sum(a2), sum(a3)]
  LC_TARGET_AVX2 static __m128 hsum4(F a0, F a1, F a2, F a3) {
    const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));  // per 128-bit half
    return _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
  }

  LC_TARGET_AVX2 static F exp(F x) {
    cephes_exp<Avx2>(x);
    return x;
  }
  // y * 2^n for integral n in [-150, 128] as y * 2^n1 * 2^n2, both factors normal; y * 2^n1 is
  // exact (y is near 1), so the result is rounded once, like vscalefps.
  LC_TARGET_AVX2 static F scale_pow2(F y, F n) {
    const __m256i ni = _mm256_cvtps_epi32(n), n1 = _mm256_srai_epi32(ni, 1), n2 = _mm256_sub_epi32(ni, n1);
    return _mm256_mul_ps(_mm256_mul_ps(y, pow2(n1)), pow2(n2));
  }
  // 2^k for integer lanes k in [-126, 127].
  LC_TARGET_AVX2 static F pow2(__m256i k) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(k, _mm256_set1_epi32(127)), 23));
  }

  // bf16 bits -> f32 (exact).
  LC_TARGET_AVX2 static F widen_bf16(__m128i h) { return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)); }
  LC_TARGET_AVX2 static F load_bf16(const uint16_t* p) {
    return widen_bf16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  LC_TARGET_AVX2 static F load_f16(const uint16_t* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  LC_TARGET_AVX2 static F load_bf16_n(const uint16_t* p, int64_t n) {
    alignas(16) uint16_t b[8] = {};
    std::memcpy(b, p, n * sizeof(uint16_t));
    return load_bf16(b);
  }
  LC_TARGET_AVX2 static F load_f16_n(const uint16_t* p, int64_t n) {
    alignas(16) uint16_t b[8] = {};
    std::memcpy(b, p, n * sizeof(uint16_t));
    return load_f16(b);
  }
  // f32 -> bf16 bits, round to nearest even, NaN kept quiet (numeric.h's f32_to_bf16).
  LC_TARGET_AVX2 static __m128i to_bf16(F x) {
    const __m256i u = _mm256_castps_si256(x);
    __m256i r = _mm256_add_epi32(
        u, _mm256_add_epi32(_mm256_set1_epi32(0x7fff), _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1))));
    r = _mm256_srli_epi32(r, 16);
    const __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff)), _mm256_set1_epi32(0x7f800000));
    r = _mm256_blendv_epi8(r, _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40)), nan);
    return _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
  }
  LC_TARGET_AVX2 static void store_bf16(uint16_t* p, F x) { _mm_storeu_si128(reinterpret_cast<__m128i*>(p), to_bf16(x)); }
  // f32 or bf16 bits, as f32.
  LC_TARGET_AVX2 static F widen_load(const float* p) { return load(p); }
  LC_TARGET_AVX2 static F widen_load(const uint16_t* p) { return load_bf16(p); }

  // int4 codes (cpu/linear.h's format): the 16 bytes at p hold the codes of 32 consecutive columns.
  // load_u4 widens them; u4_codes(u, v) gives columns [v * kLanes, (v + 1) * kLanes) as f32 (0..15).
  static constexpr int kU4Vectors = 32 / kLanes;
  struct U4 {
    __m256i e0, e1;  // bytes 0..7, 8..15 as 32-bit lanes
  };
  LC_TARGET_AVX2 static U4 load_u4(const uint8_t* p) {
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return {_mm256_cvtepu8_epi32(b), _mm256_cvtepu8_epi32(_mm_srli_si128(b, 8))};
  }
  LC_TARGET_AVX2 static F u4_codes(const U4& u, int v) {
    const __m256i e = v % 2 ? u.e1 : u.e0;
    return _mm256_cvtepi32_ps(v < 2 ? _mm256_and_si256(e, _mm256_set1_epi32(15)) : _mm256_srli_epi32(e, 4));
  }

  // int8 -> f32 (exact).
  LC_TARGET_AVX2 static F load_i8(const int8_t* p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  }
  LC_TARGET_AVX2 static F load_i8_n(const int8_t* p, int64_t n) {
    alignas(8) int8_t b[8] = {};
    std::memcpy(b, p, n);
    return load_i8(b);
  }

  // fp8 e4m3 -> f32 value / 256 through the f16 bit move (see Avx512::load_fp8); NaN codes are
  // not decoded as NaN: callers check them apart (has_nan_code).
  LC_TARGET_AVX2 static F load_fp8(const uint8_t* p) {
    const __m128i h = _mm_slli_epi16(_mm_cvtepi8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))), 7);
    return _mm256_cvtph_ps(_mm_and_si128(h, _mm_set1_epi16(static_cast<short>(0xbfff))));
  }
  LC_TARGET_AVX2 static F load_fp8_n(const uint8_t* p, int64_t n) {
    alignas(8) uint8_t b[8] = {};
    std::memcpy(b, p, n);
    return load_fp8(b);
  }

  // The integer-lane primitives of the fp8 encoder (quant.cc's fp8_encode): 32-bit lanes, masks
  // from ordered / unordered compares, and the low byte of every lane stored (the first n).
  LC_TARGET_AVX2 static F div(F a, F b) { return _mm256_div_ps(a, b); }
  using M = __m256;
  LC_TARGET_AVX2 static I ibits(F a) { return _mm256_castps_si256(a); }
  LC_TARGET_AVX2 static F fbits(I a) { return _mm256_castsi256_ps(a); }
  LC_TARGET_AVX2 static I iset1(int32_t v) { return _mm256_set1_epi32(v); }
  LC_TARGET_AVX2 static I iand(I a, I b) { return _mm256_and_si256(a, b); }
  LC_TARGET_AVX2 static I ior(I a, I b) { return _mm256_or_si256(a, b); }
  LC_TARGET_AVX2 static I iadd(I a, I b) { return _mm256_add_epi32(a, b); }
  LC_TARGET_AVX2 static I isub(I a, I b) { return _mm256_sub_epi32(a, b); }
  LC_TARGET_AVX2 static I imin(I a, I b) { return _mm256_min_epi32(a, b); }
  template <int kBits>
  LC_TARGET_AVX2 static I isrl(I a) {
    return _mm256_srli_epi32(a, kBits);
  }
  template <int kBits>
  LC_TARGET_AVX2 static I isll(I a) {
    return _mm256_slli_epi32(a, kBits);
  }
  LC_TARGET_AVX2 static I itrunc(F a) { return _mm256_cvttps_epi32(a); }
  LC_TARGET_AVX2 static M lt(F a, F b) { return _mm256_cmp_ps(a, b, _CMP_LT_OQ); }
  LC_TARGET_AVX2 static M ge(F a, F b) { return _mm256_cmp_ps(a, b, _CMP_GE_OQ); }
  LC_TARGET_AVX2 static M unord(F a, F b) { return _mm256_cmp_ps(a, b, _CMP_UNORD_Q); }
  LC_TARGET_AVX2 static I iselect(M m, I yes, I no) { return _mm256_blendv_epi8(no, yes, _mm256_castps_si256(m)); }
  LC_TARGET_AVX2 static uint64_t low_bytes(I a) {
    const __m256i pick = _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 0, 4, 8, 12, -1, -1, -1,
                                          -1, -1, -1, -1, -1, -1, -1, -1, -1);
    const __m256i r = _mm256_shuffle_epi8(a, pick);
    const uint64_t lo = static_cast<uint32_t>(_mm_cvtsi128_si32(_mm256_castsi256_si128(r)));
    const uint64_t hi = static_cast<uint32_t>(_mm_cvtsi128_si32(_mm256_extracti128_si256(r, 1)));
    return lo | (hi << 32);
  }
  LC_TARGET_AVX2 static void store_low_bytes(uint8_t* p, I a) {
    const uint64_t b = low_bytes(a);
    std::memcpy(p, &b, 8);
  }
  LC_TARGET_AVX2 static void store_low_bytes_n(uint8_t* p, I a, int64_t n) {
    const uint64_t b = low_bytes(a);
    std::memcpy(p, &b, n);
  }

  // Byte vectors (the fp8 GEMV decodes 4 * kLanes codes per load).
  LC_TARGET_AVX2 static I load_bytes(const uint8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const I*>(p)); }
  LC_TARGET_AVX2 static I load_bytes_n(const uint8_t* p, int64_t n) {
    alignas(32) uint8_t b[32] = {};
    std::memcpy(b, p, n);
    return load_bytes(b);
  }
  LC_TARGET_AVX2 static I izero() { return _mm256_setzero_si256(); }
  LC_TARGET_AVX2 static I max_epu8(I a, I b) { return _mm256_max_epu8(a, b); }
  LC_TARGET_AVX2 static I max_epi8(I a, I b) { return _mm256_max_epi8(a, b); }
  // Whether any byte of a equals b.
  LC_TARGET_AVX2 static bool any_byte_eq(I a, int8_t b) {
    return _mm256_movemask_epi8(_mm256_cmpeq_epi8(a, _mm256_set1_epi8(b))) != 0;
  }
  // Byte `byte` of every 32-bit lane of v as an fp8 e4m3 code decoded to f32 bits sign << 31 |
  // (code & 0x7f) << 20: exactly the code's value * 2^-120, subnormals included (as f32
  // subnormals). Shifted up to the lane's top byte, then arithmetically right by 4 (the sign fills
  // bits 27..30, cleared by the mask). NaN codes are not decoded as NaN: callers check them apart.
  LC_TARGET_AVX2 static F fp8_lane_byte(I v, int byte) {
    const I top = byte == 3 ? v : _mm256_slli_epi32(v, 24 - 8 * byte);
    return _mm256_castsi256_ps(_mm256_and_si256(_mm256_srai_epi32(top, 4), _mm256_set1_epi32(static_cast<int>(0x87f00000u))));
  }

  // Whether the n fp8 codes at p hold a NaN code ((b | 0x80) == 0xff).
  LC_TARGET_AVX2 static bool has_nan_code(const uint8_t* p, int64_t n) {
    int64_t i = 0;
    int any = 0;
    for (; i + 32 <= n; i += 32) {
      const __m256i v = _mm256_or_si256(load_bytes(p + i), _mm256_set1_epi8(static_cast<char>(0x80)));
      any |= _mm256_movemask_epi8(_mm256_cmpeq_epi8(v, _mm256_set1_epi8(-1)));
    }
    for (; i < n; ++i) any |= (p[i] & 0x7f) == 0x7f;
    return any != 0;
  }

  // Arg-max lanes: where v > best (ordered), best = v and index = at; at then moves kLanes on.
  LC_TARGET_AVX2 static void argmax_step(F v, F& best, I& index, I& at) {
    const __m256 gt = _mm256_cmp_ps(v, best, _CMP_GT_OQ);
    best = _mm256_blendv_ps(best, v, gt);
    index = _mm256_blendv_epi8(index, at, _mm256_castps_si256(gt));
    at = _mm256_add_epi32(at, _mm256_set1_epi32(kLanes));
  }
  LC_TARGET_AVX2 static I lane_index() { return _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7); }
  // The smallest index among the lanes whose best equals m.
  LC_TARGET_AVX2 static int32_t min_index_where(F best, I index, float m) {
    alignas(32) float bv[8];
    alignas(32) int32_t bi[8];
    _mm256_store_ps(bv, best);
    _mm256_store_si256(reinterpret_cast<__m256i*>(bi), index);
    int32_t r = std::numeric_limits<int32_t>::max();
    for (int l = 0; l < 8; ++l)
      if (bv[l] == m && bi[l] < r) r = bi[l];
    return r;
  }

  LC_TARGET_AVX2 static I iadd64(I a, I b) { return _mm256_add_epi64(a, b); }
  LC_TARGET_AVX2 static uint64_t ireduce_add64(I a) {
    uint64_t l[4];
    _mm256_storeu_si256(reinterpret_cast<I*>(l), a);
    return l[0] + l[1] + l[2] + l[3];
  }

  // int8-activation dot products (linear_i8act.h): the low / high nibble of every byte, and
  // dot_u4s8<N>(u, s, acc): acc plus, per 32-bit lane, the sum over the N vector pairs (u[k], s[k])
  // of their 4 adjacent u x s byte products, u unsigned 4-bit codes (<= 15), s int8 (|s| <= 127).
  // vpmaddubsw sums pairs into int16 (saturating; exact: 2 * 15 * 127 = 3810), the N results added
  // in int16 (exact for N <= 4: 4 * 3810 < 2^15), then one vpmaddwd of the pairs of those into
  // int32, added to acc.
  LC_TARGET_AVX2 static I nib_lo(I v) { return _mm256_and_si256(v, _mm256_set1_epi8(0x0f)); }
  LC_TARGET_AVX2 static I nib_hi(I v) { return _mm256_and_si256(_mm256_srli_epi16(v, 4), _mm256_set1_epi8(0x0f)); }
  template <int N>
  LC_TARGET_AVX2 static I dot_u4s8(const I* u, const I* s, I acc) {
    static_assert(N >= 1 && N <= 4, "int16 sums of at most 4 vpmaddubsw results are exact");
    I h = _mm256_maddubs_epi16(u[0], s[0]);
    for (int k = 1; k < N; ++k) h = _mm256_add_epi16(h, _mm256_maddubs_epi16(u[k], s[k]));
    return _mm256_add_epi32(acc, _mm256_madd_epi16(h, _mm256_set1_epi16(1)));
  }
  LC_TARGET_AVX2 static F ifloat(I a) { return _mm256_cvtepi32_ps(a); }
  // dot_s8s8<N>(w, x, acc): acc plus, per 32-bit lane, the sum over the N vector pairs (w[k], x[k])
  // of their 4 adjacent int8 x int8 products, x in [-127, 127] (w any int8), exact in int32 for the
  // int8 GEMV (linear_i8act.h: acc starts at s8s8_seed(x), here 0). vpmaddubsw takes |w| as
  // unsigned (|-128| = 128 as a byte) and x with w's sign (vpsignb): each int16 pair sum is at most
  // 2 * 128 * 127 = 32512, no saturation; vpmaddwd widens every result on its own (two would not fit).
  template <int N>
  LC_TARGET_AVX2 static I dot_s8s8(const I* w, const I* x, I acc) {
    for (int k = 0; k < N; ++k)
      acc = _mm256_add_epi32(acc,
                             _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(w[k], w[k]), _mm256_sign_epi8(x[k], w[k])),
                                               _mm256_set1_epi16(1)));
    return acc;
  }
  template <int N>
  LC_TARGET_AVX2 static I s8s8_seed(const I*) {
    return izero();
  }
  // The 8 lanes of a (whole numbers in [-128, 127]) as int8 at p.
  LC_TARGET_AVX2 static void store_i8(int8_t* p, F a) {
    const I i = _mm256_cvtps_epi32(a);
    const __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(i), _mm256_extracti128_si256(i, 1));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(p), _mm_packs_epi16(w, w));
  }
};

// ---------------------------------------------------------------------------------------------
// AVX-512 (F, BW, VL, DQ) + FMA + F16C: 16 f32 lanes.
struct Avx512 {
  using F = __m512;
  using I = __m512i;
  static constexpr int kLanes = 16;
  static constexpr bool kMaskedTails = true;  // the _n loads / stores are single masked instructions

  LC_TARGET_AVX512 static __mmask16 mask16(int64_t n) {
    return n >= 16 ? __mmask16(0xffff) : static_cast<__mmask16>((1u << n) - 1u);
  }
  LC_TARGET_AVX512 static __mmask64 mask64(int64_t n) { return n >= 64 ? ~0ull : (1ull << n) - 1; }

  LC_TARGET_AVX512 static F zero() { return _mm512_setzero_ps(); }
  LC_TARGET_AVX512 static F set1(float v) { return _mm512_set1_ps(v); }
  LC_TARGET_AVX512 static F load(const float* p) { return _mm512_loadu_ps(p); }
  LC_TARGET_AVX512 static void store(float* p, F v) { _mm512_storeu_ps(p, v); }
  // Lanes [0, n) for 0 <= n <= 16; the other lanes are zero and their memory is not touched.
  LC_TARGET_AVX512 static F load_n(const float* p, int64_t n) { return _mm512_maskz_loadu_ps(mask16(n), p); }
  LC_TARGET_AVX512 static void store_n(float* p, F v, int64_t n) { _mm512_mask_storeu_ps(p, mask16(n), v); }
  LC_TARGET_AVX512 static F add(F a, F b) { return _mm512_add_ps(a, b); }
  LC_TARGET_AVX512 static F sub(F a, F b) { return _mm512_sub_ps(a, b); }
  LC_TARGET_AVX512 static F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  LC_TARGET_AVX512 static F fmadd(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }    // a * b + c
  LC_TARGET_AVX512 static F fnmadd(F a, F b, F c) { return _mm512_fnmadd_ps(a, b, c); }  // c - a * b
  LC_TARGET_AVX512 static F min(F a, F b) { return _mm512_min_ps(a, b); }                // b when either is NaN
  LC_TARGET_AVX512 static F max(F a, F b) { return _mm512_max_ps(a, b); }
  LC_TARGET_AVX512 static F round(F a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }

  LC_TARGET_AVX512 static float reduce_add(F a) { return _mm512_reduce_add_ps(a); }
  LC_TARGET_AVX512 static float reduce_max(F a) { return _mm512_reduce_max_ps(a); }
  // [sum(a0), sum(a1), sum(a2), sum(a3)]
  LC_TARGET_AVX512 static __m128 hsum4(F a0, F a1, F a2, F a3) {
    const __m512 t0 = _mm512_add_ps(_mm512_unpacklo_ps(a0, a1), _mm512_unpackhi_ps(a0, a1));  // a0 a1 a0 a1 per lane
    const __m512 t1 = _mm512_add_ps(_mm512_unpacklo_ps(a2, a3), _mm512_unpackhi_ps(a2, a3));
    const __m512 u = _mm512_add_ps(_mm512_shuffle_ps(t0, t1, _MM_SHUFFLE(1, 0, 1, 0)),
                                   _mm512_shuffle_ps(t0, t1, _MM_SHUFFLE(3, 2, 3, 2)));       // a0 a1 a2 a3 per lane
    const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(u), _mm512_extractf32x8_ps(u, 1));  // fold the four lanes
    return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
  }

  LC_TARGET_AVX512 static F exp(F x) {
    cephes_exp<Avx512>(x);
    return x;
  }
  // y * 2^n, one rounding: subnormal, 0 or inf as needed.
  LC_TARGET_AVX512 static F scale_pow2(F y, F n) { return _mm512_scalef_ps(y, n); }

  // bf16 bits -> f32 (exact).
  LC_TARGET_AVX512 static F widen_bf16(__m256i h) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)); }
  LC_TARGET_AVX512 static F load_bf16(const uint16_t* p) {
    return widen_bf16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  LC_TARGET_AVX512 static F load_f16(const uint16_t* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  LC_TARGET_AVX512 static F load_bf16_n(const uint16_t* p, int64_t n) {
    return widen_bf16(_mm256_maskz_loadu_epi16(mask16(n), p));
  }
  LC_TARGET_AVX512 static F load_f16_n(const uint16_t* p, int64_t n) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask16(n), p));
  }
  // f32 -> bf16 bits, round to nearest even, NaN kept quiet (numeric.h's f32_to_bf16).
  LC_TARGET_AVX512 static __m256i to_bf16(F x) {
    const __m512i u = _mm512_castps_si512(x);
    __m512i r = _mm512_add_epi32(
        u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1))));
    r = _mm512_srli_epi32(r, 16);
    const __mmask16 nan =
        _mm512_cmp_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)), _mm512_set1_epi32(0x7f800000), _MM_CMPINT_NLE);
    r = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40)));
    return _mm512_cvtepi32_epi16(r);
  }
  LC_TARGET_AVX512 static void store_bf16(uint16_t* p, F x) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), to_bf16(x)); }
  // f32 or bf16 bits, as f32.
  LC_TARGET_AVX512 static F widen_load(const float* p) { return load(p); }
  LC_TARGET_AVX512 static F widen_load(const uint16_t* p) { return load_bf16(p); }

  // 16 x 16 32-bit elements: out[j][m] = r[m][j] (linear_avx512.cc's lanes GEMM, mla.cc's W_UV packing).
  LC_TARGET_AVX512 __attribute__((always_inline)) static inline void transpose16(const I* r, I* out) {
    I t[16], u[16];
    for (int i = 0; i < 8; ++i) {
      t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
      t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; ++i) {  // u[4i + c], 128-bit lane L: rows 4i .. 4i + 3 of column 4L + c
      u[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
      u[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
      u[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
      u[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
    }
    for (int c = 0; c < 4; ++c) {
      const I s0 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0x44), s1 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0xee);
      const I s2 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0x44), s3 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0xee);
      out[c] = _mm512_shuffle_i32x4(s0, s2, 0x88);
      out[4 + c] = _mm512_shuffle_i32x4(s0, s2, 0xdd);
      out[8 + c] = _mm512_shuffle_i32x4(s1, s3, 0x88);
      out[12 + c] = _mm512_shuffle_i32x4(s1, s3, 0xdd);
    }
  }

  // int4 codes (cpu/linear.h's format): see Avx2::load_u4.
  static constexpr int kU4Vectors = 32 / kLanes;
  struct U4 {
    __m512i e;  // the 16 bytes as 32-bit lanes
  };
  LC_TARGET_AVX512 static U4 load_u4(const uint8_t* p) {
    return {_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)))};
  }
  LC_TARGET_AVX512 static F u4_codes(const U4& u, int v) {
    return _mm512_cvtepi32_ps(v == 0 ? _mm512_and_si512(u.e, _mm512_set1_epi32(15)) : _mm512_srli_epi32(u.e, 4));
  }

  // int8 -> f32 (exact).
  LC_TARGET_AVX512 static F widen_i8(__m128i b) { return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b)); }
  LC_TARGET_AVX512 static F load_i8(const int8_t* p) { return widen_i8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  LC_TARGET_AVX512 static F load_i8_n(const int8_t* p, int64_t n) { return widen_i8(_mm_maskz_loadu_epi8(mask16(n), p)); }

  // fp8 e4m3 -> f16 is a bit move: sign-extending the byte to 16 bits and shifting left by 7 puts
  // eeee.mmm in the f16 exponent/mantissa fields (exponent bias 15 instead of 7), so the f16 value
  // is exactly the fp8 value / 256, subnormals included; vcvtph2ps then widens it exactly. Callers
  // fold the 256 into the block scale. The NaN codes 0x7f / 0xff decode to +-480 / 256; callers
  // check them apart (has_nan_code) rather than patching every vector.
  LC_TARGET_AVX512 static F widen_fp8(__m128i b) {
    const __m256i h = _mm256_slli_epi16(_mm256_cvtepi8_epi16(b), 7);  // bits 15,14 = sign; 13..7 = eeeemmm
    return _mm512_cvtph_ps(_mm256_and_si256(h, _mm256_set1_epi16(static_cast<short>(0xbfff))));
  }
  LC_TARGET_AVX512 static F load_fp8(const uint8_t* p) { return widen_fp8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  LC_TARGET_AVX512 static F load_fp8_n(const uint8_t* p, int64_t n) { return widen_fp8(_mm_maskz_loadu_epi8(mask16(n), p)); }

  // The integer-lane primitives of the fp8 encoder (quant.cc's fp8_encode): 32-bit lanes, masks
  // from ordered / unordered compares, and the low byte of every lane stored (the first n).
  LC_TARGET_AVX512 static F div(F a, F b) { return _mm512_div_ps(a, b); }
  using M = __mmask16;
  LC_TARGET_AVX512 static I ibits(F a) { return _mm512_castps_si512(a); }
  LC_TARGET_AVX512 static F fbits(I a) { return _mm512_castsi512_ps(a); }
  LC_TARGET_AVX512 static I iset1(int32_t v) { return _mm512_set1_epi32(v); }
  LC_TARGET_AVX512 static I iand(I a, I b) { return _mm512_and_si512(a, b); }
  LC_TARGET_AVX512 static I ior(I a, I b) { return _mm512_or_si512(a, b); }
  LC_TARGET_AVX512 static I iadd(I a, I b) { return _mm512_add_epi32(a, b); }
  LC_TARGET_AVX512 static I isub(I a, I b) { return _mm512_sub_epi32(a, b); }
  LC_TARGET_AVX512 static I imin(I a, I b) { return _mm512_min_epi32(a, b); }
  template <int kBits>
  LC_TARGET_AVX512 static I isrl(I a) {
    return _mm512_srli_epi32(a, kBits);
  }
  template <int kBits>
  LC_TARGET_AVX512 static I isll(I a) {
    return _mm512_slli_epi32(a, kBits);
  }
  LC_TARGET_AVX512 static I itrunc(F a) { return _mm512_cvttps_epi32(a); }
  LC_TARGET_AVX512 static M lt(F a, F b) { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ); }
  LC_TARGET_AVX512 static M ge(F a, F b) { return _mm512_cmp_ps_mask(a, b, _CMP_GE_OQ); }
  LC_TARGET_AVX512 static M unord(F a, F b) { return _mm512_cmp_ps_mask(a, b, _CMP_UNORD_Q); }
  LC_TARGET_AVX512 static I iselect(M m, I yes, I no) { return _mm512_mask_mov_epi32(no, m, yes); }
  LC_TARGET_AVX512 static void store_low_bytes(uint8_t* p, I a) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm512_cvtepi32_epi8(a));
  }
  LC_TARGET_AVX512 static void store_low_bytes_n(uint8_t* p, I a, int64_t n) {
    _mm_mask_storeu_epi8(p, mask16(n), _mm512_cvtepi32_epi8(a));
  }

  // Byte vectors (the fp8 GEMV decodes 4 * kLanes codes per load).
  LC_TARGET_AVX512 static I load_bytes(const uint8_t* p) { return _mm512_loadu_si512(p); }
  LC_TARGET_AVX512 static I load_bytes_n(const uint8_t* p, int64_t n) { return _mm512_maskz_loadu_epi8(mask64(n), p); }
  LC_TARGET_AVX512 static I izero() { return _mm512_setzero_si512(); }
  LC_TARGET_AVX512 static I max_epu8(I a, I b) { return _mm512_max_epu8(a, b); }
  LC_TARGET_AVX512 static I max_epi8(I a, I b) { return _mm512_max_epi8(a, b); }
  // Whether any byte of a equals b.
  LC_TARGET_AVX512 static bool any_byte_eq(I a, int8_t b) { return _mm512_cmpeq_epi8_mask(a, _mm512_set1_epi8(b)) != 0; }
  // Byte `byte` of every 32-bit lane of v as an fp8 e4m3 code decoded to f32 bits (see
  // Avx2::fp8_lane_byte): the code's value * 2^-120.
  LC_TARGET_AVX512 static F fp8_lane_byte(I v, int byte) {
    const I top = byte == 3 ? v : _mm512_slli_epi32(v, 24 - 8 * byte);
    return _mm512_castsi512_ps(_mm512_and_si512(_mm512_srai_epi32(top, 4), _mm512_set1_epi32(static_cast<int>(0x87f00000u))));
  }

  // Lanes of 16 fp8 codes holding a NaN code: (b | 0x80) == 0xff.
  LC_TARGET_AVX512 static __mmask16 nan_code_lanes(__m128i b) {
    return _mm_cmpeq_epi8_mask(_mm_or_si128(b, _mm_set1_epi8(static_cast<char>(0x80))), _mm_set1_epi8(-1));
  }
  // Whether the n fp8 codes at p hold a NaN code (masked-off bytes load as 0: never NaN).
  LC_TARGET_AVX512 static bool has_nan_code(const uint8_t* p, int64_t n) {
    const __m512i sign = _mm512_set1_epi8(static_cast<char>(0x80)), ones = _mm512_set1_epi8(-1);
    for (int64_t i = 0; i < n; i += 128) {
      const int64_t left = n - i;
      const __m512i a = _mm512_maskz_loadu_epi8(mask64(left), p + i);
      const __m512i b = _mm512_maskz_loadu_epi8(left > 64 ? mask64(left - 64) : 0, p + i + 64);
      if ((_mm512_cmpeq_epi8_mask(_mm512_or_si512(a, sign), ones) | _mm512_cmpeq_epi8_mask(_mm512_or_si512(b, sign), ones)) != 0)
        return true;
    }
    return false;
  }

  // Arg-max lanes: where v > best (ordered), best = v and index = at; at then moves kLanes on.
  LC_TARGET_AVX512 static void argmax_step(F v, F& best, I& index, I& at) {
    const __mmask16 gt = _mm512_cmp_ps_mask(v, best, _CMP_GT_OQ);
    best = _mm512_mask_mov_ps(best, gt, v);
    index = _mm512_mask_mov_epi32(index, gt, at);
    at = _mm512_add_epi32(at, _mm512_set1_epi32(kLanes));
  }
  LC_TARGET_AVX512 static I lane_index() { return _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15); }
  // The smallest index among the lanes whose best equals m.
  LC_TARGET_AVX512 static int32_t min_index_where(F best, I index, float m) {
    return _mm512_mask_reduce_min_epi32(_mm512_cmp_ps_mask(best, _mm512_set1_ps(m), _CMP_EQ_OQ), index);
  }

  LC_TARGET_AVX512 static I iadd64(I a, I b) { return _mm512_add_epi64(a, b); }
  LC_TARGET_AVX512 static uint64_t ireduce_add64(I a) { return static_cast<uint64_t>(_mm512_reduce_add_epi64(a)); }

  // int8-activation dot products: see Avx2 (dot_u4s8 only with VNNI: Avx512Vnni).
  LC_TARGET_AVX512 static I nib_lo(I v) { return _mm512_and_si512(v, _mm512_set1_epi8(0x0f)); }
  LC_TARGET_AVX512 static I nib_hi(I v) { return _mm512_and_si512(_mm512_srli_epi16(v, 4), _mm512_set1_epi8(0x0f)); }
  LC_TARGET_AVX512 static F ifloat(I a) { return _mm512_cvtepi32_ps(a); }
  // The 16 lanes of a (whole numbers in [-128, 127]) as int8 at p.
  LC_TARGET_AVX512 static void store_i8(int8_t* p, F a) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(a)));
  }
};

// AVX-512 with VNNI: vpdpbusd sums the 4 u8 x s8 products of each 32-bit lane into it in one
// instruction (exact in int32); dot_u4s8 as Avx2's.
struct Avx512Vnni : Avx512 {
  template <int N>
  LC_TARGET_AVX512VNNI static I dot_u4s8(const I* u, const I* s, I acc) {
    for (int k = 0; k < N; ++k) acc = _mm512_dpbusd_epi32(acc, u[k], s[k]);
    return acc;
  }
  // dot_s8s8 as Avx2's, but vpdpbusd wants one unsigned operand: w ^ 0x80 is w + 128 as a byte, so
  // the sums come out 128 x (the lane's x codes) too high, and s8s8_seed(x) (per lane, -128 x the sum
  // of x's codes in it over the N vectors) is where they start. Exact in int32 (|lane| <= N * 4 *
  // 255 * 127).
  template <int N>
  LC_TARGET_AVX512VNNI static I dot_s8s8(const I* w, const I* x, I acc) {
    for (int k = 0; k < N; ++k)
      acc = _mm512_dpbusd_epi32(acc, _mm512_xor_si512(w[k], _mm512_set1_epi8(static_cast<char>(0x80))), x[k]);
    return acc;
  }
  template <int N>
  LC_TARGET_AVX512VNNI static I s8s8_seed(const I* x) {
    I a = _mm512_setzero_si512();
    for (int k = 0; k < N; ++k) a = _mm512_dpbusd_epi32(a, _mm512_set1_epi8(static_cast<char>(0x80)), x[k]);
    return _mm512_sub_epi32(_mm512_setzero_si512(), a);
  }
};

}  // namespace lc::cpu::simd
