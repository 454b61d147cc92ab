// A/B of loadModel's `hugePages` (the dense weights and the routed experts copied into hugepage-advised anonymous
// memory, lib/model/weights.ts copyToHugePages) on the replayed CPU decode step at batch 1: the same checkpoint loaded with
// hugePages false (the GEMVs read the mapped shards) and true (the copies), one model per child process
// (two engines in one process disturb each other's steps), the two alternating for --rounds rounds so
// drift of the shared machine hits both alike; median step as a fraction of the weight-streaming roofline
// (the weight bytes the replayed step's kernels stream, from native graphProfile, over the read probe,
// the higher of before and after).
//   node bench/hugepages.mjs [--presets small,medium] [--threads 2] [--rounds 4] [--steps 32]
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { native } from '../dist/index.js';
import { median, now, readBandwidth, rng } from './common.mjs';
import { loadModel } from '../dist/generate.js';
import { initRandom } from '../dist/init-random.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const self = fileURLToPath(import.meta.url);
const args = process.argv.slice(2);
const arg = (name, dflt) => (args.includes(name) ? args[args.indexOf(name) + 1] : dflt);
const threads = Number(arg('--threads', 2));
const steps = Number(arg('--steps', 32));
native.setThreads(threads);

function decode(engine, seq, n, rand) {
  const ms = [];
  for (let i = 0; i < n; i++) {
    const t0 = now();
    const { logits } = engine.forward([seq], [[rand.int(engine.dims.vocab)]]);
    logits.toBytes();
    ms.push(now() - t0);
    logits.dispose();
  }
  return ms;
}

if (args.includes('--child')) {
  // one model: { stepMs, bytes, copied, hugeBacked } on stdout
  const anonHuge = () => Number((readFileSync('/proc/meminfo', 'utf8').match(/AnonHugePages:\s+(\d+)/) ?? [0, 0])[1]) * 1024;
  const huge0 = anonHuge();
  const model = await loadModel(arg('--dir'), { backend: 'cpu', maxContext: 1024, hugePages: arg('--child') === 'huge' });
  const hugeBacked = anonHuge() - huge0;
  const rand = rng(7);
  const seq = model.engine.newSequence();
  decode(model.engine, seq, 8, rand); // pages in, captures the graph
  native.graphProfile(true);
  decode(model.engine, seq, 4, rand);
  native.synchronize('cpu');
  const g = native.graphProfile(false).reduce((a, b) => (b.replays > a.replays ? b : a));
  const bytes = g.nodes.reduce((a, n) => a + n.weightBytes, 0) / g.replays;
  const stepMs = median(decode(model.engine, seq, steps, rand));
  console.log(JSON.stringify({ stepMs, bytes, copied: model.memory.hugePages, hugeBacked }));
  seq.release();
  model.dispose();
  process.exit(0);
}

const presets = arg('--presets', 'small,medium').split(',');
const rounds = Number(arg('--rounds', 4));
const bw0 = readBandwidth();
const rows = [];
for (const preset of presets) {
  const dir = path.join(here, 'out', `ckpt-${preset}`);
  if (!existsSync(path.join(dir, 'model.safetensors.index.json'))) await initRandom({ preset, out: dir, seed: 1 });
  const runs = { mapped: [], huge: [] };
  for (let r = 0; r < rounds; r++)
    for (const mode of r % 2 ? ['huge', 'mapped'] : ['mapped', 'huge']) {
      const out = execFileSync(process.execPath, [
        self,
        '--child',
        mode,
        '--dir',
        dir,
        '--threads',
        String(threads),
        '--steps',
        String(steps),
      ]);
      runs[mode].push(JSON.parse(out.toString().trim().split('\n').pop()));
    }
  const m = runs.mapped,
    h = runs.huge;
  rows.push({
    preset,
    bytes: m[0].bytes,
    copied: h[0].copied,
    hugeBacked: h[0].hugeBacked,
    mapped: median(m.map(x => x.stepMs)),
    huge: median(h.map(x => x.stepMs)),
    rounds: m.map((x, i) => `${x.stepMs.toFixed(2)} / ${h[i].stepMs.toFixed(2)}`).join(', '),
  });
}
const bw = Math.max(bw0, readBandwidth());
console.log(
  `read probe ${bw.toFixed(1)} GB/s (max of before / after), ${threads} threads, ${rounds} alternating rounds of ${steps} steps per mode`,
);
console.log(
  '| preset | weight MB / step | copied MB (huge-page backed) | step ms mapped | step ms huge | % roofline mapped | % roofline huge | speedup |',
);
console.log('| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |');
for (const r of rows) {
  const pct = ms => ((100 * r.bytes) / 1e9 / (ms / 1e3) / bw).toFixed(0);
  console.log(
    `| ${r.preset} | ${(r.bytes / 1e6).toFixed(1)} | ${(r.copied / 1e6).toFixed(1)} (${(r.hugeBacked / 1e6).toFixed(1)}) | ${r.mapped.toFixed(3)} | ` +
      `${r.huge.toFixed(3)} | ${pct(r.mapped)}% | ${pct(r.huge)}% | ${(r.mapped / r.huge).toFixed(2)}x |`,
  );
}
for (const r of rows) console.log(`${r.preset}: step ms per round, mapped / huge: ${r.rounds}`);
