// How long loadModel blocks the JS thread (issue 19): a large CPU KV cache (--cache-gb, default 4) is
// faulted in and zeroed at load, and the mapped weights faulted in (loadModel's `populate`). An
// event-loop monitor (1 ms interval) records the longest gap between two turns of the loop and the
// total time the loop was held beyond its interval, while loadModel runs. --dist DIR: the build to
// measure (another worktree's dist, for an A/B of builds on one machine). Figures are wall-clock:
// compare the cases of one lock hold, alternated, not separate runs.
//   node bench/load-lag.mjs [--preset medium] [--cache-gb 4] [--repeats 2] [--threads 2] [--populate off] [--dist DIR]
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { distImporter, median, now } from './common.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const arg = (name, dflt) => (args.includes(name) ? args[args.indexOf(name) + 1] : dflt);
const load = distImporter(args);
const { native } = await load('index.js');
const { loadModel } = await load('generate.js');
const preset = arg('--preset', 'medium');
const cacheGb = Number(arg('--cache-gb', 4));
const repeats = Number(arg('--repeats', 2));
const populate = arg('--populate', 'on') !== 'off';
if (args.includes('--threads')) native.setThreads(Number(arg('--threads', 0)));
const dir = path.join(here, 'out', `ckpt-${preset}`);

/** Runs `run` under a 1 ms interval: its time, the longest gap between ticks beyond the interval
 *  and the sum of such excess (the time the loop was held). */
async function watchLoop(run) {
  const I = 1;
  let last = now(),
    maxGap = 0,
    held = 0;
  const timer = setInterval(() => {
    const t = now(),
      over = Math.max(0, t - last - I);
    maxGap = Math.max(maxGap, over);
    held += over;
    last = t;
  }, I);
  const t0 = now();
  let value;
  try {
    value = await run();
  } finally {
    clearInterval(timer);
  }
  const t = now(),
    over = Math.max(0, t - last - I);
  return { value, ms: t - t0, maxGapMs: Math.max(maxGap, over), heldMs: held + over };
}

// the cache's bytes per block, from a small load (the padding rows' blocks make it a slight overestimate)
const probe = await loadModel(dir, { backend: 'cpu', maxContext: 1024, cacheBlocks: 64, populate: false });
const perBlock = probe.memory.kvCache.cpu / 64;
probe.dispose();
const cacheBlocks = Math.floor((cacheGb * 2 ** 30) / perBlock);

const rows = [];
for (let r = 0; r < repeats; r++) {
  const x = await watchLoop(() => loadModel(dir, { backend: 'cpu', maxContext: 1024, cacheBlocks, populate }));
  const m = x.value;
  rows.push({
    loadMs: x.ms,
    maxGapMs: x.maxGapMs,
    heldMs: x.heldMs,
    kvGiB: m.memory.kvCache.cpu / 2 ** 30,
    populated: m.memory.populated ?? null,
  });
  m.dispose();
}
const f = (v, d = 0) => v.toFixed(d);
const p = rows[0].populated;
console.log(
  `${preset}, ${native.threads()} threads, KV cache ${f(rows[0].kvGiB, 2)} GiB, weights populate ${
    p ? (p.skipped ?? `${f(p.bytes / 2 ** 20)} MiB`) : 'off or absent'
  } (${load.dir}):`,
);
console.log(
  `  load ${rows.map(x => f(x.loadMs)).join(' / ')} ms (median ${f(median(rows.map(x => x.loadMs)))}); JS thread held ` +
    `${rows.map(x => f(x.heldMs)).join(' / ')} ms, longest gap ${rows.map(x => f(x.maxGapMs)).join(' / ')} ms`,
);
