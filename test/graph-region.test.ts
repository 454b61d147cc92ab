// A replayed CPU graph runs as one parallel region (native/device.cc Graph::replay,
// native/cpu/threadpool.h): every stream's captured work in capture order on the pool, its workers
// kept inside the step. Its results are those of the same ops queued one by one (the eager step),
// bit for bit, whatever the pool size; a kernel that throws inside the region fails its own stream
// with its typed error, never hangs or aborts, and the streams and the graph stay usable.
import { beforeAll, describe, expect, it } from 'vitest';
import path from 'node:path';
import { native } from '../lib/native.js';
import { Event, Stream } from '../lib/device.js';
import { Tensor, empty, full, tensor, toArray } from '../lib/tensor.js';
import { int4WeightTensor } from '../lib/int4.js';
import { initRandom } from '../lib/init-random.js';
import { loadModel } from '../lib/generate.js';
import { expectCode, rng, scratchDir } from './helpers.js';

const root = scratchDir('lc-graph-region-');

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

  // Consecutive one-row linears that touch none of each other's outputs run as one fused phase
  // (their rows split over the threads together, device.cc Graph::Plan::fuse); a linear that reads
  // its neighbour's output, or shares its output, does not join it.
  it.each([1, 2, 3, 5])('fused one-row linears of every weight format give the eager bits with %i pool threads', threads => {
    native.setThreads(threads);
    const r = rng(40 + threads);
    const k = 291,
      k2 = 200;
    const codes = (n: number, kk: number) =>
      Uint8Array.from({ length: n * kk }, () => (r.int(254) >= 0x7f ? r.int(0x7f) : r.int(254)));
    // [weight, scale] of odd row counts in each format (fp8 over 128-row scale blocks, int4 groups of 32 / 128)
    const weights: [Tensor, Tensor | null][] = [
      [tensor(r.array(37 * k), [37, k]), null],
      [tensor(r.array(301 * k), [301, k], { dtype: 'bf16' }), null],
      [new Tensor('fp8_e4m3', [259, k], 'cpu', codes(259, k)), tensor(r.array(3 * 3, 0.01, 0.02), [3, 3])],
      [
        new Tensor(
          'int8',
          [131, k],
          'cpu',
          Int8Array.from({ length: 131 * k }, () => r.int(255) - 127),
        ),
        tensor(r.array(131, 0.001, 0.01), [131]),
      ],
      [
        int4WeightTensor(
          Uint8Array.from({ length: 67 * 10 * 16 }, () => r.int(256)),
          67,
          k,
          32,
        ),
        tensor(r.array(67 * 10, 0.01, 0.02), [67, 10], { dtype: 'bf16' }),
      ],
      [
        int4WeightTensor(
          Uint8Array.from({ length: 45 * 3 * 64 }, () => r.int(256)),
          45,
          k,
          128,
        ),
        tensor(r.array(45 * 3 * 2, 0.01, 0.02), [45, 3, 2], { dtype: 'bf16' }),
      ],
    ];
    const x = tensor(r.array(k), [1, k]),
      x2 = tensor(r.array(k2), [1, k2]),
      w2 = tensor(r.array(19 * k2), [19, k2], { dtype: 'bf16' }),
      w3 = tensor(r.array(23 * 37), [23, 37]);
    const outs = (fill: number) => weights.map(([w]) => full([1, w.shape[0]!], fill));
    const run = (s: Stream | null, ys: Tensor[], y2: Tensor, y3: Tensor) => {
      weights.forEach(([w, sc], i) => {
        native.linear(s, ys[i]!, x, w, sc);
      });
      native.linear(s, y2, x2, w2); // another input: joins the phase
      const flat = ys[1]!.view([ys[1]!.shape[1]!]),
        head = flat.narrow(0, 19),
        part = head.view([1, 19]);
      native.linear(s, part, x2, w2); // writes into an output of the phase: starts the next
      for (const t of [flat, head, part]) t.dispose();
      native.linear(s, y3, ys[0]!, w3); // reads the first phase's output: joins the second
    };
    const ye = outs(0),
      y2e = empty([1, 19]),
      y3e = empty([1, 23]);
    run(null, ye, y2e, y3e);
    native.synchronize('cpu');
    const s = new Stream('cpu');
    const yr = outs(Number.NaN),
      y2r = full([1, 19], Number.NaN),
      y3r = full([1, 23], Number.NaN);
    const graph = native.captureGraph([s], () => run(s, yr, y2r, y3r));
    s.synchronize();
    native.graphProfile(true);
    for (let rep = 0; rep < 2; rep++) {
      for (const y of [...yr, y2r, y3r]) y.copyFromBytes(new Float32Array(y.shape[1]!).fill(Number.NaN));
      graph.replay();
      s.synchronize();
      [...ye, y2e, y3e].forEach((want, i) => {
        const got = [...yr, y2r, y3r][i]!;
        expect(Buffer.from(got.toBytes()).equals(Buffer.from(want.toBytes())), `output ${i}, replay ${rep}`).toBe(true);
      });
    }
    const [prof] = native.graphProfile(false);
    expect(prof!.replays).toBe(2);
    expect(prof!.nodes.map(n => [n.op, n.phase])).toEqual([
      ...weights.map(() => ['linear', 7]),
      ['linear', 7],
      ['linear', 2],
      ['linear', 2],
    ]);
    expect(prof!.nodes.reduce((a, n) => a + n.weightBytes, 0)).toBeGreaterThan(0);
    graph.dispose();
    s.dispose();
    for (const t of [x, x2, w2, w3, y2e, y3e, y2r, y3r, ...ye, ...yr, ...weights.flat()]) t?.dispose();
  });

  // LONGCAT_STEAL=1 at a region's start splits GEMVs and fused phases by steal_for (each thread one
  // contiguous share, stealing at the tail) instead of the chunked split: the same bits.
  it.each([2, 3, 5])(
    'a replayed step of big one-row linears gives the same bits with and without steal_for, %i pool threads',
    threads => {
      native.setThreads(threads);
      const r = rng(70 + threads);
      const k = 333;
      const x = tensor(r.array(k), [1, k]);
      const ws = [1999, 517, 1031].map(n => tensor(r.array(n * k), [n, k], { dtype: 'bf16' }));
      const ys = ws.map(w => full([1, w.shape[0]!], Number.NaN));
      const w4 = tensor(r.array(1999 * 517), [1999, 517], { dtype: 'bf16' });
      const z = full([1, 1999], Number.NaN);
      const s = new Stream('cpu');
      const graph = native.captureGraph([s], () => {
        for (const [i, w] of ws.entries()) native.linear(s, ys[i]!, x, w); // one fused phase
        native.linear(s, z, ys[1]!, w4); // reads a member's output: alone
      });
      const run = (steal: boolean) => {
        if (steal) process.env.LONGCAT_STEAL = '1';
        else delete process.env.LONGCAT_STEAL;
        for (const y of [...ys, z]) y.copyFromBytes(new Float32Array(y.shape[1]!).fill(Number.NaN));
        graph.replay();
        s.synchronize();
        return [...ys, z].map(y => Buffer.from(y.toBytes()));
      };
      try {
        const old = run(false);
        for (let rep = 0; rep < 3; rep++) {
          const now = run(true);
          for (const [i, b] of now.entries()) expect(b.equals(old[i]!), `output ${i}, replay ${rep}`).toBe(true);
        }
        expect(old.every(b => !new Float32Array(b.buffer, b.byteOffset, b.length / 4).some(Number.isNaN))).toBe(true);
      } finally {
        delete process.env.LONGCAT_STEAL;
      }
      graph.dispose();
      for (const u of [x, ...ws, ...ys, w4, z]) u.dispose();
      s.dispose();
    },
  );

  // Each phase's threads prefetch the next weight-streaming phase's first rows when they run out of
  // chunks (the lookahead; LONGCAT_LOOKAHEAD=0: off): a hint only, so the same bits, with and
  // without steal_for, for lone linears and a fused phase, rows shorter and longer than 2 KiB.
  it.each([2, 3, 5])('a replayed step gives the same bits with and without the lookahead, %i pool threads', threads => {
    native.setThreads(threads);
    const r = rng(90 + threads);
    const k = 1501;
    const x = tensor(r.array(k), [1, k]),
      gain = tensor(r.array(k), [k]),
      xn = full([1, k], Number.NaN);
    const ws = [1037, 9, 515].map(n => tensor(r.array(n * k), [n, k], { dtype: 'bf16' }));
    const ys = ws.map(w => full([1, w.shape[0]!], Number.NaN));
    const w2 = tensor(r.array(733 * 515), [733, 515], { dtype: 'bf16' }),
      z = full([1, 733], Number.NaN);
    const w3 = tensor(r.array(211 * 733), [211, 733]),
      u = full([1, 211], Number.NaN);
    const s = new Stream('cpu');
    const graph = native.captureGraph([s], () => {
      native.rmsnorm(s, xn, x, gain, 1e-6); // a phase without weights before the first linears
      for (const [i, w] of ws.entries()) native.linear(s, ys[i]!, xn, w); // one fused phase
      native.linear(s, z, ys[2]!, w2); // alone (reads a member's output)
      native.linear(s, u, z, w3); // alone, f32 rows
    });
    const outs = [xn, ...ys, z, u];
    const run = (ahead: boolean, steal: boolean) => {
      if (ahead) delete process.env.LONGCAT_LOOKAHEAD;
      else process.env.LONGCAT_LOOKAHEAD = '0';
      if (steal) process.env.LONGCAT_STEAL = '1';
      else delete process.env.LONGCAT_STEAL;
      for (const y of outs) y.copyFromBytes(new Float32Array(y.shape[1]!).fill(Number.NaN));
      graph.replay();
      s.synchronize();
      return outs.map(y => Buffer.from(y.toBytes()));
    };
    try {
      const off = run(false, false);
      expect(off.every(b => !new Float32Array(b.buffer, b.byteOffset, b.length / 4).some(Number.isNaN))).toBe(true);
      for (const steal of [false, true])
        for (const ahead of [true, false]) {
          const now = run(ahead, steal);
          for (const [i, b] of now.entries())
            expect(b.equals(off[i]!), `output ${i}, lookahead ${ahead}, steal ${steal}`).toBe(true);
        }
    } finally {
      delete process.env.LONGCAT_LOOKAHEAD;
      delete process.env.LONGCAT_STEAL;
    }
    graph.dispose();
    for (const t of [x, gain, xn, ...ws, ...ys, w2, z, w3, u]) t.dispose();
    s.dispose();
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

  // Graph.prewake() wakes the runner stream's idle thread to spin for the replay about to come
  // (forward() calls it before its host work): a hint that never changes what runs or when it may.
  it.each([1, 2])('a prewoken stream runs the replay, eager work and its own disposal as usual (%i pool threads)', threads => {
    native.setThreads(threads);
    const s = new Stream('cpu');
    const x = full([5], 1);
    const g = native.captureGraph([s], () => native.scale(s, x, x, 3));
    for (let i = 0; i < 4; i++) {
      g.prewake();
      g.prewake(); // twice: still one spin
      g.replay(); // (queued during the spin, or after it ended)
      s.synchronize();
    }
    expect(Array.from(toArray(x))).toEqual([81, 81, 81, 81, 81]);
    native.scale(s, x, x, 2); // busy: the prewake is a no-op
    g.prewake();
    native.scale(s, x, x, 0.5); // eager work after a prewake
    s.synchronize();
    expect(Array.from(toArray(x))).toEqual([81, 81, 81, 81, 81]);
    g.prewake();
    g.dispose();
    g.prewake(); // disposed: nothing
    x.dispose();
    const s2 = new Stream('cpu');
    const g2 = native.captureGraph([s2], () => {});
    g2.prewake();
    g2.dispose();
    s2.dispose(); // (the graph gone: the stream's thread stops whether or not it still spins)
    s.dispose();
  });

  // A stream with nothing queued when the graph is replayed is held by the replay instead of given a
  // job (device.cc Graph::replay): work queued on it meanwhile still runs after the replay, and
  // synchronize() waits for the replay; a stream with work queued takes a job and is waited for.
  it.each([1, 2, 3])(
    'work queued on a replayed graph’s streams runs after the replay, idle or busy (%i pool threads)',
    threads => {
      native.setThreads(threads);
      const r = rng(70 + threads);
      const [k, n] = [1536, 1024];
      const x = tensor(r.array(k), [1, k]),
        w = tensor(r.array(n * k), [n, k]),
        w2 = tensor(r.array(n * n), [n, n]);
      const s1 = new Stream('cpu'),
        s2 = new Stream('cpu');
      const [e1, e2] = [new Event('cpu'), new Event('cpu')];
      const y = empty([1, n]),
        z = empty([1, n]),
        ze = empty([1, n]);
      native.linear(null, y, x, w);
      native.linear(null, ze, y, w2);
      native.scale(null, ze, ze, 2);
      native.synchronize('cpu');
      const graph = native.captureGraph([s1, s2], () => {
        native.linear(s1, y, x, w);
        e1.record(s1);
        s2.waitEvent(e1);
        native.linear(s2, z, y, w2);
      });
      for (const busy of [false, true, false]) {
        z.copyFromBytes(new Float32Array(n).fill(Number.NaN));
        const before = full([1, n], 0);
        if (busy) for (let i = 0; i < 8; i++) native.linear(s2, before, x, w); // s2 has work queued: it takes a job
        graph.replay();
        native.scale(s2, z, z, 2); // queued on s2 during the replay: runs after it
        e2.record(s2);
        s1.waitEvent(e2);
        s1.synchronize(); // (waits for s2's record through the event)
        expect(Buffer.from(z.toBytes()).equals(Buffer.from(ze.toBytes())), `busy ${busy}`).toBe(true);
        s2.synchronize();
        before.dispose();
      }
      graph.dispose();
      for (const t of [x, w, w2, y, z, ze]) t.dispose();
      s1.dispose();
      s2.dispose();
    },
  );
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
