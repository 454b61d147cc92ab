// Continuous batching (lib/scheduler.ts): concurrent sessions' decode steps run as one batched
// forward, and each generation equals the same request run alone -- greedy and sampled, plain and
// speculative, sessions joining and leaving at different times -- and a long prompt is prefilled a
// chunk per round while the other streams keep getting tokens.
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initRandom } from '../lib/init-random.js';
import { loadModel, type GenerateOptions, type Model } from '../lib/generate.js';
import { native } from '../lib/native.js';
import { fixtureRoot } from './model-fixture.js';

const root = fixtureRoot('longcat-scheduler-');
let model: Model;
let prev: string;
beforeAll(async () => {
  const dir = path.join(root, 'tiny');
  await initRandom({ preset: 'tiny', out: dir, seed: 4, mtp: true, draftAgreement: 0.5 });
  // fp32 products: a row's logits then agree between batch sizes far below the top-two gaps
  prev = native.setMatmulPrecision('highest');
  model = await loadModel(dir, { backend: 'cpu', maxContext: 1024 });
});
afterAll(() => {
  model.dispose();
  native.setMatmulPrecision(prev as 'highest');
});

interface Request {
  prompt: string;
  o: GenerateOptions;
}
const requests: Request[] = [
  { prompt: 'the first stream', o: { maxTokens: 30 } },
  { prompt: 'a second, longer prompt for the second stream', o: { maxTokens: 12 } },
  { prompt: 'third', o: { maxTokens: 25, temperature: 0.9, topK: 20, seed: 7 } },
  { prompt: 'the fourth one', o: { maxTokens: 20, speculative: true } },
  { prompt: 'fifth, sampled and speculative', o: { maxTokens: 18, temperature: 0.8, topP: 0.9, seed: 3, speculative: true } },
  // greedy rows after a sampled one, with other settings: their own sampler calls in the batched step
  { prompt: 'sixth, greedy after a sampled one', o: { maxTokens: 14, topK: 5 } },
  { prompt: 'seventh, greedy with penalties and logprobs', o: { maxTokens: 10, repetitionPenalty: 1.3, logprobs: 2 } },
];

async function alone(r: Request) {
  using s = model.createSession();
  const g = await s.generate(r.prompt, r.o);
  return { tokens: g.tokens, logprobs: g.logprobs };
}

describe('continuous batching', () => {
  it('concurrent generations (greedy, sampled, speculative) each equal the same request run alone, in batched steps', async () => {
    const want: Awaited<ReturnType<typeof alone>>[] = [];
    for (const r of requests) want.push(await alone(r));
    const before = { ...model.scheduler.stats };
    const sessions = requests.map(() => model.createSession());
    const got = await Promise.all(requests.map((r, i) => sessions[i]!.generate(r.prompt, r.o)));
    for (const s of sessions) s.dispose();
    expect(got.map(g => g.tokens)).toEqual(want.map(w => w.tokens));
    // log-probabilities: the same tokens; values to f32 rounding (a batched step's logits differ
    // from the same row alone in the last bits)
    expect(got[6]!.logprobs).toHaveLength(10);
    got.forEach((g, i) => {
      const w = want[i]!.logprobs;
      expect(g.logprobs?.map(l => [l.token, l.top.map(t => t.token)])).toEqual(w?.map(l => [l.token, l.top.map(t => t.token)]));
      g.logprobs?.forEach((l, j) => {
        expect(l.logprob).toBeCloseTo(w![j]!.logprob, 4);
        for (const [m, t] of l.top.entries()) expect(t.logprob).toBeCloseTo(w![j]!.top[m]!.logprob, 4);
      });
    });
    const st = model.scheduler.stats;
    // the plain streams shared decode steps: fewer steps than rows, and batches of 3 at the start
    expect(st.decodeRows - before.decodeRows).toBeGreaterThan(st.decodeSteps - before.decodeSteps);
    expect(st.largestBatch).toBeGreaterThanOrEqual(3);
    expect(st.speculativeRows - before.speculativeRows).toBeGreaterThan(st.speculativeSteps - before.speculativeSteps);
    expect(model.engine.allocator.inUse).toBe(0);
  });

  it("sessions joining while others run, and leaving early (abort, maxTokens), do not change anyone's tokens", async () => {
    const want = await alone(requests[0]!);
    const a = model.createSession(),
      c = model.createSession();
    const ac = new AbortController();
    // c streams alongside and is aborted after its second chunk of text
    const aborted = (async () => {
      const gC = c.generate('to be aborted', { maxTokens: 100, signal: ac.signal });
      let n = 0;
      for await (const _ of gC) if (++n === 2) ac.abort();
      return (await gC).stopReason;
    })();
    let seen = 0;
    const gA = a.generate(requests[0]!.prompt, requests[0]!.o);
    const joined: ReturnType<typeof alone>[] = [];
    for await (const _ of gA) if (++seen === 3) joined.push(alone(requests[1]!));
    expect(await aborted).toBe('abort');
    expect((await gA).tokens).toEqual(want.tokens);
    expect(await joined[0]).toEqual(await alone(requests[1]!));
    a.dispose();
    c.dispose();
    expect(model.engine.allocator.inUse).toBe(0); // every session's blocks back, the aborted one's too
  });

  it('a long prompt is prefilled one chunk per round while a running stream keeps getting tokens', async () => {
    using a = model.createSession();
    using b = model.createSession();
    const events: string[] = [];
    const long = Array.from({ length: 120 }, (_, i) => `word${i % 17}`).join(' ');
    const gA = a.generate('the running stream', { maxTokens: 60 });
    let started = false;
    let gB: Promise<unknown> | null = null;
    for await (const _ of gA) {
      events.push('a');
      if (!started && events.length >= 2) {
        started = true;
        gB = b
          .generate(long, {
            maxTokens: 1,
            prefillChunk: 16,
            onPrefillChunk: p => events.push(p.done < p.total ? 'chunk' : 'done'),
          })
          .then(r => r);
      }
    }
    await gB;
    // while the running stream ran, it got a token between every two chunks of the long prompt
    const first = events.indexOf('chunk'),
      end = Math.min(events.lastIndexOf('chunk'), events.lastIndexOf('a'));
    const during = events.slice(first, end + 1);
    expect(during.filter(e => e === 'chunk').length).toBeGreaterThanOrEqual(5);
    expect(during.join(',').includes('chunk,chunk')).toBe(false);
  });
});

describe('token-level prompts', () => {
  it('generate({ tokens }) continues the ids as they are: == the text prompt that encodes to them', async () => {
    const text = 'the first stream';
    const ids = model.tokenizer.encode(text);
    using a = model.createSession();
    using b = model.createSession();
    const byText = await a.generate(text, { maxTokens: 8 });
    const byIds = await b.generate({ tokens: ids }, { maxTokens: 8 });
    expect(byIds.tokens).toEqual(byText.tokens);
    expect(byIds.promptTokens).toBe(ids.length);
    const V = model.engine.dims.vocab;
    await expect(b.generate({ tokens: [1, V] })).rejects.toMatchObject({
      code: 'E_ARGUMENT',
      message: expect.stringContaining('tokens[1]'),
    });
    await expect(b.generate({ tokens: 'x' } as never)).rejects.toMatchObject({ code: 'E_ARGUMENT' });
  });
});

describe("the scheduler's wait (LongcatModel.synchronizeAsync)", () => {
  // the engine's private part this exercises: its check of the weights' backing
  interface Inside {
    verifyWeights: (() => void) | undefined;
  }
  /** Until the scheduler's loop has gone idle (a generation resolves before its last round ends). */
  const idle = async () => {
    const sched = model.scheduler as unknown as { running: boolean };
    while (sched.running) await new Promise(r => setImmediate(r));
  };
  const step = (seq: ReturnType<Model['engine']['newSequence']>, token: number) => {
    const { logits } = model.engine.forward([seq], [[token]]);
    const v = Array.from(logits.toBytes());
    logits.dispose();
    return v;
  };

  it('checks the weights for the next step while one runs: that step skips its own check, the one after does its own', async () => {
    const e = model.engine,
      inside = e as unknown as Inside;
    const check = inside.verifyWeights;
    let checks = 0;
    inside.verifyWeights = () => {
      checks++;
      check?.();
    };
    const seq = e.newSequence(),
      other = e.newSequence();
    await idle();
    try {
      e.forward([seq], [[1, 2, 3]]).logits.dispose();
      expect(checks).toBe(1);
      e.forward([seq], [[4]]).logits.dispose();
      await e.synchronizeAsync(); // the check of the step to come, during this one
      expect(checks).toBe(3);
      const skipped = step(seq, 5);
      expect(checks).toBe(3);
      step(seq, 6); // nothing awaited since: a check of its own
      expect(checks).toBe(4);
      // a step set up while the wait ran voids the wait's check
      e.forward([other], [[7, 8]]).logits.dispose();
      const wait = e.synchronizeAsync();
      e.forward([other], [[9]]).logits.dispose();
      await wait;
      let n = checks;
      step(seq, 7);
      expect(checks).toBe(n + 1);
      // forget(): the next step checks itself
      await e.synchronizeAsync();
      e.forget();
      n = checks;
      step(seq, 8);
      expect(checks).toBe(n + 1);
      // the step that skipped its check computed what a fresh sequence computes with it
      const fresh = e.newSequence();
      try {
        e.forward([fresh], [[1, 2, 3]]).logits.dispose();
        e.forward([fresh], [[4]]).logits.dispose();
        expect(step(fresh, 5)).toEqual(skipped);
      } finally {
        fresh.release();
      }
    } finally {
      inside.verifyWeights = check;
      seq.release();
      other.release();
    }
  });

  it('a failed check during the wait does not reject it: the next step runs its own and raises it', async () => {
    const e = model.engine,
      inside = e as unknown as Inside;
    const check = inside.verifyWeights;
    let broken = false;
    inside.verifyWeights = () => {
      if (broken) throw new Error('the weights changed on disk');
      check?.();
    };
    const seq = e.newSequence();
    await idle();
    try {
      e.forward([seq], [[1, 2]]).logits.dispose();
      broken = true;
      await expect(e.synchronizeAsync()).resolves.toBeUndefined();
      expect(() => e.forward([seq], [[3]])).toThrow('the weights changed on disk');
      expect(seq.length).toBe(2); // the failed step reserved nothing
      broken = false;
      expect(step(seq, 3)).toHaveLength(e.dims.vocab * 4);
    } finally {
      inside.verifyWeights = check;
      seq.release();
    }
  });

  it('the scheduler forgets what its last wait saw when it goes idle', async () => {
    const e = model.engine,
      inside = e as unknown as Inside;
    const check = inside.verifyWeights;
    let checks = 0;
    inside.verifyWeights = () => {
      checks++;
      check?.();
    };
    try {
      using s = model.createSession();
      await s.generate('an idle scheduler', { maxTokens: 3 });
      await idle();
      const seq = e.newSequence();
      try {
        const n = checks;
        step(seq, 1); // after the scheduler went idle: checked by the step itself
        expect(checks).toBe(n + 1);
      } finally {
        seq.release();
      }
    } finally {
      inside.verifyWeights = check;
    }
  });
});
