// A randomized fuzzer over the checkpoint formats (issue 13): safetensors headers and config.json /
// generation_config.json, mutated from valid files with a fixed seed and a fixed number of cases
// (never a time budget). Every malformed input must end as a typed LongcatError, never a crash, a
// hang or an untyped error; an input that is accepted must satisfy the parser's own invariants.
// Part of the cases go through the whole path: files on disk, openCheckpoint, the native mmap.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { native } from '../lib/native.js';
import { SAFETENSORS_DTYPE_SIZE, buildSafetensorsHeader, parseSafetensors, readSafetensorsHeader } from '../lib/safetensors.js';
import { CONFIG_KEYS, activeParams, deriveConstants, parseConfig, requiredTensors } from '../lib/config.js';
import { openCheckpoint } from '../lib/checkpoint.js';
import { initRandom } from '../lib/init-random.js';
import { LongcatError } from '../lib/errors.js';
import { toArray } from '../lib/tensor.js';
import { type Rng, rng } from '../lib/check/rng.js';

const root = mkdtempSync(path.join(tmpdir(), 'lc-fuzz-'));
const tiny = path.join(root, 'tiny');
beforeAll(async () => {
  await initRandom({ preset: 'tiny', out: tiny, seed: 5 });
});
afterAll(() => rmSync(root, { recursive: true, force: true }));

/** Runs `f`; an error must be a LongcatError of one of `codes` (the case is printed otherwise). */
function typedOrOk<T>(f: () => T, codes: readonly string[], what: () => string): T | null {
  try {
    return f();
  } catch (e) {
    if (!(e instanceof LongcatError) || !codes.includes(e.code))
      expect.fail(`${what()}\nthrew ${(e as Error)?.constructor?.name}: ${String((e as Error)?.message ?? e).slice(0, 300)}`);
    return null;
  }
}

async function typedOrOkAsync<T>(f: () => Promise<T>, codes: readonly string[], what: () => string): Promise<T | null> {
  try {
    return await f();
  } catch (e) {
    if (!(e instanceof LongcatError) || !codes.includes(e.code))
      expect.fail(`${what()}\nthrew ${(e as Error)?.constructor?.name}: ${String((e as Error)?.message ?? e).slice(0, 300)}`);
    return null;
  }
}

const pick = <T>(r: Rng, xs: readonly T[]): T => xs[r.int(xs.length)]!;

/** `depth` nested arrays around a 1: a recursion bomb for anything that walks or prints values
 *  recursively. Kept symbolic until serialised (toJsonText) or built (materialize). */
class Deep {
  constructor(readonly depth: number) {}
}

/** JSON text of `v`, Deep values written out (JSON.stringify itself would overflow the stack). */
function toJsonText(v: unknown): string {
  const text = JSON.stringify(v, (_k, x) => (x instanceof Deep ? `\u0001DEEP${x.depth}\u0001` : x)) ?? 'null';
  return text.replace(/"\\u0001DEEP(\d+)\\u0001"/g, (_m, d) => `${'['.repeat(Number(d))}1${']'.repeat(Number(d))}`);
}

/** `v` with its Deep values built as real nested arrays (they sit at most a few levels down). */
function materialize(v: unknown): unknown {
  if (v instanceof Deep) {
    let x: unknown = 1;
    for (let i = 0; i < v.depth; i++) x = [x];
    return x;
  }
  if (Array.isArray(v)) return v.map(materialize);
  if (v && typeof v === 'object') {
    const o: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v))
      Object.defineProperty(o, k, { value: materialize(x), enumerable: true, writable: true, configurable: true });
    return o;
  }
  return v;
}

/** A random JSON value, sometimes deeply nested or large: what a hostile file may hold anywhere. */
function randomValue(r: Rng, depth = 0): unknown {
  switch (r.int(depth > 2 ? 9 : 13)) {
    case 0:
      return pick(r, [0, -0, 1, -1, 2, 3, 7, 8, 127, 128, 255, 256, 65535, 65536, 2 ** 31 - 1, 2 ** 31, 2 ** 32]);
    case 1:
      return pick(r, [1e7, 1e8, 1e12, 1e15, 2 ** 53 - 1, 2 ** 53, 2 ** 53 + 2, 2 ** 62, 2 ** 64, 1e308, -1e308, 5e-324]);
    case 2:
      return pick(r, [0.5, 1.5, -0.5, Math.PI, -7, -(2 ** 31), 1e-9]);
    case 3:
      return pick(r, ['', 'x', 'F32', 'BF16', 'yarn', 'fp8', 'e4m3', 'longcat_flash', '__proto__', 'NaN', '1e9', '\u0000', 'é']);
    case 4:
      return pick(r, [null, true, false]);
    case 5:
      return [];
    case 6:
      return {};
    case 7:
      return r.int(1 << 30);
    case 8:
      return -r.int(1 << 20);
    case 9:
      return Array.from({ length: r.int(4) }, () => randomValue(r, depth + 1));
    case 10: {
      const o: Record<string, unknown> = {};
      for (let i = r.int(4); i > 0; i--)
        o[pick(r, ['a', 'type', 'rope_type', 'factor', 'dtype', 'shape', 'data_offsets', '__proto__'])] = randomValue(
          r,
          depth + 1,
        );
      return o;
    }
    case 11:
      return new Deep(2000 + r.int(20000));
    default:
      return Array.from({ length: 1000 + r.int(100000) }, (_, i) => i);
  }
}

// ---- safetensors headers ---------------------------------------------------------------------

interface Entry {
  name: string;
  dtype: keyof typeof SAFETENSORS_DTYPE_SIZE;
  shape: number[];
}
const DTYPES = Object.keys(SAFETENSORS_DTYPE_SIZE) as (keyof typeof SAFETENSORS_DTYPE_SIZE)[];

/** A valid small file: header + data, tensors back to back. */
function validFile(r: Rng): { entries: Entry[]; bytes: Uint8Array } {
  const entries: Entry[] = Array.from({ length: 1 + r.int(5) }, (_, i) => ({
    name: `t${i}`,
    dtype: pick(r, DTYPES),
    shape: Array.from({ length: r.int(4) }, () => r.int(6)),
  }));
  const sized = entries.map(e => ({ ...e, nbytes: e.shape.reduce((a, b) => a * b, 1) * SAFETENSORS_DTYPE_SIZE[e.dtype] }));
  const header = buildSafetensorsHeader(sized, r.int(3) === 0 ? { format: 'pt' } : undefined);
  const data = sized.reduce((a, e) => a + e.nbytes, 0);
  const bytes = new Uint8Array(header.length + data);
  bytes.set(header);
  for (let i = header.length; i < bytes.length; i++) bytes[i] = r.int(256);
  return { entries, bytes };
}

function withHeader(json: string, data: Uint8Array, lenOverride?: bigint): Uint8Array {
  const h = new TextEncoder().encode(json);
  const out = new Uint8Array(8 + h.length + data.length);
  new DataView(out.buffer).setBigUint64(0, lenOverride ?? BigInt(h.length), true);
  out.set(h, 8);
  out.set(data, 8 + h.length);
  return out;
}

/** One malformed (or occasionally still valid) file made from a valid one. */
function mutateFile(r: Rng): Uint8Array {
  const { bytes } = validFile(r);
  const n = Number(new DataView(bytes.buffer).getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + n))) as Record<string, Record<string, unknown>>;
  const data = bytes.subarray(8 + n);
  const names = Object.keys(header).filter(k => k !== '__metadata__');
  switch (r.int(10)) {
    case 0: {
      // Random bytes flipped anywhere in the header (JSON syntax, UTF-8, the length prefix).
      const out = bytes.slice();
      for (let i = 1 + r.int(4); i > 0; i--) out[r.int(Math.min(out.length, 8 + n))] = r.int(256);
      return out;
    }
    case 1:
      // Truncated or extended.
      return r.int(2) ? bytes.slice(0, r.int(bytes.length)) : Uint8Array.from([...bytes, ...Array(1 + r.int(64)).fill(0)]);
    case 2: {
      // A lying length prefix.
      const out = bytes.slice();
      const len = pick(r, [
        0n,
        1n,
        2n,
        BigInt(n - 1),
        BigInt(n + 1),
        BigInt(bytes.length),
        2n ** 63n,
        2n ** 64n - 1n,
        100_000_001n,
      ]);
      new DataView(out.buffer).setBigUint64(0, len, true);
      return out;
    }
    case 3: {
      // A field of one tensor replaced by any JSON value.
      const t = header[pick(r, names)]!;
      t[pick(r, ['dtype', 'shape', 'data_offsets'])] = randomValue(r);
      break;
    }
    case 4: {
      // One shape element or offset replaced.
      const t = header[pick(r, names)]!;
      const key = pick(r, ['shape', 'data_offsets']);
      const arr = Array.isArray(t[key]) ? (t[key] as unknown[]) : [];
      arr[r.int(arr.length + 1)] = randomValue(r);
      t[key] = arr;
      break;
    }
    case 5:
      // The entry itself, or __metadata__, replaced.
      header[r.int(2) ? pick(r, names) : '__metadata__'] = randomValue(r) as Record<string, unknown>;
      break;
    case 6: {
      // Overlapping, swapped or holed ranges.
      const a = header[pick(r, names)]!;
      const b = header[pick(r, names)]!;
      [a.data_offsets, b.data_offsets] = [b.data_offsets, a.data_offsets];
      if (r.int(2)) (a.data_offsets as number[])[1] = ((a.data_offsets as number[])[1] ?? 0) + 1 + r.int(8);
      break;
    }
    case 7:
      // Not an object at all.
      return withHeader(toJsonText(randomValue(r)), data);
    case 8: {
      // Many tensors (large headers), names with odd characters.
      for (let i = 0; i < 1 + r.int(2000); i++) header[`x\u0000${i}\ud800`] = { dtype: 'U8', shape: [0], data_offsets: [0, 0] };
      break;
    }
    default: {
      // A dtype / shape pair whose size does not match the range.
      const t = header[pick(r, names)]!;
      t.dtype = pick(r, [...DTYPES, 'F4', 'bf16', 'Q8']);
      t.shape = Array.from({ length: r.int(6) }, () => pick(r, [0, 1, 3, 1e6, 2 ** 26, 2 ** 40]));
    }
  }
  return withHeader(toJsonText(header), data, r.int(8) === 0 ? BigInt(r.int(1 << 20)) : undefined);
}

describe('safetensors header fuzzer', () => {
  const CASES = 1500;
  const ON_DISK_EVERY = 15; // these also go through the file reader and the native mmap

  it(`${CASES} mutated files: typed errors or a self-consistent header (seed 1301)`, async () => {
    const r = rng(1301);
    let accepted = 0,
      rejected = 0;
    for (let c = 0; c < CASES; c++) {
      const bytes = mutateFile(r);
      const what = () =>
        `case ${c}: ${bytes.length} bytes, header ${JSON.stringify(new TextDecoder().decode(bytes.subarray(8, 8 + 300)))}`;
      const h = typedOrOk(() => parseSafetensors(bytes, `case${c}`), ['E_CHECKPOINT'], what);
      if (!h) {
        rejected++;
      } else {
        accepted++;
        let pos = h.dataOffset;
        for (const t of h.tensors.values()) {
          expect(t.offset, what()).toBe(pos);
          expect(t.nbytes, what()).toBe(t.shape.reduce((a, b) => a * b, 1) * SAFETENSORS_DTYPE_SIZE[t.dtype]);
          pos += t.nbytes;
        }
        expect(pos, what()).toBe(bytes.length);
      }
      if (c % ON_DISK_EVERY === 0) {
        const file = path.join(root, `case${c}.safetensors`);
        writeFileSync(file, bytes);
        const fh = await typedOrOkAsync(() => readSafetensorsHeader(file), ['E_CHECKPOINT'], what);
        expect(fh === null, `${what()}: the file reader and the in-memory parser disagree`).toBe(h === null);
        if (fh) {
          const m = native.mapFile(file);
          try {
            for (const t of fh.tensors.values()) {
              if (!t.nativeDtype) continue;
              const x = native.tensorFromMapping(m, t.offset, t.nativeDtype, t.shape);
              expect(toArray(x).length, what()).toBe(t.shape.reduce((a, b) => a * b, 1));
              x.dispose();
            }
          } finally {
            m.close();
          }
        }
      }
    }
    // The mutations reach both outcomes (the fuzzer is not only producing garbage).
    expect(accepted).toBeGreaterThan(CASES / 50);
    expect(rejected).toBeGreaterThan(CASES / 2);
  });
});

// ---- config.json -----------------------------------------------------------------------------

// every field parseConfig reads, and a key that must never reach an object's prototype
const CONFIG_FIELDS = [...CONFIG_KEYS, '__proto__'];

function mutateConfig(r: Rng, base: Record<string, unknown>): Record<string, unknown> {
  const c: Record<string, unknown> = { ...base };
  const set = (o: Record<string, unknown>, k: string, v: unknown) =>
    Object.defineProperty(o, k, { value: v, enumerable: true, writable: true, configurable: true });
  for (let i = 1 + r.int(3); i > 0; i--) {
    const f = pick(r, CONFIG_FIELDS);
    switch (r.int(5)) {
      case 0:
        delete c[f];
        break;
      case 1: {
        // A size scaled to implausible, or to a neighbouring plausible value.
        const v = typeof c[f] === 'number' ? (c[f] as number) : 8;
        set(c, f, pick(r, [v * 1e6, v * 2 ** 20, v + 1, v - 1, v * 2, Math.floor(v / 2), -v, v + 0.5]));
        break;
      }
      case 2: {
        // Nested objects with random contents.
        const o: Record<string, unknown> = {};
        for (const k of pick(r, [
          ['rope_type', 'factor', 'original_max_position_embeddings', 'beta_fast', 'mscale_all_dim'],
          ['quant_method', 'fmt', 'weight_block_size', 'activation_scheme', 'ignored_layers', 'disable_quant_module'],
        ]))
          if (r.int(2)) set(o, k, randomValue(r));
        if (r.int(2)) o.rope_type = 'yarn';
        set(c, pick(r, ['rope_scaling', 'quantization_config']), o);
        break;
      }
      default:
        set(c, f, randomValue(r));
    }
  }
  return c;
}

describe('config.json fuzzer', () => {
  const CASES = 1500;
  const ON_DISK_EVERY = 30; // these go through openCheckpoint (config + generation_config + the tiny shards)

  it(`${CASES} mutated configs: typed errors or a usable config (seed 2207)`, async () => {
    const r = rng(2207);
    const base = JSON.parse(readFileSync(path.join(tiny, 'config.json'), 'utf8')) as Record<string, unknown>;
    let accepted = 0,
      rejected = 0;
    for (let c = 0; c < CASES; c++) {
      const symbolic = mutateConfig(r, base);
      const json = materialize(symbolic);
      const what = () => `case ${c}: ${toJsonText(symbolic).slice(0, 400)}`;
      const cfg = typedOrOk(() => parseConfig(json, `case${c}.json`), ['E_CONFIG'], what);
      if (!cfg) {
        rejected++;
      } else {
        accepted++;
        const d = deriveConstants(cfg);
        expect(Number.isFinite(d.softmaxScale), what()).toBe(true);
        expect(activeParams(cfg).total, what()).toBeGreaterThan(0);
        // Every tensor spec of a small enough model (the bounds keep even the largest in seconds).
        if (cfg.num_layers * cfg.n_routed_experts <= 4096) expect(requiredTensors(cfg).size, what()).toBeGreaterThan(0);
      }
      if (c % ON_DISK_EVERY === 0) {
        const dir = path.join(root, `ckpt${c}`);
        cpSync(tiny, dir, { recursive: true });
        writeFileSync(path.join(dir, 'config.json'), toJsonText(symbolic));
        if (r.int(2))
          writeFileSync(
            path.join(dir, 'generation_config.json'),
            toJsonText({ [pick(r, ['eos_token_id', 'bos_token_id', 'pad_token_id'])]: randomValue(r) }),
          );
        const ck = await typedOrOkAsync(() => openCheckpoint(dir), ['E_CONFIG', 'E_CHECKPOINT'], what);
        ck?.close();
        rmSync(dir, { recursive: true, force: true });
      }
    }
    expect(accepted).toBeGreaterThan(CASES / 20);
    expect(rejected).toBeGreaterThan(CASES / 2);
  });
});
