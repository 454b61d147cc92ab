// NCCL communicators (native/ops/nccl.cc), used through lib/parallel/nccl.ts. Wired into `Native` in
// types/native.d.ts. `libraryPath` '' means libnccl.so.2 on the loader's search path.
import type { Stream, Tensor } from './native.js';

/** An opaque communicator handle from ncclInit. */
export interface NcclCommHandle {
  readonly _handle: unknown;
}

export interface NcclTransfer {
  send: boolean;
  tensor: Tensor;
  peer: number;
}

export interface NcclOps {
  /** NCCL's version code (major * 10000 + minor * 100 + patch). E_NCCL_UNAVAILABLE without the library. */
  ncclVersion(libraryPath: string): number;
  /** A fresh unique id (256 hex digits), made once by rank 0 and handed to every rank. */
  ncclUniqueId(libraryPath: string): string;
  /** ncclCommInitRank on a thread of its own; resolves once every rank has joined. */
  ncclInit(libraryPath: string, id: string, rank: number, worldSize: number, device: string): Promise<NcclCommHandle>;
  /** One NCCL group of sends and receives, queued on `stream` (the communicator's device). */
  ncclExchange(comm: NcclCommHandle, stream: Stream | null | undefined, transfers: readonly NcclTransfer[]): void;
  ncclAbort(comm: NcclCommHandle): void;
  ncclDestroy(comm: NcclCommHandle): void;
}
