// The driver floor of the statically linked CUDA 13 runtime (native/cuda_api.h driver_floor_reason):
// on the emulated device (a -DLONGCAT_CUDA_EMU=ON build), whose driver's CUDA version comes from
// LONGCAT_EMU_DRIVER (read once per process, so each case is a child process), a driver older than
// CUDA 13.0 leaves CUDA unavailable with a reason naming the driver and the requirement; 'auto' runs
// on the CPU and warns once, 'cuda' is a typed error, and `longcat info` shows it. Elsewhere skipped:
// a real build's driver is the machine's (scripts/gpu-check.mjs prints it).
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { native } from '../dist/native.js';

const emulated = native.buildInfo().cudaArchs === 'emulated';
const cli = path.resolve(__dirname, '../dist/cli.js');

const probe = `
import { native } from './dist/native.js';
import { resolveDevice } from './dist/model/load.js';
const warnings = [];
process.on('warning', w => warnings.push({ code: w.code, message: w.message }));
const out = { status: native.cudaStatus(), build: native.buildInfo(), devices: native.devices().map(d => d.id) };
out.auto = [resolveDevice('auto'), resolveDevice('auto')];
try { resolveDevice('cuda'); } catch (e) { out.cudaError = { code: e.code, message: e.message }; }
setImmediate(() => console.log(JSON.stringify({ ...out, warnings })));
`;

function withDriver(driver: string) {
  const env = { ...process.env, LONGCAT_EMU_DRIVER: driver };
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', probe], { encoding: 'utf8', env });
  expect(r.status, r.stderr).toBe(0);
  return JSON.parse(r.stdout.trim().split('\n').pop()!);
}

describe.skipIf(!emulated)('CUDA driver floor (emulated driver)', () => {
  it('a driver for CUDA 12.8 (a 570 driver): CPU backend, a warning and an error naming both versions and driver 580', () => {
    const r = withDriver('12080');
    expect(r.status).toMatchObject({
      compiled: true,
      available: false,
      deviceCount: 0,
      driverCudaVersion: '12.8',
      driverTooOld: true,
    });
    expect(r.status.reason).toMatch(
      /supports CUDA 12\.8, but this addon's CUDA 13\.0 runtime needs .*NVIDIA driver >= 580.*CPU backend/,
    );
    expect(r.build).toMatchObject({ cudaRuntime: '13.0', cudaMinDriver: '580' });
    expect(r.devices).toEqual(['cpu']);
    expect(r.auto).toEqual(['cpu', 'cpu']);
    expect(r.warnings).toEqual([{ code: 'LONGCAT_CUDA_DRIVER', message: r.status.reason }]); // once
    expect(r.cudaError.code).toBe('E_DEVICE');
    expect(r.cudaError.message).toContain(r.status.reason);
  });

  it.each(['13000', '13020'])('a driver for CUDA %s: the emulated GPU, no warning', driver => {
    const r = withDriver(driver);
    expect(r.status).toMatchObject({ available: true, deviceCount: 1, driverTooOld: false, reason: '' });
    expect(r.devices).toEqual(['cpu', 'cuda:0']);
    expect(r.auto).toEqual(['cuda:0', 'cuda:0']);
    expect(r.warnings).toEqual([]);
  });

  it('`longcat info` names the driver, the runtime and the requirement', () => {
    const r = spawnSync(process.execPath, [cli, 'info'], {
      encoding: 'utf8',
      env: { ...process.env, LONGCAT_EMU_DRIVER: '12080' },
    });
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toContain('CUDA 13.0 runtime, needs NVIDIA driver >= 580');
    expect(r.stdout).toMatch(
      /cuda: +unavailable \(the NVIDIA driver \(emulated\) supports CUDA 12\.8.*\); driver emulated for CUDA 12\.8/,
    );
  });
});
