// The SDK's sampler options (lib/sampling.ts through Session.generate and the StepScheduler):
// logitBias, repetition / presence / frequency penalties and logprobs checked step by step against
// JS references over Model.forward's logits, stopTokenIds, ignoreEos, batched sessions with
// different settings equal to each alone, and the typed errors of bad options.
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initRandom } from '../lib/init-random.js';
import { loadModel, type GenerateOptions, type GenerateResult, type Model } from '../lib/generate.js';
import { native } from '../lib/native.js';
import { fixtureRoot } from './model-fixture.js';
import { cudaAvailable, rejects } from './helpers.js';
import { argmaxRef, logprobsRef, penalizeRef } from '../lib/check/sampling-reference.js';

const root = fixtureRoot('longcat-sampler-');
let model: Model;
let prev: string;
const prompt = 'the sampler options of a session';
beforeAll(async () => {
  await initRandom({ preset: 'tiny', out: path.join(root, 'tiny'), seed: 17 });
  // fp32 products: the decode steps' logits agree with Model.forward's far below the top-two gaps
  prev = native.setMatmulPrecision('highest');
  model = await loadModel(path.join(root, 'tiny'), { backend: 'cpu', maxContext: 512 });
});
afterAll(() => {
  model.dispose();
  native.setMatmulPrecision(prev as 'highest');
});

async function run(o: GenerateOptions, m = model, text = prompt): Promise<GenerateResult> {
  using s = m.createSession();
  return await s.generate(text, o);
}

/** The raw logits after prompt + tokens[0..i) for every i (Model.forward of the whole sequence). */
function stepLogits(tokens: number[], text = prompt, m = model): Float32Array[] {
  const ids = m.tokenizer.encode(text);
  const V = m.engine.dims.vocab;
  const all = m.forward([...ids, ...tokens]);
  return tokens.map((_, i) => all.subarray((ids.length + i - 1) * V, (ids.length + i) * V));
}

describe('generate: sampler options', () => {
  it('logitBias +100 forces a token, -100 bans the greedy one', async () => {
    const plain = await run({ maxTokens: 6 });
    const forced = plain.tokens.includes(7) ? 8 : 7;
    const f = await run({ maxTokens: 6, logitBias: { [forced]: 100 } });
    expect(f.tokens).toEqual(new Array(6).fill(forced));
    const banned = plain.tokens[0]!;
    const b = await run({ maxTokens: 1, logitBias: { [banned]: -100 } });
    const row = Float32Array.from(stepLogits([banned])[0]!);
    row[banned] = -Infinity;
    expect(b.tokens).toEqual([argmaxRef(row)]);
  });

  it('repetition / presence / frequency penalties change exactly what the reference over the logits says', async () => {
    // the second prompt holds the tokens the model generates: the prompt's part of the history matters
    const decodable = (t: number) => {
      try {
        return model.tokenizer.decode([t]);
      } catch {
        return ''; // a model id beyond the tokenizer's vocabulary
      }
    };
    const repeats = prompt + (await run({ maxTokens: 24 })).tokens.map(decodable).join('');
    let changed = 0;
    for (const [text, o] of [prompt, repeats].flatMap(t =>
      (
        [
          { repetitionPenalty: 1.8 },
          { presencePenalty: 1.5, frequencyPenalty: 0.7 },
          { repetitionPenalty: 0.6, frequencyPenalty: -0.4, logitBias: { 3: 2.5 } },
        ] as GenerateOptions[]
      ).map(o => [t, o] as const),
    )) {
      const ids = model.tokenizer.encode(text);
      const got = await run({ maxTokens: 12, ...o }, model, text);
      const bias = Object.entries(o.logitBias ?? {}).map(([k, v]) => [Number(k), v] as [number, number]);
      stepLogits(got.tokens, text).forEach((row, i) => {
        const p = penalizeRef(row, {
          history: [...ids, ...got.tokens.slice(0, i)],
          promptLength: ids.length,
          repetition: o.repetitionPenalty ?? 1,
          presence: o.presencePenalty ?? 0,
          frequency: o.frequencyPenalty ?? 0,
          bias,
        });
        expect(got.tokens[i], `${JSON.stringify(o)} step ${i}`).toBe(argmaxRef(p));
        if (argmaxRef(p) !== argmaxRef(row)) changed++;
      });
    }
    expect(changed, 'the penalties changed some greedy choices').toBeGreaterThan(0);
  });

  it("logprobs of a greedy run equal the log-softmax of the model's logits (raw: also under penalties)", async () => {
    for (const o of [{ logprobs: 5 }, { logprobs: 0 }, { logprobs: 20, presencePenalty: 2, repetitionPenalty: 1.3 }]) {
      const got = await run({ maxTokens: 8, ...o });
      expect(got.logprobs).toHaveLength(got.tokens.length);
      stepLogits(got.tokens).forEach((row, i) => {
        const want = logprobsRef(row, got.tokens[i]!, o.logprobs);
        const lp = got.logprobs![i]!;
        expect(lp.token).toBe(got.tokens[i]);
        expect(Math.abs(lp.logprob - want.chosen), `step ${i}`).toBeLessThan(1e-5);
        expect(lp.top.map(t => t.token)).toEqual(want.ids);
        lp.top.forEach((t, j) => {
          expect(Math.abs(t.logprob - want.top[j]!), `step ${i} top ${j}`).toBeLessThan(1e-5);
        });
        if (o.logprobs > 0 && o.presencePenalty === undefined) expect(lp.top[0]!.token).toBe(lp.token); // greedy
      });
    }
    expect((await run({ maxTokens: 2 })).logprobs).toBeUndefined();
  });

  it("stopTokenIds end the generation with stopReason 'stop', without the token", async () => {
    const t = (await run({ maxTokens: 10 })).tokens;
    const k = t.findIndex((x, i) => i > 0 && !t.slice(0, i).includes(x));
    expect(k).toBeGreaterThan(0);
    const r = await run({ maxTokens: 10, stopTokenIds: [t[k]!, 99999 % model.engine.dims.vocab] });
    expect(r.tokens).toEqual(t.slice(0, k));
    expect(r.stopReason).toBe('stop');
  });

  it('ignoreEos continues past an end-of-sequence token', async () => {
    const t = (await run({ maxTokens: 10 })).tokens;
    const k = t.findIndex((x, i) => i > 0 && !t.slice(0, i).includes(x));
    const dir = path.join(root, 'tiny-eos');
    await initRandom({ preset: 'tiny', out: dir, seed: 17 });
    const gc = path.join(dir, 'generation_config.json');
    writeFileSync(gc, JSON.stringify({ ...JSON.parse(readFileSync(gc, 'utf8')), eos_token_id: t[k] }));
    using eos = await loadModel(dir, { backend: 'cpu', maxContext: 512 });
    const stopped = await run({ maxTokens: 10 }, eos);
    expect(stopped.stopReason).toBe('eos');
    expect(stopped.tokens).toEqual(t.slice(0, k));
    const past = await run({ maxTokens: 10, ignoreEos: true }, eos);
    expect(past.tokens).toEqual(t);
    expect(past.stopReason).toBe('length');
  });

  it('concurrent sessions with different settings each equal the same request run alone', async () => {
    const requests: GenerateOptions[] = [
      { maxTokens: 10, logprobs: 3 },
      { maxTokens: 12, repetitionPenalty: 1.5, presencePenalty: 0.5 },
      { maxTokens: 9, temperature: 0.9, seed: 5, frequencyPenalty: 1, logitBias: { 4: 3, 9: -2 }, logprobs: 2 },
      { maxTokens: 11 },
      { maxTokens: 8, temperature: 0.7, topK: 30, seed: 2, stopTokenIds: [11] },
    ];
    const want: GenerateResult[] = [];
    for (const o of requests) want.push(await run(o));
    const before = { ...model.scheduler.stats };
    const got = await Promise.all(requests.map(o => run(o)));
    expect(model.scheduler.stats.largestBatch).toBeGreaterThanOrEqual(3);
    expect(model.scheduler.stats.decodeRows - before.decodeRows).toBeGreaterThan(
      model.scheduler.stats.decodeSteps - before.decodeSteps,
    );
    got.forEach((g, i) => {
      expect(g.tokens, `request ${i}`).toEqual(want[i]!.tokens);
      expect(g.stopReason).toBe(want[i]!.stopReason);
      expect(g.logprobs?.length).toBe(want[i]!.logprobs?.length);
      g.logprobs?.forEach((lp, j) => {
        const w = want[i]!.logprobs![j]!;
        expect(lp.top.map(t => t.token)).toEqual(w.top.map(t => t.token));
        expect(Math.abs(lp.logprob - w.logprob)).toBeLessThan(1e-5);
      });
    });
  });

  it('rejects bad options with typed errors naming them', async () => {
    const V = model.engine.dims.vocab;
    const bad: [GenerateOptions, RegExp][] = [
      [{ repetitionPenalty: 0 }, /repetitionPenalty/],
      [{ repetitionPenalty: Infinity }, /repetitionPenalty/],
      [{ presencePenalty: 2.5 }, /presencePenalty/],
      [{ frequencyPenalty: Number.NaN }, /frequencyPenalty/],
      [{ logitBias: { [V]: 1 } }, /logitBias key/],
      [{ logitBias: { '-1': 1 } }, /logitBias key/],
      [{ logitBias: { 1: 101 } }, /logitBias\[1\]/],
      [{ logitBias: [] as unknown as Record<number, number> }, /logitBias/],
      [{ logprobs: 21 }, /logprobs/],
      [{ logprobs: 1.5 }, /logprobs/],
      [{ stopTokenIds: [1, V] }, /stopTokenIds\[1\]/],
      [{ stopTokenIds: 3 as unknown as number[] }, /stopTokenIds/],
      [{ ignoreEos: 1 as unknown as boolean }, /ignoreEos/],
    ];
    for (const [o, m] of bad) await rejects(run(o), 'E_ARGUMENT', m);
  });

  it('rejects penalties, logitBias and logprobs with speculative decoding, naming them', async () => {
    const dir = path.join(root, 'tiny-mtp');
    await initRandom({ preset: 'tiny', out: dir, seed: 3, mtp: true });
    using m = await loadModel(dir, { backend: 'cpu', maxContext: 512 });
    await rejects(run({ speculative: true, logprobs: 2 }, m), 'E_ARGUMENT', /speculative/, /logprobs/);
    await rejects(
      run({ speculative: true, presencePenalty: 1, logitBias: { 1: 1 } }, m),
      'E_ARGUMENT',
      /presencePenalty, logitBias/,
    );
    expect((await run({ speculative: true, maxTokens: 3, stopTokenIds: [1], ignoreEos: true }, m)).tokens.length).toBeGreaterThan(
      0,
    );
  });
});

// The same options on the CUDA backend (or its emulator): the rows are penalised, sampled and
// scored on the device, each step checked against the references over that model's own logits.
describe.skipIf(!cudaAvailable)('generate: sampler options on CUDA', () => {
  it('penalties + logitBias + logprobs, greedy, against the references', async () => {
    using m = await loadModel(path.join(root, 'tiny'), { backend: 'cuda', cacheDtype: 'f32', maxContext: 64 });
    const ids = m.tokenizer.encode(prompt);
    const o = {
      maxTokens: 5,
      repetitionPenalty: 1.6,
      presencePenalty: 0.8,
      frequencyPenalty: 0.3,
      logitBias: { 6: 1.5 },
      logprobs: 4,
    };
    const got = await run(o, m);
    expect(got.tokens).toHaveLength(5);
    stepLogits(got.tokens, prompt, m).forEach((row, i) => {
      const p = penalizeRef(row, {
        history: [...ids, ...got.tokens.slice(0, i)],
        promptLength: ids.length,
        repetition: o.repetitionPenalty,
        presence: o.presencePenalty,
        frequency: o.frequencyPenalty,
        bias: [[6, 1.5]],
      });
      expect(got.tokens[i], `step ${i}`).toBe(argmaxRef(p));
      const want = logprobsRef(row, got.tokens[i]!, 4);
      const lp = got.logprobs![i]!;
      expect(Math.abs(lp.logprob - want.chosen), `step ${i}`).toBeLessThan(1e-4);
      expect(lp.top.map(t => t.token)).toEqual(want.ids);
    });
  });
});
