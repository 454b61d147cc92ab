// Read-only views of whole files through mmap (plain C++, no N-API). A MappedFile is held by
// shared_ptr: every tensor created over it keeps a reference, so the file stays mapped while any
// tensor uses it, whatever the JS side does with its handle.
//
// The mapping is MAP_PRIVATE with PROT_READ | PROT_WRITE on a read-only descriptor: pages are
// shared with the page cache until written, and a write (a kernel that folds a scale into a
// weight in place, Tensor.copyFromBytes) makes a private copy of that page instead of touching the
// file or faulting (MAP_NORESERVE, so the mapping is not charged against the commit limit). Under
// strict overcommit, where that fails with ENOMEM, it falls back to MAP_SHARED + PROT_READ
// (writable() is then false). MAP_SHARED is also offered for callers that only read (a write to
// read-only pages would SIGSEGV).
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace lc {

class MappedFile {
 public:
  enum class Advice { Normal, Random, Sequential, WillNeed, DontNeed };
  struct Options {
    bool shared = false;    // MAP_SHARED + PROT_READ (read-only pages) instead of MAP_PRIVATE
    bool populate = false;  // MAP_POPULATE: fault every page in now
  };

  // Throws lc::Error(E_CHECKPOINT) naming the path and the system error (ENOENT, EACCES, ...).
  static std::shared_ptr<MappedFile> open(const std::string& path, Options opts);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  uint8_t* data() const { return static_cast<uint8_t*>(base_); }  // null for an empty file
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }
  bool writable() const { return !shared_; }
  // Page-rounded madvise over [offset, offset + length) clipped to the file; advisory, never fails.
  void advise(size_t offset, size_t length, Advice a) const;
  // What changed in the file at path() since it was mapped (device and inode: replaced; size:
  // truncated or extended; mtime: written in place), e.g. "size 4096 -> 100"; empty when nothing
  // did. A truncated mapping faults (SIGBUS) where it lost its pages and an overwritten one shows
  // the new bytes, so callers check this before using the mapping (one stat() call).
  std::string changed() const;

 private:
  MappedFile() = default;
  std::string path_;
  void* base_ = nullptr;
  size_t size_ = 0;
  bool shared_ = false;
  // The file's identity and state when it was mapped (see changed()).
  uint64_t dev_ = 0, ino_ = 0;
  int64_t mtime_sec_ = 0, mtime_nsec_ = 0;
};

// "ENOENT", "EACCES", ... for an errno value ("E<number>" when unknown).
const char* errno_name(int err);

// Faults every page of [p, p + n) in now (the range rounded out to whole pages), so that the first
// kernel to read (or write) them takes no page fault: MADV_POPULATE_READ / MADV_POPULATE_WRITE
// (Linux >= 5.14), or where the kernel lacks them (EINVAL, ENOSYS) MADV_WILLNEED and a touch of one
// byte per page (a read; for `write` the byte written back with its own value, so contents never
// change). A read populate of a private file mapping maps the page-cache pages without copying
// them. Returns 0, or the errno of a failure: ENOMEM (out of memory), EFAULT / EIO (a mapped file's
// page cannot be read, e.g. the file was truncated: the touch fallback would SIGBUS there instead).
// Blocks for as long as faulting takes (seconds for gigabytes): never call it on the JS thread.
int populate_pages(void* p, size_t n, bool write);

// A run of whole pages, [begin, end).
struct PageSpan {
  uintptr_t begin, end;
};
// The whole pages under the ranges {pointer, bytes}, sorted, those that touch or share a page merged
// into one span (tensors packed back to back in a shard share pages); empty ranges are dropped.
std::vector<PageSpan> merged_pages(std::vector<std::pair<const void*, size_t>> ranges);

}  // namespace lc
