// Linear layer dispatch, the scalar fallback, int8 row quantization and per-thread scratch.
// The vector paths live in linear_avx2.cc and linear_avx512.cc.
#include "linear.h"

#include <algorithm>
#include <atomic>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "features.h"
#include "linear_kernels.h"
#include "numeric.h"
#include "profile.h"
#include "quant.h"
#include "threadpool.h"

namespace lc::cpu {

namespace linear_detail {

namespace {
struct ScratchBuf {
  void* p = nullptr;
  size_t size = 0;
  ~ScratchBuf() { std::free(p); }
};
}  // namespace

void* scratch(ScratchSlot slot, size_t bytes) {
  thread_local ScratchBuf bufs[kScratchSlots];
  ScratchBuf& b = bufs[slot];
  if (bytes > b.size) {
    std::free(b.p);
    size_t sz = (bytes + 4095) & ~size_t{4095};  // aligned_alloc wants a multiple of the alignment
    b.p = std::aligned_alloc(64, sz);
    b.size = b.p ? sz : 0;
  }
  return b.p;
}

}  // namespace linear_detail

using namespace linear_detail;

// ---------------------------------------------------------------------------------------------
// Scalar path (any t). Each weight row is decoded to f32 once into per-thread scratch, then dotted
// with every x row; the int8 row scale is applied to the finished dot product like the SIMD paths.

static void decode_row_scalar(const WeightRef& w, int64_t r, float* out) {
  const int64_t k = w.k;
  switch (w.dtype) {
    case DType::F32: std::memcpy(out, static_cast<const float*>(w.data) + r * k, k * sizeof(float)); break;
    case DType::BF16: {
      const uint16_t* p = static_cast<const uint16_t*>(w.data) + r * k;
      for (int64_t c = 0; c < k; ++c) out[c] = bf16_to_f32(p[c]);
      break;
    }
    case DType::FP8_E4M3: {
      const uint8_t* p = static_cast<const uint8_t*>(w.data) + r * k;
      for (int64_t c = 0; c < k; ++c) out[c] = fp8e4m3_to_f32(p[c]) * fp8_block_scale(w, r, c / 128);
      break;
    }
    case DType::I8: {
      const int8_t* p = static_cast<const int8_t*>(w.data) + r * k;
      for (int64_t c = 0; c < k; ++c) out[c] = static_cast<float>(p[c]);
      break;
    }
    case DType::I4: {
      const uint8_t* p = static_cast<const uint8_t*>(w.data) + r * int4_row_bytes(k, w.group);
      for (int64_t c = 0; c < k; ++c) {
        float s, z;
        int4_group_params(w, r, c / w.group, &s, &z);
        const uint8_t b = p[c / 32 * 16 + c % 16];
        const int q = c % 32 < 16 ? b & 15 : b >> 4;
        out[c] = std::fma(static_cast<float>(q), s, -z * s);
      }
      break;
    }
    default: break;
  }
}

static void linear_scalar(int64_t t, const float* xf, const WeightRef& w, void* y, DType yt) {
  const int64_t n = w.n, k = w.k;
  parallel_for(n, gemv_grain_rows(w), [&](int64_t r0, int64_t r1) {
    float* wr = static_cast<float*>(scratch(kScratchPanel, k * sizeof(float)));
    for (int64_t r = r0; r < r1; ++r) {
      decode_row_scalar(w, r, wr);
      const float rs = w.dtype == DType::I8 ? w.scale[r] : 1.0f;
      for (int64_t i = 0; i < t; ++i) {
        const float* xr = xf + i * k;
        float acc = 0;
        for (int64_t c = 0; c < k; ++c) acc += xr[c] * wr[c];
        store_y(y, yt, i * n + r, acc * rs);
      }
    }
  });
}

static std::atomic<MatmulPrecision> g_precision{MatmulPrecision::BF16};
void set_matmul_precision(MatmulPrecision p) { g_precision.store(p); }
MatmulPrecision matmul_precision() { return g_precision.load(); }
bool bf16_activations() { return matmul_precision() != MatmulPrecision::Highest; }

// bf16_dequant: GEMMs may dequantize fp8 / int8 / int4 weights to bf16 (precision other than
// 'highest', except for the e4m3 activations of precision 'fp8', whose products stay exact).
static void linear_dispatch(int64_t t, const void* x, DType xt, const WeightRef& w, void* y, DType yt, bool bf16_dequant);

// Precision 'fp8' on the CPU: activations go through the e4m3 1x128 quantization the GPU applies
// (quantize, then dequantize exactly), and the products are taken in fp32 from there.
static void linear_fp8_activations(int64_t t, const void* x, DType xt, const WeightRef& w, void* y, DType yt) {
  const int64_t k = w.k, groups = (k + 127) / 128;
  std::vector<float> xf(static_cast<size_t>(t * k)), scale(static_cast<size_t>(t * groups));
  std::vector<uint8_t> q(static_cast<size_t>(t * k));
  for (int64_t i = 0; i < t * k; ++i)
    xf[i] = xt == DType::BF16 ? bf16_to_f32(static_cast<const uint16_t*>(x)[i]) : static_cast<const float*>(x)[i];
  quantize_fp8_act(t, k, xf.data(), q.data(), scale.data());
  for (int64_t r = 0; r < t; ++r)
    for (int64_t c = 0; c < k; ++c) xf[r * k + c] = fp8e4m3_to_f32(q[r * k + c]) * scale[r * groups + c / 128];
  linear_dispatch(t, xf.data(), DType::F32, w, y, yt, false);
}

WeightRef weight_rows(const WeightRef& w, int64_t r0, int64_t r1) {
  WeightRef r = w;
  r.n = r1 - r0;
  switch (w.dtype) {
    case DType::I4:
      r.data = static_cast<const uint8_t*>(w.data) + r0 * int4_row_bytes(w.k, w.group);
      r.group_scale = w.group_scale + r0 * int4_groups(w.k, w.group) * (w.group_zero ? 2 : 1);
      break;
    case DType::I8:
      r.data = static_cast<const int8_t*>(w.data) + r0 * w.k;
      r.scale = w.scale + r0;
      break;
    case DType::FP8_E4M3:
      r.data = static_cast<const uint8_t*>(w.data) + r0 * w.k;
      r.scale = w.scale + (r0 / 128) * ((w.k + 127) / 128);
      break;
    default: r.data = static_cast<const char*>(w.data) + r0 * w.k * static_cast<int64_t>(dtype_size(w.dtype)); break;
  }
  return r;
}

int64_t weight_bytes(const WeightRef& w) {
  switch (w.dtype) {
    case DType::I4: return w.n * (int4_row_bytes(w.k, w.group) + int4_groups(w.k, w.group) * (w.group_zero ? 4 : 2));
    case DType::I8: return w.n * (w.k + 4);
    case DType::FP8_E4M3: return w.n * w.k + ((w.n + 127) / 128) * ((w.k + 127) / 128) * 4;
    default: return w.n * w.k * static_cast<int64_t>(dtype_size(w.dtype));
  }
}

void linear(int64_t t, const void* x, DType xt, const WeightRef& w, void* y, DType yt) {
  if (profile::on()) profile::add_weight_bytes(weight_bytes(w));
  if (t >= kFp8ActivationMinRows && w.k > 0 && w.dtype == DType::FP8_E4M3 && matmul_precision() == MatmulPrecision::FP8)
    return linear_fp8_activations(t, x, xt, w, y, yt);
  linear_dispatch(t, x, xt, w, y, yt, bf16_activations());
}

static void linear_dispatch(int64_t t, const void* x, DType xt, const WeightRef& w, void* y, DType yt, bool bf16_dequant) {
  if (t <= 0 || w.n <= 0) return;
  if (w.k <= 0) {  // an empty sum
    for (int64_t i = 0; i < t * w.n; ++i) store_y(y, yt, i, 0.0f);
    return;
  }
  switch (isa()) {
    case Isa::Avx512:
      linear_avx512(t, x, xt, w, y, yt, features().avx512_bf16 && (xt == DType::BF16 || bf16_activations()),
                    features().avx512_bf16 && bf16_dequant, features().avx512_vnni && bf16_activations());
      return;
    case Isa::Avx2: linear_avx2(t, x, xt, w, y, yt, bf16_activations()); return;
    case Isa::Scalar: break;
  }
  const float* xf = static_cast<const float*>(x);
  if (xt == DType::BF16) {
    float* buf = static_cast<float*>(scratch(kScratchX, t * w.k * sizeof(float)));
    const uint16_t* xb = static_cast<const uint16_t*>(x);
    for (int64_t i = 0; i < t * w.k; ++i) buf[i] = bf16_to_f32(xb[i]);
    xf = buf;
  }
  linear_scalar(t, xf, w, y, yt);
}

// ---------------------------------------------------------------------------------------------

void quantize_int8_rows(int64_t n, int64_t k, const void* w, DType wt, int8_t* q, float* scale) {
  parallel_for(n, gemv_grain_rows(WeightRef{wt, w, nullptr, n, k}), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      auto at = [&](int64_t c) {
        return wt == DType::BF16 ? bf16_to_f32(static_cast<const uint16_t*>(w)[r * k + c])
                                 : static_cast<const float*>(w)[r * k + c];
      };
      float amax = 0;
      for (int64_t c = 0; c < k; ++c) amax = std::fmax(amax, std::fabs(at(c)));
      const float s = amax / 127.0f;
      scale[r] = s;
      for (int64_t c = 0; c < k; ++c) {
        // Division (not multiplication by 127/amax) keeps q exact for values on the grid.
        float v = s > 0 ? std::nearbyint(at(c) / s) : 0.0f;  // default rounding: half to even
        q[r * k + c] = static_cast<int8_t>(std::fmin(127.0f, std::fmax(-127.0f, v)));
      }
    }
  });
}

void quantize_int4_groups(int64_t n, int64_t k, int64_t g, const void* w, DType wt, uint8_t* q, uint16_t* scale) {
  const int64_t G = int4_groups(k, g), rb = int4_row_bytes(k, g);
  parallel_for(n, 1 + (64 * 1024) / (rb > 0 ? rb : 1), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      auto at = [&](int64_t c) {
        return wt == DType::BF16 ? bf16_to_f32(static_cast<const uint16_t*>(w)[r * k + c])
                                 : static_cast<const float*>(w)[r * k + c];
      };
      uint8_t* qr = q + r * rb;
      std::memset(qr, 0x88, static_cast<size_t>(rb));
      for (int64_t gi = 0; gi < G; ++gi) {
        const int64_t c0 = gi * g, c1 = c0 + g < k ? c0 + g : k;
        float amax = 0;
        for (int64_t c = c0; c < c1; ++c) amax = std::fmax(amax, std::fabs(at(c)));
        const uint16_t sb = f32_to_f16(amax / 7.0f);
        const float s = f16_to_f32(sb);
        scale[r * G + gi] = sb;
        for (int64_t c = c0; c < c1; ++c) {
          const float v = s > 0 ? std::nearbyint(at(c) / s) : 0.0f;  // half to even
          const uint8_t code = static_cast<uint8_t>(8 + std::fmin(7.0f, std::fmax(-7.0f, v)));
          uint8_t& b = qr[c / 32 * 16 + c % 16];
          b = c % 32 < 16 ? static_cast<uint8_t>((b & 0xf0) | code) : static_cast<uint8_t>((b & 0x0f) | (code << 4));
        }
      }
    }
  });
}

uint64_t read_sum(const ReadSpan* spans, int64_t n) {
  uint64_t total = 0;
  for (int64_t i = 0; i < n; ++i) {  // the tails: the last bytes % 64 of each span, words zero-padded
    const int64_t whole = spans[i].bytes / 64 * 64;
    const uint8_t* p = static_cast<const uint8_t*>(spans[i].p);
    for (int64_t o = whole; o < spans[i].bytes; o += 8) {
      uint64_t word = 0;
      std::memcpy(&word, p + o, static_cast<size_t>(std::min<int64_t>(8, spans[i].bytes - o)));
      total += word;
    }
  }
  switch (isa()) {
    case Isa::Avx512: return total + read_sum_lines_avx512(spans, n);
    case Isa::Avx2: return total + read_sum_lines_avx2(spans, n);
    case Isa::Scalar: break;
  }
  return total + linear_detail::read_sum_split(spans, n, [](const uint8_t* p, int64_t lines) {
           uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
           for (int64_t w = 0; w < lines * 8; w += 4) {
             uint64_t u[4];
             std::memcpy(u, p + 8 * w, sizeof u);
             s0 += u[0], s1 += u[1], s2 += u[2], s3 += u[3];
           }
           return s0 + s1 + s2 + s3;
         });
}

}  // namespace lc::cpu
