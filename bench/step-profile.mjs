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
//   floor     per op and weight size, the least time its weights allow: max(weight bytes / probe,
//             FLOPs / GEMM rate) (gemmRate, measured in the run, also as a fraction of the peak of its
//             multiply-add instruction, dotPeak): a linear's FLOPs are 2 x rows x its
//             weight's elements, the experts' 2 x expert params x the (row, FFN expert) pairs the
//             profiled steps routed (forward's collectRouting), the absorbed attention's 4 kv_lora + 2
//             rope FLOPs per head and attended key (its floor: FLOPs only), the weight absorptions'
//             (mlaAbsorbQ, mlaOutput) 2 x rows x heads x nope (v) x kv_lora; the other ops have none. The
//             step's ceiling is the sum of the floors: what is neither bytes nor FLOPs is the rest.
//
// --warmup W: decode steps before the measured ones (default 8). The experts are read from the mapped
// shards, and an expert no step has picked yet takes page faults on its first read (one per 64 KiB:
// ~85 per medium step over the first hundred steps, ~2 after 100): W = 300 measures the steady state,
// unless loadModel faulted them in (its `populate`, default on; --populate off turns it off). Printed
// with the process's page faults per step (getrusage) over the warm-up and the measured plain steps.
// --probe weights: also a read probe over the model's own decode-step weights (benchReadTensors over
// decodeWeightTensors, lib/bench.ts: every layer's MLA, dense MLPs, router, norms, every routed expert,
// lm_head; the mapped or made pages the step reads), before and after the profiled steps; printed as
// the step's weight GB/s against it.
// --rounds R: after the profile, R rounds of (the 1 GiB read probe, then --steps plain steps): each
// round's step weight GB/s over its own probe, printed with the median. The host's read bandwidth
// moves 1.5x within minutes, so a step and a probe taken seconds apart judge the step better than the
// run's one probe (the higher of before / after every preset).
// --huge on: loadModel's hugePages (the dense weights and the routed experts copied into anonymous
// memory advised for transparent huge pages); printed with the copy's bytes and the process's
// AnonHugePages / Rss (/proc/self/smaps_rollup) after the load.
// --quantize fp8|int8|int4: the linears quantized at load (loadModel's `quantize`; default: the checkpoint's bf16).
// --dist DIR: the build to measure (default ../dist; another worktree's dist for an A/B on one machine).
//   node bench/step-profile.mjs [--presets small,medium] [--threads N] [--steps 64] [--warmup 8] [--batch B]
//     [--quantize F] [--populate off] [--huge on] [--probe weights] [--rounds R] [--dist DIR] [--json f.json]
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { distImporter, dotPeak, gemmRate, median, now, rng } from './common.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const arg = (name, dflt) => (args.includes(name) ? args[args.indexOf(name) + 1] : dflt);
const load = distImporter(args);
const { native } = await load('index.js');
const { loadModel } = await load('generate.js');
const { initRandom } = await load('init-random.js');
// the probes and the weight accounting from the measured build too: its tensors are its own classes
const { weightAccounting: accounting, decodeWeightTensors, readBandwidth, readTensorsBandwidth } = await load('bench.js');
const populate = arg('--populate', 'on') !== 'off';
const huge = arg('--huge', 'off') === 'on';
/** The process's resident and transparent-huge-page bytes (/proc/self/smaps_rollup), or null. */
const rollup = () => {
  try {
    const t = readFileSync('/proc/self/smaps_rollup', 'utf8');
    const kb = k => Number((new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(t) ?? [0, 0])[1]) * 1024;
    return { rss: kb('Rss'), anonHuge: kb('AnonHugePages'), anon: kb('Anonymous') };
  } catch {
    return null;
  }
};
/** The process's page faults so far (getrusage): major (read from the file) and minor. */
const faults = () => {
  const u = process.resourceUsage();
  return { major: u.majorPageFault, minor: u.minorPageFault };
};
const presets = arg('--presets', 'small,medium').split(',');
const steps = Number(arg('--steps', 64));
const warmup = Number(arg('--warmup', 8));
const batch = Number(arg('--batch', 1));
const jsonPath = arg('--json', null);
const probeWeights = arg('--probe', null) === 'weights';
const quantize = arg('--quantize', null);
const rounds = Number(arg('--rounds', 0));
if (args.includes('--threads')) native.setThreads(Number(arg('--threads', 0)));

/** `n` steps: their times (ms), and with `pairs` the (row, FFN expert) pairs they routed added to pairs.n. */
function decode(engine, seqs, n, rand, vocab, pairs = null) {
  const ms = [];
  for (let i = 0; i < n; i++) {
    const t0 = now();
    const { logits, nFfn } = engine.forward(
      seqs,
      seqs.map(() => [rand.int(vocab)]),
      { collectRouting: !!pairs },
    );
    logits.toBytes();
    ms.push(now() - t0);
    logits.dispose();
    for (const t of nFfn) {
      pairs.n += new Int32Array(t.toBytes().buffer).reduce((a, c) => a + c, 0);
      t.dispose();
    }
  }
  return ms;
}

/** A linear weight's [out, in]: an int4 weight is int8 codes [n, groups, group / 2] (whole groups assumed). */
const weightDims = w => (w.shape.length === 3 ? [w.shape[0], w.shape[1] * w.shape[2] * 2] : w.shape);

/** Weight GB/s of a lone linear of `t` rows over `ws` in turn (every layer's copy of one linear). */
function loneGemv(ws, t) {
  const w0 = ws[0];
  const [n, k] = weightDims(w0.weight);
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
  return (w0.weight.nbytes + (w0.scale?.nbytes ?? 0)) / r.medianMs / 1e6;
}

async function profilePreset(preset) {
  const dir = path.join(here, 'out', `ckpt-${preset}`);
  if (!existsSync(path.join(dir, 'model.safetensors.index.json'))) await initRandom({ preset, out: dir, seed: 1 });
  const t0 = now();
  const model = await loadModel(dir, {
    backend: 'cpu',
    maxContext: 1024,
    populate,
    ...(huge ? { hugePages: true } : {}),
    ...(quantize ? { quantize } : {}),
    ...(batch > 1 ? { cacheBlocks: 64 * batch } : {}),
  });
  const loadMs = now() - t0,
    populated = model.memory.populated ?? null,
    memory = { hugePages: model.memory.hugePages ?? 0, ...rollup() };
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
  const f0 = faults();
  decode(engine, seqs, warmup, rand, d.vocab);
  native.synchronize('cpu');
  const f1 = faults();
  const own = probeWeights ? decodeWeightTensors(model) : null;
  const ownGbps = own ? [readTensorsBandwidth(own)] : [];
  const ownMB = own ? own.reduce((a, t) => a + t.nbytes, 0) / 1e6 : 0; // (read now: the model is disposed below)
  const f2 = faults(); // (the probe's faults counted in neither)
  const plain = decode(engine, seqs, steps, rand, d.vocab);
  const f3 = faults();
  const faultsPer = (a, b, n) => ({ major: (b.major - a.major) / Math.max(1, n), minor: (b.minor - a.minor) / Math.max(1, n) });
  const pageFaults = { warmup: faultsPer(f0, f1, warmup), measured: faultsPer(f2, f3, steps) };
  native.graphProfile(true);
  const pairs = { n: 0 };
  const ctxMean = seqs[0].length + (steps + 1) / 2; // keys each row attends, mean over the profiled steps
  const profiled = decode(engine, seqs, steps, rand, d.vocab, pairs);
  native.synchronize('cpu');
  const graphs = native.graphProfile(false);
  const plain2 = decode(engine, seqs, steps, rand, d.vocab);
  if (own) ownGbps.push(readTensorsBandwidth(own));
  const paired = [];
  for (let i = 0; i < rounds; i++)
    paired.push({ probeGbps: readBandwidth(), stepMs: median(decode(engine, seqs, steps, rand, d.vocab)) });
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
  // each linear weight's elements by its bytes (the FLOPs of a node that streams them)
  const elements = new Map();
  for (const l of Object.values(roles).flat())
    if (l.weight?.shape)
      elements.set(
        l.weight.nbytes + (('scale' in l && l.scale?.nbytes) || 0),
        weightDims(l.weight).reduce((a, x) => a * x, 1),
      );
  const acc = accounting(model);
  const elementBytes = acc.weightDtype === 'bf16' ? 2 : acc.weightDtype === 'f32' ? 4 : 1;
  const lone = {};
  for (const [role, ws] of Object.entries(roles)) {
    if (ws.some(l => l.perm || !l.weight?.shape || l.weight.shape.length < 2)) continue;
    lone[role] = { bytes: ws[0].weight.nbytes + (ws[0].scale?.nbytes ?? 0), gbps: loneGemv(ws, batch) };
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
  // FLOPs per step of a node: linear (2 x rows x elements), the experts (2 x params x pairs, split
  // over the step's moe nodes by their weight bytes); the rest computes on activations only
  const moeBytes = g.nodes.filter(n => n.op === 'moe').reduce((a, n) => a + n.weightBytes, 0);
  const expertFlops = (2 * acc.expertParams * pairs.n) / R;
  const flopsOf = n => {
    if (n.op === 'moe') return moeBytes ? (expertFlops * n.weightBytes) / moeBytes : 0;
    if (n.op === 'mlaDecodeAbsorbed') return d.heads * batch * ctxMean * (4 * d.kvLora + 2 * d.rope);
    // the absorbed weights' per-head GEMMs: q_nope x W_UK [nope, kvLora], o_lat x W_UV^T [v, kvLora]
    if (n.op === 'mlaAbsorbQ') return 2 * batch * d.heads * d.nope * d.kvLora;
    if (n.op === 'mlaOutput') return 2 * batch * d.heads * d.v * d.kvLora;
    if (n.op !== 'linear') return 0;
    const el = elements.get(Math.round(n.weightBytes / R));
    return 2 * batch * (el ?? n.weightBytes / R / elementBytes);
  };
  for (const n of g.nodes) {
    const o = byOp.get(n.op);
    o.flops = (o.flops ?? 0) + flopsOf(n) * R;
    if (n.op === 'linear' || n.op === 'moe') {
      const l = linears.get(n.op === 'moe' ? 'moe (experts)' : `${n.op} ${(n.weightBytes / R / 1e3).toFixed(0)} kB`);
      l.flops = (l.flops ?? 0) + flopsOf(n) * R;
    }
  }
  return {
    weightsProbe: own ? { gbps: Math.max(...ownGbps), samples: ownGbps, mb: ownMB } : null,
    gemmGflops: gemmRate(d.hidden),
    peak: dotPeak(),
    pairsPerStep: pairs.n / steps,
    rounds: paired.map(r => ({ ...r, frac: bytesPerStep / 1e6 / r.stepMs / r.probeGbps })),
    preset,
    batch,
    threads: native.threads(),
    steps,
    loadMs,
    populated,
    memory,
    pageFaults,
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
        floorMs: 0, // set once the probe is known
        gflop: perStep(o.flops) / 1e9,
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
          weightMB: perStep(l.bytes) / 1e6,
          gflop: perStep(l.flops) / 1e9,
          lone: role ? { role: role[0], gbps: role[1].gbps } : null,
          floorMs: 0,
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
  const gemm = r.gemmGflops;
  // the least time of `mb` MB of weights and `gflop` GFLOP: max(bytes / probe, FLOPs / GEMM rate)
  for (const x of [...r.ops, ...r.linear]) x.floorMs = Math.max(x.weightMB / bw, (1e3 * x.gflop) / gemm);
  r.ceilingMs = r.ops.reduce((a, o) => a + o.floorMs, 0);
  r.fracRoofline = r.weightMBPerStep / 1e3 / (r.stepMs / 1e3) / bw;
  console.log(
    `\n## ${r.preset}${quantize ? ` (${quantize})` : ''}, ${r.batch} row(s), ${r.threads} threads: step ${f(r.stepMs, 3)} ms (profiled ${f(r.profiledStepMs, 3)}), ` +
      `region ${f(r.regionMs, 3)} ms, nodes ${f(r.nodesMs, 3)} ms (${r.nodesPerStep} nodes); ` +
      `${f(r.weightMBPerStep, 1)} MB weights/step = ${f(r.weightMBPerStep / r.stepMs, 1)} GB/s = ` +
      `${f(100 * r.fracRoofline, 0)}% of the ${f(bw, 1)} GB/s probe`,
  );
  if (r.weightsProbe)
    console.log(
      `weights probe (the model's own ${f(r.weightsProbe.mb, 0)} MB of decode weights, the higher of before / after): ` +
        `${f(r.weightsProbe.gbps, 1)} GB/s; the step's weight GB/s = ${f((100 * r.weightMBPerStep) / r.stepMs / r.weightsProbe.gbps, 0)}% of it`,
    );
  if (r.rounds.length) {
    const fr = r.rounds.map(x => x.frac);
    console.log(
      `rounds (probe, then ${steps} steps; step weight GB/s over its round's probe): median ${f(100 * median(fr), 0)}%, ` +
        r.rounds.map(x => `${f(100 * x.frac, 0)}% (${f(x.stepMs, 3)} ms, ${f(x.probeGbps, 1)} GB/s)`).join(', '),
    );
  }
  const pf = r.pageFaults;
  console.log(
    `load ${f(r.loadMs, 0)} ms (populate ${r.populated ? (r.populated.skipped ?? `${f(r.populated.bytes / 2 ** 20, 0)} MiB`) : 'off or absent'}); ` +
      `page faults per step, major / minor: warm-up (${warmup} steps) ${f(pf.warmup.major, 1)} / ${f(pf.warmup.minor, 1)}, ` +
      `measured ${f(pf.measured.major, 1)} / ${f(pf.measured.minor, 1)}`,
  );
  if (r.memory.rss !== undefined)
    console.log(
      `memory after load: hugePages copy ${f(r.memory.hugePages / 1e6, 0)} MB; process Rss ${f(r.memory.rss / 1e6, 0)} MB, ` +
        `anonymous ${f(r.memory.anon / 1e6, 0)} MB, AnonHugePages ${f(r.memory.anonHuge / 1e6, 0)} MB`,
    );
  console.log(
    `outside the region ${f(r.profiledStepMs - r.regionMs, 3)} ms (profiled step - region), of which replay() to the region's start ` +
      `${f(r.startMs, 3)} ms; between nodes ${f(r.regionMs - r.nodesMs, 3)} ms`,
  );
  console.log(
    `floor: GEMM rate ${f(gemm, 0)} GFLOP/s (${f(gemm / r.peak.gflops, 2)} of the ${r.peak.instruction} peak, ${f(r.peak.gflops, 0)}), ${f(r.pairsPerStep, 1)} (row, FFN expert) pairs per step; the ops' floors sum to ` +
      `${f(r.ceilingMs, 3)} ms = ${f(r.ceilingMs / r.regionMs, 2)} of the region (the compute-aware ratio of the step's nodes)`,
  );
  const fl = x => (x.floorMs ? `${f(x.floorMs, 3)} | ${f(x.floorMs / x.ms, 2)}` : '- | -');
  console.log(
    '| op | per step | ms | % region | weight MB | GB/s | GFLOP | floor ms | floor / ms | join wait ms | jobs | master alone ms |',
  );
  console.log('|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
  for (const o of r.ops)
    console.log(
      `| ${o.op} | ${o.perStep} | ${f(o.ms, 3)} | ${f(100 * o.share, 1)} | ${f(o.weightMB, 1)} | ${o.gbps ? f(o.gbps, 1) : '-'} | ` +
        `${o.gflop ? f(o.gflop, 3) : '-'} | ${fl(o)} | ${f(o.waitMs, 3)} | ${f(o.jobs, 0)} | ${f(o.aloneMs, 3)} |`,
    );
  console.log(
    `\n| weights per call | per step | ms | GB/s in step | lone ${batch}-row linear GB/s | GFLOP | floor ms | floor / ms | join wait ms |`,
  );
  console.log('|---|---:|---:|---:|---:|---:|---:|---:|---:|');
  for (const l of r.linear)
    console.log(
      `| ${l.weights} | ${l.perStep} | ${f(l.ms, 3)} | ${f(l.gbps, 1)} | ${l.lone ? `${f(l.lone.gbps, 1)} (${l.lone.role})` : '-'} | ` +
        `${f(l.gflop, 3)} | ${fl(l)} | ${f(l.waitMs, 3)} |`,
    );
}
if (jsonPath) writeFileSync(jsonPath, JSON.stringify(results, null, 2));
