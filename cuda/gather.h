// CUDA launcher of the row gather (contract: native/cpu/gather.h). Device pointers; `stream` is a
// cudaStream_t; never allocates or syncs.
#pragma once
#include <cstdint>

namespace lc::gpu {

// cpu::gather_rows, except that an index outside [0, rows) cannot raise an error from a kernel:
// its row of out is written as zeros.
void gather_rows(int64_t n, int64_t row_bytes, const void* src, int64_t rows, const int32_t* idx, void* out, void* stream);

// cpu::gather_columns, except that an index outside [0, k) writes zeros in its column of out.
void gather_columns(int64_t rows, int64_t k, int64_t n, int64_t elem_bytes, const void* src, const int32_t* idx, void* out,
                    void* stream);

}  // namespace lc::gpu
