// The runner of the LongCat-Flash forward pass: owns the KV cache (pages, one latent cache per
// attention sub-layer), the streams and events of the two branches, and the captured decode graphs;
// turns a batch of sequences and new tokens into a Step (positions, cache slots, block tables) and
// runs the architecture (longcat-flash.ts) on it.
import { native } from '../native.js';
import { type Tensor, empty, tensor, toArrayAsync } from '../tensor.js';
import { Event, Stream } from '../device.js';
import { BlockAllocator, type CacheDtype, SequenceCache, batchTables, latentCacheRow, matchPrefix } from '../kv-cache.js';
import { ArgumentError, DisposedError, LongcatError, OutOfMemoryError } from '../errors.js';
import type { ModelDims } from './dims.js';
import type { Graph } from '../../types/native.js';
import type { ModelWeights } from './weights.js';
import { forward, mtpForward } from './longcat-flash.js';
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
  /** The latent cache's format (default 'bf16'; kv-cache.ts latentCacheRow). */
  cacheDtype?: CacheDtype;
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
  /** f32 [T, hidden]: the post-norm hidden states of every new token, when `hidden` was asked. */
  hidden?: Tensor;
}

export interface ForwardOptions {
  /** Logits of every new token (prefill; decode always returns every row's). */
  allLogits?: boolean;
  collectRouting?: boolean;
  /** 'decode': the absorbed attention, one query row per new token (several per sequence verify
   *  drafts); 'prefill': the expanded form. Default: decode when every sequence gets one token. */
  mode?: 'prefill' | 'decode';
  /** Also return the post-norm hidden states (what the MTP head reads). */
  hidden?: boolean;
  /** Decode op by op instead of replaying the captured step (tests compare the two). */
  eager?: boolean;
}

/** How a sequence samples (GenerateOptions' fields; temperature 0 = greedy). */
export interface SamplingParams {
  temperature: number;
  topK: number;
  topP: number;
  minP: number;
  seed: number;
}

/** What a speculative step committed, per sequence. */
export interface SpeculativeStep {
  /** The accepted drafts, then the correction (or, all accepted, the bonus token): accepted + 1 tokens. */
  tokens: number[][];
  accepted: number[];
  /** The MTP head's draft of the token after each sequence's last one. */
  drafts: number[];
  /** Per layer int32 [2B]: FFN experts chosen at each verified row (row 2b + j: sequence b, token j). */
  nFfn: Tensor[];
  /** Milliseconds of host work in this call: before the replay and after the read-back (bench/speculative.mjs). */
  hostMs?: number;
}

interface SpeculativeGraph {
  graph: Graph;
  inputs: Tensor;
  batch: Batch;
  host: Int32Array;
  outputs: Tensor;
  nFfn: Tensor[];
  /** Views over inputs / outputs, disposed with the graph. */
  parts: Tensor[];
  ngram: NgramStaging | null;
}

/** Sampling settings as the sampleSpeculative op reads them: per sequence int32 [temperature bits,
 *  topK, topP bits, minP bits, seed low 32 bits, seed high 32 bits]. */
function packSampling(sampling: readonly SamplingParams[], out: Int32Array) {
  const f = new Float32Array(out.buffer, out.byteOffset, out.length);
  sampling.forEach((p, b) => {
    const o = 6 * b;
    f[o] = p.temperature;
    out[o + 1] = p.topK;
    f[o + 2] = p.topP;
    f[o + 3] = p.minP;
    out[o + 4] = (p.seed % 2 ** 32) | 0;
    out[o + 5] = Math.floor(p.seed / 2 ** 32) | 0;
  });
}

/**
 * The row counts (decode) or sequence counts (speculative steps) captured graphs are made for:
 * 1, 2, 4, multiples of 8 up to 256, then multiples of 64 (vLLM's sizes). A batch of another size
 * replays the graph of the next size up, padded with inert rows (padRows), so a server's churn of
 * batch sizes captures a few dozen graphs at most (35 up to 256 rows), not one per size.
 */
export function graphBucket(n: number): number {
  if (n <= 2) return n;
  if (n <= 4) return 4;
  return n <= 256 ? Math.ceil(n / 8) * 8 : Math.ceil(n / 64) * 64;
}

/** The most padding rows a captured step adds: 63 sequences of a speculative step's 2 rows each. */
const MAX_PAD_ROWS = 2 * 63;

/** A decode step's rows on the host: one row per new token (several per sequence when verifying drafts). */
interface DecodeRows {
  ids: Int32Array;
  positions: Int32Array;
  slots: Int32Array;
  /** [T, maxBlocks]: row t's sequence's block table. */
  blockTable: Int32Array;
  /** Row t sees the cache up to and including its own position. */
  seqLens: Int32Array;
  /** N-gram models: the rows of every table for each row (ngramRowIds). */
  ngramIds: Int32Array | null;
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
  /** The first of MAX_PAD_ROWS cache slots past the allocator's blocks, which only the padding rows
   *  of a captured step write (each its own slot); no sequence's block table ever names them. */
  private readonly padSlot: number;
  /** The ranks the routed experts are split across, when expert parallelism is on. */
  private readonly ep: ExpertParallelGroup | null;
  private readonly experts: ExpertsFn;
  private readonly decodeGraphs = new Map<
    number,
    { graph: Graph; inputs: Tensor; batch: Batch; out: Required<ForwardResult>; host: Int32Array; ngram: NgramStaging | null }
  >();
  /** The captured speculative steps, by batch size. */
  private readonly specGraphs = new Map<number, SpeculativeGraph>();
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
    this.padSlot = numBlocks * this.blockSize;
    const cacheBlocks = numBlocks + Math.ceil(MAX_PAD_ROWS / this.blockSize);
    const cacheDtype = opts.cacheDtype ?? 'bf16',
      row = latentCacheRow(dims.kvLora, dims.rope, cacheDtype);
    this.caches = [];
    try {
      for (let i = 0; i < this.cacheCount; i++)
        this.caches.push(empty([cacheBlocks, this.blockSize, row.width], { dtype: row.dtype, device: this.device }));
    } catch (e) {
      for (const c of this.caches) c.dispose();
      if (!(e instanceof LongcatError) || e.code !== 'E_OOM') throw e;
      const bytes = this.cacheCount * cacheBlocks * this.blockSize * row.bytes;
      // the smaller formats these sizes allow, with their bytes per token
      const fp8 = dims.kvLora % 128 === 0 && dims.rope % 2 === 0;
      const order: CacheDtype[] = ['f32', 'bf16', 'fp8'];
      const smaller = order.slice(order.indexOf(cacheDtype) + 1).filter(t => t !== 'fp8' || fp8);
      const alt = smaller.map(t => `${t} ${latentCacheRow(dims.kvLora, dims.rope, t).bytes}`);
      throw new OutOfMemoryError(
        'E_OOM',
        `the KV cache does not fit on ${this.device}: ${this.cacheCount} latent caches of ` +
          `${numBlocks} blocks x ${this.blockSize} x ${row.width} ${cacheDtype} = ${(bytes / 2 ** 30).toFixed(2)} GiB ` +
          `(${row.bytes} bytes per token and cache${alt.length ? `; ${alt.join(', ')}` : ''}). ` +
          `Pass a smaller cacheBlocks or maxContext${smaller.length ? ` (or cacheDtype ${smaller.map(t => `'${t}'`).join(' or ')})` : ''}.`,
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

  /** One latent cache per attention sub-layer: 2 per layer, and the MTP head's last. */
  private get cacheCount(): number {
    return 2 * this.dims.layers + (this.w.mtp ? 1 : 0);
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
  forward(seqs: SequenceCache[], tokens: number[][], opts: ForwardOptions = {}): ForwardResult {
    if (this.disposed) throw new DisposedError('E_DISPOSED', 'LongcatModel.forward: the model was disposed');
    this.verifyWeights?.();
    if (!Array.isArray(seqs) || !Array.isArray(tokens) || !tokens.every(t => Array.isArray(t)))
      throw new ArgumentError('E_ARGUMENT', 'forward: sequences must be an array and tokens an array of token-id arrays');
    if (seqs.length !== tokens.length || seqs.length === 0)
      throw new ArgumentError('E_ARGUMENT', `forward: ${seqs.length} sequences but ${tokens.length} token lists`);
    this.checkTokens('forward', tokens);
    const mode = opts.mode ?? (tokens.every(t => t.length === 1) ? 'decode' : 'prefill');

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
        for (const t of [result.logits, ...result.nFfn, ...(result.hidden ? [result.hidden] : [])]) t.dispose();
        throw e;
      }
      return result;
    } catch (e) {
      this.abandonStep(seqs, pastLens, slotLists.length);
      throw e;
    }
  }

  /** Every sequence's new tokens: at least one, each an id of the vocabulary (typed errors naming it). */
  private checkTokens(what: string, tokens: readonly (readonly number[])[]) {
    const V = this.dims.vocab;
    for (const [b, list] of tokens.entries()) {
      if (list.length === 0) throw new ArgumentError('E_ARGUMENT', `${what}: sequence ${b} has no new tokens`);
      for (const id of list)
        if (!Number.isInteger(id) || id < 0 || id >= V)
          throw new ArgumentError('E_ARGUMENT', `${what}: token id ${id} of sequence ${b} is outside the vocabulary [0, ${V})`);
    }
  }

  /** A step that failed: every rank idle and the abort flag lowered (so the next step starts clean),
   *  and the first `reserved` sequences rolled back to their lengths before it. */
  private abandonStep(seqs: SequenceCache[], pastLens: number[], reserved: number) {
    try {
      this.ep?.endStep();
    } catch {
      // the step's error is the one to report
    }
    seqs.forEach((seq, b) => {
      if (b < reserved) seq.truncate(pastLens[b]!);
    });
  }

  private forwardReserved(
    seqs: SequenceCache[],
    tokens: number[][],
    pastLens: number[],
    slotLists: Int32Array[],
    mode: 'prefill' | 'decode',
    opts: ForwardOptions,
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
    const counts = tokens.map(t => t.length);
    if (mode === 'decode' && this.useGraphs && !opts.eager) {
      const rt = batchTables(seqs, this.maxBlocks, counts);
      try {
        const out = this.replayDecode({ ids, positions, slots, blockTable: rt.table, seqLens: rt.seqLens, ngramIds });
        const view = (t: Tensor) => t.narrow(0, T); // the step's rows, fresh handles: the caller disposes them, the graph keeps the memory
        return {
          logits: view(out.logits),
          nFfn: opts.collectRouting ? out.nFfn.map(view) : [],
          ...(opts.hidden ? { hidden: view(out.hidden) } : {}),
        };
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
      const rt = batchTables(seqs, undefined, counts);
      batch.blockTable = inputs.ints(rt.table, [T, rt.maxBlocks]);
      batch.seqLens = inputs.ints(rt.seqLens);
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
    const { hidden, ...result } = this.run(batch, !!opts.collectRouting);
    inputs.dispose();
    if (opts.hidden) return { ...result, hidden };
    hidden.dispose();
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

  /** The Step of a batch: where the architecture's ops run. */
  private step(b: Batch, routing: Tensor[] | null): Step {
    return {
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
  }

  /** Queues the whole forward pass for the batch described by `b`. */
  private run(b: Batch, collectRouting: boolean): Required<ForwardResult> {
    const routing: Tensor[] | null = collectRouting ? [] : null;
    const { logits, hidden } = forward(this.step(b, routing), this.w);
    return { logits, hidden, nFfn: routing ?? [] };
  }

  /** The streams a captured step records: both branches and the expert-parallel ranks'. */
  private get captureStreams(): Stream[] {
    return [...(this.moeStream === this.main ? [this.main] : [this.main, this.moeStream]), ...(this.ep?.streams ?? [])];
  }

  /**
   * A decode step of T rows as one graph replay: the step is captured once per bucket of row
   * counts (graphBucket) with inputs in fixed tensors, then each step only writes those inputs and
   * replays (DESIGN rule 5: no per-op crossing into native code on the hot path). Returns the
   * graph's own outputs, all Tp = graphBucket(T) rows (the first T are the step's).
   */
  private replayDecode(host: DecodeRows): Required<ForwardResult> {
    const Tp = graphBucket(host.ids.length);
    let g = this.decodeGraphs.get(Tp);
    if (!g) {
      const { inputs, batch, ngram } = this.decodeInputs(Tp, host.ngramIds !== null);
      let out: Required<ForwardResult> | null = null;
      const graph = native.captureGraph(this.captureStreams, () => {
        if (ngram) native.copy(this.main, batch.ngramRows!, ngram.staging); // the step's rows, uploaded by the graph
        out = this.run(batch, true);
      });
      g = { graph, inputs, batch, out: out!, host: new Int32Array(inputs.shape[0]!), ngram };
      this.decodeGraphs.set(Tp, g);
    }
    this.writeDecodeInputs(g, this.padRows(host, Tp, 1));
    g.graph.replay();
    g.ngram?.uploaded.record(this.main);
    return g.out;
  }

  /**
   * The rows of a step padded to Tp for a captured graph of that size. Padding row T + i repeats
   * row i % group (group: the rows of one sequence, 1 for decode, 2 for a speculative step's
   * pair): the same token, position, block table and length, so it attends the same cache rows,
   * routes to the same experts (no extra expert bytes) and computes a copy of that row's results,
   * which the caller never reads -- but writes its latents to a slot of its own past the
   * allocator's blocks (padSlot), never to a page of a real sequence.
   */
  private padRows(host: DecodeRows, Tp: number, group: number): DecodeRows {
    const T = host.ids.length;
    if (Tp === T) return host;
    if (Tp - T > MAX_PAD_ROWS) throw new Error(`padRows: ${Tp - T} padding rows > ${MAX_PAD_ROWS}`); // graphBucket's bound
    const mb = this.maxBlocks;
    const pad = (a: Int32Array, width = 1) => {
      const out = new Int32Array(Tp * width);
      out.set(a);
      for (let r = T; r < Tp; r++) out.copyWithin(r * width, ((r - T) % group) * width, (((r - T) % group) + 1) * width);
      return out;
    };
    const slots = pad(host.slots);
    for (let r = T; r < Tp; r++) slots[r] = this.padSlot + r - T;
    let ngram: Int32Array | null = null;
    if (host.ngramIds) {
      const E = host.ngramIds.length / T;
      ngram = new Int32Array(E * Tp);
      for (let e = 0; e < E; e++) ngram.set(pad(host.ngramIds.subarray(e * T, (e + 1) * T)), e * Tp);
    }
    return {
      ids: pad(host.ids),
      positions: pad(host.positions),
      slots,
      blockTable: pad(host.blockTable, mb),
      seqLens: pad(host.seqLens),
      ngramIds: ngram,
    };
  }

  /** How many decode and speculative graphs are captured (bounded by graphBucket's sizes). */
  get capturedGraphs(): { decode: number; speculative: number } {
    return { decode: this.decodeGraphs.size, speculative: this.specGraphs.size };
  }

  /** The fixed input tensors of a captured decode batch of T rows: every int32 input in one buffer,
   *  so a step uploads them with one copy (ids, positions, slots, seqLens, then the block table). */
  private decodeInputs(T: number, ngram: boolean, extra = 0): { inputs: Tensor; batch: Batch; ngram: NgramStaging | null } {
    const tableLen = T * this.maxBlocks;
    const inputs = empty([4 * T + tableLen + extra], { dtype: 'int32', device: this.device });
    const part = (i: number, n: number) => inputs.narrow(i, n);
    const table = part(4 * T, tableLen);
    const batch: Batch = {
      mode: 'decode',
      T,
      ids: part(0, T),
      positions: part(T, T),
      slots: part(2 * T, T),
      seqLens: part(3 * T, T),
      blockTable: table.view([T, this.maxBlocks]),
    };
    table.dispose();
    const nd = this.dims.ngram;
    let staging: NgramStaging | null = null;
    if (nd && ngram) {
      const shape = [nd.tables, T, nd.dim],
        dtype = this.w.ngram!.tables[0]!.dtype;
      batch.ngramRows = empty(shape, { dtype, device: this.device });
      if (this.device !== 'cpu')
        staging = {
          staging: empty(shape, { dtype, device: 'cpu', pinned: true }),
          uploaded: new Event(this.device),
          cpu: native.defaultStream('cpu'),
        };
    }
    return { inputs, batch, ngram: staging };
  }

  private writeDecodeInputs(g: { inputs: Tensor; batch: Batch; host: Int32Array; ngram: NgramStaging | null }, host: DecodeRows) {
    const T = host.ids.length,
      buf = g.host;
    if (host.ngramIds) this.stageNgramRows(g.batch, g.ngram, host.ngramIds);
    buf.set(host.ids, 0);
    buf.set(host.positions, T);
    buf.set(host.slots, 2 * T);
    buf.set(host.seqLens, 3 * T);
    buf.set(host.blockTable, 4 * T);
    g.inputs.copyFromBytes(buf);
  }

  /**
   * Prefix caching: the cached pages (SequenceCache.publish) that `tokens` starts with, covering at
   * most `limit` tokens -- with `mtp`, only pages that also hold the MTP head's latents.
   */
  cachedPrefix(tokens: readonly number[], limit: number, mtp = false): number[] {
    const { blocks } = matchPrefix(this.allocator, this.blockSize, tokens, limit);
    const n = mtp ? blocks.findIndex(id => !this.allocator.hasMtp(id)) : -1;
    return n < 0 ? blocks : blocks.slice(0, n);
  }

  /** Starts the empty sequence `seq` on cached pages holding `tokens`' first blocks.length pages
   *  (from cachedPrefix); N-gram models record those tokens in its history. */
  adoptPrefix(seq: SequenceCache, blocks: readonly number[], tokens: readonly number[]) {
    seq.adopt(blocks);
    if (this.ngramPowers) {
      const hist = new TokenHistory();
      hist.record(0, tokens.slice(0, seq.length));
      this.histories.set(seq, hist);
    }
  }

  /** Whether the model has an MTP head (speculative decoding drafts with it). */
  get hasMtp(): boolean {
    return this.w.mtp !== null;
  }

  /**
   * The MTP head (SPEC 6.2) over already cached positions: sequence b's rows sit at positions
   * start[b].. start[b] + n - 1, each pairing the token after it (next[b][i], the token at position
   * start[b] + i + 1) with the main model's post-norm hidden state there (`hidden`, f32 [rows,
   * hidden] in batch order); their MTP latents are written to the MTP cache. Returns the draft
   * logits of each sequence's last row, f32 [B, vocab] (of every row with `allLogits`).
   */
  mtp(seqs: SequenceCache[], next: number[][], start: number[], hidden: Tensor, opts: { allLogits?: boolean } = {}): Tensor {
    if (this.disposed) throw new DisposedError('E_DISPOSED', 'LongcatModel.mtp: the model was disposed');
    if (!this.w.mtp) throw new ArgumentError('E_ARGUMENT', 'LongcatModel.mtp: the model has no MTP head');
    const counts = next.map(t => t.length),
      T = counts.reduce((a, n) => a + n, 0);
    seqs.forEach((seq, b) => {
      if (counts[b]! < 1 || start[b]! < 0 || start[b]! + counts[b]! > seq.length)
        throw new ArgumentError(
          'E_ARGUMENT',
          `LongcatModel.mtp: sequence ${b}: positions [${start[b]}, ${start[b]! + counts[b]!}) are not all cached (length ${seq.length})`,
        );
    });
    if (hidden.shape[0] !== T || hidden.shape[1] !== this.dims.hidden)
      throw new ArgumentError(
        'E_ARGUMENT',
        `LongcatModel.mtp: hidden is [${hidden.shape}], expected [${T}, ${this.dims.hidden}]`,
      );
    this.moeStream.synchronize();
    const a = new Arena(this.device);
    const positions: number[] = [],
      slots: number[] = [],
      lastRow: number[] = [];
    seqs.forEach((seq, b) => {
      for (let i = 0; i < counts[b]!; i++) positions.push(start[b]! + i);
      slots.push(...seq.slots(start[b]!, start[b]! + counts[b]!));
      lastRow.push(positions.length - 1);
    });
    const batch: Batch = {
      mode: counts.every(n => n === 1) ? 'decode' : 'prefill',
      T,
      ids: a.ints(next.flat()),
      positions: a.ints(positions),
      slots: a.ints(slots),
      ...(opts.allLogits ? {} : { lastRow: a.ints(lastRow) }),
    };
    if (batch.mode === 'decode') {
      const bt = batchTables(seqs);
      batch.blockTable = a.ints(bt.table, [T, bt.maxBlocks]);
      batch.seqLens = a.ints(positions.map(p => p + 1));
    } else {
      const kvStart = [0];
      batch.gathers = seqs.map((seq, b) => {
        const length = start[b]! + counts[b]!;
        kvStart.push(kvStart[b]! + length);
        return { table: a.ints(seq.blockTable()), start: kvStart[b]!, length };
      });
      batch.qStart = a.ints([0, ...counts.map((_, b) => lastRow[b]! + 1)]);
      batch.kvStart = a.ints(kvStart);
      batch.kvTotal = kvStart[seqs.length]!;
    }
    const logits = mtpForward(this.step(batch, null), this.w, hidden);
    a.dispose();
    return logits;
  }

  /**
   * One speculative decoding step (SPEC 6.3, one draft per sequence) as one graph replay: verify
   * [pending, draft] at positions L, L + 1 of each sequence in one forward (the absorbed attention,
   * a row per token), accept the draft or correct it (sampleSpeculative: greedy, or rejection
   * sampling that keeps plain sampling's distribution), run the MTP head on both verified rows and
   * pick the next draft from the row after the last accepted token. Each sequence then holds
   * L + 1 + accepted tokens (the rejected position's latents are dropped with it; the MTP cache
   * shares its slots). Needs room for 2 tokens in every sequence (canReserve(2)). The result is read
   * back awaited: until it settles, nothing else may use the sequences or queue work on the model.
   */
  async speculativeStep(
    seqs: SequenceCache[],
    pending: number[],
    drafts: number[],
    sampling: readonly SamplingParams[],
  ): Promise<SpeculativeStep> {
    if (this.disposed) throw new DisposedError('E_DISPOSED', 'LongcatModel.speculativeStep: the model was disposed');
    if (!this.w.mtp) throw new ArgumentError('E_ARGUMENT', 'LongcatModel.speculativeStep: the model has no MTP head');
    const t0 = performance.now();
    let replayed = t0;
    const B = seqs.length;
    if (pending.length !== B || drafts.length !== B || sampling.length !== B)
      throw new ArgumentError(
        'E_ARGUMENT',
        `speculativeStep: ${B} sequences but ${pending.length} pending tokens, ${drafts.length} drafts, ${sampling.length} sampling settings`,
      );
    const tokens = pending.map((p, b) => [p, drafts[b]!]);
    this.checkTokens('speculativeStep', tokens);
    this.verifyWeights?.();
    this.moeStream.synchronize();
    this.ep?.synchronize();
    const pastLens = seqs.map(s => s.length);
    const reserved: Int32Array[] = [];
    try {
      for (const seq of seqs) reserved.push(seq.reserve(2));
      const ids = Int32Array.from(tokens.flat());
      const positions = Int32Array.from(pastLens.flatMap(L => [L, L + 1]));
      const slots = Int32Array.from(reserved.flatMap(r => [...r]));
      const bt = batchTables(seqs, this.maxBlocks, Array(B).fill(2));
      const ngramIds = this.ngramRowIds(seqs, tokens, pastLens);
      // the graph of Bp sequences; padding sequences repeat sequence 0 (padRows), its draft and settings
      const Bp = graphBucket(B);
      let g = this.specGraphs.get(Bp);
      if (!g) {
        g = this.captureSpeculative(Bp, ngramIds !== null);
        this.specGraphs.set(Bp, g);
      }
      const extra = g.host.subarray(g.host.length - 7 * Bp);
      extra.set(Int32Array.from(drafts), 0);
      extra.fill(drafts[0]!, B, Bp);
      packSampling([...sampling, ...Array<SamplingParams>(Bp - B).fill(sampling[0]!)], extra.subarray(Bp));
      const rows = { ids, positions, slots, blockTable: bt.table, seqLens: bt.seqLens, ngramIds };
      this.writeDecodeInputs(g, this.padRows(rows, 2 * Bp, 2));
      replayed = performance.now();
      g.graph.replay();
      g.ngram?.uploaded.record(this.main);
      const out = (await toArrayAsync(g.outputs)) as Int32Array;
      const readBack = performance.now();
      this.ep?.endStep();
      const accepted = Array.from(out.subarray(2 * Bp, 2 * Bp + B));
      seqs.forEach((seq, b) => {
        seq.truncate(pastLens[b]! + 1 + accepted[b]!); // (the step's own pages: never shared)
      });
      return {
        tokens: accepted.map((n, b) => Array.from(out.subarray(2 * b, 2 * b + n + 1))),
        accepted,
        drafts: Array.from(out.subarray(3 * Bp, 3 * Bp + B)),
        nFfn: g.nFfn.map(t => t.narrow(0, 2 * B)),
        hostMs: replayed - t0 + performance.now() - readBack,
      };
    } catch (e) {
      this.abandonStep(seqs, pastLens, reserved.length);
      throw e;
    }
  }

  /** Captures the fused verify + accept + draft step of B sequences (replayed as one job on the CPU). */
  private captureSpeculative(B: number, ngram: boolean): SpeculativeGraph {
    const T = 2 * B;
    // Inputs: the decode rows, then the drafts [B] and the sampling settings [B, 6].
    const { inputs, batch, ngram: staging } = this.decodeInputs(T, ngram, 7 * B);
    const n = inputs.shape[0]!;
    const draftsIn = inputs.narrow(n - 7 * B, B),
      params = inputs.narrow(n - 6 * B, 6 * B).view([B, 6]);
    // Outputs in one buffer, read back with one copy: tokens [B, 2], accepted [B], next drafts [B].
    const outputs = empty([4 * B], { dtype: 'int32', device: this.device });
    const tokens = outputs.narrow(0, T),
      accepted = outputs.narrow(T, B),
      next = outputs.narrow(3 * B, B);
    let nFfn: Tensor[] = [];
    const graph = native.captureGraph(this.captureStreams, () => {
      const a = new Arena(this.device);
      if (staging) native.copy(this.main, batch.ngramRows!, staging.staging); // the step's rows, uploaded by the graph
      const verify = this.run(batch, true);
      nFfn = verify.nFfn;
      native.sampleSpeculative(
        this.main,
        a.keep(tokens.view([B, 2])),
        accepted,
        verify.logits,
        a.keep(draftsIn.view([B, 1])),
        batch.positions,
        params,
      );
      // The MTP head on the verified rows' pairs (hidden at L + j, the token after it), at the same
      // positions and slots: row 1's pair is void when the draft was rejected (its slot is dropped).
      const mtpBatch: Batch = { ...batch, ids: tokens, ngramRows: undefined };
      const draftLogits = mtpForward(this.step(mtpBatch, null), this.w, verify.hidden);
      const candidates = a.i32([T]);
      native.sample(this.main, candidates, draftLogits, 0, 0, 1, 0, 0, 0); // the draft: the head's argmax
      native.selectAccepted(this.main, next, a.keep(candidates.view([B, 2])), accepted);
      for (const t of [verify.logits, verify.hidden, draftLogits]) a.keep(t);
      a.dispose();
    });
    return {
      graph,
      inputs,
      batch,
      host: new Int32Array(n),
      outputs,
      nFfn,
      parts: [draftsIn, params, tokens, accepted, next],
      ngram: staging,
    };
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
      for (const t of [
        g.inputs,
        b.ids,
        b.positions,
        b.slots,
        b.blockTable!,
        b.seqLens!,
        g.out.logits,
        g.out.hidden,
        ...g.out.nFfn,
      ])
        t.dispose();
      b.ngramRows?.dispose();
      g.ngram?.staging.dispose(); // after the graph: its copy node reads it
    }
    this.decodeGraphs.clear();
    for (const g of this.specGraphs.values()) {
      g.graph.dispose();
      const b = g.batch;
      for (const t of [g.inputs, b.ids, b.positions, b.slots, b.blockTable!, b.seqLens!, g.outputs, ...g.nFfn, ...g.parts])
        t.dispose();
      b.ngramRows?.dispose();
      g.ngram?.staging.dispose();
    }
    this.specGraphs.clear();
    for (const t of [...this.caches, this.invFreq, ...this.w.owned]) t.dispose();
    if (this.moeStream !== this.main) this.moeStream.dispose();
    this.ep?.dispose();
  }
}
