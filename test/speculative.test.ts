// MTP speculative decoding (SPEC 6): the MTP head against the float64 reference, the verify rows
// against single-token decode steps, and generation with speculation against plain decoding --
// greedy token for token (batch 1 through Session, batch 3 through the engine), across chat turns
// and every branch of a step (all / none / some drafts accepted, EOS, stop strings, maxTokens and
// the context limit inside the accepted tokens), the KV pages left after rejections, and the
// distribution of speculative sampling against plain sampling.
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { draftAgreementPlan, initRandom, type InitRandomOptions } from '../lib/init-random.js';
import { loadModel, type Model, type GenerateOptions } from '../lib/generate.js';
import { openCheckpoint } from '../lib/checkpoint.js';
import { native } from '../lib/native.js';
import { toArray } from '../lib/tensor.js';
import type { LongcatModel, SamplingParams } from '../lib/model/model.js';
import type { SequenceCache } from '../lib/kv-cache.js';
import { dequantFp8Block, referenceForward, referenceMtp, type RefConfig } from '../lib/check/reference/longcat-ref.js';
import { expectLogitsClose, fixtureRoot } from './model-fixture.js';

const root = fixtureRoot('longcat-speculative-');
const prompt = [5, 17, 300, 2, 99, 41, 7, 260, 1, 3, 511];

const written = new Map<string, Promise<string>>();
/** The checkpoint `name` of this file, written once (tests of several blocks share it). */
function checkpoint(name: string, opts: Omit<InitRandomOptions, 'out'>): Promise<string> {
  const dir = path.join(root, name);
  if (!written.has(name))
    written.set(
      name,
      initRandom({ seed: 21, mtp: true, ...opts, out: dir }).then(() => dir),
    );
  return written.get(name)!;
}
const textPrompt = 'the speculative test prompt';

/** Every model of a test file loaded once (CPU), disposed after it. */
function models(specs: Record<string, () => Promise<[string, Parameters<typeof loadModel>[1]]>>) {
  const loaded: Record<string, Model> = {};
  beforeAll(async () => {
    for (const [k, make] of Object.entries(specs)) {
      const [dir, opts] = await make();
      loaded[k] = await loadModel(dir, { backend: 'cpu', ...opts });
    }
  });
  afterAll(() => {
    for (const m of Object.values(loaded)) m.dispose();
  });
  return loaded;
}

function argmaxRow(v: ArrayLike<number>, row: number, V: number): number {
  let best = 0;
  for (let i = 1; i < V; i++) if (v[row * V + i]! > v[row * V + best]!) best = i;
  return best;
}

/** The reference's weights from a checkpoint (FP8 linears dequantized as SPEC 7.2). */
async function referenceWeights(dir: string) {
  const ck = await openCheckpoint(dir);
  const W = (name: string) => {
    const t = ck.get(name);
    const shape = [...t.shape];
    if (t.dtype === 'fp8_e4m3') {
      const [n, k] = shape as [number, number];
      const scale = Float32Array.from(toArray(ck.get(name.replace(/\.weight$/, '.weight_scale_inv'))));
      return { shape, data: dequantFp8Block(t.toBytes(), scale, n, k) };
    }
    return { shape, data: Float64Array.from(toArray(t)) };
  };
  const cfg = JSON.parse(readFileSync(path.join(dir, 'config.json'), 'utf8')) as RefConfig;
  return { W, cfg, close: () => ck.close() };
}

describe('the MTP head (SPEC 6.1) against the float64 reference', () => {
  it.each([
    ['bf16', false],
    ['fp8', true],
  ])('%s: every prompt pair, in the prefill (expanded) and decode (absorbed) forms', async (name, fp8) => {
    const dir = await checkpoint(`ref-${name}`, { preset: 'tiny', fp8 });
    const { W, cfg, close } = await referenceWeights(dir);
    const n = prompt.length,
      H = cfg.hidden_size,
      V = cfg.vocab_size;
    const ref = referenceForward(cfg, W, prompt);
    const want = referenceMtp(
      cfg,
      W,
      ref.hidden.subarray(0, (n - 1) * H),
      prompt.slice(1),
      prompt.slice(1).map((_, i) => i),
    ).logits;
    close();
    const prev = native.setMatmulPrecision('highest');
    using m = await loadModel(dir, { backend: 'cpu', cacheDtype: 'f32' });
    try {
      const e = m.engine;
      const seq = e.newSequence();
      const r = e.forward([seq], [prompt], { hidden: true });
      r.logits.dispose();
      const h = r.hidden!.narrow(0, n - 1);
      const pre = e.mtp([seq], [prompt.slice(1)], [0], h, { allLogits: true });
      expectLogitsClose(toArray(pre), want, 1e-5, 'MTP logits, prefill form');
      pre.dispose();
      // decode form: one pair at a time, over the cache the prefill form wrote before it
      const dec = new Float32Array((n - 1) * V);
      for (let i = 0; i < n - 1; i++) {
        const row = r.hidden!.narrow(i, 1);
        const l = e.mtp([seq], [[prompt[i + 1]!]], [i], row);
        dec.set(toArray(l) as Float32Array, i * V);
        l.dispose();
        row.dispose();
      }
      expectLogitsClose(dec, want, 1e-5, 'MTP logits, decode form');
      for (const t of [h, r.hidden!]) t.dispose();
      seq.release();
    } finally {
      native.setMatmulPrecision(prev);
    }
  });
});

describe('verify rows', () => {
  const m = models({ tiny: async () => [await checkpoint('verify', { preset: 'tiny' }), { cacheDtype: 'f32' }] });
  it('several decode rows per sequence equal one decode step per token (3 sequences, 1-3 rows each)', () => {
    const prev = native.setMatmulPrecision('highest');
    try {
      const e = m.tiny!.engine,
        V = e.dims.vocab;
      const starts = [prompt.slice(0, 4), prompt.slice(0, 9), prompt.slice(2, 7)];
      const news = [[7, 300, 2], [41], [260, 1]];
      const multi = starts.map(() => e.newSequence()),
        single = starts.map(() => e.newSequence());
      e.forward(multi, starts).logits.dispose();
      e.forward(single, starts).logits.dispose();
      const got = toArray(e.forward(multi, news, { mode: 'decode' }).logits);
      const want: number[] = [];
      for (const [b, list] of news.entries()) for (const t of list) want.push(...toArray(e.forward([single[b]!], [[t]]).logits));
      expect(got.length).toBe(6 * V);
      expectLogitsClose(got, want, 1e-5, 'verify-row logits');
      for (const s of [...multi, ...single]) s.release();
    } finally {
      native.setMatmulPrecision(prev);
    }
  });
});

/** Greedy generation of one session, plain then speculative (in fresh sessions), the same options. */
async function bothWays(m: Model, text: string, o: GenerateOptions = {}) {
  using a = m.createSession();
  using b = m.createSession();
  const plain = await a.generate(text, o);
  const spec = await b.generate(text, { ...o, speculative: true });
  return { plain, spec };
}

describe('greedy speculative decoding == plain decoding', () => {
  const m = models({
    tiny: async () => [await checkpoint('tiny', { preset: 'tiny' }), {}],
    fp8: async () => [await checkpoint('tiny-fp8', { preset: 'tiny', fp8: true }), {}],
    small: async () => [await checkpoint('small', { preset: 'small' }), {}],
  });
  it.each(['tiny', 'fp8', 'small'])('%s: token for token, 40 tokens', async k => {
    const { plain, spec } = await bothWays(m[k]!, textPrompt, { maxTokens: 40 });
    expect(spec.tokens).toEqual(plain.tokens);
    expect(spec.text).toBe(plain.text);
    expect(spec.stopReason).toBe(plain.stopReason);
    const s = spec.speculative!;
    expect(s.draftedTokens).toBeGreaterThan(0);
    expect(s.acceptanceRate).toBeCloseTo(s.acceptedTokens / s.draftedTokens, 12);
    expect(plain.speculative).toBeUndefined();
  });
  it('across chat turns (the second turn reuses the cache of the first, MTP cache included)', async () => {
    const model = m.tiny!;
    using a = model.createSession();
    using b = model.createSession();
    const turn1 = [{ role: 'user' as const, content: 'first question' }];
    const p1 = await a.generate(turn1, { maxTokens: 12 });
    const s1 = await b.generate(turn1, { maxTokens: 12, speculative: true });
    expect(s1.tokens).toEqual(p1.tokens);
    const turn2 = [
      ...turn1,
      { role: 'assistant' as const, content: p1.text },
      { role: 'user' as const, content: 'and a second' },
    ];
    const p2 = await a.generate(turn2, { maxTokens: 12 });
    const s2 = await b.generate(turn2, { maxTokens: 12, speculative: true });
    expect(s2.tokens).toEqual(p2.tokens);
    expect(s2.prefillTokens).toBeLessThan(s2.promptTokens); // the first turn's cache was reused
  });
  it('ends at the context limit like plain decoding', async () => {
    const dir = await checkpoint('tiny', { preset: 'tiny' });
    using small = await loadModel(dir, { backend: 'cpu', maxContext: 24 });
    const { plain, spec } = await bothWays(small, textPrompt, { maxTokens: 100 });
    expect(plain.stopReason).toBe('length');
    expect(spec.tokens).toEqual(plain.tokens);
    expect(spec.stopReason).toBe('length');
  });
  it('stops inside the accepted tokens at maxTokens and stop strings, with the same cache as plain decoding', async () => {
    const model = m.tiny!;
    for (const maxTokens of [1, 2, 3, 7, 8]) {
      const { plain, spec } = await bothWays(model, textPrompt, { maxTokens });
      expect(spec.tokens).toEqual(plain.tokens);
      expect(spec.stopReason).toBe('length');
    }
    const full = (await bothWays(model, textPrompt, { maxTokens: 20 })).plain;
    const stop = full.text.slice(Math.floor(full.text.length / 2), Math.floor(full.text.length / 2) + 2);
    const { plain, spec } = await bothWays(model, textPrompt, { maxTokens: 20, stop: [stop] });
    expect(plain.stopReason).toBe('stop');
    expect(spec.text).toBe(plain.text);
    expect(spec.stopReason).toBe('stop');
  });
  it('with expert parallelism (2 and 4 CPU ranks) == plain decoding on one rank', async () => {
    const dir = await checkpoint('agree-0.5', { preset: 'tiny', draftAgreement: 0.5 });
    using one = await loadModel(dir, { backend: 'cpu' });
    const plain = (await bothWays(one, textPrompt, { maxTokens: 24 })).plain;
    for (const ranks of [2, 4]) {
      using ep = await loadModel(dir, { backend: 'cpu', ranks });
      using s = ep.createSession();
      const spec = await s.generate(textPrompt, { maxTokens: 24, speculative: true });
      expect(spec.tokens).toEqual(plain.tokens);
      expect(spec.speculative!.acceptedTokens).toBeGreaterThan(0);
    }
  });
  it('LongCat-Flash-Lite (N-gram embedding; the history rolled back with rejected drafts) == plain decoding', async () => {
    const dir = await checkpoint('lite-agree', { preset: 'lite', draftAgreement: 0.5 });
    using lite = await loadModel(dir, { backend: 'cpu' });
    const { plain, spec } = await bothWays(lite, textPrompt, { maxTokens: 32 });
    expect(spec.tokens).toEqual(plain.tokens);
    const s = spec.speculative!;
    expect(s.acceptedTokens).toBeGreaterThan(0);
    expect(s.acceptedTokens).toBeLessThan(s.draftedTokens);
  });
  it('rejects what it cannot do with typed errors', async () => {
    const model = m.tiny!;
    using s = model.createSession();
    await expect(s.generate('x', { speculative: { draftTokens: 2 } })).rejects.toMatchObject({
      code: 'E_ARGUMENT',
      message: expect.stringContaining('draftTokens must be 1'),
    });
    await expect(s.generate('x', { speculative: 'yes' as unknown as boolean })).rejects.toMatchObject({ code: 'E_ARGUMENT' });
    const plainDir = path.join(root, 'no-mtp');
    await initRandom({ preset: 'tiny', out: plainDir, seed: 2 });
    using noMtp = await loadModel(plainDir, { backend: 'cpu' });
    using t = noMtp.createSession();
    await expect(t.generate('x', { speculative: true })).rejects.toMatchObject({
      code: 'E_ARGUMENT',
      message: expect.stringContaining('has none'),
    });
    using off = await loadModel(path.join(root, 'tiny'), { backend: 'cpu', mtp: false });
    expect(off.engine.hasMtp).toBe(false);
    using u = off.createSession();
    await expect(u.generate('x', { speculative: true })).rejects.toMatchObject({
      message: expect.stringContaining('mtp: false'),
    });
  });
});

/**
 * What greedy speculation does on an agreeing checkpoint (init-random draftAgreement), step by step
 * from the plan: the draft for pending x is next[S(x)], right exactly where S(x) = x; a step keeps
 * [draft, bonus] or [correction]. Returns the tokens of a generation of maxTokens from the first
 * token t1, and the drafts and acceptances a Session counts.
 */
function predictGreedy(plan: ReturnType<typeof draftAgreementPlan>, t1: number, maxTokens: number) {
  const { next, draftSource: S } = plan;
  const out = [t1];
  let x = t1,
    drafted = 0,
    accepted = 0;
  while (out.length < maxTokens) {
    drafted++;
    if (S[x] === x) {
      accepted++;
      out.push(next[x]!, next[next[x]!]!);
      x = next[next[x]!]!;
    } else {
      out.push(next[x]!);
      x = next[x]!;
    }
  }
  return { tokens: out.slice(0, maxTokens), drafted, accepted };
}

describe('on checkpoints whose drafts are accepted at a known rate (init-random draftAgreement)', () => {
  const agreements = [1, 0.5, 0];
  const opts = (a: number) => ({ preset: 'tiny' as const, seed: 21, draftAgreement: a });
  const m = models(
    Object.fromEntries(
      agreements.map(a => [String(a), async () => [await checkpoint(`agree-${a}`, opts(a)), {}] as [string, object]]),
    ),
  );
  const text = 'a prompt';
  it.each(agreements)('agreement %s: every step accepted / corrected exactly as predicted, tokens == plain', async a => {
    const model = m[String(a)]!,
      plan = draftAgreementPlan(opts(a));
    for (const maxTokens of [40, 41]) {
      const { plain, spec } = await bothWays(model, text, { maxTokens });
      expect(plan.next[plain.tokens[0]!]).toBeGreaterThanOrEqual(0); // on the cycle from the first token
      const want = predictGreedy(plan, plain.tokens[0]!, maxTokens);
      expect(plain.tokens).toEqual(want.tokens);
      expect(spec.tokens).toEqual(want.tokens);
      expect(spec.speculative).toMatchObject({ draftedTokens: want.drafted, acceptedTokens: want.accepted });
      if (a === 1) expect(spec.speculative!.acceptanceRate).toBe(1);
      if (a === 0) expect(spec.speculative!.acceptanceRate).toBe(0);
    }
  });
  it('maxTokens, a stop string and EOS landing on an accepted draft (its bonus token dropped)', async () => {
    const model = m['1']!,
      plan = draftAgreementPlan(opts(1));
    const first = (await bothWays(model, text, { maxTokens: 1 })).plain.tokens[0]!;
    const t = predictGreedy(plan, first, 8).tokens; // steps keep [t2, t3], [t4, t5], ...
    for (const maxTokens of [2, 4]) {
      const { plain, spec } = await bothWays(model, text, { maxTokens });
      expect(spec.tokens).toEqual(plain.tokens);
      expect(spec.tokens).toEqual(t.slice(0, maxTokens));
    }
    const stop = model.tokenizer.decode([t[3]!]);
    const byStop = await bothWays(model, text, { maxTokens: 8, stop: [stop] });
    expect(byStop.plain.stopReason).toBe('stop');
    expect(byStop.spec.stopReason).toBe('stop');
    expect(byStop.spec.text).toBe(byStop.plain.text);
    // t4 (the draft of the second step) becomes an end-of-sequence token
    const dir = path.join(root, 'agree-1-eos');
    await initRandom({ mtp: true, ...opts(1), out: dir });
    const gc = path.join(dir, 'generation_config.json');
    writeFileSync(gc, JSON.stringify({ ...JSON.parse(readFileSync(gc, 'utf8')), eos_token_id: [2, t[3]] }));
    using eosModel = await loadModel(dir, { backend: 'cpu' });
    const byEos = await bothWays(eosModel, text, { maxTokens: 8 });
    expect(byEos.plain.stopReason).toBe('eos');
    expect(byEos.spec.stopReason).toBe('eos');
    expect(byEos.spec.tokens).toEqual(t.slice(0, 3));
    // the session's cache after an EOS inside the accepted tokens: a follow-up turn equals plain's
    using a = eosModel.createSession();
    using b = eosModel.createSession();
    await a.generate(text, { maxTokens: 8 });
    await b.generate(text, { maxTokens: 8, speculative: true });
    const more = text + eosModel.tokenizer.decode(t.slice(0, 3));
    const p2 = await a.generate(more, { maxTokens: 6 }),
      s2 = await b.generate(more, { maxTokens: 6, speculative: true });
    expect(s2.tokens).toEqual(p2.tokens);
  });
  it('batch 3 at agreement 0.5: each sequence its own accepted lengths, == plain batched decoding', async () => {
    const e = m['0.5']!.engine,
      plan = draftAgreementPlan(opts(0.5));
    const prompts = [[plan.cycle[3]!], [plan.cycle[100]!, plan.cycle[101]!], [5, 9, plan.cycle[201]!]];
    const plain = await engineGreedy(e, prompts, 24, false);
    const spec = await engineGreedy(e, prompts, 24, true);
    expect(spec.tokens).toEqual(plain.tokens);
    expect(spec.stats.accepted).toBeGreaterThan(0);
    expect(spec.stats.accepted).toBeLessThan(spec.stats.drafted);
    for (const s of [...plain.seqs, ...spec.seqs]) s.release();
  });
});

const GREEDY: SamplingParams = { temperature: 0, topK: 0, topP: 1, minP: 0, seed: 0 };

/** Greedy decoding of a batch through the engine: `steps` tokens per sequence, plain or speculative. */
async function engineGreedy(e: LongcatModel, prompts: number[][], steps: number, speculative: boolean) {
  const V = e.dims.vocab;
  const seqs = prompts.map(() => e.newSequence());
  const out: number[][] = prompts.map(() => []);
  const r = e.forward(seqs, prompts, { hidden: speculative });
  const first = toArray(r.logits);
  r.logits.dispose();
  let pending = prompts.map((_, b) => argmaxRow(first, b, V));
  for (const [b, t] of pending.entries()) out[b]!.push(t);
  const stats = { drafted: 0, accepted: 0 };
  if (!speculative) {
    while (out[0]!.length < steps) {
      const l = toArray(
        e.forward(
          seqs,
          pending.map(t => [t]),
        ).logits,
      );
      pending = pending.map((_, b) => argmaxRow(l, b, V));
      for (const [b, t] of pending.entries()) out[b]!.push(t);
    }
  } else {
    const draftLogits = toArray(
      e.mtp(
        seqs,
        prompts.map((p, b) => [...p.slice(1), pending[b]!]),
        prompts.map(() => 0),
        r.hidden!,
      ),
    );
    r.hidden!.dispose();
    let drafts = prompts.map((_, b) => argmaxRow(draftLogits, b, V));
    while (out.some(o => o.length < steps)) {
      const s = await e.speculativeStep(
        seqs,
        pending,
        drafts,
        prompts.map(() => GREEDY),
      );
      for (const t of s.nFfn) t.dispose();
      for (const [b, list] of s.tokens.entries()) out[b]!.push(...list);
      stats.drafted += seqs.length;
      stats.accepted += s.accepted.reduce((a, n) => a + n, 0);
      pending = s.tokens.map(list => list[list.length - 1]!);
      drafts = s.drafts;
    }
  }
  return { tokens: out.map(o => o.slice(0, steps)), all: out, seqs, stats };
}

describe('batched speculative steps (engine)', () => {
  const m = models({ tiny: async () => [await checkpoint('tiny', { preset: 'tiny' }), {}] });
  it('batch 3, each sequence with its own accepted length, equals plain batched greedy decoding', async () => {
    const e = m.tiny!.engine;
    const prompts = [prompt, prompt.slice(3), [9, 8, 7, 6, 5, 4, 3]];
    const plain = await engineGreedy(e, prompts, 16, false);
    const spec = await engineGreedy(e, prompts, 16, true);
    expect(spec.tokens).toEqual(plain.tokens);
    for (const s of [...plain.seqs, ...spec.seqs]) s.release();
  });
  it('leaves the KV pages of plain decoding after rejections (every main cache and the MTP cache)', async () => {
    const e = m.tiny!.engine;
    const prev = native.setMatmulPrecision('highest');
    try {
      const plain = await engineGreedy(e, [prompt], 12, false);
      const spec = await engineGreedy(e, [prompt], 12, true);
      expect(spec.stats.drafted).toBeGreaterThan(spec.stats.accepted); // some drafts were rejected
      // Both sequences now hold the prompt and the tokens each generated before its last one (at least 11 in common).
      const n = Math.min(plain.seqs[0]!.length, spec.seqs[0]!.length);
      expect(n).toBeGreaterThanOrEqual(prompt.length + 10);
      const caches = e.kvCaches();
      const rowsOf = (seq: SequenceCache, c: number) => {
        const all = toArray(caches[c] as never) as Float32Array;
        const width = caches[c]!.shape[2]!;
        return Array.from(seq.slots(0, n - 1), s => Array.from(all.subarray(s * width, (s + 1) * width)));
      };
      for (let c = 0; c < 2 * e.dims.layers; c++)
        expectLogitsClose(rowsOf(spec.seqs[0]!, c).flat(), rowsOf(plain.seqs[0]!, c).flat(), 1e-4, `cache ${c}`);
      // The MTP cache (the last) against the head run over the whole committed sequence at once:
      // positions 0..L-1 of a sequence of L tokens hold the pairs up to the pending token.
      const L = spec.seqs[0]!.length,
        all = [...prompt, ...spec.all[0]!];
      const fresh = e.newSequence();
      const r = e.forward([fresh], [all.slice(0, L)], { hidden: true });
      r.logits.dispose();
      e.mtp([fresh], [all.slice(1, L + 1)], [0], r.hidden!).dispose();
      r.hidden!.dispose();
      const mtpCache = 2 * e.dims.layers,
        at = (seq: SequenceCache) => rowsOf(seq, mtpCache).flat();
      expectLogitsClose(at(spec.seqs[0]!), at(fresh), 1e-4, 'MTP cache');
      fresh.release();
      for (const s of [...plain.seqs, ...spec.seqs]) s.release();
    } finally {
      native.setMatmulPrecision(prev);
    }
  });
});

describe("speculative sampling keeps plain sampling's distribution", () => {
  const m = models({
    tiny: async () => [await checkpoint('tiny', { preset: 'tiny' }), {}],
    agree: async () => [await checkpoint('agree-0.5', { preset: 'tiny', draftAgreement: 0.5 }), {}],
  });
  // a random head (drafts mostly rejected: the resampling branch), and an agreeing one at a high
  // temperature (drafts often the most likely token, accepted with its probability)
  it.each([
    ['the most likely token', 0],
    ['the third most likely token', 2],
  ])("a step whose draft is %s: its first token follows the plain step's filtered distribution (5000 seeds)", async (_, rank) => {
    const e = m.tiny!.engine,
      V = e.dims.vocab;
    const o = { temperature: 0.15, topK: 6, topP: 1, minP: 0 }; // peaked: the logits of a random model are close
    const seq = e.newSequence();
    e.forward([seq], [prompt]).logits.dispose();
    const pending = 42,
      L = seq.length;
    // p: the plain decode step's logits at position L, filtered as the sampler does (temperature, top-k)
    const probe = e.newSequence();
    e.forward([probe], [prompt]).logits.dispose();
    const row = toArray(e.forward([probe], [[pending]]).logits);
    probe.release();
    const order = Array.from(row.keys()).sort((i, j) => row[j]! - row[i]! || i - j);
    const kept = order.slice(0, o.topK);
    const w = kept.map(i => Math.exp((row[i]! - row[kept[0]!]!) / o.temperature));
    const total = w.reduce((x, y) => x + y, 0);
    const draft = order[rank]!;
    const counts = new Map<number, number>();
    const N = 5000;
    for (let seed = 0; seed < N; seed++) {
      const r = await e.speculativeStep([seq], [pending], [draft], [{ ...o, seed }]);
      for (const t of r.nFfn) t.dispose();
      const first = r.tokens[0]![0]!;
      counts.set(first, (counts.get(first) ?? 0) + 1);
      seq.truncate(L);
    }
    seq.release();
    let chi = 0;
    kept.forEach((id, i) => {
      const want = (N * w[i]!) / total,
        got = counts.get(id) ?? 0;
      chi += (got - want) ** 2 / want;
    });
    const outside = [...counts.keys()].filter(id => !kept.includes(id));
    expect(outside).toEqual([]); // never a token the filters drop
    expect(V).toBeGreaterThan(o.topK);
    // df = topK - 1 = 5: the 1e-6 tail of chi-square(5) is 35.9
    expect(chi).toBeLessThan(35.9);
  });
  it.each([
    ['random MTP head, temperature 0.7, topK 4', 'tiny', { temperature: 0.7, topK: 4 }],
    ['agreeing MTP head, temperature 12, topK 3, minP 0.001', 'agree', { temperature: 12, topK: 3, minP: 0.001 }],
  ])('%s: tokens 2-3 over 300 seeds, chi-square of speculative vs plain counts', async (_, k, o) => {
    const model = m[k]!;
    const count = async (speculative: boolean) => {
      const hist = new Map<string, number>();
      for (let seed = 0; seed < 300; seed++) {
        using s = model.createSession();
        const r = await s.generate(textPrompt, { ...o, maxTokens: 3, seed, speculative });
        const key = r.tokens.slice(1).join(',');
        hist.set(key, (hist.get(key) ?? 0) + 1);
      }
      return hist;
    };
    const plain = await count(false),
      spec = await count(true);
    // two-sample chi-square over the (2nd, 3rd) token pairs, cells with fewer than 10 pooled
    let chi = 0,
      df = -1,
      poolA = 0,
      poolB = 0;
    for (const key of new Set([...plain.keys(), ...spec.keys()])) {
      const a = plain.get(key) ?? 0,
        b = spec.get(key) ?? 0;
      if (a + b < 10) {
        poolA += a;
        poolB += b;
        continue;
      }
      chi += (a - b) ** 2 / (a + b);
      df++;
    }
    if (poolA + poolB > 0) {
      chi += (poolA - poolB) ** 2 / (poolA + poolB);
      df++;
    }
    expect(df).toBeGreaterThanOrEqual(3);
    // far beyond the 1e-4 tail of chi-square(df) for these df: deterministic seeds, never flaky, and a
    // wrong rule (a draft always or never kept) moves whole cells of ~100 counts
    expect(chi).toBeLessThan(df + 6 * Math.sqrt(2 * df) + 10);
  });
});
