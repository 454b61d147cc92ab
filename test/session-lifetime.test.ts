// Lifetimes of sessions and their KV-cache blocks (issue 13, item 10): a session dropped without
// dispose() gives its blocks back once it is garbage-collected; model.dispose() frees every
// session's blocks at once (the sessions then throw E_DISPOSED); a generation that finds no block
// left for its next token ends with stopReason 'cache' and the text so far.
import { describe, expect, it } from 'vitest';
import { loadModel } from '../lib/generate.js';
import { DisposedError } from '../lib/errors.js';
import { checkpointFixture, cpuModelFixture } from './model-fixture.js';

const makeCheckpoint = checkpointFixture('longcat-lifetime-', 21);
const tiny = cpuModelFixture(makeCheckpoint, 'tiny', 512);

const gc = (globalThis as { gc?: () => void }).gc;
/** Collections until nothing unreachable is left to finalize (finalizers run on a later turn). */
async function settle(turns = 10) {
  for (let i = 0; i < turns; i++) {
    gc!();
    await new Promise(r => setImmediate(r));
  }
}

describe('KV blocks of sessions', () => {
  it('a session dropped without dispose() returns its blocks once it is garbage-collected', async () => {
    expect(gc, 'vitest runs with --expose-gc (vitest.config.ts)').toBeTypeOf('function');
    const blocks = tiny.model.engine.allocator;
    await settle();
    const before = blocks.inUse;
    await (async () => {
      for (let i = 0; i < 3; i++) {
        const s = tiny.model.createSession(); // never disposed
        await s.generate('Once upon a time, in a valley of 42 sheep,', { maxTokens: 70 });
        expect(s.length).toBeGreaterThan(64); // two blocks of 64
        expect(blocks.inUse).toBeGreaterThanOrEqual(before + 2); // (earlier ones may be collected already)
      }
    })();
    // Finalizers run on a later turn of the event loop after a collection.
    for (let i = 0; i < 50 && blocks.inUse > before; i++) {
      gc!();
      await new Promise(r => setImmediate(r));
    }
    expect(blocks.inUse).toBe(before);
  });

  it('a disposed session is not finalized twice: its blocks, reused by another session, stay that one', async () => {
    const blocks = tiny.model.engine.allocator;
    await settle();
    const before = blocks.inUse;
    (() => {
      const s = tiny.model.createSession();
      s.dispose();
    })();
    using keep = tiny.model.createSession();
    await keep.generate('abc', { maxTokens: 3 });
    const held = blocks.inUse;
    expect(held).toBeGreaterThan(before);
    await settle();
    expect(blocks.inUse).toBe(held);
  });

  it('model.dispose() frees every session at once; the sessions then throw E_DISPOSED', async () => {
    const m = await loadModel(tiny.dir, { backend: 'cpu', maxContext: 256 });
    const a = m.createSession(),
      b = m.createSession();
    await a.generate('Once upon a time', { maxTokens: 5 });
    await b.generate('In a valley', { maxTokens: 5 });
    expect(m.engine.allocator.inUse).toBe(2);
    m.dispose();
    expect(m.engine.allocator.inUse).toBe(0);
    const err = await a.generate('more', { maxTokens: 1 }).then(
      () => null,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(DisposedError);
    expect((err as DisposedError).code).toBe('E_DISPOSED');
    expect((err as Error).message).toMatch(/model was disposed/);
    expect(() => m.createSession()).toThrow(DisposedError);
    expect(() => m.forward([1, 2])).toThrow(DisposedError);
    a.dispose(); // still allowed, and nothing is freed twice
    b.dispose();
    m.dispose();
    expect(m.engine.allocator.inUse).toBe(0);
  });

  it('running out of KV blocks mid-generation ends it with stopReason cache and the text so far', async () => {
    // Two blocks of 64 tokens for every session together.
    const m = await loadModel(tiny.dir, { backend: 'cpu', maxContext: 512, cacheBlocks: 2 });
    try {
      const prompt = 'Once upon a time, in a valley of 42 sheep,';
      using other = m.createSession();
      await other.generate('abc', { maxTokens: 1 }); // holds one block
      using s = m.createSession();
      const chunks: string[] = [];
      const g = s.generate(prompt, { maxTokens: 200 });
      for await (const c of g) chunks.push(c);
      const r = await g;
      // The same model with room to spare writes the same tokens, and more.
      using free = tiny.model.createSession();
      const ref = await free.generate(prompt, { maxTokens: 100 });
      expect(ref.stopReason, 'the reference runs past the first block').toBe('length');
      expect(r.stopReason).toBe('cache');
      expect(s.length).toBe(64); // its one block full
      expect(r.completionTokens).toBe(64 - r.promptTokens + 1); // the last token sampled is kept
      expect(r.tokens).toEqual(ref.tokens.slice(0, r.completionTokens));
      expect(r.text).toBe(m.tokenizer.decode(r.tokens.filter(t => t < m.tokenizer.vocabSize)));
      expect(chunks.join('')).toBe(r.text);
      // Once the other session lets its block go, the session gets past its first block.
      other.dispose();
      const more = await s.generate(prompt, { maxTokens: 100 });
      expect(more.stopReason).toBe('length');
      expect(more.tokens).toEqual(ref.tokens);
    } finally {
      m.dispose();
    }
  });
});
