// The paged KV cache bookkeeping: the block allocator, per-sequence slot reservation and
// truncation, and the batch block tables.
import { describe, expect, it } from 'vitest';
import { ArgumentError, ContextLengthError, LongcatError, OutOfMemoryError } from '../lib/errors.js';
import { BlockAllocator, SequenceCache, batchTables } from '../lib/kv-cache.js';
import { rng } from './helpers.js';

function expectCode(fn: () => unknown, code: string, cls: abstract new (...args: never[]) => unknown, message?: RegExp) {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(LongcatError);
    expect(e).toBeInstanceOf(cls);
    expect((e as LongcatError).code).toBe(code);
    if (message) expect((e as Error).message).toMatch(message);
    return;
  }
  expect.fail(`expected a ${code} error`);
}

describe('BlockAllocator', () => {
  it('allocates every block once, then E_OOM', () => {
    const a = new BlockAllocator(4);
    expect(a.available).toBe(4);
    const ids = [a.alloc(), a.alloc(), a.alloc(), a.alloc()];
    expect(ids).toEqual([0, 1, 2, 3]);
    expect(a.available).toBe(0);
    expect(a.inUse).toBe(4);
    expectCode(() => a.alloc(), 'E_OOM', OutOfMemoryError, /4 blocks/);
  });

  it('reuses freed blocks and rejects double frees and bad ids', () => {
    const a = new BlockAllocator(3);
    const x = a.alloc(),
      y = a.alloc();
    a.free(x);
    expect(a.available).toBe(2);
    expect(a.alloc()).toBe(x);
    a.free([x, y]);
    expect(a.available).toBe(3);
    expectCode(() => a.free(x), 'E_ARGUMENT', ArgumentError, /not allocated/);
    expectCode(() => a.free(3), 'E_ARGUMENT', ArgumentError, /outside/);
    expectCode(() => a.free(-1), 'E_ARGUMENT', ArgumentError);
    const z = a.alloc();
    expectCode(() => a.free([z, z]), 'E_ARGUMENT', ArgumentError, /double free/);
    expect(a.inUse).toBe(1); // the failed free changed nothing
    expectCode(() => new BlockAllocator(0), 'E_ARGUMENT', ArgumentError);
    expectCode(() => new BlockAllocator(2.5), 'E_ARGUMENT', ArgumentError);
  });
});

describe('SequenceCache', () => {
  it('reserves slots block by block', () => {
    const a = new BlockAllocator(8);
    const s = new SequenceCache(a, 4, 100);
    expect(s.length).toBe(0);
    expect(Array.from(s.reserve(0))).toEqual([]);
    expect(a.available).toBe(8);
    expect(Array.from(s.reserve(3))).toEqual([0, 1, 2]);
    expect(s.length).toBe(3);
    expect(s.spare).toBe(1);
    // another sequence interleaves, so this one's second block is not contiguous
    const other = new SequenceCache(a, 4, 100);
    expect(Array.from(other.reserve(1))).toEqual([4]);
    expect(Array.from(s.reserve(6))).toEqual([3, 8, 9, 10, 11, 12]);
    expect(Array.from(s.blockTable())).toEqual([0, 2, 3]);
    expect(s.length).toBe(9);
    expect(Array.from(s.slots())).toEqual([0, 1, 2, 3, 8, 9, 10, 11, 12]);
    expect(Array.from(s.slots(4, 6))).toEqual([8, 9]);
    expect(a.available).toBe(4);
  });

  it('truncates, freeing whole blocks only, and regrows into reused blocks', () => {
    const a = new BlockAllocator(6);
    const s = new SequenceCache(a, 4, 64);
    s.reserve(10); // blocks 0,1,2 (2 tokens in the last)
    s.truncate(9);
    expect(s.length).toBe(9);
    expect(s.numBlocks).toBe(3);
    s.truncate(8); // block 2 no longer needed
    expect(s.numBlocks).toBe(2);
    expect(a.available).toBe(4);
    expect(Array.from(s.reserve(1))).toEqual([2 * 4]); // block 2 comes back
    s.truncate(0);
    expect(s.numBlocks).toBe(0);
    expect(a.available).toBe(6);
    expectCode(() => s.truncate(1), 'E_ARGUMENT', ArgumentError, /outside/);
    s.reserve(5);
    expectCode(() => s.truncate(6), 'E_ARGUMENT', ArgumentError);
    expectCode(() => s.truncate(-1), 'E_ARGUMENT', ArgumentError);
    expectCode(() => s.slots(0, 6), 'E_ARGUMENT', ArgumentError);
  });

  it('speculative decoding pattern: reserve 2, reject 1, continue', () => {
    const a = new BlockAllocator(4);
    const s = new SequenceCache(a, 2, 16);
    s.reserve(3); // prefill 3 tokens
    const v = s.reserve(2); // verify [x_n, d] at positions 3, 4
    expect(Array.from(v)).toEqual([3, 4]);
    expect(s.numBlocks).toBe(3);
    s.truncate(4); // draft rejected: drop position 4, its block is freed
    expect(s.numBlocks).toBe(2);
    expect(a.available).toBe(2);
    expect(Array.from(s.reserve(2))).toEqual([4, 5]);
  });

  it('E_CONTEXT past maxContext and E_OOM when the pool is empty, atomically', () => {
    const a = new BlockAllocator(3);
    const s = new SequenceCache(a, 4, 10);
    s.reserve(8);
    expectCode(() => s.reserve(3), 'E_CONTEXT', ContextLengthError, /maxContext 10/);
    expect(s.length).toBe(8);
    expect(Array.from(s.reserve(2))).toEqual([8, 9]);
    expectCode(() => s.reserve(1), 'E_CONTEXT', ContextLengthError, /10/);

    const t = new SequenceCache(a, 4, 100);
    expect(a.available).toBe(0);
    expectCode(() => t.reserve(1), 'E_OOM', OutOfMemoryError);
    expect(t.length).toBe(0);
    s.release();
    expect(a.available).toBe(3);
    const u = new SequenceCache(a, 4, 100);
    u.reserve(5); // 2 blocks
    expectCode(() => t.reserve(9), 'E_OOM', OutOfMemoryError, /3 more needed/); // needs 3, 1 free
    expect(t.length).toBe(0);
    expect(a.available).toBe(1); // nothing was taken by the failed reserve
    expect(t.reserve(4).length).toBe(4);
  });

  it('release is idempotent and makes the sequence unusable', () => {
    const a = new BlockAllocator(4);
    const s = new SequenceCache(a, 8, 32);
    s.reserve(20);
    expect(a.available).toBe(1);
    s.release();
    s.release();
    expect(a.available).toBe(4);
    expect(s.length).toBe(0);
    expect(s.blockTable().length).toBe(0);
    expectCode(() => s.reserve(1), 'E_ARGUMENT', ArgumentError, /released/);
    {
      using t = new SequenceCache(a, 8, 32);
      t.reserve(9);
      expect(a.available).toBe(2);
    }
    expect(a.available).toBe(4);
    expectCode(() => new SequenceCache(a, 0, 32), 'E_ARGUMENT', ArgumentError);
    expectCode(() => s.reserve(-1), 'E_ARGUMENT', ArgumentError);
  });

  it('random workload: slots of live sequences never collide and tables match slots', () => {
    const r = rng(5);
    const a = new BlockAllocator(40);
    const bs = 3;
    const seqs = Array.from({ length: 5 }, () => new SequenceCache(a, bs, 60));
    for (let step = 0; step < 400; step++) {
      const s = seqs[r.int(seqs.length)]!;
      const op = r.int(3);
      try {
        if (op < 2) s.reserve(r.int(5));
        else s.truncate(r.int(s.length + 1));
      } catch (e) {
        expect(['E_OOM', 'E_CONTEXT']).toContain((e as LongcatError).code);
      }
      const owner = new Map<number, number>();
      let blocks = 0;
      seqs.forEach((q, qi) => {
        const tab = q.blockTable();
        blocks += tab.length;
        expect(tab.length).toBe(Math.ceil(q.length / bs));
        const sl = q.slots();
        sl.forEach((slot, p) => {
          expect(slot).toBe(tab[Math.floor(p / bs)]! * bs + (p % bs));
          expect(owner.has(slot)).toBe(false);
          owner.set(slot, qi);
        });
      });
      expect(blocks + a.available).toBe(40);
    }
  });
});

describe('batchTables', () => {
  it('packs [B, maxBlocks] tables padded with 0 plus lengths', () => {
    const a = new BlockAllocator(10);
    const s0 = new SequenceCache(a, 4, 64),
      s1 = new SequenceCache(a, 4, 64),
      s2 = new SequenceCache(a, 4, 64);
    s0.reserve(5); // blocks 0,1
    s1.reserve(9); // 2,3,4
    s0.reserve(4); // 5 (9 tokens)
    const b = batchTables([s0, s1, s2]);
    expect(b.maxBlocks).toBe(3);
    expect(Array.from(b.table)).toEqual([0, 1, 5, 2, 3, 4, 0, 0, 0]);
    expect(Array.from(b.seqLens)).toEqual([9, 9, 0]);
    const c = batchTables([s1], 5);
    expect(c.maxBlocks).toBe(5);
    expect(Array.from(c.table)).toEqual([2, 3, 4, 0, 0]);
    expectCode(() => batchTables([s0, s1], 2), 'E_ARGUMENT', ArgumentError, /maxBlocks 2/);
    const e = batchTables([]);
    expect(e.table.length).toBe(0);
    expect(e.maxBlocks).toBe(1);
  });
});
