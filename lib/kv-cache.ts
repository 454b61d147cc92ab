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

/** Hands out block ids 0..numBlocks-1. Freed blocks are reused first (LIFO). */
export class BlockAllocator {
  readonly numBlocks: number;
  private readonly freeList: number[] = []; // released blocks, reused first (last released first)
  private fresh = 0; // blocks fresh..numBlocks-1 were never handed out
  private readonly used: Uint8Array;

  constructor(numBlocks: number) {
    checkCount('BlockAllocator: numBlocks', numBlocks, 1);
    if (numBlocks > 0x7fffffff)
      throw new ArgumentError('E_ARGUMENT', `BlockAllocator: numBlocks ${numBlocks} does not fit int32`);
    this.numBlocks = numBlocks;
    this.used = new Uint8Array(numBlocks);
  }

  /** Number of free blocks. */
  get available(): number {
    return this.freeList.length + this.numBlocks - this.fresh;
  }

  /** Number of blocks in use. */
  get inUse(): number {
    return this.numBlocks - this.available;
  }

  /** One free block id; OutOfMemoryError (E_OOM) when none is left. */
  alloc(): number {
    const id = this.freeList.pop() ?? (this.fresh < this.numBlocks ? this.fresh++ : undefined);
    if (id === undefined) {
      throw new OutOfMemoryError(
        'E_OOM',
        `KV cache: all ${this.numBlocks} blocks are in use (raise the cache size or release sequences)`,
      );
    }
    this.used[id] = 1;
    return id;
  }

  /** Returns blocks to the pool. Unknown or already-free ids are an ArgumentError (nothing is freed then). */
  free(ids: number | Iterable<number>): void {
    const list = typeof ids === 'number' ? [ids] : Array.from(ids);
    const seen = new Set<number>();
    for (const id of list) {
      if (!Number.isInteger(id) || id < 0 || id >= this.numBlocks) {
        throw new ArgumentError('E_ARGUMENT', `BlockAllocator.free: block id ${id} is outside [0, ${this.numBlocks})`);
      }
      if (!this.used[id] || seen.has(id))
        throw new ArgumentError('E_ARGUMENT', `BlockAllocator.free: block ${id} is not allocated (double free)`);
      seen.add(id);
    }
    // release in reverse so that a sequence's blocks come back in their original order
    for (let i = list.length - 1; i >= 0; i--) {
      const id = list[i]!;
      this.used[id] = 0;
      this.freeList.push(id);
    }
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

  /** Drops tokens at positions >= len (speculative rejection), freeing blocks no longer needed. */
  truncate(len: number): void {
    this.checkLive('truncate');
    if (!Number.isInteger(len) || len < 0 || len > this.len) {
      throw new ArgumentError('E_ARGUMENT', `SequenceCache.truncate: length ${len} is outside [0, ${this.len}]`);
    }
    const keep = Math.ceil(len / this.blockSize);
    if (keep < this.blocks.length) this.allocator.free(this.blocks.splice(keep));
    this.len = len;
  }

  /** Block ids in position order: position p lives in block blockTable()[p / blockSize]. */
  blockTable(): Int32Array {
    return Int32Array.from(this.blocks);
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
  const need = seqs.reduce((m, s) => Math.max(m, s.numBlocks), 0);
  const mb = maxBlocks ?? Math.max(1, need);
  checkCount('batchTables: maxBlocks', mb, 1);
  if (mb < need)
    throw new ArgumentError('E_ARGUMENT', `batchTables: maxBlocks ${mb} < ${need} blocks held by a sequence of the batch`);
  const n = (b: number) => counts?.[b] ?? 1;
  const rows = seqs.reduce((a, _, b) => a + n(b), 0);
  const table = new Int32Array(rows * mb);
  const seqLens = new Int32Array(rows);
  let r = 0;
  seqs.forEach((s, b) => {
    const bt = s.blockTable();
    for (let i = 0; i < n(b); i++, r++) {
      table.set(bt, r * mb);
      seqLens[r] = s.length - n(b) + i + 1;
    }
  });
  return { table, maxBlocks: mb, seqLens };
}
