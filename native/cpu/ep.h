// Expert parallelism between ranks: the dispatch and combine halves of the MoE all-to-all (the CPU
// twin and oracle of the device kernels of cuda/ep.cu; DESIGN "Multi-device", issue 14). Plain
// C++: raw pointers, no allocation, no throw.
//
// Ranks own contiguous blocks of `per_rank` routed experts: expert e lives on rank e / per_rank as
// its local expert e % per_rank. A source (home) rank's token goes to a destination rank once
// when it chose at least one of that rank's experts, whatever their number; zero experts
// (e >= n_routed) never leave the home rank. Each destination has one static slot per source
// rank, `capacity` rows deep:
//   count            int32: rows written (the tokens that chose the rank, in ascending token order)
//   x     [cap, h]   f32: the token's MoE input u
//   idx   [cap, k]   int32: per top-k slot the local expert id, or `per_rank` (a local zero expert
//                    with weight 0: "not this rank's") for slots of other ranks and zero experts
//   w     [cap, k]   f32: the routing weight of the slot, 0 where idx is `per_rank`
// Rows count..cap-1 are padding (x 0, idx per_rank, w 0), so the receiver's grouped expert GEMM
// (the moe op over its local experts, n_experts = per_rank + 1) can run on the whole slot without
// reading the count: the shape is static, as a captured graph needs. The home rank keeps its own
// record of where each token went, row_of [t, ranks] (the row in rank d's slot, -1 when t did not
// go to d): combine reads rank d's partial sums (its moe output over the slot, pushed back or read
// through a peer pointer) at those rows.
//
// Flags (the peer-pointer protocol; the group orders ranks by these, not by stream events): the
// sender writes a slot's payload and count, then a ready flag (int32 in the receiver's memory)
// with release semantics (ep_signal); the receiver waits with acquire loads (ep_wait) until every
// home rank's flag is up, then lowers them for the next use. Combine likewise: a rank raises each
// home's "partials ready" flag after its expert GEMM; the home waits for all of them, then sums.
// Flags are lowered only by their owner after it consumed them, and a sender reuses a slot only
// after the round trip through combine, so a flag never carries over into the next layer or step
// (also not in a replayed graph); after a failed step the group clears every flag. A wait is
// bounded (a time budget) and gives up when the abort word is raised, so no rank spins forever on
// a dead peer. The abort word holds the first failure's reason (compare-and-swap from 0).
#pragma once
#include <cstdint>

#include "host_device.h"

namespace lc::cpu {

// One destination rank's receive slot for this source rank.
// With an FP8 payload (`scale` non-null) x holds e4m3 bytes [cap, h] instead of f32, and scale
// f32 [cap, ceil(h / 128)] one scale per 1 x 128 group (quantize_fp8_group, SPEC 7.3: DeepEP's
// low-latency format); padding rows are bytes 0 with scale 0. The receiver decodes the rows to f32
// (ep_decode_fp8) before its expert GEMM.
struct EpSlot {
  int32_t* count = nullptr;
  void* x = nullptr;
  int32_t* idx = nullptr;
  float* w = nullptr;
  float* scale = nullptr;
};

struct EpRouteCheck {
  int64_t bad_index = -1;  // flat index t * k + j of the first idx outside [0, n_experts)
  int64_t full_rank = -1;  // a destination whose slot would overflow
  int64_t needed = 0;      // ... with this many rows
};

// Checks a source rank's routing (idx int32 [t, k]) before anything moves: every id in
// [0, n_experts), and no destination rank chosen by more than `capacity` of the t tokens (the
// counts are computed before any payload is written).
EpRouteCheck ep_check_routing(int64_t t, int64_t k, const int32_t* idx, int64_t n_routed, int64_t n_experts, int64_t per_rank,
                              int64_t ranks, int64_t capacity);

// Sends the source rank's t tokens (u f32 [t, h], idx int32 / w f32 [t, k]) to the slots of the
// `ranks` destinations (slots[d]) and writes row_of int32 [t, ranks]. On an index or capacity
// error (ep_check_routing) nothing is written and the result says which.
EpRouteCheck ep_dispatch(int64_t t, int64_t k, int64_t h, const float* u, const int32_t* idx, const float* w, int64_t n_routed,
                         int64_t n_experts, int64_t per_rank, int64_t ranks, int64_t capacity, const EpSlot* slots,
                         int32_t* row_of);

// What a dispatch that sends nothing writes (a failed step: the abort flag of cuda/ep.h): every
// slot padding only (count 0, x 0, idx per_rank, w 0) and row_of all -1, so that the receivers'
// grouped GEMM still reads well-formed slots.
void ep_dispatch_nothing(int64_t t, int64_t k, int64_t h, int64_t per_rank, int64_t ranks, int64_t capacity, const EpSlot* slots,
                         int32_t* row_of);

// The home rank's MoE output: out[t] = sum over destination ranks d = 0, 1, ... (in that order) of
// partials[d][row_of[t, d]] (f32 [capacity, h] each; ranks with row_of -1 skipped), then
// + (sum of the weights of t's zero experts, in ascending (expert id, slot) order) * u[t] -- the
// order the single-device moe kernel uses, so results do not depend on arrival order. A row_of
// entry outside [-1, capacity) or an idx outside [0, n_experts) is reported and out is then not
// written. out must not overlap u or partials.
struct EpCombineCheck {
  int64_t bad_row = -1;    // flat index into row_of of an entry outside [-1, capacity)
  int64_t bad_index = -1;  // flat index into idx of an id outside [0, n_experts)
};
EpCombineCheck ep_combine(int64_t t, int64_t k, int64_t h, const float* u, const int32_t* idx, const float* w, int64_t n_routed,
                          int64_t n_experts, const int32_t* row_of, int64_t ranks, int64_t capacity, const float* const* partials,
                          float* out);

// The abort word: 0 while the step runs; kEpAbortFailed from a dispatch that failed (a slot
// overflow, an injected failure); ep_wait_failure(kind, rank, peer) from a wait that timed out
// (kind 1: rank waited for home `peer`'s dispatch; 2: home `rank` waited for rank `peer`'s
// partials). The first reason raised stays (ep_raise).
constexpr int32_t kEpAbortFailed = 1;
LC_HD constexpr int32_t ep_wait_failure(int32_t kind, int64_t rank, int64_t peer) {
  return static_cast<int32_t>((1 << 30) | (kind << 16) | (rank << 8) | peer);
}
// Raises the abort word with `code` unless it is raised already; whether this call raised it.
bool ep_raise(int32_t* abort, int32_t code);
// Release store of 1 (the sender's last write: everything it wrote before is visible to the
// receiver that acquires the flag).
void ep_signal(int32_t* flag);
// Waits until every flags[i] (i < n) is nonzero (acquire loads), then lowers them all. Gives up
// when *abort is nonzero (abort may be null) or timeout_ns passed since the call; returns the index
// of the flag it gave up on, -1 when all were seen. Flags it saw before giving up stay raised.
int64_t ep_wait(int32_t* flags, int64_t n, const int32_t* abort, int64_t timeout_ns);
// What a receiver whose wait failed leaves in its slots (n rows of k ids): every row padding
// (idx per_rank, w 0) and counts 0, so that its expert GEMM reads well-formed slots whatever a
// late sender wrote.
void ep_pad_rows(int64_t n, int64_t k, int64_t per_rank, int32_t* idx, float* w, int64_t n_counts, int32_t* counts);

// out f32 [n, h] = the FP8 rows q [n, h] times their 1 x 128 group scales [n, ceil(h / 128)]
// (dequantize_fp8_group: one f32 rounding).
void ep_decode_fp8(int64_t n, int64_t h, const uint8_t* q, const float* scale, float* out);

}  // namespace lc::cpu
