// The GPU session's scripts (bench/gpu.mjs, bench/gpu-model.mjs) only measure on a GPU, which most
// sessions lack; their --smoke mode runs every section on the CPU at tiny sizes so that they keep
// working between GPU sessions.
import { spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { native } from '../lib/native.js';
import { workLimitMs } from './helpers.js';

// On a build whose CUDA device is the CPU emulator of test/emu, the smoke runs use it: the scripts'
// CUDA paths (events, setCudaGemm, device-made weights) then run before any GPU session does.
const emulated = native.buildInfo().cudaArchs === 'emulated';
const device = emulated ? ['--device', 'cuda:0'] : [];

// Limits from the work, not the clock (helpers.ts workLimitMs): on the emulated device (the slower
// case) the smoke runs take about 3 s (bench/gpu.mjs) and 12 s (bench/gpu-model.mjs, 2 steps) of CPU.

function smoke(script: string, timeout: number, args: string[] = []) {
  const r = spawnSync(process.execPath, [script, '--smoke', ...device, ...args], { encoding: 'utf8', env: process.env, timeout });
  expect(r.stderr).toBe('');
  expect(r.status).toBe(0);
  return r.stdout;
}

describe('GPU benchmark scripts (smoke mode on the CPU)', () => {
  it(
    `bench/gpu.mjs runs its copy, GEMM, grouped-MoE and MLA sections${emulated ? ' (and wgmma) on the emulated cuda:0' : ''}`,
    () => {
      const out = smoke('bench/gpu.mjs', workLimitMs(3));
      for (const title of [
        'device copy:',
        '== linear',
        '== grouped MoE',
        '== MLA decode',
        ...(emulated ? ['== bf16 GEMM: mma.sync tiles vs the TMA + wgmma'] : []),
      ])
        expect(out).toContain(title);
      expect(out).not.toMatch(/NaN|Infinity/);
    },
    workLimitMs(3) + 10_000,
  );
  it(
    'bench/gpu-model.mjs builds a model from device-made weights and times decode and prefill',
    () => {
      const out = smoke('bench/gpu-model.mjs', workLimitMs(12), ['--steps', '2']);
      for (const row of ['decode (graph)', 'decode (eager)', 'MoE in order on the main stream', 'prefill 32', 'ScMoE overlap:'])
        expect(out).toContain(row);
      expect(out).not.toMatch(/NaN|Infinity/);
    },
    workLimitMs(12) + 10_000,
  );
});
