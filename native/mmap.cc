// Read-only memory maps of checkpoint files: the bytes tensors borrow without copying.
#include "mmap.h"

#include <fcntl.h>
#include <sys/inotify.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <unordered_map>

#include "common.h"

namespace lc {

const char* errno_name(int err) {
  switch (err) {
    case ENOENT: return "ENOENT";
    case EACCES: return "EACCES";
    case EPERM: return "EPERM";
    case EISDIR: return "EISDIR";
    case ENOTDIR: return "ENOTDIR";
    case ENOMEM: return "ENOMEM";
    case EMFILE: return "EMFILE";
    case ENFILE: return "ENFILE";
    case ENODEV: return "ENODEV";
    case EINVAL: return "EINVAL";
    case ELOOP: return "ELOOP";
    case ENAMETOOLONG: return "ENAMETOOLONG";
    case EOVERFLOW: return "EOVERFLOW";
    case EIO: return "EIO";
    default: return "E?";
  }
}

namespace {
[[noreturn]] void sys_fail(const std::string& path, const char* what, int err) {
  fail(Code::E_CHECKPOINT, "cannot %s '%s': %s (%s)", what, path.c_str(), std::strerror(err), errno_name(err));
}
}  // namespace

namespace {

// Filesystems whose every change to a file's data, size, times or names goes through this kernel's
// VFS and so raises inotify events (ext2/3/4, xfs, btrfs, tmpfs, f2fs, zfs). A network or FUSE
// filesystem can change a file from elsewhere without an event: files there get no watch.
bool local_filesystem(int fd) {
  struct statfs fs;
  if (::fstatfs(fd, &fs) != 0) return false;
  switch (static_cast<unsigned long>(fs.f_type)) {
    case 0xEF53UL:      // ext2 / ext3 / ext4
    case 0x58465342UL:  // xfs
    case 0x9123683EUL:  // btrfs
    case 0x01021994UL:  // tmpfs
    case 0xF2F52010UL:  // f2fs
    case 0x2FC12FC1UL:  // zfs
      return true;
    default: return false;
  }
}

// The process's one inotify instance (instances are few per user: 128 by default) and its watches,
// each counted by the mappings that share it (two mappings of one file get the same watch). An
// event marks its watch for good: the files under it are fstat()ed by every check after that.
// IN_MODIFY: written or truncated; IN_ATTRIB: times set, or the link count changed (a rename over
// the file, an unlink). An event queue overflow marks every watch.
class ChangeWatch {
 public:
  static ChangeWatch& get() {
    static ChangeWatch* w = new ChangeWatch();  // never destroyed: mappings may outlive static destructors
    return *w;
  }

  // A watch on the file open as `fd`, or -1 (no inotify, no /proc, the watch limit reached).
  int add(int fd) {
    std::lock_guard<std::mutex> lock(m_);
    if (fd_ < 0) return -1;
    // The descriptor's /proc link names the mapped file itself, whatever happened to its path since.
    const std::string link = "/proc/self/fd/" + std::to_string(fd);
    const int wd = ::inotify_add_watch(fd_, link.c_str(), IN_MODIFY | IN_ATTRIB);
    if (wd < 0) return -1;
    watches_[wd].refs++;
    return wd;
  }

  void remove(int wd) {
    std::lock_guard<std::mutex> lock(m_);
    auto it = watches_.find(wd);
    if (it == watches_.end() || --it->second.refs > 0) return;
    if (it->second.marked) marked_--;
    watches_.erase(it);
    ::inotify_rm_watch(fd_, wd);
  }

  // Reads the pending events (one read() when there are none); true when any watch is marked.
  bool drain() {
    std::lock_guard<std::mutex> lock(m_);
    alignas(struct inotify_event) char buf[4096];
    for (;;) {
      const ssize_t n = ::read(fd_, buf, sizeof buf);
      if (n <= 0) break;  // EAGAIN: none left
      for (ssize_t i = 0; i < n;) {
        const auto* ev = reinterpret_cast<const struct inotify_event*>(buf + i);
        if (ev->mask & IN_Q_OVERFLOW) overflowed_ = true;
        auto it = watches_.find(ev->wd);
        if (it != watches_.end() && !it->second.marked) {  // (IN_IGNORED too: the watch is gone)
          it->second.marked = true;
          marked_++;
        }
        i += static_cast<ssize_t>(sizeof(struct inotify_event) + ev->len);
      }
    }
    return overflowed_ || marked_ > 0;
  }

  bool marked(int wd) {
    std::lock_guard<std::mutex> lock(m_);
    if (overflowed_) return true;
    auto it = watches_.find(wd);
    return it == watches_.end() || it->second.marked;
  }

 private:
  ChangeWatch() { fd_ = ::inotify_init1(IN_NONBLOCK | IN_CLOEXEC); }
  struct Watch {
    int refs = 0;
    bool marked = false;
  };
  std::mutex m_;
  int fd_ = -1;
  bool overflowed_ = false;
  size_t marked_ = 0;  // watches marked
  std::unordered_map<int, Watch> watches_;
};

bool watch_mappings() { return !env_is("LONGCAT_WATCH_MAPPINGS", "0"); }

}  // namespace

std::shared_ptr<MappedFile> MappedFile::open(const std::string& path, Options opts) {
  // O_NONBLOCK: opening a FIFO (or a device) for reading would otherwise wait for a writer
  // forever; it is refused below as not a regular file. Reads of regular files ignore the flag.
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) sys_fail(path, "open", errno);
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    int e = errno;
    ::close(fd);
    sys_fail(path, "stat", e);
  }
  if (S_ISDIR(st.st_mode)) {
    ::close(fd);
    sys_fail(path, "map", EISDIR);
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    fail(Code::E_CHECKPOINT, "cannot map '%s': not a regular file", path.c_str());
  }
  std::shared_ptr<MappedFile> m(new MappedFile());
  m->path_ = path;
  m->size_ = static_cast<size_t>(st.st_size);
  m->shared_ = opts.shared;
  m->dev_ = static_cast<uint64_t>(st.st_dev);
  m->ino_ = static_cast<uint64_t>(st.st_ino);
  m->mtime_sec_ = static_cast<int64_t>(st.st_mtim.tv_sec);
  m->mtime_nsec_ = static_cast<int64_t>(st.st_mtim.tv_nsec);
  if (m->size_ > 0) {
    int prot = opts.shared ? PROT_READ : (PROT_READ | PROT_WRITE);
    // NORESERVE: a private writable mapping is otherwise charged in full against the commit limit
    // although pages are only copied when written (rare: weights are read).
    int flags = opts.shared ? MAP_SHARED : (MAP_PRIVATE | MAP_NORESERVE);
#ifdef MAP_POPULATE
    if (opts.populate) flags |= MAP_POPULATE;
#endif
    void* p = ::mmap(nullptr, m->size_, prot, flags, fd, 0);
    if (p == MAP_FAILED && errno == ENOMEM && !opts.shared) {
      // Strict overcommit (vm.overcommit_memory=2) ignores NORESERVE: fall back to read-only pages.
      p = ::mmap(nullptr, m->size_, PROT_READ, MAP_SHARED | (flags & ~(MAP_PRIVATE | MAP_NORESERVE)), fd, 0);
      if (p != MAP_FAILED) m->shared_ = true;
    }
    if (p == MAP_FAILED) {
      int e = errno;
      ::close(fd);
      m->size_ = 0;
      sys_fail(path, "mmap", e);
    }
    m->base_ = p;
  }
  m->fd_ = fd;  // kept for changed(): an fstat() finds the mapped file without a path lookup
  if (watch_mappings() && local_filesystem(fd)) {
    m->watch_ = ChangeWatch::get().add(fd);
    // A change between the fstat() above and the watch raised no event for it: such a file goes
    // without a watch (fstat()ed by every check, which then reports the change).
    if (m->watch_ >= 0 && !m->changed(false).empty()) {
      ChangeWatch::get().remove(m->watch_);
      m->watch_ = -1;
    }
  }
  return m;
}

MappedFile::~MappedFile() {
  if (base_) ::munmap(base_, size_);
  if (watch_ >= 0) ChangeWatch::get().remove(watch_);
  if (fd_ >= 0) ::close(fd_);
}

MappedFileSet::MappedFileSet(std::vector<std::shared_ptr<MappedFile>> files) : files_(std::move(files)) {
  for (const auto& f : files_) (f->watched() ? watched_ : unwatched_).push_back(f.get());
}

std::pair<const MappedFile*, std::string> MappedFileSet::first_changed() const {
  auto check = [](const MappedFile* f) -> std::pair<const MappedFile*, std::string> {
    std::string what = f->changed(false);
    return {what.empty() ? nullptr : f, what};
  };
  for (const MappedFile* f : unwatched_)
    if (auto c = check(f); c.first) return c;
  if (watched_.empty() || !ChangeWatch::get().drain()) return {nullptr, std::string()};
  // Some watch saw an event (rare): the files whose watch did.
  for (const MappedFile* f : watched_)
    if (ChangeWatch::get().marked(f->watch()))
      if (auto c = check(f); c.first) return c;
  return {nullptr, std::string()};
}

std::string MappedFile::changed(bool by_path) const {
  struct stat st;
  if (by_path) {
    if (::stat(path_.c_str(), &st) != 0) return std::string("it can no longer be read: ") + errno_name(errno);
    if (static_cast<uint64_t>(st.st_dev) != dev_ || static_cast<uint64_t>(st.st_ino) != ino_)
      return "it was replaced by another file";
  }
  if (::fstat(fd_, &st) != 0) return std::string("it can no longer be read: ") + errno_name(errno);
  if (st.st_nlink == 0) return "it was deleted or replaced by another file";
  if (static_cast<size_t>(st.st_size) != size_)
    return "size " + std::to_string(size_) + " -> " + std::to_string(static_cast<long long>(st.st_size)) + " bytes";
  if (static_cast<int64_t>(st.st_mtim.tv_sec) != mtime_sec_ || static_cast<int64_t>(st.st_mtim.tv_nsec) != mtime_nsec_)
    return "it was modified (mtime changed)";
  return std::string();
}

namespace {
// [p, p + n) rounded out to whole pages, as madvise needs.
struct Pages {
  char* start;
  size_t length;
};
Pages whole_pages(const void* p, size_t n) {
  const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t b = reinterpret_cast<uintptr_t>(p) / page * page, e = reinterpret_cast<uintptr_t>(p) + n;
  return {reinterpret_cast<char*>(b), static_cast<size_t>((e - b + page - 1) / page * page)};
}
}  // namespace

// (the values of Linux's uapi, for headers older than 5.14)
#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

int populate_pages(void* p, size_t n, bool write) {
  if (!p || n == 0) return 0;
  const Pages r = whole_pages(p, n);
  if (::madvise(r.start, r.length, write ? MADV_POPULATE_WRITE : MADV_POPULATE_READ) == 0) return 0;
  const int err = errno;
  if (err != EINVAL && err != ENOSYS) return err;
  // An older kernel: read-ahead, then one touch per page (within [p, p + n): the rounded-out ends
  // may belong to someone else's memory).
  if (!write) ::madvise(r.start, r.length, MADV_WILLNEED);
  const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  volatile uint8_t* b = static_cast<uint8_t*>(p);
  const size_t first = static_cast<size_t>(r.start + page - static_cast<char*>(p)) % page;  // p's next page start
  auto touch = [&](size_t i) {
    uint8_t v = b[i];
    if (write) b[i] = v;
  };
  touch(0);
  for (size_t i = first; i < n; i += page) touch(i);
  return 0;
}

std::vector<PageSpan> merged_pages(std::vector<std::pair<const void*, size_t>> ranges) {
  std::vector<PageSpan> spans;
  for (const auto& [p, n] : ranges) {
    if (!p || n == 0) continue;
    const Pages r = whole_pages(p, n);
    const uintptr_t b = reinterpret_cast<uintptr_t>(r.start);
    spans.push_back({b, b + r.length});
  }
  std::sort(spans.begin(), spans.end(), [](const PageSpan& x, const PageSpan& y) { return x.begin < y.begin; });
  std::vector<PageSpan> merged;
  for (const PageSpan& s : spans) {
    if (!merged.empty() && s.begin <= merged.back().end)
      merged.back().end = std::max(merged.back().end, s.end);
    else
      merged.push_back(s);
  }
  return merged;
}

void MappedFile::advise(size_t offset, size_t length, Advice a) const {
  if (!base_ || offset >= size_) return;
  if (length > size_ - offset) length = size_ - offset;
  int adv = MADV_NORMAL;
  switch (a) {
    case Advice::Normal: adv = MADV_NORMAL; break;
    case Advice::Random: adv = MADV_RANDOM; break;
    case Advice::Sequential: adv = MADV_SEQUENTIAL; break;
    case Advice::WillNeed: adv = MADV_WILLNEED; break;
    case Advice::DontNeed: adv = MADV_DONTNEED; break;
  }
  // MADV_DONTNEED on a private mapping drops private (written) copies too; that is what a caller
  // asking for it wants only when it never wrote, so it is limited to shared mappings.
  if (a == Advice::DontNeed && !shared_) return;
  const Pages r = whole_pages(static_cast<char*>(base_) + offset, length);
  ::madvise(r.start, r.length, adv);
}

}  // namespace lc
