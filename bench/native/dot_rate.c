// The core's issue rate of the instructions the few-row kernels are built on, register operands
// and no memory traffic: 24 independent accumulator chains (enough to cover the latency) of
// vdpbf16ps zmm (32 bf16 multiply-adds = 64 FLOPs each; the lanes / in-place GEMMs'
// instruction, linear_avx512.cc), the same with an embedded {1to16} broadcast memory operand (how
// lanes_block reads its weights), and vfmadd231ps zmm (16 FMAs: the fp32 GEMV's). One thread:
// run it alone to get one core's ceiling, the GEMM's FLOP rate at 2 threads is twice that at best.
// On the session-15 2-vCPU Zen 5 VM: ~3.5-3.7 G instructions/s each (one per cycle), so the bf16
// dot product tops out near 225-235 GFLOP/s per core (bench/RESULTS.md wt15-spec8).
//
// Build and run (under the heavy lock):
//   gcc -O2 -mavx512f -mavx512bf16 bench/native/dot_rate.c -o /tmp/dot_rate && /tmp/dot_rate
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(void) {
  const long n = 20000000;
  int32_t wmem[64];
  for (int i = 0; i < 64; i++) wmem[i] = 0x3f803f80;
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0, a8 = a0, a9 = a0, a10 = a0,
         a11 = a0;
  __m512 b0 = a0, b1 = a0, b2 = a0, b3 = a0, b4 = a0, b5 = a0, b6 = a0, b7 = a0, b8 = a0, b9 = a0, b10 = a0, b11 = a0;
  const __m512i x = _mm512_set1_epi32(0x3f803f80), y = _mm512_set1_epi32(0x3f803f81);
#define ALL(OP)                                                                                                                \
  OP(a0, 0) OP(a1, 1) OP(a2, 2) OP(a3, 3) OP(a4, 4) OP(a5, 5) OP(a6, 6) OP(a7, 7) OP(a8, 8) OP(a9, 9) OP(a10, 10) OP(a11, 11) \
  OP(b0, 12) OP(b1, 13) OP(b2, 14) OP(b3, 15) OP(b4, 16) OP(b5, 17) OP(b6, 18) OP(b7, 19) OP(b8, 20) OP(b9, 21) OP(b10, 22)   \
  OP(b11, 23)
#define DP_REG(a, o) asm volatile("vdpbf16ps %1, %2, %0" : "+v"(a) : "v"(x), "v"(y));
#define DP_MEM(a, o) asm volatile("vdpbf16ps %2%{1to16%}, %1, %0" : "+v"(a) : "v"(x), "m"(wmem[o]));
#define FMA(a, o) asm volatile("vfmadd231ps %1, %2, %0" : "+v"(a) : "v"(x), "v"(y));
  const double t0 = now();
  for (long i = 0; i < n; i++) { ALL(DP_REG) }
  const double t1 = now();
  for (long i = 0; i < n; i++) { ALL(DP_MEM) }
  const double t2 = now();
  for (long i = 0; i < n; i++) { ALL(FMA) }
  const double t3 = now();
  float s[16];
  _mm512_storeu_ps(s, _mm512_add_ps(a0, b11));
  const double k = 24.0 * n;
  printf("vdpbf16ps zmm, registers:   %.2f G instr/s, %.0f GFLOP/s\n", k / (t1 - t0) / 1e9, k * 64 / (t1 - t0) / 1e9);
  printf("vdpbf16ps zmm, {1to16} mem: %.2f G instr/s, %.0f GFLOP/s\n", k / (t2 - t1) / 1e9, k * 64 / (t2 - t1) / 1e9);
  printf("vfmadd231ps zmm:            %.2f G instr/s, %.0f GFLOP/s (checksum %g)\n", k / (t3 - t2) / 1e9, k * 32 / (t3 - t2) / 1e9,
         s[0]);
  return 0;
}
