// bench/serve.mjs keeps working between benchmark sessions: a --quick run (a tiny checkpoint written
// to a temporary directory) whose JSON holds every figure, finite. No timing value is checked; only
// what the run determines exactly: the batch sizes stay within the concurrency, distinct experts per
// step within what the layers hold, the prompt tokens computed with and without the prefix cache.
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { finite, runQuickBench, workLimitMs } from './helpers.js';

const dir = mkdtempSync(path.join(os.tmpdir(), 'longcat-bench-serve-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const pcts = (p: { p50: number; p90: number; p99: number; n: number }) => {
  for (const x of [p.p50, p.p90, p.p99]) expect(finite(x)).toBe(true);
  expect(p.p50).toBeLessThanOrEqual(p.p90);
  expect(p.p90).toBeLessThanOrEqual(p.p99);
  expect(p.n).toBeGreaterThan(0);
};

interface Level {
  concurrency: number;
  maxTokens: number;
  window: { ms: number; tokens: number };
  tokensPerSecond: number;
  tokensPerSecondMedianStep: number;
  ratioMedianStep: number;
  ceilingTokensPerSecond: number;
  ratio: number;
  scheduler: { decodeSteps: number; decodeRows: number; meanBatch: number; largestBatch: number };
  batchHistogram: Record<string, number>;
  bytes: { distinctExpertsPerStep: number; routedFullSteps: number; stepBytes: number };
  compute: { stepFlops: number; ffnRowsPerStep: number; ctxPerStep: number; bytesMs: number; flopsMs: number; bound: string };
  ceilingComputeTokensPerSecond: number;
  ratioCompute: number;
  ratioComputeMedianStep: number;
  ceilingPartsTokensPerSecond: number;
  ratioParts: number;
  stepAlone: {
    rounds: number;
    minMs: number;
    medianMs: number;
    tokensPerSecond: number;
    ratio: number;
    ratioCompute: number;
    ratioParts: number;
    parts: Record<string, number>;
    blockingWaitMedianMs: number;
  };
  ttftMs: { p50: number; p90: number; p99: number; n: number };
  itlMs: { p50: number; p90: number; p99: number; n: number };
}

describe('bench/serve.mjs', () => {
  it(
    '--quick runs 1 and 4 streams, a long prompt mid-run and the prefix cache on / off, and writes every figure',
    () => {
      const res = runQuickBench('serve.mjs', dir, 'Prefix cache');
      expect(res.bench).toBe('serve');
      expect(res.loadavg.start).toHaveLength(3);
      expect(finite(res.readGBps)).toBe(true);
      expect(finite(res.gemmGflops)).toBe(true);
      const { layers, nRouted } = res.accounting;
      const levels = res.levels as Level[];
      expect(levels.map(l => l.concurrency)).toEqual([1, 4]);
      for (const l of levels) {
        for (const x of [
          l.tokensPerSecond,
          l.tokensPerSecondMedianStep,
          l.ratioMedianStep,
          l.ceilingTokensPerSecond,
          l.ratio,
          l.window.ms,
          l.bytes.stepBytes,
          l.ceilingComputeTokensPerSecond,
          l.ratioCompute,
          l.ratioComputeMedianStep,
          l.compute.stepFlops,
          l.ceilingPartsTokensPerSecond,
          l.ratioParts,
          l.stepAlone.tokensPerSecond,
          l.stepAlone.ratio,
          l.stepAlone.ratioCompute,
          l.stepAlone.ratioParts,
        ])
          expect(finite(x)).toBe(true);
        // every stream generates maxTokens tokens: the first from its prompt, the rest in decode rows
        expect(l.scheduler.decodeRows).toBe(l.concurrency * (l.maxTokens - 1));
        expect(l.scheduler.largestBatch).toBeLessThanOrEqual(l.concurrency);
        const hist = Object.entries(l.batchHistogram).map(([b, c]): [number, number] => [Number(b), c]);
        expect(hist.reduce((a, [, c]) => a + c, 0)).toBe(l.scheduler.decodeSteps);
        expect(hist.reduce((a, [b, c]) => a + b * c, 0)).toBe(l.scheduler.decodeRows);
        for (const [b] of hist) expect(b).toBeLessThanOrEqual(l.concurrency);
        // the untimed routing pass ran full batches; their distinct experts fit in the layers
        expect(l.bytes.routedFullSteps).toBeGreaterThan(0);
        expect(l.bytes.distinctExpertsPerStep).toBeGreaterThan(0);
        expect(l.bytes.distinctExpertsPerStep).toBeLessThanOrEqual(layers * nRouted);
        expect(l.bytes.stepBytes).toBeCloseTo(
          res.accounting.nonExpertBytes + l.bytes.distinctExpertsPerStep * res.accounting.expertBytes,
          6,
        );
        // the compute-aware ceiling is never above the byte one; FFN pairs: at most top-k per row and layer
        expect(l.ceilingComputeTokensPerSecond).toBeLessThanOrEqual(l.ceilingTokensPerSecond * (1 + 1e-12));
        // the per-part ceiling is never above the whole step's max(bytes, FLOPs)
        expect(l.ceilingPartsTokensPerSecond).toBeLessThanOrEqual(l.ceilingComputeTokensPerSecond * (1 + 1e-12));
        expect(l.compute.bound).toBe(l.compute.flopsMs > l.compute.bytesMs ? 'compute' : 'bytes');
        expect(l.compute.ffnRowsPerStep).toBeGreaterThan(0);
        expect(l.compute.ffnRowsPerStep).toBeLessThanOrEqual(l.concurrency * layers * res.accounting.topk);
        expect(l.stepAlone.rounds).toBeGreaterThan(0);
        expect(l.stepAlone.minMs).toBeLessThanOrEqual(l.stepAlone.medianMs);
        for (const v of [...Object.values(l.stepAlone.parts), l.stepAlone.blockingWaitMedianMs]) expect(finite(v)).toBe(true);
        expect(Object.keys(l.stepAlone.parts).sort()).toEqual(['forwardMs', 'otherMs', 'waitMs']);
        expect(l.ttftMs.n).toBe(l.concurrency);
        pcts(l.ttftMs);
        pcts(l.itlMs);
      }
      const lp = res.longPrompt;
      expect(lp.promptTokens).toBeGreaterThanOrEqual(res.settings.LONG_PROMPT);
      // its prefill forwards: the whole prompt, in chunks of at most PREFILL_CHUNK (fewer tokens while the streams decode)
      const chunks = lp.chunkTokens as number[];
      expect(chunks.reduce((a, t) => a + t, 0)).toBe(lp.promptTokens);
      expect(chunks.length).toBeGreaterThanOrEqual(Math.ceil(lp.promptTokens / res.settings.PREFILL_CHUNK));
      for (const t of chunks) expect(t).toBeLessThanOrEqual(res.settings.PREFILL_CHUNK);
      pcts(lp.itlDuringMs);
      pcts(lp.itlOutsideMs);
      // without the cache every request computes its whole prompt; with it, the later ones reuse
      // the system prompt's full pages
      const { on, off } = res.prefix;
      expect(off.prefillTokens).toBe(off.promptTokens);
      expect(on.promptTokens).toBe(off.promptTokens);
      expect(on.requests[0].prefillTokens).toBe(on.requests[0].promptTokens);
      for (const q of on.requests.slice(1)) expect(q.prefillTokens).toBeLessThan(q.promptTokens);
      expect(res.prefix.prefillSaved).toBeCloseTo(1 - on.prefillTokens / off.prefillTokens, 12);
    },
    workLimitMs(20) + 10_000,
  );
});
