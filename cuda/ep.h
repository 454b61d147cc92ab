// CUDA launchers of the expert-parallel dispatch and combine, in the split send / receive form
// (contract and slot protocol: native/cpu/ep.h). Plain C++ (no CUDA headers): included by
// native/ops/ep.cc. Ranks are ordered by the flags of native/cpu/ep.h: a dispatch releases each
// destination's ready flag after its payload, ep_wait acquires them (a bounded spin that also
// watches the abort word), ep_signal releases the combine's "partials ready" flags.
//
// The abort flag (int32 on any device the kernels reach; null: none) makes a failed step end
// without hanging or reading garbage: a dispatch that overflows a slot raises it, a dispatch or
// combine that finds it raised does nothing more (combine writes zeros), and the host reads it at
// the end of the step (and lowers it). A dispatch that finds it raised, or is told to fail (`fail`:
// the test hook of a failing rank, which raises it), sends nothing: cpu::ep_dispatch_nothing. Ranks never wait on a flag: a receiver is ordered behind its
// senders by stream events, and a sender that failed still finishes its kernel.
#pragma once
#include <cstdint>

namespace lc::gpu {

// The most ranks a launch addresses (the slot pointers travel as kernel parameters).
constexpr int64_t kEpMaxRanks = 64;

struct EpSlots {
  int32_t* count[kEpMaxRanks];
  float* x[kEpMaxRanks];
  int32_t* idx[kEpMaxRanks];
  float* w[kEpMaxRanks];
};

// Flag pointers (int32, any device the launch reaches); null entries are skipped.
struct EpFlags {
  int32_t* f[kEpMaxRanks];
};
// The peer rank behind each flag of a wait (for the abort word's reason).
struct EpPeers {
  int32_t rank[kEpMaxRanks];
};

struct EpPartials {
  const float* rows[kEpMaxRanks];
};

// cpu::ep_dispatch, one block per destination rank. A kernel cannot raise: an id outside
// [0, n_experts) is treated as a zero expert (it goes nowhere), and when more than `capacity`
// tokens go to a rank its count holds how many did and the rows past capacity are not written
// (their row_of entries are >= capacity, which ep_combine skips) and it raises `abort`.
void ep_dispatch(int64_t t, int64_t k, int64_t h, const float* u, const int32_t* idx, const float* w, int64_t n_routed,
                 int64_t per_rank, int64_t ranks, int64_t capacity, const EpSlots& slots, int32_t* row_of, int32_t* abort,
                 bool fail, const EpFlags& ready, void* stream);

// cpu::ep_wait on the stream: one thread acquires flags[0..n) in turn, giving up when the abort
// word is raised or timeout_ns passed (%globaltimer); on timeout it raises the abort word with
// cpu::ep_wait_failure(kind, rank, peers[i]). On success the flags are lowered; on failure the
// receiver's rows are padded (cpu::ep_pad_rows; pad_idx null: nothing to pad).
void ep_wait(int32_t* flags, int64_t n, const EpPeers& peers, int32_t rank, int32_t kind, int32_t* abort, int64_t timeout_ns,
             int64_t pad_rows, int64_t k, int64_t per_rank, int32_t* pad_idx, float* pad_w, int64_t pad_counts,
             int32_t* counts, void* stream);

// cpu::ep_signal on each of flags[0..n) (a system-scope fence, then the release stores).
void ep_signal(const EpFlags& flags, int64_t n, void* stream);

// cpu::ep_combine: partial rows added in rank order, then the zero-expert term; row_of entries
// outside [0, capacity) and ids outside [0, n_experts) contribute nothing; with `abort` raised,
// out is zeros.
void ep_combine(int64_t t, int64_t k, int64_t h, const float* u, const int32_t* idx, const float* w, int64_t n_routed,
                int64_t n_experts, const int32_t* row_of, int64_t ranks, int64_t capacity, const EpPartials& partials, float* out,
                const int32_t* abort, void* stream);

}  // namespace lc::gpu
