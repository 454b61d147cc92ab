// An independent oracle for the narrow float formats (e4m3fn, bf16, f16), written from their
// definitions (SPEC 7.2 for e4m3fn, IEEE 754 binary16, bfloat16 = the top half of binary32), not from
// lib/numeric.ts: one generic minifloat decoder, a table of anchor values worked out by hand, and an
// encoder that picks the nearest representable value by search (ties to the even code). lib/numeric.ts
// and the native `convert` op (every ISA) must agree with it on every code, every rounding tie, the
// values next to every tie, saturation / overflow, NaN and the subnormals.
import { afterAll, describe, expect, it } from 'vitest';
import { Tensor, native } from '../lib/index.js';
import { bf16ToF32, f16ToF32, f32ToBf16, f32ToF16, f32ToFp8e4m3, fp8e4m3ToF32 } from '../lib/numeric.js';

interface Format {
  name: 'fp8_e4m3' | 'f16' | 'bf16';
  expBits: number;
  manBits: number;
  bias: number;
  /** IEEE special values at the top exponent (f16, bf16); e4m3fn has no infinities, only S.1111.111 = NaN. */
  ieee: boolean;
  /** What a too-large finite input becomes: the largest finite value (e4m3, SPEC 7.3 clamps) or infinity. */
  overflow: 'saturate' | 'infinity';
}

const formats: Format[] = [
  { name: 'fp8_e4m3', expBits: 4, manBits: 3, bias: 7, ieee: false, overflow: 'saturate' },
  { name: 'f16', expBits: 5, manBits: 10, bias: 15, ieee: true, overflow: 'infinity' },
  { name: 'bf16', expBits: 8, manBits: 7, bias: 127, ieee: true, overflow: 'infinity' },
];

const bits = (f: Format) => 1 + f.expBits + f.manBits;

/** The value of a code by the format's definition. */
function decode(f: Format, code: number): number {
  const sign = (code >> (f.expBits + f.manBits)) & 1 ? -1 : 1;
  const e = (code >> f.manBits) & ((1 << f.expBits) - 1);
  const m = code & ((1 << f.manBits) - 1);
  const eMax = (1 << f.expBits) - 1,
    mMax = (1 << f.manBits) - 1;
  if (f.ieee && e === eMax) return m === 0 ? sign * Infinity : NaN;
  if (!f.ieee && e === eMax && m === mMax) return NaN;
  const frac = m / 2 ** f.manBits;
  return e === 0 ? sign * frac * 2 ** (1 - f.bias) : sign * (1 + frac) * 2 ** (e - f.bias);
}

// Anchors worked out by hand from the definitions: [format, code, value].
const anchors: [Format['name'], number, number][] = [
  ['fp8_e4m3', 0x00, 0],
  ['fp8_e4m3', 0x80, -0],
  ['fp8_e4m3', 0x01, 2 ** -9],
  ['fp8_e4m3', 0x07, 7 * 2 ** -9],
  ['fp8_e4m3', 0x08, 2 ** -6],
  ['fp8_e4m3', 0x38, 1],
  ['fp8_e4m3', 0x39, 1.125],
  ['fp8_e4m3', 0x40, 2],
  ['fp8_e4m3', 0x77, 240],
  ['fp8_e4m3', 0x78, 256],
  ['fp8_e4m3', 0x7e, 448],
  ['fp8_e4m3', 0xfe, -448],
  ['fp8_e4m3', 0x7f, NaN],
  ['fp8_e4m3', 0xff, NaN],
  ['fp8_e4m3', 0xb8, -1],
  ['f16', 0x0000, 0],
  ['f16', 0x8000, -0],
  ['f16', 0x0001, 2 ** -24],
  ['f16', 0x03ff, 1023 * 2 ** -24],
  ['f16', 0x0400, 2 ** -14],
  ['f16', 0x3c00, 1],
  ['f16', 0x3c01, 1 + 2 ** -10],
  ['f16', 0xc000, -2],
  ['f16', 0x7bff, 65504],
  ['f16', 0x7c00, Infinity],
  ['f16', 0xfc00, -Infinity],
  ['f16', 0x7e00, NaN],
  ['f16', 0x7c01, NaN],
  ['bf16', 0x0000, 0],
  ['bf16', 0x8000, -0],
  ['bf16', 0x0001, 2 ** -133],
  ['bf16', 0x0080, 2 ** -126],
  ['bf16', 0x3f80, 1],
  ['bf16', 0x3f81, 1 + 2 ** -7],
  ['bf16', 0x4049, 3.140625],
  ['bf16', 0xbf80, -1],
  ['bf16', 0x7f7f, (2 - 2 ** -7) * 2 ** 127],
  ['bf16', 0x7f80, Infinity],
  ['bf16', 0xff80, -Infinity],
  ['bf16', 0x7fc0, NaN],
];

/** Every finite non-negative value of the format, ascending, with its code. */
function finiteTable(f: Format): { value: number; code: number }[] {
  const out: { value: number; code: number }[] = [];
  for (let code = 0; code < 1 << (bits(f) - 1); code++) {
    const v = decode(f, code);
    if (Number.isFinite(v)) out.push({ value: v, code });
  }
  return out.sort((a, b) => a.value - b.value);
}

/** The code nearest to x (a float32 value): ties to the even code, overflow as the format says. */
function encode(f: Format, table: { value: number; code: number }[], x: number): number {
  const signBit = 1 << (bits(f) - 1);
  if (Number.isNaN(x)) return -1; // any NaN code: checked by decoding
  const sign = x < 0 || Object.is(x, -0) ? signBit : 0;
  const a = Math.abs(x);
  const top = table[table.length - 1]!;
  // The value one step above the largest finite one (where the exponent range would continue).
  const ulpTop = top.value - table[table.length - 2]!.value;
  const beyond = top.value + ulpTop;
  if (a >= beyond || a === Infinity) return f.overflow === 'saturate' ? sign | top.code : sign | infCode(f);
  if (a > top.value) {
    // Between the largest finite value and the next step: the nearer one; on a tie the next step,
    // whose mantissa is even (all zeros).
    const toTop = a - top.value < beyond - a;
    return toTop || f.overflow === 'saturate' ? sign | top.code : sign | infCode(f);
  }
  let lo = 0,
    hi = table.length - 1; // table[lo].value <= a < table[hi].value after the search
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (table[mid]!.value <= a) lo = mid;
    else hi = mid;
  }
  if (table[hi]!.value <= a) lo = hi;
  const below = table[lo]!,
    above = table[Math.min(lo + 1, table.length - 1)]!;
  if (below.value === a || below === above) return sign | below.code;
  const dBelow = a - below.value,
    dAbove = above.value - a;
  if (dBelow < dAbove) return sign | below.code;
  if (dAbove < dBelow) return sign | above.code;
  return sign | ((below.code & 1) === 0 ? below.code : above.code);
}

const infCode = (f: Format) => ((1 << f.expBits) - 1) << f.manBits;

const f32Buf = new Float32Array(1);
const u32Buf = new Uint32Array(f32Buf.buffer);
const f32Bits = (x: number) => {
  f32Buf[0] = x;
  return u32Buf[0]!;
};
const fromBits = (b: number) => {
  u32Buf[0] = b >>> 0;
  return f32Buf[0]!;
};
const nextUp = (x: number) => fromBits(x >= 0 ? f32Bits(x) + 1 : f32Bits(x) - 1); // finite, non-negative x
const nextDown = (x: number) => (x === 0 ? -fromBits(1) : fromBits(f32Bits(x) - 1));

/** The float32 inputs worth checking: every value, every midpoint and its float32 neighbours. */
function probeInputs(f: Format): Float32Array {
  const t = finiteTable(f);
  const xs: number[] = [];
  for (let i = 0; i < t.length; i++) {
    const v = t[i]!.value;
    xs.push(v);
    if (i + 1 < t.length) {
      const mid = (v + t[i + 1]!.value) / 2; // exact in float32: the formats have fewer bits
      xs.push(mid, nextUp(mid), nextDown(mid));
    }
  }
  const top = t[t.length - 1]!.value,
    step = top - t[t.length - 2]!.value;
  xs.push(top + step / 2, nextDown(top + step / 2), nextUp(top + step / 2), top + step, top * 4, 3.0e38, Infinity);
  xs.push(t[1]!.value / 2, nextUp(t[1]!.value / 2), nextDown(t[1]!.value / 2), 1e-45, 2 ** -149 * 3);
  const all = xs.flatMap(x => [x, -x]);
  all.push(NaN, -0);
  return Float32Array.from(all.filter(x => Number.isNaN(x) || Math.fround(x) === x || !Number.isFinite(x)));
}

const libDecode: Record<Format['name'], (c: number) => number> = { fp8_e4m3: fp8e4m3ToF32, f16: f16ToF32, bf16: bf16ToF32 };
const libEncode: Record<Format['name'], (x: number) => number> = { fp8_e4m3: f32ToFp8e4m3, f16: f32ToF16, bf16: f32ToBf16 };

const sameValue = (a: number, b: number) => (Number.isNaN(a) && Number.isNaN(b)) || Object.is(a, b);

type Isa = 'scalar' | 'avx2' | 'avx512';
const originalIsa = native.cpuFeatures().isa;
const isas = (['scalar', 'avx2', 'avx512'] as Isa[]).filter(i => {
  const got = native.setIsa(i);
  native.setIsa(originalIsa);
  return got === i;
});
afterAll(() => native.setIsa(originalIsa));

function nativeConvert(src: Float32Array | Uint8Array | Uint16Array, from: string, to: string, n: number): number[] {
  const size: Record<string, number> = { f32: 4, bf16: 2, f16: 2, fp8_e4m3: 1 };
  const x = new Tensor(from as 'f32', [n], 'cpu', new Uint8Array(src.buffer, src.byteOffset, n * size[from]!));
  const y = new Tensor(to as 'f32', [n], 'cpu', new Uint8Array(n * size[to]!).fill(0xa5)); // poisoned
  native.convert(null, y, x);
  const b = y.toBytes();
  const out =
    to === 'f32'
      ? Array.from(new Float32Array(b.buffer, b.byteOffset, n))
      : to === 'fp8_e4m3'
        ? Array.from(b)
        : Array.from(new Uint16Array(b.buffer, b.byteOffset, n));
  x.dispose();
  y.dispose();
  return out;
}

describe.each(formats)('$name from its definition', f => {
  const nCodes = 1 << bits(f);

  it('the generic decoder gives the hand-worked anchor values', () => {
    const mine = anchors.filter(([name]) => name === f.name);
    expect(mine.length).toBeGreaterThan(8);
    for (const [, code, value] of mine) expect(sameValue(decode(f, code), value), `0x${code.toString(16)}`).toBe(true);
  });

  it('lib/numeric.ts and native convert decode every code as the definition says', () => {
    const codes =
      f.name === 'fp8_e4m3'
        ? Uint8Array.from({ length: nCodes }, (_, i) => i)
        : Uint16Array.from({ length: nCodes }, (_, i) => i);
    for (let c = 0; c < nCodes; c++) {
      const want = Math.fround(decode(f, c));
      if (!sameValue(libDecode[f.name](c), want))
        expect.fail(`lib ${f.name} 0x${c.toString(16)}: got ${libDecode[f.name](c)}, want ${want}`);
    }
    for (const isa of isas) {
      native.setIsa(isa);
      const got = nativeConvert(codes, f.name, 'f32', nCodes);
      native.setIsa(originalIsa);
      for (let c = 0; c < nCodes; c++)
        if (!sameValue(got[c]!, Math.fround(decode(f, c))))
          expect.fail(`native ${isa} ${f.name}->f32 0x${c.toString(16)}: got ${got[c]}, want ${decode(f, c)}`);
    }
  });

  it('lib/numeric.ts and native convert encode float32 to the nearest code, ties to even, with the format overflow', () => {
    const table = finiteTable(f);
    const xs = probeInputs(f);
    expect(xs.length).toBeGreaterThan(4 * table.length);
    const check = (who: string, x: number, got: number) => {
      const want = encode(f, table, x);
      if (want < 0) {
        if (!Number.isNaN(decode(f, got))) expect.fail(`${who} ${f.name}(${x}): got 0x${got.toString(16)}, want a NaN`);
      } else if (got !== want) {
        expect.fail(
          `${who} ${f.name}(${x} = 0x${f32Bits(x).toString(16)}): got 0x${got.toString(16)} = ${decode(f, got)}, want 0x${want.toString(16)} = ${decode(f, want)}`,
        );
      }
    };
    for (const x of xs) check('lib', x, libEncode[f.name](x));
    for (const isa of isas) {
      native.setIsa(isa);
      const got = nativeConvert(xs, 'f32', f.name, xs.length);
      native.setIsa(originalIsa);
      for (let i = 0; i < xs.length; i++) check(`native ${isa}`, xs[i]!, got[i]!);
    }
  });
});

describe('the oracle itself', () => {
  it('sees a wrong tie rule, a wrong bias and a missing saturation', () => {
    const e4m3 = formats[0]!;
    const table = finiteTable(e4m3);
    expect(encode(e4m3, table, 1.0625)).toBe(0x38); // halfway between 1 (even) and 1.125: to 1
    expect(encode(e4m3, table, 1.1875)).toBe(0x3a); // halfway between 1.125 and 1.25 (even)
    expect(encode(e4m3, table, 2 ** -10)).toBe(0x00); // half the smallest subnormal: to +0 (even)
    expect(encode(e4m3, table, 1000)).toBe(0x7e); // saturates at 448
    expect(encode(e4m3, table, -Infinity)).toBe(0xfe);
    const f16 = formats[1]!;
    expect(encode(f16, finiteTable(f16), 65520)).toBe(0x7c00); // the tie above 65504 goes to infinity
    expect(encode(f16, finiteTable(f16), 65519.99)).toBe(0x7bff);
    expect(decode({ ...e4m3, bias: 8 }, 0x38)).not.toBe(1);
  });
});
