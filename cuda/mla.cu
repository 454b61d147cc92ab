// MLA attention on CUDA (contracts: native/cpu/mla.h, launchers: mla.h). Activations f32;
// the kv_b_proj weight f32 or bf16 (raw bits), the latent cache f32, bf16 or the fp8 layout of
// cpu/mla.h (dequantized on load). fp32 accumulation everywhere.
//
//   mla_absorb_q   per-head small GEMM q_lat[t,h,:] = W_UK[h]^T q_nope[t,h]: one CTA per (token
//                  chunk, head, 128-column tile); each thread owns 2 latent columns and streams the
//                  head's dn weight rows once per token chunk (tokens in registers, q in smem).
//   mla_output     per-head GEMV o[t,h,v] = W_UV[h][v,:] . o_lat[t,h,:]: one warp per output row
//                  (16-byte weight loads), up to kT tokens' dot products in registers.
//   mla_decode     FlashMLA-style split-KV MQA decode over the paged latent cache: one CTA per
//                  (sequence, group of <= 16 heads, split of the sequence's tokens). The group's
//                  queries (q_lat | q_pe, 576 floats per head) sit in shared memory; cache rows are
//                  streamed 16 tokens at a time (16-byte loads, one read per head group) into shared
//                  memory as f32; scores fp32 (one warp per (head, token) dot), online softmax with
//                  a running max per head, the oLat accumulator in shared memory (each thread owns
//                  fixed columns). Splits write (m, l, acc) partials; a second kernel merges them with
//                  the CPU's log-sum-exp merge. CUDA cores only (no tensor cores) in this first
//                  version: the score tile [heads x tokens] = Q[heads, 576] K[tokens, 576]^T and the
//                  PV tile are the two products; at matmul precision 'bf16' with the 512 + 64 width
//                  and a bf16 or fp8 cache, mla_decode_tc.cu does them on tensor cores instead.
//   mla_prefill    causal varlen flash attention (expanded form): a device-side schedule kernel
//                  turns qStart / kvStart into (sequence, query tile) work items. At matmul
//                  precision 'bf16' with the DeepSeek / LongCat head dims: the mma.sync kernel of
//                  mla_prefill_tc.cu (64-query tiles); otherwise one CTA per (32-query tile, head),
//                  32 x 32 score tiles in shared memory, online softmax and scalar FMA in fp32.
#include <algorithm>
#include <cmath>
#include <type_traits>

#include "include/common.cuh"
#include "mla.h"
#include "mla_tc.h"
#include "include/warp.cuh"
#include "../native/cpu/linear.h"

namespace lc::gpu {
namespace {

using cpu::MlaDims;

__host__ __device__ __forceinline__ int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
__host__ __device__ __forceinline__ int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }

// The W_UK / W_UV kernels are templated on the weight element (f32, or bf16 bits) and on kT, the
// tokens per CTA (1, 4 or kMaxT, the smallest that holds t): f(w typed, integral_constant<kT>).
template <int kMaxT, typename F>
void with_weight_and_tokens(const void* w, bool w_bf16, int64_t t, F&& f) {
  auto tokens = [&](auto wt) {
    if (t <= 1)
      f(wt, std::integral_constant<int, 1>{});
    else if (t <= 4)
      f(wt, std::integral_constant<int, 4>{});
    else
      f(wt, std::integral_constant<int, kMaxT>{});
  };
  if (w_bf16)
    tokens(static_cast<const uint16_t*>(w));
  else
    tokens(static_cast<const float*>(w));
}

__device__ __forceinline__ float ldv(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ float ldv(const uint16_t* p, int64_t i) { return bf16_bits_to_f32(p[i]); }

void set_smem(const void* fn, size_t bytes) {
  if (bytes > 48 * 1024)
    check(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)),
          "cudaFuncSetAttribute(max dynamic shared memory)");
}

struct DevAttrs {
  int sms = 1;
  size_t smem_optin = 48 * 1024;
};
DevAttrs dev_attrs() {
  const int sms = device_attr(cudaDevAttrMultiProcessorCount), smem = device_attr(cudaDevAttrMaxSharedMemoryPerBlockOptin);
  DevAttrs a;
  a.sms = sms > 0 ? sms : 1;
  a.smem_optin = smem > 0 ? static_cast<size_t>(smem) : a.smem_optin;
  return a;
}

void check_grid(const char* op, int64_t blocks) {
  if (blocks > 0x7fffffffLL)
    fail(Code::E_SHAPE, "%s (CUDA): %lld thread blocks exceed the grid limit", op, static_cast<long long>(blocks));
}

// ---------------------------------------------------------------------------------------------
// q_lat = W_UK^T q_nope

constexpr int kAbsThreads = 64;            // 2 latent columns per thread
constexpr int kAbsCols = 2 * kAbsThreads;  // columns per CTA
constexpr int kAbsSlab = 32;               // W_UK rows per shared-memory q slab

template <typename WT, int kT>
__global__ void __launch_bounds__(kAbsThreads)
    absorb_q_kernel(MlaDims d, int64_t t, float* __restrict__ q_lat, const float* __restrict__ q, const WT* __restrict__ w,
                    int64_t ctiles) {
  __shared__ float qs[kT][kAbsSlab];
  int64_t bid = blockIdx.x;
  const int64_t ct = bid % ctiles;
  bid /= ctiles;
  const int64_t h = bid % d.nh, t0 = (bid / d.nh) * kT;
  const int nt = static_cast<int>(imin(kT, t - t0));
  const int64_t dl = d.dl, dn = d.dn, dk = d.dn + d.dr, dkv = d.dn + d.dv;
  const int64_t c = ct * kAbsCols + 2 * threadIdx.x;
  const bool c0ok = c < dl, c1ok = c + 1 < dl;
  const WT* wh = w + h * dkv * dl;
  float acc[kT][2];
#pragma unroll
  for (int i = 0; i < kT; ++i) acc[i][0] = acc[i][1] = 0.0f;
  for (int64_t r0 = 0; r0 < dn; r0 += kAbsSlab) {
    const int nr = static_cast<int>(imin(kAbsSlab, dn - r0));
    __syncthreads();  // the previous slab is consumed
    for (int i = threadIdx.x; i < kT * kAbsSlab; i += kAbsThreads) {
      const int ti = i / kAbsSlab, rr = i % kAbsSlab;
      qs[ti][rr] = (ti < nt && rr < nr) ? q[((t0 + ti) * d.nh + h) * dk + r0 + rr] : 0.0f;
    }
    __syncthreads();
#pragma unroll 4
    for (int rr = 0; rr < nr; ++rr) {
      const WT* wr = wh + (r0 + rr) * dl;
      const float w0 = c0ok ? ldv(wr, c) : 0.0f, w1 = c1ok ? ldv(wr, c + 1) : 0.0f;
#pragma unroll
      for (int i = 0; i < kT; ++i) {
        acc[i][0] += w0 * qs[i][rr];
        acc[i][1] += w1 * qs[i][rr];
      }
    }
  }
#pragma unroll
  for (int i = 0; i < kT; ++i) {
    if (i >= nt) break;
    float* out = q_lat + ((t0 + i) * d.nh + h) * dl;
    if (c0ok) out[c] = acc[i][0];
    if (c1ok) out[c + 1] = acc[i][1];
  }
}

template <int kT, typename WT>
void absorb_q_launch(const MlaDims& d, int64_t t, float* q_lat, const float* q, const WT* w, cudaStream_t s) {
  const int64_t ctiles = ceil_div(d.dl, kAbsCols), blocks = ceil_div(t, kT) * d.nh * ctiles;
  check_grid("mlaAbsorbQ", blocks);
  absorb_q_kernel<WT, kT><<<static_cast<unsigned>(blocks), kAbsThreads, 0, s>>>(d, t, q_lat, q, w, ctiles);
}

// ---------------------------------------------------------------------------------------------
// o = W_UV o_lat

constexpr int kOutWarps = 8;

__device__ __forceinline__ void load8(const float* p, float (&v)[8]) {
  const float4 a = reinterpret_cast<const float4*>(p)[0], b = reinterpret_cast<const float4*>(p)[1];
  v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
}
__device__ __forceinline__ void load8(const uint16_t* p, float (&v)[8]) {
  const uint4 r = *reinterpret_cast<const uint4*>(p);
  const uint32_t u[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    v[2 * i] = __uint_as_float(u[i] << 16);
    v[2 * i + 1] = __uint_as_float(u[i] & 0xffff0000u);
  }
}

// Element c of the latent-cache row at r: f32, bf16 bits, or the fp8 layout (cpu/mla.h: the latent
// e4m3 * its group's scale in one f32 rounding, as cpu::mla_cache_gather; the rope key bf16).
__device__ __forceinline__ float ld_row(const float* r, int64_t c, int64_t) { return r[c]; }
__device__ __forceinline__ float ld_row(const uint16_t* r, int64_t c, int64_t) { return bf16_bits_to_f32(r[c]); }
__device__ __forceinline__ float ld_row(const uint8_t* r, int64_t c, int64_t dl) {
  if (c < dl)
    return __fmul_rn(fp8e4m3_to_f32(r[c]),
                     reinterpret_cast<const float*>(r + cpu::mla_fp8_scale_offset(dl))[c / cpu::kMlaFp8Group]);
  return bf16_bits_to_f32(reinterpret_cast<const uint16_t*>(r + cpu::mla_fp8_rope_offset(dl))[c - dl]);
}
// Elements c .. c + 7 (c % 8 == 0) of the row at r with 16-byte loads (8 bytes for the fp8 latent):
// the caller checked the alignment (DecodeParams::vec).
__device__ __forceinline__ void load8_row(const float* r, int64_t c, int64_t, float (&v)[8]) { load8(r + c, v); }
__device__ __forceinline__ void load8_row(const uint16_t* r, int64_t c, int64_t, float (&v)[8]) { load8(r + c, v); }
__device__ __forceinline__ void load8_row(const uint8_t* r, int64_t c, int64_t dl, float (&v)[8]) {
  if (c >= dl) {
    load8(reinterpret_cast<const uint16_t*>(r + cpu::mla_fp8_rope_offset(dl)) + (c - dl), v);
    return;
  }
  const uint2 u = *reinterpret_cast<const uint2*>(r + c);
  const float s = reinterpret_cast<const float*>(r + cpu::mla_fp8_scale_offset(dl))[c / cpu::kMlaFp8Group];
#pragma unroll
  for (int e = 0; e < 8; ++e) v[e] = __fmul_rn(fp8e4m3_to_f32(static_cast<uint8_t>((e < 4 ? u.x : u.y) >> (8 * (e & 3)))), s);
}

// kVec: dl % 8 == 0 and 16-byte aligned bases (checked by the launcher).
template <typename WT, int kT, bool kVec>
__global__ void __launch_bounds__(kOutWarps * 32)
    output_kernel(MlaDims d, int64_t t, float* __restrict__ o, const float* __restrict__ o_lat, const WT* __restrict__ w,
                  int64_t rtiles) {
  int64_t bid = blockIdx.x;
  const int64_t rt = bid % rtiles;
  bid /= rtiles;
  const int64_t h = bid % d.nh, t0 = (bid / d.nh) * kT;
  const int64_t v = rt * kOutWarps + threadIdx.x / 32;
  const int lane = threadIdx.x & 31;
  if (v >= d.dv) return;  // no block-level synchronization in this kernel
  const int nt = static_cast<int>(imin(kT, t - t0));
  const int64_t dl = d.dl, dkv = d.dn + d.dv;
  const WT* wr = w + (h * dkv + d.dn + v) * dl;
  const float* xb = o_lat + (t0 * d.nh + h) * dl;  // token i at xb + i * nh * dl
  const int64_t xs = d.nh * dl;
  float acc[kT];
#pragma unroll
  for (int i = 0; i < kT; ++i) acc[i] = 0.0f;
  if (kVec) {
    for (int64_t c = 8 * lane; c < dl; c += 256) {
      float wv[8];
      load8(wr + c, wv);
#pragma unroll
      for (int i = 0; i < kT; ++i) {
        if (i < nt) {
          float xv[8];
          load8(xb + i * xs + c, xv);
#pragma unroll
          for (int e = 0; e < 8; ++e) acc[i] += wv[e] * xv[e];
        }
      }
    }
  } else {
    for (int64_t c = lane; c < dl; c += 32) {
      const float wv = ldv(wr, c);
#pragma unroll
      for (int i = 0; i < kT; ++i)
        if (i < nt) acc[i] += wv * xb[i * xs + c];
    }
  }
#pragma unroll
  for (int i = 0; i < kT; ++i) {
    const float r = warp_sum(acc[i]);
    if (lane == 0 && i < nt) o[((t0 + i) * d.nh + h) * d.dv + v] = r;
  }
}

template <int kT, typename WT>
void output_launch(const MlaDims& d, int64_t t, float* o, const float* o_lat, const WT* w, cudaStream_t s) {
  const int64_t rtiles = ceil_div(d.dv, kOutWarps), blocks = ceil_div(t, kT) * d.nh * rtiles;
  check_grid("mlaOutput", blocks);
  const bool vec = d.dl % 8 == 0 && reinterpret_cast<uintptr_t>(w) % 16 == 0 && reinterpret_cast<uintptr_t>(o_lat) % 16 == 0;
  if (vec)
    output_kernel<WT, kT, true><<<static_cast<unsigned>(blocks), kOutWarps * 32, 0, s>>>(d, t, o, o_lat, w, rtiles);
  else
    output_kernel<WT, kT, false><<<static_cast<unsigned>(blocks), kOutWarps * 32, 0, s>>>(d, t, o, o_lat, w, rtiles);
}

// ---------------------------------------------------------------------------------------------
// Absorbed decode

constexpr int kDecThreads = 256, kDecWarps = kDecThreads / 32;
constexpr int kMaxHG = 16;  // heads per CTA (register accumulators in the PV loop)
constexpr int kMaxTK = 16;  // cache rows per tile
constexpr int64_t kMinSplitTokens = 64;
// What one more split costs a CTA besides its tokens, in cache rows (1152 bytes each in bf16 at
// the 512 + 64 width): its partial (heads x 512 fp32, 128 KB for 64 heads), written and read back by
// the combine, about 224 rows' worth, and staging Q (147 KB, from L2). An estimate from byte counts,
// not a measurement: to be tuned on a card.
constexpr int64_t kSplitOverheadTokens = 256;

struct DecodeCfg {
  int hg = 1, tk = 1;
  size_t smem = 0;
};

size_t decode_smem(const MlaDims& d, int hg, int tk) {
  const int64_t row = d.dl + d.dr;
  return sizeof(float) * static_cast<size_t>(hg * row + tk * row + hg * d.dl + hg * tk + 3 * hg) + sizeof(int64_t) * kMaxTK;
}

DecodeCfg decode_cfg(const MlaDims& d, size_t smem_optin) {
  const int hg0 = static_cast<int>(std::min<int64_t>(kMaxHG, std::max<int64_t>(d.nh, 1)));
  const size_t budget = std::min<size_t>(smem_optin, 112 * 1024);  // two CTAs per SM when it fits
  for (size_t limit : {budget, smem_optin})
    for (int tk : {kMaxTK, 8, 4, 1})
      for (int hg = hg0; hg >= 1; hg = hg > 1 ? (hg + 1) / 2 : 0) {
        const size_t b = decode_smem(d, hg, tk);
        if (b <= limit) return DecodeCfg{hg, tk, b};
        if (hg == 1) break;
      }
  fail(Code::E_SHAPE, "mlaDecodeAbsorbed (CUDA): cache rows of %lld values do not fit in shared memory",
       static_cast<long long>(d.dl + d.dr));
}

struct DecodeParams : MlaDecodeArgs {
  int64_t dl, dr, row;
  int64_t stride;  // cache elements (fp8: bytes) per row
  int64_t ngroups, hg, tk;
  bool vec;  // 16-byte loads of cache rows
};

template <typename CT>
__global__ void __launch_bounds__(kDecThreads) decode_kernel(DecodeParams p) {
  extern __shared__ float4 smem_f4[];
  float* smem = reinterpret_cast<float*>(smem_f4);
  const int hg = static_cast<int>(p.hg), tk = static_cast<int>(p.tk);
  const int64_t row = p.row, dl = p.dl;
  int64_t* rbase = reinterpret_cast<int64_t*>(smem);  // [kMaxTK] cache offset (in CT) of each tile row (-1: invalid)
  float* qs = smem + 2 * kMaxTK;                      // [hg][row]: q_lat | q_pe
  float* kv = qs + hg * row;                          // [tk][row]: cache rows as f32
  float* acc = kv + tk * row;                         // [hg][dl]
  float* sc = acc + hg * dl;                          // [hg][tk]: scores, then probabilities
  float* ms = sc + hg * tk;                           // [hg] running max
  float* ls = ms + hg;                                // [hg] running sum
  float* cs = ls + hg;                                // [hg] rescale of this tile

  int64_t bid = blockIdx.x;
  const int64_t split = bid % p.splits;
  bid /= p.splits;
  const int64_t g = bid % p.ngroups, b = bid / p.ngroups;
  const int64_t h0 = g * hg;
  const int nhg = static_cast<int>(imin(hg, p.nh - h0));
  const int tid = threadIdx.x, warp = tid / 32, lane = tid & 31;

  // This split's tokens [s0, s1) of the sequence (length clamped to the block table).
  const int64_t len = imin(imax(p.seq_lens[b], 0), p.max_blocks * p.block_size);
  int64_t per = (len + p.splits - 1) / p.splits;
  per = (per + tk - 1) / tk * tk;
  const int64_t s0 = imin(len, split * per), s1 = imin(len, s0 + per);

  for (int64_t i = tid; i < nhg * row; i += kDecThreads) {
    const int64_t hi = i / row, c = i % row, hh = b * p.nh + h0 + hi;
    qs[i] = c < dl ? p.q_lat[hh * dl + c] : p.q[hh * p.dk + p.dn + (c - dl)];
  }
  for (int64_t c = tid; c < dl; c += kDecThreads)
    for (int i = 0; i < nhg; ++i) acc[i * dl + c] = 0.0f;
  if (tid < nhg) {
    ms[tid] = -INFINITY;
    ls[tid] = 0.0f;
  }
  const int32_t* bt = p.block_table + b * p.max_blocks;
  const CT* cache = static_cast<const CT*>(p.cache);

  for (int64_t t0 = s0; t0 < s1; t0 += tk) {
    const int nt = static_cast<int>(imin(tk, s1 - t0));
    __syncthreads();  // previous tile consumed (and the initialisation above done)
    if (tid < nt) {
      const int64_t s = t0 + tid;  // < len <= max_blocks * block_size
      const int64_t blk = bt[s / p.block_size];
      rbase[tid] = (blk >= 0 && blk < p.num_blocks) ? (blk * p.block_size + s % p.block_size) * p.stride : -1;
    }
    __syncthreads();
    if (p.vec) {  // 8 elements per 16-byte load (bf16, the fp8 rope), two (f32), or one 8-byte load (fp8 latent)
      const int64_t row8 = row / 8;
      for (int64_t i = tid; i < nt * row8; i += kDecThreads) {
        const int64_t j = i / row8, c = (i % row8) * 8;
        float v[8];
        if (rbase[j] >= 0) {
          load8_row(cache + rbase[j], c, dl, v);
        } else {
#pragma unroll
          for (int e = 0; e < 8; ++e) v[e] = 0.0f;
        }
#pragma unroll
        for (int e = 0; e < 8; ++e) kv[j * row + c + e] = v[e];
      }
    } else {
      for (int64_t i = tid; i < nt * row; i += kDecThreads) {
        const int64_t j = i / row, c = i % row;
        kv[i] = rbase[j] >= 0 ? ld_row(cache + rbase[j], c, dl) : 0.0f;
      }
    }
    __syncthreads();
    // Scores: one warp per (head, token) dot product over the full row (latent | rope).
    for (int pr = warp; pr < nhg * nt; pr += kDecWarps) {
      const int i = pr / nt, j = pr % nt;
      const float* a = qs + i * row;
      const float* k = kv + j * row;
      float sum = 0.0f;
      for (int64_t c = lane; c < row; c += 32) sum += a[c] * k[c];
      sum = warp_sum(sum);
      if (lane == 0) sc[i * tk + j] = sum * p.scale;
    }
    __syncthreads();
    // Online softmax: one warp per head, lane j = token j of the tile (tk <= 32).
    for (int i = warp; i < nhg; i += kDecWarps) {
      const float s = online_softmax_row(lane < nt ? sc[i * tk + lane] : -INFINITY, ms, ls, cs, i);
      if (lane < nt) sc[i * tk + lane] = s;
    }
    __syncthreads();
    // acc[i, c] = acc[i, c] * corr[i] + sum_j p[i, j] * ckv[j, c]; each thread owns columns c.
    for (int64_t c = tid; c < dl; c += kDecThreads) {
      float a[kMaxHG] = {};  // (entries past nhg stay unused)
#pragma unroll
      for (int i = 0; i < kMaxHG; ++i)
        if (i < nhg) a[i] = acc[i * dl + c] * cs[i];
      for (int j = 0; j < nt; ++j) {
        const float v = kv[j * row + c];
#pragma unroll
        for (int i = 0; i < kMaxHG; ++i)
          if (i < nhg) a[i] += sc[i * tk + j] * v;
      }
#pragma unroll
      for (int i = 0; i < kMaxHG; ++i)
        if (i < nhg) acc[i * dl + c] = a[i];
    }
  }
  __syncthreads();  // ms / ls final (also covers a split without tokens)
  if (p.splits == 1) {
    for (int64_t c = tid; c < dl; c += kDecThreads)
      for (int i = 0; i < nhg; ++i) {
        const float l = ls[i];
        p.o_lat[(b * p.nh + h0 + i) * dl + c] = acc[i * dl + c] * (l > 0 ? 1.0f / l : 0.0f);
      }
  } else {
    const int64_t base = (b * p.splits + split) * p.nh + h0;
    for (int64_t c = tid; c < dl; c += kDecThreads)
      for (int i = 0; i < nhg; ++i) p.part_acc[(base + i) * dl + c] = acc[i * dl + c];
    if (tid < nhg) {
      p.part_ml[(base + tid) * 2] = ms[tid];
      p.part_ml[(base + tid) * 2 + 1] = ls[tid];
    }
  }
}

// o = sum_k e^(m_k - M) acc_k / sum_k e^(m_k - M) l_k, exactly the CPU merge. One CTA per (b, h).
__global__ void decode_combine_kernel(int64_t nh, int64_t dl, int64_t splits, float* __restrict__ o_lat,
                                      const float* __restrict__ part_acc, const float* __restrict__ part_ml) {
  const int64_t b = blockIdx.x / nh, h = blockIdx.x % nh;
  float mx = -INFINITY;
  for (int64_t k = 0; k < splits; ++k) mx = fmaxf(mx, part_ml[((b * splits + k) * nh + h) * 2]);  // NaN ignored, like std::max
  float lsum = 0.0f;
  for (int64_t k = 0; k < splits; ++k) {
    const float mk = part_ml[((b * splits + k) * nh + h) * 2], lk = part_ml[((b * splits + k) * nh + h) * 2 + 1];
    if (mk == -INFINITY) continue;
    lsum += expf(mk - mx) * lk;
  }
  const float inv = lsum > 0 ? 1.0f / lsum : 0.0f;
  for (int64_t c = threadIdx.x; c < dl; c += blockDim.x) {
    float out = 0.0f;
    for (int64_t k = 0; k < splits; ++k) {
      const float mk = part_ml[((b * splits + k) * nh + h) * 2];
      if (mk == -INFINITY) continue;  // empty split
      out += expf(mk - mx) * part_acc[((b * splits + k) * nh + h) * dl + c];
    }
    o_lat[(b * nh + h) * dl + c] = out * inv;
  }
}

// ---------------------------------------------------------------------------------------------
// Prefill (expanded form)

constexpr int kPB = 32;  // queries and keys per tile
constexpr int kPThreads = 128;

struct PrefillLayout {
  int64_t ldq, ldo;
  size_t smem;
};

PrefillLayout prefill_layout(const MlaDims& d) {
  PrefillLayout L;
  const int64_t dk = d.dn + d.dr;
  L.ldq = dk % 2 ? dk : dk + 1;       // odd stride: the 8 key rows a warp reads hit distinct banks
  L.ldo = (d.dv + 31) / 32 * 32 + 8;  // stride = 8 mod 32: rows ty x columns tx conflict-free
  L.smem = sizeof(float) * static_cast<size_t>(2 * kPB * L.ldq + kPB * d.dv + kPB * (kPB + 1) + kPB * L.ldo + 3 * kPB);
  return L;
}

// Validates qStart / kvStart exactly like the CPU binding and lists (sequence, first query) tiles
// of `rows` queries, each sequence's last tile (the most keys under the causal mask) first, so
// the heaviest CTAs start first and the light ones fill the tail.
// ws[0] = tile count (0 when the starts are invalid), then (b, j0) pairs.
__global__ void prefill_schedule_kernel(int64_t batch, int64_t t, int64_t s, const int32_t* __restrict__ qs,
                                        const int32_t* __restrict__ ks, int32_t* __restrict__ ws, int64_t cap, int rows) {
  if (threadIdx.x != 0 || blockIdx.x != 0) return;
  bool ok = qs[0] >= 0 && ks[0] >= 0 && qs[batch] <= t && ks[batch] <= s;
  for (int64_t b = 0; ok && b < batch; ++b)
    ok = qs[b + 1] >= qs[b] && ks[b + 1] >= ks[b] && ks[b + 1] - ks[b] >= qs[b + 1] - qs[b];
  int64_t n = 0;
  if (ok)
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t j0 = (qs[b + 1] - qs[b] + rows - 1) / rows * rows - rows; j0 >= 0 && n < cap; j0 -= rows, ++n) {
        ws[1 + 2 * n] = static_cast<int32_t>(b);
        ws[2 + 2 * n] = static_cast<int32_t>(j0);
      }
  ws[0] = static_cast<int32_t>(n);
}

__global__ void __launch_bounds__(kPThreads)
    prefill_kernel(MlaDims d, int64_t ldq, int64_t ldo, float* __restrict__ o, const float* __restrict__ q,
                   const float* __restrict__ kvb, const float* __restrict__ kpe, const int32_t* __restrict__ qst,
                   const int32_t* __restrict__ kst, const int32_t* __restrict__ sched, float scale) {
  extern __shared__ float4 smem_f4[];
  float* Qs = reinterpret_cast<float*>(smem_f4);  // [kPB][ldq]
  float* Ks = Qs + kPB * ldq;                     // [kPB][ldq]: k_nope | k_pe
  float* Vs = Ks + kPB * ldq;                     // [kPB][dv]
  float* Ss = Vs + kPB * d.dv;                    // [kPB][kPB + 1]
  float* Os = Ss + kPB * (kPB + 1);               // [kPB][ldo]
  float* ms = Os + kPB * ldo;
  float* ls = ms + kPB;
  float* cs = ls + kPB;

  // Head dims as int: they fit shared memory, and int loop indices keep 64-bit division (a long
  // SASS sequence whose temporaries spilled) out of the loaders.
  const int64_t nh = d.nh;
  const int dn = static_cast<int>(d.dn), dr = static_cast<int>(d.dr), dv = static_cast<int>(d.dv), dk = dn + dr, dkv = dn + dv;
  const int ldq_ = static_cast<int>(ldq), ldo_ = static_cast<int>(ldo);
  const int64_t tile = blockIdx.x / nh, h = blockIdx.x % nh;
  if (tile >= sched[0]) return;  // uniform over the block
  const int64_t b = sched[1 + 2 * tile], j0 = sched[2 + 2 * tile];
  const int64_t q0 = qst[b], qlen = qst[b + 1] - q0, k0 = kst[b], klen = kst[b + 1] - k0;
  const int nq = static_cast<int>(imin(kPB, qlen - j0));
  const int64_t pos0 = klen - qlen + j0;  // position of the tile's first query
  const int64_t kend = pos0 + nq;         // keys [0, kend) are visible to some query of the tile
  const int tid = threadIdx.x, warp = tid / 32, lane = tid & 31;
  const int ty = tid / 8, tx = tid % 8;  // 16 x 8 threads: rows ty, ty + 16; columns tx + 8 jj

  for (int r = 0; r < kPB; ++r) {
    const float* src = q + ((q0 + j0 + r) * nh + h) * dk;
    for (int c = tid; c < dk; c += kPThreads) Qs[r * ldq_ + c] = r < nq ? src[c] : 0.0f;
  }
  for (int i = tid; i < kPB * ldo_; i += kPThreads) Os[i] = 0.0f;
  if (tid < kPB) {
    ms[tid] = -INFINITY;
    ls[tid] = 0.0f;
  }

  for (int64_t t0 = 0; t0 < kend; t0 += kPB) {
    const int nt = static_cast<int>(imin(kPB, kend - t0));
    __syncthreads();  // previous tile consumed (and the initialisation done)
    for (int j = 0; j < kPB; ++j) {
      const int64_t sk = k0 + t0 + j;
      const float* kv = kvb + (sk * nh + h) * dkv;
      const float* pe = kpe + sk * dr - dn;
      for (int c = tid; c < dk; c += kPThreads) Ks[j * ldq_ + c] = j < nt ? (c < dn ? kv[c] : pe[c]) : 0.0f;
      for (int c = tid; c < dv; c += kPThreads) Vs[j * dv + c] = j < nt ? kv[dn + c] : 0.0f;
    }
    __syncthreads();
    {
      float a[2][4] = {};
      for (int c = 0; c < dk; ++c) {
        const float qa = Qs[ty * ldq_ + c], qb = Qs[(ty + 16) * ldq_ + c];
#pragma unroll
        for (int jj = 0; jj < 4; ++jj) {
          const float kk = Ks[(tx + 8 * jj) * ldq_ + c];
          a[0][jj] += qa * kk;
          a[1][jj] += qb * kk;
        }
      }
#pragma unroll
      for (int ii = 0; ii < 2; ++ii)
#pragma unroll
        for (int jj = 0; jj < 4; ++jj) {
          const int i = ty + 16 * ii, j = tx + 8 * jj;
          const bool vis = i < nq && j < nt && t0 + j <= pos0 + i;
          Ss[i * (kPB + 1) + j] = vis ? a[ii][jj] * scale : -INFINITY;
        }
    }
    __syncthreads();
    for (int i = warp; i < kPB; i += kPThreads / 32) {  // lane = key j (kPB == 32)
      Ss[i * (kPB + 1) + lane] = online_softmax_row(Ss[i * (kPB + 1) + lane], ms, ls, cs, i);
    }
    __syncthreads();
    for (int c = tx; c < dv; c += 8) {
      float a0 = Os[ty * ldo_ + c] * cs[ty], a1 = Os[(ty + 16) * ldo_ + c] * cs[ty + 16];
      for (int j = 0; j < nt; ++j) {
        const float v = Vs[j * dv + c];
        a0 += Ss[ty * (kPB + 1) + j] * v;
        a1 += Ss[(ty + 16) * (kPB + 1) + j] * v;
      }
      Os[ty * ldo_ + c] = a0;
      Os[(ty + 16) * ldo_ + c] = a1;
    }
  }
  __syncthreads();
  for (int r = 0; r < nq; ++r) {
    const float l = ls[r], inv = l > 0 ? 1.0f / l : 0.0f;
    float* dst = o + ((q0 + j0 + r) * nh + h) * dv;
    for (int c = tid; c < dv; c += kPThreads) dst[c] = Os[r * ldo_ + c] * inv;
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------

void mla_absorb_q(const MlaDims& d, int64_t t, float* q_lat, const float* q, const void* wkvb, bool w_bf16, void* stream) {
  if (t <= 0 || d.nh <= 0 || d.dl <= 0) return;
  with_weight_and_tokens<16>(wkvb, w_bf16, t, [&](auto w, auto kt) {
    absorb_q_launch<decltype(kt)::value>(d, t, q_lat, q, w, static_cast<cudaStream_t>(stream));
  });
}

void mla_output(const MlaDims& d, int64_t t, float* o, const float* o_lat, const void* wkvb, bool w_bf16, void* stream) {
  if (t <= 0 || d.nh <= 0 || d.dv <= 0) return;
  with_weight_and_tokens<8>(wkvb, w_bf16, t, [&](auto w, auto kt) {
    output_launch<decltype(kt)::value>(d, t, o, o_lat, w, static_cast<cudaStream_t>(stream));
  });
}

static bool use_tc_prefill(const MlaDims& d) { return cpu::bf16_activations() && mla_prefill_tc_supported(d); }

static int64_t prefill_schedule_ints(int64_t t, int64_t batch) { return 1 + 2 * ((t + kPB - 1) / kPB + batch); }

int64_t mla_prefill_workspace_ints(const MlaDims& d, int64_t t, int64_t s, int64_t batch) {
  const int64_t sched = prefill_schedule_ints(t, batch);
  if (!use_tc_prefill(d)) return sched;
  return sched + 4 + static_cast<int64_t>((mla_prefill_tc_workspace_bytes(d, s) + 3) / 4);  // + 4: 16-byte alignment
}

void mla_prefill(const MlaDims& d, int64_t batch, int64_t t, int64_t s, float* o, const float* q, const float* kvb,
                 const float* kpe, const int32_t* q_start, const int32_t* kv_start, float scale, int32_t* workspace,
                 void* stream) {
  auto st = static_cast<cudaStream_t>(stream);
  const bool tc = use_tc_prefill(d);
  const int rows = tc ? static_cast<int>(kMlaTcPrefillRows) : kPB;
  const int64_t cap = (t + rows - 1) / rows + batch;  // <= the workspace's 32-row tile count
  if (cap > 0x3fffffffLL) fail(Code::E_SHAPE, "mlaPrefill (CUDA): too many query tiles (%lld)", static_cast<long long>(cap));
  prefill_schedule_kernel<<<1, 32, 0, st>>>(batch, t, s, q_start, kv_start, workspace, cap, rows);
  if (cap == 0 || d.nh <= 0 || d.dv <= 0) return;
  if (tc) {
    const uintptr_t kv = reinterpret_cast<uintptr_t>(workspace + prefill_schedule_ints(t, batch));
    mla_prefill_tc(d, cap, s, o, q, kvb, kpe, q_start, kv_start, workspace, scale,
                   reinterpret_cast<void*>((kv + 15) & ~uintptr_t{15}), stream);
    return;
  }
  const PrefillLayout L = prefill_layout(d);
  const DevAttrs a = dev_attrs();
  if (L.smem > a.smem_optin)
    fail(Code::E_SHAPE, "mlaPrefill (CUDA): head dims %lld + %lld need %zu bytes of shared memory (max %zu)",
         static_cast<long long>(d.dn + d.dr), static_cast<long long>(d.dv), L.smem, a.smem_optin);
  const int64_t blocks = cap * d.nh;
  check_grid("mlaPrefill", blocks);
  set_smem(reinterpret_cast<const void*>(prefill_kernel), L.smem);
  prefill_kernel<<<static_cast<unsigned>(blocks), kPThreads, L.smem, st>>>(d, L.ldq, L.ldo, o, q, kvb, kpe, q_start, kv_start,
                                                                           workspace, scale);
}

// The tensor-core decode (mla_decode_tc.cu) takes the LongCat / DeepSeek width with a bf16 or fp8
// cache unless the matmul precision is 'highest' (then every product stays fp32, as on the CPU).
static bool use_tc_decode(const MlaDims& d, cpu::MlaCache cf, const void* cache) {
  return cpu::bf16_activations() && mla_decode_tc_supported(d, cf, cache);
}

// Splits sized to the device: CTAs run in waves of `slots` (SMs x resident CTAs per SM), so the split
// count s minimises waves(s) x (tokens per split + kSplitOverheadTokens), waves(s) = ceil(B G s /
// slots), over 1 <= s <= min(slots, max_len / kMinSplitTokens), the fewest splits on a tie: at batch
// 1 a long context gets one split per SM. Chosen from shapes and the device only, never from
// seq_lens (a captured CUDA graph replays it for any lengths up to max_len).
int64_t mla_decode_splits(const MlaDims& d, int64_t batch, int64_t max_len, cpu::MlaCache cf, const void* cache) {
  if (batch <= 0 || d.nh <= 0 || max_len <= 0) return 1;
  const DevAttrs a = dev_attrs();
  const bool tc = use_tc_decode(d, cf, cache);
  const int64_t hg = tc ? kMlaTcHeads : decode_cfg(d, a.smem_optin).hg;
  const int64_t ctas = batch * ((d.nh + hg - 1) / hg);
  const int64_t slots = static_cast<int64_t>(a.sms) * (tc ? 1 : 2);  // the tensor-core CTA fills an SM's shared memory
  const int64_t cap = std::max<int64_t>(1, std::min<int64_t>(slots, (max_len + kMinSplitTokens - 1) / kMinSplitTokens));
  int64_t best = 1, best_cost = 0;
  for (int64_t s = 1; s <= cap; ++s) {
    const int64_t cost = (ctas * s + slots - 1) / slots * ((max_len + s - 1) / s + kSplitOverheadTokens);
    if (s == 1 || cost < best_cost) best = s, best_cost = cost;
  }
  return best;
}

int64_t mla_decode_workspace_floats(const MlaDims& d, int64_t batch, int64_t splits) {
  return splits > 1 ? batch * splits * d.nh * (d.dl + 2) : 0;
}

void mla_decode_absorbed(const MlaDims& d, int64_t batch, float* o_lat, const float* q_lat, const float* q, const void* cache,
                         cpu::MlaCache cf, int64_t num_blocks, int64_t block_size, const int32_t* block_table, int64_t max_blocks,
                         const int32_t* seq_lens, float scale, float* workspace, int64_t splits, void* stream) {
  if (batch <= 0 || d.nh <= 0 || d.dl <= 0) return;
  auto st = static_cast<cudaStream_t>(stream);
  splits = std::max<int64_t>(1, splits);
  MlaDecodeArgs args;
  args.nh = d.nh, args.dn = d.dn, args.dk = d.dn + d.dr;
  args.splits = splits;
  args.q_lat = q_lat, args.q = q, args.cache = cache;
  args.num_blocks = num_blocks, args.block_size = block_size, args.max_blocks = max_blocks;
  args.block_table = block_table, args.seq_lens = seq_lens, args.scale = scale;
  args.o_lat = o_lat, args.part_acc = workspace;
  args.part_ml = splits > 1 ? workspace + batch * splits * d.nh * d.dl : nullptr;
  if (use_tc_decode(d, cf, cache)) {
    mla_decode_tc(batch, args, cf, stream);
  } else {
    const DecodeCfg cfg = decode_cfg(d, dev_attrs().smem_optin);
    DecodeParams p;
    static_cast<MlaDecodeArgs&>(p) = args;
    p.dl = d.dl, p.dr = d.dr, p.row = d.dl + d.dr;
    p.hg = cfg.hg, p.tk = cfg.tk, p.ngroups = (d.nh + cfg.hg - 1) / cfg.hg;
    const bool fp8 = cf == cpu::MlaCache::FP8;
    p.stride = fp8 ? cpu::mla_fp8_row_bytes(d.dl, d.dr) : p.row;
    // fp8: 8-byte latent loads (dl % 128 == 0), 16-byte rope loads (rope offset and row stride multiples of 16)
    p.vec = p.row % 8 == 0 && reinterpret_cast<uintptr_t>(cache) % 16 == 0 &&
            (!fp8 || (p.stride % 16 == 0 && cpu::mla_fp8_rope_offset(d.dl) % 16 == 0));
    const int64_t blocks = batch * p.ngroups * splits;
    check_grid("mlaDecodeAbsorbed", blocks);
    if (fp8) {
      set_smem(reinterpret_cast<const void*>(decode_kernel<uint8_t>), cfg.smem);
      decode_kernel<uint8_t><<<static_cast<unsigned>(blocks), kDecThreads, cfg.smem, st>>>(p);
    } else if (cf == cpu::MlaCache::BF16) {
      set_smem(reinterpret_cast<const void*>(decode_kernel<uint16_t>), cfg.smem);
      decode_kernel<uint16_t><<<static_cast<unsigned>(blocks), kDecThreads, cfg.smem, st>>>(p);
    } else {
      set_smem(reinterpret_cast<const void*>(decode_kernel<float>), cfg.smem);
      decode_kernel<float><<<static_cast<unsigned>(blocks), kDecThreads, cfg.smem, st>>>(p);
    }
  }
  if (splits > 1) {
    check_grid("mlaDecodeAbsorbed", batch * d.nh);
    decode_combine_kernel<<<static_cast<unsigned>(batch * d.nh), 128, 0, st>>>(d.nh, d.dl, splits, o_lat, args.part_acc,
                                                                               args.part_ml);
  }
}

}  // namespace lc::gpu
