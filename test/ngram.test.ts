// LongCat-Flash-Lite's N-gram ids (SPEC-LITE 3): the test vectors of SPEC-LITE 3.7 and 9 bit-exact,
// the power table of 3.1, and one full pass == token-by-token decode == random chunks == rollback
// (the history of raw ids kept per sequence); the config's N-gram section with its typed errors.
import { describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { ngramDims, type NgramConfig } from '../lib/config-ngram.js';
import { ngramIds, ngramPowers, TokenHistory } from '../lib/model/ngram.js';
import { activeParams, configToJson, parseConfig, requiredTensors } from '../lib/config.js';
import type { ConfigError } from '../lib/errors.js';
import { rng as seeded } from '../lib/check/rng.js';
import { configErr } from './helpers.js';

const LITE_NGRAM: NgramConfig = { vocabSizeRatio: 78, neighborNum: 4, splitNum: 4, eosId: 2 };
const nd = ngramDims(LITE_NGRAM, 3072, 131072);
const pw = ngramPowers(nd);

/** All 12 ids of position `pos` of a fresh sequence `tokens`. */
function idsAt(tokens: number[], pos: number, context: number[] = []): number[] {
  const ids = ngramIds(nd, pw, context, tokens);
  return Array.from({ length: nd.tables }, (_, i) => ids[i * tokens.length + pos]!);
}

describe('N-gram ids (SPEC-LITE 3.7 vectors, bit-exact)', () => {
  it('derives the Lite table sizes and the power table of 3.1', () => {
    expect(nd.tables).toBe(12);
    expect(nd.dim).toBe(256);
    expect(nd.moduli[0]).toBe(10223617);
    expect(nd.moduli[11]).toBe(10223639);
    expect(pw[4]).toEqual([1, 131072, 4179184]);
    expect(pw[8]).toEqual([1, 131072, 4165744, 9053570]);
    expect(pw[11]).toEqual([1, 131072, 4155664, 6376805]);
    expect(pw.slice(0, 4).every(w => w.length === 2 && w[1] === 131072)).toBe(true);
  });

  it('Example A: a prompt with an EOS inside', () => {
    const A = [1, 15043, 1919, 2, 523];
    const table = [
      [1, 146115, 8783551, 6160362, 523],
      [1, 146115, 8783167, 6160314, 523],
      [1, 146115, 8782783, 6160266, 523],
      [1, 146115, 8782399, 6160218, 523],
      [1, 146115, 2737574, 8554957, 523],
      [1, 146115, 2733828, 9116266, 523],
      [1, 146115, 2730082, 9677595, 523],
      [1, 146115, 2726336, 15313, 523],
      [1, 146115, 2722590, 9630250, 523],
      [1, 146115, 2718844, 9299210, 523],
      [1, 146115, 2715098, 8968362, 523],
      [1, 146115, 2711352, 8637706, 523],
    ];
    const ids = ngramIds(nd, pw, [], A);
    for (let i = 0; i < 12; i++) expect(Array.from(ids.subarray(i * 5, i * 5 + 5))).toEqual(table[i]);
  });

  it('Example B: decode after Example A, with and without the EOS in the state', () => {
    expect(idsAt([9999], 0, [1919, 2, 523])).toEqual([
      7218953, 7218941, 7218929, 7218917, 7218905, 7218893, 7218881, 7218869, 7218857, 7218845, 7218833, 7218821,
    ]);
    expect(idsAt([9999], 0, [15043, 1919, 523])).toEqual([
      7218953, 7218941, 7218929, 7218917, 1527376, 5301581, 9075790, 2626372, 15271, 2616240, 7809861, 5372495,
    ]);
  });

  it('the llama.cpp fork vectors (idx 0 / 4 / 8)', () => {
    const cases: [number[], number, number, number, number][] = [
      [[10, 11, 12, 13, 14], 4, 1703950, 736033, 8151286],
      [[10, 11, 2, 14, 15, 16], 2, 1441794, 2339134, 2204702],
      [[10, 11, 2, 14, 15, 16], 3, 14, 14, 14],
      [[10, 11, 2, 14, 15, 16], 4, 1835023, 1835023, 1835023],
      [[10, 11, 2, 14, 15, 16], 5, 1966096, 9356547, 9168347],
      [[3, 2, 4, 5, 2, 6, 7, 8], 7, 917512, 5545366, 5464710],
      [[2, 10, 11, 12], 3, 1441804, 2339144, 2204712],
      [[10, 2, 2, 11, 12, 13], 5, 1572877, 6649401, 6501529],
      [[10, 11], 1, 1310731, 1310731, 1310731],
      [[10, 11, 99, 100], 3, 2752611, 7829127, 6204250],
    ];
    for (const [toks, pos, a, b, c] of cases) {
      const got = idsAt(toks, pos);
      expect([got[0], got[4], got[8]], `${toks} @ ${pos}`).toEqual([a, b, c]);
    }
  });

  it('token 0 is an ordinary token, and products past 2^32 stay exact (SPEC-LITE 9)', () => {
    const z = idsAt([5, 0, 7], 2);
    expect([z[0], z[1], z[2], z[3], z[4], z[8]]).toEqual([7, 7, 7, 7, 448677, 381461]);
    expect(idsAt([131071, 131071], 1)).toEqual([
      4192623, 4189263, 4185903, 4182543, 4179183, 4175823, 4172463, 4169103, 4165743, 4162383, 4159023, 4155663,
    ]);
  });
});

describe('N-gram history: full pass == decode == chunks == rollback', () => {
  const r = seeded(17);
  const pick = () => {
    const u = r.uniform(0, 1);
    return u < 0.2 ? 2 : u < 0.3 ? 0 : u < 0.35 ? 1 : r.int(131072);
  };

  it('agrees on 200 random sequences with EOS and 0 in them', () => {
    for (let trial = 0; trial < 200; trial++) {
      const L = 1 + r.int(14);
      const toks = Array.from({ length: L }, pick);
      const full = ngramIds(nd, pw, [], toks);
      // random chunks through a TokenHistory
      const h = new TokenHistory();
      for (let at = 0; at < L; ) {
        const n = Math.min(L - at, 1 + r.int(4));
        const chunk = toks.slice(at, at + n);
        const ids = ngramIds(nd, pw, h.context(at, nd.context), chunk);
        for (let i = 0; i < 12; i++)
          for (let t = 0; t < n; t++) expect(ids[i * n + t], `${toks} chunk@${at}`).toBe(full[i * L + at + t]);
        h.record(at, chunk);
        at += n;
      }
      // rollback: rewind to a random position, write other tokens, then the original ones again
      const back = r.int(L);
      h.record(back, [pick(), pick(), pick()]);
      h.record(back, toks.slice(back));
      const rest = L - back;
      const again = ngramIds(nd, pw, h.context(back, nd.context), toks.slice(back));
      for (let i = 0; i < 12; i++) for (let t = 0; t < rest; t++) expect(again[i * rest + t]).toBe(full[i * L + back + t]);
    }
  });

  it('the llama.cpp rollback vector: 888 rejected, 101 accepted at 101', () => {
    const h = new TokenHistory();
    const hist = Array.from({ length: 100 }, (_, i) => (i < 97 ? 50 : i));
    h.record(0, hist); // ..., 97, 98, 99 at positions 97..99
    h.record(100, [100]);
    h.record(101, [888]); // a draft, rejected
    const got = ngramIds(nd, pw, h.context(101, 3), [101]);
    expect([got[0], got[4], got[8]]).toEqual([2883684, 7677892, 4140793]);
    expect(() => h.context(200, 3)).toThrow(/position 200/);
  });
});

/** LongCat-Flash-Lite config.json (SPEC-LITE 1.1), shared with bench/cpu-ngram.mjs. */
const liteFile = new URL('./fixtures/longcat-flash-lite.config.json', import.meta.url);
const LITE: Record<string, unknown> = JSON.parse(readFileSync(liteFile, 'utf8'));

describe('the Lite config (SPEC-LITE 1, 2)', () => {
  it('parses, keeps its YaRN values, counts 68,562,465,024 parameters (31.4B N-gram)', () => {
    const c = parseConfig(LITE);
    expect(c.model_type).toBe('longcat_flash_ngram');
    expect(c.ngram).toEqual(LITE_NGRAM);
    expect(c.rope_scaling).toMatchObject({ factor: 10, original_max_position_embeddings: 32768 });
    const p = activeParams(c, { mtp: true });
    expect(p.total).toBe(68_562_465_024);
    expect(p.ngramTables).toBe(31_406_985_216);
    expect(p.ngramProjections).toBe(9_437_184);
    expect(p.mtp).toBe(510_870_528);
    expect(p.activeMin / 1e9).toBeCloseTo(2.93, 2);
    expect(p.activeMax / 1e9).toBeCloseTo(4.52, 2);
    // the architecture alone names the model type
    const { model_type: _, ...rest } = LITE;
    expect(parseConfig(rest).model_type).toBe('longcat_flash_ngram');
  });

  it('writes the N-gram fields back under their config.json names (configToJson round trip)', () => {
    const c = parseConfig(LITE);
    const j = configToJson(c);
    expect(j).toMatchObject({ ngram_vocab_size_ratio: 78, emb_neighbor_num: 4, emb_split_num: 4, num_hidden_layers: 28 });
    expect(j.ngram).toBeUndefined();
    expect(parseConfig(j)).toEqual(c);
  });

  it('lists the 24 N-gram tensors (11,143 in all; never FP8)', () => {
    const c = parseConfig(LITE);
    const t = requiredTensors(c);
    expect(t.size).toBe(11_143);
    expect(t.get('model.ngram_embeddings.embedders.11.weight')?.shape).toEqual([10223639, 256]);
    expect(t.get('model.ngram_embeddings.post_projs.0.weight')?.shape).toEqual([3072, 256]);
    const f = requiredTensors(c, { fp8: true });
    expect(f.get('model.ngram_embeddings.post_projs.3.weight')?.quantized).toBe(false);
    expect(f.get('model.ngram_embeddings.embedders.3.weight')?.dtypes).not.toContain('F8_E4M3');
    expect(requiredTensors(c, { mtp: true }).size).toBe(11_160);
  });

  it('bad N-gram configs give typed errors naming the field', () => {
    // an array nested too deeply for JSON.stringify: the message still prints (the fuzzer's find)
    let deep: unknown[] = [];
    for (let i = 0; i < 100_000; i++) deep = [deep];
    const cases: [Record<string, unknown>, string, RegExp][] = [
      [{ emb_split_num: 5 }, 'emb_split_num', /15 N-gram tables must divide hidden_size 3072/],
      [{ emb_neighbor_num: 1 }, 'emb_neighbor_num', /integer >= 2/],
      [{ ngram_vocab_size_ratio: 78.5 }, 'ngram_vocab_size_ratio', /integer >= 1/],
      [{ ngram_vocab_size_ratio: undefined }, 'ngram_vocab_size_ratio', /field absent/],
      [{ ngram_vocab_size_ratio: 20000 }, 'ngram_vocab_size_ratio', /2\^31/],
      [{ eos_token_id: [2, 3] }, 'eos_token_id', /one token id/],
      [{ model_type: 'longcat_flash' }, 'ngram_vocab_size_ratio', /only model_type "longcat_flash_ngram"/],
      [{ emb_split_num: deep }, 'emb_split_num', /integer >= 1 .*, got an array \(too deeply nested to print\)/],
      [
        { model_type: 'longcat_flash', ngram_vocab_size_ratio: deep },
        'ngram_vocab_size_ratio',
        /is set \(an array \(too deeply nested/,
      ],
    ];
    for (const [patch, field, re] of cases) {
      const e = configErr({ ...LITE, ...patch });
      expect(e.code).toBe('E_CONFIG');
      expect((e as ConfigError & { field: string }).field).toBe(field);
      expect(e.message).toMatch(re);
    }
  });
});
