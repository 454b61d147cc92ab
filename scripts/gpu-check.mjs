// GPU parity check and quick timing of every op that has a CUDA kernel, against its CPU twin
// (the oracle). Needs only: node, dist/ and a CUDA build of longcat.node (LONGCAT_ADDON).
// Prints a table; exits 1 if any case fails, 2 if no GPU is usable.
import { native } from '../dist/native.js';
import { Stream } from '../dist/device.js';
import { cases, checkCase, dev, timeMs } from './gpu-cases.mjs';
import { modelChecks } from './gpu-model-cases.mjs';

const status = native.cudaStatus();
if (!status.available) {
  console.error(`gpu-check: CUDA unavailable: ${status.reason || 'not compiled in'}`);
  process.exit(2);
}
const gpu = native.devices().find((d) => d.id === dev);
console.log(`gpu-check on ${gpu.name} (sm_${gpu.computeCapability.replace('.', '')}, ${gpu.multiprocessors} SMs), addon ${JSON.stringify(native.buildInfo())}`);

let failed = 0;
const rows = [];
const stream = new Stream(dev);
for (const c of cases) {
  let err = Infinity, ok = false, ms = NaN, bytes = 0, flops = 0;
  try {
    const r = checkCase(c, stream);
    ({ err, ok } = r);
    ({ bytes = 0, flops = 0 } = r.gpu);
    ms = timeMs(stream, () => r.gpu.run(stream));
  } catch (e) {
    ok = false;
    console.error(`${c.name}: ${e.message}`);
  }
  if (!ok) failed++;
  rows.push({ case: c.name, ok: ok ? 'ok' : 'FAIL', maxRelErr: err.toExponential(2), us: (ms * 1000).toFixed(1),
    'GB/s': bytes ? (bytes / ms / 1e6).toFixed(0) : '', 'TFLOP/s': flops ? (flops / ms / 1e9).toFixed(2) : '' });
}
console.table(rows);
const opRows = rows.length;
console.log(`ops: ${opRows - failed} passed, ${failed} failed`);

// The whole model on the GPU against the CPU (tiny, tiny fp8, small checkpoints).
for (const precision of ['highest', 'bf16']) {
  try {
    const checks = await modelChecks({ device: dev, precision });
    console.table(checks.map((c) => ({ check: c.name, ok: c.ok ? 'ok' : 'FAIL', err: c.err.toExponential(2), tol: c.tol })));
    for (const c of checks) {
      rows.push(c);
      if (!c.ok) failed++;
    }
  } catch (e) {
    failed++;
    console.error(`model checks (${precision}): ${e.stack || e.message}`);
  }
}
console.log(`${rows.length - failed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
