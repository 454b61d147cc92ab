// Expert-parallel dispatch and combine between CPU ranks (see ep.h for the slot protocol).
#include "ep.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <thread>

#include "quant.h"
#include "threadpool.h"
#include "zero_experts.h"

namespace lc::cpu {

namespace {

// Whether token row `ix` (k expert ids) chose at least one routed expert of rank d.
bool chooses_rank(const int32_t* ix, int64_t k, int64_t n_routed, int64_t per_rank, int64_t d) {
  for (int64_t j = 0; j < k; ++j)
    if (ix[j] < n_routed && ix[j] / per_rank == d) return true;
  return false;
}

}  // namespace

EpRouteCheck ep_check_routing(int64_t t, int64_t k, const int32_t* idx, int64_t n_routed, int64_t n_experts, int64_t per_rank,
                              int64_t ranks, int64_t capacity) {
  EpRouteCheck r;
  for (int64_t i = 0; i < t * k; ++i)
    if (idx[i] < 0 || idx[i] >= n_experts) {
      r.bad_index = i;
      return r;
    }
  // Counts before payload: an overflow is found before anything is written.
  for (int64_t d = 0; d < ranks; ++d) {
    int64_t n = 0;
    for (int64_t i = 0; i < t; ++i) n += chooses_rank(idx + i * k, k, n_routed, per_rank, d);
    if (n > capacity) {
      r.full_rank = d;
      r.needed = n;
      return r;
    }
  }
  return r;
}

EpRouteCheck ep_dispatch(int64_t t, int64_t k, int64_t h, const float* u, const int32_t* idx, const float* w, int64_t n_routed,
                         int64_t n_experts, int64_t per_rank, int64_t ranks, int64_t capacity, const EpSlot* slots,
                         int32_t* row_of) {
  const EpRouteCheck r = ep_check_routing(t, k, idx, n_routed, n_experts, per_rank, ranks, capacity);
  if (r.bad_index >= 0 || r.full_rank >= 0) return r;
  const int64_t groups = (h + kFp8Block - 1) / kFp8Block;
  parallel_for(ranks, 1, [&](int64_t d0, int64_t d1) {
    for (int64_t d = d0; d < d1; ++d) {
      const size_t xb = slots[d].scale ? 1 : sizeof(float);
      const EpSlot& s = slots[d];
      int64_t row = 0;
      for (int64_t i = 0; i < t; ++i) {
        const int32_t* ix = idx + i * k;
        const bool goes = chooses_rank(ix, k, n_routed, per_rank, d);
        row_of[i * ranks + d] = goes ? static_cast<int32_t>(row) : -1;
        if (!goes) continue;
        if (s.scale)
          for (int64_t g = 0; g * kFp8Block < h; ++g)
            s.scale[row * groups + g] = quantize_fp8_group(std::min(kFp8Block, h - g * kFp8Block), u + i * h + g * kFp8Block,
                                                           static_cast<uint8_t*>(s.x) + row * h + g * kFp8Block);
        else
          std::memcpy(static_cast<float*>(s.x) + row * h, u + i * h, sizeof(float) * static_cast<size_t>(h));
        for (int64_t j = 0; j < k; ++j) {
          const bool mine = ix[j] < n_routed && ix[j] / per_rank == d;
          s.idx[row * k + j] = static_cast<int32_t>(mine ? ix[j] - d * per_rank : per_rank);
          s.w[row * k + j] = mine ? w[i * k + j] : 0.0f;
        }
        ++row;
      }
      *s.count = static_cast<int32_t>(row);
      for (; row < capacity; ++row) {
        std::memset(static_cast<char*>(s.x) + row * h * xb, 0, xb * static_cast<size_t>(h));
        if (s.scale) std::fill_n(s.scale + row * groups, groups, 0.0f);
        for (int64_t j = 0; j < k; ++j) {
          s.idx[row * k + j] = static_cast<int32_t>(per_rank);
          s.w[row * k + j] = 0.0f;
        }
      }
    }
  });
  return r;
}

void ep_dispatch_nothing(int64_t t, int64_t k, int64_t h, int64_t per_rank, int64_t ranks, int64_t capacity, const EpSlot* slots,
                         int32_t* row_of) {
  for (int64_t i = 0; i < t * ranks; ++i) row_of[i] = -1;
  for (int64_t d = 0; d < ranks; ++d) {
    const EpSlot& s = slots[d];
    *s.count = 0;
    std::memset(s.x, 0, (s.scale ? 1 : sizeof(float)) * static_cast<size_t>(capacity * h));
    if (s.scale) std::fill_n(s.scale, capacity * ((h + kFp8Block - 1) / kFp8Block), 0.0f);
    for (int64_t j = 0; j < capacity * k; ++j) {
      s.idx[j] = static_cast<int32_t>(per_rank);
      s.w[j] = 0.0f;
    }
  }
}

EpCombineCheck ep_combine(int64_t t, int64_t k, int64_t h, const float* u, const int32_t* idx, const float* w, int64_t n_routed,
                          int64_t n_experts, const int32_t* row_of, int64_t ranks, int64_t capacity, const float* const* partials,
                          float* out) {
  EpCombineCheck r;
  for (int64_t i = 0; i < t * ranks; ++i)
    if (row_of[i] < -1 || row_of[i] >= capacity) {
      r.bad_row = i;
      return r;
    }
  for (int64_t i = 0; i < t * k; ++i)
    if (idx[i] < 0 || idx[i] >= n_experts) {
      r.bad_index = i;
      return r;
    }
  // Columns split over threads; within a column block, ranks in ascending order, so each out[t, c]
  // receives its partials in the same order whatever the thread count.
  parallel_for(h, 64, [&](int64_t c0, int64_t c1) {
    for (int64_t i = 0; i < t; ++i) {
      float* o = out + i * h;
      for (int64_t c = c0; c < c1; ++c) o[c] = 0.0f;
      for (int64_t d = 0; d < ranks; ++d) {
        const int32_t row = row_of[i * ranks + d];
        if (row < 0) continue;
        const float* y = partials[d] + row * h;
        for (int64_t c = c0; c < c1; ++c) o[c] += y[c];
      }
    }
    // Zero experts last, as the single-device kernel adds them: the weights summed in ascending
    // (expert id, slot) order, then one multiply-add of u.
    for (int64_t i = 0; i < t; ++i) {
      float z;
      if (!zero_expert_weight(idx + i * k, w + i * k, k, n_routed, n_experts, &z)) continue;
      const float* ui = u + i * h;
      float* o = out + i * h;
      for (int64_t c = c0; c < c1; ++c) o[c] += z * ui[c];
    }
  });
  return r;
}

void ep_decode_fp8(int64_t n, int64_t h, const uint8_t* q, const float* scale, float* out) {
  const int64_t groups = (h + kFp8Block - 1) / kFp8Block;
  parallel_for(n, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t g = 0; g < groups; ++g)
        dequantize_fp8_group(std::min(kFp8Block, h - g * kFp8Block), q + r * h + g * kFp8Block, scale[r * groups + g],
                             out + r * h + g * kFp8Block);
  });
}

bool ep_raise(int32_t* abort, int32_t code) {
  int32_t zero = 0;
  return __atomic_compare_exchange_n(abort, &zero, code, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
}

void ep_signal(int32_t* flag) { __atomic_store_n(flag, 1, __ATOMIC_RELEASE); }

int64_t ep_wait(int32_t* flags, int64_t n, const int32_t* abort, int64_t timeout_ns) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::nanoseconds(timeout_ns);
  for (int64_t i = 0; i < n; ++i)
    for (int spins = 0; __atomic_load_n(flags + i, __ATOMIC_ACQUIRE) == 0; ++spins) {
      if (abort && __atomic_load_n(abort, __ATOMIC_ACQUIRE) != 0) return i;
      if (std::chrono::steady_clock::now() >= until) return i;
      // The peer is a stream thread of this process: let it run (the cores are shared).
      if (spins > 64) std::this_thread::yield();
    }
  for (int64_t i = 0; i < n; ++i) __atomic_store_n(flags + i, 0, __ATOMIC_RELAXED);  // reused only after combine
  return -1;
}

void ep_pad_rows(int64_t n, int64_t k, int64_t per_rank, int32_t* idx, float* w, int64_t n_counts, int32_t* counts) {
  for (int64_t j = 0; j < n * k; ++j) {
    idx[j] = static_cast<int32_t>(per_rank);
    w[j] = 0.0f;
  }
  for (int64_t j = 0; j < n_counts; ++j) counts[j] = 0;
}

}  // namespace lc::cpu
