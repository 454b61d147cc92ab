// Scalar encodings of the narrow float formats, bit-compatible with native/cpu/numeric.h.
// Used to build tensors from JS numbers and as the reference in tests.

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

export function f32ToBf16(x: number): number {
  f32[0] = x;
  const u = u32[0]!;
  if ((u & 0x7fffffff) > 0x7f800000) return ((u >>> 16) | 0x40) & 0xffff;
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
}

export function bf16ToF32(h: number): number {
  u32[0] = (h & 0xffff) << 16;
  return f32[0]!;
}

export function f16ToF32(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

export function f32ToF16(x: number): number {
  f32[0] = x;
  const u = u32[0]!;
  const sign = (u >>> 16) & 0x8000;
  const a = u & 0x7fffffff;
  if (a > 0x7f800000) return sign | 0x7e00;
  if (a >= 0x477ff000) return sign | 0x7c00;
  if (a < 0x38800000) {
    u32[0] = a;
    const v = f32[0]! * 16777216;
    return sign | roundHalfEven(v);
  }
  return sign | ((a + 0xfff + ((a >>> 13) & 1) - 0x38000000) >>> 13);
}

export function fp8e4m3ToF32(b: number): number {
  const s = b & 0x80 ? -1 : 1;
  const e = (b >> 3) & 0xf;
  const m = b & 7;
  if (e === 15 && m === 7) return NaN;
  if (e === 0) return s * m * 2 ** -9;
  return s * (1 + m / 8) * 2 ** (e - 7);
}

/** Round to nearest even, saturating to +-448; NaN stays NaN. */
export function f32ToFp8e4m3(x: number): number {
  const sign = x < 0 || Object.is(x, -0) ? 0x80 : 0;
  const a = Math.abs(Math.fround(x));
  if (Number.isNaN(x)) return sign | 0x7f;
  if (a >= 448) return sign | 0x7e;
  if (a < 2 ** -6) return sign | roundHalfEven(a * 512);
  let e = Math.floor(Math.log2(a));
  if (2 ** e > a) e -= 1;
  let m = roundHalfEven((a / 2 ** e - 1) * 8);
  if (m === 8) {
    m = 0;
    e += 1;
  }
  if (e + 7 > 15 || (e + 7 === 15 && m === 7)) return sign | 0x7e;
  return sign | ((e + 7) << 3) | m;
}

export function roundHalfEven(v: number): number {
  const f = Math.floor(v);
  const d = v - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

/** The value a float32 becomes after a round trip through bf16. */
export function roundBf16(x: number): number {
  return bf16ToF32(f32ToBf16(x));
}
