// Where a serving round goes (issue 17): B sessions generating at once (as bench/serve.mjs part 1)
// against the same B sequences decoded by bare scheduler rounds ("alone", serve.mjs part 1b), per
// full-batch decode step on the CPU stream's own clock (events recorded around each step's forward
// and before the round's wait): the step (from the stream reaching forward()'s call to the replay's
// end: unchained, forward()'s host part with the stream idle, then the region; chained, the inputs'
// copies and the region), between steps (the end of one to the stream reaching the next forward():
// the sampler, the read-back, and unchained the JS wake and the round's host work), the sampler, and
// unchained the stream's idle gap from the round's wait to the next forward();
// on the JS thread: forward()'s host part, and the event loop's busy time per step
// (performance.eventLoopUtilization). Medians over the full-batch steps, and the steps' p90 / p99 /
// max and the GCs in the run (count / ms). Mode "block": the same B sequences stepped as
// bench/step-profile.mjs times the step (forward(), then a blocking read of its logits: the JS
// thread sleeps through the step; tokens picked on the host between steps), the reference for the
// step itself with no host work beside it. Each run twice, chained
// rounds off and on (lib/scheduler.ts `chain`; a build without it runs the same rounds twice: the
// pairs' noise), alternated, and the per-pair ratio of the rounds. Not in run.mjs.
//   node bench/serve-gaps.mjs [--concurrency 1,4] [--tokens 200] [--repeats 2] [--modes serve,alone,block] [--dist DIR]
import path from 'node:path';
import { PerformanceObserver, performance } from 'node:perf_hooks';
import { fileURLToPath, pathToFileURL } from 'node:url';

const args = process.argv.slice(2);
const arg = (name, dflt) => (args.includes(name) ? args[args.indexOf(name) + 1] : dflt);
const CONCURRENCY = arg('--concurrency', '1,4').split(',').map(Number);
const TOKENS = Number(arg('--tokens', 200));
const REPEATS = Number(arg('--repeats', 2));
const here = path.dirname(fileURLToPath(import.meta.url));
// (not common.mjs's distImporter: that module loads this checkout's dist/ and its addon too)
const distDir = path.resolve(here, arg('--dist', '../dist'));
const dist = Object.assign(f => import(pathToFileURL(path.join(distDir, f)).href), { dir: distDir });
const { native, Event } = await dist('index.js');
const { loadModel } = await dist('generate.js');
const dir = path.join(here, 'out', 'ckpt-small-serve'); // written by bench/serve.mjs
const PROMPT = 32;
const GEN = { temperature: 0, ignoreEos: true };

const med = v => {
  const s = [...v].sort((a, b) => a - b);
  return s.length ? s[s.length >> 1] : Number.NaN;
};

const model = await loadModel(dir, { backend: 'cpu', maxContext: 4096, cacheBlocks: 1024, prefillChunk: 512 });
const e = model.engine;
const stream = native.defaultStream('cpu');

/** Records, per full-batch decode step of `B` rows: events before / after its forward and before the
 *  wait that reads it; forward's host ms; returns a stop() that gives the per-step medians. */
const f = (x, d = 3) => (Number.isFinite(x) ? x.toFixed(d) : String(x));
const gcs = [];
new PerformanceObserver(l => {
  for (const x of l.getEntries()) gcs.push({ start: x.startTime, ms: x.duration });
}).observe({ entryTypes: ['gc'] });

function trace(B) {
  const gc0 = gcs.length;
  const steps = []; // { s0, s1, fwdMs }
  const waits = []; // events recorded before each awaited wait
  const fwd = e.forward,
    awaited = native.synchronizeAsync;
  let on = false,
    elu0 = null,
    t0 = 0;
  e.forward = function (seqs, tokens, opts) {
    if (!opts?.collectRouting || seqs.length !== B) return fwd.call(this, seqs, tokens, opts);
    if (!on) {
      on = true;
      elu0 = performance.eventLoopUtilization();
      t0 = performance.now();
    }
    const s0 = new Event('cpu'),
      s1 = new Event('cpu');
    s0.record(stream);
    const t = performance.now();
    const r = fwd.call(this, seqs, tokens, opts);
    const fwdMs = performance.now() - t;
    s1.record(stream);
    steps.push({ s0, s1, fwdMs });
    return r;
  };
  native.synchronizeAsync = d => {
    if (on) {
      const w = new Event('cpu');
      w.record(stream);
      waits.push(w);
    }
    return awaited(d);
  };
  return () => {
    e.forward = fwd;
    native.synchronizeAsync = awaited;
    const elu = performance.eventLoopUtilization(elu0);
    const wallMs = performance.now() - t0;
    // drop the first and last steps (ramp, release)
    const use = steps.slice(2, -2);
    const region = [],
      between = [],
      after = [],
      gap = [],
      fwdMs = [];
    let k = 0;
    for (let i = 0; i < use.length - 1; i++) {
      const a = use[i],
        b = use[i + 1];
      region.push(a.s0.elapsedMs(a.s1));
      between.push(a.s1.elapsedMs(b.s0));
      fwdMs.push(a.fwdMs);
      // the wait that follows a's step: the first wait event after a.s1 on the stream's clock
      while (k < waits.length && a.s1.elapsedMs(waits[k]) < 0) k++;
      const w = waits[k];
      if (w && w.elapsedMs(b.s0) >= 0) {
        after.push(a.s1.elapsedMs(w));
        gap.push(w.elapsedMs(b.s0));
      }
    }
    const round = use.length > 1 ? use[0].s0.elapsedMs(use[use.length - 1].s0) / (use.length - 1) : Number.NaN;
    const mean = v => v.reduce((a, x) => a + x, 0) / Math.max(1, v.length);
    const sorted = [...region].sort((a, b) => a - b);
    const q = p => sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))];
    const g = gcs.slice(gc0);
    return {
      tail: `${f(q(0.9))} / ${f(q(0.99))} / ${f(sorted.at(-1))}`,
      gc: `${g.length} / ${f(
        g.reduce((a, x) => a + x.ms, 0),
        1,
      )}`,
      steps: steps.length,
      roundMs: round,
      stepMs: med(region),
      stepMeanMs: mean(region),
      betweenMs: med(between),
      betweenMeanMs: mean(between),
      samplerMs: med(after),
      gapMs: med(gap),
      forwardHostMs: med(fwdMs),
      jsBusyPerStepMs: elu.active / Math.max(1, steps.length),
      wallPerStepMs: wallMs / Math.max(1, steps.length),
      elu: elu.utilization,
    };
  };
}

async function serveRun(B) {
  const sessions = Array.from({ length: B }, () => model.createSession());
  const stop = trace(B);
  try {
    const rs = await Promise.all(
      sessions.map((s, i) => s.generate(`stream ${i}: ${'lorem ipsum '.repeat(PROMPT / 2)}`, { ...GEN, maxTokens: TOKENS + B })),
    );
    return { ...stop(), ffnPerToken: rs.reduce((a, r) => a + r.avgFfnExpertsPerToken, 0) / B };
  } finally {
    for (const s of sessions) s.dispose();
  }
}

// B sequences with PROMPT tokens each prefilled in one forward
function prefilledSequences(B) {
  const seqs = Array.from({ length: B }, () => e.newSequence());
  const first = e.forward(
    seqs,
    seqs.map((_, b) => Array.from({ length: PROMPT }, (_, i) => (b * 37 + i * 11) % e.dims.vocab)),
  );
  first.logits.dispose();
  return seqs;
}

async function aloneRun(B) {
  const seqs = prefilledSequences(B);
  const greedy = { temperature: 0, topK: 0, topP: 1, minP: 0, seed: 0 };
  let next = seqs.map((_, b) => b);
  const stop = trace(B);
  let ffn = 0,
    n = 0;
  try {
    for (let i = 0; i < TOKENS; i++) {
      const r = await Promise.all(
        seqs.map((q, b) => model.scheduler.decode(q, next[b], greedy, undefined, { more: true, left: TOKENS - i })),
      );
      next = r.map(x => (typeof x === 'object' ? x.next : 0));
      for (const x of r)
        if (typeof x === 'object') {
          ffn += x.ffnSum / x.ffnCount;
          n++;
        }
    }
    return { ...stop(), ffnPerToken: ffn / n };
  } finally {
    for (const q of seqs) {
      model.scheduler.release?.(q);
      q.release();
    }
  }
}

// the step as step-profile times it: forward(), then a blocking read of its logits (the JS thread
// sleeps through the step); the tokens are the rows' greedy picks, read on the host
async function blockRun(B) {
  const seqs = prefilledSequences(B);
  let next = seqs.map((_, b) => b);
  const stop = trace(B);
  try {
    for (let i = 0; i < TOKENS; i++) {
      const { logits, nFfn } = e.forward(
        seqs,
        next.map(t => [t]),
        { collectRouting: true },
      );
      const v = new Float32Array(logits.toBytes().buffer);
      const V = e.dims.vocab;
      next = next.map((_, b) => {
        let best = 0;
        for (let j = 1; j < V; j++) if (v[b * V + j] > v[b * V + best]) best = j;
        return best;
      });
      logits.dispose();
      for (const t of nFfn) t.dispose();
    }
    return { ...stop(), ffnPerToken: Number.NaN };
  } finally {
    for (const q of seqs) q.release();
  }
}

/** @type {[string, (B: number) => Promise<any>][]} */
const modes = /** @type {any} */ (
  [
    ['serve', serveRun],
    ['alone', aloneRun],
    ['block', blockRun],
  ].filter(([m]) => arg('--modes', 'serve,alone').split(',').includes(m))
);
console.log(`serve-gaps: ${dist.dir}, ${TOKENS} tokens, repeats ${REPEATS}, chained rounds off / on alternated`);
console.log(
  '| streams | mode | chained | round ms | step ms (median / mean) | between steps ms (median / mean) | sampler ms | stream idle gap ms | forward host ms | JS busy ms/step | ELU | FFN experts / token / layer | step p90 / p99 / max | GCs / ms |',
);
console.log('|---|---|---|---|---|---|---|---|---|---|---|---|---|---|');
const pairs = [];
for (const B of CONCURRENCY) {
  await serveRun(B); // warm-up: graphs, pages
  for (let r = 0; r < REPEATS; r++)
    for (const [mode, run] of modes) {
      const round = {};
      for (const chain of r % 2 ? [true, false] : [false, true]) {
        if ('chain' in model.scheduler) model.scheduler.chain = chain;
        const x = await run(B);
        round[chain] = x.roundMs;
        console.log(
          `| ${B} | ${mode} | ${chain ? 'on' : 'off'} | ${f(x.roundMs)} | ${f(x.stepMs)} / ${f(x.stepMeanMs)} | ${f(x.betweenMs)} / ${f(x.betweenMeanMs)} | ${f(x.samplerMs)} | ${f(x.gapMs)} | ${f(x.forwardHostMs)} | ${f(x.jsBusyPerStepMs)} | ${f(x.elu, 2)} | ${f(x.ffnPerToken, 2)} | ${x.tail} | ${x.gc} |`,
        );
      }
      pairs.push({ B, mode, ratio: round[false] / round[true] });
    }
}
console.log('\nround ms unchained / chained, per pair (> 1: chained faster):');
for (const B of CONCURRENCY)
  for (const [mode] of modes)
    console.log(
      `${B} streams, ${mode}: ${pairs
        .filter(p => p.B === B && p.mode === mode)
        .map(p => f(p.ratio, 3))
        .join(', ')}`,
    );
model.dispose();
