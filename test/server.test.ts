// The OpenAI-compatible server (lib/server.ts) on loopback, driven by the official `openai` client
// and by raw fetch where the client hides details: chat and text completions streamed and not
// (the text is Session.generate's for the same prompt), max_tokens, stop, seeds, usage, every
// error status, the API key, concurrent streams with clients leaving mid-stream (no leaked KV
// blocks), /metrics and /health, loading and graceful shutdown; penalties, logit_bias, logprobs,
// n > 1 (sharing the prompt's pages), tool calls (the real model's prompt, and a scripted model
// that calls a tool), 32 streams with seeded random disconnects.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import path from 'node:path';
import readline from 'node:readline';
import OpenAI from 'openai';
import { createServer, type LongcatServer } from '../lib/server.js';
import { loadModel, type GenerateOptions, type GenerateResult, type Model, type Session } from '../lib/generate.js';
import { parseToolCalls, type ChatMessage } from '../lib/chat.js';
import { graphBucket } from '../lib/model/model.js';
import { checkpointFixture, cpuModelFixture } from './model-fixture.js';
import { rng } from '../lib/check/rng.js';

const makeCheckpoint = checkpointFixture('longcat-server-', 17);
const tiny = cpuModelFixture(makeCheckpoint, 'tiny', 1024);

const KEY = 'sk-test-key';
let server: LongcatServer;
let url: string;
let client: OpenAI;
let baseline: number;

async function start(model: Model | Promise<Model>, opts: Parameters<typeof createServer>[1] = {}) {
  const s = createServer(model, { modelName: 'tiny', ...opts });
  const u = await s.listen({ host: '127.0.0.1', port: 0 });
  return { s, u };
}

beforeAll(async () => {
  baseline = tiny.model.engine.allocator.inUse;
  ({ s: server, u: url } = await start(tiny.model, { apiKey: KEY }));
  client = new OpenAI({ apiKey: KEY, baseURL: `${url}/v1`, maxRetries: 0 });
});
afterAll(async () => {
  await server.close();
});

/** The SDK's own answer for the same request. */
async function sdk(prompt: string | ChatMessage[], opts: GenerateOptions) {
  using s = tiny.model.createSession();
  return await s.generate(prompt, opts);
}

const post = (path: string, body: unknown, headers: Record<string, string> = { authorization: `Bearer ${KEY}` }, base = url) =>
  fetch(`${base}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });

/** The `data:` payloads of an SSE body. */
function sseData(text: string): string[] {
  return text
    .split('\n\n')
    .filter(e => e.length > 0)
    .map(e => {
      expect(e.startsWith('data: '), e).toBe(true);
      return e.slice(6);
    });
}

async function expectError(res: Response, status: number, code: string | null, param?: string | null) {
  expect(res.status).toBe(status);
  const body = (await res.json()) as { error: { message: string; type: string; param: string | null; code: string | null } };
  expect(typeof body.error.message).toBe('string');
  expect(body.error.message.length).toBeGreaterThan(0);
  expect(typeof body.error.type).toBe('string');
  expect(body.error.code).toBe(code);
  if (param !== undefined) expect(body.error.param).toBe(param);
  return body.error;
}

const messages: { role: 'system' | 'user'; content: string }[] = [
  { role: 'system', content: 'You are terse.' },
  { role: 'user', content: 'Name three colors.' },
];
const textPrompt = 'Once upon a time, in a valley of 42 sheep,';

describe('completions', () => {
  it('chat, not streamed: the greedy text of Session.generate for the same messages, with usage', async () => {
    const want = await sdk(messages, { maxTokens: 12 });
    const r = await client.chat.completions.create({ model: 'tiny', messages, max_tokens: 12, temperature: 0 });
    expect(r.object).toBe('chat.completion');
    expect(r.model).toBe('tiny');
    expect(r.choices).toHaveLength(1);
    expect(r.choices[0]!.message.role).toBe('assistant');
    expect(r.choices[0]!.message.content).toBe(want.text);
    expect(r.choices[0]!.finish_reason).toBe(want.stopReason === 'eos' ? 'stop' : 'length');
    expect(r.usage).toEqual({
      prompt_tokens: want.promptTokens,
      completion_tokens: want.completionTokens,
      total_tokens: want.promptTokens + want.completionTokens,
    });
    expect(want.completionTokens).toBeGreaterThan(0);
    // max_completion_tokens is max_tokens' newer name
    const r2 = await client.chat.completions.create({ model: 'tiny', messages, max_completion_tokens: 5, temperature: 0 });
    expect(r2.usage!.completion_tokens).toBeLessThanOrEqual(5);
    expect(want.text.startsWith(r2.choices[0]!.message.content!)).toBe(true);
  });

  it('chat, streamed: role first, deltas that join to the same text, finish_reason, usage, [DONE]', async () => {
    const want = await sdk(messages, { maxTokens: 12 });
    const stream = await client.chat.completions.create({
      model: 'tiny',
      messages,
      max_tokens: 12,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
    });
    const chunks: OpenAI.ChatCompletionChunk[] = [];
    for await (const c of stream) chunks.push(c);
    expect(chunks[0]!.choices[0]!.delta.role).toBe('assistant');
    expect(chunks.every(c => c.object === 'chat.completion.chunk' && c.id === chunks[0]!.id)).toBe(true);
    const text = chunks.map(c => c.choices[0]?.delta.content ?? '').join('');
    expect(text).toBe(want.text);
    const finishes = chunks.flatMap(c => c.choices.map(ch => ch.finish_reason)).filter(f => f !== null);
    expect(finishes).toEqual([want.stopReason === 'eos' ? 'stop' : 'length']);
    const last = chunks.at(-1)!;
    expect(last.choices).toEqual([]);
    expect(last.usage).toEqual({
      prompt_tokens: want.promptTokens,
      completion_tokens: want.completionTokens,
      total_tokens: want.promptTokens + want.completionTokens,
    });
    // the raw stream: data: lines, ending with [DONE]
    const res = await post('/v1/chat/completions', { model: 'tiny', messages, max_tokens: 4, temperature: 0, stream: true });
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^text\/event-stream/);
    const data = sseData(await res.text());
    expect(data.at(-1)).toBe('[DONE]');
    for (const d of data.slice(0, -1)) expect(JSON.parse(d).object).toBe('chat.completion.chunk');
  });

  it('text completions, streamed and not, a string or an array of one string', async () => {
    const want = await sdk(textPrompt, { maxTokens: 10 });
    const r = await client.completions.create({ model: 'tiny', prompt: textPrompt, max_tokens: 10, temperature: 0 });
    expect(r.object).toBe('text_completion');
    expect(r.choices[0]!.text).toBe(want.text);
    expect(r.usage!.prompt_tokens).toBe(want.promptTokens);
    expect(r.usage!.completion_tokens).toBe(want.completionTokens);
    const r1 = await client.completions.create({ model: 'tiny', prompt: [textPrompt], max_tokens: 10, temperature: 0 });
    expect(r1.choices[0]!.text).toBe(want.text);
    const stream = await client.completions.create({
      model: 'tiny',
      prompt: textPrompt,
      max_tokens: 10,
      temperature: 0,
      stream: true,
    });
    let text = '';
    const finishes: (string | null)[] = [];
    for await (const c of stream) {
      text += c.choices[0]!.text;
      finishes.push(c.choices[0]!.finish_reason);
    }
    expect(text).toBe(want.text);
    expect(finishes.filter(f => f !== null)).toEqual([want.stopReason === 'eos' ? 'stop' : 'length']);
    // without max_tokens: OpenAI's default of 16
    const d = await client.completions.create({ model: 'tiny', prompt: textPrompt, temperature: 0 });
    expect(d.usage!.completion_tokens).toBe((await sdk(textPrompt, { maxTokens: 16 })).completionTokens);
  });

  it('stop (a string or an array) cuts the text before the stop, finish_reason stop', async () => {
    const free = await sdk(textPrompt, { maxTokens: 30 });
    expect(free.text.length).toBeGreaterThan(8);
    const stopAt = free.text.slice(5, 7);
    const cut = free.text.indexOf(stopAt);
    for (const stop of [stopAt, ['\u0000never', stopAt]]) {
      const r = await client.completions.create({ model: 'tiny', prompt: textPrompt, max_tokens: 30, temperature: 0, stop });
      expect(r.choices[0]!.text).toBe(free.text.slice(0, cut));
      expect(r.choices[0]!.finish_reason).toBe('stop');
      const s = await client.completions.create({
        model: 'tiny',
        prompt: textPrompt,
        max_tokens: 30,
        temperature: 0,
        stop,
        stream: true,
      });
      let text = '';
      for await (const c of s) text += c.choices[0]!.text;
      expect(text).toBe(free.text.slice(0, cut));
    }
  });

  it('a seed with temperature > 0 reproduces the SDK sample with that seed', async () => {
    const opts = { temperature: 1.3, top_p: 0.95, top_k: 50, min_p: 0.01, seed: 1234, max_tokens: 16 };
    const want = await sdk(messages, { temperature: 1.3, topP: 0.95, topK: 50, minP: 0.01, seed: 1234, maxTokens: 16 });
    const a = await client.chat.completions.create({ model: 'tiny', messages, ...opts } as never);
    const b = await client.chat.completions.create({ model: 'tiny', messages, ...opts } as never);
    expect((a as OpenAI.ChatCompletion).choices[0]!.message.content).toBe(want.text);
    expect((b as OpenAI.ChatCompletion).choices[0]!.message.content).toBe(want.text);
  });
});

describe('sampler fields, logprobs and n', () => {
  /** A token's text in logprobs: its own decoding ('' for a padding id past the tokenizer's). */
  const tokenText = (t: number) => (t < tiny.model.tokenizer.vocabSize ? tiny.model.tokenizer.decode([t]) : '');

  it('penalties, logit_bias, repetition_penalty and stop_token_ids give the SDK text with the same options', async () => {
    const opts: GenerateOptions = {
      maxTokens: 14,
      presencePenalty: 0.7,
      frequencyPenalty: 1.1,
      repetitionPenalty: 1.3,
      logitBias: { 7: 5, 11: -100 },
    };
    const want = await sdk(messages, opts);
    const r = await client.chat.completions.create({
      model: 'tiny',
      messages,
      max_tokens: 14,
      temperature: 0,
      presence_penalty: 0.7,
      frequency_penalty: 1.1,
      logit_bias: { 7: 5, 11: -100 },
      repetition_penalty: 1.3,
    } as never);
    expect((r as OpenAI.ChatCompletion).choices[0]!.message.content).toBe(want.text);
    expect(want.tokens).not.toContain(11);
    // +100 on one token: greedy picks it every time
    const forced = await client.completions.create({
      model: 'tiny',
      prompt: textPrompt,
      max_tokens: 4,
      temperature: 0,
      logit_bias: { 300: 100 },
    });
    const forcedSdk = await sdk(textPrompt, { maxTokens: 4, logitBias: { 300: 100 } });
    expect(forcedSdk.tokens).toEqual([300, 300, 300, 300]);
    expect(forced.choices[0]!.text).toBe(forcedSdk.text);
    // a stop token id ends the text before it, finish_reason stop
    const free = await sdk(textPrompt, { maxTokens: 12 });
    const stopId = free.tokens[5]!;
    const cut = free.tokens.indexOf(stopId);
    const s = await post('/v1/completions', {
      model: 'tiny',
      prompt: textPrompt,
      max_tokens: 12,
      temperature: 0,
      stop_token_ids: [stopId],
    });
    const sBody = (await s.json()) as OpenAI.Completion;
    const stopped = await sdk(textPrompt, { maxTokens: 12, stopTokenIds: [stopId] });
    expect(stopped.tokens).toEqual(free.tokens.slice(0, cut));
    expect(sBody.choices[0]!.text).toBe(stopped.text);
    expect(sBody.choices[0]!.finish_reason).toBe('stop');
  });

  it("ignore_eos (vLLM's extension) generates max_tokens tokens past end-of-sequence tokens", async () => {
    const eos = tiny.model.tokenizer.eosIds[0]!;
    // +100 on the EOS id: greedy ends at once, unless told to go on
    const body = { model: 'tiny', prompt: textPrompt, max_tokens: 5, temperature: 0, logit_bias: { [eos]: 100 } };
    const ended = (await (await post('/v1/completions', body)).json()) as OpenAI.Completion;
    expect(ended.choices[0]!.finish_reason).toBe('stop');
    expect(ended.usage!.completion_tokens).toBe(0);
    const past = (await (await post('/v1/completions', { ...body, ignore_eos: true })).json()) as OpenAI.Completion;
    expect(past.choices[0]!.finish_reason).toBe('length');
    expect(past.usage!.completion_tokens).toBe(5);
    const sdkPast = await sdk(textPrompt, { maxTokens: 5, logitBias: { [eos]: 100 }, ignoreEos: true });
    expect(sdkPast.tokens).toEqual(Array(5).fill(eos));
    expect(past.choices[0]!.text).toBe(sdkPast.text);
    await expectError(await post('/v1/completions', { ...body, ignore_eos: 'yes' }), 400, 'invalid_type', 'ignore_eos');
  });

  it('GenerateOptions.onToken (what streamed logprobs use) sees every generated token with its logprobs', async () => {
    const seen: [number, unknown][] = [];
    const r = await sdk(textPrompt, { maxTokens: 7, logprobs: 2, onToken: (t, lp) => seen.push([t, lp]) });
    expect(seen).toEqual(r.tokens.map((t, i) => [t, r.logprobs![i]]));
    const plain: number[] = [];
    const p = await sdk(textPrompt, { maxTokens: 5, onToken: (t, lp) => plain.push(lp === undefined ? t : -1) });
    expect(plain).toEqual(p.tokens);
    await expect(sdk(textPrompt, { onToken: 5 as never })).rejects.toThrow(/onToken must be a function/);
  });

  it('chat logprobs / top_logprobs: the SDK values, streamed and not, with token text and bytes', async () => {
    const want = await sdk(messages, { maxTokens: 8, logprobs: 3 });
    const r = await client.chat.completions.create({
      model: 'tiny',
      messages,
      max_tokens: 8,
      temperature: 0,
      logprobs: true,
      top_logprobs: 3,
    });
    const content = r.choices[0]!.logprobs!.content!;
    expect(content).toHaveLength(want.tokens.length);
    content.forEach((c, i) => {
      const lp = want.logprobs![i]!;
      expect(c.token).toBe(tokenText(lp.token));
      expect(c.bytes).toEqual([...Buffer.from(c.token, 'utf8')]);
      expect(c.logprob).toBe(lp.logprob);
      expect(c.logprob).toBeLessThanOrEqual(0);
      expect(c.top_logprobs.map(t => t.logprob)).toEqual(lp.top.map(t => t.logprob));
      expect(c.top_logprobs.map(t => t.token)).toEqual(lp.top.map(t => tokenText(t.token)));
    });
    const stream = await client.chat.completions.create({
      model: 'tiny',
      messages,
      max_tokens: 8,
      temperature: 0,
      logprobs: true,
      top_logprobs: 3,
      stream: true,
    });
    const streamed: OpenAI.ChatCompletionTokenLogprob[] = [];
    for await (const c of stream) streamed.push(...(c.choices[0]?.logprobs?.content ?? []));
    expect(streamed).toEqual(content);
    // logprobs without alternatives
    const plain = await client.chat.completions.create({
      model: 'tiny',
      messages,
      max_tokens: 3,
      temperature: 0,
      logprobs: true,
    });
    expect(plain.choices[0]!.logprobs!.content!.every(c => c.top_logprobs.length === 0)).toBe(true);
    const none = await client.chat.completions.create({ model: 'tiny', messages, max_tokens: 3, temperature: 0 });
    expect(none.choices[0]!.logprobs).toBeNull();
  });

  it('text completion logprobs: the legacy object (tokens, token_logprobs, top_logprobs, text_offset), streamed and not', async () => {
    const want = await sdk(textPrompt, { maxTokens: 9, logprobs: 2 });
    const r = await client.completions.create({ model: 'tiny', prompt: textPrompt, max_tokens: 9, temperature: 0, logprobs: 2 });
    const lp = r.choices[0]!.logprobs!;
    const texts = want.tokens.map(tokenText);
    expect(lp.tokens).toEqual(texts);
    expect(lp.token_logprobs).toEqual(want.logprobs!.map(l => l.logprob));
    expect(lp.top_logprobs).toEqual(want.logprobs!.map(l => Object.fromEntries(l.top.map(t => [tokenText(t.token), t.logprob]))));
    // each token's offset: the characters of the tokens before it
    expect(lp.text_offset).toEqual(texts.map((_, i) => texts.slice(0, i).join('').length));
    const stream = await client.completions.create({
      model: 'tiny',
      prompt: textPrompt,
      max_tokens: 9,
      temperature: 0,
      logprobs: 2,
      stream: true,
    });
    const got = { tokens: [] as string[], token_logprobs: [] as number[], text_offset: [] as number[] };
    for await (const c of stream) {
      const l = c.choices[0]?.logprobs;
      if (!l) continue;
      got.tokens.push(...l.tokens!);
      got.token_logprobs.push(...l.token_logprobs!);
      got.text_offset.push(...l.text_offset!);
    }
    expect(got).toEqual({ tokens: lp.tokens, token_logprobs: lp.token_logprobs, text_offset: lp.text_offset });
  });

  it('n > 1: n choices generated together, choice i sampled with seed + i, streamed and not; no blocks kept', async () => {
    const opts = { temperature: 1.2, seed: 77, max_tokens: 10 };
    const want = await Promise.all([0, 1, 2].map(i => sdk(messages, { temperature: 1.2, seed: 77 + i, maxTokens: 10 })));
    const r = await client.chat.completions.create({ model: 'tiny', messages, n: 3, ...opts });
    expect(r.choices.map(c => c.index)).toEqual([0, 1, 2]);
    expect(r.choices.map(c => c.message.content)).toEqual(want.map(w => w.text));
    expect(r.usage).toEqual({
      prompt_tokens: want[0]!.promptTokens,
      completion_tokens: want.reduce((n, w) => n + w.completionTokens, 0),
      total_tokens: want[0]!.promptTokens + want.reduce((n, w) => n + w.completionTokens, 0),
    });
    const stream = await client.chat.completions.create({ model: 'tiny', messages, n: 3, ...opts, stream: true });
    const texts = ['', '', ''];
    const finishes: (string | null)[] = [null, null, null];
    for await (const c of stream)
      for (const ch of c.choices) {
        texts[ch.index] += ch.delta.content ?? '';
        if (ch.finish_reason) finishes[ch.index] = ch.finish_reason;
      }
    expect(texts).toEqual(want.map(w => w.text));
    expect(finishes).toEqual(want.map(w => (w.stopReason === 'eos' ? 'stop' : 'length')));
    const t = await client.completions.create({ model: 'tiny', prompt: textPrompt, n: 2, max_tokens: 6, temperature: 0 });
    const greedy = await sdk(textPrompt, { maxTokens: 6 });
    expect(t.choices.map(c => [c.index, c.text])).toEqual([
      [0, greedy.text],
      [1, greedy.text],
    ]);
    await server.idle();
    expect(tiny.model.engine.allocator.inUse).toBe(baseline);
  });

  it("n > 1 shares the prompt's pages: the other choices prefill only past the first one's full pages", async () => {
    const { s, u } = await start(tiny.model);
    try {
      const prompt = `A prompt of its own for n. ${textPrompt.repeat(8)}`;
      const P = tiny.model.tokenizer.encode(prompt).length;
      const page = tiny.model.engine.blockSize;
      expect(P).toBeGreaterThan(2 * page);
      const res = await post('/v1/completions', { model: 'tiny', prompt, n: 3, max_tokens: 3, temperature: 0 }, {}, u);
      const body = (await res.json()) as OpenAI.Completion;
      expect(body.choices).toHaveLength(3);
      const text = await (await fetch(`${u}/metrics`)).text();
      // choice 0 prefilled it all; choices 1 and 2 adopted its full pages (the last prompt token is always recomputed)
      expect(Number(/^longcat_prompt_tokens_cached_total (\d+)$/m.exec(text)![1])).toBe(2 * Math.floor((P - 1) / page) * page);
      expect(new Set(body.choices.map(ch => ch.text)).size).toBe(1); // greedy: the same text
    } finally {
      await s.close();
    }
  });
});

describe('tool calling', () => {
  const weather = {
    type: 'function' as const,
    function: {
      name: 'get_weather',
      description: 'The weather in a city.',
      parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
    },
  };
  const ask: OpenAI.ChatCompletionMessageParam[] = [{ role: 'user', content: 'Weather in Paris?' }];
  const callText =
    'Let me check.<longcat_tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</longcat_tool_call>';

  it('the real model: a chat with tools, tool calls and tool results is rendered as Session.generate renders it', async () => {
    const history: OpenAI.ChatCompletionMessageParam[] = [
      ...ask,
      {
        role: 'assistant',
        content: null,
        tool_calls: [{ id: 'call_1', type: 'function', function: { name: 'get_weather', arguments: '{"city":"Paris"}' } }],
      },
      { role: 'tool', tool_call_id: 'call_1', content: '{"temp_c": 21}' },
    ];
    const asSdk: ChatMessage[] = [
      { role: 'user', content: 'Weather in Paris?' },
      { role: 'assistant', content: '', toolCalls: [{ id: 'call_1', name: 'get_weather', arguments: '{"city":"Paris"}' }] },
      { role: 'tool', content: '{"temp_c": 21}', toolCallId: 'call_1' },
    ];
    const want = await sdk(asSdk, { maxTokens: 6, tools: [weather] });
    const r = await client.chat.completions.create({
      model: 'tiny',
      messages: history,
      tools: [weather],
      max_tokens: 6,
      temperature: 0,
    });
    expect(r.usage!.prompt_tokens).toBe(want.promptTokens);
    expect(r.choices[0]!.message.content).toBe(parseToolCalls(want.text).content);
    // the tool block is in the prompt: more tokens than the same chat without tools; 'none' leaves it out
    const plain = await sdk(asSdk, { maxTokens: 1 });
    expect(want.promptTokens).toBeGreaterThan(plain.promptTokens + 50);
    const none = await client.chat.completions.create({
      model: 'tiny',
      messages: history,
      tools: [weather],
      tool_choice: 'none',
      max_tokens: 1,
      temperature: 0,
    });
    expect(none.usage!.prompt_tokens).toBe(plain.promptTokens);
    await expect(sdk('a string prompt', { tools: [weather] })).rejects.toThrow(/tools need a chat prompt/);
  });

  it('a model that calls a tool: tool_calls in the message and in the stream, finish_reason tool_calls, round trip', async () => {
    const seen: { messages: ChatMessage[]; tools?: unknown }[] = [];
    let reply = callText;
    const { s, u } = await start(scripted(tiny.model, () => reply, seen));
    try {
      const c = new OpenAI({ apiKey: 'x', baseURL: `${u}/v1`, maxRetries: 0 });
      const r = await c.chat.completions.create({ model: 'tiny', messages: ask, tools: [weather] });
      const choice = r.choices[0]!;
      expect(choice.finish_reason).toBe('tool_calls');
      expect(choice.message.content).toBe('Let me check.');
      expect(choice.message.tool_calls).toHaveLength(1);
      const call = choice.message.tool_calls![0]! as OpenAI.ChatCompletionMessageFunctionToolCall;
      expect(call.type).toBe('function');
      expect(call.id).toMatch(/^call_/);
      expect(call.function).toEqual({ name: 'get_weather', arguments: '{"city":"Paris"}' });
      expect(seen.at(-1)!.tools).toEqual([weather]);

      // streamed: the text before the marker as content deltas, the marker never; then the call
      const stream = await c.chat.completions.create({ model: 'tiny', messages: ask, tools: [weather], stream: true });
      let content = '';
      const calls: OpenAI.ChatCompletionChunk.Choice.Delta.ToolCall[] = [];
      const finishes: string[] = [];
      for await (const ch of stream)
        for (const x of ch.choices) {
          content += x.delta.content ?? '';
          calls.push(...(x.delta.tool_calls ?? []));
          if (x.finish_reason) finishes.push(x.finish_reason);
        }
      expect(content).toBe('Let me check.');
      expect(calls).toHaveLength(1);
      expect(calls[0]!.index).toBe(0);
      expect(calls[0]!.function).toEqual({ name: 'get_weather', arguments: '{"city":"Paris"}' });
      expect(finishes).toEqual(['tool_calls']);

      // the round trip: the call and its result go back; the model answers in text
      reply = 'It is 21 C in Paris.';
      const next = await c.chat.completions.create({
        model: 'tiny',
        tools: [weather],
        messages: [
          ...ask,
          choice.message as OpenAI.ChatCompletionMessageParam,
          { role: 'tool', tool_call_id: call.id, content: '{"temp_c": 21}' },
        ],
      });
      expect(next.choices[0]!.message).toEqual({ role: 'assistant', content: 'It is 21 C in Paris.', refusal: null });
      expect(next.choices[0]!.finish_reason).toBe('stop');
      expect(seen.at(-1)!.messages.slice(1)).toEqual([
        {
          role: 'assistant',
          content: 'Let me check.',
          toolCalls: [{ id: call.id, name: 'get_weather', arguments: '{"city":"Paris"}' }],
        },
        { role: 'tool', content: '{"temp_c": 21}', toolCallId: call.id },
      ]);

      // invalid JSON inside the markers stays text, streamed and not
      reply = 'x<longcat_tool_call>{"name": "get_weather", "arguments": {</longcat_tool_call>';
      const bad = await c.chat.completions.create({ model: 'tiny', messages: ask, tools: [weather] });
      expect(bad.choices[0]!.message.content).toBe(reply);
      expect(bad.choices[0]!.message.tool_calls).toBeUndefined();
      expect(bad.choices[0]!.finish_reason).toBe('stop');
      const badStream = await c.chat.completions.create({ model: 'tiny', messages: ask, tools: [weather], stream: true });
      let badText = '';
      for await (const ch of badStream) badText += ch.choices[0]?.delta.content ?? '';
      expect(badText).toBe(reply);
      // without tools the markers are not parsed
      reply = callText;
      const untooled = await c.chat.completions.create({ model: 'tiny', messages: ask });
      expect(untooled.choices[0]!.message.content).toBe(callText);
    } finally {
      await s.close();
    }
  });
});

describe('errors', () => {
  const chat = (extra: Record<string, unknown>) =>
    post('/v1/chat/completions', { model: 'tiny', messages, max_tokens: 2, ...extra });

  it('400 for bad or unsupported fields, with the field named', async () => {
    await expectError(await chat({ temperature: 3 }), 400, 'invalid_type', 'temperature');
    await expectError(await chat({ temperature: 'hot' }), 400, 'invalid_type', 'temperature');
    await expectError(await chat({ max_tokens: 0 }), 400, 'invalid_type', 'max_tokens');
    await expectError(await chat({ max_tokens: 1.5 }), 400, 'invalid_type', 'max_tokens');
    await expectError(await chat({ top_p: 2 }), 400, 'invalid_type', 'top_p');
    await expectError(await chat({ seed: -1 }), 400, 'invalid_type', 'seed');
    await expectError(await chat({ stop: [1] }), 400, 'invalid_type', 'stop');
    await expectError(await chat({ stream: 'yes' }), 400, 'invalid_type', 'stream');
    await expectError(await chat({ stream_options: { include_usage: true } }), 400, null, 'stream_options');
    await expectError(await chat({ n: 0 }), 400, 'invalid_type', 'n');
    await expectError(await chat({ n: 17 }), 400, 'invalid_type', 'n');
    await expectError(await chat({ best_of: 3 }), 400, 'unsupported_parameter', 'best_of');
    await expectError(await chat({ logprobs: 'yes' }), 400, 'invalid_type', 'logprobs');
    await expectError(await chat({ top_logprobs: 2 }), 400, null, 'top_logprobs'); // without logprobs: true
    await expectError(await chat({ logprobs: true, top_logprobs: 21 }), 400, 'invalid_type', 'top_logprobs');
    await expectError(await chat({ presence_penalty: 2.5 }), 400, 'invalid_type', 'presence_penalty');
    await expectError(await chat({ repetition_penalty: 0 }), 400, 'invalid_type', 'repetition_penalty');
    await expectError(await chat({ logit_bias: { x: 10 } }), 400, null, 'logit_bias');
    await expectError(await chat({ logit_bias: { 5: 101 } }), 400, null, 'logit_bias');
    await expectError(await chat({ logit_bias: { 99999999: 1 } }), 400, null, 'logit_bias');
    await expectError(await chat({ stop_token_ids: [-1] }), 400, 'invalid_type', 'stop_token_ids');
    await expectError(await chat({ speculative: true }), 400, 'unsupported_parameter', 'speculative'); // no MTP head
    const f = { type: 'function', function: { name: 'f', parameters: {} } };
    await expectError(await chat({ tools: [f], tool_choice: 'required' }), 400, 'unsupported_parameter', 'tool_choice');
    await expectError(
      await chat({ tools: [f], tool_choice: { type: 'function', function: { name: 'f' } } }),
      400,
      'unsupported_parameter',
      'tool_choice',
    );
    await expectError(await chat({ tools: [f], tool_choice: 'sometimes' }), 400, 'invalid_type', 'tool_choice');
    await expectError(await chat({ tools: [{ type: 'function', function: { name: '' } }] }), 400, 'invalid_type', 'tools');
    await expectError(await chat({ tools: {} }), 400, 'invalid_type', 'tools');
    await expectError(await chat({ functions: [f.function] }), 400, 'unsupported_parameter', 'functions');
    await expectError(
      await chat({ messages: [{ role: 'tool', content: 'x' }] }),
      400,
      'invalid_type',
      'messages[0].tool_call_id',
    );
    await expectError(
      await chat({
        messages: [{ role: 'assistant', content: null, tool_calls: [{ id: 'a', type: 'function', function: { name: 'f' } }] }],
      }),
      400,
      'invalid_type',
      'messages[0].tool_calls',
    );
    await expectError(await chat({ messages: [{ role: 'function', name: 'f', content: 'x' }] }), 400, 'unsupported_parameter');
    await expectError(await chat({ messages: [] }), 400, 'invalid_type', 'messages');
    await expectError(await chat({ messages: [{ role: 'wizard', content: 'x' }] }), 400, null, 'messages[0].role');
    await expectError(
      await chat({ messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'x' } }] }] }),
      400,
      null,
      'messages[0].content',
    );
    await expectError(await post('/v1/chat/completions', { messages }), 400, 'missing_required_parameter', 'model');
    await expectError(await post('/v1/chat/completions', '{"model": "tiny", '), 400, null);
    const text = (extra: Record<string, unknown>) => post('/v1/completions', { model: 'tiny', max_tokens: 2, ...extra });
    await expectError(await text({ prompt: ['a', 'b'] }), 400, 'unsupported_parameter', 'prompt');
    await expectError(await text({ prompt: [1, 2, 3] }), 400, 'unsupported_parameter', 'prompt');
    await expectError(await text({ prompt: 5 }), 400, 'invalid_type', 'prompt');
    await expectError(await text({ prompt: 'x', logprobs: 21 }), 400, 'invalid_type', 'logprobs');
    await expectError(await text({ prompt: 'x', echo: true }), 400, 'unsupported_parameter', 'echo');
    await expectError(await text({ prompt: 'x', tools: [] }), 400, 'unsupported_parameter', 'tools');
    await expectError(await text({ prompt: '' }), 400, null); // encodes to no tokens
    // array text parts and the developer role are accepted (as the text and the system role)
    const parts = await chat({
      temperature: 0,
      messages: [
        { role: 'developer', content: 'You are terse.' },
        {
          role: 'user',
          content: [
            { type: 'text', text: 'Name three ' },
            { type: 'text', text: 'colors.' },
          ],
        },
      ],
    });
    expect(parts.status).toBe(200);
    const want = await sdk(messages, { maxTokens: 2 });
    expect(((await parts.json()) as OpenAI.ChatCompletion).choices[0]!.message.content).toBe(want.text);
  });

  it('400 context_length_exceeded for a prompt longer than the context, streamed or not; no blocks kept', async () => {
    const long = 'sheep and goats '.repeat(600);
    await expectError(
      await post('/v1/completions', { model: 'tiny', prompt: long, max_tokens: 2 }),
      400,
      'context_length_exceeded',
      'prompt',
    );
    await expectError(
      await post('/v1/chat/completions', { model: 'tiny', messages: [{ role: 'user', content: long }], stream: true }),
      400,
      'context_length_exceeded',
      'messages',
    );
    await server.idle();
    expect(tiny.model.engine.allocator.inUse).toBe(baseline);
  });

  it('401 without the right API key (the client sees AuthenticationError); 404 unknown route and model', async () => {
    await expectError(await post('/v1/chat/completions', { model: 'tiny', messages }, {}), 401, 'invalid_api_key');
    await expectError(
      await post('/v1/chat/completions', { model: 'tiny', messages }, { authorization: 'Bearer nope' }),
      401,
      'invalid_api_key',
    );
    const bad = new OpenAI({ apiKey: 'wrong', baseURL: `${url}/v1`, maxRetries: 0 });
    await expect(bad.models.list()).rejects.toBeInstanceOf(OpenAI.AuthenticationError);
    await expectError(await post('/v1/nothing', {}), 404, 'not_found');
    await expectError(await post('/v1/chat/completions', { model: 'gpt-4', messages }), 404, 'model_not_found', 'model');
    await expect(client.chat.completions.create({ model: 'gpt-4', messages })).rejects.toBeInstanceOf(OpenAI.NotFoundError);
    // /health and /metrics need no key; other paths do, however spelled
    await expectError(await post('/v1/nothing', {}, {}), 401, 'invalid_api_key');
    expect((await fetch(`${url}//v1/models`)).status).toBe(401);
    expect((await fetch(`${url}/v1/models?x=1`)).status).toBe(401);
    expect((await fetch(`${url}/health?x=1`)).status).toBe(200);
    expect((await fetch(`${url}/health`)).status).toBe(200);
    expect((await fetch(`${url}/metrics`)).status).toBe(200);
  });
});

type GenerateFn = (prompt: string | ChatMessage[], opts: GenerateOptions) => unknown;

/**
 * The model with each session's generate replaced by `wrap(realGenerate)` (everything else passes
 * through). The stand-in returns a Generation look-alike: awaitable and async-iterable.
 */
function withGenerate(model: Model, wrap: (generate: Session['generate']) => GenerateFn): Model {
  const bind = (target: object, key: string | symbol) => {
    const v = Reflect.get(target, key);
    return typeof v === 'function' ? v.bind(target) : v;
  };
  return new Proxy(model, {
    get(target, key) {
      if (key !== 'createSession') return bind(target, key);
      return () => {
        const session = target.createSession();
        const generate = wrap(session.generate.bind(session));
        return new Proxy(session, { get: (s, k) => (k === 'generate' ? generate : bind(s, k)) });
      };
    },
  });
}

/**
 * The model with each generation held before it starts until `gate(signal)` resolves (the test
 * controls when a request's slot is given back, without timing).
 */
const gated = (model: Model, gate: (signal: AbortSignal) => Promise<void>): Model =>
  withGenerate(model, generate => (prompt, opts) => {
    const open = gate(opts.signal!);
    // (boxed: a promise would adopt the Generation, which is thenable, as its result)
    const real = open.then(() => ({ g: generate(prompt, opts) }));
    return {
      // biome-ignore lint/suspicious/noThenProperty: stands in for a Generation, which is awaitable
      then: (ok: (r: unknown) => unknown, err: (e: unknown) => unknown) => real.then(({ g }) => g).then(ok, err),
      async *[Symbol.asyncIterator]() {
        yield* (await real).g;
      },
    };
  });

/**
 * The model with each generation's text replaced by `text()` (the real generation runs, on the real
 * prompt, so sessions, slots and rendering are exercised; its result and stream carry the scripted
 * text, streamed in pieces of 4 characters, stopReason 'eos'). Records each chat's messages and tools.
 */
const scripted = (model: Model, text: () => string, seen: { messages: ChatMessage[]; tools?: unknown }[]): Model =>
  withGenerate(model, generate => (prompt, opts) => {
    if (typeof prompt !== 'string') seen.push({ messages: prompt, tools: opts.tools });
    const t = text();
    const result = generate(prompt, { ...opts, maxTokens: 1 }).then(r => ({ ...r, text: t, stopReason: 'eos' as const }));
    return {
      // biome-ignore lint/suspicious/noThenProperty: stands in for a Generation, which is awaitable
      then: (ok: (r: unknown) => unknown, err: (e: unknown) => unknown) => result.then(ok, err),
      async *[Symbol.asyncIterator]() {
        await result;
        for (let i = 0; i < t.length; i += 4) yield t.slice(i, i + 4);
      },
    };
  });

/** A promise with its resolver. */
function deferred<T = void>() {
  let resolve!: (v: T) => void;
  const promise = new Promise<T>(r => (resolve = r));
  return { promise, resolve };
}

describe('load, queue and shutdown', () => {
  it('429 when every slot is busy and the queue is full; the held request then completes', async () => {
    const entered = deferred(),
      release = deferred();
    const { s, u } = await start(
      gated(tiny.model, () => {
        entered.resolve();
        return release.promise;
      }),
      { maxConcurrent: 1, maxQueue: 0 },
    );
    try {
      const first = post('/v1/completions', { model: 'tiny', prompt: textPrompt, max_tokens: 3, temperature: 0 }, {}, u);
      await entered.promise;
      expect(s.load).toEqual({ running: 1, queued: 0 });
      await expectError(await post('/v1/completions', { model: 'tiny', prompt: 'x', max_tokens: 1 }, {}, u), 429, 'queue_full');
      release.resolve();
      const r = await first;
      expect(r.status).toBe(200);
      expect(((await r.json()) as OpenAI.Completion).choices[0]!.text).toBe((await sdk(textPrompt, { maxTokens: 3 })).text);
    } finally {
      await s.close();
    }
  });

  it('a queued request waits for the slot, and a client leaving the queue frees its place', async () => {
    const entered: (() => void)[] = [];
    const release = deferred();
    const firstIn = deferred();
    const { s, u } = await start(
      gated(tiny.model, () => {
        entered.push(() => {});
        firstIn.resolve();
        return release.promise;
      }),
      { maxConcurrent: 1, maxQueue: 2 },
    );
    try {
      const first = post('/v1/completions', { model: 'tiny', prompt: textPrompt, max_tokens: 2, temperature: 0 }, {}, u);
      await firstIn.promise;
      const leaving = new AbortController();
      const left = fetch(`${u}/v1/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model: 'tiny', prompt: 'x', max_tokens: 2 }),
        signal: leaving.signal,
      }).catch(e => e as Error);
      const second = post('/v1/completions', { model: 'tiny', prompt: textPrompt, max_tokens: 2, temperature: 0 }, {}, u);
      // Both wait in the queue: the metrics say so (asked until they do: each answer is an event, no sleeps).
      const queued = async () => Number(/longcat_requests_queued (\d+)/.exec(await (await fetch(`${u}/metrics`)).text())![1]);
      while ((await queued()) < 2);
      leaving.abort();
      expect(await left).toBeInstanceOf(Error);
      while ((await queued()) > 1);
      release.resolve();
      expect((await first).status).toBe(200);
      expect((await second).status).toBe(200);
      await s.idle();
      expect(s.load).toEqual({ running: 0, queued: 0 });
      expect(entered).toHaveLength(2); // the request that left never generated
      expect(tiny.model.engine.allocator.inUse).toBe(baseline);
    } finally {
      await s.close();
    }
  });

  it('503 while the model loads, then serves', async () => {
    const loading = deferred<Model>();
    const { s, u } = await start(loading.promise);
    try {
      const h = await fetch(`${u}/health`);
      expect(h.status).toBe(503);
      expect(((await h.json()) as { status: string }).status).toBe('loading');
      await expectError(await post('/v1/chat/completions', { model: 'tiny', messages }, {}, u), 503, 'model_loading');
      loading.resolve(tiny.model);
      await loading.promise;
      const ok = await fetch(`${u}/health`);
      expect(ok.status).toBe(200);
      expect(await ok.json()).toEqual({ status: 'ok', model: 'tiny', running: 0, queued: 0 });
      expect((await post('/v1/chat/completions', { model: 'tiny', messages, max_tokens: 2 }, {}, u)).status).toBe(200);
    } finally {
      await s.close();
    }
  });

  it('close(): new requests are refused, the in-flight one finishes, then close resolves', async () => {
    const entered = deferred(),
      release = deferred();
    const { s, u } = await start(
      gated(tiny.model, () => {
        entered.resolve();
        return release.promise;
      }),
    );
    const inflight = post(
      '/v1/chat/completions',
      { model: 'tiny', messages, max_tokens: 4, temperature: 0, stream: true },
      {},
      u,
    );
    await entered.promise;
    let closed = false;
    const closing = s.close().then(() => (closed = true));
    // a new request: refused (the listener is closed, or 503 while it closes)
    const late = await post('/v1/chat/completions', { model: 'tiny', messages }, {}, u).catch(e => e as Error);
    if (late instanceof Response) await expectError(late, 503, 'shutting_down');
    else expect(late).toBeInstanceOf(Error);
    expect(closed).toBe(false);
    release.resolve();
    const res = await inflight;
    expect(res.status).toBe(200);
    const data = sseData(await res.text());
    expect(data.at(-1)).toBe('[DONE]');
    const text = data
      .slice(0, -1)
      .map(d => (JSON.parse(d) as OpenAI.ChatCompletionChunk).choices[0]?.delta.content ?? '')
      .join('');
    expect(text).toBe((await sdk(messages, { maxTokens: 4 })).text);
    await closing;
    expect(tiny.model.engine.allocator.inUse).toBe(baseline);
  });

  it('close() with shutdownTimeoutMs aborts the requests still running: 503 shutting_down', async () => {
    const entered = deferred();
    const { s, u } = await start(
      gated(tiny.model, signal => {
        entered.resolve();
        return new Promise(r => signal.addEventListener('abort', () => r(), { once: true }));
      }),
      { shutdownTimeoutMs: 0 },
    );
    const inflight = post('/v1/completions', { model: 'tiny', prompt: textPrompt, max_tokens: 4 }, {}, u);
    await entered.promise;
    const closing = s.close();
    await expectError(await inflight, 503, 'shutting_down');
    await closing;
    expect(tiny.model.engine.allocator.inUse).toBe(baseline);
  });
});

describe('concurrency', () => {
  it('10 concurrent streams, 4 leaving mid-stream: the others get their solo text; no blocks leak, nothing stuck', async () => {
    const prompts = Array.from({ length: 10 }, (_, i) => `Story ${i}: ${textPrompt.slice(i)}`);
    const solo = await Promise.all(prompts.map(p => sdk(p, { maxTokens: 24 })));
    const leaves = (i: number) => i % 3 === 0;
    const runs = prompts.map(async (prompt, i) => {
      const ac = new AbortController();
      const stream = await client.completions.create(
        { model: 'tiny', prompt, max_tokens: leaves(i) ? 900 : 24, temperature: 0, stream: true },
        { signal: ac.signal },
      );
      let text = '';
      try {
        for await (const c of stream) {
          text += c.choices[0]!.text;
          if (leaves(i) && text.length > 0) ac.abort();
        }
      } catch (e) {
        if (!leaves(i)) throw e;
        return null;
      }
      return text;
    });
    const texts = await Promise.all(runs);
    texts.forEach((t, i) => {
      if (!leaves(i)) expect(t).toBe(solo[i]!.text);
    });
    await server.idle();
    expect(server.load).toEqual({ running: 0, queued: 0 });
    expect(tiny.model.engine.allocator.inUse).toBe(baseline);
    const metrics = await (await fetch(`${url}/metrics`)).text();
    expect(metrics).toMatch(/^longcat_requests_finished_total\{reason="abort"\} [1-9]\d*$/m);
  });
});

describe('32 concurrent streams', () => {
  it('seeded random disconnects: the others get their solo text; no KV blocks leak, nothing stuck, metrics add up', async () => {
    const { s, u } = await start(tiny.model, { maxConcurrent: 32, maxQueue: 0 });
    try {
      const c = new OpenAI({ apiKey: 'x', baseURL: `${u}/v1`, maxRetries: 0 });
      const r = rng(4242);
      // a shared head (prefix-cache pages) with a tail of its own, half chats and half text prompts
      const head = `A shared preface. ${textPrompt.repeat(6)}`;
      const clients = Array.from({ length: 32 }, (_, i) => ({
        chat: i % 2 === 0,
        prompt: `${head} Client ${i}: ${textPrompt.slice(r.int(20))}`,
        // leaves after this many text chunks (about a third of the clients), or stays to the end
        leaveAfter: r.int(3) === 0 ? 1 + r.int(4) : null,
      }));
      const leavers = clients.filter(x => x.leaveAfter !== null).length;
      expect(leavers).toBeGreaterThan(3);
      const asChat = (p: string): { role: 'user'; content: string }[] => [{ role: 'user', content: p }];
      const solo: (GenerateResult | null)[] = [];
      for (const x of clients)
        solo.push(x.leaveAfter === null ? await sdk(x.chat ? asChat(x.prompt) : x.prompt, { maxTokens: 16 }) : null);
      const stats0 = { ...tiny.model.scheduler.stats };
      const runs = clients.map(async (x, i) => {
        const ac = new AbortController();
        const max_tokens = x.leaveAfter === null ? 16 : 400;
        let text = '',
          chunks = 0;
        try {
          if (x.chat) {
            const stream = await c.chat.completions.create(
              { model: 'tiny', messages: asChat(x.prompt), max_tokens, temperature: 0, stream: true },
              { signal: ac.signal },
            );
            for await (const ch of stream) {
              const t = ch.choices[0]?.delta.content ?? '';
              text += t;
              if (t && ++chunks === x.leaveAfter) ac.abort();
            }
          } else {
            const stream = await c.completions.create(
              { model: 'tiny', prompt: x.prompt, max_tokens, temperature: 0, stream: true },
              { signal: ac.signal },
            );
            for await (const ch of stream) {
              const t = ch.choices[0]?.text ?? '';
              text += t;
              if (t && ++chunks === x.leaveAfter) ac.abort();
            }
          }
        } catch (e) {
          if (x.leaveAfter === null) throw new Error(`client ${i} failed: ${(e as Error).message}`);
          return null;
        }
        return text;
      });
      const texts = await Promise.all(runs);
      texts.forEach((t, i) => {
        if (clients[i]!.leaveAfter === null) expect(t, `client ${i}`).toBe(solo[i]!.text);
      });
      await s.idle();
      expect(s.load).toEqual({ running: 0, queued: 0 });
      expect(tiny.model.engine.allocator.inUse).toBe(baseline);
      const text = await (await fetch(`${u}/metrics`)).text();
      const value = (name: string) => Number(new RegExp(`^${name} (\\d+)$`, 'm').exec(text)?.[1]);
      const finished = [...text.matchAll(/^longcat_requests_finished_total\{reason="(\w+)"\} (\d+)$/gm)];
      expect(finished.reduce((n, m) => n + Number(m[2]), 0)).toBe(32);
      const aborts = Number(finished.find(m => m[1] === 'abort')![2]);
      expect(aborts).toBeGreaterThan(0);
      expect(aborts).toBeLessThanOrEqual(leavers);
      expect(value('longcat_requests_running')).toBe(0);
      expect(value('longcat_kv_blocks_in_use')).toBe(baseline);
      // the shared head's pages were prefilled once: later prompts took them from the prefix cache
      expect(value('longcat_prompt_tokens_cached_total')).toBeGreaterThan(0);
      expect(value('longcat_prefix_cache_pages')).toBe(tiny.model.engine.allocator.cachedPages);
      const st = tiny.model.scheduler.stats;
      expect(Number(/^longcat_decode_steps_total\{kind="plain"\} (\d+)$/m.exec(text)![1])).toBe(st.decodeSteps);
      expect(Number(/^longcat_decode_rows_total\{kind="plain"\} (\d+)$/m.exec(text)![1])).toBe(st.decodeRows);
      expect(value('longcat_decode_batch_max')).toBe(st.largestBatch);
      // 32 streams decoding in batches of up to 32 sizes: graphs only of the buckets (graphBucket)
      const graphs = Number(/^longcat_captured_graphs\{kind="decode"\} (\d+)$/m.exec(text)![1]);
      expect(graphs).toBe(tiny.model.engine.capturedGraphs.decode);
      expect(graphs).toBeGreaterThan(0);
      expect(graphs).toBeLessThanOrEqual(new Set(Array.from({ length: 32 }, (_, i) => graphBucket(i + 1))).size);
      // every generated token after the first of each stream was a decode row
      expect(st.decodeRows - stats0.decodeRows).toBeGreaterThanOrEqual(value('longcat_generation_tokens_total') - 32);
    } finally {
      await s.close();
    }
  });
});

describe('/metrics and /health', () => {
  it('count prompt and generated tokens and finish reasons; show KV blocks', async () => {
    const { s, u } = await start(tiny.model);
    try {
      const a = (await (
        await post('/v1/completions', { model: 'tiny', prompt: textPrompt, max_tokens: 5, temperature: 0 }, {}, u)
      ).json()) as OpenAI.Completion;
      const b = (await (
        await post('/v1/chat/completions', { model: 'tiny', messages, max_tokens: 7, temperature: 0 }, {}, u)
      ).json()) as OpenAI.ChatCompletion;
      await s.idle();
      const res = await fetch(`${u}/metrics`);
      expect(res.headers.get('content-type')).toMatch(/^text\/plain/);
      const text = await res.text();
      const value = (name: string) => Number(new RegExp(`^${name} (\\d+)$`, 'm').exec(text)?.[1]);
      expect(value('longcat_prompt_tokens_total')).toBe(a.usage!.prompt_tokens + b.usage!.prompt_tokens);
      expect(value('longcat_generation_tokens_total')).toBe(a.usage!.completion_tokens + b.usage!.completion_tokens);
      expect(value('longcat_requests_running')).toBe(0);
      expect(value('longcat_requests_queued')).toBe(0);
      expect(value('longcat_kv_blocks_in_use')).toBe(baseline);
      const a0 = tiny.model.engine.allocator;
      expect(value('longcat_kv_blocks_total')).toBe(a0.inUse + a0.available);
      expect(value('longcat_kv_blocks_total')).toBeGreaterThan(0);
      const finished = [...text.matchAll(/^longcat_requests_finished_total\{reason="(\w+)"\} (\d+)$/gm)];
      expect(finished.reduce((n, m) => n + Number(m[2]), 0)).toBe(2);
      expect(text).toMatch(/^# TYPE longcat_generation_tokens_total counter$/m);
      const models = (await (await fetch(`${u}/v1/models`)).json()) as { data: { id: string }[] };
      expect(models.data.map(m => m.id)).toEqual(['tiny']);
      expect(await (await fetch(`${u}/health`)).json()).toEqual({ status: 'ok', model: 'tiny', running: 0, queued: 0 });
    } finally {
      await s.close();
    }
  });

  it('a disposed model: 503 model_unloaded, and the slot is given back', async () => {
    const other = await loadModel(tiny.dir, { backend: 'cpu', maxContext: 256 });
    const { s, u } = await start(other, { maxConcurrent: 1, maxQueue: 0 });
    try {
      other.dispose();
      for (let i = 0; i < 2; i++)
        await expectError(
          await post('/v1/completions', { model: 'tiny', prompt: 'x', max_tokens: 2 }, {}, u),
          503,
          'model_unloaded',
        );
      expect(s.load).toEqual({ running: 0, queued: 0 });
    } finally {
      await s.close();
    }
  });

  it('createServer checks its options', () => {
    expect(() => createServer(tiny.model, { maxQueue: -1 })).toThrow(/maxQueue/);
    expect(() => createServer(tiny.model, { maxConcurrent: 0 })).toThrow(/maxConcurrent/);
    expect(() => createServer(tiny.model, { apiKey: '' })).toThrow(/apiKey/);
  });
});

describe('longcat serve (dist/cli.js)', () => {
  const cli = path.resolve(__dirname, '../dist/cli.js');

  it('prints its URL, serves the checkpoint with the API key, and exits 0 on SIGTERM after the in-flight stream ends', async () => {
    const child = spawn(process.execPath, [
      cli,
      'serve',
      '--model',
      tiny.dir,
      '--port',
      '0',
      '--api-key',
      'k',
      '--model-name',
      'm',
    ]);
    const exited = once(child, 'exit');
    try {
      const lines = (stream: NodeJS.ReadableStream) => readline.createInterface({ input: stream })[Symbol.asyncIterator]();
      const out = lines(child.stdout),
        err = lines(child.stderr);
      const first = (await out.next()).value as string;
      const base = /serving on (http:\/\/127\.0\.0\.1:\d+)\/v1/.exec(first)?.[1];
      expect(base, first).toBeDefined();
      for (let line = ''; !line.includes('accepting requests'); ) {
        const r = await err.next();
        expect(r.done, 'stderr ended before the model loaded').toBe(false);
        line = r.value as string;
      }
      const c = new OpenAI({ apiKey: 'k', baseURL: `${base}/v1`, maxRetries: 0 });
      const want = await sdk(messages, { maxTokens: 6 });
      const r = await c.chat.completions.create({ model: 'm', messages, max_tokens: 6, temperature: 0 });
      expect(r.choices[0]!.message.content).toBe(want.text);
      await expectError(await post('/v1/models', {}, {}, base), 401, 'invalid_api_key');
      // SIGTERM once the stream has its first chunk: the stream still ends with [DONE], then the process exits 0
      const stream = await c.chat.completions.create({ model: 'm', messages, max_tokens: 40, temperature: 0, stream: true });
      let text = '';
      let signalled = false;
      for await (const chunk of stream) {
        text += chunk.choices[0]?.delta.content ?? '';
        if (!signalled) {
          signalled = true;
          child.kill('SIGTERM');
        }
      }
      expect(text).toBe((await sdk(messages, { maxTokens: 40 })).text);
      const [code] = await exited;
      expect(code).toBe(0);
      const rest: string[] = [];
      for (let l = await err.next(); !l.done; l = await err.next()) rest.push(l.value as string);
      expect(rest.join('\n')).toMatch(/SIGTERM: no new requests[\s\S]*stopped/);
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL');
    }
  });

  it('rejects a bad --port as a usage error (exit 2)', () => {
    const r = spawnSync(process.execPath, [cli, 'serve', '--port', 'http'], { encoding: 'utf8' });
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/--port must be an integer in \[0, 65535\]/);
  });
});
