// gatherRows (out[i] = src[idx[i]] along the first dimension, any dtype) against a plain JS byte
// copy on the CPU, its typed errors, and the CUDA kernel against the CPU (on a GPU or the emulator).
import { describe, expect, it } from 'vitest';
import { Stream, Tensor, native } from '../lib/index.js';
import type { DType } from '../lib/index.js';
import { backends, cudaAvailable, expectCode, rng } from './helpers.js';

const DTYPES: [DType, number][] = [
  ['f32', 4],
  ['bf16', 2],
  ['f16', 2],
  ['fp8_e4m3', 1],
  ['int8', 1],
  ['int32', 4],
  ['int64', 8],
];
const POISON = 0xa5;

function randomBytes(r: ReturnType<typeof rng>, n: number): Uint8Array {
  return Uint8Array.from({ length: n }, () => r.int(256));
}

/** src [R, ...rest] of random bits, idx of shape idxShape with values in [0, R), out poisoned. */
function makeCase(
  r: ReturnType<typeof rng>,
  dtype: DType,
  size: number,
  R: number,
  rest: number[],
  idxShape: number[],
  device = 'cpu',
) {
  const rowBytes = rest.reduce((a, b) => a * b, 1) * size;
  const srcBytes = randomBytes(r, R * rowBytes);
  const n = idxShape.reduce((a, b) => a * b, 1);
  const idxVals = Int32Array.from({ length: n }, () => r.int(R));
  return {
    rowBytes,
    srcBytes,
    idxVals,
    src: new Tensor(dtype, [R, ...rest], device, srcBytes),
    idx: new Tensor('int32', idxShape, device, idxVals),
    out: new Tensor(dtype, [...idxShape, ...rest], device, new Uint8Array(n * rowBytes).fill(POISON)),
  };
}

function referenceGather(srcBytes: Uint8Array, rowBytes: number, idx: Int32Array): Uint8Array {
  const out = new Uint8Array(idx.length * rowBytes);
  for (let i = 0; i < idx.length; i++) out.set(srcBytes.subarray(idx[i]! * rowBytes, (idx[i]! + 1) * rowBytes), i * rowBytes);
  return out;
}

const u16 = (b: Uint8Array) => new Uint16Array(b.buffer, b.byteOffset, b.length / 2);
const f32 = (b: Uint8Array) => new Float32Array(b.buffer, b.byteOffset, b.length / 4);

function expectBytes(got: Uint8Array, want: Uint8Array, what: string) {
  expect(got.length, `${what}: length`).toBe(want.length);
  const bad = got.findIndex((v, i) => v !== want[i]);
  if (bad >= 0) expect.fail(`${what}: byte ${bad} is ${got[bad]}, expected ${want[bad]}`);
}

const SHAPES: [number, number[], number[]][] = [
  // rows of src, src's trailing dims, idx shape
  [1, [], [1]],
  [13, [], [5]],
  [13, [7], [33]],
  [5, [3, 5], [2, 3]],
  [9, [129], [4]],
  [3, [0], [6]],
  [11, [4096], [40]], // 40 rows of up to 32 KiB: several threads copy
];

describe('gatherRows', () => {
  it('copies rows bit-exactly for every dtype and shape (plain JS reference)', () => {
    const r = rng(4101);
    for (const [dtype, size] of DTYPES)
      for (const [R, rest, idxShape] of SHAPES) {
        if (rest[0] === 4096 && size > 2) continue; // the large case once per element width is enough
        const c = makeCase(r, dtype, size, R, rest, idxShape);
        native.gatherRows(null, c.out, c.src, c.idx);
        expectBytes(
          c.out.toBytes(),
          referenceGather(c.srcBytes, c.rowBytes, c.idxVals),
          `${dtype} [${R}, ${rest}] idx [${idxShape}]`,
        );
        for (const t of [c.out, c.src, c.idx]) t.dispose();
      }
  });

  it('repeated and reversed indices, and views narrowed off the first row', () => {
    const r = rng(4102);
    const src = new Tensor('int8', [8, 3], 'cpu', randomBytes(r, 24));
    const part = src.narrow(1, 6); // base address not aligned to the row size
    const idx = new Tensor('int32', [7], 'cpu', Int32Array.from([5, 5, 0, 4, 3, 2, 1]));
    const out = new Tensor('int8', [7, 3], 'cpu', new Uint8Array(21).fill(POISON));
    native.gatherRows(null, out, part, idx);
    expectBytes(out.toBytes(), referenceGather(part.toBytes(), 3, Int32Array.from([5, 5, 0, 4, 3, 2, 1])), 'narrowed int8');
  });

  it('an empty idx writes nothing', () => {
    const src = new Tensor('f32', [4, 2], 'cpu', new Float32Array(8).fill(1));
    const out = new Tensor('f32', [0, 2], 'cpu');
    native.gatherRows(null, out, src, new Tensor('int32', [0], 'cpu'));
    native.synchronize('cpu');
    expect(out.toBytes().length).toBe(0);
  });

  it('an out-of-range index is E_ARGUMENT at synchronize, nothing is written, and the stream stays usable', () => {
    const src = new Tensor('bf16', [5, 4], 'cpu', new Uint16Array(20).fill(0x3f80));
    for (const bad of [5, -1, 1 << 30]) {
      const out = new Tensor('bf16', [3, 4], 'cpu', new Uint8Array(24).fill(POISON));
      const s = new Stream('cpu');
      native.gatherRows(s, out, src, new Tensor('int32', [3], 'cpu', Int32Array.from([0, bad, 2])));
      expectCode(
        () => s.synchronize(),
        'E_ARGUMENT',
        new RegExp(`gatherRows: idx\\[1\\] = ${bad} is out of range for 'src' of 5 rows`),
      );
      expectBytes(out.toBytes(), new Uint8Array(24).fill(POISON), `after idx ${bad}`);
      native.gatherRows(s, out, src, new Tensor('int32', [3], 'cpu', Int32Array.from([4, 0, 2])));
      s.synchronize();
      expect(Array.from(u16(out.toBytes()))).toEqual(new Array(12).fill(0x3f80));
      s.dispose();
    }
  });

  it('rejects bad arguments with typed errors', () => {
    const src = new Tensor('f32', [4, 3], 'cpu');
    const idx = new Tensor('int32', [2], 'cpu', Int32Array.from([0, 1]));
    expectCode(
      () => native.gatherRows(null, new Tensor('bf16', [2, 3], 'cpu'), src, idx),
      'E_DTYPE',
      /'out' has dtype bf16, expected f32/,
    );
    expectCode(
      () => native.gatherRows(null, new Tensor('f32', [2, 3], 'cpu'), src, new Tensor('int64', [2], 'cpu')),
      'E_DTYPE',
      /'idx'/,
    );
    expectCode(
      () => native.gatherRows(null, new Tensor('f32', [3, 3], 'cpu'), src, idx),
      'E_SHAPE',
      /'out' has shape \[3, 3\], expected \[2, 3\]/,
    );
    expectCode(
      () => native.gatherRows(null, new Tensor('f32', [2], 'cpu'), new Tensor('f32', [], 'cpu'), idx),
      'E_SHAPE',
      /'src'/,
    );
    const whole = new Tensor('f32', [6, 3], 'cpu');
    expectCode(() => native.gatherRows(null, whole.narrow(3, 2), whole.narrow(0, 4), idx), 'E_ARGUMENT', /overlaps/);
    expectCode(
      () => native.gatherRows(null, new Tensor('f32', [2, 3], 'cpu'), src, 'idx' as unknown as Tensor),
      'E_ARGUMENT',
      /idx/,
    );
  });

  it.runIf(backends.length > 1)('rejects tensors on different devices', () => {
    const src = new Tensor('f32', [4, 3], 'cuda:0');
    const idx = new Tensor('int32', [2], 'cpu', Int32Array.from([0, 1]));
    expectCode(() => native.gatherRows(null, new Tensor('f32', [2, 3], 'cuda:0'), src, idx), 'E_DEVICE', /'idx' is on cpu/);
  });
});

describe.skipIf(!cudaAvailable)('gatherRows on CUDA matches the CPU', () => {
  const dev = 'cuda:0';
  it('every dtype and shape, bit-exact', () => {
    const r = rng(4103);
    for (const [dtype, size] of DTYPES)
      for (const [R, rest, idxShape] of SHAPES) {
        if (rest[0] === 4096 && size > 2) continue;
        const c = makeCase(r, dtype, size, R, rest, idxShape, dev);
        native.gatherRows(null, c.out, c.src, c.idx);
        expectBytes(
          c.out.toBytes(),
          referenceGather(c.srcBytes, c.rowBytes, c.idxVals),
          `cuda ${dtype} [${R}, ${rest}] idx [${idxShape}]`,
        );
        for (const t of [c.out, c.src, c.idx]) t.dispose();
      }
  });

  it('every copy width: rows of 16, 8, 4, 2 and 1 bytes, aligned and not', () => {
    const r = rng(4104);
    for (const rowBytes of [48, 16, 24, 8, 12, 4, 6, 2, 3, 1])
      for (const skip of [0, 1]) {
        const R = 9,
          n = 17;
        const srcBytes = randomBytes(r, R * rowBytes);
        const src = new Tensor('int8', [R, rowBytes], dev, srcBytes);
        const part = src.narrow(skip, R - skip); // skip = 1 moves the base by rowBytes
        const idxVals = Int32Array.from({ length: n }, () => r.int(R - skip));
        const out = new Tensor('int8', [n, rowBytes], dev, new Uint8Array(n * rowBytes).fill(POISON));
        native.gatherRows(null, out, part, new Tensor('int32', [n], dev, idxVals));
        expectBytes(
          out.toBytes(),
          referenceGather(srcBytes.subarray(skip * rowBytes), rowBytes, idxVals),
          `rows of ${rowBytes} bytes, from row ${skip}`,
        );
      }
  });

  it('more rows than one launch has blocks (65535)', () => {
    const r = rng(4105);
    const R = 7,
      n = 70_000;
    const srcBytes = randomBytes(r, R * 2);
    const idxVals = Int32Array.from({ length: n }, () => r.int(R));
    const out = new Tensor('bf16', [n], dev, new Uint8Array(2 * n).fill(POISON));
    native.gatherRows(null, out, new Tensor('bf16', [R], dev, srcBytes), new Tensor('int32', [n], dev, idxVals));
    expectBytes(out.toBytes(), referenceGather(srcBytes, 2, idxVals), `${n} rows`);
  });

  it('an out-of-range index zeroes its row (a kernel cannot raise)', () => {
    const src = new Tensor('f32', [5, 3], dev, new Float32Array(15).fill(2));
    const out = new Tensor('f32', [3, 3], dev, new Float32Array(9).fill(NaN));
    native.gatherRows(null, out, src, new Tensor('int32', [3], dev, Int32Array.from([4, -1, 5])));
    expect(Array.from(f32(out.toBytes()))).toEqual([2, 2, 2, 0, 0, 0, 0, 0, 0]);
  });
});

// gatherColumns: out[.., i] = src[.., idx[i]] along the last dimension (act-order GPTQ activations).
describe('gatherColumns', () => {
  /** src [...lead, k] of random bits, idx [n] in [0, k) (a permutation when n = k), out poisoned. */
  function columnCase(
    r: ReturnType<typeof rng>,
    dtype: DType,
    size: number,
    lead: number[],
    k: number,
    n: number,
    device = 'cpu',
  ) {
    const rows = lead.reduce((a, b) => a * b, 1);
    const srcBytes = randomBytes(r, rows * k * size);
    const order = Array.from({ length: n }, (_, i) => (n === k ? i : r.int(k)));
    if (n === k)
      for (let i = n - 1; i > 0; i--) {
        const j = r.int(i + 1);
        [order[i], order[j]] = [order[j]!, order[i]!];
      }
    const idxVals = Int32Array.from(order);
    const want = new Uint8Array(rows * n * size);
    for (let t = 0; t < rows; t++)
      for (let i = 0; i < n; i++)
        want.set(srcBytes.subarray((t * k + idxVals[i]!) * size, (t * k + idxVals[i]! + 1) * size), (t * n + i) * size);
    return {
      want,
      src: new Tensor(dtype, [...lead, k], device, srcBytes),
      idx: new Tensor('int32', [n], device, idxVals),
      out: new Tensor(dtype, [...lead, n], device, new Uint8Array(rows * n * size).fill(POISON)),
    };
  }
  const CASES: [number[], number, number][] = [
    [[1], 1, 1],
    [[7], 129, 129],
    [[3, 5], 33, 70],
    [[40], 4096, 4096],
    [[0], 5, 5],
  ];

  it.each(backends)('every dtype and shape against a JS copy, bit-exact (%s)', device => {
    const r = rng(31);
    const s = new Stream(device);
    for (const [dtype, size] of DTYPES)
      for (const [lead, k, n] of CASES) {
        const c = columnCase(r, dtype, size, lead, k, n, device);
        native.gatherColumns(s, c.out, c.src, c.idx);
        s.synchronize();
        expectBytes(c.out.toBytes(), c.want, `${device} ${dtype} [${lead}, ${k}] -> ${n}`);
        for (const t of [c.src, c.idx, c.out]) t.dispose();
      }
    s.dispose();
  });

  it('an out-of-range index is E_ARGUMENT at synchronize and nothing is written', () => {
    const src = new Tensor('f32', [2, 4], 'cpu', new Float32Array(8).fill(1));
    const out = new Tensor('f32', [2, 3], 'cpu', new Float32Array(6).fill(7));
    native.gatherColumns(null, out, src, new Tensor('int32', [3], 'cpu', Int32Array.from([0, 4, 1])));
    expectCode(() => native.synchronize('cpu'), 'E_ARGUMENT', /idx\[1\] = 4 is out of range for 'src' of 4 columns/);
    expect(Array.from(f32(out.toBytes()))).toEqual([7, 7, 7, 7, 7, 7]);
  });

  it('rejects bad arguments with typed errors', () => {
    const src = new Tensor('f32', [2, 4], 'cpu', new Float32Array(8));
    const idx = new Tensor('int32', [3], 'cpu', Int32Array.from([0, 1, 2]));
    expectCode(() => native.gatherColumns(null, new Tensor('f32', [2, 4]), src, idx), 'E_SHAPE', /expected \[2, 3\]/);
    expectCode(() => native.gatherColumns(null, new Tensor('bf16', [2, 3]), src, idx), 'E_DTYPE', /'out' has dtype bf16/);
    expectCode(() => native.gatherColumns(null, new Tensor('f32', [2, 3]), src, new Tensor('f32', [3])), 'E_DTYPE', /idx/);
    expectCode(
      () =>
        native.gatherColumns(
          null,
          new Tensor('f32', [2, 3]),
          src,
          new Tensor('int32', [1, 3], 'cpu', Int32Array.from([0, 1, 2])),
        ),
      'E_SHAPE',
      /one dimension/,
    );
    const whole = new Tensor('f32', [8, 4], 'cpu', new Float32Array(32));
    const four = new Tensor('int32', [4], 'cpu', Int32Array.from([3, 2, 1, 0]));
    expectCode(() => native.gatherColumns(null, whole.narrow(1, 2), whole.narrow(0, 2), four), 'E_ARGUMENT', /overlaps/);
  });
});
