// Kernel selection by the image a device runs (gpu::kernel_image), per target: on the emulated
// device (a -DLONGCAT_CUDA_EMU=ON build) each case is a child process with its own compute
// capability and built archs (LONGCAT_EMU_CC / LONGCAT_EMU_ARCHS, test/emu/cuda_emu.h), whose
// emulated image lacks what a real build for those archs lacks (an sm_90 image has no wgmma, an
// sm_80 image no e4m3 mma: their results would be garbage). Elsewhere skipped: a real build has one
// target per GPU, which scripts/gpu-check.mjs covers.
import { spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { native } from '../lib/native.js';

const emulated = native.buildInfo().cudaArchs === 'emulated';
// The published prebuild's targets (package.json "longcat", scripts/prebuild.mjs builds them).
const fat: string = JSON.parse(readFileSync('package.json', 'utf8')).longcat.cudaArchs;

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
    ['90', fat, 'the prebuild on an H100: its sm_90a image'],
    ['80', fat, 'the prebuild on an A100: sm_80, the mma.sync GEMM'],
    ['100', fat, 'the prebuild on a B200: sm_100, no wgmma'],
    ['120', fat, 'the prebuild on an RTX 5090: sm_120, no wgmma'],
    ['130', fat, 'the prebuild on a GPU newer than it: the compute_120 PTX, no wgmma'],
  ])('bf16 linear with wgmma asked for, compute capability %s, built for %s (%s)', (cc, archs) => {
    const r = onTarget(cc, archs, 'wgmma');
    expect(r.code, r.message).toBeUndefined();
    expect(r.err!).toBeLessThanOrEqual(r.tol!);
  });

  it.each([
    ['89', '89', 'fp8', 'e4m3 tensor cores'],
    ['89', '80', 'bf16', 'an sm_80 image on sm_89: no e4m3 mma in it, the bf16 path'],
    ['90', '90a', 'fp8', 'e4m3 tensor cores'],
    ['80', fat, 'bf16', 'the prebuild on an A100: no e4m3 mma, the bf16 path'],
    ['86', fat, 'bf16', 'the prebuild on an RTX 3090 / A10: sm_86, the bf16 path'],
    ['89', fat, 'fp8', 'the prebuild on an L40S / RTX 4090: sm_89, e4m3 tensor cores'],
    ['90', fat, 'fp8', 'the prebuild on an H100 / H20: sm_90a, e4m3 tensor cores'],
    ['100', fat, 'fp8', 'the prebuild on a B200: sm_100, e4m3 tensor cores'],
    ['103', fat, 'fp8', 'the prebuild on a B300: the sm_100 image runs on 10.3'],
    ['120', fat, 'fp8', 'the prebuild on an RTX 5090: sm_120, e4m3 tensor cores'],
    ['130', fat, 'fp8', 'the prebuild on a GPU newer than it: the compute_120 PTX, e4m3 tensor cores'],
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

  it.each([
    ['75', fat, 'a T4 under the prebuild'],
    ['70', '80', 'a V100'],
  ])('refuses compute capability %s (built for %s, %s) by name: the kernels need 8.0', (cc, archs) => {
    const r = onTarget(cc, archs, 'wgmma');
    expect(r.code).toBe('E_DEVICE');
    expect(r.message).toContain(`compute capability ${cc[0]}.${cc[1]}; longcat-flash's CUDA kernels need 8.0`);
  });
});
