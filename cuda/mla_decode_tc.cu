// Absorbed MLA decode on tensor cores (mma.sync bf16, sm_80+) for the DeepSeek / LongCat latent
// width: 512 latent + 64 rope dims per cache row, bf16 or fp8 paged cache. Same contract and split-KV
// partials as decode_kernel in mla.cu (which handles every other case); numerics of the CPU's
// AVX512-BF16 decode: q (q_lat ++ q_pe) and p = exp(s - m) rounded to bf16, fp32 accumulation.
// The fp8 cache (FlashMLA's 656-byte rows, cpu/mla.h) is staged raw: cp.async brings tile it + 1's
// rows into one of two raw buffers while tile it is computed; at the top of each tile the CTA
// dequantizes the raw rows (e4m3 * group scale, rounded to bf16; the rope copied) into a single bf16
// K tile of the layout below, which the rest of the kernel reads unchanged (FlashMLA dequantizes to
// bf16 in shared memory the same way).
//
// Tiling, written out: one CTA (8 warps) per (sequence, 64 heads, split). Q [64 heads x 576] sits
// in shared memory as bf16 for the whole split; cache rows stream through a double-buffered
// [32 tokens x 576] tile by cp.async (16-byte chunks: thread t copies chunks t % 8 + 8 i of row t / 8,
// so the paged-cache lookup (one block-table read, no 64-bit division in the steady state) is done
// once per row and tile, not per chunk; rows of invalid blocks and past the split are zero-filled,
// so 0 * garbage never reaches the accumulator). Per tile:
//   S = Q K^T      warp (m = warp % 2, kq = warp / 2): 32 heads x all 32 tokens over a quarter of the
//                  576 dims (9 k16 steps); per step 2 A + 2 B ldmatrix.x4 feed 8 MMAs (each Q
//                  fragment serves 32 tokens). The four K-quarter partials go to shared memory
//   softmax        warp w: heads 8w .. 8w + 7, lane = token: s = (S0 + S1) + (S2 + S3) in that fixed
//                  order; running max / sum per head in smem; P = exp(s - m) as bf16 in shared
//                  memory, the rescale of each head's row kept
//   O = O c + P V  warp w: all 64 heads x latent columns 64w .. 64w + 63 (4 x 8 mma tiles in
//                  registers), V read from the same tile with ldmatrix.trans
// Shared-memory traffic of the score phase per tile: 8 warps x 9 steps x 4 ldmatrix x 512 B = 144 KB
// plus 32 + 32 KB of partials written and read, against 288 KB when every warp took 16 heads x 16
// tokens over all 576 dims (one A + one B ldmatrix per two MMAs); 16 instead of 8 FLOP per
// ldmatrix byte. (FlashMLA's way, wgmma with Q in shared memory, would go further; not done.)
// Shared rows are padded to 1168 bytes (Q, K), 80 bytes (P) and 40 floats (partials), so the 8
// rows an ldmatrix reads fall in distinct 16-byte bank groups and a half-warp's float2 stores of a
// fragment hit 32 distinct banks. Per tile, 4.5 MFLOP per 36 KB of cache: 121 FLOP/byte.
#include "include/common.cuh"
#include "include/fragments.h"
#include "mla_tc.h"
#include "include/mma.cuh"
#include "include/warp.cuh"

namespace lc::gpu {
namespace {

constexpr int kDL = 512, kDR = 64, kRow = kDL + kDR;
constexpr int kHeads = static_cast<int>(kMlaTcHeads), kTok = 32, kThreads = 256, kWarps = kThreads / 32;
constexpr int kPitch = kRow * 2 + 16;                                             // bytes per Q / K row
constexpr int kPPitch = (kTok + 8) * 2;                                           // bytes per P row
constexpr int kSPitch = kTok + 8;                                                 // floats per partial-score row
constexpr int kKSplit = 4;                                                        // K quarters of the score phase
constexpr int kChunks = kRow * 2 / 16;                                            // 16-byte chunks per cache row (72)
constexpr int kRowThreads = kThreads / kTok, kRowChunks = kChunks / kRowThreads;  // 8 threads x 9 chunks a row
// The fp8 layout's rows (cpu/mla.h): 656 bytes, 41 16-byte chunks; 8 threads per row take chunks
// lpart + 8 j, j < 6 (the last only for lpart 0).
constexpr int kF8Row = static_cast<int>(cpu::mla_fp8_row_bytes(kDL, kDR)), kF8Chunks = kF8Row / 16;
constexpr int kF8RowChunks = (kF8Chunks + kRowThreads - 1) / kRowThreads;
constexpr int kF8Rope = static_cast<int>(cpu::mla_fp8_rope_offset(kDL)),
              kF8Scales = static_cast<int>(cpu::mla_fp8_scale_offset(kDL));
static_assert(kF8Row % 16 == 0 && kF8Rope % 16 == 0, "fp8 rows and their rope part in whole 16-byte chunks");
constexpr size_t kQBytes = size_t{kHeads} * kPitch;
// bf16: two K tiles (double buffer); fp8: one bf16 K tile and two raw tiles.
constexpr size_t k_tile_bytes(bool fp8) {
  return fp8 ? size_t{kTok} * kPitch + size_t{2} * kTok * kF8Row : size_t{2} * kTok * kPitch;
}
constexpr size_t kSBytes = sizeof(float) * kKSplit * kHeads * kSPitch, kPBytes = size_t{kHeads} * kPPitch;
constexpr size_t smem_bytes(bool fp8) { return kQBytes + k_tile_bytes(fp8) + kSBytes + kPBytes + 3 * sizeof(float) * kHeads; }
static_assert(kDL == kWarps * 64, "each warp owns 64 latent columns");
static_assert(kWarps == 2 * kKSplit && (kRow / 16) % kKSplit == 0, "score warps: 2 head halves x kKSplit K parts");
static_assert(kRowThreads * kTok == kThreads && kRowThreads * kRowChunks == kChunks, "cache tile rows split evenly over threads");
static_assert((kTok * kChunks) % kThreads == 0, "the fp8 dequantization's 16-byte output chunks split evenly over threads");

struct Params : MlaDecodeArgs {
  int64_t ngroups;
};

// fp8: the raw rows of one tile (raw [32][656]) -> the bf16 K tile kt [32][kPitch]: thread t converts
// 16-byte output chunks t, t + 256, ... (8 values each: a latent chunk from 8 e4m3 bytes and its
// group's scale, rounded to bf16 by RNE; a rope chunk copied).
__device__ __forceinline__ void dequant_fp8_tile(const uint8_t* raw, uint8_t* kt, int tid) {
#pragma unroll
  for (int k = 0; k < kTok * kChunks / kThreads; ++k) {
    const int u = tid + k * kThreads, r = u / kChunks, c0 = (u % kChunks) * 8;
    const uint8_t* src = raw + r * kF8Row;
    uint4 out;
    if (c0 < kDL) {
      const uint2 b = *reinterpret_cast<const uint2*>(src + c0);
      const float sc = *reinterpret_cast<const float*>(src + kF8Scales + 4 * (c0 / static_cast<int>(cpu::kMlaFp8Group)));
      uint32_t w[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const uint32_t word = e < 2 ? b.x : b.y;
        const float lo = __fmul_rn(fp8e4m3_to_f32(static_cast<uint8_t>(word >> (16 * (e & 1)))), sc);
        const float hi = __fmul_rn(fp8e4m3_to_f32(static_cast<uint8_t>(word >> (16 * (e & 1) + 8))), sc);
        w[e] = static_cast<uint32_t>(f32_to_bf16_bits(lo)) | (static_cast<uint32_t>(f32_to_bf16_bits(hi)) << 16);
      }
      out = make_uint4(w[0], w[1], w[2], w[3]);
    } else {
      out = *reinterpret_cast<const uint4*>(src + kF8Rope + 2 * (c0 - kDL));
    }
    *reinterpret_cast<uint4*>(kt + r * kPitch + 2 * c0) = out;
  }
}

template <bool kFp8>
__global__ void __launch_bounds__(kThreads, 1) decode_tc_kernel(const Params p) {
  extern __shared__ __align__(16) uint8_t smem[];
  uint8_t* qs = smem;                                             // [64][kPitch] bf16
  uint8_t* ks = qs + kQBytes;                                     // bf16: [2][32][kPitch]; fp8: [32][kPitch] bf16
  uint8_t* raw = ks + size_t{kTok} * kPitch;                      // fp8: [2][32][kF8Row] raw rows
  float* ss = reinterpret_cast<float*>(ks + k_tile_bytes(kFp8));  // [kKSplit][64][kSPitch] partial scores
  uint8_t* ps = reinterpret_cast<uint8_t*>(ss) + kSBytes;         // [64][kPPitch] bf16 probabilities
  float* ms = reinterpret_cast<float*>(ps + kPBytes);             // [64] running max
  float* ls = ms + kHeads;                                        // [64] running sum
  float* cs = ls + kHeads;                                        // [64] rescale of this tile

  int64_t bid = blockIdx.x;
  const int64_t split = bid % p.splits;
  bid /= p.splits;
  const int64_t g = bid % p.ngroups, b = bid / p.ngroups;
  const int64_t h0 = g * kHeads;
  const int nhg = static_cast<int>(p.nh - h0 < kHeads ? p.nh - h0 : kHeads);
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;

  // This split's tokens [s0, s1), as in decode_kernel but in whole 32-token tiles.
  int64_t len = p.seq_lens[b];
  len = len < 0 ? 0 : len > p.max_blocks * p.block_size ? p.max_blocks * p.block_size : len;
  int64_t per = (len + p.splits - 1) / p.splits;
  per = (per + kTok - 1) / kTok * kTok;
  const int64_t s0 = split * per < len ? split * per : len, s1 = s0 + per < len ? s0 + per : len;
  const int32_t* bt = p.block_table + b * p.max_blocks;

  const int ntiles = s1 > s0 ? static_cast<int>((s1 - s0 + kTok - 1) / kTok) : 0;

  // Q (q_lat | q_pe) as bf16; heads past nh are zero rows. A split without tokens skips it.
  for (int i = tid; ntiles > 0 && i < kHeads * (kRow / 2); i += kThreads) {
    const int h = i / (kRow / 2), c = 2 * (i % (kRow / 2));
    float v0 = 0.f, v1 = 0.f;
    if (h < nhg) {
      const int64_t hh = b * p.nh + h0 + h;
      v0 = c < kDL ? p.q_lat[hh * kDL + c] : p.q[hh * p.dk + p.dn + (c - kDL)];
      v1 = c + 1 < kDL ? p.q_lat[hh * kDL + c + 1] : p.q[hh * p.dk + p.dn + (c + 1 - kDL)];
    }
    *reinterpret_cast<uint32_t*>(qs + h * kPitch + 2 * c) =
        static_cast<uint32_t>(f32_to_bf16_bits(v0)) | (static_cast<uint32_t>(f32_to_bf16_bits(v1)) << 16);
  }
  if (tid < kHeads) ms[tid] = -INFINITY, ls[tid] = 0.f;

  // This thread's cache row of every tile: row `lrow`, token s0 + lrow + kTok it, kept as (entry of
  // the block table, offset in the block) and advanced by kTok per tile; past the first tile the
  // 64-bit division only runs for blocks of at most kTok tokens.
  const int lrow = tid / kRowThreads, lpart = tid % kRowThreads;
  int64_t lblk = (s0 + lrow) / p.block_size, loff = (s0 + lrow) % p.block_size, lpos = s0 + lrow;
  auto load_tile = [&](int buf) {
    int64_t blk = -1;
    if (lpos < s1) blk = bt[lblk];
    const bool ok = blk >= 0 && blk < p.num_blocks;
    if constexpr (kFp8) {  // raw rows; a zero row dequantizes to zeros (e4m3 0 x scale 0)
      uint8_t* dst = raw + (static_cast<size_t>(buf) * kTok + lrow) * kF8Row + lpart * 16;
      const uint8_t* src = static_cast<const uint8_t*>(p.cache) + (ok ? blk * p.block_size + loff : 0) * kF8Row + lpart * 16;
#pragma unroll
      for (int j = 0; j < kF8RowChunks; ++j) {
        if (lpart + j * kRowThreads >= kF8Chunks) continue;
        if (ok)
          mma::cp_async16(dst + j * kRowThreads * 16, src + j * kRowThreads * 16);
        else
          *reinterpret_cast<uint4*>(dst + j * kRowThreads * 16) = make_uint4(0, 0, 0, 0);
      }
    } else {
      uint8_t* dst = ks + (static_cast<size_t>(buf) * kTok + lrow) * kPitch + lpart * 16;
      if (ok) {
        const uint16_t* src = static_cast<const uint16_t*>(p.cache) + (blk * p.block_size + loff) * kRow + lpart * 8;
#pragma unroll
        for (int j = 0; j < kRowChunks; ++j) mma::cp_async16(dst + j * kRowThreads * 16, src + j * kRowThreads * 8);
      } else {
#pragma unroll
        for (int j = 0; j < kRowChunks; ++j) *reinterpret_cast<uint4*>(dst + j * kRowThreads * 16) = make_uint4(0, 0, 0, 0);
      }
    }
    mma::cp_async_commit();
    lpos += kTok, loff += kTok;
    if (loff >= p.block_size) {
      if (loff - p.block_size < p.block_size)
        loff -= p.block_size, ++lblk;
      else
        lblk += loff / p.block_size, loff %= p.block_size;
    }
  };

  float acc[4][8][4];
  zero_regs(acc);

  if (ntiles > 0) load_tile(0);
  for (int it = 0; it < ntiles; ++it) {
    const int buf = it & 1;
    const int64_t t0 = s0 + static_cast<int64_t>(it) * kTok;
    const int nt = static_cast<int>(s1 - t0 < kTok ? s1 - t0 : kTok);
    if (it + 1 < ntiles) {
      load_tile(buf ^ 1);  // its buffer's last readers passed the barrier ending it - 1
      mma::cp_async_wait<1>();
    } else {
      mma::cp_async_wait<0>();
    }
    __syncthreads();  // tile `it` (and Q, on the first pass) visible to every warp
    const uint8_t* kt = ks;
    if constexpr (kFp8) {
      dequant_fp8_tile(raw + static_cast<size_t>(buf) * kTok * kF8Row, ks, tid);
      __syncthreads();  // the bf16 tile complete
    } else {
      kt = ks + static_cast<size_t>(buf) * kTok * kPitch;
    }

    // S = Q K^T: heads 32 (warp % 2) .. + 31, all 32 tokens, k16 steps 9 (warp / 2) .. + 8
    {
      const int mh = frag::dec_s_mh(warp), kq = frag::dec_s_kq(warp);
      float sf[2][4][4] = {};
#pragma unroll
      for (int step = 0; step < kRow / 16 / kKSplit; ++step) {
        const int k16 = kq * (kRow / 16 / kKSplit) + step;
        uint32_t a[2][4], bb[2][4];
#pragma unroll
        for (int mi = 0; mi < 2; ++mi)
          mma::ldmatrix_x4(a[mi], qs + (32 * mh + 16 * mi + frag::a_row(lane)) * kPitch + k16 * 32 + frag::a_col16(lane) * 16);
#pragma unroll
        for (int n16 = 0; n16 < 2; ++n16)
          mma::ldmatrix_x4(bb[n16], kt + (16 * n16 + frag::b_row(lane)) * kPitch + k16 * 32 + frag::b_col16(lane) * 16);
#pragma unroll
        for (int mi = 0; mi < 2; ++mi)
#pragma unroll
          for (int n16 = 0; n16 < 2; ++n16) {
            mma::bf16_m16n8k16(sf[mi][2 * n16], a[mi], bb[n16][0], bb[n16][1]);
            mma::bf16_m16n8k16(sf[mi][2 * n16 + 1], a[mi], bb[n16][2], bb[n16][3]);
          }
      }
      float* part = ss + kq * kHeads * kSPitch;
#pragma unroll
      for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int nj = 0; nj < 4; ++nj)
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const int head = 32 * mh + 16 * mi + frag::c_row(lane, 2 * h), tok = 8 * nj + frag::c_col(lane, 0);
            *reinterpret_cast<float2*>(part + head * kSPitch + tok) = make_float2(sf[mi][nj][2 * h], sf[mi][nj][2 * h + 1]);
          }
    }
    __syncthreads();

    // Online softmax: warp w takes heads 8w .. 8w + 7, lane = token.
#pragma unroll
    for (int hh = 0; hh < kHeads / kWarps; ++hh) {
      const int head = warp * (kHeads / kWarps) + hh;
      const float* sh = ss + head * kSPitch + lane;
      const float dot = (sh[0] + sh[kHeads * kSPitch]) + (sh[2 * kHeads * kSPitch] + sh[3 * kHeads * kSPitch]);
      const float s = online_softmax_row(lane < nt ? dot * p.scale : -INFINITY, ms, ls, cs, head);
      *reinterpret_cast<uint16_t*>(ps + head * kPPitch + 2 * lane) = f32_to_bf16_bits(s);
    }
    __syncthreads();

    // O = O * corr + P V: all heads x latent columns 64 warp .. 64 warp + 63.
#pragma unroll
    for (int mi = 0; mi < 4; ++mi)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const float c = cs[16 * mi + frag::c_row(lane, 2 * h)];
#pragma unroll
        for (int nj = 0; nj < 8; ++nj) acc[mi][nj][2 * h] *= c, acc[mi][nj][2 * h + 1] *= c;
      }
#pragma unroll
    for (int k16 = 0; k16 < kTok / 16; ++k16) {
      uint32_t pa[4][4];
#pragma unroll
      for (int mi = 0; mi < 4; ++mi)
        mma::ldmatrix_x4(pa[mi], ps + (16 * mi + frag::a_row(lane)) * kPPitch + k16 * 32 + frag::a_col16(lane) * 16);
#pragma unroll
      for (int np = 0; np < 4; ++np) {
        uint32_t vb[4];
        mma::ldmatrix_x4_trans(vb, kt + (16 * k16 + frag::bt_row(lane)) * kPitch + frag::dec_v_col(warp, np, lane) * 2);
#pragma unroll
        for (int mi = 0; mi < 4; ++mi) {
          mma::bf16_m16n8k16(acc[mi][2 * np], pa[mi], vb[0], vb[1]);
          mma::bf16_m16n8k16(acc[mi][2 * np + 1], pa[mi], vb[2], vb[3]);
        }
      }
    }
    __syncthreads();  // ss, ps, cs and this K buffer are rewritten next
  }
  __syncthreads();  // ms / ls final, also for a split without tokens

#pragma unroll
  for (int mi = 0; mi < 4; ++mi)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int head = 16 * mi + frag::c_row(lane, 2 * h);
      if (head >= nhg) continue;
      const float l = ls[head], inv = l > 0 ? 1.f / l : 0.f;
#pragma unroll
      for (int nj = 0; nj < 8; ++nj)
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          const int64_t col = frag::dec_o_col(warp, nj, lane, j);
          const float v = acc[mi][nj][2 * h + j];
          if (p.splits == 1)
            p.o_lat[(b * p.nh + h0 + head) * kDL + col] = v * inv;
          else
            p.part_acc[(((b * p.splits + split) * p.nh) + h0 + head) * kDL + col] = v;
        }
    }
  if (p.splits > 1 && tid < nhg) {
    const int64_t base = (b * p.splits + split) * p.nh + h0 + tid;
    p.part_ml[base * 2] = ms[tid];
    p.part_ml[base * 2 + 1] = ls[tid];
  }
}

}  // namespace

bool mla_decode_tc_supported(const cpu::MlaDims& d, cpu::MlaCache cf, const void* cache) {
  return cf != cpu::MlaCache::F32 && d.dl == kDL && d.dr == kDR && d.nh > 0 && (reinterpret_cast<uintptr_t>(cache) & 15) == 0 &&
         static_cast<size_t>(device_attr(cudaDevAttrMaxSharedMemoryPerBlockOptin)) >= smem_bytes(cf == cpu::MlaCache::FP8);
}

void mla_decode_tc(int64_t batch, const MlaDecodeArgs& args, cpu::MlaCache cf, void* stream) {
  Params p;
  static_cast<MlaDecodeArgs&>(p) = args;
  p.ngroups = (p.nh + kHeads - 1) / kHeads;
  const int64_t blocks = batch * p.ngroups * p.splits;
  if (blocks > 0x7fffffffLL)
    fail(Code::E_SHAPE, "mlaDecodeAbsorbed (CUDA): %lld thread blocks exceed the grid limit", static_cast<long long>(blocks));
  const bool fp8 = cf == cpu::MlaCache::FP8;
  const auto kernel = fp8 ? decode_tc_kernel<true> : decode_tc_kernel<false>;
  check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem_bytes(fp8))),
        "cudaFuncSetAttribute (MLA decode)");
  kernel<<<static_cast<unsigned>(blocks), kThreads, smem_bytes(fp8), static_cast<cudaStream_t>(stream)>>>(p);
}

}  // namespace lc::gpu
