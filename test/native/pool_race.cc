// native/cpu/threadpool.cc under ThreadSanitizer: parallel regions (the lock-free job slot, the
// spin-then-sleep waits) against plain jobs, with results checked exactly: many jobs of random
// chunk counts in a region (each chunk writes its own cells, the master reads them after the join),
// pauses long enough that the workers fall asleep between jobs, a chunk that throws (rethrown on
// the master once every chunk finished, the region usable after it), a parallel_for nested in a
// chunk, plain jobs from another thread while a region runs, and pools of their own (Use); two CPU
// ranks' pools, each bound to a CPU (ThreadPool(n, cpus)), running regions at the same time.
#include <atomic>
#include <chrono>
#include <cstdio>
#include <stdexcept>
#include <thread>
#include <vector>

#include "cpu/threadpool.h"

using lc::cpu::parallel_for;
using lc::cpu::ThreadPool;

static std::atomic<int> failures{0};  // (CHECK may fail on several threads)
#define CHECK(c, ...)                        \
  do {                                       \
    if (!(c)) {                              \
      std::fprintf(stderr, "FAIL %s: ", #c); \
      std::fprintf(stderr, __VA_ARGS__);     \
      std::fprintf(stderr, "\n");            \
      ++failures;                            \
    }                                        \
  } while (0)

// Each element i of [0, n) written once with f(i); returns whether all were.
static bool fill_and_check(int64_t n, int64_t grain, uint32_t salt) {
  std::vector<uint32_t> v(static_cast<size_t>(n), 0);
  parallel_for(n, grain, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) v[i] += static_cast<uint32_t>(i) * 2654435761u + salt;
  });
  for (int64_t i = 0; i < n; ++i)
    if (v[i] != static_cast<uint32_t>(i) * 2654435761u + salt) return false;
  return true;
}

static void region_jobs(ThreadPool& pool, int jobs, bool pauses) {
  ThreadPool::Use use(pool);
  ThreadPool::Region region(pool);
  uint32_t seed = 12345;
  for (int j = 0; j < jobs; ++j) {
    seed = seed * 1664525u + 1013904223u;
    const int64_t n = 1 + seed % 997, grain = 1 + (seed >> 12) % 7;
    CHECK(fill_and_check(n, grain, seed), "region job %d (n %lld)", j, static_cast<long long>(n));
    if (pauses && j % 8 == 0) std::this_thread::sleep_for(std::chrono::milliseconds(2));  // the workers sleep
  }
  // a chunk that throws: rethrown here after every chunk ran; the region goes on
  std::atomic<int> ran{0};
  bool thrown = false;
  try {
    pool.run(16, [&](int64_t c) {
      ran.fetch_add(1);
      if (c == 5) throw std::runtime_error("chunk 5");
    });
  } catch (const std::runtime_error& e) {
    thrown = std::string(e.what()) == "chunk 5";
  }
  CHECK(thrown, "the chunk's exception reaches the master");
  CHECK(ran.load() == 16, "every chunk ran (%d)", ran.load());
  CHECK(fill_and_check(500, 1, 7), "a job after the failed one");
  // a parallel_for nested in a chunk (on the master or a worker) runs its chunks and returns
  std::vector<int> sums(8, 0);
  pool.run(8, [&](int64_t c) {
    std::vector<int> part(64, 0);
    parallel_for(64, 1, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) part[i] = static_cast<int>(i + c);
    });
    int s = 0;
    for (int x : part) s += x;
    sums[c] = s;
  });
  for (int c = 0; c < 8; ++c) CHECK(sums[c] == 2016 + 64 * c, "nested sum %d = %d", c, sums[c]);
}

int main() {
  for (int threads : {1, 2, 3, 5}) {
    ThreadPool pool(threads);
    region_jobs(pool, 2000, false);
    region_jobs(pool, 64, true);
    // plain jobs from another thread while this one runs a region: both finish, both correct
    std::atomic<bool> plain_ok{true};
    std::thread other([&] {
      ThreadPool::Use use(pool);
      for (int j = 0; j < 200; ++j)
        if (!fill_and_check(300 + j, 1, j)) plain_ok = false;
    });
    region_jobs(pool, 500, false);
    other.join();
    CHECK(plain_ok.load(), "plain jobs beside a region (%d threads)", threads);
    // regions one after another, and a resize between them
    for (int r = 0; r < 20; ++r) region_jobs(pool, 10, false);
    pool.set_threads(threads + 1);
    region_jobs(pool, 200, false);
  }
  // two CPU ranks: each its own pool bound to a CPU of this process, their regions concurrent
  {
    const std::vector<int> cpus = lc::cpu::allowed_cpus();
    CHECK(!cpus.empty(), "allowed_cpus() lists this process's CPUs");
    ThreadPool a(2, {cpus.front()}), b(3, {cpus.back()});
    CHECK(a.cpus() == std::vector<int>{cpus.front()}, "a pool keeps its CPUs");
    auto rank = [](ThreadPool& pool) {
      CHECK(pool.bind_calling_thread(), "the rank's thread binds to its pool's CPU");
      region_jobs(pool, 300, false);
      region_jobs(pool, 16, true);
    };
    std::thread ra([&] { rank(a); }), rb([&] { rank(b); });
    ra.join();
    rb.join();
    CHECK(lc::cpu::set_thread_affinity({}), "unbinding (every allowed CPU)");
  }
  if (failures) {
    std::fprintf(stderr, "pool_race: %d failure(s)\n", failures.load());
    return 1;
  }
  std::printf("pool_race: ok\n");
  return 0;
}
