// Shared test utilities: the seeded RNG (lib/check/rng.ts), closeness checks, the backends to test.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, expect } from 'vitest';
import { native } from '../lib/native.js';
import { ConfigError, LongcatError } from '../lib/errors.js';
import { parseConfig } from '../lib/config.js';
import type { ChatMessage } from '../lib/chat.js';

/** The seeded generator shared with the op-case table, the GPU check and the benchmarks (lib/check/rng.ts). */
export { rng } from '../lib/check/rng.js';

/** Asserts |got - want| <= atol + rtol * |want| elementwise, reporting the worst element. */
export function expectClose(got: ArrayLike<number>, want: ArrayLike<number>, atol: number, rtol = 0, what = 'values') {
  expect(got.length, `${what}: length`).toBe(want.length);
  let worst = -1,
    worstExcess = 0;
  for (let i = 0; i < want.length; i++) {
    const g = got[i]!,
      w = want[i]!;
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

/** The suite's hang limit (vitest.config.ts testTimeout): a test that does not finish in it is stuck. */
export const HANG_LIMIT_MS = 300_000;
/**
 * The time limit of a test that does `cpuSeconds` of CPU work on an idle machine (measured, and stated
 * where it is used): the hang limit per 10 s of that work, so that the limit grows with the work and a
 * machine oversubscribed many times over still passes. A hang detector, never a performance assert.
 */
export const workLimitMs = (cpuSeconds: number) => HANG_LIMIT_MS * Math.max(1, Math.ceil(cpuSeconds / 10));

/**
 * A temporary directory for a test file's checkpoints, removed after its tests; the pool's thread
 * count (which the file's tests change with native.setThreads) is restored then too.
 */
export function scratchDir(prefix: string): string {
  const root = mkdtempSync(path.join(tmpdir(), prefix));
  let savedThreads = 1;
  beforeAll(() => {
    savedThreads = native.threads();
  });
  afterAll(() => {
    native.setThreads(savedThreads);
    rmSync(root, { recursive: true, force: true });
  });
  return root;
}

/** A finite number (a benchmark JSON's figure). */
export const finite = (x: unknown) => typeof x === 'number' && Number.isFinite(x);

/**
 * Runs `node bench/<script> --quick --ckpt-root <dir>` (20 s of CPU work on an idle machine) and checks
 * that it exited 0 with nothing on stderr and printed `marker`; returns the JSON it wrote (`--out`).
 */
// biome-ignore lint/suspicious/noExplicitAny: the benchmark's JSON, typed by each test's own interfaces
export function runQuickBench(script: string, dir: string, marker: string, extra: string[] = []): any {
  const out = path.join(dir, `${path.basename(script, '.mjs')}.json`);
  const r = spawnSync(process.execPath, [`bench/${script}`, '--quick', '--ckpt-root', dir, '--out', out, ...extra], {
    encoding: 'utf8',
    env: process.env,
    timeout: workLimitMs(20),
  });
  expect(r.stderr).toBe('');
  expect(r.status).toBe(0);
  expect(r.stdout).toContain(marker);
  return JSON.parse(readFileSync(out, 'utf8'));
}

export type Isa = 'scalar' | 'avx2' | 'avx512';
const startIsa = native.cpuFeatures().isa;
/** Every CPU ISA this machine can run (setIsa clamps to the best available). */
export const isas: Isa[] = (['scalar', 'avx2', 'avx512'] as Isa[]).filter(i => {
  const got = native.setIsa(i);
  native.setIsa(startIsa);
  return got === i;
});
/** Runs fn on each ISA of `isas` in turn, then restores the ISA the process started with. */
export function eachIsa(fn: (isa: Isa) => void) {
  for (const isa of isas) {
    native.setIsa(isa);
    try {
      fn(isa);
    } finally {
      native.setIsa(startIsa);
    }
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

/** Awaits p, which must reject with a LongcatError of this code whose message matches every part; returns it. */
export async function rejects(p: PromiseLike<unknown>, code: string, ...parts: (string | RegExp)[]): Promise<LongcatError> {
  let err: unknown;
  try {
    await p;
  } catch (e) {
    err = e;
  }
  expect(err, 'expected an error').toBeInstanceOf(LongcatError);
  const e = err as LongcatError;
  expect(e.code, e.message).toBe(code);
  for (const s of parts) expect(e.message).toMatch(s);
  return e;
}

/** The ConfigError parseConfig throws for `json` (failing the test when it throws none or another). */
export function configErr(json: unknown): ConfigError {
  try {
    parseConfig(json, '/ckpt/config.json');
  } catch (e) {
    expect(e).toBeInstanceOf(ConfigError);
    return e as ConfigError;
  }
  throw new Error('expected a ConfigError');
}

/** A chat message of each role, for the message tables of the chat-template tests. */
export const msg = {
  system: (content: string): ChatMessage => ({ role: 'system', content }),
  user: (content: string): ChatMessage => ({ role: 'user', content }),
  assistant: (content: string): ChatMessage => ({ role: 'assistant', content }),
};
