// The user-facing model: loadModel -> Model -> Session.generate(), streamed or awaited.
import { native } from './native.js';
import { type Tensor, empty, toArray, toArrayAsync } from './tensor.js';
import { synchronizeAsync } from './device.js';
import { AbortError, ArgumentError, DisposedError, NumericError, showValue } from './errors.js';
import { loadTokenizer, type Tokenizer } from './tokenizer.js';
import { parseToolCalls, renderChatPrompt, type ChatMessage, type ToolCall, type ToolDefinition } from './chat.js';
import { loadCheckpointModel, modelMemory, type LoadModelOptions, type MadeWeights, type ModelMemory } from './model/load.js';
import type { LongcatModel, SamplingParams } from './model/model.js';
import type { WeightsPopulated } from './model/weights.js';
import type { Checkpoint } from './checkpoint.js';
import type { SequenceCache } from './kv-cache.js';
import { NO_ROOM, StepScheduler } from './scheduler.js';
import { type LogitAdjust, type SamplerExtras, type TokenLogprob, prepareRow, tokenLogprob } from './sampling.js';

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
  /**
   * Stop when one of these tokens is generated (stopReason 'stop'; the token is not returned, like
   * an end-of-sequence token). Token ids in [0, vocab).
   */
  stopTokenIds?: number[];
  /** Keep generating past end-of-sequence tokens (they are returned as ordinary tokens); default false. */
  ignoreEos?: boolean;
  /**
   * Repetition penalty (HF / llama.cpp / vLLM; default 1 = off, > 1 discourages repeats): the logit
   * x of every token in the prompt or the generated text becomes x / r when positive, x * r when
   * not. A finite number > 0.
   */
  repetitionPenalty?: number;
  /** OpenAI presence penalty in [-2, 2] (default 0): subtracted from the logit of every token
   *  generated at least once (the prompt does not count, as in vLLM). */
  presencePenalty?: number;
  /** OpenAI frequency penalty in [-2, 2] (default 0): times the number of times a token was
   *  generated, subtracted from its logit (the prompt does not count, as in vLLM). */
  frequencyPenalty?: number;
  /** OpenAI logit_bias: token id -> a number in [-100, 100] added to its logit before sampling
   *  (after the penalties; -100 practically bans a token, +100 practically forces it). */
  logitBias?: Record<number, number>;
  /**
   * Report log-probabilities (GenerateResult.logprobs): each generated token's, and this many most
   * likely alternatives (an integer in [0, 20]; 0 = only the chosen token's). They describe the
   * model's own distribution, softmax of the raw logits: before temperature, penalties, bias and
   * the top-k / top-p / min-p filters (vLLM's default).
   */
  logprobs?: number;
  /**
   * Called with each generated token as it is taken (before its text is emitted), with its
   * log-probabilities when `logprobs` is set: per-token detail for streaming consumers.
   */
  onToken?: (token: number, logprob?: TokenLogprob) => void;
  /**
   * Tools the model may call (OpenAI function definitions; chat prompts only): rendered by the
   * checkpoint's chat template when it renders tools, else by the built-in LongCat format (the
   * model card's tool block, SPEC 8.2). The calls in the output are parsed into
   * GenerateResult.toolCalls.
   */
  tools?: ToolDefinition[];
  signal?: AbortSignal;
  /**
   * Chat prompts: parse special-token text inside user and tool messages as special tokens
   * (default false: it stays text, so user content cannot end its turn and write the assistant's).
   * A string prompt is raw and always parsed.
   */
  parseSpecialTokens?: boolean;
  /**
   * Prompt tokens computed per forward step (default: loadModel's `prefillChunk`, 512). A long
   * prompt runs in chunks of this many tokens, the event loop free while each runs; an abort takes
   * effect at the next chunk boundary. While other sequences decode, a chunk is at most loadModel's
   * `prefillChunkWhileDecoding`.
   */
  prefillChunk?: number;
  /** Called after each prefill chunk has run: prompt tokens computed so far of `total`. */
  onPrefillChunk?: (progress: { done: number; total: number }) => void;
  /**
   * Speculative decoding with the checkpoint's MTP head (SPEC 6.3): each step verifies the pending
   * token and one draft in one forward pass and keeps 1 or 2 tokens. Greedy output is the plain
   * decoding's (up to top-two logit ties within the numeric noise); sampled output has plain
   * sampling's distribution (rejection sampling), not its exact tokens. `{ draftTokens: 1 }` is the
   * same; more drafts per step are not supported. Not combined with the penalties, logitBias or
   * logprobs (E_ARGUMENT naming them). Default false.
   */
  speculative?: boolean | { draftTokens?: number };
}

/** What speculative decoding did (GenerateResult.speculative). */
export interface SpeculativeStats {
  /** Drafts verified (one per step). */
  draftedTokens: number;
  acceptedTokens: number;
  /** acceptedTokens / draftedTokens. */
  acceptanceRate: number;
  /** Tokens kept per verify step: 1 + acceptanceRate. */
  meanAcceptedLength: number;
}

/**
 * Why a generation ended: an end-of-sequence token, a stop string or stop token id ('stop'), maxTokens or the context
 * limit ('length'), the AbortSignal, or 'cache': the model's shared KV cache had no block left for
 * the next token (other sessions hold them); the text so far is returned.
 */
export type StopReason = 'eos' | 'stop' | 'length' | 'abort' | 'cache';

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
  /** With `speculative`: drafts and acceptance. */
  speculative?: SpeculativeStats;
  /** With `logprobs`: one entry per generated token (`tokens[i]`'s at index i). */
  logprobs?: TokenLogprob[];
  /**
   * With `tools`: the calls the output holds (each well-formed `<longcat_tool_call>` span, see
   * parseToolCalls; `text` keeps them as written, a malformed span stays text only).
   */
  toolCalls?: ToolCall[];
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
  /** Positions 0..mtpValid-1 of the MTP head's cache are filled (speculative generations fill it). */
  private mtpValid = 0;
  private busy = false;

  constructor(private readonly owner: Model) {
    this.seq = owner.openSequence(this);
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
  generate(prompt: Prompt, opts: GenerateOptions = {}): Generation {
    return new Generation(emit => this.run(prompt, opts, emit));
  }

  private async run(prompt: Prompt, o: GenerateOptions, emit: (c: string) => void): Promise<GenerateResult> {
    if (this.busy) throw new ArgumentError('E_ARGUMENT', 'Session.generate: this session is already generating');
    this.busy = true;
    try {
      return await this.loop(prompt, o, emit);
    } finally {
      this.busy = false;
    }
  }

  private async loop(prompt: Prompt, o: GenerateOptions, emit: (c: string) => void): Promise<GenerateResult> {
    this.owner.checkLive('Session.generate');
    const { engine, tokenizer, scheduler: sched } = this.owner;
    const { maxTokens, temperature, stops, speculative, stopTokenIds, ignoreEos, adjust, logprobs } = checkGenerateOptions(
      o,
      engine.dims.vocab,
    );
    const chunk = o.prefillChunk ?? this.owner.prefillChunk;
    if (!Number.isInteger(chunk) || chunk < 1)
      throw new ArgumentError('E_ARGUMENT', `generate: prefillChunk must be an integer >= 1, got ${String(chunk)}`);
    if (o.onPrefillChunk !== undefined && typeof o.onPrefillChunk !== 'function')
      throw new ArgumentError('E_ARGUMENT', 'generate: onPrefillChunk must be a function');
    if (o.onToken !== undefined && typeof o.onToken !== 'function')
      throw new ArgumentError('E_ARGUMENT', 'generate: onToken must be a function');
    if (speculative && !engine.hasMtp)
      throw new ArgumentError(
        'E_ARGUMENT',
        `generate: speculative decoding drafts with the checkpoint's MTP head, and ${this.owner.checkpoint.dir} has none (no model.mtp.* tensors${this.owner.checkpoint.hasMtp ? ', or it was not loaded: loadModel mtp: false' : ''})`,
      );
    if (o.signal?.aborted) throw new AbortError('E_ABORTED', 'generate: aborted before it started', { cause: o.signal.reason });

    if (o.tools !== undefined && typeof prompt === 'string')
      throw new ArgumentError('E_ARGUMENT', 'generate: tools need a chat prompt (messages), not a string');
    const ids = this.encodePrompt(prompt, o.parseSpecialTokens ?? false, o.tools);
    if (ids.length === 0) throw new ArgumentError('E_ARGUMENT', 'generate: the prompt encodes to no tokens');

    // Reuse the longest cached prefix -- this session's own, or pages other sessions left in the
    // model's prefix cache; at least the last prompt token is recomputed for its logits.
    // Speculation also needs the MTP head's cache over the reused prefix.
    let common = 0;
    while (common < this.cached.length && common < ids.length - 1 && this.cached[common] === ids[common]) common++;
    if (speculative) common = Math.min(common, this.mtpValid);
    common = this.seq.truncate(common); // (a shared page it would end inside is dropped: never written)
    this.cached.length = common;
    this.mtpValid = Math.min(this.mtpValid, common);
    const shared = this.owner.prefixCache ? engine.cachedPrefix(ids, ids.length - 1, speculative, this.seq) : [];
    if (shared.length * engine.blockSize > common) {
      this.seq.truncate(0);
      engine.adoptPrefix(this.seq, shared, ids);
      common = this.seq.length;
      this.cached = ids.slice(0, common);
      this.mtpValid = speculative ? common : 0;
    }

    const t0 = performance.now();
    const sampled = empty([1], { dtype: 'int32', device: engine.device });
    const decoder = tokenizer.decoder();
    const out: number[] = [];
    const textOut = new GrowingText();
    let emitted = 0,
      stopReason = 'length' as StopReason;
    let ffnSum = 0,
      ffnCount = 0,
      tFirst = 0;
    const spec = { steps: 0, accepted: 0 };
    const hold = stops.reduce((m, s) => Math.max(m, s.length - 1), 0);
    const lps: TokenLogprob[] = [];
    // penalties / bias / log-probabilities: the history is the prompt, then the tokens generated so far
    const extras: SamplerExtras | undefined =
      adjust || logprobs !== undefined
        ? { adjust, logprobs, history: () => ({ tokens: [...ids, ...out], promptLength: ids.length }) }
        : undefined;
    /** Takes a generated token: false when the generation ends with it (or before it, at an EOS or a stop token id). */
    const take = (next: number, lp?: TokenLogprob): boolean => {
      if (!ignoreEos && tokenizer.eosIds.includes(next)) {
        stopReason = 'eos';
        return false;
      }
      if (stopTokenIds.has(next)) {
        stopReason = 'stop';
        return false;
      }
      out.push(next);
      if (lp) lps.push(lp);
      o.onToken?.(next, lp);
      const before = textOut.length;
      textOut.append(decoder.push(next));
      // a stop string found now ends after `before` (none was in the text before it)
      const hit = textOut.firstStop(stops, Math.max(0, before - hold));
      if (hit >= 0) {
        textOut.truncate(hit);
        if (textOut.length > emitted) emit(textOut.slice(emitted));
        emitted = textOut.length;
        stopReason = 'stop';
        return false;
      }
      const safe = textOut.length - hold;
      if (safe > emitted) {
        emit(textOut.slice(emitted, safe));
        emitted = safe;
      }
      textOut.keepBefore(emitted - hold); // the next stop search starts at or after it
      return out.length < maxTokens;
    };
    /** Queues the draw of the token after the last row of `logits` into `sampled`. */
    const draw = (logits: Tensor) =>
      native.sample(null, sampled, logits, temperature, o.topK ?? 0, o.topP ?? 1, o.minP ?? 0, o.seed ?? 0, this.cached.length);
    /** Samples the token after the last row of `logits` (disposed), checking that it is finite. */
    const sample = async (logits: Tensor, step: number): Promise<{ next: number; lp?: TokenLogprob }> => {
      const raw = extras ? prepareRow(logits, extras) : null;
      draw(logits);
      const next = (await toArrayAsync(sampled))[0]!;
      const lp = raw ? await tokenLogprob(raw, sampled, logprobs!) : undefined;
      if (raw && raw !== logits) raw.dispose();
      const nextLogit = logitAt(logits, next);
      logits.dispose();
      this.owner.checkLive('Session.generate'); // disposed while this step ran
      checkFinite(next, nextLogit, step, this.cached.length);
      return { next, lp };
    };

    let pending: number[] = ids.slice(common);
    const prefillTotal = pending.length;
    try {
      // The generation proper; it returns where it ends (stopReason says why).
      const generation = async () => {
        if (maxTokens === 0) return;
        // The prompt: a long one runs in chunks, awaited one by one: the event loop stays free, and
        // an abort stops the prefill at the next chunk boundary. With speculation the MTP head's
        // cache is filled along (pairs of each position's hidden state and the token after it).
        if (this.seq.length + pending.length > this.seq.maxContext) this.seq.reserve(pending.length); // E_CONTEXT, before any work
        let next = -1,
          draft = -1,
          firstLogprob: TokenLogprob | undefined;
        while (pending.length > 0) {
          if (o.signal?.aborted) {
            stopReason = 'abort';
            return;
          }
          // One chunk per scheduler round: other sessions' decode steps run between chunks, and
          // while they run the scheduler caps the chunk (maxTokens: loadModel's
          // prefillChunkWhileDecoding), since it stalls each of them for its own time. In order
          // (the scheduler says when), the chunk is queued behind the decode steps still running
          // instead of waiting for them, and is waited for after the scheduler's turn (the last
          // chunk's first token too, where it needs no host work: no penalties, bias,
          // log-probabilities or draft): the rounds after it go on, queued behind it.
          let chunkDone = null as Promise<unknown> | null,
            firstRead = null as Promise<Uint8Array[]> | null,
            last = false as boolean;
          await sched.exclusive(async (inOrder, maxTokens) => {
            this.owner.checkLive('Session.generate');
            const part = pending.slice(0, Math.min(chunk, maxTokens)),
              start = this.cached.length;
            last = part.length === pending.length;
            const r = engine.forward([this.seq], [part], { mode: 'prefill', hidden: speculative, inOrder });
            this.cached.push(...part);
            pending = pending.slice(part.length);
            try {
              if (!last) {
                r.logits.dispose();
                // pairs of positions start.. whose next token is in the prompt: all of this chunk's
                if (r.hidden) this.mtpPrefill([...part.slice(1), pending[0]!], start, r.hidden).dispose();
                // queued now, right behind the chunk: it takes the chunk's errors, not a later step's
                const done = synchronizeAsync(engine.device);
                if (!inOrder) return await done;
                done.catch(() => {}); // (awaited below)
                chunkDone = done;
                return;
              }
              if (inOrder && !extras && !r.hidden && r.logits.dtype === 'f32') {
                try {
                  draw(r.logits);
                  // queued right behind the chunk: the read takes its errors (one per stream: the wait too)
                  firstRead = native.readAsync(null, [sampled, r.logits]);
                  chunkDone = Promise.all([firstRead, synchronizeAsync(engine.device)]);
                  chunkDone.catch(() => {}); // (awaited below)
                } finally {
                  r.logits.dispose(); // (the queued read keeps it)
                }
                return;
              }
              ({ next, lp: firstLogprob } = await sample(r.logits, 0));
              if (r.hidden) draft = await this.firstDraft([...part.slice(1), next], start, r.hidden);
            } finally {
              r.hidden?.dispose();
            }
          });
          if (chunkDone) await chunkDone;
          this.owner.checkLive('Session.generate');
          if (firstRead) {
            const [id, logits] = await firstRead;
            next = new Int32Array(id!.buffer, id!.byteOffset, 1)[0]!;
            checkFinite(
              next,
              new Float32Array(logits!.buffer, logits!.byteOffset, logits!.byteLength / 4)[next]!,
              0,
              this.cached.length,
            );
          }
          if (!last) o.onPrefillChunk?.({ done: prefillTotal - pending.length, total: prefillTotal });
        }
        o.onPrefillChunk?.({ done: prefillTotal, total: prefillTotal });
        if (this.owner.prefixCache) this.seq.publish(this.cached, this.mtpValid); // the prompt's pages, for later prompts that share them
        tFirst = performance.now();
        if (!take(next, firstLogprob)) return;
        await yieldToEventLoop();

        // Each step waits for its turn in the model's scheduler, batched with the other sessions'.
        // Speculation stops for good at the context limit or a full KV cache (the head's cache would lag).
        let speculating = speculative;
        const sampling = samplingOf(o, temperature);
        // the tokens that end the generation when sampled (a pipelined round launches no step after them)
        const ends = new Set<number>([...(ignoreEos ? [] : tokenizer.eosIds), ...stopTokenIds]);
        try {
          for (let step = 1; ; step++) {
            if (o.signal?.aborted) {
              stopReason = 'abort';
              break;
            }
            speculating &&= this.seq.canReserve(2);
            const r = speculating ? await sched.speculate(this.seq, next, draft, sampling) : null;
            this.owner.checkLive('Session.generate');
            if (r === NO_ROOM) {
              speculating = false; // the other sessions hold the blocks: go on one token at a time
              continue;
            }
            if (r) {
              // One verify + accept + draft step: 1 + accepted tokens.
              const n = r.accepted;
              spec.steps++;
              spec.accepted += n;
              ffnSum += r.ffnSum;
              ffnCount += r.ffnCount;
              this.cached.push(next, ...r.tokens.slice(0, n));
              this.mtpValid = this.cached.length;
              draft = r.draft;
              let taken = 0;
              for (const t of r.tokens) {
                next = t;
                taken++;
                if (!take(t)) break;
              }
              if (stopReason === 'eos' || stopReason === 'stop' || out.length >= maxTokens) {
                // Ended inside the committed tokens: the cache keeps what precedes the last one taken.
                const keep = this.seq.truncate(this.cached.length - (r.tokens.length - taken));
                this.cached.length = keep;
                this.mtpValid = Math.min(this.mtpValid, keep);
                break;
              }
              await yieldToEventLoop();
            } else {
              // The context limit ends a generation like maxTokens does; so does a KV cache with no
              // block left for the next token, which other sessions hold ('cache': the text so far is
              // kept). (The scheduler may hold this sequence's next step launched already: this.cached,
              // not this.seq.length, counts the tokens in the cache.)
              if (this.cached.length + 1 > this.seq.maxContext) break;
              const d = await sched.decode(this.seq, next, sampling, extras, {
                more: out.length + 1 < maxTokens,
                left: maxTokens - out.length - 1,
                ends,
              });
              this.owner.checkLive('Session.generate');
              if (d === NO_ROOM) {
                stopReason = 'cache';
                break;
              }
              this.cached.push(next);
              ffnSum += d.ffnSum;
              ffnCount += d.ffnCount;
              // (no turn of the event loop between steps: the scheduler's round has one, and a
              // setImmediate per token of every stream was a large part of a 64-stream step's JS;
              // so a reader that aborted on the last chunk is heard here, before the new token)
              if (o.signal?.aborted) {
                stopReason = 'abort';
                break;
              }
              checkFinite(d.next, d.logit, step, this.cached.length);
              next = d.next;
              if (!take(next, d.logprob)) break;
            }
          }
        } finally {
          sched.release(this.seq); // a step launched ahead for this sequence is dropped
        }
      };
      await generation();
      if (stopReason !== 'stop') {
        textOut.append(decoder.flush());
        if (textOut.length > emitted) emit(textOut.slice(emitted));
      }
      if (this.owner.prefixCache) this.seq.publish(this.cached, this.mtpValid); // and the answer's, for the next turn of a copy of this chat
    } finally {
      sampled.dispose();
    }
    const t1 = performance.now();
    const prefillTokens = Math.min(this.cached.length - common, prefillTotal); // (fewer when aborted in the prefill)
    const decodeSteps = Math.max(0, out.length - 1 + (stopReason === 'eos' ? 1 : 0));
    return {
      text: textOut.toString(),
      tokens: out,
      stopReason,
      promptTokens: ids.length,
      prefillTokens,
      completionTokens: out.length,
      timeToFirstTokenMs: tFirst ? tFirst - t0 : 0,
      prefillTokensPerSecond: tFirst ? prefillTokens / ((tFirst - t0) / 1000) : 0,
      tokensPerSecond: decodeSteps > 0 && t1 > tFirst ? decodeSteps / ((t1 - tFirst) / 1000) : 0,
      avgFfnExpertsPerToken: ffnCount ? ffnSum / ffnCount : 0,
      ...(speculative
        ? {
            speculative: {
              draftedTokens: spec.steps,
              acceptedTokens: spec.accepted,
              acceptanceRate: spec.steps ? spec.accepted / spec.steps : 0,
              meanAcceptedLength: spec.steps ? 1 + spec.accepted / spec.steps : 0,
            },
          }
        : {}),
      ...(logprobs !== undefined ? { logprobs: lps } : {}),
      ...(o.tools?.length ? { toolCalls: parseToolCalls(textOut.toString()).toolCalls } : {}),
    };
  }

  /** The MTP head over prompt positions start.. (the chunk's hidden states, `next` the token after
   *  each): fills its cache; returns the last row's draft logits. */
  private mtpPrefill(next: number[], start: number, hidden: Tensor): Tensor {
    const h = hidden.shape[0] === next.length ? hidden : hidden.narrow(0, next.length);
    try {
      return this.owner.engine.mtp([this.seq], [next], [start], h);
    } finally {
      if (h !== hidden) h.dispose();
      this.mtpValid = start + next.length;
    }
  }

  /** The first draft: the MTP head over the last prompt chunk, ending with the sampled token. */
  private async firstDraft(next: number[], start: number, hidden: Tensor): Promise<number> {
    const logits = this.mtpPrefill(next, start, hidden);
    const id = empty([1], { dtype: 'int32', device: logits.device });
    try {
      native.sample(null, id, logits, 0, 0, 1, 0, 0, 0);
      return (await toArrayAsync(id))[0]!;
    } finally {
      id.dispose();
      logits.dispose();
    }
  }

  private encodePrompt(prompt: Prompt, parseSpecial: boolean, tools?: ToolDefinition[]): number[] {
    const { tokenizer } = this.owner;
    if (typeof prompt === 'string') return tokenizer.encode(prompt);
    if (!Array.isArray(prompt)) return checkPromptTokens(prompt, this.owner.engine.dims.vocab);
    const chat = renderChatPrompt(this.owner.checkpoint.dir, prompt, {
      addGenerationPrompt: true,
      tokenizerConfig: tokenizer.config,
      ...(tools ? { tools } : {}),
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

  /** Frees the session's KV-cache blocks (a session dropped without dispose() frees them when
   *  it is garbage-collected; model.dispose() frees every session's). */
  dispose() {
    this.owner.closeSequence(this, this.seq);
    this.cached = [];
  }
  [Symbol.dispose]() {
    this.dispose();
  }
}

/** What generate continues: raw text, a chat (rendered with the checkpoint's template), or token ids as they are. */
export type Prompt = string | ChatMessage[] | { tokens: readonly number[] };

/** A token-level prompt's ids, each checked against the model's vocabulary. */
function checkPromptTokens(p: { tokens: readonly number[] }, vocab: number): number[] {
  if (typeof p !== 'object' || p === null || !Array.isArray(p.tokens))
    throw new ArgumentError(
      'E_ARGUMENT',
      `generate: the prompt must be a string, a message array or { tokens: number[] }, got ${showValue(p)}`,
    );
  p.tokens.forEach((t, i) => {
    if (!Number.isInteger(t) || t < 0 || t >= vocab)
      throw new ArgumentError('E_ARGUMENT', `generate: prompt tokens[${i}] = ${showValue(t)} is not a token id in [0, ${vocab})`);
  });
  return [...p.tokens];
}

/** Every option checked before any work, with a typed error naming it (token ids against `vocab`). */
function checkGenerateOptions(o: GenerateOptions, vocab: number) {
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
  const sp = o.speculative ?? false;
  if (typeof sp !== 'boolean' && (typeof sp !== 'object' || sp === null || Array.isArray(sp)))
    throw bad('speculative', 'true, false or { draftTokens: 1 }', sp);
  if (typeof sp === 'object' && sp.draftTokens !== undefined && sp.draftTokens !== 1)
    throw bad('speculative.draftTokens', '1 (one MTP draft per step; more are not supported)', sp.draftTokens);
  const isToken = (x: unknown) => Number.isInteger(x) && (x as number) >= 0 && (x as number) < vocab;
  const tokenWant = `a token id (an integer in [0, ${vocab}))`;
  const stopIds = o.stopTokenIds ?? [];
  if (!Array.isArray(stopIds)) throw bad('stopTokenIds', `an array of token ids (integers in [0, ${vocab}))`, stopIds);
  stopIds.forEach((t, i) => {
    if (!isToken(t)) throw bad(`stopTokenIds[${i}]`, tokenWant, t);
  });
  const ignoreEos = o.ignoreEos ?? false;
  if (typeof ignoreEos !== 'boolean') throw bad('ignoreEos', 'true or false', ignoreEos);
  const repetition = num('repetitionPenalty', 1, 'a finite number > 0', x => Number.isFinite(x) && x > 0);
  const presence = num('presencePenalty', 0, 'a number in [-2, 2]', x => x >= -2 && x <= 2);
  const frequency = num('frequencyPenalty', 0, 'a number in [-2, 2]', x => x >= -2 && x <= 2);
  const lb = o.logitBias ?? {};
  if (typeof lb !== 'object' || lb === null || Array.isArray(lb))
    throw bad('logitBias', 'an object of token id -> number in [-100, 100]', lb);
  const bias: [number, number][] = Object.entries(lb).map(([key, v]) => {
    const id = /^(0|[1-9][0-9]*)$/.test(key) ? Number(key) : Number.NaN;
    if (!isToken(id)) throw bad(`logitBias key '${key}'`, tokenWant, key);
    if (typeof v !== 'number' || !(v >= -100 && v <= 100)) throw bad(`logitBias[${key}]`, 'a number in [-100, 100]', v);
    return [id, v];
  });
  const logprobs = o.logprobs;
  if (logprobs !== undefined && (typeof logprobs !== 'number' || !Number.isInteger(logprobs) || logprobs < 0 || logprobs > 20))
    throw bad('logprobs', 'an integer in [0, 20] (the top alternatives to report per token)', logprobs);
  const adjust: LogitAdjust | null =
    repetition !== 1 || presence !== 0 || frequency !== 0 || bias.length > 0 ? { repetition, presence, frequency, bias } : null;
  if (sp !== false && (adjust || logprobs !== undefined)) {
    const asked = (
      [
        ['repetitionPenalty', repetition !== 1],
        ['presencePenalty', presence !== 0],
        ['frequencyPenalty', frequency !== 0],
        ['logitBias', bias.length > 0],
        ['logprobs', logprobs !== undefined],
      ] as const
    )
      .filter(([, on]) => on)
      .map(([name]) => name);
    throw new ArgumentError(
      'E_ARGUMENT',
      `generate: speculative decoding cannot be combined with ${asked.join(', ')} (its verify step samples inside a captured graph without them); drop one or the other`,
    );
  }
  return {
    maxTokens,
    temperature,
    stops: (o.stop ?? []).filter(s => s.length > 0),
    speculative: sp !== false,
    stopTokenIds: new Set(stopIds),
    ignoreEos,
    adjust,
    logprobs,
  };
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

/** A sampled token whose logit is not finite means its row had no usable logit (see logitAt). */
function checkFinite(token: number, logit: number, step: number, cached: number) {
  if (!Number.isFinite(logit))
    throw new NumericError(
      'E_NUMERIC',
      `generate: the logits at step ${step} (position ${cached - 1}) are not finite (token ${token} has logit ${logit}): NaN or infinite weights, scales or activations`,
    );
}

function samplingOf(o: GenerateOptions, temperature: number): SamplingParams {
  return { temperature, topK: o.topK ?? 0, topP: o.topP ?? 1, minP: o.minP ?? 0, seed: o.seed ?? 0 };
}

/** The first position at or after `from` where one of `stops` starts, or -1. */
/**
 * A generation's text as it grows: the pieces that no stop search or emit reads any more (kept,
 * joined at the end), then the tail. One string grown by += and sliced every token is flattened
 * (copied whole) by every slice: quadratic in the text's length, per stream of a served batch, on
 * the JS thread that shares the cores with the step (and garbage for the collector). Offsets are
 * the whole text's.
 */
class GrowingText {
  private readonly kept: string[] = [];
  /** The text from offset `cut` on. */
  private tail = '';
  private cut = 0;
  /** The piece appended last (the end of the tail): sliced on its own, it is returned as it is. */
  private last = '';
  get length(): number {
    return this.cut + this.tail.length;
  }
  append(piece: string) {
    this.tail += piece;
    this.last = piece;
  }
  /** The first of `stops` starting at or after `from` (not before the kept text's end), or -1. */
  firstStop(stops: string[], from: number): number {
    const i = firstStop(this.tail, stops, from - this.cut);
    return i < 0 ? -1 : this.cut + i;
  }
  /** [from, to), not before the kept text's end. */
  slice(from: number, to = this.length): string {
    const end = this.length;
    if (to === end && from === end - this.last.length) return this.last; // (no stop string: every emit)
    return this.tail.slice(from - this.cut, to - this.cut);
  }
  /** Cuts the text at `length` (not before the kept text's end). */
  truncate(length: number) {
    this.tail = this.tail.slice(0, length - this.cut);
    this.last = '';
  }
  /** Nothing before `offset` is read again: moved out of the tail once that is worth a copy of it. */
  keepBefore(offset: number) {
    const n = offset - this.cut;
    if (n < KEEP_CHARS) return;
    this.kept.push(this.tail.slice(0, n));
    this.tail = this.tail.slice(n);
    this.cut = offset;
  }
  toString(): string {
    return this.kept.length ? this.kept.join('') + this.tail : this.tail;
  }
}
/** The tail's length past the last read offset before GrowingText moves that text out. */
const KEEP_CHARS = 256;

function firstStop(text: string, stops: string[], from: number): number {
  let best = -1;
  for (const s of stops) {
    const i = text.indexOf(s, from);
    if (i >= 0 && (best < 0 || i < best)) best = i;
  }
  return best;
}

/** loadModel's default `prefillChunkWhileDecoding` (bench/RESULTS.md session 18, wt18-chunk). */
export const DEFAULT_PREFILL_CHUNK_WHILE_DECODING = 128;

function checkChunkWhileDecoding(n: number) {
  if (!Number.isInteger(n) || n < 1)
    throw new ArgumentError('E_ARGUMENT', `loadModel: prefillChunkWhileDecoding must be an integer >= 1, got ${String(n)}`);
}

export class Model {
  /** Sequences of live sessions: model.dispose() frees their blocks at once. */
  private readonly sequences = new Set<SequenceCache>();
  /** Frees the blocks of a session dropped without dispose() once it is garbage-collected. */
  private readonly dropped = new FinalizationRegistry<SequenceCache>(seq => {
    seq.release();
    this.sequences.delete(seq);
  });
  private disposed = false;
  /** Runs every session's device work: their decode steps batched (continuous batching). */
  readonly scheduler: StepScheduler;

  /** @internal */
  constructor(
    readonly engine: LongcatModel,
    readonly checkpoint: Checkpoint,
    readonly tokenizer: Tokenizer,
    /** Prompt tokens per forward step of a prefill (generate's default `prefillChunk`). */
    readonly prefillChunk = 512,
    /** The cap on a prefill chunk while other sequences decode (loadModel's `prefillChunkWhileDecoding`). */
    prefillChunkWhileDecoding = DEFAULT_PREFILL_CHUNK_WHILE_DECODING,
    /** Whether sessions share the KV pages of identical prompt prefixes (loadModel's `prefixCache`). */
    readonly prefixCache = true,
    /** The weights made at load that a CPU model reads (for `memory`). */
    private readonly made: MadeWeights | null = null,
    /** The bytes of dense weights a CPU model reads from hugepage-advised copies (for `memory`). */
    private readonly hugePages = 0,
    /** What loadModel's `populate` faulted in (for `memory`). */
    private readonly populated: WeightsPopulated | null = null,
  ) {
    if (!Number.isInteger(prefillChunk) || prefillChunk < 1)
      throw new ArgumentError('E_ARGUMENT', `loadModel: prefillChunk must be an integer >= 1, got ${String(prefillChunk)}`);
    checkChunkWhileDecoding(prefillChunkWhileDecoding);
    this.scheduler = new StepScheduler(engine, prefillChunkWhileDecoding);
  }

  /** @internal A new sequence for `session`, released when the session is disposed, collected or the model disposed. */
  openSequence(session: Session): SequenceCache {
    this.checkLive('createSession');
    const seq = this.engine.newSequence();
    this.sequences.add(seq);
    this.dropped.register(session, seq, session);
    return seq;
  }

  /** @internal */
  closeSequence(session: Session, seq: SequenceCache) {
    this.dropped.unregister(session);
    this.sequences.delete(seq);
    seq.release();
  }

  /** @internal Throws E_DISPOSED once the model was disposed. */
  checkLive(what: string) {
    if (this.disposed) throw new DisposedError('E_DISPOSED', `${what}: the model was disposed`);
  }

  get device(): string {
    return this.engine.device;
  }
  get config() {
    return this.checkpoint.config;
  }
  /** Where the weights live: bytes uploaded per device (under expert parallelism each device's
   *  experts and its replica of the dense weights), bytes read from the mapped shards on the host
   *  (of which the N-gram tables, which are never uploaded), and the KV caches' bytes per device. */
  get memory(): ModelMemory {
    const e = this.engine;
    return modelMemory(
      this.checkpoint,
      e.device,
      e.uploaded,
      e.w.mtp !== null,
      e.kvCacheBytes,
      this.made,
      e.rankPools,
      e.expertPlacement,
      this.hugePages,
      this.populated,
    );
  }

  createSession(): Session {
    return new Session(this);
  }

  /**
   * Logits f32 [tokens.length, vocab] of one fresh sequence (every position), for tests; with
   * `prefillChunk`, computed that many tokens per forward step (the same logits).
   */
  forward(tokens: number[], opts: { prefillChunk?: number } = {}): Float32Array {
    this.checkLive('Model.forward');
    const chunk = opts.prefillChunk;
    if (chunk !== undefined && (!Number.isInteger(chunk) || chunk < 1))
      throw new ArgumentError('E_ARGUMENT', `Model.forward: prefillChunk must be an integer >= 1, got ${String(chunk)}`);
    const seq = this.engine.newSequence();
    try {
      const parts: Float32Array[] = [];
      const steps =
        chunk === undefined || tokens.length <= chunk
          ? [tokens]
          : Array.from({ length: Math.ceil(tokens.length / chunk) }, (_, i) => tokens.slice(i * chunk, (i + 1) * chunk));
      for (const part of steps) {
        const { logits } = this.engine.forward([seq], [part], { allLogits: true, mode: 'prefill' });
        parts.push(toArray(logits) as Float32Array);
        logits.dispose();
      }
      if (parts.length === 1) return parts[0]!;
      const r = new Float32Array(parts.reduce((a, p) => a + p.length, 0));
      let at = 0;
      for (const p of parts) {
        r.set(p, at);
        at += p.length;
      }
      return r;
    } finally {
      seq.release();
    }
  }

  /** Frees the weights, the KV cache and every session's blocks at once; sessions then throw E_DISPOSED. */
  dispose() {
    if (this.disposed) return;
    this.disposed = true;
    for (const seq of this.sequences) seq.release();
    this.sequences.clear();
    this.engine.dispose();
    this.checkpoint.close();
  }
  [Symbol.dispose]() {
    this.dispose();
  }
}

export async function loadModel(dir: string, opts: LoadModelOptions = {}): Promise<Model> {
  const chunk = opts.prefillChunk;
  if (chunk !== undefined && (!Number.isInteger(chunk) || chunk < 1))
    throw new ArgumentError('E_ARGUMENT', `loadModel: prefillChunk must be an integer >= 1, got ${String(chunk)}`);
  if (opts.prefillChunkWhileDecoding !== undefined) checkChunkWhileDecoding(opts.prefillChunkWhileDecoding);
  const { checkpoint, model, made, hugePages, populated } = await loadCheckpointModel(dir, opts);
  try {
    return new Model(
      model,
      checkpoint,
      await loadTokenizer(dir),
      opts.prefillChunk,
      opts.prefillChunkWhileDecoding,
      opts.prefixCache,
      made,
      hugePages,
      populated,
    );
  } catch (e) {
    model.dispose();
    checkpoint.close();
    throw e;
  }
}
