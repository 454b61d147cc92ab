// The Hopper (sm_90a) GEMM for the dense bf16 linear: TMA loads both operands into 128-byte
// swizzled shared memory through a 4-stage mbarrier ring, and one warpgroup multiplies them with
// wgmma.m64n128k16 (bf16 in, fp32 accumulators in registers). y[t, n] = x[t, :] . W[n, :].
//
// Tiling, written out: a CTA (128 threads = one warpgroup) owns a 128 x 128 output tile and walks K
// in 64-element (128-byte) stages. Thread 0 is the producer: it arms a stage's mbarrier with the
// bytes to expect and issues the two TMA loads (A box 64 x 128 rows of x, B box 64 x 128 rows of W;
// out-of-bounds rows / columns arrive as zeros, so any t, n and K % 8 == 0 work). Every thread waits
// on the stage's barrier (phase = use count & 1), issues 2 (M halves) x 4 (k16 steps) wgmmas on
// descriptors into the swizzled tiles, waits for them, and after a CTA barrier the producer refills
// that stage with the tile STAGES steps ahead, so TMA runs ahead of the math by STAGES - 1 stages.
//
// Descriptors (PTX ISA, wgmma matrix descriptor): start address >> 4 in bits 0-13, leading byte
// offset (unused for K-major swizzled tiles) = 1, stride byte offset = 1024 >> 4 (8 rows of 128
// bytes: one swizzle atom), swizzle mode 1 = 128B in bits 62-63. A k16 step inside the 128-byte row
// advances the start address by 32 bytes, as the swizzle is applied by the hardware on the address.
//
// Opt-in until it has run on a card (LONGCAT_WGMMA=1 or setCudaGemm('wgmma')): linear() then uses it
// for bf16 x bf16 on sm_90.
#include <cuda.h>
#include <cudaTypedefs.h>

#include <atomic>
#include <cstdlib>
#include <mutex>

#include "common.cuh"
#include "kernels.h"

namespace lc::gpu {
namespace {

constexpr int kBM = 128, kBN = 128, kBK = 64, kStages = 4, kThreads = 128;
constexpr int kABytes = kBM * kBK * 2, kBBytes = kBN * kBK * 2;  // per stage
constexpr size_t kSmemBytes = kStages * (kABytes + kBBytes) + 1024 /* alignment slack */ + 64 /* barriers */;

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define LC_WGMMA 1
#endif

#ifdef LC_WGMMA
__device__ __forceinline__ uint32_t smem_u32(const void* p) { return static_cast<uint32_t>(__cvta_generic_to_shared(p)); }
__device__ __forceinline__ uint64_t desc_128b(const void* p) {
  const uint64_t addr = smem_u32(p);
  return ((addr & 0x3ffff) >> 4) | (uint64_t{1} << 16) | (uint64_t{1024 >> 4} << 32) | (uint64_t{1} << 62);
}
__device__ __forceinline__ void mbar_init(uint64_t* bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(count));
}
__device__ __forceinline__ void mbar_expect_tx(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t parity) {
  uint32_t done = 0;
  while (!done)
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(smem_u32(bar)), "r"(parity)
        : "memory");
}
__device__ __forceinline__ void tma_load_2d(void* dst, const CUtensorMap* map, int32_t c0, int32_t c1, uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::"r"(smem_u32(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(smem_u32(bar))
      : "memory");
}
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_wait_all() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }
// Keeps the compiler from moving accumulator registers across the asynchronous wgmma window.
__device__ __forceinline__ void fence_operands(float (&d)[2][64]) {
#pragma unroll
  for (int h = 0; h < 2; ++h)
#pragma unroll
    for (int i = 0; i < 64; ++i) asm volatile("" : "+f"(d[h][i])::"memory");
}

// d (64 fp32 per thread: the m64 x n128 tile of this warpgroup) += A (desc) * B (desc)^T
__device__ __forceinline__ void wgmma_m64n128k16(float (&d)[64], uint64_t a, uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
        "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
        "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(a), "l"(b));
}
#endif

__global__ void __launch_bounds__(kThreads, 1)
    wgmma_linear_kernel(const __grid_constant__ CUtensorMap ta, const __grid_constant__ CUtensorMap tb, int64_t t, int64_t n,
                        int64_t k, void* __restrict__ y, bool yb) {
#ifdef LC_WGMMA
  extern __shared__ uint8_t smem_raw[];
  uint8_t* smem = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t{1023});
  uint8_t* sa = smem;                        // [stages][128 rows][128 bytes], swizzled
  uint8_t* sb = smem + kStages * kABytes;    // [stages][128 rows][128 bytes], swizzled
  uint64_t* full = reinterpret_cast<uint64_t*>(sb + kStages * kBBytes);
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int32_t m0 = static_cast<int32_t>(blockIdx.y) * kBM, n0 = static_cast<int32_t>(blockIdx.x) * kBN;
  const int steps = static_cast<int>((k + kBK - 1) / kBK);

  if (tid == 0) {
    for (int s = 0; s < kStages; ++s) mbar_init(&full[s], 1);
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();
  auto issue = [&](int i) {
    const int s = i % kStages;
    mbar_expect_tx(&full[s], kABytes + kBBytes);
    tma_load_2d(sa + s * kABytes, &ta, i * kBK, m0, &full[s]);
    tma_load_2d(sb + s * kBBytes, &tb, i * kBK, n0, &full[s]);
  };
  if (tid == 0)
    for (int i = 0; i < kStages && i < steps; ++i) issue(i);

  float acc[2][64];
#pragma unroll
  for (int h = 0; h < 2; ++h)
#pragma unroll
    for (int i = 0; i < 64; ++i) acc[h][i] = 0.f;

  for (int i = 0; i < steps; ++i) {
    const int s = i % kStages;
    mbar_wait(&full[s], (i / kStages) & 1);
    fence_operands(acc);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kBK / 16; ++kk) {
      const uint64_t b = desc_128b(sb + s * kBBytes + kk * 32);
#pragma unroll
      for (int h = 0; h < 2; ++h) wgmma_m64n128k16(acc[h], desc_128b(sa + s * kABytes + h * 64 * 128 + kk * 32), b);
    }
    wgmma_commit();
    wgmma_wait_all();
    fence_operands(acc);
    __syncthreads();  // every warp is done reading stage s
    if (tid == 0 && i + kStages < steps) issue(i + kStages);
  }

  // accumulator layout (m64nN): value j of a thread -> row 16 warp + lane / 4 + 8 ((j % 4) / 2),
  // column 8 (j / 4) + 2 (lane % 4) + j % 2
#pragma unroll
  for (int h = 0; h < 2; ++h)
#pragma unroll
    for (int j = 0; j < 64; ++j) {
      const int64_t r = m0 + h * 64 + warp * 16 + (lane >> 2) + 8 * ((j & 3) >> 1);
      const int64_t c = n0 + 8 * (j >> 2) + 2 * (lane & 3) + (j & 1);
      if (r < t && c < n) {
        if (yb) static_cast<uint16_t*>(y)[r * n + c] = f32_to_bf16_bits(acc[h][j]);
        else static_cast<float*>(y)[r * n + c] = acc[h][j];
      }
    }
#else
  (void)t, (void)n, (void)k, (void)y, (void)yb;
#endif
}

PFN_cuTensorMapEncodeTiled_v12000 encode_fn() {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult q;
    check(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &q), "cudaGetDriverEntryPoint");
    if (q != cudaDriverEntryPointSuccess || !p) fail(Code::E_CUDA, "cuTensorMapEncodeTiled is not available from this driver");
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(p);
  }();
  return fn;
}

// A [rows, k] bf16 row-major matrix as 64 x 128 boxes, 128-byte swizzle, zero fill out of bounds.
CUtensorMap tensor_map(const void* base, int64_t rows, int64_t k) {
  CUtensorMap m;
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(k), static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(k) * 2};
  const cuuint32_t box[2] = {kBK, 128}, elem[2] = {1, 1};
  const CUresult r = encode_fn()(&m, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, const_cast<void*>(base), dims, strides, box, elem,
                                 CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                                 CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS) fail(Code::E_CUDA, "cuTensorMapEncodeTiled failed (%d) for a [%lld, %lld] bf16 operand", static_cast<int>(r),
                              static_cast<long long>(rows), static_cast<long long>(k));
  return m;
}

}  // namespace

static std::atomic<bool> g_wgmma{[] {
  const char* v = std::getenv("LONGCAT_WGMMA");
  return v != nullptr && v[0] == '1';
}()};
bool wgmma_enabled() { return g_wgmma.load(); }
void set_wgmma_enabled(bool on) { g_wgmma.store(on); }

bool linear_wgmma(int64_t t, const void* x, DType xt, const cpu::WeightRef& w, void* y, DType yt, void* stream) {
  const auto aligned = [](const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; };
  if (xt != DType::BF16 || w.dtype != DType::BF16 || w.k % 8 != 0 || w.k == 0 || !aligned(x) || !aligned(w.data)) return false;
  if (compute_capability() != 90 || t > 65535LL * kBM) return false;
  static std::once_flag attr;
  std::call_once(attr, [] {
    check(cudaFuncSetAttribute(wgmma_linear_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kSmemBytes)),
          "cudaFuncSetAttribute (wgmma linear)");
  });
  const CUtensorMap ta = tensor_map(x, t, w.k), tb = tensor_map(w.data, w.n, w.k);
  const dim3 grid(static_cast<unsigned>(ceil_div(w.n, kBN)), static_cast<unsigned>(ceil_div(t, kBM)));
  wgmma_linear_kernel<<<grid, kThreads, kSmemBytes, static_cast<cudaStream_t>(stream)>>>(ta, tb, t, w.n, w.k, y, yt == DType::BF16);
  return true;
}

}  // namespace lc::gpu
