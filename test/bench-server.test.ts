// bench/server.mjs keeps working between benchmark sessions: a --quick run (a tiny checkpoint written
// to a temporary directory, the HTTP server on loopback, the clients in a worker thread) whose JSON
// holds every figure, finite. No timing value is checked; only what the run determines exactly: every
// stream generated its max_tokens (ignore_eos), the scheduler's rows, the graphs captured, the
// prompt tokens taken from the prefix cache with it on and off.
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { graphBucket } from '../lib/model/model.js';
import { finite, runQuickBench, workLimitMs } from './helpers.js';

const dir = mkdtempSync(path.join(os.tmpdir(), 'longcat-bench-server-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

type Pcts = { p50: number; p90: number; p99: number; n: number };
const pcts = (p: Pcts, n: number) => {
  for (const x of [p.p50, p.p90, p.p99]) expect(finite(x)).toBe(true);
  expect(p.p50).toBeLessThanOrEqual(p.p90);
  expect(p.p90).toBeLessThanOrEqual(p.p99);
  expect(p.n).toBe(n);
};

interface Level {
  concurrency: number;
  maxTokens: number;
  completionTokens: number;
  tokensPerStream: number[];
  finishReasons: string[];
  textChunks: number;
  tokensPerChunk: number;
  tokensPerSecond: number;
  tokensPerSecondWindow: number;
  scheduler: { decodeSteps: number; decodeRows: number; meanBatch: number; largestBatch: number };
  capturedDecodeGraphs: number;
  ttftMs: Pcts;
  itlMs: Pcts;
}
interface PrefixRun {
  requests: { promptTokens: number; cachedTokens: number; ttftMs: number }[];
  promptTokens: number;
  cachedTokens: number;
}

describe('bench/server.mjs', () => {
  it(
    '--quick streams 1 and 4 clients over HTTP and runs the prefix cache on / off, writing every figure',
    () => {
      const res = runQuickBench('server.mjs', dir, 'Prefix cache');
      expect(res.bench).toBe('server');
      const levels = res.levels as Level[];
      expect(levels.map(l => l.concurrency)).toEqual([1, 4]);
      for (const l of levels) {
        for (const x of [l.tokensPerSecond, l.tokensPerSecondWindow, l.tokensPerChunk]) expect(finite(x)).toBe(true);
        // ignore_eos: every stream ran to max_tokens
        expect(l.tokensPerStream).toEqual(Array(l.concurrency).fill(l.maxTokens));
        expect(l.finishReasons).toEqual(['length']);
        expect(l.completionTokens).toBe(l.concurrency * l.maxTokens);
        expect(l.textChunks).toBeLessThanOrEqual(l.completionTokens);
        expect(l.tokensPerChunk).toBeGreaterThanOrEqual(1);
        // every token after each stream's first is a decode row
        expect(l.scheduler.decodeRows).toBe(l.concurrency * (l.maxTokens - 1));
        expect(l.scheduler.largestBatch).toBeLessThanOrEqual(4);
        expect(l.capturedDecodeGraphs).toBeLessThanOrEqual(new Set([1, 2, 3, 4].map(graphBucket)).size);
        pcts(l.ttftMs, l.concurrency);
        pcts(l.itlMs, l.textChunks - l.concurrency);
      }
      // with the cache, the later requests take the system message's full pages from it; without, none
      const on = res.prefix.on as PrefixRun,
        off = res.prefix.off as PrefixRun;
      expect(off.cachedTokens).toBe(0);
      expect(on.promptTokens).toBe(off.promptTokens);
      expect(on.requests[0]!.cachedTokens).toBe(0);
      for (const q of on.requests.slice(1)) {
        expect(q.cachedTokens).toBeGreaterThan(0);
        expect(q.cachedTokens).toBeLessThan(q.promptTokens);
      }
      expect(res.prefix.savedFraction).toBeCloseTo(on.cachedTokens / on.promptTokens, 12);
      for (const q of [...on.requests, ...off.requests]) expect(finite(q.ttftMs)).toBe(true);
    },
    workLimitMs(20) + 10_000,
  );
});
