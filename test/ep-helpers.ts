// Shared by the expert-parallel tests (ep.test.ts, ep-devices.test.ts): a scripted run of a model
// (batched prefill, then greedy batched decode steps) and the comparison of its logits with the
// single-device run ("equal" as issue 14 defines it).
import { expect } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { OutOfMemoryError, RankFailedError } from '../lib/errors.js';
import { type Tensor, toArray } from '../lib/tensor.js';
import { loadModel } from '../lib/generate.js';
import { EP_TIMEOUT_MS } from '../lib/parallel/expert-parallel.js';

export const range = (a: number, b: number) => Array.from({ length: b - a }, (_, i) => a + i);

export function maxRelError(got: ArrayLike<number>, want: ArrayLike<number>) {
  let scale = 0,
    worst = 0;
  for (let i = 0; i < want.length; i++) scale = Math.max(scale, Math.abs(want[i]!));
  for (let i = 0; i < want.length; i++) {
    const e = Math.abs(got[i]! - want[i]!);
    if (!(e <= worst)) worst = e; // NaN counts as the worst
  }
  return worst / scale;
}

const readLogits = (r: { logits: Tensor }) => {
  const v = toArray(r.logits) as Float32Array;
  r.logits.dispose();
  return v;
};

/** Logits within `rel` of the largest, and the argmax equal in every row whose top-two gap exceeds the tolerance. */
export function expectEqualLogits(got: Float32Array, want: Float32Array, V: number, rel: number) {
  expect(got.length).toBe(want.length);
  let scale = 0;
  for (const x of want) scale = Math.max(scale, Math.abs(x));
  const err = maxRelError(got, want);
  if (!(err <= rel)) expect.fail(`logits differ by ${err} x max|logit| (allowed ${rel})`);
  for (let r = 0; r < want.length / V; r++) {
    const row = want.subarray(r * V, (r + 1) * V),
      g = got.subarray(r * V, (r + 1) * V);
    let best = 0,
      second = -Infinity;
    for (let i = 1; i < V; i++) if (row[i]! > row[best]!) best = i;
    for (let i = 0; i < V; i++) if (i !== best) second = Math.max(second, row[i]!);
    if (row[best]! - second > 2 * rel * scale) {
      let gb = 0;
      for (let i = 1; i < V; i++) if (g[i]! > g[gb]!) gb = i;
      expect(gb).toBe(best);
    }
  }
}

export const prompts = [
  [5, 17, 300, 2, 99, 41, 7],
  [260, 1, 3],
  [11, 12, 13, 14, 15, 16, 17, 18, 19],
];

/** runScript of the prompts on a fresh single-device model of `dir` (the run an expert-parallel one must equal). */
export async function singleDeviceScript(dir: string, steps: number, backend: 'cpu' | 'cuda' = 'cpu') {
  const single = await loadModel(dir, { backend, cacheDtype: 'f32', maxContext: 64 });
  try {
    return runScript(single, prompts, steps);
  } finally {
    single.dispose();
  }
}

/** A batch of prompts (batched prefill, every row's logits), then greedy batched decode steps; all logits. */
export function runScript(m: Awaited<ReturnType<typeof loadModel>>, ps: number[][], steps: number, next?: number[][]) {
  const e = m.engine,
    V = e.dims.vocab;
  const seqs = ps.map(() => e.newSequence());
  const out = [readLogits(e.forward(seqs, ps, { allLogits: true }))];
  const chosen: number[][] = [];
  for (let i = 0; i < steps; i++) {
    const prev = out[out.length - 1]!,
      rows = prev.length / V;
    const ends = i === 0 ? ps.map((_, b) => ps.slice(0, b + 1).reduce((a, p) => a + p.length, 0) - 1) : range(0, rows);
    const toks =
      next?.[i] ??
      ends.map(r => {
        let best = 0;
        for (let j = 1; j < V; j++) if (prev[r * V + j]! > prev[r * V + best]!) best = j;
        return best;
      });
    chosen.push(toks);
    out.push(
      readLogits(
        e.forward(
          seqs,
          toks.map(t => [t]),
        ),
      ),
    );
  }
  for (const s of seqs) s.release();
  return { out, chosen };
}

/**
 * A rank failing mid-step (issue 14): for each injected fault (out of memory, a failed dispatch
 * kernel, a dead peer that never sends), the batched prefill fails with a typed error and rolls
 * the sequences back; then the same model runs the script as if nothing had
 * happened (every rank usable, the abort flag lowered), equal to the single-device run.
 */
export function expectFailuresRecover(
  m: Awaited<ReturnType<typeof loadModel>>,
  want: ReturnType<typeof runScript>,
  rank: number,
  failedRank: RegExp,
) {
  const e = m.engine,
    group = e.expertParallel!;
  expect(group).not.toBeNull();
  for (const kind of ['oom', 'kernel', 'dead'] as const) {
    const seqs = prompts.map(() => e.newSequence());
    group.injectFault({ rank, kind });
    // a dead peer costs the others their wait budget: a short one here (restored below)
    if (kind === 'dead') group.timeoutMs = 200;
    let error: unknown = null;
    try {
      e.forward(seqs, prompts, { allLogits: true }).logits.dispose();
    } catch (err) {
      error = err;
    }
    group.timeoutMs = EP_TIMEOUT_MS;
    if (kind === 'oom') {
      expect(error).toBeInstanceOf(OutOfMemoryError);
      expect((error as Error).message).toMatch(new RegExp(`rank ${rank} .*ran out of memory`));
    } else if (kind === 'dead') {
      expect(error).toBeInstanceOf(RankFailedError);
      expect((error as Error).message).toMatch(
        new RegExp(`rank \\d+ timed out waiting for rank ${rank}'s dispatch \\(200 ms\\): the step failed`),
      );
    } else {
      expect(error).toBeInstanceOf(RankFailedError);
      expect((error as Error).message).toMatch(failedRank);
    }
    expect(seqs.map(s => s.length)).toEqual(prompts.map(() => 0));
    for (const s of seqs) s.release();
    const got = runScript(m, prompts, want.chosen.length, want.chosen);
    for (const [i, g] of got.out.entries()) expectEqualLogits(g, want.out[i]!, e.dims.vocab, 1e-5);
  }
}

/** A fake sysfs root at `dir` whose node directories list `nodes` (a cpulist text each; '' = a node
 *  without CPUs), for lib/parallel/numa.ts through LONGCAT_SYSFS_ROOT. */
export function fakeSysfs(dir: string, nodes: string[]): string {
  const base = path.join(dir, 'devices/system/node');
  fs.mkdirSync(base, { recursive: true });
  fs.writeFileSync(path.join(base, 'possible'), `0-${nodes.length - 1}\n`); // not a node directory
  for (const [i, list] of nodes.entries()) {
    fs.mkdirSync(path.join(base, `node${i}`), { recursive: true });
    fs.writeFileSync(path.join(base, `node${i}`, 'cpulist'), `${list}\n`);
  }
  return dir;
}

/** loadModel with LONGCAT_SYSFS_ROOT pointing at `sysfs` while it loads (restored after). */
export async function loadWithSysfs(sysfs: string, dir: string, opts: Parameters<typeof loadModel>[1]) {
  const saved = process.env.LONGCAT_SYSFS_ROOT;
  process.env.LONGCAT_SYSFS_ROOT = sysfs;
  try {
    return await loadModel(dir, opts);
  } finally {
    if (saved === undefined) delete process.env.LONGCAT_SYSFS_ROOT;
    else process.env.LONGCAT_SYSFS_ROOT = saved;
  }
}
