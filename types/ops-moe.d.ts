// Declarations of the MoE ops: routerTopk, moe / moeExperts over a packed expert set.
import type { Tensor, Stream } from './native.js';

type S = Stream | null | undefined;

/** The leading arguments of moe and epCombine: the stream, the output and the routed tokens. */
export type MoeTokenArgs = [stream: S, out: Tensor, u: Tensor, idx: Tensor, weights: Tensor, nRouted: number];

/** One layer's routed experts as lists (moe, moeExperts); a scale list only for fp8 / int8 / int4 weights
 *  (int4: codes int8 [rows, groups, group / 2] and group scales, native/cpu/linear.h). */
type ExpertLists = [
  gate: readonly Tensor[],
  up: readonly Tensor[],
  down: readonly Tensor[],
  gateScale?: readonly Tensor[] | null,
  upScale?: readonly Tensor[] | null,
  downScale?: readonly Tensor[] | null,
];

/**
 * The routed experts of one MoE layer, checked once by moeExperts() and passed to moe() in place of
 * the gate/up/down lists (saves unwrapping 3 x nRouted tensors per call). Holds the weights'
 * memory until disposed (queued calls keep what they use alive).
 */
export interface MoeExpertSet {
  readonly nRouted: number;
  readonly hidden: number;
  readonly intermediate: number;
  readonly device: string;
  /** Releases the set's references to the weights. Idempotent. */
  dispose(): void;
}

/**
 * Router and grouped-expert MoE with zero-computation experts (SPEC 4). CPU kernels in
 * native/cpu/moe.cc; CUDA twins in cuda/moe_router.cu and cuda/moe.cu (not yet run on a GPU). Index
 * errors surface as E_ARGUMENT on the CPU; on CUDA the indices never leave the device, so a bad id
 * leaves `out` untouched instead.
 */
export interface MoeOps {
  /**
   * Per token: p = softmax(logits[t]) in fp32 over all E = routed + zero experts; picks the k
   * largest p + bias (descending; ties go to the lower expert index); weights = p[idx] * scale
   * (unbiased, not renormalised, zero experts scaled too); nFfn[t] = #chosen with idx < nRouted.
   * idx int32 [T, k], weights f32 [T, k], nFfn int32 [T] (may be null), logits f32 [T, E],
   * bias f32 [E]; 1 <= k <= E, 0 <= nRouted <= E.
   */
  routerTopk(
    stream: S,
    idx: Tensor,
    weights: Tensor,
    nFfn: Tensor | null,
    logits: Tensor,
    bias: Tensor,
    nRouted: number,
    scale: number,
  ): void;

  /**
   * out[t] = sum over chosen routed experts (idx < nRouted) of w * down(silu(gate(u)) * up(u))
   *        + (sum of w over chosen zero experts, idx >= nRouted) * u[t],
   * fp32 accumulation in a fixed order (ascending expert id, zero-expert term last) that does not
   * depend on the thread count. out, u f32 [T, H] (must not overlap); idx int32 [T, k];
   * weights f32 [T, k]. gate[e], up[e]: [I, H]; down[e]: [H, I]; one per routed expert, f32 | bf16 |
   * fp8_e4m3 (scale = weight_scale_inv [ceil(rows/128), ceil(cols/128)]) | int8 (scale [rows]).
   * A scale list is null unless its weights are fp8/int8. nExperts (optional, = routed + zero)
   * bounds idx; a bad idx is found while running and surfaces as E_ARGUMENT at synchronize.
   */
  moe(...args: [...MoeTokenArgs, ...ExpertLists, nExperts?: number | null]): void;
  /** The same with a prepared expert set (its nRouted must match; up .. downScale null). */
  moe(
    ...args: [
      ...MoeTokenArgs,
      experts: MoeExpertSet,
      up?: null,
      down?: null,
      gateScale?: null,
      upScale?: null,
      downScale?: null,
      nExperts?: number | null,
    ]
  ): void;

  /**
   * Checks and packs one layer's routed experts (same rules as moe's lists: gate[e], up[e] [I, H],
   * down[e] [H, I], scale lists only for fp8 / int8 / int4 weights) for reuse across moe() calls.
   * perm (act-order GPTQ experts): per expert null or int32 [H] on the experts' device, values in
   * [0, H): that expert's gate and up read the token's columns in this order (x[c] = u[t, perm[c]]).
   */
  moeExperts(...lists: [...ExpertLists, perm?: readonly (Tensor | null)[] | null]): MoeExpertSet;
}
