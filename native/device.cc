// Devices, the per-device caching memory pool (stream-safe by fencing), streams (CPU: an ordered
// queue on its own thread; CUDA: a stream), events and graph capture / replay.
#include "device.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <set>

#include "cpu/profile.h"
#include "cpu/threadpool.h"
#include "cuda_api.h"

namespace lc {

Device Device::parse(const std::string& s) {
  Device d;
  if (s == "cpu") return d;
  if (s == "cuda" || s.rfind("cuda:", 0) == 0) {
    d.kind = CUDA;
    if (s.size() > 5) {
      char* end = nullptr;
      long v = std::strtol(s.c_str() + 5, &end, 10);
      if (*end != '\0' || v < 0) fail(Code::E_DEVICE, "bad device '%s': expected 'cpu' or 'cuda:N'", s.c_str());
      d.index = static_cast<int>(v);
    }
    int n = cuda::device_count();
    if (n == 0)
      fail(Code::E_DEVICE, "device '%s' requested but CUDA is unavailable: %s", s.c_str(), cuda::unavailable_reason().c_str());
    if (d.index >= n) fail(Code::E_DEVICE, "device '%s' does not exist: %d CUDA device(s) present", s.c_str(), n);
    return d;
  }
  fail(Code::E_DEVICE, "bad device '%s': expected 'cpu', 'cuda' or 'cuda:N'", s.c_str());
}

// ---- memory -----------------------------------------------------------------------------

static size_t round_size(size_t n) {
  if (n == 0) n = 1;
  const size_t q = n < (1u << 20) ? 512 : (1u << 16);
  return (n + q - 1) / q * q;
}

void Storage::wait_copies() {
  for (const auto& e : pending_copies) e->synchronize();
  pending_copies.clear();
}

Storage::~Storage() {
  try {
    wait_copies();
  } catch (...) {  // a broken context: nothing is copying any more
  }
  if (pool)
    pool->give_back(ptr, bytes);
  else if (release)
    release();
}

Pool::Pool(PinnedTag) : pinned_(true), page_locked_(cuda::device_count() > 0) {}

void* Pool::raw_alloc(size_t bytes) {
  if (page_locked_) return cuda::host_alloc(bytes);
  if (device_.is_cpu()) {
    void* p = std::aligned_alloc(64, bytes);  // bytes is a multiple of 512
    if (!p) fail(Code::E_OOM, "out of host memory allocating %zu bytes", bytes);
    return p;
  }
  return cuda::malloc(device_.index, bytes);
}

void Pool::raw_free(void* p) {
  if (page_locked_)
    cuda::host_free(p);
  else if (device_.is_cpu())
    std::free(p);
  else
    cuda::free(device_.index, p);
}

void* Pool::take_event_locked() {
  if (spare_events_.empty()) return cuda::event_create(device_.index);
  void* e = spare_events_.back();
  spare_events_.pop_back();
  return e;
}

void Pool::follow_locked(void* stream, void* leader) {
  void* e = take_event_locked();
  try {
    cuda::event_record(device_.index, e, leader);
    cuda::stream_wait_event(device_.index, stream, e);
  } catch (...) {
    spare_events_.push_back(e);
    throw;
  }
  spare_events_.push_back(e);  // a wait takes the event's state when issued: it can be recorded again
}

void Pool::add_stream(void* cuda_stream) {
  std::unique_lock<std::mutex> lk(m_);
  if (parking_ && parking_owner_ == std::this_thread::get_id())
    fail(Code::E_ARGUMENT, "a stream cannot be created on %s while a graph is being captured there", device_.str().c_str());
  capture_done_.wait(lk, [this] { return !parking_; });  // another environment's capture: wait for its end
  // Blocks freed while one stream was alone went to the cache unfenced, and blocks handed out since
  // may still be touched by that stream's earlier work. The new stream starts behind all work queued
  // on the device so far, so whatever block it is given was last used by work ordered before it.
  for (void* s : streams_) follow_locked(cuda_stream, s);
  for (void* e : orphans_) {
    cuda::stream_wait_event(device_.index, cuda_stream, e);
    spare_events_.push_back(e);
  }
  orphans_.clear();
  streams_.push_back(cuda_stream);
}

void Pool::remove_stream(void* cuda_stream) noexcept {
  std::lock_guard<std::mutex> lk(m_);
  streams_.erase(std::remove(streams_.begin(), streams_.end(), cuda_stream), streams_.end());
  // Its queued work still runs after it is destroyed. The remaining streams continue behind it, so a
  // block freed later (unfenced once one stream is left) is not reused under that work; with no
  // stream left, the next stream created waits for it. Runs in destructors: a CUDA failure (a
  // broken context, nothing more can run on it) must not escape.
  try {
    if (parking_) {  // no cross-stream waits into a capture: let the stream finish instead
      cuda::stream_synchronize(device_.index, cuda_stream);
      return;
    }
    if (!streams_.empty()) {
      for (void* s : streams_) follow_locked(s, cuda_stream);
    } else {
      void* e = take_event_locked();
      orphans_.push_back(e);
      cuda::event_record(device_.index, e, cuda_stream);
    }
  } catch (...) {
  }
}

void Pool::reclaim_locked() {
  for (auto it = fenced_.begin(); it != fenced_.end();) {
    bool done = true;
    for (void* e : it->events) done = done && cuda::event_query(device_.index, e);
    if (!done) {
      ++it;
      continue;
    }
    for (void* e : it->events) spare_events_.push_back(e);
    free_.emplace(it->size, it->p);
    it = fenced_.erase(it);
  }
}

std::shared_ptr<Storage> Pool::alloc(size_t bytes) {
  size_t r = round_size(bytes);
  void* p = nullptr;
  {
    std::lock_guard<std::mutex> lk(m_);
    // (not while a graph is captured: its event queries would touch streams in capture mode)
    if (!fenced_.empty() && !parking_) reclaim_locked();
    // Reuse a cached block of the same rounded size, or one at most 25% larger.
    auto it = free_.lower_bound(r);
    if (it != free_.end() && it->first <= r + r / 4) {
      r = it->first;
      p = it->second;
      free_.erase(it);
      stats_.cached_bytes -= static_cast<int64_t>(r);
    }
  }
  if (!p) {
    try {
      p = raw_alloc(r);
    } catch (const Error& e) {
      if (e.code != Code::E_OOM) throw;
      trim();
      p = raw_alloc(r);
    }
  }
  {
    std::lock_guard<std::mutex> lk(m_);
    stats_.live_bytes += static_cast<int64_t>(r);
    stats_.live_blocks += 1;
    if (stats_.live_bytes > stats_.peak_bytes) stats_.peak_bytes = stats_.live_bytes;
  }
  auto s = std::make_shared<Storage>();
  s->device = device_;
  s->ptr = p;
  s->bytes = r;
  s->pool = this;
  return s;
}

void Pool::give_back(void* p, size_t rounded) {
  std::lock_guard<std::mutex> lk(m_);
  if (parking_) {
    parked_.emplace_back(p, rounded);  // still counted live: the graph owns it now
    return;
  }
  stats_.live_bytes -= static_cast<int64_t>(rounded);
  stats_.live_blocks -= 1;
  if (pinned_) {  // never cached (see Pool); runs in destructors: a failing cudaFreeHost must not escape
    try {
      raw_free(p);
    } catch (...) {
    }
    return;
  }
  // Huge host blocks go straight back to the OS; the cache is for activations.
  if (device_.is_cpu() && rounded > (size_t{256} << 20)) {
    std::free(p);
    return;
  }
  stats_.cached_bytes += static_cast<int64_t>(rounded);
  if (!device_.is_cpu() && streams_.size() > 1) {
    // Runs in destructors: a CUDA failure here (a broken context) must not escape. The block is
    // then cached unfenced: nothing more can run on that context anyway.
    Fenced f{p, rounded, {}};
    try {
      for (void* st : streams_) {
        void* e = take_event_locked();
        f.events.push_back(e);
        cuda::event_record(device_.index, e, st);
      }
      fenced_.push_back(std::move(f));
      return;
    } catch (...) {
      for (void* e : f.events) spare_events_.push_back(e);
    }
  }
  free_.emplace(rounded, p);
}

void Pool::begin_parking() {
  std::unique_lock<std::mutex> lk(m_);
  if (parking_ && parking_owner_ == std::this_thread::get_id())
    fail(Code::E_ARGUMENT, "captureGraph: a graph is already being captured on %s", device_.str().c_str());
  // One capture per device at a time: a worker thread's capture waits for another's (captures
  // only record launches, and each ends when its JS function returns).
  capture_done_.wait(lk, [this] { return !parking_; });
  parking_ = true;
  parking_owner_ = std::this_thread::get_id();
}

Pool::Parked Pool::end_parking() {
  std::lock_guard<std::mutex> lk(m_);
  parking_ = false;
  capture_done_.notify_all();
  Parked r;
  r.swap(parked_);
  return r;
}

void Pool::unpark(const Parked& blocks) {
  for (auto& [p, size] : blocks) give_back(p, size);
}

void Pool::trim() {
  std::multimap<size_t, void*> blocks;
  {
    std::lock_guard<std::mutex> lk(m_);
    for (auto& f : fenced_) {
      for (void* e : f.events) {
        cuda::event_synchronize(device_.index, e);
        spare_events_.push_back(e);
      }
      free_.emplace(f.size, f.p);
    }
    fenced_.clear();
    blocks.swap(free_);
    stats_.cached_bytes = 0;
  }
  for (auto& [size, p] : blocks) raw_free(p);
}

PoolStats Pool::stats() {
  std::lock_guard<std::mutex> lk(m_);
  return stats_;
}

std::shared_ptr<Storage> external_storage(Device d, void* ptr, size_t bytes, std::function<void()> release) {
  auto s = std::make_shared<Storage>();
  s->device = d;
  s->ptr = ptr;
  s->bytes = bytes;
  s->release = std::move(release);
  return s;
}

// ---- registry ---------------------------------------------------------------------------

namespace {
struct Registry {
  std::mutex m;
  std::map<std::pair<int, int>, std::unique_ptr<Pool>> pools;
  std::set<Stream*> cpu_streams;
};
Registry& registry() {
  static Registry* r = new Registry();  // leaked: outlives every static user
  return *r;
}
}  // namespace

Pool& device_pool(Device d) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lk(r.m);
  auto& p = r.pools[{d.kind, d.index}];
  if (!p) p = std::make_unique<Pool>(d);
  return *p;
}

Pool& pinned_pool() {
  static Pool* p = new Pool(Pool::PinnedTag{});  // leaked, like the registry: outlives every static user
  return *p;
}

namespace {
std::mutex g_peer_m;
std::set<std::pair<int, int>> g_peer_enabled;  // (from, to) CUDA device indices
}  // namespace

void enable_peer_access(Device from, Device to) {
  if (from.is_cpu() || to.is_cpu())
    fail(Code::E_DEVICE, "peer access is between CUDA devices, not %s and %s", from.str().c_str(), to.str().c_str());
  if (from == to) return;
  std::lock_guard<std::mutex> lk(g_peer_m);
  if (g_peer_enabled.count({from.index, to.index})) return;
  cuda::enable_peer_access(from.index, to.index);
  g_peer_enabled.insert({from.index, to.index});
}

bool peer_access_enabled(Device from, Device to) {
  if (from == to) return true;
  if (from.is_cpu() || to.is_cpu()) return false;
  std::lock_guard<std::mutex> lk(g_peer_m);
  return g_peer_enabled.count({from.index, to.index}) > 0;
}

std::vector<Stream*> this_thread_cpu_streams() {
  std::vector<Stream*> streams;
  std::lock_guard<std::mutex> lk(registry().m);
  for (Stream* s : registry().cpu_streams)
    if (s->owner() == std::this_thread::get_id()) streams.push_back(s);
  return streams;
}

void device_synchronize(Device d) {
  if (!d.is_cpu()) {
    cuda::device_synchronize(d.index);
    return;
  }
  for (Stream* s : this_thread_cpu_streams()) s->synchronize();
}

bool take_cpu_stream_error(std::thread::id owner, Code* code, std::string* message) {
  std::lock_guard<std::mutex> lk(registry().m);  // (a stream leaves the registry before it stops)
  for (Stream* s : registry().cpu_streams)
    if (s->owner() == owner && s->take_error(code, message)) return true;
  return false;
}

void device_raise_errors(Device d) {
  if (!d.is_cpu()) return;
  const std::vector<Stream*> streams = this_thread_cpu_streams();
  for (Stream* s : streams) s->raise_error();
}

std::unique_ptr<Fence> Fence::of_stream(Stream& s) {
  if (s.capturing()) fail(Code::E_ARGUMENT, "synchronizeAsync() on a stream that is being captured into a graph");
  std::unique_ptr<Fence> f(new Fence(s.device()));
  f->events_.push_back(std::make_unique<Event>(s.device()));
  f->events_.back()->record(s);
  return f;
}

std::unique_ptr<Fence> Fence::of_device(Device d) {
  std::unique_ptr<Fence> f(new Fence(d));
  if (!d.is_cpu()) {
    f->whole_device_ = true;
    return f;
  }
  const std::vector<Stream*> streams = this_thread_cpu_streams();
  for (Stream* s : streams) {
    if (s->capturing()) fail(Code::E_ARGUMENT, "synchronizeAsync(%s): a stream is being captured into a graph", d.str().c_str());
    f->events_.push_back(std::make_unique<Event>(d));
    f->events_.back()->record(*s);
  }
  return f;
}

void Fence::wait() {
  if (whole_device_) {
    cuda::device_synchronize(device_.index);
    return;
  }
  for (auto& e : events_) e->synchronize();
}

// ---- streams ----------------------------------------------------------------------------

namespace {
std::atomic<uint64_t> g_capture_seq{0};  // orders captured work across streams

// What a CPU stream keeps of a failed kernel: its code and message (false: an exception that is
// none of ours or the standard library's, which is left to escape).
bool describe_failure(Code* code, std::string* msg) {
  try {
    throw;
  } catch (const Error& e) {
    *msg = e.what();
    *code = e.code;
  } catch (const std::bad_alloc&) {
    *msg = "out of host memory in a queued kernel";
    *code = Code::E_OOM;
  } catch (const std::exception& e) {
    *msg = e.what();
    *code = Code::E_INTERNAL;
  } catch (...) {
    return false;
  }
  return true;
}
}  // namespace

Stream::Stream(Device d) : device_(d) {
  if (!d.is_cpu()) {
    cuda_ = cuda::stream_create(d.index);
    try {
      device_pool(d).add_stream(cuda_);
    } catch (...) {
      cuda::stream_destroy(d.index, cuda_);
      throw;
    }
    return;
  }
  thread_ = std::thread([this] { run(); });
  std::lock_guard<std::mutex> lk(registry().m);
  registry().cpu_streams.insert(this);
}

Stream::~Stream() {
  if (!device_.is_cpu()) {
    device_pool(device_).remove_stream(cuda_);
    try {
      cuda::stream_destroy(device_.index, cuda_);
    } catch (...) {
    }
    return;
  }
  {
    std::lock_guard<std::mutex> lk(registry().m);
    registry().cpu_streams.erase(this);
  }
  {
    std::lock_guard<std::mutex> lk(m_);
    stopping_ = true;  // the worker drains the queue before it exits
  }
  cv_.notify_all();
  thread_.join();
}

void Stream::enqueue(std::function<void()> fn, const char* op, std::shared_ptr<const RowSplit> split) {
  queue_or_capture(std::move(fn), false, false, op, std::move(split));
}
void Stream::enqueue_spinning(std::function<void()> fn, const char* op) { queue_or_capture(std::move(fn), false, true, op); }
void Stream::enqueue_marker(std::function<void()> fn) { queue_or_capture(std::move(fn), true, false, "event"); }

void Stream::queue_or_capture(std::function<void()> fn, bool marker, bool spins, const char* op,
                              std::shared_ptr<const RowSplit> split) {
  {
    std::lock_guard<std::mutex> lk(m_);
    if (captured_) {
      captured_->push_back(Captured{std::move(fn), marker, spins, g_capture_seq.fetch_add(1), op, std::move(split)});
      return;
    }
    queue_.push_back(std::move(fn));
    enqueued_.fetch_add(1, std::memory_order_release);
  }
  cv_.notify_one();
}

void Stream::prewake() {
  if (!device_.is_cpu()) return;
  {
    std::lock_guard<std::mutex> lk(m_);
    if (busy_ || on_hold_ || captured_ || !queue_.empty()) return;
    prewake_ = true;
  }
  cv_.notify_one();
}

void Stream::set_pool(std::shared_ptr<cpu::ThreadPool> pool) {
  if (!device_.is_cpu()) fail(Code::E_DEVICE, "a thread pool is for CPU streams, not %s", device_.str().c_str());
  std::lock_guard<std::mutex> lk(m_);
  pool_ = std::move(pool);
}

std::shared_ptr<cpu::ThreadPool> Stream::pool() {
  std::lock_guard<std::mutex> lk(m_);
  return pool_;
}

void Stream::run() {
  // The pool whose CPUs this thread is on (empty: unbound); weak, so a pool set aside can go.
  std::weak_ptr<cpu::ThreadPool> bound;
  for (;;) {
    std::function<void()> fn;
    std::shared_ptr<cpu::ThreadPool> pool;
    {
      std::unique_lock<std::mutex> lk(m_);
      cv_.wait(lk, [this] { return stopping_ || (!queue_.empty() && !on_hold_) || prewake_; });
      if (prewake_ && !stopping_ && (queue_.empty() || on_hold_)) {
        // Woken ahead of a replay (prewake): spin for it, then sleep again. On the 2-vCPU VM the
        // wake of a sleeping thread costs 35-60 us (a halted vCPU); the JS thread's host work
        // before the replay (~80-120 us) hides it, and the spin ends when the job is queued.
        prewake_ = false;
        const uint64_t seen = enqueued_.load(std::memory_order_acquire);
        lk.unlock();
        const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(200);
        while (enqueued_.load(std::memory_order_acquire) == seen && std::chrono::steady_clock::now() < until)
          for (int i = 0; i < 64; ++i) cpu::cpu_relax();
        continue;
      }
      prewake_ = false;
      if (queue_.empty()) return;  // stopping and drained
      fn = std::move(queue_.front());
      queue_.pop_front();
      pool = pool_;
      busy_ = true;
    }
    if (bound.owner_before(pool) || pool.owner_before(bound)) {  // this thread calls the pool: it runs where its workers do
      if (pool ? pool->bind_calling_thread() : cpu::set_thread_affinity({})) bound = pool;
    }
    std::string err;
    Code code = Code::E_INTERNAL;
    try {
      cpu::ThreadPool::Use use(pool ? *pool : cpu::ThreadPool::current());
      fn();
    } catch (...) {
      if (!describe_failure(&code, &err)) throw;
    }
    fn = nullptr;  // drop captured tensors before reporting idle
    {
      std::lock_guard<std::mutex> lk(m_);
      if (!err.empty() && error_.empty()) {
        error_ = err;
        error_code_ = code;
      }
      busy_ = false;
      if (queue_.empty()) idle_cv_.notify_all();
    }
  }
}

void Stream::synchronize() {
  if (capturing()) fail(Code::E_ARGUMENT, "synchronize() on a stream that is being captured into a graph");
  if (!device_.is_cpu()) {
    cuda::stream_synchronize(device_.index, cuda_);
    return;
  }
  std::unique_lock<std::mutex> lk(m_);
  idle_cv_.wait(lk, [this] { return queue_.empty() && !busy_ && !on_hold_; });
  if (!error_.empty()) {
    std::string e;
    e.swap(error_);
    throw Error(error_code_, e);
  }
}

bool Stream::try_hold() {
  if (!device_.is_cpu()) return false;
  std::lock_guard<std::mutex> lk(m_);
  if (captured_ || on_hold_ || busy_ || stopping_ || !queue_.empty()) return false;
  on_hold_ = true;
  return true;
}

void Stream::keep_error(Code code, const std::string& message) {
  std::lock_guard<std::mutex> lk(m_);
  if (!message.empty() && error_.empty()) error_ = message, error_code_ = code;
}

void Stream::release_hold(Code code, const std::string& error) {
  keep_error(code, error);
  bool queued;
  {
    std::lock_guard<std::mutex> lk(m_);
    on_hold_ = false;
    queued = !queue_.empty();
  }
  if (queued)
    cv_.notify_one();  // work queued meanwhile runs now
  else
    idle_cv_.notify_all();
}

void Stream::hold_while_captured(std::shared_ptr<Storage> s) {
  std::lock_guard<std::mutex> lk(m_);
  held_.push_back(std::move(s));
}

bool Stream::take_error(Code* code, std::string* message) {
  std::lock_guard<std::mutex> lk(m_);
  if (error_.empty()) return false;
  *code = error_code_;
  message->clear();
  message->swap(error_);
  return true;
}

void Stream::raise_error() {
  Code code;
  std::string message;
  if (take_error(&code, &message)) throw Error(code, message);
}

// ---- events -----------------------------------------------------------------------------

Event::Event(Device d) : device_(d) {
  if (!d.is_cpu()) cuda_ = cuda::event_create(d.index);
}

Event::~Event() {
  if (cuda_) {
    try {
      cuda::event_destroy(device_.index, cuda_);
    } catch (...) {
    }
  }
}

void Event::record(Stream& s) {
  if (s.device() != device_)
    fail(Code::E_DEVICE, "event on %s recorded on a stream of %s", device_.str().c_str(), s.device().str().c_str());
  if (cuda_) {
    cuda::event_record(device_.index, cuda_, s.cuda_handle());
    return;
  }
  auto sig = std::make_shared<Signal>();
  last_ = sig;
  s.enqueue_marker([sig] {
    std::lock_guard<std::mutex> lk(sig->m);
    sig->raised++;
    sig->when = std::chrono::steady_clock::now();
    sig->cv.notify_all();
  });
}

void Event::wait_on(Stream& s) {
  if (cuda_ && !s.device().is_cpu()) {  // cudaStreamWaitEvent takes an event of any device
    cuda::stream_wait_event(s.device().index, s.cuda_handle(), cuda_);
    return;
  }
  if (s.device() != device_)
    fail(Code::E_DEVICE, "stream on %s cannot wait for an event on %s", s.device().str().c_str(), device_.str().c_str());
  if (cuda_) {
    cuda::stream_wait_event(device_.index, s.cuda_handle(), cuda_);
    return;
  }
  if (!last_) return;  // never recorded: nothing to wait for (CUDA semantics)
  auto sig = last_;
  auto runs = std::make_shared<uint64_t>(0);  // the n-th run of this wait pairs with the n-th raise
  s.enqueue_marker([sig, runs] {
    uint64_t n = ++*runs;
    std::unique_lock<std::mutex> lk(sig->m);
    sig->cv.wait(lk, [&] { return sig->raised >= n; });
  });
}

void Event::synchronize() {
  if (cuda_) {
    cuda::event_synchronize(device_.index, cuda_);
    return;
  }
  if (!last_) return;
  std::unique_lock<std::mutex> lk(last_->m);
  last_->cv.wait(lk, [&] { return last_->raised >= 1; });
}

bool Event::query() {
  if (cuda_) return cuda::event_query(device_.index, cuda_);
  if (!last_) return true;
  std::lock_guard<std::mutex> lk(last_->m);
  return last_->raised >= 1;
}

double Event::elapsed_ms(Event& end) {
  if (end.device_ != device_) fail(Code::E_DEVICE, "events on different devices");
  if (&end == this) return 0.0;
  if (cuda_) {  // cudaEventElapsedTime fails (not ready) unless both records completed
    cuda::event_synchronize(device_.index, cuda_);
    cuda::event_synchronize(device_.index, end.cuda_);
    return cuda::event_elapsed_ms(device_.index, cuda_, end.cuda_);
  }
  if (!last_ || !end.last_) fail(Code::E_ARGUMENT, "elapsed time asked of an event that was never recorded");
  synchronize();
  end.synchronize();
  std::lock_guard<std::mutex> lk(last_->m);
  std::lock_guard<std::mutex> lk2(end.last_->m);
  return std::chrono::duration<double, std::milli>(end.last_->when - last_->when).count();
}

// ---- graphs -----------------------------------------------------------------------------

struct Graph::Plan {
  struct Step {
    int part;  // index into streams
    bool marker;
    uint64_t seq;
    std::function<void()> fn;
    const char* op;                         // null: unnamed
    std::shared_ptr<const RowSplit> split;  // null: runs whole
  };
  // No stream here: a queued replay holds the plan, and a stream's last owner must not be its own
  // job (the stream's thread would join itself).
  size_t parts = 0;
  std::vector<Step> steps;    // in capture order
  bool side_by_side = false;  // a step spins on another stream's kernel (Stream::enqueue_spinning)
  // The region's phases: steps [first, second) run as one parallel job (more than one step: row
  // splits that touch none of each other's writes, fused by fuse()); every other step alone.
  std::vector<std::pair<size_t, size_t>> phases;

  struct Failure {
    Code code = Code::E_INTERNAL;
    std::string message;  // empty: none
  };

  // Groups consecutive steps with row splits whose writes no other member reads or writes.
  void fuse(bool enabled) {
    phases.clear();
    auto overlap = [](const std::pair<const void*, size_t>& a, const std::pair<const void*, size_t>& b) {
      const char *a0 = static_cast<const char*>(a.first), *b0 = static_cast<const char*>(b.first);
      return a0 < b0 + b.second && b0 < a0 + a.second;
    };
    auto conflict = [&](const RowSplit& a, const RowSplit& b) {
      for (const auto& w : a.writes) {
        for (const auto& r : b.reads)
          if (overlap(w, r)) return true;
        for (const auto& r : b.writes)
          if (overlap(w, r)) return true;
      }
      for (const auto& w : b.writes)
        for (const auto& r : a.reads)
          if (overlap(w, r)) return true;
      return false;
    };
    for (size_t i = 0; i < steps.size();) {
      size_t j = i + 1;
      if (enabled && steps[i].split && !steps[i].marker)
        for (; j < steps.size() && steps[j].split && !steps[j].marker; ++j) {
          bool ok = true;
          for (size_t m = i; m < j && ok; ++m) ok = !conflict(*steps[m].split, *steps[j].split);
          if (!ok) break;
        }
      phases.emplace_back(i, j);
      i = j;
    }
  }

  // Runs the step as one parallel region of the calling thread's pool; a failed kernel's error goes
  // to its stream's entry of `failures`, and the kernels after it are skipped.
  // `queued`: when replay() queued the step (the profile's wait from there to the region's start).
  void run(std::vector<Failure>& failures, std::chrono::steady_clock::time_point queued) const {
    if (cpu::profile::on()) return run_profiled(failures, queued);
    cpu::ThreadPool& pool = cpu::ThreadPool::current();
    cpu::ThreadPool::Region region(pool);
    const std::shared_ptr<const Lookahead> ahead = lookahead(pool);
    bool failed = false;
    for (size_t k = 0; k < phases.size(); ++k) {
      if (ahead) pool.set_lookahead(&ahead->spans[k]);
      failed |= run_phase(phases[k].first, phases[k].second, failed, failures);
    }
  }

  // Per phase, the first weight rows each thread will likely stream in the next phase that streams
  // weights (the first range phase_ranges gives it: job chunk p, or the start of steal_for's share
  // p), which the pool's threads prefetch when they run out of chunks (cpu::ThreadPool::
  // set_lookahead), so the next node does not start its streams cold. A lone linear's kernel splits
  // its rows itself, about as phase_ranges does: the spans cover the 8 rows from the range start's
  // pass of 4. Rebuilt when the pool's size or split changes. LONGCAT_LOOKAHEAD=0: off (A/B).
  struct Lookahead {
    int threads = 0;
    bool steal = false;
    std::vector<std::vector<cpu::ThreadPool::Span>> spans;  // per phase
  };
  mutable std::mutex ahead_m;
  mutable std::shared_ptr<const Lookahead> ahead_built;
  std::shared_ptr<const Lookahead> lookahead(const cpu::ThreadPool& pool) const {
    if (env_is("LONGCAT_LOOKAHEAD", "0")) return nullptr;
    const int P = pool.threads();
    const bool steal = pool.stealing();
    std::lock_guard<std::mutex> lk(ahead_m);
    if (ahead_built && ahead_built->threads == P && ahead_built->steal == steal) return ahead_built;
    auto la = std::make_shared<Lookahead>();
    la->threads = P;
    la->steal = steal;
    la->spans.resize(phases.size());
    constexpr int64_t kRows = 8, kRowBytes = 2048;
    std::vector<Range> rs;
    for (size_t k = 0; k + 1 < phases.size(); ++k) {
      size_t j = k + 1;
      while (j < phases.size() && !(steps[phases[j].first].split && steps[phases[j].first].split->weights)) ++j;
      if (j == phases.size()) break;
      phase_ranges(phases[j].first, phases[j].second, P, steal, rs);
      for (int p = 0; p < P && !rs.empty(); ++p) {
        const Range& r = rs[steal ? rs.size() * p / P : std::min<size_t>(p, rs.size() - 1)];
        const RowSplit& sp = *r.split;
        if (!sp.weights || sp.weight_row_bytes <= 0) continue;
        const int64_t r0 = r.r0 - r.r0 % 4, r1 = std::min(sp.rows, r0 + kRows), rb = sp.weight_row_bytes;
        const char* w = static_cast<const char*>(sp.weights);
        if (rb <= kRowBytes)
          la->spans[k].push_back({w + r0 * rb, static_cast<size_t>((r1 - r0) * rb), p});
        else
          for (int64_t row = r0; row < r1; ++row) la->spans[k].push_back({w + row * rb, static_cast<size_t>(kRowBytes), p});
      }
    }
    ahead_built = la;
    return la;
  }
  // run() with every phase timed (graph_profile); a fused phase's time, waits and bytes are shared
  // among its nodes by their row costs.
  void run_profiled(std::vector<Failure>& failures, std::chrono::steady_clock::time_point queued) const {
    using clock = std::chrono::steady_clock;
    auto ns = [](clock::duration d) { return std::chrono::duration_cast<std::chrono::nanoseconds>(d).count(); };
    std::vector<NodeProfile> nodes(steps.size());
    const auto t0 = clock::now();
    {
      cpu::ThreadPool& pool = cpu::ThreadPool::current();
      cpu::ThreadPool::Region region(pool);
      const std::shared_ptr<const Lookahead> ahead = lookahead(pool);
      bool failed = false;
      for (size_t k = 0; k < phases.size(); ++k) {
        const auto [b, e] = phases[k];
        if (ahead) pool.set_lookahead(&ahead->spans[k]);
        const cpu::profile::Snapshot sa = cpu::profile::snapshot();
        const auto s0 = clock::now();
        failed |= run_phase(b, e, failed, failures);
        const auto s1 = clock::now();
        const cpu::profile::Snapshot sb = cpu::profile::snapshot();
        double total = 0;
        for (size_t i = b; i < e; ++i) total += cost(steps[i]);
        for (size_t i = b; i < e; ++i) {
          const double f = e - b == 1 ? 1.0 : cost(steps[i]) / total;
          auto share = [&](int64_t v) { return static_cast<int64_t>(static_cast<double>(v) * f); };
          nodes[i] = NodeProfile{{},
                                 steps[i].part,
                                 static_cast<int>(e - b),
                                 share(ns(s1 - s0)),
                                 share(sb.wait_ns - sa.wait_ns),
                                 i == b ? sb.jobs - sa.jobs : 0,
                                 share(sb.weight_bytes - sa.weight_bytes),
                                 share(sb.busy_ns - sa.busy_ns)};
        }
      }
    }
    const int64_t total = ns(clock::now() - t0);
    std::lock_guard<std::mutex> lk(profile_m);
    if (profile.nodes.empty()) {
      profile.nodes.resize(steps.size());
      for (size_t i = 0; i < steps.size(); ++i) {
        profile.nodes[i].op = steps[i].op ? steps[i].op : "?";
        profile.nodes[i].stream = steps[i].part;
      }
    }
    ++profile.replays;
    profile.ns += total;
    profile.start_ns += ns(t0 - queued);
    for (size_t i = 0; i < steps.size(); ++i) {
      NodeProfile& p = profile.nodes[i];
      p.phase = nodes[i].phase;
      p.ns += nodes[i].ns;
      p.wait_ns += nodes[i].wait_ns;
      p.jobs += nodes[i].jobs;
      p.weight_bytes += nodes[i].weight_bytes;
      p.busy_ns += nodes[i].busy_ns;
    }
  }
  mutable std::mutex profile_m;
  mutable GraphProfile profile;  // what run_profiled gathered since the last graph_profile()

  // Side by side: each stream's thread runs its own steps (the markers after a failure too, so the
  // other streams' waits still meet their records).
  void run_part(int part, Failure& failure) const {
    bool failed = false;
    for (const Step& st : steps)
      if (st.part == part && !(failed && !st.marker)) failed |= run_step(st, failure);
  }
  static bool run_step(const Step& st, Failure& f) {
    try {
      st.fn();
      return false;
    } catch (...) {
      if (!describe_failure(&f.code, &f.message)) throw;
      if (f.message.empty()) f.message = "a queued kernel failed";
      return true;
    }
  }

 private:
  static double cost(const Step& st) { return st.split ? static_cast<double>(st.split->rows) * st.split->row_cost : 1.0; }

  struct Range {
    const RowSplit* split;
    int64_t r0, r1;
  };
  // The row ranges of steps [b, e) with row splits, run as one job over `threads` threads: cut by
  // cost, ~4 per thread (the default split), or (steal: cpu::steal_for) items in step order of
  // 64-128 KiB of weights each (every item is a kernel call of its own: at ~13 KiB, small's fused
  // q_a / kv_a phase ran 8% slower).
  void phase_ranges(size_t b, size_t e, int threads, bool steal, std::vector<Range>& out) const {
    out.clear();
    double total = 0;
    for (size_t i = b; i < e; ++i) total += cost(steps[i]);
    if (steal) {
      const double item = std::max(64.0 * 1024, std::min(128.0 * 1024, total / (16.0 * threads)));
      for (size_t i = b; i < e; ++i) {
        const RowSplit& sp = *steps[i].split;
        int64_t rows = static_cast<int64_t>(item / std::max(sp.row_cost, 1e-9));
        rows = std::max<int64_t>(sp.align, rows / sp.align * sp.align);
        for (int64_t r0 = 0; r0 < sp.rows; r0 += rows) out.push_back(Range{&sp, r0, std::min(sp.rows, r0 + rows)});
      }
      return;
    }
    const double target = 4.0 * threads;  // (parallel_for's most chunks per thread)
    for (size_t i = b; i < e; ++i) {
      const RowSplit& sp = *steps[i].split;
      const int64_t units = (sp.rows + sp.align - 1) / sp.align;
      int64_t n = static_cast<int64_t>(cost(steps[i]) / total * target + 0.5);
      n = std::max<int64_t>(1, std::min(n, units));
      for (int64_t c = 0; c < n; ++c) {
        const int64_t r0 = std::min(sp.rows, units * c / n * sp.align), r1 = std::min(sp.rows, units * (c + 1) / n * sp.align);
        if (r0 < r1) out.push_back(Range{&sp, r0, r1});
      }
    }
  }

  // Steps [b, e): one alone (after a failure only a marker), or a fused phase: every member's rows
  // cut into ranges (phase_ranges), run as one job. A failure there fails every member's stream.
  bool run_phase(size_t b, size_t e, bool failed, std::vector<Failure>& failures) const {
    if (e - b == 1) return failed && !steps[b].marker ? false : run_step(steps[b], failures[steps[b].part]);
    if (failed) return false;
    thread_local std::vector<Range> ranges;
    cpu::ThreadPool& pool = cpu::ThreadPool::current();
    const bool steal = pool.stealing();
    phase_ranges(b, e, pool.threads(), steal, ranges);
    const std::vector<Range>& rs = ranges;  // (the job reads the master's vector)
    const auto range = [&](int64_t c) { rs[c].split->run(rs[c].r0, rs[c].r1); };
    try {
      if (steal)
        cpu::steal_for(static_cast<int64_t>(rs.size()), range);
      else
        pool.run(static_cast<int64_t>(rs.size()), range);
      return false;
    } catch (...) {
      Failure f;
      if (!describe_failure(&f.code, &f.message)) throw;
      if (f.message.empty()) f.message = "a queued kernel failed";
      for (size_t i = b; i < e; ++i)
        if (failures[steps[i].part].message.empty()) failures[steps[i].part] = f;
      return true;
    }
  }
};

namespace {
// The distinct devices of a capture's streams, by index: every capture parks them in this one
// order, so two threads capturing over overlapping device sets cannot wait for each other in a cycle.
std::vector<Device> capture_devices(const std::vector<std::shared_ptr<Stream>>& streams) {
  std::vector<Device> ds;
  for (const auto& s : streams)
    if (std::find(ds.begin(), ds.end(), s->device()) == ds.end()) ds.push_back(s->device());
  std::sort(ds.begin(), ds.end(), [](Device a, Device b) { return a.index < b.index; });
  return ds;
}
void unpark_all(const std::vector<Device>& ds, size_t n) {
  for (size_t i = 0; i < n; ++i) device_pool(ds[i]).unpark(device_pool(ds[i]).end_parking());
}
}  // namespace

void Capture::begin(const std::vector<std::shared_ptr<Stream>>& streams) {
  if (streams.empty()) fail(Code::E_ARGUMENT, "captureGraph: no streams given");
  Device d = streams[0]->device();
  for (size_t i = 0; i < streams.size(); ++i)
    for (size_t j = 0; j < i; ++j)
      if (streams[i] == streams[j]) fail(Code::E_ARGUMENT, "captureGraph: streams[%zu] is streams[%zu] again", i, j);
  for (const auto& s : streams) {
    if (s->device() != d && (d.is_cpu() || s->device().is_cpu()))
      fail(Code::E_DEVICE, "captureGraph: streams on %s and %s", d.str().c_str(), s->device().str().c_str());
    if (s->capturing()) fail(Code::E_ARGUMENT, "captureGraph: a stream is already being captured");
  }
  if (!d.is_cpu()) {
    const std::vector<Device> devs = capture_devices(streams);
    size_t parked = 0;
    try {
      // first: parking waits for another thread's capture on the device to end
      for (Device x : devs) {
        device_pool(x).begin_parking();
        ++parked;
      }
      cuda::stream_begin_capture(d.index, streams[0]->cuda_handle());
    } catch (...) {
      unpark_all(devs, parked);
      throw;
    }
    return;
  }
  for (const auto& s : streams) {
    s->synchronize();  // what was queued before the capture runs before it
    std::lock_guard<std::mutex> lk(s->m_);
    s->captured_ = std::make_unique<std::vector<Stream::Captured>>();
  }
}

std::unique_ptr<Graph> Capture::end(const std::vector<std::shared_ptr<Stream>>& streams) {
  auto g = std::make_unique<Graph>();
  Device d = streams[0]->device();
  g->device_ = d;
  g->origin_ = streams[0];
  if (!d.is_cpu()) {
    // The capture ends before the parking does: another thread's capture waits for the parking.
    const std::vector<Device> devs = capture_devices(streams);
    for (const auto& s : streams) {  // (released with g if the capture fails)
      std::lock_guard<std::mutex> lk(s->m_);
      for (auto& h : s->held_) g->held_.push_back(std::move(h));
      s->held_.clear();
    }
    try {
      g->exec_ = cuda::stream_end_capture(d.index, streams[0]->cuda_handle());
    } catch (...) {
      unpark_all(devs, devs.size());
      throw;
    }
    for (Device x : devs) g->parked_.emplace_back(x, device_pool(x).end_parking());
    return g;
  }
  auto plan = std::make_shared<Graph::Plan>();
  plan->parts = streams.size();
  for (size_t i = 0; i < streams.size(); ++i) {
    std::unique_ptr<std::vector<Stream::Captured>> work;
    {
      std::lock_guard<std::mutex> lk(streams[i]->m_);
      work = std::move(streams[i]->captured_);
    }
    g->parts_.push_back(streams[i]);
    for (auto& c : *work) {
      plan->side_by_side |= c.spins;
      plan->steps.push_back(Graph::Plan::Step{static_cast<int>(i), c.marker, c.seq, std::move(c.fn), c.op, std::move(c.split)});
    }
  }
  // Capture order: an event's wait was captured after the record it waits for (wait_on takes the
  // signal of the latest record()), so this order runs every record before its waits.
  std::stable_sort(plan->steps.begin(), plan->steps.end(), [](const auto& a, const auto& b) { return a.seq < b.seq; });
  // LONGCAT_GRAPH_FUSE=0: every step alone (A/B of the fused phases, bench/step-profile.mjs)
  plan->fuse(!env_is("LONGCAT_GRAPH_FUSE", "0"));
  g->plan_ = std::move(plan);
  return g;
}

void Capture::abort(const std::vector<std::shared_ptr<Stream>>& streams) noexcept {
  if (streams.empty()) return;
  if (!streams[0]->device().is_cpu()) {
    const std::vector<Device> devs = capture_devices(streams);
    try {  // end the capture first: the unparked blocks' fences must not be recorded into it
      cuda::graph_destroy(streams[0]->device().index,
                          cuda::stream_end_capture(streams[0]->device().index, streams[0]->cuda_handle()));
    } catch (...) {
    }
    unpark_all(devs, devs.size());
    for (const auto& s : streams) {
      std::lock_guard<std::mutex> lk(s->m_);
      s->held_.clear();  // nothing was launched: no copy reads it
    }
    return;
  }
  for (const auto& s : streams) {
    std::lock_guard<std::mutex> lk(s->m_);
    s->captured_.reset();
  }
}

namespace {
// One replay's meeting point: each stream's job arrives; the last runs the plan; all leave with
// their own stream's failure, if any.
struct Meeting {
  std::atomic<size_t> arrived{0};
  std::mutex m;
  std::condition_variable cv;
  bool done = false;
};
}  // namespace

namespace {
// The plans replayed while profiling is on (graph_profile), as long as their graphs live.
std::mutex g_profiled_m;
std::vector<std::weak_ptr<const Graph::Plan>> g_profiled;
}  // namespace

std::vector<GraphProfile> graph_profile(bool on) {
  std::vector<GraphProfile> out;
  std::lock_guard<std::mutex> lk(g_profiled_m);
  for (const auto& w : g_profiled)
    if (auto plan = w.lock()) {
      std::lock_guard<std::mutex> lk2(plan->profile_m);
      if (plan->profile.replays) out.push_back(std::move(plan->profile));
      plan->profile = GraphProfile{};
    }
  g_profiled.clear();
  cpu::profile::g_on.store(on);
  return out;
}

void Graph::replay() {
  if (exec_) {
    cuda::graph_launch(device_.index, exec_, origin_->cuda_handle());
    return;
  }
  auto plan = plan_;
  if (cpu::profile::on() && !plan->side_by_side) {
    std::lock_guard<std::mutex> lk(g_profiled_m);
    bool known = false;
    for (const auto& w : g_profiled) known |= w.lock() == plan;
    if (!known) g_profiled.push_back(plan);
  }
  const auto queued = std::chrono::steady_clock::now();
  auto meeting = std::make_shared<Meeting>();
  auto failures = std::make_shared<std::vector<Plan::Failure>>(plan->parts);
  const size_t n = plan->parts;
  if (plan->side_by_side) {
    for (size_t i = 0; i < n; ++i)
      parts_[i]->enqueue([plan, failures, i] {
        Plan::Failure& f = (*failures)[i];
        plan->run_part(static_cast<int>(i), f);
        if (!f.message.empty()) throw Error(f.code, f.message);
      });
    return;
  }
  // The streams other than the first with nothing queued or running are held (Stream::try_hold)
  // instead of given a job: they have no earlier work for the plan to wait for, and their threads
  // need not wake to meet the others and wake again to leave (on the 2-vCPU VM each wake is a
  // scheduler round trip on the step's critical path). The plan's runner releases them.
  std::vector<std::shared_ptr<Stream>> held(n);
  size_t nheld = 0;
  if (!env_is("LONGCAT_REPLAY_HOLD", "0"))
    for (size_t i = 1; i < n; ++i)
      if (parts_[i]->try_hold()) held[i] = parts_[i], ++nheld;
  meeting->arrived.store(nheld);
  // Every part's failure is kept on its stream before the parts go on (not thrown by its own job
  // after the meeting), so work queued behind the step on any stream, a read (readAsync) among it,
  // finds the step's failures already there.
  // (Raw pointers: a part's stream lives while its job waits for the meeting; a shared_ptr in its own
  // job could be the last one, and a stream is not destroyed on its own thread.)
  auto running = std::make_shared<std::vector<Stream*>>(n, nullptr);
  for (size_t i = 0; i < n; ++i)
    if (!held[i]) (*running)[i] = parts_[i].get();
  for (size_t i = 0; i < n; ++i) {
    if (held[i]) continue;
    parts_[i]->enqueue([plan, meeting, failures, held, running, n, queued] {
      if (meeting->arrived.fetch_add(1) + 1 == n) {
        struct Release {  // the held streams go on, and every part keeps its failure, however the plan ends
          const std::vector<std::shared_ptr<Stream>>& held;
          const std::vector<Stream*>& running;
          const std::vector<Plan::Failure>& failures;
          ~Release() {
            for (size_t j = 0; j < held.size(); ++j)
              if (held[j])
                held[j]->release_hold(failures[j].code, failures[j].message);
              else
                running[j]->keep_error(failures[j].code, failures[j].message);
          }
        };
        try {
          Release release{held, *running, *failures};
          plan->run(*failures, queued);
        } catch (...) {  // (an exception none of ours: let the others go before it escapes)
          std::lock_guard<std::mutex> lk(meeting->m);
          meeting->done = true;
          meeting->cv.notify_all();
          throw;
        }
        std::lock_guard<std::mutex> lk(meeting->m);
        meeting->done = true;
        meeting->cv.notify_all();
      } else {
        std::unique_lock<std::mutex> lk(meeting->m);
        meeting->cv.wait(lk, [&] { return meeting->done; });
      }
    });
  }
}

void Graph::prewake() {
  // (the step's other streams are held by replay(), not run: their threads stay asleep)
  if (env_is("LONGCAT_STREAM_PREWAKE", "0")) return;
  if (!exec_ && plan_ && !plan_->side_by_side && !parts_.empty()) parts_[0]->prewake();
}

Graph::~Graph() {
  if (exec_) {
    try {
      cuda::stream_synchronize(device_.index, origin_->cuda_handle());  // no replay still reads the parked blocks
      cuda::graph_destroy(device_.index, exec_);
    } catch (...) {
    }
    for (auto& [x, blocks] : parked_) device_pool(x).unpark(blocks);
  }
}

}  // namespace lc
