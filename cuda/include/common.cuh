// Shared CUDA helpers: error checks that throw lc::Error (never abort), bf16 and fp8 loads.
#pragma once
#ifdef LC_CUDA_EMU  // the CPU emulator of test/emu (native test harness only)
#include "../../test/emu/cuda_emu.h"
#include "../../native/cpu/numeric.h"
#else
#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>
#endif

#include "../../native/common.h"

namespace lc::gpu {

inline void check(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return;
  cudaGetLastError();  // clear the sticky-free error state so later calls are not poisoned
  if (e == cudaErrorMemoryAllocation) fail(Code::E_OOM, "%s: CUDA out of memory", what);
  fail(Code::E_CUDA, "%s: %s (%s)", what, cudaGetErrorString(e), cudaGetErrorName(e));
}

// Every element of a register array of any rank (MMA accumulators) set to 0: the loops unroll
// fully, so the indices stay constant and the array stays in registers.
__device__ __forceinline__ void zero_regs(float& x) { x = 0.f; }
template <typename T, int N>
__device__ __forceinline__ void zero_regs(T (&a)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) zero_regs(a[i]);
}

__device__ __forceinline__ float bf16_bits_to_f32(uint16_t h) { return __uint_as_float(static_cast<uint32_t>(h) << 16); }

// Round to nearest even, like lc::cpu::f32_to_bf16.
__device__ __forceinline__ uint16_t f32_to_bf16_bits(float f) {
  uint32_t u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

__device__ __forceinline__ float fp8e4m3_to_f32(uint8_t b) {
#ifdef LC_CUDA_EMU
  return cpu::fp8e4m3_to_f32(b);
#else
  __nv_fp8_e4m3 v;
  v.__x = b;
  return static_cast<float>(v);
#endif
}

inline int ceil_div(int64_t a, int64_t b) { return static_cast<int>((a + b - 1) / b); }

// An attribute of the current device (SM count, shared memory opt-in, compute capability, ...).
inline int device_attr(cudaDeviceAttr a) {
  int dev = 0, v = 0;
  check(cudaGetDevice(&dev), "cudaGetDevice");
  check(cudaDeviceGetAttribute(&v, a, dev), "cudaDeviceGetAttribute");
  return v;
}

}  // namespace lc::gpu
