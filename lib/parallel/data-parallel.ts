// Data-parallel attention (DESIGN "Multi-device", issue 14): under expert parallelism every rank
// owns the sequences the runner assigned to it and their KV pages (its own block allocator and
// latent caches, on its device), and runs the dense part of a step -- embedding, attention, dense
// FFNs, router, final norm and lm_head -- on the tokens of its own sequences, with its own replica
// of the dense weights (ranks sharing a device share one). Only the routed experts are split
// (placement.ts): at each MoE layer every rank with tokens hands them to the layer's all-to-all
// (expert-parallel.ts). The ranks' forward passes advance in lockstep from one JS thread: each
// pass is a generator that yields at every MoE layer's rendezvous (longcat-flash.ts), and once
// every rank has reached it the all-to-all is queued and they all go on.
//
// Which rank owns a new sequence (leastLoaded): the rank with the fewest live sequences; among
// those, the one with the most free KV blocks; then the lowest index. A sequence that adopts
// cached prefix pages stays on its rank: the prefix cache is per rank.
import { ArgumentError } from '../errors.js';
import type { Tensor } from '../tensor.js';
import type { Event, Stream } from '../device.js';
import type { BlockAllocator, SequenceCache } from '../kv-cache.js';
import type { ModelWeights } from '../model/weights.js';
import type { ExpertsFn } from '../model/step.js';
import type { Pass } from '../model/longcat-flash.js';

/** One rank of the runner: where its part of every step runs and what it owns. */
/** A layer's profiling events on the main stream (Step.marks). */
export interface LayerMarks {
  dense: Event;
  layer: Event;
}

export interface Rank {
  readonly index: number;
  readonly device: string;
  /** The dense weights on this rank's device (the routed experts: the shared ShardedExperts). */
  readonly w: ModelWeights;
  /** This rank's KV pages: its block ids and one latent cache per attention sub-layer. */
  readonly allocator: BlockAllocator;
  readonly caches: readonly Tensor[];
  /** The dense branch (rank 0: the runner's main stream) and the shortcut MoE branch. */
  readonly main: Stream;
  readonly moeStream: Stream;
  readonly events: readonly (readonly [Event, Event])[];
  /** Per layer, recorded on `main` when profiling (LongcatModel.profileLayers): the dense branch's end, the layer's end. */
  marks: readonly LayerMarks[] | null;
  readonly invFreq: Tensor;
  /** Its Step.experts (LongcatModel.wrapExperts may wrap it). */
  experts: ExpertsFn;
  /** Recorded on `main` when the rank's part of a step is queued (the runner's main waits on it). */
  readonly joined: Event;
  /** The live sequences this rank owns. */
  readonly sequences: Set<SequenceCache>;
}

/** The live sequences a rank owns (released ones are forgotten here). */
function live(r: Rank): number {
  for (const s of r.sequences) if (s.isReleased) r.sequences.delete(s);
  return r.sequences.size;
}

/** Records that `rank` owns the new sequence `seq`. */
export function assign(rank: Rank, seq: SequenceCache) {
  live(rank);
  rank.sequences.add(seq);
}

/** The rank a new sequence goes to (the rule of this file's header). */
export function leastLoaded(ranks: readonly Rank[]): Rank {
  let best = ranks[0]!;
  for (const r of ranks.slice(1)) {
    const d = live(r) - live(best);
    if (d < 0 || (d === 0 && r.allocator.available > best.allocator.available)) best = r;
  }
  return best;
}

/** The rank owning a sequence (by its allocator); ArgumentError for a sequence of another model. */
export function rankOf(ranks: readonly Rank[], seq: SequenceCache, what: string): Rank {
  const r = ranks.find(x => x.allocator === seq.allocator);
  if (!r) throw new ArgumentError('E_ARGUMENT', `${what}: a sequence was not created by this model (newSequence)`);
  return r;
}

/** A step's sequences grouped by owning rank, in rank order; `seqs` holds step indices, ascending. */
export interface RankPart {
  rank: Rank;
  seqs: number[];
}
export function byRank(ranks: readonly Rank[], seqs: readonly SequenceCache[], what: string): RankPart[] {
  const parts = ranks.map(rank => ({ rank, seqs: [] as number[] }));
  for (const [b, s] of seqs.entries()) parts[rankOf(ranks, s, what).index]!.seqs.push(b);
  return parts.filter(p => p.seqs.length > 0);
}

/**
 * Runs the ranks' passes in lockstep: each is advanced to its next rendezvous, then `meet` queues
 * what they meet for (the MoE all-to-all), until all of them return. Every pass must reach the
 * same rendezvous (same layers); the results come in the passes' order.
 */
export function lockstep<R>(passes: readonly Pass<R>[], meet: () => void): R[] {
  for (;;) {
    const steps = passes.map(p => p.next());
    const done = steps.filter(s => s.done).length;
    if (done === steps.length) return steps.map(s => s.value as R);
    if (done !== 0) throw new ArgumentError('E_ARGUMENT', 'lockstep: the ranks did not reach the same rendezvous');
    meet();
  }
}

/** The rows of each part (the sum of `rows[b]` over its sequences). */
export function partRowCounts(parts: readonly RankPart[], rows: readonly number[]): number[] {
  return parts.map(p => p.seqs.reduce((n, b) => n + rows[b]!, 0));
}

/**
 * Where each row of a step (its sequences in order, `rows[b]` rows each) sits in the rank-major
 * concatenation of the parts' rows: the gather index that puts the parts' outputs back in order.
 */
export function stepOrder(parts: readonly RankPart[], rows: readonly number[]): Int32Array {
  const start = new Int32Array(rows.length);
  let at = 0;
  for (const p of parts)
    for (const b of p.seqs) {
      start[b] = at;
      at += rows[b]!;
    }
  const order = new Int32Array(at);
  let r = 0;
  rows.forEach((n, b) => {
    for (let i = 0; i < n; i++) order[r++] = start[b]! + i;
  });
  return order;
}
