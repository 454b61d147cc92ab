// Continuous batching: every generation of a model runs its device work through the model's
// StepScheduler. Each round it runs the decode steps of all the sessions waiting at that moment as
// ONE batched forward (one token per sequence), their speculative steps as one batched
// speculativeStep, then one exclusive job (a prefill chunk of one prompt, FIFO), and repeats while
// anything is queued. A new generation joins at the next round; a finished one leaves by not
// asking again; a long prompt advances one chunk per round, so running streams keep getting a token
// per round while it is prefilled. While sequences decode, the chunk is capped at
// `prefillChunkWhileDecoding` tokens (loadModel's option): a 512-token chunk of the small preset
// stalls every running stream ~200 ms on a 2-vCPU CPU; alone, a prompt runs in full
// `prefillChunk`s. All device work of a round is awaited (the event loop stays free) and nothing
// else queues work on the model's streams meanwhile, so no engine call ever has to block the JS
// thread waiting for another's.
//
// Pipelined decode rounds (`pipeline`, default on): once a round's decode step is done and read
// back, the step after it is launched for every sequence that will go on (its token is the one
// just sampled, known on the host after the read-back) BEFORE the sessions get their tokens: their
// host work (detokenizing, stop checks, streaming to clients) and the scheduling of the next round
// overlap that step. When the session asks for its next step it claims the launched row (same
// sequence, same token), whose sampling is queued then (penalties see the history with the token
// just taken). A sequence that ends instead (EOS, a stop string or token, an abort, an error) has
// its launched row dropped: SequenceCache.truncate rolls its KV position back, as for a rejected
// speculative draft. A session says when a step's token is its last (`more`) and which tokens end
// it (`ends`), so maxTokens and EOS ends launch nothing to drop.
//
// Chained rounds (pipelined, where the engine can queue a decode step behind the one before:
// `LongcatModel.canQueueDecode`, and no row has penalties, bias or log-probabilities): a step is
// sampled as soon as it is launched, its tokens read back in stream order (native.readAsync), and
// the step after it is launched right away, its rows taking the tokens the step before sampled on
// the device. Two steps are outstanding: while one round's results go to the sessions, the next
// step runs and the one after it is queued behind it, so the device never waits for the JS thread
// between steps. A token that ends a sequence is known one step late: its row in the step queued
// behind is dropped like any other (at most one more for EOS / stop token ids, two for a stop
// string or an abort); `left` bounds what maxTokens allows. The tokens are those of the unchained
// rounds: the same sampler calls on the same logits. A prefill chunk joins the chain the same way
// (exclusive's `inOrder`): it is queued behind the steps running, whose read-backs take their
// errors before it runs, and the rounds after it go on, queued behind it, while its session waits
// for it -- an arriving prompt neither blocks the JS thread nor drains the chained steps.
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
/** What a session will do after a decode step's token (a pipelined round launches the step after it
 *  only when the session will ask for it). */
export interface DecodeFollow {
  /** False when the step's token is the generation's last whatever it is (maxTokens). */
  more: boolean;
  /** Token ids that end the generation when sampled (EOS unless ignoreEos, stop token ids). */
  ends?: ReadonlySet<number>;
  /** How many more tokens the generation may take after this step's (maxTokens); default: 1 when
   *  `more`. Chained rounds launch a step ahead only within it. */
  left?: number;
}
interface DecodeRequest extends Waiting<DecodeResult> {
  seq: SequenceCache;
  token: number;
  sampling: SamplingParams;
  extras: SamplerExtras | undefined;
  follow: DecodeFollow;
}
/** A row of a launched decode step: `token` appended to `seq`. */
interface Row {
  seq: SequenceCache;
  /** -1 until known on the host, for a chained row (its parent's sampled token). */
  token: number;
  /** The settings of the request it continues (an unclaimed row is sampled with them, unread). */
  sampling: SamplingParams;
  extras: SamplerExtras | undefined;
  /** The request it answers: a fresh one from the launch on, a continuation's once claimed. */
  req: DecodeRequest | null;
  /** Rolled back: its sequence ended or did not ask for it. */
  dropped: boolean;
  /** Tokens the generation may take after this row's, as far as known at its launch. */
  left: number;
  /** Chained rounds: the row of the step before whose device-sampled token this row takes, and the
   *  row of the step after that takes this row's. */
  parent: Row | null;
  child: Row | null;
  /** Its row in its step. */
  index: number;
}
/** A launched decode step whose results are not read yet. */
interface Launched {
  rows: Row[];
  logits: Tensor;
  /** The step's FFN counts: per layer int32 [B] (`stride` 0), or one int32 [layers, stride] (a
   *  replayed step's, ForwardResult.ffnCounts); `layers` of them. */
  nFfn: Tensor[];
  stride: number;
  layers: number;
  /** Chained rounds: sampled at launch; its tokens (on the device, which the step after reads) and
   *  the read-back queued behind them: ids, the picked logits' blocks, the FFN counts [layers * B]. */
  sampled: { ids: Tensor; read: Promise<Uint8Array[]> } | null;
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
  /** Sequences decoding in the current round (its requests and the live rows launched ahead):
   *  while any do, a prefill chunk is capped at prefillChunkWhileDecoding. */
  private decodingRows = 0;
  /** The decode steps launched ahead of the sessions' requests, oldest first (pipelined rounds: at
   *  most one; chained: two). */
  private launched: Launched[] = [];
  /** Pipelined decode rounds (see the top of this file); false: each round's step is launched
   *  after the sessions asked for it and read back before the next (tests compare the two). */
  pipeline = true;
  /** Chained rounds where the engine supports them (see the top of this file); false: pipelined
   *  rounds only (tests compare the two). */
  chain = true;
  /** Rounds run and the sequences they batched (statistics; tests read them): `continuedRows` of the
   *  decode rows were launched ahead (pipelined), `chainedRows` of those on device-sampled tokens
   *  (chained), `droppedRows` of those were rolled back unused. */
  readonly stats = {
    decodeSteps: 0,
    decodeRows: 0,
    continuedRows: 0,
    chainedRows: 0,
    droppedRows: 0,
    speculativeSteps: 0,
    speculativeRows: 0,
    largestBatch: 0,
  };

  constructor(
    private readonly engine: LongcatModel,
    /** Prompt tokens a prefill chunk may compute while other sequences are decoding (loadModel's
     *  `prefillChunkWhileDecoding`): each chunk stalls every running stream for its own time. */
    readonly prefillChunkWhileDecoding = Number.POSITIVE_INFINITY,
  ) {}

  /** One plain decode step of `seq` on `token`, batched with every other waiting one; `extras`:
   *  this sequence's penalties, bias and log-probabilities; `follow`: whether the session asks for
   *  the step after it. A session that asked must call release(seq) when its generation ends. */
  decode(
    seq: SequenceCache,
    token: number,
    sampling: SamplingParams,
    extras?: SamplerExtras,
    follow: DecodeFollow = { more: true },
  ): Promise<DecodeResult | typeof NO_ROOM> {
    return new Promise((resolve, reject) => {
      this.decodes.push({ seq, token, sampling, extras, follow, resolve, reject });
      this.kick();
    });
  }

  /** `seq`'s generation asks for no more decode steps: a step launched ahead for it is dropped
   *  (its KV position rolled back) now, so the sequence holds exactly the session's tokens. */
  release(seq: SequenceCache) {
    for (const l of this.launched) for (const row of l.rows) if (row.seq === seq && !row.req && !row.dropped) this.drop(row);
  }

  /** Rolls back a launched row's token (its step may still run: whatever it writes is past the
   *  sequence's length, and any later user of a freed page is queued behind it), and the row
   *  chained behind it (it would take this row's token). */
  private drop(row: Row) {
    for (let r: Row | null = row; r && !r.dropped; r = r.child) {
      r.dropped = true;
      this.stats.droppedRows++;
      if (!r.seq.isReleased) r.seq.truncate(r.seq.length - 1);
    }
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

  /** Runs `fn` (device work such as a prefill chunk) alone, in its turn; its promise settles with fn's.
   *  `inOrder` (ForwardOptions.inOrder): fn's device work may be queued behind the decode steps
   *  still running, without waiting for them -- every one of them has its read-back queued, which
   *  takes its errors before fn's work runs (a step not sampled at launch has none: fn waits).
   *  `maxTokens`: the prompt tokens fn may compute in this turn -- `prefillChunkWhileDecoding`
   *  while other sequences decode (this round ran or launched their steps), else unbounded. */
  exclusive<T>(fn: (inOrder: boolean, maxTokens: number) => Promise<T> | T): Promise<T> {
    return new Promise((resolve, reject) => {
      this.jobs.push(async () => {
        try {
          const inOrder = this.engine.canQueueDecode && this.launched.every(l => l.sampled);
          resolve(await fn(inOrder, this.decodingRows > 0 ? this.prefillChunkWhileDecoding : Number.POSITIVE_INFINITY));
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
      while (this.decodes.length || this.speculations.length || this.jobs.length || this.launched.length) {
        if (this.launched.length) await this.answers(this.launched[0]!);
        const decodes = this.decodes.splice(0),
          speculations = this.speculations.splice(0);
        if (decodes.length || this.launched.length) await this.settle(decodes, () => this.runDecodes(decodes));
        if (speculations.length) await this.settle(speculations, () => this.runSpeculations(speculations));
        // the sequences decoding now: this round's, and the rows launched ahead that go on
        this.decodingRows =
          decodes.length + speculations.length + this.launched.reduce((n, l) => n + l.rows.filter(r => !r.dropped).length, 0);
        await this.jobs.shift()?.();
        // Let the sessions just answered take their tokens and ask again: they join the next round.
        await new Promise<void>(r => setImmediate(r));
      }
    } finally {
      this.running = false;
    }
  }

  /** Gives the sessions of a launched step's rows a few more turns of the event loop to ask for
   *  them or end (normally they already have: a session asks in the turn after its token). */
  private async answers(l: Launched) {
    for (let hop = 0; hop < ANSWER_HOPS; hop++) {
      const asked = new Set(this.decodes.map(d => d.seq));
      if (l.rows.every(r => r.req || r.dropped || asked.has(r.seq))) return;
      await new Promise<void>(r => setImmediate(r));
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
   *  per rank under expert parallelism); `refuse` is called for each (default: resolve NO_ROOM). */
  private fit<R extends { seq: SequenceCache }>(
    reqs: R[],
    n: number,
    refuse: (r: R) => void = r => (r as unknown as Waiting<never>).resolve(NO_ROOM),
  ): R[] {
    const free = new Map<unknown, number>();
    return reqs.filter(r => {
      const s = r.seq,
        left = free.get(s.allocator) ?? s.allocator.available,
        need = Math.max(0, Math.ceil((s.length + n) / s.blockSize) - s.numBlocks);
      if (s.length + n > s.maxContext || need > left) {
        refuse(r);
        return false;
      }
      free.set(s.allocator, left - need);
      return true;
    });
  }

  /**
   * A decode round: the oldest step launched ahead (if any) is claimed by its sessions' requests,
   * sampled and read back; then the next step is launched -- continuations of the sequences that go
   * on (pipelined; chained: of the rows of the step still running, on its device-sampled tokens) and
   * the fresh requests -- and only then are the read tokens handed out. Unpipelined, the fresh
   * requests' step is launched, sampled and read back in the same round.
   */
  private async runDecodes(fresh: DecodeRequest[]) {
    let done: { row: Row; result: DecodeResult }[] = [];
    const prev = this.launched.shift();
    if (prev) {
      // each sequence's request of this round, by sequence (one Map lookup per row, not a search of
      // the requests: at 64 streams that was 64 x 64 comparisons and splices per round)
      const asked = new Map<SequenceCache, DecodeRequest>();
      for (const r of fresh) if (!asked.has(r.seq)) asked.set(r.seq, r);
      const claimed = new Set<DecodeRequest>();
      for (const row of prev.rows) {
        if (row.req || row.dropped) continue;
        const req = asked.get(row.seq);
        if (req && req.token === row.token) {
          row.req = req;
          claimed.add(req);
          asked.delete(row.seq);
          row.left = Math.min(row.left, leftOf(req.follow));
        } else this.drop(row); // ended, or asked for something else (then a fresh row below)
      }
      if (claimed.size) {
        // out of `fresh` in place, as the caller's list (a failed round rejects what is left in it)
        let k = 0;
        for (const r of fresh) if (!claimed.has(r)) fresh[k++] = r;
        fresh.length = k;
      }
      try {
        done = prev.sampled ? await this.readSampled(prev) : await this.read(prev);
      } catch (err) {
        // the steps queued behind took its tokens: they fail with it
        for (const l of this.launched.splice(0)) this.fail(l, err);
        throw err;
      }
      // the rows chained behind the read ones take their tokens, or are dropped with their sequence's end
      for (const { row, result } of done) {
        const c = row.child;
        if (!c || c.dropped) continue;
        if (ends(row, result)) this.drop(c);
        else c.token = result.next;
      }
    }
    const rows: Row[] = [];
    const running = this.launched.at(-1);
    if (this.pipeline && running) {
      // (a step not sampled at launch has no device tokens: its sequences go on once it is read)
      if (running.sampled) for (const r of running.rows) if (!r.dropped && r.left >= 1) rows.push(this.chained(r));
    } else if (this.pipeline)
      for (const { row, result } of done)
        if (row.left >= 1 && !ends(row, result))
          rows.push({
            seq: row.seq,
            token: result.next,
            sampling: row.req!.sampling,
            extras: row.req!.extras,
            req: null,
            dropped: false,
            left: row.left - 1,
            parent: null,
            child: null,
            index: 0,
          });
    for (const r of fresh)
      rows.push({
        seq: r.seq,
        token: r.token,
        sampling: r.sampling,
        extras: r.extras,
        req: r,
        dropped: false,
        left: leftOf(r.follow),
        parent: null,
        child: null,
        index: 0,
      });
    const first = this.launch(rows);
    if (first?.sampled && this.launched.length === 1) {
      // nothing ran ahead of it: the step after it goes in behind it at once
      const next = first.rows.filter(r => !r.dropped && r.left >= 1).map(r => this.chained(r));
      this.launch(next);
    }
    if (!this.pipeline && first) {
      this.launched.pop();
      done.push(...(await this.read(first)));
    }
    for (const { row, result } of done) row.req!.resolve(result);
  }

  /** The row that takes `r`'s device-sampled token in the step after r's. */
  private chained(r: Row): Row {
    const c: Row = {
      seq: r.seq,
      token: -1,
      sampling: r.req?.sampling ?? r.sampling,
      extras: r.req ? r.req.extras : r.extras,
      req: null,
      dropped: false,
      left: r.left - 1,
      parent: r,
      child: null,
      index: 0,
    };
    r.child = c;
    return c;
  }

  /** Launches a decode step of `rows` (those that fit the KV cache): chained rows take their
   *  parents' device tokens; sampled at launch where chained rounds apply. */
  private launch(all: Row[]): Launched | null {
    const rows = this.fit(all, 1, row => {
      row.req?.resolve(NO_ROOM);
      if (row.parent) row.parent.child = null;
    });
    if (!rows.length) return null;
    const e = this.engine;
    const from = rows.find(r => r.parent)?.parent ?? null;
    const src = from ? this.launched.find(l => l.rows.includes(from))!.sampled!.ids : null;
    // queued also with no step running: a prefill chunk may be (exclusive's inOrder), and a
    // forward() that waits for it would block the JS thread (every error before has its taker)
    const queued = this.pipeline && this.chain && e.canQueueDecode;
    for (const [i, r] of rows.entries()) r.index = i;
    let l: Launched;
    try {
      this.count('decode', rows.length);
      for (const r of rows) {
        if (!r.req) this.stats.continuedRows++;
        if (r.parent) this.stats.chainedRows++;
      }
      const { logits, nFfn, ffnCounts } = e.forward(
        rows.map(r => r.seq),
        rows.map(r => [r.parent ? 0 : r.token]),
        {
          collectRouting: 'stacked',
          ...(queued ? { queued: { ids: src, rows: rows.map(r => (r.parent ? r.parent.index : -1)) } } : {}),
        },
      );
      l = ffnCounts
        ? { rows, logits, nFfn: [ffnCounts], stride: ffnCounts.shape[1]!, layers: ffnCounts.shape[0]!, sampled: null }
        : { rows, logits, nFfn, stride: 0, layers: nFfn.length, sampled: null };
    } catch (err) {
      for (const r of rows) {
        r.req?.reject(err); // (the engine rolled every row back)
        if (r.parent) r.parent.child = null;
      }
      return null;
    }
    if (this.pipeline && this.chain && e.canQueueDecode && rows.every(r => !r.extras))
      try {
        this.sample(l);
      } catch (err) {
        this.fail(l, err, true);
        return null;
      }
    this.launched.push(l);
    return l;
  }

  /** Queues the draws of a step launched in a chained round (no row has extras), the sampled
   *  tokens' logits, and their read-back behind them with the step's FFN counts (read from the
   *  step's own outputs: the step after it, which overwrites them, is queued behind this read). */
  private sample(l: Launched) {
    const { rows, logits, nFfn } = l,
      device = this.engine.device;
    const ids = empty([rows.length], { dtype: 'int32', device });
    const held: Tensor[] = [];
    try {
      draw(ids, logits, rows, held);
      const picked = pick(ids, logits, held);
      const read = native.readAsync(null, [ids, ...picked, ...nFfn]);
      read.catch(() => {}); // (awaited by the round that reads the step; unread when every row was dropped)
      l.sampled = { ids, read };
    } catch (err) {
      ids.dispose();
      throw err;
    } finally {
      for (const t of held) t.dispose();
    }
  }

  /** A step sampled at launch: its read-back, as read() gives it; throws its failure. */
  private async readSampled(l: Launched): Promise<{ row: Row; result: DecodeResult }[]> {
    const { rows } = l,
      B = rows.length;
    try {
      if (!rows.some(r => r.req)) return []; // every row dropped: nothing to wait for
      const bytes = await l.sampled!.read;
      const blocks = bytes.length - 1 - l.nFfn.length; // [ids, ...picked blocks, ...FFN counts]
      const next = int32(bytes[0]!),
        ffn = sumRows(bytes.slice(1 + blocks).map(int32), B, l.stride);
      const logit = diagonal(bytes.slice(1, 1 + blocks), B);
      const out: { row: Row; result: DecodeResult }[] = [];
      for (let b = 0; b < B; b++) {
        const row = rows[b]!;
        if (row.req) out.push({ row, result: { next: next[b]!, logit: logit[b]!, ffnSum: ffn[b]!, ffnCount: l.layers } });
      }
      return out;
    } catch (err) {
      // The step queued behind this one took its tokens and fails too, after this failure was taken
      // off the stream: its own is taken (and dropped) before anyone hears of this one, so no stale
      // failure is left on the stream for the model's next caller.
      await native.synchronizeAsync(this.engine.device).catch(() => {});
      for (const r of rows) r.req?.reject(err);
      throw err;
    } finally {
      this.dispose(l);
    }
  }

  /** A launched step that fails (its own failure, or that of the step whose tokens it took): its
   *  requests are rejected, its unclaimed rows rolled back. `fresh`: it was never launched as far as
   *  the rounds go (rolled back whole). */
  private fail(l: Launched, err: unknown, fresh = false) {
    for (const r of l.rows) {
      r.req?.reject(err);
      if (r.parent) r.parent.child = null;
      if (!r.dropped && (fresh || !r.req)) this.drop(r);
    }
    this.dispose(l);
  }

  private dispose(l: Launched) {
    for (const t of [l.logits, ...l.nFfn, ...(l.sampled ? [l.sampled.ids] : [])]) t.dispose();
  }
  /**
   * Samples a launched step's rows (a claimed row with its request's penalties, bias and
   * log-probabilities; an unclaimed one plainly, unread), reads back the claimed rows' results and
   * disposes the step's outputs. A failure fails every claimed request (and returns none).
   */
  private async read(l: Launched): Promise<{ row: Row; result: DecodeResult }[]> {
    const e = this.engine,
      { rows, logits, nFfn } = l,
      B = rows.length;
    if (!rows.some(r => r.req)) {
      for (const t of [logits, ...nFfn]) t.dispose(); // every row dropped: nothing to sample or read
      return [];
    }
    const ids = empty([B], { dtype: 'int32', device: e.device });
    const held: Tensor[] = [ids, logits, ...nFfn]; // disposed at the end
    const lps = new Map<number, ReturnType<typeof queueLogprob>>();
    try {
      const extras = rows.map(r => r.req?.extras);
      // Penalties and bias per row, in place (a copy of the raw row first when log-probabilities are asked).
      const raws = extras.map((x, b) => {
        if (!x) return null;
        const row = logits.narrow(b, 1);
        held.push(row);
        const raw = prepareRow(row, x);
        if (raw && raw !== row) held.push(raw);
        return raw;
      });
      draw(ids, logits, rows, held);
      raws.forEach((raw, b) => {
        if (!raw) return;
        const id = ids.narrow(b, 1);
        held.push(id);
        lps.set(b, queueLogprob(raw, id, extras[b]!.logprobs!));
      });
      const picked = pick(ids, logits, held);
      await native.synchronizeAsync(e.device);
      const next = toArray(ids);
      const logit = diagonal(
        picked.map(t => t.toBytes()),
        B,
      );
      const ffn = sumRows(nFfn.map(toArray), B, l.stride);
      const out: { row: Row; result: DecodeResult }[] = [];
      rows.forEach((row, b) => {
        if (!row.req) return;
        const logprob = lps.get(b)?.read();
        out.push({
          row,
          result: { next: next[b]!, logit: logit[b]!, ffnSum: ffn[b]!, ffnCount: l.layers, ...(logprob ? { logprob } : {}) },
        });
      });
      return out;
    } catch (err) {
      for (const r of rows) r.req?.reject(err);
      return [];
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
    const ffn = sumRows(r.nFfn.map(toArray), 2 * reqs.length, 0);
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

/** Event-loop turns a pipelined round waits at most for the sessions of its launched rows to ask
 *  for them or end, before dropping the rows (they normally answer in the first). */
const ANSWER_HOPS = 4;

/** Rows per block of the sampled logits' gather (G x G values read per block). */
const G = 64;

/** The draws of a step's rows into `ids`: one sampler call per run of consecutive greedy rows with
 *  the same settings (a greedy row's token is the argmax of its row, whatever its row index, seed or
 *  step), one per row otherwise (the sampler's step is each sequence's own position, batched or
 *  not). A claimed row draws with its request's settings. */
function draw(ids: Tensor, logits: Tensor, rows: Row[], held: Tensor[]) {
  const B = rows.length,
    sampling = rows.map(r => r.req?.sampling ?? r.sampling);
  for (let b0 = 0; b0 < B; ) {
    const p = sampling[b0]!;
    let b1 = b0 + 1;
    if (p.temperature === 0) while (b1 < B && sameGreedy(p, sampling[b1]!)) b1++;
    const [part, id] = rowsOf(B, b0, b1, held, logits, ids);
    native.sample(null, id!, part!, p.temperature, p.topK, p.topP, p.minP, p.seed, rows[b0]!.seq.length);
    b0 = b1;
  }
}

/** Rows [b0, b1) of each of `ts` (B rows each): the tensors themselves when that is all of them
 *  (no handles made and disposed on every step), else views, added to `held`. */
function rowsOf(B: number, b0: number, b1: number, held: Tensor[], ...ts: Tensor[]): Tensor[] {
  if (b0 === 0 && b1 === B) return ts;
  const parts = ts.map(t => t.narrow(b0, b1 - b0));
  held.push(...parts);
  return parts;
}

/** The sampled tokens' logits (a non-finite one means a broken row), queued before the step's one
 *  read-back: per block of up to G rows, picked[i, j] = logits[b0 + i, ids[b0 + j]], of which the
 *  diagonal is wanted (G x G values per block: no host round trip for the ids first). */
function pick(ids: Tensor, logits: Tensor, held: Tensor[]): Tensor[] {
  const B = ids.shape[0]!,
    picked: Tensor[] = [];
  for (let b0 = 0; b0 < B; b0 += G) {
    const n = Math.min(G, B - b0),
      out = empty([n, n], { device: logits.device }),
      [part, id] = rowsOf(B, b0, b0 + n, held, logits, ids);
    held.push(out);
    picked.push(out);
    native.gatherColumns(null, out, part!, id!);
  }
  return picked;
}

/** The picked blocks' diagonals (pick), read back as bytes: each row's sampled logit. */
function diagonal(blocks: Uint8Array[], B: number): Float32Array {
  const logit = new Float32Array(B);
  blocks.forEach((bytes, i) => {
    const v = new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4),
      n = Math.min(G, B - i * G);
    for (let j = 0; j < n; j++) logit[i * G + j] = v[j * n + j]!;
  });
  return logit;
}

const int32 = (bytes: Uint8Array) => new Int32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);

/** How many more tokens a request's generation may take after its step's token. */
const leftOf = (f: DecodeFollow) => (f.more ? (f.left ?? 1) : 0);

/** Whether a read row's sequence takes no token after it: its token ends it, it is broken (a
 *  non-finite logit), or its request asks for no more. */
function ends(row: Row, result: DecodeResult): boolean {
  const f = row.req!.follow;
  return leftOf(f) < 1 || !!f.ends?.has(result.next) || !Number.isFinite(result.logit);
}

/** Two greedy rows' settings draw the same way in one sampler call (the sampler checks the shared ones). */
function sameGreedy(a: SamplingParams, b: SamplingParams): boolean {
  return b.temperature === 0 && a.topK === b.topK && a.topP === b.topP && a.minP === b.minP && a.seed === b.seed;
}

/** Per row, the FFN counts summed over layers: `counts` per layer int32 [>= rows] (`stride` 0), or
 *  one int32 [layers, stride] (row b of layer l at l * stride + b). */
function sumRows(counts: ArrayLike<number>[], rows: number, stride: number): number[] {
  const sum = new Array<number>(rows).fill(0);
  for (const c of counts) {
    const layers = stride ? c.length / stride : 1;
    for (let l = 0; l < layers; l++) for (let i = 0; i < rows; i++) sum[i]! += c[l * stride + i]!;
  }
  return sum;
}
