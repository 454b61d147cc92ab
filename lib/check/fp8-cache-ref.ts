// The reference of the fp8 latent-cache layout (native/cpu/mla.h, MlaCache::FP8; FlashMLA's 656-byte
// rows at 512 + 64): a host encoder and decoder written from the layout's definition with the scalar
// conversions of lib/numeric.ts, so that the tests compare the native write bit for bit and build fp8
// caches for the decode tests without going through the op under test. Shared by
// test/attention.test.ts and the op-case table (which imports only dist/).
import { bf16ToF32, f32ToBf16, f32ToFp8e4m3, fp8e4m3ToF32 } from '../numeric.js';

export const FP8_GROUP = 128;
/** quant.h kFp8Tiny, as f32. */
const TINY = Math.fround(1e-10);

/** Bytes of one fp8 cache row: the latent in e4m3, one f32 scale per 128 values, the rope in bf16. */
export const fp8RowBytes = (dl: number, dr: number): number => dl + (4 * dl) / FP8_GROUP + 2 * dr;

/** Group g's scale: max(amax(|x|), 1e-10) / 448 in f32 (NaN ignored by the max). */
export function fp8GroupScale(x: ArrayLike<number>, off: number, n = FP8_GROUP): number {
  let m = 0;
  for (let i = 0; i < n; i++) {
    const a = Math.abs(Math.fround(x[off + i]!));
    // biome-ignore lint/complexity/useMathMinMax: Math.max would propagate a NaN; the native amax skips it
    m = a > m ? a : m;
  }
  return Math.fround(Math.max(m, TINY) / 448);
}

/** Writes one token's row (latent ckv[co .. co + dl), rope kpe[ko .. ko + dr)) at out[at ..]. */
export function encodeFp8Row(
  ckv: ArrayLike<number>,
  co: number,
  kpe: ArrayLike<number>,
  ko: number,
  dl: number,
  dr: number,
  out: Uint8Array,
  at: number,
): void {
  const view = new DataView(out.buffer, out.byteOffset, out.byteLength);
  for (let g = 0; g < dl / FP8_GROUP; g++) {
    const s = fp8GroupScale(ckv, co + g * FP8_GROUP);
    view.setFloat32(at + dl + 4 * g, s, true);
    for (let i = 0; i < FP8_GROUP; i++) {
      const c = g * FP8_GROUP + i;
      out[at + c] = f32ToFp8e4m3(Math.fround(Math.fround(ckv[co + c]!) / s));
    }
  }
  const rope = at + dl + (4 * dl) / FP8_GROUP;
  for (let c = 0; c < dr; c++) view.setUint16(rope + 2 * c, f32ToBf16(kpe[ko + c]!), true);
}

/** One row at bytes[at ..] as f32 values: the latent e4m3 * scale (one f32 rounding), the rope. */
export function decodeFp8Row(bytes: Uint8Array, at: number, dl: number, dr: number): { ckv: Float32Array; kpe: Float32Array } {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const ckv = new Float32Array(dl),
    kpe = new Float32Array(dr);
  for (let c = 0; c < dl; c++)
    ckv[c] = Math.fround(fp8e4m3ToF32(bytes[at + c]!) * view.getFloat32(at + dl + 4 * Math.floor(c / FP8_GROUP), true));
  const rope = at + dl + (4 * dl) / FP8_GROUP;
  for (let c = 0; c < dr; c++) kpe[c] = bf16ToF32(view.getUint16(rope + 2 * c, true));
  return { ckv, kpe };
}
