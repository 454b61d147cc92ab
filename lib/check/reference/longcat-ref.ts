// Naive float64 reference of the LongCat-Flash forward pass, written straight from SPEC.md
// (sections 3, 4, 6, 7.2). It is the oracle of the model tests: readable, slow, no cleverness,
// and independent from the fast path (it never touches the native addon).
//
// Conventions: every activation is a row-major Float64Array, [T, D] flattened to T*D.
// `Linear(W)(x) = x @ W^T` with W stored [out, in] like nn.Linear.
// Precision: all math in float64. The only deliberate float32 roundings are the ones the spec
// pins as float32 constants: RoPE inv_freq (SPEC 3.6) and fp8 dequantization (SPEC 7.2).

import { referenceNgramEmbedding } from './ngram-ref.js';

export interface RefTensor {
  shape: number[];
  data: Float64Array;
}

/** Weight lookup by checkpoint name (SPEC 2.1 / 2.2). Must throw if the tensor is missing. */
export type RefWeights = (name: string) => RefTensor;

export interface RefRopeScaling {
  rope_type?: string; // 'yarn' (only YaRN is implemented; `type` is accepted as an alias)
  type?: string;
  factor: number;
  original_max_position_embeddings?: number;
  beta_fast?: number;
  beta_slow?: number;
  mscale?: number;
  mscale_all_dim?: number;
  attention_factor?: number;
  truncate?: boolean;
}

/** The config.json fields the forward pass needs (snake_case as in SPEC 1.1). */
export interface RefConfig {
  hidden_size: number;
  num_layers: number;
  num_attention_heads: number;
  q_lora_rank: number;
  kv_lora_rank: number;
  qk_nope_head_dim: number;
  qk_rope_head_dim: number;
  v_head_dim: number;
  ffn_hidden_size: number;
  expert_ffn_hidden_size: number;
  n_routed_experts: number;
  zero_expert_num: number;
  moe_topk: number;
  routed_scaling_factor: number;
  mla_scale_q_lora: boolean;
  mla_scale_kv_lora: boolean;
  rms_norm_eps: number;
  rope_theta: number;
  rope_scaling?: RefRopeScaling | null;
  vocab_size: number;
  /** Only used by YaRN when rope_scaling lacks original_max_position_embeddings. */
  max_position_embeddings?: number;
  /** LongCat-Flash-Lite (SPEC-LITE 1.1): the N-gram embedding is on when this is set. */
  ngram_vocab_size_ratio?: number | null;
  emb_neighbor_num?: number;
  emb_split_num?: number;
  eos_token_id?: number;
}

export interface RefHooks {
  /** Latent RMSNorm eps of q_a_layernorm / kv_a_layernorm (SPEC O3). Default 1e-6. */
  latentEps?: number;
  /**
   * Called with intermediate values (the arrays are owned by the reference, copy if you keep them).
   * Per logical layer L: 'attn0', 'moe', 'mlp0', 'attn1', 'mlp1', 'layer_out' ([T*H] each).
   * Also 'kv_latent' with layer = cache index (2L + i; 2*num_layers for the MTP layer) and value
   * [T*(kv_lora + rope)] = exactly the per-token cache rows of SPEC 5.1 (scaled c_kv, roped k_pe).
   */
  hook?: (name: string, layer: number, value: Float64Array) => void;
}

// ---------------------------------------------------------------------------------------------
// Small building blocks
// ---------------------------------------------------------------------------------------------

function get(W: RefWeights, name: string, shape: number[]): Float64Array {
  const t = W(name);
  if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
    throw new Error(`reference: ${name} has shape [${t.shape}] but [${shape}] was expected`);
  }
  if (t.data.length !== shape.reduce((a, b) => a * b, 1)) {
    throw new Error(`reference: ${name} has ${t.data.length} values for shape [${shape}]`);
  }
  return t.data;
}

/** y[T, out] = x[T, in] @ W[out, in]^T */
export function linear(x: Float64Array, T: number, w: Float64Array, nOut: number, nIn: number): Float64Array {
  const y = new Float64Array(T * nOut);
  for (let t = 0; t < T; t++) {
    const xo = t * nIn;
    for (let o = 0; o < nOut; o++) {
      const wo = o * nIn;
      let s = 0;
      for (let i = 0; i < nIn; i++) s += x[xo + i]! * w[wo + i]!;
      y[t * nOut + o] = s;
    }
  }
  return y;
}

/** RMSNorm over rows of width D: w * x / sqrt(mean(x^2) + eps). */
export function rmsnorm(x: Float64Array, T: number, D: number, w: Float64Array, eps: number): Float64Array {
  const y = new Float64Array(T * D);
  for (let t = 0; t < T; t++) {
    let ss = 0;
    for (let i = 0; i < D; i++) ss += x[t * D + i]! ** 2;
    const r = 1 / Math.sqrt(ss / D + eps);
    for (let i = 0; i < D; i++) y[t * D + i] = w[i]! * (x[t * D + i]! * r);
  }
  return y;
}

export function silu(z: number): number {
  return z / (1 + Math.exp(-z));
}

function add(a: Float64Array, b: Float64Array): Float64Array {
  const y = new Float64Array(a.length);
  for (let i = 0; i < a.length; i++) y[i] = a[i]! + b[i]!;
  return y;
}

/** FFN(x) = down(silu(gate(x)) * up(x)) (SPEC 3.4), for weights under `prefix`. */
export function referenceFfn(W: RefWeights, prefix: string, x: Float64Array, T: number, H: number, I: number): Float64Array {
  const g = linear(x, T, get(W, `${prefix}.gate_proj.weight`, [I, H]), I, H);
  const u = linear(x, T, get(W, `${prefix}.up_proj.weight`, [I, H]), I, H);
  const a = new Float64Array(T * I);
  for (let i = 0; i < a.length; i++) a[i] = silu(g[i]!) * u[i]!;
  return linear(a, T, get(W, `${prefix}.down_proj.weight`, [H, I]), H, I);
}

// ---------------------------------------------------------------------------------------------
// RoPE (SPEC 3.6): interleaved pairs (2i, 2i+1), optional YaRN (transformers' formulas)
// ---------------------------------------------------------------------------------------------

export interface RopeParams {
  /** inv_freq[i], i < rope_dim/2, rounded to float32 like transformers' buffer. */
  invFreq: Float64Array;
  /** transformers' `attention_scaling`: multiplies cos and sin (1 without YaRN). */
  attentionFactor: number;
  /** Multiplier of the softmax scale: mscale^2 for YaRN with mscale_all_dim, else 1. */
  softmaxScaleFactor: number;
}

function yarnGetMscale(scale: number, mscale = 1): number {
  if (scale <= 1) return 1;
  return 0.1 * mscale * Math.log(scale) + 1;
}

/**
 * YaRN's correction range [low, high] over the rotary dims (transformers' find_correction_range):
 * the dims whose wavelength makes betaFast / betaSlow rotations over origMax positions, rounded
 * outwards when `truncate`, clamped to [0, dim - 1], never empty.
 */
export function yarnCorrectionRange(
  dim: number,
  base: number,
  origMax: number,
  betaFast: number,
  betaSlow: number,
  truncate: boolean,
): [number, number] {
  const correctionDim = (nRot: number) => (dim * Math.log(origMax / (nRot * 2 * Math.PI))) / (2 * Math.log(base));
  let low = correctionDim(betaFast);
  let high = correctionDim(betaSlow);
  if (truncate) {
    low = Math.floor(low);
    high = Math.ceil(high);
  }
  low = Math.max(low, 0);
  high = Math.min(high, dim - 1);
  if (low === high) high += 0.001;
  return [low, high];
}

export function ropeParams(cfg: RefConfig): RopeParams {
  const dim = cfg.qk_rope_head_dim;
  const base = cfg.rope_theta;
  const half = dim / 2;
  const posFreqs = Array.from({ length: half }, (_, i) => base ** ((2 * i) / dim));
  const rs = cfg.rope_scaling;
  if (!rs) {
    return {
      invFreq: Float64Array.from(posFreqs, p => Math.fround(1 / p)),
      attentionFactor: 1,
      softmaxScaleFactor: 1,
    };
  }
  const kind = rs.rope_type ?? rs.type ?? 'yarn';
  if (kind !== 'yarn') throw new Error(`reference: rope_scaling type '${kind}' is not implemented (only yarn)`);
  const factor = rs.factor;
  const origMax = rs.original_max_position_embeddings || cfg.max_position_embeddings;
  if (!origMax) throw new Error('reference: yarn needs original_max_position_embeddings or max_position_embeddings');
  const mscale = rs.mscale;
  const mscaleAll = rs.mscale_all_dim;
  let attentionFactor = rs.attention_factor;
  if (attentionFactor == null) {
    attentionFactor =
      mscale && mscaleAll ? yarnGetMscale(factor, mscale) / yarnGetMscale(factor, mscaleAll) : yarnGetMscale(factor);
  }
  const betaFast = rs.beta_fast || 32;
  const betaSlow = rs.beta_slow || 1;
  const [low, high] = yarnCorrectionRange(dim, base, origMax, betaFast, betaSlow, rs.truncate ?? true);
  const invFreq = new Float64Array(half);
  for (let i = 0; i < half; i++) {
    const ramp = Math.min(1, Math.max(0, (i - low) / (high - low)));
    const extrapolationFactor = 1 - ramp;
    const extrap = 1 / posFreqs[i]!;
    const interp = 1 / (factor * posFreqs[i]!);
    invFreq[i] = Math.fround(interp * (1 - extrapolationFactor) + extrap * extrapolationFactor);
  }
  // SPEC 3.6: softmax scale x m^2, m = 0.1 * mscale_all_dim * ln(factor) + 1 (if mscale_all_dim != 0)
  const m = mscaleAll ? yarnGetMscale(factor, mscaleAll) : 1;
  return { invFreq, attentionFactor, softmaxScaleFactor: m * m };
}

/**
 * Rotates, in place, the rope slice x[off .. off + 2*invFreq.length) of one vector at position
 * `pos`, interleaved pairing: y[2i] = x[2i] cos - x[2i+1] sin, y[2i+1] = x[2i+1] cos + x[2i] sin,
 * with cos/sin multiplied by `attentionFactor`. The angle pos * inv_freq is taken in float64.
 */
export function applyRope(x: Float64Array, off: number, pos: number, rp: RopeParams): void {
  for (let i = 0; i < rp.invFreq.length; i++) {
    const a = pos * rp.invFreq[i]!;
    const c = Math.cos(a) * rp.attentionFactor;
    const s = Math.sin(a) * rp.attentionFactor;
    const x0 = x[off + 2 * i]!,
      x1 = x[off + 2 * i + 1]!;
    x[off + 2 * i] = x0 * c - x1 * s;
    x[off + 2 * i + 1] = x1 * c + x0 * s;
  }
}

// ---------------------------------------------------------------------------------------------
// MLA (SPEC 3.5 naive form, 5.2 absorbed form)
// ---------------------------------------------------------------------------------------------

export function mlaScales(cfg: RefConfig) {
  const H = cfg.hidden_size;
  const rp = ropeParams(cfg);
  return {
    q: cfg.mla_scale_q_lora ? Math.sqrt(H / cfg.q_lora_rank) : 1,
    kv: cfg.mla_scale_kv_lora ? Math.sqrt(H / cfg.kv_lora_rank) : 1,
    softmax: (cfg.qk_nope_head_dim + cfg.qk_rope_head_dim) ** -0.5 * rp.softmaxScaleFactor,
    rope: rp,
  };
}

interface MlaProjections {
  /** [T, nh, nope + rope], mla-scaled, rope part rotated */
  q: Float64Array;
  /** [T, kv_lora], normalised and mla-scaled */
  ckv: Float64Array;
  /** [T, rope], rotated */
  kpe: Float64Array;
}

/** Cache rows of SPEC 5.1: [T, kv_lora + rope] = concat(scaled c_kv, roped k_pe). */
function cacheRows(cfg: RefConfig, p: MlaProjections, T: number): Float64Array {
  const R = cfg.kv_lora_rank,
    dr = cfg.qk_rope_head_dim;
  const out = new Float64Array(T * (R + dr));
  for (let t = 0; t < T; t++) {
    out.set(p.ckv.subarray(t * R, (t + 1) * R), t * (R + dr));
    out.set(p.kpe.subarray(t * dr, (t + 1) * dr), t * (R + dr) + R);
  }
  return out;
}

function softmaxInPlace(s: Float64Array, n: number): void {
  let m = -Infinity;
  for (let i = 0; i < n; i++) m = Math.max(m, s[i]!);
  let z = 0;
  for (let i = 0; i < n; i++) {
    s[i] = Math.exp(s[i]! - m);
    z += s[i]!;
  }
  for (let i = 0; i < n; i++) s[i] = s[i]! / z;
}

export interface MlaOptions {
  latentEps?: number;
  /** Receives the cache rows [T*(kv_lora+rope)] of this call. */
  onCache?: (rows: Float64Array) => void;
}

/**
 * What both MLA forms start from (SPEC 3.5): the dims, the projections (q [T, nh, nope + rope],
 * mla-scaled, rope part rotated; c_kv [T, kv_lora], normalised and mla-scaled; k_pe [T, rope],
 * rotated), the cache rows (reported to opts.onCache) and the softmax scale. Takes the sub-layer's arguments.
 */
function mlaSetup(...[cfg, W, prefix, x, T, positions, opts = {}]: Parameters<MlaSubLayer>) {
  const latentEps = opts.latentEps ?? 1e-6;
  const H = cfg.hidden_size,
    nh = cfg.num_attention_heads;
  const Q = cfg.q_lora_rank,
    R = cfg.kv_lora_rank;
  const dn = cfg.qk_nope_head_dim,
    dr = cfg.qk_rope_head_dim,
    dv = cfg.v_head_dim,
    dqk = dn + dr;
  const sc = mlaScales(cfg);

  let cq = linear(x, T, get(W, `${prefix}.q_a_proj.weight`, [Q, H]), Q, H);
  cq = rmsnorm(cq, T, Q, get(W, `${prefix}.q_a_layernorm.weight`, [Q]), latentEps);
  const q = linear(cq, T, get(W, `${prefix}.q_b_proj.weight`, [nh * dqk, Q]), nh * dqk, Q);
  for (let i = 0; i < q.length; i++) q[i] = q[i]! * sc.q; // both nope and rope parts

  const kv = linear(x, T, get(W, `${prefix}.kv_a_proj_with_mqa.weight`, [R + dr, H]), R + dr, H);
  const lat = new Float64Array(T * R);
  const kpe = new Float64Array(T * dr);
  for (let t = 0; t < T; t++) {
    for (let j = 0; j < R; j++) lat[t * R + j] = kv[t * (R + dr) + j]!;
    for (let j = 0; j < dr; j++) kpe[t * dr + j] = kv[t * (R + dr) + R + j]!;
  }
  const ckv = rmsnorm(lat, T, R, get(W, `${prefix}.kv_a_layernorm.weight`, [R]), latentEps);
  for (let i = 0; i < ckv.length; i++) ckv[i] = ckv[i]! * sc.kv; // latent only, not k_pe

  for (let t = 0; t < T; t++) {
    for (let h = 0; h < nh; h++) applyRope(q, (t * nh + h) * dqk + dn, positions[t]!, sc.rope);
    applyRope(kpe, t * dr, positions[t]!, sc.rope);
  }
  const p: MlaProjections = { q, ckv, kpe };
  const cache = cacheRows(cfg, p, T); // [T, R + dr]
  opts.onCache?.(cache);
  return { nh, R, dn, dr, dv, dqk, p, cache, scale: sc.softmax };
}

/**
 * The causal attention weights of the query at positions[t] over the T keys (SPEC 3.7): softmax of
 * dot(s) * scale, keys at later positions masked. Written into `score` [T].
 */
function causalWeights(
  score: Float64Array,
  T: number,
  positions: number[],
  t: number,
  scale: number,
  dot: (s: number) => number,
) {
  for (let s = 0; s < T; s++) score[s] = positions[s]! > positions[t]! ? -Infinity : dot(s) * scale;
  softmaxInPlace(score, T);
}

/** The output projection o_proj of the heads' outputs o [T, nh * dv]. */
function mlaOutput(cfg: RefConfig, W: RefWeights, prefix: string, o: Float64Array, T: number): Float64Array {
  const H = cfg.hidden_size,
    nhdv = cfg.num_attention_heads * cfg.v_head_dim;
  return linear(o, T, get(W, `${prefix}.o_proj.weight`, [H, nhdv]), H, nhdv);
}

/** An MLA attention sub-layer over one sequence (the two forms below): x [T*H] in, [T*H] out. */
export type MlaSubLayer = (
  cfg: RefConfig,
  W: RefWeights,
  prefix: string,
  x: Float64Array,
  T: number,
  positions: number[],
  opts?: MlaOptions,
) => Float64Array;

/**
 * One MLA attention sub-layer, naive ("MHA") form of SPEC 3.5, over one sequence.
 * `x` [T*H] is the already-normalised input, `positions` [T] absolute positions; a query at
 * position p attends keys at positions <= p (SPEC 3.7). Weights under `prefix`
 * (e.g. 'model.layers.0.self_attn.1'). Returns [T*H].
 */
export const referenceMla: MlaSubLayer = (cfg, W, prefix, x, T, positions, opts = {}) => {
  const { nh, R, dn, dr, dv, dqk, p, scale } = mlaSetup(cfg, W, prefix, x, T, positions, opts);
  const kvb = linear(p.ckv, T, get(W, `${prefix}.kv_b_proj.weight`, [nh * (dn + dv), R]), nh * (dn + dv), R);
  // k[s,h] = concat(k_nope[s,h], k_pe[s]); v[s,h]
  const o = new Float64Array(T * nh * dv);
  const score = new Float64Array(T);
  for (let t = 0; t < T; t++) {
    for (let h = 0; h < nh; h++) {
      const qo = (t * nh + h) * dqk;
      causalWeights(score, T, positions, t, scale, s => {
        const ko = (s * nh + h) * (dn + dv);
        let d = 0;
        for (let j = 0; j < dn; j++) d += p.q[qo + j]! * kvb[ko + j]!;
        for (let j = 0; j < dr; j++) d += p.q[qo + dn + j]! * p.kpe[s * dr + j]!;
        return d;
      });
      for (let s = 0; s < T; s++) {
        const w = score[s]!;
        if (w === 0) continue;
        const vo = (s * nh + h) * (dn + dv) + dn;
        for (let j = 0; j < dv; j++) o[(t * nh + h) * dv + j] = o[(t * nh + h) * dv + j]! + w * kvb[vo + j]!;
      }
    }
  }
  return mlaOutput(cfg, W, prefix, o, T);
};

/**
 * The same sub-layer through the absorbed weights of SPEC 5.2 (q_lat = W_UK^T q_nope, attention
 * over the latent cache, o = W_UV o_lat). Exact algebra: equals referenceMla up to rounding.
 * Also usable as the oracle of decode kernels working on latent caches.
 */
export const referenceMlaAbsorbed: MlaSubLayer = (cfg, W, prefix, x, T, positions, opts = {}) => {
  const { nh, R, dn, dr, dv, dqk, p, cache, scale } = mlaSetup(cfg, W, prefix, x, T, positions, opts);
  const wkvb = get(W, `${prefix}.kv_b_proj.weight`, [nh * (dn + dv), R]);
  // W_UK[h] = wkvb rows h*(dn+dv) + [0, dn), W_UV[h] = rows h*(dn+dv) + [dn, dn+dv); each row has R columns

  const o = new Float64Array(T * nh * dv);
  const qlat = new Float64Array(R + dr);
  const olat = new Float64Array(R);
  const score = new Float64Array(T);
  for (let t = 0; t < T; t++) {
    for (let h = 0; h < nh; h++) {
      const qo = (t * nh + h) * dqk;
      // q_lat = W_UK[h]^T q_nope[h] (R values), followed by q_pe (dr values): a 576-wide query
      qlat.fill(0);
      for (let j = 0; j < dn; j++) {
        const qj = p.q[qo + j]!;
        const row = (h * (dn + dv) + j) * R;
        for (let c = 0; c < R; c++) qlat[c] = qlat[c]! + qj * wkvb[row + c]!;
      }
      for (let j = 0; j < dr; j++) qlat[R + j] = p.q[qo + dn + j]!;
      causalWeights(score, T, positions, t, scale, s => {
        let d = 0;
        for (let c = 0; c < R + dr; c++) d += qlat[c]! * cache[s * (R + dr) + c]!;
        return d;
      });
      olat.fill(0);
      for (let s = 0; s < T; s++) {
        const w = score[s]!;
        for (let c = 0; c < R; c++) olat[c] = olat[c]! + w * cache[s * (R + dr) + c]!;
      }
      for (let j = 0; j < dv; j++) {
        const row = (h * (dn + dv) + dn + j) * R;
        let d = 0;
        for (let c = 0; c < R; c++) d += wkvb[row + c]! * olat[c]!;
        o[(t * nh + h) * dv + j] = d;
      }
    }
  }
  return mlaOutput(cfg, W, prefix, o, T);
};

// ---------------------------------------------------------------------------------------------
// Router and MoE (SPEC 4)
// ---------------------------------------------------------------------------------------------

export interface RouterResult {
  /** softmax over all experts (FFN + zero), [T * E] */
  probs: Float64Array;
  /** chosen expert ids, [T * k], per token in descending order of biased score (ties: lower id first) */
  idx: Int32Array;
  /** routed_scaling_factor * probs[idx] (unbiased, not renormalised), [T * k] */
  weights: Float64Array;
}

/**
 * SPEC 4.1. `u` [T*H]; `classifier` [E, H] (E = n_routed + zero experts); `bias` [E]
 * (e_score_correction_bias, selection only). Softmax over ALL E experts, top-k of p + bias,
 * ties broken towards the lower expert id, weights = scale * p (zero experts included).
 */
export function referenceRouter(
  u: Float64Array,
  T: number,
  H: number,
  classifier: Float64Array,
  bias: Float64Array,
  topk: number,
  scalingFactor: number,
): RouterResult {
  const E = bias.length;
  if (classifier.length !== E * H)
    throw new Error(`reference router: classifier has ${classifier.length} values, expected ${E}x${H}`);
  if (topk > E) throw new Error(`reference router: topk ${topk} > ${E} experts`);
  const probs = linear(u, T, classifier, E, H);
  const idx = new Int32Array(T * topk);
  const weights = new Float64Array(T * topk);
  for (let t = 0; t < T; t++) {
    const p = probs.subarray(t * E, (t + 1) * E);
    softmaxInPlace(p, E);
    const order = Array.from({ length: E }, (_, e) => e);
    order.sort((a, b) => p[b]! + bias[b]! - (p[a]! + bias[a]!) || a - b);
    for (let k = 0; k < topk; k++) {
      const e = order[k]!;
      idx[t * topk + k] = e;
      weights[t * topk + k] = p[e]! * scalingFactor;
    }
  }
  return { probs, idx, weights };
}

/** Router of logical layer L, reading its weights. */
export function referenceLayerRouter(cfg: RefConfig, W: RefWeights, layer: number, u: Float64Array, T: number): RouterResult {
  const H = cfg.hidden_size,
    E = cfg.n_routed_experts + cfg.zero_expert_num;
  const p = `model.layers.${layer}.mlp.router`;
  return referenceRouter(
    u,
    T,
    H,
    get(W, `${p}.classifier.weight`, [E, H]),
    get(W, `${p}.e_score_correction_bias`, [E]),
    cfg.moe_topk,
    cfg.routed_scaling_factor,
  );
}

/**
 * SPEC 4.2: y = sum over chosen experts e (ascending id) of w * (e < n_routed ? Expert_e(u) : u).
 * Float64 accumulation throughout.
 */
export function referenceMoe(cfg: RefConfig, W: RefWeights, layer: number, u: Float64Array, T: number): Float64Array {
  const H = cfg.hidden_size,
    I = cfg.expert_ffn_hidden_size,
    k = cfg.moe_topk;
  const r = referenceLayerRouter(cfg, W, layer, u, T);
  const y = new Float64Array(T * H);
  for (let t = 0; t < T; t++) {
    const ut = u.subarray(t * H, (t + 1) * H);
    const chosen = Array.from({ length: k }, (_, j) => ({ e: r.idx[t * k + j]!, w: r.weights[t * k + j]! }));
    chosen.sort((a, b) => a.e - b.e);
    for (const { e, w } of chosen) {
      const out = e < cfg.n_routed_experts ? referenceFfn(W, `model.layers.${layer}.mlp.experts.${e}`, ut, 1, H, I) : ut;
      for (let i = 0; i < H; i++) y[t * H + i] = y[t * H + i]! + w * out[i]!;
    }
  }
  return y;
}

// ---------------------------------------------------------------------------------------------
// Model (SPEC 3.1, 3.3)
// ---------------------------------------------------------------------------------------------

function embed(W: RefWeights, name: string, tokens: number[], V: number, H: number): Float64Array {
  const table = get(W, name, [V, H]);
  const h = new Float64Array(tokens.length * H);
  tokens.forEach((tok, t) => {
    if (!Number.isInteger(tok) || tok < 0 || tok >= V) throw new Error(`reference: token ${tok} out of range [0, ${V})`);
    h.set(table.subarray(tok * H, (tok + 1) * H), t * H);
  });
  return h;
}

/** RMSNorm of hidden states x [T, H] with the weight `name` and the model's eps (SPEC 3.2). */
function hiddenNorm(cfg: RefConfig, W: RefWeights, name: string, x: Float64Array, T: number): Float64Array {
  const H = cfg.hidden_size;
  return rmsnorm(x, T, H, get(W, name, [H]), cfg.rms_norm_eps);
}

/** A dense MLP of the layers (hidden -> ffn_hidden_size -> hidden), x [T, H]. */
function denseMlp(cfg: RefConfig, W: RefWeights, prefix: string, x: Float64Array, T: number): Float64Array {
  return referenceFfn(W, prefix, x, T, cfg.hidden_size, cfg.ffn_hidden_size);
}

/** One logical ScMoE layer (SPEC 3.3), transformers summation order (O7). */
export function referenceLayer(
  cfg: RefConfig,
  W: RefWeights,
  L: number,
  hIn: Float64Array,
  T: number,
  positions: number[],
  opts: RefHooks = {},
): Float64Array {
  const pre = `model.layers.${L}`;
  const hook = opts.hook ?? (() => {});
  const norm = (x: Float64Array, weight: string) => hiddenNorm(cfg, W, weight, x, T);
  const attn = (i: number, x: Float64Array) =>
    referenceMla(cfg, W, `${pre}.self_attn.${i}`, norm(x, `${pre}.input_layernorm.${i}.weight`), T, positions, {
      latentEps: opts.latentEps,
      onCache: rows => hook('kv_latent', 2 * L + i, rows),
    });

  // A: attention 0
  const a0 = attn(0, hIn);
  hook('attn0', L, a0);
  let h = add(hIn, a0);
  // B: MoE and dense MLP 0 share u
  const u = norm(h, `${pre}.post_attention_layernorm.0.weight`);
  const moe = referenceMoe(cfg, W, L, u, T);
  hook('moe', L, moe);
  const m0 = denseMlp(cfg, W, `${pre}.mlps.0`, u, T);
  hook('mlp0', L, m0);
  h = add(h, m0);
  // C: attention 1
  const a1 = attn(1, h);
  hook('attn1', L, a1);
  h = add(h, a1);
  // D: dense MLP 1, then the shortcut MoE output
  const m1 = denseMlp(cfg, W, `${pre}.mlps.1`, norm(h, `${pre}.post_attention_layernorm.1.weight`), T);
  hook('mlp1', L, m1);
  h = add(add(h, m1), moe);
  hook('layer_out', L, h);
  return h;
}

function lmHead(cfg: RefConfig, W: RefWeights, hf: Float64Array, T: number): Float64Array {
  const H = cfg.hidden_size,
    V = cfg.vocab_size;
  return linear(hf, T, get(W, 'lm_head.weight', [V, H]), V, H);
}

/**
 * Full forward over tokens at positions 0..T-1 (one causal sequence).
 * Returns logits [T*V] and the post-final-norm hidden [T*H] (what MTP consumes).
 */
export function referenceForward(
  cfg: RefConfig,
  W: RefWeights,
  tokens: number[],
  opts: RefHooks = {},
): { logits: Float64Array; hidden: Float64Array } {
  const H = cfg.hidden_size,
    T = tokens.length;
  const positions = tokens.map((_, i) => i);
  let h = embed(W, 'model.embed_tokens.weight', tokens, cfg.vocab_size, H);
  if (cfg.ngram_vocab_size_ratio != null) {
    const ng = {
      vocab_size: cfg.vocab_size,
      hidden_size: H,
      ngram_vocab_size_ratio: cfg.ngram_vocab_size_ratio,
      emb_neighbor_num: cfg.emb_neighbor_num!,
      emb_split_num: cfg.emb_split_num!,
      eos_token_id: cfg.eos_token_id ?? 2,
    };
    const E = ng.emb_split_num * (ng.emb_neighbor_num - 1),
      d = Math.floor(H / E),
      M = ng.ngram_vocab_size_ratio * ng.vocab_size;
    h = referenceNgramEmbedding(
      ng,
      tokens,
      h,
      idx => get(W, `model.ngram_embeddings.embedders.${idx}.weight`, [M + 2 * idx + 1, d]),
      idx => get(W, `model.ngram_embeddings.post_projs.${idx}.weight`, [H, d]),
    );
  }
  for (let L = 0; L < cfg.num_layers; L++) h = referenceLayer(cfg, W, L, h, T, positions, opts);
  const hidden = hiddenNorm(cfg, W, 'model.norm.weight', h, T);
  return { logits: lmHead(cfg, W, hidden, T), hidden };
}

// ---------------------------------------------------------------------------------------------
// MTP (SPEC 6.1)
// ---------------------------------------------------------------------------------------------

export interface MtpOptions extends RefHooks {
  /**
   * Embedding table of the draft (SPEC O5): 'mtp' = model.mtp.embed_tokens.weight (vLLM),
   * 'main' = model.embed_tokens.weight (SGLang). Default 'mtp', falling back to 'main' when
   * the MTP table is missing.
   */
  embed?: 'mtp' | 'main';
}

/**
 * MTP head over T pairs (hiddenPrev[t] = post-norm main hidden at position positions[t],
 * nextTokens[t] = the token at position positions[t] + 1). The MTP attention runs causally over
 * the given positions. Returns logits [T*V] through the main lm_head and the MTP post-norm
 * hidden [T*H]. Hook 'kv_latent' reports the MTP cache rows with layer = 2 * num_layers.
 */
export function referenceMtp(
  cfg: RefConfig,
  W: RefWeights,
  hiddenPrev: Float64Array,
  nextTokens: number[],
  positions: number[],
  opts: MtpOptions = {},
): { logits: Float64Array; hidden: Float64Array } {
  const H = cfg.hidden_size,
    T = nextTokens.length;
  if (hiddenPrev.length !== T * H)
    throw new Error(`reference mtp: hiddenPrev has ${hiddenPrev.length} values, expected ${T}x${H}`);
  if (positions.length !== T) throw new Error(`reference mtp: ${positions.length} positions for ${T} tokens`);
  const pre = 'model.mtp.layers.0';
  let table = 'model.mtp.embed_tokens.weight';
  if (opts.embed === 'main') table = 'model.embed_tokens.weight';
  else if (opts.embed === undefined) {
    try {
      W(table);
    } catch {
      table = 'model.embed_tokens.weight';
    }
  }
  const e = embed(W, table, nextTokens, cfg.vocab_size, H);
  const en = hiddenNorm(cfg, W, `${pre}.enorm.m.weight`, e, T);
  const hn = hiddenNorm(cfg, W, `${pre}.hnorm.m.weight`, hiddenPrev, T);
  const cat = new Float64Array(T * 2 * H);
  for (let t = 0; t < T; t++) {
    cat.set(en.subarray(t * H, (t + 1) * H), t * 2 * H); // embedding first
    cat.set(hn.subarray(t * H, (t + 1) * H), t * 2 * H + H);
  }
  let z = linear(cat, T, get(W, `${pre}.eh_proj.weight`, [H, 2 * H]), H, 2 * H);
  const a = referenceMla(cfg, W, `${pre}.self_attn`, hiddenNorm(cfg, W, `${pre}.input_layernorm.weight`, z, T), T, positions, {
    latentEps: opts.latentEps,
    onCache: rows => opts.hook?.('kv_latent', 2 * cfg.num_layers, rows),
  });
  z = add(z, a);
  const mlpIn = hiddenNorm(cfg, W, `${pre}.post_attention_layernorm.weight`, z, T);
  z = add(z, denseMlp(cfg, W, `${pre}.transformer_layer.mlp`, mlpIn, T));
  const hidden = hiddenNorm(cfg, W, 'model.mtp.norm.weight', z, T);
  return { logits: lmHead(cfg, W, hidden, T), hidden };
}

// ---------------------------------------------------------------------------------------------
// FP8 block dequantization (SPEC 7.2)
// ---------------------------------------------------------------------------------------------

/** e4m3fn per SPEC 7.2, byte `s eeee mmm`: bias 7, e = 0 subnormal, `s 1111 111` NaN, no infinities. */
function e4m3fn(byte: number): number {
  const s = byte & 0x80 ? -1 : 1,
    e = (byte >> 3) & 15,
    m = byte & 7;
  if (e === 15 && m === 7) return NaN;
  return e === 0 ? s * 2 ** -6 * (m / 8) : s * 2 ** (e - 7) * (1 + m / 8);
}

/**
 * W[r, c] = float32(fp8(Q[r, c]) * scale_inv[r / 128, c / 128]) for a [n, k] e4m3fn weight with
 * [ceil(n/128), ceil(k/128)] float32 scales. The product is rounded to float32 like torch.
 */
export function dequantFp8Block(q: Uint8Array, scaleInv: Float32Array, n: number, k: number): Float64Array {
  const nb = Math.ceil(n / 128),
    kb = Math.ceil(k / 128);
  if (q.length !== n * k) throw new Error(`dequantFp8Block: ${q.length} bytes for a [${n}, ${k}] weight`);
  if (scaleInv.length !== nb * kb) throw new Error(`dequantFp8Block: ${scaleInv.length} scales, expected [${nb}, ${kb}]`);
  const out = new Float64Array(n * k);
  for (let r = 0; r < n; r++) {
    for (let c = 0; c < k; c++) {
      out[r * k + c] = Math.fround(e4m3fn(q[r * k + c]!) * scaleInv[Math.floor(r / 128) * kb + Math.floor(c / 128)]!);
    }
  }
  return out;
}
