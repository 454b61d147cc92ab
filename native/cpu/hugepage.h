// Anonymous memory advised for transparent huge pages (MADV_HUGEPAGE), filled by the pool's threads.
// For weights a decode step streams: a checkpoint's mmapped pages are page-cache pages mapped 4 KiB
// at a time (MADV_HUGEPAGE does nothing for them), so a GEMV over them walks the page tables every
// 4 KiB; copied here they sit in 2 MiB pages (where the kernel has free huge pages: THP 'always' or
// 'madvise'; else this is plain anonymous memory, still correct).
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

namespace lc::cpu {

// One hugepage-advised anonymous mapping (2 MiB aligned, its size rounded up to 2 MiB); unmapped
// when the last owner is gone.
class HugePageBlock {
 public:
  // Maps `bytes` (> 0); null when mmap fails (out of memory / address space).
  static std::shared_ptr<HugePageBlock> map(size_t bytes);
  ~HugePageBlock();
  HugePageBlock(const HugePageBlock&) = delete;
  HugePageBlock& operator=(const HugePageBlock&) = delete;
  char* data() const { return base_; }
  size_t size() const { return size_; }
  // The bytes of this block the kernel backs with huge pages now (/proc/self/smaps's AnonHugePages
  // of the mapping); -1 when it cannot be read.
  int64_t huge_bytes() const;

 private:
  HugePageBlock() = default;
  char* base_ = nullptr;  // 2 MiB aligned
  size_t size_ = 0;       // a multiple of 2 MiB
  void* map_ = nullptr;   // what mmap returned (base_ lies inside)
  size_t map_size_ = 0;
};

// Offsets (64-byte aligned) at which hugepage_copy packs pieces of the given sizes; the total is the
// last offset plus the last size.
std::vector<size_t> hugepage_layout(const std::vector<size_t>& sizes, size_t* total);

// Copies every src[i] (sizes[i] bytes) into one new block at hugepage_layout's offsets, in parallel
// on the calling thread's pool (each thread first-touches whole 2 MiB pages of the block: the pages
// are placed where the copying threads run). Null when the mapping fails.
std::shared_ptr<HugePageBlock> hugepage_copy(const std::vector<const void*>& src, const std::vector<size_t>& sizes,
                                             std::vector<size_t>* offsets);

}  // namespace lc::cpu
