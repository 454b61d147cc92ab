// Row gather on the GPU (contract: gather.h): blocks stride over the output rows, threads copy a
// row in the widest unit (16, 8, 4, 2 or 1 bytes) that divides the row and both row starts' alignment.
// Column gather: a grid-stride loop over the output elements, one element per thread.
#include <algorithm>

#include "include/common.cuh"
#include "gather.h"

namespace lc::gpu {

namespace {

template <typename Unit>
__global__ void gather_rows_kernel(int64_t n, int64_t row_units, const Unit* __restrict__ src, int64_t rows,
                                   const int32_t* __restrict__ idx, Unit* __restrict__ out) {
  for (int64_t i = blockIdx.x; i < n; i += gridDim.x) {
    const int64_t r = idx[i];
    Unit* dst = out + i * row_units;
    if (r < 0 || r >= rows) {  // a kernel cannot raise E_ARGUMENT: the row is zero-filled
      for (int64_t j = threadIdx.x; j < row_units; j += blockDim.x) dst[j] = Unit{};
      continue;
    }
    const Unit* from = src + r * row_units;
    for (int64_t j = threadIdx.x; j < row_units; j += blockDim.x) dst[j] = from[j];
  }
}

template <typename Unit>
void launch_gather(int64_t n, int64_t row_bytes, const void* src, int64_t rows, const int32_t* idx, void* out, cudaStream_t s) {
  const int64_t units = row_bytes / static_cast<int64_t>(sizeof(Unit));
  const int threads = static_cast<int>(std::min<int64_t>(256, (units + 31) / 32 * 32));
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(n, 65535));
  gather_rows_kernel<Unit>
      <<<blocks, threads, 0, s>>>(n, units, static_cast<const Unit*>(src), rows, idx, static_cast<Unit*>(out));
}

template <typename E>
__global__ void gather_columns_kernel(int64_t rows, int64_t k, int64_t n, const E* __restrict__ src,
                                      const int32_t* __restrict__ idx, E* __restrict__ out) {
  const int64_t total = rows * n;
  for (int64_t at = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; at < total;
       at += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = at / n, c = idx[at - r * n];
    out[at] = c >= 0 && c < k ? src[r * k + c] : E{};  // a kernel cannot raise E_ARGUMENT: zeros
  }
}

template <typename E>
void launch_gather_columns(int64_t rows, int64_t k, int64_t n, const void* src, const int32_t* idx, void* out, cudaStream_t s) {
  const int64_t total = rows * n;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((total + 255) / 256, 65535));
  gather_columns_kernel<E><<<blocks, 256, 0, s>>>(rows, k, n, static_cast<const E*>(src), idx, static_cast<E*>(out));
}

}  // namespace

void gather_columns(int64_t rows, int64_t k, int64_t n, int64_t elem_bytes, const void* src, const int32_t* idx, void* out,
                    void* stream) {
  if (rows <= 0 || n <= 0) return;
  auto s = static_cast<cudaStream_t>(stream);
  switch (elem_bytes) {
    case 1: launch_gather_columns<uint8_t>(rows, k, n, src, idx, out, s); break;
    case 2: launch_gather_columns<uint16_t>(rows, k, n, src, idx, out, s); break;
    case 4: launch_gather_columns<uint32_t>(rows, k, n, src, idx, out, s); break;
    case 8: launch_gather_columns<uint2>(rows, k, n, src, idx, out, s); break;
    default: break;
  }
}

void gather_rows(int64_t n, int64_t row_bytes, const void* src, int64_t rows, const int32_t* idx, void* out, void* stream) {
  if (n <= 0 || row_bytes <= 0) return;
  auto s = static_cast<cudaStream_t>(stream);
  // Row starts are src + k * row_bytes and out + k * row_bytes: a unit divides every one of them
  // when it divides row_bytes and both base addresses.
  const uint64_t bits = static_cast<uint64_t>(row_bytes) | reinterpret_cast<uintptr_t>(src) | reinterpret_cast<uintptr_t>(out);
  if (bits % 16 == 0)
    launch_gather<uint4>(n, row_bytes, src, rows, idx, out, s);
  else if (bits % 8 == 0)
    launch_gather<uint2>(n, row_bytes, src, rows, idx, out, s);
  else if (bits % 4 == 0)
    launch_gather<uint32_t>(n, row_bytes, src, rows, idx, out, s);
  else if (bits % 2 == 0)
    launch_gather<uint16_t>(n, row_bytes, src, rows, idx, out, s);
  else
    launch_gather<uint8_t>(n, row_bytes, src, rows, idx, out, s);
}

}  // namespace lc::gpu
