// N-gram embedding projection + mean on the CPU (contract: ngram.h). Parallel over the outputs
// (t, h): a decode step has one token, so the hidden dimension is what spreads across threads.
#include "ngram.h"

#include "numeric.h"
#include "threadpool.h"

namespace lc::cpu {

namespace {

template <typename A>
inline float load(const A* p, int64_t i) {
  if constexpr (sizeof(A) == 2)
    return bf16_to_f32(p[i]);
  else
    return p[i];
}

template <typename R, typename P>
void run(int64_t T, int64_t H, int64_t E, int64_t D, const float* base, const R* rows, const P* proj, float* y) {
  const float inv_count = 1.0f / static_cast<float>(E + 1);
  parallel_for(T * H, std::max<int64_t>(1, 4096 / std::max<int64_t>(E * D, 1)), [&](int64_t b, int64_t e_) {
    for (int64_t o = b; o < e_; ++o) {
      const int64_t t = o / H, h = o % H;
      float acc = base[o];
      for (int64_t e = 0; e < E; ++e) {
        const R* r = rows + (e * T + t) * D;
        const P* w = proj + (e * H + h) * D;
        float dot = 0.0f;
        for (int64_t k = 0; k < D; ++k) dot += load(r, k) * load(w, k);
        acc += dot;
      }
      y[o] = acc * inv_count;
    }
  });
}

}  // namespace

void ngram_embed(int64_t T, int64_t H, int64_t E, int64_t D, const float* base, const void* rows, DType rt, const void* proj,
                 DType pt, float* y) {
  const bool rb = rt == DType::BF16, pb = pt == DType::BF16;
  if (rb && pb)
    run(T, H, E, D, base, static_cast<const uint16_t*>(rows), static_cast<const uint16_t*>(proj), y);
  else if (rb)
    run(T, H, E, D, base, static_cast<const uint16_t*>(rows), static_cast<const float*>(proj), y);
  else if (pb)
    run(T, H, E, D, base, static_cast<const float*>(rows), static_cast<const uint16_t*>(proj), y);
  else
    run(T, H, E, D, base, static_cast<const float*>(rows), static_cast<const float*>(proj), y);
}

}  // namespace lc::cpu
