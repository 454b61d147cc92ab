// The CPU thread pool every kernel uses through parallel_for: a fixed set of workers, work split by
// ranges, safe to call from several stream threads at once; and its parallel-region mode (a
// replayed graph's step run by one master with the workers kept inside, see threadpool.h).
#include "threadpool.h"

#include "../common.h"
#include "profile.h"

#include <linux/futex.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <chrono>
#include <climits>
#include <cstdlib>
#include <cstring>

namespace lc::cpu {

namespace {

thread_local ThreadPool* t_current = nullptr;       // set by ThreadPool::Use
thread_local ThreadPool* t_master = nullptr;        // the pool whose region this thread runs
thread_local bool t_in_region_job = false;          // the master is running a region job's chunk
thread_local ThreadPool* t_region_chunk = nullptr;  // the pool whose region job's chunk this worker runs
thread_local int t_worker_index = 0;                // a pool worker's index, 1..threads() - 1 (0: not a worker)

void futex_wait(std::atomic<uint32_t>* word, uint32_t expected) {
  static_assert(sizeof(std::atomic<uint32_t>) == sizeof(uint32_t), "futex word");
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAIT_PRIVATE, expected, nullptr, nullptr, 0);
}

void futex_wake_all(std::atomic<uint32_t>* word) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAKE_PRIVATE, INT_MAX, nullptr, nullptr, 0);
}

// How long a thread spins (pause loops) before it sleeps on a futex: a worker waiting for the
// region's next job, and the master waiting for the workers' last chunks. Long enough to span the
// gap between two ops of a step (a few microseconds of host work), short enough that a thread
// waiting on a stalled step gives its core back. (Yielding the core inside the spin was tried: on
// a loaded machine it hands the core to other processes and the step waits for a time slice.)
constexpr auto kSpin = std::chrono::microseconds(50);

// Spins on pred() for up to kSpin; true when pred() held.
template <typename P>
bool spin_until(P&& pred) {
  auto until = std::chrono::steady_clock::now() + kSpin;
  for (;;) {
    for (int i = 0; i < 64; ++i) {
      if (pred()) return true;
      cpu_relax();
    }
    if (std::chrono::steady_clock::now() >= until) return pred();
  }
}

}  // namespace

int default_thread_count() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
  unsigned h = std::thread::hardware_concurrency();
  return h ? static_cast<int>(h) : 1;
}

std::vector<int> allowed_cpus() {
  std::vector<int> out;
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0)
    for (int c = 0; c < CPU_SETSIZE; ++c)
      if (CPU_ISSET(c, &set)) out.push_back(c);
  return out;
}

bool set_thread_affinity(const std::vector<int>& cpus) {
  const std::vector<int>& use = cpus.empty() ? allowed_cpus() : cpus;
  cpu_set_t set;
  CPU_ZERO(&set);
  for (int c : use)
    if (c >= 0 && c < CPU_SETSIZE) CPU_SET(c, &set);
  return sched_setaffinity(0, sizeof(set), &set) == 0;  // (0: the calling thread)
}

ThreadPool& ThreadPool::global() {
  // Leaked on purpose: joining threads from a static destructor at process exit can deadlock
  // when Node tears down while a stream worker still holds a job.
  static ThreadPool* pool = new ThreadPool();
  return *pool;
}

ThreadPool& ThreadPool::current() { return t_current ? *t_current : global(); }

bool ThreadPool::stealing() const { return t_master == this && region_steal_; }
bool ThreadPool::runs_inline() const { return t_region_chunk == this || (t_master == this && t_in_region_job); }

ThreadPool::ThreadPool() { start(default_thread_count()); }

ThreadPool::ThreadPool(int n, std::vector<int> cpus) : cpus_(std::move(cpus)) { start(n); }

bool ThreadPool::bind_calling_thread() const { return cpus_.empty() || set_thread_affinity(cpus_); }

ThreadPool::~ThreadPool() { stop(); }

ThreadPool::Use::Use(ThreadPool& pool) : prev_(t_current) { t_current = &pool; }

ThreadPool::Use::~Use() { t_current = prev_; }

void ThreadPool::start(int n) {
  nthreads_ = n < 1 ? 1 : n;
  stopping_ = false;
  for (int i = 1; i < nthreads_; ++i)
    workers_.emplace_back([this, i] {
      t_worker_index = i;
      bind_calling_thread();  // (a refused binding leaves the worker where it was: still correct)
      worker();
    });
}

void ThreadPool::stop() {
  {
    std::lock_guard<std::mutex> lk(m_);
    stopping_ = true;
  }
  cv_.notify_all();
  for (auto& t : workers_) t.join();
  workers_.clear();
}

void ThreadPool::set_threads(int n) {
  std::unique_lock<std::shared_mutex> lk(resize_m_);
  if (n < 1) n = 1;
  if (n == nthreads_) return;
  stop();
  start(n);
}

void ThreadPool::work_on(Job& job) {
  for (;;) {
    int64_t c = job.next.fetch_add(1);
    if (c >= job.nchunks) return;
    try {
      job.fn(c);
    } catch (...) {
      std::lock_guard<std::mutex> lk(job.m);
      if (!job.error) job.error = std::current_exception();
    }
    if (job.done.fetch_add(1) + 1 == job.nchunks) {
      std::lock_guard<std::mutex> lk(job.m);
      job.cv.notify_all();
    }
  }
}

void ThreadPool::worker() {
  uint32_t seen = gen_.load();
  for (;;) {
    if (in_region_.load(std::memory_order_acquire)) {
      region_worker(seen);
      continue;
    }
    std::shared_ptr<Job> job;
    {
      std::unique_lock<std::mutex> lk(m_);
      cv_.wait(lk, [this] { return stopping_ || !queue_.empty() || in_region_.load(); });
      if (stopping_) return;
      if (queue_.empty()) continue;  // a region began
      job = queue_.front();
      // Leave the job queued while chunks remain so other idle workers can join in.
      if (job->next.load() >= job->nchunks - 1) queue_.pop_front();
    }
    work_on(*job);
  }
}

void ThreadPool::run(int64_t nchunks, const std::function<void(int64_t)>& fn) {
  if (nchunks <= 0) return;
  if (t_region_chunk == this) {  // nested in a region chunk on a worker: the others are busy in the region
    for (int64_t c = 0; c < nchunks; ++c) fn(c);
    return;
  }
  if (t_master == this && nchunks <= kMaxRegionChunks) {
    run_in_region(nchunks, fn);
    return;
  }
  // (a region's master calling with too many chunks for the ticket takes the queue: its workers
  // stay in the region, so it runs every chunk itself; it still holds resize_m_ shared)
  std::shared_lock<std::shared_mutex> resize(resize_m_, std::defer_lock);
  if (t_master != this) resize.lock();  // no resize while a job runs
  auto job = std::make_shared<Job>();
  job->fn = fn;
  job->nchunks = nchunks;
  {
    std::lock_guard<std::mutex> lk(m_);
    queue_.push_back(job);
  }
  cv_.notify_all();
  work_on(*job);
  {
    std::unique_lock<std::mutex> lk(job->m);
    job->cv.wait(lk, [&] { return job->done.load() == job->nchunks; });
  }
  {
    std::lock_guard<std::mutex> lk(m_);
    for (auto it = queue_.begin(); it != queue_.end(); ++it)
      if (*it == job) {
        queue_.erase(it);
        break;
      }
  }
  if (job->error) std::rethrow_exception(job->error);
}

// ---- parallel region ----------------------------------------------------------------------------

ThreadPool::Region::Region(ThreadPool& pool)
    : pool_(pool), excl_(pool.region_excl_), resize_(pool.resize_m_), prev_master_(t_master) {
  t_master = &pool;
  pool.region_steal_ = env_is("LONGCAT_STEAL", "1");
  {
    std::lock_guard<std::mutex> lk(pool.m_);  // (the workers' idle wait reads in_region_ under m_)
    pool.in_region_.store(true, std::memory_order_release);
  }
  pool.cv_.notify_all();
}

ThreadPool::Region::~Region() {
  pool_.lookahead_.store(nullptr, std::memory_order_relaxed);
  pool_.in_region_.store(false, std::memory_order_seq_cst);
  pool_.gen_.fetch_add(1, std::memory_order_seq_cst);  // (no ticket of this generation: nothing to claim)
  if (pool_.sleepers_.load(std::memory_order_seq_cst) > 0) futex_wake_all(&pool_.gen_);
  t_master = prev_master_;
}

void ThreadPool::region_worker(uint32_t& seen) {
  for (;;) {
    uint32_t g = gen_.load(std::memory_order_acquire);
    if (g != seen) {
      seen = g;
      if (!in_region_.load(std::memory_order_acquire)) return;
      region_work(g);
      continue;
    }
    if (!in_region_.load(std::memory_order_acquire)) return;
    if (spin_until([&] { return gen_.load(std::memory_order_acquire) != seen; })) continue;
    sleepers_.fetch_add(1, std::memory_order_seq_cst);
    if (gen_.load(std::memory_order_seq_cst) == seen && in_region_.load(std::memory_order_seq_cst)) futex_wait(&gen_, seen);
    sleepers_.fetch_sub(1, std::memory_order_seq_cst);
  }
}

void ThreadPool::region_work(uint32_t gen) {
  const uint64_t tag = gen & 0xffffffu;
  for (;;) {
    uint64_t t = ticket_.load(std::memory_order_acquire);
    if ((t >> 40) != tag) return;  // a later job (or none of this generation)
    const uint64_t n = (t >> 20) & 0xfffffu, c = t & 0xfffffu;
    if (c >= n) {
      // nothing left to claim: the wait at the join reads ahead, until the job is joined (the
      // master) or the next one is published (a worker)
      if (t_master == this)
        prefetch_lookahead([&] { return done_.load(std::memory_order_relaxed) == n; });
      else
        prefetch_lookahead([&] { return gen_.load(std::memory_order_relaxed) != gen; });
      return;
    }
    if (!ticket_.compare_exchange_weak(t, t + 1, std::memory_order_acq_rel, std::memory_order_acquire)) continue;
    // The job cannot finish before this chunk does, so its function is still the one published.
    const std::function<void(int64_t)>* fn = region_fn_.load(std::memory_order_acquire);
    ThreadPool* const outer = t_region_chunk;
    if (t_master != this) t_region_chunk = this;
    try {
      if (profile::on()) {
        const auto t0 = std::chrono::steady_clock::now();
        (*fn)(static_cast<int64_t>(c));
        profile::g_busy_ns.fetch_add(
            std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0).count(),
            std::memory_order_relaxed);
      } else {
        (*fn)(static_cast<int64_t>(c));
      }
      t_region_chunk = outer;
    } catch (...) {
      t_region_chunk = outer;
      std::lock_guard<std::mutex> lk(region_error_m_);
      if (!region_error_) region_error_ = std::current_exception();
    }
    if (done_.fetch_add(1, std::memory_order_seq_cst) + 1 == n && master_sleeping_.load(std::memory_order_seq_cst))
      futex_wake_all(&done_);
  }
}

template <typename Stop>
void ThreadPool::prefetch_lookahead(Stop&& stop) const {
  const std::vector<Span>* spans = lookahead_.load(std::memory_order_acquire);
  if (!spans) return;
  const size_t P = static_cast<size_t>(nthreads_), me = t_master == this ? 0 : static_cast<size_t>(t_worker_index);
  for (const Span& s : *spans) {
    if (static_cast<size_t>(s.thread) % P != me) continue;
    const char* p = static_cast<const char*>(s.p);
    for (size_t off = 0; off < s.bytes; off += 64) {
      if (off % 512 == 0 && stop()) return;  // (a prefetch waits for a free fill buffer: check every 8 lines)
      __builtin_prefetch(p + off, 0, 2);
    }
  }
}

void ThreadPool::run_in_region(int64_t nchunks, const std::function<void(int64_t)>& fn) {
  if (t_in_region_job) {  // nested in one of the master's chunks: the job slot is taken, run them here
    for (int64_t c = 0; c < nchunks; ++c) fn(c);
    return;
  }
  struct InJob {
    InJob() { t_in_region_job = true; }
    ~InJob() { t_in_region_job = false; }
  } in_job;
  const uint32_t n = static_cast<uint32_t>(nchunks);
  region_fn_.store(&fn, std::memory_order_relaxed);
  done_.store(0, std::memory_order_relaxed);
  const uint32_t g = gen_.load(std::memory_order_relaxed) + 1;
  ticket_.store((static_cast<uint64_t>(g & 0xffffffu) << 40) | (static_cast<uint64_t>(n) << 20), std::memory_order_release);
  gen_.store(g, std::memory_order_seq_cst);
  if (sleepers_.load(std::memory_order_seq_cst) > 0) futex_wake_all(&gen_);
  region_work(g);
  const bool prof = profile::on();
  const auto joined_at = prof ? std::chrono::steady_clock::now() : std::chrono::steady_clock::time_point{};
  // join: spin, then sleep until the last chunk's finisher wakes us
  if (!spin_until([&] { return done_.load(std::memory_order_acquire) == n; })) {
    master_sleeping_.store(true, std::memory_order_seq_cst);
    for (uint32_t d; (d = done_.load(std::memory_order_seq_cst)) != n;) futex_wait(&done_, d);
    master_sleeping_.store(false, std::memory_order_relaxed);
  }
  if (prof) {
    profile::g_jobs.fetch_add(1, std::memory_order_relaxed);
    profile::g_wait_ns.fetch_add(
        std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - joined_at).count(),
        std::memory_order_relaxed);
  }
  std::exception_ptr e;
  {
    std::lock_guard<std::mutex> lk(region_error_m_);
    e.swap(region_error_);
  }
  if (e) std::rethrow_exception(e);
}

}  // namespace lc::cpu
