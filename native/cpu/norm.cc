#include "norm.h"

#include <cmath>

#include "numeric.h"
#include "threadpool.h"

namespace lc::cpu {

template <typename WT, typename YT>
static void rmsnorm_rows(int64_t r0, int64_t r1, int64_t dim, const float* x, const float* add, float* h_out,
                         const WT* w, float eps, YT* y) {
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
      if constexpr (sizeof(WT) == 2) wi = bf16_to_f32(w[i]); else wi = w[i];
      float v = h * inv * wi;
      if constexpr (sizeof(YT) == 2) y[r * dim + i] = f32_to_bf16(v); else y[r * dim + i] = v;
    }
  }
}

template <typename WT, typename YT>
static void rmsnorm_t(int64_t rows, int64_t dim, const float* x, const float* add, float* h_out, const void* w,
                      float eps, void* y) {
  parallel_for(rows, std::max<int64_t>(1, 16384 / std::max<int64_t>(dim, 1)), [&](int64_t b, int64_t e) {
    rmsnorm_rows<WT, YT>(b, e, dim, x, add, h_out, static_cast<const WT*>(w), eps, static_cast<YT*>(y));
  });
}

void rmsnorm(int64_t rows, int64_t dim, const float* x, const float* add, float* h_out, const void* w, DType wt,
             float eps, void* y, DType yt) {
  bool wb = wt == DType::BF16, yb = yt == DType::BF16;
  if (wb && yb) rmsnorm_t<uint16_t, uint16_t>(rows, dim, x, add, h_out, w, eps, y);
  else if (wb) rmsnorm_t<uint16_t, float>(rows, dim, x, add, h_out, w, eps, y);
  else if (yb) rmsnorm_t<float, uint16_t>(rows, dim, x, add, h_out, w, eps, y);
  else rmsnorm_t<float, float>(rows, dim, x, add, h_out, w, eps, y);
}

}  // namespace lc::cpu
