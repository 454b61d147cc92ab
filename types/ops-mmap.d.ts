// Memory-mapped checkpoint files (native/ops/mmap.cc). Wired into `Native` in types/native.d.ts.
import type { DType, Tensor } from './native.js';

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
   * Throws E_CHECKPOINT when the file changed on disk since it was mapped: replaced (device or
   * inode), truncated or extended (size), or written in place (mtime). One stat() call. A change
   * between this check and a read of the mapping still goes unseen (SIGBUS after truncation).
   * E_DISPOSED after close().
   */
  verify(): void;
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
  /**
   * A CPU tensor over bytes [byteOffset, byteOffset + nbytes) of the mapping, without copying
   * (unless byteOffset is not a multiple of the element size: then an aligned native copy).
   * Errors: E_CHECKPOINT when the range is past the end of the file, E_DISPOSED after close(),
   * E_ARGUMENT / E_DTYPE for bad arguments.
   */
  tensorFromMapping(mapping: MappedFile, byteOffset: number, dtype: DType, shape: readonly number[]): Tensor;
}
