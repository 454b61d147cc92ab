// The int4 weight format (native/cpu/linear.h): linear and the grouped experts against float64
// references on odd shapes and every ISA path, quantizeInt4 against its definition, the packing
// helpers and the GPTQ mapping (a hand-packed example), typed errors.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Tensor, cpuFeatures, full, native, tensor, toArray } from '../lib/index.js';
import { setMatmulPrecision } from '../lib/device.js';
import { f16ToF32, f32ToF16, roundHalfEven } from '../lib/numeric.js';
import { gptqActOrder, gptqToInt4, int4Groups, int4ToGptq, int4WeightTensor, packInt4, unpackInt4 } from '../lib/int4.js';
import { eachIsa, isas, rng, expectCode, type Isa } from './helpers.js';

type Rng = ReturnType<typeof rng>;
const U32 = 2 ** -24;
const U16 = 2 ** -8;
/** The ISAs whose int4 GEMV takes int8 activations at precision 'bf16' (linear_i8act.h). */
const int8Isa = (isa: Isa) => isa === 'avx2' || (isa === 'avx512' && cpuFeatures().avx512vnni);

interface Int4Weight {
  w: Tensor;
  scale: Tensor;
  ref: Float64Array; // the exact weights (q - z) * s
  dispose(): void;
}

/** Random codes, scales (bf16 or f16, rounded as stored) and optional zero points. */
function makeInt4(r: Rng, n: number, k: number, g: number, scaleDtype: 'bf16' | 'f16', zeros: boolean): Int4Weight {
  const G = int4Groups(k, g),
    per = zeros ? 2 : 1;
  const codes = Uint8Array.from({ length: n * k }, () => r.int(16));
  const stored = new Float32Array(n * G * per);
  for (let i = 0; i < n * G; i++) {
    stored[i * per] = r.uniform(0.25, 2) / 16;
    if (zeros) stored[i * per + 1] = r.int(17); // 0..16 (GPTQ's qzeros + 1 reaches 16)
  }
  const scale = tensor(stored, zeros ? [n, G, 2] : [n, G], { dtype: scaleDtype });
  const sv = toArray(scale);
  const ref = new Float64Array(n * k);
  for (let i = 0; i < n; i++)
    for (let c = 0; c < k; c++) {
      const at = (i * G + Math.floor(c / g)) * per;
      ref[i * k + c] = (codes[i * k + c]! - (zeros ? sv[at + 1]! : 8)) * sv[at]!;
    }
  const w = int4WeightTensor(packInt4(codes, n, k, g), n, k, g);
  return {
    w,
    scale,
    ref,
    dispose: () => {
      w.dispose();
      scale.dispose();
    },
  };
}

/** A MoeExpertSet of int4 experts (their packed codes and scales). */
const int4ExpertSet = (experts: readonly { gate: Int4Weight; up: Int4Weight; down: Int4Weight }[]) =>
  native.moeExperts(
    experts.map(e => e.gate.w),
    experts.map(e => e.up.w),
    experts.map(e => e.down.w),
    experts.map(e => e.gate.scale),
    experts.map(e => e.up.scale),
    experts.map(e => e.down.scale),
  );

function reference(x: Float64Array, w: Float64Array, t: number, n: number, k: number) {
  const y = new Float64Array(t * n),
    s = new Float64Array(t * n);
  for (let i = 0; i < t; i++)
    for (let j = 0; j < n; j++) {
      let acc = 0,
        abs = 0;
      for (let c = 0; c < k; c++) {
        const p = x[i * k + c]! * w[j * k + c]!;
        acc += p;
        abs += Math.abs(p);
      }
      y[i * n + j] = acc;
      s[i * n + j] = abs;
    }
  return { y, s };
}

/**
 * |got - y| <= (gamma_(k+8) + rel) * S (+ the bf16 output rounding): the weights are exact and every
 * path sums in fp32; rel: the operand rounding of the AVX512-BF16 GEMM at precision 'bf16'.
 */
function check(
  got: ArrayLike<number>,
  want: { y: Float64Array; s: Float64Array },
  k: number,
  yt: 'f32' | 'bf16',
  what: string,
  rel = 0,
) {
  const gamma = ((k + 8) * U32) / (1 - (k + 8) * U32);
  for (let i = 0; i < want.y.length; i++) {
    const e = (gamma + rel) * want.s[i]!;
    const tol = e + (yt === 'bf16' ? U16 * (Math.abs(want.y[i]!) + e) : 0) + 1e-30;
    const err = Math.abs(got[i]! - want.y[i]!);
    if (!(err <= tol)) expect.fail(`${what}: y[${i}] = ${got[i]} but expected ${want.y[i]} (tolerance ${tol})`);
  }
}

function randomX(r: Rng, t: number, k: number) {
  const v = r.array(t * k);
  return { x: tensor(v, [t, k]), ref: Float64Array.from(v) };
}

const variants = [
  { g: 128, scaleDtype: 'bf16', zeros: false },
  { g: 32, scaleDtype: 'f16', zeros: true },
  { g: 64, scaleDtype: 'f16', zeros: false },
  { g: 96, scaleDtype: 'bf16', zeros: true },
] as const;

// every product in fp32 (the default precision lets AVX512-VNNI quantize x: tested apart)
let was: ReturnType<typeof setMatmulPrecision>;
beforeAll(() => {
  was = setMatmulPrecision('highest');
});
afterAll(() => void setMatmulPrecision(was));

describe('linear with int4 weights', () => {
  it.each(variants)('g=$g scales $scaleDtype zero points $zeros: every shape, ISA and output dtype vs float64', v => {
    const r = rng(v.g * 7 + (v.zeros ? 1 : 0));
    let checked = 0;
    for (const k of [1, 31, 129, 300])
      for (const n of [1, 5, 33]) {
        const w = makeInt4(r, n, k, v.g, v.scaleDtype, v.zeros);
        for (const t of [1, 2, 3, 8, 9, 40]) {
          const x = randomX(r, t, k);
          const want = reference(x.ref, w.ref, t, n, k);
          eachIsa(isa => {
            for (const yt of ['f32', 'bf16'] as const) {
              const y = full([t, n], NaN, { dtype: yt }); // poisoned
              native.linear(null, y, x.x, w.w, w.scale);
              check(toArray(y), want, k, yt, `${isa} t=${t} k=${k} n=${n} y ${yt}`);
              y.dispose();
              checked++;
            }
          });
          x.x.dispose();
        }
        w.dispose();
      }
    expect(checked).toBe(4 * 3 * 6 * isas.length * 2);
  });

  it('large k and n: the GEMV over many groups and row passes, the GEMM over several k blocks and panels', () => {
    const r = rng(99);
    const [n, k] = [300, 2100];
    const w = makeInt4(r, n, k, 128, 'f16', true);
    for (const t of [1, 4, 7, 70]) {
      const x = randomX(r, t, k);
      const want = reference(x.ref, w.ref, t, n, k);
      eachIsa(isa => {
        const y = full([t, n], NaN);
        native.linear(null, y, x.x, w.w, w.scale);
        check(toArray(y), want, k, 'f32', `${isa} t=${t}`);
        y.dispose();
      });
      x.x.dispose();
    }
    w.dispose();
  });

  it('grouped experts (moe) with int4 weights equal the same experts as f32 weights', () => {
    const r = rng(5);
    const [T, H, I, nr, k] = [6, 129, 67, 4, 2];
    const experts = Array.from({ length: nr }, () => ({
      gate: makeInt4(r, I, H, 32, 'f16', true),
      up: makeInt4(r, I, H, 128, 'bf16', false),
      down: makeInt4(r, H, I, 64, 'f16', false),
    }));
    const f32 = (w: Int4Weight, n: number, kk: number) => tensor(Float32Array.from(w.ref), [n, kk]);
    const u = tensor(r.array(T * H), [T, H]);
    const idx = tensor(
      Array.from({ length: T * k }, (_, i) => (i * 3 + Math.floor(i / k)) % nr),
      [T, k],
      { dtype: 'int32' },
    );
    const wts = tensor(r.array(T * k, 0, 1), [T, k]);
    const run = (set: ReturnType<typeof native.moeExperts>) => {
      const out = full([T, H], NaN);
      native.moe(null, out, u, idx, wts, nr, set, null, null, null, null, null, nr);
      const o = toArray(out);
      out.dispose();
      set.dispose();
      return o;
    };
    const ref = run(
      native.moeExperts(
        experts.map(e => f32(e.gate, I, H)),
        experts.map(e => f32(e.up, I, H)),
        experts.map(e => f32(e.down, H, I)),
      ),
    );
    eachIsa(isa => {
      const got = run(int4ExpertSet(experts));
      // the same weights, so the same sums up to fp32 rounding (relative to the output's scale)
      let err = 0,
        mag = 0;
      for (let i = 0; i < got.length; i++) {
        err = Math.max(err, Math.abs(got[i]! - ref[i]!));
        mag = Math.max(mag, Math.abs(ref[i]!));
      }
      expect(mag, isa).toBeGreaterThan(0);
      expect(err / mag, isa).toBeLessThan(1e-5);
    });
    for (const e of experts) for (const w of [e.gate, e.up, e.down]) w.dispose();
    for (const t of [u, idx, wts]) t.dispose();
  });

  it("precision 'bf16': the GEMV may take int8 activations (AVX2, AVX512-VNNI, groups of 128k): within their rounding bound, ISAs alike", () => {
    setMatmulPrecision('bf16');
    try {
      const r = rng(77);
      const worst: Partial<Record<Isa, number>> = {};
      let parity = 0;
      for (const [n, k, g] of [
        [37, 300, 128],
        [64, 1024, 256],
        [203, 640, 128], // several row passes per thread and a rows % 8 tail, an odd chunk count
        [5, 129, 32], // groups of 32: the fp32 GEMV
      ] as const)
        for (const zeros of [false, true]) {
          const w = makeInt4(r, n, k, g, 'f16', zeros);
          for (const t of [1, 3, 8]) {
            const x = randomX(r, t, k);
            const want = reference(x.ref, w.ref, t, n, k);
            const int8Outs: Float32Array[] = [];
            eachIsa(isa => {
              const y = full([t, n], NaN);
              native.linear(null, y, x.x, w.w, w.scale);
              const got = toArray(y) as Float32Array;
              y.dispose();
              if (g % 128 === 0 && int8Isa(isa)) int8Outs.push(got);
              // x rounded to int8 per 128 columns: |dx| <= max|x of the block| / 254 per element
              for (let i = 0; i < t; i++)
                for (let j = 0; j < n; j++) {
                  let e = 0;
                  for (let c0 = 0; c0 < k; c0 += 128) {
                    let amax = 0,
                      wsum = 0;
                    for (let c = c0; c < Math.min(k, c0 + 128); c++) {
                      amax = Math.max(amax, Math.abs(x.ref[i * k + c]!));
                      wsum += Math.abs(w.ref[j * k + c]!);
                    }
                    e += (amax / 254) * wsum;
                  }
                  const tol = e * (1 + 1e-5) + (k + 8) * U32 * 4 * want.s[i * n + j]! + 1e-30;
                  const err = Math.abs(got[i * n + j]! - want.y[i * n + j]!);
                  if (!(err <= tol)) expect.fail(`${isa} n=${n} k=${k} g=${g} t=${t}: y[${i}, ${j}] off by ${err} > ${tol}`);
                  if (g % 128 === 0) worst[isa] = Math.max(worst[isa] ?? 0, err / want.s[i * n + j]!);
                }
            });
            // the same int8 x and exact int32 sums on every ISA: only the fp32 sums of the
            // per-chunk terms differ (vector width), within fp32 rounding of sum |x w|
            for (const o of int8Outs.slice(1))
              for (let e = 0; e < t * n; e++) {
                const d = Math.abs(o[e]! - int8Outs[0]![e]!),
                  tol = (k / 128 + 16) * 2 * U32 * 4 * want.s[e]! + 1e-30;
                if (!(d <= tol))
                  expect.fail(`int8 activations, ISA parity n=${n} k=${k} t=${t}: y[${e}] differs by ${d} > ${tol}`);
                parity++;
              }
            x.x.dispose();
          }
          w.dispose();
        }
      // the int8 path really ran where the ISA has it: its error is far above fp32 rounding
      for (const isa of isas) {
        if (int8Isa(isa)) expect(worst[isa], isa).toBeGreaterThan(1e-4);
        else expect(worst[isa], isa).toBeLessThan(1e-5);
      }
      if (isas.filter(int8Isa).length > 1) expect(parity).toBeGreaterThan(0);
    } finally {
      setMatmulPrecision('highest');
    }
  });

  it("precision 'bf16', int8 activations: a row's bits do not depend on the rows it is computed with (rows per pass, threads, sub-ranges, the experts' row stream)", () => {
    // t = 1 takes four short rows (K <= 2048) per pass, else one: every row must come out as in any
    // other split (linear.h weight_rows: the experts' row stream cuts matrices at any row)
    setMatmulPrecision('bf16');
    const threads = native.threads();
    try {
      const r = rng(31);
      for (const [n, k, g, zeros, sd] of [
        [203, 640, 128, false, 'f16'], // short rows: 4 per pass, a 3-row tail
        [37, 300, 128, true, 'bf16'], // zero points, a part chunk
        [22, 2304, 128, false, 'bf16'], // long rows (1152 bytes): 1 per pass
        [19, 1024, 256, false, 'f16'], // groups of 2 chunks
      ] as const) {
        const w = makeInt4(r, n, k, g, sd, zeros);
        const codes = w.w.toBytes(),
          scales = w.scale.toBytes();
        const rb = codes.length / n,
          sb = scales.length / n;
        for (const t of [1, 2]) {
          const x = randomX(r, t, k);
          const want = reference(x.ref, w.ref, t, n, k);
          eachIsa(isa => {
            if (!int8Isa(isa)) return;
            const run = (weight: Tensor, scale: Tensor, rows: number) => {
              const y = full([t, rows], NaN); // poisoned
              native.linear(null, y, x.x, weight, scale);
              const o = toArray(y) as Float32Array;
              y.dispose();
              return o;
            };
            native.setThreads(1);
            const one = run(w.w, w.scale, n);
            for (let i = 0; i < t * n; i++)
              if (!(Math.abs(one[i]! - want.y[i]!) <= 0.02 * want.s[i]! + 1e-30))
                expect.fail(`${isa} n=${n} k=${k} t=${t}: y[${i}] = ${one[i]}, expected ${want.y[i]}`);
            for (const th of [2, 3]) {
              native.setThreads(th);
              expect(new Uint32Array(run(w.w, w.scale, n).buffer), `${isa} n=${n} k=${k} t=${t}: ${th} threads`).toEqual(
                new Uint32Array(one.buffer),
              );
            }
            native.setThreads(1);
            for (const [r0, r1] of [
              [1, n],
              [3, Math.min(n, 14)],
              [n - 2, n],
            ] as [number, number][]) {
              const sub = int4WeightTensor(codes.slice(r0 * rb, r1 * rb), r1 - r0, k, g);
              const subScale = new Tensor(
                sd,
                zeros ? [r1 - r0, int4Groups(k, g), 2] : [r1 - r0, int4Groups(k, g)],
                'cpu',
                scales.slice(r0 * sb, r1 * sb),
              );
              const got = run(sub, subScale, r1 - r0);
              for (let i = 0; i < t; i++)
                expect(
                  new Uint32Array(got.buffer, i * (r1 - r0) * 4, r1 - r0),
                  `${isa} n=${n} k=${k} t=${t}: rows ${r0}..${r1}`,
                ).toEqual(new Uint32Array(one.buffer, (i * n + r0) * 4, r1 - r0));
              sub.dispose();
              subScale.dispose();
            }
          });
          x.x.dispose();
        }
        w.dispose();
      }
      // the experts' row stream (one token, odd sizes: each thread's share starts at odd rows) and
      // one task per expert give the same bits at 1-3 threads
      const [H, I, nr, k] = [300, 67, 6, 4];
      const experts = Array.from({ length: nr }, () => ({
        gate: makeInt4(r, I, H, 128, 'f16', false),
        up: makeInt4(r, I, H, 128, 'f16', false),
        down: makeInt4(r, H, I, 128, 'bf16', false),
      }));
      const u = tensor(r.array(H), [1, H]);
      const idx = tensor([0, 2, 3, 5], [1, k], { dtype: 'int32' });
      const wts = tensor(r.array(k, 0, 1), [1, k]);
      eachIsa(isa => {
        if (!int8Isa(isa)) return;
        const outs: Float32Array[] = [];
        try {
          for (const [sched, th] of [
            ['experts', 1],
            ['rows', 1],
            ['rows', 2],
            ['rows', 3],
          ] as const) {
            process.env.LONGCAT_MOE_SCHED = sched;
            native.setThreads(th);
            const set = int4ExpertSet(experts);
            const out = full([1, H], NaN);
            native.moe(null, out, u, idx, wts, nr, set, null, null, null, null, null, nr);
            outs.push(toArray(out) as Float32Array);
            out.dispose();
            set.dispose();
          }
        } finally {
          delete process.env.LONGCAT_MOE_SCHED;
        }
        expect(
          outs[0]!.some(v => v !== 0 && Number.isFinite(v)),
          isa,
        ).toBe(true);
        for (const o of outs.slice(1))
          expect(new Uint32Array(o.buffer), `${isa} experts`).toEqual(new Uint32Array(outs[0]!.buffer));
      });
      for (const e of experts) for (const w of [e.gate, e.up, e.down]) w.dispose();
      for (const t of [u, idx, wts]) t.dispose();
    } finally {
      native.setThreads(threads);
      setMatmulPrecision('highest');
    }
  });

  it("precision 'bf16': the GEMM (t > 8) on AVX512-BF16 dequantizes each panel to bf16: within the rounding of x and w", () => {
    setMatmulPrecision('bf16');
    try {
      const r = rng(4321);
      for (const [n, k, g, scaleDtype, zeros] of [
        [37, 300, 128, 'bf16', false],
        [70, 2100, 32, 'f16', true], // several k blocks
        [5, 129, 64, 'f16', false],
      ] as const) {
        const w = makeInt4(r, n, k, g, scaleDtype, zeros);
        for (const t of [9, 40, 300]) {
          const x = randomX(r, t, k);
          const want = reference(x.ref, w.ref, t, n, k);
          eachIsa(isa => {
            const bf16 = isa === 'avx512' && cpuFeatures().avx512bf16;
            const rel = bf16 ? (1 + U16) ** 2 - 1 : 0; // x and the dequantized weight rounded to bf16
            for (const yt of ['f32', 'bf16'] as const) {
              const y = full([t, n], NaN, { dtype: yt }); // poisoned
              native.linear(null, y, x.x, w.w, w.scale);
              const got = toArray(y);
              y.dispose();
              const what = `${isa} n=${n} k=${k} g=${g} t=${t} y ${yt}`;
              check(got, want, k, yt, what, rel);
              if (yt === 'bf16') continue;
              // the bf16 GEMM really ran where the CPU has it: errors far above fp32 rounding
              let worst = 0;
              for (let i = 0; i < t * n; i++) worst = Math.max(worst, Math.abs(got[i]! - want.y[i]!) / want.s[i]!);
              if (bf16) expect(worst, what).toBeGreaterThan(2 ** -14);
              else expect(worst, what).toBeLessThan(2 ** -16);
            }
          });
          x.x.dispose();
        }
        w.dispose();
      }
    } finally {
      setMatmulPrecision('highest');
    }
  });

  it('rejects bad int4 arguments with typed errors', () => {
    const q = new Tensor('int8', [3, 2, 16], 'cpu', new Uint8Array(96));
    const s = tensor(new Float32Array(6), [3, 2], { dtype: 'bf16' });
    const x = full([1, 40], 1),
      y = full([1, 3], 0);
    native.linear(null, y, x, q, s); // k = 40 in 2 groups of 32: accepted
    expectCode(() => native.linear(null, y, full([1, 64], 1), new Tensor('int8', [3, 2, 8]), s), 'E_SHAPE', /group/);
    expectCode(() => native.linear(null, y, full([1, 70], 1), q, s), 'E_SHAPE', /k = 70/);
    expectCode(() => native.linear(null, y, full([1, 32], 1), q, s), 'E_SHAPE', /k = 32/);
    expectCode(() => native.linear(null, y, x, q, null), 'E_ARGUMENT', /scale/);
    expectCode(() => native.linear(null, y, x, q, full([3, 2], 1)), 'E_DTYPE', /scale/);
    expectCode(
      () => native.linear(null, y, x, q, tensor(new Float32Array(6), [3, 2], { dtype: 'f16' }).view([3, 1, 2])),
      'E_SHAPE',
    );
    expectCode(() => native.linear(null, y, x, q, tensor(new Float32Array(6), [2, 3], { dtype: 'bf16' })), 'E_SHAPE');
    for (const t of [q, s, x, y]) t.dispose();
  });
});

describe('quantizeInt4', () => {
  /** The op's definition (f32 arithmetic by Math.fround; scales rounded to f16). */
  function quantRef(w: Float32Array, n: number, k: number, g: number) {
    const G = int4Groups(k, g);
    const codes = new Uint8Array(n * k),
      s = new Uint16Array(n * G);
    for (let i = 0; i < n; i++)
      for (let gi = 0; gi < G; gi++) {
        let amax = 0;
        for (let c = gi * g; c < Math.min(k, gi * g + g); c++) amax = Math.max(amax, Math.abs(w[i * k + c]!));
        const sb = f32ToF16(Math.fround(amax / 7)),
          sc = f16ToF32(sb);
        s[i * G + gi] = sb;
        for (let c = gi * g; c < Math.min(k, gi * g + g); c++)
          codes[i * k + c] = 8 + (sc > 0 ? Math.max(-7, Math.min(7, roundHalfEven(Math.fround(w[i * k + c]! / sc)))) : 0);
      }
    return { codes, s };
  }

  it.each(['f32', 'bf16'] as const)('matches the definition bit for bit (w %s); linear on it is within half a step', wd => {
    const r = rng(wd === 'f32' ? 21 : 22);
    for (const [n, k, g] of [
      [1, 1, 32],
      [5, 77, 32],
      [33, 129, 128],
      [7, 1000, 64],
    ] as const) {
      const v = r.array(n * k, -3, 3);
      if (n > 2) v.fill(0, k, 2 * k); // an all-zero row
      const w = tensor(v, [n, k], { dtype: wd });
      const vw = toArray(w) as Float32Array;
      const G = int4Groups(k, g);
      const q = new Tensor('int8', [n, G, g / 2], 'cpu', new Uint8Array((n * G * g) / 2).fill(0x55));
      const s = full([n, G], NaN, { dtype: 'f16' });
      native.quantizeInt4(null, q, s, w);
      const want = quantRef(vw, n, k, g);
      const sBits = new Uint16Array(s.toBytes().buffer.slice(0));
      expect(Array.from(sBits), `scale ${n}x${k}`).toEqual(Array.from(want.s));
      expect(Array.from(unpackInt4(q.toBytes(), n, k, g)), `codes ${n}x${k}`).toEqual(Array.from(want.codes));
      expect(q.toBytes()).toEqual(packInt4(want.codes, n, k, g)); // padding codes 8
      // y - y_exact = x (w_q - w): at most sum |x| * s / 2 per output (plus fp32 rounding)
      const t = 2;
      const x = randomX(r, t, k);
      const exact = reference(x.ref, Float64Array.from(vw), t, n, k);
      const y = full([t, n], NaN);
      native.linear(null, y, x.x, q, s);
      const got = toArray(y);
      const sv = toArray(s);
      for (let i = 0; i < t; i++)
        for (let j = 0; j < n; j++) {
          let e = 0;
          for (let c = 0; c < k; c++) e += (Math.abs(x.ref[i * k + c]!) * sv[j * G + Math.floor(c / g)]!) / 2;
          const tol = e + (k + 8) * U32 * 4 * exact.s[i * n + j]! + 1e-30;
          expect(Math.abs(got[i * n + j]! - exact.y[i * n + j]!)).toBeLessThanOrEqual(tol);
        }
      for (const tt of [w, q, s, x.x, y]) tt.dispose();
    }
  });

  it('rejects bad arguments', () => {
    const w = full([3, 40], 1),
      q = new Tensor('int8', [3, 2, 16]),
      s = full([3, 2], 0, { dtype: 'f16' });
    expectCode(() => native.quantizeInt4(null, q, full([3, 2], 0), w), 'E_DTYPE', /scale/);
    expectCode(() => native.quantizeInt4(null, new Tensor('int8', [3, 3, 16]), s, w), 'E_SHAPE', /'q'/);
    expectCode(() => native.quantizeInt4(null, new Tensor('int8', [3, 2, 12]), s, w), 'E_SHAPE', /group/);
    expectCode(() => native.quantizeInt4(null, q, s, new Tensor('int8', [3, 40])), 'E_DTYPE', /'w'/);
    for (const t of [w, q, s]) t.dispose();
  });
});

describe('int4 packing and GPTQ', () => {
  it('packInt4 puts column j in the low and j + 16 in the high nibble of each 32-column block; unpack inverts it', () => {
    const k = 40,
      codes = Uint8Array.from({ length: 2 * k }, (_, i) => i % 16);
    const b = packInt4(codes, 2, k, 32);
    expect(b.length).toBe(2 * 32);
    expect(b[0]).toBe(0 | ((16 % 16) << 4)); // columns 0 and 16
    expect(b[1]).toBe(1 | ((17 % 16) << 4));
    expect(b[16]).toBe((32 % 16) | (8 << 4)); // column 32, padding (8) for column 48
    expect(Array.from(unpackInt4(b, 2, k, 32))).toEqual(Array.from(codes));
  });

  it('maps a hand-packed GPTQ linear (v1 zeros, asymmetric, 2 groups) to the weights of its definition', () => {
    // N = 8 outputs, K = 64 inputs, group 32: qweight [8, 8] int32, each word 8 codes along K.
    const N = 8,
      K = 64,
      g = 32;
    const qweight = new Int32Array((K / 8) * N);
    for (let i = 0; i < K / 8; i++) for (let j = 0; j < N; j++) qweight[i * N + j] = 0x76543210 + j; // codes 0+j, 1, .. 7 along k
    // qzeros [2, 1]: group 0 stores 0x01234567 (output j: 7 - j, zero 8 - j), group 1 all 2 (zero 3).
    const qzeros = Int32Array.from([0x01234567, 0x22222222]);
    const scales = Uint16Array.from({ length: 2 * N }, (_, i) => f32ToF16(0.5 + i / 16)); // [G, N]
    const m = gptqToInt4('layer', { qweight, qzeros, scales, gIdx: null }, N, K, {
      bits: 4,
      groupSize: g,
      sym: false,
      zeroMinusOne: true,
    });
    expect(m.zeros).toBe(true);
    const w = int4WeightTensor(m.bytes, N, K, g),
      s = new Tensor('f16', [N, 2, 2], 'cpu', m.scale);
    // The definition: W[j, k] = scales[k / g, j] * (q - (qzeros nibble + 1)).
    const want = new Float64Array(N * K);
    for (let j = 0; j < N; j++)
      for (let c = 0; c < K; c++) {
        const q = c % 8 === 0 ? j : c % 8;
        const gi = Math.floor(c / g);
        const z = gi === 0 ? 8 - j : 3;
        want[j * K + c] = f16ToF32(scales[gi * N + j]!) * (q - z);
      }
    const x = tensor(
      Array.from({ length: K * K }, (_, i) => (i % (K + 1) === 0 ? 1 : 0)),
      [K, K],
    ); // identity rows: y = W^T columns
    const y = full([K, N], NaN);
    native.linear(null, y, x, w, s);
    const got = toArray(y);
    for (let c = 0; c < K; c++) for (let j = 0; j < N; j++) expect(got[c * N + j], `W[${j}, ${c}]`).toBe(want[j * K + c]);
    for (const t of [w, s, x, y]) t.dispose();
  });

  it('maps a hand-packed act-order GPTQ linear (g_idx interleaving 3 groups) weight by weight, and the gathered x gives W x', () => {
    // N = 8 outputs, K = 72 inputs, group 32 (3 groups: 32, 32, 8). Column c holds code (c + j) % 16
    // for output j; g_idx interleaves the groups the way act-order does (c % 9 picks one of 3 lists).
    const N = 8,
      K = 72,
      g = 32,
      G = 3;
    const gIdx = new Int32Array(K);
    const left = [32, 32, 8];
    for (let c = 0; c < K; c++) {
      let gi = [2, 0, 1, 0, 1, 0, 1, 2, 1][c % 9]!;
      while (left[gi] === 0) gi = (gi + 1) % G;
      left[gi] = left[gi]! - 1;
      gIdx[c] = gi;
    }
    expect(left).toEqual([0, 0, 0]);
    const code = (j: number, c: number) => (c + j) % 16;
    const qweight = new Int32Array((K / 8) * N);
    for (let c = 0; c < K; c++)
      for (let j = 0; j < N; j++) qweight[(c >> 3) * N + j] = qweight[(c >> 3) * N + j]! | (code(j, c) << (4 * (c & 7)));
    // zero points (v1: stored zero - 1): group gi, output j: zero 5 + gi + (j % 3), stored 4 + gi + j % 3
    const qzeros = new Int32Array(G * (N / 8));
    for (let gi = 0; gi < G; gi++) for (let j = 0; j < N; j++) qzeros[gi] = qzeros[gi]! | ((4 + gi + (j % 3)) << (4 * j));
    const scales = Uint16Array.from({ length: G * N }, (_, i) => f32ToF16(0.25 + i / 32)); // [G, N]
    const layout = { bits: 4, groupSize: g, sym: false, zeroMinusOne: true } as const;
    const act = gptqActOrder('layer', { qweight, qzeros, scales, gIdx }, N, K, layout)!;
    // perm: the stable argsort of g_idx
    const want = Array.from({ length: K }, (_, c) => c).sort((a, b) => gIdx[a]! - gIdx[b]! || a - b);
    expect(Array.from(act.perm)).toEqual(want);
    expect(Array.from(act.tensors.gIdx!)).toEqual(Array.from({ length: K }, (_, c) => Math.floor(c / g)));
    const m = gptqToInt4('layer', act.tensors, N, K, layout);
    expect(m.zeros).toBe(true);
    // weight by weight: the int4 weight's column c is the checkpoint's column perm[c], with its group's scale and zero
    const codes = unpackInt4(m.bytes, N, K, g);
    const defined = new Float64Array(N * K); // W of the definition, the checkpoint's column order
    for (let j = 0; j < N; j++)
      for (let c = 0; c < K; c++) {
        const from = act.perm[c]!,
          gi = gIdx[from]!;
        expect(Math.floor(c / g), `column ${c}'s group`).toBe(gi);
        expect(codes[j * K + c], `code [${j}, ${c}]`).toBe(code(j, from));
        expect(f16ToF32(m.scale[(j * G + gi) * 2]!), `scale [${j}, ${gi}]`).toBe(f16ToF32(scales[gi * N + j]!));
        expect(f16ToF32(m.scale[(j * G + gi) * 2 + 1]!), `zero [${j}, ${gi}]`).toBe(5 + gi + (j % 3));
        defined[j * K + from] = f16ToF32(scales[gi * N + j]!) * (code(j, from) - (5 + gi + (j % 3)));
      }
    // y = W x through the gathered activations, every ISA, GEMV and GEMM, against float64
    const w = int4WeightTensor(m.bytes, N, K, g),
      s = new Tensor('f16', [N, G, 2], 'cpu', m.scale),
      perm = new Tensor('int32', [K], 'cpu', act.perm);
    const r = rng(72);
    for (const t of [1, 5, 20]) {
      const x = randomX(r, t, K);
      const ref = reference(x.ref, defined, t, N, K);
      const xp = full([t, K], NaN);
      native.gatherColumns(null, xp, x.x, perm);
      eachIsa(isa => {
        const y = full([t, N], NaN);
        native.linear(null, y, xp, w, s);
        check(toArray(y), ref, K, 'f32', `${isa} t=${t}`);
        y.dispose();
      });
      for (const v of [x.x, xp]) v.dispose();
    }
    for (const v of [w, s, perm]) v.dispose();
    // the plain grouping needs no permutation; uneven groups and groups out of range are typed errors
    const plainIdx = Int32Array.from({ length: K }, (_, c) => Math.floor(c / g));
    expect(gptqActOrder('layer', { qweight, qzeros, scales, gIdx: plainIdx }, N, K, layout)).toBeNull();
    const uneven = Int32Array.from(gIdx);
    uneven[uneven.indexOf(2)] = 0; // group 0 gets 33 columns
    for (const [bad, msg] of [
      [uneven, /puts 33 columns in group 0, expected 32/],
      [Int32Array.from(gIdx, (v, c) => (c === 5 ? 3 : v)), /g_idx\[5\] = 3 is not a group of 3/],
      [gIdx.subarray(0, 64), /g_idx has 64 elements, expected 72/],
    ] as const) {
      try {
        gptqActOrder('layer', { qweight, qzeros, scales, gIdx: bad }, N, K, layout);
        expect.fail(`accepted ${msg}`);
      } catch (e) {
        expect((e as { code?: string }).code).toBe('E_CHECKPOINT');
        expect((e as Error).message).toMatch(msg);
      }
    }
  });

  it('repackGptqInt4 (the native repacking of qweight) equals packInt4 of the codes: odd k, padding, every group size; bad shapes are typed errors', () => {
    const r = rng(9);
    for (const [n, k, g] of [
      [24, 296, 128], // k = 8 * 37: padding in the last group
      [8, 64, 32],
      [40, 1000, 4096], // one group per row (GPTQ's -1)
      [16, 520, 96],
    ] as const) {
      const codes = Uint8Array.from({ length: n * k }, () => r.int(16));
      const G = int4Groups(k, g);
      const gp = int4ToGptq(packInt4(codes, n, k, g), new Uint16Array(n * G).fill(f32ToF16(0.5)), n, k, g);
      const q = new Tensor('int8', [n, G, g / 2], 'cpu', new Uint8Array((n * G * g) / 2).fill(0x5a)), // poisoned
        qw = new Tensor('int32', [k / 8, n], 'cpu', gp.qweight);
      native.repackGptqInt4(null, q, qw);
      expect(q.toBytes(), `n=${n} k=${k} g=${g}`).toEqual(packInt4(codes, n, k, g));
      q.dispose();
      qw.dispose();
    }
    const qw = new Tensor('int32', [5, 8]);
    expectCode(() => native.repackGptqInt4(null, new Tensor('int8', [8, 3, 16]), qw), 'E_SHAPE', /'q'/); // k = 40: 2 groups of 32
    expectCode(() => native.repackGptqInt4(null, new Tensor('int8', [8, 1, 12]), qw), 'E_SHAPE', /group/);
    expectCode(
      () => native.repackGptqInt4(null, new Tensor('int8', [8, 2, 16]), new Tensor('f32', [5, 8])),
      'E_DTYPE',
      /qweight/,
    );
    qw.dispose();
  });

  it('int4ToGptq writes the v1 packing (zero 8 stored as 7) that gptqToInt4 reads back; act-order g_idx goes through gptqActOrder', () => {
    const r = rng(3);
    const [n, k, g] = [16, 96, 32];
    const codes = Uint8Array.from({ length: n * k }, () => r.int(16));
    const bytes = packInt4(codes, n, k, g);
    const scale = Uint16Array.from({ length: n * 3 }, () => f32ToF16(r.uniform(0.1, 1)));
    const gp = int4ToGptq(bytes, scale, n, k, g);
    expect(gp.qweight.length).toBe((k / 8) * n);
    expect(gp.qweight[0]! & 15).toBe(codes[0]); // k = 0 of output 0 in the low nibble
    expect((gp.qweight[1]! >>> 4) & 15).toBe(codes[k + 1]); // output 1, k = 1
    expect(gp.qzeros[0]).toBe(0x77777777);
    const back = gptqToInt4('t', gp, n, k, { bits: 4, groupSize: g, sym: true, zeroMinusOne: true });
    expect(back.zeros).toBe(false);
    expect(back.bytes).toEqual(bytes);
    expect(back.scale).toEqual(scale);
    const perm = Int32Array.from(gp.gIdx);
    [perm[0], perm[40]] = [perm[40]!, perm[0]!];
    expect(() => gptqToInt4('t', { ...gp, gIdx: perm }, n, k, { bits: 4, groupSize: g, sym: true, zeroMinusOne: true })).toThrow(
      /act-order.*gptqActOrder/,
    );
    // columns 0 and 40 traded groups: gptqActOrder moves column 40 into group 0's run and 0 into group 1's
    const act = gptqActOrder('t', { ...gp, gIdx: perm }, n, k, { bits: 4, groupSize: g, sym: true, zeroMinusOne: true })!;
    expect(Array.from(act.perm.subarray(0, 33))).toEqual([...Array.from({ length: 31 }, (_, i) => i + 1), 40, 0].slice(0, 33));
    try {
      gptqToInt4('t', gp, n, k, { bits: 4, groupSize: 48, sym: true, zeroMinusOne: true });
      expect.fail('group 48 accepted');
    } catch (e) {
      expect((e as { code?: string }).code).toBe('E_CHECKPOINT');
    }
  });
});
