// A "host" of test/nccl-ep.test.ts, run as a worker thread: loads the checkpoint as host `rank` of
// `worldSize` through the NCCL stand-in (loadModel's nccl option; backend 'cpu' unless workerData
// says 'cuda': the emulated device, whose memory the stand-in can copy) and runs its part of a scripted
// collective run, then answers the test with what it saw. Imports the built SDK (dist/).
//   plan 'script': prefill its prompts (every row's logits), then decode steps with the given
//                  tokens (teacher forcing); a host without prompts calls forward([], []) each time.
//                  `before[i]` inserts a call before decode step i (i = the number of steps: after
//                  the last): 'idle' (forward([], [])) or 'bad'
//                  (a token id outside the vocabulary: fails here, but the host still takes part).
//                  Answers { logits: Float32Array[] (empty arrays for an idle host), experts: the
//                  routed experts this host holds per layer, errors: those of the 'bad' calls }.
//   plan 'abort':  prefill as above; host `abortRank` then aborts the communicator; two decode
//                  steps follow. Answers { errors: [{ code, message }] } (one per failed call).
//   plan 'late':   host 0 prefills while host 1 holds back until host 0 has failed (flags[0]), then
//                  host 1 prefills. Answers { errors }.
import { parentPort, workerData } from 'node:worker_threads';

const { loadModel } = await import('../../dist/generate.js');
const { toArray } = await import('../../dist/tensor.js');
const { dir, rank, worldSize, id, libraryPath, prompts, tokens, plan, abortRank, timeoutMs, flags, backend, before } = workerData;

const errorOf = e => ({ code: e?.code ?? 'none', message: String(e?.message ?? e) });

async function main() {
  const m = await loadModel(dir, {
    backend: backend ?? 'cpu',
    cacheDtype: 'f32',
    maxContext: 64,
    nccl: { rank, worldSize, id, libraryPath, ...(timeoutMs ? { timeoutMs } : {}) },
  });
  const e = m.engine;
  const seqs = prompts.map(() => e.newSequence());
  const step = (toks, opts) => {
    const r = seqs.length ? e.forward(seqs, toks, opts) : e.forward([], []);
    const v = toArray(r.logits);
    r.logits.dispose();
    return v;
  };
  const errors = [];
  const attempt = (toks, opts) => {
    try {
      step(toks, opts);
      errors.push(null);
    } catch (err) {
      errors.push(errorOf(err));
    }
  };
  try {
    if (plan === 'script') {
      const logits = [step(prompts, { allLogits: true })];
      for (const [i, t] of tokens.entries()) {
        if (before?.[i] === 'idle') e.forward([], []).logits.dispose();
        if (before?.[i] === 'bad') attempt([[e.dims.vocab], ...t.slice(1).map(x => [x])]);
        logits.push(step(t.map(x => [x])));
      }
      if (before?.[tokens.length] === 'idle') e.forward([], []).logits.dispose(); // a call after the last step
      return { logits, experts: e.w.layers.map(l => l.moe.experts.nRouted), errors };
    }
    if (plan === 'abort') {
      step(prompts, { allLogits: true });
      if (rank === abortRank) e.crossHost.abort();
      attempt(tokens[0].map(x => [x]));
      attempt(tokens[0].map(x => [x]));
      return { errors, lengths: seqs.map(s => s.length) };
    }
    if (plan === 'late') {
      if (rank === 1) Atomics.wait(flags, 0, 0, 120_000); // until host 0 has failed (bounded: a test never hangs)
      attempt(prompts, { allLogits: true });
      if (rank === 0) {
        Atomics.store(flags, 0, 1);
        Atomics.notify(flags, 0);
      }
      return { errors };
    }
    throw new Error(`unknown plan ${plan}`);
  } finally {
    for (const s of seqs) s.release();
    m.dispose();
  }
}

main().then(
  r => parentPort.postMessage(r),
  err => parentPort.postMessage({ error: errorOf(err) }),
);
