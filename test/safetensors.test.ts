// safetensors: writer -> parser -> memory map round trips, header validation with typed errors,
// and the native mmap.
import { afterAll, describe, expect, it } from 'vitest';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { native } from '../lib/native.js';
import {
  buildSafetensorsHeader,
  parseSafetensors,
  readSafetensorsHeader,
  writeSafetensors,
  SAFETENSORS_DTYPE_SIZE,
  type SafetensorsDType,
} from '../lib/safetensors.js';
import { CheckpointError, LongcatError } from '../lib/errors.js';
import { rng } from './helpers.js';

const mm = native;
const dir = mkdtempSync(path.join(tmpdir(), 'lc-st-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function randomBytes(n: number, seed: number): Uint8Array {
  const r = rng(seed);
  return Uint8Array.from({ length: n }, () => r.int(256));
}

/** A safetensors file from a raw header object and a data section. */
function rawFile(header: unknown, data: Uint8Array, lenOverride?: bigint): Uint8Array {
  const json = new TextEncoder().encode(typeof header === 'string' ? header : JSON.stringify(header));
  const out = new Uint8Array(8 + json.length + data.length);
  new DataView(out.buffer).setBigUint64(0, lenOverride ?? BigInt(json.length), true);
  out.set(json, 8);
  out.set(data, 8 + json.length);
  return out;
}

function expectCheckpointError(f: () => unknown, ...parts: (string | RegExp)[]) {
  let err: unknown;
  try {
    f();
  } catch (e) {
    err = e;
  }
  expect(err, 'expected an error').toBeInstanceOf(CheckpointError);
  const e = err as CheckpointError;
  expect(e.code).toBe('E_CHECKPOINT');
  for (const p of parts) expect(e.message).toMatch(p);
}

describe('safetensors writer -> parser -> mmap', () => {
  it('round-trips every supported dtype with odd sizes, metadata and chunked data, bytes equal via mmap', async () => {
    const dtypes: [SafetensorsDType, number[]][] = [
      ['BF16', [3, 7]],
      ['F32', [17]],
      ['F8_E4M3', [5, 3]],
      ['I64', [3]],
      ['F16', [1, 1, 9]],
      ['I8', [127]],
      ['I32', [2, 2]],
      ['BF16', [0, 4]],
      ['F32', []],
    ];
    const tensors = dtypes.map(([dtype, shape], i) => ({
      name: `t${i}.${dtype}`,
      dtype,
      shape,
      data: randomBytes(shape.reduce((a, b) => a * b, 1) * SAFETENSORS_DTYPE_SIZE[dtype], 100 + i),
    }));
    // One tensor given as a chunk generator.
    const big = randomBytes(3 * 1000 * 2, 7);
    const file = path.join(dir, 'rt.safetensors');
    await writeSafetensors(
      file,
      [
        ...tensors,
        {
          name: 'gen',
          dtype: 'bf16',
          shape: [3, 1000],
          data: () => [big.subarray(0, 1001), big.subarray(1001, 4000), big.subarray(4000)],
        },
      ],
      { format: 'pt', note: 'hello' },
    );
    const h = await readSafetensorsHeader(file);
    expect(h.metadata).toEqual({ format: 'pt', note: 'hello' });
    expect(h.dataOffset % 8).toBe(0);
    expect(h.tensors.size).toBe(tensors.length + 1);
    const bytes = readFileSync(file);
    const m = mm.mapFile(file);
    expect(m.byteLength).toBe(bytes.length);
    for (const t of [...tensors, { name: 'gen', dtype: 'BF16' as SafetensorsDType, shape: [3, 1000], data: big }]) {
      const e = h.tensors.get(t.name)!;
      expect(e.dtype).toBe(t.dtype);
      expect(e.shape).toEqual(t.shape);
      expect(e.offset % SAFETENSORS_DTYPE_SIZE[t.dtype], `${t.name} aligned`).toBe(0);
      expect(Buffer.compare(bytes.subarray(e.offset, e.offset + e.nbytes), Buffer.from(t.data)), t.name).toBe(0);
      const tensor = mm.tensorFromMapping(m, e.offset, e.nativeDtype!, e.shape);
      expect(tensor.dtype).toBe(e.nativeDtype);
      expect(tensor.shape).toEqual(t.shape);
      expect(Buffer.compare(Buffer.from(tensor.toBytes()), Buffer.from(t.data)), t.name).toBe(0);
      tensor.dispose();
    }
    m.close();
    expect(m.closed).toBe(true);
  });

  it('rejects a generator that yields the wrong number of bytes and duplicate names', async () => {
    await expect(
      writeSafetensors(path.join(dir, 'bad.safetensors'), [
        { name: 'a', dtype: 'F32', shape: [4], data: () => [new Uint8Array(15)] },
      ]),
    ).rejects.toMatchObject({ code: 'E_CHECKPOINT' });
    await expect(
      writeSafetensors(path.join(dir, 'bad.safetensors'), [{ name: 'a', dtype: 'F32', shape: [4], data: new Uint8Array(3) }]),
    ).rejects.toThrow(/needs 16 bytes/);
    const a = { name: 'a', dtype: 'I8' as const, shape: [1], data: new Uint8Array(1) };
    await expect(writeSafetensors(path.join(dir, 'bad.safetensors'), [a, a])).rejects.toThrow(/duplicate/);
  });
});

describe('safetensors validation', () => {
  const ok = { a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, b: { dtype: 'BF16', shape: [3], data_offsets: [8, 14] } };
  const data = new Uint8Array(14);

  it('accepts a valid header (in any key order) with __metadata__', () => {
    const h = parseSafetensors(rawFile({ b: ok.b, __metadata__: { x: 'y' }, a: ok.a }, data));
    expect([...h.tensors.keys()]).toEqual(['a', 'b']);
    expect(h.tensors.get('b')!.offset).toBe(h.dataOffset + 8);
    expect(h.metadata).toEqual({ x: 'y' });
  });

  it('reports U8 / BOOL / F64 as valid but unsupported (nativeDtype null)', () => {
    const h = parseSafetensors(
      rawFile(
        {
          u: { dtype: 'U8', shape: [2], data_offsets: [0, 2] },
          b: { dtype: 'BOOL', shape: [1], data_offsets: [2, 3] },
          d: { dtype: 'F64', shape: [1], data_offsets: [3, 11] },
        },
        new Uint8Array(11),
      ),
    );
    expect(h.tensors.get('u')!.nativeDtype).toBeNull();
    expect(h.tensors.get('b')!.nativeDtype).toBeNull();
    expect(h.tensors.get('d')!.nativeDtype).toBeNull();
  });

  it('rejects each kind of corruption with E_CHECKPOINT naming the file and tensor', () => {
    const f = 'x.safetensors';
    expectCheckpointError(() => parseSafetensors(new Uint8Array(5), f), 'x.safetensors', /too short/);
    expectCheckpointError(() => parseSafetensors(rawFile(ok, data, 1000n), f), /runs past the end/);
    expectCheckpointError(() => parseSafetensors(rawFile(ok, data, 2n ** 63n), f), /runs past the end/);
    expectCheckpointError(() => parseSafetensors(rawFile('{"a": ', new Uint8Array(0)), f), /not valid JSON/);
    expectCheckpointError(() => parseSafetensors(rawFile('[1, 2]', new Uint8Array(0)), f), /not a JSON object/);
    const bad = (name: string, entry: unknown) => rawFile({ ...ok, [name]: entry }, data);
    expectCheckpointError(
      () => parseSafetensors(bad('b', { dtype: 'Q4_K', shape: [3], data_offsets: [8, 14] }), f),
      "tensor 'b'",
      /unknown dtype "Q4_K"/,
    );
    expectCheckpointError(
      () => parseSafetensors(bad('b', { dtype: 'BF16', shape: [-3], data_offsets: [8, 14] }), f),
      "tensor 'b'",
      /shape/,
    );
    expectCheckpointError(
      () => parseSafetensors(bad('b', { dtype: 'BF16', shape: [3], data_offsets: [8] }), f),
      "tensor 'b'",
      /data_offsets/,
    );
    expectCheckpointError(
      () => parseSafetensors(bad('b', { dtype: 'BF16', shape: [3], data_offsets: [14, 8] }), f),
      "tensor 'b'",
      /end before/,
    );
    expectCheckpointError(
      () => parseSafetensors(bad('b', { dtype: 'BF16', shape: [4], data_offsets: [8, 14] }), f),
      "tensor 'b'",
      /needs 8 bytes/,
    );
    expectCheckpointError(
      () => parseSafetensors(bad('b', { dtype: 'BF16', shape: [3], data_offsets: [8, 20] }), f),
      "tensor 'b'",
      /run past the data section/,
    );
    expectCheckpointError(() => parseSafetensors(bad('b', 'oops'), f), "tensor 'b'", /not an object/);
    // Overlap, hole, trailing bytes, truncation.
    expectCheckpointError(
      () =>
        parseSafetensors(rawFile({ a: ok.a, b: { dtype: 'BF16', shape: [3], data_offsets: [6, 12] } }, new Uint8Array(12)), f),
      /'b'.*overlaps tensor 'a'/,
    );
    expectCheckpointError(
      () => parseSafetensors(rawFile({ a: ok.a, b: { dtype: 'BF16', shape: [2], data_offsets: [10, 14] } }, data), f),
      /hole/,
    );
    expectCheckpointError(() => parseSafetensors(rawFile(ok, new Uint8Array(20)), f), /trailing bytes/);
    expectCheckpointError(() => parseSafetensors(rawFile(ok, new Uint8Array(13)), f), "tensor 'b'", /run past the data section/);
    expectCheckpointError(
      () => parseSafetensors(rawFile({ ...ok, __metadata__: { n: 1 } }, data), f),
      /__metadata__.n must be a string/,
    );
    expectCheckpointError(
      () =>
        parseSafetensors(rawFile({ a: { dtype: 'F32', shape: [2 ** 40, 2 ** 40], data_offsets: [0, 8] } }, new Uint8Array(8)), f),
      /too large/,
    );
  });

  it('reads only the header from disk and reports truncated / missing files', async () => {
    const good = rawFile(ok, data);
    const f = path.join(dir, 'trunc.safetensors');
    writeFileSync(f, good.subarray(0, good.length - 3));
    await expect(readSafetensorsHeader(f)).rejects.toMatchObject({
      code: 'E_CHECKPOINT',
      message: expect.stringContaining('trunc.safetensors'),
    });
    writeFileSync(f, good.subarray(0, 20));
    await expect(readSafetensorsHeader(f)).rejects.toMatchObject({
      code: 'E_CHECKPOINT',
      message: expect.stringMatching(/runs past the end/),
    });
    await expect(readSafetensorsHeader(path.join(dir, 'nope.safetensors'))).rejects.toMatchObject({
      code: 'E_CHECKPOINT',
      message: expect.stringMatching(/ENOENT/),
    });
  });

  it('never crashes on randomly corrupted headers (fuzz)', () => {
    const base = buildSafetensorsHeader([
      { name: 'w', dtype: 'BF16', shape: [3, 5], nbytes: 30 },
      { name: 'x', dtype: 'F32', shape: [2], nbytes: 8 },
    ]);
    const file = new Uint8Array(base.length + 38);
    file.set(base);
    const r = rng(42);
    let rejected = 0;
    for (let it = 0; it < 400; it++) {
      const c = file.slice();
      const flips = 1 + r.int(4);
      for (let k = 0; k < flips; k++) c[r.int(Math.min(c.length, base.length + 4))] = r.int(256);
      const cut = r.int(4) === 0 ? r.int(c.length) : c.length;
      try {
        parseSafetensors(c.subarray(0, cut), 'fuzz');
      } catch (e) {
        expect(e).toBeInstanceOf(CheckpointError);
        rejected++;
      }
    }
    expect(rejected).toBeGreaterThan(100);
  });
});

describe('native mmap', () => {
  const file = path.join(dir, 'plain.bin');
  const content = randomBytes(4099, 9);
  writeFileSync(file, content);

  it('maps a file and makes zero-copy tensors that outlive close()', () => {
    const m = mm.mapFile(file, { advice: 'willneed' });
    expect(m.path).toBe(file);
    expect(m.byteLength).toBe(4099);
    expect(m.closed).toBe(false);
    expect(m.writable).toBe(true);
    m.advise('random');
    m.advise('sequential', 100, 50);
    const t = mm.tensorFromMapping(m, 8, 'bf16', [3, 5]);
    const t2 = mm.tensorFromMapping(m, 4096, 'int8', [3]);
    m.close();
    m.close();
    expect(m.closed).toBe(true);
    expect(Buffer.compare(Buffer.from(t.toBytes()), Buffer.from(content.subarray(8, 38)))).toBe(0);
    expect(Array.from(t2.toBytes())).toEqual(Array.from(content.subarray(4096)));
    const v = t.view([15]).narrow(5, 5);
    expect(Array.from(v.toBytes())).toEqual(Array.from(content.subarray(18, 28)));
    t.dispose();
    expect(Array.from(v.toBytes())).toEqual(Array.from(content.subarray(18, 28)));
    v.dispose();
    t2.dispose();
    expect(() => mm.tensorFromMapping(m, 0, 'int8', [1])).toThrow(expect.objectContaining({ code: 'E_DISPOSED' }));
  });

  it('copies misaligned tensors into aligned memory (same bytes)', () => {
    const m = mm.mapFile(file);
    const t = mm.tensorFromMapping(m, 3, 'f32', [7]);
    expect(Array.from(t.toBytes())).toEqual(Array.from(content.subarray(3, 31)));
    const e = mm.tensorFromMapping(m, 4099, 'f32', [0]);
    expect(e.shape).toEqual([0]);
    m.close();
  });

  it('writes to a mapped tensor stay private (copy-on-write, the file is untouched)', () => {
    const m = mm.mapFile(file);
    const t = mm.tensorFromMapping(m, 0, 'int8', [16]);
    t.copyFromBytes(new Uint8Array(16).fill(7));
    expect(Array.from(t.toBytes())).toEqual(new Array(16).fill(7));
    expect(Buffer.compare(readFileSync(file), Buffer.from(content))).toBe(0);
    t.dispose();
    m.close();
  });

  it('bounds-checks and validates arguments with typed errors', () => {
    const m = mm.mapFile(file);
    const code = (f: () => unknown) => {
      try {
        f();
      } catch (e) {
        expect(e).toBeInstanceOf(LongcatError);
        return { code: (e as LongcatError).code, message: (e as Error).message };
      }
      throw new Error('expected an error');
    };
    expect(code(() => mm.tensorFromMapping(m, 4090, 'f32', [4]))).toMatchObject({
      code: 'E_CHECKPOINT',
      message: expect.stringContaining(file),
    });
    expect(code(() => mm.tensorFromMapping(m, 5000, 'int8', [0])).code).toBe('E_CHECKPOINT');
    expect(code(() => mm.tensorFromMapping(m, 0, 'int8', [2 ** 40, 2 ** 40])).code).toBe('E_SHAPE');
    expect(code(() => mm.tensorFromMapping(m, -1, 'int8', [1])).code).toBe('E_ARGUMENT');
    expect(code(() => mm.tensorFromMapping(m, 1.5, 'int8', [1])).code).toBe('E_ARGUMENT');
    expect(code(() => mm.tensorFromMapping(m, 0, 'q4' as never, [1])).code).toBe('E_DTYPE');
    expect(code(() => mm.tensorFromMapping(m, 0, 'int8', [-1])).code).toBe('E_ARGUMENT');
    expect(code(() => mm.tensorFromMapping({ path: file, byteLength: 4099 } as never, 0, 'int8', [1])).code).toBe('E_ARGUMENT');
    expect(code(() => mm.tensorFromMapping({ _handle: {} } as never, 0, 'int8', [1])).code).toBe('E_ARGUMENT');
    expect(code(() => m.advise('bogus' as never)).code).toBe('E_ARGUMENT');
    expect(code(() => mm.mapFile(file, { advice: 'x' as never })).code).toBe('E_ARGUMENT');
    expect(code(() => mm.mapFile(file, { populate: 1 as never })).code).toBe('E_ARGUMENT');
    expect(code(() => mm.mapFile(''))).toMatchObject({ code: 'E_ARGUMENT' });
    m.close();
  });

  it('turns open errors into E_CHECKPOINT naming the path and errno', () => {
    const missing = path.join(dir, 'missing.safetensors');
    expect(() => mm.mapFile(missing)).toThrow(
      expect.objectContaining({ code: 'E_CHECKPOINT', message: expect.stringMatching(/missing\.safetensors.*ENOENT/) }),
    );
    const sub = path.join(dir, 'sub');
    mkdirSync(sub);
    expect(() => mm.mapFile(sub)).toThrow(
      expect.objectContaining({ code: 'E_CHECKPOINT', message: expect.stringMatching(/sub.*EISDIR/) }),
    );
    expect(() => mm.mapFile(path.join(file, 'x'))).toThrow(
      expect.objectContaining({ code: 'E_CHECKPOINT', message: expect.stringMatching(/ENOTDIR/) }),
    );
  });

  it('maps an empty file', () => {
    const f = path.join(dir, 'empty.bin');
    writeFileSync(f, new Uint8Array(0));
    const m = mm.mapFile(f, { populate: true });
    expect(m.byteLength).toBe(0);
    expect(mm.tensorFromMapping(m, 0, 'bf16', [0, 3]).nbytes).toBe(0);
    expect(() => mm.tensorFromMapping(m, 0, 'bf16', [1])).toThrow(expect.objectContaining({ code: 'E_CHECKPOINT' }));
    m.close();
  });
});
