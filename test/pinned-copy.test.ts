// Pinned host tensors (native.pinnedTensor, empty(..., { pinned: true })): the pinned pool's
// accounting and release on dispose; native.copy (dst <- src on a stream) between the CPU and a
// CUDA device in every direction, from pinned and pageable memory, against the source's bytes,
// into poisoned outputs; its typed errors; a copy captured into a CUDA graph (pinned only),
// replayed with new contents. The CUDA half runs on a GPU or the emulator, whose streams defer
// their work until waited for, so a copy read or released too early shows as wrong bytes.
import { describe, expect, it } from 'vitest';
import { Event, Stream, empty, memoryStats, native, tensor, toArray } from '../lib/index.js';
import type { DType, Tensor } from '../lib/index.js';
import { cudaAvailable, expectCode, rng } from './helpers.js';

const emulated = native.buildInfo().cudaArchs === 'emulated';

/** `n` random bytes. */
function randomBytes(seed: number, n: number): Uint8Array {
  const r = rng(seed);
  return Uint8Array.from({ length: n }, () => Math.floor(r.uniform(0, 1) * 256));
}

/** A tensor of `dtype` and `shape` on `device` holding random bytes (pinned when asked), and those bytes. */
function filled(seed: number, dtype: DType, shape: number[], device: string, pinned = false): { t: Tensor; bytes: Uint8Array } {
  const t = pinned ? empty(shape, { dtype, pinned: true }) : empty(shape, { dtype, device });
  const bytes = randomBytes(seed, t.nbytes);
  t.copyFromBytes(bytes);
  return { t, bytes };
}

/** A tensor whose bytes are all 0xff (NaN in every float dtype): a poisoned output. */
function poisoned(dtype: DType, shape: number[], device: string, pinned = false): Tensor {
  const t = pinned ? empty(shape, { dtype, pinned: true }) : empty(shape, { dtype, device });
  t.copyFromBytes(new Uint8Array(t.nbytes).fill(0xff));
  return t;
}

const CASES: [DType, number[]][] = [
  ['f32', [7, 13]],
  ['bf16', [3, 5, 11]],
  ['int32', [1]],
  ['int8', [517]],
  ['f16', [2, 0, 3]], // empty
  ['int64', [9, 3]],
];

describe('pinned tensors', () => {
  it('come from the pinned pool, not the CPU pool, and are freed (not cached) on dispose', () => {
    const cpuBefore = memoryStats('cpu').liveBytes;
    const before = native.pinnedMemoryStats();
    const a = empty([33, 7], { dtype: 'bf16', pinned: true });
    const b = native.pinnedTensor('f32', [1000]);
    expect(a.device).toBe('cpu');
    expect(a.shape).toEqual([33, 7]);
    expect(a.dtype).toBe('bf16');
    // page-locked when the CUDA backend has a device, plain host memory otherwise
    expect(a.pinned).toBe(cudaAvailable);
    expect(b.pinned).toBe(cudaAvailable);
    const pageable = empty([4]);
    expect(pageable.pinned).toBe(false);
    pageable.dispose();
    const during = native.pinnedMemoryStats();
    expect(during.liveBlocks).toBe(before.liveBlocks + 2);
    expect(during.liveBytes).toBeGreaterThanOrEqual(before.liveBytes + a.nbytes + b.nbytes);
    expect(during.peakBytes).toBeGreaterThanOrEqual(during.liveBytes);
    expect(memoryStats('cpu').liveBytes).toBe(cpuBefore);
    // usable like any CPU tensor
    const v = Float32Array.from({ length: 1000 }, (_, i) => i * 0.5 - 7);
    b.copyFromBytes(v);
    expect(toArray(b)).toEqual(v);
    const view = b.narrow(10, 5);
    a.dispose();
    b.dispose();
    expect(native.pinnedMemoryStats().liveBlocks).toBe(before.liveBlocks + 1); // the view keeps b's block
    expect(Array.from(toArray(view))).toEqual(Array.from(v.subarray(10, 15)));
    view.dispose();
    const after = native.pinnedMemoryStats();
    expect(after.liveBlocks).toBe(before.liveBlocks);
    expect(after.liveBytes).toBe(before.liveBytes);
    expect(after.cachedBytes).toBe(0);
  });

  it('bad arguments are typed errors', () => {
    expectCode(() => empty([2], { pinned: true, device: 'cuda:0' }), 'E_DEVICE', /pinned memory is host memory/);
    expectCode(() => native.pinnedTensor('f33' as DType, [2]), 'E_DTYPE', /unknown dtype 'f33'/);
    expectCode(() => native.pinnedTensor('f32', [2, -1]), 'E_SHAPE', /non-negative integers/);
    expectCode(() => native.pinnedTensor('f32', 5 as unknown as number[]), 'E_SHAPE', /non-negative integers/);
  });
});

describe('copy on the CPU', () => {
  it('copies every dtype between pageable and pinned tensors, views included, on a CPU stream', () => {
    using s = new Stream('cpu');
    CASES.forEach(([dtype, shape], i) => {
      for (const [srcPinned, dstPinned] of [
        [false, false],
        [true, false],
        [false, true],
        [true, true],
      ]) {
        const { t: src, bytes } = filled(100 + i, dtype, shape, 'cpu', srcPinned);
        const dst = poisoned(dtype, shape, 'cpu', dstPinned);
        native.copy(s, dst, src);
        s.synchronize();
        expect(dst.toBytes()).toEqual(bytes);
        src.dispose();
        dst.dispose();
      }
    });
    // narrowed views of one storage: rows 1..3 into rows 5..7
    const { t: whole, bytes } = filled(7, 'f32', [8, 3], 'cpu');
    const from = whole.narrow(1, 3),
      to = whole.narrow(5, 3);
    native.copy(null, to, from);
    const got = whole.toBytes();
    expect(got.subarray(5 * 12, 8 * 12)).toEqual(bytes.subarray(12, 4 * 12));
    expect(got.subarray(0, 5 * 12)).toEqual(bytes.subarray(0, 5 * 12));
  });

  it('bad arguments are typed errors naming the argument', () => {
    const a = empty([2, 3]),
      b = empty([2, 3]);
    expectCode(
      () => native.copy(null, empty([2, 3], { dtype: 'bf16' }), a),
      'E_DTYPE',
      /copy: 'dst' has dtype bf16 but 'src' has f32/,
    );
    expectCode(() => native.copy(null, empty([3, 2]), a), 'E_SHAPE', /copy: 'dst' has shape \[3, 2\] but 'src' has \[2, 3\]/);
    expectCode(() => native.copy(null, empty([6]), a), 'E_SHAPE', /copy: 'dst' has shape \[6\]/);
    const whole = empty([4, 3]);
    expectCode(() => native.copy(null, whole.narrow(1, 2), whole.narrow(0, 2)), 'E_ARGUMENT', /copy: 'dst' overlaps 'src'/);
    expectCode(() => native.copy(null, a, a), 'E_ARGUMENT', /overlaps/);
    expectCode(() => native.copy(null, 'x' as unknown as Tensor, b), 'E_ARGUMENT', /dst/);
    b.dispose();
    expectCode(() => native.copy(null, a, b), 'E_DISPOSED');
    if (cudaAvailable) {
      using gpu = new Stream('cuda:0');
      expectCode(() => native.copy(gpu, a, empty([2, 3])), 'E_DEVICE', /on cuda:0|cpu/);
    }
  });
});

describe('copyBytes on the CPU', () => {
  it('writes the bytes as they were at the call, in stream order behind the work queued before it', () => {
    using s = new Stream('cpu');
    const dst = empty([5], { dtype: 'int32' }),
      src = tensor([10, 11, 12, 13, 14], [5], { dtype: 'int32' });
    const host = new Int32Array([1, 2, 3, 4, 5]);
    native.copy(s, dst, src); // queued before: overwritten by the bytes
    native.copyBytes(s, dst, host);
    host.fill(-1); // after the call: not what is copied
    s.synchronize();
    expect([...toArray(dst)]).toEqual([1, 2, 3, 4, 5]);
    // a view as the destination, a typed array view as the bytes
    const whole = new Int32Array([0, 7, 8, 0]);
    const part = dst.narrow(1, 2);
    native.copyBytes(null, part, whole.subarray(1, 3));
    native.synchronize('cpu');
    expect([...toArray(dst)]).toEqual([1, 7, 8, 4, 5]);
    for (const t of [part, dst, src]) t.dispose();
  });

  it('bad arguments are typed errors', () => {
    const a = empty([2, 3]);
    expectCode(() => native.copyBytes(null, a, new Float32Array(5)), 'E_SHAPE', /copyBytes: 'bytes' has 20 bytes but 'dst' 24/);
    expectCode(() => native.copyBytes(null, a, [1, 2] as unknown as Float32Array), 'E_ARGUMENT', /typed array/);
    expectCode(() => native.copyBytes(null, 'x' as unknown as Tensor, new Float32Array(6)), 'E_ARGUMENT', /dst/);
    if (cudaAvailable)
      expectCode(() => native.copyBytes(null, empty([6], { device: 'cuda:0' }), new Float32Array(6)), 'E_DEVICE');
    a.dispose();
    expectCode(() => native.copyBytes(null, a, new Float32Array(6)), 'E_DISPOSED');
  });
});

describe.skipIf(!cudaAvailable)('copy between the CPU and cuda:0', () => {
  const dev = 'cuda:0';

  it('cpu -> cuda, cuda -> cpu and cuda -> cuda, pinned and pageable, every dtype, into poisoned outputs', () => {
    using s = new Stream(dev);
    CASES.forEach(([dtype, shape], i) => {
      for (const pinned of [false, true]) {
        const { t: host, bytes } = filled(200 + i, dtype, shape, 'cpu', pinned);
        const a = poisoned(dtype, shape, dev),
          b = poisoned(dtype, shape, dev);
        const back = poisoned(dtype, shape, 'cpu', pinned);
        native.copy(s, a, host); // up
        native.copy(s, b, a); // across
        native.copy(s, back, b); // down
        // toBytes waits for the copies into pinned memory (and the device, for the device tensors)
        expect(back.toBytes(), `${dtype} ${pinned ? 'pinned' : 'pageable'}`).toEqual(bytes);
        expect(b.toBytes()).toEqual(bytes);
        for (const t of [host, a, b, back]) t.dispose();
      }
    });
  });

  it('waits for queued CPU work on the host side: a gather queued into the source is copied', () => {
    using s = new Stream(dev);
    const r = rng(5);
    const R = 37,
      D = 11,
      n = 9;
    const table = tensor(r.array(R * D), [R, D]);
    const pick = Int32Array.from({ length: n }, () => Math.floor(r.uniform(0, 1) * R));
    const staging = empty([n, D], { pinned: true });
    const out = poisoned('f32', [n, D], dev);
    native.gatherRows(null, staging, table, tensor(pick, [n], { dtype: 'int32' })); // queued on the CPU stream
    native.copy(s, out, staging);
    const t = toArray(table) as Float32Array,
      got = toArray(out) as Float32Array;
    for (let i = 0; i < n; i++)
      expect(Array.from(got.subarray(i * D, (i + 1) * D))).toEqual(Array.from(t.subarray(pick[i]! * D, (pick[i]! + 1) * D)));
  });

  it('a pinned source disposed while its copy is queued is released only after the copy read it', () => {
    using s = new Stream(dev);
    const before = native.pinnedMemoryStats().liveBytes;
    const { t: src, bytes } = filled(9, 'bf16', [129, 5], 'cpu', true);
    const dst = poisoned('bf16', [129, 5], dev);
    native.copy(s, dst, src);
    src.dispose(); // the queued copy still reads it: the release waits for the copy
    expect(native.pinnedMemoryStats().liveBytes).toBe(before);
    // the freed memory is overwritten by the next host allocations
    const other = filled(10, 'bf16', [129, 5], 'cpu', true);
    expect(dst.toBytes()).toEqual(bytes);
    other.t.dispose();
  });

  it('a copy captured into a graph uploads the pinned buffer at each replay; the graph keeps the buffer', () => {
    const s = native.defaultStream(dev);
    const before = native.pinnedMemoryStats();
    const shape = [5, 3, 7];
    const staging = empty(shape, { pinned: true });
    const up = poisoned('f32', shape, dev);
    const down = poisoned('f32', shape, 'cpu', true);
    const doubled = poisoned('f32', shape, dev);
    const graph = native.captureGraph([s], () => {
      native.copy(s, up, staging);
      native.add(s, doubled, up, up); // a kernel between the two copies reads the upload
      native.copy(s, down, doubled);
    });
    const done = new Event(dev);
    try {
      for (let step = 0; step < 3; step++) {
        const r = rng(300 + step);
        const vals = Float32Array.from({ length: 105 }, () => r.normal());
        staging.copyFromBytes(vals);
        graph.replay();
        done.record(s);
        done.synchronize(); // the replay's copy read the staging buffer before the next step rewrites it
        expect(toArray(up)).toEqual(vals);
        expect(toArray(down)).toEqual(vals.map(v => 2 * v)); // exact in f32
      }
      staging.dispose();
      down.dispose();
      // the graph's copies still address them
      expect(native.pinnedMemoryStats().liveBlocks).toBe(before.liveBlocks + 2);
    } finally {
      graph.dispose();
    }
    expect(native.pinnedMemoryStats().liveBlocks).toBe(before.liveBlocks);
    expect(native.pinnedMemoryStats().liveBytes).toBe(before.liveBytes);
  });

  it('a captured copy from or into pageable memory is a typed error, and the capture is abandoned cleanly', () => {
    const s = native.defaultStream(dev);
    const pageable = empty([4, 4]);
    const d = empty([4, 4], { device: dev });
    expectCode(
      () => native.captureGraph([s], () => native.copy(s, d, pageable)),
      'E_ARGUMENT',
      /copy: 'src' is pageable host memory, which a copy captured into a CUDA graph cannot use/,
    );
    expectCode(() => native.captureGraph([s], () => native.copy(s, pageable, d)), 'E_ARGUMENT', /'dst' is pageable host memory/);
    // the stream works as before: an eager copy of pageable memory
    const v = Float32Array.from({ length: 16 }, (_, i) => i - 3.25);
    pageable.copyFromBytes(v);
    native.copy(s, d, pageable);
    expect(toArray(d)).toEqual(v);
  });

  it.skipIf(!emulated)('emulated: a copy into pinned memory is queued until waited for (toBytes waits for it)', () => {
    using s = new Stream(dev);
    const { t: src, bytes } = filled(12, 'int32', [64], dev);
    const dst = poisoned('int32', [64], 'cpu', true);
    native.copy(s, dst, src);
    // nothing ran the stream yet: a CPU op on the destination sees the poison
    const peek = empty([64], { dtype: 'int32' });
    native.copy(null, peek, dst);
    expect(peek.toBytes()).toEqual(new Uint8Array(256).fill(0xff));
    expect(dst.toBytes()).toEqual(bytes);
  });
});
