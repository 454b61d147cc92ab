// The op-case table: every op that has a CUDA kernel, at the shapes, dtypes and matmul precisions
// its kernels take, with inputs drawn from the shared seeded RNG (lib/check/rng.ts, one seed per case, so
// every side of a comparison sees the same inputs) and a per-element error bound derived from the
// error model of lib/check/error-model.ts (llama.cpp's tests/test-backend-ops.cpp is the pattern). It drives
//   * ISA parity on the CPU (test/op-cases.test.ts: scalar against AVX2 and AVX-512),
//   * CUDA (or the emulated device of test/emu) against the CPU (test/cuda.test.ts),
//   * the GPU check of a GPU session (scripts/gpu-check.mjs) and `longcat doctor` (lib/doctor.ts) on
//     a user's machine: this file ships, compiled into dist/check/,
//   * the benchmarks' inputs (bench/*.mjs take the RNG and the weight makers from here).
// Imports only lib/ (and through it the addon): nothing from vitest or node_modules.
import { native } from '../native.js';
import { tensor, toArray, empty } from '../tensor.js';
import type { Tensor, DType } from '../tensor.js';
import type { Stream } from '../device.js';
import { rng, type Rng } from './rng.js';
import { argmaxRef, speculativeParams, type SampleP } from './sampling-reference.js';
import { decodeFp8Row, encodeFp8Row, fp8RowBytes } from './fp8-cache-ref.js';
import { int4Groups, int4WeightTensor, packInt4 } from '../int4.js';
import {
  arithmetic,
  dotBound,
  dotError,
  gamma,
  relativeBound,
  boundExcess,
  EXP_REL,
  FLOOR,
  U32,
  type Arithmetic,
  type Backend,
  type Bound,
  type GemmMode,
} from './error-model.js';

export type Precision = 'highest' | 'bf16' | 'fp8';
type Values = Float32Array | Float64Array | Int32Array;

/** What a case's make() builds on one device. */
export interface Made {
  /** The outputs compared between the two sides. */
  outs: Tensor[];
  /** Named inputs (where test/op-cases.test.ts plants bugs in them). */
  inputs?: Record<string, Tensor>;
  /** Queues the op on `stream` (null: the CPU). */
  run(stream: Stream | null): void;
  /** Per output, the absolute error bound of each element between a `ref` and a `dut` side (lib/check/error-model.ts). */
  bound?(sides: Sides, want: Values[]): Bound[];
  /** GPU-only cases (no CPU twin to compare with): a self-check after run(); the number of failures. */
  check?(stream: Stream): number;
}

/** The two sides of a comparison. */
export interface Sides {
  ref: Backend;
  dut: Backend;
}

export interface OpCase {
  /** Unique; starts with the op's name. */
  name: string;
  /** The native op under test. */
  op: string;
  /** The sizes that define the case. */
  shapes: Record<string, number | readonly number[]>;
  /** The dtype of each tensor argument that has a choice. */
  dtypes: Record<string, WeightKind>;
  /** The matmul precision both sides run under. */
  precision: Precision;
  /** Bytes the op moves (at most) and FLOPs it does: the GPU check's rates and the work limits of slow runs. */
  bytes: number;
  flops: number;
  /** The CUDA GEMM kernel the case targets (opt-in kernels only). */
  gemm?: 'wgmma';
  /** No CPU twin: make() returns check() instead of bound(). */
  gpuOnly?: boolean;
  /** Seed of the case's inputs (derived from the name). */
  seed: number;
  make(device: string, r: Rng): Made;
}

/** FNV-1a of the name: a seed per case, independent of the order of the table. */
function seedOf(name: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 0x01000193) >>> 0;
  return h;
}

// ---- input makers (shared with the benchmarks) ---------------------------------------------------

/** n values uniform in [-scale, scale). */
export const uniform = (r: Rng, n: number, scale = 1): Float32Array => r.array(n, -scale, scale);
/** n values uniform in [lo, hi). */
export const positive = (r: Rng, n: number, lo: number, hi: number): Float32Array => r.array(n, lo, hi);
const int32 = (vals: ArrayLike<number>, shape: readonly number[], device: string) =>
  tensor(vals, shape, { dtype: 'int32', device });
/** An int32 tensor of `shape` holding random indices below `max`. */
const randomIds = (r: Rng, max: number, shape: readonly number[], device: string) =>
  int32(
    Array.from({ length: shape.reduce((a, b) => a * b, 1) }, () => r.int(max)),
    shape,
    device,
  );
/** A [rows, cols] table of `dt`: random 30-bit integers for int32, uniform values otherwise. */
const randomTable = (r: Rng, rows: number, cols: number, dt: DType, device: string) =>
  dt === 'int32'
    ? randomIds(r, 1 << 30, [rows, cols], device)
    : tensor(uniform(r, rows * cols), [rows, cols], { dtype: dt, device });
const abs = (v: ArrayLike<number>) => Float32Array.from(v, Math.abs);
const blocks = (n: number) => Math.ceil(n / 128);
const ELEMENT_BYTES: Record<WeightKind, number> = {
  f32: 4,
  bf16: 2,
  f16: 2,
  fp8_e4m3: 1,
  int8: 1,
  int32: 4,
  int64: 8,
  int4: 0.5,
  'int4-g32z': 0.5,
};

/**
 * A weight [n, k] of `dtype` and its host values: f32 / bf16 uniform in [-amp, amp); fp8 values
 * uniform in [-amp, amp) rounded to e4m3 with 128x128 block scales in [scaleLo, scaleHi); int8 codes
 * uniform in [-127, 127] with row scales in [scaleLo, scaleHi); int4 (native/cpu/linear.h's format)
 * codes uniform in 0..15 with group scales in [scaleLo, scaleHi): 'int4' groups of 128, bf16 scales,
 * zero point 8; 'int4-g32z' groups of 32, f16 scales and zero points uniform in 0..15. `values` are
 * the exact dequantized weights.
 */
export type WeightKind = DType | 'int4' | 'int4-g32z';
export interface HostWeight {
  values: Float32Array;
  scale: Float32Array | null;
  dtype: WeightKind;
  shape: [number, number];
  /** int4: the codes [n, k], group size, scales (and zero points) [n, G, 1 or 2] as stored. */
  int4?: { codes: Uint8Array; g: number; scale: Float32Array; zeros: boolean; scaleDtype: 'bf16' | 'f16' };
}
export function randomWeight(r: Rng, dtype: WeightKind, n: number, k: number, amp: number, scaleLo = 0, scaleHi = 1): HostWeight {
  if (dtype === 'int4' || dtype === 'int4-g32z') {
    const zeros = dtype === 'int4-g32z',
      g = zeros ? 32 : 128,
      G = int4Groups(k, g),
      per = zeros ? 2 : 1,
      scaleDtype = zeros ? 'f16' : 'bf16';
    const codes = Uint8Array.from(r.array(n * k, 0, 1), v => Math.min(15, Math.floor(v * 16)));
    const stored = new Float32Array(n * G * per);
    const drawn = positive(r, n * G, scaleLo, scaleHi);
    for (let i = 0; i < n * G; i++) {
      stored[i * per] = drawn[i]!;
      if (zeros) stored[i * per + 1] = r.int(16);
    }
    const scale = toArray(tensor(stored, [stored.length], { dtype: scaleDtype })) as Float32Array; // rounded as stored
    const values = new Float32Array(n * k);
    for (let i = 0; i < n; i++)
      for (let c = 0; c < k; c++) {
        const at = (i * G + Math.floor(c / g)) * per,
          s = scale[at]!,
          z = zeros ? scale[at + 1]! : 8;
        values[i * k + c] = Math.fround(codes[i * k + c]! * s - z * s); // exact: fma(q, s, -z s)
      }
    return { values, scale: null, dtype, shape: [n, k], int4: { codes, g, scale, zeros, scaleDtype } };
  }
  const values = dtype === 'int8' ? Float32Array.from(r.array(n * k), v => Math.round(v * 127)) : uniform(r, n * k, amp);
  const scale =
    dtype === 'fp8_e4m3'
      ? positive(r, blocks(n) * blocks(k), scaleLo, scaleHi)
      : dtype === 'int8'
        ? positive(r, n, scaleLo, scaleHi)
        : null;
  return { values, scale, dtype, shape: [n, k] };
}
/** The weight's tensors on `device` (`magnitude`: of |w|, for the error bound; an int4 weight's as f32). */
export function weightTensors(w: HostWeight, device: string, magnitude = false): { w: Tensor; scale: Tensor | null } {
  const [n, k] = w.shape;
  if (w.int4) {
    if (magnitude) return { w: tensor(abs(w.values), w.shape, { device }), scale: null };
    const { codes, g, scale, zeros, scaleDtype } = w.int4;
    const G = int4Groups(k, g);
    return {
      w: int4WeightTensor(packInt4(codes, n, k, g), n, k, g, device),
      scale: tensor(scale, zeros ? [n, G, 2] : [n, G], { dtype: scaleDtype, device }),
    };
  }
  const dtype = w.dtype as DType;
  const scaleShape = dtype === 'fp8_e4m3' ? [blocks(n), blocks(k)] : [n];
  return {
    w: tensor(magnitude ? abs(w.values) : w.values, w.shape, { dtype, device }),
    scale: w.scale ? tensor(magnitude ? abs(w.scale) : w.scale, scaleShape, { device }) : null,
  };
}

/** Runs fn on the CPU at precision 'highest' (the magnitude passes of the bounds) and waits. */
function onCpuHighest<T>(fn: () => T): T {
  const prev = native.setMatmulPrecision('highest');
  try {
    const out = fn();
    native.synchronize('cpu');
    return out;
  } finally {
    native.setMatmulPrecision(prev);
  }
}

/** The GEMM mode a side's linear / MoE runs in at `precision` (conservative: the rounding it may do). */
function gemmMode(precision: Precision, fp8Weights: boolean, rows: number): GemmMode {
  if (precision === 'highest') return 'highest';
  return precision === 'fp8' && fp8Weights && rows >= 17 ? 'fp8' : 'bf16';
}
const pair = (s: Sides, mode: GemmMode): [Arithmetic, Arithmetic] => [arithmetic(s.ref, mode), arithmetic(s.dut, mode)];

/**
 * The bound of a GEMM-like output of `shape` (dot products of K terms) at `mode`: `runAbs` writes the
 * op over the inputs' magnitudes into its argument, on the CPU at 'highest' (lib/check/error-model.ts).
 */
function magnitudeBound(sides: Sides, mode: GemmMode, K: number, shape: number[], runAbs: (m: Tensor) => void): Bound {
  const mag = onCpuHighest(() => {
    const m = empty(shape);
    runAbs(m);
    return toArray(m);
  });
  return dotBound(...pair(sides, mode), K, mag);
}

// ---- the table -----------------------------------------------------------------------------------

const table: Omit<OpCase, 'seed'>[] = [];
/** Adds a case: its op is the first word of its name; no dtype choices, 'highest' and no FLOPs unless given. */
const add = (
  c: Omit<OpCase, 'seed' | 'op' | 'precision' | 'dtypes' | 'flops'> & Partial<Pick<OpCase, 'precision' | 'dtypes' | 'flops'>>,
) => table.push({ op: c.name.split(' ')[0]!, precision: 'highest', dtypes: {}, flops: 0, ...c });

// linear: every weight dtype, decode (skinny) and prefill (tiled) sizes, each matmul precision
for (const [t, k, n] of [
  [1, 129, 67],
  [3, 1000, 130],
  [16, 1001, 130],
  [17, 127, 333],
  [129, 515, 257],
  [8, 6144, 4096],
  [512, 6144, 4096],
] as const) {
  for (const wdt of ['f32', 'bf16', 'fp8_e4m3', 'int8', 'int4', 'int4-g32z'] as const) {
    // the skinny path (t <= 16) multiplies in fp32 whatever the precision
    const precisions: Precision[] = t <= 16 ? ['highest'] : ['highest', 'bf16', ...(wdt === 'fp8_e4m3' ? ['fp8' as const] : [])];
    for (const precision of precisions) {
      add({
        name: `linear t=${t} k=${k} n=${n} w=${wdt} ${precision}`,
        shapes: { t, k, n },
        dtypes: { x: 'f32', w: wdt },
        precision,
        bytes: n * k * ELEMENT_BYTES[wdt],
        flops: 2 * t * n * k,
        make(device, r) {
          const xs = uniform(r, t * k);
          const hw = randomWeight(r, wdt, n, k, 0.1, 0, wdt === 'int8' || wdt.startsWith('int4') ? 0.01 : 1);
          const x = tensor(xs, [t, k], { device }),
            { w, scale } = weightTensors(hw, device);
          const y = empty([t, n], { device });
          return {
            outs: [y],
            inputs: { x, w, ...(scale ? { scale } : {}) },
            run: s => native.linear(s, y, x, w, scale),
            bound: sides => [
              magnitudeBound(sides, gemmMode(precision, wdt === 'fp8_e4m3', t), k, [t, n], m => {
                const aw = weightTensors(hw, 'cpu', true);
                native.linear(null, m, tensor(abs(xs), [t, k]), aw.w, aw.scale);
              }),
            ],
          };
        },
      });
    }
  }
}
// The sm_90a TMA + wgmma GEMM (opt-in: setCudaGemm('wgmma')): bf16 x and weights, K % 8 == 0 (the
// last shape has K % 8 != 0 and checks the fall back to the mma.sync tiles).
for (const [t, k, n] of [
  [17, 136, 77],
  [129, 520, 257],
  [300, 1000, 333],
  [512, 6144, 4096],
  [40, 127, 77],
] as const) {
  add({
    name: `linear wgmma t=${t} k=${k} n=${n} x=bf16 w=bf16`,
    shapes: { t, k, n },
    dtypes: { x: 'bf16', w: 'bf16' },
    precision: 'bf16',
    gemm: 'wgmma',
    bytes: 2 * n * k,
    flops: 2 * t * n * k,
    make(device, r) {
      const xs = uniform(r, t * k),
        ws = uniform(r, n * k, 0.1);
      const x = tensor(xs, [t, k], { dtype: 'bf16', device }),
        w = tensor(ws, [n, k], { dtype: 'bf16', device });
      const y = empty([t, n], { device });
      return {
        outs: [y],
        run: s => native.linear(s, y, x, w, null),
        bound: sides => [
          magnitudeBound(sides, 'bf16', k, [t, n], m =>
            native.linear(null, m, tensor(abs(xs), [t, k], { dtype: 'bf16' }), tensor(abs(ws), [n, k], { dtype: 'bf16' }), null),
          ),
        ],
      };
    },
  });
}
for (const [rows, dim] of [
  [1, 7],
  [3, 129],
  [17, 1000],
  [64, 6144],
] as const) {
  add({
    name: `rmsnorm rows=${rows} dim=${dim} (+add, bf16 w)`,
    shapes: { rows, dim },
    dtypes: { x: 'f32', w: 'bf16' },
    bytes: 3 * 4 * rows * dim,
    make(device, r) {
      const x = tensor(uniform(r, rows * dim), [rows, dim], { device });
      const a = tensor(uniform(r, rows * dim), [rows, dim], { device });
      const w = tensor(uniform(r, dim), [dim], { dtype: 'bf16', device });
      const y = empty([rows, dim], { device }),
        h = empty([rows, dim], { device });
      return {
        outs: [y],
        inputs: { w },
        run: s => native.rmsnorm(s, y, x, w, 1e-5, a, h),
        // h = x + a is one IEEE add on both sides; sum h^2 over dim (gamma(dim) relative, halved by the
        // square root), rsqrt (<= 2 ulp), + eps, two products: per side gamma(dim) / 2 + 5 u32
        bound: (_s, [want]) => [relativeBound(want!, gamma(dim, U32) + 10 * U32)],
      };
    },
  });
}

// ==== small ops, FP8 quantization, RoPE, router, latent cache (cuda/elementwise.cu, quant.cu, rope.cu,
// moe_router.cu, mla_cache.cu). Cases with no bound() are bit-exact (documented twins: one rounding each).
for (const [V, H, dt] of [
  [1000, 4096, 'f32'],
  [1000, 4096, 'bf16'],
  [300, 130, 'f32'],
  [300, 130, 'bf16'],
] as const) {
  add({
    name: `embedding V=${V} H=${H} ${dt}`,
    shapes: { V, H, ids: 7 },
    dtypes: { table: dt },
    bytes: 7 * H * 8,
    make(device, r) {
      const table = tensor(uniform(r, V * H), [V, H], { dtype: dt, device });
      const ids = randomIds(r, V, [7], device);
      const y = empty([7, H], { device });
      return { outs: [y], run: s => native.embedding(s, y, table, ids) };
    },
  });
}
// gatherRows: a byte copy of whole rows, bit-exact; row widths that take every copy unit (16, 8, 4,
// 2 and 1 bytes) and a narrow int32 table with more indices than rows.
for (const [R, C, dt, n] of [
  [1000, 4096, 'bf16', 9],
  [300, 130, 'f32', 33],
  [77, 5, 'bf16', 200],
  [40, 3, 'int32', 1000],
] as const) {
  add({
    name: `gatherRows R=${R} C=${C} ${dt} n=${n}`,
    shapes: { R, C, n },
    dtypes: { src: dt },
    bytes: 2 * n * C * 4,
    make(device, r) {
      const src = randomTable(r, R, C, dt, device);
      const idx = randomIds(r, R, [n], device);
      const out = empty([n, C], { dtype: dt, device });
      return { outs: [out], run: s => native.gatherRows(s, out, src, idx) };
    },
  });
}
// gatherColumns: the act-order GPTQ activations (a permutation of the columns, lib/int4.ts), bit-exact;
// every element size, a permutation at LongCat's hidden size, and a table that repeats columns.
for (const [rows, k, dt, n, perm] of [
  [17, 6144, 'f32', 6144, true],
  [3, 129, 'bf16', 129, true],
  [40, 7, 'int32', 300, false],
] as const) {
  add({
    name: `gatherColumns rows=${rows} k=${k} ${dt} n=${n}`,
    shapes: { rows, k, n },
    dtypes: { src: dt },
    bytes: 2 * rows * n * 4,
    make(device, r) {
      const src = randomTable(r, rows, k, dt, device);
      const order = Array.from({ length: n }, (_, i) => (perm ? i : r.int(k)));
      if (perm)
        for (let i = n - 1; i > 0; i--) {
          const j = r.int(i + 1);
          [order[i], order[j]] = [order[j]!, order[i]!];
        }
      const idx = int32(order, [n], device);
      const out = empty([rows, n], { dtype: dt, device });
      return { outs: [out], run: s => native.gatherColumns(s, out, src, idx) };
    },
  });
}
// ngramEmbed (LongCat-Flash-Lite): E projected N-gram rows added to the base embedding, averaged;
// a decode step (T = 1) and a prefill chunk at the release's E = 12, D = 256, and odd sizes.
for (const [T, H, E, D, dt] of [
  [1, 3072, 12, 256, 'bf16'],
  [9, 3072, 12, 256, 'bf16'],
  [5, 130, 6, 33, 'f32'],
] as const) {
  add({
    name: `ngramEmbed T=${T} H=${H} E=${E} D=${D} ${dt}`,
    shapes: { T, H, E, D },
    dtypes: { rows: dt, proj: dt },
    bytes: 8 * T * H + (E * T * D + E * H * D) * (dt === 'bf16' ? 2 : 4),
    flops: 2 * T * H * E * D,
    make(device, r) {
      const b = uniform(r, T * H),
        rv = uniform(r, E * T * D),
        pv = uniform(r, E * H * D, 1 / Math.sqrt(D));
      const base = tensor(b, [T, H], { device });
      const rows = tensor(rv, [E, T, D], { dtype: dt, device });
      const proj = tensor(pv, [E, H, D], { dtype: dt, device });
      const y = empty([T, H], { device });
      return {
        outs: [y],
        run: s => native.ngramEmbed(s, y, base, rows, proj),
        // a sum of E (D + 1) + 1 fp32 terms on each side (any order), then one product by 1 / (E + 1);
        // magnitudes from the unrounded inputs, with a margin for their bf16 rounding
        bound: sides => {
          const mag = new Float64Array(T * H);
          for (let t = 0; t < T; t++)
            for (let h = 0; h < H; h++) {
              let m = Math.abs(b[t * H + h]!);
              for (let e = 0; e < E; e++)
                for (let k = 0; k < D; k++) m += Math.abs(rv[(e * T + t) * D + k]! * pv[(e * H + h) * D + k]!);
              mag[t * H + h] = (m * (1 + 2 ** -7)) / (E + 1);
            }
          const dot = dotBound(...pair(sides, 'highest'), E * (D + 1) + 1, mag);
          return [Float64Array.from(dot, (v, i) => v + 2 * U32 * mag[i]!)];
        },
      };
    },
  });
}
for (const n of [1, 1003, 64 * 4096]) {
  add({
    name: `siluMul n=${n}`,
    shapes: { n },
    bytes: 12 * n,
    make(device, r) {
      const g = tensor(uniform(r, n, 8), [n], { device }),
        u = tensor(uniform(r, n), [n], { device }),
        y = empty([n], { device });
      // g / (1 + exp(-g)) * u: exp's relative error passes through the quotient at most as is; 3 roundings
      return {
        outs: [y],
        run: s => native.siluMul(s, y, g, u),
        bound: (_s, [want]) => [relativeBound(want!, 2 * (EXP_REL + 3 * U32))],
      };
    },
  });
  for (const alpha of [1, 0.37]) {
    add({
      name: `add n=${n} alpha=${alpha}`,
      shapes: { n },
      bytes: 12 * n,
      make(device, r) {
        const av = uniform(r, n),
          bv = uniform(r, n);
        const a = tensor(av, [n], { device }),
          b = tensor(bv, [n], { device }),
          y = empty([n], { device });
        // alpha = 1: one IEEE add, exact twins; otherwise a fused or a split multiply-add: u32 |alpha b| + u32 |y| per side
        const bound =
          alpha === 1
            ? undefined
            : (_s: Sides, [want]: Values[]) => [
                Float64Array.from(want!, (w, i) => 2 * U32 * (Math.abs(alpha * bv[i]!) + Math.abs(w)) + FLOOR),
              ];
        return { outs: [y], run: s => native.add(s, y, a, b, alpha), bound };
      },
    });
  }
  add({
    name: `scaleGroups n=${n}`,
    shapes: { n },
    bytes: 8 * n,
    make(device, r) {
      const cols = n % 512 === 0 ? 512 : n,
        rows = n / cols,
        R = rows % 4 === 0 ? 4 : 1,
        G = blocks(cols);
      const x = tensor(uniform(r, n), [rows, cols], { device }),
        sc = tensor(positive(r, R * G, 0, 1), [R, G], { device }),
        y = empty([rows, cols], { device });
      return { outs: [y], run: s => native.scaleGroups(s, y, x, sc, 128) };
    },
  });
  add({
    name: `scale n=${n}`,
    shapes: { n },
    bytes: 8 * n,
    make(device, r) {
      const x = tensor(uniform(r, n), [n], { device }),
        y = empty([n], { device });
      return { outs: [y], run: s => native.scale(s, y, x, 0.3) };
    },
  });
}
for (const [from, to] of [
  ['f32', 'bf16'],
  ['f32', 'f16'],
  ['f32', 'fp8_e4m3'],
  ['bf16', 'f32'],
  ['fp8_e4m3', 'bf16'],
  ['f16', 'fp8_e4m3'],
  ['bf16', 'bf16'],
] as const) {
  for (const n of [1000, 1 << 20]) {
    add({
      name: `convert ${from}->${to} n=${n}`,
      shapes: { n },
      dtypes: { x: from, y: to },
      bytes: n * 6,
      make(device, r) {
        const x = tensor(uniform(r, n, from === 'f32' ? 600 : 300), [n], { dtype: from, device }),
          y = empty([n], { dtype: to, device });
        return { outs: [y], run: s => native.convert(s, y, x) };
      },
    });
  }
}
for (const [T, K] of [
  [3, 1000],
  [64, 7168],
] as const) {
  add({
    name: `quantizeFp8Act T=${T} K=${K}`,
    shapes: { T, K },
    bytes: 5 * T * K,
    make(device, r) {
      const x = tensor(uniform(r, T * K, 50), [T, K], { device });
      const q = empty([T, K], { dtype: 'fp8_e4m3', device }),
        sc = empty([T, blocks(K)], { device });
      return { outs: [q, sc], run: s => native.quantizeFp8Act(s, q, sc, x) };
    },
  });
}
for (const [N, K] of [
  [5, 1],
  [257, 300],
  [1024, 7168],
] as const) {
  for (const dt of ['f32', 'bf16'] as const) {
    // a weight [N, K] of dtype dt against its codes and scales: about 5 bytes moved per element
    const sizes = { shapes: { N, K }, dtypes: { w: dt }, bytes: 5 * N * K };
    add({
      name: `quantizeInt8Rows ${N}x${K} ${dt}`,
      ...sizes,
      make(device, r) {
        const w = tensor(
          uniform(r, N * K, 3).map((v, i) => (i % 97 === 0 ? 0 : v)),
          [N, K],
          { dtype: dt, device },
        );
        const q = empty([N, K], { dtype: 'int8', device }),
          sc = empty([N], { device });
        return { outs: [q, sc], run: s => native.quantizeInt8Rows(s, q, sc, w) };
      },
    });
    add({
      name: `quantizeFp8Blocks ${N}x${K} ${dt}`,
      ...sizes,
      make(device, r) {
        const w = tensor(uniform(r, N * K, 3), [N, K], { dtype: dt, device });
        const q = empty([N, K], { dtype: 'fp8_e4m3', device }),
          sc = empty([blocks(N), blocks(K)], { device });
        return { outs: [q, sc], run: s => native.quantizeFp8Blocks(s, q, sc, w) };
      },
    });
    add({
      name: `dequantizeFp8Blocks ${N}x${K} ${dt}`,
      ...sizes,
      make(device, r) {
        const q = tensor(uniform(r, N * K, 400), [N, K], { dtype: 'fp8_e4m3', device });
        const sc = tensor(positive(r, blocks(N) * blocks(K), 0, 1), [blocks(N), blocks(K)], { device });
        const w = empty([N, K], { dtype: dt, device });
        return { outs: [w], run: s => native.dequantizeFp8Blocks(s, w, q, sc) };
      },
    });
  }
}
for (const [R, V, ties] of [
  [1, 131072, false],
  [7, 1000, true],
  [3, 131072, true],
] as const) {
  add({
    name: `argmax ${R}x${V}${ties ? ' (ties)' : ''}`,
    shapes: { R, V },
    bytes: 4 * R * V,
    make(device, r) {
      const x = tensor(
          uniform(r, R * V, 3).map(v => (ties ? Math.round(v) : v)),
          [R, V],
          { device },
        ),
        idx = empty([R], { dtype: 'int32', device });
      return { outs: [idx], run: s => native.argmax(s, idx, x) };
    },
  });
}
for (const [R, V] of [
  [1, 131072],
  [5, 1000],
  [3, 7],
] as const) {
  // sum of exp: the CPU adds f32 lanes over 1024-wide chunks and the chunks in f64, CUDA adds in f64
  const sumRel = gamma(Math.min(V, 1024), U32) + 2 * U32;
  const bounds: Record<'softmax' | 'logSoftmax', (want: Values) => Float64Array> = {
    // exp (both sides), the sum, one division
    softmax: want => relativeBound(want, 2 * EXP_REL + sumRel + 2 * U32),
    // y = x - max - log(sum): the sum's relative error is log's absolute error; log (2 ulp) and the
    // two subtractions round relative to |y| and log(sum) = -max(y) of the row
    logSoftmax: w => {
      const b = new Float64Array(w.length);
      for (let row = 0; row < R; row++) {
        let logSum = 0;
        for (let j = 0; j < V; j++) logSum = Math.max(logSum, -w[row * V + j]!);
        for (let j = 0; j < V; j++)
          b[row * V + j] = 2 * (EXP_REL + sumRel) + 8 * U32 * (Math.abs(w[row * V + j]!) + logSum) + FLOOR;
      }
      return b;
    },
  };
  for (const op of ['softmax', 'logSoftmax'] as const)
    add({
      name: `${op} ${R}x${V}`,
      shapes: { R, V },
      bytes: 12 * R * V,
      make(device, r) {
        const x = tensor(uniform(r, R * V, 10), [R, V], { device }),
          y = empty([R, V], { device });
        return { outs: [y], run: s => native[op](s, y, x), bound: (_s, [want]) => [bounds[op](want!)] };
      },
    });
}
// sample: the CPU and GPU draws agree only when the filtered set has one token (see cuda/elementwise.cu).
for (const [temp, topK, topP, minP] of [
  [0, 0, 1, 0],
  [0.8, 1, 0.9, 0.1],
] as const) {
  add({
    name: `sample 4x131072 T=${temp} topK=${topK}`,
    shapes: { R: 4, V: 131072 },
    bytes: 4 * 4 * 131072,
    make(device, r) {
      const x = tensor(uniform(r, 4 * 131072, 5), [4, 131072], { device }),
        ids = empty([4], { dtype: 'int32', device });
      return { outs: [ids], run: s => native.sample(s, ids, x, temp, topK, topP, minP, 7, 3) };
    },
  });
}
for (const [topK, topP, minP] of [
  [0, 1, 0],
  [50, 0.9, 0.05],
  [5000, 0.5, 0],
  [0, 0.95, 0.01],
] as const) {
  add({
    name: `sample 4x131072 T=0.9 topK=${topK} topP=${topP} minP=${minP} (GPU: seeded repeat + filter check)`,
    shapes: { R: 4, V: 131072 },
    gpuOnly: true,
    bytes: 4 * 4 * 131072,
    make(device, r) {
      const R = 4,
        V = 131072;
      const host = uniform(r, R * V, 5);
      const x = tensor(host, [R, V], { device });
      const a = empty([R], { dtype: 'int32', device }),
        b = empty([R], { dtype: 'int32', device });
      const draw = (s: Stream | null, out: Tensor) => native.sample(s, out, x, 0.9, topK, topP, minP, 11, 5);
      return {
        outs: [a],
        run: s => draw(s, a),
        check(stream) {
          draw(stream, b);
          stream.synchronize();
          const ga = toArray(a),
            gb = toArray(b);
          let bad = 0;
          for (let row = 0; row < R; row++) {
            const id = ga[row]!;
            if (id !== gb[row]) bad++;
            if (!(id >= 0 && id < V)) {
              bad++;
              continue;
            }
            const logits = host.subarray(row * V, (row + 1) * V),
              mine = logits[id]!;
            let greater = 0,
              mx = -Infinity; // tokens strictly more likely than the draw; the top logit
            for (let j = 0; j < V; j++) {
              if (logits[j]! > mine) greater++;
              mx = Math.max(mx, logits[j]!);
            }
            if (topK > 0 && greater >= topK) bad++;
            if (minP > 0 && Math.exp((mine - mx) / 0.9) < minP * (1 - 1e-5)) bad++;
          }
          return bad;
        },
      };
    },
  });
}
// penalize: bit-exact between CPU and GPU (every step rounds once in f32; the bias adds in order).
for (const [R, V, H, nb] of [
  [3, 1001, 37, 3],
  [8, 131072, 2048, 16],
] as const) {
  add({
    name: `penalize R=${R} V=${V} H=${H} nb=${nb}`,
    shapes: { R, V, H, nb },
    bytes: 8 * R * V + 4 * R * (H + 2 * nb),
    make(device, r) {
      const x = tensor(uniform(r, R * V, 8), [R, V], { device });
      // a few hot tokens per row, so that counts exceed 1; some -1 padding
      const history = Array.from({ length: R * H }, () => (r.int(8) === 0 ? -1 : r.int(2) ? r.int(16) : r.int(V)));
      const promptLengths = Array.from({ length: R }, () => r.int(H + 1));
      const params = Array.from({ length: R }, (_, i) => [[1, 1.3, 0.7][i % 3]!, r.uniform(-2, 2), r.uniform(-2, 2)]).flat();
      const biasIds = Array.from({ length: R * nb }, () => (r.int(6) === 0 ? -1 : r.int(2) ? r.int(16) : r.int(V)));
      const h = int32(history, [R, H], device),
        pl = int32(promptLengths, [R], device),
        p = tensor(params, [R, 3], { device }),
        bi = int32(biasIds, [R, nb], device),
        bv = tensor(uniform(r, R * nb, 100), [R, nb], { device });
      return { outs: [x], run: s => native.penalize(s, x, h, pl, p, bi, bv) };
    },
  });
}
// logprobs: the same top ids; values within the f64 normaliser's summation order and exp / log.
for (const [R, V, k] of [
  [3, 1001, 5],
  [8, 131072, 20],
] as const) {
  add({
    name: `logprobs R=${R} V=${V} k=${k}`,
    shapes: { R, V, k },
    bytes: 4 * R * V,
    make(device, r) {
      const x = tensor(uniform(r, R * V, 10), [R, V], { device }),
        chosen = randomIds(r, V, [R], device),
        out = empty([R, 1 + k], { device }),
        ids = empty([R, k], { dtype: 'int32', device });
      return { outs: [out, ids], run: s => native.logprobs(s, out, ids, x, chosen, k), bound: () => [2e-6, 0] };
    },
  });
}
// sampleSpeculative: greedy sequences and single-survivor ones (topK = 1 at any temperature) are
// bit-exact between CPU and GPU; sampled ones get the same accept decisions (the same uniforms
// against the same probabilities) but may draw other corrections (see cuda/elementwise.cu).
const GREEDY: SampleP = { temperature: 0, topK: 0, topP: 1, minP: 0 };
/** Drafts for rows of `host` [B * (k + 1), V]: per sequence all argmax (accepted), argmax then a
 *  miss (partial), or a miss first (none); a miss is another token, `miss(row, top)`. */
function speculativeDrafts(host: Float32Array, B: number, k: number, V: number, miss: (row: number, top: number) => number) {
  const drafts: number[] = [];
  for (let b = 0; b < B; b++)
    for (let j = 0; j < k; j++) {
      const row = b * (k + 1) + j,
        top = argmaxRef(host.subarray(row * V, (row + 1) * V));
      const hit = b % 3 === 0 || (b % 3 === 1 && j < k - 1);
      drafts.push(hit ? top : miss(row, top));
    }
  return drafts;
}
for (const [B, k, V] of [
  [1, 1, 7],
  [5, 3, 1001],
  [3, 2, 131072],
] as const) {
  const R = k + 1;
  add({
    name: `sampleSpeculative B=${B} k=${k} V=${V} greedy + topK=1`,
    shapes: { B, k, V },
    bytes: 4 * B * R * V,
    make(device, r) {
      const host = uniform(r, B * R * V, 5);
      for (let row = 0; row < B * R; row++) {
        // a tie at the top (the lower id wins) and a NaN (never wins)
        const a = r.int(V),
          b = r.int(V),
          n = r.int(V);
        host[row * V + a] = 6;
        host[row * V + b] = 6;
        if (n !== a && n !== b) host[row * V + n] = NaN;
      }
      const drafts = speculativeDrafts(host, B, k, V, (_row, top) => (top + 1 + r.int(V - 1)) % V);
      const params = Array.from({ length: B }, (_, b) =>
        speculativeParams(
          b % 2 ? { temperature: 0.8, topK: 1, topP: b % 4 === 3 ? 0.5 : 1, minP: 0 } : GREEDY,
          BigInt(b + 1) << 33n,
        ),
      );
      const positions = Array.from({ length: B * R }, (_, i) => 50 + i);
      const tokens = empty([B, R], { dtype: 'int32', device }),
        accepted = empty([B], { dtype: 'int32', device });
      const x = tensor(host, [B * R, V], { device }),
        d = int32(drafts, [B, k], device),
        pos = int32(positions, [B * R], device),
        par = int32(params.flat(), [B, 6], device);
      return { outs: [tokens, accepted], run: s => native.sampleSpeculative(s, tokens, accepted, x, d, pos, par) };
    },
  });
}
add({
  name: 'sampleSpeculative B=6 k=3 V=131072 sampled (GPU: seeded repeat + rule check + the CPU accept counts)',
  shapes: { B: 6, k: 3, V: 131072 },
  gpuOnly: true,
  bytes: 4 * 6 * 4 * 131072,
  make(device, r) {
    const B = 6,
      k = 3,
      R = k + 1,
      V = 131072;
    const ps: SampleP[] = [
      { temperature: 1, topK: 0, topP: 1, minP: 0 },
      { temperature: 0.9, topK: 50, topP: 1, minP: 0 },
      { temperature: 1.2, topK: 0, topP: 0.9, minP: 0.05 },
      { temperature: 0.7, topK: 5000, topP: 0.5, minP: 0 },
      GREEDY,
      { temperature: 1, topK: 50, topP: 0.95, minP: 0.01 },
    ];
    const host = uniform(r, B * R * V, 5);
    // a hit is the argmax boosted far above the rest (p ~ 1: accepted); a miss ranks below 5000
    // (outside every top-k here, and improbable elsewhere)
    const drafts = speculativeDrafts(host, B, k, V, (row, top) => {
      const l = host.subarray(row * V, (row + 1) * V);
      let d = r.int(V);
      while (l.reduce((n, v) => n + (v > l[d]! ? 1 : 0), 0) < 5000) d = r.int(V);
      return d === top ? (d + 1) % V : d;
    });
    for (let b = 0; b < B; b++)
      for (let j = 0; j < k; j++) {
        const row = b * R + j,
          d = drafts[b * k + j]!;
        if (ps[b]!.temperature > 0 && d === argmaxRef(host.subarray(row * V, (row + 1) * V))) host[row * V + d] = 50;
      }
    const params = ps.map((p, b) => speculativeParams(p, 0x9e3779b97f4a7c15n ^ BigInt(b)));
    const positions = Array.from({ length: B * R }, (_, i) => 1000 + (i % R) + 7 * Math.floor(i / R));
    const inputs = (dev: string) => ({
      x: tensor(host, [B * R, V], { device: dev }),
      d: int32(drafts, [B, k], dev),
      pos: int32(positions, [B * R], dev),
      par: int32(params.flat(), [B, 6], dev),
    });
    const mine = inputs(device);
    const outputs = (dev: string) => ({
      tokens: empty([B, R], { dtype: 'int32', device: dev }),
      accepted: empty([B], { dtype: 'int32', device: dev }),
    });
    const first = outputs(device),
      again = outputs(device);
    const run = (s: Stream | null, o: ReturnType<typeof outputs>, i: ReturnType<typeof inputs>) =>
      native.sampleSpeculative(s, o.tokens, o.accepted, i.x, i.d, i.pos, i.par);
    return {
      outs: [first.tokens, first.accepted],
      run: s => run(s, first, mine),
      check(stream) {
        run(stream, again, mine);
        stream.synchronize();
        const cpu = outputs('cpu');
        run(null, cpu, inputs('cpu'));
        const toks = toArray(first.tokens),
          acc = toArray(first.accepted);
        const cpuAcc = toArray(cpu.accepted);
        let bad = 0;
        if (toArray(again.tokens).some((t, i) => t !== toks[i]) || toArray(again.accepted).some((a, i) => a !== acc[i])) bad++;
        for (let b = 0; b < B; b++) {
          const a = acc[b]!,
            p = ps[b]!;
          if (a !== cpuAcc[b]) bad++;
          if (!(a >= 0 && a <= k)) {
            bad++;
            continue;
          }
          for (let j = 0; j < R; j++) if (toks[b * R + j] !== (j < a ? drafts[b * k + j] : toks[b * R + a])) bad++;
          const t = toks[b * R + a]!,
            row = host.subarray((b * R + a) * V, (b * R + a + 1) * V);
          if (!(t >= 0 && t < V)) {
            bad++;
            continue;
          }
          if (a < k && t === drafts[b * k + a]) bad++; // a correction is never the rejected draft
          if (p.temperature === 0) {
            if (t !== argmaxRef(row)) bad++;
            continue;
          }
          let greater = 0,
            mx = -Infinity;
          for (let j = 0; j < V; j++) {
            if (row[j]! > row[t]!) greater++;
            mx = Math.max(mx, row[j]!);
          }
          if (p.topK > 0 && greater >= p.topK) bad++;
          if (p.minP > 0 && Math.exp((row[t]! - mx) / p.temperature) < p.minP * (1 - 1e-5)) bad++;
        }
        return bad;
      },
    };
  },
});
add({
  name: 'sampleSpeculative B=6 k=2 V=1000 invalid values (GPU: clamped to greedy as documented, bad drafts rejected)',
  shapes: { B: 6, k: 2, V: 1000 },
  gpuOnly: true,
  bytes: 4 * 6 * 3 * 1000,
  make(device, r) {
    const B = 6,
      k = 2,
      R = k + 1,
      V = 1000;
    // every one of these samples as greedy on the GPU: temperature NaN, < 0, +inf; minP > 1 (-> 1:
    // only the top token has weight 1); topP < 0 (-> the top token only, topK < 0 off); topK < 0 at 0
    const ps: SampleP[] = [
      { ...GREEDY, temperature: NaN },
      { ...GREEDY, temperature: -1 },
      { ...GREEDY, temperature: Infinity },
      { temperature: 1, topK: 0, topP: 1, minP: 2 },
      { temperature: 1, topK: -5, topP: -1, minP: 0 },
      { ...GREEDY, topK: -5 },
    ];
    const host = uniform(r, B * R * V, 5);
    const tops = Array.from({ length: B * R }, (_, row) => argmaxRef(host.subarray(row * V, (row + 1) * V)));
    // out-of-range drafts (never accepted) among argmax drafts; negative positions
    const drafts = [tops[0]!, V + 3, -1, tops[4]!, tops[6]!, tops[7]!, tops[9]!, 2 ** 31 - 1, tops[12]!, tops[13]!, -7, 0];
    const positions = Array.from({ length: B * R }, (_, i) => (i % 4 === 1 ? -5 - i : 20 + i));
    const params = ps.map((p, b) => speculativeParams(p, BigInt(b)));
    const x = tensor(host, [B * R, V], { device }),
      d = int32(drafts, [B, k], device),
      pos = int32(positions, [B * R], device),
      par = int32(params.flat(), [B, 6], device);
    const tokens = empty([B, R], { dtype: 'int32', device }),
      accepted = empty([B], { dtype: 'int32', device });
    return {
      outs: [tokens, accepted],
      run: s => native.sampleSpeculative(s, tokens, accepted, x, d, pos, par),
      check() {
        const toks = toArray(tokens),
          acc = toArray(accepted);
        let bad = 0;
        for (let b = 0; b < B; b++) {
          let a = 0;
          while (a < k && drafts[b * k + a] === tops[b * R + a]) a++;
          if (acc[b] !== a) bad++;
          for (let j = 0; j < R; j++) if (toks[b * R + j] !== (j < a ? drafts[b * k + j] : tops[b * R + a])) bad++;
        }
        return bad;
      },
    };
  },
});
add({
  name: 'selectAccepted B=7 k=3',
  shapes: { B: 7, k: 3 },
  bytes: 4 * 7 * 6,
  make(device, r) {
    const B = 7,
      R = 4;
    const cand = randomIds(r, 131072, [B, R], device);
    const acc = int32([0, 1, 2, 3, -1, 4, 2 ** 31 - 1], [B], device); // the last three are clamped
    const out = empty([B], { dtype: 'int32', device });
    return { outs: [out], run: s => native.selectAccepted(s, out, cand, acc) };
  },
});
for (const [hd, off, rd, nh] of [
  [192, 128, 64, 16],
  [64, 0, 64, 1],
  [96, 32, 62, 3],
] as const) {
  for (const t of [1, 37]) {
    add({
      name: `rope t=${t} heads=${nh} hd=${hd} rope=[${off},${off + rd})`,
      shapes: { t, heads: nh, headDim: hd, offset: off, ropeDim: rd },
      bytes: 8 * t * nh * rd,
      make(device, r) {
        const xs = uniform(r, t * nh * hd);
        const x = tensor(xs, [t, nh, hd], { device });
        const pos = randomIds(r, 100000, [t], device);
        const inv = tensor(
          Array.from({ length: rd / 2 }, (_, i) => 10000 ** ((-2 * i) / rd)),
          [rd / 2],
          { device },
        );
        return {
          outs: [x],
          run: s => native.rope(s, x, pos, off, inv, 1.1),
          // Both sides round the same f32 angle, take sin / cos in f64 and round them to f32: equal unless
          // the f64 results straddle an f32 rounding point (one f32 ulp apart), so a rotated pair may
          // differ by u32 (|x0| + |x1|) times the 1.1 factor per side
          bound: () => [
            Float64Array.from(xs, (_, i) => {
              const c = i % hd;
              if (c < off || c >= off + rd) return 0;
              const p = i - ((c - off) % 2);
              return 2 * 1.1 * 2 * U32 * (Math.abs(xs[p]!) + Math.abs(xs[p + 1]!));
            }),
          ],
        };
      },
    });
  }
}
for (const t of [1, 7, 129]) {
  const E = 768,
    K = 12;
  add({
    name: `routerTopk t=${t} e=${E} k=${K}`,
    shapes: { t, experts: E, k: K },
    bytes: 4 * t * E,
    make(device, r) {
      const logits = tensor(uniform(r, t * E, 4), [t, E], { device }),
        bias = tensor(uniform(r, E, 0.01), [E], { device });
      const idx = empty([t, K], { dtype: 'int32', device }),
        w = empty([t, K], { device }),
        nffn = empty([t], { dtype: 'int32', device });
      return {
        outs: [idx, w, nffn],
        run: s => native.routerTopk(s, idx, w, nffn, logits, bias, 512, 6),
        // the choice is exact (random logits have no near-ties); the weights are a softmax (sum in f64
        // on both sides) times the routed scale: exp, division, product
        bound: (_s, [, want]) => [0, relativeBound(want!, 2 * (EXP_REL + 4 * U32)), 0],
      };
    },
  });
}
for (const dt of ['f32', 'bf16'] as const) {
  const nb = 9,
    bs = 64,
    dl = 512,
    dr = 64;
  add({
    name: `mlaCacheWrite T=37 ${dt} cache 9x64x576`,
    shapes: { T: 37, blocks: nb, blockSize: bs, row: dl + dr },
    dtypes: { cache: dt },
    bytes: 37 * (dl + dr) * 8,
    make(device, r) {
      const T = 37;
      const cache = tensor(new Float32Array(nb * bs * (dl + dr)), [nb, bs, dl + dr], { dtype: dt, device });
      const ckv = tensor(uniform(r, T * dl), [T, dl], { device }),
        kpe = tensor(uniform(r, T * dr), [T, dr], { device });
      const slots = int32(r.shuffle(Array.from({ length: nb * bs }, (_, i) => i)).slice(0, T), [T], device);
      return { outs: [cache], run: s => native.mlaCacheWrite(s, cache, ckv, kpe, slots) };
    },
  });
  add({
    name: `mlaCacheGather start=5 length=500 ${dt} cache 9x64x576`,
    shapes: { start: 5, length: 500, blocks: nb, blockSize: bs, row: dl + dr },
    dtypes: { cache: dt },
    bytes: 500 * (dl + dr) * 8,
    make(device, r) {
      const L = 500;
      const cache = tensor(uniform(r, nb * bs * (dl + dr)), [nb, bs, dl + dr], { dtype: dt, device });
      const bt = int32(
        Array.from({ length: nb }, (_, i) => (i * 4) % nb),
        [nb],
        device,
      );
      const ckv = empty([L, dl], { device }),
        kpe = empty([L, dr], { device });
      return { outs: [ckv, kpe], run: s => native.mlaCacheGather(s, ckv, kpe, cache, bt, 5, L) };
    },
  });
}

/**
 * An fp8 latent cache (native/cpu/mla.h's layout) of nb x bs rows from uniform latents / rope keys,
 * encoded on the host by the reference (lib/check/fp8-cache-ref.ts), and its rows as f32 values [nb * bs, dl + dr].
 */
export function fp8Cache(r: Rng, nb: number, bs: number, dl: number, dr: number, device: string) {
  const rows = nb * bs,
    rb = fp8RowBytes(dl, dr),
    row = dl + dr;
  const ckv = uniform(r, rows * dl),
    kpe = uniform(r, rows * dr);
  const bytes = new Uint8Array(rows * rb);
  const values = new Float32Array(rows * row);
  for (let i = 0; i < rows; i++) {
    encodeFp8Row(ckv, i * dl, kpe, i * dr, dl, dr, bytes, i * rb);
    const v = decodeFp8Row(bytes, i * rb, dl, dr);
    values.set(v.ckv, i * row);
    values.set(v.kpe, i * row + dl);
  }
  return { cache: new native.Tensor('fp8_e4m3', [nb, bs, rb], device, bytes), values };
}
// The fp8 latent cache (bit-exact twins: the quantizer of quant.cu / quant.cc, e4m3 * scale).
for (const [dl, dr] of [
  [512, 64],
  [256, 6],
] as const) {
  const nb = 9,
    bs = 64,
    rb = fp8RowBytes(dl, dr);
  add({
    name: `mlaCacheWrite T=37 fp8 cache 9x64x${rb}`,
    shapes: { T: 37, blocks: nb, blockSize: bs, dl, dr },
    dtypes: { cache: 'fp8_e4m3' },
    bytes: 37 * ((dl + dr) * 4 + rb),
    make(device, r) {
      const T = 37;
      const cache = new native.Tensor('fp8_e4m3', [nb, bs, rb], device, new Uint8Array(nb * bs * rb));
      // latents with a zero group, a huge and a tiny group per token (scales across the e4m3 range)
      const ckvHost = uniform(r, T * dl);
      for (let t = 0; t < T; t++) {
        ckvHost.fill(0, t * dl, t * dl + 128);
        for (let c = 0; c < 128 && dl > 128; c++) ckvHost[t * dl + 128 + c]! *= t % 2 ? 1e4 : 1e-6;
      }
      const ckv = tensor(ckvHost, [T, dl], { device }),
        kpe = tensor(uniform(r, T * dr), [T, dr], { device });
      const slots = int32(r.shuffle(Array.from({ length: nb * bs }, (_, i) => i)).slice(0, T), [T], device);
      return { outs: [cache], run: s => native.mlaCacheWrite(s, cache, ckv, kpe, slots) };
    },
  });
  add({
    name: `mlaCacheGather start=5 length=500 fp8 cache 9x64x${rb}`,
    shapes: { start: 5, length: 500, blocks: nb, blockSize: bs, dl, dr },
    dtypes: { cache: 'fp8_e4m3' },
    bytes: 500 * ((dl + dr) * 4 + rb),
    make(device, r) {
      const L = 500;
      const { cache } = fp8Cache(r, nb, bs, dl, dr, device);
      const bt = int32(
        Array.from({ length: nb }, (_, i) => (i * 4) % nb),
        [nb],
        device,
      );
      const ckv = empty([L, dl], { device }),
        kpe = empty([L, dr], { device });
      return { outs: [ckv, kpe], run: s => native.mlaCacheGather(s, ckv, kpe, cache, bt, 5, L) };
    },
  });
}

// ==== MLA attention (cuda/mla*.cu) and grouped-expert MoE (cuda/moe.cu)
for (const [T, nh, dn, dr, dv, dl] of [
  [1, 3, 5, 3, 4, 37],
  [3, 4, 16, 8, 16, 64],
  [17, 2, 7, 3, 5, 33],
  [1, 64, 128, 64, 128, 512],
  [8, 64, 128, 64, 128, 512],
  [64, 64, 128, 64, 128, 512],
] as const) {
  for (const wdt of ['f32', 'bf16'] as const) {
    // the two GEMMs against kv_b [nh * (dn + dv), dl] of dtype wdt, over `width` (dn / dv) of its rows
    // per head: mlaAbsorbQ q_nope [T, nh, dn(+dr)] -> q_lat [T, nh, dl] (K = dn), mlaOutput o_lat
    // [T, nh, dl] -> o [T, nh, dv] (K = dl)
    const gemms = [
      { op: 'mlaAbsorbQ', width: ['dn', dn], x: [T, nh, dn + dr], y: [T, nh, dl], K: dn },
      { op: 'mlaOutput', width: ['dv', dv], x: [T, nh, dl], y: [T, nh, dv], K: dl },
    ] as const;
    for (const { op, width, x: xShape, y: yShape, K } of gemms) {
      const kvB = (ws: Float32Array, device: string) => tensor(ws, [nh * (dn + dv), dl], { dtype: wdt, device });
      const gemm = (s: Stream | null, y: Tensor, x: Tensor, w: Tensor) =>
        op === 'mlaAbsorbQ' ? native.mlaAbsorbQ(s, y, x, w, dn) : native.mlaOutput(s, y, x, w);
      add({
        name: `${op} T=${T} nh=${nh} ${width[0]}=${width[1]} dl=${dl} w=${wdt}`,
        shapes: { T, nh, dn, dr, dv, dl },
        dtypes: { w: wdt },
        bytes: nh * width[1] * dl * ELEMENT_BYTES[wdt],
        flops: 2 * T * nh * width[1] * dl,
        make(device, r) {
          const xs = uniform(r, xShape[0] * xShape[1] * xShape[2]),
            ws = uniform(r, nh * (dn + dv) * dl, 0.1);
          const x = tensor(xs, [...xShape], { device }),
            w = kvB(ws, device),
            y = empty([...yShape], { device });
          return {
            outs: [y],
            run: s => gemm(s, y, x, w),
            bound: sides => [
              magnitudeBound(sides, 'highest', K, [...yShape], m =>
                gemm(null, m, tensor(abs(xs), [...xShape]), kvB(abs(ws), 'cpu')),
              ),
            ],
          };
        },
      });
    }
  }
}

/**
 * The bound of one attention output element o = sum_j p_j v_j / sum_j p_j, p_j = exp(s_j - m),
 * s_j = scale q . k_j (K terms) over L keys, given per query Smax >= scale sum |q| |k_j| for every
 * key and per output column Vmax >= |v_j| for every key. Per side: the scores err by at most
 * eps(K) Smax (absolute), so every p_j by that relatively, plus exp and a rescale of the online
 * softmax (EXP_REL each); a relative perturbation d of every p moves o by at most 2 d Vmax; the
 * weighted sum of values (L terms, p possibly rounded to the operand format) adds eps(L) Vmax and its
 * denominator gamma(L) Vmax; the split-KV combine and the final division a few u32.
 */
function attentionBound(sides: Sides, mode: GemmMode, K: number, L: number, sMax: number, vMax: number): number {
  let c = 0;
  for (const side of [sides.ref, sides.dut]) {
    const a = arithmetic(side, mode);
    c += 2 * (dotError(a, K) * sMax + 2 * EXP_REL) + dotError(a, Math.max(L, 1)) + gamma(Math.max(L, 1), U32) + 8 * U32;
  }
  return c * vMax + FLOOR;
}

/**
 * An absorbed decode case: [nh, dl, dr, blockSize, seqLens] over a latent cache of `cdt` ('fp8':
 * native/cpu/mla.h's layout built by the host reference, the bound over its dequantized values),
 * the block tables a shuffled partition of the cache.
 */
function addAbsorbedDecode(
  nh: number,
  dl: number,
  dr: number,
  bs: number,
  lens: readonly number[],
  cdt: 'f32' | 'bf16' | 'fp8',
  precision: 'highest' | 'bf16',
) {
  const toks = lens.reduce((a, b) => a + b, 0),
    row = dl + dr;
  const lensName = lens.length > 4 && lens.every(l => l === lens[0]) ? `${lens.length}x${lens[0]}` : lens.join(',');
  add({
    name: `mlaDecodeAbsorbed B=${lens.length} nh=${nh} dl=${dl} dr=${dr} bs=${bs} lens=${lensName} cache=${cdt} ${precision}`,
    shapes: { nh, dl, dr, blockSize: bs, seqLens: lens },
    dtypes: { cache: cdt === 'fp8' ? 'fp8_e4m3' : cdt },
    precision,
    bytes: toks * (cdt === 'fp8' ? fp8RowBytes(dl, dr) : row * ELEMENT_BYTES[cdt]),
    flops: 2 * toks * nh * (dl + dr + dl),
    make(device, r) {
      const B = lens.length,
        dn = 7,
        scale = 1 / Math.sqrt(192);
      const mb = Math.max(1, ...lens.map(l => Math.ceil(l / bs))) + 1;
      const nb = B * mb + 3;
      const perm = r.shuffle(Array.from({ length: nb }, (_, i) => i));
      let cache: Tensor, values: Float32Array;
      if (cdt === 'fp8') ({ cache, values } = fp8Cache(r, nb, bs, dl, dr, device));
      else {
        values = uniform(r, nb * bs * row);
        cache = tensor(values, [nb, bs, row], { dtype: cdt, device });
      }
      const bt = int32(
        Array.from({ length: B * mb }, (_, i) => perm[i]!),
        [B, mb],
        device,
      );
      const sl = int32(lens, [B], device);
      const qlHost = uniform(r, B * nh * dl, 0.3),
        qHost = uniform(r, B * nh * (dn + dr), 0.3);
      const ql = tensor(qlHost, [B, nh, dl], { device });
      const q = tensor(qHost, [B, nh, dn + dr], { device });
      const ol = empty([B, nh, dl], { device });
      return {
        outs: [ol],
        inputs: { seqLens: sl, cache },
        run: s => native.mlaDecodeAbsorbed(s, ol, ql, q, cache, bt, sl, scale),
        bound(sides) {
          const out = new Float64Array(B * nh * dl);
          const mode: GemmMode = precision === 'bf16' ? 'bf16' : 'highest';
          for (let b = 0; b < B; b++) {
            if (lens[b] === 0) continue; // no keys: both sides write the same (exact) result
            const kMax = new Float64Array(row); // per column, max |cache| over the sequence's tokens
            for (let j = 0; j < lens[b]!; j++) {
              const base = (perm[b * mb + Math.floor(j / bs)]! * bs + (j % bs)) * row;
              for (let c = 0; c < row; c++) kMax[c] = Math.max(kMax[c]!, Math.abs(values[base + c]!));
            }
            for (let h = 0; h < nh; h++) {
              let sMax = 0;
              for (let c = 0; c < dl; c++) sMax += Math.abs(qlHost[(b * nh + h) * dl + c]!) * kMax[c]!;
              for (let c = 0; c < dr; c++) sMax += Math.abs(qHost[(b * nh + h) * (dn + dr) + dn + c]!) * kMax[dl + c]!;
              sMax *= scale;
              for (let c = 0; c < dl; c++)
                out[(b * nh + h) * dl + c] = attentionBound(sides, mode, row, lens[b]!, sMax, kMax[c]!);
            }
          }
          return [out];
        },
      };
    },
  });
}
// Decode over f32 / bf16 caches; bf16 at precision 'bf16': the tensor-core decode for dl 512 / dr 64
// (q and p in bf16).
for (const [nh, dl, dr, bs, lens] of [
  [3, 37, 5, 4, [13]],
  [17, 64, 16, 16, [0, 1, 200]],
  [5, 40, 8, 7, [1, 64, 65, 300, 2]],
  [64, 512, 64, 64, [1, 777, 4096, 8192]],
  [64, 512, 64, 64, Array<number>(32).fill(1024)],
  [128, 512, 64, 64, [3000]],
] as const) {
  for (const [cdt, precision] of [
    ['f32', 'highest'],
    ['bf16', 'highest'],
    ['bf16', 'bf16'],
  ] as const) {
    if (cdt === 'f32' && nh >= 64 && lens.length > 4) continue;
    addAbsorbedDecode(nh, dl, dr, bs, lens, cdt, precision);
  }
}
// Decode over the fp8 latent cache: CUDA cores ('highest'; 16-byte loads at 512 + 64, scalar loads
// at the odd widths), and at 'bf16' the tensor-core decode for 512 + 64 (the dequantized rows rounded
// to bf16 in shared memory, which the bf16 operand rounding of the error model covers); the real
// Flash-Chat sizes among them.
for (const [nh, dl, dr, bs, lens] of [
  [3, 128, 6, 5, [20, 9]],
  [7, 256, 8, 7, [1, 64, 65]],
  [17, 512, 64, 16, [0, 1, 200]],
  [64, 512, 64, 64, [1, 777, 4096, 8192]],
  [128, 512, 64, 64, [3000]],
  [128, 512, 64, 64, Array<number>(32).fill(1024)],
] as const) {
  for (const precision of ['highest', 'bf16'] as const) addAbsorbedDecode(nh, dl, dr, bs, lens, 'fp8', precision);
}
// Prefill (expanded form): [nh, dn, dr, dv, [[qLen, kvLen], ...]] with a gap row between sequences.
for (const [nh, dn, dr, dv, seqs] of [
  [
    3,
    5,
    3,
    4,
    [
      [1, 1],
      [7, 10],
      [33, 33],
    ],
  ],
  [
    2,
    16,
    8,
    16,
    [
      [0, 5],
      [65, 100],
      [1, 40],
    ],
  ],
  [
    64,
    128,
    64,
    128,
    [
      [256, 256],
      [64, 320],
    ],
  ],
  [16, 128, 64, 128, [[1000, 1000]]],
  [
    8,
    128,
    64,
    128,
    [
      [1, 1],
      [70, 133],
      [0, 9],
      [129, 129],
    ],
  ],
] as const) {
  // precision 'bf16' with dn 128 / dr 64 / dv 128: the tensor-core prefill (q, k, v, p in bf16)
  const qs = [0],
    ks = [0];
  let flops = 0;
  for (const [ql, kl] of seqs) {
    qs.push(qs[qs.length - 1]! + ql);
    ks.push(ks[ks.length - 1]! + kl);
    flops += 2 * nh * ql * (kl - ql / 2) * (dn + dr + dv);
  }
  const T = qs[qs.length - 1]! + 1,
    S = ks[ks.length - 1]! + 2; // trailing rows outside every sequence stay untouched
  for (const precision of dn === 128 && dr === 64 && dv === 128 ? (['highest', 'bf16'] as const) : (['highest'] as const)) {
    add({
      name: `mlaPrefill nh=${nh} dn=${dn} dr=${dr} dv=${dv} seqs=${seqs.map(x => x.join('/')).join(',')} ${precision}`,
      shapes: { nh, dn, dr, dv, seqs: seqs.flat() },
      precision,
      bytes: 4 * (T * nh * (dn + dr) + S * nh * (dn + dv) + T * nh * dv),
      flops,
      make(device, r) {
        const scale = 1 / Math.sqrt(dn + dr);
        const qHost = uniform(r, T * nh * (dn + dr)),
          kvHost = uniform(r, S * nh * (dn + dv)),
          kpeHost = uniform(r, S * dr);
        const q = tensor(qHost, [T, nh, dn + dr], { device });
        const kvb = tensor(kvHost, [S, nh, dn + dv], { device });
        const kpe = tensor(kpeHost, [S, dr], { device });
        const o = tensor(new Float32Array(T * nh * dv).fill(0.5), [T, nh, dv], { device });
        const qst = int32(qs, [qs.length], device),
          kst = int32(ks, [ks.length], device);
        return {
          outs: [o],
          inputs: { kvb },
          run: s => native.mlaPrefill(s, o, q, kvb, kpe, qst, kst, scale),
          bound(sides) {
            const out = new Float64Array(T * nh * dv); // rows outside every sequence: untouched, exact
            const mode: GemmMode = precision === 'bf16' ? 'bf16' : 'highest';
            seqs.forEach(([qLen, kvLen], i) => {
              if (qLen === 0) return;
              for (let h = 0; h < nh; h++) {
                const kMax = new Float64Array(dn + dr),
                  vMax = new Float64Array(dv); // over the sequence's keys
                for (let j = ks[i]!; j < ks[i]! + kvLen; j++) {
                  for (let c = 0; c < dn; c++) kMax[c] = Math.max(kMax[c]!, Math.abs(kvHost[(j * nh + h) * (dn + dv) + c]!));
                  for (let c = 0; c < dr; c++) kMax[dn + c] = Math.max(kMax[dn + c]!, Math.abs(kpeHost[j * dr + c]!));
                  for (let c = 0; c < dv; c++) vMax[c] = Math.max(vMax[c]!, Math.abs(kvHost[(j * nh + h) * (dn + dv) + dn + c]!));
                }
                for (let t = qs[i]!; t < qs[i]! + qLen; t++) {
                  let sMax = 0;
                  for (let c = 0; c < dn + dr; c++) sMax += Math.abs(qHost[(t * nh + h) * (dn + dr) + c]!) * kMax[c]!;
                  for (let c = 0; c < dv; c++)
                    out[(t * nh + h) * dv + c] = attentionBound(sides, mode, dn + dr, kvLen, sMax * scale, vMax[c]!);
                }
              }
            });
            return [out];
          },
        };
      },
    });
  }
}
/** A routed expert's weights on the host (gate and up [I, H], down [H, I]). */
interface HostExpert {
  gate: HostWeight;
  up: HostWeight;
  down: HostWeight;
  /** act-order: gate / up read u's columns in this order (moeExperts' perm) */
  perm?: readonly number[] | null;
}
const silu = (z: number) => z / (1 + Math.exp(-z));

/**
 * The bound of the MoE output out[t] = sum_j w[t, j] y_j(u[t]) (+ w u for zero experts), y = down(h),
 * h = silu(g) v, g = gate(u), v = up(u), built from the reference's intermediate values (computed
 * here on the CPU at 'highest', one expert at a time) rather than from chained magnitudes, which
 * cancellation would make useless. Per element, with E1 = eps_ref(H) + eps_dut(H), ED = eps(I) summed
 * likewise, G = |u| |W_gate|, V = |u| |W_up| (the first GEMMs' magnitudes):
 *   dh = 1.1 E1 G |v| + |silu(g)| E1 V + E1^2 G V + 2 (EXP_REL + 3 u32) |h|     (silu' <= 1.1)
 *   dy = ED |W_down| (|h| + dh) + |W_down| dh
 * At 'fp8' the gate / up activations are quantized alike (bit-exact twins on the same input) but
 * each side requantizes its own h: a code flips only where the two h straddle a rounding point,
 * with probability <= 2 dh / step, so the flips' expected error is <= 2 |W_down| dh; the bound
 * allows six times that plus one worst flip, max_k step_k * max_k |W_down[., k]| (step: one e4m3 code
 * at the element's size, 2^-3 |h|, or the subnormal step 2^-9 of the group's scale amax / 448).
 * Then dout[t] = sum_j |w_tj| dy_j + gamma(k + 1, u32) sum_j |w_tj| (|y_j| + dy_j) + u32-rounded zero
 * experts.
 */
function moeBound(
  sides: Sides,
  mode: GemmMode,
  d: { T: number; H: number; I: number; nr: number; k: number },
  experts: HostExpert[],
  ids: readonly number[],
  uHost: Float32Array,
  wHost: Float32Array,
): Float64Array {
  const { T, H, I, nr, k } = d;
  const [aRef, aDut] = pair(sides, mode);
  const E1 = (dotError(aRef, H) + dotError(aDut, H)) * (1 + gamma(H, U32));
  const ED = (dotError(aRef, I) + dotError(aDut, I)) * (1 + gamma(I, U32));
  const sumK = gamma(k + 1, U32);
  const out = new Float64Array(T * H).fill(FLOOR);
  onCpuHighest(() => {
    const lin = (x: Float32Array, rows: number, w: HostWeight, magnitude: boolean) => {
      const y = empty([rows, w.shape[0]]),
        wt = weightTensors(w, 'cpu', magnitude);
      native.linear(null, y, tensor(magnitude ? abs(x) : x, [rows, w.shape[1]]), wt.w, wt.scale);
      return toArray(y);
    };
    experts.forEach((e, ex) => {
      const slots: number[] = []; // (t, j) of the rows routed to this expert
      ids.forEach((id, s) => {
        if (id === ex) slots.push(s);
      });
      if (!slots.length) return;
      const n = slots.length,
        x = new Float32Array(n * H);
      slots.forEach((s, i) => {
        const row = uHost.subarray(Math.floor(s / k) * H, (Math.floor(s / k) + 1) * H);
        if (e.perm) for (let c = 0; c < H; c++) x[i * H + c] = row[e.perm[c]!]!;
        else x.set(row, i * H);
      });
      const g = lin(x, n, e.gate, false),
        v = lin(x, n, e.up, false),
        G = lin(x, n, e.gate, true),
        V = lin(x, n, e.up, true);
      const hAbs = new Float32Array(n * I),
        dh = new Float32Array(n * I),
        hUp = new Float32Array(n * I);
      for (let i = 0; i < n * I; i++) {
        const sg = silu(g[i]!),
          h = Math.abs(sg * v[i]!);
        dh[i] =
          1.1 * E1 * G[i]! * Math.abs(v[i]!) + Math.abs(sg) * E1 * V[i]! + E1 * E1 * G[i]! * V[i]! + 2 * (EXP_REL + 3 * U32) * h;
        hAbs[i] = h;
        hUp[i] = h + dh[i]!;
      }
      const y = lin(hUp, n, e.down, true),
        prop = lin(dh, n, e.down, true);
      let flip: Float64Array | null = null;
      if (mode === 'fp8') {
        // one worst flip per output row: the largest step of the row's h times the largest |W_down| of each output
        flip = new Float64Array(n * H);
        const wd = e.down,
          wMax = new Float64Array(H);
        for (let o = 0; o < H; o++) {
          let m = 0;
          for (let c = 0; c < I; c++)
            m = Math.max(
              m,
              Math.abs(wd.values[o * I + c]!) * (wd.scale ? wd.scale[Math.floor(o / 128) * blocks(I) + Math.floor(c / 128)]! : 1),
            );
          wMax[o] = m;
        }
        for (let i = 0; i < n; i++) {
          let step = 0;
          for (let c0 = 0; c0 < I; c0 += 128) {
            let amax = 0;
            for (let c = c0; c < Math.min(I, c0 + 128); c++) amax = Math.max(amax, hUp[i * I + c]!);
            step = Math.max(step, 2 ** -3 * amax, 2 ** -9 * (amax / 448));
          }
          for (let o = 0; o < H; o++) flip[i * H + o] = step * wMax[o]!;
        }
      }
      slots.forEach((s, i) => {
        const t = Math.floor(s / k),
          wt = Math.abs(wHost[s]!);
        for (let o = 0; o < H; o++) {
          const r = i * H + o;
          const dy = ED * y[r]! + prop[r]! + (flip ? 12 * prop[r]! + flip[r]! : 0);
          out[t * H + o] = out[t * H + o]! + wt * (dy + sumK * (y[r]! + dy));
        }
      });
    });
  });
  // zero experts (identity): w u, one product and one add per slot
  ids.forEach((id, s) => {
    if (id < nr) return;
    const t = Math.floor(s / k),
      wt = Math.abs(wHost[s]!);
    for (let o = 0; o < H; o++) out[t * H + o] = out[t * H + o]! + (sumK + 2 * U32) * wt * Math.abs(uHost[t * H + o]!);
  });
  return out;
}
// MoE with zero experts: [T, H, I, nRouted, nZero, k, weight dtype, distinct ids per token, precision,
// act-order: every odd expert's gate / up read u's columns in a random order (moeExperts' perm)].
// Decode-sized batches take the CUDA-core skinny path (fp32 products) in every precision; prefill
// takes fp32 tiles ('highest'), bf16 tensor cores ('bf16') or e4m3 tensor cores ('fp8': every
// routed expert here gets >= 17 rows, so the CPU quantizes the same activations per expert).
for (const [T, H, I, nr, nz, k, wdt, distinct, precision = 'highest', permuted = false] of [
  [1, 64, 32, 8, 2, 3, 'bf16', true],
  [5, 129, 67, 6, 3, 4, 'f32', false],
  [3, 72, 48, 5, 2, 4, 'int8', true],
  [40, 72, 48, 4, 2, 4, 'fp8_e4m3', true],
  [40, 136, 80, 4, 3, 5, 'bf16', false],
  [40, 136, 80, 4, 3, 5, 'bf16', false, 'bf16'],
  [100, 200, 96, 3, 1, 2, 'int8', true, 'bf16'],
  [3, 72, 48, 5, 2, 4, 'int4-g32z', true],
  [5, 129, 67, 6, 3, 4, 'int4', false],
  [100, 200, 96, 3, 1, 2, 'int4', true, 'bf16'],
  // act-order experts: the skinny, fp32-tile and tensor-core paths
  [5, 129, 67, 6, 3, 4, 'int4', false, 'highest', true],
  [3, 256, 48, 5, 2, 4, 'int4-g32z', true, 'highest', true],
  [40, 136, 80, 4, 3, 5, 'bf16', false, 'highest', true],
  [100, 200, 96, 3, 1, 2, 'int4', true, 'bf16', true],
  // int4 decode on gemv.cuh (32 codes per 16-byte load): one-row tiles, K past one 1,024-column chunk
  // with padding codes in the last unit, tiles of 2-16 rows (down in passes of <= 4 rows)
  [1, 580, 292, 8, 2, 4, 'int4', true],
  [6, 2120, 136, 4, 0, 2, 'int4', true],
  [12, 264, 200, 3, 1, 4, 'int4-g32z', false],
  [60, 250, 130, 3, 2, 3, 'fp8_e4m3', true, 'bf16'],
  [9, 256, 128, 16, 0, 6, 'fp8_e4m3', true],
  [1, 1024, 512, 16, 8, 12, 'bf16', true],
  // GPU timing of the int4 decode experts (over the emulator's size limit), with a bf16 peer
  [1, 4096, 1024, 16, 0, 8, 'int4', true],
  [8, 4096, 1024, 16, 0, 8, 'int4', true],
  [1, 4096, 1024, 16, 0, 8, 'bf16', true],
  [8, 1024, 512, 16, 8, 12, 'bf16', true],
  [256, 1024, 512, 16, 8, 12, 'bf16', true],
  [256, 1024, 512, 16, 8, 12, 'bf16', true, 'bf16'],
  [4, 1024, 512, 16, 8, 12, 'fp8_e4m3', true],
  [256, 520, 392, 4, 2, 4, 'fp8_e4m3', true, 'fp8'],
  [64, 1024, 512, 0, 4, 2, 'bf16', true],
] as const) {
  const name = `moe T=${T} H=${H} I=${I} routed=${nr} zero=${nz} k=${k} w=${wdt}${distinct ? '' : ' (repeated ids)'} ${precision}${permuted ? ' act-order' : ''}`;
  // the routing is drawn here (its own stream of the case's seed), so that the work is known up front
  const E = nr + nz,
    pick = rng(seedOf(`${name} routing`)),
    ids: number[] = [];
  for (let t = 0; t < T; t++) {
    if (distinct) ids.push(...pick.shuffle(Array.from({ length: E }, (_, i) => i)).slice(0, k));
    else for (let j = 0; j < k; j++) ids.push(pick.int(E));
  }
  const routed = ids.filter(e => e < nr);
  add({
    name,
    shapes: { T, H, I, routed: nr, zero: nz, k },
    dtypes: { w: wdt },
    precision,
    bytes: new Set(routed).size * 3 * H * I * ELEMENT_BYTES[wdt],
    flops: 6 * routed.length * H * I,
    make(device, r) {
      const fp8 = wdt === 'fp8_e4m3';
      const amp = fp8 ? 2 : 0.1,
        [sLo, sHi] = fp8 ? [0.01, 0.06] : wdt === 'int8' ? [1e-4, 1.1e-3] : wdt.startsWith('int4') ? [1e-3, 1e-2] : [0, 0];
      const experts = Array.from({ length: nr }, (_, e) => ({
        gate: randomWeight(r, wdt, I, H, amp, sLo, sHi),
        up: randomWeight(r, wdt, I, H, amp, sLo, sHi),
        down: randomWeight(r, wdt, H, I, amp, sLo, sHi),
        perm: permuted && e % 2 === 1 ? r.shuffle(Array.from({ length: H }, (_, c) => c)) : null,
      }));
      const uHost = uniform(r, T * H),
        wHost = positive(r, T * k, 0, 2);
      const build = (dev: string, magnitude: boolean) => {
        const ts = experts.map(
          e =>
            [
              weightTensors(e.gate, dev, magnitude),
              weightTensors(e.up, dev, magnitude),
              weightTensors(e.down, dev, magnitude),
            ] as const,
        );
        const scaled = ts[0]?.[0].scale != null;
        const scales = (i: 0 | 1 | 2) => (scaled ? ts.map(e => e[i].scale!) : null);
        const set = native.moeExperts(
          ts.map(e => e[0].w),
          ts.map(e => e[1].w),
          ts.map(e => e[2].w),
          scales(0),
          scales(1),
          scales(2),
          permuted ? experts.map(e => (e.perm ? int32(e.perm, [H], dev) : null)) : null,
        );
        const u = tensor(magnitude ? abs(uHost) : uHost, [T, H], { device: dev });
        return {
          set,
          u,
          idx: int32(ids, [T, k], dev),
          w: tensor(wHost, [T, k], { device: dev }),
          out: empty([T, H], { device: dev }),
          downScale: ts[0]?.[2].scale ?? null,
        };
      };
      const m = build(device, false);
      const moe = (s: Stream | null, v: typeof m) =>
        native.moe(s, v.out, v.u, v.idx, v.w, nr, v.set, null, null, null, null, null, E);
      return {
        outs: [m.out],
        inputs: { weights: m.w, ...(m.downScale ? { downScale0: m.downScale } : {}) },
        run: s => moe(s, m),
        bound: sides => [moeBound(sides, gemmMode(precision, fp8, 17), { T, H, I, nr, k }, experts, ids, uHost, wHost)],
      };
    },
  });
}
// ==== end of MLA / MoE cases

/** Every case, in the order the GPU check runs them. */
export const cases: readonly OpCase[] = table.map(c => ({ ...c, seed: seedOf(c.name) }));
{
  const names = new Set(cases.map(c => c.name));
  if (names.size !== cases.length) throw new Error('op-cases: duplicate case names');
}

// ---- running and comparing ----------------------------------------------------------------------

/** The CUDA device the GPU check and test/cuda.test.ts run on. */
export const dev = 'cuda:0';

/** Work limits of a run: a larger case is skipped. */
export interface Limits {
  flops: number;
  bytes: number;
}
/**
 * The limits of the slow runs: the emulated device of test/emu (one fiber per CUDA thread) and the
 * CPU's ISA parity run (scalar kernels, three runs a case). The larger cases (LongCat-width GEMMs,
 * long-context attention) run on a GPU only.
 */
export const SLOW_RUN_LIMITS: Limits = { flops: 6e7, bytes: 32 << 20 };

/**
 * Builds case `c` on `device` from its seed and wraps run() so that it runs under the case's matmul
 * precision (read at launch on CUDA, when the queued work runs on the CPU) and, on a GPU, its CUDA
 * GEMM kernel; on the CPU run() also waits.
 */
export function makeCase(c: OpCase, device: string): Made {
  const made = c.make(device, rng(c.seed));
  const run = made.run;
  const gpuGemm = c.gemm && device !== 'cpu' ? c.gemm : null;
  made.run = s => {
    const prev = native.setMatmulPrecision(c.precision);
    const prevGemm = gpuGemm ? native.setCudaGemm(gpuGemm) : null;
    try {
      run(s);
      if (device === 'cpu') native.synchronize('cpu');
    } finally {
      native.setMatmulPrecision(prev);
      if (prevGemm) native.setCudaGemm(prevGemm);
    }
  };
  return made;
}

/**
 * vitest's timeout for checking case `c` once (inputs built on both sides, the CPU run, the run under
 * test, the bound), from its work, never a clock assert: the suite's 5-minute hang limit
 * (vitest.config.ts) plus 1 s per MFLOP and per 100 kB the op moves. The slowest paths measured (the
 * emulated device; the MoE case T=1 H=1024, 25 MFLOP over 25 MB of expert weights, takes about 5 s
 * of CPU time, input building included) run at about 5 MFLOP/s and 5 MB/s of CPU, so this allows a
 * machine more than ten times oversubscribed.
 */
export const budgetMs = (c: OpCase) => 300_000 + c.flops / 1e3 + c.bytes / 100;

/** Whether case `c` is over `limits` (null: no limits). Known before anything is built. */
export const overLimits = (c: OpCase, limits: Limits | null) => !!limits && (c.flops > limits.flops || c.bytes > limits.bytes);
const backendOf = (device: string): Backend => (device === 'cpu' ? 'cpu' : 'cuda');

/** The result of one comparison: `ratio` = worst |got - want| / bound (<= 1 passes). */
export interface Comparison {
  ratio: number;
  ok: boolean;
  /** Where the worst element is and what it was (for the report). */
  detail: string;
}

/** Compares the outputs of `dut` against `ref` (both already run) under the case's bounds. */
export function compareOutputs(ref: Made, dut: Made, sides: Sides): Comparison {
  const want = ref.outs.map(t => toArray(t)),
    got = dut.outs.map(t => toArray(t));
  const bounds = ref.bound ? ref.bound(sides, want) : want.map(() => 0);
  let ratio = 0,
    detail = 'equal';
  want.forEach((w, i) => {
    const e = boundExcess(got[i]!, w, bounds[i]!);
    if (e.ratio > ratio || (e.ratio === ratio && e.index >= 0 && detail === 'equal')) {
      ratio = e.ratio;
      const b = bounds[i]!,
        at = e.index;
      detail =
        at < 0
          ? `output ${i}: length ${got[i]!.length} vs ${w.length}`
          : `output ${i}[${at}] = ${got[i]![at]} vs ${w[at]} (bound ${typeof b === 'number' ? b : b[at]})`;
    }
  });
  return { ratio, ok: ratio <= 1, detail };
}

/**
 * Runs case `c` on the CPU (the oracle) and on `device` (same seed, so the same inputs) and compares
 * them; with `limits`, a larger case comes back as { skipped: true }. GPU-only cases run their
 * self-check (a ratio of 0 passes).
 */
export function checkCase(
  c: OpCase,
  stream: Stream,
  limits: Limits | null = null,
  device = dev,
): (Comparison & { skipped?: false; gpu: Made }) | { skipped: true } {
  if (overLimits(c, limits)) return { skipped: true };
  const cpu = c.gpuOnly ? null : makeCase(c, 'cpu');
  cpu?.run(null);
  const gpu = makeCase(c, device);
  gpu.run(stream);
  stream.synchronize();
  if (!cpu) {
    const bad = gpu.check!(stream);
    return { ratio: bad ? Infinity : 0, ok: bad === 0, detail: `${bad} failed checks`, gpu };
  }
  return { ...compareOutputs(cpu, gpu, { ref: 'cpu', dut: backendOf(device) }), gpu };
}
