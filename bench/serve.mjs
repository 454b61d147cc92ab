// Serving through the SDK under concurrent load (issue 17, "Benchmarks"): Model sessions generating
// at once, their decode steps batched by the model's StepScheduler (lib/scheduler.ts), on an
// init-random checkpoint of the small preset written once under bench/out/ (tiny with --quick),
// greedy, ignoreEos (every stream generates its full length).
//   1. Aggregate decode tokens/s at 1, 4, 16 and 64 concurrent streams, in the window where every
//      stream is decoding (after the last stream's first token, before the first stream ends; each
//      stream generates TOKENS + concurrency tokens so the window holds about TOKENS full-batch
//      steps), against the byte ceiling of those steps: the non-expert weights once per step + the
//      DISTINCT routed FFN experts the batch's tokens chose, over the read bandwidth measured in
//      this run (bench/common.mjs readBandwidth). The distinct experts are counted exactly in a
//      separate untimed pass of the same workload on a second copy of the model whose experts
//      function is wrapped before its first forward (as bench/speculative.mjs does: each captured
//      decode graph, one per bucket of batch sizes (graphBucket), then holds the wrapper's views of
//      every layer's routed ids [rows, k], of which the step's own B rows are counted; ids >=
//      n_routed are zero experts and read nothing); the ceiling takes that pass's
//      mean distinct experts per step of each batch size. ratio = measured / ceiling (target >= 0.8);
//      also from the window's median step (streams x 1000 / median ITL in the window), which a
//      load spike of the shared machine does not drag down.
//      Also against a compute-aware ceiling measured in the same run: a step takes at least
//      max(step bytes / bandwidth, step FLOPs / GEMM rate), the FLOPs counted from the weights
//      (non-expert linears and lm_head per row, 2 x expert params per (token, FFN expert) pair of
//      the routing pass, the absorbed attention over the keys the rows attend) and the GEMM rate
//      of the engine's linear op on this machine, before and after the timed runs (gemmRate).
//      And per part: the non-expert weights and the routed experts run one after the other, each
//      taking at least its own max(bytes / bandwidth, FLOPs / GEMM rate) (the dense GEMMs are
//      compute-bound while the experts stream bytes); the sum is the per-part ceiling.
//      And the byte target's reach on this machine: the step's FLOPs at the peak rate of the GEMM's
//      multiply-add instruction (dotPeak: vdpbf16ps, registers only, measured before and after)
//      take at least peakMs, so no implementation can beat bytesMs / max(bytesMs, peakMs) of the
//      byte ceiling here (KV reads, attention's softmax and every small op counted as free).
//      The batch sizes the scheduler ran (model.scheduler.stats, and their distribution, from a
//      wrapper around the engine's forward) are reported. KV-cache reads are not in the ceiling.
//   1b. The batched step alone, per concurrency B: B sequences decoded by scheduler rounds with
//      nothing else running (no sessions' host work, no prefill between rounds), min and median
//      round; the median's tokens/s against the same three ceilings, and the served tokens/s over
//      the step alone's: median step over median round, full-batch window (a mean) over the mean round. Its prompts are as long as make its rows attend as many keys as the served
//      full-batch steps' rows did (both printed): shorter rows do less attention work. Where
//      a round goes (medians of per-round sums): forward()'s host part (it returns with the step
//      running), the awaited wait (native.synchronizeAsync; chained rounds: the event loop's idle time in the round), and the rest (queueing the sampler and
//      the gather, the read-backs, resolving); and the median round with a blocking
//      native.synchronize in place of the awaited wait (what awaiting costs).
//   2. Time to first token (from generate() to the first token being known; all streams start at
//      once, so later ones wait for the earlier prompts) and inter-token latency (between successive
//      tokens of a stream, pooled over the streams) percentiles p50 / p90 / p99 per concurrency; and
//      at 16 streams (4 with --quick; --long-at N), the ITL of the running streams while a LONG prompt (2,000
//      tokens; prefilled in chunks of loadModel's prefillChunk, one chunk per scheduler round)
//      arrives mid-run, against their ITL outside that prefill.
//   3. Prefix-cache savings: REQUESTS requests, one after another, sharing a long system prompt
//      (each with its own short question), with the prefix cache on vs loadModel(.., { prefixCache:
//      false }): prompt tokens computed (GenerateResult.prefillTokens) and TTFT.
// Wall-clock on a shared machine: compare the ratios of one run, not absolute figures across runs.
//
//      --long-only: this run only (after a 3-token warm-up of its streams); the chunk sizes the
//      long prompt ran in are printed (--prefill-chunk-while-decoding N: loadModel's cap on them).
//   4. Pipelined decode rounds (lib/scheduler.ts, on by default; --no-pipeline: off) and chained
//      rounds (on by default where the engine queues decode steps; --no-chain: pipelined only):
//      decode rows launched ahead of the sessions' requests, those launched on device-sampled
//      tokens, and those rolled back unused (scheduler.stats).
//
// --dist DIR: the build to measure (default ../dist; another worktree's dist for an A/B with this
// script; the GEMM probe runs on this script's own build).
//
//   node bench/serve.mjs [--quick] [--tokens N] [--concurrency 1,4,..] [--no-pipeline] [--no-chain] [--levels-only | --long-only] [--long-at N] [--prefill-chunk-while-decoding N] [--out f.json] [--ckpt-root DIR] [--dist DIR]
import { existsSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { benchFlags, distImporter, dotPeak, gemmRate, mean, now, pct, pcts, randomText } from './common.mjs';

const load = distImporter();
const { native } = await load('index.js');
const { toArray } = await load('tensor.js');
const { loadModel } = await load('generate.js');
const { graphBucket } = await load('model/model.js');
const { initRandom } = await load('init-random.js');
// the weight accounting and the read probe from the measured build too (its tensors are its own classes)
const { weightAccounting: accounting, readBandwidth } = await load('bench.js');

const here = path.dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const { quick, outPath } = benchFlags(args);
const arg = (name, dflt) => (args.includes(name) ? args[args.indexOf(name) + 1] : dflt);
/** @type {import('../dist/init-random.js').Preset} */
const PRESET = quick ? 'tiny' : 'small';
const TOKENS = Number(arg('--tokens', quick ? 6 : 48)); // full-batch decode steps wanted per concurrency
const CONCURRENCY = arg('--concurrency', quick ? '1,4' : '1,4,16,64')
  .split(',')
  .map(Number);
const PIPELINE = !args.includes('--no-pipeline');
const CHAIN = !args.includes('--no-chain');
const LEVELS_ONLY = args.includes('--levels-only'); // parts 1 and 1b only (no long prompt, no prefix cache)
const LONG_ONLY = args.includes('--long-only'); // part 2b only (after a warm-up of its streams)
// loadModel's prefillChunkWhileDecoding (a build without the option ignores it)
const CHUNK_WHILE_DECODING = args.includes('--prefill-chunk-while-decoding')
  ? Number(arg('--prefill-chunk-while-decoding'))
  : undefined;
const PROMPT = quick ? 12 : 32; // tokens of each stream's own prompt
const LONG_AT = Number(arg('--long-at', quick ? 4 : 16)); // concurrency of the long-prompt run
const LONG_PROMPT = quick ? 200 : 2000;
const PREFILL_CHUNK = quick ? 64 : 512;
const SYSTEM = quick ? 150 : 1500; // shared system prompt tokens
const REQUESTS = quick ? 3 : 8;
const ckptRoot = arg('--ckpt-root', path.join(here, 'out'));
const SEED = 1;
const MAX_CONTEXT = 4096;
/** @type {import('../dist/model/load.js').LoadModelOptions} */
const loadOpts = {
  backend: 'cpu',
  maxContext: MAX_CONTEXT,
  cacheBlocks: quick ? 256 : 1024,
  prefillChunk: PREFILL_CHUNK,
  ...(CHUNK_WHILE_DECODING !== undefined ? { prefillChunkWhileDecoding: CHUNK_WHILE_DECODING } : {}),
};
const GEN = { temperature: 0, ignoreEos: true };

// ---- prompts: seeded random words, cut to a token count ------------------------------------

/** A prompt of `n` tokens (the tokenizer's count) drawn from seed's words. */
function promptOf(tokenizer, seed, n) {
  let t = randomText(seed, n);
  while (tokenizer.encode(t).length < n) t += ` ${randomText(seed + 7919, n)}`;
  let lo = 0,
    hi = t.length; // shortest prefix of t with >= n tokens
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (tokenizer.encode(t.slice(0, mid)).length >= n) hi = mid;
    else lo = mid + 1;
  }
  return t.slice(0, lo);
}

// ---- instrumentation ------------------------------------------------------------------------

/** Records every decode step's batch size (the scheduler's forward with collectRouting) and, per
 *  session, the time each of its tokens became known; `onToken` (if set) is called after each. */
function instrument(model) {
  const e = model.engine;
  const batches = [],
    ctxs = [], // per decode step: the mean keys its rows attend (each row's cached tokens and its own)
    prefills = []; // per prefill forward: its tokens
  const fwd = e.forward.bind(e);
  e.forward = (seqs, tokens, opts) => {
    if (opts?.collectRouting) {
      batches.push(seqs.length);
      ctxs.push(seqs.reduce((a, q) => a + q.length + 1, 0) / seqs.length);
    } else if (opts?.mode === 'prefill') prefills.push(tokens[0].length);
    return fwd(seqs, tokens, opts);
  };
  const tokenTimes = new Map(); // SequenceCache -> ms of each token (the first: when its prefill's sample was read)
  const sched = model.scheduler;
  const decode = sched.decode.bind(sched);
  sched.decode = (seq, token, ...rest) => {
    const list = tokenTimes.get(seq) ?? [];
    if (!list.length) list.push(now()); // the first token: known when the session asks for its first step
    tokenTimes.set(seq, list);
    const p = decode(seq, token, ...rest);
    p.then(
      r => {
        if (r && typeof r === 'object') list.push(now());
        inst.onToken?.();
      },
      () => {},
    );
    return p;
  };
  const inst = { batches, ctxs, prefills, tokenTimes, onToken: null };
  return inst;
}

/** The session's sequence (its KV cache; a private field, read for the measurement only), the key of the token times.
 *  @param {any} session */
const seqOf = session => session.seq;

/**
 * `n` sessions start generating at once (prompts of PROMPT tokens, each its own), `maxTokens` each.
 * Returns per stream: the generate() call time, token times, result; `during` runs once, concurrently.
 */
async function runStreams(model, inst, n, maxTokens, seed0, during = null) {
  const sessions = Array.from({ length: n }, () => model.createSession());
  const prompts = sessions.map((_, i) => promptOf(model.tokenizer, seed0 + i, PROMPT));
  const t0 = now();
  const gens = sessions.map((s, i) => s.generate(prompts[i], { ...GEN, maxTokens }));
  const side = during ? during(sessions) : null;
  const results = await Promise.all(gens.map(g => Promise.resolve(g)));
  const sideResult = side ? await side : null;
  const streams = sessions.map((s, i) => ({ start: t0, times: inst.tokenTimes.get(seqOf(s)) ?? [], result: results[i] }));
  for (const s of sessions) inst.tokenTimes.delete(seqOf(s));
  for (const s of sessions) s.dispose();
  return { streams, side: sideResult };
}

/** The window where every stream decodes: tokens whose times fall in it, and its length. */
function fullWindow(streams) {
  const from = Math.max(...streams.map(s => s.times[0]));
  const to = Math.min(...streams.map(s => s.times[s.times.length - 1]));
  let tokens = 0;
  for (const s of streams) for (const t of s.times) if (t > from && t <= to) tokens++;
  return { from, to, ms: to - from, tokens };
}

const itls = streams => streams.flatMap(s => s.times.slice(1).map((t, i) => t - s.times[i]));

// ---- routing pass: distinct experts per decode step ----------------------------------------

/** Untimed: the same workloads on a model whose experts function is wrapped; per concurrency, the
 *  decode steps' batch sizes and distinct FFN experts (summed over layers). */
async function routingPass(dir, maxTokensOf) {
  const model = await loadModel(dir, loadOpts);
  const e = model.engine,
    { layers, nRouted } = e.dims;
  const views = new Map(); // graph size (graphBucket) -> idx views [rows, k] of its captured graph, one per layer
  let sink = null;
  // wrapped before the first forward (the graphs capture it)
  e.wrapExperts(inner => (stream, out, u, idx, weights, experts, nExperts) => {
    if (sink) sink.push(idx.view(idx.shape));
    inner(stream, out, u, idx, weights, experts, nExperts);
  });
  let steps = [];
  const fwd = e.forward.bind(e);
  e.forward = (seqs, tokens, opts) => {
    if (!opts?.collectRouting) return fwd(seqs, tokens, opts);
    const B = seqs.length,
      G = graphBucket(B);
    if (!views.has(G)) views.set(G, []);
    sink = views.get(G).length ? null : views.get(G);
    const r = fwd(seqs, tokens, opts);
    sink = null;
    const ctx = seqs.reduce((a, q) => a + q.length, 0); // keys the step's rows attend (each row's own included)
    const vs = views.get(G);
    if (vs.length !== layers) throw new Error(`routing pass: ${vs.length} expert calls captured for ${layers} layers`);
    native.synchronize(e.device);
    let distinct = 0;
    for (const v of vs) {
      const seen = new Set();
      const ids = toArray(v);
      for (const id of ids.subarray(0, B * v.shape[1])) if (id < nRouted) seen.add(id); // the step's rows, not the padding
      distinct += seen.size;
    }
    let ffnRows = 0; // (token, FFN expert) pairs of the step, summed over layers
    for (const t of r.nFfn) for (const c of toArray(t)) ffnRows += c;
    if (r.ffnCounts) {
      // the step's counts as one int32 [layers, Tp] (collectRouting 'stacked'): its rows, not the padding
      const c = toArray(r.ffnCounts),
        stride = r.ffnCounts.shape[1];
      for (let l = 0; l < r.ffnCounts.shape[0]; l++) for (let b = 0; b < B; b++) ffnRows += c[l * stride + b];
    }
    steps.push({ B, distinct, ffnRows, ctx });
    return r;
  };
  const inst = { tokenTimes: new Map() };
  const res = {};
  try {
    for (const n of CONCURRENCY) {
      steps = [];
      await runStreams(model, inst, n, maxTokensOf(n), 1000 * n);
      const full = steps.filter(s => s.B === n);
      res[n] = {
        fullSteps: full.length,
        distinctPerStep: mean(full.map(s => s.distinct)),
        ffnRowsPerStep: mean(full.map(s => s.ffnRows)),
        ctxPerStep: mean(full.map(s => s.ctx)),
        steps,
      };
    }
  } finally {
    for (const vs of views.values()) for (const v of vs) v.dispose();
    model.dispose();
  }
  return { res, layers, nRouted };
}

// ---- compute ceiling: this machine's GEMM rate ------------------------------------------------

/**
 * FLOPs of a decode step of B rows: the non-expert linears (the decode form: kv_b as W_UK / W_UV
 * has kv_b's MACs) and the lm_head per row, the routed FFN experts per (token, expert) pair
 * (zero experts compute nothing), and the absorbed attention, 4 kv_lora + 2 rope FLOPs per head
 * per cached key and sub-layer (ctx: the keys the step's rows attend, summed).
 */
const stepFlops = (acc, dims, B, ffnRows, ctx) => {
  const nonExpert =
    2 * B * (acc.denseParams + acc.headParams) + 2 * dims.layers * dims.heads * ctx * (4 * dims.kvLora + 2 * dims.rope);
  const experts = 2 * acc.expertParams * ffnRows;
  return { nonExpert, experts, total: nonExpert + experts };
};

// ---- main -------------------------------------------------------------------------------------

const loadStart = os.loadavg();
const dir = path.join(ckptRoot, `ckpt-${PRESET}-serve`);
if (!existsSync(path.join(dir, 'model.safetensors.index.json'))) await initRandom({ preset: PRESET, seed: SEED, out: dir });

const model = await loadModel(dir, loadOpts);
if ('pipeline' in model.scheduler) model.scheduler.pipeline = PIPELINE;
if ('chain' in model.scheduler) model.scheduler.chain = CHAIN;
const acc = accounting(model);
const inst = instrument(model);
const gbpsBefore = readBandwidth();
const gflopsBefore = gemmRate(model.engine.dims.hidden, quick ? 5 : 15);
const peakBefore = dotPeak();
const dims = model.engine.dims;
const maxTokensOf = n => TOKENS + n;

// 1 + 2: concurrency levels
/** @type {any[]} */
const levels = [];
for (const n of LONG_ONLY ? [] : CONCURRENCY) {
  await runStreams(model, inst, n, 3, 1000 * n); // warm-up: pages the weights in, captures the ramp's graphs
  const s0 = { ...model.scheduler.stats };
  const b0 = inst.batches.length;
  const { streams } = await runStreams(model, inst, n, maxTokensOf(n), 1000 * n);
  const s1 = model.scheduler.stats;
  const batches = inst.batches.slice(b0);
  const fullCtx = inst.ctxs.slice(b0).filter((_, i) => batches[i] === n); // the full-batch steps' contexts
  const hist = {};
  for (const b of batches) hist[b] = (hist[b] ?? 0) + 1;
  const w = fullWindow(streams);
  // the steps of the window, by their median (robust to the load spikes of a shared machine)
  const windowItl = streams.flatMap(s =>
    s.times
      .slice(1)
      .map((t, i) => [s.times[i], t])
      .filter(([a, b]) => a >= w.from && b <= w.to),
  );
  const medianStepMs = pct(
    windowItl.map(([a, b]) => b - a),
    50,
  );
  levels.push({
    concurrency: n,
    maxTokens: maxTokensOf(n),
    window: { ms: w.ms, tokens: w.tokens, steps: w.tokens / n },
    tokensPerSecond: w.tokens / (w.ms / 1e3),
    medianStepMs,
    tokensPerSecondMedianStep: (n * 1e3) / medianStepMs,
    scheduler: {
      decodeSteps: s1.decodeSteps - s0.decodeSteps,
      decodeRows: s1.decodeRows - s0.decodeRows,
      meanBatch: (s1.decodeRows - s0.decodeRows) / (s1.decodeSteps - s0.decodeSteps),
      largestBatch: s1.largestBatch,
      continuedRows: (s1.continuedRows ?? 0) - (s0.continuedRows ?? 0),
      chainedRows: (s1.chainedRows ?? 0) - (s0.chainedRows ?? 0),
      droppedRows: (s1.droppedRows ?? 0) - (s0.droppedRows ?? 0),
    },
    batchHistogram: hist,
    fullBatchCtx: mean(fullCtx),
    ttftMs: pcts(streams.map(s => s.times[0] - s.start)),
    itlMs: pcts(itls(streams)),
    ttftReportedMs: pcts(streams.map(s => s.result.timeToFirstTokenMs)),
  });
}

// 1b: the batched step alone: B sequences (32-token prompts) decoded by STEP_ROUNDS scheduler
// rounds with nothing else running (no sessions, no prefill between rounds): min and median round
const STEP_ROUNDS = quick ? 4 : 16;
for (const l of levels) {
  const e = model.engine,
    B = l.concurrency;
  const seqs = Array.from({ length: B }, () => e.newSequence());
  // Prompts long enough that its timed rounds attend as many keys as the served full-batch steps
  // did (l.fullBatchCtx; their rows are PROMPT + up to maxTokens tokens long): a step at a shorter
  // context does less attention work, and the served / alone comparison would charge that to serving.
  const aloneLen = Math.max(PROMPT, Math.round(l.fullBatchCtx - 1 - (STEP_ROUNDS + 3) / 2));
  const prompts = seqs.map((_, b) => Array.from({ length: aloneLen }, (_, i) => (b * 37 + i * 11) % e.dims.vocab));
  const first = e.forward(seqs, prompts);
  first.logits.dispose();
  const greedy = { temperature: 0, topK: 0, topP: 1, minP: 0, seed: 0 };
  let next = seqs.map((_, b) => b % e.dims.vocab);
  // the round's parts: wrappers on the engine's forward and on the wait the scheduler awaits, summed
  // over the round (with pipelined rounds a round waits for the step launched in the round before,
  // then launches the next one: the calls do not come in the order forward, wait)
  const fwd = e.forward,
    awaited = native.synchronizeAsync;
  let forwardMs = 0,
    waitMs = 0;
  const ctxs = [];
  e.forward = (...a) => {
    ctxs.push(a[0].reduce((s, q) => s + q.length + 1, 0) / a[0].length);
    const t = now();
    const r = fwd(...a);
    forwardMs += now() - t;
    return r;
  };
  const wait = blocking => async d => {
    const t = now();
    if (blocking) native.synchronize(d);
    else await awaited(d);
    waitMs += now() - t;
  };
  const rounds = async blocking => {
    native.synchronizeAsync = wait(blocking);
    const ms = [],
      parts = { forwardMs: [], waitMs: [], otherMs: [] };
    try {
      for (let i = 0; i <= STEP_ROUNDS; i++) {
        forwardMs = waitMs = 0;
        if (i === 1 && !blocking) ctxs.length = 0; // the timed rounds' steps
        const t0 = now(),
          elu = performance.eventLoopUtilization();
        const r = await Promise.all(
          seqs.map((q, b) =>
            model.scheduler.decode(q, next[b], greedy, undefined, { more: true, left: Number.POSITIVE_INFINITY }),
          ),
        );
        const t1 = now();
        // chained rounds await a read-back queued at the launch (native.readAsync), not the wrapped
        // wait: their awaited time is the event loop's idle time in the round
        if (!blocking) waitMs = Math.max(waitMs, performance.eventLoopUtilization(elu).idle);
        next = r.map(x => (typeof x === 'object' ? x.next : 0));
        if (i === 0) continue; // a warm-up
        ms.push(t1 - t0);
        parts.forwardMs.push(forwardMs);
        parts.waitMs.push(waitMs);
        parts.otherMs.push(t1 - t0 - forwardMs - waitMs);
      }
    } finally {
      native.synchronizeAsync = awaited;
    }
    return { ms, parts };
  };
  let ms, parts, blockingMs, ctx;
  try {
    ({ ms, parts } = await rounds(false));
    ctx = mean(ctxs);
    blockingMs = (await rounds(true)).ms;
  } finally {
    e.forward = fwd;
  }
  for (const q of seqs) {
    model.scheduler.release?.(q); // a step launched ahead for it (pipelined rounds)
    q.release();
  }
  l.stepAlone = {
    rounds: ms.length,
    minMs: pct(ms, 0),
    medianMs: pct(ms, 50),
    meanMs: mean(ms),
    parts: Object.fromEntries(Object.entries(parts).map(([k, v]) => [k, pct(v, 50)])),
    blockingWaitMedianMs: pct(blockingMs, 50),
    promptTokens: aloneLen,
    ctx,
  };
}

// 2b: a long prompt arriving mid-run
let longPrompt;
if (!LEVELS_ONLY) {
  const n = LONG_AT;
  const text2k = promptOf(model.tokenizer, 777, LONG_PROMPT);
  /** @type {any} */
  let window = null;
  if (LONG_ONLY) await runStreams(model, inst, n, 3, 1000 * n); // warm-up (the levels' otherwise)
  let p0 = 0,
    p1 = 0; // its prefill forwards: inst.prefills[p0, p1) (the running streams' prompts are done before)
  const { streams, side } = await runStreams(model, inst, n, TOKENS * 2 + n, 5000, sessions => {
    const watched = sessions.map(seqOf);
    // The long prompt arrives at the token that gives every stream a third of its tokens (from the
    // token hook, not a timer: a timer's turn can come after the streams ended on a fast model, and
    // then nothing overlaps the prefill); its chunks then interleave with the streams' last steps.
    return new Promise((resolve, reject) => {
      inst.onToken = () => {
        if (!watched.every(q => (inst.tokenTimes.get(q)?.length ?? 0) > (TOKENS * 2 + n) / 3)) return;
        inst.onToken = null;
        const long = model.createSession();
        p0 = inst.prefills.length;
        const from = now();
        long.generate(text2k, { ...GEN, maxTokens: 1 }).then(r => {
          window = { from, to: from + r.timeToFirstTokenMs };
          p1 = inst.prefills.length;
          long.dispose();
          resolve(r);
        }, reject);
      };
    });
  });
  // intervals of the running streams while every one decodes: overlapping the long prefill or not
  const all = fullWindow(streams);
  const inside = [],
    outside = [];
  for (const s of streams)
    for (let i = 1; i < s.times.length; i++) {
      const t = s.times[i];
      if (t <= all.from || t > all.to) continue;
      (t > window.from && s.times[i - 1] < window.to ? inside : outside).push(t - s.times[i - 1]);
    }
  longPrompt = {
    concurrency: n,
    promptTokens: side.promptTokens,
    prefillChunk: PREFILL_CHUNK,
    prefillChunkWhileDecoding: CHUNK_WHILE_DECODING,
    // the prefill forwards from its arrival to its first token (the running streams' prompts are long prefilled)
    chunkTokens: inst.prefills.slice(p0, p1),
    longTtftMs: side.timeToFirstTokenMs,
    itlDuringMs: pcts(inside),
    itlOutsideMs: pcts(outside),
    maxItlDuringMs: Math.max(...inside),
    fullWindowMs: all.ms,
  };
}
model.dispose();

// 3: prefix cache on / off
const prefix = {};
for (const on of LEVELS_ONLY || LONG_ONLY ? [] : [true, false]) {
  const m = await loadModel(dir, { ...loadOpts, prefixCache: on });
  const system = promptOf(m.tokenizer, 4242, SYSTEM);
  // warm-up on another prompt (pages in, graphs)
  await m.createSession().generate(promptOf(m.tokenizer, 99, 64), { ...GEN, maxTokens: 2 });
  const reqs = [];
  for (let i = 0; i < REQUESTS; i++) {
    const s = m.createSession();
    const r = await s.generate(`${system}\nQuestion ${i}: ${randomText(300 + i, 8)}`, { ...GEN, maxTokens: 4 });
    reqs.push({ promptTokens: r.promptTokens, prefillTokens: r.prefillTokens, ttftMs: r.timeToFirstTokenMs });
    s.dispose();
  }
  prefix[on ? 'on' : 'off'] = {
    requests: reqs,
    prefillTokens: reqs.reduce((a, r) => a + r.prefillTokens, 0),
    promptTokens: reqs.reduce((a, r) => a + r.promptTokens, 0),
    firstTtftMs: reqs[0].ttftMs,
    laterTtftMs: mean(reqs.slice(1).map(r => r.ttftMs)),
  };
  m.dispose();
}
if (!LEVELS_ONLY && !LONG_ONLY) {
  prefix.prefillSaved = 1 - prefix.on.prefillTokens / prefix.off.prefillTokens;
  prefix.laterTtftSpeedup = prefix.off.laterTtftMs / prefix.on.laterTtftMs;
}

// The read bandwidth, before and after the timed runs: the higher (a ceiling never lowered by a slow sample).
const gbpsAfter = readBandwidth();
const gbps = Math.max(gbpsBefore, gbpsAfter);
const gflopsAfter = gemmRate(dims.hidden, quick ? 5 : 15);
const gflops = Math.max(gflopsBefore, gflopsAfter);
const peakAfter = dotPeak();
const peak = Math.max(peakBefore.gflops, peakAfter.gflops);

// the ceiling, from the routing pass
const rt = LONG_ONLY ? null : await routingPass(dir, maxTokensOf);
for (const l of levels) {
  const r = rt.res[l.concurrency];
  const stepBytes = acc.nonExpertBytes + r.distinctPerStep * acc.expertBytes;
  const ceiling = (l.concurrency * gbps * 1e9) / stepBytes;
  l.bytes = { distinctExpertsPerStep: r.distinctPerStep, routedFullSteps: r.fullSteps, stepBytes };
  l.ceilingTokensPerSecond = ceiling;
  l.ratio = l.tokensPerSecond / ceiling;
  l.ratioMedianStep = l.tokensPerSecondMedianStep / ceiling;
  // the compute-aware ceiling: a step takes at least max(bytes / bandwidth, FLOPs / GEMM rate)
  const fl = stepFlops(acc, dims, l.concurrency, r.ffnRowsPerStep, r.ctxPerStep);
  const flops = fl.total;
  const bytesMs = stepBytes / gbps / 1e6,
    flopsMs = flops / gflops / 1e6;
  // per part (the non-expert weights, the routed experts: one after the other in the step), each
  // its own max(bytes, FLOPs): the dense GEMMs are compute-bound while the experts stream bytes
  const part = (bytes, f) => Math.max(bytes / gbps / 1e6, f / gflops / 1e6);
  const partsMs = part(acc.nonExpertBytes, fl.nonExpert) + part(r.distinctPerStep * acc.expertBytes, fl.experts);
  l.compute = {
    stepFlops: flops,
    nonExpertFlops: fl.nonExpert,
    expertFlops: fl.experts,
    partsMs,
    ffnRowsPerStep: r.ffnRowsPerStep,
    ctxPerStep: r.ctxPerStep,
    bytesMs,
    flopsMs,
    bound: flopsMs > bytesMs ? 'compute' : 'bytes',
    peakMs: flops / peak / 1e6,
  };
  // the best ratio to the byte ceiling any step doing these FLOPs could reach on this machine
  l.byteRatioReach = bytesMs / Math.max(bytesMs, l.compute.peakMs);
  l.ceilingComputeTokensPerSecond = (l.concurrency * 1e3) / Math.max(bytesMs, flopsMs);
  l.ratioCompute = l.tokensPerSecond / l.ceilingComputeTokensPerSecond;
  l.ratioComputeMedianStep = l.tokensPerSecondMedianStep / l.ceilingComputeTokensPerSecond;
  l.ceilingPartsTokensPerSecond = (l.concurrency * 1e3) / partsMs;
  l.ratioParts = l.tokensPerSecond / l.ceilingPartsTokensPerSecond;
  l.ratioPartsMedianStep = l.tokensPerSecondMedianStep / l.ceilingPartsTokensPerSecond;
  // the step alone (1b), its median round against the three ceilings
  const sa = l.stepAlone;
  sa.tokensPerSecond = (l.concurrency * 1e3) / sa.medianMs;
  sa.tokensPerSecondMean = (l.concurrency * 1e3) / sa.meanMs; // all its rounds' time: the served window's kind of figure
  sa.ratio = sa.tokensPerSecond / ceiling;
  sa.ratioCompute = sa.tokensPerSecond / l.ceilingComputeTokensPerSecond;
  sa.ratioParts = sa.tokensPerSecond / l.ceilingPartsTokensPerSecond;
}

const res = {
  bench: 'serve',
  preset: PRESET,
  quick,
  cpus: os.cpus().length,
  cpuModel: os.cpus()[0]?.model,
  loadavg: { start: loadStart, end: os.loadavg() },
  readGBps: gbps,
  readGBpsSamples: [gbpsBefore, gbpsAfter],
  gemmGflops: gflops,
  gemmGflopsSamples: [gflopsBefore, gflopsAfter],
  peakGflops: peak,
  peakGflopsSamples: [peakBefore.gflops, peakAfter.gflops],
  peakInstruction: peakBefore.instruction,
  accounting: {
    nonExpertBytes: acc.nonExpertBytes,
    expertBytes: acc.expertBytes,
    nonExpertParams: acc.denseParams + acc.headParams,
    expertParams: acc.expertParams,
    layers: rt?.layers,
    nRouted: rt?.nRouted,
    topk: dims.topk,
    weightDtype: acc.weightDtype,
  },
  settings: {
    TOKENS,
    PROMPT,
    LONG_AT,
    LONG_PROMPT,
    PREFILL_CHUNK,
    CHUNK_WHILE_DECODING,
    SYSTEM,
    REQUESTS,
    PIPELINE,
    CHAIN,
    LEVELS_ONLY,
    LONG_ONLY,
  },
  levels,
  longPrompt,
  prefix,
};

const f = (x, d = 1) => (Number.isFinite(x) ? x.toFixed(d) : String(x));
/** The batch sizes run: full batches, and the ramp's smaller ones (all streams start at once, one prompt per round). */
const batchSizes = l => {
  const full = l.batchHistogram[l.concurrency] ?? 0;
  const ramp = Object.entries(l.batchHistogram).filter(([b]) => Number(b) !== l.concurrency);
  const rampSteps = ramp.reduce((a, [, c]) => a + c, 0);
  return rampSteps ? `${l.concurrency}: ${full}, 1..${l.concurrency - 1}: ${rampSteps}` : `${l.concurrency}: ${full}`;
};
/** Chunk sizes as runs: 512 x 3, 464. */
const chunkList = c => {
  const runs = [];
  for (const t of c) {
    const last = runs.at(-1);
    if (last && last[0] === t) last[1]++;
    else runs.push([t, 1]);
  }
  return runs.map(([t, k]) => (k > 1 ? `${t} x ${k}` : `${t}`)).join(', ');
};
const p3 = p => `${f(p.p50)} / ${f(p.p90)} / ${f(p.p99)}`;
console.log(
  `serve bench: ${PRESET} preset, CPU (${res.cpus} cpus), read ${f(gbps, 2)} GB/s (${f(gbpsBefore, 2)} before, ${f(gbpsAfter, 2)} after), GEMM ${f(gflops, 1)} GFLOP/s (${f(gflopsBefore, 1)} / ${f(gflopsAfter, 1)}) = ${f(gflops / peak, 2)} of the ${peakBefore.instruction} peak ${f(peak, 1)} (${f(peakBefore.gflops, 1)} / ${f(peakAfter.gflops, 1)}), load ${loadStart.map(x => x.toFixed(2)).join(' ')} -> ${res.loadavg.end.map(x => x.toFixed(2)).join(' ')}`,
);
if (!LONG_ONLY) {
  console.log(
    `step bytes = ${f(acc.nonExpertBytes / 1e6, 2)} MB non-expert + distinct experts x ${f(acc.expertBytes / 1e6, 3)} MB (${rt?.layers} layers x ${rt?.nRouted} experts)`,
  );
  console.log(
    `step FLOPs = streams x 2 x ${f((acc.denseParams + acc.headParams) / 1e6, 2)} M non-expert + (token, expert) pairs x 2 x ${f(acc.expertParams / 1e6, 3)} M + attention`,
  );
  console.log(
    '| streams | tok/s (full batch) | byte ceiling tok/s | ratio | compute-aware ceiling tok/s (bound) | ratio | per-part ceiling tok/s | ratio | tok/s, median step | ratios, median step (byte / compute-aware / per-part) | distinct experts/step | mean batch | batch sizes run (size:steps) | TTFT ms p50/p90/p99 | ITL ms p50/p90/p99 |',
  );
  console.log('|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|');
  for (const l of levels)
    console.log(
      `| ${l.concurrency} | ${f(l.tokensPerSecond)} | ${f(l.ceilingTokensPerSecond)} | ${f(l.ratio, 3)} | ${f(l.ceilingComputeTokensPerSecond)} (${l.compute.bound}) | ${f(l.ratioCompute, 3)} | ${f(l.ceilingPartsTokensPerSecond)} | ${f(l.ratioParts, 3)} | ${f(l.tokensPerSecondMedianStep)} | ${f(l.ratioMedianStep, 3)} / ${f(l.ratioComputeMedianStep, 3)} / ${f(l.ratioPartsMedianStep, 3)} | ${f(l.bytes.distinctExpertsPerStep)} | ${f(l.scheduler.meanBatch, 2)} | ${batchSizes(l)} | ${p3(l.ttftMs)} | ${p3(l.itlMs)} |`,
    );
  console.log(
    `The byte target's reach here (the step's FLOPs at the ${peakBefore.instruction} peak, every other cost free: no step can beat this ratio to the byte ceiling): ${levels.map(l => `${l.concurrency}: ${f(l.byteRatioReach, 2)} (${f(l.compute.stepFlops / 1e9, 2)} GFLOP >= ${f(l.compute.peakMs, 2)} ms vs ${f(l.compute.bytesMs, 2)} ms of bytes)${l.byteRatioReach < 0.8 ? ': 0.8 out of reach' : ''}`).join(', ')}`,
  );
  console.log(
    `Pipelined rounds: ${PIPELINE ? 'on' : 'off'}, chained: ${CHAIN ? 'on' : 'off'}; decode rows launched ahead / of them chained / rolled back unused: ${levels.map(l => `${l.concurrency}: ${l.scheduler.continuedRows} / ${l.scheduler.chainedRows} / ${l.scheduler.droppedRows}`).join(', ')}`,
  );
  console.log('\nThe batched step alone (scheduler rounds of B sequences, nothing else running):');
  console.log(
    '| streams | round ms min / median / mean | tok/s (median / mean) | served tok/s over it: median step / median, full batch / mean | ratio to byte / compute-aware / per-part ceiling | median ms: forward host / awaited wait / the rest (sampler, read-backs, resolving) | round ms, blocking wait (median) | keys attended per row: served full batch / this (prompt) |',
  );
  console.log('|---|---|---|---|---|---|---|---|');
  // (a median against a median, a mean against a mean: the served window's spikes count against the
  // served figure only if the step alone's count against it too)
  for (const l of levels) {
    const sa = l.stepAlone,
      p = sa.parts;
    console.log(
      `| ${l.concurrency} | ${f(sa.minMs, 2)} / ${f(sa.medianMs, 2)} / ${f(sa.meanMs, 2)} | ${f(sa.tokensPerSecond)} / ${f(sa.tokensPerSecondMean)} | ${f(l.tokensPerSecondMedianStep / sa.tokensPerSecond, 3)}, ${f(l.tokensPerSecond / sa.tokensPerSecondMean, 3)} | ${f(sa.ratio, 3)} / ${f(sa.ratioCompute, 3)} / ${f(sa.ratioParts, 3)} | ` +
        `${f(p.forwardMs, 3)} / ${f(p.waitMs, 3)} / ${f(p.otherMs, 3)} | ${f(sa.blockingWaitMedianMs, 2)} | ${f(l.fullBatchCtx, 1)} / ${f(sa.ctx, 1)} (${sa.promptTokens}) |`,
    );
  }
}
if (!LEVELS_ONLY) {
  console.log(
    `Long prompt (${longPrompt.promptTokens} tokens, ${longPrompt.chunkTokens.length} chunks: ${chunkList(longPrompt.chunkTokens)}) arriving among ${LONG_AT} streams: its TTFT ${f(longPrompt.longTtftMs)} ms; running streams' ITL p50/p90/p99 during its prefill ${p3(longPrompt.itlDuringMs)} ms (max ${f(longPrompt.maxItlDuringMs)}), outside ${p3(longPrompt.itlOutsideMs)} ms`,
  );
}
if (!LEVELS_ONLY && !LONG_ONLY) {
  console.log(
    `Prefix cache (${REQUESTS} requests one after another, ~${SYSTEM}-token shared system prompt): prompt tokens computed ${prefix.on.prefillTokens} on vs ${prefix.off.prefillTokens} off (${f(100 * prefix.prefillSaved)}% saved); TTFT first ${f(prefix.on.firstTtftMs)} / ${f(prefix.off.firstTtftMs)} ms, later requests mean ${f(prefix.on.laterTtftMs)} on vs ${f(prefix.off.laterTtftMs)} off (${f(prefix.laterTtftSpeedup, 2)}x)`,
  );
}
if (outPath) writeFileSync(outPath, JSON.stringify(res, null, 2));
