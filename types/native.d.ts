// The contract between lib/ and the native addon (native/js_*.cc: the classes, native/ops/*.cc: the ops).
// Every op takes the stream first (null = the device's default stream), then its outputs, then
// its inputs, then scalars. Ops are asynchronous on their stream; toBytes() waits for the device.

export type DType = 'f32' | 'bf16' | 'f16' | 'fp8_e4m3' | 'int8' | 'int32' | 'int64';
export type DeviceId = 'cpu' | `cuda:${number}` | 'cuda';

export declare class Tensor {
  constructor(dtype: DType, shape: readonly number[], device?: DeviceId | string, bytes?: ArrayBufferView);
  readonly dtype: DType;
  readonly shape: number[];
  readonly device: string;
  readonly nbytes: number;
  readonly disposed: boolean;
  /** Whether the memory is page-locked host memory (pinnedTensor on a machine with a CUDA device). */
  readonly pinned: boolean;
  /** Waits for all work on the tensor's device (and copies queued from or into pinned memory), then copies the bytes out. */
  toBytes(): Uint8Array;
  copyFromBytes(bytes: ArrayBufferView): void;
  /** Reshape sharing storage; one dimension may be -1. */
  view(shape: readonly number[]): Tensor;
  /** Rows [start, start + length) of the first dimension, sharing storage. */
  narrow(start: number, length: number): Tensor;
  to(device: DeviceId | string): Tensor;
  /** Idempotent. The memory returns to the pool once queued work using it has run. */
  dispose(): void;
}

export declare class Stream {
  constructor(device?: DeviceId | string);
  readonly device: string;
  synchronize(): void;
  /** The awaitable synchronize(): waits off the JS thread for the work queued so far; rejects with its error. */
  synchronizeAsync(): Promise<void>;
  waitEvent(event: Event): void;
  dispose(): void;
}

export declare class Event {
  constructor(device?: DeviceId | string);
  record(stream?: Stream | null): void;
  synchronize(): void;
  query(): boolean;
  elapsedMs(end: Event): number;
}

/** One node (op) of a replayed CPU graph, summed over the replays profiled. */
export interface GraphProfileNode {
  op: string; // the op's name; 'event' for a record / wait
  stream: number; // index into the graph's streams
  phase: number; // nodes in its parallel phase (> 1: fused with its neighbours, the phase's time shared by row cost)
  ns: number; // wall time
  waitNs: number; // the region master waiting at the node's joins for the other threads' last chunks
  jobs: number; // parallel jobs (joins) the node ran in the region; 0: it ran on the master alone
  weightBytes: number; // weight bytes its kernels streamed
  busyNs: number; // thread time inside its parallel chunks, summed over the pool's threads
}
/** A CPU graph's profile: its region replays, their total time, and per node. */
export interface GraphProfile {
  replays: number;
  ns: number;
  startNs: number; // from replay() to the region's start (the streams' threads meeting), summed over the replays
  nodes: GraphProfileNode[];
}

/** Work captured from streams by captureGraph(), queued again by replay(). */
export declare class Graph {
  private constructor();
  replay(): void;
  /**
   * CPU: wakes the idle thread of the stream that runs the graph's step, to spin up to 200 us for
   * the work about to be queued (a replay), so that its wake overlaps the caller's host work rather
   * than following replay(). Nothing when that stream has work or is held, on CUDA, after dispose(),
   * or with LONGCAT_STREAM_PREWAKE=0. A hint: never required.
   */
  prewake(): void;
  dispose(): void;
}

export interface BuildInfo {
  cuda: boolean;
  /** The CUDA targets compiled in, ',' separated: "90a", or "80,86,89,90a,100a,120,compute_120" (PTX last). */
  cudaArchs: string;
  /** The CUDA runtime linked in statically ("13.0"); "" without CUDA. */
  cudaRuntime: string;
  /** The oldest NVIDIA driver release that runtime runs on ("580"); "" without CUDA. */
  cudaMinDriver: string;
  napiVersion: number;
  compiler: string;
  buildSystem: 'cmake' | 'gyp' | 'unknown';
  debug: boolean;
}

export interface CpuFeatures {
  avx2: boolean;
  fma: boolean;
  f16c: boolean;
  avx512f: boolean;
  avx512bw: boolean;
  avx512vl: boolean;
  avx512dq: boolean;
  avx512bf16: boolean;
  avx512vnni: boolean;
  /** vpermi2b: the fp8 weights' few-row kernel (AVX512-BF16 too) decodes e4m3 by byte tables. */
  avx512vbmi: boolean;
  avxvnni: boolean;
  /** The ISA the kernels dispatch on now. */
  isa: 'scalar' | 'avx2' | 'avx512';
}

export interface CpuDeviceInfo {
  id: 'cpu';
  kind: 'cpu';
  index: 0;
  threads: number;
}
export interface CudaDeviceInfo {
  id: string;
  kind: 'cuda';
  index: number;
  name: string;
  totalBytes: number;
  freeBytes: number;
  computeCapability: string;
  multiprocessors: number;
}
export type DeviceInfo = CpuDeviceInfo | CudaDeviceInfo;

export interface CudaStatus {
  compiled: boolean;
  available: boolean;
  deviceCount: number;
  /** Why `available` is false ("" when it is not): no driver, no device, a driver older than `BuildInfo.cudaMinDriver`. */
  reason: string;
  /** The NVIDIA driver release ("580.65.06"); "" without a driver or when unknown. */
  driverVersion: string;
  /** The CUDA version the driver supports ("13.0"); "" without a driver. */
  driverCudaVersion: string;
  /** The driver is older than the runtime linked in needs (`reason` names both): the CPU backend runs instead. */
  driverTooOld: boolean;
}
export interface MemoryStats {
  liveBytes: number;
  cachedBytes: number;
  peakBytes: number;
  liveBlocks: number;
}

export interface CoreApi {
  Tensor: typeof Tensor;
  Stream: typeof Stream;
  Event: typeof Event;
  buildInfo(): BuildInfo;
  cpuFeatures(): CpuFeatures;
  devices(): DeviceInfo[];
  cudaStatus(): CudaStatus;
  setThreads(n: number): void;
  threads(): number;
  /** Runs the CPU streams' kernels on one new pool of `threads` threads bound to `cpus` (empty or
   *  absent: unbound); threads null: back on the global pool. A CPU rank's own pool. */
  setStreamPool(streams: readonly Stream[], threads: number | null, cpus?: readonly number[]): void;
  /** Runs the CPU streams' kernels on the pool of the CPU stream `from` (shared; its global pool when it has none). */
  setStreamPool(streams: readonly Stream[], from: Stream): void;
  /** The pool a CPU stream's kernels run on when it is not the global one. */
  streamPool(stream: Stream): { threads: number; cpus: number[] } | null;
  /** The CPUs this process may run on (its affinity mask), ascending. */
  allowedCpus(): number[];
  /** Caps the CPU kernels' ISA (for tests); returns the ISA now in effect. */
  setIsa(isa: 'scalar' | 'avx2' | 'avx512'): string;
  memoryStats(device?: string): MemoryStats;
  /** The pinned pool's statistics: it caches nothing, so liveBytes is all the pinned memory held. */
  pinnedMemoryStats(): MemoryStats;
  /**
   * A CPU tensor (contents undefined) from the pinned pool: page-locked (cudaHostAlloc) when the
   * CUDA backend has a device, plain host memory otherwise; freed (cudaFreeHost) once the last
   * tensor and copy using it are gone, never cached. See copy().
   */
  pinnedTensor(dtype: DType, shape: readonly number[]): Tensor;
  /**
   * dst <- src, queued on `stream`: same dtype (E_DTYPE) and shape (E_SHAPE), not overlapping
   * (E_ARGUMENT); cpu -> cpu on a CPU stream, or between the CPU and cuda:N, or within cuda:N, on a
   * stream of cuda:N (two CUDA devices: E_DEVICE). Outside a graph capture a host side is ready
   * at once: the calling thread's queued CPU work is waited for first, and a copy from or into
   * pageable memory is staged by the runtime (done with the host memory when the call returns);
   * one from or into pinned memory runs asynchronously, and toBytes / copyFromBytes / to() / the
   * release of that memory wait for it (CPU ops on it do not: synchronize the stream). Captured
   * into a CUDA graph it becomes a copy node that runs at every replay: the host side must be
   * pinned (pageable: E_ARGUMENT), the graph keeps it alive, and the replayer orders host writes
   * before the replay and after the previous one.
   */
  copy(stream: S, dst: Tensor, src: Tensor): void;
  /** dst <- `bytes` (a typed array of dst's byte size, copied at the call) queued on a CPU stream. */
  copyBytes(stream: S, dst: Tensor, bytes: ArrayBufferView): void;
  trimPool(device?: string): void;
  synchronize(device?: string): void;
  /** The awaitable synchronize(device): waits off the JS thread for the work queued on the device's
   *  streams so far (CUDA: the whole device); rejects with the first error a stream kept. */
  synchronizeAsync(device?: string): Promise<void>;
  /** Each CPU tensor's bytes as they are once the work queued on the CPU `stream` so far ran (work
   *  queued after the call is not waited for); rejects with the first error a CPU stream kept. */
  readAsync(stream: S, tensors: readonly Tensor[]): Promise<Uint8Array[]>;
  /** The device's default stream (what ops use when given null). dispose() on it only synchronizes. */
  defaultStream(device?: string): Stream;
  Graph: typeof Graph;
  /**
   * Runs fn() while every op queued on `streams` is captured instead of run, and returns a Graph
   * that queues all of it again on replay() (CPU: one job per stream; CUDA: a CUDA graph whose
   * origin is streams[0], the others joining through events). Captured ops keep their tensors:
   * update inputs in place between replays.
   */
  captureGraph(streams: readonly Stream[], fn: () => void): Graph;
  /**
   * The per-node profile of the CPU graphs replayed since the last call (each graph replayed
   * meanwhile and still alive; synchronize first), then profiling switched on or off. Off costs
   * nothing; on, each replay times every node (bench/step-profile.mjs).
   */
  graphProfile(on: boolean): GraphProfile[];
  setErrorFactory(make: (code: string, message: string) => Error): void;
}

type S = Stream | null | undefined;

/** Norms and linear layers. */
/** A read probe's result (benchReadBandwidth, benchReadTensors). */
export interface ReadProbe {
  /** Median GB/s of the timed passes. */
  gbps: number;
  samples: number[];
  /** Bytes read per pass. */
  bytes: number;
  checksum: bigint;
}

export interface LinearOps {
  /** h = x (+ add); hOut = h; y = weight * h / rms(h). x, add, hOut f32; weight f32|bf16; y f32|bf16. */
  rmsnorm(stream: S, y: Tensor, x: Tensor, weight: Tensor, eps: number, add?: Tensor | null, hOut?: Tensor | null): void;
  /** y[.., n] = x[.., k] @ weight[n, k]^T. weight f32|bf16|fp8_e4m3 (+ block scale)|int8 (+ row scale). */
  /** An int4 weight (native/cpu/linear.h): weight int8 [n, groups, group / 2] of packed codes and
   *  scale bf16 / f16 [n, groups] (zero point 8) or [n, groups, 2] (scale, zero point). */
  linear(stream: S, y: Tensor, x: Tensor, weight: Tensor, scale?: Tensor | null): void;
  /**
   * 'bf16' (default): GEMMs may round f32 activations to bf16 (CPU: bf16 weights with AVX512-BF16,
   * more than 8 rows; CUDA: tensor cores beyond 16 rows), about 2^-9 relative error of sum|x w|;
   * 'highest': every product in fp32; 'fp8': 'bf16', and fp8 weights times >= 17 rows quantize the
   * activations to e4m3 in 1x128 groups (CUDA sm_89+: e4m3 tensor cores; CPU: emulated).
   * Process-wide; returns the previous setting.
   */
  setMatmulPrecision(precision: 'bf16' | 'highest' | 'fp8'): 'bf16' | 'highest' | 'fp8';
  /**
   * The tensor-core kernel of bf16 x bf16 CUDA GEMMs (x and weight bf16, K % 8 == 0) on sm_90:
   * 'mma' (mma.sync tiles, the default) or 'wgmma' (TMA + wgmma, opt-in until it has run on a card;
   * also LONGCAT_WGMMA=1; used where the device runs the build's sm_90a image, else 'mma' serves). Process-wide; returns the previous setting. E_DEVICE for 'wgmma' in a
   * build without CUDA.
   */
  setCudaGemm(kernel: 'mma' | 'wgmma'): 'mma' | 'wgmma';
  /**
   * Symmetric per-row int8 weights for `linear`: scale[r] = max|w[r, :]| / 127 (0 for a zero row),
   * q = round_half_even(w / scale[r]) clamped to [-127, 127]. q int8 [n, k], scale f32 [n], w f32|bf16 [n, k].
   */
  quantizeInt8Rows(stream: S, q: Tensor, scale: Tensor, w: Tensor): void;
  /**
   * Symmetric int4 weights for `linear` / `moeExperts` in the int4 format (native/cpu/linear.h): per
   * row and group of g columns, scale = max|w| / 7 as f16, code = 8 + round_half_even(w / scale)
   * clamped to [1, 15], packed two per byte. q int8 [n, ceil(k / g), g / 2] (g a multiple of 32),
   * scale f16 [n, ceil(k / g)], w f32|bf16 [n, k]. CPU tensors only.
   */
  quantizeInt4(stream: S, q: Tensor, scale: Tensor, w: Tensor): void;
  repackGptqInt4(stream: S, q: Tensor, qweight: Tensor): void;
  /**
   * Benchmark: median read bandwidth (GB/s) of a fresh buffer of `bytes` (rounded down to 4 KiB, first touched by
   * the pool threads) summed by every pool thread, after one warm-up pass. Synchronous. `checksum`: one pass's sum
   * of the bytes as little-endian 64-bit words, modulo 2^64.
   */
  benchReadBandwidth(bytes: number, passes: number): ReadProbe;
  /**
   * Benchmark: the same read over the given CPU tensors' own bytes (e.g. a kernel's weights, mapped checkpoint
   * pages included), their 64-byte lines split over every pool thread as one sequence. `checksum`: one pass's sum
   * of each tensor's bytes as little-endian 64-bit words from its start (its last word zero-padded), modulo 2^64.
   */
  benchReadTensors(tensors: Tensor[], passes: number): ReadProbe;
  /**
   * Benchmark: the peak rate of the multiply-add instruction the GEMM of bf16 weights runs on at the current ISA
   * and precision ('vdpbf16ps zmm' with AVX512-BF16 outside 'highest', else the ISA's fp32 FMA), every pool
   * thread, registers only: 8 chunks a thread of `iters` (1..2^20) rounds, the best GFLOP/s of `passes` (1..100)
   * after a warm-up pass. Synchronous. `flops`: one pass's; `macs`: the multiply-adds the last pass's sums count.
   */
  benchDotPeak(
    iters: number,
    passes: number,
  ): { gflops: number; samples: number[]; instruction: string; threads: number; flops: number; macs: number };
  /**
   * Benchmark: times `linear(y, x, weights[i], scales?.[i])` natively (steady clock), rotating through the
   * weight copies; `warmup` untimed calls, then `iters` timed ones. Synchronous; CPU tensors, x [t, k].
   */
  benchLinear(
    y: Tensor,
    x: Tensor,
    weights: Tensor[],
    scales: Tensor[] | null,
    warmup: number,
    iters: number,
  ): { medianMs: number; minMs: number; samples: number[] };
}

import type { SmallOps } from './ops-small.js';
import type { AttentionOps } from './ops-attention.js';
import type { MoeOps } from './ops-moe.js';
import type { MmapOps } from './ops-mmap.js';
import type { GatherOps } from './ops-gather.js';
import type { EpOps } from './ops-ep.js';
import type { NcclOps } from './ops-nccl.js';
import type { NgramOps } from './ops-ngram.js';
import type { PlacedOps } from './ops-placed.js';

export interface Native
  extends CoreApi,
    LinearOps,
    SmallOps,
    AttentionOps,
    MoeOps,
    MmapOps,
    GatherOps,
    EpOps,
    NgramOps,
    NcclOps,
    PlacedOps {}
