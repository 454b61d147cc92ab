// Captured decode graphs by bucket of batch sizes (lib/model/model.ts graphBucket, padRows): a batch
// whose size is not a bucket replays the next bucket's graph padded with inert rows. On the CPU and
// on CUDA (the emulator in CI): a padded batch gives the logits and greedy tokens of the same batch
// run op by op without padding (fp32), over several steps (so every step also reads the latents
// the padded steps wrote); the padding writes nothing into any page of the pool (a bystander
// sequence's pages and every free page keep their bytes); speculative steps pad the same way; and
// the number of captured graphs stays that of the buckets however many batch sizes run.
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initRandom } from '../lib/init-random.js';
import { loadModel, type Model } from '../lib/generate.js';
import { LongcatModel, graphBucket } from '../lib/model/model.js';
import { toArray } from '../lib/tensor.js';
import type { SequenceCache } from '../lib/kv-cache.js';
import { expectLogitsClose, fixtureRoot, readLogits } from './model-fixture.js';
import { backends, rng, workLimitMs } from './helpers.js';

const root = fixtureRoot('longcat-buckets-');
let dir: string;
beforeAll(async () => {
  dir = path.join(root, 'tiny');
  await initRandom({ preset: 'tiny', out: dir, seed: 17, mtp: true, draftAgreement: 0.6 });
});

describe('graphBucket', () => {
  it('1, 2, 4, then multiples of 8 up to 256, then of 64: never below the size, at most 63 rows of padding', () => {
    expect([1, 2, 3, 4, 5, 8, 9, 16, 17, 63, 64, 65, 256, 257, 321].map(graphBucket)).toEqual([
      1, 2, 4, 4, 8, 8, 16, 16, 24, 64, 64, 72, 256, 320, 384,
    ]);
    const sizes = new Set<number>();
    for (let n = 1; n <= 2000; n++) {
      const b = graphBucket(n);
      expect(b).toBeGreaterThanOrEqual(n);
      expect(b - n).toBeLessThanOrEqual(63);
      if (n <= 256) sizes.add(b);
    }
    expect(sizes.size).toBe(35); // 1, 2, 4, 8, 16, .., 256
  });
});

const argmaxRows = (l: Float32Array, V: number) =>
  Array.from({ length: l.length / V }, (_, b) => {
    let best = 0;
    for (let i = 1; i < V; i++) if (l[b * V + i]! > l[b * V + best]!) best = i;
    return best;
  });

/** The model's latent caches (f32 [blocks, blockSize, row]), read back whole, by block. */
const cacheBlocks = (e: LongcatModel) =>
  e.kvCaches().map(c => {
    const all = Float32Array.from(toArray(c) as Float32Array),
      per = c.shape[1]! * c.shape[2]!;
    return (blk: number) => all.subarray(blk * per, (blk + 1) * per);
  });

describe.each(backends)('decode graphs by bucket on %s', device => {
  const backend = device === 'cpu' ? 'cpu' : 'cuda';
  let model: Model;
  /** Engines over model's weights (not owned: disposing them leaves the weights to `model`), with
   *  8-token pages: replaying captured graphs, and op by op (never padded). */
  let graphs: LongcatModel, eager: LongcatModel;
  const engine = (o: { graphs?: boolean; numBlocks?: number } = {}) =>
    new LongcatModel(
      model.engine.dims,
      { ...model.engine.w, owned: [] },
      { device, maxContext: 128, cacheDtype: 'f32', blockSize: 8, numBlocks: 96, ...o },
    );
  beforeAll(async () => {
    model = await loadModel(dir, { backend, cacheDtype: 'f32', maxContext: 128, cacheBlocks: 8 });
    graphs = engine();
    eager = engine({ graphs: false });
  });
  afterAll(() => {
    graphs?.dispose();
    eager?.dispose();
    model?.dispose();
  });

  it(
    'batches of 3, 5 and 11 (graphs of 4, 8, 16) give the unpadded logits and greedy tokens; the padding writes no page',
    () => {
      const e = graphs,
        V = e.dims.vocab,
        r = rng(5);
      const bystander = e.newSequence();
      readLogits(e.forward([bystander], [[3, 1, 4, 1, 5, 9, 2, 6, 5]]));
      for (const B of [3, 5, 11]) {
        const prompts = Array.from({ length: B }, (_, b) => Array.from({ length: 1 + ((b * 7) % 13) }, () => r.uint32() % V));
        const G = prompts.map(() => e.newSequence()),
          E = prompts.map(() => eager.newSequence());
        let gNext = argmaxRows(readLogits(e.forward(G, prompts)), V);
        let eNext = argmaxRows(readLogits(eager.forward(E, prompts)), V);
        expect(gNext).toEqual(eNext);
        const before = cacheBlocks(e);
        for (let step = 0; step < 4; step++) {
          const got = readLogits(
            e.forward(
              G,
              gNext.map(t => [t]),
            ),
          );
          const want = readLogits(
            eager.forward(
              E,
              eNext.map(t => [t]),
            ),
          );
          expect(got.length).toBe(B * V); // the step's rows only
          expectLogitsClose(got, want, 1e-5, `batch ${B}, step ${step}`);
          gNext = argmaxRows(got, V);
          eNext = argmaxRows(want, V);
          expect(gNext).toEqual(eNext);
        }
        // the steps wrote only into the batch's own pages: every other page of the pool (the
        // bystander's, the free ones) keeps its bytes
        const after = cacheBlocks(e);
        const own = new Set(G.flatMap(s => [...s.blockTable()]));
        for (const [c, a] of after.entries())
          for (let blk = 0; blk < e.allocator.numBlocks; blk++)
            if (!own.has(blk)) expect(a(blk), `cache ${c}, block ${blk}`).toEqual(before[c]!(blk));
        expect(e.capturedGraphs.decode).toBe(new Set([3, 5, 11].filter(b => b <= B).map(graphBucket)).size);
        for (const s of [...G, ...E]) s.release();
      }
      bystander.release();
    },
    workLimitMs(60),
  );

  it(
    'decode batches of every size 1..20 in random order capture one graph per bucket (6), not one per size',
    () => {
      const e = graphs,
        V = e.dims.vocab,
        r = rng(9);
      const fresh = engine({ numBlocks: 48 });
      try {
        const sizes = Array.from({ length: 20 }, (_, i) => i + 1);
        for (let i = sizes.length - 1; i > 0; i--) {
          const j = r.uint32() % (i + 1);
          [sizes[i], sizes[j]] = [sizes[j]!, sizes[i]!];
        }
        for (const B of [...sizes, ...sizes.slice(0, 5)]) {
          const seqs = Array.from({ length: B }, () => fresh.newSequence());
          // one token each: a decode step (the graph of B's bucket)
          readLogits(
            fresh.forward(
              seqs,
              seqs.map((_, b) => [(b * 31) % V]),
            ),
          );
          for (const s of seqs) s.release();
        }
        expect(fresh.capturedGraphs).toEqual({ decode: new Set(sizes.map(graphBucket)).size, speculative: 0 });
        expect(fresh.capturedGraphs.decode).toBe(6); // 1, 2, 4, 8, 16, 24
        expect(fresh.allocator.inUse).toBe(0);
      } finally {
        fresh.dispose();
      }
    },
    workLimitMs(60),
  );

  it(
    'a speculative step of 3 sequences (the graph of 4, padded) equals plain greedy decoding of the 3',
    async () => {
      const e = graphs,
        V = e.dims.vocab;
      const prompts = [
        [5, 6, 7, 8, 9, 10],
        [11, 3],
        [40, 41, 42, 43, 44, 45, 46, 47, 48],
      ];
      const greedy = { temperature: 0, topK: 0, topP: 1, minP: 0, seed: 0 };
      const steps = 10;
      // plain, op by op
      const E = prompts.map(() => eager.newSequence());
      let next = argmaxRows(readLogits(eager.forward(E, prompts)), V);
      const plain: number[][] = next.map(t => [t]);
      while (plain.some(p => p.length < steps)) {
        next = argmaxRows(
          readLogits(
            eager.forward(
              E,
              next.map(t => [t]),
            ),
          ),
          V,
        );
        for (const [b, t] of next.entries()) plain[b]!.push(t);
      }
      // speculative, replayed from the graph of 4 sequences
      const G: SequenceCache[] = prompts.map(() => e.newSequence());
      const r0 = e.forward(G, prompts, { hidden: true });
      let pending = argmaxRows(readLogits(r0), V);
      const drafted = e.mtp(
        G,
        prompts.map((p, b) => [...p.slice(1), pending[b]!]),
        prompts.map(() => 0),
        r0.hidden!,
      );
      r0.hidden!.dispose();
      let drafts = argmaxRows(readLogits({ logits: drafted }), V);
      const spec: number[][] = pending.map(t => [t]);
      let accepted = 0;
      const before = e.capturedGraphs.speculative;
      while (spec.some(p => p.length < steps)) {
        const s = await e.speculativeStep(
          G,
          pending,
          drafts,
          prompts.map(() => greedy),
        );
        expect(s.nFfn.every(t => t.shape[0] === 6)).toBe(true); // the 3 sequences' verified rows
        for (const t of s.nFfn) t.dispose();
        expect(s.tokens.length).toBe(3);
        for (const [b, list] of s.tokens.entries()) spec[b]!.push(...list);
        accepted += s.accepted.reduce((a, n) => a + n, 0);
        pending = s.tokens.map(list => list[list.length - 1]!);
        drafts = s.drafts;
      }
      expect(spec.map(p => p.slice(0, steps))).toEqual(plain.map(p => p.slice(0, steps)));
      expect(accepted).toBeGreaterThan(0);
      expect(e.capturedGraphs.speculative).toBe(before + (before === 0 ? 1 : 0));
      for (const s of [...E, ...G]) s.release();
    },
    workLimitMs(60),
  );
});
