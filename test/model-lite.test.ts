// The LongCat-Flash-Lite layout (init-random preset `lite`: 12 N-gram tables, YaRN) end to end:
// the whole model against the float64 reference extended with SPEC-LITE (bf16 and FP8), prefill
// + decode == one full forward across an EOS inside the prompt, rollback of the N-gram history
// with the KV pages, batched == single; on the CPU and on CUDA (a GPU or the emulator), where the
// tables stay in host memory.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { initRandom } from '../lib/init-random.js';
import { loadModel } from '../lib/generate.js';
import { LongcatModel } from '../lib/model/model.js';
import { openCheckpoint } from '../lib/checkpoint.js';
import { native } from '../lib/native.js';
import { activeParams } from '../lib/config.js';
import { loadTokenizer } from '../lib/tokenizer.js';
import { expectBatchedDecodeEqualsSingle, expectLogitsClose, readLogits, referenceLogits } from './model-fixture.js';
import { referenceNgramIds } from '../lib/check/reference/ngram-ref.js';
import { backends, workLimitMs } from './helpers.js';

const root = mkdtempSync(path.join(tmpdir(), 'longcat-lite-'));
let savedPrecision: ReturnType<typeof native.setMatmulPrecision>;
let bf16Dir: string, fp8Dir: string;
beforeAll(async () => {
  savedPrecision = native.setMatmulPrecision('highest');
  bf16Dir = path.join(root, 'bf16');
  fp8Dir = path.join(root, 'fp8');
  await initRandom({ preset: 'lite', out: bf16Dir, seed: 11 });
  await initRandom({ preset: 'lite', out: fp8Dir, seed: 12, fp8: true });
});
afterAll(() => {
  native.setMatmulPrecision(savedPrecision);
  rmSync(root, { recursive: true, force: true });
});

/** Bytes of every tensor of a checkpoint directory, from the safetensors headers read here (not by the loader). */
function headerBytes(dir: string): Map<string, number> {
  const bytes = new Map<string, number>();
  for (const f of readdirSync(dir).filter(f => f.endsWith('.safetensors'))) {
    const buf = readFileSync(path.join(dir, f));
    const n = Number(buf.readBigUInt64LE(0));
    const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8')) as Record<string, { data_offsets?: [number, number] }>;
    for (const [name, t] of Object.entries(header)) if (t.data_offsets) bytes.set(name, t.data_offsets[1] - t.data_offsets[0]);
  }
  return bytes;
}

// An EOS (2) inside, token 0 (an ordinary token), a repeated bigram (the same N-gram rows twice).
const prompt = [5, 17, 300, 2, 99, 41, 0, 7, 260, 1, 3, 511, 41, 0];

it('the preset writes the real Lite layout: 12 tables of ratio * vocab + 2 i + 1 rows, YaRN, N-gram counted apart', async () => {
  const ck = await openCheckpoint(bf16Dir);
  try {
    expect(ck.config.model_type).toBe('longcat_flash_ngram');
    expect(ck.config.rope_scaling?.factor).toBe(10);
    for (let i = 0; i < 12; i++) {
      expect(ck.tensors.get(`model.ngram_embeddings.embedders.${i}.weight`)?.shape).toEqual([3 * 512 + 2 * i + 1, 8]);
      expect(ck.tensors.get(`model.ngram_embeddings.post_projs.${i}.weight`)?.shape).toEqual([96, 8]);
    }
    expect(ck.unexpected).toEqual([]);
    const p = activeParams(ck.config);
    expect(p.ngramTables).toBe(12 * 1536 * 8 + 144 * 8);
    expect(p.ngramProjections).toBe(12 * 96 * 8);
  } finally {
    ck.close();
  }
  const fp8 = await openCheckpoint(fp8Dir);
  try {
    expect(fp8.fp8).toBe(true);
    expect(fp8.tensors.get('model.ngram_embeddings.post_projs.0.weight')?.dtype).toBe('BF16');
    expect(fp8.tensors.get('model.ngram_embeddings.embedders.0.weight')?.dtype).toBe('BF16');
    expect(fp8.tensors.has('model.ngram_embeddings.post_projs.0.weight_scale_inv')).toBe(false);
  } finally {
    fp8.close();
  }
});

it('with --mtp the MTP module goes to model-auxiliary.safetensors, outside the index, and is found there', async () => {
  const dir = path.join(root, 'mtp');
  const res = await initRandom({ preset: 'lite', out: dir, seed: 13, mtp: true });
  expect(res.files.map(f => path.basename(f))).toContain('model-auxiliary.safetensors');
  const index = JSON.parse(readFileSync(path.join(dir, 'model.safetensors.index.json'), 'utf8')) as {
    weight_map: Record<string, string>;
  };
  expect(Object.keys(index.weight_map).some(n => n.startsWith('model.mtp.'))).toBe(false);
  const ck = await openCheckpoint(dir);
  try {
    expect(ck.hasMtp).toBe(true);
    expect(path.basename(ck.tensors.get('model.mtp.embed_tokens.weight')!.file)).toBe('model-auxiliary.safetensors');
    expect(ck.unexpected).toEqual([]);
    expect(ck.tensors.size).toBe(res.tensorCount);
  } finally {
    ck.close();
  }
  using model = await loadModel(dir, { backend: 'cpu' });
  expect(model.forward([3, 2, 9]).length).toBe(3 * 512);
});

it("the preset's tokenizer.json carries Lite's pre-tokenizer (three splits), which the tokenizer loads and round-trips", async () => {
  const tok = await loadTokenizer(bf16Dir);
  const json = JSON.parse(readFileSync(path.join(bf16Dir, 'tokenizer.json'), 'utf8')) as {
    pre_tokenizer: { pretokenizers: { type: string }[] };
  };
  expect(json.pre_tokenizer.pretokenizers.map(p => p.type)).toEqual(['Split', 'Split', 'Split', 'ByteLevel']);
  for (const text of ['你好，世界！Hello there.', '「東京」は大きい。 한국어 텍스트', "It's 2025: ｆｕｌｌ－ｗｉｄｔｈ！"]) {
    const ids = tok.encode(text);
    expect(ids.length).toBeGreaterThan(0);
    expect(tok.decode(ids)).toBe(text);
  }
  expect(tok.eosIds).toEqual([2]);
});

it('the reference ids (EOS-segmented shifts, BigInt) reproduce the SPEC-LITE vectors', () => {
  // the release's config.json (its N-gram fields), as the config tests read it
  const cfg = JSON.parse(readFileSync(new URL('./fixtures/longcat-flash-lite.config.json', import.meta.url), 'utf8'));
  const ids = referenceNgramIds(cfg, [1, 15043, 1919, 2, 523]);
  expect(ids.map(r => r[3])).toEqual([
    6160362, 6160314, 6160266, 6160218, 8554957, 9116266, 9677595, 15313, 9630250, 9299210, 8968362, 8637706,
  ]);
  expect(ids[4]![2]).toBe(2737574);
  expect(ids.every(r => r[4] === 523)).toBe(true);
  const b = referenceNgramIds(cfg, [10, 2, 2, 11, 12, 13]);
  expect([b[0]![5], b[4]![5], b[8]![5]]).toEqual([1572877, 6649401, 6501529]);
});

it('a chat session reusing its cache over turns (an EOS closes each finished assistant turn) equals a fresh session', async () => {
  using model = await loadModel(bf16Dir, { backend: 'cpu', cacheDtype: 'f32', maxContext: 256 });
  using chat = model.createSession();
  const first = await chat.generate([{ role: 'user', content: 'Hello there' }], { maxTokens: 4 });
  const turn2 = [
    { role: 'user' as const, content: 'Hello there' },
    { role: 'assistant' as const, content: first.text },
    { role: 'user' as const, content: 'And then?' },
  ];
  const second = await chat.generate(turn2, { maxTokens: 6 });
  expect(second.prefillTokens).toBeLessThan(second.promptTokens); // the first turn came from the cache
  using fresh = model.createSession();
  const again = await fresh.generate(turn2, { maxTokens: 6 });
  expect(second.tokens).toEqual(again.tokens);
});

describe.each(backends)('LongCat-Flash-Lite on %s', device => {
  const backend = device === 'cpu' ? 'cpu' : 'cuda';

  it.each([
    ['bf16', () => bf16Dir],
    ['fp8', () => fp8Dir],
  ])(
    '%s: the whole model equals the float64 reference (fp32 tolerance); the tables stay in host memory',
    async (_, dir) => {
      const want = await referenceLogits(dir(), prompt);
      using model = await loadModel(dir(), { backend, cacheDtype: 'f32' });
      const ng = model.engine.w.ngram!;
      expect(ng.tables.every(t => t.device === 'cpu')).toBe(true);
      expect(ng.proj.device).toBe(device);
      expect(ng.proj.shape).toEqual([12, 96, 8]);
      expectLogitsClose(model.forward(prompt), want, 1e-4);
    },
    workLimitMs(30),
  );

  it.each([
    ['bf16', () => bf16Dir],
    ['fp8', () => fp8Dir],
  ])(
    '%s: load progress and model.memory say where each part lives: the tables mapped on the host, never uploaded',
    async (_, dir) => {
      const sizes = headerBytes(dir());
      const isTable = (n: string) => /^model\.ngram_embeddings\.embedders\.\d+\.weight$/.test(n);
      let tables = 0,
        rest = 0;
      for (const [name, b] of sizes) {
        expect(name.startsWith('model.mtp.')).toBe(false);
        if (isTable(name)) tables += b;
        else rest += b;
      }
      expect(tables).toBe(2 * (12 * 1536 * 8 + 144 * 8)); // bf16 rows of the preset's 12 tables
      const events: { phase: string; tensor?: string; device?: string; bytes: number; totalBytes: number }[] = [];
      using model = await loadModel(dir(), {
        backend,
        cacheDtype: 'f32',
        maxContext: 64,
        onProgress: p => events.push({ ...p }),
      });
      const m = model.memory;
      expect(m.ngramTables).toBe(tables);
      if (device === 'cpu') {
        expect(m.uploaded).toEqual({});
        expect(m.hostMapped).toBe(tables + rest);
      } else {
        expect(m.uploaded).toEqual({ [device]: rest });
        expect(m.hostMapped).toBe(tables);
      }
      const uploads = events.filter(e => e.phase === 'upload');
      expect(uploads.some(e => isTable(e.tensor!))).toBe(false);
      expect(uploads.every(e => e.device === device)).toBe(true);
      // lm_head is copied last: the count then covers every uploaded tensor
      if (device !== 'cpu') expect(uploads.at(-1)!.bytes).toBe(rest);
      else expect(uploads).toEqual([]);
      const host = events.filter(e => e.phase === 'host');
      expect(host.map(e => e.tensor)).toEqual(
        Array.from({ length: 12 }, (_, i) => `model.ngram_embeddings.embedders.${i}.weight`),
      );
      expect(host.at(-1)).toMatchObject({ bytes: tables, totalBytes: tables });
      expect(events.findIndex(e => e.phase === 'host')).toBeGreaterThan(events.findLastIndex(e => e.phase !== 'host'));
    },
    workLimitMs(30),
  );

  it(
    'prefill + decode steps (graph replays) equal one full forward across the EOS; chunks and rollback too',
    async () => {
      using model = await loadModel(bf16Dir, { backend, cacheDtype: 'f32', maxContext: 128 });
      const e = model.engine;
      const full = e.newSequence();
      const all = readLogits(e.forward([full], [prompt], { allLogits: true }));
      full.release();
      const V = e.dims.vocab;
      const rows = (from: number, to: number) => all.subarray(from * V, to * V);

      // prefill up to the token before the EOS, then decode one token at a time across it
      const seq = e.newSequence();
      expectLogitsClose(readLogits(e.forward([seq], [prompt.slice(0, 2)], { allLogits: true })), rows(0, 2), 1e-4, 'prefill');
      for (let i = 2; i < prompt.length; i++)
        expectLogitsClose(readLogits(e.forward([seq], [[prompt[i]!]])), rows(i, i + 1), 1e-4, `decode ${i}`);

      // rollback: draft two tokens, reject them (truncate the pages), continue with the prompt's own
      seq.truncate(6);
      readLogits(e.forward([seq], [[123, 2]], { allLogits: true }));
      seq.truncate(6);
      expectLogitsClose(
        readLogits(e.forward([seq], [prompt.slice(6, 9)], { allLogits: true })),
        rows(6, 9),
        1e-4,
        'after rollback',
      );
      seq.truncate(4); // back to just after the EOS, then decode
      for (let i = 4; i < 7; i++)
        expectLogitsClose(readLogits(e.forward([seq], [[prompt[i]!]])), rows(i, i + 1), 1e-4, `decode after rollback ${i}`);
      seq.release();

      // random chunk sizes (chunked prefill)
      const chunked = e.newSequence();
      for (const [a, b] of [
        [0, 3],
        [3, 4],
        [4, 9],
        [9, 14],
      ] as const)
        expectLogitsClose(
          readLogits(e.forward([chunked], [prompt.slice(a, b)], { allLogits: true })),
          rows(a, b),
          1e-4,
          `chunk ${a}..${b}`,
        );
      chunked.release();
    },
    workLimitMs(30),
  );

  it(
    'decode steps replayed from graphs (the N-gram rows uploaded inside the graph) equal eager steps, queued back to back',
    async () => {
      using model = await loadModel(bf16Dir, { backend, cacheDtype: 'f32', maxContext: 64 });
      const e = model.engine;
      // the same weights (not owned: disposing it leaves them to `model`), no graphs
      const eager = new LongcatModel(e.dims, { ...e.w, owned: [] }, { device, maxContext: 64, cacheDtype: 'f32', graphs: false });
      try {
        const starts = [prompt.slice(0, 3), prompt.slice(1, 8)];
        const steps = [
          [41, 0],
          [2, 7], // an EOS
          [300, 300],
          [5, 17],
          [17, 2],
        ];
        // eager first: reading its logits waits for the device, which would also run the graphs' queued work
        const E = starts.map(() => eager.newSequence());
        for (const [b, s] of starts.entries()) readLogits(eager.forward([E[b]!], [s]));
        const want = steps.map(toks =>
          readLogits(
            eager.forward(
              E,
              toks.map(t => [t]),
            ),
          ),
        );
        // every step replays the batch-2 graph; logits are read only after steps 2 and 5, so each
        // step's rows are gathered into the staging buffer while the previous replay may be queued
        const G = starts.map(() => e.newSequence());
        for (const [b, s] of starts.entries()) readLogits(e.forward([G[b]!], [s]));
        steps.forEach((toks, i) => {
          const r = e.forward(
            G,
            toks.map(t => [t]),
          );
          if (i === 1 || i === steps.length - 1) expectLogitsClose(readLogits(r), want[i]!, 1e-5, `step ${i}`);
          else r.logits.dispose();
        });
        for (const s of [...E, ...G]) s.release();
      } finally {
        eager.dispose();
      }
    },
    workLimitMs(30),
  );

  it(
    'batched decode of sequences with different N-gram histories equals single decodes',
    async () => {
      using model = await loadModel(bf16Dir, { backend, cacheDtype: 'f32', maxContext: 64 });
      expectBatchedDecodeEqualsSingle(model.engine, [prompt.slice(0, 4), prompt.slice(2, 9), [42]], [7, 100, 2], 1e-4);
    },
    workLimitMs(30),
  );
});
