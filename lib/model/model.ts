// The LongCat-Flash forward pass (SPEC 3), composed from native ops. Prefill runs the expanded
// MLA over each sequence's cached latents; decode runs the absorbed MLA against the paged latent
// cache. The shortcut MoE of every layer runs on its own stream, overlapping the dense branch.
import { native } from '../native.js';
import { Tensor, empty, tensor } from '../tensor.js';
import { Event, Stream } from '../device.js';
import { BlockAllocator, SequenceCache, batchTables } from '../kv-cache.js';
import { ArgumentError, LongcatError, OutOfMemoryError } from '../errors.js';
import type { ModelDims } from './dims.js';
import type { Graph } from '../../types/native.js';
import type { Linear, LayerWeights, MlaWeights, MlpWeights, MoeWeights, ModelWeights } from './weights.js';

/** Temporaries of one stage: disposed together once the ops that use them are queued. */
class Arena {
  private held: Tensor[] = [];
  constructor(readonly device: string) {}
  f32(shape: number[]): Tensor {
    return this.keep(empty(shape, { device: this.device }));
  }
  i32(shape: number[]): Tensor {
    return this.keep(empty(shape, { dtype: 'int32', device: this.device }));
  }
  ints(values: ArrayLike<number>, shape = [values.length]): Tensor {
    return this.keep(tensor(values, shape, { dtype: 'int32', device: this.device }));
  }
  keep<T extends Tensor>(t: T): T {
    this.held.push(t);
    return t;
  }
  dispose() {
    for (const t of this.held) t.dispose();
    this.held = [];
  }
}

/** The per-step tensors describing where the batch's tokens sit. */
interface BatchInfo {
  mode: 'prefill' | 'decode';
  T: number;
  ids: Tensor; // int32 [T]
  lastRow?: Tensor; // int32 [B]: prefill rows whose logits are wanted (all rows when absent)
  positions: Tensor; // int32 [T]
  slots: Tensor; // int32 [T]
  // decode: one new token per sequence
  blockTable?: Tensor; // int32 [B, maxBlocks]
  seqLens?: Tensor; // int32 [B]
  // prefill: sequence b has queries qStart[b]..qStart[b+1], keys kvStart[b]..kvStart[b+1]
  qStart?: Tensor;
  kvStart?: Tensor;
  kvTotal?: number;
  gathers?: { table: Tensor; start: number; length: number }[];
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
  private readonly events: Event[][];
  private readonly invFreq: Tensor;
  private readonly maxBlocks: number;
  private readonly useGraphs: boolean;
  private readonly decodeGraphs = new Map<number, { graph: Graph; inputs: Tensor; info: BatchInfo; out: ForwardResult; host: Int32Array }>();
  private disposed = false;

  constructor(dims: ModelDims, weights: ModelWeights, opts: ModelOptions) {
    this.dims = dims;
    this.w = weights;
    this.device = opts.device;
    this.blockSize = opts.blockSize ?? 64;
    this.maxContext = Math.min(opts.maxContext ?? dims.maxContext, dims.maxContext);
    const blocksPerSeq = Math.ceil(this.maxContext / this.blockSize);
    this.maxBlocks = blocksPerSeq;
    this.useGraphs = opts.graphs ?? true;
    const numBlocks = opts.numBlocks ?? Math.min(4 * blocksPerSeq, 4096);
    this.allocator = new BlockAllocator(numBlocks);
    const width = dims.kvLora + dims.rope, cacheDtype = opts.cacheDtype ?? 'bf16';
    this.caches = [];
    try {
      for (let i = 0; i < 2 * dims.layers; i++) this.caches.push(empty([numBlocks, this.blockSize, width], { dtype: cacheDtype, device: this.device }));
    } catch (e) {
      for (const c of this.caches) c.dispose();
      if (!(e instanceof LongcatError) || e.code !== 'E_OOM') throw e;
      const bytes = 2 * dims.layers * numBlocks * this.blockSize * width * (cacheDtype === 'bf16' ? 2 : 4);
      throw new OutOfMemoryError('E_OOM', `the KV cache does not fit on ${this.device}: ${2 * dims.layers} latent caches of ` +
        `${numBlocks} blocks x ${this.blockSize} x ${width} ${cacheDtype} = ${(bytes / 2 ** 30).toFixed(2)} GiB. ` +
        'Pass a smaller cacheBlocks or maxContext (or cacheDtype \'bf16\').', { cause: e });
    }
    // The dense branch runs on the default stream, so that null-stream ops on the results
    // (sampling, reading logits) are ordered after the forward pass.
    this.main = native.defaultStream(this.device);
    // The shortcut MoE gets its own stream (the device pool fences blocks freed while several
    // streams run, so a temporary of one branch is never reused under the other's kernels).
    this.moeStream = opts.overlapMoe === false ? this.main : new Stream(this.device);
    this.events = Array.from({ length: dims.layers }, () => [new Event(this.device), new Event(this.device)]);
    this.invFreq = tensor(dims.invFreq, [dims.invFreq.length], { device: this.device });
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
  forward(seqs: SequenceCache[], tokens: number[][], opts: { allLogits?: boolean; collectRouting?: boolean; mode?: 'prefill' | 'decode' } = {}): ForwardResult {
    if (this.disposed) throw new ArgumentError('E_DISPOSED', 'LongcatModel.forward: the model was disposed');
    if (seqs.length !== tokens.length || seqs.length === 0)
      throw new ArgumentError('E_ARGUMENT', `forward: ${seqs.length} sequences but ${tokens.length} token lists`);
    const d = this.dims;
    for (const [b, list] of tokens.entries()) {
      if (list.length === 0) throw new ArgumentError('E_ARGUMENT', `forward: sequence ${b} has no new tokens`);
      for (const id of list)
        if (!Number.isInteger(id) || id < 0 || id >= d.vocab)
          throw new ArgumentError('E_ARGUMENT', `forward: token id ${id} of sequence ${b} is outside the vocabulary [0, ${d.vocab})`);
    }
    const mode = opts.mode ?? (tokens.every((t) => t.length === 1) ? 'decode' : 'prefill');
    if (mode === 'decode' && !tokens.every((t) => t.length === 1))
      throw new ArgumentError('E_ARGUMENT', 'forward: decode mode takes exactly one new token per sequence');

    this.moeStream.synchronize(); // the previous step's MoE work is done; this surfaces its errors
    const pastLens = seqs.map((s) => s.length);
    // Reserve cache slots for every sequence first (E_CONTEXT / E_OOM before any work); if
    // anything fails, the sequences are rolled back to their previous lengths.
    const slotLists: Int32Array[] = [];
    try {
      for (const [b, seq] of seqs.entries()) slotLists.push(seq.reserve(tokens[b]!.length));
      return this.forwardReserved(seqs, tokens, pastLens, slotLists, mode, opts);
    } catch (e) {
      seqs.forEach((seq, b) => b < slotLists.length && seq.truncate(pastLens[b]!));
      throw e;
    }
  }

  private forwardReserved(seqs: SequenceCache[], tokens: number[][], pastLens: number[], slotLists: Int32Array[],
    mode: 'prefill' | 'decode', opts: { allLogits?: boolean; collectRouting?: boolean }): ForwardResult {
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
    if (mode === 'decode' && !opts.allLogits && this.useGraphs) {
      const bt = batchTables(seqs, this.maxBlocks);
      return this.replayDecode({ ids, positions, slots, blockTable: bt.table, seqLens: bt.seqLens }, !!opts.collectRouting);
    }

    const step = new Arena(this.device);
    const info: BatchInfo = { mode, T, ids: step.ints(ids), positions: step.ints(positions), slots: step.ints(slots) };
    if (mode === 'decode') {
      const bt = batchTables(seqs);
      info.blockTable = step.ints(bt.table, [seqs.length, bt.maxBlocks]);
      info.seqLens = step.ints(bt.seqLens);
    } else {
      const qStart = [0], kvStart = [0];
      info.gathers = [];
      for (let b = 0; b < seqs.length; b++) {
        qStart.push(qStart[b]! + tokens[b]!.length);
        kvStart.push(kvStart[b]! + seqs[b]!.length);
        info.gathers.push({ table: step.ints(seqs[b]!.blockTable()), start: kvStart[b]!, length: seqs[b]!.length });
      }
      info.qStart = step.ints(qStart);
      info.kvStart = step.ints(kvStart);
      info.kvTotal = kvStart[seqs.length]!;
    }
    if (!opts.allLogits && mode === 'prefill') info.lastRow = step.ints(lastRow);
    const result = this.run(info, !!opts.collectRouting);
    step.dispose();
    return result;
  }

  /** Queues the whole forward pass for the batch described by `b`. */
  private run(b: BatchInfo, collectRouting: boolean): ForwardResult {
    const d = this.dims, s = this.main, a = new Arena(this.device);
    const h = a.f32([b.T, d.hidden]);
    native.embedding(s, h, this.w.embed, b.ids);
    const nFfn: Tensor[] = [];
    for (let l = 0; l < d.layers; l++) this.layer(l, h, b, collectRouting ? nFfn : null);
    let hl = h;
    if (b.lastRow) {
      hl = a.f32([b.lastRow.shape[0]!, d.hidden]);
      native.embedding(s, hl, h, b.lastRow); // each sequence's last row
    }
    const rows = hl.shape[0]!;
    const hf = a.f32([rows, d.hidden]);
    native.rmsnorm(s, hf, hl, this.w.norm, d.eps);
    const logits = empty([rows, d.vocab], { device: this.device });
    linear(s, logits, hf, this.w.lmHead);
    a.dispose();
    return { logits, nFfn };
  }

  /**
   * A decode step of B sequences as one graph replay: the step is captured once per batch size
   * with inputs in fixed tensors, then each step only writes those inputs and replays
   * (DESIGN rule 5: no per-op crossing into native code on the hot path).
   */
  private replayDecode(host: { ids: Int32Array; positions: Int32Array; slots: Int32Array; blockTable: Int32Array; seqLens: Int32Array }, collectRouting: boolean): ForwardResult {
    const B = host.ids.length;
    const tableLen = B * this.maxBlocks;
    let g = this.decodeGraphs.get(B);
    if (!g) {
      // All inputs live in one int32 buffer, so a step uploads them with one copy.
      const inputs = empty([4 * B + tableLen], { dtype: 'int32', device: this.device });
      const part = (i: number, n: number) => inputs.narrow(i, n);
      const info: BatchInfo = {
        mode: 'decode', T: B, ids: part(0, B), positions: part(B, B), slots: part(2 * B, B), seqLens: part(3 * B, B),
      };
      const table = part(4 * B, tableLen);
      info.blockTable = table.view([B, this.maxBlocks]);
      table.dispose();
      let out: ForwardResult | null = null;
      const streams = this.moeStream === this.main ? [this.main] : [this.main, this.moeStream];
      const graph = native.captureGraph(streams, () => {
        out = this.run(info, true);
      });
      g = { graph, inputs, info, out: out!, host: new Int32Array(4 * B + tableLen) };
      this.decodeGraphs.set(B, g);
    }
    const { out, host: buf } = g;
    buf.set(host.ids, 0);
    buf.set(host.positions, B);
    buf.set(host.slots, 2 * B);
    buf.set(host.seqLens, 3 * B);
    buf.set(host.blockTable, 4 * B);
    g.inputs.copyFromBytes(buf);
    g.graph.replay();
    // Fresh handles over the graph's buffers: the caller disposes them, the graph keeps the memory.
    return { logits: out.logits.view(out.logits.shape), nFfn: collectRouting ? out.nFfn.map((t) => t.view(t.shape)) : [] };
  }

  private layer(l: number, h: Tensor, b: BatchInfo, nFfn: Tensor[] | null) {
    const d = this.dims, w: LayerWeights = this.w.layers[l]!, s = this.main;
    const a = new Arena(this.device);
    const [evU, evMoe] = this.events[l]!;
    const T = b.T;
    // sub-block A: attention 0
    const n0 = a.f32([T, d.hidden]);
    native.rmsnorm(s, n0, h, w.inputNorm[0], d.eps);
    const attn0 = this.mla(a, w.attn[0], n0, this.caches[2 * l]!, b);
    // sub-block B: u feeds both dense MLP 0 and the shortcut MoE (on its own stream)
    const u = a.f32([T, d.hidden]);
    native.rmsnorm(s, u, h, w.postAttnNorm[0], d.eps, attn0, h);
    evU!.record(s);
    this.moeStream.waitEvent(evU!);
    const moe = this.moe(a, w.moe, u, nFfn);
    evMoe!.record(this.moeStream);
    const mlp0 = this.mlp(a, w.mlp[0], u);
    // sub-block C: attention 1
    const n1 = a.f32([T, d.hidden]);
    native.rmsnorm(s, n1, h, w.inputNorm[1], d.eps, mlp0, h);
    const attn1 = this.mla(a, w.attn[1], n1, this.caches[2 * l + 1]!, b);
    // sub-block D: dense MLP 1, then the MoE joins: h = (h + mlp1) + moe
    const v = a.f32([T, d.hidden]);
    native.rmsnorm(s, v, h, w.postAttnNorm[1], d.eps, attn1, h);
    const mlp1 = this.mlp(a, w.mlp[1], v);
    native.add(s, h, h, mlp1);
    s.waitEvent(evMoe!);
    native.add(s, h, h, moe);
    a.dispose();
  }

  private mla(a: Arena, w: MlaWeights, x: Tensor, cache: Tensor, b: BatchInfo): Tensor {
    const d = this.dims, s = this.main, T = b.T, nh = d.heads;
    const cq = a.f32([T, d.qLora]);
    linear(s, cq, x, w.qA);
    native.rmsnorm(s, cq, cq, w.qNorm, d.latentEps);
    const q = a.f32([T, nh, d.nope + d.rope]);
    linear(s, q.view([T, nh * (d.nope + d.rope)]), cq, w.qB);
    native.rope(s, q, b.positions, d.nope, this.invFreq, d.ropeAttentionFactor);
    const ckv = a.f32([T, d.kvLora]);
    linear(s, ckv, x, w.kvLatent);
    native.rmsnorm(s, ckv, ckv, w.kvNorm, d.latentEps);
    const kpe = a.f32([T, 1, d.rope]);
    linear(s, kpe.view([T, d.rope]), x, w.kvRope);
    native.rope(s, kpe, b.positions, 0, this.invFreq, d.ropeAttentionFactor);
    native.mlaCacheWrite(s, cache, ckv, kpe.view([T, d.rope]), b.slots);

    const o = a.f32([T, nh, d.v]);
    if (b.mode === 'decode') {
      const qLat = a.f32([T, nh, d.kvLora]);
      native.mlaAbsorbQ(s, qLat, q, w.kvB, d.nope);
      if (w.kvBScales) native.scaleGroups(s, qLat, qLat, w.kvBScales.uk, 128); // W_UK = codes x block scale
      const oLat = a.f32([T, nh, d.kvLora]);
      native.mlaDecodeAbsorbed(s, oLat, qLat, q, cache, b.blockTable!, b.seqLens!, d.softmaxScale);
      if (w.kvBScales) native.scaleGroups(s, oLat, oLat, w.kvBScales.uv, 128); // W_UV's scales, folded into o_lat
      native.mlaOutput(s, o, oLat, w.kvB);
    } else {
      // Expanded form over every sequence's whole cached latent (prefix + the tokens just written).
      const S = b.kvTotal!;
      const ckvAll = a.f32([S, d.kvLora]), kpeAll = a.f32([S, d.rope]);
      for (const g of b.gathers!)
        native.mlaCacheGather(s, a.keep(ckvAll.narrow(g.start, g.length)), a.keep(kpeAll.narrow(g.start, g.length)), cache, g.table, 0, g.length);
      const kvb = a.f32([S, nh, d.nope + d.v]);
      linear(s, kvb.view([S, nh * (d.nope + d.v)]), ckvAll, w.kvBLinear);
      native.mlaPrefill(s, o, q, kvb, kpeAll, b.qStart!, b.kvStart!, d.softmaxScale);
    }
    const out = a.f32([T, d.hidden]);
    linear(s, out, o.view([T, nh * d.v]), w.o);
    return out;
  }

  private mlp(a: Arena, w: MlpWeights, x: Tensor): Tensor {
    const d = this.dims, s = this.main, T = x.shape[0]!;
    const gate = a.f32([T, d.ffn]), up = a.f32([T, d.ffn]);
    linear(s, gate, x, w.gate);
    linear(s, up, x, w.up);
    native.siluMul(s, gate, gate, up);
    const out = a.f32([T, d.hidden]);
    linear(s, out, gate, w.down);
    return out;
  }

  private moe(a: Arena, w: MoeWeights, u: Tensor, nFfn: Tensor[] | null): Tensor {
    const d = this.dims, s = this.moeStream, T = u.shape[0]!, E = d.nRouted + d.nZero;
    const logits = a.f32([T, E]);
    native.linear(s, logits, u, w.classifier);
    const idx = a.i32([T, d.topk]), weights = a.f32([T, d.topk]);
    const count = empty([T], { dtype: 'int32', device: this.device });
    if (nFfn) nFfn.push(count);
    else a.keep(count);
    native.routerTopk(s, idx, weights, count, logits, w.bias, d.nRouted, d.routedScale);
    const out = a.f32([T, d.hidden]);
    native.moe(s, out, u, idx, weights, d.nRouted, w.experts, null, null, null, null, null, E);
    return out;
  }

  /** Frees the KV cache, streams and the tensors the model created (not the checkpoint's). */
  dispose() {
    if (this.disposed) return;
    this.disposed = true;
    this.main.synchronize();
    this.moeStream.synchronize();
    for (const g of this.decodeGraphs.values()) {
      g.graph.dispose();
      const i = g.info;
      for (const t of [g.inputs, i.ids, i.positions, i.slots, i.blockTable!, i.seqLens!, g.out.logits, ...g.out.nFfn]) t.dispose();
    }
    this.decodeGraphs.clear();
    for (const t of [...this.caches, this.invFreq, ...this.w.owned]) t.dispose();
    if (this.moeStream !== this.main) this.moeStream.dispose();
  }
}

function linear(s: Stream, y: Tensor, x: Tensor, w: Linear) {
  native.linear(s, y, x, w.weight, w.scale);
}
