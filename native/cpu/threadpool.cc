// The CPU thread pool every kernel uses through parallel_for: a fixed set of workers, work split by
// ranges, safe to call from several stream threads at once.
#include "threadpool.h"

#include <sched.h>

namespace lc::cpu {

int default_thread_count() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
  unsigned h = std::thread::hardware_concurrency();
  return h ? static_cast<int>(h) : 1;
}

ThreadPool& ThreadPool::global() {
  // Leaked on purpose: joining threads from a static destructor at process exit can deadlock
  // when Node tears down while a stream worker still holds a job.
  static ThreadPool* pool = new ThreadPool();
  return *pool;
}

ThreadPool::ThreadPool() { start(default_thread_count()); }

ThreadPool::~ThreadPool() { stop(); }

void ThreadPool::start(int n) {
  nthreads_ = n < 1 ? 1 : n;
  stopping_ = false;
  for (int i = 1; i < nthreads_; ++i) workers_.emplace_back([this] { worker(); });
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
    job.fn(c);
    if (job.done.fetch_add(1) + 1 == job.nchunks) {
      std::lock_guard<std::mutex> lk(job.m);
      job.cv.notify_all();
    }
  }
}

void ThreadPool::worker() {
  for (;;) {
    std::shared_ptr<Job> job;
    {
      std::unique_lock<std::mutex> lk(m_);
      cv_.wait(lk, [this] { return stopping_ || !queue_.empty(); });
      if (stopping_) return;
      job = queue_.front();
      // Leave the job queued while chunks remain so other idle workers can join in.
      if (job->next.load() >= job->nchunks - 1) queue_.pop_front();
    }
    work_on(*job);
  }
}

void ThreadPool::run(int64_t nchunks, const std::function<void(int64_t)>& fn) {
  std::shared_lock<std::shared_mutex> resize(resize_m_);  // no resize while a job runs
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
  std::lock_guard<std::mutex> lk(m_);
  for (auto it = queue_.begin(); it != queue_.end(); ++it)
    if (*it == job) {
      queue_.erase(it);
      break;
    }
}

}  // namespace lc::cpu
