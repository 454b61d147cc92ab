// RoPE tables for MLA (SPEC 3.6): the inverse frequencies, the YaRN cos/sin factor and the attention
// softmax scale, computed like transformers (`_compute_default_rope_parameters`,
// `_compute_yarn_parameters`, float32 tensor arithmetic emulated with Math.fround) and the
// LongCat / DeepSeek attention (`scaling = qk_head_dim^-0.5 * yarn_get_mscale(factor, mscale_all_dim)^2`).
import { ConfigError } from './errors.js';
import type { RopeScaling } from './config.js';

/** A `rope_scaling` object as a Hugging Face config.json writes it: RopeScaling's fields, any of them
 *  absent (transformers' defaults apply), the kind under `rope_type` or `type` (only YaRN is supported). */
export type RopeScalingInput = Partial<Omit<RopeScaling, 'type'>> & { rope_type?: string; type?: string };

/** The config fields RoPE depends on (Hugging Face names). */
export interface RopeConfig {
  rope_theta: number;
  qk_rope_head_dim: number;
  qk_nope_head_dim: number;
  max_position_embeddings?: number;
  rope_scaling?: RopeScalingInput | null;
}

export interface RopeTables {
  /** inv_freq [qk_rope_head_dim / 2], float32 as transformers computes it. */
  invFreq: Float32Array;
  /** Multiplies cos and sin (YaRN's attention_factor; 1 for plain RoPE). */
  attentionFactor: number;
  /** Attention softmax scale: (nope + rope)^-0.5, times mscale^2 under YaRN with mscale_all_dim. */
  softmaxScale: number;
}

const f = Math.fround;

/** transformers' `get_mscale` / `yarn_get_mscale`. */
export function yarnGetMscale(scale: number, mscale = 1): number {
  if (scale <= 1) return 1.0;
  return 0.1 * mscale * Math.log(scale) + 1.0;
}

function positive(name: string, v: unknown): number {
  if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0)
    throw new ConfigError('E_CONFIG', `rope: ${name} must be a positive number, got ${String(v)}`);
  return v;
}

/** base ** (2i / dim) for i < dim / 2, as float32 (`base ** (arange(0, dim, 2).float() / dim)`). */
function posFreqs(base: number, dim: number): Float32Array {
  const half = dim / 2;
  const r = new Float32Array(half);
  for (let i = 0; i < half; i++) r[i] = f(base ** f((2 * i) / dim));
  return r;
}

export function ropeTables(cfg: RopeConfig): RopeTables {
  const base = positive('rope_theta', cfg.rope_theta);
  const dim = positive('qk_rope_head_dim', cfg.qk_rope_head_dim);
  if (!Number.isInteger(dim) || dim % 2 !== 0)
    throw new ConfigError('E_CONFIG', `rope: qk_rope_head_dim must be an even integer, got ${dim}`);
  const nope = cfg.qk_nope_head_dim;
  if (!Number.isInteger(nope) || nope < 0)
    throw new ConfigError('E_CONFIG', `rope: qk_nope_head_dim must be a non-negative integer, got ${nope}`);
  let softmaxScale = (nope + dim) ** -0.5;
  const half = dim / 2;
  const rs = cfg.rope_scaling ?? null;
  const kind = rs ? (rs.rope_type ?? rs.type ?? 'default') : 'default';

  if (kind === 'default') {
    const pf = posFreqs(base, dim);
    const invFreq = new Float32Array(half);
    for (let i = 0; i < half; i++) invFreq[i] = f(1 / pf[i]!);
    return { invFreq, attentionFactor: 1, softmaxScale };
  }
  if (kind !== 'yarn')
    throw new ConfigError('E_CONFIG', `rope: rope_scaling type '${kind}' is not supported (only plain RoPE and 'yarn')`);

  const rawFactor = positive('rope_scaling.factor', rs!.factor);
  let factor = rawFactor;
  // transformers 4.x: with original_max_position_embeddings present, the factor used for the
  // frequencies and the default attention factor is max_position_embeddings / original.
  let origMax: number;
  if (rs!.original_max_position_embeddings != null) {
    origMax = positive('rope_scaling.original_max_position_embeddings', rs!.original_max_position_embeddings);
    if (cfg.max_position_embeddings != null) factor = positive('max_position_embeddings', cfg.max_position_embeddings) / origMax;
  } else {
    origMax = positive('max_position_embeddings', cfg.max_position_embeddings);
  }
  const mscale = rs!.mscale,
    mscaleAllDim = rs!.mscale_all_dim;
  let attentionFactor = rs!.attention_factor ?? null;
  if (attentionFactor == null) {
    attentionFactor =
      mscale && mscaleAllDim ? yarnGetMscale(factor, mscale) / yarnGetMscale(factor, mscaleAllDim) : yarnGetMscale(factor);
  }
  const betaFast = rs!.beta_fast || 32;
  const betaSlow = rs!.beta_slow || 1;
  const truncate = rs!.truncate ?? true;

  const correctionDim = (rot: number) => (dim * Math.log(origMax / (rot * 2 * Math.PI))) / (2 * Math.log(base));
  let low = correctionDim(betaFast),
    high = correctionDim(betaSlow);
  if (truncate) {
    low = Math.floor(low);
    high = Math.ceil(high);
  }
  low = Math.max(low, 0);
  high = Math.min(high, dim - 1);
  if (low === high) high += 0.001; // transformers' "prevent singularity"

  const pf = posFreqs(base, dim);
  const invFreq = new Float32Array(half);
  const span = f(high - low),
    fl = f(low),
    ff = f(factor);
  for (let i = 0; i < half; i++) {
    const extrapolation = f(1 / pf[i]!);
    const interpolation = f(1 / f(ff * pf[i]!));
    const ramp = Math.min(1, Math.max(0, f(f(i - fl) / span)));
    const extFactor = f(1 - ramp);
    invFreq[i] = f(f(interpolation * f(1 - extFactor)) + f(extrapolation * extFactor));
  }
  if (mscaleAllDim) {
    const m = yarnGetMscale(rawFactor, mscaleAllDim);
    softmaxScale = softmaxScale * m * m;
  }
  return { invFreq, attentionFactor, softmaxScale };
}
