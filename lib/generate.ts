// The user-facing model: loadModel -> Model -> Session.generate(), streamed or awaited.
import { native } from './native.js';
import { type Tensor, empty, toArray } from './tensor.js';
import { AbortError, ArgumentError, NumericError, showValue } from './errors.js';
import { loadTokenizer, type Tokenizer } from './tokenizer.js';
import { renderChatPrompt, type ChatMessage } from './chat.js';
import { loadCheckpointModel, type LoadModelOptions } from './model/load.js';
import type { LongcatModel } from './model/model.js';
import type { Checkpoint } from './checkpoint.js';
import type { SequenceCache } from './kv-cache.js';

export interface GenerateOptions {
  /** Tokens to generate at most (default 256). */
  maxTokens?: number;
  /** 0 = greedy (default 0). */
  temperature?: number;
  topK?: number;
  topP?: number;
  minP?: number;
  /** Seed of the sampler (default 0): same seed, same prompt, same tokens. */
  seed?: number;
  /** Stop when the text contains one of these (the stop string is not returned). */
  stop?: string[];
  signal?: AbortSignal;
  /**
   * Chat prompts: parse special-token text inside user and tool messages as special tokens
   * (default false: it stays text, so user content cannot end its turn and write the assistant's).
   * A string prompt is raw and always parsed.
   */
  parseSpecialTokens?: boolean;
}

export type StopReason = 'eos' | 'stop' | 'length' | 'abort';

export interface GenerateResult {
  text: string;
  tokens: number[];
  stopReason: StopReason;
  promptTokens: number;
  /** Prompt tokens that had to be computed (the rest were already in the session's cache). */
  prefillTokens: number;
  completionTokens: number;
  timeToFirstTokenMs: number;
  prefillTokensPerSecond: number;
  /** Decode speed after the first token. */
  tokensPerSecond: number;
  /** FFN (non-zero) experts chosen per token and layer, averaged over the generated tokens. */
  avgFfnExpertsPerToken: number;
}

/** Both a promise of the full result and an async iterable of UTF-8-safe text chunks. */
export class Generation implements PromiseLike<GenerateResult>, AsyncIterable<string> {
  private started = false;
  private readonly chunks: string[] = [];
  private wake: (() => void) | null = null;
  private done = false;
  private readonly result: Promise<GenerateResult>;
  private resolveResult!: (r: GenerateResult) => void;
  private rejectResult!: (e: unknown) => void;

  constructor(private readonly run: (emit: (chunk: string) => void) => Promise<GenerateResult>) {
    this.result = new Promise((res, rej) => {
      this.resolveResult = res;
      this.rejectResult = rej;
    });
    this.result.catch(() => {}); // the error reaches whoever awaits or iterates
  }

  private start() {
    if (this.started) return;
    this.started = true;
    this.run(c => {
      this.chunks.push(c);
      this.wake?.();
    }).then(
      r => {
        this.done = true;
        this.resolveResult(r);
        this.wake?.();
      },
      e => {
        this.done = true;
        this.rejectResult(e);
        this.wake?.();
      },
    );
  }

  // biome-ignore lint/suspicious/noThenProperty: a Generation is awaitable on purpose (a promise of its result)
  then<A = GenerateResult, B = never>(
    ok?: ((r: GenerateResult) => A | PromiseLike<A>) | null,
    err?: ((e: unknown) => B | PromiseLike<B>) | null,
  ): Promise<A | B> {
    this.start();
    return this.result.then(ok, err);
  }

  async *[Symbol.asyncIterator](): AsyncIterator<string> {
    this.start();
    for (;;) {
      if (this.chunks.length) {
        yield this.chunks.shift()!;
        continue;
      }
      if (this.done) break;
      await new Promise<void>(r => (this.wake = r));
      this.wake = null;
    }
    await this.result; // rethrows a failure
  }
}

const yieldToEventLoop = () => new Promise<void>(r => setImmediate(r));

export class Session {
  private seq: SequenceCache;
  /** Tokens whose KV entries are in this session's cache, in order. */
  private cached: number[] = [];
  private busy = false;

  constructor(private readonly owner: Model) {
    this.seq = owner.engine.newSequence();
  }

  /** Number of tokens in the session's KV cache. */
  get length(): number {
    return this.cached.length;
  }

  /**
   * Generates a continuation of `prompt` (raw text) or of a chat (`messages`, rendered with the
   * checkpoint's chat template). The session keeps its cache: a prompt that extends the previous
   * one (a chat's next turn) only computes the new tokens.
   */
  generate(prompt: string | ChatMessage[], opts: GenerateOptions = {}): Generation {
    return new Generation(emit => this.run(prompt, opts, emit));
  }

  private async run(prompt: string | ChatMessage[], o: GenerateOptions, emit: (c: string) => void): Promise<GenerateResult> {
    if (this.busy) throw new ArgumentError('E_ARGUMENT', 'Session.generate: this session is already generating');
    this.busy = true;
    try {
      return await this.loop(prompt, o, emit);
    } finally {
      this.busy = false;
    }
  }

  private async loop(prompt: string | ChatMessage[], o: GenerateOptions, emit: (c: string) => void): Promise<GenerateResult> {
    const { engine, tokenizer } = this.owner;
    const { maxTokens, temperature, stops } = checkGenerateOptions(o);
    if (o.signal?.aborted) throw new AbortError('E_ABORTED', 'generate: aborted before it started', { cause: o.signal.reason });

    const ids = this.encodePrompt(prompt, o.parseSpecialTokens ?? false);
    if (ids.length === 0) throw new ArgumentError('E_ARGUMENT', 'generate: the prompt encodes to no tokens');

    // Reuse the longest cached prefix; at least the last prompt token is recomputed for its logits.
    let common = 0;
    while (common < this.cached.length && common < ids.length - 1 && this.cached[common] === ids[common]) common++;
    this.seq.truncate(common);
    this.cached.length = common;

    const t0 = performance.now();
    const sampled = empty([1], { dtype: 'int32', device: engine.device });
    const decoder = tokenizer.decoder();
    const out: number[] = [];
    let textOut = '',
      emitted = 0,
      stopReason: StopReason = 'length';
    let ffnSum = 0,
      ffnCount = 0,
      tFirst = 0;
    const hold = stops.reduce((m, s) => Math.max(m, s.length - 1), 0);
    let pending: number[] = ids.slice(common);
    try {
      for (let step = 0; ; step++) {
        // The context limit ends a generation like maxTokens does (a prompt that does not fit
        // at all still fails with E_CONTEXT below).
        if (out.length >= maxTokens || (step > 0 && this.seq.length + pending.length > this.seq.maxContext)) break;
        if (o.signal?.aborted) {
          stopReason = 'abort';
          break;
        }
        const { logits, nFfn } = engine.forward([this.seq], [pending], { collectRouting: step > 0 });
        this.cached.push(...pending);
        native.sample(null, sampled, logits, temperature, o.topK ?? 0, o.topP ?? 1, o.minP ?? 0, o.seed ?? 0, this.cached.length);
        const next = toArray(sampled)[0]!;
        const nextLogit = logitAt(logits, next);
        logits.dispose();
        for (const t of nFfn) {
          const c = toArray(t);
          for (const v of c) ffnSum += v;
          ffnCount += c.length;
          t.dispose();
        }
        if (!Number.isFinite(nextLogit))
          throw new NumericError(
            'E_NUMERIC',
            `generate: the logits at step ${step} (position ${this.cached.length - 1}) are not finite (token ${next} has logit ${nextLogit}): NaN or infinite weights, scales or activations`,
          );
        if (step === 0) tFirst = performance.now();
        if (tokenizer.eosIds.includes(next)) {
          stopReason = 'eos';
          break;
        }
        out.push(next);
        textOut += decoder.push(next);
        const hit = firstStop(textOut, stops);
        if (hit >= 0) {
          textOut = textOut.slice(0, hit);
          if (textOut.length > emitted) emit(textOut.slice(emitted));
          emitted = textOut.length;
          stopReason = 'stop';
          break;
        }
        const safe = textOut.length - hold;
        if (safe > emitted) {
          emit(textOut.slice(emitted, safe));
          emitted = safe;
        }
        pending = [next];
        await yieldToEventLoop();
      }
      if (stopReason !== 'stop') {
        textOut += decoder.flush();
        if (textOut.length > emitted) emit(textOut.slice(emitted));
      }
    } finally {
      sampled.dispose();
    }
    const t1 = performance.now();
    const prefillTokens = ids.length - common;
    const decodeSteps = Math.max(0, out.length - 1 + (stopReason === 'eos' ? 1 : 0));
    return {
      text: textOut,
      tokens: out,
      stopReason,
      promptTokens: ids.length,
      prefillTokens,
      completionTokens: out.length,
      timeToFirstTokenMs: tFirst ? tFirst - t0 : 0,
      prefillTokensPerSecond: tFirst ? prefillTokens / ((tFirst - t0) / 1000) : 0,
      tokensPerSecond: decodeSteps > 0 && t1 > tFirst ? decodeSteps / ((t1 - tFirst) / 1000) : 0,
      avgFfnExpertsPerToken: ffnCount ? ffnSum / ffnCount : 0,
    };
  }

  private encodePrompt(prompt: string | ChatMessage[], parseSpecial: boolean): number[] {
    const { tokenizer } = this.owner;
    if (typeof prompt === 'string') return tokenizer.encode(prompt);
    const chat = renderChatPrompt(this.owner.checkpoint.dir, prompt, {
      addGenerationPrompt: true,
      tokenizerConfig: tokenizer.config,
    });
    if (parseSpecial) return tokenizer.encode(chat.text);
    if (chat.literal === null) {
      const i = prompt.findIndex(
        m =>
          (m.role === 'user' || m.role === 'tool') && tokenizer.encode(m.content).some(id => tokenizer.specialIds.includes(id)),
      );
      if (i >= 0)
        throw new ArgumentError(
          'E_ARGUMENT',
          `generate: messages[${i}] (${prompt[i]!.role}) contains special-token text, and this chat template changes message contents, ` +
            'so it cannot be kept as plain text; remove it, or pass parseSpecialTokens: true to let it act as special tokens',
        );
      return tokenizer.encode(chat.text);
    }
    return tokenizer.encode(chat.text, { literal: chat.literal });
  }

  /** Frees the session's KV-cache blocks. */
  dispose() {
    this.seq.release();
    this.cached = [];
  }
  [Symbol.dispose]() {
    this.dispose();
  }
}

/** Every option checked before any work, with a typed error naming it. */
function checkGenerateOptions(o: GenerateOptions) {
  if (typeof o !== 'object' || o === null) throw new ArgumentError('E_ARGUMENT', 'generate: options must be an object');
  const bad = (name: string, want: string, got: unknown) =>
    new ArgumentError(
      'E_ARGUMENT',
      `generate: ${name} must be ${want}, got ${typeof got === 'string' ? `'${got}'` : typeof got === 'object' ? showValue(got) : String(got)}`,
    );
  const num = (name: keyof GenerateOptions, fallback: number, want: string, ok: (x: number) => boolean) => {
    const v = o[name] ?? fallback;
    if (typeof v !== 'number' || !ok(v)) throw bad(name, want, v);
    return v;
  };
  const maxTokens = num('maxTokens', 256, 'a non-negative integer', x => Number.isInteger(x) && x >= 0);
  const temperature = num('temperature', 0, 'a finite number >= 0', x => Number.isFinite(x) && x >= 0);
  num('topK', 0, 'a non-negative integer', x => Number.isInteger(x) && x >= 0);
  num('topP', 1, 'a number in [0, 1]', x => x >= 0 && x <= 1);
  num('minP', 0, 'a number in [0, 1]', x => x >= 0 && x <= 1);
  num('seed', 0, 'an integer in [0, 2^53)', x => Number.isSafeInteger(x) && x >= 0);
  if (o.stop !== undefined && (!Array.isArray(o.stop) || !o.stop.every(s => typeof s === 'string')))
    throw bad('stop', 'an array of strings', o.stop);
  return { maxTokens, temperature, stops: (o.stop ?? []).filter(s => s.length > 0) };
}

/**
 * The logit of the sampled token in a [1, V] row (one float read back). The sampler never picks a
 * NaN over a finite logit, so a non-finite value here means the row has no usable logit at all
 * (all NaN, or an infinity): checked every step instead of scanning the row.
 */
function logitAt(logits: Tensor, id: number): number {
  const flat = logits.view([-1]);
  const one = flat.narrow(id, 1);
  try {
    return toArray(one)[0]!;
  } finally {
    one.dispose();
    flat.dispose();
  }
}

function firstStop(text: string, stops: string[]): number {
  let best = -1;
  for (const s of stops) {
    const i = text.indexOf(s);
    if (i >= 0 && (best < 0 || i < best)) best = i;
  }
  return best;
}

export class Model {
  /** @internal */
  constructor(
    readonly engine: LongcatModel,
    readonly checkpoint: Checkpoint,
    readonly tokenizer: Tokenizer,
  ) {}

  get device(): string {
    return this.engine.device;
  }
  get config() {
    return this.checkpoint.config;
  }

  createSession(): Session {
    return new Session(this);
  }

  /** Logits f32 [tokens.length, vocab] of one fresh sequence (every position), for tests. */
  forward(tokens: number[]): Float32Array {
    const seq = this.engine.newSequence();
    try {
      const { logits } = this.engine.forward([seq], [tokens], { allLogits: true, mode: 'prefill' });
      const r = toArray(logits) as Float32Array;
      logits.dispose();
      return r;
    } finally {
      seq.release();
    }
  }

  dispose() {
    this.engine.dispose();
    this.checkpoint.close();
  }
  [Symbol.dispose]() {
    this.dispose();
  }
}

export async function loadModel(dir: string, opts: LoadModelOptions = {}): Promise<Model> {
  const { checkpoint, model } = await loadCheckpointModel(dir, opts);
  try {
    return new Model(model, checkpoint, await loadTokenizer(dir));
  } catch (e) {
    model.dispose();
    checkpoint.close();
    throw e;
  }
}
