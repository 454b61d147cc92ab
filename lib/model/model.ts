// The runner of the LongCat-Flash forward pass: owns the KV cache (pages, one latent cache per
// attention sub-layer), the streams and events of the two branches, and the captured decode graphs;
// turns a batch of sequences and new tokens into a Step (positions, cache slots, block tables) and
// runs the architecture (longcat-flash.ts) on it. Under expert parallelism attention is
// data-parallel (lib/parallel/data-parallel.ts): each rank owns its sequences' KV pages and streams,
// a step runs one Step per rank with sequences in it (their passes in lockstep, meeting at each
// MoE layer's all-to-all), and the runner puts the ranks' logits back in the step's order.
import { native } from '../native.js';
import { type Tensor, empty, tensor, toArray, toArrayAsync } from '../tensor.js';
import { Event, Stream } from '../device.js';
import { BlockAllocator, type CacheDtype, SequenceCache, batchTables, latentCacheRow, matchPrefix } from '../kv-cache.js';
import { ArgumentError, DisposedError, LongcatError, OutOfMemoryError } from '../errors.js';
import type { ModelDims } from './dims.js';
import type { Graph } from '../../types/native.js';
import type { ModelWeights } from './weights.js';
import { forward, mtpForward, runToEnd } from './longcat-flash.js';
import { Arena, type Batch, type ExpertsFn, type Step, localExperts } from './step.js';
import { ExpertParallelGroup, type ExpertParallelOptions } from '../parallel/expert-parallel.js';
import type { RankPlacement, RankPool } from '../parallel/numa.js';
import { ShardedExperts } from '../parallel/placement.js';
import type { CrossHostExperts } from '../parallel/cross-host.js';
import {
  type Rank,
  type RankPart,
  assign,
  byRank,
  leastLoaded,
  lockstep,
  partRowCounts,
  rankOf,
  stepOrder,
} from '../parallel/data-parallel.js';
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
  /** Blocks in the KV pool (default: enough for maxContext tokens of 4 sequences, capped); under
   *  expert parallelism each rank has a pool this size for the sequences it owns. */
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
   *  (loadModel passes the checkpoint's verifyMappings() while the weights are memory-mapped shards). */
  verifyWeights?: () => void;
  /** Rank r's device (default: every rank on `device`: CPU ranks, or virtual ranks of one CUDA
   *  device). CUDA ranks on other devices need peer access to and from `device` and each other
   *  (native.enablePeerAccess). */
  rankDevices?: readonly string[];
  /** Rank r's dense weights, on rankDevices[r] (default: `weights` for every rank; needed for ranks
   *  on another device than `device`); their routed experts are the same ShardedExperts. */
  rankWeights?: readonly ModelWeights[];
  /** CPU ranks (ranks > 1 on the CPU): each rank's own thread pool (lib/parallel/numa.ts
   *  planRankPools), one per rank; its streams' kernels run there. Default: every rank on the
   *  global pool. */
  rankPools?: readonly RankPool[];
  /** CPU ranks: per rank a CPU stream whose pool the rank's streams share instead of a new one of
   *  rankPools' (the pool that placed its experts: lib/parallel/numa.ts RankPlacer). */
  rankPoolStreams?: readonly Stream[];
  /** CPU ranks: where each rank's routed experts were placed (model.memory.expertPlacement). */
  expertPlacement?: readonly RankPlacement[];
  /** The expert-parallel protocol's settings (ranks > 1). */
  expertParallel?: ExpertParallelOptions;
  /** Expert parallelism across hosts (lib/parallel/cross-host.ts): this host's part of the
   *  exchange, built over the weights' own block of routed experts (one local rank; decode runs
   *  eagerly). forward becomes a collective call; the model disposes it. */
  crossHost?: (weights: ModelWeights) => CrossHostExperts;
}

export interface ForwardResult {
  /** f32 [rows, vocab]: every token's row (`allLogits`), else each sequence's last token. */
  logits: Tensor;
  /** Per layer int32 [T] counts of FFN experts chosen, when `collectRouting` was asked (empty
   *  where `ffnCounts` holds them). */
  nFfn: Tensor[];
  /** collectRouting 'stacked', where the step is one replayed part on the runner's device: every
   *  layer's counts in one tensor, int32 [layers, Tp] (Tp >= T, the captured step's rows: row b of
   *  layer l at l * Tp + b) -- one handle per step instead of one per layer. */
  ffnCounts?: Tensor;
  /** f32 [T, hidden]: the post-norm hidden states of every new token, when `hidden` was asked. */
  hidden?: Tensor;
}

export interface ForwardOptions {
  /** Logits of every new token (prefill; decode always returns every row's). */
  allLogits?: boolean;
  /** Per-token counts of the FFN experts chosen (ForwardResult.nFfn); 'stacked': as one tensor
   *  (ForwardResult.ffnCounts) where the step allows it, else per layer. */
  collectRouting?: boolean | 'stacked';
  /** 'decode': the absorbed attention, one query row per new token (several per sequence verify
   *  drafts); 'prefill': the expanded form. Default: decode when every sequence gets one token. */
  mode?: 'prefill' | 'decode';
  /** Also return the post-norm hidden states (what the MTP head reads). */
  hidden?: boolean;
  /** Decode op by op instead of replaying the captured step (tests compare the two). */
  eager?: boolean;
  /** A decode step queued behind the device work before it, without waiting for that work (the
   *  scheduler's chained rounds; only where `canQueueDecode`): its inputs are uploaded in stream
   *  order, and row b's token is, where `queued.rows[b] >= 0`, the int32 at that row of
   *  `queued.ids` when the step runs (a token the step before sampled on the device, not read back
   *  yet), else tokens[b][0]. Errors of the work before surface when it is read. */
  queued?: QueuedTokens;
  /** Queued behind the device work before it without waiting for it, where `canQueueDecode` (else
   *  it waits as without): the scheduler's prefill chunk behind its chained decode steps. The
   *  caller answers for errors: those of the work before must be taken by waits queued before this
   *  call (the chained steps' read-backs), this step's by the caller's next wait. */
  inOrder?: boolean;
}

/** ForwardOptions.queued: which rows take their token from a device tensor. */
export interface QueuedTokens {
  ids: Tensor | null;
  rows: readonly number[];
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
  /** Per rank part: its inputs, its outputs (tokens [B, 2], accepted [B], next drafts [B] in one
   *  buffer), its per-layer FFN counts, and views over inputs / outputs, disposed with the graph. */
  parts: (GraphInputs & { outputs: Tensor; nFfn: Tensor[]; views: Tensor[] })[];
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
 * batch sizes captures a few dozen graphs at most (35 up to 256 rows), not one per size. Under
 * expert parallelism each rank's part is bucketed on its own.
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

/** One rank's fixed inputs of a captured step. */
interface GraphInputs {
  rank: Rank;
  inputs: Tensor;
  batch: Batch;
  host: Int32Array;
  ngram: NgramStaging | null;
}

/** The `before` hook of a captured step's runRanks: rank i's N-gram rows are uploaded by the graph
 *  itself, from the staging buffer the host fills before each replay. */
const uploadNgramRows =
  (ranks: readonly Rank[], inputs: readonly GraphInputs[]) =>
  (i: number): void => {
    const x = inputs[i]!;
    if (x.ngram) native.copy(ranks[i]!.main, x.batch.ngramRows!, x.ngram.staging);
  };

/** A pass's outputs (forward's, before they are assembled into the step's). */
type PassOutputs = Required<Omit<ForwardResult, 'ffnCounts'>>;

/** A captured decode step: per rank part, its inputs and outputs. */
interface DecodeGraph {
  graph: Graph;
  /** Per rank part, also its FFN counts as one tensor (int32 [layers, Tp]: the per-layer counts
   *  of `out.nFfn` are views of its rows). */
  parts: (GraphInputs & { out: PassOutputs; ffnStack: Tensor })[];
}

export class LongcatModel {
  readonly dims: ModelDims;
  readonly device: string;
  readonly blockSize: number;
  readonly maxContext: number;
  /** The weights as the forward pass uses them (read-only; benchmarks and tests inspect them). */
  readonly w: ModelWeights;
  /** The ranks (one without expert parallelism): each owns its sequences, KV pages and streams. */
  private readonly ranks: Rank[] = [];
  /** Rank 0's main stream: the device's default stream, where the step's results are assembled. */
  private readonly main: Stream;
  /** Recorded on `main` before a step's ranks start (they wait for it). */
  private readonly fork: Event;
  private readonly maxBlocks: number;
  private readonly useGraphs: boolean;
  /** The first of MAX_PAD_ROWS cache slots past each rank's allocator blocks, which only the padding
   *  rows of a captured step write (each its own slot); no sequence's block table ever names them. */
  private readonly padSlot: number;
  /** The ranks the routed experts are split across, when expert parallelism is on. */
  private readonly ep: ExpertParallelGroup | null;
  /** CPU ranks' own thread pools (rankPools), when given. */
  readonly rankPools: readonly RankPool[] | null;
  /** CPU ranks: where each rank's routed experts were placed, when reported. */
  readonly expertPlacement: readonly RankPlacement[] | null;
  /** This host's part of expert parallelism across hosts, when on. */
  private readonly xh: CrossHostExperts | null;
  /** The captured decode steps, by their rows per rank. */
  private readonly decodeGraphs = new Map<string, DecodeGraph>();
  /** The captured speculative steps, by their sequences per rank. */
  private readonly specGraphs = new Map<string, SpeculativeGraph>();
  /** N-gram models: vocab^k modulo each table size (SPEC-LITE 3.1). */
  private readonly ngramPowers: number[][] | null;
  /** N-gram models: each sequence's raw token ids by position (rolled back with its KV pages). */
  private readonly histories = new WeakMap<SequenceCache, TokenHistory>();
  private disposed = false;
  private readonly verifyWeights: (() => void) | undefined;
  /** The decode or speculative step graph replayed last (the next step prewakes it). */
  private lastStepGraph: Graph | null = null;

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
    const rankDevices = opts.rankDevices ?? Array<string>(ranks).fill(opts.device);
    rankDevices.forEach((dev, r) => {
      const rw = opts.rankWeights?.[r];
      if (dev !== opts.device && !rw)
        throw new ArgumentError(
          'E_ARGUMENT',
          `LongcatModel: rank ${r} is on ${dev}: it needs its own dense weights (rankWeights)`,
        );
    });
    this.dims = dims;
    this.w = weights;
    this.device = opts.device;
    this.blockSize = opts.blockSize ?? 64;
    if (opts.maxContext !== undefined && (!Number.isInteger(opts.maxContext) || opts.maxContext < 1))
      throw new ArgumentError('E_ARGUMENT', `LongcatModel: maxContext must be an integer >= 1, got ${opts.maxContext}`);
    this.maxContext = Math.min(opts.maxContext ?? dims.maxContext, dims.maxContext);
    const blocksPerSeq = Math.ceil(this.maxContext / this.blockSize);
    this.maxBlocks = blocksPerSeq;
    if (opts.crossHost && ranks > 1)
      throw new ArgumentError(
        'E_ARGUMENT',
        'LongcatModel: expert parallelism across hosts (nccl) runs one rank per host for now; ranks must be 1',
      );
    // across hosts the counts are read on the host between the exchange's groups: no captured decode
    this.useGraphs = (opts.graphs ?? true) && !opts.crossHost;
    const numBlocks = opts.numBlocks ?? Math.min(4 * blocksPerSeq, 4096);
    this.padSlot = numBlocks * this.blockSize;
    const cacheDtype = opts.cacheDtype ?? 'bf16';
    // The dense branch of rank 0 runs on the default stream, so that null-stream ops on the results
    // (sampling, reading logits) are ordered after the forward pass.
    this.main = native.defaultStream(this.device);
    this.fork = new Event(this.device);
    const pools = opts.rankPools;
    if (pools && (ranks < 2 || pools.length !== ranks || rankDevices.some(d => d !== 'cpu')))
      throw new ArgumentError(
        'E_ARGUMENT',
        `LongcatModel: rankPools is one pool per CPU rank: ${pools.length} pools for ${ranks} rank(s) on ${[...new Set(rankDevices)].join(', ')}`,
      );
    this.ep = ranks > 1 ? new ExpertParallelGroup(rankDevices, this.device) : null;
    if (opts.expertParallel) {
      if (!this.ep) throw new ArgumentError('E_ARGUMENT', `LongcatModel: expertParallel needs ranks > 1, got ranks ${ranks}`);
      this.ep.configure(opts.expertParallel);
    }
    this.rankPools = pools ?? null;
    this.expertPlacement = opts.expertPlacement ?? null;
    this.xh = opts.crossHost?.(weights) ?? null;
    try {
      for (const [r, device] of rankDevices.entries()) {
        const caches = this.allocateCaches(device, numBlocks, cacheDtype);
        // (with pools of their own every rank's main stream is its own, rank 0's too: the default
        // stream stays on the global pool for the work around the step)
        const main = r === 0 && !pools ? this.main : new Stream(device);
        this.ranks.push({
          index: r,
          device,
          w: opts.rankWeights?.[r] ?? weights,
          allocator: new BlockAllocator(numBlocks),
          caches,
          main,
          // The shortcut MoE gets its own stream (the device pool fences blocks freed while several
          // streams run, so a temporary of one branch is never reused under the other's kernels).
          moeStream: opts.overlapMoe === false ? main : new Stream(device),
          events: Array.from({ length: dims.layers }, () => [new Event(device), new Event(device)] as const),
          marks: null,
          invFreq: tensor(dims.invFreq, [dims.invFreq.length], { device }),
          experts: this.ep ? this.ep.expertsOf(r) : (this.xh?.expertsFn ?? localExperts),
          joined: new Event(device),
          sequences: new Set(),
        });
        const rank = this.ranks[r]!,
          pool = pools?.[r];
        if (pool) {
          const streams = [...new Set([rank.main, rank.moeStream, this.ep!.streams[r]!])];
          const from = opts.rankPoolStreams?.[r]; // the pool that placed the rank's experts
          if (from) native.setStreamPool(streams, from);
          else native.setStreamPool(streams, pool.threads, pool.cpus);
        }
        // A host cache's memory comes lazily populated from the OS: a decode step's cache writes would
        // otherwise take the page faults of first touch, a few per step (one 4 KiB page holds 3-7 rows
        // of a layer's cache) at tens of microseconds each on a VM (bench/step-profile.mjs:
        // mlaCacheWrite 6-7 us per call in the medium step against 0.8 us on touched rows). So it is
        // faulted in and zeroed now, as llama.cpp clears its KV buffers, but as a job of the rank's main
        // stream (its pool's threads touch it first; every step of the rank runs after it), not on
        // the JS thread: seconds for the real model's caches. ready() awaits it.
        if (device === 'cpu') for (const c of caches) native.populateZeros(rank.main, c);
      }
    } catch (e) {
      this.disposeRanks();
      this.ep?.dispose();
      this.xh?.dispose();
      throw e;
    }
    this.verifyWeights = opts.verifyWeights;
    this.ngramPowers = dims.ngram ? ngramPowers(dims.ngram) : null;
  }

  /**
   * Resolves once every CPU rank's KV caches are faulted in and zeroed (the constructor queues that
   * on the ranks' main streams; steps run after it anyway, this only waits without blocking the
   * JS thread); rejects with its LongcatError (E_OOM when the memory cannot be had). loadModel
   * awaits it.
   */
  async ready(): Promise<void> {
    await Promise.all(this.ranks.filter(r => r.device === 'cpu').map(r => r.main.synchronizeAsync()));
  }

  /** A rank's latent caches on `device` (E_OOM naming the smaller formats when they do not fit). */
  private allocateCaches(device: string, numBlocks: number, cacheDtype: CacheDtype): Tensor[] {
    const dims = this.dims,
      row = latentCacheRow(dims.kvLora, dims.rope, cacheDtype);
    const cacheBlocks = numBlocks + Math.ceil(MAX_PAD_ROWS / this.blockSize); // + the padding rows' slots
    const caches: Tensor[] = [];
    try {
      for (let i = 0; i < this.cacheCount; i++) {
        caches.push(empty([cacheBlocks, this.blockSize, row.width], { dtype: row.dtype, device }));
      }
      return caches;
    } catch (e) {
      for (const c of caches) c.dispose();
      if (!(e instanceof LongcatError) || e.code !== 'E_OOM') throw e;
      const bytes = this.cacheCount * cacheBlocks * this.blockSize * row.bytes;
      // the smaller formats these sizes allow, with their bytes per token
      const fp8 = dims.kvLora % 128 === 0 && dims.rope % 2 === 0;
      const order: CacheDtype[] = ['f32', 'bf16', 'fp8'];
      const smaller = order.slice(order.indexOf(cacheDtype) + 1).filter(t => t !== 'fp8' || fp8);
      const alt = smaller.map(t => `${t} ${latentCacheRow(dims.kvLora, dims.rope, t).bytes}`);
      throw new OutOfMemoryError(
        'E_OOM',
        `the KV cache does not fit on ${device}: ${this.cacheCount} latent caches of ` +
          `${numBlocks} blocks x ${this.blockSize} x ${row.width} ${cacheDtype} = ${(bytes / 2 ** 30).toFixed(2)} GiB ` +
          `(${row.bytes} bytes per token and cache${alt.length ? `; ${alt.join(', ')}` : ''}). ` +
          `Pass a smaller cacheBlocks or maxContext${smaller.length ? ` (or cacheDtype ${smaller.map(t => `'${t}'`).join(' or ')})` : ''}.`,
        { cause: e },
      );
    }
  }

  /** Frees every rank's caches, events' tensors and streams (not rank 0's main: the default stream). */
  private disposeRanks() {
    for (const r of this.ranks) {
      for (const t of [...r.caches, r.invFreq]) t.dispose();
      if (r.moeStream !== r.main) r.moeStream.dispose();
      if (r.main !== this.main) r.main.dispose();
    }
  }

  /** Rank 0's block allocator (the only one without expert parallelism; see allocators). */
  get allocator(): BlockAllocator {
    return this.ranks[0]!.allocator;
  }

  /** Every rank's block allocator (KV pool), by rank. */
  get allocators(): BlockAllocator[] {
    return this.ranks.map(r => r.allocator);
  }

  /** Checkpoint bytes uploaded to each device: the weights' and the other devices' replicas'. */
  get uploaded(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const w of new Set(this.ranks.map(r => r.w)))
      for (const [dev, n] of Object.entries(w.uploaded)) out[dev] = (out[dev] ?? 0) + n;
    return out;
  }

  /** Bytes of the latent KV caches on each device (every rank's pool). */
  get kvCacheBytes(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const r of this.ranks) out[r.device] = (out[r.device] ?? 0) + r.caches.reduce((n, c) => n + c.nbytes, 0);
    return out;
  }

  /** Wraps every rank's call of the routed experts (benchmarks record the routing through it);
   *  before the first forward: captured graphs keep the call they captured. */
  wrapExperts(wrap: (inner: ExpertsFn) => ExpertsFn) {
    for (const r of this.ranks) r.experts = wrap(r.experts);
  }

  /** Rank `rank`'s latent KV caches, one per attention sub-layer (tests read a sequence's pages). */
  kvCaches(rank = 0): readonly Tensor[] {
    const r = this.ranks[rank];
    if (!r) throw new ArgumentError('E_ARGUMENT', `kvCaches: rank ${rank} is not a rank of this ${this.ranks.length}-rank model`);
    return r.caches;
  }

  /** The rank that owns a sequence of this model (its KV pages live in that rank's caches). */
  rankOf(seq: SequenceCache): { rank: number; device: string } {
    const r = rankOf(this.ranks, seq, 'rankOf');
    return { rank: r.index, device: r.device };
  }

  /** One latent cache per attention sub-layer: 2 per layer, and the MTP head's last. */
  private get cacheCount(): number {
    return 2 * this.dims.layers + (this.w.mtp ? 1 : 0);
  }

  /** The expert-parallel group when expert parallelism is on (tests inject faults through it). */
  get expertParallel(): ExpertParallelGroup | null {
    return this.ep;
  }

  /** This host's part of expert parallelism across hosts (nccl), when on. */
  get crossHost(): CrossHostExperts | null {
    return this.xh;
  }

  /** A new empty sequence in this model's KV cache (under expert parallelism: in the KV pool of
   *  the least loaded rank, data-parallel.ts), or in rank `rank`'s. */
  newSequence(maxContext = this.maxContext, rank?: number): SequenceCache {
    if (rank !== undefined && !(Number.isInteger(rank) && rank >= 0 && rank < this.ranks.length))
      throw new ArgumentError('E_ARGUMENT', `newSequence: rank ${rank} is not a rank of this ${this.ranks.length}-rank model`);
    const r = rank === undefined ? leastLoaded(this.ranks) : this.ranks[rank]!;
    const seq = new SequenceCache(r.allocator, this.blockSize, Math.min(maxContext, this.maxContext));
    assign(r, seq);
    return seq;
  }

  /**
   * Runs the model on new tokens of several sequences at once: tokens[b] are appended to seqs[b]
   * (their KV entries are written to the cache). Decode (the absorbed MLA) is used when every
   * sequence gets exactly one token, unless `mode` forces one.
   */
  forward(seqs: SequenceCache[], tokens: number[][], opts: ForwardOptions = {}): ForwardResult {
    if (this.disposed) throw new DisposedError('E_DISPOSED', 'LongcatModel.forward: the model was disposed');
    // Across hosts forward is a collective call: this host takes part in every layer's exchange,
    // also with no sequences (forward([], [])) and when its own part fails (cross-host.ts).
    const xh = this.xh;
    if (xh) return xh.collective(this.dims.layers, () => this.forwardHere(seqs, tokens, opts, xh));
    return this.forwardHere(seqs, tokens, opts, null);
  }

  private forwardHere(
    seqs: SequenceCache[],
    tokens: number[][],
    opts: ForwardOptions,
    xh: CrossHostExperts | null,
  ): ForwardResult {
    // The last decode step's stream thread is woken now, so that its wake (tens of microseconds on
    // a VM) overlaps this call's host work instead of following the replay (Graph.prewake()).
    this.lastStepGraph?.prewake();
    this.verifyWeights?.();
    if (xh && Array.isArray(seqs) && Array.isArray(tokens) && seqs.length === 0 && tokens.length === 0) {
      xh.finishIdle(this.dims.layers); // every layer's exchange with zero tokens of this host
      return { logits: empty([0, this.dims.vocab], { device: this.device }), nFfn: [] };
    }
    if (!Array.isArray(seqs) || !Array.isArray(tokens) || !tokens.every(t => Array.isArray(t)))
      throw new ArgumentError('E_ARGUMENT', 'forward: sequences must be an array and tokens an array of token-id arrays');
    const B = seqs.length;
    if (B !== tokens.length || B === 0)
      throw new ArgumentError('E_ARGUMENT', `forward: ${B} sequences but ${tokens.length} token lists`);
    const oneEach = this.checkTokens('forward', tokens);
    const mode = opts.mode ?? (oneEach ? 'decode' : 'prefill');
    if (opts.queued) this.checkQueued(opts, mode, B);
    else if (!(opts.inOrder && this.canQueueDecode)) this.synchronizeRanks(); // the previous step's work is done; this surfaces its errors
    const pastLens = new Array<number>(B);
    for (let b = 0; b < B; b++) pastLens[b] = seqs[b]!.length;
    // Reserve cache slots for every sequence first (E_CONTEXT / E_OOM before any work); if
    // anything fails, the sequences are rolled back to their previous lengths.
    const slotLists: Int32Array[] = [];
    try {
      for (let b = 0; b < B; b++) slotLists.push(seqs[b]!.reserve(tokens[b]!.length));
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

  /** Whether forward() takes `queued` decode steps: one CPU rank, replayed steps, no N-gram embedding
   *  (its rows are hashed from the tokens on the host), no expert parallelism. */
  get canQueueDecode(): boolean {
    return (
      this.device === 'cpu' &&
      this.useGraphs &&
      !this.ngramPowers &&
      !this.ep &&
      !this.xh &&
      this.ranks.length === 1 &&
      this.ranks[0]!.device === this.device
    );
  }

  private checkQueued(opts: ForwardOptions, mode: 'prefill' | 'decode', B: number) {
    const q = opts.queued!;
    if (!this.canQueueDecode || mode !== 'decode' || opts.eager)
      throw new ArgumentError('E_ARGUMENT', 'forward: a queued step is a replayed CPU decode step of one rank (canQueueDecode)');
    const n = q.ids?.shape[0] ?? 0;
    let ok = q.rows.length === B;
    for (let b = 0; ok && b < B; b++) ok = Number.isInteger(q.rows[b]) && q.rows[b]! < n;
    if (!ok)
      throw new ArgumentError('E_ARGUMENT', `forward: queued.rows must give each of the ${B} rows a row of queued.ids or -1`);
  }

  /** Every sequence's new tokens: at least one, each an id of the vocabulary (typed errors naming it).
   *  Returns whether every sequence has exactly one (a decode step's shape). */
  private checkTokens(what: string, tokens: readonly (readonly number[])[]): boolean {
    const V = this.dims.vocab;
    let oneEach = true;
    for (let b = 0; b < tokens.length; b++) {
      const list = tokens[b]!;
      if (list.length === 0) throw new ArgumentError('E_ARGUMENT', `${what}: sequence ${b} has no new tokens`);
      oneEach &&= list.length === 1;
      for (let i = 0; i < list.length; i++) {
        const id = list[i]!;
        if (!Number.isInteger(id) || id < 0 || id >= V)
          throw new ArgumentError('E_ARGUMENT', `${what}: token id ${id} of sequence ${b} is outside the vocabulary [0, ${V})`);
      }
    }
    return oneEach;
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
    const parts = byRank(this.ranks, seqs, 'forward');
    // (a part holding every sequence holds them in order: byRank; then its lists are the step's own)
    const sub = <X>(p: RankPart, xs: X[]) => (p.seqs.length === xs.length ? xs : p.seqs.map(b => xs[b]!));
    const counts = tokens.map(t => t.length);
    const graphed = mode === 'decode' && this.useGraphs && !opts.eager;
    let outs: PassOutputs[];
    let ffnStack: Tensor | null = null; // one replayed part's counts as one tensor
    const arenas: Arena[] = [];
    try {
      if (graphed) {
        const replayed = this.replayDecode(
          parts,
          parts.map(p => this.decodeRows(sub(p, seqs), sub(p, tokens), sub(p, pastLens), sub(p, slotLists))),
          opts.queued,
        );
        outs = replayed.map(x => x.out);
        if (replayed.length === 1 && replayed[0]!.ffnStack.device === this.device) ffnStack = replayed[0]!.ffnStack;
      } else {
        const batches = parts.map(p => {
          const a = new Arena(p.rank.device);
          arenas.push(a);
          const lastOnly = !opts.allLogits && mode === 'prefill';
          return this.eagerBatch(a, p.rank, sub(p, seqs), sub(p, tokens), sub(p, pastLens), sub(p, slotLists), mode, lastOnly);
        });
        outs = this.runRanks(
          parts.map(p => p.rank),
          batches,
          !!opts.collectRouting,
        );
      }
    } finally {
      for (const a of arenas) a.dispose();
    }
    const logitRows = mode === 'prefill' && !opts.allLogits ? counts.map(() => 1) : counts;
    const logits = this.assemble(
      parts,
      outs.map(o => o.logits),
      logitRows,
      graphed,
    );
    const hidden = opts.hidden
      ? this.assemble(
          parts,
          outs.map(o => o.hidden),
          counts,
          graphed,
        )
      : undefined;
    if (!opts.hidden && !graphed) for (const o of outs) o.hidden.dispose();
    if (opts.collectRouting === 'stacked' && ffnStack)
      return { logits, nFfn: [], ffnCounts: ffnStack.narrow(0, this.dims.layers), ...(hidden ? { hidden } : {}) };
    const nFfn = opts.collectRouting
      ? this.assembleCounts(
          parts,
          outs.map(o => o.nFfn),
          counts,
          graphed,
        )
      : [];
    return { logits, nFfn, ...(hidden ? { hidden } : {}) };
  }

  /** The host side of a step's rows: ids, positions and cache slots per token, each sequence's last row. */
  private hostRows(tokens: number[][], pastLens: number[], slotLists: Int32Array[]) {
    // (plain loops, no flat() or from(): this runs on every decode step's critical path)
    let T = 0;
    for (let b = 0; b < tokens.length; b++) T += tokens[b]!.length;
    const ids = new Int32Array(T);
    const positions = new Int32Array(T);
    const slots = new Int32Array(T);
    const lastRow = new Int32Array(tokens.length);
    let r = 0;
    for (let b = 0; b < tokens.length; b++) {
      const list = tokens[b]!,
        slotList = slotLists[b]!,
        past = pastLens[b]!;
      for (let i = 0; i < list.length; i++, r++) {
        ids[r] = list[i]!;
        positions[r] = past + i;
        slots[r] = slotList[i]!;
      }
      lastRow[b] = r - 1;
    }
    return { T, ids, positions, slots, lastRow };
  }

  /** A rank's decode rows for a captured step (records the N-gram history). */
  private decodeRows(seqs: SequenceCache[], tokens: number[][], pastLens: number[], slotLists: Int32Array[]): DecodeRows {
    const h = this.hostRows(tokens, pastLens, slotLists);
    const rt = batchTables(
      seqs,
      this.maxBlocks,
      tokens.map(t => t.length),
    );
    const ngramIds = this.ngramRowIds(seqs, tokens, pastLens);
    return { ids: h.ids, positions: h.positions, slots: h.slots, blockTable: rt.table, seqLens: rt.seqLens, ngramIds };
  }

  /**
   * Whether a prefill's attention runs in the absorbed form (SPEC 5.2, the decode kernel, a row per
   * token) instead of the expanded one: on the CPU, once the cached prefix holds at least as many
   * tokens as the step adds. The expanded form re-expands every cached latent into per-head keys and
   * values (kv_b_proj over the prefix) for each chunk; the absorbed form reads the latents as they
   * are. Measured on the small preset (2-vCPU Zen 4, bench/chunk-profile.mjs, bench/RESULTS.md
   * session 19): the two kernels cost the same per (query, key) pair there, so the re-expansion
   * (~1.7 us per cached token per sub-layer) is what the absorbed form saves; with no prefix the
   * expanded form is faster (the absorbed one's per-token absorptions, short rows). CUDA keeps the
   * expanded form (not measured there).
   */
  private absorbedPrefill(rank: Rank, tokens: number[][], pastLens: number[]): boolean {
    if (rank.device !== 'cpu') return false;
    let past = 0,
      added = 0;
    for (let b = 0; b < tokens.length; b++) {
      past += pastLens[b]!;
      added += tokens[b]!.length;
    }
    return past >= added;
  }

  /** A rank's Batch of an eager step, its tensors in `a` (on the rank's device). */
  private eagerBatch(
    a: Arena,
    rank: Rank,
    seqs: SequenceCache[],
    tokens: number[][],
    pastLens: number[],
    slotLists: Int32Array[],
    mode: 'prefill' | 'decode',
    lastOnly: boolean,
  ): Batch {
    const h = this.hostRows(tokens, pastLens, slotLists);
    const batch: Batch = { mode, T: h.T, ids: a.ints(h.ids), positions: a.ints(h.positions), slots: a.ints(h.slots) };
    const ngramIds = this.ngramRowIds(seqs, tokens, pastLens);
    if (ngramIds) {
      const nd = this.dims.ngram!;
      const rows = a.keep(empty([nd.tables, h.T, nd.dim], { dtype: this.w.ngram!.tables[0]!.dtype, device: 'cpu' }));
      this.gatherNgramRows(null, ngramIds, rows);
      if (rank.device === 'cpu') native.defaultStream('cpu').synchronize(); // a rank's own stream reads them
      batch.ngramRows = rank.device === 'cpu' ? rows : a.keep(rows.to(rank.device)); // to() waits for the gather
    }
    if (mode === 'decode' || this.absorbedPrefill(rank, tokens, pastLens)) {
      const rt = batchTables(
        seqs,
        undefined,
        tokens.map(t => t.length),
      );
      batch.blockTable = a.ints(rt.table, [h.T, rt.maxBlocks]);
      batch.seqLens = a.ints(rt.seqLens);
    } else {
      const qStart = [0],
        kvStart = [0];
      batch.gathers = [];
      for (let b = 0; b < seqs.length; b++) {
        qStart.push(qStart[b]! + tokens[b]!.length);
        kvStart.push(kvStart[b]! + seqs[b]!.length);
        batch.gathers.push({ table: a.ints(seqs[b]!.blockTable()), start: kvStart[b]!, length: seqs[b]!.length });
      }
      batch.qStart = a.ints(qStart);
      batch.kvStart = a.ints(kvStart);
      batch.kvTotal = kvStart[seqs.length]!;
    }
    if (lastOnly) batch.lastRow = a.ints(h.lastRow);
    return batch;
  }

  /**
   * A step's rows, from each rank part's output (rows in its sequences' order, `rows[b]` per
   * sequence b), in the step's order on the runner's device. One part there: that output itself
   * (a fresh handle of a graph's output); else gathered, and eager parts' outputs disposed (the
   * queued copies keep them).
   */
  private assemble(parts: RankPart[], outs: Tensor[], rows: number[], graphed: boolean): Tensor {
    const first = outs[0]!;
    let n = 0;
    for (const k of rows) n += k;
    // (a graph's outputs have its bucket's rows: the first of each part's are the step's; a part's
    // outputs are on its rank's device: no crossing into native code to ask the tensor)
    if (parts.length === 1 && parts[0]!.rank.device === this.device) return graphed ? first.narrow(0, n) : first;
    const width = first.shape[1]!;
    const partRows = partRowCounts(parts, rows);
    const a = new Arena(this.device);
    const cat = a.f32([n, width]);
    let at = 0;
    for (const [i, t] of outs.entries()) {
      const k = partRows[i]!;
      let src = k === t.shape[0] ? t : a.keep(t.narrow(0, k));
      if (t.device !== this.device) {
        this.main.synchronize(); // (a replayed graph's nodes on other devices are launched from this stream)
        const host = a.keep(src.to('cpu'));
        src = this.device === 'cpu' ? host : a.keep(host.to(this.device));
      }
      native.copy(this.main, a.keep(cat.narrow(at, k)), src);
      at += k;
      if (!graphed) t.dispose();
    }
    const out = empty([n, width], { device: this.device });
    native.gatherRows(this.main, out, cat, a.ints(stepOrder(parts, rows)));
    a.dispose();
    return out;
  }

  /** assemble() for the per-layer int32 [T] counts of FFN experts (through the host when split). */
  private assembleCounts(parts: RankPart[], outs: Tensor[][], rows: number[], graphed: boolean): Tensor[] {
    if (parts.length === 1 && outs[0]![0]?.device === this.device) {
      // (one part in the step's order: no order built)
      let n = 0;
      for (const k of rows) n += k;
      return graphed ? outs[0]!.map(t => t.narrow(0, n)) : outs[0]!;
    }
    const order = stepOrder(parts, rows);
    const partRows = partRowCounts(parts, rows);
    this.main.synchronize(); // every rank's part is done (a replay is launched from this stream)
    return outs[0]!.map((_, l) => {
      const cat = new Int32Array(order.length);
      let at = 0;
      for (const [i, o] of outs.entries()) {
        const v = (toArray(o[l]!) as Int32Array).subarray(0, partRows[i]!);
        cat.set(v, at);
        at += v.length;
        if (!graphed) o[l]!.dispose();
      }
      return tensor(
        order.map(i => cat[i]!),
        [order.length],
        { dtype: 'int32', device: this.device },
      );
    });
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
  private stageNgramRows(rank: Rank, batch: Batch, ngram: NgramStaging | null, ids: Int32Array) {
    if (!ngram) {
      this.gatherNgramRows(null, ids, batch.ngramRows!);
      if (rank.main !== this.main) native.defaultStream('cpu').synchronize(); // its replay runs on its own stream
      return;
    }
    ngram.uploaded.synchronize();
    this.gatherNgramRows(ngram.cpu, ids, ngram.staging);
    ngram.cpu.synchronize();
  }

  /** The Step of a rank's batch: where the architecture's ops run. */
  private step(r: Rank, b: Batch, routing: Tensor[] | null, routingStack: Tensor | null = null): Step {
    return {
      dims: this.dims,
      device: r.device,
      batch: b,
      main: r.main,
      moeStream: r.moeStream,
      moeEvents: r.events,
      caches: r.caches,
      invFreq: r.invFreq,
      experts: r.experts,
      routing,
      routingStack,
      marks: r.marks,
    };
  }

  /**
   * Benchmarks: from now on every step records, per rank and layer, when its dense branch and the
   * layer end (CPU event timestamps); layerProfile() reads the last step's. Call it before the first
   * decode step (a graph captured earlier records nothing). The overlap figure of issue 14: with
   * overlapMoe the layer's time from u ready (the branches' fork) to its end (the join), against
   * its branches' times run one after the other (overlapMoe false: the MoE branch from the fork to
   * its output, the dense branch from there to its end).
   */
  profileLayers() {
    if (this.decodeGraphs.size || this.specGraphs.size)
      throw new ArgumentError('E_ARGUMENT', 'profileLayers: call it before the first step (graphs are already captured)');
    for (const r of this.ranks)
      r.marks ??= Array.from({ length: this.dims.layers }, () => ({ dense: new Event(r.device), layer: new Event(r.device) }));
  }

  /** The last step's per layer times (ms) of each rank that ran it: fork -> MoE output, fork ->
   *  dense branch end, fork -> layer end (profileLayers). */
  layerProfile(): { rank: number; moe: number; dense: number; layer: number }[][] {
    this.synchronizeRanks();
    this.main.synchronize();
    return this.ranks
      .filter(r => r.marks)
      .map(r =>
        r.marks!.map((m, l) => {
          const fork = r.events[l]![0];
          return {
            rank: r.index,
            moe: fork.elapsedMs(r.events[l]![1]),
            dense: fork.elapsedMs(m.dense),
            layer: fork.elapsedMs(m.layer),
          };
        }),
      );
  }

  /** Every rank's previous work done (surfacing its errors) before a step is set up. With ranks on
   *  other devices also the runner's main stream: a replayed graph's nodes on those devices are
   *  launched from it, and their inputs are about to be rewritten. */
  private synchronizeRanks() {
    for (const r of this.ranks) {
      r.moeStream.synchronize();
      if (r.main !== this.main) r.main.synchronize();
    }
    this.ep?.synchronize();
    if (this.ranks.some(r => r.device !== this.device)) this.main.synchronize();
  }

  /**
   * Queues the whole forward pass of each rank on its batch, the passes in lockstep (meeting at each
   * MoE layer's all-to-all): each rank starts behind the runner's main stream, which ends behind
   * every rank. `before(i)` / `after(i, out)` queue more of rank i's work on its main stream.
   */
  private runRanks(
    ranks: Rank[],
    batches: Batch[],
    collectRouting: boolean,
    hooks: { before?(i: number): void; after?(i: number, out: PassOutputs): void } = {},
    /** Per rank, where its per-layer counts are written (views of one tensor's rows), else fresh. */
    routingStacks: (Tensor | null)[] = [],
  ): PassOutputs[] {
    this.fork.record(this.main);
    for (const r of ranks) if (r.main !== this.main) r.main.waitEvent(this.fork);
    try {
      for (let i = 0; i < ranks.length; i++) hooks.before?.(i);
      const routing = ranks.map(() => (collectRouting ? ([] as Tensor[]) : null));
      const passes = ranks.map((r, i) => forward(this.step(r, batches[i]!, routing[i]!, routingStacks[i] ?? null), r.w));
      const outs =
        passes.length === 1 && !this.ep && !this.xh
          ? [runToEnd(passes[0]!)]
          : lockstep(passes, () => {
              this.ep?.allToAll();
              this.xh?.exchange();
            });
      const results = outs.map((o, i) => ({ ...o, nFfn: routing[i] ?? [] }));
      for (const [i, o] of results.entries()) hooks.after?.(i, o);
      return results;
    } finally {
      this.ep?.discardPending();
      for (const r of ranks)
        if (r.main !== this.main) {
          r.joined.record(r.main);
          this.main.waitEvent(r.joined);
        }
    }
  }

  /** The streams a captured step records: every rank's two branches and the expert-parallel ranks'
   *  (public for benchmarks, e.g. bench/cpu-ranks.mjs puts them back on the global pool). */
  get captureStreams(): Stream[] {
    const all = [this.main, ...this.ranks.flatMap(r => [r.main, r.moeStream]), ...(this.ep?.streams ?? [])];
    return all.filter((s, i) => all.indexOf(s) === i);
  }

  /**
   * A decode step as one graph replay: the step is captured once per bucket of rows per rank
   * (graphBucket) with inputs in fixed tensors (per rank, on its device), then each step only writes
   * those inputs and replays (DESIGN rule 5: no per-op crossing into native code on the hot path).
   * Returns the graph's own outputs, per part: all graphBucket(T) rows (the first T are the step's).
   */
  private replayDecode(parts: RankPart[], rows: DecodeRows[], queued?: QueuedTokens): DecodeGraph['parts'] {
    const Tp = rows.map(r => graphBucket(r.ids.length));
    const key =
      parts.length === 1 ? `${parts[0]!.rank.index}:${Tp[0]}` : parts.map((p, i) => `${p.rank.index}:${Tp[i]}`).join(',');
    let g = this.decodeGraphs.get(key);
    if (!g) {
      const ranks = parts.map(p => p.rank);
      const inputs = parts.map((p, i) => this.decodeInputs(p.rank, Tp[i]!, rows[i]!.ngramIds !== null));
      let outs: PassOutputs[] = [];
      const stacks = inputs.map((x, i) => empty([this.dims.layers, Tp[i]!], { dtype: 'int32', device: x.rank.device }));
      const graph = native.captureGraph(this.captureStreams, () => {
        outs = this.runRanks(
          ranks,
          inputs.map(x => x.batch),
          true,
          { before: uploadNgramRows(ranks, inputs) },
          stacks,
        );
      });
      g = { graph, parts: inputs.map((x, i) => ({ ...x, out: outs[i]!, ffnStack: stacks[i]! })) };
      this.decodeGraphs.set(key, g);
    }
    for (const [i, x] of g.parts.entries()) {
      const padded = this.padRows(rows[i]!, Tp[i]!, 1);
      if (queued) this.queueDecodeInputs(x, padded, queued);
      else this.writeDecodeInputs(x, padded);
    }
    g.graph.replay();
    this.lastStepGraph = g.graph;
    for (const x of g.parts) x.ngram?.uploaded.record(x.rank.main);
    return g.parts;
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

  /** The fixed input tensors of a rank's captured decode batch of T rows: every int32 input in one
   *  buffer, so a step uploads them with one copy (ids, positions, slots, seqLens, then the block table). */
  private decodeInputs(rank: Rank, T: number, ngram: boolean, extra = 0): GraphInputs {
    const tableLen = T * this.maxBlocks,
      device = rank.device;
    const inputs = empty([4 * T + tableLen + extra], { dtype: 'int32', device });
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
      batch.ngramRows = empty(shape, { dtype, device });
      if (device !== 'cpu')
        staging = {
          staging: empty(shape, { dtype, device: 'cpu', pinned: true }),
          uploaded: new Event(device),
          cpu: native.defaultStream('cpu'),
        };
    }
    return { rank, inputs, batch, host: new Int32Array(inputs.shape[0]!), ngram: staging };
  }

  private writeDecodeInputs(g: GraphInputs, host: DecodeRows) {
    if (host.ngramIds) this.stageNgramRows(g.rank, g.batch, g.ngram, host.ngramIds);
    g.inputs.copyFromBytes(this.packDecodeInputs(g, host));
  }

  /** The graph's int32 inputs in their one buffer's layout (decodeInputs). */
  private packDecodeInputs(g: GraphInputs, host: DecodeRows): Int32Array {
    const T = host.ids.length,
      buf = g.host;
    buf.set(host.ids, 0);
    buf.set(host.positions, T);
    buf.set(host.slots, 2 * T);
    buf.set(host.seqLens, 3 * T);
    buf.set(host.blockTable, 4 * T);
    return buf;
  }

  /**
   * writeDecodeInputs for a queued step (ForwardOptions.queued): the inputs are copied in on the
   * main stream from a copy of their bytes (the step before may still be reading the graph's), then
   * the device-sampled tokens into their rows; a padding row repeats row 0 (padRows), its token too.
   */
  private queueDecodeInputs(g: GraphInputs, host: DecodeRows, q: QueuedTokens) {
    native.copyBytes(this.main, g.inputs, this.packDecodeInputs(g, host));
    if (!q.ids) return;
    const src = q.ids,
      Tp = host.ids.length,
      from = (r: number) => q.rows[r < q.rows.length ? r : 0]!; // padding rows: row 0's source
    for (let r0 = 0; r0 < Tp; ) {
      const s0 = from(r0);
      let r1 = r0 + 1;
      if (s0 >= 0) while (r1 < Tp && from(r1) === s0 + (r1 - r0)) r1++; // a run of consecutive source rows
      if (s0 >= 0 && r0 === 0 && r1 === Tp && s0 === 0 && src.shape[0] === Tp)
        native.copy(this.main, g.batch.ids, src); // every row from the same row of ids: no views
      else if (s0 >= 0) {
        const dst = g.batch.ids.narrow(r0, r1 - r0),
          part = src.narrow(s0, r1 - r0);
        native.copy(this.main, dst, part);
        dst.dispose();
        part.dispose();
      }
      r0 = r1;
    }
  }

  /**
   * Prefix caching: the cached pages (SequenceCache.publish) that `tokens` starts with, covering at
   * most `limit` tokens -- with `mtp`, only pages that also hold the MTP head's latents. The pages
   * are those of `seq`'s rank (rank 0's without it): a sequence adopts pages of its own rank only.
   */
  cachedPrefix(tokens: readonly number[], limit: number, mtp = false, seq?: SequenceCache): number[] {
    const allocator = seq ? rankOf(this.ranks, seq, 'cachedPrefix').allocator : this.allocator;
    const { blocks } = matchPrefix(allocator, this.blockSize, tokens, limit);
    const n = mtp ? blocks.findIndex(id => !allocator.hasMtp(id)) : -1;
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
    const parts = byRank(this.ranks, seqs, 'LongcatModel.mtp');
    this.synchronizeRanks();
    const rowStart = counts.map((_, b) => counts.slice(0, b).reduce((x, y) => x + y, 0));
    const arenas: Arena[] = [];
    const logits: Tensor[] = [];
    const mine = (p: RankPart, a: Arena): Tensor => {
      if (parts.length === 1 && p.rank.device === this.device) return hidden;
      // its sequences' rows of `hidden`, on its device
      const idx = p.seqs.flatMap(b => Array.from({ length: counts[b]! }, (_, i) => rowStart[b]! + i));
      const h = empty([idx.length, this.dims.hidden], { device: this.device });
      native.gatherRows(
        this.main,
        h,
        hidden,
        a.keep(tensor(Int32Array.from(idx), [idx.length], { dtype: 'int32', device: this.device })),
      );
      if (p.rank.device === this.device) return a.keep(h);
      this.main.synchronize();
      const host = h.to('cpu');
      h.dispose();
      a.keep(host);
      return p.rank.device === 'cpu' ? host : a.keep(host.to(p.rank.device));
    };
    try {
      const ranks = parts.map(p => p.rank);
      const inputs = parts.map(p => {
        const a = new Arena(p.rank.device);
        arenas.push(a);
        const here = new Arena(this.device);
        arenas.push(here);
        return { a, h: mine(p, here) };
      });
      this.fork.record(this.main);
      for (const r of ranks) if (r.main !== this.main) r.main.waitEvent(this.fork);
      try {
        parts.forEach((p, i) => {
          const a = inputs[i]!.a;
          const positions: number[] = [],
            slots: number[] = [],
            lastRow: number[] = [];
          for (const b of p.seqs) {
            for (let j = 0; j < counts[b]!; j++) positions.push(start[b]! + j);
            slots.push(...seqs[b]!.slots(start[b]!, start[b]! + counts[b]!));
            lastRow.push(positions.length - 1);
          }
          const mySeqs = p.seqs.map(b => seqs[b]!);
          const batch: Batch = {
            mode: counts.every(n => n === 1) ? 'decode' : 'prefill',
            T: positions.length,
            ids: a.ints(p.seqs.flatMap(b => next[b]!)),
            positions: a.ints(positions),
            slots: a.ints(slots),
            ...(opts.allLogits ? {} : { lastRow: a.ints(lastRow) }),
          };
          if (batch.mode === 'decode') {
            const bt = batchTables(mySeqs);
            batch.blockTable = a.ints(bt.table, [batch.T, bt.maxBlocks]);
            batch.seqLens = a.ints(positions.map(x => x + 1));
          } else {
            const kvStart = [0];
            batch.gathers = p.seqs.map((b, j) => {
              const length = start[b]! + counts[b]!;
              kvStart.push(kvStart[j]! + length);
              return { table: a.ints(seqs[b]!.blockTable()), start: kvStart[j]!, length };
            });
            batch.qStart = a.ints([0, ...lastRow.map(r => r + 1)]);
            batch.kvStart = a.ints(kvStart);
            batch.kvTotal = kvStart[p.seqs.length]!;
          }
          logits.push(mtpForward(this.step(p.rank, batch, null), p.rank.w, inputs[i]!.h));
        });
      } finally {
        for (const r of ranks)
          if (r.main !== this.main) {
            r.joined.record(r.main);
            this.main.waitEvent(r.joined);
          }
      }
    } finally {
      for (const a of arenas) a.dispose();
    }
    return this.assemble(parts, logits, opts.allLogits ? counts : counts.map(() => 1), false);
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
   * Under expert parallelism each rank verifies, accepts and drafts for its own sequences.
   */
  async speculativeStep(
    seqs: SequenceCache[],
    pending: number[],
    drafts: number[],
    sampling: readonly SamplingParams[],
  ): Promise<SpeculativeStep> {
    if (this.disposed) throw new DisposedError('E_DISPOSED', 'LongcatModel.speculativeStep: the model was disposed');
    if (this.xh) throw new ArgumentError('E_ARGUMENT', 'LongcatModel.speculativeStep: not available across hosts (nccl) yet');
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
    const parts = byRank(this.ranks, seqs, 'speculativeStep');
    this.lastStepGraph?.prewake(); // (as in forwardHere)
    this.verifyWeights?.();
    this.synchronizeRanks();
    const pastLens = seqs.map(s => s.length);
    const reserved: Int32Array[] = [];
    let nFfn: Tensor[] | null = null;
    try {
      for (const seq of seqs) reserved.push(seq.reserve(2));
      // each part replays the graph of graphBucket(n) sequences; padding sequences repeat its first
      // (padRows), with its draft and settings
      const key = parts.map(p => `${p.rank.index}:${graphBucket(p.seqs.length)}`).join(',');
      const rows = parts.map(p => {
        const sub = <X>(xs: readonly X[]) => p.seqs.map(b => xs[b]!);
        return this.decodeRows(sub(seqs), sub(tokens), sub(pastLens), sub(reserved));
      });
      let g = this.specGraphs.get(key);
      if (!g) {
        g = this.captureSpeculative(parts, rows[0]!.ngramIds !== null);
        this.specGraphs.set(key, g);
      }
      g.parts.forEach((x, i) => {
        const p = parts[i]!,
          n = p.seqs.length,
          Bp = graphBucket(n);
        const extra = x.host.subarray(x.host.length - 7 * Bp);
        extra.set(Int32Array.from(p.seqs.map(b => drafts[b]!)), 0);
        extra.fill(drafts[p.seqs[0]!]!, n, Bp);
        const settings = p.seqs.map(b => sampling[b]!);
        packSampling([...settings, ...Array<SamplingParams>(Bp - n).fill(settings[0]!)], extra.subarray(Bp));
        this.writeDecodeInputs(x, this.padRows(rows[i]!, 2 * Bp, 2));
      });
      replayed = performance.now();
      g.graph.replay();
      this.lastStepGraph = g.graph;
      for (const x of g.parts) x.ngram?.uploaded.record(x.rank.main);
      // One part on the runner's device: the counts are views of the graph's outputs, taken while
      // the replay runs (host work off the step's critical path); several parts are gathered after.
      if (parts.length === 1 && g.parts[0]!.nFfn[0]?.device === this.device)
        nFfn = this.assembleCounts(
          parts,
          [g.parts[0]!.nFfn],
          seqs.map(() => 2),
          true,
        );
      // (the replay's nodes on other devices are launched from the runner's device: wait for it first)
      if (g.parts.some(x => x.rank.device !== this.device)) await native.synchronizeAsync(this.device);
      const outs = await Promise.all(g.parts.map(async x => (await toArrayAsync(x.outputs)) as Int32Array));
      const readBack = performance.now();
      this.ep?.endStep();
      const accepted = new Array<number>(B),
        committed = new Array<number[]>(B),
        nextDrafts = new Array<number>(B);
      parts.forEach((p, i) => {
        const out = outs[i]!,
          Bp = graphBucket(p.seqs.length);
        p.seqs.forEach((b, j) => {
          accepted[b] = out[2 * Bp + j]!;
          committed[b] = Array.from(out.subarray(2 * j, 2 * j + accepted[b]! + 1));
          nextDrafts[b] = out[3 * Bp + j]!;
        });
      });
      seqs.forEach((seq, b) => {
        seq.truncate(pastLens[b]! + 1 + accepted[b]!); // (the step's own pages: never shared)
      });
      return {
        tokens: committed,
        accepted,
        drafts: nextDrafts,
        nFfn:
          nFfn ??
          this.assembleCounts(
            parts,
            g.parts.map(x => x.nFfn),
            seqs.map(() => 2),
            true,
          ),
        hostMs: replayed - t0 + performance.now() - readBack,
      };
    } catch (e) {
      for (const t of nFfn ?? []) t.dispose();
      this.abandonStep(seqs, pastLens, reserved.length);
      throw e;
    }
  }

  /** Captures the fused verify + accept + draft step of the parts' sequences, each rank on its own
   *  (replayed as one job per stream on the CPU), for graphBucket(n) sequences per part. */
  private captureSpeculative(parts: RankPart[], ngram: boolean): SpeculativeGraph {
    const ranks = parts.map(p => p.rank);
    const gparts = parts.map(p => {
      const B = graphBucket(p.seqs.length),
        T = 2 * B;
      // Inputs: the decode rows, then the drafts [B] and the sampling settings [B, 6].
      const x = this.decodeInputs(p.rank, T, ngram, 7 * B);
      const n = x.inputs.shape[0]!;
      const draftsIn = x.inputs.narrow(n - 7 * B, B),
        params = x.inputs.narrow(n - 6 * B, 6 * B).view([B, 6]);
      // Outputs in one buffer, read back with one copy: tokens [B, 2], accepted [B], next drafts [B].
      const outputs = empty([4 * B], { dtype: 'int32', device: p.rank.device });
      const tokens = outputs.narrow(0, T),
        accepted = outputs.narrow(T, B),
        next = outputs.narrow(3 * B, B);
      // Row j of sequence b is verified row 2 b + j: the MTP head's lm_head runs on the row after
      // each sequence's last accepted token only (picked by selectAccepted), B rows instead of 2 B.
      const rowPairs = tensor(
        Int32Array.from({ length: T }, (_, i) => i),
        [B, 2],
        { dtype: 'int32', device: p.rank.device },
      );
      return { ...x, B, outputs, draftsIn, params, tokens, accepted, next, rowPairs, nFfn: [] as Tensor[] };
    });
    const graph = native.captureGraph(this.captureStreams, () => {
      this.runRanks(
        ranks,
        gparts.map(x => x.batch),
        true,
        {
          before: uploadNgramRows(ranks, gparts),
          after: (i, verify) => {
            const x = gparts[i]!,
              r = ranks[i]!,
              B = x.B,
              s = r.main;
            const a = new Arena(r.device);
            x.nFfn = verify.nFfn;
            native.sampleSpeculative(
              s,
              a.keep(x.tokens.view([B, 2])),
              x.accepted,
              verify.logits,
              a.keep(x.draftsIn.view([B, 1])),
              x.batch.positions,
              x.params,
            );
            // The MTP head on the verified rows' pairs (hidden at L + j, the token after it), at the same
            // positions and slots: row 1's pair is void when the draft was rejected (its slot is dropped).
            // Its layer runs on both rows (both latents are cached); the logits only for the row after the
            // last accepted token, whose argmax is the next draft.
            const lastRow = a.i32([B]);
            native.selectAccepted(s, lastRow, x.rowPairs, x.accepted);
            const mtpBatch: Batch = { ...x.batch, ids: x.tokens, ngramRows: undefined, lastRow };
            const draftLogits = mtpForward(this.step(r, mtpBatch, null), r.w, verify.hidden);
            native.sample(s, x.next, draftLogits, 0, 0, 1, 0, 0, 0); // the draft: the head's argmax
            for (const t of [verify.logits, verify.hidden, draftLogits]) a.keep(t);
            a.dispose();
          },
        },
      );
    });
    return {
      graph,
      parts: gparts.map(x => ({
        rank: x.rank,
        inputs: x.inputs,
        batch: x.batch,
        host: x.host,
        ngram: x.ngram,
        outputs: x.outputs,
        nFfn: x.nFfn,
        views: [x.draftsIn, x.params, x.tokens, x.accepted, x.next, x.rowPairs],
      })),
    };
  }

  /** Frees the KV cache, streams and the tensors the model created (not the checkpoint's). */
  dispose() {
    if (this.disposed) return;
    this.disposed = true;
    this.synchronizeRanks();
    this.main.synchronize();
    const disposeInputs = (x: GraphInputs) => {
      const b = x.batch;
      for (const t of [x.inputs, b.ids, b.positions, b.slots, b.blockTable!, b.seqLens!]) t.dispose();
      b.ngramRows?.dispose();
      x.ngram?.staging.dispose(); // after the graph: its copy node reads it
    };
    for (const g of this.decodeGraphs.values()) {
      g.graph.dispose();
      for (const x of g.parts) {
        disposeInputs(x);
        for (const t of [x.out.logits, x.out.hidden, ...x.out.nFfn, x.ffnStack]) t.dispose();
      }
    }
    this.decodeGraphs.clear();
    this.lastStepGraph = null;
    for (const g of this.specGraphs.values()) {
      g.graph.dispose();
      for (const x of g.parts) {
        disposeInputs(x);
        for (const t of [x.outputs, ...x.nFfn, ...x.views]) t.dispose();
      }
    }
    this.specGraphs.clear();
    const replicas = new Set(this.ranks.map(r => r.w).filter(w => w !== this.w));
    this.disposeRanks();
    for (const t of this.w.owned) t.dispose();
    for (const w of replicas) for (const t of w.owned) t.dispose();
    this.ep?.dispose();
    this.xh?.dispose();
  }
}
