// Helpers shared by the benchmark scripts: a monotonic clock, medians, the read-bandwidth probe,
// the weight bytes a decode step reads (accounting), and deterministic random inputs, drawn from
// the seeded RNG the tests and the op-case table use (lib/check/rng.ts and lib/check/op-cases.ts, compiled
// into dist/check/ by npm run build:ts), so every run times the same data.
import { native } from '../dist/native.js';
import { Event } from '../dist/device.js';
import { tensor, empty, numel } from '../dist/tensor.js';
import { rng } from '../dist/check/rng.js';
import { uniform } from '../dist/check/op-cases.js';

export { rng };

export const now = () => Number(process.hrtime.bigint()) / 1e6;

export const median = v => {
  const s = [...v].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : 0.5 * (s[s.length / 2 - 1] + s[s.length / 2]);
};

/** The flags every CPU benchmark takes: --quick (smaller sizes) and --out FILE (the JSON results). */
export function benchFlags(args = process.argv.slice(2)) {
  return { quick: args.includes('--quick'), outPath: args.includes('--out') ? args[args.indexOf('--out') + 1] : null };
}

/** Milliseconds of each of `iters` runs of `fn` on the device stream, each between two recorded CUDA events. */
export function eventTimes(dev, stream, fn, iters) {
  const times = [];
  for (let i = 0; i < iters; i++) {
    const a = new Event(dev),
      b = new Event(dev);
    a.record(stream);
    fn();
    b.record(stream);
    b.synchronize();
    times.push(a.elapsedMs(b));
  }
  return times;
}

const linBytes = l => l.weight.nbytes + (l.scale ? l.scale.nbytes : 0);
const linParams = l => numel(l.weight.shape);
/** Bytes of an MLA sub-layer's weights a decode step reads (the absorbed form: kv_b as W_UK / W_UV). */
const mlaBytes = a =>
  [a.qA, a.qB, a.kvLatent, a.kvRope, a.o].reduce((s, l) => s + linBytes(l), 0) +
  a.kvB.nbytes +
  (a.kvBScales ? a.kvBScales.uk.nbytes + a.kvBScales.uv.nbytes : 0) +
  a.qNorm.nbytes +
  a.kvNorm.nbytes;

/**
 * Weight bytes a decode step reads and linear FLOPs per prefill token, from a loaded model's
 * engine weights (bench/model.mjs, bench/speculative.mjs): the non-expert weights (dense), the
 * final norm + lm_head (head), the N-gram rows and projections, one routed expert; with an MTP
 * head, its layer (eh_proj halves, norms, MLA, dense MLP, final norm; its embedding excluded: one
 * row is read), which a draft reads besides the shared lm_head.
 */
export function accounting(model) {
  const w = model.engine.w;
  let denseBytes = 0,
    denseParams = 0; // denseParams: per-token linear MACs in the prefill (expanded) form
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
  // N-gram models: one row of every table per token, then all the projections.
  const ngramBytes = w.ngram ? w.ngram.tables.reduce((a, t) => a + t.nbytes / t.shape[0], 0) + w.ngram.proj.nbytes : 0;
  const m = w.mtp;
  const mtpBytes = m
    ? linBytes(m.ehEmbed) +
      linBytes(m.ehHidden) +
      [m.enorm, m.hnorm, m.inputNorm, m.postAttnNorm, m.norm].reduce((s, t) => s + t.nbytes, 0) +
      mlaBytes(m.attn) +
      [m.mlp.gate, m.mlp.up, m.mlp.down].reduce((s, l) => s + linBytes(l), 0)
    : 0;
  const x = model.checkpoint.expertWeights(0, 0);
  const expertBytes = [x.gate, x.up, x.down, x.gateScale, x.upScale, x.downScale].reduce((a, t) => a + (t ? t.nbytes : 0), 0);
  const expertParams = numel(x.gate.shape) + numel(x.up.shape) + numel(x.down.shape);
  return {
    denseBytes,
    headBytes,
    ngramBytes,
    nonExpertBytes: denseBytes + headBytes + ngramBytes,
    expertBytes,
    expertParams,
    denseParams,
    headParams: linParams(w.lmHead),
    lmHeadBytes: linBytes(w.lmHead),
    mtpBytes,
    weightDtype: w.layers[0].mlp[0].gate.weight.dtype,
    embedBytes: w.embed.nbytes,
  };
}

/** GB/s summing 1 GiB with every pool thread (native/ops/bench.cc). */
export const readBandwidth = () => native.benchReadBandwidth(1 << 30, 3).gbps;

/** bf16 bits with magnitude 2^(exp-127) .. 2^(exp-124) and random sign (finite, never zero). */
export function randomBf16(n, seed, exp) {
  const r = rng(seed);
  const bits = new Uint16Array(n);
  for (let i = 0; i < n; i++) {
    const s = r.uint32();
    bits[i] = (s & 0x807f) | ((exp + ((s >>> 8) & 3)) << 7);
  }
  return bits;
}

/** Uniform f32 values in [-scale, scale) (the op-case table's maker). */
export const randomF32 = (n, seed, scale = 0.05) => uniform(rng(seed), n, scale);

/**
 * Random tensors made on `device` (the GPU benches): one random chunk of `chunk` elements per
 * (dtype, scale) is uploaded once, then copied on the device into every tensor, so that tensors have
 * distinct addresses (no cache reuse across weights) without uploading gigabytes.
 * Returns make(shape, dtype, scale) and dispose() (the chunks).
 */
export function deviceRandom(device, stream, chunk) {
  const chunks = new Map();
  const make = (shape, dtype, scale = 0.05) => {
    const key = `${dtype}:${scale}`;
    if (!chunks.has(key)) {
      const f = tensor(randomF32(chunk, chunks.size + 1, scale), [chunk], { device });
      const c = empty([chunk], { dtype, device });
      native.convert(stream, c, f);
      f.dispose();
      chunks.set(key, c);
    }
    const src = chunks.get(key),
      t = empty(shape, { dtype, device });
    const n = numel(shape),
      flat = t.view([n]);
    for (let o = 0; o < n; o += chunk) {
      const len = Math.min(chunk, n - o);
      native.convert(stream, flat.narrow(o, len), len === chunk ? src : src.narrow(0, len));
    }
    return t;
  };
  return {
    make,
    dispose: () => {
      for (const c of chunks.values()) c.dispose();
    },
  };
}
