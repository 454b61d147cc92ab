// sampleSpeculative (rejection sampling of deterministic drafts) and selectAccepted on the CPU:
// against a float64 reference of the rule (native/cpu/sampling.h) at odd sizes with every branch
// hit, a chi-square test that the first token follows the sampler's filtered distribution whatever
// the draft (CPU, and CUDA where present), thread-count independence, graph capture and replay
// (each backend), and typed errors for bad inputs. The CUDA kernels are also compared with the CPU
// in lib/check/op-cases.ts (test/cuda.test.ts, emulated or on a GPU).
import { describe, expect, it } from 'vitest';
import { native, tensor, toArray, empty, Stream } from '../lib/index.js';
import type { Tensor } from '../lib/index.js';
import { rng, expectCode, backends, cudaAvailable, workLimitMs } from './helpers.js';
import {
  argmaxRef,
  chiSquare,
  filtered,
  sampleUniform,
  speculativeParams,
  UNIFORM_ACCEPT,
  UNIFORM_RESIDUAL,
  type SampleP,
} from '../lib/check/sampling-reference.js';

const POISON = -7;
const i32 = (values: ArrayLike<number>, shape: number[]) => tensor(Array.from(values), shape, { dtype: 'int32' });
const poisoned = (shape: number[]) => i32(new Array(shape.reduce((a, b) => a * b, 1)).fill(POISON), shape);

interface Run {
  tokens: Int32Array;
  accepted: Int32Array;
}
function speculate(
  logits: Float32Array,
  V: number,
  drafts: number[],
  k: number,
  positions: number[],
  params: number[][],
  device = 'cpu',
): Run {
  const B = params.length;
  const on = (t: Tensor) => (device === 'cpu' ? t : t.to(device));
  const tokens = on(poisoned([B, k + 1])),
    accepted = on(poisoned([B]));
  native.sampleSpeculative(
    null,
    tokens,
    accepted,
    on(tensor(logits, [B * (k + 1), V])),
    on(i32(drafts, [B, k])),
    on(i32(positions, [B * (k + 1)])),
    on(i32(params.flat(), [B, 6])),
  );
  return { tokens: toArray(tokens) as Int32Array, accepted: toArray(accepted) as Int32Array };
}

/** A one-row native.sample call: the token a bonus row must equal. */
function sampleOne(row: Float32Array, p: SampleP, seed: bigint, step: number): number {
  const ids = i32([-1], [1]);
  native.sample(null, ids, tensor(row, [1, row.length]), p.temperature, p.topK, p.topP, p.minP, Number(seed), step);
  return toArray(ids)[0]!;
}

/** Whether the CPU walks the survivors in ascending id order (no top-k heap, no top-p partition). */
const canonicalOrder = (p: SampleP, V: number) => (p.topK === 0 || p.topK >= V) && p.topP >= 1;

const PARAMS: SampleP[] = [
  { temperature: 0, topK: 0, topP: 1, minP: 0 },
  { temperature: 1, topK: 0, topP: 1, minP: 0 },
  { temperature: 0.7, topK: 5, topP: 1, minP: 0 },
  { temperature: 1.3, topK: 0, topP: 0.9, minP: 0.02 },
  { temperature: 0.9, topK: 0, topP: 1, minP: 0.05 },
];
type Kind = 'sure' | 'never' | 'likely';
// Per sequence, the kind of each draft: all accepted, none, partial, and drawn from p_j (either).
const PATTERNS: Kind[][] = [['sure'], ['never'], ['sure', 'never'], ['likely'], ['sure', 'likely'], ['likely', 'sure', 'never']];

describe('sampleSpeculative (CPU)', () => {
  it('matches the float64 reference of the rule: B x k x V at odd sizes, greedy and sampled, every branch', () => {
    const r = rng(1601);
    const seen = { all: 0, none: 0, partial: 0, outsideTopK: 0, residualExact: 0, bonusExact: 0, ambiguous: 0 };
    let combo = 0;
    for (const B of [1, 3, 5])
      for (const k of [1, 2, 3])
        for (const V of [7, 1000, 50257]) {
          combo++;
          const R = k + 1;
          const logits = Float32Array.from({ length: B * R * V }, () => r.normal() * 2);
          const drafts: number[] = [],
            positions: number[] = [],
            params: number[][] = [],
            ps: SampleP[] = [],
            seeds: bigint[] = [];
          for (let b = 0; b < B; b++) {
            const p = PARAMS[(b + combo) % PARAMS.length]!;
            const seed = (BigInt(combo) << 40n) + BigInt(r.uint32()) * 7919n + BigInt(b); // above 2^32: both words used
            ps.push(p);
            seeds.push(seed);
            params.push(speculativeParams(p, seed));
            const p0 = r.int(5000);
            for (let j = 0; j < R; j++) positions.push(p0 + j);
            const pattern = PATTERNS[(b + 2 * combo) % PATTERNS.length]!;
            for (let j = 0; j < k; j++) {
              const row = logits.subarray((b * R + j) * V, (b * R + j + 1) * V);
              const kind = pattern[Math.min(j, pattern.length - 1)]!;
              const top = argmaxRef(row);
              let d: number;
              if (kind === 'sure') {
                d = top;
                if (p.temperature > 0) row[d] = row[d]! + 40; // p_j(d) = 1 up to ~1e-7
              } else if (kind === 'never') {
                if (p.topK > 0 && p.topK < V) {
                  // a token outside the top-k: filtered, so p_j(d) = 0 exactly
                  const order = Array.from(row.keys()).sort((a, c) => row[c]! - row[a]! || a - c);
                  d = order[p.topK + r.int(V - p.topK)]!;
                  seen.outsideTopK++;
                } else {
                  d = (top + 1 + r.int(V - 1)) % V;
                  if (p.temperature > 0) row[d] = Math.min(...row) - 40;
                }
              } else {
                // drawn from p_j: accepted with probability p_j(d), often neither 0 nor 1
                const q = p.temperature > 0 ? filtered(row, p) : null;
                d = q ? drawFrom(q, r.uniform(0, 1)) : r.int(2) ? top : r.int(V);
              }
              drafts.push(d);
            }
          }
          const got = speculate(logits, V, drafts, k, positions, params);
          for (let b = 0; b < B; b++) {
            const p = ps[b]!,
              seed = seeds[b]!;
            const what = `B=${B} k=${k} V=${V} seq ${b} ${JSON.stringify(p)}`;
            const a = got.accepted[b]!;
            const toks = Array.from(got.tokens.subarray(b * R, (b + 1) * R));
            let want = 0,
              stop = -1; // the reference's accepted count; the row that ended it (k: bonus)
            for (let j = 0; j <= k && stop < 0; j++) {
              const row = logits.subarray((b * R + j) * V, (b * R + j + 1) * V);
              const step = positions[b * R + j]! + 1;
              if (j === k) {
                stop = k;
                break;
              }
              const d = drafts[b * k + j]!;
              let accept: boolean;
              if (p.temperature === 0) accept = d === argmaxRef(row);
              else {
                const pd = filtered(row, p)[d]!;
                const u = sampleUniform(seed, BigInt(step), UNIFORM_ACCEPT);
                if (Math.abs(u - pd) < 1e-5) {
                  seen.ambiguous++; // f32 vs f64 weights could decide either way: follow the kernel
                  accept = a > j;
                } else accept = u < pd;
              }
              if (accept) want++;
              else stop = j;
            }
            expect(a, `${what}: accepted`).toBe(want);
            expect(toks.slice(0, a), `${what}: accepted drafts`).toEqual(drafts.slice(b * k, b * k + a));
            expect(toks.slice(a), `${what}: tail repeats the last token`).toEqual(new Array(R - a).fill(toks[a]));
            const row = logits.subarray((b * R + a) * V, (b * R + a + 1) * V);
            const step = positions[b * R + a]! + 1;
            const tok = toks[a]!;
            if (a === k) {
              // the bonus token: exactly what a one-row sample call draws at that step
              expect(tok, `${what}: bonus`).toBe(sampleOne(row, p, seed, step));
              seen.bonusExact++;
            } else if (p.temperature === 0) {
              expect(tok, `${what}: greedy correction`).toBe(argmaxRef(row));
            } else {
              const d = drafts[b * k + a]!;
              const q = filtered(row, p);
              expect(tok, `${what}: the correction is not the rejected draft`).not.toBe(d);
              expect(q[tok]!, `${what}: the correction ${tok} survives the filters`).toBeGreaterThan(0);
              if (canonicalOrder(p, V)) {
                const ref = residualDraw(q, d, sampleUniform(seed, BigInt(step), UNIFORM_RESIDUAL));
                if (ref !== null) {
                  expect(tok, `${what}: residual draw`).toBe(ref);
                  seen.residualExact++;
                }
              }
            }
            if (a === k) seen.all++;
            else if (a === 0) seen.none++;
            else seen.partial++;
          }
        }
    if (process.env.LC_DEBUG_SPEC) console.log(seen);
    // every branch was taken, and the reference decided (nearly) all of them on its own
    expect(seen.all).toBeGreaterThan(5);
    expect(seen.none).toBeGreaterThan(5);
    expect(seen.partial).toBeGreaterThan(5);
    expect(seen.outsideTopK).toBeGreaterThan(2);
    expect(seen.residualExact).toBeGreaterThan(3);
    expect(seen.bonusExact).toBeGreaterThan(5);
    expect(seen.ambiguous).toBeLessThanOrEqual(2);
  });

  it('the first token follows the filtered distribution whatever the draft (chi-square over 20k seeds)', () => {
    firstTokenDistribution('cpu', 20000, DISTRIBUTION_CASES);
  });

  it('is a pure function of its inputs: thread counts, repeated calls', () => {
    const r = rng(1602);
    const B = 7,
      k = 3,
      V = 3001;
    const logits = Float32Array.from({ length: B * (k + 1) * V }, () => r.normal() * 1.5);
    // half the drafts the row's argmax (often accepted), half random (mostly rejected)
    const drafts = Array.from({ length: B * k }, (_, i) => {
      const row = Math.floor(i / k) * (k + 1) + (i % k);
      return r.int(2) ? argmaxRef(logits.subarray(row * V, (row + 1) * V)) : r.int(V);
    });
    const positions = Array.from({ length: B * (k + 1) }, (_, i) => 10 + i);
    const params = Array.from({ length: B }, (_, b) => speculativeParams(PARAMS[b % PARAMS.length]!, BigInt(b + 1)));
    const ref = speculate(logits, V, drafts, k, positions, params);
    const threads = native.threads();
    try {
      for (const t of [1, 2, 3]) {
        native.setThreads(t);
        const got = speculate(logits, V, drafts, k, positions, params);
        expect(Array.from(got.tokens), `threads ${t}`).toEqual(Array.from(ref.tokens));
        expect(Array.from(got.accepted), `threads ${t}`).toEqual(Array.from(ref.accepted));
      }
    } finally {
      native.setThreads(threads);
    }
  });

  it('greedy edge rows: NaN never wins, ties go to the lowest id, all -inf gives 0', () => {
    const V = 4,
      k = 2;
    const g = speculativeParams({ temperature: 0, topK: 0, topP: 1, minP: 0 }, 0n);
    // row 0: NaN and a tie at 3.0 -> argmax 1 (draft 1 accepted); row 1: all -inf -> 0 (draft 2 rejected)
    const logits = new Float32Array([NaN, 3, 1, 3, -Infinity, -Infinity, -Infinity, -Infinity, 0, 0, 0, 9]);
    const got = speculate(logits, V, [1, 2], k, [5, 6, 7], [g]);
    expect(Array.from(got.accepted)).toEqual([1]);
    expect(Array.from(got.tokens)).toEqual([1, 0, 0]);
  });

  it('rejects bad inputs with typed errors', () => {
    const B = 2,
      k = 2,
      V = 5,
      R = k + 1;
    const good = speculativeParams({ temperature: 1, topK: 0, topP: 1, minP: 0 }, 3n);
    const mk = () => ({
      tokens: poisoned([B, R]),
      accepted: poisoned([B]),
      logits: tensor(new Float32Array(B * R * V), [B * R, V]),
      drafts: i32([0, 1, 2, 3], [B, k]),
      positions: i32([0, 1, 2, 0, 1, 2], [B * R]),
      params: i32([...good, ...good], [B, 6]),
    });
    const call = (o: Partial<Record<keyof ReturnType<typeof mk>, unknown>>) => {
      const a = { ...mk(), ...o };
      (native.sampleSpeculative as unknown as (...x: unknown[]) => void)(
        null,
        a.tokens,
        a.accepted,
        a.logits,
        a.drafts,
        a.positions,
        a.params,
      );
    };
    call({}); // the baseline is valid
    expectCode(
      () => call({ logits: tensor(new Float32Array(5 * V), [5, V]) }),
      'E_SHAPE',
      /'logits' has 5 rows, expected B \* \(k \+ 1\) = 6/,
    );
    expectCode(() => call({ logits: tensor(new Float32Array(B * R * V), [B * R, V], { dtype: 'bf16' }) }), 'E_DTYPE', /'logits'/);
    expectCode(() => call({ logits: tensor(new Float32Array(B * R * V), [B * R * V]) }), 'E_SHAPE', /'logits'.*2 dimensions/);
    expectCode(() => call({ drafts: tensor(new Float32Array(4), [B, k]) }), 'E_DTYPE', /'drafts' has dtype f32, expected int32/);
    expectCode(() => call({ drafts: i32([0, 1, 2, 3], [4]) }), 'E_SHAPE', /'drafts'/);
    expectCode(() => call({ positions: i32([0, 1, 2, 0, 1], [5]) }), 'E_SHAPE', /'positions' has shape \[5\], expected \[6\]/);
    expectCode(() => call({ params: i32(good, [1, 6]) }), 'E_SHAPE', /'params' has shape \[1, 6\], expected \[2, 6\]/);
    expectCode(() => call({ params: i32([...good, ...good].slice(0, 10), [B, 5]) }), 'E_SHAPE', /'params'/);
    expectCode(() => call({ tokens: poisoned([B, k]) }), 'E_SHAPE', /'tokens' has shape \[2, 2\], expected \[2, 3\]/);
    expectCode(() => call({ tokens: tensor(new Float32Array(B * R), [B, R]) }), 'E_DTYPE', /'tokens'/);
    expectCode(() => call({ accepted: poisoned([B + 1]) }), 'E_SHAPE', /'accepted'/);
    expectCode(() => call({ tokens: 'x' }), 'E_ARGUMENT', /tokens/);
    const shared = poisoned([B * R + B]);
    expectCode(
      () => call({ tokens: shared.narrow(0, B * R).view([B, R]), accepted: shared.narrow(B * R - 1, B) }),
      'E_ARGUMENT',
      /'tokens' overlaps 'accepted'/,
    );
    const d = mk().drafts;
    expectCode(
      () => call({ drafts: d, tokens: poisoned([B, R]), accepted: d.view([B * k]).narrow(0, B) }),
      'E_ARGUMENT',
      /'accepted' overlaps 'drafts'/,
    );
    // Values are checked when the op runs (they live in tensors): E_ARGUMENT at synchronize, nothing written.
    const bits = (x: number) => new Int32Array(new Float32Array([x]).buffer)[0]!;
    const badValue = (o: Partial<ReturnType<typeof mk>>, message: RegExp) => {
      const s = new Stream('cpu');
      const a = { ...mk(), ...o };
      native.sampleSpeculative(s, a.tokens, a.accepted, a.logits, a.drafts, a.positions, a.params);
      expectCode(() => s.synchronize(), 'E_ARGUMENT', message);
      expect(Array.from(toArray(a.tokens))).toEqual(new Array(B * R).fill(POISON));
      expect(Array.from(toArray(a.accepted))).toEqual(new Array(B).fill(POISON));
      s.dispose();
    };
    const withParam = (i: number, v: number) => {
      const row = [...good];
      row[i] = v;
      return { params: i32([...good, ...row], [B, 6]) };
    };
    badValue(withParam(0, bits(-1)), /params\[1, 0\] \(temperature\) must be a finite number >= 0, got -1/);
    badValue(withParam(0, bits(NaN)), /temperature/);
    badValue(withParam(0, bits(Infinity)), /temperature/);
    badValue(withParam(1, -3), /params\[1, 1\] \(topK\) must be >= 0/);
    badValue(withParam(2, bits(0)), /params\[1, 2\] \(topP\) must be in \(0, 1\]/);
    badValue(withParam(2, bits(1.5)), /topP/);
    badValue(withParam(3, bits(-0.5)), /params\[1, 3\] \(minP\) must be in \[0, 1\]/);
    badValue(withParam(3, bits(NaN)), /minP/);
    badValue({ drafts: i32([0, 1, 5, 3], [B, k]) }, /drafts\[1, 0\] = 5 is out of range for a vocabulary of 5/);
    badValue({ drafts: i32([0, -1, 2, 3], [B, k]) }, /drafts\[0, 1\] = -1/);
    badValue({ positions: i32([0, 1, 2, 0, -4, 2], [B * R]) }, /positions\[4\] = -4 is negative/);
  });
});

// The GPU draws its corrections in another order than the CPU (cuda/elementwise.cu), so its
// distribution is checked on its own. The emulated device runs 3 of the cases at 2,000 sequences
// (each sequence is a block of 512 emulated threads, 4-10 ms of CPU: up to about 60 s in all).
const emulated = native.buildInfo().cudaArchs === 'emulated';
describe.skipIf(!cudaAvailable)('sampleSpeculative on CUDA', () => {
  const N = emulated ? 2000 : 20000;
  it(
    `the first token follows the filtered distribution whatever the draft (chi-square over ${N} seeds)`,
    () => {
      firstTokenDistribution(
        'cuda:0',
        N,
        emulated ? DISTRIBUTION_CASES.filter((_, i) => [1, 2, 4].includes(i)) : DISTRIBUTION_CASES,
      );
    },
    workLimitMs(60),
  );
});

describe.each(backends)('sampleSpeculative + selectAccepted in a captured graph (%s)', device => {
  it('replays with new logits, drafts, positions and params, as the eager CPU op computes them', () => {
    const r = rng(1603);
    const B = 4,
      k = 2,
      R = k + 1,
      V = 517;
    const s = new Stream(device);
    const dev = (values: ArrayLike<number>, shape: number[], dtype: 'f32' | 'int32') => tensor(values, shape, { dtype, device });
    const logits = dev(new Float32Array(B * R * V), [B * R, V], 'f32'),
      drafts = dev(new Int32Array(B * k), [B, k], 'int32'),
      positions = dev(new Int32Array(B * R), [B * R], 'int32'),
      params = dev(new Int32Array(B * 6), [B, 6], 'int32'),
      candidates = dev(new Int32Array(B * R), [B, R], 'int32');
    const tokens = empty([B, R], { dtype: 'int32', device }),
      accepted = empty([B], { dtype: 'int32', device }),
      next = empty([B], { dtype: 'int32', device });
    const graph = native.captureGraph([s], () => {
      native.sampleSpeculative(s, tokens, accepted, logits, drafts, positions, params);
      native.selectAccepted(s, next, candidates, accepted);
    });
    // greedy and single-survivor sequences are exact on every backend; the sampled one (b = 3)
    // shares its accept decisions with the CPU
    const ps: SampleP[] = [PARAMS[0]!, { temperature: 0.8, topK: 1, topP: 1, minP: 0 }, PARAMS[0]!, PARAMS[1]!];
    for (let replay = 0; replay < 4; replay++) {
      const lv = Float32Array.from({ length: B * R * V }, () => r.normal() * 2);
      const dv = Array.from({ length: B * k }, (_, i) => {
        const row = Math.floor(i / k) * R + (i % k);
        return r.int(3) ? argmaxRef(lv.subarray(row * V, (row + 1) * V)) : r.int(V);
      });
      const pv = Array.from({ length: B * R }, (_, i) => 30 * replay + i);
      const qv = ps.map((p, b) => speculativeParams(p, BigInt(1000 * replay + b)));
      const cv = Array.from({ length: B * R }, () => r.int(V));
      logits.copyFromBytes(lv);
      drafts.copyFromBytes(Int32Array.from(dv));
      positions.copyFromBytes(Int32Array.from(pv));
      params.copyFromBytes(Int32Array.from(qv.flat()));
      candidates.copyFromBytes(Int32Array.from(cv));
      graph.replay();
      s.synchronize();
      const want = speculate(lv, V, dv, k, pv, qv);
      const gotTokens = toArray(tokens),
        gotAccepted = toArray(accepted),
        gotNext = toArray(next);
      expect(Array.from(gotAccepted), `replay ${replay}: accepted`).toEqual(Array.from(want.accepted));
      for (let b = 0; b < B; b++) {
        const exact = device === 'cpu' || b < 3;
        if (exact)
          expect(Array.from(gotTokens.subarray(b * R, (b + 1) * R)), `replay ${replay} seq ${b}`).toEqual(
            Array.from(want.tokens.subarray(b * R, (b + 1) * R)),
          );
        expect(gotNext[b], `replay ${replay}: next draft of seq ${b}`).toBe(cv[b * R + want.accepted[b]!]);
      }
    }
    graph.dispose();
    s.dispose();
  });
});

describe('selectAccepted (CPU)', () => {
  it('picks candidates[b, accepted[b]], clamping out-of-range counts', () => {
    for (const [B, R] of [
      [1, 1],
      [3, 2],
      [5, 4],
    ] as const) {
      const cand = Array.from({ length: B * R }, (_, i) => 1000 + i);
      const acc = Array.from({ length: B }, (_, b) => [0, R - 1, -5, R + 3, Math.min(1, R - 1)][b % 5]!);
      const out = poisoned([B]);
      native.selectAccepted(null, out, i32(cand, [B, R]), i32(acc, [B]));
      const want = acc.map((a, b) => cand[b * R + Math.max(0, Math.min(R - 1, a))]!);
      expect(Array.from(toArray(out)), `B=${B} k+1=${R}`).toEqual(want);
    }
  });

  it('rejects bad inputs with typed errors', () => {
    const call = (out: Tensor, cand: Tensor, acc: Tensor) => native.selectAccepted(null, out, cand, acc);
    const cand = i32([1, 2, 3, 4, 5, 6], [2, 3]),
      acc = i32([0, 1], [2]);
    expectCode(() => call(poisoned([3]), cand, acc), 'E_SHAPE', /'out' has shape \[3\], expected \[2\]/);
    expectCode(() => call(poisoned([2]), cand, i32([0], [1])), 'E_SHAPE', /'accepted'/);
    expectCode(() => call(poisoned([2]), i32([1, 2, 3, 4, 5, 6], [6]), acc), 'E_SHAPE', /'candidates'/);
    expectCode(() => call(poisoned([2]), i32([], [2, 0]), acc), 'E_SHAPE', /'candidates'.*k \+ 1 >= 1/);
    expectCode(() => call(tensor(new Float32Array(2), [2]), cand, acc), 'E_DTYPE', /'out'/);
    expectCode(() => call(poisoned([2]), tensor(new Float32Array(6), [2, 3]), acc), 'E_DTYPE', /'candidates'/);
    expectCode(() => call(acc, cand, acc), 'E_ARGUMENT', /'out' overlaps 'accepted'/);
  });
});

/** The index the sampler's walk picks for uniform u from q (ascending ids). */
function drawFrom(q: Float64Array, u: number): number {
  let cum = 0,
    last = 0;
  for (let i = 0; i < q.length; i++) {
    if (q[i]! > 0) last = i;
    cum += q[i]!;
    if (cum > u && q[i]! > 0) return i;
  }
  return last;
}

/** The residual draw in ascending id order (q without d, renormalised); null when u falls within
 *  rounding of a boundary, where f32 weights could pick the neighbour. */
function residualDraw(q: Float64Array, d: number, u: number): number | null {
  let total = 0;
  for (let i = 0; i < q.length; i++) if (i !== d) total += q[i]!;
  const target = u * total;
  let cum = 0;
  for (let i = 0; i < q.length; i++) {
    if (i === d || q[i] === 0) continue;
    cum += q[i]!;
    if (Math.abs(cum - target) < 1e-6 * total) return null;
    if (cum > target) return i;
  }
  return null;
}

const DISTRIBUTION_CASES: [SampleP, number][] = [
  [{ temperature: 1, topK: 0, topP: 1, minP: 0 }, 0], // the most likely token as the draft
  [{ temperature: 1, topK: 0, topP: 1, minP: 0 }, 4],
  [{ temperature: 0.7, topK: 6, topP: 1, minP: 0 }, 2],
  [{ temperature: 1, topK: 6, topP: 1, minP: 0 }, 8], // a draft outside the top-k: always rejected
  [{ temperature: 1.6, topK: 0, topP: 0.9, minP: 0.1 }, 1],
  [{ temperature: 1, topK: 0, topP: 0.5, minP: 0 }, 0],
];

/**
 * k = 1, one row pair per sequence, N sequences with seeds 0..N-1 in one call per case:
 * tokens[b, 0] ~ p_0 (accepted draft or correction), and the bonus tokens[b, 1] of the accepted
 * sequences ~ p_1. Fixed seeds: deterministic; the bound is far above the mean df.
 */
function firstTokenDistribution(device: string, N: number, cases: [SampleP, number][]) {
  const probs = [0.3, 0.22, 0.15, 0.1, 0.08, 0.06, 0.04, 0.03, 0.015, 0.005];
  const row0 = Float32Array.from(probs, x => Math.log(x) + 1.5);
  const row1 = Float32Array.from(probs, (_, i) => Math.log(probs[probs.length - 1 - i]!));
  const V = probs.length;
  for (const [p, d] of cases) {
    const logits = new Float32Array(N * 2 * V);
    for (let b = 0; b < N; b++) {
      logits.set(row0, 2 * b * V);
      logits.set(row1, (2 * b + 1) * V);
    }
    const params = Array.from({ length: N }, (_, b) => speculativeParams(p, BigInt(b) * 0x100000001n));
    const positions = Array.from({ length: 2 * N }, (_, i) => 100 + (i % 2));
    const got = speculate(logits, V, new Array(N).fill(d), 1, positions, params, device);
    const first = new Float64Array(V),
      bonus = new Float64Array(V);
    let acc = 0;
    for (let b = 0; b < N; b++) {
      first[got.tokens[2 * b]!]! += 1;
      if (got.accepted[b] === 1) {
        acc++;
        bonus[got.tokens[2 * b + 1]!]! += 1;
      } else expect(got.tokens[2 * b + 1]).toBe(got.tokens[2 * b]);
    }
    const q0 = filtered(row0, p),
      q1 = filtered(row1, p);
    const what = `${JSON.stringify(p)} draft ${d}`;
    // acceptance is Binomial(N, p_0(d)): within 6 sd
    expect(Math.abs(acc - N * q0[d]!), `${what}: accepted ${acc}`).toBeLessThanOrEqual(
      6 * Math.sqrt(N * q0[d]! * (1 - q0[d]!)) + 1,
    );
    for (const [counts, q, name] of [
      [first, q0, 'tokens[b, 0]'],
      [bonus, q1, 'bonus tokens[b, 1]'],
    ] as const) {
      const { chi2, df, outside } = chiSquare(counts, q);
      expect(outside, `${what}: filtered tokens drawn as ${name}`).toBe(0);
      if (process.env.LC_DEBUG_CHI2) console.log(what, name, chi2, df);
      if (df < 1) continue; // one survivor: `outside` checked nothing else was drawn
      if (name !== 'tokens[b, 0]' && acc < 1000) continue; // too few bonus draws (the binomial bound covered acc)
      expect(chi2, `${what}: chi2 of ${name} (df ${df})`).toBeLessThan(df + 6 * Math.sqrt(2 * df) + 10);
    }
  }
}
