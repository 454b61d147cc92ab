// loadModel's `hugePages` (lib/model/weights.ts copyToHugePages, over native placeTensorsAsync: no node,
// the copy on a libuv worker over the global pool): the copies hold the sources' bytes exactly, live on
// after the sources are gone, the shards' pages are given back, a truncated source is E_CHECKPOINT
// (not SIGBUS), and a model reading its dense weights and routed experts from them decodes bit for bit
// what the model reading the mapped shards does (the same kernels over the same bytes), at 1 and 3 pool
// threads, with bf16, stored fp8 and int4 / int8 (quantized at load) experts.
import { beforeAll, describe, expect, it } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { native } from '../lib/native.js';
import { Stream } from '../lib/device.js';
import type { Tensor } from '../lib/tensor.js';
import { initRandom } from '../lib/init-random.js';
import { loadModel } from '../lib/generate.js';
import { rejects, rng, scratchDir } from './helpers.js';
import os from 'node:os';

const root = scratchDir('lc-hugepage-');

const bytesOf = (t: Tensor) => Buffer.from(t.toBytes());

describe("placeTensors on the global pool (the dense weights' copy)", () => {
  it.each([1, 3])('copies tensors of odd sizes and every dtype exactly, with %i pool threads', threads => {
    native.setThreads(threads);
    const r = rng(threads);
    // sizes straddling the 2 MiB pages the threads fill (3 MiB + 1 element, 1 element, empty, odd)
    const specs: [string, number[]][] = [
      ['bf16', [1, 1]],
      ['f32', [3, 262_145]],
      ['int8', [7, 333]],
      ['bf16', [0, 5]],
      ['fp8_e4m3', [129, 4097]],
      ['f32', [1_048_577]],
      ['int32', [11]],
    ];
    const src = specs.map(([dt, shape]) => {
      const n = shape.reduce((a, b) => a * b, 1);
      const size = { bf16: 2, f32: 4, int8: 1, fp8_e4m3: 1, int32: 4 }[dt]!;
      const b = new Uint8Array(n * size);
      for (let i = 0; i < b.length; i++) b[i] = r.uint32() & 255;
      return new native.Tensor(dt as never, shape, 'cpu', b);
    });
    const want = src.map(bytesOf);
    const s = new Stream('cpu');
    const h = native.placeTensors(s, src, null, true, false);
    s.dispose();
    expect(h.tensors.length).toBe(src.length);
    const total = want.reduce((a, b) => a + b.length, 0);
    expect(h.bytes).toBeGreaterThanOrEqual(total);
    expect(h.hugepage).toBe(fs.existsSync('/sys/kernel/mm/transparent_hugepage/enabled'));
    expect(h.hugeBytes).toBeGreaterThanOrEqual(0);
    expect(h.hugeBytes).toBeLessThanOrEqual(Math.ceil(h.bytes / (2 << 20)) * (2 << 20)); // whole 2 MiB pages
    for (const t of src) t.dispose(); // the copies are independent of their sources
    h.tensors.forEach((t, i) => {
      expect(t.dtype).toBe(specs[i]![0]);
      expect(t.shape).toEqual(specs[i]![1]);
      expect(t.device).toBe('cpu');
      expect(bytesOf(t).equals(want[i]!), `tensor ${i}`).toBe(true);
    });
    // a copy's bytes are its own: writing one leaves its neighbours as they were
    h.tensors[0]!.copyFromBytes(new Uint16Array([0x7fc0]));
    expect(bytesOf(h.tensors[1]!).equals(want[1]!)).toBe(true);
    for (const t of h.tensors) t.dispose();
  });
});

describe('placeTensorsAsync (off the JS thread)', () => {
  it('copies bit for bit, gives back the mapped source pages, and frees nothing early', async () => {
    const r = rng(5);
    const file = path.join(root, 'mapped.bin');
    const b = new Uint8Array((3 << 20) + 4096 * 3); // past a 2 MiB page of the destination
    for (let i = 0; i < b.length; i++) b[i] = r.uint32() & 255;
    fs.writeFileSync(file, b);
    const m = native.mapFile(file);
    const mapped = native.tensorFromMapping(m, 4096, 'bf16', [(b.length - 8192) / 2]);
    const made = new native.Tensor(
      'f32',
      [3, 333],
      'cpu',
      new Float32Array(999).map(() => r.uniform()),
    );
    const want = [mapped, made].map(bytesOf);
    const out = await native.placeTensorsAsync([mapped, made], true, true);
    expect(out.tensors.map(t => [t.dtype, t.shape])).toEqual([mapped, made].map(t => [t.dtype, t.shape]));
    for (const [i, t] of out.tensors.entries()) expect(bytesOf(t).equals(want[i]!), `tensor ${i}`).toBe(true);
    // the mapped tensor's whole pages (the made one is no mapping)
    expect(out.released).toBe(mapped.nbytes);
    expect(out.releaseHow).toBe('dontneed'); // unmapped only: the page cache keeps them
    expect(out.hugeBytes).toBeGreaterThanOrEqual(0);
    // given back, the source still reads the file's bytes (refilled from the page cache or the disk)
    expect(bytesOf(mapped).equals(want[0]!)).toBe(true);
    for (const t of [mapped, made]) t.dispose();
    m.close();
    for (const [i, t] of out.tensors.entries()) expect(bytesOf(t).equals(want[i]!)).toBe(true);
    for (const t of out.tensors) t.dispose();
    expect((await native.placeTensorsAsync([], true, false)).tensors).toEqual([]);
  });

  // MADV_POPULATE_READ (Linux >= 5.14) reports a page the truncated file no longer has, where the
  // copy's read would take SIGBUS
  const [major, minor] = os.release().split('.').map(Number) as [number, number];
  it.runIf(major > 5 || (major === 5 && minor >= 14))('a source over a truncated file is E_CHECKPOINT, not a crash', async () => {
    const file = path.join(root, 'truncated.bin');
    fs.writeFileSync(file, new Uint8Array(1 << 20).fill(7));
    const m = native.mapFile(file);
    const t = native.tensorFromMapping(m, 0, 'f32', [1 << 18]);
    fs.truncateSync(file, 4096);
    await rejects(native.placeTensorsAsync([t], true, true), 'E_CHECKPOINT', 'placed_copy');
    t.dispose();
    m.close();
  });

  it('bad arguments are typed errors', async () => {
    const g = () => native.placeTensorsAsync([new native.Tensor('f32', [2], 'cpu')], 'yes' as never, false);
    let code = '';
    try {
      await g();
    } catch (e) {
      code = (e as { code: string }).code;
    }
    expect(code).toBe('E_ARGUMENT');
  });
});

describe("loadModel's hugePages", () => {
  const dir = path.join(root, 'small');
  const tinyDir = path.join(root, 'tiny');
  const fp8Dir = path.join(root, 'tiny-fp8');
  beforeAll(async () => {
    await initRandom({ preset: 'small', out: dir, seed: 23, mtp: true });
    await initRandom({ preset: 'tiny', out: tinyDir, seed: 24 });
    await initRandom({ preset: 'tiny', out: fp8Dir, seed: 25, fp8: true });
  }, 300_000);

  /** Greedy-fed logits of 3 decode steps after a 4-token prompt. */
  const logits = (m: Awaited<ReturnType<typeof loadModel>>) => {
    const e = m.engine;
    const seq = e.newSequence();
    const out: Buffer[] = [];
    let tokens = [[5, 17, 301, 2].map(t => t % e.dims.vocab)];
    for (let step = 0; step < 3; step++) {
      const { logits } = e.forward([seq], tokens);
      out.push(Buffer.from(logits.toBytes()));
      logits.dispose();
      tokens = [[(97 * step + 11) % e.dims.vocab]];
    }
    seq.release();
    return out;
  };

  it.each([
    ['small', 'bf16', 1],
    ['small', 'bf16', 3],
    ['tiny', 'bf16', 2],
    ['tiny', 'fp8', 2], // stored e4m3 experts with their block scales
    ['tiny', 'int4', 2], // quantized at load: made (anonymous) tensors, copied once and freed
    ['small', 'int8', 2],
  ] as const)(
    '%s, %s experts: decodes bit for bit what the mapped weights decode, with %i pool threads',
    async (preset, format, threads) => {
      native.setThreads(threads);
      const d = preset === 'small' ? dir : format === 'fp8' ? fp8Dir : tinyDir;
      const quantize = format === 'int4' || format === 'int8' ? { quantize: format } : {};
      using mapped = await loadModel(d, { backend: 'cpu', maxContext: 64, hugePages: false, ...quantize });
      using huge = await loadModel(d, { backend: 'cpu', maxContext: 64, hugePages: true, ...quantize });
      expect(mapped.memory.hugePages).toBe(0);
      // the dense weights (attention, dense MLPs, norms, router, lm_head, MTP layer; some of them made
      // at load: f32 norms and router, an fp8 kv_b's absorbed form) and every routed expert are copied
      const w = huge.engine.w;
      const experts = w.layers.reduce((a, L) => a + L.moe.expertTensors.flat().reduce((b, t) => b + t.nbytes, 0), 0);
      expect(experts).toBeGreaterThan(0);
      expect(huge.memory.hugePages).toBeGreaterThan(experts + w.lmHead.weight.nbytes);
      expect(huge.memory.hostMapped).toBe(mapped.memory.hostMapped);
      expect(huge.memory.hostMade).toBe(mapped.memory.hostMade);
      // nothing the step reads is a mapping any more: populate found no mapped page to fault in
      expect(huge.memory.populated).toEqual({ bytes: 0, skipped: null });
      if (!quantize.quantize) expect(mapped.memory.populated!.bytes).toBeGreaterThan(experts);
      const a = logits(mapped),
        b = logits(huge);
      expect(a.length).toBe(3);
      a.forEach((x, i) => {
        expect(new Float32Array(x.buffer, x.byteOffset, x.length / 4).every(Number.isFinite)).toBe(true);
        expect(b[i]!.equals(x), `step ${i}`).toBe(true);
      });
    },
    300_000,
  );

  it("CPU ranks: the dense weights are copied, the experts stay expertPlacement's", async () => {
    native.setThreads(2);
    using mapped = await loadModel(tinyDir, { backend: 'cpu', maxContext: 64, ranks: 2, expertPlacement: 'mmap' });
    using huge = await loadModel(tinyDir, { backend: 'cpu', maxContext: 64, ranks: 2, expertPlacement: 'mmap', hugePages: true });
    const w = huge.engine.w;
    const experts = w.layers.reduce((a, L) => a + L.moe.expertTensors.flat().reduce((b, t) => b + t.nbytes, 0), 0);
    expect(huge.memory.hugePages).toBeGreaterThan(w.lmHead.weight.nbytes);
    expect(huge.memory.hugePages).toBeLessThan(huge.memory.hostMapped - experts);
    expect(huge.memory.expertPlacement!.map(p => p.how)).toEqual(['mmap', 'mmap']);
    expect(huge.memory.populated!.bytes).toBeGreaterThanOrEqual(experts); // the experts are still mapped
    const a = logits(mapped),
      b = logits(huge);
    for (const [i, x] of a.entries()) expect(b[i]!.equals(x), `step ${i}`).toBe(true);
  }, 300_000);

  it('a bad value is E_ARGUMENT', async () => {
    await rejects(loadModel(dir, { backend: 'cpu', hugePages: 'yes' as never }), 'E_ARGUMENT', 'hugePages');
    await rejects(loadModel(dir, { backend: 'cpu', hugePages: 1 as never }), 'E_ARGUMENT', 'hugePages');
  });
});
