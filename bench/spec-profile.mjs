// Per-op profile of a plain decode step vs a speculative step's parts (verify of 2 rows per
// sequence, the MTP head over those rows), run eagerly with every native op followed by a device
// synchronize (so each op is timed alone, JS included; the sums exceed the replayed steps' times
// by the per-op sync cost, the same for every part). For finding where multi-row steps lose
// (issue 16); not a throughput figure. Uses bench/speculative.mjs's agree-0.9 checkpoint.
//   node bench/spec-profile.mjs [--batch B] [--steps N] [--ckpt DIR] [--top K]
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { native } from '../dist/index.js';
import { loadModel } from '../dist/generate.js';
import { now, median } from './common.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const arg = (name, dflt) => (args.includes(name) ? args[args.indexOf(name) + 1] : dflt);
const B = Number(arg('--batch', 8));
const STEPS = Number(arg('--steps', 12));
const TOP = Number(arg('--top', 40));
const dir = arg('--ckpt', path.join(here, 'out', 'ckpt-small-mtp-agree90'));

const sync = native.synchronize.bind(native);
let rec = null; // Map key -> ms[] of the current part
const skip = new Set(['synchronize', 'synchronizeAsync', 'setErrorFactory', 'defaultStream', 'threads']);
for (const name of Object.keys(native)) {
  const f = native[name];
  if (typeof f !== 'function' || skip.has(name) || /^[A-Z]/.test(name)) continue;
  native[name] = function (...a) {
    if (!rec) return f.apply(this, a);
    const t0 = now();
    const r = f.apply(this, a);
    sync('cpu');
    const shapes = a
      .filter(x => x && typeof x === 'object' && Array.isArray(x.shape))
      .slice(0, 2)
      .map(x => x.shape.join('x'));
    const key = `${name} ${shapes.join(' ')}`;
    const ms = now() - t0;
    const list = rec.get(key) ?? [];
    list.push(ms);
    rec.set(key, list);
    return r;
  };
}

const model = await loadModel(dir, { backend: 'cpu', maxContext: 512, cacheBlocks: 3 * B * 8 });
const e = model.engine;
const seqs = Array.from({ length: B }, () => e.newSequence());
const prompt = Array.from({ length: 16 }, (_, i) => (i * 37 + 11) % 1000);
const first = e.forward(
  seqs,
  seqs.map(() => prompt),
  { hidden: true },
);
first.logits.dispose();
first.hidden.dispose();
const tok = seqs.map((_, b) => (b * 13 + 5) % 1000);

/** per part: key -> per-step sum (ms), and the per-step totals */
const parts = { plain: [], verify: [], mtp: [] };
function run(part, fn) {
  rec = new Map();
  fn();
  sync('cpu');
  parts[part].push(rec);
  rec = null;
}
for (let i = 0; i < STEPS + 2; i++) {
  run('plain', () => {
    const r = e.forward(
      seqs,
      tok.map(t => [t]),
      { eager: true },
    );
    r.logits.dispose();
  });
  for (const q of seqs) q.truncate(q.length - 1);
  /** @type {import('../dist/tensor.js').Tensor | undefined} */
  let hidden;
  run('verify', () => {
    const r = e.forward(
      seqs,
      tok.map(t => [t, t]),
      { mode: 'decode', eager: true, hidden: true },
    );
    r.logits.dispose();
    hidden = r.hidden;
  });
  const verified = hidden;
  if (!verified) throw new Error('spec-profile: the verify forward returned no hidden rows');
  const L = seqs.map(s => s.length - 2);
  // the MTP head over the 2 verified rows per sequence (its own cache slots, those of the verified positions)
  run('mtp', () => {
    const lg = e.mtp(
      seqs.flatMap(s => [s, s]),
      tok.flatMap(t => [[t], [t]]),
      L.flatMap(l => [l, l + 1]),
      verified,
    );
    lg.dispose();
  });
  verified.dispose();
  for (const q of seqs) q.truncate(q.length - 2);
}

// medians per key over the steps (first 2 dropped)
function summarize(list) {
  const keys = new Map();
  for (const m of list.slice(2)) for (const [k, v] of m) keys.set(k, [...(keys.get(k) ?? []), v.reduce((a, b) => a + b, 0)]);
  const out = new Map();
  for (const [k, v] of keys) out.set(k, { ms: median(v), calls: list[2].get(k)?.length ?? 0 });
  return out;
}
const S = Object.fromEntries(Object.entries(parts).map(([k, v]) => [k, summarize(v)]));
const total = m => [...m.values()].reduce((a, b) => a + b.ms, 0);
console.log(`batch ${B}, ${STEPS} steps, medians per op (ms, summed over the step's calls); threads ${native.threads()}`);
console.log(`totals: plain ${total(S.plain).toFixed(2)}  verify ${total(S.verify).toFixed(2)}  mtp ${total(S.mtp).toFixed(2)}`);
// group ops by name (shapes differ between plain and verify): name -> ms
const byName = m => {
  const g = new Map();
  for (const [k, v] of m) {
    const n = k.split(' ')[0];
    g.set(n, (g.get(n) ?? 0) + v.ms);
  }
  return g;
};
const P = byName(S.plain),
  V = byName(S.verify),
  M = byName(S.mtp);
const names = [...new Set([...P.keys(), ...V.keys(), ...M.keys()])].sort((a, b) => (V.get(b) ?? 0) - (V.get(a) ?? 0));
console.log('op            plain   verify  v/p    mtp');
for (const n of names)
  console.log(
    `${n.padEnd(14)}${(P.get(n) ?? 0).toFixed(3).padStart(7)} ${(V.get(n) ?? 0).toFixed(3).padStart(7)} ${((V.get(n) ?? 0) / (P.get(n) ?? 1)).toFixed(2).padStart(5)} ${(M.get(n) ?? 0).toFixed(3).padStart(7)}`,
  );
for (const part of ['plain', 'verify', 'mtp']) {
  console.log(`\n${part}: top ops by key`);
  const rows = [...S[part].entries()].sort((a, b) => b[1].ms - a[1].ms).slice(0, TOP);
  for (const [k, v] of rows) console.log(`  ${v.ms.toFixed(3).padStart(7)} ms  x${v.calls}  ${k}`);
}
for (const s of seqs) s.release();
model.dispose();
