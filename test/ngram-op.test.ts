// ngramEmbed (LongCat-Flash-Lite's N-gram projection + mean) against a float64 JS reference on odd
// sizes, every dtype pair, poisoned outputs, in place on the base; its typed errors; the CUDA
// kernel (a GPU or the emulator) against the same reference.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Tensor, native } from '../lib/index.js';
import type { DType } from '../lib/index.js';
import { bf16ToF32, f32ToBf16 } from '../lib/numeric.js';
import { backends, expectClose, expectCode, rng } from './helpers.js';

type Rng = ReturnType<typeof rng>;

/** n values of dtype `dt` (std `std`): the tensor bytes and the exact values they hold. */
function values(r: Rng, n: number, dt: 'f32' | 'bf16', std: number): { bytes: ArrayBufferView; exact: Float64Array } {
  const f = Float32Array.from({ length: n }, () => std * r.normal());
  if (dt === 'f32') return { bytes: f, exact: Float64Array.from(f) };
  const u = Uint16Array.from(f, f32ToBf16);
  return { bytes: u, exact: Float64Array.from(u, bf16ToF32) };
}

function reference(T: number, H: number, E: number, D: number, base: Float64Array, rows: Float64Array, proj: Float64Array) {
  const y = new Float64Array(T * H);
  for (let t = 0; t < T; t++)
    for (let h = 0; h < H; h++) {
      let acc = base[t * H + h]!;
      for (let e = 0; e < E; e++) for (let k = 0; k < D; k++) acc += rows[(e * T + t) * D + k]! * proj[(e * H + h) * D + k]!;
      y[t * H + h] = acc / (E + 1);
    }
  return y;
}

const SIZES: [number, number, number, number][] = [
  // T, H, E, D
  [1, 1, 1, 1],
  [1, 37, 3, 5],
  [7, 24, 12, 2],
  [5, 65, 6, 33],
  [3, 96, 12, 8],
  [2, 130, 4, 257],
  [19, 40, 3, 24], // more than 8 tokens: the CPU's projection takes the GEMM path
];

// fp32 products on both sides (the default precision may round f32 rows to bf16 in a GEMM).
let saved: ReturnType<typeof native.setMatmulPrecision>;
beforeAll(() => {
  saved = native.setMatmulPrecision('highest');
});
afterAll(() => {
  native.setMatmulPrecision(saved);
});
const POISON = Number.NaN;

describe.each(backends)('ngramEmbed on %s', device => {
  it('matches the float64 reference on odd sizes, every dtype pair, into a poisoned output and in place', () => {
    const r = rng(1501);
    for (const [T, H, E, D] of SIZES)
      for (const rt of ['bf16', 'f32'] as const)
        for (const pt of ['bf16', 'f32'] as const) {
          const base = values(r, T * H, 'f32', 1),
            rows = values(r, E * T * D, rt, 1),
            proj = values(r, E * H * D, pt, 1 / Math.sqrt(D));
          const tb = new Tensor('f32', [T, H], 'cpu', base.bytes).to(device);
          const tr = new Tensor(rt, [E, T, D], 'cpu', rows.bytes).to(device);
          const tp = new Tensor(pt, [E, H, D], 'cpu', proj.bytes).to(device);
          const y = new Tensor('f32', [T, H], 'cpu', new Float32Array(T * H).fill(POISON)).to(device);
          const want = reference(T, H, E, D, base.exact, rows.exact, proj.exact);
          const what = `[T ${T}, H ${H}, E ${E}, D ${D}] rows ${rt} proj ${pt}`;
          native.ngramEmbed(null, y, tb, tr, tp);
          expectClose(new Float32Array(y.toBytes().slice().buffer), want, 2e-5 * Math.sqrt(E * D), 1e-5, what);
          native.ngramEmbed(null, tb, tb, tr, tp); // in place: y is the base
          expectClose(new Float32Array(tb.toBytes().slice().buffer), want, 2e-5 * Math.sqrt(E * D), 1e-5, `${what} in place`);
          for (const t of [tb, tr, tp, y]) t.dispose();
        }
  });

  it('under the default (bf16) matmul precision, bf16 rows and projections still match at fp32 tolerance', () => {
    const r = rng(1502);
    const before = native.setMatmulPrecision('bf16');
    try {
      for (const [T, H, E, D] of [
        [1, 96, 12, 8],
        [33, 72, 6, 16],
      ] as const) {
        const base = values(r, T * H, 'f32', 1),
          rows = values(r, E * T * D, 'bf16', 1),
          proj = values(r, E * H * D, 'bf16', 1 / Math.sqrt(D));
        const tb = new Tensor('f32', [T, H], 'cpu', base.bytes).to(device);
        const tr = new Tensor('bf16', [E, T, D], 'cpu', rows.bytes).to(device);
        const tp = new Tensor('bf16', [E, H, D], 'cpu', proj.bytes).to(device);
        native.ngramEmbed(null, tb, tb, tr, tp);
        expectClose(
          new Float32Array(tb.toBytes().slice().buffer),
          reference(T, H, E, D, base.exact, rows.exact, proj.exact),
          2e-5 * Math.sqrt(E * D),
          1e-5,
          `[T ${T}, H ${H}, E ${E}, D ${D}] bf16`,
        );
        for (const t of [tb, tr, tp]) t.dispose();
      }
    } finally {
      native.setMatmulPrecision(before);
    }
  });

  it('writes nothing for zero tokens', () => {
    const y = new Tensor('f32', [0, 8], device);
    native.ngramEmbed(null, y, y, new Tensor('bf16', [2, 0, 4], device), new Tensor('bf16', [2, 8, 4], device));
    native.synchronize(device);
    expect(y.toBytes().length).toBe(0);
  });

  it('rejects bad arguments with typed errors', () => {
    const mk = (dt: DType, shape: number[]) => new Tensor(dt, shape, device);
    const base = mk('f32', [3, 8]);
    const rows = mk('bf16', [2, 3, 4]);
    const proj = mk('bf16', [2, 8, 4]);
    expectCode(() => native.ngramEmbed(null, mk('f32', [3, 9]), base, rows, proj), 'E_SHAPE', /'y'/);
    expectCode(() => native.ngramEmbed(null, base, base, mk('bf16', [2, 4, 4]), proj), 'E_SHAPE', /do not fit/);
    expectCode(() => native.ngramEmbed(null, base, base, rows, mk('bf16', [3, 8, 4])), 'E_SHAPE', /do not fit/);
    expectCode(() => native.ngramEmbed(null, base, base, rows, mk('bf16', [2, 8, 5])), 'E_SHAPE', /do not fit/);
    expectCode(() => native.ngramEmbed(null, base, base, mk('f16', [2, 3, 4]), proj), 'E_DTYPE', /'rows'/);
    expectCode(() => native.ngramEmbed(null, base, mk('bf16', [3, 8]), rows, proj), 'E_DTYPE', /'base'/);
    const big = mk('f32', [4, 8]);
    expectCode(() => native.ngramEmbed(null, big.narrow(1, 3), big.narrow(0, 3), rows, proj), 'E_ARGUMENT', /overlaps 'base'/);
  });
});
