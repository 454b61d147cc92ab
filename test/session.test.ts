// Session and engine paths the model tests did not reach: stop strings (one and several, across
// token boundaries, streamed), topK / topP / minP through a session, and decode graphs replayed
// across changing batch sizes while the sequences grow into new KV blocks.
import { describe, expect, it } from 'vitest';
import { LongcatModel } from '../lib/model/model.js';
import { toArray, type Tensor } from '../lib/tensor.js';
import { checkpointFixture, cpuModelFixture } from './model-fixture.js';

const makeCheckpoint = checkpointFixture('longcat-session-', 21);
const tiny = cpuModelFixture(makeCheckpoint, 'tiny', 512);

const prompt = 'Once upon a time, in a valley of 42 sheep,';

async function collect(g: AsyncIterable<string> & PromiseLike<{ text: string; stopReason: string }>) {
  let streamed = '';
  for await (const c of g) streamed += c;
  return { streamed, result: await g };
}

describe('stop strings', () => {
  it('end the text before the first occurrence of the earliest stop, streamed and returned alike', async () => {
    using s = tiny.model.createSession();
    const free = await s.generate(prompt, { maxTokens: 40 });
    expect(free.text.length, 'the tiny model writes enough text to cut').toBeGreaterThan(12);
    // A stop string that straddles two generated tokens (at its first occurrence; ASCII, so the
    // streaming decoder holds nothing back for UTF-8), so streaming must keep the first half until
    // the next token shows whether the stop completes.
    const ends = free.tokens.map(
      (_, i) => tiny.model.tokenizer.decode(free.tokens.slice(0, i + 1).filter(t => t < tiny.model.tokenizer.vocabSize)).length,
    );
    const b = ends.find(
      (e, i) =>
        i > 0 &&
        e > 1 &&
        e < free.text.length &&
        ends[i - 1]! < e &&
        /^[\x21-\x7e]{2}$/.test(free.text.slice(e - 1, e + 1)) &&
        free.text.indexOf(free.text.slice(e - 1, e + 1)) === e - 1,
    );
    expect(b, 'a token boundary to straddle').toBeDefined();
    const stopAt = free.text.slice(b! - 1, b! + 1);
    const first = free.text.indexOf(stopAt);
    for (const stop of [[stopAt], ['\u0000never', stopAt], [free.text.slice(first, first + 1), stopAt]]) {
      using t = tiny.model.createSession();
      const { streamed, result } = await collect(t.generate(prompt, { maxTokens: 40, stop }));
      const cut = Math.min(...stop.map(x => free.text.indexOf(x)).filter(i => i >= 0));
      expect(result.text, JSON.stringify(stop)).toBe(free.text.slice(0, cut));
      expect(result.stopReason).toBe('stop');
      expect(streamed).toBe(result.text);
    }
  });

  it('cut a long text at a late first occurrence, streamed and returned alike (the text kept in pieces past its tail)', async () => {
    using s = tiny.model.createSession();
    // sampled (seeded: the same tokens every run), so the text does not settle into a short cycle
    const opts = { maxTokens: 400, ignoreEos: true, temperature: 1, seed: 3 };
    const free = await s.generate(prompt, opts);
    expect(free.text.length, 'a text well past the tail that GrowingText keeps whole').toBeGreaterThan(600);
    // the shortest substring starting at each offset past 700 that does not occur before it
    let stopAt = '';
    for (let at = 500; at < free.text.length - 8 && !stopAt; at++)
      for (let n = 3; n <= 8; n++) {
        const cand = free.text.slice(at, at + n);
        if (free.text.indexOf(cand) === at) {
          stopAt = cand;
          break;
        }
      }
    expect(stopAt, 'a late first occurrence').not.toBe('');
    const longNever = `\u0000${'x'.repeat(40)}`; // holds 40 characters back from streaming
    for (const stop of [[stopAt], [longNever, stopAt], [longNever]]) {
      using t = tiny.model.createSession();
      const { streamed, result } = await collect(t.generate(prompt, { ...opts, stop }));
      const cut = stop.includes(stopAt) ? free.text.indexOf(stopAt) : free.text.length;
      expect(result.text, JSON.stringify(stop)).toBe(free.text.slice(0, cut));
      expect(result.stopReason).toBe(stop.includes(stopAt) ? 'stop' : free.stopReason);
      expect(streamed).toBe(result.text);
    }
    using u = tiny.model.createSession();
    const streamedFree = await collect(u.generate(prompt, opts));
    expect(streamedFree.streamed).toBe(free.text);
  });

  it('empty stop strings are ignored; a stop never produced changes nothing', async () => {
    using a = tiny.model.createSession();
    using b = tiny.model.createSession();
    const x = await a.generate(prompt, { maxTokens: 10 });
    const y = await b.generate(prompt, { maxTokens: 10, stop: ['', '\u0000never'] });
    expect(y.tokens).toEqual(x.tokens);
    expect(y.stopReason).toBe(x.stopReason);
  });
});

describe('sampling filters through a session', () => {
  it('topK 1, a tiny topP and minP 1 all reduce hot sampling to greedy', async () => {
    using g = tiny.model.createSession();
    const greedy = (await g.generate(prompt, { maxTokens: 12 })).tokens;
    for (const filter of [{ topK: 1 }, { topP: 1e-9 }, { minP: 1 }]) {
      using s = tiny.model.createSession();
      const r = await s.generate(prompt, { maxTokens: 12, temperature: 1.7, seed: 5, ...filter });
      expect(r.tokens, JSON.stringify(filter)).toEqual(greedy);
    }
  });

  it('hot sampling without filters is seeded: same seed same tokens, and it leaves the greedy path', async () => {
    const runs = [];
    for (const seed of [1, 1, 2, 3]) {
      using s = tiny.model.createSession();
      runs.push((await s.generate(prompt, { maxTokens: 12, temperature: 2, seed })).tokens);
    }
    expect(runs[1]).toEqual(runs[0]);
    using g = tiny.model.createSession();
    const greedy = (await g.generate(prompt, { maxTokens: 12 })).tokens;
    expect(runs.some(r => JSON.stringify(r) !== JSON.stringify(greedy))).toBe(true);
  });
});

describe('decode graphs across batch sizes and growing block tables', () => {
  it('replayed steps equal eager steps and each sequence equals its own full forward', () => {
    const e = tiny.model.engine;
    const opts = { device: 'cpu', maxContext: 128, blockSize: 4, numBlocks: 96 };
    const graphs = new LongcatModel(e.dims, e.w, { ...opts, graphs: true });
    const eager = new LongcatModel(e.dims, e.w, { ...opts, graphs: false });
    const V = e.dims.vocab;
    const take = (r: { logits: Tensor }) => {
      const v = toArray(r.logits) as Float32Array;
      r.logits.dispose();
      return v;
    };
    try {
      const starts = [
        [3, 9, 27],
        [100, 4],
        [7, 7, 7, 7, 7],
      ];
      const G = starts.map(() => graphs.newSequence());
      const E = starts.map(() => eager.newSequence());
      const hist = starts.map(s => [...s]);
      const perSeq: number[][][] = starts.map(() => []); // decode logits rows, per sequence
      for (let b = 0; b < 3; b++) {
        take(graphs.forward([G[b]!], [starts[b]!]));
        take(eager.forward([E[b]!], [starts[b]!]));
      }
      // Batches of changing size and membership; sequences cross 4-token block boundaries.
      const schedule = [[0], [0, 1, 2], [1, 2], [0, 1, 2], [2], [0, 2], [0, 1, 2], [1], [0, 1, 2], [0, 1, 2]];
      let step = 0;
      for (const members of schedule) {
        const toks = members.map(b => [(step * 31 + b * 17 + 5) % V]);
        const a = take(
          graphs.forward(
            members.map(b => G[b]!),
            toks,
          ),
        );
        const w = take(
          eager.forward(
            members.map(b => E[b]!),
            toks,
          ),
        );
        expect(a.length).toBe(members.length * V);
        for (let i = 0; i < a.length; i++)
          if (Math.abs(a[i]! - w[i]!) > 1e-5 * (1 + Math.abs(w[i]!)))
            expect.fail(`step ${step}, batch ${JSON.stringify(members)}: logit ${i}: graph ${a[i]} vs eager ${w[i]}`);
        members.forEach((b, j) => {
          hist[b]!.push(toks[j]![0]!);
          perSeq[b]!.push(Array.from(a.subarray(j * V, (j + 1) * V)));
        });
        step++;
      }
      // Independent of both decode paths: the prefill of each whole sequence.
      for (let b = 0; b < 3; b++) {
        const seq = eager.newSequence();
        const all = take(eager.forward([seq], [hist[b]!], { allLogits: true }));
        seq.release();
        const n = perSeq[b]!.length;
        for (let k = 0; k < n; k++) {
          const row = all.subarray((hist[b]!.length - n + k) * V, (hist[b]!.length - n + k + 1) * V);
          let scale = 0,
            worst = 0;
          for (let i = 0; i < V; i++) {
            scale = Math.max(scale, Math.abs(row[i]!));
            worst = Math.max(worst, Math.abs(row[i]! - perSeq[b]![k]![i]!));
          }
          expect(worst, `sequence ${b}, decode step ${k}`).toBeLessThanOrEqual(1e-4 * scale);
        }
      }
      expect(Math.max(...G.map(s => s.length))).toBeGreaterThan(4 * 3); // several blocks each
      for (const s of [...G, ...E]) s.release();
    } finally {
      graphs.dispose();
      eager.dispose();
    }
  });
});

describe('generate options', () => {
  const bad: [Record<string, unknown>, RegExp][] = [
    [{ stop: [null] }, /stop must be an array of strings, got \[null\]/],
    [{ stop: 'abc' }, /stop must be an array of strings, got 'abc'/],
    [{ maxTokens: 1.5 }, /maxTokens must be a non-negative integer, got 1.5/],
    [{ temperature: Infinity }, /temperature must be a finite number >= 0/],
    [{ topK: -1 }, /topK must be a non-negative integer/],
    [{ topP: 1.5 }, /topP must be a number in \[0, 1\]/],
    [{ minP: NaN }, /minP must be a number in \[0, 1\], got NaN/],
    [{ seed: '7' }, /seed must be an integer in \[0, 2\^53\), got '7'/],
  ];
  it.each(bad)('%j is a typed E_ARGUMENT before any token is computed', async (opts, message) => {
    using s = tiny.model.createSession();
    const err = await s.generate(prompt, opts as never).then(
      () => null,
      (e: unknown) => e,
    );
    expect((err as { code?: string })?.code).toBe('E_ARGUMENT');
    expect((err as Error).message).toMatch(message);
    expect(s.length, 'nothing was prefilled').toBe(0);
  });
});
