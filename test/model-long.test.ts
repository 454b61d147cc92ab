// Model-level checks that need long contexts or real-sized latent widths, each aimed at a bug that
// once passed the whole suite: a session that reuses its KV cache after the prompt diverged, the
// absorbed decode's kv_b block scales past the first 128 latent columns (kv_lora_rank 256 / 512),
// the split-KV merge of the decode attention (contexts past the split threshold, 64 tokens per
// split at least), and YaRN with mscale != mscale_all_dim past the original context. Every check
// compares against the float64 reference of SPEC (test/reference) or against one full forward.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadModel, type Model } from '../lib/generate.js';
import { checkpointFixture, fullForward, prefillThenDecode, referenceLogits } from './model-fixture.js';

const makeCheckpoint = checkpointFixture('longcat-long-', 11);

/** Max |got - want| over rows, relative to the largest |want| of the row's block. */
function expectRowsClose(got: ArrayLike<number>, want: ArrayLike<number>, V: number, rel: number, what: string) {
  expect(got.length, `${what}: length`).toBe(want.length);
  for (let r = 0; r * V < want.length; r++) {
    let scale = 0,
      worst = 0,
      at = 0;
    for (let i = r * V; i < (r + 1) * V; i++) scale = Math.max(scale, Math.abs(want[i]!));
    for (let i = r * V; i < (r + 1) * V; i++) {
      const e = Math.abs(got[i]! - want[i]!);
      if (!(e <= worst)) {
        worst = e;
        at = i - r * V;
      }
    }
    if (!(worst <= rel * scale))
      expect.fail(
        `${what}: row ${r}, logit ${at}: ${got[r * V + at]} vs ${want[r * V + at]} (error ${worst}, allowed ${rel * scale})`,
      );
  }
}

const tokensOf = (n: number, seed: number, vocab = 512) =>
  Array.from({ length: n }, (_, i) => (seed * 7919 + i * 104729 + ((i * i) % 97)) % vocab);

describe('decode past the split threshold of the absorbed attention', () => {
  // 2 x threads work units; a sequence splits into ceil(len / max(64, total / units)) parts, so any
  // context above 128 tokens decodes in at least two splits whose partials must be merged.
  it('200 tokens: every decode step equals the full forward, the last ones the float64 reference', async () => {
    const dir = await makeCheckpoint('split');
    using model = await loadModel(dir, { backend: 'cpu', cacheDtype: 'f32', maxContext: 256 });
    const toks = tokensOf(200, 3);
    const V = model.engine.dims.vocab;
    const dec = prefillThenDecode(model.engine, toks, 8);
    expectRowsClose(dec, fullForward(model.engine, toks), V, 1e-4, 'decode vs full forward');
    const want = await referenceLogits(dir, toks);
    expectRowsClose(dec.subarray(150 * V), want.subarray(150 * V), V, 1e-4, 'decode vs reference');
  });
});

describe('YaRN with mscale != mscale_all_dim, past the original context', () => {
  it('decode and prefill equal the float64 reference at positions beyond original_max_position_embeddings', async () => {
    const dir = await makeCheckpoint('yarn-mscale', {
      max_position_embeddings: 256,
      rope_scaling: {
        type: 'yarn',
        factor: 4,
        original_max_position_embeddings: 64,
        beta_fast: 32,
        beta_slow: 1,
        mscale: Math.SQRT1_2,
        mscale_all_dim: 1.3,
      },
    });
    using model = await loadModel(dir, { backend: 'cpu', cacheDtype: 'f32', maxContext: 256 });
    const toks = tokensOf(150, 5);
    const V = model.engine.dims.vocab;
    const want = await referenceLogits(dir, toks);
    expectRowsClose(fullForward(model.engine, toks), want, V, 1e-4, 'prefill vs reference');
    expectRowsClose(prefillThenDecode(model.engine, toks, 40), want, V, 1e-4, 'decode vs reference');
  });
});

describe('FP8 checkpoints with 128-wide heads and real latent widths', () => {
  // With kv_lora_rank > 128 the absorbed kv_b has several 128-column scale blocks per head.
  it.each([256, 512])('kv_lora_rank %i: decode equals the full forward, the full forward the reference', async rank => {
    const dir = await makeCheckpoint(
      `fp8-rank${rank}`,
      { qk_nope_head_dim: 128, v_head_dim: 128, kv_lora_rank: rank, num_layers: 1 },
      true,
    );
    using model = await loadModel(dir, { backend: 'cpu', cacheDtype: 'f32', maxContext: 64 });
    const w = model.engine.w.layers[0]!.attn[0];
    expect(w.kvBScales, 'the absorbed kv_b keeps e4m3 codes with block scales').not.toBeNull();
    const toks = tokensOf(12, rank);
    const V = model.engine.dims.vocab;
    const full = fullForward(model.engine, toks);
    expectRowsClose(full, await referenceLogits(dir, toks), V, 1e-4, 'prefill vs reference');
    expectRowsClose(prefillThenDecode(model.engine, toks, 3), full, V, 1e-4, 'decode vs full forward');
  });
});

describe('a session whose next prompt diverges from its cached one', () => {
  let model: Model;
  beforeAll(async () => {
    model = await loadModel(await makeCheckpoint('session'), { backend: 'cpu', maxContext: 512 });
  });
  afterAll(() => model.dispose());

  it('generates what a fresh session generates, for divergence at every offset (block boundaries included)', async () => {
    const base = 'The quick brown fox jumps over the lazy dog while 0123456789 counts the sheep of the valley ';
    const first = base + base;
    const ids = model.tokenizer.encode(first);
    expect(ids.length, 'the first prompt crosses a 64-token KV block').toBeGreaterThan(70);
    // The character offsets at which each token starts, to diverge exactly at a token.
    const starts: number[] = [];
    for (let c = 0, prev = -1; c <= first.length; c++) {
      const n = model.tokenizer.encode(first.slice(0, c)).length;
      if (n !== prev) {
        starts.push(c);
        prev = n;
      }
    }
    const offsets = [
      ...new Set([0, 1, 2, 31, 62, 63, 64, 65, ids.length - 3, ids.length - 1].filter(o => o >= 0 && o < starts.length - 1)),
    ];
    using reused = model.createSession();
    let checked = 0;
    for (const o of offsets) {
      const cut = starts[o]!;
      const second = `${first.slice(0, cut)}#${first.slice(cut, cut + 9)}`;
      await reused.generate(first, { maxTokens: 3 });
      const again = await reused.generate(second, { maxTokens: 6 });
      using fresh = model.createSession();
      const want = await fresh.generate(second, { maxTokens: 6 });
      expect(again.tokens, `diverging at token ${o}`).toEqual(want.tokens);
      const shared = model.tokenizer.encode(second).findIndex((t, i) => t !== [...ids, -1][i]);
      expect(again.prefillTokens, `diverging at token ${o}: only the new suffix is computed`).toBe(
        again.promptTokens - Math.min(shared, again.promptTokens - 1),
      );
      checked++;
    }
    expect(checked).toBe(offsets.length);
  });
});
