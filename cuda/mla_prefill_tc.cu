// Causal varlen MLA prefill (expanded form) on tensor cores, FlashAttention-2 style with mma.sync
// bf16 (sm_80+), for the DeepSeek / LongCat head dims: q / k = 128 nope + 64 rope, v = 128. Same
// contract as prefill_kernel in mla.cu (which handles every other case and precision 'highest');
// q, k, v and p = exp(s - m) are rounded to bf16, scores, softmax and the output accumulate in fp32.
//
// Tiling, written out: one CTA (4 warps) per (64-query tile of one sequence, head); warp w owns
// queries 16w .. 16w + 15 and keeps their Q fragments (12 k16 steps) in registers. K and V are
// rounded to bf16 once, by a conversion kernel, into a workspace in kv_b's layout (k_nope | v per
// head) plus k_pe; key tiles of 64 rows then stream global -> shared by cp.async, double-buffered
// (tile i + 1 in flight while tile i is multiplied), only up to the last key the tile's queries can
// see. Q is staged through the second buffer before the loop. Per key tile and warp:
//   S = Q K^T    16 x 64 scores = 8 n8 tiles, 12 k16 steps, K fragments by ldmatrix
//   softmax      rows g and g + 8 of each fragment; max / sum over the 4 lanes sharing a row
//                (shuffles), running max per row in registers, per-lane partial sums
//   O = O c + P V  P re-packed from the score fragments straight into A fragments (no shared
//                memory), V by ldmatrix.trans; O = 16 x 128 = 16 n8 tiles in registers
// Rows are padded to 400 (K) / 272 (V) bytes: 8 consecutive rows hit distinct 16-byte bank groups.
// The schedule (mla.cu) lists each sequence's query tiles last (most keys) first.
#include <tuple>

#include "include/common.cuh"
#include "include/fragments.h"
#include "mla_tc.h"
#include "include/mma.cuh"
#include "include/warp.cuh"

namespace lc::gpu {
namespace {

constexpr int kDN = 128, kDR = 64, kDK = kDN + kDR, kDV = 128;
constexpr int kQ = static_cast<int>(kMlaTcPrefillRows), kKeys = 64, kThreads = 128;
constexpr int kKPitch = kDK * 2 + 16, kVPitch = kDV * 2 + 16;                   // bytes
constexpr size_t kKvBytes = size_t{kKeys} * kKPitch + size_t{kKeys} * kVPitch;  // one buffer: K then V
constexpr size_t kSmem = 2 * kKvBytes;
static_assert(size_t{kQ} * kKPitch <= kKvBytes, "the Q tile is staged in the second K / V buffer");
constexpr int64_t kKV = kDN + kDV;  // kv_b row per head: k_nope | v

__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  return static_cast<uint32_t>(f32_to_bf16_bits(lo)) | (static_cast<uint32_t>(f32_to_bf16_bits(hi)) << 16);
}

// f32 -> bf16 (round to nearest even), n elements; 8 per thread with 16-byte accesses where aligned.
__global__ void to_bf16_kernel(int64_t n, const float* __restrict__ src, uint16_t* __restrict__ dst) {
  const int64_t i = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * 8;
  if (i >= n) return;
  const float* s = src + i;
  uint16_t* d = dst + i;
  if (i + 8 <= n && ((reinterpret_cast<uintptr_t>(s) | reinterpret_cast<uintptr_t>(d)) & 15) == 0) {
    const float4 a = *reinterpret_cast<const float4*>(s), b = *reinterpret_cast<const float4*>(s + 4);
    *reinterpret_cast<uint4*>(d) = make_uint4(pack2(a.x, a.y), pack2(a.z, a.w), pack2(b.x, b.y), pack2(b.z, b.w));
    return;
  }
  for (int64_t j = 0; j < 8 && i + j < n; ++j) d[j] = f32_to_bf16_bits(s[j]);
}

__global__ void __launch_bounds__(kThreads)
    prefill_tc_kernel(int64_t nh, float* __restrict__ o, const float* __restrict__ q, const uint16_t* __restrict__ kvb,
                      const uint16_t* __restrict__ kpe, const int32_t* __restrict__ qst, const int32_t* __restrict__ kst,
                      const int32_t* __restrict__ sched, float scale) {
  extern __shared__ __align__(16) uint8_t smem[];
  // buffer i: K [64 keys][kKPitch] (k_nope | k_pe), then V [64 keys][kVPitch]
  auto kbuf = [&](int i) { return smem + i * kKvBytes; };
  auto vbuf = [&](int i) { return smem + i * kKvBytes + size_t{kKeys} * kKPitch; };
  uint8_t* qs = kbuf(1);  // [64 queries][kKPitch], before the key loop

  const int64_t tile = blockIdx.x / nh, h = blockIdx.x % nh;
  if (tile >= sched[0]) return;  // uniform over the block
  const int64_t b = sched[1 + 2 * tile], j0 = sched[2 + 2 * tile];
  const int64_t q0 = qst[b], qlen = qst[b + 1] - q0, k0 = kst[b], klen = kst[b + 1] - k0;
  const int nq = static_cast<int>(qlen - j0 < kQ ? qlen - j0 : kQ);
  const int64_t pos0 = klen - qlen + j0;  // position of the tile's first query
  const int64_t kend = pos0 + nq;         // keys [0, kend) are visible to some query of the tile
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;

  // Key tile [t0, t0 + 64) into buffer `buf`: 16-byte chunks, 16 k_nope + 8 k_pe (K row) and 16 v
  // (V row) per key, by cp.async; keys past the tile's last visible one are zeros (V must be
  // finite there: those probabilities are 0, and 0 * NaN is not).
  auto issue_kv = [&](int64_t t0, int buf) {
    const int nt = static_cast<int>(kend - t0 < kKeys ? kend - t0 : kKeys);
    uint8_t* kd = kbuf(buf);
    uint8_t* vd = vbuf(buf);
    for (int i = tid; i < kKeys * 40; i += kThreads) {
      const int j = i / 40, ch = i % 40;  // int division by a constant: a multiply
      uint8_t* dst = ch < 24 ? kd + j * kKPitch + ch * 16 : vd + j * kVPitch + (ch - 24) * 16;
      if (j >= nt) {
        *reinterpret_cast<uint4*>(dst) = make_uint4(0, 0, 0, 0);
        continue;
      }
      const int64_t sk = k0 + t0 + j;
      const uint16_t* src = ch < 16   ? kvb + (sk * nh + h) * kKV + ch * 8
                            : ch < 24 ? kpe + sk * kDR + (ch - 16) * 8
                                      : kvb + (sk * nh + h) * kKV + kDN + (ch - 24) * 8;
      mma::cp_async16(dst, src);
    }
  };

  // Q tile as bf16 (rows past the sequence are zeros), then each warp's fragments into registers.
  for (int i = tid; i < kQ * (kDK / 2); i += kThreads) {
    const int r = i / (kDK / 2), c = 2 * (i % (kDK / 2));
    float v0 = 0.f, v1 = 0.f;
    if (r < nq) {
      const float* src = q + ((q0 + j0 + r) * nh + h) * kDK + c;
      v0 = src[0], v1 = src[1];
    }
    *reinterpret_cast<uint32_t*>(qs + r * kKPitch + 2 * c) = pack2(v0, v1);
  }
  __syncthreads();
  uint32_t qf[kDK / 16][4];
#pragma unroll
  for (int k16 = 0; k16 < kDK / 16; ++k16)
    mma::ldmatrix_x4(qf[k16], qs + (16 * warp + frag::a_row(lane)) * kKPitch + k16 * 32 + frag::a_col16(lane) * 16);

  float acc[kDV / 8][4];
  zero_regs(acc);
  float mrow[2] = {-INFINITY, -INFINITY}, lpart[2] = {0.f, 0.f};  // rows g, g + 8 of this warp
  const int64_t qpos[2] = {pos0 + 16 * warp + frag::c_row(lane, 0), pos0 + 16 * warp + frag::c_row(lane, 2)};

  __syncthreads();  // every warp holds its Q fragments: buffer 1 is free
  issue_kv(0, 0);
  mma::cp_async_commit();
  for (int64_t t0 = 0, it = 0; t0 < kend; t0 += kKeys, ++it) {
    const int nt = static_cast<int>(kend - t0 < kKeys ? kend - t0 : kKeys);
    const int buf = static_cast<int>(it & 1);
    // the next tile into the other buffer (consumed in the previous iteration, before its closing
    // barrier), one commit group per tile (empty at the end, so wait_group 1 always means "this tile")
    if (t0 + kKeys < kend) issue_kv(t0 + kKeys, buf ^ 1);
    mma::cp_async_commit();
    mma::cp_async_wait<1>();
    __syncthreads();  // everyone's chunks of this tile have landed
    const uint8_t* ks = kbuf(buf);
    const uint8_t* vs = vbuf(buf);

    // S = Q K^T for this warp's 16 queries x 64 keys
    float sf[kKeys / 8][4];
    zero_regs(sf);
#pragma unroll
    for (int k16 = 0; k16 < kDK / 16; ++k16)
#pragma unroll
      for (int np = 0; np < kKeys / 16; ++np) {
        uint32_t bb[4];
        mma::ldmatrix_x4(bb, ks + (16 * np + frag::b_row(lane)) * kKPitch + k16 * 32 + frag::b_col16(lane) * 16);
        mma::bf16_m16n8k16(sf[2 * np], qf[k16], bb[0], bb[1]);
        mma::bf16_m16n8k16(sf[2 * np + 1], qf[k16], bb[2], bb[3]);
      }
    // scale + causal mask, then the online softmax of rows g (regs 0, 1) and g + 8 (regs 2, 3)
    float corr[2];
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      float mx = -INFINITY;
#pragma unroll
      for (int nj = 0; nj < kKeys / 8; ++nj)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int j = 8 * nj + frag::c_col(lane, e);
          float& s = sf[nj][2 * hr + e];
          s = (j < nt && t0 + j <= qpos[hr]) ? s * scale : -INFINITY;
          mx = max_nan(mx, s);
        }
      mx = max_nan(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = max_nan(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float m_new = max_nan(mrow[hr], mx);
      corr[hr] = (m_new == -INFINITY || mrow[hr] == -INFINITY) ? (m_new == -INFINITY ? 1.f : 0.f) : expf(mrow[hr] - m_new);
      float sum = 0.f;
#pragma unroll
      for (int nj = 0; nj < kKeys / 8; ++nj)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float& s = sf[nj][2 * hr + e];
          s = m_new == -INFINITY ? 0.f : expf(s - m_new);
          sum += s;
        }
      lpart[hr] = lpart[hr] * corr[hr] + sum;
      mrow[hr] = m_new;
    }
#pragma unroll
    for (int nj = 0; nj < kDV / 8; ++nj) {
      acc[nj][0] *= corr[0], acc[nj][1] *= corr[0];
      acc[nj][2] *= corr[1], acc[nj][3] *= corr[1];
    }
    // O += P V: the score fragments of keys 16 kk .. 16 kk + 15 are the A fragment of step kk
#pragma unroll
    for (int kk = 0; kk < kKeys / 16; ++kk) {
      uint32_t pa[4];
#pragma unroll
      for (int i = 0; i < 4; ++i)
        pa[i] = pack2(sf[2 * kk + frag::pre_tile(i)][frag::pre_elem(i)], sf[2 * kk + frag::pre_tile(i)][frag::pre_elem(i) + 1]);
#pragma unroll
      for (int np = 0; np < kDV / 16; ++np) {
        uint32_t vb[4];
        mma::ldmatrix_x4_trans(vb, vs + (16 * kk + frag::bt_row(lane)) * kVPitch + (16 * np + 8 * frag::bt_col8(lane)) * 2);
        mma::bf16_m16n8k16(acc[2 * np], pa, vb[0], vb[1]);
        mma::bf16_m16n8k16(acc[2 * np + 1], pa, vb[2], vb[3]);
      }
    }
    __syncthreads();  // this buffer is consumed: the next iteration's copies may overwrite it
  }

  // l = sum over the 4 lanes of a row; o = O / l
#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    float l = lpart[hr];
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    const int r = 16 * warp + frag::c_row(lane, 2 * hr);
    if (r >= nq) continue;
    const float inv = l > 0 ? 1.f / l : 0.f;
    float* dst = o + ((q0 + j0 + r) * nh + h) * kDV;
#pragma unroll
    for (int nj = 0; nj < kDV / 8; ++nj) {
      dst[8 * nj + frag::c_col(lane, 0)] = acc[nj][2 * hr] * inv;
      dst[8 * nj + frag::c_col(lane, 1)] = acc[nj][2 * hr + 1] * inv;
    }
  }
}

}  // namespace

bool mla_prefill_tc_supported(const cpu::MlaDims& d) {
  return d.dn == kDN && d.dr == kDR && d.dv == kDV && d.nh > 0 &&
         static_cast<size_t>(device_attr(cudaDevAttrMaxSharedMemoryPerBlockOptin)) >= kSmem;
}

size_t mla_prefill_tc_workspace_bytes(const cpu::MlaDims& d, int64_t s) {
  return sizeof(uint16_t) * static_cast<size_t>(s * d.nh * kKV + s * kDR);
}

void mla_prefill_tc(const cpu::MlaDims& d, int64_t tiles_cap, int64_t s, float* o, const float* q, const float* kvb,
                    const float* kpe, const int32_t* q_start, const int32_t* kv_start, const int32_t* schedule, float scale,
                    void* kv_bf16, void* stream) {
  const int64_t blocks = tiles_cap * d.nh;
  if (blocks > 0x7fffffffLL)
    fail(Code::E_SHAPE, "mlaPrefill (CUDA): %lld thread blocks exceed the grid limit", static_cast<long long>(blocks));
  auto st = static_cast<cudaStream_t>(stream);
  uint16_t* kvb16 = static_cast<uint16_t*>(kv_bf16);
  uint16_t* kpe16 = kvb16 + s * d.nh * kKV;
  for (const auto& [n, src, dst] :
       {std::tuple<int64_t, const float*, uint16_t*>{s * d.nh * kKV, kvb, kvb16}, {s * kDR, kpe, kpe16}}) {
    const int64_t threads = (n + 7) / 8;
    if (threads == 0) continue;
    if ((threads + 255) / 256 > 0x7fffffffLL)
      fail(Code::E_SHAPE, "mlaPrefill (CUDA): %lld keys exceed the grid limit", static_cast<long long>(s));
    to_bf16_kernel<<<static_cast<unsigned>((threads + 255) / 256), 256, 0, st>>>(n, src, dst);
  }
  check(cudaFuncSetAttribute(prefill_tc_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kSmem)),
        "cudaFuncSetAttribute (MLA prefill)");
  prefill_tc_kernel<<<static_cast<unsigned>(blocks), kThreads, kSmem, st>>>(d.nh, o, q, kvb16, kpe16, q_start, kv_start, schedule,
                                                                            scale);
}

}  // namespace lc::gpu
