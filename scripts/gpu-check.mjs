// GPU parity check and quick timing of every op that has a CUDA kernel, against its CPU twin
// (the oracle), then the whole model on the GPU against the CPU. Needs only: node, dist/ and a
// CUDA build of longcat.node (LONGCAT_ADDON). One line per case as it finishes (so a run cut short
// by a timeout still reports what passed), then a summary. Cases of opt-in kernels that have never
// run on a card (the TMA + wgmma GEMM) go last: a hang or fault there cannot hide the rest.
// Every op case is the op-case table's (lib/check/op-cases.ts, compiled into dist/check/ by
// scripts/gpu-prepare.sh), held to the bounds of its error model (lib/check/error-model.ts): 'error/bound'
// is the worst |gpu - cpu| over the element's bound (<= 1 passes).
// Exits 1 if any case fails, 2 if no GPU is usable.
import { native } from '../dist/native.js';
import { Stream } from '../dist/device.js';
import { cases, checkCase, dev, SLOW_RUN_LIMITS } from '../dist/check/op-cases.js';
import { modelChecks, speculativeChecks } from '../dist/check/model-cases.js';
import { eventTimes } from '../bench/common.mjs';

const status = native.cudaStatus();
if (!status.available) {
  console.error(`gpu-check: CUDA unavailable: ${status.reason || 'not compiled in'}`);
  process.exit(2);
}
const gpu = native.devices().find(d => d.id === dev);
if (gpu?.kind !== 'cuda') {
  console.error(`gpu-check: ${dev} is not a CUDA device of this addon`);
  process.exit(2);
}
console.log(
  `gpu-check on ${gpu.name} (sm_${gpu.computeCapability.replace('.', '')}, ${gpu.multiprocessors} SMs), addon ${JSON.stringify(native.buildInfo())}`,
);

// On the CPU emulator of test/emu (a dry run of this script) only the smaller cases run.
const emulated = native.buildInfo().cudaArchs === 'emulated';
const limits = emulated ? SLOW_RUN_LIMITS : null;
let passed = 0,
  failed = 0,
  skipped = 0;
const stream = new Stream(dev);

// Times `fn` on the GPU stream with CUDA events: median of `iters` runs after warmup (on the emulated
// device the times mean nothing: one run, which checks that timing works).
function timeMs(fn, iters = emulated ? 1 : 20) {
  for (let i = 0; i < (emulated ? 0 : 3); i++) fn();
  const times = eventTimes(dev, stream, fn, iters).sort((x, y) => x - y);
  return times[times.length >> 1];
}

function runCase(c) {
  let ratio = Infinity,
    ok = false,
    detail = '',
    ms = NaN,
    bytes = 0,
    flops = 0;
  try {
    const r = checkCase(c, stream, limits);
    if (r.skipped === true) {
      skipped++;
      return;
    }
    ({ ratio, ok, detail } = r);
    ({ bytes, flops } = c);
    ms = timeMs(() => r.gpu.run(stream));
  } catch (e) {
    ok = false;
    console.error(`${c.name}: ${e.message}`);
  }
  ok ? passed++ : failed++;
  const perf = [bytes ? `${(bytes / ms / 1e6).toFixed(0)} GB/s` : '', flops ? `${(flops / ms / 1e9).toFixed(2)} TFLOP/s` : '']
    .filter(Boolean)
    .join(' ');
  console.log(
    `${ok ? 'ok  ' : 'FAIL'} ${c.name}: error/bound ${ratio.toExponential(2)}, ${(ms * 1000).toFixed(1)} us ${perf}${ok ? '' : ` (${detail})`}`,
  );
}

const optIn = c => c.gemm === 'wgmma';
for (const c of cases.filter(c => !optIn(c))) runCase(c);
console.log(`ops: ${passed} passed, ${failed} failed`);

// The whole model on the GPU against the CPU (tiny, tiny fp8, small checkpoints).
for (const precision of /** @type {const} */ (['highest', 'bf16'])) {
  try {
    for (const c of await modelChecks({ device: dev, precision, ...(emulated ? { presets: ['tiny'] } : {}) })) {
      c.ok ? passed++ : failed++;
      console.log(`${c.ok ? 'ok  ' : 'FAIL'} model ${c.name}: ${c.err.toExponential(2)} (tolerance ${c.tol})`);
    }
  } catch (e) {
    failed++;
    console.error(`model checks (${precision}): ${e.stack || e.message}`);
  }
}

// Speculative decoding with the MTP head: the fused verify + accept + draft graph on the GPU.
try {
  for (const c of await speculativeChecks({ device: dev, tokens: emulated ? 12 : 24 })) {
    c.ok ? passed++ : failed++;
    console.log(`${c.ok ? 'ok  ' : 'FAIL'} speculative ${c.name}: ${c.err}`);
  }
} catch (e) {
  failed++;
  console.error(`speculative checks: ${e.stack || e.message}`);
}

for (const c of cases.filter(optIn)) runCase(c);
console.log(`${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped (over the emulator's size limit)` : ''}`);
process.exit(failed ? 1 : 0);
