// scripts/ptxas-check.mjs's parser of `ptxas -v` output: entry functions only, spills and shared
// memory read per kernel (the CI check that fails on any spill relies on it).
import { describe, expect, it } from 'vitest';
// @ts-expect-error plain ESM script without types
import { parsePtxas } from '../scripts/ptxas-check.mjs';

const sample = `ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_Z6kernelPf' for 'sm_90a'
ptxas info    : Function properties for _Z6kernelPf
    16 bytes stack frame, 20 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 16 bytes cumulative stack size, 30720 bytes smem
ptxas info    : Compile time = 2479.371 ms
ptxas info    : Function properties for _Z6helperv
    8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads
ptxas info    : Compiling entry function '_Z5cleanv' for 'sm_80'
ptxas info    : Function properties for _Z5cleanv
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 32 registers, used 0 barriers
`;

describe('ptxas-check parser', () => {
  it('reads registers, shared memory and spills of entry functions only', () => {
    const rows = parsePtxas(sample);
    expect(rows).toEqual([
      { mangled: '_Z6kernelPf', arch: '90a', regs: 255, smem: 30720, stack: 16, spillStores: 20, spillLoads: 12 },
      { mangled: '_Z5cleanv', arch: '80', regs: 32, smem: 0, stack: 0, spillStores: 0, spillLoads: 0 },
    ]);
  });
});
