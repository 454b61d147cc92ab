// y[t, n] = x[t, :] . W[n, :] for every weight format (contract: lc::cpu::linear). Paths, chosen on
// the host from the shape and the matmul precision (lc::cpu::matmul_precision):
//   * skinny (t <= 16, decode): one warp per output feature streams its weight row once with 16-byte
//     loads (8 bf16 or 16 fp8 / int8 weights) and keeps all t dot products in registers;
//     bandwidth-bound, so every format is dequantized on the fly and multiplied in fp32.
//   * tensor cores (t > 16): tile_gemm.cuh in bf16 mode, or, for fp8 weights at precision 'fp8',
//     activations quantized to e4m3 (1x128 groups) and the fp8 mode (linear_fp8).
//   * fp32 tiles (t > 16, precision 'highest'): 64x64 CUDA-core tiles, every product in fp32 like the
//     CPU's reference mode.
#include "common.cuh"
#include "kernels.h"
#include "quant.h"
#include "tile_gemm.cuh"
#include "weights.cuh"

namespace lc::gpu {

namespace {

__device__ __forceinline__ float load_x(const void* x, bool bf16, int64_t i) {
  return bf16 ? bf16_bits_to_f32(static_cast<const uint16_t*>(x)[i]) : static_cast<const float*>(x)[i];
}

// x[i .. i + 8); i % 8 == 0 and a 16-byte aligned x.
__device__ __forceinline__ void load_x8(const void* x, bool bf16, int64_t i, float (&v)[8]) {
  if (bf16) {
    const uint4 p = *reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(x) + i);
    const uint32_t u[4] = {p.x, p.y, p.z, p.w};
#pragma unroll
    for (int j = 0; j < 4; ++j) v[2 * j] = __uint_as_float(u[j] << 16), v[2 * j + 1] = __uint_as_float(u[j] & 0xffff0000u);
  } else {
    const float4 a = *reinterpret_cast<const float4*>(static_cast<const float*>(x) + i);
    const float4 b = *reinterpret_cast<const float4*>(static_cast<const float*>(x) + i + 4);
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
  }
}

__device__ __forceinline__ void store_y(void* y, bool bf16, int64_t i, float v) {
  if (bf16)
    static_cast<uint16_t*>(y)[i] = f32_to_bf16_bits(v);
  else
    static_cast<float*>(y)[i] = v;
}

constexpr int kSkinnyWarps = 8;
static_assert(kSkinnyMaxRows + 1 == cpu::kFp8ActivationMinRows, "fp8 activations start where the skinny path ends");

template <int kMaxT>
__global__ void __launch_bounds__(kSkinnyWarps * 32)
    linear_skinny(int t, const void* __restrict__ x, bool xb, bool vec, WView w, int64_t n, void* __restrict__ y, bool yb) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kSkinnyWarps + threadIdx.x / 32;
  const int lane = threadIdx.x & 31;
  if (row >= n) return;
  float acc[kMaxT];
#pragma unroll
  for (int i = 0; i < kMaxT; ++i) acc[i] = 0.f;
  if (vec && w.vec16()) {  // fp8 / int8: 16 weights per 16-byte load, 512 per warp and step
    for (int64_t c = 16 * lane; c < w.k; c += 512) {
      float wv[16];
      w.at16(row, c, wv);
#pragma unroll
      for (int i = 0; i < kMaxT; ++i) {
        if (i < t) {
          float x0[8], x1[8];
          load_x8(x, xb, i * w.k + c, x0);
          load_x8(x, xb, i * w.k + c + 8, x1);
#pragma unroll
          for (int j = 0; j < 8; ++j) acc[i] += wv[j] * x0[j] + wv[8 + j] * x1[j];
        }
      }
    }
  } else if (vec) {  // a warp covers 256 consecutive weights per step
    for (int64_t c = 8 * lane; c < w.k; c += 256) {
      float wv[8];
      w.at8(row, c, wv);
#pragma unroll
      for (int i = 0; i < kMaxT; ++i) {
        if (i < t) {
          float xv[8];
          load_x8(x, xb, i * w.k + c, xv);
#pragma unroll
          for (int j = 0; j < 8; ++j) acc[i] += wv[j] * xv[j];
        }
      }
    }
  } else {
    for (int64_t c = lane; c < w.k; c += 32) {
      const float wv = w.at(row, c);
#pragma unroll
      for (int i = 0; i < kMaxT; ++i)
        if (i < t) acc[i] += wv * load_x(x, xb, i * w.k + c);
    }
  }
#pragma unroll
  for (int i = 0; i < kMaxT; ++i) {
    float v = acc[i];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (lane == 0 && i < t) store_y(y, yb, i * n + row, v);
  }
}

constexpr int kTile = 64, kSlab = 32;

__global__ void __launch_bounds__(256)
    linear_tiled_f32(int64_t t, const void* __restrict__ x, bool xb, WView w, int64_t n, void* __restrict__ y, bool yb) {
  __shared__ float xs[kSlab][kTile + 1];
  __shared__ float ws[kSlab][kTile + 1];
  const int64_t t0 = static_cast<int64_t>(blockIdx.y) * kTile, n0 = static_cast<int64_t>(blockIdx.x) * kTile;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;  // 16 x 16 threads, 4 x 4 outputs each
  float acc[4][4] = {};
  for (int64_t k0 = 0; k0 < w.k; k0 += kSlab) {
    for (int i = threadIdx.x; i < kSlab * kTile; i += 256) {
      const int kk = i % kSlab, r = i / kSlab;
      const int64_t c = k0 + kk;
      xs[kk][r] = (t0 + r < t && c < w.k) ? load_x(x, xb, (t0 + r) * w.k + c) : 0.f;
      ws[kk][r] = (n0 + r < n && c < w.k) ? w.at(n0 + r, c) : 0.f;
    }
    __syncthreads();
#pragma unroll 8
    for (int kk = 0; kk < kSlab; ++kk) {
      float a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = xs[kk][ty * 4 + i], b[i] = ws[kk][tx * 4 + i];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * b[j];
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t r = t0 + ty * 4 + i, c = n0 + tx * 4 + j;
      if (r < t && c < n) store_y(y, yb, r * n + c, acc[i][j]);
    }
}

// The dense problem for tile_gemm.cuh: rows of x (or of its e4m3 quantization) times the weight.
struct DenseGemm {
  static constexpr bool kGateUp = false;
  struct Tile {
    int64_t m0, n0;
  };
  int64_t t, n, k, kb;
  const void* a;          // x [t, k] (f32 / bf16), or its e4m3 codes in fp8 mode
  const float* a_scale;   // fp8 mode: [t, kb]
  DType a_dtype, b_dtype;
  const void* w;
  const float* w_scale;
  void* y;
  bool yb;

  __device__ bool tile(Tile& tl) const {
    tl.n0 = static_cast<int64_t>(blockIdx.x) * tile::kBN;
    tl.m0 = static_cast<int64_t>(blockIdx.y) * tile::kBM;
    return true;
  }
  __device__ tile::Row a_row(const Tile& tl, int r) const {
    const int64_t row = tl.m0 + r;
    if (row >= t) return {};
    const int64_t es = a_dtype == DType::F32 ? 4 : a_dtype == DType::BF16 ? 2 : 1;
    return {static_cast<const char*>(a) + row * k * es, a_scale ? a_scale + row * kb : nullptr};
  }
  __device__ tile::Row b_row(const Tile& tl, int r) const {
    const int64_t row = tl.n0 + r;
    if (row >= n) return {};
    const int64_t es = b_dtype == DType::F32 ? 4 : b_dtype == DType::BF16 ? 2 : 1;
    const float* s = b_dtype == DType::FP8_E4M3 ? w_scale + (row / 128) * kb : b_dtype == DType::I8 ? w_scale + row : nullptr;
    return {static_cast<const char*>(w) + row * k * es, s, b_dtype};
  }
  __device__ const float* b_scales(const Tile& tl, int) const { return w_scale + (tl.n0 / 128) * kb; }
  __device__ void store2(const Tile& tl, int r, int c, float v0, float v1) const {
    const int64_t row = tl.m0 + r, col = tl.n0 + c;
    if (row >= t || col >= n) return;
    const int64_t i = row * n + col;
    if (col + 1 < n) {  // one 8-byte (f32) / 4-byte (bf16) store where the pair is aligned
      if (yb) {
        uint16_t* d = static_cast<uint16_t*>(y) + i;
        if ((reinterpret_cast<uintptr_t>(d) & 3) == 0) {
          *reinterpret_cast<uint32_t*>(d) = tile::pack_bf16x2(v0, v1);
          return;
        }
      } else {
        float* d = static_cast<float*>(y) + i;
        if ((reinterpret_cast<uintptr_t>(d) & 7) == 0) {
          *reinterpret_cast<float2*>(d) = make_float2(v0, v1);
          return;
        }
      }
      store_y(y, yb, i + 1, v1);
    }
    store_y(y, yb, i, v0);
  }
};

DenseGemm dense_problem(int64_t t, const cpu::WeightRef& w, void* y, DType yt) {
  DenseGemm p{};
  p.t = t, p.n = w.n, p.k = w.k, p.kb = (w.k + 127) / 128;
  p.b_dtype = w.dtype, p.w = w.data, p.w_scale = w.scale;
  p.y = y, p.yb = yt == DType::BF16;
  return p;
}

dim3 dense_grid(int64_t t, int64_t n) {
  if (ceil_div(t, tile::kBM) > 65535)
    fail(Code::E_SHAPE, "linear (CUDA): %lld rows exceed one launch (at most %d)", static_cast<long long>(t), 65535 * tile::kBM);
  return dim3(static_cast<unsigned>(ceil_div(n, tile::kBN)), static_cast<unsigned>(ceil_div(t, tile::kBM)));
}

size_t align256(size_t b) { return (b + 255) & ~static_cast<size_t>(255); }

}  // namespace

void linear(int64_t t, const void* x, DType xt, const cpu::WeightRef& wr, void* y, DType yt, void* stream) {
  if (t == 0 || wr.n == 0) return;
  auto s = static_cast<cudaStream_t>(stream);
  const WView w{wr.data, wr.scale, wr.dtype, wr.k, (wr.k + 127) / 128};
  const bool xb = xt == DType::BF16, yb = yt == DType::BF16;
  if (t <= kSkinnyMaxRows) {
    const bool vec = w.vec8() && (reinterpret_cast<uintptr_t>(x) & 15) == 0;
    const unsigned blocks = static_cast<unsigned>(ceil_div(wr.n, kSkinnyWarps));
    if (t <= 8)
      linear_skinny<8><<<blocks, kSkinnyWarps * 32, 0, s>>>(static_cast<int>(t), x, xb, vec, w, wr.n, y, yb);
    else
      linear_skinny<kSkinnyMaxRows><<<blocks, kSkinnyWarps * 32, 0, s>>>(static_cast<int>(t), x, xb, vec, w, wr.n, y, yb);
  } else if (cpu::matmul_precision() == cpu::MatmulPrecision::Highest) {
    if (ceil_div(t, kTile) > 65535) fail(Code::E_SHAPE, "linear (CUDA): %lld rows exceed one launch", static_cast<long long>(t));
    dim3 grid(ceil_div(wr.n, kTile), ceil_div(t, kTile));
    linear_tiled_f32<<<grid, 256, 0, s>>>(t, x, xb, w, wr.n, y, yb);
  } else if (!(wgmma_enabled() && linear_wgmma(t, x, xt, wr, y, yt, stream))) {
    DenseGemm p = dense_problem(t, wr, y, yt);
    p.a = x, p.a_dtype = xt;
    tile::gemm_kernel<DenseGemm, false><<<dense_grid(t, wr.n), tile::kThreads, 0, s>>>(p);
  }
}

size_t linear_fp8_workspace_bytes(int64_t t, int64_t k) {
  return align256(static_cast<size_t>(t * k)) + sizeof(float) * static_cast<size_t>(t * ((k + 127) / 128));
}

void linear_fp8(int64_t t, const void* x, DType xt, const cpu::WeightRef& wr, void* y, DType yt, void* workspace, void* stream) {
  if (wr.dtype != DType::FP8_E4M3) fail(Code::E_INTERNAL, "linear_fp8: the weight is %s", dtype_name(wr.dtype));
  if (t == 0 || wr.n == 0) return;
  auto* q = static_cast<uint8_t*>(workspace);
  auto* qs = reinterpret_cast<float*>(q + align256(static_cast<size_t>(t * wr.k)));
  quantize_fp8_act(t, wr.k, x, xt, q, qs, stream);
  DenseGemm p = dense_problem(t, wr, y, yt);
  p.a = q, p.a_scale = qs, p.a_dtype = DType::FP8_E4M3;
  tile::gemm_kernel<DenseGemm, true><<<dense_grid(t, wr.n), tile::kThreads, 0, static_cast<cudaStream_t>(stream)>>>(p);
}

}  // namespace lc::gpu
