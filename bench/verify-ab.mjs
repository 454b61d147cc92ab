// The check of the mapped shards before each CPU forward pass (LongcatModel's verifyWeights), on a
// checkpoint split into many shards as a real one is (LongCat-Flash: ~75): batch-1 decode steps of
// the small preset, the check's variant alternated step by step (A B B A ...) in one process, each
// call timed where forward() makes it (after the previous step's region streamed its weights
// through the caches). Variants: `path` = Checkpoint.verify() (every shard's MappedFile.verify(): a
// stat() of the path -- the per-step check before session 15 -- and an fstat()), `watch` =
// Checkpoint.verifyMappings() (one native call: one read() of the inotify events), `fstat` = the
// same with LONGCAT_WATCH_MAPPINGS=0 (one fstat() per shard), `none` = no check. A build without
// verifyMappings (--dist of an older build) runs `path` (there one stat() per shard) and `none`. Printed per variant, us per
// step: the check's 25th percentile / median, and the step's (forward() until its logits are read).
//   node bench/verify-ab.mjs [--shards 75] [--threads 2] [--steps 400] [--dist DIR]
import { closeSync, copyFileSync, existsSync, mkdirSync, openSync, readSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { distImporter, now, pct, rng } from './common.mjs';

const args = process.argv.slice(2);
const arg = (name, dflt) => (args.includes(name) ? args[args.indexOf(name) + 1] : dflt);
const load = distImporter(args);
const { native } = await load('index.js');
const { loadModel } = await load('generate.js');
const { initRandom } = await load('init-random.js');
const { openCheckpoint } = await load('checkpoint.js');
const { readSafetensorsHeader, writeSafetensors } = await load('safetensors.js');
const N = Number(arg('--steps', 400));
const nShards = Number(arg('--shards', 75));
native.setThreads(Number(arg('--threads', 2)));
const out = path.join(path.dirname(fileURLToPath(import.meta.url)), 'out');
const small = path.join(out, 'ckpt-small');
if (!existsSync(path.join(small, 'model.safetensors.index.json'))) await initRandom({ preset: 'small', out: small, seed: 1 });

/** ckpt-small's tensors regrouped into `n` shards of about equal bytes (same names, same bytes). */
async function split(n) {
  const dir = path.join(out, `ckpt-small-s${n}`);
  const index = path.join(dir, 'model.safetensors.index.json');
  if (existsSync(index)) return dir;
  mkdirSync(dir, { recursive: true });
  const src = JSON.parse((await import('node:fs')).readFileSync(path.join(small, 'model.safetensors.index.json'), 'utf8'));
  const tensors = [];
  for (const file of new Set(Object.values(src.weight_map))) {
    const h = await readSafetensorsHeader(path.join(small, file));
    for (const e of h.tensors.values()) tensors.push({ file: path.join(small, file), e });
  }
  const total = tensors.reduce((a, t) => a + t.e.nbytes, 0);
  const groups = Array.from({ length: n }, () => []);
  let acc = 0;
  for (const t of tensors) {
    groups[Math.min(n - 1, Math.floor((acc / total) * n))].push(t);
    acc += t.e.nbytes;
  }
  const weightMap = {};
  for (const [i, g] of groups.entries()) {
    const name = `model-${String(i + 1).padStart(5, '0')}-of-${String(n).padStart(5, '0')}.safetensors`;
    const items = g.map(({ file, e }) => {
      const bytes = new Uint8Array(e.nbytes);
      const fd = openSync(file, 'r');
      readSync(fd, bytes, 0, e.nbytes, e.offset);
      closeSync(fd);
      weightMap[e.name] = name;
      return { name: e.name, dtype: e.dtype, shape: e.shape, data: bytes };
    });
    await writeSafetensors(path.join(dir, name), items, { format: 'pt' });
  }
  for (const f of ['config.json', 'generation_config.json', 'tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json'])
    if (existsSync(path.join(small, f))) copyFileSync(path.join(small, f), path.join(dir, f));
  writeFileSync(index, JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }, null, 2));
  return dir;
}

const dir = await split(nShards);
const model = await loadModel(dir, { backend: 'cpu', maxContext: 1024 });
const ck = await openCheckpoint(dir);
const e = model.engine,
  V = e.dims.vocab,
  rand = rng(7);
const mappings = [...new Set(ck.files)].length;
const checks = { path: () => ck.verify(), none: () => {} };
let ckStat = null;
if (ck.verifyMappings) {
  checks.watch = () => ck.verifyMappings();
  process.env.LONGCAT_WATCH_MAPPINGS = '0'; // read when the files are mapped
  ckStat = await openCheckpoint(dir);
  delete process.env.LONGCAT_WATCH_MAPPINGS;
  checks.fstat = () => ckStat.verifyMappings();
}
const variants = arg('--variants', Object.keys(checks).join(',')).split(',');
let checkTime = 0,
  warmTime = 0;
let check = checks.none;
e.verifyWeights = () => {
  const t0 = now();
  check();
  const t1 = now();
  if (args.includes('--warm')) check(); // the same call again at once: what caches cost the first
  checkTime = t1 - t0;
  warmTime = now() - t1;
};
let seq = e.newSequence();
const step = () => {
  if (seq.length === 0 || seq.length >= 160) {
    seq.release();
    seq = e.newSequence();
    e.forward([seq], [Array.from({ length: 32 }, () => rand.int(V))]).logits.dispose();
  }
  const t0 = now();
  const { logits } = e.forward([seq], [[rand.int(V)]]);
  logits.toBytes();
  const t = now() - t0;
  logits.dispose();
  return t;
};
for (let i = 0; i < 40; i++) step();
const res = Object.fromEntries(variants.map(v => [v, { check: [], warm: [], step: [] }]));
// Each variant's position rotates (A B C, then B C A, ...), each followed by its mirror, so no
// variant always runs after the same one.
for (let i = 0; i < N; i++) {
  const round = Math.floor(i / (2 * variants.length));
  const k = i % (2 * variants.length);
  const pos = k < variants.length ? k : 2 * variants.length - 1 - k;
  const v = variants[(pos + round) % variants.length];
  check = checks[v];
  const t = step();
  res[v].check.push(checkTime * 1000);
  res[v].warm.push(warmTime * 1000);
  res[v].step.push(t * 1000);
}
console.log(`${dir}: ${mappings} shards, ${N} steps, threads ${arg('--threads', 2)}, build ${load.dir}`);
for (const v of variants) {
  const r = res[v];
  console.log(
    `${v.padEnd(5)} check p25 / median ${pct(r.check, 25).toFixed(1)} / ${pct(r.check, 50).toFixed(1)} us` +
      ` (${(pct(r.check, 50) / mappings).toFixed(2)} per shard)` +
      (args.includes('--warm') ? `, again at once ${pct(r.warm, 50).toFixed(1)}` : '') +
      `; step ${pct(r.step, 25).toFixed(0)} / ${pct(r.step, 50).toFixed(0)} us`,
  );
}
ck.close();
ckStat?.close();
model.dispose();
