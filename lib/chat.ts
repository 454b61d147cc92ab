// Chat prompts: the checkpoint's Jinja chat template (via @huggingface/jinja), or the built-in
// LongCat format of SPEC 8.2 when the checkpoint has none.
//
//   first turn, no system:  [Round 0] USER:{query} ASSISTANT:
//   first turn, system:     SYSTEM:{system} [Round 0] USER:{query} ASSISTANT:
//   multi-turn:             SYSTEM:{sys} [Round 0] USER:{q0} ASSISTANT:{r0}</longcat_s> [Round 1] USER:{q1} ASSISTANT:
//
// No BOS is emitted; every finished assistant turn ends with </longcat_s>; one space precedes
// every [Round k] that follows a system prompt or an EOS; no space after USER: / ASSISTANT:.
// With tools: the model card's tool description block, `\n\n## Messages\n`, then the chat; tool
// calls are <longcat_tool_call>\n{"name": ..., "arguments": {...}}\n</longcat_tool_call> spans, which
// parseToolCalls() takes out of the model's output.
import path from 'node:path';
import { Environment, Interpreter, Template } from '@huggingface/jinja';
import { ArgumentError, CheckpointError } from './errors.js';
import { readRegularTextSync } from './files.js';

export type ChatRole = 'system' | 'user' | 'assistant' | 'tool';

/** A call of a tool, as an assistant message carries it and GenerateResult.toolCalls reports it. */
export interface ToolCall {
  id: string;
  name: string;
  /** The arguments: a JSON text (an object). */
  arguments: string;
}

/** A tool the model may call: OpenAI's function definition. */
export interface ToolDefinition {
  type: 'function';
  function: { name: string; description?: string; parameters?: Record<string, unknown> };
}

export interface ChatMessage {
  role: ChatRole | (string & {});
  content: string;
  /** An assistant message's tool calls (after its content). */
  toolCalls?: ToolCall[];
  /** A tool message: the id of the call it answers. */
  toolCallId?: string;
}

export interface ChatTemplateOptions {
  /** End with the assistant prompt (` ASSISTANT:`) so the model answers. Default true. */
  addGenerationPrompt?: boolean;
  /** Extra variables for the Jinja template. */
  context?: Record<string, unknown>;
  /**
   * Tools the model may call: passed to the checkpoint's template as `tools` when it renders tools
   * (mentions them); otherwise the built-in LongCat format renders them (the model card's block).
   */
  tools?: readonly ToolDefinition[];
  /** An already parsed tokenizer_config.json: used instead of reading the directory's. */
  tokenizerConfig?: TokenizerConfig;
}

export const LONGCAT_EOS = '</longcat_s>';

/**
 * The LongCat chat template (SPEC 8.2) as Jinja, written by `init-random` into
 * tokenizer_config.json. It renders exactly what formatLongcatChat() returns.
 */
export const LONGCAT_CHAT_TEMPLATE =
  '{%- set ns = namespace(round=0, started=false) -%}' +
  '{%- for message in messages -%}' +
  "{%- if message['role'] == 'system' -%}" +
  "{{- 'SYSTEM:' + message['content'] -}}" +
  '{%- set ns.started = true -%}' +
  "{%- elif message['role'] == 'user' -%}" +
  "{%- if ns.started -%}{{- ' ' -}}{%- endif -%}" +
  "{{- '[Round ' + (ns.round | string) + '] USER:' + message['content'] -}}" +
  '{%- set ns.started = true -%}' +
  "{%- elif message['role'] == 'assistant' -%}" +
  "{{- ' ASSISTANT:' + message['content'] + '</longcat_s>' -}}" +
  '{%- set ns.round = ns.round + 1 -%}' +
  '{%- set ns.started = true -%}' +
  '{%- endif -%}' +
  '{%- endfor -%}' +
  "{%- if add_generation_prompt -%}{{- ' ASSISTANT:' -}}{%- endif -%}";

function checkMessages(messages: readonly ChatMessage[]) {
  if (!Array.isArray(messages)) throw new ArgumentError('E_ARGUMENT', 'chat: messages must be an array of { role, content }');
  messages.forEach((m, i) => {
    if (typeof m !== 'object' || m === null || typeof m.role !== 'string' || typeof m.content !== 'string')
      throw new ArgumentError('E_ARGUMENT', `chat: messages[${i}] must be { role: string, content: string }`);
    if (m.toolCalls !== undefined) {
      if (m.role !== 'assistant')
        throw new ArgumentError('E_ARGUMENT', `chat: messages[${i}] has toolCalls but is not an assistant message`);
      if (
        !Array.isArray(m.toolCalls) ||
        !m.toolCalls.every(
          (c: ToolCall) => typeof c?.id === 'string' && typeof c.name === 'string' && typeof c.arguments === 'string',
        )
      )
        throw new ArgumentError(
          'E_ARGUMENT',
          `chat: messages[${i}].toolCalls must be an array of { id, name, arguments: string }`,
        );
    }
  });
}

function checkTools(tools: readonly ToolDefinition[]) {
  if (!Array.isArray(tools))
    throw new ArgumentError('E_ARGUMENT', 'chat: tools must be an array of { type: "function", function }');
  tools.forEach((t, i) => {
    const f = t?.function;
    if (t?.type !== 'function' || typeof f !== 'object' || f === null || typeof f.name !== 'string' || f.name === '')
      throw new ArgumentError(
        'E_ARGUMENT',
        `chat: tools[${i}] must be { type: 'function', function: { name, description?, parameters? } }`,
      );
    if (f.description !== undefined && typeof f.description !== 'string')
      throw new ArgumentError('E_ARGUMENT', `chat: tools[${i}].function.description must be a string`);
    if (f.parameters !== undefined && (typeof f.parameters !== 'object' || f.parameters === null || Array.isArray(f.parameters)))
      throw new ArgumentError('E_ARGUMENT', `chat: tools[${i}].function.parameters must be a JSON schema object`);
  });
}

export const TOOL_CALL_OPEN = '<longcat_tool_call>';
export const TOOL_CALL_CLOSE = '</longcat_tool_call>';
export const TOOL_RESPONSE_OPEN = '<longcat_tool_response>';
export const TOOL_RESPONSE_CLOSE = '</longcat_tool_response>';

/** Python's json.dumps(v, indent=2) (the model card renders schemas with it): ensure_ascii aside, JSON.stringify's. */
function pythonJsonIndent2(v: unknown): string {
  return JSON.stringify(v ?? {}, null, 2);
}

/**
 * The tool description block of the LongCat model card (SPEC 8.2; the card's text verbatim,
 * trailing spaces included). The card shows one function; several are listed one after the other
 * under the one namespace heading, each as the card's `#### Tool name` section.
 */
export function longcatToolDescription(tools: readonly ToolDefinition[]): string {
  checkTools(tools);
  const functions = tools
    .map(
      t =>
        `#### Tool name: ${t.function.name}\n\nDescription: ${t.function.description ?? ''}\n\nInputSchema: \n${pythonJsonIndent2(t.function.parameters)}\n\n`,
    )
    .join('');
  return (
    '## Tools\nYou have access to the following tools: \n\n### Tool namespace: function\n\n' +
    functions +
    `**Note**: For each function call, return a json object with function name and arguments within ${TOOL_CALL_OPEN}${TOOL_CALL_CLOSE} XML tags as follows:\n` +
    `${TOOL_CALL_OPEN}\n{"name": <function-name>, "arguments": <args-dict>}\n${TOOL_CALL_CLOSE}\n` +
    `When multiple functions need to be called simultaneously, each function call should be wrapped in its own ${TOOL_CALL_OPEN} tag and placed consecutively. For example:\n` +
    `${TOOL_CALL_OPEN}\n{"name": <function-name>, "arguments": <args-dict>}\n${TOOL_CALL_CLOSE}${TOOL_CALL_OPEN}\n{"name": <function-name>, "arguments": <args-dict>}\n${TOOL_CALL_CLOSE}`
  );
}

/** One tool call as the model writes it (the card's format; `arguments` is the call's JSON text). */
function toolCallText(c: ToolCall): string {
  return `${TOOL_CALL_OPEN}\n{"name": ${JSON.stringify(c.name)}, "arguments": ${c.arguments}}\n${TOOL_CALL_CLOSE}`;
}

/**
 * Takes the tool calls out of a model's output: every `<longcat_tool_call>` span holding a JSON
 * object `{ "name": string, "arguments": object }` becomes a ToolCall (ids `call_<n>` after `idPrefix`)
 * and leaves the text; a span whose JSON does not parse or has another shape stays in `content`
 * as text (so nothing the model wrote is lost), as does an unclosed marker.
 */
export function parseToolCalls(text: string, idPrefix = 'call_'): { content: string; toolCalls: ToolCall[] } {
  const toolCalls: ToolCall[] = [];
  const content = text.replace(/<longcat_tool_call>([\s\S]*?)<\/longcat_tool_call>/g, (span, body: string) => {
    let v: unknown;
    try {
      v = JSON.parse(body.trim());
    } catch {
      return span;
    }
    const call = v as { name?: unknown; arguments?: unknown };
    const args = call?.arguments ?? {};
    if (
      typeof call !== 'object' ||
      call === null ||
      typeof call.name !== 'string' ||
      typeof args !== 'object' ||
      args === null ||
      Array.isArray(args)
    )
      return span;
    toolCalls.push({ id: `${idPrefix}${toolCalls.length}`, name: call.name, arguments: JSON.stringify(args) });
    return '';
  });
  return { content, toolCalls };
}

/**
 * The built-in LongCat format (SPEC 8.2). Roles other than system/user/assistant/tool are rejected.
 * With `opts.tools`: the model card's tool description, `\n\n## Messages\n`, then the chat. An
 * assistant message's toolCalls follow its content in the card's call format. The card does not
 * say how tool results are shown to the model: here the results of one or more consecutive tool
 * messages form the next round's user turn, each as
 * `<longcat_tool_response>\n{content}\n</longcat_tool_response>` (the markers of LongCat's later
 * templates); this is this package's choice, not the card's.
 */
export function formatLongcatChat(messages: readonly ChatMessage[], opts: ChatTemplateOptions = {}): string {
  checkMessages(messages);
  let out = opts.tools?.length ? `${longcatToolDescription(opts.tools)}\n\n## Messages\n` : '';
  let round = 0;
  let started = false;
  messages.forEach((m, i) => {
    switch (m.role) {
      case 'system':
        out += `SYSTEM:${m.content}`;
        break;
      case 'user':
        out += `${started ? ' ' : ''}[Round ${round}] USER:${m.content}`;
        break;
      case 'tool':
        if (messages[i - 1]?.role !== 'tool') out += `${started ? ' ' : ''}[Round ${round}] USER:`;
        out += `${TOOL_RESPONSE_OPEN}\n${m.content}\n${TOOL_RESPONSE_CLOSE}`;
        break;
      case 'assistant':
        out += ` ASSISTANT:${m.content}${(m.toolCalls ?? []).map(toolCallText).join('')}${LONGCAT_EOS}`;
        round++;
        break;
      default:
        throw new ArgumentError(
          'E_ARGUMENT',
          `chat: messages[${i}] has role '${m.role}', expected system, user, assistant or tool`,
        );
    }
    started = true;
  });
  if (opts.addGenerationPrompt ?? true) out += ' ASSISTANT:';
  return out;
}

/**
 * Bounds on rendering one chat template (a template comes with a checkpoint, so it is untrusted):
 * AST nodes evaluated (each loop iteration costs at least one): `steps` plus `stepsPerMessage` for
 * each message, so a long conversation gets room in proportion while a template looping over the
 * messages cubically does not; items range() may produce in all; the length of any string the
 * template builds (the prompt included). A real chat template takes tens of nodes per message;
 * a node costs the interpreter microseconds, so the bound is seconds, not hours.
 */
export const TEMPLATE_LIMITS = { steps: 1_000_000, stepsPerMessage: 1_000, rangeItems: 100_000, chars: 64 * 2 ** 20 } as const;

class TemplateLimitError extends Error {}

// The parts of the library's runtime used here (its .d.ts files import each other without
// extensions, which NodeNext resolution does not follow, so Environment and Interpreter arrive untyped).
interface JinjaValue {
  type: string;
  value: unknown;
}
interface JinjaEnvironment {
  set(name: string, value: unknown): unknown;
}
interface JinjaInterpreter {
  run(program: unknown): JinjaValue;
  evaluate(node: unknown, env: JinjaEnvironment): JinjaValue;
}
const JinjaEnvironmentClass = Environment as unknown as new () => JinjaEnvironment;
const JinjaInterpreterClass = Interpreter as unknown as new (env: JinjaEnvironment) => JinjaInterpreter;

/** The jinja interpreter, counting evaluated nodes and checking the length of every string made. */
class BoundedInterpreter extends JinjaInterpreterClass {
  private steps = 0;
  constructor(
    env: JinjaEnvironment,
    private readonly maxSteps: number,
  ) {
    super(env);
  }
  override evaluate(node: unknown, env: JinjaEnvironment): JinjaValue {
    if (++this.steps > this.maxSteps) throw new TemplateLimitError(`it evaluated more than ${this.maxSteps} expressions`);
    const v = super.evaluate(node, env);
    if (v.type === 'StringValue' && (v.value as string).length > TEMPLATE_LIMITS.chars)
      throw new TemplateLimitError(
        `it built a string of ${(v.value as string).length} characters (limit ${TEMPLATE_LIMITS.chars})`,
      );
    return v;
  }
}

/**
 * The globals Template.render() declares (@huggingface/jinja's setupGlobals, which it does not
 * export), with range() counting against TEMPLATE_LIMITS.rangeItems; strftime_now is the library's own.
 */
function boundedGlobals(env: JinjaEnvironment): void {
  let rangeItems = 0;
  const range = (start: number, stop?: number, step = 1): number[] => {
    if (stop === undefined) [start, stop] = [0, start];
    for (const v of [start, stop, step])
      if (typeof v !== 'number' || !Number.isSafeInteger(v)) throw new Error('range() takes integers');
    if (step === 0) throw new Error('range() step must not be zero');
    const n = Math.max(0, Math.ceil((stop - start) / step));
    rangeItems += n;
    if (rangeItems > TEMPLATE_LIMITS.rangeItems)
      throw new TemplateLimitError(`range() produced more than ${TEMPLATE_LIMITS.rangeItems} items`);
    return Array.from({ length: n }, (_, i) => start + i * step);
  };
  env.set('false', false);
  env.set('true', true);
  env.set('none', null);
  env.set('raise_exception', (msg: unknown) => {
    throw new Error(String(msg));
  });
  env.set('range', range);
  env.set('strftime_now', (format: unknown) => new Template('{{ strftime_now(f) }}').render({ f: format }));
  env.set('True', true);
  env.set('False', false);
  env.set('None', null);
}

/** A message as HF chat templates read it: `tool_calls` ({ id, type, function: { name, arguments } },
 *  the arguments an object when they parse), `tool_call_id`. */
function hfMessage(m: ChatMessage): Record<string, unknown> {
  const { toolCalls, toolCallId, ...rest } = m;
  const out: Record<string, unknown> = { ...rest };
  if (toolCalls)
    out.tool_calls = toolCalls.map(c => {
      let args: unknown = c.arguments;
      try {
        args = JSON.parse(c.arguments);
      } catch {}
      return { id: c.id, type: 'function', function: { name: c.name, arguments: args } };
    });
  if (toolCallId !== undefined) out.tool_call_id = toolCallId;
  return out;
}

/** Renders a Jinja chat template (HF semantics: messages, add_generation_prompt, special tokens). */
export function renderChatTemplate(
  template: string,
  messages: readonly ChatMessage[],
  opts: ChatTemplateOptions & { specialTokens?: Record<string, string> } = {},
): string {
  checkMessages(messages);
  let t: Template;
  try {
    t = new Template(template);
  } catch (e) {
    throw new CheckpointError('E_CHECKPOINT', `chat template does not parse: ${(e as Error).message}`, { cause: e });
  }
  try {
    // Template.render(), with the bounded interpreter and range().
    const env = new JinjaEnvironmentClass();
    boundedGlobals(env);
    const items: Record<string, unknown> = {
      bos_token: '<longcat_s>',
      eos_token: LONGCAT_EOS,
      ...opts.specialTokens,
      ...opts.context,
      ...(opts.tools?.length ? { tools: opts.tools } : {}),
      messages: messages.map(hfMessage),
      add_generation_prompt: opts.addGenerationPrompt ?? true,
    };
    for (const [k, v] of Object.entries(items)) env.set(k, v);
    const maxSteps = TEMPLATE_LIMITS.steps + TEMPLATE_LIMITS.stepsPerMessage * messages.length;
    return new BoundedInterpreter(env, maxSteps).run(t.parsed).value as string;
  } catch (e) {
    const why = e instanceof TemplateLimitError ? `rendering stopped: ${e.message}` : `failed to render: ${(e as Error).message}`;
    throw new CheckpointError('E_CHECKPOINT', `chat template ${why}`, { cause: e });
  }
}

/** The parts of tokenizer_config.json the chat template uses. */
export interface TokenizerConfig {
  chat_template?: string | { name: string; template: string }[] | null;
  bos_token?: string | { content: string } | null;
  eos_token?: string | { content: string } | null;
  pad_token?: string | { content: string } | null;
  unk_token?: string | { content: string } | null;
  [key: string]: unknown;
}

function tokenText(t: TokenizerConfig[keyof TokenizerConfig]): string | undefined {
  if (typeof t === 'string') return t;
  if (t && typeof t === 'object' && 'content' in t && typeof (t as { content: unknown }).content === 'string')
    return (t as { content: string }).content;
  return undefined;
}

/** The default chat template of a tokenizer config (a string, or the entry named 'default'), or null. */
export function chatTemplateOf(cfg: TokenizerConfig): string | null {
  const ct = cfg.chat_template;
  if (typeof ct === 'string' && ct.length) return ct;
  if (Array.isArray(ct)) return ct.find(x => x?.name === 'default')?.template ?? ct[0]?.template ?? null;
  return null;
}

function readText(file: string): string | null {
  try {
    return readRegularTextSync(file);
  } catch (e) {
    if (e instanceof CheckpointError) throw e;
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw new CheckpointError('E_CHECKPOINT', `${file}: cannot read (${(e as NodeJS.ErrnoException).code ?? 'error'})`, {
      cause: e,
    });
  }
}

function parseJson(text: string, file: string): TokenizerConfig {
  try {
    const v = JSON.parse(text) as unknown;
    if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error('not a JSON object');
    return v as TokenizerConfig;
  } catch (e) {
    throw new CheckpointError('E_CHECKPOINT', `${file}: ${(e as Error).message}`, { cause: e });
  }
}

/**
 * Reads the chat template of a checkpoint directory: tokenizer_config.json's chat_template, else
 * chat_template.jinja, else chat_template.json; `template` is null when there is none.
 */
export function loadChatTemplate(dir: string): { template: string | null; config: TokenizerConfig } {
  const cfgFile = path.join(dir, 'tokenizer_config.json');
  const cfgText = readText(cfgFile);
  const config = cfgText === null ? {} : parseJson(cfgText, cfgFile);
  let template = chatTemplateOf(config);
  if (!template) template = readText(path.join(dir, 'chat_template.jinja'));
  if (!template) {
    const f = path.join(dir, 'chat_template.json');
    const t = readText(f);
    template = t === null ? null : chatTemplateOf(parseJson(t, f));
  }
  return { template, config };
}

/**
 * The prompt text for `messages`: the checkpoint's chat template (from a directory, or a parsed
 * tokenizer_config.json given as `source` or `opts.tokenizerConfig`), or formatLongcatChat()
 * (SPEC 8.2) when there is none. Synchronous (reads at most two small files).
 */
export function applyChatTemplate(
  source: string | TokenizerConfig,
  messages: readonly ChatMessage[],
  opts: ChatTemplateOptions = {},
): string {
  return chatRenderer(source, opts)(messages);
}

/** A rendered chat prompt and where the text of untrusted messages sits in it. */
export interface ChatPrompt {
  text: string;
  /**
   * [start, end) of every user and tool message's content in `text`: special-token text there must
   * stay text when the prompt is encoded (see Tokenizer.encode's `literal`). null when the template
   * changes message contents (trims, escapes, ...), so their place in the text is unknown.
   */
  literal: [number, number][] | null;
}

/** Roles whose content comes from outside the application: it may not inject special tokens. */
const LITERAL_ROLES = new Set(['user', 'tool']);

/**
 * applyChatTemplate(), plus the spans of user and tool content. Found by rendering once more with
 * each such content replaced by a private-use marker and checking that putting the contents back
 * gives the same text (so a template that edits contents yields `literal: null`, never wrong spans).
 */
export function renderChatPrompt(
  source: string | TokenizerConfig,
  messages: readonly ChatMessage[],
  opts: ChatTemplateOptions = {},
): ChatPrompt {
  const render = chatRenderer(source, opts);
  const text = render(messages);
  const marked = messages.map((m, i) => (LITERAL_ROLES.has(m.role) && m.content.length > 0 ? `\uE000${i}\uE001` : null));
  if (marked.every(m => m === null)) return { text, literal: [] };
  const withMarks = render(messages.map((m, i) => (marked[i] === null ? m : { ...m, content: marked[i]! })));
  let rebuilt = '',
    pos = 0;
  const literal: [number, number][] = [];
  for (const hit of withMarks.matchAll(/\uE000(\d+)\uE001/g)) {
    const content = messages[Number(hit[1])]!.content;
    rebuilt += withMarks.slice(pos, hit.index);
    literal.push([rebuilt.length, rebuilt.length + content.length]);
    rebuilt += content;
    pos = hit.index + hit[0].length;
  }
  rebuilt += withMarks.slice(pos);
  return rebuilt === text ? { text, literal } : { text, literal: null };
}

function chatRenderer(source: string | TokenizerConfig, opts: ChatTemplateOptions): (messages: readonly ChatMessage[]) => string {
  if (opts.tools !== undefined) checkTools(opts.tools);
  let template: string | null;
  let config: TokenizerConfig;
  if (opts.tokenizerConfig) {
    config = opts.tokenizerConfig;
    template = chatTemplateOf(config) ?? (typeof source === 'string' ? loadChatTemplate(source).template : null);
  } else if (typeof source === 'string') {
    ({ template, config } = loadChatTemplate(source));
  } else {
    config = source;
    template = chatTemplateOf(source);
  }
  if (!template) return messages => formatLongcatChat(messages, opts);
  const specialTokens: Record<string, string> = {};
  for (const k of ['bos_token', 'eos_token', 'pad_token', 'unk_token'] as const) {
    const v = tokenText(config[k]);
    if (v !== undefined) specialTokens[k] = v;
  }
  const t = template;
  // A template that never mentions tools has no tool format: a chat with tools (or tool turns)
  // gets the built-in LongCat one instead.
  const rendersTools = /\btools\b|tool_calls/.test(t);
  const usesTools = (messages: readonly ChatMessage[]) =>
    (opts.tools?.length ?? 0) > 0 || messages.some(m => m.role === 'tool' || (m.toolCalls?.length ?? 0) > 0);
  return messages =>
    !rendersTools && usesTools(messages)
      ? formatLongcatChat(messages, opts)
      : renderChatTemplate(t, messages, { ...opts, specialTokens });
}
