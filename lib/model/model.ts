// The runner of the LongCat-Flash forward pass: owns the KV cache (pages, one latent cache per
// attention sub-layer), the streams and events of the two branches, and the captured decode graphs;
// turns a batch of sequences and new tokens into a Step (positions, cache slots, block tables) and
// runs the architecture (longcat-flash.ts) on it.
import { native } from '../native.js';
import { type Tensor, empty, tensor } from '../tensor.js';
import { Event, Stream } from '../device.js';
import { BlockAllocator, SequenceCache, batchTables } from '../kv-cache.js';
import { ArgumentError, DisposedError, LongcatError, OutOfMemoryError } from '../errors.js';
import type { ModelDims } from './dims.js';
import type { Graph } from '../../types/native.js';
import type { ModelWeights } from './weights.js';
import { forward } from './longcat-flash.js';
import { Arena, type Batch, type Step, type ExpertsFn, localExperts } from './step.js';
import { ExpertParallelGroup } from '../parallel/expert-parallel.js';
import { ShardedExperts } from '../parallel/placement.js';
import { TokenHistory, ngramIds, ngramPowers } from './ngram.js';

/** A captured decode graph's N-gram input on a GPU: the rows are gathered on the host into `staging`
 *  (pinned [E, B, D]), which the graph's first node uploads; `uploaded` is recorded on the main
 *  stream after each replay; `cpu` is the CPU stream the gathers run on. */
interface NgramStaging {
  staging: Tensor;
  uploaded: Event;
  cpu: Stream;
}

export interface ModelOptions {
  device: string;
  /** Tokens per KV-cache block. */
  blockSize?: number;
  /** Blocks in the shared KV pool (default: enough for maxContext tokens of 4 sequences, capped). */
  numBlocks?: number;
  cacheDtype?: 'f32' | 'bf16';
  maxContext?: number;
  /** Replay decode steps from captured graphs (default true). */
  graphs?: boolean;
  /** Run the shortcut MoE on its own stream, overlapping the dense branch (default true; false runs
   *  it in order on the main stream, e.g. to measure what the overlap buys). */
  overlapMoe?: boolean;
  /** Expert parallelism over this many ranks (default 1: off; or rankDevices' length); the
   *  weights' routed experts must be split to match (loadWeights' expertDevices). */
  ranks?: number;
  /** Called before each forward pass; throws when the weights' backing can no longer be trusted
   *  (loadModel passes the checkpoint's verify() while the weights are memory-mapped shards). */
  verifyWeights?: () => void;
  /** Rank r's device (default: every rank on `device`: CPU ranks, or virtual ranks of one CUDA
   *  device). CUDA ranks on other devices need peer access to and from `device` and each other
   *  (native.enablePeerAccess). */
  rankDevices?: readonly string[];
}

export interface ForwardResult {
  /** f32 [rows, vocab]: every token's row (`allLogits`), else each sequence's last token. */
  logits: Tensor;
  /** Per layer int32 [T] counts of FFN experts chosen, when `collectRouting` was asked. */
  nFfn: Tensor[];
}

export class LongcatModel {
  readonly dims: ModelDims;
  readonly device: string;
  readonly blockSize: number;
  readonly maxContext: number;
  readonly allocator: BlockAllocator;
  /** The weights as the forward pass uses them (read-only; benchmarks and tests inspect them). */
  readonly w: ModelWeights;
  private readonly caches: Tensor[];
  private readonly main: Stream;
  private readonly moeStream: Stream;
  private readonly events: (readonly [Event, Event])[];
  private readonly invFreq: Tensor;
  private readonly maxBlocks: number;
  private readonly useGraphs: boolean;
  /** The ranks the routed experts are split across, when expert parallelism is on. */
  private readonly ep: ExpertParallelGroup | null;
  private readonly experts: ExpertsFn;
  private readonly decodeGraphs = new Map<
    number,
    { graph: Graph; inputs: Tensor; batch: Batch; out: ForwardResult; host: Int32Array; ngram: NgramStaging | null }
  >();
  /** N-gram models: vocab^k modulo each table size (SPEC-LITE 3.1). */
  private readonly ngramPowers: number[][] | null;
  /** N-gram models: each sequence's raw token ids by position (rolled back with its KV pages). */
  private readonly histories = new WeakMap<SequenceCache, TokenHistory>();
  private disposed = false;
  private readonly verifyWeights: (() => void) | undefined;

  constructor(dims: ModelDims, weights: ModelWeights, opts: ModelOptions) {
    const ranks = opts.ranks ?? opts.rankDevices?.length ?? 1;
    if (!Number.isInteger(ranks) || ranks < 1)
      throw new ArgumentError('E_ARGUMENT', `LongcatModel: ranks must be a whole number >= 1, got ${ranks}`);
    if (opts.rankDevices && opts.rankDevices.length !== ranks)
      throw new ArgumentError(
        'E_ARGUMENT',
        `LongcatModel: ranks: ${ranks} but rankDevices names ${opts.rankDevices.length} devices (one per rank)`,
      );
    if (ranks > 1 && !weights.layers.every(l => l.moe.experts instanceof ShardedExperts && l.moe.experts.shards.length === ranks))
      throw new ArgumentError(
        'E_ARGUMENT',
        `LongcatModel: ranks: ${ranks} needs every layer's routed experts split into ${ranks} shards (loadWeights' expertDevices)`,
      );
    this.dims = dims;
    this.w = weights;
    this.device = opts.device;
    this.blockSize = opts.blockSize ?? 64;
    if (opts.maxContext !== undefined && (!Number.isInteger(opts.maxContext) || opts.maxContext < 1))
      throw new ArgumentError('E_ARGUMENT', `LongcatModel: maxContext must be an integer >= 1, got ${opts.maxContext}`);
    this.maxContext = Math.min(opts.maxContext ?? dims.maxContext, dims.maxContext);
    const blocksPerSeq = Math.ceil(this.maxContext / this.blockSize);
    this.maxBlocks = blocksPerSeq;
    this.useGraphs = opts.graphs ?? true;
    const numBlocks = opts.numBlocks ?? Math.min(4 * blocksPerSeq, 4096);
    this.allocator = new BlockAllocator(numBlocks);
    const width = dims.kvLora + dims.rope,
      cacheDtype = opts.cacheDtype ?? 'bf16';
    this.caches = [];
    try {
      for (let i = 0; i < 2 * dims.layers; i++)
        this.caches.push(empty([numBlocks, this.blockSize, width], { dtype: cacheDtype, device: this.device }));
    } catch (e) {
      for (const c of this.caches) c.dispose();
      if (!(e instanceof LongcatError) || e.code !== 'E_OOM') throw e;
      const bytes = 2 * dims.layers * numBlocks * this.blockSize * width * (cacheDtype === 'bf16' ? 2 : 4);
      throw new OutOfMemoryError(
        'E_OOM',
        `the KV cache does not fit on ${this.device}: ${2 * dims.layers} latent caches of ` +
          `${numBlocks} blocks x ${this.blockSize} x ${width} ${cacheDtype} = ${(bytes / 2 ** 30).toFixed(2)} GiB. ` +
          `Pass a smaller cacheBlocks or maxContext${cacheDtype === 'f32' ? " (or cacheDtype 'bf16')" : ''}.`,
        { cause: e },
      );
    }
    // The dense branch runs on the default stream, so that null-stream ops on the results
    // (sampling, reading logits) are ordered after the forward pass.
    this.main = native.defaultStream(this.device);
    // The shortcut MoE gets its own stream (the device pool fences blocks freed while several
    // streams run, so a temporary of one branch is never reused under the other's kernels).
    this.moeStream = opts.overlapMoe === false ? this.main : new Stream(this.device);
    this.events = Array.from({ length: dims.layers }, () => [new Event(this.device), new Event(this.device)] as const);
    this.invFreq = tensor(dims.invFreq, [dims.invFreq.length], { device: this.device });
    this.ep = ranks > 1 ? new ExpertParallelGroup(opts.rankDevices ?? Array(ranks).fill(this.device), this.device) : null;
    this.experts = this.ep ? this.ep.experts : localExperts;
    this.verifyWeights = opts.verifyWeights;
    this.ngramPowers = dims.ngram ? ngramPowers(dims.ngram) : null;
  }

  /** The expert-parallel group when expert parallelism is on (tests inject faults through it). */
  get expertParallel(): ExpertParallelGroup | null {
    return this.ep;
  }

  /** A new empty sequence in this model's KV cache. */
  newSequence(maxContext = this.maxContext): SequenceCache {
    return new SequenceCache(this.allocator, this.blockSize, Math.min(maxContext, this.maxContext));
  }

  /**
   * Runs the model on new tokens of several sequences at once: tokens[b] are appended to seqs[b]
   * (their KV entries are written to the cache). Decode (the absorbed MLA) is used when every
   * sequence gets exactly one token, unless `mode` forces one.
   */
  forward(
    seqs: SequenceCache[],
    tokens: number[][],
    opts: { allLogits?: boolean; collectRouting?: boolean; mode?: 'prefill' | 'decode' } = {},
  ): ForwardResult {
    if (this.disposed) throw new DisposedError('E_DISPOSED', 'LongcatModel.forward: the model was disposed');
    this.verifyWeights?.();
    if (!Array.isArray(seqs) || !Array.isArray(tokens) || !tokens.every(t => Array.isArray(t)))
      throw new ArgumentError('E_ARGUMENT', 'forward: sequences must be an array and tokens an array of token-id arrays');
    if (seqs.length !== tokens.length || seqs.length === 0)
      throw new ArgumentError('E_ARGUMENT', `forward: ${seqs.length} sequences but ${tokens.length} token lists`);
    const d = this.dims;
    for (const [b, list] of tokens.entries()) {
      if (list.length === 0) throw new ArgumentError('E_ARGUMENT', `forward: sequence ${b} has no new tokens`);
      for (const id of list)
        if (!Number.isInteger(id) || id < 0 || id >= d.vocab)
          throw new ArgumentError(
            'E_ARGUMENT',
            `forward: token id ${id} of sequence ${b} is outside the vocabulary [0, ${d.vocab})`,
          );
    }
    const mode = opts.mode ?? (tokens.every(t => t.length === 1) ? 'decode' : 'prefill');
    if (mode === 'decode' && !tokens.every(t => t.length === 1))
      throw new ArgumentError('E_ARGUMENT', 'forward: decode mode takes exactly one new token per sequence');

    this.moeStream.synchronize(); // the previous step's MoE work is done; this surfaces its errors
    this.ep?.synchronize();
    const pastLens = seqs.map(s => s.length);
    // Reserve cache slots for every sequence first (E_CONTEXT / E_OOM before any work); if
    // anything fails, the sequences are rolled back to their previous lengths.
    const slotLists: Int32Array[] = [];
    try {
      for (const [b, seq] of seqs.entries()) slotLists.push(seq.reserve(tokens[b]!.length));
      const result = this.forwardReserved(seqs, tokens, pastLens, slotLists, mode, opts);
      try {
        this.ep?.endStep(); // E_RANK_FAILED when a rank failed in this step: its results are void
      } catch (e) {
        for (const t of [result.logits, ...result.nFfn]) t.dispose();
        throw e;
      }
      return result;
    } catch (e) {
      try {
        this.ep?.endStep(); // every rank idle and the abort flag lowered: the next step starts clean
      } catch {
        // the step's error is the one to report
      }
      seqs.forEach((seq, b) => {
        if (b < slotLists.length) seq.truncate(pastLens[b]!);
      });
      throw e;
    }
  }

  private forwardReserved(
    seqs: SequenceCache[],
    tokens: number[][],
    pastLens: number[],
    slotLists: Int32Array[],
    mode: 'prefill' | 'decode',
    opts: { allLogits?: boolean; collectRouting?: boolean },
  ): ForwardResult {
    const T = tokens.reduce((a, t) => a + t.length, 0);
    const ids = Int32Array.from(tokens.flat());
    const positions = new Int32Array(T);
    const slots = new Int32Array(T);
    const lastRow = new Int32Array(seqs.length);
    let r = 0;
    for (let b = 0; b < seqs.length; b++) {
      for (let i = 0; i < tokens[b]!.length; i++, r++) {
        positions[r] = pastLens[b]! + i;
        slots[r] = slotLists[b]![i]!;
      }
      lastRow[b] = r - 1;
    }
    const inputs = new Arena(this.device);
    const ngramIds = this.ngramRowIds(seqs, tokens, pastLens);
    if (mode === 'decode' && !opts.allLogits && this.useGraphs) {
      const bt = batchTables(seqs, this.maxBlocks);
      try {
        return this.replayDecode(
          { ids, positions, slots, blockTable: bt.table, seqLens: bt.seqLens, ngramIds },
          !!opts.collectRouting,
        );
      } finally {
        inputs.dispose();
      }
    }

    const batch: Batch = { mode, T, ids: inputs.ints(ids), positions: inputs.ints(positions), slots: inputs.ints(slots) };
    if (ngramIds) {
      const nd = this.dims.ngram!;
      const rows = inputs.keep(empty([nd.tables, T, nd.dim], { dtype: this.w.ngram!.tables[0]!.dtype, device: 'cpu' }));
      this.gatherNgramRows(null, ngramIds, rows);
      batch.ngramRows = this.device === 'cpu' ? rows : inputs.keep(rows.to(this.device)); // to() waits for the gather
    }
    if (mode === 'decode') {
      const bt = batchTables(seqs);
      batch.blockTable = inputs.ints(bt.table, [seqs.length, bt.maxBlocks]);
      batch.seqLens = inputs.ints(bt.seqLens);
    } else {
      const qStart = [0],
        kvStart = [0];
      batch.gathers = [];
      for (let b = 0; b < seqs.length; b++) {
        qStart.push(qStart[b]! + tokens[b]!.length);
        kvStart.push(kvStart[b]! + seqs[b]!.length);
        batch.gathers.push({ table: inputs.ints(seqs[b]!.blockTable()), start: kvStart[b]!, length: seqs[b]!.length });
      }
      batch.qStart = inputs.ints(qStart);
      batch.kvStart = inputs.ints(kvStart);
      batch.kvTotal = kvStart[seqs.length]!;
    }
    if (!opts.allLogits && mode === 'prefill') batch.lastRow = inputs.ints(lastRow);
    const result = this.run(batch, !!opts.collectRouting);
    inputs.dispose();
    return result;
  }

  /**
   * N-gram models: the row of every table for each of the step's T tokens, int32 [E * T] (table e's
   * at e * T..), from each sequence's last N - 1 raw tokens before its new ones, which are recorded
   * at their positions. Null otherwise.
   */
  private ngramRowIds(seqs: SequenceCache[], tokens: number[][], pastLens: number[]): Int32Array | null {
    const nd = this.dims.ngram,
      w = this.w.ngram;
    if (!nd || !w) return null;
    const T = tokens.reduce((a, t) => a + t.length, 0),
      E = nd.tables;
    const ids = new Int32Array(E * T);
    let at = 0;
    for (const [b, seq] of seqs.entries()) {
      let hist = this.histories.get(seq);
      if (!hist) {
        hist = new TokenHistory();
        this.histories.set(seq, hist);
      }
      const list = tokens[b]!,
        n = list.length;
      const local = ngramIds(nd, this.ngramPowers!, hist.context(pastLens[b]!, nd.context), list);
      for (let e = 0; e < E; e++) ids.set(local.subarray(e * n, (e + 1) * n), e * T + at);
      hist.record(pastLens[b]!, list);
      at += n;
    }
    return ids;
  }

  /**
   * Queues on the CPU stream `cpu` (null: the default) the gather of the rows `ids` (ngramRowIds)
   * from the mapped tables into `into`, a host tensor [E, T, D] of the tables' dtype.
   */
  private gatherNgramRows(cpu: Stream | null, ids: Int32Array, into: Tensor) {
    const w = this.w.ngram!,
      [E, T, D] = into.shape as [number, number, number];
    const flat = into.view([E * T, D]);
    const idx = tensor(ids, [E * T], { dtype: 'int32', device: 'cpu' });
    for (let e = 0; e < E; e++) {
      const part = flat.narrow(e * T, T),
        pick = idx.narrow(e * T, T);
      native.gatherRows(cpu, part, w.tables[e]!, pick); // the queued gather keeps its tensors alive
      part.dispose();
      pick.dispose();
    }
    idx.dispose();
    flat.dispose();
  }

  /**
   * Gathers a decode step's N-gram rows where its graph reads them. On the CPU that is the graph's
   * input tensor itself: the gather is queued on the stream the replay runs on (the main stream is
   * the CPU's default one), so it runs after the previous replay and before this one. On a GPU it
   * is the graph's pinned staging buffer, which the graph's first node uploads: the previous
   * replay's upload must have read it before the gather overwrites it (the host waits for the event
   * recorded after that replay), and the gather must be done before this replay reads it (the host
   * waits for the CPU stream, which also surfaces a gather's error before the replay).
   */
  private stageNgramRows(batch: Batch, ngram: NgramStaging | null, ids: Int32Array) {
    if (!ngram) {
      this.gatherNgramRows(null, ids, batch.ngramRows!);
      return;
    }
    ngram.uploaded.synchronize();
    this.gatherNgramRows(ngram.cpu, ids, ngram.staging);
    ngram.cpu.synchronize();
  }

  /** Queues the whole forward pass for the batch described by `b`. */
  private run(b: Batch, collectRouting: boolean): ForwardResult {
    const routing: Tensor[] | null = collectRouting ? [] : null;
    const step: Step = {
      dims: this.dims,
      device: this.device,
      batch: b,
      main: this.main,
      moeStream: this.moeStream,
      moeEvents: this.events,
      caches: this.caches,
      invFreq: this.invFreq,
      experts: this.experts,
      routing,
    };
    return { logits: forward(step, this.w), nFfn: routing ?? [] };
  }

  /**
   * A decode step of B sequences as one graph replay: the step is captured once per batch size
   * with inputs in fixed tensors, then each step only writes those inputs and replays
   * (DESIGN rule 5: no per-op crossing into native code on the hot path).
   */
  private replayDecode(
    host: {
      ids: Int32Array;
      positions: Int32Array;
      slots: Int32Array;
      blockTable: Int32Array;
      seqLens: Int32Array;
      ngramIds: Int32Array | null;
    },
    collectRouting: boolean,
  ): ForwardResult {
    const B = host.ids.length;
    const tableLen = B * this.maxBlocks;
    let g = this.decodeGraphs.get(B);
    if (!g) {
      // All inputs live in one int32 buffer, so a step uploads them with one copy.
      const inputs = empty([4 * B + tableLen], { dtype: 'int32', device: this.device });
      const part = (i: number, n: number) => inputs.narrow(i, n);
      const batch: Batch = {
        mode: 'decode',
        T: B,
        ids: part(0, B),
        positions: part(B, B),
        slots: part(2 * B, B),
        seqLens: part(3 * B, B),
      };
      const table = part(4 * B, tableLen);
      batch.blockTable = table.view([B, this.maxBlocks]);
      table.dispose();
      const nd = this.dims.ngram;
      let ngram: NgramStaging | null = null;
      if (nd && host.ngramIds) {
        const shape = [nd.tables, B, nd.dim],
          dtype = this.w.ngram!.tables[0]!.dtype;
        batch.ngramRows = empty(shape, { dtype, device: this.device });
        if (this.device !== 'cpu')
          ngram = {
            staging: empty(shape, { dtype, device: 'cpu', pinned: true }),
            uploaded: new Event(this.device),
            cpu: native.defaultStream('cpu'),
          };
      }
      let out: ForwardResult | null = null;
      const streams = [
        ...(this.moeStream === this.main ? [this.main] : [this.main, this.moeStream]),
        ...(this.ep?.streams ?? []),
      ];
      const graph = native.captureGraph(streams, () => {
        if (ngram) native.copy(this.main, batch.ngramRows!, ngram.staging); // the step's rows, uploaded by the graph
        out = this.run(batch, true);
      });
      g = { graph, inputs, batch, out: out!, host: new Int32Array(4 * B + tableLen), ngram };
      this.decodeGraphs.set(B, g);
    }
    const { out, host: buf } = g;
    if (host.ngramIds) this.stageNgramRows(g.batch, g.ngram, host.ngramIds);
    buf.set(host.ids, 0);
    buf.set(host.positions, B);
    buf.set(host.slots, 2 * B);
    buf.set(host.seqLens, 3 * B);
    buf.set(host.blockTable, 4 * B);
    g.inputs.copyFromBytes(buf);
    g.graph.replay();
    g.ngram?.uploaded.record(this.main);
    // Fresh handles over the graph's buffers: the caller disposes them, the graph keeps the memory.
    return { logits: out.logits.view(out.logits.shape), nFfn: collectRouting ? out.nFfn.map(t => t.view(t.shape)) : [] };
  }

  /** Frees the KV cache, streams and the tensors the model created (not the checkpoint's). */
  dispose() {
    if (this.disposed) return;
    this.disposed = true;
    this.main.synchronize();
    this.moeStream.synchronize();
    this.ep?.synchronize();
    for (const g of this.decodeGraphs.values()) {
      g.graph.dispose();
      const b = g.batch;
      for (const t of [g.inputs, b.ids, b.positions, b.slots, b.blockTable!, b.seqLens!, g.out.logits, ...g.out.nFfn])
        t.dispose();
      b.ngramRows?.dispose();
      g.ngram?.staging.dispose(); // after the graph: its copy node reads it
    }
    this.decodeGraphs.clear();
    for (const t of [...this.caches, this.invFreq, ...this.w.owned]) t.dispose();
    if (this.moeStream !== this.main) this.moeStream.dispose();
    this.ep?.dispose();
  }
}
