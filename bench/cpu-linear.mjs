#!/usr/bin/env node
// CPU linear-layer benchmarks (run: node bench/cpu-linear.mjs; LONGCAT_ADDON=path picks the addon).
//   1. read bandwidth: every pool thread summing a buffer >= 4x the LLC (median of passes);
//   2. GEMV (decode, t = 1 and 4) on >= 64 MiB bf16 / int8 / fp8 / int4 weights: GB/s of weight read and
//      the fraction of (1) (target >= 80%);
//   3. GEMM (prefill, t = 128 and 512, n = k = 2048) with bf16 weights: GFLOP/s against OpenBLAS
//      cblas_sgemm on the same shapes in the same run (target >= 1.0x);
//   4. prefill GEMMs per weight format at LongCat-Flash-Chat shapes (o_proj [6144, 8192], q_a
//      [1536, 6144] at t = 512 and 1024; an expert's gate [2048, 6144] at 16 and 64 rows, the rows
//      per expert of a 1,024 / 4,096-token prefill over 512 experts, weights streamed): tokens/s of
//      fp8 / int8 / int4 as a ratio to bf16, formats interleaved in each of 3 rounds, median of the
//      per-round ratios (target >= 0.9 at the default precision). --prefill runs only this part.
// Kernels are timed natively (benchLinear: steady_clock, warm-up, median), rotating weight copies
// so that a weight smaller than 4x the LLC is never timed from cache. Prints a table and writes
// bench/out/cpu-linear.json.
//
// --gemv: only the GEMV table: bf16 / int8 / fp8 / int4 (int8 activations) / int4 'highest' at t = 1,
// 2, 4 with 1 and 2 pool threads on every ISA the CPU has, each thread count between two read probes
// with the same threads (--formats=, --t=, --threads=, --isa= pick subsets). Writes bench/out/cpu-gemv.json.
//
// --int4: only the int4 GEMV's share of the read bandwidth (issue 19's >= 90% target), with 1 and
// 2 pool threads, on every ISA the CPU has, int8 activations (precision 'bf16', linear_i8act.h) and
// fp32 ('highest'): t = 1 on 32768x4096 weights (2 copies rotated), in rounds (--rounds=7): each
// GEMV measurement right after two read probes with the same threads (benchReadBandwidth's fresh
// 1 GiB buffer; benchReadTensors over the GEMV's own weight copies, codes and scales: exactly the
// bytes and pages it streams), the ratios GEMV / probe taken per round (median, min and max
// reported), so a host swing moves both sides of each ratio
// (--isa=, --precision=, --threads= pick subsets). Writes bench/out/cpu-int4-gemv.json.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { rng } from '../dist/check/rng.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(import.meta.url);
const native = process.env.LONGCAT_ADDON ? require(path.resolve(process.env.LONGCAT_ADDON)) : require('node-gyp-build')(root);
native.setErrorFactory((code, message) => Object.assign(new Error(message), { code }));
// the seeded RNG of the tests and the op-case table (lib/check/rng.ts; dist/check/ is built by npm run build:ts)
const random = rng(1);

const outDir = path.join(root, 'bench', 'out');
fs.mkdirSync(outDir, { recursive: true });
const threads = native.threads();

function llcBytes() {
  try {
    const dir = '/sys/devices/system/cpu/cpu0/cache';
    let best = 0;
    for (const idx of fs.readdirSync(dir).filter(d => d.startsWith('index'))) {
      const s = fs.readFileSync(path.join(dir, idx, 'size'), 'utf8').trim();
      const v = parseInt(s, 10) * (s.endsWith('M') ? 1 << 20 : s.endsWith('K') ? 1 << 10 : 1);
      best = Math.max(best, v);
    }
    if (best > 0) return best;
  } catch {}
  return 32 << 20;
}

function randomBytes(n) {
  const b = new Uint8Array(n);
  const words = new Uint32Array(b.buffer, 0, n >> 2);
  for (let i = 0; i < words.length; i++) words[i] = random.uint32();
  for (let i = words.length * 4; i < n; i++) b[i] = random.uint32() & 0xff;
  return b;
}

/** A weight with realistic, never-zero contents (no NaN / Inf / subnormal codes). */
function makeWeight(dtype, n, k) {
  if (dtype === 'bf16') {
    const u = new Uint16Array(randomBytes(n * k * 2).buffer);
    for (let i = 0; i < u.length; i++) u[i] = (u[i] & 0x807f) | 0x3c00; // +-[2^-7, 2^-6)
    return { w: new native.Tensor('bf16', [n, k], 'cpu', u), scale: null };
  }
  if (dtype === 'int4') {
    // the int4 format (native/cpu/linear.h): random codes, groups of 128, bf16 scales 2^-10 (zero point 8)
    const G = Math.ceil(k / 128);
    return {
      w: new native.Tensor('int8', [n, G, 64], 'cpu', randomBytes(n * G * 64)),
      scale: new native.Tensor('bf16', [n, G], 'cpu', new Uint16Array(n * G).fill(0x3a80)),
    };
  }
  if (dtype === 'int8') {
    const s = new Float32Array(n).fill(0.01);
    return { w: new native.Tensor('int8', [n, k], 'cpu', randomBytes(n * k)), scale: new native.Tensor('f32', [n], 'cpu', s) };
  }
  const b = randomBytes(n * k);
  for (let i = 0; i < b.length; i++) if ((b[i] & 0x7f) === 0x7f) b[i] ^= 1; // no NaN codes
  const nb = Math.ceil(n / 128),
    kb = Math.ceil(k / 128);
  return {
    w: new native.Tensor('fp8_e4m3', [n, k], 'cpu', b),
    scale: new native.Tensor('f32', [nb, kb], 'cpu', new Float32Array(nb * kb).fill(1e-3)),
  };
}

function makeX(t, k) {
  return new native.Tensor('f32', [t, k], 'cpu', random.array(t * k, -0.5, 0.5));
}

// bytes per weight read, scales included where they are more than 1% (int4: bf16 per 128 weights)
const esize = { bf16: 2, int8: 1, fp8_e4m3: 1, int4: 0.5 + 2 / 128 };
const llc = llcBytes();

/** Times linear on `copies` weight copies (default: enough to cover 4x the LLC). */
function timeLinear(dtype, t, n, k, warmup, iters, copies = 0) {
  const bytes = n * k * esize[dtype];
  copies ||= Math.max(1, Math.ceil((4 * llc) / bytes));
  const ws = Array.from({ length: copies }, () => makeWeight(dtype, n, k));
  const x = makeX(t, k),
    y = new native.Tensor('f32', [t, n]);
  const r = native.benchLinear(
    y,
    x,
    ws.map(w => w.w),
    ws[0].scale ? ws.map(w => w.scale) : null,
    warmup,
    iters,
  );
  for (const w of ws) {
    w.w.dispose();
    w.scale?.dispose();
  }
  x.dispose();
  y.dispose();
  return { ...r, copies, bytes };
}

// ---- OpenBLAS reference ------------------------------------------------------------------------
function sgemmRef() {
  const src = path.join(root, 'bench', 'native', 'sgemm_ref.c');
  const exe = path.join(outDir, 'sgemm_ref');
  const compile = () => execFileSync('gcc', ['-O2', src, '-o', exe, '-lopenblas'], { stdio: 'pipe' });
  try {
    compile();
  } catch {
    console.log('OpenBLAS missing: apt-get install -y libopenblas-dev');
    try {
      execFileSync('apt-get', ['install', '-y', 'libopenblas-dev'], { stdio: 'ignore' });
    } catch {
      execFileSync('apt-get', ['update'], { stdio: 'ignore' });
      execFileSync('apt-get', ['install', '-y', 'libopenblas-dev'], { stdio: 'ignore' });
    }
    compile();
  }
  // This environment pins OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE for old numpy builds; they would
  // slow a current OpenBLAS down, so the reference runs without them (its detected core is reported).
  /** @type {NodeJS.ProcessEnv} */
  const env = { ...process.env, OPENBLAS_NUM_THREADS: String(threads) };
  delete env.OPENBLAS_CORETYPE;
  delete env.OPENBLAS_L2_SIZE;
  return (m, n, k, iters) => JSON.parse(execFileSync(exe, [m, n, k, iters].map(String), { env, encoding: 'utf8' }));
}

// ---- run -----------------------------------------------------------------------------------------
const f = native.cpuFeatures();
const conditions = {
  date: new Date().toISOString(),
  cpu: os.cpus()[0]?.model ?? 'unknown',
  logicalCpus: os.cpus().length,
  threads,
  isa: f.isa,
  avx512bf16: f.avx512bf16,
  llcBytes: llc,
  loadavgBefore: os.loadavg(),
};

const prefillOnly = process.argv.includes('--prefill');

function median(v) {
  const s = [...v].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

/** 4. Prefill GEMMs per weight format, ratios to bf16 within each round (formats interleaved). */
function prefillByFormat() {
  const formats = ['bf16', 'fp8_e4m3', 'int8', 'int4'];
  const rounds = 3;
  const rows = [];
  /** @type {[string, number, number, number, boolean][]} */
  const shapes = [
    ['o_proj', 6144, 8192, 512, false],
    ['o_proj', 6144, 8192, 1024, false],
    ['q_a', 1536, 6144, 512, false],
    ['q_a', 1536, 6144, 1024, false],
    ['expert gate', 2048, 6144, 16, true],
    ['expert gate', 2048, 6144, 64, true],
  ];
  for (const [what, n, k, t, streamed] of shapes) {
    const ms = Object.fromEntries(formats.map(d => [d, []]));
    for (let round = 0; round < rounds; round++)
      for (let i = 0; i < formats.length; i++) {
        const d = formats[(i + round) % formats.length]; // a different order each round
        ms[d].push(timeLinear(d, t, n, k, 1, streamed ? 5 : 2, streamed ? 0 : 1).minMs);
      }
    for (const d of formats) {
      const ratios = ms[d].map((v, r) => ms.bf16[r] / v);
      const m = median(ms[d]);
      rows.push({ what, n, k, t, weight: d, ms: m, tokensPerS: (t / m) * 1e3, ratioToBf16: median(ratios), ratios });
    }
  }
  return rows;
}
function printPrefill(rows) {
  console.log(
    '\nGEMM (prefill) per weight format, default precision (bf16): x/y f32; tokens/s, ratio to bf16 (median of the per-round ratios)',
  );
  console.table(
    rows.map(r => ({
      linear: r.what,
      shape: `${r.n}x${r.k}`,
      t: r.t,
      weight: r.weight,
      ms: +r.ms.toFixed(2),
      'tokens/s': +r.tokensPerS.toFixed(0),
      'x bf16': +r.ratioToBf16.toFixed(3),
      rounds: r.ratios.map(v => v.toFixed(2)).join(' '),
    })),
  );
}
function printLoad() {
  console.log(
    `load average before/after: ${conditions.loadavgBefore.map(v => v.toFixed(2)).join(' ')} / ${conditions.loadavgAfter.map(v => v.toFixed(2)).join(' ')}`,
  );
}
if (prefillOnly) {
  const prefill = prefillByFormat();
  conditions.loadavgAfter = os.loadavg();
  printPrefill(prefill);
  printLoad();
  const out = path.join(outDir, 'cpu-linear-prefill.json');
  fs.writeFileSync(out, JSON.stringify({ conditions, prefill }, null, 2));
  console.log(`wrote ${path.relative(root, out)}`);
  process.exit(0);
}

const bwBytes = Math.max(1 << 30, 4 * llc);
if (process.argv.includes('--int4')) {
  int4Bandwidth();
  process.exit(0);
}
if (process.argv.includes('--gemv')) {
  gemvTable();
  process.exit(0);
}
const bw = native.benchReadBandwidth(bwBytes, 7);
console.log(
  `read bandwidth: ${bw.gbps.toFixed(1)} GB/s (median of 7 passes over ${(bwBytes / 2 ** 20).toFixed(0)} MiB, ${threads} threads)`,
);

const gemv = [];
for (const [dtype, n, k, precision] of [
  ['bf16', 8192, 4096],
  ['int8', 16384, 4096],
  ['fp8_e4m3', 16384, 4096],
  ['int4', 32768, 4096],
  ['int4', 32768, 4096, 'highest'],
]) {
  // int4 at the default precision: int8 activations on AVX512-VNNI; 'highest': the fp32 decode
  const was = precision ? native.setMatmulPrecision(precision) : null;
  for (const t of [1, 4]) {
    const r = timeLinear(dtype, t, n, k, 3, 21);
    const gbps = r.bytes / r.medianMs / 1e6;
    gemv.push({
      dtype: precision ? `${dtype} ${precision}` : dtype,
      t,
      n,
      k,
      weightMiB: r.bytes / 2 ** 20,
      copies: r.copies,
      medianMs: r.medianMs,
      minMs: r.minMs,
      gbps,
      fractionOfReadBw: gbps / bw.gbps,
    });
  }
  if (was) native.setMatmulPrecision(was);
}

// The error int8 activations add to the int4 GEMV (default precision) against every product in
// fp32 ('highest'): max |difference| / max |y| over 4096 outputs, x uniform in [-0.5, 0.5).
const int4Error = (() => {
  const w = makeWeight('int4', 4096, 4096),
    x = makeX(4, 4096);
  const run = p => {
    const was = native.setMatmulPrecision(p);
    const y = new native.Tensor('f32', [4, 4096]);
    native.benchLinear(y, x, [w.w], [w.scale], 0, 1);
    native.setMatmulPrecision(was);
    const b = y.toBytes();
    const v = new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.length));
    y.dispose();
    return v;
  };
  const a = run('bf16'),
    b = run('highest');
  let d = 0,
    m = 0;
  for (let i = 0; i < a.length; i++) {
    d = Math.max(d, Math.abs(a[i] - b[i]));
    m = Math.max(m, Math.abs(b[i]));
  }
  w.w.dispose();
  w.scale.dispose();
  x.dispose();
  return { int8Activations: f.avx512vnni, maxAbsDiffOverMaxAbs: d / m };
})();
console.log(
  `int4 GEMV, int8 activations (VNNI: ${int4Error.int8Activations}) vs fp32: max |diff| / max |y| = ${int4Error.maxAbsDiffOverMaxAbs.toExponential(2)}`,
);

const ref = sgemmRef();
const gemm = [];
for (const t of [128, 512]) {
  const [n, k] = [2048, 2048];
  const r = timeLinear('bf16', t, n, k, 3, 15);
  const gflops = (2 * t * n * k) / r.medianMs / 1e6;
  const blas = ref(t, n, k, 15);
  gemm.push({
    weight: 'bf16',
    t,
    n,
    k,
    medianMs: r.medianMs,
    gflops,
    openblasGflops: blas.gflops,
    openblasCore: blas.core,
    openblasThreads: blas.threads,
    ratio: gflops / blas.gflops,
  });
}
const prefill = prefillByFormat();
conditions.loadavgAfter = os.loadavg();

console.log('\nGEMV (decode): x f32 [t, k], y f32; weight bytes / median time');
console.table(
  gemv.map(g => ({
    weight: g.dtype,
    t: g.t,
    shape: `${g.n}x${g.k}`,
    MiB: g.weightMiB,
    ms: +g.medianMs.toFixed(3),
    'GB/s': +g.gbps.toFixed(1),
    '% of read bw': +(100 * g.fractionOfReadBw).toFixed(0),
  })),
);
console.log('GEMM (prefill): bf16 weight, x/y f32; 2*t*n*k / median time vs OpenBLAS sgemm (same threads)');
console.table(
  gemm.map(g => ({
    t: g.t,
    shape: `${g.n}x${g.k}`,
    'GFLOP/s': +g.gflops.toFixed(1),
    'OpenBLAS GFLOP/s': +g.openblasGflops.toFixed(1),
    ratio: +g.ratio.toFixed(2),
    'OpenBLAS core': g.openblasCore,
  })),
);
printPrefill(prefill);
printLoad();

/** The value of `--name=a,b` as a list (or `def`). */
function listArg(name, def) {
  const a = process.argv.find(v => v.startsWith(`--${name}=`));
  return a ? a.slice(name.length + 3).split(',') : def;
}

/** --gemv: the GEMV table only (every weight format, t, pool threads and ISA), each thread count
 *  between two read probes with the same threads; the fraction is of the higher probe. */
function gemvTable() {
  const formats = listArg('formats', ['bf16', 'int8', 'fp8_e4m3', 'int4', 'int4:highest']);
  const ts = listArg('t', ['1', '2', '4']).map(Number);
  const ths = listArg('threads', ['1', '2']).map(Number);
  const shapes = { bf16: [8192, 4096], int8: [16384, 4096], fp8_e4m3: [16384, 4096], int4: [32768, 4096] };
  const isas = listArg('isa', ['avx512', 'avx2']).filter(i => {
    const was = native.cpuFeatures().isa;
    const got = native.setIsa(i);
    native.setIsa(was);
    return got === i;
  });
  const startIsa = native.cpuFeatures().isa,
    startThreads = native.threads(),
    rows = [];
  // the weights are made once per format (copies over 4x the LLC) and reused by every run
  const made = {};
  for (const fm of formats) {
    const dtype = fm.split(':')[0];
    if (made[dtype]) continue;
    const [n, k] = shapes[dtype];
    const bytes = n * k * esize[dtype];
    const copies = Math.max(2, Math.ceil((4 * llc) / bytes));
    made[dtype] = { n, k, bytes, ws: Array.from({ length: copies }, () => makeWeight(dtype, n, k)) };
  }
  for (const th of ths) {
    native.setThreads(th);
    const before = native.benchReadBandwidth(bwBytes, 5).gbps;
    const runs = [];
    for (const isa of isas) {
      native.setIsa(isa);
      for (const fm of formats) {
        const [dtype, precision = 'bf16'] = fm.split(':');
        const m = made[dtype];
        const was = native.setMatmulPrecision(precision);
        for (const t of ts) {
          const x = makeX(t, m.k),
            y = new native.Tensor('f32', [t, m.n]);
          const r = native.benchLinear(
            y,
            x,
            m.ws.map(w => w.w),
            m.ws[0].scale ? m.ws.map(w => w.scale) : null,
            3,
            21,
          );
          x.dispose();
          y.dispose();
          runs.push({ isa, weight: fm, t, shape: `${m.n}x${m.k}`, medianMs: r.medianMs, gbps: m.bytes / r.medianMs / 1e6 });
        }
        native.setMatmulPrecision(was);
      }
    }
    native.setIsa(startIsa);
    const after = native.benchReadBandwidth(bwBytes, 5).gbps,
      probe = Math.max(before, after);
    for (const r of runs) rows.push({ threads: th, ...r, probeBefore: before, probeAfter: after, fraction: r.gbps / probe });
  }
  native.setThreads(startThreads);
  for (const m of Object.values(made))
    for (const w of m.ws) {
      w.w.dispose();
      w.scale?.dispose();
    }
  conditions.loadavgAfter = os.loadavg();
  console.log('GEMV (decode): x f32 [t, k], y f32; weight bytes (int4: with its bf16 scales) / median time');
  console.table(
    rows.map(r => ({
      threads: r.threads,
      isa: r.isa,
      weight: r.weight,
      t: r.t,
      shape: r.shape,
      'GB/s': +r.gbps.toFixed(1),
      'probe before/after': `${r.probeBefore.toFixed(1)} / ${r.probeAfter.toFixed(1)}`,
      '% of probe': +(100 * r.fraction).toFixed(0),
    })),
  );
  printLoad();
  const out = path.join(outDir, 'cpu-gemv.json');
  fs.writeFileSync(out, JSON.stringify({ conditions, rows }, null, 2));
  console.log(`wrote ${path.relative(root, out)}`);
}

function int4Bandwidth() {
  const [n, k] = [32768, 4096];
  const isas = listArg('isa', ['avx512', 'avx2']).filter(i => {
    const was = native.cpuFeatures().isa;
    const got = native.setIsa(i);
    native.setIsa(was);
    return got === i;
  });
  const precisions = listArg('precision', ['bf16', 'highest']);
  const ths = listArg('threads', ['1', '2']).map(Number);
  const rounds = Number(listArg('rounds', ['7'])[0]);
  const startIsa = native.cpuFeatures().isa,
    startThreads = native.threads(),
    rows = [];
  // the weights are made once (copies over 4x the LLC, at least 2) and rotated by every GEMV call
  const bytes = n * k * esize.int4;
  const ws = Array.from({ length: Math.max(2, Math.ceil((4 * llc) / bytes)) }, () => makeWeight('int4', n, k));
  const weightTensors = ws.flatMap(w => [w.w, w.scale]);
  const x = makeX(1, k),
    y = new native.Tensor('f32', [1, n]);
  const configs = isas.flatMap(isa => precisions.map(precision => ({ isa, precision })));
  for (const th of ths) {
    native.setThreads(th);
    const got = configs.map(() => ({ probe: [], own: [], gbps: [] }));
    for (let round = 0; round < rounds; round++)
      for (let j = 0; j < configs.length; j++) {
        const c = (j + round) % configs.length; // a different order each round
        const { isa, precision } = configs[c];
        // the probes (same threads) right before each GEMV measurement, so a host swing moves both:
        // a fresh 1 GiB buffer, then the GEMV's own weight copies (codes and scales, the same pages)
        // (both with the machine's widest loads)
        const probe = native.benchReadBandwidth(bwBytes, 3).gbps;
        // (an older addon, e.g. a base build for an A/B, has no benchReadTensors: NaN)
        const own = native.benchReadTensors ? native.benchReadTensors(weightTensors, 3).gbps : Number.NaN;
        native.setIsa(isa);
        const was = native.setMatmulPrecision(precision);
        const r = native.benchLinear(
          y,
          x,
          ws.map(w => w.w),
          ws.map(w => w.scale),
          2,
          precision === 'highest' ? 5 : 9,
        );
        native.setMatmulPrecision(was);
        native.setIsa(startIsa);
        got[c].probe.push(probe);
        got[c].own.push(own);
        got[c].gbps.push(bytes / r.medianMs / 1e6);
      }
    configs.forEach(({ isa, precision }, c) => {
      const { probe, own, gbps } = got[c];
      const ratios = gbps.map((g, i) => g / probe[i]);
      const ownRatios = gbps.map((g, i) => g / own[i]);
      const int8 = precision !== 'highest' && (isa === 'avx2' || f.avx512vnni);
      rows.push({
        threads: th,
        isa,
        activations: int8 ? 'int8' : 'f32',
        gbps: median(gbps),
        probe: median(probe),
        ratio: median(ratios),
        minRatio: Math.min(...ratios),
        maxRatio: Math.max(...ratios),
        own: median(own),
        ownRatio: median(ownRatios),
        minOwnRatio: Math.min(...ownRatios),
        maxOwnRatio: Math.max(...ownRatios),
        rounds: { gbps, probe, own, ratios, ownRatios },
      });
    });
  }
  native.setThreads(startThreads);
  for (const w of ws) {
    w.w.dispose();
    w.scale.dispose();
  }
  x.dispose();
  y.dispose();
  conditions.loadavgAfter = os.loadavg();
  console.log(
    `int4 GEMV t = 1, ${n}x${k} (groups of 128, bf16 scales: ${esize.int4} B per weight), x f32; ${rounds} rounds, ` +
      "each two read probes (same threads: a fresh 1 GiB buffer, then the GEMV's own weight copies) then the GEMV; " +
      'ratio = GEMV / probe per round, median (min-max) over the rounds',
  );
  const mm = (m, lo, hi) => `${m.toFixed(3)} (${lo.toFixed(2)}-${hi.toFixed(2)})`;
  console.table(
    rows.map(r => ({
      threads: r.threads,
      isa: r.isa,
      x: r.activations,
      'GB/s': +r.gbps.toFixed(1),
      '1 GiB probe': +r.probe.toFixed(1),
      'own-weights probe': +r.own.toFixed(1),
      'ratio to 1 GiB': mm(r.ratio, r.minRatio, r.maxRatio),
      'ratio to own weights': mm(r.ownRatio, r.minOwnRatio, r.maxOwnRatio),
    })),
  );
  printLoad();
  const out = path.join(outDir, 'cpu-int4-gemv.json');
  fs.writeFileSync(out, JSON.stringify({ conditions, shape: [n, k], rounds, rows }, null, 2));
  console.log(`wrote ${path.relative(root, out)}`);
}

const out = path.join(outDir, 'cpu-linear.json');
fs.writeFileSync(
  out,
  JSON.stringify(
    { conditions, readBandwidth: { gbps: bw.gbps, samples: bw.samples, bytes: bwBytes }, gemv, int4Error, gemm, prefill },
    null,
    2,
  ),
);
console.log(`wrote ${path.relative(root, out)}`);
