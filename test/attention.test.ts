// MLA attention ops vs float64 references written from SPEC 3.5 (expanded) and 5.2 (absorbed).
import { afterAll, describe, expect, it } from 'vitest';
import { full, native, roundBf16, tensor, toArray, type Tensor } from '../lib/index.js';
import { expectClose, rng, expectCode } from './helpers.js';
import { decodeFp8Row, encodeFp8Row, fp8GroupScale, fp8RowBytes, FP8_GROUP } from '../lib/check/fp8-cache-ref.js';

const startIsa = native.cpuFeatures().isa;
const startThreads = native.threads();
const startPrecision = native.setMatmulPrecision('bf16');
native.setMatmulPrecision(startPrecision);
afterAll(() => {
  native.setIsa(startIsa);
  native.setThreads(startThreads);
});
const isas = ['scalar', 'avx2', 'avx512'] as const;
const i32 = (v: number[]) => tensor(v, [v.length], { dtype: 'int32' });

interface Dims {
  nh: number;
  dn: number;
  dr: number;
  dv: number;
  dl: number;
}
type Arr = ArrayLike<number>;

// ---- float64 references ---------------------------------------------------------------------------

/**
 * One query token (q [nh, dn + dr]) against keys 0..n-1 of kvb [S, nh, dn + dv] / kpe [S, dr] starting at
 * row `off`: per head softmax((q_nope.k_nope + q_pe.k_pe) * scale) @ v. Returns [nh, dv] and the
 * probabilities [nh, n].
 */
function attendOne(d: Dims, q: Arr, qOff: number, kvb: Arr, kpe: Arr, off: number, n: number, scale: number) {
  const dk = d.dn + d.dr,
    dkv = d.dn + d.dv;
  const o = new Float64Array(d.nh * d.dv);
  const probs: Float64Array[] = [];
  for (let h = 0; h < d.nh; h++) {
    const s = new Float64Array(n);
    let mx = -Infinity;
    for (let j = 0; j < n; j++) {
      let acc = 0;
      const kb = ((off + j) * d.nh + h) * dkv,
        qb = qOff + h * dk;
      for (let c = 0; c < d.dn; c++) acc += q[qb + c]! * kvb[kb + c]!;
      for (let c = 0; c < d.dr; c++) acc += q[qb + d.dn + c]! * kpe[(off + j) * d.dr + c]!;
      s[j] = acc * scale;
      mx = Math.max(mx, s[j]!);
    }
    let sum = 0;
    for (let j = 0; j < n; j++) sum += s[j] = Math.exp(s[j]! - mx);
    for (let j = 0; j < n; j++) {
      s[j]! /= sum;
      const kb = ((off + j) * d.nh + h) * dkv + d.dn;
      for (let c = 0; c < d.dv; c++) o[h * d.dv + c]! += s[j]! * kvb[kb + c]!;
    }
    probs.push(s);
  }
  return { o, probs };
}

function prefillRef(d: Dims, q: Arr, kvb: Arr, kpe: Arr, qStart: number[], kvStart: number[], scale: number, T: number) {
  const out = new Float64Array(T * d.nh * d.dv).fill(NaN);
  for (let b = 0; b + 1 < qStart.length; b++) {
    const qLen = qStart[b + 1]! - qStart[b]!,
      kLen = kvStart[b + 1]! - kvStart[b]!;
    for (let j = 0; j < qLen; j++) {
      const pos = kLen - qLen + j;
      const { o } = attendOne(d, q, (qStart[b]! + j) * d.nh * (d.dn + d.dr), kvb, kpe, kvStart[b]!, pos + 1, scale);
      out.set(o, (qStart[b]! + j) * d.nh * d.dv);
    }
  }
  return out;
}

/** kv_b_proj in float64: kvb[s, :] = W ckv[s] (W [nh*(dn+dv), dl]). */
function expandKvb(d: Dims, ckv: Arr, S: number, w: Arr) {
  const rows = d.nh * (d.dn + d.dv);
  const kvb = new Float64Array(S * rows);
  for (let s = 0; s < S; s++)
    for (let r = 0; r < rows; r++) {
      let acc = 0;
      for (let c = 0; c < d.dl; c++) acc += w[r * d.dl + c]! * ckv[s * d.dl + c]!;
      kvb[s * rows + r] = acc;
    }
  return kvb;
}

const rounded = (a: Arr, bf16: boolean) => Float64Array.from(a as ArrayLike<number>, v => (bf16 ? roundBf16(v) : v));

// ---- Prefill ----------------------------------------------------------------------------------------

/**
 * mlaPrefill on the CPU (current ISA) into a NaN-poisoned o [T, nh, dv]: q [T, nh, dn + dr],
 * kvb [S, nh, dn + dv], kpe [S, dr], sequences delimited by the prefix sums qStart / kvStart.
 */
/** float64 absorbed projections: qLat[t, h] = W_uk[h]^T q_nope[t, h] and o[t, h] = W_uv[h] oLat[t, h],
 *  kv_b's rows per head [dn uk rows, dv uv rows] (row stride dkv), q's rows of stride dq. */
function absorbRef(d: Dims, T: number, q: Arr, dq: number, oLat: Arr, w: Arr, dkv: number) {
  const wantQ = new Float64Array(T * d.nh * d.dl),
    wantO = new Float64Array(T * d.nh * d.dv);
  for (let t = 0; t < T; t++)
    for (let h = 0; h < d.nh; h++) {
      for (let c = 0; c < d.dl; c++)
        for (let k = 0; k < d.dn; k++)
          wantQ[(t * d.nh + h) * d.dl + c]! += w[(h * dkv + k) * d.dl + c]! * q[(t * d.nh + h) * dq + k]!;
      for (let k = 0; k < d.dv; k++)
        for (let c = 0; c < d.dl; c++)
          wantO[(t * d.nh + h) * d.dv + k]! += w[(h * dkv + d.dn + k) * d.dl + c]! * oLat[(t * d.nh + h) * d.dl + c]!;
    }
  return { wantQ, wantO };
}

function prefill(d: Dims, q: Arr, kvb: Arr, kpe: Arr, qStart: number[], kvStart: number[], scale: number) {
  const T = qStart.at(-1)!,
    S = kvStart.at(-1)!;
  const o = full([T, d.nh, d.dv], NaN);
  native.mlaPrefill(
    null,
    o,
    tensor(q, [T, d.nh, d.dn + d.dr]),
    tensor(kvb, [S, d.nh, d.dn + d.dv]),
    tensor(kpe, [S, d.dr]),
    i32(qStart),
    i32(kvStart),
    scale,
  );
  const out = toArray(o);
  o.dispose();
  return out;
}

describe('mlaPrefill', () => {
  const configs: [string, Dims, number[], number[]][] = [
    // name, dims, per sequence: query lengths, key / value lengths (kvLen - qLen = cached prefix)
    ['small odd dims, no prefix', { nh: 3, dn: 16, dr: 8, dv: 12, dl: 0 }, [5, 17, 1], [5, 17, 1]],
    ['small odd dims, cached prefixes', { nh: 3, dn: 16, dr: 8, dv: 12, dl: 0 }, [4, 17, 1, 0], [9, 40, 33, 6]],
    ['odd widths, long sequence across tiles', { nh: 2, dn: 33, dr: 6, dv: 70, dl: 0 }, [70, 3, 35], [130, 3, 35]],
    ['real head widths', { nh: 2, dn: 128, dr: 64, dv: 128, dl: 0 }, [9, 18], [20, 18]],
  ];
  it.each(configs)('equals the naive causal softmax: %s, on every ISA', (_name, d, qLens, kvLens) => {
    const r = rng(qLens.length * 31 + d.dn);
    const qStart = [0],
      kvStart = [0];
    for (const [i, ql] of qLens.entries()) {
      qStart.push(qStart.at(-1)! + ql);
      kvStart.push(kvStart.at(-1)! + kvLens[i]!);
    }
    const T = qStart.at(-1)!,
      S = kvStart.at(-1)!,
      dk = d.dn + d.dr;
    const q = r.array(T * d.nh * dk),
      kvb = r.array(S * d.nh * (d.dn + d.dv)),
      kpe = r.array(S * d.dr);
    const scale = 1 / Math.sqrt(dk);
    const want = prefillRef(d, q, kvb, kpe, qStart, kvStart, scale, T);
    for (const isa of isas) {
      native.setIsa(isa);
      expectClose(prefill(d, q, kvb, kpe, qStart, kvStart, scale), want, 2e-6, 2e-5, `prefill o (${isa})`);
    }
  });

  it('stays finite and exact with scores around 1e3 (running max, no overflow)', () => {
    const d: Dims = { nh: 2, dn: 16, dr: 8, dv: 12, dl: 0 };
    const r = rng(5);
    const T = 40,
      S = 40,
      dk = 24;
    const q = r.array(T * d.nh * dk, -30, 30),
      kvb = r.array(S * d.nh * 28, -30, 30),
      kpe = r.array(S * 8, -30, 30);
    const scale = 0.3; // |score| up to ~1e3 .. 1e4
    const want = prefillRef(d, q, kvb, kpe, [0, T], [0, S], scale, T);
    for (const isa of isas) {
      native.setIsa(isa);
      expectClose(prefill(d, q, kvb, kpe, [0, T], [0, S], scale), want, 1e-3, 1e-3, `large scores (${isa})`);
    }
  });

  it('rejects bad arguments with typed errors', () => {
    const q = full([4, 2, 24], 0),
      kvb = full([6, 2, 28], 0),
      kpe = full([6, 8], 0),
      o = full([4, 2, 12], NaN);
    const qs = i32([0, 4]),
      ks = i32([0, 6]);
    expectCode(() => native.mlaPrefill(null, full([4, 2, 13], 0), q, kvb, kpe, qs, ks, 0.2), 'E_SHAPE', /'o'/);
    expectCode(() => native.mlaPrefill(null, o, q, full([6, 3, 28], 0), kpe, qs, ks, 0.2), 'E_SHAPE', /kvb/);
    expectCode(() => native.mlaPrefill(null, o, q, kvb, full([5, 8], 0), qs, ks, 0.2), 'E_SHAPE', /kpe/);
    expectCode(() => native.mlaPrefill(null, o, q, kvb, kpe, tensor([0, 4], [2]), ks, 0.2), 'E_DTYPE', /qStart/);
    expectCode(() => native.mlaPrefill(null, o, q, kvb, kpe, qs, i32([0, 3, 6]), 0.2), 'E_SHAPE', /kvStart/);
    expectCode(() => native.mlaPrefill(null, o, full([4, 2, 24], 0, { dtype: 'bf16' }), kvb, kpe, qs, ks, 0.2), 'E_DTYPE', /'q'/);
    expectCode(() => native.mlaPrefill(null, o, q, kvb, kpe, qs, ks, Infinity), 'E_ARGUMENT', /softmaxScale/);
    // Index values are checked when the op runs: the error comes back at the next synchronize.
    native.mlaPrefill(null, o, q, kvb, kpe, qs, i32([0, 3]), 0.2);
    expectCode(() => native.synchronize(), 'E_ARGUMENT', /4 queries but only 3 keys/);
    native.mlaPrefill(null, o, q, kvb, kpe, i32([0, 5]), i32([0, 6]), 0.2);
    expectCode(() => native.synchronize(), 'E_ARGUMENT', /exceed/);
    native.mlaPrefill(null, o, q, kvb, kpe, i32([2, 1]), i32([0, 6]), 0.2);
    expectCode(() => native.synchronize(), 'E_ARGUMENT', /non-decreasing/);
  });
});

// ---- Paged cache + absorbed decode ---------------------------------------------------------------------

interface Scenario {
  d: Dims;
  lens: number[];
  blockSize: number;
  numBlocks: number;
  maxBlocks: number;
  tables: number[][];
  ckv: Float32Array[]; // per sequence [len, dl]
  kpe: Float32Array[]; // per sequence [len, dr]
  q: Float32Array; // [B, nh, dn + dr]
  w: Float32Array; // [nh * (dn + dv), dl]
  scale: number;
}

function scenario(
  seed: number,
  d: Dims,
  lens: number[],
  blockSize: number,
  opts: { qAmp?: number; kvAmp?: number } = {},
): Scenario {
  const r = rng(seed);
  const maxBlocks = Math.max(1, ...lens.map(l => Math.ceil(l / blockSize))) + 1;
  const numBlocks = lens.reduce((a, l) => a + Math.ceil(l / blockSize), 0) + 5;
  // Shuffled, non-contiguous block ids shared out between the sequences.
  const ids = Array.from({ length: numBlocks }, (_, i) => i);
  for (let i = ids.length - 1; i > 0; i--) {
    const j = r.int(i + 1);
    [ids[i], ids[j]] = [ids[j]!, ids[i]!];
  }
  let next = 0;
  const tables = lens.map(l => {
    const t = Array.from({ length: maxBlocks }, () => -1); // unused entries are invalid on purpose
    for (let k = 0; k < Math.ceil(l / blockSize); k++) t[k] = ids[next++]!;
    return t;
  });
  const kvAmp = opts.kvAmp ?? 1,
    qAmp = opts.qAmp ?? 1;
  return {
    d,
    lens,
    blockSize,
    numBlocks,
    maxBlocks,
    tables,
    ckv: lens.map(l => r.array(l * d.dl, -kvAmp, kvAmp)),
    kpe: lens.map(l => r.array(l * d.dr, -kvAmp, kvAmp)),
    q: r.array(lens.length * d.nh * (d.dn + d.dr), -qAmp, qAmp),
    w: r.array(d.nh * (d.dn + d.dv) * d.dl, -0.5, 0.5),
    scale: 1 / Math.sqrt(d.dn + d.dr),
  };
}

/** Expanded attention (SPEC 3.5) of each sequence's last token over its whole history, float64. */
function decodeRef(sc: Scenario, cacheBf16: boolean, wBf16: boolean, qNopeBf16 = false) {
  const { d } = sc;
  const w = rounded(sc.w, wBf16);
  const dk = d.dn + d.dr;
  // absorbQ's vdpbf16ps path rounds q_nope to bf16: the same attention of the rounded query
  const q = qNopeBf16 ? Float64Array.from(sc.q, (v, i) => (i % dk < d.dn ? roundBf16(v) : v)) : sc.q;
  const o = new Float64Array(sc.lens.length * d.nh * d.dv);
  const oLat = new Float64Array(sc.lens.length * d.nh * d.dl);
  sc.lens.forEach((len, b) => {
    const ckv = rounded(sc.ckv[b]!, cacheBf16),
      kpe = rounded(sc.kpe[b]!, cacheBf16);
    const kvb = expandKvb(d, ckv, len, w);
    const r = attendOne(d, q, b * d.nh * dk, kvb, kpe, 0, len, sc.scale);
    o.set(r.o, b * d.nh * d.dv);
    for (let h = 0; h < d.nh; h++)
      for (let j = 0; j < len; j++)
        for (let c = 0; c < d.dl; c++) oLat[(b * d.nh + h) * d.dl + c]! += r.probs[h]![j]! * ckv[j * d.dl + c]!;
  });
  return { o, oLat };
}

/** An fp8 latent cache poisoned with 0xff bytes (NaN in e4m3, as a scale and in bf16). */
const poisonedFp8 = (nb: number, bs: number, rb: number) =>
  new native.Tensor('fp8_e4m3', [nb, bs, rb], 'cpu', new Uint8Array(nb * bs * rb).fill(0xff));

/** Writes every sequence into a poisoned cache (one mlaCacheWrite for all tokens). */
function buildCache(sc: Scenario, dtype: 'f32' | 'bf16' | 'fp8'): Tensor {
  const { d } = sc;
  const cache =
    dtype === 'fp8'
      ? poisonedFp8(sc.numBlocks, sc.blockSize, fp8RowBytes(d.dl, d.dr))
      : full([sc.numBlocks, sc.blockSize, d.dl + d.dr], NaN, { dtype });
  const total = sc.lens.reduce((a, b) => a + b, 0);
  const ckv = new Float32Array(total * d.dl),
    kpe = new Float32Array(total * d.dr),
    slots: number[] = [];
  let t = 0;
  sc.lens.forEach((len, b) => {
    ckv.set(sc.ckv[b]!, t * d.dl);
    kpe.set(sc.kpe[b]!, t * d.dr);
    for (let s = 0; s < len; s++) slots.push(sc.tables[b]![Math.floor(s / sc.blockSize)]! * sc.blockSize + (s % sc.blockSize));
    t += len;
  });
  native.mlaCacheWrite(null, cache, tensor(ckv, [total, d.dl]), tensor(kpe, [total, d.dr]), i32(slots));
  return cache;
}

function runDecode(sc: Scenario, cache: Tensor, wt: Tensor) {
  const { d } = sc,
    B = sc.lens.length,
    dk = d.dn + d.dr;
  const q = tensor(sc.q, [B, d.nh, dk]);
  const qLat = full([B, d.nh, d.dl], NaN),
    oLat = full([B, d.nh, d.dl], NaN),
    o = full([B, d.nh, d.dv], NaN);
  native.mlaAbsorbQ(null, qLat, q, wt, d.dn);
  native.mlaDecodeAbsorbed(
    null,
    oLat,
    qLat,
    q,
    cache,
    tensor(sc.tables.flat(), [B, sc.maxBlocks], { dtype: 'int32' }),
    i32(sc.lens),
    sc.scale,
  );
  native.mlaOutput(null, o, oLat, wt);
  return { o: toArray(o), oLat: toArray(oLat), qLat: toArray(qLat) };
}

/**
 * The AVX512-BF16 decode path over a bf16 cache (precision 'bf16', the default) rounds q (q_lat ++ q_pe)
 * and p = exp(s - m) to bf16 and sums in fp32. Checks it against a float64 absorbed reference that
 * rounds q the same way (q_lat from the kernel's own absorbQ, tested on its own) with an elementwise
 * bound: p rounding (relative error <= u = 2^-8) moves oLat[h][c] by at most u * sum_j p_j |v_j[c]|
 * (l sums the unrounded p), and o = W_UV oLat by at most sum_c |W_UV[h][., c]| times that; plus the
 * fp32 summation tolerance of the exact path. Only sequences from `first` on are compared.
 */
function checkBf16Decode(sc: Scenario, got: { o: Arr; oLat: Arr; qLat: Arr }, wBf16: boolean, what: string, first = 0) {
  const { d } = sc,
    dk = d.dn + d.dr,
    u = 2 ** -8,
    atol = 2e-5 * Math.sqrt(d.dl),
    rtol = 2e-4;
  const w = rounded(sc.w, wBf16);
  let worst = 0,
    where = '';
  const check = (g: number, want: number, bound: number, name: string) => {
    const r = Math.abs(g - want) / (u * bound + atol + rtol * Math.abs(want));
    if (!(r <= worst) && (r > worst || Number.isNaN(r))) {
      worst = Number.isNaN(r) ? Infinity : r;
      where = `${name} = ${g}, want ${want} (bound ${u * bound + atol + rtol * Math.abs(want)})`;
    }
  };
  sc.lens.forEach((len, b) => {
    if (b < first) return;
    const ckv = rounded(sc.ckv[b]!, true),
      kpe = rounded(sc.kpe[b]!, true);
    for (let h = 0; h < d.nh; h++) {
      const ql = rounded(Array.from(got.qLat).slice((b * d.nh + h) * d.dl, (b * d.nh + h + 1) * d.dl), true);
      const qp = rounded(Array.from(sc.q).slice((b * d.nh + h) * dk + d.dn, (b * d.nh + h + 1) * dk), true);
      const s = new Float64Array(len);
      let mx = -Infinity,
        sum = 0;
      for (let j = 0; j < len; j++) {
        let a = 0;
        for (let c = 0; c < d.dl; c++) a += ql[c]! * ckv[j * d.dl + c]!;
        for (let c = 0; c < d.dr; c++) a += qp[c]! * kpe[j * d.dr + c]!;
        s[j] = a * sc.scale;
        mx = Math.max(mx, s[j]!);
      }
      for (let j = 0; j < len; j++) sum += s[j] = Math.exp(s[j]! - mx);
      const ol = new Float64Array(d.dl),
        ob = new Float64Array(d.dl);
      for (let j = 0; j < len; j++)
        for (let c = 0; c < d.dl; c++) {
          ol[c]! += (s[j]! / sum) * ckv[j * d.dl + c]!;
          ob[c]! += (s[j]! / sum) * Math.abs(ckv[j * d.dl + c]!);
        }
      for (let c = 0; c < d.dl; c++)
        check(got.oLat[(b * d.nh + h) * d.dl + c]!, ol[c]!, ob[c]!, `${what} oLat[${b}][${h}][${c}]`);
      for (let c = 0; c < d.dv; c++) {
        const r = (h * (d.dn + d.dv) + d.dn + c) * d.dl;
        let o = 0,
          bound = 0;
        for (let l = 0; l < d.dl; l++) {
          o += w[r + l]! * ol[l]!;
          bound += Math.abs(w[r + l]!) * ob[l]!;
        }
        check(got.o[(b * d.nh + h) * d.dv + c]!, o, bound, `${what} o[${b}][${h}][${c}]`);
      }
    }
  });
  expect(worst, where).toBeLessThanOrEqual(1);
}
/** Whether decode over a bf16 cache at ISA `isa` takes the vdpbf16ps path (precision 'bf16'). */
const bf16DecodePath = (isa: string) => isa === 'avx512' && native.cpuFeatures().avx512bf16;
/** Whether mlaAbsorbQ / mlaOutput at T tokens take the vdpbf16ps path (bf16 kv_b_proj, more than 4
 *  tokens, AVX512-BF16, precision other than 'highest'), which rounds q_nope / oLat to bf16. */
const bf16AbsorbPath = (isa: string, T: number, wBf16: boolean, precision: string) =>
  wBf16 && T > 4 && isa === 'avx512' && native.cpuFeatures().avx512bf16 && precision !== 'highest';
/** float64 o = W_uv oLat of the kernel's own oLat [T, nh, dl], rounded to bf16 first (bf16AbsorbPath). */
function outputOfRounded(d: Dims, T: number, oLat: Arr, w: Arr) {
  const zeros = new Float64Array(T * d.nh * d.dn);
  return absorbRef(d, T, zeros, d.dn, rounded(oLat, true), w, d.dn + d.dv).wantO;
}

describe('absorbed decode over the paged latent cache', () => {
  const small: Dims = { nh: 3, dn: 16, dr: 8, dv: 12, dl: 20 };
  const cases: [string, Dims, number[], number][] = [
    ['lengths 1, 17, 130, block 16', small, [1, 17, 130], 16],
    ['one long sequence (split-K)', small, [1000], 16],
    ['odd block size, many short sequences', { nh: 5, dn: 7, dr: 6, dv: 9, dl: 37 }, [3, 1, 40, 16, 17, 2, 65], 7],
    ['real latent widths', { nh: 6, dn: 128, dr: 64, dv: 128, dl: 512 }, [33, 1, 70], 16],
    // bf16 path: heads in passes of 16 (16 + 4 here), an odd row (dl + dr = 39), a tile split over blocks
    ['20 heads, odd row, partial tiles', { nh: 20, dn: 9, dr: 6, dv: 7, dl: 33 }, [5, 70, 33], 24],
  ];
  for (const [name, d, lens, bs] of cases)
    for (const cacheType of ['f32', 'bf16'] as const)
      for (const wType of ['f32', 'bf16'] as const)
        it(`absorbQ + cacheWrite + decodeAbsorbed + mlaOutput equal expanded attention: ${name}, ${cacheType} cache, ${wType} kv_b_proj, every ISA`, () => {
          const sc = scenario(lens.length * 17 + d.dl + (cacheType === 'bf16' ? 1 : 0), d, lens, bs);
          const want = decodeRef(sc, cacheType === 'bf16', wType === 'bf16');
          const cache = buildCache(sc, cacheType);
          const wt = tensor(sc.w, [d.nh * (d.dn + d.dv), d.dl], { dtype: wType });
          // Rounding in f32 over dot products of ~dl terms; the bf16 roundings are in the reference too.
          const atol = 2e-5 * Math.sqrt(d.dl),
            rtol = 2e-4;
          for (const isa of isas) {
            native.setIsa(isa);
            const got = runDecode(sc, cache, wt);
            if (cacheType === 'bf16' && bf16DecodePath(isa)) {
              checkBf16Decode(sc, got, wType === 'bf16', isa);
              continue;
            }
            if (bf16AbsorbPath(isa, lens.length, wType === 'bf16', startPrecision)) {
              const wantAct = decodeRef(sc, cacheType === 'bf16', true, true);
              expectClose(got.oLat, wantAct.oLat, atol, rtol, `oLat (${isa}, q_nope in bf16)`);
              expectClose(
                got.o,
                outputOfRounded(d, lens.length, got.oLat, rounded(sc.w, true)),
                atol,
                rtol,
                `o (${isa}, oLat in bf16)`,
              );
              continue;
            }
            expectClose(got.oLat, want.oLat, atol, rtol, `oLat (${isa})`);
            expectClose(got.o, want.o, atol, rtol, `o (${isa})`);
          }
          // bf16 cache vs the unrounded math: off by the cache's rounding only (~2^-8 relative).
          if (cacheType === 'bf16') {
            const exact = decodeRef(sc, false, wType === 'bf16');
            const got = runDecode(sc, cache, wt);
            expectClose(got.o, exact.o, (0.02 * Math.sqrt(d.dl)) / 4, 2 ** -6, 'o vs unrounded cache');
          }
          cache.dispose();
        });

  it("precision 'highest' keeps the fp32 decode path for a bf16 cache (only the cache is rounded), on every ISA", () => {
    const d: Dims = { nh: 6, dn: 128, dr: 64, dv: 128, dl: 512 };
    const sc = scenario(2024, d, [45, 1, 100], 16);
    const want = decodeRef(sc, true, false);
    const cache = buildCache(sc, 'bf16');
    const wt = tensor(sc.w, [d.nh * (d.dn + d.dv), d.dl]);
    const atol = 2e-5 * Math.sqrt(d.dl),
      rtol = 2e-4;
    const before = native.setMatmulPrecision('highest');
    try {
      for (const isa of isas) {
        native.setIsa(isa);
        const got = runDecode(sc, cache, wt);
        expectClose(got.oLat, want.oLat, atol, rtol, `oLat highest (${isa})`);
        expectClose(got.o, want.o, atol, rtol, `o highest (${isa})`);
      }
      // The bf16 path really is a different computation where the CPU has it.
      native.setIsa('avx512');
      const exact = runDecode(sc, cache, wt);
      native.setMatmulPrecision('bf16');
      const fast = runDecode(sc, cache, wt);
      if (bf16DecodePath(native.cpuFeatures().isa)) {
        expect(Array.from(fast.oLat)).not.toEqual(Array.from(exact.oLat));
        checkBf16Decode(sc, fast, false, 'bf16 precision');
      } else expect(Array.from(fast.oLat)).toEqual(Array.from(exact.oLat));
    } finally {
      native.setMatmulPrecision(before);
      native.setIsa(startIsa);
    }
    cache.dispose();
  });

  it('splits one long sequence over any thread count and merges exactly', () => {
    const d = small;
    const sc = scenario(99, d, [777, 5, 300], 16);
    const want = decodeRef(sc, false, false);
    const cache = buildCache(sc, 'f32');
    const wt = tensor(sc.w, [d.nh * (d.dn + d.dv), d.dl]);
    for (const n of [1, 3, 8]) {
      native.setThreads(n);
      for (const isa of isas) {
        native.setIsa(isa);
        const got = runDecode(sc, cache, wt);
        expectClose(got.o, want.o, 2e-4, 2e-4, `o (${n} threads, ${isa})`);
      }
    }
    // The same over a bf16 cache (the vdpbf16ps path where the CPU has it).
    const cacheBf = buildCache(sc, 'bf16'),
      wantBf = decodeRef(sc, true, false);
    for (const n of [1, 3, 8]) {
      native.setThreads(n);
      for (const isa of isas) {
        native.setIsa(isa);
        const got = runDecode(sc, cacheBf, wt);
        if (bf16DecodePath(isa)) checkBf16Decode(sc, got, false, `bf16 cache, ${n} threads`);
        else expectClose(got.o, wantBf.o, 2e-4, 2e-4, `o (bf16 cache, ${n} threads, ${isa})`);
      }
    }
    cacheBf.dispose();
    native.setThreads(startThreads);
  });

  it('splits the heads of one short sequence over the threads: bitwise the one-thread result, f32 and bf16 caches', () => {
    // 13 heads (head groups of 4 + 9 at 2 threads, 4 + 4 + 5 at 3 and 4); 23 and 100 rows: one key
    // split at every thread count, so each head's result is that of a single unit over all its rows.
    const d: Dims = { nh: 13, dn: 24, dr: 8, dv: 20, dl: 37 };
    for (const lens of [[23], [100]]) {
      const sc = scenario(4242 + lens[0]!, d, lens, 16);
      const wt = tensor(sc.w, [d.nh * (d.dn + d.dv), d.dl]);
      for (const dt of ['f32', 'bf16'] as const) {
        const cache = buildCache(sc, dt),
          want = decodeRef(sc, dt === 'bf16', false);
        for (const isa of isas) {
          native.setIsa(isa);
          native.setThreads(1);
          const one = runDecode(sc, cache, wt);
          if (dt === 'bf16' && bf16DecodePath(isa)) checkBf16Decode(sc, one, false, `bf16 cache, ${lens}, ${isa}`);
          else expectClose(one.o, want.o, 2e-4, 2e-4, `o (${dt} cache, ${lens}, ${isa})`);
          for (const n of [2, 3, 4]) {
            native.setThreads(n);
            const got = runDecode(sc, cache, wt);
            expect(Array.from(got.oLat), `oLat (${dt}, ${lens}, ${n} threads, ${isa})`).toEqual(Array.from(one.oLat));
          }
        }
        cache.dispose();
      }
      wt.dispose();
    }
    native.setIsa(startIsa);
    native.setThreads(startThreads);
  });

  it('stays finite and correct with scores around 1e3', () => {
    const d = small;
    const sc = scenario(7, d, [50, 130], 16, { qAmp: 8, kvAmp: 8 });
    sc.scale = 4; // |score| ~ 1e3
    const want = decodeRef(sc, false, false);
    const cache = buildCache(sc, 'f32');
    const wt = tensor(sc.w, [d.nh * (d.dn + d.dv), d.dl]);
    for (const isa of isas) {
      native.setIsa(isa);
      const got = runDecode(sc, cache, wt);
      let maxScore = 0;
      const qLatRef = new Float64Array(got.qLat.length);
      qLatRef.set(got.qLat);
      for (let j = 0; j < 50; j++) {
        let s = 0;
        for (let c = 0; c < d.dl; c++) s += qLatRef[c]! * sc.ckv[0]![j * d.dl + c]!;
        maxScore = Math.max(maxScore, Math.abs(s * sc.scale));
      }
      expect(maxScore).toBeGreaterThan(700);
      expectClose(got.o, want.o, 1e-2, 1e-3, `o (${isa})`);
    }
  });

  it('propagates a NaN query to its own sequence only', () => {
    const d = small;
    const sc = scenario(4, d, [20, 35], 16);
    sc.q[3] = NaN; // sequence 0, head 0, a nope channel
    const cache = buildCache(sc, 'bf16');
    const wt = tensor(sc.w, [d.nh * (d.dn + d.dv), d.dl]);
    const want = decodeRef(sc, true, false);
    for (const isa of isas) {
      native.setIsa(isa);
      const got = runDecode(sc, cache, wt);
      for (let c = 0; c < d.dv; c++) expect(Number.isNaN(got.o[c]!), `${isa} o[0][0][${c}]`).toBe(true);
      if (bf16DecodePath(isa)) checkBf16Decode(sc, got, false, `second sequence (${isa})`, 1);
      else expectClose(got.o.slice(d.nh * d.dv), want.o.slice(d.nh * d.dv), 1e-4, 1e-4, `second sequence (${isa})`);
    }
  });

  it('gives zeros for an empty sequence and ignores the unused block-table entries', () => {
    const d = small;
    const sc = scenario(3, d, [0, 9], 4);
    const cache = buildCache(sc, 'f32');
    const wt = tensor(sc.w, [d.nh * (d.dn + d.dv), d.dl]);
    const got = runDecode(sc, cache, wt);
    expect(Array.from(got.oLat.slice(0, d.nh * d.dl))).toEqual(new Array(d.nh * d.dl).fill(0));
    expectClose(
      got.o.slice(d.nh * d.dv),
      decodeRef(sc, false, false).o.slice(d.nh * d.dv),
      1e-4,
      1e-4,
      'o of the second sequence',
    );
  });

  // dl 150: 64-column blocks only; dl 531: two 256-column blocks of a single token's row and a
  // tail, 13 W_UK rows (groups of 4 and 1) and 11 W_UV rows per head, 5 heads (units of uneven length)
  it.each([
    [{ nh: 3, dn: 16, dr: 8, dv: 12, dl: 150 }, [1, 2, 5, 9]],
    [{ nh: 5, dn: 13, dr: 8, dv: 11, dl: 531 }, [1, 2]],
    // more than 4 tokens: W_UK rows 32 at a time (absorb_q's multi-token groups), 37 = 32 + 5
    [{ nh: 3, dn: 37, dr: 8, dv: 12, dl: 150 }, [6, 17]],
    [{ nh: 5, dn: 13, dr: 8, dv: 11, dl: 531 }, [5, 9]],
    // the bf16 path's blocks: dn 131 = two 128-element chunks of W_UK rows (the last pair half
    // empty), dv 70 = two blocks of output lanes (64 + 6), 65 tokens = two token blocks (64 + 1)
    [{ nh: 3, dn: 131, dr: 4, dv: 70, dl: 45 }, [5, 13, 16, 33, 63, 65]],
  ] as Array<[Dims, number[]]>)(
    'the absorbed projections equal their definitions (absorbQ, mlaOutput): %o, token counts %o, f32 and bf16 kv_b_proj, every ISA and precision',
    (d, Ts) => {
      const r = rng(11);
      const before = native.setMatmulPrecision('bf16');
      try {
        for (const T of Ts) {
          const dk = d.dn + d.dr,
            dkv = d.dn + d.dv;
          const q = r.array(T * d.nh * dk),
            oLat = r.array(T * d.nh * d.dl),
            w = r.array(d.nh * dkv * d.dl);
          for (const wType of ['f32', 'bf16'] as const) {
            const wv = rounded(w, wType === 'bf16');
            const exact = absorbRef(d, T, q, dk, oLat, wv, dkv);
            // the vdpbf16ps path: q_nope and oLat rounded to bf16, exact products, fp32 sums
            const act = absorbRef(d, T, rounded(q, true), dk, rounded(oLat, true), wv, dkv);
            const wt = tensor(w, [d.nh * dkv, d.dl], { dtype: wType });
            for (const precision of ['bf16', 'highest'] as const) {
              native.setMatmulPrecision(precision);
              for (const isa of isas) {
                native.setIsa(isa);
                const ql = full([T, d.nh, d.dl], NaN),
                  o = full([T, d.nh, d.dv], NaN);
                native.mlaAbsorbQ(null, ql, tensor(q, [T, d.nh, dk]), wt, d.dn);
                native.mlaOutput(null, o, tensor(oLat, [T, d.nh, d.dl]), wt);
                const { wantQ, wantO } = bf16AbsorbPath(isa, T, wType === 'bf16', precision) ? act : exact;
                const what = `T=${T} ${wType} ${precision} ${isa}`;
                expectClose(toArray(ql), wantQ, 1e-5, 1e-5, `qLat ${what}`);
                expectClose(toArray(o), wantO, 1e-5, 1e-5, `o ${what}`);
                ql.dispose();
                o.dispose();
              }
            }
            wt.dispose();
          }
        }
      } finally {
        native.setMatmulPrecision(before);
        native.setIsa(startIsa);
      }
    },
  );

  it('the bf16 absorbed projections: a token gets the same bits at any token count from 5 and any thread count', () => {
    const d: Dims = { nh: 7, dn: 19, dr: 5, dv: 13, dl: 301 };
    const dk = d.dn + d.dr,
      dkv = d.dn + d.dv,
      T = 70;
    const r = rng(31);
    const q = r.array(T * d.nh * dk),
      oLat = r.array(T * d.nh * d.dl);
    const wt = tensor(r.array(d.nh * dkv * d.dl), [d.nh * dkv, d.dl], { dtype: 'bf16' });
    const before = native.setMatmulPrecision('bf16');
    const run = (n: number) => {
      const ql = full([n, d.nh, d.dl], NaN),
        o = full([n, d.nh, d.dv], NaN);
      native.mlaAbsorbQ(null, ql, tensor(q.slice(0, n * d.nh * dk), [n, d.nh, dk]), wt, d.dn);
      native.mlaOutput(null, o, tensor(oLat.slice(0, n * d.nh * d.dl), [n, d.nh, d.dl]), wt);
      const got = [new Uint32Array((toArray(ql) as Float32Array).buffer), new Uint32Array((toArray(o) as Float32Array).buffer)];
      ql.dispose();
      o.dispose();
      return got;
    };
    try {
      for (const isa of isas) {
        native.setIsa(isa);
        if (!bf16AbsorbPath(isa, T, true, 'bf16')) continue;
        native.setThreads(1);
        const all = run(T);
        for (const n of [5, 9, 13, 16, 17, 33, 65])
          for (const threads of [1, 2, 3]) {
            native.setThreads(threads);
            const [ql, o] = run(n);
            expect(Array.from(ql!), `qLat, ${n} tokens, ${threads} threads`).toEqual(
              Array.from(all[0]!.slice(0, n * d.nh * d.dl)),
            );
            expect(Array.from(o!), `o, ${n} tokens, ${threads} threads`).toEqual(Array.from(all[1]!.slice(0, n * d.nh * d.dv)));
          }
      }
    } finally {
      native.setThreads(startThreads);
      native.setMatmulPrecision(before);
      native.setIsa(startIsa);
      wt.dispose();
    }
  });

  it('the absorbed projections at decode shapes: odd dims, f32 and bf16 kv_b_proj, 1 and 3 threads (bitwise the same)', () => {
    // dl = 301: whole rows of 18 full and one partial 16-lane block per unit; 7 heads over 3 threads
    const d: Dims = { nh: 7, dn: 19, dr: 5, dv: 13, dl: 301 };
    const dk = d.dn + d.dr,
      dkv = d.dn + d.dv;
    const r = rng(29);
    for (const bf16 of [false, true])
      for (const T of [1, 3, 5, 18, 63]) {
        const q = r.array(T * d.nh * dk),
          oLat = r.array(T * d.nh * d.dl),
          w = r.array(d.nh * dkv * d.dl);
        const wv = rounded(w, bf16);
        const act = bf16AbsorbPath(native.cpuFeatures().isa, T, bf16, startPrecision); // (the test's ISA: the CPU's own)
        const { wantQ, wantO } = act
          ? absorbRef(d, T, rounded(q, true), dk, rounded(oLat, true), wv, dkv)
          : absorbRef(d, T, q, dk, oLat, wv, dkv);
        const wt = tensor(w, [d.nh * dkv, d.dl], { dtype: bf16 ? 'bf16' : 'f32' }),
          qt = tensor(q, [T, d.nh, dk]),
          ot = tensor(oLat, [T, d.nh, d.dl]);
        const got: Array<[Float32Array, Float32Array]> = [];
        try {
          for (const n of [1, 3]) {
            native.setThreads(n);
            const ql = full([T, d.nh, d.dl], NaN),
              o = full([T, d.nh, d.dv], NaN);
            native.mlaAbsorbQ(null, ql, qt, wt, d.dn);
            native.mlaOutput(null, o, ot, wt);
            got.push([toArray(ql) as Float32Array, toArray(o) as Float32Array]);
            ql.dispose();
            o.dispose();
          }
        } finally {
          native.setThreads(startThreads);
          for (const x of [wt, qt, ot]) x.dispose();
        }
        const what = `T=${T} ${bf16 ? 'bf16' : 'f32'}`;
        expectClose(got[0]![0], wantQ, 1e-5, 1e-5, `qLat ${what}`);
        expectClose(got[0]![1], wantO, 1e-5, 1e-5, `o ${what}`);
        expect(new Uint32Array(got[1]![0].buffer), `qLat ${what}: 3 threads`).toEqual(new Uint32Array(got[0]![0].buffer));
        expect(new Uint32Array(got[1]![1].buffer), `o ${what}: 3 threads`).toEqual(new Uint32Array(got[0]![1].buffer));
      }
  });
});

describe('cache write and gather', () => {
  it('round-trips rows through shuffled blocks (f32 exact, bf16 rounded)', () => {
    const d: Dims = { nh: 1, dn: 0, dr: 6, dv: 0, dl: 13 };
    for (const dtype of ['f32', 'bf16'] as const) {
      const sc = scenario(21, d, [37, 5], 8);
      const cache = buildCache(sc, dtype);
      for (const [start, length] of [
        [0, 37],
        [3, 20],
        [36, 1],
        [10, 0],
      ] as const) {
        const ckv = full([length, d.dl], NaN),
          kpe = full([length, d.dr], NaN);
        native.mlaCacheGather(null, ckv, kpe, cache, i32(sc.tables[0]!), start, length);
        const wantC = rounded(sc.ckv[0]!.slice(start * d.dl, (start + length) * d.dl), dtype === 'bf16');
        const wantK = rounded(sc.kpe[0]!.slice(start * d.dr, (start + length) * d.dr), dtype === 'bf16');
        expect(Array.from(toArray(ckv))).toEqual(Array.from(wantC));
        expect(Array.from(toArray(kpe))).toEqual(Array.from(wantK));
      }
      // Rows of other sequences and never-written rows are where they should be: the raw cache view.
      const raw = toArray(cache);
      const b1 = sc.tables[1]![0]!;
      for (let s = 0; s < 5; s++)
        for (let c = 0; c < d.dl; c++)
          expect(raw[(b1 * 8 + s) * 19 + c]).toBe(rounded([sc.ckv[1]![s * d.dl + c]!], dtype === 'bf16')[0]);
      const used = new Set(sc.tables.flat());
      const spare = Array.from({ length: sc.numBlocks }, (_, i) => i).find(i => !used.has(i))!;
      expect(Number.isNaN(raw[spare * 8 * 19])).toBe(true);
    }
  });

  it('a bf16 cache write rounds every value as f32ToBf16 (ties to even, NaN, infinities, subnormals), on every ISA', () => {
    // dl 45 / dr 7: whole and partial 16-value vectors of the AVX-512 write, rows not 16-aligned
    const dl = 45,
      dr = 7,
      t = 6;
    const r = rng(33);
    const bits = new Uint32Array(t * (dl + dr));
    for (let i = 0; i < bits.length; i++) {
      const u = r.uint32();
      // every fourth value a tie (low half 0x8000, odd and even), then specials
      bits[i] = i % 4 === 1 ? (u & 0xffff0000) | 0x8000 : u;
    }
    const special = [
      0x7fc00000, 0xffc00001, 0x7f800001, 0x7f800000, 0xff800000, 0x7f7fffff, 0x00000001, 0x80008000, 0x3f808000, 0x3f818000,
    ];
    special.forEach((v, i) => {
      bits[i * 5] = v >>> 0;
    });
    const vals = new Float32Array(bits.buffer);
    const ckv = new Float32Array(t * dl),
      kpe = new Float32Array(t * dr);
    for (let i = 0; i < t; i++) {
      ckv.set(vals.subarray(i * (dl + dr), i * (dl + dr) + dl), i * dl);
      kpe.set(vals.subarray(i * (dl + dr) + dl, (i + 1) * (dl + dr)), i * dr);
    }
    const slots = [5, 0, 9, 2, 11, 7];
    for (const isa of isas) {
      native.setIsa(isa);
      const cache = full([3, 4, dl + dr], 0, { dtype: 'bf16' });
      native.mlaCacheWrite(null, cache, tensor(ckv, [t, dl]), tensor(kpe, [t, dr]), i32(slots));
      const raw = toArray(cache);
      for (let i = 0; i < t; i++)
        for (let c = 0; c < dl + dr; c++) {
          const v = c < dl ? ckv[i * dl + c]! : kpe[i * dr + c - dl]!;
          expect(raw[slots[i]! * (dl + dr) + c], `${isa} row ${i} col ${c}`).toBe(roundBf16(v));
        }
    }
    native.setIsa(startIsa);
  });

  it('feeds mlaPrefill with a cached prefix: gather + new tokens equal the one-shot prefill', () => {
    const d: Dims = { nh: 3, dn: 16, dr: 8, dv: 12, dl: 20 };
    const r = rng(8);
    const prefix = 23,
      fresh = 6,
      S = prefix + fresh;
    const sc = scenario(8, d, [S], 16);
    const cache = buildCache(sc, 'f32');
    const ckvAll = full([S, d.dl], NaN),
      kpeAll = full([S, d.dr], NaN);
    native.mlaCacheGather(null, ckvAll, kpeAll, cache, i32(sc.tables[0]!), 0, S);
    expect(Array.from(toArray(ckvAll))).toEqual(Array.from(sc.ckv[0]!));
    const kvb = expandKvb(d, sc.ckv[0]!, S, sc.w);
    const q = r.array(fresh * d.nh * 24);
    const want = prefillRef(d, q, kvb, sc.kpe[0]!, [0, fresh], [0, S], sc.scale, fresh);
    const o = full([fresh, d.nh, d.dv], NaN);
    native.mlaPrefill(
      null,
      o,
      tensor(q, [fresh, d.nh, 24]),
      tensor(kvb, [S, d.nh, 28]),
      kpeAll,
      i32([0, fresh]),
      i32([0, S]),
      sc.scale,
    );
    expectClose(toArray(o), want, 1e-5, 1e-5, 'prefill with prefix');
  });
});

describe('bad arguments', () => {
  const d: Dims = { nh: 2, dn: 4, dr: 2, dv: 3, dl: 5 };
  const cache = full([3, 4, 7], 0);
  const ckv = full([2, 5], 1),
    kpe = full([2, 2], 1);
  const q = full([2, 2, 6], 0),
    qLat = full([2, 2, 5], 0),
    oLat = full([2, 2, 5], 0),
    w = full([14, 5], 0);
  const bt = tensor([0, 1, 2, 0], [2, 2], { dtype: 'int32' });

  it('cache write: shapes, dtypes, and out-of-range slots', () => {
    expectCode(() => native.mlaCacheWrite(null, cache, ckv, full([2, 3], 0), i32([0, 1])), 'E_SHAPE', /kpe/);
    expectCode(() => native.mlaCacheWrite(null, cache, ckv, kpe, i32([0])), 'E_SHAPE', /slots/);
    expectCode(() => native.mlaCacheWrite(null, full([3, 4, 7], 0, { dtype: 'f16' }), ckv, kpe, i32([0, 1])), 'E_DTYPE', /cache/);
    expectCode(() => native.mlaCacheWrite(null, full([12, 7], 0), ckv, kpe, i32([0, 1])), 'E_SHAPE', /cache/);
    expectCode(() => native.mlaCacheWrite(null, full([3, 4, 4], 0), ckv, full([2, 0], 0), i32([0, 1])), 'E_SHAPE');
    native.mlaCacheWrite(null, cache, ckv, kpe, i32([3, 12]));
    expectCode(() => native.synchronize(), 'E_ARGUMENT', /slots\[1\] = 12 is outside the cache/);
    native.mlaCacheWrite(null, cache, ckv, kpe, i32([-1, 0]));
    expectCode(() => native.synchronize(), 'E_ARGUMENT', /slots\[0\] = -1/);
  });

  it('gather: rows beyond the block table and bad block ids', () => {
    const c = full([5, 5], 0),
      k = full([5, 2], 0);
    expectCode(() => native.mlaCacheGather(null, c, k, cache, i32([0, 1]), 4, 5), 'E_ARGUMENT', /outside the block table/);
    expectCode(() => native.mlaCacheGather(null, c, k, cache, i32([0, 1]), 0, 4), 'E_SHAPE', /ckv/);
    native.mlaCacheGather(null, c, k, cache, i32([0, 7]), 0, 5);
    expectCode(() => native.synchronize(), 'E_ARGUMENT', /blockTable\[0\]\[1\] = 7/);
  });

  it('absorb / output: shapes and nopeDim', () => {
    expectCode(() => native.mlaAbsorbQ(null, qLat, q, full([13, 5], 0), d.dn), 'E_SHAPE', /wkvb/);
    expectCode(() => native.mlaAbsorbQ(null, qLat, q, full([14, 6], 0), d.dn), 'E_SHAPE', /wkvb/);
    expectCode(() => native.mlaAbsorbQ(null, full([2, 2, 6], 0), q, w, d.dn), 'E_SHAPE', /wkvb/);
    expectCode(() => native.mlaAbsorbQ(null, full([1, 2, 5], 0), q, w, d.dn), 'E_SHAPE', /qLat/);
    expectCode(() => native.mlaAbsorbQ(null, qLat, q, w, 7), 'E_SHAPE', /nopeDim/);
    expectCode(() => native.mlaAbsorbQ(null, qLat, q, full([14, 5], 0, { dtype: 'fp8_e4m3' }), d.dn), 'E_DTYPE', /wkvb/);
    expectCode(() => native.mlaOutput(null, full([2, 2, 8], 0), oLat, w), 'E_SHAPE', /v_head_dim/);
    expectCode(() => native.mlaOutput(null, full([2, 3, 3], 0), oLat, w), 'E_SHAPE', /'o'/);
  });

  it('decode: shapes, dtypes, seqLen beyond the block table, bad block ids', () => {
    const o = full([2, 2, 5], NaN);
    expectCode(() => native.mlaDecodeAbsorbed(null, o, qLat, full([2, 2, 1], 0), cache, bt, i32([1, 1]), 0.3), 'E_SHAPE');
    expectCode(() => native.mlaDecodeAbsorbed(null, full([2, 2, 4], 0), qLat, q, cache, bt, i32([1, 1]), 0.3), 'E_SHAPE', /oLat/);
    expectCode(
      () => native.mlaDecodeAbsorbed(null, o, qLat, q, cache, tensor([0, 1, 2], [3, 1], { dtype: 'int32' }), i32([1, 1]), 0.3),
      'E_SHAPE',
      /blockTable/,
    );
    expectCode(() => native.mlaDecodeAbsorbed(null, o, qLat, q, cache, bt, i32([1]), 0.3), 'E_SHAPE', /seqLens/);
    expectCode(() => native.mlaDecodeAbsorbed(null, o, qLat, q, cache, bt, tensor([1, 1], [2]), 0.3), 'E_DTYPE', /seqLens/);
    expectCode(
      () => native.mlaDecodeAbsorbed(null, o, qLat, q, full([3, 4, 7], 0, { dtype: 'int32' }), bt, i32([1, 1]), 0.3),
      'E_DTYPE',
      /cache/,
    );
    native.mlaDecodeAbsorbed(null, o, qLat, q, cache, bt, i32([1, 9]), 0.3);
    expectCode(() => native.synchronize(), 'E_ARGUMENT', /seqLens\[1\] = 9 is beyond the block table/);
    native.mlaDecodeAbsorbed(null, o, qLat, q, cache, tensor([0, 3, 2, 0], [2, 2], { dtype: 'int32' }), i32([5, 1]), 0.3);
    expectCode(() => native.synchronize(), 'E_ARGUMENT', /blockTable\[0\]\[1\] = 3/);
    // A valid call still works after the errors.
    native.mlaDecodeAbsorbed(null, o, qLat, q, cache, bt, i32([5, 8]), 0.3);
    expect(toArray(o).every(v => v === 0)).toBe(true);
  });
});

// ---- The fp8 latent cache (native/cpu/mla.h: FlashMLA's layout, 656 bytes per token at 512 + 64) ----------

/** The scenario with every sequence's latent / rope replaced by what the fp8 layout stores (host reference). */
function fp8Rounded(sc: Scenario): Scenario {
  const { d } = sc,
    rb = fp8RowBytes(d.dl, d.dr);
  const row = new Uint8Array(rb);
  const ckv = sc.ckv.map((c, b) => {
    const out = new Float32Array(c.length);
    for (let j = 0; j < sc.lens[b]!; j++) {
      encodeFp8Row(c, j * d.dl, sc.kpe[b]!, j * d.dr, d.dl, d.dr, row, 0);
      out.set(decodeFp8Row(row, 0, d.dl, d.dr).ckv, j * d.dl);
    }
    return out;
  });
  const kpe = sc.kpe.map(k => Float32Array.from(k, roundBf16));
  return { ...sc, ckv, kpe };
}

describe('fp8 latent cache', () => {
  const shapes: [string, Dims, number[], number][] = [
    ['one group, rope 2, block 5', { nh: 3, dn: 16, dr: 2, dv: 12, dl: 128 }, [1, 17, 40], 5],
    ['two groups, odd block size, many short sequences', { nh: 5, dn: 7, dr: 6, dv: 9, dl: 256 }, [3, 1, 40, 16, 17, 2, 65], 7],
    ['the real widths (656-byte rows)', { nh: 6, dn: 128, dr: 64, dv: 128, dl: 512 }, [33, 1, 70], 16],
    ['one long sequence (split-K)', { nh: 3, dn: 16, dr: 8, dv: 12, dl: 384 }, [1000], 16],
  ];

  it('the row size is 656 bytes at 512 + 64 (1152 in bf16)', () => {
    expect(fp8RowBytes(512, 64)).toBe(656);
    expect(fp8RowBytes(512, 64)).toBeLessThan(2 * (512 + 64));
  });

  for (const [name, d, lens, bs] of shapes)
    it(`mlaCacheWrite stores the reference bytes (bit-exact; other rows untouched), every ISA: ${name}`, () => {
      const sc = scenario(lens.length * 7 + d.dl, d, lens, bs, { kvAmp: 3 });
      // special groups: all zero (scale = 1e-10 / 448), one outlier, tiny values (e4m3 subnormals)
      sc.ckv[0]!.fill(0, 0, FP8_GROUP);
      if (sc.ckv[0]!.length >= 2 * FP8_GROUP) sc.ckv[0]![FP8_GROUP + 5] = 4000;
      if (sc.ckv[0]!.length >= 3 * FP8_GROUP) for (let c = 2 * FP8_GROUP; c < 3 * FP8_GROUP; c++) sc.ckv[0]![c]! *= 1e-30;
      const rb = fp8RowBytes(d.dl, d.dr);
      const want = new Uint8Array(sc.numBlocks * sc.blockSize * rb).fill(0xff);
      sc.lens.forEach((len, b) => {
        for (let s = 0; s < len; s++) {
          const slot = sc.tables[b]![Math.floor(s / bs)]! * bs + (s % bs);
          encodeFp8Row(sc.ckv[b]!, s * d.dl, sc.kpe[b]!, s * d.dr, d.dl, d.dr, want, slot * rb);
        }
      });
      for (const isa of isas) {
        native.setIsa(isa);
        const cache = buildCache(sc, 'fp8');
        const got = cache.toBytes();
        let bad = -1;
        for (let i = 0; i < want.length && bad < 0; i++) if (got[i] !== want[i]) bad = i;
        expect(bad, `${isa}: first differing byte ${bad} (row ${Math.floor(bad / rb)}, byte ${bad % rb})`).toBe(-1);
        cache.dispose();
      }
    });

  it('quantize + dequantize round trip: |x - x~| <= 2^-4 |x| + 2^-10 s per element (e4m3 RNE, s the group scale)', () => {
    // e4m3 keeps 4 significant bits: round to nearest gives a relative error <= 2^-4 for |x / s| >= 2^-6
    // (normal range) and an absolute one <= 2^-10 (half the subnormal step 2^-9) below; x / s and
    // e4m3 * s each add one f32 rounding (2^-24 relative). |x / s| <= 448 by the choice of s: no saturation.
    const d: Dims = { nh: 1, dn: 0, dr: 4, dv: 0, dl: 384 };
    const r = rng(77);
    const T = 64;
    const ckv = new Float32Array(T * d.dl);
    for (let i = 0; i < ckv.length; i++) ckv[i] = r.uniform(-1, 1) * 10 ** r.uniform(-6, 3); // magnitudes over 9 decades
    const kpe = r.array(T * d.dr);
    const sc: Scenario = { ...scenario(1, d, [T], 8), ckv: [ckv], kpe: [kpe] };
    for (const isa of isas) {
      native.setIsa(isa);
      const cache = buildCache(sc, 'fp8');
      const c = full([T, d.dl], NaN),
        k = full([T, d.dr], NaN);
      native.mlaCacheGather(null, c, k, cache, i32(sc.tables[0]!), 0, T);
      const got = toArray(c);
      let worst = 0;
      for (let t = 0; t < T; t++)
        for (let g = 0; g < d.dl / FP8_GROUP; g++) {
          const s = fp8GroupScale(ckv, t * d.dl + g * FP8_GROUP);
          for (let i = 0; i < FP8_GROUP; i++) {
            const j = t * d.dl + g * FP8_GROUP + i;
            const bound = (2 ** -4 * Math.abs(ckv[j]!) + 2 ** -10 * s) * (1 + 2 ** -20);
            worst = Math.max(worst, Math.abs(got[j]! - ckv[j]!) / bound);
          }
        }
      expect(worst, `${isa}: worst error / bound`).toBeLessThanOrEqual(1);
      expect(Array.from(toArray(k))).toEqual(Array.from(kpe, roundBf16)); // the rope key: bf16, not quantized
      cache.dispose();
    }
  });

  it('mlaCacheGather returns the reference dequantization (bit-exact) for any row range, every ISA', () => {
    const d: Dims = { nh: 1, dn: 0, dr: 6, dv: 0, dl: 256 };
    const sc = scenario(31, d, [37, 5], 8, { kvAmp: 5 });
    const ref = fp8Rounded(sc);
    for (const isa of isas) {
      native.setIsa(isa);
      const cache = buildCache(sc, 'fp8');
      for (const [start, length] of [
        [0, 37],
        [3, 20],
        [36, 1],
        [10, 0],
      ] as const) {
        const ckv = full([length, d.dl], NaN),
          kpe = full([length, d.dr], NaN);
        native.mlaCacheGather(null, ckv, kpe, cache, i32(sc.tables[0]!), start, length);
        expect(Array.from(toArray(ckv)), `${isa} ckv [${start}, +${length})`).toEqual(
          Array.from(ref.ckv[0]!.slice(start * d.dl, (start + length) * d.dl)),
        );
        expect(Array.from(toArray(kpe)), `${isa} kpe`).toEqual(
          Array.from(ref.kpe[0]!.slice(start * d.dr, (start + length) * d.dr)),
        );
      }
      cache.dispose();
    }
  });

  for (const [name, d, lens, bs] of shapes)
    for (const wType of ['f32', 'bf16'] as const)
      it(`absorbed decode over the fp8 cache equals float64 attention over the dequantized cache: ${name}, ${wType} kv_b_proj, every ISA and precision`, () => {
        const sc = scenario(lens.length * 13 + d.dl, d, lens, bs);
        // what the cache holds, exactly (the write is checked bit for bit above): the reference runs on it
        const want = decodeRef(fp8Rounded(sc), false, wType === 'bf16');
        const cache = buildCache(sc, 'fp8');
        const wt = tensor(sc.w, [d.nh * (d.dn + d.dv), d.dl], { dtype: wType });
        // fp32 arithmetic on the dequantized values at any precision (no bf16 path for fp8 on the CPU)
        const atol = 2e-5 * Math.sqrt(d.dl),
          rtol = 2e-4;
        const before = native.setMatmulPrecision('bf16');
        try {
          for (const precision of ['bf16', 'highest'] as const) {
            native.setMatmulPrecision(precision);
            for (const isa of isas) {
              native.setIsa(isa);
              const got = runDecode(sc, cache, wt);
              if (bf16AbsorbPath(isa, lens.length, wType === 'bf16', precision)) {
                const wantAct = decodeRef(fp8Rounded(sc), false, true, true);
                expectClose(got.oLat, wantAct.oLat, atol, rtol, `oLat (${isa}, ${precision}, q_nope in bf16)`);
                const wantO = outputOfRounded(d, lens.length, got.oLat, rounded(sc.w, true));
                expectClose(got.o, wantO, atol, rtol, `o (${isa}, ${precision}, oLat in bf16)`);
                continue;
              }
              expectClose(got.oLat, want.oLat, atol, rtol, `oLat (${isa}, ${precision})`);
              expectClose(got.o, want.o, atol, rtol, `o (${isa}, ${precision})`);
            }
          }
        } finally {
          native.setMatmulPrecision(before);
          native.setIsa(startIsa);
        }
        cache.dispose();
      });

  it('splits one long sequence over any thread count and merges exactly (fp8 cache)', () => {
    const d: Dims = { nh: 3, dn: 16, dr: 8, dv: 12, dl: 128 };
    const sc = scenario(98, d, [777, 5, 300], 16);
    const want = decodeRef(fp8Rounded(sc), false, false);
    const cache = buildCache(sc, 'fp8');
    const wt = tensor(sc.w, [d.nh * (d.dn + d.dv), d.dl]);
    for (const n of [1, 3, 8]) {
      native.setThreads(n);
      for (const isa of isas) {
        native.setIsa(isa);
        expectClose(runDecode(sc, cache, wt).o, want.o, 2e-4, 2e-4, `o (${n} threads, ${isa})`);
      }
    }
    native.setThreads(startThreads);
    cache.dispose();
  });

  it('feeds the expanded prefill: gather of a cached prefix + new tokens == the one-shot prefill over the stored values', () => {
    const d: Dims = { nh: 3, dn: 16, dr: 8, dv: 12, dl: 128 };
    const r = rng(81);
    const S = 29,
      fresh = 6;
    const sc = scenario(81, d, [S], 16);
    const ref = fp8Rounded(sc);
    const cache = buildCache(sc, 'fp8');
    const ckvAll = full([S, d.dl], NaN),
      kpeAll = full([S, d.dr], NaN);
    native.mlaCacheGather(null, ckvAll, kpeAll, cache, i32(sc.tables[0]!), 0, S);
    const kvb = expandKvb(d, toArray(ckvAll), S, sc.w);
    const q = r.array(fresh * d.nh * 24);
    const want = prefillRef(d, q, expandKvb(d, ref.ckv[0]!, S, sc.w), ref.kpe[0]!, [0, fresh], [0, S], sc.scale, fresh);
    const o = full([fresh, d.nh, d.dv], NaN);
    native.mlaPrefill(
      null,
      o,
      tensor(q, [fresh, d.nh, 24]),
      tensor(kvb, [S, d.nh, 28]),
      kpeAll,
      i32([0, fresh]),
      i32([0, S]),
      sc.scale,
    );
    expectClose(toArray(o), want, 1e-5, 1e-5, 'prefill over the gathered fp8 prefix');
    cache.dispose();
  });

  it('rejects sizes the layout cannot hold with typed errors', () => {
    // kv_lora_rank 100 (not a multiple of 128): rows of 100 + 4 + 2 x 4 bytes would otherwise "fit"
    const bad = poisonedFp8(2, 4, 112);
    const ckv = full([1, 100], 1),
      kpe = full([1, 4], 1);
    expectCode(() => native.mlaCacheWrite(null, bad, ckv, kpe, i32([0])), 'E_SHAPE', /multiple of 128/);
    expectCode(
      () => native.mlaCacheGather(null, full([1, 100], 0), full([1, 4], 0), bad, i32([0]), 0, 1),
      'E_SHAPE',
      /multiple of 128/,
    );
    // an odd rope width: 128 + 4 + 2 x 3 bytes
    const odd = poisonedFp8(2, 4, 138);
    expectCode(() => native.mlaCacheWrite(null, odd, full([1, 128], 1), full([1, 3], 1), i32([0])), 'E_SHAPE', /even number/);
    // a row that is not latent + scales + rope for this latent
    const short = poisonedFp8(2, 4, 130);
    expectCode(
      () => native.mlaCacheWrite(null, short, full([1, 128], 1), full([1, 0], 1), i32([0])),
      'E_SHAPE',
      /fp8 cache rows/,
    );
    const q = full([1, 2, 8], 0),
      qLat = full([1, 2, 100], 0),
      oLat = full([1, 2, 100], NaN);
    expectCode(
      () => native.mlaDecodeAbsorbed(null, oLat, qLat, q, bad, tensor([0], [1, 1], { dtype: 'int32' }), i32([1]), 0.3),
      'E_SHAPE',
      /multiple of 128/,
    );
  });
});

// ---- Several rows of one sequence (a verify step) ------------------------------------------------------

/**
 * The rows of a speculative verify step: sequence i (length seqs[i][0]) brings seqs[i][1] rows, row r
 * with the keys 0 .. len - rows + r (the table of its sequence, the latents a prefix of the
 * sequence's), each with its own query: consecutive rows of one sequence, as batchTables lays them out.
 */
function verifyScenario(seed: number, d: Dims, seqs: [number, number][], blockSize: number): Scenario {
  const base = scenario(
    seed,
    d,
    seqs.map(([len]) => len),
    blockSize,
  );
  const r = rng(seed + 1);
  const lens: number[] = [],
    tables: number[][] = [],
    ckv: Float32Array[] = [],
    kpe: Float32Array[] = [];
  seqs.forEach(([len, rows], i) => {
    for (let k = 0; k < rows; k++) {
      const n = len - rows + 1 + k;
      lens.push(n);
      tables.push(base.tables[i]!);
      ckv.push(base.ckv[i]!.slice(0, n * d.dl));
      kpe.push(base.kpe[i]!.slice(0, n * d.dr));
    }
  });
  return { ...base, lens, tables, ckv, kpe, q: r.array(lens.length * d.nh * (d.dn + d.dr), -1, 1) };
}

/** The scenario with its rows in the order `perm` (row i of the result = row perm[i]). */
function permuteRows(sc: Scenario, perm: number[]): Scenario {
  const dk = sc.d.nh * (sc.d.dn + sc.d.dr);
  const q = new Float32Array(perm.length * dk);
  perm.forEach((p, i) => {
    q.set(sc.q.subarray(p * dk, (p + 1) * dk), i * dk);
  });
  const pick = <T>(a: T[]) => perm.map(p => a[p]!);
  return { ...sc, lens: pick(sc.lens), tables: pick(sc.tables), ckv: pick(sc.ckv), kpe: pick(sc.kpe), q };
}

describe('absorbed decode: several rows of one sequence share the pass over its keys', () => {
  // [name, dims, [sequence length, rows], block size]. At one thread no row is split: each row's
  // result is then bitwise the one it gets alone.
  const cases: [string, Dims, [number, number][], number][] = [
    [
      'odd dims and block size, 1-3 rows, a 1-key sequence and a 1-key row',
      { nh: 5, dn: 7, dr: 6, dv: 9, dl: 37 },
      [
        [1, 1],
        [40, 2],
        [17, 3],
        [2, 2],
        [70, 2],
      ],
      7,
    ],
    [
      'the small preset: 8 heads, 2 rows a sequence',
      { nh: 8, dn: 16, dr: 16, dv: 16, dl: 128 },
      [
        [100, 2],
        [33, 2],
        [130, 3],
        [64, 2],
      ],
      16,
    ],
    [
      '3 heads (the rows share 8-lane vectors)',
      { nh: 3, dn: 9, dr: 6, dv: 7, dl: 33 },
      [
        [50, 3],
        [31, 2],
        [1, 1],
        [40, 11], // more rows than one group takes (8)
      ],
      24,
    ],
    [
      '20 heads (passes of 16 heads straddle rows), odd row, partial tiles',
      { nh: 20, dn: 9, dr: 6, dv: 7, dl: 33 },
      [
        [70, 2],
        [33, 3],
      ],
      5,
    ],
    [
      'fp8-able widths (dl 128)',
      { nh: 6, dn: 16, dr: 8, dv: 12, dl: 128 },
      [
        [45, 2],
        [3, 3],
        [90, 2],
      ],
      16,
    ],
  ];
  for (const [name, d, seqs, bs] of cases)
    for (const cacheType of ['f32', 'bf16', 'fp8'] as const) {
      if (cacheType === 'fp8' && d.dl % FP8_GROUP !== 0) continue;
      it(`equals the float64 reference and, bitwise, each row alone and the rows interleaved: ${name}, ${cacheType} cache, every ISA and 1-3 threads`, () => {
        const sc = verifyScenario(seqs.length * 31 + d.dl + d.nh, d, seqs, bs);
        const B = sc.lens.length;
        const ref = cacheType === 'fp8' ? fp8Rounded(sc) : sc;
        const want = decodeRef(ref, cacheType === 'bf16', false);
        const cache = buildCache(sc, cacheType);
        const wt = tensor(sc.w, [d.nh * (d.dn + d.dv), d.dl]);
        const atol = 2e-5 * Math.sqrt(d.dl),
          rtol = 2e-4;
        // an order with no two rows of one sequence next to each other: every row its own pass
        const perm = Array.from({ length: B }, (_, i) => i).sort((a, b) => (a % 2) - (b % 2) || a - b);
        const interleaved = permuteRows(sc, perm);
        const rowsAlone = (rows: number[]) => rows.map(b => permuteRows(sc, [b]));
        try {
          for (const isa of isas) {
            native.setIsa(isa);
            native.setThreads(1);
            const got = runDecode(sc, cache, wt);
            if (cacheType === 'bf16' && bf16DecodePath(isa)) checkBf16Decode(ref, got, false, `${isa}`);
            else {
              expectClose(got.oLat, want.oLat, atol, rtol, `oLat (${isa})`);
              expectClose(got.o, want.o, atol, rtol, `o (${isa})`);
            }
            const nhl = d.nh * d.dl;
            const alone = rowsAlone(Array.from({ length: B }, (_, i) => i)).map(s => runDecode(s, cache, wt).oLat);
            const other = runDecode(interleaved, cache, wt).oLat;
            for (let b = 0; b < B; b++) {
              const mine = Array.from(got.oLat.slice(b * nhl, (b + 1) * nhl));
              expect(mine, `row ${b} vs alone (${isa})`).toEqual(Array.from(alone[b]!));
              const at = perm.indexOf(b);
              expect(mine, `row ${b} vs interleaved (${isa})`).toEqual(Array.from(other.slice(at * nhl, (at + 1) * nhl)));
            }
            // (more threads may split the longer rows' keys: then a merge, and other roundings)
            for (const n of [2, 3]) {
              native.setThreads(n);
              const more = runDecode(sc, cache, wt);
              if (cacheType === 'bf16' && bf16DecodePath(isa)) checkBf16Decode(ref, more, false, `${isa}, ${n} threads`);
              else expectClose(more.o, want.o, atol, rtol, `o (${isa}, ${n} threads)`);
            }
          }
        } finally {
          native.setIsa(startIsa);
          native.setThreads(startThreads);
        }
        cache.dispose();
        wt.dispose();
      });
    }

  it('splits the heads of the rows of one sequence over the threads: bitwise the one-thread result', () => {
    // 13 heads x 2 or 3 rows: head groups of whole 4-head blocks that straddle the rows; no key split
    const d: Dims = { nh: 13, dn: 24, dr: 8, dv: 20, dl: 37 };
    try {
      for (const seqs of [[[23, 2]], [[100, 3]]] as [number, number][][]) {
        const sc = verifyScenario(4343 + seqs[0]![0], d, seqs, 16);
        const wt = tensor(sc.w, [d.nh * (d.dn + d.dv), d.dl]);
        for (const dt of ['f32', 'bf16'] as const) {
          const cache = buildCache(sc, dt);
          for (const isa of isas) {
            native.setIsa(isa);
            native.setThreads(1);
            const one = runDecode(sc, cache, wt);
            for (const n of [2, 3, 4]) {
              native.setThreads(n);
              const got = runDecode(sc, cache, wt);
              expect(Array.from(got.qLat), `qLat (${dt}, ${seqs}, ${n} threads, ${isa})`).toEqual(Array.from(one.qLat));
              expect(Array.from(got.oLat), `oLat (${dt}, ${seqs}, ${n} threads, ${isa})`).toEqual(Array.from(one.oLat));
            }
          }
          cache.dispose();
        }
        wt.dispose();
      }
    } finally {
      native.setIsa(startIsa);
      native.setThreads(startThreads);
    }
  });

  it('splits the keys of long rows over the threads and merges exactly (f32, bf16, fp8 caches)', () => {
    const d: Dims = { nh: 3, dn: 16, dr: 8, dv: 12, dl: 128 };
    const sc = verifyScenario(
      77,
      d,
      [
        [777, 2],
        [5, 1],
        [300, 3],
      ],
      16,
    );
    const wt = tensor(sc.w, [d.nh * (d.dn + d.dv), d.dl]);
    try {
      for (const cacheType of ['f32', 'bf16', 'fp8'] as const) {
        const ref = cacheType === 'fp8' ? fp8Rounded(sc) : sc;
        const want = decodeRef(ref, cacheType === 'bf16', false);
        const cache = buildCache(sc, cacheType);
        for (const n of [1, 3, 8]) {
          native.setThreads(n);
          for (const isa of isas) {
            native.setIsa(isa);
            const got = runDecode(sc, cache, wt);
            if (cacheType === 'bf16' && bf16DecodePath(isa)) checkBf16Decode(ref, got, false, `${n} threads`);
            else expectClose(got.o, want.o, 2e-4, 2e-4, `o (${cacheType}, ${n} threads, ${isa})`);
          }
        }
        cache.dispose();
      }
    } finally {
      native.setIsa(startIsa);
      native.setThreads(startThreads);
    }
  });
});
