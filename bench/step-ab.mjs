// A/B of environment settings on the batch-1 decode step, alternated step by step (A B B A ...) in
// one process, so the host's bandwidth swings (minutes long on the 2-vCPU VM) hit both alike: each
// step runs with its variant's environment set (read by the native code when the step replays:
// LONGCAT_REPLAY_HOLD, LONGCAT_LOOKAHEAD, LONGCAT_STEAL, ...) and is profiled on its own
// (native.graphProfile). The sequence restarts from a 32-token prompt every 128 steps (contexts
// 33-160, as bench/step-profile.mjs). Printed per variant, 25th percentile / median over its steps:
// the step (forward() until its logits are read), the region, replay() to the region's start, the
// step outside the region (host part), and the experts', linears' and MLA ops' time; the step's weight
// GB/s over the read probe (the higher of before / after).
// --quantize fp8|int8|int4: the checkpoint's weights quantized at load (loadModel's `quantize`).
// --batch B: B sequences decoded together (a serving step, as step-profile's --batch), the linears'
// time also printed per weight size of a call: < 600 kB (small), up to 2.1 MB (mid), larger (big).
//   node bench/step-ab.mjs [--preset small] [--threads 2] [--steps 400] [--batch 1] [--variants A=x,A=y] [--quantize F] [--dist DIR]
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { distImporter, median, now, rng } from './common.mjs';

const args = process.argv.slice(2);
const arg = (name, dflt) => (args.includes(name) ? args[args.indexOf(name) + 1] : dflt);
const load = distImporter(args);
const { native } = await load('index.js');
const { loadModel } = await load('generate.js');
const { initRandom } = await load('init-random.js');
const { readBandwidth } = await load('bench.js');
const preset = arg('--preset', 'small');
const N = Number(arg('--steps', 400));
const variants = arg('--variants', 'LONGCAT_REPLAY_HOLD=0,LONGCAT_REPLAY_HOLD=1').split(',');
native.setThreads(Number(arg('--threads', 2)));
const dir = path.join(path.dirname(fileURLToPath(import.meta.url)), 'out', `ckpt-${preset}`);
if (!existsSync(path.join(dir, 'model.safetensors.index.json'))) await initRandom({ preset, out: dir, seed: 1 });
const quantize = arg('--quantize', null);
const B = Number(arg('--batch', 1));
const model = await loadModel(dir, {
  backend: 'cpu',
  maxContext: 1024,
  ...(quantize ? { quantize } : {}),
  ...(B > 1 ? { cacheBlocks: 64 * B } : {}),
});
const e = model.engine,
  V = e.dims.vocab,
  rand = rng(7);
let seqs = [];
const step = prof => {
  if (seqs.length === 0 || seqs[0].length >= 160) {
    for (const q of seqs) q.release();
    seqs = Array.from({ length: B }, () => e.newSequence());
    e.forward(
      seqs,
      seqs.map(() => Array.from({ length: 32 }, () => rand.int(V))),
    ).logits.dispose();
  }
  if (prof) native.graphProfile(true);
  const t0 = now();
  const { logits } = e.forward(
    seqs,
    seqs.map(() => [rand.int(V)]),
  );
  logits.toBytes();
  const t = now() - t0;
  logits.dispose();
  const g = prof ? native.graphProfile(false).reduce((a, b) => (b.replays > a.replays ? b : a), { replays: 0 }) : null;
  return { t, g };
};
for (let i = 0; i < 40; i++) step(false);
const bw0 = readBandwidth();
const res = Object.fromEntries(variants.map(v => [v, []]));
const order = [0, 1, 1, 0];
for (let i = 0; i < N; i++) {
  const v = variants[order[i % 4] % variants.length];
  const [k, x] = v.split('=');
  if (k) process.env[k] = x;
  const { t, g } = step(true);
  if (k) delete process.env[k];
  const by = {};
  const size = { small: 0, mid: 0, big: 0 };
  for (const n of g.nodes) {
    by[n.op] ??= { ns: 0, bytes: 0 };
    by[n.op].ns += n.ns;
    by[n.op].bytes += n.weightBytes;
    if (n.op === 'linear')
      size[n.weightBytes / g.replays < 600e3 ? 'small' : n.weightBytes / g.replays <= 2.1e6 ? 'mid' : 'big'] += n.ns / 1e6;
  }
  const ms = op => (by[op]?.ns ?? 0) / 1e6;
  res[v].push({
    step: t,
    region: g.ns / 1e6,
    start: g.startNs / 1e6,
    moe: ms('moe'),
    linear: ms('linear'),
    ...size,
    mla: ms('mlaAbsorbQ') + ms('mlaOutput') + ms('mlaDecodeAbsorbed'),
    mb: Object.values(by).reduce((a, o) => a + o.bytes, 0) / 1e6,
  });
}
const bw = Math.max(bw0, readBandwidth());
const f = x => x.toFixed(3);
const q25 = xs => [...xs].sort((a, b) => a - b)[Math.floor(0.25 * (xs.length - 1))];
console.log(
  `${preset}, batch ${B}, ${native.threads()} threads, ${N} steps alternated ABBA, probe ${bw.toFixed(1)} GB/s, weights ${f(median(res[variants[0]].map(x => x.mb)))} MB/step`,
);
for (const v of variants) {
  const xs = res[v];
  const m = key => `${f(q25(xs.map(key)))}/${f(median(xs.map(key)))}`;
  console.log(
    `${v}: (p25/median ms) step ${m(x => x.step)} region ${m(x => x.region)} start ${m(x => x.start)} outside ${m(x => x.step - x.region)} ` +
      `moe ${m(x => x.moe)} linear ${m(x => x.linear)} (small ${m(x => x.small)} mid ${m(x => x.mid)} big ${m(x => x.big)}) ` +
      `mla ${m(x => x.mla)}; step / probe (median) ${f(median(xs.map(x => x.mb / x.step / bw)))}`,
  );
}
for (const q of seqs) q.release();
model.dispose();
