// RoPE: the inverse-frequency tables (plain and YaRN) against transformers' formulas, and the rope op
// against a float64 reference on every ISA.
import { afterAll, describe, expect, it } from 'vitest';
import { full, native, tensor, toArray } from '../lib/index.js';
import { ropeTables } from '../lib/rope.js';
import { expectClose, rng, expectCode } from './helpers.js';
import { type RefRopeScaling, yarnCorrectionRange } from '../lib/check/reference/longcat-ref.js';

const startIsa = native.cpuFeatures().isa;
afterAll(() => {
  native.setIsa(startIsa);
});
const isas = ['scalar', 'avx2', 'avx512'] as const;

// ---- A float64 re-derivation of transformers' formulas (the correction range: the reference's) ----
// (modeling_rope_utils._compute_yarn_parameters, transformers 4.5x; DeepseekV3/LongcatFlash attention scaling)
function refTables(theta: number, dim: number, nope: number, maxPos: number, y: RefRopeScaling | null) {
  const half = dim / 2;
  const plain = Array.from({ length: half }, (_, i) => 1 / theta ** ((2 * i) / dim));
  let scale = 1 / Math.sqrt(nope + dim);
  if (!y) return { inv: plain, af: 1, scale };
  const getM = (s: number, m = 1) => (s <= 1 ? 1 : 0.1 * m * Math.log(s) + 1);
  let factor = y.factor;
  let orig = maxPos;
  if (y.original_max_position_embeddings !== undefined) {
    orig = y.original_max_position_embeddings;
    factor = maxPos / orig;
  }
  const af =
    y.attention_factor ?? (y.mscale && y.mscale_all_dim ? getM(factor, y.mscale) / getM(factor, y.mscale_all_dim) : getM(factor));
  const [lo, hi] = yarnCorrectionRange(dim, theta, orig, y.beta_fast ?? 32, y.beta_slow ?? 1, y.truncate ?? true);
  const inv = plain.map((ext, i) => {
    const ramp = Math.min(1, Math.max(0, (i - lo) / (hi - lo)));
    const extFactor = 1 - ramp;
    return (ext / factor) * (1 - extFactor) + ext * extFactor;
  });
  if (y.mscale_all_dim) scale *= getM(y.factor, y.mscale_all_dim) ** 2;
  return { inv, af, scale };
}

describe('ropeTables', () => {
  it('plain RoPE: inv_freq = theta^(-2i/d), scale = (nope + rope)^-0.5', () => {
    const t = ropeTables({ rope_theta: 1e7, qk_rope_head_dim: 64, qk_nope_head_dim: 128, max_position_embeddings: 131072 });
    expect(t.invFreq.length).toBe(32);
    expect(t.attentionFactor).toBe(1);
    expect(t.softmaxScale).toBeCloseTo(0.07216878364870322, 15);
    const ref = refTables(1e7, 64, 128, 131072, null);
    expectClose(t.invFreq, ref.inv, 0, 1e-6, 'invFreq');
    expect(t.invFreq[0]).toBe(1);
    const odd = ropeTables({
      rope_theta: 10000,
      qk_rope_head_dim: 8,
      qk_nope_head_dim: 16,
      rope_scaling: { rope_type: 'default' },
    });
    expectClose(odd.invFreq, refTables(10000, 8, 16, 0, null).inv, 0, 1e-6, 'invFreq (dim 8)');
    expect(odd.softmaxScale).toBeCloseTo(1 / Math.sqrt(24), 15);
  });

  const cases: [string, number, number, number, number, RefRopeScaling][] = [
    // name, theta, rope dim, nope, max_position_embeddings, rope_scaling
    [
      'DeepSeek-V3 style (mscale = mscale_all_dim)',
      10000,
      64,
      128,
      163840,
      { factor: 40, original_max_position_embeddings: 4096, beta_fast: 32, beta_slow: 1, mscale: 1, mscale_all_dim: 1 },
    ],
    [
      'LongCat-Lite style',
      1e7,
      64,
      128,
      327680,
      { factor: 10, original_max_position_embeddings: 32768, beta_fast: 32, beta_slow: 1, mscale: 1, mscale_all_dim: 1 },
    ],
    ['no mscale: attention factor 0.1 ln(s) + 1', 1e6, 16, 16, 65536, { factor: 4 }],
    [
      'mscale only on all dims',
      5e5,
      8,
      16,
      8192,
      { factor: 8, original_max_position_embeddings: 2048, mscale_all_dim: Math.SQRT1_2 },
    ],
    [
      'truncate false, odd betas',
      1e4,
      32,
      40,
      32768,
      { factor: 6, original_max_position_embeddings: 4096, beta_fast: 16, beta_slow: 2, truncate: false },
    ],
    ['explicit attention_factor', 1e4, 64, 128, 16384, { factor: 2, attention_factor: 0.9, mscale: 1, mscale_all_dim: 1 }],
  ];
  it.each(cases)('YaRN tables match transformers: %s', (_name, theta, dim, nope, maxPos, y) => {
    const t = ropeTables({
      rope_theta: theta,
      qk_rope_head_dim: dim,
      qk_nope_head_dim: nope,
      max_position_embeddings: maxPos,
      rope_scaling: { type: 'yarn', ...y },
    });
    const ref = refTables(theta, dim, nope, maxPos, y);
    expectClose(t.invFreq, ref.inv, 0, 2e-6, 'invFreq');
    expect(t.attentionFactor).toBeCloseTo(ref.af, 12);
    expect(t.softmaxScale).toBeCloseTo(ref.scale, 14);
    // YaRN leaves the highest frequencies alone and divides the lowest by the factor.
    expect(t.invFreq[0]).toBe(1);
    const last = dim / 2 - 1;
    expect(t.invFreq[last]! / (1 / theta ** ((2 * last) / dim))).toBeCloseTo(
      1 / (maxPos / (y.original_max_position_embeddings ?? maxPos / y.factor)),
      5,
    );
  });

  it('DeepSeek-V3 known numbers: attention factor 1, softmax scale 192^-0.5 (0.1 ln 40 + 1)^2', () => {
    const t = ropeTables({
      rope_theta: 10000,
      qk_rope_head_dim: 64,
      qk_nope_head_dim: 128,
      max_position_embeddings: 163840,
      rope_scaling: { type: 'yarn', factor: 40, original_max_position_embeddings: 4096, mscale: 1, mscale_all_dim: 1 },
    });
    expect(t.attentionFactor).toBe(1);
    expect(t.softmaxScale).toBeCloseTo(0.07216878364870322 * 1.3688879454113936 ** 2, 14);
  });

  it('rejects unsupported scaling types and bad values', () => {
    expectCode(
      () =>
        ropeTables({ rope_theta: 1e4, qk_rope_head_dim: 8, qk_nope_head_dim: 8, rope_scaling: { type: 'linear', factor: 2 } }),
      'E_CONFIG',
      /linear/,
    );
    expectCode(() => ropeTables({ rope_theta: 0, qk_rope_head_dim: 8, qk_nope_head_dim: 8 }), 'E_CONFIG', /rope_theta/);
    expectCode(() => ropeTables({ rope_theta: 1e4, qk_rope_head_dim: 7, qk_nope_head_dim: 8 }), 'E_CONFIG', /even/);
    expectCode(
      () => ropeTables({ rope_theta: 1e4, qk_rope_head_dim: 8, qk_nope_head_dim: 8, rope_scaling: { type: 'yarn' } }),
      'E_CONFIG',
      /factor/,
    );
  });
});

// ---- The rope op ------------------------------------------------------------------------------------
function ropeRef(x: Float32Array, T: number, H: number, D: number, pos: number[], off: number, inv: Float32Array, af: number) {
  const y = Float64Array.from(x);
  for (let t = 0; t < T; t++)
    for (let i = 0; i < inv.length; i++) {
      const a = Math.fround(pos[t]! * inv[i]!); // the f32 angle of the reference implementation
      const c = Math.cos(a) * af,
        s = Math.sin(a) * af;
      for (let h = 0; h < H; h++) {
        const k = (t * H + h) * D + off + 2 * i;
        const x0 = x[k]!,
          x1 = x[k + 1]!;
        y[k] = x0 * c - x1 * s;
        y[k + 1] = x1 * c + x0 * s;
      }
    }
  return y;
}

describe('rope op', () => {
  const shapes: [number, number, number, number, number][] = [
    // T, heads, headDim, offset, ropeDim
    [1, 1, 8, 0, 8],
    [7, 3, 24, 16, 8], // q: nope 16 | rope 8
    [17, 1, 64, 0, 64], // k_pe
    [5, 4, 40, 10, 30], // rope in the middle, channels on both sides untouched
    [3, 2, 192, 128, 64],
  ];
  it.each(shapes)(
    'matches the float64 reference (T=%i, heads=%i, headDim=%i, offset=%i, ropeDim=%i) on every ISA',
    (T, H, D, off, rd) => {
      const r = rng(T * 1000 + H * 100 + D);
      for (const [theta, af] of [
        [1e7, 1],
        [10000, 1.17],
      ] as const) {
        const tables = ropeTables({ rope_theta: theta, qk_rope_head_dim: rd, qk_nope_head_dim: 0 });
        const x = r.array(T * H * D, -2, 2);
        const pos = Array.from({ length: T }, (_, i) => (i === 0 ? 100000 : i === 1 ? 131071 : r.int(5000) * 2 + 1));
        const want = ropeRef(x, T, H, D, pos, off, tables.invFreq, af);
        for (const isa of isas) {
          native.setIsa(isa);
          const xt = tensor(x, [T, H, D]);
          native.rope(null, xt, tensor(pos, [T], { dtype: 'int32' }), off, tensor(tables.invFreq, [rd / 2]), af);
          const got = toArray(xt);
          expectClose(got, want, 3e-6 * af, 2e-6, `rope ${isa}`);
          for (let t = 0; t < T; t++)
            for (let h = 0; h < H; h++)
              for (let c = 0; c < D; c++)
                if (c < off || c >= off + rd) {
                  const k = (t * H + h) * D + c;
                  if (got[k] !== x[k]) expect.fail(`channel ${c} outside the rope slice changed`);
                }
          xt.dispose();
        }
      }
    },
  );

  it('preserves norms and makes q.k depend only on the position difference', () => {
    const r = rng(77);
    const inv = ropeTables({ rope_theta: 1e7, qk_rope_head_dim: 16, qk_nope_head_dim: 0 }).invFreq;
    const q = r.array(16),
      k = r.array(16);
    const dotAt = (pq: number, pk: number) => {
      const qt = tensor(q, [1, 1, 16]),
        kt = tensor(k, [1, 1, 16]);
      native.rope(null, qt, tensor([pq], [1], { dtype: 'int32' }), 0, tensor(inv, [8]));
      native.rope(null, kt, tensor([pk], [1], { dtype: 'int32' }), 0, tensor(inv, [8]));
      const a = toArray(qt),
        b = toArray(kt);
      let dot = 0;
      for (let i = 0; i < a.length; i++) dot += a[i]! * b[i]!;
      return dot;
    };
    expect(dotAt(10, 3)).toBeCloseTo(dotAt(1007, 1000), 4);
  });

  it('rejects bad arguments with typed errors', () => {
    const x = full([3, 2, 16], 0);
    const inv = tensor([1, 0.5, 0.25, 0.125], [4]);
    const pos = tensor([0, 1, 2], [3], { dtype: 'int32' });
    expectCode(() => native.rope(null, x, tensor([0, 1, 2], [3]), 0, inv), 'E_DTYPE', /positions/);
    expectCode(() => native.rope(null, x, tensor([0, 1], [2], { dtype: 'int32' }), 0, inv), 'E_SHAPE', /positions/);
    expectCode(() => native.rope(null, x, pos, 9, inv), 'E_ARGUMENT', /head dim 16/);
    expectCode(() => native.rope(null, x, pos, -1, inv), 'E_ARGUMENT');
    expectCode(() => native.rope(null, x.view([6, 16]), pos, 0, inv), 'E_SHAPE', /x/);
    expectCode(() => native.rope(null, full([3, 2, 16], 0, { dtype: 'bf16' }), pos, 0, inv), 'E_DTYPE', /x/);
    expectCode(() => native.rope(null, x, pos, 0, inv, NaN), 'E_ARGUMENT', /attentionFactor/);
  });
});
