// Whole-model checks of one device against another (CUDA against the CPU oracle on a GPU machine or
// the emulated device): on random checkpoints, the prefill logits agree, greedy decoding picks the
// same tokens (up to near-ties), prefill + decode steps equal one full forward on the device under
// test, and the captured-graph decode step equals the eager one. At precision 'highest' the device's
// prefill logits are also held to the independent float64 reference of SPEC (lib/check/reference), so
// a run on the CPU alone (device = oracle, where the first two checks would compare a path with
// itself and are left out) still compares against something independent. Used by
// scripts/gpu-check.mjs, `longcat doctor` (lib/doctor.ts; shipped in dist/check/) and
// test/cuda.test.ts. Imports only lib/ and core modules.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { initRandom } from '../init-random.js';
import { loadModel } from '../generate.js';
import { toArray } from '../tensor.js';
import { openCheckpoint } from '../checkpoint.js';
import { modelHelpers } from './model-helpers.js';
import { native } from '../native.js';
import type { MatmulPrecision } from '../device.js';
import type { InitRandomOptions } from '../init-random.js';

const prompt = [5, 17, 300, 2, 99, 41, 7, 260, 1, 3, 511, 64, 8, 200, 33, 12, 90];

function maxRelErr(got: ArrayLike<number>, want: ArrayLike<number>): number {
  let scale = 1e-30,
    worst = 0;
  for (let i = 0; i < want.length; i++) scale = Math.max(scale, Math.abs(want[i]!));
  for (let i = 0; i < want.length; i++) {
    const e = Math.abs(got[i]! - want[i]!);
    worst = Number.isNaN(e) ? Infinity : Math.max(worst, e);
  }
  return worst / scale;
}

const { referenceLogits, readLogits: read, fullForward, prefillThenDecode } = modelHelpers({ openCheckpoint, toArray });

function argmax(v: ArrayLike<number>, off: number, n: number): number {
  let best = 0;
  for (let i = 1; i < n; i++) if (v[off + i]! > v[off + best]!) best = i;
  return best;
}

/**
 * The checks of `device` against `oracle` for each model variant. Returns [{ name, err, tol, ok }].
 * precision: the matmul precision both sides run at ('highest': fp32 products, tight tolerances).
 */
// The checkpoints: name -> initRandom options (tiny-fp8-h128: 128-wide nope / v heads, so the
// absorbed attention runs on kv_b codes with per-head block scales; lite: LongCat-Flash-Lite's
// layout, the N-gram embedding with its tables in host memory).
export type ModelVariant = 'tiny' | 'tiny-fp8' | 'tiny-fp8-h128' | 'small' | 'lite' | 'lite-fp8';
const VARIANTS: Record<ModelVariant, Omit<InitRandomOptions, 'out'>> = {
  tiny: { preset: 'tiny' },
  'tiny-fp8': { preset: 'tiny', fp8: true },
  'tiny-fp8-h128': { preset: 'tiny', fp8: true, overrides: { qk_nope_head_dim: 128, v_head_dim: 128 } },
  small: { preset: 'small' },
  lite: { preset: 'lite' },
  'lite-fp8': { preset: 'lite', fp8: true },
};

export interface ModelCheck {
  name: string;
  err: number;
  tol: number;
  ok: boolean;
}
export async function modelChecks({
  device,
  oracle = 'cpu',
  presets = ['tiny', 'tiny-fp8', 'tiny-fp8-h128', 'small', 'lite', 'lite-fp8'],
  precision = 'highest',
  steps = 12,
}: {
  device: string;
  oracle?: string;
  presets?: ModelVariant[];
  precision?: MatmulPrecision;
  steps?: number;
}): Promise<ModelCheck[]> {
  const root = mkdtempSync(path.join(tmpdir(), 'longcat-model-check-'));
  const prev = native.setMatmulPrecision(precision);
  const out: ModelCheck[] = [];
  const tight = precision === 'highest';
  try {
    for (const variant of presets) {
      const dir = path.join(root, variant);
      await initRandom({ ...VARIANTS[variant], out: dir, seed: 11 });
      const ref = await loadModel(dir, { backend: oracle === 'cpu' ? 'cpu' : 'cuda', maxContext: 256 });
      const dut = await loadModel(dir, { backend: device === 'cpu' ? 'cpu' : 'cuda', maxContext: 256 });
      const check = (what: string, err: number, tol: number) =>
        out.push({ name: `${variant} ${precision}: ${what}`, err, tol, ok: err <= tol });
      try {
        const V = ref.engine.dims.vocab;
        // 1. prefill logits, every position
        const sr = ref.engine.newSequence(),
          sd = dut.engine.newSequence();
        const lr = read(ref.engine.forward([sr], [prompt], { allLogits: true }));
        const ld = read(dut.engine.forward([sd], [prompt], { allLogits: true }));
        const self = device === oracle;
        if (!self) check(`prefill logits on ${device} vs ${oracle}`, maxRelErr(ld, lr), tight ? 1e-3 : 3e-2);
        // (the float64 reference is slow in JS: the small preset is left to the CPU oracle)
        // The latent cache is bf16 (unit roundoff 2^-9 on every cached value), so 1e-2, not fp32's 1e-4.
        if (tight && variant !== 'small')
          check(`prefill logits on ${device} vs the float64 reference`, maxRelErr(ld, await referenceLogits(dir, prompt)), 1e-2);
        // 2. greedy decode: the same tokens until a near-tie (the oracle's top two within tolerance)
        let tr = argmax(lr, (prompt.length - 1) * V, V),
          td = argmax(ld, (prompt.length - 1) * V, V);
        let diverged = 0,
          stepsOk = 0;
        for (let i = 0; i < steps && !diverged; i++) {
          if (tr !== td) {
            diverged = 1;
            break;
          }
          stepsOk++;
          const a = read(ref.engine.forward([sr], [[tr]])),
            b = read(dut.engine.forward([sd], [[td]]));
          tr = argmax(a, 0, V);
          td = argmax(b, 0, V);
          if (tr !== td) {
            let scale = 0;
            for (const v of a) scale = Math.max(scale, Math.abs(v));
            const gap = Math.abs(a[tr]! - a[td]!) / scale; // how far from a tie the oracle was
            diverged = gap > (tight ? 1e-3 : 3e-2) ? 1 : 0;
            if (!diverged) break; // a near-tie: both choices are right
          }
        }
        if (!self) check(`greedy tokens on ${device} vs ${oracle} (${stepsOk} steps agreed)`, diverged, 0);
        sr.release();
        sd.release();
        // 3. prefill + decode steps == one full forward, on the device under test
        const e = dut.engine;
        const all = fullForward(e, prompt);
        check(
          `prefill + decode == full forward on ${device}`,
          maxRelErr(prefillThenDecode(e, prompt, 5), all),
          tight ? 2e-4 : 3e-2,
        );
        // 4. the captured decode step (graph replay) == the eager one
        const s1 = e.newSequence(),
          s2 = e.newSequence();
        read(e.forward([s1], [prompt]));
        read(e.forward([s2], [prompt]));
        let worst = 0;
        for (const tok of [7, 300, 2]) {
          const g = read(e.forward([s1], [[tok]]));
          const eager = read(e.forward([s2], [[tok]], { eager: true }));
          worst = Math.max(worst, maxRelErr(g, eager));
        }
        s1.release();
        s2.release();
        check(`graph-replayed decode == eager decode on ${device}`, worst, 1e-5);
      } finally {
        ref.dispose();
        dut.dispose();
      }
    }
  } finally {
    native.setMatmulPrecision(prev);
    rmSync(root, { recursive: true, force: true });
  }
  return out;
}

/**
 * Speculative decoding on `device` (SPEC 6): greedy generation with MTP drafts equals plain greedy
 * decoding on the same device and on the CPU, on a checkpoint whose drafts are accepted about half
 * the time (init-random draftAgreement: both branches of every step run) and on a random FP8 one
 * (drafts mostly rejected), and the batched engine step (3 sequences, each with its own accepted
 * lengths) equals plain batched decoding. err = tokens that differ (tol 0); the acceptance counts
 * are checked against the CPU's.
 */
export async function speculativeChecks({ device, tokens = 24 }: { device: string; tokens?: number }): Promise<ModelCheck[]> {
  const root = mkdtempSync(path.join(tmpdir(), 'longcat-spec-check-'));
  const out: ModelCheck[] = [];
  const backend = (d: string) => (d === 'cpu' ? 'cpu' : 'cuda');
  try {
    for (const [name, opts] of [
      ['tiny agreement 0.5', { preset: 'tiny', draftAgreement: 0.5 }],
      ['tiny-fp8', { preset: 'tiny', fp8: true }],
      // Lite: the N-gram rows of both verified tokens staged on the host and uploaded by the step's graph
      ['lite agreement 0.5', { preset: 'lite', draftAgreement: 0.5 }],
    ] as const) {
      const dir = path.join(root, name.replace(/\W+/g, '-'));
      await initRandom({ ...opts, mtp: true, out: dir, seed: 5 });
      const cpu = await loadModel(dir, { backend: 'cpu', maxContext: 256 });
      const dut = await loadModel(dir, { backend: backend(device), maxContext: 256 });
      const check = (what: string, err: number) => out.push({ name: `${name}: ${what}`, err, tol: 0, ok: err === 0 });
      const differ = (a: number[], b: number[]) => Math.max(a.length, b.length) - a.filter((t, i) => b[i] === t).length;
      try {
        const run = async (m: typeof cpu, speculative: boolean) => {
          const s = m.createSession();
          try {
            return await s.generate('a speculative check', { maxTokens: tokens, speculative });
          } finally {
            s.dispose();
          }
        };
        const plainCpu = await run(cpu, false),
          specCpu = await run(cpu, true);
        const plainDut = await run(dut, false),
          specDut = await run(dut, true);
        check(`speculative == plain greedy tokens on ${device}`, differ(specDut.tokens, plainDut.tokens));
        check(`speculative greedy tokens on ${device} == on the CPU`, differ(specDut.tokens, specCpu.tokens));
        check(
          `drafts accepted on ${device} == on the CPU (${specCpu.speculative!.acceptedTokens} of ${specCpu.speculative!.draftedTokens})`,
          Math.abs(specDut.speculative!.acceptedTokens - specCpu.speculative!.acceptedTokens),
        );
        check(`plain greedy tokens on ${device} == on the CPU`, differ(plainDut.tokens, plainCpu.tokens));
        // the batched step: 3 sequences, greedy, against plain batched decode steps on the device
        const e = dut.engine,
          V = e.dims.vocab;
        const prompts = [prompt.slice(0, 5), prompt.slice(2, 13), prompt.slice(7)];
        const argmaxes = (l: ArrayLike<number>, rows: number) => Array.from({ length: rows }, (_, r) => argmax(l, r * V, V));
        const greedy = { temperature: 0, topK: 0, topP: 1, minP: 0, seed: 0 };
        const plainSeqs = prompts.map(() => e.newSequence()),
          specSeqs = prompts.map(() => e.newSequence());
        let pending = argmaxes(read(e.forward(plainSeqs, prompts)), 3);
        const plain = pending.map(t => [t]);
        while (plain[0]!.length < 12) {
          pending = argmaxes(
            read(
              e.forward(
                plainSeqs,
                pending.map(t => [t]),
              ),
            ),
            3,
          );
          pending.forEach((t, b) => {
            plain[b]!.push(t);
          });
        }
        const r = e.forward(specSeqs, prompts, { hidden: true });
        let next = argmaxes(read(r), 3);
        const spec = next.map(t => [t]);
        const draftLogits = e.mtp(
          specSeqs,
          prompts.map((p, b) => [...p.slice(1), next[b]!]),
          [0, 0, 0],
          r.hidden!,
        );
        r.hidden!.dispose();
        let drafts = argmaxes(read({ logits: draftLogits }), 3);
        while (spec.some(s => s.length < 12)) {
          const step = await e.speculativeStep(specSeqs, next, drafts, [greedy, greedy, greedy]);
          for (const t of step.nFfn) t.dispose();
          step.tokens.forEach((list, b) => {
            spec[b]!.push(...list);
          });
          next = step.tokens.map(list => list[list.length - 1]!);
          drafts = step.drafts;
        }
        for (const s of [...plainSeqs, ...specSeqs]) s.release();
        check(
          `batched speculative steps (3 sequences) == plain batched decoding on ${device}`,
          plain.reduce((a, p, b) => a + differ(spec[b]!.slice(0, 12), p), 0),
        );
      } finally {
        cpu.dispose();
        dut.dispose();
      }
    }
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
  return out;
}
