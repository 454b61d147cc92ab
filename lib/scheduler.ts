// Continuous batching: every generation of a model runs its device work through the model's
// StepScheduler. Each round it runs the decode steps of all the sessions waiting at that moment as
// ONE batched forward (one token per sequence), their speculative steps as one batched
// speculativeStep, then one exclusive job (a prefill chunk of one prompt, FIFO), and repeats while
// anything is queued. A new generation joins at the next round; a finished one leaves by not
// asking again; a long prompt advances one chunk per round, so running streams keep getting a token
// per round while it is prefilled. All device work of a round is awaited (the event loop stays free)
// and nothing else queues work on the model's streams meanwhile, so no engine call ever has to block
// the JS thread waiting for another's.
import { native } from './native.js';
import { type Tensor, empty, toArray } from './tensor.js';
import type { LongcatModel, SamplingParams } from './model/model.js';
import type { SequenceCache } from './kv-cache.js';
import { type SamplerExtras, type TokenLogprob, prepareRow, queueLogprob } from './sampling.js';

export interface DecodeResult {
  /** The sampled token after `token`, and its logit (a non-finite one means a broken row). */
  next: number;
  logit: number;
  /** FFN experts chosen for `token`, summed over layers, and the number of layers counted. */
  ffnSum: number;
  ffnCount: number;
  /** With SamplerExtras.logprobs: the sampled token's log-probabilities. */
  logprob?: TokenLogprob;
}

export interface SpeculateResult {
  /** The accepted drafts, then the correction or bonus token. */
  tokens: number[];
  accepted: number;
  /** The next draft. */
  draft: number;
  ffnSum: number;
  ffnCount: number;
}

/** Not run: the shared KV cache has no room for this sequence's new tokens in this round. */
export const NO_ROOM = 'no-room' as const;

interface Waiting<T> {
  resolve(r: T | typeof NO_ROOM): void;
  reject(e: unknown): void;
}
interface DecodeRequest extends Waiting<DecodeResult> {
  seq: SequenceCache;
  token: number;
  sampling: SamplingParams;
  extras: SamplerExtras | undefined;
}
interface SpeculateRequest extends Waiting<SpeculateResult> {
  seq: SequenceCache;
  pending: number;
  draft: number;
  sampling: SamplingParams;
}

export class StepScheduler {
  private decodes: DecodeRequest[] = [];
  private speculations: SpeculateRequest[] = [];
  private readonly jobs: (() => Promise<void>)[] = [];
  private running = false;
  /** Rounds run and the sequences they batched (statistics; tests read them). */
  readonly stats = { decodeSteps: 0, decodeRows: 0, speculativeSteps: 0, speculativeRows: 0, largestBatch: 0 };

  constructor(private readonly engine: LongcatModel) {}

  /** One plain decode step of `seq` on `token`, batched with every other waiting one; `extras`:
   *  this sequence's penalties, bias and log-probabilities. */
  decode(
    seq: SequenceCache,
    token: number,
    sampling: SamplingParams,
    extras?: SamplerExtras,
  ): Promise<DecodeResult | typeof NO_ROOM> {
    return new Promise((resolve, reject) => {
      this.decodes.push({ seq, token, sampling, extras, resolve, reject });
      this.kick();
    });
  }

  /** One speculative step (verify [pending, draft], accept, draft), batched with the other waiting ones. */
  speculate(
    seq: SequenceCache,
    pending: number,
    draft: number,
    sampling: SamplingParams,
  ): Promise<SpeculateResult | typeof NO_ROOM> {
    return new Promise((resolve, reject) => {
      this.speculations.push({ seq, pending, draft, sampling, resolve, reject });
      this.kick();
    });
  }

  /** Runs `fn` (device work such as a prefill chunk) alone, in its turn; its promise settles with fn's. */
  exclusive<T>(fn: () => Promise<T> | T): Promise<T> {
    return new Promise((resolve, reject) => {
      this.jobs.push(async () => {
        try {
          resolve(await fn());
        } catch (e) {
          reject(e);
        }
      });
      this.kick();
    });
  }

  private kick() {
    if (this.running) return;
    this.running = true;
    // The first round starts after the current macrotask: requests made in the same turn join it.
    setImmediate(() => void this.loop());
  }

  private async loop() {
    try {
      while (this.decodes.length || this.speculations.length || this.jobs.length) {
        const decodes = this.decodes.splice(0),
          speculations = this.speculations.splice(0);
        if (decodes.length) await this.settle(decodes, () => this.runDecodes(decodes));
        if (speculations.length) await this.settle(speculations, () => this.runSpeculations(speculations));
        await this.jobs.shift()?.();
        // Let the sessions just answered take their tokens and ask again: they join the next round.
        await new Promise<void>(r => setImmediate(r));
      }
    } finally {
      this.running = false;
    }
  }

  /** Runs a batch; a failure of the batched step fails every request in it. */
  private async settle(reqs: Waiting<never>[], run: () => Promise<void>) {
    try {
      await run();
    } catch (e) {
      for (const r of reqs) r.reject(e);
    }
  }

  /** Splits off the requests whose sequences cannot all get `n` new slots from their KV pools (one
   *  per rank under expert parallelism). */
  private fit<R extends { seq: SequenceCache; resolve(r: typeof NO_ROOM): void }>(reqs: R[], n: number): R[] {
    const free = new Map<unknown, number>();
    return reqs.filter(r => {
      const s = r.seq,
        left = free.get(s.allocator) ?? s.allocator.available,
        need = Math.max(0, Math.ceil((s.length + n) / s.blockSize) - s.numBlocks);
      if (s.length + n > s.maxContext || need > left) {
        r.resolve(NO_ROOM);
        return false;
      }
      free.set(s.allocator, left - need);
      return true;
    });
  }

  private async runDecodes(all: DecodeRequest[]) {
    const reqs = this.fit(all, 1);
    if (!reqs.length) return;
    const e = this.engine,
      B = reqs.length;
    this.count('decode', B);
    const { logits, nFfn } = e.forward(
      reqs.map(r => r.seq),
      reqs.map(r => [r.token]),
      { collectRouting: true },
    );
    const ids = empty([B], { dtype: 'int32', device: e.device });
    const held: Tensor[] = [ids, logits, ...nFfn]; // disposed at the end
    const lps = new Map<number, ReturnType<typeof queueLogprob>>();
    try {
      // Penalties and bias per row, in place (a copy of the raw row first when log-probabilities are asked).
      const raws = reqs.map((r, b) => {
        if (!r.extras) return null;
        const row = logits.narrow(b, 1);
        held.push(row);
        const raw = prepareRow(row, r.extras);
        if (raw && raw !== row) held.push(raw);
        return raw;
      });
      // The draws: one sampler call per run of consecutive greedy rows with the same settings (a
      // greedy row's token is the argmax of its row, whatever its row index, seed or step), one
      // per row otherwise (the sampler's step is each sequence's own position, batched or not).
      for (let b0 = 0; b0 < B; ) {
        const p = reqs[b0]!.sampling;
        let b1 = b0 + 1;
        if (p.temperature === 0) while (b1 < B && sameGreedy(p, reqs[b1]!.sampling)) b1++;
        const rows = logits.narrow(b0, b1 - b0),
          id = ids.narrow(b0, b1 - b0);
        held.push(rows, id);
        native.sample(null, id, rows, p.temperature, p.topK, p.topP, p.minP, p.seed, reqs[b0]!.seq.length);
        b0 = b1;
      }
      raws.forEach((raw, b) => {
        if (!raw) return;
        const id = ids.narrow(b, 1);
        held.push(id);
        lps.set(b, queueLogprob(raw, id, reqs[b]!.extras!.logprobs!));
      });
      // The sampled tokens' logits (a non-finite one means a broken row), queued before the one
      // read-back: per block of up to G rows, picked[i, j] = logits[b0 + i, ids[b0 + j]], of which
      // the diagonal is wanted (G x G values per block: no host round trip for the ids first).
      const picked: Tensor[] = [];
      for (let b0 = 0; b0 < B; b0 += G) {
        const n = Math.min(G, B - b0),
          out = empty([n, n], { device: e.device }),
          rows = logits.narrow(b0, n),
          id = ids.narrow(b0, n);
        held.push(out, rows, id);
        picked.push(out);
        native.gatherColumns(null, out, rows, id);
      }
      await native.synchronizeAsync(e.device);
      const next = toArray(ids);
      const logit = new Float32Array(B);
      picked.forEach((t, i) => {
        const v = toArray(t),
          n = Math.min(G, B - i * G);
        for (let j = 0; j < n; j++) logit[i * G + j] = v[j * n + j]!;
      });
      const ffn = perRow(nFfn, B);
      reqs.forEach((r, b) => {
        const logprob = lps.get(b)?.read();
        r.resolve({ next: next[b]!, logit: logit[b]!, ffnSum: ffn[b]!, ffnCount: nFfn.length, ...(logprob ? { logprob } : {}) });
      });
    } finally {
      for (const q of lps.values()) q.dispose();
      for (const t of held) t.dispose();
    }
  }

  private async runSpeculations(all: SpeculateRequest[]) {
    const reqs = this.fit(all, 2);
    if (!reqs.length) return;
    this.count('speculative', reqs.length);
    const r = await this.engine.speculativeStep(
      reqs.map(q => q.seq),
      reqs.map(q => q.pending),
      reqs.map(q => q.draft),
      reqs.map(q => q.sampling),
    );
    // rows 2b, 2b + 1: sequence b's verified tokens; only the kept ones are counted
    const ffn = perRow(r.nFfn, 2 * reqs.length);
    for (const t of r.nFfn) t.dispose();
    reqs.forEach((q, b) => {
      const n = r.accepted[b]!;
      q.resolve({
        tokens: r.tokens[b]!,
        accepted: n,
        draft: r.drafts[b]!,
        ffnSum: ffn[2 * b]! + (n > 0 ? ffn[2 * b + 1]! : 0),
        ffnCount: r.nFfn.length * (n + 1),
      });
    });
  }

  private count(kind: 'decode' | 'speculative', rows: number) {
    const s = this.stats;
    if (kind === 'decode') {
      s.decodeSteps++;
      s.decodeRows += rows;
    } else {
      s.speculativeSteps++;
      s.speculativeRows += rows;
    }
    s.largestBatch = Math.max(s.largestBatch, rows);
  }
}

/** Rows per block of the sampled logits' gather (G x G values read per block). */
const G = 64;

/** Two greedy rows' settings draw the same way in one sampler call (the sampler checks the shared ones). */
function sameGreedy(a: SamplingParams, b: SamplingParams): boolean {
  return b.temperature === 0 && a.topK === b.topK && a.topP === b.topP && a.minP === b.minP && a.seed === b.seed;
}

/** Per row, the sum over layers of int32 [rows] counts. */
function perRow(perLayer: Tensor[], rows: number): number[] {
  const sum = new Array<number>(rows).fill(0);
  for (const t of perLayer) {
    const c = toArray(t);
    for (let i = 0; i < rows; i++) sum[i]! += c[i]!;
  }
  return sum;
}
