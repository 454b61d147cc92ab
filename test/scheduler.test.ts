// Continuous batching (lib/scheduler.ts): concurrent sessions' decode steps run as one batched
// forward, and each generation equals the same request run alone -- greedy and sampled, plain and
// speculative, sessions joining and leaving at different times -- and a long prompt is prefilled a
// chunk per round while the other streams keep getting tokens. Pipelined decode rounds (the next
// step launched before the sessions take their tokens) give the tokens and KV pages of unpipelined
// rounds, with sequences ending at different rounds (maxTokens, stop strings, stop token ids,
// aborts mid-stream) and no page leaked; so do chained rounds (the step after launched on the
// tokens the step before sampled on the device, CPU).
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initRandom } from '../lib/init-random.js';
import { loadModel, type GenerateOptions, type Model } from '../lib/generate.js';
import { native } from '../lib/native.js';
import { empty, tensor, toArray } from '../lib/tensor.js';
import type { ExpertsFn } from '../lib/model/step.js';
import type { SequenceCache } from '../lib/kv-cache.js';
import { fixtureRoot } from './model-fixture.js';
import { backends, workLimitMs } from './helpers.js';

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

  it('a prompt joining chained rounds is queued behind them: no prefill chunk waits for the device; the same tokens', async () => {
    // (a prompt no earlier test ran: no prefix-cache hit shortens its prefill; its run alone comes after)
    const long = Array.from({ length: 40 }, (_, i) => `term${i % 19}`).join(' ');
    const runO = { maxTokens: 60, ignoreEos: true },
      longO = { maxTokens: 8, prefillChunk: 16 };
    // the engine's blocking wait for the device (LongcatModel.synchronizeRanks), counted inside prefill forwards
    const engine = model.engine as unknown as {
      forward: typeof model.engine.forward;
      synchronizeRanks(): void;
    };
    const { forward, synchronizeRanks } = engine;
    let inPrefill = false,
      prefills = 0,
      blocked = 0;
    engine.forward = function (seqs, tokens, opts = {}) {
      inPrefill = opts.mode === 'prefill';
      if (inPrefill) prefills++;
      try {
        return forward.call(this, seqs, tokens, opts);
      } finally {
        inPrefill = false;
      }
    };
    engine.synchronizeRanks = function () {
      if (inPrefill) blocked++;
      synchronizeRanks.call(this);
    };
    try {
      using a = model.createSession();
      using b = model.createSession();
      const chainedBefore = model.scheduler.stats.chainedRows;
      let seen = 0,
        gB: Promise<{ tokens: number[] }> | null = null,
        prefillsBefore = 0,
        blockedBefore = 0;
      const gA = a.generate('the running stream', runO);
      for await (const _ of gA) {
        if (++seen === 3) {
          prefillsBefore = prefills;
          blockedBefore = blocked;
          gB = b.generate(long, longO).then(r => r);
        }
      }
      const [rA, rB] = [await gA, await gB!];
      expect(model.scheduler.stats.chainedRows).toBeGreaterThan(chainedBefore);
      expect(prefills - prefillsBefore).toBeGreaterThanOrEqual(5); // the long prompt's chunks, all while A streamed
      expect(blocked - blockedBefore).toBe(0);
      const want = [await alone({ prompt: 'the running stream', o: runO }), await alone({ prompt: long, o: longO })];
      expect([rA.tokens, rB.tokens]).toEqual(want.map(w => w.tokens));
    } finally {
      delete (engine as Partial<typeof engine>).forward;
      delete (engine as Partial<typeof engine>).synchronizeRanks;
    }
  });
});

describe('prefill chunks capped while streams decode', () => {
  it("a prompt's chunks are prefillChunkWhileDecoding tokens while another stream decodes, prefillChunk alone; the same tokens", async () => {
    // every prefill computes its whole prompt (no prefix-cache hit between the runs)
    const m = await loadModel(path.join(root, 'tiny'), {
      backend: 'cpu',
      maxContext: 1024,
      prefixCache: false,
      prefillChunk: 40,
      prefillChunkWhileDecoding: 12,
    });
    // the tokens of each prefill forward (the scheduler's decode steps are not mode 'prefill')
    const chunks: number[] = [];
    const engine = m.engine as unknown as { forward: typeof m.engine.forward };
    const { forward } = engine;
    engine.forward = function (seqs, tokens, opts = {}) {
      if (opts.mode === 'prefill') chunks.push(tokens[0]!.length);
      return forward.call(this, seqs, tokens, opts);
    };
    const long = Array.from({ length: 60 }, (_, i) => `part${i % 23}`).join(' ');
    const runO = { maxTokens: 80, ignoreEos: true },
      longO = { maxTokens: 6, ignoreEos: true };
    /** `total` tokens in chunks of `size`. */
    const split = (total: number, size: number) =>
      Array.from({ length: Math.ceil(total / size) }, (_, i) => Math.min(size, total - i * size));
    try {
      // alone: chunks of prefillChunk
      let from = chunks.length;
      const wantLong = await (async () => {
        using s = m.createSession();
        return await s.generate(long, longO);
      })();
      const P = wantLong.promptTokens;
      expect(P).toBeGreaterThan(80);
      expect(chunks.slice(from)).toEqual(split(P, 40));
      const wantRun = await (async () => {
        using s = m.createSession();
        return await s.generate('the running stream', runO);
      })();

      // joining a decoding stream: every chunk capped, the running stream getting tokens throughout
      using a = m.createSession();
      using b = m.createSession();
      let seen = 0,
        atEnd = -1,
        gB: Promise<{ tokens: number[] }> | null = null;
      const gA = a.generate('the running stream', runO);
      for await (const _ of gA)
        if (++seen === 3) {
          from = chunks.length;
          gB = b.generate(long, longO).then(r => {
            atEnd = seen;
            return r;
          });
        }
      const [rA, rB] = [await gA, await gB!];
      expect(atEnd, 'the long prompt was done before the running stream ended').toBeGreaterThan(0);
      expect(atEnd).toBeLessThan(runO.maxTokens);
      expect(chunks.slice(from)).toEqual(split(P, 12));
      expect(rA.tokens).toEqual(wantRun.tokens);
      expect(rB.tokens).toEqual(wantLong.tokens);
      a.dispose();
      b.dispose();
      expect(m.engine.allocator.inUse).toBe(0);
    } finally {
      delete (engine as Partial<typeof engine>).forward;
      m.dispose();
    }
  });

  it('loadModel checks prefillChunkWhileDecoding before loading', async () => {
    for (const bad of [0, -1, 2.5, Number.NaN, Number.POSITIVE_INFINITY, '8' as unknown as number])
      await expect(loadModel(path.join(root, 'tiny'), { backend: 'cpu', prefillChunkWhileDecoding: bad })).rejects.toMatchObject({
        code: 'E_ARGUMENT',
        message: expect.stringContaining('prefillChunkWhileDecoding'),
      });
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

/** A session's sequence (private; the test reads its pages). */
const seqOf = (s: object) => (s as { seq: SequenceCache }).seq;

/** The latent rows of `seq`'s positions 0..length-1 in every cache of `m`'s attention sub-layers
 *  (not the MTP head's, which plain decoding never writes: its rows are the page's leftovers), as numbers. */
function kvRows(m: Model, seq: SequenceCache): number[][] {
  const slots = seq.slots();
  return m.engine
    .kvCaches()
    .slice(0, 2 * m.engine.dims.layers)
    .map(c => {
      const all = toArray(c),
        width = c.shape[2]!;
      return Array.from(slots, slot => Array.from(all.subarray(slot * width, (slot + 1) * width))).flat();
    });
}

// On the CPU and on CUDA (the emulator in CI): the scheduler is the same, the device work is the backend's.
describe.each(backends)('pipelined decode rounds on %s', device => {
  let model: Model;
  beforeAll(async () => {
    model = await loadModel(path.join(root, 'tiny'), { backend: device === 'cpu' ? 'cpu' : 'cuda', maxContext: 1024 });
  });
  afterAll(() => model?.dispose());
  const base = { prompt: 'a pipelined stream', o: { maxTokens: 16 } };
  /** `r` on a fresh session, with pipelined rounds or not; `abortAt`: aborted as its n-th token
   *  arrives. Returns the result, and the sequence's length and KV rows right after it ended.
   *  `perLayer`: the steps' FFN counts as one tensor per layer (collectRouting true), not stacked. */
  async function run(r: Request, pipeline: boolean, abortAt?: number, chain = true, perLayer = false) {
    model.scheduler.pipeline = pipeline;
    model.scheduler.chain = chain;
    const e = model.engine,
      forward = e.forward;
    if (perLayer)
      e.forward = function (seqs, tokens, opts = {}) {
        return forward.call(this, seqs, tokens, opts.collectRouting ? { ...opts, collectRouting: true } : opts);
      };
    const s = model.createSession();
    try {
      const ac = new AbortController();
      let n = 0;
      const g = await s.generate(r.prompt, {
        ...r.o,
        signal: ac.signal,
        onToken: () => {
          if (++n === abortAt) ac.abort();
        },
      });
      return {
        tokens: g.tokens,
        text: g.text,
        stopReason: g.stopReason,
        ffn: g.avgFfnExpertsPerToken,
        length: seqOf(s).length,
        kv: kvRows(model, seqOf(s)),
      };
    } finally {
      e.forward = forward;
      s.dispose();
      model.scheduler.pipeline = true;
      model.scheduler.chain = true;
    }
  }

  it(
    'sequences ending at different rounds (maxTokens, stop string, stop token id, abort) equal their unpipelined runs; no page leaked',
    async () => {
      const full = await run(base, false);
      expect(full.tokens).toHaveLength(16);
      // a stop string that occurs mid-answer, a stop token id that is sampled mid-answer
      const stopAt = Math.floor(full.text.length / 2);
      const stop = full.text.slice(stopAt, stopAt + 3);
      const stopId = full.tokens[9]!;
      const cases: { r: Request; abortAt?: number }[] = [
        { r: { prompt: base.prompt, o: { maxTokens: 16 } } },
        { r: { prompt: base.prompt, o: { maxTokens: 7 } } },
        { r: { prompt: base.prompt, o: { maxTokens: 16, stop: [stop] } } },
        { r: { prompt: base.prompt, o: { maxTokens: 16, stopTokenIds: [stopId] } } },
        { r: { prompt: base.prompt, o: { maxTokens: 16 } }, abortAt: 5 },
        { r: requests[1]!, abortAt: 3 },
        { r: requests[6]! }, // penalties and log-probabilities: sampled when the session claims its row
      ];
      const want: Awaited<ReturnType<typeof run>>[] = [];
      // (the reference's FFN counts per layer: the rounds below read them stacked where replayed)
      for (const c of cases) want.push(await run(c.r, false, c.abortAt, true, true));
      expect(want[0]!.ffn).toBeGreaterThan(0);
      expect(want[2]!.stopReason).toBe('stop');
      expect(want[3]!.stopReason).toBe('stop');
      expect(want[4]!.stopReason).toBe('abort');
      // Pipelined, then chained (on the CPU: the next step launched on the device-sampled tokens,
      // ends known a step late; CUDA has no queued decode step: pipelined only)
      const chains = model.engine.canQueueDecode;
      expect(chains).toBe(device === 'cpu');
      for (const chain of [false, true]) {
        // each alone: the same tokens, lengths and KV rows
        const before = { ...model.scheduler.stats };
        for (const [i, c] of cases.entries()) {
          const got = await run(c.r, true, c.abortAt, chain);
          expect(got, `case ${i}, chain ${chain}`).toEqual(want[i]);
        }
        const st = model.scheduler.stats;
        expect(st.continuedRows - before.continuedRows).toBeGreaterThan(0);
        expect(st.chainedRows - before.chainedRows > 0).toBe(chain && chains);
        // Pipelined, the stop string and the aborts ended with a step launched ahead (the maxTokens
        // ends and the stop token id launch none); chained, the stop string and the aborts with two
        // (the step running and the one queued behind it), the stop token id with one (the one
        // queued behind it); the penalties' case is not chained (sampled when claimed)
        expect(st.droppedRows - before.droppedRows, `chain ${chain}`).toBe(chain && chains ? 7 : 3);
        // all at once: the same
        const gotAll = await Promise.all(cases.map(c => run(c.r, true, c.abortAt, chain)));
        gotAll.forEach((g, i) => {
          expect(g.tokens, `case ${i}`).toEqual(want[i]!.tokens);
          expect(g.stopReason).toBe(want[i]!.stopReason);
          expect(g.ffn).toBe(want[i]!.ffn);
          expect(g.length).toBe(want[i]!.length);
          for (const [l, rows] of g.kv.entries()) expect(rows, `case ${i} cache ${l}`).toEqual(want[i]!.kv[l]);
        });
      }
      expect(model.scheduler.stats.largestBatch).toBeGreaterThanOrEqual(cases.length);
      await new Promise(r => setImmediate(r));
      expect(model.engine.allocator.inUse).toBe(0);
    },
    workLimitMs(60), // (on the emulated CUDA device: ~40 s of CPU)
  );
});

describe('chained decode rounds: a step that fails', () => {
  it('a prompt chunk queued behind the chained steps that fails fails its own generation only; the running stream goes on', async () => {
    const m = await loadModel(path.join(root, 'tiny'), { backend: 'cpu', maxContext: 1024 });
    expect(m.engine.canQueueDecode).toBe(true);
    // the prefill chunks' expert calls (more than 4 rows: the decode steps here have 1) run an
    // embedding of a bad id once `failing`; the decode steps' graphs are captured without it
    const table = tensor([1, 2, 3, 4], [2, 2]),
      bad = tensor([9], [1], { dtype: 'int32' }),
      sink = empty([1, 2]);
    let failing = false;
    m.engine.wrapExperts(
      (inner: ExpertsFn): ExpertsFn =>
        (stream, out, u, ...rest) => {
          inner(stream, out, u, ...rest);
          if (failing && u.shape[0]! > 4) native.embedding(stream, sink, table, bad);
        },
    );
    try {
      const o = { maxTokens: 40, ignoreEos: true };
      const want = await (async () => {
        using s = m.createSession();
        return (await s.generate('the running stream', o)).tokens;
      })();
      const long = Array.from({ length: 60 }, (_, i) => `part${i % 11}`).join(' ');
      const a = m.createSession(),
        b = m.createSession();
      let n = 0,
        gB: Promise<unknown> | null = null;
      const rA = await a.generate('the running stream', {
        ...o,
        onToken: () => {
          if (++n !== 4) return;
          failing = true;
          gB = b.generate(long, { maxTokens: 4, prefillChunk: 16 }).then(
            () => null,
            (e: unknown) => e,
          );
        },
      });
      expect(await gB).toMatchObject({ code: 'E_ARGUMENT' });
      expect(rA.tokens).toEqual(want);
      expect(m.scheduler.stats.chainedRows).toBeGreaterThan(0);
      a.dispose();
      b.dispose();
      await new Promise(r => setImmediate(r));
      expect(m.engine.allocator.inUse).toBe(0);
      failing = false;
      using s = m.createSession();
      expect((await s.generate('the running stream', o)).tokens).toEqual(want);
      expect((await s.generate(long, { maxTokens: 4, prefillChunk: 16 })).tokens).toHaveLength(4);
    } finally {
      m.dispose();
      for (const t of [table, bad, sink]) t.dispose();
    }
  });

  it('fails the generations whose steps it carried with its typed error, leaks no page, and the model decodes on', async () => {
    const m = await loadModel(path.join(root, 'tiny'), { backend: 'cpu', maxContext: 1024 });
    expect(m.engine.canQueueDecode).toBe(true);
    // every step (captured once) also runs an embedding whose id the test turns bad mid-stream
    const table = tensor([1, 2, 3, 4], [2, 2]),
      id = tensor([0], [1], { dtype: 'int32' }),
      sink = empty([1, 2]);
    m.engine.wrapExperts(
      (inner: ExpertsFn): ExpertsFn =>
        (stream, ...rest) => {
          inner(stream, ...rest);
          native.embedding(stream, sink, table, id);
        },
    );
    try {
      const o = { maxTokens: 24, ignoreEos: true };
      const want = await (async () => {
        using s = m.createSession();
        return (await s.generate('a stream that fails', o)).tokens;
      })();
      const sessions = [m.createSession(), m.createSession()];
      let n = 0;
      const got = await Promise.all(
        sessions.map((s, i) =>
          s
            .generate(`a stream that fails, ${i}`, {
              ...o,
              onToken: () => {
                if (i === 0 && ++n === 6) id.copyFromBytes(Int32Array.of(9)); // the steps queued from now on fail
              },
            })
            .then(
              () => null,
              (e: unknown) => e,
            ),
        ),
      );
      for (const e of got) expect(e).toMatchObject({ code: 'E_ARGUMENT' });
      expect(m.scheduler.stats.chainedRows).toBeGreaterThan(0);
      for (const s of sessions) s.dispose();
      await new Promise(r => setImmediate(r));
      expect(m.engine.allocator.inUse).toBe(0);
      id.copyFromBytes(Int32Array.of(0));
      using s = m.createSession();
      expect((await s.generate('a stream that fails', o)).tokens).toEqual(want);
    } finally {
      m.dispose();
      for (const t of [table, id, sink]) t.dispose();
    }
  });
});
