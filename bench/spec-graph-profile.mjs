// The replayed plain decode step against the replayed speculative step (verify + accept + draft,
// one graph), node by node (native.graphProfile: each node's time inside the parallel region, the
// weight bytes its kernels stream), steps interleaved (plain, speculative, plain, ...: the same
// machine load), on bench/speculative.mjs's agreeing checkpoint (small, agreement 0.9). Printed per
// graph: replays, the region per replay, the step's wall time (forward / speculativeStep until the
// tokens are read back), and per op: us per replay, weight MB, GB/s, the region master's wait at the
// op's joins (the other thread's last chunks). The speculative step's bytes /
// time against the plain step's is what the byte ideal's target (issue 16) asks to keep >= 0.85.
//   node bench/spec-graph-profile.mjs [--batch 8] [--steps 40] [--ckpt DIR] [--dist DIR]
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { distImporter, median, now } from './common.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const arg = (name, dflt) => (args.includes(name) ? args[args.indexOf(name) + 1] : dflt);
const B = Number(arg('--batch', 8));
const STEPS = Number(arg('--steps', 40));
const dir = arg('--ckpt', path.join(here, 'out', 'ckpt-small-mtp-agree90'));
const imp = distImporter(args);
const { native } = await imp('index.js');
const { empty, toArray, toArrayAsync } = await imp('tensor.js');
const { loadModel } = await imp('generate.js');
const GREEDY = { temperature: 0, topK: 0, topP: 1, minP: 0, seed: 0 };

const model = await loadModel(dir, { backend: 'cpu', maxContext: 1024, cacheBlocks: 8 * B * 8 });
const e = model.engine;
const ids = empty([B], { dtype: 'int32', device: e.device });
const argmax = logits => {
  native.sample(null, ids, logits, 0, 0, 1, 0, 0, 0);
  return Array.from(toArray(ids));
};
// prompts: the greedy continuation of a short seed per sequence (the cycle the checkpoint follows)
const seqs = Array.from({ length: B }, () => e.newSequence());
const ps = Array.from({ length: B }, (_, b) => Array.from({ length: 16 }, (_, i) => (b * 131 + i * 7 + 3) % 1000));
const r0 = e.forward(seqs, ps, { hidden: true });
let pending = argmax(r0.logits);
r0.logits.dispose();
const dl = e.mtp(
  seqs,
  ps.map((p, b) => [...p.slice(1), pending[b]]),
  ps.map(() => 0),
  r0.hidden,
);
r0.hidden.dispose();
let drafts = argmax(dl);
dl.dispose();

const wall = { plain: [], spec: [] };
let accepted = 0,
  specSteps = 0;
const round = async profiled => {
  let t = now();
  const { logits } = e.forward(
    seqs,
    pending.map(x => [x]),
  );
  native.sample(null, ids, logits, 0, 0, 1, 0, 0, 0);
  await toArrayAsync(ids);
  logits.dispose();
  if (profiled) wall.plain.push(now() - t);
  for (const q of seqs) q.truncate(q.length - 1);
  t = now();
  const s = await e.speculativeStep(
    seqs,
    pending,
    drafts,
    seqs.map(() => GREEDY),
  );
  if (profiled) {
    wall.spec.push(now() - t);
    accepted += s.accepted.reduce((a, b) => a + b, 0) / B;
    specSteps++;
  }
  for (const x of s.nFfn) x.dispose();
  pending = s.tokens.map(l => l[l.length - 1]);
  drafts = s.drafts;
};
// --variants A=1,A=2: environment settings alternated round by round (the native code reads them at
// run time, e.g. LONGCAT_MOE_SCHED), each variant's replays profiled on their own
const VARIANTS = arg('--variants', '').split(',').filter(Boolean);
const setVariant = v => {
  if (!v) return;
  const [k, x] = v.split('=');
  if (x === '') delete process.env[k];
  else process.env[k] = x;
};
for (let i = 0; i < 6; i++) await round(false);
native.synchronize('cpu');
const perVariant = (VARIANTS.length ? VARIANTS : ['']).map(() => new Map()); // graph key -> {replays, ns, nodes}
for (let i = 0; i < STEPS; i++)
  for (let j = 0; j < perVariant.length; j++) {
    const v = (i + j) % perVariant.length;
    setVariant(VARIANTS[v]);
    native.graphProfile(true);
    await round(true);
    native.synchronize('cpu');
    for (const g of native.graphProfile(false)) {
      if (!g.replays) continue;
      const key = g.nodes.some(n => n.op === 'sampleSpeculative') ? 'speculative' : `plain ${g.nodes.length}`;
      const acc = perVariant[v].get(key);
      if (!acc) perVariant[v].set(key, { replays: g.replays, ns: g.ns, nodes: g.nodes.map(n => ({ ...n })) });
      else {
        acc.replays += g.replays;
        acc.ns += g.ns;
        g.nodes.forEach((n, k) => {
          acc.nodes[k].ns += n.ns;
          acc.nodes[k].weightBytes += n.weightBytes;
          acc.nodes[k].waitNs += n.waitNs;
        });
      }
    }
  }
console.log(
  `batch ${B}, ${STEPS} steps each, threads ${native.threads()}, mean accepted ${(accepted / specSteps).toFixed(2)}; wall medians: plain ${median(wall.plain).toFixed(3)} ms, speculative ${median(wall.spec).toFixed(3)} ms`,
);
const summary = [];
const graphs = perVariant.flatMap((m, v) => [...m.entries()].map(([k, g]) => ({ ...g, label: `${VARIANTS[v] ?? ''} ${k}` })));
for (const g of graphs) {
  const sums = new Map();
  const draftFrom = g.nodes.findIndex(n => n.op === 'sampleSpeculative'); // the MTP head's nodes follow
  const draftOps = new Map(); // the MTP head's nodes by op (also counted in their op's line)
  g.nodes.forEach((n, i) => {
    if (draftFrom < 0 || i <= draftFrom) return;
    const key = `${n.op} (draft)`;
    const b = draftOps.get(key) ?? { ns: 0, bytes: 0, wait: 0, n: 0 };
    b.ns += n.ns;
    b.bytes += n.weightBytes;
    b.wait += n.waitNs;
    b.n++;
    draftOps.set(key, b);
  });
  for (const n of g.nodes) {
    const b = sums.get(n.op) ?? { ns: 0, bytes: 0, wait: 0, n: 0 };
    b.ns += n.ns;
    b.bytes += n.weightBytes;
    b.wait += n.waitNs;
    b.n++;
    sums.set(n.op, b);
  }
  const R = g.replays;
  const nodesNs = [...sums.values()].reduce((a, b) => a + b.ns, 0);
  const bytes = [...sums.values()].reduce((a, b) => a + b.bytes, 0) / R;
  summary.push({ R, regionMs: g.ns / R / 1e6, mb: bytes / 1e6 });
  console.log(
    `\n${g.label}: ${R} replays, region ${(g.ns / R / 1e6).toFixed(3)} ms, nodes ${(nodesNs / R / 1e6).toFixed(3)} ms, ${(bytes / 1e6).toFixed(1)} MB, ${(bytes / (g.ns / R)).toFixed(1)} GB/s`,
  );
  // the linears by weight size (per node: its bytes per replay)
  const lin = new Map();
  g.nodes.forEach((n, i) => {
    if (n.op !== 'linear') return;
    const key = `linear ${(n.weightBytes / R / 1e6).toFixed(3)} MB${draftFrom >= 0 && i > draftFrom ? ' (draft)' : ''}`;
    const b = lin.get(key) ?? { ns: 0, bytes: 0, wait: 0, n: 0 };
    b.ns += n.ns;
    b.bytes += n.weightBytes;
    b.wait += n.waitNs;
    b.n++;
    lin.set(key, b);
  });
  for (const [k, v] of lin) sums.set(k, v);
  for (const [k, v] of draftOps) if (!k.startsWith('linear')) sums.set(k, v);
  if (draftOps.size) {
    const all = [...draftOps.values()].reduce((a, b) => ({
      ns: a.ns + b.ns,
      bytes: a.bytes + b.bytes,
      wait: a.wait + b.wait,
      n: a.n + b.n,
    }));
    sums.set('MTP head (draft)', all);
  }
  for (const [op, b] of [...sums.entries()].sort((x, y) => y[1].ns - x[1].ns))
    console.log(
      `  ${op.padEnd(20)} ${(b.ns / R / 1e3).toFixed(1).padStart(8)} us  x${String(b.n).padStart(3)}  ${(b.bytes / R / 1e6).toFixed(2).padStart(7)} MB  ${b.bytes ? (b.bytes / b.ns).toFixed(1).padStart(5) : '    -'} GB/s  join wait ${(b.wait / R / 1e3).toFixed(1)} us`,
    );
}
for (const s of seqs) s.release();
ids.dispose();
model.dispose();
