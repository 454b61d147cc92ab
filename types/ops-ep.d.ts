// The expert-parallel ops of the native addon (binding: native/ops/ep.cc; CPU kernels and the slot
// protocol: native/cpu/ep.h). CPU tensors only in this build (no CUDA peer-pointer kernels yet).
import type { Tensor, Stream } from './native.js';

type S = Stream | null | undefined;

/**
 * The two halves of the MoE all-to-all between ranks that own contiguous blocks of
 * `expertsPerRank` routed experts (rank r: experts r * expertsPerRank ..). A token goes to a rank
 * once, however many of its experts live there; zero experts (ids >= nRouted) stay home. Each
 * destination has a static slot per source rank `capacity` rows deep (count, x, idx, w; rows
 * count.. are padding that a moe over the slot turns into zeros), so the receiver runs the moe op
 * on whole slots with its local experts and nExperts = expertsPerRank + 1.
 */
export interface EpOps {
  /**
   * The source rank's tokens into the destinations' slots for it: for rank d, counts[d] int32 [1]
   * (tokens sent), xs[d] f32 [capacity, H] (their u rows, ascending token order), idxs[d] int32
   * [capacity, k] (the local expert id per top-k slot, expertsPerRank for slots that are not
   * rank d's), ws[d] f32 [capacity, k] (the slot's weight, 0 where not rank d's). u f32 [T, H],
   * idx int32 / weights f32 [T, k] (routerTopk's outputs). nRouted = ranks x expertsPerRank.
   * An id outside [0, nExperts) or more than `capacity` tokens for one rank fails with
   * E_ARGUMENT at synchronize, with nothing written.
   */
  epDispatch(stream: S, u: Tensor, idx: Tensor, weights: Tensor, nRouted: number, nExperts: number, expertsPerRank: number,
             counts: readonly Tensor[], xs: readonly Tensor[], idxs: readonly Tensor[], ws: readonly Tensor[]): void;
  /**
   * The home rank's MoE output: out[t] = the partial rows of the ranks t went to, added in rank
   * order 0, 1, .. (partials[d] f32 [capacity, H]: rank d's moe output over its slot for this
   * source, row for row), then (sum of t's zero-expert weights) * u[t] -- the single-device moe's
   * order, independent of arrival order. Same routing checks as epDispatch.
   */
  epCombine(stream: S, out: Tensor, u: Tensor, idx: Tensor, weights: Tensor, nRouted: number, nExperts: number, expertsPerRank: number,
            partials: readonly Tensor[]): void;
}
