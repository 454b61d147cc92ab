// CUDA launcher of the MoE router (contract: native/cpu/moe.h router_topk).
#pragma once
#include <cstdint>

namespace lc::gpu {

// cpu::router_topk on the GPU, one block per token: fp32 softmax (max-subtracted, f64 sum),
// score = p + bias (NaN -> -inf), k rounds of a block arg-max over (score desc, expert asc),
// weights p * scale, nffn = #{idx < n_routed} (nffn may be null). Requires 1 <= k <= e.
void router_topk(int64_t t, int64_t e, int64_t k, const float* logits, const float* bias, int64_t n_routed, float scale,
                 int32_t* idx, float* w, int32_t* nffn, void* stream);

}  // namespace lc::gpu
