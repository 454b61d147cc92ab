// y[t, n] = x[t, :] . W[n, :] for every weight format (contract: lc::cpu::linear). Paths, chosen on
// the host from the shape and the matmul precision (lc::cpu::matmul_precision):
//   * skinny (t <= 16, decode): gemv.cuh; x staged in shared memory once per block, each warp streams
//     1-4 weight rows with several 16-byte loads in flight per lane and keeps all t x rows' dot
//     products in registers; every format is dequantized on the fly and multiplied in fp32. Odd
//     shapes (K not a whole number of 16-byte units, unaligned rows) take an element-wise kernel.
//   * tensor cores (t > 16): tile_gemm.cuh in bf16 mode, or, for fp8 weights at precision 'fp8',
//     activations quantized to e4m3 (1x128 groups) and the fp8 mode (linear_fp8).
//   * fp32 tiles (t > 16, precision 'highest'): 64x64 CUDA-core tiles, every product in fp32 like the
//     CPU's reference mode.
//   * int4 weights (lc::cpu::linear.h's format): linear_int4_skinny for t <= 16 (16-byte loads of
//     32 codes per lane; moe.cu's decode experts stream int4 through gemv.cuh instead); t > 16 the bf16 tensor-core tiles, the codes dequantized to bf16 in the
//     register hop (tile_gemm.cuh), or the fp32 tiles at precision 'highest'.
#include "include/common.cuh"
#include "kernels.h"
#include "quant.h"
#include "include/gemv.cuh"
#include "include/tile_gemm.cuh"
#include "include/warp.cuh"
#include "include/weights.cuh"

namespace lc::gpu {

namespace {

__device__ __forceinline__ float load_x(const void* x, bool bf16, int64_t i) {
  return bf16 ? bf16_bits_to_f32(static_cast<const uint16_t*>(x)[i]) : static_cast<const float*>(x)[i];
}

__device__ __forceinline__ void store_y(void* y, bool bf16, int64_t i, float v) {
  if (bf16)
    static_cast<uint16_t*>(y)[i] = f32_to_bf16_bits(v);
  else
    static_cast<float*>(y)[i] = v;
}

static_assert(kSkinnyMaxRows + 1 == cpu::kFp8ActivationMinRows, "fp8 activations start where the skinny path ends");
static_assert(kSkinnyMaxRows <= 16, "the skinny kernels keep at most 16 rows in registers");

// Skinny, 16-byte path (gemv.cuh): block = 8 warps x kR weight rows, x staged per block.
template <int kT, int kR, int kU>
__global__ void __launch_bounds__(gemv::kThreads, 2)
    linear_skinny(int t, const void* __restrict__ x, bool xb, WView w, int64_t n, void* __restrict__ y, bool yb) {
  __align__(16) __shared__ float xs[gemv::smem_floats<kT, kU>()];
  const int lane = threadIdx.x & 31;
  const int64_t n0 = (static_cast<int64_t>(blockIdx.x) * gemv::kWarps + threadIdx.x / 32) * kR;
  const int64_t es = w.dtype == DType::F32 ? 4 : w.dtype == DType::BF16 ? 2 : 1;
  gemv::WarpRows<1> rows;
  rows.valid = static_cast<int>(n0 < n ? (n - n0 < kR ? n - n0 : kR) : 0);
  rows.row_bytes = static_cast<int>(w.k * es);
  rows.data[0] = static_cast<const uint8_t*>(w.data) + n0 * rows.row_bytes;
  rows.scale[0] = w.dtype == DType::FP8_E4M3 ? w.scale + (n0 / 128) * w.kb : w.dtype == DType::I8 ? w.scale + n0 : nullptr;
  const gemv::DenseX xv{x, w.k, xb};
  float acc[kR][kT];
  constexpr bool kPrefetch = kT <= 8;  // 16 rows: the registers go to the accumulators (FMA-bound there)
  switch (w.dtype) {
    case DType::F32: gemv::dot_rows<kT, kR, kU, 1, kPrefetch, DType::F32>(t, static_cast<int>(w.k), rows, xv, xs, acc); break;
    case DType::BF16: gemv::dot_rows<kT, kR, kU, 1, kPrefetch, DType::BF16>(t, static_cast<int>(w.k), rows, xv, xs, acc); break;
    case DType::FP8_E4M3:
      gemv::dot_rows<kT, kR, kU, 1, kPrefetch, DType::FP8_E4M3>(t, static_cast<int>(w.k), rows, xv, xs, acc);
      break;
    default: gemv::dot_rows<kT, kR, kU, 1, kPrefetch, DType::I8>(t, static_cast<int>(w.k), rows, xv, xs, acc); break;
  }
#pragma unroll
  for (int i = 0; i < kT; ++i) {
    if (i < t) {
#pragma unroll
      for (int r = 0; r < kR; ++r) {
        const float v = warp_sum(acc[r][i]);
        if (lane == 0 && r < rows.valid) store_y(y, yb, i * n + n0 + r, v);
      }
    }
  }
}

// Skinny, element-wise fallback (rows not 16-byte aligned or K not a multiple of a 16-byte unit,
// which no model has): one warp per output feature, x read from global memory.
constexpr int kScalarWarps = 8;

__global__ void __launch_bounds__(kScalarWarps * 32)
    linear_skinny_scalar(int t, const void* __restrict__ x, bool xb, WView w, int64_t n, void* __restrict__ y, bool yb) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kScalarWarps + threadIdx.x / 32;
  const int lane = threadIdx.x & 31;
  if (row >= n) return;
  float acc[kSkinnyMaxRows];
#pragma unroll
  for (int i = 0; i < kSkinnyMaxRows; ++i) acc[i] = 0.f;
  for (int64_t c = lane; c < w.k; c += 32) {
    const float wv = w.at(row, c);
#pragma unroll
    for (int i = 0; i < kSkinnyMaxRows; ++i)
      if (i < t) acc[i] += wv * load_x(x, xb, i * w.k + c);
  }
#pragma unroll
  for (int i = 0; i < kSkinnyMaxRows; ++i) {
    if (i < t) {
      const float v = warp_sum(acc[i]);
      if (lane == 0) store_y(y, yb, i * n + row, v);
    }
  }
}

// int4 skinny GEMV (t <= 16; format: lc::cpu::linear.h): one warp per weight row, each lane reads
// one 16-byte unit (the codes of 32 columns) per step with a 16-byte load, decodes them with its
// group's scale and zero point (fma(q, s, -z s), the CPU's exact weights) and multiplies them with
// x read through the cache (t * k values shared by every warp). Rows 16-byte aligned (the format's
// rows are whole units; the binding checks the base).
constexpr int kInt4Warps = 8;

template <int kT>
__global__ void __launch_bounds__(kInt4Warps * 32)
    linear_int4_skinny(int t, const void* __restrict__ x, bool xb, WView w, int64_t n, void* __restrict__ y, bool yb) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kInt4Warps + threadIdx.x / 32;
  const int lane = threadIdx.x & 31;
  if (row >= n) return;
  const int64_t units = w.int4_groups() * w.group / 32;
  const uint4* wr = reinterpret_cast<const uint4*>(static_cast<const uint8_t*>(w.data) + row * units * 16);
  float acc[kT];
#pragma unroll
  for (int i = 0; i < kT; ++i) acc[i] = 0.f;
  for (int64_t u = lane; u < units; u += 32) {
    const uint4 v = wr[u];
    const int64_t c0 = u * 32;
    float s, mzs;
    w.int4_params(row, c0 / w.group, s, mzs);
    const uint32_t words[4] = {v.x, v.y, v.z, v.w};
    float wv[32];
#pragma unroll
    for (int j = 0; j < 16; ++j) {
      const uint32_t b = (words[j / 4] >> (8 * (j % 4))) & 0xffu;
      wv[j] = fmaf(static_cast<float>(b & 15u), s, mzs);
      wv[16 + j] = fmaf(static_cast<float>(b >> 4), s, mzs);
    }
    const int cols = c0 + 32 <= w.k ? 32 : static_cast<int>(w.k - c0);  // padding columns past k
#pragma unroll
    for (int i = 0; i < kT; ++i) {
      if (i < t) {
#pragma unroll
        for (int j = 0; j < 32; ++j)
          if (j < cols) acc[i] = fmaf(wv[j], load_x(x, xb, i * w.k + c0 + j), acc[i]);
      }
    }
  }
#pragma unroll
  for (int i = 0; i < kT; ++i) {
    if (i < t) {
      const float v = warp_sum(acc[i]);
      if (lane == 0) store_y(y, yb, i * n + row, v);
    }
  }
}

template <int kT>
void launch_int4_skinny(int64_t t, const void* x, bool xb, const WView& w, int64_t n, void* y, bool yb, cudaStream_t s) {
  linear_int4_skinny<kT>
      <<<static_cast<unsigned>(ceil_div(n, kInt4Warps)), kInt4Warps * 32, 0, s>>>(static_cast<int>(t), x, xb, w, n, y, yb);
}

template <int kT, int kR, int kU>
void launch_skinny(int64_t t, const void* x, bool xb, const WView& w, int64_t n, void* y, bool yb, cudaStream_t s) {
  const unsigned blocks = static_cast<unsigned>(ceil_div(n, gemv::kWarps * kR));
  linear_skinny<kT, kR, kU><<<blocks, gemv::kThreads, 0, s>>>(static_cast<int>(t), x, xb, w, n, y, yb);
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
  const void* a;         // x [t, k] (f32 / bf16), or its e4m3 codes in fp8 mode
  const float* a_scale;  // fp8 mode: [t, kb]
  DType a_dtype, b_dtype;
  const void* w;
  const float* w_scale;
  WView g4;  // int4 weights: the group fields
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
    if (b_dtype == DType::I4) return tile::int4_row(w, g4.group_scale, g4.group, g4.group_scale_f16, g4.group_zero, k, row);
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
  p.g4 = WView{w.data, w.scale, w.dtype, w.k, p.kb, w.group_scale, w.group, w.group_scale_f16, w.group_zero};
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
  const WView w{wr.data,        wr.scale, wr.dtype,           wr.k,         (wr.k + 127) / 128,
                wr.group_scale, wr.group, wr.group_scale_f16, wr.group_zero};
  const bool xb = xt == DType::BF16, yb = yt == DType::BF16;
  if (wr.dtype == DType::I4) {
    // Decode: the int4 GEMV. Prefill: the bf16 tensor-core tiles (codes dequantized to bf16 in the
    // register hop), or the fp32 tiles at precision 'highest'.
    if (t <= 1)
      launch_int4_skinny<1>(t, x, xb, w, wr.n, y, yb, s);
    else if (t <= 4)
      launch_int4_skinny<4>(t, x, xb, w, wr.n, y, yb, s);
    else if (t <= kSkinnyMaxRows)
      launch_int4_skinny<kSkinnyMaxRows>(t, x, xb, w, wr.n, y, yb, s);
    else if (cpu::matmul_precision() == cpu::MatmulPrecision::Highest) {
      if (ceil_div(t, kTile) > 65535)
        fail(Code::E_SHAPE, "linear (CUDA): %lld rows exceed one launch", static_cast<long long>(t));
      linear_tiled_f32<<<dim3(ceil_div(wr.n, kTile), ceil_div(t, kTile)), 256, 0, s>>>(t, x, xb, w, wr.n, y, yb);
    } else {
      DenseGemm p = dense_problem(t, wr, y, yt);
      p.a = x, p.a_dtype = xt;
      tile::gemm_kernel<DenseGemm, false><<<dense_grid(t, wr.n), tile::kThreads, 0, s>>>(p);
    }
    return;
  }
  if (t <= kSkinnyMaxRows) {
    // Rows per warp (kR) and 16-byte units per lane and row (kU) by batch: one row is bandwidth-
    // bound (4 loads in flight per lane, plus 4 prefetched); from 2 rows on, every shared-memory x
    // value feeds 2-4 weight rows so the FMAs, not shared memory, set the pace.
    if (w.units16() && (reinterpret_cast<uintptr_t>(x) & 15) == 0) {
      if (t == 1)
        launch_skinny<1, 1, 4>(t, x, xb, w, wr.n, y, yb, s);
      else if (t == 2)
        launch_skinny<2, 2, 2>(t, x, xb, w, wr.n, y, yb, s);
      else if (t <= 4)
        launch_skinny<4, 4, 1>(t, x, xb, w, wr.n, y, yb, s);
      else if (t <= 8)
        launch_skinny<8, 4, 1>(t, x, xb, w, wr.n, y, yb, s);
      else
        launch_skinny<kSkinnyMaxRows, 4, 1>(t, x, xb, w, wr.n, y, yb, s);
    } else {
      linear_skinny_scalar<<<static_cast<unsigned>(ceil_div(wr.n, kScalarWarps)), kScalarWarps * 32, 0, s>>>(
          static_cast<int>(t), x, xb, w, wr.n, y, yb);
    }
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
