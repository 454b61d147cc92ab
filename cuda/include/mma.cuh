// Warp-level tensor-core primitives (PTX mma.sync / ldmatrix), usable on sm_80 and later; the
// e4m3 MMA needs sm_89 or later and is compiled out below that (the host never launches it there).
//
// Fragment layouts (PTX ISA, "Matrix Fragments for mma.m16n8k16 / m16n8k32"): with g = lane / 4 and
// q = lane % 4, and an A tile of 16 rows x 32 bytes (16 bf16 or 32 e4m3) and a B tile stored as
// 8 rows (n) x 32 bytes (k):
//   a[0]: row g,     bytes 4q..4q+3      a[1]: row g + 8, bytes 4q..4q+3
//   a[2]: row g,     bytes 16+4q..       a[3]: row g + 8, bytes 16+4q..
//   b[0]: n = g,     bytes 4q..4q+3      b[1]: n = g,     bytes 16+4q..
//   c[0], c[1]: row g, columns 2q, 2q+1  c[2], c[3]: row g + 8, the same columns
// Both element types share the byte layout, so one ldmatrix addressing serves both.
#pragma once
#include <cstdint>

#ifdef LC_CUDA_EMU  // the CPU emulator of test/emu runs the kernels: warp-wide exchanges instead of PTX
#include "../../test/emu/mma_emu.h"
#else

namespace lc::gpu::mma {

__device__ __forceinline__ uint32_t smem_addr(const void* p) { return static_cast<uint32_t>(__cvta_generic_to_shared(p)); }

// Four 8x8 b16 matrices; lane l supplies the row address of matrix l / 8, row l % 8.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

// The same, each 8x8 matrix transposed on the way: lane l receives M[2q][g], M[2q + 1][g] of the
// stored matrix M, i.e. a B fragment from a [k][n] row-major tile.
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

// 16-byte global -> shared copy that bypasses registers (sm_80+), and its group fences.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_addr(smem)), "l"(gmem) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

// d += a (16x16 bf16, row) * b (16x8 bf16, col), fp32 accumulation.
__device__ __forceinline__ void bf16_m16n8k16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// d += a (16x32 e4m3, row) * b (32x8 e4m3, col), fp32 accumulation (sm_89+).
__device__ __forceinline__ void e4m3_m16n8k32(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  asm("mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
  (void)d, (void)a, (void)b0, (void)b1;
#endif
}

}  // namespace lc::gpu::mma

#endif  // LC_CUDA_EMU
