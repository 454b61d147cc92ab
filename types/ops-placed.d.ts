// Host memory placed on a CPU pool's NUMA node (native/ops/placed.cc, native/placed.h). Wired into
// `Native` in types/native.d.ts.
import type { Stream, Tensor } from './native.js';

/** What placeTensors made and how the system took it. */
export interface PlacedTensors {
  /** The copies, in the order given: views of one new allocation, freed with the last of them. */
  tensors: Tensor[];
  /** The allocation's bytes (the tensors at 256-byte aligned offsets). */
  bytes: number;
  /** madvise(MADV_HUGEPAGE) accepted. */
  hugepage: boolean;
  /** Of `bytes`, those the kernel backs with huge pages right after the copy (AnonHugePages; -1: unreadable). */
  hugeBytes: number;
  /** mbind(MPOL_BIND) to `node` accepted. */
  bound: boolean;
  /** Why not, when a node was asked (e.g. 'mbind: EINVAL'); the copy is then placed by first touch only. */
  bindError: string | null;
  /** Bytes of the sources' file-mapped pages given back (releaseSource). */
  released: number;
  /** How they were given back ('pageout': MADV_PAGEOUT, 'dontneed': MADV_DONTNEED) or why not. */
  releaseHow: string | null;
}

export interface PlacedOps {
  /**
   * Copies CPU tensors into one new anonymous allocation placed on the NUMA node of `stream`'s pool:
   * MADV_HUGEPAGE (when `hugepage`), mbind(MPOL_BIND) to `node` first when not null (raw syscall, no
   * libnuma; a refusal is bindError, not thrown), then the copy run as a job of the CPU `stream`, by
   * its pool's threads, which so write every page first (first touch: their node). releaseSource
   * gives back the sources' pages over a file mapping (whole pages inside each tensor): they must not
   * be read for private writes again. Errors: E_ARGUMENT (no stream, a capturing stream, a bad node),
   * E_DEVICE (a tensor or the stream not on the CPU), E_OOM.
   */
  placeTensors(
    stream: Stream,
    tensors: readonly Tensor[],
    node: number | null,
    hugepage: boolean,
    releaseSource: boolean,
  ): PlacedTensors;
  /**
   * placeTensors with no node, off the JS thread: the copy runs on a libuv worker over the global pool
   * (loadModel's hugePages). releaseSource only unmaps the sources' pages (MADV_DONTNEED, releaseHow
   * 'dontneed'): the page cache keeps them, reclaimable, for the next load. A source page over a file
   * mapping that the file no longer has (truncated since it was mapped) rejects with E_CHECKPOINT,
   * where reading it would SIGBUS; then nothing is given back. Errors: E_DEVICE (a tensor not on the
   * CPU), E_OOM.
   */
  placeTensorsAsync(tensors: readonly Tensor[], hugepage: boolean, releaseSource: boolean): Promise<PlacedTensors>;
  /** The NUMA node of each of a CPU tensor's first maxPages pages (move_pages(2) query; < 0: -errno for
   *  that page, e.g. -14 EFAULT when not present), or nodes [] and the error when the call failed (e.g. 'move_pages: EPERM'). */
  pageNodes(tensor: Tensor, maxPages: number): { nodes: number[]; error: string | null };
}
