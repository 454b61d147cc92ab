// Sanity tests of the float64 reference itself (lib/check/reference/longcat-ref.ts), on random tiny
// weights. They prove the oracle right independently of any native code.
import { describe, expect, it } from 'vitest';
import { f32ToFp8e4m3, fp8e4m3ToF32 } from '../lib/numeric.js';
import { expectClose, rng } from './helpers.js';
import {
  type RefConfig,
  applyRope,
  dequantFp8Block,
  mlaScales,
  referenceForward,
  referenceLayerRouter,
  referenceMla,
  referenceMlaAbsorbed,
  referenceMoe,
  referenceMtp,
  referenceRouter,
  ropeParams,
  rmsnorm,
} from '../lib/check/reference/longcat-ref.js';
import { randomWeights, tinyConfig } from './reference/random-weights.js';

const cfg = tinyConfig;
const H = cfg.hidden_size;
const V = cfg.vocab_size;

function randomTokens(seed: number, n: number): number[] {
  const r = rng(seed);
  return Array.from({ length: n }, () => r.int(V));
}

function randomVec(seed: number, n: number, scale = 1): Float64Array {
  const r = rng(seed);
  return Float64Array.from({ length: n }, () => scale * r.normal());
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

describe('reference forward', () => {
  it('runs the tiny preset (8 tokens) and produces finite logits', () => {
    const { W } = randomWeights(cfg, 1);
    const { logits, hidden } = referenceForward(cfg, W, randomTokens(2, 8));
    expect(logits.length).toBe(8 * V);
    expect(hidden.length).toBe(8 * H);
    expect(logits.every(Number.isFinite)).toBe(true);
    // hidden is post final norm: its RMS is close to the norm weight scale (~1)
    let ss = 0;
    for (let i = 0; i < H; i++) ss += hidden[i]! ** 2;
    expect(Math.sqrt(ss / H)).toBeGreaterThan(0.5);
    expect(Math.sqrt(ss / H)).toBeLessThan(2);
  });

  it('is causal: logits of token i do not change when later tokens change', () => {
    const { W } = randomWeights(cfg, 3);
    const a = randomTokens(4, 9);
    const k = 5;
    const b = a.slice();
    for (let i = k; i < b.length; i++) b[i] = (b[i]! + 17 + i) % V;
    const ra = referenceForward(cfg, W, a);
    const rb = referenceForward(cfg, W, b);
    // identical up to position k-1, bit for bit
    expect(Array.from(ra.logits.subarray(0, k * V))).toEqual(Array.from(rb.logits.subarray(0, k * V)));
    expect(Array.from(ra.hidden.subarray(0, k * H))).toEqual(Array.from(rb.hidden.subarray(0, k * H)));
    // and it does depend on the changed tokens from position k on
    expect(maxAbsDiff(ra.logits.subarray(k * V), rb.logits.subarray(k * V))).toBeGreaterThan(1e-3);
    // a prefix run gives the same rows as the full run
    const rp = referenceForward(cfg, W, a.slice(0, k));
    expectClose(rp.logits, ra.logits.subarray(0, k * V), 1e-12, 0, 'prefix logits');
  });

  it('composes the layer as SPEC 3.3: layer_out = h + attn0 + mlp0 + attn1 + mlp1 + moe', () => {
    const { W, store } = randomWeights(cfg, 5);
    const tokens = randomTokens(6, 6);
    const T = tokens.length;
    const got = new Map<string, Float64Array>();
    referenceForward(cfg, W, tokens, { hook: (name, layer, v) => got.set(`${name}.${layer}`, v.slice()) });
    const names = ['attn0', 'moe', 'mlp0', 'attn1', 'mlp1', 'layer_out'];
    for (let L = 0; L < cfg.num_layers; L++) for (const n of names) expect(got.get(`${n}.${L}`)?.length).toBe(T * H);
    // cache rows: one per attention sub-layer, 2 per layer
    for (let c = 0; c < 2 * cfg.num_layers; c++)
      expect(got.get(`kv_latent.${c}`)?.length).toBe(T * (cfg.kv_lora_rank + cfg.qk_rope_head_dim));
    const emb = store.get('model.embed_tokens.weight')!.data;
    let hIn: Float64Array = new Float64Array(T * H);
    tokens.forEach((tok, t) => {
      hIn.set(emb.subarray(tok * H, (tok + 1) * H), t * H);
    });
    for (let L = 0; L < cfg.num_layers; L++) {
      const sum = hIn.map(
        (x, i) =>
          x +
          got.get(`attn0.${L}`)![i]! +
          got.get(`mlp0.${L}`)![i]! +
          got.get(`attn1.${L}`)![i]! +
          got.get(`mlp1.${L}`)![i]! +
          got.get(`moe.${L}`)![i]!,
      );
      expectClose(got.get(`layer_out.${L}`)!, sum, 1e-12, 1e-12, `layer ${L}`);
      // the MoE input is u = rmsnorm(h + attn0): recompute the MoE from it
      const h1 = hIn.map((x, i) => x + got.get(`attn0.${L}`)![i]!);
      const u = rmsnorm(h1, T, H, store.get(`model.layers.${L}.post_attention_layernorm.0.weight`)!.data, cfg.rms_norm_eps);
      expectClose(got.get(`moe.${L}`)!, referenceMoe(cfg, W, L, u, T), 1e-12, 0, `moe ${L}`);
      hIn = got.get(`layer_out.${L}`)!;
    }
  });

  it('throws on a missing tensor and on a wrong shape', () => {
    const { W, store } = randomWeights(cfg, 7);
    store.delete('model.layers.1.mlps.1.up_proj.weight');
    expect(() => referenceForward(cfg, W, [1, 2])).toThrow(/mlps\.1\.up_proj/);
    const { W: W2, store: s2 } = randomWeights(cfg, 7);
    s2.set('model.norm.weight', { shape: [H + 1], data: new Float64Array(H + 1) });
    expect(() => referenceForward(cfg, W2, [1, 2])).toThrow(/model\.norm\.weight/);
    expect(() => referenceForward(cfg, W2, [V])).toThrow(/out of range/);
  });
});

describe('reference router (SPEC 4.1)', () => {
  const E = cfg.n_routed_experts + cfg.zero_expert_num;

  it('softmax over all experts, biased selection, unbiased weights x scale', () => {
    const T = 5;
    const u = randomVec(11, T * H);
    const cls = randomVec(12, E * H, 0.3);
    const bias = new Float64Array(E);
    bias[2] = 10; // expert 2 always chosen, with its unbiased probability
    const r = referenceRouter(u, T, H, cls, bias, cfg.moe_topk, 6);
    for (let t = 0; t < T; t++) {
      // independent softmax
      const logits = Array.from({ length: E }, (_, e) => {
        let s = 0;
        for (let i = 0; i < H; i++) s += u[t * H + i]! * cls[e * H + i]!;
        return s;
      });
      const mx = Math.max(...logits);
      const z = logits.reduce((a, l) => a + Math.exp(l - mx), 0);
      const p = logits.map(l => Math.exp(l - mx) / z);
      expectClose(r.probs.subarray(t * E, (t + 1) * E), p, 1e-14, 1e-12, 'probs');
      const idx = Array.from(r.idx.subarray(t * 3, t * 3 + 3));
      expect(idx[0]).toBe(2);
      // the other two are the two largest unbiased p among the rest
      const rest = p
        .map((v, e) => ({ v, e }))
        .filter(x => x.e !== 2)
        .sort((a, b) => b.v - a.v);
      expect(idx.slice(1)).toEqual([rest[0]!.e, rest[1]!.e]);
      expectClose(
        r.weights.subarray(t * 3, t * 3 + 3),
        idx.map(e => 6 * p[e]!),
        1e-14,
        1e-12,
        'weights',
      );
    }
  });

  it('zero-expert mass = routed_scaling_factor * sum of p over chosen zero experts (SPEC 10.4)', () => {
    const T = 16;
    const u = randomVec(21, T * H);
    const cls = randomVec(22, E * H, 0.5);
    const bias = randomVec(23, E, 0.05);
    const r = referenceRouter(u, T, H, cls, bias, cfg.moe_topk, cfg.routed_scaling_factor);
    let sawZero = 0;
    for (let t = 0; t < T; t++) {
      let mass = 0,
        pz = 0;
      for (let k = 0; k < 3; k++) {
        const e = r.idx[t * 3 + k]!;
        if (e >= cfg.n_routed_experts) {
          mass += r.weights[t * 3 + k]!;
          pz += r.probs[t * E + e]!;
          sawZero++;
        }
      }
      expect(mass).toBeCloseTo(6 * pz, 14);
    }
    expect(sawZero).toBeGreaterThan(0);
  });

  it('breaks ties towards the lower expert id', () => {
    const T = 2;
    const u = randomVec(31, T * H);
    const row = randomVec(32, H);
    const cls = new Float64Array(E * H);
    for (let e = 0; e < E; e++) cls.set(row, e * H); // identical rows: uniform p, all tied
    const r = referenceRouter(u, T, H, cls, new Float64Array(E), 3, 6);
    expect(Array.from(r.idx)).toEqual([0, 1, 2, 0, 1, 2]);
    expectClose(r.weights, new Array(6).fill(6 / E), 1e-15, 1e-12, 'tied weights');
    // a tie created by the bias among higher ids: 9 and 11 get the same boost, 9 wins the last slot
    const bias = new Float64Array(E);
    bias[11] = 1;
    bias[9] = 1;
    bias[10] = 0.5;
    const r2 = referenceRouter(u, T, H, cls, bias, 3, 6);
    expect(Array.from(r2.idx.subarray(0, 3))).toEqual([9, 11, 10]);
  });

  it('MoE with every selection forced onto zero experts is (sum w) * u', () => {
    const { W, store } = randomWeights(cfg, 41);
    const L = 1;
    const bias = store.get(`model.layers.${L}.mlp.router.e_score_correction_bias`)!.data;
    for (let e = cfg.n_routed_experts; e < E; e++) bias[e] = 1e3;
    const T = 4;
    const u = randomVec(42, T * H);
    const r = referenceLayerRouter(cfg, W, L, u, T);
    const y = referenceMoe(cfg, W, L, u, T);
    for (let t = 0; t < T; t++) {
      let sw = 0,
        sp = 0;
      for (let k = 0; k < 3; k++) {
        const e = r.idx[t * 3 + k]!;
        expect(e).toBeGreaterThanOrEqual(cfg.n_routed_experts);
        sw += r.weights[t * 3 + k]!;
        sp += r.probs[t * E + e]!;
      }
      expect(sw).toBeCloseTo(cfg.routed_scaling_factor * sp, 14);
      expectClose(
        y.subarray(t * H, (t + 1) * H),
        Array.from(u.subarray(t * H, (t + 1) * H), x => sw * x),
        1e-14,
        1e-12,
        'moe',
      );
    }
  });

  it('MoE with one FFN expert forced equals w * FFN_e(u) + zero-expert terms', () => {
    const { W, store } = randomWeights(cfg, 43);
    const L = 0,
      e0 = 5;
    const bias = store.get(`model.layers.${L}.mlp.router.e_score_correction_bias`)!.data;
    bias.fill(0);
    bias[e0] = 1e3;
    for (let e = cfg.n_routed_experts; e < E; e++) bias[e] = 1e2; // the remaining 2 slots: zero experts
    const T = 3;
    const u = randomVec(44, T * H);
    const r = referenceLayerRouter(cfg, W, L, u, T);
    const y = referenceMoe(cfg, W, L, u, T);
    const I = cfg.expert_ffn_hidden_size;
    const g = store.get(`model.layers.${L}.mlp.experts.${e0}.gate_proj.weight`)!.data;
    const up = store.get(`model.layers.${L}.mlp.experts.${e0}.up_proj.weight`)!.data;
    const dn = store.get(`model.layers.${L}.mlp.experts.${e0}.down_proj.weight`)!.data;
    for (let t = 0; t < T; t++) {
      expect(r.idx[t * 3]).toBe(e0);
      const ut = u.subarray(t * H, (t + 1) * H);
      const act = Array.from({ length: I }, (_, j) => {
        let a = 0,
          b = 0;
        for (let i = 0; i < H; i++) {
          a += g[j * H + i]! * ut[i]!;
          b += up[j * H + i]! * ut[i]!;
        }
        return (a / (1 + Math.exp(-a))) * b;
      });
      const wz = r.weights[t * 3 + 1]! + r.weights[t * 3 + 2]!;
      const want = Array.from({ length: H }, (_, i) => {
        let s = 0;
        for (let j = 0; j < I; j++) s += dn[i * I + j]! * act[j]!;
        return r.weights[t * 3]! * s + wz * ut[i]!;
      });
      expectClose(y.subarray(t * H, (t + 1) * H), want, 1e-13, 1e-12, 'moe');
    }
  });
});

describe('reference RoPE (SPEC 3.6)', () => {
  const dr = cfg.qk_rope_head_dim;

  it('uses float32 inv_freq = theta^(-2i/d) and interleaved pairs', () => {
    const rp = ropeParams(cfg);
    expect(rp.invFreq.length).toBe(dr / 2);
    for (let i = 0; i < dr / 2; i++) expect(rp.invFreq[i]).toBe(Math.fround(1 / cfg.rope_theta ** ((2 * i) / dr)));
    expect(rp.attentionFactor).toBe(1);
    expect(rp.softmaxScaleFactor).toBe(1);
    // a unit vector on channel 2 (pair 1, even slot) rotates into channels 2 and 3 only
    const x = new Float64Array(dr);
    x[2] = 1;
    applyRope(x, 0, 7, rp);
    const a = 7 * rp.invFreq[1]!;
    expectClose(x, [0, 0, Math.cos(a), Math.sin(a), 0, 0, 0, 0], 1e-15, 0, 'rotated');
  });

  for (const variant of ['plain', 'yarn'] as const) {
    it(`${variant}: preserves norms and q(p).k(s) depends only on p - s`, () => {
      const c: RefConfig =
        variant === 'plain'
          ? cfg
          : {
              ...cfg,
              rope_scaling: {
                rope_type: 'yarn',
                factor: 8,
                original_max_position_embeddings: 512,
                beta_fast: 32,
                beta_slow: 1,
                mscale: 1,
                mscale_all_dim: 1,
              },
            };
      const rp = ropeParams(c);
      expect(rp.attentionFactor).toBe(1);
      const q = randomVec(51, dr),
        k = randomVec(52, dr);
      const rot = (v: Float64Array, p: number) => {
        const y = v.slice();
        applyRope(y, 0, p, rp);
        return y;
      };
      const dot = (a: Float64Array, b: Float64Array) => a.reduce((s, x, i) => s + x * b[i]!, 0);
      for (const p of [0, 1, 5, 123, 3000]) {
        const y = rot(q, p);
        for (let i = 0; i < dr / 2; i++) {
          expect(Math.hypot(y[2 * i]!, y[2 * i + 1]!)).toBeCloseTo(Math.hypot(q[2 * i]!, q[2 * i + 1]!), 12);
        }
      }
      for (const [p, s] of [
        [10, 3],
        [7, 7],
        [100, 40],
      ] as const) {
        const base = dot(rot(q, p), rot(k, s));
        for (const d of [1, 13, 500]) expect(dot(rot(q, p + d), rot(k, s + d))).toBeCloseTo(base, 9);
      }
      // and it does depend on p - s
      expect(Math.abs(dot(rot(q, 10), rot(k, 3)) - dot(rot(q, 10), rot(k, 4)))).toBeGreaterThan(1e-6);
    });
  }

  it('YaRN: extrapolated high frequencies, interpolated low frequencies, mscale', () => {
    const factor = 8;
    const c: RefConfig = {
      ...cfg,
      rope_scaling: {
        rope_type: 'yarn',
        factor,
        original_max_position_embeddings: 4096,
        beta_fast: 32,
        beta_slow: 1,
        mscale: 1,
        mscale_all_dim: 1,
      },
    };
    const plain = ropeParams(cfg).invFreq;
    const y = ropeParams(c);
    // d=8, base 1e4, L=4096: correction dims floor(1.31)=1 and ceil(2.81)=3 -> ramp over i in [1, 3]
    expect(y.invFreq[0]).toBe(plain[0]);
    expect(y.invFreq[1]).toBe(plain[1]);
    expect(y.invFreq[2]).toBeCloseTo(0.5 * plain[2]! + (0.5 * plain[2]!) / factor, 7);
    expect(y.invFreq[3]).toBeCloseTo(plain[3]! / factor, 9);
    const m = 0.1 * Math.log(factor) + 1;
    expect(y.softmaxScaleFactor).toBeCloseTo(m * m, 14);
    expect(mlaScales(c).softmax).toBeCloseTo((m * m) / Math.sqrt(cfg.qk_nope_head_dim + dr), 14);
    expect(y.attentionFactor).toBe(1); // mscale == mscale_all_dim
    // without mscale (only mscale_all_dim) transformers scales cos/sin by get_mscale(factor)
    const c2: RefConfig = {
      ...cfg,
      rope_scaling: { rope_type: 'yarn', factor, original_max_position_embeddings: 4096, mscale_all_dim: 1 },
    };
    expect(ropeParams(c2).attentionFactor).toBeCloseTo(m, 14);
  });
});

describe('reference MLA (SPEC 3.5 / 5.2)', () => {
  it('absorbed W_UK / W_UV attention equals the naive form (1e-9)', () => {
    const { W } = randomWeights(cfg, 61);
    for (const positions of [[0, 1, 2, 3, 4, 5, 6], [3, 5, 6, 10], [0]]) {
      const T = positions.length;
      const x = randomVec(62 + T, T * H);
      let rowsN: Float64Array | undefined, rowsA: Float64Array | undefined;
      const naive = referenceMla(cfg, W, 'model.layers.1.self_attn.0', x, T, positions, { onCache: r => (rowsN = r) });
      const absorbed = referenceMlaAbsorbed(cfg, W, 'model.layers.1.self_attn.0', x, T, positions, { onCache: r => (rowsA = r) });
      expect(naive.every(Number.isFinite)).toBe(true);
      expectClose(absorbed, naive, 1e-9, 1e-9, `absorbed, positions ${positions}`);
      expect(Array.from(rowsA!)).toEqual(Array.from(rowsN!));
    }
  });

  it('applies the mla scales: latent cache rows have RMS sqrt(H / kv_lora) with unit norm weights', () => {
    const { W, store } = randomWeights(cfg, 71);
    store.get('model.layers.0.self_attn.0.kv_a_layernorm.weight')!.data.fill(1);
    const T = 3;
    let rows: Float64Array | undefined;
    referenceMla(cfg, W, 'model.layers.0.self_attn.0', randomVec(72, T * H), T, [0, 1, 2], {
      onCache: r => (rows = r),
      latentEps: 0,
    });
    const R = cfg.kv_lora_rank,
      dr = cfg.qk_rope_head_dim;
    for (let t = 0; t < T; t++) {
      let ss = 0;
      for (let j = 0; j < R; j++) ss += rows![t * (R + dr) + j]! ** 2;
      expect(Math.sqrt(ss / R)).toBeCloseTo(Math.sqrt(H / R), 12);
    }
    // a single token attends only to itself: the output is o_proj(v) whatever the query, so changing
    // the query projection changes nothing at T = 1 and something at T = 2
    const p = 'model.layers.0.self_attn.0';
    const x1 = randomVec(73, H),
      x2 = randomVec(74, 2 * H);
    const [r1, r2] = [referenceMla(cfg, W, p, x1, 1, [0]), referenceMla(cfg, W, p, x2, 2, [0, 1])];
    const qb = store.get(`${p}.q_b_proj.weight`)!.data;
    for (let i = 0; i < qb.length; i++) qb[i] = qb[i]! * (1 + 0.5 * Math.sin(i));
    expectClose(referenceMla(cfg, W, p, x1, 1, [0]), r1, 1e-12, 1e-12, 'T = 1: independent of the query');
    expect(maxAbsDiff(referenceMla(cfg, W, p, x2, 2, [0, 1]).subarray(H), r2.subarray(H))).toBeGreaterThan(1e-6);
  });
});

describe('reference MTP (SPEC 6.1)', () => {
  it('is causal over positions, puts the embedding first and uses the main lm_head', () => {
    const { W, store } = randomWeights(cfg, 81);
    const T = 5;
    const hidden = referenceForward(cfg, W, randomTokens(82, T)).hidden;
    const next = randomTokens(83, T);
    const pos = [0, 1, 2, 3, 4];
    const a = referenceMtp(cfg, W, hidden, next, pos);
    expect(a.logits.length).toBe(T * V);
    expect(a.logits.every(Number.isFinite)).toBe(true);
    const next2 = next.slice();
    next2[4] = (next2[4]! + 1) % V;
    const b = referenceMtp(cfg, W, hidden, next2, pos);
    expect(Array.from(a.logits.subarray(0, 4 * V))).toEqual(Array.from(b.logits.subarray(0, 4 * V)));
    expect(maxAbsDiff(a.logits.subarray(4 * V), b.logits.subarray(4 * V))).toBeGreaterThan(1e-6);
    // zero the hidden half (columns H..2H) of eh_proj: the output no longer depends on hiddenPrev
    const eh = store.get('model.mtp.layers.0.eh_proj.weight')!.data;
    for (let r = 0; r < H; r++) eh.fill(0, r * 2 * H + H, (r + 1) * 2 * H);
    const c1 = referenceMtp(cfg, W, hidden, next, pos);
    const c2 = referenceMtp(cfg, W, randomVec(84, T * H), next, pos);
    expectClose(c2.logits, c1.logits, 1e-12, 0, 'embedding half only');
    // logits = final-norm hidden @ lm_head^T (the main head)
    const lm = store.get('lm_head.weight')!.data;
    let l0 = 0;
    for (let i = 0; i < H; i++) l0 += c1.hidden[i]! * lm[7 * H + i]!;
    expect(c1.logits[7]).toBeCloseTo(l0, 12);
    // embedding table choice (SPEC O5)
    const main = referenceMtp(cfg, W, hidden, next, pos, { embed: 'main' });
    expect(maxAbsDiff(main.logits, c1.logits)).toBeGreaterThan(1e-6);
    store.delete('model.mtp.embed_tokens.weight');
    expectClose(referenceMtp(cfg, W, hidden, next, pos).logits, main.logits, 0, 0, 'fallback to the main embedding');
  });
});

describe('fp8 block dequantization (SPEC 7.2)', () => {
  it('multiplies each 128x128 block by its scale, rounding to float32', () => {
    const n = 130,
      k = 260; // ragged last blocks in both dimensions
    const r = rng(91);
    const q = Uint8Array.from({ length: n * k }, () => f32ToFp8e4m3(r.uniform(-400, 400)));
    const scales = Float32Array.from({ length: 2 * 3 }, () => r.uniform(0.001, 0.1));
    const w = dequantFp8Block(q, scales, n, k);
    for (const [row, col] of [
      [0, 0],
      [127, 127],
      [128, 0],
      [0, 128],
      [129, 259],
      [64, 200],
    ] as const) {
      const s = scales[Math.floor(row / 128) * 3 + Math.floor(col / 128)]!;
      expect(w[row * k + col]).toBe(Math.fround(fp8e4m3ToF32(q[row * k + col]!) * s));
    }
    expect(fp8e4m3ToF32(0x7e)).toBe(448);
    expect(() => dequantFp8Block(q, scales.subarray(0, 5), n, k)).toThrow(/scales/);
  });
});
