// Faulting memory in ahead of use, off the JS thread (native/ops/populate.cc, issue 19): populateZeros
// (the KV caches, as a job of a stream) leaves exactly the tensor's bytes zero, whatever they held;
// populateMapped (the mapped weights at load, on a libuv worker) faults in the mapped pages of its
// items (the mapping's resident set, /proc/self/smaps, grows by them), skips what is not a mapping,
// and says when it would exceed its limit. Neither blocks the JS thread: a stream held back by a
// wait that only a timer callback releases still completes (the callback ran while the work was
// pending). loadModel zeroes the caches and faults the weights in before it resolves.
import { beforeAll, describe, expect, it } from 'vitest';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { native } from '../lib/native.js';
import { Stream } from '../lib/device.js';
import { type Tensor, tensor, toArray } from '../lib/tensor.js';
import { initRandom } from '../lib/init-random.js';
import { loadModel } from '../lib/generate.js';
import { openCheckpoint } from '../lib/checkpoint.js';
import { modelDims } from '../lib/model/dims.js';
import { loadWeights } from '../lib/model/weights.js';
import { LongcatModel } from '../lib/model/model.js';
import { expectCode, rejects, rng, scratchDir } from './helpers.js';

const root = scratchDir('lc-populate-');

const PAGE = 4096;
/** n bytes, none 0: random in the first MiB, then its repeats. */
const poisoned = (n: number, seed: number) => {
  const r = rng(seed),
    b = new Uint8Array(n),
    head = Math.min(n, 1 << 20);
  for (let i = 0; i < head; i++) b[i] = (r.uint32() & 255) | 1;
  for (let i = head; i < n; i += head) b.copyWithin(i, 0, Math.min(head, n - i));
  return b;
};
const allZero = (b: Uint8Array) => b.every(x => x === 0);

/** Holds `stream` back until the returned release() runs (an epWait on a flag that epSignal, from
 *  another stream, raises); `timedOut()` reads whether the wait gave up instead (its abort word). */
function gate(stream: Stream) {
  const flag = tensor([0], [1], { dtype: 'int32' }),
    abort = tensor([0], [1], { dtype: 'int32' }),
    other = new Stream('cpu');
  native.epWait(stream, { flags: flag, peers: [0], rank: 0, kind: 1, timeoutMs: 60_000 }, abort);
  return {
    release: () => native.epSignal(other, [flag]),
    timedOut: () => {
      other.synchronize();
      const a = (toArray(abort) as Int32Array)[0]!;
      for (const t of [flag, abort]) t.dispose();
      other.dispose();
      return a !== 0;
    },
  };
}

/**
 * Queues work on `stream` behind a gate that only a setImmediate callback releases, then awaits
 * `wait`: checks that the callback ran first (the JS thread stayed free while the work was queued and
 * waited for) and that it, not the gate's own timeout, released the stream. Returns what `queue` did.
 */
async function heldUntilImmediate<T>(stream: Stream, queue: () => T, wait: (v: T) => Promise<unknown>): Promise<T> {
  const g = gate(stream);
  const v = queue(); // queued behind the gate: returns at once
  const order: string[] = [];
  setImmediate(() => {
    order.push('timer');
    g.release();
  });
  await wait(v);
  order.push('done');
  expect(order).toEqual(['timer', 'done']);
  expect(g.timedOut()).toBe(false); // released by the timer, not by the wait's own timeout
  return v;
}

describe('populateZeros', () => {
  it.each([1, 3])('zeroes exactly the tensor, over 2 MiB pieces and odd sizes, with %i pool threads', threads => {
    native.setThreads(threads);
    // [before, the view, after] within one allocation: the view starts and ends inside pages
    for (const [before, len, after] of [
      [0, 1, 0],
      [5, 3 * (1 << 20) + 4097, 11],
      [PAGE - 1, (2 << 20) * 2 + 1, PAGE + 3],
      [123, 777, 0],
    ] as const) {
      const whole = new native.Tensor('int8', [before + len + after], 'cpu', poisoned(before + len + after, len));
      const want = Buffer.from(whole.toBytes());
      const view = whole.narrow(before, len);
      const s = new Stream('cpu');
      native.populateZeros(s, view);
      s.synchronize();
      s.dispose();
      const got = Buffer.from(whole.toBytes());
      expect(allZero(got.subarray(before, before + len)), `[${before}, +${len})`).toBe(true);
      expect(got.subarray(0, before).equals(want.subarray(0, before))).toBe(true);
      expect(got.subarray(before + len).equals(want.subarray(before + len))).toBe(true);
      view.dispose();
      whole.dispose();
    }
  });

  it('runs behind the stream, while the JS thread goes on (a timer releases the work it waits for)', async () => {
    native.setThreads(2);
    const n = (64 << 20) + 3;
    const t = new native.Tensor('int8', [n], 'cpu', poisoned(n, 7));
    const s = new Stream('cpu');
    await heldUntilImmediate(
      s,
      () => native.populateZeros(s, t),
      () => s.synchronizeAsync(),
    );
    expect(allZero(t.toBytes())).toBe(true);
    s.dispose();
    t.dispose();
  });

  it('a missing tensor is E_ARGUMENT', () => {
    const s = new Stream('cpu');
    expectCode(() => native.populateZeros(s, null as never), 'E_ARGUMENT');
    s.dispose();
  });
});

/** The resident bytes of the mappings of `file` in this process (/proc/self/smaps Rss). */
function residentBytes(file: string): number {
  const lines = fs.readFileSync('/proc/self/smaps', 'utf8').split('\n');
  let inFile = false,
    kb = 0;
  for (const l of lines) {
    if (/^[0-9a-f]+-[0-9a-f]+ /.test(l)) inFile = l.endsWith(` ${file}`);
    else if (inFile && l.startsWith('Rss:')) kb += Number(/(\d+)/.exec(l)![1]);
  }
  return kb * 1024;
}

describe('populateMapped', () => {
  it('faults in the mapped pages of its tensors (shared pages once), skips copies, honours maxBytes', async () => {
    native.setThreads(2);
    const file = path.join(root, 'weights.bin'),
      size = 6 * (1 << 20) + 123;
    fs.writeFileSync(file, poisoned(size, 3));
    const m = native.mapFile(file);
    // [offset, bytes]: two that share a page, one far off, one misaligned (an aligned copy: not a mapping)
    const a = native.tensorFromMapping(m, 0, 'f32', [1000]),
      b = native.tensorFromMapping(m, 4000, 'f32', [100]),
      c = native.tensorFromMapping(m, 5 * (1 << 20) + 8, 'bf16', [3000]),
      copied = native.tensorFromMapping(m, 2 * (1 << 20) + 1, 'f32', [4096]);
    const pages = (from: number, to: number) => Math.ceil(to / PAGE) * PAGE - Math.floor(from / PAGE) * PAGE;
    const want = pages(0, 4400) + pages(5 * (1 << 20) + 8, 5 * (1 << 20) + 8 + 6000);
    // (the misaligned copy read its bytes through the mapping: the page cache may have mapped a whole
    // large folio around them, which holds none of the ranges above)
    const before = residentBytes(file);
    const tooBig = await native.populateMapped([a, b, c, copied], want - 1);
    expect(tooBig).toEqual({ bytes: want, populated: false });
    expect(residentBytes(file)).toBe(before);
    expect(await native.populateMapped([a, b, c, copied, a])).toEqual({ bytes: want, populated: true });
    expect(residentBytes(file)).toBeGreaterThanOrEqual(before + want);
    expect(await native.populateMapped([copied])).toEqual({ bytes: 0, populated: true });
    expectCode(() => native.populateMapped([{} as Tensor]), 'E_ARGUMENT', /items\[0\]/);
    expectCode(() => native.populateMapped([a], -1), 'E_ARGUMENT', /maxBytes/);
    for (const t of [a, b, c, copied]) t.dispose();
    m.close();
  });

  // MADV_POPULATE_READ (Linux >= 5.14) reports a page past the end of a truncated file; the fallback
  // of older kernels (a touch per page) would take SIGBUS there, as any read of it would.
  const [major, minor] = os.release().split('.').map(Number) as [number, number];
  it.runIf(major > 5 || (major === 5 && minor >= 14))('a truncated file is E_CHECKPOINT, not a crash', async () => {
    const file = path.join(root, 'truncated.bin');
    fs.writeFileSync(file, poisoned(1 << 20, 4));
    const m = native.mapFile(file);
    const t = native.tensorFromMapping(m, 0, 'f32', [1 << 18]);
    fs.truncateSync(file, PAGE);
    await rejects(native.populateMapped([t]), 'E_CHECKPOINT', 'populateMapped');
    t.dispose();
    m.close();
  });
});

describe('at load', () => {
  const dir = path.join(root, 'small');
  beforeAll(async () => {
    await initRandom({ preset: 'small', out: dir, seed: 29, mtp: true });
  }, 300_000);

  it('the KV caches read all zeros and the weights are resident once loadModel resolves; populate: false skips them', async () => {
    native.setThreads(2);
    using off = await loadModel(dir, { backend: 'cpu', maxContext: 64, populate: false });
    expect(off.memory.populated).toBeNull();
    using on = await loadModel(dir, { backend: 'cpu', maxContext: 64 });
    const p = on.memory.populated!;
    expect(p.skipped).toBeNull();
    // the experts and the dense weights: more than half of what is mapped, not the embeddings
    expect(p.bytes).toBeGreaterThan(on.memory.hostMapped / 2);
    expect(p.bytes).toBeLessThanOrEqual(on.memory.hostMapped - on.engine.w.embed.nbytes + 64 * PAGE);
    const shards = fs.readdirSync(dir).filter(f => f.endsWith('.safetensors'));
    const resident = shards.reduce((a, f) => a + residentBytes(path.join(dir, f)), 0);
    expect(resident).toBeGreaterThanOrEqual(p.bytes);
    for (const c of on.engine.kvCaches(0)) expect(allZero(c.toBytes())).toBe(true);
    await rejects(loadModel(dir, { backend: 'cpu', populate: 'yes' as never }), 'E_ARGUMENT', 'populate');
  }, 300_000);

  it('the constructor queues the caches behind the rank stream and returns; ready() resolves once they are zero', async () => {
    native.setThreads(2);
    const ck = await openCheckpoint(dir);
    const dims = modelDims(ck.config);
    const w = loadWeights(ck, dims, 'cpu', { mtp: false });
    const main = native.defaultStream('cpu');
    const model = await heldUntilImmediate(
      main,
      () => new LongcatModel(dims, w, { device: 'cpu', maxContext: 64, numBlocks: 2048 }),
      m => m.ready(),
    );
    const caches = model.kvCaches(0);
    expect(caches.reduce((a, c) => a + c.nbytes, 0)).toBeGreaterThan(16 << 20);
    for (const c of caches) expect(allZero(c.toBytes())).toBe(true);
    model.dispose();
    ck.close();
  }, 300_000);
});
