// What one prefill chunk costs behind a cached prefix (issue 17: the ~40 ms fixed part of a chunk's stall
// that bench/serve.mjs --long-only measured): a sequence of the small serve checkpoint (the one
// bench/serve.mjs writes) is prefilled to P tokens, then a chunk of C tokens is run with
// engine.forward (mode prefill, the last token's logits) and rolled back, R times, on the CPU
// stream's own clock (an event before forward() and one after it; the stream is idle before, so the
// span holds forward()'s host part whenever the stream waits for it). Printed per (P, C): the chunk's
// median / min ms and forward()'s host ms on the JS thread.
// With --ops: one more pass per (P, C) with every stream op of the native addon wrapped in events on
// its own stream (a few us each), the per-op sums (linears keyed by their weight's shape) of the
// median repeat, the main stream's time between ops (the stream waiting for the host), and the MoE
// stream's.
//   node bench/chunk-profile.mjs [--prefixes 0,500,1000,2000] [--chunks 16,64,128] [--repeats 7] [--ops] [--dist DIR]
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const args = process.argv.slice(2);
const arg = (name, dflt) => (args.includes(name) ? args[args.indexOf(name) + 1] : dflt);
const PREFIXES = arg('--prefixes', '0,500,1000,2000').split(',').map(Number);
const CHUNKS = arg('--chunks', '16,64,128').split(',').map(Number);
const REPEATS = Number(arg('--repeats', 7));
const OPS = args.includes('--ops');
const MODE = arg('--mode', 'prefill'); // decode: the absorbed form, eager (the experiment)
const here = path.dirname(fileURLToPath(import.meta.url));
// (not common.mjs's distImporter: that module loads this checkout's dist/ and its addon too)
const distDir = path.resolve(here, arg('--dist', '../dist'));
const dist = f => import(pathToFileURL(path.join(distDir, f)).href);
const { native, Event, toArray } = await dist('index.js');
const { loadModel } = await dist('generate.js');
const { initRandom } = await dist('init-random.js');
const dir = path.join(here, 'out', 'ckpt-small-serve');
if (!existsSync(path.join(dir, 'model.safetensors.index.json'))) await initRandom({ preset: 'small', seed: 1, out: dir });
const maxP = Math.max(...PREFIXES),
  maxC = Math.max(...CHUNKS);
const model = await loadModel(dir, { backend: 'cpu', maxContext: maxP + maxC + 16, prefillChunk: 512 });
const e = model.engine;
const stream = native.defaultStream('cpu');
const StreamClass = stream.constructor;

let seed = 12345;
const rand = () => {
  seed = (seed * 1103515245 + 12345) >>> 0;
  return (seed >>> 8) % 4000;
};
const tokens = n => Array.from({ length: n }, () => 4 + rand());
const med = v => [...v].sort((a, b) => a - b)[v.length >> 1];

/** Per-op tracing: every native function called with a stream first gets an event on that stream
 *  before and after it. */
let trace = null;
for (const [name, fn] of Object.entries(native)) {
  if (typeof fn !== 'function' || name === 'Event' || /^[A-Z]/.test(name)) continue;
  native[name] = function (...a) {
    if (!trace || !(a[0] instanceof StreamClass)) return fn.apply(this, a);
    let key = name;
    if (name === 'linear') key = `linear ${a[3]?.shape?.join('x')} -> ${a[1]?.shape?.at(-1)}`;
    const s = a[0],
      e0 = new Event('cpu'),
      e1 = new Event('cpu');
    e0.record(s);
    const r = fn.apply(this, a);
    e1.record(s);
    trace.push({ key, s, e0, e1 });
    return r;
  };
}

function opSums(list) {
  const sums = new Map(),
    gaps = new Map();
  const last = new Map(),
    main = list[0]?.s; // the embedding's: the main stream
  for (const t of list) {
    const ms = t.e0.elapsedMs(t.e1);
    const k = `${t.s === main ? 'main' : 'moe '} ${t.key}`;
    const o = sums.get(k) ?? { ms: 0, n: 0 };
    o.ms += ms;
    o.n++;
    sums.set(k, o);
    const prev = last.get(t.s);
    if (prev) gaps.set(t.s, (gaps.get(t.s) ?? 0) + prev.elapsedMs(t.e0));
    last.set(t.s, t.e1);
  }
  return { sums, gaps, main };
}

const seq = e.newSequence();
let at = 0;
const rows = [];
for (const P of [...PREFIXES].sort((a, b) => a - b)) {
  seq.truncate(at);
  while (at < P) {
    const n = Math.min(512, P - at);
    const r = e.forward([seq], [tokens(n)], { mode: 'prefill' });
    toArray(r.logits);
    r.logits.dispose();
    at += n;
  }
  for (const C of CHUNKS) {
    const run = traced => {
      const e0 = new Event('cpu'),
        e1 = new Event('cpu');
      const ids = tokens(C);
      stream.synchronize();
      if (traced) trace = [];
      e0.record(stream);
      const t0 = performance.now();
      const r = e.forward([seq], [ids], MODE === 'decode' ? { mode: 'decode', eager: true } : { mode: 'prefill' });
      const host = performance.now() - t0;
      e1.record(stream);
      toArray(r.logits);
      r.logits.dispose();
      const list = trace;
      trace = null;
      seq.truncate(P);
      return { ms: e0.elapsedMs(e1), host, list };
    };
    run(false); // warm-up
    const plain = [];
    for (let i = 0; i < REPEATS; i++) plain.push(run(false));
    const ms = plain.map(x => x.ms);
    const row = { P, C, ms: med(ms), min: Math.min(...ms), host: med(plain.map(x => x.host)) };
    rows.push(row);
    console.log(
      `P ${String(P).padStart(4)} C ${String(C).padStart(3)}: chunk ${row.ms.toFixed(2)} ms (min ${row.min.toFixed(2)}), forward() host ${row.host.toFixed(2)} ms, ${(row.ms / C).toFixed(3)} ms/token`,
    );
    if (OPS) {
      const traced = [];
      for (let i = 0; i < Math.max(3, REPEATS >> 1); i++) traced.push(run(true));
      traced.sort((a, b) => a.ms - b.ms);
      const mid = traced[traced.length >> 1];
      const { sums, gaps, main } = opSums(mid.list);
      console.log(`  traced: chunk ${mid.ms.toFixed(2)} ms, host ${mid.host.toFixed(2)} ms, ops ${mid.list.length}`);
      for (const [k, v] of [...sums].sort((a, b) => b[1].ms - a[1].ms))
        if (v.ms >= 0.05) console.log(`    ${k.padEnd(48)} ${v.ms.toFixed(2).padStart(7)} ms  x${v.n}`);
      for (const [s, g] of gaps) console.log(`    ${s === main ? 'main' : 'moe '} between ops ${g.toFixed(2)} ms`);
    }
  }
}
seq.release();
model.dispose?.();
