// The row-gather op of the native addon (binding: native/ops/gather.cc).
import type { Tensor, Stream } from './native.js';

type S = Stream | null | undefined;

/** Row gather (CPU kernel native/cpu/gather.cc, CUDA twin cuda/gather.cu). */
export interface GatherOps {
  /**
   * out[i, ..] = src[idx[i], ..]: rows of the first dimension of src, bit-exact for every dtype.
   * src [R, ..]; idx int32 of any shape; out idx.shape + src.shape[1:], src's dtype, not
   * overlapping src. An index outside [0, R) fails with E_ARGUMENT on the CPU (raised at
   * synchronize / toBytes, nothing written); on CUDA a kernel cannot raise, so its row is zeroed.
   */
  gatherRows(stream: S, out: Tensor, src: Tensor, idx: Tensor): void;
  /**
   * out[.., i] = src[.., idx[i]]: columns of the last dimension of src, bit-exact for every dtype
   * (e.g. the activations of an act-order GPTQ linear, lib/int4.ts). src [.., k]; idx int32 [n];
   * out src.shape with n last, src's dtype, not overlapping src. An index outside [0, k) fails with
   * E_ARGUMENT on the CPU (nothing written); on CUDA its column is zeroed.
   */
  gatherColumns(stream: S, out: Tensor, src: Tensor, idx: Tensor): void;
}
