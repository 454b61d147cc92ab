// Row gather on the GPU (contract: gather.h): blocks stride over the output rows, threads copy a
// row in the widest unit (16, 8, 4, 2 or 1 bytes) that divides the row and both row starts' alignment.
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

}  // namespace

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
