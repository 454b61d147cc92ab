// A replayed CPU graph runs as one parallel region (native/device.cc Graph::replay,
// native/cpu/threadpool.h): every stream's captured work in capture order on the pool, its workers
// kept inside the step. Its results are those of the same ops queued one by one (the eager step),
// bit for bit, whatever the pool size; a kernel that throws inside the region fails its own stream
// with its typed error, never hangs or aborts, and the streams and the graph stay usable.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { native } from '../lib/native.js';
import { Event, Stream } from '../lib/device.js';
import { empty, full, tensor, toArray } from '../lib/tensor.js';
import { initRandom } from '../lib/init-random.js';
import { loadModel } from '../lib/generate.js';
import { expectCode, rng } from './helpers.js';

const root = mkdtempSync(path.join(tmpdir(), 'lc-graph-region-'));
let savedThreads = 1;
beforeAll(() => {
  savedThreads = native.threads();
});
afterAll(() => {
  native.setThreads(savedThreads);
  rmSync(root, { recursive: true, force: true });
});

describe('a replayed CPU graph as one parallel region', () => {
  it.each([1, 2, 3, 5])('two streams joined by events give the eager bits with %i pool threads', threads => {
    native.setThreads(threads);
    const r = rng(threads);
    const [t, k, n] = [7, 301, 129];
    const x = tensor(r.array(t * k), [t, k]),
      w = tensor(r.array(n * k), [n, k]),
      w2 = tensor(r.array(n * n), [n, n]);
    // eager: the ops one by one on the default stream
    const ye = empty([t, n]),
      ze = empty([t, n]),
      ve = empty([t, n]);
    native.linear(null, ye, x, w);
    native.linear(null, ze, ye, w2);
    native.add(null, ve, ye, ze, 0.5);
    native.linear(null, ye, ve, w2);
    native.synchronize('cpu');
    // the same ops split over two streams, captured and replayed
    const s1 = new Stream('cpu'),
      s2 = new Stream('cpu');
    const [e1, e2] = [new Event('cpu'), new Event('cpu')];
    const y = full([t, n], Number.NaN),
      z = full([t, n], Number.NaN),
      v = full([t, n], Number.NaN);
    const graph = native.captureGraph([s1, s2], () => {
      native.linear(s1, y, x, w);
      e1.record(s1);
      s2.waitEvent(e1);
      native.linear(s2, z, y, w2);
      e2.record(s2);
      s1.waitEvent(e2);
      native.add(s1, v, y, z, 0.5);
      native.linear(s1, y, v, w2);
    });
    for (let rep = 0; rep < 3; rep++) {
      y.copyFromBytes(new Float32Array(t * n).fill(Number.NaN)); // poisoned before each replay
      graph.replay();
      s1.synchronize();
      s2.synchronize();
      expect(Buffer.from(y.toBytes()).equals(Buffer.from(ye.toBytes())), `replay ${rep}`).toBe(true);
      expect(Buffer.from(z.toBytes()).equals(Buffer.from(ze.toBytes()))).toBe(true);
    }
    graph.dispose();
    for (const u of [x, w, w2, y, z, v, ye, ze, ve]) u.dispose();
    s1.dispose();
    s2.dispose();
  });

  it("a kernel that throws in the region fails its own stream with its typed error; the other stream, the graph's next replays and eager work go on", () => {
    native.setThreads(2);
    const s1 = new Stream('cpu'),
      s2 = new Stream('cpu');
    const [e1, e2] = [new Event('cpu'), new Event('cpu')];
    // an epDispatch of one token to two ranks that fails as a rank's kernel would (its test hook)
    const u = full([1, 8], 1),
      idx = tensor(Int32Array.of(0), [1, 1], { dtype: 'int32' }),
      wt = full([1, 1], 1),
      rowOf = empty([1, 2], { dtype: 'int32' });
    const slot = () => ({
      count: empty([1], { dtype: 'int32' }),
      x: empty([2, 8]),
      idx: empty([2, 1], { dtype: 'int32' }),
      w: empty([2, 1]),
    });
    const slots = [slot(), slot()];
    const a = full([4, 4], 1),
      b = full([4, 4], 0);
    const graph = native.captureGraph([s1, s2], () => {
      native.add(s1, b, a, a); // b = 2
      e1.record(s1);
      s2.waitEvent(e1);
      native.epDispatch(
        s2,
        u,
        idx,
        wt,
        2,
        2,
        1,
        rowOf,
        slots.map(s => s.count),
        slots.map(s => s.x),
        slots.map(s => s.idx),
        slots.map(s => s.w),
        null,
        true,
      );
      e2.record(s2);
      s1.waitEvent(e2); // would wait forever if the failed stream's record were skipped
      native.add(s1, b, b, a); // b = 3: skipped, the step failed before it
    });
    for (let rep = 0; rep < 2; rep++) {
      graph.replay();
      s1.synchronize();
      expectCode(() => s2.synchronize(), 'E_INTERNAL', /dispatch failed \(injected by a test\)/);
      expect(Array.from(toArray(b))).toEqual(new Array(16).fill(2));
    }
    // the streams still run eager work, and an event recorded after the replays is waited for
    native.add(s2, b, a, a, 4);
    e1.record(s2);
    s1.waitEvent(e1);
    native.add(s1, b, b, a);
    s1.synchronize();
    s2.synchronize();
    expect(Array.from(toArray(b))).toEqual(new Array(16).fill(6));
    graph.dispose();
    for (const t of [u, idx, wt, rowOf, a, b, ...slots.flatMap(s => [s.count, s.x, s.idx, s.w])]) t.dispose();
    s1.dispose();
    s2.dispose();
  });

  it('a graph whose stream was disposed, replayed and disposed at once: the queued replays never own the stream', () => {
    native.setThreads(2);
    for (let i = 0; i < 20; i++) {
      const s = new Stream('cpu');
      const x = full([3], 1);
      const g = native.captureGraph([s], () => native.scale(s, x, x, 2));
      s.dispose(); // the graph keeps the stream; its replay jobs must not be its last owners
      g.replay();
      g.replay();
      g.dispose();
      native.synchronize('cpu');
      expect(Array.from(toArray(x))).toEqual([4, 4, 4]);
      x.dispose();
    }
  });
});

// [preset, fp8]: the replayed decode step against the eager one, logits compared bit for bit
const models: ['tiny' | 'small', boolean][] = [
  ['tiny', false],
  ['tiny', true],
  ['small', false],
  ['small', true],
];

describe.each(models)('the replayed decode step of a %s checkpoint (fp8 %s) equals the eager step bit for bit', (preset, fp8) => {
  const dir = path.join(root, `${preset}-${fp8 ? 'fp8' : 'bf16'}`);
  let model: Awaited<ReturnType<typeof loadModel>>;
  beforeAll(async () => {
    await initRandom({ preset, out: dir, seed: 19, fp8 });
    model = await loadModel(dir, { backend: 'cpu', maxContext: 64, cacheBlocks: 64 });
    return () => model.dispose();
  }, 300_000);

  // (batches of a graph bucket's size: a padded batch runs more rows than its eager step, and the
  // kernels switch with the row count)
  it.each([
    [1, 2],
    [2, 2],
    [8, 2],
    [4, 3],
    [1, 1],
  ])(
    'batch %i, %i pool threads',
    (batch, threads) => {
      native.setThreads(threads);
      const e = model.engine;
      const ps = Array.from({ length: batch }, (_, b) => Array.from({ length: 2 + b }, (_, i) => (7 * b + 3 * i + 1) % 500));
      const seqs = ps.map(() => e.newSequence());
      e.forward(seqs, ps).logits.dispose();
      for (let step = 0; step < 2; step++) {
        const tokens = ps.map((_, b) => [(11 * step + b + 2) % 500]);
        const replay = e.forward(seqs, tokens);
        for (const s of seqs) s.truncate(s.length - 1);
        const eager = e.forward(seqs, tokens, { eager: true });
        const [r, g] = [Buffer.from(replay.logits.toBytes()), Buffer.from(eager.logits.toBytes())];
        expect(r.length).toBe(batch * e.dims.vocab * 4);
        expect(new Float32Array(r.buffer, r.byteOffset, r.length / 4).every(Number.isFinite)).toBe(true);
        expect(r.equals(g), `step ${step}`).toBe(true);
        replay.logits.dispose();
        eager.logits.dispose();
      }
      for (const s of seqs) s.release();
    },
    300_000,
  );
});
