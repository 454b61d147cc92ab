// moe: grouped SwiGLU experts plus zero-computation (identity) experts, vs a per-token float64 loop.
import { afterAll, describe, expect, it } from 'vitest';
import { Stream, memoryStats, native, tensor, toArray, type Tensor } from '../lib/index.js';
import { bf16ToF32, f32ToBf16, f32ToFp8e4m3, fp8e4m3ToF32 } from '../lib/numeric.js';
import { expectClose, rng, expectCode } from './helpers.js';

type WDtype = 'f32' | 'bf16' | 'fp8_e4m3' | 'int8';
type Rng = ReturnType<typeof rng>;

/** A weight [rows, cols] stored as `dtype`, with the exact float64 values it represents. */
interface W {
  t: Tensor;
  scale: Tensor | null;
  v: Float64Array;
  rows: number;
  cols: number;
}

function makeWeight(r: Rng, rows: number, cols: number, dtype: WDtype): W {
  const amp = 1 / Math.sqrt(cols);
  const v = new Float64Array(rows * cols);
  if (dtype === 'f32' || dtype === 'bf16') {
    const raw = Float32Array.from({ length: rows * cols }, () => amp * r.uniform(-1.7, 1.7));
    for (let i = 0; i < raw.length; i++) v[i] = dtype === 'bf16' ? bf16ToF32(f32ToBf16(raw[i]!)) : raw[i]!;
    return { t: tensor(raw, [rows, cols], { dtype }), scale: null, v, rows, cols };
  }
  if (dtype === 'fp8_e4m3') {
    const br = Math.ceil(rows / 128),
      bc = Math.ceil(cols / 128);
    const sc = Float32Array.from({ length: br * bc }, () => (amp / 200) * r.uniform(0.5, 1.5));
    const q = Uint8Array.from({ length: rows * cols }, () => f32ToFp8e4m3(r.uniform(-440, 440)));
    for (let i = 0; i < rows; i++)
      for (let j = 0; j < cols; j++)
        v[i * cols + j] = fp8e4m3ToF32(q[i * cols + j]!) * sc[Math.floor(i / 128) * bc + Math.floor(j / 128)]!;
    return { t: new native.Tensor('fp8_e4m3', [rows, cols], 'cpu', q), scale: tensor(sc, [br, bc]), v, rows, cols };
  }
  const sc = Float32Array.from({ length: rows }, () => (amp / 100) * r.uniform(0.5, 1.5));
  const q = Int8Array.from({ length: rows * cols }, () => r.int(255) - 127);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) v[i * cols + j] = q[i * cols + j]! * sc[i]!;
  return { t: new native.Tensor('int8', [rows, cols], 'cpu', q), scale: tensor(sc, [rows]), v, rows, cols };
}

interface Experts {
  gate: W[];
  up: W[];
  down: W[];
  h: number;
  inter: number;
}

function makeExperts(r: Rng, n: number, h: number, inter: number, dtype: WDtype): Experts {
  const gate: W[] = [],
    up: W[] = [],
    down: W[] = [];
  for (let e = 0; e < n; e++) {
    gate.push(makeWeight(r, inter, h, dtype));
    up.push(makeWeight(r, inter, h, dtype));
    down.push(makeWeight(r, h, inter, dtype));
  }
  return { gate, up, down, h, inter };
}

function disposeExperts(x: Experts) {
  for (const w of [...x.gate, ...x.up, ...x.down]) {
    w.t.dispose();
    w.scale?.dispose();
  }
}

/**
 * float64: y = down(silu(gate x) * up x), and mag, a bound on sum |terms| at every step (gate/up
 * products, their propagation through SwiGLU, the down products) that scales the rounding error
 * of any fp32 / bf16-input dot product path.
 */
function refExpert(x: Experts, e: number, u: ArrayLike<number>, off: number) {
  const { h, inter } = x;
  const g = x.gate[e]!.v,
    up = x.up[e]!.v,
    dn = x.down[e]!.v;
  const a = new Float64Array(inter),
    aMag = new Float64Array(inter);
  for (let i = 0; i < inter; i++) {
    let sg = 0,
      su = 0,
      mg = 0,
      mu = 0;
    for (let c = 0; c < h; c++) {
      sg += g[i * h + c]! * u[off + c]!;
      su += up[i * h + c]! * u[off + c]!;
      mg += Math.abs(g[i * h + c]! * u[off + c]!);
      mu += Math.abs(up[i * h + c]! * u[off + c]!);
    }
    const silu = sg / (1 + Math.exp(-sg));
    a[i] = silu * su;
    // First order: |da| <= |silu'(g)| |dg| |up| + |silu(g)| |dup|, |silu'| <= 1.1, |dg| <~ eps mg,
    // |dup| <~ eps mu; plus a's own rounding before the down product.
    aMag[i] = 1.1 * mg * Math.abs(su) + Math.abs(silu) * mu + Math.abs(a[i]!);
  }
  const y = new Float64Array(h),
    mag = new Float64Array(h);
  for (let o = 0; o < h; o++) {
    let s = 0,
      m = 0;
    for (let i = 0; i < inter; i++) {
      s += dn[o * inter + i]! * a[i]!;
      m += Math.abs(dn[o * inter + i]!) * aMag[i]!;
    }
    y[o] = s;
    mag[o] = m;
  }
  return { y, mag };
}

/** One MoE call: the experts, the tokens u [t, h] and their routing idx / w [t, k] (ids >= nRouted: zero experts). */
interface MoeCall {
  x: Experts;
  nRouted: number;
  u: Float32Array;
  idx: Int32Array;
  w: Float32Array;
  t: number;
  k: number;
}

/** SPEC 4.2, token by token: y += w * Expert_e(u) for routed experts, y += w * u for zero experts. */
function refMoe({ x, nRouted, u, idx, w, t, k }: MoeCall) {
  const h = x.h;
  const out = new Float64Array(t * h),
    mag = new Float64Array(t * h);
  for (let i = 0; i < t; i++)
    for (let j = 0; j < k; j++) {
      const e = idx[i * k + j]!,
        wt = w[i * k + j]!;
      if (e < nRouted) {
        const r = refExpert(x, e, u, i * h);
        for (let c = 0; c < h; c++) {
          out[i * h + c]! += wt * r.y[c]!;
          mag[i * h + c]! += Math.abs(wt) * r.mag[c]!;
        }
      } else {
        for (let c = 0; c < h; c++) {
          out[i * h + c]! += wt * u[i * h + c]!;
          mag[i * h + c]! += Math.abs(wt * u[i * h + c]!);
        }
      }
    }
  return { out, mag };
}

/**
 * |got - want| <= 1e-5 + eps * mag elementwise. mag is a worst-case (all errors aligned) bound,
 * real rounding errors add up like a random walk, so eps sits below the per-product error:
 * 1e-6 for fp32 products (seen: <= 1.3e-7), 2^-10 for bf16 weights, where linear may round the
 * f32 activations to bf16 (AVX512-BF16 dot-product path, 2^-9 per product; seen: <= 2.8e-4), and
 * for int8 weights on that path (exact codes); 2^-8 for fp8 weights on it, dequantized to bf16 too
 * (2 x 2^-9 per product); 2^-7 for int8 weights where the GEMV (an expert's rows of one wave, <= 8)
 * rounds x to int8 per 128 columns (AVX2, AVX512-VNNI: up to 1/254 of the block's max |x| per
 * product, more than that relative to a small x).
 */
function expectMoe(got: ArrayLike<number>, ref: { out: Float64Array; mag: Float64Array }, dtype: WDtype, what: string) {
  const f = native.cpuFeatures();
  const bf16Gemm = f.isa === 'avx512' && f.avx512bf16; // linear.h: precision 'bf16'
  const int8Act = f.isa === 'avx2' || (f.isa === 'avx512' && f.avx512vnni); // the int8 GEMV's activations (linear.h)
  const eps =
    dtype === 'int8' && int8Act
      ? 2 ** -7
      : dtype === 'bf16' || (dtype === 'int8' && bf16Gemm)
        ? 2 ** -10
        : dtype === 'fp8_e4m3' && bf16Gemm
          ? 2 ** -8
          : 1e-6;
  expect(got.length, `${what}: length`).toBe(ref.out.length);
  for (let i = 0; i < ref.out.length; i++) {
    const tol = 1e-5 + eps * ref.mag[i]!;
    const err = Math.abs(got[i]! - ref.out[i]!);
    if (!(err <= tol)) expect.fail(`${what}[${i}] = ${got[i]} but expected ${ref.out[i]} (tolerance ${tol})`);
  }
}

/**
 * Routing with the awkward cases: every 5th token (from token 1) picks only zero experts (when
 * there are any), expert `pop` is picked by every other token, expert 1 (when nRouted >= 3) by
 * none, the slot order is shuffled. Distinct experts per token while enough exist.
 */
function makeRouting(r: Rng, t: number, k: number, nRouted: number, nZero: number) {
  const idx = new Int32Array(t * k),
    w = new Float32Array(t * k);
  const pop = nRouted - 1;
  const unused = nRouted >= 3 ? 1 : -1;
  for (let i = 0; i < t; i++) {
    const chosen: number[] = [];
    const pick = (pool: number[]) => {
      const free = pool.filter(e => !chosen.includes(e));
      const from = free.length ? free : pool;
      chosen.push(from[r.int(from.length)]!);
    };
    const zeros = Array.from({ length: nZero }, (_, z) => nRouted + z);
    if (nZero > 0 && i % 5 === 1) {
      while (chosen.length < k) pick(zeros);
    } else {
      chosen.push(pop);
      const pool = [...Array.from({ length: nRouted }, (_, e) => e).filter(e => e !== unused), ...zeros];
      while (chosen.length < k) pick(pool);
    }
    for (let j = k - 1; j > 0; j--) {
      const s = r.int(j + 1);
      [chosen[j], chosen[s]] = [chosen[s]!, chosen[j]!];
    }
    for (let j = 0; j < k; j++) {
      idx[i * k + j] = chosen[j]!;
      w[i * k + j] = 6 * r.uniform(0.01, 0.3);
    }
  }
  return { idx, w };
}

/** The sizes of a MoE call: tokens, hidden, intermediate, routed experts, zero experts, experts per token. */
type Shape = [t: number, h: number, inter: number, nRouted: number, nZero: number, k: number];

/** nRouted random `dtype` experts and t tokens u [t, h] in [-1, 1). */
function expertsAndTokens(r: Rng, t: number, h: number, inter: number, nRouted: number, dtype: WDtype) {
  const x = makeExperts(r, nRouted, h, inter, dtype);
  return { x, u: r.array(t * h) };
}

/** A random call: experts and tokens, then the routing of makeRouting. */
function randomCall(r: Rng, [t, h, inter, nRouted, nZero, k]: Shape, dtype: WDtype): MoeCall {
  const { x, u } = expertsAndTokens(r, t, h, inter, nRouted, dtype);
  return { x, u, ...makeRouting(r, t, k, nRouted, nZero), t, k, nRouted };
}

/** The expert arguments of moe / moeExperts: gate, up, down and (quantized weights) their scales. */
function expertLists(x: Experts) {
  const q = x.gate[0]?.scale != null;
  const scales = (ws: W[]) => (q ? ws.map(g => g.scale!) : null);
  return [x.gate.map(g => g.t), x.up.map(g => g.t), x.down.map(g => g.t), scales(x.gate), scales(x.up), scales(x.down)] as const;
}

/** The tensors of a call: u, idx, w and a NaN-poisoned output. */
function callTensors({ x, u, idx, w, t, k }: MoeCall) {
  return {
    ut: tensor(u, [t, x.h]),
    it_: tensor(idx, [t, k], { dtype: 'int32' }),
    wt: tensor(w, [t, k]),
    out: tensor(new Float32Array(t * x.h).fill(NaN), [t, x.h]),
  };
}

function runMoe(call: MoeCall, opts: { stream?: Stream | null; nExperts?: number } = {}): Float32Array {
  const { x, nRouted } = call;
  const { ut, it_, wt, out } = callTensors(call);
  native.moe(opts.stream ?? null, out, ut, it_, wt, nRouted, ...expertLists(x), opts.nExperts ?? null);
  const res = toArray(out) as Float32Array;
  for (const z of [ut, it_, wt, out]) z.dispose();
  return res;
}

const originalIsa = native.cpuFeatures().isa;
const originalThreads = native.threads();
afterAll(() => {
  native.setIsa(originalIsa);
  native.setThreads(originalThreads);
});

describe('moe', () => {
  // [T, H, I, nRouted, nZero, k, weight dtype]
  const cases: Array<[number, number, number, number, number, number, WDtype]> = [
    [1, 37, 23, 1, 0, 1, 'f32'],
    [1, 129, 65, 8, 4, 6, 'bf16'],
    [3, 37, 23, 5, 2, 3, 'f32'],
    [3, 129, 65, 8, 1, 4, 'fp8_e4m3'],
    [17, 37, 23, 8, 3, 5, 'bf16'],
    [17, 129, 65, 5, 0, 2, 'int8'],
    [17, 37, 23, 1, 4, 6, 'fp8_e4m3'],
    [64, 129, 65, 8, 4, 6, 'f32'],
    [64, 37, 23, 5, 1, 1, 'bf16'],
    [64, 37, 23, 8, 2, 4, 'int8'],
  ];
  it.each(cases)(
    'matches a per-token float64 loop: T=%i H=%i I=%i, %i routed + %i zero, k=%i, %s weights',
    (t, h, inter, nRouted, nZero, k, dtype) => {
      const r = rng(t * 7919 + h * 31 + nRouted * 5 + nZero + k * 101);
      const x = makeExperts(r, nRouted, h, inter, dtype);
      const isas = t <= 17 ? (['scalar', 'avx2', 'avx512'] as const) : ([originalIsa] as const);
      for (const isa of isas) {
        native.setIsa(isa);
        const u = r.array(t * h, -1.5, 1.5);
        const { idx, w } = makeRouting(r, t, k, nRouted, nZero);
        // The routing has the awkward cases it claims: an expert every token with routed work
        // uses, an expert nobody uses, tokens with no routed expert at all.
        const tokensOf = (e: number) =>
          new Set(
            Array.from(idx.keys())
              .filter(s => idx[s] === e)
              .map(s => Math.floor(s / k)),
          ).size;
        const onlyZero = Array.from({ length: t }, (_, i) => idx.subarray(i * k, i * k + k).every(e => e >= nRouted)).filter(
          Boolean,
        ).length;
        expect(tokensOf(nRouted - 1)).toBe(t - onlyZero);
        if (nRouted >= 3) expect(tokensOf(1)).toBe(0);
        if (nZero > 0 && t > 1) expect(onlyZero).toBeGreaterThan(0);
        const c = { x, nRouted, u, idx, w, t, k };
        expectMoe(runMoe(c, { nExperts: nRouted + nZero }), refMoe(c), dtype, `moe (${isa})`);
      }
      disposeExperts(x);
    },
  );

  it('handles tokens that pick only zero experts, and a batch with no routed work at all', () => {
    const r = rng(11);
    const [t, h, nRouted, k] = [6, 37, 4, 3];
    const { x, u } = expertsAndTokens(r, t, h, 23, nRouted, 'f32');
    // Only zero experts (ids 4..6) everywhere: out = (sum of w) * u, no GEMM at all.
    const idx = Int32Array.from({ length: t * k }, (_, s) => 4 + (s % 3));
    const w = Float32Array.from({ length: t * k }, () => r.uniform(0, 2));
    const got = runMoe({ x, nRouted, u, idx, w, t, k });
    const want = new Float64Array(t * h);
    for (let i = 0; i < t; i++)
      for (let c = 0; c < h; c++) want[i * h + c] = (w[i * k]! + w[i * k + 1]! + w[i * k + 2]!) * u[i * h + c]!;
    expectClose(got, want, 1e-6, 1e-6, 'zero-only');
    // nRouted = 0: every id is a zero expert, the expert lists are empty.
    const none: Experts = { gate: [], up: [], down: [], h, inter: 0 };
    expectClose(runMoe({ x: none, nRouted: 0, u, idx, w, t, k }), want, 1e-6, 1e-6, 'nRouted = 0');
    disposeExperts(x);
  });

  it('adds repeated experts in one token once per slot', () => {
    const r = rng(12);
    const [t, nRouted, k] = [3, 3, 4];
    const { x, u } = expertsAndTokens(r, t, 37, 23, nRouted, 'bf16');
    const idx = Int32Array.from([2, 2, 0, 5, 1, 1, 1, 1, 4, 0, 4, 2]);
    const w = Float32Array.from({ length: t * k }, () => r.uniform(0.1, 1));
    const c = { x, nRouted, u, idx, w, t, k };
    expectMoe(runMoe(c), refMoe(c), 'bf16', 'duplicates');
    disposeExperts(x);
  });

  it('spans several workspace waves in a long prefill (T*k > 1024 rows), splitting an expert', () => {
    const c = randomCall(rng(13), [330, 37, 23, 5, 1, 6], 'bf16');
    expect(c.idx.filter(e => e < c.nRouted).length).toBeGreaterThan(1024 + 200); // routed rows: two waves
    expectMoe(runMoe(c), refMoe(c), 'bf16', 'waves');
    disposeExperts(c.x);
  });

  /** Runs fn on a random bf16 call of each shape in turn, drawn from one RNG seeded `seed`. */
  const eachCall = (seed: number, shapes: Shape[], fn: (call: MoeCall) => void) => {
    const r = rng(seed);
    for (const shape of shapes) fn(randomCall(r, shape, 'bf16'));
  };

  it('gives bitwise identical results with 1 and 2 threads (decode and prefill shapes)', () => {
    const shapes: Shape[] = [
      [1, 129, 65, 8, 4, 6],
      [5, 129, 65, 8, 2, 6],
      [64, 129, 65, 8, 4, 6],
      [330, 37, 23, 5, 1, 6],
      [64, 37, 23, 32, 16, 6], // 32 experts of 1-20 rows: one task each, the most rows first
    ];
    eachCall(14, shapes, call => {
      try {
        native.setThreads(1);
        const a = runMoe(call);
        native.setThreads(2);
        const s = new Stream('cpu');
        const b = runMoe(call, { stream: s });
        s.dispose();
        native.setThreads(3);
        const c = runMoe(call);
        expect(a.some(v => Number.isNaN(v))).toBe(false);
        expect(new Uint32Array(b.buffer), `T=${call.t}: 2 threads`).toEqual(new Uint32Array(a.buffer));
        expect(new Uint32Array(c.buffer), `T=${call.t}: 3 threads`).toEqual(new Uint32Array(a.buffer));
      } finally {
        native.setThreads(originalThreads);
        disposeExperts(call.x);
      }
    });
  });

  it("gives the same bits with every in-wave schedule (experts spread over threads, one by one, or one token's experts split by rows)", () => {
    const shapes: Shape[] = [
      [1, 129, 65, 8, 4, 6],
      [1, 37, 23, 8, 2, 5],
      [2, 301, 97, 16, 3, 4],
      [9, 37, 23, 8, 2, 3],
      [64, 37, 23, 5, 1, 4],
      [64, 37, 23, 16, 2, 6], // ~21 rows per expert, 16 experts: auto spreads them over a small pool
      // a 64-sequence decode step of the small preset's routing: 32 experts of 1-20 rows, one task
      // each, the most rows first (tasks out of expert order)
      [64, 37, 23, 32, 16, 6],
    ];
    eachCall(17, shapes, call => {
      const res: Float32Array[] = [];
      try {
        // The kernel reads LONGCAT_MOE_SCHED on every call; nothing is in flight while it changes.
        // ('rows' applies to waves of one row per expert: a single token's; other waves take 'auto')
        for (const sched of ['experts', 'linear', 'auto', 'rows']) {
          process.env.LONGCAT_MOE_SCHED = sched;
          res.push(runMoe(call));
        }
        native.setThreads(3);
        process.env.LONGCAT_MOE_SCHED = 'rows';
        res.push(runMoe(call));
      } finally {
        native.setThreads(originalThreads);
        delete process.env.LONGCAT_MOE_SCHED;
        disposeExperts(call.x);
      }
      const what = `T=${call.t}`;
      expectMoe(res[0]!, refMoe(call), 'bf16', `${what} experts schedule`);
      expect(new Uint32Array(res[1]!.buffer), `${what}: linear vs experts`).toEqual(new Uint32Array(res[0]!.buffer));
      expect(new Uint32Array(res[2]!.buffer), `${what}: auto vs experts`).toEqual(new Uint32Array(res[0]!.buffer));
      expect(new Uint32Array(res[3]!.buffer), `${what}: rows vs experts`).toEqual(new Uint32Array(res[0]!.buffer));
      expect(new Uint32Array(res[4]!.buffer), `${what}: rows vs experts, 3 threads`).toEqual(new Uint32Array(res[0]!.buffer));
    });
  });

  it("streams one token's experts as one row stream: wide odd experts (many blocks per thread's share) at 1, 2 and 3 threads", () => {
    // h = 1031: bf16 rows of 2062 bytes, so each thread's share of the gate / up rows is ~10-30
    // of row_stream's ~128 KiB blocks and crosses several experts' matrices at odd rows.
    const r = rng(23);
    for (const dtype of ['bf16', 'int8', 'f32'] as const) {
      const call = randomCall(r, [1, 1031, 197, 7, 2, 6], dtype);
      const res: Float32Array[] = [];
      try {
        process.env.LONGCAT_MOE_SCHED = 'rows';
        for (const n of [1, 2, 3]) {
          native.setThreads(n);
          res.push(runMoe(call));
        }
      } finally {
        native.setThreads(originalThreads);
        delete process.env.LONGCAT_MOE_SCHED;
        disposeExperts(call.x);
      }
      expect(call.idx.filter(e => e < call.nRouted).length, 'routed experts').toBeGreaterThan(2);
      expectMoe(res[0]!, refMoe(call), dtype, `${dtype}, 1 thread`);
      expect(new Uint32Array(res[1]!.buffer), `${dtype}: 2 threads`).toEqual(new Uint32Array(res[0]!.buffer));
      expect(new Uint32Array(res[2]!.buffer), `${dtype}: 3 threads`).toEqual(new Uint32Array(res[0]!.buffer));
    }
  });

  it('streams fp8 experts as one row stream when h and the expert width are whole 128-row scale blocks (the same bits as whole experts per thread, at 1, 2 and 3 threads)', () => {
    // h = 384, inter = 256: each expert's gate / up / down split between 128-row blocks only;
    // inter = 200 cannot split: the automatic schedule takes whole experts.
    const r = rng(29);
    for (const [h, inter] of [
      [384, 256],
      [256, 200],
    ] as const) {
      const call = randomCall(r, [1, h, inter, 9, 2, 6], 'fp8_e4m3');
      const res: Record<string, Float32Array> = {};
      try {
        for (const sched of ['experts', 'rows', 'auto'])
          for (const n of [1, 2, 3]) {
            process.env.LONGCAT_MOE_SCHED = sched;
            native.setThreads(n);
            res[`${sched} ${n}`] = runMoe(call);
          }
      } finally {
        native.setThreads(originalThreads);
        delete process.env.LONGCAT_MOE_SCHED;
        disposeExperts(call.x);
      }
      expect(call.idx.filter(e => e < call.nRouted).length, 'routed experts').toBeGreaterThan(2);
      const want = res['experts 1']!;
      expectMoe(want, refMoe(call), 'fp8_e4m3', `h ${h}, inter ${inter}`);
      for (const [key, got] of Object.entries(res))
        expect(new Uint32Array(got.buffer), `h ${h}, inter ${inter}: ${key}`).toEqual(new Uint32Array(want.buffer));
    }
  });

  it('takes a prepared MoeExpertSet with the same results, keeps its weights alive, and checks it', () => {
    const r = rng(19);
    for (const dtype of ['bf16', 'fp8_e4m3'] as const) {
      const [h, inter, nZero] = [37, 23, 2];
      const call = randomCall(r, [17, h, inter, 5, nZero, 4], dtype);
      const { x, nRouted, t } = call;
      const want = runMoe(call);
      const set = native.moeExperts(...expertLists(x));
      expect([set.nRouted, set.hidden, set.intermediate, set.device]).toEqual([nRouted, h, inter, 'cpu']);
      disposeExperts(x); // the set still holds the weights
      const { ut, it_, wt, out } = callTensors(call);
      native.moe(null, out, ut, it_, wt, nRouted, set, null, null, null, null, null, nRouted + nZero);
      const got = toArray(out) as Float32Array;
      expect(new Uint32Array(got.buffer)).toEqual(new Uint32Array(want.buffer));
      expectMoe(got, refMoe(call), dtype, `${dtype} set`);
      expectCode(
        () => native.moe(null, out, ut, it_, wt, nRouted + 1, set),
        'E_ARGUMENT',
        /holds 5 experts, expected nRouted = 6/,
      );
      expectCode(() => native.moe(null, out, ut, it_, wt, nRouted, set, [] as never), 'E_ARGUMENT', /must be null/);
      const u2 = tensor(new Float32Array(t * (h + 1)), [t, h + 1]),
        o2 = tensor(new Float32Array(t * (h + 1)), [t, h + 1]);
      expectCode(() => native.moe(null, o2, u2, it_, wt, nRouted, set), 'E_SHAPE', /take H = 37/);
      set.dispose();
      set.dispose();
      expectCode(() => native.moe(null, out, ut, it_, wt, nRouted, set), 'E_DISPOSED', /MoeExpertSet was disposed/);
      // A look-alike object is not a set.
      expectCode(
        () => native.moe(null, out, ut, it_, wt, nRouted, { _handle: {} } as never),
        'E_ARGUMENT',
        /'gate' must be an array/,
      );
      for (const z of [ut, it_, wt, out, u2, o2]) z.dispose();
    }
    const r2 = rng(20);
    const x = makeExperts(r2, 2, 37, 23, 'f32');
    expectCode(
      () =>
        native.moeExperts(
          x.gate.map(g => g.t),
          x.up.map(g => g.t),
          x.down.slice(1).map(g => g.t),
        ),
      'E_ARGUMENT',
      /moeExperts: 'down' has 1 tensors, expected nRouted = 2/,
    );
    expectCode(
      () =>
        native.moeExperts(
          x.gate.map(g => g.t),
          x.down.map(g => g.t),
          x.down.map(g => g.t),
        ),
      'E_SHAPE',
      /moeExperts: 'up\[0\]'/,
    );
    disposeExperts(x);
    const empty = native.moeExperts([], [], []);
    expect(empty.nRouted).toBe(0);
    empty.dispose();
  });

  it('act-order experts (moeExperts perm): gate / up read u[perm]; a bad perm list is a typed error', () => {
    const r = rng(21);
    for (const dtype of ['f32', 'bf16'] as const) {
      // no zero experts: they would add the unpermuted u
      const [t, h, inter, nRouted, k] = [19, 37, 23, 4, 3];
      const call = randomCall(r, [t, h, inter, nRouted, 0, k], dtype);
      const perm = r.shuffle(Array.from({ length: h }, (_, c) => c));
      // the same order for every expert: moe(u) with the perm == moe(u[:, perm]) without it, bit for bit
      const permuted = {
        ...call,
        u: Float32Array.from({ length: t * h }, (_, i) => call.u[Math.floor(i / h) * h + perm[i % h]!]!),
      };
      const want = runMoe(permuted);
      const pt = tensor(Int32Array.from(perm), [h], { dtype: 'int32' });
      const set = native.moeExperts(
        ...expertLists(call.x),
        call.x.gate.map(() => pt),
      );
      const { ut, it_, wt, out } = callTensors(call);
      native.moe(null, out, ut, it_, wt, nRouted, set, null, null, null, null, null, nRouted);
      expect(new Uint32Array((toArray(out) as Float32Array).buffer), dtype).toEqual(new Uint32Array(want.buffer));
      // null entries: those experts read u as it is (an all-null list == no list)
      const plain = native.moeExperts(
        ...expertLists(call.x),
        call.x.gate.map(() => null),
      );
      native.moe(null, out, ut, it_, wt, nRouted, plain, null, null, null, null, null, nRouted);
      expect(new Uint32Array((toArray(out) as Float32Array).buffer)).toEqual(new Uint32Array(runMoe(call).buffer));
      plain.dispose();
      const lists = expertLists(call.x);
      const bad = (p: (Tensor | null)[]) => () => native.moeExperts(...lists, p);
      expectCode(bad([pt]), 'E_ARGUMENT', /'perm' has 1 entries, expected nRouted = 4/);
      const outOfRange = tensor(
        Int32Array.from(perm, v => (v === 5 ? h : v)),
        [h],
        { dtype: 'int32' },
      );
      expectCode(
        bad([pt, outOfRange, null, pt]),
        'E_ARGUMENT',
        new RegExp(`perm\\[1\\]\\[${perm.indexOf(5)}\\] = ${h} is out of range`),
      );
      const short = tensor(new Int32Array(h - 1), [h - 1], { dtype: 'int32' });
      expectCode(bad([short, pt, pt, pt]), 'E_SHAPE', /perm\[0\]/);
      const floats = tensor(new Float32Array(h), [h]);
      expectCode(bad([pt, pt, floats, pt]), 'E_DTYPE', /perm\[2\]/);
      for (const z of [ut, it_, wt, out, pt, outOfRange, short, floats]) z.dispose();
      set.dispose();
      disposeExperts(call.x);
    }
  });

  it('accepts an empty batch (T = 0)', () => {
    const r = rng(18);
    const x = makeExperts(r, 2, 37, 23, 'f32');
    expect(
      runMoe({ x, nRouted: 2, u: new Float32Array(0), idx: new Int32Array(0), w: new Float32Array(0), t: 0, k: 3 }).length,
    ).toBe(0);
    disposeExperts(x);
  });

  it('returns its workspace to the pool', () => {
    const c = randomCall(rng(15), [9, 37, 23, 4, 2, 3], 'f32');
    runMoe(c); // warm the pool
    native.synchronize('cpu');
    const before = memoryStats().liveBytes;
    runMoe(c);
    native.synchronize('cpu');
    expect(memoryStats().liveBytes).toBe(before);
    disposeExperts(c.x);
  });

  it('rejects bad arguments with typed errors naming the expert and tensor', () => {
    const r = rng(16);
    const t = 3,
      h = 37,
      inter = 23,
      n = 4,
      k = 2;
    const x = makeExperts(r, n, h, inter, 'f32');
    const q = makeExperts(r, n, h, inter, 'fp8_e4m3');
    const G = x.gate.map(g => g.t),
      U = x.up.map(g => g.t),
      D = x.down.map(g => g.t);
    const QG = q.gate.map(g => g.t),
      QU = q.up.map(g => g.t),
      QD = q.down.map(g => g.t);
    const QGs = q.gate.map(g => g.scale!),
      QUs = q.up.map(g => g.scale!),
      QDs = q.down.map(g => g.scale!);
    const all: Tensor[] = [];
    const mk = (shape: number[], dtype: 'f32' | 'int32' | 'bf16' = 'f32', fill = 0) => {
      const z = tensor(new Array(shape.reduce((a, b) => a * b, 1)).fill(fill), shape, { dtype });
      all.push(z);
      return z;
    };
    const out = mk([t, h]),
      u = mk([t, h]),
      idx = mk([t, k], 'int32'),
      w = mk([t, k]);
    const m = (
      o: Partial<Record<'out' | 'u' | 'idx' | 'w', Tensor>>,
      nR: number,
      g: Tensor[],
      up: Tensor[],
      d: Tensor[],
      gs: Tensor[] | null = null,
      us: Tensor[] | null = null,
      ds: Tensor[] | null = null,
      nE: number | null = null,
    ) => native.moe(null, o.out ?? out, o.u ?? u, o.idx ?? idx, o.w ?? w, nR, g, up, d, gs, us, ds, nE);
    // A valid call first.
    m({}, n, G, U, D);
    native.synchronize('cpu');
    expectCode(() => m({}, n, G.slice(1), U, D), 'E_ARGUMENT', /moe: 'gate' has 3 tensors, expected nRouted = 4/);
    expectCode(() => m({}, n, G, U, D.slice(0, 2)), 'E_ARGUMENT', /'down' has 2 tensors/);
    expectCode(() => m({}, -1, [], [], []), 'E_ARGUMENT', /nRouted must be >= 0/);
    expectCode(
      () => m({}, n, G, [U[0]!, U[1]!, U[2]!, mk([inter + 1, h])], D),
      'E_SHAPE',
      /'up\[3\]' has shape \[24, 37\], expected \[23, 37\]/,
    );
    expectCode(() => m({}, n, G, U, [D[0]!, mk([h, inter], 'int32'), D[2]!, D[3]!]), 'E_DTYPE', /'down\[1\]' has dtype int32/);
    expectCode(() => m({}, n, [mk([inter, h + 1]), ...G.slice(1)], U, D), 'E_SHAPE', /'gate\[0\]'/);
    expectCode(() => m({}, n, QG, QU, QD), 'E_ARGUMENT', /'gate\[0\]' is fp8_e4m3 and needs its scale, but 'gateScale' is null/);
    expectCode(() => m({}, n, QG, QU, QD, QGs, QUs, null), 'E_ARGUMENT', /'down\[0\]' is fp8_e4m3.*'downScale' is null/);
    expectCode(() => m({}, n, G, U, D, QGs), 'E_ARGUMENT', /'gate\[0\]' is f32 and takes no scale/);
    expectCode(
      () => m({}, n, QG, QU, QD, QGs, [QUs[0]!, QUs[1]!, mk([2, 2]), QUs[3]!], QDs),
      'E_SHAPE',
      /'upScale\[2\] \(weight_scale_inv\)'/,
    );
    expectCode(() => m({}, n, QG, QU, QD, QGs.slice(1), QUs, QDs), 'E_ARGUMENT', /'gateScale' has 3 tensors/);
    expectCode(() => m({ out: mk([t, h + 1]) }, n, G, U, D), 'E_SHAPE', /'out'/);
    expectCode(() => m({ u: mk([t, h], 'bf16') }, n, G, U, D), 'E_DTYPE', /'u' has dtype bf16/);
    expectCode(() => m({ idx: mk([t, k]) }, n, G, U, D), 'E_DTYPE', /'idx'/);
    expectCode(() => m({ w: mk([t, k + 1]) }, n, G, U, D), 'E_SHAPE', /'weights'/);
    expectCode(() => m({ out: u }, n, G, U, D), 'E_ARGUMENT', /'out' overlaps 'u'/);
    expectCode(() => m({}, n, G, U, D, null, null, null, 3), 'E_ARGUMENT', /nExperts/);
    expectCode(() => native.moe(null, out, u, idx, w, n, 'x' as never, U, D), 'E_ARGUMENT', /'gate' must be an array/);
    expectCode(
      () => native.moe(null, out, u, idx, w, n, [G[0]!, {} as Tensor, G[2]!, G[3]!], U, D),
      'E_ARGUMENT',
      /'gate\[1\]' is not a Tensor/,
    );

    // Data-dependent: a bad id is found while the op runs, surfaces at synchronize, writes nothing.
    for (const [bad, nE, re] of [
      [-1, null, /idx\[1\]\[0\] = -1 is negative/],
      [6, 6, /idx\[1\]\[0\] = 6 is out of range 0..5/],
    ] as const) {
      const s = new Stream('cpu');
      const o = mk([t, h], 'f32', NaN);
      const bi = mk([t, k], 'int32');
      bi.copyFromBytes(Int32Array.from([0, 5, bad, 1, 2, 3]));
      native.moe(s, o, u, bi, w, n, G, U, D, null, null, null, nE);
      expectCode(() => s.synchronize(), 'E_ARGUMENT', re);
      expect(Array.from(toArray(o)).every(v => Number.isNaN(v))).toBe(true);
      s.synchronize(); // the error was reported once
      s.dispose();
    }
    for (const z of all) z.dispose();
    disposeExperts(x);
    disposeExperts(q);
  });
});
