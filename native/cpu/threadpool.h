// The CPU thread pool every kernel shares. parallel_for may be called from several threads at
// once (each CPU stream runs on its own worker), so two streams' kernels really overlap: their
// chunks interleave in one queue and every caller works on its own job while it waits.
//
// A parallel region (ThreadPool::Region) is the other mode, for a replayed CPU graph: one thread
// (the region's master) runs a whole step's ops one after the other, and its parallel_for calls
// publish their chunks lock-free (an atomic ticket) to the workers, which stay inside the region
// between ops (spinning briefly, then sleeping on a futex) and join on an atomic counter, instead
// of a mutex + condition variable per job. The chunking is the same as outside a region (it
// depends on threads() only), so a region computes bit for bit what op-by-op calls do.
// steal_for (below) is the split for weight streams (GEMVs, a replayed step's fused linears).
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <thread>
#include <vector>

namespace lc::cpu {

class ThreadPool {
 public:
  static ThreadPool& global();
  // The pool the calling thread's kernels use: the one a Use scope set on this thread, else global().
  static ThreadPool& current();

  // A pool of its own (n >= 1 threads: n - 1 workers plus the calling thread). With `cpus` (a
  // CPU rank's share of the machine, e.g. one NUMA node's cores) its workers run only there, and
  // so does every thread that calls bind_calling_thread(); empty: wherever the process may run.
  explicit ThreadPool(int n, std::vector<int> cpus = {});

  int threads() const { return nthreads_; }
  // Whether GEMVs and a replayed graph's fused phases are split by steal_for (below): only in a
  // region begun with $LONGCAT_STEAL=1 (opt-in: medium's step ~3% faster, small's 8-19% slower,
  // bench/RESULTS.md; read when a region begins). Otherwise ~4 dynamic chunks per thread.
  bool stealing() const;
  // Whether run() called here would run its chunks inline, one after the other (nested in a chunk).
  bool runs_inline() const;
  const std::vector<int>& cpus() const { return cpus_; }
  // Restricts the calling thread to cpus() (nothing without cpus); false when the OS refused.
  bool bind_calling_thread() const;
  // n >= 1; n - 1 workers plus the calling thread. Waits for running jobs and regions to finish.
  void set_threads(int n);

  // A region's lookahead: memory the step reads next (a replayed step's next weight rows). When a
  // thread of the region finds no chunk left in a job (it would wait at the join), it prefetches
  // the spans whose `thread` % threads() is its index (the master 0, workers 1..) into its L2. Set
  // by the region's master between jobs; the spans must stay alive until the next set or the
  // region's end (which clears it). Only a hint: nothing computed depends on it.
  struct Span {
    const void* p;
    size_t bytes;
    int thread;
  };
  void set_lookahead(const std::vector<Span>* spans) { lookahead_.store(spans, std::memory_order_release); }

  // Runs fn(chunk) for chunk in [0, nchunks), spread over the pool; returns when all are done.
  // An exception thrown by a chunk is rethrown here (the first one) once every chunk has finished.
  void run(int64_t nchunks, const std::function<void(int64_t)>& fn);

  // While alive, the constructing thread is the pool's region master (see the file comment).
  // Regions of one pool are exclusive: a second waits for the first to end.
  class Region {
   public:
    explicit Region(ThreadPool& pool);
    ~Region();
    Region(const Region&) = delete;
    Region& operator=(const Region&) = delete;

   private:
    ThreadPool& pool_;
    std::unique_lock<std::mutex> excl_;
    std::shared_lock<std::shared_mutex> resize_;
    ThreadPool* prev_master_;
  };

  // Makes `pool` the calling thread's current() while alive.
  class Use {
   public:
    explicit Use(ThreadPool& pool);
    ~Use();
    Use(const Use&) = delete;
    Use& operator=(const Use&) = delete;

   private:
    ThreadPool* prev_;
  };

  ~ThreadPool();

 private:
  struct Job {
    std::function<void(int64_t)> fn;
    int64_t nchunks = 0;
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
    std::mutex m;
    std::condition_variable cv;
    std::exception_ptr error;  // the first chunk's exception (under m)
  };
  ThreadPool();
  void start(int n);
  void stop();
  void worker();
  static void work_on(Job& job);
  // region mode
  void run_in_region(int64_t nchunks, const std::function<void(int64_t)>& fn);
  void region_worker(uint32_t& seen);
  void region_work(uint32_t gen);
  template <typename Stop>
  void prefetch_lookahead(Stop&& stop) const;

  int nthreads_ = 1;
  std::vector<int> cpus_;  // the workers' affinity (empty: unbound)
  std::vector<std::thread> workers_;
  std::deque<std::shared_ptr<Job>> queue_;
  std::mutex m_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::shared_mutex resize_m_;  // shared by run() and regions, exclusive for set_threads()

  // The region's job slot. ticket_ packs (generation & 0xffffff) << 40 | nchunks << 20 | next chunk:
  // a worker claims a chunk by a compare-exchange that also checks the job is the one it saw, so
  // a late worker never runs a chunk of a finished job. gen_ (a futex word) is bumped per job and
  // at the region's end; done_ (a futex word) counts finished chunks.
  static constexpr int64_t kMaxRegionChunks = (int64_t{1} << 20) - 1;
  std::mutex region_excl_;
  std::atomic<bool> in_region_{false};
  std::atomic<uint32_t> gen_{0};
  std::atomic<uint64_t> ticket_{0};
  std::atomic<const std::function<void(int64_t)>*> region_fn_{nullptr};
  std::atomic<uint32_t> done_{0};
  std::atomic<int> sleepers_{0};              // workers asleep on gen_
  std::atomic<bool> master_sleeping_{false};  // the master asleep on done_
  bool region_steal_ = true;
  std::atomic<const std::vector<Span>*> lookahead_{nullptr};
  std::mutex region_error_m_;
  std::exception_ptr region_error_;
};

// One pause of a spin-wait loop (the core's hint that this thread only waits).
inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

int default_thread_count();

// The CPUs this process may run on (its affinity mask), ascending.
std::vector<int> allowed_cpus();
// Sets the calling thread's affinity to `cpus` (empty: every allowed CPU); false when the OS refused.
bool set_thread_affinity(const std::vector<int>& cpus);

// Splits [0, n) into contiguous ranges of at least `grain` items, at most a few per thread,
// and calls fn(begin, end) for each, on the calling thread's pool (ThreadPool::current()).
template <typename F>
void parallel_for(int64_t n, int64_t grain, F&& fn) {
  if (n <= 0) return;
  ThreadPool& pool = ThreadPool::current();
  if (grain < 1) grain = 1;
  int64_t max_chunks = static_cast<int64_t>(pool.threads()) * 4;
  int64_t chunks = (n + grain - 1) / grain;
  if (chunks > max_chunks) chunks = max_chunks;
  if (chunks <= 1 || pool.threads() == 1) {
    fn(int64_t{0}, n);
    return;
  }
  pool.run(chunks, [&](int64_t c) {
    int64_t b = n * c / chunks, e = n * (c + 1) / chunks;
    if (b < e) fn(b, e);
  });
}

// Runs fn(i) for every i in [0, n), each exactly once, spread over the calling thread's pool: a
// split for streaming work (a weight stream read front to back, where each range's start is cold
// for the prefetchers). Each thread p of P takes its own contiguous share [n p / P, n (p + 1) / P)
// one item at a time, in order; a thread whose share is done steals the back half of the largest
// share left and goes on through it in order. So every thread reads one long stream (two or three
// after steals) instead of ~4 interleaved chunks, and the threads still finish within an item of
// each other. Nested in a chunk (runs_inline()): i in order on the calling thread.
template <typename F>
void steal_for(int64_t n, F&& fn) {
  if (n <= 0) return;
  ThreadPool& pool = ThreadPool::current();
  const int P = pool.threads();
  if (P == 1 || n == 1 || pool.runs_inline()) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  // per share: front (next item) in the low 32 bits, back (one past its last item) in the high 32
  struct alignas(64) Share {
    std::atomic<uint64_t> fb;
  };
  static_assert(sizeof(Share) == 64, "one share per cache line");
  constexpr int kMaxShares = 64;
  const int S = P < kMaxShares ? P : kMaxShares;
  Share shares[kMaxShares];
  auto pack = [](uint64_t f, uint64_t b) { return b << 32 | f; };
  for (int p = 0; p < S; ++p)
    shares[p].fb.store(pack(static_cast<uint64_t>(n * p / S), static_cast<uint64_t>(n * (p + 1) / S)), std::memory_order_relaxed);
  pool.run(S, [&](int64_t p) {
    Share* own = &shares[p];
    for (;;) {
      // own share, front to back
      for (uint64_t v = own->fb.load(std::memory_order_acquire);;) {
        const uint64_t f = v & 0xffffffffu, b = v >> 32;
        if (f >= b) break;
        if (own->fb.compare_exchange_weak(v, pack(f + 1, b), std::memory_order_acq_rel, std::memory_order_acquire))
          fn(static_cast<int64_t>(f)), v = own->fb.load(std::memory_order_acquire);
      }
      // steal the back half of the largest share left
      int victim = -1;
      uint64_t most = 0;
      for (int q = 0; q < S; ++q) {
        const uint64_t v = shares[q].fb.load(std::memory_order_acquire), f = v & 0xffffffffu, b = v >> 32;
        if (b > f && b - f > most) most = b - f, victim = q;
      }
      if (victim < 0) return;
      uint64_t v = shares[victim].fb.load(std::memory_order_acquire);
      const uint64_t f = v & 0xffffffffu, b = v >> 32;
      if (f >= b) continue;
      const uint64_t mid = f + (b - f) / 2;  // the victim keeps [f, mid) (mid == f: the last item goes)
      if (!shares[victim].fb.compare_exchange_strong(v, pack(f, mid), std::memory_order_acq_rel, std::memory_order_acquire))
        continue;
      own->fb.store(pack(mid, b), std::memory_order_release);  // (only its owner moves a share's front)
    }
  });
}

}  // namespace lc::cpu
