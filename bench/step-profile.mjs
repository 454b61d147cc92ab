// Per-node profile of the replayed CPU decode step (batch 1, or --batch B sequences of a 32-token
// prompt each decoded together: a serving step), small and medium presets: where the step's time
// goes against the weight-streaming roofline. native.graphProfile (device.h) times
// every node of the captured step inside its parallel region and reads the weight bytes each
// node's kernels stream, the time the region's master waits at the node's joins for the other
// threads' last chunks, and the jobs (joins) it ran.
//
// Printed per preset (read probe: benchReadBandwidth, all pool threads, before and after):
//   step      the plain step (profiling off): forward() until its logits are read, median
//   region    the profiled region per replay; the gap to the profiled step is the host's part
//             (JS before the replay, the read-back) and the replay's start (replay() until the
//             streams' threads have met and the region begins, also printed)
//   nodes     sum of the node times; region - nodes = the loop between nodes
//   per op    time per step, share of the step, weight MB and GB/s, the master's join wait, the
//             jobs, and time on the master alone (nodes without a parallel job: the other threads idle)
//   linear    per weight size: GB/s in the step vs the same weights in a lone linear loop at the
//             step's rows (benchLinear over every layer's copy; the copies of a small preset's weights, and
//             the halves of a lone lm_head each thread rereads, partly stay in the caches)
//
//   node bench/step-profile.mjs [--presets small,medium] [--threads N] [--steps 64] [--batch B] [--json f.json]
import { existsSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { native } from '../dist/index.js';
import { median, now, readBandwidth, rng } from './common.mjs';
import { loadModel } from '../dist/generate.js';
import { initRandom } from '../dist/init-random.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const arg = (name, dflt) => (args.includes(name) ? args[args.indexOf(name) + 1] : dflt);
const presets = arg('--presets', 'small,medium').split(',');
const steps = Number(arg('--steps', 64));
const batch = Number(arg('--batch', 1));
const jsonPath = arg('--json', null);
if (args.includes('--threads')) native.setThreads(Number(arg('--threads', 0)));

function decode(engine, seqs, n, rand, vocab) {
  const ms = [];
  for (let i = 0; i < n; i++) {
    const t0 = now();
    const { logits } = engine.forward(
      seqs,
      seqs.map(() => [rand.int(vocab)]),
    );
    logits.toBytes();
    ms.push(now() - t0);
    logits.dispose();
  }
  return ms;
}

/** Weight GB/s of a lone linear of `t` rows over `ws` in turn (every layer's copy of one linear). */
function loneGemv(ws, t) {
  const w0 = ws[0];
  const [n, k] = w0.weight.shape;
  const x = new native.Tensor('f32', [t, k], 'cpu', new Float32Array(t * k).fill(0.01));
  const y = new native.Tensor('f32', [t, n], 'cpu');
  const scales = w0.scale ? ws.map(w => w.scale) : null;
  const r = native.benchLinear(
    y,
    x,
    ws.map(w => w.weight),
    scales,
    ws.length,
    Math.max(24, 4 * ws.length),
  );
  x.dispose();
  y.dispose();
  return w0.weight.nbytes / r.medianMs / 1e6;
}

async function profilePreset(preset) {
  const dir = path.join(here, 'out', `ckpt-${preset}`);
  if (!existsSync(path.join(dir, 'model.safetensors.index.json'))) await initRandom({ preset, out: dir, seed: 1 });
  const model = await loadModel(dir, { backend: 'cpu', maxContext: 1024, ...(batch > 1 ? { cacheBlocks: 64 * batch } : {}) });
  const engine = model.engine,
    d = engine.dims,
    w = engine.w;
  const rand = rng(7);
  const seqs = Array.from({ length: batch }, () => engine.newSequence());
  if (batch > 1) {
    const first = engine.forward(
      seqs,
      seqs.map(() => Array.from({ length: 32 }, () => rand.int(d.vocab))),
    );
    first.logits.dispose();
  }
  // warm-up: pages the weights in, captures the decode graph
  decode(engine, seqs, 8, rand, d.vocab);
  native.synchronize('cpu');
  const plain = decode(engine, seqs, steps, rand, d.vocab);
  native.graphProfile(true);
  const profiled = decode(engine, seqs, steps, rand, d.vocab);
  native.synchronize('cpu');
  const graphs = native.graphProfile(false);
  const plain2 = decode(engine, seqs, steps, rand, d.vocab);
  for (const q of seqs) q.release();
  const g = graphs.reduce((a, b) => (b.replays > a.replays ? b : a), { replays: 0, ns: 0, startNs: 0, nodes: [] });
  if (!g.replays) throw new Error('no graph was replayed while profiling (is the engine capturing graphs?)');
  const R = g.replays;

  // lone GEMVs per linear weight, keyed by weight bytes
  const roles = {
    qA: w.layers.flatMap(L => L.attn.map(a => a.qA)),
    qB: w.layers.flatMap(L => L.attn.map(a => a.qB)),
    kvLatent: w.layers.flatMap(L => L.attn.map(a => a.kvLatent)),
    kvRope: w.layers.flatMap(L => L.attn.map(a => a.kvRope)),
    o: w.layers.flatMap(L => L.attn.map(a => a.o)),
    gate: w.layers.flatMap(L => L.mlp.map(m => m.gate)),
    down: w.layers.flatMap(L => L.mlp.map(m => m.down)),
    router: w.layers.map(L => ({ weight: L.moe.classifier })),
    lmHead: [w.lmHead],
  };
  const lone = {};
  for (const [role, ws] of Object.entries(roles)) {
    if (ws.some(l => l.perm || !l.weight?.shape || l.weight.shape.length !== 2)) continue;
    lone[role] = { bytes: ws[0].weight.nbytes, gbps: loneGemv(ws, batch) };
  }
  model.dispose();

  const stepMs = median([...plain, ...plain2]);
  const profMs = median(profiled);
  const regionMs = g.ns / R / 1e6;
  const perStep = v => v / R;
  const byOp = new Map();
  const linears = new Map();
  let nodesNs = 0,
    bytes = 0;
  for (const n of g.nodes) {
    nodesNs += n.ns;
    bytes += n.weightBytes;
    const o = byOp.get(n.op) ?? { op: n.op, count: 0, ns: 0, waitNs: 0, jobs: 0, bytes: 0, aloneNs: 0 };
    o.count++;
    o.ns += n.ns;
    o.waitNs += n.waitNs;
    o.jobs += n.jobs;
    o.bytes += n.weightBytes;
    if (n.jobs === 0 && n.phase === 1) o.aloneNs += n.ns;
    byOp.set(n.op, o);
    if (n.op === 'linear' || n.op === 'moe') {
      // (a moe node's bytes change with the experts each step picks: one row for all)
      const key = n.op === 'moe' ? 'moe (experts)' : `${n.op} ${(n.weightBytes / R / 1e3).toFixed(0)} kB`;
      const l = linears.get(key) ?? { key, count: 0, ns: 0, waitNs: 0, bytes: 0, perCall: n.weightBytes / R };
      l.count++;
      l.ns += n.ns;
      l.waitNs += n.waitNs;
      l.bytes += n.weightBytes;
      linears.set(key, l);
    }
  }
  const bytesPerStep = perStep(bytes);
  return {
    preset,
    batch,
    threads: native.threads(),
    steps,
    stepMs,
    profiledStepMs: profMs,
    regionMs,
    startMs: g.startNs / R / 1e6,
    nodesMs: perStep(nodesNs) / 1e6,
    nodesPerStep: g.nodes.length,
    weightMBPerStep: bytesPerStep / 1e6,
    ops: [...byOp.values()]
      .map(o => ({
        op: o.op,
        perStep: o.count,
        ms: perStep(o.ns) / 1e6,
        share: perStep(o.ns) / 1e6 / regionMs,
        weightMB: perStep(o.bytes) / 1e6,
        gbps: o.bytes ? o.bytes / o.ns : 0,
        waitMs: perStep(o.waitNs) / 1e6,
        jobs: perStep(o.jobs),
        aloneMs: perStep(o.aloneNs) / 1e6,
      }))
      .sort((a, b) => b.ms - a.ms),
    linear: [...linears.values()]
      .map(l => {
        const role = Object.entries(lone).find(([, v]) => Math.abs(v.bytes - l.perCall) < 1);
        return {
          weights: l.key,
          perStep: l.count,
          ms: perStep(l.ns) / 1e6,
          gbps: l.bytes / l.ns,
          waitMs: perStep(l.waitNs) / 1e6,
          lone: role ? { role: role[0], gbps: role[1].gbps } : null,
        };
      })
      .sort((a, b) => b.ms - a.ms),
  };
}

const f = (v, d = 2) => (Number.isFinite(v) ? v.toFixed(d) : '-');
const bw0 = readBandwidth();
const results = [];
for (const p of presets) results.push(await profilePreset(p));
const bw = Math.max(bw0, readBandwidth());
for (const r of results) {
  r.probeGbps = bw;
  r.fracRoofline = r.weightMBPerStep / 1e3 / (r.stepMs / 1e3) / bw;
  console.log(
    `\n## ${r.preset}, ${r.batch} row(s), ${r.threads} threads: step ${f(r.stepMs, 3)} ms (profiled ${f(r.profiledStepMs, 3)}), ` +
      `region ${f(r.regionMs, 3)} ms, nodes ${f(r.nodesMs, 3)} ms (${r.nodesPerStep} nodes); ` +
      `${f(r.weightMBPerStep, 1)} MB weights/step = ${f(r.weightMBPerStep / r.stepMs, 1)} GB/s = ` +
      `${f(100 * r.fracRoofline, 0)}% of the ${f(bw, 1)} GB/s probe`,
  );
  console.log(
    `outside the region ${f(r.profiledStepMs - r.regionMs, 3)} ms (profiled step - region), of which replay() to the region's start ` +
      `${f(r.startMs, 3)} ms; between nodes ${f(r.regionMs - r.nodesMs, 3)} ms`,
  );
  console.log('| op | per step | ms | % region | weight MB | GB/s | join wait ms | jobs | master alone ms |');
  console.log('|---|---:|---:|---:|---:|---:|---:|---:|---:|');
  for (const o of r.ops)
    console.log(
      `| ${o.op} | ${o.perStep} | ${f(o.ms, 3)} | ${f(100 * o.share, 1)} | ${f(o.weightMB, 1)} | ${o.gbps ? f(o.gbps, 1) : '-'} | ` +
        `${f(o.waitMs, 3)} | ${f(o.jobs, 0)} | ${f(o.aloneMs, 3)} |`,
    );
  console.log(`\n| weights per call | per step | ms | GB/s in step | lone ${batch}-row linear GB/s | join wait ms |`);
  console.log('|---|---:|---:|---:|---:|---:|');
  for (const l of r.linear)
    console.log(
      `| ${l.weights} | ${l.perStep} | ${f(l.ms, 3)} | ${f(l.gbps, 1)} | ${l.lone ? `${f(l.lone.gbps, 1)} (${l.lone.role})` : '-'} | ${f(l.waitMs, 3)} |`,
    );
}
if (jsonPath) writeFileSync(jsonPath, JSON.stringify(results, null, 2));
