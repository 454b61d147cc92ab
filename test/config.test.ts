// config.json: parseConfig validates every field with typed errors, requiredTensors lists the
// tensors of SPEC 2, activeParams counts parameters per token.
import { describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { activeParams, deriveConstants, parseConfig, requiredTensors, isQuantizedModule, configToJson } from '../lib/config.js';
import { configErr } from './helpers.js';

/** LongCat-Flash-Chat config.json (SPEC 1.1). */
const chatFile = new URL('./fixtures/longcat-flash-chat.config.json', import.meta.url);
const CHAT: Record<string, unknown> = JSON.parse(readFileSync(chatFile, 'utf8'));

describe('parseConfig', () => {
  it('parses the LongCat-Flash-Chat config with the SPEC 1.1 defaults for absent fields', () => {
    const c = parseConfig(CHAT, 'config.json');
    expect(c.hidden_size).toBe(6144);
    expect(c.num_key_value_heads).toBe(64);
    expect(c.hidden_act).toBe('silu');
    expect(c.tie_word_embeddings).toBe(false);
    expect(c.router_bias).toBe(false);
    expect(c.norm_topk_prob).toBe(false);
    expect(c.rope_scaling).toBeNull();
    expect(c.pad_token_id).toBeNull();
    expect(c.quantization_config).toBeNull();
    expect(c.num_nextn_predict_layers).toBe(1);
    expect(c.extra).toEqual({ auto_map: CHAT.auto_map });
    // Round trip through configToJson.
    expect(parseConfig(configToJson(c))).toEqual(c);
  });

  it('derives the SPEC 1.2 constants', () => {
    const d = deriveConstants(parseConfig(CHAT));
    expect(d.qkHeadDim).toBe(192);
    expect(d.qProjDim).toBe(12288);
    expect(d.kvAProjDim).toBe(576);
    expect(d.kvBProjDim).toBe(16384);
    expect(d.oProjDim).toBe(8192);
    expect(d.mlaScaleQ).toBe(2);
    expect(d.mlaScaleKv).toBeCloseTo(3.4641016151377544, 15);
    expect(d.softmaxScale).toBeCloseTo(0.07216878364870322, 16);
    expect(d.routerWidth).toBe(768);
    expect(d.attentionLayers).toBe(56);
    expect(d.ropeDim).toBe(64);
    expect(d.eosIds).toEqual([2]);
    const off = deriveConstants(parseConfig({ ...CHAT, mla_scale_q_lora: false, mla_scale_kv_lora: false }));
    expect([off.mlaScaleQ, off.mlaScaleKv]).toEqual([1, 1]);
  });

  it('accepts an absent model_type when architectures names LongcatFlashForCausalLM (Thinking-2601)', () => {
    const { model_type: _, ...rest } = CHAT;
    expect(parseConfig(rest).model_type).toBe('longcat_flash');
    const e = configErr({ ...rest, architectures: ['Other'] });
    expect(e.code).toBe('E_CONFIG');
    expect(e.message).toContain("'model_type'");
  });

  it('rejects a longcat_flash_ngram config without its N-gram fields, naming the first one', () => {
    const e = configErr({ ...CHAT, model_type: 'longcat_flash_ngram' });
    expect(e.message).toMatch(/'ngram_vocab_size_ratio'.*model_type "longcat_flash_ngram"/);
  });

  it('names the bad field, the file, expected and got for every invalid field', () => {
    const bad: [string, unknown, RegExp][] = [
      ['vocab_size', 0, /positive integer, got 0/],
      ['hidden_size', -64, /positive integer, got -64/],
      ['hidden_size', 64.5, /positive integer/],
      ['num_layers', '28', /positive integer, got "28"/],
      ['num_attention_heads', null, /positive integer, got null/],
      ['num_key_value_heads', 8, /equal to num_attention_heads \(64\)/],
      ['q_lora_rank', undefined, /field absent/],
      ['kv_lora_rank', 0, /positive integer/],
      ['qk_nope_head_dim', true, /positive integer/],
      ['qk_rope_head_dim', 63, /even/],
      ['v_head_dim', -1, /positive integer/],
      ['ffn_hidden_size', 1e30, /positive integer/],
      ['expert_ffn_hidden_size', 0, /positive integer/],
      ['n_routed_experts', 0, /positive integer/],
      ['zero_expert_num', -1, /non-negative integer/],
      ['zero_expert_type', 'copy', /"identity"/],
      ['moe_topk', 769, /<= n_routed_experts \+ zero_expert_num \(768\)/],
      ['routed_scaling_factor', 0, /positive finite number/],
      ['mla_scale_q_lora', 'yes', /boolean/],
      ['mla_scale_kv_lora', 1, /boolean/],
      ['attention_method', 'MHA', /"MLA"/],
      ['attention_bias', true, /no biases/],
      ['attention_dropout', 2, /<= 1/],
      ['rms_norm_eps', 0, /positive finite number/],
      ['rope_theta', -1, /positive finite number/],
      ['max_position_embeddings', 0, /positive integer/],
      ['bos_token_id', 131072, /\[0, 131072\)/],
      ['eos_token_id', [], /token id/],
      ['eos_token_id', [2, -1], /token id/],
      ['pad_token_id', 1e9, /\[0, 131072\)/],
      ['use_cache', 'true', /boolean/],
      ['hidden_act', 'gelu', /"silu"/],
      ['tie_word_embeddings', 0, /boolean/],
      ['router_bias', true, /no bias/],
      ['norm_topk_prob', 'no', /boolean/],
      ['num_nextn_predict_layers', 2, /0 or 1/],
      ['architectures', 'LongcatFlashForCausalLM', /array of strings/],
      ['model_type', 'deepseek_v3', /"longcat_flash"/],
      ['rope_scaling', 'yarn', /object or null/],
      ['quantization_config', [], /object or null/],
    ];
    for (const [field, value, msg] of bad) {
      const e = configErr({ ...CHAT, [field]: value });
      expect(e.code, field).toBe('E_CONFIG');
      expect(e.message, field).toContain(`field '${field}'`);
      expect(e.message, field).toContain('/ckpt/config.json');
      expect(e.message, field).toMatch(msg);
      expect((e as unknown as { field: string }).field).toBe(field);
    }
    expect(configErr([1, 2]).message).toMatch(/expected a JSON object/);
    expect(configErr(null).code).toBe('E_CONFIG');
  });

  it('parses YaRN rope_scaling and applies mscale^2 to the softmax scale', () => {
    const yarn = {
      factor: 10,
      original_max_position_embeddings: 8192,
      beta_fast: 32,
      beta_slow: 1,
      mscale: 1,
      mscale_all_dim: 1,
    };
    const c = parseConfig({ ...CHAT, rope_scaling: { rope_type: 'yarn', ...yarn } });
    // `rope_type` is read into `type`, every other field comes back as given
    expect(c.rope_scaling).toEqual({ type: 'yarn', ...yarn });
    const m = 0.1 * Math.log(10) + 1;
    expect(deriveConstants(c).softmaxScale).toBeCloseTo((1 / Math.sqrt(192)) * m * m, 15);
    expect(parseConfig({ ...CHAT, rope_scaling: { type: 'default' } }).rope_scaling).toBeNull();
    expect(configErr({ ...CHAT, rope_scaling: { type: 'linear', factor: 2 } }).message).toContain("'rope_scaling.rope_type'");
    expect(configErr({ ...CHAT, rope_scaling: { type: 'yarn', factor: 0.5 } }).message).toContain("'rope_scaling.factor'");
    expect(configErr({ ...CHAT, rope_scaling: { type: 'yarn', factor: 4, beta_fast: -1 } }).message).toContain(
      "'rope_scaling.beta_fast'",
    );
  });

  it('parses quantization_config with the SPEC 7.1 defaults and rejects other methods', () => {
    const given = { activation_scheme: 'dynamic', fmt: 'e4m3', quant_method: 'fp8', weight_block_size: [128, 128] };
    const c = parseConfig({ ...CHAT, quantization_config: given });
    // every given field comes back, the two module lists default to empty
    expect(c.quantization_config).toEqual({ ...given, ignored_layers: [], disable_quant_module: [] });
    expect(parseConfig({ ...CHAT, quantization_config: {} }).quantization_config).toMatchObject({
      weight_block_size: [128, 128],
    });
    expect(configErr({ ...CHAT, quantization_config: { quant_method: 'awq' } }).message).toContain(
      "'quantization_config.quant_method'",
    );
    expect(configErr({ ...CHAT, quantization_config: { fmt: 'e5m2' } }).message).toContain("'quantization_config.fmt'");
    expect(configErr({ ...CHAT, quantization_config: { weight_block_size: [128] } }).message).toContain(
      "'quantization_config.weight_block_size'",
    );
    expect(configErr({ ...CHAT, quantization_config: { ignored_layers: 'x' } }).message).toContain(
      "'quantization_config.ignored_layers'",
    );
  });
});

describe('requiredTensors', () => {
  const chat = parseConfig(CHAT);

  it('lists the SPEC 2.3 tensor counts (bf16, +MTP, fp8 scales)', () => {
    expect(requiredTensors(chat).size).toBe(43739);
    expect(requiredTensors(chat, { mtp: true }).size).toBe(43756);
    const fp8 = requiredTensors(chat, { fp8: true, mtp: true });
    const scales = [...fp8.keys()].filter(n => n.endsWith('.weight_scale_inv'));
    expect(scales.length).toBe(43465);
    expect(requiredTensors(chat, { fp8: true }).size).toBe(43739 + 43456);
  });

  it('has the SPEC 2.1 / 2.2 shapes', () => {
    const m = requiredTensors(chat, { mtp: true });
    const shape = (n: string) => m.get(n)?.shape;
    expect(shape('model.embed_tokens.weight')).toEqual([131072, 6144]);
    expect(shape('lm_head.weight')).toEqual([131072, 6144]);
    expect(shape('model.norm.weight')).toEqual([6144]);
    expect(shape('model.layers.27.input_layernorm.1.weight')).toEqual([6144]);
    expect(shape('model.layers.0.self_attn.0.q_a_proj.weight')).toEqual([1536, 6144]);
    expect(shape('model.layers.0.self_attn.1.q_a_layernorm.weight')).toEqual([1536]);
    expect(shape('model.layers.0.self_attn.0.q_b_proj.weight')).toEqual([12288, 1536]);
    expect(shape('model.layers.0.self_attn.0.kv_a_proj_with_mqa.weight')).toEqual([576, 6144]);
    expect(shape('model.layers.0.self_attn.0.kv_a_layernorm.weight')).toEqual([512]);
    expect(shape('model.layers.0.self_attn.0.kv_b_proj.weight')).toEqual([16384, 512]);
    expect(shape('model.layers.0.self_attn.0.o_proj.weight')).toEqual([6144, 8192]);
    expect(shape('model.layers.3.mlps.1.gate_proj.weight')).toEqual([12288, 6144]);
    expect(shape('model.layers.3.mlps.1.down_proj.weight')).toEqual([6144, 12288]);
    expect(shape('model.layers.5.mlp.router.classifier.weight')).toEqual([768, 6144]);
    expect(shape('model.layers.5.mlp.router.e_score_correction_bias')).toEqual([768]);
    expect(shape('model.layers.5.mlp.experts.511.up_proj.weight')).toEqual([2048, 6144]);
    expect(shape('model.layers.5.mlp.experts.511.down_proj.weight')).toEqual([6144, 2048]);
    expect(m.has('model.layers.5.mlp.experts.512.up_proj.weight')).toBe(false);
    expect(shape('model.mtp.embed_tokens.weight')).toEqual([131072, 6144]);
    expect(shape('model.mtp.layers.0.enorm.m.weight')).toEqual([6144]);
    expect(shape('model.mtp.layers.0.hnorm.m.weight')).toEqual([6144]);
    expect(shape('model.mtp.layers.0.eh_proj.weight')).toEqual([6144, 12288]);
    expect(shape('model.mtp.layers.0.self_attn.kv_b_proj.weight')).toEqual([16384, 512]);
    expect(shape('model.mtp.layers.0.transformer_layer.mlp.down_proj.weight')).toEqual([6144, 12288]);
    expect(shape('model.mtp.norm.weight')).toEqual([6144]);
    expect(requiredTensors(parseConfig({ ...CHAT, tie_word_embeddings: true })).has('lm_head.weight')).toBe(false);
  });

  it('quantizes exactly the SPEC 7.1 linears, with [ceil(out/128), ceil(in/128)] scales', () => {
    const m = requiredTensors(chat, { fp8: true, mtp: true });
    const scale = (n: string) => m.get(`${n}.weight_scale_inv`)?.shape;
    const a = 'model.layers.0.self_attn.0';
    expect(scale(`${a}.q_a_proj`)).toEqual([12, 48]);
    expect(scale(`${a}.q_b_proj`)).toEqual([96, 12]);
    expect(scale(`${a}.kv_a_proj_with_mqa`)).toEqual([5, 48]);
    expect(scale(`${a}.kv_b_proj`)).toEqual([128, 4]);
    expect(scale(`${a}.o_proj`)).toEqual([48, 64]);
    expect(scale('model.layers.0.mlps.0.gate_proj')).toEqual([96, 48]);
    expect(scale('model.layers.0.mlps.0.down_proj')).toEqual([48, 96]);
    expect(scale('model.layers.0.mlp.experts.7.gate_proj')).toEqual([16, 48]);
    expect(scale('model.layers.0.mlp.experts.7.down_proj')).toEqual([48, 16]);
    expect(scale('model.mtp.layers.0.eh_proj')).toEqual([48, 96]);
    expect(m.get(`${a}.q_a_proj.weight`)?.dtypes).toEqual(['F8_E4M3']);
    for (const n of [
      'model.embed_tokens.weight',
      'lm_head.weight',
      'model.norm.weight',
      `${a}.q_a_layernorm.weight`,
      `${a}.kv_a_layernorm.weight`,
      'model.layers.0.mlp.router.classifier.weight',
      'model.layers.0.mlp.router.e_score_correction_bias',
      'model.mtp.embed_tokens.weight',
      'model.mtp.layers.0.enorm.m.weight',
    ]) {
      expect(m.get(n)?.quantized, n).toBe(false);
      expect(m.get(n)?.dtypes, n).not.toContain('F8_E4M3');
      expect(m.has(`${n.replace(/\.weight$/, '')}.weight_scale_inv`), n).toBe(false);
    }
  });

  it('honours ignored_layers and disable_quant_module', () => {
    const q = {
      quant_method: 'fp8',
      ignored_layers: ['model.layers.0.self_attn.0.q_a_proj'],
      disable_quant_module: ['mlps', 'mtp'],
    };
    const c = parseConfig({ ...CHAT, num_layers: 1, quantization_config: q });
    expect(isQuantizedModule('model.layers.0.self_attn.0.q_a_proj', c.quantization_config)).toBe(false);
    expect(isQuantizedModule('model.layers.0.self_attn.0.q_b_proj', c.quantization_config)).toBe(true);
    expect(isQuantizedModule('model.layers.0.mlps.1.up_proj', c.quantization_config)).toBe(false);
    expect(isQuantizedModule('model.mtp.layers.0.eh_proj', c.quantization_config)).toBe(false);
    expect(isQuantizedModule('model.layers.0.mlp.experts.3.up_proj', c.quantization_config)).toBe(true);
    const m = requiredTensors(c, { mtp: true });
    expect(m.has('model.layers.0.self_attn.0.q_a_proj.weight_scale_inv')).toBe(false);
    expect(m.get('model.layers.0.self_attn.0.q_a_proj.weight')?.dtypes).not.toContain('F8_E4M3');
    expect(m.has('model.layers.0.self_attn.0.q_b_proj.weight_scale_inv')).toBe(true);
  });
});

describe('activeParams', () => {
  it('reproduces the SPEC 1.2 parameter counts of LongCat-Flash-Chat', () => {
    const p = activeParams(parseConfig(CHAT), { expectedFfnExperts: 8 });
    expect(p.total).toBe(560_664_980_480);
    expect(p.total + p.mtp).toBe(561_862_880_256);
    expect(p.perExpert).toBe(37_748_736);
    expect(p.nonExpertPerLayer).toBe(638_874_368);
    expect(p.activeMin / 1e9).toBeCloseTo(18.69, 2);
    expect(p.activeMax / 1e9).toBeCloseTo(31.38, 2);
    expect(p.activePerFfnExpert / 1e9).toBeCloseTo(1.057, 3);
    expect(p.activeExpected! / 1e9).toBeCloseTo(27.15, 2);
  });
});
