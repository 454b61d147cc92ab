// N-gram embedding projection + mean on the CPU (contract: ngram.h): each table's projection is
// the linear layer (cpu::linear: the GEMV path for decode, the blocked GEMM for a prefill), into a
// workspace; the E results are added to the base in table order, then scaled by 1 / (E + 1).
#include "ngram.h"

#include <algorithm>

#include "linear.h"
#include "threadpool.h"

namespace lc::cpu {

int64_t ngram_workspace_floats(int64_t T, int64_t H) { return T * H; }

void ngram_embed(int64_t T, int64_t H, int64_t E, int64_t D, const float* base, const void* rows, DType rt, const void* proj,
                 DType pt, float* y, float* ws) {
  const int64_t n = T * H;
  if (n == 0) return;
  const float inv_count = 1.0f / static_cast<float>(E + 1);
  const int64_t rbytes = dtype_size(rt), pbytes = dtype_size(pt);
  if (y != base) std::copy(base, base + n, y);
  for (int64_t e = 0; e < E; ++e) {
    WeightRef w;
    w.dtype = pt;
    w.data = static_cast<const char*>(proj) + e * H * D * pbytes;
    w.n = H;
    w.k = D;
    linear(T, static_cast<const char*>(rows) + e * T * D * rbytes, rt, w, ws, DType::F32);
    const bool last = e == E - 1;
    parallel_for(n, 16384, [&](int64_t b, int64_t end) {
      for (int64_t i = b; i < end; ++i) y[i] = last ? (y[i] + ws[i]) * inv_count : y[i] + ws[i];
    });
  }
  if (E == 0)
    parallel_for(n, 16384, [&](int64_t b, int64_t end) {
      for (int64_t i = b; i < end; ++i) y[i] *= inv_count;
    });
}

}  // namespace lc::cpu
