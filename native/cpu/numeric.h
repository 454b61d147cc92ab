// Scalar conversions between f32 and the narrow float formats. These are the reference
// definitions: SIMD paths must agree with them bit for bit.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

namespace lc::cpu {

inline float bits_to_f32(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint32_t f32_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

inline float bf16_to_f32(uint16_t h) { return bits_to_f32(static_cast<uint32_t>(h) << 16); }

// Round to nearest even; NaN stays a (quiet) NaN.
inline uint16_t f32_to_bf16(float f) {
  uint32_t u = f32_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

inline float f16_to_f32(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff;
  if (exp == 0) {
    float v = std::ldexp(static_cast<float>(man), -24);
    return (h & 0x8000) ? -v : v;
  }
  if (exp == 31) return bits_to_f32(sign | 0x7f800000u | (man << 13));
  return bits_to_f32(sign | ((exp + 112) << 23) | (man << 13));
}

// Round to nearest even, overflow to infinity (IEEE half semantics).
inline uint16_t f32_to_f16(float f) {
  uint32_t u = f32_to_bits(f);
  uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000);
  uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return sign | 0x7e00;
  if (a >= 0x477ff000u) return sign | 0x7c00;  // rounds past 65504
  if (a < 0x38800000u) {                       // subnormal half (or zero)
    float v = bits_to_f32(a) * 16777216.0f;    // scale by 2^24: the subnormal step
    uint32_t m = static_cast<uint32_t>(std::nearbyint(v));
    return sign | static_cast<uint16_t>(m);
  }
  uint32_t r = a + 0xfffu + ((a >> 13) & 1u);
  return sign | static_cast<uint16_t>((r - 0x38000000u) >> 13);
}

// float8 e4m3fn: bias 7, no infinities, 0x7f / 0xff are NaN, max finite 448.
inline float fp8e4m3_to_f32(uint8_t b) {
  uint32_t sign = b & 0x80, exp = (b >> 3) & 0xf, man = b & 0x7;
  float v;
  if (exp == 0xf && man == 0x7) return NAN;
  if (exp == 0)
    v = std::ldexp(static_cast<float>(man), -9);
  else
    v = std::ldexp(1.0f + man / 8.0f, static_cast<int>(exp) - 7);
  return sign ? -v : v;
}

// Round to nearest even, saturating to +-448 (the convention of every FP8 inference engine:
// values beyond the range are clamped, never turned into NaN). NaN maps to NaN.
inline uint8_t f32_to_fp8e4m3(float f) {
  uint32_t u = f32_to_bits(f);
  uint8_t sign = static_cast<uint8_t>((u >> 24) & 0x80);
  float a = std::fabs(f);
  if (std::isnan(f)) return sign | 0x7f;
  if (a >= 448.0f) return sign | 0x7e;
  if (a < 0.015625f) {  // below 2^-6: subnormal, step 2^-9
    uint32_t m = static_cast<uint32_t>(std::nearbyint(a * 512.0f));
    return sign | static_cast<uint8_t>(m);  // m == 8 is the smallest normal, encoded the same way
  }
  uint32_t ua = f32_to_bits(a);
  uint32_t r = ua + 0x7ffffu + ((ua >> 20) & 1u);  // round mantissa to 3 bits
  int exp = static_cast<int>((r >> 23) & 0xff) - 127 + 7;
  uint32_t man = (r >> 20) & 0x7;
  if (exp > 15 || (exp == 15 && man == 7)) return sign | 0x7e;
  return sign | static_cast<uint8_t>((exp << 3) | man);
}

}  // namespace lc::cpu
