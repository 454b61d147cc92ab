// The N-gram embedding op of the native addon (binding: native/ops/ngram.cc).
import type { Tensor, Stream } from './native.js';

type S = Stream | null | undefined;

/** LongCat-Flash-Lite's N-gram embedding, float half (CPU kernel native/cpu/ngram.cc, CUDA twin cuda/ngram.cu). */
export interface NgramOps {
  /**
   * y[t, h] = (base[t, h] + sum_e rows[e, t, :] . proj[e, h, :]) / (E + 1) (SPEC-LITE 3.4 in fp32):
   * base f32 [T, H] (the token embedding; y may be base itself), rows f32|bf16 [E, T, D] (each
   * token's row of every table, gathered on the host), proj f32|bf16 [E, H, D] (post_projs stacked).
   */
  ngramEmbed(stream: S, y: Tensor, base: Tensor, rows: Tensor, proj: Tensor): void;
}
