// Child process of test/cuda-targets.test.ts: one linear on the emulated CUDA device whose compute
// capability and built archs the parent set (LONGCAT_EMU_CC / LONGCAT_EMU_ARCHS are read once per
// process), against the CPU. Prints one JSON line: { err, tol } or { code, message }.
//   node test/targets/linear-on-target.mjs wgmma
//   node test/targets/linear-on-target.mjs fp8 fp8|bf16   (the CPU reference's precision: what the
//                                                         CUDA path should do on this target)
import { native } from '../../dist/native.js';
import { Stream } from '../../dist/device.js';
import { tensor, toArray, empty } from '../../dist/tensor.js';

const which = process.argv[2];
let seed = 99;
const rand = () => {
  seed = (seed * 1103515245 + 12345) >>> 0;
  return (seed / 4294967296) * 2 - 1;
};
const randArr = (n, s = 1) => Float32Array.from({ length: n }, () => rand() * s);

// A [t, k] x [n, k]^T linear on `device`: bf16 x bf16 with the wgmma GEMM asked for, or an fp8
// weight at precision 'fp8' (e4m3 activations where the kernel image has e4m3 mma).
function run(device, inputs, precision) {
  const [x, w, scale] = inputs.map(([v, shape, dtype]) => tensor(v, shape, { dtype, device }));
  const y = empty([x.shape[0], w.shape[0]], { device });
  const before = native.setMatmulPrecision(precision);
  try {
    native.linear(device === 'cpu' ? null : new Stream(device), y, x, w, scale ?? null);
    return toArray(y);
  } finally {
    native.setMatmulPrecision(before);
  }
}

try {
  const [t, k, n] = [37, 136, 45];
  let inputs, precision, cpuPrecision, tol;
  if (which === 'wgmma') {
    native.setCudaGemm('wgmma');
    inputs = [
      [randArr(t * k), [t, k], 'bf16'],
      [randArr(n * k), [n, k], 'bf16'],
    ];
    precision = cpuPrecision = 'bf16';
    tol = 5e-3;
  } else {
    const kb = Math.ceil(k / 128),
      nb = Math.ceil(n / 128);
    inputs = [
      [randArr(t * k), [t, k], 'f32'],
      [randArr(n * k, 2), [n, k], 'fp8_e4m3'],
      [randArr(nb * kb).map(Math.abs), [nb, kb], 'f32'],
    ];
    precision = 'fp8';
    cpuPrecision = process.argv[3];
    tol = 2e-2; // an activation may round to a neighbouring e4m3 code (lib/check/op-cases.ts)
  }
  const want = run('cpu', inputs, cpuPrecision),
    got = run('cuda:0', inputs, precision);
  let worst = 0,
    scale = 1e-6;
  for (let i = 0; i < want.length; i++) scale = Math.max(scale, Math.abs(want[i]));
  for (let i = 0; i < want.length; i++) {
    const e = Math.abs(got[i] - want[i]);
    worst = Number.isNaN(e) ? Infinity : Math.max(worst, e);
  }
  console.log(JSON.stringify({ err: worst / scale, tol }));
} catch (e) {
  console.log(JSON.stringify({ code: e.code ?? 'none', message: String(e.message) }));
}
