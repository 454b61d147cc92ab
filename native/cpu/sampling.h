// Token sampling from logits. The result of a row is a pure function of (logits row, params,
// seed, step, row index): no global RNG state, independent of thread count and ISA. Also the
// speculative-decoding ops: rejection sampling of deterministic drafts (sample_speculative) and
// the pick of the next draft (select_accepted).
#pragma once
#include <cstdint>
#include <cstring>

#include "host_device.h"

namespace lc::cpu {

struct SampleParams {
  float temperature = 1.0f;  // <= 0: greedy (argmax, ties -> lowest index)
  int64_t top_k = 0;         // 0 (or >= V): off
  float top_p = 1.0f;        // >= 1: off
  float min_p = 0.0f;        // <= 0: off
  uint64_t seed = 0;
  uint64_t step = 0;
};

// Workspace bytes sample() needs for `rows` rows of V logits.
int64_t sample_workspace_bytes(int64_t rows, int64_t V);

// ids[r] = a token drawn from logits[r, :] (f32 [rows, V]). See sampling.cc for the exact filter order.
void sample(int64_t rows, int64_t V, const float* logits, const SampleParams& p, int32_t* ids, void* workspace);

// ---- the counter-based RNG (shared with the CUDA sampler) ---------------------------------------

LC_HD uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// The uniform double in [0, 1) the sampler draws for (seed, step, row).
LC_HD double sample_uniform(uint64_t seed, uint64_t step, uint64_t row) {
  const uint64_t x = splitmix64(splitmix64(splitmix64(seed) ^ step) ^ row);
  return static_cast<double>(x >> 11) * (1.0 / 9007199254740992.0);
}

// ---- penalties and logit bias ---------------------------------------------------------------------
//
// penalize adjusts rows of logits in place before sampling. Row r has a history history[r, 0..H)
// of token ids (negative entries are padding and count for nothing): its first
// prompt_lengths[r] entries are the prompt, the rest the generated tokens (vLLM's split).
// params f32 [R, kPenaltyParams] = [repetition, presence, frequency]. For each token t:
//   repetition (HF / llama.cpp / vLLM): t anywhere in the history: x = x > 0 ? x / r : x * r;
//   presence, frequency (OpenAI, counted over the generated part only, c = occurrences of t there):
//     x = x - (presence * [c > 0] + frequency * c);
// then logit bias (OpenAI logit_bias): x += bias_values[r, j] for each j with bias_ids[r, j] >= 0
// (negative ids are padding; a repeated id adds each of its values, in order of j).
constexpr int kPenaltyParams = 3;

// The penalised logit of a token present in the history (`generated` of its occurrences in the
// generated part); one rounding per operation, never fused, so the CPU and CUDA agree bit for bit.
LC_HD float penalized_logit(float x, float repetition, float presence, float frequency, uint64_t generated) {
  if (repetition != 1.0f) x = x > 0.0f ? x / repetition : x * repetition;
  if (generated == 0) return x;
#ifdef __CUDA_ARCH__
  return __fsub_rn(x, __fadd_rn(presence, __fmul_rn(frequency, static_cast<float>(generated))));
#else
  const float f = frequency * static_cast<float>(generated);
  const float sub = presence + f;
  return x - sub;
#endif
}

// The rule above on the CPU, rows in parallel. logits f32 [R, V] (in place), history int32 [R, H],
// prompt_lengths int32 [R], params f32 [R, 3], bias_ids int32 [R, nb], bias_values f32 [R, nb].
// Checks every input first and fails with E_ARGUMENT (nothing written) when a history or bias id
// is >= V, a prompt length is outside [0, H], repetition is not a finite number > 0, presence or
// frequency is not finite, or a bias value is NaN.
void penalize(int64_t R, int64_t V, int64_t H, int64_t nb, float* logits, const int32_t* history, const int32_t* prompt_lengths,
              const float* params, const int32_t* bias_ids, const float* bias_values);

// ---- log-probabilities -------------------------------------------------------------------------------
//
// logprobs: for each row r of logits f32 [R, V], with NaN read as -inf, m = the row's maximum and
// lse = m + log(sum_j exp(x_j - m)) (exp and the sum in f64):
//   out[r, 0] = float(x[chosen[r]] - lse), the chosen token's log-probability;
//   out_ids[r, 0..k) = the k most likely tokens (larger logit first, ties: lower id first),
//   out[r, 1 + i] = float(x[out_ids[r, i]] - lse).
// A row whose maximum is not finite (all -inf / NaN, or a +inf) has NaN log-probabilities.
constexpr int64_t kMaxTopLogprobs = 20;
// The chosen token first: larger logit first, then lower id (NaN already read as -inf).
LC_HD bool logit_before(float a, int32_t ia, float b, int32_t ib) { return a > b || (a == b && ia < ib); }

// On the CPU, rows in parallel; k <= kMaxTopLogprobs, k <= V. Fails with E_ARGUMENT (nothing
// written) when a chosen id is outside [0, V).
void logprobs(int64_t R, int64_t V, int64_t k, const float* logits, const int32_t* chosen, float* out, int32_t* out_ids);

// ---- speculative sampling -----------------------------------------------------------------------
//
// sample_speculative verifies k deterministic drafts per sequence for B sequences. Sequence b owns
// the logits rows b * (k + 1) + j, j = 0..k (row j predicts the token after draft j - 1; row 0 the
// token after the pending one), the drafts d_j = drafts[b, j], the positions of its rows and one
// row of parameters. The token drawn from row r sits at position positions[r] + 1, and that is the
// `step` of its random numbers (as in plain decoding, where sample() gets the token's position).
// p_j = the sampler's filtered, renormalised distribution of row j (the survivors sample() draws
// from; greedy: all mass on the argmax). For j = 0..k-1 in order:
//   accept d_j iff u_A < p_j(d_j) (always when p_j(d_j) = 1, never when d_j did not survive);
//   on reject the correction token is drawn from p_j with d_j's weight set to 0, renormalised
//   (u_R), and the sequence stops there.
// All k accepted: the bonus token is drawn from row k exactly as sample() draws a one-row call.
// Greedy is the special case: accept iff d_j == argmax(row j), else the correction is that argmax.
// The uniforms are sample_uniform(seed, step, purpose) with purpose kUniformDraw (0: the bonus
// token, the same number a one-row sample() call at that step uses), kUniformAccept and
// kUniformResidual. The row within the sequence enters through `step` (its position), so every
// decision of a generation uses its own uniform: within a sequence each position is decided once,
// by one accept test and at most one residual draw, and a position re-verified after a rejection
// was never decided before. Tokens: tokens[b, 0..a-1] = the accepted drafts (a = accepted[b]),
// tokens[b, a] = the correction or bonus token, tokens[b, j > a] = tokens[b, a] (every entry a
// token id the next step can embed). The output distribution of each position equals sample()'s.
constexpr uint64_t kUniformDraw = 0;
constexpr uint64_t kUniformAccept = 0x8000000000000001ull;  // sample() rows never reach 2^63
constexpr uint64_t kUniformResidual = 0x8000000000000002ull;

// One sequence's parameters as sampleSpeculative takes them: int32 [kSpeculativeParams] =
// [f32 bits of temperature, topK, f32 bits of topP, f32 bits of minP, seed low 32 bits, seed high
// 32 bits] (a tensor, so that a captured graph replays with new values). step is left 0.
constexpr int kSpeculativeParams = 6;
LC_HD SampleParams decode_speculative_params(const int32_t* q) {
  SampleParams p;
  memcpy(&p.temperature, &q[0], 4);
  p.top_k = q[1];
  memcpy(&p.top_p, &q[2], 4);
  memcpy(&p.min_p, &q[3], 4);
  p.seed = (static_cast<uint64_t>(static_cast<uint32_t>(q[5])) << 32) | static_cast<uint32_t>(q[4]);
  p.step = 0;
  return p;
}

// Workspace bytes sample_speculative needs for B sequences of V-logit rows.
int64_t sample_speculative_workspace_bytes(int64_t B, int64_t V);

// The rule above on the CPU. logits f32 [B * (k + 1), V], drafts int32 [B, k], positions int32
// [B * (k + 1)], params int32 [B, kSpeculativeParams]; writes tokens int32 [B, k + 1] and accepted
// int32 [B]. Checks every input first and fails with E_ARGUMENT (nothing written) when a parameter
// is out of the range sample() accepts (temperature finite >= 0, topK >= 0, topP in (0, 1], minP
// in [0, 1]), a draft is outside [0, V) or a position is negative.
void sample_speculative(int64_t B, int64_t k, int64_t V, const float* logits, const int32_t* drafts, const int32_t* positions,
                        const int32_t* params, int32_t* tokens, int32_t* accepted, void* workspace);

// out[b] = candidates[b, clamp(accepted[b], 0, k)] with candidates int32 [B, k + 1] (an
// out-of-range count is clamped, not an error, so the op never fails inside a replayed graph).
LC_HD int64_t clamp_accepted(int32_t a, int64_t k) { return a < 0 ? 0 : (a > k ? k : a); }
void select_accepted(int64_t B, int64_t k, const int32_t* candidates, const int32_t* accepted, int32_t* out);

}  // namespace lc::cpu
