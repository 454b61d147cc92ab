// CPU MoE benchmark: the grouped-expert op at LongCat-Flash expert shapes (H 6144, I 2048, bf16)
// against the machine's read bandwidth (decode: weights streamed once) and against the same GEMMs
// as plain linear calls (prefill). The in-wave schedules (LONGCAT_MOE_SCHED = auto | experts |
// linear, read by the kernel on every call) are interleaved iteration by iteration, so load from
// other processes hits them alike.
//   LONGCAT_ADDON=build-moe/Release/longcat.node node bench/cpu-moe.mjs [--quick] [--json]
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const require = createRequire(import.meta.url);
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const addonPath = process.env.LONGCAT_ADDON ? path.resolve(process.env.LONGCAT_ADDON) : path.join(root, 'build/Release/longcat.node');
const quick = process.argv.includes('--quick');
const H = 6144, I = 2048;

function now() {
  return Number(process.hrtime.bigint()) / 1e6;
}
function median(v) {
  const s = [...v].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : 0.5 * (s[s.length / 2 - 1] + s[s.length / 2]);
}

/** Random bf16 bits with exponent 2^-7..2^-4 (no inf / NaN). */
function bf16Weight(native, rows, cols, seed) {
  const n = rows * cols;
  const bits = new Uint16Array(n);
  let s = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0;
    bits[i] = (s & 0x807f) | ((120 + ((s >>> 8) & 3)) << 7);
  }
  return new native.Tensor('bf16', [rows, cols], 'cpu', bits);
}

function main() {
  const native = require(addonPath);
  const scheds = ['auto', 'experts', 'linear'];
  const out = [];
  const nRouted = quick ? 12 : 24;
  const gate = [], up = [], down = [];
  for (let e = 0; e < nRouted; e++) {
    gate.push(bf16Weight(native, I, H, 3 * e + 1));
    up.push(bf16Weight(native, I, H, 3 * e + 2));
    down.push(bf16Weight(native, H, I, 3 * e + 3));
  }
  const bytesPerExpert = 3 * I * H * 2;
  const f32 = (shape, fill) => new native.Tensor('f32', shape, 'cpu', new Float32Array(shape.reduce((a, b) => a * b, 1)).fill(fill));
  const bw0 = native.benchReadBandwidth(1 << 30, 5).gbps;
  // [label, T, k, FFN experts per token, iterations]
  const cases = [
    ['decode T=1, 12 of 12 slots FFN', 1, 12, 12, quick ? 5 : 10],
    ['decode T=1, 8 FFN + 4 zero', 1, 12, 8, quick ? 5 : 10],
    ['decode T=4, 8 FFN + 4 zero', 4, 12, 8, quick ? 3 : 6],
    ['prefill T=64, 12 FFN', 64, 12, 12, quick ? 2 : 3],
  ];
  for (const [label, T, k, nf, iters] of cases) {
    const u = f32([T, H], 0.01), o = f32([T, H], 0);
    const idx = new Int32Array(T * k), w = new Float32Array(T * k).fill(0.5);
    let rot = 0;
    const route = () => {
      // Each token: nf distinct FFN experts (rotating through all nRouted, so successive calls
      // read different weights), then zero experts.
      for (let t = 0; t < T; t++)
        for (let j = 0; j < k; j++) idx[t * k + j] = j < nf ? (rot + t * 5 + j) % nRouted : nRouted + j;
      rot += nf;
    };
    const it = new native.Tensor('int32', [T, k], 'cpu', idx), wt = new native.Tensor('f32', [T, k], 'cpu', w);
    const ms = Object.fromEntries(scheds.map((s) => [s, []]));
    let active = 0;
    for (let i = 0; i < iters + 1; i++)
      for (const sched of scheds) {
        process.env.LONGCAT_MOE_SCHED = sched;
        route();
        active = new Set(Array.from(idx).filter((e) => e < nRouted)).size;
        it.copyFromBytes(idx);
        native.synchronize('cpu');
        const t0 = now();
        native.moe(null, o, u, it, wt, nRouted, gate, up, down, null, null, null, nRouted + k);
        native.synchronize('cpu');
        if (i > 0) ms[sched].push(now() - t0);
      }
    delete process.env.LONGCAT_MOE_SCHED;
    const bytes = active * bytesPerExpert, flops = 2 * 3 * T * nf * H * I;
    for (const sched of scheds) {
      const m = median(ms[sched]);
      out.push({ label, sched, T, k, nf, activeExperts: active, medianMs: m, gbps: bytes / m / 1e6, gflops: flops / m / 1e6 });
    }
    for (const x of [u, o, it, wt]) x.dispose();
  }
  // Reference: the same expert GEMM shapes through plain linear (benchLinear, native timing),
  // rotating over the experts' gate weights so they are not timed from cache.
  const lin = [];
  for (const rows of [1, 32]) {
    const x = f32([rows, H], 0.01), y = f32([rows, I], 0);
    const r = native.benchLinear(y, x, gate, null, 2, quick ? 6 : 12);
    lin.push({ rows, medianMs: r.medianMs, gbps: (I * H * 2) / r.medianMs / 1e6, gflops: (2 * rows * I * H) / r.medianMs / 1e6 });
    x.dispose();
    y.dispose();
  }
  const bw1 = native.benchReadBandwidth(1 << 30, 5).gbps;
  const res = { threads: native.threads(), isa: native.cpuFeatures().isa, readGbps: [bw0, bw1], cases: out, linear: lin };
  if (process.argv.includes('--json')) {
    console.log(JSON.stringify(res, null, 2));
    return;
  }
  const bw = Math.max(bw0, bw1);
  console.log(`threads ${res.threads}, isa ${res.isa}, read bandwidth ${bw0.toFixed(1)} / ${bw1.toFixed(1)} GB/s (before / after; % below uses the higher)`);
  console.log('case | sched | ms | weight GB/s | % of read bw | GFLOP/s');
  for (const c of out)
    console.log(`${c.label} | ${c.sched} | ${c.medianMs.toFixed(2)} | ${c.gbps.toFixed(1)} | ${((100 * c.gbps) / bw).toFixed(0)}% | ${c.gflops.toFixed(1)}`);
  for (const l of lin)
    console.log(`linear [${l.rows}, ${H}] x [${I}, ${H}]^T bf16 | ${l.medianMs.toFixed(2)} ms | ${l.gbps.toFixed(1)} GB/s | ${l.gflops.toFixed(1)} GFLOP/s`);
}

main();
