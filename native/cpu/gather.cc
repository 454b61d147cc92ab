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

}  // namespace lc::cpu
