// Element-wise and row-wise kernels (see elementwise.h): scalar, AVX2 and AVX-512 variants on the
// primitives of simd.h, picked per call from isa().
#include "elementwise.h"

#include <cmath>
#include <cstring>
#include <limits>

#include "features.h"
#include "numeric.h"
#include "simd.h"
#include "threadpool.h"

namespace lc::cpu {

namespace {

constexpr int64_t kGrain = 16384;  // elements per parallel chunk for element-wise kernels
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

using simd::Avx2;
using simd::Avx512;

// ---- silu * up ------------------------------------------------------------------------------
void silu_mul_scalar(int64_t b, int64_t e, const float* g, const float* u, float* y) {
  for (int64_t i = b; i < e; ++i) y[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
}
LC_TARGET_AVX512 void silu_mul_avx512(int64_t b, int64_t e, const float* g, const float* u, float* y) {
  const __m512 one = _mm512_set1_ps(1.0f);
  int64_t i = b;
  for (; i < e; i += 16) {
    __mmask16 k = Avx512::mask16(e - i);
    __m512 gv = _mm512_maskz_loadu_ps(k, g + i), uv = _mm512_maskz_loadu_ps(k, u + i);
    __m512 s = _mm512_div_ps(gv, _mm512_add_ps(one, Avx512::exp(_mm512_sub_ps(_mm512_setzero_ps(), gv))));
    _mm512_mask_storeu_ps(y + i, k, _mm512_mul_ps(s, uv));
  }
}
LC_TARGET_AVX2 void silu_mul_avx2(int64_t b, int64_t e, const float* g, const float* u, float* y) {
  const __m256 one = _mm256_set1_ps(1.0f);
  int64_t i = b;
  for (; i + 8 <= e; i += 8) {
    __m256 gv = _mm256_loadu_ps(g + i), uv = _mm256_loadu_ps(u + i);
    __m256 s = _mm256_div_ps(gv, _mm256_add_ps(one, Avx2::exp(_mm256_sub_ps(_mm256_setzero_ps(), gv))));
    _mm256_storeu_ps(y + i, _mm256_mul_ps(s, uv));
  }
  silu_mul_scalar(i, e, g, u, y);
}

// ---- add / scale ----------------------------------------------------------------------------
void add_scalar(int64_t b, int64_t e, const float* a, const float* x, float alpha, float* y) {
  if (alpha == 1.0f)
    for (int64_t i = b; i < e; ++i) y[i] = a[i] + x[i];
  else
    for (int64_t i = b; i < e; ++i) y[i] = a[i] + alpha * x[i];
}
LC_TARGET_AVX512 void add_avx512(int64_t b, int64_t e, const float* a, const float* x, float alpha, float* y) {
  const __m512 al = _mm512_set1_ps(alpha);
  for (int64_t i = b; i < e; i += 16) {
    __mmask16 k = Avx512::mask16(e - i);
    __m512 av = _mm512_maskz_loadu_ps(k, a + i), xv = _mm512_maskz_loadu_ps(k, x + i);
    _mm512_mask_storeu_ps(y + i, k, _mm512_fmadd_ps(al, xv, av));
  }
}
LC_TARGET_AVX2 void add_avx2(int64_t b, int64_t e, const float* a, const float* x, float alpha, float* y) {
  const __m256 al = _mm256_set1_ps(alpha);
  int64_t i = b;
  for (; i + 8 <= e; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(al, _mm256_loadu_ps(x + i), _mm256_loadu_ps(a + i)));
  add_scalar(i, e, a, x, alpha, y);
}
void scale_scalar(int64_t b, int64_t e, const float* x, float alpha, float* y) {
  for (int64_t i = b; i < e; ++i) y[i] = alpha * x[i];
}
LC_TARGET_AVX512 void scale_avx512(int64_t b, int64_t e, const float* x, float alpha, float* y) {
  const __m512 al = _mm512_set1_ps(alpha);
  for (int64_t i = b; i < e; i += 16) {
    __mmask16 k = Avx512::mask16(e - i);
    _mm512_mask_storeu_ps(y + i, k, _mm512_mul_ps(al, _mm512_maskz_loadu_ps(k, x + i)));
  }
}
LC_TARGET_AVX2 void scale_avx2(int64_t b, int64_t e, const float* x, float alpha, float* y) {
  const __m256 al = _mm256_set1_ps(alpha);
  int64_t i = b;
  for (; i + 8 <= e; i += 8) _mm256_storeu_ps(y + i, _mm256_mul_ps(al, _mm256_loadu_ps(x + i)));
  scale_scalar(i, e, x, alpha, y);
}

// ---- argmax ---------------------------------------------------------------------------------
int32_t argmax_scalar(const float* x, int64_t b, int64_t V, float* best_out, int32_t best_idx, float best) {
  for (int64_t j = b; j < V; ++j)
    if (x[j] > best) {
      best = x[j];
      best_idx = static_cast<int32_t>(j);
    }
  if (best_out) *best_out = best;
  return best_idx;
}
// Each lane keeps its first strict maximum; lanes hold interleaved indices, so among lanes that
// reach the row maximum the smallest index is the global first occurrence. Written once for both
// ISAs; the scalar loop finishes the tail.
template <class V>
LC_SIMD_INLINE int32_t argmax_vec(const float* x, int64_t n) {
  typename V::F best = V::set1(kNegInf);
  typename V::I index = V::izero(), at = V::lane_index();
  int64_t j = 0;
  for (; j + V::kLanes <= n; j += V::kLanes) V::argmax_step(V::load(x + j), best, index, at);
  const float m = V::reduce_max(best);
  return argmax_scalar(x, j, n, nullptr, m > kNegInf ? V::min_index_where(best, index, m) : 0, m);
}
LC_TARGET_AVX512 int32_t argmax_avx512(const float* x, int64_t n) { return argmax_vec<Avx512>(x, n); }
LC_TARGET_AVX2 int32_t argmax_avx2(const float* x, int64_t n) { return argmax_vec<Avx2>(x, n); }
int32_t argmax_row_scalar(const float* x, int64_t n) { return argmax_scalar(x, 0, n, nullptr, 0, kNegInf); }

// ---- softmax --------------------------------------------------------------------------------
void softmax_row_scalar(const float* x, float* y, int64_t V, bool log) {
  float m = kNegInf;
  for (int64_t j = 0; j < V; ++j) m = x[j] > m ? x[j] : m;
  double s = 0;
  for (int64_t j = 0; j < V; ++j) {
    float e = std::exp(x[j] - m);
    if (!log) y[j] = e;
    s += e;
  }
  if (log) {
    const float ls = static_cast<float>(std::log(s));
    for (int64_t j = 0; j < V; ++j) y[j] = (x[j] - m) - ls;
  } else {
    const float inv = static_cast<float>(1.0 / s);
    for (int64_t j = 0; j < V; ++j) y[j] *= inv;
  }
}
LC_TARGET_AVX512 void softmax_row_avx512(const float* x, float* y, int64_t V, bool log) {
  __m512 mv = _mm512_set1_ps(kNegInf);
  for (int64_t j = 0; j < V; j += 16) {
    __mmask16 k = Avx512::mask16(V - j);
    mv = _mm512_max_ps(_mm512_mask_loadu_ps(mv, k, x + j), mv);  // NaN ignored (second operand kept)
  }
  const float m = _mm512_reduce_max_ps(mv);
  const __m512 mm = _mm512_set1_ps(m);
  double s = 0;
  for (int64_t c = 0; c < V; c += 1024) {  // f32 lanes per chunk, chunks summed in double
    const int64_t ce = c + 1024 < V ? c + 1024 : V;
    __m512 acc = _mm512_setzero_ps();
    for (int64_t j = c; j < ce; j += 16) {
      __mmask16 k = Avx512::mask16(ce - j);
      __m512 e = Avx512::exp(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + j), mm));
      e = _mm512_maskz_mov_ps(k, e);
      if (!log) _mm512_mask_storeu_ps(y + j, k, e);
      acc = _mm512_add_ps(acc, e);
    }
    s += _mm512_reduce_add_ps(acc);
  }
  if (log) {
    const __m512 ls = _mm512_set1_ps(static_cast<float>(std::log(s)));
    for (int64_t j = 0; j < V; j += 16) {
      __mmask16 k = Avx512::mask16(V - j);
      _mm512_mask_storeu_ps(y + j, k, _mm512_sub_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + j), mm), ls));
    }
  } else {
    const __m512 inv = _mm512_set1_ps(static_cast<float>(1.0 / s));
    for (int64_t j = 0; j < V; j += 16) {
      __mmask16 k = Avx512::mask16(V - j);
      _mm512_mask_storeu_ps(y + j, k, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, y + j), inv));
    }
  }
}
LC_TARGET_AVX2 void softmax_row_avx2(const float* x, float* y, int64_t V, bool log) {
  __m256 mv = _mm256_set1_ps(kNegInf);
  int64_t j = 0;
  for (; j + 8 <= V; j += 8) mv = _mm256_max_ps(_mm256_loadu_ps(x + j), mv);
  float m = Avx2::reduce_max(mv);
  for (; j < V; ++j) m = x[j] > m ? x[j] : m;
  const __m256 mm = _mm256_set1_ps(m);
  double s = 0;
  for (int64_t c = 0; c < V; c += 1024) {
    const int64_t ce = c + 1024 < V ? c + 1024 : V;
    __m256 acc = _mm256_setzero_ps();
    int64_t i = c;
    for (; i + 8 <= ce; i += 8) {
      __m256 e = Avx2::exp(_mm256_sub_ps(_mm256_loadu_ps(x + i), mm));
      if (!log) _mm256_storeu_ps(y + i, e);
      acc = _mm256_add_ps(acc, e);
    }
    float t = Avx2::reduce_add(acc);
    for (; i < ce; ++i) {
      float e = std::exp(x[i] - m);
      if (!log) y[i] = e;
      t += e;
    }
    s += t;
  }
  if (log) {
    const float lsf = static_cast<float>(std::log(s));
    const __m256 ls = _mm256_set1_ps(lsf);
    int64_t i = 0;
    for (; i + 8 <= V; i += 8) _mm256_storeu_ps(y + i, _mm256_sub_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), mm), ls));
    for (; i < V; ++i) y[i] = (x[i] - m) - lsf;
  } else {
    const float invf = static_cast<float>(1.0 / s);
    const __m256 inv = _mm256_set1_ps(invf);
    int64_t i = 0;
    for (; i + 8 <= V; i += 8) _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_loadu_ps(y + i), inv));
    for (; i < V; ++i) y[i] *= invf;
  }
}

}  // namespace

int64_t embedding(int64_t T, int64_t H, const void* table, DType tt, int64_t V, const int32_t* ids, float* y) {
  for (int64_t t = 0; t < T; ++t)
    if (ids[t] < 0 || ids[t] >= V) return t;
  const int64_t row_bytes = H * dtype_size(tt);
  // ~4k values a chunk (a verify's 16 rows on both threads); every row's lines are requested before
  // the first is read: the rows are scattered and cold, so their misses overlap.
  parallel_for(T, std::max<int64_t>(1, 4096 / std::max<int64_t>(H, 1)), [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t)
      for (int64_t o = 0; o < row_bytes; o += 64) __builtin_prefetch(static_cast<const char*>(table) + ids[t] * row_bytes + o);
    for (int64_t t = b; t < e; ++t) {
      const int64_t id = ids[t];
      float* dst = y + t * H;
      if (tt == DType::BF16) {
        const uint16_t* src = static_cast<const uint16_t*>(table) + id * H;
        for (int64_t i = 0; i < H; ++i) dst[i] = bf16_to_f32(src[i]);
      } else {
        std::memcpy(dst, static_cast<const float*>(table) + id * H, static_cast<size_t>(H) * 4);
      }
    }
  });
  return -1;
}

void silu_mul(int64_t n, const float* gate, const float* up, float* y) {
  const Isa is = isa();
  // a quarter grain: exp-bound, 8 x 1024 values take ~4 us on one thread
  parallel_for(n, kGrain / 4,
               [&](int64_t b, int64_t e) { by_isa(is, silu_mul_avx512, silu_mul_avx2, silu_mul_scalar)(b, e, gate, up, y); });
}

void add(int64_t n, const float* a, const float* b, float alpha, float* y) {
  const Isa is = isa();
  parallel_for(n, kGrain * 4, [&](int64_t s, int64_t e) { by_isa(is, add_avx512, add_avx2, add_scalar)(s, e, a, b, alpha, y); });
}

void scale(int64_t n, const float* x, float alpha, float* y) {
  const Isa is = isa();
  parallel_for(n, kGrain * 4,
               [&](int64_t s, int64_t e) { by_isa(is, scale_avx512, scale_avx2, scale_scalar)(s, e, x, alpha, y); });
}

void scale_groups(int64_t rows, int64_t cols, const float* x, const float* scales, int64_t r, int64_t group, float* y) {
  const int64_t g = (cols + group - 1) / group;
  parallel_for(rows, std::max<int64_t>(1, kGrain / std::max<int64_t>(cols, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t i = r0; i < r1; ++i) {
      const float* sr = scales + (i % r) * g;
      for (int64_t c = 0; c < cols; ++c) y[i * cols + c] = x[i * cols + c] * sr[c / group];
    }
  });
}

int32_t argmax_row(const float* x, int64_t V) { return by_isa(isa(), argmax_avx512, argmax_avx2, argmax_row_scalar)(x, V); }

void argmax(int64_t rows, int64_t V, const float* x, int32_t* idx) {
  const Isa is = isa();
  parallel_for(rows, std::max<int64_t>(1, kGrain / std::max<int64_t>(V, 1)), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const float* xr = x + r * V;
      idx[r] = by_isa(is, argmax_avx512, argmax_avx2, argmax_row_scalar)(xr, V);
    }
  });
}

void softmax(int64_t rows, int64_t V, const float* x, float* y, bool log) {
  const Isa is = isa();
  parallel_for(rows, std::max<int64_t>(1, kGrain / std::max<int64_t>(V, 1)), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      by_isa(is, softmax_row_avx512, softmax_row_avx2, softmax_row_scalar)(x + r * V, y + r * V, V, log);
    }
  });
}

}  // namespace lc::cpu
