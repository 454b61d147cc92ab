// Child process of test/soak.test.ts: load / generate / dispose cycles of the tiny model, on this
// thread and in worker threads (two at a time), then the memory pools' live bytes and the RSS.
//   * `full` cycles each load the model, generate a few tokens in a session and dispose both; every
//     other one runs in a pair of worker threads generating at the same time.
//   * `cheap` cycles each create a session on a loaded model, generate and dispose it: the same
//     native work per token (prefill, decode graph replays, sampling, KV blocks) without the loading.
// Prints one JSON line: the pools' live bytes and the process's threads (streams are threads) before
// and after (before: after one warm-up cycle and a worker pair, which start the kernel thread pool
// and Node's own threads), the RSS after each tenth of the full and of the cheap cycles (sampled after
// a GC), and the generated tokens (all cycles must agree).
// usage: node --expose-gc soak.mjs <model dir> <full cycles> <cheap cycles> <device>
import { readdirSync } from 'node:fs';
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';

const prompt = 'The quick brown fox';
const maxTokens = 4;

async function cycle(loadModel, dir, device) {
  const model = await loadModel(dir, { backend: device === 'cpu' ? 'cpu' : 'cuda', maxContext: 64 });
  try {
    const s = model.createSession();
    try {
      return (await s.generate(prompt, { maxTokens })).tokens;
    } finally {
      s.dispose();
    }
  } finally {
    model.dispose();
  }
}

if (!isMainThread) {
  const { loadModel } = await import('../../dist/generate.js');
  parentPort.postMessage(await cycle(loadModel, workerData.dir, workerData.device));
} else {
  const { loadModel } = await import('../../dist/generate.js');
  const { native } = await import('../../dist/native.js');
  const [dir, fullArg, cheapArg, device = 'cpu'] = process.argv.slice(2);
  const full = Number(fullArg);
  const cheap = Number(cheapArg);
  const devices = device === 'cpu' ? ['cpu'] : ['cpu', device];
  const settle = async () => {
    for (let i = 0; i < 4; i++) {
      globalThis.gc();
      await new Promise(r => setImmediate(r));
    }
  };
  const live = () => ({
    ...Object.fromEntries(devices.map(d => [d, native.memoryStats(d).liveBytes])),
    threads: readdirSync('/proc/self/task').length,
  });
  const inWorker = () =>
    new Promise((resolve, reject) => {
      const w = new Worker(new URL(import.meta.url), { workerData: { dir, device } });
      w.once('message', resolve);
      w.once('error', reject);
      w.once('exit', code => reject(new Error(`a soak worker exited with ${code} before answering`)));
    });

  const tokens = new Set();
  tokens.add(JSON.stringify(await cycle(loadModel, dir, device)));
  for (const t of await Promise.all([inWorker(), inWorker()])) tokens.add(JSON.stringify(t));
  await settle();
  const before = live();
  const tenth = n => Math.max(1, Math.floor(n / 10));
  const fullRss = [];
  for (let i = 0; i < full; i++) {
    if (i % 2) for (const t of await Promise.all([inWorker(), inWorker()])) tokens.add(JSON.stringify(t));
    else tokens.add(JSON.stringify(await cycle(loadModel, dir, device)));
    if ((i + 1) % tenth(full) === 0) {
      await settle();
      fullRss.push(process.memoryUsage().rss);
    }
  }
  const rss = [];
  const model = await loadModel(dir, { backend: device === 'cpu' ? 'cpu' : 'cuda', maxContext: 64 });
  for (let i = 0; i < cheap; i++) {
    const s = model.createSession();
    tokens.add(JSON.stringify((await s.generate(prompt, { maxTokens })).tokens));
    s.dispose();
    if ((i + 1) % tenth(cheap) === 0) {
      await settle();
      rss.push(process.memoryUsage().rss);
    }
  }
  model.dispose();
  await settle();
  process.stdout.write(`${JSON.stringify({ before, after: live(), fullRss, rss, tokens: [...tokens] })}\n`);
}
