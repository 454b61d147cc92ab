// Expert parallelism over ranks driven from one process (DESIGN "Multi-device", issue 14): the
// Step.experts of a runner whose routed experts are split across ranks (placement.ts). Per MoE
// layer, with the step's T tokens spread over home ranks in contiguous chunks:
//   dispatch  each home rank sends every token once to each rank that owns one of its chosen FFN
//             experts (epDispatch), into that rank's static slot for the home rank;
//   experts   each rank runs the grouped expert GEMM (the moe op) over its slots with its own
//             experts;
//   combine   each home rank adds the partial rows back in rank order 0, 1, .., then the zero
//             experts (epCombine) -- deterministic whatever order the ranks finish in.
// Every rank has its own stream on its own device; the phases are joined by events (across
// devices too: a CUDA stream may wait for another device's event). Ranks are CPU ranks, or CUDA
// ranks each on a device of the group (several ranks may share one): rank d's receive slots,
// experts and moe output live on its device, and the home rank's kernels (split send / receive
// form of cuda/ep.cu) write into the receivers' slots and read their partial rows through peer
// pointers (loadModel enables peer access between every pair). The dense part of the step
// (attention, dense FFNs, router) runs once, on the runner's device, so the home ranks' inputs
// and outputs are there and reached through peer pointers too; data-parallel attention (each rank
// owning its sequences) is not done yet, so the token split is only the MoE's.
//
// A failed rank: the group's abort flag (int32 on the runner's device, reached by every rank) is
// raised by a dispatch that fails (a slot overflow), and from then on the step's dispatches and
// combines do nothing more (combine writes zeros). endStep(), at the end of each step, waits for
// every rank, surfaces the first error (E_RANK_FAILED naming the rank) and lowers the flag, so the
// next step starts clean. No rank ever waits on another's flag: each phase is ordered behind the
// one before by stream events, every event is recorded before anything waits for it, and a rank
// whose work failed still runs to the end of its queue -- so a failure, or an error thrown while
// the step is being queued (an allocation that fails), cannot leave a rank waiting forever.
import { native } from '../native.js';
import { type Tensor, empty, tensor, toArray } from '../tensor.js';
import { Event, Stream } from '../device.js';
import { ArgumentError, OutOfMemoryError, RankFailedError } from '../errors.js';
import type { ExpertsFn } from '../model/step.js';
import { ShardedExperts } from './placement.js';

/** The rows of T tokens each home rank holds: rank s has [start, start + count). */
export function homeRows(T: number, ranks: number): { start: number; count: number }[] {
  const chunk = Math.ceil(T / ranks);
  return Array.from({ length: ranks }, (_, s) => {
    const start = Math.min(T, s * chunk);
    return { start, count: Math.min(T, start + chunk) - start };
  });
}

/**
 * A fault for tests to inject into the next MoE layer a group runs eagerly (not into a captured
 * graph's replays): 'oom' -- rank `rank` fails to allocate in its expert phase, after every
 * dispatch of the layer was queued; 'kernel' -- home rank `rank`'s dispatch kernel fails (the
 * epDispatch test hook: it raises the abort flag and sends nothing).
 */
export interface InjectedFault {
  rank: number;
  kind: 'oom' | 'kernel';
}

export class ExpertParallelGroup {
  /** One stream per rank (captured with the runner's streams into decode graphs). */
  readonly streams: readonly Stream[];
  private readonly inputsReady: Event;
  private readonly dispatched: Event[];
  private readonly computed: Event[];
  private readonly combined: Event[];
  /** int32 [1] on the home device: raised by a failed dispatch, lowered by endStep. */
  private readonly abort: Tensor;
  private fault: InjectedFault | null = null;

  readonly ranks: number;

  /** devices[r]: rank r's device; `home`: the runner's device (the step's tokens and the MoE output). */
  constructor(
    readonly devices: readonly string[],
    readonly home: string,
  ) {
    this.ranks = devices.length;
    this.streams = devices.map(d => new Stream(d));
    this.inputsReady = new Event(home);
    const events = () => devices.map(d => new Event(d));
    this.dispatched = events();
    this.computed = events();
    this.combined = events();
    this.abort = tensor(Int32Array.of(0), [1], { dtype: 'int32', device: home });
  }

  /** Test hook: the next MoE layer run eagerly fails on one rank (InjectedFault). */
  injectFault(fault: InjectedFault | null) {
    if (fault && !(Number.isInteger(fault.rank) && fault.rank >= 0 && fault.rank < this.ranks))
      throw new ArgumentError('E_ARGUMENT', `injectFault: rank ${fault.rank} is not a rank of this ${this.ranks}-rank group`);
    this.fault = fault;
  }

  /** The Step.experts of the group: the layer's experts must be ShardedExperts over this many ranks. */
  readonly experts: ExpertsFn = (stream, out, u, idx, weights, experts, nExperts) => {
    if (!(experts instanceof ShardedExperts) || experts.shards.length !== this.ranks)
      throw new ArgumentError(
        'E_ARGUMENT',
        `expert parallelism over ${this.ranks} ranks needs the layer's experts split into ${this.ranks} shards`,
      );
    const R = this.ranks,
      T = u.shape[0]!,
      H = u.shape[1]!,
      k = idx.shape[1]!,
      per = experts.perRank,
      nRouted = experts.nRouted;
    const homes = homeRows(T, R).filter(h => h.count > 0); // the first A ranks hold tokens
    const A = homes.length,
      cap = homes[0]!.count;
    const fault = this.fault;
    this.fault = null;
    const held: Tensor[] = [];
    const keep = <X extends Tensor>(t: X) => {
      held.push(t);
      return t;
    };
    const f32 = (shape: number[], device: string) => keep(empty(shape, { device }));
    const i32 = (shape: number[], device: string) => keep(empty(shape, { dtype: 'int32', device }));
    // Receive side of rank d, on its device: one slot per home rank s at rows s * cap ..; the moe
    // output over all slots doubles as the combine buffers (home s reads rows s * cap .. of every
    // rank's).
    const recv = this.devices.map(dev => ({
      count: i32([A], dev),
      x: f32([A * cap, H], dev),
      idx: i32([A * cap, k], dev),
      w: f32([A * cap, k], dev),
      y: f32([A * cap, H], dev),
    }));
    const rows = (t: Tensor, s: number) => keep(t.narrow(s * cap, cap));
    const mine = (t: Tensor, s: number) => keep(t.narrow(homes[s]!.start, homes[s]!.count));
    // Each home rank's record of where its tokens went (row in each rank's slot, or -1), on its device.
    const rowOf = homes.map((h, s) => i32([h.count, R], this.devices[s]!));

    this.inputsReady.record(stream);
    try {
      for (let s = 0; s < A; s++) {
        const st = this.streams[s]!;
        st.waitEvent(this.inputsReady);
        native.epDispatch(
          st,
          mine(u, s),
          mine(idx, s),
          mine(weights, s),
          nRouted,
          nExperts,
          per,
          rowOf[s]!,
          recv.map(r => keep(r.count.narrow(s, 1))),
          recv.map(r => rows(r.x, s)),
          recv.map(r => rows(r.idx, s)),
          recv.map(r => rows(r.w, s)),
          this.abort,
          fault?.kind === 'kernel' && fault.rank === s,
        );
        this.dispatched[s]!.record(st);
      }
      for (let d = 0; d < R; d++) {
        const st = this.streams[d]!,
          r = recv[d]!;
        for (let s = 0; s < A; s++) st.waitEvent(this.dispatched[s]!);
        if (fault?.kind === 'oom' && fault.rank === d)
          throw new OutOfMemoryError(
            'E_OOM',
            `expert parallelism: rank ${d} (${this.devices[d]}) ran out of memory in its expert phase (injected by a test)`,
          );
        // Local ids 0..per-1 are this rank's experts; id `per` marks another rank's slot (weight 0).
        native.moe(st, r.y, r.x, r.idx, r.w, per, experts.shards[d]!, null, null, null, null, null, per + 1);
        this.computed[d]!.record(st);
      }
      for (let s = 0; s < A; s++) {
        const st = this.streams[s]!;
        for (let d = 0; d < R; d++) st.waitEvent(this.computed[d]!);
        native.epCombine(
          st,
          mine(out, s),
          mine(u, s),
          mine(idx, s),
          mine(weights, s),
          nRouted,
          nExperts,
          rowOf[s]!,
          recv.map(r => rows(r.y, s)),
          this.abort,
        );
      }
    } finally {
      // Every rank's stream, and the caller's, continue behind everything queued for this layer
      // (also when queuing stopped half way): a rank's buffers are read by other ranks' kernels,
      // and its device's pool fences a freed block on that device's streams only, so the block
      // must not come back before the last reader on any device is done.
      for (let d = 0; d < R; d++) this.combined[d]!.record(this.streams[d]!);
      for (let s = 0; s < R; s++) {
        stream.waitEvent(this.combined[s]!);
        for (let d = 0; d < R; d++) if (d !== s) this.streams[d]!.waitEvent(this.combined[s]!);
      }
      for (const t of held) t.dispose(); // queued work keeps what it uses
    }
  };

  /**
   * Ends a step: waits for every rank and surfaces a failure of any (the first rank's error, as
   * E_RANK_FAILED naming it), lowering the abort flag so the next step starts clean.
   */
  endStep() {
    let failed: { rank: number; cause: unknown } | null = null;
    for (const [r, s] of this.streams.entries()) {
      try {
        s.synchronize();
      } catch (e) {
        failed ??= { rank: r, cause: e };
      }
    }
    const raised = (toArray(this.abort) as Int32Array)[0] !== 0;
    if (raised) this.abort.copyFromBytes(Int32Array.of(0));
    if (failed) {
      const why = failed.cause instanceof Error ? failed.cause.message : String(failed.cause);
      throw new RankFailedError(
        'E_RANK_FAILED',
        `expert parallelism: rank ${failed.rank} (${this.devices[failed.rank]}) failed in this step: ${why}`,
        { cause: failed.cause },
      );
    }
    if (raised)
      throw new RankFailedError(
        'E_RANK_FAILED',
        'expert parallelism: a rank failed in this step (a dispatch overflowed its receive slots and raised the abort flag)',
      );
  }

  /** Waits for every rank's queued work (surfacing its errors). */
  synchronize() {
    for (const s of this.streams) s.synchronize();
  }

  dispose() {
    this.synchronize();
    for (const s of this.streams) s.dispose();
    this.abort.dispose();
  }
}
