// Hugepage-advised anonymous copies of tensors (see hugepage.h).
#include "hugepage.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstdio>
#include <cstring>

#include "threadpool.h"

namespace lc::cpu {

namespace {
constexpr size_t kHuge = size_t{2} << 20;
}

std::shared_ptr<HugePageBlock> HugePageBlock::map(size_t bytes) {
  if (bytes == 0) bytes = 1;
  const size_t size = (bytes + kHuge - 1) / kHuge * kHuge;
  // Over-map by one huge page and use the 2 MiB-aligned part, so every page can be a huge one.
  const size_t map_size = size + kHuge;
  void* p = ::mmap(nullptr, map_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) return nullptr;
  std::shared_ptr<HugePageBlock> b(new HugePageBlock());
  b->map_ = p;
  b->map_size_ = map_size;
  const uintptr_t a = (reinterpret_cast<uintptr_t>(p) + kHuge - 1) / kHuge * kHuge;
  b->base_ = reinterpret_cast<char*>(a);
  b->size_ = size;
#ifdef MADV_HUGEPAGE
  ::madvise(b->base_, size, MADV_HUGEPAGE);  // (refused where THP is off: 4 KiB pages, still correct)
#endif
  return b;
}

HugePageBlock::~HugePageBlock() {
  if (map_) ::munmap(map_, map_size_);
}

int64_t HugePageBlock::huge_bytes() const {
  FILE* f = std::fopen("/proc/self/smaps", "r");
  if (!f) return -1;
  char line[512];
  bool in = false;
  int64_t kb = -1;
  const uintptr_t lo = reinterpret_cast<uintptr_t>(map_), hi = lo + map_size_;
  while (std::fgets(line, sizeof line, f)) {
    unsigned long s, e;
    if (std::sscanf(line, "%lx-%lx ", &s, &e) == 2) {
      // a mapping's header line; THP may have split ours, so sum every mapping inside [lo, hi)
      in = s >= lo && e <= hi;
      continue;
    }
    long v;
    if (in && std::sscanf(line, "AnonHugePages: %ld kB", &v) == 1) kb = (kb < 0 ? 0 : kb) + v;
  }
  std::fclose(f);
  return kb < 0 ? 0 : kb * 1024;
}

std::vector<size_t> hugepage_layout(const std::vector<size_t>& sizes, size_t* total) {
  std::vector<size_t> off(sizes.size());
  size_t at = 0;
  for (size_t i = 0; i < sizes.size(); ++i) {
    off[i] = at;
    at = (at + sizes[i] + 63) / 64 * 64;
  }
  *total = sizes.empty() ? 0 : off.back() + sizes.back();
  return off;
}

std::shared_ptr<HugePageBlock> hugepage_copy(const std::vector<const void*>& src, const std::vector<size_t>& sizes,
                                             std::vector<size_t>* offsets) {
  size_t total = 0;
  *offsets = hugepage_layout(sizes, &total);
  std::shared_ptr<HugePageBlock> b = HugePageBlock::map(total);
  if (!b) return nullptr;
  // Whole huge pages per task: page p is first touched (and so allocated) by the thread that fills it.
  const std::vector<size_t>& off = *offsets;
  const int64_t pages = static_cast<int64_t>(b->size() / kHuge);
  parallel_for(pages, 1, [&](int64_t p0, int64_t p1) {
    const size_t lo = static_cast<size_t>(p0) * kHuge, hi = static_cast<size_t>(p1) * kHuge;
    // the pieces overlapping [lo, hi): the first is the last piece starting at or before lo
    size_t i = static_cast<size_t>(std::upper_bound(off.begin(), off.end(), lo) - off.begin());
    if (i > 0) --i;
    for (; i < off.size() && off[i] < hi; ++i) {
      const size_t s = std::max(off[i], lo), e = std::min(off[i] + sizes[i], hi);
      if (s < e) std::memcpy(b->data() + s, static_cast<const char*>(src[i]) + (s - off[i]), e - s);
    }
  });
  return b;
}

}  // namespace lc::cpu
