// Expert parallelism over ranks driven from one process (DESIGN "Multi-device", issue 14): the
// Step.experts of a runner whose routed experts are split across ranks (placement.ts). Per MoE
// layer, with the step's T tokens spread over home ranks in contiguous chunks:
//   dispatch  each home rank sends every token once to each rank that owns one of its chosen FFN
//             experts (epDispatch), into that rank's static slot for the home rank;
//   experts   each rank runs the grouped expert GEMM (the moe op) over its slots with its own
//             experts;
//   combine   each home rank adds the partial rows back in rank order 0, 1, .., then the zero
//             experts (epCombine) -- deterministic whatever order the ranks finish in.
// Every rank has its own stream; the phases are joined by events. Ranks are CPU ranks or virtual
// ranks on one CUDA device (the split send / receive kernels of cuda/ep.cu); ranks on several
// devices (peer pointers, flags) are not written yet. The dense part of the step
// (attention, dense FFNs, router) runs once, on the runner's device; data-parallel attention
// (each rank owning its sequences) is not done yet, so the token split is only the MoE's.
import { native } from '../native.js';
import { type Tensor, empty } from '../tensor.js';
import { Event, Stream } from '../device.js';
import { ArgumentError } from '../errors.js';
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

export class ExpertParallelGroup {
  /** One stream per rank (captured with the runner's streams into decode graphs). */
  readonly streams: readonly Stream[];
  private readonly inputsReady: Event;
  private readonly dispatched: Event[];
  private readonly computed: Event[];
  private readonly combined: Event[];

  constructor(
    readonly ranks: number,
    readonly device: string,
  ) {
    this.streams = Array.from({ length: ranks }, () => new Stream(device));
    this.inputsReady = new Event(device);
    const events = () => Array.from({ length: ranks }, () => new Event(device));
    this.dispatched = events();
    this.computed = events();
    this.combined = events();
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
    const held: Tensor[] = [];
    const keep = <X extends Tensor>(t: X) => {
      held.push(t);
      return t;
    };
    const f32 = (shape: number[]) => keep(empty(shape, { device: this.device }));
    const i32 = (shape: number[]) => keep(empty(shape, { dtype: 'int32', device: this.device }));
    // Receive side of rank d: one slot per home rank s at rows s * cap ..; the moe output over all
    // slots doubles as the combine buffers (home s reads rows s * cap .. of every rank's).
    const recv = Array.from({ length: R }, () => ({
      count: i32([A]),
      x: f32([A * cap, H]),
      idx: i32([A * cap, k]),
      w: f32([A * cap, k]),
      y: f32([A * cap, H]),
    }));
    const rows = (t: Tensor, s: number) => keep(t.narrow(s * cap, cap));
    const mine = (t: Tensor, s: number) => keep(t.narrow(homes[s]!.start, homes[s]!.count));
    // Each home rank's record of where its tokens went (row in each rank's slot, or -1).
    const rowOf = homes.map(h => i32([h.count, R]));

    this.inputsReady.record(stream);
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
      );
      this.dispatched[s]!.record(st);
    }
    for (let d = 0; d < R; d++) {
      const st = this.streams[d]!,
        r = recv[d]!;
      for (let s = 0; s < A; s++) st.waitEvent(this.dispatched[s]!);
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
      );
      this.combined[s]!.record(st);
    }
    for (let s = 0; s < A; s++) stream.waitEvent(this.combined[s]!);
    for (const t of held) t.dispose(); // queued work keeps what it uses
  };

  /** Waits for every rank's queued work (surfacing its errors). */
  synchronize() {
    for (const s of this.streams) s.synchronize();
  }

  dispose() {
    this.synchronize();
    for (const s of this.streams) s.dispose();
  }
}
