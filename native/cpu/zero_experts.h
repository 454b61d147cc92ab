// The zero-expert term of one MoE token, shared by the CPU MoE (moe.cc), the CPU expert-parallel
// combine (ep.cc) and its CUDA kernel (cuda/ep.cu): every path sums the weights in the same order,
// so their results agree to the bit (SPEC 4: zero experts are added last).
#pragma once
#include <cstdint>

#include "host_device.h"

namespace lc::cpu {

// The sum of the weights wi[j] of the token's slots j < k whose expert id ix[j] lies in
// [first, end) (the zero experts), added in ascending (expert id, slot) order; false when the
// token chose none. k is small (the top-k), so each step scans the slots for the next one.
LC_HD bool zero_expert_weight(const int32_t* ix, const float* wi, int64_t k, int64_t first, int64_t end, float* sum) {
  float z = 0;
  bool any = false;
  int64_t prev_e = -1, prev_j = -1;
  for (;;) {
    int64_t bj = -1;
    for (int64_t j = 0; j < k; ++j) {
      const int64_t e = ix[j];
      if (e < first || e >= end || e < prev_e || (e == prev_e && j <= prev_j)) continue;
      if (bj < 0 || e < ix[bj]) bj = j;
    }
    if (bj < 0) break;
    z += wi[bj];
    any = true;
    prev_e = ix[bj];
    prev_j = bj;
  }
  *sum = z;
  return any;
}

}  // namespace lc::cpu
