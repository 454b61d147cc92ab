// The fp8 latent KV cache (cacheDtype 'fp8', FlashMLA's quantized rows: native/cpu/mla.h) in the whole
// model, on the CPU and on the CUDA device (emulated in CI): against the same model with an f32
// cache, prefill + decode == full forward, greedy tokens, the KV memory it reports, typed errors.
//
// Tolerance against the f32-cache model, derived: the cache is the only difference (matmul precision
// 'highest' for the file: fp32 products everywhere else). Each stored latent value is off by at most
// 2^-4 of itself plus 2^-10 of its group's scale (e4m3 round to nearest; test/attention.test.ts
// checks it per element), so at most 2^-4 (1 + 2^-6 / 448 ...) of its group's largest value: every
// key and value row of every attention sub-layer moves by at most u = 2^-4 relative to its own size
// (the rope key, bf16, by 2^-9). An attention output is a convex combination of value rows, so it
// moves by at most u of the largest value row plus what the scores move (|ds| <= u |s|, scores of
// these random models O(1)); the output projections, the residual stream (which the attention only
// adds to) and the scale-invariant RMS norms carry that to the logits without amplifying it (to first
// order). Stated bound: every logit within u = 2^-4 of the largest |logit| of the f32-cache model.
// Greedy tokens follow from it where the f32 model's margin (best over runner-up) exceeds 2 u max|logit|:
// the checkpoints are init-random's agreement models (margins ~16 on logits ~32, README), and the
// test checks the margin before it compares tokens. Prefill + decode against a full forward under the
// fp8 cache read the same stored values on both sides (prefill gathers the dequantized latents), so
// they are held to the fp32 tolerance of the bf16-cache test (test/model.test.ts), 1e-4.
// Measured on these checkpoints (CPU, full forward, every position): 2.3e-4 x max|logit| (bf16 cache:
// 1.6e-5). The first-order argument needs a model that is not chaotic: the plain random tiny
// checkpoint (no agreement) amplifies it, 0.33 x max|logit| with bf16 weights (its layer-0 caches err
// by 2^-5 of their largest value, within the e4m3 bound, but layer 1's inputs already differ by ~25%),
// so it is not used for this comparison.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import path from 'node:path';
import { initRandom } from '../lib/init-random.js';
import { loadModel, type Model } from '../lib/generate.js';
import { LongcatError } from '../lib/errors.js';
import { cudaAvailable } from './helpers.js';
import { expectLogitsClose, fixtureRoot, fullForward, prefillThenDecode, readLogits } from './model-fixture.js';

const root = fixtureRoot('longcat-fp8kv-');
const U_FP8_CACHE = 2 ** -4;
const prompt = [5, 17, 300, 2, 99, 41, 7, 260, 1, 3, 511, 64, 8];
const backends = cudaAvailable ? (['cpu', 'cuda'] as const) : (['cpu'] as const);

/** kv_lora_rank 256 (two 128-value groups per token), rope 8: 280-byte fp8 rows against 528 in bf16. */
const overrides = { kv_lora_rank: 256 };

function argmax(v: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < v.length; i++) if (v[i]! > v[best]!) best = i;
  return best;
}

for (const fp8Weights of [false, true]) {
  const preset = fp8Weights ? 'tiny-fp8' : 'tiny';
  for (const backend of backends)
    describe(`${preset} (kv_lora_rank 256) on ${backend}: fp8 latent cache`, () => {
      const models = { f32: null as unknown as Model, fp8: null as unknown as Model };
      beforeAll(async () => {
        const dir = path.join(root, `${preset}-${backend}`);
        await initRandom({ preset: 'tiny', out: dir, seed: 5, fp8: fp8Weights, mtp: true, draftAgreement: 0.9, overrides });
        models.f32 = await loadModel(dir, { backend, cacheDtype: 'f32', maxContext: 128 });
        models.fp8 = await loadModel(dir, { backend, cacheDtype: 'fp8', maxContext: 128 });
      });
      afterAll(() => {
        models.f32?.dispose();
        models.fp8?.dispose();
      });

      it('allocates fp8_e4m3 caches of 280-byte rows', () => {
        const e = { caches: models.fp8.engine.kvCaches() };
        expect(e.caches.length).toBeGreaterThan(0);
        for (const c of e.caches) {
          expect(c.dtype).toBe('fp8_e4m3');
          expect(c.shape[2]).toBe(256 + 8 + 2 * 8);
        }
      });

      it(`logits within ${U_FP8_CACHE} x max|logit| of the f32-cache model (prefill and decode)`, () => {
        const want = fullForward(models.f32.engine, prompt);
        expectLogitsClose(fullForward(models.fp8.engine, prompt), want, U_FP8_CACHE, 'full forward');
        expectLogitsClose(prefillThenDecode(models.fp8.engine, prompt, 5), want, U_FP8_CACHE, 'prefill + decode');
        // the cache really is quantized: not the f32 model's logits to the bit
        expect(Array.from(fullForward(models.fp8.engine, prompt))).not.toEqual(Array.from(want));
      });

      it('prefill + decode steps equal one full forward under the fp8 cache (1e-4)', () => {
        const all = fullForward(models.fp8.engine, prompt);
        expectLogitsClose(prefillThenDecode(models.fp8.engine, prompt, 4), all, 1e-4);
        expectLogitsClose(prefillThenDecode(models.fp8.engine, prompt, 1), all, 1e-4);
      });

      it('greedy decoding gives the f32-cache model tokens for 10 steps', () => {
        const run = (m: Model, check?: (logits: Float32Array) => void) => {
          const e = m.engine;
          const seq = e.newSequence();
          try {
            const out: number[] = [];
            let logits = readLogits(e.forward([seq], [prompt]));
            for (let i = 0; i < 10; i++) {
              check?.(logits);
              const t = argmax(logits);
              out.push(t);
              logits = readLogits(e.forward([seq], [[t]]));
            }
            return out;
          } finally {
            seq.release();
          }
        };
        let smallestMargin = Infinity;
        const want = run(models.f32, l => {
          const best = argmax(l);
          let scale = 0,
            second = -Infinity;
          for (let i = 0; i < l.length; i++) {
            scale = Math.max(scale, Math.abs(l[i]!));
            if (i !== best) second = Math.max(second, l[i]!);
          }
          smallestMargin = Math.min(smallestMargin, (l[best]! - second) / (2 * U_FP8_CACHE * scale));
        });
        // the bound cannot flip the greedy token: a margin over twice the allowed error at every step
        expect(smallestMargin).toBeGreaterThan(1);
        expect(run(models.fp8)).toEqual(want);
      });
    });
}

describe('fp8 latent cache: options and memory', () => {
  const dirs = { k32: '', k256: '' };
  beforeAll(async () => {
    dirs.k32 = path.join(root, 'kv32');
    dirs.k256 = path.join(root, 'kv256');
    await initRandom({ preset: 'tiny', out: dirs.k32, seed: 3 });
    await initRandom({ preset: 'tiny', out: dirs.k256, seed: 3, overrides });
  });

  it('a kv_lora_rank that is not a multiple of 128 is a typed error before any weight is read', async () => {
    const e = await loadModel(dirs.k32, { backend: 'cpu', cacheDtype: 'fp8' }).then(
      () => null,
      (x: unknown) => x,
    );
    expect(e).toBeInstanceOf(LongcatError);
    expect((e as LongcatError).code).toBe('E_ARGUMENT');
    expect((e as Error).message).toMatch(/cacheDtype 'fp8' needs kv_lora_rank to be a multiple of 128 .* got 32 and 8/);
  });

  it('the KV OOM message gives the bytes per token of the format and of the smaller ones', async () => {
    const oom = async (cacheDtype: 'f32' | 'bf16' | 'fp8') =>
      (await loadModel(dirs.k256, { backend: 'cpu', maxContext: 64, cacheBlocks: 2 ** 30, cacheDtype }).then(
        () => null,
        (x: unknown) => x,
      )) as LongcatError;
    const f32 = await oom('f32');
    expect(f32.code).toBe('E_OOM');
    expect(f32.message).toMatch(
      /x 264 f32 = [\d.]+ GiB \(1056 bytes per token and cache; bf16 528, fp8 280\).*\(or cacheDtype 'bf16' or 'fp8'\)/,
    );
    const bf16 = await oom('bf16');
    expect(bf16.message).toMatch(/x 264 bf16 = [\d.]+ GiB \(528 bytes per token and cache; fp8 280\).*\(or cacheDtype 'fp8'\)/);
    const fp8 = await oom('fp8');
    expect(fp8.code).toBe('E_OOM');
    expect(fp8.message).toMatch(
      /x 280 fp8 = [\d.]+ GiB \(280 bytes per token and cache\)\. Pass a smaller cacheBlocks or maxContext\.$/,
    );
  });
});
