// cuda/include/mma.cuh under the emulator (test/emu/cuda_emu.h): ldmatrix and mma.sync as warp-wide
// exchanges that place every element where the PTX ISA says ("ldmatrix", "Matrix Fragments for
// mma.m16n8k16 / m16n8k32"); fp32 accumulation of exact products, in k order.
#pragma once
#include <cstdint>
#include <cstring>

#include "../../native/cpu/numeric.h"
#include "cuda_emu.h"

namespace lc::gpu::mma {

inline uint16_t emu_ld16(uint64_t addr) {
  uint16_t v;
  std::memcpy(&v, reinterpret_cast<const void*>(addr), 2);
  return v;
}

// Four 8x8 b16 matrices; lane l supplies the row address of matrix l / 8, row l % 8.
inline void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  const uint64_t mine = reinterpret_cast<uint64_t>(p);
  const int l = lc_emu::t_lane;
  lc_emu::exchange(&mine, 1, [&](const uint64_t(*s)[12]) {
    for (int i = 0; i < 4; ++i) {
      const uint64_t row = s[8 * i + l / 4][0];
      r[i] = emu_ld16(row + 4 * (l % 4)) | (static_cast<uint32_t>(emu_ld16(row + 4 * (l % 4) + 2)) << 16);
    }
  });
}

inline void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
  const uint64_t mine = reinterpret_cast<uint64_t>(p);
  const int l = lc_emu::t_lane;
  lc_emu::exchange(&mine, 1, [&](const uint64_t(*s)[12]) {
    for (int i = 0; i < 4; ++i) {
      const uint64_t r0 = s[8 * i + 2 * (l % 4)][0], r1 = s[8 * i + 2 * (l % 4) + 1][0];
      r[i] = emu_ld16(r0 + 2 * (l / 4)) | (static_cast<uint32_t>(emu_ld16(r1 + 2 * (l / 4))) << 16);
    }
  });
}

inline void cp_async16(void* smem, const void* gmem) { std::memcpy(smem, gmem, 16); }
inline void cp_async_commit() {}
template <int kPending>
inline void cp_async_wait() {}

// Builds A (16 x k) and B (k x 8) from every lane's fragments (`per` elements per 32-bit register:
// 2 bf16 or 4 e4m3) and returns this lane's four accumulator values added to d.
template <int kPer, class Decode>
inline void emu_mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1, Decode decode) {
  constexpr int K = 8 * kPer;  // 16 (bf16) or 32 (e4m3)
  const uint64_t mine[6] = {a[0], a[1], a[2], a[3], b0, b1};
  const int l = lc_emu::t_lane;
  lc_emu::exchange(mine, 6, [&](const uint64_t(*s)[12]) {
    float A[16][K], B[K][8];
    const int bits = 32 / kPer;
    for (int lane = 0; lane < 32; ++lane) {
      const int g = lane / 4, q = lane % 4;
      const int rows[4] = {g, g + 8, g, g + 8}, cols[4] = {kPer * q, kPer * q, kPer * q + K / 2, kPer * q + K / 2};
      for (int i = 0; i < 4; ++i)
        for (int e = 0; e < kPer; ++e)
          A[rows[i]][cols[i] + e] = decode(static_cast<uint32_t>(s[lane][i] >> (bits * e)) & ((1u << bits) - 1));
      for (int e = 0; e < kPer; ++e) {
        B[kPer * q + e][g] = decode(static_cast<uint32_t>(s[lane][4] >> (bits * e)) & ((1u << bits) - 1));
        B[kPer * q + K / 2 + e][g] = decode(static_cast<uint32_t>(s[lane][5] >> (bits * e)) & ((1u << bits) - 1));
      }
    }
    for (int r = 0; r < 4; ++r) {
      const int row = l / 4 + 8 * (r / 2), col = 2 * (l % 4) + (r % 2);
      float acc = d[r];
      for (int k = 0; k < K; ++k) acc += A[row][k] * B[k][col];
      d[r] = acc;
    }
  });
}

inline void bf16_m16n8k16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  emu_mma<2>(d, a, b0, b1, [](uint32_t h) { return cpu::bf16_to_f32(static_cast<uint16_t>(h)); });
}
// Like cuda/include/mma.cuh, compiled out (d unchanged) in an image below sm_89.
inline void e4m3_m16n8k32(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if (lc_emu::g_exec_image.arch < 89) return;
  emu_mma<4>(d, a, b0, b1, [](uint32_t b) { return cpu::fp8e4m3_to_f32(static_cast<uint8_t>(b)); });
}

}  // namespace lc::gpu::mma
