// init-random's draftAgreement: a checkpoint whose greedy next token follows a fixed cycle P through
// the tokenizer's ordinary tokens and whose MTP head drafts P(S(x)) for the pending token x. Checked:
// the plan (one cycle, no special token, the acceptance of a simulated greedy speculative walk), the
// float64 reference (main model and MTP head, SPEC 3 and 6) over the written BF16 and FP8 weights,
// the real engine's logits and greedy generation on the CPU, and the typed errors of bad options.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { draftAgreementPlan, initRandom, PRESETS, type DraftAgreementPlan } from '../lib/init-random.js';
import { openCheckpoint } from '../lib/checkpoint.js';
import { readSafetensorsHeader } from '../lib/safetensors.js';
import { toArray } from '../lib/tensor.js';
import { loadModel } from '../lib/generate.js';
import { loadTokenizer } from '../lib/tokenizer.js';
import { native } from '../lib/native.js';
import {
  dequantFp8Block,
  referenceForward,
  referenceMtp,
  type RefConfig,
  type RefWeights,
} from '../lib/check/reference/longcat-ref.js';
import { rejects, rng, workLimitMs } from './helpers.js';

const root = mkdtempSync(path.join(tmpdir(), 'lc-agree-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

/**
 * The smallest logit margin (predicted token over the runner-up; the predicted logit is ~32) every
 * checked position must keep, reference and engine, BF16 and FP8. The measured minima are ~16
 * (tiny), ~18 (lite), ~25 (small): README, init-random.
 */
const MIN_MARGIN = 5;

/** Writes (once per name) an agreeing checkpoint: draftAgreement 0.5, MTP, seed 5. */
const written = new Map<string, Promise<string>>();
function agreeing(preset: 'tiny' | 'small' | 'lite', fp8: boolean): Promise<string> {
  const name = `${preset}${fp8 ? '-fp8' : ''}`;
  let p = written.get(name);
  if (!p) {
    const out = path.join(root, name);
    p = initRandom({ preset, out, fp8, mtp: true, seed: 5, draftAgreement: 0.5 }).then(r => {
      expect(r.draftAcceptance).toBe(draftAgreementPlan({ preset, seed: 5, draftAgreement: 0.5 }).acceptance);
      return out;
    });
    written.set(name, p);
  }
  return p;
}

/** The float64 reference's weights of a checkpoint (FP8 linears dequantized, SPEC 7.2), each converted once. */
async function referenceWeights(dir: string): Promise<{ cfg: RefConfig; W: RefWeights; close(): void }> {
  const ck = await openCheckpoint(dir);
  const cache = new Map<string, { shape: number[]; data: Float64Array }>();
  const W: RefWeights = name => {
    let w = cache.get(name);
    if (!w) {
      const t = ck.get(name);
      const shape = [...t.shape];
      if (t.dtype === 'fp8_e4m3') {
        const [n, k] = shape as [number, number];
        const scale = Float32Array.from(toArray(ck.get(name.replace(/\.weight$/, '.weight_scale_inv'))));
        w = { shape, data: dequantFp8Block(t.toBytes(), scale, n, k) };
      } else w = { shape, data: Float64Array.from(toArray(t)) };
      cache.set(name, w);
    }
    return w;
  };
  const cfg = JSON.parse(readFileSync(path.join(dir, 'config.json'), 'utf8')) as RefConfig;
  return { cfg, W, close: () => ck.close() };
}

/**
 * Asserts that row i of `logits` [rows, V] has its maximum at want[i], at least MIN_MARGIN above the
 * runner-up; returns the smallest margin.
 */
function expectArgmax(logits: ArrayLike<number>, V: number, want: readonly number[], what: string): number {
  let smallest = Infinity;
  want.forEach((w, row) => {
    let best = -1,
      b1 = -Infinity,
      b2 = -Infinity;
    for (let v = 0; v < V; v++) {
      const l = logits[row * V + v]!;
      if (l > b1) {
        b2 = b1;
        b1 = l;
        best = v;
      } else if (l > b2) b2 = l;
    }
    if (best !== w) expect.fail(`${what}, row ${row}: argmax ${best}, want ${w}`);
    smallest = Math.min(smallest, b1 - b2);
  });
  expect(smallest, `${what}: smallest margin`).toBeGreaterThanOrEqual(MIN_MARGIN);
  return smallest;
}

/** `n` cycle tokens in a random order (all of them when n >= the cycle's length). */
const shuffledCycle = (plan: DraftAgreementPlan, n: number, seed: number) =>
  rng(seed).shuffle(Array.from(plan.cycle)).slice(0, n);

/**
 * Greedy one-draft speculative decoding over the plan (SPEC 6.3) from the pending token `start`,
 * `steps` verify steps: the drafts accepted and the pending token at the end.
 */
function walk(plan: DraftAgreementPlan, start: number, steps: number): { accepted: number; pending: number } {
  let pending = start,
    accepted = 0;
  for (let s = 0; s < steps; s++) {
    const target = plan.next[pending]!;
    if (plan.next[plan.draftSource[pending]!] === target) {
      accepted++;
      pending = plan.next[target]!; // the draft and the token after it are committed
    } else pending = target;
  }
  return { accepted, pending };
}

describe('draftAgreementPlan', () => {
  for (const preset of ['tiny', 'small'] as const)
    it(`${preset}: one cycle through the tokens that are whole text; every lap of greedy speculation accepts exactly draftAcceptance`, async () => {
      const out = path.join(root, `${preset}-tokenizer`);
      await initRandom({ preset, out, mtp: true, seed: 3, draftAgreement: 0.9 });
      const tok = JSON.parse(readFileSync(path.join(out, 'tokenizer.json'), 'utf8')) as {
        added_tokens: { id: number }[];
        model: { vocab: Record<string, number> };
      };
      const special = new Set(tok.added_tokens.map(t => t.id));
      expect(special.has(2)).toBe(true); // the EOS id is special, so off the cycle
      // whole text: the token alone decodes without U+FFFD, and without control characters but '\n'
      const tokenizer = await loadTokenizer(out);
      const text = Object.values(tok.model.vocab)
        .filter(id => !special.has(id) && !/[\ufffd\p{Cc}]/u.test(tokenizer.decode([id]).replaceAll('\n', '')))
        .sort((a, b) => a - b);
      expect(text.length).toBeGreaterThan(300); // printable ASCII, newline, the merges
      const V = PRESETS[preset].vocab_size!;
      for (const a of [0, 0.25, 0.5, 0.8, 0.9, 1]) {
        const plan = draftAgreementPlan({ preset, seed: 3, draftAgreement: a });
        const N = plan.cycle.length;
        expect([...plan.cycle].sort((x, y) => x - y)).toEqual(text);
        // one cycle: next from cycle[0] returns after exactly N steps, through every cycle token
        const seen = new Set<number>();
        let x = plan.cycle[0]!;
        for (let i = 0; i < N; i++, x = plan.next[x]!) seen.add(x);
        expect(x).toBe(plan.cycle[0]);
        expect(seen.size).toBe(N);
        // off the cycle (special tokens, ids past the tokenizer): no successor, no draft map
        for (let id = 0; id < V; id++)
          if (!seen.has(id)) expect([plan.next[id], plan.draftSource[id]], `token ${id}`).toEqual([-1, -1]);
        // S maps cycle tokens into the cycle; a right draft is S(x) = x
        let fixed = 0;
        for (const c of plan.cycle) {
          expect(seen.has(plan.draftSource[c]!)).toBe(true);
          if (plan.draftSource[c] === c) fixed++;
        }
        // a lap: from any start, after at most one step the walk is aligned; the next M steps
        // (M = units: agreeing [x, P(x)] pairs + disagreeing singles) accept draftAcceptance * M
        // and come back to the same pending token
        const agreeing = a === 1 ? N : Math.round((plan.acceptance * N) / (1 + plan.acceptance));
        const M = a === 1 ? N : N - agreeing;
        for (const start of plan.cycle) {
          const aligned = walk(plan, start, 1).pending;
          const lap = walk(plan, aligned, M);
          expect(lap.pending).toBe(aligned);
          expect(lap.accepted).toBe(Math.round(plan.acceptance * M));
        }
        if (a === 0 || a === 1) expect(plan.acceptance).toBe(a);
        else expect(Math.abs(plan.acceptance - a)).toBeLessThanOrEqual(1 / (N / 2));
        // the fraction of tokens with S(x) = x: agreeing units / N = acceptance / (1 + acceptance)
        expect(fixed).toBe(agreeing);
      }
    });
});

/** Every tensor of a checkpoint's shards: dtype, shape and bytes. */
async function tensorsOf(dir: string): Promise<Map<string, { dtype: string; shape: number[]; data: Buffer }>> {
  const out = new Map<string, { dtype: string; shape: number[]; data: Buffer }>();
  for (const f of readdirSync(dir).filter(n => n.endsWith('.safetensors'))) {
    const file = path.join(dir, f);
    const bytes = readFileSync(file);
    for (const t of (await readSafetensorsHeader(file)).tensors.values())
      out.set(t.name, { dtype: t.dtype, shape: [...t.shape], data: bytes.subarray(t.offset, t.offset + t.nbytes) });
  }
  return out;
}

const f32 = (b: Buffer) => new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.length));

describe('draftAgreement checkpoints: the random model with a few tensors changed', () => {
  for (const fp8 of [false, true])
    it(`tiny${fp8 ? ' FP8' : ''}: the same tensors, dtypes and shapes; attention inputs, gates, routers bit-identical; outputs scaled`, async () => {
      const dir = await agreeing('tiny', fp8);
      const plainDir = path.join(root, `tiny-plain${fp8 ? '-fp8' : ''}`);
      await initRandom({ preset: 'tiny', out: plainDir, fp8, mtp: true, seed: 5 });
      const [got, plain] = [await tensorsOf(dir), await tensorsOf(plainDir)];
      expect([...got.keys()].sort()).toEqual([...plain.keys()].sort());
      const changed =
        /^(model\.(mtp\.)?embed_tokens\.weight|lm_head\.weight|model\.(mtp\.)?norm\.weight|model\.mtp\.layers\.0\.([eh]norm\.m|eh_proj)\.weight.*)$/;
      const output = /\.(o_proj|down_proj)\.weight(_scale_inv)?$/;
      let outputs = 0;
      for (const [name, p] of plain) {
        const g = got.get(name)!;
        expect([g.dtype, g.shape], name).toEqual([p.dtype, p.shape]);
        if (changed.test(name)) continue;
        if (!output.test(name)) {
          expect(g.data.equals(p.data), `${name} is the random one`).toBe(true);
          continue;
        }
        outputs++;
        // FP8: the same codes, the block scales / 32 (exact: a power of two); BF16: a different table
        if (fp8 && name.endsWith('.weight')) expect(g.data.equals(p.data), name).toBe(true);
        else if (fp8) expect(Array.from(f32(g.data))).toEqual(Array.from(f32(p.data), v => v / 32));
        else expect(g.data.equals(p.data), name).toBe(false);
      }
      expect(outputs).toBeGreaterThan(0);
    });
});

describe('draftAgreement checkpoints against the float64 reference', () => {
  const cases = [
    { preset: 'tiny', fp8: false, tokens: 1 << 20 },
    { preset: 'tiny', fp8: true, tokens: 1 << 20 },
    { preset: 'lite', fp8: false, tokens: 1 << 20 },
    { preset: 'small', fp8: false, tokens: 48 },
    { preset: 'small', fp8: true, tokens: 48 },
  ] as const;
  for (const { preset, fp8, tokens } of cases)
    it(
      `${preset}${fp8 ? ' FP8' : ''}: the main model's argmax is P(x) and the MTP head's P(S(x)), every position of a random context`,
      async () => {
        const dir = await agreeing(preset, fp8);
        const plan = draftAgreementPlan({ preset, seed: 5, draftAgreement: 0.5 });
        const seq = shuffledCycle(plan, tokens, 7); // tiny and lite: every ordinary token
        const { cfg, W, close } = await referenceWeights(dir);
        try {
          const main = referenceForward(cfg, W, seq);
          const mainMargin = expectArgmax(
            main.logits,
            cfg.vocab_size,
            seq.map(x => plan.next[x]!),
            'main',
          );
          // MTP pairs (h_i, x_{i+1}) at positions i predict x_{i+2}: the draft P(S(x_{i+1}))
          const T = seq.length - 1;
          const mtp = referenceMtp(
            cfg,
            W,
            main.hidden.subarray(0, T * cfg.hidden_size),
            seq.slice(1),
            seq.slice(1).map((_, i) => i),
          );
          const mtpMargin = expectArgmax(
            mtp.logits,
            cfg.vocab_size,
            seq.slice(1).map(x => plan.next[plan.draftSource[x]!]!),
            'MTP',
          );
          console.log(
            `${preset}${fp8 ? '-fp8' : ''} reference: ${seq.length} positions, smallest margin main ${mainMargin.toFixed(2)}, MTP ${mtpMargin.toFixed(2)}`,
          );
        } finally {
          close();
        }
      },
      workLimitMs(60),
    );
});

describe('draftAgreement checkpoints on the engine (CPU)', () => {
  let saved: ReturnType<typeof native.setMatmulPrecision>;
  beforeAll(() => {
    saved = native.setMatmulPrecision('bf16');
  });
  afterAll(() => native.setMatmulPrecision(saved));

  const cases = [
    { preset: 'tiny', fp8: false },
    { preset: 'tiny', fp8: true },
    { preset: 'small', fp8: false },
    { preset: 'small', fp8: true },
    { preset: 'lite', fp8: false },
  ] as const;
  for (const { preset, fp8 } of cases)
    it(
      `${preset}${fp8 ? ' FP8' : ''}: logits peak at P(x) (bf16${fp8 ? ' and e4m3 activations' : ''}); greedy generation follows P for 64 tokens`,
      async () => {
        const dir = await agreeing(preset, fp8);
        const plan = draftAgreementPlan({ preset, seed: 5, draftAgreement: 0.5 });
        using model = await loadModel(dir, { backend: 'cpu', maxContext: 4096 });
        const V = model.config.vocab_size;
        const seq = shuffledCycle(plan, 512, 9);
        const margins: string[] = [];
        for (const precision of fp8 ? (['bf16', 'fp8'] as const) : (['bf16'] as const)) {
          native.setMatmulPrecision(precision);
          const m = expectArgmax(
            model.forward(seq),
            V,
            seq.map(x => plan.next[x]!),
            `engine ${precision}`,
          );
          margins.push(`${precision} ${m.toFixed(2)}`);
        }
        native.setMatmulPrecision('bf16');
        // greedy generation from a plain-text prompt: every token is the successor of the one before
        const prompt = 'Once upon a time there was a little town';
        const ids = model.tokenizer.encode(prompt);
        using session = model.createSession();
        const r = await session.generate(prompt, { maxTokens: 64 });
        expect(r.stopReason).toBe('length');
        expect(r.tokens.length).toBe(64);
        const want = [plan.next[ids.at(-1)!]!];
        for (let i = 1; i < 64; i++) want.push(plan.next[want[i - 1]!]!);
        expect(r.tokens).toEqual(want);
        expect(r.text).toBe(model.tokenizer.decode(want));
        expect(/[\ufffd\p{Cc}]/u.test(r.text.replaceAll('\n', '')), JSON.stringify(r.text)).toBe(false);
        // the random routing still runs: FFN experts and zero experts are both chosen
        expect(r.avgFfnExpertsPerToken).toBeGreaterThan(0);
        expect(r.avgFfnExpertsPerToken).toBeLessThan(model.config.moe_topk);
        console.log(`${preset}${fp8 ? '-fp8' : ''} engine: ${seq.length} positions, smallest margin ${margins.join(', ')}`);
      },
      workLimitMs(60),
    );
});

describe('draftAgreement: bad options', () => {
  it('typed ArgumentErrors naming the option', async () => {
    const out = path.join(root, 'bad');
    for (const bad of [-0.1, 1.5, Number.NaN, Number.POSITIVE_INFINITY, '0.5' as unknown as number])
      await rejects(
        initRandom({ preset: 'tiny', out, mtp: true, draftAgreement: bad }),
        'E_ARGUMENT',
        /draftAgreement must be a number in \[0, 1\]/,
      );
    await rejects(initRandom({ preset: 'tiny', out, draftAgreement: 0.5 }), 'E_ARGUMENT', /draftAgreement needs the MTP module/);
    await rejects(
      initRandom({ preset: 'medium', out, mtp: true, draftAgreement: 0.5 }),
      'E_ARGUMENT',
      /tiny, small, lite, not 'medium'/,
    );
    await rejects(
      initRandom({ preset: 'tiny', out, mtp: true, draftAgreement: 0.5, overrides: { tie_word_embeddings: true } }),
      'E_ARGUMENT',
      /lm_head of its own/,
    );
    expect(() => draftAgreementPlan({ preset: 'tiny', draftAgreement: 2 })).toThrow(/draftAgreement must be a number/);
  });
});
