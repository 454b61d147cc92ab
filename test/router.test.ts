// routerTopk: softmax over routed + zero experts, top-k on the biased scores, unbiased weights x scale.
import { afterAll, describe, expect, it } from 'vitest';
import { Stream, native, tensor, toArray, type Tensor } from '../lib/index.js';
import { expectClose, rng, expectCode } from './helpers.js';

/** float64 reference: p = softmax(l), order by (p + b desc, index asc). */
function refRouter(logits: ArrayLike<number>, bias: ArrayLike<number>, t: number, e: number) {
  const p: Float64Array[] = [],
    order: number[][] = [],
    score: Float64Array[] = [];
  for (let i = 0; i < t; i++) {
    let m = -Infinity;
    for (let j = 0; j < e; j++) m = Math.max(m, logits[i * e + j]!);
    const pi = new Float64Array(e);
    let s = 0;
    for (let j = 0; j < e; j++) s += pi[j] = Math.exp(logits[i * e + j]! - m);
    for (let j = 0; j < e; j++) pi[j]! /= s;
    const sc = Float64Array.from(pi, (v, j) => v + bias[j]!);
    const ord = Array.from({ length: e }, (_, j) => j).sort((a, b) => sc[b]! - sc[a]! || a - b);
    p.push(pi);
    score.push(sc);
    order.push(ord);
  }
  return { p, order, score };
}

interface Out {
  idx: Int32Array;
  w: Float32Array;
  nffn: Int32Array;
}

/** A routerTopk problem: logits [t, e] and bias [e] over e experts (the first nRouted routed), top k, weight scale. */
interface Routing {
  logits: Float32Array;
  bias: Float32Array;
  t: number;
  e: number;
  k: number;
  nRouted: number;
  scale: number;
}

function runRouter({ logits, bias, t, e, k, nRouted, scale }: Routing, stream: Stream | null = null): Out {
  const lt = tensor(logits, [t, e]),
    bt = tensor(bias, [e]);
  const idx = tensor(new Int32Array(t * k).fill(-7), [t, k], { dtype: 'int32' });
  const w = tensor(new Float32Array(t * k).fill(NaN), [t, k]);
  const nffn = tensor(new Int32Array(t).fill(-7), [t], { dtype: 'int32' });
  native.routerTopk(stream, idx, w, nffn, lt, bt, nRouted, scale);
  const out = { idx: toArray(idx) as Int32Array, w: toArray(w) as Float32Array, nffn: toArray(nffn) as Int32Array };
  for (const x of [lt, bt, idx, w, nffn]) x.dispose();
  return out;
}

/**
 * Checks a native result against the float64 reference. Positions whose reference scores are
 * separated by more than `gap` must match exactly; a near-tie (closer than fp32 can resolve) must
 * pick an expert whose reference score equals the reference's choice within `gap`.
 */
function check(o: Out, { logits, bias, t, e, k, nRouted, scale }: Routing) {
  const ref = refRouter(logits, bias, t, e);
  const gap = 1e-6;
  for (let i = 0; i < t; i++) {
    const got = Array.from(o.idx.subarray(i * k, i * k + k));
    const want = ref.order[i]!.slice(0, k);
    expect(new Set(got).size, `token ${i}: distinct experts`).toBe(k);
    for (let j = 0; j < k; j++) {
      const g = got[j]!,
        wnt = want[j]!;
      expect(g >= 0 && g < e, `token ${i} slot ${j}: idx ${g} in range`).toBe(true);
      const sw = ref.score[i]![wnt]!;
      const neighbours = [ref.order[i]![j - 1], ref.order[i]![j + 1]].filter(x => x !== undefined) as number[];
      const clear = neighbours.every(n => Math.abs(ref.score[i]![n]! - sw) > gap);
      if (clear) expect(g, `token ${i} slot ${j}`).toBe(wnt);
      else expect(Math.abs(ref.score[i]![g]! - sw), `token ${i} slot ${j}: near-tie`).toBeLessThanOrEqual(gap);
    }
    // Weights are the unbiased probabilities of the chosen experts times scale.
    const wantW = got.map(g => ref.p[i]![g]! * scale);
    expectClose(o.w.subarray(i * k, i * k + k), wantW, 1e-7, 2e-6, `token ${i} weights`);
    expect(o.nffn[i], `token ${i} nFfn`).toBe(got.filter(g => g < nRouted).length);
  }
}

const originalIsa = native.cpuFeatures().isa;
afterAll(() => {
  native.setIsa(originalIsa);
});

describe('routerTopk', () => {
  const cases: Array<[t: number, nRouted: number, nZero: number, k: number]> = [
    [1, 1, 0, 1],
    [3, 5, 4, 2],
    [17, 8, 1, 6],
    [64, 8, 4, 5],
    [7, 40, 13, 12],
    [17, 512, 256, 12],
    [3, 0, 9, 3],
    [5, 9, 0, 9],
  ];
  it.each(cases)('matches a float64 reference: T=%i, %i routed + %i zero experts, k=%i', (t, nRouted, nZero, k) => {
    const e = nRouted + nZero;
    const r = rng(t * 1000 + e * 7 + k);
    for (const isa of ['scalar', 'avx2', 'avx512'] as const) {
      native.setIsa(isa);
      const logits = Float32Array.from({ length: t * e }, () => 2 * r.normal());
      const bias = Float32Array.from({ length: e }, () => 0.05 * r.normal());
      const c = { logits, bias, t, e, k, nRouted, scale: 6.0 };
      check(runRouter(c), c);
    }
  });

  it('outputs choices in descending biased-score order, the bias only selecting', () => {
    // Expert 3 has the largest p but a large negative bias; expert 0 the smallest p but a big bias.
    const logits = Float32Array.from([0, 1, 2, 5, 3, 4]);
    const bias = Float32Array.from([10, 0, 0, -10, 0, 0]);
    const o = runRouter({ logits, bias, t: 1, e: 6, k: 4, nRouted: 3, scale: 2.5 });
    expect(Array.from(o.idx)).toEqual([0, 5, 4, 2]);
    const ref = refRouter(logits, bias, 1, 6);
    expectClose(
      o.w,
      [0, 5, 4, 2].map(j => 2.5 * ref.p[0]![j]!),
      1e-7,
      1e-6,
      'weights',
    );
    expect(o.nffn[0]).toBe(2); // experts 0 and 2 are routed (< 3); 5 and 4 are zero experts
  });

  it('breaks exact ties by the lower expert index', () => {
    const e = 12,
      t = 4,
      k = 5;
    const logits = new Float32Array(t * e),
      bias = new Float32Array(e);
    // token 0: all equal -> experts 0..4
    // token 1: equal logits except two larger ones at 9 and 7 -> 7, 9 (tied) then 0, 1, 2
    logits.fill(0.5, e, 2 * e);
    logits[e + 9] = 3;
    logits[e + 7] = 3;
    // token 2: ties through the bias: logits equal, bias equal on a subset {11, 4, 6} above the rest
    // token 3: descending logits on the upper half, equal on the lower -> 11, 10, 9, 8, 7 ... no ties needed
    for (let j = 0; j < e; j++) logits[3 * e + j] = j < 6 ? 0 : j;
    const biasTie = new Float32Array(e);
    biasTie[11] = 0.25;
    biasTie[4] = 0.25;
    biasTie[6] = 0.25;
    const c = { logits, bias, t, e, k, nRouted: 8, scale: 6.0 };
    const o = runRouter(c);
    expect(Array.from(o.idx.subarray(0, k))).toEqual([0, 1, 2, 3, 4]);
    expect(Array.from(o.idx.subarray(k, 2 * k))).toEqual([7, 9, 0, 1, 2]);
    expect(Array.from(o.idx.subarray(3 * k, 4 * k))).toEqual([11, 10, 9, 8, 7]);
    const o2 = runRouter({ ...c, logits: logits.subarray(2 * e, 3 * e).slice(), bias: biasTie, t: 1 });
    expect(Array.from(o2.idx)).toEqual([4, 6, 11, 0, 1]);
    expect(o2.nffn[0]).toBe(4); // 4, 6, 0, 1 < 8
    // Equal scores give equal weights.
    expect(o2.w[0]).toBe(o2.w[1]);
    expect(o2.w[0]).toBe(o2.w[3]);
    check(o, c);
  });

  it('scales zero-expert weights too: zero-expert mass = 6.0 * sum p over chosen zero experts (SPEC 10.4)', () => {
    const t = 9,
      nRouted = 16,
      nZero = 8,
      e = nRouted + nZero,
      k = 6;
    const r = rng(404);
    const logits = Float32Array.from({ length: t * e }, () => r.normal());
    // Favour zero experts through the bias so most tokens pick some.
    const bias = Float32Array.from({ length: e }, (_, j) => (j >= nRouted ? 0.08 : 0) + 0.01 * r.normal());
    const c = { logits, bias, t, e, k, nRouted, scale: 6.0 };
    const o = runRouter(c);
    const ref = refRouter(logits, bias, t, e);
    let tokensWithZero = 0;
    for (let i = 0; i < t; i++) {
      // over the chosen experts (all, or the zero ones): the sum of the weights and of the reference p
      const chosen = Array.from(o.idx.subarray(i * k, (i + 1) * k), (g, j) => ({ g, w: o.w[i * k + j]!, p: ref.p[i]![g]! }));
      const zero = chosen.filter(x => x.g >= nRouted);
      const sum = (list: typeof chosen, of: 'w' | 'p') => list.reduce((acc, x) => acc + x[of], 0);
      const [total, ptotal, mass, pz] = [sum(chosen, 'w'), sum(chosen, 'p'), sum(zero, 'w'), sum(zero, 'p')];
      if (pz > 0) tokensWithZero++;
      expect(Math.abs(mass - 6.0 * pz)).toBeLessThanOrEqual(1e-6 + 1e-5 * 6 * pz);
      // No renormalisation over the chosen k: the weights sum to 6 * (their p mass), not 6.
      expect(Math.abs(total - 6.0 * ptotal)).toBeLessThanOrEqual(1e-5);
      expect(total).toBeLessThan(6.0 - 1e-3);
    }
    expect(tokensWithZero).toBeGreaterThanOrEqual(5);
    check(o, c);
  });

  it('is identical with 1 and 2 threads and on a second stream', () => {
    const t = 97,
      e = 768,
      k = 12;
    const r = rng(77);
    const logits = Float32Array.from({ length: t * e }, () => r.normal());
    const bias = Float32Array.from({ length: e }, () => 0.01 * r.normal());
    const c = { logits, bias, t, e, k, nRouted: 512, scale: 6.0 };
    const before = native.threads();
    try {
      native.setThreads(1);
      const a = runRouter(c);
      native.setThreads(2);
      const s = new Stream('cpu');
      const b = runRouter(c, s);
      s.dispose();
      expect(b.idx).toEqual(a.idx);
      expect(new Uint32Array(b.w.buffer)).toEqual(new Uint32Array(a.w.buffer));
      expect(b.nffn).toEqual(a.nffn);
    } finally {
      native.setThreads(before);
    }
  });

  it('accepts a null nFfn', () => {
    const lt = tensor([1, 2, 3, 0], [1, 4]),
      bt = tensor([0, 0, 0, 0], [4]);
    const idx = tensor([-1, -1], [1, 2], { dtype: 'int32' }),
      w = tensor([NaN, NaN], [1, 2]);
    native.routerTopk(null, idx, w, null, lt, bt, 2, 1.0);
    expect(Array.from(toArray(idx))).toEqual([2, 1]);
    for (const x of [lt, bt, idx, w]) x.dispose();
  });

  it('rejects bad arguments with typed errors', () => {
    const t = 3,
      e = 10,
      k = 4;
    const mk = (shape: number[], dtype: 'f32' | 'int32' | 'bf16' = 'f32') =>
      tensor(new Array(shape.reduce((a, b) => a * b, 1)).fill(0), shape, { dtype });
    const L = mk([t, e]),
      B = mk([e]),
      I = mk([t, k], 'int32'),
      W = mk([t, k]),
      N = mk([t], 'int32');
    const all: Tensor[] = [L, B, I, W, N];
    const keep = <T extends Tensor>(x: T) => {
      all.push(x);
      return x;
    };
    expectCode(
      () => native.routerTopk(null, I, W, N, keep(mk([t, e], 'bf16')), B, 5, 6),
      'E_DTYPE',
      /routerTopk: 'logits' has dtype bf16/,
    );
    expectCode(() => native.routerTopk(null, I, W, N, L, keep(mk([e + 1])), 5, 6), 'E_SHAPE', /'bias'/);
    expectCode(() => native.routerTopk(null, keep(mk([t, k])), W, N, L, B, 5, 6), 'E_DTYPE', /'idx'/);
    expectCode(() => native.routerTopk(null, I, keep(mk([t, k + 1])), N, L, B, 5, 6), 'E_SHAPE', /'weights'/);
    expectCode(() => native.routerTopk(null, I, W, keep(mk([t + 1], 'int32')), L, B, 5, 6), 'E_SHAPE', /'nFfn'/);
    expectCode(() => native.routerTopk(null, I, W, keep(mk([t], 'f32')), L, B, 5, 6), 'E_DTYPE', /'nFfn'/);
    expectCode(
      () => native.routerTopk(null, keep(mk([t, e + 1], 'int32')), keep(mk([t, e + 1])), N, L, B, 5, 6),
      'E_SHAPE',
      /k = 11/,
    );
    expectCode(() => native.routerTopk(null, I, W, N, L, B, 11, 6), 'E_ARGUMENT', /nRouted/);
    expectCode(() => native.routerTopk(null, I, W, N, L, B, -1, 6), 'E_ARGUMENT', /nRouted/);
    expectCode(() => native.routerTopk(null, I, W, N, L, B, 5, NaN), 'E_ARGUMENT', /scale/);
    expectCode(() => native.routerTopk(null, I, W, N, keep(mk([t + 1, e])), B, 5, 6), 'E_SHAPE', /'idx'/);
    for (const x of all) x.dispose();
  });
});
