// Dtype conversion and fp8 block quantization (see quant.h): scalar reference definitions
// (numeric.h) and AVX2 / AVX-512 variants on simd.h that agree with them bit for bit.
#include "quant.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "features.h"
#include "linear.h"
#include "numeric.h"
#include "simd.h"
#include "threadpool.h"

namespace lc::cpu {

namespace {

struct Fp8Lut {
  alignas(64) float v[256];
  Fp8Lut() {
    for (int i = 0; i < 256; ++i) v[i] = fp8e4m3_to_f32(static_cast<uint8_t>(i));
  }
};
const float* fp8_lut() {
  static const Fp8Lut lut;
  return lut.v;
}

using simd::Avx2;
using simd::Avx512;

// ---- scalar -----------------------------------------------------------------------------------
void decode_scalar(const void* src, DType st, int64_t n, float* out) {
  switch (st) {
    case DType::F32: std::memcpy(out, src, static_cast<size_t>(n) * 4); break;
    case DType::BF16:
      for (int64_t i = 0; i < n; ++i) out[i] = bf16_to_f32(static_cast<const uint16_t*>(src)[i]);
      break;
    case DType::F16:
      for (int64_t i = 0; i < n; ++i) out[i] = f16_to_f32(static_cast<const uint16_t*>(src)[i]);
      break;
    case DType::FP8_E4M3: {
      const float* lut = fp8_lut();
      for (int64_t i = 0; i < n; ++i) out[i] = lut[static_cast<const uint8_t*>(src)[i]];
      break;
    }
    default: break;
  }
}
// fp8 values are encoded from in[i] / div (div = 1 for plain conversion: an exact division).
void encode_scalar(const float* in, int64_t n, void* dst, DType dt, float div) {
  switch (dt) {
    case DType::F32: std::memcpy(dst, in, static_cast<size_t>(n) * 4); break;
    case DType::BF16:
      for (int64_t i = 0; i < n; ++i) static_cast<uint16_t*>(dst)[i] = f32_to_bf16(in[i]);
      break;
    case DType::F16:
      for (int64_t i = 0; i < n; ++i) static_cast<uint16_t*>(dst)[i] = f32_to_f16(in[i]);
      break;
    case DType::FP8_E4M3:
      for (int64_t i = 0; i < n; ++i) static_cast<uint8_t*>(dst)[i] = f32_to_fp8e4m3(in[i] / div);
      break;
    default: break;
  }
}
float amax_scalar(const float* x, int64_t n, float m) {
  for (int64_t i = 0; i < n; ++i) {
    float a = std::fabs(x[i]);
    m = a > m ? a : m;
  }
  return m;
}

// ---- fp8 encode, written once over the vector traits (simd.h) --------------------------------
// f32 lanes -> fp8 e4m3 codes in the low byte of every 32-bit lane, as numeric.h's f32_to_fp8e4m3.
template <class V>
LC_SIMD_INLINE typename V::I fp8_encode(typename V::F x) {
  using I = typename V::I;
  const I u = V::ibits(x);
  const I sign = V::template isrl<24>(V::iand(u, V::iset1(static_cast<int32_t>(0x80000000u))));
  const I ua = V::iand(u, V::iset1(0x7fffffff));
  const typename V::F a = V::fbits(ua);
  // normal range: round the mantissa to 3 bits (RNE), rebias the exponent 127 -> 7
  const I r = V::iadd(ua, V::iadd(V::iset1(0x7ffff), V::iand(V::template isrl<20>(ua), V::iset1(1))));
  const I e = V::isub(V::template isrl<23>(r), V::iset1(120));
  I res = V::ior(V::template isll<3>(e), V::iand(V::template isrl<20>(r), V::iset1(7)));
  res = V::imin(res, V::iset1(0x7e));
  // below 2^-6: subnormal, step 2^-9 (a * 512 is exact; round half to even)
  const I m = V::itrunc(V::round(V::mul(a, V::set1(512.0f))));
  res = V::iselect(V::lt(a, V::set1(0.015625f)), m, res);
  res = V::iselect(V::ge(a, V::set1(448.0f)), V::iset1(0x7e), res);
  res = V::iselect(V::unord(a, a), V::iset1(0x7f), res);
  return V::ior(res, sign);
}
// d[i] = fp8(in[i] / div) for i < n.
template <class V>
LC_SIMD_INLINE void encode_fp8(const float* in, int64_t n, uint8_t* d, float div) {
  const typename V::F dv = V::set1(div);
  int64_t i = 0;
  for (; i + V::kLanes <= n; i += V::kLanes) V::store_low_bytes(d + i, fp8_encode<V>(V::div(V::load(in + i), dv)));
  if (i < n) V::store_low_bytes_n(d + i, fp8_encode<V>(V::div(V::load_n(in + i, n - i), dv)), n - i);
}

// ---- AVX-512 ----------------------------------------------------------------------------------
LC_TARGET_AVX512 void decode_avx512(const void* src, DType st, int64_t n, float* out) {
  if (st == DType::F32) {
    std::memcpy(out, src, static_cast<size_t>(n) * 4);
    return;
  }
  if (st == DType::BF16) {
    const uint16_t* s = static_cast<const uint16_t*>(src);
    for (int64_t i = 0; i < n; i += 16) {
      __mmask16 k = Avx512::mask16(n - i);
      _mm512_mask_storeu_ps(out + i, k, Avx512::widen_bf16(_mm256_maskz_loadu_epi16(k, s + i)));
    }
    return;
  }
  if (st == DType::F16) {
    const uint16_t* s = static_cast<const uint16_t*>(src);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
      __m512 v = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i)));
      if (_mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q)) {  // hardware quiets NaNs; keep the reference bits
        decode_scalar(s + i, st, 16, out + i);
        continue;
      }
      _mm512_storeu_ps(out + i, v);
    }
    decode_scalar(s + i, st, n - i, out + i);
    return;
  }
  // fp8: gather from the 256-entry table
  const float* lut = fp8_lut();
  const uint8_t* s = static_cast<const uint8_t*>(src);
  for (int64_t i = 0; i < n; i += 16) {
    __mmask16 k = Avx512::mask16(n - i);
    __m512i idx = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(k, s + i));
    _mm512_mask_storeu_ps(out + i, k, _mm512_i32gather_ps(idx, lut, 4));
  }
}
LC_TARGET_AVX512 void encode_avx512(const float* in, int64_t n, void* dst, DType dt, float div) {
  if (dt == DType::F32) {
    std::memcpy(dst, in, static_cast<size_t>(n) * 4);
    return;
  }
  if (dt == DType::BF16) {
    uint16_t* d = static_cast<uint16_t*>(dst);
    for (int64_t i = 0; i < n; i += 16) {
      __mmask16 k = Avx512::mask16(n - i);
      _mm256_mask_storeu_epi16(d + i, k, Avx512::to_bf16(_mm512_maskz_loadu_ps(k, in + i)));
    }
    return;
  }
  if (dt == DType::F16) {
    uint16_t* d = static_cast<uint16_t*>(dst);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
      __m512 v = _mm512_loadu_ps(in + i);
      if (_mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q)) {  // NaN payloads: use the reference encoding
        encode_scalar(in + i, 16, d + i, dt, 1.0f);
        continue;
      }
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + i), _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    }
    encode_scalar(in + i, n - i, d + i, dt, 1.0f);
    return;
  }
  encode_fp8<Avx512>(in, n, static_cast<uint8_t*>(dst), div);
}
LC_TARGET_AVX512 float amax_avx512(const float* x, int64_t n, float m0) {
  __m512 m = _mm512_set1_ps(m0);
  for (int64_t i = 0; i < n; i += 16) {
    __mmask16 k = Avx512::mask16(n - i);
    m = _mm512_max_ps(_mm512_abs_ps(_mm512_maskz_loadu_ps(k, x + i)), m);
  }
  return _mm512_reduce_max_ps(m);
}

// ---- AVX2 -------------------------------------------------------------------------------------
LC_TARGET_AVX2 void decode_avx2(const void* src, DType st, int64_t n, float* out) {
  int64_t i = 0;
  if (st == DType::BF16) {
    const uint16_t* s = static_cast<const uint16_t*>(src);
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, Avx2::load_bf16(s + i));
    decode_scalar(s + i, st, n - i, out + i);
  } else if (st == DType::F16) {
    const uint16_t* s = static_cast<const uint16_t*>(src);
    for (; i + 8 <= n; i += 8) {
      __m256 v = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i)));
      if (_mm256_movemask_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)))
        decode_scalar(s + i, st, 8, out + i);
      else
        _mm256_storeu_ps(out + i, v);
    }
    decode_scalar(s + i, st, n - i, out + i);
  } else if (st == DType::FP8_E4M3) {
    const float* lut = fp8_lut();
    const uint8_t* s = static_cast<const uint8_t*>(src);
    for (; i + 8 <= n; i += 8) {
      __m256i idx = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(s + i)));
      _mm256_storeu_ps(out + i, _mm256_i32gather_ps(lut, idx, 4));
    }
    decode_scalar(s + i, st, n - i, out + i);
  } else {
    decode_scalar(src, st, n, out);
  }
}
LC_TARGET_AVX2 void encode_avx2(const float* in, int64_t n, void* dst, DType dt, float div) {
  int64_t i = 0;
  if (dt == DType::BF16) {
    uint16_t* d = static_cast<uint16_t*>(dst);
    for (; i + 8 <= n; i += 8) _mm_storeu_si128(reinterpret_cast<__m128i*>(d + i), Avx2::to_bf16(_mm256_loadu_ps(in + i)));
    encode_scalar(in + i, n - i, d + i, dt, div);
  } else if (dt == DType::F16) {
    uint16_t* d = static_cast<uint16_t*>(dst);
    for (; i + 8 <= n; i += 8) {
      __m256 v = _mm256_loadu_ps(in + i);
      if (_mm256_movemask_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)))
        encode_scalar(in + i, 8, d + i, dt, 1.0f);
      else
        _mm_storeu_si128(reinterpret_cast<__m128i*>(d + i), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    }
    encode_scalar(in + i, n - i, d + i, dt, div);
  } else if (dt == DType::FP8_E4M3) {
    encode_fp8<Avx2>(in, n, static_cast<uint8_t*>(dst), div);
  } else {
    encode_scalar(in, n, dst, dt, div);
  }
}
LC_TARGET_AVX2 float amax_avx2(const float* x, int64_t n, float m0) {
  __m256 m = _mm256_set1_ps(m0);
  const __m256 abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) m = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(x + i), abs), m);
  alignas(32) float t[8];
  _mm256_store_ps(t, m);
  float r = m0;
  for (float v : t) r = v > r ? v : r;
  return amax_scalar(x + i, n - i, r);
}

// ---- dispatch ---------------------------------------------------------------------------------
inline void decode(Isa is, const void* src, DType st, int64_t n, float* out) {
  by_isa(is, decode_avx512, decode_avx2, decode_scalar)(src, st, n, out);
}
inline void encode(Isa is, const float* in, int64_t n, void* dst, DType dt, float div) {
  by_isa(is, encode_avx512, encode_avx2, encode_scalar)(in, n, dst, dt, div);
}
inline float amax(Isa is, const float* x, int64_t n, float m0) {
  return by_isa(is, amax_avx512, amax_avx2, amax_scalar)(x, n, m0);
}

}  // namespace

void convert(int64_t n, const void* src, DType st, void* dst, DType dt) {
  const int64_t ss = dtype_size(st), ds = dtype_size(dt);
  if (st == dt) {
    parallel_for(n, 1 << 18, [&](int64_t b, int64_t e) {
      std::memcpy(static_cast<char*>(dst) + b * ds, static_cast<const char*>(src) + b * ss, static_cast<size_t>((e - b) * ds));
    });
    return;
  }
  const Isa is = isa();
  parallel_for(n, 1 << 15, [&](int64_t b, int64_t e) {
    const char* s = static_cast<const char*>(src) + b * ss;
    char* d = static_cast<char*>(dst) + b * ds;
    if (dt == DType::F32) {
      decode(is, s, st, e - b, reinterpret_cast<float*>(d));
    } else if (st == DType::F32) {
      encode(is, reinterpret_cast<const float*>(s), e - b, d, dt, 1.0f);
    } else {
      alignas(64) float buf[1024];
      for (int64_t i = 0; i < e - b; i += 1024) {
        int64_t m = std::min<int64_t>(1024, e - b - i);
        decode(is, s + i * ss, st, m, buf);
        encode(is, buf, m, d + i * ds, dt, 1.0f);
      }
    }
  });
}

void quantize_fp8_act(int64_t T, int64_t K, const float* x, uint8_t* q, float* scale) {
  const int64_t G = (K + kFp8Block - 1) / kFp8Block;
  parallel_for(T * G, 64, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const int64_t t = i / G, g = i % G, k0 = g * kFp8Block;
      scale[i] = quantize_fp8_group(std::min(kFp8Block, K - k0), x + t * K + k0, q + t * K + k0);
    }
  });
}

float quantize_fp8_group(int64_t n, const float* x, uint8_t* q) {
  const Isa is = isa();
  const float sx = std::max(amax(is, x, n, 0.0f), kFp8Tiny) / 448.0f;
  encode(is, x, n, q, DType::FP8_E4M3, sx);
  return sx;
}

void dequantize_fp8_group(int64_t n, const uint8_t* q, float scale, float* out) {
  decode(isa(), q, DType::FP8_E4M3, n, out);
  for (int64_t i = 0; i < n; ++i) out[i] *= scale;
}

void quantize_fp8_blocks(int64_t N, int64_t K, const void* w, DType wt, uint8_t* q, float* scale_inv) {
  const Isa is = isa();
  const int64_t BN = (N + kFp8Block - 1) / kFp8Block, BK = (K + kFp8Block - 1) / kFp8Block;
  const int64_t es = dtype_size(wt);
  parallel_for(BN * BK, 1, [&](int64_t b, int64_t e) {
    alignas(64) float buf[kFp8Block];
    for (int64_t blk = b; blk < e; ++blk) {
      const int64_t bn = blk / BK, bk = blk % BK;
      const int64_t r0 = bn * kFp8Block, r1 = std::min(N, r0 + kFp8Block);
      const int64_t c0 = bk * kFp8Block, nc = std::min(kFp8Block, K - c0);
      float m = 0.0f;
      for (int64_t r = r0; r < r1; ++r) {
        const char* src = static_cast<const char*>(w) + (r * K + c0) * es;
        if (wt == DType::F32) {
          m = amax(is, reinterpret_cast<const float*>(src), nc, m);
        } else {
          decode(is, src, wt, nc, buf);
          m = amax(is, buf, nc, m);
        }
      }
      const float s = std::max(m, kFp8Tiny) / 448.0f;
      scale_inv[blk] = s;
      for (int64_t r = r0; r < r1; ++r) {
        const char* src = static_cast<const char*>(w) + (r * K + c0) * es;
        const float* xs = reinterpret_cast<const float*>(src);
        if (wt != DType::F32) {
          decode(is, src, wt, nc, buf);
          xs = buf;
        }
        encode(is, xs, nc, q + r * K + c0, DType::FP8_E4M3, s);
      }
    }
  });
}

void dequantize_fp8_blocks(int64_t N, int64_t K, const uint8_t* q, const float* scale_inv, void* w, DType wt) {
  const Isa is = isa();
  const int64_t BK = (K + kFp8Block - 1) / kFp8Block;
  const int64_t es = dtype_size(wt);
  parallel_for(N, std::max<int64_t>(1, 32768 / std::max<int64_t>(K, 1)), [&](int64_t b, int64_t e) {
    alignas(64) float buf[kFp8Block];
    for (int64_t r = b; r < e; ++r) {
      const float* srow = scale_inv + (r / kFp8Block) * BK;
      for (int64_t bk = 0; bk < BK; ++bk) {
        const int64_t c0 = bk * kFp8Block, nc = std::min(kFp8Block, K - c0);
        decode(is, q + r * K + c0, DType::FP8_E4M3, nc, buf);
        const float s = srow[bk];
        for (int64_t i = 0; i < nc; ++i) buf[i] *= s;
        encode(is, buf, nc, static_cast<char*>(w) + (r * K + c0) * es, wt, 1.0f);
      }
    }
  });
}

void repack_gptq_int4(int64_t N, int64_t K, int64_t g, const int32_t* qweight, uint8_t* q) {
  const int64_t rb = int4_row_bytes(K, g);
  // Each task takes a band of rows and walks qweight's rows in order (contiguous in r).
  parallel_for(N, 1 + (64 * 1024) / (rb > 0 ? rb : 1), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) std::memset(q + r * rb, 0x88, static_cast<size_t>(rb));
    for (int64_t i = 0; i < K / 8; ++i)
      for (int64_t r = r0; r < r1; ++r) {
        const uint32_t word = static_cast<uint32_t>(qweight[i * N + r]);
        uint8_t* qr = q + r * rb;
        for (int b = 0; b < 8; ++b) {
          const int64_t c = 8 * i + b;
          const uint8_t code = static_cast<uint8_t>((word >> (4 * b)) & 15u);
          uint8_t& v = qr[c / 32 * 16 + c % 16];
          v = c % 32 < 16 ? static_cast<uint8_t>((v & 0xf0) | code) : static_cast<uint8_t>((v & 0x0f) | (code << 4));
        }
      }
  });
}

}  // namespace lc::cpu
