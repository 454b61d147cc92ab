// Grouped-expert MoE with zero experts on CUDA (contract: native/cpu/moe.h moe(); launcher: moe.h).
// Everything runs on the device, in stream order, without a host round trip:
//   1. init      ctrl = {bad slot = INT_MAX, tiles = 0}, counts = 0
//   2. count     one thread per slot (t * k): validates idx (atomicMin of the first bad slot),
//                counts routed slots per expert (integer atomics: the counts do not depend on order)
//   3. schedule  one block: exclusive scans of the counts (row offsets of each expert in the
//                sorted order) and of the per-expert tile counts; writes the tile list
//                (expert, first row, rows) of the contiguous expert layout (DeepGEMM "contiguous")
//   4. place     one block per routed expert: a stable block-wide ballot scan over the slots gives
//                each of the expert's slots its rank, so sorted = slots in (expert, slot) order
//                whatever the scheduling (no atomics-order dependence)
//   4b. permute  (act-order experts only) xp[slot] = u[slot / k] in the column order of the slot's
//                expert (its perm); the GEMMs then read xp[slot] as if k were 1
//   5. gate/up   GEMM over the tiles: x rows gathered on the fly (u[slot / k]), gate and up of the
//                same output columns in one pass, SwiGLU epilogue -> act [rows, inter] f32
//   6. down      GEMM over the same tiles: act -> y [rows, h] f32
//   7. combine   one block per token: its valid slots ranked by (expert, slot); out = sum over routed
//                slots of w * y in that order, then + (sum of zero-expert weights in that order) * u,
//                with explicitly rounded fp32 mul/add (no FMA contraction), like the CPU.
// GEMM paths (host choice from shapes and the matmul precision): "skinny" (decode, at most 16 slots
// per routed expert on average: tiles of <= 16 rows; gemv.cuh: x rows staged in shared memory, each
// weight row streamed once per tile, 16-byte loads (int4: 32 codes each, decoded to the CPU's exact
// weights; gate/up for one-row tiles, down in passes of <= 4 rows), fp32 FMA; the device-built tile list plays the role
// of DeepGEMM's "masked" layout: a fixed launch that graph capture can replay, each expert's real
// row count read on the device), and 64-row tiles for prefill: tile_gemm.cuh on tensor cores (bf16,
// or e4m3 with fp8 activations when `fp8`), or fp32 CUDA-core tiles at precision 'highest'
// (64 columns, 32-wide K slabs in shared memory, 4x4 register blocking).
// A bad idx sets ctrl[0]; every later stage then does nothing (out untouched).
#include <algorithm>
#include <climits>

#include "include/common.cuh"
#include "moe.h"
#include "../native/cpu/linear.h"
#include "include/gemv.cuh"
#include "quant.h"
#include "include/tile_gemm.cuh"
#include "include/warp.cuh"
#include "include/weights.cuh"

namespace lc::gpu {
namespace {

constexpr int kSkinnyRows = 16;  // rows per tile, skinny path (an expert with <= 16 rows reads its weights once)
constexpr int kSkinnyWarps = 8;  // warps per block, skinny path
constexpr int kTiled = 64;       // rows and columns per tile, tiled path
constexpr int kSlab = 32;        // K slab, tiled path
static_assert(kTiled == tile::kBM, "the 64-row tile schedule feeds the tensor-core GEMM too");

size_t align256(size_t b) { return (b + 255) & ~static_cast<size_t>(255); }

struct Layout {
  size_t ctrl, counts, offsets, pos, sorted, tiles, act, y, uq, us, aq, as, xp, total;
  int64_t tile_cap;
};

Layout layout(int64_t t, int64_t k, int64_t h, int64_t inter, int64_t nr, bool fp8, bool permuted) {
  const int64_t ns = t * k;
  Layout L;
  L.tile_cap = nr > 0 ? (ns + kSkinnyRows - 1) / kSkinnyRows + std::min(nr, ns) : 0;  // >= the tiled path's count too
  const size_t rows = nr > 0 ? static_cast<size_t>(ns) : 0;
  L.ctrl = 0;
  L.counts = align256(4 * sizeof(int32_t));
  L.offsets = L.counts + align256(sizeof(int32_t) * static_cast<size_t>(nr));
  L.pos = L.offsets + align256(sizeof(int32_t) * static_cast<size_t>(nr + 1));
  L.sorted = L.pos + align256(sizeof(int32_t) * static_cast<size_t>(ns));
  L.tiles = L.sorted + align256(sizeof(int32_t) * static_cast<size_t>(ns));
  L.act = L.tiles + align256(3 * sizeof(int32_t) * static_cast<size_t>(L.tile_cap));
  L.y = L.act + align256(sizeof(float) * rows * static_cast<size_t>(inter));
  L.uq = L.y + align256(sizeof(float) * rows * static_cast<size_t>(h));
  // fp8: u and act quantized to e4m3 with 1x128 group scales
  const size_t tq = fp8 ? static_cast<size_t>(t) : 0, rq = fp8 ? rows : 0;
  L.us = L.uq + align256(tq * static_cast<size_t>(h));
  L.aq = L.us + align256(sizeof(float) * tq * static_cast<size_t>((h + 127) / 128));
  L.as = L.aq + align256(rq * static_cast<size_t>(inter));
  L.xp = L.as + align256(sizeof(float) * rq * static_cast<size_t>((inter + 127) / 128));
  L.total = L.xp + align256(sizeof(float) * (permuted ? rows : 0) * static_cast<size_t>(h));
  return L;
}

__device__ __forceinline__ WView view(const MoeWeight& m, int64_t k) {
  return WView{m.data, m.scale, m.dtype, k, (k + 127) / 128, m.group_scale, m.group, m.group_scale_f16, m.group_zero};
}

// ---- routing stages -----------------------------------------------------------------------------

__global__ void init_kernel(int32_t* ctrl, int32_t* counts, int64_t nr) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i == 0) {
    ctrl[0] = INT_MAX;  // first bad slot
    ctrl[1] = 0;        // tiles
  }
  if (i < nr) counts[i] = 0;
}

__global__ void count_kernel(int64_t ns, const int32_t* __restrict__ idx, int64_t nr, int64_t n_experts, int32_t* ctrl,
                             int32_t* counts, int32_t* __restrict__ pos) {
  const int64_t s = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (s >= ns) return;
  const int64_t e = idx[s];
  pos[s] = -1;
  if (e < 0 || e >= n_experts)
    atomicMin(&ctrl[0], static_cast<int32_t>(s));
  else if (e < nr)
    atomicAdd(&counts[e], 1);
}

// Exclusive scan of one value per thread over the block (blockDim.x a multiple of 32); `total`
// gets the block sum. `sh` holds >= 32 ints. Must be called by every thread.
__device__ int block_scan(int v, int& total, int* sh) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  int x = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int y = __shfl_up_sync(0xffffffffu, x, o);
    if (lane >= o) x += y;
  }
  if (lane == 31) sh[warp] = x;
  __syncthreads();
  if (warp == 0) {
    int s = lane < nw ? sh[lane] : 0;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int y = __shfl_up_sync(0xffffffffu, s, o);
      if (lane >= o) s += y;
    }
    sh[lane] = s;  // inclusive warp totals
  }
  __syncthreads();
  const int before = warp > 0 ? sh[warp - 1] : 0;
  total = sh[nw - 1];
  __syncthreads();  // sh is reused by the next call
  return before + x - v;
}

constexpr int kScanThreads = 1024;

__global__ void __launch_bounds__(kScanThreads)
    schedule_kernel(int64_t nr, int bm, const int32_t* __restrict__ counts, int32_t* __restrict__ offsets,
                    int32_t* __restrict__ tiles, int32_t* ctrl, int64_t cap) {
  __shared__ int sh[32];
  if (ctrl[0] != INT_MAX) {  // bad idx: no tiles (uniform: every thread reads the same value)
    if (threadIdx.x == 0) ctrl[1] = 0;
    return;
  }
  int64_t rows = 0, ntiles = 0;
  for (int64_t base = 0; base < nr; base += kScanThreads) {
    const int64_t e = base + threadIdx.x;
    const int cnt = e < nr ? counts[e] : 0, nt = (cnt + bm - 1) / bm;
    int trows, ttiles;
    const int rx = block_scan(cnt, trows, sh);
    const int tx = block_scan(nt, ttiles, sh);
    if (e < nr) {
      const int64_t off = rows + rx;
      offsets[e] = static_cast<int32_t>(off);
      for (int q = 0; q < nt; ++q) {
        const int64_t ti = ntiles + tx + q;
        if (ti >= cap) break;  // cannot happen (cap bounds every schedule); keeps writes in bounds
        tiles[3 * ti] = static_cast<int32_t>(e);
        tiles[3 * ti + 1] = static_cast<int32_t>(off + static_cast<int64_t>(q) * bm);
        tiles[3 * ti + 2] = min(bm, cnt - q * bm);
      }
    }
    rows += trows;
    ntiles += ttiles;
  }
  if (threadIdx.x == 0) {
    offsets[nr] = static_cast<int32_t>(rows);
    ctrl[1] = static_cast<int32_t>(ntiles < cap ? ntiles : cap);
  }
}

constexpr int kPlaceThreads = 256;

__global__ void __launch_bounds__(kPlaceThreads)
    place_kernel(int64_t ns, const int32_t* __restrict__ idx, const int32_t* __restrict__ counts,
                 const int32_t* __restrict__ offsets, const int32_t* ctrl, int32_t* __restrict__ sorted,
                 int32_t* __restrict__ pos) {
  __shared__ int wc[kPlaceThreads / 32];
  const int e = blockIdx.x;
  if (ctrl[0] != INT_MAX || counts[e] == 0) return;  // uniform over the block
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  int64_t run = offsets[e];
  for (int64_t s0 = 0; s0 < ns; s0 += kPlaceThreads) {
    const int64_t s = s0 + threadIdx.x;
    const bool f = s < ns && idx[s] == e;
    const unsigned ball = __ballot_sync(0xffffffffu, f);
    if (lane == 0) wc[warp] = __popc(ball);
    __syncthreads();
    int before = 0, total = 0;
#pragma unroll
    for (int w = 0; w < kPlaceThreads / 32; ++w) {
      before += w < warp ? wc[w] : 0;
      total += wc[w];
    }
    if (f) {
      const int64_t p = run + before + __popc(ball & ((1u << lane) - 1u));
      sorted[p] = static_cast<int32_t>(s);
      pos[s] = static_cast<int32_t>(p);
    }
    run += total;
    __syncthreads();  // wc is rewritten next round
  }
}

// Act-order experts: one block per slot s routed to expert e (< nr) writes xp[s] = u[s / k] gathered
// by e's perm (or copied when e has none). Zero-expert and bad slots are skipped (never read).
__global__ void permute_kernel(int64_t ns, int64_t k, int64_t h, int64_t nr, const int32_t* __restrict__ idx,
                               const MoeWeight* __restrict__ table, const int32_t* ctrl, const float* __restrict__ u,
                               float* __restrict__ xp) {
  const int64_t s = blockIdx.x;
  if (ctrl[0] != INT_MAX || s >= ns) return;
  const int e = idx[s];
  if (e < 0 || e >= nr) return;
  const int32_t* perm = table[e].perm;
  const float* src = u + (s / k) * h;
  float* dst = xp + s * h;
  for (int64_t c = threadIdx.x; c < h; c += blockDim.x) dst[c] = src[perm ? perm[c] : c];
}

// ---- expert GEMMs -------------------------------------------------------------------------------

struct GemmArgs {
  int64_t k;  // slots per token
  int64_t h, inter;
  int64_t nr;
  const float* u;
  const int32_t* sorted;
  const int32_t* tiles;
  const int32_t* ctrl;
  const MoeWeight* table;
  float* act;  // [rows, inter]
  float* y;    // [rows, h]
  bool xvec;   // x rows 16-byte aligned (K % 4 == 0, aligned base)
};

// Skinny (gemv.cuh): block = (tile of <= 16 rows, 8 warps x kSkinnyFeatures output features);
// the tile's x rows are staged in shared memory once per block and every weight row streams once
// per tile, so an expert with up to 16 rows reads its weights once. Gate/up: each warp holds one
// feature of both matrices, down: 4 features. The tile's row count picks the register-blocked
// body (1, <= 4 or <= 16 rows; one kernel, so graph replays need no host choice).
template <bool kGateUp>
constexpr int kSkinnyFeatures = kGateUp ? 1 : 4;  // per warp

// Tile row i of the activations: gate/up gathers u[sorted slot / k], down reads act row r0 + i.
struct TileX {
  const float* const* rows;  // [kSkinnyRows] row starts (shared memory)
  __device__ __forceinline__ float4 load4(int i, int64_t c) const { return *reinterpret_cast<const float4*>(rows[i] + c); }
};

// Lanes f < nf store feature n0 + f of tile row i (one coalesced store per row).
template <bool kGateUp>
__device__ __forceinline__ void skinny_store(const GemmArgs& a, int64_t r0, int i, int64_t n0, int nf, int64_t N, float g,
                                             float v) {
  const int f = threadIdx.x & 31;
  const int64_t n = n0 + f;
  if (f < nf && n < N) {
    if (kGateUp)
      a.act[(r0 + i) * a.inter + n] = tile::silu_mul(g, v);
    else
      a.y[(r0 + i) * a.h + n] = g;
  }
}

// The warp's features n0 .. n0 + kSkinnyFeatures for the tile's m <= kT rows, every body within the
// 128 registers of two blocks per SM. Down: 4 weight rows per lane, or, for 9-16 rows, two passes
// over K of 2 features (the weights are still read once). Gate/up: 2 weight rows per lane (gate
// and up of one feature), 2 units per row up to 4 tile rows. One tile row: the next chunk's loads
// are prefetched too (8 loads in flight per lane).
// ptxas (13.0) spilled the int4 4-row down body on sm_89 in one pass and on sm_90a in two. The
// emulator runs the split (its int4-only part: the scale rows' offset); the one-pass body is the
// same code with kPasses = 1 (emulated while it was the only one: the op cases passed on both).
#if (defined(__CUDA_ARCH__) && __CUDA_ARCH__ == 890) || defined(LC_CUDA_EMU)
constexpr bool kInt4DownSplit = true;
#else
constexpr bool kInt4DownSplit = false;
#endif

template <bool kGateUp, int kT, DType D>
__device__ __forceinline__ void skinny_tile(const GemmArgs& a, int m, int64_t r0, int64_t n0, int64_t N, int64_t K,
                                            const gemv::WarpRows<kGateUp ? 2 : 1>& rows, const TileX& x, float* xs) {
  // int4 (a scale and -z s per row and unit) within 128 registers: one unit per row and lane, and
  // on sm_89 down's 4-row body in two passes of 2 features (kInt4DownSplit)
  constexpr bool kI4 = D == DType::I4;
  constexpr int kM = kGateUp ? 2 : 1, kPasses = !kGateUp && (kT > 8 || (kI4 && kT > 1 && kInt4DownSplit)) ? 2 : 1,
                kU = kGateUp && kT <= 4 && !kI4 ? 2 : 1;
  constexpr int kF = kSkinnyFeatures<kGateUp> / kPasses, kR = kM * kF;
  static_assert(gemv::smem_floats<kT, kU, gemv::Fmt<D>::kElems>() <= gemv::smem_floats<kSkinnyRows, 1>(), "skinny_kernel's xs");
  const int lane = threadIdx.x & 31;
#pragma unroll 1
  for (int p = 0; p < kPasses; ++p) {
    gemv::WarpRows<kM> pr = rows;
    const int skip = p * kF;
    pr.valid = rows.valid - skip < 0 ? 0 : rows.valid - skip < kF ? rows.valid - skip : kF;
#pragma unroll
    for (int mm = 0; mm < kM; ++mm) {
      pr.data[mm] += skip * rows.row_bytes;
      if (D == DType::I8) pr.scale[mm] += skip;  // fp8: the warp's rows share one scale row
      if (D == DType::I4) pr.gscale[mm] += skip * rows.gstride;
    }
    float acc[kR][kT];
    gemv::dot_rows<kT, kR, kU, kM, kT == 1, D>(m, static_cast<int>(K), pr, x, xs, acc);
    // every row's sums first (lane f keeps feature f), then one store per row
    float g[kT], v[kT];
#pragma unroll
    for (int i = 0; i < kT; ++i) {
      g[i] = v[i] = 0.f;
      if (i < m) {
#pragma unroll
        for (int f = 0; f < kF; ++f) {
          const float gf = warp_sum(acc[f][i]), vf = kGateUp ? warp_sum(acc[kF + f][i]) : 0.f;
          if (lane == f) g[i] = gf, v[i] = vf;
        }
      }
    }
#pragma unroll
    for (int i = 0; i < kT; ++i)
      if (i < m) skinny_store<kGateUp>(a, r0, i, n0 + skip, kF, N, g[i], v[i]);
  }
}

// int4 within 128 registers (the scale and -z s per row and unit, the decode): gate/up one tile
// row (m == 1; more rows take the element-wise path, see skinny_kernel), down 1 row or passes of
// <= 4 rows (each pass after the first reads the weights again, mostly from L2; decode rarely gives
// an expert 5+ rows).
template <bool kGateUp, DType D>
__device__ __forceinline__ void skinny_dispatch(const GemmArgs& a, int m, int64_t r0, int64_t n0, int64_t N, int64_t K,
                                                const gemv::WarpRows<kGateUp ? 2 : 1>& rows, const TileX& x, float* xs) {
  if constexpr (D == DType::I4) {
    if (m == 1 || kGateUp)
      skinny_tile<kGateUp, 1, D>(a, m, r0, n0, N, K, rows, x, xs);
    else
#pragma unroll 1
      for (int i0 = 0; i0 < m; i0 += 4)  // uniform over the block
        skinny_tile<kGateUp, 4, D>(a, m - i0 < 4 ? m - i0 : 4, r0 + i0, n0, N, K, rows, TileX{x.rows + i0}, xs);
  } else {
    if (m == 1)
      skinny_tile<kGateUp, 1, D>(a, m, r0, n0, N, K, rows, x, xs);
    else if (m <= 4)
      skinny_tile<kGateUp, 4, D>(a, m, r0, n0, N, K, rows, x, xs);
    else
      skinny_tile<kGateUp, kSkinnyRows, D>(a, m, r0, n0, N, K, rows, x, xs);
  }
}

// Two blocks per SM (128 registers) where e4m3 converts in hardware (sm_89+); before that the
// software fp8 decode needs a few more registers than 128, and one block per SM keeps it unspilled.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 890
constexpr int kSkinnyMinBlocks = 1;
#else
constexpr int kSkinnyMinBlocks = 2;
#endif

template <bool kGateUp>
__global__ void __launch_bounds__(gemv::kThreads, kSkinnyMinBlocks) skinny_kernel(GemmArgs a, int64_t nblk) {
  static_assert(kSkinnyRows <= 16 && gemv::kWarps == kSkinnyWarps, "gemv.cuh's block shape");
  __align__(16) __shared__ float xs[gemv::smem_floats<kSkinnyRows, 1>()];
  __shared__ const float* xrow[kSkinnyRows];
  const int64_t tile = blockIdx.x / nblk, nb = blockIdx.x % nblk;
  if (tile >= a.ctrl[1]) return;  // uniform over the block
  constexpr int kM = kGateUp ? 2 : 1, kF = kSkinnyFeatures<kGateUp>;
  const int64_t N = kGateUp ? a.inter : a.h, K = kGateUp ? a.h : a.inter;
  const int lane = threadIdx.x & 31;
  const int64_t n0 = (nb * kSkinnyWarps + threadIdx.x / 32) * kF;
  const int64_t e = a.tiles[3 * tile], r0 = a.tiles[3 * tile + 1];
  const int m = a.tiles[3 * tile + 2];
  if (threadIdx.x < kSkinnyRows) {
    const int i = threadIdx.x;
    xrow[i] = i < m ? (kGateUp ? a.u + static_cast<int64_t>(a.sorted[r0 + i] / a.k) * a.h : a.act + (r0 + i) * a.inter) : nullptr;
  }
  const WView w0 = view(a.table[(kGateUp ? 0 : 2) * a.nr + e], K);
  const WView w1 = view(a.table[a.nr + e], K);  // up (gate/up only)
  const bool i4 = w0.dtype == DType::I4;
  const bool same =
      !kGateUp || (w1.units16() && w1.dtype == w0.dtype &&
                   (!i4 || (w1.group == w0.group && w1.group_scale_f16 == w0.group_scale_f16 && w1.group_zero == w0.group_zero)));
  // int4 gate/up streams one tile row at a time (m == 1, decode's common case); more rows take the
  // element-wise path below (a wider int4 gate/up body spilled at 128 registers)
  const bool vec = a.xvec && w0.units16() && same && !(kGateUp && i4 && m > 1);  // uniform
  if (vec) {
    gemv::WarpRows<kM> rows;
    const int64_t es = w0.dtype == DType::F32 ? 4 : w0.dtype == DType::BF16 ? 2 : 1;
    rows.valid = static_cast<int>(n0 < N ? (N - n0 < kF ? N - n0 : kF) : 0);
    rows.row_bytes = static_cast<int>(i4 ? w0.int4_groups() * w0.group / 2 : K * es);
    rows.gstride = static_cast<int>(i4 ? w0.int4_groups() * (w0.group_zero ? 2 : 1) : 0);
    rows.group = static_cast<int>(w0.group);
    rows.f16 = w0.group_scale_f16, rows.zero = w0.group_zero;
#pragma unroll
    for (int mm = 0; mm < kM; ++mm) {
      const WView& w = mm == 0 ? w0 : w1;
      rows.data[mm] = static_cast<const uint8_t*>(w.data) + n0 * rows.row_bytes;
      rows.scale[mm] = w.dtype == DType::FP8_E4M3 ? w.scale + (n0 / 128) * w.kb : w.dtype == DType::I8 ? w.scale + n0 : nullptr;
      rows.gscale[mm] = i4 ? w.group_scale + n0 * rows.gstride : nullptr;
    }
    const TileX x{xrow};  // published by dot_rows' first barrier
    switch (w0.dtype) {
      case DType::F32: skinny_dispatch<kGateUp, DType::F32>(a, m, r0, n0, N, K, rows, x, xs); break;
      case DType::BF16: skinny_dispatch<kGateUp, DType::BF16>(a, m, r0, n0, N, K, rows, x, xs); break;
      case DType::FP8_E4M3: skinny_dispatch<kGateUp, DType::FP8_E4M3>(a, m, r0, n0, N, K, rows, x, xs); break;
      case DType::I4: skinny_dispatch<kGateUp, DType::I4>(a, m, r0, n0, N, K, rows, x, xs); break;
      default: skinny_dispatch<kGateUp, DType::I8>(a, m, r0, n0, N, K, rows, x, xs); break;
    }
    return;
  }
  // Element-wise (K not a whole number of 16-byte units, unaligned rows): x from global memory.
  __syncthreads();  // xrow
  for (int f = 0; f < kF; ++f) {
    const int64_t n = n0 + f;
    float acc0[kSkinnyRows], acc1[kSkinnyRows];
#pragma unroll
    for (int i = 0; i < kSkinnyRows; ++i) acc0[i] = acc1[i] = 0.f;
    for (int64_t c = lane; n < N && c < K; c += 32) {
      const float g = w0.at(n, c), v = kGateUp ? w1.at(n, c) : 0.f;
#pragma unroll
      for (int i = 0; i < kSkinnyRows; ++i) {
        if (i < m) {
          const float xv = xrow[i][c];
          acc0[i] += g * xv;
          if (kGateUp) acc1[i] += v * xv;
        }
      }
    }
#pragma unroll
    for (int i = 0; i < kSkinnyRows; ++i) {
      if (i < m) {
        const float g = warp_sum(acc0[i]), v = kGateUp ? warp_sum(acc1[i]) : 0.f;
        if (lane == 0) skinny_store<kGateUp>(a, r0, i, n, 1, N, g, v);
      }
    }
  }
}

// Tiled: block = (tile of <= 64 rows, 64 output columns), 256 threads with 4 x 4 outputs each.
// (256, 1): without the minimum-blocks hint ptxas held sm_89 to 80 registers and spilled around
// SwiGLU's division slow path; 96 still leaves room for two blocks per SM.
template <bool kGateUp>
__global__ void __launch_bounds__(256, 1) tiled_kernel(GemmArgs a, int64_t nblk) {
  __shared__ float xs[kSlab][kTiled + 1];
  __shared__ float ws0[kSlab][kTiled + 1];
  __shared__ float ws1[kGateUp ? kSlab : 1][kTiled + 1];
  __shared__ const float* xrow[kTiled];
  // 32-bit division (nblk and the slot count are small): a 64-bit one is a call whose saved
  // registers spilled
  const int64_t tile = blockIdx.x / static_cast<unsigned>(nblk), nb = blockIdx.x % static_cast<unsigned>(nblk);
  if (tile >= a.ctrl[1]) return;  // uniform over the block
  const int64_t N = kGateUp ? a.inter : a.h, K = kGateUp ? a.h : a.inter;
  const int64_t e = a.tiles[3 * tile], r0 = a.tiles[3 * tile + 1], n0 = nb * kTiled;
  const int m = a.tiles[3 * tile + 2];
  if (threadIdx.x < kTiled) {
    const int i = threadIdx.x;
    xrow[i] = i < m ? (kGateUp ? a.u + static_cast<int64_t>(a.sorted[r0 + i] / static_cast<int32_t>(a.k)) * a.h
                               : a.act + (r0 + i) * a.inter)
                    : nullptr;
  }
  const WView w0 = view(a.table[(kGateUp ? 0 : 2) * a.nr + e], K);
  const WView w1 = view(a.table[a.nr + e], K);
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  float acc0[4][4] = {}, acc1[4][4] = {};
  __syncthreads();
  for (int64_t k0 = 0; k0 < K; k0 += kSlab) {
    for (int i = threadIdx.x; i < kSlab * kTiled; i += 256) {
      const int kk = i % kSlab, r = i / kSlab;
      const int64_t c = k0 + kk;
      const bool cin = c < K;
      xs[kk][r] = (r < m && cin) ? xrow[r][c] : 0.f;
      ws0[kk][r] = (n0 + r < N && cin) ? w0.at(n0 + r, c) : 0.f;
      if (kGateUp) ws1[kk][r] = (n0 + r < N && cin) ? w1.at(n0 + r, c) : 0.f;
    }
    __syncthreads();
#pragma unroll 8
    for (int kk = 0; kk < kSlab; ++kk) {
      float xv[4], b0[4], b1[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        xv[i] = xs[kk][ty * 4 + i];
        b0[i] = ws0[kk][tx * 4 + i];
        if (kGateUp) b1[i] = ws1[kk][tx * 4 + i];
      }
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          acc0[i][j] += xv[i] * b0[j];
          if (kGateUp) acc1[i][j] += xv[i] * b1[j];
        }
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int r = ty * 4 + i;
      const int64_t n = n0 + tx * 4 + j;
      if (r < m && n < N) {
        if (kGateUp)
          a.act[(r0 + r) * a.inter + n] = tile::silu_mul(acc0[i][j], acc1[i][j]);
        else
          a.y[(r0 + r) * a.h + n] = acc0[i][j];
      }
    }
}

// Tensor-core path (tile_gemm.cuh) over the same 64-row tile schedule: gate/up pairs with the
// SwiGLU epilogue (x rows gathered from u by slot), then down. bf16 mode reads the f32 u / act and
// the experts' stored weights; fp8 mode reads their e4m3 quantizations and fp8 experts.
template <bool kGU>
struct MoeTileGemm {
  static constexpr bool kGateUp = kGU;
  struct Tile {
    int64_t e, r0, n0;
    int m;
  };
  int64_t nblk;           // column blocks per tile
  const int32_t* tiles;   // (expert, first row, rows)
  const int32_t* ctrl;    // ctrl[1]: tiles scheduled
  const int32_t* sorted;  // gate/up: sorted row -> slot
  int64_t slots;          // top-k slots per token
  int64_t k, kb, nout;    // this GEMM's K, ceil(K / 128), N
  DType a_dtype;
  const void* a;         // gate/up: u [t, h]; down: act [rows, inter] (f32, or e4m3 codes in fp8 mode)
  const float* a_scale;  // fp8 mode: their 1x128 group scales
  const MoeWeight* table;
  int64_t nr;
  float* out;  // gate/up: act; down: y

  __device__ bool tile(Tile& tl) const {
    const int64_t ti = blockIdx.x / static_cast<unsigned>(nblk);  // 32-bit division: nblk is small
    if (ti >= ctrl[1]) return false;
    tl.e = tiles[3 * ti], tl.r0 = tiles[3 * ti + 1], tl.m = tiles[3 * ti + 2];
    tl.n0 = static_cast<int64_t>(blockIdx.x % static_cast<unsigned>(nblk)) * (kGU ? tile::kBN / 2 : tile::kBN);
    return true;
  }
  __device__ tile::Row a_row(const Tile& tl, int r) const {
    if (r >= tl.m) return {};
    const int64_t row = kGU ? sorted[tl.r0 + r] / static_cast<int32_t>(slots) : tl.r0 + r;  // slots <= kMaxK
    const int64_t es = a_dtype == DType::F32 ? 4 : 1;
    return {static_cast<const char*>(a) + row * k * es, a_scale ? a_scale + row * kb : nullptr};
  }
  __device__ const MoeWeight& weight(const Tile& tl, int which) const { return table[(kGU ? which : 2) * nr + tl.e]; }
  __device__ tile::Row b_row(const Tile& tl, int r) const {
    const int64_t n = tl.n0 + (kGU ? r % (tile::kBN / 2) : r);
    if (n >= nout) return {};
    const MoeWeight& w = weight(tl, kGU ? r / (tile::kBN / 2) : 0);
    if (w.dtype == DType::I4) return tile::int4_row(w.data, w.group_scale, w.group, w.group_scale_f16, w.group_zero, k, n);
    const int64_t es = w.dtype == DType::F32 ? 4 : w.dtype == DType::BF16 ? 2 : 1;
    const float* sc = w.dtype == DType::FP8_E4M3 ? w.scale + (n / 128) * kb : w.dtype == DType::I8 ? w.scale + n : nullptr;
    return {static_cast<const char*>(w.data) + n * k * es, sc, w.dtype};
  }
  __device__ const float* b_scales(const Tile& tl, int which) const { return weight(tl, which).scale + (tl.n0 / 128) * kb; }
  __device__ void store2(const Tile& tl, int r, int c, float v0, float v1) const {
    const int64_t col = tl.n0 + c;
    if (r >= tl.m || col >= nout) return;
    float* d = out + (tl.r0 + r) * nout + col;
    if (col + 1 < nout && (reinterpret_cast<uintptr_t>(d) & 7) == 0) {  // one 8-byte store
      *reinterpret_cast<float2*>(d) = make_float2(v0, v1);
      return;
    }
    d[0] = v0;
    if (col + 1 < nout) d[1] = v1;
  }
};

// ---- combine ------------------------------------------------------------------------------------

constexpr int kCombineThreads = 256;
constexpr int64_t kMaxK = 8192;

__global__ void __launch_bounds__(kCombineThreads)
    combine_kernel(int64_t k, int64_t h, int64_t nr, const float* __restrict__ u, const int32_t* __restrict__ idx,
                   const float* __restrict__ w, const int32_t* __restrict__ pos, const float* __restrict__ y, const int32_t* ctrl,
                   float* __restrict__ out) {
  extern __shared__ int32_t order[];  // [k]: the token's slots j in (expert, slot) order
  if (ctrl[0] != INT_MAX) return;     // bad idx somewhere: out untouched (uniform)
  const int64_t tok = blockIdx.x;
  const int32_t* ix = idx + tok * k;
  for (int64_t j = threadIdx.x; j < k; j += kCombineThreads) {
    const int32_t e = ix[j];
    int64_t r = 0;
    for (int64_t q = 0; q < k; ++q) r += (ix[q] < e || (ix[q] == e && q < j)) ? 1 : 0;
    order[r] = static_cast<int32_t>(j);
  }
  __syncthreads();
  const float* ur = u + tok * h;
  const float* wr = w + tok * k;
  const int32_t* pr = pos + tok * k;
  for (int64_t c = threadIdx.x; c < h; c += kCombineThreads) {
    float o = 0.0f, z = 0.0f;
    bool any = false;
    for (int64_t q = 0; q < k; ++q) {
      const int64_t j = order[q];
      if (ix[j] < nr) {
        const int64_t p = pr[j];  // >= 0 for every routed slot once place_kernel ran
        if (p >= 0) o = __fadd_rn(o, __fmul_rn(wr[j], y[p * h + c]));
      } else {
        z = __fadd_rn(z, wr[j]);
        any = true;
      }
    }
    if (any) o = __fadd_rn(o, __fmul_rn(z, ur[c]));
    out[tok * h + c] = o;
  }
}

void check_grid(int64_t blocks) {
  if (blocks > 0x7fffffffLL)
    fail(Code::E_SHAPE, "moe (CUDA): %lld thread blocks exceed the grid limit", static_cast<long long>(blocks));
}

}  // namespace

size_t moe_workspace_bytes(int64_t t, int64_t k, int64_t h, int64_t inter, int64_t n_routed, bool fp8, bool permuted) {
  return layout(t, k, h, inter, n_routed, fp8, permuted).total;
}

void moe(int64_t t, int64_t k, int64_t h, int64_t inter, const float* u, const int32_t* idx, const float* w,
         const MoeWeight* table, int64_t n_routed, int64_t n_experts, float* out, bool fp8, bool permuted, void* workspace,
         size_t workspace_bytes, void* stream) {
  const int64_t ns = t * k, nr = n_routed;
  if (ns <= 0 || h <= 0) return;
  if (k > kMaxK)
    fail(Code::E_SHAPE, "moe (CUDA): k = %lld slots per token exceeds %lld", static_cast<long long>(k),
         static_cast<long long>(kMaxK));
  const Layout L = layout(t, k, h, inter, nr, fp8, permuted);
  if (workspace_bytes < L.total) fail(Code::E_INTERNAL, "moe (CUDA): workspace too small");
  auto s = static_cast<cudaStream_t>(stream);
  char* ws = static_cast<char*>(workspace);
  int32_t* ctrl = reinterpret_cast<int32_t*>(ws + L.ctrl);
  int32_t* counts = reinterpret_cast<int32_t*>(ws + L.counts);
  int32_t* offsets = reinterpret_cast<int32_t*>(ws + L.offsets);
  int32_t* pos = reinterpret_cast<int32_t*>(ws + L.pos);
  int32_t* sorted = reinterpret_cast<int32_t*>(ws + L.sorted);
  int32_t* tiles = reinterpret_cast<int32_t*>(ws + L.tiles);
  float* act = reinterpret_cast<float*>(ws + L.act);
  float* y = reinterpret_cast<float*>(ws + L.y);

  check_grid(ceil_div(std::max<int64_t>(nr, 1), 256));
  init_kernel<<<ceil_div(std::max<int64_t>(nr, 1), 256), 256, 0, s>>>(ctrl, counts, nr);
  check_grid(ceil_div(ns, 256));
  count_kernel<<<ceil_div(ns, 256), 256, 0, s>>>(ns, idx, nr, n_experts, ctrl, counts, pos);

  if (nr > 0 && inter > 0) {
    // Skinny tiles while experts average <= 16 rows (decode); 64-row tiles beyond (prefill).
    const bool skinny = ns <= 16 * nr;
    const int bm = skinny ? kSkinnyRows : kTiled;
    schedule_kernel<<<1, kScanThreads, 0, s>>>(nr, bm, counts, offsets, tiles, ctrl, L.tile_cap);
    check_grid(nr);
    place_kernel<<<static_cast<unsigned>(nr), kPlaceThreads, 0, s>>>(ns, idx, counts, offsets, ctrl, sorted, pos);
    // act-order experts: gate/up read the permuted copy, one row per slot
    const float* xu = u;
    int64_t xk = k;
    if (permuted) {
      float* xp = reinterpret_cast<float*>(ws + L.xp);
      check_grid(ns);
      permute_kernel<<<static_cast<unsigned>(ns), 256, 0, s>>>(ns, k, h, nr, idx, table, ctrl, u, xp);
      xu = xp, xk = 1;
    }
    GemmArgs a;
    a.k = xk;
    a.h = h;
    a.inter = inter;
    a.nr = nr;
    a.u = xu;
    a.sorted = sorted;
    a.tiles = tiles;
    a.ctrl = ctrl;
    a.table = table;
    a.act = act;
    a.y = y;
    const int64_t cap = skinny ? L.tile_cap : (ns + kTiled - 1) / kTiled + std::min(nr, ns);
    if (skinny) {
      const int64_t nb_gu = ceil_div(inter, kSkinnyWarps * kSkinnyFeatures<true>);
      const int64_t nb_d = ceil_div(h, kSkinnyWarps * kSkinnyFeatures<false>);
      check_grid(cap * std::max(nb_gu, nb_d));
      a.xvec = h % 4 == 0 && reinterpret_cast<uintptr_t>(xu) % 16 == 0;
      skinny_kernel<true><<<static_cast<unsigned>(cap * nb_gu), kSkinnyWarps * 32, 0, s>>>(a, nb_gu);
      a.xvec = inter % 4 == 0;  // act rows: 256-aligned base, inter floats apart
      skinny_kernel<false><<<static_cast<unsigned>(cap * nb_d), kSkinnyWarps * 32, 0, s>>>(a, nb_d);
    } else if (cpu::matmul_precision() == cpu::MatmulPrecision::Highest) {
      const int64_t nb_gu = ceil_div(inter, kTiled), nb_d = ceil_div(h, kTiled);
      check_grid(cap * std::max(nb_gu, nb_d));
      a.xvec = false;
      tiled_kernel<true><<<static_cast<unsigned>(cap * nb_gu), 256, 0, s>>>(a, nb_gu);
      tiled_kernel<false><<<static_cast<unsigned>(cap * nb_d), 256, 0, s>>>(a, nb_d);
    } else {
      MoeTileGemm<true> gu{};
      gu.nblk = ceil_div(inter, tile::kBN / 2);
      gu.tiles = tiles, gu.ctrl = ctrl, gu.sorted = sorted, gu.slots = xk;
      gu.k = h, gu.kb = (h + 127) / 128, gu.nout = inter;
      gu.table = table, gu.nr = nr, gu.out = act;
      MoeTileGemm<false> dn{};
      dn.nblk = ceil_div(h, tile::kBN);
      dn.tiles = tiles, dn.ctrl = ctrl, dn.slots = k;
      dn.k = inter, dn.kb = (inter + 127) / 128, dn.nout = h;
      dn.table = table, dn.nr = nr, dn.out = y;
      check_grid(cap * std::max(gu.nblk, dn.nblk));
      const unsigned gu_blocks = static_cast<unsigned>(cap * gu.nblk), dn_blocks = static_cast<unsigned>(cap * dn.nblk);
      if (fp8) {
        uint8_t* uq = reinterpret_cast<uint8_t*>(ws + L.uq);
        float* us = reinterpret_cast<float*>(ws + L.us);
        uint8_t* aq = reinterpret_cast<uint8_t*>(ws + L.aq);
        float* as = reinterpret_cast<float*>(ws + L.as);
        quantize_fp8_act(t, h, u, DType::F32, uq, us, s);
        gu.a = uq, gu.a_scale = us, gu.a_dtype = DType::FP8_E4M3;
        tile::gemm_kernel<MoeTileGemm<true>, true><<<gu_blocks, tile::kThreads, 0, s>>>(gu);
        quantize_fp8_act(ns, inter, act, DType::F32, aq, as, s);  // rows past the routed ones are never read
        dn.a = aq, dn.a_scale = as, dn.a_dtype = DType::FP8_E4M3;
        tile::gemm_kernel<MoeTileGemm<false>, true><<<dn_blocks, tile::kThreads, 0, s>>>(dn);
      } else {
        gu.a = xu, gu.a_dtype = DType::F32;
        tile::gemm_kernel<MoeTileGemm<true>, false><<<gu_blocks, tile::kThreads, 0, s>>>(gu);
        dn.a = act, dn.a_dtype = DType::F32;
        tile::gemm_kernel<MoeTileGemm<false>, false><<<dn_blocks, tile::kThreads, 0, s>>>(dn);
      }
    }
  }
  check_grid(t);
  combine_kernel<<<static_cast<unsigned>(t), kCombineThreads, sizeof(int32_t) * static_cast<size_t>(k), s>>>(k, h, nr, u, idx, w,
                                                                                                             pos, y, ctrl, out);
}

}  // namespace lc::gpu
