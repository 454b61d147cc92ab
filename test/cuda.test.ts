// CUDA kernels against their CPU twins (the op-case table of lib/check/op-cases.ts, shared with
// scripts/gpu-check.mjs). Runs where a CUDA build finds a device (a GPU, or the emulated device of a
// -DLONGCAT_CUDA_EMU=ON build); everywhere else that part is skipped.
import { describe, expect, it } from 'vitest';
import { cudaAvailable, workLimitMs } from './helpers.js';
import { budgetMs, cases, checkCase, dev, SLOW_RUN_LIMITS } from '../lib/check/op-cases.js';
import { modelChecks, speculativeChecks, type ModelCheck, type ModelVariant } from '../lib/check/model-cases.js';
import { Stream } from '../lib/device.js';
import { native } from '../lib/native.js';

// On the emulated device (a -DLONGCAT_CUDA_EMU=ON build, test/emu) only the smaller cases run.
const emulated = native.buildInfo().cudaArchs === 'emulated';
const limits = emulated ? SLOW_RUN_LIMITS : null;

describe.skipIf(!cudaAvailable)(
  `CUDA kernels match the CPU within their error bounds${emulated ? ' (emulated device)' : ''}`,
  () => {
    const stream = cudaAvailable ? new Stream(dev) : null;
    for (const c of cases) {
      it(
        c.name,
        ctx => {
          const r = checkCase(c, stream!, limits);
          if (r.skipped) return ctx.skip(`over the emulator's size limit`);
          expect(r.ratio, `error / bound ${r.ratio}: ${r.detail}`).toBeLessThanOrEqual(1);
        },
        budgetMs(c),
      );
    }
  },
);

const expectAllOk = (rows: ModelCheck[]) => {
  expect(rows.length).toBeGreaterThan(0);
  for (const r of rows) expect(r.err, `${r.name}: ${r.err} > ${r.tol}`).toBeLessThanOrEqual(r.tol);
};

describe.skipIf(!cudaAvailable)(`the whole model on CUDA matches the CPU${emulated ? ' (emulated device)' : ''}`, () => {
  // the emulated device runs the two smallest checkpoints (about 32 s of CPU per precision, which sets
  // the limit: helpers.ts workLimitMs); a GPU runs all four, its CPU oracle the larger cost
  const presets: ModelVariant[] = emulated ? ['tiny', 'tiny-fp8-h128'] : ['tiny', 'tiny-fp8', 'tiny-fp8-h128', 'small'];
  it.each(['highest', 'bf16'] as const)(
    `${presets.join(', ')} checkpoints at precision %s`,
    async precision => {
      expectAllOk(await modelChecks({ device: dev, precision, presets }));
    },
    workLimitMs(emulated ? 35 : 60),
  );
});

describe.skipIf(!cudaAvailable)(`speculative decoding on CUDA${emulated ? ' (emulated device)' : ''}`, () => {
  it(
    'greedy with MTP drafts == plain greedy, on the device and against the CPU; batched steps',
    async () => {
      expectAllOk(await speculativeChecks({ device: dev, tokens: emulated ? 12 : 24 }));
    },
    workLimitMs(emulated ? 35 : 60),
  );
});

// Everywhere: the model checks on the CPU alone compare its prefill logits with the float64
// reference, its prefill + decode steps with one full forward (the fp8 checkpoint's absorbed decode
// against its expanded prefill) and its graph replay with the eager step.
it('whole-model checks on the CPU: float64 reference, prefill + decode, graph replay', async () => {
  const rows = await modelChecks({ device: 'cpu', presets: ['tiny', 'tiny-fp8', 'tiny-fp8-h128', 'lite'] });
  expect(rows.filter(r => /float64 reference/.test(r.name))).toHaveLength(4);
  expectAllOk(rows);
});
