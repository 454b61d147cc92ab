// Opt-in counters behind the per-node profile of a replayed CPU step (Graph::Plan, device.cc;
// native.graphProfile, bench/step-profile.mjs). Off by default: every hook is one relaxed load
// of a flag. While on, kernels report the weight bytes they stream and the region's master the
// time it waits at each op's join (the other threads' last chunks) and the jobs it publishes.
#pragma once
#include <atomic>
#include <cstdint>

namespace lc::cpu::profile {

inline std::atomic<bool> g_on{false};
// busy_ns: thread time inside region jobs' chunks, summed over the threads (master and workers).
inline std::atomic<int64_t> g_weight_bytes{0}, g_wait_ns{0}, g_jobs{0}, g_busy_ns{0};

inline bool on() { return g_on.load(std::memory_order_relaxed); }
inline void add_weight_bytes(int64_t b) {
  if (on()) g_weight_bytes.fetch_add(b, std::memory_order_relaxed);
}

struct Snapshot {
  int64_t weight_bytes, wait_ns, jobs, busy_ns;
};
inline Snapshot snapshot() {
  return {g_weight_bytes.load(std::memory_order_relaxed), g_wait_ns.load(std::memory_order_relaxed),
          g_jobs.load(std::memory_order_relaxed), g_busy_ns.load(std::memory_order_relaxed)};
}

}  // namespace lc::cpu::profile
