// AVX2 + FMA + F16C linear layers: the drivers of linear_vec.h compiled for 8-lane vectors and 16
// registers.
#include "linear_kernels.h"
#include "simd.h"
#include "threadpool.h"

LC_BEGIN_TARGET(LC_ISA_AVX2)
#include "linear_vec.h"
#include "linear_i8act.h"

namespace lc::cpu::linear_detail {
namespace {

struct Avx2Linear {
  using V = simd::Avx2;
  // R output rows per pass so that T*R accumulators + R weights + 1 x fit in 16 registers.
  template <int T>
  using GemvShape = GemvShapeOf<T <= 2   ? 4
                                : T <= 4 ? 2
                                         : 1>;
  template <int T>
  using Fp8Shape = Fp8ShapeOf<T <= 2   ? 1
                              : T <= 4 ? 2
                                       : 1,
                              T <= 2 ? 4 : 1>;
  template <int T>
  static constexpr int kInt4Rows = T <= 2 ? 2 : 1;  // registers: see linear_vec.h's int4 GEMV
  static constexpr int64_t kGemmMR = 3;             // 3 x 4 accumulators + 3 x + 1 weight = 16 registers
};

}  // namespace

void linear_avx2(int64_t t, const void* x, DType xt, const WeightRef& w, void* y, DType yt, bool int8_act) {
  if (t <= kGemvMaxRows && int8_act && int4_int8_act_shape(w)) {
    gemv_int4_i8<simd::Avx2>(t, x, xt, w, y, yt);
    return;
  }
  if (t <= kGemvMaxRows && int8_act && w.dtype == DType::I8) {
    gemv_int8_i8<simd::Avx2>(t, x, xt, w, y, yt);
    return;
  }
  linear_vec<Avx2Linear>(t, x, xt, w, y, yt);
}

uint64_t read_sum_lines_avx2(const ReadSpan* spans, int64_t n) { return read_sum_lines<simd::Avx2>(spans, n); }

}  // namespace lc::cpu::linear_detail

LC_END_TARGET
