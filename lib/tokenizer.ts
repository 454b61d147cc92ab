// The checkpoint's tokenizer (tokenizer.json, HF format) through @huggingface/tokenizers, with a
// streaming decoder that never emits half a UTF-8 character.
import path from 'node:path';
import { Tokenizer as HfTokenizer } from '@huggingface/tokenizers';
import { ArgumentError, CheckpointError, ConfigError, showValue } from './errors.js';
import { readRegularText } from './files.js';
import { type TokenizerConfig, chatTemplateOf } from './chat.js';

export interface EncodeOptions {
  /** Let the tokenizer's post-processor add its special tokens (BOS...). Default false. */
  addSpecial?: boolean;
  /**
   * [start, end) spans of `text` whose special-token text stays text: encoded by the model's own
   * vocabulary like any other characters, never as the special token's id (user content that
   * writes an end-of-turn marker must not end its turn). Outside them special tokens are parsed.
   */
  literal?: readonly (readonly [number, number])[];
}

export interface DecodeOptions {
  /** Drop special tokens (BOS, EOS, PAD, ...). Default false. */
  skipSpecial?: boolean;
}

/** Turns token ids into text incrementally; holds back incomplete multi-byte sequences. */
export interface StreamDecoder {
  /** Adds token ids; returns the text that is now complete (possibly ''). */
  push(ids: number | readonly number[]): string;
  /** Returns whatever is still held back (an incomplete sequence becomes U+FFFD), and resets. */
  flush(): string;
}

export interface LongcatTokenizer {
  encode(text: string, opts?: EncodeOptions): number[];
  decode(ids: readonly number[], opts?: DecodeOptions): string;
  decoder(opts?: DecodeOptions): StreamDecoder;
  /** Ids that end generation (generation_config.json eos_token_id, else the tokenizer's eos_token). */
  readonly eosIds: readonly number[];
  readonly bosId: number | null;
  readonly padId: number | null;
  /** 1 + the largest token id (model vocabulary + added tokens). */
  readonly vocabSize: number;
  /** Ids of the special added tokens. */
  readonly specialIds: readonly number[];
  tokenToId(token: string): number | undefined;
  idToToken(id: number): string | undefined;
  /** The tokenizer_config.json it was loaded with ({} when absent). */
  readonly config: TokenizerConfig;
  readonly chatTemplate: string | null;
}

/** Alias of LongcatTokenizer. */
export type Tokenizer = LongcatTokenizer;

function tokenContent(t: unknown): string | undefined {
  if (typeof t === 'string') return t;
  if (t && typeof t === 'object' && typeof (t as { content?: unknown }).content === 'string')
    return (t as { content: string }).content;
  return undefined;
}

async function readJsonFile(file: string, optional: boolean): Promise<unknown> {
  let text: string;
  try {
    text = await readRegularText(file);
  } catch (e) {
    if (e instanceof CheckpointError) throw e;
    if (optional && (e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new CheckpointError('E_CHECKPOINT', `${file}: cannot read (${(e as NodeJS.ErrnoException).code ?? 'error'})`, {
      cause: e,
    });
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new CheckpointError('E_CHECKPOINT', `${file}: not valid JSON (${(e as Error).message})`, { cause: e });
  }
}

/** Most single-token texts a tokenizer keeps memoized per skipSpecial setting (a few MB at most). */
const SINGLE_TOKEN_MEMO = 1 << 16;

/** Builds a tokenizer from parsed tokenizer.json / tokenizer_config.json / generation_config.json. */
export function createTokenizer(
  tokenizerJson: unknown,
  config: TokenizerConfig = {},
  generationConfig: { eos_token_id?: number | number[]; bos_token_id?: number; pad_token_id?: number } | null = null,
  file = 'tokenizer.json',
): LongcatTokenizer {
  let tok: HfTokenizer;
  try {
    // Decoding must round-trip: never "clean up" spaces unless the config asks for it.
    tok = new HfTokenizer(tokenizerJson as object, { clean_up_tokenization_spaces: false, ...config } as object);
  } catch (e) {
    throw new CheckpointError('E_CHECKPOINT', `${file}: not a tokenizer this engine can load (${(e as Error).message})`, {
      cause: e,
    });
  }
  const vocab = tok.get_vocab(true);
  let vocabSize = 0;
  for (const id of vocab.values()) vocabSize = Math.max(vocabSize, id + 1);
  const added = tok.get_added_tokens_decoder();
  const specialIds = [...added.entries()]
    .filter(([, t]) => t.special)
    .map(([id]) => id)
    .sort((a, b) => a - b);

  const idOf = (t: unknown): number | null => {
    const s = tokenContent(t);
    return s === undefined ? null : (tok.token_to_id(s) ?? null);
  };
  const isId = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
  /** generation_config's ids: absent or null -> null, anything but ids -> ConfigError naming the field. */
  const genIds = (field: 'eos_token_id' | 'bos_token_id' | 'pad_token_id'): number[] | null => {
    const v = generationConfig?.[field];
    if (v === undefined || v === null) return null;
    if (isId(v)) return [v];
    if (field === 'eos_token_id' && Array.isArray(v) && v.length > 0 && v.every(isId)) return v;
    throw Object.assign(
      new ConfigError(
        'E_CONFIG',
        `generation_config.json: field '${field}' must be a token id${field === 'eos_token_id' ? ' or a non-empty list of them' : ''}, got ${showValue(v)}`,
      ),
      { file: 'generation_config.json', field },
    );
  };
  const eosFromTok = idOf(config.eos_token);
  const eosIds = genIds('eos_token_id') ?? (eosFromTok !== null ? [eosFromTok] : []);
  const bosId = genIds('bos_token_id')?.[0] ?? idOf(config.bos_token);
  const padId = genIds('pad_token_id')?.[0] ?? idOf(config.pad_token);

  const checkIds = (ids: readonly number[], what: string) => {
    if (!Array.isArray(ids)) throw new ArgumentError('E_ARGUMENT', `${what}: ids must be an array of token ids`);
    for (const id of ids)
      if (!Number.isInteger(id) || id < 0 || id >= vocabSize)
        throw new ArgumentError('E_ARGUMENT', `${what}: token id ${id} is not in [0, ${vocabSize})`);
  };
  // Special-token texts, longest first so that a token containing another is matched whole.
  const specialTexts = specialIds
    .map(id => tok.id_to_token(id)!)
    .filter(s => s.length > 0)
    .sort((a, b) => b.length - a.length);
  /** The characters of `piece` through normalizer, pre-tokenizer and model: no added-token matching. */
  const encodeAsText = (piece: string): number[] => {
    const t = tok as unknown as {
      normalizer: ((s: string) => string) | null;
      pre_tokenizer: ((s: string, o: { section_index: number }) => string[]) | null;
      model: (pieces: string[]) => string[];
    };
    const norm = t.normalizer ? t.normalizer(piece) : piece;
    const words = t.pre_tokenizer ? t.pre_tokenizer(norm, { section_index: 0 }) : [norm];
    return t.model(words).map(s => {
      const id = tok.token_to_id(s);
      if (id === undefined)
        throw new CheckpointError('E_CHECKPOINT', `${file}: the tokenizer model produced '${s}', which has no id`);
      return id;
    });
  };
  /** Splits at special tokens outside the literal spans; pieces holding special text go through encodeAsText. */
  const encodeWithLiterals = (text: string, literal: readonly (readonly [number, number])[]): number[] => {
    const inLiteral = (a: number, b: number) => literal.some(([s, e]) => a < e && b > s);
    const ids: number[] = [];
    const flush = (piece: string) => {
      if (piece.length === 0) return;
      if (specialTexts.some(s => piece.includes(s))) ids.push(...encodeAsText(piece));
      else ids.push(...tok.encode(piece, { add_special_tokens: false }).ids);
    };
    let start = 0;
    for (let i = 0; i < text.length; ) {
      const hit = specialTexts.find(s => text.startsWith(s, i) && !inLiteral(i, i + s.length));
      if (hit === undefined) {
        i++;
        continue;
      }
      flush(text.slice(start, i));
      ids.push(tok.token_to_id(hit)!);
      i += hit.length;
      start = i;
    }
    flush(text.slice(start));
    return ids;
  };
  const decode = (ids: readonly number[], opts: DecodeOptions = {}): string => {
    checkIds(ids, 'decode');
    if (ids.length === 0) return '';
    return tok.decode(ids as number[], { skip_special_tokens: opts.skipSpecial ?? false });
  };
  // One token's text, memoized (per skipSpecial; decoding is a function of the ids alone): a stream
  // decoder decodes each new token once more alone when it becomes its window's prefix, one of its
  // two decodes per token -- per generated token of every stream of a served batch, on the JS thread
  // that shares the cores with the step. Cleared when full (a bound on its memory).
  const single = [new Map<number, string>(), new Map<number, string>()] as const;
  const decodeOne = (id: number, skipSpecial: boolean): string => {
    const memo = single[skipSpecial ? 1 : 0];
    const known = memo.get(id);
    if (known !== undefined) return known;
    if (memo.size >= SINGLE_TOKEN_MEMO) memo.clear();
    const text: string = tok.decode([id], { skip_special_tokens: skipSpecial });
    memo.set(id, text);
    return text;
  };

  return {
    encode(text: string, opts: EncodeOptions = {}): number[] {
      if (typeof text !== 'string') throw new ArgumentError('E_ARGUMENT', 'encode: text must be a string');
      if (text.length === 0 && !opts.addSpecial) return [];
      const literal = opts.literal ?? [];
      const injected = literal.some(([a, b]) => specialTexts.some(s => text.slice(a, b).includes(s)));
      if (!injected) return tok.encode(text, { add_special_tokens: opts.addSpecial ?? false }).ids;
      if (opts.addSpecial) throw new ArgumentError('E_ARGUMENT', 'encode: addSpecial and literal spans cannot be combined');
      return encodeWithLiterals(text, literal);
    },
    decode,
    decoder(opts: DecodeOptions = {}): StreamDecoder {
      // Offsets scheme of text-generation-inference: decode a short window twice (with and
      // without the newest tokens) and emit the difference once it no longer ends in U+FFFD.
      let ids: number[] = [];
      let prefix = 0; // start of the window
      let read = 0; // tokens already turned into emitted text
      const skipSpecial = opts.skipSpecial ?? false;
      /** The text of ids[from, to) (ids checked when pushed). */
      const text = (from: number, to: number): string =>
        to - from === 1
          ? decodeOne(ids[from]!, skipSpecial)
          : to > from
            ? tok.decode(ids.slice(from, to), { skip_special_tokens: skipSpecial })
            : '';
      return {
        push(next: number | readonly number[]): string {
          const all = typeof next === 'number' ? [next] : [...next];
          for (const id of all)
            if (!Number.isInteger(id) || id < 0)
              throw new ArgumentError('E_ARGUMENT', `decoder.push: token id ${id} is not a non-negative integer`);
          // Model vocabularies are padded past the tokenizer's (131072 rows for LongCat-Flash):
          // a sampled padding id has no text.
          const add = all.filter(id => id < vocabSize);
          if (add.length === 0) return '';
          ids.push(...add);
          const prefixText = text(prefix, read);
          const newText = text(prefix, ids.length);
          if (newText.length > prefixText.length && !newText.endsWith('\uFFFD') && newText.startsWith(prefixText)) {
            const out = newText.slice(prefixText.length);
            prefix = read;
            read = ids.length;
            if (prefix > 0) {
              ids = ids.slice(prefix);
              read -= prefix;
              prefix = 0;
            }
            return out;
          }
          return '';
        },
        flush(): string {
          const prefixText = decode(ids.slice(prefix, read), opts);
          const newText = decode(ids.slice(prefix), opts);
          ids = [];
          prefix = read = 0;
          return newText.startsWith(prefixText) ? newText.slice(prefixText.length) : newText;
        },
      };
    },
    eosIds,
    bosId,
    padId,
    vocabSize,
    specialIds,
    tokenToId: t => tok.token_to_id(t),
    idToToken: id => tok.id_to_token(id),
    config,
    chatTemplate: chatTemplateOf(config),
  };
}

/** Loads tokenizer.json (+ tokenizer_config.json, generation_config.json when present) from `dir`. */
export async function loadTokenizer(dir: string): Promise<LongcatTokenizer> {
  const file = path.join(dir, 'tokenizer.json');
  const json = await readJsonFile(file, false);
  const config = ((await readJsonFile(path.join(dir, 'tokenizer_config.json'), true)) ?? {}) as TokenizerConfig;
  const gen = (await readJsonFile(path.join(dir, 'generation_config.json'), true)) as
    | Parameters<typeof createTokenizer>[2]
    | undefined;
  return createTokenizer(json, config, gen ?? null, file);
}
