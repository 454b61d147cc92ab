// The N-gram embedding section of config.json (LongCat-Flash-Lite, SPEC-LITE 1.1, 2.1, 3.1): its three
// fields validated, the sizes derived from them (tables, moduli, widths), the tensors it adds to a
// checkpoint and their parameter counts. Kept apart from config.ts so the Chat config stays as it is.
import { ConfigError, showValue } from './errors.js';

/** The N-gram embedding of a longcat_flash_ngram config. */
export interface NgramConfig {
  /** ngram_vocab_size_ratio r: each table has r * vocab_size + 2 i + 1 rows. */
  vocabSizeRatio: number;
  /** emb_neighbor_num N: n-gram orders 2..N (the unigram is the ordinary embedding). */
  neighborNum: number;
  /** emb_split_num K: hash variants per order. */
  splitNum: number;
  /** The boundary token of the id computation: config.eos_token_id (one id). */
  eosId: number;
}

/** The config.json field names of the N-gram section. */
export const NGRAM_CONFIG_KEYS = ['ngram_vocab_size_ratio', 'emb_neighbor_num', 'emb_split_num'] as const;

/** Sizes derived from an NgramConfig (SPEC-LITE 3.1). */
export interface NgramDims {
  /** E = K * (N - 1) sub-tables, order-major: table i has order 2 + floor(i / K). */
  tables: number;
  /** d = hidden / E: the width of every table (rows are projected to hidden by post_projs). */
  dim: number;
  /** rows of table i = its modulus: r * vocab + 2 i + 1. */
  moduli: number[];
  /** n-gram order of table i. */
  orders: number[];
  /** The raw token ids a sequence must remember: N - 1. */
  context: number;
  eosId: number;
  vocab: number;
}

export function ngramDims(ng: NgramConfig, hidden: number, vocab: number): NgramDims {
  const tables = ng.splitNum * (ng.neighborNum - 1);
  const base = ng.vocabSizeRatio * vocab;
  return {
    tables,
    dim: hidden / tables,
    moduli: Array.from({ length: tables }, (_, i) => base + 2 * i + 1),
    orders: Array.from({ length: tables }, (_, i) => 2 + Math.floor(i / ng.splitNum)),
    context: ng.neighborNum - 1,
    eosId: ng.eosId,
    vocab,
  };
}

/** The file of LongCat-Flash-Lite's MTP tensors, beside the shards and not in the index (SPEC-LITE 2.2). */
export const AUXILIARY_FILE = 'model-auxiliary.safetensors';

export const ngramTableName = (i: number) => `model.ngram_embeddings.embedders.${i}.weight`;
export const ngramProjectionName = (i: number) => `model.ngram_embeddings.post_projs.${i}.weight`;

function ngramError(file: string, field: string, message: string): never {
  const e = new ConfigError('E_CONFIG', `${file}: field '${field}' ${message}`);
  Object.assign(e, { file, field });
  throw e;
}

const shown = (v: unknown) => (v === undefined ? 'nothing (field absent)' : showValue(v));

/**
 * Reads the N-gram fields of `o`. A longcat_flash_ngram config must have all three (the reference
 * switches the module on by ngram_vocab_size_ratio); a longcat_flash config must have none.
 * Every table id must fit int32 (the gather index) and hidden must split evenly into the tables.
 * @throws ConfigError (E_CONFIG) naming the field.
 */
export function parseNgramConfig(
  o: Record<string, unknown>,
  file: string,
  modelType: 'longcat_flash' | 'longcat_flash_ngram',
  hidden: number,
  vocab: number,
  eosIds: number[],
): NgramConfig | null {
  if (modelType !== 'longcat_flash_ngram') {
    for (const k of NGRAM_CONFIG_KEYS)
      if (o[k] !== undefined && o[k] !== null)
        ngramError(file, k, `is set (${shown(o[k])}), but only model_type "longcat_flash_ngram" has an N-gram embedding`);
    return null;
  }
  const int = (k: string, min: number): number => {
    const v = o[k];
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min)
      ngramError(file, k, `must be an integer >= ${min} (model_type "longcat_flash_ngram"), got ${shown(v)}`);
    return v;
  };
  const vocabSizeRatio = int('ngram_vocab_size_ratio', 1);
  const neighborNum = int('emb_neighbor_num', 2);
  const splitNum = int('emb_split_num', 1);
  const tables = splitNum * (neighborNum - 1);
  if (hidden % tables !== 0)
    ngramError(
      file,
      'emb_split_num',
      `times (emb_neighbor_num - 1) = ${tables} N-gram tables must divide hidden_size ${hidden} (each table is hidden / tables wide)`,
    );
  const lastRows = vocabSizeRatio * vocab + 2 * tables - 1;
  if (lastRows > 0x7fffffff)
    ngramError(
      file,
      'ngram_vocab_size_ratio',
      `times vocab_size gives tables of up to ${lastRows} rows, more than 2^31 - 1 (int32 row ids)`,
    );
  if (eosIds.length !== 1)
    ngramError(
      file,
      'eos_token_id',
      `must be one token id for the N-gram boundary rule (model_type "longcat_flash_ngram"), got ${JSON.stringify(eosIds)}`,
    );
  return { vocabSizeRatio, neighborNum, splitNum, eosId: eosIds[0]! };
}

/** The config.json fields of `ng` (none when null). */
export function ngramConfigToJson(ng: NgramConfig | null): Record<string, unknown> {
  if (!ng) return {};
  return { ngram_vocab_size_ratio: ng.vocabSizeRatio, emb_neighbor_num: ng.neighborNum, emb_split_num: ng.splitNum };
}

/** The N-gram tensors name -> shape (SPEC-LITE 2.1): tables [mod_i, d] and projections [hidden, d]; never FP8
 *  (the kernel reads BF16 or F32 only). */
export function ngramTensorShapes(
  ng: NgramConfig,
  hidden: number,
  vocab: number,
): Map<string, { shape: number[]; role: 'embedding' | 'linear' }> {
  const nd = ngramDims(ng, hidden, vocab);
  const m = new Map<string, { shape: number[]; role: 'embedding' | 'linear' }>();
  for (let i = 0; i < nd.tables; i++) m.set(ngramTableName(i), { shape: [nd.moduli[i]!, nd.dim], role: 'embedding' });
  for (let i = 0; i < nd.tables; i++) m.set(ngramProjectionName(i), { shape: [hidden, nd.dim], role: 'linear' });
  return m;
}

/** Parameters of the N-gram embedding: the tables (looked up, E rows per token) and the projections (all active). */
export function ngramParams(ng: NgramConfig | null, hidden: number, vocab: number): { tables: number; projections: number } {
  if (!ng) return { tables: 0, projections: 0 };
  const nd = ngramDims(ng, hidden, vocab);
  return { tables: nd.moduli.reduce((a, r) => a + r * nd.dim, 0), projections: nd.tables * hidden * nd.dim };
}
