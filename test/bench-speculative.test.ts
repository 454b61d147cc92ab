// bench/speculative.mjs keeps working between benchmark sessions: a --quick run (tiny agreeing
// checkpoints written to a temporary directory) whose JSON holds every figure, finite. No timing
// value is checked; only what the run determines exactly (the greedy tokens, the acceptance of the
// 0% checkpoint, bytes and expert counts, the Flash-Chat arithmetic). On a build whose CUDA device
// is the CPU emulator of test/emu, the run uses it (--device cuda:0), as the GPU scripts' smoke runs do.
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { native } from '../lib/native.js';
import { finite, runQuickBench, workLimitMs } from './helpers.js';

const emulated = native.buildInfo().cudaArchs === 'emulated';
// The emulator runs a step in about a second under load: fewer tokens and one repeat there.
const device = emulated ? ['--device', 'cuda:0', '--tokens', '3', '--repeats', '1'] : [];
const dir = mkdtempSync(path.join(os.tmpdir(), 'longcat-bench-spec-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

interface Batch {
  batch: number;
  plain: { tokensPerSecond: { mean: number; sd: number }; stepMs: { mean: number; median: number } };
  spec: {
    tokensPerSecond: { mean: number; sd: number };
    acceptanceRate: number;
    meanAcceptedLength: number;
    stepMs: { mean: number; median: number };
    hostMs: number;
    hostFraction: number;
  };
  speedup: { mean: number; sd: number; median: number };
  speedupMedianSteps: number;
  medianStepsOverIdeal: number;
  identical: boolean;
  components: {
    medianMs: { spec: number; plain1: number; verify2: number; mtp: number };
    predictedStepOverPlain: number;
    measuredStepOverPlain: number;
  };
  bytes: {
    plainStep: number;
    specStep: number;
    plainOverSpec: number;
    distinctExperts: { plain: number; spec: number };
    ffnExpertsPerTokenPerLayer: number;
  };
  ideal: number;
  measuredOverIdeal: number;
  measuredSlowdown: number;
  computeFloor: {
    plainMs: number;
    specMs: number;
    plainFlops: number;
    specFlops: number;
    gflops: { plain: number; spec: number };
  };
  computeAware: {
    plainFloorMs: number;
    specFloorMs: number;
    ideal: number;
    measuredOverIdeal: number;
    perOp: { plainFloorMs: number; specFloorMs: number; ideal: number; measuredOverIdeal: number; medianStepsOverIdeal: number };
  };
}

describe('bench/speculative.mjs', () => {
  it(
    `--quick runs both checkpoints at batch 1 and 8 and writes every figure${emulated ? ' (emulated cuda:0)' : ''}`,
    () => {
      const res = runQuickBench('speculative.mjs', dir, 'LongCat-Flash-Chat proportions', device);
      expect(res.bench).toBe('speculative');
      expect(res.loadavg.start).toHaveLength(3);
      expect(res.checkpoints.map((c: { draftAgreement: number }) => c.draftAgreement)).toEqual([0.9, 0]);
      for (const c of res.checkpoints as {
        draftAgreement: number;
        dims: { layers: number; nRouted: number };
        batches: Batch[];
      }[]) {
        expect(c.batches.map(b => b.batch)).toEqual([1, 8]);
        for (const b of c.batches) {
          for (const x of [
            b.plain.tokensPerSecond.mean,
            b.plain.tokensPerSecond.sd,
            b.plain.stepMs.mean,
            b.plain.stepMs.median,
            b.spec.tokensPerSecond.mean,
            b.spec.tokensPerSecond.sd,
            b.spec.stepMs.mean,
            b.spec.stepMs.median,
            b.spec.hostMs,
            b.spec.hostFraction,
            b.speedup.mean,
            b.speedup.sd,
            b.speedup.median,
            b.speedupMedianSteps,
            b.medianStepsOverIdeal,
            b.components.medianMs.plain1,
            b.components.medianMs.verify2,
            b.components.medianMs.mtp,
            b.components.medianMs.spec,
            b.components.predictedStepOverPlain,
            b.components.measuredStepOverPlain,
            b.ideal,
            b.measuredOverIdeal,
            b.measuredSlowdown,
          ])
            expect(finite(x)).toBe(true);
          expect(b.identical).toBe(true); // greedy speculation commits plain decoding's tokens
          if (c.draftAgreement === 0) expect(b.spec.acceptanceRate).toBe(0);
          else expect(b.spec.acceptanceRate).toBeGreaterThan(0);
          expect(b.spec.meanAcceptedLength).toBeCloseTo(1 + b.spec.acceptanceRate, 12);
          // a verify step reads at least a plain step's experts, plus the MTP layer and the lm_head again
          const { plain, spec } = b.bytes.distinctExperts;
          expect(spec).toBeGreaterThanOrEqual(plain);
          expect(spec).toBeLessThanOrEqual(c.dims.layers * c.dims.nRouted);
          expect(b.bytes.specStep).toBeGreaterThan(b.bytes.plainStep);
          expect(b.bytes.plainOverSpec).toBeCloseTo(b.bytes.plainStep / b.bytes.specStep, 12);
          expect(b.ideal).toBeCloseTo((1 + b.spec.acceptanceRate) * b.bytes.plainOverSpec, 12);
          expect(finite(b.bytes.ffnExpertsPerTokenPerLayer)).toBe(true);
          // the compute-aware ideal (CPU): per step max(bytes / probe, the linears' warm time at their rows)
          if (res.device !== 'cpu') {
            expect(b.computeFloor).toBeNull();
            continue;
          }
          const f = b.computeFloor,
            a = b.computeAware;
          expect(f.specFlops).toBeGreaterThan(f.plainFlops);
          for (const x of [f.plainMs, f.specMs, f.gflops.plain, f.gflops.spec]) expect(x).toBeGreaterThan(0);
          const bw = ((res.readGbps[0] + res.readGbps[1]) / 2) * 1e6;
          expect(a.plainFloorMs).toBeCloseTo(Math.max(b.bytes.plainStep / bw, f.plainMs), 12);
          expect(a.specFloorMs).toBeCloseTo(Math.max(b.bytes.specStep / bw, f.specMs), 12);
          expect(a.ideal).toBeCloseTo(((1 + b.spec.acceptanceRate) * a.plainFloorMs) / a.specFloorMs, 12);
          expect(a.measuredOverIdeal).toBeCloseTo(b.speedup.mean / a.ideal, 12);
          // per op: every linear at least its bytes / probe (and its FLOPs / the GEMM rate), so at least the step's bytes / probe
          const p = a.perOp;
          expect(res.gemmGflops).toBeGreaterThan(0);
          expect(p.plainFloorMs).toBeGreaterThanOrEqual((b.bytes.plainStep / bw) * (1 - 1e-12));
          expect(p.specFloorMs).toBeGreaterThanOrEqual((b.bytes.specStep / bw) * (1 - 1e-12));
          expect(p.ideal).toBeCloseTo(((1 + b.spec.acceptanceRate) * p.plainFloorMs) / p.specFloorMs, 12);
          expect(p.measuredOverIdeal).toBeCloseTo(b.speedup.mean / p.ideal, 12);
          expect(finite(p.medianStepsOverIdeal)).toBe(true);
          expect(f).not.toHaveProperty('linears'); // dropped before the JSON
        }
      }
      // Flash-Chat: 8 of 512 experts per token; 2 tokens choose 512 (1 - (504/512)^2) = 15.875 distinct.
      const chat = res.flashChat.checkpoints;
      expect(chat.fp8.batches[1].distinctPerLayer.spec).toBeCloseTo(15.875, 9);
      for (const w of [chat.fp8, chat.bf16])
        for (const B of ['1', '8']) {
          const row = w.batches[B];
          expect(row.specStepBytes).toBeGreaterThan(row.plainStepBytes);
          expect(row.ideal['0.9']).toBeCloseTo(1.9 * row.bytesRatio, 12);
          expect(row.ideal['0.8']).toBeCloseTo(1.8 * row.bytesRatio, 12);
        }
      // FP8 halves the linears, not the lm_head (kept BF16): its step is about half the BF16 one
      expect(chat.fp8.batches[1].plainStepBytes / chat.bf16.batches[1].plainStepBytes).toBeGreaterThan(0.5);
      expect(chat.fp8.batches[1].plainStepBytes / chat.bf16.batches[1].plainStepBytes).toBeLessThan(0.56);
    },
    workLimitMs(20) + 10_000,
  );
});
