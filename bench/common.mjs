// Helpers shared by the benchmark scripts: a monotonic clock, medians, the read-bandwidth probe and
// the weight bytes a decode step reads (accounting; both from lib/bench.ts), and deterministic random inputs, drawn from
// the seeded RNG the tests and the op-case table use (lib/check/rng.ts and lib/check/op-cases.ts, compiled
// into dist/check/ by npm run build:ts), so every run times the same data.
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
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

export const mean = v => (v.length ? v.reduce((a, b) => a + b, 0) / v.length : Number.NaN);
/** Nearest-rank percentile. */
export const pct = (v, p) => {
  if (!v.length) return Number.NaN;
  const s = [...v].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))];
};
export const pcts = v => ({ p50: pct(v, 50), p90: pct(v, 90), p99: pct(v, 99), n: v.length });

const WORDS = 'the of model token stream batch expert cache prefix decode serve latency memory layer route weight'.split(' ');
/** `words` seeded random words (the serving benchmarks' prompt text). */
export function randomText(seed, words) {
  const r = rng(seed);
  return Array.from({ length: words }, () => WORDS[r.uint32() % WORDS.length]).join(' ');
}

/** The flags every CPU benchmark takes: --quick (smaller sizes) and --out FILE (the JSON results). */
/**
 * An import() from the build a bench measures: `--dist DIR` (another worktree's dist/, for an A/B of
 * two builds in one lock hold) or this checkout's dist/; `.dir` names it. (This module's own helpers stay
 * on dist/.)
 */
export function distImporter(args = process.argv.slice(2)) {
  const rel = args.includes('--dist') ? args[args.indexOf('--dist') + 1] : '../dist';
  const dir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), rel);
  return Object.assign(f => import(pathToFileURL(path.join(dir, f)).href), { dir });
}

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

// The weight accounting (bytes a decode step reads, FLOPs per prefill token) and the host read-bandwidth
// probe live in lib/bench.ts, which `longcat bench` ships with.
export { weightAccounting as accounting, decodeWeightTensors, readBandwidth, readTensorsBandwidth } from '../dist/bench.js';

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
 * GFLOP/s of the engine's linear op (native.benchLinear: every pool thread, the current matmul
 * precision) on x f32 [t, hidden] times a bf16 weight [n, hidden]^T, n = 4 hidden, at t = 64 and
 * 256 rows (compute-bound shapes: 64+ FLOPs per weight byte); the faster, fastest of `passes`
 * calls. The compute side of a step's ceiling (bench/serve.mjs, bench/step-profile.mjs).
 */
export function gemmRate(hidden, passes = 15) {
  const n = 4 * hidden;
  let best = 0;
  const w = [new native.Tensor('bf16', [n, hidden], 'cpu', randomBf16(n * hidden, 3, 123))];
  for (const t of [64, 256]) {
    const x = new native.Tensor('f32', [t, hidden], 'cpu', randomF32(t * hidden, 4));
    const y = new native.Tensor('f32', [t, n], 'cpu');
    const r = native.benchLinear(y, x, w, null, 2, passes);
    best = Math.max(best, (2 * t * n * hidden) / r.minMs / 1e6);
    x.dispose();
    y.dispose();
  }
  w[0].dispose();
  return best;
}

/**
 * GFLOP/s of the multiply-add instruction the engine's GEMM of bf16 weights runs on (vdpbf16ps with
 * AVX512-BF16 outside 'highest' precision, else the ISA's fp32 FMA), every pool thread, registers
 * only (native.benchDotPeak): a fixed anchor for compute ceilings, which our own GEMM rate is not.
 * The best of `passes` passes; { gflops, instruction }.
 */
export function dotPeak(passes = 9) {
  const r = native.benchDotPeak(1 << 16, passes);
  return { gflops: r.gflops, instruction: r.instruction };
}

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

/**
 * A captured CPU graph replayed `warmups` times, then `reps` times profiled: the profile and its nodes
 * summed per op, per call (µs, weight MB, GB/s when it streams weights, join wait µs, jobs). nat: the
 * addon that ran the graph (another build's, under --dist).
 */
export function profileByOp(graph, stream, warmups, reps, nat = native) {
  for (let i = 0; i < warmups; i++) graph.replay();
  stream.synchronize();
  nat.graphProfile(true);
  for (let i = 0; i < reps; i++) graph.replay();
  stream.synchronize();
  const [prof] = nat.graphProfile(false);
  const sums = {};
  for (const n of prof.nodes) {
    sums[n.op] ??= { ns: 0, bytes: 0, wait: 0, jobs: 0, n: 0 };
    const b = sums[n.op];
    b.ns += n.ns;
    b.bytes += n.weightBytes;
    b.wait += n.waitNs;
    b.jobs += n.jobs;
    b.n++;
  }
  const byOp = Object.entries(sums).map(([op, b]) => {
    const calls = prof.replays * b.n;
    return {
      op,
      us: b.ns / calls / 1e3,
      mb: b.bytes / calls / 1e6,
      gbps: b.bytes ? b.bytes / b.ns : null,
      waitUs: b.wait / calls / 1e3,
      jobs: b.jobs / calls,
    };
  });
  return { regionMs: prof.ns / prof.replays / 1e6, byOp };
}

/** An FNV-1a hash of a tensor's bytes (A/B of two builds: kernels that must agree bit for bit). */
export function bitsHash(t) {
  const b = Buffer.from(t.toBytes());
  let x = 2166136261;
  for (let i = 0; i < b.length; i++) x = Math.imul(x ^ b[i], 16777619) >>> 0;
  return x.toString(16);
}
