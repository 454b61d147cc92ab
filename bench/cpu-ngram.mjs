// The cost of LongCat-Flash-Lite's N-gram embedding per token on the CPU, at the release's shapes
// (hidden 3072, E = 12 tables of D = 256, orders 2..4): the hashed ids (lib/model/ngram.ts, JS), the
// host gather of E rows per token from mapped-size tables (gatherRows on bf16 tables far larger than
// the LLC: random rows, so every row is a miss), and ngramEmbed (the projections, 18.9 MB of bf16,
// read once per step). Compared with the roofline of a Lite decode step: its active bytes in bf16
// (activeParams of the Lite config, the N-gram rows and projections included) at the read bandwidth
// measured in the same run. The real tables are 58.5 GiB; here each is `--rows` rows (default 2^18,
// 128 MiB, 1.5 GiB in all), so page-cache and disk effects of the real file are not measured.
//   node bench/cpu-ngram.mjs [--rows 262144] [--tokens 1,16,512] [--reps 7] [--out f.json]
import fs from 'node:fs';
import { native } from '../dist/native.js';
import { tensor, empty } from '../dist/tensor.js';
import { parseConfig, activeParams } from '../dist/config.js';
import { ngramDims } from '../dist/config-ngram.js';
import { ngramIds, ngramPowers } from '../dist/model/ngram.js';
import { now, median, rng, readBandwidth, randomBf16, randomF32 } from './common.mjs';

const args = process.argv.slice(2);
const opt = (name, dflt) => (args.includes(name) ? args[args.indexOf(name) + 1] : dflt);
const R = Number(opt('--rows', String(1 << 18)));
const tokenList = opt('--tokens', '1,16,512').split(',').map(Number);
const reps = Number(opt('--reps', '7'));

// the release's config.json, as the config tests read it
const LITE = parseConfig(
  JSON.parse(fs.readFileSync(new URL('../test/fixtures/longcat-flash-lite.config.json', import.meta.url), 'utf8')),
);
const nd = ngramDims(LITE.ngram, 3072, 131072);
const pw = ngramPowers(nd);
const H = 3072,
  E = nd.tables,
  D = nd.dim;

const time = fn => {
  fn(); // warm-up
  const s = [];
  for (let i = 0; i < reps; i++) {
    const t0 = now();
    fn();
    s.push(now() - t0);
  }
  return median(s);
};

const bwBefore = readBandwidth();
const tables = Array.from({ length: E }, (_, i) => tensor(randomBf16(R * D, 100 + i, 120), [R, D], { dtype: 'bf16' }));
const proj = tensor(randomF32(E * H * D, 7, 0.06), [E, H, D], { dtype: 'bf16' });
const cpu = native.defaultStream('cpu');
const r = rng(5);
const rowsOut = [];
for (const T of tokenList) {
  const tokens = Array.from({ length: T }, () => (r.int(10) === 0 ? 2 : r.int(131072)));
  const context = [r.int(131072), r.int(131072), r.int(131072)];
  const idsMs = time(() => ngramIds(nd, pw, context, tokens));
  // gather: E random rows per token (ids reduced into the smaller tables)
  const ids = ngramIds(nd, pw, context, tokens).map(v => v % R);
  const idx = tensor(ids, [E * T], { dtype: 'int32' });
  const rows = empty([E * T, D], { dtype: 'bf16' });
  const parts = Array.from({ length: E }, (_, e) => [rows.narrow(e * T, T), idx.narrow(e * T, T)]);
  const gatherMs = time(() => {
    for (let e = 0; e < E; e++) native.gatherRows(cpu, parts[e][0], tables[e], parts[e][1]);
    cpu.synchronize();
  });
  const base = tensor(randomF32(T * H, 9, 1), [T, H]);
  const y = empty([T, H]);
  const rows3 = rows.view([E, T, D]);
  const embedMs = time(() => {
    native.ngramEmbed(cpu, y, base, rows3, proj);
    cpu.synchronize();
  });
  const embedBytes = E * H * D * 2 + E * T * D * 2 + 8 * T * H;
  rowsOut.push({
    T,
    idsMs,
    gatherMs,
    embedMs,
    embedGBs: embedBytes / embedMs / 1e6,
    totalPerTokenMs: (idsMs + gatherMs + embedMs) / T,
  });
  for (const t of parts.flat()) t.dispose();
  for (const t of [idx, rows, rows3, base, y]) t.dispose();
}
const bwAfter = readBandwidth();
const bw = Math.max(bwBefore, bwAfter);
const p = activeParams(LITE);
// A decode step's active bytes in bf16: the trunk at 0 and at 12 FFN experts, plus the E looked-up rows.
const stepMs = params => ((params * 2 + E * D * 2 + H * 2) / (bw * 1e9)) * 1e3;
const rooflineMin = stepMs(p.activeMin),
  rooflineMax = stepMs(p.activeMax);

console.log(
  `read bandwidth: ${bwBefore.toFixed(1)} / ${bwAfter.toFixed(1)} GB/s (before / after); tables ${E} x ${R} rows x ${D} bf16`,
);
console.log(
  `Lite decode-step roofline (bf16 active bytes at ${bw.toFixed(1)} GB/s): ${rooflineMin.toFixed(1)} ms (0 FFN experts) .. ${rooflineMax.toFixed(1)} ms (12)`,
);
const ngramBytes = p.ngramProjections * 2 + E * D * 2;
console.log(
  `N-gram bytes per decode token: ${(ngramBytes / 1e6).toFixed(1)} MB (projections + ${E} rows) = ${((100 * ngramBytes) / (p.activeMin * 2 + E * D * 2 + H * 2)).toFixed(2)}% .. ${((100 * ngramBytes) / (p.activeMax * 2 + E * D * 2 + H * 2)).toFixed(2)}% of the step's active bytes`,
);
console.log(
  '| T | ids (JS) ms | host gather ms | ngramEmbed ms (GB/s, % of probe) | per token ms | per token vs decode roofline (0 / 12 experts) |',
);
console.log('|---|---|---|---|---|---|');
for (const x of rowsOut)
  console.log(
    `| ${x.T} | ${x.idsMs.toFixed(3)} | ${x.gatherMs.toFixed(3)} | ${x.embedMs.toFixed(3)} (${x.embedGBs.toFixed(1)}, ${((100 * x.embedGBs) / bw).toFixed(0)}%) | ${x.totalPerTokenMs.toFixed(4)} | ${((100 * x.totalPerTokenMs) / rooflineMin).toFixed(2)}% / ${((100 * x.totalPerTokenMs) / rooflineMax).toFixed(2)}% |`,
  );
const out = opt('--out', null);
if (out)
  fs.writeFileSync(
    out,
    JSON.stringify({ bwBefore, bwAfter, rows: R, rooflineMin, rooflineMax, ngramBytes, cases: rowsOut }, null, 2),
  );
for (const t of [...tables, proj]) t.dispose();
