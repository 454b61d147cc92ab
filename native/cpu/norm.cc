// RMSNorm (see norm.h): the scalar reference and its AVX2 / AVX-512 variants on simd.h.
#include "norm.h"

#include <cmath>

#include "features.h"
#include "numeric.h"
#include "simd.h"
#include "threadpool.h"

namespace lc::cpu {

template <typename WT, typename YT>
static void rmsnorm_rows(int64_t r0, int64_t r1, int64_t dim, const float* x, const float* add, float* h_out, const WT* w,
                         float eps, YT* y) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* xr = x + r * dim;
    const float* ar = add ? add + r * dim : nullptr;
    float* hr = h_out ? h_out + r * dim : nullptr;
    double ss = 0;  // double accumulator: rows of 6144 values stay exact enough in any order
    for (int64_t i = 0; i < dim; ++i) {
      float h = ar ? xr[i] + ar[i] : xr[i];
      if (hr) hr[i] = h;
      ss += static_cast<double>(h) * h;
    }
    const float inv = static_cast<float>(1.0 / std::sqrt(ss / dim + eps));
    const float* src = hr ? hr : xr;
    for (int64_t i = 0; i < dim; ++i) {
      float h = hr ? src[i] : (ar ? xr[i] + ar[i] : xr[i]);
      float wi;
      if constexpr (sizeof(WT) == 2)
        wi = bf16_to_f32(w[i]);
      else
        wi = w[i];
      float v = h * inv * wi;
      if constexpr (sizeof(YT) == 2)
        y[r * dim + i] = f32_to_bf16(v);
      else
        y[r * dim + i] = v;
    }
  }
}

// ---- SIMD variants: same math as rmsnorm_rows (double sum of squares, y = (h * inv) * w, bf16
// by round-to-nearest-even with NaN kept), vectorised. ------------------------------------------
using simd::Avx2;
using simd::Avx512;

template <bool WB, bool YB>
LC_TARGET_AVX512 static void rmsnorm_rows_avx512(int64_t r0, int64_t r1, int64_t dim, const float* x, const float* add,
                                                 float* h_out, const void* w, float eps, void* y) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* xr = x + r * dim;
    const float* ar = add ? add + r * dim : nullptr;
    float* hr = h_out ? h_out + r * dim : nullptr;
    __m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd();
    for (int64_t i = 0; i < dim; i += 16) {
      __mmask16 k = Avx512::mask16(dim - i);
      __m512 h = _mm512_maskz_loadu_ps(k, xr + i);
      if (ar) h = _mm512_add_ps(h, _mm512_maskz_loadu_ps(k, ar + i));
      if (hr) _mm512_mask_storeu_ps(hr + i, k, h);
      __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(h));
      __m512d hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(h), 1)));
      s0 = _mm512_fmadd_pd(lo, lo, s0);
      s1 = _mm512_fmadd_pd(hi, hi, s1);
    }
    const double ss = _mm512_reduce_add_pd(_mm512_add_pd(s0, s1));
    const __m512 inv = _mm512_set1_ps(static_cast<float>(1.0 / std::sqrt(ss / dim + eps)));
    for (int64_t i = 0; i < dim; i += 16) {
      __mmask16 k = Avx512::mask16(dim - i);
      __m512 h;
      if (hr) {
        h = _mm512_maskz_loadu_ps(k, hr + i);
      } else {
        h = _mm512_maskz_loadu_ps(k, xr + i);
        if (ar) h = _mm512_add_ps(h, _mm512_maskz_loadu_ps(k, ar + i));
      }
      __m512 wv;
      if constexpr (WB)
        wv = Avx512::widen_bf16(_mm256_maskz_loadu_epi16(k, static_cast<const uint16_t*>(w) + i));
      else
        wv = _mm512_maskz_loadu_ps(k, static_cast<const float*>(w) + i);
      __m512 v = _mm512_mul_ps(_mm512_mul_ps(h, inv), wv);
      if constexpr (YB)
        _mm256_mask_storeu_epi16(static_cast<uint16_t*>(y) + r * dim + i, k, Avx512::to_bf16(v));
      else
        _mm512_mask_storeu_ps(static_cast<float*>(y) + r * dim + i, k, v);
    }
  }
}

template <bool WB, bool YB>
LC_TARGET_AVX2 static void rmsnorm_rows_avx2(int64_t r0, int64_t r1, int64_t dim, const float* x, const float* add, float* h_out,
                                             const void* w, float eps, void* y) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* xr = x + r * dim;
    const float* ar = add ? add + r * dim : nullptr;
    float* hr = h_out ? h_out + r * dim : nullptr;
    __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
    int64_t i = 0;
    for (; i + 8 <= dim; i += 8) {
      __m256 h = _mm256_loadu_ps(xr + i);
      if (ar) h = _mm256_add_ps(h, _mm256_loadu_ps(ar + i));
      if (hr) _mm256_storeu_ps(hr + i, h);
      __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(h)), hi = _mm256_cvtps_pd(_mm256_extractf128_ps(h, 1));
      s0 = _mm256_fmadd_pd(lo, lo, s0);
      s1 = _mm256_fmadd_pd(hi, hi, s1);
    }
    alignas(32) double t[4];
    _mm256_store_pd(t, _mm256_add_pd(s0, s1));
    double ss = (t[0] + t[1]) + (t[2] + t[3]);
    for (int64_t j = i; j < dim; ++j) {
      float h = ar ? xr[j] + ar[j] : xr[j];
      if (hr) hr[j] = h;
      ss += static_cast<double>(h) * h;
    }
    const float invf = static_cast<float>(1.0 / std::sqrt(ss / dim + eps));
    const __m256 inv = _mm256_set1_ps(invf);
    for (i = 0; i + 8 <= dim; i += 8) {
      __m256 h;
      if (hr) {
        h = _mm256_loadu_ps(hr + i);
      } else {
        h = _mm256_loadu_ps(xr + i);
        if (ar) h = _mm256_add_ps(h, _mm256_loadu_ps(ar + i));
      }
      __m256 wv;
      if constexpr (WB)
        wv = Avx2::load_bf16(static_cast<const uint16_t*>(w) + i);
      else
        wv = _mm256_loadu_ps(static_cast<const float*>(w) + i);
      __m256 v = _mm256_mul_ps(_mm256_mul_ps(h, inv), wv);
      if constexpr (YB) {
        Avx2::store_bf16(static_cast<uint16_t*>(y) + r * dim + i, v);
      } else {
        _mm256_storeu_ps(static_cast<float*>(y) + r * dim + i, v);
      }
    }
    for (; i < dim; ++i) {
      float h = hr ? hr[i] : (ar ? xr[i] + ar[i] : xr[i]);
      float wi;
      if constexpr (WB)
        wi = bf16_to_f32(static_cast<const uint16_t*>(w)[i]);
      else
        wi = static_cast<const float*>(w)[i];
      float v = h * invf * wi;
      if constexpr (YB)
        static_cast<uint16_t*>(y)[r * dim + i] = f32_to_bf16(v);
      else
        static_cast<float*>(y)[r * dim + i] = v;
    }
  }
}

template <typename WT, typename YT>
static void rmsnorm_t(int64_t rows, int64_t dim, const float* x, const float* add, float* h_out, const void* w, float eps,
                      void* y) {
  constexpr bool WB = sizeof(WT) == 2, YB = sizeof(YT) == 2;
  const Isa is = isa();
  // ~4k values a chunk: a batch-8 verify's 16 rows of 512 on both threads (each row's result is
  // the same in any split).
  parallel_for(rows, std::max<int64_t>(1, 4096 / std::max<int64_t>(dim, 1)), [&](int64_t b, int64_t e) {
    if (is == Isa::Avx512)
      rmsnorm_rows_avx512<WB, YB>(b, e, dim, x, add, h_out, w, eps, y);
    else if (is == Isa::Avx2)
      rmsnorm_rows_avx2<WB, YB>(b, e, dim, x, add, h_out, w, eps, y);
    else
      rmsnorm_rows<WT, YT>(b, e, dim, x, add, h_out, static_cast<const WT*>(w), eps, static_cast<YT*>(y));
  });
}

void rmsnorm(int64_t rows, int64_t dim, const float* x, const float* add, float* h_out, const void* w, DType wt, float eps,
             void* y, DType yt) {
  bool wb = wt == DType::BF16, yb = yt == DType::BF16;
  if (wb && yb)
    rmsnorm_t<uint16_t, uint16_t>(rows, dim, x, add, h_out, w, eps, y);
  else if (wb)
    rmsnorm_t<uint16_t, float>(rows, dim, x, add, h_out, w, eps, y);
  else if (yb)
    rmsnorm_t<float, uint16_t>(rows, dim, x, add, h_out, w, eps, y);
  else
    rmsnorm_t<float, float>(rows, dim, x, add, h_out, w, eps, y);
}

}  // namespace lc::cpu
