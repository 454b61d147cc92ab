#!/usr/bin/env node
// Runs the whole CPU benchmark suite, one bench per child process (so one's memory never
// disturbs the next), each printing its own tables; then prints a summary of the headline ratios.
// Writes bench/out/<bench>.json (+ .txt: the bench's output) and bench/out/summary.json.
//   npm run bench                   # = node bench/run.mjs
//   node bench/run.mjs [--quick] [--only cpu-moe,model]
// Set LONGCAT_ADDON=path/to/longcat.node to benchmark a particular build. dist/ is compiled
// (npx tsc -p tsconfig.json) when it is missing.
import { spawn, execSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '..');
const outDir = path.join(here, 'out');
const args = process.argv.slice(2);
const quick = args.includes('--quick');
const only = args.includes('--only') ? args[args.indexOf('--only') + 1].split(',') : null;

// name, script, args (cpu-linear belongs to another author: it takes no flags and writes its own JSON)
/** @type {Array<[name: string, script: string, extraArgs: string[]]>} */
const BENCHES = [
  ['cpu-linear', 'cpu-linear.mjs', []],
  ['cpu-moe', 'cpu-moe.mjs', ['--out', path.join(outDir, 'cpu-moe.json')]],
  ['cpu-mla', 'cpu-mla.mjs', ['--out', path.join(outDir, 'cpu-mla.json')]],
  ['model', 'model.mjs', ['--out', path.join(outDir, 'model.json')]],
];

function run(script, extra) {
  return new Promise(resolve => {
    const t0 = Date.now();
    const child = spawn(process.execPath, [path.join(here, script), ...extra], { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
    let text = '';
    child.stdout.on('data', b => {
      text += b;
      process.stdout.write(b);
    });
    child.stderr.on('data', b => {
      text += b;
      process.stderr.write(b);
    });
    child.on('close', code => resolve({ code, text, seconds: (Date.now() - t0) / 1000 }));
  });
}

const readJson = name => {
  try {
    return JSON.parse(fs.readFileSync(path.join(outDir, `${name}.json`), 'utf8'));
  } catch {
    return null;
  }
};
const pct = x => (Number.isFinite(x) ? `${(100 * x).toFixed(0)}%` : 'n/a');

/** The headline rows: figure, absolute value, ratio to the roofline measured in the same run, target. */
function summary(ran) {
  const rows = [];
  const lin = ran.has('cpu-linear') ? readJson('cpu-linear') : null;
  if (lin) {
    for (const g of lin.gemv ?? [])
      if (g.t === 1)
        rows.push([
          `GEMV ${g.dtype} ${g.n}x${g.k}, t=1`,
          `${g.gbps.toFixed(1)} GB/s`,
          `${pct(g.fractionOfReadBw)} of read bw`,
          '>= 80%',
        ]);
    for (const g of lin.gemm ?? [])
      rows.push([
        `GEMM bf16 t=${g.t} ${g.n}x${g.k}`,
        `${g.gflops.toFixed(0)} GFLOP/s`,
        `${g.ratio.toFixed(2)}x OpenBLAS sgemm`,
        '>= 1.0x',
      ]);
  }
  const moe = ran.has('cpu-moe') ? readJson('cpu-moe') : null;
  if (moe)
    for (const r of moe.rows)
      rows.push([
        `MoE ${r.phase} T=${r.T} (${r.touchedExperts.toFixed(0)} experts)`,
        `${r.tokensPerSecond.toFixed(1)} tok/s, ${r.gbps.toFixed(1)} GB/s, ${r.gflops.toFixed(0)} GFLOP/s`,
        r.phase === 'decode' ? `${pct(r.fracBandwidth)} of read bw` : `${pct(r.fracLinear)} of linear GEMM`,
        r.phase === 'decode' ? '>= 80%' : '',
      ]);
  const mla = ran.has('cpu-mla') ? readJson('cpu-mla') : null;
  if (mla)
    for (const r of mla.rows)
      rows.push([
        `MLA decode B=${r.batch} ctx=${r.context}`,
        `${r.gbps.toFixed(1)} GB/s, ${r.gflops.toFixed(0)} GFLOP/s`,
        `${pct(r.fracRoofline)} of ${r.bound} roofline`,
        '',
      ]);
  const model = ran.has('model') ? readJson('model') : null;
  if (model)
    for (const r of model.results) {
      rows.push([
        `${r.preset} pp${r.pp.tokens}`,
        `${r.pp.tokensPerSecond.mean.toFixed(1)} ± ${r.pp.tokensPerSecond.sd.toFixed(1)} tok/s`,
        `${pct(r.pp.fracGemm)} of linear GEMM rate`,
        '',
      ]);
      rows.push([
        `${r.preset} tg${r.tg.tokens}`,
        `${r.tg.tokensPerSecond.mean.toFixed(1)} ± ${r.tg.tokensPerSecond.sd.toFixed(1)} tok/s`,
        `${pct(r.tg.fracRoofline)} of weight-streaming roofline`,
        '>= 70%',
      ]);
      rows.push([
        `${r.preset} decode host share`,
        `${r.tg.issueMs.mean.toFixed(3)} of ${r.tg.stepMs.mean.toFixed(3)} ms`,
        pct(r.tg.hostFraction),
        '< 5%',
      ]);
      if (r.overlap && !r.overlap.error)
        rows.push([
          `${r.preset} ScMoE overlap`,
          `${r.overlap.overlappedRegionMs.toFixed(2)} ms region`,
          `${r.overlap.regionOverMax.toFixed(2)}x max(dense, MoE)`,
          '<= 1.1x',
        ]);
    }
  return rows;
}

async function main() {
  fs.mkdirSync(outDir, { recursive: true });
  if (!fs.existsSync(path.join(root, 'dist', 'index.js'))) {
    console.log('dist/ missing: compiling TypeScript (npx tsc -p tsconfig.json)');
    execSync('npx tsc -p tsconfig.json', { cwd: root, stdio: 'inherit' });
  }
  const t0 = Date.now();
  const ran = new Set(),
    report = [];
  for (const [name, script, extra] of BENCHES) {
    if (only && !only.includes(name)) continue;
    if (!fs.existsSync(path.join(here, script))) {
      console.log(`\n(skipping ${name}: bench/${script} not found)`);
      continue;
    }
    console.log(`\n===== ${name} =====`);
    const r = await run(script, [...extra, ...(quick && name !== 'cpu-linear' ? ['--quick'] : [])]);
    fs.writeFileSync(path.join(outDir, `${name}.txt`), r.text);
    report.push({ name, exitCode: r.code, seconds: r.seconds });
    if (r.code === 0) ran.add(name);
    else console.log(`!! ${name} exited with code ${r.code}`);
  }
  let commit = 'unknown';
  try {
    commit = execSync('git rev-parse --short HEAD', { cwd: root, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
    if (execSync('git status --porcelain', { cwd: root, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim())
      commit += '+dirty';
  } catch {}
  const rows = summary(ran);
  const info = {
    date: new Date().toISOString(),
    commit,
    cpu: os.cpus()[0]?.model ?? 'unknown',
    logicalCpus: os.cpus().length,
    loadavg: os.loadavg(),
    addon: process.env.LONGCAT_ADDON ?? '(default)',
    quick,
    benches: report,
    seconds: (Date.now() - t0) / 1000,
    summary: rows,
  };
  fs.writeFileSync(path.join(outDir, 'summary.json'), `${JSON.stringify(info, null, 2)}\n`);
  console.log(
    `\n===== summary (${info.date}, commit ${commit}, ${info.cpu}, ${info.logicalCpus} cpus, ${info.seconds.toFixed(0)} s) =====`,
  );
  console.log('| figure | absolute | ratio (roofline measured in the same run) | target |');
  console.log('| --- | --- | --- | --- |');
  for (const r of rows) console.log(`| ${r.join(' | ')} |`);
  console.log(report.map(b => `${b.name} ${b.seconds.toFixed(0)} s${b.exitCode ? ` (exit ${b.exitCode})` : ''}`).join(', '));
  if (report.some(b => b.exitCode !== 0)) process.exitCode = 1;
}

await main();
