// Row and column gathers on the CPU: out[i] = src[idx[i]] for rows of any element type, and
// out[r, i] = src[r, idx[i]] within rows. Plain C++, never throws.
#pragma once
#include <cstdint>

namespace lc::cpu {

// Copies row idx[i] of src ([rows] rows of row_bytes bytes each) to row i of out, for i < n.
// Returns -1 on success, or the first i whose idx[i] is outside [0, rows) (nothing is written then).
// out must not overlap src.
int64_t gather_rows(int64_t n, int64_t row_bytes, const void* src, int64_t rows, const int32_t* idx, void* out);

// out[r, i] = src[r, idx[i]] for r < rows, i < n: src [rows, k], out [rows, n], elements of
// elem_bytes (1, 2, 4 or 8) bytes. Returns -1 on success, or the first i whose idx[i] is outside
// [0, k) (nothing is written then). out must not overlap src.
int64_t gather_columns(int64_t rows, int64_t k, int64_t n, int64_t elem_bytes, const void* src, const int32_t* idx, void* out);

}  // namespace lc::cpu
