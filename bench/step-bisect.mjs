// Bisects the replayed CPU decode step's dense-linear rate (issue 19): the step of a preset is
// captured again with some of its native ops left out (the ops named by each variant are no-ops
// while the step is captured, so the graph holds the rest in step order, on the step's buffers),
// and every variant's graph is replayed, round by round alternated with the others and with the
// read probe, under graphProfile. Results of a variant that leaves ops out are garbage; only its
// memory traffic and timing matter.
//
// Printed per variant: the dense linears' weight GB/s in the replay (graphProfile: the linear
// nodes' bytes / their time) and as a ratio to the probe of the same round, the region's weight
// GB/s, median over rounds.
//
//   node bench/step-bisect.mjs [--preset medium] [--threads 2] [--rounds 5] [--replays 16]
//        [--variants full,linear,...] [--quantize fp8|int8|int4]
// A variant may carry environment settings for its replays: full@LONGCAT_REGION_CHUNKS=1+X=Y.
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { native } from '../dist/index.js';
import { median, readBandwidth, rng } from './common.mjs';
import { loadModel } from '../dist/generate.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const arg = (name, dflt) => (args.includes(name) ? args[args.indexOf(name) + 1] : dflt);
const preset = arg('--preset', 'medium');
const rounds = Number(arg('--rounds', 5));
const replays = Number(arg('--replays', 16));
if (args.includes('--threads')) native.setThreads(Number(arg('--threads', 0)));

// The step's op kinds (graphProfile names = the native function names).
const OPS = [
  'linear',
  'moe',
  'mlaAbsorbQ',
  'mlaDecodeAbsorbed',
  'mlaOutput',
  'mlaCacheWrite',
  'rmsnorm',
  'embedding',
  'rope',
  'siluMul',
  'routerTopk',
  'add',
];
// variant name -> the ops it keeps
const VARIANTS = {
  full: OPS,
  linear: ['linear'],
  'linear+moe': ['linear', 'moe', 'routerTopk'],
  'linear+mla': ['linear', 'mlaAbsorbQ', 'mlaDecodeAbsorbed', 'mlaOutput', 'mlaCacheWrite'],
  'linear+small': ['linear', 'rmsnorm', 'embedding', 'rope', 'siluMul', 'add'],
  'no-moe': OPS.filter(o => o !== 'moe'),
};
const variants = arg('--variants', Object.keys(VARIANTS).join(',')).split(',');

const dir = path.join(here, 'out', `ckpt-${preset}`);
const quantize = arg('--quantize', null); // fp8 | int8 | int4: the linears quantized at load (as step-profile's)
const model = await loadModel(dir, { backend: 'cpu', maxContext: 1024, ...(quantize ? { quantize } : {}) });
const engine = model.engine;
const rand = rng(7);
const seq = engine.newSequence();
const step = () => {
  const { logits } = engine.forward([seq], [[rand.int(engine.dims.vocab)]]);
  logits.toBytes();
  logits.dispose();
};
for (let i = 0; i < 4; i++) step(); // pages the weights in, captures the step

/** The step captured with only the ops in `keep` (the others no-ops while capturing). */
function captureVariant(keep) {
  const saved = {};
  for (const op of OPS)
    if (!keep.includes(op)) {
      saved[op] = native[op];
      native[op] = () => {};
    }
  // @ts-expect-error decodeGraphs is private: the variant's capture replaces the cached step graph
  const graphs = engine.decodeGraphs;
  const before = new Map(graphs);
  graphs.clear();
  try {
    step();
  } finally {
    for (const [op, fn] of Object.entries(saved)) native[op] = fn;
  }
  const g = [...graphs.values()][0].graph;
  graphs.clear();
  for (const [k, v] of before) graphs.set(k, v);
  return g;
}
const base = v => v.split('@')[0];
const envOf = v =>
  Object.fromEntries(
    (v.split('@')[1] ?? '')
      .split('+')
      .filter(Boolean)
      .map(kv => kv.split('=')),
  );
const graphs = {};
for (const v of variants) graphs[base(v)] ??= captureVariant(VARIANTS[base(v)]);
native.synchronize('cpu');

function replayProfiled(graph) {
  native.graphProfile(true);
  for (let i = 0; i < replays; i++) {
    graph.replay();
    native.synchronize('cpu');
  }
  const prof = native.graphProfile(false);
  const p = prof.reduce((a, b) => (b.replays > a.replays ? b : a), { replays: 0, ns: 0, startNs: 0, nodes: [] });
  let lNs = 0,
    lBytes = 0,
    bytes = 0,
    lBusy = 0,
    big = { ns: 0, weightBytes: 0, busyNs: 0 };
  for (const n of p.nodes) {
    bytes += n.weightBytes;
    if (n.op === 'linear') {
      lNs += n.ns;
      lBytes += n.weightBytes;
      lBusy += n.busyNs ?? 0;
      if (n.weightBytes > big.weightBytes) big = n;
    }
  }
  return {
    linearGbps: lBytes / lNs,
    headGbps: big.weightBytes / big.ns,
    // the threads' time in the linears' chunks / (the linears' time x threads); GB/s per busy thread
    util: lBusy / lNs / native.threads(),
    perThread: lBytes / lBusy,
    headUtil: big.busyNs / big.ns / native.threads(),
    regionGbps: bytes / p.ns,
    linearMB: lBytes / p.replays / 1e6,
    regionMs: p.ns / p.replays / 1e6,
  };
}

const res = Object.fromEntries(variants.map(v => [v, []]));
for (let r = 0; r < rounds; r++) {
  const bw = readBandwidth();
  for (const v of r % 2 ? [...variants].reverse() : variants) {
    const env = envOf(v);
    for (const [k, x] of Object.entries(env)) process.env[k] = x;
    res[v].push({ ...replayProfiled(graphs[base(v)]), bw });
    for (const k of Object.keys(env)) delete process.env[k];
  }
}
console.log(`\n## ${preset}, ${native.threads()} threads, ${rounds} rounds x ${replays} replays`);
console.log(
  '| variant | region ms | dense MB | dense GB/s | dense / probe | largest linear / probe | dense busy / (ms x threads) | largest busy | dense GB/s per busy thread | region weight GB/s | probe GB/s |',
);
console.log('|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
for (const v of variants) {
  const xs = res[v];
  console.log(
    `| ${v} | ${median(xs.map(x => x.regionMs)).toFixed(3)} | ${xs[0].linearMB.toFixed(1)} | ${median(xs.map(x => x.linearGbps)).toFixed(1)} | ` +
      `${median(xs.map(x => x.linearGbps / x.bw)).toFixed(3)} | ${median(xs.map(x => x.headGbps / x.bw)).toFixed(3)} | ${median(xs.map(x => x.util)).toFixed(3)} | ${median(xs.map(x => x.headUtil)).toFixed(3)} | ${median(xs.map(x => x.perThread)).toFixed(1)} | ${median(xs.map(x => x.regionGbps)).toFixed(1)} | ${median(xs.map(x => x.bw)).toFixed(1)} |`,
  );
}
seq.release();
model.dispose();
