// Data-parallel attention under expert parallelism (issue 14, lib/parallel/data-parallel.ts): each
// rank owns the sequences the runner assigns to it and their KV pages, and a batch of sequences
// spread over the ranks equals each sequence run alone on one device ("equal" as issue 14 defines
// it: matmul precision 'highest', logits within an fp32 tolerance, greedy tokens identical
// wherever the top-two gap exceeds it). CPU ranks here; on CUDA (a card, or the emulator of
// test/emu in CI) virtual ranks of one device.
import { beforeAll, describe, expect, it } from 'vitest';
import path from 'node:path';
import { native } from '../lib/native.js';
import { toArray } from '../lib/tensor.js';
import { ArgumentError } from '../lib/errors.js';
import { initRandom } from '../lib/init-random.js';
import { loadModel } from '../lib/generate.js';
import type { SequenceCache } from '../lib/kv-cache.js';
import { expectEqualLogits, maxRelError, prompts, runScript } from './ep-helpers.js';
import { fixtureRoot } from './model-fixture.js';

const root = fixtureRoot('longcat-ep-dp-');
type Loaded = Awaited<ReturnType<typeof loadModel>>;

/** Five prompts of different lengths: over 2 ranks, rank 0 owns sequences 0, 2, 4 and rank 1 owns 1, 3. */
const five = [...prompts, [7, 8, 9, 10], [400, 3, 77, 12, 5, 6]];

/** The latent rows of `seq`'s first `n` positions in each of its rank's caches. */
function cacheRows(m: Loaded, seq: SequenceCache, n: number): Float32Array[] {
  const e = m.engine,
    caches = e.kvCaches(e.rankOf(seq).rank);
  return caches.map(c => {
    const all = toArray(c) as Float32Array,
      width = c.shape[2]!;
    const out = new Float32Array(n * width);
    for (const [i, s] of seq.slots(0, n).entries()) out.set(all.subarray(s * width, (s + 1) * width), i * width);
    return out;
  });
}

// [backend, rank counts of the placement test, of the spread batch] (the emulator is slow: the
// 4-device runs are in ep-devices.test.ts)
const backends: ['cpu' | 'cuda', number[], number[]][] = [
  ['cpu', [2, 4, 8], [2, 4, 8]],
  ...(native.cudaStatus().available ? [['cuda', [2, 4], [2]] as ['cuda', number[], number[]]] : []),
];

for (const [backend, rankCounts, spreadCounts] of backends) {
  describe(`data-parallel attention (${backend})`, () => {
    const dir = path.join(root, `tiny-${backend}`);
    let single: Loaded;
    beforeAll(async () => {
      await initRandom({ preset: 'tiny', out: dir, seed: 31 });
      single = await loadModel(dir, { backend, cacheDtype: 'f32', maxContext: 64 });
      return () => single.dispose();
    }, 300_000);

    it.each(rankCounts)(
      "%i ranks: new sequences go to the least loaded rank; each sequence's KV pages are in its rank's pool and caches, equal to the single-device ones",
      async ranks => {
        const m = await loadModel(dir, { backend, cacheDtype: 'f32', maxContext: 64, ranks });
        try {
          const e = m.engine;
          const seqs = prompts.map(() => e.newSequence());
          // fewest live sequences first: one per rank while there are ranks left
          expect(seqs.map(s => e.rankOf(s).rank)).toEqual(prompts.map((_, b) => b % ranks));
          e.forward(seqs, prompts).logits.dispose();
          e.forward(
            seqs,
            prompts.map(() => [42]),
          ).logits.dispose();
          const ref = prompts.map(() => single.engine.newSequence());
          single.engine.forward(ref, prompts).logits.dispose();
          single.engine
            .forward(
              ref,
              prompts.map(() => [42]),
            )
            .logits.dispose();
          const pools = e.allocators;
          expect(pools.length).toBe(ranks);
          for (let r = 0; r < ranks; r++) {
            const mine = seqs.filter(s => e.rankOf(s).rank === r);
            expect(pools[r]!.inUse).toBe(mine.reduce((n, s) => n + s.numBlocks, 0));
          }
          for (const [b, seq] of seqs.entries()) {
            expect(e.rankOf(seq).device).toBe(e.device);
            const got = cacheRows(m, seq, seq.length),
              want = cacheRows(single, ref[b]!, seq.length);
            for (const [c, rows] of got.entries())
              if (!(maxRelError(rows, want[c]!) <= 1e-5)) expect.fail(`sequence ${b}, cache ${c}: rows differ`);
          }
          // every rank holds a pool of the same size, on its device
          const perRank = single.memory.kvCache[e.device]!;
          expect(m.memory.kvCache).toEqual({ [e.device]: ranks * perRank });
          // the next sequence: the rank with the fewest live ones; a released sequence no longer counts
          const next = e.newSequence();
          expect(e.rankOf(next).rank).toBe(ranks === 2 ? 1 : 3);
          next.release();
          seqs[0]!.release();
          const again = e.newSequence();
          expect(e.rankOf(again).rank).toBe(0);
          again.release();
          for (const s of [...seqs, ...ref]) s.release();
          expect(pools.map(p => p.inUse)).toEqual(new Array(ranks).fill(0));
          expect(() => e.newSequence(undefined, ranks)).toThrow(ArgumentError);
          expect(() => e.forward([single.engine.newSequence()], [[1]])).toThrow(/not created by this model/);
        } finally {
          m.dispose();
        }
      },
      300_000,
    );

    it.each(spreadCounts)(
      '%i ranks: a batch of sequences spread over the ranks equals each sequence run alone on one device',
      async ranks => {
        const m = await loadModel(dir, { backend, cacheDtype: 'f32', maxContext: 64, ranks });
        try {
          const V = m.engine.dims.vocab,
            steps = 3;
          const batched = runScript(m, five, steps);
          let row = 0;
          for (const [b, p] of five.entries()) {
            const alone = runScript(
              single,
              [p],
              steps,
              batched.chosen.map(c => [c[b]!]),
            );
            // the prompt's rows of the batched prefill, then its row of each decode step
            expectEqualLogits(batched.out[0]!.subarray(row * V, (row + p.length) * V), alone.out[0]!, V, 1e-5);
            row += p.length;
            for (let i = 1; i <= steps; i++)
              expectEqualLogits(batched.out[i]!.subarray(b * V, (b + 1) * V), alone.out[i]!, V, 1e-5);
          }
          // eager decode (no captured graph) gives the same rows as the replayed step
          const e = m.engine;
          const seqs = five.map(() => e.newSequence());
          e.forward(seqs, five).logits.dispose();
          const replay = e.forward(
            seqs,
            five.map(() => [3]),
          );
          for (const s of seqs) s.truncate(s.length - 1);
          const eager = e.forward(
            seqs,
            five.map(() => [3]),
            { eager: true, collectRouting: true, hidden: true },
          );
          expectEqualLogits(toArray(eager.logits) as Float32Array, toArray(replay.logits) as Float32Array, V, 1e-6);
          expect(eager.nFfn.length).toBe(e.dims.layers);
          expect(eager.nFfn[0]!.shape).toEqual([five.length]);
          expect(eager.hidden!.shape).toEqual([five.length, e.dims.hidden]);
          for (const t of [replay.logits, eager.logits, eager.hidden!, ...eager.nFfn]) t.dispose();
          for (const s of seqs) s.release();
        } finally {
          m.dispose();
        }
      },
      300_000,
    );
  });
}

describe('data-parallel sessions', () => {
  it('concurrent greedy sessions on 4 CPU ranks each equal the same request run alone on one device', async () => {
    const dir = path.join(root, 'tiny-mtp');
    await initRandom({ preset: 'tiny', out: dir, seed: 5, mtp: true, draftAgreement: 0.5 });
    const one = await loadModel(dir, { backend: 'cpu', maxContext: 256 });
    const four = await loadModel(dir, { backend: 'cpu', maxContext: 256, ranks: 4 });
    try {
      const requests = [
        { prompt: 'the first stream', o: { maxTokens: 12 } },
        { prompt: 'a second, longer prompt', o: { maxTokens: 8 } },
        { prompt: 'third', o: { maxTokens: 10, speculative: true } },
        { prompt: 'the fourth one', o: { maxTokens: 9 } },
        { prompt: 'fifth', o: { maxTokens: 7, temperature: 0.8, seed: 3 } },
      ];
      const want = [];
      for (const r of requests) {
        using s = one.createSession();
        want.push((await s.generate(r.prompt, r.o)).tokens);
      }
      const sessions = requests.map(() => four.createSession());
      const got = await Promise.all(requests.map((r, i) => sessions[i]!.generate(r.prompt, r.o)));
      // the sessions' sequences were spread over every rank (each rank's pool held pages)
      const used = four.engine.allocators.map(a => a.inUse);
      for (const s of sessions) s.dispose();
      expect(got.map(g => g.tokens)).toEqual(want);
      expect(used.filter(n => n > 0).length).toBe(4);
      expect(four.engine.allocators.map(a => a.inUse)).toEqual([0, 0, 0, 0]);
    } finally {
      one.dispose();
      four.dispose();
    }
  }, 300_000);
});
