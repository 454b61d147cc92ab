// The Hopper (sm_90a) GEMM for the dense bf16 linear: TMA loads both operands into 128-byte
// swizzled shared memory through a 6-stage mbarrier ring, and two consumer warpgroups multiply them
// with wgmma.m64n128k16 (bf16 in, fp32 accumulators in registers). y[t, n] = x[t, :] . W[n, :].
//
// Tiling, written out: warp-specialised and persistent. A CTA is 3 warpgroups (384 threads) and
// walks the 128 x 128 output tiles blockIdx.x, blockIdx.x + gridDim.x, ... (grid = min(tiles, SMs);
// consecutive tiles share W's 128 rows across the M tiles). Warpgroup 0 is the producer: one thread
// walks the same (tile, 64-element K stage) sequence, waits for the stage's `empty` barrier (all 8
// consumer warps released its previous use), arms its `full` barrier with the bytes to expect and
// issues the two TMA loads (A box 64 x 128 rows of x, B box 64 x 128 rows of W; out-of-bounds rows /
// columns arrive as zeros, so any t, n and K % 8 == 0 work); the other producer threads exit.
// Warpgroups 1 and 2 are the consumers wg = 0, 1, rows 64 wg .. 64 wg + 63 of the tile: per stage they
// wait on `full` (phase = use count & 1), issue 4 (k16 steps) wgmmas on descriptors into the
// swizzled tiles, commit, and wait_group 1: the previous stage's group is then complete, so each
// warp's lane 0 releases that stage while this stage's group keeps the tensor cores busy. No block
// barrier after the prologue. The epilogue (registers straight to global, pairs of columns as one
// store) overlaps the producer's loads of the next tile's first stages.
//
// Registers: a consumer holds 64 fp32 accumulators (m64n128), well inside the 168 per thread of a
// 384-thread CTA, so setmaxnreg (moving the producer's registers to the consumers) buys nothing at
// this tile and is not used.
//
// Descriptors (PTX ISA, wgmma matrix descriptor): start address >> 4 in bits 0-13, leading byte
// offset (unused for K-major swizzled tiles) = 1, stride byte offset = 1024 >> 4 (8 rows of 128
// bytes: one swizzle atom), swizzle mode 1 = 128B in bits 62-63. A k16 step inside the 128-byte row
// advances the start address by 32 bytes, as the swizzle is applied by the hardware on the address.
//
// Opt-in until it has run on a card (LONGCAT_WGMMA=1 or setCudaGemm('wgmma')): linear() then uses it
// for bf16 x bf16 where the device runs this build's sm_90a image.
#include <atomic>
#include <cstdlib>

#include "include/common.cuh"
#include "include/per_device.cuh"
#include "include/hopper.cuh"
#include "kernels.h"

namespace lc::gpu {
namespace {

constexpr int kBM = 128, kBN = 128, kBK = 64, kStages = 6;
constexpr int kConsumers = 2, kThreads = 128 * (kConsumers + 1);  // producer warpgroup 0; consumers 1, 2
constexpr int kABytes = kBM * kBK * 2, kBBytes = kBN * kBK * 2;   // per stage
constexpr size_t kSmemBytes = kStages * (kABytes + kBBytes) + 1024 /* alignment slack */ + 2 * kStages * 8 /* barriers */;
static_assert(kBM == 64 * kConsumers, "each consumer warpgroup owns 64 rows of the tile");

__global__ void __launch_bounds__(kThreads, 1)
    wgmma_linear_kernel(const __grid_constant__ CUtensorMap ta, const __grid_constant__ CUtensorMap tb, int64_t t, int64_t n,
                        int64_t k, void* __restrict__ y, bool yb) {
#ifdef LC_WGMMA
  extern __shared__ uint8_t smem_raw[];
  uint8_t* smem = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t{1023});
  uint8_t* sa = smem;                                                    // [stages][128 rows][128 bytes], swizzled
  uint8_t* sb = smem + kStages * kABytes;                                // [stages][128 rows][128 bytes], swizzled
  uint64_t* full = reinterpret_cast<uint64_t*>(sb + kStages * kBBytes);  // TMA bytes landed
  uint64_t* empty = full + kStages;                                      // consumers done reading
  const int tid = threadIdx.x, wg = (tid >> 7) - 1, warp = (tid >> 5) & 3, lane = tid & 31;  // wg: consumer index, -1 producer
  const int64_t m_tiles = (t + kBM - 1) / kBM, tiles = m_tiles * ((n + kBN - 1) / kBN);
  const int steps = static_cast<int>((k + kBK - 1) / kBK);

  if (tid == 0) {
    for (int s = 0; s < kStages; ++s) hopper::mbar_init(&full[s], 1), hopper::mbar_init(&empty[s], 4 * kConsumers);
    hopper::mbar_fence_init();
  }
  __syncthreads();

  if (wg < 0) {  // producer
    if (tid != 0) return;
    int it = 0;  // stages issued so far: ring slot it % kStages, its use it / kStages
    for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
      const int32_t m0 = static_cast<int32_t>(tile % m_tiles) * kBM, n0 = static_cast<int32_t>(tile / m_tiles) * kBN;
      for (int i = 0; i < steps; ++i, ++it) {
        const int s = it % kStages;
        if (it >= kStages) hopper::mbar_wait(&empty[s], (it / kStages - 1) & 1);
        hopper::mbar_expect_tx(&full[s], kABytes + kBBytes);
        hopper::tma_load_2d(sa + s * kABytes, &ta, i * kBK, m0, &full[s]);
        hopper::tma_load_2d(sb + s * kBBytes, &tb, i * kBK, n0, &full[s]);
      }
    }
    return;
  }

  const bool pairs = n % 2 == 0 && reinterpret_cast<uintptr_t>(y) % (yb ? 4 : 8) == 0;  // a column pair as one store
  int it = 0;  // stages consumed so far, in the producer's order
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int64_t m0 = tile % m_tiles * kBM, n0 = tile / m_tiles * kBN;
    float acc[64];
#pragma unroll
    for (int i = 0; i < 64; ++i) acc[i] = 0.f;
    for (int i = 0; i < steps; ++i, ++it) {
      const int s = it % kStages;
      hopper::mbar_wait(&full[s], (it / kStages) & 1);
      hopper::fence_operands(acc);
      hopper::wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < kBK / 16; ++kk)
        hopper::wgmma_m64n128k16(acc, hopper::desc_128b(sa + s * kABytes + wg * 64 * 128 + kk * 32),
                                 hopper::desc_128b(sb + s * kBBytes + kk * 32));
      hopper::wgmma_commit();
      hopper::wgmma_wait<1>();  // the previous stage's wgmmas are done: release it
      hopper::fence_operands(acc);
      if (i > 0 && lane == 0) hopper::mbar_arrive(&empty[(it + kStages - 1) % kStages]);
    }
    hopper::wgmma_wait<0>();
    hopper::fence_operands(acc);
    if (lane == 0) hopper::mbar_arrive(&empty[(it + kStages - 1) % kStages]);

      // accumulator layout (m64nN): value j of a thread -> row 16 warp + lane / 4 + 8 ((j % 4) / 2),
      // column 8 (j / 4) + 2 (lane % 4) + j % 2
#pragma unroll
    for (int j = 0; j < 64; j += 2) {
      const int64_t r = m0 + wg * 64 + warp * 16 + (lane >> 2) + 8 * ((j & 3) >> 1);
      const int64_t c = n0 + 8 * (j >> 2) + 2 * (lane & 3);
      if (r >= t || c >= n) continue;
      if (pairs) {  // c is even and c + 1 < n
        if (yb)
          *reinterpret_cast<uint32_t*>(static_cast<uint16_t*>(y) + r * n + c) =
              static_cast<uint32_t>(f32_to_bf16_bits(acc[j])) | (static_cast<uint32_t>(f32_to_bf16_bits(acc[j + 1])) << 16);
        else
          *reinterpret_cast<float2*>(static_cast<float*>(y) + r * n + c) = make_float2(acc[j], acc[j + 1]);
      } else {
        for (int e = 0; e < 2 && c + e < n; ++e) {
          if (yb)
            static_cast<uint16_t*>(y)[r * n + c + e] = f32_to_bf16_bits(acc[j + e]);
          else
            static_cast<float*>(y)[r * n + c + e] = acc[j + e];
        }
      }
    }
  }
#else
  (void)t, (void)n, (void)k, (void)y, (void)yb;
#endif
}

}  // namespace

#ifndef LC_CUDA_EMU
namespace {
PFN_cuTensorMapEncodeTiled_v12000 encode_fn() {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult q;
    check(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &q),
          "cudaGetDriverEntryPoint");
    if (q != cudaDriverEntryPointSuccess || !p) fail(Code::E_CUDA, "cuTensorMapEncodeTiled is not available from this driver");
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(p);
  }();
  return fn;
}
}  // namespace

CUtensorMap hopper::tensor_map_bf16(const void* base, int64_t rows, int64_t k, uint32_t box_k, uint32_t box_rows) {
  CUtensorMap m;
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(k), static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(k) * 2};
  const cuuint32_t box[2] = {box_k, box_rows}, elem[2] = {1, 1};
  const CUresult r = encode_fn()(&m, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, const_cast<void*>(base), dims, strides, box, elem,
                                 CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                                 CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS)
    fail(Code::E_CUDA, "cuTensorMapEncodeTiled failed (%d) for a [%lld, %lld] bf16 operand", static_cast<int>(r),
         static_cast<long long>(rows), static_cast<long long>(k));
  return m;
}
#endif

static std::atomic<bool> g_wgmma{[] {
  const char* v = std::getenv("LONGCAT_WGMMA");
  return v != nullptr && v[0] == '1';
}()};
bool wgmma_enabled() { return g_wgmma.load(); }
void set_wgmma_enabled(bool on) { g_wgmma.store(on); }

bool linear_wgmma(int64_t t, const void* x, DType xt, const cpu::WeightRef& w, void* y, DType yt, void* stream) {
  const auto aligned = [](const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; };
  if (xt != DType::BF16 || w.dtype != DType::BF16 || w.k % 8 != 0 || w.k == 0 || !aligned(x) || !aligned(w.data)) return false;
  const int dev = current_device();                                   // the device the launch goes to
  if (!kernel_image(dev).wgmma() || t > 65535LL * kBM) return false;  // an sm_90 (not 90a) image: body compiled out
  // The shared-memory opt-in belongs to the device: set it once on each.
  static PerDevice<bool> smem_optin;
  smem_optin.get(dev, [](int) {
    check(cudaFuncSetAttribute(wgmma_linear_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kSmemBytes)),
          "cudaFuncSetAttribute (wgmma linear)");
    return true;
  });
  const CUtensorMap ta = hopper::tensor_map_bf16(x, t, w.k, kBK, kBM), tb = hopper::tensor_map_bf16(w.data, w.n, w.k, kBK, kBN);
  const int64_t tiles = ceil_div(w.n, kBN) * ceil_div(t, kBM);
  const dim3 grid(static_cast<unsigned>(std::min<int64_t>(tiles, device_attr(cudaDevAttrMultiProcessorCount))));  // persistent
  wgmma_linear_kernel<<<grid, kThreads, kSmemBytes, static_cast<cudaStream_t>(stream)>>>(ta, tb, t, w.n, w.k, y,
                                                                                         yt == DType::BF16);
  return true;
}

}  // namespace lc::gpu
