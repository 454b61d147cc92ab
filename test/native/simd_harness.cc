// The shared SIMD primitives of native/cpu/simd.h against scalar references, on every ISA the CPU
// has: exp against float64 exp (error bound in ulps over the whole input range, special values,
// and the AVX2 and AVX-512 versions giving the same bits), bf16 encoding against numeric.h's
// f32_to_bf16 bit for bit, fp8 encoding (quant.cc's fp8_encode, through convert and
// quantize_fp8_act) against f32_to_fp8e4m3 bit for bit, the horizontal sums against sequential
// sums. Exits non-zero on failure.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "cpu/features.h"
#include "cpu/numeric.h"
#include "cpu/quant.h"
#include "cpu/simd.h"

using namespace lc::cpu;
using lc::DType;

namespace {

int g_failures = 0;
void check(bool ok, const char* what) {
  if (!ok) {
    ++g_failures;
    std::printf("FAIL %s\n", what);
  }
}

template <class V>
struct Ops;
// Each primitive under test over whole arrays (n a multiple of kLanes; sums: x holds 4 vectors),
// written once over the traits V_; a target attribute cannot be a template parameter, so each
// ISA's specialization is stamped out by LC_SIMD_OPS with its own.
#define LC_SIMD_OPS(V_, TARGET)                                                                        \
  template <>                                                                                          \
  struct Ops<V_> {                                                                                     \
    using V = V_;                                                                                      \
    TARGET static void exp(const float* x, float* y, int64_t n) {                                      \
      for (int64_t i = 0; i < n; i += V::kLanes) V::store(y + i, V::exp(V::load(x + i)));              \
    }                                                                                                  \
    TARGET static void to_bf16(const float* x, uint16_t* y, int64_t n) {                               \
      for (int64_t i = 0; i < n; i += V::kLanes) V::store_bf16(y + i, V::load(x + i));                 \
    }                                                                                                  \
    TARGET static void sums(const float* x, float* s, float* s4) {                                     \
      constexpr int W = V::kLanes;                                                                     \
      s[0] = V::reduce_add(V::load(x));                                                                \
      _mm_storeu_ps(s4, V::hsum4(V::load(x), V::load(x + W), V::load(x + 2 * W), V::load(x + 3 * W))); \
    }                                                                                                  \
  };
LC_SIMD_OPS(simd::Avx2, LC_TARGET_AVX2)
LC_SIMD_OPS(simd::Avx512, LC_TARGET_AVX512)
#undef LC_SIMD_OPS

// Distance in representable floats (both finite, same sign or zero).
int64_t ulps(float a, float b) {
  auto key = [](float f) {
    int32_t i;
    std::memcpy(&i, &f, 4);
    return i < 0 ? -static_cast<int64_t>(i & 0x7fffffff) : static_cast<int64_t>(i);
  };
  const int64_t d = key(a) - key(b);
  return d < 0 ? -d : d;
}

// Every stride-th float in [-104, 89] plus the edges and special values; padded to 16.
std::vector<float> exp_inputs(uint32_t stride) {
  std::vector<float> x;
  for (uint32_t u = 0; u <= 0x42b20000u; u += stride) x.push_back(bits_to_f32(u));            // [0, 89]
  for (uint32_t u = 0x80000000u; u <= 0xc2d00000u; u += stride) x.push_back(bits_to_f32(u));  // [-104, -0]
  const float inf = std::numeric_limits<float>::infinity();
  for (float v : {88.72283f, 88.72284f, 88.7229f, 89.0f, 100.0f, 1e30f, inf, -87.33654f, -87.5f, -103.0f, -103.97f, -104.0f,
                  -200.0f, -1e30f, -inf, 0.0f, -0.0f, 1e-30f, -1e-30f})
    x.push_back(v);
  while (x.size() % 16) x.push_back(0.0f);
  return x;
}

template <class V>
void check_exp(const char* name, const std::vector<float>& x, std::vector<float>& y) {
  y.assign(x.size(), 0.0f);
  Ops<V>::exp(x.data(), y.data(), static_cast<int64_t>(x.size()));
  int64_t worst = 0, worst_sub = 0;
  float worst_x = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const float want = static_cast<float>(std::exp(static_cast<double>(x[i])));  // correctly rounded but for ties
    if (std::isinf(want) || want == 0.0f) {
      // Past the range: the exact value rounds to inf or 0, and so must the result.
      if (y[i] != want) {
        std::printf("  %s exp(%.9g) = %.9g, want %.9g\n", name, x[i], y[i], want);
        check(false, "exp overflow / underflow");
      }
      continue;
    }
    if (!std::isfinite(y[i])) {
      std::printf("  %s exp(%.9g) = %.9g, want %.9g\n", name, x[i], y[i], want);
      check(false, "exp finite");
      continue;
    }
    const int64_t d = ulps(y[i], want);
    if (want < 1.17549435e-38f) {
      worst_sub = d > worst_sub ? d : worst_sub;
    } else if (d > worst) {
      worst = d;
      worst_x = x[i];
    }
  }
  std::printf("  %s exp: %zu inputs, max error %lld ulp (at %.9g), subnormal results %lld ulp of 2^-149\n", name, x.size(),
              static_cast<long long>(worst), worst_x, static_cast<long long>(worst_sub));
  // The bound the kernels' tolerances are derived from: 2 ulp (relative 2^-22) for normal results,
  // one step of the subnormal grid below 2^-126.
  check(worst <= 2, "exp within 2 ulp");
  check(worst_sub <= 1, "exp subnormal results within 1 step");
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  alignas(64) float sx[16] = {-inf,  inf,  nan,  0.0f,  -0.0f,  89.0f, -104.0f, 1.0f,
                              -1.0f, 0.5f, -nan, 88.0f, -87.0f, 2.0f,  3.0f,    4.0f};
  alignas(64) float sy[16];
  Ops<V>::exp(sx, sy, 16);
  check(sy[0] == 0.0f && !std::signbit(sy[0]), "exp(-inf) = +0");
  check(std::isinf(sy[1]) && sy[1] > 0, "exp(+inf) = +inf");
  check(std::isnan(sy[2]) && std::isnan(sy[10]), "exp(NaN) = NaN");
  check(sy[3] == 1.0f && sy[4] == 1.0f, "exp(+-0) = 1");
  check(std::isinf(sy[5]), "exp(89) = inf");
  check(sy[6] == 0.0f, "exp(-104) = 0");
}

template <class V>
void check_bf16(const char* name) {
  std::vector<float> x;
  for (uint32_t u = 0; u < 0xffffffffu - 4099; u += 4099) x.push_back(bits_to_f32(u));  // NaNs, infs, subnormals
  for (uint32_t u : {0x7f7fffffu, 0x7f800000u, 0x7f800001u, 0x7fffffffu, 0xff800000u, 0x00008000u, 0x3f808000u, 0x3f818000u,
                     0x3f80ffffu, 0x80000001u})
    x.push_back(bits_to_f32(u));
  while (x.size() % 16) x.push_back(1.0f);
  std::vector<uint16_t> y(x.size());
  Ops<V>::to_bf16(x.data(), y.data(), static_cast<int64_t>(x.size()));
  int64_t bad = 0;
  for (size_t i = 0; i < x.size(); ++i) bad += y[i] != f32_to_bf16(x[i]);
  std::printf("  %s to_bf16: %zu inputs, %lld differ from f32_to_bf16\n", name, x.size(), static_cast<long long>(bad));
  check(bad == 0, "to_bf16 bit for bit");
}

template <class V>
void check_sums(const char* name) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  constexpr int W = V::kLanes;
  float worst = 0;
  for (int rep = 0; rep < 1000; ++rep) {
    float x[4 * W];
    for (float& v : x) v = u(rng);
    float s, s4[4];
    Ops<V>::sums(x, &s, s4);
    for (int j = 0; j < 4; ++j) {
      double want = 0, mag = 0;
      for (int l = 0; l < W; ++l) want += x[j * W + l], mag += std::fabs(x[j * W + l]);
      const float got = j == 0 ? s : s4[j];
      // W - 1 additions, each rounding by at most 2^-24 of a partial sum <= mag.
      const double err = std::fabs(got - want) / (mag * (W - 1) * 0x1p-24);
      worst = err > worst ? static_cast<float>(err) : worst;
      if (j == 0) {  // hsum4's first lane sums the same vector
        const double err4 = std::fabs(s4[0] - want) / (mag * (W - 1) * 0x1p-24);
        worst = err4 > worst ? static_cast<float>(err4) : worst;
      }
    }
  }
  std::printf("  %s sums: worst error %.3f of the summation bound\n", name, worst);
  check(worst <= 1.0f, "horizontal sums within the summation bound");
}

// fp8 encoding on ISA `is` through convert (div 1) and quantize_fp8_act (div = the block scale):
// every 4099th f32 bit pattern (NaNs, infs, subnormals) plus the rounding and saturation edges,
// an odd count so the partial-vector tail runs.
void check_fp8(Isa is, const char* name) {
  set_isa(is);
  std::vector<float> x;
  for (uint32_t u = 0; u < 0xffffffffu - 4099; u += 4099) x.push_back(bits_to_f32(u));
  for (float v : {448.0f, 464.0f, 463.99997f, 480.0f, 0.015625f, 0.0156249991f, 0.001953125f, 0.0009765625f, 0.00097656256f,
                  0.0029296875f, 1.0625f, 1.1875f, -0.0f, 240.0f, 256.0f, 272.0f})
    x.push_back(v), x.push_back(-v);
  if (x.size() % 2 == 0) x.push_back(3.0f);
  const int64_t n = static_cast<int64_t>(x.size());
  std::vector<uint8_t> q(x.size());
  convert(n, x.data(), DType::F32, q.data(), DType::FP8_E4M3);
  int64_t bad = 0;
  for (int64_t i = 0; i < n; ++i) bad += q[i] != f32_to_fp8e4m3(x[i]);
  // Blocks of 128 scaled by their amax / 448: finite inputs only (a NaN or inf sets the scale).
  std::vector<float> xf;
  for (float v : x)
    if (std::isfinite(v)) xf.push_back(v);
  const int64_t K = 1001, T = static_cast<int64_t>(xf.size()) / K, G = (K + 127) / 128;
  std::vector<uint8_t> qa(T * K);
  std::vector<float> sa(T * G);
  quantize_fp8_act(T, K, xf.data(), qa.data(), sa.data());
  for (int64_t t = 0; t < T; ++t)
    for (int64_t k = 0; k < K; ++k) bad += qa[t * K + k] != f32_to_fp8e4m3(xf[t * K + k] / sa[t * G + k / 128]);
  std::printf("  %s fp8: %lld + %lld inputs, %lld differ from f32_to_fp8e4m3\n", name, static_cast<long long>(n),
              static_cast<long long>(T * K), static_cast<long long>(bad));
  check(bad == 0, "fp8 encoding bit for bit");
}

// Every check of one ISA; y: its exp results (compared across ISAs in main).
template <class V>
void check_isa(Isa is, const char* name, const std::vector<float>& x, std::vector<float>& y) {
  std::printf("%s\n", name);
  check_exp<V>(name, x, y);
  check_bf16<V>(name);
  check_sums<V>(name);
  check_fp8(is, name);
}

}  // namespace

int main() {
  const Features& f = features();
  // What the CPU has (not capped by LONGCAT_ISA: every path is checked).
  const bool avx2 = f.avx2 && f.fma && f.f16c;
  const bool avx512 = f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq && f.fma && f.f16c;
  const std::vector<float> x = exp_inputs(97);
  std::vector<float> y2, y512;
  if (avx2) check_isa<simd::Avx2>(Isa::Avx2, "avx2", x, y2);
  if (avx512) check_isa<simd::Avx512>(Isa::Avx512, "avx512", x, y512);
  if (avx2 && avx512) {
    int64_t differ = 0;
    for (size_t i = 0; i < x.size(); ++i)
      differ += std::memcmp(&y2[i], &y512[i], 4) != 0 && !(std::isnan(y2[i]) && std::isnan(y512[i]));
    std::printf("avx2 vs avx512 exp: %lld of %zu results differ\n", static_cast<long long>(differ), x.size());
    check(differ == 0, "exp: AVX2 and AVX-512 give the same bits");
  }
  if (!avx2 && !avx512) std::printf("no AVX2 or AVX-512 on this CPU: nothing to check\n");
  std::printf(g_failures ? "simd harness: %d FAILED\n" : "simd harness: all passed\n", g_failures);
  return g_failures ? 1 : 0;
}
