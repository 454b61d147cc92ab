// An OpenAI-compatible HTTP server over a Model (fastify): /v1/chat/completions and /v1/completions
// (JSON or server-sent events), /v1/models, /health and /metrics (Prometheus text). Each request
// generates in its own Session (`n` sessions for n choices; concurrent requests are concurrent
// sessions, which the model decodes together), with the SDK's sampler options (penalties,
// logit_bias, logprobs in OpenAI's two shapes) and tool calls parsed out of the output; a slot limit with a bounded wait queue in front of them, OpenAI error objects
// with their status codes, client disconnects that abort the generation and free its KV blocks,
// and a graceful close that lets in-flight requests finish (or aborts them after a timeout).
import { randomUUID, timingSafeEqual } from 'node:crypto';
import type { Socket } from 'node:net';
import path from 'node:path';
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import type { GenerateOptions, GenerateResult, Generation, Model, Session, StopReason } from './generate.js';
import { parseToolCalls, TOOL_CALL_OPEN, type ChatMessage, type ToolCall, type ToolDefinition } from './chat.js';
import type { TokenLogprob } from './sampling.js';
import type { Tokenizer } from './tokenizer.js';
import { ArgumentError, LongcatError, showValue } from './errors.js';

export interface ServerOptions {
  /** Requests must send `Authorization: Bearer <apiKey>` (all but /health and /metrics). */
  apiKey?: string;
  /** Requests generating at once (default 16); more wait in the queue. */
  maxConcurrent?: number;
  /** Requests that may wait for a generation slot (default 64); one more gets 429. */
  maxQueue?: number;
  /** The id of the model in /v1/models and in responses (default: the checkpoint folder's name). */
  modelName?: string;
  /** Speculative decoding for requests that do not say (`speculative` in the body); default false. */
  speculative?: boolean;
  /** Tokens a /v1/completions request generates without max_tokens (default 16, as OpenAI's). */
  defaultCompletionTokens?: number;
  /**
   * After close() starts, in-flight requests may run this many milliseconds before they are aborted
   * (default: no limit: they finish).
   */
  shutdownTimeoutMs?: number;
  /** Largest request body in bytes (default 32 MiB). */
  bodyLimit?: number;
  /** fastify's logger option (default false). */
  logger?: boolean;
}

/** The fastify instance createServer returns, with the server's own state. */
export interface LongcatServer extends FastifyInstance {
  /** Requests generating now, and waiting for a slot. */
  readonly load: { running: number; queued: number };
  /** Aborts every in-flight and queued request now (close() then completes at once). */
  abortAll(): void;
  /** Resolves once no request is in flight (queued or generating), its session disposed. */
  idle(): Promise<void>;
}

/** An error answered as an OpenAI error object with `status`. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly type: string,
    readonly param: string | null = null,
    readonly code: string | null = null,
  ) {
    super(message);
  }
  get body() {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } };
  }
}

const invalid = (message: string, param: string | null, code: string | null = null) =>
  new ApiError(400, message, 'invalid_request_error', param, code);
/** Most choices (`n`) one request may ask for. */
const MAX_CHOICES = 16;
const unsupported = (what: string, param: string) =>
  invalid(`${what} is not supported yet by this server`, param, 'unsupported_parameter');

/** A request checked and turned into what Session.generate takes. */
interface Job {
  kind: 'chat' | 'text';
  prompt: string | ChatMessage[];
  options: GenerateOptions;
  /** Choices to generate (each in its own session; choice i samples with seed + i). */
  n: number;
  stream: boolean;
  includeUsage: boolean;
}

type Body = Record<string, unknown>;

const noop = () => {};

function isObject(v: unknown): v is Body {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** `body[name]` absent or null -> undefined; otherwise checked by `ok`, else a 400 naming it. */
function field<T>(body: Body, name: string, want: string, ok: (v: unknown) => boolean): T | undefined {
  const v = body[name];
  if (v === undefined || v === null) return undefined;
  if (!ok(v)) throw invalid(`'${name}' must be ${want}, got ${showValue(v, 80)}`, name, 'invalid_type');
  return v as T;
}

const isNumber = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v);
const inRange = (lo: number, hi: number) => (v: unknown) => isNumber(v) && v >= lo && v <= hi;
const isInt = (lo: number) => (v: unknown) => Number.isSafeInteger(v) && (v as number) >= lo;

/** The text of a message's content: a string, or an array of text parts (other parts: 400). */
function contentText(content: unknown, i: number): string {
  if (typeof content === 'string') return content;
  if (Array.isArray(content)) {
    return content
      .map((part, j) => {
        if (isObject(part) && part.type === 'text' && typeof part.text === 'string') return part.text;
        const type = isObject(part) && typeof part.type === 'string' ? `'${part.type}'` : showValue(part, 60);
        throw invalid(
          `messages[${i}].content[${j}]: only text parts are supported (this model reads text), got ${type}`,
          `messages[${i}].content`,
        );
      })
      .join('');
  }
  throw invalid(`messages[${i}].content must be a string or an array of text parts`, `messages[${i}].content`, 'invalid_type');
}

function checkMessages(v: unknown): ChatMessage[] {
  if (!Array.isArray(v) || v.length === 0)
    throw invalid("'messages' must be a non-empty array of { role, content }", 'messages', 'invalid_type');
  return v.map((m, i) => {
    if (!isObject(m)) throw invalid(`messages[${i}] must be an object { role, content }`, `messages[${i}]`, 'invalid_type');
    if (m.role === 'function')
      throw invalid(
        `messages[${i}]: the 'function' role is deprecated; send 'tool' messages`,
        `messages[${i}].role`,
        'unsupported_parameter',
      );
    // 'developer' is OpenAI's newer name for the system role.
    const role = m.role === 'developer' ? 'system' : m.role;
    if (role !== 'system' && role !== 'user' && role !== 'assistant' && role !== 'tool')
      throw invalid(
        `messages[${i}].role must be system, developer, user, assistant or tool, got ${showValue(m.role, 40)}`,
        `messages[${i}].role`,
      );
    if (role === 'tool') {
      if (typeof m.tool_call_id !== 'string')
        throw invalid(`messages[${i}]: a tool message needs its 'tool_call_id'`, `messages[${i}].tool_call_id`, 'invalid_type');
      return { role, content: contentText(m.content, i), toolCallId: m.tool_call_id };
    }
    if (role === 'assistant' && m.tool_calls !== undefined && m.tool_calls !== null) {
      const calls = m.tool_calls;
      const param = `messages[${i}].tool_calls`;
      if (!Array.isArray(calls)) throw invalid(`${param} must be an array`, param, 'invalid_type');
      const toolCalls = calls.map((c, j) => {
        const f = isObject(c) ? c.function : undefined;
        if (
          !isObject(c) ||
          c.type !== 'function' ||
          typeof c.id !== 'string' ||
          !isObject(f) ||
          typeof f.name !== 'string' ||
          typeof f.arguments !== 'string'
        )
          throw invalid(
            `${param}[${j}] must be { id, type: 'function', function: { name, arguments: string } }`,
            param,
            'invalid_type',
          );
        return { id: c.id, name: f.name, arguments: f.arguments };
      });
      const content = m.content === undefined || m.content === null ? '' : contentText(m.content, i);
      return toolCalls.length > 0 ? { role, content, toolCalls } : { role, content };
    }
    return { role, content: contentText(m.content, i) };
  });
}

/** The `tools` of a request: OpenAI function definitions. */
function checkTools(v: unknown): ToolDefinition[] {
  if (!Array.isArray(v)) throw invalid("'tools' must be an array of { type: 'function', function }", 'tools', 'invalid_type');
  return v.map((t, i) => {
    const f = isObject(t) ? t.function : undefined;
    if (!isObject(t) || t.type !== 'function' || !isObject(f) || typeof f.name !== 'string' || f.name === '')
      throw invalid(
        `tools[${i}] must be { type: 'function', function: { name, description?, parameters? } }`,
        'tools',
        'invalid_type',
      );
    if (f.description !== undefined && f.description !== null && typeof f.description !== 'string')
      throw invalid(`tools[${i}].function.description must be a string`, 'tools', 'invalid_type');
    if (f.parameters !== undefined && f.parameters !== null && !isObject(f.parameters))
      throw invalid(`tools[${i}].function.parameters must be a JSON schema object`, 'tools', 'invalid_type');
    const fn: ToolDefinition['function'] = { name: f.name };
    if (typeof f.description === 'string') fn.description = f.description;
    if (isObject(f.parameters)) fn.parameters = f.parameters;
    return { type: 'function', function: fn };
  });
}

/** Checks an OpenAI request body (every field it uses, and the ones it does not support). */
function parseJob(
  kind: 'chat' | 'text',
  body: unknown,
  model: Model,
  defaults: Required<Pick<ServerOptions, 'speculative' | 'defaultCompletionTokens'>>,
): Job {
  if (!isObject(body)) throw invalid('the request body must be a JSON object', null, 'invalid_type');
  field(body, 'model', 'a string', v => typeof v === 'string');
  if (body.model === undefined || body.model === null)
    throw invalid("'model' is required", 'model', 'missing_required_parameter');

  let prompt: string | ChatMessage[];
  if (kind === 'chat') {
    prompt = checkMessages(body.messages);
  } else {
    const p = body.prompt;
    if (typeof p === 'string') prompt = p;
    else if (Array.isArray(p) && p.length === 1 && typeof p[0] === 'string') prompt = p[0];
    else if (Array.isArray(p) && p.length > 1 && p.every(x => typeof x === 'string'))
      throw invalid(`'prompt' holds ${p.length} prompts; one prompt per request is supported`, 'prompt', 'unsupported_parameter');
    else if (Array.isArray(p) && p.length > 0 && p.every(x => typeof x === 'number' || Array.isArray(x)))
      throw unsupported('a prompt of token ids', 'prompt');
    else throw invalid("'prompt' must be a string (or an array of one string)", 'prompt', 'invalid_type');
  }

  // Tools (chat): 'auto' (the default) renders them and parses calls out of the output; 'none'
  // neither (the model is not told of them). A forced call is not supported.
  let tools: ToolDefinition[] = [];
  if (body.functions !== undefined && body.functions !== null)
    throw invalid("'functions' is deprecated; send 'tools'", 'functions', 'unsupported_parameter');
  if (body.tools !== undefined && body.tools !== null) {
    if (kind !== 'chat') throw invalid("'tools' needs /v1/chat/completions", 'tools', 'unsupported_parameter');
    tools = checkTools(body.tools);
  }
  const toolChoice = body.tool_choice ?? 'auto';
  if (toolChoice === 'none') tools = [];
  else if (toolChoice === 'required' || isObject(toolChoice))
    throw invalid(
      `'tool_choice' ${showValue(toolChoice, 60)} is not supported: a forced tool call is not implemented ('auto' and 'none' are)`,
      'tool_choice',
      'unsupported_parameter',
    );
  else if (toolChoice !== 'auto')
    throw invalid(`'tool_choice' must be 'auto' or 'none', got ${showValue(toolChoice, 60)}`, 'tool_choice', 'invalid_type');
  // What is not supported yet, refused by name rather than ignored.
  const n = field<number>(body, 'n', `an integer in [1, ${MAX_CHOICES}]`, v => isInt(1)(v) && (v as number) <= MAX_CHOICES) ?? 1;
  const bestOf = field<number>(body, 'best_of', 'an integer', isInt(1));
  if (bestOf !== undefined && bestOf !== n) throw unsupported("'best_of' other than n", 'best_of');
  // logprobs: chat takes a boolean and top_logprobs; text completions the number of alternatives.
  let logprobs: number | undefined;
  if (kind === 'chat') {
    const want = field<boolean>(body, 'logprobs', 'a boolean', v => typeof v === 'boolean');
    const top = field<number>(body, 'top_logprobs', 'an integer in [0, 20]', v => isInt(0)(v) && (v as number) <= 20);
    if (top !== undefined && !want) throw invalid("'top_logprobs' needs 'logprobs': true", 'top_logprobs');
    if (want) logprobs = top ?? 0;
  } else {
    logprobs = field<number>(body, 'logprobs', 'an integer in [0, 20]', v => isInt(0)(v) && (v as number) <= 20);
    if (field<boolean>(body, 'echo', 'a boolean', v => typeof v === 'boolean')) throw unsupported("'echo'", 'echo');
    if (field<string>(body, 'suffix', 'a string', v => typeof v === 'string')) throw unsupported("'suffix'", 'suffix');
  }
  const presencePenalty = field<number>(body, 'presence_penalty', 'a number in [-2, 2]', inRange(-2, 2));
  const frequencyPenalty = field<number>(body, 'frequency_penalty', 'a number in [-2, 2]', inRange(-2, 2));
  // repetition_penalty: an extension (vLLM's), 1 = off
  const repetitionPenalty = field<number>(body, 'repetition_penalty', 'a positive number', v => isNumber(v) && v > 0);
  const vocab = model.engine.dims.vocab;
  const bias = field<Body>(body, 'logit_bias', 'an object of token ids to numbers in [-100, 100]', isObject);
  let logitBias: Record<number, number> | undefined;
  for (const [key, value] of Object.entries(bias ?? {})) {
    const id = /^\d+$/.test(key) ? Number(key) : Number.NaN;
    if (!(id < vocab)) throw invalid(`'logit_bias' key ${showValue(key, 40)} is not a token id in [0, ${vocab})`, 'logit_bias');
    if (!inRange(-100, 100)(value))
      throw invalid(
        `'logit_bias' value of token ${key} must be a number in [-100, 100], got ${showValue(value, 40)}`,
        'logit_bias',
      );
    logitBias ??= {};
    logitBias[id] = value as number;
  }
  // stop_token_ids: an extension (vLLM's)
  const stopTokenIds = field<number[]>(
    body,
    'stop_token_ids',
    `an array of token ids in [0, ${vocab})`,
    v => Array.isArray(v) && v.every(t => isInt(0)(t) && t < vocab),
  );
  // ignore_eos: an extension (vLLM's): generate max_tokens tokens, past end-of-sequence tokens
  const ignoreEos = field<boolean>(body, 'ignore_eos', 'a boolean', v => typeof v === 'boolean') ?? false;
  const format = field<Body>(body, 'response_format', 'an object', isObject);
  if (format && format.type !== 'text') throw unsupported(`response_format ${showValue(format.type, 40)}`, 'response_format');

  const maxTokens =
    field<number>(body, 'max_completion_tokens', 'an integer >= 1', isInt(1)) ??
    field<number>(body, 'max_tokens', 'an integer >= 1', isInt(1)) ??
    // chat: until an end of sequence or the context limit (OpenAI's); text: OpenAI's 16
    (kind === 'chat' ? model.engine.maxContext : defaults.defaultCompletionTokens);
  const temperature = field<number>(body, 'temperature', 'a number in [0, 2]', inRange(0, 2)) ?? 1;
  const topP = field<number>(body, 'top_p', 'a number in [0, 1]', inRange(0, 1));
  // top_k: an extension (vLLM's); -1 and 0 both mean no limit.
  const topK = field<number>(body, 'top_k', 'an integer >= -1', isInt(-1));
  const minP = field<number>(body, 'min_p', 'a number in [0, 1]', inRange(0, 1));
  // Without a seed each request samples differently (as OpenAI's); with one, reproducibly.
  const seed = field<number>(body, 'seed', 'an integer in [0, 2^53)', isInt(0)) ?? Math.floor(Math.random() * 2 ** 32);
  const stopField = body.stop;
  let stop: string[] = [];
  if (typeof stopField === 'string') stop = [stopField];
  else if (Array.isArray(stopField) && stopField.every(s => typeof s === 'string')) stop = stopField;
  else if (stopField !== undefined && stopField !== null)
    throw invalid(`'stop' must be a string or an array of strings, got ${showValue(stopField, 80)}`, 'stop', 'invalid_type');
  const stream = field<boolean>(body, 'stream', 'a boolean', v => typeof v === 'boolean') ?? false;
  const streamOptions = field<Body>(body, 'stream_options', 'an object', isObject);
  if (streamOptions && !stream) throw invalid("'stream_options' is only allowed with 'stream': true", 'stream_options');
  const includeUsage = streamOptions?.include_usage ?? false;
  if (typeof includeUsage !== 'boolean')
    throw invalid("'stream_options.include_usage' must be a boolean", 'stream_options.include_usage', 'invalid_type');
  const speculative = field<boolean>(body, 'speculative', 'a boolean', v => typeof v === 'boolean') ?? defaults.speculative;
  if (speculative && !model.engine.hasMtp)
    throw invalid(
      "'speculative' decoding drafts with the checkpoint's MTP head, and this model has none",
      'speculative',
      'unsupported_parameter',
    );

  const options: GenerateOptions = { maxTokens, temperature, seed, stop, speculative };
  if (topP !== undefined) options.topP = topP;
  if (topK !== undefined && topK > 0) options.topK = topK;
  if (minP !== undefined) options.minP = minP;
  if (presencePenalty) options.presencePenalty = presencePenalty;
  if (frequencyPenalty) options.frequencyPenalty = frequencyPenalty;
  if (repetitionPenalty !== undefined && repetitionPenalty !== 1) options.repetitionPenalty = repetitionPenalty;
  if (logitBias) options.logitBias = logitBias;
  if (stopTokenIds?.length) options.stopTokenIds = stopTokenIds;
  if (ignoreEos) options.ignoreEos = true;
  if (logprobs !== undefined) options.logprobs = logprobs;
  if (tools.length > 0) options.tools = tools;
  if (
    speculative &&
    (options.presencePenalty || options.frequencyPenalty || options.repetitionPenalty || logitBias || logprobs !== undefined)
  )
    throw invalid(
      "'speculative' decoding cannot be combined with penalties, 'logit_bias' or 'logprobs'",
      'speculative',
      'unsupported_parameter',
    );
  return { kind, prompt, options, n, stream, includeUsage };
}

/** OpenAI's finish_reason of a stop reason (an aborted request gets no response). */
function finishReason(r: StopReason): 'stop' | 'length' {
  return r === 'eos' || r === 'stop' ? 'stop' : 'length';
}

/** The status and OpenAI error of a failure of Session.generate. */
function generateError(e: unknown, kind: 'chat' | 'text'): ApiError {
  if (e instanceof ApiError) return e;
  if (e instanceof LongcatError) {
    const param = kind === 'chat' ? 'messages' : 'prompt';
    switch (e.code) {
      case 'E_CONTEXT':
        return invalid(e.message, param, 'context_length_exceeded');
      case 'E_ARGUMENT':
        return invalid(e.message, null);
      case 'E_OOM':
        return new ApiError(
          503,
          `the KV cache has no room for this request now: ${e.message}`,
          'server_error',
          null,
          'kv_cache_full',
        );
      case 'E_DISPOSED':
        return new ApiError(503, 'the model was unloaded', 'server_error', null, 'model_unloaded');
    }
    return new ApiError(500, `${e.message} [${e.code}]`, 'server_error');
  }
  return new ApiError(500, e instanceof Error ? e.message : String(e), 'server_error');
}

/** Generation slots with a bounded FIFO of waiters. */
class Slots {
  running = 0;
  private readonly waiting: { grant: () => void }[] = [];
  constructor(
    private readonly max: number,
    private readonly maxQueue: number,
  ) {}
  get queued() {
    return this.waiting.length;
  }
  /** Resolves when a slot is held (release it with release()); 429 when the queue is full; rejects
   *  with `abortReason` when `signal` aborts while waiting. */
  acquire(signal: AbortSignal): Promise<void> {
    if (this.running < this.max && this.waiting.length === 0) {
      this.running++;
      return Promise.resolve();
    }
    if (this.waiting.length >= this.maxQueue)
      return Promise.reject(
        new ApiError(
          429,
          `the server is at capacity: ${this.running} requests generating and ${this.waiting.length} waiting (the queue limit); retry later`,
          'rate_limit_error',
          null,
          'queue_full',
        ),
      );
    return new Promise((resolve, reject) => {
      const w = {
        grant: () => {
          signal.removeEventListener('abort', onAbort);
          this.running++;
          resolve();
        },
      };
      const onAbort = () => {
        const i = this.waiting.indexOf(w);
        if (i >= 0) this.waiting.splice(i, 1);
        reject(signal.reason);
      };
      signal.addEventListener('abort', onAbort, { once: true });
      this.waiting.push(w);
    });
  }
  release() {
    this.running--;
    this.waiting.shift()?.grant();
  }
}

/** The server's counters, as /metrics writes them. */
class Metrics {
  promptTokens = 0;
  /** Prompt tokens whose KV entries came from the prefix cache (not computed). */
  cachedPromptTokens = 0;
  completionTokens = 0;
  readonly finished = new Map<string, number>();
  finish(reason: string) {
    this.finished.set(reason, (this.finished.get(reason) ?? 0) + 1);
  }
  text(model: Model | null, slots: Slots): string {
    const lines: string[] = [];
    const metric = (name: string, type: string, help: string, samples: [string, number][]) => {
      lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
      for (const [labels, v] of samples) lines.push(`${name}${labels} ${v}`);
    };
    metric('longcat_requests_running', 'gauge', 'Requests generating now.', [['', slots.running]]);
    metric('longcat_requests_queued', 'gauge', 'Requests waiting for a generation slot.', [['', slots.queued]]);
    metric('longcat_prompt_tokens_total', 'counter', 'Prompt tokens of finished requests.', [['', this.promptTokens]]);
    metric(
      'longcat_prompt_tokens_cached_total',
      'counter',
      'Prompt tokens of finished requests taken from the prefix cache (prefix-cache hits: not prefilled).',
      [['', this.cachedPromptTokens]],
    );
    metric('longcat_generation_tokens_total', 'counter', 'Tokens generated.', [['', this.completionTokens]]);
    const reasons = ['eos', 'stop', 'length', 'cache', 'abort', 'error'];
    for (const r of this.finished.keys()) if (!reasons.includes(r)) reasons.push(r);
    metric(
      'longcat_requests_finished_total',
      'counter',
      'Requests ended, by reason (eos, stop, length, cache: the KV cache was full, abort: the client left, error).',
      reasons.map(r => [`{reason="${r}"}`, this.finished.get(r) ?? 0]),
    );
    if (model) {
      const pools = model.engine.allocators,
        sum = (f: (a: (typeof pools)[number]) => number) => pools.reduce((n, a) => n + f(a), 0);
      metric('longcat_kv_blocks_in_use', 'gauge', 'KV-cache blocks held by sequences.', [['', sum(a => a.inUse)]]);
      metric('longcat_kv_blocks_total', 'gauge', "KV-cache blocks in the pool (every rank's).", [
        ['', sum(a => a.inUse + a.available)],
      ]);
      metric('longcat_prefix_cache_pages', 'gauge', 'KV pages registered in the prefix cache (held or idle).', [
        ['', sum(a => a.cachedPages)],
      ]);
      const st = model.scheduler.stats;
      metric('longcat_decode_steps_total', 'counter', 'Batched decode steps run (all sessions of the model).', [
        ['{kind="plain"}', st.decodeSteps],
        ['{kind="speculative"}', st.speculativeSteps],
      ]);
      metric('longcat_decode_rows_total', 'counter', 'Sequences decoded in those steps (rows / steps = mean batch).', [
        ['{kind="plain"}', st.decodeRows],
        ['{kind="speculative"}', st.speculativeRows],
      ]);
      metric('longcat_decode_batch_max', 'gauge', 'Largest batch of sequences decoded in one step.', [['', st.largestBatch]]);
      const g = model.engine.capturedGraphs;
      metric('longcat_captured_graphs', 'gauge', 'Captured step graphs, one per bucket of batch sizes.', [
        ['{kind="decode"}', g.decode],
        ['{kind="speculative"}', g.speculative],
      ]);
    }
    return `${lines.join('\n')}\n`;
  }
}

function bearerMatches(header: string | undefined, key: string): boolean {
  const m = /^Bearer\s+(.+)$/i.exec(header ?? '');
  if (!m) return false;
  const got = Buffer.from(m[1]!.trim()),
    want = Buffer.from(key);
  return got.length === want.length && timingSafeEqual(got, want);
}

/**
 * An OpenAI-compatible server for `model` (or for the model a promise will deliver: until then the
 * server answers 503, so it can listen while the weights load). Returns the fastify instance:
 * `await server.listen({ port, host })` to serve, `await server.close()` to stop accepting, let
 * in-flight requests finish (or abort them after `shutdownTimeoutMs`) and free their sessions.
 * The model stays the caller's to dispose.
 */
export function createServer(model: Model | Promise<Model>, options: ServerOptions = {}): LongcatServer {
  const int = (name: keyof ServerOptions, min: number, fallback: number) => {
    const v = options[name] ?? fallback;
    if (!Number.isSafeInteger(v) || (v as number) < min)
      throw new ArgumentError('E_ARGUMENT', `createServer: ${name} must be an integer >= ${min}, got ${showValue(v)}`);
    return v as number;
  };
  const maxConcurrent = int('maxConcurrent', 1, 16);
  const maxQueue = int('maxQueue', 0, 64);
  const bodyLimit = int('bodyLimit', 1, 32 * 2 ** 20);
  const defaults = { speculative: options.speculative ?? false, defaultCompletionTokens: int('defaultCompletionTokens', 1, 16) };
  const shutdownTimeoutMs = options.shutdownTimeoutMs;
  if (shutdownTimeoutMs !== undefined) int('shutdownTimeoutMs', 0, 0);
  if (options.apiKey !== undefined && (typeof options.apiKey !== 'string' || options.apiKey === ''))
    throw new ArgumentError('E_ARGUMENT', 'createServer: apiKey must be a non-empty string');

  let loaded: Model | null = null;
  let loadError: unknown = null;
  let closing = false;
  if (model instanceof Promise)
    model.then(
      m => (loaded = m),
      e => (loadError = e),
    );
  else loaded = model;
  const modelName = () => options.modelName ?? (loaded ? path.basename(path.resolve(loaded.checkpoint.dir)) : 'longcat');

  const slots = new Slots(maxConcurrent, maxQueue);
  const metrics = new Metrics();
  /** Abort controllers of in-flight requests (queued or generating). */
  const inFlight = new Set<AbortController>();
  let shutdownTimer: NodeJS.Timeout | null = null;
  let idleWaiters: (() => void)[] = [];

  const app = Fastify({ logger: options.logger ?? false, bodyLimit, return503OnClosing: false }) as unknown as LongcatServer;
  Object.defineProperty(app, 'load', { get: () => ({ running: slots.running, queued: slots.queued }) });
  app.decorate('idle', () => (inFlight.size === 0 ? Promise.resolve() : new Promise<void>(r => idleWaiters.push(r))));
  app.decorate('abortAll', () => {
    for (const ac of inFlight) ac.abort(new ApiError(503, 'the server is shutting down', 'server_error', null, 'shutting_down'));
  });

  // Open connections: once closing with no request in flight, each is ended (after its pending
  // writes), so close() does not wait on kept-alive or abandoned connections.
  const sockets = new Set<Socket>();
  app.server.on('connection', (socket: Socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  });
  const endConnections = () => {
    for (const socket of sockets) socket.end();
  };

  const send = (reply: FastifyReply, e: ApiError) => {
    if (closing) reply.header('connection', 'close');
    return reply.code(e.status).send(e.body);
  };

  app.setErrorHandler((err: Error & { statusCode?: number }, _req, reply) => {
    if (err instanceof ApiError) return send(reply, err);
    const status = err.statusCode ?? 500;
    return send(reply, new ApiError(status, err.message, status < 500 ? 'invalid_request_error' : 'server_error'));
  });
  app.setNotFoundHandler((req, reply) =>
    send(reply, new ApiError(404, `no route ${req.method} ${req.url.split('?')[0]}`, 'invalid_request_error', null, 'not_found')),
  );

  app.addHook('onRequest', async (req, reply) => {
    // (by the route matched, not the raw URL: /health and /metrics are open, every other path needs the key)
    const open = req.routeOptions.url === '/health' || req.routeOptions.url === '/metrics';
    if (closing && !open)
      return send(reply, new ApiError(503, 'the server is shutting down', 'server_error', null, 'shutting_down'));
    if (options.apiKey !== undefined && !open && !bearerMatches(req.headers.authorization, options.apiKey))
      return send(
        reply,
        new ApiError(
          401,
          'invalid or missing API key (send Authorization: Bearer <key>)',
          'authentication_error',
          null,
          'invalid_api_key',
        ),
      );
  });

  /** The loaded model, or 503 while it loads (or when loading failed). */
  const ready = (): Model => {
    if (loaded) return loaded;
    if (loadError)
      throw new ApiError(
        503,
        `the model failed to load: ${(loadError as Error)?.message ?? String(loadError)}`,
        'server_error',
        null,
        'model_load_failed',
      );
    throw new ApiError(503, 'the model is still loading', 'server_error', null, 'model_loading');
  };

  app.addHook('preClose', async () => {
    closing = true;
    if (shutdownTimeoutMs !== undefined && inFlight.size > 0) {
      shutdownTimer = setTimeout(() => app.abortAll(), shutdownTimeoutMs);
      shutdownTimer.unref();
    }
    if (inFlight.size === 0) endConnections();
  });
  app.addHook('onClose', async () => {
    if (shutdownTimer) clearTimeout(shutdownTimer);
  });

  const modelCard = () => ({ id: modelName(), object: 'model', created: 0, owned_by: 'longcat-flash' });
  app.get('/health', async (_req, reply) => {
    const status = closing ? 'shutting_down' : loaded ? 'ok' : loadError ? 'failed' : 'loading';
    return reply.code(status === 'ok' ? 200 : 503).send({ status, model: loaded ? modelName() : null, ...app.load });
  });
  app.get('/metrics', async (_req, reply) =>
    reply.type('text/plain; version=0.0.4; charset=utf-8').send(metrics.text(loaded, slots)),
  );
  /** A request for another model than this server's: OpenAI's 404 model_not_found. */
  const checkModelName = (name: string) => {
    if (name !== modelName())
      throw new ApiError(
        404,
        `the model '${name}' does not exist (this server serves '${modelName()}')`,
        'invalid_request_error',
        'model',
        'model_not_found',
      );
  };
  app.get('/v1/models', async () => {
    ready();
    return { object: 'list', data: [modelCard()] };
  });
  app.get('/v1/models/:id', async req => {
    ready();
    const { id } = req.params as { id: string };
    checkModelName(id);
    return modelCard();
  });

  const complete = (kind: 'chat' | 'text') => async (req: FastifyRequest, reply: FastifyReply) => {
    const m = ready();
    const job = parseJob(kind, req.body, m, defaults);
    const name = (req.body as Body).model as string;
    checkModelName(name);
    return serve(m, job, reply);
  };

  /**
   * Runs one checked request: waits for a slot, generates its `n` choices in fresh sessions at once
   * (the scheduler batches their decode steps; they share the prompt's cached pages), answers
   * (JSON or SSE, each choice's chunks tagged with its index).
   */
  async function serve(m: Model, job: Job, reply: FastifyReply) {
    const ac = new AbortController();
    inFlight.add(ac);
    // The client leaving (the connection closed before the response ended) aborts the generation.
    const onClose = () => {
      if (!reply.raw.writableEnded) ac.abort(new ApiError(499, 'the client closed the connection', 'client_closed'));
    };
    reply.raw.on('close', onClose);
    const id = `${job.kind === 'chat' ? 'chatcmpl' : 'cmpl'}-${randomUUID().replaceAll('-', '')}`;
    const created = Math.floor(Date.now() / 1000);
    const model = modelName();
    const chunk = (index: number, delta: object | string, logprobs: object | null, finish: string | null) =>
      chunkOf(job.kind, id, created, model, index, delta, logprobs, finish);
    let stream: SseStream | null = null;
    let reason = 'error';
    try {
      await slots.acquire(ac.signal);
      const sessions: Session[] = [];
      const gens: Generation[] = [];
      // Ends the other choices when one fails.
      const stopAll = new AbortController();
      const signal = AbortSignal.any([ac.signal, stopAll.signal]);
      try {
        // A streamed answer starts (status 200) once every choice's prompt is in: errors before that
        // (a prompt longer than the context, ...) still get their status code.
        const prefills: Promise<void>[] = [];
        const logprobs = job.options.logprobs !== undefined ? new ChoicesLogprobs(job.kind, m.tokenizer) : null;
        // With tools, each choice's tool calls are taken out of its text (streamed: held back from the marker on).
        const calls = (text: string) => parseToolCalls(text, `call_${randomUUID().replaceAll('-', '').slice(0, 16)}_`);
        const toolText = job.options.tools ? Array.from({ length: job.n }, () => new ToolTextStream()) : null;
        const startChoice = (i: number) => {
          const session = m.createSession();
          sessions.push(session);
          let prefilled!: () => void;
          prefills.push(new Promise<void>(r => (prefilled = r)));
          const onToken = logprobs && job.stream ? logprobs.onToken(i) : undefined;
          gens.push(
            session.generate(job.prompt, {
              ...job.options,
              seed: job.options.seed! + i,
              signal,
              onPrefillChunk: p => {
                if (p.done === p.total) prefilled();
              },
              ...(onToken ? { onToken } : {}),
            }),
          );
        };
        startChoice(0);
        if (job.n > 1) {
          // The other choices start once the first one's prompt is in: they adopt its pages from the
          // prefix cache and prefill only the rest (the last page, partly filled, and the last token).
          await Promise.race([prefills[0], gens[0]!.then(noop, noop)]);
          for (let i = 1; i < job.n; i++) startChoice(i);
        }
        let results: GenerateResult[];
        if (!job.stream) {
          results = await Promise.all(gens);
        } else {
          const chunks = gens.map(g => g[Symbol.asyncIterator]());
          const firsts = chunks.map(c => c.next());
          await Promise.all(firsts.map((next, i) => Promise.race([prefills[i], next])));
          if (ac.signal.aborted) throw ac.signal.reason;
          const sse = new SseStream(reply, closing);
          stream = sse;
          for (let i = 0; i < job.n; i++)
            sse.chunk(chunk(i, job.kind === 'chat' ? { role: 'assistant', content: '' } : '', null, null));
          await Promise.all(
            chunks.map(async (c, i) => {
              for (let r = await firsts[i]!; !r.done; r = await c.next()) {
                const text = toolText ? toolText[i]!.push(r.value) : r.value;
                if (text || (r.value && logprobs))
                  sse.chunk(chunk(i, job.kind === 'chat' ? { content: text } : text, logprobs?.pending(i) ?? null, null));
              }
            }),
          );
          results = await Promise.all(gens);
        }
        const first = results[0]!;
        reason = first.stopReason;
        metrics.promptTokens += first.promptTokens;
        for (const r of results) metrics.cachedPromptTokens += r.promptTokens - r.prefillTokens;
        for (const r of results) metrics.completionTokens += r.completionTokens;
        if (results.some(r => r.stopReason === 'abort')) {
          if (ac.signal.reason instanceof ApiError && ac.signal.reason.status !== 499) throw ac.signal.reason;
          reason = 'abort';
          drop(reply); // the client left: nobody to answer
          return;
        }
        // (the prompt once, as OpenAI counts n > 1)
        const completionTokens = results.reduce((n, r) => n + r.completionTokens, 0);
        const usage = {
          prompt_tokens: first.promptTokens,
          completion_tokens: completionTokens,
          total_tokens: first.promptTokens + completionTokens,
        };
        if (stream) {
          results.forEach((r, i) => {
            let finish: string = finishReason(r.stopReason);
            if (toolText) {
              // the text held back, less the calls, then the calls (each whole, in one delta)
              const { content, toolCalls } = calls(r.text);
              const rest = content.slice(toolText[i]!.sent.length);
              if (rest) stream!.chunk(chunk(i, { content: rest }, null, null));
              if (toolCalls.length > 0) {
                stream!.chunk(
                  chunk(i, { tool_calls: toolCalls.map((c, k) => ({ index: k, ...openaiToolCall(c) })) }, null, null),
                );
                finish = 'tool_calls';
              }
            }
            stream!.chunk(chunk(i, job.kind === 'chat' ? {} : '', logprobs?.pending(i) ?? null, finish));
          });
          if (job.includeUsage) stream.chunk({ ...chunk(0, '', null, null), choices: [], usage });
          stream.end();
          return;
        }
        const choices = results.map((r, i) => {
          const lp = logprobs ? logprobs.of(r.logprobs ?? [], i) : null;
          const finish = finishReason(r.stopReason);
          if (job.kind !== 'chat') return { index: i, text: r.text, logprobs: lp, finish_reason: finish };
          const { content, toolCalls } = toolText ? calls(r.text) : { content: r.text, toolCalls: [] };
          if (toolCalls.length === 0)
            return { index: i, message: { role: 'assistant', content, refusal: null }, logprobs: lp, finish_reason: finish };
          return {
            index: i,
            message: { role: 'assistant', content: content || null, refusal: null, tool_calls: toolCalls.map(openaiToolCall) },
            logprobs: lp,
            finish_reason: 'tool_calls',
          };
        });
        if (closing) reply.header('connection', 'close');
        return reply.send({
          id,
          object: job.kind === 'chat' ? 'chat.completion' : 'text_completion',
          created,
          model,
          choices,
          usage,
        });
      } finally {
        // The sessions' blocks are freed once their generations have stopped (an abort ends each at the next step).
        stopAll.abort();
        await Promise.all(gens.map(g => g.then(noop, noop)));
        for (const session of sessions) session.dispose();
        slots.release();
      }
    } catch (e) {
      const aborted = ac.signal.aborted && (e === ac.signal.reason || (e instanceof LongcatError && e.code === 'E_ABORTED'));
      if (aborted && !(ac.signal.reason instanceof ApiError && ac.signal.reason.status !== 499)) {
        reason = 'abort';
        drop(reply); // the client left while queued or before its generation started
        return;
      }
      const err = aborted ? (ac.signal.reason as ApiError) : generateError(e, job.kind);
      if (err.status === 429) reason = 'rejected';
      if (stream) {
        // The answer had started: the error goes into the stream, which then ends.
        stream.chunk(err.body);
        stream.end();
        return;
      }
      throw err;
    } finally {
      if (reason !== 'rejected') metrics.finish(reason);
      reply.raw.off('close', onClose);
      inFlight.delete(ac);
      if (inFlight.size === 0) {
        // (an error answer is written after this: the connections end once it is)
        const maybeEnd = () => closing && inFlight.size === 0 && endConnections();
        if (reply.raw.writableEnded || reply.raw.destroyed) maybeEnd();
        else reply.raw.once('close', maybeEnd);
        for (const r of idleWaiters) r();
        idleWaiters = [];
      }
    }
  }

  app.post('/v1/chat/completions', complete('chat'));
  app.post('/v1/completions', complete('text'));
  return app;
}

/** No answer: the client has gone (fastify is told the reply is handled here). */
function drop(reply: FastifyReply) {
  reply.hijack();
  reply.raw.destroy();
}

/** A tool call in OpenAI's shape. */
function openaiToolCall(c: ToolCall) {
  return { id: c.id, type: 'function' as const, function: { name: c.name, arguments: c.arguments } };
}

/**
 * A streamed choice's text with tools: passed on up to where a tool-call marker starts (or may be
 * starting: a tail that is a prefix of it waits for the next text); from the first marker on it is
 * held back, for the end, when the calls are parsed out of the whole text.
 */
class ToolTextStream {
  private all = '';
  sent = '';
  /** Adds a text chunk; returns the part that can be sent now. */
  push(text: string): string {
    this.all += text;
    let safe = this.all.indexOf(TOOL_CALL_OPEN);
    if (safe < 0) {
      safe = this.all.length;
      for (let k = Math.min(TOOL_CALL_OPEN.length - 1, this.all.length); k > 0; k--)
        if (this.all.endsWith(TOOL_CALL_OPEN.slice(0, k))) {
          safe = this.all.length - k;
          break;
        }
    }
    if (safe <= this.sent.length) return '';
    const out = this.all.slice(this.sent.length, safe);
    this.sent = this.all.slice(0, safe);
    return out;
  }
}

/** One streamed choice in OpenAI's chunk format. */
function chunkOf(
  kind: 'chat' | 'text',
  id: string,
  created: number,
  model: string,
  index: number,
  delta: object | string,
  logprobs: object | null,
  finish: string | null,
) {
  return kind === 'chat'
    ? {
        id,
        object: 'chat.completion.chunk',
        created,
        model,
        choices: [{ index, delta, logprobs, finish_reason: finish }],
      }
    : {
        id,
        object: 'text_completion',
        created,
        model,
        choices: [{ index, text: delta, logprobs, finish_reason: finish }],
      };
}

/**
 * Log-probabilities in OpenAI's shapes: chat's `{ content: [{ token, logprob, bytes, top_logprobs }] }`
 * and text completions' legacy `{ tokens, token_logprobs, top_logprobs, text_offset }`. A token's
 * text is its own decoding (a token holding part of a UTF-8 character decodes to U+FFFD, a padding
 * id past the tokenizer's vocabulary to ''; `bytes` are that text's UTF-8). Streamed, each chunk carries the tokens generated since the last one.
 */
class ChoicesLogprobs {
  private readonly waiting: TokenLogprob[][] = [];
  /** Text completions: characters of the choice's tokens reported so far (text_offset). */
  private readonly offsets: number[] = [];
  constructor(
    private readonly kind: 'chat' | 'text',
    private readonly tokenizer: Tokenizer,
  ) {}
  /** GenerateOptions.onToken for choice `i` (streaming). */
  onToken(i: number) {
    this.waiting[i] = [];
    return (_token: number, lp?: TokenLogprob) => {
      if (lp) this.waiting[i]!.push(lp);
    };
  }
  /** The tokens of choice `i` not yet sent (null when none). */
  pending(i: number): object | null {
    const lps = this.waiting[i] ?? [];
    if (lps.length === 0) return null;
    this.waiting[i] = [];
    return this.of(lps, i);
  }
  of(lps: TokenLogprob[], i = 0): object {
    // (ids past the tokenizer's, in the model's padded vocabulary, have no text)
    const text = (token: number) => (token < this.tokenizer.vocabSize ? this.tokenizer.decode([token]) : '');
    if (this.kind === 'chat') {
      const entry = (token: number, logprob: number) => {
        const t = text(token);
        return { token: t, logprob, bytes: [...Buffer.from(t, 'utf8')] };
      };
      return {
        content: lps.map(lp => ({ ...entry(lp.token, lp.logprob), top_logprobs: lp.top.map(t => entry(t.token, t.logprob)) })),
        refusal: null,
      };
    }
    const tokens = lps.map(lp => text(lp.token));
    let offset = this.offsets[i] ?? 0;
    const textOffset = tokens.map(t => {
      const at = offset;
      offset += t.length;
      return at;
    });
    this.offsets[i] = offset;
    return {
      tokens,
      token_logprobs: lps.map(lp => lp.logprob),
      top_logprobs: lps.map(lp => Object.fromEntries(lp.top.map(t => [text(t.token), t.logprob]))),
      text_offset: textOffset,
    };
  }
}

/** Server-sent events on a hijacked reply: `data: <json>\n\n` per chunk, `data: [DONE]` at the end. */
class SseStream {
  private readonly res: FastifyReply['raw'];
  constructor(reply: FastifyReply, closing: boolean) {
    reply.hijack();
    this.res = reply.raw;
    this.res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache',
      'x-accel-buffering': 'no',
      ...(closing ? { connection: 'close' } : {}),
    });
  }
  chunk(data: object) {
    if (!this.res.destroyed) this.res.write(`data: ${JSON.stringify(data)}\n\n`);
  }
  end() {
    if (!this.res.destroyed) this.res.end('data: [DONE]\n\n');
  }
}
