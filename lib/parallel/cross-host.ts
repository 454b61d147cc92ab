// Expert parallelism across hosts through NCCL (DESIGN "Multi-device", issue 14 item 5), SPMD as
// torchrun runs it: every host runs one process with the same program, and loadModel(dir, { nccl })
// makes this process host `rank` of `worldSize` (lib/parallel/nccl.ts bootstraps the communicator).
// Each layer's routed experts split into worldSize equal contiguous blocks; this host loads only its
// own block (placement.ts rankExperts). Everything else is replicated, and attention is data-parallel
// between hosts: each host owns its own sequences and their KV pages.
//
// At each MoE layer's rendezvous (the forward pass's yield, longcat-flash.ts), every host runs one
// exchange (exchange()), all of them on the host's exchange stream:
//   dispatch  the home host's tokens go into one send slot per host (epDispatch: a token once per
//             host that owns one of its chosen FFN experts, with its routing weights in that host's
//             local ids; zero-expert slots never leave the home host);
//   counts    one NCCL group: every host sends every host (itself too) a header [step, layer,
//             layers, rows]; a header whose step, layer or layer count is not this host's is E_NCCL
//             (a host out of step, or one with another model);
//   payload   one NCCL group: the rows, local expert ids and weights each host sent, packed by
//             source host; the host runs the grouped expert GEMM (moe) over its own experts on them;
//   return    one NCCL group: each partial row goes back to its home host;
//   combine   the home host adds the partials in host order 0, 1, .., then its zero experts
//             (epCombine) -- deterministic, whatever order the hosts answered in.
// Transfers of zero rows are not made (both sides know the count from the headers). Counts go
// first so that only the rows really routed cross the network (a fixed capacity would send the
// worst case, every token to every host, each layer); the price is a host wait between the groups.
// One rank per host for now: with several local ranks, each would need its own communicator and
// one NCCL group over all of them per phase (NCCL's rule for a thread driving several ranks).
//
// The contract: forward (and a zero-sequence forward of a host with nothing to do) is a collective
// call. Every host calls it in the same order, the same number of times; a host with no sequences
// calls forward([], []), which takes part in every layer's exchange with zero tokens, and a host
// whose own part fails (before or between its exchanges) runs the rest of the step's exchanges
// with zero tokens before it throws (collective()), so the others' step completes. Each wait for
// the other hosts is bounded (timeoutMs): past it the communicator is aborted and the step fails
// with E_NCCL. Any failure of an exchange (a peer's abort, an out-of-step header, a timeout) aborts
// the communicator, so every host's step fails with E_NCCL rather than waiting on a dead peer; the
// model then stays unusable across hosts (NCCL's rule: an aborted communicator is not reused) and
// must be loaded again. Decode steps run eagerly (the counts are read on the host between the
// groups, which a captured graph cannot do), and speculative steps are not available across hosts.
import { native } from '../native.js';
import { type Tensor, empty, tensor, toArray } from '../tensor.js';
import { Event, Stream } from '../device.js';
import { ArgumentError, LongcatError, NcclError } from '../errors.js';
import type { MoeExpertSet } from '../../types/ops-moe.js';
import type { ExpertsFn } from '../model/step.js';
import type { NcclComm } from './nccl.js';
import type { HomeCall } from './expert-parallel.js';
import { receivedExperts } from './placement.js';

/** The sizes of the exchange: the model's. */
export interface CrossHostDims {
  hidden: number;
  topk: number;
  nRouted: number;
  /** Routed + zero experts (the router's ids). */
  nExperts: number;
  /** MoE layers per forward (a host whose model has another count is out of step at once). */
  layers: number;
}

/** One layer's MoE call of this host (its Step.experts' arguments; one host is one rank). */
type HostCall = Omit<HomeCall, 'rank'>;

/** Errors that already say where they happened (thrown on as they are). */
const own = new WeakSet<Error>();

/** The default bound on a wait for the other hosts (PyTorch's NCCL timeout is 10 minutes too). */
export const DEFAULT_TIMEOUT_MS = 600_000;

export class CrossHostExperts {
  readonly hosts: number;
  readonly host: number;
  /** Routed experts per host (this host holds host * perHost .. (host + 1) * perHost - 1). */
  readonly perHost: number;
  /** Where the exchange's transfers and expert GEMM run. */
  private readonly stream: Stream;
  private readonly done: Event;
  private readonly joined: Event;
  private step = 0;
  private layer = 0;
  private pending: HostCall | null = null;
  private failure: string | null = null;
  private readonly nap = new Int32Array(new SharedArrayBuffer(4));

  constructor(
    readonly comm: NcclComm,
    readonly device: string,
    private readonly dims: CrossHostDims,
    /** Layer l's routed experts on this host (its block; used when this host has no tokens). */
    private readonly localExperts: (layer: number) => MoeExpertSet,
    readonly timeoutMs = DEFAULT_TIMEOUT_MS,
  ) {
    if (!(Number.isFinite(timeoutMs) && timeoutMs > 0))
      throw new ArgumentError('E_ARGUMENT', `nccl: timeoutMs must be a positive number of milliseconds, got ${timeoutMs}`);
    this.hosts = comm.worldSize;
    this.host = comm.rank;
    this.perHost = dims.nRouted / this.hosts;
    this.stream = new Stream(device);
    this.done = new Event(device);
    this.joined = new Event(device);
  }

  /** This host's Step.experts: records the layer's call for exchange() (one local rank). */
  readonly expertsFn: ExpertsFn = (stream, out, u, idx, weights, experts, nExperts) => {
    if (this.pending) throw new ArgumentError('E_ARGUMENT', 'cross-host expert parallelism: two MoE calls in one layer');
    this.pending = { stream, out, u, idx, weights, experts, nExperts };
  };

  /**
   * One collective step (every host's forward): `fn` runs this host's part, whose MoE layers call
   * exchange(). Whatever `fn` leaves undone -- a host with no sequences, or one whose own part
   * failed (a bad argument, a full KV pool) before or between its exchanges -- runs as exchanges
   * with zero tokens of this host (finishIdle), so the other hosts' step completes (the tokens they
   * send here are still served) and every host stays in step; `fn`'s error is then thrown. E_NCCL,
   * without running `fn`, once the communicator was aborted.
   */
  collective<R>(layers: number, fn: () => R): R {
    if (this.failure) throw new NcclError('E_NCCL', `cross-host expert parallelism: ${this.failure}; load the model again`);
    this.step++;
    this.layer = 0;
    this.pending = null;
    let r: R;
    try {
      r = fn();
    } catch (e) {
      try {
        this.finishIdle(layers);
      } catch {
        // the step's own error is the one reported
      }
      throw e;
    }
    if (this.layer !== layers)
      throw new LongcatError('E_INTERNAL', `cross-host step: ${this.layer} of ${layers} layers exchanged`);
    return r;
  }

  /** The rest of this step's `layers` exchanges with zero tokens of this host. */
  finishIdle(layers: number) {
    this.pending = null;
    while (this.layer < layers) this.exchange();
  }

  /** Gives the communicator up (every host's current or next exchange fails with E_NCCL). */
  abort(reason = 'this host aborted the communicator') {
    this.failure ??= reason;
    this.comm.abort();
  }

  /** This layer's exchange (the rendezvous): queues the combine into the home call's output. */
  exchange() {
    const call = this.pending;
    this.pending = null;
    const layer = this.layer++;
    const held: Tensor[] = [];
    const keep = <X extends Tensor>(t: X) => {
      held.push(t);
      return t;
    };
    try {
      if (this.failure) throw new Error(`the communicator was aborted (${this.failure})`);
      this.exchangeLayer(call, layer, keep);
    } catch (e) {
      const why = e instanceof Error ? e.message : String(e);
      const first = !this.failure;
      this.abort(`step ${this.step} layer ${layer} failed: ${why}`);
      try {
        this.stream.synchronize();
      } catch {
        // the exchange's own error is the one reported
      }
      if (own.has(e as Error)) throw e;
      throw new NcclError(
        'E_NCCL',
        `cross-host expert parallelism: host ${this.host} of ${this.hosts}, step ${this.step} layer ${layer}: ${why}` +
          (first ? ' (the communicator was aborted)' : ''),
        { cause: e },
      );
    } finally {
      for (const t of held) t.dispose(); // queued work keeps what it uses
    }
  }

  private exchangeLayer(call: HostCall | null, layer: number, keep: <X extends Tensor>(t: X) => X) {
    const W = this.hosts,
      H = this.dims.hidden,
      k = this.dims.topk,
      per = this.perHost,
      dev = this.device,
      s = this.stream;
    const T = call ? call.u.shape[0]! : 0;
    if (call && (call.u.shape[1] !== H || call.idx.shape[1] !== k || call.nExperts !== this.dims.nExperts))
      throw new ArgumentError('E_ARGUMENT', 'cross-host expert parallelism: the MoE call does not match the model');
    const f32 = (shape: number[]) => keep(empty(shape, { device: dev }));
    const i32 = (shape: number[]) => keep(empty(shape, { dtype: 'int32', device: dev }));

    // dispatch: send slot d holds the tokens for host d (cap = T: a token goes to a host at most once)
    const cap = Math.max(T, 1);
    const sendCount = i32([W]),
      sx = f32([W * cap, H]),
      sIdx = i32([W * cap, k]),
      sW = f32([W * cap, k]);
    let rowOf: Tensor | null = null;
    const sent = new Array<number>(W).fill(0);
    if (call) {
      this.joined.record(call.stream);
      s.waitEvent(this.joined);
      rowOf = i32([T, W]);
      const slot = (t: Tensor, d: number) => keep(t.narrow(d * cap, cap));
      native.epDispatch(
        s,
        call.u,
        call.idx,
        call.weights,
        this.dims.nRouted,
        call.nExperts,
        per,
        rowOf,
        Array.from({ length: W }, (_, d) => keep(sendCount.narrow(d, 1))),
        Array.from({ length: W }, (_, d) => slot(sx, d)),
        Array.from({ length: W }, (_, d) => slot(sIdx, d)),
        Array.from({ length: W }, (_, d) => slot(sW, d)),
      );
      this.wait('dispatch', layer);
      (toArray(sendCount) as Int32Array).forEach((n, d) => {
        sent[d] = n;
      });
    }

    // counts: a header [step, layer, layers, rows] to and from every host
    const L = this.dims.layers;
    const head = new Int32Array(4 * W);
    for (let d = 0; d < W; d++) head.set([this.step, layer, L, sent[d]!], 4 * d);
    const sendHead = keep(tensor(head, [W, 4], { dtype: 'int32', device: dev })),
      recvHead = i32([W, 4]);
    this.comm.group(() => {
      for (let d = 0; d < W; d++) {
        this.comm.send(keep(sendHead.narrow(d, 1)), d);
        this.comm.recv(keep(recvHead.narrow(d, 1)), d);
      }
    }, s);
    this.wait('the counts', layer);
    const heads = toArray(recvHead) as Int32Array;
    const got = new Array<number>(W).fill(0),
      at = new Array<number>(W).fill(0);
    let N = 0;
    for (let q = 0; q < W; q++) {
      const st = heads[4 * q]!,
        ly = heads[4 * q + 1]!,
        nl = heads[4 * q + 2]!,
        n = heads[4 * q + 3]!;
      if (st !== this.step || ly !== layer || nl !== L)
        throw new Error(
          `host ${q} is at step ${st} layer ${ly} of ${nl}, host ${this.host} at step ${this.step} layer ${layer} of ${L}: ` +
            'forward is a collective call (every host loads the same model and calls it in the same order; ' +
            'a host with no sequences calls forward([], []))',
        );
      if (!(n >= 0 && n <= 2 ** 30)) throw new Error(`host ${q} announced ${n} rows`);
      got[q] = n;
      at[q] = N;
      N += n;
    }

    // payload: the rows each host sent, packed by source host, through this host's experts
    const rx = f32([Math.max(N, 1), H]),
      rIdx = i32([Math.max(N, 1), k]),
      rW = f32([Math.max(N, 1), k]),
      y = f32([Math.max(N, 1), H]);
    const rows = (t: Tensor, first: number, n: number) => keep(t.narrow(first, n));
    this.comm.group(() => {
      for (let d = 0; d < W; d++) if (sent[d]! > 0) for (const t of [sx, sIdx, sW]) this.comm.send(rows(t, d * cap, sent[d]!), d);
      for (let q = 0; q < W; q++) if (got[q]! > 0) for (const t of [rx, rIdx, rW]) this.comm.recv(rows(t, at[q]!, got[q]!), q);
    }, s);
    if (N > 0) {
      const experts = call?.experts ?? this.localExperts(layer);
      receivedExperts(s, rows(y, 0, N), rows(rx, 0, N), rows(rIdx, 0, N), rows(rW, 0, N), per, experts);
    }

    // return: each partial row to its home host
    const partial = f32([W * cap, H]);
    this.comm.group(() => {
      for (let q = 0; q < W; q++) if (got[q]! > 0) this.comm.send(rows(y, at[q]!, got[q]!), q);
      for (let d = 0; d < W; d++) if (sent[d]! > 0) this.comm.recv(rows(partial, d * cap, sent[d]!), d);
    }, s);
    this.wait('the payload', layer);

    // combine, on the home call's stream, in host order
    if (call) {
      native.epCombine(
        s,
        call.out,
        call.u,
        call.idx,
        call.weights,
        this.dims.nRouted,
        call.nExperts,
        rowOf!,
        Array.from({ length: W }, (_, d) => rows(partial, d * cap, cap)),
      );
      this.joined.record(s);
      call.stream.waitEvent(this.joined);
    }
  }

  /**
   * Waits for the exchange stream, at most timeoutMs; past it the communicator is aborted and the
   * step fails with E_NCCL naming what was waited for. Surfaces the stream's errors (E_NCCL from a
   * transfer a peer's abort failed).
   */
  private wait(what: string, layer: number) {
    this.done.record(this.stream);
    const deadline = performance.now() + this.timeoutMs;
    let nap = 0.05;
    while (!this.done.query()) {
      if (performance.now() > deadline) {
        const why = `no answer from the other hosts for ${this.timeoutMs} ms while exchanging ${what} (step ${this.step} layer ${layer}): every host must call forward in the same order`;
        this.abort(why);
        const e = new NcclError(
          'E_NCCL',
          `cross-host expert parallelism: host ${this.host} of ${this.hosts}: ${why}; the communicator was aborted`,
        );
        own.add(e);
        throw e;
      }
      Atomics.wait(this.nap, 0, 0, nap);
      nap = Math.min(2 * nap, 5);
    }
    this.stream.synchronize();
  }

  /** Ends this host's part (an orderly end: every host's queued transfers first). */
  dispose() {
    try {
      this.stream.synchronize();
    } catch {
      // a failed exchange was reported by its step
    }
    if (this.failure) this.comm.abort();
    else this.comm.dispose();
    this.stream.dispose();
  }
}
