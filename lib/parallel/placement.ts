// Where the routed experts live under expert parallelism: each layer's FFN experts split into
// contiguous, equal blocks, one per rank (rank r holds experts r * perRank .. (r + 1) * perRank - 1
// as its local experts 0 .. perRank - 1). Everything else (attention, dense FFNs, router,
// embedding, lm_head) is replicated and does not appear here.
import { ArgumentError } from '../errors.js';
import { native } from '../native.js';
import type { Tensor } from '../tensor.js';
import type { Stream } from '../device.js';
import type { MoeExpertSet } from '../../types/ops-moe.js';

/** Checks a rank count against a layer's routed experts; returns the experts per rank. */
export function expertsPerRank(ranks: number, nRouted: number): number {
  if (!Number.isInteger(ranks) || ranks < 1)
    throw new ArgumentError('E_ARGUMENT', `ranks must be a whole number >= 1, got ${ranks}`);
  if (nRouted % ranks !== 0)
    throw new ArgumentError(
      'E_ARGUMENT',
      `${ranks} ranks do not divide the ${nRouted} routed experts of each layer evenly ` +
        `(expert parallelism gives every rank the same number; use a divisor of ${nRouted})`,
    );
  return nRouted / ranks;
}

/** The global ids of the experts rank `rank` holds: [first, first + count). */
export function rankExperts(rank: number, perRank: number): { first: number; count: number } {
  return { first: rank * perRank, count: perRank };
}

/**
 * One layer's routed experts, split across ranks: shards[r] is rank r's own MoeExpertSet (built
 * from, and holding, only its block of weights, on its rank's device). Stands where a
 * single-device MoeExpertSet would (MoeWeights.experts), so the architecture passes it to
 * Step.experts unchanged; only the expert-parallel ExpertsFn knows how to run it.
 */
export class ShardedExperts implements MoeExpertSet {
  readonly nRouted: number;
  readonly hidden: number;
  readonly intermediate: number;
  readonly device: string;
  constructor(
    readonly shards: readonly MoeExpertSet[],
    readonly perRank: number,
  ) {
    const s0 = shards[0]!;
    this.nRouted = perRank * shards.length;
    this.hidden = s0.hidden;
    this.intermediate = s0.intermediate;
    this.device = s0.device;
  }
  dispose() {
    for (const s of this.shards) s.dispose();
  }
}

/**
 * The grouped expert GEMM of the rows a rank (or host) received, queued on `stream`: y = the moe op
 * over x [n, H] with local expert ids idx / weights w [n, k] through its own `experts` (its
 * perRank experts, ids 0 .. perRank - 1); id perRank marks a slot of another rank's expert (weight
 * 0) and bounds the ids.
 */
export function receivedExperts(
  stream: Stream,
  y: Tensor,
  x: Tensor,
  idx: Tensor,
  w: Tensor,
  perRank: number,
  experts: MoeExpertSet,
) {
  native.moe(stream, y, x, idx, w, perRank, experts, null, null, null, null, null, perRank + 1);
}
