// The native core: build facts and devices, tensors (dtypes, views, copies, disposal, pool
// accounting), streams and events.
import { describe, expect, it } from 'vitest';
import {
  Event,
  Stream,
  Tensor,
  buildInfo,
  cpuFeatures,
  devices,
  empty,
  full,
  memoryStats,
  native,
  tensor,
  toArray,
} from '../lib/index.js';
import { cudaAvailable, expectClose, rng, expectCode } from './helpers.js';

const dtypes = ['f32', 'bf16', 'f16', 'fp8_e4m3', 'int8', 'int32', 'int64'] as const;
const sizes: Record<string, number> = { f32: 4, bf16: 2, f16: 2, fp8_e4m3: 1, int8: 1, int32: 4, int64: 8 };

describe('build and devices', () => {
  it('reports build facts and CPU features', () => {
    const b = buildInfo();
    expect(typeof b.cuda).toBe('boolean');
    expect(b.napiVersion).toBeGreaterThanOrEqual(8);
    const f = cpuFeatures();
    expect(['scalar', 'avx2', 'avx512']).toContain(f.isa);
    if (f.isa === 'avx512') expect(f.avx512f).toBe(true);
    const d = devices();
    expect(d[0]).toMatchObject({ id: 'cpu', kind: 'cpu' });
    expect(d[0]!.kind === 'cpu' && d[0]!.threads).toBeGreaterThanOrEqual(1);
  });

  it('reports CUDA unavailable without throwing, and a cuda tensor gives E_DEVICE', () => {
    const s = native.cudaStatus();
    expect(s.available).toBe(cudaAvailable);
    if (!s.available) {
      expect(s.reason.length).toBeGreaterThan(0);
      expectCode(() => new Tensor('f32', [2], 'cuda:0'), 'E_DEVICE', /CUDA is unavailable/);
    }
    expectCode(() => new Tensor('f32', [2], 'tpu'), 'E_DEVICE', /bad device 'tpu'/);
  });
});

describe('tensors', () => {
  it.each(dtypes)('round-trips random bytes exactly for %s', dtype => {
    const r = rng(dtype.length * 7919);
    for (const shape of [[1], [7], [3, 17], [2, 3, 5], [0, 4]]) {
      const n = shape.reduce((a, b) => a * b, 1) * sizes[dtype]!;
      const bytes = Uint8Array.from({ length: n }, () => r.int(256));
      const t = new Tensor(dtype, shape, 'cpu', bytes);
      expect(t.dtype).toBe(dtype);
      expect(t.shape).toEqual(shape);
      expect(t.nbytes).toBe(n);
      expect(t.toBytes()).toEqual(bytes);
      t.dispose();
    }
  });

  it('encodes numbers into each dtype and decodes them back', () => {
    const vals = [0, 1, -2.5, 3.75, 104, -0.125]; // all exact in fp8_e4m3
    const ints = [0, 1, -2, 3, 104, -128];
    for (const dtype of ['f32', 'bf16', 'f16', 'fp8_e4m3', 'int8', 'int32', 'int64'] as const) {
      const want = dtype.startsWith('int') ? ints : vals;
      const t = tensor(want, [2, 3], { dtype });
      expect(Array.from(toArray(t))).toEqual(want);
      t.dispose();
    }
  });

  it('views and narrows share storage', () => {
    const t = tensor([0, 1, 2, 3, 4, 5], [3, 2]);
    const v = t.view([-1]);
    expect(v.shape).toEqual([6]);
    const n = t.narrow(1, 2);
    expect(Array.from(toArray(n))).toEqual([2, 3, 4, 5]);
    expectCode(() => t.view([4, 2]), 'E_SHAPE', /has 8 elements/);
    expectCode(() => t.narrow(2, 2), 'E_SHAPE', /out of range/);
    for (const x of [t, v, n]) x.dispose();
  });

  it('dispose is idempotent, Symbol.dispose works, and disposed tensors give E_DISPOSED', () => {
    const t = tensor([1, 2, 3], [3]);
    t.dispose();
    t.dispose();
    expect(t.disposed).toBe(true);
    expectCode(() => t.toBytes(), 'E_DISPOSED');
    expectCode(() => t.shape, 'E_DISPOSED');
    {
      using u = tensor([1], [1]);
      expect(u.disposed).toBe(false);
    }
  });

  it('rejects bad shapes, dtypes and byte counts with typed errors', () => {
    expectCode(() => new Tensor('f64' as never, [2]), 'E_DTYPE', /unknown dtype 'f64'/);
    expectCode(() => new Tensor('f32', [2, -1]), 'E_SHAPE');
    expectCode(() => new Tensor('f32', [2.5]), 'E_SHAPE');
    expectCode(() => new Tensor('f32', [3], 'cpu', new Float32Array(2)), 'E_SHAPE', /has 8 bytes but f32 \[3\] needs 12/);
    expectCode(() => tensor([1, 2], [3]), 'E_SHAPE');
  });

  it('turns a failed allocation into E_OOM naming the size', () => {
    expectCode(() => new Tensor('f32', [2 ** 40]), 'E_OOM', /4398046511104 bytes/);
  });

  it('releases tensors nobody disposed once they are garbage collected', async () => {
    const gc = (globalThis as { gc?: () => void }).gc;
    expect(gc, 'vitest runs with --expose-gc (vitest.config.ts)').toBeTypeOf('function');
    native.synchronize('cpu');
    const before = memoryStats().liveBytes;
    (() => {
      for (let i = 0; i < 100; i++) empty([1024, 16]); // 64 KiB each, never disposed
    })();
    expect(memoryStats().liveBytes).toBeGreaterThan(before);
    for (let i = 0; i < 20 && memoryStats().liveBytes > before; i++) {
      gc!();
      await new Promise(r => setTimeout(r, 10)); // finalizers run after the collection
    }
    expect(memoryStats().liveBytes).toBe(before);
  });

  it('returns every byte to the pool after 10,000 tensors are created and disposed', () => {
    native.synchronize('cpu');
    const before = memoryStats().liveBytes;
    for (let i = 0; i < 10_000; i++) {
      const t = empty([1 + (i % 97), 3], { dtype: i % 2 ? 'bf16' : 'f32' });
      t.dispose();
    }
    native.synchronize('cpu');
    expect(memoryStats().liveBytes).toBe(before);
  });
});

describe('streams and events', () => {
  it('orders work across two streams with an event', () => {
    const s1 = new Stream('cpu'),
      s2 = new Stream('cpu');
    const n = 257;
    const r = rng(5);
    const x = tensor(r.array(64 * n), [64, n]);
    const w = tensor(r.array(n * n), [n, n]);
    const y = empty([64, n]),
      z = empty([64, n]);
    native.linear(s1, y, x, w);
    const e = new Event('cpu');
    e.record(s1);
    s2.waitEvent(e);
    native.linear(s2, z, y, w); // reads y: must run after s1's linear
    s2.synchronize();
    expect(e.query()).toBe(true);
    // The same two products on the default stream give identical bits.
    const y2 = empty([64, n]),
      z2 = empty([64, n]);
    native.linear(null, y2, x, w);
    native.linear(null, z2, y2, w);
    expect(z.toBytes()).toEqual(z2.toBytes());
    for (const t of [x, w, y, z, y2, z2]) t.dispose();
    s1.dispose();
    s2.dispose();
  });

  it('captures two streams joined by events into a graph and replays it with new inputs', () => {
    const s1 = new Stream('cpu'),
      s2 = new Stream('cpu');
    const r = rng(9);
    const [t, k, n] = [5, 33, 17];
    const x = tensor(r.array(t * k), [t, k]);
    const w = tensor(r.array(n * k), [n, k]);
    const y = empty([t, n]),
      z = empty([t, n]);
    const e1 = new Event('cpu'),
      e2 = new Event('cpu');
    const graph = native.captureGraph([s1, s2], () => {
      native.linear(s1, y, x, w);
      e1.record(s1);
      s2.waitEvent(e1);
      native.add(s2, z, y, y, 0.5); // z = 1.5 y, on the second stream
      e2.record(s2);
      s1.waitEvent(e2);
      native.add(s1, y, y, z); // y = 2.5 x w^T, after the second stream's add
    });
    const wv = toArray(w);
    for (let step = 0; step < 4; step++) {
      const xs = r.array(t * k);
      x.copyFromBytes(xs);
      graph.replay();
      s1.synchronize();
      s2.synchronize();
      const want = new Float64Array(t * n);
      for (let i = 0; i < t; i++)
        for (let j = 0; j < n; j++) {
          let acc = 0;
          for (let c = 0; c < k; c++) acc += xs[i * k + c]! * wv[j * k + c]!;
          want[i * n + j] = 2.5 * acc;
        }
      expectClose(toArray(y), want, 1e-4, 1e-5, `replay ${step}`);
    }
    graph.dispose();
    for (const u of [x, w, y, z]) u.dispose();
    s1.dispose();
    s2.dispose();
  });

  it('measures elapsed time between events around real work, antisymmetric', () => {
    const s = new Stream('cpu');
    const a = new Event('cpu'),
      b = new Event('cpu');
    const x = full([64, 512], 1),
      w = full([512, 512], 1),
      y = full([64, 512], 0);
    a.record(s);
    native.linear(s, y, x, w); // 16.8 MFLOP: never zero time on a monotonic nanosecond clock
    b.record(s);
    const ms = a.elapsedMs(b);
    expect(ms).toBeGreaterThan(0);
    expect(b.elapsedMs(a)).toBeCloseTo(-ms, 9);
    expect(toArray(y)[0]).toBe(512);
    for (const t of [x, w, y]) t.dispose();
    s.dispose();
  });
});
