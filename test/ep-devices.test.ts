// Expert parallelism across CUDA devices (issue 14): ranks on several devices of one process, the
// home rank's dispatch writing into the receivers' slots and its combine reading their partial
// rows through peer pointers. Runs where the build has several CUDA devices: on a multi-GPU
// machine, and in CI on the emulator of test/emu with six emulated devices (set below, before the
// addon is loaded; cuda:4 and cuda:5 have no peer path), against the single-device run ("equal"
// as issue 14 defines it).
import { beforeAll, describe, expect, it, vi } from 'vitest';
import path from 'node:path';

vi.hoisted(() => {
  process.env.LONGCAT_EMU_DEVICES ??= '6';
  process.env.LONGCAT_EMU_NO_PEER ??= '4-5';
});

import { native } from '../lib/native.js';
import { tensor, toArray, empty } from '../lib/tensor.js';
import { Stream } from '../lib/device.js';
import { ArgumentError, DeviceError } from '../lib/errors.js';
import { initRandom } from '../lib/init-random.js';
import { loadModel } from '../lib/generate.js';
import { ShardedExperts } from '../lib/parallel/placement.js';
import { expectEqualLogits, expectFailuresRecover, prompts, runScript, singleDeviceScript } from './ep-helpers.js';
import { fixtureRoot } from './model-fixture.js';

const cuda = native.cudaStatus();
const emulated = native.buildInfo().cudaArchs === 'emulated';
const root = fixtureRoot('longcat-ep-devices-');

describe.runIf(cuda.available && cuda.deviceCount >= 2)('peer access between CUDA devices', () => {
  it('enables every pair of a group (twice is fine) and lets an op on one device reach the others', () => {
    native.enablePeerAccess(['cuda:0', 'cuda:1']);
    native.enablePeerAccess(['cuda:1', 'cuda:0']);
    // epCombine on a stream of cuda:1: its inputs on cuda:0, one partial on each device.
    const H = 3,
      u = tensor(Float32Array.from([1, 2, 3, 4, 5, 6]), [2, H], { device: 'cuda:0' }),
      idx = tensor(Int32Array.from([0, 2, 3, 1]), [2, 2], { dtype: 'int32', device: 'cuda:0' }),
      w = tensor(Float32Array.from([0.5, 0.25, 2, 4]), [2, 2], { device: 'cuda:0' }),
      rowOf = tensor(Int32Array.from([0, -1, -1, 0]), [2, 2], { dtype: 'int32', device: 'cuda:1' }),
      p0 = tensor(Float32Array.from([10, 20, 30]), [1, H], { device: 'cuda:1' }),
      p1 = tensor(Float32Array.from([100, 200, 300]), [1, H], { device: 'cuda:0' }),
      out = empty([2, H], { device: 'cuda:0' });
    const s = new Stream('cuda:1');
    try {
      // nRouted 2 (one per rank), nExperts 4: expert 2 and 3 are zero experts.
      native.epCombine(s, out, u, idx, w, 2, 4, rowOf, [p0, p1]);
      s.synchronize();
      // token 0: rank 0's partial + 0.25 * u; token 1: rank 1's partial + 2 * u (expert 3 is zero).
      expect(Array.from(toArray(out) as Float32Array)).toEqual([10.25, 20.5, 30.75, 108, 210, 312]);
      // a CPU tensor is not reachable from a CUDA kernel, peer access or not
      const onCpu = tensor(Float32Array.from([1, 2, 3, 4, 5, 6]), [2, H]);
      expect(() => native.epCombine(s, out, onCpu, idx, w, 2, 4, rowOf, [p0, p1])).toThrow(DeviceError);
      onCpu.dispose();
    } finally {
      s.dispose();
      for (const t of [u, idx, w, rowOf, p0, p1, out]) t.dispose();
    }
  });

  it.runIf(emulated)('refuses devices without a peer path and ops reaching a device not enabled, with typed errors', async () => {
    expect(() => native.enablePeerAccess(['cuda:3', 'cuda:4', 'cuda:5'])).toThrow(DeviceError);
    expect(() => native.enablePeerAccess(['cuda:4', 'cuda:5'])).toThrow(/cuda:4 cannot reach the memory of cuda:5/);
    const u = tensor(Float32Array.from([1, 2]), [1, 2], { device: 'cuda:5' }),
      idx = tensor(Int32Array.from([0]), [1, 1], { dtype: 'int32', device: 'cuda:5' }),
      w = tensor(Float32Array.from([1]), [1, 1], { device: 'cuda:5' }),
      rowOf = tensor(Int32Array.from([0]), [1, 1], { dtype: 'int32', device: 'cuda:5' }),
      part = tensor(Float32Array.from([1, 2]), [1, 2], { device: 'cuda:4' }),
      out = empty([1, 2], { device: 'cuda:5' });
    const s = new Stream('cuda:5');
    try {
      expect(() => native.epCombine(s, out, u, idx, w, 1, 1, rowOf, [part])).toThrow(
        /'partials\[0\]' is on cuda:4, which kernels on cuda:5 cannot reach/,
      );
    } finally {
      s.dispose();
      for (const t of [u, idx, w, rowOf, part, out]) t.dispose();
    }
    const dir = path.join(root, 'no-peer');
    await initRandom({ preset: 'tiny', out: dir, seed: 3 });
    await expect(loadModel(dir, { backend: 'cuda', devices: [4, 5] })).rejects.toThrow(
      /cuda:4 cannot reach the memory of cuda:5/,
    );
  });

  it('rejects bad device groups with typed errors', async () => {
    const dir = path.join(root, 'groups');
    await initRandom({ preset: 'tiny', out: dir, seed: 3 });
    await expect(loadModel(dir, { backend: 'cpu', devices: [0, 1] })).rejects.toBeInstanceOf(ArgumentError);
    await expect(loadModel(dir, { backend: 'cuda', devices: [0, 0] })).rejects.toThrow(/names a device twice/);
    await expect(loadModel(dir, { backend: 'cuda', devices: [0, 99] })).rejects.toBeInstanceOf(DeviceError);
    await expect(loadModel(dir, { backend: 'cuda', devices: [0, 1], ranks: 3 })).rejects.toThrow(/not a multiple/);
    await expect(loadModel(dir, { backend: 'cuda', devices: [0, 1], deviceIndex: 1 })).rejects.toBeInstanceOf(ArgumentError);
  });
});

describe.runIf(cuda.available && cuda.deviceCount >= 4)(
  'expert-parallel models across CUDA devices equal the single-device run',
  () => {
    const checkpoints: [string, boolean][] = [
      ['tiny bf16', false],
      ['tiny fp8', true],
    ];
    for (const [name, fp8] of checkpoints) {
      describe(name, () => {
        let dir: string;
        let want: ReturnType<typeof runScript>;
        beforeAll(async () => {
          dir = path.join(root, name.replace(/\W+/g, '-'));
          await initRandom({ preset: 'tiny', out: dir, seed: 29, fp8 });
          want = await singleDeviceScript(dir, 2, 'cuda');
        }, 300_000);
        it.each([
          [[0, 1], 2],
          [[0, 1, 2, 3], 4],
        ])(
          'devices %j (%i ranks): batched prefill + decode steps (captured decode graphs); a rank failing mid-step',
          async (devices, ranks) => {
            const m = await loadModel(dir, { backend: 'cuda', cacheDtype: 'f32', maxContext: 64, devices });
            try {
              const shards = m.engine.w.layers.map(l => l.moe.experts as ShardedExperts);
              for (const s of shards) {
                expect(s).toBeInstanceOf(ShardedExperts);
                expect(s.shards.map(x => x.device)).toEqual(devices.map(i => `cuda:${i}`));
              }
              expect(shards[0]!.shards.length).toBe(ranks);
              const got = runScript(m, prompts, 2, want.chosen);
              for (const [i, g] of got.out.entries()) expectEqualLogits(g, want.out[i]!, m.engine.dims.vocab, 1e-5);
              // data-parallel attention: the sequences spread over the ranks, each rank's KV pool and
              // caches on its device, and a replica of the dense weights on every device
              const e = m.engine,
                seqs = prompts.map(() => e.newSequence());
              expect(seqs.map(s => e.rankOf(s).device)).toEqual(prompts.map((_, b) => `cuda:${devices[b % ranks]}`));
              for (let r = 0; r < ranks; r++) for (const c of e.kvCaches(r)) expect(c.device).toBe(`cuda:${devices[r]}`);
              for (const s of seqs) s.release();
              const mem = m.memory;
              expect(Object.keys(mem.uploaded).sort()).toEqual(devices.map(i => `cuda:${i}`).sort());
              expect(Object.keys(mem.kvCache).sort()).toEqual(devices.map(i => `cuda:${i}`).sort());
              if (!fp8) expectFailuresRecover(m, want, 1, /abort flag/);
            } finally {
              m.dispose();
            }
          },
          300_000,
        );
      });
    }
  },
);
