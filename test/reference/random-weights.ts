// Random float64 LongCat-Flash weights in the checkpoint layout of SPEC 2.1 / 2.2, for the
// reference tests (and any test that wants a tiny in-memory model).
import { rng } from '../helpers.js';
import type { RefConfig, RefTensor, RefWeights } from '../../lib/check/reference/longcat-ref.js';

/** The tiny preset: hidden 64, 2 layers, vocab 512, 8 FFN + 4 zero experts, top-3. */
export const tinyConfig: RefConfig = {
  hidden_size: 64,
  num_layers: 2,
  num_attention_heads: 4,
  q_lora_rank: 32,
  kv_lora_rank: 16,
  qk_nope_head_dim: 16,
  qk_rope_head_dim: 8,
  v_head_dim: 16,
  ffn_hidden_size: 128,
  expert_ffn_hidden_size: 32,
  n_routed_experts: 8,
  zero_expert_num: 4,
  moe_topk: 3,
  routed_scaling_factor: 6.0,
  mla_scale_q_lora: true,
  mla_scale_kv_lora: true,
  rms_norm_eps: 1e-5,
  rope_theta: 10000,
  vocab_size: 512,
  max_position_embeddings: 4096,
};

/** Every tensor name and shape of a checkpoint for `cfg` (main model + MTP). */
export function checkpointShapes(cfg: RefConfig, withMtp = true): Map<string, number[]> {
  const H = cfg.hidden_size,
    nh = cfg.num_attention_heads,
    Q = cfg.q_lora_rank,
    R = cfg.kv_lora_rank;
  const dn = cfg.qk_nope_head_dim,
    dr = cfg.qk_rope_head_dim,
    dv = cfg.v_head_dim;
  const F = cfg.ffn_hidden_size,
    I = cfg.expert_ffn_hidden_size,
    E = cfg.n_routed_experts + cfg.zero_expert_num;
  const m = new Map<string, number[]>();
  const mla = (p: string) => {
    m.set(`${p}.q_a_proj.weight`, [Q, H]);
    m.set(`${p}.q_a_layernorm.weight`, [Q]);
    m.set(`${p}.q_b_proj.weight`, [nh * (dn + dr), Q]);
    m.set(`${p}.kv_a_proj_with_mqa.weight`, [R + dr, H]);
    m.set(`${p}.kv_a_layernorm.weight`, [R]);
    m.set(`${p}.kv_b_proj.weight`, [nh * (dn + dv), R]);
    m.set(`${p}.o_proj.weight`, [H, nh * dv]);
  };
  const ffn = (p: string, inter: number) => {
    m.set(`${p}.gate_proj.weight`, [inter, H]);
    m.set(`${p}.up_proj.weight`, [inter, H]);
    m.set(`${p}.down_proj.weight`, [H, inter]);
  };
  m.set('model.embed_tokens.weight', [cfg.vocab_size, H]);
  m.set('model.norm.weight', [H]);
  m.set('lm_head.weight', [cfg.vocab_size, H]);
  for (let L = 0; L < cfg.num_layers; L++) {
    const p = `model.layers.${L}`;
    for (const i of [0, 1]) {
      m.set(`${p}.input_layernorm.${i}.weight`, [H]);
      m.set(`${p}.post_attention_layernorm.${i}.weight`, [H]);
      mla(`${p}.self_attn.${i}`);
      ffn(`${p}.mlps.${i}`, F);
    }
    m.set(`${p}.mlp.router.classifier.weight`, [E, H]);
    m.set(`${p}.mlp.router.e_score_correction_bias`, [E]);
    for (let e = 0; e < cfg.n_routed_experts; e++) ffn(`${p}.mlp.experts.${e}`, I);
  }
  if (withMtp) {
    const p = 'model.mtp.layers.0';
    m.set('model.mtp.embed_tokens.weight', [cfg.vocab_size, H]);
    m.set(`${p}.enorm.m.weight`, [H]);
    m.set(`${p}.hnorm.m.weight`, [H]);
    m.set(`${p}.eh_proj.weight`, [H, 2 * H]);
    m.set(`${p}.input_layernorm.weight`, [H]);
    mla(`${p}.self_attn`);
    m.set(`${p}.post_attention_layernorm.weight`, [H]);
    ffn(`${p}.transformer_layer.mlp`, F);
    m.set('model.mtp.norm.weight', [H]);
  }
  return m;
}

/**
 * Random weights: norms 1 + 0.1 N(0,1), router bias 0.02 N(0,1), embeddings N(0,1), other
 * matrices N(0,1)/sqrt(in). Returns the store (mutable, for tests that edit weights) and a
 * RefWeights lookup that throws on a missing name.
 */
export function randomWeights(cfg: RefConfig, seed: number, withMtp = true): { store: Map<string, RefTensor>; W: RefWeights } {
  const r = rng(seed);
  const store = new Map<string, RefTensor>();
  for (const [name, shape] of checkpointShapes(cfg, withMtp)) {
    const n = shape.reduce((a, b) => a * b, 1);
    let gen: () => number;
    if (name.endsWith('e_score_correction_bias')) gen = () => 0.02 * r.normal();
    else if (shape.length === 1)
      gen = () => 1 + 0.1 * r.normal(); // RMSNorm weights
    else if (name.endsWith('embed_tokens.weight')) gen = () => r.normal();
    else {
      const s = 1 / Math.sqrt(shape[1]!);
      gen = () => s * r.normal();
    }
    store.set(name, { shape, data: Float64Array.from({ length: n }, gen) });
  }
  const W: RefWeights = name => {
    const t = store.get(name);
    if (!t) throw new Error(`missing tensor ${name}`);
    return t;
  };
  return { store, W };
}
