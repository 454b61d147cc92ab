// CUDA launcher of the N-gram embedding projection + mean (contract: native/cpu/ngram.h). Device
// pointers; `stream` is a cudaStream_t; never allocates or syncs.
#pragma once
#include <cstdint>

#include "../native/dtype.h"

namespace lc::gpu {

void ngram_embed(int64_t T, int64_t H, int64_t E, int64_t D, const float* base, const void* rows, DType rt, const void* proj,
                 DType pt, float* y, void* stream);

}  // namespace lc::gpu
