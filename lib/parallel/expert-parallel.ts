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
// Every rank has its own stream on its own device. Ranks are CPU ranks, or CUDA ranks each on a
// device of the group (several ranks may share one): rank d's receive slots, experts and moe output
// live on its device, the home rank's inputs and output on its own, and the home rank's kernels
// write into the receivers' slots and read their partial rows through peer pointers (loadModel
// enables peer access between every pair). The receive slots and the home ranks' row records are
// allocated once per slot depth (the most tokens a home rank holds, rounded up to a power of two)
// and reused by every layer and step.
//
// The phases of different ranks are ordered by flags, not by stream events (the protocol of
// native/cpu/ep.h), in the single-kernel form: a home's dispatch launch writes its tokens into
// every rank's slot, releases that rank's ready flag, then acquires its own ready flags from every
// home (a bounded spin); a rank without tokens only waits (epWait). After its expert GEMM a rank
// releases a "partials ready" flag in every home (a home in its combine launch, which then
// acquires those of every rank and sums; a rank without tokens with epSignal). On CPU ranks (a
// stream is a thread) and CUDA devices the waits really spin, concurrently. The CUDA emulator runs
// a stream's queue only when the host waits for it, so there (`ordered`) the same kernels run
// phase by phase -- sends, then each rank's wait behind the senders' events, then signals, then
// the homes' waits and sums behind those -- the flags still written, acquired and lowered, and
// the waits still bounded. Only a layer's start
// (every rank behind its homes' inputs) and its end (every home's MoE stream behind its rank, one
// behind every rank: the capture's join) are events.
//
// A failed rank: the group's abort word (int32 on the runner's device, reached by every rank) is
// raised by a dispatch that fails (a slot overflow) or by a wait that timed out (`timeoutMs`; the
// word says who waited for whom), and from then on the step's dispatches and combines do nothing
// more (combine writes zeros) and every wait gives up at once. endStep(), at the end of each step,
// waits for every rank, surfaces the first error (E_RANK_FAILED naming the rank) and, after a
// failed step, lowers the word and every flag, so the next step starts clean.
import { native } from '../native.js';
import { type Tensor, empty, tensor, toArray } from '../tensor.js';
import type { MoeExpertSet } from '../../types/ops-moe.js';
import type { EpWaitSpec } from '../../types/ops-ep.js';
import { Event, Stream } from '../device.js';
import { ArgumentError, OutOfMemoryError, RankFailedError, showValue } from '../errors.js';
import type { ExpertsFn } from '../model/step.js';
import { ShardedExperts, receivedExperts } from './placement.js';

/**
 * A fault for tests to inject into the next MoE layer a group runs eagerly (not into a captured
 * graph's replays): 'oom' -- rank `rank` fails to allocate in its expert phase, after every
 * dispatch of the layer was queued; 'kernel' -- home rank `rank`'s dispatch kernel fails (the
 * epDispatch test hook: it raises the abort flag and sends nothing); 'dead' -- home rank `rank`
 * never dispatches (no payload, no flag): the others' waits time out.
 */
export interface InjectedFault {
  rank: number;
  kind: 'oom' | 'kernel' | 'dead';
}

/** The default block budget of an expert-parallel launch on CUDA. */
export const EP_BLOCKS = 16;

/** The default time budget of a rank's wait for a peer (a dead peer fails the step after this). */
export const EP_TIMEOUT_MS = 60_000;

/** The expert-parallel protocol's settings (loadModel's `expertParallel`). */
export interface ExpertParallelOptions {
  /** Dispatch sends e4m3 rows with 1 x 128 scales instead of f32 (default false). */
  fp8Payload?: boolean;
  /** How long a rank waits for a peer before the step fails, ms (default EP_TIMEOUT_MS; at most an hour). */
  timeoutMs?: number;
  /** The CUDA block budget of a dispatch or combine launch (default EP_BLOCKS; the CPU ignores it). */
  blocks?: number;
}

/** `opts` checked (a typed E_ARGUMENT naming the field, expected and got); `what` prefixes the message. */
export function checkExpertParallelOptions(opts: unknown, what = 'loadModel: expertParallel'): ExpertParallelOptions {
  if (typeof opts !== 'object' || opts === null || Array.isArray(opts))
    throw new ArgumentError(
      'E_ARGUMENT',
      `${what} must be an object { fp8Payload?, timeoutMs?, blocks? }, got ${showValue(opts)}`,
    );
  const o = opts as Record<string, unknown>;
  for (const key of Object.keys(o))
    if (key !== 'fp8Payload' && key !== 'timeoutMs' && key !== 'blocks')
      throw new ArgumentError('E_ARGUMENT', `${what}: unknown field '${key}' (expected fp8Payload, timeoutMs or blocks)`);
  if (o.fp8Payload !== undefined && typeof o.fp8Payload !== 'boolean')
    throw new ArgumentError('E_ARGUMENT', `${what}.fp8Payload must be true or false, got ${showValue(o.fp8Payload)}`);
  if (o.timeoutMs !== undefined && !(typeof o.timeoutMs === 'number' && o.timeoutMs > 0 && o.timeoutMs <= 3_600_000))
    throw new ArgumentError(
      'E_ARGUMENT',
      `${what}.timeoutMs must be a number of milliseconds in (0, 3600000], got ${showValue(o.timeoutMs)}`,
    );
  if (
    o.blocks !== undefined &&
    !(typeof o.blocks === 'number' && Number.isInteger(o.blocks) && o.blocks >= 1 && o.blocks <= 65535)
  )
    throw new ArgumentError('E_ARGUMENT', `${what}.blocks must be an integer in [1, 65535], got ${showValue(o.blocks)}`);
  return o as ExpertParallelOptions;
}

/** The reason a wait left in the abort word (epWait), in words; null for another reason. */
export function waitFailure(code: number): string | null {
  if (!(code & (1 << 30))) return null;
  const kind = (code >> 16) & 0xff,
    rank = (code >> 8) & 0xff,
    peer = code & 0xff;
  return kind === 1
    ? `rank ${rank} timed out waiting for rank ${peer}'s dispatch`
    : `rank ${rank} timed out waiting for rank ${peer}'s expert outputs`;
}

/** One home rank's MoE inputs and output for a layer (its Step.experts' arguments). */
export interface HomeCall {
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
  /** q / scales: the FP8 payload as sent (fp8Payload), decoded into x by the rank's wait. */
  recv: { count: Tensor; x: Tensor; idx: Tensor; w: Tensor; y: Tensor; q?: Tensor; scales?: Tensor }[];
  rowOf: Tensor[];
}

export class ExpertParallelGroup {
  /** One stream per rank (captured with the runner's streams into decode graphs). */
  readonly streams: readonly Stream[];
  private readonly inputsReady: Event[];
  private readonly dispatched: Event[];
  private readonly computed: Event[];
  private readonly combined: Event[];
  /** int32 [1] on the home device: raised by a failed dispatch or wait, lowered by endStep. */
  private readonly abort: Tensor;
  /** Per rank, on its device: ready[d] int32 [ranks], ready[d][s] raised by the dispatch of the
   *  layer's home s (its slot position); done[h] int32 [ranks + 1], done[h][d] raised by rank d for
   *  home rank h, and the combine kernel's block counter last. */
  private readonly ready: Tensor[];
  private readonly done: Tensor[];
  /** The CUDA emulator: waits are also queued behind their producers' events (header). */
  private readonly ordered: boolean;
  /** A layer's queuing stopped half way: flags may be left raised (cleared by endStep). */
  private unclean = false;
  /** How long a rank waits for a peer before the step fails (ms). */
  timeoutMs = EP_TIMEOUT_MS;
  /** The CUDA block budget of a dispatch or combine launch (the dense branch keeps the other SMs). */
  blocks = EP_BLOCKS;
  /** Dispatch sends e4m3 rows with one scale per 1 x 128 group (about 3.9x fewer bytes than f32),
   *  decoded to f32 by the receiver before its expert GEMM: the MoE input is rounded to FP8. */
  fp8Payload = false;
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
    const flags = (n: number) => devices.map(d => tensor(new Int32Array(n), [n], { dtype: 'int32', device: d }));
    this.ready = flags(this.ranks);
    this.done = flags(this.ranks + 1);
    this.ordered = native.buildInfo().cudaArchs === 'emulated' && devices.some(d => d !== 'cpu');
  }

  /** Sets the protocol's settings given (checked: checkExpertParallelOptions). */
  configure(opts: ExpertParallelOptions) {
    const o = checkExpertParallelOptions(opts, 'expertParallel');
    if (o.fp8Payload !== undefined) this.fp8Payload = o.fp8Payload;
    if (o.timeoutMs !== undefined) this.timeoutMs = o.timeoutMs;
    if (o.blocks !== undefined) this.blocks = o.blocks;
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
  private slots(cap: number, H: number, k: number, fp8: boolean): SlotBuffers {
    const key = `${cap}x${H}x${k}${fp8 ? 'fp8' : ''}`;
    let b = this.buffers.get(key);
    if (!b) {
      const R = this.ranks;
      const made: Tensor[] = [];
      const make = (shape: number[], device: string, dtype: 'f32' | 'int32' | 'fp8_e4m3' = 'f32') => {
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
            ...(fp8 ? { q: make([R * cap, H], dev, 'fp8_e4m3'), scales: make([R * cap, Math.ceil(H / 128)], dev) } : {}),
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
    const fp8 = this.fp8Payload;
    const buf = this.slots(cap, H, k, fp8);
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

    const homeRanks = homes.map(h => h.rank),
      all = Array.from({ length: R }, (_, d) => d),
      ordered = this.ordered;
    try {
      this.unclean = true;
      // The layer's start: each home's rank stream behind its MoE inputs; a rank without tokens
      // behind every home's (it joins a capture there).
      for (const h of homes) this.inputsReady[h.rank]!.record(h.stream);
      for (let d = 0; d < R; d++) {
        const mine = homeRanks.indexOf(d);
        if (mine >= 0) this.streams[d]!.waitEvent(this.inputsReady[d]!);
        else for (const h of homes) this.streams[d]!.waitEvent(this.inputsReady[h.rank]!);
      }
      const blocks = this.blocks;
      // Rank d's wait for the ready flags of the layer's homes (its slots padded if it fails).
      const recvWait = (d: number): EpWaitSpec => {
        const r = buf.recv[d]!;
        return {
          flags: keep(this.ready[d]!.narrow(0, A)),
          peers: homeRanks,
          rank: d,
          kind: 1,
          timeoutMs: this.timeoutMs,
          pad: { counts: keep(r.count.narrow(0, A)), idx: used(r.idx), w: used(r.w), expertsPerRank: per },
          decode: fp8 ? { q: used(r.q!), scales: used(r.scales!), x: used(r.x) } : null,
        };
      };
      // Home rank h's wait for every rank's "partials ready" (done[h]: R flags and the block counter).
      const doneWait = (h: number): EpWaitSpec => ({
        flags: keep(this.done[h]!.narrow(0, R)),
        peers: all,
        rank: h,
        kind: 2,
        timeoutMs: this.timeoutMs,
        counter: keep(this.done[h]!.narrow(R, 1)),
      });
      const doneFlags = (d: number) => homeRanks.map(hr => keep(this.done[hr]!.narrow(d, 1)));
      // Dispatch: a home sends and (single-kernel form) waits for its own slots in the same launch;
      // a rank without tokens only waits. Split (emulator): the sends first, then every wait.
      for (let d = 0; d < R; d++) {
        const s = homeRanks.indexOf(d),
          st = this.streams[d]!;
        const dead = fault?.kind === 'dead' && fault.rank === d; // sends nothing, raises no flag
        if (s < 0 || dead) {
          if (!ordered) native.epWait(st, recvWait(d), this.abort);
          continue;
        }
        const h = homes[s]!;
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
          buf.recv.map(r => rows(fp8 ? r.q! : r.x, s)),
          buf.recv.map(r => rows(r.idx, s)),
          buf.recv.map(r => rows(r.w, s)),
          this.abort,
          fault?.kind === 'kernel' && fault.rank === d,
          this.ready.map(f => keep(f.narrow(s, 1))),
          ordered ? null : recvWait(d),
          blocks,
          fp8 ? buf.recv.map(r => rows(r.scales!, s)) : null,
        );
        if (ordered) this.dispatched[d]!.record(st);
      }
      // Experts: every rank's grouped GEMM over its slots; a rank without tokens then tells the
      // homes its partials are ready (a home does so in its combine). All of it is queued before
      // any home's combine waits, so a failure while queuing leaves nobody waiting for it.
      for (let d = 0; d < R; d++) {
        const st = this.streams[d]!,
          r = buf.recv[d]!;
        if (ordered) {
          for (const h of homes) st.waitEvent(this.dispatched[h.rank]!);
          native.epWait(st, recvWait(d), this.abort);
        }
        if (fault?.kind === 'oom' && fault.rank === d)
          throw new OutOfMemoryError(
            'E_OOM',
            `expert parallelism: rank ${d} (${this.devices[d]}) ran out of memory in its expert phase (injected by a test)`,
          );
        receivedExperts(st, used(r.y), used(r.x), used(r.idx), used(r.w), per, experts.shards[d]!);
        if (ordered || !homeRanks.includes(d)) native.epSignal(st, doneFlags(d));
        if (ordered) this.computed[d]!.record(st);
      }
      // Combine: a home signals its own partials, waits for every rank's, sums in rank order.
      for (const [s, h] of homes.entries()) {
        const st = this.streams[h.rank]!;
        if (ordered) for (let d = 0; d < R; d++) st.waitEvent(this.computed[d]!);
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
          ordered ? null : doneFlags(h.rank),
          doneWait(h.rank),
          blocks,
        );
      }
      this.unclean = false;
    } finally {
      // The layer's end: each home's MoE stream continues behind its rank's stream (the home's
      // temporaries are read by its own rank's kernels only), and the first home's behind every
      // rank (the join a graph capture needs; those ranks are done before its combine anyway).
      for (let d = 0; d < R; d++) this.combined[d]!.record(this.streams[d]!);
      for (const h of homes) h.stream.waitEvent(this.combined[h.rank]!);
      for (let d = 0; d < R; d++) if (!homeRanks.includes(d)) homes[0]!.stream.waitEvent(this.combined[d]!);
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
    const code = (toArray(this.abort) as Int32Array)[0]!,
      raised = code !== 0;
    if (raised || failed || this.unclean) {
      // Every rank is idle: lower the word and every flag a failed step may have left raised.
      this.abort.copyFromBytes(Int32Array.of(0));
      for (const f of [...this.ready, ...this.done]) f.copyFromBytes(new Int32Array(f.shape[0]!));
      this.unclean = false;
    }
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
        `expert parallelism: ${
          waitFailure(code) ?? 'a rank failed in this step (a dispatch overflowed its receive slots and raised the abort flag)'
        }${waitFailure(code) ? ` (${this.timeoutMs} ms): the step failed` : ''}`,
      );
  }

  /** Waits for every rank's queued work (surfacing its errors). */
  synchronize() {
    for (const s of this.streams) s.synchronize();
  }

  dispose() {
    this.synchronize();
    for (const s of this.streams) s.dispose();
    for (const b of this.buffers.values())
      for (const t of [...b.recv.flatMap(r => Object.values(r) as Tensor[]), ...b.rowOf]) t.dispose();
    this.buffers.clear();
    this.abort.dispose();
    for (const f of [...this.ready, ...this.done]) f.dispose();
  }
}
