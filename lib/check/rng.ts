// The one seeded random generator of the tests, the op-case table, the GPU check and the benchmarks
// (the SDK's own, for sampling and init-random, lives in lib/). Plain TypeScript without imports,
// shipped in dist/check/ for the scripts and `longcat doctor`.

/** A deterministic generator per seed: xorshift128 on two 32-bit words (period 2^64 - 1). */
export interface Rng {
  /** The next 32 random bits, as an unsigned integer. */
  uint32(): number;
  /** Uniform in [lo, hi). */
  uniform(lo?: number, hi?: number): number;
  /** Standard normal (Box-Muller). */
  normal(): number;
  /** Uniform integer in [0, n). */
  int(n: number): number;
  /** n uniform values in [lo, hi) as f32. */
  array(n: number, lo?: number, hi?: number): Float32Array;
  /** The elements of `values` in a uniformly random order (Fisher-Yates, a new array). */
  shuffle<T>(values: readonly T[]): T[];
}

export function rng(seed: number): Rng {
  let a = seed >>> 0 || 0x9e3779b9;
  let b = (seed * 2654435761) >>> 0 || 0x85ebca6b;
  const uint32 = () => {
    const t = a ^ (a << 11);
    a = b;
    b = (b ^ (b >>> 19) ^ (t ^ (t >>> 8))) >>> 0;
    return b;
  };
  const next = () => uint32() / 4294967296;
  const int = (n: number) => Math.floor(next() * n);
  return {
    uint32,
    uniform: (lo = -1, hi = 1) => lo + (hi - lo) * next(),
    normal: () => {
      const u = Math.max(next(), 1e-12),
        v = next();
      return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
    },
    int,
    array: (n, lo = -1, hi = 1) => {
      const out = new Float32Array(n);
      for (let i = 0; i < n; i++) out[i] = lo + (hi - lo) * next();
      return out;
    },
    shuffle: <T>(values: readonly T[]) => {
      const out = [...values];
      for (let i = out.length - 1; i > 0; i--) {
        const j = int(i + 1);
        [out[i], out[j]] = [out[j]!, out[i]!];
      }
      return out;
    },
  };
}
