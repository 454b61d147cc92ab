// CPU router (softmax + biased top-k over routed and zero-computation experts) and the grouped
// expert MoE with zero experts (SPEC 4.1, 4.2). Plain C++: raw pointers, no allocation, no throw.
#pragma once
#include <cstddef>
#include <cstdint>

#include "linear.h"

namespace lc::cpu {

// Per token t (logits [t, e] f32, bias [e] f32; e = routed + zero experts):
//   p = softmax(logits[t]) in fp32 (max-subtracted), score = p + bias,
//   idx[t, 0..k) = the k best scores in descending order (ties: lower expert index first; a NaN
//   score counts as -inf), w[t, j] = p[idx[t, j]] * scale (unbiased, not renormalised),
//   nffn[t] = #{j : idx[t, j] < n_routed}  (nffn may be null).
void router_topk(int64_t t, int64_t e, int64_t k, const float* logits, const float* bias, int64_t n_routed, float scale,
                 int32_t* idx, float* w, int32_t* nffn);

// The routed experts: gate[e], up[e] are [inter, h], down[e] is [h, inter], e < n_routed.
// perm (optional, act-order GPTQ experts): perm[e] null, or int32 [h] with values in [0, h): expert e's
// gate and up read the token's columns in that order (x[c] = u[t, perm[e][c]]), i.e. their weights'
// columns are sorted by quantization group (lib/int4.ts gptqActOrder).
struct MoeExperts {
  const WeightRef* gate = nullptr;
  const WeightRef* up = nullptr;
  const WeightRef* down = nullptr;
  const int32_t* const* perm = nullptr;
  int64_t n_routed = 0;
  int64_t inter = 0;
};

// Rows of gathered tokens processed per wave (bounds the workspace for long prefills).
int64_t moe_wave_rows(int64_t t, int64_t k);
// Bytes of workspace moe() needs (64-byte aligned pointer expected).
size_t moe_workspace_bytes(int64_t t, int64_t k, int64_t h, int64_t inter, int64_t n_routed);

// out[t] = sum_{j: idx<n_routed} w[t,j] * down(silu(gate(u[t])) * up(u[t]))
//        + (sum_{j: idx>=n_routed} w[t,j]) * u[t]
// u, out: f32 [t, h]; idx int32 / w f32 [t, k]. fp32 accumulation in a fixed order (ascending
// expert id per token, the zero-expert term last) that does not depend on the thread count.
// Every idx must be in [0, n_experts). Returns -1 on success, else the flat index (t * k + j) of
// the first out-of-range idx; out is then left untouched.
int64_t moe(int64_t t, int64_t k, int64_t h, const float* u, const int32_t* idx, const float* w, const MoeExperts& ex,
            int64_t n_experts, float* out, void* workspace, size_t workspace_bytes);

}  // namespace lc::cpu
