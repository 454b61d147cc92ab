// Float64 references of the sampler shared by the sampling tests: the filtered distribution
// (native/cpu/sampling.cc's documented filter order), the counter-based uniform and the parameter
// rows of sampleSpeculative, the chi-square statistic of drawn counts. Imports nothing (the
// op-case table beside it uses it too).

/** Sampling parameters as the ops take them. */
export interface SampleP {
  temperature: number;
  topK: number;
  topP: number;
  minP: number;
}

/** The filtered, renormalised distribution in float64, in the documented order (temperature > 0). */
export function filtered(logits: ArrayLike<number>, p: SampleP): Float64Array {
  const V = logits.length;
  const z = Array.from(logits, l => l / p.temperature);
  const order = Array.from({ length: V }, (_, i) => i).sort((a, b) => z[b]! - z[a]! || a - b);
  let keep = new Set(p.topK > 0 ? order.slice(0, p.topK) : order);
  const zmax = z[order[0]!]!;
  const w = z.map(v => Math.exp(v - zmax));
  if (p.minP > 0) keep = new Set([...keep].filter(i => !(w[i]! < p.minP)));
  if (p.topP < 1) {
    const sorted = order.filter(i => keep.has(i));
    const total = sorted.reduce((s, i) => s + w[i]!, 0);
    let cum = 0;
    const nk = new Set<number>();
    for (const i of sorted) {
      nk.add(i);
      cum += w[i]!;
      if (cum >= p.topP * total) break;
    }
    keep = nk;
  }
  const q = new Float64Array(V);
  let s = 0;
  for (const i of keep) s += w[i]!;
  for (const i of keep) q[i] = w[i]! / s;
  return q;
}

/** argmax with the sampler's rule: ties -> lowest index, NaN never wins, all -inf/NaN -> 0. */
export function argmaxRef(x: ArrayLike<number>): number {
  let best = -Infinity,
    idx = 0;
  for (let j = 0; j < x.length; j++)
    if (x[j]! > best) {
      best = x[j]!;
      idx = j;
    }
  return idx;
}

const M64 = (1n << 64n) - 1n;
function splitmix64(x: bigint): bigint {
  x = (x + 0x9e3779b97f4a7c15n) & M64;
  x = ((x ^ (x >> 30n)) * 0xbf58476d1ce4e5b9n) & M64;
  x = ((x ^ (x >> 27n)) * 0x94d049bb133111ebn) & M64;
  return x ^ (x >> 31n);
}
/** native/cpu/sampling.h sample_uniform(seed, step, row): the uniform in [0, 1) of a draw. */
export function sampleUniform(seed: bigint, step: bigint, row: bigint): number {
  const x = splitmix64(splitmix64(splitmix64(seed) ^ step) ^ row);
  return Number(x >> 11n) / 9007199254740992;
}
/** The purposes of sampleSpeculative's uniforms (kUniformDraw is 0: a one-row sample call's). */
export const UNIFORM_ACCEPT = 0x8000000000000001n;
export const UNIFORM_RESIDUAL = 0x8000000000000002n;

/** One sequence's row of sampleSpeculative's params: [f32 bits T, topK, f32 bits topP, f32 bits minP, seed lo, seed hi]. */
export function speculativeParams(p: SampleP, seed: bigint): number[] {
  const f = new Float32Array([p.temperature, p.topP, p.minP]);
  const bits = new Int32Array(f.buffer);
  return [bits[0]!, p.topK, bits[1]!, bits[2]!, Number(BigInt.asIntN(32, seed)), Number(BigInt.asIntN(32, seed >> 32n))];
}

/** Pearson's chi-square of `counts` against the distribution q over the tokens with q > 0, its
 *  degrees of freedom, and `outside`: the draws of tokens with q = 0 (filtered out: must be 0). */
export function chiSquare(counts: Float64Array, q: Float64Array) {
  const n = counts.reduce((a, b) => a + b, 0);
  let chi2 = 0,
    df = -1,
    outside = 0;
  for (let i = 0; i < q.length; i++) {
    if (q[i] === 0) {
      outside += counts[i]!;
      continue;
    }
    const e = n * q[i]!;
    chi2 += (counts[i]! - e) ** 2 / e;
    df++;
  }
  return { chi2, df, outside };
}

/** One row's penalties and bias as penalize takes them (history: prompt then generated, -1 padded). */
export interface PenaltyRow {
  history: number[];
  promptLength: number;
  repetition: number;
  presence: number;
  frequency: number;
  bias: [id: number, value: number][];
}

/** penalize's rule on one row (f32 rounding after every operation, as the op rounds): a new row. */
export function penalizeRef(row: ArrayLike<number>, p: PenaltyRow): Float32Array {
  const f = Math.fround;
  const x = Float32Array.from(row);
  const generated = new Map<number, number>();
  p.history.forEach((t, j) => {
    if (t >= 0) generated.set(t, (generated.get(t) ?? 0) + (j >= p.promptLength ? 1 : 0));
  });
  const [rep, pres, freq] = [f(p.repetition), f(p.presence), f(p.frequency)];
  for (const [t, c] of generated) {
    let v = x[t]!;
    if (rep !== 1) v = v > 0 ? f(v / rep) : f(v * rep);
    if (c > 0) v = f(v - f(pres + f(freq * c)));
    x[t] = v;
  }
  for (const [id, value] of p.bias) if (id >= 0) x[id] = f(x[id]! + f(value));
  return x;
}

/** logprobs' rule on one row in float64: the chosen token's and the k best (logit desc, id asc). */
export function logprobsRef(row: ArrayLike<number>, chosen: number, k: number): { chosen: number; ids: number[]; top: number[] } {
  const x = Array.from(row, v => (Number.isNaN(v) ? -Infinity : v));
  const m = x.reduce((a, v) => Math.max(a, v), -Infinity);
  const lse = Number.isFinite(m) ? m + Math.log(x.reduce((s, v) => s + Math.exp(v - m), 0)) : NaN;
  const order = x
    .map((_, i) => i)
    .sort((a, b) => (x[a]! > x[b]! ? -1 : x[a]! < x[b]! ? 1 : a - b))
    .slice(0, k);
  return { chosen: x[chosen]! - lse, ids: order, top: order.map(i => x[i]! - lse) };
}
