// Prefix caching: full KV pages of finished prompts stay cached (reference counted, evicted least
// recently released first) and a later prompt starting with the same tokens shares them -- it
// prefills only the rest and generates what a model without the cache generates.
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlockAllocator, SequenceCache, matchPrefix } from '../lib/kv-cache.js';
import { initRandom } from '../lib/init-random.js';
import { loadModel, type GenerateOptions, type Model } from '../lib/generate.js';
import { native } from '../lib/native.js';
import { fixtureRoot } from './model-fixture.js';

describe('BlockAllocator / SequenceCache with cached pages', () => {
  const seqOf = (a: BlockAllocator, tokens: number[]) => {
    const s = new SequenceCache(a, 4, 64);
    s.reserve(tokens.length);
    return s;
  };
  it('publishes full pages, shares them by reference, keeps them idle after release and evicts the oldest first', () => {
    const a = new BlockAllocator(6);
    const t = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10];
    const s1 = seqOf(a, t);
    s1.publish(t);
    expect(a.cachedPages).toBe(2); // two full pages of 4; the third holds 2 tokens
    const m = matchPrefix(a, 4, [...t.slice(0, 8), 42], 8);
    expect(m.blocks).toEqual(Array.from(s1.blockTable().slice(0, 2)));
    expect(matchPrefix(a, 4, [1, 2, 3, 9, 9], 5).blocks).toEqual([]); // the first page differs
    expect(matchPrefix(a, 4, [...t.slice(0, 4), 0, 0, 0, 0], 8).blocks).toHaveLength(1);
    const s2 = new SequenceCache(a, 4, 64);
    s2.adopt(m.blocks);
    expect(s2.length).toBe(8);
    expect(a.inUse).toBe(3); // 3 of s1, s2 shares 2 of them
    s1.release();
    expect(a.inUse).toBe(2);
    s2.release();
    expect(a.inUse).toBe(0); // idle cached pages count as available...
    expect(a.cachedPages).toBe(2); // ...and keep their contents
    // fresh and free blocks go first (3 never used + the private third page), then the idle
    // pages, least recently released first: s2 let go of its second page before its first
    const ids = Array.from({ length: 4 }, () => a.alloc());
    expect(a.cachedPages).toBe(2);
    ids.push(a.alloc());
    expect(a.cachedPages).toBe(1);
    expect(matchPrefix(a, 4, t, 8).blocks).toHaveLength(1);
    ids.push(a.alloc());
    expect(a.cachedPages).toBe(0);
    expect(() => a.alloc()).toThrow(/in use/);
  });
  it('evicting a page forgets the pages that continue it (their keys name it)', () => {
    const a = new BlockAllocator(3);
    const t = [1, 2, 3, 4, 5, 6, 7, 8];
    const s = seqOf(a, t);
    s.publish(t);
    const [p0, p1] = Array.from(s.blockTable());
    a.retain(p1!); // the second page outlives the first
    s.release();
    a.free(p1!);
    expect(a.cachedPages).toBe(2);
    a.alloc(); // the one fresh block
    a.alloc(); // evicts the first page, the oldest idle one: the second goes with it
    expect(a.cachedPages).toBe(0);
    expect(a.available).toBe(1);
    expect([p0, p1]).toHaveLength(2);
  });
  it('never writes a page another sequence holds: truncating inside one drops it; a cached page held alone leaves the cache', () => {
    const a = new BlockAllocator(8);
    const t = [1, 2, 3, 4, 5, 6, 7, 8, 9];
    const s1 = seqOf(a, t);
    s1.publish(t);
    const s2 = new SequenceCache(a, 4, 64);
    s2.adopt(matchPrefix(a, 4, t, 8).blocks);
    expect(s1.truncate(6)).toBe(4); // position 6 is inside the second page, which s2 holds too
    expect(s1.truncate(4)).toBe(4);
    expect(a.cachedPages).toBe(2);
    s1.release();
    expect(s2.truncate(7)).toBe(7); // s2 alone holds the second page now: it stops being cached
    expect(a.cachedPages).toBe(1);
    expect(matchPrefix(a, 4, t, 8).blocks).toHaveLength(1);
    const s3 = seqOf(a, [1, 2, 3]);
    expect(s3.truncate(2)).toBe(2); // a private page is cut as asked
    expect(() => s3.adopt([0])).toThrow(/empty/);
  });
});

describe('sessions sharing prompt prefixes', () => {
  const root = fixtureRoot('longcat-prefix-');
  let cached: Model, plain: Model, prev: string;
  const system = Array.from({ length: 60 }, (_, i) => `rule${i % 9}`).join(' ');
  beforeAll(async () => {
    const dir = path.join(root, 'tiny');
    await initRandom({ preset: 'tiny', out: dir, seed: 8, mtp: true, draftAgreement: 0.5 });
    prev = native.setMatmulPrecision('highest');
    cached = await loadModel(dir, { backend: 'cpu', maxContext: 1024 });
    plain = await loadModel(dir, { backend: 'cpu', maxContext: 1024, prefixCache: false });
  });
  afterAll(() => {
    cached.dispose();
    plain.dispose();
    native.setMatmulPrecision(prev as 'highest');
  });
  const run = async (m: Model, prompt: string, o: GenerateOptions = {}) => {
    using s = m.createSession();
    return await s.generate(prompt, { maxTokens: 12, ...o });
  };

  it.each([
    ['plain', {}],
    ['speculative', { speculative: true }],
    ['sampled', { temperature: 0.8, seed: 5 }],
  ])(
    '%s: a second prompt with the same system text prefills only its own tokens, same tokens as without the cache',
    async (name, o) => {
      const text = `${name}: ${system}`;
      const first = await run(cached, `${text} first question`, o);
      expect(first.prefillTokens).toBe(first.promptTokens);
      const second = await run(cached, `${text} another one`, o);
      const bs = cached.engine.blockSize;
      expect(second.prefillTokens).toBeLessThanOrEqual(second.promptTokens - bs); // at least one page shared
      expect(second.tokens).toEqual((await run(plain, `${text} another one`, o)).tokens);
      expect(cached.engine.allocator.inUse).toBe(0);
    },
  );

  it('pages cached by a plain generation are taken over by a speculative one (which needs the MTP latents too)', async () => {
    const text = `takeover: ${system}`;
    await run(cached, `${text} 1`);
    const a = await run(cached, `${text} 2`, { speculative: true });
    expect(a.prefillTokens).toBe(a.promptTokens); // the cached pages lack the MTP head's latents
    const b = await run(cached, `${text} 3`, { speculative: true });
    expect(b.prefillTokens).toBeLessThanOrEqual(b.promptTokens - cached.engine.blockSize);
    expect(b.tokens).toEqual((await run(plain, `${text} 3`, { speculative: true })).tokens);
  });

  it('a chat turn rewound inside a shared page, and pages evicted under memory pressure, still give the plain tokens', async () => {
    using s = cached.createSession();
    using p = plain.createSession();
    const prompts = [`${system} q1`, `${system.slice(0, 200)} something else`, `${system} q1 and more`];
    for (const q of prompts)
      expect((await s.generate(q, { maxTokens: 6 })).tokens).toEqual((await p.generate(q, { maxTokens: 6 })).tokens);
    // fill the cache with other prompts until the first pages are evicted, then ask again
    const before = cached.engine.allocator.cachedPages;
    expect(before).toBeGreaterThan(0);
    for (let i = 0; cached.engine.allocator.cachedPages >= before && i < 200; i++)
      await run(cached, `${i} ${system.split(' ').reverse().join(' ')} ${i}`, { maxTokens: 1 });
    expect((await run(cached, `${system} q1`)).tokens).toEqual((await run(plain, `${system} q1`)).tokens);
  });
});
