// Declarations of the small ops: norms, elementwise, conversions, fp8 / int8 quantization, sampling.
import type { Tensor, Stream } from './native.js';

type S = Stream | null | undefined;

/**
 * Small ops of the forward pass (CPU kernels in native/cpu/{elementwise,quant,sampling}.cc, CUDA
 * twins in cuda/{small,quant}.cu: on CUDA an out-of-range embedding id gives a zero row, and a
 * sampled draw at temperature > 0 follows the same distribution but not the same token as the CPU).
 * Stream first, then outputs, inputs, scalars. Activations are f32 unless stated.
 */
export interface SmallOps {
  /** y[.., :] = float32(table[ids[..], :]). y f32 [.., H]; table f32|bf16 [V, H]; ids int32 [..].
   *  An id outside [0, V) fails with E_ARGUMENT (raised at synchronize / toBytes). */
  embedding(stream: S, y: Tensor, table: Tensor, ids: Tensor): void;
  /** y = silu(gate) * up, silu(z) = z * sigmoid(z). All f32, same shape. */
  siluMul(stream: S, y: Tensor, gate: Tensor, up: Tensor): void;
  /** y = a + alpha * b (alpha defaults to 1; y may alias a). All f32, same shape. */
  add(stream: S, y: Tensor, a: Tensor, b: Tensor, alpha?: number): void;
  /** y = alpha * x. f32. */
  scale(stream: S, y: Tensor, x: Tensor, alpha: number): void;
  /** y[n, c] = x[n, c] * scales[n % R, floor(c / group)] with x, y f32 viewed as [rows, last dim]
   *  (y may alias x) and scales f32 [R, ceil(last dim / group)], R dividing rows: block scales
   *  applied outside a GEMM (the absorbed MLA over fp8 kv_b). */
  scaleGroups(stream: S, y: Tensor, x: Tensor, scales: Tensor, group: number): void;
  /** Element-wise conversion between f32, bf16, f16, fp8_e4m3 (any pair, same shape): round to
   *  nearest even, fp8 saturating to +-448, NaN -> NaN; bit-exact with lib/numeric.ts. */
  convert(stream: S, y: Tensor, x: Tensor): void;
  /** Per-token 1x128 activation quantization (SPEC 7.3): scale = max(amax, 1e-10) / 448,
   *  q = fp8(x / scale). q fp8_e4m3 [.., K]; scale f32 [.., ceil(K/128)]; x f32 [.., K]. */
  quantizeFp8Act(stream: S, q: Tensor, scale: Tensor, x: Tensor): void;
  /** 128x128 block weight quantization: scaleInv = max(amax, 1e-10) / 448, q = fp8(w / scaleInv).
   *  q fp8_e4m3 [N, K]; scaleInv f32 [ceil(N/128), ceil(K/128)]; w f32|bf16 [N, K]. */
  quantizeFp8Blocks(stream: S, q: Tensor, scaleInv: Tensor, w: Tensor): void;
  /** SPEC 7.2: w[r, c] = float32(q[r, c]) * scaleInv[r / 128, c / 128]. w f32|bf16 (RNE). */
  dequantizeFp8Blocks(stream: S, w: Tensor, q: Tensor, scaleInv: Tensor): void;
  /** idx[..] = argmax over the last dim of x [.., V] (ties -> lowest index, NaN never wins). int32. */
  argmax(stream: S, idx: Tensor, x: Tensor): void;
  /** Softmax over the last dimension (max-subtracted). f32, y may alias x. */
  softmax(stream: S, y: Tensor, x: Tensor): void;
  /** Log-softmax over the last dimension: x - max - log(sum(exp(x - max))). f32. */
  logSoftmax(stream: S, y: Tensor, x: Tensor): void;
  /**
   * Draws ids[..] (int32) from logits [.., V] (f32). temperature 0 -> argmax. Otherwise, in order:
   * softmax(logits / temperature); top-k (0 = off); min-p (drop p < minP * pmax; 0 = off);
   * top-p nucleus (smallest prefix of the descending probabilities with mass >= topP, computed on
   * the survivors; 1 = off); renormalise and draw with a counter-based RNG of (seed, step, row).
   * The result is a pure function of (logits, params, seed, step, row). seed, step: integers >= 0.
   */
  sample(
    stream: S,
    ids: Tensor,
    logits: Tensor,
    temperature: number,
    topK: number,
    topP: number,
    minP: number,
    seed: number,
    step: number,
  ): void;
  /**
   * Speculative rejection sampling: verifies k deterministic drafts for each of B sequences at once
   * (the rule in native/cpu/sampling.h). Sequence b owns the logits rows b * (k + 1) + j, j = 0..k
   * (row j predicts the token after draft j - 1, row 0 the token after the pending one); the token
   * drawn from row r sits at position positions[r] + 1, which is the `step` of its random numbers
   * (as `sample` gets in plain decoding). p_j = `sample`'s filtered, renormalised distribution of
   * row j (temperature, top-k, min-p, top-p). For j = 0..k-1 in order: accept drafts[b, j] with
   * probability p_j(draft); on reject, the correction is drawn from p_j without the draft and the
   * sequence stops. All accepted: a bonus token is drawn from row k as a one-row `sample` call
   * would. Greedy (temperature 0): accept iff the draft is the argmax, else the argmax. So each
   * position follows `sample`'s distribution exactly.
   *
   * tokens int32 [B, k + 1]: tokens[b, 0..a-1] = the accepted drafts (a = accepted[b]),
   * tokens[b, a] = the correction or bonus token, tokens[b, j > a] = tokens[b, a].
   * accepted int32 [B]: 0..k. logits f32 [B * (k + 1), V]; drafts int32 [B, k]; positions int32
   * [B * (k + 1)]; params int32 [B, 6] per sequence: [f32 bits of temperature, topK, f32 bits of
   * topP, f32 bits of minP, seed low 32 bits, seed high 32 bits] (a tensor, so that a captured graph
   * replays with new values). On the CPU a parameter out of `sample`'s ranges, a draft outside
   * [0, V) or a negative position fails with E_ARGUMENT (raised at synchronize / toBytes, nothing
   * written); on CUDA nothing fails: such a draft is never accepted and parameters are clamped
   * (temperature NaN / <= 0 / infinite -> greedy, topK < 0 -> off, topP NaN or >= 1 -> off, <= 0
   * -> the top token only, minP NaN or <= 0 -> off, > 1 -> 1). Greedy results are bit-identical
   * between CPU and CUDA; sampled ones follow the same distribution (see `sample`).
   */
  sampleSpeculative(
    stream: S,
    tokens: Tensor,
    accepted: Tensor,
    logits: Tensor,
    drafts: Tensor,
    positions: Tensor,
    params: Tensor,
  ): void;
  /**
   * Adjusts logits [R, V] (f32) in place before sampling, row by row with each row's own settings
   * (tensors, so that a captured graph replays with new values). history int32 [R, H]: the row's
   * sequence so far, negative entries are padding; its first promptLengths[r] entries (int32 [R])
   * are the prompt, the rest the generated tokens. params f32 [R, 3] = [repetition, presence,
   * frequency]. For each token t, in this order:
   *   repetition r (HF / llama.cpp / vLLM; 1 = off), t anywhere in the history: x > 0 ? x / r : x * r;
   *   presence, frequency (OpenAI; 0 = off), over the generated part only (vLLM), c = occurrences
   *   of t there: x -= presence * [c > 0] + frequency * c;
   *   logit bias (OpenAI logit_bias): x[biasIds[r, j]] += biasValues[r, j] (int32 / f32 [R, nb];
   *   negative ids are padding; a repeated id adds each value).
   * Every step rounds once in f32 (never fused): CPU and CUDA agree bit for bit. On the CPU a history
   * or bias id >= V, a prompt length outside [0, H], a repetition that is not finite > 0, a
   * non-finite presence / frequency or a NaN bias fails with E_ARGUMENT (raised at synchronize /
   * toBytes, nothing written); on CUDA such ids count for nothing and values are used as given.
   */
  penalize(
    stream: S,
    logits: Tensor,
    history: Tensor,
    promptLengths: Tensor,
    params: Tensor,
    biasIds: Tensor,
    biasValues: Tensor,
  ): void;
  /**
   * Log-probabilities of the distribution softmax(logits) (the row as given: apply it to the raw
   * logits for the model's own distribution). logits f32 [R, V] (NaN read as -inf); chosen int32
   * [R]; k in [0, min(20, V)]. out f32 [R, 1 + k]: out[r, 0] = log p(chosen[r]), out[r, 1 + i] =
   * log p(outIds[r, i]); outIds int32 [R, k]: the k most likely tokens (larger logit first, ties:
   * lower id first). The normaliser is summed in f64. A row whose maximum is not finite gives NaN.
   * A chosen id outside [0, V) fails with E_ARGUMENT on the CPU and gives NaN on CUDA.
   */
  logprobs(stream: S, out: Tensor, outIds: Tensor, logits: Tensor, chosen: Tensor, k: number): void;
  /** out[b] = candidates[b, accepted[b]] (the next draft among per-row candidates); an accepted
   *  count outside [0, k] is clamped into it. out int32 [B]; candidates int32 [B, k + 1]; accepted int32 [B]. */
  selectAccepted(stream: S, out: Tensor, candidates: Tensor, accepted: Tensor): void;
}
