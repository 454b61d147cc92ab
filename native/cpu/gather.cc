// Row gather on the CPU (contract: gather.h): every index is checked before any row is copied.
#include "gather.h"

#include <algorithm>
#include <cstring>

#include "threadpool.h"

namespace lc::cpu {

int64_t gather_rows(int64_t n, int64_t row_bytes, const void* src, int64_t rows, const int32_t* idx, void* out) {
  for (int64_t i = 0; i < n; ++i)
    if (idx[i] < 0 || idx[i] >= rows) return i;
  if (row_bytes <= 0) return -1;
  const char* s = static_cast<const char*>(src);
  char* o = static_cast<char*>(out);
  constexpr int64_t kGrainBytes = 64 << 10;  // bytes copied per parallel chunk, at least
  parallel_for(n, std::max<int64_t>(1, kGrainBytes / row_bytes), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) std::memcpy(o + i * row_bytes, s + idx[i] * row_bytes, static_cast<size_t>(row_bytes));
  });
  return -1;
}

namespace {
template <class E>
void gather_columns_t(int64_t rows, int64_t k, int64_t n, const E* src, const int32_t* idx, E* out) {
  parallel_for(rows, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, n)), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const E* s = src + r * k;
      E* o = out + r * n;
      for (int64_t i = 0; i < n; ++i) o[i] = s[idx[i]];
    }
  });
}
}  // namespace

int64_t gather_columns(int64_t rows, int64_t k, int64_t n, int64_t elem_bytes, const void* src, const int32_t* idx, void* out) {
  for (int64_t i = 0; i < n; ++i)
    if (idx[i] < 0 || idx[i] >= k) return i;
  switch (elem_bytes) {
    case 1: gather_columns_t(rows, k, n, static_cast<const uint8_t*>(src), idx, static_cast<uint8_t*>(out)); break;
    case 2: gather_columns_t(rows, k, n, static_cast<const uint16_t*>(src), idx, static_cast<uint16_t*>(out)); break;
    case 4: gather_columns_t(rows, k, n, static_cast<const uint32_t*>(src), idx, static_cast<uint32_t*>(out)); break;
    case 8: gather_columns_t(rows, k, n, static_cast<const uint64_t*>(src), idx, static_cast<uint64_t*>(out)); break;
    default: break;
  }
  return -1;
}

}  // namespace lc::cpu
