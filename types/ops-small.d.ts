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
}
