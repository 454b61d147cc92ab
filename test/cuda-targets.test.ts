// Kernel selection by the image a device runs (gpu::kernel_image), per target: on the emulated
// device (a -DLONGCAT_CUDA_EMU=ON build) each case is a child process with its own compute
// capability and built archs (LONGCAT_EMU_CC / LONGCAT_EMU_ARCHS, test/emu/cuda_emu.h), whose
// emulated image lacks what a real build for those archs lacks (an sm_90 image has no wgmma, an
// sm_80 image no e4m3 mma: their results would be garbage). Elsewhere skipped: a real build has one
// target per GPU, which scripts/gpu-check.mjs covers.
import { spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { native } from '../lib/native.js';

const emulated = native.buildInfo().cudaArchs === 'emulated';

function onTarget(cc: string, archs: string, ...args: string[]) {
  const r = spawnSync(process.execPath, ['test/targets/linear-on-target.mjs', ...args], {
    encoding: 'utf8',
    env: { ...process.env, LONGCAT_EMU_CC: cc, LONGCAT_EMU_ARCHS: archs },
  });
  expect(r.status, r.stderr).toBe(0);
  return JSON.parse(r.stdout.trim().split('\n').pop()!) as { err?: number; tol?: number; code?: string; message?: string };
}

describe.skipIf(!emulated)('CUDA kernels chosen by the image the device runs (emulated targets)', () => {
  it.each([
    ['90', '90a', 'the sm_90a image: wgmma'],
    ['90', '90', 'an sm_90 build on sm_90: no wgmma in it, the mma.sync GEMM'],
    ['90', '90a;80', 'sm_90a picked over sm_80'],
  ])('bf16 linear with wgmma asked for, compute capability %s, built for %s (%s)', (cc, archs) => {
    const r = onTarget(cc, archs, 'wgmma');
    expect(r.code, r.message).toBeUndefined();
    expect(r.err!).toBeLessThanOrEqual(r.tol!);
  });

  it.each([
    ['89', '89', 'fp8', 'e4m3 tensor cores'],
    ['89', '80', 'bf16', 'an sm_80 image on sm_89: no e4m3 mma in it, the bf16 path'],
    ['90', '90a', 'fp8', 'e4m3 tensor cores'],
  ])(
    'fp8-weight linear at precision fp8, compute capability %s, built for %s: matches the CPU at %s (%s)',
    (cc, archs, cpuPrecision) => {
      const r = onTarget(cc, archs, 'fp8', cpuPrecision);
      expect(r.code, r.message).toBeUndefined();
      expect(r.err!).toBeLessThanOrEqual(r.tol!);
    },
  );

  it('refuses a device no image of the build runs on, naming its capability and the built archs', () => {
    const r = onTarget('90', '89;80', 'wgmma');
    expect(r.code).toBe('E_DEVICE');
    expect(r.message).toMatch(/compute capability 9\.0.*built for/);
  });
});
