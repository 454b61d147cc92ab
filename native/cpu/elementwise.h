// Small element-wise and row-wise kernels of the forward pass: embedding gather, SwiGLU, residual
// add, scaling, argmax and (log-)softmax over the last dimension. Plain C++, never throw; SIMD
// variants (AVX2, AVX-512) are chosen at run time from lc::cpu::isa().
#pragma once
#include <cstdint>

#include "../dtype.h"

namespace lc::cpu {

// y[t, :] = float32(table[ids[t], :]) for t < T. table: f32 or bf16 [V, H]; y: f32 [T, H].
// Returns -1 on success, or the first t whose id is outside [0, V) (y is then partly written).
int64_t embedding(int64_t T, int64_t H, const void* table, DType tt, int64_t V, const int32_t* ids, float* y);

// y = silu(gate) * up, silu(z) = z * sigmoid(z) = z / (1 + exp(-z)). n elements, all f32.
void silu_mul(int64_t n, const float* gate, const float* up, float* y);

// y = a + alpha * b (y may alias a or b). n elements, all f32.
void add(int64_t n, const float* a, const float* b, float alpha, float* y);

// y = alpha * x (y may alias x).
void scale(int64_t n, const float* x, float alpha, float* y);

// y[n, c] = x[n, c] * scales[n % r, c / group] for x, y [rows, cols] (y may alias x) and scales
// [r, ceil(cols / group)]: per-block factors, e.g. FP8 block scales applied outside a GEMM.
void scale_groups(int64_t rows, int64_t cols, const float* x, const float* scales, int64_t r, int64_t group, float* y);

// idx[r] = argmax_j x[r, j]; ties -> lowest index; NaN never wins; a row of only -inf/NaN -> 0.
void argmax(int64_t rows, int64_t V, const float* x, int32_t* idx);
// The same rule on one row, on the calling thread (the samplers' greedy rows). Comparisons only:
// the same index on every ISA.
int32_t argmax_row(const float* x, int64_t V);

// y[r, :] = softmax(x[r, :]) (or log_softmax when `log`), max-subtracted. y may alias x.
void softmax(int64_t rows, int64_t V, const float* x, float* y, bool log);

}  // namespace lc::cpu
