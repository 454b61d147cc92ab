// Small ops vs independent float64 references: embedding, siluMul, add, scale, convert, fp8
// quantization, argmax, softmax, logSoftmax. Every ISA path, poisoned outputs, odd shapes.
import { describe, expect, it } from 'vitest';
import { Stream, Tensor, full, native, tensor, toArray } from '../lib/index.js';
import { bf16ToF32, f16ToF32, f32ToBf16, f32ToF16, f32ToFp8e4m3, fp8e4m3ToF32 } from '../lib/numeric.js';
import { eachIsa, expectClose, rng, expectCode } from './helpers.js';

const Ts = [1, 3, 17];
const dims = [1, 7, 127, 129, 1000];
const f32r = Math.fround;

describe('embedding', () => {
  it('gathers f32 and bf16 rows exactly', () => {
    const r = rng(101);
    eachIsa(isa => {
      for (const dtype of ['f32', 'bf16'] as const)
        for (const T of Ts)
          for (const H of [1, 7, 129]) {
            const V = 13;
            const tv = r.array(V * H, -3, 3);
            const table = tensor(tv, [V, H], { dtype });
            const tref = toArray(table);
            const idv = Array.from({ length: T }, () => r.int(V));
            const ids = tensor(idv, [T], { dtype: 'int32' });
            const y = full([T, H], NaN);
            native.embedding(null, y, table, ids);
            const want = new Float64Array(T * H);
            for (let t = 0; t < T; t++) for (let h = 0; h < H; h++) want[t * H + h] = tref[idv[t]! * H + h]!;
            expectClose(toArray(y), want, 0, 0, `embedding ${isa} ${dtype} T=${T} H=${H}`);
          }
    });
  });

  it('an out-of-range id is a typed error at synchronize, and the stream stays usable', () => {
    const table = tensor(new Float32Array(5 * 4).fill(1), [5, 4]);
    const y = full([3, 4], NaN);
    for (const bad of [5, -1, 1 << 30]) {
      const s = new Stream('cpu');
      native.embedding(s, y, table, tensor([0, bad, 2], [3], { dtype: 'int32' }));
      expectCode(() => s.synchronize(), 'E_ARGUMENT', new RegExp(`ids\\[1\\] = ${bad} is out of range .*V = 5`));
      native.embedding(s, y, table, tensor([4, 0, 2], [3], { dtype: 'int32' }));
      s.synchronize();
      expect(Array.from(toArray(y))).toEqual(new Array(12).fill(1));
      s.dispose();
    }
  });

  it('rejects bad arguments', () => {
    const table = full([5, 4], 0);
    const ids = tensor([0, 1], [2], { dtype: 'int32' });
    expectCode(() => native.embedding(null, full([2, 3], 0), table, ids), 'E_SHAPE', /'y' has shape \[2, 3\], expected \[2, 4\]/);
    expectCode(() => native.embedding(null, full([2, 4], 0), table, tensor([0, 1], [2])), 'E_DTYPE');
    expectCode(() => native.embedding(null, full([2, 4], 0, { dtype: 'bf16' }), table, ids), 'E_DTYPE');
    expectCode(() => native.embedding(null, full([2, 4], 0), full([20], 0), ids), 'E_SHAPE');
  });
});

describe('siluMul, add, scale', () => {
  const silu = (z: number) => z / (1 + Math.exp(-z));

  it('siluMul matches float64 on odd shapes', () => {
    const r = rng(202);
    eachIsa(isa => {
      for (const T of Ts)
        for (const I of dims) {
          const g = Float32Array.from({ length: T * I }, () => r.normal() * 4);
          if (T * I > 4) {
            g[0] = -120;
            g[1] = 95;
            g[2] = 0;
            g[3] = -0.5;
          }
          const u = r.array(T * I, -2, 2);
          const y = full([T, I], NaN);
          native.siluMul(null, y, tensor(g, [T, I]), tensor(u, [T, I]));
          const want = Float64Array.from(g, (z, i) => silu(z) * u[i]!);
          expectClose(toArray(y), want, 1e-30, 2e-6, `siluMul ${isa} [${T}, ${I}]`);
        }
    });
  });

  it('add (with alpha, aliasing a) and scale match float64', () => {
    const r = rng(303);
    eachIsa(isa => {
      for (const T of Ts)
        for (const H of dims) {
          const av = r.array(T * H, -5, 5),
            bv = r.array(T * H, -5, 5);
          for (const alpha of [1, -0.375, 3.1]) {
            const y = full([T, H], NaN);
            native.add(null, y, tensor(av, [T, H]), tensor(bv, [T, H]), alpha === 1 ? undefined : alpha);
            const want = Float64Array.from(av, (a, i) => a + f32r(alpha) * bv[i]!);
            // alpha = 1 is one exact f32 rounding; otherwise FMA vs two roundings
            expectClose(toArray(y), want, 1e-6, alpha === 1 ? 2 ** -24 : 2 ** -22, `add ${isa} alpha=${alpha} [${T}, ${H}]`);
          }
          const a = tensor(av, [T, H]);
          native.add(null, a, a, tensor(bv, [T, H])); // in place: the residual add
          expectClose(
            toArray(a),
            Float64Array.from(av, (x, i) => x + bv[i]!),
            0,
            2 ** -24,
            `add in place ${isa}`,
          );
          const y = full([T, H], NaN);
          native.scale(null, y, tensor(av, [T, H]), 0.7);
          expectClose(
            toArray(y),
            Float64Array.from(av, x => x * f32r(0.7)),
            0,
            2 ** -24,
            `scale ${isa}`,
          );
        }
    });
  });

  it('scaleGroups: per-block factors, rows cycling through the scale rows, in place', () => {
    const r = rng(404);
    for (const [rows, cols, R, group] of [
      [1, 1, 1, 1],
      [6, 130, 3, 128],
      [8, 512, 4, 128],
      [10, 7, 5, 3],
      [4, 300, 1, 64],
    ] as const) {
      const xv = r.array(rows * cols, -5, 5),
        sv = r.array(R * Math.ceil(cols / group), 0.1, 2);
      const want = Float64Array.from(xv, (v, i) =>
        f32r(v * sv[(Math.floor(i / cols) % R) * Math.ceil(cols / group) + Math.floor((i % cols) / group)]!),
      );
      const y = full([rows, cols], NaN);
      const sc = tensor(sv, [R, Math.ceil(cols / group)]);
      native.scaleGroups(null, y, tensor(xv, [rows, cols]), sc, group);
      expectClose(toArray(y), want, 0, 0, `scaleGroups [${rows}, ${cols}] R=${R} group=${group}`);
      const x = tensor(xv, [rows / R, R, cols]); // leading dims flatten into rows; in place
      native.scaleGroups(null, x, x, sc, group);
      expectClose(toArray(x), want, 0, 0, 'scaleGroups in place');
    }
    const x = full([6, 130], 1);
    expectCode(() => native.scaleGroups(null, x, x, full([3, 1], 1), 128), 'E_SHAPE', /expected 2 columns/);
    expectCode(() => native.scaleGroups(null, x, x, full([4, 2], 1), 128), 'E_SHAPE', /4 rows, which must divide the 6 rows/);
    expectCode(() => native.scaleGroups(null, x, x, full([3, 2], 1), 0), 'E_ARGUMENT', /group must be >= 1/);
  });

  it('rejects bad shapes and dtypes', () => {
    const a = full([3, 4], 0),
      b = full([3, 5], 0),
      h = full([3, 4], 0, { dtype: 'bf16' });
    expectCode(() => native.siluMul(null, full([3, 4], 0), a, b), 'E_SHAPE', /siluMul: 'up' has shape \[3, 5\]/);
    expectCode(() => native.siluMul(null, b, a, a), 'E_SHAPE', /'y'/);
    expectCode(() => native.siluMul(null, a, h, a), 'E_DTYPE', /gate/);
    expectCode(() => native.add(null, a, a, b), 'E_SHAPE', /add: 'b'/);
    expectCode(() => native.add(null, h, a, a), 'E_DTYPE');
    expectCode(() => native.add(null, a, a, a, 'x' as unknown as number), 'E_ARGUMENT', /alpha/);
    expectCode(() => native.scale(null, b, a, 2), 'E_SHAPE');
    expectCode(() => native.scale(null, a, a, undefined as unknown as number), 'E_ARGUMENT', /alpha/);
  });
});

// ---- conversions ----------------------------------------------------------------------------

const u32 = new Uint32Array(1),
  f32v = new Float32Array(u32.buffer);
const bitsToF32 = (b: number) => {
  u32[0] = b >>> 0;
  return f32v[0]!;
};

/** f32 test values: specials, midpoints (ties) of every narrow format, subnormals, random bits. */
function conversionValues(r: ReturnType<typeof rng>): Float32Array {
  const v: number[] = [
    0,
    -0,
    1,
    -1,
    Infinity,
    -Infinity,
    NaN,
    448,
    -448,
    449,
    464,
    465,
    480,
    1e6,
    -1e30,
    65504,
    65519.99,
    65520,
    65536,
    2 ** -6,
    2 ** -7,
    2 ** -9,
    2 ** -10,
    3 * 2 ** -11,
    2 ** -24,
    2 ** -25,
    3 * 2 ** -26,
    2 ** -126,
    2 ** -149,
    bitsToF32(0x7f800001),
    bitsToF32(0xffc12345),
    bitsToF32(0x3f808000),
    bitsToF32(0x3f818000),
    bitsToF32(0x7f7fffff),
  ];
  for (let i = 0; i < 300; i++) {
    const s = r.int(2) ? -1 : 1;
    v.push(bitsToF32((r.int(0x10000) << 16) | 0x8000)); // bf16 ties
    const h = r.int(0x7bff);
    v.push((s * (f16ToF32(h) + f16ToF32(h + 1))) / 2); // f16 ties (exact in f32)
    const b = r.int(0x7e);
    v.push((s * (fp8e4m3ToF32(b) + fp8e4m3ToF32(b + 1))) / 2); // fp8 ties, incl. subnormal ones
    v.push(bitsToF32(r.int(0x10000) * 0x10000 + r.int(0x10000))); // random bits: NaNs, subnormals
    v.push(r.normal() * 2 ** (r.int(40) - 25));
  }
  return Float32Array.from(v);
}

const encoders: Record<string, (x: number) => number> = {
  bf16: f32ToBf16,
  f16: f32ToF16,
  fp8_e4m3: f32ToFp8e4m3,
};
const decoders: Record<string, (b: number) => number> = { bf16: bf16ToF32, f16: f16ToF32, fp8_e4m3: fp8e4m3ToF32 };
const fdt = ['f32', 'bf16', 'f16', 'fp8_e4m3'] as const;
type FDT = (typeof fdt)[number];
const elemSize: Record<FDT, number> = { f32: 4, bf16: 2, f16: 2, fp8_e4m3: 1 };

function rawOf(t: Tensor, dtype: FDT): number[] {
  const b = t.toBytes();
  if (dtype === 'f32') return Array.from(new Uint32Array(b.buffer, b.byteOffset, b.byteLength / 4));
  if (dtype === 'fp8_e4m3') return Array.from(b);
  return Array.from(new Uint16Array(b.buffer, b.byteOffset, b.byteLength / 2));
}

describe('convert', () => {
  it('is bit-exact with lib/numeric.ts for every pair of f32, bf16, f16, fp8_e4m3', () => {
    const r = rng(404);
    const vals = conversionValues(r);
    const n = vals.length;
    // Sources: the f32 values above, and every narrow source as random raw bits (all NaN encodings).
    const srcBytes: Record<FDT, Uint8Array> = {
      f32: new Uint8Array(vals.buffer.slice(0)),
      bf16: Uint8Array.from({ length: n * 2 }, () => r.int(256)),
      f16: Uint8Array.from({ length: n * 2 }, () => r.int(256)),
      fp8_e4m3: Uint8Array.from({ length: n }, () => r.int(256)),
    };
    eachIsa(isa => {
      for (const st of fdt)
        for (const dt of fdt) {
          const x = new Tensor(st, [n], 'cpu', srcBytes[st]);
          const y = new Tensor(dt, [n], 'cpu', new Uint8Array(n * elemSize[dt]).fill(0xa5)); // poisoned
          native.convert(null, y, x);
          const raw = rawOf(x, st);
          const got = rawOf(y, dt);
          for (let i = 0; i < n; i++) {
            const xv = st === 'f32' ? bitsToF32(raw[i]!) : decoders[st]!(raw[i]!);
            const what = `${isa} ${st}->${dt} [${i}] src bits 0x${raw[i]!.toString(16)}`;
            if (Number.isNaN(xv)) {
              const gv = dt === 'f32' ? bitsToF32(got[i]!) : decoders[dt]!(got[i]!);
              expect(Number.isNaN(gv), what).toBe(true);
              continue;
            }
            let want: number;
            if (dt === 'f32') {
              f32v[0] = xv;
              want = u32[0]!;
            } else want = encoders[dt]!(xv);
            if (got[i] !== want) expect.fail(`${what}: got 0x${got[i]!.toString(16)}, want 0x${want.toString(16)}`);
          }
        }
    });
  });

  it('rejects mismatched shapes and unsupported dtypes', () => {
    expectCode(() => native.convert(null, full([3], 0, { dtype: 'bf16' }), full([4], 0)), 'E_SHAPE');
    expectCode(() => native.convert(null, full([3], 0, { dtype: 'int32' }), full([3], 0)), 'E_DTYPE');
    expectCode(() => native.convert(null, full([3], 0), tensor([1, 2, 3], [3], { dtype: 'int8' })), 'E_DTYPE');
  });
});

// ---- fp8 quantization ------------------------------------------------------------------------

describe('fp8 quantization', () => {
  it('quantizeFp8Act: 1x128 groups, bit-exact scales and codes, round trip within the fp8 step', () => {
    const r = rng(505);
    eachIsa(isa => {
      for (const T of Ts)
        for (const K of dims) {
          const x = Float32Array.from({ length: T * K }, () => r.normal() * 2 ** (r.int(12) - 6));
          if (T > 1) x.fill(0, 0, K); // an all-zero token: amax guarded by tiny
          const G = Math.ceil(K / 128);
          const q = new Tensor('fp8_e4m3', [T, K], 'cpu', new Uint8Array(T * K).fill(0x7f));
          const sc = full([T, G], NaN);
          native.quantizeFp8Act(null, q, sc, tensor(x, [T, K]));
          const qb = q.toBytes(),
            sv = toArray(sc);
          for (let t = 0; t < T; t++)
            for (let g = 0; g < G; g++) {
              const k0 = g * 128,
                k1 = Math.min(K, k0 + 128);
              let amax = 0;
              for (let k = k0; k < k1; k++) amax = Math.max(amax, Math.abs(x[t * K + k]!));
              const s = f32r(Math.max(amax, f32r(1e-10)) / 448);
              expect(sv[t * G + g], `${isa} scale [${t}, ${g}]`).toBe(s);
              for (let k = k0; k < k1; k++) {
                const want = f32ToFp8e4m3(f32r(x[t * K + k]! / s));
                if (qb[t * K + k] !== want) expect.fail(`${isa} q[${t}, ${k}] = ${qb[t * K + k]} want ${want} (T=${T}, K=${K})`);
                const deq = fp8e4m3ToF32(qb[t * K + k]!) * s,
                  xv = x[t * K + k]!;
                expect(Math.abs(deq - xv) <= s * 2 ** -10 + Math.abs(xv) * 2 ** -4 + 1e-30).toBe(true);
              }
            }
        }
    });
  });

  it('quantizeFp8Blocks / dequantizeFp8Blocks: 128x128 blocks, f32 and bf16, exact and round trip', () => {
    const r = rng(606);
    eachIsa(isa => {
      for (const [N, K] of [
        [1, 1],
        [7, 129],
        [130, 257],
        [129, 7],
      ] as const)
        for (const wdt of ['f32', 'bf16'] as const) {
          // per-block magnitudes differ so the scales matter
          const wv = Float32Array.from({ length: N * K }, (_, i) => r.normal() * 2 ** (((i / K) >> 7) * 3 - ((i % K) >> 7) * 2));
          const w = tensor(wv, [N, K], { dtype: wdt });
          const wref = toArray(w);
          const BN = Math.ceil(N / 128),
            BK = Math.ceil(K / 128);
          const q = new Tensor('fp8_e4m3', [N, K], 'cpu', new Uint8Array(N * K).fill(0x7f));
          const sc = full([BN, BK], NaN);
          native.quantizeFp8Blocks(null, q, sc, w);
          const qb = q.toBytes(),
            sv = toArray(sc);
          const amax = new Float64Array(BN * BK);
          for (let i = 0; i < N; i++)
            for (let j = 0; j < K; j++) {
              const b = (i >> 7) * BK + (j >> 7);
              amax[b] = Math.max(amax[b]!, Math.abs(wref[i * K + j]!));
            }
          for (let b = 0; b < BN * BK; b++)
            expect(sv[b], `${isa} scaleInv[${b}]`).toBe(f32r(Math.max(amax[b]!, f32r(1e-10)) / 448));
          for (let i = 0; i < N; i++)
            for (let j = 0; j < K; j++) {
              const s = sv[(i >> 7) * BK + (j >> 7)]!;
              const want = f32ToFp8e4m3(f32r(wref[i * K + j]! / s));
              if (qb[i * K + j] !== want) expect.fail(`${isa} ${wdt} q[${i}, ${j}] = ${qb[i * K + j]}, want ${want}`);
            }
          for (const odt of ['f32', 'bf16'] as const) {
            const out = full([N, K], NaN, { dtype: odt });
            native.dequantizeFp8Blocks(null, out, q, sc);
            const got = toArray(out);
            const want = new Float64Array(N * K),
              tol = new Float64Array(N * K);
            for (let i = 0; i < N; i++)
              for (let j = 0; j < K; j++) {
                const s = sv[(i >> 7) * BK + (j >> 7)]!;
                const v = f32r(fp8e4m3ToF32(qb[i * K + j]!) * s);
                want[i * K + j] = odt === 'bf16' ? bf16ToF32(f32ToBf16(v)) : v;
                // round trip vs the original weight: half an fp8 step (+ bf16 rounding of the output)
                const e = Math.abs(got[i * K + j]! - wref[i * K + j]!);
                const bound = s * 2 ** -10 + Math.abs(wref[i * K + j]!) * (2 ** -4 + (odt === 'bf16' ? 2 ** -8 : 0)) * 1.0001;
                if (!(e <= bound)) expect.fail(`${isa} round trip [${i}, ${j}]: ${got[i * K + j]} vs ${wref[i * K + j]}`);
              }
            expectClose(got, want, 0, 0, `${isa} dequantize ${wdt}->${odt} [${N}, ${K}]`);
            void tol;
          }
        }
    });
  });

  it('rejects bad scale shapes and dtypes', () => {
    const w = full([130, 257], 0);
    const q = new Tensor('fp8_e4m3', [130, 257]);
    expectCode(() => native.quantizeFp8Blocks(null, q, full([2, 2], 0), w), 'E_SHAPE', /scaleInv.*\[2, 3\]/);
    expectCode(() => native.quantizeFp8Blocks(null, full([130, 257], 0), full([2, 3], 0), w), 'E_DTYPE', /'q'/);
    expectCode(() => native.dequantizeFp8Blocks(null, w, q, full([2, 3], 0, { dtype: 'bf16' })), 'E_DTYPE', /scaleInv/);
    expectCode(() => native.dequantizeFp8Blocks(null, full([130, 256], 0), q, full([2, 3], 0)), 'E_SHAPE');
    const x = full([3, 200], 0);
    expectCode(
      () => native.quantizeFp8Act(null, new Tensor('fp8_e4m3', [3, 200]), full([3, 1], 0), x),
      'E_SHAPE',
      /scale.*\[3, 2\]/,
    );
    expectCode(() => native.quantizeFp8Act(null, new Tensor('fp8_e4m3', [3, 199]), full([3, 2], 0), x), 'E_SHAPE', /'q'/);
    expectCode(
      () => native.quantizeFp8Act(null, new Tensor('fp8_e4m3', [3, 200]), full([3, 2], 0), full([3, 200], 0, { dtype: 'bf16' })),
      'E_DTYPE',
    );
  });
});

// ---- argmax / softmax ------------------------------------------------------------------------

describe('argmax, softmax, logSoftmax', () => {
  it('argmax: ties to the lowest index, NaN never wins, all -inf gives 0', () => {
    const r = rng(707);
    eachIsa(isa => {
      for (const T of Ts)
        for (const V of [...dims, 4099]) {
          const x = r.array(T * V, -10, 10);
          for (let t = 0; t < T; t++) {
            const row = x.subarray(t * V, (t + 1) * V);
            if (t % 3 === 1 && V > 2) {
              const a = r.int(V),
                b = r.int(V);
              row[a] = 50;
              row[b] = 50;
            } // tie
            if (t % 3 === 2 && V > 1) row[r.int(V)] = NaN;
            if (t === 16) row.fill(-Infinity);
          }
          const idx = tensor(new Array(T).fill(-7), [T], { dtype: 'int32' });
          native.argmax(null, idx, tensor(x, [T, V]));
          const got = toArray(idx);
          for (let t = 0; t < T; t++) {
            let best = -Infinity,
              bi = 0;
            for (let j = 0; j < V; j++)
              if (x[t * V + j]! > best) {
                best = x[t * V + j]!;
                bi = j;
              }
            expect(got[t], `${isa} argmax row ${t} V=${V}`).toBe(bi);
          }
        }
    });
  });

  it('softmax and logSoftmax match float64, rows of odd length, large inputs do not overflow', () => {
    const r = rng(808);
    eachIsa(isa => {
      for (const T of Ts)
        for (const V of [...dims, 5000]) {
          const x = Float32Array.from({ length: T * V }, () => r.normal() * 6);
          for (let t = 1; t < T; t += 2)
            for (let j = 0; j < V; j++) x[t * V + j] = f32r(x[t * V + j]! + 3e4 * (t % 4 === 1 ? 1 : -1));
          const ws = new Float64Array(T * V),
            wl = new Float64Array(T * V);
          for (let t = 0; t < T; t++) {
            let m = -Infinity,
              s = 0;
            for (let j = 0; j < V; j++) m = Math.max(m, x[t * V + j]!);
            for (let j = 0; j < V; j++) s += Math.exp(x[t * V + j]! - m);
            for (let j = 0; j < V; j++) {
              ws[t * V + j] = Math.exp(x[t * V + j]! - m) / s;
              wl[t * V + j] = x[t * V + j]! - m - Math.log(s);
            }
          }
          const xt = tensor(x, [T, V]);
          const y = full([T, V], NaN),
            l = full([T, V], NaN);
          native.softmax(null, y, xt);
          native.logSoftmax(null, l, xt);
          expectClose(toArray(y), ws, 1e-9, 2e-5, `softmax ${isa} [${T}, ${V}]`);
          expectClose(toArray(l), wl, 2e-5, 1e-6, `logSoftmax ${isa} [${T}, ${V}]`);
          native.softmax(null, xt, xt); // in place
          expectClose(toArray(xt), ws, 1e-9, 2e-5, `softmax in place ${isa}`);
        }
    });
  });

  it('rejects bad shapes and dtypes', () => {
    const x = full([3, 5], 0);
    expectCode(() => native.argmax(null, tensor([0, 0], [2], { dtype: 'int32' }), x), 'E_SHAPE', /expected \[3\]/);
    expectCode(() => native.argmax(null, full([3], 0), x), 'E_DTYPE');
    expectCode(() => native.argmax(null, tensor([0], [1], { dtype: 'int32' }), full([3, 0], 0)), 'E_SHAPE');
    expectCode(() => native.softmax(null, full([3, 4], 0), x), 'E_SHAPE');
    expectCode(() => native.logSoftmax(null, full([3, 5], 0, { dtype: 'bf16' }), x), 'E_DTYPE');
    // a 1-D row: idx [1] or []
    const idx = tensor([9], [1], { dtype: 'int32' });
    native.argmax(null, idx, tensor([1, 5, 5, 2], [4]));
    expect(Array.from(toArray(idx))).toEqual([1]);
  });
});
