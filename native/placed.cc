#include "placed.h"

#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "common.h"
#include "cpu/threadpool.h"
#include "mmap.h"

#ifndef MADV_PAGEOUT
#define MADV_PAGEOUT 21
#endif

namespace lc {

namespace {
constexpr size_t kHuge = size_t{2} << 20;
constexpr int kMpolBind = 2;  // MPOL_BIND (linux/mempolicy.h)
size_t page_size() { return static_cast<size_t>(::sysconf(_SC_PAGESIZE)); }
}  // namespace

std::shared_ptr<PlacedMemory> PlacedMemory::allocate(size_t bytes, Options opts) {
  if (bytes == 0) fail(Code::E_ARGUMENT, "placed memory: 0 bytes asked");
  std::shared_ptr<PlacedMemory> m(new PlacedMemory());
  const size_t size = (bytes + kHuge - 1) / kHuge * kHuge;
  // one extra huge page to align the start
  void* p = ::mmap(nullptr, size + kHuge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) fail(Code::E_OOM, "placed memory: mmap of %zu bytes failed (%s)", size + kHuge, errno_name(errno));
  m->map_ = p;
  m->map_bytes_ = size + kHuge;
  const uintptr_t base = reinterpret_cast<uintptr_t>(p);
  m->data_ = reinterpret_cast<uint8_t*>((base + kHuge - 1) / kHuge * kHuge);
  m->size_ = bytes;
  if (opts.hugepage) m->hugepage_ = ::madvise(m->data_, size, MADV_HUGEPAGE) == 0;
  if (opts.node >= 0) {
    // a one-word node mask: nodes 0..63 (maxnode counts bits, + 1 as the kernel wants)
    if (opts.node >= 64) {
      m->bind_error_ = format("mbind: node %d is past the 64-node mask", opts.node);
    } else {
      unsigned long mask = 1UL << opts.node;
      long r = ::syscall(SYS_mbind, m->data_, size, kMpolBind, &mask, 65UL, 0UL);
      if (r == 0)
        m->bound_ = true;
      else
        m->bind_error_ = format("mbind: %s", errno_name(errno));
    }
  }
  return m;
}

PlacedMemory::~PlacedMemory() {
  if (map_) ::munmap(map_, map_bytes_);
}

int64_t PlacedMemory::huge_bytes() const {
  FILE* f = std::fopen("/proc/self/smaps", "r");
  if (!f) return -1;
  char line[512];
  bool in = false;
  int64_t kb = 0;
  const uintptr_t lo = reinterpret_cast<uintptr_t>(map_), hi = lo + map_bytes_;
  while (std::fgets(line, sizeof line, f)) {
    unsigned long s, e;
    if (std::sscanf(line, "%lx-%lx ", &s, &e) == 2) {
      // a mapping's header line; madvise / THP may have split ours, so sum every mapping inside it
      in = s >= lo && e <= hi;
      continue;
    }
    long v;
    if (in && std::sscanf(line, "AnonHugePages: %ld kB", &v) == 1) kb += v;
  }
  std::fclose(f);
  return kb * 1024;
}

void placed_copy(uint8_t* dst, size_t dst_bytes, const std::vector<PlacedRange>& ranges) {
  for (const PlacedRange& r : ranges)
    if (r.dst_offset > dst_bytes || r.bytes > dst_bytes - r.dst_offset)
      fail(Code::E_INTERNAL, "placed_copy: a range [%zu, +%zu) past the %zu-byte destination", r.dst_offset, r.bytes, dst_bytes);
  // ranges by destination offset, so that a chunk finds its first range by binary search
  std::vector<PlacedRange> sorted(ranges);
  std::sort(sorted.begin(), sorted.end(), [](const PlacedRange& a, const PlacedRange& b) { return a.dst_offset < b.dst_offset; });
  const int64_t chunks = static_cast<int64_t>((dst_bytes + kHuge - 1) / kHuge);
  cpu::parallel_for(chunks, 1, [&](int64_t c0, int64_t c1) {
    const size_t lo = static_cast<size_t>(c0) * kHuge, hi = std::min(dst_bytes, static_cast<size_t>(c1) * kHuge);
    auto it = std::upper_bound(sorted.begin(), sorted.end(), lo, [](size_t v, const PlacedRange& r) { return v < r.dst_offset; });
    if (it != sorted.begin()) --it;
    size_t at = lo;  // the chunk's bytes below `at` are done (copied, or zeroed gaps)
    for (; it != sorted.end() && it->dst_offset < hi; ++it) {
      const size_t b = std::max(lo, it->dst_offset), e = std::min(hi, it->dst_offset + it->bytes);
      if (b >= e) continue;
      if (b > at) std::memset(dst + at, 0, b - at);  // alignment gaps: touched here too
      const uint8_t* from = static_cast<const uint8_t*>(it->src) + (b - it->dst_offset);
      if (it->file_mapped)
        if (int err = populate_pages(const_cast<uint8_t*>(from), e - b, false))
          fail(err == ENOMEM ? Code::E_OOM : Code::E_CHECKPOINT,
               "placed_copy: reading %zu bytes of a mapped file failed: %s (%s)", e - b, std::strerror(err), errno_name(err));
      std::memcpy(dst + b, from, e - b);
      at = e;
    }
    if (at < hi) std::memset(dst + at, 0, hi - at);
  });
}

std::vector<int> page_nodes(const void* addr, size_t bytes, size_t max_pages, std::string* error) {
  const size_t page = page_size();
  const uintptr_t b = reinterpret_cast<uintptr_t>(addr) / page * page;
  const uintptr_t e = reinterpret_cast<uintptr_t>(addr) + bytes;
  size_t n = bytes == 0 ? 0 : (e - b + page - 1) / page;
  n = std::min(n, max_pages);
  std::vector<void*> pages(n);
  for (size_t i = 0; i < n; ++i) pages[i] = reinterpret_cast<void*>(b + i * page);
  std::vector<int> status(n, -1);
  if (n == 0) return status;
  long r = ::syscall(SYS_move_pages, 0, static_cast<unsigned long>(n), pages.data(), nullptr, status.data(), 0);
  if (r < 0) {
    if (error) *error = format("move_pages: %s", errno_name(errno));
    return {};
  }
  return status;
}

size_t release_mapped_pages(const void* addr, size_t bytes, bool evict, std::string* how) {
  const size_t page = page_size();
  const uintptr_t b = (reinterpret_cast<uintptr_t>(addr) + page - 1) / page * page;
  const uintptr_t e = (reinterpret_cast<uintptr_t>(addr) + bytes) / page * page;
  if (e <= b) {
    if (how) *how = "no whole page";
    return 0;
  }
  void* p = reinterpret_cast<void*>(b);
  if (evict && ::madvise(p, e - b, MADV_PAGEOUT) == 0) {
    if (how) *how = "pageout";
    return e - b;
  }
  if (::madvise(p, e - b, MADV_DONTNEED) == 0) {
    if (how) *how = "dontneed";
    return e - b;
  }
  if (how) *how = format("madvise: %s", errno_name(errno));
  return 0;
}

}  // namespace lc
