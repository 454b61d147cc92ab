// CUDA launchers of the expert-parallel dispatch and combine (contract, slot and flag protocol:
// native/cpu/ep.h). Plain C++ (no CUDA headers): included by native/ops/ep.cc.
//
// The single-kernel peer-pointer form: a rank's dispatch kernel writes its tokens straight into
// the receivers' slots (peer pointers), releases each receiver's ready flag, and in the same
// launch (`wait`) acquires its own ready flags from every home rank -- a bounded spin that also
// watches the abort word; a rank's combine kernel releases its "partials ready" flag in every home
// (`signal`), and a home's combine kernel then acquires those of every rank (`wait`, every block)
// and sums the partial rows in rank order. A launch uses at most `blocks` blocks (a fixed budget:
// the dense branch keeps the other SMs); nothing waits on the host, so a step is graph-capturable.
// Each phase is optional (null flags / t = 0): the CUDA emulator, which runs one stream's queue at
// a time, launches the same kernels phase by phase (send; wait; signal; wait + sum) with events
// between them.
//
// The abort word (int32 on any device the kernels reach; null: none) makes a failed step end
// without hanging or reading garbage: a dispatch that overflows a slot, or is told to fail
// (`fail`: the test hook of a failing rank), raises it and sends padding only; a wait that times
// out raises it with its reason (cpu::ep_wait_failure); a dispatch or combine that finds it raised
// does nothing more (combine writes zeros); every wait gives up at once. The host reads it at the
// end of the step and lowers it and the flags.
#pragma once
#include <cstdint>

namespace lc::gpu {

// The most ranks a launch addresses (the slot pointers travel as kernel parameters).
constexpr int64_t kEpMaxRanks = 64;

// x: f32 rows, or with an FP8 payload (scale non-null) e4m3 bytes (cpu::EpSlot).
struct EpSlots {
  int32_t* count[kEpMaxRanks];
  void* x[kEpMaxRanks];
  int32_t* idx[kEpMaxRanks];
  float* w[kEpMaxRanks];
  float* scale[kEpMaxRanks];
};

// Flag pointers (int32, any device the launch reaches); null entries are skipped.
struct EpFlags {
  int32_t* f[kEpMaxRanks];
};

struct EpPartials {
  const float* rows[kEpMaxRanks];
};

// A rank's wait for its own flags (cpu::ep_wait): flags[0..n) in its memory, peer[i] the rank
// that raises flags[i]; on failure the receive rows are padded (cpu::ep_pad_rows; pad_idx null:
// nothing to pad). flags null: no wait.
struct EpWait {
  int32_t* flags = nullptr;
  int64_t n = 0;
  int32_t peer[kEpMaxRanks] = {};
  int32_t rank = 0, kind = 0;
  int64_t timeout_ns = 0;
  int64_t pad_rows = 0, k = 0, per_rank = 0, pad_counts = 0;
  int32_t* pad_idx = nullptr;
  float* pad_w = nullptr;
  int32_t* counts = nullptr;
  int32_t* counter = nullptr;  // combine: blocks that finished (the last lowers the flags and this)
  // An FP8 payload: once every flag is up, dx f32 [drows, dh] = dq e4m3 x dscale (cpu::ep_decode_fp8).
  const uint8_t* dq = nullptr;
  const float* dscale = nullptr;
  float* dx = nullptr;
  int64_t drows = 0, dh = 0;
};

// cpu::ep_dispatch (t > 0: this rank is a home), destinations spread over at most `blocks` blocks,
// releasing ready.f[d] after destination d's slot; then, in the same launch, `wait` (block 0).
// A kernel cannot raise: an id outside [0, n_experts) is treated as a zero expert (it goes
// nowhere), and when more than `capacity` tokens go to a rank its count holds how many did and the
// rows past capacity are not written (their row_of entries are >= capacity, which ep_combine
// skips) and it raises `abort`.
void ep_dispatch(int64_t t, int64_t k, int64_t h, const float* u, const int32_t* idx, const float* w, int64_t n_routed,
                 int64_t per_rank, int64_t ranks, int64_t capacity, const EpSlots& slots, int32_t* row_of, int32_t* abort,
                 bool fail, const EpFlags& ready, const EpWait& wait, int64_t blocks, void* stream);

// cpu::ep_combine over at most `blocks` blocks: first releases signal.f[0..n_signal) (this rank's
// partials are ready: the stream's earlier work), then `wait` (every block acquires the flags; the
// last block to finish lowers them, using the int32 wait.flags[wait.n] as its counter), then, when
// t > 0, adds the partial rows in rank order and the zero-expert term. row_of entries outside
// [0, capacity) and ids outside [0, n_experts) contribute nothing; with `abort` raised, out is
// zeros.
void ep_combine(int64_t t, int64_t k, int64_t h, const float* u, const int32_t* idx, const float* w, int64_t n_routed,
                int64_t n_experts, const int32_t* row_of, int64_t ranks, int64_t capacity, const EpPartials& partials, float* out,
                int32_t* abort, const EpFlags& signal, int64_t n_signal, const EpWait& wait, int64_t blocks, void* stream);

}  // namespace lc::gpu
