// Paged latent KV cache bookkeeping (SPEC 5.1, DESIGN "The KV cache is paged").
//
// The cache memory itself is native: one tensor [numBlocks, blockSize, width] per attention
// sub-layer (2 per logical layer, +1 for MTP; width and dtype: latentCacheRow). All of them share one block numbering, so a single
// allocator and one block table per sequence serve every sub-layer. Native ops address a token by
// its slot `block * blockSize + row` (int32) and read a batch through int32 block tables
// [B, maxBlocks] plus per-sequence lengths. This file only does the bookkeeping.

import { ArgumentError, ContextLengthError, OutOfMemoryError } from './errors.js';
import type { DType } from '../types/native.js';

/** The element format of the latent KV cache. */
export type CacheDtype = 'f32' | 'bf16' | 'fp8';

/**
 * How one token's latent-cache row is stored: the tensor dtype and last dim of a cache
 * [numBlocks, blockSize, width], and its bytes. 'f32' / 'bf16': kvLora + rope values. 'fp8':
 * FlashMLA's quantized row, a fp8_e4m3 tensor of kvLora + 4 kvLora / 128 + 2 rope bytes (the latent
 * in e4m3, one f32 scale per 128 values, the rope key in bf16; the layout is defined in
 * native/cpu/mla.h, MlaCache): 656 bytes at LongCat's 512 + 64, against 1152 in bf16 and 2304 in f32.
 * Throws ArgumentError when 'fp8' cannot hold these sizes (kvLora not a multiple of 128, odd rope).
 */
export function latentCacheRow(kvLora: number, rope: number, dtype: CacheDtype): { dtype: DType; width: number; bytes: number } {
  if (dtype !== 'fp8') {
    const width = kvLora + rope;
    return { dtype, width, bytes: width * (dtype === 'bf16' ? 2 : 4) };
  }
  if (kvLora % 128 !== 0 || rope % 2 !== 0)
    throw new ArgumentError(
      'E_ARGUMENT',
      `cacheDtype 'fp8' needs kv_lora_rank to be a multiple of 128 and qk_rope_head_dim to be even ` +
        `(one f32 scale per 128 latent values, 4-byte aligned rows), got ${kvLora} and ${rope}`,
    );
  const width = kvLora + (4 * kvLora) / 128 + 2 * rope;
  return { dtype: 'fp8_e4m3', width, bytes: width };
}

function checkCount(what: string, v: number, min: number): void {
  if (!Number.isInteger(v) || v < min) throw new ArgumentError('E_ARGUMENT', `${what} must be an integer >= ${min}, got ${v}`);
}

/**
 * Hands out block ids 0..numBlocks-1, reference counted: a block may be held by several sequences
 * (a shared prompt prefix). Freed blocks are reused first (LIFO). A block registered in the prefix
 * cache keeps its contents when its last holder lets go: it waits, least recently released first,
 * until a later prompt with the same prefix takes it again (retain) or an allocation needs it (then
 * it is evicted: unregistered, with every cached page that continues it).
 */
export class BlockAllocator {
  readonly numBlocks: number;
  private readonly freeList: number[] = []; // released blocks, reused first (last released first)
  private fresh = 0; // blocks fresh..numBlocks-1 were never handed out
  private readonly refs: Int32Array;
  /** Registered pages by key (see PrefixCache), and the key / continuing pages of each. */
  private readonly pages = new Map<string, number>();
  private readonly keyOf = new Map<number, string>();
  private readonly children = new Map<number, Set<number>>();
  private readonly parentOf = new Map<number, number>();
  /** Registered blocks nobody holds, least recently released first (Map keeps insertion order). */
  private readonly idle = new Map<number, true>();
  /** Cached pages whose latents include the MTP head's (written by a speculating sequence). */
  private readonly withMtp = new Set<number>();

  constructor(numBlocks: number) {
    checkCount('BlockAllocator: numBlocks', numBlocks, 1);
    if (numBlocks > 0x7fffffff)
      throw new ArgumentError('E_ARGUMENT', `BlockAllocator: numBlocks ${numBlocks} does not fit int32`);
    this.numBlocks = numBlocks;
    this.refs = new Int32Array(numBlocks);
  }

  /** Number of blocks an allocation can get: free ones and idle cached pages (evicted on demand). */
  get available(): number {
    return this.freeList.length + this.numBlocks - this.fresh + this.idle.size;
  }

  /** Number of blocks held by sequences. */
  get inUse(): number {
    return this.numBlocks - this.available;
  }

  /** Registered pages (held or idle). */
  get cachedPages(): number {
    return this.pages.size;
  }

  /** One free block id (evicting the least recently released cached page when no block is free);
   *  OutOfMemoryError (E_OOM) when none is left. */
  alloc(): number {
    let id = this.freeList.pop() ?? (this.fresh < this.numBlocks ? this.fresh++ : undefined);
    if (id === undefined) {
      const oldest = this.idle.keys().next();
      if (!oldest.done) {
        id = oldest.value;
        this.unregister(id);
        this.freeList.pop(); // unregister put the idle block on the free list
      }
    }
    if (id === undefined) {
      throw new OutOfMemoryError(
        'E_OOM',
        `KV cache: all ${this.numBlocks} blocks are in use (raise the cache size or release sequences)`,
      );
    }
    this.refs[id] = 1;
    return id;
  }

  /** One more holder of a block that is held or cached. */
  retain(id: number): void {
    if (!Number.isInteger(id) || id < 0 || id >= this.numBlocks || (this.refs[id] === 0 && !this.idle.has(id)))
      throw new ArgumentError('E_ARGUMENT', `BlockAllocator.retain: block ${id} is neither held nor cached`);
    this.idle.delete(id);
    this.refs[id]!++;
  }

  /** Whether more than one sequence holds the block (its contents must not change). */
  shared(id: number): boolean {
    return this.refs[id]! > 1;
  }

  /** Drops one holder of each block. Unknown or unheld ids are an ArgumentError (nothing is freed then). */
  free(ids: number | Iterable<number>): void {
    const list = typeof ids === 'number' ? [ids] : Array.from(ids);
    const drops = new Map<number, number>();
    for (const id of list) {
      if (!Number.isInteger(id) || id < 0 || id >= this.numBlocks) {
        throw new ArgumentError('E_ARGUMENT', `BlockAllocator.free: block id ${id} is outside [0, ${this.numBlocks})`);
      }
      drops.set(id, (drops.get(id) ?? 0) + 1);
      if (drops.get(id)! > this.refs[id]!)
        throw new ArgumentError('E_ARGUMENT', `BlockAllocator.free: block ${id} is not allocated (double free)`);
    }
    // release in reverse so that a sequence's blocks come back in their original order
    for (let i = list.length - 1; i >= 0; i--) {
      const id = list[i]!;
      if (--this.refs[id]! > 0) continue;
      if (this.keyOf.has(id)) this.idle.set(id, true);
      else this.freeList.push(id);
    }
  }

  /** The cached page under `key`, if any. */
  lookup(key: string): number | undefined {
    return this.pages.get(key);
  }

  /** Whether block `id` is a cached page. */
  isCached(id: number): boolean {
    return this.keyOf.has(id);
  }

  /** Whether cached page `id` holds the MTP head's latents too. */
  hasMtp(id: number): boolean {
    return this.withMtp.has(id);
  }

  /** Registers held block `id` as the page under `key`, continuing cached page `parent` (-1: the
   *  first); `mtp`: its MTP latents are filled too (may be said again later of the same page). */
  register(id: number, key: string, parent: number, mtp: boolean): void {
    if (mtp && this.pages.get(key) === id) this.withMtp.add(id);
    if (this.pages.get(key) === id) return;
    if (this.refs[id]! < 1 || this.keyOf.has(id) || this.pages.has(key))
      throw new ArgumentError('E_ARGUMENT', `BlockAllocator.register: block ${id} cannot be registered under this key`);
    if (mtp) this.withMtp.add(id);
    this.pages.set(key, id);
    this.keyOf.set(id, key);
    if (parent >= 0) {
      this.parentOf.set(id, parent);
      const c = this.children.get(parent) ?? new Set<number>();
      this.children.set(parent, c);
      c.add(id);
    }
  }

  /** Forgets cached page `id` and every page continuing it (their keys name it); idle ones become
   *  free, held ones stay with their holders. */
  uncache(id: number): void {
    if (this.keyOf.has(id)) this.unregister(id);
  }

  private unregister(id: number): void {
    for (const child of this.children.get(id) ?? []) this.unregister(child);
    this.children.delete(id);
    const parent = this.parentOf.get(id);
    if (parent !== undefined) this.children.get(parent)?.delete(id);
    this.parentOf.delete(id);
    this.pages.delete(this.keyOf.get(id)!);
    this.keyOf.delete(id);
    this.withMtp.delete(id);
    if (this.idle.delete(id)) this.freeList.push(id);
  }
}

/** The blocks and length of one sequence in the paged cache. */
export class SequenceCache {
  readonly allocator: BlockAllocator;
  readonly blockSize: number;
  readonly maxContext: number;
  private blocks: number[] = [];
  private len = 0;
  private released = false;

  constructor(allocator: BlockAllocator, blockSize: number, maxContext: number) {
    checkCount('SequenceCache: blockSize', blockSize, 1);
    checkCount('SequenceCache: maxContext', maxContext, 1);
    if (allocator.numBlocks * blockSize > 0x7fffffff) {
      throw new ArgumentError(
        'E_ARGUMENT',
        `SequenceCache: ${allocator.numBlocks} blocks x ${blockSize} slots do not fit int32 slot ids`,
      );
    }
    this.allocator = allocator;
    this.blockSize = blockSize;
    this.maxContext = maxContext;
  }

  /** Tokens currently held (cached positions 0..length-1). */
  get length(): number {
    return this.len;
  }

  /** Whether release() was called. */
  get isReleased(): boolean {
    return this.released;
  }

  /** Number of blocks held. */
  get numBlocks(): number {
    return this.blocks.length;
  }

  /** Slots still free in the last block (usable without allocating). */
  get spare(): number {
    return this.blocks.length * this.blockSize - this.len;
  }

  /**
   * Makes room for `nNew` tokens at positions length..length+nNew-1 and returns their slots
   * (block * blockSize + row). Atomic: on error nothing changes. Errors: ContextLengthError
   * (E_CONTEXT) past maxContext, OutOfMemoryError (E_OOM) when the allocator cannot supply the blocks.
   */
  reserve(nNew: number): Int32Array {
    this.checkLive('reserve');
    checkCount('SequenceCache.reserve: nNew', nNew, 0);
    const newLen = this.len + nNew;
    if (newLen > this.maxContext) {
      throw new ContextLengthError(
        'E_CONTEXT',
        `context length exceeded: ${this.len} cached + ${nNew} new tokens = ${newLen} > maxContext ${this.maxContext}`,
      );
    }
    const needBlocks = Math.ceil(newLen / this.blockSize) - this.blocks.length;
    if (needBlocks > this.allocator.available) {
      throw new OutOfMemoryError(
        'E_OOM',
        `KV cache out of blocks: ${needBlocks} more needed for ${nNew} tokens, ${this.allocator.available} of ${this.allocator.numBlocks} free`,
      );
    }
    for (let i = 0; i < needBlocks; i++) this.blocks.push(this.allocator.alloc());
    const slots = new Int32Array(nNew);
    for (let i = 0; i < nNew; i++) {
      const pos = this.len + i;
      slots[i] = this.blocks[Math.floor(pos / this.blockSize)]! * this.blockSize + (pos % this.blockSize);
    }
    this.len = newLen;
    return slots;
  }

  /** Whether reserve(nNew) would succeed now: within maxContext, and the blocks it needs are free. */
  canReserve(nNew: number): boolean {
    if (this.released || !Number.isInteger(nNew) || nNew < 0 || this.len + nNew > this.maxContext) return false;
    return Math.ceil((this.len + nNew) / this.blockSize) - this.blocks.length <= this.allocator.available;
  }

  /** Slots of the already-cached positions [from, to) (default: all). */
  slots(from = 0, to = this.len): Int32Array {
    if (!Number.isInteger(from) || !Number.isInteger(to) || from < 0 || to > this.len || from > to) {
      throw new ArgumentError('E_ARGUMENT', `SequenceCache.slots: range [${from}, ${to}) is outside [0, ${this.len})`);
    }
    const out = new Int32Array(to - from);
    for (let p = from; p < to; p++)
      out[p - from] = this.blocks[Math.floor(p / this.blockSize)]! * this.blockSize + (p % this.blockSize);
    return out;
  }

  /**
   * Drops tokens at positions >= len (speculative rejection, a chat turn rewound), freeing blocks no
   * longer needed. A block another sequence holds too is never written again: when `len` ends
   * inside one, that page is dropped too; a cached page only this sequence holds leaves the prefix
   * cache instead. Returns the length kept (len, or the start of the dropped page).
   */
  truncate(len: number): number {
    this.checkLive('truncate');
    if (!Number.isInteger(len) || len < 0 || len > this.len) {
      throw new ArgumentError('E_ARGUMENT', `SequenceCache.truncate: length ${len} is outside [0, ${this.len}]`);
    }
    const last = Math.floor(len / this.blockSize);
    if (len % this.blockSize !== 0 && len < this.len) {
      const id = this.blocks[last]!;
      if (this.allocator.shared(id)) len = last * this.blockSize;
      else this.allocator.uncache(id); // a cached page only this sequence holds: private again, to be written
    }
    const keep = Math.ceil(len / this.blockSize);
    if (keep < this.blocks.length) this.allocator.free(this.blocks.splice(keep));
    this.len = len;
    return len;
  }

  /** Starts an empty sequence on cached prefix pages (from matchPrefix): it holds them too. */
  adopt(blocks: readonly number[]): void {
    this.checkLive('adopt');
    if (this.len !== 0 || this.blocks.length !== 0)
      throw new ArgumentError(
        'E_ARGUMENT',
        `SequenceCache.adopt: the sequence holds ${this.len} tokens; adopt needs an empty one`,
      );
    if (blocks.length * this.blockSize > this.maxContext)
      throw new ContextLengthError(
        'E_CONTEXT',
        `SequenceCache.adopt: ${blocks.length} pages exceed maxContext ${this.maxContext}`,
      );
    for (const id of blocks) this.allocator.retain(id);
    this.blocks = [...blocks];
    this.len = blocks.length * this.blockSize;
  }

  /**
   * Offers the full pages of this sequence, which holds `tokens` (positions 0..), to the prefix
   * cache: a later sequence starting with the same tokens can share them (matchPrefix). Pages of
   * content already cached are left as they are. `mtpValid`: positions below it have the MTP
   * head's latents too.
   */
  publish(tokens: readonly number[], mtpValid = 0): void {
    this.checkLive('publish');
    const bs = this.blockSize,
      full = Math.floor(Math.min(tokens.length, this.len) / bs);
    let parent = -1;
    for (let i = 0; i < full; i++) {
      const key = pageKey(parent, tokens.slice(i * bs, (i + 1) * bs));
      const mine = this.blocks[i]!,
        cached = this.allocator.lookup(key);
      const mtp = mtpValid >= (i + 1) * bs;
      if (cached === undefined && this.allocator.isCached(mine)) break; // cached under another chain: stop here
      if (cached !== undefined && cached !== mine && mtp && !this.allocator.hasMtp(cached) && !this.allocator.isCached(mine)) {
        // ours has the MTP latents the cached copy lacks: ours replaces it (and the pages after it)
        this.allocator.uncache(cached);
        this.allocator.register(mine, key, parent, true);
        parent = mine;
        continue;
      }
      if (cached === undefined || cached === mine) this.allocator.register(mine, key, parent, mtp);
      parent = cached ?? mine;
    }
  }

  /** Block ids in position order: position p lives in block blockTable()[p / blockSize]. */
  blockTable(): Int32Array {
    return Int32Array.from(this.blocks);
  }

  /** Writes blockTable() into `out` at `at` (no table made: a batch's tables are packed every step). */
  writeBlockTable(out: Int32Array, at: number): void {
    const blocks = this.blocks;
    for (let i = 0; i < blocks.length; i++) out[at + i] = blocks[i]!;
  }

  /** Frees every block; the sequence becomes empty and unusable (idempotent). */
  release(): void {
    if (this.released) return;
    if (this.blocks.length) this.allocator.free(this.blocks);
    this.blocks = [];
    this.len = 0;
    this.released = true;
  }

  [Symbol.dispose](): void {
    this.release();
  }

  private checkLive(op: string): void {
    if (this.released) throw new ArgumentError('E_ARGUMENT', `SequenceCache.${op}: the sequence was released`);
  }
}

/** A cached page's key: the cached page it continues (-1 for the first) and its tokens. Exact (no
 *  hash to collide); a page's id in it is valid while that page is cached (evicting a page
 *  unregisters every page continuing it). */
function pageKey(parent: number, tokens: readonly number[]): string {
  return `${parent}:${tokens.join(',')}`;
}

/**
 * The longest run of cached pages that `tokens` starts with, covering at most `limit` tokens: their
 * block ids (for SequenceCache.adopt), and whether all of them hold the MTP head's latents.
 */
export function matchPrefix(
  allocator: BlockAllocator,
  blockSize: number,
  tokens: readonly number[],
  limit: number,
): { blocks: number[]; mtp: boolean } {
  const blocks: number[] = [];
  let parent = -1,
    mtp = true;
  for (let i = 0; (i + 1) * blockSize <= Math.min(limit, tokens.length); i++) {
    const id = allocator.lookup(pageKey(parent, tokens.slice(i * blockSize, (i + 1) * blockSize)));
    if (id === undefined) break;
    blocks.push(id);
    mtp &&= allocator.hasMtp(id);
    parent = id;
  }
  return { blocks, mtp: mtp && blocks.length > 0 };
}

/**
 * Packs the block tables of a decode batch into int32 [rows, maxBlocks] plus each row's length
 * [rows]. Sequence b has counts[b] rows (default 1), one per new token already reserved at its end:
 * row i gets the sequence's table and the length up to and including its own position, so the rows
 * of a verify step attend causally. Unused entries are padded with 0 so that a kernel reading past
 * the length stays inside the cache. maxBlocks defaults to the largest table in the batch (at
 * least 1); a smaller explicit value than some sequence needs is an ArgumentError.
 */
export function batchTables(
  seqs: readonly SequenceCache[],
  maxBlocks?: number,
  counts?: readonly number[],
): { table: Int32Array; maxBlocks: number; seqLens: Int32Array } {
  let need = 0;
  for (let b = 0; b < seqs.length; b++) need = Math.max(need, seqs[b]!.numBlocks);
  const mb = maxBlocks ?? Math.max(1, need);
  checkCount('batchTables: maxBlocks', mb, 1);
  if (mb < need)
    throw new ArgumentError('E_ARGUMENT', `batchTables: maxBlocks ${mb} < ${need} blocks held by a sequence of the batch`);
  const n = (b: number) => counts?.[b] ?? 1;
  let rows = 0;
  for (let b = 0; b < seqs.length; b++) rows += n(b);
  const table = new Int32Array(rows * mb);
  const seqLens = new Int32Array(rows);
  // (plain loops, no table per sequence: this packs every decode step's rows)
  let r = 0;
  for (let b = 0; b < seqs.length; b++) {
    const s = seqs[b]!,
      k = n(b);
    for (let i = 0; i < k; i++, r++) {
      s.writeBlockTable(table, r * mb);
      seqLens[r] = s.length - k + i + 1;
    }
  }
  return { table, maxBlocks: mb, seqLens };
}
