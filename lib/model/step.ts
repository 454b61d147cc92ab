// The contract between the architecture (longcat-flash.ts) and the runner (model.ts): what one
// forward step hands the layers. The architecture decides what to compute; this object says where:
// the streams of the two branches, the batch's token positions and KV-cache addressing, the latent
// caches, and the call that runs the routed experts. A deployment changes by swapping a member
// (expert parallelism brings its own `experts`), never by editing the layers.
import { native } from '../native.js';
import { type Tensor, empty, tensor } from '../tensor.js';
import type { Event, Stream } from '../device.js';
import type { ModelDims } from './dims.js';
import type { MoeExpertSet } from '../../types/ops-moe.js';

/** Temporaries of one stage: disposed together once the ops that use them are queued. */
export class Arena {
  private held: Tensor[] = [];
  constructor(readonly device: string) {}
  f32(shape: number[]): Tensor {
    return this.keep(empty(shape, { device: this.device }));
  }
  i32(shape: number[]): Tensor {
    return this.keep(empty(shape, { dtype: 'int32', device: this.device }));
  }
  ints(values: ArrayLike<number>, shape = [values.length]): Tensor {
    return this.keep(tensor(values, shape, { dtype: 'int32', device: this.device }));
  }
  keep<T extends Tensor>(t: T): T {
    this.held.push(t);
    return t;
  }
  dispose() {
    for (const t of this.held) t.dispose();
    this.held = [];
  }
}

/** Where the step's T tokens sit (all int32 tensors on the model's device). */
export interface Batch {
  mode: 'prefill' | 'decode';
  T: number;
  ids: Tensor; // [T]
  lastRow?: Tensor; // [B]: prefill rows whose logits are wanted (all rows when absent)
  positions: Tensor; // [T]
  slots: Tensor; // [T]: each token's row in the paged latent cache
  // The absorbed attention (decode; a prefill chunk behind a cached prefix, absorbedPrefill in
  // model.ts): each row's block table and key count (its position + 1).
  blockTable?: Tensor; // [T, maxBlocks]
  seqLens?: Tensor; // [T]
  // The expanded attention (the other prefills): sequence b has queries qStart[b]..qStart[b+1], keys
  // kvStart[b]..kvStart[b+1]
  qStart?: Tensor;
  kvStart?: Tensor;
  kvTotal?: number;
  gathers?: { table: Tensor; start: number; length: number }[];
  /** N-gram models: each token's row of every table, [E, T, D], gathered on the host. */
  ngramRows?: Tensor;
}

/**
 * out[t] = sum over token t's chosen experts of weights[t, j] * expert(u[t]) (SPEC 4.2): routed
 * FFN experts (ids < experts.nRouted) and zero experts (ids up to nExperts, the identity), queued on
 * `stream`. out, u f32 [T, H]; idx int32 [T, k]; weights f32 [T, k].
 */
export type ExpertsFn = (
  stream: Stream,
  out: Tensor,
  u: Tensor,
  idx: Tensor,
  weights: Tensor,
  experts: MoeExpertSet,
  nExperts: number,
) => void;

/** All of a layer's experts on this device: the moe op over the packed expert set. */
export const localExperts: ExpertsFn = (stream, out, u, idx, weights, experts, nExperts) =>
  native.moe(stream, out, u, idx, weights, experts.nRouted, experts, null, null, null, null, null, nExperts);

/** One forward step, as the runner sets it up for the architecture. */
export interface Step {
  readonly dims: ModelDims;
  readonly device: string;
  readonly batch: Batch;
  /** The dense branch: the device's default stream, so later null-stream ops are ordered after it. */
  readonly main: Stream;
  /** The shortcut MoE branch (the main stream itself when overlap is off). */
  readonly moeStream: Stream;
  /** Per layer: [u is ready on main, the MoE output is ready on moeStream]. */
  readonly moeEvents: readonly (readonly [Event, Event])[];
  /** Per layer, when profiling: recorded on main after the dense branch and at the layer's end. */
  readonly marks?: readonly { readonly dense: Event; readonly layer: Event }[] | null;
  /** The latent KV cache of each attention sub-layer, layer l's at 2 l and 2 l + 1. */
  readonly caches: readonly Tensor[];
  /** RoPE inverse frequencies, f32 [rope / 2]. */
  readonly invFreq: Tensor;
  readonly experts: ExpertsFn;
  /** When non-null, each layer appends its int32 [T] count of FFN experts chosen per token. */
  readonly routing: Tensor[] | null;
  /** With `routing`, where the counts go: layer l's are row l of this int32 [layers, T] (a captured
   *  step's: the step's counts as one tensor); null: a tensor of their own per layer. */
  readonly routingStack?: Tensor | null;
}
