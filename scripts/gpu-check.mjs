// GPU parity check and quick timing of every op that has a CUDA kernel, against its CPU twin
// (the oracle). Needs only: node, dist/ and a CUDA build of longcat.node (LONGCAT_ADDON).
// Prints a table; exits 1 if any case fails, 2 if no GPU is usable.
// Only the core modules: a GPU machine may have dist/ and the addon but no node_modules.
import { native } from '../dist/native.js';
import { Event, Stream } from '../dist/device.js';
import { tensor, toArray, empty, numel } from '../dist/tensor.js';
import { roundBf16 } from '../dist/numeric.js';

const status = native.cudaStatus();
if (!status.available) {
  console.error(`gpu-check: CUDA unavailable: ${status.reason || 'not compiled in'}`);
  process.exit(2);
}
const dev = 'cuda:0';
const gpu = native.devices().find((d) => d.id === dev);
console.log(`gpu-check on ${gpu.name} (sm_${gpu.computeCapability.replace('.', '')}, ${gpu.multiprocessors} SMs), addon ${JSON.stringify(native.buildInfo())}`);

let seed = 12345;
const rand = () => ((seed = (seed * 1103515245 + 12345) >>> 0) / 4294967296) * 2 - 1;
const randArr = (n, s = 1) => Float32Array.from({ length: n }, () => rand() * s);

function maxRelErr(got, want) {
  let worst = 0, scale = 1e-6;
  for (let i = 0; i < want.length; i++) scale = Math.max(scale, Math.abs(want[i]));
  for (let i = 0; i < want.length; i++) {
    const e = Math.abs(got[i] - want[i]);
    worst = Number.isNaN(e) ? Infinity : Math.max(worst, e);
  }
  return worst / scale;
}

// Times `fn` on the GPU stream with CUDA events: median of `iters` runs after warmup.
function timeMs(stream, fn, iters = 20) {
  for (let i = 0; i < 3; i++) fn();
  const times = [];
  for (let i = 0; i < iters; i++) {
    const a = new Event(dev), b = new Event(dev);
    a.record(stream);
    fn();
    b.record(stream);
    b.synchronize();
    times.push(a.elapsedMs(b));
  }
  times.sort((x, y) => x - y);
  return times[times.length >> 1];
}

const cases = [];
for (const [t, k, n] of [[1, 129, 67], [3, 1000, 130], [17, 127, 333], [129, 515, 257], [8, 6144, 4096], [512, 6144, 4096]]) {
  for (const wdt of ['f32', 'bf16', 'fp8_e4m3', 'int8']) {
    cases.push({
      name: `linear t=${t} k=${k} n=${n} w=${wdt}`,
      make(device) {
        const x = tensor(randArr(t * k), [t, k], { device });
        const w = wdt === 'int8' ? tensor(Array.from({ length: n * k }, () => Math.round(rand() * 127)), [n, k], { dtype: 'int8', device })
          : tensor(randArr(n * k, 0.1), [n, k], { dtype: wdt, device });
        const scale = wdt === 'fp8_e4m3' ? tensor(randArr(Math.ceil(n / 128) * Math.ceil(k / 128)).map(Math.abs), [Math.ceil(n / 128), Math.ceil(k / 128)], { device })
          : wdt === 'int8' ? tensor(randArr(n).map((v) => Math.abs(v) * 0.01), [n], { device }) : null;
        const y = empty([t, n], { device });
        return { out: y, run: (s) => native.linear(s, y, x, w, scale), bytes: w.nbytes, flops: 2 * t * n * k, tol: 1e-4 };
      },
    });
  }
}
for (const [rows, dim] of [[1, 7], [3, 129], [17, 1000], [64, 6144]]) {
  cases.push({
    name: `rmsnorm rows=${rows} dim=${dim} (+add, bf16 w)`,
    make(device) {
      const x = tensor(randArr(rows * dim), [rows, dim], { device });
      const a = tensor(randArr(rows * dim), [rows, dim], { device });
      const w = tensor(randArr(dim), [dim], { dtype: 'bf16', device });
      const y = empty([rows, dim], { device });
      const h = empty([rows, dim], { device });
      return { out: y, run: (s) => native.rmsnorm(s, y, x, w, 1e-5, a, h), bytes: 3 * 4 * rows * dim, flops: 0, tol: 1e-5 };
    },
  });
}

let failed = 0;
const rows = [];
const stream = new Stream(dev);
for (const c of cases) {
  const s0 = seed;
  const cpu = c.make('cpu');
  cpu.run(null);
  const want = toArray(cpu.out);
  seed = s0;  // identical inputs on the GPU
  const g = c.make(dev);
  let err, ms;
  try {
    g.run(stream);
    stream.synchronize();
    err = maxRelErr(toArray(g.out), want);
    ms = timeMs(stream, () => g.run(stream));
  } catch (e) {
    err = Infinity;
    ms = NaN;
    console.error(`${c.name}: ${e.message}`);
  }
  const ok = err <= c.tol;
  if (!ok) failed++;
  rows.push({ case: c.name, ok: ok ? 'ok' : 'FAIL', maxRelErr: err.toExponential(2), us: (ms * 1000).toFixed(1),
    'GB/s': c.bytes ? (c.bytes / ms / 1e6).toFixed(0) : '', 'TFLOP/s': c.flops ? (c.flops / ms / 1e9).toFixed(2) : '' });
}
console.table(rows);
console.log(`${rows.length - failed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
