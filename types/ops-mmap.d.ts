// Memory-mapped checkpoint files (native/ops/mmap.cc) and faulting memory in ahead of use
// (native/ops/populate.cc). Wired into `Native` in types/native.d.ts.
import type { DType, Stream, Tensor } from './native.js';
import type { MoeExpertSet } from './ops-moe.js';

export type MmapAdvice = 'normal' | 'random' | 'sequential' | 'willneed' | 'dontneed';

/**
 * A whole file mapped into memory (MAP_PRIVATE: pages are shared with the page cache until a
 * tensor over them is written, which copies that page, never touching the file).
 */
export interface MappedFile {
  readonly path: string;
  readonly byteLength: number;
  /**
   * True for the usual private copy-on-write mapping. False only when the system refused it
   * (strict overcommit) and the file was mapped read-only: tensors over it must not be written.
   */
  readonly writable: boolean;
  /** True after close(). */
  readonly closed: boolean;
  /**
   * Drops this handle's reference. Tensors already created over the mapping keep it alive;
   * the file is unmapped when the last of them is disposed. Idempotent.
   */
  close(): void;
  /** madvise over [offset, offset + length) (page-rounded, clipped to the file). Advisory. */
  advise(advice: MmapAdvice, offset?: number, length?: number): void;
  /**
   * Throws E_CHECKPOINT when the file changed on disk since it was mapped: replaced (the path's
   * device or inode), truncated or extended (size), written in place (mtime), or deleted. A stat()
   * of the path and an fstat() of the mapped file (its descriptor stays open while it is mapped).
   * A change between this check and a read of the mapping still goes unseen (SIGBUS after
   * truncation). E_DISPOSED after close().
   */
  verify(): void;
}

/**
 * Mapped files checked together: verify() of each without its path lookup. The set holds the
 * mappings until close().
 */
export interface MappingSet {
  /**
   * E_CHECKPOINT naming the first file that was truncated, extended, written in place, or lost its
   * last name (deleted, or replaced by a rename over it) since it was mapped; E_DISPOSED after
   * close(). A file on a local filesystem (ext4, xfs, btrfs, tmpfs, f2fs, zfs) is watched (inotify)
   * and fstat()ed only after an event for it, so the whole set costs one read() of the pending
   * events; others (network filesystems, or LONGCAT_WATCH_MAPPINGS=0) one fstat() each. Unseen: a
   * file replaced while the mapped one keeps another name (a hard link; the mapping is unharmed),
   * and under a watch a write through another process's shared mapping of the file.
   */
  verify(): void;
  /** Drops the set's references to the mappings. Idempotent. */
  close(): void;
}

export interface MapFileOptions {
  /** MAP_POPULATE: fault every page in at map time. */
  populate?: boolean;
  /** madvise applied to the whole file right after mapping. */
  advice?: MmapAdvice;
}

export interface MmapOps {
  /** Maps `path` read-only. Errors: E_CHECKPOINT naming the path and errno (ENOENT, EACCES, EISDIR...),
   *  or saying it is not a regular file (a FIFO or device is refused without blocking). */
  mapFile(path: string, options?: MapFileOptions): MappedFile;
  /** Mappings checked together before every step (MappingSet). E_DISPOSED when one was closed. */
  mappingSet(mappings: readonly MappedFile[]): MappingSet;
  /**
   * A CPU tensor over bytes [byteOffset, byteOffset + nbytes) of the mapping, without copying
   * (unless byteOffset is not a multiple of the element size: then an aligned native copy).
   * Errors: E_CHECKPOINT when the range is past the end of the file, E_DISPOSED after close(),
   * E_ARGUMENT / E_DTYPE for bad arguments.
   */
  tensorFromMapping(mapping: MappedFile, byteOffset: number, dtype: DType, shape: readonly number[]): Tensor;
  /**
   * Writes zeros over a CPU tensor with its pages faulted in first (MADV_POPULATE_WRITE, else a
   * touch per page), as a job of `stream` (null: the default stream), spread over the stream's
   * pool: returns at once, later ops of the stream run after it, and the pages are first touched by
   * the threads of that pool. Errors (at the stream's synchronize): E_OOM when the memory cannot be
   * had; E_DEVICE for a GPU tensor (now).
   */
  populateZeros(stream: Stream | null, tensor: Tensor): void;
  /**
   * Faults in, for reading, the pages of the file mappings (mapFile) that these tensors and expert
   * sets read (MADV_POPULATE_READ, else MADV_WILLNEED and a touch per page), on a libuv worker
   * spread over the global pool, so that the first steps take no page faults on them. Memory that
   * is not a mapping (copies, tensors made at load) is skipped. `bytes`: the mapped pages' bytes
   * (whole pages, shared pages once); none is faulted in (`populated` false) when they exceed
   * `maxBytes`. Rejects with E_CHECKPOINT when a page cannot be read (the file was truncated),
   * E_OOM when memory runs out. Nothing is copied and no page is written.
   */
  populateMapped(items: readonly (Tensor | MoeExpertSet)[], maxBytes?: number): Promise<{ bytes: number; populated: boolean }>;
}
