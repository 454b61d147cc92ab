// End-to-end CPU benchmark, llama-bench style: `pp512` (prefill of 512 tokens into an empty
// sequence, tokens/s) and `tg128` (128 single-token decode steps from an empty sequence, tokens/s),
// mean +- stddev over repeats, on random checkpoints of the small and medium presets (written once
// to bench/out/ckpt-<preset>/ by initRandom), or `lite`: the init-random lite layout (12 N-gram
// tables of orders 2..4, YaRN) at the small preset's sizes with hidden 768 and an 8192 vocabulary
// (LITE_BENCH below), so its weights (~0.3 GB) outgrow the caches.
//
// Rooflines, measured in this run:
//   decode:  weight streaming. tokens/s roofline = read bandwidth (benchReadBandwidth, 1 GiB, all pool
//            threads; the higher of before / after) / active weight bytes per token, where active
//            bytes = every non-expert weight a decode step reads (attention projections, kv_b, dense
//            MLPs, router, norms, final norm, lm_head; not the embedding table, of which one row is
//            read) + (FFN experts chosen per token, summed over layers, measured from the run's own
//            routing via collectRouting) x bytes of one expert. N-gram models add the N-gram rows a
//            token gathers (one row of each table) and the stacked projections.
//   prefill: compute. FLOPs of the pass (linears incl. the experts actually routed, causal attention,
//            lm_head of the last token) / the GEMM rate of the linear kernel at 512 rows on the
//            model's own dense-MLP weight (benchLinear).
// Also: host overhead of a decode step (time until forward() returns: it only queues work or
// replays the captured step; vs time until the logits are read), the same with the captured-graph
// path switched off (engine.useGraphs = false) when the engine has it, and the ScMoE overlap (one
// decode step vs its branches timed alone: attention 0, dense branch, MoE branch, lm_head).
//
//   LONGCAT_ADDON=build-bench/Release/longcat.node node bench/model.mjs [--quick] [--presets small,medium,lite] [--threads N] [--out f.json]
//     [--dist DIR] (the build to measure, probes included; default ../dist)
// (--threads: the pool's size for the whole run, the bandwidth probe's included; default: the cores;
// --huge on: loadModel's hugePages, the weights a decode step streams copied into THP-advised memory)
//
// Per weight format: `--formats bf16,fp8,int8,int4 [--pp 512,1024] [--tg N]` loads each preset's
// checkpoint once per format (bf16 as stored, the others quantized at load: loadModel's `quantize`)
// and times the prefills, the formats interleaved repeat by repeat, reported as tokens/s and the
// ratio to bf16 in the same run (issue 19's target: >= 0.9 at 512-1,024 tokens); `--pp 0` skips them.
// With --tg N also decode (issue 19's benchmark table): per repeat and format, a read probe
// (benchReadBandwidth, 1 GiB, all pool threads) then N decode steps from an empty sequence; per
// format its active bytes per token (as `decode` above, the quantized tensors' own bytes) and
// tokens/s as a fraction of its roofline (probe / active bytes) taken per repeat, median (min-max);
// the host share (forward() returns / step) and a probe over the format's own decode weights
// (benchReadTensors over decodeWeightTensors, lib/bench.ts) once per format.
import { existsSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { distImporter, median, now, rng } from './common.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
// the build measured, its probes included (--dist: another worktree's dist for an A/B on one machine)
const load = distImporter(args);
const { native } = await load('index.js');
const { weightAccounting: accounting, decodeWeightTensors, readBandwidth, readTensorsBandwidth } = await load('bench.js');
const { loadModel } = await load('generate.js');
const { PRESETS, initRandom } = await load('init-random.js');
const { batchTables } = await load('kv-cache.js');
const quick = args.includes('--quick');
const arg = (name, dflt) => (args.includes(name) ? args[args.indexOf(name) + 1] : dflt);
const outPath = arg('--out', null);
const presets = arg('--presets', quick ? 'small' : 'small,medium').split(',');
// The `lite` preset's sizes here: small's (its position limit aside: lite keeps its YaRN one), with
// hidden 768 (divisible by its 12 tables: 64-wide rows), the dense FFN twice that, vocab 8192.
const LITE_BENCH = {
  ...Object.fromEntries(Object.entries(PRESETS.small).filter(([k]) => k !== 'max_position_embeddings')),
  hidden_size: 768,
  ffn_hidden_size: 1536,
  vocab_size: 8192,
};
if (args.includes('--threads')) native.setThreads(Number(arg('--threads', 0)));
const formats = arg('--formats', null)?.split(',') ?? null;
const PP = Number(formats ? 512 : arg('--pp', 512)),
  formatTg = formats ? Number(arg('--tg', 0)) : 0,
  TG = Number(arg('--tg', 128));

const mean = v => v.reduce((a, b) => a + b, 0) / v.length;
const sd = v => (v.length < 2 ? 0 : Math.sqrt(v.reduce((a, b) => a + (b - mean(v)) ** 2, 0) / (v.length - 1)));
const numel = t => t.shape.reduce((a, b) => a * b, 1);

const sumCounts = nFfn => {
  let s = 0;
  for (const t of nFfn) {
    const v = new Int32Array(t.toBytes().buffer);
    for (const c of v) s += c;
    t.dispose();
  }
  return s;
};

function prefill(engine, tokens) {
  const seq = engine.newSequence();
  try {
    native.synchronize('cpu');
    const t0 = now();
    const { logits, nFfn } = engine.forward([seq], [tokens], { collectRouting: true });
    logits.toBytes();
    const ms = now() - t0;
    logits.dispose();
    return { ms, ffnPairs: sumCounts(nFfn) };
  } finally {
    seq.release();
  }
}

/** n decode steps from an empty sequence; per step: issue time (forward() returned) and total. */
function decode(engine, n, rand, vocab, keep = false) {
  const seq = engine.newSequence();
  const issue = [],
    total = [];
  let ffn = 0;
  native.synchronize('cpu');
  for (let i = 0; i < n; i++) {
    const tok = rand.int(vocab);
    const t0 = now();
    const { logits, nFfn } = engine.forward([seq], [[tok]], { collectRouting: true });
    const t1 = now();
    logits.toBytes();
    const t2 = now();
    issue.push(t1 - t0);
    total.push(t2 - t0);
    logits.dispose();
    ffn += sumCounts(nFfn); // after the step's timing
  }
  if (!keep) seq.release();
  return { ms: total.reduce((a, b) => a + b, 0), issue, total, ffnPerToken: ffn / n, seq };
}

/** Minimal stand-in for the engine's per-stage Arena (used to call its branch methods alone). */
class Arena {
  held = [];
  f32(shape) {
    return this.keep(new native.Tensor('f32', shape, 'cpu'));
  }
  i32(shape) {
    return this.keep(new native.Tensor('int32', shape, 'cpu'));
  }
  ints(values, shape = [values.length]) {
    return this.keep(new native.Tensor('int32', shape, 'cpu', Int32Array.from(values)));
  }
  keep(t) {
    this.held.push(t);
    return t;
  }
  dispose() {
    for (const t of this.held) t.dispose();
    this.held = [];
  }
}

/**
 * ScMoE overlap at decode: one whole step vs its parts timed alone (each over all layers, ending
 * with a sync): attention 0 (+ its norm), the dense branch (MLP 0, attention 1, MLP 1 + norms),
 * the MoE branch (router + experts, on the MoE stream) and the head (final norm + lm_head).
 * The overlapped region of a step ~ step - attention 0 - head, to compare with max(dense, MoE).
 * Uses the engine's internal methods: returns null when they are not there.
 */
function overlap(engine, seq, reps, rand) {
  const e = engine,
    d = e.dims,
    w = e.w;
  if (typeof e.mla !== 'function' || typeof e.mlp !== 'function' || typeof e.moe !== 'function' || !e.caches) return null;
  const s = native.defaultStream('cpu');
  const H = d.hidden;
  const fill = t => {
    const a = new Float32Array(numel(t));
    for (let i = 0; i < a.length; i++) a[i] = rand.uniform(-0.1, 0.1);
    t.copyFromBytes(a);
    return t;
  };
  const outer = new Arena();
  const h = fill(outer.f32([1, H])),
    u = fill(outer.f32([1, H]));
  const bt = batchTables([seq], e.maxBlocks);
  const len = seq.length;
  const info = {
    mode: 'decode',
    T: 1,
    ids: outer.ints([1]),
    positions: outer.ints([len - 1]),
    slots: outer.ints([seq.slots(len - 1, len)[0]]),
    blockTable: outer.ints(bt.table, [1, bt.table.length]),
    seqLens: outer.ints(bt.seqLens),
  };
  const time = fn => {
    native.synchronize('cpu');
    const t0 = now();
    fn();
    native.synchronize('cpu');
    return now() - t0;
  };
  const parts = {
    attention0: () => {
      for (let l = 0; l < d.layers; l++) {
        const a = new Arena();
        const n0 = a.f32([1, H]);
        native.rmsnorm(s, n0, h, w.layers[l].inputNorm[0], d.eps);
        e.mla(a, w.layers[l].attn[0], n0, e.caches[2 * l], info);
        a.dispose();
      }
    },
    dense: () => {
      for (let l = 0; l < d.layers; l++) {
        const a = new Arena(),
          L = w.layers[l];
        const x = a.f32([1, H]);
        const m0 = e.mlp(a, L.mlp[0], u);
        native.rmsnorm(s, x, m0, L.inputNorm[1], d.eps);
        const at = e.mla(a, L.attn[1], x, e.caches[2 * l + 1], info);
        native.rmsnorm(s, x, at, L.postAttnNorm[1], d.eps);
        const m1 = e.mlp(a, L.mlp[1], x);
        native.add(s, x, m1, m0);
        a.dispose();
      }
    },
    moe: () => {
      for (let l = 0; l < d.layers; l++) {
        const a = new Arena();
        e.moe(a, w.layers[l].moe, u, null);
        a.dispose();
      }
    },
    head: () => {
      const a = new Arena();
      const hf = a.f32([1, H]),
        logits = a.f32([1, d.vocab]);
      native.rmsnorm(s, hf, h, w.norm, d.eps);
      native.linear(s, logits, hf, w.lmHead.weight, w.lmHead.scale);
      a.dispose();
    },
    step: () => {
      const { logits, nFfn } = e.forward([seq], [[rand.int(d.vocab)]]);
      logits.toBytes();
      logits.dispose();
      for (const t of nFfn) t.dispose();
    },
  };
  // Same dispatch as the step: each part captured once as a graph and replayed (when the addon
  // has graphs; else every part, the step included, runs op by op).
  const graphs = typeof native.captureGraph === 'function' && typeof e.useGraphs === 'boolean';
  const held = [];
  const ms = Object.fromEntries(Object.keys(parts).map(k => [k, []]));
  try {
    if (graphs) {
      for (const k of ['attention0', 'dense', 'moe', 'head']) {
        const g = native.captureGraph([s, e.moeStream], parts[k]);
        held.push(g);
        parts[k] = () => g.replay();
      }
    } else if (typeof e.useGraphs === 'boolean') e.useGraphs = false;
    for (let r = 0; r < reps + 1; r++)
      for (const [k, fn] of Object.entries(parts)) {
        const t = time(fn);
        if (r > 0) ms[k].push(t); // first round: warm-up
      }
  } catch (err) {
    return { error: String(err?.message ?? err) };
  } finally {
    native.synchronize('cpu');
    for (const g of held) g.dispose();
    if (!graphs && typeof e.useGraphs === 'boolean') e.useGraphs = true;
    outer.dispose();
  }
  const m = Object.fromEntries(Object.entries(ms).map(([k, v]) => [k, median(v)]));
  const region = m.step - m.attention0 - m.head;
  const mx = Math.max(m.dense, m.moe);
  return {
    dispatch: graphs ? 'captured graphs' : 'eager',
    medianMs: m,
    overlappedRegionMs: region,
    regionOverMax: region / mx, // PERF target <= 1.1
    sumOverMax: (m.dense + m.moe) / mx, // what running the branches one after the other would give
    stepOverParts: m.step / (m.attention0 + m.dense + m.moe + m.head),
  };
}

async function benchPreset(preset, bw0) {
  const dir = path.join(here, 'out', `ckpt-${preset}`);
  let genSeconds = 0;
  if (!existsSync(path.join(dir, 'model.safetensors.index.json'))) {
    const t0 = now();
    await initRandom({ preset, out: dir, seed: 1, overrides: preset === 'lite' ? LITE_BENCH : undefined });
    genSeconds = (now() - t0) / 1000;
  }
  const model = await loadModel(dir, {
    backend: 'cpu',
    maxContext: Math.max(1024, PP + TG + 64),
    ...(args.includes('--huge') ? { hugePages: arg('--huge', 'off') === 'on' } : {}),
  });
  const engine = model.engine,
    d = engine.dims;
  const acc = accounting(model);
  const rand = rng(42);
  const toks = n => Array.from({ length: n }, () => rand.int(d.vocab));
  const reps = quick ? 2 : preset === 'medium' ? 8 : 10;

  // Prefill roofline: GEMM rate of the linear kernel at PP rows on the dense MLP gate weight, the
  // best of two samples (before the runs and after them); each sample is the fastest of 9 calls.
  const gemmRate = () => {
    const g = engine.w.layers[0].mlp[0].gate;
    const gx = new native.Tensor('f32', [PP, d.hidden], 'cpu', new Float32Array(PP * d.hidden).fill(0.01));
    const gy = new native.Tensor('f32', [PP, g.weight.shape[0]], 'cpu');
    const gb = native.benchLinear(gy, gx, [g.weight], g.scale ? [g.scale] : null, 1, 9);
    gx.dispose();
    gy.dispose();
    return (2 * PP * g.weight.shape[0] * d.hidden) / gb.minMs / 1e6;
  };
  const gemm0 = gemmRate();

  // Warm-up: pages the mmapped weights in, captures the decode graph.
  prefill(engine, toks(32));
  decode(engine, 4, rand, d.vocab);

  const pp = [];
  for (let r = 0; r < reps; r++) pp.push(prefill(engine, toks(PP)));
  // The eager comparison below toggles the engine's graph flag (graphs is a construction-time option).
  // (useGraphs is private: the engine is untyped here, loaded by --dist)
  const hasGraphs = typeof engine.useGraphs === 'boolean';
  const tg = [];
  let last = null;
  for (let r = 0; r < reps; r++) {
    const keep = r === reps - 1;
    const res = decode(engine, TG, rand, d.vocab, keep);
    if (keep) last = res.seq;
    tg.push(res);
  }
  // Decode without the captured graph (one JS -> native crossing per op), fewer steps.
  /** @type {{ steps: number, tokensPerSecond: number, issueMsPerStep: number, stepMs: number, hostFraction?: number } | null} */
  let eager = null;
  if (hasGraphs) {
    // private flag: the eager run decodes on this same loaded engine, not a second copy
    engine.useGraphs = false;
    try {
      const n = quick ? 16 : 32;
      decode(engine, 2, rand, d.vocab);
      const rs = [decode(engine, n, rand, d.vocab), decode(engine, n, rand, d.vocab)];
      const tps = rs.map(r => n / (r.ms / 1e3));
      eager = {
        steps: n,
        tokensPerSecond: mean(tps),
        issueMsPerStep: mean(rs.flatMap(r => r.issue)),
        stepMs: mean(rs.flatMap(r => r.total)),
      };
      eager.hostFraction = eager.issueMsPerStep / eager.stepMs;
    } finally {
      // restores the private flag cleared above
      engine.useGraphs = true;
    }
  }
  const ov = overlap(engine, last, quick ? 3 : 5, rand);
  last.release();
  const gemm1 = gemmRate();
  const gemmGflops = Math.max(gemm0, gemm1);

  model.dispose();

  // Prefill FLOPs: linears per token + routed expert pairs + causal attention + last-token lm_head.
  const attnFlops = 2 * d.layers * ((PP * (PP + 1)) / 2) * d.heads * (2 * (d.nope + d.rope) + 2 * d.v);
  const ppFlops = r => 2 * PP * acc.denseParams + 2 * r.ffnPairs * acc.expertParams + attnFlops + 2 * acc.headParams;
  const ppTps = pp.map(r => PP / (r.ms / 1e3));
  const ppGflops = pp.map(r => ppFlops(r) / r.ms / 1e6);
  const tgTps = tg.map(r => TG / (r.ms / 1e3));
  const ffnPerToken = mean(tg.map(r => r.ffnPerToken));
  const activeBytes = acc.nonExpertBytes + ffnPerToken * acc.expertBytes;
  const allIssue = tg.flatMap(r => r.issue),
    allTotal = tg.flatMap(r => r.total);
  return {
    preset,
    dir,
    generatedSeconds: genSeconds,
    dims: {
      hidden: d.hidden,
      layers: d.layers,
      heads: d.heads,
      nRouted: d.nRouted,
      nZero: d.nZero,
      topk: d.topk,
      expertFfn: d.expertFfn,
      ffn: d.ffn,
      vocab: d.vocab,
    },
    weights: {
      ...acc,
      ffnExpertsPerToken: ffnPerToken,
      ffnExpertsPerTokenPerLayer: ffnPerToken / d.layers,
      activeBytesPerToken: activeBytes,
    },
    repeats: reps,
    pp: {
      tokens: PP,
      tokensPerSecond: { mean: mean(ppTps), sd: sd(ppTps) },
      gflops: { mean: mean(ppGflops), sd: sd(ppGflops) },
      gemmGflops,
      gemmGflopsSamples: [gemm0, gemm1],
      fracGemm: mean(ppGflops) / gemmGflops,
      ffnPairs: mean(pp.map(r => r.ffnPairs)),
    },
    tg: {
      tokens: TG,
      tokensPerSecond: { mean: mean(tgTps), sd: sd(tgTps) },
      weightGbps: (mean(tgTps) * activeBytes) / 1e9,
      rooflineTokensPerSecond: (bw0 * 1e9) / activeBytes,
      fracRoofline: mean(tgTps) / ((bw0 * 1e9) / activeBytes),
      stepMs: { median: median(allTotal), mean: mean(allTotal) },
      issueMs: { median: median(allIssue), mean: mean(allIssue) },
      hostFraction: mean(allIssue) / mean(allTotal),
      graphs: hasGraphs,
    },
    eager,
    overlap: ov,
  };
}

function fmtPm(m, s, digits = 1) {
  return `${m.toFixed(digits)} ± ${s.toFixed(digits)}`;
}

/** --formats: prefill tokens/s per weight format and prompt length, interleaved, ratio to bf16. */
async function benchFormats() {
  const t00 = now();
  const lengths = arg('--pp', '512')
    .split(',')
    .map(Number)
    .filter(n => n > 0);
  const reps = quick ? 2 : 5;
  const results = [],
    decodes = [];
  for (const preset of presets) {
    const dir = path.join(here, 'out', `ckpt-${preset}`);
    if (!existsSync(path.join(dir, 'model.safetensors.index.json')))
      await initRandom({ preset, out: dir, seed: 1, overrides: preset === 'lite' ? LITE_BENCH : undefined });
    const models = [];
    for (const f of formats)
      models.push(
        await loadModel(dir, {
          backend: 'cpu',
          maxContext: Math.max(32, ...lengths, formatTg) + 64,
          ...(f === 'bf16' ? {} : { quantize: f }),
        }),
      );
    const rand = rng(7);
    const vocab = models[0].engine.dims.vocab;
    for (const m of models)
      prefill(
        m.engine,
        Array.from({ length: 32 }, () => rand.int(vocab)),
      ); // warm-up
    for (const n of lengths) {
      const ms = formats.map(() => []);
      for (let r = 0; r < reps; r++) {
        const toks = Array.from({ length: n }, () => rand.int(vocab));
        for (const [i, m] of models.entries()) ms[i].push(prefill(m.engine, toks).ms);
      }
      const tps = ms.map(v => v.map(x => n / (x / 1e3)));
      const b = Math.max(0, formats.indexOf('bf16'));
      for (const [i, f] of formats.entries())
        results.push({
          preset,
          tokens: n,
          format: f,
          tokensPerSecond: { mean: mean(tps[i]), sd: sd(tps[i]), median: n / (median(ms[i]) / 1e3) },
          // medians: a repeat that stalls (page faults of the mmapped bf16 weights, a neighbour) moves them least
          ratioToBf16: median(ms[b]) / median(ms[i]),
        });
    }
    if (formatTg) decodes.push(...decodeFormats(preset, models, rand, vocab, reps));
    for (const m of models) m.dispose();
  }
  const res = {
    bench: 'model --formats',
    date: new Date().toISOString(),
    threads: native.threads(),
    isa: native.cpuFeatures().isa,
    repeats: reps,
    results,
    decode: decodes,
    seconds: (now() - t00) / 1000,
  };
  if (outPath) writeFileSync(outPath, `${JSON.stringify(res, null, 2)}\n`);
  console.log(
    `## prefill per weight format (quantized at load), CPU, ${res.threads} threads, isa ${res.isa}, ${reps} repeats interleaved`,
  );
  console.log('| model | tokens | format | t/s (median) | t/s (mean ± sd) | ratio to bf16 (medians) |');
  console.log('| --- | ---: | --- | ---: | ---: | ---: |');
  for (const r of results)
    console.log(
      `| ${r.preset} | ${r.tokens} | ${r.format} | ${r.tokensPerSecond.median.toFixed(1)} | ` +
        `${fmtPm(r.tokensPerSecond.mean, r.tokensPerSecond.sd)} | ${r.ratioToBf16.toFixed(2)} |`,
    );
  if (!decodes.length) return;
  console.log(`\n## decode per weight format: tg${formatTg}, 1 GiB probe before each format's steps, ratios per repeat`);
  console.log(
    '| model | format | active MB/token | t/s (median) | 1 GiB probe GB/s | roofline t/s | fraction of roofline, median (min-max) | ' +
      'own-weights probe GB/s | fraction of it | step ms | forward() returns (ms) | host share |',
  );
  console.log('| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |');
  for (const r of decodes)
    console.log(
      `| ${r.preset} | ${r.format} | ${(r.activeBytesPerToken / 1e6).toFixed(1)} | ${r.tokensPerSecond.toFixed(1)} | ${r.probeGbps.toFixed(1)} | ` +
        `${r.rooflineTokensPerSecond.toFixed(1)} | ${r.fracRoofline.toFixed(2)} (${r.fracMin.toFixed(2)}-${r.fracMax.toFixed(2)}) | ` +
        `${r.ownProbeGbps.toFixed(1)} | ${r.fracOwnProbe.toFixed(2)} | ${r.stepMs.toFixed(3)} | ${r.issueMs.toFixed(3)} | ${(100 * r.hostFraction).toFixed(1)}% |`,
    );
}

/** --formats --tg N: decode tokens/s per format against its roofline, formats interleaved per repeat. */
function decodeFormats(preset, models, rand, vocab, reps) {
  const accs = models.map(m => accounting(m));
  const runs = models.map(() => []);
  for (const m of models) decode(m.engine, 4, rand, vocab); // captures each decode graph
  for (let r = 0; r < reps; r++)
    for (let j = 0; j < models.length; j++) {
      const i = (j + r) % models.length; // a different order each repeat
      const probe = readBandwidth();
      runs[i].push({ probe, ...decode(models[i].engine, formatTg, rand, vocab) });
    }
  return models.map((m, i) => {
    const own = readTensorsBandwidth(decodeWeightTensors(m));
    const rs = runs[i];
    const active = rs.map(x => accs[i].nonExpertBytes + x.ffnPerToken * accs[i].expertBytes);
    const tps = rs.map(x => formatTg / (x.ms / 1e3));
    const fracs = rs.map((x, k) => (tps[k] * active[k]) / (x.probe * 1e9));
    const activeBytes = mean(active),
      probe = median(rs.map(x => x.probe));
    const issue = mean(rs.flatMap(x => x.issue)),
      step = mean(rs.flatMap(x => x.total));
    return {
      preset,
      format: formats[i],
      weightDtype: accs[i].weightDtype,
      activeBytesPerToken: activeBytes,
      tokensPerSecond: median(tps),
      probeGbps: probe,
      rooflineTokensPerSecond: (probe * 1e9) / activeBytes,
      fracRoofline: median(fracs),
      fracMin: Math.min(...fracs),
      fracMax: Math.max(...fracs),
      ownProbeGbps: own,
      fracOwnProbe: (median(tps) * activeBytes) / (own * 1e9),
      stepMs: step,
      issueMs: issue,
      hostFraction: issue / step,
      repeats: rs.map((x, k) => ({ probe: x.probe, tokensPerSecond: tps[k], frac: fracs[k] })),
    };
  });
}

async function main() {
  const t00 = now();
  const bwA = readBandwidth();
  const results = [];
  for (const p of presets) results.push(await benchPreset(p, bwA));
  const bwB = readBandwidth();
  const bw = Math.max(bwA, bwB);
  // Re-base the decode ratios on the higher of the two bandwidth samples.
  for (const r of results) {
    r.tg.rooflineTokensPerSecond = (bw * 1e9) / r.weights.activeBytesPerToken;
    r.tg.fracRoofline = r.tg.tokensPerSecond.mean / r.tg.rooflineTokensPerSecond;
    r.tg.fracBandwidth = r.tg.weightGbps / bw;
  }
  const res = {
    bench: 'model',
    date: new Date().toISOString(),
    threads: native.threads(),
    isa: native.cpuFeatures().isa,
    rooflines: { readGbps: [bwA, bwB], readGbpsUsed: bw },
    results,
    seconds: (now() - t00) / 1000,
  };
  if (outPath) writeFileSync(outPath, `${JSON.stringify(res, null, 2)}\n`);

  console.log(`## model: end to end on random checkpoints (bf16), CPU, ${res.threads} threads, isa ${res.isa}`);
  console.log(`read bandwidth ${bwA.toFixed(1)} / ${bwB.toFixed(1)} GB/s (before / after, using ${bw.toFixed(1)})`);
  console.log(
    '| model | weights GB | active MB/token | FFN experts/token/layer | test | t/s | roofline t/s | % roofline | weight GB/s | GFLOP/s | % GEMM |',
  );
  console.log('| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |');
  for (const r of results) {
    const wgb = (
      (r.weights.nonExpertBytes + r.weights.embedBytes + r.dims.layers * r.dims.nRouted * r.weights.expertBytes) /
      1e9
    ).toFixed(2);
    const am = (r.weights.activeBytesPerToken / 1e6).toFixed(1);
    const fe = r.weights.ffnExpertsPerTokenPerLayer.toFixed(2);
    console.log(
      `| ${r.preset} | ${wgb} | ${am} | ${fe} | pp${r.pp.tokens} | ${fmtPm(r.pp.tokensPerSecond.mean, r.pp.tokensPerSecond.sd)} | - | - | - | ` +
        `${r.pp.gflops.mean.toFixed(1)} | ${(100 * r.pp.fracGemm).toFixed(0)}% of ${r.pp.gemmGflops.toFixed(0)} |`,
    );
    console.log(
      `| ${r.preset} | ${wgb} | ${am} | ${fe} | tg${r.tg.tokens} | ${fmtPm(r.tg.tokensPerSecond.mean, r.tg.tokensPerSecond.sd)} | ` +
        `${r.tg.rooflineTokensPerSecond.toFixed(1)} | ${(100 * r.tg.fracRoofline).toFixed(0)}% | ${r.tg.weightGbps.toFixed(1)} | - | - |`,
    );
  }
  for (const r of results)
    if (r.weights.ngramBytes)
      console.log(
        `${r.preset}: N-gram bytes per token ${(r.weights.ngramBytes / 1e6).toFixed(2)} MB (a row of each table + the projections), ` +
          `${((100 * r.weights.ngramBytes) / r.weights.activeBytesPerToken).toFixed(1)}% of the active bytes`,
      );
  console.log('');
  console.log('| model | decode path | step ms | forward() returns after (ms) | host share of step | t/s |');
  console.log('| --- | --- | ---: | ---: | ---: | ---: |');
  for (const r of results) {
    console.log(
      `| ${r.preset} | ${r.tg.graphs ? 'captured graph' : 'eager'} | ${r.tg.stepMs.mean.toFixed(3)} | ${r.tg.issueMs.mean.toFixed(3)} | ` +
        `${(100 * r.tg.hostFraction).toFixed(1)}% | ${r.tg.tokensPerSecond.mean.toFixed(1)} |`,
    );
    if (r.eager)
      console.log(
        `| ${r.preset} | eager (useGraphs = false) | ${r.eager.stepMs.toFixed(3)} | ${r.eager.issueMsPerStep.toFixed(3)} | ` +
          `${(100 * r.eager.hostFraction).toFixed(1)}% | ${r.eager.tokensPerSecond.toFixed(1)} |`,
      );
  }
  console.log('');
  console.log(
    '| model | step ms | attention 0 | dense branch | MoE branch | head | step - attn0 - head | / max(dense, MoE) | (dense + MoE) / max |',
  );
  console.log('| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |');
  for (const r of results) {
    const o = r.overlap;
    if (!o || o.error) {
      console.log(`| ${r.preset} | n/a: ${o ? o.error : 'engine internals not found'} |||||||`);
      continue;
    }
    const m = o.medianMs;
    console.log(
      `| ${r.preset} | ${m.step.toFixed(2)} | ${m.attention0.toFixed(2)} | ${m.dense.toFixed(2)} | ${m.moe.toFixed(2)} | ${m.head.toFixed(2)} | ` +
        `${o.overlappedRegionMs.toFixed(2)} | ${o.regionOverMax.toFixed(2)}x | ${o.sumOverMax.toFixed(2)}x |`,
    );
  }
}

if (formats) await benchFormats();
else await main();
