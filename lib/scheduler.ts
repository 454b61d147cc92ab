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
import { type Tensor, empty, toArray, toArrayAsync } from './tensor.js';
import type { LongcatModel, SamplingParams } from './model/model.js';
import type { SequenceCache } from './kv-cache.js';
import { type SamplerExtras, type TokenLogprob, prepareRow, tokenLogprob } from './sampling.js';

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
      B = reqs.length,
      V = e.dims.vocab;
    this.count('decode', B);
    const { logits, nFfn } = e.forward(
      reqs.map(r => r.seq),
      reqs.map(r => [r.token]),
      { collectRouting: true },
    );
    const ids = empty([B], { dtype: 'int32', device: e.device });
    // per row with log-probabilities: the raw row and its sampled id (each sequence's own settings)
    const wanted: { b: number; raw: Tensor; row: Tensor; id: Tensor; k: number }[] = [];
    try {
      reqs.forEach((r, b) => {
        const p = r.sampling,
          row = logits.narrow(b, 1),
          id = ids.narrow(b, 1);
        const raw = r.extras ? prepareRow(row, r.extras) : null;
        // the sampler's step: the position of the token it draws (plain decoding's, batched or not)
        native.sample(null, id, row, p.temperature, p.topK, p.topP, p.minP, p.seed, r.seq.length);
        if (raw) wanted.push({ b, raw, row, id, k: r.extras!.logprobs! });
        else {
          row.dispose();
          id.dispose();
        }
      });
      const next = await toArrayAsync(ids);
      const logprobs = new Map<number, TokenLogprob>();
      for (const w of wanted) logprobs.set(w.b, await tokenLogprob(w.raw, w.id, w.k));
      const flat = logits.view([-1]);
      const logitOf = (b: number) => {
        const one = flat.narrow(b * V + next[b]!, 1);
        const v = toArray(one)[0]!;
        one.dispose();
        return v;
      };
      const ffn = perRow(nFfn, B);
      reqs.forEach((r, b) => {
        const logprob = logprobs.get(b);
        r.resolve({ next: next[b]!, logit: logitOf(b), ffnSum: ffn[b]!, ffnCount: nFfn.length, ...(logprob ? { logprob } : {}) });
      });
      flat.dispose();
    } finally {
      for (const w of wanted) {
        if (w.raw !== w.row) w.raw.dispose();
        w.row.dispose();
        w.id.dispose();
      }
      ids.dispose();
      logits.dispose();
      for (const t of nFfn) t.dispose();
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

/** Per row, the sum over layers of int32 [rows] counts. */
function perRow(perLayer: Tensor[], rows: number): number[] {
  const sum = new Array<number>(rows).fill(0);
  for (const t of perLayer) {
    const c = toArray(t);
    for (let i = 0; i < rows; i++) sum[i]! += c[i]!;
  }
  return sum;
}
