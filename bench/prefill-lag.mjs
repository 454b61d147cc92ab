// Responsiveness during a long prefill (issue 13, item 9): the event-loop lag (the longest gap
// between two turns of the loop) while a ~2,000-token prompt is prefilled, and the time from
// abort() to the generation settling. Cases: the blocking path (model.forward: queue the whole
// prompt, then toArray, which waits on the JS thread, as generate did before chunking), and
// session.generate awaiting its prefill in chunks of 512 (the default), 128 and one chunk of the
// whole prompt. Figures are wall-clock on a shared machine: compare cases of one run, not runs.
//
//   LONGCAT_ADDON=build/Release/longcat.node node bench/prefill-lag.mjs [--preset small] [--tokens 2000] [--repeats 3]
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { cpus, loadavg } from 'node:os';
import { loadModel } from '../dist/generate.js';
import { initRandom } from '../dist/init-random.js';
import { now, median } from './common.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const arg = (name, dflt) => (args.includes(name) ? args[args.indexOf(name) + 1] : dflt);
const preset = arg('--preset', 'small');
const TOKENS = Number(arg('--tokens', 2000));
const REPEATS = Number(arg('--repeats', 3));

/** Watches the event loop while `run` goes: the longest gap between 5 ms interval ticks, minus the
 *  interval (a block that lasts to the end of the run counts up to the end). */
async function watchLoop(run) {
  let last = now(),
    maxGap = 0;
  const timer = setInterval(() => {
    const t = now();
    maxGap = Math.max(maxGap, t - last - 5);
    last = t;
  }, 5);
  const t0 = now();
  try {
    await run();
  } finally {
    clearInterval(timer);
  }
  const t = now();
  maxGap = Math.max(maxGap, t - last - 5); // a block that lasted to the end
  return { ms: t - t0, maxGapMs: Math.max(0, maxGap) };
}

const dir = path.join(here, 'out', `ckpt-${preset}`);
if (!existsSync(path.join(dir, 'model.safetensors.index.json'))) await initRandom({ preset, out: dir, seed: 1 });
const model = await loadModel(dir, { backend: 'cpu', maxContext: TOKENS + 64 });

// A prompt of about TOKENS tokens (its exact count is reported).
const words = 'the shepherd counted forty two sheep in the green valley and wrote their names down'.split(' ');
let prompt = '';
for (let i = 0; model.tokenizer.encode(prompt).length < TOKENS; i++) prompt += `${words[i % words.length]}${i % 7 ? ' ' : ', '}`;
const ids = model.tokenizer.encode(prompt);

const rows = [];
async function measure(name, run) {
  const samples = [];
  for (let r = 0; r < REPEATS; r++) samples.push(await watchLoop(run));
  const row = {
    name,
    ms: median(samples.map(s => s.ms)),
    maxGapMs: Math.max(...samples.map(s => s.maxGapMs)),
  };
  rows.push(row);
  console.log(
    `${name.padEnd(34)} prefill ${row.ms.toFixed(0).padStart(6)} ms   max loop gap ${row.maxGapMs.toFixed(1).padStart(7)} ms (of ${REPEATS} runs)`,
  );
}

console.log(
  `preset ${preset}, prompt ${ids.length} tokens, ${cpus().length} CPUs (${cpus()[0]?.model}), load ${loadavg()[0].toFixed(1)}`,
);
// Warm-up: pages the weights in.
model.forward(ids.slice(0, 64));

await measure('blocking (model.forward + toArray)', async () => {
  model.forward(ids);
});
for (const chunk of [ids.length, 512, 128]) {
  await measure(`generate, prefillChunk ${chunk === ids.length ? `${chunk} (one)` : chunk}`, async () => {
    const s = model.createSession();
    await s.generate(prompt, { maxTokens: 1, prefillChunk: chunk });
    s.dispose();
  });
}

// Abort latency: each repeat first times a whole prefill, then runs it again with a timer that calls
// abort() at a third of that time (the machine's load drifts: calibrated right before); reported:
// the time from abort() to generate settling, the stop reason and the prompt tokens cached by then.
console.log('abort during the prefill (a timer calls abort() at 1/3 of a prefill timed just before):');
for (const chunk of [ids.length, 512, 128]) {
  const lat = [];
  for (let r = 0; r < REPEATS; r++) {
    const c = model.createSession();
    const t0 = now();
    await c.generate(prompt, { maxTokens: 1, prefillChunk: chunk });
    const full = now() - t0;
    c.dispose();
    const s = model.createSession();
    const ac = new AbortController();
    let abortedAt = 0;
    const timer = setTimeout(() => {
      abortedAt = now();
      ac.abort();
    }, full / 3);
    const res = await s.generate(prompt, { maxTokens: 1, prefillChunk: chunk, signal: ac.signal });
    const settled = now();
    clearTimeout(timer);
    lat.push({ ms: abortedAt ? settled - abortedAt : Number.NaN, reason: res.stopReason, cached: s.length, full });
    s.dispose();
  }
  const med = median(lat.map(l => l.ms));
  console.log(
    `  prefillChunk ${String(chunk).padStart(5)}: abort -> settled ${med.toFixed(0).padStart(6)} ms (median of ${REPEATS}; each: ${lat.map(l => l.ms.toFixed(0)).join(', ')}), ` +
      `stop reasons ${lat.map(l => l.reason).join(',')}, prompt tokens cached ${lat.map(l => l.cached).join(',')} of ${ids.length}, ` +
      `whole prefill ${lat.map(l => l.full.toFixed(0)).join(', ')} ms`,
  );
}
model.dispose();
