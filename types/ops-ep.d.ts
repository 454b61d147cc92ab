// The expert-parallel ops of the native addon (binding: native/ops/ep.cc; CPU kernels and the slot
// protocol: native/cpu/ep.h; CUDA: cuda/ep.cu, the single-kernel flag form; on CUDA the kernel runs
// on the stream's device and each tensor may be on a device it reaches through peer access).
import type { Tensor, Stream } from './native.js';
import type { MoeTokenArgs } from './ops-moe.js';

type S = Stream | null | undefined;

/**
 * A rank's bounded wait for its own flags (native/cpu/ep.h): flags int32 [n] in its memory,
 * peers[i] the rank that raises flags[i]. Acquire loads, then the flags are lowered. It gives up
 * when the abort word is raised or after timeoutMs; a timeout raises the word with its reason
 * (unless another came first): 1 << 30 | kind << 16 | rank << 8 | peer (kind 1: a rank waiting for
 * a home's dispatch; 2: a home waiting for a rank's expert outputs). Failed, it pads `pad`'s
 * receive rows (counts 0, idx expertsPerRank, w 0) so the rank's moe reads well-formed slots.
 * CUDA: one thread per block spins (%globaltimer budget); a combine's blocks count out in
 * `counter` (int32 [1], 0 between uses) and the last one lowers the flags.
 */
export interface EpWaitSpec {
  flags: Tensor;
  peers: readonly number[];
  rank: number;
  kind: 1 | 2;
  timeoutMs: number;
  counter?: Tensor | null;
  pad?: { counts: Tensor; idx: Tensor; w: Tensor; expertsPerRank: number } | null;
  /** An FP8 payload: once every flag is up, x f32 [rows, H] = q fp8_e4m3 [rows, H] x its 1 x 128 scales f32 [rows, ceil(H / 128)]. */
  decode?: { q: Tensor; scales: Tensor; x: Tensor } | null;
}

/**
 * The two halves of the MoE all-to-all between ranks that own contiguous blocks of
 * `expertsPerRank` routed experts (rank r: experts r * expertsPerRank ..). A token goes to a rank
 * once, however many of its experts live there; zero experts (ids >= nRouted) stay home. Each
 * destination has a static slot per source rank `capacity` rows deep (count, x, idx, w; rows
 * count.. are padding that a moe over the slot turns into zeros), so the receiver runs the moe op
 * on whole slots with its local experts and nExperts = expertsPerRank + 1.
 */
export interface EpOps {
  /**
   * Enables peer access between every ordered pair of these CUDA devices ('cuda:N'), so that a
   * kernel on one addresses the others' memory (already enabled is fine). E_DEVICE naming both
   * devices when two cannot reach each other (no NVLink / PCIe peer path).
   */
  enablePeerAccess(devices: readonly string[]): void;
  /**
   * The source rank's tokens into the destinations' slots for it: for rank d, counts[d] int32 [1]
   * (tokens sent), xs[d] f32 [capacity, H] (their u rows, ascending token order), idxs[d] int32
   * [capacity, k] (the local expert id per top-k slot, expertsPerRank for slots that are not
   * rank d's), ws[d] f32 [capacity, k] (the slot's weight, 0 where not rank d's); and the home
   * side's record rowOf int32 [T, ranks] (token t's row in rank d's slot, -1 when it did not go
   * there). u f32 [T, H], idx int32 / weights f32 [T, k] (routerTopk's outputs); nRouted = ranks
   * x expertsPerRank. On the CPU an id outside [0, nExperts) or more than `capacity` tokens for
   * one rank fails with E_ARGUMENT at synchronize, nothing sent; a CUDA kernel cannot raise:
   * such an id goes nowhere, and an overflowing rank's count says how many rows it needed
   * (> capacity) with the rows past capacity dropped. `abort` (int32 [1], optional): an overflow
   * raises it (on the CPU too, besides the error), and a dispatch that finds it raised sends
   * nothing (the step failed already; the host reads and lowers it at the end of the step). A
   * dispatch that sends nothing -- a failed one on the CPU, or one that found the flag raised --
   * writes padding only (counts 0, rows as padding, rowOf -1), so the receivers' moe still reads
   * well-formed slots. `failForTest` (test hook): the dispatch fails as a rank's kernel would.
   * `ready` (optional, one int32 [1] flag per destination, in its memory): after the slot was
   * written (payload or padding) the dispatch raises ready[d] with release semantics (the flag
   * protocol of native/cpu/ep.h; the receiver's wait acquires it). `wait` (optional): in the
   * same launch (the single-kernel form) this rank then waits for its own ready flags (kind 1).
   * `blocks`: the launch's block budget on CUDA (default: one block per rank). FP8 payload
   * (DeepEP's low-latency format): xs[d] fp8_e4m3 [capacity, H] and xScales[d] f32 [capacity,
   * ceil(H / 128)]: each sent row quantized per 1 x 128 group (quantizeFp8Act's rule, bit-exact
   * between the CPU and CUDA), padding rows 0 with scale 0; the receiver decodes them to f32 with
   * its wait's `decode` before its moe.
   */
  epDispatch(
    stream: S,
    u: Tensor,
    idx: Tensor,
    weights: Tensor,
    nRouted: number,
    nExperts: number,
    expertsPerRank: number,
    rowOf: Tensor,
    counts: readonly Tensor[],
    xs: readonly Tensor[],
    idxs: readonly Tensor[],
    ws: readonly Tensor[],
    abort?: Tensor | null,
    failForTest?: boolean,
    ready?: readonly Tensor[] | null,
    wait?: EpWaitSpec | null,
    blocks?: number,
    xScales?: readonly Tensor[] | null,
  ): void;
  /**
   * A rank's wait alone (a rank without tokens, or the emulator's split form; epDispatch and
   * epCombine take the same `wait` to do it in their own launch). Never throws at run time: the
   * abort word is the report.
   */
  epWait(stream: Stream, wait: EpWaitSpec, abort: Tensor): void;
  /** A rank's "partials ready" alone: raises each flag (int32 [1], on a device the stream's
   *  device reaches) with release semantics, after the stream's earlier work. */
  epSignal(stream: Stream, flags: readonly Tensor[]): void;
  /**
   * The home rank's MoE output: out[t] = partials[d][rowOf[t, d]] added over the ranks t went to
   * in rank order 0, 1, .. (partials[d] f32 [capacity, H]: rank d's moe output over its slot for
   * this source), then (sum of t's zero-expert weights) * u[t] -- the single-device moe's order,
   * independent of arrival order. A rowOf entry outside [-1, capacity) or an id outside
   * [0, nExperts) fails with E_ARGUMENT on the CPU and contributes nothing on CUDA. With
   * `abort` (int32 [1], optional) raised, out is zeros and the partials are not read. The
   * single-kernel form: `signal` (flags, int32 [1] each) are first raised with release semantics
   * (this rank's partials, the stream's earlier work, are ready), then the home waits for `wait`
   * (kind 2; on CUDA it needs wait.counter), then sums. `blocks`: the CUDA block budget.
   */
  epCombine(
    ...args: [
      ...MoeTokenArgs,
      nExperts: number,
      rowOf: Tensor,
      partials: readonly Tensor[],
      abort?: Tensor | null,
      signal?: readonly Tensor[] | null,
      wait?: EpWaitSpec | null,
      blocks?: number,
    ]
  ): void;
}
