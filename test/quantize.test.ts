// Weight quantization: `quantizeCheckpoint` (fp8 block, int8 rows, int4 GPTQ) over init-random checkpoints
// (tiny, small, Lite; BF16 with MTP and agreeing drafts), the written files opened and validated,
// the FP8 output's tensors equal in name / dtype / shape to an init-random --fp8 checkpoint, the
// logits near the base model's within the error model below, greedy tokens equal, loadModel's
// `quantize` equal to loading the written files, evalKld (base vs itself: KL 0, agreement 1; base
// vs fp8: small positive), and the typed errors.
import { afterAll, describe, expect, it, onTestFinished } from 'vitest';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { initRandom } from '../lib/init-random.js';
import { openCheckpoint } from '../lib/checkpoint.js';
import { loadModel } from '../lib/generate.js';
import { quantizeCheckpoint, type QuantizeFormat, type QuantizeProgress } from '../lib/quantize.js';
import { evalKld } from '../lib/eval.js';
import { readSafetensorsHeader } from '../lib/safetensors.js';
import { setMatmulPrecision } from '../lib/device.js';
import { cudaAvailable, rejects, workLimitMs } from './helpers.js';

const root = mkdtempSync(path.join(tmpdir(), 'lc-quantize-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

type Preset = 'tiny' | 'small' | 'lite';
const base = new Map<string, Promise<string>>();
/** The BF16 agreeing checkpoint of a preset (MTP, draftAgreement 0.5, seed 5), written once. */
function baseOf(preset: Preset): Promise<string> {
  let p = base.get(preset);
  if (!p) {
    const out = path.join(root, preset);
    p = initRandom({ preset, out, mtp: true, seed: 5, draftAgreement: 0.5 }).then(() => out);
    base.set(preset, p);
  }
  return p;
}
const quantized = new Map<string, Promise<string>>();
function quantizedOf(preset: Preset, to: QuantizeFormat): Promise<string> {
  const key = `${preset}-${to}`;
  let p = quantized.get(key);
  if (!p) {
    const out = path.join(root, key);
    p = baseOf(preset).then(async dir => {
      await quantizeCheckpoint(dir, out, { to });
      return out;
    });
    quantized.set(key, p);
  }
  return p;
}

/**
 * Error model of the logits. Per weight the rounding error is at most EPS relative to the largest
 * magnitude sharing its scale (fp8 e4m3: 3 mantissa bits, half an ulp = 2^-4 of the value; int8
 * rows: half a step of max / 127 = 1/254 of the row max), so to first order every quantized
 * linear's output is off by at most EPS of the magnitudes it sums, and the logits -- the residual
 * sum of the layers' outputs (plus the embedding's, BF16 and exact here) through the BF16 lm_head --
 * by at most EPS * max |logit|. Second-order terms (errors of one layer scaled by the next) are
 * EPS^2-small. Measured (max |diff| / bound): tiny 0.06 / 2.0 and 0.033 / 0.125, lite 0.09 / 2.0 and
 * 0.023 / 0.125, small 0.036 / 2.0 and 0.013 / 0.125 (fp8 / int8): the layers' share of these
 * logits is small, so the bound is loose for fp8; far below the agreeing checkpoints' margins (the
 * greedy logit ~32 over the runner-up by >= 16), so greedy tokens must be equal.
 */
// int4: half a step of max / 7 = 1/14 of the group's max (groups of 128 columns).
const EPS: Record<QuantizeFormat, number> = { fp8: 2 ** -4, int8: 1 / 254, int4: 1 / 14 };
const logitBound = (to: QuantizeFormat, maxLogit: number) => EPS[to] * maxLogit;

const maxAbs = (a: Float32Array) => a.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
const maxDiff = (a: Float32Array, b: Float32Array) => a.reduce((m, v, i) => Math.max(m, Math.abs(v - b[i]!)), 0);

/** A prompt of the tokenizer's ordinary ids. */
const PROMPT = [300, 301, 17, 42, 99, 250, 12, 77, 8, 150];

describe('quantizeCheckpoint', { timeout: workLimitMs(120) }, () => {
  for (const preset of ['tiny', 'lite', 'small'] as const)
    for (const to of ['fp8', 'int8', 'int4'] as const)
      it(`${preset} -> ${to}: validated, logits within the error model, greedy tokens equal`, async () => {
        const dir = await quantizedOf(preset, to);
        {
          using ck = await openCheckpoint(dir);
          expect(ck.quantization).toBe(to);
          expect(ck.hasMtp).toBe(true);
          expect(ck.unexpected).toEqual([]);
          if (to === 'int4') {
            // GPTQ names and dtypes in place of `.weight`
            const q = [...ck.tensors.values()].filter(t => t.name.endsWith('.q_b_proj.qweight'));
            expect(q.length).toBeGreaterThan(0);
            expect(q.every(t => t.dtype === 'I32')).toBe(true);
            expect(ck.tensors.get(q[0]!.name.replace('qweight', 'scales'))!.dtype).toBe('F16');
            expect(ck.tensors.has(q[0]!.name.replace('qweight', 'weight'))).toBe(false);
            const cfg = JSON.parse(readFileSync(path.join(dir, 'config.json'), 'utf8'));
            expect(cfg.quantization_config).toMatchObject({
              quant_method: 'gptq',
              bits: 4,
              group_size: 128,
              sym: true,
              desc_act: false,
            });
          } else {
            const weights = [...ck.tensors.values()].filter(t => t.name.endsWith('.q_b_proj.weight'));
            expect(weights.length).toBeGreaterThan(0);
            expect(weights.every(t => t.dtype === (to === 'fp8' ? 'F8_E4M3' : 'I8'))).toBe(true);
          }
          // What stays in its original dtype.
          for (const name of ['model.embed_tokens.weight', 'lm_head.weight', 'model.norm.weight'])
            expect(ck.tensors.get(name)!.dtype).toBe('BF16');
          expect(ck.tensors.get('model.layers.0.mlp.router.classifier.weight')!.dtype).toBe('F32');
          if (preset === 'lite')
            for (const t of ck.tensors.values()) if (t.name.startsWith('model.ngram_embeddings.')) expect(t.dtype).toBe('BF16');
          if (to !== 'fp8') expect(ck.tensors.get('model.layers.0.self_attn.0.kv_b_proj.weight')!.dtype).toBe('BF16');
        }
        using b = await loadModel(await baseOf(preset), { backend: 'cpu', maxContext: 64 });
        using q = await loadModel(dir, { backend: 'cpu', maxContext: 64 });
        const lb = b.forward(PROMPT),
          lq = q.forward(PROMPT);
        const bound = logitBound(to, maxAbs(lb));
        const err = maxDiff(lb, lq);
        expect(err).toBeGreaterThan(0); // it was quantized
        expect(err).toBeLessThan(bound);
        const greedy = async (m: typeof b) =>
          (await m.createSession().generate(PROMPT.map(String).join(' '), { maxTokens: 8 })).tokens;
        expect(await greedy(q)).toEqual(await greedy(b));
      });

  it('fp8 output has the tensors of an init-random --fp8 checkpoint (names, dtypes, shapes); the index lists them', async () => {
    for (const preset of ['tiny', 'lite'] as const) {
      const ref = path.join(root, `${preset}-initfp8`);
      await initRandom({ preset, out: ref, fp8: true, mtp: true, seed: 1 });
      using a = await openCheckpoint(await quantizedOf(preset, 'fp8'));
      using r = await openCheckpoint(ref);
      const layout = (ck: typeof a) =>
        Object.fromEntries([...ck.tensors.values()].map(t => [t.name, `${t.dtype} [${t.shape.join(', ')}]`]));
      expect(layout(a)).toEqual(layout(r));
      const index = (dir: string) =>
        Object.keys(JSON.parse(readFileSync(path.join(dir, 'model.safetensors.index.json'), 'utf8')).weight_map).sort();
      expect(index(a.dir)).toEqual(index(r.dir));
      const cfg = JSON.parse(readFileSync(path.join(a.dir, 'config.json'), 'utf8'));
      expect(cfg.quantization_config).toMatchObject({
        quant_method: 'fp8',
        fmt: 'e4m3',
        activation_scheme: 'dynamic',
        weight_block_size: [128, 128],
      });
      expect(cfg.quantization_config.ignored_layers).toContain('lm_head');
      expect(cfg.quantization_config.ignored_layers).toContain('model.layers.0.mlp.router.classifier');
      // Tokenizer and generation config come along.
      for (const f of ['tokenizer.json', 'tokenizer_config.json', 'generation_config.json', 'special_tokens_map.json'])
        expect(readFileSync(path.join(a.dir, f), 'utf8')).toBe(readFileSync(path.join(await baseOf(preset), f), 'utf8'));
    }
  });

  for (const to of ['fp8', 'int8', 'int4'] as const)
    it(`loadModel quantize '${to}' gives the logits of the written ${to} checkpoint`, async () => {
      for (const preset of ['tiny', 'lite'] as const) {
        using atLoad = await loadModel(await baseOf(preset), { backend: 'cpu', maxContext: 64, quantize: to });
        using files = await loadModel(await quantizedOf(preset, to), { backend: 'cpu', maxContext: 64 });
        expect(Array.from(atLoad.forward(PROMPT))).toEqual(Array.from(files.forward(PROMPT)));
        // memory: the same weights either way, mapped from the written files (int4: GPTQ tensors
        // repacked at load, made) or quantized at load (made; the BF16 linears they replace not counted)
        const a = atLoad.memory,
          f = files.memory;
        expect(a.hostMade).toBeGreaterThan(0);
        expect(a.hostMapped + a.hostMade, preset).toBe(f.hostMapped + f.hostMade);
        expect(f.hostMade > 0, preset).toBe(to === 'int4');
        using base = await loadModel(await baseOf(preset), { backend: 'cpu', maxContext: 64 });
        expect(base.memory.hostMade).toBe(0);
        expect(a.hostMapped + a.hostMade).toBeLessThan(base.memory.hostMapped);
      }
    });

  it.runIf(cudaAvailable)(
    'on the CUDA device: the written int8, fp8 and int4 files and quantize at load give the CPU logits',
    async () => {
      // fp32 products everywhere: at the default precision the CUDA GEMMs round activations to bf16
      // (~7e-4 of the logits here, for the BF16 base model alike), which is not what is checked.
      const was = setMatmulPrecision('highest');
      onTestFinished(() => void setMatmulPrecision(was));
      for (const to of ['int8', 'fp8', 'int4'] as const) {
        const dir = await quantizedOf('tiny', to);
        using cpu = await loadModel(dir, { backend: 'cpu', maxContext: 64 });
        using gpu = await loadModel(dir, { backend: 'cuda', maxContext: 64 });
        using atLoad = await loadModel(await baseOf('tiny'), { backend: 'cuda', maxContext: 64, quantize: to });
        const want = cpu.forward(PROMPT);
        // The same codes and scales; only the summation order of fp32 sums differs (measured 4e-6 of ~32).
        const tol = 1e-5 * maxAbs(want);
        expect(maxDiff(gpu.forward(PROMPT), want)).toBeLessThan(tol);
        expect(maxDiff(atLoad.forward(PROMPT), want)).toBeLessThan(tol);
      }
    },
  );

  it('eval --kld: base vs itself KL 0 and agreement 1; base vs fp8 a small positive KL', async () => {
    const text = path.join(root, 'text.txt');
    writeFileSync(text, 'The quick brown fox jumps over the lazy dog. '.repeat(6));
    const dir = await baseOf('tiny');
    const self = await evalKld(dir, dir, { textFile: text, ctx: 32 });
    expect(self.scored).toBeGreaterThan(0);
    expect(self.meanKld).toBe(0);
    expect(self.maxKld).toBe(0);
    expect(self.top1Agreement).toBe(1);
    expect(self.pplQuant).toBe(self.pplBase);
    const fp8 = await evalKld(dir, await quantizedOf('tiny', 'fp8'), { textFile: text, ctx: 32 });
    expect(fp8.scored).toBe(self.scored);
    expect(fp8.meanKld).toBeGreaterThan(0);
    expect(fp8.meanKld).toBeLessThan(0.05);
    expect(fp8.top1Agreement).toBeGreaterThan(0.9);
    expect(fp8.pplBase).toBe(self.pplBase);
    const atLoad = await evalKld(dir, null, { textFile: text, ctx: 32, quantize: 'fp8' });
    expect(atLoad.meanKld).toBe(fp8.meanKld);
  });

  it('reports progress per tensor and counts what it quantized and copied', async () => {
    const dir = await baseOf('tiny');
    const seen: QuantizeProgress[] = [];
    const r = await quantizeCheckpoint(dir, path.join(root, 'progress'), { to: 'int8', onProgress: p => seen.push(p) });
    using ck = await openCheckpoint(dir);
    expect(seen.length).toBe(ck.tensors.size);
    expect(seen.map(p => p.done)).toEqual(seen.map((_, i) => i + 1));
    expect(seen.at(-1)).toMatchObject({ total: ck.tensors.size, bytes: r.inputBytes, totalBytes: r.inputBytes });
    expect(new Set(seen.map(p => p.tensor)).size).toBe(ck.tensors.size);
    expect(seen.filter(p => p.action === 'quantized').length).toBe(r.quantized);
    expect(r.quantized + r.copied).toBe(ck.tensors.size);
    // int8 codes are half the bf16 bytes, plus one f32 scale per row.
    expect(r.outputBytes).toBeLessThan(r.inputBytes);
    using out = await openCheckpoint(r.dir);
    expect([...out.tensors.values()].filter(t => t.dtype === 'I8').length).toBe(r.quantized);
  });

  it('asymmetric GPTQ (v1 and gptq_v2 zeros) and desc_act with the plain g_idx: the same weights give the same logits', async () => {
    const dir = await quantizedOf('tiny', 'int4');
    using ref = await loadModel(dir, { backend: 'cpu', maxContext: 64 });
    const want = ref.forward(PROMPT);
    // Every even output column: codes q - 1 and zero 7 (the symmetric codes are 1..15), the same weights.
    const variant = async (name: string, v2: boolean) => {
      const src = dir;
      const d = path.join(root, `gptq-${name}`);
      mkdirSync(d);
      for (const f of readdirSync(src)) copyFileSync(path.join(src, f), path.join(d, f));
      for (const f of readdirSync(d).filter(f => f.endsWith('.safetensors'))) {
        const file = path.join(d, f);
        const h = await readSafetensorsHeader(file);
        const buf = readFileSync(file);
        for (const t of h.tensors.values()) {
          const words = new Int32Array(buf.buffer, buf.byteOffset + t.offset, t.nbytes / 4);
          if (t.name.endsWith('.qweight')) {
            const n = t.shape[1]!;
            for (let i = 0; i < words.length; i++) if ((i % n) % 2 === 0) words[i] = words[i]! - 0x11111111;
          } else if (t.name.endsWith('.qzeros')) {
            // nibble j of a word: output 8 w + j; even outputs zero 7 (v1 stores 6), odd 8 (v1: 7)
            words.fill(v2 ? 0x87878787 | 0 : 0x76767676);
          }
        }
        writeFileSync(file, buf);
      }
      const cfg = JSON.parse(readFileSync(path.join(d, 'config.json'), 'utf8'));
      cfg.quantization_config = {
        ...cfg.quantization_config,
        sym: false,
        desc_act: true,
        ...(v2 ? { checkpoint_format: 'gptq_v2' } : {}),
      };
      writeFileSync(path.join(d, 'config.json'), JSON.stringify(cfg));
      return d;
    };
    for (const v2 of [false, true]) {
      using m = await loadModel(await variant(v2 ? 'asym-v2' : 'asym-v1', v2), { backend: 'cpu', maxContext: 64 });
      expect(Array.from(m.forward(PROMPT)), v2 ? 'gptq_v2' : 'v1').toEqual(Array.from(want));
    }
  });

  /**
   * An act-order (desc_act) copy of `src` (small: several groups of 128 per linear): in every dense
   * linear of more than one group, group gi is renamed G - 1 - gi -- g_idx[c] = G - 1 - c / 128 (not
   * the plain c / 128: column runs in descending group order), with the scales' and qzeros' rows
   * moved along, so the weights are the same. `experts`: the routed experts too, expert e's group gi
   * renamed (G - 1 - gi + e) % G (every expert its own order; gate_proj and up_proj the same one,
   * unless 'gate' renames gate_proj's alone). `edit` may change g_idx further. Returns the directory
   * and how many linears it changed.
   */
  async function actOrderVariant(name: string, src: string, experts: 'none' | 'all' | 'gate', edit?: (g: Int32Array) => void) {
    const d = path.join(root, `gptq-${name}`);
    mkdirSync(d);
    for (const f of readdirSync(src)) copyFileSync(path.join(src, f), path.join(d, f));
    let changed = 0;
    for (const f of readdirSync(d).filter(f => f.endsWith('.safetensors'))) {
      const file = path.join(d, f);
      const h = await readSafetensorsHeader(file);
      const buf = readFileSync(file);
      for (const t of h.tensors.values()) {
        if (!t.name.endsWith('.g_idx')) continue;
        const m = t.name.slice(0, -'.g_idx'.length);
        const k = t.shape[0]!,
          G = Math.ceil(k / 128);
        const expert = /\.experts\.(\d+)\./.exec(m);
        if (G < 2 || (expert && !(experts === 'all' || (experts === 'gate' && m.endsWith('gate_proj'))))) continue;
        const shift = expert ? Number(expert[1]) : 0;
        const ren = (gi: number) => (G - 1 - gi + shift) % G;
        const at = (n: string) => h.tensors.get(`${m}.${n}`)!;
        const gIdx = new Int32Array(buf.buffer, buf.byteOffset + t.offset, k);
        for (let c = 0; c < k; c++) gIdx[c] = ren(Math.floor(c / 128));
        edit?.(gIdx);
        for (const part of ['scales', 'qzeros']) {
          const p = at(part),
            row = p.nbytes / G;
          const old = Buffer.from(buf.subarray(p.offset, p.offset + p.nbytes));
          for (let gi = 0; gi < G; gi++) old.copy(buf, p.offset + ren(gi) * row, gi * row, (gi + 1) * row);
        }
        changed++;
      }
      writeFileSync(file, buf);
    }
    return { dir: d, changed };
  }

  it('act-order g_idx (desc_act): the same weights in act-order form give the plain logits (CPU and the CUDA device), dense linears and routed experts; uneven groups and experts whose gate and up orders differ are typed errors', async () => {
    const plain = await quantizedOf('small', 'int4');
    // fp32 products: the permuted sums differ from the plain ones only in their order
    const was = setMatmulPrecision('highest');
    onTestFinished(() => void setMatmulPrecision(was));
    using ref = await loadModel(plain, { backend: 'cpu', maxContext: 64 });
    const want = ref.forward(PROMPT);
    const tol = 1e-5 * maxAbs(want);
    const act = await actOrderVariant('act-order', plain, 'none');
    expect(act.changed).toBeGreaterThanOrEqual(10); // q_a, kv_a, q_b, o_proj, gate / up / down of every layer
    // every routed expert too (its own order each; gate / up over hidden = 4 groups, down over 2)
    const withExperts = await actOrderVariant('act-order-all', plain, 'all');
    using ck = await openCheckpoint(plain);
    const nExperts = ck.config.n_routed_experts * ck.config.num_layers;
    expect(withExperts.changed).toBe(act.changed + 3 * nExperts);
    for (const v of [act, withExperts]) {
      {
        using m = await loadModel(v.dir, { backend: 'cpu', maxContext: 64 });
        expect(maxDiff(m.forward(PROMPT), want)).toBeLessThan(tol);
      }
      if (cudaAvailable) {
        using gpu = await loadModel(v.dir, { backend: 'cuda', maxContext: 64 });
        expect(maxDiff(gpu.forward(PROMPT), want)).toBeLessThan(tol);
      }
    }
    // a group of 129 columns and one of 127
    const uneven = await actOrderVariant('act-order-uneven', plain, 'none', g => {
      g[0] = g[g.length - 1]!;
    });
    await rejects(loadModel(uneven.dir, { backend: 'cpu', maxContext: 64 }), 'E_CHECKPOINT', /puts 129 columns in group/);
    const gateOnly = await actOrderVariant('act-order-gate', plain, 'gate');
    await rejects(
      loadModel(gateOnly.dir, { backend: 'cpu', maxContext: 64 }),
      'E_CHECKPOINT',
      /experts\.0: gate_proj and up_proj have different act-order/,
    );
  });

  it('GPTQ variants without kernels are typed errors: bits, group size, packing format, group size not the files', async () => {
    const dir = await quantizedOf('tiny', 'int4');
    const cfg = JSON.parse(readFileSync(path.join(dir, 'config.json'), 'utf8'));
    const variant = (name: string, q: Record<string, unknown>) => {
      const d = path.join(root, `gptq-${name}`);
      mkdirSync(d);
      for (const f of readdirSync(dir)) if (f !== 'config.json') copyFileSync(path.join(dir, f), path.join(d, f));
      writeFileSync(
        path.join(d, 'config.json'),
        JSON.stringify({ ...cfg, quantization_config: { ...cfg.quantization_config, ...q } }),
      );
      return d;
    };
    await rejects(openCheckpoint(variant('bits8', { bits: 8 })), 'E_CONFIG', /bits/);
    await rejects(openCheckpoint(variant('g16', { group_size: 16 })), 'E_CONFIG', /group_size/);
    await rejects(openCheckpoint(variant('marlin', { checkpoint_format: 'marlin' })), 'E_CONFIG', /checkpoint_format/);
    // the same files read as groups of 64: the group tensors' shapes disagree
    await rejects(openCheckpoint(variant('g64', { group_size: 64 })), 'E_CHECKPOINT', /qzeros|scales/);
  });

  it('typed errors: an unknown format, an already-quantized input, a non-empty output, a missing input', async () => {
    const dir = await baseOf('tiny');
    await rejects(quantizeCheckpoint(dir, path.join(root, 'x'), { to: 'q3' as 'fp8' }), 'E_ARGUMENT', /q3/);
    await rejects(loadModel(dir, { backend: 'cpu', quantize: 'int3' as 'int4' }), 'E_ARGUMENT', /int3/);
    await rejects(
      quantizeCheckpoint(await quantizedOf('tiny', 'fp8'), path.join(root, 'twice'), { to: 'int8' }),
      'E_ARGUMENT',
      /already quantized/,
    );
    await rejects(
      loadModel(await quantizedOf('tiny', 'int8'), { backend: 'cpu', quantize: 'fp8' }),
      'E_ARGUMENT',
      /already quantized/,
    );
    const full = path.join(root, 'full');
    mkdirSync(full);
    writeFileSync(path.join(full, 'keep.txt'), 'x');
    await rejects(quantizeCheckpoint(dir, full, { to: 'fp8' }), 'E_ARGUMENT', /not empty/);
    expect(readFileSync(path.join(full, 'keep.txt'), 'utf8')).toBe('x');
    await rejects(
      quantizeCheckpoint(path.join(root, 'nothing'), path.join(root, 'out2'), { to: 'fp8' }),
      'E_CHECKPOINT',
      /nothing/,
    );
  });
});
