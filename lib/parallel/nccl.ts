// Ranks on several hosts talking through NCCL, loaded at run time (native/nccl.h: dlopen of
// libnccl.so.2 or $LONGCAT_NCCL_PATH, symbols bound by name; the addon never links NCCL). Bootstrap
// as torchrun does: RANK, WORLD_SIZE and LOCAL_RANK from the environment (or options), plus the
// unique id that rank 0 makes with ncclUniqueId() and hands to every rank (LONGCAT_NCCL_ID). The
// surface is grouped point-to-point send/recv, what dispatch/combine of expert parallelism or
// pipeline stages need between hosts.
import { native } from '../native.js';
import { ArgumentError, DisposedError } from '../errors.js';
import type { Stream, Tensor } from '../../types/native.js';
import type { NcclCommHandle, NcclTransfer } from '../../types/ops-nccl.js';

export interface NcclInitOptions {
  /** This process's rank, 0 .. worldSize - 1. Default: $RANK. */
  rank?: number;
  /** The number of ranks. Default: $WORLD_SIZE. */
  worldSize?: number;
  /** The unique id from ncclUniqueId() on rank 0 (256 hex digits). Default: $LONGCAT_NCCL_ID. */
  id?: string;
  /**
   * The device whose memory the communicator moves. Default: cuda:$LOCAL_RANK (cuda:0 without it).
   * NCCL itself moves device memory only; 'cpu' is for host-memory implementations of its symbols
   * (the test stand-in, test/native/nccl_standin.cc).
   */
  device?: string;
  /** The NCCL library file. Default: $LONGCAT_NCCL_PATH, else libnccl.so.2 on the loader's path. */
  libraryPath?: string;
}

function libraryPath(path: string | undefined): string {
  return path ?? process.env.LONGCAT_NCCL_PATH ?? '';
}

function integerOption(value: number | undefined, env: string, name: string): number {
  if (value !== undefined) return value;
  const text = process.env[env];
  if (text === undefined || text === '')
    throw new ArgumentError('E_ARGUMENT', `NcclComm.init: pass { ${name} } or set ${env} (as torchrun does)`);
  if (!/^\d+$/.test(text.trim()))
    throw new ArgumentError('E_ARGUMENT', `NcclComm.init: ${env}='${text}' is not a non-negative integer`);
  return Number(text);
}

/** NCCL's version code (major * 10000 + minor * 100 + patch). Throws E_NCCL_UNAVAILABLE without NCCL. */
export function ncclVersion(path?: string): number {
  return native.ncclVersion(libraryPath(path));
}

/**
 * A fresh NCCL unique id as 256 hex digits: made once, on rank 0, and given to every rank (as
 * $LONGCAT_NCCL_ID or the `id` option) before NcclComm.init.
 */
export function ncclUniqueId(path?: string): string {
  return native.ncclUniqueId(libraryPath(path));
}

/**
 * One rank's NCCL communicator. send/recv are queued on a stream of the communicator's device and
 * matched between two ranks in the order they were issued; group() makes several of them one NCCL
 * group (needed whenever a rank both sends and receives, e.g. a ring or all-to-all, or NCCL may
 * deadlock). Ranks driven from one process each need a stream of their own.
 */
export class NcclComm {
  private handle: NcclCommHandle | null;
  private pending: NcclTransfer[] | null = null; // inside group()
  private pendingStream: Stream | null | undefined;

  private constructor(
    handle: NcclCommHandle,
    readonly rank: number,
    readonly worldSize: number,
    readonly device: string,
  ) {
    this.handle = handle;
  }

  /** Joins the world (resolves once every rank has called init with the same id). */
  static async init(options: NcclInitOptions = {}): Promise<NcclComm> {
    const rank = integerOption(options.rank, 'RANK', 'rank');
    const worldSize = integerOption(options.worldSize, 'WORLD_SIZE', 'worldSize');
    const id = options.id ?? process.env.LONGCAT_NCCL_ID;
    if (id === undefined)
      throw new ArgumentError(
        'E_ARGUMENT',
        'NcclComm.init: pass { id } or set LONGCAT_NCCL_ID (rank 0 makes it with ncclUniqueId())',
      );
    const localRank = process.env.LOCAL_RANK;
    const device = options.device ?? (localRank ? `cuda:${integerOption(undefined, 'LOCAL_RANK', 'device')}` : 'cuda:0');
    const handle = await native.ncclInit(libraryPath(options.libraryPath), id, rank, worldSize, device);
    return new NcclComm(handle, rank, worldSize, device);
  }

  private live(what: string): NcclCommHandle {
    if (!this.handle) throw new DisposedError('E_DISPOSED', `NcclComm.${what}: the communicator was disposed`);
    return this.handle;
  }

  private submit(transfer: NcclTransfer, stream: Stream | null | undefined, what: string): void {
    const handle = this.live(what);
    if (this.pending) {
      if (stream != null && stream !== this.pendingStream)
        throw new ArgumentError('E_ARGUMENT', `NcclComm.${what}: inside group() every transfer uses the group's stream`);
      this.pending.push(transfer);
      return;
    }
    native.ncclExchange(handle, stream, [transfer]);
  }

  /** Sends the bytes of `tensor` to rank `peer` (the peer receives into a tensor of as many bytes). */
  send(tensor: Tensor, peer: number, stream?: Stream | null): void {
    this.submit({ send: true, tensor, peer }, stream, 'send');
  }

  /** Receives the next message from rank `peer` into `tensor`. */
  recv(tensor: Tensor, peer: number, stream?: Stream | null): void {
    this.submit({ send: false, tensor, peer }, stream, 'recv');
  }

  /**
   * The send/recv calls made by `fn` as one NCCL group on `stream` (a nested group joins the outer
   * one). Nothing is issued when `fn` throws.
   */
  group(fn: () => void, stream?: Stream | null): void {
    const handle = this.live('group');
    if (this.pending) {
      if (stream != null && stream !== this.pendingStream)
        throw new ArgumentError('E_ARGUMENT', "NcclComm.group: a nested group uses the outer group's stream");
      fn();
      return;
    }
    this.pending = [];
    this.pendingStream = stream;
    let transfers: NcclTransfer[];
    try {
      fn();
      transfers = this.pending;
    } finally {
      this.pending = null;
      this.pendingStream = undefined;
    }
    if (transfers.length) native.ncclExchange(handle, stream, transfers);
  }

  /**
   * ncclCommAbort: gives the communicator up now, failing transfers still waiting on it (use it when
   * a peer is gone; dispose() is the orderly end). Idempotent.
   */
  abort(): void {
    if (this.handle) native.ncclAbort(this.handle);
    this.handle = null;
  }

  /** Destroys the communicator once the transfers already queued have run. Idempotent. */
  dispose(): void {
    if (this.handle) native.ncclDestroy(this.handle);
    this.handle = null;
  }
}
