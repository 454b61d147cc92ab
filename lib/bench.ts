// `longcat bench` (and the weight accounting and bandwidth probes of bench/*.mjs): prefill and
// decode tokens/s in llama-bench's conventions (pp<P>: a prompt of P tokens into an empty sequence;
// tg<N>: N single-token decode steps from an empty sequence; mean and sample standard deviation over
// R repetitions after one warmup), plus the weight bytes a decode step reads, the read bandwidth of
// the machine measured in the same run and the fraction of the weight-streaming roofline reached
// (decode only: prefill is compute bound, and its rows leave those columns null).
import { native } from './native.js';
import { Event, Stream } from './device.js';
import { empty, numel, type Tensor } from './tensor.js';
import type { Model } from './generate.js';
import type { Linear } from './model/weights.js';

/** The weight bytes and linear parameter counts of a loaded model (engine weights), by part. */
export interface WeightAccounting {
  /** Non-expert weights of the layers a decode step reads (MLA in its absorbed form, dense MLPs, router, norms). */
  denseBytes: number;
  /** Final norm + lm_head. */
  headBytes: number;
  /** N-gram rows a token gathers (one per table) + the projections. */
  ngramBytes: number;
  nonExpertBytes: number;
  /** One routed FFN expert. */
  expertBytes: number;
  expertParams: number;
  /** Per-token linear MACs of the prefill (expanded) form. */
  denseParams: number;
  headParams: number;
  lmHeadBytes: number;
  /** The MTP layer (eh_proj halves, norms, MLA, dense MLP; its embedding excluded: one row is read). */
  mtpBytes: number;
  weightDtype: string;
  embedBytes: number;
}

type Mla = Model['engine']['w']['layers'][number]['attn'][number];
const linBytes = (l: Linear) => l.weight.nbytes + (l.scale ? l.scale.nbytes : 0);
const linParams = (l: Linear) => numel(l.weight.shape);
/** Bytes of an MLA sub-layer's weights a decode step reads (the absorbed form: kv_b as W_UK / W_UV). */
const mlaBytes = (a: Mla) =>
  [a.qA, a.qB, a.kvLatent, a.kvRope, a.o].reduce((s, l) => s + linBytes(l), 0) +
  a.kvB.nbytes +
  (a.kvBScales ? a.kvBScales.uk.nbytes + a.kvBScales.uv.nbytes : 0) +
  a.qNorm.nbytes +
  a.kvNorm.nbytes;

/** Weight bytes a decode step reads and linear FLOPs per prefill token, from a loaded model's engine weights. */
export function weightAccounting(model: Model): WeightAccounting {
  const w = model.engine.w;
  let denseBytes = 0,
    denseParams = 0;
  for (const L of w.layers) {
    for (const a of L.attn) {
      denseBytes += mlaBytes(a);
      for (const l of [a.qA, a.qB, a.kvLatent, a.kvRope, a.o]) denseParams += linParams(l);
      denseParams += linParams(a.kvBLinear); // prefill: kv_b_proj on every cached token
    }
    for (const m of L.mlp)
      for (const l of [m.gate, m.up, m.down]) {
        denseBytes += linBytes(l);
        denseParams += linParams(l);
      }
    denseBytes += L.moe.classifier.nbytes + L.moe.bias.nbytes;
    denseParams += numel(L.moe.classifier.shape);
    for (const n of [...L.inputNorm, ...L.postAttnNorm]) denseBytes += n.nbytes;
  }
  const headBytes = w.norm.nbytes + linBytes(w.lmHead);
  const ngramBytes = w.ngram ? w.ngram.tables.reduce((a, t) => a + t.nbytes / t.shape[0]!, 0) + w.ngram.proj.nbytes : 0;
  const m = w.mtp;
  const mtpBytes = m
    ? linBytes(m.ehEmbed) +
      linBytes(m.ehHidden) +
      [m.enorm, m.hnorm, m.inputNorm, m.postAttnNorm, m.norm].reduce((s, t) => s + t.nbytes, 0) +
      mlaBytes(m.attn) +
      [m.mlp.gate, m.mlp.up, m.mlp.down].reduce((s, l) => s + linBytes(l), 0)
    : 0;
  const x = model.checkpoint.expertWeights(0, 0);
  // one expert as the step reads it (quantized at load: the made tensors, not the checkpoint's)
  const e0 = w.layers[0]?.moe.expertTensors[0];
  const expertBytes = e0
    ? e0.reduce((a, t) => a + t.nbytes, 0)
    : [x.gate, x.up, x.down, x.gateScale, x.upScale, x.downScale].reduce((a, t) => a + (t ? t.nbytes : 0), 0);
  return {
    denseBytes,
    headBytes,
    ngramBytes,
    nonExpertBytes: denseBytes + headBytes + ngramBytes,
    expertBytes,
    expertParams: numel(x.gate.shape) + numel(x.up.shape) + numel(x.down.shape),
    denseParams,
    headParams: linParams(w.lmHead),
    lmHeadBytes: linBytes(w.lmHead),
    mtpBytes,
    weightDtype: w.layers[0]!.mlp[0]!.gate.weight.dtype,
    embedBytes: w.embed.nbytes,
  };
}

/**
 * The CPU tensors a decode step may read (the bytes weightAccounting counts, every routed expert instead of one):
 * each layer's MLA (absorbed form), dense MLPs, router and norms, every routed expert's weights and scales, the
 * final norm and lm_head; not the embedding, the N-gram tables or the MTP head. For readTensorsBandwidth.
 */
export function decodeWeightTensors(model: Model): Tensor[] {
  const w = model.engine.w;
  const lin = (l: Linear) => (l.scale ? [l.weight, l.scale] : [l.weight]);
  const out: Tensor[] = [];
  for (const L of w.layers) {
    for (const a of L.attn) {
      for (const l of [a.qA, a.qB, a.kvLatent, a.kvRope, a.o]) out.push(...lin(l));
      out.push(a.kvB, a.qNorm, a.kvNorm);
      if (a.kvBScales) out.push(a.kvBScales.uk, a.kvBScales.uv);
    }
    for (const m of L.mlp) for (const l of [m.gate, m.up, m.down]) out.push(...lin(l));
    out.push(L.moe.classifier, L.moe.bias, ...L.inputNorm, ...L.postAttnNorm, ...L.moe.expertTensors.flat());
  }
  out.push(w.norm, ...lin(w.lmHead));
  return out.filter(t => t.device === 'cpu');
}

/** GB/s of every pool thread reading the tensors' own bytes (native/ops/bench.cc), median of `passes`. */
export const readTensorsBandwidth = (tensors: Tensor[], passes = 3): number => native.benchReadTensors(tensors, passes).gbps;

/** GB/s summing `bytes` of host memory with every pool thread (native/ops/bench.cc), median of `passes`. */
export const readBandwidth = (bytes = 1 << 30, passes = 3): number => native.benchReadBandwidth(bytes, passes).gbps;

/**
 * GB/s of a device-to-device copy (bytes read + written, CUDA events), median of `passes`: a GPU's
 * weight-streaming roofline, as bench/gpu-model.mjs measures it.
 */
export function deviceCopyBandwidth(device: string, bytes = 1 << 30, passes = 5): number {
  const n = Math.max(1, Math.floor(bytes / 4));
  const stream = new Stream(device);
  const a = empty([n], { dtype: 'bf16', device }),
    b = empty([n], { dtype: 'bf16', device });
  try {
    const times: number[] = [];
    for (let i = 0; i < passes; i++) {
      const e0 = new Event(device),
        e1 = new Event(device);
      e0.record(stream);
      native.convert(stream, b, a);
      e1.record(stream);
      e1.synchronize();
      times.push(e0.elapsedMs(e1));
    }
    times.sort((x, y) => x - y);
    return (4 * n) / times[times.length >> 1]! / 1e6;
  } finally {
    a.dispose();
    b.dispose();
    stream.dispose();
  }
}

/** The bandwidth a decode step on `device` streams its weights at: host read bandwidth, or device copy bandwidth. */
export const measureBandwidth = (device: string, bytes?: number): number =>
  device === 'cpu' ? readBandwidth(bytes) : deviceCopyBandwidth(device, bytes);

export interface BenchOptions {
  /** Prompt tokens of the prefill test (0: no prefill test). Default 512. */
  nPrompt?: number;
  /** Decode steps of the generation test (0: no generation test). Default 128. */
  nGen?: number;
  /** Repetitions of each test. Default 5. */
  repetitions?: number;
  /** Bytes the bandwidth probe reads (default: 8x the checkpoint, within [256 MiB, 1 GiB], beyond the caches). */
  probeBytes?: number;
  /** Called before each timed repetition (progress). */
  onRun?: (test: string, rep: number, of: number) => void;
  /** Checked between repetitions. */
  signal?: AbortSignal;
}

/** One test's row, llama-bench's JSON fields plus the roofline columns. */
export interface BenchRow {
  test: string;
  n_prompt: number;
  n_gen: number;
  /** Mean and sample standard deviation of tokens/s, every repetition's tokens/s. */
  avg_ts: number;
  stddev_ts: number;
  samples_ts: number[];
  avg_ns: number;
  stddev_ns: number;
  samples_ns: number[];
  /** Weight bytes one decode step reads (non-expert + measured FFN experts/token x one expert); null for prefill. */
  weight_bytes_per_token: number | null;
  /** FFN experts a token was routed to, summed over the layers (measured from the run's routing). */
  ffn_experts_per_token: number;
  /** Read bandwidth measured in this run (GB/s): the higher of the probes before and after. */
  bandwidth_gbps: number;
  /** bandwidth / weight bytes per token; null for prefill. */
  roofline_ts: number | null;
  /** avg_ts / roofline_ts; null for prefill. */
  roofline_fraction: number | null;
}

export interface BenchResult {
  model: string;
  /** Checkpoint bytes on disk and parameters (the whole model). */
  model_size: number;
  model_n_params: number;
  weight_type: string;
  backend: string;
  device: string;
  n_threads: number;
  repetitions: number;
  /** The two bandwidth probes (GB/s, before and after the tests), and the bytes each read. */
  bandwidth_samples_gbps: number[];
  bandwidth_probe_bytes: number;
  rows: BenchRow[];
}

export const mean = (v: readonly number[]): number => v.reduce((a, b) => a + b, 0) / v.length;
/** Sample standard deviation (n - 1), as llama-bench; 0 for one sample. */
export const stddev = (v: readonly number[]): number => {
  if (v.length < 2) return 0;
  const m = mean(v);
  return Math.sqrt(v.reduce((a, b) => a + (b - m) ** 2, 0) / (v.length - 1));
};

const now = () => Number(process.hrtime.bigint());
const sumCounts = (nFfn: Tensor[] | undefined): number => {
  let s = 0;
  for (const t of nFfn ?? []) {
    for (const c of new Int32Array(t.toBytes().buffer)) s += c;
    t.dispose();
  }
  return s;
};

/** A deterministic token stream (no prompt text: llama-bench times random tokens too). */
function tokens(vocab: number, seed: number) {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) % vocab;
  };
}

/** Prefill of n tokens into an empty sequence: ns, FFN expert picks. */
function prefill(model: Model, n: number, seed: number) {
  const e = model.engine,
    tok = tokens(e.dims.vocab, seed);
  const prompt = Array.from({ length: n }, tok);
  const seq = e.newSequence();
  try {
    native.synchronize(e.device);
    const t0 = now();
    const { logits, nFfn } = e.forward([seq], [prompt], { collectRouting: true });
    logits.toBytes();
    const ns = now() - t0;
    logits.dispose();
    return { ns, ffn: sumCounts(nFfn) / n };
  } finally {
    seq.release();
  }
}

/** n decode steps from an empty sequence: ns, FFN expert picks per token. */
function decode(model: Model, n: number, seed: number) {
  const e = model.engine,
    tok = tokens(e.dims.vocab, seed);
  const seq = e.newSequence();
  try {
    native.synchronize(e.device);
    let ns = 0,
      ffn = 0;
    for (let i = 0; i < n; i++) {
      const t0 = now();
      const { logits, nFfn } = e.forward([seq], [[tok()]], { collectRouting: true });
      logits.toBytes();
      ns += now() - t0;
      logits.dispose();
      ffn += sumCounts(nFfn); // outside the timing
    }
    return { ns, ffn: ffn / n };
  } finally {
    seq.release();
  }
}

/** Runs the prefill and decode tests on a loaded model; `model` is the name reported. */
export function benchModel(model: Model, name: string, opts: BenchOptions = {}): BenchResult {
  const nPrompt = opts.nPrompt ?? 512,
    nGen = opts.nGen ?? 128,
    reps = opts.repetitions ?? 5;
  const device = model.device;
  const acc = weightAccounting(model);
  const probe = opts.probeBytes ?? Math.min(1 << 30, Math.max(256 << 20, 8 * model.checkpoint.totalBytes));
  const bw0 = measureBandwidth(device, probe);
  const rows: BenchRow[] = [];
  const tests: [string, number, number, typeof prefill][] = [];
  if (nPrompt > 0) tests.push([`pp${nPrompt}`, nPrompt, 0, prefill]);
  if (nGen > 0) tests.push([`tg${nGen}`, 0, nGen, decode]);
  const raw: { row: Omit<BenchRow, 'bandwidth_gbps' | 'roofline_ts' | 'roofline_fraction'>; decode: boolean }[] = [];
  for (const [test, p, g, fn] of tests) {
    const n = p || g;
    fn(model, Math.min(n, 16), 1); // warmup (captures the decode graph on a GPU)
    const ns: number[] = [],
      ffn: number[] = [];
    for (let r = 0; r < reps; r++) {
      opts.signal?.throwIfAborted();
      opts.onRun?.(test, r, reps);
      const x = fn(model, n, 100 + r);
      ns.push(x.ns);
      ffn.push(x.ffn);
    }
    const ts = ns.map(t => (n * 1e9) / t);
    const ffnPerToken = mean(ffn);
    raw.push({
      decode: g > 0,
      row: {
        test,
        n_prompt: p,
        n_gen: g,
        avg_ts: mean(ts),
        stddev_ts: stddev(ts),
        samples_ts: ts,
        avg_ns: mean(ns),
        stddev_ns: stddev(ns),
        samples_ns: ns,
        weight_bytes_per_token: g > 0 ? acc.nonExpertBytes + ffnPerToken * acc.expertBytes : null,
        ffn_experts_per_token: ffnPerToken,
      },
    });
  }
  const bw1 = measureBandwidth(device, probe);
  const bw = Math.max(bw0, bw1);
  for (const { row } of raw) {
    const bpt = row.weight_bytes_per_token;
    const roof = bpt ? (bw * 1e9) / bpt : null;
    rows.push({ ...row, bandwidth_gbps: bw, roofline_ts: roof, roofline_fraction: roof ? row.avg_ts / roof : null });
  }
  const ck = model.checkpoint;
  let params = 0;
  for (const t of ck.tensors.values()) params += numel(t.shape);
  return {
    model: name,
    model_size: ck.totalBytes,
    model_n_params: params,
    weight_type: acc.weightDtype,
    backend: device === 'cpu' ? 'cpu' : 'cuda',
    device,
    n_threads: device === 'cpu' ? native.threads() : 0,
    repetitions: reps,
    bandwidth_samples_gbps: [bw0, bw1],
    bandwidth_probe_bytes: probe,
    rows,
  };
}

const fmtBytes = (n: number) => (n >= 1e9 ? `${(n / 1e9).toFixed(2)} GB` : `${(n / 1e6).toFixed(2)} MB`);
const fmtCount = (n: number) => (n >= 1e9 ? `${(n / 1e9).toFixed(2)} B` : `${(n / 1e6).toFixed(2)} M`);

/** llama-bench's markdown table, with the roofline columns after t/s. */
export function benchMarkdown(r: BenchResult): string {
  const head = [
    'model',
    'size',
    'params',
    'backend',
    'threads',
    'test',
    't/s',
    'weight MB/token',
    'read GB/s',
    'roofline t/s',
    '% roofline',
  ];
  const lines = [
    `| ${head.join(' | ')} |`,
    `| ${head.map((h, i) => (i < 5 ? '-'.repeat(h.length) : `${'-'.repeat(h.length - 1)}:`)).join(' | ')} |`,
  ];
  for (const x of r.rows)
    lines.push(
      `| ${[
        r.model,
        fmtBytes(r.model_size),
        fmtCount(r.model_n_params),
        r.device,
        r.n_threads || '-',
        x.test,
        `${x.avg_ts.toFixed(2)} ± ${x.stddev_ts.toFixed(2)}`,
        x.weight_bytes_per_token === null ? '-' : (x.weight_bytes_per_token / 1e6).toFixed(2),
        x.bandwidth_gbps.toFixed(1),
        x.roofline_ts === null ? '-' : x.roofline_ts.toFixed(1),
        x.roofline_fraction === null ? '-' : `${(100 * x.roofline_fraction).toFixed(1)}%`,
      ].join(' | ')} |`,
    );
  return `${lines.join('\n')}\n`;
}

/** One JSON object per test (llama-bench -o jsonl): the run's fields and the row's. */
export function benchJsonl(r: BenchResult): string {
  const { rows, ...common } = r;
  return rows.map(x => `${JSON.stringify({ ...common, ...x })}\n`).join('');
}

/** A JSON array of the tests (llama-bench -o json), each with the run's fields. */
export function benchJson(r: BenchResult): string {
  const { rows, ...common } = r;
  return `${JSON.stringify(
    rows.map(x => ({ ...common, ...x })),
    null,
    2,
  )}\n`;
}
