// `longcat init-random`: writes a random LongCat-Flash checkpoint in the ORIGINAL Meituan layout
// (SPEC 2.1/2.2/7.1): config.json, generation_config.json, two safetensors shards +
// model.safetensors.index.json, a small byte-level BPE tokenizer.json, tokenizer_config.json with
// the LongCat chat template (SPEC 8.2). Deterministic for a seed; tensors are generated in chunks
// (never whole in memory), so the medium preset (~1.6 GB) streams to disk.
//
// Weights: normal(0, 1/sqrt(fan_in)) (embedding: normal(0, 1); RMSNorm weights 1 + 0.05 normal),
// so activations stay O(1). The router classifier is normal(0, 1/sqrt(hidden)) and the correction
// bias small, so routing is close to uniform over FFN + zero experts: zero experts take about
// zero/(routed + zero) of the slots (1/3 in every preset).
//
// `draftAgreement` (with `mtp`) writes a model whose MTP drafts are accepted at a known rate
// instead (draftAgreementPlan below): the same tensors, the same random attention and routing,
// but embeddings, lm_head and MTP input chosen so that the greedy next token is a fixed function of
// the current one and the MTP head repeats it one step ahead, wrong on a known set of tokens.
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { type LongcatConfig, MTP_PREFIX, parseConfig, requiredTensors } from './config.js';
import { type TensorToWrite, writeSafetensors, SAFETENSORS_DTYPE_SIZE, type SafetensorsDType } from './safetensors.js';
import { LONGCAT_CHAT_TEMPLATE } from './chat.js';
import { f32ToBf16, f32ToFp8e4m3 } from './numeric.js';
import { ArgumentError } from './errors.js';
import { AUXILIARY_FILE } from './config-ngram.js';

export type Preset = 'tiny' | 'small' | 'medium' | 'lite';

export interface InitRandomOptions {
  preset: Preset;
  /** Output directory (created). */
  out: string;
  /** Block-wise FP8 linears + weight_scale_inv (SPEC 7.1) and quantization_config. */
  fp8?: boolean;
  /** Add the MTP module (SPEC 2.2). */
  mtp?: boolean;
  /**
   * With `mtp` (presets tiny, small, lite): a model whose greedy next token is a fixed cycle P
   * through the tokenizer's ordinary tokens and whose MTP draft (SPEC 6.1, one draft token) is
   * accepted by greedy speculative decoding at this rate in [0, 1] (the closest rate the cycle
   * allows, `InitRandomResult.draftAcceptance`; see draftAgreementPlan).
   */
  draftAgreement?: number;
  seed?: number;
  /** Overrides of config fields (tests: a different vocab, layer count, ...). */
  overrides?: Partial<Record<keyof LongcatConfig, unknown>>;
  onProgress?: (p: { file: string; bytes: number; totalBytes: number }) => void;
}

export interface InitRandomResult {
  dir: string;
  config: LongcatConfig;
  files: string[];
  tensorCount: number;
  totalBytes: number;
  /** With `draftAgreement`: the exact greedy acceptance rate of one lap of the cycle. */
  draftAcceptance?: number;
}

/** Config fields of each preset (everything else: the LongCat-Flash-Chat values). */
export const PRESETS: Readonly<Record<Preset, Record<string, number>>> = {
  tiny: {
    hidden_size: 64,
    num_layers: 2,
    num_attention_heads: 4,
    q_lora_rank: 48,
    kv_lora_rank: 32,
    qk_nope_head_dim: 16,
    qk_rope_head_dim: 8,
    v_head_dim: 16,
    ffn_hidden_size: 128,
    expert_ffn_hidden_size: 32,
    n_routed_experts: 8,
    zero_expert_num: 4,
    moe_topk: 3,
    vocab_size: 512,
    max_position_embeddings: 4096,
  },
  small: {
    hidden_size: 512,
    num_layers: 4,
    num_attention_heads: 8,
    q_lora_rank: 256,
    kv_lora_rank: 128,
    qk_nope_head_dim: 32,
    qk_rope_head_dim: 16,
    v_head_dim: 32,
    ffn_hidden_size: 1024,
    expert_ffn_hidden_size: 256,
    n_routed_experts: 32,
    zero_expert_num: 16,
    moe_topk: 6,
    vocab_size: 4096,
    max_position_embeddings: 8192,
  },
  medium: {
    hidden_size: 1024,
    num_layers: 8,
    num_attention_heads: 16,
    q_lora_rank: 384,
    kv_lora_rank: 256,
    qk_nope_head_dim: 64,
    qk_rope_head_dim: 32,
    v_head_dim: 64,
    ffn_hidden_size: 2048,
    expert_ffn_hidden_size: 512,
    n_routed_experts: 48,
    zero_expert_num: 24,
    moe_topk: 8,
    vocab_size: 32768,
    max_position_embeddings: 32768,
  },
  // LongCat-Flash-Lite's layout (SPEC-LITE): the N-gram embedding (orders 2..4, 4 splits: 12 tables
  // as in the release), YaRN RoPE, Lite's 2:1 FFN to zero experts, at a size tests can run.
  lite: {
    hidden_size: 96,
    num_layers: 2,
    num_attention_heads: 4,
    q_lora_rank: 48,
    kv_lora_rank: 32,
    qk_nope_head_dim: 16,
    qk_rope_head_dim: 8,
    v_head_dim: 16,
    ffn_hidden_size: 192,
    expert_ffn_hidden_size: 32,
    n_routed_experts: 8,
    zero_expert_num: 4,
    moe_topk: 3,
    vocab_size: 512,
    max_position_embeddings: 40960,
    ngram_vocab_size_ratio: 3,
    emb_neighbor_num: 4,
    emb_split_num: 4,
  },
};

/** The config.json an init-random preset writes (before overrides). */
export function presetConfigJson(preset: Preset, opts: { fp8?: boolean; mtp?: boolean } = {}): Record<string, unknown> {
  const p = PRESETS[preset];
  if (!p) throw new ArgumentError('E_ARGUMENT', `init-random: unknown preset '${preset}' (tiny, small, medium or lite)`);
  const j: Record<string, unknown> = {
    architectures: ['LongcatFlashForCausalLM'],
    model_type: 'longcat_flash',
    auto_map: {
      AutoConfig: 'configuration_longcat_flash.LongcatFlashConfig',
      AutoModel: 'modeling_longcat_flash.LongcatFlashModel',
      AutoModelForCausalLM: 'modeling_longcat_flash.LongcatFlashForCausalLM',
    },
    vocab_size: p.vocab_size,
    hidden_size: p.hidden_size,
    num_layers: p.num_layers,
    num_attention_heads: p.num_attention_heads,
    q_lora_rank: p.q_lora_rank,
    kv_lora_rank: p.kv_lora_rank,
    qk_nope_head_dim: p.qk_nope_head_dim,
    qk_rope_head_dim: p.qk_rope_head_dim,
    v_head_dim: p.v_head_dim,
    ffn_hidden_size: p.ffn_hidden_size,
    expert_ffn_hidden_size: p.expert_ffn_hidden_size,
    n_routed_experts: p.n_routed_experts,
    zero_expert_num: p.zero_expert_num,
    zero_expert_type: 'identity',
    moe_topk: p.moe_topk,
    routed_scaling_factor: 6.0,
    mla_scale_q_lora: true,
    mla_scale_kv_lora: true,
    attention_method: 'MLA',
    attention_bias: false,
    attention_dropout: 0.0,
    rms_norm_eps: 1e-5,
    rope_theta: 10000000.0,
    max_position_embeddings: p.max_position_embeddings,
    bos_token_id: 1,
    eos_token_id: 2,
    use_cache: true,
    torch_dtype: 'bfloat16',
  };
  if (preset === 'lite') {
    j.architectures = ['LongcatFlashNgramForCausalLM'];
    j.model_type = 'longcat_flash_ngram';
    j.auto_map = {
      AutoConfig: 'configuration_longcat_ngram.LongcatFlashNgramConfig',
      AutoModel: 'modeling_longcat_ngram.LongcatFlashNgramModel',
      AutoModelForCausalLM: 'modeling_longcat_ngram.LongcatFlashNgramForCausalLM',
    };
    j.ngram_vocab_size_ratio = p.ngram_vocab_size_ratio;
    j.emb_neighbor_num = p.emb_neighbor_num;
    j.emb_split_num = p.emb_split_num;
    j.rope_theta = 5000000.0;
    j.rope_scaling = {
      type: 'yarn',
      factor: 10.0,
      original_max_position_embeddings: p.max_position_embeddings! / 10,
      beta_fast: 32.0,
      beta_slow: 1.0,
      mscale: 1.0,
      mscale_all_dim: 1.0,
    };
  }
  if (opts.mtp) j.num_nextn_predict_layers = 1;
  if (opts.fp8)
    j.quantization_config = { quant_method: 'fp8', fmt: 'e4m3', activation_scheme: 'dynamic', weight_block_size: [128, 128] };
  return j;
}

// ---- deterministic random numbers -----------------------------------------------------------

/** FNV-1a of a string. */
function hash32(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193);
  return h >>> 0;
}

/** The seed of the random stream named `label` (a tensor name, ...) of a checkpoint seeded `seed`. */
function streamSeed(label: string, seed: number): number {
  return (hash32(label) ^ Math.imul(seed >>> 0, 0x9e3779b1)) >>> 0;
}

/** xoshiro128** seeded through splitmix32; returns uint32. */
function rng32(seed: number): () => number {
  let x = seed >>> 0;
  const sm = () => {
    x = (x + 0x9e3779b9) >>> 0;
    let z = x;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
    return (z ^ (z >>> 16)) >>> 0;
  };
  let a = sm(),
    b = sm(),
    c = sm(),
    d = sm();
  if ((a | b | c | d) === 0) a = 1;
  return () => {
    const r = Math.imul(rotl(Math.imul(b, 5), 7), 9) >>> 0;
    const t = b << 9;
    c ^= a;
    d ^= b;
    b ^= c;
    a ^= d;
    c ^= t;
    d = rotl(d, 11);
    return r;
  };
}
function rotl(v: number, k: number) {
  return (v << k) | (v >>> (32 - k));
}

/** Inverse normal CDF (Acklam; |rel err| < 1.2e-9). */
function normInv(p: number): number {
  const a = [
    -3.969683028665376e1, 2.209460984245205e2, -2.759285104469687e2, 1.38357751867269e2, -3.066479806614716e1, 2.506628277459239,
  ];
  const b = [-5.447609879822406e1, 1.615858368580409e2, -1.556989798598866e2, 6.680131188771972e1, -1.328068155288572e1];
  const c = [
    -7.784894002430293e-3, -3.223964580411365e-1, -2.400758277161838, -2.549732539343734, 4.374664141464968, 2.938163982698783,
  ];
  const d = [7.784695709041462e-3, 3.224671290700398e-1, 2.445134137142996, 3.754408661907416];
  const lo = 0.02425;
  if (p < lo) {
    const q = Math.sqrt(-2 * Math.log(p));
    return (
      (((((c[0]! * q + c[1]!) * q + c[2]!) * q + c[3]!) * q + c[4]!) * q + c[5]!) /
      ((((d[0]! * q + d[1]!) * q + d[2]!) * q + d[3]!) * q + 1)
    );
  }
  if (p > 1 - lo) return -normInv(1 - p);
  const q = p - 0.5,
    r = q * q;
  return (
    ((((((a[0]! * r + a[1]!) * r + a[2]!) * r + a[3]!) * r + a[4]!) * r + a[5]!) * q) /
    (((((b[0]! * r + b[1]!) * r + b[2]!) * r + b[3]!) * r + b[4]!) * r + 1)
  );
}

/** 65536 equiprobable normal quantiles: a 16-bit random index gives a normal(0, 1) sample. */
let QUANTILES: Float64Array | null = null;
function quantiles(): Float64Array {
  if (!QUANTILES) {
    QUANTILES = new Float64Array(65536);
    for (let i = 0; i < 65536; i++) QUANTILES[i] = normInv((i + 0.5) / 65536);
  }
  return QUANTILES;
}

// Per-(kind, scale) lookup tables: 16-bit random index -> encoded value.
const tables = new Map<string, Uint16Array | Uint8Array | Float32Array>();
function table(kind: 'bf16' | 'f32' | 'fp8', mean: number, std: number): Uint16Array | Uint8Array | Float32Array {
  const key = `${kind}:${mean}:${std}`;
  let t = tables.get(key);
  if (!t) {
    const q = quantiles();
    if (kind === 'bf16') {
      const u = new Uint16Array(65536);
      for (let i = 0; i < 65536; i++) u[i] = f32ToBf16(mean + std * q[i]!);
      t = u;
    } else if (kind === 'f32') {
      t = Float32Array.from(q, v => mean + std * v);
    } else {
      // FP8: values scaled so the largest quantile maps to 448; the block scale restores std.
      const u = new Uint8Array(65536);
      const top = q[65535]!;
      for (let i = 0; i < 65536; i++) u[i] = f32ToFp8e4m3((q[i]! * 448) / top);
      t = u;
    }
    tables.set(key, t);
  }
  return t;
}

const CHUNK_ELEMS = 1 << 20;

/** Chunks of `n` elements drawn from a 65536-entry table (2 elements per 32-bit random). */
function* fromTable(n: number, tab: Uint16Array | Uint8Array | Float32Array, next: () => number): Generator<Uint8Array> {
  const Ctor = tab.constructor as Uint16ArrayConstructor | Uint8ArrayConstructor | Float32ArrayConstructor;
  for (let done = 0; done < n; ) {
    const m = Math.min(CHUNK_ELEMS, n - done);
    const out = new Ctor(m);
    let i = 0;
    for (; i + 1 < m; i += 2) {
      const r = next();
      out[i] = tab[r & 0xffff]!;
      out[i + 1] = tab[r >>> 16]!;
    }
    if (i < m) out[i] = tab[next() & 0xffff]!;
    done += m;
    yield new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
  }
}

// ---- tokenizer ------------------------------------------------------------------------------

const CORPUS = `The quick brown fox jumps over the lazy dog. A language model reads a sequence of tokens and predicts the next one.
LongCat-Flash is a mixture-of-experts model: every layer has two attention blocks, two dense feed-forward blocks and one
shortcut-connected mixture of experts. Some experts are zero-computation experts that return their input unchanged, so the
number of activated parameters changes from token to token. The router picks the experts for each token; the weights of the
chosen experts are multiplied by the routed scaling factor. Attention uses multi-head latent attention with a compressed
key-value cache, which keeps long contexts cheap. This is a small random checkpoint for tests: its weights are noise, its
outputs are meaningless, but its shapes, names and formats are those of the real model.
Once upon a time there was a little town by the sea. In the morning the fishermen went out on their boats, and in the evening
they came back with their nets full of fish. The children played on the beach, the old people sat in the sun and told
stories, and the cats waited by the harbour for their share of the catch. One day a stranger arrived with a box of books.
"What is in the box?" asked a girl. "Everything," said the stranger, "that people have learned and written down." She opened
the first book and started to read, and she did not stop until the sun went down. Then she asked for another one.
Questions and answers: What is the capital of France? Paris is the capital of France. How many days are there in a week?
There are seven days in a week. What is two plus two? Two plus two is four. Which is larger, 1000 or 999? 1000 is larger.
The year 2025 has 365 days; the numbers 0 1 2 3 4 5 6 7 8 9 are digits. Water boils at 100 degrees Celsius at sea level.
The system said: you are a helpful assistant. The user asked a question, and the assistant answered it politely and clearly.
Programming: function add(a, b) { return a + b; } const list = [1, 2, 3]; for (let i = 0; i < list.length; i++) print(list[i]);
If the weather is good tomorrow, we will walk in the park; if it rains, we will stay at home and read.
`;

/** GPT-2 bytes_to_unicode: byte -> printable character. */
export function byteToUnicode(): string[] {
  const bs: number[] = [];
  for (let b = 33; b <= 126; b++) bs.push(b);
  for (let b = 161; b <= 172; b++) bs.push(b);
  for (let b = 174; b <= 255; b++) bs.push(b);
  const map: string[] = new Array(256);
  for (const b of bs) map[b] = String.fromCharCode(b);
  let n = 0;
  for (let b = 0; b < 256; b++) if (map[b] === undefined) map[b] = String.fromCharCode(256 + n++);
  return map;
}

/** The pre-tokenizer split (Qwen2-style, as LongCat-Flash-Lite's) in Oniguruma and JS syntax. */
const SPLIT_REGEX =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const SPLIT_REGEX_JS =
  /'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD]|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+/gu;

export const SPECIAL_TOKENS = ['<longcat_unk>', '<longcat_s>', '</longcat_s>', '<longcat_pad>'] as const;
export const EXTRA_SPECIAL_TOKENS = [
  '<longcat_tool_call>',
  '</longcat_tool_call>',
  '<longcat_think>',
  '</longcat_think>',
] as const;

/** Learns `maxMerges` BPE merges over the byte-level pieces of `text` (deterministic). */
function learnMerges(text: string, maxMerges: number): [string, string][] {
  const b2u = byteToUnicode();
  const enc = new TextEncoder();
  const counts = new Map<string, number>();
  for (const m of text.matchAll(SPLIT_REGEX_JS)) {
    const w = Array.from(enc.encode(m[0]), b => b2u[b]!).join('\u0000');
    counts.set(w, (counts.get(w) ?? 0) + 1);
  }
  const words = [...counts.entries()].sort((a, b) => (a[0] < b[0] ? -1 : 1)).map(([w, c]) => ({ syms: w.split('\u0000'), c }));
  const merges: [string, string][] = [];
  while (merges.length < maxMerges) {
    const pairs = new Map<string, number>();
    for (const { syms, c } of words)
      for (let i = 0; i + 1 < syms.length; i++) {
        const k = `${syms[i]!}\u0000${syms[i + 1]!}`;
        pairs.set(k, (pairs.get(k) ?? 0) + c);
      }
    let best = '',
      bestC = 1;
    for (const [k, c] of pairs) if (c > bestC || (c === bestC && best !== '' && k < best)) [best, bestC] = [k, c];
    if (!best) break;
    const [a, b] = best.split('\u0000') as [string, string];
    merges.push([a, b]);
    const ab = a + b;
    for (const w of words) {
      const s = w.syms;
      const r: string[] = [];
      for (let i = 0; i < s.length; i++) {
        if (i + 1 < s.length && s[i] === a && s[i + 1] === b) {
          r.push(ab);
          i++;
        } else r.push(s[i]!);
      }
      w.syms = r;
    }
  }
  return merges;
}

/** A byte-level BPE tokenizer.json with at most `maxTokens` tokens (>= 268). */
/** LongCat-Flash-Lite's pre-tokenizer after the Qwen2-style split (SPEC-LITE 8): full-width
 *  punctuation runs, then CJK / Hangul runs, each isolated. */
export const LITE_EXTRA_SPLITS = [' ?[！-／：-～‘-‟　-。《》「」【】]+', '[一-龥ࠀ-一가-퟿]+'] as const;

export function buildTokenizerJson(maxTokens: number, extraSplits: readonly string[] = []): Record<string, unknown> {
  const reserved = SPECIAL_TOKENS.length + 256 + EXTRA_SPECIAL_TOKENS.length;
  if (maxTokens < reserved)
    throw new ArgumentError(
      'E_ARGUMENT',
      `init-random: vocab_size must be at least ${reserved} for the tokenizer, got ${maxTokens}`,
    );
  const merges = learnMerges(CORPUS, Math.min(maxTokens - reserved, 2000));
  const vocab: Record<string, number> = {};
  let id = 0;
  for (const t of SPECIAL_TOKENS) vocab[t] = id++;
  for (const ch of byteToUnicode()) vocab[ch] = id++;
  for (const [a, b] of merges) if (!(a + b in vocab)) vocab[a + b] = id++;
  const added = [...SPECIAL_TOKENS.map((t, i) => [t, i] as const), ...EXTRA_SPECIAL_TOKENS.map(t => [t, id++] as const)].map(
    ([content, i]) => ({
      id: i,
      content,
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: false,
      special: true,
    }),
  );
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: added,
    normalizer: null,
    pre_tokenizer: {
      type: 'Sequence',
      pretokenizers: [
        { type: 'Split', pattern: { Regex: SPLIT_REGEX }, behavior: 'Isolated', invert: false },
        ...extraSplits.map(re => ({ type: 'Split', pattern: { Regex: re }, behavior: 'Isolated', invert: false })),
        { type: 'ByteLevel', add_prefix_space: false, trim_offsets: false, use_regex: false },
      ],
    },
    post_processor: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: false, use_regex: false },
    decoder: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: false, use_regex: false },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab,
      merges: merges.map(([a, b]) => `${a} ${b}`),
    },
  };
}

export function buildTokenizerConfig(tokenizerJson: Record<string, unknown>, maxLength: number): Record<string, unknown> {
  const decoder: Record<string, unknown> = {};
  for (const t of tokenizerJson.added_tokens as { id: number; content: string }[]) decoder[String(t.id)] = { ...t };
  return {
    add_bos_token: false,
    add_eos_token: false,
    added_tokens_decoder: decoder,
    bos_token: '<longcat_s>',
    eos_token: '</longcat_s>',
    pad_token: '<longcat_pad>',
    unk_token: '<longcat_unk>',
    additional_special_tokens: [...EXTRA_SPECIAL_TOKENS],
    clean_up_tokenization_spaces: false,
    model_max_length: maxLength,
    tokenizer_class: 'PreTrainedTokenizerFast',
    chat_template: LONGCAT_CHAT_TEMPLATE,
  };
}

// ---- a model whose drafts are accepted (draftAgreement) ------------------------------------
//
// Construction: every token x has a random unit-rms row e_x (near-orthogonal in high dimension).
// The embedding maps x to e_x; every block's output projection is scaled by AGREEMENT_OUTPUT_SCALE,
// so the residual stream stays e_x plus a few percent of noise (the zero experts add multiples of
// the normalised stream, which keep its direction); lm_head row P(x) is alpha e_x, so the logits
// peak at P(x) whatever the context. The MTP head reads its own embedding table, row x = e_{S(x)},
// through eh_proj = [I | small random] (embedding half first, SPEC 6.1), and its layer's outputs are
// scaled like the main ones, so it drafts P(S(x)) for the pending token x: right exactly where
// S(x) = x. Attention, dense MLPs, routing and FFN experts stay random and run; only their outputs
// are small.
//
// Acceptance: greedy one-draft speculation (SPEC 6.3) with pending token x accepts iff S(x) = x and
// then skips P(x) (committed as the draft) to pend P(P(x)). So the cycle is laid out in units: an
// agreeing unit is [x, P(x)] with S(x) = x and S(P(x)) != P(x) (the skipped token, wrong, so that a
// walk entering mid-unit realigns after one step), a disagreeing unit is [x] with S(x) != x. A walk
// accepts once per agreeing unit and rejects once per disagreeing unit, so one lap accepts exactly
// agreeing / (agreeing + disagreeing) of its drafts.

/** Presets draftAgreement supports (the embedding rows are built whole in memory: vocab x hidden floats). */
export const AGREEMENT_PRESETS: readonly Preset[] = ['tiny', 'small', 'lite'];
/** Multiplier of the std of every block's output projection (o_proj, down_proj, N-gram post_projs). */
const AGREEMENT_OUTPUT_SCALE = 1 / 32;
/** The greedy token's logit: lm_head rows are (this / hidden_size) e_x, and hf . e_x ~ hidden_size. */
const AGREEMENT_LOGIT = 32;
/** lm_head rows of tokens off the cycle: independent random rows this much smaller, so they never win. */
const AGREEMENT_OFF_CYCLE = 0.1;

export interface DraftAgreementPlan {
  /** The tokenizer's ordinary tokens that are whole text (textTokens) in cycle order. */
  cycle: Int32Array;
  /** next[x] = P(x), the main model's greedy token after x (cycle[i] -> cycle[i + 1]); -1 off the cycle. */
  next: Int32Array;
  /**
   * draftSource[x] = S(x): the MTP head drafts next[draftSource[x]] for the pending token x, so
   * the draft is right exactly where draftSource[x] = x; -1 off the cycle.
   */
  draftSource: Int32Array;
  /** Greedy one-draft acceptance over one lap: accepted / (accepted + rejected) drafts. */
  acceptance: number;
}

/**
 * The tokenizer's ordinary tokens that are whole text by themselves, ascending: no special token, no
 * byte that is only part of a UTF-8 character, no control character but the newline. Greedy text of
 * an agreeing model is made of them only, so it decodes token by token without U+FFFD.
 */
function textTokens(tokenizerJson: Record<string, unknown>): number[] {
  const special = new Set((tokenizerJson.added_tokens as { id: number }[]).map(t => t.id));
  const vocab = (tokenizerJson.model as { vocab: Record<string, number> }).vocab;
  const byteOf = new Map(byteToUnicode().map((ch, b) => [ch, b]));
  const utf8 = new TextDecoder('utf-8', { fatal: true });
  const isText = (token: string) => {
    try {
      // biome-ignore lint/suspicious/noControlCharactersInRegex: the control characters are what it looks for
      return !/[\u0000-\u0009\u000b-\u001f\u007f]/.test(utf8.decode(Uint8Array.from(token, ch => byteOf.get(ch)!)));
    } catch {
      return false;
    }
  };
  return Object.entries(vocab)
    .filter(([token, id]) => !special.has(id) && isText(token))
    .map(([, id]) => id)
    .sort((a, b) => a - b);
}

function agreementPlanOf(ordinary: readonly number[], vocabSize: number, agreement: number, seed: number): DraftAgreementPlan {
  const next32 = rng32(streamSeed('draft agreement', seed));
  const cycle = Int32Array.from(ordinary);
  for (let i = cycle.length - 1; i > 0; i--) {
    const j = next32() % (i + 1);
    [cycle[i], cycle[j]] = [cycle[j]!, cycle[i]!];
  }
  const N = cycle.length;
  const next = new Int32Array(vocabSize).fill(-1);
  const draftSource = new Int32Array(vocabSize).fill(-1);
  for (let i = 0; i < N; i++) next[cycle[i]!] = cycle[(i + 1) % N]!;
  // Agreeing units a (2 tokens each) and disagreeing units N - 2a >= 1: rate a / (N - a); or every
  // token right (rate 1). The closest rate to `agreement` wins, the lower one on a tie.
  const miss = (a: number) => Math.abs(a / (N - a) - agreement);
  const most = Math.floor((N - 1) / 2);
  let agreeing = 0;
  for (const a of [Math.floor((agreement * N) / (1 + agreement)), Math.ceil((agreement * N) / (1 + agreement))])
    if (miss(Math.min(a, most)) < miss(agreeing)) agreeing = Math.min(a, most);
  if (1 - agreement < miss(agreeing)) {
    for (const x of cycle) draftSource[x] = x;
    return { cycle, next, draftSource, acceptance: 1 };
  }
  // Agreeing units spread evenly over the M units (Bresenham); a wrong draft reads P(x)'s row.
  const M = N - agreeing;
  for (let k = 0, pos = 0; k < M; k++) {
    const x = cycle[pos]!;
    if (Math.floor(((k + 1) * agreeing) / M) > Math.floor((k * agreeing) / M)) {
      draftSource[x] = x;
      draftSource[cycle[pos + 1]!] = next[cycle[pos + 1]!]!;
      pos += 2;
    } else {
      draftSource[x] = next[x]!;
      pos += 1;
    }
  }
  return { cycle, next, draftSource, acceptance: agreeing / M };
}

/** Checks `draftAgreement` and the options it needs (typed ArgumentError naming the problem). */
function checkDraftAgreement(opts: InitRandomOptions, mtp: boolean): number {
  const a = opts.draftAgreement!;
  if (typeof a !== 'number' || !Number.isFinite(a) || a < 0 || a > 1)
    throw new ArgumentError('E_ARGUMENT', `init-random: draftAgreement must be a number in [0, 1], got ${String(a)}`);
  if (!mtp) throw new ArgumentError('E_ARGUMENT', 'init-random: draftAgreement needs the MTP module (mtp: true)');
  if (!AGREEMENT_PRESETS.includes(opts.preset))
    throw new ArgumentError(
      'E_ARGUMENT',
      `init-random: draftAgreement is available for the presets ${AGREEMENT_PRESETS.join(', ')}, not '${opts.preset}'`,
    );
  return a;
}

/**
 * The cycle and draft map of the checkpoint initRandom writes with these options and
 * `draftAgreement` (the same checks), without writing it: what tests and benchmarks expect of it.
 */
export function draftAgreementPlan(
  opts: Pick<InitRandomOptions, 'preset' | 'seed' | 'overrides' | 'draftAgreement'>,
): DraftAgreementPlan {
  const a = checkDraftAgreement({ ...opts, out: '' }, true);
  const json = { ...presetConfigJson(opts.preset, { mtp: true }), ...(opts.overrides ?? {}) };
  const config = parseConfig(json, 'config.json');
  const tok = buildTokenizerJson(Math.min(config.vocab_size, 4096));
  return agreementPlanOf(textTokens(tok), config.vocab_size, a, opts.seed ?? 0);
}

/** What plan() needs for an agreeing model: the plan and the rows e_x [vocab, hidden] (unit rms). */
interface Agreement {
  plan: DraftAgreementPlan;
  rows: Float32Array;
}

/** `n` unit-rms random rows of width `H` from `seed`. */
function unitRows(n: number, H: number, seed: number): Float32Array {
  const q = quantiles();
  const next = rng32(seed);
  const rows = new Float32Array(n * H);
  for (let r = 0; r < n; r++) {
    let ss = 0;
    for (let i = 0; i < H; i++) {
      const v = q[next() & 0xffff]!;
      rows[r * H + i] = v;
      ss += v * v;
    }
    const k = 1 / Math.sqrt(ss / H);
    for (let i = 0; i < H; i++) rows[r * H + i]! *= k;
  }
  return rows;
}

function bf16Bytes(f: Float32Array): Uint8Array {
  const u = new Uint16Array(f.length);
  for (let i = 0; i < f.length; i++) u[i] = f32ToBf16(f[i]!);
  return new Uint8Array(u.buffer);
}

/** Block FP8 (SPEC 7.1) of a [n, k] matrix: e4m3 codes and per-block scale_inv = absmax / 448. */
function fp8Blocks(
  f: Float32Array,
  n: number,
  k: number,
  [br, bc]: readonly [number, number],
): { codes: Uint8Array; scales: Float32Array } {
  const nb = Math.ceil(n / br),
    kb = Math.ceil(k / bc);
  const scales = new Float32Array(nb * kb);
  for (let r = 0; r < n; r++)
    for (let c = 0; c < k; c++) {
      const b = Math.floor(r / br) * kb + Math.floor(c / bc);
      scales[b] = Math.max(scales[b]!, Math.abs(f[r * k + c]!) / 448);
    }
  for (let b = 0; b < scales.length; b++) if (scales[b] === 0) scales[b] = 1;
  const codes = new Uint8Array(n * k);
  for (let r = 0; r < n; r++)
    for (let c = 0; c < k; c++)
      codes[r * k + c] = f32ToFp8e4m3(f[r * k + c]! / scales[Math.floor(r / br) * kb + Math.floor(c / bc)]!);
  return { codes, scales };
}

/** A block's output projection (its std scaled in an agreeing model). */
function isBlockOutput(name: string): boolean {
  return /\.(o_proj|down_proj)\.weight(_scale_inv)?$/.test(name) || name.startsWith('model.ngram_embeddings.post_projs.');
}

/**
 * The tensors an agreeing model writes differently from the random one (the rest: see plan), as
 * float values [shape] (the caller encodes them), or null.
 */
function agreementValues(name: string, config: LongcatConfig, agree: Agreement, seed: number): Float32Array | null {
  const H = config.hidden_size,
    V = config.vocab_size;
  const { plan, rows } = agree;
  const rowOf = (f: Float32Array, dst: number, src: Float32Array, from: number, k: number) => {
    for (let i = 0; i < H; i++) f[dst * H + i] = k * src[from * H + i]!;
  };
  switch (name) {
    case 'model.embed_tokens.weight': {
      // Lite averages the embedding with E projected N-gram rows (SPEC-LITE): rows x (E + 1) keep
      // the stream at e_x, the (small) projections aside.
      const k = config.ngram ? config.ngram.splitNum * (config.ngram.neighborNum - 1) + 1 : 1;
      return k === 1 ? rows : rows.map(v => k * v);
    }
    case 'model.mtp.embed_tokens.weight': {
      const f = new Float32Array(V * H);
      for (let x = 0; x < V; x++) rowOf(f, x, rows, plan.draftSource[x]! >= 0 ? plan.draftSource[x]! : x, 1);
      return f;
    }
    case 'lm_head.weight': {
      const alpha = AGREEMENT_LOGIT / H;
      const off = unitRows(V, H, seed);
      const f = new Float32Array(V * H);
      for (let y = 0; y < V; y++) rowOf(f, y, off, y, alpha * AGREEMENT_OFF_CYCLE);
      for (const x of plan.cycle) rowOf(f, plan.next[x]!, rows, x, alpha);
      return f;
    }
    case 'model.norm.weight':
    case 'model.mtp.norm.weight':
    case `${MTP_PREFIX}.enorm.m.weight`:
    case `${MTP_PREFIX}.hnorm.m.weight`:
      return new Float32Array(H).fill(1);
    case `${MTP_PREFIX}.eh_proj.weight`: {
      // [I | small random]: the draft follows the embedding half, the hidden half still counts.
      const q = quantiles();
      const next = rng32(seed);
      const f = new Float32Array(H * 2 * H);
      for (let r = 0; r < H; r++) {
        f[r * 2 * H + r] = 1;
        for (let c = H; c < 2 * H; c++) f[r * 2 * H + c] = (AGREEMENT_OUTPUT_SCALE / Math.sqrt(H)) * q[next() & 0xffff]!;
      }
      return f;
    }
  }
  return null;
}

// ---- weights --------------------------------------------------------------------------------

interface PlannedTensor {
  name: string;
  dtype: SafetensorsDType;
  shape: number[];
  nbytes: number;
  make: () => Iterable<Uint8Array>;
}

function plan(config: LongcatConfig, opts: { fp8: boolean; mtp: boolean; seed: number; agree?: Agreement }): PlannedTensor[] {
  const req = requiredTensors(config, { fp8: opts.fp8, mtp: opts.mtp });
  const out: PlannedTensor[] = [];
  const H = config.hidden_size;
  const width = config.n_routed_experts + config.zero_expert_num;
  const agree = opts.agree;
  for (const [name, spec] of req) {
    const seed = streamSeed(name, opts.seed);
    const shape = spec.shape;
    const n = shape.reduce((a, b) => a * b, 1);
    let dtype: SafetensorsDType;
    let make: () => Iterable<Uint8Array>;
    const gen = (tab: Uint16Array | Uint8Array | Float32Array) => () => fromTable(n, tab, rng32(seed));
    const outScale = agree && isBlockOutput(name) ? AGREEMENT_OUTPUT_SCALE : 1;
    const weightName = spec.role === 'scale' ? spec.scaleOf! : name;
    const fixed = agree ? agreementValues(weightName, config, agree, streamSeed(weightName, opts.seed)) : null;
    if (fixed) {
      // Values the agreeing model sets: BF16, or block FP8 codes / scales of a quantized linear.
      const w = req.get(weightName)!;
      const blocks = () =>
        fp8Blocks(
          fixed,
          w.shape[0]!,
          w.shape[1]!,
          config.quantization_config?.quant_method === 'fp8' ? config.quantization_config.weight_block_size : [128, 128],
        );
      if (spec.role === 'scale') {
        dtype = 'F32';
        make = () => [new Uint8Array(blocks().scales.buffer)];
      } else if (spec.quantized) {
        dtype = 'F8_E4M3';
        make = () => [blocks().codes];
      } else {
        dtype = 'BF16';
        make = () => [bf16Bytes(fixed)];
      }
      out.push({ name, dtype, shape, nbytes: n * SAFETENSORS_DTYPE_SIZE[dtype], make });
      continue;
    }
    switch (spec.role) {
      case 'embedding':
        dtype = 'BF16';
        make = gen(table('bf16', 0, name.includes('lm_head') ? 1 / Math.sqrt(H) : 1));
        break;
      case 'norm':
        dtype = 'BF16';
        make = gen(table('bf16', 1, 0.05));
        break;
      case 'router':
        dtype = 'F32';
        make = gen(table('f32', 0, 1 / Math.sqrt(H)));
        break;
      case 'bias':
        dtype = 'F32';
        make = gen(table('f32', 0, 0.1 / width));
        break;
      case 'linear':
        if (spec.quantized) {
          dtype = 'F8_E4M3';
          make = gen(table('fp8', 0, 1));
        } else {
          dtype = 'BF16';
          make = gen(table('bf16', 0, outScale / Math.sqrt(shape[1]!)));
        }
        break;
      case 'scale': {
        // scale_inv = std * top / 448 (undoes the fp8 table), times a per-block jitter in [0.75, 1.25).
        dtype = 'F32';
        const w = req.get(spec.scaleOf!)!;
        const base = (outScale / Math.sqrt(w.shape[1]!)) * (quantiles()[65535]! / 448);
        make = () => {
          const next = rng32(seed);
          const f = new Float32Array(n);
          for (let i = 0; i < n; i++) f[i] = base * (0.75 + 0.5 * (next() / 4294967296));
          return [new Uint8Array(f.buffer)];
        };
        break;
      }
    }
    out.push({ name, dtype, shape, nbytes: n * SAFETENSORS_DTYPE_SIZE[dtype], make });
  }
  return out;
}

/**
 * Writes a random checkpoint. Layout: model-00001-of-00002.safetensors holds the embedding and
 * the first half of the bytes in canonical order, model-00002-of-00002.safetensors the rest
 * (lm_head, final norm, MTP), plus model.safetensors.index.json.
 */
export async function initRandom(opts: InitRandomOptions): Promise<InitRandomResult> {
  const fp8 = opts.fp8 ?? false;
  const mtp = opts.mtp ?? false;
  const seed = opts.seed ?? 0;
  if (!Number.isInteger(seed)) throw new ArgumentError('E_ARGUMENT', `init-random: seed must be an integer, got ${seed}`);
  const draftAgreement = opts.draftAgreement === undefined ? undefined : checkDraftAgreement(opts, mtp);
  const json = { ...presetConfigJson(opts.preset, { fp8, mtp }), ...(opts.overrides ?? {}) };
  const dir = path.resolve(opts.out);
  const config = parseConfig(json, path.join(dir, 'config.json'));
  if (draftAgreement !== undefined && config.tie_word_embeddings)
    throw new ArgumentError('E_ARGUMENT', 'init-random: draftAgreement needs an lm_head of its own (tie_word_embeddings false)');

  await mkdir(dir, { recursive: true });
  const tokJson = buildTokenizerJson(Math.min(config.vocab_size, 4096), opts.preset === 'lite' ? LITE_EXTRA_SPLITS : []);
  await writeFile(path.join(dir, 'config.json'), `${JSON.stringify(json, null, 2)}\n`);
  await writeFile(
    path.join(dir, 'generation_config.json'),
    `${JSON.stringify(
      { _from_model_config: true, bos_token_id: 1, eos_token_id: 2, pad_token_id: 3, transformers_version: '4.55.0' },
      null,
      2,
    )}\n`,
  );
  await writeFile(path.join(dir, 'tokenizer.json'), JSON.stringify(tokJson));
  await writeFile(
    path.join(dir, 'tokenizer_config.json'),
    `${JSON.stringify(buildTokenizerConfig(tokJson, config.max_position_embeddings), null, 2)}\n`,
  );
  await writeFile(
    path.join(dir, 'special_tokens_map.json'),
    `${JSON.stringify(
      { bos_token: '<longcat_s>', eos_token: '</longcat_s>', pad_token: '<longcat_pad>', unk_token: '<longcat_unk>' },
      null,
      2,
    )}\n`,
  );

  let agree: Agreement | undefined;
  if (draftAgreement !== undefined) {
    const plan = agreementPlanOf(textTokens(tokJson), config.vocab_size, draftAgreement, seed);
    agree = { plan, rows: unitRows(config.vocab_size, config.hidden_size, streamSeed('agreement rows', seed)) };
  }
  const planned = plan(config, { fp8, mtp, seed, agree });
  const totalBytes = planned.reduce((a, t) => a + t.nbytes, 0);
  // Lite's layout keeps the MTP module in model-auxiliary.safetensors, which the index does not list.
  const auxiliary = opts.preset === 'lite' ? planned.filter(t => t.name.startsWith('model.mtp.')) : [];
  const tensors = planned.filter(t => !auxiliary.includes(t));
  const shards: PlannedTensor[][] = [[], []];
  let acc = 0;
  for (const t of tensors) {
    // Keep a weight and its scale together; lm_head / final norm / MTP always go to shard 2.
    const late = t.name === 'lm_head.weight' || t.name === 'model.norm.weight' || t.name.startsWith('model.mtp.');
    const second = late || (acc >= totalBytes / 2 && !t.name.endsWith('_scale_inv')) || shards[1]!.length > 0;
    shards[second ? 1 : 0]!.push(t);
    acc += t.nbytes;
  }
  const names = ['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors'];
  const weightMap: Record<string, string> = {};
  let written = 0;
  for (const [i, shard] of shards.entries()) {
    const file = path.join(dir, names[i]!);
    const items: TensorToWrite[] = shard.map(t => ({ name: t.name, dtype: t.dtype, shape: t.shape, data: t.make }));
    await writeSafetensors(file, items, { format: 'pt' });
    for (const t of shard) weightMap[t.name] = names[i]!;
    written += shard.reduce((a, t) => a + t.nbytes, 0);
    opts.onProgress?.({ file, bytes: written, totalBytes });
  }
  const files = names.map(n => path.join(dir, n));
  if (auxiliary.length) {
    const file = path.join(dir, AUXILIARY_FILE);
    await writeSafetensors(
      file,
      auxiliary.map(t => ({ name: t.name, dtype: t.dtype, shape: t.shape, data: t.make })),
      { format: 'pt' },
    );
    files.push(file);
    written += auxiliary.reduce((a, t) => a + t.nbytes, 0);
    opts.onProgress?.({ file, bytes: written, totalBytes });
  }
  await writeFile(
    path.join(dir, 'model.safetensors.index.json'),
    `${JSON.stringify({ metadata: { total_size: acc }, weight_map: weightMap }, null, 2)}\n`,
  );
  return { dir, config, files, tensorCount: planned.length, totalBytes, draftAcceptance: agree?.plan.acceptance };
}
