// linear (y = x @ W^T for f32 / bf16 / fp8 block-scaled / int8 row-scaled weights) and
// quantizeInt8Rows against float64 references, on every ISA path, with error-bound tolerances.
import { describe, expect, it } from 'vitest';
import { Tensor, cpuFeatures, full, native, tensor, toArray } from '../lib/index.js';
import { bf16ToF32, f32ToBf16, f32ToFp8e4m3, fp8e4m3ToF32, roundHalfEven } from '../lib/numeric.js';
import { eachIsa, isas, rng, expectCode } from './helpers.js';

type WDtype = 'f32' | 'bf16' | 'fp8_e4m3' | 'int8';
type FDtype = 'f32' | 'bf16';
type Rng = ReturnType<typeof rng>;

const U32 = 2 ** -24; // f32 unit roundoff
const U16 = 2 ** -8; // bf16 unit roundoff

interface Weight {
  w: Tensor;
  scale: Tensor | null;
  /** Dequantized W [n * k] in float64 (exact: products of f32 values). */
  ref: Float64Array;
  dispose(): void;
}

/** A random weight in `dtype`: fp8 from random codes (no NaN codes) with random block scales, int8 from random ints. */
function makeWeight(r: Rng, dtype: WDtype, n: number, k: number): Weight {
  const ref = new Float64Array(n * k);
  let w: Tensor;
  let scale: Tensor | null = null;
  if (dtype === 'f32') {
    const v = r.array(n * k);
    ref.set(v);
    w = new Tensor('f32', [n, k], 'cpu', v);
  } else if (dtype === 'bf16') {
    const bits = Uint16Array.from({ length: n * k }, () => f32ToBf16(r.uniform()));
    for (let i = 0; i < n * k; i++) ref[i] = bf16ToF32(bits[i]!);
    w = new Tensor('bf16', [n, k], 'cpu', bits);
  } else if (dtype === 'fp8_e4m3') {
    const kb = Math.ceil(k / 128),
      nb = Math.ceil(n / 128);
    const s = Float32Array.from({ length: nb * kb }, () => r.uniform(0.25, 2) / 64);
    const codes = Uint8Array.from({ length: n * k }, () => {
      const c = r.int(254); // 0..253, skipping the NaN codes 0x7f and 0xff
      return c >= 0x7f ? c + 1 : c;
    });
    for (let i = 0; i < n; i++)
      for (let j = 0; j < k; j++)
        ref[i * k + j] = fp8e4m3ToF32(codes[i * k + j]!) * s[Math.floor(i / 128) * kb + Math.floor(j / 128)]!;
    w = new Tensor('fp8_e4m3', [n, k], 'cpu', codes);
    scale = new Tensor('f32', [nb, kb], 'cpu', s);
  } else {
    const s = Float32Array.from({ length: n }, () => r.uniform(0.5, 2) / 127);
    const q = Int8Array.from({ length: n * k }, () => r.int(255) - 127);
    for (let i = 0; i < n; i++) for (let j = 0; j < k; j++) ref[i * k + j] = q[i * k + j]! * s[i]!;
    w = new Tensor('int8', [n, k], 'cpu', q);
    scale = new Tensor('f32', [n], 'cpu', s);
  }
  return {
    w,
    scale,
    ref,
    dispose: () => {
      w.dispose();
      scale?.dispose();
    },
  };
}

/** x [t, k] in `dtype` and its exact values. */
function makeX(r: Rng, dtype: FDtype, t: number, k: number): { x: Tensor; ref: Float64Array } {
  const v = r.array(t * k);
  const ref = new Float64Array(t * k);
  if (dtype === 'bf16') for (let i = 0; i < v.length; i++) v[i] = bf16ToF32(f32ToBf16(v[i]!));
  ref.set(v);
  return { x: tensor(v, [t, k], { dtype }), ref };
}

/** y = x W^T in float64 and the error scale S = sum_k |x_k w_k| per output. */
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
 * Checks |got - y| <= e + bf16 rounding of the output, where e = rel * S bounds the kernel's error:
 * any fp32 summation order of k products (+ a few roundings for dequantization, lane reductions,
 * k blocks and the int8 scale) stays within gamma_(k+8) * S; the vdpbf16ps path also rounds an f32
 * x to bf16 (relative error <= 2^-8).
 */
function check(
  got: ArrayLike<number>,
  want: { y: Float64Array; s: Float64Array },
  k: number,
  rel: number,
  yt: FDtype,
  what: string,
  extra?: Float64Array,
) {
  const gamma = ((k + 8) * U32) / (1 - (k + 8) * U32);
  for (let i = 0; i < want.y.length; i++) {
    const e = (gamma + rel) * want.s[i]! + (extra ? extra[i]! * (1 + 1e-5) : 0);
    const tol = e + (yt === 'bf16' ? U16 * (Math.abs(want.y[i]!) + e) : 0) + 1e-30;
    const err = Math.abs(got[i]! - want.y[i]!);
    if (!(err <= tol)) expect.fail(`${what}: y[${i}] = ${got[i]} but expected ${want.y[i]} (tolerance ${tol})`);
  }
}

/**
 * The relative rounding (times sum |x w|) the AVX512-BF16 GEMM adds for these arguments at `precision`
 * (0 where linear multiplies in fp32): an f32 x rounded to bf16 (2^-8), and a dequantized fp8 weight
 * rounded to bf16 (another 2^-8; int8 codes are exact in bf16). Precision 'highest' rounds nothing
 * (a bf16 x times a bf16 weight is exact there too); 'fp8' keeps fp8 weights at >= 17 rows in fp32.
 */
function bf16Rounding(isa: string, wdtype: WDtype, xdtype: FDtype, t: number, precision = 'bf16') {
  if (fp8FewRows(isa, wdtype, t, precision)) return (1 + U16) * (1 + U32) - 1; // bf16(x * scale), codes exact
  // bf16 weights take vdpbf16ps from 2 rows (linear_avx512.cc kFewRowsMin), the others from 9
  if (isa !== 'avx512' || !cpuFeatures().avx512bf16 || t < (wdtype === 'bf16' ? 2 : 9) || wdtype === 'f32') return 0;
  if (wdtype === 'bf16') return precision !== 'highest' && xdtype === 'f32' ? U16 : 0;
  if (precision === 'highest' || (precision === 'fp8' && wdtype === 'fp8_e4m3' && t >= 17)) return 0;
  const rx = xdtype === 'f32' ? U16 : 0,
    rw = wdtype === 'fp8_e4m3' ? U16 : 0;
  return (1 + rx) * (1 + rw) - 1;
}

/** Whether fp8 weights take the few-row vdpbf16ps kernel (linear_avx512.cc fewrow_fp8): 2-8 rows on
 *  AVX512-BF16 + VBMI at precision other than 'highest'; x * block scale rounded to bf16 there. */
const fp8FewRows = (isa: string, wdtype: WDtype, t: number, precision = 'bf16') =>
  wdtype === 'fp8_e4m3' &&
  t >= 2 &&
  t <= 8 &&
  precision !== 'highest' &&
  isa === 'avx512' &&
  cpuFeatures().avx512bf16 &&
  cpuFeatures().avx512vbmi;

/** The ISAs whose int8 GEMV takes int8 activations at precision other than 'highest' (linear_i8act.h). */
const int8ActIsa = (isa: string) => isa === 'avx2' || (isa === 'avx512' && cpuFeatures().avx512vnni);
/** Whether linear rounds x to int8 for an int8 weight here (t <= 8, see int8ActIsa). */
const int8Act = (isa: string, wdtype: WDtype, t: number, precision = 'bf16') =>
  wdtype === 'int8' && t <= 8 && precision !== 'highest' && int8ActIsa(isa);

/** The error x rounded to int8 per row and 128 columns adds to y = x W^T: |dx| <= max|x of the
 *  block| / 254 per element, so sum over blocks of that times sum |w| of the block, per output. */
function int8ActBound(x: Float64Array, w: Float64Array, t: number, n: number, k: number): Float64Array {
  const e = new Float64Array(t * n);
  for (let i = 0; i < t; i++)
    for (let j = 0; j < n; j++)
      for (let c0 = 0; c0 < k; c0 += 128) {
        let amax = 0,
          wsum = 0;
        for (let c = c0; c < Math.min(k, c0 + 128); c++) {
          amax = Math.max(amax, Math.abs(x[i * k + c]!));
          wsum += Math.abs(w[j * k + c]!);
        }
        e[i * n + j]! += (amax / 254) * wsum;
      }
  return e;
}

/** Runs `run` at 1, 2 and 3 threads (the caller restores the count): every result bit for bit the
 *  first. Returns the runs made. */
function sameAtThreads(what: string, run: (what: string) => ArrayLike<number>): number {
  let first: ArrayLike<number> | null = null;
  for (const nt of [1, 2, 3]) {
    native.setThreads(nt);
    const w = `${what} threads=${nt}`;
    const got = run(w);
    if (first === null) first = got;
    else
      for (let i = 0; i < got.length; i++)
        if (!Object.is(got[i], first[i])) expect.fail(`${w}: y[${i}] = ${got[i]}, at 1 thread ${first[i]}`);
  }
  return 3;
}

function runLinear(x: Tensor, w: Weight, t: number, n: number, yt: FDtype) {
  const y = full([t, n], NaN, { dtype: yt }); // poisoned: every element must be written
  native.linear(null, y, x, w.w, w.scale);
  const out = toArray(y);
  y.dispose();
  return out;
}

const wdtypes: WDtype[] = ['f32', 'bf16', 'fp8_e4m3', 'int8'];
const fdtypes: FDtype[] = ['f32', 'bf16'];
const cases = wdtypes.flatMap(wd => fdtypes.map(xd => [wd, xd] as const));

describe('linear', () => {
  it.each(cases)('weight %s, x %s: every shape, ISA and output dtype', (wdtype, xdtype) => {
    const r = rng(wdtype.length * 131 + xdtype.length * 7);
    let checked = 0;
    for (const k of [1, 7, 127, 129, 1000])
      for (const n of [1, 5, 33, 130]) {
        const w = makeWeight(r, wdtype, n, k);
        for (const t of [1, 3, 8, 9, 17, 65]) {
          const x = makeX(r, xdtype, t, k);
          const want = reference(x.ref, w.ref, t, n, k);
          eachIsa(isa => {
            const rel = bf16Rounding(isa, wdtype, xdtype, t);
            const extra = int8Act(isa, wdtype, t) ? int8ActBound(x.ref, w.ref, t, n, k) : undefined;
            for (const yt of fdtypes) {
              check(runLinear(x.x, w, t, n, yt), want, k, rel, yt, `${isa} t=${t} k=${k} n=${n} y ${yt}`, extra);
              checked++;
            }
          });
          x.x.dispose();
        }
        w.dispose();
      }
    expect(checked).toBe(5 * 4 * 6 * isas.length * 2);
  });

  it.each(['bf16', 'highest'] as const)(
    'several k blocks, x chunks and thread counts (t=300, k=2100, n=70), precision %s',
    precision => {
      const r = rng(4242);
      const [t, k, n] = [300, 2100, 70];
      const threads = native.threads();
      const before = native.setMatmulPrecision(precision);
      const x = makeX(r, 'f32', t, k);
      try {
        for (const wdtype of wdtypes) {
          const w = makeWeight(r, wdtype, n, k);
          const want = reference(x.ref, w.ref, t, n, k);
          eachIsa(isa => {
            for (const nt of [1, 3]) {
              native.setThreads(nt);
              const rel = bf16Rounding(isa, wdtype, 'f32', t, precision);
              const got = runLinear(x.x, w, t, n, 'f32');
              check(got, want, k, rel, 'f32', `${wdtype} ${isa} threads=${nt}`);
              // the bf16 GEMM really ran where the bound allows it: errors far above fp32 rounding
              let worst = 0;
              for (let i = 0; i < t * n; i++) worst = Math.max(worst, Math.abs(got[i]! - want.y[i]!) / want.s[i]!);
              if (rel > 0) expect(worst, `${wdtype} ${isa}`).toBeGreaterThan(2 ** -14);
              else expect(worst, `${wdtype} ${isa}`).toBeLessThan(2 ** -16);
            }
          });
          w.dispose();
        }
      } finally {
        native.setThreads(threads);
        native.setMatmulPrecision(before);
        x.x.dispose();
      }
    },
  );

  it.each(['bf16', 'highest'] as const)(
    'few-row GEMM (t = 5..33; bf16 weights at 5-8 rows: the few-row vdpbf16ps kernel): weights read in place (whole 4-row groups, 32-column k blocks, strips of even height, groups prefetched ahead) or packed, partial x strips, precision %s',
    precision => {
      const r = rng(precision.length * 977);
      const threads = native.threads();
      const before = native.setMatmulPrecision(precision);
      let checked = 0;
      try {
        // k = 1056: two k blocks (640 + 416 columns); n = 70 and 130: a last panel that is not whole 4-row groups
        for (const k of [32, 512, 1056, 100])
          for (const n of [4, 64, 70, 132]) {
            for (const wdtype of ['f32', 'bf16'] as const) {
              const w = makeWeight(r, wdtype, n, k);
              for (const t of [5, 6, 7, 8, 9, 13, 16, 17, 32, 33]) {
                const x = makeX(r, 'f32', t, k);
                const want = reference(x.ref, w.ref, t, n, k);
                eachIsa(isa => {
                  for (const nt of [1, 3]) {
                    native.setThreads(nt);
                    const rel = bf16Rounding(isa, wdtype, 'f32', t, precision);
                    const what = `${wdtype} ${isa} t=${t} k=${k} n=${n} threads=${nt}`;
                    const got = runLinear(x.x, w, t, n, 'f32');
                    check(got, want, k, rel, 'f32', what);
                    // which path ran: the bf16 GEMM's x rounding shows far above fp32 rounding
                    let worst = 0;
                    for (let i = 0; i < t * n; i++) worst = Math.max(worst, Math.abs(got[i]! - want.y[i]!) / want.s[i]!);
                    if (rel > 0 && k >= 512) expect(worst, what).toBeGreaterThan(2 ** -14);
                    if (rel === 0) expect(worst, what).toBeLessThan(2 ** -16);
                    checked++;
                  }
                });
                x.x.dispose();
              }
              w.dispose();
            }
          }
      } finally {
        native.setThreads(threads);
        native.setMatmulPrecision(before);
      }
      expect(checked).toBe(4 * 4 * 2 * 10 * isas.length * 2);
    },
  );

  it('few rows on several threads (the GEMM split by steal_for over ~32 KiB panels, the GEMV; their weight groups requested ahead into L1 and L2): odd shapes, the same bits at 1, 2 and 3 threads', () => {
    const r = rng(1213);
    const threads = native.threads();
    let checked = 0;
    try {
      // k = 544 and 96: whole 32-column blocks (read in place; panels of 28 / 64 rows at 2+ threads);
      // k = 99: packed. n = 27 and 203: a last panel that is not whole 4-row groups. t = 3: the GEMV
      // (bf16 weights at 3-7 rows on AVX512-BF16: the few-row kernel).
      // At k = 544 and n = 203 the groups 16 KiB ahead (L2) lie inside W for most of it, and past
      // its end for the last.
      for (const k of [96, 99, 544])
        for (const n of [27, 203])
          for (const wdtype of ['f32', 'bf16'] as const) {
            const w = makeWeight(r, wdtype, n, k);
            for (const t of [3, 5, 7, 9, 13, 16, 27]) {
              const x = makeX(r, 'f32', t, k);
              const want = reference(x.ref, w.ref, t, n, k);
              eachIsa(isa => {
                checked += sameAtThreads(`${wdtype} ${isa} t=${t} k=${k} n=${n}`, what => {
                  const got = runLinear(x.x, w, t, n, 'f32');
                  check(got, want, k, bf16Rounding(isa, wdtype, 'f32', t), 'f32', what);
                  return got;
                });
              });
              x.x.dispose();
            }
            w.dispose();
          }
    } finally {
      native.setThreads(threads);
    }
    expect(checked).toBe(3 * 2 * 2 * 7 * isas.length * 3);
  });

  it.each([
    ['bf16', 'bf16'],
    ['bf16', 'highest'],
    ['fp8_e4m3', 'bf16'],
    ['fp8_e4m3', 'highest'],
  ] as const)(
    "%s weights at 2-10 rows (fp8: 2-8; vdpbf16ps, each weight line loaded once for every x row; fp8: codes decoded exactly to bf16, x times the block scale rounded to bf16): odd shapes, x and y f32 / bf16, the same bits at 1, 2 and 3 threads and in any row's company, precision %s",
    (wdtype, precision) => {
      const r = rng(precision.length * 1702 + wdtype.length);
      const threads = native.threads();
      const before = native.setMatmulPrecision(precision);
      let checked = 0;
      try {
        // k: one partial vector, 1-2 vectors and a partial one, several 128-column blocks with a
        // partial last vector (1000), whole blocks (544), rows past bf16's one-row-per-pass limit at
        // 2-4 rows (1060: kOneRowMaxCols 1024); n: passes of 2-4 rows and a last 1-3 rows, several
        // 256-row groups and (fp8) 128-row scale blocks (203, 600)
        for (const k of [7, 33, 100, 544, 1000, 1060])
          for (const n of [1, 5, 13, 203, 600])
            for (const xdtype of fdtypes) {
              const w = makeWeight(r, wdtype, n, k);
              for (const t of wdtype === 'bf16' ? [2, 3, 4, 5, 6, 7, 8, 9, 10] : [2, 3, 4, 5, 6, 7, 8]) {
                const x = makeX(r, xdtype, t, k);
                const want = reference(x.ref, w.ref, t, n, k);
                eachIsa(isa => {
                  const rel = bf16Rounding(isa, wdtype, xdtype, t, precision);
                  for (const yt of fdtypes) {
                    const what = `${isa} x ${xdtype} y ${yt} t=${t} k=${k} n=${n}`;
                    let got: ArrayLike<number> = [];
                    checked += sameAtThreads(what, wh => {
                      got = runLinear(x.x, w, t, n, yt);
                      check(got, want, k, rel, yt, wh);
                      return got;
                    });
                    if (yt === 'bf16') continue;
                    // which path ran: x's bf16 rounding shows far above fp32 rounding ('highest': never)
                    let worst = 0;
                    for (let i = 0; i < t * n; i++) worst = Math.max(worst, Math.abs(got[i]! - want.y[i]!) / want.s[i]!);
                    if (rel > 0 && k >= 544 && t * n >= 26) expect(worst, what).toBeGreaterThan(2 ** -14);
                    if (rel === 0 && xdtype === 'f32') expect(worst, what).toBeLessThan(2 ** -16);
                    // a row's bits do not depend on the other rows of the call (AVX512-BF16: each
                    // output is its x row's and weight row's alone; the GEMVs: rows summed on their own),
                    // where 2 rows run the same path (past 8 rows only the few-row kernel does)
                    const dot =
                      wdtype === 'bf16' &&
                      isa === 'avx512' &&
                      cpuFeatures().avx512bf16 &&
                      (xdtype === 'bf16' || precision !== 'highest');
                    if (wdtype === 'bf16' && !dot && t > 8) continue;
                    // (fp8 off the few-row kernel: the GEMV's accumulator chains per row vary with t)
                    if (wdtype === 'fp8_e4m3' && !fp8FewRows(isa, wdtype, t, precision)) continue;
                    const head = runLinear(x.x.narrow(0, 2), w, 2, n, yt),
                      tail = runLinear(x.x.narrow(t - 2, 2), w, 2, n, yt);
                    for (let i = 0; i < 2 * n; i++) {
                      if (!Object.is(got[i], head[i])) expect.fail(`${what}: y[${i}] = ${got[i]}, in rows 0-1 alone ${head[i]}`);
                      const j = (t - 2) * n + i;
                      if (!Object.is(got[j], tail[i]))
                        expect.fail(`${what}: y[${j}] = ${got[j]}, in its 2 rows alone ${tail[i]}`);
                    }
                  }
                });
                x.x.dispose();
              }
              w.dispose();
            }
      } finally {
        native.setThreads(threads);
        native.setMatmulPrecision(before);
      }
      expect(checked).toBe(6 * 5 * 2 * (wdtype === 'bf16' ? 9 : 7) * isas.length * 2 * 3);
    },
  );

  it('f32 weights at 9-64 rows (the GEMV in passes of 8 rows): each row the same bits as at 1-8 rows and alone, x and y f32 / bf16, at 1, 2 and 3 threads; 65 rows (the GEMM) within the bound', () => {
    const r = rng(1602);
    const threads = native.threads();
    try {
      for (const [k, n] of [
        [512, 48],
        [99, 13],
      ] as const) {
        const w = makeWeight(r, 'f32', n, k);
        for (const xt of fdtypes)
          for (const yt of fdtypes)
            for (const t of [9, 12, 16, 17, 23, 40, 57, 64, 65]) {
              const x = makeX(r, xt, t, k);
              const want = reference(x.ref, w.ref, t, n, k);
              eachIsa(isa => {
                const what = `${isa} t=${t} k=${k} n=${n} x ${xt} y ${yt}`;
                const got = runLinear(x.x, w, t, n, yt);
                check(got, want, k, bf16Rounding(isa, 'f32', xt, t), yt, what);
                if (t > 64) return;
                const passes: number[] = [];
                for (let m0 = 0; m0 < t; m0 += 8) {
                  const rows = x.x.narrow(m0, Math.min(8, t - m0));
                  passes.push(...runLinear(rows, w, Math.min(8, t - m0), n, yt));
                  rows.dispose();
                }
                expect(Array.from(got), `${what}: passes of 8`).toEqual(passes);
                for (const m of [0, t - 1, t >> 1]) {
                  const row = x.x.narrow(m, 1);
                  expect(Array.from(got.slice(m * n, (m + 1) * n)), `${what}: row ${m} alone`).toEqual(
                    Array.from(runLinear(row, w, 1, n, yt)),
                  );
                  row.dispose();
                }
                sameAtThreads(what, () => runLinear(x.x, w, t, n, yt));
                native.setThreads(threads);
              });
              x.x.dispose();
            }
        w.dispose();
      }
    } finally {
      native.setThreads(threads);
    }
  });

  const lanesRows = [11, 12, 16, 17, 23, 31, 33, 47, 64, 65, 130, 150];
  it('11-1024 rows times bf16 weights with k a multiple of 32 (x rows in the lanes, no horizontal sums; past 16 rows in chunks of 16): x and y f32 / bf16, odd n, the same bits at 1, 2 and 3 threads', () => {
    const r = rng(1601);
    const threads = native.threads();
    let checked = 0;
    try {
      // n: register blocks of 12 outputs, items of several blocks split over the threads, a last
      // block of 4-8 rows and a last group of 1-3 rows; k = 2048: x packed larger than L1
      for (const k of [32, 96, 544, 2048])
        for (const n of [1, 3, 6, 13, 40, 203])
          for (const xdtype of fdtypes) {
            const w = makeWeight(r, 'bf16', n, k);
            // 17+: chunks of 16 rows, the last partly zero; 65, 130 and 150: more chunks than an item's 4 at once
            // (150 at 2 threads: items of 4, 4 and 2 chunks)
            for (const t of lanesRows) {
              const x = makeX(r, xdtype, t, k);
              const want = reference(x.ref, w.ref, t, n, k);
              eachIsa(isa => {
                for (const yt of fdtypes)
                  checked += sameAtThreads(`${isa} x ${xdtype} y ${yt} t=${t} k=${k} n=${n}`, what => {
                    const got = runLinear(x.x, w, t, n, yt);
                    check(got, want, k, bf16Rounding(isa, 'bf16', xdtype, t), yt, what);
                    return got;
                  });
              });
              x.x.dispose();
            }
            w.dispose();
          }
    } finally {
      native.setThreads(threads);
    }
    expect(checked).toBe(4 * 6 * 2 * lanesRows.length * isas.length * 2 * 3);
  });

  it('GEMV over several k chunks and row groups (t = 1, 2, 4; k = 4200, n = 300)', () => {
    const r = rng(909);
    const [k, n] = [4200, 300];
    for (const wdtype of wdtypes) {
      const w = makeWeight(r, wdtype, n, k);
      for (const t of [1, 2, 4]) {
        const x = makeX(r, 'bf16', t, k);
        const want = reference(x.ref, w.ref, t, n, k);
        eachIsa(isa => {
          const extra = int8Act(isa, wdtype, t) ? int8ActBound(x.ref, w.ref, t, n, k) : undefined;
          check(runLinear(x.x, w, t, n, 'f32'), want, k, 0, 'f32', `${wdtype} ${isa} t=${t}`, extra);
        });
        x.x.dispose();
      }
      w.dispose();
    }
  });

  it("int8 weights, t <= 8: precision 'bf16' rounds x to int8 per 128 columns (AVX2, AVX512-VNNI; within that bound, ISAs alike, the path really taken), 'highest' keeps fp32; codes -128..127, ragged k", () => {
    const r = rng(5150);
    const before = native.setMatmulPrecision('bf16');
    try {
      const worst: Record<string, Record<string, number>> = { bf16: {}, highest: {} };
      for (const [n, k] of [
        [37, 300], // a part chunk (44 columns)
        [203, 640], // 4 rows per pass at t = 1, a 3-row tail
        [22, 2304], // long rows: 1 per pass
        [5, 100], // one part chunk only
        [9, 129], // one column past a chunk
      ] as const) {
        const s = Float32Array.from({ length: n }, () => r.uniform(0.5, 2) / 127);
        const q = Int8Array.from({ length: n * k }, () => r.int(256) - 128); // -128 too (checkpoints may hold it)
        const ref = new Float64Array(n * k);
        for (let i = 0; i < n; i++) for (let j = 0; j < k; j++) ref[i * k + j] = q[i * k + j]! * s[i]!;
        const w: Weight = { w: new Tensor('int8', [n, k], 'cpu', q), scale: new Tensor('f32', [n], 'cpu', s), ref, dispose() {} };
        for (const t of [1, 2, 3, 4, 8]) {
          const x = makeX(r, 'f32', t, k);
          const want = reference(x.ref, w.ref, t, n, k);
          const bound = int8ActBound(x.ref, w.ref, t, n, k);
          for (const precision of ['bf16', 'highest'] as const) {
            native.setMatmulPrecision(precision);
            const outs: ArrayLike<number>[] = [];
            eachIsa(isa => {
              const on = int8Act(isa, 'int8', t, precision);
              const got = runLinear(x.x, w, t, n, 'f32');
              check(got, want, k, 0, 'f32', `${precision} ${isa} n=${n} k=${k} t=${t}`, on ? bound : undefined);
              if (on) outs.push(got);
              for (let i = 0; i < t * n; i++)
                worst[precision]![isa] = Math.max(worst[precision]![isa] ?? 0, Math.abs(got[i]! - want.y[i]!) / want.s[i]!);
            });
            // the same int8 x and exact int32 sums on every ISA: only the fp32 sums of the
            // per-chunk terms differ (vector width), within fp32 rounding of sum |x w|
            for (const o of outs.slice(1))
              for (let e = 0; e < t * n; e++) {
                const d = Math.abs(o[e]! - outs[0]![e]!),
                  tol = (k / 128 + 16) * 2 * U32 * 4 * want.s[e]! + 1e-30;
                if (!(d <= tol))
                  expect.fail(`int8 activations, ISA parity n=${n} k=${k} t=${t}: y[${e}] differs by ${d} > ${tol}`);
              }
          }
          x.x.dispose();
        }
        w.w.dispose();
        w.scale!.dispose();
      }
      // the int8 path really ran where the ISA has it (its error far above fp32 rounding), and not at 'highest'
      for (const isa of isas) {
        if (int8ActIsa(isa)) expect(worst.bf16![isa], isa).toBeGreaterThan(1e-4);
        else expect(worst.bf16![isa], isa).toBeLessThan(2 ** -16);
        expect(worst.highest![isa], isa).toBeLessThan(2 ** -16);
      }
    } finally {
      native.setMatmulPrecision(before);
    }
  });

  it("int8 weights, int8 activations: a row's bits do not depend on the rows it is computed with (rows per pass, threads, sub-ranges); a NaN or an infinity in x gives NaN rows", () => {
    const before = native.setMatmulPrecision('bf16');
    const threads = native.threads();
    try {
      const r = rng(6161);
      for (const [n, k] of [
        [203, 640],
        [37, 300],
        [22, 2304],
      ] as const) {
        const w = makeWeight(r, 'int8', n, k);
        const q = new Int8Array(w.w.toBytes().buffer),
          s = toArray(w.scale!) as Float32Array;
        for (const t of [1, 2, 5]) {
          const x = makeX(r, 'f32', t, k);
          eachIsa(isa => {
            if (!int8ActIsa(isa)) return;
            sameAtThreads(`${isa} n=${n} k=${k} t=${t}`, () => runLinear(x.x, w, t, n, 'f32'));
            native.setThreads(1);
            const one = runLinear(x.x, w, t, n, 'f32');
            for (const [r0, r1] of [
              [1, n],
              [3, Math.min(n, 14)],
              [n - 2, n],
            ] as [number, number][]) {
              const sub: Weight = {
                w: new Tensor('int8', [r1 - r0, k], 'cpu', q.slice(r0 * k, r1 * k)),
                scale: new Tensor('f32', [r1 - r0], 'cpu', s.slice(r0, r1)),
                ref: new Float64Array(0),
                dispose() {},
              };
              const got = runLinear(x.x, sub, t, r1 - r0, 'f32');
              for (let i = 0; i < t; i++)
                for (let j = r0; j < r1; j++)
                  if (!Object.is(got[i * (r1 - r0) + j - r0], one[i * n + j]))
                    expect.fail(
                      `${isa} n=${n} k=${k} t=${t} rows ${r0}..${r1}: y[${i}, ${j}] = ${got[i * (r1 - r0) + j - r0]}, whole ${one[i * n + j]}`,
                    );
              sub.w.dispose();
              sub.scale!.dispose();
            }
          });
          x.x.dispose();
        }
        // non-finite x: the row of x with it gives NaN everywhere, the others are untouched
        for (const bad of [NaN, Infinity, -Infinity]) {
          const t = 3;
          const xv = r.array(t * k);
          xv[1 * k + Math.min(k - 1, 200)] = bad;
          const x = tensor(xv, [t, k]);
          eachIsa(isa => {
            if (!int8ActIsa(isa)) return;
            const got = runLinear(x, w, t, n, 'f32');
            for (let j = 0; j < n; j++) {
              expect(Number.isNaN(got[1 * n + j]!), `${isa} ${bad} y[1, ${j}]`).toBe(true);
              expect(Number.isFinite(got[j]!) && Number.isFinite(got[2 * n + j]!), `${isa} ${bad} rows 0, 2`).toBe(true);
            }
          });
          x.dispose();
        }
        w.dispose();
      }
    } finally {
      native.setThreads(threads);
      native.setMatmulPrecision(before);
    }
  });

  it("precision 'fp8': fp8 weights times >= 17 rows take e4m3 activations (1x128 groups); the rest is unchanged", () => {
    const r = rng(1717);
    const before = native.setMatmulPrecision('fp8');
    try {
      for (const [t, k, n] of [
        [17, 300, 37],
        [40, 129, 130],
        [16, 300, 37],
      ] as const) {
        for (const xdtype of fdtypes) {
          const x = makeX(r, xdtype, t, k);
          // the activations the GPU's e4m3 GEMM sees: quantized in Math.fround arithmetic, exactly dequantized
          const G = Math.ceil(k / 128),
            xq = new Float64Array(t * k);
          for (let i = 0; i < t; i++)
            for (let g = 0; g < G; g++) {
              let amax = 0;
              for (let c = g * 128; c < Math.min(k, g * 128 + 128); c++) amax = Math.max(amax, Math.abs(x.ref[i * k + c]!));
              const s = Math.fround(Math.max(amax, 1e-10) / 448);
              for (let c = g * 128; c < Math.min(k, g * 128 + 128); c++)
                xq[i * k + c] = fp8e4m3ToF32(f32ToFp8e4m3(Math.fround(x.ref[i * k + c]! / s))) * s;
            }
          for (const wdtype of wdtypes) {
            const w = makeWeight(r, wdtype, n, k);
            const quantized = wdtype === 'fp8_e4m3' && t >= 17;
            const want = reference(quantized ? xq : x.ref, w.ref, t, n, k);
            eachIsa(isa => {
              const rel = bf16Rounding(isa, wdtype, xdtype, t, 'fp8') + (quantized ? 2 * U32 : 0);
              check(runLinear(x.x, w, t, n, 'f32'), want, k, rel, 'f32', `fp8 precision ${wdtype} x ${xdtype} ${isa} t=${t}`);
            });
            w.dispose();
          }
          x.x.dispose();
        }
      }
      // and the quantization is visible: the same fp8 GEMM differs from precision 'highest'
      const x = makeX(r, 'f32', 20, 256),
        w = makeWeight(r, 'fp8_e4m3', 8, 256);
      const a = runLinear(x.x, w, 20, 8, 'f32');
      native.setMatmulPrecision('highest');
      const b = runLinear(x.x, w, 20, 8, 'f32');
      expect(a.some((v, i) => v !== b[i])).toBe(true);
      x.x.dispose();
      w.dispose();
    } finally {
      native.setMatmulPrecision(before);
    }
  });

  it('setMatmulPrecision returns the previous setting and rejects unknown names', () => {
    const before = native.setMatmulPrecision('highest');
    expect(native.setMatmulPrecision('fp8')).toBe('highest');
    expect(native.setMatmulPrecision('bf16')).toBe('fp8');
    expectCode(() => native.setMatmulPrecision('fp16' as 'bf16'), 'E_ARGUMENT');
    expect(native.setMatmulPrecision(before)).toBe('bf16');
  });

  it('accepts x with leading batch dimensions', () => {
    const r = rng(77);
    const w = makeWeight(r, 'bf16', 6, 40);
    const x = makeX(r, 'f32', 6, 40);
    const want = reference(x.ref, w.ref, 6, 6, 40);
    const y = full([2, 3, 6], NaN);
    native.linear(null, y, x.x.view([2, 3, 40]), w.w);
    check(toArray(y), want, 40, bf16Rounding(cpuFeatures().isa, 'bf16', 'f32', 6), 'f32', 'batched');
    y.dispose();
    x.x.dispose();
    w.dispose();
  });

  it('propagates NaN weight codes (fp8 0x7f / 0xff) like the scalar reference', () => {
    eachIsa(isa => {
      for (const t of [1, 12]) {
        const k = 40;
        const codes = new Uint8Array(2 * k).fill(0x38); // 1.0
        codes[17] = 0x7f;
        codes[k + 33] = 0xff;
        const w = new Tensor('fp8_e4m3', [2, k], 'cpu', codes);
        const s = tensor([1], [1, 1]);
        const x = full([t, k], 1);
        const y = full([t, 2], 0);
        native.linear(null, y, x, w, s);
        expect(Array.from(toArray(y)).every(Number.isNaN), `${isa} t=${t}`).toBe(true);
        for (const v of [w, s, x, y]) v.dispose();
      }
    });
  });

  it('fp8 weights at 1-8 rows (the GEMV; AVX512-BF16 + VBMI from 2 rows: the few-row kernel): every non-NaN code (many subnormals), ragged k, rows across scale blocks, NaN rows', () => {
    const r = rng(8088);
    const n = 300;
    const threads = native.threads();
    // Codes: all 254 non-NaN codes in random order, then random ones with subnormals (exponent
    // field 0) three times in ten; scales spread over 2^-8 .. 2^8 so the x pre-scaling is exercised.
    const nonNan = Array.from({ length: 256 }, (_, c) => c).filter(c => (c & 0x7f) !== 0x7f);
    const code = (i: number) => {
      if (i < nonNan.length) return nonNan[i]!;
      if (r.uniform() < 0.3) return (r.int(2) << 7) | r.int(8); // +-subnormal or zero
      return nonNan[r.int(nonNan.length)]!;
    };
    try {
      for (const k of [95, 200, 1000]) {
        const kb = Math.ceil(k / 128),
          nb = Math.ceil(n / 128);
        const s = Float32Array.from({ length: nb * kb }, () => r.uniform(0.5, 2) * 2 ** (r.int(17) - 8));
        const perm = Array.from({ length: n * k }, (_, i) => i);
        for (let i = perm.length - 1; i > 0; i--) {
          const j = r.int(i + 1);
          [perm[i], perm[j]] = [perm[j]!, perm[i]!];
        }
        const codes = new Uint8Array(n * k);
        for (let i = 0; i < n * k; i++) codes[perm[i]!] = code(i);
        // NaN codes in the first / last column, both lane halves, the k tail and around the row block edge.
        const nanAt: [number, number, number][] = [
          [0, 0, 0x7f],
          [5, k - 1, 0xff],
          [127, 63 % k, 0x7f],
          [128, 64 % k, 0xff],
          [130, Math.min(129, k - 1), 0x7f],
          [299, k - 2, 0xff],
        ];
        const nanRows = new Set(nanAt.map(([row]) => row));
        for (const [row, col, c] of nanAt) codes[row * k + col] = c;
        const ref = new Float64Array(n * k);
        for (let i = 0; i < n; i++)
          for (let j = 0; j < k; j++)
            ref[i * k + j] = nanRows.has(i)
              ? 0
              : fp8e4m3ToF32(codes[i * k + j]!) * s[Math.floor(i / 128) * kb + Math.floor(j / 128)]!;
        const w: Weight = {
          w: new Tensor('fp8_e4m3', [n, k], 'cpu', codes),
          scale: new Tensor('f32', [nb, kb], 'cpu', s),
          ref,
          dispose: () => {
            w.w.dispose();
            w.scale!.dispose();
          },
        };
        for (let t = 1; t <= 8; t++) {
          const x = makeX(r, t % 2 ? 'f32' : 'bf16', t, k);
          const want = reference(x.ref, ref, t, n, k);
          eachIsa(isa => {
            for (const nt of [1, 3]) {
              native.setThreads(nt);
              const got = Array.from(runLinear(x.x, w, t, n, 'f32'));
              const what = `${isa} k=${k} t=${t} threads=${nt}`;
              for (let i = 0; i < t; i++)
                for (const row of nanRows) {
                  expect(Number.isNaN(got[i * n + row]!), `${what}: y[${i}, ${row}] = ${got[i * n + row]} (NaN code)`).toBe(true);
                  got[i * n + row] = want.y[i * n + row]!;
                }
              check(got, want, k, bf16Rounding(isa, 'fp8_e4m3', t % 2 ? 'f32' : 'bf16', t), 'f32', what);
            }
          });
          native.setThreads(threads);
          x.x.dispose();
        }
        w.dispose();
      }
    } finally {
      native.setThreads(threads);
    }
  });

  it('rejects bad arguments with typed errors', () => {
    const x = full([2, 4], 1),
      w = full([3, 4], 1),
      y = full([2, 3], 0);
    const q8 = new Tensor('fp8_e4m3', [3, 4], 'cpu', new Uint8Array(12));
    const i8 = new Tensor('int8', [3, 4], 'cpu', new Int8Array(12));
    const s8 = full([1, 1], 1),
      srow = full([3], 1);
    expectCode(() => native.linear(null, y, full([2, 5], 1), w), 'E_SHAPE', /last dimension must be k = 4/);
    expectCode(() => native.linear(null, full([2, 4], 0), x, w), 'E_SHAPE', /'y' has shape \[2, 4\], expected \[2, 3\]/);
    expectCode(() => native.linear(null, y, x, q8), 'E_ARGUMENT', /needs its scale/);
    expectCode(() => native.linear(null, y, x, i8), 'E_ARGUMENT', /needs its scale/);
    expectCode(() => native.linear(null, y, x, q8, full([2, 1], 1)), 'E_SHAPE', /scale/);
    expectCode(() => native.linear(null, y, x, i8, full([1, 3], 1)), 'E_SHAPE', /scale/);
    expectCode(() => native.linear(null, y, x, w, srow), 'E_ARGUMENT', /takes no scale/);
    expectCode(() => native.linear(null, y, x, q8, tensor([1], [1, 1], { dtype: 'bf16' })), 'E_DTYPE', /scale/);
    expectCode(() => native.linear(null, y, tensor([1, 2, 3, 4, 5, 6, 7, 8], [2, 4], { dtype: 'int32' }), w), 'E_DTYPE', /'x'/);
    expectCode(() => native.linear(null, full([2, 3], 0, { dtype: 'f16' }), x, w), 'E_DTYPE', /'y'/);
    expectCode(() => native.linear(null, y, x, full([3, 4], 0, { dtype: 'f16' })), 'E_DTYPE', /weight/);
    expectCode(() => native.linear(null, y, x, full([12], 1)), 'E_SHAPE', /weight/);
    const gone = full([3, 4], 1);
    gone.dispose();
    expectCode(() => native.linear(null, y, x, gone), 'E_DISPOSED');
    expectCode(() => (native.linear as (...a: unknown[]) => void)(null, y, x), 'E_ARGUMENT', /weight/);
    // Still usable after all that: a good call works.
    native.linear(null, y, x, i8, srow);
    expect(Array.from(toArray(y))).toEqual([0, 0, 0, 0, 0, 0]);
    for (const t of [x, w, y, q8, i8, s8, srow]) t.dispose();
  });
});

describe('quantizeInt8Rows', () => {
  /** The op's definition with f32 arithmetic emulated by Math.fround. */
  function quantRef(w: Float32Array, n: number, k: number) {
    const q = new Int8Array(n * k),
      s = new Float32Array(n);
    for (let i = 0; i < n; i++) {
      let amax = 0;
      for (let c = 0; c < k; c++) amax = Math.max(amax, Math.abs(w[i * k + c]!));
      const sc = Math.fround(amax / 127);
      s[i] = sc;
      for (let c = 0; c < k; c++)
        q[i * k + c] = sc > 0 ? Math.max(-127, Math.min(127, roundHalfEven(Math.fround(w[i * k + c]! / sc)))) : 0;
    }
    return { q, s };
  }

  it.each(fdtypes)('matches the reference bit for bit (w %s) and linear on the result stays within half a step', wd => {
    const r = rng(wd === 'f32' ? 11 : 12);
    for (const [n, k] of [
      [1, 1],
      [5, 7],
      [33, 129],
      [7, 1000],
    ] as const) {
      const v = r.array(n * k, -3, 3);
      if (n > 2) v.fill(0, k, 2 * k); // an all-zero row
      if (wd === 'bf16') for (let i = 0; i < v.length; i++) v[i] = bf16ToF32(f32ToBf16(v[i]!));
      const w = tensor(v, [n, k], { dtype: wd });
      const q = new Tensor('int8', [n, k], 'cpu', new Int8Array(n * k).fill(99));
      const s = full([n], NaN);
      native.quantizeInt8Rows(null, q, s, w);
      const want = quantRef(v, n, k);
      expect(Array.from(toArray(s)), `scale ${n}x${k}`).toEqual(Array.from(want.s));
      expect(Array.from(toArray(q)), `q ${n}x${k}`).toEqual(Array.from(want.q));

      // y_int8 - y_exact = x (q*s - w): at most sum_k |x_k| * s / 2 per output, plus fp32 rounding.
      const t = 3;
      const x = makeX(r, 'f32', t, k);
      const exact = reference(x.ref, Float64Array.from(v), t, n, k);
      const y = full([t, n], NaN);
      native.linear(null, y, x.x, q, s);
      const got = toArray(y);
      for (let i = 0; i < t; i++)
        for (let j = 0; j < n; j++) {
          let sx = 0;
          for (let c = 0; c < k; c++) sx += Math.abs(x.ref[i * k + c]!);
          const tol = (sx * want.s[j]!) / 2 + (k + 8) * U32 * 2 * exact.s[i * n + j]! + 1e-30;
          expect(Math.abs(got[i * n + j]! - exact.y[i * n + j]!)).toBeLessThanOrEqual(tol);
        }
      for (const tt of [w, q, s, x.x, y]) tt.dispose();
    }
  });

  it('rejects bad arguments', () => {
    const w = full([3, 4], 1),
      q = new Tensor('int8', [3, 4]),
      s = full([3], 0);
    expectCode(() => native.quantizeInt8Rows(null, full([3, 4], 0), s, w), 'E_DTYPE', /'q'/);
    expectCode(() => native.quantizeInt8Rows(null, q, full([4], 0), w), 'E_SHAPE', /scale/);
    expectCode(() => native.quantizeInt8Rows(null, new Tensor('int8', [4, 3]), s, w), 'E_SHAPE', /'q'/);
    expectCode(() => native.quantizeInt8Rows(null, q, s, tensor([1, 2], [2], { dtype: 'bf16' })), 'E_SHAPE');
    expectCode(() => native.quantizeInt8Rows(null, q, s, new Tensor('int8', [3, 4])), 'E_DTYPE', /'w'/);
    for (const t of [w, q, s]) t.dispose();
  });
});
