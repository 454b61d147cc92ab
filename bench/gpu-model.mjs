// End-to-end decode on one GPU: LongCat-Flash at full width (hidden 6144, 64 MLA heads, 512 routed +
// 256 zero experts, top-12, FP8 block-quantized linears) with as many layers as fit the card, its
// weights made on the device (random, distinct memory for every tensor; no checkpoint on disk).
// Measured in this run:
//   * decode tokens/s (graph replay) against the weight-streaming roofline: device copy bandwidth /
//     bytes a decode step reads (every non-expert weight + the FFN experts the router actually
//     picked, counted per step from the routing);
//   * host overhead per step: time until forward() returns / step time, with graph replay and
//     with the captured graph switched off (one launch per op);
//   * the ScMoE overlap: the decode step with the shortcut MoE on its own stream vs in order on the
//     main stream (a second engine over the same weights, overlapMoe: false);
//   * prefill tokens/s of 512 tokens.
//   node bench/gpu-model.mjs [--layers N] [--steps 64] [--out bench/out/gpu-model.json]
//   --smoke [--device D]: a reduced-width model on the CPU (or D, e.g. the emulated cuda:0 of
//   test/emu), so that the script is exercised without a GPU.
import { writeFileSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { native } from '../dist/native.js';
import { Event, Stream } from '../dist/device.js';
import { tensor, empty, numel } from '../dist/tensor.js';
import { parseConfig, requiredTensors, expertPrefix } from '../dist/config.js';
import { modelDims } from '../dist/model/dims.js';
import { loadWeights } from '../dist/model/weights.js';
import { LongcatModel } from '../dist/model/model.js';
import { deviceRandom, median, now, randomF32, rng } from './common.mjs';

const args = process.argv.slice(2);
const arg = (name, dflt) => (args.includes(name) ? Number(args[args.indexOf(name) + 1]) : dflt);
const outFile = args.includes('--out') ? args[args.indexOf('--out') + 1] : null;
const STEPS = arg('--steps', 64);
const smoke = args.includes('--smoke');

if (!smoke && !native.cudaStatus().available) {
  console.error(`bench/gpu-model: CUDA unavailable: ${native.cudaStatus().reason}`);
  process.exit(2);
}
const dev = smoke ? (args.includes('--device') ? args[args.indexOf('--device') + 1] : 'cpu') : 'cuda:0';
/** The CUDA device's own info, or a stand-in (no free-memory figure) for the smoke run. */
function cardInfo() {
  if (smoke) return { name: `${dev} (smoke)`, freeBytes: 0 };
  const d = native.devices().find(x => x.id === dev);
  if (d?.kind !== 'cuda') throw new Error(`bench/gpu-model: ${dev} is not a CUDA device of this addon`);
  return d;
}
const card = cardInfo();
const stream = new Stream(dev);

// LongCat-Flash-Chat (SPEC 1.1); --smoke shrinks every width, to the smallest model that still has
// every part (two layers, routed and zero experts, fp8 block scales over more than one block)
const W = smoke
  ? {
      vocab: 512,
      hidden: 160,
      heads: 2,
      qLora: 64,
      kvLora: 64,
      nope: 16,
      rope: 16,
      v: 16,
      ffn: 256,
      effn: 64,
      routed: 8,
      zero: 4,
      topk: 4,
    }
  : {
      vocab: 131072,
      hidden: 6144,
      heads: 64,
      qLora: 1536,
      kvLora: 512,
      nope: 128,
      rope: 64,
      v: 128,
      ffn: 12288,
      effn: 2048,
      routed: 512,
      zero: 256,
      topk: 12,
    };
const flash = layers =>
  parseConfig(
    {
      architectures: ['LongcatFlashForCausalLM'],
      model_type: 'longcat_flash',
      vocab_size: W.vocab,
      hidden_size: W.hidden,
      num_layers: layers,
      num_attention_heads: W.heads,
      q_lora_rank: W.qLora,
      kv_lora_rank: W.kvLora,
      qk_nope_head_dim: W.nope,
      qk_rope_head_dim: W.rope,
      v_head_dim: W.v,
      ffn_hidden_size: W.ffn,
      expert_ffn_hidden_size: W.effn,
      n_routed_experts: W.routed,
      zero_expert_num: W.zero,
      zero_expert_type: 'identity',
      moe_topk: W.topk,
      routed_scaling_factor: 6.0,
      mla_scale_q_lora: true,
      mla_scale_kv_lora: true,
      attention_method: 'MLA',
      attention_bias: false,
      rms_norm_eps: 1e-5,
      rope_theta: 10000000.0,
      max_position_embeddings: 131072,
      bos_token_id: 1,
      eos_token_id: 2,
      quantization_config: { quant_method: 'fp8', fmt: 'e4m3', activation_scheme: 'dynamic', weight_block_size: [128, 128] },
    },
    'bench/gpu-model (LongCat-Flash-Chat dims)',
  );

const specBytes = (s, name) =>
  numel(s.shape) * (name.endsWith('weight_scale_inv') ? 4 : s.quantized ? 1 : s.role === 'norm' || s.role === 'bias' ? 4 : 2);
const bytesOf = (specs, pred) => [...specs].filter(([n]) => pred(n)).reduce((a, [n, s]) => a + specBytes(s, n), 0);
const one = requiredTensors(flash(1));
const perLayer = bytesOf(one, n => n.startsWith('model.layers.0.'));
const outside = bytesOf(one, n => !n.startsWith('model.layers.'));
const layers = arg(
  '--layers',
  smoke ? 2 : Math.max(1, Math.min(28, Math.floor((card.freeBytes * 0.85 - outside - (4 << 30)) / perLayer))),
);
const config = flash(layers);
const specs = requiredTensors(config);
const dims = modelDims(config);
console.log(
  `bench/gpu-model on ${card.name}: ${smoke ? 'reduced' : 'LongCat-Flash'} width, ${layers} of 28 layers, ` +
    `${((outside + layers * perLayer) / 2 ** 30).toFixed(1)} GiB of weights (fp8 linears) made on the device`,
);

// ---- weights on the device ---------------------------------------------------------------------
const random = deviceRandom(dev, stream, smoke ? 1 << 12 : 1 << 24);
const randomDevice = random.make;
const made = new Map();
function make(name) {
  const s = specs.get(name);
  if (!s) throw new Error(`bench/gpu-model: no tensor ${name}`);
  let t;
  if (name.endsWith('weight_scale_inv')) {
    // scales that keep activations O(1): fp8 codes up to 448 times 1/sqrt(fan-in) / 448
    const fanIn = specs.get(s.scaleOf)?.shape[1] ?? W.hidden;
    t = tensor(new Float32Array(numel(s.shape)).fill(1 / Math.sqrt(fanIn) / 64), s.shape, { device: dev });
  } else if (s.role === 'norm') t = tensor(new Float32Array(numel(s.shape)).fill(1), s.shape, { device: dev });
  else if (s.role === 'bias') t = tensor(randomF32(numel(s.shape), 5, 0.01), s.shape, { device: dev });
  else if (s.quantized) t = randomDevice(s.shape, 'fp8_e4m3', 200);
  else t = randomDevice(s.shape, 'bf16', s.role === 'embedding' ? 1 : 1 / Math.sqrt(s.shape[1] ?? 1));
  made.set(name, t);
  return t;
}
const src = {
  has: name => specs.has(name),
  get: name => made.get(name) ?? make(name),
  expertWeights(l, e) {
    const p = expertPrefix(l, e),
      g = m => src.get(`${p}.${m}`);
    return {
      gate: g('gate_proj.weight'),
      up: g('up_proj.weight'),
      down: g('down_proj.weight'),
      gateScale: g('gate_proj.weight_scale_inv'),
      upScale: g('up_proj.weight_scale_inv'),
      downScale: g('down_proj.weight_scale_inv'),
    };
  },
};
let t0 = now();
const weights = loadWeights(src, dims, dev);
native.synchronize(dev);
const engine = new LongcatModel(dims, weights, { device: dev, maxContext: 4096, numBlocks: 256 });
console.log(`weights ready in ${((now() - t0) / 1e3).toFixed(1)} s`);

// ---- copy bandwidth (the roofline) --------------------------------------------------------------
function copyGBs() {
  const n = smoke ? 1 << 16 : 1 << 30,
    a = randomDevice([n], 'bf16', 1),
    b = empty([n], { dtype: 'bf16', device: dev });
  const times = [];
  for (let i = 0; i < (smoke ? 1 : 5); i++) {
    const e0 = new Event(dev),
      e1 = new Event(dev);
    e0.record(stream);
    native.convert(stream, b, a);
    e1.record(stream);
    e1.synchronize();
    times.push(e0.elapsedMs(e1));
  }
  a.dispose();
  b.dispose();
  return (4 * n) / median(times) / 1e6;
}
const bw = copyGBs();

// ---- bytes per decode step ----------------------------------------------------------------------
const expertBytes = ['gate_proj', 'up_proj', 'down_proj'].reduce(
  (a, m) =>
    a +
    specBytes(specs.get(`${expertPrefix(0, 0)}.${m}.weight`), 'w') +
    specBytes(specs.get(`${expertPrefix(0, 0)}.${m}.weight_scale_inv`), 'weight_scale_inv'),
  0,
);
const nonExpertBytes =
  [...specs]
    .filter(([n]) => !n.includes('.mlp.experts.') && n !== 'model.embed_tokens.weight')
    .reduce((a, [n, s]) => a + specBytes(s, n), 0) +
  // the absorbed form reads kv_b as bf16 codes (128-wide heads) or f32, not as the stored fp8
  layers * 2 * (W.nope === 128 && W.v === 128 ? 1 : 3) * W.heads * (W.nope + W.v) * W.kvLora;
const sumCounts = nFfn => {
  let s = 0;
  for (const t of nFfn) {
    for (const c of new Int32Array(t.toBytes().buffer)) s += c;
    t.dispose();
  }
  return s;
};

const rand = rng(9);
const tok = () => rand.int(dims.vocab);
const promptLength = smoke ? 16 : 64; // the context decode steps start from
function decode(n) {
  const seq = engine.newSequence();
  engine.forward([seq], [Array.from({ length: promptLength }, tok)]).logits.dispose();
  native.synchronize(dev);
  const issue = [],
    total = [];
  let ffn = 0;
  for (let i = 0; i < n; i++) {
    const a = now();
    const { logits, nFfn } = engine.forward([seq], [[tok()]], { collectRouting: true });
    const b = now();
    logits.toBytes();
    total.push(now() - a);
    issue.push(b - a);
    logits.dispose();
    ffn += sumCounts(nFfn);
  }
  seq.release();
  return { issue, total, ffnPerToken: ffn / n };
}

decode(smoke ? 1 : 4); // captures the decode graph
const g = decode(STEPS);
// The eager run decodes on this same engine (weights, cache, streams); graphs is a construction-time option.
// @ts-expect-error useGraphs is private
engine.useGraphs = false;
const few = smoke ? STEPS : Math.max(8, STEPS >> 2);
const e = decode(few);
// @ts-expect-error restores the private flag cleared above
engine.useGraphs = true;
const stepMs = median(g.total),
  eagerMs = median(e.total);
const bytesPerStep = nonExpertBytes + g.ffnPerToken * expertBytes;
const roofline = bw / (bytesPerStep / 1e9);

// ---- the MoE overlap: the same decode with the shortcut MoE in order on the main stream ---------------
const serial = new LongcatModel(dims, weights, { device: dev, maxContext: 4096, numBlocks: 256, overlapMoe: false });
const decodeOn = (e, n) => {
  const seq = e.newSequence();
  e.forward([seq], [Array.from({ length: promptLength }, tok)]).logits.dispose();
  const total = [];
  for (let i = 0; i < n; i++) {
    const a = now();
    const { logits } = e.forward([seq], [[tok()]]);
    logits.toBytes();
    total.push(now() - a);
    logits.dispose();
  }
  seq.release();
  return median(total);
};
decodeOn(serial, smoke ? 1 : 4);
const serialMs = decodeOn(serial, few);
const overlapMs = decodeOn(engine, few);

// ---- prefill --------------------------------------------------------------------------------------
const pp = [];
for (let r = 0; r < (smoke ? 1 : 3); r++) {
  const seq = engine.newSequence();
  native.synchronize(dev);
  t0 = now();
  const { logits } = engine.forward([seq], [Array.from({ length: smoke ? 32 : 512 }, tok)]);
  logits.toBytes();
  pp.push(now() - t0);
  logits.dispose();
  seq.release();
}

const res = {
  card: card.name,
  layers,
  copyGBs: bw,
  ffnExpertsPerToken: g.ffnPerToken / layers,
  decode: {
    stepMs,
    tokensPerSecond: 1e3 / stepMs,
    rooflineTokensPerSecond: roofline,
    ofRoofline: 1e3 / stepMs / roofline,
    gbPerStep: bytesPerStep / 1e9,
    hostFraction: median(g.issue) / stepMs,
  },
  eager: { stepMs: eagerMs, tokensPerSecond: 1e3 / eagerMs, hostFraction: median(e.issue) / eagerMs },
  prefill512: { ms: median(pp), tokensPerSecond: (smoke ? 32 : 512) / (median(pp) / 1e3) },
  moeOverlap: { overlappedStepMs: overlapMs, serialStepMs: serialMs, serialOverOverlapped: serialMs / overlapMs },
};
console.table({
  'decode (graph)': {
    'tok/s': res.decode.tokensPerSecond.toFixed(1),
    'step ms': stepMs.toFixed(2),
    'host %': (res.decode.hostFraction * 100).toFixed(1),
    'roofline tok/s': roofline.toFixed(1),
    '% of roofline': (res.decode.ofRoofline * 100).toFixed(0),
  },
  'decode (eager)': {
    'tok/s': res.eager.tokensPerSecond.toFixed(1),
    'step ms': eagerMs.toFixed(2),
    'host %': (res.eager.hostFraction * 100).toFixed(1),
  },
  'decode, MoE in order on the main stream': { 'tok/s': (1e3 / serialMs).toFixed(1), 'step ms': serialMs.toFixed(2) },
  [`prefill ${smoke ? 32 : 512}`]: {
    'tok/s': res.prefill512.tokensPerSecond.toFixed(0),
    'step ms': res.prefill512.ms.toFixed(1),
  },
});
console.log(
  `ScMoE overlap: step ${overlapMs.toFixed(2)} ms with the MoE on its own stream vs ${serialMs.toFixed(2)} ms in order ` +
    `(${((serialMs / overlapMs - 1) * 100).toFixed(0)}% longer without the overlap, same run)`,
);
console.log(
  `copy bandwidth ${bw.toFixed(0)} GB/s; a decode step reads ${res.decode.gbPerStep.toFixed(2)} GB ` +
    `(${(g.ffnPerToken / layers).toFixed(2)} FFN experts per token and layer)`,
);
if (outFile) {
  mkdirSync(path.dirname(outFile), { recursive: true });
  writeFileSync(outFile, JSON.stringify(res, null, 2));
}
serial.dispose();
engine.dispose(); // and the tensors loadWeights made
for (const t of made.values()) t.dispose();
random.dispose();
