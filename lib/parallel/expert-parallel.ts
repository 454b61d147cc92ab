// Expert parallelism over ranks driven from one process (DESIGN "Multi-device", issue 14): the
// routed experts of a runner whose experts are split across ranks (placement.ts), with attention
// data-parallel (data-parallel.ts): every rank runs the dense part of the step on the tokens of its
// own sequences and hands its MoE inputs to its Step.experts (expertsOf(rank)); at the layer's
// rendezvous the runner calls allToAll(), which queues, over every home rank (a rank with tokens):
//   dispatch  each home rank sends every token once to each rank that owns one of its chosen FFN
//             experts (epDispatch), into that rank's static slot for the home rank;
//   experts   each rank runs the grouped expert GEMM (the moe op) over its slots with its own
//             experts;
//   combine   each home rank adds the partial rows back in rank order 0, 1, .., then the zero
//             experts (epCombine) -- deterministic whatever order the ranks finish in.
// Every rank has its own stream on its own device; the phases are joined by events (across
// devices too: a CUDA stream may wait for another device's event). Ranks are CPU ranks, or CUDA
// ranks each on a device of the group (several ranks may share one): rank d's receive slots,
// experts and moe output live on its device, the home rank's inputs and output on its own, and the
// home rank's kernels (split send / receive form of cuda/ep.cu) write into the receivers' slots and
// read their partial rows through peer pointers (loadModel enables peer access between every pair).
// The receive slots and the home ranks' row records are allocated once per slot depth (the most
// tokens a home rank holds, rounded up to a power of two) and reused by every layer and step.
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
import type { MoeExpertSet } from '../../types/ops-moe.js';
import { Event, Stream } from '../device.js';
import { ArgumentError, OutOfMemoryError, RankFailedError } from '../errors.js';
import type { ExpertsFn } from '../model/step.js';
import { ShardedExperts } from './placement.js';

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

/** One home rank's MoE inputs and output for a layer (its Step.experts' arguments). */
interface HomeCall {
  rank: number;
  stream: Stream;
  out: Tensor;
  u: Tensor;
  idx: Tensor;
  weights: Tensor;
  experts: MoeExpertSet;
  nExperts: number;
}

/** The receive slots of every rank (rank d's on its device: one slot per home rank, `cap` rows
 *  deep) and each home rank's record of where its tokens went ([cap, ranks], on its device). */
interface SlotBuffers {
  recv: { count: Tensor; x: Tensor; idx: Tensor; w: Tensor; y: Tensor }[];
  rowOf: Tensor[];
}

export class ExpertParallelGroup {
  /** One stream per rank (captured with the runner's streams into decode graphs). */
  readonly streams: readonly Stream[];
  private readonly inputsReady: Event[];
  private readonly dispatched: Event[];
  private readonly computed: Event[];
  private readonly combined: Event[];
  /** int32 [1] on the home device: raised by a failed dispatch, lowered by endStep. */
  private readonly abort: Tensor;
  private fault: InjectedFault | null = null;
  /** The layer's calls so far, until allToAll() queues them. */
  private pending: HomeCall[] = [];
  /** Slot buffers by slot depth (captured graphs keep pointing at them: freed with the group). */
  private readonly buffers = new Map<string, SlotBuffers>();

  readonly ranks: number;

  /** devices[r]: rank r's device; `home`: the runner's device (the abort flag). */
  constructor(
    readonly devices: readonly string[],
    readonly home: string,
  ) {
    this.ranks = devices.length;
    this.streams = devices.map(d => new Stream(d));
    const events = () => devices.map(d => new Event(d));
    this.inputsReady = events();
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

  /** Rank `rank`'s Step.experts: joins its tokens (on its device, its MoE stream) to the layer's
   *  all-to-all, which allToAll() queues once every rank with tokens has joined. */
  expertsOf(rank: number): ExpertsFn {
    return (stream, out, u, idx, weights, experts, nExperts) => {
      this.pending.push({ rank, stream, out, u, idx, weights, experts, nExperts });
    };
  }

  /** Drops the calls of a layer that will not be queued (a step abandoned while being queued). */
  discardPending() {
    this.pending = [];
  }

  /** The slot buffers for home ranks of up to `cap` tokens (allocated on first use). */
  private slots(cap: number, H: number, k: number): SlotBuffers {
    const key = `${cap}x${H}x${k}`;
    let b = this.buffers.get(key);
    if (!b) {
      const R = this.ranks;
      const made: Tensor[] = [];
      const make = (shape: number[], device: string, dtype: 'f32' | 'int32' = 'f32') => {
        const t = empty(shape, { dtype, device });
        made.push(t);
        return t;
      };
      try {
        b = {
          recv: this.devices.map(dev => ({
            count: make([R], dev, 'int32'),
            x: make([R * cap, H], dev),
            idx: make([R * cap, k], dev, 'int32'),
            w: make([R * cap, k], dev),
            y: make([R * cap, H], dev),
          })),
          rowOf: this.devices.map(dev => make([cap, R], dev, 'int32')),
        };
      } catch (e) {
        for (const t of made) t.dispose();
        throw e;
      }
      this.buffers.set(key, b);
    }
    return b;
  }

  /** Queues the all-to-all of the layer whose calls were collected (expertsOf). */
  allToAll() {
    const homes = this.pending;
    this.pending = [];
    if (homes.length === 0) return;
    const experts = homes[0]!.experts,
      nExperts = homes[0]!.nExperts;
    if (!(experts instanceof ShardedExperts) || experts.shards.length !== this.ranks)
      throw new ArgumentError(
        'E_ARGUMENT',
        `expert parallelism over ${this.ranks} ranks needs the layer's experts split into ${this.ranks} shards`,
      );
    const R = this.ranks,
      H = homes[0]!.u.shape[1]!,
      k = homes[0]!.idx.shape[1]!,
      per = experts.perRank,
      nRouted = experts.nRouted;
    const A = homes.length,
      most = Math.max(...homes.map(h => h.u.shape[0]!)),
      cap = 2 ** Math.ceil(Math.log2(most));
    const buf = this.slots(cap, H, k);
    const fault = this.fault;
    this.fault = null;
    const held: Tensor[] = [];
    const keep = <X extends Tensor>(t: X) => {
      held.push(t);
      return t;
    };
    // Home s's slot on every rank: rows s * cap ..; the moe output over all slots doubles as the
    // combine buffers (home s reads rows s * cap .. of every rank's).
    const rows = (t: Tensor, s: number) => keep(t.narrow(s * cap, cap));
    const used = (t: Tensor) => keep(t.narrow(0, A * cap));
    const rowOf = homes.map(h => keep(buf.rowOf[h.rank]!.narrow(0, h.u.shape[0]!)));

    try {
      for (const [s, h] of homes.entries()) {
        const st = this.streams[h.rank]!;
        this.inputsReady[h.rank]!.record(h.stream);
        st.waitEvent(this.inputsReady[h.rank]!);
        native.epDispatch(
          st,
          h.u,
          h.idx,
          h.weights,
          nRouted,
          nExperts,
          per,
          rowOf[s]!,
          buf.recv.map(r => keep(r.count.narrow(s, 1))),
          buf.recv.map(r => rows(r.x, s)),
          buf.recv.map(r => rows(r.idx, s)),
          buf.recv.map(r => rows(r.w, s)),
          this.abort,
          fault?.kind === 'kernel' && fault.rank === h.rank,
        );
        this.dispatched[h.rank]!.record(st);
      }
      for (let d = 0; d < R; d++) {
        const st = this.streams[d]!,
          r = buf.recv[d]!;
        for (const h of homes) st.waitEvent(this.dispatched[h.rank]!);
        if (fault?.kind === 'oom' && fault.rank === d)
          throw new OutOfMemoryError(
            'E_OOM',
            `expert parallelism: rank ${d} (${this.devices[d]}) ran out of memory in its expert phase (injected by a test)`,
          );
        // Local ids 0..per-1 are this rank's experts; id `per` marks another rank's slot (weight 0).
        native.moe(
          st,
          used(r.y),
          used(r.x),
          used(r.idx),
          used(r.w),
          per,
          experts.shards[d]!,
          null,
          null,
          null,
          null,
          null,
          per + 1,
        );
        this.computed[d]!.record(st);
      }
      for (const [s, h] of homes.entries()) {
        const st = this.streams[h.rank]!;
        for (let d = 0; d < R; d++) st.waitEvent(this.computed[d]!);
        native.epCombine(
          st,
          h.out,
          h.u,
          h.idx,
          h.weights,
          nRouted,
          nExperts,
          rowOf[s]!,
          buf.recv.map(r => rows(r.y, s)),
          this.abort,
        );
      }
    } finally {
      // Every rank's stream, and the home ranks' MoE streams, continue behind everything queued
      // for this layer (also when queuing stopped half way): a rank's buffers are read by other
      // ranks' kernels, and a home's temporaries are freed into its device's pool, which fences a
      // freed block on that device's streams only, so the block must not come back before the
      // last reader on any device is done.
      for (let d = 0; d < R; d++) this.combined[d]!.record(this.streams[d]!);
      for (let s = 0; s < R; s++) {
        for (const h of homes) h.stream.waitEvent(this.combined[s]!);
        for (let d = 0; d < R; d++) if (d !== s) this.streams[d]!.waitEvent(this.combined[s]!);
      }
      for (const t of held) t.dispose(); // queued work keeps what it uses
    }
  }

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
    for (const b of this.buffers.values()) for (const t of [...b.recv.flatMap(r => Object.values(r)), ...b.rowOf]) t.dispose();
    this.buffers.clear();
    this.abort.dispose();
  }
}
