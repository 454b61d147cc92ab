// Row gather on the CPU: out[i] = src[idx[i]] for rows of any element type. Plain C++, never throws.
#pragma once
#include <cstdint>

namespace lc::cpu {

// Copies row idx[i] of src ([rows] rows of row_bytes bytes each) to row i of out, for i < n.
// Returns -1 on success, or the first i whose idx[i] is outside [0, rows) (nothing is written then).
// out must not overlap src.
int64_t gather_rows(int64_t n, int64_t row_bytes, const void* src, int64_t rows, const int32_t* idx, void* out);

}  // namespace lc::cpu
