// config.json of the LongCat-Flash family (SPEC 1): parsing with validation, derived constants,
// the tensors a checkpoint must hold (SPEC 2.1, 2.2, 7.1) and parameter counts.
import { ConfigError, showValue } from './errors.js';
import { yarnGetMscale } from './rope.js';
import type { SafetensorsDType } from './safetensors.js';
import {
  NGRAM_CONFIG_KEYS,
  type NgramConfig,
  ngramConfigToJson,
  ngramParams,
  ngramTensorShapes,
  parseNgramConfig,
} from './config-ngram.js';

/**
 * YaRN RoPE scaling (Thinking-2601, Lite; SPEC 3.6) as parseConfig returns it, transformers' defaults
 * filled in. ropeTables (rope.ts) reads it, or a raw config.json object of the same fields.
 */
export interface RopeScaling {
  type: 'yarn';
  factor: number;
  original_max_position_embeddings: number;
  beta_fast: number;
  beta_slow: number;
  mscale: number;
  mscale_all_dim: number;
  /** transformers' overrides of the cos/sin factor and of rounding the correction range outward;
   *  no LongCat config sets them, and parseConfig does not read them. */
  attention_factor?: number;
  truncate?: boolean;
}

/** Block-wise FP8 (SPEC 7.1). */
export interface Fp8QuantizationConfig {
  quant_method: 'fp8';
  fmt: 'e4m3';
  weight_block_size: [number, number];
  activation_scheme: 'dynamic' | 'static';
  /** Module names (without `.weight`) kept unquantized. */
  ignored_layers: string[];
  /** Whole module families kept unquantized: 'self_attn', 'mlps', 'mtp'. */
  disable_quant_module: string[];
}

/**
 * This engine's weight-only int8 format (`longcat quantize --to int8`): each quantized linear's
 * `<module>.weight` is I8 [out, in] (symmetric, round half to even, clamped to [-127, 127]) and
 * `<module>.weight_scale` F32 [out] its per-row dequantizing scale, max|row| / 127:
 * W[r, c] = float32(Q[r, c]) * weight_scale[r]. The same linears as FP8 are quantized except
 * kv_b_proj (the absorbed attention multiplies it as floats; SPEC 5.2), which stays high precision.
 */
export interface Int8RowsQuantizationConfig {
  quant_method: 'longcat-int8-rows';
  bits: 8;
  /** Module names (without `.weight`) kept unquantized. */
  ignored_layers: string[];
  /** Whole module families kept unquantized: 'self_attn', 'mlps', 'mtp'. */
  disable_quant_module: string[];
}

/**
 * GPTQ / AutoRound packed 4-bit weights (what `longcat quantize --to int4` writes, and published
 * GPTQ / AutoRound checkpoints): each quantized linear is `<module>.qweight` I32 [in / 8, out]
 * (8 codes per word along in, low nibble first), `.qzeros` I32 [groups, out / 8], `.scales` F16
 * [groups, out] and optionally `.g_idx` I32 [in]; W[o, i] = scales[g, o] * (q[i, o] - zero[g, o]) with
 * g = g_idx[i] (default i / group_size) and zero = the qzeros nibble + 1 (GPTQ v1, AutoGPTQ's and
 * AutoRound's auto_gptq export) or the nibble itself (checkpoint_format 'gptq_v2', AutoRound's
 * gptqmodel packing). Which linears are quantized is what the files hold (a `.qweight` in place of
 * `.weight`). Loaded onto the int4 format of native/cpu/linear.h (lib/int4.ts).
 */
export interface GptqQuantizationConfig {
  quant_method: 'gptq' | 'auto-round';
  bits: 4;
  /** Columns per group: a multiple of 32 up to 4096, or -1 (one group per row). */
  group_size: number;
  sym: boolean;
  desc_act: boolean;
  /** 'gptq' (zeros stored minus one, the default) or 'gptq_v2'. */
  checkpoint_format?: string;
  /** AutoRound: 'auto_round:auto_gptq' and the like; one naming gptqmodel stores zeros as they are. */
  packing_format?: string;
  /** Module names (without `.weight`) kept unquantized. */
  ignored_layers: string[];
  disable_quant_module: string[];
}

export type QuantizationConfig = Fp8QuantizationConfig | Int8RowsQuantizationConfig | GptqQuantizationConfig;
export const INT8_ROWS_METHOD = 'longcat-int8-rows';
export const isGptqConfig = (q: QuantizationConfig | null): q is GptqQuantizationConfig =>
  q?.quant_method === 'gptq' || q?.quant_method === 'auto-round';

export interface LongcatConfig {
  architectures: string[];
  model_type: 'longcat_flash' | 'longcat_flash_ngram';
  vocab_size: number;
  hidden_size: number;
  /** Logical layers; each has 2 attention + 2 dense MLP + 1 MoE. */
  num_layers: number;
  num_attention_heads: number;
  /** Always equal to num_attention_heads (MLA). */
  num_key_value_heads: number;
  q_lora_rank: number;
  kv_lora_rank: number;
  qk_nope_head_dim: number;
  qk_rope_head_dim: number;
  v_head_dim: number;
  ffn_hidden_size: number;
  expert_ffn_hidden_size: number;
  n_routed_experts: number;
  zero_expert_num: number;
  zero_expert_type: 'identity';
  moe_topk: number;
  routed_scaling_factor: number;
  mla_scale_q_lora: boolean;
  mla_scale_kv_lora: boolean;
  attention_method: 'MLA';
  attention_bias: boolean;
  attention_dropout: number;
  rms_norm_eps: number;
  rope_theta: number;
  max_position_embeddings: number;
  bos_token_id: number;
  eos_token_id: number | number[];
  pad_token_id: number | null;
  use_cache: boolean;
  hidden_act: 'silu';
  tie_word_embeddings: boolean;
  router_bias: boolean;
  norm_topk_prob: boolean;
  rope_scaling: RopeScaling | null;
  quantization_config: QuantizationConfig | null;
  /** MTP (NextN) layers. The Chat config omits it (default 1); the tensors are optional either way. */
  num_nextn_predict_layers: number;
  /** The N-gram embedding of LongCat-Flash-Lite (model_type longcat_flash_ngram), else null. */
  ngram: NgramConfig | null;
  /** Fields of the file this type does not model, kept as read. */
  extra: Record<string, unknown>;
}

/** Constants derived from a config (SPEC 1.2, 3.5, 3.6). */
export interface DerivedConstants {
  qkHeadDim: number;
  /** Rows of q_b_proj: heads * (nope + rope). */
  qProjDim: number;
  /** Rows of kv_a_proj_with_mqa: kv_lora + rope. */
  kvAProjDim: number;
  /** Rows of kv_b_proj: heads * (nope + v). */
  kvBProjDim: number;
  /** Columns of o_proj: heads * v. */
  oProjDim: number;
  /** 1/sqrt(nope + rope), times mscale^2 under YaRN with mscale_all_dim. */
  softmaxScale: number;
  /** sqrt(hidden / q_lora) when mla_scale_q_lora, else 1. */
  mlaScaleQ: number;
  /** sqrt(hidden / kv_lora) when mla_scale_kv_lora, else 1. */
  mlaScaleKv: number;
  /** n_routed_experts + zero_expert_num: the router's output width. */
  routerWidth: number;
  /** Attention sub-layers of the main model (2 per logical layer); the MTP one has this index. */
  attentionLayers: number;
  /** The RoPE dimension (transformers' `head_dim`). */
  ropeDim: number;
  /** YaRN attention factor m (1 without YaRN). */
  yarnMscale: number;
  /** Every eos id (config eos_token_id as a list). */
  eosIds: number[];
}

/** Every config.json field parseConfig reads (the others it keeps apart, in `extra`). */
export const CONFIG_KEYS: ReadonlySet<string> = new Set([
  'architectures',
  'model_type',
  'vocab_size',
  'hidden_size',
  'num_layers',
  'num_attention_heads',
  'num_key_value_heads',
  'q_lora_rank',
  'kv_lora_rank',
  'qk_nope_head_dim',
  'qk_rope_head_dim',
  'v_head_dim',
  'ffn_hidden_size',
  'expert_ffn_hidden_size',
  'n_routed_experts',
  'zero_expert_num',
  'zero_expert_type',
  'moe_topk',
  'routed_scaling_factor',
  'mla_scale_q_lora',
  'mla_scale_kv_lora',
  'attention_method',
  'attention_bias',
  'attention_dropout',
  'rms_norm_eps',
  'rope_theta',
  'max_position_embeddings',
  'bos_token_id',
  'eos_token_id',
  'pad_token_id',
  'use_cache',
  'hidden_act',
  'tie_word_embeddings',
  'router_bias',
  'norm_topk_prob',
  'rope_scaling',
  'quantization_config',
  'num_nextn_predict_layers',
  ...NGRAM_CONFIG_KEYS,
]);

/**
 * Upper bounds of the structural sizes: far above every LongCat model (Flash-Chat: vocab 131072,
 * hidden 6144, 28 layers, 64 heads, 512 + 256 experts, FFN 12288; Lite: 327680 positions), low
 * enough that a corrupt or hostile config.json fails here, naming the field, instead of building
 * millions of tensor specs or allocating gigabytes first.
 */
export const CONFIG_LIMITS = {
  vocab_size: 2 ** 24,
  hidden_size: 2 ** 16,
  num_layers: 1024,
  num_attention_heads: 1024,
  q_lora_rank: 2 ** 16,
  kv_lora_rank: 2 ** 16,
  qk_nope_head_dim: 4096,
  qk_rope_head_dim: 4096,
  v_head_dim: 4096,
  ffn_hidden_size: 2 ** 20,
  expert_ffn_hidden_size: 2 ** 20,
  n_routed_experts: 2 ** 16,
  zero_expert_num: 2 ** 16,
  max_position_embeddings: 2 ** 24,
  /** rope_scaling.original_max_position_embeddings */
  original_max_position_embeddings: 2 ** 24,
  /** quantization_config.weight_block_size, each side */
  weight_block_size: 2 ** 16,
  /** num_layers x n_routed_experts: every routed expert is a tensor spec (Flash-Chat: 14,336). */
  routed_experts_total: 2 ** 18,
} as const;

function configError(file: string, field: string, expected: string, got: unknown): never {
  const shown = got === undefined ? 'nothing (field absent)' : showValue(got);
  const e = new ConfigError('E_CONFIG', `${file}: field '${field}' must be ${expected}, got ${shown}`);
  Object.assign(e, { file, field });
  throw e;
}

function fieldError(file: string, field: string, message: string): never {
  const e = new ConfigError('E_CONFIG', `${file}: field '${field}' ${message}`);
  Object.assign(e, { file, field });
  throw e;
}

class Reader {
  constructor(
    readonly obj: Record<string, unknown>,
    readonly file: string,
    readonly prefix = '',
  ) {}
  private name(k: string) {
    return this.prefix + k;
  }
  has(k: string) {
    return this.obj[k] !== undefined && this.obj[k] !== null;
  }
  posInt(k: string, def?: number, max = Number.MAX_SAFE_INTEGER): number {
    const v = this.obj[k] ?? def;
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v <= 0)
      configError(this.file, this.name(k), 'a positive integer', this.obj[k]);
    return this.atMost(k, v, max);
  }
  nonNegInt(k: string, def?: number, max = Number.MAX_SAFE_INTEGER): number {
    const v = this.obj[k] ?? def;
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0)
      configError(this.file, this.name(k), 'a non-negative integer', this.obj[k]);
    return this.atMost(k, v, max);
  }
  private atMost(k: string, v: number, max: number): number {
    if (v > max) configError(this.file, this.name(k), `at most ${max} (a plausible size; see CONFIG_LIMITS)`, v);
    return v;
  }
  posNumber(k: string, def?: number): number {
    const v = this.obj[k] ?? def;
    if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0)
      configError(this.file, this.name(k), 'a positive finite number', this.obj[k]);
    return v;
  }
  number(k: string, def?: number, min = -Infinity, max = Infinity): number {
    const v = this.obj[k] ?? def;
    if (typeof v !== 'number' || !Number.isFinite(v) || v < min || v > max)
      configError(
        this.file,
        this.name(k),
        `a number${min > -Infinity ? ` >= ${min}` : ''}${max < Infinity ? ` and <= ${max}` : ''}`,
        this.obj[k],
      );
    return v;
  }
  bool(k: string, def?: boolean): boolean {
    const v = this.obj[k] ?? def;
    if (typeof v !== 'boolean') configError(this.file, this.name(k), 'a boolean', this.obj[k]);
    return v;
  }
  oneOf<T extends string>(k: string, allowed: readonly T[], def?: T): T {
    const v = this.obj[k] ?? def;
    if (typeof v !== 'string' || !allowed.includes(v as T))
      configError(this.file, this.name(k), `one of ${allowed.map(a => JSON.stringify(a)).join(', ')}`, this.obj[k]);
    return v as T;
  }
  stringList(k: string, def: string[] = []): string[] {
    const v = this.obj[k] ?? def;
    if (!Array.isArray(v) || !v.every(s => typeof s === 'string'))
      configError(this.file, this.name(k), 'an array of strings', this.obj[k]);
    return [...v];
  }
}

/**
 * Validates a parsed config.json. `file` names the file in errors. Defaults for absent fields
 * follow SPEC 1.1: hidden_act silu, tie_word_embeddings false, router_bias false, norm_topk_prob
 * false, num_key_value_heads = num_attention_heads, rope_scaling none, pad_token_id none; the
 * remaining scalar fields default to the LongCat-Flash-Chat values (the transformers defaults).
 * The structural sizes (vocab, hidden, layers, heads, ranks, head dims, FFN sizes, expert counts,
 * top-k, routed_scaling_factor) are required.
 * @throws ConfigError (E_CONFIG) naming the file and the field, expected vs got.
 */
export function parseConfig(json: unknown, file = 'config.json'): LongcatConfig {
  if (typeof json !== 'object' || json === null || Array.isArray(json))
    throw Object.assign(
      new ConfigError('E_CONFIG', `${file}: expected a JSON object, got ${Array.isArray(json) ? 'an array' : showValue(json)}`),
      { file, field: '' },
    );
  const o = json as Record<string, unknown>;
  const r = new Reader(o, file);

  const architectures = r.stringList('architectures', []);
  let model_type: LongcatConfig['model_type'];
  if (o.model_type === undefined) {
    if (architectures.includes('LongcatFlashNgramForCausalLM')) model_type = 'longcat_flash_ngram';
    else if (architectures.includes('LongcatFlashForCausalLM')) model_type = 'longcat_flash';
    else
      configError(
        file,
        'model_type',
        '"longcat_flash" or "longcat_flash_ngram" (or absent with architectures ["LongcatFlashForCausalLM"] / ["LongcatFlashNgramForCausalLM"])',
        undefined,
      );
  } else {
    model_type = r.oneOf('model_type', ['longcat_flash', 'longcat_flash_ngram'] as const);
  }

  const hidden_size = r.posInt('hidden_size', undefined, CONFIG_LIMITS.hidden_size);
  const num_attention_heads = r.posInt('num_attention_heads', undefined, CONFIG_LIMITS.num_attention_heads);
  const num_key_value_heads = r.posInt('num_key_value_heads', num_attention_heads, CONFIG_LIMITS.num_attention_heads);
  if (num_key_value_heads !== num_attention_heads)
    configError(
      file,
      'num_key_value_heads',
      `equal to num_attention_heads (${num_attention_heads}) for MLA`,
      num_key_value_heads,
    );
  const vocab_size = r.posInt('vocab_size', undefined, CONFIG_LIMITS.vocab_size);
  const qk_rope_head_dim = r.posInt('qk_rope_head_dim', undefined, CONFIG_LIMITS.qk_rope_head_dim);
  if (qk_rope_head_dim % 2 !== 0)
    configError(file, 'qk_rope_head_dim', 'an even positive integer (RoPE rotates pairs)', qk_rope_head_dim);
  const n_routed_experts = r.posInt('n_routed_experts', undefined, CONFIG_LIMITS.n_routed_experts);
  const zero_expert_num = r.nonNegInt('zero_expert_num', undefined, CONFIG_LIMITS.zero_expert_num);
  const moe_topk = r.posInt('moe_topk');
  if (moe_topk > n_routed_experts + zero_expert_num)
    configError(file, 'moe_topk', `<= n_routed_experts + zero_expert_num (${n_routed_experts + zero_expert_num})`, moe_topk);

  const eos_token_id = o.eos_token_id ?? 2;
  const eosList = Array.isArray(eos_token_id) ? eos_token_id : [eos_token_id];
  if (eosList.length === 0 || !eosList.every(v => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0 && v < vocab_size))
    configError(file, 'eos_token_id', `a token id (or a non-empty list of ids) in [0, ${vocab_size})`, o.eos_token_id);
  const bos_token_id = r.nonNegInt('bos_token_id', 1);
  if (bos_token_id >= vocab_size) configError(file, 'bos_token_id', `a token id in [0, ${vocab_size})`, bos_token_id);
  let pad_token_id: number | null = null;
  if (r.has('pad_token_id')) {
    pad_token_id = r.nonNegInt('pad_token_id');
    if (pad_token_id >= vocab_size) configError(file, 'pad_token_id', `a token id in [0, ${vocab_size})`, pad_token_id);
  }

  const max_position_embeddings = r.posInt('max_position_embeddings', 131072, CONFIG_LIMITS.max_position_embeddings);

  let rope_scaling: RopeScaling | null = null;
  const rs = o.rope_scaling;
  if (rs !== undefined && rs !== null) {
    if (typeof rs !== 'object' || Array.isArray(rs)) configError(file, 'rope_scaling', 'an object or null', rs);
    const rr = new Reader(rs as Record<string, unknown>, file, 'rope_scaling.');
    const kind = (rs as Record<string, unknown>).rope_type ?? (rs as Record<string, unknown>).type;
    if (kind === 'default' || kind === undefined) {
      rope_scaling = null;
    } else {
      if (kind !== 'yarn')
        configError(file, 'rope_scaling.rope_type', '"yarn" or "default" (no other RoPE scaling is implemented)', kind);
      const factor = rr.number('factor', undefined, 1);
      rope_scaling = {
        type: 'yarn',
        factor,
        original_max_position_embeddings: rr.posInt(
          'original_max_position_embeddings',
          Math.max(1, Math.round(max_position_embeddings / factor)),
          CONFIG_LIMITS.original_max_position_embeddings,
        ),
        beta_fast: rr.posNumber('beta_fast', 32),
        beta_slow: rr.posNumber('beta_slow', 1),
        mscale: rr.number('mscale', 1, 0),
        mscale_all_dim: rr.number('mscale_all_dim', 0, 0),
      };
    }
  }

  let quantization_config: QuantizationConfig | null = null;
  const qc = o.quantization_config;
  if (qc !== undefined && qc !== null) {
    if (typeof qc !== 'object' || Array.isArray(qc)) configError(file, 'quantization_config', 'an object or null', qc);
    const q = qc as Record<string, unknown>;
    const qr = new Reader(q, file, 'quantization_config.');
    const quant_method = qr.oneOf('quant_method', ['fp8', INT8_ROWS_METHOD, 'gptq', 'auto-round'] as const, 'fp8');
    if (quant_method === 'gptq' || quant_method === 'auto-round') {
      if (q.bits !== 4) configError(file, 'quantization_config.bits', '4 (the only GPTQ / AutoRound width with kernels)', q.bits);
      const g = q.group_size ?? 128;
      if (!(g === -1 || (typeof g === 'number' && Number.isSafeInteger(g) && g >= 32 && g <= 4096 && g % 32 === 0)))
        configError(file, 'quantization_config.group_size', 'a multiple of 32 in 32..4096, or -1', q.group_size);
      const str = (k: string) => {
        const v = q[k];
        if (v === undefined || v === null) return undefined;
        if (typeof v !== 'string') configError(file, `quantization_config.${k}`, 'a string', v);
        return v;
      };
      const checkpoint_format = str('checkpoint_format'),
        packing_format = str('packing_format');
      if (checkpoint_format !== undefined && !['gptq', 'gptq_v2'].includes(checkpoint_format))
        configError(file, 'quantization_config.checkpoint_format', "'gptq' or 'gptq_v2'", checkpoint_format);
      if (packing_format !== undefined && !/gptq/.test(packing_format))
        configError(
          file,
          'quantization_config.packing_format',
          "a GPTQ packing ('auto_round:auto_gptq', 'auto_round:gptqmodel')",
          packing_format,
        );
      quantization_config = {
        quant_method,
        bits: 4,
        group_size: g as number,
        sym: qr.bool('sym', true),
        desc_act: qr.bool('desc_act', false),
        ...(checkpoint_format !== undefined ? { checkpoint_format } : {}),
        ...(packing_format !== undefined ? { packing_format } : {}),
        ignored_layers: qr.stringList('ignored_layers', []),
        disable_quant_module: qr.stringList('disable_quant_module', []),
      };
    } else if (quant_method === INT8_ROWS_METHOD) {
      if ((q.bits ?? 8) !== 8) configError(file, 'quantization_config.bits', '8', q.bits);
      quantization_config = {
        quant_method,
        bits: 8,
        ignored_layers: qr.stringList('ignored_layers', []),
        disable_quant_module: qr.stringList('disable_quant_module', []),
      };
    } else {
      const fmt = qr.oneOf('fmt', ['e4m3'] as const, 'e4m3');
      const wbs = q.weight_block_size ?? [128, 128];
      if (
        !Array.isArray(wbs) ||
        wbs.length !== 2 ||
        !wbs.every(v => typeof v === 'number' && Number.isSafeInteger(v) && v > 0 && v <= CONFIG_LIMITS.weight_block_size)
      )
        configError(
          file,
          'quantization_config.weight_block_size',
          `two positive integers [rows, cols], each <= ${CONFIG_LIMITS.weight_block_size}`,
          q.weight_block_size,
        );
      quantization_config = {
        quant_method,
        fmt,
        weight_block_size: [wbs[0], wbs[1]] as [number, number],
        activation_scheme: qr.oneOf('activation_scheme', ['dynamic', 'static'] as const, 'dynamic'),
        ignored_layers: qr.stringList('ignored_layers', []),
        disable_quant_module: qr.stringList('disable_quant_module', []),
      };
    }
  }

  const extra: Record<string, unknown> = {};
  // defineProperty: a key named "__proto__" stays a plain field (assignment would set the prototype).
  for (const [k, v] of Object.entries(o))
    if (!CONFIG_KEYS.has(k)) Object.defineProperty(extra, k, { value: v, enumerable: true, writable: true, configurable: true });

  const cfg: LongcatConfig = {
    architectures: architectures.length
      ? architectures
      : [model_type === 'longcat_flash_ngram' ? 'LongcatFlashNgramForCausalLM' : 'LongcatFlashForCausalLM'],
    model_type,
    vocab_size,
    hidden_size,
    num_layers: r.posInt('num_layers', undefined, CONFIG_LIMITS.num_layers),
    num_attention_heads,
    num_key_value_heads,
    q_lora_rank: r.posInt('q_lora_rank', undefined, CONFIG_LIMITS.q_lora_rank),
    kv_lora_rank: r.posInt('kv_lora_rank', undefined, CONFIG_LIMITS.kv_lora_rank),
    qk_nope_head_dim: r.posInt('qk_nope_head_dim', undefined, CONFIG_LIMITS.qk_nope_head_dim),
    qk_rope_head_dim,
    v_head_dim: r.posInt('v_head_dim', undefined, CONFIG_LIMITS.v_head_dim),
    ffn_hidden_size: r.posInt('ffn_hidden_size', undefined, CONFIG_LIMITS.ffn_hidden_size),
    expert_ffn_hidden_size: r.posInt('expert_ffn_hidden_size', undefined, CONFIG_LIMITS.expert_ffn_hidden_size),
    n_routed_experts,
    zero_expert_num,
    zero_expert_type: r.oneOf('zero_expert_type', ['identity'] as const, 'identity'),
    moe_topk,
    routed_scaling_factor: r.posNumber('routed_scaling_factor'),
    mla_scale_q_lora: r.bool('mla_scale_q_lora', true),
    mla_scale_kv_lora: r.bool('mla_scale_kv_lora', true),
    attention_method: r.oneOf('attention_method', ['MLA'] as const, 'MLA'),
    attention_bias: r.bool('attention_bias', false),
    attention_dropout: r.number('attention_dropout', 0, 0, 1),
    rms_norm_eps: r.posNumber('rms_norm_eps', 1e-5),
    rope_theta: r.posNumber('rope_theta', 1e7),
    max_position_embeddings,
    bos_token_id,
    eos_token_id: eos_token_id as number | number[],
    pad_token_id,
    use_cache: r.bool('use_cache', true),
    hidden_act: r.oneOf('hidden_act', ['silu'] as const, 'silu'),
    tie_word_embeddings: r.bool('tie_word_embeddings', false),
    router_bias: r.bool('router_bias', false),
    norm_topk_prob: r.bool('norm_topk_prob', false),
    rope_scaling,
    quantization_config,
    num_nextn_predict_layers: r.nonNegInt('num_nextn_predict_layers', 1),
    ngram: parseNgramConfig(o, file, model_type, hidden_size, vocab_size, eosList as number[]),
    extra,
  };
  if (cfg.attention_bias)
    fieldError(file, 'attention_bias', 'is true, but LongCat-Flash attention has no biases (expected false)');
  if (cfg.router_bias)
    fieldError(file, 'router_bias', 'is true, but the LongCat-Flash router classifier has no bias (expected false)');
  if (cfg.num_layers * cfg.n_routed_experts > CONFIG_LIMITS.routed_experts_total)
    fieldError(
      file,
      'n_routed_experts',
      `times num_layers is ${cfg.num_layers} x ${cfg.n_routed_experts} = ${cfg.num_layers * cfg.n_routed_experts} routed experts, more than the ${CONFIG_LIMITS.routed_experts_total} this engine accepts`,
    );
  if (cfg.num_nextn_predict_layers > 1)
    configError(file, 'num_nextn_predict_layers', '0 or 1 (one MTP layer)', cfg.num_nextn_predict_layers);
  return cfg;
}

/** Serialises a config back to config.json form (the `extra` fields are merged back in). */
export function configToJson(c: LongcatConfig): Record<string, unknown> {
  const { extra, ngram, ...rest } = c;
  const out: Record<string, unknown> = { ...extra, ...rest, ...ngramConfigToJson(ngram) };
  if (out.pad_token_id === null) delete out.pad_token_id;
  if (out.rope_scaling === null) delete out.rope_scaling;
  if (out.quantization_config === null) delete out.quantization_config;
  return out;
}

export function deriveConstants(c: LongcatConfig): DerivedConstants {
  const qkHeadDim = c.qk_nope_head_dim + c.qk_rope_head_dim;
  const rs = c.rope_scaling;
  const yarnMscale = rs ? yarnGetMscale(rs.factor, rs.mscale_all_dim) : 1;
  return {
    qkHeadDim,
    qProjDim: c.num_attention_heads * qkHeadDim,
    kvAProjDim: c.kv_lora_rank + c.qk_rope_head_dim,
    kvBProjDim: c.num_attention_heads * (c.qk_nope_head_dim + c.v_head_dim),
    oProjDim: c.num_attention_heads * c.v_head_dim,
    softmaxScale: (1 / Math.sqrt(qkHeadDim)) * yarnMscale * yarnMscale,
    mlaScaleQ: c.mla_scale_q_lora ? Math.sqrt(c.hidden_size / c.q_lora_rank) : 1,
    mlaScaleKv: c.mla_scale_kv_lora ? Math.sqrt(c.hidden_size / c.kv_lora_rank) : 1,
    routerWidth: c.n_routed_experts + c.zero_expert_num,
    attentionLayers: 2 * c.num_layers,
    ropeDim: c.qk_rope_head_dim,
    yarnMscale,
    eosIds: Array.isArray(c.eos_token_id) ? [...c.eos_token_id] : [c.eos_token_id],
  };
}

// ---- tensors --------------------------------------------------------------------------------

/** Dtypes a float (unquantized) tensor may have in a checkpoint. */
export const FLOAT_DTYPES: readonly SafetensorsDType[] = ['BF16', 'F16', 'F32'];

export type TensorRole = 'embedding' | 'linear' | 'norm' | 'router' | 'bias' | 'scale';

export interface TensorSpec {
  shape: number[];
  /** Accepted stored dtypes. */
  dtypes: readonly SafetensorsDType[];
  role: TensorRole;
  /** For a linear: stored quantized (F8_E4M3 with a `.weight_scale_inv` companion, or I8 with a
   *  `.weight_scale` companion; see QuantizationConfig). */
  quantized: boolean;
  /** For a quantized linear's scale: the weight it belongs to. */
  scaleOf?: string;
}

export interface RequiredTensorsOptions {
  /** true: FP8 linears + scales (the config's FP8 settings, else SPEC 7.1's); false: no quantized
   *  linear; default: as config.quantization_config says (FP8 or int8 rows). */
  fp8?: boolean;
  /** Include the MTP module (SPEC 2.2). Default false. */
  mtp?: boolean;
}

/** Name prefix of one attention sub-layer. */
export function attentionPrefix(layer: number, i: 0 | 1): string {
  return `model.layers.${layer}.self_attn.${i}`;
}
/** Name prefix of one routed expert (original layout). */
export function expertPrefix(layer: number, e: number): string {
  return `model.layers.${layer}.mlp.experts.${e}`;
}
export const MTP_PREFIX = 'model.mtp.layers.0';

/**
 * Whether a linear (its module name, without `.weight`) is quantized under `q` (SPEC 7.1): every
 * attention, dense MLP, expert and MTP linear, except modules listed in ignored_layers and
 * families in disable_quant_module (and, in the int8 format, kv_b_proj).
 */
export function isQuantizedModule(module: string, q: QuantizationConfig | null): boolean {
  if (!q) return false;
  if (q.quant_method === INT8_ROWS_METHOD && module.endsWith('.kv_b_proj')) return false;
  // int4: kv_b_proj (as int8) and the MTP eh_proj (its column halves are used apart) stay high precision
  if (isGptqConfig(q) && (module.endsWith('.kv_b_proj') || module.endsWith('.eh_proj'))) return false;
  if (q.ignored_layers.includes(module) || q.ignored_layers.includes(`${module}.weight`)) return false;
  const parts = module.split('.');
  for (const fam of q.disable_quant_module) {
    if (fam === 'mtp' && module.startsWith('model.mtp.')) return false;
    if (parts.includes(fam)) return false;
  }
  return true;
}

/**
 * Every tensor a checkpoint must hold, name -> spec, in the original Meituan layout (SPEC 2.1),
 * with `.weight_scale_inv` companions ([ceil(out/128), ceil(in/128)], F32) for the FP8 linears of
 * SPEC 7.1 (or `.weight_scale` [out] F32 for the int8 format's I8 linears), and the MTP module of
 * SPEC 2.2 when `mtp`.
 */
export function requiredTensors(c: LongcatConfig, opts: RequiredTensorsOptions = {}): Map<string, TensorSpec> {
  // GPTQ checkpoints: float specs here; openCheckpoint swaps in the packed tensors the files hold.
  const given = isGptqConfig(c.quantization_config) ? null : c.quantization_config;
  const fp8 = opts.fp8 ?? given !== null;
  const q: QuantizationConfig | null = !fp8
    ? null
    : opts.fp8 === undefined && given
      ? given
      : given?.quant_method === 'fp8'
        ? given
        : {
            quant_method: 'fp8',
            fmt: 'e4m3',
            weight_block_size: [128, 128],
            activation_scheme: 'dynamic',
            ignored_layers: [],
            disable_quant_module: [],
          };
  const [br, bc] = q?.quant_method === 'fp8' ? q.weight_block_size : [128, 128];
  const int8 = q?.quant_method === INT8_ROWS_METHOD;
  const d = deriveConstants(c);
  const H = c.hidden_size;
  const m = new Map<string, TensorSpec>();
  const float = (name: string, shape: number[], role: TensorRole) =>
    m.set(name, { shape, dtypes: FLOAT_DTYPES, role, quantized: false });
  const linear = (module: string, out: number, inp: number) => {
    const quantized = isQuantizedModule(module, q);
    const qdtype: SafetensorsDType = int8 ? 'I8' : 'F8_E4M3';
    m.set(`${module}.weight`, { shape: [out, inp], dtypes: quantized ? [qdtype] : FLOAT_DTYPES, role: 'linear', quantized });
    if (quantized && int8)
      m.set(`${module}.weight_scale`, {
        shape: [out],
        dtypes: ['F32'],
        role: 'scale',
        quantized: false,
        scaleOf: `${module}.weight`,
      });
    else if (quantized)
      m.set(`${module}.weight_scale_inv`, {
        shape: [Math.ceil(out / br), Math.ceil(inp / bc)],
        dtypes: ['F32', 'BF16'],
        role: 'scale',
        quantized: false,
        scaleOf: `${module}.weight`,
      });
  };
  const mla = (p: string) => {
    linear(`${p}.q_a_proj`, c.q_lora_rank, H);
    float(`${p}.q_a_layernorm.weight`, [c.q_lora_rank], 'norm');
    linear(`${p}.q_b_proj`, d.qProjDim, c.q_lora_rank);
    linear(`${p}.kv_a_proj_with_mqa`, d.kvAProjDim, H);
    float(`${p}.kv_a_layernorm.weight`, [c.kv_lora_rank], 'norm');
    linear(`${p}.kv_b_proj`, d.kvBProjDim, c.kv_lora_rank);
    linear(`${p}.o_proj`, H, d.oProjDim);
  };
  const mlp = (p: string, inter: number) => {
    linear(`${p}.gate_proj`, inter, H);
    linear(`${p}.up_proj`, inter, H);
    linear(`${p}.down_proj`, H, inter);
  };

  float('model.embed_tokens.weight', [c.vocab_size, H], 'embedding');
  for (let L = 0; L < c.num_layers; L++) {
    const p = `model.layers.${L}`;
    for (const i of [0, 1] as const) {
      float(`${p}.input_layernorm.${i}.weight`, [H], 'norm');
      float(`${p}.post_attention_layernorm.${i}.weight`, [H], 'norm');
      mla(attentionPrefix(L, i));
      mlp(`${p}.mlps.${i}`, c.ffn_hidden_size);
    }
    m.set(`${p}.mlp.router.classifier.weight`, {
      shape: [d.routerWidth, H],
      dtypes: FLOAT_DTYPES,
      role: 'router',
      quantized: false,
    });
    m.set(`${p}.mlp.router.e_score_correction_bias`, {
      shape: [d.routerWidth],
      dtypes: FLOAT_DTYPES,
      role: 'bias',
      quantized: false,
    });
    for (let e = 0; e < c.n_routed_experts; e++) mlp(expertPrefix(L, e), c.expert_ffn_hidden_size);
  }
  if (c.ngram)
    for (const [name, t] of ngramTensorShapes(c.ngram, H, c.vocab_size))
      m.set(name, { shape: t.shape, dtypes: ['BF16', 'F32'], role: t.role, quantized: false });
  float('model.norm.weight', [H], 'norm');
  if (!c.tie_word_embeddings) float('lm_head.weight', [c.vocab_size, H], 'embedding');

  if (opts.mtp) {
    const p = MTP_PREFIX;
    float('model.mtp.embed_tokens.weight', [c.vocab_size, H], 'embedding');
    float(`${p}.enorm.m.weight`, [H], 'norm');
    float(`${p}.hnorm.m.weight`, [H], 'norm');
    linear(`${p}.eh_proj`, H, 2 * H);
    float(`${p}.input_layernorm.weight`, [H], 'norm');
    mla(`${p}.self_attn`);
    float(`${p}.post_attention_layernorm.weight`, [H], 'norm');
    mlp(`${p}.transformer_layer.mlp`, c.ffn_hidden_size);
    float('model.mtp.norm.weight', [H], 'norm');
  }
  return m;
}

// ---- parameter counts -----------------------------------------------------------------------

export interface ParamCounts {
  /** All main-model parameters (embedding, layers, final norm, lm_head). */
  total: number;
  /** The MTP module incl. its own embedding copy (0 when not counted). */
  mtp: number;
  embedding: number;
  lmHead: number;
  perExpert: number;
  /** Non-expert parameters of one logical layer (2 MLA, 2 dense MLP, router + bias, 4 norms). */
  nonExpertPerLayer: number;
  /** Of total: the N-gram tables (Lite; looked up, not active) and their projections (active). */
  ngramTables: number;
  ngramProjections: number;
  /** Active per token with 0 FFN experts chosen: layers + final norm + lm_head (+ the N-gram
   *  projections), embedding rows excluded. */
  activeMin: number;
  /** Active per token with all moe_topk choices FFN experts. */
  activeMax: number;
  /** Added by one more FFN expert per token across all layers. */
  activePerFfnExpert: number;
  /** activeMin + expectedFfnExperts * activePerFfnExpert, when expectedFfnExperts is given. */
  activeExpected?: number;
}

/** Parameter counts for `longcat inspect` (SPEC 1.2: main model 560,664,980,480 for Flash-Chat). */
export function activeParams(c: LongcatConfig, opts: { expectedFfnExperts?: number; mtp?: boolean } = {}): ParamCounts {
  const d = deriveConstants(c);
  const H = c.hidden_size;
  const mla =
    H * c.q_lora_rank +
    c.q_lora_rank +
    c.q_lora_rank * d.qProjDim +
    H * d.kvAProjDim +
    c.kv_lora_rank +
    c.kv_lora_rank * d.kvBProjDim +
    d.oProjDim * H;
  const dense = 3 * H * c.ffn_hidden_size;
  const router = d.routerWidth * H + d.routerWidth;
  const perExpert = 3 * H * c.expert_ffn_hidden_size;
  const nonExpertPerLayer = 2 * mla + 2 * dense + router + 4 * H;
  const embedding = c.vocab_size * H;
  const lmHead = c.tie_word_embeddings ? 0 : c.vocab_size * H;
  const ng = ngramParams(c.ngram, H, c.vocab_size);
  const total =
    embedding + c.num_layers * (nonExpertPerLayer + c.n_routed_experts * perExpert) + H + lmHead + ng.tables + ng.projections;
  const mtp = opts.mtp === false ? 0 : embedding + 2 * H + 2 * H * H + H + mla + H + dense + H;
  const activeMin = c.num_layers * nonExpertPerLayer + H + c.vocab_size * H + ng.projections;
  const activePerFfnExpert = c.num_layers * perExpert;
  const activeMax = activeMin + Math.min(c.moe_topk, c.n_routed_experts) * activePerFfnExpert;
  const r: ParamCounts = {
    total,
    mtp,
    embedding,
    lmHead,
    ngramTables: ng.tables,
    ngramProjections: ng.projections,
    perExpert,
    nonExpertPerLayer,
    activeMin,
    activeMax,
    activePerFfnExpert,
  };
  if (opts.expectedFfnExperts !== undefined) r.activeExpected = activeMin + opts.expectedFfnExperts * activePerFfnExpert;
  return r;
}
