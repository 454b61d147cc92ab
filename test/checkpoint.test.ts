// Checkpoints: init-random writes the original and the HF packed layouts, openCheckpoint reads and
// validates them (typed errors naming the file and tensor), progress and abort while mapping.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cpSync, mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync, unlinkSync, statSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { openCheckpoint, type Checkpoint } from '../lib/checkpoint.js';
import { initRandom, PRESETS } from '../lib/init-random.js';
import { readSafetensorsHeader, writeSafetensors, type TensorToWrite } from '../lib/safetensors.js';
import { toArray } from '../lib/tensor.js';
import { fp8e4m3ToF32 } from '../lib/numeric.js';
import { rejects } from './helpers.js';
import { loadModel } from '../lib/generate.js';
import { quantizeCheckpoint } from '../lib/quantize.js';

const root = mkdtempSync(path.join(tmpdir(), 'lc-ckpt-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

const tiny = path.join(root, 'tiny');
const tinyFp8 = path.join(root, 'tiny-fp8-mtp');
const tinyMtp = path.join(root, 'tiny-mtp');
beforeAll(async () => {
  await initRandom({ preset: 'tiny', out: tiny, seed: 1 });
  await initRandom({ preset: 'tiny', out: tinyFp8, fp8: true, mtp: true, seed: 1 });
  await initRandom({ preset: 'tiny', out: tinyMtp, mtp: true, seed: 1 });
});

/** Every tensor of every shard of a checkpoint directory, bytes read from disk. */
async function readAll(dir: string): Promise<Map<string, TensorToWrite & { data: Uint8Array }>> {
  const out = new Map<string, TensorToWrite & { data: Uint8Array }>();
  for (const f of ['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors']) {
    const file = path.join(dir, f);
    const h = await readSafetensorsHeader(file);
    const bytes = readFileSync(file);
    for (const t of h.tensors.values())
      out.set(t.name, {
        name: t.name,
        dtype: t.dtype,
        shape: t.shape,
        data: new Uint8Array(bytes.subarray(t.offset, t.offset + t.nbytes)),
      });
  }
  return out;
}

/** Copies `src` to a fresh directory and rewrites its weights as ONE model.safetensors (no index). */
async function rewrite(
  src: string,
  name: string,
  edit: (m: Map<string, TensorToWrite & { data: Uint8Array }>) => void,
): Promise<string> {
  const dst = path.join(root, name);
  cpSync(src, dst, { recursive: true });
  const all = await readAll(src);
  edit(all);
  for (const f of ['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors', 'model.safetensors.index.json'])
    unlinkSync(path.join(dst, f));
  await writeSafetensors(path.join(dst, 'model.safetensors'), [...all.values()]);
  return dst;
}

const sha = (f: string) => createHash('sha256').update(readFileSync(f)).digest('hex');

describe('init-random + openCheckpoint', () => {
  it('writes a valid tiny bf16 checkpoint in the original layout, two shards + index', async () => {
    const progress: number[] = [];
    const ck = await openCheckpoint(tiny, { onProgress: p => progress.push(p.bytes / p.totalBytes) });
    try {
      expect(ck.files.map(f => path.basename(f))).toEqual([
        'model-00001-of-00002.safetensors',
        'model-00002-of-00002.safetensors',
      ]);
      expect(progress).toHaveLength(2);
      expect(progress[1]).toBe(1);
      expect(ck.config.model_type).toBe('longcat_flash');
      expect(ck.config.hidden_size).toBe(PRESETS.tiny.hidden_size);
      expect(ck.generationConfig).toMatchObject({ bos_token_id: 1, eos_token_id: 2, pad_token_id: 3 });
      expect(ck.fp8).toBe(false);
      expect(ck.hasMtp).toBe(false);
      expect(ck.unexpected).toEqual([]);
      expect(ck.expertLayouts).toEqual(['original', 'original']);
      expect(ck.derived.routerWidth).toBe(12);
      const idx = JSON.parse(readFileSync(path.join(tiny, 'model.safetensors.index.json'), 'utf8'));
      expect(Object.keys(idx.weight_map).length).toBe(ck.tensors.size);
      expect(new Set(Object.values(idx.weight_map))).toEqual(
        new Set(['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors']),
      );
      expect(idx.metadata.total_size).toBe([...ck.tensors.values()].reduce((a, t) => a + t.nbytes, 0));

      // dtypes: bf16 weights, f32 router + bias.
      expect(ck.tensors.get('model.layers.0.mlp.router.classifier.weight')!.dtype).toBe('F32');
      expect(ck.tensors.get('model.layers.0.mlp.router.e_score_correction_bias')!.dtype).toBe('F32');
      expect(ck.tensors.get('model.layers.1.self_attn.1.kv_b_proj.weight')!.dtype).toBe('BF16');

      // get(): mapped bytes equal the file bytes; cached.
      const info = ck.tensors.get('model.layers.1.self_attn.0.q_b_proj.weight')!;
      const t = ck.get(info.name);
      expect(ck.get(info.name)).toBe(t);
      expect(t.shape).toEqual([4 * 24, 48]);
      expect(t.dtype).toBe('bf16');
      expect(
        Buffer.compare(Buffer.from(t.toBytes()), readFileSync(info.file).subarray(info.offset, info.offset + info.nbytes)),
      ).toBe(0);
      expect(() => ck.get('nope')).toThrow(
        expect.objectContaining({ code: 'E_CHECKPOINT', message: expect.stringContaining("'nope'") }),
      );

      // Statistics: 1/sqrt(fan_in) weights, ~1 norms, N(0,1) embedding.
      const w = Array.from(toArray(t));
      const std = Math.sqrt(w.reduce((a, v) => a + v * v, 0) / w.length);
      expect(std).toBeGreaterThan(0.8 / Math.sqrt(48));
      expect(std).toBeLessThan(1.2 / Math.sqrt(48));
      const norm = toArray(ck.get('model.layers.0.input_layernorm.0.weight'));
      for (const v of norm) expect(Math.abs(v - 1)).toBeLessThan(0.3);
      const ex = ck.expertWeights(1, 7);
      expect(ex.gate.shape).toEqual([32, 64]);
      expect(ex.up.shape).toEqual([32, 64]);
      expect(ex.down.shape).toEqual([64, 32]);
      expect(ex.gateScale).toBeUndefined();
      expect(ck.expertWeights(1, 7)).toBe(ex);
      expect(() => ck.expertWeights(1, 8)).toThrow(expect.objectContaining({ code: 'E_ARGUMENT' }));
      expect(() => ck.expertWeights(2, 0)).toThrow(expect.objectContaining({ code: 'E_ARGUMENT' }));
      ck.close();
      expect(t.disposed).toBe(true);
      expect(() => ck.get(info.name)).toThrow(expect.objectContaining({ code: 'E_DISPOSED' }));
      ck.close();
    } finally {
      ck.close();
    }
  });

  it('routes a real fraction of tokens to zero experts (router statistics)', async () => {
    const ck = await openCheckpoint(tiny);
    try {
      const c = ck.config;
      const W = toArray(ck.get('model.layers.0.mlp.router.classifier.weight'));
      const b = toArray(ck.get('model.layers.0.mlp.router.e_score_correction_bias'));
      const E = c.n_routed_experts + c.zero_expert_num,
        H = c.hidden_size;
      let x = 12345;
      const normal = () => {
        x = (Math.imul(x, 1103515245) + 12345) >>> 0;
        const u = (x + 1) / 4294967297;
        x = (Math.imul(x, 1103515245) + 12345) >>> 0;
        return Math.sqrt(-2 * Math.log(u)) * Math.cos((2 * Math.PI * x) / 4294967296);
      };
      let zero = 0,
        slots = 0;
      for (let tok = 0; tok < 300; tok++) {
        const u = Array.from({ length: H }, normal);
        const logits = Array.from({ length: E }, (_, e) => u.reduce((a, v, k) => a + v * W[e * H + k]!, 0));
        const mx = Math.max(...logits);
        const p = logits.map(l => Math.exp(l - mx));
        const s = p.reduce((a, v) => a + v, 0);
        const choice = p.map((v, e) => v / s + b[e]!);
        const idx = choice
          .map((v, e) => [v, e] as const)
          .sort((a1, a2) => a2[0] - a1[0])
          .slice(0, c.moe_topk);
        zero += idx.filter(([, e]) => e >= c.n_routed_experts).length;
        slots += c.moe_topk;
      }
      expect(zero / slots).toBeGreaterThan(0.2);
      expect(zero / slots).toBeLessThan(0.5);
    } finally {
      ck.close();
    }
  });

  it('writes FP8 linears + weight_scale_inv exactly where SPEC 7.1 says, and the MTP module', async () => {
    const ck = await openCheckpoint(tinyFp8);
    try {
      expect(ck.fp8).toBe(true);
      expect(ck.hasMtp).toBe(true);
      expect(ck.unexpected).toEqual([]);
      expect(ck.config.quantization_config).toMatchObject({
        quant_method: 'fp8',
        fmt: 'e4m3',
        weight_block_size: [128, 128],
        activation_scheme: 'dynamic',
      });
      const dt = (n: string) => ck.tensors.get(n)?.dtype;
      for (const n of [
        'model.layers.0.self_attn.0.q_a_proj',
        'model.layers.0.self_attn.1.o_proj',
        'model.layers.1.mlps.0.down_proj',
        'model.layers.1.mlp.experts.3.up_proj',
        'model.mtp.layers.0.eh_proj',
        'model.mtp.layers.0.self_attn.kv_b_proj',
        'model.mtp.layers.0.transformer_layer.mlp.gate_proj',
      ]) {
        expect(dt(`${n}.weight`), n).toBe('F8_E4M3');
        expect(dt(`${n}.weight_scale_inv`), n).toBe('F32');
      }
      for (const n of [
        'model.embed_tokens.weight',
        'lm_head.weight',
        'model.norm.weight',
        'model.layers.0.self_attn.0.q_a_layernorm.weight',
        'model.mtp.embed_tokens.weight',
        'model.mtp.layers.0.enorm.m.weight',
        'model.mtp.norm.weight',
      ])
        expect(dt(n), n).toBe('BF16');
      expect(dt('model.layers.0.mlp.router.classifier.weight')).toBe('F32');
      expect(ck.tensors.get('model.layers.0.self_attn.0.q_b_proj.weight_scale_inv')!.shape).toEqual([1, 1]);
      const ex = ck.expertWeights(0, 2);
      expect(ex.gate.dtype).toBe('fp8_e4m3');
      expect(ex.gateScale!.shape).toEqual([1, 1]);
      expect(ex.downScale!.dtype).toBe('f32');
      // Dequantized weights have std ~ 1/sqrt(fan_in).
      const { weight, scale } = ck.linear('model.layers.0.mlps.0.gate_proj');
      const s = toArray(scale!)[0]!;
      const q = Array.from(weight.toBytes(), fp8e4m3ToF32);
      const std = Math.sqrt(q.reduce((a, v) => a + (v * s) ** 2, 0) / q.length);
      expect(std * Math.sqrt(64)).toBeGreaterThan(0.6);
      expect(std * Math.sqrt(64)).toBeLessThan(1.4);
    } finally {
      ck.close();
    }
  });

  it('is deterministic for a seed', async () => {
    const again = path.join(root, 'tiny-again');
    const other = path.join(root, 'tiny-other');
    await initRandom({ preset: 'tiny', out: again, seed: 1 });
    await initRandom({ preset: 'tiny', out: other, seed: 2 });
    for (const f of ['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors', 'tokenizer.json', 'config.json'])
      expect(sha(path.join(again, f)), f).toBe(sha(path.join(tiny, f)));
    expect(sha(path.join(other, 'model-00001-of-00002.safetensors'))).not.toBe(
      sha(path.join(tiny, 'model-00001-of-00002.safetensors')),
    );
  });

  it('writes the small preset and it validates', async () => {
    const out = path.join(root, 'small');
    const r = await initRandom({ preset: 'small', out, seed: 3 });
    expect(r.totalBytes).toBeGreaterThan(100e6);
    expect(r.totalBytes).toBeLessThan(200e6);
    const ck = await openCheckpoint(out);
    expect(ck.tensors.size).toBe(r.tensorCount);
    const emb = ck.get('model.embed_tokens.weight');
    expect(emb.shape).toEqual([4096, 512]);
    ck.close();
    rmSync(out, { recursive: true, force: true });
  });
});

describe('openCheckpoint errors', () => {
  it('names a missing tensor', async () => {
    const dir = await rewrite(tiny, 'missing', m => m.delete('model.layers.1.self_attn.1.kv_a_layernorm.weight'));
    await rejects(openCheckpoint(dir), 'E_CHECKPOINT', "missing tensor 'model.layers.1.self_attn.1.kv_a_layernorm.weight'");
  });

  it('counts several missing tensors', async () => {
    const dir = await rewrite(tiny, 'missing-many', m => {
      for (const k of [...m.keys()]) if (k.startsWith('model.layers.0.mlp.experts.5.')) m.delete(k);
    });
    await rejects(
      openCheckpoint(dir),
      'E_CHECKPOINT',
      /missing tensor 'model\.layers\.0\.mlp\.experts\.5\.\w+_proj\.weight' \(and 2 more/,
    );
  });

  it('names a tensor with the wrong shape, expected vs got', async () => {
    const dir = await rewrite(tiny, 'shape', m => {
      const t = m.get('model.layers.0.self_attn.0.kv_a_proj_with_mqa.weight')!;
      m.set(t.name, { ...t, shape: [t.shape[1]!, t.shape[0]!] });
    });
    await rejects(
      openCheckpoint(dir),
      'E_CHECKPOINT',
      "'model.layers.0.self_attn.0.kv_a_proj_with_mqa.weight'",
      'has shape [64, 40], expected [40, 64]',
    );
    const dir2 = await rewrite(tiny, 'shape2', m => {
      const t = m.get('model.layers.0.mlps.1.up_proj.weight')!;
      m.set(t.name, { ...t, shape: [64, 128], data: new Uint8Array(64 * 128 * 2) });
    });
    await rejects(
      openCheckpoint(dir2),
      'E_CHECKPOINT',
      "'model.layers.0.mlps.1.up_proj.weight'",
      'has shape [64, 128], expected [128, 64]',
    );
  });

  it('names a tensor with the wrong dtype class', async () => {
    const dir = await rewrite(tiny, 'dtype', m => {
      const t = m.get('model.norm.weight')!;
      m.set(t.name, { ...t, dtype: 'I16' });
    });
    await rejects(openCheckpoint(dir), 'E_CHECKPOINT', "'model.norm.weight'", 'dtype I16, expected BF16 or F16 or F32');
    const dir2 = await rewrite(tinyFp8, 'dtype-fp8', m => {
      const t = m.get('model.layers.0.self_attn.0.q_a_proj.weight')!;
      m.set(t.name, { ...t, dtype: 'I8' });
    });
    await rejects(openCheckpoint(dir2), 'E_CHECKPOINT', "'model.layers.0.self_attn.0.q_a_proj.weight'", 'expected F8_E4M3');
    const dir3 = await rewrite(tinyFp8, 'no-scale', m => m.delete('model.layers.1.mlp.experts.0.down_proj.weight_scale_inv'));
    await rejects(
      openCheckpoint(dir3),
      'E_CHECKPOINT',
      "missing tensor 'model.layers.1.mlp.experts.0.down_proj.weight_scale_inv'",
    );
  });

  it('lists unexpected tensors instead of failing, and validates MTP when present', async () => {
    const dir = await rewrite(tiny, 'extra', m =>
      m.set('model.rotary_emb.inv_freq', {
        name: 'model.rotary_emb.inv_freq',
        dtype: 'F32',
        shape: [4],
        data: new Uint8Array(16),
      }),
    );
    const ck = await openCheckpoint(dir);
    expect(ck.unexpected).toEqual(['model.rotary_emb.inv_freq']);
    expect(ck.get('model.rotary_emb.inv_freq').shape).toEqual([4]);
    ck.close();
    const part = await rewrite(tinyMtp, 'mtp-partial', m => m.delete('model.mtp.layers.0.hnorm.m.weight'));
    await rejects(openCheckpoint(part), 'E_CHECKPOINT', "missing tensor 'model.mtp.layers.0.hnorm.m.weight'");
    const mtp = await openCheckpoint(tinyMtp);
    expect(mtp.hasMtp).toBe(true);
    expect(mtp.get('model.mtp.layers.0.eh_proj.weight').shape).toEqual([64, 128]);
    mtp.close();
  });

  it('reports a bad index, a truncated shard, a bad config, a missing directory', async () => {
    const badIndex = path.join(root, 'bad-index');
    cpSync(tiny, badIndex, { recursive: true });
    const idxFile = path.join(badIndex, 'model.safetensors.index.json');
    const idx = JSON.parse(readFileSync(idxFile, 'utf8'));
    idx.weight_map['model.norm.weight'] = 'model-00001-of-00002.safetensors';
    writeFileSync(idxFile, JSON.stringify(idx));
    await rejects(openCheckpoint(badIndex), 'E_CHECKPOINT', "'model.norm.weight'", /model-00001-of-00002/);
    idx.weight_map['model.norm.weight'] = '../../etc/passwd';
    writeFileSync(idxFile, JSON.stringify(idx));
    await rejects(openCheckpoint(badIndex), 'E_CHECKPOINT', /outside the checkpoint directory/);
    writeFileSync(idxFile, '{"weight_map": 3}');
    await rejects(openCheckpoint(badIndex), 'E_CHECKPOINT', /weight_map/);

    const trunc = path.join(root, 'trunc');
    cpSync(tiny, trunc, { recursive: true });
    const shard = path.join(trunc, 'model-00002-of-00002.safetensors');
    truncateSync(shard, statSync(shard).size - 10);
    await rejects(openCheckpoint(trunc), 'E_CHECKPOINT', 'model-00002-of-00002.safetensors');

    const badCfg = path.join(root, 'bad-config');
    cpSync(tiny, badCfg, { recursive: true });
    const cfg = JSON.parse(readFileSync(path.join(badCfg, 'config.json'), 'utf8'));
    writeFileSync(path.join(badCfg, 'config.json'), JSON.stringify({ ...cfg, moe_topk: 99 }));
    await rejects(openCheckpoint(badCfg), 'E_CONFIG', "'moe_topk'", 'config.json');
    writeFileSync(path.join(badCfg, 'config.json'), '{');
    await rejects(openCheckpoint(badCfg), 'E_CHECKPOINT', /config\.json.*JSON/);

    await rejects(openCheckpoint(path.join(root, 'nowhere')), 'E_CHECKPOINT', 'nowhere');
    const noWeights = path.join(root, 'no-weights');
    cpSync(tiny, noWeights, { recursive: true });
    for (const f of ['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors', 'model.safetensors.index.json'])
      unlinkSync(path.join(noWeights, f));
    await rejects(openCheckpoint(noWeights), 'E_CHECKPOINT', /no model\.safetensors/);
  });

  it('honours AbortSignal before and between files', async () => {
    const ac = new AbortController();
    ac.abort();
    await rejects(openCheckpoint(tiny, { signal: ac.signal }), 'E_ABORTED');
    const ac2 = new AbortController();
    let calls = 0;
    await rejects(
      openCheckpoint(tiny, {
        signal: ac2.signal,
        onProgress: () => {
          calls++;
          ac2.abort();
        },
      }),
      'E_ABORTED',
    );
    expect(calls).toBe(1);
  });
});

describe('HF packed expert layout', () => {
  it('gives the same expert views as the original layout (and for the [E+Z, 2I, H] declaration)', async () => {
    const orig = await openCheckpoint(tiny);
    const c = orig.config;
    const E = c.n_routed_experts,
      Z = c.zero_expert_num,
      I = c.expert_ffn_hidden_size,
      H = c.hidden_size;
    const pack = (rows: number) => (m: Map<string, TensorToWrite & { data: Uint8Array }>) => {
      for (let L = 0; L < c.num_layers; L++) {
        const gu = new Uint8Array(rows * 2 * I * H * 2);
        const dn = new Uint8Array(E * H * I * 2);
        for (let e = 0; e < E; e++) {
          const p = `model.layers.${L}.mlp.experts.${e}`;
          gu.set(m.get(`${p}.gate_proj.weight`)!.data, e * 2 * I * H * 2);
          gu.set(m.get(`${p}.up_proj.weight`)!.data, (e * 2 * I * H + I * H) * 2);
          dn.set(m.get(`${p}.down_proj.weight`)!.data, e * H * I * 2);
          for (const w of ['gate', 'up', 'down']) m.delete(`${p}.${w}_proj.weight`);
        }
        m.set(`model.layers.${L}.mlp.experts.gate_up_proj`, {
          name: `model.layers.${L}.mlp.experts.gate_up_proj`,
          dtype: 'BF16',
          shape: [rows, 2 * I, H],
          data: gu,
        });
        m.set(`model.layers.${L}.mlp.experts.down_proj`, {
          name: `model.layers.${L}.mlp.experts.down_proj`,
          dtype: 'BF16',
          shape: [E, H, I],
          data: dn,
        });
      }
    };
    for (const [name, rows] of [
      ['packed', E],
      ['packed-ez', E + Z],
    ] as const) {
      const dir = await rewrite(tiny, name, pack(rows));
      const ck: Checkpoint = await openCheckpoint(dir);
      try {
        expect(ck.expertLayouts).toEqual(['packed', 'packed']);
        expect(ck.unexpected).toEqual([]);
        for (const [L, e] of [
          [0, 0],
          [0, 5],
          [1, 7],
          [1, 3],
        ] as const) {
          const a = orig.expertWeights(L, e),
            b = ck.expertWeights(L, e);
          for (const k of ['gate', 'up', 'down'] as const) {
            expect(b[k].shape, `${name} ${L}.${e}.${k}`).toEqual(a[k].shape);
            expect(Buffer.compare(Buffer.from(b[k].toBytes()), Buffer.from(a[k].toBytes())), `${name} ${L}.${e}.${k}`).toBe(0);
          }
          expect(ck.expertWeights(L, e)).toBe(b);
        }
        // Values, not only bytes: views decode to the same numbers.
        expect(Array.from(toArray(ck.expertWeights(1, 2).up))).toEqual(Array.from(toArray(orig.expertWeights(1, 2).up)));
        if (name === 'packed') {
          // Quantizing at load reads packed experts as views, the same codes as the original layout's.
          using a = await loadModel(tiny, { backend: 'cpu', maxContext: 16, quantize: 'int8' });
          using b = await loadModel(dir, { backend: 'cpu', maxContext: 16, quantize: 'int8' });
          expect(Array.from(b.forward([5, 9, 300]))).toEqual(Array.from(a.forward([5, 9, 300])));
          await rejects(quantizeCheckpoint(dir, path.join(root, 'packed-q'), { to: 'fp8' }), 'E_ARGUMENT', /packed/);
        }
        const v = ck.expertWeights(0, 1).down;
        ck.close();
        expect(v.disposed).toBe(true);
      } finally {
        ck.close();
      }
    }
    // A wrong packed shape is named.
    const bad = await rewrite(tiny, 'packed-bad', m => {
      pack(E)(m);
      const t = m.get('model.layers.1.mlp.experts.down_proj')!;
      m.set(t.name, { ...t, shape: [E, I, H] });
    });
    await rejects(openCheckpoint(bad), 'E_CHECKPOINT', "'model.layers.1.mlp.experts.down_proj'", `expected [${E}, ${H}, ${I}]`);
    orig.close();
  });
});
