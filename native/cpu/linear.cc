#include "linear.h"

#include <vector>

#include "numeric.h"
#include "threadpool.h"

namespace lc::cpu {

static float weight_at(const WeightRef& w, int64_t r, int64_t c) {
  switch (w.dtype) {
    case DType::F32: return static_cast<const float*>(w.data)[r * w.k + c];
    case DType::BF16: return bf16_to_f32(static_cast<const uint16_t*>(w.data)[r * w.k + c]);
    case DType::FP8_E4M3: {
      int64_t kb = (w.k + 127) / 128;
      return fp8e4m3_to_f32(static_cast<const uint8_t*>(w.data)[r * w.k + c]) * w.scale[(r / 128) * kb + c / 128];
    }
    case DType::I8: return static_cast<const int8_t*>(w.data)[r * w.k + c] * w.scale[r];
    default: return 0.0f;
  }
}

void linear(int64_t t, const void* x, DType xt, const WeightRef& w, void* y, DType yt) {
  const int64_t k = w.k, n = w.n;
  std::vector<float> xf(static_cast<size_t>(t * k));
  for (int64_t i = 0; i < t * k; ++i)
    xf[i] = xt == DType::BF16 ? bf16_to_f32(static_cast<const uint16_t*>(x)[i]) : static_cast<const float*>(x)[i];
  parallel_for(n, 16, [&](int64_t n0, int64_t n1) {
    for (int64_t r = n0; r < n1; ++r)
      for (int64_t i = 0; i < t; ++i) {
        float acc = 0;
        for (int64_t c = 0; c < k; ++c) acc += xf[i * k + c] * weight_at(w, r, c);
        if (yt == DType::BF16)
          static_cast<uint16_t*>(y)[i * n + r] = f32_to_bf16(acc);
        else
          static_cast<float*>(y)[i * n + r] = acc;
      }
  });
}

}  // namespace lc::cpu
