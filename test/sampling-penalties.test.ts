// penalize (repetition / presence / frequency penalties, logit bias) and logprobs against the
// float64 / f32-rounding references of lib/check/sampling-reference.ts, on odd sizes, every backend
// (CPU; CUDA or its emulator when present), eagerly and replayed in a captured graph.
import { describe, expect, it } from 'vitest';
import { Stream, empty, native, tensor, toArray } from '../lib/index.js';
import { backends, expectClose, expectCode, rng } from './helpers.js';
import type { Rng } from '../lib/check/rng.js';
import { logprobsRef, penalizeRef, type PenaltyRow } from '../lib/check/sampling-reference.js';

/** A random row of settings: history of H entries (some -1 padding) over a few hot tokens. */
function randomRow(r: Rng, V: number, H: number, nb: number): PenaltyRow {
  const hot = Array.from({ length: Math.max(1, Math.min(V, 7)) }, () => r.int(V));
  const history = Array.from({ length: H }, () => (r.int(6) === 0 ? -1 : r.int(2) ? hot[r.int(hot.length)]! : r.int(V)));
  return {
    history,
    promptLength: r.int(H + 1),
    repetition: [1, 1.3, 0.7, 2][r.int(4)]!,
    presence: r.int(3) ? r.uniform(-1, 2) : 0,
    frequency: r.int(3) ? r.uniform(-0.5, 1) : 0,
    bias: Array.from({ length: nb }, () => [r.int(5) === 0 ? -1 : r.int(2) ? hot[0]! : r.int(V), r.uniform(-100, 100)]),
  };
}

/** penalize's input tensors for `rows` on `device`. */
function penalizeInputs(rows: PenaltyRow[], H: number, nb: number, device: string) {
  const R = rows.length;
  return {
    history: tensor(Int32Array.from(rows.flatMap(p => p.history)), [R, H], { dtype: 'int32', device }),
    promptLengths: tensor(Int32Array.from(rows.map(p => p.promptLength)), [R], { dtype: 'int32', device }),
    params: tensor(Float32Array.from(rows.flatMap(p => [p.repetition, p.presence, p.frequency])), [R, 3], { device }),
    biasIds: tensor(Int32Array.from(rows.flatMap(p => p.bias.map(b => b[0]))), [R, nb], { dtype: 'int32', device }),
    biasValues: tensor(Float32Array.from(rows.flatMap(p => p.bias.map(b => b[1]))), [R, nb], { device }),
  };
}

function penalize(x: Float32Array, V: number, rows: PenaltyRow[], H: number, nb: number, device: string): Float32Array {
  const R = rows.length;
  const logits = tensor(x, [R, V], { device });
  const i = penalizeInputs(rows, H, nb, device);
  native.penalize(null, logits, i.history, i.promptLengths, i.params, i.biasIds, i.biasValues);
  return toArray(logits) as Float32Array;
}

function expectPenalized(got: Float32Array, x: Float32Array, V: number, rows: PenaltyRow[], what: string) {
  rows.forEach((p, r) => {
    const want = penalizeRef(x.subarray(r * V, (r + 1) * V), p);
    // bit-exact: the op rounds as the reference does (untouched tokens included)
    expect(Array.from(got.subarray(r * V, (r + 1) * V)), `${what} row ${r}`).toEqual(Array.from(want));
  });
}

describe.each(backends)('penalize (%s)', device => {
  it('matches the f32 reference on odd sizes (repetition on prompt + generated, presence / frequency on generated, bias)', () => {
    const r = rng(1701);
    for (const [R, V, H, nb] of [
      [1, 1, 0, 0],
      [3, 17, 5, 2],
      [5, 1000, 37, 3],
      [2, 4099, 300, 1],
      [7, 129, 1, 4],
    ] as const) {
      const x = Float32Array.from({ length: R * V }, () => r.normal() * 4);
      const rows = Array.from({ length: R }, () => randomRow(r, V, H, nb));
      expectPenalized(penalize(x, V, rows, H, nb, device), x, V, rows, `R=${R} V=${V} H=${H} nb=${nb}`);
    }
  });

  it('implements each rule as documented on a hand-made row', () => {
    // tokens: 0 (prompt only), 1 (generated twice, once in the prompt), 2 (nowhere), 3 (generated once)
    const x = Float32Array.from([2, -2, 5, 1, 0.5]);
    const row: PenaltyRow = {
      history: [0, 1, -1, 1, 3, 1],
      promptLength: 2,
      repetition: 2,
      presence: 0.5,
      frequency: 0.25,
      bias: [
        [2, 10],
        [-1, 99],
        [2, 1],
      ],
    };
    const got = penalize(x, 5, [row], 6, 3, device);
    // 0: 2 / 2; 1: -2 * 2 - (0.5 + 2 * 0.25); 2: 5 + 10 + 1; 3: 1 / 2 - (0.5 + 0.25); 4 untouched
    expect(Array.from(got)).toEqual([1, -5, 16, -0.25, 0.5]);
  });

  it('replays in a captured graph with new logits, histories and settings', () => {
    const r = rng(1702);
    const R = 3,
      V = 333,
      H = 41,
      nb = 2;
    const s = new Stream(device);
    const logits = tensor(new Float32Array(R * V), [R, V], { device });
    const i = penalizeInputs(
      Array.from({ length: R }, () => randomRow(r, V, H, nb)),
      H,
      nb,
      device,
    );
    const graph = native.captureGraph([s], () =>
      native.penalize(s, logits, i.history, i.promptLengths, i.params, i.biasIds, i.biasValues),
    );
    for (let replay = 0; replay < 3; replay++) {
      const x = Float32Array.from({ length: R * V }, () => r.normal() * 3);
      const rows = Array.from({ length: R }, () => randomRow(r, V, H, nb));
      const fresh = penalizeInputs(rows, H, nb, 'cpu');
      logits.copyFromBytes(x);
      for (const key of ['history', 'promptLengths', 'params', 'biasIds', 'biasValues'] as const)
        i[key].copyFromBytes(toArray(fresh[key]));
      graph.replay();
      s.synchronize();
      expectPenalized(toArray(logits) as Float32Array, x, V, rows, `replay ${replay}`);
    }
    graph.dispose();
    s.dispose();
  });
});

describe('penalize (CPU) rejects bad values and shapes', () => {
  const ok: PenaltyRow = { history: [1, 2], promptLength: 1, repetition: 1.2, presence: 0, frequency: 0, bias: [[0, 1]] };
  const run =
    (p: Partial<PenaltyRow>, V = 4) =>
    () =>
      penalize(new Float32Array(V), V, [{ ...ok, ...p }], 2, 1, 'cpu');
  it('names the value', () => {
    expectCode(run({ repetition: 0 }), 'E_ARGUMENT', /repetition/);
    expectCode(run({ repetition: Infinity }), 'E_ARGUMENT', /repetition/);
    expectCode(run({ presence: NaN }), 'E_ARGUMENT', /presence/);
    expectCode(run({ frequency: Infinity }), 'E_ARGUMENT', /frequency/);
    expectCode(run({ history: [1, 4] }), 'E_ARGUMENT', /history\[0, 1\] = 4/);
    expectCode(run({ promptLength: 3 }), 'E_ARGUMENT', /promptLengths/);
    expectCode(run({ bias: [[9, 1]] }), 'E_ARGUMENT', /biasIds/);
    expectCode(run({ bias: [[1, NaN]] }), 'E_ARGUMENT', /biasValues/);
  });
  it('checks shapes and dtypes', () => {
    const logits = tensor(new Float32Array(8), [2, 4]);
    const i = penalizeInputs([ok], 2, 1, 'cpu');
    expectCode(
      () => native.penalize(null, logits, i.history, i.promptLengths, i.params, i.biasIds, i.biasValues),
      'E_SHAPE',
      /history/,
    );
    const one = tensor(new Float32Array(4), [1, 4]);
    const badParams = tensor(new Float32Array(2), [1, 2]);
    expectCode(
      () => native.penalize(null, one, i.history, i.promptLengths, badParams, i.biasIds, i.biasValues),
      'E_SHAPE',
      /params/,
    );
    const intLogits = tensor(new Int32Array(4), [1, 4], { dtype: 'int32' });
    expectCode(
      () => native.penalize(null, intLogits, i.history, i.promptLengths, i.params, i.biasIds, i.biasValues),
      'E_DTYPE',
      /logits/,
    );
  });
});

function logprobs(x: Float32Array, R: number, V: number, chosen: number[], k: number, device: string) {
  const out = tensor(new Float32Array(R * (1 + k)).fill(NaN), [R, 1 + k], { device }),
    ids = tensor(new Int32Array(R * k).fill(-7), [R, k], { dtype: 'int32', device });
  native.logprobs(
    null,
    out,
    ids,
    tensor(x, [R, V], { device }),
    tensor(Int32Array.from(chosen), [R], { dtype: 'int32', device }),
    k,
  );
  return { out: toArray(out) as Float32Array, ids: toArray(ids) as Int32Array };
}

describe.each(backends)('logprobs (%s)', device => {
  it('equals the float64 log-softmax at the chosen token and the k best (ties: lower id), poisoned outputs', () => {
    const r = rng(1711);
    for (const [R, V, k] of [
      [1, 1, 0],
      [1, 1, 1],
      [3, 19, 5],
      [4, 1001, 20],
      [2, 131072, 7],
      [5, 300, 0],
    ] as const) {
      const x = Float32Array.from({ length: R * V }, () => r.normal() * 5);
      // ties, -inf and NaN entries in some rows
      if (V > 10)
        for (let row = 0; row < R; row += 2) {
          x[row * V + 3] = x[row * V + 7] = x[row * V + 9] = 30;
          x[row * V + 1] = -Infinity;
          x[row * V + 2] = NaN;
        }
      const chosen = Array.from({ length: R }, () => r.int(V));
      const got = logprobs(x, R, V, chosen, k, device);
      for (let row = 0; row < R; row++) {
        const want = logprobsRef(x.subarray(row * V, (row + 1) * V), chosen[row]!, k);
        const o = got.out.subarray(row * (1 + k), (row + 1) * (1 + k));
        const what = `R=${R} V=${V} k=${k} row ${row}`;
        expect(Array.from(got.ids.subarray(row * k, (row + 1) * k)), `${what}: ids`).toEqual(want.ids);
        if (want.chosen === -Infinity) expect(o[0], `${what}: chosen`).toBe(-Infinity);
        else expectClose([o[0]!], [want.chosen], 1e-6, 1e-6, `${what}: chosen`);
        expectClose(o.subarray(1), want.top, 1e-6, 1e-6, `${what}: top`);
      }
    }
  });

  it('gives NaN for a row without a finite maximum', () => {
    const x = Float32Array.from([-Infinity, NaN, -Infinity, 1, Infinity, 2]);
    const got = logprobs(x, 2, 3, [0, 1], 2, device);
    expect(Array.from(got.out).every(Number.isNaN)).toBe(true);
    expect(Array.from(got.ids)).toEqual([0, 1, 1, 2]); // all -inf: ties by id; +inf first
  });
});

describe('logprobs (CPU) rejects bad arguments', () => {
  it('names them', () => {
    const x = tensor(new Float32Array(10), [2, 5]);
    const out = empty([2, 3]),
      ids = empty([2, 2], { dtype: 'int32' });
    const chosen = tensor(Int32Array.from([0, 5]), [2], { dtype: 'int32' });
    expectCode(
      () => {
        native.logprobs(null, out, ids, x, chosen, 2);
        toArray(out);
      },
      'E_ARGUMENT',
      /chosen\[1\] = 5/,
    );
    const ok = tensor(Int32Array.from([0, 1]), [2], { dtype: 'int32' });
    expectCode(() => native.logprobs(null, out, ids, x, ok, 21), 'E_ARGUMENT', /k must be/);
    expectCode(() => native.logprobs(null, out, ids, x, ok, 3), 'E_SHAPE', /out/);
    expectCode(() => native.logprobs(null, x, ids, x, ok, 2), 'E_SHAPE', /out/);
  });
});
