// The CPU thread pool every kernel shares. parallel_for may be called from several threads at
// once (each CPU stream runs on its own worker), so two streams' kernels really overlap: their
// chunks interleave in one queue and every caller works on its own job while it waits.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
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

  int threads() const { return nthreads_; }
  // n >= 1; n - 1 workers plus the calling thread. Waits for running jobs to finish.
  void set_threads(int n);

  // Runs fn(chunk) for chunk in [0, nchunks), spread over the pool; returns when all are done.
  void run(int64_t nchunks, const std::function<void(int64_t)>& fn);

  ~ThreadPool();

 private:
  struct Job {
    std::function<void(int64_t)> fn;
    int64_t nchunks = 0;
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
    std::mutex m;
    std::condition_variable cv;
  };
  ThreadPool();
  void start(int n);
  void stop();
  void worker();
  static void work_on(Job& job);

  int nthreads_ = 1;
  std::vector<std::thread> workers_;
  std::deque<std::shared_ptr<Job>> queue_;
  std::mutex m_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::shared_mutex resize_m_;  // shared by run(), exclusive for set_threads()
};

int default_thread_count();

// Splits [0, n) into contiguous ranges of at least `grain` items, at most a few per thread,
// and calls fn(begin, end) for each.
template <typename F>
void parallel_for(int64_t n, int64_t grain, F&& fn) {
  if (n <= 0) return;
  ThreadPool& pool = ThreadPool::global();
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

}  // namespace lc::cpu
