// A/B of two builds' TypeScript on the host part of the batch-1 decode step, in one process: each
// build's dist/ loads its own model (the same checkpoint, the same native addon -- the two dists
// must resolve to one longcat.node file, e.g. a dist compiled from another commit's lib/ next to a
// symlink to this checkout's build/), and the steps alternate A B B A ..., so the host's swings hit
// both alike. Each step: forward() of one token, then the logits read back (toBytes), profiled
// (native.graphProfile). The sequence restarts from a 32-token prompt every 128 steps (contexts
// 33-160, as bench/step-profile.mjs). Printed per variant, 25th percentile / median (us): forward()
// (the call: checks, slot reservation, input packing, replay(), the output handle), outside the
// region (the profiled step - the region: forward()'s host part + replay() to the region's start +
// the region's end to the read-back's return), the step and the region; with --parts also the median
// of forward()'s parts (each model's own class's methods, wrapped with timers in both variants).
//   node bench/host-ab.mjs --a DIST --b DIST [--preset small] [--threads 2] [--steps 800] [--parts]
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { rng } from './common.mjs';

const args = process.argv.slice(2);
const arg = (name, dflt) => (args.includes(name) ? args[args.indexOf(name) + 1] : dflt);
const here = path.dirname(fileURLToPath(import.meta.url));
const dists = [arg('--a', '../dist'), arg('--b', '../dist')].map(d => path.resolve(here, d));
const preset = arg('--preset', 'small');
const N = Number(arg('--steps', 800));
const parts = args.includes('--parts');
const push = (acc, k, x) => {
  acc[k] ??= [];
  acc[k].push(x);
};
const PARTS = [
  'verifyWeights',
  'synchronizeRanks',
  'forwardReserved',
  'decodeRows',
  'replayDecode',
  'writeDecodeInputs',
  'assemble',
];

const variants = [];
for (const d of dists) {
  const load = f => import(pathToFileURL(path.join(d, f)).href);
  variants.push({
    dir: d,
    native: (await load('index.js')).native,
    loadModel: (await load('generate.js')).loadModel,
    /** @type {any} */ model: null,
    /** @type {any} */ e: null,
    /** @type {any} */ seq: null,
    /** @type {Record<string, number[]>} */ acc: {},
    timing: false,
  });
}
if (variants[0].native !== variants[1].native)
  console.log('note: the two dists loaded two native addons (two thread pools): this compares native code too');
const native = variants[0].native;
native.setThreads(Number(arg('--threads', 2)));
const ckpt = path.join(here, 'out', `ckpt-${preset}`);
const rand = rng(7);
for (const v of variants) {
  v.model = await v.loadModel(ckpt, { backend: 'cpu', maxContext: 1024 });
  v.e = v.model.engine;
  v.seq = v.e.newSequence();
  if (!parts) continue;
  const timed = (name, f) =>
    function (...a) {
      const t0 = performance.now();
      try {
        return f.apply(this, a);
      } finally {
        if (v.timing) push(v.acc, name, performance.now() - t0);
      }
    };
  const proto = Object.getPrototypeOf(v.e);
  for (const name of PARTS)
    if (name === 'verifyWeights') {
      if (v.e.verifyWeights) v.e.verifyWeights = timed(name, v.e.verifyWeights);
    } else if (typeof proto[name] === 'function') proto[name] = timed(name, proto[name]);
}
const V = variants[0].e.dims.vocab;
const step = (v, record) => {
  const e = v.e;
  if (v.seq.length === 0 || v.seq.length >= 160) {
    v.seq.release();
    v.seq = e.newSequence();
    const { logits } = e.forward([v.seq], [Array.from({ length: 32 }, () => rand.int(V))]);
    logits.toBytes();
    logits.dispose();
  }
  native.graphProfile(true);
  v.timing = record;
  const t0 = performance.now();
  const { logits } = e.forward([v.seq], [[rand.int(V)]]);
  const t1 = performance.now();
  v.timing = false;
  logits.toBytes();
  const t = performance.now() - t0;
  logits.dispose();
  const g = native.graphProfile(false).reduce((a, b) => (b.replays > a.replays ? b : a), { replays: 0 });
  if (!record) return;
  push(v.acc, 'forward()', t1 - t0);
  push(v.acc, 'outside', t - g.ns / 1e6);
  push(v.acc, 'step', t);
  push(v.acc, 'region', g.ns / 1e6);
};
for (let i = 0; i < 60; i++) step(variants[i % 2], false);
const order = [0, 1, 1, 0];
for (let i = 0; i < 2 * N; i++) step(variants[order[i % 4]], true);
const q = (xs, p) => [...xs].sort((a, b) => a - b)[Math.floor(p * (xs.length - 1))];
const us = x => (x * 1000).toFixed(1);
console.log(`${preset}, ${native.threads()} threads, ${N} steps per variant alternated ABBA\nA ${dists[0]}\nB ${dists[1]}`);
console.log('| us | A p25 / median | B p25 / median | B / A (median) |\n| --- | --- | --- | --- |');
for (const k of Object.keys(variants[0].acc)) {
  const [a, b] = variants.map(v => v.acc[k] ?? [NaN]);
  console.log(
    `| ${k} | ${us(q(a, 0.25))} / ${us(q(a, 0.5))} | ${us(q(b, 0.25))} / ${us(q(b, 0.5))} | ${(q(b, 0.5) / q(a, 0.5)).toFixed(3)} |`,
  );
}
