// Benchmark support (ops/bench.cc: benchDotPeak): the peak rate of the multiply-add instruction the
// CPU GEMM of bf16 weights runs on, a fixed anchor for the benches' compute ceilings (our own GEMM's
// rate moves with our kernels; this does not). Registers only: kChains independent accumulators,
// enough to cover the instruction's latency on both pipes of a Zen 4 / Sapphire Rapids core.
#include <cstdint>

#include "features.h"
#include "linear.h"
#include "simd.h"

namespace lc::cpu {
namespace {

constexpr int kChains = 16;

// N independent accumulators of Vec, `iters` rounds of acc = step(acc) each; returns the
// accumulators' lane sum (so the loop is not removed). Inlined into each ISA's kernel.
template <int N, class Vec, class Step, class Add, class Lanes>
LC_SIMD_INLINE float chains(int64_t iters, Vec zero, Step step, Add add, Lanes lanes) {
  Vec acc[N];
  for (Vec& v : acc) v = zero;
  for (int64_t i = 0; i < iters; ++i)
    for (Vec& v : acc) v = step(v);
  Vec s = zero;
  for (const Vec& v : acc) s = add(s, v);
  return lanes(s);
}

// The operands are 1 and 2^-24: every multiply-add adds 2^-24 exactly, the sums stay small. Each
// kernel sits in its ISA's target region, so that its lambdas are compiled for it too.
LC_BEGIN_TARGET(LC_ISA_AVX512BF16)
float peak_vdpbf16ps(int64_t iters) {
  const __m512bh a = reinterpret_cast<__m512bh>(_mm512_set1_epi16(0x3f80));  // bf16 1.0
  const __m512bh b = reinterpret_cast<__m512bh>(_mm512_set1_epi16(0x3380));  // bf16 2^-24
  return chains<kChains>(
      iters, _mm512_setzero_ps(), [&](__m512 v) { return _mm512_dpbf16_ps(v, a, b); },
      [](__m512 x, __m512 y) { return _mm512_add_ps(x, y); }, [](__m512 v) { return _mm512_reduce_add_ps(v); });
}
LC_END_TARGET

LC_BEGIN_TARGET(LC_ISA_AVX512)
float peak_fma512(int64_t iters) {
  const __m512 a = _mm512_set1_ps(1.0f), b = _mm512_set1_ps(0x1p-24f);
  return chains<kChains>(
      iters, _mm512_setzero_ps(), [&](__m512 v) { return _mm512_fmadd_ps(a, b, v); },
      [](__m512 x, __m512 y) { return _mm512_add_ps(x, y); }, [](__m512 v) { return _mm512_reduce_add_ps(v); });
}
LC_END_TARGET

LC_BEGIN_TARGET(LC_ISA_AVX2)
float peak_fma256(int64_t iters) {
  const __m256 a = _mm256_set1_ps(1.0f), b = _mm256_set1_ps(0x1p-24f);
  return chains<kChains / 2>(  // 16 registers in all
      iters, _mm256_setzero_ps(), [&](__m256 v) { return _mm256_fmadd_ps(a, b, v); },
      [](__m256 x, __m256 y) { return _mm256_add_ps(x, y); },
      [](__m256 v) {
        float l[8];
        _mm256_storeu_ps(l, v);
        return l[0] + l[1] + l[2] + l[3] + l[4] + l[5] + l[6] + l[7];
      });
}
LC_END_TARGET

float peak_scalar(int64_t iters) {
  return chains<kChains>(
      iters, 0.0f, [](float v) { return v + 1.0f * 0x1p-24f; }, [](float x, float y) { return x + y; },
      [](float v) { return v; });
}

}  // namespace

DotPeak dot_peak() {
  const bool bf16 = isa() == Isa::Avx512 && features().avx512_bf16 && bf16_activations();
  if (bf16) return {"vdpbf16ps zmm", 64 * kChains, peak_vdpbf16ps};
  switch (isa()) {
    case Isa::Avx512: return {"vfmadd231ps zmm", 32 * kChains, peak_fma512};
    case Isa::Avx2: return {"vfmadd231ps ymm", 16 * (kChains / 2), peak_fma256};
    case Isa::Scalar: break;
  }
  return {"scalar fp32 multiply-add", 2 * kChains, peak_scalar};
}

}  // namespace lc::cpu
