// The numbers the forward pass needs, derived once from config.json (SPEC 1.1, 1.2, 3.5, 3.6).
import type { LongcatConfig } from '../config.js';
import { ropeTables } from '../rope.js';
import { type NgramDims, ngramDims } from '../config-ngram.js';

export interface ModelDims {
  hidden: number;
  layers: number;
  heads: number;
  qLora: number;
  kvLora: number;
  nope: number;
  rope: number;
  v: number;
  ffn: number;
  expertFfn: number;
  nRouted: number;
  nZero: number;
  topk: number;
  routedScale: number;
  vocab: number;
  eps: number;
  /** eps of q_a_layernorm / kv_a_layernorm: SPEC O3, transformers' 1e-6. */
  latentEps: number;
  scaleQ: number;
  scaleKV: number;
  softmaxScale: number;
  invFreq: Float32Array;
  ropeAttentionFactor: number;
  maxContext: number;
  /** LongCat-Flash-Lite's N-gram embedding (null for the other models). */
  ngram: NgramDims | null;
}

export function modelDims(c: LongcatConfig): ModelDims {
  const rt = ropeTables(c);
  return {
    hidden: c.hidden_size,
    layers: c.num_layers,
    heads: c.num_attention_heads,
    qLora: c.q_lora_rank,
    kvLora: c.kv_lora_rank,
    nope: c.qk_nope_head_dim,
    rope: c.qk_rope_head_dim,
    v: c.v_head_dim,
    ffn: c.ffn_hidden_size,
    expertFfn: c.expert_ffn_hidden_size,
    nRouted: c.n_routed_experts,
    nZero: c.zero_expert_num,
    topk: c.moe_topk,
    routedScale: c.routed_scaling_factor,
    vocab: c.vocab_size,
    eps: c.rms_norm_eps,
    latentEps: 1e-6,
    scaleQ: c.mla_scale_q_lora ? Math.sqrt(c.hidden_size / c.q_lora_rank) : 1,
    scaleKV: c.mla_scale_kv_lora ? Math.sqrt(c.hidden_size / c.kv_lora_rank) : 1,
    softmaxScale: rt.softmaxScale,
    invFreq: rt.invFreq,
    ropeAttentionFactor: rt.attentionFactor,
    maxContext: c.max_position_embeddings,
    ngram: c.ngram ? ngramDims(c.ngram, c.hidden_size, c.vocab_size) : null,
  };
}
