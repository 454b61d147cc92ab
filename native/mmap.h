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
  // What changed in the file since it was mapped, e.g. "size 4096 -> 100"; empty when nothing did.
  // A truncated mapping faults (SIGBUS) where it lost its pages and an overwritten one shows the new
  // bytes, so callers check this before using the mapping. The mapped file itself is checked
  // through the descriptor kept open for it (one fstat(): size: truncated or extended; mtime:
  // written in place; no name left: deleted, or replaced by a rename over it). `by_path` also
  // stat()s path() (a path lookup) for a file replaced while the mapped one keeps another name (a
  // hard link). A replaced file cannot corrupt the mapping, which holds the old one.
  std::string changed(bool by_path) const;
  // Whether an inotify watch stands in for changed(false) (MappedFileSet).
  bool watched() const { return watch_ >= 0; }
  int watch() const { return watch_; }

 private:
  MappedFile() = default;
  std::string path_;
  void* base_ = nullptr;
  size_t size_ = 0;
  bool shared_ = false;
  int fd_ = -1;     // the mapped file, open for changed()'s fstat()
  int watch_ = -1;  // its inotify watch (MappedFileSet), or -1
  // The file's identity and state when it was mapped (see changed()).
  uint64_t dev_ = 0, ino_ = 0;
  int64_t mtime_sec_ = 0, mtime_nsec_ = 0;
};

// Mapped files checked together before every step: changed(false) of each, in one call. Each
// syscall costs microseconds on a VM (more with the caches cold after a step streamed the
// weights), so a file on a local filesystem is watched (inotify: one instance for the process, a
// watch per file) and fstat()ed only once an event was seen for it: one read() of the pending
// events stands for all of them. Files without a watch (network and other filesystems, inotify
// unavailable, LONGCAT_WATCH_MAPPINGS=0) are fstat()ed every time. What a watch does not see, the
// fstat() would have: a write through another process's shared mapping of the file (it sets the
// mtime without an event).
class MappedFileSet {
 public:
  explicit MappedFileSet(std::vector<std::shared_ptr<MappedFile>> files);
  // The first file that changed and what did (changed()), or {nullptr, ""}.
  std::pair<const MappedFile*, std::string> first_changed() const;

 private:
  std::vector<std::shared_ptr<MappedFile>> files_;
  std::vector<const MappedFile*> watched_, unwatched_;
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
