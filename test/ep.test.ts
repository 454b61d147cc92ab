// Expert parallelism on CPU ranks (issue 14): the dispatch / combine ops against a plain JS
// reference of the slot protocol (native/cpu/ep.h) and a float64 MoE, the placement of the
// experts, and whole models whose routed experts are split over 2, 4 and 8 ranks against the
// single-device run ("equal" as issue 14 defines it: matmul precision 'highest', logits within an
// fp32 tolerance, greedy tokens identical wherever the top-two gap exceeds it).
import { beforeAll, describe, expect, it } from 'vitest';
import path from 'node:path';
import { native } from '../lib/native.js';
import { type Tensor, empty, tensor, toArray } from '../lib/tensor.js';
import { ArgumentError, LongcatError } from '../lib/errors.js';
import { initRandom } from '../lib/init-random.js';
import { loadModel } from '../lib/generate.js';
import { ShardedExperts, expertsPerRank, rankExperts } from '../lib/parallel/placement.js';
import { ExpertParallelGroup, waitFailure } from '../lib/parallel/expert-parallel.js';
import { Stream } from '../lib/device.js';
import { f32ToFp8e4m3, fp8e4m3ToF32 } from '../lib/numeric.js';
import { fp8GroupScale } from '../lib/check/fp8-cache-ref.js';
import { stepOrder } from '../lib/parallel/data-parallel.js';
import type { MoeExpertSet } from '../types/ops-moe.js';
import {
  expectEqualLogits,
  expectFailuresRecover,
  maxRelError,
  prompts,
  range,
  runScript,
  singleDeviceScript,
} from './ep-helpers.js';
import { fixtureRoot } from './model-fixture.js';

const root = fixtureRoot('longcat-ep-');

/** Logits of a run whose MoE inputs crossed ranks as e4m3 (3 mantissa bits: each element within 2^-4 of
 *  its value) against the f32 run, relative to max |logit|. */
const FP8_PAYLOAD_TOL = 6e-2;

/** Deterministic uniform numbers in [-1, 1) (mulberry32). */
function rng(seed: number) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (((t ^ (t >>> 14)) >>> 0) / 2 ** 32) * 2 - 1;
  };
}
const randomF32 = (n: number, r: () => number, scale = 1) => Float32Array.from({ length: n }, () => r() * scale);
const f32 = (data: Float32Array, shape: number[], device = 'cpu') => tensor(data, shape, { device });
const i32 = (data: ArrayLike<number>, shape: number[], device = 'cpu') =>
  tensor(Int32Array.from(data), shape, { dtype: 'int32', device });
const poisoned = (shape: number[], dtype: 'f32' | 'int32' = 'f32', device = 'cpu') =>
  tensor(
    dtype === 'f32'
      ? new Float32Array(shape.reduce((a, b) => a * b, 1)).fill(NaN)
      : new Int32Array(shape.reduce((a, b) => a * b, 1)).fill(-7),
    shape,
    { dtype, device },
  );
// The ops run on the CPU and, where the build has a usable CUDA device (a card, or the emulator of
// test/emu), on cuda:0 (the flag-protocol kernels of cuda/ep.cu), against the same references.
const opDevices = ['cpu', ...(native.cudaStatus().available ? ['cuda:0'] : [])];

// ---- the protocol, in plain JS ----------------------------------------------------------------

interface Problem {
  T: number;
  H: number;
  k: number;
  nRouted: number;
  nExperts: number;
  u: Float32Array;
  idx: Int32Array;
  w: Float32Array;
}

/** A receiving rank's slot: the row count [1], the rows x [cap, H] and their routing idx / w [cap, k]. */
interface Slot {
  count: Tensor;
  x: Tensor;
  idx: Tensor;
  w: Tensor;
}
const poisonedSlot = (cap: number, H: number, k: number, device = 'cpu'): Slot => ({
  count: poisoned([1], 'int32', device),
  x: poisoned([cap, H], 'f32', device),
  idx: poisoned([cap, k], 'int32', device),
  w: poisoned([cap, k], 'f32', device),
});
const slotTensors = (slots: Slot[]) => slots.flatMap(s => [s.count, s.x, s.idx, s.w]);

/** A source's tokens u [T, H] and routing idx / w [T, k] as tensors on `device`. */
const sourceTensors = (p: Problem, device = 'cpu') => ({
  u: f32(p.u, [p.T, p.H], device),
  idx: i32(p.idx, [p.T, p.k], device),
  w: f32(p.w, [p.T, p.k], device),
});

/** epDispatch of a source into one slot per rank, `per` routed experts a rank; `more`: its optional
 *  arguments (the abort flag, the test failure, the ready flags, the wait, the block budget, the
 *  FP8 payload's scales -- then slots' `x` are the e4m3 rows). */
function dispatch(
  stream: InstanceType<typeof native.Stream> | null,
  src: { u: Tensor; idx: Tensor; w: Tensor },
  p: { nRouted: number; nExperts: number },
  per: number,
  rowOf: Tensor,
  slots: Slot[],
  more: {
    abort?: Tensor;
    failForTest?: boolean;
    ready?: Tensor[];
    wait?: Parameters<typeof native.epWait>[1];
    blocks?: number;
    xScales?: Tensor[];
  } = {},
) {
  native.epDispatch(
    stream,
    src.u,
    src.idx,
    src.w,
    p.nRouted,
    p.nExperts,
    per,
    rowOf,
    slots.map(x => x.count),
    slots.map(x => x.x),
    slots.map(x => x.idx),
    slots.map(x => x.w),
    more.abort ?? null,
    more.failForTest ?? false,
    more.ready ?? null,
    more.wait ?? null,
    more.blocks,
    more.xScales ?? null,
  );
}

/** What epDispatch must write into rank d's slot for this source (capacity rows). */
function referenceSlot(p: Problem, per: number, d: number, cap: number) {
  const x = new Float32Array(cap * p.H),
    idx = new Int32Array(cap * p.k).fill(per),
    w = new Float32Array(cap * p.k);
  const rowOf = new Int32Array(p.T).fill(-1);
  let row = 0;
  for (let t = 0; t < p.T; t++) {
    const ix = p.idx.subarray(t * p.k, (t + 1) * p.k);
    if (!ix.some(e => e < p.nRouted && Math.floor(e / per) === d)) continue;
    rowOf[t] = row;
    x.set(p.u.subarray(t * p.H, (t + 1) * p.H), row * p.H);
    for (let j = 0; j < p.k; j++) {
      const e = ix[j]!;
      if (e < p.nRouted && Math.floor(e / per) === d) {
        idx[row * p.k + j] = e - d * per;
        w[row * p.k + j] = p.w[t * p.k + j]!;
      }
    }
    row++;
  }
  return { count: row, x, idx, w, rowOf };
}

interface ExpertWeights {
  gate: Float32Array[];
  up: Float32Array[];
  down: Float32Array[];
  I: number;
}

/** SPEC 4.2 in float64: sum of w * expert(u) over routed experts + (sum of zero-expert w) * u. */
function referenceMoe(p: Problem, ex: ExpertWeights): Float64Array {
  const { T, H, k } = p,
    I = ex.I,
    out = new Float64Array(T * H);
  for (let t = 0; t < T; t++) {
    const u = p.u.subarray(t * H, (t + 1) * H);
    for (let j = 0; j < k; j++) {
      const e = p.idx[t * k + j]!,
        wt = p.w[t * k + j]!;
      if (e >= p.nRouted) {
        for (let c = 0; c < H; c++) out[t * H + c]! += wt * u[c]!;
        continue;
      }
      const a = new Float64Array(I);
      for (let i = 0; i < I; i++) {
        let g = 0,
          v = 0;
        for (let c = 0; c < H; c++) {
          g += ex.gate[e]![i * H + c]! * u[c]!;
          v += ex.up[e]![i * H + c]! * u[c]!;
        }
        a[i] = (g / (1 + Math.exp(-g))) * v;
      }
      for (let c = 0; c < H; c++) {
        let y = 0;
        for (let i = 0; i < I; i++) y += ex.down[e]![c * I + i]! * a[i]!;
        out[t * H + c]! += wt * y;
      }
    }
  }
  return out;
}

function randomExperts(n: number, H: number, I: number, seed: number): ExpertWeights {
  const r = rng(seed),
    s = 1 / Math.sqrt(H);
  return {
    I,
    gate: Array.from({ length: n }, () => randomF32(I * H, r, s)),
    up: Array.from({ length: n }, () => randomF32(I * H, r, s)),
    down: Array.from({ length: n }, () => randomF32(H * I, r, 1 / Math.sqrt(I))),
  };
}

/** Rank r's expert set (its block of experts only) and the whole set, as native tensors. */
function expertSets(ex: ExpertWeights, H: number, ranks: number, device = 'cpu') {
  const n = ex.gate.length,
    per = expertsPerRank(ranks, n);
  const held: Tensor[] = [];
  const t = (d: Float32Array, shape: number[]) => {
    held.push(f32(d, shape, device));
    return held[held.length - 1]!;
  };
  const gate = ex.gate.map(g => t(g, [ex.I, H])),
    up = ex.up.map(g => t(g, [ex.I, H])),
    down = ex.down.map(g => t(g, [H, ex.I]));
  const shards = Array.from({ length: ranks }, (_, r) => {
    const { first, count } = rankExperts(r, per);
    return native.moeExperts(gate.slice(first, first + count), up.slice(first, first + count), down.slice(first, first + count));
  });
  const whole = native.moeExperts(gate, up, down);
  return {
    per,
    sharded: new ShardedExperts(shards, per),
    whole,
    dispose: () => {
      whole.dispose();
      for (const s of shards) s.dispose();
      for (const x of held) x.dispose();
    },
  };
}

/** k distinct expert ids per token, drawn from `pool`. */
function randomRouting(T: number, k: number, pool: number[], r: () => number): Int32Array {
  const idx = new Int32Array(T * k);
  for (let t = 0; t < T; t++) {
    const left = [...pool];
    for (let j = 0; j < k; j++) idx[t * k + j] = left.splice(Math.floor(((r() + 1) / 2) * left.length), 1)[0]!;
  }
  return idx;
}

/**
 * The whole MoE of `sources` home ranks (problems[s] on rank s) through the runner's
 * ExpertParallelGroup: dispatch, the receivers' moe over their own experts, and combine, ordered by
 * the flag protocol (single-kernel form; on the emulator phase by phase, see expert-parallel.ts).
 */
function expertParallelMoe(
  problems: Problem[],
  sets: ReturnType<typeof expertSets>,
  ranks: number,
  device = 'cpu',
): Float32Array[] {
  const { H, nExperts } = problems[0]!;
  const group = new ExpertParallelGroup(new Array<string>(ranks).fill(device), device);
  const streams = problems.map(() => new Stream(device));
  const ins = problems.map(p => ({ ...sourceTensors(p, device), out: poisoned([p.T, H], 'f32', device) }));
  try {
    for (const [s, x] of ins.entries()) group.expertsOf(s)(streams[s]!, x.out, x.u, x.idx, x.w, sets.sharded, nExperts);
    group.allToAll();
    group.endStep();
    for (const st of streams) st.synchronize();
    return ins.map(x => toArray(x.out) as Float32Array);
  } finally {
    group.dispose();
    for (const st of streams) st.dispose();
    for (const x of ins) for (const t of Object.values(x)) t.dispose();
  }
}

function problem(T: number, H: number, k: number, nRouted: number, nZero: number, pool: number[], seed: number): Problem {
  const r = rng(seed);
  return {
    T,
    H,
    k,
    nRouted,
    nExperts: nRouted + nZero,
    u: randomF32(T * H, r),
    idx: randomRouting(T, k, pool, r),
    w: Float32Array.from({ length: T * k }, () => (r() + 1) * 3),
  };
}

describe('epDispatch against the JS slot reference', () => {
  const H = 24,
    k = 3,
    nRouted = 8,
    nZero = 4;
  // [name, ranks, pool of expert ids, tokens, capacity (undefined: the most any rank receives)]
  const cases: [string, number, number[], number, number | undefined][] = [
    ['random routing, 2 ranks', 2, range(0, 12), 9, 9],
    ['random routing, 4 ranks, capacity exactly reached', 4, range(0, 12), 13, undefined],
    ['random routing, 8 ranks (one expert each)', 8, range(0, 12), 7, 7],
    ['every token on one rank', 4, [6, 7, 8, 9, 10, 11], 5, 5],
    ['ranks that receive nothing', 4, [0, 1, 8, 9, 10], 6, 6],
    ['tokens whose experts are all zero experts', 2, range(8, 12), 4, 4],
    ['one token', 8, range(0, 12), 1, 1],
  ];
  it.each(opDevices.flatMap(dev => cases.map(c => [dev, ...c] as const)))('%s: %s', (dev, _name, ranks, pool, T, capGiven) => {
    const p = problem(T, H, k, nRouted, nZero, pool, 11 + T * ranks),
      per = expertsPerRank(ranks, nRouted);
    const want = Array.from({ length: ranks }, (_, d) => referenceSlot(p, per, d, T));
    const cap = capGiven ?? Math.max(...want.map(s => s.count));
    const src = sourceTensors(p, dev),
      rowOf = poisoned([T, ranks], 'int32', dev);
    const slots = Array.from({ length: ranks }, () => poisonedSlot(cap, H, k, dev));
    dispatch(null, src, p, per, rowOf, slots);
    const rows = toArray(rowOf);
    for (let d = 0; d < ranks; d++) {
      const ref = referenceSlot(p, per, d, cap);
      expect(toArray(slots[d]!.count)[0]).toBe(ref.count);
      expect(Array.from(toArray(slots[d]!.x))).toEqual(Array.from(ref.x)); // a copy: exact, padding zeroed
      expect(Array.from(toArray(slots[d]!.idx))).toEqual(Array.from(ref.idx));
      expect(Array.from(toArray(slots[d]!.w))).toEqual(Array.from(ref.w));
      expect(Array.from({ length: T }, (_, t) => rows[t * ranks + d])).toEqual(Array.from(ref.rowOf));
    }
    const total = want.reduce((a, s) => a + s.count, 0);
    // once per rank, not once per expert: no more rows than (token, rank) pairs with an FFN expert there
    let pairs = 0;
    for (let t = 0; t < T; t++)
      pairs += new Set(
        Array.from(p.idx.subarray(t * k, (t + 1) * k))
          .filter(e => e < nRouted)
          .map(e => Math.floor(e / per)),
      ).size;
    expect(total).toBe(pairs);
    for (const t of [...Object.values(src), rowOf, ...slotTensors(slots)]) t.dispose();
  });

  it("fails with a typed error, sends nothing (padding only) and leaves the stream usable when a rank's slot would overflow", () => {
    const ranks = 2,
      p = problem(6, H, k, nRouted, nZero, [0, 1, 2, 3, 8], 5),
      per = 4;
    const src = sourceTensors(p),
      rowOf = poisoned([6, ranks], 'int32');
    const slots = Array.from({ length: ranks }, () => poisonedSlot(5, H, k));
    const s = new native.Stream('cpu');
    dispatch(s, src, p, per, rowOf, slots);
    expect(() => s.synchronize()).toThrow(/capacity exceeded: 6 tokens go to rank 0, its slot holds 5 rows/);
    for (const [d, slot] of slots.entries()) {
      const pad = referenceSlot({ ...p, T: 0 }, per, d, 5);
      expect(Array.from(toArray(slot.count))).toEqual([0]);
      expect(Array.from(toArray(slot.x))).toEqual(Array.from(pad.x));
      expect(Array.from(toArray(slot.idx))).toEqual(Array.from(pad.idx));
      expect(Array.from(toArray(slot.w))).toEqual(Array.from(pad.w));
    }
    expect(Array.from(toArray(rowOf))).toEqual(new Array(6 * ranks).fill(-1));
    // the rank's stream stays usable: the same dispatch into slots deep enough goes through
    const deep = Array.from({ length: ranks }, () => poisonedSlot(6, H, k));
    dispatch(s, src, p, per, rowOf, deep);
    s.synchronize();
    expect(toArray(deep[0]!.count)[0]).toBe(referenceSlot(p, per, 0, 6).count);
    expect(Array.from(toArray(deep[0]!.x))).toEqual(Array.from(referenceSlot(p, per, 0, 6).x));
    for (const t of slotTensors(deep)) t.dispose();
    s.dispose();
    for (const t of [...Object.values(src), rowOf, ...slotTensors(slots)]) t.dispose();
  });

  it.each(opDevices)(
    'on %s: an overflow raises the abort flag; a dispatch that finds it raised writes nothing, a combine writes zeros',
    device => {
      const ranks = 2,
        per = 4,
        T = 6,
        p = problem(T, H, k, nRouted, nZero, [0, 1, 2, 3, 8], 5);
      const src = sourceTensors(p, device),
        { u, idx, w } = src,
        rowOf = poisoned([T, ranks], 'int32', device),
        abort = i32([0], [1], device);
      const slotsOf = (cap: number) => Array.from({ length: ranks }, () => poisonedSlot(cap, H, k, device));
      const send = (slots: Slot[]) => dispatch(s, src, p, per, rowOf, slots, { abort });
      const s = new native.Stream(device);
      const shallow = slotsOf(5),
        deep = slotsOf(T);
      try {
        send(shallow); // 6 tokens go to rank 0: one more than its slot holds
        if (device === 'cpu') expect(() => s.synchronize()).toThrow(/capacity exceeded/);
        else s.synchronize(); // a kernel cannot raise: the flag is how it reports
        expect(Array.from(toArray(abort))).toEqual([1]);
        send(deep); // the step failed already: nothing is sent (padding only)
        s.synchronize();
        expect(Array.from(toArray(deep[0]!.count))).toEqual([0]);
        expect(Array.from(toArray(deep[1]!.x))).toEqual(new Array(T * H).fill(0));
        expect(Array.from(toArray(rowOf))).toEqual(new Array(T * ranks).fill(-1));
        const out = poisoned([T, H], 'f32', device);
        const nowhere = i32(new Array(T * ranks).fill(-1), [T, ranks], device);
        native.epCombine(s, out, u, idx, w, nRouted, nRouted + nZero, nowhere, [deep[0]!.x, deep[1]!.x], abort);
        s.synchronize();
        expect(Array.from(toArray(out))).toEqual(new Array(T * H).fill(0));
        out.dispose();
        nowhere.dispose();
        // lowered, the same dispatch into deep slots goes through
        abort.copyFromBytes(Int32Array.of(0));
        send(deep);
        s.synchronize();
        expect(toArray(deep[0]!.count)[0]).toBe(referenceSlot(p, per, 0, T).count);
        expect(Array.from(toArray(abort))).toEqual([0]);
      } finally {
        s.dispose();
        for (const t of [u, idx, w, rowOf, abort, ...slotTensors([...shallow, ...deep])]) t.dispose();
      }
    },
  );

  it('rejects a split that does not hold the routed experts, a bad expert id and mismatched slots', () => {
    const p = problem(3, H, k, nRouted, nZero, range(0, 12), 3);
    const src = sourceTensors(p);
    const rowOf = (ranks: number) => empty([3, ranks], { dtype: 'int32' });
    const slot = () => poisonedSlot(3, H, k);
    const three = [slot(), slot(), slot()];
    const call = (slots: Slot[], per: number, idx = src.idx) =>
      dispatch(null, { ...src, idx }, p, per, rowOf(Math.max(1, slots.length)), slots);
    expect(() => call(three, 3)).toThrow(ArgumentError); // 3 ranks x 3 != 8
    expect(() => call([], 8)).toThrow(/at least one rank/);
    const wrong = { ...slot(), x: empty([3, H + 1]) };
    expect(() => call([slot(), wrong], 4)).toThrow(LongcatError);
    const bad = i32([0, 1, 12, 2, 3, 4, 5, 6, 7], [3, k]);
    call(three.slice(0, 2), 4, bad);
    expect(() => native.synchronize('cpu')).toThrow(/idx\[0, 2\] = 12 is outside/);
    for (const t of [...Object.values(src), bad, wrong.x, ...slotTensors(three)]) t.dispose();
  });
});

describe('the flag protocol (epDispatch ready flags, epWait, epSignal)', () => {
  const H = 24,
    k = 3,
    nRouted = 8,
    nZero = 4;

  it.each(opDevices)("%s: a dispatch raises each destination's flag after its slot; epWait acquires and lowers them", dev => {
    const ranks = 4,
      T = 5,
      per = 2,
      p = problem(T, H, k, nRouted, nZero, range(0, 12), 41);
    const src = sourceTensors(p, dev),
      rowOf = poisoned([T, ranks], 'int32', dev),
      abort = i32([0], [1], dev);
    const slots = Array.from({ length: ranks }, () => poisonedSlot(T, H, k, dev));
    const flags = Array.from({ length: ranks }, () => i32([0], [1], dev));
    const s = new native.Stream(dev);
    dispatch(s, src, p, per, rowOf, slots, { abort, ready: flags });
    s.synchronize();
    expect(flags.map(f => toArray(f)[0])).toEqual([1, 1, 1, 1]);
    for (const [d, f] of flags.entries()) native.epWait(s, { flags: f, peers: [0], rank: d, kind: 1, timeoutMs: 60_000 }, abort);
    s.synchronize();
    expect(flags.map(f => toArray(f)[0])).toEqual([0, 0, 0, 0]);
    expect(Array.from(toArray(abort))).toEqual([0]);
    for (let d = 0; d < ranks; d++) {
      const ref = referenceSlot(p, per, d, T);
      expect(toArray(slots[d]!.count)[0]).toBe(ref.count);
      expect(Array.from(toArray(slots[d]!.x))).toEqual(Array.from(ref.x));
      expect(Array.from(toArray(slots[d]!.idx))).toEqual(Array.from(ref.idx));
    }
    // epSignal raises flags on any reachable tensor, after the stream's earlier work
    native.epSignal(s, flags.slice(1, 3));
    s.synchronize();
    expect(flags.map(f => toArray(f)[0])).toEqual([0, 1, 1, 0]);
    s.dispose();
    for (const t of [...Object.values(src), rowOf, abort, ...flags, ...slotTensors(slots)]) t.dispose();
  });

  it.each(opDevices)(
    '%s: a wait for a peer that never sends gives up after its budget, says who waited for whom in the abort word and pads its rows; a raised word ends a wait at once',
    dev => {
      const rows = 6,
        per = 2;
      const flags = i32([1, 0, 0], [3], dev),
        abort = i32([0], [1], dev),
        counts = poisoned([3], 'int32', dev),
        idx = poisoned([rows, k], 'int32', dev),
        w = poisoned([rows, k], 'f32', dev);
      const s = new native.Stream(dev);
      // peers 2, 5 and 7 send to rank 3; 2 did, 5 never does
      native.epWait(
        s,
        { flags, peers: [2, 5, 7], rank: 3, kind: 1, timeoutMs: 30, pad: { counts, idx, w, expertsPerRank: per } },
        abort,
      );
      s.synchronize();
      const code = toArray(abort)[0]!;
      expect(code).toBe((1 << 30) | (1 << 16) | (3 << 8) | 5);
      expect(waitFailure(code)).toBe("rank 3 timed out waiting for rank 5's dispatch");
      expect(Array.from(toArray(flags))).toEqual([1, 0, 0]); // not consumed: the group clears them
      expect(Array.from(toArray(counts))).toEqual([0, 0, 0]);
      expect(Array.from(toArray(idx))).toEqual(new Array(rows * k).fill(per));
      expect(Array.from(toArray(w))).toEqual(new Array(rows * k).fill(0));
      // the word raised: a wait with an hour's budget returns at once, and the first reason stays
      const other = i32([0, 0], [2], dev);
      native.epWait(s, { flags: other, peers: [0, 1], rank: 4, kind: 2, timeoutMs: 3_600_000 }, abort);
      s.synchronize();
      expect(toArray(abort)[0]).toBe(code);
      // a combine wait's reason
      abort.copyFromBytes(Int32Array.of(0));
      native.epWait(s, { flags: other, peers: [6, 1], rank: 0, kind: 2, timeoutMs: 20 }, abort);
      s.synchronize();
      expect(waitFailure(toArray(abort)[0]!)).toBe("rank 0 timed out waiting for rank 6's expert outputs");
      expect(waitFailure(1)).toBeNull();
      s.dispose();
      for (const t of [flags, abort, counts, idx, w, other]) t.dispose();
    },
  );

  it.each(opDevices)(
    '%s: an FP8 payload (e4m3, one scale per 1 x 128) decodes to the e4m3 rounding of the f32 rows, within the fp8 tolerance of the f32 payload',
    dev => {
      const W = 200, // two groups, the last one 72 wide
        G = 2,
        ranks = 2,
        per = 4,
        T = 7,
        p = problem(T, W, k, nRouted, nZero, range(0, 12), 61);
      const src = sourceTensors(p, dev),
        rowOf = poisoned([T, ranks], 'int32', dev),
        abort = i32([0], [1], dev);
      const slots = Array.from({ length: ranks }, () => {
        const q = empty([T, W], { dtype: 'fp8_e4m3', device: dev });
        q.copyFromBytes(new Uint8Array(T * W).fill(0x7f)); // NaN bytes
        return {
          ...poisonedSlot(T, W, k, dev),
          q,
          scales: poisoned([T, G], 'f32', dev),
          ready: i32([0], [1], dev),
        };
      });
      const s = new native.Stream(dev);
      const sent = slots.map(x => ({ ...x, x: x.q })); // the e4m3 rows go out
      dispatch(s, src, p, per, rowOf, sent, { abort, ready: slots.map(x => x.ready), xScales: slots.map(x => x.scales) });
      for (const [d, x] of slots.entries())
        native.epWait(
          s,
          { flags: x.ready, peers: [0], rank: d, kind: 1, timeoutMs: 60_000, decode: { q: x.q, scales: x.scales, x: x.x } },
          abort,
        );
      s.synchronize();
      expect(Array.from(toArray(abort))).toEqual([0]);
      for (const [d, x] of slots.entries()) {
        const ref = referenceSlot(p, per, d, T),
          got = toArray(x.x) as Float32Array,
          sc = toArray(x.scales) as Float32Array;
        const want = new Float32Array(T * W);
        for (let r = 0; r < ref.count; r++)
          for (let g = 0; g < G; g++) {
            const len = Math.min(128, W - g * 128),
              sg = fp8GroupScale(ref.x, r * W + g * 128, len);
            expect(sc[r * G + g]).toBe(sg);
            for (let c = g * 128; c < g * 128 + len; c++) {
              want[r * W + c] = Math.fround(fp8e4m3ToF32(f32ToFp8e4m3(Math.fround(ref.x[r * W + c]! / sg))) * sg);
              // e4m3: 3 mantissa bits (half an ulp: 2^-4 of the value), subnormal steps of sg * 2^-9
              expect(Math.abs(got[r * W + c]! - ref.x[r * W + c]!)).toBeLessThanOrEqual(
                Math.abs(ref.x[r * W + c]!) * 2 ** -4 + sg * 2 ** -10,
              );
            }
          }
        expect(Array.from(sc.subarray(ref.count * G))).toEqual(new Array((T - ref.count) * G).fill(0)); // padding
        expect(Array.from(got)).toEqual(Array.from(want)); // bit-exact, on the CPU and on CUDA
        expect(toArray(x.count)[0]).toBe(ref.count);
        expect(Array.from(toArray(x.idx))).toEqual(Array.from(ref.idx));
      }
      s.dispose();
      for (const t of [...Object.values(src), rowOf, abort, ...slots.flatMap(x => [...slotTensors([x]), x.q, x.scales, x.ready])])
        t.dispose();
    },
  );

  it('rejects malformed waits and signals with typed errors', () => {
    const flags = i32([0, 0], [2]),
      abort = i32([0], [1]),
      s = new native.Stream('cpu');
    const spec = { flags, peers: [0, 1], rank: 0, kind: 1 as const, timeoutMs: 10 };
    expect(() => native.epWait(s, { ...spec, peers: [0] }, abort)).toThrow(/1 peers for 2 flags/);
    expect(() => native.epWait(s, { ...spec, kind: 3 as 1 }, abort)).toThrow(/kind must be 1 or 2/);
    expect(() => native.epWait(s, { ...spec, timeoutMs: 0 }, abort)).toThrow(/timeoutMs must be in/);
    expect(() => native.epWait(s, spec, null as unknown as Tensor)).toThrow(/needs the abort flag/);
    expect(() => native.epWait(s, { ...spec, flags: undefined as unknown as Tensor }, abort)).toThrow(/'wait\.flags'/);
    expect(() => native.epWait(s, { ...spec, pad: { counts: flags, idx: flags, w: flags, expertsPerRank: 1 } }, abort)).toThrow(
      LongcatError,
    ); // idx must be int32 [rows, k]
    expect(() => native.epWait(s, { ...spec, peers: [0, 300] }, abort)).toThrow(ArgumentError);
    expect(() => native.epSignal(null as unknown as InstanceType<typeof native.Stream>, [abort])).toThrow(/needs the stream/);
    expect(() => native.epSignal(s, [flags])).toThrow(LongcatError); // a flag is int32 [1]
    s.synchronize();
    s.dispose();
    flags.dispose();
    abort.dispose();
  });
});

describe('dispatch -> experts -> combine equals the single-device moe', () => {
  const H = 40,
    I = 24,
    k = 4,
    nRouted = 8,
    nZero = 4;
  const ex = randomExperts(nRouted, H, I, 99);
  // [name, ranks, home ranks, expert pool, tokens per home]
  const cases: [string, number, number, number[], number[]][] = [
    ['2 ranks, 2 homes, random routing', 2, 2, range(0, 12), [7, 5]],
    ['4 ranks, 4 homes, random routing', 4, 4, range(0, 12), [3, 3, 3, 2]],
    ['8 ranks, 3 homes (ranks without tokens still serve)', 8, 3, range(0, 12), [4, 1, 6]],
    ['8 ranks, every token on one rank', 8, 8, [2, 3, 8, 9, 10, 11], [2, 2, 2, 2, 2, 2, 2, 1]],
    ['4 ranks, all-zero-expert tokens among them', 4, 2, range(0, 12), [5, 5]],
    ['4 ranks, only zero experts anywhere', 4, 4, range(8, 12), [2, 2, 2, 2]],
  ];
  it.each(opDevices.flatMap(dev => cases.map(c => [dev, ...c] as const)))('%s: %s', (dev, name, ranks, homes, pool, sizes) => {
    const sets = expertSets(ex, H, ranks, dev);
    const problems = sizes.slice(0, homes).map((T, s) => problem(T, H, k, nRouted, nZero, pool, 1000 + 17 * s + ranks));
    if (name.includes('all-zero-expert')) problems[0]!.idx.set([8, 9, 10, 11], 0); // token 0: zero experts only
    const got = expertParallelMoe(problems, sets, ranks, dev);
    // fp32 sums of H = 40 / I = 24 products; the CUDA moe's GEMM tiles sum in another order than the CPU's
    const tol = dev === 'cpu' ? 2e-6 : 1e-5;
    for (const [s, p] of problems.entries()) {
      const want = referenceMoe(p, ex);
      expect(maxRelError(got[s]!, want)).toBeLessThan(tol);
      // the single-device moe op over the whole expert set: the same sums in the same order
      const u = f32(p.u, [p.T, H], dev),
        idx = i32(p.idx, [p.T, k], dev),
        w = f32(p.w, [p.T, k], dev),
        out = poisoned([p.T, H], 'f32', dev);
      native.moe(null, out, u, idx, w, nRouted, sets.whole, null, null, null, null, null, nRouted + nZero);
      expect(maxRelError(got[s]!, toArray(out))).toBeLessThan(tol / 2);
      for (const t of [u, idx, w, out]) t.dispose();
    }
    sets.dispose();
  });

  // The emulator runs the group phase by phase; here the single-kernel launches themselves run
  // there too: a home that is its own only peer sends, releases and acquires in one dispatch
  // launch (one block: it sends before it waits), and signals, waits (every block) and sums in one
  // combine launch.
  it.each(opDevices)('%s: the single-kernel launches (a home that is its own only peer)', dev => {
    const sets = expertSets(ex, H, 1, dev),
      T = 6,
      p = problem(T, H, k, nRouted, nZero, range(0, 12), 77);
    const src = sourceTensors(p, dev),
      slot = poisonedSlot(T, H, k, dev),
      rowOf = poisoned([T, 1], 'int32', dev),
      y = poisoned([T, H], 'f32', dev),
      out = poisoned([T, H], 'f32', dev);
    const abort = i32([0], [1], dev),
      ready = i32([0], [1], dev),
      done = i32([0, 0], [2], dev);
    const flag = done.narrow(0, 1),
      counter = done.narrow(1, 1);
    const s = new native.Stream(dev);
    dispatch(s, src, { nRouted, nExperts: nRouted + nZero }, nRouted, rowOf, [slot], {
      abort,
      ready: [ready],
      wait: {
        flags: ready,
        peers: [0],
        rank: 0,
        kind: 1,
        timeoutMs: 60_000,
        pad: { ...slot, counts: slot.count, expertsPerRank: nRouted },
      },
      blocks: 1,
    });
    native.moe(s, y, slot.x, slot.idx, slot.w, nRouted, sets.sharded.shards[0]!, null, null, null, null, null, nRouted + 1);
    native.epCombine(
      s,
      out,
      src.u,
      src.idx,
      src.w,
      nRouted,
      nRouted + nZero,
      rowOf,
      [y],
      abort,
      [flag],
      { flags: flag, peers: [0], rank: 0, kind: 2, timeoutMs: 60_000, counter },
      3,
    );
    s.synchronize();
    expect(maxRelError(toArray(out), referenceMoe(p, ex))).toBeLessThan(dev === 'cpu' ? 2e-6 : 1e-5);
    expect([...toArray(abort), ...toArray(ready), ...toArray(done)]).toEqual([0, 0, 0, 0]); // consumed, counter back to 0
    s.dispose();
    for (const t of [...Object.values(src), ...slotTensors([slot]), rowOf, y, out, abort, ready, done, flag, counter])
      t.dispose();
    sets.dispose();
  });

  it.each(opDevices)('%s: is reproducible: the same inputs give bit-identical outputs', dev => {
    const sets = expertSets(ex, H, 4, dev);
    const problems = [7, 6, 7, 5].map((T, s) => problem(T, H, k, nRouted, nZero, range(0, 12), 500 + s));
    const a = expertParallelMoe(problems, sets, 4, dev),
      b = expertParallelMoe(problems, sets, 4, dev);
    expect(b.map(x => Array.from(x))).toEqual(a.map(x => Array.from(x)));
    sets.dispose();
  });

  it('combine rejects a row record outside the partials and a bad expert id with typed errors', () => {
    const p = problem(2, H, k, nRouted, nZero, range(0, 12), 4);
    const u = f32(p.u, [2, H]),
      idx = i32(p.idx, [2, k]),
      w = f32(p.w, [2, k]),
      out = empty([2, H]);
    const parts = [empty([2, H]), empty([2, H])];
    const rowOf = i32([0, -1, 2, 1], [2, 2]); // token 1's row in rank 0 is past the 2-row partials
    native.epCombine(null, out, u, idx, w, nRouted, nRouted + nZero, rowOf, parts);
    expect(() => native.synchronize('cpu')).toThrow(/rowOf\[1, 0\] = 2 is outside \[-1, 2\)/);
    const bad = i32([0, 1, 2, 3, 4, -1, 6, 7], [2, k]),
      ok = i32([0, -1, 1, -1], [2, 2]);
    native.epCombine(null, out, u, bad, w, nRouted, nRouted + nZero, ok, parts);
    expect(() => native.synchronize('cpu')).toThrow(/idx\[1, 1\] = -1 is outside/);
    expect(() => native.epCombine(null, out, u, idx, w, nRouted, nRouted + nZero, ok, [])).toThrow(/at least one rank/);
    expect(() => native.epCombine(null, out, u, idx, w, nRouted, nRouted + nZero, ok, [parts[0]!])).toThrow(LongcatError); // rowOf is [2, 2]
    for (const t of [u, idx, w, out, ...parts, rowOf, bad, ok]) t.dispose();
  });

  it('a rank holds exactly its block of experts', () => {
    const ranks = 4,
      sets = expertSets(ex, H, ranks),
      per = sets.per,
      T = 5,
      r = rng(8);
    const u = f32(randomF32(T * H, r), [T, H]),
      w = f32(
        Float32Array.from({ length: T }, () => 1),
        [T, 1],
      );
    for (let d = 0; d < ranks; d++)
      for (let e = 0; e < per; e++) {
        const local = i32(new Array(T).fill(e), [T, 1]),
          global = i32(new Array(T).fill(d * per + e), [T, 1]);
        const a = empty([T, H]),
          b = empty([T, H]);
        native.moe(null, a, u, local, w, per, sets.sharded.shards[d]!, null, null, null, null, null, per);
        native.moe(null, b, u, global, w, nRouted, sets.whole, null, null, null, null, null, nRouted);
        expect(Array.from(toArray(a))).toEqual(Array.from(toArray(b)));
        for (const t of [local, global, a, b]) t.dispose();
      }
    expect(sets.sharded.shards.map((s: MoeExpertSet) => s.nRouted)).toEqual([per, per, per, per]);
    expect(sets.sharded.nRouted).toBe(nRouted);
    u.dispose();
    w.dispose();
    sets.dispose();
  });
});

describe('placement', () => {
  it('splits experts into equal contiguous blocks and rejects bad rank counts with typed errors', () => {
    expect(expertsPerRank(4, 512)).toBe(128);
    expect(rankExperts(3, 128)).toEqual({ first: 384, count: 128 });
    expect(() => expertsPerRank(3, 8)).toThrow(ArgumentError);
    expect(() => expertsPerRank(0, 8)).toThrow(/ranks must be a whole number >= 1/);
    expect(() => expertsPerRank(1.5, 8)).toThrow(ArgumentError);
  });
  it("puts the rank parts' rows back in the step's order", () => {
    // rank 0 owns sequences 0 and 2, rank 1 sequence 1; rows per sequence 2, 1, 3: the rank-major
    // rows are seq 0 (0, 1), seq 2 (2, 3, 4), seq 1 (5)
    const part = (seqs: number[]) => ({ rank: null as never, seqs });
    expect(Array.from(stepOrder([part([0, 2]), part([1])], [2, 1, 3]))).toEqual([0, 1, 5, 2, 3, 4]);
    expect(Array.from(stepOrder([part([1]), part([0])], [1, 1]))).toEqual([1, 0]);
  });
});

// ---- whole models -----------------------------------------------------------------------------

/**
 * Registers a beforeAll that writes the checkpoint `name` (initRandom options `init`) and records the
 * single-device run of the prompts on `backend` for `steps` steps; its dir and run are read once it ran.
 */
function singleDeviceRun(
  name: string,
  init: Omit<Parameters<typeof initRandom>[0], 'out'>,
  backend: 'cpu' | 'cuda',
  steps: number,
  timeoutMs: number,
) {
  const run = { dir: path.join(root, name.replace(/\W+/g, '-')), want: null as unknown as ReturnType<typeof runScript> };
  beforeAll(async () => {
    await initRandom({ ...init, out: run.dir });
    run.want = await singleDeviceScript(run.dir, steps, backend);
  }, timeoutMs);
  return run;
}

describe('expert-parallel models equal the single-device run', () => {
  const checkpoints: [string, 'tiny' | 'small', boolean, Record<string, unknown>][] = [
    ['tiny bf16', 'tiny', false, {}],
    ['tiny fp8', 'tiny', true, {}],
    ['small bf16 (2 layers)', 'small', false, { num_layers: 2 }],
  ];
  for (const [name, preset, fp8, overrides] of checkpoints) {
    describe(name, () => {
      const single = singleDeviceRun(name, { preset, seed: 21, fp8, overrides }, 'cpu', 3, 120_000);
      it.each([2, 4, 8])(
        '%i ranks: batched prefill + decode steps (captured decode graphs)',
        async ranks => {
          const m = await loadModel(single.dir, { backend: 'cpu', cacheDtype: 'f32', maxContext: 64, ranks });
          try {
            const V = m.engine.dims.vocab;
            const shards = m.engine.w.layers.map(l => l.moe.experts);
            for (const s of shards) {
              expect(s).toBeInstanceOf(ShardedExperts);
              expect((s as ShardedExperts).shards.map(x => x.nRouted)).toEqual(
                new Array(ranks).fill(m.engine.dims.nRouted / ranks),
              );
            }
            const got = runScript(m, prompts, 3, single.want.chosen);
            for (const [i, g] of got.out.entries()) expectEqualLogits(g, single.want.out[i]!, V, 1e-5);
          } finally {
            m.dispose();
          }
        },
        120_000,
      );
    });
  }

  it('a rank failing mid-step (injected out-of-memory, dispatch failure, dead peer that never sends) fails the step with a typed error; every rank stays usable', async () => {
    const dir = path.join(root, 'tiny-bf16');
    const want = await singleDeviceScript(dir, 2);
    const m = await loadModel(dir, { backend: 'cpu', cacheDtype: 'f32', maxContext: 64, ranks: 4 });
    try {
      expectFailuresRecover(
        m,
        want,
        1,
        /rank 1 \(cpu\) failed in this step: epDispatch: this rank's dispatch failed \(injected by a test\)/,
      );
      expect(() => m.engine.expertParallel!.injectFault({ rank: 4, kind: 'oom' })).toThrow(ArgumentError);
    } finally {
      m.dispose();
    }
  }, 120_000);

  it('an FP8 dispatch payload (loadModel expertParallel.fp8Payload): 4 CPU ranks within the fp8 tolerance of the single-device run', async () => {
    const dir = path.join(root, 'tiny-bf16');
    const want = await singleDeviceScript(dir, 2);
    const m = await loadModel(dir, {
      backend: 'cpu',
      cacheDtype: 'f32',
      maxContext: 64,
      ranks: 4,
      expertParallel: { fp8Payload: true },
    });
    try {
      const got = runScript(m, prompts, 2, want.chosen);
      const errs = got.out.map((g, i) => maxRelError(g, want.out[i]!)); // measured: 2.8e-2 .. 3.5e-2
      for (const [i, g] of got.out.entries()) expectEqualLogits(g, want.out[i]!, m.engine.dims.vocab, FP8_PAYLOAD_TOL);
      expect(Math.max(...errs)).toBeGreaterThan(1e-6); // the payload really was rounded to e4m3
    } finally {
      m.dispose();
    }
  }, 120_000);

  it('single sequences run alone equal the same sequences batched', async () => {
    const dir = path.join(root, 'tiny-bf16');
    const m = await loadModel(dir, { backend: 'cpu', cacheDtype: 'f32', maxContext: 64, ranks: 4 });
    try {
      const V = m.engine.dims.vocab,
        batched = runScript(m, prompts, 2);
      for (const [b, p] of prompts.entries()) {
        const alone = runScript(
          m,
          [p],
          2,
          batched.chosen.map(c => [c[b]!]),
        );
        expectEqualLogits(alone.out[1]!, batched.out[1]!.subarray(b * V, (b + 1) * V), V, 1e-5);
        expectEqualLogits(alone.out[2]!, batched.out[2]!.subarray(b * V, (b + 1) * V), V, 1e-5);
      }
    } finally {
      m.dispose();
    }
  }, 120_000);

  it('rejects rank counts that do not divide the experts and ranks < 1 with typed errors', async () => {
    const dir = path.join(root, 'tiny-bf16'); // 8 routed experts
    await expect(loadModel(dir, { backend: 'cpu', ranks: 3 })).rejects.toThrow(/3 ranks do not divide the 8 routed experts/);
    await expect(loadModel(dir, { backend: 'cpu', ranks: 3 })).rejects.toBeInstanceOf(ArgumentError);
    await expect(loadModel(dir, { backend: 'cpu', ranks: 0 })).rejects.toBeInstanceOf(ArgumentError);
    await expect(loadModel(dir, { backend: 'cpu', ranks: 16 })).rejects.toBeInstanceOf(ArgumentError);
    await expect(loadModel(dir, { backend: 'cpu', ranks: 2.5 })).rejects.toThrow(/ranks must be a whole number/);
  });
});

// Virtual ranks on one CUDA device (a card: the fused flag-protocol kernels spinning on each other;
// the emulator of test/emu in CI: the same kernels phase by phase) and the moe op per rank, against
// the single-device CUDA run.
describe.runIf(native.cudaStatus().available)('expert-parallel models on one CUDA device equal its single-device run', () => {
  const checkpoints: [string, boolean][] = [
    ['tiny bf16', false],
    ['tiny fp8', true],
  ];
  for (const [name, fp8] of checkpoints) {
    describe(name, () => {
      const single = singleDeviceRun(`cuda-${name}`, { preset: 'tiny', seed: 23, fp8 }, 'cuda', 2, 300_000);
      it.each([2, 8])(
        '%i ranks: batched prefill + decode steps (captured decode graphs)',
        async ranks => {
          const m = await loadModel(single.dir, { backend: 'cuda', cacheDtype: 'f32', maxContext: 64, ranks });
          try {
            const got = runScript(m, prompts, 2, single.want.chosen);
            for (const [i, g] of got.out.entries()) expectEqualLogits(g, single.want.out[i]!, m.engine.dims.vocab, 1e-5);
          } finally {
            m.dispose();
          }
        },
        300_000,
      );
      if (!fp8)
        it('2 ranks with an FP8 dispatch payload: within the fp8 tolerance', async () => {
          const m = await loadModel(single.dir, { backend: 'cuda', cacheDtype: 'f32', maxContext: 64, ranks: 2 });
          try {
            m.engine.expertParallel!.fp8Payload = true;
            const got = runScript(m, prompts, 2, single.want.chosen);
            for (const [i, g] of got.out.entries())
              expectEqualLogits(g, single.want.out[i]!, m.engine.dims.vocab, FP8_PAYLOAD_TOL);
            expect(Math.max(...got.out.map((g, i) => maxRelError(g, single.want.out[i]!)))).toBeGreaterThan(1e-6);
          } finally {
            m.dispose();
          }
        }, 300_000);
    });
  }
});
