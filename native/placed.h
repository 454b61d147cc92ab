// Host memory placed on a NUMA node (issue 14, deliverable 1: CPU ranks' experts on their rank's
// node). An anonymous allocation, 2 MiB aligned with MADV_HUGEPAGE, optionally bound to a node by
// mbind(MPOL_BIND) through the raw syscall (no libnuma; refused softly, the reason kept), whose
// pages are first written by the threads of the calling thread's pool (placed_copy run as a job of
// a CPU stream whose pool is a rank's): under the kernel's first-touch policy they land on the node
// those threads are bound to. Generic: any tensors' bytes, any pool. Plain C++ (no N-API, no math).
// Also the home of weights a CPU decode streams every step (loadModel's `hugePages`): a checkpoint's
// mapped pages are page-cache pages mapped 4 KiB at a time (MADV_HUGEPAGE does nothing for them), so
// a GEMV over them walks the page tables every 4 KiB; copied here they sit in 2 MiB pages.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace lc {

class PlacedMemory {
 public:
  struct Options {
    int node = -1;         // mbind(MPOL_BIND) to this node first (-1: first touch only)
    bool hugepage = true;  // madvise(MADV_HUGEPAGE)
  };
  // `bytes` > 0; throws lc::Error(E_OOM) when the mapping fails. Nothing is touched yet.
  static std::shared_ptr<PlacedMemory> allocate(size_t bytes, Options opts);
  ~PlacedMemory();
  PlacedMemory(const PlacedMemory&) = delete;
  PlacedMemory& operator=(const PlacedMemory&) = delete;

  uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  bool hugepage() const { return hugepage_; }  // MADV_HUGEPAGE accepted
  // The bytes of it the kernel backs with huge pages now (/proc/self/smaps' AnonHugePages of the
  // mapping; 0 where THP is off or none could be had); -1 when smaps cannot be read.
  int64_t huge_bytes() const;
  bool bound() const { return bound_; }                          // mbind accepted
  const std::string& bind_error() const { return bind_error_; }  // why not, when a node was asked ("mbind: EPERM")

 private:
  PlacedMemory() = default;
  void* map_ = nullptr;
  size_t map_bytes_ = 0;
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
  bool hugepage_ = false, bound_ = false;
  std::string bind_error_;
};

// One source range copied to dst + dst_offset.
struct PlacedRange {
  const void* src;
  size_t dst_offset;
  size_t bytes;
  bool file_mapped = false;  // src is a file mapping's (a checkpoint shard's): faulted in before it is read
};

// Copies every range into dst[0, dst_bytes) in 2 MiB chunks of the destination spread over the
// calling thread's pool (cpu::parallel_for), so each destination page is first written by one of
// that pool's threads. Ranges must lie inside dst_bytes and not overlap. A file-mapped source piece
// is faulted in first (populate_pages): a page the file no longer has (truncated since it was
// mapped) throws lc::Error(E_CHECKPOINT) instead of the SIGBUS the memcpy would take (E_OOM when
// memory runs out; on kernels without MADV_POPULATE_READ the touch fallback still faults).
void placed_copy(uint8_t* dst, size_t dst_bytes, const std::vector<PlacedRange>& ranges);

// The NUMA node of each page of [addr, addr + bytes) (the first max_pages pages): move_pages(2)
// with no target nodes, a query (raw syscall). An entry < 0 is -errno for that page (-EFAULT: not
// present, -ENOENT: not mapped); empty with *error set ("move_pages: ENOSYS") when the call failed.
std::vector<int> page_nodes(const void* addr, size_t bytes, size_t max_pages, std::string* error);

// Gives back the pages wholly inside [addr, addr + bytes) of a file mapping whose contents were
// copied elsewhere: with `evict` MADV_PAGEOUT (Linux 5.4+: the page cache pages too, when no one else
// maps them: a NUMA placement's copies free the node's memory), else (or refused) MADV_DONTNEED (this
// mapping only: the clean pages stay in the page cache, reclaimable, for the next load to find).
// The range must not be read for its private writes again. Returns the bytes given back (0 when
// refused or no whole page), *how: "pageout" / "dontneed" / the error.
size_t release_mapped_pages(const void* addr, size_t bytes, bool evict, std::string* how);

}  // namespace lc
