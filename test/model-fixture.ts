// The setup of the whole-model test files (test/model.test.ts, test/model-long.test.ts): random
// checkpoints in a temporary folder removed after the file, matmul precision 'highest' for the file
// (fp32 products, so that the fast path can be held to 1e-4 of the float64 reference), and the
// helpers of test/model-helpers.ts bound to lib/.
import { afterAll, beforeAll } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { initRandom } from '../lib/init-random.js';
import { openCheckpoint } from '../lib/checkpoint.js';
import { toArray } from '../lib/tensor.js';
import { native } from '../lib/native.js';
import { modelHelpers } from './model-helpers.js';

export const { referenceLogits, readLogits, fullForward, prefillThenDecode } = modelHelpers({ openCheckpoint, toArray });

type Overrides = Parameters<typeof initRandom>[0]['overrides'] & object;

/**
 * Registers the file's setup and returns the maker of its checkpoints: the tiny preset with
 * `overrides`, seeded with `seed`, in a folder named `name`.
 */
export function checkpointFixture(prefix: string, seed: number) {
  const root = mkdtempSync(path.join(tmpdir(), prefix));
  let savedPrecision: ReturnType<typeof native.setMatmulPrecision>;
  beforeAll(() => {
    savedPrecision = native.setMatmulPrecision('highest');
  });
  afterAll(() => {
    native.setMatmulPrecision(savedPrecision);
    rmSync(root, { recursive: true, force: true });
  });
  return async (name: string, overrides: Overrides = {}, fp8 = false) => {
    const dir = path.join(root, name);
    await initRandom({ preset: 'tiny', out: dir, seed, fp8, overrides });
    return dir;
  };
}
