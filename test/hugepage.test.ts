// loadModel's `hugePages` (lib/model/weights.ts copyDenseToHugePages, over native placeTensors with no
// node, on a stream of the global pool): the copies hold the sources' bytes exactly, live on after the
// sources are gone, and a model reading its dense weights from them decodes bit for bit what the model reading
// the mapped shards does (the same kernels over the same bytes), at 1 and 3 pool threads.
import { beforeAll, describe, expect, it } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { native } from '../lib/native.js';
import { Stream } from '../lib/device.js';
import type { Tensor } from '../lib/tensor.js';
import { initRandom } from '../lib/init-random.js';
import { loadModel } from '../lib/generate.js';
import { rejects, rng, scratchDir } from './helpers.js';

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

describe("loadModel's hugePages", () => {
  const dir = path.join(root, 'small');
  beforeAll(async () => {
    await initRandom({ preset: 'small', out: dir, seed: 23, mtp: true });
  }, 300_000);

  it.each([1, 3])(
    'decodes bit for bit what the mapped weights decode, with %i pool threads',
    async threads => {
      native.setThreads(threads);
      using mapped = await loadModel(dir, { backend: 'cpu', maxContext: 64, hugePages: false });
      using huge = await loadModel(dir, { backend: 'cpu', maxContext: 64, hugePages: true });
      expect(mapped.memory.hugePages).toBe(0);
      // the dense weights (attention, dense MLPs, norms, router, lm_head, MTP layer) are copied, not the
      // embeddings or the experts: more than lm_head alone, less than everything mapped
      const lmHead = huge.engine.w.lmHead.weight.nbytes;
      expect(huge.memory.hugePages).toBeGreaterThan(lmHead);
      expect(huge.memory.hugePages).toBeLessThan(huge.memory.hostMapped - huge.engine.w.embed.nbytes);
      expect(huge.memory.hostMapped).toBe(mapped.memory.hostMapped);
      const logits = (m: typeof huge) => {
        const e = m.engine;
        const seq = e.newSequence();
        const out: Buffer[] = [];
        let tokens = [[5, 17, 301, 2]];
        for (let step = 0; step < 3; step++) {
          const { logits } = e.forward([seq], tokens);
          out.push(Buffer.from(logits.toBytes()));
          logits.dispose();
          tokens = [[(97 * step + 11) % 500]];
        }
        seq.release();
        return out;
      };
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

  it('quantized-at-load weights are freed once copied; a bad value is E_ARGUMENT', async () => {
    using q = await loadModel(dir, { backend: 'cpu', maxContext: 64, quantize: 'int8', hugePages: true });
    expect(q.memory.hugePages).toBeGreaterThan(0);
    const seq = q.engine.newSequence();
    const { logits } = q.engine.forward([seq], [[1, 2, 3]]);
    const b = Buffer.from(logits.toBytes());
    expect(new Float32Array(b.buffer, b.byteOffset, b.length / 4).every(Number.isFinite)).toBe(true);
    logits.dispose();
    seq.release();
    await rejects(loadModel(dir, { backend: 'cpu', hugePages: 'yes' as never }), 'E_ARGUMENT', 'hugePages');
  }, 300_000);
});
