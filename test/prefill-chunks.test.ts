// Responsiveness (issue 13, item 9): waits that JS awaits instead of blocking on
// (native.synchronizeAsync, Stream.synchronizeAsync, toArrayAsync, and native.readAsync: a CPU
// stream's read-back in stream order), and prefills run in chunks that
// generate awaits one by one: the same logits and tokens as one step, other JS work running between
// chunks, an abort stopping the prefill at a chunk boundary. On the CPU and, where a CUDA device
// exists (a GPU, or the emulator of `npm run test:emu`, whose streams run only when waited for),
// on cuda:0. Behaviour only: nothing here reads a clock.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { initRandom } from '../lib/init-random.js';
import { loadModel, type Model } from '../lib/generate.js';
import { native } from '../lib/native.js';
import { Event, Stream, synchronizeAsync } from '../lib/device.js';
import { empty, tensor, toArray, toArrayAsync } from '../lib/tensor.js';
import { LongcatError } from '../lib/errors.js';
import { expectClose, rng } from './helpers.js';

const devices = ['cpu', ...(native.cudaStatus().available ? ['cuda:0'] : [])];
const root = mkdtempSync(path.join(tmpdir(), 'longcat-prefill-'));
const dir = path.join(root, 'tiny');
let saved: ReturnType<typeof native.setMatmulPrecision>;
beforeAll(async () => {
  saved = native.setMatmulPrecision('highest');
  await initRandom({ preset: 'tiny', out: dir, seed: 33 });
});
afterAll(() => {
  native.setMatmulPrecision(saved);
  rmSync(root, { recursive: true, force: true });
});

/** y = x w^T in float64, the reference of the queued linear below. */
function linearRef(x: Float32Array, w: Float32Array, t: number, k: number, n: number) {
  const y = new Float64Array(t * n);
  for (let i = 0; i < t; i++)
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let q = 0; q < k; q++) s += x[i * k + q]! * w[j * k + q]!;
      y[i * n + j] = s;
    }
  return y;
}

describe.each(devices)('awaitable waits on %s', device => {
  const [t, k, n] = [23, 67, 19];
  const r = rng(7);
  const xv = r.array(t * k),
    wv = r.array(n * k);
  const want = linearRef(xv, wv, t, k, n);

  it('stream.synchronizeAsync() resolves once the stream ran what was queued (read without waiting again)', async () => {
    const s = new Stream(device);
    const x = tensor(xv, [t, k], { device }),
      w = tensor(wv, [n, k], { device }),
      y = empty([t, n], { device });
    const other = new Event(device);
    native.linear(s, y, x, w);
    other.record(s);
    const p = s.synchronizeAsync();
    expect(p).toBeInstanceOf(Promise);
    await p;
    expect(other.query(), 'the event recorded after the linear completed').toBe(true);
    expectClose(toArray(y), want, 1e-4, 1e-5, 'y');
    for (const v of [x, w, y]) v.dispose();
    s.dispose();
  });

  it('synchronizeAsync(device) and toArrayAsync wait for every stream of the device', async () => {
    const s = new Stream(device);
    const x = tensor(xv, [t, k], { device }),
      w = tensor(wv, [n, k], { device }),
      y = empty([t, n], { device }),
      z = empty([t, n], { device });
    native.linear(s, y, x, w);
    const done = new Event(device);
    done.record(s);
    native.defaultStream(device).waitEvent(done);
    native.scale(null, z, y, 2); // on the default stream, after s's linear
    expectClose(
      await toArrayAsync(z),
      Array.from(want, v => 2 * v),
      2e-4,
      1e-5,
      'z',
    );
    native.linear(s, y, x, w);
    await synchronizeAsync(device);
    expect(done.query()).toBe(true);
    for (const v of [x, w, y, z]) v.dispose();
    s.dispose();
  });

  it('a stream disposed while its wait is pending still resolves it', async () => {
    const s = new Stream(device);
    const x = tensor(xv, [t, k], { device }),
      w = tensor(wv, [n, k], { device }),
      y = empty([t, n], { device });
    native.linear(s, y, x, w);
    const p = s.synchronizeAsync();
    s.dispose();
    await p;
    expectClose(toArray(y), want, 1e-4, 1e-5, 'y');
    for (const v of [x, w, y]) v.dispose();
  });
});

/** Two embeddings that fail on the CPU (ids 9 and -1 of a 2-row table: y <- bad, y1 <- alsoBad). */
function failingEmbeddings() {
  const table = tensor([1, 2, 3, 4], [2, 2]),
    bad = tensor([0, 9], [2], { dtype: 'int32' }),
    alsoBad = tensor([-1], [1], { dtype: 'int32' }),
    y = empty([2, 2]),
    y1 = empty([1, 2]);
  return {
    table,
    bad,
    alsoBad,
    y,
    y1,
    dispose: () => {
      for (const v of [table, bad, alsoBad, y, y1]) v.dispose();
    },
  };
}

describe('awaitable waits on CPU streams: failures and captures', () => {
  it('inside a CPU graph capture the wait is refused with E_ARGUMENT (it would be captured, not run)', () => {
    const s = new Stream('cpu');
    let err: unknown = null;
    const g = native.captureGraph([s], () => {
      try {
        void s.synchronizeAsync();
      } catch (e) {
        err = e;
      }
    });
    g.dispose();
    expect(err).toBeInstanceOf(LongcatError);
    expect((err as LongcatError).code).toBe('E_ARGUMENT');
    s.dispose();
  });

  it("synchronizeAsync('cpu') is refused inside a capture too, and resolves with nothing queued", async () => {
    const s = new Stream('cpu');
    let err: unknown = null;
    const g = native.captureGraph([s], () => {
      try {
        void synchronizeAsync('cpu');
      } catch (e) {
        err = e;
      }
    });
    g.dispose();
    expect((err as LongcatError).code).toBe('E_ARGUMENT');
    await synchronizeAsync('cpu');
    await synchronizeAsync('cpu'); // (idle streams: each reports at once)
    s.dispose();
  });

  it("several synchronizeAsync('cpu') pending at once over several streams each resolve after all of their work", async () => {
    // (the CPU wait: a job on each stream counts down, the last to run settles the promise)
    const streams = [new Stream('cpu'), new Stream('cpu'), new Stream('cpu')];
    const [t, k, n] = [31, 97, 29];
    const r = rng(11);
    const xv = r.array(t * k),
      wv = r.array(n * k);
    const want = linearRef(xv, wv, t, k, n);
    const x = tensor(xv, [t, k]),
      w = tensor(wv, [n, k]);
    const ys = streams.map(() => empty([t, n]));
    const waits: Promise<void>[] = [];
    for (let i = 0; i < 5; i++) {
      const ends = streams.map((s, j) => {
        native.linear(s, ys[j]!, x, w);
        const e = new Event('cpu');
        e.record(s);
        return e;
      });
      waits.push(synchronizeAsync('cpu').then(() => expect(ends.every(e => e.query())).toBe(true)));
    }
    streams[1]!.dispose(); // a stream disposed while waits are pending runs its queue first
    await Promise.all(waits);
    for (const y of ys) expectClose(toArray(y), want, 1e-4, 1e-5, 'y');
    for (const v of [x, w, ...ys]) v.dispose();
    for (const s of [streams[0]!, streams[2]!]) s.dispose();
  });

  it('a kernel that fails on a CPU stream rejects the awaited wait with its typed error, once', async () => {
    const s = new Stream('cpu');
    const table = tensor([1, 2, 3, 4], [2, 2]),
      ids = tensor([0, 7], [2], { dtype: 'int32' }),
      y = empty([2, 2]);
    native.embedding(s, y, table, ids); // ids[1] = 7 is only seen when the kernel runs
    const err = await s.synchronizeAsync().then(
      () => null,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(LongcatError);
    expect((err as LongcatError).code).toBe('E_ARGUMENT');
    expect((err as Error).message).toMatch(/ids\[1\] = 7 is out of range/);
    await s.synchronizeAsync(); // reported once: the stream is usable again
    native.embedding(s, y, table, ids);
    await expect(synchronizeAsync('cpu')).rejects.toMatchObject({ code: 'E_ARGUMENT' });
    for (const v of [table, ids, y]) v.dispose();
    s.dispose();
  });

  it("each awaited wait of a CPU stream takes the failure queued before it, not a later one's", async () => {
    const s = new Stream('cpu');
    const { table, bad, alsoBad, y, y1, dispose } = failingEmbeddings();
    const clean = s.synchronizeAsync(); // nothing failed before it
    native.embedding(s, y, table, bad);
    const first = s.synchronizeAsync();
    native.embedding(s, y1, table, alsoBad);
    const second = s.synchronizeAsync();
    const ran = new Event('cpu');
    ran.record(s);
    ran.synchronize(); // every wait's job ran before any of them settles on this thread
    await expect(clean).resolves.toBeUndefined();
    await expect(first).rejects.toMatchObject({ code: 'E_ARGUMENT', message: expect.stringMatching(/= 9 /) });
    await expect(second).rejects.toMatchObject({ code: 'E_ARGUMENT', message: expect.stringMatching(/= -1 /) });
    s.synchronize(); // nothing left behind on the stream
    dispose();
    s.dispose();
  });
});

describe('readAsync: a CPU stream read back in stream order', () => {
  it('gives the bytes as they are when the stream gets there, not after the work queued behind', async () => {
    const s = new Stream('cpu');
    const [t, k, n] = [13, 41, 11];
    const r = rng(5);
    const xv = r.array(t * k),
      wv = r.array(n * k);
    const want = linearRef(xv, wv, t, k, n);
    const x = tensor(xv, [t, k]),
      w = tensor(wv, [n, k]),
      y = empty([t, n]),
      ids = tensor([3, 1, 4], [3], { dtype: 'int32' }),
      later = tensor(new Float32Array(t * n).fill(Number.NaN), [t, n]);
    native.linear(s, y, x, w);
    const p = native.readAsync(s, [y, ids]);
    native.copy(s, y, later); // queued behind the read: not in what it gives
    const [yBytes, idBytes] = await p;
    expectClose(new Float32Array(yBytes!.buffer, yBytes!.byteOffset, t * n), want, 1e-4, 1e-5, 'y');
    expect(Array.from(new Int32Array(idBytes!.buffer, idBytes!.byteOffset, 3))).toEqual([3, 1, 4]);
    s.synchronize();
    expect(Number.isNaN(toArray(y)[0]!)).toBe(true);
    for (const v of [x, w, y, ids, later]) v.dispose();
    s.dispose();
  });

  it('rejects with the typed error of a kernel that failed before it, and is refused inside a capture', async () => {
    const s = new Stream('cpu');
    const table = tensor([1, 2, 3, 4], [2, 2]),
      ids = tensor([0, 9], [2], { dtype: 'int32' }),
      y = empty([2, 2]);
    native.embedding(s, y, table, ids);
    await expect(native.readAsync(s, [y])).rejects.toMatchObject({ code: 'E_ARGUMENT' });
    const ok = await native.readAsync(s, [table]); // reported once: the stream reads again
    expect(Array.from(new Float32Array(ok[0]!.buffer, ok[0]!.byteOffset, 4))).toEqual([1, 2, 3, 4]);
    let err: unknown = null;
    const g = native.captureGraph([s], () => {
      try {
        void native.readAsync(s, [y]);
      } catch (e) {
        err = e;
      }
    });
    g.dispose();
    expect((err as LongcatError).code).toBe('E_ARGUMENT');
    expect(() => native.readAsync(s, [y, 'no' as never])).toThrow(LongcatError);
    for (const v of [table, ids, y]) v.dispose();
    s.dispose();
  });

  // Each read takes the failure of the work before it when the stream gets there: a second failure
  // queued behind the first read is the second read's, even when both reads settle after both ran.
  it('gives each of two reads the failure queued before it, in stream order', async () => {
    const s = new Stream('cpu');
    const { table, bad, alsoBad, y, y1, dispose } = failingEmbeddings();
    native.embedding(s, y, table, bad);
    const first = native.readAsync(s, [y]);
    native.embedding(s, y1, table, alsoBad);
    const second = native.readAsync(s, [y1]);
    const third = native.readAsync(s, [table]);
    const ran = new Event('cpu');
    ran.record(s);
    ran.synchronize(); // all five ran before any read settles on this thread (an event takes no error)
    await expect(first).rejects.toMatchObject({ code: 'E_ARGUMENT', message: expect.stringMatching(/9/) });
    await expect(second).rejects.toMatchObject({ code: 'E_ARGUMENT', message: expect.stringMatching(/-1/) });
    const ok = await third;
    expect(Array.from(new Float32Array(ok[0]!.buffer, ok[0]!.byteOffset, 4))).toEqual([1, 2, 3, 4]);
    s.synchronize(); // nothing left behind on the stream
    dispose();
    s.dispose();
  });
});

describe.each(devices)('chunked prefill on %s', device => {
  let model: Model;
  let prompt: string;
  beforeAll(async () => {
    // every generation prefills its whole prompt (no pages shared between the sessions)
    model = await loadModel(dir, {
      backend: device === 'cpu' ? 'cpu' : 'cuda',
      maxContext: 512,
      cacheDtype: 'f32',
      prefixCache: false,
    });
    prompt = 'In the valley of 42 sheep, the shepherd counted: one, two, three, four, five. '.repeat(3);
  });
  afterAll(() => model.dispose());

  it('gives the logits of one step, for chunks of 1, 7 and 64 tokens (fp32 everywhere)', () => {
    const ids = model.tokenizer.encode(prompt).slice(0, 100);
    expect(ids.length).toBe(100);
    const whole = model.forward(ids);
    const V = model.config.vocab_size;
    for (const chunk of [1, 7, 64]) {
      const got = model.forward(ids, { prefillChunk: chunk });
      // The chunks read the earlier tokens back from the (f32) cache instead of the step's own
      // values: the same numbers, summed in a different order.
      let scale = 0;
      for (const v of whole) scale = Math.max(scale, Math.abs(v));
      expectClose(got, whole, 2e-5 * scale, 0, `logits, chunks of ${chunk}`);
      expect(got.length).toBe(100 * V);
    }
  });

  it('attends in the absorbed form behind a cached prefix at least as long as the chunk (CPU), else expanded: the logits of one step', () => {
    const ids = model.tokenizer.encode(prompt).slice(0, 100);
    const whole = model.forward(ids);
    const V = model.config.vocab_size;
    // chunks of 30 (no prefix), 40 (behind 30), 30 (behind 70)
    const parts = [ids.slice(0, 30), ids.slice(30, 70), ids.slice(70)];
    const want = device === 'cpu' ? ['expanded', 'expanded', 'absorbed'] : ['expanded', 'expanded', 'expanded'];
    const calls = { expanded: 0, absorbed: 0 };
    const n = native as unknown as Record<string, (...a: unknown[]) => unknown>;
    const prefill = n.mlaPrefill!,
      absorbed = n.mlaDecodeAbsorbed!;
    n.mlaPrefill = (...a) => {
      calls.expanded++;
      return prefill(...a);
    };
    n.mlaDecodeAbsorbed = (...a) => {
      calls.absorbed++;
      return absorbed(...a);
    };
    const seq = model.engine.newSequence();
    const got = new Float32Array(100 * V);
    try {
      let at = 0;
      parts.forEach((part, i) => {
        calls.expanded = calls.absorbed = 0;
        const { logits } = model.engine.forward([seq], [part], { allLogits: true, mode: 'prefill' });
        got.set(toArray(logits) as Float32Array, at * V);
        logits.dispose();
        at += part.length;
        const sublayers = 2 * model.config.num_layers;
        expect(calls, `chunk ${i}'s attention`).toEqual(
          want[i] === 'absorbed' ? { expanded: 0, absorbed: sublayers } : { expanded: sublayers, absorbed: 0 },
        );
      });
    } finally {
      n.mlaPrefill = prefill;
      n.mlaDecodeAbsorbed = absorbed;
      seq.release();
    }
    let scale = 0;
    for (const v of whole) scale = Math.max(scale, Math.abs(v));
    expectClose(got, whole, 2e-5 * scale, 0, 'logits, chunks of 30, 40, 30');
  });

  it('generates the same greedy tokens, with onPrefillChunk called once per chunk', async () => {
    using a = model.createSession();
    const one = await a.generate(prompt, { maxTokens: 12, prefillChunk: 100_000 });
    using b = model.createSession();
    const seen: { done: number; total: number }[] = [];
    const chunked = await b.generate(prompt, { maxTokens: 12, prefillChunk: 9, onPrefillChunk: p => seen.push(p) });
    expect(chunked.tokens).toEqual(one.tokens);
    expect(chunked.text).toBe(one.text);
    const P = chunked.promptTokens;
    expect(P).toBeGreaterThan(40);
    expect(seen.length).toBe(Math.ceil(P / 9));
    expect(seen.map(s => s.done)).toEqual(Array.from({ length: seen.length }, (_, i) => Math.min(P, 9 * (i + 1))));
    expect(seen.every(s => s.total === P)).toBe(true);
  });

  it('lets other JS work run between chunks', async () => {
    let ticks = 0,
      live = true;
    const tick = () => {
      ticks++;
      if (live) setImmediate(tick);
    };
    setImmediate(tick);
    const atChunk: number[] = [];
    try {
      using s = model.createSession();
      const r = await s.generate(prompt, { maxTokens: 1, prefillChunk: 8, onPrefillChunk: () => atChunk.push(ticks) });
      expect(r.completionTokens + (r.stopReason === 'eos' ? 1 : 0)).toBe(1);
    } finally {
      live = false;
    }
    expect(atChunk.length).toBeGreaterThan(5);
    // Between two chunks the event loop turned at least once (a setImmediate callback ran).
    for (let i = 1; i < atChunk.length; i++) expect(atChunk[i]!, `ticks before chunk ${i}`).toBeGreaterThan(atChunk[i - 1]!);
  });

  it('an abort issued while a prefill chunk runs stops the prefill at the next chunk boundary', async () => {
    using s = model.createSession();
    const ac = new AbortController();
    let chunks = 0;
    const g = s.generate(prompt, {
      maxTokens: 5,
      prefillChunk: 4,
      signal: ac.signal,
      onPrefillChunk: () => {
        // Issued from other JS work (the next turn of the event loop), while the next chunk runs.
        if (++chunks === 2) setImmediate(() => ac.abort());
      },
    });
    const r = await g;
    expect(r.stopReason).toBe('abort');
    expect(r.completionTokens).toBe(0);
    expect(r.text).toBe('');
    const total = Math.ceil(r.promptTokens / 4);
    expect(chunks).toBeGreaterThanOrEqual(2);
    expect(chunks, 'the prefill did not run to its end').toBeLessThan(total - 2);
    // Every chunk that ran is in the session's cache, and only whole chunks.
    expect(s.length).toBe(4 * chunks);
    expect(r.prefillTokens).toBe(4 * chunks);
    // The next call continues from the cached chunks.
    const again = await s.generate(prompt, { maxTokens: 2, prefillChunk: 4 });
    expect(again.prefillTokens).toBe(again.promptTokens - 4 * chunks);
  });

  it('checks prefillChunk and onPrefillChunk before any work', async () => {
    using s = model.createSession();
    for (const bad of [0, -1, 2.5, Number.NaN, '8' as unknown as number])
      await expect(s.generate(prompt, { prefillChunk: bad })).rejects.toMatchObject({ code: 'E_ARGUMENT' });
    await expect(s.generate(prompt, { onPrefillChunk: 'x' as unknown as () => void })).rejects.toMatchObject({
      code: 'E_ARGUMENT',
    });
    expect(s.length).toBe(0);
    await expect(loadModel(dir, { backend: 'cpu', prefillChunk: 0 })).rejects.toMatchObject({ code: 'E_ARGUMENT' });
  });
});
