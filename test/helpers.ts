// Shared test utilities: a seeded RNG, float64 references, and closeness checks.
import { expect } from 'vitest';
import { native } from '../lib/native.js';
import { LongcatError } from '../lib/errors.js';

/** xorshift128+ style generator: deterministic per seed, fresh per test via the seed. */
export function rng(seed: number) {
  let a = seed >>> 0 || 0x9e3779b9;
  let b = (seed * 2654435761) >>> 0 || 0x85ebca6b;
  const next = () => {
    let t = a ^ (a << 11);
    a = b;
    b = (b ^ (b >>> 19) ^ (t ^ (t >>> 8))) >>> 0;
    return b / 4294967296;
  };
  return {
    uniform: (lo = -1, hi = 1) => lo + (hi - lo) * next(),
    normal: () => {
      const u = Math.max(next(), 1e-12), v = next();
      return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
    },
    int: (n: number) => Math.floor(next() * n),
    array: (n: number, lo = -1, hi = 1) => Float32Array.from({ length: n }, () => lo + (hi - lo) * next()),
  };
}

/** Asserts |got - want| <= atol + rtol * |want| elementwise, reporting the worst element. */
export function expectClose(got: ArrayLike<number>, want: ArrayLike<number>, atol: number, rtol = 0, what = 'values') {
  expect(got.length, `${what}: length`).toBe(want.length);
  let worst = -1, worstExcess = 0;
  for (let i = 0; i < want.length; i++) {
    const g = got[i]!, w = want[i]!;
    const tol = atol + rtol * Math.abs(w);
    const err = Math.abs(g - w);
    if (!(err <= tol)) {
      const excess = Number.isNaN(err) ? Infinity : err - tol;
      if (worst < 0 || excess > worstExcess) {
        worst = i;
        worstExcess = excess;
      }
    }
  }
  if (worst >= 0) {
    expect.fail(`${what}[${worst}] = ${got[worst]} but expected ${want[worst]} (atol ${atol}, rtol ${rtol})`);
  }
}

export const cudaAvailable = native.cudaStatus().available;
/** Backends to run an op test on: always CPU, CUDA when present. */
export const backends: string[] = cudaAvailable ? ['cpu', 'cuda:0'] : ['cpu'];

/** Asserts that fn throws a LongcatError with this code (and a message matching `message`). */
export function expectCode(fn: () => unknown, code: string, message?: RegExp) {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(LongcatError);
    expect((e as LongcatError).code).toBe(code);
    if (message) expect((e as Error).message).toMatch(message);
    return;
  }
  expect.fail(`expected a ${code} error`);
}
