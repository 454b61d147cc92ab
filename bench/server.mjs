// Serving through the HTTP server under concurrent load (issue 17, "Benchmarks"): createServer
// (lib/server.ts) over loopback, N clients streaming /v1/completions at once (fetch, SSE read as it
// arrives), on an init-random checkpoint of the small preset with a 512-token vocabulary (tiny with
// --quick): the generated tokenizer has 488 tokens, so with the small preset's 4,096 most sampled
// ids would be padding ids without text, and a stream would carry no chunk for them; greedy,
// `ignore_eos` (every stream generates exactly max_tokens tokens: usage says so).
//   1. At 1, 4, 16 and 64 concurrent streams (1 and 4 with --quick), each stream with its own
//      32-token prompt and TOKENS + streams tokens, all sent at once: time to first token (from the
//      request being sent to the first SSE chunk carrying text), inter-token latency (between a
//      stream's successive text chunks, pooled over the streams; a chunk holds one token unless
//      the tokenizer's text of a token was held back for the next one: tokens per text chunk is
//      reported) p50 / p90 / p99, and aggregate tokens/s: over the whole run (completion tokens of
//      all streams over first send -> last [DONE]) and in the window where every stream is
//      streaming (text chunks in it x tokens per chunk, over its length). The server's /metrics
//      before and after give the decode steps and rows the model's scheduler ran (mean batch).
//   2. Prefix-cache savings: REQUESTS chat requests, one after another, sharing a long system
//      message, each with its own question: prompt tokens the server took from the cache
//      (/metrics longcat_prompt_tokens_cached_total) and TTFT (to the stream's first event, which the
//      server sends once the prompt is prefilled), with the prefix cache on and off
//      (loadModel's prefixCache).
// Wall-clock on a shared machine: compare the figures of one run, not absolute figures across runs.
//
//   node bench/server.mjs [--quick] [--tokens N] [--out f.json] [--ckpt-root DIR]
import { existsSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker, isMainThread, parentPort } from 'node:worker_threads';
import { benchFlags, mean, now, pcts, randomText } from './common.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const { quick, outPath } = benchFlags(args);
const arg = (name, dflt) => (args.includes(name) ? args[args.indexOf(name) + 1] : dflt);
const PRESET = quick ? 'tiny' : 'small';
const TOKENS = Number(arg('--tokens', quick ? 6 : 48));
const CONCURRENCY = quick ? [1, 4] : [1, 4, 16, 64];
const PROMPT_WORDS = quick ? 8 : 24; // each stream's own prompt
const SYSTEM_WORDS = quick ? 120 : 1200; // the shared system message of the prefix-cache run
const REQUESTS = quick ? 3 : 8;
const ckptRoot = arg('--ckpt-root', path.join(here, 'out'));
const dir = path.join(ckptRoot, `ckpt-${PRESET}-server`);
const OVERRIDES = quick ? {} : { vocab_size: 512 };
/** @type {import('../dist/model/load.js').LoadModelOptions} */
const loadOpts = { backend: 'cpu', maxContext: 4096, cacheBlocks: quick ? 256 : 1024 };

/** The series of /metrics, by name and labels (`longcat_decode_steps_total{kind="plain"}`). */
async function metrics(url) {
  const body = await (await fetch(`${url}/metrics`)).text();
  const m = {};
  for (const line of body.split('\n')) {
    const hit = /^(longcat_[a-z_]+(?:\{[^}]*\})?) ([0-9.eE+-]+)$/.exec(line);
    if (hit) m[hit[1]] = Number(hit[2]);
  }
  return m;
}

/**
 * One streamed request: POST `path` with `body` (stream, usage on), reading the SSE events as they
 * arrive. Returns the send time, the arrival time of each chunk with text, the usage, the finish reason.
 */
async function stream(url, route, body) {
  const start = now();
  const res = await fetch(`${url}${route}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ ...body, stream: true, stream_options: { include_usage: true } }),
  });
  if (res.status !== 200) throw new Error(`${route}: status ${res.status}: ${await res.text()}`);
  const times = [];
  let first = null, // the first event: the role chunk, sent once the prompt is prefilled (its first token sampled)
    usage = null,
    finish = null,
    buf = '',
    done = false;
  const dec = new TextDecoder();
  for await (const bytes of res.body) {
    const t = now();
    buf += dec.decode(bytes, { stream: true });
    for (let end = buf.indexOf('\n\n'); end >= 0; end = buf.indexOf('\n\n')) {
      const event = buf.slice(0, end);
      buf = buf.slice(end + 2);
      if (!event.startsWith('data: ')) continue;
      first ??= t;
      const data = event.slice(6);
      if (data === '[DONE]') {
        done = true;
        continue;
      }
      const c = JSON.parse(data);
      if (c.usage) usage = c.usage;
      for (const ch of c.choices ?? []) {
        const piece = typeof ch.text === 'string' ? ch.text : (ch.delta?.content ?? '');
        if (piece) times.push(t);
        if (ch.finish_reason) finish = ch.finish_reason;
      }
    }
  }
  if (!done) throw new Error(`${route}: the stream ended without [DONE]`);
  return { start, end: now(), first, times, usage, finish };
}

/** The window where every stream is streaming: after the last first chunk, up to the first last one. */
function fullWindow(streams) {
  const from = Math.max(...streams.map(s => s.times[0]));
  const to = Math.min(...streams.map(s => s.times[s.times.length - 1]));
  let chunks = 0;
  for (const s of streams) for (const t of s.times) if (t > from && t <= to) chunks++;
  return { from, to, ms: to - from, chunks };
}

// ---- the clients: a worker thread (its own event loop, so chunk arrival times are not held up by
// the server's work on the main thread's loop) ------------------------------------------------------

if (!isMainThread) {
  parentPort.on('message', async ({ url, route, bodies }) => {
    try {
      parentPort.postMessage({ streams: await Promise.all(bodies.map(b => stream(url, route, b))) });
    } catch (e) {
      parentPort.postMessage({ error: String(e?.stack ?? e) });
    }
  });
} else await main();

async function main() {
  const { loadModel } = await import('../dist/generate.js');
  const { initRandom } = await import('../dist/init-random.js');
  const { createServer } = await import('../dist/server.js');
  const worker = new Worker(fileURLToPath(import.meta.url), { argv: args });
  /** The streams of `bodies`, all sent at once by the worker. */
  const clients = (url, route, bodies) =>
    new Promise((resolve, reject) => {
      worker.once('message', m => (m.error ? reject(new Error(m.error)) : resolve(m.streams)));
      worker.postMessage({ url, route, bodies });
    });

  const loadStart = os.loadavg();
  if (!existsSync(path.join(dir, 'model.safetensors.index.json')))
    await initRandom({ preset: PRESET, seed: 1, out: dir, overrides: OVERRIDES });

  const levels = [];
  {
    const model = await loadModel(dir, loadOpts);
    const server = createServer(model, { modelName: 'bench', maxConcurrent: 64, maxQueue: 256 });
    const url = await server.listen({ host: '127.0.0.1', port: 0 });
    try {
      const request = (i, maxTokens) => ({
        model: 'bench',
        prompt: randomText(1000 + i, PROMPT_WORDS),
        max_tokens: maxTokens,
        temperature: 0,
        ignore_eos: true,
      });
      // warm-up: one stream of TOKENS tokens (pages the weights in, warms the HTTP path)
      await clients(url, '/v1/completions', [request(999, TOKENS)]);
      for (const n of CONCURRENCY) {
        // warm-up: captures the decode graphs of the ramp's batch sizes
        await clients(
          url,
          '/v1/completions',
          Array.from({ length: n }, (_, i) => request(i, 3)),
        );
        const m0 = await metrics(url);
        const maxTokens = TOKENS + n;
        const t0 = now();
        const streams = await clients(
          url,
          '/v1/completions',
          Array.from({ length: n }, (_, i) => request(i, maxTokens)),
        );
        const t1 = now();
        const m1 = await metrics(url);
        const completion = streams.reduce((a, s) => a + s.usage.completion_tokens, 0);
        const chunks = streams.reduce((a, s) => a + s.times.length, 0);
        const perChunk = completion / chunks;
        const w = fullWindow(streams);
        const plain = '{kind="plain"}';
        const steps = m1[`longcat_decode_steps_total${plain}`] - m0[`longcat_decode_steps_total${plain}`],
          rows = m1[`longcat_decode_rows_total${plain}`] - m0[`longcat_decode_rows_total${plain}`];
        levels.push({
          concurrency: n,
          maxTokens,
          completionTokens: completion,
          tokensPerStream: streams.map(s => s.usage.completion_tokens),
          finishReasons: [...new Set(streams.map(s => s.finish))],
          textChunks: chunks,
          tokensPerChunk: perChunk,
          wallMs: t1 - t0,
          tokensPerSecond: completion / ((t1 - t0) / 1e3),
          window: w,
          tokensPerSecondWindow: (w.chunks * perChunk) / (w.ms / 1e3),
          scheduler: { decodeSteps: steps, decodeRows: rows, meanBatch: rows / steps, largestBatch: m1.longcat_decode_batch_max },
          capturedDecodeGraphs: m1['longcat_captured_graphs{kind="decode"}'],
          ttftMs: pcts(streams.map(s => s.times[0] - s.start)),
          itlMs: pcts(streams.flatMap(s => s.times.slice(1).map((t, i) => t - s.times[i]))),
        });
      }
    } finally {
      await server.close();
      model.dispose();
    }
  }

  // prefix cache on / off
  const prefix = {};
  for (const on of [true, false]) {
    const model = await loadModel(dir, { ...loadOpts, prefixCache: on });
    const server = createServer(model, { modelName: 'bench' });
    const url = await server.listen({ host: '127.0.0.1', port: 0 });
    try {
      const system = randomText(4242, SYSTEM_WORDS);
      const chat = (q, maxTokens) => ({
        model: 'bench',
        messages: [
          { role: 'system', content: system },
          { role: 'user', content: q },
        ],
        max_tokens: maxTokens,
        temperature: 0,
        ignore_eos: true,
      });
      // warm-up on another prompt (pages the weights in)
      await clients(url, '/v1/chat/completions', [
        { ...chat(randomText(99, 8), 2), messages: [{ role: 'user', content: randomText(98, 64) }] },
      ]);
      const reqs = [];
      for (let i = 0; i < REQUESTS; i++) {
        const m0 = await metrics(url);
        const [s] = await clients(url, '/v1/chat/completions', [chat(`Question ${i}: ${randomText(300 + i, 8)}`, 4)]);
        const m1 = await metrics(url);
        reqs.push({
          promptTokens: s.usage.prompt_tokens,
          cachedTokens: m1.longcat_prompt_tokens_cached_total - m0.longcat_prompt_tokens_cached_total,
          ttftMs: s.first - s.start, // the prefill's end: the role chunk (4 tokens may bring no text)
        });
      }
      prefix[on ? 'on' : 'off'] = {
        requests: reqs,
        promptTokens: reqs.reduce((a, r) => a + r.promptTokens, 0),
        cachedTokens: reqs.reduce((a, r) => a + r.cachedTokens, 0),
        firstTtftMs: reqs[0].ttftMs,
        laterTtftMs: mean(reqs.slice(1).map(r => r.ttftMs)),
      };
    } finally {
      await server.close();
      model.dispose();
    }
  }
  prefix.savedFraction = prefix.on.cachedTokens / prefix.on.promptTokens;
  prefix.laterTtftSpeedup = prefix.off.laterTtftMs / prefix.on.laterTtftMs;

  const res = {
    bench: 'server',
    preset: PRESET,
    quick,
    cpus: os.cpus().length,
    cpuModel: os.cpus()[0]?.model,
    loadavg: { start: loadStart, end: os.loadavg() },
    settings: { TOKENS, PROMPT_WORDS, SYSTEM_WORDS, REQUESTS },
    levels,
    prefix,
  };

  const f = (x, d = 1) => (Number.isFinite(x) ? x.toFixed(d) : String(x));
  const p3 = p => `${f(p.p50)} / ${f(p.p90)} / ${f(p.p99)}`;
  console.log(
    `server bench: ${PRESET} preset, CPU (${res.cpus} cpus), HTTP over loopback, load ${loadStart.map(x => x.toFixed(2)).join(' ')} -> ${res.loadavg.end.map(x => x.toFixed(2)).join(' ')}`,
  );
  console.log(
    '| streams | tok/s (whole run) | tok/s (all streaming) | tokens / text chunk | mean batch | decode graphs so far | TTFT ms p50/p90/p99 | ITL ms p50/p90/p99 |',
  );
  console.log('|---|---|---|---|---|---|---|---|');
  for (const l of levels)
    console.log(
      `| ${l.concurrency} | ${f(l.tokensPerSecond)} | ${f(l.tokensPerSecondWindow)} | ${f(l.tokensPerChunk, 3)} | ${f(l.scheduler.meanBatch, 2)} | ${l.capturedDecodeGraphs} | ${p3(l.ttftMs)} | ${p3(l.itlMs)} |`,
    );
  console.log(
    `Prefix cache (${REQUESTS} chat requests one after another, a ${SYSTEM_WORDS}-word shared system message): prompt tokens from the cache ${prefix.on.cachedTokens} of ${prefix.on.promptTokens} on (${f(100 * prefix.savedFraction)}%), ${prefix.off.cachedTokens} off; TTFT first ${f(prefix.on.firstTtftMs)} / ${f(prefix.off.firstTtftMs)} ms, later requests mean ${f(prefix.on.laterTtftMs)} on vs ${f(prefix.off.laterTtftMs)} off (${f(prefix.laterTtftSpeedup, 2)}x)`,
  );
  if (outPath) writeFileSync(outPath, JSON.stringify(res, null, 2));
  await worker.terminate();
}
