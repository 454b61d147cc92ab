// The setup of the whole-model test files (test/model*.test.ts, test/session*.test.ts, test/ep*.test.ts): random
// checkpoints in a temporary folder removed after the file, matmul precision 'highest' for the file
// (fp32 products, so that the fast path can be held to 1e-4 of the float64 reference), the
// helpers of lib/check/model-helpers.ts bound to lib/, and the logit checks the model tests share.
import { afterAll, beforeAll, expect } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { initRandom } from '../lib/init-random.js';
import { openCheckpoint } from '../lib/checkpoint.js';
import { loadModel, type Model } from '../lib/generate.js';
import { toArray, type Tensor } from '../lib/tensor.js';
import { native } from '../lib/native.js';
import { modelHelpers, type Engine } from '../lib/check/model-helpers.js';

export const { referenceLogits, readLogits, fullForward, prefillThenDecode } = modelHelpers({ openCheckpoint, toArray });

type Overrides = Parameters<typeof initRandom>[0]['overrides'] & object;

/**
 * Registers the file's setup (matmul precision 'highest', a temporary folder named from `prefix`
 * removed after the file) and returns the folder.
 */
export function fixtureRoot(prefix: string): string {
  const root = mkdtempSync(path.join(tmpdir(), prefix));
  let savedPrecision: ReturnType<typeof native.setMatmulPrecision>;
  beforeAll(() => {
    savedPrecision = native.setMatmulPrecision('highest');
  });
  afterAll(() => {
    native.setMatmulPrecision(savedPrecision);
    rmSync(root, { recursive: true, force: true });
  });
  return root;
}

/**
 * Registers the file's setup (fixtureRoot) and returns the maker of its checkpoints: the tiny
 * preset with `overrides`, seeded with `seed`, in a folder named `name`.
 */
export function checkpointFixture(prefix: string, seed: number) {
  const root = fixtureRoot(prefix);
  return async (name: string, overrides: Overrides = {}, fp8 = false) => {
    const dir = path.join(root, name);
    await initRandom({ preset: 'tiny', out: dir, seed, fp8, overrides });
    return dir;
  };
}

/**
 * Registers a beforeAll that writes the checkpoint `name` (with a checkpointFixture's maker) and
 * loads it on the CPU with `maxContext`, and an afterAll that disposes it: the tests read the model
 * as `.model` and its folder as `.dir`.
 */
export function cpuModelFixture(makeCheckpoint: (name: string) => Promise<string>, name: string, maxContext: number) {
  const loaded = { dir: '', model: null as unknown as Model };
  beforeAll(async () => {
    loaded.dir = await makeCheckpoint(name);
    loaded.model = await loadModel(loaded.dir, { backend: 'cpu', maxContext });
  });
  afterAll(() => loaded.model.dispose());
  return loaded;
}

/** Asserts every logit within `rel` x max|want| of `want`, naming the worst one. */
export function expectLogitsClose(got: ArrayLike<number>, want: ArrayLike<number>, rel: number, what = 'logits') {
  expect(got.length, what).toBe(want.length);
  let scale = 0,
    worst = 0,
    at = -1;
  for (let i = 0; i < want.length; i++) scale = Math.max(scale, Math.abs(want[i]!));
  for (let i = 0; i < want.length; i++) {
    const e = Math.abs(got[i]! - want[i]!);
    if (!(e <= worst)) {
      worst = e;
      at = i;
    }
  }
  expect(scale).toBeGreaterThan(0);
  if (!(worst <= rel * scale))
    expect.fail(`${what} ${at}: ${got[at]} vs ${want[at]} (max error ${worst}, allowed ${rel * scale})`);
}

/**
 * Batched == single: a batched prefill of `prompts` (sequences of different lengths), then one
 * batched decode step of `next` (a token per sequence); each sequence's row of that step within
 * `rel` of the same prefill and decode run alone.
 */
export function expectBatchedDecodeEqualsSingle<S extends { release(): void }>(
  e: Engine<S, Tensor>,
  prompts: number[][],
  next: number[],
  rel: number,
) {
  const batch = prompts.map(() => e.newSequence());
  readLogits(e.forward(batch, prompts));
  const together = readLogits(
    e.forward(
      batch,
      next.map(t => [t]),
    ),
  );
  for (const s of batch) s.release();
  const V = e.dims.vocab;
  prompts.forEach((p, b) => {
    const s = e.newSequence();
    readLogits(e.forward([s], [p]));
    const alone = readLogits(e.forward([s], [[next[b]!]]));
    s.release();
    expectLogitsClose(together.subarray(b * V, (b + 1) * V), alone, rel, `sequence ${b}`);
  });
}
